//! Writing files where dfp was told to, and nowhere else: outputs, dead letters, model
//! versions and state files are opened without following symbolic links, so a link planted in
//! an output or registry directory cannot redirect a write to a file outside it; temporary
//! files are created new (never an existing file or link) and removed when a write fails.
//!
//! Stateless helpers; each error names the path and keeps the operating system's cause.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::{Error, Result};

#[cfg(unix)]
fn no_follow(opts: &mut OpenOptions) -> &mut OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    opts.custom_flags(libc::O_NOFOLLOW)
}

#[cfg(not(unix))]
fn no_follow(opts: &mut OpenOptions) -> &mut OpenOptions {
    opts
}

/// The error of opening `path`, saying so when it is a symbolic link.
fn open_error(path: &Path, action: &'static str, e: std::io::Error) -> Error {
    if is_link(path) {
        return Error::stage(
            "output",
            format!(
                "{} is a symbolic link: dfp does not write through links (remove it, or write elsewhere)",
                path.display()
            ),
        );
    }
    Error::io(path, action, e)
}

/// Whether `path` is a symbolic link.
pub fn is_link(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

/// Creates or truncates `path` for writing; a symbolic link there is refused.
pub fn create(path: &Path, action: &'static str) -> Result<File> {
    no_follow(OpenOptions::new().write(true).create(true).truncate(true))
        .open(path)
        .map_err(|e| open_error(path, action, e))
}

/// Opens the existing file `path` to append to it; a symbolic link there is refused.
pub fn append(path: &Path, action: &'static str) -> Result<File> {
    no_follow(OpenOptions::new().append(true))
        .open(path)
        .map_err(|e| open_error(path, action, e))
}

/// Writes `bytes` to a new temporary file `tmp` (refused if anything, a link included, is
/// there already); on failure (a full or read-only disk) what was written is removed.
pub fn write_new(tmp: &Path, bytes: &[u8], action: &'static str) -> Result<File> {
    let mut file = no_follow(OpenOptions::new().write(true).create_new(true))
        .open(tmp)
        .map_err(|e| open_error(tmp, action, e))?;
    if let Err(e) = file.write_all(bytes) {
        let _ = std::fs::remove_file(tmp);
        return Err(Error::io(tmp, action, e));
    }
    Ok(file)
}

/// Replaces `path` with `bytes` atomically: a new temporary file beside it, synced, then
/// renamed over it (a link at `path` is replaced, never followed). Nothing is left behind
/// when it fails.
pub fn replace(path: &Path, bytes: &[u8], action: &'static str) -> Result<()> {
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let file = write_new(&tmp, bytes, action)?;
    let synced = file.sync_all();
    drop(file);
    let done = synced.and_then(|()| std::fs::rename(&tmp, path));
    done.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, action, e)
    })
}

/// A directory held by one dfp process: an exclusive lock on a file in it (`flock`), which
/// the kernel releases when the process ends however it ends, so a killed run never leaves a
/// stale lock. Dropping it releases the lock.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Locks `dir` (created if missing) for `what` ("output directory", "state directory");
    /// another process holding it is an error naming the directory and that process.
    pub fn acquire(dir: &Path, what: &str) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "creating directory", e))?;
        let path = dir.join(".dfp-lock");
        let mut file = no_follow(OpenOptions::new().read(true).write(true).create(true))
            .truncate(false)
            .open(&path)
            .map_err(|e| open_error(&path, "opening lock file", e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                return Err(Error::stage(
                    "lock",
                    format!(
                        "the {what} {} is in use by another dfp process ({}): one instance per {what}",
                        dir.display(),
                        holder.trim()
                    ),
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::io(&path, "locking", e));
            }
        }
        let me = format!("pid {}", std::process::id());
        let _ = file.set_len(0).and_then(|()| file.write_all(me.as_bytes()));
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn links_are_refused_and_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside.txt");
        std::fs::write(&outside, "precious").unwrap();
        let link = dir.path().join("out.csv");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        let e = create(&link, "creating output").unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        assert!(append(&link, "appending").is_err());
        assert!(write_new(&link, b"x", "writing").is_err());
        // Replacing swaps the link itself for a file; the target is untouched.
        replace(&link, b"new", "writing").unwrap();
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "precious");
        assert_eq!(std::fs::read_to_string(&link).unwrap(), "new");
        assert!(!is_link(&link));
    }

    #[test]
    fn a_failed_write_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let e = replace(&dir.path().join("missing/x.json"), b"x", "writing").unwrap_err();
        assert!(e.chain().contains("No such file"), "{}", e.chain());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_locked_directory_is_refused_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let held = DirLock::acquire(dir.path(), "output directory").unwrap();
        let e = DirLock::acquire(dir.path(), "output directory")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("in use by another dfp process") && e.contains("pid"),
            "{e}"
        );
        drop(held);
        DirLock::acquire(dir.path(), "output directory").unwrap();
    }
}
