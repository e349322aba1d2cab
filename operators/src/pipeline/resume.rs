//! A checkpointed stream's state directory: [`Checkpointing::open`] checks (or writes) what it
//! belongs to and finds the latest complete cut, which the workers' stages resume from;
//! [`run_stream`] reopens the output files as they were at that cut (or creates them), makes
//! the other sinks, and runs the stream. After each complete cut every worker commits its
//! source's share of it and worker 0 removes the state no later cut needs.
//!
//! State: the directory's (see `crate::checkpoint`); nothing in memory beyond the run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dfp_engine::lifecycle::Serving;
use dfp_engine::{Error, Result};

use super::worker::{Feed, execute, other_sinks};
use super::{RunOptions, StreamInput};
use crate::checkpoint::{CheckpointSettings, Cut, StateMeta, component, latest_cut, prune};
use crate::metrics::Stats;
use crate::sink::files::{OutputFiles, SinkState};
use crate::sink::{SinkSet, SinkSetState};
use crate::source::Source;

/// How long a cluster process waits for process 0 to write the state directory's meta.
const META_WAIT: Duration = Duration::from_secs(120);

/// A checkpointed stream's state directory, and the cut it resumes from.
pub(crate) struct Checkpointing {
    pub settings: CheckpointSettings,
    pub meta: StateMeta,
    /// Whether the state directory was there before this start.
    pub existed: bool,
    /// The cut the run resumes from.
    pub cut: Option<Cut>,
}

impl Checkpointing {
    /// Opens (or starts) the state directory of a stream (`fingerprint`) of the `schema` run
    /// by `workers` workers over every process, scoring first from `versions`. In a cluster
    /// only process 0 starts the directory (`first`); the others wait for its meta, so that
    /// every process has the same run name.
    pub fn open(
        settings: &CheckpointSettings,
        fingerprint: String,
        schema: &str,
        workers: usize,
        versions: &Serving,
        first: bool,
    ) -> Result<Self> {
        let meta_file = settings.dir.join("meta.json");
        let waiting = Instant::now();
        while !first && !meta_file.exists() {
            if waiting.elapsed() > META_WAIT {
                return Err(Error::stage(
                    "checkpoint",
                    format!(
                        "{} did not appear within {} s: process 0 of the cluster writes it \
                         (is the state directory shared?)",
                        meta_file.display(),
                        META_WAIT.as_secs()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let (meta, existed) = StateMeta {
            run: format!("{started:x}-{:x}", std::process::id()),
            schema: schema.to_string(),
            source: fingerprint,
            workers,
            versions: versions.clone(),
        }
        .open_or_create(&settings.dir)?;
        let cut = if existed {
            latest_cut(&settings.dir, workers)?
        } else {
            None
        };
        let dir = settings.dir.display();
        match &cut {
            Some(c) => {
                tracing::info!(dir = %dir, cut = c.time, run = %meta.run, "resuming from the checkpoint")
            }
            None if existed => {
                tracing::info!(dir = %dir, run = %meta.run, "no complete checkpoint yet: starting the run over")
            }
            None => tracing::info!(dir = %dir, run = %meta.run, "checkpointing a new run"),
        }
        Ok(Self {
            settings: settings.clone(),
            meta,
            existed,
            cut,
        })
    }

    /// The epoch the run resumes at (0 for a new run).
    fn from(&self) -> u64 {
        self.cut.as_ref().map_or(0, |c| c.time)
    }

    /// Commits worker `me`'s source up to the latest complete cut, if it is newer than the
    /// one `committed`; worker 0 also removes the state files no later cut needs. The state
    /// directory, not what the source commits, is where a checkpointed stream resumes, so a
    /// failure here costs only a re-read from an older point by a run without the directory.
    pub fn commit_cut(
        &self,
        source: &mut dyn Source,
        me: usize,
        committed: &mut Option<u64>,
    ) -> Result<()> {
        let Some(cut) = latest_cut(&self.settings.dir, self.meta.workers)? else {
            return Ok(());
        };
        if committed.is_some_and(|t| t >= cut.time) {
            return Ok(());
        }
        source.commit(Some(&cut.read(&component("source", me))?))?;
        if me == 0 {
            prune(&self.settings.dir, self.meta.workers, cut.time)?;
        }
        tracing::debug!(
            cut = cut.time,
            worker = me,
            "checkpoint complete, source committed"
        );
        *committed = Some(cut.time);
        Ok(())
    }
}

/// Runs a stream: checkpointed when it has a state directory (resuming from its latest
/// complete cut), else from the source's own starting point; returns the counters and the
/// epochs run.
pub(crate) fn run_stream(
    opts: &RunOptions,
    stream: &StreamInput,
    versions: Serving,
) -> Result<(Stats, usize)> {
    let ckpt = match &stream.checkpoint {
        Some(c) => Some(Arc::new(Checkpointing::open(
            c,
            stream.source.fingerprint(),
            &opts.schema.name,
            opts.total_workers(),
            &versions,
            opts.writes_outputs(),
        )?)),
        None => None,
    };
    let sinks = if opts.writes_outputs() {
        let files = match ckpt.as_ref().and_then(|c| c.cut.as_ref()) {
            Some(cut) => {
                let path = cut.path(&component("sinks", 0));
                let set: SinkSetState =
                    crate::checkpoint::decode(&cut.read(&component("sinks", 0))?, &path)?;
                let bytes = set.of("files").ok_or_else(|| {
                    Error::stage(
                        "checkpoint",
                        format!("{}: no state of the output files", path.display()),
                    )
                })?;
                let state: SinkState = crate::checkpoint::decode(bytes, &path)?;
                OutputFiles::resume(&opts.output, &opts.schema.name, &state)?
            }
            None => OutputFiles::create(
                &opts.output,
                &opts.schema.name,
                &opts.columns()?,
                &opts.out_kinds(),
            )?,
        };
        let resume = ckpt
            .as_ref()
            .map(|c| (c.meta.run.as_str(), c.existed.then(|| c.from())));
        Some(SinkSet::new(files, other_sinks(opts, resume)?))
    } else {
        None
    };
    execute(
        opts,
        Feed::Stream(Box::new(stream.clone()), ckpt),
        sinks,
        versions,
    )
}
