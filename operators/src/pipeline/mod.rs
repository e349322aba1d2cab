//! The DFP job as one timely dataflow (Morpheus' `dfp_integrated_training_batch_pipeline.py`
//! and its streaming pipeline), wired in one place.
//!
//! - [`run`] (here): checks the settings and the machine, locks the output and state
//!   directories, keeps the run's status file, and starts the input's run;
//! - `graph`: the dataflow built in one place from a worker's context: file to batch -> split
//!   users -> rolling window -> data prep -> { training -> registry writer | inference ->
//!   filter detections -> post-processing -> serialize } -> sinks;
//! - `worker`: each worker's context (backend, windows, scorer, sinks, the state its stages
//!   register), the graph, then the one driver of its [`Source`](crate::source::Source);
//! - `resume`: the state directory of a checkpointed stream and the cut it resumes from.
//!
//! Inputs: a control message (its plan), a Kafka topic of records, a watched directory, or a
//! control topic (each message run as a plan, `crate::control_topic`). Outputs: the
//! [`Sink`](crate::sink::Sink)s, model versions in the registry, a [`RunSummary`]. Every stage
//! acts on an epoch once the frontier has passed it, so the output does not depend on the
//! number of workers; a checkpointed stream resumes from its latest complete cut without
//! losing or doubling anything.

mod control_topic;
mod graph;
mod input;
mod resume;
mod worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use dfp_engine::control::{ControlMessage, FileScope};
use dfp_engine::files::DirLock;
use dfp_engine::model::Device;
use dfp_engine::registry::Registry;
use dfp_engine::schema::SourceSchema;
use dfp_engine::{Error, Result};
use serde::Serialize;

use crate::config::RunConfig;
use crate::feedback::{FeedbackPlace, FeedbackTopic, TopicReport};
use crate::metrics::Stats;
use crate::mlflow::{Mirror, MirrorReport};
use crate::plan::Plan;
use crate::post_proc::Clock;
use crate::run_status::{RunStatus, Status};
use crate::serialize::{Columns, OutKind};
use crate::sink::files::output_path;
use crate::telemetry::{MetricsServer, Telemetry};

pub use control_topic::ControlTopicInput;
pub use input::{Input, StreamInput, StreamSource};
use worker::{Feed, execute};

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
    /// The MLflow server the registry is mirrored to, if any (`crate::mlflow`).
    pub mlflow: Option<MlflowOptions>,
    /// Where `/metrics` is served while the run goes on, if anywhere (`crate::telemetry`).
    pub metrics: Option<MetricsOptions>,
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

/// The MLflow server a run mirrors its registry to.
#[derive(Debug, Clone)]
pub struct MlflowOptions {
    /// `mlflow+http://HOST:PORT`.
    pub uri: String,
    /// How long the end of the run keeps trying to push what is left to MLflow.
    pub flush: Duration,
    /// Where the run's registry announces its changes (set by [`run`]).
    changes: Option<Sender<String>>,
}

impl MlflowOptions {
    /// Mirrors to the server at `uri`, trying for at most `flush` at the end of the run.
    pub fn new(uri: &str, flush: Duration) -> MlflowOptions {
        MlflowOptions {
            uri: uri.to_string(),
            flush,
            changes: None,
        }
    }
}

/// Where a run serves its Prometheus metrics.
#[derive(Debug, Clone)]
pub struct MetricsOptions {
    /// `HOST:PORT` (port 0: any free port, logged).
    pub addr: String,
    /// The run's metrics (set by [`run`]).
    pub(crate) telemetry: Option<Arc<Telemetry>>,
}

impl MetricsOptions {
    /// Serves `/metrics` on `addr`.
    pub fn new(addr: &str) -> MetricsOptions {
        MetricsOptions {
            addr: addr.to_string(),
            telemetry: None,
        }
    }
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
    /// The run's registry: the local directory, announcing its changes to the MLflow mirror
    /// when there is one.
    pub(crate) fn open_registry(&self) -> Result<Registry> {
        let registry = Registry::open(&self.registry)?;
        Ok(match self.mlflow.as_ref().and_then(|m| m.changes.clone()) {
            Some(tx) => registry.notifying(tx),
            None => registry,
        })
    }

