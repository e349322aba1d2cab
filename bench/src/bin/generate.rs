//! Generator benchmark: records per second (and per minute) of `dfp generate` on one core,
//! writing to disk, for both sources.
//!
//! Usage: `cargo run --release -p dfp-bench --bin generate [-- --users N --days D]`. Prints
//! JSON and writes it to `target/bench/generate.json`.

use std::time::Instant;

use anyhow::{Context, Result};
use dfp_bench::{arg, write_report};
use dfp_engine::generate::{GenSource, GenerateConfig, generate};
use serde_json::json;

fn main() -> Result<()> {
    let users: usize = arg("--users", 1000)?;
    let days: u32 = arg("--days", 30)?;
    let start = chrono::NaiveDate::from_ymd_opt(2022, 8, 1).context("bad date")?;
    let mut rows = Vec::new();
    for source in [GenSource::Azure, GenSource::Duo] {
        let dir = tempfile::tempdir()?;
        let t = Instant::now();
        let s = generate(
            &GenerateConfig::new(source, users, days, start, 1),
            dir.path(),
        )?;
        let secs = t.elapsed().as_secs_f64();
        rows.push(json!({
            "workload": format!("generate-{source}"),
            "users": users,
            "days": days,
            "records": s.records,
            "files": s.files.len(),
            "seconds": secs,
            "records_per_s": s.records as f64 / secs,
            "records_per_minute": s.records as f64 / secs * 60.0,
            "bytes_per_record": s.bytes as f64 / s.records as f64,
        }));
    }
    write_report(
        "generate",
        &json!({ "benchmark": "generate", "results": rows }),
    )
}
