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
