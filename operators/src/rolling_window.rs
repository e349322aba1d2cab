//! Rolling window (Morpheus' `dfp_rolling_window` module / `DFPRollingWindowStage`): per-user
//! history maintained incrementally, emitting a window when the user has enough rows.
//!
//! Input: [`UserRows`] (a user's rows of one epoch, exchanged to the worker that owns the user).
//! Output: [`Window`]s (the rows to train on or to score, with their derived per-day features)
//! and the rows that could not be placed, as dead letters.
//!
//! State, per user and per purpose (training, inference): UTC days of rows in event-time order
//! (ties by origin), each day with its derived features (`logcount` = index within the day,
//! `locincrement`/`appincrement` = distinct values so far that day) maintained as rows arrive:
//! a row appended at the end of its day costs O(1); an out-of-order row is placed by event time
//! and only its day is recomputed. Trailing features (`count_within`, `distinct_within`: the
//! row user's rows over a span of time before each row) are computed when a window is emitted,
//! over the rows the window holds, so a scoring window's new rows look back over rows already
//! scored. Eviction: a whole day leaves the window once it ended more
//! than `max_history` before the newest row, so per-day features never see a partial day; a row
//! for a day already evicted is late and dead-lettered (Morpheus silently drops every row
//! older than the newest). Triggers: a window is emitted when the user holds at least
//! `min_history` rows and at least `min_increment` (and at least one) rows arrived since the
//! last emission. Cache modes: `aggregate` emits the whole window (training), `batch` only the
//! rows that arrived since the last emission, with features computed in the window's context
//! (inference: each row is scored once). `payload` epochs skip the state: the window is the
//! epoch's rows alone. With `[familiarity]` on, each user's inference state also keeps when the
//! user first had each of the schema's `[[familiar]]` values per UTC day (every row of the
//! user, training, scoring or payload, is recorded), and each scoring window says per row which
//! were familiar ([`Familiar`]).
//!
//! The operator keeps a capability per pending epoch and processes an epoch only when the input
//! frontier has passed it, so every window is emitted exactly once and does not depend on how
//! rows were spread over workers. Per-day aggregates are kept here rather than in a
//! differential arrangement: retraction is always of whole days, so a map of days is the whole
//! index the retraction needs, without a second copy of the rows.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use dfp_engine::config::{Problems, join};
use dfp_engine::period::parse_duration;
use dfp_engine::rows::{Row, Value};
use dfp_engine::schema::MISSING_STRING as MISSING;
use dfp_engine::schema::{DerivedKind, ProfileKind, SourceSchema};
use dfp_engine::{Error, Result};
use serde::{Deserialize, Serialize};
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::core::OkErr;
use timely::dataflow::operators::{Capability, Operator};

use crate::checkpoint::{self, frontier_cut};
use crate::dead_letter::DeadLetter;
use crate::drift::{InFlight, Retrain};
use crate::frontier::Pending;
use crate::metrics::SharedStats;
use crate::split_users::UserRows;
use crate::state::{StageState, Stateful};

const DAY_US: i64 = 86_400_000_000;

/// What a window emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheMode {
    /// The whole window (training).
    Aggregate,
    /// Only rows that arrived since the last emission (inference: each row scored once).
    Batch,
}

/// One rolling window's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// Rows a user needs before a window is emitted.
    pub min_history: usize,
    /// New rows needed since the last emission.
    pub min_increment: usize,
    /// How far back from the newest row whole days are kept ("60d").
    pub max_history: String,
    /// What is emitted.
    pub cache_mode: CacheMode,
}

impl WindowConfig {
    /// Morpheus' training window: 300 rows, 300 new, 60 days, the whole window.
    pub fn training() -> Self {
        Self {
            min_history: 300,
            min_increment: 300,
            max_history: "60d".into(),
            cache_mode: CacheMode::Aggregate,
        }
    }

    /// Morpheus' inference window: 1 row, no increment, 1 day, the new rows only.
    pub fn inference() -> Self {
        Self {
            min_history: 1,
            min_increment: 0,
            max_history: "1d".into(),
            cache_mode: CacheMode::Batch,
        }
    }

    /// `max_history` in µs, if it parses.
    pub fn max_history_us(&self) -> std::result::Result<i64, String> {
        let d = parse_duration(&self.max_history)?;
        d.num_microseconds()
            .filter(|&us| us > 0)
            .ok_or_else(|| format!("{:?} must be a positive duration", self.max_history))
    }

    /// Records every problem at `at`.
    pub fn check(&self, at: &str, p: &mut Problems) {
        if let Err(e) = self.max_history_us() {
            p.push(join(at, "max_history"), e);
        }
    }
}

/// Familiar values (`[familiarity]`): what the rolling window tracks per user for the
/// schema's `[[familiar]]` entries, and when a value counts as familiar.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FamiliarityConfig {
    /// Track familiar values and let them explain the features the schema names.
    pub enabled: bool,
    /// How long before a row the user must first have had its value ("4h"): a burst of new
    /// activity is never familiar to itself.
    pub after: String,
    /// How far back a first sighting counts ("14d"), in whole UTC days kept.
    pub within: String,
}

impl Default for FamiliarityConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            after: "4h".into(),
            within: "14d".into(),
        }
    }
}

impl FamiliarityConfig {
    /// `(after, within)` in µs, if both parse and `after < within`.
    fn spans_us(&self) -> std::result::Result<(i64, i64), (&'static str, String)> {
        let us = |key: &'static str, text: &str| {
            parse_duration(text)
                .ok()
                .and_then(|d| d.num_microseconds())
                .filter(|&us| us > 0)
                .ok_or((
                    key,
                    format!("{text:?} must be a positive duration like \"4h\""),
                ))
        };
        let (after, within) = (us("after", &self.after)?, us("within", &self.within)?);
        if after >= within {
            return Err((
                "after",
                format!("must be shorter than within ({:?})", self.within),
            ));
        }
        Ok((after, within))
    }

    /// Records every problem at `at`.
    pub fn check(&self, at: &str, p: &mut Problems) {
        if let Err((key, e)) = self.spans_us() {
            p.push(join(at, key), e);
        }
    }
}

