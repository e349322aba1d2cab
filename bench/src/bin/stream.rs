//! Streaming from Kafka to detections, on a real broker (tansu on 127.0.0.1).
//!
//! 1. Sustained rate: a month of generated Azure logs (`--users` x 30 days) replayed into a
//!    2-partition topic, then `dfp run --stream` (epochs of a day, each trains and scores) to
//!    the end; beside it the batch pipeline on the same files with the same epochs, in the same
//!    run. Reports events/s of both and their ratio.
//! 2. Latency at fixed rates: with the models of (1), a scoring-only stream (epochs of
//!    `--epoch`, 250 ms by default) fed at each rate for `--seconds`; every record is re-stamped
//!    with the wall clock as its event time and a fresh id, and every scored row is produced to
//!    a detections topic (threshold below every score). Latency of an event: the detection
//!    message's broker timestamp minus the time the record was produced (both ms, same clock);
//!    percentiles from an HDR histogram.
//!
//!   cargo run --release -p dfp-bench --bin stream -- [--users 200] [--rates 200,1000]
//!       [--seconds 5] [--epoch 250ms]
//!
//! Not part of the test run. Output: stdout and target/bench/stream.json.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use chrono::NaiveDate;
use dfp_bench::broker::Broker;
use dfp_bench::{arg, bench_dir, write_report};
use dfp_engine::generate::{GenSource, GenerateConfig, generate};
use dfp_engine::ingest::Reader;
use dfp_engine::schema::SourceSchema;
use dfp_operators::config::RunConfig;
use dfp_operators::file_to_batch::Tasks;
use dfp_operators::kafka_sink::KafkaSink;
use dfp_operators::kafka_source::KafkaSettings;
use dfp_operators::pipeline::{Input, RunOptions, RunSummary, StreamInput, run};
use dfp_operators::replay::{Speed, records, replay};
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

fn options(schema: &SourceSchema, input: Input, root: &Path, config: RunConfig) -> RunOptions {
    RunOptions {
        schema: schema.clone(),
        input,
        config,
        workers: 1,
        threads: 0,
        registry: root.join("models"),
        output: root.join("output"),
        write_scores: false,
        clock: Arc::new(chrono::Utc::now),
        progress: false,
    }
}

fn stream_input(
    kafka: &KafkaSettings,
    topic: &str,
    period_us: i64,
    tasks: Tasks,
    detections: Option<&str>,
    bounded: bool,
    stop: Arc<AtomicBool>,
) -> Input {
    let mut s = StreamInput::new(kafka.clone(), topic, &format!("bench-{topic}"), period_us);
    s.source.poll = Duration::from_millis(5);
    s.source.stop_at_end = bounded;
    s.tasks = tasks;
    s.detections_topic = detections.map(str::to_string);
    s.stop = stop;
    Input::Kafka(s)
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

/// One fixed-rate run: produce for `seconds` at `per_s`, score, and measure latency.
#[allow(clippy::too_many_arguments)]
fn latency(
    broker: &Broker,
    kafka: &KafkaSettings,
    schema: &SourceSchema,
    root: &Path,
    templates: &[Value],
    per_s: u64,
    seconds: f64,
    epoch_us: i64,
) -> Result<Value> {
    let (input_topic, output_topic) = (format!("in-{per_s}"), format!("out-{per_s}"));
    broker.topic(&input_topic, 2);
    broker.topic(&output_topic, 1);
    let mut config = RunConfig::from_toml(DFP_CONFIG, "configs/dfp.toml")?;
    config.detection.threshold = -1.0;
    config.inference_window.max_history = "1h".into();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = Tasks {
        train: false,
        infer: true,
        payload: false,
    };
    let input = stream_input(
        kafka,
        &input_topic,
        epoch_us,
        tasks,
        Some(&output_topic),
        false,
        stop.clone(),
    );
    let run_dir = root.join(format!("latency-{per_s}"));
    std::fs::create_dir_all(&run_dir)?;
    // The models trained in the sustained-rate run.
    let opts = RunOptions {
        registry: root.join("stream/models"),
        ..options(schema, input, &run_dir, config)
    };
    let runner = std::thread::spawn(move || run(opts));
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
        let id = format!("bench-{per_s}-{i}");
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
        if i % 256 == 0 {
            sink.flush()?;
        }
    }
    sink.flush()?;
    let send_seconds = started.elapsed().as_secs_f64();
    // Records of the last epoch close when the stream stops.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let summary = runner
        .join()
        .map_err(|_| anyhow::anyhow!("stream run panicked"))??;
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", format!("bench-read-{per_s}"))
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[&output_topic])?;
    let produced = produced.lock().map_err(|_| anyhow::anyhow!("lock"))?;
    let mut hist = Histogram::<u64>::new(3)?;
    let mut seen = 0usize;
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen < summary.stats.scored as usize && Instant::now() < deadline {
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m?;
        let at = m.timestamp().to_millis().unwrap_or(0);
        let v: Value = serde_json::from_slice(m.payload().unwrap_or_default())?;
        if let Some(t) = v["event_id"].as_str().and_then(|id| produced.get(id)) {
            hist.record(u64::try_from(at - t).unwrap_or(0))?;
        }
        seen += 1;
    }
    Ok(json!({
        "target_events_per_s": per_s,
        "achieved_events_per_s": n as f64 / send_seconds,
        "events": n,
        "scored": summary.stats.scored,
        "latency_ms": {
            "samples": hist.len(),
            "p50": hist.value_at_quantile(0.5),
            "p99": hist.value_at_quantile(0.99),
            "p999": hist.value_at_quantile(0.999),
            "max": hist.max(),
        },
    }))
}

