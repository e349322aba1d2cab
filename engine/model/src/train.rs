//! The training loop, written once for every backend. [`train_models`] runs it over a
//! [`TrainSteps`]: a set of models that one backend holds and steps (the CPU's [`CpuModels`],
//! weights in host memory stepped one model after another; the GPU backend's pack, many models'
//! weights resident on the device, every model's batch `s` in one launch sequence).
//!
//! The loop owns what is the same on every backend: the epochs; the epoch's decayed learning
//! rate ([`ModelConfig::lr_at`]); after each epoch, every still-active model's validation loss
//! and Morpheus' early stopping ([`EarlyStopping`]), per model; models that stopped are not
//! stepped again; the bookkeeping of `epochs_run`, `train_loss` (the mean net loss of the last
//! epoch's batches) and `val_loss`; and at the end the per-feature loss mean and population std
//! over each model's clean training rows ([`loss_stats`]): the statistics behind `z_loss`.
//! A backend owns the steps ([`TrainSteps::epoch`]): per model and epoch a seeded shuffle,
//! batches of `batch_size` rows with swap noise applied to the input (the clean rows are the
//! target) and one SGD step per batch; and the losses on clean rows: the validation loss (mean
//! over eval batches of the mean over features, as dfencoder logs it) and the final evaluation
//! of the training rows.
//!
//! Inputs: the models' jobs (shape, training and validation rows, seed) and the config.
//! Outputs: one [`Trained`] per model, in the set's order. State: the loop keeps per model its
//! early-stopping rule, whether it still trains, and its measurements; the backend keeps the
//! weights and each model's random stream. Everything is dropped when the call returns.
//!
//! On the CPU everything random comes from one ChaCha8 stream seeded per model (its initial
//! weights, then per epoch its shuffle and its batches' swap noise, in that order), so a model
//! depends only on its data, its config and its seed: not on the thread count or on which
//! models share a call.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::config::ModelConfig;
use super::encode::Encoded;
use super::network::{Evaluation, Network, Shape, Workspace};

/// One model to train.
#[derive(Debug, Clone)]
pub struct TrainJob {
    /// The model's name (used in logs and errors).
    pub name: String,
    /// The network's dimensions.
    pub shape: Shape,
    /// Training rows, in time order.
    pub train: Encoded,
    /// Validation rows (the chronologically last ones); may have no rows.
    pub validation: Encoded,
    /// The model's seed.
    pub seed: u64,
}

/// A trained network and what training measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Trained {
    /// The weights.
    pub network: Network,
    /// Epochs run (fewer than configured when early stopping stopped training).
    pub epochs_run: usize,
    /// Mean net loss of the last epoch's training batches (noisy input).
    pub train_loss: f64,
    /// Net validation loss after the last epoch (None without validation rows).
    pub val_loss: Option<f64>,
    /// Per feature, the mean loss over the clean training split.
    pub loss_mean: Vec<f64>,
    /// Per feature, the population std of the loss over the clean training split (0 -> 1).
    pub loss_std: Vec<f64>,
}

/// Morpheus' early stopping: stop once the validation loss has risen (against the previous
/// epoch's) in more than `max(patience, 0)` consecutive epochs.
#[derive(Debug, Clone)]
pub struct EarlyStopping {
    patience: i64,
    last: f64,
    rises: i64,
}

impl EarlyStopping {
    /// A fresh rule.
    pub fn new(patience: i64) -> Self {
        EarlyStopping {
            patience: patience.max(0),
            last: f64::INFINITY,
            rises: 0,
        }
    }

    /// Records an epoch's validation loss; true when training should stop.
    pub fn observe(&mut self, loss: f64) -> bool {
        if loss > self.last {
            self.rises += 1;
        } else {
            self.rises = 0;
        }
        self.last = loss;
        self.rises > self.patience
    }
}

