//! `dfp run`: its flags, laid over the run config (`--config`, else configs/dfp.toml) so that
//! the config is the source of truth and a flag overrides its key; then the run, its summary
//! and its exit code.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result, bail};
use dfp_engine::period::Span;
use dfp_engine::schema::SourceSchema;
use dfp_operators::config::{RunConfig, SinkConfig, SourceKind};
use dfp_operators::kafka::parse_kafka_url;
use dfp_operators::mlflow::RegistrySpec;
use dfp_operators::pipeline::{ClusterSpec, Input, MetricsOptions, MlflowOptions, RunOptions};
use dfp_operators::post_proc::Clock;

use crate::cluster;

/// Where the models are kept: `--registry` and, for an MLflow registry, its local copy and
/// how long a run keeps trying to push to it.
#[derive(Debug, Clone, clap::Args)]
pub struct RegistryArgs {
    /// The model registry: a directory, or mlflow+http://HOST:PORT (an MLflow tracking
    /// server; models are written to --registry-cache first, then pushed there; `dfp serve`
    /// pulls its champions and challengers into --registry-cache).
    #[arg(long, default_value = "models", global = true)]
    registry: String,
    /// The local copy of an MLflow registry: runs train into and score from it, and it is
    /// pushed to MLflow as it changes.
    #[arg(long, default_value = "models", value_name = "DIR", global = true)]
    registry_cache: PathBuf,
    /// How long the end of a run (or `dfp models sync`) keeps trying to push what MLflow
    /// has not taken yet, in seconds.
    #[arg(long, default_value_t = 60, value_name = "SECS", global = true)]
    mlflow_flush: u64,
}

impl RegistryArgs {
    /// The registry these flags name.
    pub fn spec(&self) -> Result<RegistrySpec> {
        Ok(RegistrySpec::parse(&self.registry, &self.registry_cache)?)
    }

