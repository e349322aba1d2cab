//! Alert suppression (Elastic's alert suppression): the detections of one user with the same
//! leading features (`top_features`, the first `key_features` of them) within `window` of the
//! first become one alert, with the count, the first and last event time and the event ids,
//! written to `dfp_alerts_{source}.jsonl` (`[alerts]`). The detections themselves are still
//! written, each.
//!
//! Input: detections, exchanged by user so each user's are on one worker, taken an epoch at a
//! time once the frontier has passed it, in event-time order. A detection joins its key's open
//! alert when the alert, with it, still spans at most the window (from its earliest to its
//! latest detection, so a detection older than the alert's first, out of order across epochs,
//! joins too when it is close enough); otherwise it opens a new one. Output: at each epoch,
//! one [`Line`] per alert the epoch opened or added to, with everything the alert holds so
//! far; an alert that spans epochs is written again at each, with the same `alert_id` (made
//! from the detection that opened it), so the last line of an `alert_id` is the whole alert
//! (most alerts sit in one epoch: a day, by default, against a window of an hour). Nothing
//! waits for a later epoch, so output is never held back.
//!
//! State ([`Stateful`]): the open alerts, checkpointed. An alert is closed for every epoch after
//! one that ended past the latest time it could still take (its first detection's time plus
//! the window; `EpochEnds`: a plan's batch period end, a stream's epoch end): a later
//! detection opens a new alert even when it is older. Closing depends on the alert and the
//! epoch only, never on which other users' detections a worker saw, so what is written does
//! not depend on the number of workers; closed alerts are dropped from the state at the end of
//! each epoch the worker has detections in.

use std::collections::BTreeMap;
use std::sync::Arc;

use dfp_engine::config::Problems;
use dfp_engine::period::Span;
use dfp_engine::rows::Origin;
use dfp_engine::{Result, hash::fnv1a64};
use serde::{Deserialize, Serialize};
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Operator;

use crate::checkpoint::frontier_cut;
use crate::frontier::Pending;
use crate::metrics::SharedStats;
use crate::post_proc::Detection;
use crate::serialize::{Columns, Line, OutKind};
use crate::state::{StageState, Stateful, timed};

/// Suppression settings (`[alerts]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertConfig {
    /// Write the alerts file.
    pub enabled: bool,
    /// How long after an alert's first detection the same user's detections with the same
    /// leading features join it.
    pub window: Span,
    /// How many of a detection's `top_features` (highest z-loss first) make its key; 0: one
    /// alert per user and window.
    pub key_features: usize,
}

impl Default for AlertConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            window: "1h"
                .parse()
                .unwrap_or_else(|_| unreachable!("a valid duration")),
            key_features: 1,
        }
    }
}

impl AlertConfig {
    /// Every problem, under `path`.
    pub fn check(&self, path: &str, p: &mut Problems) {
        if self.key_features > crate::post_proc::TOP_FEATURES {
            p.push(
                dfp_engine::config::join(path, "key_features"),
                format!(
                    "at most {} (detections name that many top features)",
                    crate::post_proc::TOP_FEATURES
                ),
            );
        }
    }
}

/// The end of each epoch's event time (µs), where known: a group whose window ends by then
/// closes at that epoch.
pub type EpochEnds = Arc<dyn Fn(u64) -> Option<i64> + Send + Sync>;

/// One alert: a user's detections with the same leading features within a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// The user.
    pub user: String,
    /// The leading features the detections share.
    pub features: Vec<String>,
    /// Detections in it.
    pub count: u32,
    /// Event time of the first, µs.
    pub first_us: i64,
    /// Event time of the last, µs.
    pub last_us: i64,
    /// Their event ids, in the order they joined (event-time order within an epoch).
    pub event_ids: Vec<String>,
    /// The largest `mean_abs_z`.
    pub max_mean_abs_z: f32,
    /// The largest `calibrated_z`.
    pub max_calibrated_z: f32,
    /// The model that scored the strongest.
    pub model_version: String,
    /// The first detection's origin (orders alerts of the same time).
    origin: Origin,
    /// Event time of the detection that opened it, µs (its id).
    opened_us: i64,
}

