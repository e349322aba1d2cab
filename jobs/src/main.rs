//! `dfp`: digital fingerprinting, per-user behavioural anomaly detection on authentication and
//! cloud logs. This binary only parses the command line and wires the engine and operators
//! together; the logic lives in `dfp-engine` and `dfp-operators`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use arrow::array::AsArray;
use clap::{Parser, Subcommand};

mod cluster;
use dfp_engine::control::{ControlMessage, FileScope, expand_globs};
use dfp_engine::generate::{GenSource, GenerateConfig};
use dfp_engine::ingest::{DeadLetterWriter, InputFormat, Reader};
use dfp_engine::schema::SourceSchema;
use dfp_operators::checkpoint::CheckpointSettings;
use dfp_operators::config::RunConfig;
use dfp_operators::control_topic::ControlTopicInput;
use dfp_operators::demo::DemoOptions;
use dfp_operators::kafka_sink::KafkaSink;
use dfp_operators::kafka_source::{KafkaSettings, parse_kafka_url};
use dfp_operators::pipeline::{ClusterSpec, Input, RunOptions, StreamInput};
use dfp_operators::plan::Plan;
use dfp_operators::post_proc::Clock;
use dfp_operators::replay::Speed;
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Digital fingerprinting: per-user behavioural anomaly detection on authentication logs.
#[derive(Debug, Parser)]
#[command(name = "dfp", version, about)]
struct Cli {
    /// More log output on stderr (-v: debug, -vv: trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Less log output on stderr (-q: warnings and errors only, -qq: errors only).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    quiet: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate a labelled data set, train, score, and show the detections against the
    /// injected anomalies (the quickest way to see dfp work).
    Demo(DemoArgs),
    /// Run a control message's tasks (load, train, infer) as Morpheus' integrated DFP
    /// pipeline does, or a Kafka topic of raw logs (--stream), writing detections, model
    /// versions and dead letters.
    Run(Box<RunArgs>),
    /// Replay historical log files as a stream, in event-time order, to a Kafka topic or
    /// standard output.
    Replay(ReplayArgs),
    /// Generate realistic Azure AD or Duo logs with labelled anomalies (JSON-array files named
    /// like Morpheus', plus labels.jsonl).
    Generate(GenerateArgs),
    /// Check control messages (.json), source schemas or run configs (.toml); print every
    /// problem with its path and exit 1, or say the file is valid.
    Validate {
        /// Files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Unknown keys in a control message are problems, not warnings.
        #[arg(long)]
        strict: bool,
    },
    /// Read log files into Arrow batches by a source schema and report rows, users and
    /// rejected records (rejections go to a dead-letter NDJSON file).
    Ingest(IngestArgs),
    /// Show how a control message's inputs resolve: files found, and file batches per period
    /// (the plan `dfp run` makes of it).
    Plan {
        /// The control message.
        control_messages: PathBuf,
        /// Resolve relative globs against this directory instead of the message's directory.
        #[arg(long)]
        files_root: Option<PathBuf>,
        /// A directory load globs may read under (repeatable).
        #[arg(long = "allow-root", value_name = "DIR")]
        allow_roots: Vec<PathBuf>,
        /// Unknown keys in the message are problems, not warnings.
        #[arg(long)]
        strict: bool,
    },
    /// Run across hosts: start every process of a cluster run.
    Cluster {
        #[command(subcommand)]
        action: ClusterCommand,
    },
    /// Inspect the local model registry.
    Models {
        /// The registry directory.
        #[arg(long, default_value = "models", global = true)]
        registry: PathBuf,
        #[command(subcommand)]
        action: ModelsCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ModelsCommand {
    /// One line per model: name, versions, and the latest version's training window and rows.
    List,
    /// A model version's tags as JSON: training window, rows, hyperparameters, metrics.
    Show {
        /// The model name, e.g. DFP-azure-alice@example.com.
        name: String,
        /// The version (default: the latest).
        #[arg(long)]
        version: Option<u32>,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Start every process of the cluster in the hostfile with the same `dfp run` arguments:
    /// those on this machine as children (their output prefixed with [i]), the others over
    /// ssh (--ssh) or by printing the command to run there. Exits non-zero, stopping the
    /// others, when one fails.
    Launch {
        /// One HOST:PORT per process, in process order.
        #[arg(long)]
        hostfile: PathBuf,
        /// Worker threads per process.
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Start processes on other hosts with ssh (same paths there).
        #[arg(long)]
        ssh: bool,
        /// The arguments of `dfp run` (after --).
        #[arg(last = true, required = true)]
        run: Vec<String>,
    },
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("kafka_input").args(["stream", "control_topic"])))]
struct RunArgs {
    /// Source schema: a built-in name (azure, duo) or a TOML file.
    #[arg(long)]
    source: String,
    /// The control message (Morpheus' JSON).
    #[arg(
        long,
        required_unless_present_any = ["stream", "control_topic"],
        conflicts_with = "kafka_input"
    )]
    control_messages: Option<PathBuf>,
    /// Consume raw log records (one JSON record per message) from kafka://HOST:PORT/TOPIC.
    /// Every epoch trains and scores, as Morpheus' streaming pipeline does.
    #[arg(long)]
    stream: Option<String>,
    /// Consume control messages (Morpheus' JSON, one per message) from kafka://HOST:PORT/TOPIC,
    /// as Morpheus' streaming DFP pipeline does: each is run as --control-messages runs a file,
    /// in order, into the same outputs.
    #[arg(long, conflicts_with = "stream")]
    control_topic: Option<String>,
    /// How long one poll of the control topic waits for a message.
    #[arg(long, default_value = "100ms", requires = "control_topic")]
    poll_interval: String,
    /// Do not commit the control messages' offsets to the group (Morpheus' disable_commit).
    #[arg(long, requires = "control_topic")]
    disable_commit: bool,
    /// Kafka consumer group: where consumption starts (its committed offsets) and is committed.
    #[arg(long, requires = "kafka_input")]
    group: Option<String>,
    /// Event time per epoch of a stream ("1d", "1h"): windows, training and outputs advance
    /// one epoch at a time.
    #[arg(long, default_value = "1d", requires = "stream")]
    epoch: String,
    /// How far behind its partition's newest record a record may arrive and still be placed;
    /// later ones are dead-lettered.
    #[arg(long, default_value = "0s", requires = "stream")]
    lateness: String,
    /// Stop once every partition has been read to its end (a replayed, bounded stream).
    #[arg(long, requires = "kafka_input")]
    until_end: bool,
    /// Also produce the detections (JSON) to this topic.
    #[arg(long, requires = "stream")]
    detections_topic: Option<String>,
    /// Where a stream checkpoints its state (windows, model versions, offsets, output
    /// lengths) and resumes from after a crash or a stop. Default: OUTPUT/.dfp-state.
    #[arg(long, requires = "kafka_input")]
    state_dir: Option<PathBuf>,
    /// Event time from one checkpoint to the next, in whole epochs ("1d", "6h"; default: one
    /// epoch).
    #[arg(long, requires = "stream")]
    checkpoint_every: Option<String>,
    /// Do not checkpoint: a crash may then double or lose output, as in Morpheus.
    #[arg(long, requires = "kafka_input", conflicts_with_all = ["state_dir", "checkpoint_every"])]
    no_checkpoints: bool,
    /// A librdkafka setting passed through, KEY=VALUE (repeatable): security.protocol,
    /// sasl.mechanisms, sasl.username, ssl.ca.location, ...
    #[arg(long = "kafka-option", value_name = "KEY=VALUE")]
    kafka_options: Vec<String>,
    /// Stage settings (TOML; see configs/README.md), read over Morpheus' defaults. Default:
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
    /// The model registry directory.
    #[arg(long, default_value = "models")]
    registry: PathBuf,
    /// The output directory.
    #[arg(long, default_value = "output")]
    output: PathBuf,
    /// Also write every scored row to dfp_scores_{source}.csv.
    #[arg(long)]
    write_scores: bool,
    /// Detection threshold on mean_abs_z (overrides the config).
    #[arg(long)]
    threshold: Option<f64>,
    /// Resolve relative load globs against this directory instead of the message's directory
    /// (for --control-topic: instead of the working directory, and a topic's messages then
    /// read only under it unless --allow-root is given).
    #[arg(long)]
    files_root: Option<PathBuf>,
    /// A directory load globs may read under (repeatable). Given, every file a control
    /// message reaches must lie under one of them; a --control-topic message always reads only
    /// under these or, without them, under its --files-root (default: the working directory).
    #[arg(long = "allow-root", value_name = "DIR")]
    allow_roots: Vec<PathBuf>,
    /// Unknown keys in a control message are problems (the message is refused), not warnings.
    #[arg(long)]
    strict: bool,
    /// Stamp detections with this time (RFC 3339) instead of the wall clock, so that runs of
    /// the same logs write the same bytes.
    #[arg(long, value_name = "TIME")]
    clock: Option<String>,
}