/// dfencoder's swap noise: in each column, each value is replaced with probability `p` by that
/// column's value in a random row of the batch.
pub fn swap_noise(batch: &Encoded, p: f64, rng: &mut impl Rng) -> Encoded {
    fn swap<T: Copy>(src: &[T], dst: &mut [T], rows: usize, p: f64, rng: &mut impl Rng) {
        let w = src.len().checked_div(rows).unwrap_or(0);
        for j in 0..w {
            for r in 0..rows {
                if rng.random::<f64>() < p {
                    dst[r * w + j] = src[rng.random_range(0..rows) * w + j];
                }
            }
        }
    }
    let mut out = batch.clone();
    if p > 0.0 {
        // Swapped values always come from the clean batch.
        let rows = batch.rows;
        swap(&batch.numeric, &mut out.numeric, rows, p, rng);
        swap(&batch.binary, &mut out.binary, rows, p, rng);
        swap(&batch.categorical, &mut out.categorical, rows, p, rng);
    }
    out
}

/// Evaluates `input` in batches of `batch_size` rows.
pub fn evaluate_in_batches(
    network: &Network,
    input: &Encoded,
    batch_size: usize,
    ws: &mut Workspace,
    threads: usize,
) -> Evaluation {
    let mut ev = Evaluation::default();
    let mut start = 0;
    while start < input.rows {
        let end = (start + batch_size.max(1)).min(input.rows);
        ev.extend(network.evaluate(&input.slice(start, end), ws, threads));
        start = end;
    }
    ev
}

/// Per feature mean and population std (0 or not finite -> 1) of an evaluation's losses.
pub fn loss_stats(ev: &Evaluation) -> (Vec<f64>, Vec<f64>) {
    let f = ev.losses.len().checked_div(ev.rows).unwrap_or(0);
    let n = ev.rows.max(1) as f64;
    let mut mean = vec![0.0f64; f];
    for row in ev.losses.chunks_exact(f.max(1)) {
        mean.iter_mut()
            .zip(row)
            .for_each(|(m, &l)| *m += f64::from(l) / n);
    }
    let mut var = vec![0.0f64; f];
    for row in ev.losses.chunks_exact(f.max(1)) {
        var.iter_mut()
            .zip(row)
            .zip(&mean)
            .for_each(|((v, &l), m)| *v += (f64::from(l) - m).powi(2) / n);
    }
    let std = var
        .into_iter()
        .map(|v| {
            let s = v.sqrt();
            if s > 0.0 && s.is_finite() { s } else { 1.0 }
        })
        .collect();
    (mean, std)
}

/// A set of models that one backend trains together: the steps of the training loop that
/// [`train_models`] drives. Models are numbered `0..models()`; `active[m]` says whether model
/// `m` still trains (early stopping clears it, and a model cleared is not stepped again).
///
/// ```
/// use dfp_model::config::ModelConfig;
/// use dfp_model::network::{Evaluation, Network, Shape};
/// use dfp_model::train::{TrainSteps, train_models};
/// use rand::SeedableRng;
///
/// /// One model whose validation loss falls for two epochs, then rises.
/// struct Toy {
///     network: Network,
///     lrs: Vec<f32>,
/// }
///
/// impl TrainSteps for Toy {
///     fn models(&self) -> usize {
///         1
///     }
///     fn epoch(&mut self, _active: &[bool], lr: f32) -> Vec<f64> {
///         self.lrs.push(lr);
///         vec![0.5]
///     }
///     fn validation(&mut self, _active: &[bool]) -> Vec<Option<f64>> {
///         let losses = [3.0, 2.0, 2.5, 2.7];
///         vec![Some(losses[self.lrs.len() - 1])]
///     }
///     fn finish(self) -> Vec<(Network, Evaluation)> {
///         vec![(self.network, Evaluation::default())]
///     }
/// }
///
/// let shape = Shape { n_numeric: 1, n_binary: 0, categories: vec![], hidden: vec![2] };
/// let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
/// let toy = Toy { network: Network::new(shape, &mut rng), lrs: Vec::new() };
/// let config = ModelConfig { epochs: 30, patience: 0, early_stopping: true, ..ModelConfig::default() };
/// let trained = train_models(toy, &config);
/// // Stopped at the first rise (patience 0), after the third epoch.
/// assert_eq!(trained[0].epochs_run, 3);
/// assert_eq!(trained[0].val_loss, Some(2.5));
/// assert_eq!(trained[0].train_loss, 0.5);
/// ```
pub trait TrainSteps {
    /// Models in the set.
    fn models(&self) -> usize;

