//! The MLflow registry backend against a real `mlflow server` (started by each test on
//! 127.0.0.1 with SQLite and a proxied artifact store in a temporary directory): runs push
//! their models, lineage and aliases; promotions and rollbacks follow; a server that is down
//! costs no model, and pushing again never doubles a version.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers: a failure is a test failure

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{logs, options};
use dfp_bench::mlflow::MlflowServer;
use dfp_bench::net::free_port;
use dfp_engine::generate::GenSource;
use dfp_engine::lifecycle::Promotion;
use dfp_engine::registry::Registry;
use dfp_operators::mlflow::client::tag;
use dfp_operators::mlflow::{Client, Syncer, mlflow_name};
use dfp_operators::pipeline::{MlflowOptions, RunSummary, run};
use serde_json::Value;

/// Trains on days 1 .. `split` and scores to day 9 of `root/logs`, output into `root/out`,
/// models into `root/models`, mirrored to `uri`.
fn run_to(root: &Path, split: u32, out: &str, uri: &str, flush: Duration) -> RunSummary {
    let mut opts = options("azure", common::split_control(root, out, split), root, 2);
    opts.output = root.join(out);
    opts.config.lifecycle.promotion = Promotion::Manual;
    opts.mlflow = Some(MlflowOptions::new(uri, flush));
    run(opts).unwrap()
}

/// A client of `server` whose 30 s request timeout only stops a request MLflow never answers
/// from hanging the test.
fn client(server: &MlflowServer) -> Client {
    Client::new(&server.uri(), Duration::from_secs(30)).unwrap()
}

/// MLflow's versions of `name`, by dfp version: (MLflow version, source).
fn versions(c: &Client, name: &str) -> BTreeMap<u32, (String, String)> {
    let mut out = BTreeMap::new();
    for v in c.versions(&mlflow_name(name)).unwrap() {
        let dfp: u32 = tag(&v, "dfp.version").unwrap().parse().unwrap();
        assert_eq!(tag(&v, "dfp.name").as_deref(), Some(name));
        let mv = v["version"].as_str().unwrap().to_string();
        let source = v["source"].as_str().unwrap().to_string();
        assert!(
            out.insert(dfp, (mv, source)).is_none(),
            "{name} v{dfp} twice in MLflow"
        );
    }
    out
}

/// MLflow's aliases of `name`, as dfp versions.
fn aliases(c: &Client, name: &str) -> BTreeMap<String, u32> {
    let by_mlflow: BTreeMap<String, u32> = versions(c, name)
        .into_iter()
        .map(|(dfp, (mv, _))| (mv, dfp))
        .collect();
    let model = c.model(&mlflow_name(name)).unwrap();
    model["aliases"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            let mv = a["version"].as_str().unwrap();
            (a["alias"].as_str().unwrap().to_string(), by_mlflow[mv])
        })
        .collect()
}

fn local_aliases(registry: &Registry, name: &str) -> BTreeMap<String, u32> {
    registry.lifecycle(name).unwrap().aliases
}

