//! Automatic promotion (`[lifecycle] promotion = "auto"`): a challenger that has scored enough
//! rows in the shadow, over enough epochs, and behaves like its champion (they agree on
//! whether to alert on most rows, and it does not alert much more often) becomes the champion.
//!
//! Input: scored rows; those a challenger scored are tallied per model, exchanged by model name
//! (the generic model scores users of every worker, so one worker must see all its rows). Each
//! epoch, once the frontier has passed it, its rows are added to the tallies and every model
//! they touched is judged; a promotion is written to the registry (recorded with its reason as
//! `policy:auto`) and announced as a [`ModelNote`] at the same epoch, which the pipeline feeds
//! back to inference for the next epoch. State ([`Stateful`]): the tallies and the last
//! announcement with the epoch it reaches inference at, checkpointed. A cut at epoch `c` holds
//! inference's state before `c`, so the notes announced at `c - 1` are in flight on the
//! feedback edge, in no stage's state: a run resuming from `c` takes them from the promoters'
//! states ([`Promoter::in_flight`]) and gives them to inference first. A replayed epoch judges
//! the same tallies the same way; promoting a version that is already the champion (written
//! before a crash) changes nothing in the registry and is announced again, so inference sees
//! what it saw.

use std::collections::BTreeMap;

use dfp_engine::Result;
use dfp_engine::registry::{Registry, split_label};
use serde::{Deserialize, Serialize};
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Operator;
use timely::dataflow::operators::vec::Map;

use crate::checkpoint::{Cut, component, frontier_cut};
use crate::config::LifecycleConfig;
use crate::dead_letter::DeadLetter;
use crate::filter_detections::Rule;
use crate::frontier::Pending;
use crate::inference::Scored;
use crate::metrics::SharedStats;
use crate::registry_writer::ModelNote;
use crate::state::{StageState, Stateful, timed};

/// One shadow-scored row, as the tally needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowVote {
    /// The model name.
    pub model: String,
    /// The challenger's version.
    pub challenger: u32,
    /// Whether the champion would alert.
    pub champion_alert: bool,
    /// Whether the challenger would alert.
    pub challenger_alert: bool,
}

impl ShadowVote {
    /// The vote of `s`, if a challenger scored it.
    pub fn of(s: &Scored, rule: &Rule) -> Option<Self> {
        let shadow = s.shadow.as_ref()?;
        let (model, version) = split_label(&shadow.model_version);
        Some(ShadowVote {
            model: model.to_string(),
            challenger: version?.parse().ok()?,
            champion_alert: rule.flags(s.mean_abs_z, s.max_abs_z, s.calibrated_z),
            challenger_alert: rule.flags(shadow.mean_abs_z, shadow.max_abs_z, shadow.calibrated_z),
        })
    }
}

/// What a challenger has shown so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// The challenger's version.
    pub challenger: u32,
    /// Epochs in which it scored rows.
    pub epochs: u32,
    /// Rows it scored.
    pub rows: u64,
    /// Of those, rows the champion would alert on.
    pub champion_alerts: u64,
    /// Rows it would alert on.
    pub challenger_alerts: u64,
    /// Rows on which both would do the same.
    pub agree: u64,
}

impl Tally {
    /// Counts one row both scored, with whether each would alert on it.
    pub fn count(&mut self, champion_alert: bool, challenger_alert: bool) {
        self.rows += 1;
        self.champion_alerts += u64::from(champion_alert);
        self.challenger_alerts += u64::from(challenger_alert);
        self.agree += u64::from(champion_alert == challenger_alert);
    }

    /// Share of rows on which both would do the same.
    pub fn agreement(&self) -> f64 {
        self.agree as f64 / (self.rows as f64).max(1.0)
    }

    /// The shares of rows the champion and the challenger would alert on.
    pub fn alert_rates(&self) -> (f64, f64) {
        let rows = (self.rows as f64).max(1.0);
        (
            self.champion_alerts as f64 / rows,
            self.challenger_alerts as f64 / rows,
        )
    }

    /// Why the challenger is promoted under `cfg`, or None while it is not.
    pub fn verdict(&self, cfg: &LifecycleConfig) -> Option<String> {
        let (champion, challenger) = self.alert_rates();
        let ready = self.epochs >= cfg.min_epochs
            && self.rows >= cfg.min_rows
            && self.agreement() >= cfg.min_agreement
            && challenger <= champion + cfg.max_alert_rate_increase;
        ready.then(|| {
            format!(
                "shadow-scored {} rows over {} epochs: agreement {:.4} (at least {}), alert rate {:.4} against the champion's {:.4} (at most {} more)",
                self.rows,
                self.epochs,
                self.agreement(),
                cfg.min_agreement,
                challenger,
                champion,
                cfg.max_alert_rate_increase
            )
        })
    }
}

