//! Morpheus control messages, parsed into typed tasks.
//!
//! A control message is `{"inputs": [{"tasks": [...], "metadata": {...}}]}`: each input loads
//! files by glob (`load` task) and sends them to `training`, `inference` or both, with
//! `metadata` giving the data type (`payload` skips the rolling window, `streaming` goes
//! through it), the file batcher's `batching_options` and the reader's `file_to_df_options`.
//! The parser walks the JSON itself so it can report every problem with its path
//! (`inputs[1].metadata.batching_options.period`), not only the first.
//!
//! Globs resolve on the local file system; relative ones against a base directory the caller
//! chooses (the `dfp` command line uses the control message file's directory, so a message and
//! its data can move together; `--files-root` overrides it, `--files-root .` gives Morpheus'
//! behaviour of resolving against the working directory).

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use regex::Regex;
use serde_json::{Map, Value};

use crate::config::{Problem, Problems, join};
use crate::format::InputFormat;
use crate::period::{Period, parse_date, parse_duration};
use crate::{Error, Result};

/// A whole control message.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlMessage {
    /// Its inputs, run in order.
    pub inputs: Vec<ControlInput>,
    /// Keys dfp does not know, which it ignored (Morpheus' own messages carry some, such as
    /// `parser_kwargs` and `schema` in `batching_options`); each is logged as a warning.
    /// In strict mode they are problems instead.
    pub ignored: Vec<Problem>,
}

/// The problems found while parsing, and the keys ignored.
#[derive(Debug, Default)]
struct Checks {
    problems: Problems,
    ignored: Vec<Problem>,
}

impl Checks {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(path, message);
    }

    fn ignore(&mut self, path: String, message: String) {
        self.ignored.push(Problem { path, message });
    }
}

/// One input of a control message: what to load and what to do with it.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlInput {
    /// The tasks, in message order.
    pub tasks: Vec<Task>,
    /// How to batch and read the files.
    pub metadata: Metadata,
}

/// A task of an input.
#[derive(Debug, Clone, PartialEq)]
pub enum Task {
    /// Load files matching globs.
    Load {
        /// The loader Morpheus names (`fsspec` or `file_to_df`); both read local files here.
        loader_id: String,
        /// Glob patterns.
        files: Vec<String>,
    },
    /// Train models on the loaded data.
    Training {
        /// The task's properties, kept as given (they override pipeline defaults).
        properties: Map<String, Value>,
    },
    /// Score the loaded data.
    Inference {
        /// The task's properties, kept as given.
        properties: Map<String, Value>,
    },
}

/// `payload` data skips the rolling window; `streaming` data goes through it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DataType {
    /// A one-off batch: scored or trained on as is.
    #[default]
    Payload,
    /// Part of a stream: accumulated in per-user rolling windows.
    Streaming,
}

/// An input's metadata.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metadata {
    /// `payload` or `streaming`.
    pub data_type: DataType,
    /// The file batcher's options; values override the pipeline's defaults.
    pub batching_options: BatchingOptions,
    /// The reader's options.
    pub file_to_df_options: FileToDfOptions,
}

/// Options of the file batcher. `None` means "use the pipeline default".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchingOptions {
    /// Group files by this period.
    pub period: Option<Period>,
    /// Drop files before this time (any ISO form; without an offset, UTC).
    pub start_time: Option<DateTime<Utc>>,
    /// Drop files at or after this time.
    pub end_time: Option<DateTime<Utc>>,
    /// Morpheus' `sampling`: a frequency, a fraction or a count of files. Morpheus'
    /// `sampling_rate_s: N` is the frequency of N seconds.
    pub sampling: Option<Sampling>,
    /// The regex that finds a file's time in its name (named groups year, month, day, and
    /// optionally hour, minute, second, microsecond).
    pub iso_date_regex_pattern: Option<String>,
}

/// Morpheus' `sampling` option of the file batcher.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The first file of every bin of this period (`"30S"`, `"500ms"`, `"1H"`: bins as the
    /// batcher's, from midnight UTC of the first file's day).
    Frequency(Period),
    /// This fraction of the files, drawn at random (a number below 1).
    Fraction(f64),
    /// This many files, drawn at random (a whole number of at least 1).
    Count(usize),
}