#[test]
fn runs_push_models_lineage_and_aliases_and_promotions_and_rollbacks_follow() {
    let server = MlflowServer::start();
    let c = client(&server);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    logs(GenSource::Azure, 6, 9, &root.join("logs"));
    let registry = Registry::open(&root.join("models")).unwrap();
    // Pushes retry while MLflow fails in a way that can pass; the 60 s only stops a push that
    // never succeeds from hanging the test.
    let flush = Duration::from_secs(60);

    let first = run_to(root, 6, "first", &server.uri(), flush);
    let report = first.mlflow.clone().unwrap();
    let models = registry.list().unwrap();
    // What MLflow's own REST API lists: every model, with its champion.
    let listed = server.get("registered-models/search?max_results=1000");
    let mut names: Vec<String> = listed["registered_models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["aliases"][0]["alias"], "champion", "{m}");
            m["name"].as_str().unwrap().to_string()
        })
        .collect();
    names.sort();
    let mut want: Vec<String> = models.iter().map(|(n, _)| mlflow_name(n)).collect();
    want.sort();
    assert_eq!(names, want);
    assert!(models.len() >= 3, "{models:?}");
    assert_eq!(report.unsynced, Vec::<(String, String)>::new());
    assert_eq!(
        report.versions,
        models.iter().map(|(_, v)| v.len()).sum::<usize>()
    );
    assert!(first.line().contains("versions and"), "{}", first.line());
    for (name, local) in &models {
        let remote = versions(&c, name);
        assert_eq!(remote.keys().copied().collect::<Vec<_>>(), *local, "{name}");
        assert_eq!(aliases(&c, name), local_aliases(&registry, name), "{name}");
        // The artifact is the model file, byte for byte, and the version's lineage is tagged.
        let (_, source) = &remote[&1];
        let bytes = c.download(source, "v000001.dfpmodel").unwrap();
        assert_eq!(bytes, registry.model_bytes(name, 1).unwrap(), "{name}");
        let v = &c.versions(&mlflow_name(name)).unwrap()[0];
        let lineage = registry.version(name, 1).unwrap().lineage.unwrap();
        assert_eq!(tag(v, "dfp.config_hash"), Some(lineage.config_hash));
        assert_eq!(tag(v, "dfp.run"), lineage.run);
        assert_eq!(
            tag(v, "dfp.rows"),
            Some(registry.version(name, 1).unwrap().header.rows.to_string())
        );
        assert!(v["run_id"].as_str().is_some_and(|r| !r.is_empty()));
    }

    // Retrained under manual promotion: the new versions arrive as challengers.
    let second = run_to(root, 8, "second", &server.uri(), flush);
    assert_eq!(second.mlflow.as_ref().unwrap().unsynced.len(), 0);
    let twice: Vec<String> = registry
        .list()
        .unwrap()
        .into_iter()
        .filter(|(_, v)| v.len() == 2)
        .map(|(n, _)| n)
        .collect();
    assert!(twice.len() >= 2, "{twice:?}");
    let name = &twice[0];
    let want = BTreeMap::from([("champion".to_string(), 1), ("challenger".to_string(), 2)]);
    assert_eq!(aliases(&c, name), want);

    // A promotion and a rollback reach MLflow with the next push; the rolled-back version is
    // kept there, tagged.
    let mut syncer = Syncer::new(registry.clone(), client(&server));
    registry.promote(name, 2, "test", "better").unwrap();
    let (pushed, left) = syncer.sync_all(Instant::now() + flush).unwrap();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!((pushed.versions, pushed.aliases), (0, 1));
    assert_eq!(
        aliases(&c, name),
        BTreeMap::from([("champion".to_string(), 2)])
    );
    registry.rollback(name, "test", "worse").unwrap();
    syncer.sync_all(Instant::now() + flush).unwrap();
    assert_eq!(
        aliases(&c, name),
        BTreeMap::from([("champion".to_string(), 1)])
    );
    let v2 = c
        .versions(&mlflow_name(name))
        .unwrap()
        .into_iter()
        .find(|v| tag(v, "dfp.version").as_deref() == Some("2"))
        .unwrap();
    assert_eq!(tag(&v2, "dfp.rolled_back").as_deref(), Some("true"));
    let last: Value = serde_json::from_str(
        &tag(&c.model(&mlflow_name(name)).unwrap(), "dfp.last_change").unwrap(),
    )
    .unwrap();
    assert_eq!(
        (last["action"].as_str(), last["why"].as_str()),
        (Some("rollback"), Some("worse"))
    );
}

#[test]
fn a_server_that_is_down_costs_no_model_and_pushing_again_never_doubles_a_version() {
    let port = free_port();
    let uri = format!("mlflow+http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    logs(GenSource::Azure, 5, 9, &root.join("logs"));
    let registry = Registry::open(&root.join("models")).unwrap();

    // Nothing listens: the run completes, every model is in the local registry, and the
    // summary names what was not pushed (every push is refused at once, so the 1 s budget
    // decides nothing here).
    let summary = run_to(root, 6, "down", &uri, Duration::from_secs(1));
    let models = registry.list().unwrap();
    assert!(models.len() >= 3, "{models:?}");
    assert!(summary.stats.models_trained as usize >= models.len());
    let report = summary.mlflow.clone().unwrap();
    assert_eq!(report.versions, 0);
    assert_eq!(report.unsynced.len(), models.len(), "{report:?}");
    assert!(
        report.unsynced[0].1.contains(&format!("127.0.0.1:{port}")),
        "{:?}",
        report.unsynced[0]
    );
    assert!(
        summary.line().contains("not pushed yet"),
        "{}",
        summary.line()
    );
    assert!(summary.stats.detections > 0);

    // The server comes up: one push takes everything.
    let server = MlflowServer::on(port);
    let c = client(&server);
    let mut syncer = Syncer::new(registry.clone(), client(&server));
    // Only stops a push that never succeeds from hanging the test.
    let deadline = || Instant::now() + Duration::from_secs(60);
    let (pushed, left) = syncer.sync_all(deadline()).unwrap();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(pushed.versions, models.len());
    for (name, local) in &models {
        assert_eq!(
            versions(&c, name).keys().copied().collect::<Vec<_>>(),
            *local
        );
    }

    // Pushing again does nothing; losing the local record of what was pushed (a crash between
    // MLflow's answer and the record) finds the versions by their key tag instead of doubling.
    let (again, _) = syncer.sync_all(deadline()).unwrap();
    assert_eq!((again.versions, again.aliases), (0, 0));
    for (name, _) in &models {
        std::fs::remove_file(registry.model_dir(name).unwrap().join("mlflow.json")).unwrap();
    }
    let mut fresh = Syncer::new(registry.clone(), client(&server));
    let (found, left) = fresh.sync_all(deadline()).unwrap();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(found.versions, 0, "versions created again");
    for (name, local) in &models {
        assert_eq!(versions(&c, name).len(), local.len(), "{name}");
        assert_eq!(aliases(&c, name), local_aliases(&registry, name), "{name}");
    }
}
