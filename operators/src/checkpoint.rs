//! Checkpoints of a streaming run, taken at frontier epochs without stopping the dataflow.
//!
//! A *cut* at epoch `T` is the state of the whole run after every epoch before `T` and none
//! from `T` on. Each stateful component (a stage registers itself while the graph is built:
//! `crate::state`; today per worker the source, the rolling windows and the scorer's model
//! versions, on worker 0 the sinks) writes its own state through a [`Snapshotter`] whenever
//! the epochs it has finished cross a cut, as a file valid for a range of cuts:
//! `{dir}/{component}/{from}-{to}.state` holds the state after every epoch before `from` and
//! for every cut up to `to` (the component had nothing between). An operator offers its state
//! before it applies an epoch and when its input frontier moves; the source offers its state
//! when its input moves on. No barrier or coordinator is needed, because a component's
//! frontier tells it exactly which cuts its state belongs to; the latest cut is *complete* once
//! every worker has recorded its components (`components/{worker}.json`) and every component
//! has a file whose range holds it ([`latest_cut`]).
//!
//! Files are written atomically (a temporary file, fsync, rename, fsync of the folder) with
//! `DFPSTATE` magic, a format version, the range, the length and a checksum, so a crash leaves
//! either the old file or the new one, and a damaged file is refused with its path. Cuts come
//! every `every` epochs (1: every epoch). Files wholly before the latest complete cut are
//! pruned. [`StateMeta`] ties a state directory to one stream (its schema, the source's opaque
//! fingerprint, the worker count); a restart with another is refused. State is keyed (windows by
//! user, the source's by partition, the scorer's by model name), so it could be repartitioned
//! over another worker count; that merge is not written yet, so a restart with another worker
//! count is refused with that reason.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use dfp_engine::hash::checksum64;
use dfp_engine::lifecycle::Serving;
use dfp_engine::{Error, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use timely::progress::frontier::MutableAntichain;

/// The first bytes of every state file.
pub const MAGIC: &[u8; 8] = b"DFPSTATE";
/// The state format this build writes and reads.
pub const FORMAT_VERSION: u32 = 2;
const PREFIX: usize = 8 + 4 + 8 + 8 + 8;
const LIMIT: usize = 1 << 34;

/// Where and how often a streaming run checkpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointSettings {
    /// The state directory.
    pub dir: PathBuf,
    /// Epochs from one cut to the next (at least 1).
    pub every: u64,
}

/// What a state directory belongs to, written at the first start (`meta.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateMeta {
    /// A name for this run, fixed at its first start: it keys the messages of the detections
    /// topic, so a restart can tell its own.
    pub run: String,
    /// The source schema.
    pub schema: String,
    /// What the input is, opaque: the source's fingerprint (a Kafka topic, group and epoch
    /// length; a watched directory and epoch length).
    pub source: String,
    /// Timely workers over every process: each owns a share of the input and of the users.
    pub workers: usize,
    /// The models' champions and challengers in the registry when the run first started: what
    /// scoring starts from when no cut is complete yet.
    pub versions: Serving,
}

impl StateMeta {
    /// The state directory's meta: read and checked against `self` when there is one (its run
    /// name and versions kept), else written; `true` when it was already there.
    pub fn open_or_create(self, dir: &Path) -> Result<(StateMeta, bool)> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "creating state directory", e))?;
        let path = dir.join("meta.json");
        match std::fs::read(&path) {
            Ok(bytes) => {
                let old: StateMeta = serde_json::from_slice(&bytes).map_err(|e| Error::Json {
                    context: format!("reading {}", path.display()),
                    source: e,
                })?;
                let fields = [
                    ("schema", old.schema != self.schema),
                    ("input", old.source != self.source),
                    ("workers", old.workers != self.workers),
                ];
                let differ: Vec<&str> = fields.iter().filter(|f| f.1).map(|f| f.0).collect();
                if !differ.is_empty() {
                    return Err(Error::stage(
                        "checkpoint",
                        format!(
                            "the state in {} belongs to another stream (its {} differ: it has \
                             schema {:?}, input {:?}, {} workers); use another --state-dir, or \
                             remove it to start over",
                            dir.display(),
                            differ.join(", "),
                            old.schema,
                            old.source,
                            old.workers
                        ),
                    ));
                }
                Ok((old, true))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let text = serde_json::to_vec_pretty(&self).map_err(|e| Error::Json {
                    context: format!("writing {}", path.display()),
                    source: e,
                })?;
                write_atomic(&path, &text)?;
                Ok((self, false))
            }
            Err(e) => Err(Error::io(&path, "reading state meta", e)),
        }
    }
}

/// A component's name in the state directory.
pub fn component(kind: &str, worker: usize) -> String {
    format!("{kind}-{worker}")
}

