//! The autoencoder network and its CPU math: embeddings for categoricals, dense ReLU layers
//! (encoder then decoder), and one linear head whose outputs are read per feature kind
//! (numerics as is, binaries through a sigmoid, categoricals as softmax logits), as dfencoder
//! builds it. The forward pass, the per-row per-feature losses (MSE, BCE, cross-entropy), and a
//! fused backward pass + SGD update run on row-major `f32` buffers through [`linalg::matmul`].
//!
//! The gradient is dfencoder's: that of `mean(MSE over numerics) + mean(BCE over binaries) +
//! sum over categoricals of mean(cross-entropy)`, each mean over the batch's rows (and columns).
//! Weights update in place as each layer's gradient is known; every gradient is taken against
//! the weights before the step, as an optimizer step after `backward()` would.
//!
//! State: the weights only ([`Network`]); scratch buffers live in a [`Workspace`] that a caller
//! keeps per thread and reuses across batches.

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::encode::Encoded;
use super::linalg::{View, matmul};
use super::preprocess::embedding_width;

/// The network's dimensions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    /// Numeric features.
    pub n_numeric: usize,
    /// Binary features.
    pub n_binary: usize,
    /// Slots (categories + `_other`) of each categorical feature.
    pub categories: Vec<usize>,
    /// Hidden layer widths: encoder layers, then decoder layers.
    pub hidden: Vec<usize>,
}

impl Shape {
    /// Embedding width of each categorical.
    pub fn embedding_widths(&self) -> Vec<usize> {
        self.categories
            .iter()
            .map(|&n| embedding_width(n))
            .collect()
    }

    /// Width of the first layer's input: numerics, binaries, then the embeddings.
    pub fn input_width(&self) -> usize {
        self.n_numeric + self.n_binary + self.embedding_widths().iter().sum::<usize>()
    }

    /// Width of the head: one output per numeric and binary, one logit per category slot.
    pub fn output_width(&self) -> usize {
        self.n_numeric + self.n_binary + self.categories.iter().sum::<usize>()
    }

    /// Number of features (losses per row).
    pub fn n_features(&self) -> usize {
        self.n_numeric + self.n_binary + self.categories.len()
    }

    /// Widths of every dense layer's input and output, head included.
    fn dims(&self) -> Vec<usize> {
        let mut d = vec![self.input_width()];
        d.extend(&self.hidden);
        d.push(self.output_width());
        d
    }

    /// Multiply-adds x 2 of one row's forward pass through the dense layers.
    pub fn forward_flops_per_row(&self) -> u64 {
        self.dims()
            .windows(2)
            .map(|w| 2 * (w[0] * w[1]) as u64)
            .sum()
    }
}

/// One dense layer: `y = x W + b`, `W` row-major `inputs x outputs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dense {
    /// Input width.
    pub inputs: usize,
    /// Output width.
    pub outputs: usize,
    /// Weights, `inputs x outputs`.
    pub weight: Vec<f32>,
    /// Biases, `outputs`.
    pub bias: Vec<f32>,
}

/// The weights of one autoencoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Network {
    /// Dimensions.
    pub shape: Shape,
    /// One table per categorical, `slots x width`.
    pub embeddings: Vec<Vec<f32>>,
    /// The hidden layers (each followed by ReLU), then the head.
    pub layers: Vec<Dense>,
}

/// A row's largest and mean |z| (0 for no feature).
pub(crate) fn max_and_mean(z: &[f32]) -> (f32, f32) {
    let max = z.iter().copied().fold(0.0, f32::max);
    let mean = z.iter().map(|&v| f64::from(v)).sum::<f64>() as f32 / z.len().max(1) as f32;
    (max, mean)
}

