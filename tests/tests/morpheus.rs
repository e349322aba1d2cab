//! Morpheus drop-in: Morpheus' own control messages (every one in `tests/fixtures/morpheus`,
//! copied from its repository under Apache-2.0, see the NOTICE there) run as they are on data
//! laid out as Morpheus lays it out; its file-batcher test cases give its batches; records as
//! Morpheus reads them (missing ids, users without a name, pandas' time formats); plan and run
//! batch alike whatever the source; load-only inputs; Morpheus' output columns.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers: a failure is a test failure

mod common;

use std::path::{Path, PathBuf};

use common::{control, logs, options};
use dfp_engine::control::{ControlMessage, FileScope};
use dfp_engine::generate::GenSource;
use dfp_operators::file_batcher::{DEFAULT_PERIOD, FileBatcherConfig, batch_files};
use dfp_operators::pipeline::{Input, RunSummary, run};
use dfp_operators::plan::Plan;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/morpheus")
}

#[test]
fn morpheus_file_batcher_cases_give_morpheus_batches() {
    let text = std::fs::read_to_string(fixtures().join("file_batcher_cases.json")).unwrap();
    let cases: serde_json::Value = serde_json::from_str(&text).unwrap();
    for case in cases["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let message = serde_json::json!({"inputs": [{
            "tasks": [{"type": "load", "properties": {"files": ["*.json"]}}, {"type": "training"}],
            "metadata": {"batching_options": case["batching_options"]}}]});
        let msg = ControlMessage::parse(&message.to_string(), name).unwrap();
        let cfg = FileBatcherConfig::new(DEFAULT_PERIOD)
            .with_options(&msg.inputs[0].metadata.batching_options)
            .unwrap();
        let files: Vec<PathBuf> = case["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| PathBuf::from("/logs").join(f.as_str().unwrap()))
            .collect();
        let batches = batch_files(&files, &cfg);
        let sizes: Vec<u64> = batches.iter().map(|b| b.files.len() as u64).collect();
        if let Some(kept) = case["files_kept"].as_u64() {
            assert_eq!(sizes.iter().sum::<u64>(), kept, "{name}");
            continue;
        }
        let want: Vec<u64> = case["batches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap())
            .collect();
        assert_eq!(sizes, want, "{name}");
        let n_groups = case["n_groups"].as_u64().unwrap() as usize;
        assert!(
            batches.iter().all(|b| b.count == n_groups),
            "{name}: {batches:#?}"
        );
    }
}

/// Generated logs of `source` (6 users, 8 days) laid out as Morpheus' examples lay them out,
/// under `base`: `data/dfp/{source}-{training,inference}-data` and
/// `examples/data/dfp/...` (days 1-6 train, 7-8 score).
fn morpheus_layout(source: GenSource, base: &Path) {
    let all = logs(source, 6, 8, &base.join("all"));
    let name = source.as_str();
    for (kind, days) in [("training", 1..=6), ("inference", 7..=8)] {
        for root in ["data/dfp", "examples/data/dfp"] {
            let dir = base.join(root).join(format!("{name}-{kind}-data"));
            std::fs::create_dir_all(&dir).unwrap();
            for e in std::fs::read_dir(&all).unwrap() {
                let p = e.unwrap().path();
                let n = p.file_name().unwrap().to_string_lossy().to_string();
                if days.clone().any(|d| n.contains(&format!("2022-08-0{d}T"))) {
                    std::fs::copy(&p, dir.join(&n)).unwrap();
                }
            }
        }
    }
}

/// `file` of the fixtures run as Morpheus runs it (relative globs against the working
/// directory: here `base/a/b`, or deeper for the notebooks' messages) into `base`'s outputs
/// and registry.
fn run_fixture(file: &str, source: GenSource, base: &Path) -> RunSummary {
    let root = if file.starts_with("nb_") {
        base.join("a/b/c/d/e")
    } else {
        base.join("a/b")
    };
    std::fs::create_dir_all(&root).unwrap();
    let mut opts = options(source.as_str(), control(Path::new("x")), base, 1);
    opts.input = Input::Control {
        path: fixtures().join("control_messages").join(file),
        files_root: Some(root),
        allowed_roots: Vec::new(),
        strict: false,
    };
    run(opts).unwrap_or_else(|e| panic!("{file}: {}", e.chain()))
}

