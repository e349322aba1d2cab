//! Training (Morpheus' `dfp_training` module / `DFPTraining`): trains one autoencoder per
//! training window, the windows of an epoch on this worker in backend calls of up to
//! [`CHUNK_ROWS`] rows (the CPU backend spreads whole models over its threads). Each window is
//! prepared (data prep: its batch with the derived features) only when its call comes and
//! dropped after it, so memory holds one call's batches, not the epoch's: the windows' rows
//! themselves are shared with the rolling windows that emitted them.
//!
//! Input: training [`Window`]s. Output: trained models (to the registry writer) and
//! [`DeadLetter`]s for windows that could not be prepared or trained. State: the windows of
//! epochs the frontier has not passed yet; an epoch trains once all of its windows are in, so
//! a model is trained exactly once per window.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use dfp_engine::batch::{string_column, take};
use dfp_engine::model::{Backend, Model, ModelConfig, TrainingSet, train_models};
use dfp_engine::registry::model_name;
use dfp_engine::schema::{SourceSchema, USERNAME};
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Operator;
use timely::dataflow::operators::core::OkErr;

use crate::data_prep::{Prepared, prepare_all};
use crate::dead_letter::DeadLetter;
use crate::frontier::Pending;
use crate::metrics::SharedStats;
use crate::rolling_window::Window;

/// The most rows one backend call trains on (a window with more is a call of its own). A
/// model's result does not depend on the call it is in (its own seed, data and config).
pub const CHUNK_ROWS: usize = 100_000;

/// `windows` cut, in order, into runs of at most `budget` rows (a window of more alone).
fn chunks(windows: &[Window], budget: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut rows) = (0, 0);
    for (i, w) in windows.iter().enumerate() {
        if i > start && rows + w.rows.len() > budget {
            out.push(start..i);
            (start, rows) = (i, 0);
        }
        rows += w.rows.len();
    }
    if start < windows.len() {
        out.push(start..windows.len());
    }
    out
}

/// How the generic model's window is sampled (`[split] generic_max_rows`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenericSample {
    /// The generic model's user.
    pub user: String,
    /// The most rows it trains on.
    pub max_rows: usize,
    /// Users with fewer rows than this in the window (the training window's `min_history`:
    /// they have no model of their own, and the generic model scores them) come first.
    pub sparse_below: usize,
}

/// The rows of the generic model's window to train on, given each row's user (rows in event
/// time order), or None to keep them all (no more than `max_rows`): first the users with fewer
/// than `sparse_below` rows, whom the generic model scores, then the others with what is left;
/// within each group the rows are shared equally (water-filling: a user with fewer than an
/// equal share keeps all theirs, the rest is shared among the others), a user's kept rows
/// evenly spaced over their window. Deterministic: the same window gives the same sample.
pub fn sample_generic(users: &[Option<&str>], cfg: &GenericSample) -> Option<Vec<usize>> {
    if users.len() <= cfg.max_rows {
        return None;
    }
    let mut by_user: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, u) in users.iter().enumerate() {
        by_user.entry(u.unwrap_or("")).or_default().push(i);
    }
    let (sparse, dense): (Vec<&Vec<usize>>, Vec<&Vec<usize>>) = by_user
        .values()
        .partition(|rows| rows.len() < cfg.sparse_below);
    let mut left = cfg.max_rows;
    let mut kept = Vec::with_capacity(cfg.max_rows);
    for mut group in [sparse, dense] {
        group.sort_by_key(|rows| rows.len());
        let mut users_left = group.len();
        for rows in group {
            let share = left / users_left.max(1);
            let take = rows.len().min(share);
            kept.extend((0..take).map(|i| rows[i * rows.len() / take]));
            left -= take;
            users_left -= 1;
        }
    }
    kept.sort_unstable();
    Some(kept)
}

/// The rows the generic model trains on (its window sampled as `sample` says), or None when
/// `w` is another window or is kept whole.
fn sampled(w: &Prepared, sample: Option<&GenericSample>) -> Option<arrow::array::RecordBatch> {
    let cfg = sample.filter(|s| s.user == w.window.user)?;
    let users = string_column(&w.batch, USERNAME).ok()?;
    let rows = sample_generic(&users, cfg)?;
    match take(&w.batch, &rows) {
        Ok(b) => {
            tracing::info!(
                rows = w.batch.num_rows(),
                kept = b.num_rows(),
                "the generic model trains on a sample of its window"
            );
            Some(b)
        }
        Err(e) => {
            tracing::warn!(error = %e, "sampling the generic model's window; it trains on all of it");
            None
        }
    }
}

