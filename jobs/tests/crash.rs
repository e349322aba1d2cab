//! Exactly-once across crashes: a checkpointed `dfp run --stream` is killed with SIGKILL at
//! random points, at least five times, and restarted each time; its detections, scores, dead
//! letters, alerts, shadow scores, models, champions and promotions (automatic promotion is on)
//! and detections topic must then equal those of one uninterrupted run: none missing, none
//! doubled. The same for a cluster of two processes sharing the state
//! directory, every process killed at once and the whole cluster relaunched. Against a real
//! Kafka broker (tansu on 127.0.0.1, started here).

#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers: a failure is a test failure

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use common::{FAST_CONFIG, dfp_command, hostfile};
use dfp_bench::broker::Broker;
use dfp_bench::file_tree;
use dfp_engine::generate::{GenSource, GenerateConfig, generate};
use dfp_operators::checkpoint::latest_cut;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;

/// `dfp run --stream` of the `logs` topic into `root`, bounded, two workers in all: one
/// process of two, or each of the processes of `cluster` (hostfile, index) with one.
fn run_args(
    broker: &Broker,
    root: &Path,
    group: &str,
    config: &Path,
    cluster: Option<(&Path, usize)>,
) -> Vec<String> {
    let s = |p: PathBuf| p.to_string_lossy().into_owned();
    [
        "run",
        "--source",
        "azure",
        "--stream",
        &format!("kafka://{}/logs", broker.address),
        "--group",
        group,
        "--until-end",
        "--threads",
        "2",
        "--write-scores",
        "--config",
        &s(config.to_path_buf()),
        "--output",
        &s(root.join("output")),
        "--registry",
        &s(root.join("models")),
        "--detections-topic",
        &format!("{group}-detections"),
        "--clock",
        "2024-01-02T03:04:05Z",
    ]
    .iter()
    .map(|a| a.to_string())
    .chain(match cluster {
        None => vec!["--workers".into(), "2".into()],
        Some((hosts, i)) => vec![
            "--workers".into(),
            "1".into(),
            "--processes".into(),
            "2".into(),
            "--process-index".into(),
            i.to_string(),
            "--hostfile".into(),
            s(hosts.to_path_buf()),
        ],
    })
    .collect()
}

/// Every model file (name/version) and its bytes.
fn models(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut all = file_tree(dir).unwrap();
    all.retain(|name, _| name.ends_with(".dfpmodel"));
    all
}

/// Every model's aliases and the changes that made them (what, which version, by whom, why;
/// not when).
fn lifecycles(dir: &Path) -> BTreeMap<String, serde_json::Value> {
    let mut all = file_tree(dir).unwrap();
    all.retain(|name, _| name.ends_with("aliases.json"));
    all.into_iter()
        .map(|(name, bytes)| {
            let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            for change in v["history"].as_array_mut().unwrap() {
                change.as_object_mut().unwrap().remove("at");
            }
            (name, v)
        })
        .collect()
}

/// Every message of `topic`, sorted, read to the end of its partition.
fn topic(broker: &Broker, topic: &str) -> Vec<String> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker.address)
        .set("group.id", format!("check-{topic}"))
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut got = Vec::new();
    // The deadline only stops a missing end marker from hanging the test.
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{topic}: no end"
        );
        match consumer.poll(Duration::from_millis(200)) {
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
            Some(m) => {
                let m = m.unwrap();
                got.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
            }
            None => {}
        }
    }
    got.sort();
    got
}

#[test]
fn five_kill_9_restarts_give_the_uninterrupted_runs_output() {
    crash_and_compare(1, 5);
}

#[test]
fn a_cluster_killed_and_relaunched_resumes_from_its_checkpoint() {
    crash_and_compare(2, 3);
}

