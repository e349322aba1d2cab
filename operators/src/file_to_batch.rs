//! File to batch (Morpheus' `file_to_df` module / `DFPFileToDataFrameStage`): reads one log
//! file with the source schema's reader (JSON array, JSON lines or CSV; nested fields flattened,
//! renamed and cast) and turns its records into [`Row`]s tagged with their origin.
//!
//! Input: [`FileTask`]s, exchanged by file index so the files of an epoch are shared out over
//! the workers. Output: [`FileRows`] (one per file) and [`DeadLetter`]s for rejected records and
//! broken or unreadable files; the good records of a broken file go on. State: none.

use std::path::PathBuf;
use std::sync::Arc;

use dfp_engine::ingest::{InputFormat, Reader, Rejected};
use dfp_engine::rows::{Row, rows_from_batch};
use serde::{Deserialize, Serialize};
use timely::dataflow::StreamVec;
use timely::dataflow::operators::Exchange as _;
use timely::dataflow::operators::core::OkErr;
use timely::dataflow::operators::vec::Map;

use crate::dead_letter::DeadLetter;
use crate::metrics::SharedStats;

/// What an epoch's rows are for (the control message's tasks and data type).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tasks {
    /// The rows train.
    pub train: bool,
    /// The rows are scored.
    pub infer: bool,
    /// The rows skip the rolling window (`data_type: payload`).
    pub payload: bool,
}

/// One file to read in one epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileTask {
    /// The epoch.
    pub epoch: u64,
    /// What the epoch's rows are for.
    pub tasks: Tasks,
    /// The file's index within the epoch.
    pub index: u32,
    /// The file.
    pub path: PathBuf,
    /// How to read it.
    pub format: InputFormat,
    /// Records dated after this (µs: the end of the epoch's period plus `[events] max_ahead`)
    /// are outliers, dead-lettered.
    pub until_us: i64,
}

/// The rows of one file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileRows {
    /// The epoch.
    pub epoch: u64,
    /// What the rows are for.
    pub tasks: Tasks,
    /// The rows, in file order.
    pub rows: Vec<Row>,
    /// Bytes read.
    pub bytes: u64,
}

/// Reads one file: its rows (each with its record's index in the file) and its dead letters
/// (rejected records, a break, and records dated after `until_us`).
pub fn read(reader: &Reader, task: &FileTask) -> (FileRows, Vec<DeadLetter>) {
    let read = reader.read_file(&task.path, task.format);
    let mut dead = DeadLetter::from_read(&read);
    let mut rows = match rows_from_batch(&read.batch, task.epoch, task.index) {
        Ok(rows) => rows,
        Err(e) => {
            dead.push(DeadLetter::file("file_to_batch", &task.path, e.to_string()));
            Vec::new()
        }
    };
    number_records(&mut rows, &read.rejected);
    {
        let until = task.until_us;
        let (kept, ahead): (Vec<Row>, Vec<Row>) = rows.into_iter().partition(|r| r.ts <= until);
        if !ahead.is_empty() {
            tracing::warn!(
                file = %task.path.display(),
                records = ahead.len(),
                "records dated after their file batch's period (plus [events] max_ahead) dead-lettered as outliers"
            );
        }
        let limit = time_text(until);
        dead.extend(ahead.iter().map(|r| {
            DeadLetter::row(
                "file_to_batch",
                r.user.as_deref(),
                r,
                format!(
                    "event time {} is after {limit}, the end of its file batch's period plus [events] max_ahead: an outlier (a forged record or a skewed clock?)",
                    time_text(r.ts)
                ),
            )
        }));
        rows = kept;
    }
    (
        FileRows {
            epoch: task.epoch,
            tasks: task.tasks,
            rows,
            bytes: read.bytes,
        },
        dead,
    )
}

/// Gives each row its record's index in the file: the good records in file order, counted
/// past the rejected ones.
pub(crate) fn number_records(rows: &mut [Row], rejected: &[Rejected]) {
    let mut bad: Vec<u64> = rejected.iter().map(|r| r.record as u64).collect();
    bad.sort_unstable();
    let mut bad = bad.into_iter().peekable();
    let mut index = 0u64;
    for row in rows {
        while bad.next_if_eq(&index).is_some() {
            index += 1;
        }
        row.origin.record = index;
        index += 1;
    }
}

