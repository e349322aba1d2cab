//! Drift per feature (`[drift] enabled = true`): each epoch, what the models scored is set
//! against the reference profile each model keeps of its training window
//! (`dfp_engine::model::drift`), per feature, over all models together and per model.
//!
//! Inference tallies each scored window's raw feature values against the reference of the
//! model that scored it ([`Tallies`]; the generic model's rows against their user's own
//! rows in its window, where it has them): one tally per feature over everything the worker
//! scored in the epoch (model `all`), and one per model and feature for the generic model and
//! for any model that scored at least `min_rows` rows (a user's rows of an epoch are all on
//! one worker). This stage sums them per epoch on worker 0 once the frontier has passed it, so the
//! file does not depend on the number of workers, and writes `dfp_drift_{source}.csv`:
//! `epoch, model, feature, rows, psi, js, ks, drifted` (`ks` empty for binary and categorical
//! features). A line is `drifted` when its PSI is at least `[drift] psi` over at least
//! `min_rows` rows; a line with fewer rows is written but never drifted (a handful of rows
//! drifts by chance). Drifted features of `all` count in the run's summary and in
//! `dfp_drifted_features_total`.
//!
//! Retraining (`[drift] retrain_after = N`): a [`Retrainer`] counts, per model (`retrain =
//! "models"`: a model whose own lines have a drifted feature) or over all models (`"all"`),
//! the epochs in a row that drifted (an epoch where the model has no judged line leaves the
//! count as it is); at `N` it asks the rolling window, at the next epoch, for a training window
//! of that model's user (or of every user) even though `min_increment` new rows have not
//! arrived, and starts counting again. The retrained model goes through the run's lifecycle
//! policy like any other (champion at once, or challenger). A request for a user whose window
//! holds no row since its last training is not acted on (it would train the same model again).
//!
//! State: an epoch's tallies, until it closes (a resumed stream replays the epochs after its
//! cut); with retraining, the [`Retrainer`] (the counts, and the requests sent to the next
//! epoch, which a cut at that epoch finds in flight: [`Retrainer::in_flight`]) is
//! checkpointed.

use std::collections::BTreeMap;

use dfp_engine::model::Model;
use dfp_engine::model::drift::{Statistics, Tally};
use dfp_engine::model::profile::Rows;
use serde::{Deserialize, Serialize};
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::core::OkErr;
use timely::dataflow::operators::generic::operator::Operator;

use crate::checkpoint::{Cut, component, frontier_cut};
use crate::config::{DriftConfig, RetrainScope};
use crate::frontier::Pending;
use crate::metrics::SharedStats;
use crate::serialize::{Line, OutKind, csv_line};
use crate::state::{StageState, Stateful, timed};

/// The header of `dfp_drift_{source}.csv`.
pub const HEADER: &str = "epoch,model,feature,rows,psi,js,ks,drifted";

/// The model column of the lines over every model.
pub const ALL: &str = "all";

/// One feature's tally of one model (or of [`ALL`]) on one worker in one epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureTally {
    /// `name:version` of the model, or [`ALL`].
    pub model: String,
    /// The feature.
    pub feature: String,
    /// The counts.
    pub tally: Tally,
}

/// What inference tallies while it scores an epoch on one worker.
#[derive(Debug, Default)]
pub struct Tallies {
    all: BTreeMap<String, Tally>,
    models: BTreeMap<String, (usize, bool, BTreeMap<String, Tally>)>,
}

