//! `dfp serve` on a real nats-server (JetStream on, 127.0.0.1), beside the batch pipeline in
//! the same run.
//!
//! A month of generated Azure logs (`--users` x 30 days); the first 23 days train the models
//! (dfp.toml), the last 7 are scored twice: by the batch pipeline (an inference-only control
//! message, daily epochs, in this process) and by one `dfp serve` instance (target/release/dfp,
//! `cargo build --release -p dfp-jobs`), fed by a client in this process:
//! 1. single-record requests, open loop at `--rate` per second for `--seconds` (each sent on
//!    schedule, whatever the replies do), each with its own request id, in event-time order:
//!    latency from a request's send to its reply, p50/p99/max from an HDR histogram, and how
//!    late the sends were against the schedule;
//! 2. the week in batched requests of `--batch` records, four in flight, three rounds: the best
//!    round's records/s against the best of three runs of the batch pipeline (its rows scored
//!    over its wall time; the machine is shared, so each side's best is its least disturbed);
//! 3. a burst of 10x `--rate` for `--burst-seconds`: replies, busy replies, requests that got
//!    no reply, and the instance's peak resident memory (VmHWM) before and after.
//!
//! (1) and (2) run twice, each against its own instance, state stream and nats-server: users'
//! state on the NATS server's disk (`--state-storage file`, the default) and in its memory
//! (`memory`); (3) with the default.
//!
//!   cargo build --release -p dfp-jobs && cargo run --release -p dfp-bench --bin serve --
//!       [--users 100] [--rate 1000] [--seconds 10] [--batch 200] [--burst-seconds 2]
//!
//! Not part of the test run. Output: stdout and target/bench/serve.json.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: a failure is a failed run

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use async_nats::HeaderMap;
use dfp_bench::nats::NatsServer;
use dfp_bench::{arg, azure_month, bench_dir, repo_root, write_report};
use dfp_engine::schema::SourceSchema;
use dfp_operators::config::RunConfig;
use dfp_operators::pipeline::{Input, RunOptions, run};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::Mutex;

const DFP_CONFIG: &str = include_str!("../../../configs/dfp.toml");

/// Runs of the batch pipeline, and rounds of the batched phase; the best of each is compared.
const REPEATS: usize = 3;

fn control(task: &str, data_type: &str, period: &str, from: &str, to: &str) -> String {
    json!({"inputs": [{
        "tasks": [
            {"type": "load", "properties": {"loader_id": "fsspec", "files": ["logs/*.json"]}},
            {"type": task, "properties": {}}
        ],
        "metadata": {"data_type": data_type, "batching_options":
            {"period": period, "start_time": from, "end_time": to}}
    }]})
    .to_string()
}

fn pipeline(
    root: &Path,
    message: &str,
    output: &str,
) -> Result<dfp_operators::pipeline::RunSummary> {
    let path = root.join(format!("{output}.json"));
    std::fs::write(&path, message)?;
    Ok(run(RunOptions {
        output: root.join(output),
        ..dfp_bench::run_options(
            &SourceSchema::builtin("azure")?,
            Input::control(path),
            root,
            RunConfig::from_toml(DFP_CONFIG, "configs/dfp.toml")?,
        )
    })?)
}

/// The scored days' records, raw JSON, in event-time order.
fn scored_records(logs: &Path, from: &str) -> Result<Vec<String>> {
    let mut records: Vec<(String, String)> = Vec::new();
    for entry in std::fs::read_dir(logs)? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let file: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
        for r in file {
            let time = r["time"].as_str().unwrap_or_default().to_string();
            if time.as_str() >= from {
                records.push((time, r.to_string()));
            }
        }
    }
    records.sort();
    Ok(records.into_iter().map(|(_, r)| r).collect())
}

/// The scored week's records one after another, again and again, each round a week later (so
/// event time only moves forward, as in a live feed).
struct Feed {
    records: Vec<String>,
    next: usize,
}

impl Feed {
    fn take(&mut self, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| {
                let (k, round) = (
                    self.next % self.records.len(),
                    self.next / self.records.len(),
                );
                self.next += 1;
                if round == 0 {
                    return self.records[k].clone();
                }
                let mut r: Value = serde_json::from_str(&self.records[k]).unwrap();
                let t = chrono::DateTime::parse_from_rfc3339(r["time"].as_str().unwrap()).unwrap()
                    + chrono::Duration::days(7 * round as i64);
                r["time"] = t
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                    .into();
                r.to_string()
            })
            .collect()
    }
}

