//! Helpers shared by the end-to-end tests: small generated data sets and fast run settings (the
//! Kafka broker they start is `dfp_bench::broker`).

#![allow(dead_code)] // each test file uses its own share of the helpers

use dfp_engine::model::Device;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{NaiveDate, TimeZone, Utc};
use dfp_engine::generate::{GenSource, GenerateConfig, generate};
use dfp_engine::schema::SourceSchema;
use dfp_operators::config::RunConfig;
use dfp_operators::pipeline::{Input, RunOptions, RunSummary, run};

/// Small, fast settings: tiny networks, few epochs, short history (`tests/fast.toml`, which the
/// command-line tests use too).
pub const CONFIG: &str = include_str!("../../fast.toml");

pub fn date(d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2022, 8, d).unwrap()
}

/// Generates `days` days of logs from 2022-08-01 into `dir`.
pub fn logs(source: GenSource, users: usize, days: u32, dir: &Path) -> PathBuf {
    let mut cfg = GenerateConfig::new(source, users, days, date(1), 7);
    cfg.files_per_day = 4;
    cfg.anomaly_days = 2;
    generate(&cfg, dir).unwrap();
    dir.to_path_buf()
}

/// 30 stable users' logs over 12 days into `root/logs` (no attacks); on the two scoring days
/// (a Thursday and a Friday) `rollout` moves users to a browser nobody used before. Returns
/// the control message (written to `root/control.json`) that trains on the first ten days and
/// scores the last two.
pub fn rollout_logs(root: &Path, rollout: Option<dfp_engine::generate::Rollout>) -> Input {
    let mut cfg = GenerateConfig::new(GenSource::Azure, 30, 12, date(1), 7);
    cfg.files_per_day = 4;
    cfg.anomaly_days = 0;
    cfg.novelty = dfp_engine::generate::Novelty::none();
    cfg.rollout = rollout;
    generate(&cfg, &root.join("logs")).unwrap();
    let path = root.join("control.json");
    let text = dfp_operators::demo::control_message("logs/*.json", date(1), date(11), date(13));
    std::fs::write(&path, text).unwrap();
    control(&path)
}

/// Run options with the fast settings, a fixed clock, outputs and registry under `root`.
pub fn options(source: &str, input: Input, root: &Path, workers: usize) -> RunOptions {
    RunOptions {
        schema: SourceSchema::builtin(source).unwrap(),
        input,
        config: RunConfig::from_toml(CONFIG, "test config").unwrap(),
        workers,
        threads: 2,
        device: Device::Cpu,
        registry: root.join("models"),
        output: root.join("output"),
        mlflow: None,
        metrics: None,
        write_scores: true,
        clock: Arc::new(|| Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap()),
        progress: false,
        cluster: None,
        stop: Default::default(),
    }
}

/// A control-message input.
pub fn control(path: &Path) -> Input {
    Input::control(path)
}

/// The control message over `root/logs` (written to `root/{name}.json`) that trains on days 1
/// to `split` and scores up to day 9, as an input.
pub fn split_control(root: &Path, name: &str, split: u32) -> Input {
    let path = root.join(format!("{name}.json"));
    let text = dfp_operators::demo::control_message("logs/*.json", date(1), date(split), date(9));
    std::fs::write(&path, text).unwrap();
    control(&path)
}

/// A day in µs: a stream's epoch.
pub const DAY_US: i64 = 86_400_000_000;

/// Morpheus' streaming pipeline over the files: one epoch a day, each trains and scores.
pub const STREAMING: &str = r#"{"inputs": [{
  "metadata": {"data_type": "streaming",
               "batching_options": {"period": "D", "start_time": "2022-08-01", "end_time": "2022-08-09"}},
  "tasks": [{"type": "load", "properties": {"loader_id": "fsspec", "files": ["logs/*.json"]}},
            {"type": "training", "properties": {}},
            {"type": "inference", "properties": {}}]}]}"#;

/// The batch run of `root/logs` with Morpheus' streaming control message, into `root/batch`.
pub fn batch_run(root: &Path) -> RunSummary {
    let control_file = root.join("control.json");
    std::fs::write(&control_file, STREAMING).unwrap();
    run(options(
        "azure",
        control(&control_file),
        &root.join("batch"),
        2,
    ))
    .unwrap()
}

/// The lines of an output file, header first, the rest sorted.
pub fn lines(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if let Some((_, rest)) = lines.split_first_mut() {
        rest.sort();
    }
    lines
}
