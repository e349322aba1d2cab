//! The MLflow registry backend: the local registry directory mirrored into a real MLflow
//! tracking server (`--registry mlflow+http://HOST:PORT`), so a team that runs MLflow sees
//! dfp's models, their lineage and their aliases there.
//!
//! **Local write first, then sync.** Training, scoring, promotion and rollback work on the
//! local registry (`--registry-cache`, by default `models`) exactly as without MLflow; a model
//! is never lost or delayed because MLflow is down. A [`Mirror`] thread follows the registry's
//! changes and pushes each model to MLflow:
//!
//! - each version not yet pushed: one MLflow run per version in experiment `dfp-{source}`
//!   (params: hyperparameters and lineage; metrics: training losses; the model file as the
//!   artifact `model/{version file}` through MLflow's artifact proxy), then a model version of
//!   registered model [`mlflow_name`] from that run, tagged with its lineage (`dfp.*`);
//! - then the aliases `champion` and `challenger`, `dfp.rolled_back` on rolled-back versions
//!   and the last recorded change as the registered model's `dfp.last_change` tag.
//!
//! What was pushed is recorded per model in `<model folder>/mlflow.json` (per server), written
//! after each step. A push interrupted between MLflow's answer and that record is found again
//! by its key tag (`dfp.key`: the model name's hash and the version) before anything is
//! created, so a crash, a retry or a second sync never doubles a version or a run. Failures
//! that can pass (no answer, 5xx, 429) are retried with exponential backoff (0.5 s to 30 s);
//! at the end of a run the mirror compares the whole registry (in a cluster sharing one
//! registry, process 0 does; the others push what they changed) and keeps trying until
//! everything is pushed or the flush time is spent; what is left is named in the run's summary
//! and pushed by the next run or `dfp models sync`.

pub mod client;
mod pull;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use dfp_engine::lifecycle::{CHALLENGER, CHAMPION, Lifecycle};
use dfp_engine::registry::{ModelVersion, Registry, escape};
use dfp_engine::{Error, Result, files};

use crate::retry::Backoff;

pub use client::{Client, MlflowError};
pub use pull::Pulls;

/// Where a run keeps its models: a local directory, optionally mirrored to MLflow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrySpec {
    /// The local registry directory (the source of truth for the run).
    pub local: PathBuf,
    /// The MLflow server's URI (`mlflow+http://HOST:PORT`), when mirrored.
    pub mlflow: Option<String>,
}

impl RegistrySpec {
    /// Reads `--registry` (a directory, or `mlflow+http://HOST:PORT`) and `--registry-cache`
    /// (the local directory of an MLflow registry).
    pub fn parse(registry: &str, cache: &Path) -> Result<RegistrySpec> {
        if registry.starts_with("mlflow+") {
            client::base_url(registry).map_err(|e| Error::stage("registry", e.to_string()))?;
            Ok(RegistrySpec {
                local: cache.to_path_buf(),
                mlflow: Some(registry.to_string()),
            })
        } else if registry.contains("://") {
            Err(Error::stage(
                "registry",
                format!(
                    "{registry:?}: a registry is a directory or mlflow+http://HOST:PORT (an \
                     MLflow tracking server)"
                ),
            ))
        } else {
            Ok(RegistrySpec {
                local: PathBuf::from(registry),
                mlflow: None,
            })
        }
    }
}

/// The registered-model name of a dfp model in MLflow: the same name (Morpheus' `DFP-{source}-
/// {user}`) when MLflow accepts it and a search filter can hold it, else its escaped form (the
/// registry folder's name), with the real name in the `dfp.name` tag.
pub fn mlflow_name(name: &str) -> String {
    let plain = !name.is_empty()
        && name.len() <= 200
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | '+'));
    if plain {
        name.to_string()
    } else {
        escape(name)
    }
}

/// What was pushed of one model to one server.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct Pushed {
    /// dfp version to MLflow version.
    versions: BTreeMap<u32, String>,
    /// The fingerprint of the aliases last pushed.
    aliases: Option<String>,
    /// The versions last tagged rolled back.
    rolled_back: BTreeSet<u32>,
}

const RECORD: &str = "mlflow.json";

