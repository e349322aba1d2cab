//! Run metrics: counters each worker's stages add to (through a shared [`SharedStats`]), summed
//! over workers into the run summary. State: the counters, for the life of the run.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use dfp_engine::Error;
use serde::Serialize;

/// Counters of one worker, or of a whole run once merged.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stats {
    /// Files read.
    pub files: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Good rows read.
    pub rows: u64,
    /// Rows of skipped users.
    pub skipped: u64,
    /// Distinct users seen (the generic user not included).
    pub users: BTreeSet<String>,
    /// Training windows emitted.
    pub training_windows: u64,
    /// Models trained and registered.
    pub models_trained: u64,
    /// Models that failed to train (an error, a diverged training) or to be registered.
    pub train_failed: u64,
    /// Epochs sent in that train (of files, counted by worker 0; of a stream, by each worker
    /// that sent it): whether the run was to train at all.
    pub train_epochs: u64,
    /// Epochs sent in that score, counted as `train_epochs`.
    pub infer_epochs: u64,
    /// Rows that reached inference but no model could score.
    pub unscored: u64,
    /// Seconds spent training (summed over workers).
    pub train_seconds: f64,
    /// Rows scored.
    pub scored: u64,
    /// Seconds spent scoring (summed over workers).
    pub score_seconds: f64,
    /// Rows scored with the generic model because the user had no usable model.
    pub generic_fallbacks: u64,
    /// Detections written.
    pub detections: u64,
    /// Detections over the alert budget (in the scores, not in the detections).
    pub over_budget: u64,
    /// Alerts opened (detections suppressed into alerts: `detections` less this).
    pub alerts: u64,
    /// Challengers promoted by the automatic policy.
    pub promoted: u64,
    /// Detections silenced by a suppression rule from analysts' feedback.
    pub suppressed: u64,
    /// Groups flagged outside the parity band, over the epochs (`crate::parity`).
    pub parity_breaches: u64,
    /// Features drifted over all models: epochs per feature (`crate::drift`).
    pub drifted: BTreeMap<String, u64>,
    /// Lines of single models that drifted (a model and a feature in an epoch).
    pub drifted_models: u64,
    /// Retraining asked for because drift lasted (`[drift] retrain_after`).
    pub retrain_requests: u64,
    /// Training windows emitted for those requests.
    pub retrained: u64,
    /// Epochs the dataflow has written to the sinks (counted by worker 0).
    pub epochs_done: u64,
    /// Seconds from each epoch being sent into the dataflow (its input closed) to its output
    /// written, summed (worker 0).
    pub epoch_seconds: f64,
    /// That time for the last epoch written.
    pub last_epoch_seconds: f64,
    /// Stage states written at checkpoints (summed over workers).
    pub checkpoint_writes: u64,
    /// Seconds spent writing them.
    pub checkpoint_seconds: f64,
    /// Records in the source's topic not read yet (summed over workers' partitions; Kafka
    /// sources, measured at most every 5 s).
    pub consumer_lag: u64,
    /// Dead letters written.
    pub dead_letters: u64,
    /// Errors that make the run fail (an output that cannot be written), each with its
    /// chain.
    pub fatal: Vec<Failure>,
}

/// An error that stops the run, kept whole (its source chain) to be returned by the worker.
#[derive(Debug, Clone)]
pub struct Failure(pub Arc<Error>);

impl PartialEq for Failure {
    fn eq(&self, other: &Self) -> bool {
        self.0.chain() == other.0.chain()
    }
}

impl Serialize for Failure {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.chain())
    }
}

impl Stats {
    /// Records an error that stops the run (logged now, returned by the worker at its end).
    pub fn fail(&mut self, e: Error) {
        tracing::error!(error = %e.chain(), "the run stops");
        self.fatal.push(Failure(Arc::new(e)));
    }

    /// The first failure as the run's error, if any.
    pub fn failed(&self) -> Option<Error> {
        self.fatal.first().map(|f| Error::Failed {
            source: f.0.clone(),
            others: self.fatal.len() - 1,
        })
    }

    /// Adds another worker's counters.
    pub fn merge(&mut self, o: Stats) {
        self.files += o.files;
        self.bytes += o.bytes;
        self.rows += o.rows;
        self.skipped += o.skipped;
        self.users.extend(o.users);
        self.training_windows += o.training_windows;
        self.models_trained += o.models_trained;
        self.train_failed += o.train_failed;
        self.train_epochs += o.train_epochs;
        self.infer_epochs += o.infer_epochs;
        self.unscored += o.unscored;
        self.train_seconds += o.train_seconds;
        self.scored += o.scored;
        self.score_seconds += o.score_seconds;
        self.generic_fallbacks += o.generic_fallbacks;
        self.detections += o.detections;
        self.over_budget += o.over_budget;
        self.alerts += o.alerts;
        self.promoted += o.promoted;
        self.parity_breaches += o.parity_breaches;
        self.suppressed += o.suppressed;
        for (f, n) in o.drifted {
            *self.drifted.entry(f).or_default() += n;
        }
        self.drifted_models += o.drifted_models;
        self.retrain_requests += o.retrain_requests;
        self.retrained += o.retrained;
        self.epochs_done += o.epochs_done;
        self.epoch_seconds += o.epoch_seconds;
        self.last_epoch_seconds = self.last_epoch_seconds.max(o.last_epoch_seconds);
        self.checkpoint_writes += o.checkpoint_writes;
        self.checkpoint_seconds += o.checkpoint_seconds;
        self.consumer_lag += o.consumer_lag;
        self.dead_letters += o.dead_letters;
        self.fatal.extend(o.fatal);
    }
}

impl Stats {
    /// What the run was asked to do and did not, one sentence each: it trained no model
    /// though epochs trained, models failed, it scored no row though epochs scored, or rows
    /// could not be scored. Empty for a run that did everything.
    pub fn shortfalls(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.train_epochs > 0 && self.models_trained == 0 {
            out.push(format!(
                "trained no model though the run was to train: {} rows were read, {} training window(s) formed, {} model(s) failed",
                self.rows, self.training_windows, self.train_failed
            ));
        } else if self.train_failed > 0 {
            out.push(format!(
                "{} model(s) failed to train or to be registered (see the log and the dead letters)",
                self.train_failed
            ));
        }
        if self.infer_epochs > 0 && self.scored == 0 {
            out.push(format!(
                "scored no row though the run was to score: {} rows were read, {} could not be scored",
                self.rows, self.unscored
            ));
        } else if self.unscored > 0 {
            out.push(format!(
                "{} row(s) could not be scored: no usable model (see the log and the dead letters)",
                self.unscored
            ));
        }
        out
    }
}

/// One worker's counters, shared by its operators.
pub type SharedStats = Rc<RefCell<Stats>>;

/// A progress bar on stderr: epochs done of all, rows, seconds.
pub(crate) fn progress_bar(done: usize, total: usize, s: &Stats, started: Instant) {
    let width = 30;
    let filled = (done * width).checked_div(total).unwrap_or(width);
    let mut err = std::io::stderr();
    let _ = write!(
        err,
        "\r[{}{}] epoch {done}/{total}  {} rows  {:.0} s",
        "#".repeat(filled),
        " ".repeat(width - filled),
        s.rows,
        started.elapsed().as_secs_f64()
    );
    let _ = err.flush();
}