#[derive(Debug, clap::Args)]
struct ReplayArgs {
    /// Source schema: a built-in name (azure, duo) or a TOML file (event time and user).
    #[arg(long)]
    source: String,
    /// Log files (a glob; JSON arrays or JSON lines).
    #[arg(long)]
    files: String,
    /// kafka://HOST:PORT/TOPIC or stdout.
    #[arg(long, default_value = "stdout")]
    to: String,
    /// "max", or how many times faster than event time ("60x": an hour a minute).
    #[arg(long, default_value = "max")]
    speed: String,
    /// A librdkafka setting passed through, KEY=VALUE (repeatable).
    #[arg(long = "kafka-option", value_name = "KEY=VALUE")]
    kafka_options: Vec<String>,
}

#[derive(Debug, clap::Args)]
struct DemoArgs {
    /// Which logs to generate.
    #[arg(long, default_value = "azure", value_parser = ["azure", "duo"])]
    source: String,
    /// Number of users.
    #[arg(long, default_value_t = 100)]
    users: usize,
    /// Days of logs.
    #[arg(long, default_value_t = 30)]
    days: u32,
    /// Days to train on; the rest are scored.
    #[arg(long, default_value_t = 25)]
    train_days: u32,
    /// Random seed of the generator.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// The demo's directory (logs, control message, registry, outputs; replaced each run).
    #[arg(long, default_value = "dfp-demo")]
    dir: PathBuf,
    /// Stage settings (TOML), read over Morpheus' defaults. Default: configs/dfp.toml.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Timely workers.
    #[arg(long, default_value_t = 1)]
    workers: usize,
}

