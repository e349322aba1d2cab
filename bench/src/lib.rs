//! Shared helpers of dfp's benchmark programs: arguments, timing, JSON reports written to
//! stdout and to `target/bench/<name>.json`, a Kafka broker ([`broker`], used by the streaming
//! tests too) and a NATS server ([`nats`], used by `dfp serve`'s tests too).

pub mod broker;
pub mod mlflow;
pub mod nats;
pub mod net;
pub mod webhook;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use anyhow::{Context, Result};

/// `target/bench/` of the workspace, or `$DFP_BENCH_DIR` (created if missing).
pub fn bench_dir() -> PathBuf {
    let dir = std::env::var_os("DFP_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench"));
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// The workspace's root directory.
pub fn repo_root() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    root.canonicalize().unwrap_or(root)
}

/// The Python of a peer's venv (`target/peers/{name}-venv`), set up first by
/// `bench/peers/setup_{name}.sh` (idempotent: a warm venv is left as it is).
pub fn python_peer(name: &str) -> Result<PathBuf> {
    let root = repo_root();
    let venv = root.join(format!("target/peers/{name}-venv"));
    let status = std::process::Command::new("bash")
        .arg(root.join(format!("bench/peers/setup_{name}.sh")))
        .arg(&venv)
        .status()?;
    if !status.success() {
        anyhow::bail!("setting up the {name} venv failed ({status})");
    }
    Ok(venv.join("bin/python"))
}

/// `path` as reports print it: relative to the workspace's root when it lies inside, so that
/// committed results name no directory of the machine they ran on.
pub fn repo_path(path: &Path) -> String {
    let full = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    full.strip_prefix(repo_root())
        .map_or(full.as_path(), |p| p)
        .display()
        .to_string()
}

/// The value after `name` on the command line, parsed, or `default`.
pub fn arg<T: FromStr>(name: &str, default: T) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => {
            let v = args
                .get(i + 1)
                .with_context(|| format!("{name} needs a value"))?;
            v.parse().map_err(|e| anyhow::anyhow!("{name} {v:?}: {e}"))
        }
    }
}

/// The fastest of `runs` runs of `f`, in seconds (at least one run).
pub fn best_of(runs: usize, mut f: impl FnMut()) -> f64 {
    (0..runs.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// Prints a report as pretty JSON on stdout and writes it to `target/bench/<name>.json`.
pub fn write_report(name: &str, report: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    let path = bench_dir().join(format!("{name}.json"));
    std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    #[allow(clippy::print_stdout)]
    {
        println!("{text}");
    }
    Ok(())
}

pub use dfp_operators::evaluate::roc_auc;

/// Peak resident memory of this process since it started or since [`reset_peak_rss`], in MiB
/// (Linux `VmHWM`).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Starts the peak-memory count of this process over from its present size (Linux
/// `/proc/self/clear_refs`); false where that is not possible.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Every file under `dir`, by path relative to it, with its bytes: what the end-to-end tests
/// compare between runs. A run's metadata is left out: the lock file (`.dfp-lock`) and the
/// run's status file (`dfp_run_{source}.json`), which hold process ids and times.
pub fn file_tree(dir: &Path) -> Result<std::collections::BTreeMap<String, Vec<u8>>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let p = e?.path();
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            if name.as_deref().is_some_and(|n| {
                n == ".dfp-lock" || (n.starts_with("dfp_run_") && n.ends_with(".json"))
            }) {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir)?.to_string_lossy().into_owned();
                out.insert(
                    rel,
                    std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?,
                );
            }
        }
    }
    Ok(out)
}

/// Checks an output file against its golden copy: the same lines, field by field (CSV
/// fields, or JSON values of a JSON-lines file), numbers within 1e-3 relative (float rounding
/// differs between CPUs' SIMD kernels), everything else exactly. `UPDATE_GOLDEN=1` rewrites
/// the golden copy instead. Panics, naming the first difference.
#[allow(clippy::panic)] // a test helper: a difference is a test failure
pub fn assert_golden(actual: &Path, golden: &Path) {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        if let Some(dir) = golden.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = std::fs::copy(actual, golden);
        return;
    }
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", p.display()))
    };
    let (want, got) = (read(golden), read(actual));
    let (want, got): (Vec<&str>, Vec<&str>) = (want.lines().collect(), got.lines().collect());
    assert_eq!(
        want.len(),
        got.len(),
        "{}: {} lines, the golden {} has {}",
        actual.display(),
        got.len(),
        golden.display(),
        want.len()
    );
    let json = actual.extension().is_some_and(|e| e == "jsonl");
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        let same = if json {
            match (
                serde_json::from_str::<serde_json::Value>(w),
                serde_json::from_str::<serde_json::Value>(g),
            ) {
                (Ok(a), Ok(b)) => json_close(&a, &b),
                _ => w == g,
            }
        } else {
            let fields = |l: &str| -> Vec<String> {
                csv::ReaderBuilder::new()
                    .has_headers(false)
                    .from_reader(l.as_bytes())
                    .records()
                    .next()
                    .and_then(|r| r.ok())
                    .map(|r| r.iter().map(str::to_string).collect())
                    .unwrap_or_default()
            };
            let (a, b) = (fields(w), fields(g));
            a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| text_close(x, y))
        };
        assert!(
            same,
            "{} line {} differs from the golden {}:\n  golden: {w}\n  got:    {g}\n(UPDATE_GOLDEN=1 rewrites it)",
            actual.display(),
            i + 1,
            golden.display()
        );
    }
}

