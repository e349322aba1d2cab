//! Event-time epochs and the watermark of a stream, as pure code: no client library and no
//! clock of its own (every call that needs the time is given `now`), so it is unit-tested
//! without a broker. The Kafka source and the watched-directory source both cut their records
//! into dataflow epochs with it.
//!
//! A record's epoch is its event time divided by the epoch length (`1d`: one epoch a day), so
//! the same records make the same epochs whatever the partitions, workers or read timing. Per
//! partition the watermark is its newest event time less the allowed lateness; an epoch
//! closes once every partition still being read has a watermark past its end. A partition that
//! has been at its end for `idle_after` does not hold the others back (an idle source, as in
//! Flink; in a bounded read, at once); one that has given nothing yet does. A record whose
//! epoch its own partition had already closed when it arrived is late, and one dated after the
//! bound the caller gives (the wall clock plus `[events] max_ahead`) is an outlier: both are
//! reported, never placed, and an outlier does not move the watermark.
//!
//! State: per partition the next offset (the reader's position), the newest event time, and
//! whether it is at its end; the rows of open epochs; the epoch below which epochs have
//! closed. [`EpochAssigner::state`] encodes it (with the closed epochs not yet sent) for a
//! checkpoint; a resumed assigner closes nothing before the checkpoint's cut.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use dfp_engine::Result;
use dfp_engine::rows::Row;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

use super::Batch;
use crate::file_to_batch::{FileRows, Tasks};

/// How epochs are cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochSettings {
    /// Event time per epoch, µs.
    pub period_us: i64,
    /// How far behind its partition's newest record a record may be and still be placed, µs.
    pub lateness_us: i64,
    /// How long a partition must stay at its end before it stops holding the others back.
    pub idle_after: Duration,
    /// A bounded read: a partition at its end is idle at once, and the read ends once every
    /// partition is at its end.
    pub stop_at_end: bool,
}

/// One partition's progress.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Progress {
    /// The next offset to read (unknown until something is read when reading starts at the
    /// beginning).
    pub next: Option<i64>,
    /// Whether the partition has been read to its end.
    pub at_end: bool,
    /// Since when it has been at its end.
    #[serde(skip)]
    end_since: Option<Instant>,
    /// The newest event time placed, µs.
    pub newest: Option<i64>,
}

/// Where a record went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placed {
    /// Into this open epoch.
    Open(u64),
    /// Nowhere: its epoch had closed (the reason says why).
    Late(String),
    /// Nowhere: it is dated after the bound (the reason says by how much).
    Outlier(String),
}

/// An assigner's state at a cut: each partition's progress, the rows of open epochs (and of
/// closed ones not yet sent), the epoch below which epochs were closed.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct EpochState {
    partitions: BTreeMap<i32, Progress>,
    open: BTreeMap<u64, Vec<Row>>,
    closed_below: Option<u64>,
}

impl EpochState {
    /// Each partition's progress at the cut.
    pub fn partitions(&self) -> &BTreeMap<i32, Progress> {
        &self.partitions
    }
}

/// [`EpochState`]'s encoding, borrowed.
#[derive(Serialize)]
#[serde(bound = "")]
struct EpochStateRef<'a, U: Iterator<Item = (u64, &'a [Row])> + Clone> {
    partitions: &'a BTreeMap<i32, Progress>,
    open: OpenRef<'a, U>,
    closed_below: Option<u64>,
}

/// The open epochs and the closed ones not yet sent, encoded as one map.
struct OpenRef<'a, U> {
    open: &'a BTreeMap<u64, Vec<Row>>,
    unsent: U,
}

impl<'a, U: Iterator<Item = (u64, &'a [Row])> + Clone> Serialize for OpenRef<'a, U> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        // The length first: the checkpoint's encoding needs it.
        let len = self.unsent.clone().count() + self.open.len();
        let mut map = s.serialize_map(Some(len))?;
        for (epoch, rows) in self
            .unsent
            .clone()
            .chain(self.open.iter().map(|(e, r)| (*e, r.as_slice())))
        {
            map.serialize_entry(&epoch, rows)?;
        }
        map.end()
    }
}

