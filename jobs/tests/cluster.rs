//! Cluster mode on 127.0.0.1: the same control message run as 1 process x 1 worker, 1 x 4, and
//! 3 processes x 2 workers (started by `dfp cluster launch`) writes byte-identical detections,
//! scores and dead letters and the same model files; when one process of a cluster is killed
//! the other stops with an error instead of hanging.
//!
//! Where the machine allows it (root and `ip netns`), two processes also run in separate
//! network namespaces joined by a veth pair, each with its own address, as on two hosts;
//! elsewhere that test says why it cannot and passes.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers: a failure is a test failure

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use common::{FAST_CONFIG, dfp, dfp_command, hostfile};
use dfp_bench::{DAILY_CONTROL, file_tree};
use dfp_engine::generate::{GenSource, GenerateConfig, generate};
use dfp_operators::checkpoint::latest_cut;

/// A small month: 10 users, 8 days, with the control message and config beside it.
fn data(root: &Path) {
    let mut cfg = GenerateConfig::new(
        GenSource::Azure,
        10,
        8,
        NaiveDate::from_ymd_opt(2022, 8, 1).unwrap(),
        9,
    );
    cfg.files_per_day = 4;
    cfg.anomaly_days = 2;
    generate(&cfg, &root.join("logs")).unwrap();
    std::fs::write(root.join("control.json"), DAILY_CONTROL).unwrap();
    std::fs::write(root.join("config.toml"), FAST_CONFIG).unwrap();
}

/// `dfp run`'s arguments for outputs and models under `root/name`.
fn run_args(root: &Path, name: &str) -> Vec<String> {
    let p = |s: &str| root.join(s).to_string_lossy().into_owned();
    vec![
        "--source".into(),
        "azure".into(),
        "--control-messages".into(),
        p("control.json"),
        "--config".into(),
        p("config.toml"),
        "--output".into(),
        p(&format!("{name}/output")),
        "--registry".into(),
        p(&format!("{name}/models")),
        "--write-scores".into(),
        "--clock".into(),
        "2024-01-02T03:04:05Z".into(),
    ]
}

/// Every file under `dir` (relative path and bytes).
fn files(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    file_tree(dir).unwrap()
}

