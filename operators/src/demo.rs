//! `dfp demo`: the whole product on one command. Generates a labelled data set, writes a
//! control message that trains on the first days (one payload batch, Morpheus' "training"
//! pattern) and scores the rest day by day (streaming, through the inference window), runs the
//! pipeline, and compares the detections with the injected anomalies. State: the demo's own
//! directory (logs, control message, registry and outputs are replaced on each run).

use dfp_engine::model::Device;
use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::{Days, NaiveDate};
use dfp_engine::generate::{GenSource, GenerateConfig, Novelty, generate};
use dfp_engine::schema::SourceSchema;
use dfp_engine::{Error, Result};
use serde::Serialize;

use crate::config::RunConfig;
use crate::evaluate::{Evaluation, evaluate};
use crate::pipeline::{Input, RunOptions, RunSummary, run};
use crate::post_proc::Clock;
use crate::serialize::OutKind;
use crate::sink::files::output_path;

/// What the demo does.
#[derive(Clone)]
pub struct DemoOptions {
    /// Which logs.
    pub source: GenSource,
    /// Users.
    pub users: usize,
    /// Days of logs.
    pub days: u32,
    /// Days to train on; the rest are scored.
    pub train_days: u32,
    /// Generator seed.
    pub seed: u64,
    /// The generator's benign novelty (on by default: [`Novelty::default`]).
    pub novelty: Novelty,
    /// The demo's directory.
    pub dir: PathBuf,
    /// Stage settings.
    pub config: RunConfig,
    /// Timely workers.
    pub workers: usize,
    /// Stamps detections.
    pub clock: Clock,
    /// Progress on stderr.
    pub progress: bool,
}

/// What the demo found.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    /// Records generated.
    pub records: u64,
    /// Seconds generating.
    pub generate_seconds: f64,
    /// The run.
    pub run: RunSummary,
    /// Detections against the labels.
    pub evaluation: Evaluation,
    /// The control message written.
    pub control: PathBuf,
    /// The registry.
    pub registry: PathBuf,
}

/// The control message: train on `[start, split)` as one payload batch, score `[split, end)`
/// day by day through the streaming inference window.
pub fn control_message(glob: &str, start: NaiveDate, split: NaiveDate, end: NaiveDate) -> String {
    let input = |task: &str, data_type: &str, period: &str, from: NaiveDate, to: NaiveDate| {
        serde_json::json!({
            "tasks": [
                {"type": "load", "properties": {"loader_id": "fsspec", "files": [glob]}},
                {"type": task, "properties": {}}
            ],
            "metadata": {
                "data_type": data_type,
                "batching_options": {
                    "period": period,
                    "start_time": from.format("%Y-%m-%d").to_string(),
                    "end_time": to.format("%Y-%m-%d").to_string()
                }
            }
        })
    };
    serde_json::to_string_pretty(&serde_json::json!({"inputs": [
        input("training", "payload", "Y", start, split),
        input("inference", "streaming", "D", split, end),
    ]}))
    .unwrap_or_default()
}

fn fresh(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, "clearing", e))?;
    }
    Ok(())
}

/// Runs the demo.
pub fn demo(opts: &DemoOptions) -> Result<DemoReport> {
    let start = NaiveDate::from_ymd_opt(2022, 8, 1).unwrap_or_default();
    let day = |n: u32| {
        start
            .checked_add_days(Days::new(u64::from(n)))
            .unwrap_or(start)
    };
    let logs = opts.dir.join("logs");
    let registry = opts.dir.join("models");
    let output = opts.dir.join("output");
    for d in [&logs, &registry, &output] {
        fresh(d)?;
    }
    let mut gen_cfg = GenerateConfig::new(opts.source, opts.users, opts.days, start, opts.seed);
    gen_cfg.anomaly_days = opts.days.saturating_sub(opts.train_days).max(1);
    gen_cfg.novelty = opts.novelty.clone();
    let t = Instant::now();
    let generated = generate(&gen_cfg, &logs)?;
    let generate_seconds = t.elapsed().as_secs_f64();
    let control = opts.dir.join("control.json");
    let text = control_message("logs/*.json", start, day(opts.train_days), day(opts.days));
    std::fs::write(&control, text).map_err(|e| Error::io(&control, "writing", e))?;
    let schema = SourceSchema::builtin(opts.source.as_str())?;
    let summary = run(RunOptions {
        schema: schema.clone(),
        input: Input::control(control.clone()),
        config: opts.config.clone(),
        workers: opts.workers,
        threads: 0,
        device: Device::Cpu,
        registry: registry.clone(),
        output: output.clone(),
        mlflow: None,
        metrics: None,
        write_scores: true,
        clock: opts.clock.clone(),
        progress: opts.progress,
        cluster: None,
        stop: Default::default(),
    })?;
    let evaluation = evaluate(
        &generated.labels,
        &output_path(&output, &schema.name, OutKind::DetectionsCsv),
        Some(&output_path(&output, &schema.name, OutKind::ScoresCsv)),
        opts.config
            .alerts
            .enabled
            .then(|| output_path(&output, &schema.name, OutKind::Alerts))
            .as_deref(),
    )?;
    Ok(DemoReport {
        records: generated.records,
        generate_seconds,
        run: summary,
        evaluation,
        control,
        registry,
    })
}
