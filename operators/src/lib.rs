//! dfp's pipeline stages, one file per Morpheus module they replace, and the traits a run is
//! put together from.
//!
//! Each stage is a serde config, a pure state machine or function with no timely types (so it
//! is unit-tested on its own), and, where it runs inside the dataflow, a thin timely operator.
//! Inputs are [`source::Source`]s, outputs [`sink::Sink`]s, stage state [`state::Stateful`]
//! (checkpointed at a cut through [`state::StateRegistry`]). [`pipeline::run`] wires them into
//! Morpheus' integrated training and inference pipeline:
//!
//! source -> file to batch -> split users -> rolling window -> data prep ->
//! { training -> registry writer | inference -> filter detections -> alert budget ->
//! post-processing -> { serialize | alert suppression } -> sinks }

// `Result` here mostly routes records between two streams (`ok_err`): a dead letter on the
// `Err` side is data, as large as the rows it carries, not an error to keep small.
#![allow(clippy::result_large_err)]

pub mod alerts;
pub mod budget;
pub mod checkpoint;
pub mod config;
pub mod data_prep;
pub mod dead_letter;
pub mod demo;
pub mod drift;
pub mod evaluate;
pub mod feedback;
pub mod file_batcher;
pub mod file_to_batch;
pub mod filter_detections;
pub mod frontier;
pub mod inference;
pub mod kafka;
pub mod metrics;
pub mod mlflow;
pub mod notify;
pub mod online;
pub mod parity;
pub mod pipeline;
pub mod plan;
pub mod post_proc;
pub mod promotion;
pub mod registry_writer;
pub mod replay;
pub mod report;
pub mod retry;
pub mod rolling_window;
pub mod run_status;
pub mod serialize;
pub mod shadow;
pub mod sink;
pub mod source;
pub mod split_users;
pub mod state;
pub mod telemetry;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
mod testing;
pub mod training;
