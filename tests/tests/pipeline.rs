//! End-to-end runs of the DFP dataflow on generated logs: 1, 2 and 4 workers give identical
//! files and models; a golden scores file; bad input in the middle of a run; a user nobody
//! trained; a corrupt model file; the champion/challenger lifecycle (manual and automatic
//! promotion, shadow scores, rollback, aliases broken by hand). (Morpheus' own control
//! messages: `morpheus.rs`.)

#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers: a failure is a test failure

mod common;

use std::path::{Path, PathBuf};

use common::{logs, options};
use dfp_bench::file_tree;
use dfp_engine::generate::GenSource;
use dfp_operators::pipeline::{RunSummary, run};

/// A run of `days` days of generated logs: train on all but the last two, score those.
fn train_and_score(source: GenSource, root: &Path, workers: usize) -> RunSummary {
    let data = root.join("logs");
    if !data.exists() {
        logs(source, 8, 8, &data);
    }
    run(options(
        source.as_str(),
        common::split_control(root, "control", 7),
        root,
        workers,
    ))
    .unwrap()
}

/// The records of the first log file in `data` whose name holds `day`.
fn first_file_of(data: &Path, day: &str) -> Vec<serde_json::Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(day))
        .collect();
    files.sort();
    serde_json::from_str(&read(&files[0])).unwrap()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

/// Files by relative path, with their bytes.
type Tree = std::collections::BTreeMap<String, Vec<u8>>;

/// The rows of a CSV output as maps column -> value.
fn csv_rows(path: &Path) -> Vec<std::collections::BTreeMap<String, String>> {
    let mut r = csv::Reader::from_path(path).unwrap();
    let headers = r.headers().unwrap().clone();
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            headers
                .iter()
                .map(String::from)
                .zip(rec.iter().map(String::from))
                .collect()
        })
        .collect()
}

/// What a registry's files say about the models trained, without when and by which run: the
/// model files, and each model's aliases.
fn trained(tree: Tree) -> Tree {
    tree.into_iter()
        .filter_map(|(path, bytes)| {
            if path.ends_with(".dfpmodel") {
                return Some((path, bytes));
            }
            if path.ends_with("aliases.json") {
                let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                return Some((path, v["aliases"].to_string().into_bytes()));
            }
            None
        })
        .collect()
}

#[test]
fn one_two_and_four_workers_write_identical_outputs_and_models() {
    for source in [GenSource::Azure, GenSource::Duo] {
        let base = tempfile::tempdir().unwrap();
        let data = logs(source, 8, 8, &base.path().join("logs"));
        let mut first: Option<(RunSummary, Tree, Tree)> = None;
        for workers in [1, 2, 4] {
            let root = base.path().join(format!("w{workers}"));
            std::fs::create_dir_all(&root).unwrap();
            std::os::unix::fs::symlink(&data, root.join("logs")).unwrap();
            let s = train_and_score(source, &root, workers);
            assert!(s.stats.models_trained >= 2, "{source:?}: {}", s.line());
            assert!(s.stats.scored > 100, "{source:?}: {}", s.line());
            let outputs = file_tree(&root.join("output")).unwrap();
            let models = trained(file_tree(&root.join("models")).unwrap());
            match &first {
                None => first = Some((s, outputs, models)),
                Some((s1, o1, m1)) => {
                    assert_eq!(s.stats.scored, s1.stats.scored);
                    assert_eq!(s.stats.detections, s1.stats.detections);
                    assert_eq!(
                        &outputs, o1,
                        "{source:?}: {workers} workers wrote other outputs"
                    );
                    assert_eq!(
                        &models, m1,
                        "{source:?}: {workers} workers trained other models"
                    );
                }
            }
        }
    }
}