/// Options of the reader.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileToDfOptions {
    /// The file layout (`parser_kwargs.lines` true: JSON lines; false: JSON array).
    pub format: InputFormat,
}

impl ControlMessage {
    /// Reads and parses a control message file (`strict`: unknown keys are problems).
    pub fn from_file(path: &Path, strict: bool) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(path, "reading control message", e))?;
        Self::parse_with(&text, &path.display().to_string(), strict)
    }

    /// Parses a control message; `origin` names it in errors. Every problem is reported;
    /// unknown keys are ignored, listed in [`ControlMessage::ignored`].
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        Self::parse_with(text, origin, false)
    }

    /// Parses a control message; in `strict` mode an unknown key is a problem too.
    pub fn parse_with(text: &str, origin: &str, strict: bool) -> Result<Self> {
        let mut p = Checks::default();
        let value: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                p.push("", format!("not valid JSON: {e}"));
                return p.problems.finish(
                    origin,
                    Self {
                        inputs: Vec::new(),
                        ignored: Vec::new(),
                    },
                );
            }
        };
        let inputs = parse_message(&value, &mut p);
        let Checks {
            mut problems,
            ignored,
        } = p;
        if strict {
            for i in &ignored {
                problems.push(&i.path, format!("{} (strict mode)", i.message));
            }
        }
        problems.finish(origin, Self { inputs, ignored })
    }

    /// Logs each ignored key as a warning naming the message and the key.
    pub fn warn_ignored(&self, origin: &str) {
        for i in &self.ignored {
            tracing::warn!(message = origin, key = %i.path, "{}", i.message);
        }
    }
}

impl ControlInput {
    /// Whether the input trains.
    pub fn trains(&self) -> bool {
        self.tasks
            .iter()
            .any(|t| matches!(t, Task::Training { .. }))
    }

    /// Whether the input scores.
    pub fn infers(&self) -> bool {
        self.tasks
            .iter()
            .any(|t| matches!(t, Task::Inference { .. }))
    }

    /// Whether the input only loads (Morpheus' `*_only_load` messages): its files are read,
    /// bad records dead-lettered, and (`streaming`) its rows join the users' history, without
    /// training or scoring.
    pub fn load_only(&self) -> bool {
        !self.trains() && !self.infers()
    }

    /// The glob patterns of all load tasks.
    pub fn globs(&self) -> impl Iterator<Item = &str> {
        self.tasks.iter().flat_map(|t| match t {
            Task::Load { files, .. } => files.iter().map(String::as_str).collect(),
            _ => Vec::new(),
        })
    }

    /// Resolves the load globs to existing files within `scope`; sorted and without
    /// duplicates. Patterns that match nothing are returned too, for reporting.
    pub fn resolve_files(&self, scope: &FileScope) -> Result<(Vec<PathBuf>, Vec<String>)> {
        expand_globs(self.globs(), scope)
    }
}

/// Where load globs resolve, and what they may read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileScope {
    /// Relative globs resolve against this directory.
    pub base: PathBuf,
    /// Every file a glob reaches must lie under one of these directories (links and `..`
    /// resolved); empty: anywhere. A control topic is confined, so that whoever can write to
    /// it cannot make dfp read other files.
    pub roots: Vec<PathBuf>,
}

impl FileScope {
    /// Relative globs against `base`, reading anywhere.
    pub fn at(base: impl Into<PathBuf>) -> Self {
        Self {
            base: base.into(),
            roots: Vec::new(),
        }
    }

    /// Relative globs against `base`, reading only under `roots`.
    pub fn confined(base: impl Into<PathBuf>, roots: Vec<PathBuf>) -> Self {
        let roots = roots
            .into_iter()
            .map(|r| r.canonicalize().unwrap_or_else(|_| absolute(&r)))
            .collect();
        Self {
            base: base.into(),
            roots,
        }
    }

