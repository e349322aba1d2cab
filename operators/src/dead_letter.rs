//! Dead letters: records and work the pipeline could not process, each with the reason, so
//! nothing is lost silently. Rejected and broken input (from file to batch), rows without a
//! user (split users), rows too late for their window (rolling window), rows without a usable
//! model (inference) and models that failed to train or register all become [`DeadLetter`]s,
//! written as JSON lines to `dfp_dead_letter_{source}.jsonl`. State: none.

use dfp_engine::ingest::FileRead;
use dfp_engine::rows::{Origin, Row};
use serde::{Deserialize, Serialize};

/// One thing that could not be processed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The stage that gave up.
    pub stage: String,
    /// The input file, where known.
    pub file: Option<String>,
    /// Where the row came from, where known.
    pub origin: Option<Origin>,
    /// The record's index in its file, where known.
    pub record: Option<u64>,
    /// The user or model, where known.
    pub user: Option<String>,
    /// Why.
    pub reason: String,
    /// The record (its text, or the row as JSON), where there is one.
    pub raw: Option<String>,
}

impl DeadLetter {
    fn new(stage: &str, reason: String) -> Self {
        Self {
            stage: stage.to_string(),
            file: None,
            origin: None,
            record: None,
            user: None,
            reason,
            raw: None,
        }
    }

    /// The rejected records and the break, if any, of one file read.
    pub fn from_read(read: &FileRead) -> Vec<DeadLetter> {
        let file = read.path.display().to_string();
        let mut out: Vec<DeadLetter> = read
            .rejected
            .iter()
            .map(|r| DeadLetter {
                file: Some(file.clone()),
                record: Some(r.record as u64),
                raw: Some(r.raw.clone()),
                ..Self::new("file_to_batch", r.reason.clone())
            })
            .collect();
        if let Some(e) = &read.broken {
            out.push(Self::file("file_to_batch", &read.path, e.to_string()));
        }
        out
    }

    /// A whole file that `stage` could not handle.
    pub fn file(stage: &str, path: &std::path::Path, reason: String) -> Self {
        DeadLetter {
            file: Some(path.display().to_string()),
            ..Self::new(stage, reason)
        }
    }

    /// A row of `user` that `stage` could not handle.
    pub fn row(stage: &str, user: Option<&str>, row: &Row, reason: String) -> Self {
        DeadLetter {
            origin: Some(row.origin),
            record: Some(row.origin.record),
            user: user.map(str::to_string),
            raw: serde_json::to_string(row).ok(),
            ..Self::new(stage, reason)
        }
    }

    /// A Kafka message that could not be read (`file`: `kafka:{topic}/{partition}`, `record`:
    /// its offset).
    pub fn message(topic: &str, partition: i32, offset: i64, reason: String, raw: String) -> Self {
        DeadLetter {
            file: Some(format!("kafka:{topic}/{partition}")),
            record: u64::try_from(offset).ok(),
            raw: Some(raw),
            ..Self::new("kafka_source", reason)
        }
    }

    /// A row too old for its user's window.
    pub fn late(user: &str, row: Row, max_history: &str) -> Self {
        Self::row(
            "rolling_window",
            Some(user),
            &row,
            format!(
                "late row: its UTC day ended more than max_history ({max_history}) before the user's newest row, and has left the window"
            ),
        )
    }

    /// A model that `stage` could not train, register or load.
    pub fn model(stage: &str, name: &str, reason: String) -> Self {
        DeadLetter {
            user: Some(name.to_string()),
            ..Self::new(stage, reason)
        }
    }
}
