//! A watched directory (`dfp run --watch DIR`, Morpheus' file source in watch mode): log files
//! that appear in a directory are read as they arrive, their records cut into event-time
//! epochs as a stream's are ([`super::epochs`]), exactly once across restarts.
//!
//! Every poll lists the directory's log files (`.json`, `.jsonl`, `.ndjson`, `.csv`) in name
//! order. Following the directory, a new file is read once it has kept its size and
//! modification time over one poll interval (a writer still writing it is waited for; writers
//! that rename a finished file into place are read at once on the next poll); a bounded read
//! (`--until-end`) takes the files there as they are and ends once it has read them all. A
//! file's good records are sorted by event time and placed as one partition's records are, so
//! the records of one file are never late against each other; its rejected records and a
//! break go to the dead letters with the file and record index, as a batch run's do. Worker 0
//! reads the directory; the rows reach their users' workers downstream.
//!
//! State: the files read (name and size), the file being waited for, and the epochs'
//! assigner; checkpointed together, so a restart reads on with the first file not yet read
//! at the cut and re-reads nothing before it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use dfp_engine::ingest::{InputFormat, Reader};
use dfp_engine::rows::rows_from_batch;
use dfp_engine::{Error, Result};
use serde::{Deserialize, Serialize};

use super::epochs::{EpochAssigner, EpochSettings, EpochState, Placed};
use super::{Batch, Polled, Source};
use crate::dead_letter::{DeadLetter, FileIndex};
use crate::file_to_batch::{Tasks, number_records};
use crate::post_proc::Clock;

/// What a watched directory reads and how it cuts epochs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchSettings {
    /// The directory.
    pub dir: PathBuf,
    /// Event time per epoch, µs.
    pub period_us: i64,
    /// How far behind the newest record a record may be and still be placed, µs.
    pub lateness_us: i64,
    /// How often the directory is listed.
    pub poll: Duration,
    /// Read the files there and end (a bounded read).
    pub stop_at_end: bool,
    /// How long without a new file before the open epochs' watermark stops waiting for one.
    pub idle_after: Duration,
}

impl WatchSettings {
    /// What a checkpoint of this stream belongs to.
    pub fn fingerprint(&self) -> String {
        format!("watch:{} epoch {}us", self.dir.display(), self.period_us)
    }
}

/// A watched directory's state at a cut.
#[derive(Debug, Serialize, Deserialize)]
struct WatchState {
    /// Files read: name and size.
    read: BTreeMap<String, u64>,
    /// Their paths in the order read (the rows' origin file index).
    order: Vec<PathBuf>,
    /// The epochs' assigner, encoded.
    epochs: Vec<u8>,
}

/// Worker 0's reader of a watched directory (other workers have none: see [`WatchSource::new`]).
pub struct WatchSource {
    settings: WatchSettings,
    reader: Arc<Reader>,
    epochs: EpochAssigner,
    tasks: Tasks,
    clock: Clock,
    max_ahead_us: i64,
    /// Whether this worker reads (worker 0).
    reads: bool,
    read: BTreeMap<String, u64>,
    order: FileIndex,
    /// Files seen once, with the size and time they had: read when unchanged next poll.
    waiting: BTreeMap<PathBuf, (u64, Option<SystemTime>)>,
    last_scan: Option<Instant>,
}

/// Whether `path` is a log file the directory source reads.
fn is_log(path: &Path) -> bool {
    path.is_file()
        && path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "json" | "jsonl" | "ndjson" | "csv"))
}

