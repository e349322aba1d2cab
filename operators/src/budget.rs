//! Alert budget: at most `max_per_user_day` detections per user and UTC day of their event
//! time, and at most `max_per_day` per UTC day over all users (`[detection]`), the strongest
//! first (by the rule's measure: `mean_abs_z`, or `calibrated_z` with a false-alert rate), so a
//! team that can look at fifty alerts a day gets the fifty that stand out most.
//!
//! Input: detections, exchanged to worker 0 (the budget is global). Output: the detections
//! within budget; the others are counted (`over_budget`) and stay in the scores. An epoch is
//! admitted once the frontier has passed it, its detections sorted by strength (ties by time,
//! user and origin), so the result does not depend on the number of workers; epochs are
//! admitted in time order, so a day that spans epochs spends its budget first come, first
//! served. State ([`Stateful`]): what each of the last [`KEEP_DAYS`] days has spent, per user
//! and in all, checkpointed.

use std::collections::BTreeMap;

use dfp_engine::Result;
use serde::{Deserialize, Serialize};
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Operator;

use crate::checkpoint::frontier_cut;
use crate::filter_detections::DetectionConfig;
use crate::frontier::Pending;
use crate::inference::Scored;
use crate::metrics::SharedStats;
use crate::state::{StageState, Stateful, timed};

const DAY_US: i64 = 86_400_000_000;

/// Days of spending kept, back from the newest day seen (older events are rare; they are
/// admitted against an empty day).
pub const KEEP_DAYS: i64 = 7;

/// What a day has spent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Spent {
    all: u32,
    users: BTreeMap<String, u32>,
}

/// The budget and what it has spent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    per_user_day: Option<u32>,
    per_day: Option<u32>,
    days: BTreeMap<i64, Spent>,
}

impl Budget {
    /// The budget of `cfg`, nothing spent.
    pub fn new(cfg: &DetectionConfig) -> Self {
        Budget {
            per_user_day: cfg.max_per_user_day,
            per_day: cfg.max_per_day,
            days: BTreeMap::new(),
        }
    }

    /// Takes the limits of `cfg` (a resumed run's, over those its state was written with);
    /// what each day has spent stays.
    pub fn configure(&mut self, cfg: &DetectionConfig) {
        self.per_user_day = cfg.max_per_user_day;
        self.per_day = cfg.max_per_day;
    }

    /// Admits one epoch's `detections`, ranked by `strength` (largest first): those within
    /// budget, in rank order, and how many were over it.
    pub fn admit(
        &mut self,
        mut detections: Vec<Scored>,
        strength: impl Fn(&Scored) -> f32,
    ) -> (Vec<Scored>, usize) {
        detections.sort_by(|a, b| {
            strength(b)
                .total_cmp(&strength(a))
                .then(a.row.ts.cmp(&b.row.ts))
                .then(a.user.cmp(&b.user))
                .then(a.row.origin.cmp(&b.row.origin))
        });
        let mut kept = Vec::new();
        let mut over = 0;
        for d in detections {
            let day = d.row.ts.div_euclid(DAY_US);
            let spent = self.days.entry(day).or_default();
            let user = spent.users.get(&d.user).copied().unwrap_or(0);
            let within = self.per_day.is_none_or(|m| spent.all < m)
                && self.per_user_day.is_none_or(|m| user < m);
            if within {
                spent.all += 1;
                *spent.users.entry(d.user.clone()).or_default() += 1;
                kept.push(d);
            } else {
                over += 1;
            }
        }
        if let Some((&newest, _)) = self.days.last_key_value() {
            self.days.retain(|&day, _| day > newest - KEEP_DAYS);
        }
        (kept, over)
    }
}

impl Stateful for Budget {
    fn snapshot(&mut self) -> Result<Vec<u8>> {
        crate::checkpoint::encode(&*self)
    }
}

/// The budget stage as a timely operator.
pub trait AlertBudget<'s> {
    /// Admits each epoch's detections within `budget` once the frontier has passed it
    /// (checkpointed through `snapshots`).
    fn budget(
        self,
        budget: Budget,
        cfg: &DetectionConfig,
        snapshots: StageState,
        stats: SharedStats,
    ) -> StreamVec<'s, u64, Scored>;
}

