//! `dfp serve` against a real nats-server with JetStream: a stream of single-record requests
//! answered by two instances of one queue group, one killed with SIGKILL half-way and the
//! client retrying by request id, gets exactly the scores `dfp run` gives the same events;
//! detections are published as events; SIGTERM drains; bad records are answered by index.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers: a failure is a test failure

mod common;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use common::{dfp, dfp_command, succeeded};
use dfp_bench::nats::NatsServer;
use futures_util::StreamExt;
use serde_json::Value;

/// The run config both `dfp run` and `dfp serve` score with: small models, familiarity on,
/// the fixed threshold with a max_abs_z cut.
const CONFIG: &str = r#"
[training_window]
min_history = 60
min_increment = 60
[model]
epochs = 3
encoder_layers = [16]
decoder_layers = [16]
[detection]
threshold = 3.5
max_threshold = 30.0
[familiarity]
enabled = true
"#;

/// A registry trained on a week of 10 users' Azure logs, the eighth day's records in event
/// time order (raw JSON), and `dfp run`'s scores of them by event id.
struct Scenario {
    dir: tempfile::TempDir,
    records: Vec<String>,
    /// event id -> (mean_abs_z, max_abs_z, model_version)
    scores: HashMap<String, (f32, f32, String)>,
    /// The event ids `dfp run` detected.
    detected: HashSet<String>,
}

impl Scenario {
    fn path(&self, p: &str) -> String {
        self.dir.path().join(p).to_str().unwrap().to_string()
    }
}

fn scenario() -> Scenario {
    let dir = tempfile::tempdir().unwrap();
    let d = |p: &str| dir.path().join(p).to_str().unwrap().to_string();
    std::fs::write(d("serve.toml"), CONFIG).unwrap();
    let demo = d("demo");
    let out = dfp(&[
        "demo",
        "--users",
        "10",
        "--days",
        "8",
        "--train-days",
        "7",
        "--dir",
        &demo,
        "--config",
        &d("serve.toml"),
        "-q",
    ]);
    succeeded(&out);
    // The eighth day scored on its own, from empty windows, as `dfp serve` starts.
    let control = serde_json::json!({"inputs": [{
        "tasks": [
            {"type": "load", "properties": {"loader_id": "fsspec", "files": [format!("{demo}/logs/*.json")]}},
            {"type": "inference", "properties": {}}
        ],
        "metadata": {"data_type": "streaming", "batching_options":
            {"period": "D", "start_time": "2022-08-08", "end_time": "2022-08-09"}}
    }]});
    std::fs::write(d("infer.json"), control.to_string()).unwrap();
    let out = dfp(&[
        "run",
        "--source",
        "azure",
        "--control-messages",
        &d("infer.json"),
        "--registry",
        &format!("{demo}/models"),
        "--output",
        &d("batch"),
        "--write-scores",
        "--config",
        &d("serve.toml"),
    ]);
    succeeded(&out);
    let text = std::fs::read_to_string(d("batch/dfp_scores_azure.csv")).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    let names: Vec<&str> = header.split(',').collect();
    let col = |n: &str| names.iter().position(|c| *c == n).unwrap();
    let (id, mean, max, version) = (
        col("event_id"),
        col("mean_abs_z"),
        col("max_abs_z"),
        col("model_version"),
    );
    let scores: HashMap<String, (f32, f32, String)> = lines
        .map(|l| {
            let c = dfp_operators::serialize::csv_cells(l, header).unwrap();
            let z = |i: usize| c[i].parse::<f32>().unwrap();
            (c[id].clone(), (z(mean), z(max), c[version].clone()))
        })
        .collect();
    let text = std::fs::read_to_string(d("batch/dfp_detections_azure.jsonl")).unwrap();
    let detected = text
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["event_id"].as_str().unwrap().to_string()
        })
        .collect();
    let mut records: Vec<(String, String)> = Vec::new();
    for entry in std::fs::read_dir(format!("{demo}/logs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue; // labels.jsonl
        }
        let text = std::fs::read_to_string(path).unwrap();
        let file: Vec<Value> = serde_json::from_str(&text).unwrap();
        for r in file {
            let time = r["time"].as_str().unwrap().to_string();
            if time.as_str() >= "2022-08-08" {
                records.push((time, r.to_string()));
            }
        }
    }
    records.sort();
    assert_eq!(
        records.len(),
        scores.len(),
        "every record of the day is scored once"
    );
    Scenario {
        dir,
        records: records.into_iter().map(|(_, r)| r).collect(),
        scores,
        detected,
    }
}

