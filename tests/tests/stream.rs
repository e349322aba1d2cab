//! Streaming runs against a real Kafka broker (tansu, started on 127.0.0.1 by the test):
//! generated logs replayed into a topic give the same detections, scores and models as the
//! batch run of the same files with one epoch a day; the detections topic holds them too;
//! malformed messages are dead-lettered with their partition and offset while the run goes on;
//! a checkpointed stream stopped and resumed writes what one uninterrupted run writes; an
//! unreachable broker is a clear error, not a hang. (The crash test, kill -9 of the `dfp`
//! process, is in jobs/tests/crash.rs.)

#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers: a failure is a test failure

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{DAY_US, STREAMING, batch_run, lines, logs, options};
use dfp_bench::broker::Broker;
use dfp_engine::generate::GenSource;
use dfp_engine::ingest::Reader;
use dfp_engine::schema::SourceSchema;
use dfp_operators::checkpoint::CheckpointSettings;
use dfp_operators::config::SinkConfig;
use dfp_operators::kafka::KafkaSettings;
use dfp_operators::pipeline::{
    ControlTopicInput, Input, RunOptions, StreamInput, StreamSource, run,
};
use dfp_operators::replay::{Speed, records, replay};
use dfp_operators::sink::kafka::KafkaSink;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;

fn kafka(broker: &Broker) -> KafkaSettings {
    KafkaSettings {
        brokers: broker.address.clone(),
        options: Vec::new(),
    }
}

fn stream(broker: &Broker, topic: &str) -> Input {
    live(broker, topic, true, Arc::default())
}

/// A stream input; `bounded`: stop once every partition has been read to its end.
fn live(broker: &Broker, topic: &str, bounded: bool, stop: Arc<AtomicBool>) -> Input {
    let mut s = StreamInput::kafka(kafka(broker), topic, &format!("test-{topic}"), DAY_US);
    if let StreamSource::Kafka(k) = &mut s.source {
        k.stop_at_end = bounded;
    }
    s.stop = stop;
    Input::Stream(s)
}

/// `opts`, also producing the detections to `topic` on `broker`.
fn with_detections(mut opts: RunOptions, broker: &Broker, topic: &str) -> RunOptions {
    opts.config.sinks.push(SinkConfig::Kafka {
        url: format!("kafka://{}/{topic}", broker.address),
        options: Default::default(),
    });
    opts
}

/// `input`, checkpointing to `dir` at every epoch.
fn checkpointed(input: Input, dir: &Path) -> Input {
    let Input::Stream(mut s) = input else {
        panic!("not a stream")
    };
    s.checkpoint = Some(CheckpointSettings {
        dir: dir.to_path_buf(),
        every: 1,
    });
    Input::Stream(s)
}

/// Sets `stop` once the run writing into `out` has scored its first rows (a stream without
/// `--until-end` would otherwise run forever).
fn stop_after_first_scores(out: &Path, stop: &AtomicBool) {
    let scores = out.join("output/dfp_scores_azure.csv");
    let started = Instant::now();
    // The deadline only stops a broken run from hanging the test.
    while std::fs::read_to_string(&scores).map_or(0, |t| t.lines().count()) < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "nothing scored"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
}

/// Replays every file of `dir` into `topic`, keyed by user.
fn replay_dir(broker: &Broker, topic: &str, dir: &Path) -> usize {
    let reader = Reader::new(Arc::new(SourceSchema::builtin("azure").unwrap()));
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let recs = records(&reader, &files).unwrap();
    let sink = KafkaSink::new(&kafka(broker), topic).unwrap();
    replay(
        &recs,
        Speed::Max,
        |r| sink.produce(r.key.as_deref(), &r.text),
        |_| {},
    )
    .unwrap();
    sink.flush().unwrap();
    recs.len()
}

