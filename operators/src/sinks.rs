//! Sinks (Morpheus' `write_to_file` stage): write the output lines to files in the output
//! directory: `dfp_detections_{source}.csv` and `.jsonl`, `dfp_scores_{source}.csv` (with
//! `--write-scores`) and `dfp_dead_letter_{source}.jsonl`; in streaming runs also the
//! detections topic ([`crate::kafka_sink`]).
//!
//! Input: [`Line`]s, all exchanged to worker 0, which owns the files. State: the lines of epochs
//! the frontier has not passed; when it passes an epoch its lines are sorted (by file, event
//! time, origin) and appended, and the files are flushed. So each line is written once, in an
//! order that does not depend on the number of workers. A checkpoint holds each file's length
//! (synced to disk); a restart from it cuts the files back to those lengths
//! ([`OutputFiles::resume`]), so lines written after the cut are not doubled.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use dfp_engine::{Error, Result};
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Operator;
use timely::dataflow::operators::generic::OutputBuilderSession;

use crate::checkpoint::{self, StageState, frontier_cut};
use crate::frontier::Pending;
use crate::kafka_sink::KafkaSink;
use crate::metrics::SharedStats;
use crate::serialize::{Columns, Line, OutKind};

/// The output files of a run, and the detections topic if there is one.
pub struct OutputFiles {
    files: HashMap<OutKind, (PathBuf, BufWriter<File>)>,
    kafka: Option<KafkaSink>,
}

/// The path of one output file.
pub fn output_path(dir: &Path, source: &str, kind: OutKind) -> PathBuf {
    dir.join(match kind {
        OutKind::DetectionsCsv => format!("dfp_detections_{source}.csv"),
        OutKind::DetectionsJson => format!("dfp_detections_{source}.jsonl"),
        OutKind::ScoresCsv => format!("dfp_scores_{source}.csv"),
        OutKind::DeadLetters => format!("dfp_dead_letter_{source}.jsonl"),
    })
}

/// The output files' lengths at a cut.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkState {
    lengths: Vec<(OutKind, u64)>,
}

/// The files a run writes.
fn kinds(write_scores: bool) -> Vec<OutKind> {
    let mut kinds = vec![
        OutKind::DetectionsCsv,
        OutKind::DetectionsJson,
        OutKind::DeadLetters,
    ];
    if write_scores {
        kinds.push(OutKind::ScoresCsv);
    }
    kinds
}

impl OutputFiles {
    /// Creates (truncates) the files in `dir` (created if missing), CSV headers written.
    pub fn create(dir: &Path, source: &str, columns: &Columns, write_scores: bool) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "creating output directory", e))?;
        let mut files = HashMap::new();
        for kind in kinds(write_scores) {
            let path = output_path(dir, source, kind);
            let file = dfp_engine::files::create(&path, "creating output")?;
            let mut w = BufWriter::new(file);
            if matches!(kind, OutKind::DetectionsCsv | OutKind::ScoresCsv) {
                writeln!(w, "{}", columns.csv_header())
                    .map_err(|e| Error::io(&path, "writing output", e))?;
            }
            w.flush()
                .map_err(|e| Error::io(&path, "writing output", e))?;
            files.insert(kind, (path, w));
        }
        Ok(Self { files, kafka: None })
    }

    /// Also produces the detections to a Kafka topic.
    pub fn with_kafka(mut self, sink: KafkaSink) -> Self {
        self.kafka = Some(sink);
        self
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
        Ok(Self { files, kafka: None })
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

    /// [`Self::lengths`], encoded for a checkpoint.
    pub fn state(&mut self) -> Result<Vec<u8>> {
        checkpoint::encode(&self.lengths()?)
    }

    /// Writes one epoch's lines, sorted, and flushes (the detections topic included).
    pub fn write(&mut self, epoch: u64, mut lines: Vec<Line>) -> Result<()> {
        lines.sort();
        for line in &lines {
            if let Some((path, w)) = self.files.get_mut(&line.kind) {
                writeln!(w, "{}", line.text)
                    .map_err(|e| Error::io(path.as_path(), "writing output", e))?;
            }
        }
        for (path, w) in self.files.values_mut() {
            w.flush()
                .map_err(|e| Error::io(path.as_path(), "flushing output", e))?;
        }
        if let Some(k) = &mut self.kafka {
            k.send(
                epoch,
                lines
                    .iter()
                    .filter(|l| l.kind == OutKind::DetectionsJson)
                    .map(|l| l.text.as_str()),
            )?;
        }
        Ok(())
    }
}

/// The sink stage as a timely operator.
pub trait Sinks<'s> {
    /// Writes every epoch's lines once the frontier has passed it (`files` on worker 0 only,
    /// checkpointed through `snapshots`). The returned stream carries nothing; its frontier
    /// tells what has been written.
    fn sinks(
        self,
        files: Option<OutputFiles>,
        snapshots: StageState,
        stats: SharedStats,
    ) -> StreamVec<'s, u64, ()>;
}

/// The files' state for a checkpoint (none on workers without them).
fn sink_state(files: &mut Option<OutputFiles>) -> Result<Vec<u8>> {
    files
        .as_mut()
        .ok_or_else(|| {
            Error::stage(
                "checkpoint",
                "the sinks' state asked of a worker without the files",
            )
        })?
        .state()
}

impl<'s> Sinks<'s> for StreamVec<'s, u64, Line> {
    fn sinks(
        self,
        mut files: Option<OutputFiles>,
        mut snapshots: StageState,
        stats: SharedStats,
    ) -> StreamVec<'s, u64, ()> {
        self.unary_frontier(Exchange::new(|_: &Line| 0), "Sinks", move |_cap, _info| {
            let mut pending = Pending::<Line>::default();
            move |(input, frontier), _output: &mut OutputBuilderSession<'_, u64, CapacityContainerBuilder<Vec<()>>>| {
                input.for_each_stamp(|cap, data| pending.stash(cap, data, 0));
                for (cap, lines) in pending.ready(&[frontier]) {
                    let epoch = *cap.time();
                    snapshots.offer(epoch, || sink_state(&mut files), &stats);
                    snapshots.applied(epoch);
                    let mut s = stats.borrow_mut();
                    s.detections += lines.iter().filter(|l| l.kind == OutKind::DetectionsCsv).count() as u64;
                    s.dead_letters += lines.iter().filter(|l| l.kind == OutKind::DeadLetters).count() as u64;
                    let Some(f) = files.as_mut() else {
                        s.fatal.push("output lines reached a worker without the output files".into());
                        continue;
                    };
                    if let Err(e) = f.write(epoch, lines) {
                        tracing::error!(error = %e, "cannot write outputs");
                        s.fatal.push(e.to_string());
                    }
                }
                snapshots.offer(frontier_cut(&[frontier]), || sink_state(&mut files), &stats);
            }
        })
        .container::<Vec<()>>()
    }
}
