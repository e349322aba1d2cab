//! `dfp`: digital fingerprinting, per-user behavioural anomaly detection on authentication and
//! cloud logs. This binary only parses the command line and wires the engine and operators
//! together; the logic lives in `dfp-engine` and `dfp-operators`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

mod cluster;
mod data;
mod feedback;
mod inspect;
mod report;
mod run;
mod serve;

use data::{DemoArgs, GenerateArgs, ReplayArgs};
use inspect::{IngestArgs, ModelsCommand};
use run::RunArgs;

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
        #[command(flatten)]
        scope: run::ScopeArgs,
    },
    /// Run across hosts: start every process of a cluster run.
    Cluster {
        #[command(subcommand)]
        action: ClusterCommand,
    },
    /// Record an analyst's verdict on a detection (by its detection_id), or report the
    /// precision of the verdicts so far.
    Feedback(feedback::FeedbackArgs),
    /// Write one self-contained HTML page of a run's outputs: summary, alert timeline, score
    /// distributions, leading features, alerts and detections, drift, precision, parity.
    Report(report::ReportArgs),
    /// Score log records online: answer requests on NATS (dfp.score.{source}) with each
    /// record's scores, users' state in NATS' key-value store, detections published as events.
    Serve(Box<serve::ServeArgs>),
    /// The model registry: list and show versions, promote and roll back champions, push to
    /// MLflow.
    Models {
        #[command(flatten)]
        registry: run::RegistryArgs,
        #[command(subcommand)]
        action: ModelsCommand,
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
        Command::Demo(args) => data::demo(args),
        Command::Run(args) => run::run_pipeline(*args),
        Command::Replay(args) => data::replay(args),
        Command::Generate(args) => data::generate(args),
        Command::Validate { files, strict } => Ok(inspect::validate(&files, strict)),
        Command::Ingest(args) => inspect::ingest(args),
        Command::Plan {
            control_messages,
            scope,
        } => inspect::plan(&control_messages, &scope),
        Command::Feedback(args) => feedback::feedback(args),
        Command::Report(args) => report::report(args),
        Command::Serve(args) => serve::serve(*args),
        Command::Models { registry, action } => inspect::models(&registry, action),
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