fn read_record(path: &Path) -> Result<BTreeMap<String, Pushed>> {
    match std::fs::read(path) {
        // An unreadable record is pushed again from nothing: the key tags find what MLflow has.
        Ok(text) => Ok(serde_json::from_slice(&text).unwrap_or_else(|e| {
            tracing::warn!(file = %path.display(), error = %e, "unreadable MLflow sync record; comparing with MLflow again");
            BTreeMap::new()
        })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(Error::io(path, "reading the MLflow sync record", e)),
    }
}

/// The sync record of one model for one server, read to be changed and written back.
struct Record {
    path: PathBuf,
    server: String,
    name: String,
    /// Every server's record of the model.
    all: BTreeMap<String, Pushed>,
    /// This server's.
    pushed: Pushed,
}

impl Record {
    fn read(registry: &Registry, server: &str, name: &str) -> Result<Record> {
        let path = registry.model_dir(name)?.join(RECORD);
        let all = read_record(&path)?;
        let pushed = all.get(server).cloned().unwrap_or_default();
        Ok(Record {
            path,
            server: server.to_string(),
            name: name.to_string(),
            all,
            pushed,
        })
    }

    /// Records that the server's aliases are `lifecycle`'s.
    fn aliases_are(&mut self, lifecycle: &Lifecycle) {
        self.pushed.aliases = Some(fingerprint(lifecycle));
        self.pushed.rolled_back = lifecycle.rolled_back.clone();
    }

    fn save(&mut self) -> Result<()> {
        self.all.insert(self.server.clone(), self.pushed.clone());
        let text = serde_json::to_vec_pretty(&self.all).map_err(|e| Error::Json {
            context: format!("writing the MLflow sync record of {:?}", self.name),
            source: e,
        })?;
        files::replace(&self.path, &text, "writing the MLflow sync record")
    }
}

/// A sync failure: MLflow's (retryable or not) or the local registry's.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// MLflow failed.
    #[error(transparent)]
    Mlflow(#[from] MlflowError),
    /// The local registry failed.
    #[error(transparent)]
    Local(#[from] Error),
}

impl SyncError {
    /// Whether trying again later may succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, SyncError::Mlflow(e) if e.retryable())
    }
}

/// What one sync pushed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pushes {
    /// Versions created in MLflow.
    pub versions: usize,
    /// Models whose aliases were updated.
    pub aliases: usize,
}

impl std::ops::AddAssign for Pushes {
    fn add_assign(&mut self, o: Pushes) {
        self.versions += o.versions;
        self.aliases += o.aliases;
    }
}

/// Pushes the local `registry` to one MLflow server.
#[derive(Debug, Clone)]
pub struct Syncer {
    registry: Registry,
    client: Client,
    experiments: BTreeMap<String, String>,
    /// The MLflow aliases each model was last made to follow ([`Syncer::pull`]).
    followed: BTreeMap<String, pull::Aliases>,
}

fn millis(us: Option<i64>) -> i64 {
    us.map_or_else(|| chrono::Utc::now().timestamp_millis(), |us| us / 1000)
}

fn time_text(us: Option<i64>) -> String {
    us.and_then(chrono::DateTime::from_timestamp_micros)
        .map_or_else(String::new, |t| {
            t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        })
}

/// The version's lineage as `dfp.*` tags (also the run's params, under the same keys).
fn lineage_tags(v: &ModelVersion, key: &str) -> Vec<(String, String)> {
    let h = &v.header;
    let mut tags = vec![
        ("dfp.key", key.to_string()),
        ("dfp.name", v.name.clone()),
        ("dfp.version", v.version.to_string()),
        ("dfp.source", h.source.clone()),
        (
            "dfp.schema_fingerprint",
            format!("{:016x}", h.schema_fingerprint),
        ),
        ("dfp.first_event", time_text(h.first_timestamp_us)),
        ("dfp.last_event", time_text(h.last_timestamp_us)),
        ("dfp.rows", h.rows.to_string()),
    ];
    if let Some(l) = &v.lineage {
        tags.push(("dfp.registered_at", l.registered_at.clone()));
        tags.push(("dfp.config_hash", l.config_hash.clone()));
        tags.push(("dfp.dfp_version", l.dfp_version.clone()));
        if let Some(run) = &l.run {
            tags.push(("dfp.run", run.clone()));
        }
        if let Some(c) = l.challenged {
            tags.push(("dfp.challenged", c.to_string()));
        }
    }
    tags.into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .filter(|(_, v)| !v.is_empty())
        .collect()
}

