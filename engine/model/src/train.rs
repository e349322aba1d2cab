//! The training loop, shared by every backend: per epoch a seeded shuffle, batches of
//! `batch_size` rows with swap noise applied to the input (the clean rows are the target), one
//! SGD step per batch at the epoch's decayed learning rate, then the validation loss on clean
//! rows (mean over eval batches of the mean over features, as dfencoder logs it) and Morpheus'
//! early stopping. After training, the per-feature loss mean and population std over the clean
//! training split: the statistics behind `z_loss`.
//!
//! Everything random comes from one ChaCha8 stream seeded per model, so a model depends only on
//! its data, its config and its seed: not on the thread count or on which users share a call.

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

/// Trains one model on the CPU; `threads` > 1 splits each GEMM.
pub fn train_one(job: &TrainJob, config: &ModelConfig, threads: usize) -> Trained {
    let mut rng = ChaCha8Rng::seed_from_u64(job.seed);
    let mut network = Network::new(job.shape.clone(), &mut rng);
    let mut ws = Workspace::default();
    let mut order: Vec<usize> = (0..job.train.rows).collect();
    let mut stopping = EarlyStopping::new(config.patience);
    let (mut epochs_run, mut train_loss, mut val_loss) = (0, 0.0, None);
    for epoch in 0..config.epochs {
        order.shuffle(&mut rng);
        let lr = config.lr_at(epoch) as f32;
        let (mut sum, mut batches) = (0.0, 0);
        for chunk in order.chunks(config.batch_size.max(1)) {
            let clean = job.train.select(chunk);
            let noisy = swap_noise(&clean, config.swap_p, &mut rng);
            sum += network.train_step(&noisy, &clean, lr, &mut ws, threads);
            batches += 1;
        }
        epochs_run += 1;
        train_loss = sum / f64::from(batches.max(1));
        if job.validation.rows > 0 {
            let loss = validation_loss(&network, &job.validation, config, &mut ws, threads);
            val_loss = Some(loss);
            if config.early_stopping && stopping.observe(loss) {
                break;
            }
        }
    }
    let ev = evaluate_in_batches(
        &network,
        &job.train,
        config.eval_batch_size,
        &mut ws,
        threads,
    );
    let (loss_mean, loss_std) = loss_stats(&ev);
    Trained {
        network,
        epochs_run,
        train_loss,
        val_loss,
        loss_mean,
        loss_std,
    }
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
}
