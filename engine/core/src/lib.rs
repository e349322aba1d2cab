//! dfp's core: what every part of dfp shares and nothing heavy: the source schema, control
//! messages and their periods and times, config problems with their paths, the one error
//! type, Arrow batch access, file writes that stay where they are told, and the structure of
//! JSON text. It compiles no model, no GPU runtime and no Kafka client.

pub mod batch;
pub mod config;
pub mod control;
pub mod error;
pub mod files;
pub mod format;
pub mod hash;
pub mod json_scan;
pub mod period;
pub mod schema;
pub mod timefmt;

pub use error::{Error, Result};