    /// The scope of the control message `msg` read from `path`: relative globs resolve
    /// against `files_root` when given, else against the message's own directory; when nothing matches there but something does in
    /// the working directory (Morpheus resolves against the working directory), against the
    /// working directory, saying so in the log. `allowed` (may be empty: anywhere) confines
    /// every read.
    pub fn for_message(
        msg: &ControlMessage,
        path: &Path,
        files_root: Option<&Path>,
        allowed: &[PathBuf],
    ) -> Self {
        if let Some(root) = files_root {
            return Self::confined(root, allowed.to_vec());
        }
        let beside = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        let matches = |base: &Path| {
            let scope = FileScope::confined(base, allowed.to_vec());
            msg.inputs.iter().any(|i| {
                i.resolve_files(&scope)
                    .is_ok_and(|(files, _)| !files.is_empty())
            })
        };
        let cwd = PathBuf::from(".");
        let base = if !matches(&beside) && absolute(&beside) != absolute(&cwd) && matches(&cwd) {
            tracing::info!(
                message = %path.display(),
                "its load globs match nothing beside the control message but do in the working directory: resolving them there (Morpheus' convention; --files-root chooses)"
            );
            cwd
        } else {
            tracing::debug!(message = %path.display(), root = %beside.display(), "load globs resolve beside the control message");
            beside
        };
        Self::confined(base, allowed.to_vec())
    }

    /// Whether `path` (absolute) lies under an allowed root.
    fn allows(&self, path: &Path) -> bool {
        self.roots.is_empty() || self.roots.iter().any(|r| path.starts_with(r))
    }

