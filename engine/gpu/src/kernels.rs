//! The cubecl kernels of the GPU backend. Every kernel works on the rows of many models at once:
//! a row's model, and where its input and output rows start, come from a per-row table
//! (`rows`, [`ROW_FIELDS`] u32 per row), and each model's layout (widths, embedding tables,
//! category slots) from a per-model table (`models`, [`model_fields`] u32 per model). Models of
//! one schema differ only in their vocabularies, so only the embedding and head widths are
//! ragged; the GEMM is grouped: one launch multiplies one problem per (model, row range), each
//! with its own sizes, offsets and strides ([`GEMM_FIELDS`] u32 per problem).
//!
//! Numbers follow the CPU backend ([`dfp_model::network`]): the same losses (MSE, BCE with
//! torch's clamp of each log at -100, softmax cross-entropy) and the same gradient scaling, in
//! `f32` throughout.

use cubecl::prelude::*;

/// u32 fields per row in the `rows` table: model, input row offset (in the `x0` buffer),
/// output row offset (in the head's buffer), source row (training data), first row of the
/// model's piece in this launch, rows in that piece.
pub const ROW_FIELDS: usize = 6;

/// u32 fields per categorical in a model's record: embedding table offset, slots, width, column
/// of the embedding in the input row, column of the logits in the head's row.
pub const CAT_FIELDS: usize = 5;

/// u32 fields of one model's record: input width, head width, seed, spare; then
/// [`CAT_FIELDS`] per categorical.
pub const fn model_fields(n_cat: usize) -> usize {
    4 + CAT_FIELDS * n_cat
}

/// u32 fields per GEMM problem: m, n, k, a offset, a row stride, a column stride, b offset,
/// b row stride, b column stride, c offset, c row stride, bias offset.
pub const GEMM_FIELDS: usize = 12;

/// Output tile of one cube of the GEMM (square), and the depth of one shared-memory step.
pub const TILE: u32 = 64;
const DEPTH: usize = 16;

/// GEMM epilogue: `c = a b + bias` (then ReLU when asked).
pub const STORE_BIAS: u32 = 0;
/// GEMM epilogue: `c = a b`.
pub const STORE: u32 = 1;
/// GEMM epilogue: `c += alpha a b` (an SGD step when `a b` is the gradient and alpha = -lr).
pub const ACCUMULATE: u32 = 2;

/// f32 fields per row of the scores buffer: per-feature losses, per-feature |z|, max |z|,
/// mean |z|, then the predictions (numerics, binary probabilities, category indices as f32).
pub const fn score_fields(n_num: usize, n_bin: usize, n_cat: usize) -> usize {
    let f = n_num + n_bin + n_cat;
    2 * f + 2 + f
}

