//! dfp's pipeline stages, one file per Morpheus module they replace.
//!
//! Each stage is a serde config, a pure state machine or function with no timely types (so it
//! is unit-tested on its own), and, where it runs inside the dataflow, a thin timely operator.

pub mod file_batcher;