    /// `--mlflow-flush`.
    pub fn flush(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.mlflow_flush)
    }
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("input").args(["control_messages", "stream", "watch", "control_topic"])))]
pub struct RunArgs {
    /// Source schema: a built-in name (azure, duo) or a TOML file.
    #[arg(long)]
    source: String,
    /// The control message (Morpheus' JSON). One of --control-messages, --stream, --watch,
    /// --control-topic, or `[source] kind` in --config, says what is read.
    #[arg(long)]
    control_messages: Option<PathBuf>,
    /// Consume raw log records (one JSON record per message) from kafka://HOST:PORT/TOPIC.
    /// Every epoch trains and scores, as Morpheus' streaming pipeline does.
    #[arg(long)]
    stream: Option<String>,
    /// Read log files as they appear in this directory (.json, .jsonl, .ndjson, .csv), in
    /// event-time epochs, as a stream is read: exactly once across restarts.
    #[arg(long, value_name = "DIR")]
    watch: Option<PathBuf>,
    /// Consume control messages (Morpheus' JSON, one per message) from kafka://HOST:PORT/TOPIC,
    /// as Morpheus' streaming DFP pipeline does: each is run as --control-messages runs a file,
    /// in order, into the same outputs.
    #[arg(long)]
    control_topic: Option<String>,
    /// How long one poll of a topic waits for a message, or how often a watched directory is
    /// listed ([source] poll).
    #[arg(long)]
    poll_interval: Option<String>,
    /// Do not commit the control messages' offsets to the group (Morpheus' disable_commit;
    /// [source] commit = false).
    #[arg(long)]
    disable_commit: bool,
    /// Kafka consumer group: where consumption starts (its committed offsets) and is committed
    /// ([source] group).
    #[arg(long)]
    group: Option<String>,
    /// Event time per epoch of a stream ("1d", "1h"): windows, training and outputs advance
    /// one epoch at a time ([source] epoch; default 1d).
    #[arg(long)]
    epoch: Option<String>,
    /// How far behind its partition's (or file's) newest record a record may arrive and still
    /// be placed; later ones are dead-lettered ([source] lateness; default 0s).
    #[arg(long)]
    lateness: Option<String>,
    /// Stop once everything there has been read (a replayed, bounded stream; [source]
    /// until_end).
    #[arg(long)]
    until_end: bool,
    /// Also produce the detections (JSON) to this topic on the stream's cluster (a
    /// [[sinks]] kind = "kafka").
    #[arg(long)]
    detections_topic: Option<String>,
    /// Also write the detections, one JSON line each, to `stdout` or to
    /// kafka://HOST:PORT/TOPIC (repeatable; [[sinks]]).
    #[arg(long, value_name = "SINK")]
    detections_to: Vec<String>,
    /// Where a stream checkpoints its state (windows, model versions, offsets, output
    /// lengths) and resumes from after a crash or a stop ([checkpoint] dir; default
    /// OUTPUT/.dfp-state).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Event time from one checkpoint to the next, in whole epochs ("1d", "6h"; default: one
    /// epoch; [checkpoint] every).
    #[arg(long)]
    checkpoint_every: Option<String>,
    /// Do not checkpoint: a crash may then double or lose output, as in Morpheus
    /// ([checkpoint] enabled = false).
    #[arg(long, conflicts_with_all = ["state_dir", "checkpoint_every"])]
    no_checkpoints: bool,
    /// A librdkafka setting passed through, KEY=VALUE (repeatable): security.protocol,
    /// sasl.mechanisms, sasl.username, ssl.ca.location, ... ([source] options).
    #[arg(long = "kafka-option", value_name = "KEY=VALUE")]
    kafka_options: Vec<String>,
    /// Settings (TOML; see configs/README.md), read over Morpheus' defaults. Default:
    /// configs/dfp.toml.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Timely workers (threads) in this process, each owning a share of the users.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Processes in the cluster this process belongs to (timely's cluster mode; see
    /// `dfp cluster launch`).
    #[arg(long, default_value_t = 1, requires = "hostfile")]
    processes: usize,
    /// This process's index in the cluster, from 0.
    #[arg(long, default_value_t = 0, requires = "hostfile")]
    process_index: usize,
    /// The cluster's processes, one HOST:PORT per line in process order.
    #[arg(long)]
    hostfile: Option<PathBuf>,
    /// Model threads in all, shared out over the workers (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Where models train and score: cpu, cuda, wgpu, or auto (CUDA when a GPU and its
    /// driver are there, else the CPU).
    #[arg(long, default_value = "cpu")]
    device: dfp_engine::model::Device,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Read analysts' verdicts from kafka://HOST:PORT/TOPIC while the run goes on (JSON:
    /// detection_id, label, by, note, suppress_for_days), as `dfp feedback` records them.
    #[arg(long, value_name = "URL")]
    feedback_topic: Option<String>,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics while the run goes on.
    #[arg(long, value_name = "HOST:PORT")]
    metrics_addr: Option<String>,
    /// The output directory.
    #[arg(long, default_value = "output")]
    output: PathBuf,
    /// Also write every scored row to dfp_scores_{source}.csv.
    #[arg(long)]
    write_scores: bool,
    /// Detection threshold on mean_abs_z (overrides the config).
    #[arg(long)]
    threshold: Option<f64>,
    #[command(flatten)]
    scope: ScopeArgs,
    /// Stamp detections with this time (RFC 3339) instead of the wall clock, so that runs of
    /// the same logs write the same bytes.
    #[arg(long, value_name = "TIME")]
    clock: Option<String>,
}

/// Where a control message's load globs resolve and may read, and how strictly it is read.
#[derive(Debug, clap::Args)]
pub struct ScopeArgs {
    /// Resolve relative load globs against this directory instead of the message's directory
    /// (for --control-topic: instead of the working directory, and a topic's messages then
    /// read only under it unless --allow-root is given).
    #[arg(long)]
    pub files_root: Option<PathBuf>,
    /// A directory load globs may read under (repeatable). Given, every file a control
    /// message reaches must lie under one of them; a --control-topic message always reads only
    /// under these or, without them, under its --files-root (default: the working directory).
    #[arg(long = "allow-root", value_name = "DIR")]
    pub allow_roots: Vec<PathBuf>,
    /// Unknown keys in a control message are problems (the message is refused), not warnings.
    #[arg(long)]
    pub strict: bool,
}

/// dfp's settings, kept in configs/dfp.toml so they are documented and tested there.
const DFP_CONFIG: &str = include_str!("../../configs/dfp.toml");

/// The settings in `path`, read over Morpheus' defaults, or else dfp's (configs/dfp.toml).
pub fn run_config(path: Option<&Path>) -> Result<RunConfig> {
    Ok(match path {
        Some(p) => RunConfig::from_file(p)?,
        None => RunConfig::from_toml(DFP_CONFIG, "configs/dfp.toml")?,
    })
}

/// A duration flag.
fn span(flag: &str, text: &str) -> Result<Span> {
    text.parse::<Span>()
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("{flag} {text:?}"))
}