/// Grouped GEMM: problem `CUBE_POS_Z`, output tile (`CUBE_POS_Y`, `CUBE_POS_X`). 16 x 16 units
/// each compute a 4 x 4 block of the 64 x 64 tile, staging 64 x 16 slices of `a` and `b` in
/// shared memory. Strides make transposes free (`a` as `x^T` for weight gradients, `b` as
/// `W^T` for input gradients).
#[cube(launch)]
pub fn grouped_gemm(
    a: &Array<f32>,
    b: &Array<f32>,
    c: &mut Array<f32>,
    bias: &Array<f32>,
    problems: &Array<u32>,
    alpha: f32,
    #[comptime] mode: u32,
    #[comptime] relu: bool,
) {
    let p = CUBE_POS_Z as usize * GEMM_FIELDS;
    let m = problems[p] as usize;
    let n = problems[p + 1] as usize;
    let k = problems[p + 2] as usize;
    let row0 = CUBE_POS_Y as usize * 64;
    let col0 = CUBE_POS_X as usize * 64;
    // The whole cube leaves together, before any barrier.
    if row0 >= m || col0 >= n {
        terminate!();
    }
    let a_off = problems[p + 3] as usize;
    let a_rs = problems[p + 4] as usize;
    let a_cs = problems[p + 5] as usize;
    let b_off = problems[p + 6] as usize;
    let b_rs = problems[p + 7] as usize;
    let b_cs = problems[p + 8] as usize;
    let c_off = problems[p + 9] as usize;
    let c_rs = problems[p + 10] as usize;
    let bias_off = problems[p + 11] as usize;

    let mut sa = SharedMemory::<f32>::new(64 * DEPTH);
    let mut sb = SharedMemory::<f32>::new(64 * DEPTH);
    let mut acc = Array::<f32>::new(16usize);
    #[unroll]
    for i in 0..16usize {
        acc[i] = 0.0;
    }
    let tx = UNIT_POS_X as usize;
    let ty = UNIT_POS_Y as usize;
    let t = ty * 16 + tx;
    let steps = k.div_ceil(DEPTH);
    for s in 0..steps {
        let k0 = s * DEPTH;
        #[unroll]
        for e in 0..4usize {
            let idx = t + e * 256;
            // a: 64 rows x 16 deep, stored depth-major.
            let ar = idx / DEPTH;
            let ak = idx % DEPTH;
            let mut av = 0.0f32;
            if row0 + ar < m && k0 + ak < k {
                av = a[a_off + (row0 + ar) * a_rs + (k0 + ak) * a_cs];
            }
            sa[ak * 64 + ar] = av;
            // b: 16 deep x 64 columns.
            let bk = idx / 64;
            let bc = idx % 64;
            let mut bv = 0.0f32;
            if k0 + bk < k && col0 + bc < n {
                bv = b[b_off + (k0 + bk) * b_rs + (col0 + bc) * b_cs];
            }
            sb[bk * 64 + bc] = bv;
        }
        sync_cube();
        #[unroll]
        for kk in 0..DEPTH {
            let mut ra = Array::<f32>::new(4usize);
            let mut rb = Array::<f32>::new(4usize);
            #[unroll]
            for i in 0..4usize {
                ra[i] = sa[kk * 64 + ty * 4 + i];
                rb[i] = sb[kk * 64 + tx * 4 + i];
            }
            #[unroll]
            for i in 0..4usize {
                #[unroll]
                for j in 0..4usize {
                    acc[i * 4 + j] += ra[i] * rb[j];
                }
            }
        }
        sync_cube();
    }
    #[unroll]
    for i in 0..4usize {
        let row = row0 + ty * 4 + i;
        #[unroll]
        for j in 0..4usize {
            let col = col0 + tx * 4 + j;
            if row < m && col < n {
                let at = c_off + row * c_rs + col;
                let v = acc[i * 4 + j];
                if comptime!(mode == STORE_BIAS) {
                    let mut out = v + bias[bias_off + col];
                    if comptime!(relu) {
                        out = f32::max(out, 0.0);
                    }
                    c[at] = out;
                } else if comptime!(mode == STORE) {
                    c[at] = v;
                } else {
                    c[at] += alpha * v;
                }
            }
        }
    }
}