/// Whether two cells agree: equal text, or numbers within a relative 1e-3 (model arithmetic
/// may differ in the last bits between CPUs).
#[test]
fn scores_match_the_golden_file() {
    let root = tempfile::tempdir().unwrap();
    train_and_score(GenSource::Azure, root.path(), 2);
    dfp_bench::assert_golden(
        &root.path().join("output/dfp_scores_azure.csv"),
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/dfp_scores_azure.csv"),
    );
}

#[test]
fn bad_input_mid_stream_is_dead_lettered_and_the_run_completes() {
    let root = tempfile::tempdir().unwrap();
    let data = logs(GenSource::Azure, 8, 8, &root.path().join("logs"));
    let good = train_and_score(GenSource::Azure, root.path(), 1);
    // A truncated file and a file with one malformed record, in the scored days.
    std::fs::write(
        data.join("AZUREAD_2022-08-07T12_00_00.000Z.json"),
        "[{\"time\": \"2022-08-07T12:00:00Z\", \"proper",
    )
    .unwrap();
    let mut records = first_file_of(&data, "2022-08-08T");
    records[0]["time"] = "not a time".into();
    std::fs::write(
        data.join("AZUREAD_2022-08-08T23_00_00.000Z.json"),
        serde_json::to_string(&records).unwrap(),
    )
    .unwrap();
    let s = train_and_score(GenSource::Azure, root.path(), 2);
    assert_eq!(
        s.stats.rows,
        good.stats.rows + records.len() as u64 - 1,
        "the good records went on"
    );
    let dead = read(&root.path().join("output/dfp_dead_letter_azure.jsonl"));
    let lines: Vec<serde_json::Value> = dead
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // The cut record (with what there is of it), the break, and the malformed record.
    assert_eq!(lines.len(), 3, "{dead}");
    let cut_file = |l: &&serde_json::Value| {
        l["file"]
            .as_str()
            .unwrap()
            .ends_with("AZUREAD_2022-08-07T12_00_00.000Z.json")
    };
    assert_eq!(lines.iter().filter(cut_file).count(), 2, "{dead}");
    assert!(
        lines
            .iter()
            .any(|l| cut_file(&l) && l["raw"] == "{\"time\": \"2022-08-07T12:00:00Z\", \"proper")
    );
    let bad = lines
        .iter()
        .find(|l| l["record"] == 0 && !cut_file(l))
        .unwrap();
    assert!(
        bad["file"]
            .as_str()
            .unwrap()
            .ends_with("AZUREAD_2022-08-08T23_00_00.000Z.json")
    );
    assert!(bad["reason"].as_str().unwrap().contains("time"), "{bad}");
}

#[test]
fn an_unknown_user_is_scored_by_the_generic_model() {
    let root = tempfile::tempdir().unwrap();
    let data = logs(GenSource::Azure, 8, 8, &root.path().join("logs"));
    let mut records = first_file_of(&data, "2022-08-08T");
    records.truncate(3);
    for (i, r) in records.iter_mut().enumerate() {
        r["properties"]["userPrincipalName"] = "mallory.../../x@evil.example".into();
        r["properties"]["id"] = format!("mallory-{i}").into();
    }
    std::fs::write(
        data.join("AZUREAD_2022-08-08T23_30_00.000Z.json"),
        serde_json::to_string(&records).unwrap(),
    )
    .unwrap();
    train_and_score(GenSource::Azure, root.path(), 1);
    let rows = csv_rows(&root.path().join("output/dfp_scores_azure.csv"));
    let mallory: Vec<_> = rows
        .iter()
        .filter(|r| r["event_id"].starts_with("mallory-"))
        .collect();
    assert_eq!(mallory.len(), 3);
    for r in mallory {
        assert_eq!(r["model_version"], "DFP-azure-generic_user:1");
    }
    // Users with their own model use it.
    assert!(
        rows.iter()
            .any(|r| r["model_version"] != "DFP-azure-generic_user:1")
    );
}

