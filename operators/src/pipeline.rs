//! The DFP job as one timely dataflow (Morpheus' `dfp_integrated_training_batch_pipeline.py`):
//! a control message becomes a [`Plan`] of epochs; each epoch's files are read, split by user,
//! windowed, prepared, trained on and/or scored, and the detections, scores and dead letters
//! written, every stage emitting an epoch once the frontier has passed it. The output does not
//! depend on the number of workers.
//!
//! Inputs: the control message (or a Kafka topic), the source schema, the run config, the
//! registry directory. Outputs: the files of [`crate::sinks`], new model versions in the
//! registry, and a [`RunSummary`]. State: per worker, the windows of its users and a model
//! cache; at most two epochs of files are in flight at once, one of a stream. A stream with a state directory
//! checkpoints at frontier epochs ([`crate::checkpoint`]): on a restart every stage resumes
//! from the latest complete cut, the output files are cut back to it, models already
//! registered are not registered again and detections already in the topic are not produced
//! again, so a crash loses and doubles nothing. Offsets are committed to the group after each
//! complete cut.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dfp_engine::control::{ControlMessage, FileScope};
use dfp_engine::device;
use dfp_engine::files::DirLock;
use dfp_engine::ingest::Reader;
use dfp_engine::model::{Backend, Device};
use dfp_engine::registry::Registry;
use dfp_engine::rows::Row;
use dfp_engine::schema::SourceSchema;
use dfp_engine::{Error, Result};
use serde::Serialize;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Concatenate, OkErr, Probe};
use timely::dataflow::{InputHandleVec, ProbeHandle};

use crate::checkpoint::{
    CheckpointSettings, Cut, Snapshotter, StageState, StateMeta, component, components, latest_cut,
    prune,
};
use crate::config::RunConfig;
use crate::control_topic::ControlTopicInput;
use crate::data_prep::DataPrep;
use crate::dead_letter::{DeadLetter, Originals};
use crate::file_to_batch::{FileRows, FileTask, FileToBatch, Tasks};
use crate::filter_detections::FilterDetections;
use crate::inference::{Inference, Scorer};
use crate::kafka_sink::KafkaSink;
use crate::kafka_source::{KafkaSettings, KafkaSource, SourceSettings, SourceState};
use crate::metrics::{SharedStats, Stats};
use crate::plan::Plan;
use crate::post_proc::{Clock, PostProc};
use crate::registry_writer::RegistryWriter;
use crate::rolling_window::{RollingWindowExt, RollingWindows};
use crate::run_status::{RunStatus, Status};
use crate::serialize::{Columns, OutKind, SerializeDeadLetters, SerializeDetections};
use crate::sinks::{OutputFiles, Sinks, output_path};
use crate::split_users::SplitUsers;
use crate::training::Training;

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
    /// A Kafka topic of raw log records, cut into epochs by event time.
    Kafka(StreamInput),
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

/// A streaming run's input and what its epochs do.
#[derive(Debug, Clone)]
pub struct StreamInput {
    /// The topic and how epochs are cut.
    pub source: SourceSettings,
    /// What every epoch's rows are for (Morpheus' streaming pipeline: train and score).
    pub tasks: Tasks,
    /// Also produce the detections to this topic.
    pub detections_topic: Option<String>,
    /// Set (by a signal handler) to stop: consuming stops, the epochs read are finished and
    /// written, offsets committed, and the run returns.
    pub stop: Arc<AtomicBool>,
    /// Checkpoint to this state directory, and resume from it.
    pub checkpoint: Option<CheckpointSettings>,
}

impl StreamInput {
    /// Morpheus' streaming pipeline on `topic`: epochs of `period_us` of event time, each
    /// trains and scores; no lateness, a 100 ms poll, partitions idle after 1 s at their end,
    /// until stopped, no detections topic, no checkpoints.
    pub fn new(kafka: KafkaSettings, topic: &str, group: &str, period_us: i64) -> Self {
        StreamInput {
            source: SourceSettings {
                kafka,
                topic: topic.to_string(),
                group: group.to_string(),
                period_us,
                lateness_us: 0,
                poll: Duration::from_millis(100),
                stop_at_end: false,
                idle_after: Duration::from_secs(1),
            },
            tasks: Tasks {
                train: true,
                infer: true,
                payload: false,
            },
            detections_topic: None,
            stop: Arc::default(),
            checkpoint: None,
        }
    }
}