#[derive(Debug, clap::Args)]
struct GenerateArgs {
    /// Which source's log shape to write.
    #[arg(long, value_parser = ["azure", "duo"])]
    source: String,
    /// Number of users.
    #[arg(long, default_value_t = 100)]
    users: usize,
    /// Number of days.
    #[arg(long, default_value_t = 30)]
    days: u32,
    /// First day (UTC), YYYY-MM-DD.
    #[arg(long, default_value = "2022-08-01")]
    start: String,
    /// Random seed: the same seed gives the same bytes.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Files per day.
    #[arg(long, default_value_t = 8)]
    files_per_day: u32,
    /// Inject anomalies only into the last N days (default: a sixth of the days, at least 1).
    #[arg(long)]
    anomaly_days: Option<u32>,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, clap::Args)]
struct IngestArgs {
    /// Source schema: a built-in name (azure, duo) or a TOML file.
    #[arg(long)]
    source: String,
    /// Input files or glob patterns.
    #[arg(long, required = true, num_args = 1..)]
    files: Vec<String>,
    /// Input layout: auto, json (array), jsonl or csv.
    #[arg(long, default_value = "auto")]
    format: InputFormat,
    /// Reader threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Where rejected records and broken files are written, as NDJSON.
    #[arg(long, default_value = "dfp_dead_letter.ndjson")]
    dead_letter: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    // A panic (in dfp only a failure of timely's network threads when a cluster process goes
    // away) is one line on stderr; the run then ends with an error saying what happened.
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        eprintln!(
            "dfp: thread {}: {}",
            thread.name().unwrap_or("?"),
            info.to_string().replace('\n', " ")
        );
    }));
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8, quiet: u8) {
    let level = match i16::from(verbose) - i16::from(quiet) {
        i16::MIN..=-2 => "error",
        -1 => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_env("DFP_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Demo(args) => demo(args),
        Command::Run(args) => run_pipeline(*args),
        Command::Replay(args) => replay(args),
        Command::Generate(args) => generate(args),
        Command::Validate { files, strict } => Ok(validate(&files, strict)),
        Command::Ingest(args) => ingest(args),
        Command::Plan {
            control_messages,
            files_root,
            allow_roots,
            strict,
        } => plan(
            &control_messages,
            files_root.as_deref(),
            &allow_roots,
            strict,
        ),
        Command::Models { registry, action } => models(&registry, action),
        Command::Cluster {
            action:
                ClusterCommand::Launch {
                    hostfile,
                    workers,
                    ssh,
                    run,
                },
        } => cluster::launch(&hostfile, workers, ssh, &run),
    }
}

fn models(root: &std::path::Path, action: ModelsCommand) -> Result<ExitCode> {
    if !root.is_dir() {
        anyhow::bail!("no model registry at {}", root.display());
    }
    let registry = dfp_engine::registry::Registry::open(root)?;
    match action {
        ModelsCommand::List => {
            let time = |us: Option<i64>| {
                us.and_then(chrono::DateTime::from_timestamp_micros)
                    .map_or("-".to_string(), |t| {
                        t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
                    })
            };
            println!(
                "{:<48} {:>8} {:>6}  training window",
                "model", "versions", "rows"
            );
            let mut unreadable = 0;
            for (name, versions) in registry.list()? {
                let latest = versions.last().copied().unwrap_or(0);
                // Names are user ids: shown escaped, so no control character reaches the terminal.
                let shown = name.escape_debug().to_string();
                match registry.version(&name, latest) {
                    Ok(v) => println!(
                        "{:<48} {:>8} {:>6}  {} .. {}",
                        shown,
                        versions.len(),
                        v.header.rows,
                        time(v.header.first_timestamp_us),
                        time(v.header.last_timestamp_us)
                    ),
                    Err(e) => {
                        unreadable += 1;
                        println!(
                            "{:<48} {:>8} {:>6}  unreadable v{latest:06}: {}",
                            shown,
                            versions.len(),
                            "-",
                            e.chain().escape_debug()
                        );
                    }
                }
            }
            if unreadable > 0 {
                eprintln!("error: {unreadable} model(s) have an unreadable latest version");
                return Ok(ExitCode::FAILURE);
            }
        }
        ModelsCommand::Show { name, version } => {
            let version = match version {
                Some(v) => v,
                None => *registry
                    .version_numbers(&name)?
                    .last()
                    .with_context(|| format!("no model {name:?} in {}", root.display()))?,
            };
            let v = registry.version(&name, version)?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The settings in `path`, read over Morpheus' defaults, or else dfp's (configs/dfp.toml).
fn run_config(path: Option<&Path>) -> Result<RunConfig> {
    Ok(match path {
        Some(p) => RunConfig::from_file(p)?,
        None => RunConfig::from_toml(DFP_CONFIG, "configs/dfp.toml")?,
    })
}

/// The librdkafka pass-through settings, each KEY=VALUE.
fn kafka_settings(brokers: String, options: &[String]) -> Result<KafkaSettings> {
    let options = options
        .iter()
        .map(|o| {
            o.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.to_string()))
                .with_context(|| format!("--kafka-option {o:?} is not KEY=VALUE"))
        })
        .collect::<Result<_>>()?;
    Ok(KafkaSettings { brokers, options })
}

/// A `--stream` run's input, stopped by `stop`.
fn stream_input(args: &RunArgs, source: &str, url: &str, stop: Arc<AtomicBool>) -> Result<Input> {
    let (brokers, topic) = parse_kafka_url(url)?;
    let span = |name: &str, text: &str| -> Result<i64> {
        dfp_engine::period::parse_duration(text)
            .map_err(anyhow::Error::msg)
            .and_then(|d| d.num_microseconds().context("too long"))
            .with_context(|| format!("--{name} {text:?}"))
    };
    let period_us = span("epoch", &args.epoch)?;
    if period_us <= 0 {
        bail!("--epoch {:?} must be positive", args.epoch);
    }
    let group = args
        .group
        .clone()
        .unwrap_or_else(|| format!("dfp-{source}"));
    let kafka = kafka_settings(brokers, &args.kafka_options)?;
    let mut stream = StreamInput::new(kafka, &topic, &group, period_us);
    stream.source.lateness_us = span("lateness", &args.lateness)?.max(0);
    stream.source.stop_at_end = args.until_end;
    stream.detections_topic = args.detections_topic.clone();
    if !args.no_checkpoints {
        let every = match &args.checkpoint_every {
            Some(text) => {
                let us = span("checkpoint-every", text)?;
                if us < period_us || us % period_us != 0 {
                    bail!(
                        "--checkpoint-every {text:?} must be a whole number of epochs (--epoch {:?})",
                        args.epoch
                    );
                }
                u64::try_from(us / period_us).context("--checkpoint-every")?
            }
            None => 1,
        };
        stream.checkpoint = state_dir(args).map(|dir| CheckpointSettings { dir, every });
    }
    stream.stop = stop;
    Ok(Input::Kafka(stream))
}

/// The state directory of a Kafka run: --state-dir, else OUTPUT/.dfp-state; none with
/// --no-checkpoints.
fn state_dir(args: &RunArgs) -> Option<PathBuf> {
    (!args.no_checkpoints).then(|| {
        args.state_dir
            .clone()
            .unwrap_or_else(|| args.output.join(".dfp-state"))
    })
}

/// A `--control-topic` run's input, stopped by `stop`.
fn control_topic_input(
    args: &RunArgs,
    source: &str,
    url: &str,
    stop: Arc<AtomicBool>,
) -> Result<Input> {
    let (brokers, topic) = parse_kafka_url(url)?;
    let poll = dfp_engine::period::parse_duration(&args.poll_interval)
        .map_err(anyhow::Error::msg)
        .and_then(|d| d.to_std().context("must not be negative"))
        .with_context(|| format!("--poll-interval {:?}", args.poll_interval))?;
    Ok(Input::ControlTopic(ControlTopicInput {
        kafka: kafka_settings(brokers, &args.kafka_options)?,
        topic,
        group: args
            .group
            .clone()
            .unwrap_or_else(|| format!("dfp-{source}-control")),
        poll,
        commit: !args.disable_commit,
        files_root: args
            .files_root
            .clone()
            .unwrap_or_else(|| PathBuf::from(".")),
        allowed_roots: args.allow_roots.clone(),
        strict: args.strict,
        stop_at_end: args.until_end,
        stop,
        state_dir: state_dir(args),
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

fn replay(args: ReplayArgs) -> Result<ExitCode> {
    let schema = Arc::new(SourceSchema::resolve(&args.source)?);
    let speed: Speed = args.speed.parse().map_err(anyhow::Error::msg)?;
    let (files, _) = expand_globs([args.files.as_str()], &FileScope::at("."))?;
    if files.is_empty() {
        bail!("--files {:?} matches no file", args.files);
    }
    let reader = Reader::new(schema);
    let records = dfp_operators::replay::records(&reader, &files)?;
    let total = records.len();
    let bar = std::io::stderr().is_terminal();
    let progress = |n: usize| {
        if bar {
            eprint!("\rreplayed {n}/{total}");
        }
    };
    if args.to == "stdout" {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        dfp_operators::replay::replay(
            &records,
            speed,
            |r| {
                use std::io::Write;
                writeln!(out, "{}", r.text)
                    .map_err(|e| dfp_engine::Error::io(Path::new("stdout"), "writing", e))
            },
            progress,
        )?;
    } else {
        let (brokers, topic) = parse_kafka_url(&args.to)?;
        let sink = KafkaSink::new(&kafka_settings(brokers, &args.kafka_options)?, &topic)?;
        dfp_operators::replay::replay(
            &records,
            speed,
            |r| sink.produce(r.key.as_deref(), &r.text),
            progress,
        )?;
        sink.flush()?;
    }
    if bar {
        eprintln!();
    }
    eprintln!(
        "replayed {total} records from {} files to {}",
        files.len(),
        args.to
    );
    Ok(ExitCode::SUCCESS)
}

fn wall_clock() -> Clock {
    Arc::new(chrono::Utc::now)
}

fn run_pipeline(args: RunArgs) -> Result<ExitCode> {
    let mut config = run_config(args.config.as_deref())?;
    if let Some(t) = args.threshold {
        config.detection.threshold = t;
    }
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
    let (input, what) = match (&args.control_messages, &args.stream, &args.control_topic) {
        (Some(path), _, _) => (
            Input::Control {
                path: path.clone(),
                files_root: args.files_root.clone(),
                allowed_roots: args.allow_roots.clone(),
                strict: args.strict,
            },
            path.display().to_string(),
        ),
        (None, Some(url), _) => (
            stream_input(&args, &schema.name, url, stop.clone())?,
            url.clone(),
        ),
        (None, None, Some(url)) => (
            control_topic_input(&args, &schema.name, url, stop.clone())?,
            url.clone(),
        ),
        (None, None, None) => bail!("give --control-messages, --stream or --control-topic"),
    };
    let cluster = match &args.hostfile {
        None => None,
        Some(path) => {
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
            Some(ClusterSpec {
                process: args.process_index,
                addresses,
            })
        }
    };
    let summary = dfp_operators::pipeline::run(RunOptions {
        schema,
        input,
        config,
        workers: args.workers,
        threads: args.threads,
        device: args.device,
        registry: args.registry,
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
    println!("{}", summary.line());
    for p in &summary.outputs {
        println!("  {}", p.display());
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
fn exit_code(stats: &dfp_operators::metrics::Stats) -> ExitCode {
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

fn demo(args: DemoArgs) -> Result<ExitCode> {
    let config = run_config(args.config.as_deref())?;
    let source: GenSource = args.source.parse().map_err(anyhow::Error::msg)?;
    eprintln!(
        "dfp demo: {} logs, {} users x {} days; training on the first {} days, scoring the rest",
        args.source, args.users, args.days, args.train_days
    );
    let report = dfp_operators::demo::demo(&DemoOptions {
        source,
        users: args.users,
        days: args.days,
        train_days: args.train_days,
        seed: args.seed,
        dir: args.dir.clone(),
        config,
        workers: args.workers,
        clock: wall_clock(),
        progress: std::io::stderr().is_terminal(),
    })
    .context("running the demo")?;
    println!(
        "generated {} records in {:.1} s; {}",
        report.records,
        report.generate_seconds,
        report.run.line()
    );
    println!();
    println!("{}", report.evaluation.table());
    println!();
    println!("files:");
    println!("  control message  {}", report.control.display());
    println!(
        "  model registry   {}  (dfp models --registry {} list)",
        report.registry.display(),
        report.registry.display()
    );
    for p in &report.run.outputs {
        println!("  output           {}", p.display());
    }
    println!();
    println!(
        "everything the demo wrote is under {}/ (replaced by the next demo; remove it with: rm -rf {})",
        args.dir.display(),
        args.dir.display()
    );
    Ok(exit_code(&report.run.stats))
}

/// dfp's settings, kept in configs/dfp.toml so they are documented and tested there.
const DFP_CONFIG: &str = include_str!("../../configs/dfp.toml");

fn generate(args: GenerateArgs) -> Result<ExitCode> {
    let source: GenSource = args.source.parse().map_err(anyhow::Error::msg)?;
    let start = chrono::NaiveDate::parse_from_str(&args.start, "%Y-%m-%d")
        .with_context(|| format!("--start {:?} is not a date like 2022-08-01", args.start))?;
    let mut cfg = GenerateConfig::new(source, args.users, args.days, start, args.seed);
    cfg.files_per_day = args.files_per_day;
    if let Some(n) = args.anomaly_days {
        cfg.anomaly_days = n;
    }
    let started = Instant::now();
    let summary = dfp_engine::generate::generate(&cfg, &args.out).with_context(|| {
        format!(
            "generating {} logs into {}",
            args.source,
            args.out.display()
        )
    })?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "wrote {} records ({} anomalous) for {} users in {} files, {:.1} MB, to {} in {:.2} s ({:.0} records/s); labels: {}",
        summary.records,
        summary.anomalous_records,
        summary.users,
        summary.files.len(),
        summary.bytes as f64 / 1e6,
        args.out.display(),
        secs,
        summary.records as f64 / secs.max(1e-9),
        summary.labels.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The text of a file to validate: a file that is not UTF-8 is an error saying where.
fn validate_text(path: &Path) -> Result<String, dfp_engine::Error> {
    let bytes = std::fs::read(path).map_err(|e| dfp_engine::Error::io(path, "reading", e))?;
    String::from_utf8(bytes).map_err(|e| dfp_engine::Error::Invalid {
        origin: path.display().to_string(),
        problems: vec![dfp_engine::config::Problem {
            path: String::new(),
            message: format!(
                "not UTF-8 text: invalid byte at offset {}",
                e.utf8_error().valid_up_to()
            ),
        }],
    })
}

/// What a file to validate holds.
fn validate_one(path: &Path, strict: bool) -> Result<String, dfp_engine::Error> {
    let text = validate_text(path)?;
    let origin = path.display().to_string();
    match path.extension().and_then(|e| e.to_str()) {
        Some("toml") => {
            // A source schema names its source; anything else is a run config. A file that is
            // not TOML at all is reported as such, with the parser's location.
            let table: toml::Table = dfp_engine::config::parse_toml(&text, &origin)?;
            if table.contains_key("name") {
                let s = SourceSchema::from_toml(&text, &origin)?;
                Ok(format!(
                    "valid source schema {:?} ({} columns, {} features)",
                    s.name,
                    s.columns.len(),
                    s.features.categorical.len()
                        + s.features.binary.len()
                        + s.features.numeric.len()
                ))
            } else {
                RunConfig::from_toml(&text, &origin)?;
                Ok("valid run configuration".to_string())
            }
        }
        _ => {
            let m = ControlMessage::parse_with(&text, &origin, strict)?;
            m.warn_ignored(&origin);
            let tasks: Vec<String> = m
                .inputs
                .iter()
                .map(|i| {
                    let what = match (i.trains(), i.infers()) {
                        (true, true) => "training+inference",
                        (true, false) => "training",
                        (false, true) => "inference",
                        (false, false) => "load only",
                    };
                    format!("{what} ({:?})", i.metadata.data_type).to_lowercase()
                })
                .collect();
            Ok(format!(
                "valid control message: {} input(s): {}",
                m.inputs.len(),
                tasks.join(", ")
            ))
        }
    }
}

fn validate(files: &[PathBuf], strict: bool) -> ExitCode {
    let mut ok = true;
    for f in files {
        match validate_one(f, strict) {
            Ok(summary) => println!("{}: {summary}", f.display()),
            Err(dfp_engine::Error::Invalid { origin, problems }) => {
                ok = false;
                for p in problems {
                    println!("{origin}: {p}");
                }
            }
            Err(e) => {
                ok = false;
                println!("{}: {}", f.display(), e.chain());
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn ingest(args: IngestArgs) -> Result<ExitCode> {
    let schema = Arc::new(SourceSchema::resolve(&args.source)?);
    let (files, unmatched) =
        expand_globs(args.files.iter().map(String::as_str), &FileScope::at(""))?;
    for pattern in unmatched {
        tracing::warn!(pattern = %pattern, "pattern matches no file");
    }
    if files.is_empty() {
        bail!("no input file matches {:?}", args.files);
    }
    let dead_letter = args.dead_letter.canonicalize().ok();
    if let Some(input) = files.iter().find(|f| {
        f.canonicalize()
            .ok()
            .is_some_and(|f| Some(f) == dead_letter)
    }) {
        bail!(
            "--dead-letter {} is one of the input files ({}): it would be emptied before it is read",
            args.dead_letter.display(),
            input.display()
        );
    }
    let reader = Reader::new(schema);
    let started = Instant::now();
    let reads = reader.read_files(&files, args.format, args.threads);
    let secs = started.elapsed().as_secs_f64();
    let mut dead = DeadLetterWriter::create(&args.dead_letter)?;
    let (mut rows, mut bytes, mut rejected, mut broken) = (0usize, 0u64, 0usize, 0usize);
    let mut users = std::collections::BTreeSet::new();
    for r in &reads {
        dead.write_read(r)?;
        rows += r.batch.num_rows();
        bytes += r.bytes;
        rejected += r.rejected.len();
        broken += usize::from(r.broken.is_some());
        if let Some(names) = r.batch.column(1).as_string_opt::<i32>() {
            users.extend(names.iter().flatten().map(str::to_string));
        }
    }
    dead.flush()?;
    println!(
        "{}",
        serde_json::json!({
            "source": reader.schema().name,
            "files": reads.len(),
            "broken_files": broken,
            "rows": rows,
            "users": users.len(),
            "rejected": rejected,
            "dead_letter": args.dead_letter.display().to_string(),
            "seconds": secs,
            "records_per_s": rows as f64 / secs.max(1e-9),
            "mb_per_s": bytes as f64 / 1e6 / secs.max(1e-9),
        })
    );
    Ok(ExitCode::SUCCESS)
}

fn plan(
    path: &Path,
    files_root: Option<&Path>,
    allow_roots: &[PathBuf],
    strict: bool,
) -> Result<ExitCode> {
    let msg = ControlMessage::from_file(path, strict)?;
    msg.warn_ignored(&path.display().to_string());
    let scope = FileScope::for_message(&msg, path, files_root, allow_roots);
    // The plan `dfp run` makes of the same message.
    let plan = Plan::build(&msg, &scope)?;
    println!("load globs resolve against {}", scope.base.display());
    for u in &plan.unmatched {
        tracing::warn!(pattern = %u, "pattern matches no file");
    }
    for (i, input) in msg.inputs.iter().enumerate() {
        let epochs: Vec<_> = plan.epochs.iter().filter(|e| e.input == i).collect();
        println!(
            "input {i}: train={} infer={} data_type={:?}: {} files, {} batches",
            input.trains(),
            input.infers(),
            input.metadata.data_type,
            epochs.iter().map(|e| e.files.len()).sum::<usize>(),
            epochs.len()
        );
        for e in &epochs {
            println!(
                "  batch {}/{} {} .. {}: {} files (n_groups {})",
                e.batch + 1,
                epochs.len(),
                e.period_start.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                e.period_end.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                e.files.len(),
                e.n_groups
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