#[test]
fn a_corrupt_model_is_reported_and_its_user_falls_back_to_the_generic_model() {
    let root = tempfile::tempdir().unwrap();
    train_and_score(GenSource::Azure, root.path(), 1);
    let registry = dfp_engine::registry::Registry::open(&root.path().join("models")).unwrap();
    let (victim, _) = registry
        .list()
        .unwrap()
        .into_iter()
        .find(|(n, _)| !n.ends_with("generic_user"))
        .unwrap();
    let folder = root
        .path()
        .join("models")
        .join(dfp_engine::registry::escape(&victim));
    let file = folder.join("v000001.dfpmodel");
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();
    // Score the last two days again, inference only.
    let control = root.path().join("infer.json");
    let msg = serde_json::json!({"inputs": [{
        "tasks": [{"type": "load", "properties": {"loader_id": "fsspec", "files": ["logs/*.json"]}}, {"type": "inference", "properties": {}}],
        "metadata": {"data_type": "streaming", "batching_options": {"period": "D", "start_time": "2022-08-07", "end_time": "2022-08-09"}}
    }]});
    std::fs::write(&control, msg.to_string()).unwrap();
    let s = run(options("azure", common::control(&control), root.path(), 2)).unwrap();
    assert_eq!(s.stats.models_trained, 0);
    assert!(s.stats.scored > 100);
    let dead = read(&root.path().join("output/dfp_dead_letter_azure.jsonl"));
    let user = victim.trim_start_matches("DFP-azure-");
    assert!(
        dead.contains(&victim) && dead.contains("generic model"),
        "{dead}"
    );
    let rows = csv_rows(&root.path().join("output/dfp_scores_azure.csv"));
    let theirs: Vec<_> = rows.iter().filter(|r| r["username"] == user).collect();
    assert!(!theirs.is_empty());
    assert!(
        theirs
            .iter()
            .all(|r| r["model_version"] == "DFP-azure-generic_user:1")
    );
}

#[test]
fn under_manual_promotion_a_retrained_model_waits_in_the_shadow_until_promoted_and_rollback_restores()
 {
    use dfp_engine::lifecycle::Promotion;
    use dfp_engine::registry::Registry;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    logs(GenSource::Azure, 8, 9, &root.join("logs"));
    // Each run trains on days 1 .. `score` and scores `score` .. 9, into its own output.
    // The (model, champion, challenger) of each shadow row of a run, and how many rows.
    let shadow_of = |out: &str| -> std::collections::BTreeMap<(String, String, String), usize> {
        let mut seen = std::collections::BTreeMap::new();
        for r in csv_rows(&root.join(out).join("dfp_shadow_azure.csv")) {
            assert!(!r["event_id"].is_empty() && r["challenger_mean_abs_z"].parse::<f32>().is_ok());
            assert!(["true", "false"].contains(&r["challenger_alert"].as_str()));
            let key = (
                r["model"].clone(),
                r["champion_version"].clone(),
                r["challenger_version"].clone(),
            );
            *seen.entry(key).or_insert(0) += 1;
        }
        seen
    };
    let run_to = |score: u32, out: &str| -> Vec<(String, String)> {
        let mut opts = options("azure", common::split_control(root, out, score), root, 1);
        opts.output = root.join(out);
        opts.config.lifecycle.promotion = Promotion::Manual;
        run(opts).unwrap();
        csv_rows(&root.join(out).join("dfp_scores_azure.csv"))
            .into_iter()
            .map(|r| (r["username"].clone(), r["model_version"].clone()))
            .collect()
    };
    let registry = Registry::open(&root.join("models")).unwrap();
    run_to(6, "first");
    assert!(shadow_of("first").is_empty(), "no challenger yet");
    let scored = run_to(8, "second");
    // Every model trained twice has champion 1 and challenger 2, and version 1 scored.
    let twice: Vec<String> = registry
        .list()
        .unwrap()
        .into_iter()
        .filter(|(_, v)| v.len() == 2)
        .map(|(name, _)| name)
        .collect();
    assert!(twice.len() >= 2, "{twice:?}");
    let version_of = |scored: &[(String, String)], name: &str| -> Vec<String> {
        let mut v: Vec<String> = scored
            .iter()
            .filter(|(_, m)| m.rsplit_once(':').is_some_and(|(n, _)| n == name))
            .map(|(_, m)| m.rsplit_once(':').unwrap().1.to_string())
            .collect();
        v.dedup();
        v
    };
    // The challengers trained at the run's first epoch scored every row of theirs in the
    // shadow, beside the champion.
    let shadow = shadow_of("second");
    let compared =
        dfp_operators::shadow::compare(&root.join("second/dfp_shadow_azure.csv")).unwrap();
    assert_eq!(compared.len(), shadow.len());
    for c in &compared {
        let key = (c.model.clone(), c.champion.clone(), c.challenger.clone());
        assert_eq!(Some(&(c.rows as usize)), shadow.get(&key));
        assert!((0.0..=1.0).contains(&c.agreement) && (0.0..=1.0).contains(&c.ks));
    }
    for name in &twice {
        let l = registry.lifecycle(name).unwrap();
        assert_eq!((l.champion(), l.challenger()), (Some(1), Some(2)), "{name}");
        assert_eq!(version_of(&scored, name), ["1"], "{name}");
        let rows = scored
            .iter()
            .filter(|(_, m)| m.starts_with(&format!("{name}:")))
            .count();
        let key = (name.clone(), "1".to_string(), "2".to_string());
        assert_eq!(shadow.get(&key), Some(&rows), "{name}: {shadow:?}");
        registry.promote(name, 2, "test", "better").unwrap();
    }
    // Promoted: the next run scores with version 2 (and its own training waits as version 3).
    let scored = run_to(8, "third");
    for name in &twice {
        assert_eq!(version_of(&scored, name), ["2"], "{name}");
        assert_eq!(registry.alias(name, "challenger").unwrap(), Some(3));
        assert_eq!(registry.rollback(name, "test", "worse").unwrap(), (2, 1));
    }
    let scored = run_to(8, "fourth");
    for name in &twice {
        assert_eq!(version_of(&scored, name), ["1"], "{name}");
    }
}

