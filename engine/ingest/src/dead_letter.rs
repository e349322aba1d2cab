//! Reporting rejected records and broken files: a few logged per file, and all of them
//! written by the [`DeadLetterWriter`] as newline-delimited JSON.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use dfp_core::{Error, Result};

use crate::{FileRead, Rejected};

pub(crate) fn log_rejections(path: &Path, rejected: &[Rejected], broken: Option<&Error>) {
    const SHOWN: usize = 3;
    for r in rejected.iter().take(SHOWN) {
        tracing::warn!(file = %path.display(), record = r.record, reason = %r.reason, "record rejected");
    }
    if rejected.len() > SHOWN {
        tracing::warn!(file = %path.display(), more = rejected.len() - SHOWN, "more records rejected (see the dead-letter output)");
    }
    if let Some(e) = broken {
        tracing::error!(file = %path.display(), error = %e, "broken input file");
    }
}

/// Writes rejected records and broken files as newline-delimited JSON, one object per line:
/// `{"file", "record", "reason", "raw"}` (`record` and `raw` are null for a broken file).
pub struct DeadLetterWriter {
    path: PathBuf,
    out: BufWriter<File>,
    written: u64,
}

impl DeadLetterWriter {
    /// Creates (truncates) the dead-letter file, and its directory if needed.
    pub fn create(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "creating directory", e))?;
        }
        let file = dfp_core::files::create(path, "creating dead-letter file")?;
        Ok(Self {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
            written: 0,
        })
    }

    /// Writes every rejection and the break, if any, of one file read.
    pub fn write_read(&mut self, read: &FileRead) -> Result<()> {
        let file = read.path.display().to_string();
        for r in &read.rejected {
            self.line(&serde_json::json!({
                "file": file, "record": r.record, "reason": r.reason, "raw": r.raw,
            }))?;
        }
        if let Some(e) = &read.broken {
            self.line(&serde_json::json!({
                "file": file, "record": null, "reason": e.to_string(), "raw": null,
            }))?;
        }
        Ok(())
    }

    fn line(&mut self, value: &serde_json::Value) -> Result<()> {
        let io = |e| Error::io(&self.path, "writing dead-letter file", e);
        serde_json::to_writer(&mut self.out, value).map_err(|e| Error::Json {
            context: format!("{}: writing dead-letter record", self.path.display()),
            source: e,
        })?;
        self.out.write_all(b"\n").map_err(io)?;
        self.written += 1;
        Ok(())
    }

    /// How many lines were written.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Flushes to disk.
    pub fn flush(&mut self) -> Result<()> {
        self.out
            .flush()
            .map_err(|e| Error::io(&self.path, "flushing dead-letter file", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InputFormat;
    use crate::tests::{AZURE_OK, reader};

    #[test]
    fn dead_letters_are_ndjson_with_file_record_reason() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!("[{AZURE_OK},7,{}", &AZURE_OK[..10]);
        let r =
            reader("azure").read_bytes(Path::new("dl.json"), text.as_bytes(), InputFormat::Auto);
        let out = dir.path().join("sub/dead.ndjson");
        let mut w = DeadLetterWriter::create(&out).unwrap();
        w.write_read(&r).unwrap();
        w.flush().unwrap();
        // The record 7, the cut record, and the break.
        assert_eq!(w.written(), 3);
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["file"], "dl.json");
        assert_eq!(lines[0]["record"], 1);
        assert_eq!(lines[0]["raw"], "7");
        assert_eq!(lines[1]["record"], 2);
        assert_eq!(lines[1]["raw"], &AZURE_OK[..10]);
        assert!(lines[2]["record"].is_null());
        assert!(lines[2]["reason"].as_str().unwrap().contains("broken file"));
    }
}
