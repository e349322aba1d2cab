//! End to end: a Morpheus-sized month of Azure AD logs (30 days x 8 files/day, 200 users),
//! trained on the first 25 days (one payload batch) and scored day by day on the last 5 (the
//! streaming inference window), through the whole dataflow (`dfp_operators::pipeline::run`), on
//! 1 and 2 workers. Each configuration runs in a child process of this program so its peak
//! memory (VmHWM) is its own. Reports events/s, wall time and where it went (reading, training,
//! scoring), peak RSS, models, detections, and quality against the labels. With
//! `--metrics-reps N`, each worker count also runs N times without and N times with `/metrics`
//! served (`--metrics-addr`, alternating), and the report gives the median wall times and their
//! ratio: what serving the metrics costs.
//!
//!   cargo run --release -p dfp-bench --bin e2e -- [--users 200] [--days 30] [--train-days 25]
//!       [--source azure|duo] [--config configs/dfp.toml] [--workers 1,2] [--metrics-reps 0]
//!
//! Not part of the test run. Output: stdout and target/bench/e2e-<source>.json.

use dfp_engine::model::Device;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use chrono::{Days, NaiveDate};
use dfp_bench::{arg, bench_dir, peak_rss_mib, write_report};
use dfp_engine::generate::{GenSource, GenerateConfig, generate};
use dfp_engine::schema::SourceSchema;
use dfp_operators::config::RunConfig;
use dfp_operators::demo::control_message;
use dfp_operators::evaluate::evaluate;
use dfp_operators::pipeline::{Input, RunOptions, run};
use dfp_operators::serialize::OutKind;
use dfp_operators::sink::files::output_path;
use serde_json::{Value, json};

/// One run, in this (child) process.
fn child(
    data: &Path,
    source: &str,
    workers: usize,
    config: &Path,
    train_days: u64,
) -> Result<Value> {
    let work = tempfile::tempdir()?;
    let start = NaiveDate::from_ymd_opt(2022, 8, 1).context("date")?;
    let days: u64 = std::fs::read_to_string(data.join("days"))?.trim().parse()?;
    let day = |n: u64| start.checked_add_days(Days::new(n)).unwrap_or(start);
    let control = work.path().join("control.json");
    let glob = format!("{}/*.json", data.display());
    std::fs::write(
        &control,
        control_message(&glob, start, day(train_days), day(days)),
    )?;
    let schema = SourceSchema::builtin(source)?;
    let output = work.path().join("output");
    let t = Instant::now();
    let summary = run(RunOptions {
        schema: schema.clone(),
        input: Input::control(control),
        config: RunConfig::from_file(config)?,
        workers,
        threads: 0,
        device: Device::Cpu,
        registry: work.path().join("models"),
        output: output.clone(),
        mlflow: None,
        metrics: std::env::var_os("DFP_E2E_METRICS")
            .map(|_| dfp_operators::pipeline::MetricsOptions::new("127.0.0.1:0")),
        write_scores: true,
        clock: Arc::new(chrono::Utc::now),
        progress: false,
        cluster: None,
        stop: Default::default(),
    })?;
    let wall = t.elapsed().as_secs_f64();
    let q = evaluate(
        &data.join("labels.jsonl"),
        &output_path(&output, source, OutKind::DetectionsCsv),
        Some(&output_path(&output, source, OutKind::ScoresCsv)),
        None,
    )?;
    let s = &summary.stats;
    Ok(json!({
        "workers": workers,
        "metrics_served": std::env::var_os("DFP_E2E_METRICS").is_some(),
        "events": s.rows,
        "wall_seconds": wall,
        "events_per_s": s.rows as f64 / wall,
        "train_seconds_summed_over_workers": s.train_seconds,
        "score_seconds_summed_over_workers": s.score_seconds,
        "models_trained": s.models_trained,
        "rows_scored": s.scored,
        "detections": s.detections,
        "dead_letters": s.dead_letters,
        "peak_rss_mib": peak_rss_mib(),
        "quality": {
            "roc_auc_mean_abs_z": q.roc_auc,
            "recall": q.total.recall(),
            "false_positive_rate": q.false_positive_rate,
            "precision": q.precision,
        },
    }))
}

fn main() -> Result<()> {
    let source: String = arg("--source", "azure".to_string())?;
    let config: PathBuf = arg(
        "--config",
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs/dfp.toml"),
    )?;
    let train_days: u64 = arg("--train-days", 25)?;
    if let Ok(data) = std::env::var("DFP_E2E_CHILD") {
        let workers: usize = arg("--workers", 1)?;
        let r = child(Path::new(&data), &source, workers, &config, train_days)?;
        println!("{r}");
        return Ok(());
    }
    let users: usize = arg("--users", 200)?;
    let days: u32 = arg("--days", 30)?;
    let workers: String = arg("--workers", "1,2".to_string())?;
    let gen_source: GenSource = source.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let data = bench_dir().join(format!("e2e-data-{source}-{users}x{days}"));
    let mut cfg = GenerateConfig::new(
        gen_source,
        users,
        days,
        NaiveDate::from_ymd_opt(2022, 8, 1).context("date")?,
        42,
    );
    cfg.files_per_day = 8;
    cfg.anomaly_days = days.saturating_sub(train_days as u32).max(1);
    let _ = std::fs::remove_dir_all(&data);
    let g = generate(&cfg, &data)?;
    std::fs::write(data.join("days"), days.to_string())?;
    let reps: usize = arg("--metrics-reps", 0)?;
    let one = |w: &str, metrics: bool| -> Result<Value> {
        let mut cmd = Command::new(std::env::current_exe()?);
        if metrics {
            cmd.env("DFP_E2E_METRICS", "1");
        }
        let out = cmd
            .env("DFP_E2E_CHILD", &data)
            .args([
                "--source",
                &source,
                "--workers",
                w.trim(),
                "--train-days",
                &train_days.to_string(),
            ])
            .arg("--config")
            .arg(&config)
            .output()?;
        if !out.status.success() {
            bail!(
                "{} workers failed: {}",
                w,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let line = String::from_utf8_lossy(&out.stdout);
        Ok(serde_json::from_str::<Value>(line.trim())?)
    };
    let mut runs = Vec::new();
    let mut metrics_cost = Vec::new();
    for w in workers.split(',') {
        runs.push(one(w, false)?);
        if reps == 0 {
            continue;
        }
        let (mut without, mut with) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            without.push(one(w, false)?["wall_seconds"].as_f64().unwrap_or(f64::NAN));
            with.push(one(w, true)?["wall_seconds"].as_f64().unwrap_or(f64::NAN));
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (a, b) = (median(&mut without), median(&mut with));
        metrics_cost.push(json!({
            "workers": w.trim(),
            "reps": reps,
            "wall_seconds_without": without,
            "wall_seconds_with_metrics": with,
            "median_without": a,
            "median_with_metrics": b,
            "ratio": b / a,
        }));
    }
    let report = json!({
        "workload": format!("{source}: {users} users x {days} days x 8 files/day, train {train_days} days then score {} days", u64::from(days) - train_days),
        "records": g.records,
        "files": g.files.len(),
        "config": dfp_bench::repo_path(&config),
        "runs": runs,
        "metrics_cost": metrics_cost,
        "reference": "Morpheus' published wall times on its example set, Quadro RTX 8000 (their hardware): Azure training 8-28 s, inference 1.5 s",
    });
    write_report(&format!("e2e-{source}"), &report)
}
