//! Ingestion benchmark: generated Azure and Duo JSON-array files to Arrow batches with derived
//! columns, on 1 and 2 threads, beside the JSON-parse limit of the same bytes.
//!
//! The limit is the fastest minimal parse we have: sonic-rs walking every record of the array
//! without building anything (`to_array_iter`), next to serde_json deserializing into
//! `IgnoredAny`. The phases show where time goes: the share a bare parse of the same bytes
//! would take, and the rest (finding the schema's paths, converting, appending to Arrow
//! builders); reading the files is the difference between `from_files` and the in-memory
//! figure.
//!
//! Usage: `cargo run --release -p dfp-bench --bin ingest [-- --users N --days D]`. Prints JSON
//! and writes it to `target/bench/ingest.json`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use dfp_bench::{arg, best_of, write_report};
use dfp_engine::generate::{GenSource, GenerateConfig, generate};
use dfp_engine::ingest::{InputFormat, Reader};
use dfp_engine::schema::SourceSchema;
use serde_json::json;

fn main() -> Result<()> {
    let users: usize = arg("--users", 200)?;
    let days: u32 = arg("--days", 30)?;
    let runs: usize = arg("--runs", 3)?;
    let root = dfp_bench::bench_dir().join("ingest-data");
    let mut rows = Vec::new();
    for source in [GenSource::Azure, GenSource::Duo] {
        let dir = root.join(format!("{source}-{users}u-{days}d"));
        let files = ensure_data(source, users, days, &dir)?;
        let bytes: Vec<Vec<u8>> = files
            .iter()
            .map(|f| std::fs::read(f).with_context(|| format!("reading {}", f.display())))
            .collect::<Result<_>>()?;
        let total_bytes: usize = bytes.iter().map(Vec::len).sum();
        let schema = Arc::new(SourceSchema::builtin(&source.to_string())?);
        let reader = Reader::new(schema);

        let records: usize = bytes
            .iter()
            .map(|b| sonic_rs::to_array_iter(b.as_slice()).count())
            .sum();
        let skip_s = best_of(runs, || {
            let n: usize = bytes
                .iter()
                .map(|b| sonic_rs::to_array_iter(b.as_slice()).count())
                .sum();
            std::hint::black_box(n);
        });
        let serde_s = best_of(runs, || {
            for b in &bytes {
                let v: std::result::Result<serde::de::IgnoredAny, _> = serde_json::from_slice(b);
                std::hint::black_box(v.is_ok());
            }
        });
        let in_memory_s = best_of(runs, || {
            for (f, b) in files.iter().zip(&bytes) {
                std::hint::black_box(reader.read_bytes(f, b, InputFormat::Auto).batch.num_rows());
            }
        });
        let mut threads = Vec::new();
        for t in [1usize, 2] {
            let secs = best_of(runs, || {
                let reads = reader.read_files(&files, InputFormat::Auto, t);
                std::hint::black_box(reads.len());
            });
            threads.push(json!({
                "threads": t,
                "seconds": secs,
                "records_per_s": records as f64 / secs,
                "mb_per_s": total_bytes as f64 / 1e6 / secs,
                "records_per_s_per_core": records as f64 / secs / t as f64,
            }));
        }
        let limit = records as f64 / skip_s;
        let full_1 = records as f64 / in_memory_s;
        rows.push(json!({
            "workload": format!("ingest-{source}"),
            "files": files.len(),
            "records": records,
            "bytes": total_bytes,
            "bytes_per_record": total_bytes as f64 / records as f64,
            "from_files": threads,
            "phases_1_thread_in_memory": {
                "parse_limit_sonic_skip_records_per_s": limit,
                "serde_json_ignored_any_records_per_s": records as f64 / serde_s,
                "full_to_arrow_records_per_s": full_1,
                "share_of_time_a_bare_parse_takes": skip_s / in_memory_s,
                "share_of_time_beyond_parse_extract_convert_build": (in_memory_s - skip_s) / in_memory_s,
            },
            "ratio_to_parse_limit": full_1 / limit,
        }));
    }
    let report = json!({ "benchmark": "ingest", "users": users, "days": days, "results": rows });
    write_report("ingest", &report)?;
    Ok(())
}

/// Generates the data set once; later runs reuse it.
fn ensure_data(source: GenSource, users: usize, days: u32, dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.join("labels.jsonl").exists() {
        let start = chrono_date(2022, 8, 1)?;
        let cfg = GenerateConfig::new(source, users, days, start, 7);
        let t = Instant::now();
        let s = generate(&cfg, dir)?;
        eprintln!(
            "generated {} {source} records in {:.1} s",
            s.records,
            t.elapsed().as_secs_f64()
        );
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    Ok(files)
}

fn chrono_date(y: i32, m: u32, d: u32) -> Result<chrono::NaiveDate> {
    chrono::NaiveDate::from_ymd_opt(y, m, d).context("bad date")
}