impl WatchSource {
    /// The directory's source on one worker (`reads`: worker 0), from `resume` (a
    /// checkpoint's state and its cut) or from nothing; `order` receives the paths read.
    pub fn new(
        settings: WatchSettings,
        reader: Arc<Reader>,
        reads: bool,
        resume: Option<(Vec<u8>, u64)>,
        tasks: Tasks,
        (clock, max_ahead_us): (Clock, i64),
        order: FileIndex,
    ) -> Result<Self> {
        if reads && !settings.dir.is_dir() {
            return Err(Error::stage(
                "watch",
                format!("{} is not a directory", settings.dir.display()),
            ));
        }
        let epoch_settings = EpochSettings {
            period_us: settings.period_us,
            lateness_us: settings.lateness_us,
            idle_after: settings.idle_after,
            stop_at_end: settings.stop_at_end,
        };
        let (read, epochs) = match resume {
            Some((bytes, cut)) => {
                let state: WatchState =
                    crate::checkpoint::decode(&bytes, Path::new("the watched directory's state"))?;
                let epochs: EpochState = crate::checkpoint::decode(
                    &state.epochs,
                    Path::new("the watched directory's epochs"),
                )?;
                if let Ok(mut o) = order.lock() {
                    *o = state.order;
                }
                (
                    state.read,
                    EpochAssigner::new(epoch_settings, [0], Some((epochs, cut))),
                )
            }
            None => (
                BTreeMap::new(),
                EpochAssigner::new(epoch_settings, reads.then_some(0), None),
            ),
        };
        Ok(Self {
            settings,
            reader,
            epochs,
            tasks,
            clock,
            max_ahead_us,
            reads,
            read,
            order,
            waiting: BTreeMap::new(),
            last_scan: None,
        })
    }

    /// The log files to read now, in name order: new, and (following) settled.
    fn ready(&mut self) -> Result<Vec<PathBuf>> {
        let dir = &self.settings.dir;
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, "listing the watched directory", e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_log(p))
            .collect();
        files.sort();
        let mut ready = Vec::new();
        for path in files {
            let name = path
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            if self.read.contains_key(&name) {
                continue;
            }
            if self.settings.stop_at_end {
                ready.push(path);
                continue;
            }
            let meta = std::fs::metadata(&path).ok();
            let seen = (
                meta.as_ref().map_or(0, std::fs::Metadata::len),
                meta.and_then(|m| m.modified().ok()),
            );
            match self.waiting.insert(path.clone(), seen) {
                Some(before) if before == seen => {
                    self.waiting.remove(&path);
                    ready.push(path);
                }
                _ => {}
            }
        }
        Ok(ready)
    }

    /// Reads one file into the epochs.
    fn take(&mut self, path: &Path, polled: &mut Polled) -> Result<()> {
        let index = match self.order.lock() {
            Ok(mut o) => {
                o.push(path.to_path_buf());
                o.len() - 1
            }
            Err(_) => return Err(Error::stage("watch", "the file index is poisoned")),
        };
        let read = self.reader.read_file(path, InputFormat::Auto);
        polled.bytes += read.bytes;
        polled.dead.extend(DeadLetter::from_read(&read));
        let mut rows = rows_from_batch(&read.batch, 0, u32::try_from(index).unwrap_or(u32::MAX))?;
        number_records(&mut rows, &read.rejected);
        rows.sort_by_key(|r| r.ts);
        let name = path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        self.read.insert(name, read.bytes);
        self.epochs
            .read(0, i64::try_from(index).unwrap_or(i64::MAX));
        let until_us = (self.clock)()
            .timestamp_micros()
            .saturating_add(self.max_ahead_us);
        for mut row in rows {
            row.origin.epoch = super::epochs::epoch_of(row.ts, self.settings.period_us);
            match self.epochs.place(0, row.clone(), until_us) {
                Placed::Open(_) => {}
                Placed::Late(reason) | Placed::Outlier(reason) => {
                    let mut d = DeadLetter::row("watch", row.user.as_deref(), &row, reason);
                    d.file = Some(path.display().to_string());
                    polled.dead.push(d);
                }
            }
        }
        Ok(())
    }
}

impl Source for WatchSource {
    fn describe(&self) -> String {
        format!("the watched directory {}", self.settings.dir.display())
    }

    fn poll(&mut self, now: Instant) -> Result<Option<Polled>> {
        if !self.reads || self.epochs.finished() {
            return Ok(None);
        }
        if let Some(last) = self.last_scan {
            let due = last + self.settings.poll;
            if now < due {
                std::thread::sleep(due - now);
            }
        }
        self.last_scan = Some(Instant::now());
        let mut polled = Polled::default();
        let ready = self.ready()?;
        if ready.is_empty() && self.waiting.is_empty() {
            self.epochs.at_end(0, Instant::now());
        }
        for path in ready {
            self.take(&path, &mut polled)?;
        }
        polled.epochs = self.epochs.close_batches(Instant::now(), false, self.tasks);
        Ok(Some(polled))
    }

