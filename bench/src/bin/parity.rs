//! Parity with the reference: dfp's autoencoder and `dfencoder` 0.0.42 (the library Morpheus
//! forked, run by bench/peers/dfencoder_peer.py with Morpheus' DFP hyperparameters) on the same
//! generated logs. Both train one model per user with at least 300 training rows plus a
//! `generic_user` model on every training row, on the first `--train-days` UTC days, and score
//! the remaining rows (a user without a model falls back to `generic_user`). Prints, for both,
//! the ROC-AUC of `mean_abs_z` against labels.jsonl (overall and per anomaly kind), training
//! time, scoring rows/s, and the ratios; and, at a `mean_abs_z` threshold, the recall of labelled
//! rows (overall and per kind), the false-positive rate of unlabelled rows, and the smallest
//! threshold that flags fewer than 2% of unlabelled rows with the recall there.
//!
//!   cargo run --release -p dfp-bench --bin parity -- [--source azure|duo] [--users 20]
//!       [--days 30] [--train-days 25] [--epochs 30] [--seed 42] [--threads 2] [--skip-peer]
//!       [--config FILE] [--threshold 2.0] [--dump-scores FILE]
//!
//! `--dump-scores FILE`: dfp's scored rows as JSON lines (event id, model, `mean_abs_z`, and
//! each feature's |z|), to see which features drive the scores.
//!
//! `--config FILE`: a TOML file whose `[model]` table sets dfp's hyperparameters (keys of
//! `ModelConfig`, unknown ones rejected); keys it leaves out keep Morpheus' defaults, except
//! `epochs` and `seed`, which then come from `--epochs` and `--seed`. The peer trains for the
//! same number of epochs.
//!
//! The peer's venv is created on first use by bench/peers/setup_dfencoder.sh under target/.
//! Not part of the test run. Output: stdout and target/bench/parity-<source>.json.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use arrow::array::AsArray;
use arrow::datatypes::TimestampMicrosecondType;
use dfp_bench::{arg, bench_dir, roc_auc, write_report};
use dfp_engine::batch::string_column;
use dfp_engine::generate::{GenSource, GenerateConfig, generate};
use dfp_engine::model::{
    CpuBackend, Familiar, Model, ModelConfig, Request, TrainingSet, score, train_models,
};
use dfp_engine::schema::SourceSchema;
use serde_json::{Value, json};

const MIN_HISTORY: usize = 300;
const GENERIC: &str = "generic_user";
const DAY_US: i64 = 86_400_000_000;
/// Largest false-positive rate for which `quality` reports the threshold reaching it.
const FP_TARGET: f64 = 0.02;

fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

/// The built-in schema with Morpheus' feature lists (`columns_ae_{source}.txt`, the schema's
/// `[morpheus.features]`), as the peer uses them: the comparison is of the two
/// implementations, not of dfp's added features.
fn morpheus_schema(source: &str) -> Result<SourceSchema> {
    Ok(SourceSchema::builtin(source)?.with_morpheus_features()?)
}

