//! The source of a control message (Morpheus' integrated pipeline): its plan's epochs, one per
//! file batch of each input, in order. Worker 0 hands the dataflow each epoch's files (the
//! file-to-batch stage shares them out over the workers); every worker steps through the same
//! epochs so their times agree. Two epochs are in flight: the next is read while one trains.
//!
//! State: the next epoch. None is checkpointed: a plan is replayed whole.

use std::sync::Arc;
use std::time::Instant;

use dfp_engine::Result;

use super::{Batch, Polled, Source};
use crate::file_to_batch::{FileTask, Tasks};
use crate::plan::Plan;

/// One worker's view of a plan.
pub struct PlanSource {
    plan: Arc<Plan>,
    next: usize,
    /// Whether this worker hands out the files (worker 0).
    sends: bool,
    /// `[events] max_ahead` in µs: records dated after their batch's period plus this are
    /// outliers.
    max_ahead_us: i64,
}

impl PlanSource {
    /// The plan's source on a worker (`sends`: the one that hands out the files).
    pub fn new(plan: Arc<Plan>, sends: bool, max_ahead_us: i64) -> Self {
        Self {
            plan,
            next: 0,
            sends,
            max_ahead_us,
        }
    }

    /// The file tasks of epoch `t`.
    fn tasks(&self, t: usize) -> Vec<FileTask> {
        let epoch = &self.plan.epochs[t];
        if !self.sends {
            return Vec::new();
        }
        let until_us = epoch
            .period_end
            .timestamp_micros()
            .saturating_add(self.max_ahead_us);
        epoch
            .files
            .iter()
            .enumerate()
            .map(|(i, path)| FileTask {
                epoch: t as u64,
                tasks: Tasks {
                    train: epoch.train,
                    infer: epoch.infer,
                    payload: epoch.payload,
                },
                index: u32::try_from(i).unwrap_or(u32::MAX),
                path: path.clone(),
                format: epoch.format,
                until_us,
            })
            .collect()
    }
}

impl Source for PlanSource {
    fn describe(&self) -> String {
        format!("a plan of {} epochs", self.plan.epochs.len())
    }

    fn poll(&mut self, _now: Instant) -> Result<Option<Polled>> {
        if self.next >= self.plan.epochs.len() {
            return Ok(None);
        }
        let t = self.next;
        self.next += 1;
        Ok(Some(Polled {
            epochs: vec![(t as u64, Batch::Files(self.tasks(t)))],
            ..Polled::default()
        }))
    }

    fn in_flight(&self) -> u64 {
        2
    }

    fn progress(&self) -> Option<(usize, usize)> {
        Some((self.next, self.plan.epochs.len()))
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use chrono::{TimeZone, Utc};
    use dfp_engine::ingest::InputFormat;

    use super::*;
    use crate::plan::Epoch;

    fn plan() -> Arc<Plan> {
        let day = |d| Utc.with_ymd_and_hms(2022, 8, d, 0, 0, 0).unwrap();
        let epoch = |d: u32, train, files: &[&str]| Epoch {
            input: 0,
            batch: d as usize,
            period_start: day(d),
            period_end: day(d + 1),
            n_groups: 2,
            files: files.iter().map(PathBuf::from).collect(),
            format: InputFormat::Auto,
            train,
            infer: !train,
            payload: false,
        };
        Arc::new(Plan {
            epochs: vec![epoch(1, true, &["a", "b"]), epoch(2, false, &["c"])],
            unmatched: Vec::new(),
        })
    }

    #[test]
    fn worker_zero_hands_out_each_epochs_files_and_every_worker_steps_alike() {
        let now = Instant::now();
        let mut zero = PlanSource::new(plan(), true, 60);
        let mut one = PlanSource::new(plan(), false, 60);
        let first = zero.poll(now).unwrap().unwrap();
        let Batch::Files(tasks) = &first.epochs[0].1 else {
            panic!("files")
        };
        assert_eq!(first.epochs[0].0, 0);
        assert_eq!(tasks.len(), 2);
        assert!(tasks[0].tasks.train && !tasks[0].tasks.infer);
        assert_eq!(tasks[1].index, 1);
        let end = Utc.with_ymd_and_hms(2022, 8, 2, 0, 0, 0).unwrap();
        assert_eq!(tasks[0].until_us, end.timestamp_micros() + 60);
        let other = one.poll(now).unwrap().unwrap();
        assert!(matches!(&other.epochs[0], (0, Batch::Files(t)) if t.is_empty()));
        assert_eq!(zero.progress(), Some((1, 2)));
        assert!(zero.poll(now).unwrap().is_some());
        assert!(zero.poll(now).unwrap().is_none());
        assert_eq!(zero.in_flight(), 2);
        assert!(!zero.stateful());
    }
}