/// Two texts equal, or two numbers within 1e-3 relative.
fn text_close(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => (x - y).abs() <= 1e-3 * (1.0 + x.abs().max(y.abs())),
        _ => false,
    }
}

fn json_close(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value as V;
    match (a, b) {
        (V::Number(x), V::Number(y)) => text_close(&x.to_string(), &y.to_string()),
        (V::String(x), V::String(y)) => text_close(x, y),
        (V::Array(x), V::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_close(p, q))
        }
        (V::Object(x), V::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((k1, v1), (k2, v2))| k1 == k2 && json_close(v1, v2))
        }
        _ => a == b,
    }
}

/// A control message that loads `logs/*.json` beside it, one epoch a day, each trains and
/// scores (Morpheus' streaming pipeline over files).
pub const DAILY_CONTROL: &str = r#"{"inputs": [{"metadata": {"data_type": "streaming", "batching_options": {"period": "D"}},
  "tasks": [{"type": "load", "properties": {"loader_id": "fsspec", "files": ["logs/*.json"]}},
            {"type": "training", "properties": {}}, {"type": "inference", "properties": {}}]}]}"#;

/// Generates `users` x 30 days of Azure AD logs from 2022-08-01, 8 files a day, seed 42, into
/// `dir`: the month the streaming and cluster benchmarks run.
pub fn azure_month(users: usize, dir: &Path) -> Result<dfp_engine::generate::GenerateSummary> {
    let start = chrono::NaiveDate::from_ymd_opt(2022, 8, 1).context("date")?;
    let mut cfg = dfp_engine::generate::GenerateConfig::new(
        dfp_engine::generate::GenSource::Azure,
        users,
        30,
        start,
        42,
    );
    cfg.files_per_day = 8;
    Ok(dfp_engine::generate::generate(&cfg, dir)?)
}

/// Morpheus' network ([512, 500] encoder, [512] decoder) on a typical Azure user's inputs: 3
/// numerics, 6 categoricals with 6-16 slots.
pub fn morpheus_shape() -> dfp_engine::model::Shape {
    dfp_engine::model::Shape {
        n_numeric: 3,
        n_binary: 0,
        categories: vec![16, 8, 10, 8, 6, 6],
        hidden: vec![512, 500, 512],
    }
}

/// `n` random encoded rows for `shape` (numerics in [-2, 2), uniform codes), from `seed`.
pub fn random_rows(
    shape: &dfp_engine::model::Shape,
    n: usize,
    seed: u64,
) -> dfp_engine::model::Encoded {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    dfp_engine::model::Encoded {
        rows: n,
        numeric: (0..n * shape.n_numeric)
            .map(|_| rng.random_range(-2.0..2.0))
            .collect(),
        binary: (0..n * shape.n_binary)
            .map(|_| f32::from(rng.random_bool(0.5)))
            .collect(),
        categorical: (0..n)
            .flat_map(|_| {
                shape
                    .categories
                    .iter()
                    .map(|&c| rng.random_range(0..c as u32))
                    .collect::<Vec<_>>()
            })
            .collect(),
    }
}

/// A one-worker CPU run of `input` under `config`, with the registry in `root/models` and the
/// outputs in `root/output`, stamped with the wall clock (the benchmarks' batch and stream runs).
pub fn run_options(
    schema: &dfp_engine::schema::SourceSchema,
    input: dfp_operators::pipeline::Input,
    root: &Path,
    config: dfp_operators::config::RunConfig,
) -> dfp_operators::pipeline::RunOptions {
    dfp_operators::pipeline::RunOptions {
        schema: schema.clone(),
        input,
        config,
        workers: 1,
        threads: 0,
        device: dfp_engine::model::Device::Cpu,
        registry: root.join("models"),
        output: root.join("output"),
        mlflow: None,
        metrics: None,
        write_scores: false,
        clock: std::sync::Arc::new(chrono::Utc::now),
        progress: false,
        cluster: None,
        stop: Default::default(),
    }
}