    fn roots_text(&self) -> String {
        self.roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `path` made absolute against the working directory, `.` and `..` resolved by name.
fn absolute(path: &Path) -> PathBuf {
    let full = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    let mut out = PathBuf::new();
    for c in full.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// A glob as a local pattern: `file://` stripped (fsspec's local protocol); any other scheme
/// (`s3://`, `gs://`, `https://`, ...) is an error naming it: dfp reads local files only.
fn local_pattern(pattern: &str) -> std::result::Result<&str, String> {
    if let Some(rest) = pattern.strip_prefix("file://") {
        return Ok(rest);
    }
    match pattern.split_once("://") {
        Some((scheme, _))
            if !scheme.is_empty()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')) =>
        {
            Err(format!(
                "{pattern:?}: the {scheme}:// file system is not supported; dfp reads local files \
                 (and file:// paths): copy or mount the files locally"
            ))
        }
        _ => Ok(pattern),
    }
}

/// Expands glob patterns to existing files within `scope`; sorted and without duplicates.
/// Also returns the patterns (as resolved) that matched nothing, for reporting. A pattern
/// that reaches outside the scope's roots, or names a remote file system, is an error that
/// names the pattern (never a file's content).
pub fn expand_globs<'p>(
    patterns: impl IntoIterator<Item = &'p str>,
    scope: &FileScope,
) -> Result<(Vec<PathBuf>, Vec<String>)> {
    let invalid = |message: String| Error::Invalid {
        origin: "file patterns".to_string(),
        problems: vec![crate::config::Problem {
            path: "files".to_string(),
            message,
        }],
    };
    let mut files = Vec::new();
    let mut unmatched = Vec::new();
    for pattern in patterns {
        let local = local_pattern(pattern).map_err(invalid)?;
        let full = if Path::new(local).is_absolute() {
            PathBuf::from(local)
        } else {
            scope.base.join(local)
        };
        let outside = || {
            invalid(format!(
                "{pattern:?} reaches outside the allowed roots ({}); the message is refused",
                scope.roots_text()
            ))
        };
        if !scope.allows(&absolute(&full)) {
            return Err(outside());
        }
        let full_text = full.to_string_lossy().into_owned();
        let paths =
            glob::glob(&full_text).map_err(|e| invalid(format!("bad glob {pattern:?}: {e}")))?;
        let before = files.len();
        for entry in paths {
            match entry {
                Ok(path) if path.is_file() => {
                    let real = path.canonicalize().unwrap_or_else(|_| absolute(&path));
                    if !scope.allows(&real) {
                        return Err(outside());
                    }
                    files.push(path);
                }
                Ok(_) => {}
                Err(e) => {
                    let path = e.path().to_path_buf();
                    return Err(Error::io(path, "listing files", e.into()));
                }
            }
        }
        if files.len() == before {
            unmatched.push(full_text);
        }
    }
    files.sort();
    files.dedup();
    Ok((files, unmatched))
}

fn parse_message(value: &Value, p: &mut Checks) -> Vec<ControlInput> {
    let Some(obj) = expect_object(value, "", p) else {
        return Vec::new();
    };
    unknown_keys(obj, "", &["inputs"], p);
    let mut inputs = Vec::new();
    match obj.get("inputs") {
        Some(Value::Array(items)) if !items.is_empty() => {
            for (i, item) in items.iter().enumerate() {
                if let Some(input) = parse_input(item, &format!("inputs[{i}]"), p) {
                    inputs.push(input);
                }
            }
        }
        Some(Value::Array(_)) => p.push("inputs", "is empty: a message needs at least one input"),
        Some(other) => p.push("inputs", format!("must be an array, found {}", kind(other))),
        None => p.push("inputs", "is missing"),
    }
    inputs
}

fn parse_input(value: &Value, at: &str, p: &mut Checks) -> Option<ControlInput> {
    let obj = expect_object(value, at, p)?;
    unknown_keys(obj, at, &["tasks", "metadata"], p);
    let mut tasks = Vec::new();
    let tasks_at = join(at, "tasks");
    match obj.get("tasks") {
        Some(Value::Array(items)) => {
            for (i, t) in items.iter().enumerate() {
                if let Some(task) = parse_task(t, &format!("{tasks_at}[{i}]"), p) {
                    tasks.push(task);
                }
            }
        }
        Some(other) => p.push(
            &tasks_at,
            format!("must be an array, found {}", kind(other)),
        ),
        None => p.push(&tasks_at, "is missing"),
    }
    let metadata = match obj.get("metadata") {
        Some(m) => parse_metadata(m, &join(at, "metadata"), p),
        None => Metadata::default(),
    };
    let input = ControlInput { tasks, metadata };
    if input.globs().next().is_none() {
        p.push(&tasks_at, "has no `load` task with files");
    }
    Some(input)
}

fn parse_task(value: &Value, at: &str, p: &mut Checks) -> Option<Task> {
    let obj = expect_object(value, at, p)?;
    unknown_keys(obj, at, &["type", "properties"], p);
    let props_at = join(at, "properties");
    let properties = match obj.get("properties") {
        None => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => {
            p.push(
                &props_at,
                format!("must be an object, found {}", kind(other)),
            );
            Map::new()
        }
    };
    match obj.get("type").and_then(Value::as_str) {
        Some("load") => {
            let loader_id = match properties.get("loader_id") {
                None => "fsspec".to_string(),
                Some(Value::String(s)) if s == "fsspec" || s == "file_to_df" => s.clone(),
                Some(other) => {
                    p.push(
                        join(&props_at, "loader_id"),
                        format!("is {other}, expected \"fsspec\" or \"file_to_df\""),
                    );
                    String::new()
                }
            };
            let files_at = join(&props_at, "files");
            let mut files = Vec::new();
            match properties.get("files") {
                Some(Value::Array(items)) if !items.is_empty() => {
                    for (i, f) in items.iter().enumerate() {
                        match f.as_str() {
                            Some(s) if !s.is_empty() => {
                                if let Err(e) = local_pattern(s) {
                                    p.push(format!("{files_at}[{i}]"), e);
                                } else if let Err(e) = glob::Pattern::new(s) {
                                    p.push(format!("{files_at}[{i}]"), format!("bad glob: {e}"));
                                }
                                files.push(s.to_string());
                            }
                            _ => p.push(format!("{files_at}[{i}]"), "must be a non-empty string"),
                        }
                    }
                }
                Some(Value::Array(_)) => p.push(&files_at, "is empty"),
                Some(other) => p.push(
                    &files_at,
                    format!("must be an array of globs, found {}", kind(other)),
                ),
                None => p.push(&files_at, "is missing"),
            }
            Some(Task::Load { loader_id, files })
        }
        Some("training") => Some(Task::Training { properties }),
        Some("inference") => Some(Task::Inference { properties }),
        Some(other) => {
            p.push(
                join(at, "type"),
                format!("unknown task type {other:?} (expected load, training or inference)"),
            );
            None
        }
        None => {
            p.push(join(at, "type"), "is missing or not a string");
            None
        }
    }
}

fn parse_metadata(value: &Value, at: &str, p: &mut Checks) -> Metadata {
    let mut m = Metadata::default();
    let Some(obj) = expect_object(value, at, p) else {
        return m;
    };
    unknown_keys(
        obj,
        at,
        &["data_type", "batching_options", "file_to_df_options"],
        p,
    );
    match obj.get("data_type") {
        None => {}
        Some(Value::String(s)) if s == "payload" => m.data_type = DataType::Payload,
        Some(Value::String(s)) if s == "streaming" => m.data_type = DataType::Streaming,
        Some(other) => p.push(
            join(at, "data_type"),
            format!("is {other}, expected \"payload\" or \"streaming\""),
        ),
    }
    if let Some(b) = obj.get("batching_options") {
        m.batching_options = parse_batching(b, &join(at, "batching_options"), p);
    }
    if let Some(f) = obj.get("file_to_df_options") {
        m.file_to_df_options = parse_file_to_df(f, &join(at, "file_to_df_options"), p);
    }
    m
}

fn parse_batching(value: &Value, at: &str, p: &mut Checks) -> BatchingOptions {
    let mut b = BatchingOptions::default();
    let Some(obj) = expect_object(value, at, p) else {
        return b;
    };
    unknown_keys(
        obj,
        at,
        &[
            "period",
            "start_time",
            "end_time",
            "sampling_rate_s",
            "sampling",
            "iso_date_regex_pattern",
        ],
        p,
    );
    match obj.get("period") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => match s.parse::<Period>() {
            Ok(period) => b.period = Some(period),
            Err(e) => p.push(join(at, "period"), e),
        },
        Some(other) => p.push(
            join(at, "period"),
            format!("must be a string, found {}", kind(other)),
        ),
    }
    for (key, slot) in [
        ("start_time", &mut b.start_time),
        ("end_time", &mut b.end_time),
    ] {
        match obj.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => match parse_date(s) {
                Ok(t) => *slot = Some(t),
                Err(e) => p.push(join(at, key), e),
            },
            Some(other) => p.push(
                join(at, key),
                format!("must be a date string, found {}", kind(other)),
            ),
        }
    }
    if let (Some(start), Some(end)) = (b.start_time, b.end_time)
        && end <= start
    {
        p.push(join(at, "end_time"), "must be after start_time");
    }
    match obj.get("sampling") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => match parse_frequency(s) {
            Ok(period) => b.sampling = Some(Sampling::Frequency(period)),
            Err(e) => p.push(join(at, "sampling"), e),
        },
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(c), _) if c >= 1 => b.sampling = Some(Sampling::Count(c as usize)),
            (_, Some(f)) if f > 0.0 && f < 1.0 => b.sampling = Some(Sampling::Fraction(f)),
            _ => p.push(
                join(at, "sampling"),
                format!("is {n}, expected a fraction in (0, 1) or a count >= 1"),
            ),
        },
        Some(other) => p.push(
            join(at, "sampling"),
            format!(
                "must be a frequency, fraction or count, found {}",
                kind(other)
            ),
        ),
    }
    match obj.get("sampling_rate_s") {
        None | Some(Value::Null) => {}
        Some(v) => match seconds_period(v) {
            Ok(None) => {}
            Ok(Some(_)) if b.sampling.is_some() => p.push(
                join(at, "sampling_rate_s"),
                "give `sampling` or `sampling_rate_s`, not both (Morpheus refuses both too)",
            ),
            Ok(Some(period)) => b.sampling = Some(Sampling::Frequency(period)),
            Err(e) => p.push(join(at, "sampling_rate_s"), e),
        },
    }
    match obj.get("iso_date_regex_pattern") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => match check_date_regex(s) {
            Ok(()) => b.iso_date_regex_pattern = Some(s.clone()),
            Err(e) => p.push(join(at, "iso_date_regex_pattern"), e),
        },
        Some(other) => p.push(
            join(at, "iso_date_regex_pattern"),
            format!("must be a string, found {}", kind(other)),
        ),
    }
    b
}

