//! Shared helpers of dfp's benchmark programs: arguments, timing, JSON reports written to
//! stdout and to `target/bench/<name>.json`, and a Kafka broker ([`broker`], used by the
//! streaming tests too).

pub mod broker;

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Instant;

use anyhow::{Context, Result};

/// `target/bench/` of the workspace (created if missing).
pub fn bench_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    let _ = std::fs::create_dir_all(&dir);
    dir
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
