//! The files sink (Morpheus' `write_to_file` stage): the output lines go to files in the output
//! directory: `dfp_detections_{source}.csv` and `.jsonl`, `dfp_scores_{source}.csv` (with
//! `--write-scores`), `dfp_alerts_{source}.jsonl` (`[alerts]`), `dfp_shadow_{source}.csv`
//! (challengers' scores) and `dfp_dead_letter_{source}.jsonl`, each epoch's lines appended in the
//! order they come (sorted by the sink stage) and flushed. State: each file's length, synced to
//! disk for a checkpoint; a restart from it cuts the files back to those lengths
//! ([`OutputFiles::resume`]), so lines written after the cut are not doubled. Files are
//! created and opened without following links.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use dfp_engine::{Error, Result};
use serde::{Deserialize, Serialize};

use super::Sink;
use crate::checkpoint;
use crate::serialize::{Columns, Line, OutKind};

/// The output files of a run.
pub struct OutputFiles {
    files: HashMap<OutKind, (PathBuf, BufWriter<File>)>,
}

/// The path of one output file.
pub fn output_path(dir: &Path, source: &str, kind: OutKind) -> PathBuf {
    dir.join(match kind {
        OutKind::DetectionsCsv => format!("dfp_detections_{source}.csv"),
        OutKind::DetectionsJson => format!("dfp_detections_{source}.jsonl"),
        OutKind::ScoresCsv => format!("dfp_scores_{source}.csv"),
        OutKind::DeadLetters => format!("dfp_dead_letter_{source}.jsonl"),
        OutKind::Alerts => format!("dfp_alerts_{source}.jsonl"),
        OutKind::Shadow => format!("dfp_shadow_{source}.csv"),
        OutKind::Parity => format!("dfp_parity_{source}.csv"),
        OutKind::Drift => format!("dfp_drift_{source}.csv"),
    })
}

/// The output files' lengths at a cut.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkState {
    lengths: Vec<(OutKind, u64)>,
}

impl OutputFiles {
    /// Creates (truncates) the files of `kinds` in `dir` (created if missing), CSV headers
    /// written.
    pub fn create(dir: &Path, source: &str, columns: &Columns, kinds: &[OutKind]) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "creating output directory", e))?;
        let mut files = HashMap::new();
        for &kind in kinds {
            let path = output_path(dir, source, kind);
            let file = dfp_engine::files::create(&path, "creating output")?;
            let mut w = BufWriter::new(file);
            let header = match kind {
                OutKind::DetectionsCsv | OutKind::ScoresCsv => Some(columns.csv_header()),
                OutKind::Shadow => Some(crate::shadow::HEADER.to_string()),
                OutKind::Parity => Some(crate::parity::HEADER.to_string()),
                OutKind::Drift => Some(crate::drift::HEADER.to_string()),
                OutKind::DetectionsJson | OutKind::DeadLetters | OutKind::Alerts => None,
            };
            if let Some(header) = header {
                writeln!(w, "{header}").map_err(|e| Error::io(&path, "writing output", e))?;
            }
            w.flush()
                .map_err(|e| Error::io(&path, "writing output", e))?;
            files.insert(kind, (path, w));
        }
        Ok(Self { files })
    }

    /// Reopens the files in `dir` as they were at a cut: each is cut back to its length then,
    /// dropping what a crashed process wrote after it.
    pub fn resume(dir: &Path, source: &str, state: &SinkState) -> Result<Self> {
        Self::open(dir, source, state, true)
    }

    /// Reopens the files of `state` in `dir` to append to them as they are now.
    pub fn reopen(dir: &Path, source: &str, state: &SinkState) -> Result<Self> {
        Self::open(dir, source, state, false)
    }

    fn open(dir: &Path, source: &str, state: &SinkState, cut: bool) -> Result<Self> {
        let mut files = HashMap::new();
        for &(kind, len) in &state.lengths {
            let path = output_path(dir, source, kind);
            let file = dfp_engine::files::append(&path, "reopening output")?;
            let now = file
                .metadata()
                .map_err(|e| Error::io(&path, "reopening output", e))?
                .len();
            if now < len {
                return Err(Error::stage(
                    "checkpoint",
                    format!(
                        "{}: {now} bytes, shorter than the {len} it had at the checkpoint; it was \
                         changed outside dfp (remove the state directory to start over)",
                        path.display()
                    ),
                ));
            }
            if cut {
                file.set_len(len)
                    .map_err(|e| Error::io(&path, "cutting output back to the checkpoint", e))?;
            }
            files.insert(kind, (path, BufWriter::new(file)));
        }
        Ok(Self { files })
    }

    /// Each file's length, synced to disk.
    pub fn lengths(&mut self) -> Result<SinkState> {
        let mut lengths = Vec::new();
        for (kind, (path, w)) in &mut self.files {
            w.flush()
                .map_err(|e| Error::io(path.as_path(), "flushing output", e))?;
            let f = w.get_ref();
            f.sync_data()
                .map_err(|e| Error::io(path.as_path(), "syncing output", e))?;
            let len = f
                .metadata()
                .map_err(|e| Error::io(path.as_path(), "reading output length", e))?
                .len();
            lengths.push((*kind, len));
        }
        lengths.sort();
        Ok(SinkState { lengths })
    }

    /// Writes one epoch's lines, in order, and flushes.
    pub fn write(&mut self, lines: &[Line]) -> Result<()> {
        for line in lines {
            if let Some((path, w)) = self.files.get_mut(&line.kind) {
                writeln!(w, "{}", line.text)
                    .map_err(|e| Error::io(path.as_path(), "writing output", e))?;
            }
        }
        for (path, w) in self.files.values_mut() {
            w.flush()
                .map_err(|e| Error::io(path.as_path(), "flushing output", e))?;
        }
        Ok(())
    }
}

impl Sink for OutputFiles {
    fn describe(&self) -> String {
        "files".into()
    }

    fn write_epoch(&mut self, _epoch: u64, lines: &[Line]) -> Result<()> {
        self.write(lines)
    }

    fn state(&mut self) -> Result<Option<Vec<u8>>> {
        checkpoint::encode(&self.lengths()?).map(Some)
    }
}