/// Everything in `topic`, waiting up to 30 s for `want` messages.
fn consume(broker: &Broker, topic: &str, want: usize) -> Vec<String> {
    let consumer: BaseConsumer = kafka(broker)
        .client_config()
        .set("group.id", "test-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut got = Vec::new();
    let started = Instant::now();
    // The deadline only stops a short topic from hanging the test (the caller checks the count).
    while got.len() < want && started.elapsed() < Duration::from_secs(30) {
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.unwrap();
            got.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
        }
    }
    got.sort();
    got
}

#[test]
fn a_replayed_stream_gives_the_batch_runs_detections_scores_and_models() {
    let broker = Broker::start();
    broker.topic("logs", 3);
    broker.topic("detections", 1);
    let root = tempfile::tempdir().unwrap();
    let data = logs(GenSource::Azure, 8, 8, &root.path().join("logs"));
    let batch = batch_run(root.path());

    let sent = replay_dir(&broker, "logs", &data);
    assert_eq!(sent as u64, batch.stats.rows, "every record replayed");
    let streamed = run(with_detections(
        options(
            "azure",
            checkpointed(stream(&broker, "logs"), &root.path().join("state")),
            &root.path().join("stream"),
            2,
        ),
        &broker,
        "detections",
    ))
    .unwrap();
    assert_eq!(streamed.stats.rows, batch.stats.rows);
    assert_eq!(streamed.epochs, batch.epochs, "one epoch a day in both");
    // Read to the end of every partition: no lag left; each epoch timed once, and the
    // checkpointed stages' states written.
    assert_eq!(streamed.stats.consumer_lag, 0);
    assert_eq!(streamed.stats.epochs_done as usize, streamed.epochs);
    assert!(streamed.stats.checkpoint_writes > 0);
    assert!(streamed.stats.detections > 0, "{}", streamed.line());
    for file in [
        "dfp_detections_azure.csv",
        "dfp_detections_azure.jsonl",
        "dfp_scores_azure.csv",
    ] {
        let b = lines(&root.path().join("batch/output").join(file));
        let s = lines(&root.path().join("stream/output").join(file));
        assert_eq!(b.len(), s.len(), "{file}");
        assert!(
            b == s,
            "{file} differs between the batch and the stream run"
        );
    }
    let models = |dir: &str| {
        let mut names: Vec<_> = std::fs::read_dir(root.path().join(dir).join("models"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        names
    };
    assert_eq!(models("batch"), models("stream"));

    // The detections topic holds the same detections as the JSON lines file.
    let mut want = lines(&root.path().join("stream/output/dfp_detections_azure.jsonl"));
    want.sort();
    assert_eq!(consume(&broker, "detections", want.len()), want);
}

#[test]
fn malformed_messages_are_dead_lettered_with_partition_and_offset() {
    let broker = Broker::start();
    broker.topic("raw", 1);
    let sink = KafkaSink::new(&kafka(&broker), "raw").unwrap();
    let good = |t: &str| {
        format!(
            r#"{{"time":"2022-08-01T{t}Z","properties":{{"id":"{t}","userPrincipalName":"u@x","appDisplayName":"Teams"}}}}"#
        )
    };
    for m in [
        good("01:00:00"),
        "{not json".to_string(),
        String::new(),
        r#"{"properties":{"id":"no-time","userPrincipalName":"u@x"}}"#.to_string(),
        good("02:00:00"),
    ] {
        sink.produce(Some("u@x"), &m).unwrap();
    }
    sink.flush().unwrap();
    let root = tempfile::tempdir().unwrap();
    let s = run(options("azure", stream(&broker, "raw"), root.path(), 1)).unwrap();
    assert_eq!(s.stats.rows, 2, "{}", s.line());
    let dead =
        std::fs::read_to_string(root.path().join("output/dfp_dead_letter_azure.jsonl")).unwrap();
    for (offset, why) in [(1, "invalid JSON"), (2, "empty message"), (3, "time")] {
        let line = dead
            .lines()
            .find(|l| l.contains("\"kafka:raw/0\"") && l.contains(&format!("\"record\":{offset}")))
            .unwrap_or_else(|| panic!("no dead letter for offset {offset} in {dead}"));
        assert!(line.contains(why), "{line}");
    }
}

#[test]
fn a_stopped_stream_finishes_what_it_read_and_commits_it() {
    let broker = Broker::start();
    broker.topic("live", 2);
    let root = tempfile::tempdir().unwrap();
    let data = logs(GenSource::Azure, 6, 4, &root.path().join("logs"));
    let sent = replay_dir(&broker, "live", &data) as u64;
    let stop = Arc::new(AtomicBool::new(false));
    let input = live(&broker, "live", false, stop.clone());
    let out = root.path().join("first");
    let first = std::thread::spawn({
        let out = out.clone();
        move || run(options("azure", input, &out, 2))
    });
    stop_after_first_scores(&out, &stop);
    let first = first.join().unwrap().unwrap();
    assert_eq!(
        first.stats.rows, sent,
        "the epochs read are finished, the open one too"
    );
    // Everything was committed: the group's next run has nothing left to read.
    let again = run(options(
        "azure",
        live(&broker, "live", true, Arc::default()),
        &root.path().join("second"),
        1,
    ))
    .unwrap();
    assert_eq!(
        first.stats.rows + again.stats.rows,
        sent,
        "{}",
        again.line()
    );
}

#[test]
fn a_checkpointed_stream_stopped_and_resumed_writes_what_one_run_writes() {
    let broker = Broker::start();
    broker.topic("logs", 2);
    broker.topic("detections", 2);
    let root = tempfile::tempdir().unwrap();
    let data = logs(GenSource::Azure, 6, 8, &root.path().join("logs"));
    let sent = replay_dir(&broker, "logs", &data) as u64;
    let once = run(options(
        "azure",
        stream(&broker, "logs"),
        &root.path().join("once"),
        2,
    ))
    .unwrap();
    assert_eq!(once.stats.rows, sent);

    // The same stream under another group, stopped after its first scores, then resumed from
    // its state directory by a second run into the same outputs.
    let state = root.path().join("state");
    let out = root.path().join("twice");
    let resumed = |stop: Arc<AtomicBool>, bounded: bool| {
        let mut input = checkpointed(live(&broker, "logs", bounded, stop), &state);
        if let Input::Stream(s) = &mut input
            && let StreamSource::Kafka(k) = &mut s.source
        {
            k.group = "resumed".into();
        }
        with_detections(options("azure", input, &out, 2), &broker, "detections")
    };
    let stop = Arc::new(AtomicBool::new(false));
    let first = std::thread::spawn({
        let opts = resumed(stop.clone(), false);
        move || run(opts)
    });
    stop_after_first_scores(&out, &stop);
    first.join().unwrap().unwrap();
    run(resumed(Arc::default(), true)).unwrap();
    for file in [
        "dfp_detections_azure.csv",
        "dfp_detections_azure.jsonl",
        "dfp_scores_azure.csv",
        "dfp_dead_letter_azure.jsonl",
    ] {
        let a = lines(&root.path().join("once/output").join(file));
        let b = lines(&root.path().join("twice/output").join(file));
        assert_eq!(a.len(), b.len(), "{file}");
        assert!(a == b, "{file} differs");
    }
    let mut want = lines(&out.join("output/dfp_detections_azure.jsonl"));
    want.sort();
    assert_eq!(consume(&broker, "detections", want.len() + 1), want);
}

#[test]
fn control_messages_from_a_topic_run_as_files_do_and_bad_ones_are_dead_lettered() {
    let broker = Broker::start();
    broker.topic("control", 1);
    let root = tempfile::tempdir().unwrap();
    logs(GenSource::Azure, 6, 8, &root.path().join("logs"));
    let batch = batch_run(root.path());

    let sink = KafkaSink::new(&kafka(&broker), "control").unwrap();
    let nothing = STREAMING.replace("logs/*.json", "nowhere/*.json");
    for m in [STREAMING, "{not json", nothing.as_str()] {
        sink.produce(None, m).unwrap();
    }
    sink.flush().unwrap();
    let topic = |stop_at_end| {
        Input::ControlTopic(ControlTopicInput {
            kafka: kafka(&broker),
            topic: "control".into(),
            group: "dfp-control".into(),
            poll: Duration::from_millis(100),
            commit: true,
            files_root: root.path().to_path_buf(),
            allowed_roots: Vec::new(),
            stop_at_end,
            stop: Arc::default(),
            state_dir: Some(root.path().join("state")),
            strict: false,
        })
    };
    let out = root.path().join("topic");
    let first = run(options("azure", topic(true), &out, 2)).unwrap();
    assert_eq!(first.stats.rows, batch.stats.rows, "{}", first.line());
    assert_eq!(first.stats.dead_letters, batch.stats.dead_letters + 2);
    for file in [
        "dfp_detections_azure.csv",
        "dfp_detections_azure.jsonl",
        "dfp_scores_azure.csv",
    ] {
        let b = std::fs::read_to_string(root.path().join("batch/output").join(file)).unwrap();
        let t = std::fs::read_to_string(out.join("output").join(file)).unwrap();
        assert!(b == t, "{file} differs between the file and the topic");
    }
    let dead = std::fs::read_to_string(out.join("output/dfp_dead_letter_azure.jsonl")).unwrap();
    for (offset, why) in [(1, "not valid JSON"), (2, "match no file")] {
        let line = dead
            .lines()
            .find(|l| {
                l.contains("\"kafka:control/0\"") && l.contains(&format!("\"record\":{offset}"))
            })
            .unwrap_or_else(|| panic!("no dead letter for offset {offset} in {dead}"));
        assert!(
            line.contains(why) && line.contains("control_topic"),
            "{line}"
        );
    }
    // Started again, the group and the state directory have it all done: nothing runs twice.
    let before = std::fs::read(out.join("output/dfp_scores_azure.csv")).unwrap();
    let again = run(options("azure", topic(true), &out, 1)).unwrap();
    assert_eq!(again.stats.rows, 0, "{}", again.line());
    assert_eq!(
        std::fs::read(out.join("output/dfp_scores_azure.csv")).unwrap(),
        before
    );
}

#[test]
fn an_unreachable_broker_is_a_clear_error() {
    // Nothing listens on port 1.
    let settings = KafkaSettings {
        brokers: "127.0.0.1:1".into(),
        options: Vec::new(),
    };
    let mut stream = StreamInput::kafka(settings, "logs", "g", DAY_US);
    if let StreamSource::Kafka(k) = &mut stream.source {
        k.stop_at_end = true;
    }
    let input = Input::Stream(stream);
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(run(options("azure", input, &dir, 1)).map(|s| s.line()));
    });
    // A deadline on the wait, not a speed check: a run that retried forever would otherwise
    // hang the test instead of failing it.
    let err = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the run gave up on the broker")
        .unwrap_err()
        .to_string();
    assert!(err.contains("127.0.0.1:1") && err.contains("logs"), "{err}");
}

