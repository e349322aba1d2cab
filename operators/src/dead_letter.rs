//! Dead letters: records and work the pipeline could not process, each with the reason, so
//! nothing is lost silently. Rejected and broken input (from file to batch), rows without a
//! user (split users), rows too late for their window (rolling window), rows without a usable
//! model (inference) and models that failed to train or register all become [`DeadLetter`]s,
//! written as JSON lines to `dfp_dead_letter_{source}.jsonl`. A row of a file that a later
//! stage gives up on is written as the reader's dead letters are, with its file, its record's
//! index and the original record ([`Originals`]); a row from Kafka keeps the row itself. State:
//! none (the [`Originals`] cache holds the records of the last file looked up).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use dfp_engine::ingest::{FileRead, InputFormat, record_texts};
use dfp_engine::rows::{Origin, Row};
use serde::{Deserialize, Serialize};

use crate::plan::Plan;

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

/// Where a row's file is, by the row's origin, and how to read it.
pub type Lookup = Arc<dyn Fn(&Origin) -> Option<(PathBuf, InputFormat)> + Send + Sync>;

/// The paths of the files a watched directory has read, by their index in the rows' origin,
/// shared with the dead-letter writer so a dead row shows its file and original record.
pub type FileIndex = Arc<Mutex<Vec<PathBuf>>>;

/// Finds the file and the original record of dead rows read from files, by the row's origin
/// (a plan: epoch and file index; a watched directory: file index), and the record index in
/// the file. The records of the last file looked up are kept, as dead rows come in runs from
/// one file.
pub struct Originals {
    lookup: Option<Lookup>,
    last: Option<(PathBuf, Vec<String>)>,
}

impl Originals {
    /// Rows stay as they are (a Kafka stream: the row itself is the record).
    pub fn none() -> Self {
        Self {
            lookup: None,
            last: None,
        }
    }

    /// Rows of `plan`'s files: epoch `e`, file `f` is `plan.epochs[e].files[f]`.
    pub fn of_plan(plan: Arc<Plan>) -> Self {
        Self::with(Arc::new(move |o: &Origin| {
            let epoch = plan.epochs.get(usize::try_from(o.epoch).ok()?)?;
            Some((epoch.files.get(o.file as usize)?.clone(), epoch.format))
        }))
    }

    /// Rows of the files of `index` (a watched directory's, by the order read).
    pub fn of_files(index: FileIndex) -> Self {
        Self::with(Arc::new(move |o: &Origin| {
            let files = index.lock().ok()?;
            Some((files.get(o.file as usize)?.clone(), InputFormat::Auto))
        }))
    }

    fn with(lookup: Lookup) -> Self {
        Self {
            lookup: Some(lookup),
            last: None,
        }
    }

    /// Gives a dead row its file and original record, where they are known.
    pub fn fill(&mut self, d: &mut DeadLetter) {
        let (Some(lookup), Some(origin)) = (&self.lookup, d.origin) else {
            return;
        };
        let Some((path, format)) = lookup(&origin) else {
            return;
        };
        if self.last.as_ref().is_none_or(|(p, _)| p != &path) {
            let records = std::fs::read(&path)
                .map(|bytes| record_texts(&path, &bytes, format))
                .unwrap_or_default();
            self.last = Some((path.clone(), records));
        }
        d.file = Some(path.display().to_string());
        d.record = Some(origin.record);
        if let Some(text) = self
            .last
            .as_ref()
            .and_then(|(_, r)| usize::try_from(origin.record).ok().and_then(|i| r.get(i)))
        {
            d.raw = Some(text.clone());
        }
    }
}