/// A sampling frequency: a pandas offset alias (`"30S"`, `"500ms"`, `"1H"`, `"D"`), or one of
/// dfp's durations (`"1h"`, `"10s"`).
fn parse_frequency(text: &str) -> std::result::Result<Period, String> {
    text.parse::<Period>().or_else(|e| {
        parse_duration(text)
            .ok()
            .and_then(|d| d.num_milliseconds().try_into().ok())
            .filter(|&ms: &u32| ms > 0)
            .map(|ms| Period {
                count: ms,
                unit: crate::period::Unit::Millisecond,
            })
            .ok_or(e)
    })
}

/// `sampling_rate_s` (seconds, whole or not; 0: no sampling) as a frequency.
fn seconds_period(v: &Value) -> std::result::Result<Option<Period>, String> {
    let secs = v
        .as_f64()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .ok_or_else(|| format!("is {v}, expected a number of seconds >= 0"))?;
    let ms = (secs * 1000.0).round();
    if ms == 0.0 {
        return Ok(None);
    }
    if ms > f64::from(u32::MAX) {
        return Err(format!("is {v}: too many seconds"));
    }
    let ms = ms as u32;
    Ok(Some(if ms.is_multiple_of(1000) {
        Period {
            count: ms / 1000,
            unit: crate::period::Unit::Second,
        }
    } else {
        Period {
            count: ms,
            unit: crate::period::Unit::Millisecond,
        }
    }))
}