impl Tallies {
    /// Counts `batch`'s rows of `user`, which `model` (`label`: `name:version`) scored;
    /// `generic`: the generic model. A window whose feature values cannot be read (it was scored, so that
    /// cannot happen short of a bug) is logged and left out.
    pub fn add(
        &mut self,
        label: &str,
        model: &Model,
        generic: bool,
        user: &str,
        batch: &arrow::array::RecordBatch,
    ) {
        let values = match model.preprocessor.raw_values(batch, &Rows::New) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(model = %label, error = %e, "reading feature values for drift; the window is left out of drift");
                return;
            }
        };
        let tallies = model.reference.tally(user, &values);
        let entry = self
            .models
            .entry(label.to_string())
            .or_insert_with(|| (0, generic, BTreeMap::new()));
        entry.0 += batch.num_rows();
        for (name, tally) in model.preprocessor.feature_names().zip(tallies) {
            let Some(t) = tally else { continue };
            add_to(&mut self.all, name.to_string(), t.clone());
            add_to(&mut entry.2, name.to_string(), t);
        }
    }

    /// The tallies to send on: every feature's over all models, and every feature's of each
    /// model that is generic or scored at least `min_rows` rows.
    pub fn finish(self, min_rows: u64) -> Vec<FeatureTally> {
        let all = self.all.into_iter().map(|(feature, tally)| FeatureTally {
            model: ALL.to_string(),
            feature,
            tally,
        });
        let models = self
            .models
            .into_iter()
            .filter(|(_, (rows, generic, _))| *generic || *rows as u64 >= min_rows)
            .flat_map(|(model, (_, _, features))| {
                features
                    .into_iter()
                    .map(move |(feature, tally)| FeatureTally {
                        model: model.clone(),
                        feature,
                        tally,
                    })
            });
        all.chain(models).collect()
    }
}

/// Adds `tally` to the one `map` holds under `key`, or holds it there.
fn add_to<K: Ord>(map: &mut BTreeMap<K, Tally>, key: K, tally: Tally) {
    match map.entry(key) {
        std::collections::btree_map::Entry::Occupied(mut o) => {
            o.get_mut().merge(&tally);
        }
        std::collections::btree_map::Entry::Vacant(v) => {
            v.insert(tally);
        }
    }
}

/// One line of the drift file.
#[derive(Debug, Clone, PartialEq)]
pub struct Drift {
    /// `name:version`, or [`ALL`].
    pub model: String,
    /// The feature.
    pub feature: String,
    /// Its statistics.
    pub stats: Statistics,
    /// Whether it drifted (see the module's doc).
    pub drifted: bool,
}

/// An epoch's lines from its tallies (any number per model and feature, from any workers),
/// by model and feature.
pub fn epoch(tallies: Vec<FeatureTally>, cfg: &DriftConfig) -> Vec<Drift> {
    let mut sums: BTreeMap<(String, String), Tally> = BTreeMap::new();
    for t in tallies {
        add_to(&mut sums, (t.model, t.feature), t.tally);
    }
    sums.into_iter()
        .map(|((model, feature), tally)| {
            let stats = tally.statistics(cfg.bins);
            Drift {
                model,
                feature,
                drifted: stats.rows >= cfg.min_rows as f64 && stats.psi >= cfg.psi,
                stats,
            }
        })
        .collect()
}

fn line(epoch: u64, d: &Drift) -> Line {
    let s = &d.stats;
    let cells = [
        epoch.to_string(),
        d.model.clone(),
        d.feature.clone(),
        format!("{:.0}", s.rows),
        format!("{:.6}", s.psi),
        format!("{:.6}", s.js),
        s.ks.map_or_else(String::new, |k| format!("{k:.6}")),
        d.drifted.to_string(),
    ];
    Line::unkeyed(OutKind::Drift, csv_line(&cells))
}

/// A training window asked for because of drift.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Retrain {
    /// The window of this user (`generic_user`: the generic model's).
    User(String),
    /// Every user's.
    All,
}

impl Retrain {
    /// Whether it asks for `user`'s window.
    pub fn covers(&self, user: &str) -> bool {
        match self {
            Retrain::User(u) => u == user,
            Retrain::All => true,
        }
    }
}

/// Retraining in flight at the cut a run resumes from: the cut's epoch and the requests.
pub type InFlight = Option<(u64, Vec<Retrain>)>;

/// Counts drifted epochs in a row and asks for retraining (see the module's doc).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Retrainer {
    /// Drifted epochs in a row, by model name (or [`ALL`]).
    streaks: BTreeMap<String, u32>,
    /// The requests of the last judged epoch, with the epoch they go to.
    announced: Option<(u64, Vec<Retrain>)>,
}

impl Stateful for Retrainer {
    fn snapshot(&mut self) -> dfp_engine::Result<Vec<u8>> {
        crate::checkpoint::encode(&*self)
    }
}