/// An event time as RFC 3339 text.
pub fn time_text(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us).map_or_else(
        || format!("{us} µs"),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    )
}

/// The file-to-batch stage as a timely operator.
pub trait FileToBatch<'s> {
    /// Reads each task's file on the worker its index maps to.
    fn file_to_batch(
        self,
        reader: Arc<Reader>,
        stats: SharedStats,
    ) -> (StreamVec<'s, u64, FileRows>, StreamVec<'s, u64, DeadLetter>);
}

impl<'s> FileToBatch<'s> for StreamVec<'s, u64, FileTask> {
    fn file_to_batch(
        self,
        reader: Arc<Reader>,
        stats: SharedStats,
    ) -> (StreamVec<'s, u64, FileRows>, StreamVec<'s, u64, DeadLetter>) {
        self.exchange(|t: &FileTask| u64::from(t.index))
            .flat_map(move |task| {
                let (rows, dead) = read(&reader, &task);
                let mut s = stats.borrow_mut();
                s.files += 1;
                s.bytes += rows.bytes;
                s.rows += rows.rows.len() as u64;
                std::iter::once(Ok(rows)).chain(dead.into_iter().map(Err))
            })
            .ok_err(|r| r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Fixture, both, run_stage};

    #[test]
    fn each_file_is_read_in_its_epoch_and_what_cannot_be_read_is_a_dead_letter() {
        let f = Fixture::duo(3, 2);
        let tasks = Tasks {
            train: true,
            infer: true,
            payload: false,
        };
        let whole = read(&f.reader, &f.task(1, 1, tasks)).0.rows;
        let missing = FileTask {
            path: f.files[0].with_file_name("gone.json"),
            index: 7,
            ..f.task(0, 0, tasks)
        };
        // Epoch 1's file, with its period ending at its first record: the rest are outliers.
        let mut cut = f.task(1, 1, tasks);
        cut.until_us = whole.iter().map(|r| r.ts).min().unwrap();
        let reader = f.reader.clone();
        let (out, stats) = run_stage(
            vec![(0, vec![f.task(0, 0, tasks), missing]), (1, vec![cut])],
            move |s, stats| both(s.file_to_batch(reader, stats)),
        );
        let rows: Vec<(u64, usize)> = out
            .iter()
            .filter_map(|(t, r)| r.as_ref().ok().map(|r| (*t, r.rows.len())))
            .collect();
        assert_eq!(rows.len(), 3, "one FileRows a file, the missing one empty");
        assert!(rows.iter().all(|&(t, _)| t <= 1));
        let dead: Vec<&DeadLetter> = out.iter().filter_map(|(_, r)| r.as_ref().err()).collect();
        assert!(
            dead.iter()
                .any(|d| d.file.as_deref().is_some_and(|p| p.ends_with("gone.json"))),
            "{dead:?}"
        );
        let outliers = dead.iter().filter(|d| d.reason.contains("outlier")).count();
        let kept: usize = rows.iter().filter(|r| r.0 == 1).map(|r| r.1).sum();
        assert_eq!(
            kept + outliers,
            whole.len(),
            "every record of the cut file kept or dead"
        );
        assert!(outliers > 0 && kept > 0);
        assert_eq!(stats.files, 3);
        assert_eq!(stats.rows, rows.iter().map(|r| r.1 as u64).sum::<u64>());
    }

    #[test]
    fn records_are_numbered_past_the_rejected_ones() {
        let row = crate::testing::blank_row();
        let mut rows = vec![row.clone(), row.clone(), row];
        let rejected = [1usize, 3].map(|record| Rejected {
            record,
            raw: String::new(),
            reason: String::new(),
        });
        number_records(&mut rows, &rejected);
        let numbers: Vec<u64> = rows.iter().map(|r| r.origin.record).collect();
        assert_eq!(numbers, [0, 2, 4]);
    }
}
