//! A pack of models in training: the GPU's side of `dfp_model`'s shared training loop
//! ([`dfp_model::train::train_models`]), which owns the epochs, the learning-rate decay, the
//! validation and early stopping per model.
//!
//! Inputs: the pack's jobs (one group, so one [`Layout`]) and the config. State, for the
//! training's length: every model's weights ([`Params`]) and training rows on the device, and
//! on the host each model's ChaCha8 stream (its initial weights, then its shuffles, as on the
//! CPU) and row order, and the step counter that salts the device's swap noise. One epoch
//! ([`TrainSteps::epoch`]) runs step `s` of every active model in one launch sequence
//! ([`GpuBackend::train_step`]: batch assembly with swap noise, forward, losses and their
//! gradient, backward with the fused SGD update), accumulating each model's batch losses on the
//! device, read once per epoch. Outputs: per epoch the models' mean batch losses and validation
//! losses; at the end the weights, read back once, and the evaluation of the clean training
//! rows.

use cubecl::prelude::*;
use cubecl::server::Handle;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::GpuBackend;
use crate::device::arg;
use crate::kernels;
use crate::layout::{Layout, Params};
use crate::plans::{Plan, grid_1d, inputs};
use dfp_model::config::ModelConfig;
use dfp_model::encode::Encoded;
use dfp_model::network::{Evaluation, Network, Shape};
use dfp_model::train::{TrainJob, TrainSteps};

/// The device buffers of one training batch: clean (the targets) and noisy (the input) dense
/// values and codes, `rows x n_dense` and `rows x n_cat`.
pub(crate) struct Batch {
    pub(crate) clean_dense: Handle,
    pub(crate) clean_cats: Handle,
    pub(crate) noisy_dense: Handle,
    pub(crate) noisy_cats: Handle,
}

/// One pack of models (one layout) in training on the device.
pub(crate) struct PackSteps<'a, R: Runtime> {
    gpu: &'a GpuBackend<R>,
    jobs: &'a [&'a TrainJob],
    config: &'a ModelConfig,
    lay: Layout,
    params: Params,
    rngs: Vec<ChaCha8Rng>,
    orders: Vec<Vec<usize>>,
    /// Each model's first row in the resident training rows.
    base: Vec<usize>,
    /// The training rows of every model: dense values and codes.
    train: [Handle; 2],
    /// Steps taken so far: the swap noise's salt.
    salt: u32,
}

impl<'a, R: Runtime> PackSteps<'a, R> {
    /// Uploads the pack: initial weights drawn from each job's seed (as the CPU draws them),
    /// and every model's training rows.
    pub(crate) fn new(
        gpu: &'a GpuBackend<R>,
        jobs: &'a [&'a TrainJob],
        config: &'a ModelConfig,
    ) -> Self {
        let shapes: Vec<&Shape> = jobs.iter().map(|j| &j.shape).collect();
        let seeds: Vec<u64> = jobs.iter().map(|j| j.seed).collect();
        let lay = Layout::new(&shapes, &seeds);
        let mut rngs: Vec<ChaCha8Rng> = jobs
            .iter()
            .map(|j| ChaCha8Rng::seed_from_u64(j.seed))
            .collect();
        let nets: Vec<Network> = jobs
            .iter()
            .zip(&mut rngs)
            .map(|(j, rng)| Network::new(j.shape.clone(), rng))
            .collect();
        let params = gpu.params(&lay, &nets.iter().collect::<Vec<_>>());
        let mut base = Vec::with_capacity(jobs.len());
        let mut total = 0;
        for j in jobs {
            base.push(total);
            total += j.train.rows;
        }
        let all: Vec<(&Encoded, usize, usize)> =
            jobs.iter().map(|j| (&j.train, 0, j.train.rows)).collect();
        let (dense, cats) = inputs(&all);
        PackSteps {
            gpu,
            jobs,
            config,
            lay,
            params,
            rngs,
            orders: jobs.iter().map(|j| (0..j.train.rows).collect()).collect(),
            base,
            train: [gpu.upload_f32(&dense), gpu.upload_u32(&cats)],
            salt: 0,
        }
    }

    /// The plan of step `s`: batch `s` of every active model's shuffled rows.
    fn step_plan(&self, active: &[bool], s: usize) -> Plan {
        let bs = self.config.batch_size.max(1);
        let mut plan = Plan::default();
        for m in (0..self.jobs.len()).filter(|&m| active[m]) {
            let chunk = self.orders[m].chunks(bs).nth(s).unwrap_or(&[]);
            if !chunk.is_empty() {
                let sources: Vec<u32> = chunk.iter().map(|&r| (self.base[m] + r) as u32).collect();
                plan.push(&self.lay, m, &sources);
            }
        }
        plan
    }
}

