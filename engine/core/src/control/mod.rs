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
//!
//! The message's types are here; `parse` walks the JSON and collects the problems, and
//! `scope` resolves load globs to files within a [`FileScope`].

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::config::Problem;
use crate::format::InputFormat;
use crate::period::Period;
use crate::{Error, Result};

mod parse;
mod scope;

pub use parse::check_date_regex;
pub use scope::{FileScope, expand_globs};

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
        parse::parse_text(text, origin, strict)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::period::parse_date;

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
}
