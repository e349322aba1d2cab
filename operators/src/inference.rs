//! Inference (Morpheus' `dfp_inference` module / `DFPInferenceStage`): scores each scoring
//! window's rows with the champion of the user's model, or of the generic model when the user
//! has none or theirs cannot be used, all windows of an epoch on this worker in one backend
//! call. Where that model has a challenger, the challenger scores the same rows in the shadow:
//! its scores travel with the row ([`Scored::shadow`]) to the shadow file and never raise a
//! detection. A row's familiar values (`[familiarity]`, from the rolling window) explain
//! features: their z-losses are 0, and a familiar value's (not the hour's) are fed to the
//! network as the model's typical values ([`dfp_engine::model::score`]).
//!
//! Inputs: [`Prepared`] scoring windows, and [`ModelNote`]s broadcast from every worker's
//! registry writer. Output: one [`Scored`] row per scored row, and [`DeadLetter`]s for rows no
//! model could score and for user models that could not be loaded (those users fall back to
//! the generic model). State: each model's champion and challenger known at the last
//! processed epoch (the registry's at the start of the run, then every note), notes and
//! windows of epochs the frontiers have not passed, and an LRU cache of loaded models; the
//! champions and challengers are checkpointed. An epoch is scored only once both frontiers
//! have passed it, with exactly the models trained at it or before, so scores do not depend on
//! worker timing.

use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use dfp_engine::lifecycle::Serving;
use dfp_engine::model::{Backend, Familiar, Model, Request, score};
use dfp_engine::registry::{ModelCache, Registry, model_name, split_label};
use dfp_engine::rows::Row;
use dfp_engine::schema::SourceSchema;
use serde::{Deserialize, Serialize};
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Operator;
use timely::dataflow::operators::core::OkErr;

use crate::checkpoint::frontier_cut;
use crate::data_prep::{Prepared, prepare_all};
use crate::dead_letter::DeadLetter;
use crate::drift::{FeatureTally, Tallies};
use crate::frontier::Pending;
use crate::metrics::SharedStats;
use crate::registry_writer::ModelNote;
use crate::rolling_window::Window;
use crate::state::{StageState, Stateful};

/// Inference settings (`[inference]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InferenceConfig {
    /// Models kept in memory per worker (least recently used evicted).
    pub cache_models: usize,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        Self { cache_models: 1024 }
    }
}

/// One scored row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    /// The row's user.
    pub user: String,
    /// The row.
    pub row: std::sync::Arc<Row>,
    /// Its derived features (schema order).
    pub derived: Vec<i64>,
    /// `name:version` of the model that scored it.
    pub model_version: String,
    /// Per feature loss (numeric, binary, categorical order).
    pub loss: Vec<f32>,
    /// Per feature |z| of the loss.
    pub z_loss: Vec<f32>,
    /// Per feature prediction.
    pub pred: Vec<String>,
    /// Largest |z|.
    pub max_abs_z: f32,
    /// Mean |z|.
    pub mean_abs_z: f32,
    /// `mean_abs_z` against what the model's scores of ordinary rows look like (for the
    /// generic model: this user's own rows, where it has them): a z-score of its logarithm mapped
    /// through the model's measured tail (`dfp_engine::model::calibration`).
    pub calibrated_z: f32,
    /// Whether the generic model scored the row (the user had no usable model of their own).
    pub generic: bool,
    /// Bit `k` set when the row's value of the schema's `familiar[k]` was familiar to its user,
    /// so the features that entry explains got a z-loss of 0 (`[familiarity]`).
    pub familiar: u64,
    /// The challenger's scores of the row, where the model that scored it has one.
    pub shadow: Option<Shadow>,
}

/// A challenger's scores of a row (shadow scoring).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shadow {
    /// `name:version` of the challenger.
    pub model_version: String,
    /// Its mean |z|.
    pub mean_abs_z: f32,
    /// Its largest |z|.
    pub max_abs_z: f32,
    /// Its calibrated z.
    pub calibrated_z: f32,
}

/// A model pick: the model (`name:version` and weights) if any, the dead letter of an unusable
/// user model, and whether the generic model was picked.
type Choice = (Option<(String, Arc<Model>)>, Option<DeadLetter>, bool);