/// Per-row outputs of a forward pass on clean input: losses and predictions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Evaluation {
    /// Number of rows.
    pub rows: usize,
    /// Per row, per feature (network order) losses, `rows x n_features`.
    pub losses: Vec<f32>,
    /// Predicted scaled numerics, `rows x n_numeric`.
    pub numeric_pred: Vec<f32>,
    /// Predicted binaries (sigmoid > 0.5), `rows x n_binary`.
    pub binary_pred: Vec<bool>,
    /// Predicted category index (the largest logit), `rows x n_categorical`.
    pub categorical_pred: Vec<u32>,
    /// With loss statistics: per row, per feature |(loss - mean) / std|, `rows x n_features`
    /// (empty without).
    pub z_loss: Vec<f32>,
    /// With loss statistics: per row, the largest `z_loss`.
    pub max_abs_z: Vec<f32>,
    /// With loss statistics: per row, the mean `z_loss`.
    pub mean_abs_z: Vec<f32>,
}

impl Evaluation {
    /// Appends another evaluation's rows.
    pub fn extend(&mut self, other: Evaluation) {
        self.rows += other.rows;
        self.losses.extend(other.losses);
        self.numeric_pred.extend(other.numeric_pred);
        self.binary_pred.extend(other.binary_pred);
        self.categorical_pred.extend(other.categorical_pred);
        self.z_loss.extend(other.z_loss);
        self.max_abs_z.extend(other.max_abs_z);
        self.mean_abs_z.extend(other.mean_abs_z);
    }

    /// Fills the z-scores from the training loss statistics (per feature mean and std).
    pub fn add_zscores(&mut self, mean: &[f64], std: &[f64]) {
        let f = mean.len();
        self.z_loss.clear();
        self.max_abs_z.clear();
        self.mean_abs_z.clear();
        for row in self.losses.chunks_exact(f.max(1)) {
            let start = self.z_loss.len();
            self.z_loss.extend(
                row.iter()
                    .zip(mean.iter().zip(std))
                    .map(|(&l, (m, sd))| ((f64::from(l) - m) / sd).abs() as f32),
            );
            let (max, mean) = max_and_mean(&self.z_loss[start..]);
            self.max_abs_z.push(max);
            self.mean_abs_z.push(mean);
        }
    }

    /// The net loss of these rows: the mean over features of each feature's mean loss
    /// (dfencoder's `net_loss`).
    pub fn net_loss(&self) -> f64 {
        let f = self.losses.len().checked_div(self.rows).unwrap_or(0);
        if f == 0 {
            return 0.0;
        }
        let mut sums = vec![0.0f64; f];
        for row in self.losses.chunks_exact(f) {
            for (s, &l) in sums.iter_mut().zip(row) {
                *s += f64::from(l);
            }
        }
        sums.iter().sum::<f64>() / (f * self.rows) as f64
    }
}

/// Scratch buffers for forward and backward passes of up to `capacity` rows.
#[derive(Debug, Default)]
pub struct Workspace {
    capacity: usize,
    /// The widths it was sized for: input, output, embeddings, then each hidden layer.
    widths: Vec<usize>,
    x0: Vec<f32>,
    acts: Vec<Vec<f32>>,
    out: Vec<f32>,
    grad_a: Vec<f32>,
    grad_b: Vec<f32>,
    grad_emb: Vec<f32>,
}

impl Workspace {
    fn fit(&mut self, shape: &Shape, rows: usize) {
        let emb: usize = shape.embedding_widths().iter().sum();
        let widths: Vec<usize> = [shape.input_width(), shape.output_width(), emb]
            .into_iter()
            .chain(shape.hidden.iter().copied())
            .collect();
        if rows <= self.capacity && widths == self.widths {
            return;
        }
        // The two gradient buffers swap roles per layer, so each holds the widest of all.
        let widest = shape
            .hidden
            .iter()
            .copied()
            .max()
            .unwrap_or(0)
            .max(shape.output_width());
        self.capacity = rows;
        self.widths = widths;
        self.x0 = vec![0.0; rows * shape.input_width()];
        self.acts = shape.hidden.iter().map(|&w| vec![0.0; rows * w]).collect();
        self.out = vec![0.0; rows * shape.output_width()];
        self.grad_a = vec![0.0; rows * widest];
        self.grad_b = vec![0.0; rows * widest];
        self.grad_emb = vec![0.0; rows * emb];
    }
}