/// Trains the windows of one epoch: a model or a dead letter per window, in window order (the
/// generic model's window sampled as `sample` says).
pub fn train_windows(
    backend: &dyn Backend,
    schema: &SourceSchema,
    config: &ModelConfig,
    windows: &[Prepared],
    sample: Option<&GenericSample>,
) -> Vec<Result<Arc<Model>, DeadLetter>> {
    let names: Vec<String> = windows
        .iter()
        .map(|w| model_name(&schema.name, &w.window.user))
        .collect();
    let samples: Vec<Option<arrow::array::RecordBatch>> =
        windows.iter().map(|w| sampled(w, sample)).collect();
    let sets: Vec<TrainingSet<'_>> = windows
        .iter()
        .zip(&samples)
        .zip(&names)
        .map(|((w, s), name)| TrainingSet {
            name,
            rows: s.as_ref().unwrap_or(&w.batch),
        })
        .collect();
    train_models(backend, schema, config, &sets)
        .into_iter()
        .zip(&names)
        .map(|(m, name)| {
            m.map(Arc::new).map_err(|e| {
                let why = e.chain();
                tracing::error!(model = %name, error = %why, "the model could not be trained");
                DeadLetter::model("training", name, why)
            })
        })
        .collect()
}

/// The training stage as a timely operator.
pub trait Training<'s> {
    /// Trains each epoch's windows once the frontier has passed the epoch.
    fn training(
        self,
        backend: Rc<dyn Backend>,
        schema: Arc<SourceSchema>,
        config: ModelConfig,
        sample: Option<GenericSample>,
        stats: SharedStats,
    ) -> (
        StreamVec<'s, u64, Arc<Model>>,
        StreamVec<'s, u64, DeadLetter>,
    );
}

