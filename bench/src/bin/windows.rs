//! Per-user rolling aggregates, dfp beside Pathway (PyPI `pathway`, a differential-dataflow
//! engine) on the same stream: a generated Azure AD month (`--users`, 30 days, 8 files a day)
//! as NDJSON files, one record per line, one epoch per day. Both compute, per user and UTC day, the number of
//! sign-ins and the distinct locations (`city, country`) and apps: dfp in its rolling-window
//! state (the inference window: every row is emitted once with its running per-day
//! `logcount`, `locincrement`, `appincrement`), Pathway as a `groupby(user, day).reduce(count,
//! count_distinct, count_distinct)` over the same files. Both are timed from reading the files
//! to the final aggregates, on one thread, and their (user, day) tables must be equal.
//!
//!   cargo run --release -p dfp-bench --bin windows -- [--users 1000] [--skip-peer]
//!
//! The Pathway venv is created under target/peers/ on first use (bench/peers/setup_pathway.sh).
//! Output: stdout and target/bench/windows.json.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use dfp_bench::{arg, azure_month, bench_dir, write_report};
use dfp_engine::ingest::{InputFormat, Reader};
use dfp_engine::rows::rows_from_batch;
use dfp_engine::schema::{DerivedKind, SourceSchema};
use dfp_operators::rolling_window::{RollingWindows, WindowConfig};
use dfp_operators::split_users::{SplitConfig, split};
use serde_json::json;

/// (user, day) -> (sign-ins, distinct locations, distinct apps).
type Table = BTreeMap<(String, String), (i64, i64, i64)>;

/// The month's JSON-array files rewritten as NDJSON, one file each, in time order.
fn ndjson(users: usize, dir: &Path) -> Result<(Vec<PathBuf>, usize, u64)> {
    let arrays = dir.join("arrays");
    azure_month(users, &arrays)?;
    let lines = dir.join("ndjson");
    std::fs::create_dir_all(&lines)?;
    let mut names: Vec<PathBuf> = std::fs::read_dir(&arrays)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    names.sort();
    let (mut out, mut records, mut bytes) = (Vec::new(), 0, 0);
    for path in names {
        let array: Vec<serde_json::Value> = serde_json::from_slice(&std::fs::read(&path)?)?;
        let target = lines.join(path.with_extension("jsonl").file_name().context("name")?);
        let mut f = std::io::BufWriter::new(std::fs::File::create(&target)?);
        for r in &array {
            serde_json::to_writer(&mut f, r)?;
            f.write_all(b"\n")?;
        }
        f.flush()?;
        records += array.len();
        bytes += std::fs::metadata(&target)?.len();
        out.push(target);
    }
    Ok((out, records, bytes))
}

/// dfp: read each file, split by user, push through the rolling windows (one epoch per day),
/// and keep each (user, day)'s last running values.
fn dfp(files: &[PathBuf]) -> Result<(Table, usize)> {
    // Only what the aggregates need, as the peer reads only those fields: the user, the time,
    // the location's parts and the app (the Azure schema less its other columns and features).
    let mut schema = SourceSchema::builtin("azure")?;
    schema
        .columns
        .retain(|c| c.name == "location" || c.name == "appDisplayName");
    schema.derived.retain(|d| {
        matches!(
            d.kind,
            DerivedKind::CountPerDay | DerivedKind::DistinctPerDay
        )
    });
    let at = |name: &str| schema.derived.iter().position(|d| d.name == name);
    let (count, loc, app) = (
        at("logcount").context("logcount")?,
        at("locincrement").context("locincrement")?,
        at("appincrement").context("appincrement")?,
    );
    let reader = Reader::new(std::sync::Arc::new(schema.clone()));
    let mut windows =
        RollingWindows::new(&schema, WindowConfig::training(), WindowConfig::inference())?;
    let cfg = SplitConfig {
        include_generic: false,
        ..SplitConfig::default()
    };
    let mut table = Table::new();
    let mut rows_out = 0;
    // One epoch per day: its 8 files are read, then split and pushed together, as the
    // dataflow does with an epoch.
    for (day, chunk) in files.chunks(8).enumerate() {
        let epoch = day as u64;
        let mut rows = Vec::new();
        for (j, path) in chunk.iter().enumerate() {
            let read = reader.read_file(path, InputFormat::JsonLines);
            if let Some(e) = read.broken {
                bail!("{e}");
            }
            rows.extend(rows_from_batch(&read.batch, epoch, (day * 8 + j) as u32)?);
        }
        for user_rows in split(rows, &cfg, false, true, false).users {
            for w in windows.push(user_rows, epoch).windows {
                for (row, derived) in w.rows.iter().zip(&w.derived) {
                    let day = chrono::DateTime::from_timestamp_micros(row.ts)
                        .context("timestamp")?
                        .format("%Y-%m-%d")
                        .to_string();
                    let e = table.entry((w.user.clone(), day)).or_default();
                    *e = (
                        e.0.max(derived[count] + 1),
                        e.1.max(derived[loc]),
                        e.2.max(derived[app]),
                    );
                    rows_out += 1;
                }
            }
        }
    }
    Ok((table, rows_out))
}