impl<'s> AlertBudget<'s> for StreamVec<'s, u64, Scored> {
    fn budget(
        self,
        mut budget: Budget,
        cfg: &DetectionConfig,
        mut snapshots: StageState,
        stats: SharedStats,
    ) -> StreamVec<'s, u64, Scored> {
        let cfg = cfg.clone();
        self.unary_frontier(
            Exchange::new(|_: &Scored| 0),
            "AlertBudget",
            move |_cap, _info| {
                let mut pending = Pending::<Scored>::default();
                move |(input, frontier), output| {
                    input.for_each_stamp(|cap, data| pending.stash(cap, data, 0));
                    let ready = timed(pending.ready(&[frontier]));
                    snapshots.epochs(
                        &mut budget,
                        ready,
                        frontier_cut(&[frontier]),
                        &stats,
                        |budget, _t, (cap, detections)| {
                            let (kept, over) = budget.admit(detections, |s| cfg.strength(s));
                            stats.borrow_mut().over_budget += over as u64;
                            output.session(&cap).give_iterator(kept.into_iter());
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

    /// Scored rows of `users`, the `i`th scoring `10 - i` on day `day`.
    fn detections(base: &Scored, users: &[&str], day: i64) -> Vec<Scored> {
        users
            .iter()
            .enumerate()
            .map(|(i, u)| {
                let mut s = base.clone();
                s.user = (*u).to_string();
                std::sync::Arc::make_mut(&mut s.row).ts = day * DAY_US + i as i64;
                std::sync::Arc::make_mut(&mut s.row).origin.record = i as u64;
                s.mean_abs_z = 10.0 - i as f32;
                s
            })
            .collect()
    }

    #[test]
    fn the_strongest_detections_of_each_user_and_day_are_kept() {
        let base = Fixture::duo(3, 3).scored(&fast_config()).remove(0);
        let cfg = DetectionConfig {
            max_per_user_day: Some(2),
            max_per_day: Some(3),
            ..DetectionConfig::default()
        };
        let mut budget = Budget::new(&cfg);
        // Day 0: a has 3 (one over its 2), b 1, c 1: 4 within the user budget, 3 in all.
        let (kept, over) = budget.admit(detections(&base, &["a", "a", "b", "a", "c"], 0), |s| {
            s.mean_abs_z
        });
        let kept: Vec<(String, f32)> = kept
            .iter()
            .map(|s| (s.user.clone(), s.mean_abs_z))
            .collect();
        assert_eq!(
            kept,
            [("a".into(), 10.0), ("a".into(), 9.0), ("b".into(), 8.0)]
        );
        assert_eq!(over, 2);
        // The next epoch, same day: spent. The next day: a fresh budget.
        let (kept, _) = budget.admit(detections(&base, &["c"], 0), |s| s.mean_abs_z);
        assert!(kept.is_empty());
        let (kept, _) = budget.admit(detections(&base, &["c", "c", "c"], 1), |s| s.mean_abs_z);
        assert_eq!(kept.len(), 2);
        // Old days are forgotten.
        budget.admit(detections(&base, &["d"], 1 + KEEP_DAYS), |s| s.mean_abs_z);
        assert_eq!(budget.days.len(), 1);
    }

    #[test]
    fn the_operator_admits_each_epoch_once_on_one_worker() {
        let base = Fixture::duo(3, 3).scored(&fast_config()).remove(0);
        let cfg = DetectionConfig {
            max_per_day: Some(2),
            ..DetectionConfig::default()
        };
        let epochs = vec![
            (0, detections(&base, &["a", "b", "c"], 0)),
            (1, detections(&base, &["a", "b", "c"], 1)),
        ];
        let (out, stats) = run_stage(epochs, move |s, stats| {
            s.budget(Budget::new(&cfg), &cfg, StageState::default(), stats)
        });
        let got: Vec<(u64, String)> = out.iter().map(|(t, s)| (*t, s.user.clone())).collect();
        assert_eq!(
            got,
            [
                (0, "a".into()),
                (0, "b".into()),
                (1, "a".into()),
                (1, "b".into())
            ]
        );
        assert_eq!(stats.over_budget, 2);
    }
}