fn vm_hwm_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_serve(dfp: &Path, nats: &NatsServer, root: &Path, storage: &str) -> Result<Serve> {
    let log = root.join(format!("serve-{storage}.log"));
    let child = Command::new(dfp)
        .args(["serve", "--nats", &nats.url, "--source", "azure"])
        .args([
            "--state-storage",
            storage,
            "--state-stream",
            &format!("bench-{storage}"),
        ])
        .arg("--registry")
        .arg(root.join("models"))
        .env("DFP_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("starting {}", dfp.display()))?;
    Ok(Serve(child))
}

async fn request(
    client: &async_nats::Client,
    id: &str,
    body: String,
) -> std::result::Result<Value, String> {
    let mut headers = HeaderMap::new();
    headers.insert("Dfp-Request-Id", id);
    let m = client
        .request_with_headers("dfp.score.azure", headers, body.into())
        .await
        .map_err(|e| e.to_string())?;
    serde_json::from_slice(&m.payload).map_err(|e| e.to_string())
}

/// Open loop at `rate` over `records` (one request each): the latency histogram (µs, from the
/// request's send to its reply), how late the sends were against their schedule (µs: the
/// client's timer has a 1 ms grain), and the replies that were busy, errors or missing.
async fn open_loop(
    client: &async_nats::Client,
    records: Vec<String>,
    rate: f64,
    tag: &str,
) -> (Histogram<u64>, Histogram<u64>, u64, u64, u64) {
    let n = records.len();
    let histogram = || Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).unwrap();
    let hist = Arc::new(Mutex::new((histogram(), histogram())));
    let (busy, failed, lost) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for (k, record) in records.into_iter().enumerate() {
        let due = t0 + Duration::from_secs_f64(k as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let body = format!("[{record}]");
        let (client, hist) = (client.clone(), hist.clone());
        let (busy, failed, lost) = (busy.clone(), failed.clone(), lost.clone());
        let id = format!("{tag}-{k}");
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let late = sent.saturating_duration_since(due).as_micros() as u64;
            match request(&client, &id, body).await {
                Ok(v) if v["busy"] == true => {
                    busy.fetch_add(1, Ordering::Relaxed);
                }
                Ok(v) if v["scored"] == 1 => {
                    let us = sent.elapsed().as_micros() as u64;
                    let mut h = hist.lock().await;
                    h.0.saturating_record(us.max(1));
                    h.1.saturating_record(late.max(1));
                }
                Ok(_) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    lost.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let (h, late) = hist.lock().await.clone();
    (
        h,
        late,
        busy.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        lost.load(Ordering::Relaxed),
    )
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn main() -> Result<()> {
    let users: usize = arg("--users", 100)?;
    let rate: f64 = arg("--rate", 1000.0)?;
    let seconds: f64 = arg("--seconds", 10.0)?;
    let batch: usize = arg("--batch", 200)?;
    let burst_seconds: f64 = arg("--burst-seconds", 2.0)?;
    let dfp: PathBuf = repo_root().join("target/release/dfp");
    if !dfp.exists() {
        bail!(
            "{} is missing: cargo build --release -p dfp-jobs",
            dfp.display()
        );
    }
    let root = bench_dir().join("serve");
    if root.exists() {
        std::fs::remove_dir_all(&root)?;
    }
    std::fs::create_dir_all(&root)?;
    azure_month(users, &root.join("logs"))?;
    let trained = pipeline(
        &root,
        &control("training", "payload", "Y", "2022-08-01", "2022-08-24"),
        "train",
    )?;
    // The best of three runs, as for the service's batched phase: the machine is shared.
    let mut batch_runs = Vec::new();
    for k in 0..REPEATS {
        let run = pipeline(
            &root,
            &control("inference", "streaming", "D", "2022-08-24", "2022-08-31"),
            &format!("batch-{k}"),
        )?;
        batch_runs.push(run.stats.scored as f64 / run.seconds);
    }
    let batch_rows_per_s = batch_runs.iter().copied().fold(0.0, f64::max);
    let records = scored_records(&root.join("logs"), "2022-08-24")?;
    eprintln!(
        "trained {} models; batch scored {batch_runs:.0?} rows/s; {} records to send",
        trained.stats.models_trained,
        records.len()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut feed = Feed {
        records: records.clone(),
        next: 0,
    };
    let mut report = json!({"users": users, "records": records.len()});
    for storage in ["file", "memory"] {
        // Each on a fresh server: nothing left from the other's run.
        let nats = NatsServer::start();
        let serve = start_serve(&dfp, &nats, &root, storage)?;
        let pid = serve.0.id();
        let measured = rt.block_on(async {
            let client = async_nats::ConnectOptions::new()
                .request_timeout(Some(Duration::from_secs(10)))
                .connect(&nats.url)
                .await?;
            ready(&client, &root).await?;
            let single = single(&client, feed.take((rate * seconds) as usize), rate, storage).await;
            eprintln!("single ({storage}): {single}");
            let mut rounds = Vec::new();
            for _ in 0..REPEATS {
                rounds.push(batched(&client, feed.take(records.len()), batch, storage).await);
            }
            let speed = |r: &Value| r["records_per_s"].as_f64().unwrap_or(0.0);
            let best = rounds
                .iter()
                .max_by(|a, b| speed(a).total_cmp(&speed(b)))
                .cloned()
                .unwrap_or_default();
            let batched = json!({
                "batch": batch, "storage": storage, "records": best["records"],
                "scored": best["scored"], "seconds": best["seconds"],
                "records_per_s": best["records_per_s"],
                "rounds_records_per_s": rounds.iter().map(speed).collect::<Vec<_>>(),
                "batch_pipeline_rows_per_s": batch_rows_per_s,
                "batch_pipeline_runs_rows_per_s": batch_runs,
                "ratio": speed(&best) / batch_rows_per_s,
            });
            eprintln!("batched ({storage}): {batched}");
            let mut out = json!({"single": single, "batched": batched});
            // A burst of 10x the rate, against the default (file) storage.
            if storage == "file" {
                let before = vm_hwm_mib(pid);
                let burst = feed.take((rate * 10.0 * burst_seconds) as usize);
                let (h, _, busy, failed, lost) =
                    open_loop(&client, burst, rate * 10.0, "burst").await;
                let after = vm_hwm_mib(pid);
                out["burst"] = json!({
                    "rate_per_s": rate * 10.0, "seconds": burst_seconds,
                    "sent": (rate * 10.0 * burst_seconds) as u64, "answered": h.len(),
                    "busy": busy, "errors": failed, "no_reply": lost, "p99_ms": ms(&h, 0.99),
                    "peak_rss_mib_before": before, "peak_rss_mib_after": after,
                });
                eprintln!("burst: {}", out["burst"]);
            }
            anyhow::Ok(out)
        })?;
        drop(serve);
        if storage == "file" {
            for k in ["single", "batched", "burst"] {
                report[k] = measured[k].clone();
            }
        } else {
            report["single_memory"] = measured["single"].clone();
            report["batched_memory"] = measured["batched"].clone();
        }
    }
    let p99 = |k: &str| report[k]["p99_ms"].as_f64().unwrap_or(f64::MAX);
    let ratio = |k: &str| report[k]["ratio"].as_f64().unwrap_or(0.0);
    report["targets"] = json!({
        "single_p99_under_5ms": p99("single") < 5.0,
        "single_p99_under_5ms_memory_state": p99("single_memory") < 5.0,
        "batched_at_least_half_the_pipeline": ratio("batched") >= 0.5,
        "batched_at_least_half_the_pipeline_memory_state": ratio("batched_memory") >= 0.5,
        "burst_every_request_answered_or_busy": report["burst"]["no_reply"] == 0,
    });
    write_report("serve", &report)
}

/// Waits until the instance answers (an empty array is answered with an error naming the
/// problem).
async fn ready(client: &async_nats::Client, root: &Path) -> Result<()> {
    let started = Instant::now();
    while client
        .request("dfp.score.azure", "[]".into())
        .await
        .is_err()
    {
        if started.elapsed() > Duration::from_secs(60) {
            bail!(
                "dfp serve did not answer within 60 s: see its log under {}",
                root.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Single-record requests, open loop at `rate`.
async fn single(client: &async_nats::Client, records: Vec<String>, rate: f64, tag: &str) -> Value {
    let n = records.len();
    let (h, late, busy, failed, lost) =
        open_loop(client, records, rate, &format!("one-{tag}")).await;
    json!({
        "rate_per_s": rate, "seconds": n as f64 / rate, "storage": tag, "answered": h.len(),
        "busy": busy, "errors": failed, "no_reply": lost,
        "p50_ms": ms(&h, 0.5), "p99_ms": ms(&h, 0.99), "p999_ms": ms(&h, 0.999),
        "max_ms": h.max() as f64 / 1000.0, "send_late_p99_ms": ms(&late, 0.99),
    })
}

/// `records` in requests of `batch`, four in flight: records/s.
async fn batched(
    client: &async_nats::Client,
    records: Vec<String>,
    batch: usize,
    tag: &str,
) -> Value {
    let chunks: Arc<Vec<String>> = Arc::new(
        records
            .chunks(batch)
            .map(|c| format!("[{}]", c.join(",")))
            .collect(),
    );
    let next = Arc::new(AtomicU64::new(0));
    let scored = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let mut senders = Vec::new();
    for _ in 0..4 {
        let (client, next, scored, chunks) =
            (client.clone(), next.clone(), scored.clone(), chunks.clone());
        let tag = tag.to_string();
        senders.push(tokio::spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::SeqCst) as usize;
                let Some(body) = chunks.get(k) else { break };
                if let Ok(v) = request(&client, &format!("batch-{tag}-{k}"), body.clone()).await {
                    scored.fetch_add(v["scored"].as_u64().unwrap_or(0), Ordering::SeqCst);
                }
            }
        }));
    }
    for s in senders {
        let _ = s.await;
    }
    let seconds = t.elapsed().as_secs_f64();
    let scored = scored.load(Ordering::SeqCst);
    json!({"records": records.len(), "scored": scored, "seconds": seconds,
           "records_per_s": scored as f64 / seconds})
}