    /// One epoch of SGD steps at learning rate `lr` for every model with `active[m]`: per model
    /// a shuffle of its training rows from its own seeded stream, batches of `batch_size` rows
    /// with swap noise on the input, one step per batch. Returns per model the mean net loss of
    /// its batches (any value for an inactive model).
    fn epoch(&mut self, active: &[bool], lr: f32) -> Vec<f64>;

    /// Per model with `active[m]` and validation rows, its validation loss (dfencoder's: the
    /// mean over eval batches of each batch's net loss); `None` for the others.
    fn validation(&mut self, active: &[bool]) -> Vec<Option<f64>>;

    /// Ends training: per model, its weights and the evaluation of its clean training rows
    /// (the loss statistics are taken from it).
    fn finish(self) -> Vec<(Network, Evaluation)>;
}

/// What the loop measured for one model.
#[derive(Debug, Clone)]
struct Progress {
    stopping: EarlyStopping,
    epochs_run: usize,
    train_loss: f64,
    val_loss: Option<f64>,
}

/// The training loop: runs `steps` for `config.epochs` epochs at the decayed learning rate,
/// with per-model validation and early stopping, and returns one [`Trained`] per model of the
/// set, in its order (fewer only if the backend's [`TrainSteps::finish`] returns fewer).
pub fn train_models<T: TrainSteps>(mut steps: T, config: &ModelConfig) -> Vec<Trained> {
    let n = steps.models();
    let mut active = vec![true; n];
    let mut progress = vec![
        Progress {
            stopping: EarlyStopping::new(config.patience),
            epochs_run: 0,
            train_loss: 0.0,
            val_loss: None,
        };
        n
    ];
    for epoch in 0..config.epochs {
        if !active.contains(&true) {
            break;
        }
        let lr = config.lr_at(epoch) as f32;
        let train = steps.epoch(&active, lr);
        let validation = steps.validation(&active);
        let models = progress.iter_mut().zip(active.iter_mut());
        for ((p, live), (&loss, val)) in models.zip(train.iter().zip(validation)) {
            if !*live {
                continue;
            }
            p.epochs_run += 1;
            p.train_loss = loss;
            if let Some(val) = val {
                p.val_loss = Some(val);
                if config.early_stopping && p.stopping.observe(val) {
                    *live = false;
                }
            }
        }
    }
    steps
        .finish()
        .into_iter()
        .zip(progress)
        .map(|((network, ev), p)| {
            let (loss_mean, loss_std) = loss_stats(&ev);
            Trained {
                network,
                epochs_run: p.epochs_run,
                train_loss: p.train_loss,
                val_loss: p.val_loss,
                loss_mean,
                loss_std,
            }
        })
        .collect()
}

/// The CPU's [`TrainSteps`]: models in host memory, stepped one after another on the calling
/// thread (`threads` > 1 splits each GEMM). Each model draws from its own ChaCha8 stream,
/// seeded from its job: its initial weights, then per epoch its shuffle and its batches' swap
/// noise.
#[derive(Debug)]
pub struct CpuModels<'a> {
    config: &'a ModelConfig,
    threads: usize,
    ws: Workspace,
    models: Vec<CpuModel<'a>>,
}

/// One model of a [`CpuModels`] set.
#[derive(Debug)]
struct CpuModel<'a> {
    job: &'a TrainJob,
    rng: ChaCha8Rng,
    network: Network,
    order: Vec<usize>,
}