/// What one `[[familiar]]` entry tracks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tracked {
    /// A column's value ([`Row::values`] index).
    Value(usize),
    /// The UTC hour, familiar when the hour before, the hour or the hour after is.
    Hour,
}

/// The schema's familiar entries with the run's spans.
#[derive(Debug, Clone)]
pub struct FamiliarPlan {
    tracked: Vec<Tracked>,
    after_us: i64,
    within_us: i64,
}

impl FamiliarPlan {
    /// The key under which entry `k` records `row` (the column's value, or the hour).
    fn key(&self, k: usize, row: &Row) -> String {
        match self.tracked[k] {
            Tracked::Value(c) => distinct_key(row, c),
            Tracked::Hour => hour_of(row.ts).to_string(),
        }
    }
}

fn hour_of(ts: i64) -> i64 {
    ts.div_euclid(3_600_000_000).rem_euclid(24)
}

/// When a user first had each tracked value on each UTC day, over the last `within`: a row is
/// familiar for an entry when some day's first sighting of its value lies in
/// `[ts - within, ts - after]`. First sightings only, so the state is a day per value, and the
/// answer does not depend on the order rows arrived in within an epoch.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Familiar {
    /// By (entry, value): (UTC day, first event time that day), days ascending.
    first: BTreeMap<(u8, String), Vec<(i64, i64)>>,
    newest: Option<i64>,
}

impl Familiar {
    /// Records `rows` and forgets days older than `within` before the newest row.
    fn see<'r>(&mut self, plan: &FamiliarPlan, rows: impl Iterator<Item = &'r Row>) {
        for row in rows {
            let day = row.ts.div_euclid(DAY_US);
            for k in 0..plan.tracked.len() {
                let days = self.first.entry((k as u8, plan.key(k, row))).or_default();
                let at = days.partition_point(|&(d, _)| d < day);
                match days.get_mut(at) {
                    Some((d, first)) if *d == day => *first = (*first).min(row.ts),
                    _ => days.insert(at, (day, row.ts)),
                }
            }
            self.newest = Some(self.newest.map_or(row.ts, |n| n.max(row.ts)));
        }
        if let Some(newest) = self.newest {
            let oldest = newest.saturating_sub(plan.within_us).div_euclid(DAY_US);
            self.first.retain(|_, days| {
                days.retain(|&(d, _)| d >= oldest);
                !days.is_empty()
            });
        }
    }

    /// Bit `k` set when `row` is familiar for entry `k`.
    fn bits(&self, plan: &FamiliarPlan, row: &Row) -> u64 {
        let seen = |k: usize, key: String| {
            let lo = row.ts.saturating_sub(plan.within_us);
            let hi = row.ts.saturating_sub(plan.after_us);
            self.first
                .get(&(k as u8, key))
                .is_some_and(|days| days.iter().any(|&(_, t)| (lo..=hi).contains(&t)))
        };
        (0..plan.tracked.len())
            .filter(|&k| match plan.tracked[k] {
                Tracked::Value(_) => seen(k, plan.key(k, row)),
                Tracked::Hour => {
                    let h = hour_of(row.ts);
                    [h + 23, h, h + 1]
                        .iter()
                        .any(|n| seen(k, (n % 24).to_string()))
                }
            })
            .fold(0, |bits, k| bits | (1 << k))
    }
}

/// How one derived feature reads a row ([`Row::values`] indices).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Derived {
    /// `count_per_day`.
    CountPerDay,
    /// `distinct_per_day` of a column.
    DistinctPerDay(usize),
    /// `count_within` a span (µs), of the rows whose bool column equals a value, if named.
    CountWithin(i64, Option<(usize, bool)>),
    /// `distinct_within` a span (µs) of a column.
    DistinctWithin(i64, usize),
}

/// How the derived features of a schema read a row. Per-day features are kept with each day
/// as rows arrive; trailing features are computed when a window is emitted, over the rows the
/// window holds.
#[derive(Debug, Clone)]
pub struct DerivedPlan {
    features: Vec<Derived>,
}