/// Cuts timed rows from several partitions into epochs (see the module's doc).
#[derive(Debug)]
pub struct EpochAssigner {
    settings: EpochSettings,
    partitions: BTreeMap<i32, Progress>,
    open: BTreeMap<u64, Vec<Row>>,
    closed_below: Option<u64>,
}

/// The epoch of event time `ts` (µs) with epochs `period_us` long (before 1970: epoch 0).
pub fn epoch_of(ts: i64, period_us: i64) -> u64 {
    u64::try_from(ts.div_euclid(period_us.max(1))).unwrap_or(0)
}

impl EpochAssigner {
    /// An assigner over `partitions`, from `resume` (a checkpoint's state and its cut: nothing
    /// before the cut closes again) or from nothing.
    pub fn new(
        settings: EpochSettings,
        partitions: impl IntoIterator<Item = i32>,
        resume: Option<(EpochState, u64)>,
    ) -> Self {
        let (state, cut) = resume.unwrap_or_default();
        let partitions = partitions
            .into_iter()
            .map(|p| {
                let saved = state.partitions.get(&p).copied().unwrap_or_default();
                let fresh = Progress {
                    next: saved.next,
                    newest: saved.newest,
                    at_end: false,
                    end_since: None,
                };
                (p, fresh)
            })
            .collect();
        Self {
            settings,
            partitions,
            open: state.open,
            closed_below: match (state.closed_below, cut) {
                (c, 0) => c,
                (c, cut) => Some(c.map_or(cut, |c| c.max(cut))),
            },
        }
    }

    /// The settings.
    pub fn settings(&self) -> &EpochSettings {
        &self.settings
    }

    /// Each partition's progress.
    pub fn partitions(&self) -> &BTreeMap<i32, Progress> {
        &self.partitions
    }

    /// Partition `p` gave the record at `offset`: it is not at its end.
    pub fn read(&mut self, p: i32, offset: i64) {
        let progress = self.partitions.entry(p).or_default();
        progress.next = Some(progress.next.map_or(offset + 1, |n| n.max(offset + 1)));
        progress.at_end = false;
        progress.end_since = None;
    }

    /// Partition `p` is at its end, as of `now`.
    pub fn at_end(&mut self, p: i32, now: Instant) {
        if let Some(progress) = self.partitions.get_mut(&p) {
            if !progress.at_end {
                progress.end_since = Some(now);
            }
            progress.at_end = true;
        }
    }

    /// Whether a bounded read has read every partition to its end.
    pub fn finished(&self) -> bool {
        self.settings.stop_at_end && self.partitions.values().all(|p| p.at_end)
    }

    /// Places `row` of partition `p`, dated at most `until_us` (later is an outlier): into its
    /// open epoch, unless that epoch had closed for the partition (late). The partition's
    /// newest event time moves on with each placed row.
    pub fn place(&mut self, p: i32, row: Row, until_us: i64) -> Placed {
        if row.ts > until_us {
            return Placed::Outlier(format!(
                "event time {} is after {}, the wall clock plus [events] max_ahead: an outlier (a forged record or a skewed clock?)",
                time_text(row.ts),
                time_text(until_us)
            ));
        }
        let (lateness, period) = (self.settings.lateness_us, self.settings.period_us);
        let epoch = epoch_of(row.ts, period);
        let progress = self.partitions.entry(p).or_default();
        let closed_here = progress
            .newest
            .map(|n| epoch_of(n.saturating_sub(lateness), period))
            .unwrap_or(0);
        progress.newest = Some(progress.newest.map_or(row.ts, |n| n.max(row.ts)));
        if epoch < closed_here || self.closed_below.is_some_and(|c| epoch < c) {
            return Placed::Late(format!(
                "late record: partition {p} offset {} is more than the allowed lateness behind the partition's newest event, and its epoch has closed",
                row.origin.record
            ));
        }
        self.open.entry(epoch).or_default().push(row);
        Placed::Open(epoch)
    }