    /// The output columns: dfp's, or Morpheus' layout when the config asks for it.
    pub(crate) fn columns(&self) -> Result<Columns> {
        Columns::for_config(&self.schema, &self.config)
    }

    /// Whether this process writes the output files (global worker 0 is in process 0).
    pub(crate) fn writes_outputs(&self) -> bool {
        self.cluster.as_ref().is_none_or(|c| c.process == 0)
    }

    /// Workers in the whole run, over every process.
    pub(crate) fn total_workers(&self) -> usize {
        self.workers.max(1) * self.cluster.as_ref().map_or(1, |c| c.addresses.len())
    }

    /// The timely configuration: threads in this process, or one process of a cluster.
    pub(crate) fn timely_config(&self) -> timely::Config {
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

    /// The output files of the run, in the order a summary lists them.
    pub(crate) fn out_kinds(&self) -> Vec<OutKind> {
        let mut kinds = vec![OutKind::DetectionsCsv, OutKind::DetectionsJson];
        if self.config.alerts.enabled {
            kinds.push(OutKind::Alerts);
        }
        if self.write_scores {
            kinds.push(OutKind::ScoresCsv);
        }
        kinds.push(OutKind::Shadow);
        if self.config.parity.group.is_some() {
            kinds.push(OutKind::Parity);
        }
        if self.config.drift.enabled {
            kinds.push(OutKind::Drift);
        }
        kinds.push(OutKind::DeadLetters);
        kinds
    }

    /// The output files this process writes, in the order a summary lists them.
    fn output_paths(&self) -> Vec<PathBuf> {
        if !self.writes_outputs() {
            // Process 0 of the cluster writes them.
            return Vec::new();
        }
        self.out_kinds()
            .into_iter()
            .map(|k| output_path(&self.output, &self.schema.name, k))
            .collect()
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
    /// What was pushed to MLflow, when the registry is mirrored there.
    pub mlflow: Option<MirrorReport>,
    /// What the feedback topic brought, when the run reads one.
    pub feedback: Option<TopicReport>,
}

impl RunSummary {
    /// The one-line summary.
    pub fn line(&self) -> String {
        let s = &self.stats;
        let promoted = if s.promoted > 0 {
            format!(" ({} challengers promoted)", s.promoted)
        } else {
            String::new()
        };
        let mut parity = String::new();
        if s.suppressed > 0 {
            parity += &format!(" ({} silenced by feedback)", s.suppressed);
        }
        if s.parity_breaches > 0 {
            parity += &format!(", {} parity breaches", s.parity_breaches);
        }
        if !s.drifted.is_empty() {
            let features: Vec<String> = s
                .drifted
                .iter()
                .map(|(f, n)| format!("{f} ({n} epochs)"))
                .collect();
            parity += &format!(", drift in {}", features.join(", "));
        }
        if s.retrain_requests > 0 {
            parity += &format!(
                " ({} retraining asked for, {} models retrained)",
                s.retrain_requests, s.retrained
            );
        }
        let mut mlflow = self
            .mlflow
            .as_ref()
            .map_or_else(String::new, |m| format!("; {}", m.line()));
        if let Some(f) = &self.feedback {
            mlflow += &format!("; {}", f.line());
        }
        format!(
            "{} rows from {} files in {} epochs, {} users, {} models trained{promoted}, {} rows scored, {} detections{parity}, {} dead letters; {:.1} s ({:.0} rows/s){mlflow}",
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

/// Runs the input's tasks to completion: a control message's epochs, or a stream until its
/// end (bounded), a stop or a fatal error. The output directory (and a stream's state
/// directory) is locked for the run, and its status file says `running` until the run ends,
/// then how it ended.
pub fn run(mut opts: RunOptions) -> Result<RunSummary> {
    opts.config.validate("run config")?;
    if opts.config.morpheus.features {
        opts.schema = opts.schema.with_morpheus_features()?;
    }
    check_parallelism(&opts)?;
    check_parity(&opts)?;
    let _locks = lock_dirs(&opts)?;
    let status = if opts.writes_outputs() {
        Some(RunStatus::start(&opts.output, &opts.schema.name)?)
    } else {
        None
    };
    let _metrics = match opts.metrics.as_mut() {
        Some(m) => {
            let telemetry = Arc::new(Telemetry::new());
            m.telemetry = Some(telemetry.clone());
            Some(MetricsServer::start(&m.addr, telemetry)?)
        }
        None => None,
    };
    let mirror = match &opts.mlflow {
        Some(m) => Some(Mirror::start(
            &opts.registry,
            &m.uri,
            m.flush,
            opts.writes_outputs(),
        )?),
        None => None,
    };
    if let (Some(mirror), Some(m)) = (&mirror, opts.mlflow.as_mut()) {
        m.changes = Some(mirror.changes());
    }
    let feedback = match (&opts.config.feedback.topic, opts.writes_outputs()) {
        (Some(url), true) => {
            let (kafka, topic) =
                crate::kafka::KafkaSettings::from_url(url, opts.config.source.options.clone())?;
            let place = FeedbackPlace {
                output: opts.output.clone(),
                source: opts.schema.name.clone(),
                registry: opts.registry.clone(),
            };
            let telemetry = opts.metrics.as_ref().and_then(|m| m.telemetry.clone());
            Some(FeedbackTopic::start(
                &kafka,
                (&topic, &opts.config.feedback.group),
                place,
                telemetry,
            )?)
        }
        _ => None,
    };
    let result = run_locked(&opts);
    let verdicts = feedback.map(FeedbackTopic::finish).transpose();
    let pushed = mirror.map(Mirror::finish);
    for (model, error) in pushed.iter().flat_map(|p| &p.unsynced) {
        tracing::warn!(%model, %error, "not pushed to MLflow: the next run or `dfp models sync` pushes it");
    }
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
    summary.mlflow = pushed;
    summary.feedback = verdicts?;
    if let Some(status) = status {
        summary.outputs.push(status.path().to_path_buf());
    }
    Ok(summary)
}

/// Refuses a `[parity] group` the source schema has no column for.
fn check_parity(opts: &RunOptions) -> Result<()> {
    let Some(column) = &opts.config.parity.group else {
        return Ok(());
    };
    let columns = Columns::new(&opts.schema);
    if columns.has_value(column) {
        return Ok(());
    }
    Err(Error::stage(
        "run config",
        format!(
            "[parity] group = {column:?}: the source schema {:?} has no such column (its columns: {})",
            opts.schema.name,
            columns.value_names().join(", ")
        ),
    ))
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
        Input::Stream(s) => s.checkpoint.as_ref().map(|c| c.dir.clone()),
        Input::ControlTopic(t) => t.state_dir.clone(),
        Input::Control { .. } => None,
    };
    if let Some(dir) = state {
        locks.push(DirLock::acquire(&dir, "state directory")?);
    }
    Ok(locks)
}

fn run_locked(opts: &RunOptions) -> Result<RunSummary> {
    let started = Instant::now();
    let versions = opts.open_registry()?.serving_all()?;
    let (stats, epochs, planned, unmatched) = match &opts.input {
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
            let (unmatched, planned) = (plan.unmatched.clone(), plan.epochs.len());
            let sinks = worker::sinks_for_plan(opts)?;
            let (stats, epochs) = execute(opts, Feed::Plan(Arc::new(plan)), sinks, versions)?;
            (stats, epochs, Some(planned), unmatched)
        }
        Input::ControlTopic(topic) => {
            if opts.cluster.is_some() {
                return Err(Error::stage(
                    "run",
                    "--control-topic runs in one process (its messages run one after the other); \
                     give it --workers instead of a cluster",
                ));
            }
            let (stats, epochs) = control_topic::run(opts, topic)?;
            (stats, epochs, None, Vec::new())
        }
        Input::Stream(stream) => {
            let (stats, epochs) = resume::run_stream(opts, stream, versions)?;
            (stats, epochs, None, Vec::new())
        }
    };
    Ok(RunSummary {
        epochs,
        planned,
        stopped: planned.is_some_and(|n| epochs < n),
        stats,
        seconds: started.elapsed().as_secs_f64(),
        outputs: opts.output_paths(),
        unmatched,
        mlflow: None,
        feedback: None,
    })
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