#[test]
fn auto_promotion_makes_the_challenger_champion_after_its_shadow_epochs_alike_for_1_and_4_workers()
{
    use dfp_engine::lifecycle::{Action, Promotion};
    use dfp_engine::registry::Registry;
    let base = tempfile::tempdir().unwrap();
    let data = logs(GenSource::Azure, 8, 9, &base.path().join("logs"));
    let mut first: Option<Tree> = None;
    for workers in [1, 4] {
        let root = base.path().join(format!("w{workers}"));
        std::fs::create_dir_all(&root).unwrap();
        std::os::unix::fs::symlink(&data, root.join("logs")).unwrap();
        let control = common::split_control(&root, "control", 6);
        // The first run trains version 1 of each model; the second trains version 2, which
        // waits as the challenger and is promoted after one epoch of shadow scores.
        for out in ["first", "second"] {
            let mut opts = options("azure", control.clone(), &root, workers);
            opts.output = root.join(out);
            let l = &mut opts.config.lifecycle;
            l.promotion = Promotion::Auto;
            (l.min_epochs, l.min_rows, l.min_agreement) = (1, 1, 0.0);
            l.max_alert_rate_increase = 1.0;
            let summary = run(opts).unwrap();
            if out == "second" {
                assert!(summary.stats.promoted >= 2, "{}", summary.line());
                assert!(summary.line().contains("challengers promoted"));
            }
        }
        let registry = Registry::open(&root.join("models")).unwrap();
        let rows = csv_rows(&root.join("second").join("dfp_scores_azure.csv"));
        let mut promoted = 0;
        for (name, versions) in registry.list().unwrap() {
            if versions.len() != 2 {
                continue;
            }
            let l = registry.lifecycle(&name).unwrap();
            let last = l.history.last().unwrap();
            assert_eq!((l.champion(), l.challenger()), (Some(2), None), "{name}");
            assert_eq!(
                (last.action, last.by.as_str()),
                (Action::Promote, "policy:auto")
            );
            assert!(last.why.contains("agreement"), "{}", last.why);
            // Its rows in time order: version 1 until the epoch that promoted it, then 2.
            let mut mine: Vec<(&str, &str)> = rows
                .iter()
                .filter(|r| r["model_version"].starts_with(&format!("{name}:")))
                .map(|r| {
                    (
                        r["timestamp"].as_str(),
                        &r["model_version"][name.len() + 1..],
                    )
                })
                .collect();
            mine.sort();
            let versions: Vec<&str> = mine.iter().map(|m| m.1).collect();
            assert!(
                versions.is_sorted() && versions[0] == "1",
                "{name}: {versions:?}"
            );
            let days: std::collections::BTreeSet<&str> = mine.iter().map(|m| &m.0[..10]).collect();
            if days.len() > 1 {
                assert_eq!(versions.last(), Some(&"2"), "{name}: {mine:?}");
                promoted += 1;
            }
        }
        assert!(promoted >= 2, "{promoted}");
        let outputs = file_tree(&root.join("second")).unwrap();
        match &first {
            None => first = Some(outputs),
            Some(o1) => assert!(&outputs == o1, "{workers} workers wrote other outputs"),
        }
    }
}