/// Checks that a file-date regex compiles and names the groups the batcher reads.
pub fn check_date_regex(pattern: &str) -> std::result::Result<(), String> {
    let re = Regex::new(pattern).map_err(|e| format!("does not compile: {e}"))?;
    let names: Vec<&str> = re.capture_names().flatten().collect();
    let missing: Vec<&str> = ["year", "month", "day"]
        .into_iter()
        .filter(|g| !names.contains(g))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("lacks the named group(s) {}", missing.join(", ")))
    }
}

fn parse_file_to_df(value: &Value, at: &str, p: &mut Checks) -> FileToDfOptions {
    let mut f = FileToDfOptions::default();
    let Some(obj) = expect_object(value, at, p) else {
        return f;
    };
    unknown_keys(obj, at, &["parser_kwargs", "file_type"], p);
    if let Some(Value::String(t)) = obj.get("file_type") {
        match t.parse::<InputFormat>() {
            Ok(fmt) => f.format = fmt,
            Err(e) => p.push(join(at, "file_type"), e),
        }
    } else if let Some(other) = obj.get("file_type") {
        p.push(
            join(at, "file_type"),
            format!("must be a string, found {}", kind(other)),
        );
    }
    let kw_at = join(at, "parser_kwargs");
    if let Some(kw) = obj.get("parser_kwargs") {
        let Some(kw) = expect_object(kw, &kw_at, p) else {
            return f;
        };
        unknown_keys(kw, &kw_at, &["lines", "orient"], p);
        match kw.get("lines") {
            None => {}
            Some(Value::Bool(true)) => f.format = InputFormat::JsonLines,
            Some(Value::Bool(false)) if f.format == InputFormat::Auto => {
                f.format = InputFormat::JsonArray;
            }
            Some(Value::Bool(false)) => {}
            Some(other) => p.push(
                join(&kw_at, "lines"),
                format!("must be true or false, found {}", kind(other)),
            ),
        }
        match kw.get("orient") {
            None => {}
            Some(Value::String(s)) if s == "records" => {}
            Some(other) => p.push(
                join(&kw_at, "orient"),
                format!("is {other}: only \"records\" (one object per record) is supported"),
            ),
        }
    }
    f
}

fn expect_object<'v>(value: &'v Value, at: &str, p: &mut Checks) -> Option<&'v Map<String, Value>> {
    match value {
        Value::Object(m) => Some(m),
        other => {
            p.push(at, format!("must be an object, found {}", kind(other)));
            None
        }
    }
}