impl<R: Runtime> TrainSteps for PackSteps<'_, R> {
    fn models(&self) -> usize {
        self.jobs.len()
    }

    fn epoch(&mut self, active: &[bool], lr: f32) -> Vec<f64> {
        let n = self.jobs.len();
        let bs = self.config.batch_size.max(1);
        let epoch_loss = self.gpu.upload_f32(&vec![0.0; n]);
        for m in (0..n).filter(|&m| active[m]) {
            self.orders[m].shuffle(&mut self.rngs[m]);
        }
        let steps = (0..n)
            .filter(|&m| active[m])
            .map(|m| self.jobs[m].train.rows.div_ceil(bs))
            .max()
            .unwrap_or(0);
        for s in 0..steps {
            let plan = self.step_plan(active, s);
            self.salt = self.salt.wrapping_add(1);
            let swap_p = self.config.swap_p as f32;
            let [dense, cats] = &self.train;
            self.gpu.train_step(
                &self.lay,
                &self.params,
                &plan,
                [dense, cats],
                &epoch_loss,
                (lr, self.salt, swap_p),
            );
        }
        let losses = self.gpu.read_f32(epoch_loss);
        self.jobs
            .iter()
            .zip(losses)
            .map(|(j, loss)| f64::from(loss) / j.train.rows.div_ceil(bs).max(1) as f64)
            .collect()
    }

    fn validation(&mut self, active: &[bool]) -> Vec<Option<f64>> {
        let none = Encoded::default();
        let sets: Vec<&Encoded> = self
            .jobs
            .iter()
            .zip(active)
            .map(|(j, &a)| if a { &j.validation } else { &none })
            .collect();
        let size = self.config.eval_batch_size;
        let (losses, _) = self
            .gpu
            .loss_by_model(&self.lay, &self.params, &sets, size, false);
        losses
    }

    fn finish(self) -> Vec<(Network, Evaluation)> {
        let trains: Vec<&Encoded> = self.jobs.iter().map(|j| &j.train).collect();
        let size = self.config.eval_batch_size;
        let (_, evals) = self
            .gpu
            .loss_by_model(&self.lay, &self.params, &trains, size, true);
        let p = self.params;
        let (w, b, e) = (
            self.gpu.read_f32(p.weights),
            self.gpu.read_f32(p.biases),
            self.gpu.read_f32(p.embeddings),
        );
        self.lay
            .unflatten(&w, &b, &e)
            .into_iter()
            .zip(evals)
            .collect()
    }
}

impl<R: Runtime> GpuBackend<R> {
    /// Copies a step's rows out of the resident training rows (`train`: dense values, codes)
    /// into a clean batch, and a noisy one with dfencoder's swap noise: each value replaced with
    /// probability `swap_p` by the same column of a random row of the model's batch, drawn from
    /// a hash of (model seed, `salt`, row, column).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn make_batch(
        &self,
        lay: &Layout,
        p: &Params,
        plan: &Plan,
        rows: &Handle,
        [train_dense, train_cats]: [&Handle; 2],
        salt: u32,
        swap_p: f32,
    ) -> Batch {
        let nd = lay.n_dense();
        let batch = Batch {
            clean_dense: self.empty(plan.rows * nd),
            clean_cats: self.empty(plan.rows * lay.n_cat),
            noisy_dense: self.empty(plan.rows * nd),
            noisy_cats: self.empty(plan.rows * lay.n_cat),
        };
        let (count, dim) = grid_1d(plan.rows * (nd + lay.n_cat));
        kernels::make_batch::launch::<R>(
            &self.client,
            count,
            dim,
            arg(train_dense),
            arg(train_cats),
            arg(&p.models),
            arg(rows),
            arg(&batch.clean_dense),
            arg(&batch.clean_cats),
            arg(&batch.noisy_dense),
            arg(&batch.noisy_cats),
            plan.rows as u32,
            salt,
            swap_p,
            nd,
            lay.n_cat,
        );
        batch
    }

    /// One SGD step of every model in `plan` on its batch (`(lr, salt, swap_p)`: the learning
    /// rate, the step's noise salt and the swap probability); each model's batch net loss is
    /// added into `epoch_loss[model]`.
    pub(crate) fn train_step(
        &self,
        lay: &Layout,
        p: &Params,
        plan: &Plan,
        train: [&Handle; 2],
        epoch_loss: &Handle,
        (lr, salt, swap_p): (f32, u32, f32),
    ) {
        if plan.rows == 0 {
            return;
        }
        let rows = self.upload_u32(&plan.table);
        let batch = self.make_batch(lay, p, plan, &rows, train, salt, swap_p);
        let noisy = [&batch.noisy_dense, &batch.noisy_cats];
        let fwd = self.forward(lay, p, plan, &rows, noisy);
        let stats = self.upload_f32(&[]);
        let clean = [&batch.clean_dense, &batch.clean_cats];
        let scores = self.losses(lay, p, plan, &rows, &fwd.out, clean, &stats, true, false);
        self.piece_losses(lay, plan, &scores, epoch_loss, true);
        self.backward(lay, p, plan, &rows, &fwd, &batch.noisy_cats, lr);
    }
}
