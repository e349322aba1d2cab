//! The local model registry, dfp's embedded default (no server): a directory with one folder
//! per model name and numbered versions in it.
//!
//! ```text
//! <root>/DFP-azure-alice%40example%2Ecom/v000001.dfpmodel   the model file (file.rs format)
//!                                       /v000001.json       its tags: name, version, header
//!                                       /aliases.json       champion, challenger, history
//! ```
//!
//! Model names are `DFP-{source}-{user}`. A name becomes a folder name reversibly: every byte
//! outside `[A-Za-z0-9_-]` is written `%XX`, so no name can contain `/`, `.` or `..` and escape
//! the root; a name whose escaped form is over 180 bytes is cut and suffixed with `~` and a hash
//! (the tags keep the real name). A version is committed by linking its finished file to its
//! number, which fails if another writer took the number first; readers never see a partial
//! file. The aliases and their history are the `lifecycle` module's. Inference reads through a [`ModelCache`] (LRU) that reloads only when a newer version
//! appears.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::Sender;

use serde::{Deserialize, Serialize};

use dfp_core::{Error, Result, files};

use crate::{Model, ModelHeader};

/// The model name of `user`'s model for `source`.
pub fn model_name(source: &str, user: &str) -> String {
    format!("DFP-{source}-{user}")
}

const MAX_FOLDER: usize = 180;

/// The folder name of a model name (reversible by [`unescape`] unless cut).
pub fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.len() > MAX_FOLDER {
        let mut cut = MAX_FOLDER - 17;
        while !out.is_char_boundary(cut)
            || out[..cut].ends_with('%')
            || out[..cut.saturating_sub(1)].ends_with('%')
        {
            cut -= 1;
        }
        out = format!(
            "{}~{:016x}",
            &out[..cut],
            dfp_core::hash::fnv1a64(name.as_bytes())
        );
    }
    out
}

/// The model name of a folder name written by [`escape`] (None if cut or not an escape).
pub fn unescape(folder: &str) -> Option<String> {
    let bytes = folder.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = folder.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// One registered version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelVersion {
    /// The model name.
    pub name: String,
    /// The version, from 1.
    pub version: u32,
    /// The model's header: training window, row count, hyperparameters, metrics.
    pub header: ModelHeader,
    /// Where it came from (absent in versions registered before dfp recorded it).
    #[serde(default)]
    pub lineage: Option<Lineage>,
}

/// Where a version came from, beside its header's training window, rows and schema
/// fingerprint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lineage {
    /// When it was registered (RFC 3339, UTC).
    pub registered_at: String,
    /// Hash of the hyperparameters and feature lists it was trained with (16 hex digits): equal
    /// hashes, equal training settings.
    pub config_hash: String,
    /// The dfp version that trained it.
    pub dfp_version: String,
    /// The run that trained it (`Registry::for_run`), if it said.
    pub run: Option<String>,
    /// The version serving when it was registered: the champion it challenges.
    pub challenged: Option<u32>,
}

impl ModelVersion {
    /// `name:version`, as Morpheus writes `model_version`.
    pub fn label(&self) -> String {
        format!("{}:{}", self.name, self.version)
    }
}

/// Whether `model` (a model name or a `name:version` label) is `user`'s own model
/// (`DFP-{source}-{user}`) rather than the generic model or another shared one.
pub fn is_own_model(model: &str, user: &str) -> bool {
    split_label(model)
        .0
        .strip_suffix(user)
        .is_some_and(|rest| rest.ends_with('-'))
}

/// The model name and the version of a `name:version` label ([`ModelVersion::label`]); the
/// version is None when the label has no `:` (the name is then the whole label).
pub fn split_label(label: &str) -> (&str, Option<&str>) {
    match label.rsplit_once(':') {
        Some((name, version)) => (name, Some(version)),
        None => (label, None),
    }
}