/// A standard normal sample (Box-Muller).
fn normal(rng: &mut impl Rng) -> f32 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// Binary cross-entropy of a logit against a 0/1 target, with torch's clamp of each log at
/// -100; returns (loss, sigmoid).
fn bce(z: f32, t: f32) -> (f32, f32) {
    let z = f64::from(z);
    // ln(sigmoid(z)) = -softplus(-z), ln(1 - sigmoid(z)) = -softplus(z), computed stably.
    let softplus = |x: f64| x.max(0.0) + (-x.abs()).exp().ln_1p();
    let log_p = (-softplus(-z)).max(-100.0);
    let log_q = (-softplus(z)).max(-100.0);
    let t = f64::from(t);
    let p = 1.0 / (1.0 + (-z).exp());
    ((-(t * log_p + (1.0 - t) * log_q)) as f32, p as f32)
}

/// Cross-entropy of logits against class `t`; leaves the softmax in `logits`.
fn softmax_ce(logits: &mut [f32], t: u32) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for v in logits.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let target = logits.get(t as usize).copied().unwrap_or(0.0);
    for v in logits.iter_mut() {
        *v /= sum;
    }
    sum.ln() - (target.max(f32::MIN_POSITIVE)).ln()
}

impl Network {
    /// Fresh weights as torch initialises them: dense weights and biases uniform in
    /// +-1/sqrt(inputs), embeddings standard normal.
    pub fn new(shape: Shape, rng: &mut impl Rng) -> Self {
        let embeddings = shape
            .categories
            .iter()
            .zip(shape.embedding_widths())
            .map(|(&n, w)| (0..n * w).map(|_| normal(rng)).collect())
            .collect();
        let layers = shape
            .dims()
            .windows(2)
            .map(|d| {
                let bound = 1.0 / (d[0] as f32).sqrt();
                let mut uniform = || rng.random_range(-bound..=bound);
                Dense {
                    inputs: d[0],
                    outputs: d[1],
                    weight: (0..d[0] * d[1]).map(|_| uniform()).collect(),
                    bias: (0..d[1]).map(|_| uniform()).collect(),
                }
            })
            .collect();
        Network {
            shape,
            embeddings,
            layers,
        }
    }

    /// Checks that every buffer has the length its shape says and every value is finite (for
    /// networks read from files).
    pub fn check(&self) -> Result<(), String> {
        let s = &self.shape;
        if s.categories.contains(&0) {
            return Err("a categorical feature has no slots".into());
        }
        if s.embedding_widths().len() != self.embeddings.len() {
            return Err("embedding count does not match the categoricals".into());
        }
        for (i, (table, (n, w))) in self
            .embeddings
            .iter()
            .zip(s.categories.iter().zip(s.embedding_widths()))
            .enumerate()
        {
            if table.len() != n * w {
                return Err(format!(
                    "embedding {i} has {} values, not {}",
                    table.len(),
                    n * w
                ));
            }
        }
        let dims = s.dims();
        if dims.len() != self.layers.len() + 1 {
            return Err(format!(
                "{} dense layers, the shape needs {}",
                self.layers.len(),
                dims.len() - 1
            ));
        }
        for (i, (layer, d)) in self.layers.iter().zip(dims.windows(2)).enumerate() {
            if (layer.inputs, layer.outputs) != (d[0], d[1])
                || layer.weight.len() != d[0] * d[1]
                || layer.bias.len() != d[1]
            {
                return Err(format!("dense layer {i} does not match the shape"));
            }
        }
        let all = self.embeddings.iter().flatten().chain(
            self.layers
                .iter()
                .flat_map(|l| l.weight.iter().chain(&l.bias)),
        );
        if let Some(v) = all.into_iter().find(|v| !v.is_finite()) {
            return Err(format!("a weight is not finite ({v})"));
        }
        Ok(())
    }