impl Retrainer {
    /// Judges epoch `t`'s lines of `source`'s models: the retraining they ask for at `t + 1`.
    pub fn judge(
        &mut self,
        t: u64,
        lines: &[Drift],
        cfg: &DriftConfig,
        source: &str,
    ) -> Vec<Retrain> {
        let Some(after) = cfg.retrain_after else {
            return Vec::new();
        };
        // Per key: judged this epoch, and drifted.
        let mut now: BTreeMap<String, bool> = BTreeMap::new();
        for d in lines.iter().filter(|d| d.stats.rows >= cfg.min_rows as f64) {
            let key = match (cfg.retrain, d.model == ALL) {
                (RetrainScope::All, true) => ALL,
                (RetrainScope::Models, false) => dfp_engine::registry::split_label(&d.model).0,
                _ => continue,
            };
            *now.entry(key.to_string()).or_default() |= d.drifted;
        }
        let prefix = dfp_engine::registry::model_name(source, "");
        let mut out = Vec::new();
        for (key, drifted) in now {
            let streak = self.streaks.entry(key.clone()).or_default();
            *streak = if drifted { *streak + 1 } else { 0 };
            if *streak >= after {
                *streak = 0;
                out.push(match key.strip_prefix(&prefix) {
                    Some(user) => Retrain::User(user.to_string()),
                    None => Retrain::All,
                });
            }
        }
        self.streaks.retain(|_, s| *s > 0);
        self.announced = Some((t + 1, out.clone()));
        out
    }

    /// The requests in flight to the rolling window at `cut` (sent by the epoch before it; the
    /// drift stage runs on worker 0).
    pub fn in_flight(cut: &Cut) -> dfp_engine::Result<Vec<Retrain>> {
        let name = component("drift", 0);
        let r: Retrainer = crate::checkpoint::decode(&cut.read(&name)?, &cut.path(&name))?;
        Ok(match r.announced {
            Some((at, requests)) if at == cut.time => requests,
            _ => Vec::new(),
        })
    }
}

/// The drift stage as a timely operator.
pub trait DriftLines<'s> {
    /// Each epoch's drift lines, on worker 0, once the epoch is complete; and the retraining
    /// they ask for, at the same epoch (the feedback edge to the rolling window takes them to
    /// the next; with a retrainer: its state and checkpoint writer).
    fn drift(
        self,
        cfg: &DriftConfig,
        source: &str,
        retrainer: (Retrainer, StageState),
        stats: SharedStats,
    ) -> (StreamVec<'s, u64, Line>, StreamVec<'s, u64, Retrain>);
}

/// One output of the drift stage, before it is split.
#[derive(Debug, Clone)]
enum Out {
    Line(Line),
    Retrain(Retrain),
}