/// The tag of a version's model file checksum ([`checksum`]): a copy that differs is refused.
const CHECKSUM: &str = "dfp.checksum";

fn checksum(bytes: &[u8]) -> String {
    format!("{:016x}", dfp_engine::hash::fnv1a64(bytes))
}

/// The lineage a version's tags carry ([`lineage_tags`]), when they carry one.
fn lineage_from_tags(item: &serde_json::Value) -> Option<dfp_engine::registry::Lineage> {
    let get = |k: &str| client::tag(item, k);
    Some(dfp_engine::registry::Lineage {
        registered_at: get("dfp.registered_at")?,
        config_hash: get("dfp.config_hash").unwrap_or_default(),
        dfp_version: get("dfp.dfp_version").unwrap_or_default(),
        run: get("dfp.run"),
        challenged: get("dfp.challenged").and_then(|c| c.parse().ok()),
    })
}

/// The hyperparameters as flat `config.*` params.
fn config_params(v: &ModelVersion) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Ok(serde_json::Value::Object(map)) = serde_json::to_value(&v.header.config) {
        for (k, val) in map {
            let text = match val {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            out.push((format!("config.{k}"), text.chars().take(500).collect()));
        }
    }
    out
}

fn metrics(v: &ModelVersion) -> Vec<(String, f64)> {
    let m = &v.header.metrics;
    let mut out = vec![
        ("train_loss".to_string(), m.train_loss),
        ("epochs_run".to_string(), m.epochs_run as f64),
        ("train_rows".to_string(), m.train_rows as f64),
        ("validation_rows".to_string(), m.validation_rows as f64),
    ];
    if let Some(val) = m.val_loss {
        out.push(("val_loss".to_string(), val));
    }
    out
}

impl Syncer {
    /// A syncer of `registry` (its local directory) to the server `client` talks to.
    pub fn new(registry: Registry, client: Client) -> Syncer {
        Syncer {
            registry,
            client,
            experiments: BTreeMap::new(),
            followed: BTreeMap::new(),
        }
    }