/// The components each worker registered (`components/{worker}.json`, written while its
/// graph was built): every one of them, once all `workers` have registered; `None` before.
pub fn registered(dir: &Path, workers: usize) -> Result<Option<Vec<String>>> {
    let mut all = Vec::new();
    for w in 0..workers {
        let path = registration_path(dir, w);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let kinds: Vec<String> =
                    serde_json::from_slice(&bytes).map_err(|e| Error::Json {
                        context: format!("reading {}", path.display()),
                        source: e,
                    })?;
                all.extend(kinds);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&path, "reading a worker's components", e)),
        }
    }
    all.sort();
    Ok(Some(all))
}

/// Where worker `worker` records the components it registered.
pub(crate) fn registration_path(dir: &Path, worker: usize) -> PathBuf {
    dir.join("components").join(format!("{worker}.json"))
}

/// Encodes a state value (bincode 2).
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|e| Error::stage("checkpoint", format!("encoding state: {e}")))
}

/// Decodes a state value; `origin` names the file in errors.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], origin: &Path) -> Result<T> {
    let config = bincode::config::standard().with_limit::<LIMIT>();
    bincode::serde::decode_from_slice(bytes, config)
        .map(|(v, _)| v)
        .map_err(|e| {
            Error::stage(
                "checkpoint",
                format!("{}: cannot decode the state: {e}", origin.display()),
            )
        })
}

/// Writes `bytes` to `path` so that a crash leaves the old file or the new one.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    dfp_engine::files::replace(path, bytes, "writing state")?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(dir, "syncing state directory", e))?;
    }
    Ok(())
}

/// The bytes of a state file for the cuts `from..=to`.
pub fn frame(from: u64, to: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(PREFIX + payload.len() + 8);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&from.to_le_bytes());
    out.extend_from_slice(&to.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&checksum64(&out).to_le_bytes());
    out
}

/// The payload of a state file, checked; `path` names it in errors.
pub fn read_state(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, "reading state", e))?;
    let bad = |why: String| {
        Error::stage(
            "checkpoint",
            format!(
                "{}: {why}; remove the state directory to start the stream over",
                path.display()
            ),
        )
    };
    if bytes.len() < 8 || &bytes[..8] != MAGIC {
        return Err(bad("not a dfp state file".into()));
    }
    if bytes.len() < PREFIX + 8 {
        return Err(bad(format!("truncated: {} bytes", bytes.len())));
    }
    let word = |at: usize, n: usize| {
        let mut b = [0u8; 8];
        b[..n].copy_from_slice(&bytes[at..at + n]);
        u64::from_le_bytes(b)
    };
    if word(8, 4) != u64::from(FORMAT_VERSION) {
        return Err(bad(format!(
            "state format {}; this dfp reads {FORMAT_VERSION}",
            word(8, 4)
        )));
    }
    let len = word(28, 8);
    if (PREFIX as u64)
        .checked_add(len)
        .and_then(|l| l.checked_add(8))
        != Some(bytes.len() as u64)
    {
        return Err(bad(format!("truncated: {} bytes", bytes.len())));
    }
    let end = bytes.len() - 8;
    if checksum64(&bytes[..end]) != word(end, 8) {
        return Err(bad("checksum mismatch: the file is corrupt".into()));
    }
    Ok(bytes[PREFIX..end].to_vec())
}

/// The file name of the cuts `from..=to`.
fn file_name(from: u64, to: u64) -> String {
    format!("{from:020}-{to:020}.state")
}

/// The cut range a state file name holds.
fn parse_name(name: &str) -> Option<(u64, u64)> {
    let (from, to) = name.strip_suffix(".state")?.split_once('-')?;
    Some((from.parse().ok()?, to.parse().ok()?))
}

/// State files as (from, to, path).
type Ranges = Vec<(u64, u64, PathBuf)>;

/// One component's state files, ascending.
fn ranges(dir: &Path) -> Result<Ranges> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir, "listing state", e)),
    };
    let mut out: Ranges = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name();
            let (from, to) = parse_name(name.to_str()?)?;
            Some((from, to, e.path()))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Writes one component's state at the cuts it belongs to.
#[derive(Debug)]
pub struct Snapshotter {
    dir: PathBuf,
    every: u64,
    /// The state holds every epoch before this one.
    from: u64,
    /// The last cut written for the present state.
    covered: Option<u64>,
    /// The file of the present state, replaced when its range grows.
    current: Option<PathBuf>,
}