/// Pathway: bench/peers/pathway_windows.py over the same files; its table as CSV lines.
fn pathway(dir: &Path, out: &Path) -> Result<(Table, f64, String)> {
    let root = dfp_bench::repo_root();
    let python = dfp_bench::python_peer("pathway")?;
    let run = Command::new(python)
        .arg(root.join("bench/peers/pathway_windows.py"))
        .arg(dir)
        .arg(out)
        .output()?;
    if !run.status.success() {
        bail!("pathway: {}", String::from_utf8_lossy(&run.stderr));
    }
    let report: serde_json::Value = serde_json::from_slice(&run.stdout)?;
    let mut table = Table::new();
    let mut csv = csv::Reader::from_path(out)?;
    for rec in csv.records() {
        let rec = rec?;
        let num = |i: usize| -> Result<i64> { Ok(rec.get(i).context("column")?.parse()?) };
        let key = (rec[0].to_string(), rec[1].to_string());
        table.insert(key, (num(2)?, num(3)?, num(4)?));
    }
    Ok((
        table,
        report["seconds"].as_f64().context("seconds")?,
        report["version"].as_str().unwrap_or("?").to_string(),
    ))
}

fn main() -> Result<()> {
    let users: usize = arg("--users", 1000)?;
    let skip_peer = std::env::args().any(|a| a == "--skip-peer");
    let dir = bench_dir().join("windows");
    let _ = std::fs::remove_dir_all(&dir);
    let (files, records, bytes) = ndjson(users, &dir)?;
    let start = Instant::now();
    let (ours, emitted) = dfp(&files)?;
    let dfp_s = start.elapsed().as_secs_f64();
    if emitted != records {
        bail!("dfp emitted {emitted} rows of {records}");
    }
    let mut report = json!({
        "workload": format!("{users} Azure users x 30 days, 8 NDJSON files a day"),
        "records": records,
        "megabytes": bytes as f64 / 1e6,
        "aggregates": ours.len(),
        "dfp": {"seconds": dfp_s, "events_per_s": records as f64 / dfp_s, "threads": 1},
    });
    if !skip_peer {
        let (theirs, pw_s, version) = pathway(&dir.join("ndjson"), &dir.join("pathway.csv"))?;
        if theirs != ours {
            let diff = ours
                .iter()
                .find(|(k, v)| theirs.get(*k) != Some(*v))
                .map(|(k, v)| format!("{k:?}: dfp {v:?}, pathway {:?}", theirs.get(k)));
            bail!(
                "the (user, day) tables differ ({} vs {} rows); first: {diff:?}",
                ours.len(),
                theirs.len()
            );
        }
        report["pathway"] = json!({
            "version": version,
            "seconds": pw_s,
            "events_per_s": records as f64 / pw_s,
            "threads": 1,
        });
        report["ratio"] = json!(pw_s / dfp_s);
        report["tables_equal"] = json!(true);
    }
    write_report("windows", &report)
}