    /// The server.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn experiment(&mut self, source: &str) -> std::result::Result<String, MlflowError> {
        if let Some(id) = self.experiments.get(source) {
            return Ok(id.clone());
        }
        let id = self.client.experiment(&format!("dfp-{source}"))?;
        self.experiments.insert(source.to_string(), id.clone());
        Ok(id)
    }

    /// Pushes what MLflow lacks of model `name`: its versions, then its aliases.
    pub fn sync(&mut self, name: &str) -> std::result::Result<Pushes, SyncError> {
        let mut record = Record::read(&self.registry, self.client.base(), name)?;
        let target = mlflow_name(name);
        let mut out = Pushes::default();
        let missing: Vec<u32> = self
            .registry
            .version_numbers(name)?
            .into_iter()
            .filter(|v| !record.pushed.versions.contains_key(v))
            .collect();
        if !missing.is_empty() {
            let found = self.existing_versions(name, &target)?;
            for v in missing {
                let mv = match found.get(&v) {
                    Some(mv) => mv.clone(),
                    None => {
                        out.versions += 1;
                        self.push_version(name, &target, v)?
                    }
                };
                record.pushed.versions.insert(v, mv);
                record.save()?;
            }
        }
        let lifecycle = self.registry.lifecycle(name)?;
        let print = fingerprint(&lifecycle);
        if record.pushed.aliases.as_deref() != Some(print.as_str()) {
            self.push_aliases(&target, &lifecycle, &record.pushed)?;
            record.aliases_are(&lifecycle);
            record.save()?;
            out.aliases += 1;
        }
        Ok(out)
    }

    /// The MLflow versions of `target` that dfp pushed for `name` before, by dfp version.
    fn existing_versions(
        &self,
        name: &str,
        target: &str,
    ) -> std::result::Result<BTreeMap<u32, String>, SyncError> {
        let mut out = BTreeMap::new();
        for v in self.client.versions(target)? {
            let (Some(n), Some(dv), Some(mv)) = (
                client::tag(&v, "dfp.name"),
                client::tag(&v, "dfp.version").and_then(|s| s.parse::<u32>().ok()),
                v["version"].as_str(),
            ) else {
                continue;
            };
            if n == name {
                out.entry(dv).or_insert_with(|| mv.to_string());
            }
        }
        Ok(out)
    }

    fn push_version(
        &mut self,
        name: &str,
        target: &str,
        version: u32,
    ) -> std::result::Result<String, SyncError> {
        let v = self.registry.version(name, version)?;
        let bytes = self.registry.model_bytes(name, version)?;
        let key = format!(
            "{:016x}-v{version}",
            dfp_engine::hash::fnv1a64(name.as_bytes())
        );
        let mut tags = lineage_tags(&v, &key);
        tags.push((CHECKSUM.to_string(), checksum(&bytes)));
        let experiment = self.experiment(&v.header.source)?;
        let run = match self.client.find_run(&experiment, &[("dfp.key", &key)])? {
            Some(run) => run,
            None => {
                let run = self.client.create_run(
                    &experiment,
                    &format!("{} v{version}", v.name),
                    millis(v.header.last_timestamp_us),
                    &tags,
                )?;
                let mut params = tags.clone();
                params.extend(config_params(&v));
                params.retain(|(k, _)| k != "dfp.key");
                self.client
                    .log_batch(&run.id, &params, &metrics(&v), millis(None))?;
                run
            }
        };
        let file = format!("model/v{version:06}.dfpmodel");
        self.client.upload(&run.artifact_uri, &file, &bytes)?;
        self.client.finish_run(&run.id, millis(None))?;
        let mut model_tags = vec![("dfp.name".to_string(), name.to_string())];
        model_tags.push(("dfp.source".to_string(), v.header.source.clone()));
        self.client.ensure_model(target, &model_tags)?;
        let description = format!(
            "dfp model {name} version {version}: {} rows, {} to {}",
            v.header.rows,
            time_text(v.header.first_timestamp_us),
            time_text(v.header.last_timestamp_us)
        );
        let source = format!("{}/model", run.artifact_uri);
        Ok(self
            .client
            .create_version(target, &source, &run.id, &tags, &description)?)
    }

    fn push_aliases(
        &self,
        target: &str,
        lifecycle: &Lifecycle,
        pushed: &Pushed,
    ) -> std::result::Result<(), SyncError> {
        let mlflow_version = |v: u32| {
            pushed.versions.get(&v).cloned().ok_or_else(|| {
                SyncError::Local(Error::stage(
                    "mlflow",
                    format!("{target}: version {v} has an alias but no file in the registry"),
                ))
            })
        };
        for alias in [CHAMPION, CHALLENGER] {
            match lifecycle.aliases.get(alias) {
                Some(&v) => self.client.set_alias(target, alias, &mlflow_version(v)?)?,
                None => self.client.delete_alias(target, alias)?,
            }
        }
        let changed = lifecycle
            .rolled_back
            .symmetric_difference(&pushed.rolled_back);
        for &v in changed {
            if let Ok(mv) = mlflow_version(v) {
                let on = lifecycle.rolled_back.contains(&v);
                self.client.set_version_tag(
                    target,
                    &mv,
                    "dfp.rolled_back",
                    if on { "true" } else { "false" },
                )?;
            }
        }
        if let Some(last) = lifecycle.history.last() {
            let text = serde_json::to_string(last).unwrap_or_default();
            self.client
                .set_model_tag(target, "dfp.last_change", &text)?;
        }
        Ok(())
    }

    /// Pushes every model of the registry, trying again with backoff while MLflow fails in a
    /// way that can pass, until `deadline`. Returns what was pushed and what is left (model
    /// name and the last error).
    pub fn sync_all(&mut self, deadline: Instant) -> Result<(Pushes, Vec<(String, String)>)> {
        let names: BTreeSet<String> = self.registry.list()?.into_iter().map(|(n, _)| n).collect();
        Ok(self.sync_until(names, deadline))
    }

    /// Pushes `names`, with backoff, until all are pushed or `deadline` passes. Returns what
    /// was pushed and what is left (model name and the last error).
    pub fn sync_until(
        &mut self,
        mut names: BTreeSet<String>,
        deadline: Instant,
    ) -> (Pushes, Vec<(String, String)>) {
        let mut total = Pushes::default();
        let mut failed = Vec::new();
        let mut backoff = Backoff::server();
        while !names.is_empty() {
            match self.pass(&mut names, &mut total, &mut failed) {
                None => backoff.reset(),
                Some(e) => {
                    let wait = backoff.wait();
                    if Instant::now() + wait > deadline {
                        failed.extend(names.iter().map(|n| (n.clone(), e.clone())));
                        break;
                    }
                    std::thread::sleep(wait);
                }
            }
        }
        (total, failed)
    }

    /// One pass over `names`: each synced one leaves the set, one refused by MLflow or the
    /// registry goes to `failed`; returns the error that stopped the pass when MLflow failed
    /// in a way that can pass (the rest stay in `names`).
    fn pass(
        &mut self,
        names: &mut BTreeSet<String>,
        total: &mut Pushes,
        failed: &mut Vec<(String, String)>,
    ) -> Option<String> {
        while let Some(name) = names.first().cloned() {
            match self.sync(&name) {
                Ok(p) => *total += p,
                Err(e) if e.retryable() => {
                    tracing::warn!(model = %name, error = %e, "MLflow sync failed; trying again later");
                    return Some(e.to_string());
                }
                Err(e) => {
                    tracing::error!(model = %name, error = %e, "MLflow refused a model; it stays in the local registry");
                    failed.push((name.clone(), e.to_string()));
                }
            }
            names.remove(&name);
        }
        None
    }
}