#[test]
fn verdicts_from_the_feedback_topic_are_recorded_once_and_bad_ones_kept() {
    let broker = Broker::start();
    broker.topic("verdicts", 1);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    logs(GenSource::Azure, 8, 9, &root.join("logs"));
    let first = batch_run(root);
    assert!(first.stats.detections >= 2);
    let ids: Vec<String> =
        std::fs::read_to_string(root.join("batch/output/dfp_detections_azure.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["detection_id"].as_str().unwrap().to_string()
            })
            .collect();
    let sink = KafkaSink::new(&kafka(&broker), "verdicts").unwrap();
    for text in [
        format!(
            r#"{{"detection_id":"{}","label":"true_positive","by":"ana"}}"#,
            ids[0]
        ),
        format!(
            r#"{{"detection_id":"{}","label":"true_positive","by":"ana"}}"#,
            ids[0]
        ),
        format!(
            r#"{{"detection_id":"{}","label":"benign","note":"travel","suppress_for_days":3}}"#,
            ids[1]
        ),
        r#"{"detection_id":"00000000deadbeef","label":"benign"}"#.to_string(),
        r#"{"detection_id":"x","label":"maybe"}"#.to_string(),
        "not json".to_string(),
    ] {
        sink.produce(None, &text).unwrap();
    }
    sink.flush().unwrap();
    // The same run again, reading the topic: the verdicts name its detections.
    let control = root.join("control.json");
    let run_reading = |out: &str| {
        let mut opts = options("azure", common::control(&control), &root.join(out), 2);
        opts.config.feedback.topic = Some(format!("kafka://{}/verdicts", broker.address));
        run(opts).unwrap()
    };
    let second = run_reading("second");
    let report = second.feedback.clone().unwrap();
    assert_eq!(
        (
            report.recorded,
            report.duplicates,
            report.unmatched,
            report.malformed
        ),
        (2, 1, 1, 2),
        "{}",
        second.line()
    );
    let out = root.join("second/output");
    assert_eq!(lines(&out.join("dfp_feedback_azure.jsonl")).len(), 2);
    let kept = std::fs::read_to_string(out.join("dfp_feedback_unmatched_azure.jsonl")).unwrap();
    assert!(
        kept.contains("00000000deadbeef") && kept.contains("not a verdict"),
        "{kept}"
    );
    assert!(kept.contains("kafka:verdicts/0@5"), "{kept}");
    let rules = std::fs::read_to_string(root.join("second/models/suppressions.jsonl")).unwrap();
    assert_eq!(rules.lines().count(), 1, "{rules}");
    assert!(rules.contains(&ids[1]) && rules.contains("travel"));
    // The group committed what it read: the next run reads nothing again.
    let third = run_reading("third");
    assert_eq!(third.feedback.unwrap(), Default::default());
}

