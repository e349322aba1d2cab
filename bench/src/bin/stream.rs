//! Streaming from Kafka to detections, on a real broker (tansu on 127.0.0.1).
//!
//! 1. Sustained rate: a month of generated Azure logs (`--users` x 30 days) replayed into a
//!    2-partition topic, then `dfp run --stream` (epochs of a day, each trains and scores) to
//!    the end; beside it the batch pipeline on the same files with the same epochs, in the same
//!    run. Reports events/s of both and their ratio.
//!    The stream runs twice: without checkpoints and checkpointing every epoch (as `dfp run
//!    --stream` does by default), to show what exactly-once costs.
//! 2. Latency at fixed rates: with the models of (1), a scoring-only stream (epochs of
//!    `--epoch`, 50 ms by default) fed at each rate for `--seconds`; every record is re-stamped
//!    with the wall clock as its event time and a fresh id, and every scored row is produced to
//!    a detections topic (threshold below every score). Latency of an event: the detection
//!    message's broker timestamp minus the time the record was produced (both ms, same clock);
//!    percentiles from an HDR histogram. Each rate without and with checkpoints. The stream
//!    runs in a child process (this program with `--child`), whose peak memory (VmHWM) is
//!    reported.
//! 3. A burst: 10x the highest rate, checkpointed, for the same time: latency and the stream's
//!    peak memory beside the steady runs'.
//!
//!   cargo run --release -p dfp-bench --bin stream -- [--users 200] [--rates 200,1000]
//!       [--seconds 5] [--epoch 50ms]
//!
//! Not part of the test run. Output: stdout and target/bench/stream.json.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use dfp_bench::broker::Broker;
use dfp_bench::{DAILY_CONTROL, arg, azure_month, bench_dir, write_report};
use dfp_engine::ingest::Reader;
use dfp_engine::schema::SourceSchema;
use dfp_operators::config::{RunConfig, SinkConfig};
use dfp_operators::file_to_batch::Tasks;
use dfp_operators::kafka::KafkaSettings;
use dfp_operators::pipeline::{Input, RunOptions, RunSummary, StreamInput, StreamSource, run};
use dfp_operators::replay::{Speed, records, replay};
use dfp_operators::sink::kafka::KafkaSink;
use hdrhistogram::Histogram;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use serde_json::{Value, json};

const DFP_CONFIG: &str = include_str!("../../../configs/dfp.toml");

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A stream of `topic` for the consumer group `group`, checkpointing every epoch to `state`
/// if given.
#[allow(clippy::too_many_arguments)]
fn stream_input(
    kafka: &KafkaSettings,
    topic: &str,
    group: &str,
    period_us: i64,
    tasks: Tasks,
    bounded: bool,
    stop: Arc<AtomicBool>,
    state: Option<&Path>,
) -> Input {
    let mut s = StreamInput::kafka(kafka.clone(), topic, group, period_us);
    if let StreamSource::Kafka(k) = &mut s.source {
        k.poll = Duration::from_millis(5);
        k.stop_at_end = bounded;
    }
    s.tasks = tasks;
    s.stop = stop;
    Input::Stream(match state {
        Some(dir) => s.checkpoint_to(dir, 1),
        None => s,
    })
}

/// Bytes under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(|e| e.ok())
            .map(|e| {
                let p = e.path();
                if p.is_dir() {
                    dir_bytes(&p)
                } else {
                    e.metadata().map_or(0, |m| m.len())
                }
            })
            .sum()
    })
}

/// What a child process streams (this program re-run with `--child JSON`, so that its peak
/// memory is the stream's own).
#[derive(serde::Serialize, serde::Deserialize)]
struct Child {
    brokers: String,
    options: Vec<(String, String)>,
    topic: String,
    detections: String,
    group: String,
    epoch_us: i64,
    state: Option<PathBuf>,
    registry: PathBuf,
    dir: PathBuf,
    /// The stream stops once this file exists.
    stop_file: PathBuf,
}

