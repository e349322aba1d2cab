//! What a run reads: a control message, a stream (a Kafka topic of records, a watched
//! directory) or a control topic, described by hand or by the run config's `[source]` and
//! `[checkpoint]` tables ([`Input::from_config`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use dfp_engine::{Error, Result};

use super::control_topic::ControlTopicInput;
use crate::checkpoint::CheckpointSettings;
use crate::config::{RunConfig, SourceKind};
use crate::file_to_batch::Tasks;
use crate::kafka::KafkaSettings;
use crate::source::kafka::SourceSettings;
use crate::source::watch::WatchSettings;

/// Where a run's records come from.
#[derive(Debug, Clone)]
pub enum Input {
    /// A Morpheus control message: its tasks, and the files its load tasks name.
    Control {
        /// The control message file.
        path: PathBuf,
        /// Where relative load globs resolve (default: the control message's directory, or
        /// the working directory when only there they match).
        files_root: Option<PathBuf>,
        /// Directories the load globs may read under (empty: anywhere).
        allowed_roots: Vec<PathBuf>,
        /// Unknown keys in the message are problems, not warnings.
        strict: bool,
    },
    /// A stream of records (a Kafka topic, a watched directory), cut into epochs by event time.
    Stream(StreamInput),
    /// A Kafka topic of control messages, each run as a control-message file is.
    ControlTopic(ControlTopicInput),
}

impl Input {
    /// A control message file, its relative globs resolved beside it, reading anywhere.
    pub fn control(path: impl Into<PathBuf>) -> Self {
        Input::Control {
            path: path.into(),
            files_root: None,
            allowed_roots: Vec::new(),
            strict: false,
        }
    }
}

/// What a stream reads.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamSource {
    /// A Kafka topic of raw log records.
    Kafka(SourceSettings),
    /// A watched directory of log files.
    Watch(WatchSettings),
}

impl StreamSource {
    /// What its checkpoints belong to (opaque).
    pub fn fingerprint(&self) -> String {
        match self {
            StreamSource::Kafka(s) => s.fingerprint(),
            StreamSource::Watch(s) => s.fingerprint(),
        }
    }
}

/// A streaming run's input and what its epochs do.
#[derive(Debug, Clone)]
pub struct StreamInput {
    /// What is read and how epochs are cut.
    pub source: StreamSource,
    /// What every epoch's rows are for (Morpheus' streaming pipeline: train and score).
    pub tasks: Tasks,
    /// Set (by a signal handler) to stop: reading stops, the epochs read are finished and
    /// written, offsets committed, and the run returns.
    pub stop: Arc<AtomicBool>,
    /// Checkpoint to this state directory, and resume from it.
    pub checkpoint: Option<CheckpointSettings>,
}

impl StreamInput {
    /// Morpheus' streaming pipeline on a Kafka `topic`: epochs of `period_us` of event time,
    /// each trains and scores; no lateness, a 100 ms poll, partitions idle after 1 s at their
    /// end, until stopped, no checkpoints.
    pub fn kafka(kafka: KafkaSettings, topic: &str, group: &str, period_us: i64) -> Self {
        Self::of(StreamSource::Kafka(SourceSettings {
            kafka,
            topic: topic.to_string(),
            group: group.to_string(),
            period_us,
            lateness_us: 0,
            poll: Duration::from_millis(100),
            stop_at_end: false,
            idle_after: Duration::from_secs(1),
        }))
    }

    /// The same pipeline on a watched directory: epochs of `period_us`, a 1 s listing, idle
    /// after 1 s without a new file.
    pub fn watch(dir: impl Into<PathBuf>, period_us: i64) -> Self {
        Self::of(StreamSource::Watch(WatchSettings {
            dir: dir.into(),
            period_us,
            lateness_us: 0,
            poll: Duration::from_secs(1),
            stop_at_end: false,
            idle_after: Duration::from_secs(1),
        }))
    }

    /// The same, checkpointed to `dir` every `every` epochs (and resumed from it).
    pub fn checkpoint_to(mut self, dir: impl Into<PathBuf>, every: u64) -> Self {
        self.checkpoint = Some(CheckpointSettings {
            dir: dir.into(),
            every,
        });
        self
    }

    fn of(source: StreamSource) -> Self {
        StreamInput {
            source,
            tasks: Tasks {
                train: true,
                infer: true,
                payload: false,
            },
            stop: Arc::default(),
            checkpoint: None,
        }
    }
}

impl Input {
    /// The stream the config's `[source]` and `[checkpoint]` describe (`None` without
    /// `[source] kind`), for the source schema `schema`, checkpointing by default under
    /// `output`, stopped by `stop`. A control topic's messages resolve their globs in the
    /// working directory and read only under it.
    pub fn from_config(
        config: &RunConfig,
        schema: &str,
        output: &Path,
        stop: Arc<AtomicBool>,
    ) -> Result<Option<Input>> {
        let s = &config.source;
        let Some(kind) = s.kind else {
            return Ok(None);
        };
        let kafka = || -> Result<(KafkaSettings, String)> {
            let url = s
                .url
                .as_deref()
                .ok_or_else(|| Error::stage("source", "[source] url is needed"))?;
            KafkaSettings::from_url(url, s.options.clone())
        };
        let c = &config.checkpoint;
        let state_dir = c
            .enabled
            .then(|| c.dir.clone().unwrap_or_else(|| output.join(".dfp-state")));
        let source = match kind {
            SourceKind::ControlTopic => {
                let (kafka, topic) = kafka()?;
                return Ok(Some(Input::ControlTopic(ControlTopicInput {
                    kafka,
                    topic,
                    group: s
                        .group
                        .clone()
                        .unwrap_or_else(|| format!("dfp-{schema}-control")),
                    poll: s
                        .poll
                        .as_ref()
                        .map_or(Duration::from_millis(100), |p| p.std()),
                    commit: s.commit,
                    files_root: PathBuf::from("."),
                    allowed_roots: Vec::new(),
                    stop_at_end: s.until_end,
                    stop,
                    state_dir,
                    strict: false,
                })));
            }
            SourceKind::Kafka => {
                let (kafka, topic) = kafka()?;
                let group = s.group.clone().unwrap_or_else(|| format!("dfp-{schema}"));
                let mut k = StreamInput::kafka(kafka, &topic, &group, s.epoch.us());
                if let StreamSource::Kafka(k) = &mut k.source {
                    k.lateness_us = s.lateness.us();
                    k.poll = s.poll.as_ref().map_or(k.poll, |p| p.std());
                    k.idle_after = s.idle_after.std();
                    k.stop_at_end = s.until_end;
                }
                k
            }
            SourceKind::Watch => {
                let dir = s
                    .dir
                    .clone()
                    .ok_or_else(|| Error::stage("source", "[source] dir is needed"))?;
                let mut w = StreamInput::watch(dir, s.epoch.us());
                if let StreamSource::Watch(w) = &mut w.source {
                    w.lateness_us = s.lateness.us();
                    w.poll = s.poll.as_ref().map_or(w.poll, |p| p.std());
                    w.idle_after = s.idle_after.std();
                    w.stop_at_end = s.until_end;
                }
                w
            }
        };
        Ok(Some(Input::Stream(StreamInput {
            stop,
            checkpoint: state_dir.map(|dir| CheckpointSettings {
                dir,
                every: c.every_epochs(&s.epoch),
            }),
            ..source
        })))
    }
}