impl Stateful for Scorer {
    /// The champions and challengers known (by model name).
    fn snapshot(&mut self) -> dfp_engine::Result<Vec<u8>> {
        crate::checkpoint::encode(&self.versions)
    }
}

/// What scoring an epoch's windows gave.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The scored rows.
    pub scored: Vec<Scored>,
    /// Rows no model could score, and user models that could not be used.
    pub dead: Vec<DeadLetter>,
    /// Rows scored with the generic model.
    pub fallbacks: u64,
    /// Rows no model could score.
    pub unscored: u64,
    /// The scored rows' features tallied against their models' references, when the scorer
    /// tallies drift.
    pub drift: Vec<FeatureTally>,
}

/// Picks, loads and caches models, and scores windows.
pub struct Scorer {
    schema: Arc<SourceSchema>,
    /// The schema's fingerprint, which every model used is checked against.
    fingerprint: u64,
    generic_user: String,
    versions: Serving,
    cache: ModelCache,
    batch_size: usize,
    /// Models already reported as unusable (each is logged once, not once per window).
    reported: std::collections::HashSet<String>,
    /// Tally drift, a model on its own from this many rows (`[drift] min_rows`).
    drift: Option<u64>,
}

impl Scorer {
    /// A scorer over `registry` starting from `versions` (the champions and challengers).
    pub fn new(
        schema: Arc<SourceSchema>,
        registry: Registry,
        versions: Serving,
        generic_user: &str,
        config: &InferenceConfig,
        batch_size: usize,
    ) -> Self {
        Self {
            fingerprint: schema.fingerprint(),
            schema,
            generic_user: generic_user.to_string(),
            versions,
            cache: ModelCache::new(registry, config.cache_models),
            batch_size,
            reported: std::collections::HashSet::new(),
            drift: None,
        }
    }

    /// Tallies the scored rows' features against their models' references ([`Outcome::drift`]),
    /// giving a model tallies of its own from `min_rows` rows in an epoch.
    pub fn with_drift(mut self, min_rows: u64) -> Self {
        self.drift = Some(min_rows);
        self
    }

    /// The champions and challengers it scores with.
    pub fn versions(&self) -> &Serving {
        &self.versions
    }

    /// Scores with `versions` from now on (the registry read again: `dfp serve`).
    pub fn set_versions(&mut self, versions: Serving) {
        self.versions = versions;
    }

    /// Makes a new version known: a champion scores from now on, a challenger in the shadow.
    pub fn apply(&mut self, note: ModelNote) {
        let Serving {
            champions,
            challengers,
        } = &mut self.versions;
        if note.champion {
            if challengers.get(&note.name) == Some(&note.version) {
                challengers.remove(&note.name);
            }
            champions.insert(note.name, note.version);
        } else {
            challengers.insert(note.name, note.version);
        }
    }

    fn load(&mut self, name: &str) -> Option<Result<(String, Arc<Model>), String>> {
        let version = *self.versions.champions.get(name)?;
        self.load_version(name, version)
    }

    fn load_version(
        &mut self,
        name: &str,
        version: u32,
    ) -> Option<Result<(String, Arc<Model>), String>> {
        Some(
            self.cache
                .get(name, version)
                .and_then(|m| {
                    m.check_fingerprint(&self.schema.name, self.fingerprint, Path::new(name))?;
                    Ok(m)
                })
                .map(|m| (format!("{name}:{version}"), m))
                .map_err(|e| e.to_string()),
        )
    }

    /// The challenger of model `name` when it has a usable one (an unusable one is logged once
    /// and scores nothing).
    fn challenger_of(&mut self, name: &str) -> Option<(String, Arc<Model>)> {
        let version = *self.versions.challengers.get(name)?;
        match self.load_version(name, version)? {
            Ok(m) => Some(m),
            Err(e) => {
                if self.reported.insert(format!("{name}:{version}")) {
                    tracing::error!(model = %name, version, error = %e, "challenger unusable: it scores nothing in the shadow");
                }
                None
            }
        }
    }