impl<'a> CpuModels<'a> {
    /// Fresh models for `jobs` (initial weights drawn from each job's seed).
    pub fn new(
        jobs: impl IntoIterator<Item = &'a TrainJob>,
        config: &'a ModelConfig,
        threads: usize,
    ) -> Self {
        let models = jobs
            .into_iter()
            .map(|job| {
                let mut rng = ChaCha8Rng::seed_from_u64(job.seed);
                let network = Network::new(job.shape.clone(), &mut rng);
                CpuModel {
                    job,
                    rng,
                    network,
                    order: (0..job.train.rows).collect(),
                }
            })
            .collect();
        CpuModels {
            config,
            threads,
            ws: Workspace::default(),
            models,
        }
    }
}

impl TrainSteps for CpuModels<'_> {
    fn models(&self) -> usize {
        self.models.len()
    }

    fn epoch(&mut self, active: &[bool], lr: f32) -> Vec<f64> {
        let (config, threads) = (self.config, self.threads);
        let mut out = vec![0.0; self.models.len()];
        for ((m, loss), _) in self
            .models
            .iter_mut()
            .zip(&mut out)
            .zip(active)
            .filter(|(_, a)| **a)
        {
            m.order.shuffle(&mut m.rng);
            let (mut sum, mut batches) = (0.0, 0);
            for chunk in m.order.chunks(config.batch_size.max(1)) {
                let clean = m.job.train.select(chunk);
                let noisy = swap_noise(&clean, config.swap_p, &mut m.rng);
                sum += m
                    .network
                    .train_step(&noisy, &clean, lr, &mut self.ws, threads);
                batches += 1;
            }
            *loss = sum / f64::from(batches.max(1));
        }
        out
    }

    fn validation(&mut self, active: &[bool]) -> Vec<Option<f64>> {
        let (config, threads) = (self.config, self.threads);
        self.models
            .iter()
            .zip(active)
            .map(|(m, &live)| {
                (live && m.job.validation.rows > 0).then(|| {
                    validation_loss(&m.network, &m.job.validation, config, &mut self.ws, threads)
                })
            })
            .collect()
    }

    fn finish(mut self) -> Vec<(Network, Evaluation)> {
        let (size, threads) = (self.config.eval_batch_size, self.threads);
        self.models
            .into_iter()
            .map(|m| {
                let ev = evaluate_in_batches(&m.network, &m.job.train, size, &mut self.ws, threads);
                (m.network, ev)
            })
            .collect()
    }
}

/// Trains one model on the CPU; `threads` > 1 splits each GEMM.
pub fn train_one(job: &TrainJob, config: &ModelConfig, threads: usize) -> Trained {
    let mut trained = train_models(CpuModels::new([job], config, threads), config);
    // One model in, one out: `CpuModels::finish` returns every model of the set.
    trained.swap_remove(0)
}

