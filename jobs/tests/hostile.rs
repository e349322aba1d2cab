//! The hostile-input suite: one test per class of bad input or fault, run as a user (or an
//! attacker, or an unlucky operator) runs `dfp`. Each asserts what must hold: no abort, no
//! silent blindness, no write or read outside the given directories, one instance per state,
//! outputs that say when they are incomplete, and a clear error naming what is wrong.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers: a failure is a test failure

mod common;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::{FAST_CONFIG, dfp, dfp_command};
use dfp_bench::DAILY_CONTROL;
use dfp_bench::broker::Broker;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

fn report(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A small month: `days` days of Azure logs for 6 users (4 files a day) under `dir/logs`, the
/// daily control message beside them (every day trains and scores) and the fast settings.
struct Scenario {
    dir: PathBuf,
    control: PathBuf,
    config: PathBuf,
}

impl Scenario {
    fn new(dir: &Path, days: u32) -> Self {
        let out = dfp(&[
            "generate",
            "--source",
            "azure",
            "--users",
            "6",
            "--days",
            &days.to_string(),
            "--files-per-day",
            "4",
            "--seed",
            "3",
            "--out",
            dir.join("logs").to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", report(&out));
        let control = dir.join("control.json");
        std::fs::write(&control, DAILY_CONTROL).unwrap();
        let config = dir.join("fast.toml");
        std::fs::write(&config, FAST_CONFIG).unwrap();
        Scenario {
            dir: dir.to_path_buf(),
            control,
            config,
        }
    }

    /// The log files, in name order.
    fn files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.dir.join("logs"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        v.sort();
        v
    }

    /// Rewrites the records of log file `i`.
    fn edit(&self, i: usize, f: impl FnOnce(&mut Vec<serde_json::Value>)) -> PathBuf {
        let path = self.files()[i].clone();
        let mut records: Vec<serde_json::Value> =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        f(&mut records);
        std::fs::write(&path, serde_json::to_vec(&records).unwrap()).unwrap();
        path
    }

    /// `dfp run` of the control message into `out` (registry `out/models`), with `extra`.
    fn run(&self, out: &str, extra: &[&str]) -> Output {
        let out = self.dir.join(out);
        let mut args = vec![
            "run",
            "--source",
            "azure",
            "--control-messages",
            self.control.to_str().unwrap(),
            "--clock",
            "2024-01-02T03:04:05Z",
        ];
        if !extra.contains(&"--config") {
            args.extend(["--config", self.config.to_str().unwrap()]);
        }
        let registry = out.join("models");
        let output = out.join("output");
        let (registry, output) = (registry.to_str().unwrap(), output.to_str().unwrap());
        if !extra.contains(&"--registry") {
            args.extend(["--registry", registry]);
        }
        if !extra.contains(&"--output") {
            args.extend(["--output", output]);
        }
        args.extend_from_slice(extra);
        dfp(&args)
    }

    fn dead_letters(&self, out: &str) -> String {
        std::fs::read_to_string(
            self.dir
                .join(out)
                .join("output/dfp_dead_letter_azure.jsonl"),
        )
        .unwrap_or_default()
    }
}

/// The one-line summary's count of `what` ("models trained", "rows scored").
fn counted(o: &Output, what: &str) -> u64 {
    let s = String::from_utf8_lossy(&o.stdout);
    let line = s.lines().next().unwrap_or_default();
    line.split(", ")
        .find_map(|part| part.split_once(&format!(" {what}")).map(|(n, _)| n))
        .and_then(|n| n.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {what:?} in {line:?}"))
}

fn deep(levels: usize) -> String {
    "[".repeat(levels) + &"]".repeat(levels)
}

#[test]
fn deep_nesting_is_dead_lettered_in_run_ingest_and_replay() {
    let dir = tempfile::tempdir().unwrap();
    let s = Scenario::new(dir.path(), 3);
    // One record nested 100,000 levels deep in a field dfp ignores, as JSON text.
    let path = s.files()[5].clone();
    let text = std::fs::read_to_string(&path).unwrap();
    let poisoned = text.replacen(
        "{\"Level\"",
        &format!("{{\"junk\": {}, \"Level\"", deep(100_000)),
        1,
    );
    std::fs::write(&path, poisoned).unwrap();
    let out = s.run("out", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", report(&out));
    assert!(counted(&out, "rows scored") > 0);
    let dead = s.dead_letters("out");
    assert!(
        dead.contains("levels deep, over the limit of 128"),
        "{dead}"
    );
    let glob = format!("{}/logs/*.json", dir.path().display());
    let dl = dir.path().join("ingest-dead.ndjson");
    let out = dfp(&[
        "ingest",
        "--source",
        "azure",
        "--files",
        &glob,
        "--dead-letter",
        dl.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", report(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["rejected"], 1, "{}", report(&out));
    let out = dfp(&["replay", "--source", "azure", "--files", &glob]);
    assert!(out.status.success(), "{}", report(&out));
}

#[test]
fn a_record_dated_far_ahead_is_an_outlier_not_a_blindfold() {
    let dir = tempfile::tempdir().unwrap();
    let s = Scenario::new(dir.path(), 3);
    s.edit(2, |r| r[0]["time"] = "9999-01-01T00:00:00Z".into());
    let out = s.run("out", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", report(&out));
    assert!(counted(&out, "models trained") > 0, "{}", report(&out));
    assert!(counted(&out, "rows scored") > 0, "{}", report(&out));
    let dead = s.dead_letters("out");
    assert_eq!(dead.matches("an outlier").count(), 1, "{dead}");
    assert!(!dead.contains("late row"), "{dead}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("WARN") && stderr.contains("outliers"),
        "{stderr}"
    );
}

#[test]
fn a_run_that_trains_or_scores_nothing_says_so_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let s = Scenario::new(dir.path(), 3);
    // Only the generic model, whose folder cannot be created: nothing can be registered.
    let config = dir.path().join("generic-only.toml");
    std::fs::write(
        &config,
        format!("{FAST_CONFIG}\n[split]\ninclude_individual = false\n"),
    )
    .unwrap();
    let registry = dir.path().join("registry");
    std::fs::create_dir_all(&registry).unwrap();
    std::fs::write(registry.join("DFP-azure-generic_user"), "not a folder").unwrap();
    let out = s.run(
        "out",
        &[
            "--config",
            config.to_str().unwrap(),
            "--registry",
            registry.to_str().unwrap(),
        ],
    );
    let all = report(&out);
    assert_eq!(out.status.code(), Some(3), "{all}");
    assert!(all.contains("error: trained no model"), "{all}");
    assert!(
        all.contains("creating model folder") && all.contains("os error"),
        "{all}"
    );
    let tmp = std::fs::read_dir(&registry)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("tmp")
        })
        .count();
    assert_eq!(tmp, 0, "temporary files left in the registry");
    let status: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("out/output/dfp_run_azure.json")).unwrap(),
    )
    .unwrap();
    assert!(
        status["shortfalls"][0]
            .as_str()
            .unwrap()
            .contains("trained no model")
    );

    // A corrupt generic model: the users without a model of their own cannot be scored.
    let ok = s.run("good", &["--config", config.to_str().unwrap()]);
    assert_eq!(ok.status.code(), Some(0), "{}", report(&ok));
    let generic = dir.path().join("good/models/DFP-azure-generic_user");
    for e in std::fs::read_dir(&generic).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "dfpmodel") {
            std::fs::write(&p, "garbage").unwrap();
        }
    }
    let infer = dir.path().join("infer.json");
    std::fs::write(
        &infer,
        DAILY_CONTROL.replace(r#"{"type": "training", "properties": {}}, "#, ""),
    )
    .unwrap();
    let out = dfp(&[
        "run",
        "--source",
        "azure",
        "--control-messages",
        infer.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--registry",
        dir.path().join("good/models").to_str().unwrap(),
        "--output",
        dir.path().join("infer-out").to_str().unwrap(),
    ]);
    let all = report(&out);
    assert_eq!(out.status.code(), Some(3), "{all}");
    assert!(all.contains("the generic model is unusable"), "{all}");
    assert!(all.contains("scored no row"), "{all}");
}

#[test]
fn a_learning_rate_that_diverges_is_refused_by_validate() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("lr.toml");
    std::fs::write(&cfg, "[model]\nlr = 1.5\n").unwrap();
    let out = dfp(&["validate", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", report(&out));
    assert!(
        report(&out).contains("model.lr: must be in (0, 1)"),
        "{}",
        report(&out)
    );
}

#[cfg(unix)]
#[test]
fn links_planted_in_outputs_and_registry_are_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let s = Scenario::new(dir.path(), 2);
    let outside = dir.path().join("precious.txt");
    std::fs::write(&outside, "precious").unwrap();
    let output = dir.path().join("out/output");
    std::fs::create_dir_all(&output).unwrap();
    std::os::unix::fs::symlink(&outside, output.join("dfp_detections_azure.csv")).unwrap();
    let out = s.run("out", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", report(&out));
    assert!(report(&out).contains("symbolic link"), "{}", report(&out));
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "precious");

    // A model folder that links elsewhere is refused, not written through.
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let registry = dir.path().join("registry");
    std::fs::create_dir_all(&registry).unwrap();
    std::os::unix::fs::symlink(&elsewhere, registry.join("DFP-azure-generic_user")).unwrap();
    let out = s.run("out2", &["--registry", registry.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", report(&out));
    assert!(
        report(&out).contains("is a symbolic link"),
        "{}",
        report(&out)
    );
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
}

#[test]
fn control_messages_read_only_under_their_allowed_roots() {
    let dir = tempfile::tempdir().unwrap();
    let s = Scenario::new(dir.path(), 2);
    let secret = dir.path().join("secret");
    std::fs::create_dir_all(&secret).unwrap();
    std::fs::write(secret.join("passwd.json"), "root:x:0:0:TOP-SECRET\n").unwrap();
    let message = dir.path().join("logs/escape.json");
    std::fs::write(
        &message,
        r#"{"inputs":[{"tasks":[{"type":"load","properties":{"files":["../secret/*.json"]}},{"type":"inference"}]}]}"#,
    )
    .unwrap();
    let out = dfp(&[
        "run",
        "--source",
        "azure",
        "--control-messages",
        message.to_str().unwrap(),
        "--allow-root",
        dir.path().join("logs").to_str().unwrap(),
        "--output",
        dir.path().join("out").to_str().unwrap(),
        "--registry",
        dir.path().join("models").to_str().unwrap(),
    ]);
    let all = report(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("reaches outside the allowed roots"), "{all}");
    assert!(!all.contains("TOP-SECRET"), "{all}");
    // Remote file systems are named, not read as local paths.
    let s3 = dir.path().join("s3.json");
    std::fs::write(
        &s3,
        r#"{"inputs":[{"tasks":[{"type":"load","properties":{"files":["s3://bucket/logs/*.json"]}},{"type":"inference"}]}]}"#,
    )
    .unwrap();
    let out = dfp(&["validate", s3.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", report(&out));
    assert!(
        report(&out).contains("the s3:// file system is not supported"),
        "{}",
        report(&out)
    );
    let _ = s;
}

#[test]
fn a_control_topic_message_cannot_read_other_files() {
    let dir = tempfile::tempdir().unwrap();
    let s = Scenario::new(dir.path(), 2);
    let secret = dir.path().join("secret.json");
    std::fs::write(&secret, "root:x:0:0:TOP-SECRET\n").unwrap();
    let broker = Broker::start();
    broker.topic("control", 1);
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker.address)
        .create()
        .unwrap();
    let message = format!(
        r#"{{"inputs":[{{"tasks":[{{"type":"load","properties":{{"files":["{}"]}}}},{{"type":"inference"}}]}}]}}"#,
        secret.display()
    );
    producer
        .send(BaseRecord::<(), _>::to("control").payload(&message))
        .unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();
    let out = dfp(&[
        "run",
        "--source",
        "azure",
        "--control-topic",
        &format!("kafka://{}/control", broker.address),
        "--until-end",
        "--files-root",
        dir.path().join("logs").to_str().unwrap(),
        "--output",
        dir.path().join("out").to_str().unwrap(),
        "--registry",
        dir.path().join("models").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", report(&out));
    let dead = std::fs::read_to_string(dir.path().join("out/dfp_dead_letter_azure.jsonl")).unwrap();
    assert!(dead.contains("reaches outside the allowed roots"), "{dead}");
    // The message itself is in the dead letter; the file it named never is.
    assert_eq!(dead.matches("TOP-SECRET").count(), 0, "{dead}");
    let _ = s;
}

/// Waits (bounded, so a broken run fails the test instead of hanging it) until `path` exists.
fn wait_for(path: &Path) {
    let started = Instant::now();
    while !path.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(unix)]
fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

#[cfg(unix)]
#[test]
fn a_second_stream_on_the_same_state_is_refused_and_a_killed_one_leaves_no_stale_lock() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start();
    broker.topic("logs", 1);
    let url = format!("kafka://{}/logs", broker.address);
    let state = dir.path().join("state");
    let args = |out: &str| -> Vec<String> {
        vec![
            "run".into(),
            "--source".into(),
            "azure".into(),
            "--stream".into(),
            url.clone(),
            "--state-dir".into(),
            state.display().to_string(),
            "--output".into(),
            dir.path().join(out).display().to_string(),
            "--registry".into(),
            dir.path().join("models").display().to_string(),
        ]
    };
    let mut first = dfp_command()
        .args(args("first"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&dir.path().join("first/dfp_run_azure.json"));
    let second = dfp_command().args(args("second")).output().unwrap();
    let all = report(&second);
    assert_eq!(second.status.code(), Some(1), "{all}");
    assert!(
        all.contains("state directory") && all.contains("in use by another dfp process"),
        "{all}"
    );
    // Killed outright: its status still says running, and its lock dies with it.
    first.kill().unwrap();
    first.wait().unwrap();
    let status = std::fs::read_to_string(dir.path().join("first/dfp_run_azure.json")).unwrap();
    assert!(status.contains("\"running\""), "{status}");
    let mut again = dfp_command()
        .args(args("first"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The deadline only stops a restart that never starts from hanging the test.
    let started = Instant::now();
    while std::fs::read_to_string(dir.path().join("first/dfp_run_azure.json"))
        .unwrap_or_default()
        .contains(&format!("\"pid\": {}", again.id()))
        .eq(&false)
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the restart did not start"
        );
        assert!(
            again.try_wait().unwrap().is_none(),
            "the restart was refused"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(again.id(), "-TERM");
    let out = again.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", report(&out));
}

#[cfg(unix)]
#[test]
fn a_batch_run_stopped_by_a_signal_finishes_its_epoch_and_says_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let s = Scenario::new(dir.path(), 20);
    let out = dir.path().join("out");
    let child = dfp_command()
        .args([
            "run",
            "--source",
            "azure",
            "--control-messages",
            s.control.to_str().unwrap(),
            "--config",
            s.config.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--registry",
            dir.path().join("models").to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once the first epoch's models are in the registry, the run is under way.
    wait_for(
        &dir.path()
            .join("models/DFP-azure-generic_user/v000001.json"),
    );
    signal(child.id(), "-TERM");
    let done = child.wait_with_output().unwrap();
    let all = report(&done);
    assert_eq!(done.status.code(), Some(130), "{all}");
    assert!(all.contains("stopped by a signal after"), "{all}");
    let status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("dfp_run_azure.json")).unwrap()).unwrap();
    assert_eq!(status["status"], "stopped", "{status}");
    let (run, planned) = (
        status["epochs"].as_u64().unwrap(),
        status["epochs_planned"].as_u64().unwrap(),
    );
    assert!(run >= 1 && run < planned, "{status}");
    // What it did write is whole: every detection line parses.
    let detections = std::fs::read_to_string(out.join("dfp_detections_azure.jsonl")).unwrap();
    for line in detections.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap();
    }
}

#[test]
fn absurd_parallelism_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = Scenario::new(dir.path(), 1);
    for flag in ["--workers", "--threads"] {
        let out = s.run("out", &[flag, "100000"]);
        let all = report(&out);
        assert_eq!(out.status.code(), Some(1), "{all}");
        assert!(
            all.contains(&format!("{flag} 100000")) && all.contains("give at most"),
            "{all}"
        );
    }
}

#[test]
fn small_things_are_handled_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let s = Scenario::new(dir.path(), 2);
    // A byte-order mark, a number out of range and a lone surrogate: one file each.
    let bom = s.files()[0].clone();
    let mut bytes = b"\xEF\xBB\xBF".to_vec();
    bytes.extend(std::fs::read(&bom).unwrap());
    std::fs::write(&bom, bytes).unwrap();
    for (i, bad) in [(1, "1e400"), (2, "\"\\ud800\"")] {
        let path = s.files()[i].clone();
        let text = std::fs::read_to_string(&path).unwrap();
        let edited = text.replacen(
            "\"userPrincipalName\":",
            &format!("\"userPrincipalName\":{bad},\"was\":"),
            1,
        );
        assert_ne!(edited, text);
        std::fs::write(&path, edited).unwrap();
    }
    let glob = format!("{}/logs/*.json", dir.path().display());
    let dl = dir.path().join("dead.ndjson");
    let ingest = |extra: &[&str]| {
        let mut args = vec![
            "ingest",
            "--source",
            "azure",
            "--files",
            &glob,
            "--dead-letter",
        ];
        args.push(dl.to_str().unwrap());
        args.extend_from_slice(extra);
        dfp(&args)
    };
    let out = ingest(&[]);
    assert!(out.status.success(), "{}", report(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["broken_files"], 0, "{}", report(&out));
    assert_eq!(summary["rejected"], 2, "{}", report(&out));
    // CSV asked of JSON files: said, not 0 rows in silence.
    let out = ingest(&["--format", "csv"]);
    assert!(report(&out).contains("looks like JSON"), "{}", report(&out));
    // A dead-letter file that is an input would be emptied.
    let out = dfp(&[
        "ingest",
        "--source",
        "azure",
        "--files",
        &glob,
        "--dead-letter",
        bom.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", report(&out));
    assert!(
        report(&out).contains("is one of the input files"),
        "{}",
        report(&out)
    );
    // A stray last version number: training that model is an error, not a wrap to v000000.
    let registry = dir.path().join("models");
    let generic = registry.join("DFP-azure-generic_user");
    std::fs::create_dir_all(&generic).unwrap();
    std::fs::write(generic.join("v4294967295.dfpmodel"), "stray").unwrap();
    let out = s.run("out", &["--registry", registry.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", report(&out));
    assert!(
        report(&out).contains("no version number is left"),
        "{}",
        report(&out)
    );
    // models list goes on past an unreadable version and escapes what it prints.
    let weird = registry.join("DFP-azure-evil%0Aline");
    std::fs::create_dir_all(&weird).unwrap();
    std::fs::write(weird.join("v000001.dfpmodel"), "junk").unwrap();
    let out = dfp(&["models", "--registry", registry.to_str().unwrap(), "list"]);
    let all = report(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("unreadable v"), "{all}");
    assert!(all.contains("DFP-azure-evil\\nline"), "{all}");
    assert!(all.contains("DFP-azure-"), "{all}");
    // validate: an integer too large is a TOML error; a file that is not UTF-8 says so.
    let big = dir.path().join("big.toml");
    std::fs::write(&big, "[model]\nepochs = 99999999999999999999999\n").unwrap();
    let bin = dir.path().join("bin.toml");
    std::fs::write(&bin, b"[model]\nlr = \xff\xfe\n").unwrap();
    let out = dfp(&["validate", big.to_str().unwrap(), bin.to_str().unwrap()]);
    let all = report(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(!all.contains("source schema"), "{all}");
    assert!(
        all.contains("not UTF-8 text: invalid byte at offset 13"),
        "{all}"
    );
    // A negative threshold is refused.
    let out = s.run("neg", &["--threshold=-1"]);
    assert_eq!(out.status.code(), Some(1), "{}", report(&out));
    assert!(
        report(&out).contains("detection.threshold"),
        "{}",
        report(&out)
    );
    // Logs that do not go to a terminal carry no colour codes.
    let out = dfp_command()
        .env("DFP_LOG", "info")
        .args([
            "generate", "--source", "duo", "--users", "2", "--days", "1", "--out",
        ])
        .arg(dir.path().join("duo"))
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("INFO") && !log.contains('\u{1b}'), "{log}");
}

#[test]
fn malformed_and_hostile_kafka_messages_are_dead_lettered_and_the_stream_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let s = Scenario::new(dir.path(), 2);
    let broker = Broker::start();
    broker.topic("logs", 1);
    let out = dfp(&[
        "replay",
        "--source",
        "azure",
        "--files",
        &format!("{}/logs/*.json", dir.path().display()),
        "--to",
        &format!("kafka://{}/logs", broker.address),
    ]);
    assert!(out.status.success(), "{}", report(&out));
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker.address)
        .create()
        .unwrap();
    let future = r#"{"time": "9999-01-01T00:00:00Z", "properties": {"userPrincipalName": "x@y", "id": "f"}}"#;
    let deep = format!(
        "{{\"time\": \"2022-08-02T10:00:00Z\", \"junk\": {}}}",
        deep(100_000)
    );
    for bad in [future, &deep, "{not json", ""] {
        producer
            .send(BaseRecord::<(), _>::to("logs").payload(bad))
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    let out = dfp(&[
        "run",
        "--source",
        "azure",
        "--stream",
        &format!("kafka://{}/logs", broker.address),
        "--until-end",
        "--config",
        s.config.to_str().unwrap(),
        "--output",
        dir.path().join("out").to_str().unwrap(),
        "--registry",
        dir.path().join("models").to_str().unwrap(),
    ]);
    let all = report(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(!all.contains("ERROR"), "{all}");
    let dead = std::fs::read_to_string(dir.path().join("out/dfp_dead_letter_azure.jsonl")).unwrap();
    assert_eq!(dead.lines().count(), 4, "{dead}");
    for why in ["an outlier", "levels deep", "invalid JSON", "empty message"] {
        assert!(dead.contains(why), "{why} missing from {dead}");
    }
    assert!(!dead.contains("late record"), "{dead}");
}