/// Everything a run needs.
#[derive(Clone)]
pub struct RunOptions {
    /// The source schema.
    pub schema: SourceSchema,
    /// Where the records come from.
    pub input: Input,
    /// Stage settings.
    pub config: RunConfig,
    /// Timely workers (threads), each owning a share of the users.
    pub workers: usize,
    /// Model threads in all (0: one per core), shared out over the workers.
    pub threads: usize,
    /// Where the models train and score (CPU, CUDA, wgpu).
    pub device: Device,
    /// The model registry directory.
    pub registry: PathBuf,
    /// The output directory.
    pub output: PathBuf,
    /// Also write every scored row.
    pub write_scores: bool,
    /// Stamps detections.
    pub clock: Clock,
    /// Print progress on stderr.
    pub progress: bool,
    /// One process of a cluster (`workers` threads in each process), or the whole run here.
    pub cluster: Option<ClusterSpec>,
    /// Set (by a signal handler) to stop a batch run after the epochs in flight: what was
    /// read is finished and written, the rest is not started.
    pub stop: Arc<AtomicBool>,
}

/// This process's place in a cluster of processes (timely's cluster mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSpec {
    /// This process's index, from 0.
    pub process: usize,
    /// Every process's `host:port`, in process order.
    pub addresses: Vec<String>,
}

impl RunOptions {
    /// The output columns: dfp's, or Morpheus' layout when the config asks for it.
    pub(crate) fn columns(&self) -> Result<Columns> {
        if self.config.morpheus.columns {
            Columns::morpheus(&self.schema)
        } else {
            Ok(Columns::new(&self.schema))
        }
    }

    /// Whether this process writes the output files (global worker 0 is in process 0).
    fn writes_outputs(&self) -> bool {
        self.cluster.as_ref().is_none_or(|c| c.process == 0)
    }

    /// Workers in the whole run, over every process.
    fn total_workers(&self) -> usize {
        self.workers.max(1) * self.cluster.as_ref().map_or(1, |c| c.addresses.len())
    }