impl DerivedPlan {
    /// The plan of `schema`'s derived features over its rows ([`Row::values`] order).
    pub fn new(schema: &SourceSchema) -> Result<Self> {
        let arrow = schema.arrow_schema();
        let features = schema
            .derived
            .iter()
            .map(|d| {
                let column = || {
                    d.column
                        .as_deref()
                        .and_then(|c| arrow.index_of(c).ok())
                        .and_then(|i| i.checked_sub(2))
                        .ok_or_else(|| {
                            Error::model(
                                "rolling window",
                                format!(
                                    "derived feature {:?} needs a known column, not {:?}",
                                    d.name, d.column
                                ),
                            )
                        })
                };
                Ok(match d.kind {
                    DerivedKind::CountPerDay => Derived::CountPerDay,
                    DerivedKind::DistinctPerDay => Derived::DistinctPerDay(column()?),
                    DerivedKind::CountWithin => Derived::CountWithin(
                        d.within_us(),
                        match d.column {
                            Some(_) => Some((column()?, d.when.unwrap_or(true))),
                            None => None,
                        },
                    ),
                    DerivedKind::DistinctWithin => {
                        Derived::DistinctWithin(d.within_us(), column()?)
                    }
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self { features })
    }

    /// Number of derived features.
    pub fn len(&self) -> usize {
        self.features.len()
    }

    /// Whether the schema has no derived feature.
    pub fn is_empty(&self) -> bool {
        self.features.is_empty()
    }

    /// The longest trailing span (0 when there is no trailing feature).
    fn longest_span(&self) -> i64 {
        self.features
            .iter()
            .map(|f| match f {
                Derived::CountWithin(us, _) | Derived::DistinctWithin(us, _) => *us,
                _ => 0,
            })
            .max()
            .unwrap_or(0)
    }

    /// Fills the trailing features of the last row of `recent` (one user's rows in time order
    /// back to at least the longest span before it) into `derived`.
    fn fill_trailing(&self, recent: &VecDeque<&Row>, derived: &mut [i64]) {
        let Some(row) = recent.back() else { return };
        for (f, value) in self.features.iter().zip(derived) {
            let in_span = |us: i64| {
                let since = row.ts.saturating_sub(us);
                recent.iter().rev().take_while(move |r| r.ts > since)
            };
            match *f {
                Derived::CountWithin(us, None) => *value = in_span(us).count() as i64,
                Derived::CountWithin(us, Some((c, when))) => {
                    *value = in_span(us)
                        .filter(|r| {
                            matches!(r.values.get(c), Some(Value::Bool(b)) if *b == when)
                                || (!when && matches!(r.values.get(c), Some(Value::Null) | None))
                        })
                        .count() as i64
                }
                Derived::DistinctWithin(us, c) => {
                    *value = in_span(us)
                        .map(|r| distinct_key(r, c))
                        .collect::<HashSet<_>>()
                        .len() as i64
                }
                Derived::CountPerDay | Derived::DistinctPerDay(_) => {}
            }
        }
    }
}

fn distinct_key(row: &Row, column: usize) -> String {
    match row.values.get(column) {
        Some(Value::Str(s)) => s.clone(),
        Some(Value::Null) | None => MISSING.to_string(),
        Some(v) => v.to_text(),
    }
}

/// One UTC day of a user's rows, in event-time order, with their derived features.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Day {
    rows: Vec<Arc<Row>>,
    derived: Vec<Vec<i64>>,
    seen: Vec<HashSet<String>>,
}

impl Day {
    fn derive_next(&mut self, i: usize, plan: &DerivedPlan) {
        if self.seen.len() != plan.len() {
            self.seen = vec![HashSet::new(); plan.len()];
        }
        let row = &self.rows[i];
        let values = plan
            .features
            .iter()
            .zip(&mut self.seen)
            .map(|(f, seen)| match *f {
                Derived::CountPerDay => i as i64,
                Derived::DistinctPerDay(c) => {
                    seen.insert(distinct_key(row, c));
                    seen.len() as i64
                }
                Derived::CountWithin(..) | Derived::DistinctWithin(..) => 0,
            })
            .collect();
        self.derived.insert(i, values);
    }

    /// Places `row` by event time; only a row that lands before others recomputes the day.
    fn insert(&mut self, row: Arc<Row>, plan: &DerivedPlan) {
        let at = self.rows.partition_point(|r| r.key() < row.key());
        self.rows.insert(at, row);
        if at + 1 == self.rows.len() {
            self.derive_next(at, plan);
        } else {
            self.derived.clear();
            self.seen.clear();
            for i in 0..self.rows.len() {
                self.derive_next(i, plan);
            }
        }
    }
}

/// A window ready for data prep: a user's rows with their derived features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// The user (`generic_user` for the generic model).
    pub user: String,
    /// The epoch it was emitted at.
    pub epoch: u64,
    /// Whether it is to train (else to score).
    pub train: bool,
    /// The rows, in event-time order (shared with the window state that emitted them).
    pub rows: Vec<Arc<Row>>,
    /// Per row, the derived feature values (schema order).
    pub derived: Vec<Vec<i64>>,
    /// Per row of a scoring window, with `[familiarity]` on: bit `k` set when the row's value
    /// of the schema's `familiar[k]` was familiar to its user (else empty).
    #[serde(default)]
    pub familiar: Vec<u64>,
}

/// One user's window state.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct UserWindow {
    /// By (UTC day, row's user): the generic user's window holds every user's rows, and the
    /// per-day features are per the row's own user, as Morpheus groups them by `username`.
    days: BTreeMap<(i64, String), Day>,
    rows: usize,
    fresh: usize,
    newest: Option<i64>,
    last_emit: Option<u64>,
    /// The user's familiar values (inference windows, with `[familiarity]` on).
    familiar: Familiar,
}

impl UserWindow {
    /// Rows held.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether no row is held.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Places `rows`, evicts days that left the window, and returns the rows that could not be
    /// placed (their day had already left the window).
    pub fn insert(
        &mut self,
        rows: Vec<impl Into<Arc<Row>>>,
        max_history_us: i64,
        plan: &DerivedPlan,
    ) -> Vec<Arc<Row>> {
        let mut rows: Vec<Arc<Row>> = rows.into_iter().map(Into::into).collect();
        rows.sort_by_key(|r| r.key());
        if let Some(max) = rows.iter().map(|r| r.ts).max() {
            self.newest = Some(self.newest.map_or(max, |n| n.max(max)));
        }
        let Some(newest) = self.newest else {
            return Vec::new();
        };
        let horizon = newest.saturating_sub(max_history_us);
        let kept = |day: i64| (day + 1).saturating_mul(DAY_US) > horizon;
        while let Some(((day, _), _)) = self.days.first_key_value() {
            if kept(*day) {
                break;
            }
            if let Some((_, d)) = self.days.pop_first() {
                self.rows -= d.rows.len();
            }
        }
        let mut late = Vec::new();
        for row in rows {
            let day = row.ts.div_euclid(DAY_US);
            if kept(day) {
                let user = row.user.clone().unwrap_or_default();
                self.days.entry((day, user)).or_default().insert(row, plan);
                self.rows += 1;
                self.fresh += 1;
            } else {
                late.push(row);
            }
        }
        late
    }

