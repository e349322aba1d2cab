//! The GPU backend: the autoencoder's training and scoring as cubecl kernels, on CUDA or on
//! wgpu (Vulkan, Metal; in CI Mesa's software Vulkan), behind the same [`Backend`] trait as
//! the CPU backend.
//!
//! Many users' models run in one launch sequence. Models of one schema share their numeric,
//! binary and categorical counts and their hidden widths; only their vocabularies (so their
//! embedding and head widths) differ. A *pack* holds all their weights in three device buffers
//! (dense weights, biases, embedding tables) and a per-model layout table; each kernel reads
//! a row's model from a per-row table, and the GEMM is grouped (one problem per model and row
//! range, each with its own sizes). Training runs every model's batch `s` of an epoch in one
//! step: batch assembly and swap noise, forward, losses and their gradient, backward with the
//! SGD update fused into the weight-gradient GEMM; the weights stay on the device for all
//! epochs and are read back once. The epoch loop itself (learning-rate decay, validation,
//! early stopping per model, bookkeeping) is `dfp_model`'s, shared with the CPU
//! ([`dfp_model::train::train_models`]); a pack is one [`dfp_model::train::TrainSteps`]. The
//! host only shuffles each model's rows per epoch (as the CPU backend does, from the model's
//! seed) and reads the losses once per epoch.
//!
//! The swap noise is drawn on the device from a hash of (model seed, step, row, column), not
//! from the CPU's ChaCha stream, so a model trained here is not bit-equal to the CPU's: it
//! starts from the same weights and reaches the same loss within the conformance suite's
//! tolerance. Scores of the same weights agree with the CPU's within float rounding.
//!
//! Start-up ([`cuda`], [`wgpu`]; `dfp_engine::device` picks by `--device`): CUDA only where the
//! driver library loads and a device answers, wgpu only where an adapter is found; any
//! failure to start a runtime is an error, not a panic.
//!
//! The modules, by concern:
//! - `device`: runtime start-up (the adapter pre-check), `guard` (a device panic becomes an
//!   error), buffer uploads and reads.
//! - `layout`: where each model of a pack lives in the pack's buffers; weights flattened in
//!   and out.
//! - `plans`: the rows of one launch (pieces of models, the per-row table), GEMM problems,
//!   grids, and how jobs are cut into packs.
//! - `forward`: the forward pass, the row losses, and evaluation (scores, validation losses).
//! - `train`: a pack in training (the shared loop's steps), batch assembly, one SGD step.
//! - `backward`: backpropagation with the fused SGD updates.
//! - `kernels`: the cubecl kernels themselves; `kernel_tests` checks each one alone against a
//!   CPU reference on every runtime present.

mod backward;
mod device;
mod forward;
mod kernels;
mod layout;
mod plans;
mod train;

#[cfg(test)]
mod kernel_tests;

use cubecl::prelude::*;

use dfp_core::{Error, Result};
use dfp_model::backend::{Backend, EvalJob};
use dfp_model::config::ModelConfig;
use dfp_model::network::Evaluation;
use dfp_model::train::{TrainJob, Trained, train_models};

pub use device::{cuda, wgpu};

/// The cubecl backend on one device of runtime `R`.
pub struct GpuBackend<R: Runtime> {
    client: ComputeClient<R>,
    label: String,
}

impl<R: Runtime> std::fmt::Debug for GpuBackend<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuBackend")
            .field("label", &self.label)
            .finish()
    }
}

impl<R: Runtime> Backend for GpuBackend<R> {
    fn name(&self) -> String {
        self.label.clone()
    }

    fn train(&self, jobs: &[TrainJob], config: &ModelConfig) -> Result<Vec<Trained>> {
        let mut out: Vec<Option<Trained>> = vec![None; jobs.len()];
        for group in plans::groups(jobs.iter().map(|j| &j.shape)) {
            for pack in plans::packs(jobs, &group, config.batch_size) {
                let members: Vec<&TrainJob> = pack.iter().map(|&i| &jobs[i]).collect();
                let trained = self.guard(|| {
                    train_models(train::PackSteps::new(self, &members, config), config)
                })?;
                for (i, t) in pack.into_iter().zip(trained) {
                    out[i] = Some(t);
                }
            }
        }
        out.into_iter()
            .map(|t| t.ok_or_else(|| Error::model(&self.label, "a model was not trained")))
            .collect()
    }

    fn evaluate(&self, jobs: &[EvalJob<'_>], _batch_size: usize) -> Result<Vec<Evaluation>> {
        let mut out = vec![Evaluation::default(); jobs.len()];
        for group in plans::groups(jobs.iter().map(|j| &j.network.shape)) {
            let members: Vec<&EvalJob<'_>> = group.iter().map(|&i| &jobs[i]).collect();
            let mut evals = vec![Evaluation::default(); members.len()];
            self.guard(|| self.evaluate_group(&members, &mut evals))?;
            for (i, ev) in group.into_iter().zip(evals) {
                out[i] = ev;
            }
        }
        Ok(out)
    }
}