#[test]
fn a_model_whose_aliases_were_broken_by_hand_is_left_out_and_the_run_goes_on() {
    use dfp_engine::registry::{Registry, escape};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let first = train_and_score(GenSource::Azure, root, 1);
    assert!(first.stats.models_trained >= 2);
    let registry = Registry::open(&root.join("models")).unwrap();
    let (name, _) = registry
        .list()
        .unwrap()
        .into_iter()
        .find(|(n, _)| !n.ends_with("generic_user"))
        .unwrap();
    let aliases = root.join("models").join(escape(&name)).join("aliases.json");
    std::fs::write(&aliases, "{\"aliases\": [").unwrap();
    std::fs::remove_dir_all(root.join("output")).unwrap();
    let again = train_and_score(GenSource::Azure, root, 1);
    // Its user is scored by the generic model; its retrained version is a dead letter naming
    // the model and the file; every other model trained and served as before.
    let user = name.strip_prefix("DFP-azure-").unwrap();
    let rows = csv_rows(&root.join("output/dfp_scores_azure.csv"));
    let theirs: Vec<_> = rows.iter().filter(|r| r["username"] == user).collect();
    assert!(!theirs.is_empty(), "{user} has rows to score");
    assert!(
        theirs
            .iter()
            .all(|r| r["model_version"].starts_with("DFP-azure-generic_user:")),
        "{user}"
    );
    let dead = read(&root.join("output/dfp_dead_letter_azure.jsonl"));
    assert!(
        dead.lines()
            .any(|l| l.contains(&name) && l.contains("aliases.json")),
        "{dead}"
    );
    assert_eq!(again.stats.models_trained + 1, first.stats.models_trained);
}

