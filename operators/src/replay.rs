//! Replay (`dfp replay`): historical log files as a stream. Every record of the files, in event
//! time order (ties in file order), is written as one line of JSON, exactly as it was in the
//! file, to a Kafka topic (keyed by the record's user, so each user's records stay in order in
//! one partition) or to standard output, as fast as possible or paced so that event time runs
//! a given factor faster than the wall clock.
//!
//! A record the schema cannot read (no timestamp, wrong type) is replayed too, after the
//! previous good record of its file: the stream's reader dead-letters it as the batch reader
//! would. State: none; the records of all files are held in memory while they are sent.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray};
use dfp_engine::batch::timestamps;
use dfp_engine::ingest::{InputFormat, Reader};
use dfp_engine::json_scan;
use dfp_engine::schema::USERNAME;
use dfp_engine::{Error, Result};

/// One record to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayRecord {
    /// Event time, µs (for a record without one, its file's previous good record's).
    pub ts: i64,
    /// The record's user, the message key.
    pub key: Option<String>,
    /// The record as written in the file, on one line.
    pub text: String,
}

/// How fast to replay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Speed {
    /// As fast as the target takes them.
    Max,
    /// Event time runs this many times faster than the wall clock.
    Factor(f64),
}

impl std::str::FromStr for Speed {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s == "max" {
            return Ok(Speed::Max);
        }
        match s.strip_suffix('x').map(str::parse::<f64>) {
            Some(Ok(f)) if f > 0.0 && f.is_finite() => Ok(Speed::Factor(f)),
            _ => Err(format!(
                "speed {s:?} is neither \"max\" nor a positive factor like \"60x\""
            )),
        }
    }
}

/// The raw text of each record of one file, indexed as the reader indexes records: the
/// elements of a JSON array, or the lines of JSON lines (`None` for a blank line).
fn raw_records(text: &str) -> Vec<Option<String>> {
    if text.trim_start().starts_with('[') {
        json_scan::elements(text.as_bytes())
            .0
            .into_iter()
            .map(|e| Some(text[e.span].replace('\n', " ")))
            .collect()
    } else {
        text.split('\n')
            .map(|l| (!l.trim().is_empty()).then(|| l.trim_end_matches('\r').to_string()))
            .collect()
    }
}

/// Every record of `files`, in event-time order (stable: file order for ties).
pub fn records(reader: &Reader, files: &[PathBuf]) -> Result<Vec<ReplayRecord>> {
    let mut out = Vec::new();
    for path in files {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, "reading log file", e))?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|e| Error::stage("replay", format!("{}: not UTF-8: {e}", path.display())))?;
        let raws = raw_records(text.trim_start_matches('\u{feff}'));
        let read = reader.read_bytes(path, &bytes, InputFormat::Auto);
        let ts = timestamps(&read.batch, "replay")?;
        let users = read
            .batch
            .column_by_name(USERNAME)
            .and_then(|c| c.as_string_opt::<i32>());
        let mut rejected = vec![false; raws.len()];
        for r in &read.rejected {
            if let Some(flag) = rejected.get_mut(r.record) {
                *flag = true;
            }
        }
        let (mut good, mut last) = (0, i64::MIN);
        for (raw, bad) in raws.into_iter().zip(rejected) {
            let Some(raw) = raw else { continue };
            let (t, key) = if bad || good >= ts.len() {
                (last, None)
            } else {
                let key = users.and_then(|u| u.is_valid(good).then(|| u.value(good).to_string()));
                good += 1;
                (ts.value(good - 1), key)
            };
            last = t;
            out.push(ReplayRecord {
                ts: t,
                key,
                text: raw,
            });
        }
    }
    out.sort_by_key(|r| r.ts);
    Ok(out)
}

/// Sends `records` through `send` at `speed`, calling `progress` with the count sent.
pub fn replay(
    records: &[ReplayRecord],
    speed: Speed,
    mut send: impl FnMut(&ReplayRecord) -> Result<()>,
    mut progress: impl FnMut(usize),
) -> Result<()> {
    let started = Instant::now();
    let first = records.iter().map(|r| r.ts).find(|&t| t != i64::MIN);
    for (i, r) in records.iter().enumerate() {
        if let (Speed::Factor(f), Some(t0)) = (speed, first) {
            let due = Duration::from_secs_f64((r.ts.saturating_sub(t0)).max(0) as f64 / 1e6 / f);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        send(r)?;
        if i % 1000 == 999 {
            progress(i + 1);
        }
    }
    progress(records.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use dfp_engine::schema::SourceSchema;

    use super::*;

    #[test]
    fn speeds_parse_and_bad_ones_say_what_is_expected() {
        assert_eq!("max".parse::<Speed>(), Ok(Speed::Max));
        assert_eq!("60x".parse::<Speed>(), Ok(Speed::Factor(60.0)));
        for bad in ["60", "0x", "-2x", "fast"] {
            assert!(bad.parse::<Speed>().unwrap_err().contains("60x"), "{bad}");
        }
    }

    #[test]
    fn records_come_in_event_time_order_with_users_and_bad_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let rec = |t: &str, u: &str| {
            format!(r#"{{"time":"{t}","properties":{{"id":"{t}","userPrincipalName":"{u}"}}}}"#)
        };
        std::fs::write(
            dir.path().join("a.json"),
            format!(
                "[{},\n{},{}]",
                rec("2024-01-01T10:00:00Z", "a"),
                r#"{"properties":{"id":"x"}}"#,
                rec("2024-01-01T08:00:00Z", "b")
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("b.jsonl"),
            format!("{}\n\n", rec("2024-01-01T09:00:00Z", "c")),
        )
        .unwrap();
        let reader = Reader::new(Arc::new(SourceSchema::builtin("azure").unwrap()));
        let files = vec![dir.path().join("a.json"), dir.path().join("b.jsonl")];
        let got = records(&reader, &files).unwrap();
        let keys: Vec<Option<&str>> = got.iter().map(|r| r.key.as_deref()).collect();
        // 08:00 b, 09:00 c, 10:00 a, then the record without a time, placed after a's.
        assert_eq!(keys, [Some("b"), Some("c"), Some("a"), None]);
        assert!(got[3].text.contains(r#""id":"x""#));
        assert!(got.iter().all(|r| !r.text.contains('\n')));
        let mut sent = Vec::new();
        replay(
            &got,
            Speed::Max,
            |r| {
                sent.push(r.text.clone());
                Ok(())
            },
            |_| {},
        )
        .unwrap();
        assert_eq!(sent.len(), 4);
    }
}