/// The validation loss as dfencoder computes it: the mean, over eval batches, of each batch's
/// net loss.
fn validation_loss(
    network: &Network,
    val: &Encoded,
    config: &ModelConfig,
    ws: &mut Workspace,
    threads: usize,
) -> f64 {
    let size = config.eval_batch_size.max(1);
    let mut losses = Vec::new();
    let mut start = 0;
    while start < val.rows {
        let end = (start + size).min(val.rows);
        losses.push(
            network
                .evaluate(&val.slice(start, end), ws, threads)
                .net_loss(),
        );
        start = end;
    }
    losses.iter().sum::<f64>() / losses.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    #[test]
    fn early_stopping_stops_at_the_first_rise_with_morpheus_patience() {
        let mut e = EarlyStopping::new(-1);
        assert!(!e.observe(1.0));
        assert!(!e.observe(0.9));
        assert!(!e.observe(0.9), "equal is not a rise");
        assert!(e.observe(0.95));
        // Patience 2: three rises in a row; a fall resets the count.
        let mut e = EarlyStopping::new(2);
        let stops: Vec<bool> = [1.0, 1.1, 1.2, 1.0, 1.1, 1.2, 1.3]
            .into_iter()
            .map(|l| e.observe(l))
            .collect();
        assert_eq!(stops, [false, false, false, false, false, false, true]);
    }

    #[test]
    fn swap_noise_swaps_about_p_of_values_within_columns() {
        let rows = 2000;
        let batch = Encoded {
            rows,
            numeric: (0..rows)
                .flat_map(|r| [r as f32, -(r as f32) - 1.0])
                .collect(),
            binary: vec![],
            categorical: (0..rows).map(|r| (r % 7) as u32 + 100).collect(),
        };
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let noisy = swap_noise(&batch, 0.2, &mut rng);
        let changed = noisy
            .numeric
            .iter()
            .zip(&batch.numeric)
            .filter(|(a, b)| a != b)
            .count();
        let frac = changed as f64 / (2 * rows) as f64;
        assert!((0.17..0.23).contains(&frac), "{frac}");
        // Values stay in their column: column 0 is >= 0, column 1 < 0, codes >= 100.
        assert!(noisy.numeric.chunks(2).all(|c| c[0] >= 0.0 && c[1] < 0.0));
        assert!(noisy.categorical.iter().all(|&c| (100..107).contains(&c)));
        assert_eq!(swap_noise(&batch, 0.0, &mut rng), batch);
    }

    #[test]
    fn loss_statistics_use_the_population_std() {
        let ev = Evaluation {
            rows: 4,
            losses: vec![1.0, 5.0, 3.0, 5.0, 1.0, 5.0, 3.0, 5.0],
            ..Evaluation::default()
        };
        let (mean, std) = loss_stats(&ev);
        assert_eq!(mean, [2.0, 5.0]);
        assert_eq!(
            std,
            [1.0, 1.0],
            "population std of 1,3,1,3 is 1; a constant gets 1"
        );
    }

    /// What a [`Scripted`] set was asked: per epoch the learning rate and the active models,
    /// and per model the epochs it was stepped.
    #[derive(Default)]
    struct Log {
        calls: Vec<(f32, Vec<bool>)>,
        stepped: Vec<usize>,
    }

    /// A scripted set: model `m`'s validation loss at epoch `e` is `val[m][e]` (an empty
    /// script: no validation rows); its training loss is `10 m + e + 1`.
    struct Scripted<'a> {
        val: Vec<Vec<f64>>,
        log: &'a RefCell<Log>,
    }

    impl TrainSteps for Scripted<'_> {
        fn models(&self) -> usize {
            self.val.len()
        }
        fn epoch(&mut self, active: &[bool], lr: f32) -> Vec<f64> {
            let mut log = self.log.borrow_mut();
            log.calls.push((lr, active.to_vec()));
            log.stepped.resize(active.len(), 0);
            for (s, &a) in log.stepped.iter_mut().zip(active) {
                *s += usize::from(a);
            }
            (0..active.len())
                .map(|m| (10 * m + log.calls.len()) as f64)
                .collect()
        }
        fn validation(&mut self, active: &[bool]) -> Vec<Option<f64>> {
            let e = self.log.borrow().calls.len() - 1;
            self.val
                .iter()
                .zip(active)
                .map(|(v, &a)| if a { v.get(e).copied() } else { None })
                .collect()
        }
        fn finish(self) -> Vec<(Network, Evaluation)> {
            let shape = Shape {
                n_numeric: 1,
                n_binary: 0,
                categories: vec![],
                hidden: vec![1],
            };
            let mut rng = ChaCha8Rng::seed_from_u64(0);
            let ev = Evaluation {
                rows: 2,
                losses: vec![1.0, 3.0],
                ..Evaluation::default()
            };
            (0..self.val.len())
                .map(|_| (Network::new(shape.clone(), &mut rng), ev.clone()))
                .collect()
        }
    }

    #[test]
    fn the_loop_stops_each_model_on_its_own_and_steps_only_the_active_ones() {
        let config = ModelConfig {
            epochs: 6,
            lr: 0.1,
            lr_decay: 0.5,
            patience: 1,
            early_stopping: true,
            ..ModelConfig::default()
        };
        let val = vec![
            // Rises twice in a row after epoch 2: stops after epoch 4 (patience 1).
            vec![5.0, 4.0, 3.0, 3.5, 3.6, 1.0],
            // Never rises twice in a row: runs every epoch.
            vec![5.0, 6.0, 4.0, 4.5, 4.0, 4.1],
            // No validation rows: never stops, no validation loss.
            vec![],
        ];
        let log = RefCell::new(Log::default());
        let trained = train_models(
            Scripted {
                val: val.clone(),
                log: &log,
            },
            &config,
        );
        let log = log.into_inner();
        assert_eq!(log.stepped, [5, 6, 6]);
        let lrs: Vec<f32> = log.calls.iter().map(|c| c.0).collect();
        let want: Vec<f32> = (0..6).map(|e| config.lr_at(e) as f32).collect();
        assert_eq!(lrs, want, "the decayed learning rate of each epoch");
        assert_eq!(log.calls[4].1, [true, true, true]);
        assert_eq!(log.calls[5].1, [false, true, true]);
        let epochs: Vec<usize> = trained.iter().map(|t| t.epochs_run).collect();
        assert_eq!(epochs, [5, 6, 6]);
        assert_eq!(trained[0].val_loss, Some(3.6), "the last epoch it ran");
        assert_eq!(trained[0].train_loss, 5.0);
        assert_eq!(trained[1].val_loss, Some(4.1));
        assert_eq!(trained[2].val_loss, None);
        assert_eq!(trained[2].train_loss, 26.0);
        assert_eq!(
            trained[1].loss_mean,
            [2.0],
            "statistics of the final evaluation"
        );
        // Without early stopping every model runs every epoch; once every model has
        // stopped, the loop ends.
        let log = RefCell::new(Log::default());
        let loose = ModelConfig {
            early_stopping: false,
            ..config.clone()
        };
        let trained = train_models(
            Scripted {
                val: val.clone(),
                log: &log,
            },
            &loose,
        );
        assert!(trained.iter().all(|t| t.epochs_run == 6));
        let log = RefCell::new(Log::default());
        let rising = vec![vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]; 2];
        let trained = train_models(
            Scripted {
                val: rising,
                log: &log,
            },
            &config,
        );
        assert!(trained.iter().all(|t| t.epochs_run == 3));
        assert_eq!(
            log.borrow().calls.len(),
            3,
            "no epoch after every model stopped"
        );
    }

    fn job(rows: usize, validation: usize, seed: u64) -> TrainJob {
        let shape = Shape {
            n_numeric: 2,
            n_binary: 1,
            categories: vec![4, 3],
            hidden: vec![6, 5],
        };
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut encoded = |rows: usize| Encoded {
            rows,
            numeric: (0..2 * rows).map(|_| rng.random_range(-1.0..1.0)).collect(),
            binary: (0..rows).map(|_| f32::from(rng.random_bool(0.4))).collect(),
            categorical: (0..rows)
                .flat_map(|_| [rng.random_range(0..5), rng.random_range(0..3)])
                .collect(),
        };
        TrainJob {
            name: format!("user{seed}"),
            train: encoded(rows),
            validation: encoded(validation),
            shape,
            seed,
        }
    }

    #[test]
    fn a_cpu_model_trains_the_same_alone_and_in_a_set() {
        let config = ModelConfig {
            encoder_layers: vec![6],
            decoder_layers: vec![5],
            lr: 2.0,
            batch_size: 8,
            eval_batch_size: 7,
            epochs: 8,
            early_stopping: true,
            ..ModelConfig::default()
        };
        let jobs = [job(50, 12, 1), job(23, 0, 2), job(31, 9, 3)];
        let together = train_models(CpuModels::new(&jobs, &config, 1), &config);
        assert_eq!(together.len(), 3);
        for (job, t) in jobs.iter().zip(&together) {
            assert_eq!(&train_one(job, &config, 1), t, "{}", job.name);
            assert_eq!(&train_one(job, &config, 2), t, "{}: 2 threads", job.name);
        }
        assert_eq!(together[1].val_loss, None);
        assert!(
            together.iter().any(|t| t.epochs_run < config.epochs),
            "lr 2 should stop a model early: {:?}",
            together.iter().map(|t| t.epochs_run).collect::<Vec<_>>()
        );
    }
}