/// Builds each row's first-layer input: numerics and binaries as they are, then each
/// categorical's embedding row (codes past the vocabulary read its last slot, `_other`).
/// Unit `ABSOLUTE_POS` = row x `max_in` + column.
#[cube(launch)]
pub fn gather_input(
    dense: &Array<f32>,
    cats: &Array<u32>,
    emb: &Array<f32>,
    models: &Array<u32>,
    rows: &Array<u32>,
    x0: &mut Array<f32>,
    n_rows: u32,
    max_in: u32,
    #[comptime] n_dense: usize,
    #[comptime] n_cat: usize,
) {
    let r = ABSOLUTE_POS / max_in as usize;
    let j = ABSOLUTE_POS % max_in as usize;
    if r >= n_rows as usize {
        terminate!();
    }
    let m = rows[r * ROW_FIELDS] as usize * comptime!(model_fields(n_cat));
    let in_w = models[m] as usize;
    if j >= in_w {
        terminate!();
    }
    let x_off = rows[r * ROW_FIELDS + 1] as usize;
    if j < n_dense {
        x0[x_off + j] = dense[r * n_dense + j];
    } else {
        // Find the categorical whose embedding columns hold j.
        #[unroll]
        for i in 0..n_cat {
            let f = m + 4 + i * CAT_FIELDS;
            let col = models[f + 3] as usize;
            let width = models[f + 2] as usize;
            if j >= col && j < col + width {
                let slots = models[f + 1];
                let code = u32::min(cats[r * n_cat + i], slots - 1) as usize;
                x0[x_off + j] = emb[models[f] as usize + code * width + (j - col)];
            }
        }
    }
}

/// Copies the training batch's rows (`rows[.. + 3]`: the source row) into `clean`, and writes
/// `noisy`: dfencoder's swap noise, each value replaced with probability `p` by the same
/// column of a random row of the model's batch. Random numbers come from a hash of (model
/// seed, salt, row, column), so the noise is made on the device. Unit = row x width + column.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn make_batch(
    train_dense: &Array<f32>,
    train_cats: &Array<u32>,
    models: &Array<u32>,
    rows: &Array<u32>,
    clean_dense: &mut Array<f32>,
    clean_cats: &mut Array<u32>,
    noisy_dense: &mut Array<f32>,
    noisy_cats: &mut Array<u32>,
    n_rows: u32,
    salt: u32,
    p: f32,
    #[comptime] n_dense: usize,
    #[comptime] n_cat: usize,
) {
    let width = n_dense + n_cat;
    let r = ABSOLUTE_POS / width;
    let j = ABSOLUTE_POS % width;
    if r >= n_rows as usize {
        terminate!();
    }
    let rf = r * ROW_FIELDS;
    let seed = models[rows[rf] as usize * comptime!(model_fields(n_cat)) + 2];
    let src = rows[rf + 3] as usize;
    let first = rows[rf + 4] as usize;
    let len = rows[rf + 5];
    let local = (r - first) as u32;
    let h = hash(seed ^ hash(salt ^ hash(local * 4099u32 + j as u32)));
    let swap = (h >> 8) as f32 * (1.0 / 16_777_216.0) < p;
    let other = rows[(first + (hash(h ^ 0x9e37_79b9u32) % len) as usize) * ROW_FIELDS + 3] as usize;
    if j < n_dense {
        let v = train_dense[src * n_dense + j];
        clean_dense[r * n_dense + j] = v;
        let mut nv = v;
        if swap {
            nv = train_dense[other * n_dense + j];
        }
        noisy_dense[r * n_dense + j] = nv;
    } else {
        let i = j - n_dense;
        let v = train_cats[src * n_cat + i];
        clean_cats[r * n_cat + i] = v;
        let mut nv = v;
        if swap {
            nv = train_cats[other * n_cat + i];
        }
        noisy_cats[r * n_cat + i] = nv;
    }
}

/// A 32-bit integer hash (lowbias32): the device's random numbers.
#[cube]
fn hash(x: u32) -> u32 {
    let mut h = x;
    h ^= h >> 16;
    h *= 0x7feb_352du32;
    h ^= h >> 15;
    h *= 0x846c_a68bu32;
    h ^= h >> 16;
    h
}