impl Snapshotter {
    /// The snapshotter of `component`, whose state holds every epoch before `from`.
    pub fn new(settings: &CheckpointSettings, component: &str, from: u64) -> Result<Self> {
        let dir = settings.dir.join(component);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, "creating state", e))?;
        Ok(Self {
            dir,
            every: settings.every.max(1),
            from,
            covered: None,
            current: None,
        })
    }

    /// The present state is final for every cut up to `to` (everything before it applied,
    /// nothing from it on; `u64::MAX`: the input has ended): writes it if that range holds a
    /// cut not yet written (true when it did). `state` is only called then.
    pub fn offer(&mut self, to: u64, state: impl FnOnce() -> Result<Vec<u8>>) -> Result<bool> {
        let lo = self
            .covered
            .map_or(self.from, |c| c.saturating_add(1).max(self.from));
        if to < lo {
            return Ok(false);
        }
        let next_cut = lo.div_ceil(self.every).checked_mul(self.every);
        if to != u64::MAX && next_cut.is_none_or(|c| c > to) {
            return Ok(false);
        }
        let path = self.dir.join(file_name(self.from, to));
        write_atomic(&path, &frame(self.from, to, &state()?))?;
        if let Some(old) = self.current.replace(path) {
            let _ = std::fs::remove_file(old);
        }
        self.covered = Some(to);
        Ok(true)
    }

    /// Epoch `t` has been applied (or sent): the state changes from here on.
    pub fn applied(&mut self, t: u64) {
        if t >= self.from {
            self.from = t.saturating_add(1);
            self.current = None;
        }
    }
}

/// The cut a stage's state is final for when its input frontiers are `frontiers`: their
/// earliest time (`u64::MAX` once every input has ended).
pub fn frontier_cut(frontiers: &[&MutableAntichain<u64>]) -> u64 {
    frontiers
        .iter()
        .filter_map(|f| f.frontier().first().copied())
        .min()
        .unwrap_or(u64::MAX)
}

/// A complete cut: one state file per component, all valid at `time`.
#[derive(Debug, Clone)]
pub struct Cut {
    /// The cut's epoch: every epoch before it is in the state, none from it on.
    pub time: u64,
    files: HashMap<String, PathBuf>,
}

impl Cut {
    /// The checked payload of `component`'s state at this cut.
    pub fn read(&self, component: &str) -> Result<Vec<u8>> {
        let path = self.files.get(component).ok_or_else(|| {
            Error::stage(
                "checkpoint",
                format!(
                    "the checkpoint's cut at epoch {} has no state for {component}: this run \
                     has a stateful stage the checkpointed run did not (enabling [alerts], an \
                     alert budget or automatic promotion adds one); a stream resumes with the stages it started with, \
                     so remove the state directory to start over with the new ones",
                    self.time
                ),
            )
        })?;
        read_state(path)
    }

    /// The file of `component`'s state at this cut (for messages).
    pub fn path(&self, component: &str) -> PathBuf {
        self.files
            .get(component)
            .cloned()
            .unwrap_or_else(|| PathBuf::from(component))
    }

    /// `component`'s state at this cut, decoded.
    pub fn state<T: DeserializeOwned>(&self, component: &str) -> Result<T> {
        let bytes = self.read(component)?;
        decode(&bytes, &self.files[component])
    }
}

/// The latest cut every component registered by the `workers` workers has a state file for,
/// if any (none before every worker has registered its components).
pub fn latest_cut(dir: &Path, workers: usize) -> Result<Option<Cut>> {
    let Some(components) = registered(dir, workers)? else {
        return Ok(None);
    };
    let all: Vec<(String, Ranges)> = components
        .iter()
        .map(|c| Ok((c.clone(), ranges(&dir.join(c))?)))
        .collect::<Result<_>>()?;
    // The first cut of an intersection of ranges is the start of one of them.
    let mut candidates: Vec<u64> = all
        .iter()
        .flat_map(|(_, r)| r.iter().map(|(from, _, _)| *from))
        .collect();
    candidates.sort_unstable();
    candidates.dedup();
    for &t in candidates.iter().rev() {
        let files: Option<HashMap<String, PathBuf>> = all
            .iter()
            .map(|(c, r)| {
                r.iter()
                    .rev()
                    .find(|(from, to, _)| *from <= t && t <= *to)
                    .map(|(_, _, p)| (c.clone(), p.clone()))
            })
            .collect();
        if let Some(files) = files {
            return Ok(Some(Cut { time: t, files }));
        }
    }
    Ok(None)
}