    /// The window for `user` at `epoch`, if the triggers of `cfg` fire (`forced`: whatever
    /// `min_increment` says, once a row arrived since the last emission).
    pub fn emit(
        &mut self,
        user: &str,
        (epoch, train, forced): (u64, bool, bool),
        cfg: &WindowConfig,
        plan: &DerivedPlan,
    ) -> Option<Window> {
        if self.fresh == 0
            || (self.fresh < cfg.min_increment && !forced)
            || self.rows < cfg.min_history
        {
            return None;
        }
        let since = self.last_emit;
        let mut held: Vec<(&Arc<Row>, &Vec<i64>)> = self
            .days
            .values()
            .flat_map(|day| day.rows.iter().zip(&day.derived))
            .collect();
        held.sort_by_key(|(row, _)| row.key());
        let span = plan.longest_span();
        // Per row user, their rows back to the longest trailing span (the generic user's
        // window holds many users).
        let mut recent: HashMap<Option<&str>, VecDeque<&Row>> = HashMap::new();
        let mut w = Window {
            user: user.to_string(),
            epoch,
            train,
            rows: Vec::new(),
            derived: Vec::new(),
            familiar: Vec::new(),
        };
        for (row, derived) in held {
            let emitted = cfg.cache_mode == CacheMode::Aggregate
                || since.is_none_or(|s| row.origin.epoch > s);
            // Every row enters its user's trailing rows; only an emitted row's trailing
            // features are worked out (and the row shared with the window).
            let mine = (span > 0).then(|| {
                let mine = recent.entry(row.user.as_deref()).or_default();
                while mine
                    .front()
                    .is_some_and(|r| r.ts <= row.ts.saturating_sub(span))
                {
                    mine.pop_front();
                }
                mine.push_back(row);
                mine
            });
            if !emitted {
                continue;
            }
            let mut derived = derived.clone();
            if let Some(mine) = mine {
                plan.fill_trailing(mine, &mut derived);
            }
            w.rows.push(row.clone());
            w.derived.push(derived);
        }
        self.fresh = 0;
        self.last_emit = Some(epoch);
        Some(w)
    }
}

/// The windows of both purposes, for every user one worker owns.
#[derive(Debug)]
pub struct RollingWindows {
    training: WindowConfig,
    inference: WindowConfig,
    training_us: i64,
    inference_us: i64,
    plan: DerivedPlan,
    familiar: Option<FamiliarPlan>,
    users: WindowState,
}

/// Every user's windows, by user and purpose (training: `true`): the state a checkpoint keeps,
/// keyed by user so it could be repartitioned over another worker count.
pub type WindowState = HashMap<(String, bool), UserWindow>;

impl Stateful for RollingWindows {
    fn snapshot(&mut self) -> Result<Vec<u8>> {
        checkpoint::encode(&self.users)
    }
}

/// What one epoch of one user gave.
#[derive(Debug, Default)]
pub struct Emitted {
    /// Windows to train on or to score.
    pub windows: Vec<Window>,
    /// Rows that could not be placed.
    pub late: Vec<DeadLetter>,
}

impl RollingWindows {
    /// Windows for `schema` with these settings.
    pub fn new(
        schema: &SourceSchema,
        training: WindowConfig,
        inference: WindowConfig,
    ) -> Result<Self> {
        let us = |c: &WindowConfig| {
            c.max_history_us()
                .map_err(|e| Error::model("rolling window", format!("max_history: {e}")))
        };
        Ok(Self {
            training_us: us(&training)?,
            inference_us: us(&inference)?,
            training,
            inference,
            plan: DerivedPlan::new(schema)?,
            familiar: None,
            users: HashMap::new(),
        })
    }

    /// Tracks the schema's familiar values per user when `cfg` turns them on: every row of a
    /// user (training or scoring) is recorded, and each scoring window says per row which
    /// entries were familiar ([`Window::familiar`]).
    pub fn with_familiarity(
        mut self,
        schema: &SourceSchema,
        cfg: &FamiliarityConfig,
    ) -> Result<Self> {
        if !cfg.enabled || schema.familiar.is_empty() {
            return Ok(self);
        }
        let invalid = |e: String| Error::model("rolling window", format!("familiarity: {e}"));
        let (after_us, within_us) = cfg
            .spans_us()
            .map_err(|(k, e)| invalid(format!("{k}: {e}")))?;
        if schema.familiar.len() > 64 {
            return Err(invalid(format!(
                "at most 64 [[familiar]] entries, not {}",
                schema.familiar.len()
            )));
        }
        let arrow = schema.arrow_schema();
        let tracked = schema
            .familiar
            .iter()
            .map(|f| match (f.kind, f.column.as_deref()) {
                (ProfileKind::HourOfDay, _) => Ok(Tracked::Hour),
                (ProfileKind::Value, Some(c)) => arrow
                    .index_of(c)
                    .ok()
                    .and_then(|i| i.checked_sub(2))
                    .map(Tracked::Value)
                    .ok_or_else(|| invalid(format!("unknown column {c:?}"))),
                (ProfileKind::Value, None) => Err(invalid("a value entry needs a column".into())),
            })
            .collect::<Result<_>>()?;
        self.familiar = Some(FamiliarPlan {
            tracked,
            after_us,
            within_us,
        });
        Ok(self)
    }

    /// Replaces every user's window with a checkpoint's (its state at a cut).
    pub fn restore(&mut self, users: WindowState) {
        self.users = users;
    }