/// A registry rooted at a directory.
#[derive(Debug, Clone)]
pub struct Registry {
    root: PathBuf,
    run: Option<String>,
    changes: Option<Sender<String>>,
}

fn version_file(dir: &Path, version: u32, ext: &str) -> PathBuf {
    dir.join(format!("v{version:06}.{ext}"))
}

/// A temporary file in `dir` that no other process or thread writes at the same time.
fn temporary(dir: &Path) -> PathBuf {
    dir.join(format!(
        ".tmp-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ))
}

impl Registry {
    /// Opens (creating if needed) the registry at `root`.
    pub fn open(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root).map_err(|e| Error::io(root, "creating model registry", e))?;
        Ok(Registry {
            root: root.to_path_buf(),
            run: None,
            changes: None,
        })
    }

    /// The same registry, sending the name of every model it changes (a new version, an alias
    /// moved) to `changes`, after the change is on disk: a mirror of the registry (the MLflow
    /// sync) follows it from there.
    pub fn notifying(mut self, changes: Sender<String>) -> Self {
        self.changes = Some(changes);
        self
    }

    /// Tells the mirror, if any, that `name` changed (a mirror that has stopped is no loss:
    /// the next sync compares the whole registry).
    pub(crate) fn changed(&self, name: &str) {
        if let Some(tx) = &self.changes {
            let _ = tx.send(name.to_string());
        }
    }

    /// The same registry, recording `run` as the run that trained the versions it registers.
    pub fn for_run(mut self, run: &str) -> Self {
        self.run = Some(run.to_string());
        self
    }

    /// The registry's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn dir(&self, name: &str) -> PathBuf {
        self.root.join(escape(name))
    }

    /// The folder of `name`, created if missing, to write into: a symbolic link there is
    /// refused, so registry writes stay inside the registry.
    pub fn model_dir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.dir(name);
        if files::is_link(&dir) {
            return Err(Error::stage(
                "registry",
                format!(
                    "{} is a symbolic link: dfp keeps registry writes inside the registry (remove it)",
                    dir.display()
                ),
            ));
        }
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, "creating model folder", e))?;
        Ok(dir)
    }

    /// Version numbers of `name`, ascending (empty when it has none).
    pub fn version_numbers(&self, name: &str) -> Result<Vec<u32>> {
        let dir = self.dir(name);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(&dir, "listing model versions", e)),
        };
        let mut versions: Vec<u32> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let f = e.file_name();
                let f = f.to_str()?;
                f.strip_prefix('v')?.strip_suffix(".dfpmodel")?.parse().ok()
            })
            .collect();
        versions.sort_unstable();
        Ok(versions)
    }

    /// Registers `model` as the next version of its name; returns that version.
    pub fn register(&self, model: &Model) -> Result<ModelVersion> {
        let name = &model.header.name;
        let dir = self.model_dir(name)?;
        let challenged = self.serving(name)?;
        let tmp = temporary(&dir);
        drop(files::write_new(&tmp, &model.to_bytes()?, "writing model")?);
        let last = self.version_numbers(name)?.last().copied().unwrap_or(0);
        let mut version = last.checked_add(1);
        let result = loop {
            let Some(v) = version else {
                break Err(Error::model(
                    name,
                    format!(
                        "no version number is left after v{last:06} in {} (a stray version file?)",
                        dir.display()
                    ),
                ));
            };
            let path = version_file(&dir, v, "dfpmodel");
            match std::fs::hard_link(&tmp, &path) {
                Ok(()) => break Ok(v),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    version = v.checked_add(1);
                }
                Err(e) => break Err(Error::io(&path, "committing model version", e)),
            }
        };
        let _ = std::fs::remove_file(&tmp);
        let version = result?;
        let settings = serde_json::to_vec(&(&model.header.config, &model.header.features))
            .map_err(|e| Error::Json {
                context: format!("hashing the settings of {name}"),
                source: e,
            })?;
        let v = ModelVersion {
            name: name.clone(),
            version,
            header: model.header.clone(),
            lineage: Some(Lineage {
                registered_at: chrono::Utc::now()
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                config_hash: format!("{:016x}", dfp_core::hash::fnv1a64(&settings)),
                dfp_version: env!("CARGO_PKG_VERSION").to_string(),
                run: self.run.clone(),
                challenged,
            }),
        };
        self.write_tags(&dir, &v)?;
        self.changed(name);
        Ok(v)
    }

    fn write_tags(&self, dir: &Path, v: &ModelVersion) -> Result<()> {
        let tags = version_file(dir, v.version, "json");
        let text = serde_json::to_vec_pretty(v).map_err(|e| Error::Json {
            context: format!("writing tags of {}", v.label()),
            source: e,
        })?;
        files::replace(&tags, &text, "writing model tags")
    }

    /// Writes `bytes`, a model file registered elsewhere as `version` of `name` (the MLflow
    /// pull), as that version here, with `lineage`. Bytes that are not a model of `name` are
    /// refused, and so is another file holding the number already (a version is never
    /// replaced); the same file there already changes nothing but its tags.
    pub fn import(
        &self,
        name: &str,
        version: u32,
        bytes: &[u8],
        lineage: Option<Lineage>,
    ) -> Result<ModelVersion> {
        let dir = self.model_dir(name)?;
        let path = version_file(&dir, version, "dfpmodel");
        let model = Model::from_bytes(bytes, &path)?;
        if model.header.name != name {
            return Err(Error::ModelFile {
                path,
                problem: format!("holds model {:?}, not {name:?}", model.header.name),
            });
        }
        let tmp = temporary(&dir);
        drop(files::write_new(&tmp, bytes, "writing model")?);
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if self.model_bytes(name, version)? != bytes {
                    return Err(Error::model(
                        name,
                        format!(
                            "version {version} is another model file here ({}) than the one \
                             imported: the local registry and the one it copies from disagree \
                             (point --registry-cache at a folder of its own)",
                            path.display()
                        ),
                    ));
                }
            }
            Err(e) => return Err(Error::io(&path, "committing model version", e)),
        }
        let v = ModelVersion {
            name: name.to_string(),
            version,
            header: model.header,
            lineage,
        };
        self.write_tags(&dir, &v)?;
        self.changed(name);
        Ok(v)
    }

    /// Registers `model` unless the same model is already a version of its name (a restarted
    /// stream training the same window again, with the same result): returns that version, or
    /// the new one. Versions are compared byte for byte, newest first, down to the first one
    /// trained on older data.
    pub fn register_once(&self, model: &Model) -> Result<ModelVersion> {
        let name = &model.header.name;
        let bytes = model.to_bytes()?;
        let dir = self.dir(name);
        for v in self.version_numbers(name)?.into_iter().rev() {
            let path = version_file(&dir, v, "dfpmodel");
            if std::fs::read(&path).is_ok_and(|b| b == bytes) {
                return self.version(name, v);
            }
            if self.version(name, v)?.header.last_timestamp_us < model.header.last_timestamp_us {
                break;
            }
        }
        self.register(model)
    }

    /// The tags of one version (from its tags file, else from the model file's header).
    pub fn version(&self, name: &str, version: u32) -> Result<ModelVersion> {
        let dir = self.dir(name);
        let tags = version_file(&dir, version, "json");
        if let Some(v) = std::fs::read(&tags)
            .ok()
            .and_then(|t| serde_json::from_slice::<ModelVersion>(&t).ok())
        {
            return Ok(v);
        }
        let model = self.load(name, version)?;
        Ok(ModelVersion {
            name: name.to_string(),
            version,
            header: model.header,
            lineage: None,
        })
    }

    /// Every version of `name`, ascending.
    pub fn versions(&self, name: &str) -> Result<Vec<ModelVersion>> {
        self.version_numbers(name)?
            .into_iter()
            .map(|v| self.version(name, v))
            .collect()
    }

    /// The bytes of one version's model file, as registered.
    pub fn model_bytes(&self, name: &str, version: u32) -> Result<Vec<u8>> {
        let path = version_file(&self.dir(name), version, "dfpmodel");
        std::fs::read(&path).map_err(|e| Error::io(&path, "reading model version", e))
    }

    /// Loads one version's model.
    pub fn load(&self, name: &str, version: u32) -> Result<Model> {
        let path = version_file(&self.dir(name), version, "dfpmodel");
        let model = Model::load(&path)?;
        if model.header.name != name {
            return Err(Error::ModelFile {
                path,
                problem: format!("holds model {:?}, not {name:?}", model.header.name),
            });
        }
        Ok(model)
    }

    /// Every model name with its versions, by name.
    pub fn list(&self) -> Result<Vec<(String, Vec<u32>)>> {
        let entries = std::fs::read_dir(&self.root)
            .map_err(|e| Error::io(&self.root, "listing model registry", e))?;
        let mut out = Vec::new();
        for e in entries.filter_map(|e| e.ok()) {
            let folder = e.file_name().to_string_lossy().to_string();
            if !e.path().is_dir() || folder.starts_with('.') {
                continue;
            }
            // A cut name is read back from the tags of its first version.
            let name = match unescape(&folder) {
                Some(n) => n,
                None => {
                    let dir = e.path();
                    let first = std::fs::read_dir(&dir)
                        .ok()
                        .into_iter()
                        .flatten()
                        .filter_map(|f| f.ok())
                        .find(|f| {
                            f.file_name().to_string_lossy().ends_with(".json")
                                && f.file_name() != "aliases.json"
                        });
                    match first
                        .and_then(|f| std::fs::read(f.path()).ok())
                        .and_then(|t| serde_json::from_slice::<ModelVersion>(&t).ok())
                    {
                        Some(v) => v.name,
                        None => continue,
                    }
                }
            };
            let versions = self.version_numbers(&name)?;
            if !versions.is_empty() {
                out.push((name, versions));
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Model versions for inference, the most recently used `capacity` kept in memory (a champion
/// and its challenger are two entries).
#[derive(Debug)]
pub struct ModelCache {
    registry: Registry,
    capacity: usize,
    tick: u64,
    entries: HashMap<(String, u32), (u64, Arc<Model>)>,
    /// Models loaded from disk (misses), for reports.
    pub loads: u64,
}

impl ModelCache {
    /// A cache over `registry` holding up to `capacity` models.
    pub fn new(registry: Registry, capacity: usize) -> Self {
        ModelCache {
            registry,
            capacity: capacity.max(1),
            tick: 0,
            entries: HashMap::new(),
            loads: 0,
        }
    }

    /// The latest version of `name` with its number, or None when it has no version.
    pub fn latest(&mut self, name: &str) -> Result<Option<(u32, Arc<Model>)>> {
        let Some(&latest) = self.registry.version_numbers(name)?.last() else {
            return Ok(None);
        };
        Ok(Some((latest, self.get(name, latest)?)))
    }

    /// Version `version` of `name`, from memory or loaded (evicting the least recently used).
    pub fn get(&mut self, name: &str, version: u32) -> Result<Arc<Model>> {
        self.tick += 1;
        let key = (name.to_string(), version);
        if let Some(e) = self.entries.get_mut(&key) {
            e.0 = self.tick;
            return Ok(e.1.clone());
        }
        let model = Arc::new(self.registry.load(name, version)?);
        self.loads += 1;
        if self.entries.len() >= self.capacity {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.0)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.entries.remove(&k);
            }
        }
        self.entries.insert(key, (self.tick, model.clone()));
        Ok(model)
    }

    /// Models held in memory.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no model is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::models;

    #[test]
    fn names_escape_reversibly_and_never_leave_the_root() {
        for name in [
            "DFP-azure-alice@example.com",
            "DFP-duo-..",
            "DFP-duo-../../etc/passwd",
            "DFP-azure-Zoë %41",
            "",
        ] {
            let e = escape(name);
            assert!(
                e.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'%'),
                "{e}"
            );
            assert_eq!(unescape(&e).as_deref(), Some(name));
        }
        assert_eq!(escape("DFP-azure-a.b"), "DFP-azure-a%2Eb");
        let long = format!("DFP-azure-{}", "é/".repeat(200));
        let e = escape(&long);
        assert!(e.len() <= MAX_FOLDER && e.contains('~'), "{}", e.len());
        assert_eq!(unescape(&e), None);
        assert_ne!(escape(&format!("{long}x")), e);
    }

    #[test]
    fn versions_count_up_and_the_latest_is_found() {
        let (_, _, models) = models();
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path()).unwrap();
        let mut m = models[0].clone();
        m.header.name = "DFP-azure-a.b@example.com".into();
        assert_eq!(reg.register(&m).unwrap().version, 1);
        let v2 = reg.clone().for_run("run-1").register(&m).unwrap();
        assert_eq!(v2.label(), "DFP-azure-a.b@example.com:2");
        // Its lineage: the version it challenges, the run, the settings' hash, in its tags.
        let lineage = reg.version(&m.header.name, 2).unwrap().lineage.unwrap();
        assert_eq!(lineage.challenged, Some(1));
        assert_eq!(lineage.run.as_deref(), Some("run-1"));
        let first = reg.version(&m.header.name, 1).unwrap().lineage.unwrap();
        assert_eq!((first.challenged, first.run), (None, None));
        assert_eq!(first.config_hash, lineage.config_hash);
        assert_eq!(first.config_hash.len(), 16);
        assert_eq!(reg.version_numbers(&m.header.name).unwrap(), [1, 2]);
        assert_eq!(reg.load(&m.header.name, 2).unwrap(), m);
        let tags = reg.version(&m.header.name, 1).unwrap();
        assert_eq!(tags.header.rows, m.header.rows);
        assert_eq!(reg.list().unwrap(), [(m.header.name.clone(), vec![1, 2])]);
        reg.promote(&m.header.name, 1, "test", "first").unwrap();
        assert_eq!(reg.alias(&m.header.name, "champion").unwrap(), Some(1));
        assert!(reg.promote(&m.header.name, 7, "test", "none").is_err());
        assert_eq!(
            split_label("DFP-azure-a:b@x.com:12"),
            ("DFP-azure-a:b@x.com", Some("12"))
        );
        assert_eq!(split_label("plain"), ("plain", None));
        assert_eq!(
            reg.version_numbers("DFP-azure-nobody").unwrap(),
            Vec::<u32>::new()
        );
        // No temporary files are left behind.
        let left: Vec<_> = std::fs::read_dir(dir.path().join(escape(&m.header.name)))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|f| f.contains("tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn register_once_reuses_the_same_model_and_only_it() {
        let (_, _, models) = models();
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path()).unwrap();
        let first = models[0].clone();
        let mut later = first.clone();
        later.header.last_timestamp_us = first.header.last_timestamp_us.map(|t| t + 1);
        assert_eq!(reg.register_once(&first).unwrap().version, 1);
        assert_eq!(reg.register_once(&later).unwrap().version, 2);
        // After a crash both are trained again: the versions already there are returned.
        assert_eq!(reg.register_once(&first).unwrap().version, 1);
        assert_eq!(reg.register_once(&later).unwrap().version, 2);
        let mut retrained = later.clone();
        retrained.loss_mean[0] += 1.0;
        assert_eq!(reg.register_once(&retrained).unwrap().version, 3);
        assert_eq!(reg.version_numbers(&first.header.name).unwrap(), [1, 2, 3]);
    }

    #[test]
    fn an_imported_version_keeps_its_number_and_never_replaces_another_file() {
        let (_, _, models) = models();
        let (from, to) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (origin, copy) = (
            Registry::open(from.path()).unwrap(),
            Registry::open(to.path()).unwrap(),
        );
        let name = models[0].header.name.clone();
        for _ in 0..3 {
            origin.register(&models[0]).unwrap();
        }
        let bytes = origin.model_bytes(&name, 3).unwrap();
        let lineage = origin.version(&name, 3).unwrap().lineage;
        let v = copy.import(&name, 3, &bytes, lineage.clone()).unwrap();
        assert_eq!((v.version, &v.lineage), (3, &lineage));
        assert_eq!(copy.version_numbers(&name).unwrap(), [3]);
        assert_eq!(copy.load(&name, 3).unwrap(), models[0]);
        assert_eq!(copy.version(&name, 3).unwrap(), v);
        // The same file again: no change.
        copy.import(&name, 3, &bytes, lineage).unwrap();
        // Another file under the number, bytes that are no model, another model's file.
        let mut other = models[0].clone();
        other.loss_mean[0] += 1.0;
        let e = copy
            .import(&name, 3, &other.to_bytes().unwrap(), None)
            .unwrap_err();
        assert!(e.to_string().contains("another model file"), "{e}");
        assert_eq!(copy.model_bytes(&name, 3).unwrap(), bytes);
        let e = copy.import(&name, 4, b"not a model", None).unwrap_err();
        assert!(e.to_string().contains("v000004.dfpmodel"), "{e}");
        let e = copy.import("DFP-azure-else", 1, &bytes, None).unwrap_err();
        assert!(e.to_string().contains("not \"DFP-azure-else\""), "{e}");
        assert_eq!(copy.version_numbers(&name).unwrap(), [3]);
        assert!(copy.version_numbers("DFP-azure-else").unwrap().is_empty());
    }

    #[test]
    fn concurrent_writers_get_distinct_versions() {
        let (_, _, models) = models();
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path()).unwrap();
        let got: Vec<u32> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| reg.register(&models[0]).unwrap().version))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut got = got;
        got.sort_unstable();
        assert_eq!(got, [1, 2, 3, 4]);
    }

    #[test]
    fn the_cache_reloads_new_versions_and_evicts_the_least_recent() {
        let (_, _, models) = models();
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path()).unwrap();
        for m in &models[..3] {
            reg.register(m).unwrap();
        }
        let mut cache = ModelCache::new(reg.clone(), 2);
        let names: Vec<&str> = models.iter().map(|m| m.header.name.as_str()).collect();
        assert_eq!(cache.latest(names[0]).unwrap().unwrap().0, 1);
        cache.latest(names[1]).unwrap();
        cache.latest(names[0]).unwrap();
        assert_eq!(cache.loads, 2);
        cache.latest(names[2]).unwrap(); // evicts names[1], the least recently used
        assert_eq!(cache.len(), 2);
        cache.latest(names[0]).unwrap();
        assert_eq!(cache.loads, 3);
        cache.latest(names[1]).unwrap();
        assert_eq!(cache.loads, 4);
        reg.register(&models[0]).unwrap();
        assert_eq!(cache.latest(names[0]).unwrap().unwrap().0, 2);
        assert!(cache.latest("DFP-azure-nobody").unwrap().is_none());
    }

    #[test]
    fn a_corrupt_version_is_an_error_naming_the_file() {
        let (_, _, models) = models();
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path()).unwrap();
        let v = reg.register(&models[0]).unwrap();
        let path = dir.path().join(escape(&v.name)).join("v000001.dfpmodel");
        std::fs::write(&path, b"garbage").unwrap();
        let err = ModelCache::new(reg, 4)
            .latest(&v.name)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("v000001.dfpmodel") && err.contains("magic"),
            "{err}"
        );
    }
}