/// An uninterrupted run (one process), then the same stream as `processes` processes killed
/// `kills` times with SIGKILL (every process at once) and relaunched; the outputs must match.
fn crash_and_compare(processes: usize, kills_wanted: usize) {
    let broker = Broker::start();
    broker.topic("logs", 3);
    broker.topic("ref-detections", 1);
    broker.topic("crash-detections", 1);
    let root = tempfile::tempdir().unwrap();
    let logs = root.path().join("logs");
    let mut cfg = GenerateConfig::new(
        GenSource::Azure,
        10,
        24,
        NaiveDate::from_ymd_opt(2022, 8, 1).unwrap(),
        11,
    );
    cfg.files_per_day = 2;
    cfg.anomaly_days = 4;
    generate(&cfg, &logs).unwrap();
    // Retrained models wait as challengers, score in the shadow, and are promoted by the run;
    // drift that lasts retrains every model at the next epoch (a request in flight at a cut
    // is taken from the drift stage's checkpoint); familiar values are tracked (their state is
    // checkpointed with the windows).
    let config = root.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "{FAST_CONFIG}\n[lifecycle]\npromotion = \"auto\"\nmin_epochs = 2\nmin_rows = 20\n\
             min_agreement = 0.9\nmax_alert_rate_increase = 0.05\n\
             [drift]\nenabled = true\nretrain_after = 1\nretrain = \"all\"\n\
             [familiarity]\nenabled = true\n"
        ),
    )
    .unwrap();
    let replayed = dfp_command()
        .args(["replay", "--source", "azure", "--speed", "max", "--files"])
        .arg(logs.join("*.json"))
        .arg("--to")
        .arg(format!("kafka://{}/logs", broker.address))
        .output()
        .unwrap();
    assert!(replayed.status.success(), "{replayed:?}");

    // One uninterrupted run, timed only to spread the kills below over a run's length (no
    // assertion reads the time).
    let reference = root.path().join("ref");
    let started = Instant::now();
    let out = dfp_command()
        .args(run_args(&broker, &reference, "ref", &config, None))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let whole = started.elapsed();

    // The same stream, killed five times at random points of its first ~60%, then let finish.
    let crashed = root.path().join("crash");
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut kills = 0;
    let mut cuts = Vec::new();
    let hosts = root.path().join("hosts.txt");
    let mut starts = 0;
    loop {
        starts += 1;
        assert!(starts <= 20, "the run never finished");
        if processes > 1 {
            hostfile(&hosts, processes);
        }
        let mut children: Vec<_> = (0..processes)
            .map(|i| {
                let cluster = (processes > 1).then_some((hosts.as_path(), i));
                dfp_command()
                    .args(run_args(&broker, &crashed, "crash", &config, cluster))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let running = |c: &mut Vec<std::process::Child>| {
            c.iter_mut().any(|c| c.try_wait().unwrap().is_none())
        };
        if kills < kills_wanted {
            // Kill at a random point after the run has taken its next checkpoint, up to about
            // an epoch later: mid-epoch, mid-training, mid-write.
            let state = crashed.join("output/.dfp-state");
            let before = cuts.last().copied().flatten();
            // The deadline only stops a run that never checkpoints from hanging the test.
            let started = Instant::now();
            while running(&mut children)
                && latest_cut(&state, 2).ok().flatten().map(|c| c.time) <= before
            {
                assert!(started.elapsed() < Duration::from_secs(60), "no checkpoint");
                std::thread::sleep(Duration::from_millis(10));
            }
            std::thread::sleep(whole.mul_f64(rng.random_range(0.0..0.06)));
            if running(&mut children) {
                for c in &mut children {
                    let _ = c.kill(); // SIGKILL
                    c.wait().unwrap();
                }
                kills += 1;
                let cut = latest_cut(&state, 2).unwrap().map(|c| c.time);
                eprintln!(
                    "kill {kills} of {processes} processes after {:?} (whole run {whole:?}): latest cut {cut:?}",
                    started.elapsed()
                );
                cuts.push(cut);
                continue;
            }
        }
        for c in &mut children {
            let status = c.wait().unwrap();
            assert!(status.success(), "restart {starts}: {status}");
        }
        break;
    }
    assert!(
        kills >= kills_wanted,
        "only {kills} kills landed before the run finished"
    );
    assert!(
        cuts.windows(2).all(|w| w[0] < w[1]),
        "every restart resumed from a later checkpoint: {cuts:?}"
    );

    for file in [
        "dfp_detections_azure.csv",
        "dfp_detections_azure.jsonl",
        "dfp_scores_azure.csv",
        "dfp_dead_letter_azure.jsonl",
        "dfp_alerts_azure.jsonl",
        "dfp_shadow_azure.csv",
        "dfp_drift_azure.csv",
    ] {
        let want = std::fs::read_to_string(reference.join("output").join(file)).unwrap();
        let got = std::fs::read_to_string(crashed.join("output").join(file)).unwrap();
        assert_eq!(
            want.lines().count(),
            got.lines().count(),
            "{file}: lines after {kills} kills"
        );
        let diff = want
            .lines()
            .zip(got.lines())
            .find(|(a, b)| a != b)
            .map(|(a, b)| format!("\n{a}\n{b}"));
        assert!(
            want == got,
            "{file} differs after {kills} kills:{}",
            diff.unwrap_or_default()
        );
    }
    // The uninterrupted stream's detections are the recorded golden (UPDATE_GOLDEN=1 re-records).
    dfp_bench::assert_golden(
        &reference.join("output/dfp_detections_azure.csv"),
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/golden/stream/dfp_detections_azure.csv"),
    );
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(reference.join("output/dfp_run_azure.json")).unwrap(),
    )
    .unwrap();
    assert!(
        summary["stats"]["retrained"].as_u64() > Some(0),
        "the run must retrain on drift: {summary}"
    );
    let detections = std::fs::read_to_string(reference.join("output/dfp_detections_azure.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert!(detections > 0, "the run must detect something");
    let (want, got) = (
        topic(&broker, "ref-detections"),
        topic(&broker, "crash-detections"),
    );
    assert_eq!(want.len(), detections);
    assert_eq!(
        got.len(),
        want.len(),
        "detections topic after {kills} kills"
    );
    assert!(
        got == want,
        "the detections topic differs after {kills} kills"
    );
    let (want, got) = (
        models(&reference.join("models")),
        models(&crashed.join("models")),
    );
    assert_eq!(
        want.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>(),
        "model versions after {kills} kills"
    );
    assert!(want == got, "models differ after {kills} kills");
    let (want, got) = (
        lifecycles(&reference.join("models")),
        lifecycles(&crashed.join("models")),
    );
    let text = serde_json::to_string(&want).unwrap();
    assert!(
        text.contains("policy:auto") && text.contains("\"challenger\""),
        "the run must promote a challenger: {text}"
    );
    let shadow = std::fs::read_to_string(reference.join("output/dfp_shadow_azure.csv")).unwrap();
    assert!(
        shadow.lines().count() > 1,
        "the run must score in the shadow"
    );
    assert!(
        want == got,
        "champions and promotions differ after {kills} kills"
    );
}