    /// Hands in one user's inference window (kept outside between calls: `dfp serve` keeps
    /// each user's in NATS' key-value store).
    pub fn insert_user(&mut self, user: &str, window: UserWindow) {
        self.users.insert((user.to_string(), false), window);
    }

    /// Takes one user's inference window out (empty if the user has none).
    pub fn remove_user(&mut self, user: &str) -> UserWindow {
        self.users
            .remove(&(user.to_string(), false))
            .unwrap_or_default()
    }

    /// Pushes one user's rows of `epoch` and returns what that emits: a training window if the
    /// rows train, a scoring window if they score, each when its triggers fire.
    pub fn push(&mut self, rows: UserRows, epoch: u64) -> Emitted {
        let mut out = Emitted::default();
        let UserRows {
            user,
            generic,
            train,
            infer,
            payload,
            history_only,
            rows,
        } = rows;
        if let Some(plan) = &self.familiar
            && !generic
        {
            let state = self.users.entry((user.clone(), false)).or_default();
            state.familiar.see(plan, rows.iter().map(|r| &**r));
        }
        let purposes: Vec<bool> = [(true, train), (false, infer)]
            .into_iter()
            .filter_map(|(purpose, on)| on.then_some(purpose))
            .collect();
        // Both purposes hold the same rows.
        for &purpose in &purposes {
            let these = rows.clone();
            let (cfg, us) = if purpose {
                (&self.training, self.training_us)
            } else {
                (&self.inference, self.inference_us)
            };
            let mut scratch = UserWindow::default();
            let state = if payload {
                &mut scratch
            } else {
                self.users.entry((user.clone(), purpose)).or_default()
            };
            for row in state.insert(these, us, &self.plan) {
                out.late.push(DeadLetter::late(
                    &user,
                    Arc::unwrap_or_clone(row),
                    &cfg.max_history,
                ));
            }
            if !history_only {
                let mut window = state.emit(&user, (epoch, purpose, false), cfg, &self.plan);
                if let (Some(plan), Some(w)) = (&self.familiar, &mut window)
                    && !purpose
                    && let Some(known) = self.users.get(&(user.clone(), false))
                {
                    w.familiar = w
                        .rows
                        .iter()
                        .map(|r| known.familiar.bits(plan, r))
                        .collect();
                }
                out.windows.extend(window);
            }
        }
        out
    }

    /// Training windows at `epoch` for the users `requests` ask for (drift lasted), those that
    /// have not emitted one at this epoch already and have rows since their last one.
    pub fn retrain(&mut self, requests: &[Retrain], epoch: u64) -> Vec<Window> {
        if requests.is_empty() {
            return Vec::new();
        }
        let mut users: Vec<&String> = self
            .users
            .keys()
            .filter(|(u, train)| *train && requests.iter().any(|r| r.covers(u)))
            .map(|(u, _)| u)
            .collect();
        users.sort();
        let users: Vec<String> = users.into_iter().cloned().collect();
        let mut out = Vec::new();
        for user in users {
            let Some(state) = self.users.get_mut(&(user.clone(), true)) else {
                continue;
            };
            if state.last_emit == Some(epoch) {
                continue;
            }
            match state.emit(&user, (epoch, true, true), &self.training, &self.plan) {
                Some(w) => out.push(w),
                None => {
                    tracing::info!(user = %user, epoch, "drift asked to retrain, but no row arrived since the last training (or too few rows): not retrained")
                }
            }
        }
        out
    }
}

/// The rolling-window stage as a timely operator.
pub trait RollingWindowExt<'s> {
    /// Maintains every user's windows (input already exchanged by user) and emits windows at
    /// each epoch once the frontiers have passed it; `retrain`: the drift stage's requests
    /// (broadcast), and those in flight at the cut the run resumes from (epoch, requests).
    fn rolling_window(
        self,
        windows: RollingWindows,
        retrain: (StreamVec<'s, u64, Retrain>, InFlight),
        snapshots: StageState,
        stats: SharedStats,
    ) -> (StreamVec<'s, u64, Window>, StreamVec<'s, u64, DeadLetter>);
}

/// An epoch's work: a user's rows (in pieces), and retraining asked for.
type Work = (Vec<UserRows>, Vec<Retrain>);

