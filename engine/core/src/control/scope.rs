//! Where a control message's load globs resolve and what they may read: a [`FileScope`] (a
//! base directory for relative globs and the roots every file must lie under), and the
//! expansion of globs to existing files within it. Only local files (and `file://` paths) are
//! read; a glob naming another file system, or reaching outside the roots, is refused with the
//! pattern named.

use std::path::{Path, PathBuf};

use super::ControlMessage;
use crate::{Error, Result};

/// Where load globs resolve, and what they may read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileScope {
    /// Relative globs resolve against this directory.
    pub base: PathBuf,
    /// Every file a glob reaches must lie under one of these directories (links and `..`
    /// resolved); empty: anywhere. A control topic is confined, so that whoever can write to
    /// it cannot make dfp read other files.
    pub roots: Vec<PathBuf>,
}

impl FileScope {
    /// Relative globs against `base`, reading anywhere.
    pub fn at(base: impl Into<PathBuf>) -> Self {
        Self {
            base: base.into(),
            roots: Vec::new(),
        }
    }

    /// Relative globs against `base`, reading only under `roots`.
    pub fn confined(base: impl Into<PathBuf>, roots: Vec<PathBuf>) -> Self {
        let roots = roots
            .into_iter()
            .map(|r| r.canonicalize().unwrap_or_else(|_| absolute(&r)))
            .collect();
        Self {
            base: base.into(),
            roots,
        }
    }

    /// The scope of the control message `msg` read from `path`: relative globs resolve
    /// against `files_root` when given, else against the message's own directory; when nothing matches there but something does in
    /// the working directory (Morpheus resolves against the working directory), against the
    /// working directory, saying so in the log. `allowed` (may be empty: anywhere) confines
    /// every read.
    pub fn for_message(
        msg: &ControlMessage,
        path: &Path,
        files_root: Option<&Path>,
        allowed: &[PathBuf],
    ) -> Self {
        if let Some(root) = files_root {
            return Self::confined(root, allowed.to_vec());
        }
        let beside = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        let matches = |base: &Path| {
            let scope = FileScope::confined(base, allowed.to_vec());
            msg.inputs.iter().any(|i| {
                i.resolve_files(&scope)
                    .is_ok_and(|(files, _)| !files.is_empty())
            })
        };
        let cwd = PathBuf::from(".");
        let base = if !matches(&beside) && absolute(&beside) != absolute(&cwd) && matches(&cwd) {
            tracing::info!(
                message = %path.display(),
                "its load globs match nothing beside the control message but do in the working directory: resolving them there (Morpheus' convention; --files-root chooses)"
            );
            cwd
        } else {
            tracing::debug!(message = %path.display(), root = %beside.display(), "load globs resolve beside the control message");
            beside
        };
        Self::confined(base, allowed.to_vec())
    }

    /// Whether `path` (absolute) lies under an allowed root.
    fn allows(&self, path: &Path) -> bool {
        self.roots.is_empty() || self.roots.iter().any(|r| path.starts_with(r))
    }

    fn roots_text(&self) -> String {
        self.roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `path` made absolute against the working directory, `.` and `..` resolved by name.
fn absolute(path: &Path) -> PathBuf {
    let full = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    let mut out = PathBuf::new();
    for c in full.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// A glob as a local pattern: `file://` stripped (fsspec's local protocol); any other scheme
/// (`s3://`, `gs://`, `https://`, ...) is an error naming it: dfp reads local files only.
pub(super) fn local_pattern(pattern: &str) -> std::result::Result<&str, String> {
    if let Some(rest) = pattern.strip_prefix("file://") {
        return Ok(rest);
    }
    match pattern.split_once("://") {
        Some((scheme, _))
            if !scheme.is_empty()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')) =>
        {
            Err(format!(
                "{pattern:?}: the {scheme}:// file system is not supported; dfp reads local files \
                 (and file:// paths): copy or mount the files locally"
            ))
        }
        _ => Ok(pattern),
    }
}

/// Expands glob patterns to existing files within `scope`; sorted and without duplicates.
/// Also returns the patterns (as resolved) that matched nothing, for reporting. A pattern
/// that reaches outside the scope's roots, or names a remote file system, is an error that
/// names the pattern (never a file's content).
pub fn expand_globs<'p>(
    patterns: impl IntoIterator<Item = &'p str>,
    scope: &FileScope,
) -> Result<(Vec<PathBuf>, Vec<String>)> {
    let invalid = |message: String| Error::Invalid {
        origin: "file patterns".to_string(),
        problems: vec![crate::config::Problem {
            path: "files".to_string(),
            message,
        }],
    };
    let mut files = Vec::new();
    let mut unmatched = Vec::new();
    for pattern in patterns {
        let local = local_pattern(pattern).map_err(invalid)?;
        let full = if Path::new(local).is_absolute() {
            PathBuf::from(local)
        } else {
            scope.base.join(local)
        };
        let outside = || {
            invalid(format!(
                "{pattern:?} reaches outside the allowed roots ({}); the message is refused",
                scope.roots_text()
            ))
        };
        if !scope.allows(&absolute(&full)) {
            return Err(outside());
        }
        let full_text = full.to_string_lossy().into_owned();
        let paths =
            glob::glob(&full_text).map_err(|e| invalid(format!("bad glob {pattern:?}: {e}")))?;
        let before = files.len();
        for entry in paths {
            match entry {
                Ok(path) if path.is_file() => {
                    let real = path.canonicalize().unwrap_or_else(|_| absolute(&path));
                    if !scope.allows(&real) {
                        return Err(outside());
                    }
                    files.push(path);
                }
                Ok(_) => {}
                Err(e) => {
                    let path = e.path().to_path_buf();
                    return Err(Error::io(path, "listing files", e.into()));
                }
            }
        }
        if files.len() == before {
            unmatched.push(full_text);
        }
    }
    files.sort();
    files.dedup();
    Ok((files, unmatched))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_globs_against_a_base() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("logs")).unwrap();
        for name in ["b.json", "a.json", "c.txt"] {
            std::fs::write(dir.path().join("logs").join(name), "[]").unwrap();
        }
        let text = r#"{"inputs":[{"tasks":[{"type":"load","properties":{"files":["logs/*.json","none/*.json"]}},{"type":"inference"}]}]}"#;
        let msg = ControlMessage::parse(text, "m").unwrap();
        let (files, unmatched) = msg.inputs[0]
            .resolve_files(&FileScope::at(dir.path()))
            .unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(names, ["a.json", "b.json"]);
        assert_eq!(unmatched.len(), 1);
        assert!(unmatched[0].ends_with("none/*.json"));
    }
}
