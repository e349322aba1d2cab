//! The run plan: a control message becomes a list of epochs, the dataflow's timestamps. Each
//! input of the message is resolved to files, dated and grouped by period by the file batcher,
//! and each resulting batch is one epoch carrying its files and what to do with them (train,
//! infer, payload or streaming). Every worker builds the same plan, so epochs mean the same
//! everywhere. State: none.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use dfp_engine::control::{ControlMessage, DataType, FileScope};
use dfp_engine::ingest::InputFormat;
use dfp_engine::{Error, Result};

use crate::file_batcher::{DEFAULT_PERIOD, FileBatcherConfig, batch_files};

/// One epoch: one batch of files of one control-message input.
#[derive(Debug, Clone, PartialEq)]
pub struct Epoch {
    /// Index of the control-message input.
    pub input: usize,
    /// Index of the batch within the input.
    pub batch: usize,
    /// Start of the batch's period.
    pub period_start: DateTime<Utc>,
    /// End of the batch's period (exclusive).
    pub period_end: DateTime<Utc>,
    /// Morpheus' `n_groups` of the input: its bins from the first file's to the last file's.
    pub n_groups: usize,
    /// The files, in time order.
    pub files: Vec<PathBuf>,
    /// How to read them.
    pub format: InputFormat,
    /// Whether the epoch trains.
    pub train: bool,
    /// Whether the epoch scores.
    pub infer: bool,
    /// Whether its rows skip the rolling window (`data_type: payload`).
    pub payload: bool,
}

/// Every epoch of a run, in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// The epochs; epoch `t` is `epochs[t]`.
    pub epochs: Vec<Epoch>,
    /// Load patterns that matched no file (reported, not fatal).
    pub unmatched: Vec<String>,
}

impl Plan {
    /// The plan of `msg`, its globs resolved within `scope`; an input without a period is
    /// batched by [`DEFAULT_PERIOD`], whatever the source (Morpheus' default).
    pub fn build(msg: &ControlMessage, scope: &FileScope) -> Result<Self> {
        let mut plan = Plan::default();
        for (i, input) in msg.inputs.iter().enumerate() {
            let (files, unmatched) = input.resolve_files(scope)?;
            plan.unmatched.extend(unmatched);
            let cfg = FileBatcherConfig::new(DEFAULT_PERIOD)
                .with_options(&input.metadata.batching_options)
                .map_err(|e| Error::Invalid {
                    origin: "control message".into(),
                    problems: vec![dfp_engine::config::Problem {
                        path: format!("inputs[{i}].metadata.batching_options"),
                        message: e.to_string(),
                    }],
                })?;
            for b in batch_files(&files, &cfg) {
                plan.epochs.push(Epoch {
                    input: i,
                    batch: b.index,
                    period_start: b.period_start,
                    period_end: b.period_end,
                    n_groups: b.count,
                    files: b.files.into_iter().map(|f| f.path).collect(),
                    format: input.metadata.file_to_df_options.format,
                    train: input.trains(),
                    infer: input.infers(),
                    payload: input.metadata.data_type == DataType::Payload,
                });
            }
        }
        Ok(plan)
    }

    /// Files over all epochs.
    pub fn files(&self) -> usize {
        self.epochs.iter().map(|e| e.files.len()).sum()
    }
}