    /// The timely configuration: threads in this process, or one process of a cluster.
    fn timely_config(&self) -> timely::Config {
        let threads = self.workers.max(1);
        match &self.cluster {
            None => timely::Config::process(threads),
            Some(c) => timely::Config {
                communication: timely::CommunicationConfig::Cluster {
                    threads,
                    process: c.process,
                    addresses: c.addresses.clone(),
                    report: false,
                    zerocopy: false,
                },
                worker: timely::WorkerConfig::default(),
            },
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// Epochs run.
    pub epochs: usize,
    /// Epochs planned (a control message's; `None` for a stream).
    pub planned: Option<usize>,
    /// Whether a stop (a signal) ended a batch run before its last epoch.
    pub stopped: bool,
    /// Counters summed over workers.
    pub stats: Stats,
    /// Wall time.
    pub seconds: f64,
    /// The output files.
    pub outputs: Vec<PathBuf>,
    /// Load patterns that matched no file.
    pub unmatched: Vec<String>,
}

impl RunSummary {
    /// The one-line summary.
    pub fn line(&self) -> String {
        let s = &self.stats;
        format!(
            "{} rows from {} files in {} epochs, {} users, {} models trained, {} rows scored, {} detections, {} dead letters; {:.1} s ({:.0} rows/s)",
            s.rows,
            s.files,
            self.epochs,
            s.users.len(),
            s.models_trained,
            s.scored,
            s.detections,
            s.dead_letters,
            self.seconds,
            s.rows as f64 / self.seconds.max(1e-9)
        )
    }
}

/// The plan of a control-message run, or a stream.
pub(crate) enum Feed {
    Files(Arc<Plan>),
    Kafka(Box<StreamInput>),
}

/// One worker's inputs.
enum Handles {
    Files(InputHandleVec<u64, FileTask>),
    Kafka {
        rows: InputHandleVec<u64, FileRows>,
        dead: InputHandleVec<u64, DeadLetter>,
    },
}

/// A checkpointed stream's state directory, and the cut it resumes from.
pub(crate) struct Checkpointing {
    settings: CheckpointSettings,
    meta: StateMeta,
    /// Whether the state directory was there before this start.
    existed: bool,
    components: Vec<String>,
    cut: Option<Cut>,
}

impl Checkpointing {
    /// Opens (or starts) the state directory of `stream` run by `workers` workers.
    /// In a cluster only process 0 starts the directory (`first`); the others wait for its
    /// meta, so that every process has the same run name.
    fn open(
        settings: &CheckpointSettings,
        stream: &SourceSettings,
        source: &str,
        workers: usize,
        versions: &HashMap<String, u32>,
        first: bool,
    ) -> Result<Self> {
        let meta_file = settings.dir.join("meta.json");
        let waiting = Instant::now();
        while !first && !meta_file.exists() {
            if waiting.elapsed() > Duration::from_secs(120) {
                return Err(Error::stage(
                    "checkpoint",
                    format!(
                        "{} did not appear within 120 s: process 0 of the cluster writes it \
                         (is the state directory shared?)",
                        meta_file.display()
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
            source: source.to_string(),
            topic: stream.topic.clone(),
            group: stream.group.clone(),
            period_us: stream.period_us,
            workers,
            versions: versions.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        }
        .open_or_create(&settings.dir)?;
        let components = components(workers);
        let cut = if existed {
            latest_cut(&settings.dir, &components)?
        } else {
            None
        };
        match &cut {
            Some(c) => {
                tracing::info!(dir = %settings.dir.display(), cut = c.time, run = %meta.run, "resuming from the checkpoint")
            }
            None if existed => {
                tracing::info!(dir = %settings.dir.display(), run = %meta.run, "no complete checkpoint yet: starting the run over")
            }
            None => {
                tracing::info!(dir = %settings.dir.display(), run = %meta.run, "checkpointing a new run")
            }
        }
        Ok(Self {
            settings: settings.clone(),
            meta,
            existed,
            components,
            cut,
        })
    }

    /// The epoch the run resumes at (0 for a new run).
    fn from(&self) -> u64 {
        self.cut.as_ref().map_or(0, |c| c.time)
    }

    /// A stage's snapshotter on worker `worker`.
    fn stage(&self, kind: &str, worker: usize) -> Result<StageState> {
        Ok(StageState::new(Some(Snapshotter::new(
            &self.settings,
            &component(kind, worker),
            self.from(),
        )?)))
    }

    /// The model versions scoring starts from on `worker`.
    fn versions(&self, worker: usize) -> Result<HashMap<String, u32>> {
        match &self.cut {
            Some(cut) => cut.state(&component("scorer", worker)),
            None => Ok(self.meta.versions.clone().into_iter().collect()),
        }
    }
}

/// Runs the input's tasks to completion: a control message's epochs, or a Kafka topic until
/// its end offsets (bounded), a stop or a fatal error. The output directory (and a stream's
/// state directory) is locked for the run, and its status file says `running` until the run
/// ends, then how it ended.
pub fn run(mut opts: RunOptions) -> Result<RunSummary> {
    opts.config.validate("run config")?;
    if opts.config.morpheus.features {
        opts.schema = opts.schema.with_morpheus_features()?;
    }
    check_parallelism(&opts)?;
    let _locks = lock_dirs(&opts)?;
    let status = if opts.writes_outputs() {
        Some(RunStatus::start(&opts.output, &opts.schema.name)?)
    } else {
        None
    };
    let result = run_locked(&opts);
    if let Some(status) = &status {
        let written = match &result {
            Ok(summary) => status.finish(
                if summary.stopped {
                    Status::Stopped
                } else {
                    Status::Complete
                },
                Some(&summary.stats),
                Some((summary.epochs, summary.planned)),
                None,
            ),
            Err(e) => status.finish(Status::Failed, None, None, Some(&e.chain())),
        };
        if let Err(e) = written {
            tracing::error!(error = %e.chain(), "writing the run status");
        }
    }
    let mut summary = result?;
    if let Some(status) = status {
        summary.outputs.push(status.path().to_path_buf());
    }
    Ok(summary)
}

/// More workers or model threads than this many per core is refused: they only contend, and
/// thousands of threads exhaust the machine.
const MAX_THREADS_PER_CORE: usize = 4;

/// Refuses `--workers` and `--threads` beyond what this machine can run.
fn check_parallelism(opts: &RunOptions) -> Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let most = cores * MAX_THREADS_PER_CORE;
    for (flag, n) in [("--workers", opts.workers), ("--threads", opts.threads)] {
        if n > most {
            return Err(Error::stage(
                "run",
                format!(
                    "{flag} {n} is more than {MAX_THREADS_PER_CORE} per core: this machine has {cores} core(s), so give at most {most}"
                ),
            ));
        }
    }
    Ok(())
}

/// Locks the directories this process writes: the output directory, and a stream's or a
/// control topic's state directory (process 0 of a cluster holds it for every process).
fn lock_dirs(opts: &RunOptions) -> Result<Vec<DirLock>> {
    if !opts.writes_outputs() {
        return Ok(Vec::new());
    }
    let mut locks = vec![DirLock::acquire(&opts.output, "output directory")?];
    let state = match &opts.input {
        Input::Kafka(s) => s.checkpoint.as_ref().map(|c| c.dir.clone()),
        Input::ControlTopic(t) => t.state_dir.clone(),
        Input::Control { .. } => None,
    };
    if let Some(dir) = state {
        locks.push(DirLock::acquire(&dir, "state directory")?);
    }
    Ok(locks)
}

fn run_locked(opts: &RunOptions) -> Result<RunSummary> {
    let opts = opts.clone();
    let started = Instant::now();
    let registry = Registry::open(&opts.registry)?;
    let versions = latest_versions(&registry)?;
    let columns = opts.columns()?;
    let mut planned = None;
    let (stats, epochs, unmatched) = match &opts.input {
        Input::Control {
            path,
            files_root,
            allowed_roots,
            strict,
        } => {
            let msg = ControlMessage::from_file(path, *strict)?;
            msg.warn_ignored(&path.display().to_string());
            let scope = FileScope::for_message(&msg, path, files_root.as_deref(), allowed_roots);
            let plan = plan(&msg, &scope)?;
            let unmatched = plan.unmatched.clone();
            planned = Some(plan.epochs.len());
            let outputs = if opts.writes_outputs() {
                Some(OutputFiles::create(
                    &opts.output,
                    &opts.schema.name,
                    &columns,
                    opts.write_scores,
                )?)
            } else {
                None
            };
            let feed = Feed::Files(Arc::new(plan));
            let (stats, epochs) = execute(&opts, feed, outputs, versions, None, false)?;
            (stats, epochs, unmatched)
        }
        Input::ControlTopic(topic) => {
            if opts.cluster.is_some() {
                return Err(Error::stage(
                    "run",
                    "--control-topic runs in one process (its messages run one after the other); \
                     give it --workers instead of a cluster",
                ));
            }
            let (stats, epochs) = crate::control_topic::run(&opts, topic)?;
            (stats, epochs, Vec::new())
        }
        Input::Kafka(stream) => {
            let ckpt = match &stream.checkpoint {
                Some(c) => Some(Checkpointing::open(
                    c,
                    &stream.source,
                    &opts.schema.name,
                    opts.total_workers(),
                    &versions,
                    opts.writes_outputs(),
                )?),
                None => None,
            };
            let mut outputs = match ckpt.as_ref().and_then(|c| c.cut.as_ref()) {
                _ if !opts.writes_outputs() => None,
                Some(cut) => Some(OutputFiles::resume(
                    &opts.output,
                    &opts.schema.name,
                    &cut.state(&component("sinks", 0))?,
                )?),
                None => Some(OutputFiles::create(
                    &opts.output,
                    &opts.schema.name,
                    &columns,
                    opts.write_scores,
                )?),
            };
            if let Some(topic) = &stream.detections_topic
                && let Some(files) = outputs.take()
            {
                let mut sink = KafkaSink::new(&stream.source.kafka, topic)?;
                if let Some(c) = &ckpt {
                    sink = sink.resume(
                        &stream.source.kafka,
                        &c.meta.run,
                        c.existed.then(|| c.from()),
                    )?;
                }
                outputs = Some(files.with_kafka(sink));
            }
            let once = ckpt.is_some();
            let feed = Feed::Kafka(Box::new(stream.clone()));
            let (stats, epochs) = execute(&opts, feed, outputs, versions, ckpt, once)?;
            (stats, epochs, Vec::new())
        }
    };
    let mut outputs = vec![
        output_path(&opts.output, &opts.schema.name, OutKind::DetectionsCsv),
        output_path(&opts.output, &opts.schema.name, OutKind::DetectionsJson),
    ];
    if opts.write_scores {
        outputs.push(output_path(
            &opts.output,
            &opts.schema.name,
            OutKind::ScoresCsv,
        ));
    }
    outputs.push(output_path(
        &opts.output,
        &opts.schema.name,
        OutKind::DeadLetters,
    ));
    if !opts.writes_outputs() {
        // Process 0 of the cluster writes them.
        outputs.clear();
    }
    Ok(RunSummary {
        epochs,
        planned,
        stopped: planned.is_some_and(|n| epochs < n),
        stats,
        seconds: started.elapsed().as_secs_f64(),
        outputs,
        unmatched,
    })
}

/// The latest version of every model in `registry`.
pub(crate) fn latest_versions(registry: &Registry) -> Result<HashMap<String, u32>> {
    Ok(registry
        .list()?
        .into_iter()
        .filter_map(|(name, v)| v.last().map(|&l| (name, l)))
        .collect())
}

/// The plan of a control message whose globs resolve within `scope`.
pub(crate) fn plan(msg: &ControlMessage, scope: &FileScope) -> Result<Plan> {
    let plan = Plan::build(msg, scope)?;
    for u in &plan.unmatched {
        tracing::warn!(pattern = %u, "load pattern matches no file");
    }
    tracing::info!(epochs = plan.epochs.len(), files = plan.files(), "planned");
    Ok(plan)
}

/// Runs `feed` through the dataflow into `outputs` (held by this process when its worker 0
/// is the run's), scoring from the model `versions` (those
/// of the checkpoint's cut when resuming) and registering each model `once` (not again when
/// the same model is there); returns the counters summed over workers and the epochs run.
pub(crate) fn execute(
    opts: &RunOptions,
    feed: Feed,
    outputs: Option<OutputFiles>,
    versions: HashMap<String, u32>,
    ckpt: Option<Checkpointing>,
    once: bool,
) -> Result<(Stats, usize)> {
    let started = Instant::now();
    let registry = Registry::open(&opts.registry)?;
    let schema = Arc::new(opts.schema.clone());
    let columns = Arc::new(opts.columns()?);
    let workers = opts.workers.max(1);
    let files = Arc::new(Mutex::new(outputs));
    let timely_config = opts.timely_config();
    let ckpt = Arc::new(ckpt);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (if opts.threads == 0 {
        cores
    } else {
        opts.threads
    } / workers)
        .max(1);
    let reader = Arc::new(Reader::new(schema.clone()));
    let o = Arc::new(opts.clone());
    let feed = Arc::new(feed);
    let epochs_run = Arc::new(AtomicUsize::new(0));
    let epochs_seen = epochs_run.clone();
    tracing::info!(workers, threads, "starting the dataflow");

    let cluster = opts.cluster.is_some();
    // A cluster process that goes away makes timely's network threads panic here; that is
    // turned into an error naming the cause, so the other processes stop instead of hanging.
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let guards = timely::execute(timely_config, move |worker| {
            let stats: SharedStats = Rc::new(RefCell::new(Stats::default()));
            let fail = |e: Error| Stats {
                fatal: vec![e.to_string()],
                ..Stats::default()
            };
            let backend: Rc<dyn Backend> = match device::backend(o.device, threads) {
                Ok(b) => Rc::from(b),
                Err(e) => return fail(e),
            };
            let mut windows = match RollingWindows::new(
                &schema,
                o.config.training_window.clone(),
                o.config.inference_window.clone(),
            ) {
                Ok(w) => w,
                Err(e) => return fail(e),
            };
            let me = worker.index();
            let stage = |kind: &str| match ckpt.as_ref() {
                Some(c) => c.stage(kind, me),
                None => Ok(StageState::default()),
            };
            let restored = (|| -> Result<_> {
                let mut versions = versions.clone();
                if let Some(c) = ckpt.as_ref() {
                    versions = c.versions(me)?;
                    if let Some(cut) = &c.cut {
                        windows.restore(cut, &component("windows", me))?;
                    }
                }
                let sinks = if me == 0 {
                    stage("sinks")?
                } else {
                    StageState::default()
                };
                Ok((versions, stage("windows")?, stage("scorer")?, sinks))
            })();
            let (versions, window_state, scorer_state, sink_state) = match restored {
                Ok(r) => r,
                Err(e) => return fail(e),
            };
            let scorer = Scorer::new(
                schema.clone(),
                registry.clone(),
                versions,
                &o.config.split.generic_user,
                &o.config.inference,
                o.config.model.eval_batch_size,
            );
            let my_files = if worker.index() == 0 {
                files.lock().ok().and_then(|mut f| f.take())
            } else {
                None
            };
            let mut handles = match feed.as_ref() {
                Feed::Files(_) => Handles::Files(InputHandleVec::new()),
                Feed::Kafka(_) => Handles::Kafka {
                    rows: InputHandleVec::new(),
                    dead: InputHandleVec::new(),
                },
            };
            let probe = ProbeHandle::new();
            let cfg = &o.config;
            worker.dataflow::<u64, _, _>(|scope| {
                let (rows, bad_input) = match &mut handles {
                    Handles::Files(input) => input
                        .to_stream(scope)
                        .file_to_batch(reader.clone(), stats.clone()),
                    Handles::Kafka { rows, dead } => (rows.to_stream(scope), dead.to_stream(scope)),
                };
                let (users, no_user) = rows.split_users(cfg.split.clone(), stats.clone());
                let (windows, late) = users.rolling_window(windows, window_state, stats.clone());
                let (train_w, infer_w) = windows.ok_err(|w| if w.train { Ok(w) } else { Err(w) });
                let (train_p, bad_train) = train_w.data_prep(schema.clone());
                let (models, failed) = train_p.training(
                    backend.clone(),
                    schema.clone(),
                    cfg.model.clone(),
                    stats.clone(),
                );
                let (notes, unregistered) =
                    models.registry_writer(registry.clone(), once, stats.clone());
                let (infer_p, bad_infer) = infer_w.data_prep(schema.clone());
                let (scored, unscored) = infer_p.inference(
                    notes.broadcast(),
                    scorer,
                    backend.clone(),
                    scorer_state,
                    stats.clone(),
                );
                let features = Arc::new(columns.features().to_vec());
                let mut lines = vec![
                    scored
                        .clone()
                        .filter_detections(&cfg.detection)
                        .post_proc(features.clone(), o.clock.clone())
                        .serialize(
                            columns.clone(),
                            vec![OutKind::DetectionsCsv, OutKind::DetectionsJson],
                        ),
                ];
                if o.write_scores {
                    lines.push(
                        scored
                            .post_proc(features, o.clock.clone())
                            .serialize(columns.clone(), vec![OutKind::ScoresCsv]),
                    );
                }
                lines.push(
                    scope
                        .concatenate(vec![
                            bad_input,
                            no_user,
                            late,
                            bad_train,
                            failed,
                            unregistered,
                            bad_infer,
                            unscored,
                        ])
                        .serialize_dead_letters(Originals::new(match feed.as_ref() {
                            Feed::Files(plan) => Some(plan.clone()),
                            Feed::Kafka(_) => None,
                        })),
                );
                scope
                    .concatenate(lines)
                    .sinks(my_files, sink_state, stats.clone())
                    .probe_with(&probe);
            });
            match (handles, feed.as_ref()) {
                (Handles::Files(mut input), Feed::Files(plan)) => {
                    let n = plan.epochs.len();
                    // Validated with the config at the start of the run.
                    let max_ahead = o.config.events.max_ahead_us().unwrap_or(i64::MAX);
                    let mut sent = 0;
                    for (t, epoch) in plan.epochs.iter().enumerate() {
                        if o.stop.load(Ordering::Relaxed) {
                            if worker.index() == 0 {
                                tracing::warn!(
                                    epochs_done = t,
                                    epochs = n,
                                    "stopping: the epochs read are finished and written, the rest are not started"
                                );
                            }
                            break;
                        }
                        sent = t + 1;
                        if worker.index() == 0 {
                            let mut s = stats.borrow_mut();
                            s.train_epochs += u64::from(epoch.train);
                            s.infer_epochs += u64::from(epoch.infer);
                            drop(s);
                            for (i, path) in epoch.files.iter().enumerate() {
                                input.send(FileTask {
                                    epoch: t as u64,
                                    tasks: Tasks {
                                        train: epoch.train,
                                        infer: epoch.infer,
                                        payload: epoch.payload,
                                    },
                                    index: u32::try_from(i).unwrap_or(u32::MAX),
                                    path: path.clone(),
                                    format: epoch.format,
                                    until_us: epoch
                                        .period_end
                                        .timestamp_micros()
                                        .saturating_add(max_ahead),
                                });
                            }
                        }
                        input.advance_to(t as u64 + 1);
                        // At most two epochs in flight: read the next while this one trains.
                        while probe.less_than(&(t as u64)) {
                            worker.step();
                        }
                        if o.progress && worker.index() == 0 {
                            progress(t, n, &stats.borrow(), started);
                        }
                    }
                    epochs_run.fetch_max(sent, Ordering::Relaxed);
                    drop(input);
                    while worker.step_or_park(None) {}
                }
                (Handles::Kafka { rows, dead }, Feed::Kafka(stream)) => {
                    let feed = StreamFeed {
                        rows,
                        dead,
                        snapshots: match stage("source") {
                            Ok(s) => s,
                            Err(e) => return fail(e),
                        },
                        stats: stats.clone(),
                    };
                    let ahead = o.config.events.max_ahead_us().unwrap_or(i64::MAX);
                    let clock = o.clock.clone();
                    let until = move || clock().timestamp_micros().saturating_add(ahead);
                    let sent = stream_epochs(
                        worker,
                        stream,
                        &reader,
                        feed,
                        &probe,
                        ckpt.as_ref().as_ref(),
                        &until,
                    );
                    epochs_run.fetch_max(sent, Ordering::Relaxed);
                }
                _ => return fail(Error::stage("dataflow", "input and plan disagree")),
            }
            if o.progress && worker.index() == 0 {
                eprintln!();
            }
            stats.borrow().clone()
        })
        .map_err(|e| Error::stage("dataflow", e))?;
        let mut stats = Stats::default();
        for r in guards.join() {
            stats.merge(r.map_err(|e| Error::stage("dataflow worker", e))?);
        }
        Ok(stats)
    }));
    let stats = match ran {
        Ok(stats) => stats?,
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a worker panicked".into());
            let what = if cluster {
                "another process of the cluster went away or failed"
            } else {
                "a worker failed"
            };
            return Err(Error::stage("dataflow", format!("{what}: {why}")));
        }
    };
    if !stats.fatal.is_empty() {
        return Err(Error::stage("run", stats.fatal.join("; ")));
    }
    Ok((stats, epochs_seen.load(Ordering::Relaxed)))
}

/// One worker's inputs of a stream, and the source's checkpoints.
struct StreamFeed {
    rows: InputHandleVec<u64, FileRows>,
    dead: InputHandleVec<u64, DeadLetter>,
    snapshots: StageState,
    stats: SharedStats,
}

impl StreamFeed {
    /// Moves the inputs on to `t`: everything before it has been sent, so the source's state
    /// (with `unsent`, the epochs closed but not yet sent) holds for the cuts up to `t`.
    fn advance(&mut self, t: u64, source: &KafkaSource, unsent: &[(u64, Vec<Row>)]) {
        if t > *self.rows.time() {
            self.rows.advance_to(t);
            self.dead.advance_to(t);
        }
        self.snapshots
            .offer(t, || source.state(unsent), &self.stats);
    }