/// Runs the data in `root` as one process of one worker into `root/single`.
fn single(root: &Path) {
    let mut args = vec!["run".to_string()];
    args.extend(run_args(root, "single"));
    let single = dfp(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(single.status.success(), "{single:?}");
}

#[test]
fn one_process_four_workers_and_three_processes_give_the_same_bytes() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    data(root);
    single(root);

    let mut args = vec!["run".to_string(), "--workers".into(), "4".into()];
    args.extend(run_args(root, "four"));
    let four = dfp(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(four.status.success(), "{four:?}");

    let hosts = root.join("hosts.txt");
    hostfile(&hosts, 3);
    let hosts_arg = hosts.to_string_lossy().into_owned();
    let mut args = vec![
        "cluster".to_string(),
        "launch".into(),
        "--hostfile".into(),
        hosts_arg,
        "--workers".into(),
        "2".into(),
        "--".into(),
        "run".into(),
    ];
    args.extend(run_args(root, "cluster"));
    let cluster = dfp(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(cluster.status.success(), "{cluster:?}");
    let out = String::from_utf8_lossy(&cluster.stdout);
    for i in 0..3 {
        assert!(
            out.contains(&format!("[{i}] ")),
            "process {i} said nothing: {out}"
        );
    }

    let want_out = files(&root.join("single/output"));
    let want_models = files(&root.join("single/models"));
    assert!(
        want_out["dfp_detections_azure.csv"].len() > 1000,
        "the run must detect something"
    );
    for name in ["four", "cluster"] {
        let got = files(&root.join(name).join("output"));
        assert_eq!(
            want_out.keys().collect::<Vec<_>>(),
            got.keys().collect::<Vec<_>>()
        );
        for (file, bytes) in &want_out {
            assert!(got[file] == *bytes, "{name}: {file} differs");
        }
        let models = files(&root.join(name).join("models"));
        assert_eq!(
            want_models.keys().collect::<Vec<_>>(),
            models.keys().collect::<Vec<_>>(),
            "{name}: model versions"
        );
        for (file, bytes) in &want_models {
            if file.ends_with(".dfpmodel") {
                assert!(models[file] == *bytes, "{name}: {file} differs");
            }
        }
    }
}

/// Two network namespaces joined by a veth pair, removed on drop.
struct Namespaces {
    names: [String; 2],
    addresses: [String; 2],
}

impl Namespaces {
    /// Creates them, or says why it cannot.
    fn create() -> Result<Self, String> {
        let id = std::process::id() % 100_000;
        let ns = Namespaces {
            names: [format!("dfp{id}a"), format!("dfp{id}b")],
            addresses: [
                format!("10.231.{}.1", id % 250),
                format!("10.231.{}.2", id % 250),
            ],
        };
        let (a, b) = (ns.names[0].as_str(), ns.names[1].as_str());
        let (va, vb) = (format!("v{id}a"), format!("v{id}b"));
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", a],
            vec!["netns", "add", b],
            vec!["link", "add", &va, "type", "veth", "peer", "name", &vb],
            vec!["link", "set", &va, "netns", a],
            vec!["link", "set", &vb, "netns", b],
        ];
        let ca = format!("{}/24", ns.addresses[0]);
        let cb = format!("{}/24", ns.addresses[1]);
        let more: Vec<Vec<&str>> = vec![
            vec!["-n", a, "addr", "add", &ca, "dev", &va],
            vec!["-n", b, "addr", "add", &cb, "dev", &vb],
            vec!["-n", a, "link", "set", &va, "up"],
            vec!["-n", b, "link", "set", &vb, "up"],
            vec!["-n", a, "link", "set", "lo", "up"],
            vec!["-n", b, "link", "set", "lo", "up"],
        ];
        for step in steps.iter().chain(&more) {
            let out = Command::new("ip")
                .args(step)
                .output()
                .map_err(|e| format!("no ip tool: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "ip {}: {}",
                    step.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        Ok(ns)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

#[test]
fn processes_in_separate_network_namespaces_give_the_same_bytes() {
    let ns = match Namespaces::create() {
        Ok(ns) => ns,
        Err(why) => {
            eprintln!("skipped: cannot make network namespaces here ({why})");
            return;
        }
    };
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    data(root);
    single(root);

    let hosts = root.join("hosts.txt");
    std::fs::write(
        &hosts,
        format!("{}:7101\n{}:7101\n", ns.addresses[0], ns.addresses[1]),
    )
    .unwrap();
    let children: Vec<_> = (0..2)
        .map(|i| {
            Command::new("ip")
                .args(["netns", "exec", &ns.names[i]])
                .arg(env!("CARGO_BIN_EXE_dfp"))
                .arg("run")
                .args(run_args(root, "netns"))
                .args(["--processes", "2", "--process-index", &i.to_string()])
                .arg("--hostfile")
                .arg(&hosts)
                .env("DFP_LOG", "warn")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let want = files(&root.join("single/output"));
    let got = files(&root.join("netns/output"));
    assert_eq!(
        want.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>()
    );
    for (file, bytes) in &want {
        assert!(got[file] == *bytes, "{file} differs across namespaces");
    }
}

#[test]
fn a_killed_process_stops_the_others_with_an_error() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let mut cfg = GenerateConfig::new(
        GenSource::Azure,
        40,
        20,
        NaiveDate::from_ymd_opt(2022, 8, 1).unwrap(),
        9,
    );
    cfg.files_per_day = 4;
    generate(&cfg, &root.join("logs")).unwrap();
    let hosts = root.join("hosts.txt");
    hostfile(&hosts, 2);
    // A watched directory without `--until-end`: the run never ends on its own, so the kill
    // lands mid-run however fast this machine is.
    let start = |i: usize| {
        let mut c = dfp_command();
        c.arg("run")
            .args(["--source", "azure", "--watch"])
            .arg(root.join("logs"))
            .arg("--output")
            .arg(root.join("output"))
            .arg("--registry")
            .arg(root.join("models"))
            .args(["--processes", "2", "--process-index", &i.to_string()])
            .arg("--hostfile")
            .arg(&hosts)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c.spawn().unwrap()
    };
    let mut survivor = start(0);
    let mut victim = start(1);
    // Both are connected and running once the cluster's first checkpoint is cut; only then is
    // one killed. The deadline only stops a cluster that never checkpoints from hanging the test.
    let state = root.join("output/.dfp-state");
    let started = Instant::now();
    while latest_cut(&state, 2).ok().flatten().is_none() {
        if started.elapsed() > Duration::from_secs(120) || survivor.try_wait().unwrap().is_some() {
            let _ = (survivor.kill(), victim.kill());
            panic!("the cluster never checkpointed");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    victim.kill().unwrap();
    victim.wait().unwrap();
    // A deadline on the wait, not a speed check: a survivor that waited forever for its peer
    // is killed so the test fails instead of hanging.
    let started = Instant::now();
    while survivor.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            survivor.kill().unwrap();
            panic!("the survivor did not stop within 60 s of its peer's death");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = survivor.wait_with_output().unwrap();
    assert!(!out.status.success(), "the survivor must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another process of the cluster went away"),
        "{err}"
    );
}