    /// Runs the layers on `input`; the head's raw outputs are left in `ws.out`.
    fn forward(&self, input: &Encoded, ws: &mut Workspace, threads: usize) {
        let s = &self.shape;
        let rows = input.rows;
        ws.fit(s, rows);
        let width = s.input_width();
        let widths = s.embedding_widths();
        let n_cat = s.categories.len();
        for r in 0..rows {
            let x = &mut ws.x0[r * width..(r + 1) * width];
            let (num, rest) = x.split_at_mut(s.n_numeric);
            num.copy_from_slice(&input.numeric[r * s.n_numeric..(r + 1) * s.n_numeric]);
            let (bin, mut emb) = rest.split_at_mut(s.n_binary);
            bin.copy_from_slice(&input.binary[r * s.n_binary..(r + 1) * s.n_binary]);
            for (i, &w) in widths.iter().enumerate() {
                let code = (input.categorical[r * n_cat + i] as usize).min(s.categories[i] - 1);
                let (head, tail) = emb.split_at_mut(w);
                head.copy_from_slice(&self.embeddings[i][code * w..(code + 1) * w]);
                emb = tail;
            }
        }
        let (hidden, head) = self.layers.split_at(self.layers.len() - 1);
        for (l, layer) in hidden.iter().enumerate() {
            let (before, after) = ws.acts.split_at_mut(l);
            let x = if l == 0 { &ws.x0 } else { &before[l - 1] };
            let dst = &mut after[0];
            affine(dst, x, layer, rows, threads);
            dst[..rows * layer.outputs]
                .iter_mut()
                .for_each(|v| *v = v.max(0.0));
        }
        let x = ws.acts.last().unwrap_or(&ws.x0);
        affine(&mut ws.out, x, &head[0], rows, threads);
    }

    /// Losses of one row's head outputs `y` against its targets, into `losses`; with `grad`,
    /// also writes dL/dy scaled by (numeric, binary, categorical) factors.
    fn row_losses(
        &self,
        y: &mut [f32],
        input: &Encoded,
        r: usize,
        losses: &mut [f32],
        grad: Option<(&mut [f32], [f32; 3])>,
    ) {
        let s = &self.shape;
        let (nn, nb) = (s.n_numeric, s.n_binary);
        let num_t = &input.numeric[r * nn..(r + 1) * nn];
        let bin_t = &input.binary[r * nb..(r + 1) * nb];
        let cat_t = &input.categorical[r * s.categories.len()..(r + 1) * s.categories.len()];
        for j in 0..nn {
            let d = y[j] - num_t[j];
            losses[j] = d * d;
        }
        for j in 0..nb {
            let (l, p) = bce(y[nn + j], bin_t[j]);
            losses[nn + j] = l;
            y[nn + j] = p;
        }
        let mut at = nn + nb;
        for (i, &n) in s.categories.iter().enumerate() {
            losses[nn + nb + i] = softmax_ce(&mut y[at..at + n], cat_t[i]);
            at += n;
        }
        if let Some((g, [k_num, k_bin, k_cat])) = grad {
            for j in 0..nn {
                g[j] = k_num * 2.0 * (y[j] - num_t[j]);
            }
            for j in 0..nb {
                g[nn + j] = k_bin * (y[nn + j] - bin_t[j]);
            }
            let mut at = nn + nb;
            for (i, &n) in s.categories.iter().enumerate() {
                for c in 0..n {
                    let onehot = if c as u32 == cat_t[i] { 1.0 } else { 0.0 };
                    g[at + c] = k_cat * (y[at + c] - onehot);
                }
                at += n;
            }
        }
    }

    /// Losses and predictions of every row of `input` (clean input; the targets are the input).
    pub fn evaluate(&self, input: &Encoded, ws: &mut Workspace, threads: usize) -> Evaluation {
        let s = &self.shape;
        let (rows, f, out) = (input.rows, s.n_features(), s.output_width());
        self.forward(input, ws, threads);
        let mut ev = Evaluation {
            rows,
            losses: vec![0.0; rows * f],
            numeric_pred: Vec::with_capacity(rows * s.n_numeric),
            binary_pred: Vec::with_capacity(rows * s.n_binary),
            categorical_pred: Vec::with_capacity(rows * s.categories.len()),
            ..Evaluation::default()
        };
        for r in 0..rows {
            let y = &mut ws.out[r * out..(r + 1) * out];
            self.row_losses(y, input, r, &mut ev.losses[r * f..(r + 1) * f], None);
            ev.numeric_pred.extend_from_slice(&y[..s.n_numeric]);
            ev.binary_pred.extend(
                y[s.n_numeric..s.n_numeric + s.n_binary]
                    .iter()
                    .map(|&p| p > 0.5),
            );
            let mut at = s.n_numeric + s.n_binary;
            for &n in &s.categories {
                let probs = &y[at..at + n];
                let best = (0..n).fold(0, |b, c| if probs[c] > probs[b] { c } else { b });
                ev.categorical_pred.push(best as u32);
                at += n;
            }
        }
        ev
    }