/// Per row: every feature's loss against the clean targets, the predictions, and either the
/// gradient of the training objective (written over the head's outputs `y`; `train`) or the
/// z-scores against the model's training loss statistics (`zscore`: `stats` holds per model
/// the loss means then the stds, `2 x features` values). One unit per row.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn row_losses(
    y: &mut Array<f32>,
    dense: &Array<f32>,
    cats: &Array<u32>,
    models: &Array<u32>,
    rows: &Array<u32>,
    stats: &Array<f32>,
    scores: &mut Array<f32>,
    n_rows: u32,
    #[comptime] n_num: usize,
    #[comptime] n_bin: usize,
    #[comptime] n_cat: usize,
    #[comptime] train: bool,
    #[comptime] zscore: bool,
) {
    let r = ABSOLUTE_POS;
    if r >= n_rows as usize {
        terminate!();
    }
    let n_dense = n_num + n_bin;
    let f = n_dense + n_cat;
    let sf = comptime!(score_fields(n_num, n_bin, n_cat));
    let model = rows[r * ROW_FIELDS] as usize;
    let m = model * comptime!(model_fields(n_cat));
    let y_off = rows[r * ROW_FIELDS + 2] as usize;
    let batch = rows[r * ROW_FIELDS + 5] as f32;
    let s = r * sf;
    let pred = s + 2 * f + 2;
    let k_num = 1.0 / (batch * f32::max(n_num as f32, 1.0));
    let k_bin = 1.0 / (batch * f32::max(n_bin as f32, 1.0));
    let k_cat = 1.0 / batch;
    #[unroll]
    for j in 0..n_num {
        let v = y[y_off + j];
        let d = v - dense[r * n_dense + j];
        scores[s + j] = d * d;
        scores[pred + j] = v;
        if comptime!(train) {
            y[y_off + j] = k_num * 2.0 * d;
        }
    }
    #[unroll]
    for j in 0..n_bin {
        let z = y[y_off + n_num + j];
        let t = dense[r * n_dense + n_num + j];
        // ln(sigmoid(z)) = -softplus(-z), ln(1 - sigmoid(z)) = -softplus(z).
        let soft = f32::ln(1.0 + f32::exp(-f32::abs(z)));
        let log_p = f32::max(-(f32::max(-z, 0.0) + soft), -100.0);
        let log_q = f32::max(-(f32::max(z, 0.0) + soft), -100.0);
        let prob = 1.0 / (1.0 + f32::exp(-z));
        scores[s + n_num + j] = -(t * log_p + (1.0 - t) * log_q);
        scores[pred + n_num + j] = prob;
        if comptime!(train) {
            y[y_off + n_num + j] = k_bin * (prob - t);
        }
    }
    #[unroll]
    for i in 0..n_cat {
        let cf = m + 4 + i * CAT_FIELDS;
        let slots = models[cf + 1] as usize;
        let at = y_off + models[cf + 4] as usize;
        let target = cats[r * n_cat + i] as usize;
        let mut best = 0usize;
        let mut max = y[at];
        for c in 1..slots {
            let v = y[at + c];
            if v > max {
                max = v;
                best = c;
            }
        }
        let mut sum = 0.0f32;
        for c in 0..slots {
            sum += f32::exp(y[at + c] - max);
        }
        let mut picked = 0.0f32;
        if target < slots {
            picked = f32::exp(y[at + target] - max);
        }
        scores[s + n_dense + i] = f32::ln(sum) - f32::ln(f32::max(picked, 1.175_494_4e-38));
        scores[pred + n_dense + i] = best as f32;
        if comptime!(train) {
            for c in 0..slots {
                let mut onehot = 0.0f32;
                if c == target {
                    onehot = 1.0;
                }
                y[at + c] = k_cat * (f32::exp(y[at + c] - max) / sum - onehot);
            }
        }
    }
    if comptime!(zscore) {
        let st = model * 2 * f;
        let mut top = 0.0f32;
        let mut total = 0.0f32;
        for j in 0..f {
            let z = f32::abs(scores[s + j] - stats[st + j]) / stats[st + f + j];
            scores[s + f + j] = z;
            top = f32::max(top, z);
            total += z;
        }
        scores[s + 2 * f] = top;
        scores[s + 2 * f + 1] = total / f32::max(f as f32, 1.0);
    }
}