fn main() -> Result<()> {
    let users: usize = arg("--users", 200)?;
    let rates: String = arg("--rates", "200,1000".to_string())?;
    let seconds: f64 = arg("--seconds", 5.0)?;
    let epoch: String = arg("--epoch", "250ms".to_string())?;
    let epoch_us = dfp_engine::period::parse_duration(&epoch)
        .map_err(anyhow::Error::msg)?
        .num_microseconds()
        .context("epoch")?;
    let root = tempfile::tempdir_in(bench_dir())?;
    let data = root.path().join("logs");
    let mut cfg = GenerateConfig::new(
        GenSource::Azure,
        users,
        30,
        NaiveDate::from_ymd_opt(2022, 8, 1).context("date")?,
        42,
    );
    cfg.files_per_day = 8;
    let g = generate(&cfg, &data)?;
    let schema = SourceSchema::builtin("azure")?;
    let config = RunConfig::from_toml(DFP_CONFIG, "configs/dfp.toml")?;

    // 1. Batch pipeline, one epoch a day, each trains and scores.
    let control = root.path().join("control.json");
    std::fs::write(
        &control,
        r#"{"inputs": [{"metadata": {"data_type": "streaming", "batching_options": {"period": "D"}},
            "tasks": [{"type": "load", "properties": {"loader_id": "fsspec", "files": ["logs/*.json"]}},
                      {"type": "training", "properties": {}}, {"type": "inference", "properties": {}}]}]}"#,
    )?;
    let t = Instant::now();
    let batch = run(options(
        &schema,
        Input::Control {
            path: control,
            files_root: None,
        },
        &root.path().join("batch"),
        config.clone(),
    ))?;
    let batch_s = t.elapsed().as_secs_f64();

    // The same records through Kafka.
    let broker = Broker::start();
    // Low-latency client settings: fetches return at once, produces are not held back.
    let kafka = KafkaSettings {
        brokers: broker.address.clone(),
        options: [("fetch.wait.max.ms", "5"), ("linger.ms", "0")]
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
    let t = Instant::now();
    let streamed = run(options(
        &schema,
        stream_input(
            &kafka,
            "logs",
            86_400_000_000,
            Tasks {
                train: true,
                infer: true,
                payload: false,
            },
            None,
            true,
            Arc::default(),
        ),
        &root.path().join("stream"),
        config,
    ))?;
    let stream_s = t.elapsed().as_secs_f64();

    // 2. Latency at fixed rates, scoring only.
    let templates: Vec<Value> = recs
        .iter()
        .filter_map(|r| serde_json::from_str(&r.text).ok())
        .collect();
    let mut fixed = Vec::new();
    for r in rates.split(',') {
        let per_s: u64 = r.trim().parse()?;
        let result = latency(
            &broker,
            &kafka,
            &schema,
            root.path(),
            &templates,
            per_s,
            seconds,
            epoch_us,
        )?;
        eprintln!("{result}");
        fixed.push(result);
    }
    let stream_rate = streamed.stats.rows as f64 / stream_s;
    let batch_rate = batch.stats.rows as f64 / batch_s;
    let report = json!({
        "workload": format!("azure: {users} users x 30 days x 8 files/day ({} records), epochs of a day, each trains and scores", g.records),
        "replay_to_kafka": {"seconds": replay_s, "events_per_s": recs.len() as f64 / replay_s},
        "batch": rate(&batch, batch_s),
        "stream": rate(&streamed, stream_s),
        "stream_over_batch_rate": stream_rate / batch_rate,
        "same_detections": streamed.stats.detections == batch.stats.detections,
        "latency": {
            "workload": format!("scoring only with the stream's models, epochs of {epoch}, records re-stamped with the wall clock; latency = detection's broker timestamp - produce time"),
            "runs": fixed,
        },
    });
    write_report("stream", &report)
}
