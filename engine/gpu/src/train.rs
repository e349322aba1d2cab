//! A pack of models in training on the device, for every epoch: per epoch the host shuffles
//! each model's rows (from its seeded stream, as the CPU does) and runs step `s` of every
//! live model in one launch sequence ([`GpuBackend::train_step`]: batch assembly with swap
//! noise, forward, losses and their gradient, backward with the fused SGD update), then reads
//! the epoch's losses and validation losses once and applies early stopping. Inputs: the
//! pack's jobs (one group, so one [`Layout`]) and the config; outputs: one [`Trained`] per job.
//! State, for the training's length: the weights and training rows on the device, the random
//! streams and row orders on the host.

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
use dfp_model::network::{Network, Shape};
use dfp_model::train::{EarlyStopping, TrainJob, Trained, loss_stats};

/// The device buffers of one training batch: clean (the targets) and noisy (the input) dense
/// values and codes, `rows x n_dense` and `rows x n_cat`.
pub(crate) struct Batch {
    pub(crate) clean_dense: Handle,
    pub(crate) clean_cats: Handle,
    pub(crate) noisy_dense: Handle,
    pub(crate) noisy_cats: Handle,
}

impl<R: Runtime> GpuBackend<R> {
    /// Trains one pack of models (same layout) for every epoch on the device.
    pub(crate) fn train_pack(&self, jobs: &[&TrainJob], config: &ModelConfig) -> Vec<Trained> {
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
        let p = self.params(&lay, &nets.iter().collect::<Vec<_>>());
        // The training rows stay on the device; each model's rows start at `base[m]`.
        let mut base = Vec::with_capacity(jobs.len());
        let mut total = 0;
        for j in jobs {
            base.push(total);
            total += j.train.rows;
        }
        let all: Vec<(&Encoded, usize, usize)> =
            jobs.iter().map(|j| (&j.train, 0, j.train.rows)).collect();
        let (dense, cats) = inputs(&all);
        let (train_dense, train_cats) = (self.upload_f32(&dense), self.upload_u32(&cats));
        let n = jobs.len();
        let mut epoch_loss = self.upload_f32(&vec![0.0; n]);
        let mut orders: Vec<Vec<usize>> =
            jobs.iter().map(|j| (0..j.train.rows).collect()).collect();
        let mut stopping: Vec<EarlyStopping> = jobs
            .iter()
            .map(|_| EarlyStopping::new(config.patience))
            .collect();
        let mut live = vec![true; n];
        let mut epochs_run = vec![0usize; n];
        let mut train_loss = vec![0.0f64; n];
        let mut val_loss: Vec<Option<f64>> = vec![None; n];
        let bs = config.batch_size.max(1);
        let mut salt = 0u32;
        let vals: Vec<&Encoded> = jobs.iter().map(|j| &j.validation).collect();
        for epoch in 0..config.epochs {
            if !live.contains(&true) {
                break;
            }
            let lr = config.lr_at(epoch) as f32;
            for m in (0..n).filter(|&m| live[m]) {
                orders[m].shuffle(&mut rngs[m]);
            }
            let steps = (0..n)
                .filter(|&m| live[m])
                .map(|m| jobs[m].train.rows.div_ceil(bs))
                .max()
                .unwrap_or(0);
            for s in 0..steps {
                let mut plan = Plan::default();
                for m in (0..n).filter(|&m| live[m]) {
                    let chunk = orders[m].chunks(bs).nth(s).unwrap_or(&[]);
                    if !chunk.is_empty() {
                        let sources: Vec<u32> =
                            chunk.iter().map(|&r| (base[m] + r) as u32).collect();
                        plan.push(&lay, m, &sources);
                    }
                }
                salt = salt.wrapping_add(1);
                self.train_step(
                    &lay,
                    &p,
                    &plan,
                    [&train_dense, &train_cats],
                    &epoch_loss,
                    (lr, salt, config.swap_p as f32),
                );
            }
            let losses = self.read_f32(epoch_loss);
            epoch_loss = self.upload_f32(&vec![0.0; n]);
            let (vl, _) = self.loss_by_model(&lay, &p, &vals, config.eval_batch_size, false);
            let running: Vec<usize> = (0..n).filter(|&m| live[m]).collect();
            for m in running {
                epochs_run[m] += 1;
                let batches = jobs[m].train.rows.div_ceil(bs).max(1);
                train_loss[m] = f64::from(losses[m]) / batches as f64;
                if let Some(loss) = vl[m] {
                    val_loss[m] = Some(loss);
                    if config.early_stopping && stopping[m].observe(loss) {
                        live[m] = false;
                    }
                }
            }
        }
        let trains: Vec<&Encoded> = jobs.iter().map(|j| &j.train).collect();
        let (_, evals) = self.loss_by_model(&lay, &p, &trains, config.eval_batch_size, true);
        let (w, b, e) = (
            self.read_f32(p.weights),
            self.read_f32(p.biases),
            self.read_f32(p.embeddings),
        );
        lay.unflatten(&w, &b, &e)
            .into_iter()
            .zip(evals)
            .enumerate()
            .map(|(m, (network, ev))| {
                let (loss_mean, loss_std) = loss_stats(&ev);
                Trained {
                    network,
                    epochs_run: epochs_run[m],
                    train_loss: train_loss[m],
                    val_loss: val_loss[m],
                    loss_mean,
                    loss_std,
                }
            })
            .collect()
    }

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