/// The fingerprint of what the aliases push writes.
fn fingerprint(l: &Lifecycle) -> String {
    let text =
        serde_json::to_vec(&(&l.aliases, &l.rolled_back, l.history.len())).unwrap_or_default();
    format!("{:016x}", dfp_engine::hash::fnv1a64(&text))
}

/// What the mirror did in a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MirrorReport {
    /// The server.
    pub server: String,
    /// Versions created in MLflow.
    pub versions: usize,
    /// Models whose aliases were updated.
    pub aliases: usize,
    /// Models not (fully) pushed, with the last error: the next run or `dfp models sync`
    /// pushes them.
    pub unsynced: Vec<(String, String)>,
}

impl MirrorReport {
    /// One line for the run's summary.
    pub fn line(&self) -> String {
        let left = match self.unsynced.len() {
            0 => String::new(),
            n => format!(
                ", {n} models not pushed yet (the next run or `dfp models sync` pushes them; the \
                 log says why)"
            ),
        };
        format!(
            "MLflow {}: {} versions and {} alias updates pushed{left}",
            self.server, self.versions, self.aliases
        )
    }
}

/// A thread that follows a local registry's changes and pushes them to MLflow while a run
/// goes on, then, at [`Mirror::finish`], the whole registry.
pub struct Mirror {
    changes: Sender<String>,
    stop: Arc<AtomicBool>,
    handle: JoinHandle<MirrorReport>,
}

impl Mirror {
    /// Starts mirroring the local registry at `local` to the MLflow server at `uri`; at the
    /// end it keeps trying for at most `flush`, over the whole registry when `whole` (one
    /// process of a cluster sharing a registry: the others push only what they changed, so
    /// two processes never push the same model at once).
    pub fn start(local: &Path, uri: &str, flush: Duration, whole: bool) -> Result<Mirror> {
        let client = Client::new(uri, Duration::from_secs(30))
            .map_err(|e| Error::stage("registry", e.to_string()))?;
        let registry = Registry::open(local)?;
        let (changes, rx) = channel();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let syncer = Syncer::new(registry, client);
        let handle = std::thread::Builder::new()
            .name("dfp-mlflow".to_string())
            .spawn(move || follow(syncer, &rx, &flag, flush, whole))
            .map_err(|e| Error::stage("registry", format!("starting the MLflow sync: {e}")))?;
        Ok(Mirror {
            changes,
            stop,
            handle,
        })
    }