    /// The epoch below which every partition's watermark has passed, as of `now`: the oldest
    /// newest event time, less the lateness, over the partitions still being read (a partition
    /// idle at its end does not hold the others back; when all are idle, over those with
    /// data). `None` while a partition still being read has given nothing yet.
    pub fn watermark(&self, now: Instant) -> Option<u64> {
        let idle = |p: &Progress| {
            p.at_end
                && (self.settings.stop_at_end
                    || p.end_since
                        .is_some_and(|t| now.duration_since(t) >= self.settings.idle_after))
        };
        let reading: Vec<&Progress> = self.partitions.values().filter(|p| !idle(p)).collect();
        let newest: Option<Vec<i64>> = if reading.is_empty() {
            Some(self.partitions.values().filter_map(|p| p.newest).collect())
        } else {
            reading.iter().map(|p| p.newest).collect()
        };
        let oldest = newest?.into_iter().min()?;
        Some(epoch_of(
            oldest.saturating_sub(self.settings.lateness_us),
            self.settings.period_us,
        ))
    }

    /// Closes the epochs the watermark has passed as of `now` (all of them when `all`: the
    /// end of a bounded read, or a stop), in order, with their rows.
    pub fn close(&mut self, now: Instant, all: bool) -> Vec<(u64, Vec<Row>)> {
        let watermark = self.watermark(now);
        let mut out = Vec::new();
        while let Some((&epoch, _)) = self.open.first_key_value() {
            if !all && watermark.is_none_or(|w| epoch >= w) {
                break;
            }
            if let Some(e) = self.open.pop_first() {
                out.push(e);
            }
        }
        if let Some(w) = watermark {
            self.closed_below = Some(self.closed_below.map_or(w, |c| c.max(w)));
        }
        out
    }

    /// The state for a checkpoint, with `unsent`: epochs closed but not yet sent, in order.
    pub fn state<'a>(
        &'a self,
        unsent: impl Iterator<Item = (u64, &'a [Row])> + Clone,
    ) -> Result<Vec<u8>> {
        crate::checkpoint::encode(&EpochStateRef {
            partitions: &self.partitions,
            open: OpenRef {
                open: &self.open,
                unsent,
            },
            closed_below: self.closed_below,
        })
    }

    /// [`Self::close`], each epoch handed as a batch of its rows, for `tasks`.
    pub fn close_batches(&mut self, now: Instant, all: bool, tasks: Tasks) -> Vec<(u64, Batch)> {
        self.close(now, all)
            .into_iter()
            .map(|(epoch, rows)| {
                let rows = FileRows {
                    epoch,
                    tasks,
                    rows,
                    bytes: 0,
                };
                (epoch, Batch::Rows(rows))
            })
            .collect()
    }

    /// [`Self::state`] with a source's batches closed but not yet sent.
    pub fn state_of(&self, unsent: &[(u64, Batch)]) -> Result<Vec<u8>> {
        self.state(unsent.iter().filter_map(|(e, b)| match b {
            Batch::Rows(r) => Some((*e, r.rows.as_slice())),
            Batch::Files(_) => None,
        }))
    }
}

/// An event time as RFC 3339 text.
pub fn time_text(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us).map_or_else(
        || format!("{us} µs"),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    )
}

#[cfg(test)]
mod tests {
    use dfp_engine::rows::Origin;

    use super::*;

    const HOUR: i64 = 3_600_000_000;

    fn row(ts: i64, record: u64) -> Row {
        Row {
            ts,
            user: Some("u".into()),
            origin: Origin {
                epoch: 0,
                file: 0,
                record,
            },
            values: Vec::new(),
        }
    }

    fn assigner(partitions: &[i32], lateness_us: i64, stop_at_end: bool) -> EpochAssigner {
        EpochAssigner::new(
            EpochSettings {
                period_us: HOUR,
                lateness_us,
                idle_after: Duration::from_secs(1),
                stop_at_end,
            },
            partitions.iter().copied(),
            None,
        )
    }

    fn epochs(closed: &[(u64, Vec<Row>)]) -> Vec<(u64, usize)> {
        closed.iter().map(|(e, r)| (*e, r.len())).collect()
    }

