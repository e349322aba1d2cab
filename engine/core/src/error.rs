//! The engine's one error type.
//!
//! Every variant's `Display` names the context of this layer (the file, the record index, the
//! field or the config path) and keeps the underlying cause in `#[source]`, so the command line
//! can print the whole chain.

use std::path::PathBuf;
use std::sync::Arc;

/// Errors raised by the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{path}: {action}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// What was being done ("reading", "creating directory", ...).
        action: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A whole input file could not be read as the expected format (truncated, invalid UTF-8,
    /// not JSON, ...). Records read before the break are kept by the reader.
    #[error("{path}: broken file after {records_read} records: {reason}")]
    BrokenFile {
        /// The file.
        path: PathBuf,
        /// How many records were read before the break.
        records_read: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A config or control message has problems; each one names its dotted path.
    #[error("{origin}: {} problem(s):\n{}", problems.len(), crate::config::Problem::list(problems))]
    Invalid {
        /// Where the config came from (a file name or "built-in azure").
        origin: String,
        /// Every problem found.
        problems: Vec<crate::config::Problem>,
    },
    /// A source schema name that is neither built in nor a readable file.
    #[error("unknown source schema {name:?}: not a built-in source ({known}) and not a file")]
    UnknownSource {
        /// The name asked for.
        name: String,
        /// The built-in names, comma separated.
        known: String,
    },
    /// Building an Arrow batch failed.
    #[error("building Arrow batch for {context}")]
    Arrow {
        /// What was being built.
        context: String,
        /// Arrow's error.
        #[source]
        source: arrow::error::ArrowError,
    },
    /// The autoencoder cannot be trained or applied on this input (a feature column missing or of
    /// the wrong type, no rows, a model that does not fit the data).
    #[error("model {context}: {problem}")]
    Model {
        /// The model or user concerned.
        context: String,
        /// What is wrong.
        problem: String,
    },
    /// A pipeline stage or connection failed (the dataflow, Kafka, a replay).
    #[error("{stage}: {problem}")]
    Stage {
        /// The stage or connection.
        stage: String,
        /// What went wrong.
        problem: String,
    },
    /// A model file is corrupt, truncated, or written for another format or schema.
    #[error("model file {path}: {problem}")]
    ModelFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// A stage of a run failed, which stopped the run.
    #[error("the run stopped{}", if *others > 0 { format!(" ({others} more failure(s) logged)") } else { String::new() })]
    Failed {
        /// The first failure, with its own chain.
        #[source]
        source: Arc<Error>,
        /// More failures of the same run, logged.
        others: usize,
    },
    /// Serializing or deserializing JSON failed.
    #[error("{context}")]
    Json {
        /// What was being done.
        context: String,
        /// serde_json's error.
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// Wraps an I/O error with the path and the action that failed.
    pub fn io(path: impl Into<PathBuf>, action: &'static str, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            action,
            source,
        }
    }

    /// A stage error (`kafka`, `dataflow`, `replay`).
    pub fn stage(stage: impl Into<String>, problem: impl Into<String>) -> Self {
        Error::Stage {
            stage: stage.into(),
            problem: problem.into(),
        }
    }

    /// This error with its causes, `: `-separated (the operating system's error of an I/O
    /// failure included): what a dead letter or a log line shows.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            text.push_str(": ");
            text.push_str(&c.to_string());
            cause = c.source();
        }
        text
    }

    /// A model error for `context` (a user or model name).
    pub fn model(context: impl Into<String>, problem: impl Into<String>) -> Self {
        Error::Model {
            context: context.into(),
            problem: problem.into(),
        }
    }
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
