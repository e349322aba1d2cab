//! dfp's engine, one crate to depend on: it re-exports the narrow crates under one roof, at
//! the paths the rest of dfp uses, and picks the backend of a device ([`device`]).
//!
//! - `dfp-core`: source schemas, control messages, periods and times, config problems, the
//!   error type, Arrow batch access, safe file writes, JSON structure;
//! - `dfp-ingest`: readers (files and Kafka payloads) to Arrow, rows, derived features;
//! - `dfp-model`: the autoencoder, the training loop, the CPU backend, model files, registry;
//! - `dfp-generate`: the log generator;
//! - `dfp-gpu` (feature `gpu`, on by default): the cubecl backend on CUDA or wgpu.
//!
//! What needs only a schema or a reader depends on `dfp-core` or `dfp-ingest` and compiles no
//! model and no GPU runtime.

pub mod device;

pub use dfp_core::{
    Error, Result, batch, config, control, error, files, format, hash, json_scan, period, schema,
    timefmt,
};
pub use dfp_generate as generate;
#[cfg(feature = "gpu")]
pub use dfp_gpu as gpu;
pub use dfp_ingest as ingest;
pub use dfp_ingest::{derive, frame, rows};
pub use dfp_model as model;
pub use dfp_model::lifecycle;
pub use dfp_model::registry;
