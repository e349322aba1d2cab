//! Run metrics: counters each worker's stages add to (through a shared [`SharedStats`]), summed
//! over workers into the run summary. State: the counters, for the life of the run.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;

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
    /// Dead letters written.
    pub dead_letters: u64,
    /// Errors that make the run fail (an output that cannot be written).
    pub fatal: Vec<String>,
}

impl Stats {
    /// Adds another worker's counters.
    pub fn merge(&mut self, o: Stats) {
        self.files += o.files;
        self.bytes += o.bytes;
        self.rows += o.rows;
        self.skipped += o.skipped;
        self.users.extend(o.users);
        self.training_windows += o.training_windows;
        self.models_trained += o.models_trained;
        self.train_seconds += o.train_seconds;
        self.scored += o.scored;
        self.score_seconds += o.score_seconds;
        self.generic_fallbacks += o.generic_fallbacks;
        self.detections += o.detections;
        self.dead_letters += o.dead_letters;
        self.fatal.extend(o.fatal);
    }
}

/// One worker's counters, shared by its operators.
pub type SharedStats = Rc<RefCell<Stats>>;