fn run_dfp(
    data: &Path,
    source: &str,
    train_days: i64,
    config: &ModelConfig,
    threads: usize,
    dump: Option<&Path>,
) -> Result<Value> {
    let schema = morpheus_schema(source)?;
    let t = Instant::now();
    let all = dfp_engine::frame::read_log_dir(data, &schema, threads)?;
    let load_s = t.elapsed().as_secs_f64();
    let ts = all
        .column_by_name("timestamp")
        .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>())
        .context("timestamp column")?;
    let first = (0..ts.len())
        .map(|i| ts.value(i))
        .min()
        .context("no rows")?;
    let cutoff = first.div_euclid(DAY_US) * DAY_US + train_days * DAY_US;
    let (train_idx, score_idx): (Vec<usize>, Vec<usize>) =
        (0..all.num_rows()).partition(|&i| ts.value(i) < cutoff);
    let train = dfp_engine::batch::take(&all, &train_idx)?;
    let scored = dfp_engine::batch::take(&all, &score_idx)?;
    let users = dfp_engine::batch::split_by_user(&train)?;
    let mut sets: Vec<TrainingSet<'_>> = users
        .iter()
        .filter(|(_, rows)| rows.num_rows() >= MIN_HISTORY)
        .map(|(name, rows)| TrainingSet { name, rows })
        .collect();
    let users_trained = sets.len();
    sets.push(TrainingSet {
        name: GENERIC,
        rows: &train,
    });
    let backend = CpuBackend::new(threads)?;
    let t = Instant::now();
    let models: BTreeMap<String, Model> = train_models(&backend, &schema, config, &sets)
        .into_iter()
        .map(|m| m.map(|m| (m.header.name.clone(), m)))
        .collect::<dfp_engine::Result<_>>()?;
    let train_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let to_score = dfp_engine::batch::split_by_user(&scored)?;
    let requests: Vec<Request<'_>> = to_score
        .iter()
        .map(|(user, rows)| (models.get(user).or_else(|| models.get(GENERIC)), rows))
        .filter_map(|(m, rows)| m.map(|m| (m, rows, Familiar::default())))
        .collect();
    let scores = score(&backend, &requests, config.eval_batch_size);
    let score_s = t.elapsed().as_secs_f64();
    let mut by_event: Vec<(String, f64)> = Vec::new();
    let mut dumped = String::new();
    for ((model, rows, _), s) in requests.iter().zip(scores) {
        let s = s?;
        let ids = string_column(rows, "event_id")?;
        if dump.is_some() {
            let f = s.features.len();
            for (r, id) in ids.iter().enumerate() {
                let z: serde_json::Map<String, Value> = s
                    .features
                    .iter()
                    .zip(&s.z_loss[r * f..(r + 1) * f])
                    .map(|(n, &z)| (n.clone(), json!(z)))
                    .collect();
                dumped.push_str(&format!(
                    "{}\n",
                    json!({"event_id": id, "model": model.header.name,
                           "mean_abs_z": s.mean_abs_z[r], "z": z})
                ));
            }
        }
        by_event.extend(
            ids.iter()
                .zip(&s.mean_abs_z)
                .map(|(id, &z)| (id.unwrap_or("").to_string(), f64::from(z))),
        );
    }
    if let Some(path) = dump {
        std::fs::write(path, dumped).with_context(|| format!("writing {}", path.display()))?;
    }
    let epochs: Vec<usize> = models
        .values()
        .map(|m| m.header.metrics.epochs_run)
        .collect();
    Ok(json!({
        "rows_train": train.num_rows(),
        "rows_scored": by_event.len(),
        "users_trained": users_trained,
        "load_seconds": load_s,
        "train_seconds_total": train_s,
        "train_seconds_per_model": train_s / models.len() as f64,
        "epochs_run_mean": epochs.iter().sum::<usize>() as f64 / epochs.len().max(1) as f64,
        "score_seconds": score_s,
        "score_rows_per_s": by_event.len() as f64 / score_s,
        "scores": by_event.into_iter().map(|(id, z)| json!({"event_id": id, "mean_abs_z": z})).collect::<Vec<_>>(),
    }))
}

/// dfp's model config: Morpheus' defaults with `epochs` and `seed`, overridden by the `[model]`
/// table of `file` when given.
fn model_config(file: Option<&Path>, epochs: usize, seed: u64) -> Result<ModelConfig> {
    let Some(file) = file else {
        return Ok(ModelConfig {
            epochs,
            seed,
            ..ModelConfig::default()
        });
    };
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let mut doc: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", file.display()))?;
    let table = match doc.remove("model") {
        Some(toml::Value::Table(t)) => t,
        Some(_) => bail!("{}: [model] must be a table", file.display()),
        None => bail!("{}: no [model] table", file.display()),
    };
    if let Some(key) = doc.keys().next() {
        bail!("{}: unknown key {key:?} (only [model])", file.display());
    }
    let (has_epochs, has_seed) = (table.contains_key("epochs"), table.contains_key("seed"));
    let mut config: ModelConfig = table
        .try_into()
        .with_context(|| format!("{}: [model]", file.display()))?;
    if !has_epochs {
        config.epochs = epochs;
    }
    if !has_seed {
        config.seed = seed;
    }
    config.validate(&file.display().to_string())?;
    Ok(config)
}

