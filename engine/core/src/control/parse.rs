//! The control message parser: walks the JSON itself, building the typed message and
//! collecting every problem with its dotted path (`inputs[1].metadata.batching_options.period`)
//! and every unknown key it ignored, rather than stopping at the first.

use regex::Regex;
use serde_json::{Map, Value};

use super::scope::local_pattern;
use super::{
    BatchingOptions, ControlInput, ControlMessage, DataType, FileToDfOptions, Metadata, Sampling,
    Task,
};
use crate::Result;
use crate::config::{Problem, Problems, join};
use crate::format::InputFormat;
use crate::period::{Period, parse_date, parse_duration};

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

/// Parses a control message's text; see [`ControlMessage::parse_with`].
pub(super) fn parse_text(text: &str, origin: &str, strict: bool) -> Result<ControlMessage> {
    let mut p = Checks::default();
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            p.push("", format!("not valid JSON: {e}"));
            return p.problems.finish(
                origin,
                ControlMessage {
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
    problems.finish(origin, ControlMessage { inputs, ignored })
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
    use crate::Error;

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
}