    /// One SGD step on a batch: forward on `noisy`, losses against `clean`, backward, update
    /// with learning rate `lr`. Returns the batch's net loss (mean over features).
    pub fn train_step(
        &mut self,
        noisy: &Encoded,
        clean: &Encoded,
        lr: f32,
        ws: &mut Workspace,
        threads: usize,
    ) -> f64 {
        let s = self.shape.clone();
        let (rows, f, out) = (clean.rows, s.n_features(), s.output_width());
        if rows == 0 {
            return 0.0;
        }
        self.forward(noisy, ws, threads);
        let b = rows as f32;
        let k = [
            1.0 / (b * s.n_numeric.max(1) as f32),
            1.0 / (b * s.n_binary.max(1) as f32),
            1.0 / b,
        ];
        let mut losses = vec![0.0f32; f];
        let mut sums = vec![0.0f64; f];
        for r in 0..rows {
            let (y, g) = (
                &mut ws.out[r * out..(r + 1) * out],
                &mut ws.grad_a[r * out..(r + 1) * out],
            );
            self.row_losses(y, clean, r, &mut losses, Some((g, k)));
            sums.iter_mut()
                .zip(&losses)
                .for_each(|(s, &l)| *s += f64::from(l));
        }
        self.backward(noisy, rows, lr, ws, threads);
        sums.iter().sum::<f64>() / (f.max(1) * rows) as f64
    }

    /// Backpropagates dL/dy (in `ws.grad_a`) and updates every weight.
    fn backward(
        &mut self,
        input: &Encoded,
        rows: usize,
        lr: f32,
        ws: &mut Workspace,
        threads: usize,
    ) {
        let s = &self.shape;
        let n_layers = self.layers.len();
        let emb_at = s.n_numeric + s.n_binary;
        let emb_total = s.input_width() - emb_at;
        for l in (0..n_layers).rev() {
            let layer = &mut self.layers[l];
            let (inp, out) = (layer.inputs, layer.outputs);
            if l + 1 < n_layers {
                // ReLU: no gradient where the activation was clamped to 0.
                let act = &ws.acts[l];
                ws.grad_a[..rows * out]
                    .iter_mut()
                    .zip(&act[..rows * out])
                    .for_each(|(g, &a)| {
                        if a <= 0.0 {
                            *g = 0.0;
                        }
                    });
            }
            let dz = View::new(&ws.grad_a, rows, out);
            // The gradient for the layer below, against the weights before this step.
            if l > 0 {
                matmul(
                    &mut ws.grad_b,
                    dz,
                    View::new(&layer.weight, inp, out).t(),
                    1.0,
                    false,
                    threads,
                );
            } else if emb_total > 0 {
                let w_emb = View::new(&layer.weight[emb_at * out..], emb_total, out);
                matmul(&mut ws.grad_emb, dz, w_emb.t(), 1.0, false, threads);
            }
            let x = if l == 0 { &ws.x0 } else { &ws.acts[l - 1] };
            matmul(
                &mut layer.weight,
                View::new(x, rows, inp).t(),
                dz,
                -lr,
                true,
                threads,
            );
            for r in 0..rows {
                let g = &ws.grad_a[r * out..(r + 1) * out];
                layer
                    .bias
                    .iter_mut()
                    .zip(g)
                    .for_each(|(b, &g)| *b -= lr * g);
            }
            std::mem::swap(&mut ws.grad_a, &mut ws.grad_b);
        }
        let widths = s.embedding_widths();
        let n_cat = s.categories.len();
        for r in 0..rows {
            let mut at = r * emb_total;
            for (i, &w) in widths.iter().enumerate() {
                let code = (input.categorical[r * n_cat + i] as usize).min(s.categories[i] - 1);
                let g = &ws.grad_emb[at..at + w];
                let e = &mut self.embeddings[i][code * w..(code + 1) * w];
                e.iter_mut().zip(g).for_each(|(e, &g)| *e -= lr * g);
                at += w;
            }
        }
    }
}