/// Removes the state files no cut from `cut` on can use (those wholly before it).
pub fn prune(dir: &Path, workers: usize, cut: u64) -> Result<()> {
    for c in registered(dir, workers)?.unwrap_or_default() {
        for (_, to, path) in ranges(&dir.join(c))? {
            if to < cut {
                let _ = std::fs::remove_file(path);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path, every: u64) -> CheckpointSettings {
        CheckpointSettings {
            dir: dir.to_path_buf(),
            every,
        }
    }

    fn state(n: u64) -> impl FnOnce() -> Result<Vec<u8>> {
        move || encode(&n)
    }

    /// Worker 0 registered these components.
    fn register(dir: &Path, names: &[&str]) {
        let path = registration_path(dir, 0);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, serde_json::to_vec(names).unwrap()).unwrap();
    }

    #[test]
    fn a_cut_is_complete_once_every_component_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), 1);
        let mut a = Snapshotter::new(&s, "a", 0).unwrap();
        let mut b = Snapshotter::new(&s, "b", 0).unwrap();
        // a applies epochs 3 and 7; b applies 5, then its frontier reaches 6.
        a.offer(3, state(0)).unwrap();
        a.applied(3);
        a.offer(7, state(3)).unwrap();
        a.applied(7);
        b.offer(5, state(0)).unwrap();
        b.applied(5);
        // No cut before every worker has registered its components.
        assert!(latest_cut(dir.path(), 1).unwrap().is_none());
        register(dir.path(), &["a", "b"]);
        // Cut 4: a after epoch 3, b before its epoch 5.
        assert_eq!(latest_cut(dir.path(), 1).unwrap().unwrap().time, 4);
        b.offer(6, state(5)).unwrap();
        let cut = latest_cut(dir.path(), 1).unwrap().unwrap();
        // a's state after 3 holds for 4..=7, b's after 5 for 6..=6.
        assert_eq!(cut.time, 6);
        assert_eq!(cut.state::<u64>("a").unwrap(), 3);
        assert_eq!(cut.state::<u64>("b").unwrap(), 5);
        // b's frontier moves on with nothing applied: the same state, a wider range.
        b.offer(9, state(5)).unwrap();
        assert_eq!(latest_cut(dir.path(), 1).unwrap().unwrap().time, 6);
        assert_eq!(ranges(&dir.path().join("b")).unwrap().len(), 2);
        prune(dir.path(), 1, 6).unwrap();
        assert_eq!(ranges(&dir.path().join("a")).unwrap().len(), 1);
        assert_eq!(latest_cut(dir.path(), 1).unwrap().unwrap().time, 6);
    }

    #[test]
    fn cuts_come_every_n_epochs_and_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), 10);
        let mut a = Snapshotter::new(&s, "a", 0).unwrap();
        a.applied(0);
        a.offer(9, state(1)).unwrap();
        assert!(ranges(&dir.path().join("a")).unwrap().is_empty());
        a.offer(10, state(1)).unwrap();
        a.applied(10);
        a.offer(15, state(2)).unwrap();
        assert_eq!(ranges(&dir.path().join("a")).unwrap().len(), 1);
        a.offer(u64::MAX, state(2)).unwrap();
        register(dir.path(), &["a"]);
        let cut = latest_cut(dir.path(), 1).unwrap().unwrap();
        assert_eq!((cut.time, cut.state::<u64>("a").unwrap()), (11, 2));
    }

    #[test]
    fn damaged_state_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Snapshotter::new(&settings(dir.path(), 1), "a", 0).unwrap();
        a.offer(1, state(42)).unwrap();
        let (_, _, path) = ranges(&dir.path().join("a")).unwrap().remove(0);
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 9] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let e = read_state(&path).unwrap_err().to_string();
        assert!(
            e.contains("checksum mismatch") && e.contains(".state"),
            "{e}"
        );
        std::fs::write(&path, &bytes[..n - 3]).unwrap();
        assert!(
            read_state(&path)
                .unwrap_err()
                .to_string()
                .contains("truncated")
        );
        std::fs::write(&path, b"hello").unwrap();
        assert!(
            read_state(&path)
                .unwrap_err()
                .to_string()
                .contains("not a dfp state file")
        );
    }

    #[test]
    fn meta_refuses_another_stream() {
        let dir = tempfile::tempdir().unwrap();
        let meta = StateMeta {
            run: "r1".into(),
            schema: "azure".into(),
            source: "kafka://b/logs group g epoch 1us".into(),
            workers: 2,
            versions: Serving::default(),
        };
        let (m, existed) = meta.clone().open_or_create(dir.path()).unwrap();
        assert!(!existed && m.run == "r1");
        let again = StateMeta {
            run: "r2".into(),
            ..meta.clone()
        };
        let (m, existed) = again.open_or_create(dir.path()).unwrap();
        assert!(existed && m.run == "r1", "the first run's name is kept");
        let other = StateMeta {
            workers: 3,
            source: "watch:x".into(),
            ..meta
        };
        let e = other.open_or_create(dir.path()).unwrap_err().to_string();
        assert!(e.contains("input, workers differ"), "{e}");
    }
}