    #[test]
    fn an_epoch_closes_once_every_partition_has_passed_it() {
        let now = Instant::now();
        let mut a = assigner(&[0, 1], 0, false);
        assert_eq!(a.place(0, row(10, 0), i64::MAX), Placed::Open(0));
        assert_eq!(a.place(0, row(HOUR + 5, 1), i64::MAX), Placed::Open(1));
        // Partition 1 has given nothing: nothing closes.
        assert!(a.close(now, false).is_empty());
        a.place(1, row(HOUR + 7, 0), i64::MAX);
        assert_eq!(epochs(&a.close(now, false)), [(0, 1)]);
        // A record of the closed epoch is late, and placed nowhere.
        assert!(matches!(a.place(1, row(20, 1), i64::MAX), Placed::Late(_)));
        assert_eq!(epochs(&a.close(now, true)), [(1, 2)]);
    }

    #[test]
    fn lateness_keeps_an_epoch_open_for_stragglers() {
        let now = Instant::now();
        let mut a = assigner(&[0], HOUR / 2, false);
        a.place(0, row(HOUR + 10, 0), i64::MAX);
        // Within half an hour of the newest: epoch 0 is still open.
        assert_eq!(a.place(0, row(HOUR - 10, 1), i64::MAX), Placed::Open(0));
        assert!(a.close(now, false).is_empty());
        a.place(0, row(2 * HOUR, 2), i64::MAX);
        assert_eq!(epochs(&a.close(now, false)), [(0, 1)]);
    }

    #[test]
    fn an_idle_partition_stops_holding_the_others_back_after_the_idle_time() {
        let t0 = Instant::now();
        let mut a = assigner(&[0, 1], 0, false);
        a.place(0, row(10, 0), i64::MAX);
        a.place(1, row(5, 0), i64::MAX);
        a.place(0, row(3 * HOUR, 1), i64::MAX);
        a.at_end(1, t0);
        // Partition 1 (newest: epoch 0) holds epoch 0 open until it has been idle a second.
        assert!(a.close(t0, false).is_empty());
        let later = t0 + Duration::from_millis(1500);
        assert_eq!(epochs(&a.close(later, false)), [(0, 2)]);
        assert!(!a.finished());
        // A bounded read is idle at once, and finished when every partition is at its end.
        let mut b = assigner(&[0], 0, true);
        b.place(0, row(10, 0), i64::MAX);
        b.at_end(0, t0);
        assert!(b.finished());
    }

    #[test]
    fn an_outlier_is_refused_and_does_not_move_the_watermark() {
        let now = Instant::now();
        let mut a = assigner(&[0], 0, false);
        a.place(0, row(10, 0), i64::MAX);
        assert!(matches!(
            a.place(0, row(100 * HOUR, 1), 5 * HOUR),
            Placed::Outlier(_)
        ));
        assert_eq!(a.partitions()[&0].newest, Some(10));
        assert_eq!(a.place(0, row(20, 2), 5 * HOUR), Placed::Open(0));
        assert!(a.close(now, false).is_empty());
    }

    #[test]
    fn a_resumed_assigner_keeps_its_rows_and_closes_nothing_before_the_cut() {
        let now = Instant::now();
        let mut a = assigner(&[0], 0, false);
        a.read(0, 41);
        a.place(0, row(HOUR + 1, 41), i64::MAX);
        let closed = [(0u64, vec![row(3, 40)])];
        let unsent = closed.iter().map(|(e, r)| (*e, r.as_slice()));
        let state: EpochState =
            crate::checkpoint::decode(&a.state(unsent).unwrap(), std::path::Path::new("s"))
                .unwrap();
        let mut b = EpochAssigner::new(*a.settings(), [0], Some((state, 1)));
        assert_eq!(b.partitions()[&0].next, Some(42));
        // Epoch 0 was closed at the cut: its rows are in the state, a new record of it is late.
        assert!(matches!(b.place(0, row(5, 43), i64::MAX), Placed::Late(_)));
        assert_eq!(epochs(&b.close(now, true)), [(0, 1), (1, 1)]);
    }
}