    /// The model for `user`: theirs, else the generic one; with the dead letter of a user model
    /// that exists but cannot be used.
    fn model_for(&mut self, user: &str) -> Choice {
        let own = model_name(&self.schema.name, user);
        let mut problem = None;
        match self.load(&own) {
            Some(Ok(m)) => return (Some(m), None, false),
            Some(Err(e)) => {
                if self.reported.insert(own.clone()) {
                    tracing::error!(model = %own, error = %e, "model unusable; its user is scored with the generic model");
                }
                problem = Some(DeadLetter::model(
                    "inference",
                    &own,
                    format!("{e}; the user's rows were scored with the generic model"),
                ));
            }
            None => {}
        }
        let generic = model_name(&self.schema.name, &self.generic_user);
        match self.load(&generic) {
            Some(Ok(m)) => (Some(m), problem, true),
            Some(Err(e)) => {
                if self.reported.insert(generic.clone()) {
                    tracing::error!(model = %generic, error = %e, "the generic model is unusable: rows of users without a model of their own cannot be scored");
                }
                (
                    None,
                    Some(DeadLetter::model("inference", &generic, e)),
                    true,
                )
            }
            None => (None, problem, true),
        }
    }

    /// Prepares `windows` (a window whose rows do not fit the schema is a dead letter) and
    /// scores them.
    pub fn score_windows(&mut self, backend: &dyn Backend, windows: Vec<Window>) -> Outcome {
        let arrow = self.schema.arrow_schema();
        let (prepared, bad) = prepare_all(windows, &self.schema, &arrow, "data_prep");
        let mut out = self.score(backend, prepared);
        out.dead.extend(bad);
        out
    }

    /// Scores `windows`.
    pub fn score(&mut self, backend: &dyn Backend, windows: Vec<Prepared>) -> Outcome {
        let mut dead = Vec::new();
        let (mut fallbacks, mut unscored) = (0u64, 0u64);
        let mut chosen: Vec<(Prepared, String, Arc<Model>, bool)> = Vec::new();
        for w in windows {
            let (model, problem, generic) = self.model_for(&w.window.user);
            dead.extend(problem);
            match model {
                Some((label, m)) => {
                    if generic {
                        fallbacks += w.window.rows.len() as u64;
                    }
                    chosen.push((w, label, m, generic));
                }
                None => {
                    let reason = format!(
                        "no usable model for user {:?} and no usable generic model {:?}",
                        w.window.user,
                        model_name(&self.schema.name, &self.generic_user)
                    );
                    unscored += w.window.rows.len() as u64;
                    dead.extend(w.window.rows.iter().map(|r| {
                        DeadLetter::row("inference", Some(&w.window.user), r, reason.clone())
                    }));
                }
            }
        }
        // The challenger of each chosen model, where it has a usable one, scores the same rows
        // in the same backend call, after the champions.
        let shadows: Vec<Option<(String, Arc<Model>)>> = chosen
            .iter()
            .map(|(_, label, _, _)| self.challenger_of(split_label(label).0))
            .collect();
        let entries = &self.schema.familiar;
        let mut requests: Vec<Request<'_>> = chosen
            .iter()
            .map(|(w, _, m, _)| {
                (
                    m.as_ref(),
                    &w.batch,
                    Familiar {
                        bits: &w.window.familiar,
                        entries,
                    },
                )
            })
            .collect();
        requests.extend(chosen.iter().zip(&shadows).filter_map(|((w, ..), s)| {
            s.as_ref().map(|(_, m)| {
                (
                    m.as_ref(),
                    &w.batch,
                    Familiar {
                        bits: &w.window.familiar,
                        entries,
                    },
                )
            })
        }));
        let mut results = score(backend, &requests, self.batch_size);
        drop(requests);
        let mut shadow_results = results.split_off(chosen.len()).into_iter();
        let mut scored = Vec::new();
        let mut tallies = Tallies::default();
        for (((w, label, model, generic), result), shadow) in
            chosen.into_iter().zip(results).zip(shadows)
        {
            let shadow = shadow.and_then(|(label, m)| match shadow_results.next()? {
                Ok(s) => Some((label, m, s)),
                Err(e) => {
                    tracing::error!(model = %label, error = %e.chain(), "shadow scoring failed: no challenger scores for these rows");
                    None
                }
            });
            let s = match result {
                Ok(s) => s,
                Err(e) => {
                    let reason = format!("scoring with {label} failed: {}", e.chain());
                    tracing::error!(model = %label, error = %reason, "scoring failed");
                    unscored += w.window.rows.len() as u64;
                    dead.extend(w.window.rows.iter().map(|r| {
                        DeadLetter::row("inference", Some(&w.window.user), r, reason.clone())
                    }));
                    continue;
                }
            };
            if self.drift.is_some() {
                tallies.add(&label, &model, generic, &w.window.user, &w.batch);
            }
            let f = s.features.len();
            let user = w.window.user;
            let familiar = w.window.familiar;
            for (i, (row, derived)) in w.window.rows.into_iter().zip(w.window.derived).enumerate() {
                scored.push(Scored {
                    user: user.clone(),
                    row,
                    derived,
                    model_version: label.clone(),
                    loss: s.loss[i * f..(i + 1) * f].to_vec(),
                    z_loss: s.z_loss[i * f..(i + 1) * f].to_vec(),
                    pred: s.pred[i * f..(i + 1) * f].to_vec(),
                    max_abs_z: s.max_abs_z[i],
                    mean_abs_z: s.mean_abs_z[i],
                    calibrated_z: model.calibration.z(s.mean_abs_z[i], &user),
                    generic,
                    familiar: familiar.get(i).copied().unwrap_or(0),
                    shadow: shadow.as_ref().map(|(label, m, s)| Shadow {
                        model_version: label.clone(),
                        mean_abs_z: s.mean_abs_z[i],
                        max_abs_z: s.max_abs_z[i],
                        calibrated_z: m.calibration.z(s.mean_abs_z[i], &user),
                    }),
                });
            }
        }
        Outcome {
            scored,
            dead,
            fallbacks,
            unscored,
            drift: self.drift.map_or_else(Vec::new, |min| tallies.finish(min)),
        }
    }
}