impl<'s> DriftLines<'s> for StreamVec<'s, u64, FeatureTally> {
    fn drift(
        self,
        cfg: &DriftConfig,
        source: &str,
        (mut retrainer, mut snapshots): (Retrainer, StageState),
        stats: SharedStats,
    ) -> (StreamVec<'s, u64, Line>, StreamVec<'s, u64, Retrain>) {
        let cfg = cfg.clone();
        let source = source.to_string();
        let out: StreamVec<'s, u64, Out> = self.unary_frontier(
            Exchange::new(|_: &FeatureTally| 0),
            "Drift",
            move |_cap, _info| {
                let mut pending = Pending::<FeatureTally>::default();
                move |(input, frontier), output| {
                    input.for_each_stamp(|cap, data| pending.stash(cap, data, 0));
                    let ready = timed(pending.ready(&[frontier]));
                    snapshots.epochs(
                        &mut retrainer,
                        ready,
                        frontier_cut(&[frontier]),
                        &stats,
                        |retrainer, t, (cap, tallies)| {
                            let lines = epoch(tallies, &cfg);
                            let mut s = stats.borrow_mut();
                            for d in lines.iter().filter(|d| d.drifted) {
                                if d.model == ALL {
                                    *s.drifted.entry(d.feature.clone()).or_default() += 1;
                                } else {
                                    s.drifted_models += 1;
                                }
                            }
                            let requests = retrainer.judge(t, &lines, &cfg, &source);
                            s.retrain_requests += requests.len() as u64;
                            // Requests go at `t`: the feedback edge takes them to `t + 1`.
                            let mut session = output.session(&cap);
                            session.give_iterator(lines.iter().map(|d| Out::Line(line(t, d))));
                            session.give_iterator(requests.into_iter().map(Out::Retrain));
                        },
                    );
                }
            },
        );
        out.ok_err(|o| match o {
            Out::Line(l) => Ok(l),
            Out::Retrain(r) => Err(r),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfp_engine::model::drift::{FINE_BINS, UNIT};

    fn numeric(model: &str, fine: Vec<u64>) -> FeatureTally {
        FeatureTally {
            model: model.into(),
            feature: "logcount".into(),
            tally: Tally::Numeric(fine),
        }
    }

    #[test]
    fn tallies_of_an_epoch_add_up_across_workers_and_only_enough_rows_drift() {
        let cfg = DriftConfig {
            enabled: true,
            ..DriftConfig::default()
        };
        let uniform = |n: u64| vec![n * UNIT / FINE_BINS as u64; FINE_BINS];
        let mut top = vec![0; FINE_BINS];
        top[99] = 60 * UNIT;
        // Worker 1 saw half of `all` uniform, worker 2 the other half in the top bin; a user
        // model with 60 rows all at the top: too few to drift.
        let got = epoch(
            vec![
                numeric(ALL, uniform(60)),
                numeric(ALL, top.clone()),
                numeric("DFP-azure-a:1", top),
                numeric("DFP-azure-generic_user:1", uniform(500)),
            ],
            &cfg,
        );
        let by: BTreeMap<&str, &Drift> = got.iter().map(|d| (d.model.as_str(), d)).collect();
        assert_eq!(by.len(), 3);
        let all = by[ALL];
        assert_eq!(all.stats.rows, 120.0);
        assert!(all.drifted && all.stats.psi > 0.2, "{all:?}");
        assert!((all.stats.ks.unwrap() - 0.495).abs() < 1e-9, "{all:?}");
        let a = by["DFP-azure-a:1"];
        assert!(!a.drifted && a.stats.psi > 1.0, "{a:?}");
        let generic = by["DFP-azure-generic_user:1"];
        assert!(!generic.drifted && generic.stats.psi < 1e-9);
        let text = line(7, all).text;
        assert!(
            text.starts_with("7,all,logcount,120,") && text.ends_with(",true"),
            "{text}"
        );
        let categorical = Drift {
            stats: Statistics {
                ks: None,
                ..all.stats
            },
            ..all.clone()
        };
        assert!(line(7, &categorical).text.ends_with(",,true"));
    }

    #[test]
    fn drift_lasting_retrain_after_epochs_asks_for_the_models_user_once_then_counts_again() {
        let cfg = DriftConfig {
            enabled: true,
            retrain_after: Some(2),
            ..DriftConfig::default()
        };
        let line = |model: &str, rows: f64, drifted: bool| Drift {
            model: model.into(),
            feature: "browser".into(),
            stats: Statistics {
                rows,
                psi: if drifted { 1.0 } else { 0.0 },
                js: 0.0,
                ks: None,
            },
            drifted,
        };
        let mut r = Retrainer::default();
        let a = |v: u32, drifted: bool| line(&format!("DFP-azure-a:{v}"), 500.0, drifted);
        let g = |drifted: bool| line("DFP-azure-generic_user:1", 500.0, drifted);
        // Epoch 1: both drift; 2: a has too few rows to be judged, the generic model drifts
        // again; 3: a drifts again (a new version: the same model).
        assert!(r.judge(1, &[a(1, true), g(true)], &cfg, "azure").is_empty());
        let two = r.judge(
            2,
            &[line("DFP-azure-a:1", 10.0, true), g(true)],
            &cfg,
            "azure",
        );
        assert_eq!(two, [Retrain::User("generic_user".into())]);
        assert_eq!(r.announced, Some((3, two)));
        assert_eq!(
            r.judge(3, &[a(2, true), g(true)], &cfg, "azure"),
            [Retrain::User("a".into())]
        );
        // A calm epoch starts the count again.
        assert!(r.judge(4, &[g(false)], &cfg, "azure").is_empty());
        assert!(r.judge(5, &[g(true)], &cfg, "azure").is_empty());
        // Over all models.
        let all = DriftConfig {
            retrain: RetrainScope::All,
            ..cfg.clone()
        };
        let mut r = Retrainer::default();
        let both = [line(ALL, 500.0, true), a(1, true)];
        assert!(r.judge(1, &both, &all, "azure").is_empty());
        assert_eq!(r.judge(2, &both, &all, "azure"), [Retrain::All]);
        assert!(Retrain::All.covers("x") && !Retrain::User("a".into()).covers("b"));
    }
}