impl Alert {
    /// The alert as its output line (JSON, times as RFC 3339).
    pub fn line(&self) -> Line {
        let time = |us: i64| {
            chrono::DateTime::from_timestamp_micros(us).map_or_else(
                || us.to_string(),
                |t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            )
        };
        let id = format!(
            "{:016x}",
            fnv1a64(
                format!(
                    "{}\u{1f}{}\u{1f}{}",
                    self.user,
                    self.opened_us,
                    self.features.join(",")
                )
                .as_bytes()
            )
        );
        let text = serde_json::json!({
            "alert_id": id,
            "user": self.user,
            "features": self.features,
            "count": self.count,
            "first_time": time(self.first_us),
            "last_time": time(self.last_us),
            "max_mean_abs_z": crate::serialize::f32_json(self.max_mean_abs_z),
            "max_calibrated_z": crate::serialize::f32_json(self.max_calibrated_z),
            "model_version": self.model_version,
            "event_ids": self.event_ids,
        })
        .to_string();
        Line {
            kind: OutKind::Alerts,
            ts: self.first_us,
            origin: Some(self.origin),
            text,
        }
    }
}

/// The open alerts of the users one worker owns (see the module's doc).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Suppressor {
    window_us: i64,
    key_features: usize,
    open: BTreeMap<(String, Vec<String>), Alert>,
}

impl Suppressor {
    /// Nothing open, with `cfg`'s settings.
    pub fn new(cfg: &AlertConfig) -> Self {
        Self {
            window_us: cfg.window.us(),
            key_features: cfg.key_features,
            open: BTreeMap::new(),
        }
    }

    /// Takes the settings of `cfg` (a resumed run's, over those its state was written with);
    /// the open alerts stay open.
    pub fn configure(&mut self, cfg: &AlertConfig) {
        self.window_us = cfg.window.us();
        self.key_features = cfg.key_features;
    }

    /// Adds epoch `epoch`'s detections in event-time order; returns every alert they opened
    /// or added to, as it now stands (by user, leading features and opening time), and how
    /// many alerts they opened; then drops the alerts closed for every later epoch.
    pub fn add(
        &mut self,
        epoch: u64,
        mut detections: Vec<Detection>,
        columns: &Columns,
        ends: &EpochEnds,
    ) -> (Vec<Alert>, usize) {
        detections.sort_by(|a, b| {
            (a.scored.row.ts, &a.scored.user, a.scored.row.origin).cmp(&(
                b.scored.row.ts,
                &b.scored.user,
                b.scored.row.origin,
            ))
        });
        let window = self.window_us;
        // Alerts closed before this epoch: an earlier epoch ended past their last chance.
        let closed_by = epoch.checked_sub(1).and_then(|e| ends(e));
        let last_chance = |a: &Alert| a.first_us.saturating_add(window);
        let mut touched: BTreeMap<(String, Vec<String>, i64), Alert> = BTreeMap::new();
        let mut opened = 0;
        for d in detections {
            let s = &d.scored;
            let features: Vec<String> = d
                .top_features
                .iter()
                .take(self.key_features)
                .cloned()
                .collect();
            let key = (s.user.clone(), features.clone());
            let ts = s.row.ts;
            if self.open.get(&key).is_some_and(|a| {
                closed_by.is_some_and(|end| end > last_chance(a))
                    || a.last_us.max(ts).saturating_sub(a.first_us.min(ts)) > window
            }) {
                // A new alert takes the key (the old one was written as it stood when last
                // touched).
                self.open.remove(&key);
            }
            let event_id = columns.event_id(&s.row).unwrap_or_default();
            let alert = self.open.entry(key.clone()).or_insert_with(|| {
                opened += 1;
                Alert {
                    user: s.user.clone(),
                    features,
                    count: 0,
                    first_us: ts,
                    last_us: ts,
                    event_ids: Vec::new(),
                    max_mean_abs_z: s.mean_abs_z,
                    max_calibrated_z: s.calibrated_z,
                    model_version: s.model_version.clone(),
                    origin: s.row.origin,
                    opened_us: ts,
                }
            });
            alert.count += 1;
            if ts < alert.first_us {
                alert.first_us = ts;
                alert.origin = s.row.origin;
            }
            alert.last_us = alert.last_us.max(ts);
            alert.event_ids.push(event_id);
            if s.mean_abs_z > alert.max_mean_abs_z {
                alert.max_mean_abs_z = s.mean_abs_z;
                alert.model_version.clone_from(&s.model_version);
            }
            alert.max_calibrated_z = alert.max_calibrated_z.max(s.calibrated_z);
            touched.insert((key.0, key.1, alert.opened_us), alert.clone());
        }
        if let Some(end) = ends(epoch) {
            self.open.retain(|_, a| end <= last_chance(a));
        }
        (touched.into_values().collect(), opened)
    }
}

