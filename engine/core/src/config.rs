//! Shared pieces of config validation: a [`Problem`] names one thing wrong at a dotted path
//! (`inputs[0].metadata.batching_options.period`), and [`Problems`] collects them so a
//! validator reports every problem at once instead of stopping at the first.

use std::fmt;

/// One problem in a config or control message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the offending value, `""` for the document itself.
    pub path: String,
    /// What is wrong, in a short sentence.
    pub message: String,
}

impl Problem {
    /// Formats problems one per line, indented, for error messages.
    pub fn list(problems: &[Problem]) -> String {
        problems
            .iter()
            .map(|p| format!("  {p}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// A collector of problems.
#[derive(Debug, Default)]
pub struct Problems(Vec<Problem>);

impl Problems {
    /// An empty collector.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a problem at `path`.
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Whether no problem was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(value)` when no problem was found, else [`crate::Error::Invalid`] with all of them.
    pub fn finish<T>(self, origin: &str, value: T) -> crate::Result<T> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(crate::Error::Invalid {
                origin: origin.to_string(),
                problems: self.0,
            })
        }
    }
}

/// Parses TOML into `T`; a syntax or shape error becomes [`crate::Error::Invalid`] naming
/// `origin`.
pub fn parse_toml<T: serde::de::DeserializeOwned>(text: &str, origin: &str) -> crate::Result<T> {
    toml::from_str(text).map_err(|e| crate::Error::Invalid {
        origin: origin.to_string(),
        problems: vec![Problem {
            path: String::new(),
            message: e.to_string().trim_end().to_string(),
        }],
    })
}

/// Joins a parent path and a key: `join("a", "b") == "a.b"`, `join("", "b") == "b"`.
pub fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}