/// The tallies of the challengers this worker judges, by model name, and its last
/// announcement.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promoter {
    tallies: BTreeMap<String, Tally>,
    /// The epoch the last promotions reach inference at (the one after they were decided),
    /// and their notes.
    announced: Option<(u64, Vec<ModelNote>)>,
}

impl Stateful for Promoter {
    /// The tallies and the last announcement.
    fn snapshot(&mut self) -> Result<Vec<u8>> {
        crate::checkpoint::encode(&*self)
    }
}

impl Promoter {
    /// The notes in flight to inference at `cut` (announced by the promoters of every one of
    /// `workers` workers in the epoch before it), by model name.
    pub fn in_flight(cut: &Cut, workers: usize) -> Result<Vec<ModelNote>> {
        let mut notes = Vec::new();
        for w in 0..workers {
            let name = component("promotion", w);
            let p: Promoter = crate::checkpoint::decode(&cut.read(&name)?, &cut.path(&name))?;
            if let Some((at, announced)) = p.announced
                && at == cut.time
            {
                notes.extend(announced);
            }
        }
        notes.sort();
        Ok(notes)
    }

    /// Adds an epoch's votes; returns the models they touched, by name.
    pub fn add(&mut self, votes: Vec<ShadowVote>) -> Vec<String> {
        let mut touched: Vec<String> = Vec::new();
        for v in votes {
            let tally = self.tallies.entry(v.model.clone()).or_default();
            if tally.challenger != v.challenger {
                // A newer challenger: what the older one showed no longer counts.
                *tally = Tally {
                    challenger: v.challenger,
                    ..Tally::default()
                };
            }
            if !touched.contains(&v.model) {
                tally.epochs += 1;
                touched.push(v.model.clone());
            }
            tally.count(v.champion_alert, v.challenger_alert);
        }
        touched.sort();
        touched
    }

    /// Judges the `touched` models: each challenger that passes is promoted in `registry` and
    /// its tally dropped. Returns the notes of the new champions and the dead letters of
    /// promotions the registry refused.
    pub fn judge(
        &mut self,
        touched: &[String],
        cfg: &LifecycleConfig,
        registry: &Registry,
    ) -> (Vec<ModelNote>, Vec<DeadLetter>) {
        let (mut notes, mut dead) = (Vec::new(), Vec::new());
        for name in touched {
            let Some(tally) = self.tallies.get(name) else {
                continue;
            };
            let Some(why) = tally.verdict(cfg) else {
                continue;
            };
            let version = tally.challenger;
            match promote_once(registry, name, version, &why) {
                Ok(()) => {
                    tracing::info!(model = %name, version, reason = %why, "challenger promoted");
                    notes.push(ModelNote {
                        name: name.clone(),
                        version,
                        champion: true,
                    });
                }
                Err(e) => {
                    let why = format!("promoting version {version}: {}", e.chain());
                    tracing::error!(model = %name, error = %why, "automatic promotion failed");
                    dead.push(DeadLetter::model("promotion", name, why));
                }
            }
            self.tallies.remove(name);
        }
        (notes, dead)
    }
}

/// Promotes `version` of `name` unless it is the champion already (a replayed epoch).
fn promote_once(registry: &Registry, name: &str, version: u32, why: &str) -> Result<()> {
    if registry.lifecycle(name)?.champion() == Some(version) {
        return Ok(());
    }
    registry
        .promote(name, version, "policy:auto", why)
        .map(|_| ())
}

/// The promotion stage as a timely operator.
pub trait Promote<'s> {
    /// Tallies the shadow-scored rows and promotes the challengers that pass `cfg`'s policy;
    /// the new champions' notes come out at the epoch that decided them.
    fn promote(
        self,
        promoter: Promoter,
        cfg: &LifecycleConfig,
        rule: Rule,
        registry: Registry,
        snapshots: StageState,
        stats: SharedStats,
    ) -> (
        StreamVec<'s, u64, ModelNote>,
        StreamVec<'s, u64, DeadLetter>,
    );
}