impl<'s> RollingWindowExt<'s> for StreamVec<'s, u64, UserRows> {
    fn rolling_window(
        self,
        mut windows: RollingWindows,
        (requests, resumed): (StreamVec<'s, u64, Retrain>, InFlight),
        mut snapshots: StageState,
        stats: SharedStats,
    ) -> (StreamVec<'s, u64, Window>, StreamVec<'s, u64, DeadLetter>) {
        self.binary_frontier(
            requests,
            Pipeline,
            Pipeline,
            "RollingWindow",
            move |cap, _info| {
                let mut pending = Pending::<UserRows>::default();
                let mut asked = Pending::<Retrain>::default();
                // Requests sent before the cut the run resumes from, held at their epoch.
                let mut resumed = resumed
                    .filter(|(_, r)| !r.is_empty())
                    .map(|(at, r)| (cap.delayed(&at), r));
                move |(input, f1), (retrain, f2), output| {
                    input.for_each_stamp(|cap, data| pending.stash(cap, data, 0));
                    retrain.for_each_stamp(|cap, data| asked.stash(cap, data, 0));
                    let mut work: BTreeMap<u64, (Capability<u64>, Work)> = BTreeMap::new();
                    let done = |t: &u64| !f1.less_equal(t) && !f2.less_equal(t);
                    if resumed.as_ref().is_some_and(|(c, _)| done(c.time()))
                        && let Some((c, r)) = resumed.take()
                    {
                        work.insert(*c.time(), (c, (Vec::new(), r)));
                    }
                    for (c, rows) in pending.ready(&[f1, f2]) {
                        let e = work
                            .entry(*c.time())
                            .or_insert_with(|| (c, Default::default()));
                        e.1.0.extend(rows);
                    }
                    for (c, r) in asked.ready(&[f1, f2]) {
                        let e = work
                            .entry(*c.time())
                            .or_insert_with(|| (c, Default::default()));
                        e.1.1.extend(r);
                    }
                    snapshots.epochs(
                        &mut windows,
                        work.into_iter().collect(),
                        frontier_cut(&[f1, f2]),
                        &stats,
                        |windows, epoch, (cap, (pieces, requests))| {
                            // A user's rows come in pieces (one per file); windows see them at once.
                            let mut users: BTreeMap<(String, bool), UserRows> = BTreeMap::new();
                            for piece in pieces {
                                match users.entry((piece.user.clone(), piece.generic)) {
                                    std::collections::btree_map::Entry::Vacant(v) => {
                                        v.insert(piece);
                                    }
                                    std::collections::btree_map::Entry::Occupied(mut o) => {
                                        o.get_mut().rows.extend(piece.rows);
                                    }
                                }
                            }
                            let mut session = output.session(&cap);
                            let mut s = stats.borrow_mut();
                            for ((user, generic), rows) in users {
                                if !generic {
                                    s.users.insert(user);
                                }
                                let e = windows.push(rows, epoch);
                                s.training_windows +=
                                    e.windows.iter().filter(|w| w.train).count() as u64;
                                session.give_iterator(e.windows.into_iter().map(Ok));
                                session.give_iterator(e.late.into_iter().map(Err));
                            }
                            let retrained = windows.retrain(&requests, epoch);
                            s.training_windows += retrained.len() as u64;
                            s.retrained += retrained.len() as u64;
                            session.give_iterator(retrained.into_iter().map(Ok));
                        },
                    );
                }
            },
        )
        .container::<Vec<std::result::Result<Window, DeadLetter>>>()
        .ok_err(|r| r)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use arrow::array::AsArray;
    use arrow::datatypes::Int64Type;
    use dfp_engine::derive::add_derived;
    use dfp_engine::generate::{GenSource, GenerateConfig, generate};
    use dfp_engine::rows::{Origin, rows_from_batch, rows_to_batch};
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    /// A user's rows from generated logs, in a shuffled order with unique origins.
    /// With `all_users`, the rows of every user, as the generic user's window holds them.
    fn user_rows(source: GenSource, seed: u64, all_users: bool) -> (SourceSchema, Vec<Row>) {
        let dir = tempfile::tempdir().unwrap();
        let start = chrono::NaiveDate::from_ymd_opt(2022, 8, 1).unwrap();
        generate(&GenerateConfig::new(source, 3, 12, start, seed), dir.path()).unwrap();
        let schema = SourceSchema::builtin(source.as_str()).unwrap();
        let batch = dfp_engine::frame::read_log_dir(dir.path(), &schema, 1).unwrap();
        let mut rows = rows_from_batch(&batch, 0, 0).unwrap();
        if !all_users {
            let user = rows[0].user.clone();
            rows.retain(|r| r.user == user);
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rows.shuffle(&mut rng);
        for (i, r) in rows.iter_mut().enumerate() {
            r.origin = Origin {
                epoch: 0,
                file: 0,
                record: i as u64,
            };
        }
        (schema, rows)
    }

    /// The reference: the window's rows through the batch computation of the engine.
    fn naive_derived(schema: &SourceSchema, rows: &[Arc<Row>]) -> Vec<Vec<i64>> {
        let batch = rows_to_batch(&schema.arrow_schema(), rows.iter().map(|r| &**r)).unwrap();
        let with = add_derived(&batch, schema).unwrap();
        (0..rows.len())
            .map(|i| {
                schema
                    .derived
                    .iter()
                    .map(|d| {
                        with.column_by_name(&d.name)
                            .unwrap()
                            .as_primitive::<Int64Type>()
                            .value(i)
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn incremental_windows_equal_the_batch_computation_with_rows_out_of_order() {
        for (source, seed, all_users) in [
            (GenSource::Azure, 1, false),
            (GenSource::Duo, 2, false),
            (GenSource::Azure, 3, true),
            (GenSource::Duo, 4, true),
        ] {
            let (schema, rows) = user_rows(source, seed, all_users);
            assert!(rows.len() > 100, "{} rows", rows.len());
            let plan = DerivedPlan::new(&schema).unwrap();
            let cfg = WindowConfig {
                min_history: 1,
                min_increment: 0,
                max_history: "4d".into(),
                cache_mode: CacheMode::Aggregate,
            };
            let us = cfg.max_history_us().unwrap();
            let mut w = UserWindow::default();
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let (mut pushed, mut late_total) = (0usize, 0usize);
            let mut rest = rows.as_slice();
            let mut epoch = 0;
            while !rest.is_empty() {
                let n = rng.random_range(1..=40).min(rest.len());
                let (now, later) = rest.split_at(n);
                rest = later;
                epoch += 1;
                pushed += n;
                let late = w.insert(now.to_vec(), us, &plan);
                late_total += late.len();
                let newest = rows[..pushed].iter().map(|r| r.ts).max().unwrap();
                for r in &late {
                    // Late only if its day ended more than max_history before the newest row.
                    assert!((r.ts.div_euclid(DAY_US) + 1) * DAY_US <= newest - us);
                }
                let Some(win) = w.emit("u", (epoch, true, false), &cfg, &plan) else {
                    assert_eq!(late.len(), n, "no window although rows were placed");
                    continue;
                };
                // Sorted by event time, ties by origin, one row per origin.
                assert!(win.rows.windows(2).all(|p| p[0].key() < p[1].key()));
                assert_eq!(win.derived, naive_derived(&schema, &win.rows), "{source:?}");
                // Nothing lost: every pushed row is in the window, late, or in an evicted day.
                let first_kept = win
                    .rows
                    .first()
                    .map_or(i64::MAX, |r| r.ts.div_euclid(DAY_US));
                let kept: BTreeSet<_> = win.rows.iter().map(|r| r.origin).collect();
                for r in &rows[..pushed] {
                    let day = r.ts.div_euclid(DAY_US);
                    assert!(
                        kept.contains(&r.origin)
                            || day < first_kept
                            || (day + 1) * DAY_US <= newest - us,
                        "row lost"
                    );
                }
                assert_eq!(w.len(), win.rows.len());
            }
            assert!(
                late_total > 0,
                "the shuffled input should have had late rows"
            );
        }
    }

    fn row(ts_days: f64, record: u64, epoch: u64) -> Row {
        Row {
            ts: (ts_days * DAY_US as f64) as i64,
            user: Some("u".into()),
            origin: Origin {
                epoch,
                file: 0,
                record,
            },
            values: Vec::new(),
        }
    }

    #[test]
    fn triggers_fire_on_history_and_increment_and_batch_mode_emits_new_rows_once() {
        let plan = DerivedPlan {
            features: vec![Derived::CountPerDay],
        };
        let train = WindowConfig {
            min_history: 3,
            min_increment: 2,
            max_history: "60d".into(),
            cache_mode: CacheMode::Aggregate,
        };
        let us = train.max_history_us().unwrap();
        let mut w = UserWindow::default();
        w.insert(vec![row(0.1, 0, 1), row(0.2, 1, 1)], us, &plan);
        assert!(
            w.emit("u", (1, true, false), &train, &plan).is_none(),
            "2 < min_history"
        );
        w.insert(vec![row(0.3, 2, 2)], us, &plan);
        assert_eq!(
            w.emit("u", (2, true, false), &train, &plan)
                .unwrap()
                .rows
                .len(),
            3
        );
        w.insert(vec![row(0.4, 3, 3)], us, &plan);
        assert!(
            w.emit("u", (3, true, false), &train, &plan).is_none(),
            "1 < min_increment"
        );
        w.insert(vec![row(0.05, 4, 4)], us, &plan);
        let all = w.emit("u", (4, true, false), &train, &plan).unwrap();
        assert_eq!(all.rows.len(), 5);
        // The out-of-order row is first of its day and pushes the others' logcount up.
        assert_eq!(all.rows[0].origin.record, 4);
        assert_eq!(
            all.derived,
            vec![vec![0], vec![1], vec![2], vec![3], vec![4]]
        );

        let infer = WindowConfig::inference();
        let us = infer.max_history_us().unwrap();
        let mut w = UserWindow::default();
        w.insert(vec![row(0.1, 0, 1), row(0.2, 1, 1)], us, &plan);
        let first = w.emit("u", (1, false, false), &infer, &plan).unwrap();
        assert_eq!(first.rows.len(), 2);
        assert!(
            w.emit("u", (1, false, false), &infer, &plan).is_none(),
            "nothing new"
        );
        w.insert(vec![row(0.3, 2, 2)], us, &plan);
        let second = w.emit("u", (2, false, false), &infer, &plan).unwrap();
        assert_eq!(second.rows.len(), 1, "only the new row is scored");
        assert_eq!(second.derived, vec![vec![2]], "in the context of its day");
        // Two days later the first day has left the 1-day window; a row for it is late.
        w.insert(vec![row(2.5, 3, 3)], us, &plan);
        let late = w.insert(vec![row(0.9, 4, 4)], us, &plan);
        assert_eq!(late.len(), 1);
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn trailing_features_of_new_rows_look_back_over_rows_already_scored() {
        let minutes = |m: i64, record: u64, epoch: u64, failed: bool| Row {
            ts: m * 60_000_000,
            user: Some("u".into()),
            origin: Origin {
                epoch,
                file: 0,
                record,
            },
            values: vec![Value::Bool(!failed), Value::Str(format!("c{}", m % 20))],
        };
        let hour = 3_600_000_000;
        let plan = DerivedPlan {
            features: vec![
                Derived::CountWithin(hour, None),
                Derived::CountWithin(hour, Some((0, false))),
                Derived::DistinctWithin(hour, 1),
            ],
        };
        let infer = WindowConfig::inference();
        let us = infer.max_history_us().unwrap();
        let mut w = UserWindow::default();
        w.insert(
            vec![minutes(0, 0, 1, true), minutes(10, 1, 1, true)],
            us,
            &plan,
        );
        let first = w.emit("u", (1, false, false), &infer, &plan).unwrap();
        assert_eq!(first.derived, vec![vec![1, 1, 1], vec![2, 2, 2]]);
        // (40, 100]: minutes 50 and 100; only 50 failed; values c10 and c0.
        w.insert(
            vec![minutes(50, 2, 2, true), minutes(100, 3, 2, false)],
            us,
            &plan,
        );
        let second = w.emit("u", (2, false, false), &infer, &plan).unwrap();
        assert_eq!(second.rows.len(), 2, "only the new rows are scored");
        assert_eq!(second.derived, vec![vec![3, 3, 2], vec![2, 1, 2]]);
    }

    #[test]
    fn a_value_is_familiar_once_its_user_first_had_it_after_hours_earlier_within_the_lookback() {
        let schema = SourceSchema::from_toml(
            r#"
            name = "s"
            [timestamp]
            path = "t"
            [username]
            path = "u"
            [event_id]
            path = "id"
            [[columns]]
            name = "app"
            path = "app"
            [[familiar]]
            kind = "value"
            column = "app"
            explains = ["app"]
            [[familiar]]
            kind = "hour_of_day"
            explains = ["app"]
            [features]
            categorical = ["app"]
            "#,
            "s.toml",
        )
        .unwrap();
        let hour = 3_600_000_000;
        let at = |user: &str, hours: i64, app: &str| Row {
            ts: hours * hour,
            user: Some(user.into()),
            origin: Origin {
                epoch: 0,
                file: 0,
                record: hours as u64,
            },
            values: vec![Value::Null, Value::Str(app.into())],
        };
        let piece = |user: &str, generic: bool, train: bool, rows: Vec<Row>| UserRows {
            user: user.into(),
            generic,
            train,
            infer: !train,
            payload: false,
            history_only: false,
            rows: rows.into_iter().map(Arc::new).collect(),
        };
        let cfg = FamiliarityConfig {
            enabled: true,
            ..Default::default()
        };
        let mut windows =
            RollingWindows::new(&schema, WindowConfig::training(), WindowConfig::inference())
                .and_then(|w| w.with_familiarity(&schema, &cfg))
                .unwrap();
        // Training rows count (a payload or a stream alike); the generic user's copies do not
        // count twice, and another user's values never count.
        windows.push(piece("u", false, true, vec![at("u", 9, "mail")]), 1);
        windows.push(
            piece("generic_user", true, true, vec![at("u", 9, "vpn")]),
            1,
        );
        windows.push(piece("v", false, false, vec![at("v", 9, "crm")]), 1);
        let scored = |windows: &mut RollingWindows, epoch, mut rows: Vec<Row>| {
            rows.iter_mut().for_each(|r| r.origin.epoch = epoch);
            let out = windows.push(piece("u", false, false, rows), epoch);
            assert_eq!(out.windows.len(), 1);
            let w = &out.windows[0];
            assert_eq!(w.familiar.len(), w.rows.len());
            w.familiar.clone()
        };
        // (bit 0: the app; bit 1: the hour, within one hour)
        let bits = scored(
            &mut windows,
            2,
            vec![
                at("u", 14, "mail"),
                at("u", 11, "mail"),
                at("u", 15, "crm"),
                at("u", 16, "vpn"),
                at("u", 24 + 10, "mail"),
            ],
        );
        // In time order: 11 h, 2 h after the app's first sighting (not yet); 14 h, 5 h after
        // (the app; hours 13-15 first had this epoch); 15 h, another user's app; 16 h, only in
        // the generic user's copy; the next day at 10 h, the app and the hour (9 h) both.
        assert_eq!(bits, [0, 0b01, 0, 0, 0b11]);
        // 16 days later every sighting is older than the 14 days looked back over.
        let bits = scored(&mut windows, 3, vec![at("u", 16 * 24 + 10, "mail")]);
        assert_eq!(bits, [0]);

        // Off: no bits.
        let mut off =
            RollingWindows::new(&schema, WindowConfig::training(), WindowConfig::inference())
                .unwrap();
        off.push(piece("u", false, true, vec![at("u", 9, "mail")]), 1);
        let out = off.push(piece("u", false, false, vec![at("u", 14, "mail")]), 2);
        assert!(out.windows[0].familiar.is_empty());
    }

    #[test]
    fn the_operator_emits_each_epoch_once_and_scores_every_row_once() {
        use crate::testing::{Fixture, both, fast_config, run_stage};
        let f = Fixture::duo(4, 3);
        let cfg = fast_config();
        let epochs: Vec<(u64, Vec<UserRows>)> = f
            .days()
            .into_iter()
            .map(|(t, files)| {
                let users = files
                    .into_iter()
                    .flat_map(|r| {
                        crate::split_users::split(r.rows, &cfg.split, true, true, false).users
                    })
                    .collect();
                (t, users)
            })
            .collect();
        let day_rows: Vec<usize> = epochs
            .iter()
            .map(|(_, us)| us.iter().filter(|u| !u.generic).map(|u| u.rows.len()).sum())
            .collect();
        let schema = f.schema.clone();
        let (out, stats) = run_stage(epochs, move |s, stats| {
            let windows =
                RollingWindows::new(&schema, cfg.training_window, cfg.inference_window).unwrap();
            let none = timely::dataflow::operators::generic::operator::empty(s.scope());
            both(s.rolling_window(windows, (none, None), StageState::default(), stats))
        });
        let windows: Vec<(u64, &Window)> = out
            .iter()
            .filter_map(|(t, w)| w.as_ref().ok().map(|w| (*t, w)))
            .collect();
        assert_eq!(windows.len(), out.len(), "no late rows");
        for (t, w) in &windows {
            assert_eq!(w.epoch, *t);
            assert_eq!(w.derived.len(), w.rows.len());
            assert!(
                w.rows.iter().all(|r| r.origin.epoch <= *t),
                "no row from a later epoch"
            );
        }
        // Each day's rows are scored once, in their epoch.
        for (day, rows) in day_rows.iter().enumerate() {
            let scored: usize = windows
                .iter()
                .filter(|(t, w)| *t == day as u64 && !w.train)
                .map(|(_, w)| w.rows.len())
                .sum();
            assert_eq!(scored, *rows, "day {day}");
        }
        // The generic user's training window grows with every day (whole days, aggregate).
        let generic: Vec<usize> = windows
            .iter()
            .filter(|(_, w)| w.train && w.user == "generic_user")
            .map(|(_, w)| w.rows.len())
            .collect();
        let so_far: Vec<usize> = day_rows
            .iter()
            .scan(0, |a, r| {
                *a += r;
                Some(*a)
            })
            .collect();
        assert_eq!(generic, so_far);
        assert_eq!(
            stats.training_windows as usize,
            windows.iter().filter(|(_, w)| w.train).count()
        );
        assert_eq!(stats.users.len(), 4);
    }
}
