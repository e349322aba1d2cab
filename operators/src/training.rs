//! Training (Morpheus' `dfp_training` module / `DFPTraining`): trains one autoencoder per
//! training window, all windows of an epoch on this worker in one backend call (the CPU
//! backend spreads whole models over its threads).
//!
//! Input: [`Prepared`] training windows. Output: trained models (to the registry writer) and
//! [`DeadLetter`]s for windows that could not be trained. State: the windows of epochs the
//! frontier has not passed yet; an epoch trains once all of its windows are in, so a model is
//! trained exactly once per window.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use dfp_engine::model::{Backend, Model, ModelConfig, TrainingSet, train_models};
use dfp_engine::registry::model_name;
use dfp_engine::schema::SourceSchema;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Operator;
use timely::dataflow::operators::core::OkErr;

use crate::data_prep::Prepared;
use crate::dead_letter::DeadLetter;
use crate::frontier::Pending;
use crate::metrics::SharedStats;

/// Trains the windows of one epoch: a model or a dead letter per window, in window order.
pub fn train_windows(
    backend: &dyn Backend,
    schema: &SourceSchema,
    config: &ModelConfig,
    windows: &[Prepared],
) -> Vec<Result<Arc<Model>, DeadLetter>> {
    let names: Vec<String> = windows
        .iter()
        .map(|w| model_name(&schema.name, &w.window.user))
        .collect();
    let sets: Vec<TrainingSet<'_>> = windows
        .iter()
        .zip(&names)
        .map(|(w, name)| TrainingSet {
            name,
            rows: &w.batch,
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
        stats: SharedStats,
    ) -> (
        StreamVec<'s, u64, Arc<Model>>,
        StreamVec<'s, u64, DeadLetter>,
    );
}

impl<'s> Training<'s> for StreamVec<'s, u64, Prepared> {
    fn training(
        self,
        backend: Rc<dyn Backend>,
        schema: Arc<SourceSchema>,
        config: ModelConfig,
        stats: SharedStats,
    ) -> (
        StreamVec<'s, u64, Arc<Model>>,
        StreamVec<'s, u64, DeadLetter>,
    ) {
        self.unary_frontier(Pipeline, "Training", move |_cap, _info| {
            let mut pending = Pending::<Prepared>::default();
            move |(input, frontier), output| {
                input.for_each_stamp(|cap, data| pending.stash(cap, data, 0));
                for (cap, mut windows) in pending.ready(&[frontier]) {
                    windows.sort_by(|a, b| a.window.user.cmp(&b.window.user));
                    let started = Instant::now();
                    let models = train_windows(backend.as_ref(), &schema, &config, &windows);
                    let mut s = stats.borrow_mut();
                    s.train_seconds += started.elapsed().as_secs_f64();
                    s.train_failed += models.iter().filter(|m| m.is_err()).count() as u64;
                    drop(s);
                    tracing::info!(
                        epoch = *cap.time(),
                        models = models.len(),
                        seconds = started.elapsed().as_secs_f64(),
                        "trained the epoch's windows"
                    );
                    output.session(&cap).give_iterator(models.into_iter());
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
    fn every_training_window_of_an_epoch_trains_one_model_of_its_rows() {
        let f = Fixture::duo(3, 2);
        let cfg = fast_config();
        let epochs: Vec<(u64, Vec<Prepared>)> = f
            .prepared(&cfg)
            .into_iter()
            .map(|(t, ps)| (t, ps.into_iter().filter(|p| p.window.train).collect()))
            .collect();
        let want: Vec<(u64, String, usize)> = epochs
            .iter()
            .flat_map(|(t, ps)| {
                let mut ws: Vec<(u64, String, usize)> = ps
                    .iter()
                    .map(|p| (*t, model_name("duo", &p.window.user), p.window.rows.len()))
                    .collect();
                ws.sort();
                ws
            })
            .collect();
        assert!(!want.is_empty());
        let (schema, model) = (f.schema.clone(), cfg.model.clone());
        let (out, stats) = run_stage(epochs, move |s, stats| {
            both(s.training(cpu(), schema, model, stats))
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
        // The training time is recorded at all (not a speed check: speed is bench/'s).
        assert!(stats.train_seconds > 0.0);
    }
}