/// Lays the flags over `config`'s `[source]`, `[checkpoint]` and `[[sinks]]`, then checks the
/// result as a config file is checked.
fn apply_flags(args: &RunArgs, config: &mut RunConfig) -> Result<()> {
    let src = &mut config.source;
    let mut input = |kind: Option<SourceKind>, url: Option<&String>, dir: Option<&PathBuf>| {
        src.kind = kind;
        src.url = url.cloned();
        src.dir = dir.cloned();
    };
    if args.control_messages.is_some() {
        input(None, None, None);
    } else if let Some(url) = &args.stream {
        input(Some(SourceKind::Kafka), Some(url), None);
    } else if let Some(dir) = &args.watch {
        input(Some(SourceKind::Watch), None, Some(dir));
    } else if let Some(url) = &args.control_topic {
        input(Some(SourceKind::ControlTopic), Some(url), None);
    }
    let stream_flags = [
        ("--group", args.group.is_some()),
        ("--epoch", args.epoch.is_some()),
        ("--lateness", args.lateness.is_some()),
        ("--poll-interval", args.poll_interval.is_some()),
        ("--until-end", args.until_end),
        ("--disable-commit", args.disable_commit),
        ("--state-dir", args.state_dir.is_some()),
        ("--checkpoint-every", args.checkpoint_every.is_some()),
        ("--no-checkpoints", args.no_checkpoints),
    ];
    if src.kind.is_none()
        && let Some((flag, _)) = stream_flags.iter().find(|f| f.1)
    {
        bail!(
            "{flag} is for a stream: give --stream, --watch or --control-topic (or [source] kind in the config)"
        );
    }
    if let Some(g) = &args.group {
        src.group = Some(g.clone());
    }
    if let Some(t) = &args.epoch {
        src.epoch = span("--epoch", t)?;
    }
    if let Some(t) = &args.lateness {
        src.lateness = span("--lateness", t)?;
    }
    if let Some(t) = &args.poll_interval {
        src.poll = Some(span("--poll-interval", t)?);
    }
    src.until_end |= args.until_end;
    src.commit &= !args.disable_commit;
    src.options.extend(kafka_options(&args.kafka_options)?);
    let ckpt = &mut config.checkpoint;
    if let Some(dir) = &args.state_dir {
        ckpt.dir = Some(dir.clone());
    }
    if let Some(t) = &args.checkpoint_every {
        ckpt.every = Some(span("--checkpoint-every", t)?);
    }
    ckpt.enabled &= !args.no_checkpoints;
    if let Some(topic) = &args.detections_topic {
        let brokers = match (&config.source.kind, &config.source.url) {
            (Some(SourceKind::Kafka | SourceKind::ControlTopic), Some(url)) => {
                parse_kafka_url(url)?.0
            }
            _ => bail!(
                "--detections-topic {topic:?} names a topic on the input's Kafka cluster, and this input is not on one: give --detections-to kafka://HOST:PORT/{topic}"
            ),
        };
        config.sinks.push(SinkConfig::Kafka {
            url: format!("kafka://{brokers}/{topic}"),
            options: Default::default(),
        });
    }
    if let Some(url) = &args.feedback_topic {
        parse_kafka_url(url)?;
        config.feedback.topic = Some(url.clone());
    }
    for to in &args.detections_to {
        config.sinks.push(if to == "stdout" {
            SinkConfig::Stdout {}
        } else if to.starts_with("kafka://") {
            SinkConfig::Kafka {
                url: to.clone(),
                options: Default::default(),
            }
        } else {
            bail!("--detections-to {to:?}: give stdout or kafka://HOST:PORT/TOPIC")
        });
    }
    config.validate("the config with the command line's flags")?;
    Ok(())
}

/// The librdkafka pass-through settings, each KEY=VALUE.
pub fn kafka_options(options: &[String]) -> Result<Vec<(String, String)>> {
    options
        .iter()
        .map(|o| {
            o.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.to_string()))
                .with_context(|| format!("--kafka-option {o:?} is not KEY=VALUE"))
        })
        .collect()
}

/// This process's place in a cluster, from --hostfile, --processes and --process-index.
fn cluster_spec(args: &RunArgs) -> Result<Option<ClusterSpec>> {
    let Some(path) = &args.hostfile else {
        return Ok(None);
    };
    let addresses = cluster::read_hostfile(path)?;
    if addresses.len() != args.processes {
        bail!(
            "--processes {} but {} lists {} processes",
            args.processes,
            path.display(),
            addresses.len()
        );
    }
    if args.process_index >= args.processes {
        bail!(
            "--process-index {} is not below --processes {}",
            args.process_index,
            args.processes
        );
    }
    Ok(Some(ClusterSpec {
        process: args.process_index,
        addresses,
    }))
}