#[test]
fn parity_flags_the_group_made_noisier_and_counts_every_scored_row_alike_for_1_and_2_workers() {
    let base = tempfile::tempdir().unwrap();
    let data = logs(GenSource::Azure, 8, 9, &base.path().join("logs"));
    // The most used app: on the scoring days its sign-ins come from places and browsers
    // nobody has used.
    let mut apps: std::collections::BTreeMap<String, usize> = Default::default();
    let files: Vec<PathBuf> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    for f in &files {
        let records: Vec<serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
        for r in records {
            *apps
                .entry(
                    r["properties"]["appDisplayName"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                )
                .or_default() += 1;
        }
    }
    let noisy = apps.iter().max_by_key(|(_, n)| **n).unwrap().0.clone();
    for f in &files {
        let day = f.file_name().unwrap().to_string_lossy().to_string();
        if day.as_str() < "AZUREAD_2022-08-07" {
            continue;
        }
        let mut records: Vec<serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
        for (i, r) in records.iter_mut().enumerate() {
            let p = &mut r["properties"];
            if p["appDisplayName"] == noisy.as_str() {
                p["location"]["city"] = format!("Noisetown {i}").into();
                p["location"]["countryOrRegion"] = "ZZ".into();
                p["deviceDetail"]["browser"] = format!("Lynx {i}").into();
            }
        }
        std::fs::write(f, serde_json::to_string(&records).unwrap()).unwrap();
    }
    let run_with = |workers: usize| -> (
        RunSummary,
        String,
        Vec<std::collections::BTreeMap<String, String>>,
    ) {
        let root = base.path().join(format!("w{workers}"));
        std::fs::create_dir_all(&root).unwrap();
        let control = common::split_control(base.path(), &format!("control{workers}"), 7);
        let mut opts = options("azure", control, &root, workers);
        opts.config.parity.group = Some("appDisplayName".into());
        opts.config.parity.min_rows = 5;
        let summary = run(opts).unwrap();
        let path = root.join("output/dfp_parity_azure.csv");
        (summary, read(&path), csv_rows(&path))
    };
    let (summary, text, rows) = run_with(1);
    assert_eq!(
        text,
        run_with(2).1,
        "parity differs between 1 and 2 workers"
    );
    // Every scored row is in one group, and the (all) lines add up to the run's counts.
    let all: Vec<_> = rows.iter().filter(|r| r["group"] == "(all)").collect();
    let total = |rs: &[&std::collections::BTreeMap<String, String>], k: &str| -> u64 {
        rs.iter().map(|r| r[k].parse::<u64>().unwrap()).sum()
    };
    assert_eq!(total(&all, "rows"), summary.stats.scored);
    let groups: Vec<_> = rows.iter().filter(|r| r["group"] != "(all)").collect();
    assert_eq!(total(&groups, "rows"), summary.stats.scored);
    assert_eq!(total(&groups, "alerts"), total(&all, "alerts"));
    // The noisy app is flagged, above the band, in some epoch; the summary counts the breaches.
    let flagged: Vec<_> = groups.iter().filter(|r| r["flagged"] == "true").collect();
    assert!(
        flagged
            .iter()
            .any(|r| r["group"] == noisy && r["ratio"].parse::<f64>().unwrap() > 1.25),
        "{noisy} not flagged:\n{text}"
    );
    assert_eq!(summary.stats.parity_breaches, flagged.len() as u64);
    assert!(rows.iter().all(|r| r["group_field"] == "appDisplayName"));
    // A column the schema does not have is refused before anything runs.
    let root = base.path().join("bad");
    let mut opts = options("azure", common::control(&root.join("c.json")), &root, 1);
    opts.config.parity.group = Some("department".into());
    let e = run(opts).unwrap_err().to_string();
    assert!(
        e.contains("\"department\"") && e.contains("appDisplayName"),
        "{e}"
    );
}

#[test]
fn drift_flags_the_browser_most_users_move_to_and_no_other_feature_alike_for_1_and_2_workers() {
    use dfp_engine::generate::Rollout;
    let base = tempfile::tempdir().unwrap();
    // Stable users, no attacks; on the two scoring days 80% of them use a browser nobody used
    // before, or (the control) nothing changes.
    let run_with = |rollout: Option<Rollout>, workers: usize| {
        let root = base
            .path()
            .join(format!("{}-w{workers}", rollout.is_some()));
        let input = common::rollout_logs(&root, rollout);
        let mut opts = options("azure", input, &root, workers);
        opts.config.drift.enabled = true;
        let summary = run(opts).unwrap();
        let path = root.join("output/dfp_drift_azure.csv");
        (summary, read(&path), csv_rows(&path))
    };
    let rollout = Some(Rollout {
        day: 10,
        share: 0.8,
    });
    let (summary, text, rows) = run_with(rollout, 1);
    assert_eq!(
        text,
        run_with(rollout, 2).1,
        "drift differs between 1 and 2 workers"
    );
    let all: Vec<_> = rows.iter().filter(|r| r["model"] == "all").collect();
    let drifted: std::collections::BTreeSet<(&str, &str)> = all
        .iter()
        .filter(|r| r["drifted"] == "true")
        .map(|r| (r["epoch"].as_str(), r["feature"].as_str()))
        .collect();
    assert_eq!(
        drifted,
        [("1", "browser"), ("2", "browser")].into(),
        "{text}"
    );
    // Every scored row is counted once per feature; the browser's PSI is far above the line.
    let scored: f64 = all
        .iter()
        .filter(|r| r["feature"] == "browser")
        .map(|r| r["rows"].parse::<f64>().unwrap())
        .sum();
    assert_eq!(scored as u64, summary.stats.scored);
    assert!(
        all.iter()
            .filter(|r| r["feature"] == "browser")
            .all(|r| r["psi"].parse::<f64>().unwrap() > 2.0)
    );
    // Numeric features have a KS statistic, categorical ones none.
    let ks = |f: &str| all.iter().find(|r| r["feature"] == f).unwrap()["ks"].clone();
    assert!(!ks("logcount").is_empty() && ks("browser").is_empty());
    assert_eq!(summary.stats.drifted, [("browser".to_string(), 2)].into());
    assert!(
        summary.line().contains("drift in browser (2 epochs)"),
        "{}",
        summary.line()
    );
    // The same users without the rollout: nothing drifts.
    let (summary, text, _) = run_with(None, 1);
    assert!(summary.stats.drifted.is_empty(), "{text}");
}

#[test]
fn drift_that_lasts_retrains_every_model_at_the_next_epoch_alike_for_1_and_2_workers() {
    use dfp_engine::generate::Rollout;
    use dfp_operators::config::RetrainScope;
    let base = tempfile::tempdir().unwrap();
    // One epoch a day, each trains and scores; from day 8 (2022-08-09) most users use a new
    // browser.
    let stream = r#"{"inputs": [{
      "metadata": {"data_type": "streaming",
                   "batching_options": {"period": "D", "start_time": "2022-08-01", "end_time": "2022-08-13"}},
      "tasks": [{"type": "load", "properties": {"loader_id": "fsspec", "files": ["logs/*.json"]}},
                {"type": "training", "properties": {}},
                {"type": "inference", "properties": {}}]}]}"#;
    let run_with = |retrain: Option<u32>, workers: usize| {
        let root = base.path().join(format!("{retrain:?}-w{workers}"));
        common::rollout_logs(&root, Some(Rollout { day: 8, share: 0.8 }));
        let control = root.join("stream.json");
        std::fs::write(&control, stream).unwrap();
        let mut opts = options("azure", common::control(&control), &root, workers);
        opts.config.drift.enabled = true;
        opts.config.drift.retrain_after = retrain;
        opts.config.drift.retrain = RetrainScope::All;
        let summary = run(opts).unwrap();
        let drift = read(&root.join("output/dfp_drift_azure.csv"));
        (summary, drift)
    };
    let (plain, _) = run_with(None, 1);
    let (retrained, drift) = run_with(Some(2), 1);
    let s = &retrained.stats;
    // The browser drifts over all models from the rollout on; after two epochs of it every
    // user with rows since their last training gets a training window at the next epoch.
    assert!(s.drifted.get("browser").is_some_and(|n| *n >= 2), "{drift}");
    assert!(s.retrain_requests >= 1, "{}", retrained.line());
    assert!(s.retrained > 0, "{}", retrained.line());
    assert_eq!(plain.stats.retrain_requests + plain.stats.retrained, 0);
    assert!(
        s.models_trained > plain.stats.models_trained,
        "{} vs {}",
        s.models_trained,
        plain.stats.models_trained
    );
    let (two, drift2) = run_with(Some(2), 2);
    assert_eq!(drift, drift2, "drift differs between 1 and 2 workers");
    assert_eq!(
        (two.stats.retrained, two.stats.models_trained),
        (s.retrained, s.models_trained)
    );
}