#[test]
fn drift_notifications_reach_the_webhook_and_a_kafka_topic_once_each() {
    use dfp_bench::net::free_port;
    use dfp_bench::webhook::Webhook;
    let broker = Broker::start();
    broker.topic("notifications", 1);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let input = common::rollout_logs(
        root,
        Some(dfp_engine::generate::Rollout {
            day: 10,
            share: 0.8,
        }),
    );
    let port = free_port();
    let hook = Webhook::on(port);
    let mut opts = options("azure", input, root, 1);
    opts.config.drift.enabled = true;
    let n = &mut opts.config.notifications;
    n.webhook = Some(format!("http://127.0.0.1:{port}/hook"));
    n.kafka = Some(format!("kafka://{}/notifications", broker.address));
    n.flush_seconds = 30;
    let summary = dfp_operators::pipeline::run(opts).unwrap();
    assert_eq!(summary.stats.drifted.get("browser"), Some(&2));
    // One feature_drift per scoring day, the same on both destinations.
    let drift = |ns: Vec<serde_json::Value>| -> Vec<(u64, String, String)> {
        let mut v: Vec<_> = ns
            .into_iter()
            .filter(|n| n["kind"] == "feature_drift")
            .map(|n| {
                let id = n["id"].as_str().unwrap().to_string();
                let feature = n["details"]["feature"].as_str().unwrap().to_string();
                (n["epoch"].as_u64().unwrap(), feature, id)
            })
            .collect();
        v.sort();
        v
    };
    let hooked = drift(hook.received());
    assert_eq!(hooked.len(), 2, "{hooked:?}");
    assert!(hooked.iter().all(|(_, f, _)| f == "browser"));
    let topic: Vec<serde_json::Value> = consume(&broker, "notifications", 2)
        .iter()
        .map(|m| serde_json::from_str(m).unwrap())
        .collect();
    assert_eq!(drift(topic), hooked);
    assert!(!root.join("output/dfp_notifications_outbox.jsonl").exists());
}