/// ReLU's backward: zero the gradient where the activation was clamped to 0.
#[cube(launch)]
pub fn relu_mask(grad: &mut Array<f32>, act: &Array<f32>, n: u32) {
    if ABSOLUTE_POS < n as usize && act[ABSOLUTE_POS] <= 0.0 {
        grad[ABSOLUTE_POS] = 0.0;
    }
}

/// Bias step of each model: `bias -= lr x column sums of its rows' gradient`. `pieces` per
/// model: bias offset, width, gradient offset, rows, gradient row stride. Unit (column x,
/// model `CUBE_POS_Y`).
#[cube(launch)]
pub fn bias_step(bias: &mut Array<f32>, grad: &Array<f32>, pieces: &Array<u32>, lr: f32) {
    let p = CUBE_POS_Y as usize * 5;
    let col = ABSOLUTE_POS_X as usize;
    if col >= pieces[p + 1] as usize {
        terminate!();
    }
    let off = pieces[p + 2] as usize;
    let stride = pieces[p + 4] as usize;
    let mut sum = 0.0f32;
    for r in 0..pieces[p + 3] as usize {
        sum += grad[off + r * stride + col];
    }
    let at = pieces[p] as usize + col;
    bias[at] -= lr * sum;
}

/// Embedding step: each model's table rows get `-lr x` the sum of the input gradients of the
/// batch rows whose (noisy) code is that slot. No atomics: one unit per (slot, column) sums
/// over the model's rows. Unit (slot x width + column: x; categorical: `CUBE_POS_Y`; model
/// piece: `CUBE_POS_Z`); `pieces` per model: model, first row, rows.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn embedding_step(
    emb: &mut Array<f32>,
    grad_x0: &Array<f32>,
    cats: &Array<u32>,
    models: &Array<u32>,
    rows: &Array<u32>,
    pieces: &Array<u32>,
    lr: f32,
    #[comptime] n_cat: usize,
) {
    let p = CUBE_POS_Z as usize * 3;
    let i = CUBE_POS_Y as usize;
    let cf = pieces[p] as usize * comptime!(model_fields(n_cat)) + 4 + i * CAT_FIELDS;
    let width = models[cf + 2] as usize;
    let slots = models[cf + 1];
    let idx = ABSOLUTE_POS_X as usize;
    if idx >= slots as usize * width {
        terminate!();
    }
    let slot = (idx / width) as u32;
    let k = idx % width;
    let col = models[cf + 3] as usize + k;
    let first = pieces[p + 1] as usize;
    let mut sum = 0.0f32;
    for r in first..first + pieces[p + 2] as usize {
        if u32::min(cats[r * n_cat + i], slots - 1) == slot {
            sum += grad_x0[rows[r * ROW_FIELDS + 1] as usize + col];
        }
    }
    let at = models[cf] as usize + idx;
    emb[at] -= lr * sum;
}

/// Net loss of each piece of rows (the mean over its rows and features), added to
/// `out[target]`: `pieces` per piece: target, first row, rows. No atomics: the targets of one
/// launch must be distinct (a piece each, or a model each in a training step).
#[cube(launch)]
pub fn piece_loss(
    scores: &Array<f32>,
    pieces: &Array<u32>,
    out: &mut Array<f32>,
    n_pieces: u32,
    #[comptime] features: usize,
    #[comptime] stride: usize,
) {
    let p = ABSOLUTE_POS;
    if p >= n_pieces as usize {
        terminate!();
    }
    let first = pieces[p * 3 + 1] as usize;
    let n = pieces[p * 3 + 2] as usize;
    let mut sum = 0.0f32;
    for r in first..first + n {
        for j in 0..features {
            sum += scores[r * stride + j];
        }
    }
    let at = pieces[p * 3] as usize;
    out[at] += sum / (f32::max(n as f32, 1.0) * features as f32);
}