impl<'s> Promote<'s> for StreamVec<'s, u64, Scored> {
    fn promote(
        self,
        mut promoter: Promoter,
        cfg: &LifecycleConfig,
        rule: Rule,
        registry: Registry,
        mut snapshots: StageState,
        stats: SharedStats,
    ) -> (
        StreamVec<'s, u64, ModelNote>,
        StreamVec<'s, u64, DeadLetter>,
    ) {
        use timely::dataflow::operators::core::OkErr;
        let cfg = cfg.clone();
        self.flat_map(move |s| ShadowVote::of(&s, &rule))
            .unary_frontier(
                Exchange::new(|v: &ShadowVote| dfp_engine::hash::fnv1a64(v.model.as_bytes())),
                "Promotion",
                move |_cap, _info| {
                    let mut pending = Pending::<ShadowVote>::default();
                    move |(input, frontier), output| {
                        input.for_each_stamp(|cap, data| pending.stash(cap, data, 0));
                        let ready = timed(pending.ready(&[frontier]));
                        snapshots.epochs(
                            &mut promoter,
                            ready,
                            frontier_cut(&[frontier]),
                            &stats,
                            |promoter, t, (cap, votes)| {
                                let touched = promoter.add(votes);
                                let (notes, dead) = promoter.judge(&touched, &cfg, &registry);
                                if !notes.is_empty() {
                                    promoter.announced = Some((t + 1, notes.clone()));
                                }
                                stats.borrow_mut().promoted += notes.len() as u64;
                                let mut session = output.session(&cap);
                                session.give_iterator(notes.into_iter().map(Ok));
                                session.give_iterator(dead.into_iter().map(Err));
                            },
                        );
                    }
                },
            )
            .container::<Vec<Result<ModelNote, DeadLetter>>>()
            .ok_err(|r| r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Fixture, fast_config};

    fn votes(
        model: &str,
        challenger: u32,
        rows: usize,
        champion: usize,
        mine: usize,
    ) -> Vec<ShadowVote> {
        (0..rows)
            .map(|i| ShadowVote {
                model: model.to_string(),
                challenger,
                champion_alert: i < champion,
                challenger_alert: i < mine,
            })
            .collect()
    }

    /// A registry whose first model has champion 1 and challenger 2.
    fn registry() -> (tempfile::TempDir, Registry, String) {
        let f = Fixture::duo(2, 2);
        let cfg = fast_config();
        let model = f
            .models(&cfg, &f.prepared(&cfg))
            .into_iter()
            .flat_map(|(_, ms)| ms)
            .next()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path()).unwrap();
        for v in [1, 2] {
            assert_eq!(reg.register(&model).unwrap().version, v);
            reg.adopt(
                &model.header.name,
                v,
                dfp_engine::lifecycle::Promotion::Auto,
                "t",
            )
            .unwrap();
        }
        let name = model.header.name.clone();
        (dir, reg, name)
    }

    #[test]
    fn a_challenger_is_promoted_once_it_has_shown_enough_and_alike() {
        let (_d, reg, name) = registry();
        let cfg = LifecycleConfig::default(); // 3 epochs, 200 rows, 95% agreement, +1% alerts
        let mut p = Promoter::default();
        for _ in 0..2 {
            let touched = p.add(votes(&name, 2, 100, 2, 2));
            assert_eq!(p.judge(&touched, &cfg, &reg).0, []);
        }
        assert_eq!(p.tallies[&name].epochs, 2);
        // A replay of the state so far judges alike (the tallies are the state).
        let mut replay: Promoter =
            crate::checkpoint::decode(&p.snapshot().unwrap(), std::path::Path::new("s")).unwrap();
        let touched = p.add(votes(&name, 2, 100, 2, 2));
        let (notes, dead) = p.judge(&touched, &cfg, &reg);
        assert!(dead.is_empty());
        assert_eq!(
            notes,
            [ModelNote {
                name: name.clone(),
                version: 2,
                champion: true
            }]
        );
        let l = reg.lifecycle(&name).unwrap();
        assert_eq!((l.champion(), l.challenger()), (Some(2), None));
        let last = l.history.last().unwrap();
        assert_eq!(last.by, "policy:auto");
        assert!(last.why.contains("300 rows over 3 epochs"), "{}", last.why);
        assert!(p.tallies.is_empty());
        // The replayed epoch (after a crash) announces the same champion, writing nothing.
        let touched = replay.add(votes(&name, 2, 100, 2, 2));
        assert_eq!(replay.judge(&touched, &cfg, &reg).0, notes);
        assert_eq!(reg.lifecycle(&name).unwrap().history.len(), l.history.len());
    }

    #[test]
    fn a_challenger_that_alerts_more_or_disagrees_waits_and_a_newer_one_starts_over() {
        let (_d, reg, name) = registry();
        let cfg = LifecycleConfig {
            min_epochs: 1,
            min_rows: 10,
            ..LifecycleConfig::default()
        };
        let mut p = Promoter::default();
        // 5% more alerts than the champion: agreement 95%, but the rate is over +1%.
        let touched = p.add(votes(&name, 2, 100, 0, 5));
        assert_eq!(p.judge(&touched, &cfg, &reg).0, []);
        assert!((p.tallies[&name].agreement() - 0.95).abs() < 1e-9);
        // A newer challenger: the older one's rows no longer count.
        let touched = p.add(votes(&name, 3, 4, 0, 0));
        assert_eq!(p.tallies[&name].rows, 4);
        assert_eq!(p.judge(&touched, &cfg, &reg).0, []);
        // A version the registry does not have: a dead letter naming the model, not a panic.
        let touched = p.add(votes(&name, 3, 20, 0, 0));
        let (notes, dead) = p.judge(&touched, &cfg, &reg);
        assert!(notes.is_empty());
        let reason = serde_json::to_string(&dead).unwrap();
        assert!(reason.contains("no version 3"), "{reason}");
    }
}
