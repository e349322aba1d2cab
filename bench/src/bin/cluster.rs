//! Cluster mode on this machine: the same month of Azure AD logs (`--users` x 30 days, one
//! epoch a day, each trains and scores) run as 1, 2 and 3 processes of one worker each, the
//! processes talking over TCP on 127.0.0.1 as across hosts (here: threads of this program, each
//! a separate timely cluster process). Reports events/s per layout, the ratio to one process,
//! whether the detections are byte-identical, and the communication volume: bytes through the
//! loopback interface during the run (`/proc/net/dev`; other loopback traffic on the machine
//! counts too, so it is an upper bound).
//!
//!   cargo run --release -p dfp-bench --bin cluster -- [--users 100] [--processes 1,2,3]
//!
//! Not part of the test run. Output: stdout and target/bench/cluster.json.

use dfp_engine::model::Device;
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use dfp_bench::{DAILY_CONTROL, arg, azure_month, bench_dir, write_report};
use dfp_engine::schema::SourceSchema;
use dfp_operators::config::RunConfig;
use dfp_operators::pipeline::{ClusterSpec, Input, RunOptions, RunSummary, run};
use serde_json::json;

const DFP_CONFIG: &str = include_str!("../../../configs/dfp.toml");

/// Bytes received on the loopback interface so far.
fn loopback_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/dev").ok()?;
    let line = text.lines().find(|l| l.trim_start().starts_with("lo:"))?;
    line.split(':')
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `n` free ports on 127.0.0.1.
fn addresses(n: usize) -> Result<Vec<String>> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()?;
    listeners
        .iter()
        .map(|l| Ok(format!("127.0.0.1:{}", l.local_addr()?.port())))
        .collect()
}

/// One layout: `n` processes; returns process 0's summary (it writes the outputs).
fn layout(root: &Path, control: &Path, n: usize, config: &RunConfig) -> Result<RunSummary> {
    let out = root.join(format!("p{n}"));
    let addrs = addresses(n)?;
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let opts = RunOptions {
                schema: SourceSchema::builtin("azure")?,
                input: Input::control(control),
                config: config.clone(),
                workers: 1,
                threads: 1,
                device: Device::Cpu,
                registry: out.join("models"),
                output: out.join("output"),
                mlflow: None,
                metrics: None,
                write_scores: false,
                clock: Arc::new(|| chrono::DateTime::UNIX_EPOCH),
                progress: false,
                cluster: (n > 1).then(|| ClusterSpec {
                    process: i,
                    addresses: addrs.clone(),
                }),
                stop: Default::default(),
            };
            Ok(std::thread::spawn(move || run(opts)))
        })
        .collect::<Result<_>>()?;
    let mut first = None;
    for h in handles {
        let s = h
            .join()
            .map_err(|_| anyhow::anyhow!("a process panicked"))??;
        first.get_or_insert(s);
    }
    first.context("no process")
}

fn main() -> Result<()> {
    let users: usize = arg("--users", 100)?;
    let layouts: String = arg("--processes", "1,2,3".to_string())?;
    let root = tempfile::tempdir_in(bench_dir())?;
    let g = azure_month(users, &root.path().join("logs"))?;
    let control = root.path().join("control.json");
    std::fs::write(&control, DAILY_CONTROL)?;
    let config = RunConfig::from_toml(DFP_CONFIG, "configs/dfp.toml")?;
    let mut runs = Vec::new();
    let mut base: Option<(f64, Vec<u8>)> = None;
    for n in layouts.split(',') {
        let n: usize = n.trim().parse()?;
        let lo = loopback_bytes();
        let t = Instant::now();
        let s = layout(root.path(), &control, n, &config)?;
        let secs = t.elapsed().as_secs_f64();
        let bytes = lo.zip(loopback_bytes()).map(|(a, b)| b.saturating_sub(a));
        let detections = std::fs::read(
            root.path()
                .join(format!("p{n}/output/dfp_detections_azure.csv")),
        )?;
        let rate = g.records as f64 / secs;
        let (base_rate, same) = match &base {
            Some((r, d)) => (*r, *d == detections),
            None => (rate, true),
        };
        base.get_or_insert((rate, detections));
        let run = json!({
            "processes": n,
            "workers_per_process": 1,
            "wall_seconds": secs,
            "events_per_s": rate,
            "over_one_process": rate / base_rate,
            "detections": s.stats.detections,
            "same_detection_bytes_as_first_layout": same,
            "loopback_bytes": bytes,
            "loopback_bytes_per_event": bytes.map(|b| b as f64 / g.records as f64),
        });
        eprintln!("{run}");
        runs.push(run);
    }
    write_report(
        "cluster",
        &json!({
            "workload": format!("azure: {users} users x 30 days x 8 files/day ({} records), one epoch a day, each trains and scores; configs/dfp.toml", g.records),
            "machine": format!("{} cores", std::thread::available_parallelism().map_or(1, |n| n.get())),
            "runs": runs,
        }),
    )
}