impl<'s> Training<'s> for StreamVec<'s, u64, Window> {
    fn training(
        self,
        backend: Rc<dyn Backend>,
        schema: Arc<SourceSchema>,
        config: ModelConfig,
        sample: Option<GenericSample>,
        stats: SharedStats,
    ) -> (
        StreamVec<'s, u64, Arc<Model>>,
        StreamVec<'s, u64, DeadLetter>,
    ) {
        self.unary_frontier(Pipeline, "Training", move |_cap, _info| {
            let arrow = schema.arrow_schema();
            let mut pending = Pending::<Window>::default();
            move |(input, frontier), output| {
                input.for_each_stamp(|cap, data| pending.stash(cap, data, 0));
                for (cap, mut windows) in pending.ready(&[frontier]) {
                    windows.sort_by(|a, b| a.user.cmp(&b.user));
                    let started = Instant::now();
                    let mut session = output.session(&cap);
                    let (mut trained, mut failed) = (0, 0);
                    let ranges = chunks(&windows, CHUNK_ROWS);
                    let mut rest = windows.into_iter();
                    for range in ranges {
                        let these = rest.by_ref().take(range.len());
                        let (prepared, bad) = prepare_all(these, &schema, &arrow, "data_prep");
                        failed += bad.len() as u64;
                        session.give_iterator(bad.into_iter().map(Err));
                        for m in train_windows(
                            backend.as_ref(),
                            &schema,
                            &config,
                            &prepared,
                            sample.as_ref(),
                        ) {
                            if m.is_ok() {
                                trained += 1;
                            } else {
                                failed += 1;
                            }
                            session.give(m);
                        }
                    }
                    let seconds = started.elapsed().as_secs_f64();
                    let mut s = stats.borrow_mut();
                    s.train_seconds += seconds;
                    s.train_failed += failed;
                    drop(s);
                    tracing::info!(
                        epoch = *cap.time(),
                        models = trained,
                        failed,
                        seconds,
                        "trained the epoch's windows"
                    );
                }
            }
        })
        .container::<Vec<Result<Arc<Model>, DeadLetter>>>()
        .ok_err(|r| r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Fixture, both, cpu, fast_config, run_stage};

    #[test]
    fn an_epochs_windows_are_cut_in_order_into_calls_of_at_most_the_budgets_rows() {
        let row = Arc::new(crate::testing::blank_row());
        let windows: Vec<Window> = [3, 4, 10, 2, 2, 1]
            .iter()
            .map(|&n| Window {
                user: format!("u{n}"),
                epoch: 0,
                train: true,
                rows: vec![row.clone(); n],
                derived: vec![Vec::new(); n],
                familiar: Vec::new(),
            })
            .collect();
        assert_eq!(chunks(&windows, 6), [0..1, 1..2, 2..3, 3..6]);
        assert_eq!(
            chunks(&windows, 100),
            vec![std::ops::Range { start: 0, end: 6 }]
        );
        assert_eq!(chunks(&windows, 1).len(), 6);
        assert!(chunks(&[], 6).is_empty());
    }

    #[test]
    fn a_model_trains_the_same_whichever_call_it_is_in() {
        let f = Fixture::duo(3, 2);
        let cfg = fast_config();
        let windows: Vec<Prepared> = f
            .prepared(&cfg)
            .into_iter()
            .flat_map(|(_, ps)| ps)
            .filter(|p| p.window.train)
            .collect();
        assert!(windows.len() >= 2);
        let bytes = |ms: Vec<Result<Arc<Model>, DeadLetter>>| -> Vec<Vec<u8>> {
            ms.into_iter()
                .map(|m| m.unwrap().to_bytes().unwrap())
                .collect()
        };
        let backend = cpu();
        let together = bytes(train_windows(
            backend.as_ref(),
            &f.schema,
            &cfg.model,
            &windows,
            None,
        ));
        let alone: Vec<Vec<u8>> = windows
            .chunks(1)
            .flat_map(|w| {
                bytes(train_windows(
                    backend.as_ref(),
                    &f.schema,
                    &cfg.model,
                    w,
                    None,
                ))
            })
            .collect();
        assert_eq!(together, alone);
    }

    #[test]
    fn every_training_window_of_an_epoch_trains_one_model_of_its_rows() {
        let f = Fixture::duo(3, 2);
        let cfg = fast_config();
        let epochs: Vec<(u64, Vec<Window>)> = f
            .prepared(&cfg)
            .into_iter()
            .map(|(t, ps)| {
                let ws = ps.into_iter().filter(|p| p.window.train).map(|p| p.window);
                (t, ws.collect())
            })
            .collect();
        let want: Vec<(u64, String, usize)> = epochs
            .iter()
            .flat_map(|(t, ws)| {
                let mut ws: Vec<(u64, String, usize)> = ws
                    .iter()
                    .map(|w| (*t, model_name("duo", &w.user), w.rows.len()))
                    .collect();
                ws.sort();
                ws
            })
            .collect();
        assert!(!want.is_empty());
        let (schema, model) = (f.schema.clone(), cfg.model.clone());
        let (out, stats) = run_stage(epochs, move |s, stats| {
            both(s.training(cpu(), schema, model, None, stats))
        });
        let got: Vec<(u64, String, usize)> = out
            .iter()
            .map(|(t, m)| {
                let m = m.as_ref().unwrap();
                (*t, m.header.name.clone(), m.header.rows)
            })
            .collect();
        assert_eq!(
            got, want,
            "one model per window, in user order, of the window's rows"
        );
        assert_eq!(stats.train_failed, 0);
    }

    #[test]
    fn the_generic_sample_keeps_sparse_users_whole_and_shares_the_rest_equally() {
        // a: 5 rows, b: 3 (both sparse: under 10), c: 40, d: 12 (dense).
        let mut users: Vec<Option<&str>> = Vec::new();
        for (u, n) in [("a", 5), ("c", 40), ("b", 3), ("d", 12)] {
            users.extend(std::iter::repeat_n(Some(u), n));
        }
        let cfg = GenericSample {
            user: "generic_user".into(),
            max_rows: 30,
            sparse_below: 10,
        };
        let kept = sample_generic(&users, &cfg).unwrap();
        let count = |u: &str| kept.iter().filter(|&&i| users[i] == Some(u)).count();
        // 8 sparse rows kept whole; 22 left: d keeps its 11 (half), c the other 11.
        assert_eq!(
            (count("a"), count("b"), count("c"), count("d")),
            (5, 3, 11, 11)
        );
        assert_eq!(kept.len(), 30);
        assert!(kept.windows(2).all(|w| w[0] < w[1]), "in window order");
        // c's rows spread over its window: its first and one of its last rows.
        let c: Vec<usize> = kept
            .iter()
            .copied()
            .filter(|&i| users[i] == Some("c"))
            .collect();
        assert_eq!(c[0], 5);
        assert!(*c.last().unwrap() >= 5 + 36);
        assert_eq!(kept, sample_generic(&users, &cfg).unwrap(), "deterministic");
        // A window within the bound is kept whole.
        let all = GenericSample {
            max_rows: 60,
            ..cfg.clone()
        };
        assert_eq!(sample_generic(&users, &all), None);
        // Sparse users beyond the bound share it; dense users get nothing.
        let tight = GenericSample { max_rows: 6, ..cfg };
        let kept = sample_generic(&users, &tight).unwrap();
        assert_eq!(kept.len(), 6);
        assert!(kept.iter().all(|&i| matches!(users[i], Some("a" | "b"))));
    }
}