#[test]
fn notifications_are_published_on_nats_subjects_with_their_ids() {
    let nats = dfp_bench::nats::NatsServer::start();
    let base = tempfile::tempdir().unwrap();
    let root = base.path();
    logs(GenSource::Azure, 8, 9, &root.join("logs"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The client and the subscription are dropped inside the runtime.
    let _inside = rt.enter();
    let (client, mut events) = rt.block_on(async {
        let client = async_nats::connect(&nats.url).await.unwrap();
        let events = client
            .subscribe("dfp.events.notification.azure")
            .await
            .unwrap();
        client.flush().await.unwrap();
        (client, events)
    });
    let mut opts = options("azure", common::split_control(root, "control", 7), root, 2);
    let n = &mut opts.config.notifications;
    n.nats = Some(nats.url.clone());
    n.max_alerts_per_epoch = Some(0);
    let summary = run(opts).unwrap();
    assert!(summary.stats.alerts > 0, "{}", summary.line());
    // Everything was delivered: the outbox is gone.
    assert!(!root.join("output/dfp_notifications_outbox.jsonl").exists());
    // Every event was flushed to the server before the run ended, so all are on their way
    // here: read until an alert_volume one comes (the deadline only stops a hang).
    rt.block_on(async {
        use futures_util::StreamExt;
        loop {
            let m = tokio::time::timeout(std::time::Duration::from_secs(30), events.next())
                .await
                .expect("no alert_volume notification on dfp.events.notification.azure")
                .unwrap();
            let e: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            let header = m.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id"));
            assert_eq!(header.map(|v| v.as_str()), e["id"].as_str(), "{e}");
            assert_eq!(e["source"], "azure", "{e}");
            if e["kind"] == "alert_volume" && e["details"]["count"].as_u64() > Some(0) {
                break;
            }
        }
    });
    drop(client);
}

#[test]
fn notifications_wait_in_the_outbox_while_the_webhook_is_down_and_arrive_once_later() {
    use dfp_bench::net::free_port;
    use dfp_bench::webhook::Webhook;
    let base = tempfile::tempdir().unwrap();
    let root = base.path();
    logs(GenSource::Azure, 8, 9, &root.join("logs"));
    let port = free_port();
    let run_once = || {
        let mut opts = options("azure", common::split_control(root, "control", 7), root, 2);
        let n = &mut opts.config.notifications;
        n.webhook = Some(format!("http://127.0.0.1:{port}/hook"));
        n.max_alerts_per_epoch = Some(0);
        n.flush_seconds = 1;
        run(opts).unwrap()
    };
    // Down: the run completes and every notification waits in the outbox.
    let summary = run_once();
    assert!(summary.stats.alerts > 0, "{}", summary.line());
    let outbox = root.join("output/dfp_notifications_outbox.jsonl");
    let waiting: std::collections::BTreeSet<String> = read(&outbox)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(!waiting.is_empty());
    // Up: the next run delivers them, and its own (the same epochs, the same ids) once.
    let hook = Webhook::on(port);
    run_once();
    let got = hook.received();
    let ids: Vec<String> = got
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_string())
        .collect();
    let unique: std::collections::BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(unique, waiting, "{got:?}");
    assert_eq!(ids.len(), unique.len(), "a notification delivered twice");
    assert!(got.iter().all(|n| n["kind"] == "alert_volume"
        || n["kind"] == "parity_breach"
        || n["kind"] == "training_failed"));
    assert!(
        got.iter()
            .any(|n| n["kind"] == "alert_volume" && n["details"]["count"].as_u64() > Some(0))
    );
    assert!(
        !outbox.exists(),
        "the outbox is emptied once all is delivered"
    );
}