/// A `dfp serve` process whose log is kept in a file.
struct Instance {
    child: Child,
    log: PathBuf,
}

impl Instance {
    fn start(nats: &NatsServer, s: &Scenario, name: &str) -> Instance {
        Self::with(nats, s, name, "info", &[])
    }

    /// One logging at `level` (`DFP_LOG`), with more flags.
    fn with(nats: &NatsServer, s: &Scenario, name: &str, level: &str, flags: &[&str]) -> Instance {
        let registry = ["--registry", &s.path("demo/models")];
        Self::on_registry(nats, s, name, level, &registry, flags)
    }

    /// One on the registry that the flags `registry` name.
    fn on_registry(
        nats: &NatsServer,
        s: &Scenario,
        name: &str,
        level: &str,
        registry: &[&str],
        flags: &[&str],
    ) -> Instance {
        let log = s.dir.path().join(format!("{name}.log"));
        let child = dfp_command()
            .args([
                "serve",
                "--nats",
                &nats.url,
                "--source",
                "azure",
                "--config",
                &s.path("serve.toml"),
            ])
            .args(registry)
            .args(flags)
            .env("DFP_LOG", level)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut i = Instance { child, log };
        i.wait_for("serving");
        i
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_for(&mut self, text: &str) {
        self.wait_for_count(text, 1);
    }

    /// Waits until `text` is in the log `n` times.
    fn wait_for_count(&mut self, text: &str, n: usize) {
        let started = Instant::now();
        while self.log().matches(text).count() < n {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("dfp serve ended ({status}):\n{}", self.log());
            }
            // Only stops a wait for a line that never comes.
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no {text:?} in the log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client whose requests give up after 3 s: a request sent to an instance that was killed
/// gets no reply, and [`ask`] sends it again (to the other); a slow answer is sent again too,
/// which the request id makes harmless, so no outcome depends on how fast the machine is.
async fn client(nats: &NatsServer) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .request_timeout(Some(Duration::from_secs(3)))
        .connect(&nats.url)
        .await
        .unwrap()
}

/// Asks until answered: a request that times out or finds no instance is sent again with the
/// same id, as a client of an at-least-once service does.
async fn ask(client: &async_nats::Client, id: &str, body: String) -> Value {
    let mut headers = HeaderMap::new();
    headers.insert("Dfp-Request-Id", id);
    // The bound (about two minutes of tries) only stops a wait for an answer that never comes.
    for _ in 0..40 {
        match client
            .request_with_headers("dfp.score.azure", headers.clone(), body.clone().into())
            .await
        {
            Ok(m) => return serde_json::from_slice(&m.payload).unwrap(),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    panic!("request {id} was never answered");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn two_instances_answer_a_stream_with_the_batch_scores_and_a_killed_one_loses_nothing() {
    let s = scenario();
    let nats = NatsServer::start();
    // A snapshot every 3 changes (the stream keeps 6 entries a user): the ~15 requests of a
    // user go through snapshots, dropped entries and reads of both.
    let flags = ["--snapshot-every", "3"];
    let a = Instance::with(&nats, &s, "a", "info", &flags);
    let b = Instance::with(&nats, &s, "b", "info", &flags);
    // Each user's records in event-time order, one request each; the users side by side.
    let mut by_user: Vec<(String, Vec<(usize, String)>)> = Vec::new();
    for (i, record) in s.records.iter().enumerate() {
        let v: Value = serde_json::from_str(record).unwrap();
        let user = v["properties"]["userPrincipalName"]
            .as_str()
            .unwrap()
            .to_string();
        match by_user.iter_mut().find(|(u, _)| *u == user) {
            Some((_, rs)) => rs.push((i, record.clone())),
            None => by_user.push((user, vec![(i, record.clone())])),
        }
    }
    let rt = runtime();
    rt.block_on(async {
        let client = client(&nats).await;
        let mut events = client
            .subscribe("dfp.events.detection.azure")
            .await
            .unwrap();
        client.flush().await.unwrap();
        let answered = Arc::new(AtomicUsize::new(0));
        let mut streams = Vec::new();
        for (_, records) in by_user {
            let (client, answered) = (client.clone(), answered.clone());
            streams.push(tokio::spawn(async move {
                let mut replies = Vec::new();
                for (i, record) in records {
                    let id = format!("req-{i}");
                    let reply = ask(&client, &id, format!("[{record}]")).await;
                    // Sent again: the same answer, not applied twice.
                    if i % 25 == 0 {
                        let again = ask(&client, &id, format!("[{record}]")).await;
                        assert_eq!(again, reply, "request {id} answered twice differently");
                    }
                    answered.fetch_add(1, Ordering::SeqCst);
                    replies.push((i, reply));
                }
                replies
            }));
        }
        // SIGKILL to one instance half-way, with requests of several users in flight.
        while answered.load(Ordering::SeqCst) < s.records.len() / 2 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        a.signal("KILL");
        let mut alerts = HashSet::new();
        for stream in streams {
            for (i, reply) in stream.await.unwrap() {
                assert_eq!(reply["errors"], 0, "{reply}");
                let r = &reply["records"][0];
                let id = r["event_id"].as_str().unwrap();
                let (mean, max, version) = &s.scores[id];
                // One row at a time, against the batch's whole day per user: the same up to
                // the float rounding of another batch size in the network's matrix products.
                let close = |k: &str, want: f32| {
                    let got = r[k].as_f64().unwrap() as f32;
                    assert!(
                        (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                        "record {i} ({id}): {k} {got} against the batch's {want}: {r}"
                    );
                };
                close("mean_abs_z", *mean);
                close("max_abs_z", *max);
                assert_eq!(r["model_version"], version.as_str(), "record {i}: {r}");
                assert_eq!(r["alert"], s.detected.contains(id), "record {i}: {r}");
                if r["alert"] == true {
                    alerts.insert(r["detection_id"].as_str().unwrap().to_string());
                }
            }
        }
        assert!(
            !alerts.is_empty(),
            "no detection: the events would not be seen"
        );
        // Every detection was published, at least once (again when its request is retried):
        // each by the instance that answered, before its reply, so all are on their way here.
        let mut seen = HashSet::new();
        while seen != alerts {
            // Only stops a wait for an event that never comes.
            let m = tokio::time::timeout(Duration::from_secs(30), events.next())
                .await
                .unwrap_or_else(|_| panic!("{} of {} alerts published", seen.len(), alerts.len()))
                .unwrap();
            let e: Value = serde_json::from_slice(&m.payload).unwrap();
            let id = e["detection_id"].as_str().unwrap().to_string();
            assert!(alerts.contains(&id), "an event for no alert: {e}");
            let header = m.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id"));
            assert_eq!(header.map(|v| v.as_str()), Some(id.as_str()));
            seen.insert(id);
        }
        assert_eq!(seen, alerts);
    });
    assert!(b.log().contains("serving"));
}

#[test]
fn sigterm_drains_the_requests_in_flight_and_exits_0() {
    let s = scenario();
    let nats = NatsServer::start();
    let mut i = Instance::with(&nats, &s, "drain", "info,dfp=debug", &[]);
    let rt = runtime();
    rt.block_on(async {
        // The 60 s only stops a wait for a reply that never comes.
        let client = async_nats::ConnectOptions::new()
            .request_timeout(Some(Duration::from_secs(60)))
            .connect(&nats.url)
            .await
            .unwrap();
        // Eight requests of 300 users each (one state write per user), all received before
        // the signal: whether each is still being scored when it comes depends on the machine's
        // speed, and is not asserted; that each is answered in full is.
        let mut pending = Vec::new();
        for n in 0..8 {
            let body: Vec<String> = (0..300)
                .map(|k| {
                    let mut r: Value =
                        serde_json::from_str(&s.records[k % s.records.len()]).unwrap();
                    r["properties"]["userPrincipalName"] =
                        format!("drain-{n}-{k}@domain.com").into();
                    r.to_string()
                })
                .collect();
            let client = client.clone();
            pending.push(tokio::spawn(async move {
                client
                    .request("dfp.score.azure", format!("[{}]", body.join(",")).into())
                    .await
            }));
        }
        i.wait_for_count("request received", 8);
        i.signal("TERM");
        for p in pending {
            let reply = p
                .await
                .unwrap()
                .expect("every request received is answered");
            let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
            assert_eq!(reply["scored"], 300, "{}", reply["records"][0]);
        }
        // No instance takes requests any more.
        let after = client.request("dfp.score.azure", "[]".into()).await;
        assert!(after.is_err(), "answered after draining: {after:?}");
    });
    let status = i.child.wait().unwrap();
    assert!(status.success(), "{status:?}\n{}", i.log());
    let log = i.log();
    // The eight requests were received before the drain began, and answered (above).
    let draining = log
        .find("draining")
        .unwrap_or_else(|| panic!("no drain: {log}"));
    assert_eq!(
        log[..draining].matches("request received").count(),
        8,
        "{log}"
    );
    assert!(log[draining..].contains("drained"), "{log}");
}

#[test]
fn bad_requests_are_answered_with_the_problem_and_the_record_index() {
    let s = scenario();
    let nats = NatsServer::start();
    let _i = Instance::start(&nats, &s, "bad");
    let rt = runtime();
    rt.block_on(async {
        let client = client(&nats).await;
        let good = &s.records[0];
        let no_user = {
            let mut r: Value = serde_json::from_str(good).unwrap();
            r["properties"]
                .as_object_mut()
                .unwrap()
                .remove("userPrincipalName");
            r.to_string()
        };
        let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
        let body = [
            good.clone(),
            "{\"time\": ".into(),
            no_user,
            deep,
            good.clone(),
        ]
        .join("\n");
        let reply = ask(&client, "bad-1", body).await;
        assert_eq!(reply["scored"], 2, "{reply}");
        assert_eq!(reply["errors"], 3, "{reply}");
        let records = reply["records"].as_array().unwrap();
        let index: Vec<i64> = records
            .iter()
            .map(|r| r["index"].as_i64().unwrap())
            .collect();
        assert_eq!(index, vec![0, 1, 2, 3, 4]);
        assert!(
            records[2]["error"].as_str().unwrap().contains("no user"),
            "{reply}"
        );
        for k in [1, 3] {
            assert!(records[k]["error"].is_string(), "{reply}");
        }
        let huge = "{}\n".repeat(10_001);
        let reply = ask(&client, "bad-huge", huge).await;
        let error = reply["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("10001 records") && error.contains("--max-records"),
            "{reply}"
        );
        for body in ["", "not json at all", "{\"time\": 5"] {
            let reply = ask(&client, &format!("bad-{body}"), body.to_string()).await;
            assert!(
                reply["error"].is_string() || reply["errors"] == 1,
                "{body:?}: {reply}"
            );
        }
    });
}

#[test]
fn a_new_champion_serves_without_a_restart_and_is_announced() {
    let s = scenario();
    let nats = NatsServer::start();
    let _i = Instance::with(&nats, &s, "reload", "info", &["--reload-every", "0.1"]);
    let record = format!("[{}]", s.records[0]);
    let user: Value = serde_json::from_str(&s.records[0]).unwrap();
    let user = user["properties"]["userPrincipalName"].as_str().unwrap();
    let model = format!("DFP-azure-{user}");
    let rt = runtime();
    rt.block_on(async {
        let client = client(&nats).await;
        let mut events = client.subscribe("dfp.events.model.azure").await.unwrap();
        client.flush().await.unwrap();
        let version = |reply: &Value| {
            reply["records"][0]["model_version"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let reply = ask(&client, "v1", record.clone()).await;
        assert_eq!(version(&reply), format!("{model}:1"));
        // Trained again (the demo's control message): every model gets a version 2 champion.
        retrain(&s, &["--registry", &s.path("demo/models")]);
        let event = next_event(&mut events, &model).await;
        assert_eq!(
            (
                event["role"].as_str(),
                event["version"].as_u64(),
                event["previous"].as_u64()
            ),
            (Some("champion"), Some(2), Some(1)),
            "{event}"
        );
        // The same record under a new request id: scored again, now by version 2.
        let reply = ask(&client, "v2", record.clone()).await;
        assert_eq!(version(&reply), format!("{model}:2"), "{reply}");
        let out = dfp(&[
            "models",
            "--registry",
            &s.path("demo/models"),
            "rollback",
            &model,
        ]);
        succeeded(&out);
        let event = next_event(&mut events, &model).await;
        assert_eq!(
            (event["version"].as_u64(), event["previous"].as_u64()),
            (Some(1), Some(2)),
            "{event}"
        );
        let reply = ask(&client, "v3", record).await;
        assert_eq!(version(&reply), format!("{model}:1"), "{reply}");
    });
}

/// Trains the scenario's models again (the demo's control message) into the registry the
/// flags `registry` name: every model gets a version 2 champion.
fn retrain(s: &Scenario, registry: &[&str]) {
    let run = [
        "run",
        "--source",
        "azure",
        "--control-messages",
        &s.path("demo/control.json"),
        "--output",
        &s.path("retrain"),
        "--config",
        &s.path("serve.toml"),
        "-q",
    ];
    succeeded(&dfp(&[&run[..], registry].concat()));
}

/// The next model event about `model`.
async fn next_event(events: &mut async_nats::Subscriber, model: &str) -> Value {
    loop {
        // Only stops a wait for an event that never comes.
        let m = tokio::time::timeout(Duration::from_secs(30), events.next())
            .await
            .expect("a model event within 30 s")
            .unwrap();
        let e: Value = serde_json::from_slice(&m.payload).unwrap();
        if e["model"] == model {
            return e;
        }
    }
}

#[test]
fn the_admin_api_enforces_roles_on_every_route_and_serves_each_role_its_calls() {
    use dfp_bench::net::{free_port, http};
    let s = scenario();
    let nats = NatsServer::start();
    let tokens = [
        ("olivia", "owner", "owner-token-0123456789"),
        ("uma", "user", "user-token-0123456789"),
        ("carl", "consumer", "consumer-token-0123456789"),
    ];
    let file: String = tokens
        .iter()
        .map(|(n, r, t)| format!("[[token]]\nname = \"{n}\"\nrole = \"{r}\"\ntoken = \"{t}\"\n"))
        .collect();
    std::fs::write(s.dir.path().join("tokens.toml"), file).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut i = Instance::with(
        &nats,
        &s,
        "admin",
        "info",
        &["--http", &addr, "--tokens", &s.path("tokens.toml")],
    );
    i.wait_for("admin API");
    let model = {
        let v: Value = serde_json::from_str(&s.records[0]).unwrap();
        format!(
            "DFP-azure-{}",
            v["properties"]["userPrincipalName"].as_str().unwrap()
        )
    };
    let day = format!("[{}]", s.records.join(","));
    let call = |method: &str, path: &str, token: Option<&str>, body: &str| {
        http(&addr, method, path, token, body).unwrap()
    };
    // Liveness and readiness need no token.
    assert_eq!(call("GET", "/health", None, "").0, 200);
    assert_eq!(call("GET", "/ready", None, "").0, 200);
    // Every route: who may call it.
    let routes: Vec<(&str, String, &str, Vec<&str>)> = vec![
        ("GET", "/metrics".into(), "", vec!["owner", "user"]),
        ("GET", "/models".into(), "", vec!["owner", "user"]),
        ("GET", format!("/models/{model}"), "", vec!["owner", "user"]),
        (
            "POST",
            "/feedback".into(),
            r#"{"detection_id": "none", "label": "benign"}"#,
            vec!["owner", "user"],
        ),
        ("GET", "/detections".into(), "", vec!["owner", "user"]),
        ("POST", "/score".into(), &day, vec!["owner", "consumer"]),
        ("GET", "/config".into(), "", vec!["owner"]),
        (
            "POST",
            format!("/models/{model}/promote"),
            r#"{"version": 1, "why": "a test"}"#,
            vec!["owner"],
        ),
        (
            "POST",
            format!("/models/{model}/rollback"),
            "",
            vec!["owner"],
        ),
    ];
    for (method, path, body, allowed) in &routes {
        let (code, text) = call(method, path, None, body);
        assert_eq!(code, 401, "{method} {path} without a token: {text}");
        let (code, _) = call(method, path, Some("not-a-token-at-all"), body);
        assert_eq!(code, 401, "{method} {path} with an unknown token");
        for (name, role, token) in &tokens {
            let (code, text) = call(method, path, Some(token), body);
            if allowed.contains(role) {
                assert!(
                    code != 401 && code != 403,
                    "{method} {path} as {name}: {code} {text}"
                );
            } else {
                assert_eq!(code, 403, "{method} {path} as {name} ({role}): {text}");
                assert!(text.contains(&format!("{method} ")), "{text}");
            }
        }
    }
    // What each role gets: the consumer's day of records scored, the detections listed to a
    // user, who judges one under her name.
    let (code, text) = call("POST", "/score", Some(tokens[2].2), &day);
    let reply: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (code, reply["scored"].as_u64()),
        (200, Some(s.records.len() as u64)),
        "{text}"
    );
    let started = Instant::now();
    let listed = loop {
        let (_, text) = call("GET", "/detections?limit=5", Some(tokens[1].2), "");
        let listed: Vec<Value> = serde_json::from_str(&text).unwrap();
        if !listed.is_empty() {
            break listed;
        }
        // Only stops a wait for events that never come.
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no detection listed"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(listed.len() <= 5);
    let id = listed[0]["detection_id"].as_str().unwrap();
    let body = format!(r#"{{"detection_id": "{id}", "label": "benign", "note": "a trip"}}"#);
    let (code, text) = call("POST", "/feedback", Some(tokens[1].2), &body);
    assert_eq!(code, 201, "{text}");
    let recorded: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(recorded["verdict"]["by"], "uma");
    assert_eq!(recorded["detection"]["detection_id"], id);
    // An instance started after the detection judges it too (kept in the stream), and says
    // so for one no instance kept.
    let later_addr = format!("127.0.0.1:{}", free_port());
    let mut later = Instance::with(
        &nats,
        &s,
        "admin-later",
        "info",
        &["--http", &later_addr, "--tokens", &s.path("tokens.toml")],
    );
    later.wait_for("admin API");
    let oldest = listed.last().unwrap();
    let body = format!(
        r#"{{"detection_id": "{}", "label": "true_positive"}}"#,
        oldest["detection_id"].as_str().unwrap()
    );
    let (code, text) = http(&later_addr, "POST", "/feedback", Some(tokens[0].2), &body).unwrap();
    assert_eq!(code, 201, "{text}");
    let recorded: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(&recorded["detection"], oldest, "{text}");
    let body = r#"{"detection_id": "never-detected", "label": "benign"}"#;
    let (code, text) = http(&later_addr, "POST", "/feedback", Some(tokens[0].2), body).unwrap();
    assert_eq!(code, 404, "{text}");
    let (code, text) = call(
        "POST",
        "/feedback",
        Some(tokens[1].2),
        r#"{"detection_id": "x", "label": "maybe"}"#,
    );
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("label") || text.contains("maybe"), "{text}");
    for (method, path) in [
        ("GET", "/models/DFP-azure-nobody"),
        ("POST", "/models/DFP-azure-nobody/rollback"),
    ] {
        let (code, text) = call(method, path, Some(tokens[0].2), "");
        assert_eq!(code, 404, "{method} {path}: {text}");
        assert!(text.contains("DFP-azure-nobody"), "{text}");
    }
    let (_, metrics) = call("GET", "/metrics", Some(tokens[1].2), "");
    assert!(
        metrics.contains("dfp_serve_records_scored_total"),
        "{metrics}"
    );
    let (_, config) = call("GET", "/config", Some(tokens[0].2), "");
    let config: Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["detection"]["max_threshold"], 30.0);
    // Refusals are logged, tokens never.
    let log = i.log();
    assert!(log.contains("refused"), "{log}");
    for (_, _, token) in &tokens {
        assert!(!log.contains(token), "a token in the log");
    }
}

#[test]
fn an_unreadable_registry_opens_the_circuit_and_the_last_good_models_keep_serving() {
    let s = scenario();
    let nats = NatsServer::start();
    let mut i = Instance::with(
        &nats,
        &s,
        "breaker",
        "info",
        &["--reload-every", "0.05", "--breaker-open-for", "0.5"],
    );
    let rt = runtime();
    rt.block_on(async {
        let client = client(&nats).await;
        let record = |k: usize| format!("[{}]", s.records[k]);
        let first = ask(&client, "b-0", record(0)).await;
        assert!(first.get("registry_error").is_none(), "{first}");
        let version = first["records"][0]["model_version"].clone();
        // The registry goes away: after three failed reads the circuit opens.
        let models = s.dir.path().join("demo/models");
        let away = s.dir.path().join("demo/models-away");
        std::fs::rename(&models, &away).unwrap();
        i.wait_for("circuit open");
        let during = ask(&client, "b-1", record(1)).await;
        let why = during["registry_error"].as_str().unwrap_or_default();
        assert!(
            why.contains("cannot be read") && why.contains("models"),
            "{during}"
        );
        // The models already loaded still score.
        assert_eq!(during["scored"], 1, "{during}");
        if during["records"][0]["username"] == first["records"][0]["username"] {
            assert_eq!(during["records"][0]["model_version"], version);
        }
        // Back: the half-open read closes the circuit and replies are plain again.
        std::fs::rename(&away, &models).unwrap();
        i.wait_for("circuit closed");
        let after = ask(&client, "b-2", record(2)).await;
        assert!(after.get("registry_error").is_none(), "{after}");
        assert_eq!(after["scored"], 1, "{after}");
    });
}

#[test]
fn an_mlflow_registry_is_followed_and_the_admin_apis_changes_are_pushed_to_it() {
    use dfp_bench::mlflow::MlflowServer;
    use dfp_bench::net::{free_port, http};
    use dfp_engine::registry::Registry;
    use dfp_operators::mlflow::client::tag;
    use dfp_operators::mlflow::{Client, mlflow_name};
    let s = scenario();
    let nats = NatsServer::start();
    let mut mlflow = MlflowServer::start();
    let uri = mlflow.uri();
    // The trainer's registry is pushed to MLflow; the instance has an empty copy of its own.
    let trainer = [
        "--registry",
        &uri,
        "--registry-cache",
        &s.path("demo/models"),
    ];
    succeeded(&dfp(&[&["models"], &trainer[..], &["sync"]].concat()));
    let token = "owner-token-0123456789";
    std::fs::write(
        s.dir.path().join("tokens.toml"),
        format!("[[token]]\nname = \"olivia\"\nrole = \"owner\"\ntoken = \"{token}\"\n"),
    )
    .unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let cache = s.path("serve-cache");
    let mut i = Instance::on_registry(
        &nats,
        &s,
        "mlflow",
        "info",
        &["--registry", &uri, "--registry-cache", &cache],
        &[
            "--reload-every",
            "0.2",
            "--breaker-open-for",
            "1",
            "--http",
            &addr,
            "--tokens",
            &s.path("tokens.toml"),
        ],
    );
    let record: Value = serde_json::from_str(&s.records[0]).unwrap();
    let model = format!(
        "DFP-azure-{}",
        record["properties"]["userPrincipalName"].as_str().unwrap()
    );
    let body = format!("[{}]", s.records[0]);
    let mlflow_champion = || {
        // The 30 s request timeout only stops a request MLflow never answers from hanging.
        let c = Client::new(&uri, Duration::from_secs(30)).unwrap();
        let m = c.model(&mlflow_name(&model)).unwrap();
        let alias = m["aliases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["alias"] == "champion")
            .unwrap()["version"]
            .as_str()
            .unwrap()
            .to_string();
        let v = c.version(&mlflow_name(&model), &alias).unwrap();
        tag(&v, "dfp.version").unwrap()
    };
    let rt = runtime();
    rt.block_on(async {
        let client = client(&nats).await;
        let mut events = client.subscribe("dfp.events.model.azure").await.unwrap();
        client.flush().await.unwrap();
        // Pulled at start: the champions downloaded into the copy score as the trainer's do.
        let reply = ask(&client, "m-1", body.clone()).await;
        let answer = &reply["records"][0];
        assert_eq!(answer["model_version"], format!("{model}:1"), "{reply}");
        let (mean, _, _) = &s.scores[answer["event_id"].as_str().unwrap()];
        // The same up to the float rounding of another batch size (see the first test).
        let got = answer["mean_abs_z"].as_f64().unwrap() as f32;
        assert!(
            (got - mean).abs() <= 1e-5 * mean.abs().max(1.0),
            "{got} against {mean}"
        );
        let copy = Registry::open(std::path::Path::new(&cache)).unwrap();
        assert_eq!(copy.version_numbers(&model).unwrap(), [1]);
        let lineage = copy.version(&model, 1).unwrap().lineage.unwrap();
        assert!(!lineage.config_hash.is_empty(), "{lineage:?}");
        // The trainer trains again and pushes: the instance follows without a restart.
        retrain(&s, &trainer);
        let event = next_event(&mut events, &model).await;
        assert_eq!(
            (event["version"].as_u64(), event["previous"].as_u64()),
            (Some(2), Some(1)),
            "{event}"
        );
        let reply = ask(&client, "m-2", body.clone()).await;
        assert_eq!(reply["records"][0]["model_version"], format!("{model}:2"));
        // A rollback through the admin API goes to MLflow, where every instance finds it.
        let path = format!("/models/{model}/rollback");
        let (code, text) = http(&addr, "POST", &path, Some(token), "").unwrap();
        assert_eq!(code, 200, "{text}");
        let done: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(done["mlflow"], "pushed", "{done}");
        assert_eq!(mlflow_champion(), "1");
        let event = next_event(&mut events, &model).await;
        assert_eq!(event["version"].as_u64(), Some(1), "{event}");
        let reply = ask(&client, "m-3", body.clone()).await;
        assert_eq!(reply["records"][0]["model_version"], format!("{model}:1"));
        // MLflow goes away: the circuit opens, the models already loaded keep scoring.
        mlflow.stop();
        i.wait_for("circuit open");
        let reply = ask(&client, "m-4", body.clone()).await;
        let why = reply["registry_error"].as_str().unwrap_or_default();
        assert!(why.contains("MLflow"), "{reply}");
        assert_eq!(reply["scored"], 1, "{reply}");
        assert_eq!(reply["records"][0]["model_version"], format!("{model}:1"));
        // A promotion meanwhile serves here at once and reaches MLflow once it is back.
        let path = format!("/models/{model}/promote");
        let (code, text) = http(&addr, "POST", &path, Some(token), r#"{"version": 2}"#).unwrap();
        assert_eq!(code, 200, "{text}");
        let done: Value = serde_json::from_str(&text).unwrap();
        let pending = done["mlflow"].as_str().unwrap_or_default();
        assert!(pending.starts_with("not pushed yet"), "{done}");
        let event = next_event(&mut events, &model).await;
        assert_eq!(event["version"].as_u64(), Some(2), "{event}");
        mlflow.resume();
        i.wait_for("circuit closed");
        assert_eq!(mlflow_champion(), "2");
        let reply = ask(&client, "m-5", body.clone()).await;
        assert!(reply.get("registry_error").is_none(), "{reply}");
        assert_eq!(reply["records"][0]["model_version"], format!("{model}:2"));
    });
}