#[test]
fn every_morpheus_control_message_runs_as_it_is() {
    for source in [GenSource::Azure, GenSource::Duo] {
        let base = tempfile::tempdir().unwrap();
        morpheus_layout(source, base.path());
        let name = source.as_str();
        // Training first, so the inference-only messages find models.
        let mut files: Vec<String> = std::fs::read_dir(fixtures().join("control_messages"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|f| f.starts_with(name) || f.starts_with(&format!("nb_{name}")))
            .filter(|f| !f.ends_with("_s3.json"))
            .collect();
        files.sort_by_key(|f| (!f.contains("training"), f.clone()));
        assert!(files.len() >= 10, "{files:?}");
        for file in &files {
            let msg =
                ControlMessage::from_file(&fixtures().join("control_messages").join(file), true);
            let msg = msg.unwrap_or_else(|e| panic!("{file}: {e}"));
            let s = run_fixture(file, source, base.path());
            assert!(s.unmatched.is_empty(), "{file}: {:?}", s.unmatched);
            assert!(s.stats.rows > 0, "{file}: {}", s.line());
            assert_eq!(s.stats.dead_letters, 0, "{file}: {}", s.line());
            assert!(
                s.stats.shortfalls().is_empty(),
                "{file}: {:?}",
                s.stats.shortfalls()
            );
            let trains = msg.inputs.iter().any(|i| i.trains());
            let infers = msg.inputs.iter().any(|i| i.infers());
            assert_eq!(s.stats.models_trained > 0, trains, "{file}: {}", s.line());
            assert_eq!(s.stats.scored > 0, infers, "{file}: {}", s.line());
        }
    }
}

#[test]
fn morpheus_remote_and_absolute_messages_fail_clearly() {
    let s3 = ControlMessage::from_file(
        &fixtures().join("control_messages/azure_payload_lti_s3.json"),
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(s3.contains("s3://") && s3.contains("not supported"), "{s3}");
    // The demo's messages name /workspace/...: they parse, and their globs find nothing here.
    for demo in ["demo_submit_messages.json", "demo_training.json"] {
        let msg = ControlMessage::from_file(&fixtures().join("control_messages").join(demo), true)
            .unwrap();
        let plan = Plan::build(&msg, &FileScope::at(".")).unwrap();
        assert!(
            plan.epochs.is_empty() && !plan.unmatched.is_empty(),
            "{demo}"
        );
    }
}

#[test]
fn plan_and_run_batch_by_day_whatever_the_source() {
    for source in [GenSource::Azure, GenSource::Duo] {
        let base = tempfile::tempdir().unwrap();
        morpheus_layout(source, base.path());
        let file = format!("{}_payload_training.json", source.as_str());
        let msg =
            ControlMessage::from_file(&fixtures().join("control_messages").join(&file), false)
                .unwrap();
        assert!(msg.inputs[0].metadata.batching_options.period.is_none());
        std::fs::create_dir_all(base.path().join("a/b")).unwrap();
        let plan = Plan::build(&msg, &FileScope::at(base.path().join("a/b"))).unwrap();
        // No batching options: a batch a day, 6 training days, as Morpheus does for any source.
        assert_eq!(plan.epochs.len(), 6, "{file}");
        let s = run_fixture(&file, source, base.path());
        assert_eq!(s.epochs, plan.epochs.len(), "{file}: {}", s.line());
    }
}

#[test]
fn records_are_read_as_morpheus_reads_them() {
    let base = tempfile::tempdir().unwrap();
    let data = logs(GenSource::Azure, 8, 6, &base.path().join("logs"));
    // The two busiest users: enough rows for models of their own.
    let users: Vec<String> = {
        let mut count = std::collections::BTreeMap::<String, usize>::new();
        for e in std::fs::read_dir(&data).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "json") {
                let recs: Vec<serde_json::Value> =
                    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
                for r in recs {
                    let u = r["properties"]["userPrincipalName"].as_str().unwrap();
                    *count.entry(u.to_string()).or_default() += 1;
                }
            }
        }
        let mut by: Vec<(usize, String)> = count.into_iter().map(|(u, n)| (n, u)).collect();
        by.sort_by(|a, b| b.cmp(a));
        by.into_iter().map(|(_, u)| u).collect()
    };
    // Two users lose their names (one missing, one null); some records lose their id; times
    // are written as pandas reads them.
    let times = [
        "2022-08-0{d}T10:00:00+0000",
        "8/{d}/2022 11:00:00 AM",
        "2022080{d}T120000Z",
        "2022-08-0{d} 13:00:00",
    ];
    let mut files: Vec<PathBuf> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    for (k, p) in files.iter().enumerate() {
        let mut recs: Vec<serde_json::Value> =
            serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
        for (i, r) in recs.iter_mut().enumerate() {
            let props = r["properties"].as_object_mut().unwrap();
            let user = props["userPrincipalName"].as_str().unwrap().to_string();
            if user == users[0] {
                props.remove("userPrincipalName");
            } else if user == users[1] {
                props.insert("userPrincipalName".into(), serde_json::Value::Null);
            }
            if i % 3 == 0 {
                props.remove("id");
            }
            if i == 0 {
                let day = r["time"].as_str().unwrap()[9..10].to_string();
                r["time"] = times[k % times.len()].replace("{d}", &day).into();
            }
        }
        std::fs::write(p, serde_json::to_vec(&recs).unwrap()).unwrap();
    }
    let control_path = base.path().join("control.json");
    std::fs::write(&control_path, dfp_bench::DAILY_CONTROL).unwrap();
    let s = run(options("azure", control(&control_path), base.path(), 1)).unwrap();
    assert_eq!(s.stats.dead_letters, 0, "{}", s.line());
    // The users without a name are Morpheus' users "nan" and "None", with models of their own.
    let models = base.path().join("models");
    for user in ["nan", "None"] {
        assert!(
            models.join(format!("DFP-azure-{user}")).is_dir(),
            "no model for user {user}"
        );
    }
    let scores = std::fs::read_to_string(base.path().join("output/dfp_scores_azure.csv")).unwrap();
    assert!(
        scores.contains(",dfp-"),
        "derived event ids are marked dfp-"
    );
    assert!(scores.lines().any(|l| l.contains(",nan,")));
    assert!(scores.lines().any(|l| l.contains(",None,")));
}

