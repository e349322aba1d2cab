//! The `dfp` command line, run as a user runs it: exit codes, what it prints, the files it
//! writes.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers: a failure is a test failure

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::dfp;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn shared() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/morpheus");
    p.is_dir().then_some(p)
}

#[test]
fn validate_accepts_every_morpheus_control_message() {
    let Some(fixtures) = shared() else { return };
    let mut files: Vec<String> = std::fs::read_dir(fixtures.join("control_messages"))
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .collect();
    files.sort();
    let mut args = vec!["validate"];
    args.extend(files.iter().map(String::as_str));
    let out = dfp(&args);
    assert!(
        out.status.success(),
        "{}{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout(&out).matches("valid control message").count(), 4);
}

#[test]
fn validate_accepts_the_shipped_schemas() {
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    for (name, kind) in [
        ("azure.toml", "valid source schema"),
        ("duo.toml", "valid source schema"),
        ("dfp.toml", "valid run configuration"),
        ("morpheus.toml", "valid run configuration"),
    ] {
        let out = dfp(&["validate", configs.join(name).to_str().unwrap()]);
        assert!(out.status.success(), "{name}: {}", stdout(&out));
        assert!(stdout(&out).contains(kind), "{name}: {}", stdout(&out));
    }
}

#[test]
fn run_names_a_missing_control_message_and_a_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.json");
    let out = dfp(&[
        "run",
        "--source",
        "azure",
        "--control-messages",
        missing.to_str().unwrap(),
        "--output",
        dir.path().join("out").to_str().unwrap(),
        "--registry",
        dir.path().join("models").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.json"));
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[detection]\nthreshold = \"high\"\n").unwrap();
    let out = dfp(&["validate", cfg.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stdout(&out).contains("threshold"), "{}", stdout(&out));
}

/// `dfp demo` on 8 users and 6 days (4 to train) into `dir`.
fn small_demo(dir: &Path) -> Output {
    dfp(&[
        "demo",
        "--users",
        "8",
        "--days",
        "6",
        "--train-days",
        "4",
        "--dir",
        dir.to_str().unwrap(),
    ])
}

#[test]
fn demo_trains_scores_and_prints_the_detection_table() {
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo");
    let out = small_demo(&demo);
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "anomaly kind",
        "recall",
        "precision",
        "ROC-AUC",
        "scored by",
        "alerts after suppression",
        "dfp_detections_azure.csv",
        "dfp_alerts_azure.jsonl",
    ] {
        assert!(text.contains(needle), "{needle} missing from {text}");
    }
    assert!(demo.join("output/dfp_scores_azure.csv").is_file());
    let out = dfp(&[
        "models",
        "--registry",
        demo.join("models").to_str().unwrap(),
        "list",
    ]);
    assert!(
        stdout(&out).contains("DFP-azure-generic_user"),
        "{}",
        stdout(&out)
    );
}

/// A headless chromium (`DFP_CHROMIUM`, else `chromium`; `bash .ci/run` installs Debian's)
/// run on `args`; panics saying how to install it when it cannot start.
fn chromium(args: &[&str]) -> Output {
    let bin = std::env::var("DFP_CHROMIUM").unwrap_or_else(|_| "chromium".to_string());
    std::process::Command::new(&bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot start {bin:?} ({e}): bash .ci/run installs chromium"))
}

#[test]
fn the_report_of_a_run_loads_in_a_real_browser_with_its_charts_drawn() {
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo");
    let out = small_demo(&demo);
    common::succeeded(&out);
    // The demo writes the report and says where.
    let page = demo.join("output/dfp_report_azure.html");
    assert!(
        stdout(&out).contains(page.to_str().unwrap()),
        "{}",
        stdout(&out)
    );
    let detections = std::fs::read_to_string(demo.join("output/dfp_detections_azure.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert!(detections > 5, "{detections} detections");
    // `dfp report` writes it again, capped at 5 points; a line of the alerts that is not JSON
    // is counted on the page.
    let alerts = demo.join("output/dfp_alerts_azure.jsonl");
    let mut text = std::fs::read_to_string(&alerts).unwrap();
    text.push_str("{not json\n");
    std::fs::write(&alerts, text).unwrap();
    let capped = dir.path().join("capped.html");
    let out = dfp(&[
        "report",
        "--output",
        demo.join("output").to_str().unwrap(),
        "--to",
        capped.to_str().unwrap(),
        "--max-points",
        "5",
    ]);
    common::succeeded(&out);
    let html = std::fs::read_to_string(&capped).unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "the page loads nothing"
    );
    let url = |p: &Path| format!("file://{}", p.display());
    for (file, points) in [(&page, detections.min(2000)), (&capped, 5)] {
        let dom = chromium(&["--dump-dom", &url(file)]);
        let dom = String::from_utf8_lossy(&dom.stdout);
        let root = dom
            .lines()
            .find(|l| l.starts_with("<html"))
            .unwrap_or_default();
        // The script ran to its end with no error, and every chart has drawn: the timeline
        // with one point per detection shown, a distribution per model, the features, drift.
        assert!(root.contains("data-ready=\"1\""), "{root}");
        assert!(!root.contains("data-errors"), "script errors: {root}");
        assert!(
            root.contains(&format!("data-points=\"{points}\"")),
            "{root}"
        );
        let charts: usize = root
            .split("data-charts=\"")
            .nth(1)
            .and_then(|r| r.split('"').next()?.parse().ok())
            .unwrap();
        assert!(charts >= 5, "{root}");
        assert!(dom.contains("<h2>Drift per feature</h2>") && dom.contains("<h2>Alerts</h2>"));
    }
    assert!(html.contains("the timeline and the detection table show the 5 strongest"));
    // dfp's rule: one feature far out is a detection too, and the page says so.
    assert!(html.contains("Rows whose max_abs_z is above 30 are detections too"));
    assert!(html.contains("1 lines of") && html.contains("that are not JSON"));
    // Each detection's own fields are in its row.
    assert!(html.contains("<th>event</th>") && html.contains("appDisplayName="));
    let shot = dir.path().join("report.png");
    let out = chromium(&[
        "--window-size=1200,1600",
        &format!("--screenshot={}", shot.display()),
        &url(&page),
    ]);
    assert!(shot.is_file(), "{}", String::from_utf8_lossy(&out.stderr));
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{} bytes",
        png.len()
    );
}

#[test]
fn validate_rejects_a_broken_message_listing_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.json");
    std::fs::write(
        &path,
        r#"{"inputs":[{"tasks":[{"type":"load","properties":{"files":["*.json"]}},{"type":"trainig"}],
            "metadata":{"data_type":"payload","batching_options":{"period":"fortnight","end_time":"31/08/2022"}}}]}"#,
    )
    .unwrap();
    let out = dfp(&["validate", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    for want in [
        "inputs[0].tasks[1].type: unknown task type \"trainig\"",
        "inputs[0].metadata.batching_options.period: period \"fortnight\" is not a period dfp knows",
        "inputs[0].metadata.batching_options.end_time:",
        "broken.json",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}

#[test]
fn validate_reports_unreadable_and_non_json_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.json");
    std::fs::write(&path, "inputs: []").unwrap();
    let out = dfp(&["validate", path.to_str().unwrap(), "/nonexistent/m.json"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(text.contains("not valid JSON"), "{text}");
    assert!(text.contains("/nonexistent/m.json"), "{text}");
}

#[test]
fn ingest_dead_letters_bad_records_and_broken_files_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let good = r#"{"timestamp":1659363123,"txid":"a","user":{"name":"u1"},"result":"success"}"#;
    std::fs::write(
        dir.path().join("DUO_1.json"),
        format!("[{good},{{\"txid\":\"b\"}},{good}]"),
    )
    .unwrap();
    std::fs::write(dir.path().join("DUO_2.json"), format!("[{good},{good}")).unwrap();
    std::fs::write(dir.path().join("DUO_3.json"), b"\x00\x01binary").unwrap();
    let dead = dir.path().join("dead.ndjson");
    let glob = format!("{}/DUO_*.json", dir.path().display());
    let out = dfp(&[
        "ingest",
        "--source",
        "duo",
        "--files",
        &glob,
        "--dead-letter",
        dead.to_str().unwrap(),
    ]);
    common::succeeded(&out);
    let summary: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(summary["files"], 3);
    assert_eq!(summary["rows"], 4);
    assert_eq!(summary["rejected"], 1);
    assert_eq!(summary["broken_files"], 2);
    let lines = std::fs::read_to_string(&dead).unwrap();
    assert_eq!(lines.lines().count(), 3);
    assert!(
        lines.contains("DUO_1.json") && lines.contains("`timestamp`"),
        "{lines}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("DUO_3.json") && stderr.contains("not JSON"),
        "{stderr}"
    );
}

#[test]
fn ingest_rejects_an_unknown_source_clearly() {
    let out = dfp(&["ingest", "--source", "okta", "--files", "x.json"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown source schema \"okta\"") && err.contains("azure, duo"),
        "{err}"
    );
}

#[test]
fn generate_writes_morpheus_shaped_files_a_json_reader_loads() {
    let dir = tempfile::tempdir().unwrap();
    for (source, prefix, paths) in [
        (
            "azure",
            "AZUREAD_",
            &[
                "time",
                "properties.userPrincipalName",
                "properties.deviceDetail.browser",
                "properties.location.city",
                "properties.status.failureReason",
                "properties.id",
            ][..],
        ),
        (
            "duo",
            "DUO_",
            &[
                "timestamp",
                "txid",
                "user.name",
                "access_device.browser",
                "access_device.location.city",
                "auth_device.name",
                "result",
            ][..],
        ),
    ] {
        let out = dir.path().join(source);
        let args = [
            "generate",
            "--source",
            source,
            "--users",
            "12",
            "--days",
            "7",
            "--seed",
            "3",
            "--out",
            out.to_str().unwrap(),
        ];
        let run = dfp(&args);
        common::succeeded(&run);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        assert!(files.len() >= 7, "{source}: {} files", files.len());
        for f in &files {
            let name = f.file_name().unwrap().to_str().unwrap();
            assert!(
                name.starts_with(prefix) && name.ends_with("Z.json"),
                "{name}"
            );
            let records: Vec<serde_json::Value> =
                serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap();
            for r in &records {
                for p in paths {
                    let v = p.split('.').fold(r, |v, k| &v[k]);
                    assert!(!v.is_null(), "{name}: {p} missing in {r}");
                }
            }
        }
        let labels = std::fs::read_to_string(out.join("labels.jsonl")).unwrap();
        assert!(labels.lines().count() > 0, "{source}: no labels");
        let first: serde_json::Value =
            serde_json::from_str(labels.lines().next().unwrap()).unwrap();
        for k in ["event_id", "user", "timestamp", "kind"] {
            assert!(first.get(k).is_some(), "label lacks {k}");
        }
        // Same seed, same bytes.
        let again = dir.path().join(format!("{source}-again"));
        let mut args2 = args;
        args2[10] = again.to_str().unwrap();
        assert!(dfp(&args2).status.success());
        for f in &files {
            let twin = again.join(f.file_name().unwrap());
            assert_eq!(std::fs::read(f).unwrap(), std::fs::read(twin).unwrap());
        }
    }
}

/// A registry with two versions of one model, trained through the engine's API on generated
/// logs.
fn registry_with_a_model(dir: &Path) -> String {
    use dfp_engine::model::{CpuBackend, ModelConfig, TrainingSet, train_models};
    use dfp_engine::schema::SourceSchema;
    let data = dir.join("data");
    let out = dfp(&[
        "generate",
        "--source",
        "duo",
        "--users",
        "2",
        "--days",
        "3",
        "--out",
        data.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let schema = SourceSchema::builtin("duo").unwrap();
    let all = dfp_engine::frame::read_log_dir(&data, &schema, 1).unwrap();
    let name = "DFP-duo-generic_user";
    let config = ModelConfig {
        encoder_layers: vec![8],
        decoder_layers: vec![],
        epochs: 1,
        ..ModelConfig::default()
    };
    let backend = CpuBackend::new(1).unwrap();
    let model = train_models(
        &backend,
        &schema,
        &config,
        &[TrainingSet { name, rows: &all }],
    )
    .remove(0)
    .unwrap();
    let registry = dfp_engine::registry::Registry::open(&dir.join("models")).unwrap();
    registry.register(&model).unwrap();
    registry.register(&model).unwrap();
    name.to_string()
}

#[test]
fn models_list_and_show_read_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    let name = registry_with_a_model(dir.path());
    let reg = dir.path().join("models");
    let reg = reg.to_str().unwrap();
    let out = dfp(&["models", "list", "--registry", reg]);
    assert!(out.status.success());
    let text = stdout(&out);
    let line = text
        .lines()
        .find(|l| l.starts_with(&name))
        .expect("model listed");
    assert_eq!(line.split_whitespace().nth(1), Some("2"), "{line}");
    let out = dfp(&["models", "show", &name, "--registry", reg]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["version"], 2);
    assert_eq!(
        v["header"]["config"]["encoder_layers"],
        serde_json::json!([8])
    );
    let out = dfp(&["models", "show", "DFP-duo-nobody", "--registry", reg]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no model \"DFP-duo-nobody\""));
    let out = dfp(&[
        "models",
        "list",
        "--registry",
        dir.path().join("absent").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
}

#[test]
fn models_promote_and_rollback_move_the_champion_and_refuse_what_does_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    let name = registry_with_a_model(dir.path());
    let reg = dir.path().join("models");
    let reg = reg.to_str().unwrap();
    let listed = || {
        let out = dfp(&["models", "list", "--registry", reg]);
        assert!(out.status.success(), "{}", stdout(&out));
        let text = stdout(&out);
        let line = text.lines().find(|l| l.starts_with(&name)).unwrap();
        let cols: Vec<String> = line.split_whitespace().map(String::from).collect();
        (cols[2].clone(), cols[3].clone())
    };
    assert_eq!(listed(), ("-".into(), "-".into()));
    let refused = |args: &[&str], expect: &str| {
        let out = dfp(args);
        assert!(!out.status.success(), "{}", stdout(&out));
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(err.contains(&name) && err.contains(expect), "{err}");
    };
    refused(
        &[
            "models",
            "promote",
            &name,
            "--version",
            "7",
            "--registry",
            reg,
        ],
        "no version 7",
    );
    refused(
        &["models", "rollback", &name, "--registry", reg],
        "no champion",
    );
    // A hostile name is refused without touching anything outside the registry.
    let hostile = "DFP-azure-../../outside";
    let out = dfp(&[
        "models",
        "promote",
        hostile,
        "--version",
        "1",
        "--registry",
        reg,
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no version 1"));
    assert!(!dir.path().join("outside").exists());
    for v in ["1", "2"] {
        let out = dfp(&[
            "models",
            "promote",
            &name,
            "--version",
            v,
            "--registry",
            reg,
        ]);
        common::succeeded(&out);
    }
    assert_eq!(listed(), ("2".into(), "-".into()));
    let out = dfp(&[
        "models",
        "rollback",
        &name,
        "--why",
        "noisy",
        "--registry",
        reg,
    ]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("from version 2 to version 1"));
    assert_eq!(listed(), ("1".into(), "-".into()));
    refused(
        &["models", "rollback", &name, "--registry", reg],
        "no previous champion",
    );
    // The rolled-back version is kept, marked, with its history.
    let out = dfp(&["models", "show", &name, "--version", "2", "--registry", reg]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["rolled_back"], true);
    assert_eq!(v["aliases"], serde_json::json!([]));
    let changes = v["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert_eq!(changes[1]["action"], "rollback");
    assert_eq!(changes[1]["why"], "noisy");
    assert_eq!(v["lineage"]["challenged"], 1);
}

#[test]
fn models_shadow_compares_each_challenger_with_its_champion() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let missing = dfp(&["models", "shadow", "--output", out, "--source", "duo"]);
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr).into_owned();
    assert!(err.contains("dfp_shadow_duo.csv"), "{err}");
    std::fs::write(
        dir.path().join("dfp_shadow_duo.csv"),
        format!(
            "{}\ne1,u,t,DFP-duo-u,1,2,1.0,2.0,0,0,false,true\ne2,u,t,DFP-duo-u,1,2,3.0,4.0,0,0,true,true\n",
            dfp_operators::shadow::HEADER
        ),
    )
    .unwrap();
    let shown = dfp(&[
        "models", "shadow", "--output", out, "--source", "duo", "--json",
    ]);
    common::succeeded(&shown);
    let v: serde_json::Value = serde_json::from_str(stdout(&shown).trim()).unwrap();
    assert_eq!(v["model"], "DFP-duo-u");
    assert_eq!(v["rows"], 2);
    assert_eq!(v["agreement"], 0.5);
    assert_eq!(v["challenger_alert_rate"], 1.0);
    let table = dfp(&["models", "shadow", "--output", out, "--source", "duo"]);
    assert!(
        stdout(&table)
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("DFP-duo-u")
    );
}

#[test]
fn unknown_keys_are_warnings_and_strict_mode_makes_them_problems() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.json");
    std::fs::write(
        &path,
        r#"{"inputs":[{"tasks":[{"type":"load","properties":{"files":["*.json"]}},{"type":"training"}],
            "metadata":{"batching_options":{"period":"1d","parser_kwargs":{"lines":false},"schema":{"encoding":null}}}}]}"#,
    )
    .unwrap();
    let out = dfp(&["validate", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stdout(&out));
    let warned = String::from_utf8_lossy(&out.stderr);
    assert!(
        warned.contains("batching_options.parser_kwargs") && warned.contains("ignored"),
        "{warned}"
    );
    let out = dfp(&["validate", "--strict", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("batching_options.schema: unknown key"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn globs_resolve_in_the_working_directory_when_only_there_they_match() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let out = dfp(&[
        "generate",
        "--source",
        "duo",
        "--users",
        "3",
        "--days",
        "2",
        "--out",
        work.join("logs").to_str().unwrap(),
    ]);
    assert!(out.status.success());
    // The message lives elsewhere; its glob is relative, as Morpheus writes them.
    let messages = dir.path().join("messages");
    std::fs::create_dir_all(&messages).unwrap();
    let message = messages.join("m.json");
    std::fs::write(
        &message,
        r#"{"inputs":[{"tasks":[{"type":"load","properties":{"files":["logs/*.json"]}}]}]}"#,
    )
    .unwrap();
    let out = common::dfp_command()
        .current_dir(&work)
        .env("DFP_LOG", "info")
        .args(["plan", message.to_str().unwrap()])
        .output()
        .unwrap();
    let all = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{all}");
    assert!(all.contains("resolving them there"), "{all}");
    assert!(all.contains("2 batches"), "{all}");
}

#[test]
fn models_with_an_mlflow_registry_push_promotions_and_sync_says_what_it_could_not_push() {
    use dfp_bench::mlflow::MlflowServer;
    use dfp_bench::net::free_port;
    let dir = tempfile::tempdir().unwrap();
    let name = registry_with_a_model(dir.path());
    let cache = dir.path().join("models");
    let cache = cache.to_str().unwrap();
    // Down: the promotion is made locally, the command fails naming the server, nothing lost.
    let port = free_port();
    let uri = format!("mlflow+http://127.0.0.1:{port}");
    let mlflow = [
        "--registry",
        &uri,
        "--registry-cache",
        cache,
        "--mlflow-flush",
        "1",
    ];
    let with = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(mlflow);
        dfp(&all)
    };
    let out = with(&["models", "promote", &name, "--version", "1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && err.contains("dfp models sync"),
        "{err}"
    );
    let out = dfp(&["models", "list", "--registry", cache]);
    let text = stdout(&out);
    let line = text.lines().find(|l| l.starts_with(&name)).unwrap();
    assert_eq!(line.split_whitespace().nth(2), Some("1"), "{line}");
    // Up: sync pushes both versions and the champion; a rollback is pushed at once.
    let server = MlflowServer::on(port);
    let out = with(&["models", "sync"]);
    common::succeeded(&out);
    assert!(
        stdout(&out).contains("2 versions and 1 alias updates pushed"),
        "{}",
        stdout(&out)
    );
    let out = with(&["models", "promote", &name, "--version", "2"]);
    assert!(out.status.success());
    assert!(
        stdout(&out).contains("0 versions and 1 alias updates pushed"),
        "{}",
        stdout(&out)
    );
    let out = with(&["models", "rollback", &name]);
    assert!(out.status.success());
    // The 10 s request timeout only stops a request MLflow never answers from hanging.
    let client =
        dfp_operators::mlflow::Client::new(&server.uri(), std::time::Duration::from_secs(10))
            .unwrap();
    let model = client.model(&name).unwrap();
    assert_eq!(model["aliases"][0]["alias"], "champion");
    assert_eq!(model["aliases"][0]["version"], "1");
    // Without MLflow, sync says what it needs; a registry URI it cannot use is refused.
    let out = dfp(&["models", "sync", "--registry", cache]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("mlflow+http://HOST:PORT"));
    let out = dfp(&["models", "list", "--registry", "s3://bucket/models"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("a registry is a directory or"));
}

#[test]
fn feedback_records_verdicts_by_detection_id_and_reports_precision() {
    let dir = tempfile::tempdir().unwrap();
    let ids = |demo: &Path| -> Vec<String> {
        let out = small_demo(demo);
        common::succeeded(&out);
        std::fs::read_to_string(demo.join("output/dfp_detections_azure.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["detection_id"].as_str().unwrap().to_string()
            })
            .collect()
    };
    let first = ids(&dir.path().join("a"));
    // The same events give the same ids in another run.
    assert_eq!(first, ids(&dir.path().join("b")));
    assert!(first.len() >= 3, "{first:?}");
    let output = dir.path().join("a/output");
    let output = output.to_str().unwrap();
    let give = |id: &str, label: &str| {
        dfp(&[
            "feedback",
            "--output",
            output,
            "--detection",
            id,
            "--label",
            label,
            "--by",
            "ana",
        ])
    };
    for (id, label) in [
        (&first[0], "true_positive"),
        (&first[1], "benign"),
        (&first[2], "true_positive"),
    ] {
        let out = give(id, label);
        common::succeeded(&out);
        assert!(stdout(&out).contains(label));
    }
    // Again: reported, not written twice; changed: the latest counts.
    let out = give(&first[0], "true_positive");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not recorded twice"));
    let out = give(&first[2], "false_positive");
    assert!(
        stdout(&out).contains("was true_positive"),
        "{}",
        stdout(&out)
    );
    // Unknown: exit 1, kept in the unmatched file.
    let out = give("00000000deadbeef", "benign");
    assert_eq!(out.status.code(), Some(1));
    let kept = std::fs::read_to_string(
        dir.path()
            .join("a/output/dfp_feedback_unmatched_azure.jsonl"),
    )
    .unwrap();
    assert!(
        kept.contains("00000000deadbeef") && kept.contains("no detection"),
        "{kept}"
    );
    // Not an id, not a verdict: refused.
    assert!(!give("../../etc", "benign").status.success());
    assert_eq!(give(&first[0], "maybe").status.code(), Some(2));
    let lines =
        std::fs::read_to_string(dir.path().join("a/output/dfp_feedback_azure.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 4, "{lines}");
    let out = dfp(&["feedback", "--output", output, "--report", "--json"]);
    common::succeeded(&out);
    let r: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let all = &r["overall"];
    assert_eq!(
        (
            all["judged"].as_u64(),
            all["true_positive"].as_u64(),
            all["false_positive"].as_u64(),
            all["benign"].as_u64()
        ),
        (Some(3), Some(1), Some(1), Some(1))
    );
    assert!((all["precision"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-9);
    let by_kind: u64 = r["by_kind"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p["judged"].as_u64().unwrap())
        .sum();
    assert_eq!(by_kind, 3);
    let table = stdout(&dfp(&["feedback", "--output", output, "--report"]));
    assert!(
        table.contains("precision") && table.contains("feature pattern"),
        "{table}"
    );
    // The benign pattern silenced for its user: a rerun with the same registry writes the
    // same detections but those, and says how many it silenced.
    let demo = dir.path().join("a");
    let models = demo.join("models");
    let models = models.to_str().unwrap();
    let out = dfp(&[
        "feedback",
        "--output",
        output,
        "--detection",
        &first[1],
        "--label",
        "benign",
        "--suppress-for",
        "30",
        "--registry",
        models,
    ]);
    common::succeeded(&out);
    assert!(
        stdout(&out).contains("silenced for 30 days"),
        "{}",
        stdout(&out)
    );
    let refused = dfp(&[
        "feedback",
        "--output",
        output,
        "--detection",
        &first[0],
        "--label",
        "true_positive",
        "--suppress-for",
        "3",
        "--registry",
        models,
    ]);
    assert!(!refused.status.success());
    let detections = |dir: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.join("dfp_detections_azure.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let before = detections(&demo.join("output"));
    let judged = before
        .iter()
        .find(|d| d["detection_id"] == first[1].as_str())
        .unwrap();
    let lead = |d: &serde_json::Value| -> Vec<serde_json::Value> {
        d["top_features"]
            .as_array()
            .unwrap()
            .iter()
            .take(2)
            .cloned()
            .collect()
    };
    let silenced = before
        .iter()
        .filter(|d| {
            d["username"] == judged["username"]
                && lead(d) == lead(judged)
                && d["timestamp"].as_str() >= judged["timestamp"].as_str()
        })
        .count();
    let again = demo.join("again");
    let out = dfp(&[
        "run",
        "--source",
        "azure",
        "--control-messages",
        demo.join("control.json").to_str().unwrap(),
        "--registry",
        models,
        "--output",
        again.to_str().unwrap(),
    ]);
    common::succeeded(&out);
    assert!(
        stdout(&out).contains(&format!("({silenced} silenced by feedback)")),
        "{}",
        stdout(&out)
    );
    let after = detections(&again);
    assert_eq!(after.len(), before.len() - silenced);
    assert!(after.iter().all(|d| d["detection_id"] != first[1].as_str()));
}