    fn drain(&mut self) -> Vec<(u64, Batch)> {
        self.epochs.close_batches(Instant::now(), true, self.tasks)
    }

    fn stateful(&self) -> bool {
        true
    }

    fn state(&self, unsent: &[(u64, Batch)]) -> Result<Vec<u8>> {
        let epochs = self.epochs.state_of(unsent)?;
        let order = self.order.lock().map(|o| o.clone()).unwrap_or_default();
        crate::checkpoint::encode(&WatchState {
            read: self.read.clone(),
            order,
            epochs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(dir: &Path, stop_at_end: bool, resume: Option<(Vec<u8>, u64)>) -> WatchSource {
        WatchSource::new(
            WatchSettings {
                dir: dir.to_path_buf(),
                period_us: 86_400_000_000,
                lateness_us: 0,
                poll: Duration::from_millis(1),
                stop_at_end,
                idle_after: Duration::from_secs(3600),
            },
            Arc::new(Reader::new(Arc::new(
                dfp_engine::schema::SourceSchema::builtin("duo").unwrap(),
            ))),
            true,
            resume,
            Tasks::default(),
            (Arc::new(chrono::Utc::now), 86_400_000_000),
            FileIndex::default(),
        )
        .unwrap()
    }

    fn record(day: u32, user: &str) -> String {
        format!(
            r#"{{"timestamp": "2022-08-{day:02}T10:00:00Z", "txid": "{user}{day}", "user": {{"name": "{user}"}}, "result": "SUCCESS"}}"#
        )
    }

    fn rows(polled: &[(u64, Batch)]) -> Vec<(u64, usize)> {
        polled
            .iter()
            .map(|(e, b)| match b {
                Batch::Rows(r) => (*e, r.rows.len()),
                Batch::Files(f) => (*e, f.len()),
            })
            .collect()
    }

    #[test]
    fn files_that_settle_are_read_once_and_cut_into_epochs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.jsonl"),
            record(1, "x") + "\n" + &record(1, "y"),
        )
        .unwrap();
        let mut s = source(dir.path(), false, None);
        // First seen: waited for; unchanged on the next poll: read.
        let first = s.poll(Instant::now()).unwrap().unwrap();
        assert_eq!(first.bytes, 0);
        let second = s.poll(Instant::now()).unwrap().unwrap();
        assert!(second.bytes > 0);
        assert!(second.epochs.is_empty(), "day 1 is still open");
        std::fs::write(dir.path().join("b.jsonl"), record(2, "x") + "\nnot json\n").unwrap();
        s.poll(Instant::now()).unwrap();
        let third = s.poll(Instant::now()).unwrap().unwrap();
        // Day 2's record closes day 1; the bad line is a dead letter naming its file.
        assert_eq!(rows(&third.epochs), [(19_205, 2)]);
        assert_eq!(third.dead.len(), 1);
        assert!(third.dead[0].file.as_deref().unwrap().ends_with("b.jsonl"));
        // Read once: nothing again.
        assert_eq!(s.poll(Instant::now()).unwrap().unwrap().bytes, 0);
        assert_eq!(rows(&s.drain()), [(19_206, 1)]);
    }

    #[test]
    fn a_restart_reads_on_from_the_checkpoint_and_nothing_twice() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.jsonl"), record(1, "x")).unwrap();
        std::fs::write(dir.path().join("b.jsonl"), record(2, "x")).unwrap();
        let mut s = source(dir.path(), true, None);
        let polled = s.poll(Instant::now()).unwrap().unwrap();
        let state = s.state(&polled.epochs).unwrap();
        std::fs::write(dir.path().join("c.jsonl"), record(3, "x")).unwrap();
        let mut again = source(dir.path(), true, Some((state, 0)));
        let polled = again.poll(Instant::now()).unwrap().unwrap();
        assert!(
            polled.bytes > 0 && polled.bytes < 200,
            "only c.jsonl is read"
        );
        let mut all = rows(&polled.epochs);
        // Bounded: the next poll finds nothing new and the source ends; the driver then
        // drains what is open.
        while let Some(more) = again.poll(Instant::now()).unwrap() {
            all.extend(rows(&more.epochs));
        }
        all.extend(rows(&again.drain()));
        assert_eq!(all, [(19_205, 1), (19_206, 1), (19_207, 1)]);
    }
}