#[test]
fn a_load_only_input_adds_history_without_training_or_scoring() {
    let base = tempfile::tempdir().unwrap();
    logs(GenSource::Azure, 6, 6, &base.path().join("logs"));
    let only = |inputs: &str| {
        let path = base.path().join("m.json");
        std::fs::write(&path, format!("{{\"inputs\": [{inputs}]}}")).unwrap();
        path
    };
    let load = |days: &str, extra: &str| {
        format!(
            r#"{{"tasks": [{{"type": "load", "properties": {{"files": ["logs/*.json"]}}}}{extra}],
               "metadata": {{"data_type": "streaming", "batching_options": {{"period": "Y", {days}}}}}}}"#
        )
    };
    let first = load(
        r#""start_time": "2022-08-01", "end_time": "2022-08-04""#,
        "",
    );
    let train = load(
        r#""start_time": "2022-08-04", "end_time": "2022-08-07""#,
        r#", {"type": "training"}"#,
    );
    // Load only: read, nothing trained or scored, nothing wrong.
    let s = run(options(
        "azure",
        control(&only(&first)),
        &base.path().join("a"),
        1,
    ))
    .unwrap();
    assert!(s.stats.rows > 0);
    assert_eq!((s.stats.models_trained, s.stats.scored), (0, 0));
    assert!(
        s.stats.shortfalls().is_empty(),
        "{:?}",
        s.stats.shortfalls()
    );
    // Loaded then trained: the generic model learns from both inputs' rows.
    let with_history = only(&format!("{first}, {train}"));
    run(options(
        "azure",
        control(&with_history),
        &base.path().join("b"),
        1,
    ))
    .unwrap();
    let without = only(&train);
    run(options(
        "azure",
        control(&without),
        &base.path().join("c"),
        1,
    ))
    .unwrap();
    let rows = |dir: &str| {
        let tags = base
            .path()
            .join(dir)
            .join("models/DFP-azure-generic_user/v000001.json");
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(tags).unwrap()).unwrap();
        v["header"]["rows"].as_u64().unwrap()
    };
    assert!(rows("b") > rows("c"), "{} <= {}", rows("b"), rows("c"));
}

#[test]
fn morpheus_columns_come_first_with_its_names() {
    let base = tempfile::tempdir().unwrap();
    logs(GenSource::Azure, 6, 6, &base.path().join("logs"));
    let control_path = base.path().join("control.json");
    std::fs::write(&control_path, dfp_bench::DAILY_CONTROL).unwrap();
    let mut opts = options("azure", control(&control_path), base.path(), 1);
    opts.config.morpheus.features = true;
    opts.config.morpheus.columns = true;
    let s = run(opts).unwrap();
    assert!(s.stats.scored > 0, "{}", s.line());
    let csv = std::fs::read_to_string(base.path().join("output/dfp_scores_azure.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let mut want = vec![
        "timestamp",
        "username",
        "appDisplayName",
        "clientAppUsed",
        "deviceDetailbrowser",
        "deviceDetaildisplayName",
        "deviceDetailoperatingSystem",
        "statusfailureReason",
        "logcount",
        "locincrement",
        "appincrement",
    ];
    let features = [
        "logcount",
        "locincrement",
        "appincrement",
        "appDisplayName",
        "clientAppUsed",
        "deviceDetailbrowser",
        "deviceDetaildisplayName",
        "deviceDetailoperatingSystem",
        "statusfailureReason",
    ];
    let per_feature: Vec<String> = features
        .iter()
        .flat_map(|f| {
            [
                format!("{f}_pred"),
                format!("{f}_loss"),
                format!("{f}_z_loss"),
            ]
        })
        .collect();
    want.extend(per_feature.iter().map(String::as_str));
    want.extend([
        "max_abs_z",
        "mean_abs_z",
        "z_loss_scaler_type",
        "model_version",
        "event_time",
    ]);
    assert_eq!(&header[..want.len()], want.as_slice());
    // dfp's own columns after Morpheus'.
    assert!(header[want.len()..].contains(&"event_id"));
    assert_eq!(
        header[header.len() - 3..],
        ["top_features", "detection_id", "familiar"]
    );
    let first: Vec<&str> = csv.lines().nth(1).unwrap().split(',').collect();
    let at = |c: &str| header.iter().position(|h| *h == c).unwrap();
    assert_eq!(first[at("event_time")], "2024-01-02T03:04:05Z");
    assert_eq!(first[at("z_loss_scaler_type")], "z");
}