/// The inference stage as a timely operator.
pub trait Inference<'s> {
    /// Scores each epoch's windows once both inputs' frontiers have passed it.
    fn inference(
        self,
        notes: StreamVec<'s, u64, ModelNote>,
        scorer: Scorer,
        backend: Rc<dyn Backend>,
        snapshots: StageState,
        stats: SharedStats,
    ) -> Inferred<'s>;
}

/// What inference sends on: scored rows, dead letters, drift tallies.
pub type Inferred<'s> = (
    StreamVec<'s, u64, Scored>,
    StreamVec<'s, u64, DeadLetter>,
    StreamVec<'s, u64, FeatureTally>,
);

/// One output of inference, before it is split.
#[derive(Debug, Clone)]
enum Out {
    Scored(Scored),
    Dead(DeadLetter),
    Drift(FeatureTally),
}

impl<'s> Inference<'s> for StreamVec<'s, u64, Window> {
    fn inference(
        self,
        notes: StreamVec<'s, u64, ModelNote>,
        mut scorer: Scorer,
        backend: Rc<dyn Backend>,
        mut snapshots: StageState,
        stats: SharedStats,
    ) -> Inferred<'s> {
        let out = self
            .binary_frontier(
                notes,
                Pipeline,
                Pipeline,
                "Inference",
                move |_cap, _info| {
                    let mut windows = Pending::<Window>::default();
                    let mut news = Pending::<ModelNote>::default();
                    move |(input, f1), (notes, f2), output| {
                        input.for_each_stamp(|cap, data| windows.stash(cap, data, 0));
                        notes.for_each_stamp(|cap, data| news.stash(cap, data, 0));
                        let mut ready: Vec<_> =
                            news.ready(&[f1, f2])
                                .into_iter()
                                .map(|(cap, n)| (*cap.time(), (None, n)))
                                .chain(
                                    windows.ready(&[f1, f2]).into_iter().map(|(cap, w)| {
                                        (*cap.time(), (Some((cap, w)), Vec::new()))
                                    }),
                                )
                                .collect();
                        // Notes of an epoch before its windows: a model trained at t scores at t.
                        ready.sort_by_key(|(t, (w, _))| (*t, w.is_some()));
                        let cut = frontier_cut(&[f1, f2]);
                        snapshots.epochs(
                            &mut scorer,
                            ready,
                            cut,
                            &stats,
                            |scorer, _t, (work, notes)| {
                                notes.into_iter().for_each(|n| scorer.apply(n));
                                let Some((cap, mut ws)) = work else { return };
                                ws.sort_by(|a, b| a.user.cmp(&b.user));
                                let started = Instant::now();
                                let out = scorer.score_windows(backend.as_ref(), ws);
                                let mut s = stats.borrow_mut();
                                s.score_seconds += started.elapsed().as_secs_f64();
                                s.scored += out.scored.len() as u64;
                                s.generic_fallbacks += out.fallbacks;
                                s.unscored += out.unscored;
                                let mut session = output.session(&cap);
                                session.give_iterator(out.scored.into_iter().map(Out::Scored));
                                session.give_iterator(out.dead.into_iter().map(Out::Dead));
                                session.give_iterator(out.drift.into_iter().map(Out::Drift));
                            },
                        );
                    }
                },
            )
            .container::<Vec<Out>>();
        let (scored, rest): (_, StreamVec<'s, u64, Result<DeadLetter, FeatureTally>>) =
            out.ok_err(|o| match o {
                Out::Scored(s) => Ok(s),
                Out::Dead(d) => Err(Ok(d)),
                Out::Drift(t) => Err(Err(t)),
            });
        let (dead, drift) = rest.ok_err(|r: Result<DeadLetter, FeatureTally>| r);
        (scored, dead, drift)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Fixture, both, cpu, fast_config, run_stage};
    use std::collections::HashMap;

    #[test]
    fn an_epoch_scores_with_the_models_noted_up_to_it_else_the_generic_model() {
        let f = Fixture::duo(3, 3);
        let cfg = fast_config();
        let prepared = f.prepared(&cfg);
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(dir.path()).unwrap();
        // Each epoch's models registered and noted at their epoch, its scoring windows beside
        // them; what each (epoch, user) must be scored with.
        let mut input: Vec<(u64, Vec<Result<Window, ModelNote>>)> = Vec::new();
        let mut expected: HashMap<(u64, String), String> = HashMap::new();
        let mut known: HashMap<String, u32> = HashMap::new();
        let mut rows = 0;
        for (epoch, models) in f.models(&cfg, &prepared) {
            let mut items = Vec::new();
            for m in models {
                let v = registry.register(&m).unwrap();
                known.insert(m.header.name.clone(), v.version);
                items.push(Err(ModelNote {
                    name: m.header.name.clone(),
                    version: v.version,
                    champion: true,
                }));
            }
            for w in prepared[epoch as usize]
                .1
                .iter()
                .filter(|w| !w.window.train)
            {
                let own = model_name("duo", &w.window.user);
                let name = if known.contains_key(&own) {
                    own
                } else {
                    model_name("duo", "generic_user")
                };
                let label = format!("{name}:{}", known[&name]);
                expected.insert((epoch, w.window.user.clone()), label);
                rows += w.window.rows.len();
                items.push(Ok(w.window.clone()));
            }
            input.push((epoch, items));
        }
        assert!(
            known.values().any(|&v| v > 1),
            "a model retrained: versions move on"
        );
        let schema = f.schema.clone();
        let (out, stats) = run_stage(input, move |s, stats| {
            let (windows, notes) = s.ok_err(|x| x);
            let scorer = Scorer::new(
                schema,
                registry,
                Serving::default(),
                "generic_user",
                &InferenceConfig::default(),
                256,
            );
            let (scored, dead, _) =
                windows.inference(notes, scorer, cpu(), StageState::default(), stats);
            both((scored, dead))
        });
        assert_eq!(out.len(), rows, "every scoring row once");
        assert_eq!(stats.scored as usize, rows);
        for (t, s) in &out {
            let s = s.as_ref().unwrap();
            assert_eq!(
                s.model_version,
                expected[&(*t, s.user.clone())],
                "epoch {t}"
            );
            assert!(s.mean_abs_z.is_finite());
        }
    }
}