impl Stateful for Suppressor {
    fn snapshot(&mut self) -> Result<Vec<u8>> {
        crate::checkpoint::encode(&*self)
    }
}

/// The suppression stage as a timely operator.
pub trait SuppressAlerts<'s> {
    /// Groups the detections into alerts (see the module's doc), checkpointed through
    /// `snapshots`.
    fn alerts(
        self,
        suppressor: Suppressor,
        columns: Arc<Columns>,
        ends: EpochEnds,
        snapshots: StageState,
        stats: SharedStats,
    ) -> StreamVec<'s, u64, Line>;
}

impl<'s> SuppressAlerts<'s> for StreamVec<'s, u64, Detection> {
    fn alerts(
        self,
        mut suppressor: Suppressor,
        columns: Arc<Columns>,
        ends: EpochEnds,
        mut snapshots: StageState,
        stats: SharedStats,
    ) -> StreamVec<'s, u64, Line> {
        let route = |d: &Detection| fnv1a64(d.scored.user.as_bytes());
        self.unary_frontier(
            Exchange::new(route),
            "SuppressAlerts",
            move |_cap, _info| {
                let mut pending = Pending::<Detection>::default();
                move |(input, frontier), output| {
                    input.for_each_stamp(|cap, data| pending.stash(cap, data, 0));
                    let ready = timed(pending.ready(&[frontier]));
                    snapshots.epochs(
                        &mut suppressor,
                        ready,
                        frontier_cut(&[frontier]),
                        &stats,
                        |sup, t, (cap, detections)| {
                            let (alerts, opened) = sup.add(t, detections, &columns, &ends);
                            stats.borrow_mut().alerts += opened as u64;
                            output
                                .session(&cap)
                                .give_iterator(alerts.iter().map(Alert::line));
                        },
                    );
                }
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Fixture, fast_config, run_stage};

    const MIN: i64 = 60_000_000;

    /// Detections of (user, leading feature, minute) from one scored row.
    fn detections(f: &Fixture, at: &[(&str, &str, i64)]) -> Vec<Detection> {
        let base = f.scored(&fast_config()).remove(0);
        at.iter()
            .enumerate()
            .map(|(i, (user, feature, minute))| {
                let mut s = base.clone();
                s.user = (*user).to_string();
                std::sync::Arc::make_mut(&mut s.row).ts = minute * MIN;
                std::sync::Arc::make_mut(&mut s.row).origin.record = i as u64;
                s.mean_abs_z = 3.0 + i as f32;
                Detection {
                    scored: s,
                    event_time_us: minute * MIN,
                    top_features: vec![(*feature).to_string(), "other".into()],
                }
            })
            .collect()
    }

    /// No epoch end known: nothing is forgotten.
    fn never() -> EpochEnds {
        Arc::new(|_| None)
    }

    /// Epoch `e` ends at `(e + 1)` hours.
    fn hourly() -> EpochEnds {
        Arc::new(|e| Some((e as i64 + 1) * 60 * MIN))
    }

    fn summary(alerts: &[Alert]) -> Vec<(String, Vec<String>, u32, i64, i64)> {
        alerts
            .iter()
            .map(|a| {
                (
                    a.user.clone(),
                    a.features.clone(),
                    a.count,
                    a.first_us / MIN,
                    a.last_us / MIN,
                )
            })
            .collect()
    }

    #[test]
    fn detections_of_a_user_and_leading_feature_within_the_window_are_one_alert() {
        let f = Fixture::duo(3, 3);
        let columns = Columns::new(&f.schema);
        let mut sup = Suppressor::new(&AlertConfig::default());
        let ds = detections(
            &f,
            &[
                ("a", "hour", 0),
                ("a", "hour", 20),
                ("b", "hour", 5),
                ("a", "app", 30),
                ("a", "hour", 50),
            ],
        );
        let ids: Vec<String> = ds
            .iter()
            .map(|d| columns.event_id(&d.scored.row).unwrap_or_default())
            .collect();
        let (alerts, opened) = sup.add(0, ds, &columns, &never());
        assert_eq!(opened, 3);
        let s = |u: &str, f: &str, n, a, b| (u.to_string(), vec![f.to_string()], n, a, b);
        assert_eq!(
            summary(&alerts),
            [
                s("a", "app", 1, 30, 30),
                s("a", "hour", 3, 0, 50),
                s("b", "hour", 1, 5, 5)
            ]
        );
        assert_eq!(
            alerts[1].event_ids,
            [ids[0].clone(), ids[1].clone(), ids[4].clone()]
        );
        assert_eq!(alerts[1].max_mean_abs_z, 7.0);
        // Without leading features in the key, one alert per user and window.
        let mut sup = Suppressor::new(&AlertConfig {
            key_features: 0,
            ..AlertConfig::default()
        });
        let (alerts, _) = sup.add(
            0,
            detections(&f, &[("a", "hour", 0), ("a", "app", 30)]),
            &columns,
            &never(),
        );
        assert_eq!(summary(&alerts), [("a".into(), vec![], 2, 0, 30)]);
    }

    #[test]
    fn a_detection_past_the_window_opens_a_new_alert_with_a_new_id() {
        let f = Fixture::duo(3, 3);
        let columns = Columns::new(&f.schema);
        let mut sup = Suppressor::new(&AlertConfig::default());
        let (alerts, opened) = sup.add(
            0,
            detections(
                &f,
                &[("a", "hour", 0), ("a", "hour", 60), ("a", "hour", 61)],
            ),
            &columns,
            &never(),
        );
        // 60 minutes is within the hour (inclusive); 61 is not.
        assert_eq!(opened, 2);
        assert_eq!(summary(&alerts)[0].2, 2);
        let id = |a: &Alert| {
            serde_json::from_str::<serde_json::Value>(&a.line().text).unwrap()["alert_id"].clone()
        };
        assert_ne!(id(&alerts[0]), id(&alerts[1]));
    }

    #[test]
    fn an_alert_spanning_epochs_is_rewritten_with_the_same_id_then_forgotten() {
        let f = Fixture::duo(3, 3);
        let columns = Columns::new(&f.schema);
        let mut sup = Suppressor::new(&AlertConfig::default());
        let ends = hourly();
        let (first, _) = sup.add(0, detections(&f, &[("a", "hour", 40)]), &columns, &ends);
        let (second, opened) = sup.add(1, detections(&f, &[("a", "hour", 70)]), &columns, &ends);
        assert_eq!(opened, 0);
        assert_eq!(
            summary(&second),
            [("a".into(), vec!["hour".into()], 2, 40, 70)]
        );
        let line = |a: &Alert| serde_json::from_str::<serde_json::Value>(&a.line().text).unwrap();
        assert_eq!(line(&first[0])["alert_id"], line(&second[0])["alert_id"]);
        assert_eq!(line(&second[0])["count"], 2);
        assert_eq!(
            line(&second[0])["event_ids"].as_array().map(Vec::len),
            Some(2)
        );
        // Epoch 1 ends at 120 minutes, past 40 + 60: the alert is closed and forgotten.
        assert!(sup.open.is_empty());
    }

    #[test]
    fn an_older_detection_in_a_later_epoch_joins_when_the_alert_stays_within_the_window() {
        let f = Fixture::duo(3, 3);
        let columns = Columns::new(&f.schema);
        let mut sup = Suppressor::new(&AlertConfig::default());
        let ends = hourly();
        let (first, _) = sup.add(0, detections(&f, &[("a", "hour", 50)]), &columns, &ends);
        let (second, opened) = sup.add(1, detections(&f, &[("a", "hour", 20)]), &columns, &ends);
        assert_eq!(opened, 0);
        assert_eq!(
            summary(&second),
            [("a".into(), vec!["hour".into()], 2, 20, 50)]
        );
        let id = |a: &Alert| {
            serde_json::from_str::<serde_json::Value>(&a.line().text).unwrap()["alert_id"].clone()
        };
        assert_eq!(id(&first[0]), id(&second[0]));
        // Too old to keep the alert within the hour: a new one.
        let (third, opened) = sup.add(1, detections(&f, &[("a", "hour", -20)]), &columns, &ends);
        assert_eq!(opened, 1);
        assert_eq!(summary(&third)[0].2, 1);
    }

    #[test]
    fn whether_an_alert_is_closed_does_not_depend_on_other_users_detections() {
        let f = Fixture::duo(3, 3);
        let columns = Columns::new(&f.schema);
        let ends = hourly();
        // One worker also holds user b, with a detection in epoch 1; another holds only a.
        let mut both = Suppressor::new(&AlertConfig::default());
        let mut alone = Suppressor::new(&AlertConfig::default());
        for sup in [&mut both, &mut alone] {
            sup.add(0, detections(&f, &[("a", "hour", 40)]), &columns, &ends);
        }
        both.add(1, detections(&f, &[("b", "hour", 70)]), &columns, &ends);
        // Epoch 1 ended at 120 minutes, past 40 + 60: a's alert is closed for epoch 2 on
        // both, though the second worker had nothing in epoch 1.
        let late = |sup: &mut Suppressor| {
            let (alerts, opened) =
                sup.add(2, detections(&f, &[("a", "hour", 95)]), &columns, &ends);
            (summary(&alerts), opened)
        };
        let expected = (vec![("a".into(), vec!["hour".into()], 1, 95, 95)], 1);
        assert_eq!(late(&mut both), expected);
        assert_eq!(late(&mut alone), expected);
    }

    #[test]
    fn a_resumed_suppressor_takes_the_new_settings_and_keeps_its_open_alerts() {
        let f = Fixture::duo(3, 3);
        let columns = Columns::new(&f.schema);
        let mut sup = Suppressor::new(&AlertConfig::default());
        sup.add(0, detections(&f, &[("a", "hour", 0)]), &columns, &never());
        let mut resumed: Suppressor =
            crate::checkpoint::decode(&sup.snapshot().unwrap(), std::path::Path::new("s")).unwrap();
        resumed.configure(&AlertConfig {
            window: "2h".parse().unwrap(),
            ..AlertConfig::default()
        });
        let (alerts, opened) =
            resumed.add(0, detections(&f, &[("a", "hour", 100)]), &columns, &never());
        assert_eq!(opened, 0, "joins under the new two-hour window");
        assert_eq!(summary(&alerts)[0].2, 2);
    }

    #[test]
    fn the_operator_groups_each_users_detections_on_any_worker() {
        let f = Fixture::duo(3, 3);
        let columns = Arc::new(Columns::new(&f.schema));
        let epochs = vec![
            (
                0,
                detections(&f, &[("a", "hour", 0), ("b", "hour", 1), ("a", "hour", 2)]),
            ),
            (1, detections(&f, &[("a", "hour", 65)])),
        ];
        let (out, stats) = run_stage(epochs, move |s, stats| {
            s.alerts(
                Suppressor::new(&AlertConfig::default()),
                columns.clone(),
                hourly(),
                StageState::default(),
                stats,
            )
        });
        let mut got: Vec<(u64, serde_json::Value)> = out
            .iter()
            .map(|(t, l)| (*t, serde_json::from_str(&l.text).unwrap()))
            .collect();
        got.sort_by_key(|(t, v)| (*t, v["user"].to_string()));
        let counts: Vec<(u64, String, u64)> = got
            .iter()
            .map(|(t, v)| {
                (
                    *t,
                    v["user"].as_str().unwrap_or_default().into(),
                    v["count"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        assert_eq!(
            counts,
            [(0, "a".into(), 2), (0, "b".into(), 1), (1, "a".into(), 1)]
        );
        assert_eq!(stats.alerts, 3);
    }
}
