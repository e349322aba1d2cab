//! Detection quality across seeds: `dfp demo`'s workload (generated logs with labelled
//! anomalies, trained on the first days, scored on the rest) for each source and seed, with
//! the built-in schemas and a run config (default configs/dfp.toml), scored against the labels:
//! ROC-AUC of `mean_abs_z`, recall of anomalous events in the detections, the share of normal
//! events flagged, precision, and recall per anomaly kind. Issue 4's targets (ROC-AUC >= 0.95;
//! recall >= 0.8 with under 2% of normal events flagged) are checked per run.
//!
//!   cargo run --release -p dfp-bench --bin quality -- [--users 100] [--days 30]
//!       [--train-days 25] [--seeds 42,7,13,99] [--sources azure,duo] [--config FILE]
//!
//! Not part of the test run. Output: stdout and target/bench/quality.json.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use dfp_bench::{arg, write_report};
use dfp_engine::generate::GenSource;
use dfp_operators::config::RunConfig;
use dfp_operators::demo::{DemoOptions, demo};
use serde_json::{Value, json};

fn main() -> Result<()> {
    let users: usize = arg("--users", 100)?;
    let days: u32 = arg("--days", 30)?;
    let train_days: u32 = arg("--train-days", 25)?;
    let seeds: String = arg("--seeds", "42,7,13,99".to_string())?;
    let sources: String = arg("--sources", "azure,duo".to_string())?;
    let config_path: PathBuf = arg(
        "--config",
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs/dfp.toml"),
    )?;
    let config = RunConfig::from_file(&config_path)?;
    let mut runs = Vec::new();
    for source in sources.split(',') {
        let source: GenSource = source.trim().parse().map_err(anyhow::Error::msg)?;
        for seed in seeds.split(',') {
            let seed: u64 = seed.trim().parse()?;
            let dir = tempfile::tempdir()?;
            let report = demo(&DemoOptions {
                source,
                users,
                days,
                train_days,
                seed,
                dir: dir.path().to_path_buf(),
                config: config.clone(),
                workers: 1,
                clock: Arc::new(chrono::Utc::now),
                progress: false,
            })?;
            let e = &report.evaluation;
            let auc = e.roc_auc.unwrap_or(f64::NAN);
            let fp = e.false_positive_rate.unwrap_or(f64::NAN);
            let recall = e.total.recall();
            let run = json!({
                "source": source.as_str(),
                "seed": seed,
                "roc_auc_mean_abs_z": auc,
                "recall": recall,
                "false_positive_rate": fp,
                "precision": e.precision,
                "detections": e.detections,
                "recall_by_kind": e.kinds.iter()
                    .map(|k| (k.kind.clone(), json!(k.recall())))
                    .collect::<serde_json::Map<String, Value>>(),
                "meets_targets": auc >= 0.95 && recall >= 0.8 && fp < 0.02,
            });
            println!("{run}");
            runs.push(run);
        }
    }
    let report = json!({
        "workload": format!(
            "dfp demo: {users} users x {days} days, train {train_days} days, score the rest"
        ),
        "config": config_path.display().to_string(),
        "threshold": config.detection.threshold,
        "targets": "ROC-AUC of mean_abs_z >= 0.95; recall >= 0.8 with < 2% of normal events flagged",
        "all_meet_targets": runs.iter().all(|r| r["meets_targets"] == json!(true)),
        "runs": runs,
    });
    write_report("quality", &report)
}