/// Fraction of `z` above `threshold` (None when empty).
fn share_above(z: &[f64], threshold: f64) -> Option<f64> {
    (!z.is_empty()).then(|| z.iter().filter(|&&v| v > threshold).count() as f64 / z.len() as f64)
}

/// ROC-AUC of a scores list (`[{event_id, mean_abs_z}]`) against the labels, overall and per
/// kind; recall of labelled rows (overall and per kind) and false-positive rate of unlabelled
/// rows above `threshold`; the smallest threshold flagging at most `FP_TARGET` of unlabelled
/// rows, and the recall there.
fn quality(scores: &[Value], kinds: &HashMap<String, String>, threshold: f64) -> Value {
    let rows: Vec<(f64, Option<&String>)> = scores
        .iter()
        .filter_map(|s| {
            let z = s["mean_abs_z"].as_f64()?;
            Some((z, kinds.get(s["event_id"].as_str()?)))
        })
        .collect();
    let auc = |keep: &dyn Fn(Option<&String>) -> bool| {
        let (z, l): (Vec<f64>, Vec<bool>) = rows
            .iter()
            .filter(|(_, k)| keep(*k))
            .map(|(z, k)| (*z, k.is_some()))
            .unzip();
        roc_auc(&z, &l)
    };
    let z_of = |keep: &dyn Fn(Option<&String>) -> bool| -> Vec<f64> {
        rows.iter()
            .filter(|(_, k)| keep(*k))
            .map(|(z, _)| *z)
            .collect()
    };
    let normal = z_of(&|k| k.is_none());
    let anomalous = z_of(&|k| k.is_some());
    let mut by_kind = BTreeMap::new();
    let mut recall_by_kind = BTreeMap::new();
    let mut scored_by_kind = BTreeMap::new();
    for kind in kinds.values().collect::<std::collections::BTreeSet<_>>() {
        by_kind.insert(kind.clone(), auc(&|k| k.is_none_or(|k| k == kind)));
        let z = z_of(&|k| k == Some(kind));
        recall_by_kind.insert(kind.clone(), share_above(&z, threshold));
        scored_by_kind.insert(kind.clone(), z.len());
    }
    // The smallest threshold (a score of a normal row) above which at most FP_TARGET of the
    // normal rows lie.
    let mut sorted = normal.clone();
    sorted.sort_by(f64::total_cmp);
    let allowed = (FP_TARGET * sorted.len() as f64).floor() as usize;
    let threshold_at_fp = sorted
        .len()
        .checked_sub(allowed + 1)
        .and_then(|i| sorted.get(i))
        .copied();
    json!({
        "roc_auc_mean_abs_z": auc(&|_| true),
        "roc_auc_by_kind": by_kind,
        "anomalies_scored": anomalous.len(),
        "anomalies_scored_by_kind": scored_by_kind,
        "normal_scored": normal.len(),
        "threshold": threshold,
        "detections_above_threshold": rows.iter().filter(|(z, _)| *z > threshold).count(),
        "recall_above_threshold": share_above(&anomalous, threshold),
        "recall_above_threshold_by_kind": recall_by_kind,
        "fp_rate_above_threshold": share_above(&normal, threshold),
        "fp_target": FP_TARGET,
        "threshold_at_fp_target": threshold_at_fp,
        "recall_at_fp_target": threshold_at_fp.and_then(|t| share_above(&anomalous, t)),
    })
}

fn run_peer(
    data: &Path,
    source: &str,
    train_days: i64,
    epochs: usize,
    seed: u64,
    threads: usize,
) -> Result<Value> {
    let root = dfp_bench::repo_root();
    let python = dfp_bench::python_peer("dfencoder")?;
    let out = bench_dir().join(format!("parity-peer-{source}.json"));
    let status = Command::new(python)
        .arg(root.join("bench/peers/dfencoder_peer.py"))
        .args([
            "--data",
            &data.to_string_lossy(),
            "--source",
            source,
            "--quiet",
        ])
        .args([
            "--train-days",
            &train_days.to_string(),
            "--epochs",
            &epochs.to_string(),
        ])
        .args([
            "--seed",
            &seed.to_string(),
            "--threads",
            &threads.to_string(),
        ])
        .args(["--out", &out.to_string_lossy()])
        .stdout(std::process::Stdio::null())
        .status()?;
    if !status.success() {
        bail!("dfencoder_peer.py failed ({status})");
    }
    Ok(serde_json::from_str(&std::fs::read_to_string(&out)?)?)
}