/// `dst = x W + b` for `rows` rows.
fn affine(dst: &mut [f32], x: &[f32], layer: &Dense, rows: usize, threads: usize) {
    let out = layer.outputs;
    for row in dst[..rows * out].chunks_exact_mut(out) {
        row.copy_from_slice(&layer.bias);
    }
    matmul(
        dst,
        View::new(x, rows, layer.inputs),
        View::new(&layer.weight, layer.inputs, out),
        1.0,
        true,
        threads,
    );
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;

    fn shape() -> Shape {
        Shape {
            n_numeric: 2,
            n_binary: 1,
            categories: vec![3, 4],
            hidden: vec![7, 5, 6],
        }
    }

    fn batch(rows: usize, seed: u64) -> Encoded {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        Encoded {
            rows,
            numeric: (0..rows * 2).map(|_| rng.random_range(-2.0..2.0)).collect(),
            binary: (0..rows).map(|_| f32::from(rng.random_bool(0.5))).collect(),
            categorical: (0..rows)
                .flat_map(|_| [rng.random_range(0..3), rng.random_range(0..4)])
                .collect(),
        }
    }

    /// dfencoder's training objective: mean MSE + mean BCE + sum of mean cross-entropies.
    fn objective(net: &Network, input: &Encoded) -> f64 {
        let ev = net.evaluate(input, &mut Workspace::default(), 1);
        let f = net.shape.n_features();
        let rows = input.rows as f64;
        let col = |j: usize| -> f64 {
            (0..input.rows)
                .map(|r| f64::from(ev.losses[r * f + j]))
                .sum::<f64>()
                / rows
        };
        (col(0) + col(1)) / 2.0 + col(2) + col(3) + col(4)
    }

    /// Every trainable parameter, by (tensor, index).
    fn param(net: &mut Network, which: (usize, usize)) -> &mut f32 {
        let (t, i) = which;
        let n = net.layers.len();
        if t < n {
            &mut net.layers[t].weight[i]
        } else if t < 2 * n {
            &mut net.layers[t - n].bias[i]
        } else {
            &mut net.embeddings[t - 2 * n][i]
        }
    }

    #[test]
    fn one_workspace_serves_networks_of_other_widths() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let wide = Network::new(shape(), &mut rng);
        // The same number of hidden layers, other widths.
        let narrow = Network::new(
            Shape {
                hidden: vec![3, 2, 4],
                ..shape()
            },
            &mut rng,
        );
        let input = batch(4, 9);
        let mut ws = Workspace::default();
        for net in [&narrow, &wide, &narrow] {
            let shared = net.evaluate(&input, &mut ws, 1);
            let fresh = net.evaluate(&input, &mut Workspace::default(), 1);
            assert_eq!(shared.losses, fresh.losses);
        }
    }

    #[test]
    fn sgd_step_follows_the_finite_difference_gradient() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let net = Network::new(shape(), &mut rng);
        let input = batch(6, 3);
        let lr = 1e-3f32;
        let mut stepped = net.clone();
        stepped.train_step(&input, &input, lr, &mut Workspace::default(), 1);
        let n = net.layers.len();
        let mut checked = 0;
        for t in 0..(2 * n + net.embeddings.len()) {
            let len = if t < n {
                net.layers[t].weight.len()
            } else if t < 2 * n {
                net.layers[t - n].bias.len()
            } else {
                net.embeddings[t - 2 * n].len()
            };
            for i in (0..len).step_by(len / 6 + 1) {
                let analytic = f64::from(
                    *param(&mut net.clone(), (t, i)) - *param(&mut stepped.clone(), (t, i)),
                ) / f64::from(lr);
                let eps = 1e-2f32;
                let (mut plus, mut minus) = (net.clone(), net.clone());
                *param(&mut plus, (t, i)) += eps;
                *param(&mut minus, (t, i)) -= eps;
                let numeric =
                    (objective(&plus, &input) - objective(&minus, &input)) / (2.0 * f64::from(eps));
                let tol = 2e-3 + 2e-2 * numeric.abs();
                assert!(
                    (analytic - numeric).abs() <= tol,
                    "tensor {t} index {i}: analytic {analytic}, finite difference {numeric}"
                );
                checked += 1;
            }
        }
        assert!(checked > 40, "checked only {checked} parameters");
    }

    #[test]
    fn losses_are_mse_bce_and_cross_entropy() {
        assert!((bce(0.0, 1.0).0 - std::f32::consts::LN_2).abs() < 1e-6);
        assert!((bce(0.0, 1.0).1 - 0.5).abs() < 1e-6);
        // Saturated logits hit torch's clamp of log at -100 instead of infinity.
        assert_eq!(bce(-1e4, 1.0).0, 100.0);
        assert!(bce(1e4, 1.0).0.abs() < 1e-6);
        let mut logits = [1.0, 2.0, 3.0];
        let ce = softmax_ce(&mut logits, 2);
        let want = (1f32.exp() + 2f32.exp() + 3f32.exp()).ln() - 3.0;
        assert!((ce - want).abs() < 1e-6);
        assert!((logits.iter().sum::<f32>() - 1.0).abs() < 1e-6);

        // A network whose head outputs exactly the targets has zero MSE.
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut net = Network::new(shape(), &mut rng);
        let head = net.layers.last_mut().unwrap();
        head.weight.fill(0.0);
        head.bias.fill(0.0);
        head.bias[0] = 0.5;
        let mut input = batch(3, 2);
        input.numeric = vec![0.5, 0.0, 0.5, 0.0, 0.5, 1.0];
        let ev = net.evaluate(&input, &mut Workspace::default(), 1);
        let f = 5;
        assert_eq!(ev.losses[0], 0.0);
        assert_eq!(ev.losses[1], 0.0);
        assert_eq!(ev.losses[2 * f + 1], 1.0);
        // Binary logit 0: BCE ln 2 whatever the target; uniform logits: CE ln(slots).
        assert!((ev.losses[2] - std::f32::consts::LN_2).abs() < 1e-6);
        assert!((ev.losses[3] - 3f32.ln()).abs() < 1e-6);
        assert!((ev.losses[4] - 4f32.ln()).abs() < 1e-6);
        assert_eq!(ev.numeric_pred[..2], [0.5, 0.0]);
        assert!(!ev.binary_pred[0]);
    }

    #[test]
    fn training_lowers_the_loss_and_ignores_the_thread_count() {
        let input = batch(64, 5);
        let mut nets = Vec::new();
        for threads in [1, 2] {
            let mut rng = ChaCha8Rng::seed_from_u64(11);
            let mut net = Network::new(shape(), &mut rng);
            let mut ws = Workspace::default();
            let first = net.evaluate(&input, &mut ws, threads).net_loss();
            for _ in 0..200 {
                net.train_step(&input, &input, 0.05, &mut ws, threads);
            }
            let last = net.evaluate(&input, &mut ws, threads).net_loss();
            assert!(last < 0.7 * first, "loss {first} -> {last}");
            nets.push(net);
        }
        assert_eq!(nets[0], nets[1]);
    }

    #[test]
    fn check_finds_inconsistent_weights() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let net = Network::new(shape(), &mut rng);
        net.check().unwrap();
        let mut bad = net.clone();
        bad.layers[1].weight.pop();
        assert!(bad.check().unwrap_err().contains("dense layer 1"));
        let mut bad = net.clone();
        bad.embeddings[0][0] = f32::NAN;
        assert!(bad.check().unwrap_err().contains("not finite"));
        let mut bad = net;
        bad.shape.categories[1] = 9;
        assert!(bad.check().unwrap_err().contains("embedding"));
    }

    #[test]
    fn flops_count_every_dense_layer() {
        let s = shape();
        // input 2 + 1 + emb(3)=3 + emb(4)=3 = 9; output 2 + 1 + 3 + 4 = 10.
        assert_eq!(s.input_width(), 9);
        assert_eq!(s.output_width(), 10);
        assert_eq!(
            s.forward_flops_per_row(),
            2 * (9 * 7 + 7 * 5 + 5 * 6 + 6 * 10)
        );
    }
}
