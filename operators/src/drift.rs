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
//! State: an epoch's tallies, until it closes. A resumed stream replays the epochs after its
//! cut, so drift needs no checkpointed state.

use std::collections::BTreeMap;

use dfp_engine::model::Model;
use dfp_engine::model::drift::{Statistics, Tally};
use dfp_engine::model::profile::Rows;
use serde::{Deserialize, Serialize};
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;

use crate::config::DriftConfig;
use crate::frontier::Pending;
use crate::metrics::SharedStats;
use crate::serialize::{Line, OutKind, csv_line};

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
        for (name, tally) in model.preprocessor.feature_names().zip(&tallies) {
            let Some(t) = tally else { continue };
            add_to(&mut self.all, name, t);
            add_to(&mut entry.2, name, t);
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

fn add_to(map: &mut BTreeMap<String, Tally>, feature: &str, tally: &Tally) {
    match map.get_mut(feature) {
        Some(t) => {
            t.merge(tally);
        }
        None => {
            map.insert(feature.to_string(), tally.clone());
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
        match sums.get_mut(&(t.model.clone(), t.feature.clone())) {
            Some(s) => {
                s.merge(&t.tally);
            }
            None => {
                sums.insert((t.model, t.feature), t.tally);
            }
        }
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

/// The drift stage as a timely operator.
pub trait DriftLines<'s> {
    /// Each epoch's drift lines, on worker 0, once the epoch is complete.
    fn drift(self, cfg: &DriftConfig, stats: SharedStats) -> StreamVec<'s, u64, Line>;
}

impl<'s> DriftLines<'s> for StreamVec<'s, u64, FeatureTally> {
    fn drift(self, cfg: &DriftConfig, stats: SharedStats) -> StreamVec<'s, u64, Line> {
        let cfg = cfg.clone();
        self.unary_frontier(
            Exchange::new(|_: &FeatureTally| 0),
            "Drift",
            move |_cap, _info| {
                let mut pending = Pending::<FeatureTally>::default();
                move |(input, frontier), output| {
                    input.for_each_stamp(|cap, data| pending.stash(cap, data, 0));
                    for (cap, tallies) in pending.ready(&[frontier]) {
                        let lines = epoch(tallies, &cfg);
                        let mut s = stats.borrow_mut();
                        for d in lines.iter().filter(|d| d.drifted) {
                            if d.model == ALL {
                                *s.drifted.entry(d.feature.clone()).or_default() += 1;
                            } else {
                                s.drifted_models += 1;
                            }
                        }
                        let t = *cap.time();
                        output
                            .session(&cap)
                            .give_iterator(lines.iter().map(|d| line(t, d)));
                    }
                }
            },
        )
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
}