    /// Where the registry sends the names of the models it changes.
    pub fn changes(&self) -> Sender<String> {
        self.changes.clone()
    }

    /// Pushes what is left (the whole registry is compared) and stops.
    pub fn finish(self) -> MirrorReport {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.changes.send(String::new());
        self.handle.join().unwrap_or_else(|_| MirrorReport {
            unsynced: vec![(
                "*".to_string(),
                "the MLflow sync thread panicked".to_string(),
            )],
            ..MirrorReport::default()
        })
    }
}

/// The mirror thread: pushes changed models as they come, backing off while MLflow fails;
/// when told to stop, the whole registry until done or `flush` is spent.
fn follow(
    mut syncer: Syncer,
    rx: &Receiver<String>,
    stop: &AtomicBool,
    flush: Duration,
    whole: bool,
) -> MirrorReport {
    let mut report = MirrorReport {
        server: syncer.client().base().to_string(),
        ..MirrorReport::default()
    };
    let mut pending = BTreeSet::new();
    let mut backoff = Backoff::server();
    let mut next_try = Instant::now();
    let mut failed = Vec::new();
    let mut total = Pushes::default();
    while !stop.load(Ordering::SeqCst) {
        let wait = next_try
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(50));
        match rx.recv_timeout(if pending.is_empty() {
            Duration::from_secs(1)
        } else {
            wait
        }) {
            Ok(name) => {
                pending.insert(name);
                pending.extend(rx.try_iter());
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        pending.remove("");
        if pending.is_empty() || Instant::now() < next_try || stop.load(Ordering::SeqCst) {
            continue;
        }
        match syncer.pass(&mut pending, &mut total, &mut failed) {
            None => backoff.reset(),
            Some(_) => next_try = Instant::now() + backoff.wait(),
        }
    }
    // The end: everything, not only what was announced (a model changed by an earlier run or
    // refused above gets its chance again); or, on the other processes of a cluster, what
    // they announced and did not push yet.
    let deadline = Instant::now() + flush;
    pending.extend(rx.try_iter());
    pending.remove("");
    pending.extend(failed.into_iter().map(|(name, _)| name));
    let ended = if whole {
        syncer.sync_all(deadline)
    } else {
        Ok(syncer.sync_until(pending, deadline))
    };
    match ended {
        Ok((pushes, left)) => {
            total += pushes;
            report.unsynced = left;
        }
        Err(e) => report.unsynced = vec![("*".to_string(), e.to_string())],
    }
    report.versions = total.versions;
    report.aliases = total.aliases;
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registry_is_a_directory_or_an_mlflow_server_with_a_local_copy() {
        let cache = Path::new("cache");
        let dir = RegistrySpec::parse("models", cache).unwrap();
        assert_eq!((dir.local, dir.mlflow), (PathBuf::from("models"), None));
        let m = RegistrySpec::parse("mlflow+http://127.0.0.1:5000", cache).unwrap();
        assert_eq!(m.local, cache);
        assert_eq!(m.mlflow.as_deref(), Some("mlflow+http://127.0.0.1:5000"));
        for bad in ["s3://bucket/m", "mlflow+https://h:1", "mlflow+http://"] {
            let e = RegistrySpec::parse(bad, cache).unwrap_err().to_string();
            assert!(e.contains("registry"), "{bad}: {e}");
        }
    }

    #[test]
    fn model_names_mlflow_refuses_are_escaped_and_others_kept() {
        assert_eq!(
            mlflow_name("DFP-azure-alice@example.com"),
            "DFP-azure-alice@example.com"
        );
        for hostile in ["DFP-azure-a/b", "DFP-azure-x:y", "DFP-azure-o'brien"] {
            let n = mlflow_name(hostile);
            assert!(!n.contains(['/', ':', '\'']), "{hostile} -> {n}");
            assert_ne!(n, hostile);
        }
        assert_ne!(mlflow_name("DFP-azure-a/b"), mlflow_name("DFP-azure-a:b"));
    }
}
