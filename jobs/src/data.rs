//! The commands that make or move data: `dfp demo` (generate, train, score, evaluate),
//! `dfp generate` (labelled logs) and `dfp replay` (log files as a stream).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use dfp_engine::control::{FileScope, expand_globs};
use dfp_engine::generate::{GenSource, GenerateConfig, Novelty, Rollout};
use dfp_engine::ingest::Reader;
use dfp_engine::schema::SourceSchema;
use dfp_operators::demo::DemoOptions;
use dfp_operators::kafka::{KafkaSettings, parse_kafka_url};
use dfp_operators::replay::Speed;
use dfp_operators::sink::kafka::KafkaSink;

use crate::run::{exit_code, kafka_options, run_config, wall_clock};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
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
    /// Users with stable habits only (no travel, upgrades, new apps, shifts, VPN, sparse or
    /// bursty users, service accounts).
    #[arg(long)]
    no_novelty: bool,
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
pub struct GenerateArgs {
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
    /// No benign novelty: users keep stable habits (the rate flags below still apply).
    #[arg(long)]
    no_novelty: bool,
    /// Business trips per user per month (default 0.25).
    #[arg(long)]
    travel_rate: Option<f64>,
    /// Device updates or replacements per user per month (default 0.2).
    #[arg(long)]
    upgrade_rate: Option<f64>,
    /// New apps a team adopts, per team per month (default 0.5).
    #[arg(long)]
    team_app_rate: Option<f64>,
    /// Working-hours shift changes per user per month (default 0.05).
    #[arg(long)]
    shift_rate: Option<f64>,
    /// Share of users who sometimes work weekends (default 0.1).
    #[arg(long)]
    weekend_worker_fraction: Option<f64>,
    /// Periods behind the corporate VPN per user per month (default 0.15).
    #[arg(long)]
    vpn_rate: Option<f64>,
    /// Company egress address changes per month (default 0.3).
    #[arg(long)]
    egress_change_rate: Option<f64>,
    /// Share of users with a handful of sign-ins a week (default 0.05).
    #[arg(long)]
    sparse_user_fraction: Option<f64>,
    /// Burst days per user per month (default 0.3).
    #[arg(long)]
    burst_rate: Option<f64>,
    /// Share of accounts that are service accounts (default 0.02).
    #[arg(long)]
    service_account_fraction: Option<f64>,
    /// A browser rollout on day N (0-based): from then on a share of users (--rollout-share)
    /// use a browser nobody used before (Brave) on every device, nothing else changed (a
    /// deliberate drift of one feature).
    #[arg(long, value_name = "DAY")]
    browser_rollout: Option<u32>,
    /// Share of users moved to the new browser.
    #[arg(long, default_value_t = 0.8, requires = "browser_rollout")]
    rollout_share: f64,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
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

/// `dfp demo`.
pub fn demo(args: DemoArgs) -> Result<ExitCode> {
    let config = run_config(args.config.as_deref())?;
    let source: GenSource = args.source.parse().map_err(anyhow::Error::msg)?;
    eprintln!(
        "dfp demo: {} logs, {} users x {} days; training on the first {} days, scoring the rest",
        args.source, args.users, args.days, args.train_days
    );
    let rule = dfp_operators::filter_detections::Rule::of(&config.detection);
    let report = dfp_operators::demo::demo(&DemoOptions {
        source,
        users: args.users,
        days: args.days,
        train_days: args.train_days,
        seed: args.seed,
        novelty: if args.no_novelty {
            Novelty::none()
        } else {
            Novelty::default()
        },
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
    let output = args.dir.join("output");
    let page = crate::report::write(&output, &args.source, None, rule, 2000)?;
    println!(
        "  report           {}  (open it in a browser)",
        page.display()
    );
    println!();
    println!(
        "everything the demo wrote is under {}/ (replaced by the next demo; remove it with: rm -rf {})",
        args.dir.display(),
        args.dir.display()
    );
    Ok(exit_code(&report.run.stats))
}

/// `dfp generate`.
pub fn generate(args: GenerateArgs) -> Result<ExitCode> {
    let source: GenSource = args.source.parse().map_err(anyhow::Error::msg)?;
    let start = chrono::NaiveDate::parse_from_str(&args.start, "%Y-%m-%d")
        .with_context(|| format!("--start {:?} is not a date like 2022-08-01", args.start))?;
    let mut cfg = GenerateConfig::new(source, args.users, args.days, start, args.seed);
    cfg.files_per_day = args.files_per_day;
    if let Some(n) = args.anomaly_days {
        cfg.anomaly_days = n;
    }
    if args.no_novelty {
        cfg.novelty = Novelty::none();
    }
    let n = &mut cfg.novelty;
    for (flag, field) in [
        (args.travel_rate, &mut n.travel_rate),
        (args.upgrade_rate, &mut n.upgrade_rate),
        (args.team_app_rate, &mut n.team_app_rate),
        (args.shift_rate, &mut n.shift_rate),
        (args.weekend_worker_fraction, &mut n.weekend_worker_fraction),
        (args.vpn_rate, &mut n.vpn_rate),
        (args.egress_change_rate, &mut n.egress_change_rate),
        (args.sparse_user_fraction, &mut n.sparse_user_fraction),
        (args.burst_rate, &mut n.burst_rate),
        (
            args.service_account_fraction,
            &mut n.service_account_fraction,
        ),
    ] {
        if let Some(v) = flag {
            *field = v;
        }
    }
    cfg.rollout = args.browser_rollout.map(|day| Rollout {
        day,
        share: args.rollout_share,
    });
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

/// `dfp replay`.
pub fn replay(args: ReplayArgs) -> Result<ExitCode> {
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
        let sink = KafkaSink::new(
            &KafkaSettings {
                brokers,
                options: kafka_options(&args.kafka_options)?,
            },
            &topic,
        )?;
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