/// The child process: a scoring-only stream until the stop file appears; prints its summary.
fn child(spec: &str) -> Result<()> {
    let c: Child = serde_json::from_str(spec)?;
    let schema = SourceSchema::builtin("azure")?;
    let mut config = RunConfig::from_toml(DFP_CONFIG, "configs/dfp.toml")?;
    // Every scored row a detection (mean_abs_z is positive), so latency is measured on all.
    config.detection.threshold = 0.0;
    config.inference_window.max_history = "1h".into();
    config.sinks.push(SinkConfig::Kafka {
        url: format!("kafka://{}/{}", c.brokers, c.detections),
        options: c.options.iter().cloned().collect(),
    });
    let kafka = KafkaSettings {
        brokers: c.brokers.clone(),
        options: c.options.clone(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let input = stream_input(
        &kafka,
        &c.topic,
        &c.group,
        c.epoch_us,
        Tasks {
            train: false,
            infer: true,
            payload: false,
        },
        false,
        stop.clone(),
        c.state.as_deref(),
    );
    let watcher = {
        let (stop, file) = (stop.clone(), c.stop_file.clone());
        std::thread::spawn(move || {
            while !file.exists() {
                std::thread::sleep(Duration::from_millis(20));
            }
            stop.store(true, Ordering::Relaxed);
        })
    };
    let opts = RunOptions {
        registry: c.registry.clone(),
        ..dfp_bench::run_options(&schema, input, &c.dir, config)
    };
    let summary = run(opts)?;
    let _ = watcher.join();
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

/// Peak resident memory of process `pid`, in MiB (Linux `VmHWM`).
fn peak_rss_of(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn rate(summary: &RunSummary, seconds: f64) -> Value {
    json!({
        "events": summary.stats.rows,
        "wall_seconds": seconds,
        "events_per_s": summary.stats.rows as f64 / seconds,
        "epochs": summary.epochs,
        "detections": summary.stats.detections,
    })
}

/// One fixed-rate run: produce for `seconds` at `per_s`, score in a child process
/// (checkpointing every epoch if `checkpoint`), and measure latency and the stream's peak
/// memory.
#[allow(clippy::too_many_arguments)]
fn latency(
    broker: &Broker,
    kafka: &KafkaSettings,
    root: &Path,
    templates: &[Value],
    per_s: u64,
    seconds: f64,
    epoch_us: i64,
    checkpoint: bool,
) -> Result<Value> {
    let name = format!("{per_s}{}", if checkpoint { "-ckpt" } else { "" });
    let (input_topic, output_topic) = (format!("in-{name}"), format!("out-{name}"));
    broker.topic(&input_topic, 2);
    broker.topic(&output_topic, 1);
    let run_dir = root.join(format!("latency-{name}"));
    std::fs::create_dir_all(&run_dir)?;
    // The models trained in the sustained-rate run.
    let spec = Child {
        brokers: kafka.brokers.clone(),
        options: kafka.options.clone(),
        topic: input_topic.clone(),
        detections: output_topic.clone(),
        group: format!("bench-{name}"),
        epoch_us,
        state: checkpoint.then(|| run_dir.join("state")),
        registry: root.join("stream/models"),
        dir: run_dir.clone(),
        stop_file: run_dir.join("stop"),
    };
    let runner = std::process::Command::new(std::env::current_exe()?)
        .arg("--child")
        .arg(serde_json::to_string(&spec)?)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_secs(2));
    let sink = KafkaSink::new(kafka, &input_topic)?;
    let produced: Arc<Mutex<HashMap<String, i64>>> = Arc::default();
    let n = (per_s as f64 * seconds) as usize;
    let started = Instant::now();
    for i in 0..n {
        let due = Duration::from_secs_f64(i as f64 / per_s as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
        let mut rec = templates[i % templates.len()].clone();
        let id = format!("bench-{name}-{i}");
        rec["time"] =
            json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
        rec["properties"]["id"] = json!(id);
        let user = rec["properties"]["userPrincipalName"]
            .as_str()
            .map(str::to_string);
        let text = rec.to_string();
        let t = now_ms();
        sink.produce(user.as_deref(), &text)?;
        produced
            .lock()
            .map_err(|_| anyhow::anyhow!("lock"))?
            .insert(id, t);
    }
    sink.flush()?;
    let send_seconds = started.elapsed().as_secs_f64();
    // Records of the last epoch close when the stream stops.
    std::thread::sleep(Duration::from_millis(500));
    let peak = peak_rss_of(runner.id());
    std::fs::write(&spec.stop_file, "")?;
    let out = runner.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "the stream's child process failed: {}",
        out.status
    );
    let summary: Value = serde_json::from_slice(&out.stdout)?;
    let scored = summary["stats"]["scored"].as_u64().unwrap_or(0);
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", format!("bench-read-{name}"))
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[&output_topic])?;
    let produced = produced.lock().map_err(|_| anyhow::anyhow!("lock"))?;
    // Steady state: events produced in the first second (cold model caches) and in the last
    // (their epochs close only when the stream's partitions go idle or it stops, as nothing
    // newer arrives) are left out of the percentiles; the max over every event is beside them.
    let warm_from = produced.values().min().copied().unwrap_or(0) + 1000;
    let cool_from = produced.values().max().copied().unwrap_or(0) - 1000;
    let mut hist = Histogram::<u64>::new(3)?;
    let mut max_all = 0u64;
    // The slowest events, as (latency ms, ms after the first produce), to see when they come.
    let first = produced.values().min().copied().unwrap_or(0);
    let mut slowest: Vec<(u64, i64)> = Vec::new();
    let mut seen = 0usize;
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen < scored as usize && Instant::now() < deadline {
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m?;
        let at = m.timestamp().to_millis().unwrap_or(0);
        let v: Value = serde_json::from_slice(m.payload().unwrap_or_default())?;
        if let Some(&t) = v["event_id"].as_str().and_then(|id| produced.get(id)) {
            let ms = u64::try_from(at - t).unwrap_or(0);
            max_all = max_all.max(ms);
            slowest.push((ms, t - first));
            if slowest.len() > 64 {
                slowest.sort_unstable_by(|a, b| b.cmp(a));
                slowest.truncate(8);
            }
            if t >= warm_from && t < cool_from {
                hist.record(ms)?;
            }
        }
        seen += 1;
    }
    slowest.sort_unstable_by(|a, b| b.cmp(a));
    slowest.truncate(8);
    Ok(json!({
        "target_events_per_s": per_s,
        "checkpoint_every_epoch": checkpoint,
        "achieved_events_per_s": n as f64 / send_seconds,
        "events": n,
        "scored": scored,
        "dead_letters": summary["stats"]["dead_letters"],
        "epochs": summary["epochs"],
        "stream_peak_rss_mib": peak,
        "latency_ms": {
            "samples": hist.len(),
            "p50": hist.value_at_quantile(0.5),
            "p99": hist.value_at_quantile(0.99),
            "p999": hist.value_at_quantile(0.999),
            "max": hist.max(),
            "max_including_first_and_last_second": max_all,
            "slowest_ms_and_ms_after_start": slowest,
        },
    }))
}

fn main() -> Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    if let Some(i) = argv.iter().position(|a| a == "--child") {
        return child(argv.get(i + 1).context("--child needs its JSON")?);
    }
    let users: usize = arg("--users", 200)?;
    let rates: String = arg("--rates", "200,1000".to_string())?;
    let seconds: f64 = arg("--seconds", 5.0)?;
    let epoch: String = arg("--epoch", "50ms".to_string())?;
    let epoch_us = dfp_engine::period::parse_duration(&epoch)
        .map_err(anyhow::Error::msg)?
        .num_microseconds()
        .context("epoch")?;
    let root = tempfile::tempdir_in(bench_dir())?;
    let data = root.path().join("logs");
    let g = azure_month(users, &data)?;
    let schema = SourceSchema::builtin("azure")?;
    let config = RunConfig::from_toml(DFP_CONFIG, "configs/dfp.toml")?;

    // 1. Batch pipeline, one epoch a day, each trains and scores.
    let control = root.path().join("control.json");
    std::fs::write(&control, DAILY_CONTROL)?;
    let t = Instant::now();
    let batch = run(dfp_bench::run_options(
        &schema,
        Input::control(control),
        &root.path().join("batch"),
        config.clone(),
    ))?;
    let batch_s = t.elapsed().as_secs_f64();

    // The same records through Kafka.
    let broker = Broker::start();
    // Low-latency client settings: fetches return at once, produces are not held back.
    let kafka = KafkaSettings {
        brokers: broker.address.clone(),
        options: [
            ("fetch.wait.max.ms", "5"),
            ("fetch.error.backoff.ms", "5"),
            ("linger.ms", "0"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    };
    broker.topic("logs", 2);
    let reader = Reader::new(Arc::new(schema.clone()));
    let mut files: Vec<_> = std::fs::read_dir(&data)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let recs = records(&reader, &files)?;
    let sink = KafkaSink::new(&kafka, "logs")?;
    let t = Instant::now();
    replay(
        &recs,
        Speed::Max,
        |r| sink.produce(r.key.as_deref(), &r.text),
        |_| {},
    )?;
    sink.flush()?;
    let replay_s = t.elapsed().as_secs_f64();
    let sustained = |name: &str, state: Option<&Path>| -> Result<(RunSummary, f64)> {
        let t = Instant::now();
        let summary = run(dfp_bench::run_options(
            &schema,
            stream_input(
                &kafka,
                "logs",
                &format!("bench-{name}"),
                86_400_000_000,
                Tasks {
                    train: true,
                    infer: true,
                    payload: false,
                },
                true,
                Arc::default(),
                state,
            ),
            &root.path().join(name),
            config.clone(),
        ))?;
        Ok((summary, t.elapsed().as_secs_f64()))
    };
    let (streamed, stream_s) = sustained("stream", None)?;
    let state = root.path().join("stream-ckpt/state");
    let (checkpointed, ckpt_s) = sustained("stream-ckpt", Some(&state))?;

    // 2. Latency at fixed rates, scoring only.
    let templates: Vec<Value> = recs
        .iter()
        .filter_map(|r| serde_json::from_str(&r.text).ok())
        .collect();
    let rates: Vec<u64> = rates
        .split(',')
        .map(|r| r.trim().parse())
        .collect::<std::result::Result<_, _>>()?;
    let mut fixed = Vec::new();
    for &per_s in &rates {
        for checkpoint in [false, true] {
            let result = latency(
                &broker,
                &kafka,
                root.path(),
                &templates,
                per_s,
                seconds,
                epoch_us,
                checkpoint,
            )?;
            eprintln!("{result}");
            fixed.push(result);
        }
    }
    let burst_rate = 10 * rates.iter().copied().max().unwrap_or(100);
    let burst = latency(
        &broker,
        &kafka,
        root.path(),
        &templates,
        burst_rate,
        seconds,
        epoch_us,
        true,
    )?;
    eprintln!("{burst}");
    let stream_rate = streamed.stats.rows as f64 / stream_s;
    let batch_rate = batch.stats.rows as f64 / batch_s;
    let report = json!({
        "workload": format!("azure: {users} users x 30 days x 8 files/day ({} records), epochs of a day, each trains and scores", g.records),
        "replay_to_kafka": {"seconds": replay_s, "events_per_s": recs.len() as f64 / replay_s},
        "batch": rate(&batch, batch_s),
        "stream": rate(&streamed, stream_s),
        "stream_over_batch_rate": stream_rate / batch_rate,
        "same_detections": streamed.stats.detections == batch.stats.detections,
        "stream_checkpointed": rate(&checkpointed, ckpt_s),
        "checkpointed_over_stream_rate": stream_s / ckpt_s,
        "checkpointed_same_detections": checkpointed.stats.detections == batch.stats.detections,
        "state_dir_bytes_at_end": dir_bytes(&state),
        "latency": {
            "workload": format!("scoring only with the stream's models, epochs of {epoch}, records re-stamped with the wall clock; latency = detection's broker timestamp - produce time"),
            "runs": fixed,
        },
        "burst": {
            "workload": format!("10x the highest fixed rate ({burst_rate}/s) for {seconds} s, checkpointing every epoch; stream_peak_rss_mib beside the steady runs' shows whether memory stays bounded"),
            "run": burst,
        },
    });
    write_report("stream", &report)
}
