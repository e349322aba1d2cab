//! dfp's engine: source schemas, ingestion of log files to Arrow, control messages, the log
//! generator, and the error type shared by all of them.
//!
//! The pipeline stages built on these pieces live in `dfp-operators`; the `dfp` binary in
//! `dfp-jobs` wires them together.

pub mod config;
pub mod control;
pub mod derive;
pub mod error;
pub mod files;
pub mod frame;
pub mod generate;
pub mod hash;
pub mod ingest;
pub mod json_scan;
pub mod model;
pub mod period;
pub mod registry;
pub mod rows;
pub mod schema;
pub mod timefmt;

pub use error::{Error, Result};