/// A flag set by the first SIGINT or SIGTERM (a stream finishes what it read, commits and
/// exits 0; a batch run finishes the epochs in flight, writes them and exits 130); a second
/// signal exits at once.
fn stop_on_signal() -> Result<Arc<AtomicBool>> {
    use std::sync::atomic::Ordering;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("dfp: stopping now");
            std::process::exit(130);
        }
        eprintln!(
            "dfp: stopping: finishing and writing the epochs read, then committing (again to quit now)"
        );
    })
    .context("installing the signal handler")?;
    Ok(stop)
}

/// The wall clock, which stamps detections.
pub fn wall_clock() -> Clock {
    Arc::new(chrono::Utc::now)
}

/// `dfp run`.
pub fn run_pipeline(args: RunArgs) -> Result<ExitCode> {
    let mut config = run_config(args.config.as_deref())?;
    if let Some(t) = args.threshold {
        config.detection.threshold = t;
    }
    apply_flags(&args, &mut config)?;
    let schema = SourceSchema::resolve(&args.source)?;
    let clock = match &args.clock {
        Some(text) => {
            let t = chrono::DateTime::parse_from_rfc3339(text)
                .with_context(|| format!("--clock {text:?}: not an RFC 3339 time"))?
                .with_timezone(&chrono::Utc);
            Arc::new(move || t) as Clock
        }
        None => wall_clock(),
    };
    let stop = stop_on_signal()?;
    let (input, what) = match &args.control_messages {
        Some(path) => (
            Input::Control {
                path: path.clone(),
                files_root: args.scope.files_root.clone(),
                allowed_roots: args.scope.allow_roots.clone(),
                strict: args.scope.strict,
            },
            path.display().to_string(),
        ),
        None => {
            let mut input = Input::from_config(&config, &schema.name, &args.output, stop.clone())?
                .context("give --control-messages, --stream, --watch or --control-topic (or [source] kind in the config)")?;
            if let Input::ControlTopic(t) = &mut input {
                if let Some(root) = &args.scope.files_root {
                    t.files_root = root.clone();
                }
                t.allowed_roots = args.scope.allow_roots.clone();
                t.strict = args.scope.strict;
            }
            let s = &config.source;
            let what = s.url.clone().unwrap_or_else(|| {
                s.dir
                    .as_deref()
                    .map_or_else(String::new, |d| d.display().to_string())
            });
            (input, what)
        }
    };
    let cluster = cluster_spec(&args)?;
    let registry = args.registry.spec()?;
    // With the detections on standard output the summary goes to stderr, so a pipe gets
    // detections only.
    let summary_to_stderr = config.sinks.contains(&SinkConfig::Stdout {});
    let summary = dfp_operators::pipeline::run(RunOptions {
        schema,
        input,
        config,
        workers: args.workers,
        threads: args.threads,
        device: args.device,
        registry: registry.local,
        mlflow: registry
            .mlflow
            .map(|uri| MlflowOptions::new(&uri, args.registry.flush())),
        metrics: args.metrics_addr.as_deref().map(MetricsOptions::new),
        output: args.output,
        write_scores: args.write_scores,
        clock,
        progress: std::io::stderr().is_terminal() && cluster.is_none(),
        cluster,
        stop,
    })
    .with_context(|| format!("running {what}"))?;
    for p in &summary.unmatched {
        eprintln!("warning: load pattern {p} matches no file");
    }
    let say = |line: String| {
        if summary_to_stderr {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    say(summary.line());
    for p in &summary.outputs {
        say(format!("  {}", p.display()));
    }
    if summary.stopped {
        eprintln!(
            "stopped by a signal after {} of {} epochs: the outputs hold those epochs only (their status file says \"stopped\")",
            summary.epochs,
            summary.planned.unwrap_or(summary.epochs)
        );
        return Ok(ExitCode::from(STOPPED));
    }
    Ok(exit_code(&summary.stats))
}

/// The exit code of a batch run that a signal stopped before its last epoch.
const STOPPED: u8 = 130;

/// Exit code of a run that finished: 0, or [`SHORTFALL`] (with each reason on stderr) when
/// it did not do all it was asked (trained no model, lost models, rows it could not score).
pub fn exit_code(stats: &dfp_operators::metrics::Stats) -> ExitCode {
    let shortfalls = stats.shortfalls();
    for s in &shortfalls {
        eprintln!("error: {s}");
    }
    if shortfalls.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(SHORTFALL)
    }
}

/// The exit code of a run that finished without doing all it was asked (README: exit codes).
const SHORTFALL: u8 = 3;