fn main() -> Result<()> {
    let source: String = arg("--source", "azure".to_string())?;
    let users: usize = arg("--users", 20)?;
    let days: u32 = arg("--days", 30)?;
    let train_days: i64 = arg("--train-days", 25)?;
    let epochs: usize = arg("--epochs", 30)?;
    let seed: u64 = arg("--seed", 42)?;
    let threads: usize = arg("--threads", 2)?;
    let threshold: f64 = arg("--threshold", 2.0)?;
    let config_file: String = arg("--config", String::new())?;
    let config = model_config(
        (!config_file.is_empty()).then(|| Path::new(&config_file)),
        epochs,
        seed,
    )?;
    let data = bench_dir().join(format!("parity-data-{source}"));
    let _ = std::fs::remove_dir_all(&data);
    let start = chrono::NaiveDate::from_ymd_opt(2024, 1, 1).context("date")?;
    let gen_source: GenSource = source.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let summary = generate(
        &GenerateConfig::new(gen_source, users, days, start, seed),
        &data,
    )?;
    let mut kinds = HashMap::new();
    for line in std::fs::read_to_string(&summary.labels)?
        .lines()
        .filter(|l| !l.trim().is_empty())
    {
        let v: Value = serde_json::from_str(line)?;
        kinds.insert(
            v["event_id"].as_str().unwrap_or("").to_string(),
            v["kind"].as_str().unwrap_or("anomaly").to_string(),
        );
    }
    let dump: String = arg("--dump-scores", String::new())?;
    let dump = (!dump.is_empty()).then(|| Path::new(&dump));
    let mut dfp = run_dfp(&data, &source, train_days, &config, threads, dump)?;
    let dfp_quality = quality(
        dfp["scores"].as_array().map_or(&[][..], Vec::as_slice),
        &kinds,
        threshold,
    );
    dfp.as_object_mut().map(|o| o.remove("scores"));
    let mut report = json!({
        "workload": {"source": source, "users": users, "days": days, "train_days": train_days,
                     "epochs": config.epochs, "seed": seed, "threads": threads,
                     "records": summary.records, "anomalous_records": summary.anomalous_records,
                     "model": serde_json::to_value(&config)?},
        "dfp": {"timing": dfp, "quality": dfp_quality},
    });
    if !flag("--skip-peer") {
        let mut peer = run_peer(&data, &source, train_days, config.epochs, seed, threads)?;
        let peer_quality = quality(
            peer["scores"].as_array().map_or(&[][..], Vec::as_slice),
            &kinds,
            threshold,
        );
        let peer_models = peer["models"].as_array().map_or(0, Vec::len).max(1);
        let per_model =
            peer["train_seconds_total"].as_f64().unwrap_or(f64::NAN) / peer_models as f64;
        if let Some(o) = peer.as_object_mut() {
            o.remove("scores");
            o.remove("models");
            o.insert("train_seconds_per_model".into(), json!(per_model));
        }
        let r = |a: &Value, b: &Value| match (a.as_f64(), b.as_f64()) {
            (Some(a), Some(b)) if b != 0.0 => json!(a / b),
            _ => Value::Null,
        };
        report["ratios"] = json!({
            "train_speedup_per_model": r(&per_model.into(), &report["dfp"]["timing"]["train_seconds_per_model"]),
            "score_speedup_rows_per_s": r(&report["dfp"]["timing"]["score_rows_per_s"], &peer["score_rows_per_s"]),
            "roc_auc_dfp_minus_dfencoder": match (dfp_quality_auc(&report), peer_quality["roc_auc_mean_abs_z"].as_f64()) {
                (Some(a), Some(b)) => json!(a - b),
                _ => Value::Null,
            },
        });
        report["dfencoder"] = json!({"timing": peer, "quality": peer_quality});
    }
    write_report(&format!("parity-{source}"), &report)
}

fn dfp_quality_auc(report: &Value) -> Option<f64> {
    report["dfp"]["quality"]["roc_auc_mean_abs_z"].as_f64()
}