    /// Sends the source's dead letters at the present epoch.
    fn send_dead(&mut self, dead: Vec<DeadLetter>) {
        if dead.is_empty() {
            return;
        }
        let t = *self.dead.time();
        for d in dead {
            self.dead.send(d);
        }
        self.snapshots.applied(t);
    }
}

/// Feeds one worker's share of a Kafka topic into the dataflow, epoch by epoch, with one
/// epoch in flight; returns the epochs it sent. A worker without partitions closes its
/// inputs at once. Offsets are committed once everything read has been written: after each
/// complete checkpoint when checkpointing, else at the end.
fn stream_epochs(
    worker: &mut timely::worker::Worker,
    stream: &StreamInput,
    reader: &Arc<Reader>,
    mut feed: StreamFeed,
    probe: &ProbeHandle<u64>,
    ckpt: Option<&Checkpointing>,
    until: &dyn Fn() -> i64,
) -> usize {
    let stats = feed.stats.clone();
    let me = worker.index();
    let resume = match ckpt.and_then(|c| c.cut.as_ref()) {
        Some(cut) => match cut.state::<SourceState>(&component("source", me)) {
            Ok(state) => Some((state, cut.time)),
            Err(e) => {
                stats.borrow_mut().fatal.push(e.to_string());
                return 0;
            }
        },
        None => None,
    };
    let mut source = match KafkaSource::new(
        stream.source.clone(),
        reader.clone(),
        me,
        worker.peers(),
        resume,
    ) {
        Ok(s) => s,
        Err(e) => {
            stats.borrow_mut().fatal.push(e.to_string());
            return 0;
        }
    };
    feed.advance(ckpt.map_or(0, Checkpointing::from), &source, &[]);
    let mut sent = 0;
    let mut committed = None;
    let mut backoff = Duration::from_millis(100);
    while source.has_partitions() && !source.at_end() && !stream.stop.load(Ordering::Relaxed) {
        if !stats.borrow().fatal.is_empty() {
            // Stop every worker: the run cannot go on as it should.
            stream.stop.store(true, Ordering::Relaxed);
            break;
        }
        match source.poll(10_000, until()) {
            Ok(polled) => {
                backoff = Duration::from_millis(100);
                stats.borrow_mut().bytes += polled.bytes;
                feed.send_dead(polled.dead);
                if !polled.closed.is_empty() {
                    sent += send_epochs(
                        worker,
                        polled.closed,
                        stream.tasks,
                        &mut feed,
                        &source,
                        probe,
                    );
                    commit_cut(&source, ckpt, me, &mut committed);
                }
            }
            Err(e) => {
                // The broker is down or went away: say so, wait, and try again.
                tracing::warn!(error = %e, retry_in = ?backoff, "kafka source");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
        worker.step();
    }
    let rest = source.drain();
    sent += send_epochs(worker, rest, stream.tasks, &mut feed, &source, probe);
    feed.snapshots.offer(u64::MAX, || source.state(&[]), &stats);
    drop(feed);
    while worker.step_or_park(None) {}
    if ckpt.is_some() {
        commit_cut(&source, ckpt, me, &mut committed);
    } else if let Err(e) = source.commit() {
        stats.borrow_mut().fatal.push(e.to_string());
    }
    sent
}

/// Commits this worker's offsets of the latest complete checkpoint, if it is new; worker 0
/// also removes the state files no later cut needs. A failure is only logged: the state
/// directory, not the group's offsets, is where a checkpointed stream resumes.
fn commit_cut(
    source: &KafkaSource,
    ckpt: Option<&Checkpointing>,
    me: usize,
    committed: &mut Option<u64>,
) {
    let Some(c) = ckpt else { return };
    let result = (|| -> Result<()> {
        let Some(cut) = latest_cut(&c.settings.dir, &c.components)? else {
            return Ok(());
        };
        if committed.is_some_and(|t| t >= cut.time) {
            return Ok(());
        }
        source.commit_state(&cut.state(&component("source", me))?)?;
        if me == 0 {
            prune(&c.settings.dir, &c.components, cut.time)?;
        }
        tracing::debug!(
            cut = cut.time,
            worker = me,
            "checkpoint complete, offsets committed"
        );
        *committed = Some(cut.time);
        Ok(())
    })();
    if let Err(e) = result {
        tracing::warn!(error = %e, "committing the checkpoint's offsets");
    }
}

/// Sends closed epochs into the dataflow in order, each once the one before has been written
/// (the source's backpressure: meanwhile the broker holds what comes next); returns how many
/// it sent.
fn send_epochs(
    worker: &mut timely::worker::Worker,
    mut closed: Vec<(u64, Vec<Row>)>,
    tasks: Tasks,
    feed: &mut StreamFeed,
    source: &KafkaSource,
    probe: &ProbeHandle<u64>,
) -> usize {
    for i in 0..closed.len() {
        let epoch = closed[i].0;
        feed.advance(epoch, source, &closed[i..]);
        let rows = std::mem::take(&mut closed[i].1);
        let mut s = feed.stats.borrow_mut();
        s.rows += rows.len() as u64;
        s.train_epochs += u64::from(tasks.train);
        s.infer_epochs += u64::from(tasks.infer);
        drop(s);
        feed.rows.send(FileRows {
            epoch,
            tasks,
            rows,
            bytes: 0,
        });
        feed.snapshots.applied(epoch);
        feed.advance(epoch + 1, source, &closed[i + 1..]);
        // One epoch in flight: the dataflow is stepped until the epoch is written, so it
        // moves through every stage at once instead of one step per poll of the source.
        while probe.less_equal(&epoch) {
            worker.step();
        }
    }
    closed.len()
}

fn progress(done: usize, total: usize, s: &Stats, started: Instant) {
    let width = 30;
    let filled = (done * width).checked_div(total).unwrap_or(width);
    let mut err = std::io::stderr();
    let _ = write!(
        err,
        "\r[{}{}] epoch {done}/{total}  {} rows  {:.0} s",
        "#".repeat(filled),
        " ".repeat(width - filled),
        s.rows,
        started.elapsed().as_secs_f64()
    );
    let _ = err.flush();
}