fn unknown_keys(obj: &Map<String, Value>, at: &str, known: &[&str], p: &mut Checks) {
    for key in obj.keys().filter(|k| !known.contains(&k.as_str())) {
        p.ignore(
            join(at, key),
            format!("unknown key, ignored (dfp reads: {})", known.join(", ")),
        );
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Morpheus' own control messages (tests/fixtures/morpheus, Apache-2.0: see its NOTICE).
    fn fixtures() -> Vec<PathBuf> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/morpheus/control_messages");
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
    }

    #[test]
    fn every_morpheus_control_message_parses_and_s3_is_named() {
        let files = fixtures();
        assert_eq!(files.len(), 25);
        for f in files {
            let parsed = ControlMessage::from_file(&f, false);
            if f.to_string_lossy().ends_with("_s3.json") {
                let e = parsed.unwrap_err().to_string();
                assert!(e.contains("the s3:// file system is not supported"), "{e}");
                continue;
            }
            let msg = parsed.unwrap_or_else(|e| panic!("{e}"));
            assert!(!msg.inputs.is_empty(), "{}", f.display());
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            if name.contains("only_load") {
                assert!(msg.inputs.iter().all(ControlInput::load_only), "{name}");
            }
            assert!(msg.inputs.iter().all(|i| i.globs().count() >= 1), "{name}");
        }
    }

    #[test]
    fn azure_streaming_fixture_is_typed() {
        let files = fixtures();
        let path = files
            .iter()
            .find(|f| f.ends_with("azure_streaming_lti.json"))
            .unwrap();
        let text = std::fs::read_to_string(path).unwrap();
        let msg = ControlMessage::parse(&text, "azure_streaming_lti.json").unwrap();
        let train = &msg.inputs[0].metadata;
        assert_eq!(train.data_type, DataType::Streaming);
        assert_eq!(train.batching_options.period, Some("W".parse().unwrap()));
        assert_eq!(
            train.batching_options.start_time,
            Some(parse_date("2022-08-01").unwrap())
        );
        assert_eq!(train.file_to_df_options.format, InputFormat::JsonArray);
        assert_eq!(
            msg.inputs[1].metadata.batching_options.period,
            Some("H".parse().unwrap())
        );
        assert!(
            matches!(&msg.inputs[0].tasks[0], Task::Load { loader_id, files }
            if loader_id == "fsspec" && files == &["../../data/dfp/azure-training-data/*.json"])
        );
    }

    #[test]
    fn reports_every_problem_with_its_path() {
        let text = r#"{"inputs": [
            {"tasks": [{"type": "lod", "properties": {}}, {"type": "training"}],
             "metadata": {"data_type": "batch", "colour": 1,
                "batching_options": {"period": "Q", "start_time": "2022-13-45", "sampling": -2,
                    "iso_date_regex_pattern": "(?P<year>\\d{4})"},
                "file_to_df_options": {"parser_kwargs": {"lines": "no", "orient": "split"}}}},
            {"tasks": [{"type": "load", "properties": {"files": []}}]}
        ]}"#;
        let Err(Error::Invalid { problems, .. }) = ControlMessage::parse_with(text, "m.json", true)
        else {
            panic!("expected problems")
        };
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        for want in [
            "inputs[0].tasks[0].type",
            "inputs[0].tasks",
            "inputs[0].metadata.data_type",
            "inputs[0].metadata.colour",
            "inputs[0].metadata.batching_options.period",
            "inputs[0].metadata.batching_options.start_time",
            "inputs[0].metadata.batching_options.sampling",
            "inputs[0].metadata.batching_options.iso_date_regex_pattern",
            "inputs[0].metadata.file_to_df_options.parser_kwargs.lines",
            "inputs[0].metadata.file_to_df_options.parser_kwargs.orient",
            "inputs[1].tasks[0].properties.files",
        ] {
            assert!(paths.contains(&want), "missing {want} in {paths:#?}");
        }
    }

    #[test]
    fn broken_json_is_one_clear_problem() {
        let err = ControlMessage::parse("{\"inputs\": [", "m.json")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("m.json") && err.contains("not valid JSON"),
            "{err}"
        );
    }

    #[test]
    fn sampling_forms() {
        let mut p = Checks::default();
        let b = parse_batching(&serde_json::json!({"sampling": "30T"}), "b", &mut p);
        assert_eq!(
            b.sampling,
            Some(Sampling::Frequency("30min".parse().unwrap()))
        );
        let b = parse_batching(&serde_json::json!({"sampling": "500ms"}), "b", &mut p);
        assert_eq!(
            b.sampling,
            Some(Sampling::Frequency("500ms".parse().unwrap()))
        );
        let b = parse_batching(&serde_json::json!({"sampling": 0.5}), "b", &mut p);
        assert_eq!(b.sampling, Some(Sampling::Fraction(0.5)));
        let b = parse_batching(&serde_json::json!({"sampling": 3}), "b", &mut p);
        assert_eq!(b.sampling, Some(Sampling::Count(3)));
        // Morpheus' sampling_rate_s: N seconds is the frequency "NS"; 1.0 is one second.
        let b = parse_batching(&serde_json::json!({"sampling_rate_s": 1.0}), "b", &mut p);
        assert_eq!(b.sampling, Some(Sampling::Frequency("1S".parse().unwrap())));
        let b = parse_batching(&serde_json::json!({"sampling_rate_s": 0.25}), "b", &mut p);
        assert_eq!(
            b.sampling,
            Some(Sampling::Frequency("250ms".parse().unwrap()))
        );
        let b = parse_batching(&serde_json::json!({"sampling_rate_s": 0}), "b", &mut p);
        assert_eq!(b.sampling, None);
        assert!(p.problems.is_empty());
        parse_batching(
            &serde_json::json!({"sampling": "1H", "sampling_rate_s": 60}),
            "b",
            &mut p,
        );
        assert!(!p.problems.is_empty());
    }

    #[test]
    fn times_periods_and_unknown_keys_as_morpheus_writes_them() {
        let text = r#"{"inputs": [{"tasks": [{"type": "load", "properties": {"files": ["*.json"]}},
            {"type": "inference"}], "metadata": {"batching_options": {
                "period": "12H", "start_time": "2022-01-30T10:26:00", "end_time": "2022-02-01T00:00:00Z",
                "parser_kwargs": {"lines": false}, "schema": {"encoding": "latin1"}}}}]}"#;
        let msg = ControlMessage::parse(text, "m.json").unwrap();
        let b = &msg.inputs[0].metadata.batching_options;
        assert_eq!(b.period, Some("12H".parse().unwrap()));
        assert_eq!(
            b.start_time,
            Some(parse_date("2022-01-30T10:26:00Z").unwrap())
        );
        assert_eq!(b.end_time, Some(parse_date("2022-02-01").unwrap()));
        let ignored: Vec<&str> = msg.ignored.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(
            ignored,
            [
                "inputs[0].metadata.batching_options.parser_kwargs",
                "inputs[0].metadata.batching_options.schema"
            ]
        );
        let strict = ControlMessage::parse_with(text, "m.json", true)
            .unwrap_err()
            .to_string();
        assert!(
            strict.contains("schema") && strict.contains("strict mode"),
            "{strict}"
        );
        for period in ["1D", "1d", "12H", "5min", "W-MON", "S"] {
            let t = text.replace("12H", period);
            assert!(ControlMessage::parse(&t, "m").is_ok(), "{period}");
        }
    }

    #[test]
    fn a_load_only_input_is_valid() {
        let text =
            r#"{"inputs": [{"tasks": [{"type": "load", "properties": {"files": ["*.json"]}}]}]}"#;
        let msg = ControlMessage::parse(text, "m.json").unwrap();
        assert!(msg.inputs[0].load_only());
    }

    #[test]
    fn resolves_globs_against_a_base() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("logs")).unwrap();
        for name in ["b.json", "a.json", "c.txt"] {
            std::fs::write(dir.path().join("logs").join(name), "[]").unwrap();
        }
        let text = r#"{"inputs":[{"tasks":[{"type":"load","properties":{"files":["logs/*.json","none/*.json"]}},{"type":"inference"}]}]}"#;
        let msg = ControlMessage::parse(text, "m").unwrap();
        let (files, unmatched) = msg.inputs[0]
            .resolve_files(&FileScope::at(dir.path()))
            .unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(names, ["a.json", "b.json"]);
        assert_eq!(unmatched.len(), 1);
        assert!(unmatched[0].ends_with("none/*.json"));
    }
}
