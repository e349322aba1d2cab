//! Backpropagation with the SGD update fused in, for every model of a plan at once.
//!
//! Input: a [`Forward`] pass whose head outputs have been overwritten with the gradient of the
//! training objective (by the row losses with `train`), the noisy codes the embeddings were
//! gathered from, and the learning rate. Per dense layer from the head down: the ReLU mask
//! ([`GpuBackend::relu_mask`]), the gradient of the layer's input against the weights before
//! the step (`dz Wᵀ`; for the first layer, of the embedding columns only), then the weight step
//! fused into the weight-gradient GEMM (`W += -lr xᵀ dz`) and the bias step
//! ([`GpuBackend::bias_step`]); finally the embedding step ([`GpuBackend::embedding_step`]).
//! Output: the pack's weights, stepped in place. State: none beyond the step's buffers.

use cubecl::prelude::*;
use cubecl::server::Handle;

use crate::GpuBackend;
use crate::device::arg;
use crate::forward::Forward;
use crate::kernels::{self, ACCUMULATE, STORE};
use crate::layout::{Layout, Params};
use crate::plans::{Gemm, Plan, grid_1d, layer_input, layer_output};

/// The problems of the gradient of hidden layer `l`'s input (`l > 0`): `dz Wᵀ` per piece.
fn input_grad_problems(lay: &Layout, plan: &Plan, l: usize, head: bool) -> Vec<Gemm> {
    let k = lay.hidden[l - 1];
    plan.pieces
        .iter()
        .map(|pc| {
            let s = &lay.slots[pc.model];
            let n = s.dims()[l + 1];
            let (off, rs) = layer_output(pc, n, head);
            Gemm {
                m: pc.rows,
                n: k,
                k: n,
                a: (off, rs, 1),
                b: (s.w_off[l], 1, n),
                c: (pc.first * k, k),
                bias: 0,
            }
        })
        .collect()
}

/// The problems of the gradient of the first layer's embedding columns: `dz W_embᵀ` per
/// piece, written where those columns are in the input's layout.
fn embedding_grad_problems(lay: &Layout, plan: &Plan, head: bool) -> Vec<Gemm> {
    let emb_at = lay.n_dense();
    plan.pieces
        .iter()
        .map(|pc| {
            let s = &lay.slots[pc.model];
            let n = s.dims()[1];
            Gemm {
                m: pc.rows,
                n: s.in_w - emb_at,
                k: n,
                a: (layer_output(pc, n, head).0, n, 1),
                b: (s.w_off[0] + emb_at * n, 1, n),
                c: (pc.x_off + emb_at, s.in_w),
                bias: 0,
            }
        })
        .collect()
}

/// The problems of layer `l`'s weight step: `W += -lr xᵀ dz` per piece, `x` the layer's input.
fn weight_step_problems(lay: &Layout, plan: &Plan, l: usize, head: bool) -> Vec<Gemm> {
    plan.pieces
        .iter()
        .map(|pc| {
            let s = &lay.slots[pc.model];
            let d = s.dims();
            let (k_in, n) = (d[l], d[l + 1]);
            let (x_off, x_rs) = layer_input(pc, s, l);
            let (off, rs) = layer_output(pc, n, head);
            Gemm {
                m: k_in,
                n,
                k: pc.rows,
                a: (x_off, 1, x_rs),
                b: (off, rs, 1),
                c: (s.w_off[l], n),
                bias: 0,
            }
        })
        .collect()
}

/// Layer `l`'s bias-step pieces for [`GpuBackend::bias_step`].
fn bias_pieces(lay: &Layout, plan: &Plan, l: usize, head: bool) -> Vec<u32> {
    plan.pieces
        .iter()
        .flat_map(|pc| {
            let s = &lay.slots[pc.model];
            let n = s.dims()[l + 1];
            let (off, rs) = layer_output(pc, n, head);
            [s.b_off[l], n, off, pc.rows, rs].map(|v| v as u32)
        })
        .collect()
}

impl<R: Runtime> GpuBackend<R> {
    /// Backpropagates the head's gradient (in `fwd.out`) and steps every weight.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn backward(
        &self,
        lay: &Layout,
        p: &Params,
        plan: &Plan,
        rows: &Handle,
        fwd: &Forward,
        noisy_cats: &Handle,
        lr: f32,
    ) {
        let layers = lay.hidden.len() + 1;
        let mut dz = fwd.out.clone();
        let mut grad_x0 = None;
        for l in (0..layers).rev() {
            let head = l + 1 == layers;
            if !head {
                self.relu_mask(&dz, &fwd.acts[l], plan.rows * lay.hidden[l]);
            }
            // dz Wᵀ into `dst`: the gradient of the layer's input, before the step.
            let input_grad = |problems: &[Gemm], dst: &Handle| {
                self.gemm(
                    problems,
                    [&dz, &p.weights, dst, &p.biases],
                    1.0,
                    STORE,
                    false,
                )
            };
            let mut below = None;
            if l > 0 {
                let g = self.empty(plan.rows * lay.hidden[l - 1]);
                input_grad(&input_grad_problems(lay, plan, l, head), &g);
                below = Some(g);
            } else if lay.n_cat > 0 {
                // The input gradient has the input's layout (embedding columns only).
                let g = self.empty(plan.x_len);
                input_grad(&embedding_grad_problems(lay, plan, head), &g);
                grad_x0 = Some(g);
            }
            let x = if l == 0 { &fwd.x0 } else { &fwd.acts[l - 1] };
            self.gemm(
                &weight_step_problems(lay, plan, l, head),
                [x, &dz, &p.weights, &p.biases],
                -lr,
                ACCUMULATE,
                false,
            );
            self.bias_step(&p.biases, &dz, &bias_pieces(lay, plan, l, head), lr);
            if let Some(g) = below {
                dz = g;
            }
        }
        if let Some(grad_x0) = grad_x0 {
            let pieces: Vec<u32> = plan
                .pieces
                .iter()
                .flat_map(|pc| [pc.model as u32, pc.first as u32, pc.rows as u32])
                .collect();
            let tables = [&p.embeddings, &p.models];
            self.embedding_step(lay, tables, &grad_x0, [noisy_cats, rows], &pieces, lr);
        }
    }

    /// ReLU's backward: zeroes `grad[i]` where `act[i] <= 0`, for `i < n`.
    pub(crate) fn relu_mask(&self, grad: &Handle, act: &Handle, n: usize) {
        let (count, dim) = grid_1d(n);
        kernels::relu_mask::launch::<R>(&self.client, count, dim, arg(grad), arg(act), n as u32);
    }

    /// `bias -= lr x` column sums of each piece's gradient rows; `pieces`: per piece bias
    /// offset, width, gradient offset, rows, gradient row stride.
    pub(crate) fn bias_step(&self, bias: &Handle, grad: &Handle, pieces: &[u32], lr: f32) {
        let count = pieces.len() / 5;
        if count == 0 {
            return;
        }
        let widest = pieces.chunks(5).map(|p| p[1]).max().unwrap_or(1);
        let pieces = self.upload_u32(pieces);
        kernels::bias_step::launch::<R>(
            &self.client,
            CubeCount::Static(widest.div_ceil(256), count as u32, 1),
            CubeDim::new_1d(256),
            arg(bias),
            arg(grad),
            arg(&pieces),
            lr,
        );
    }

    /// Steps each piece's model's embedding tables (`[embeddings, models]`) by `-lr x` the sum
    /// of the input gradients (`grad_x0`, in the input's layout) of the piece's rows whose code
    /// (`[cats, rows]`: the codes and the per-row table) is each slot; `pieces`: per piece
    /// model, first row, rows.
    pub(crate) fn embedding_step(
        &self,
        lay: &Layout,
        [embeddings, models]: [&Handle; 2],
        grad_x0: &Handle,
        [cats, rows]: [&Handle; 2],
        pieces: &[u32],
        lr: f32,
    ) {
        let count = pieces.len() / 3;
        if count == 0 || lay.n_cat == 0 {
            return;
        }
        let widest = lay
            .slots
            .iter()
            .flat_map(|s| {
                s.shape
                    .categories
                    .iter()
                    .zip(s.shape.embedding_widths())
                    .map(|(&n, w)| n * w)
            })
            .max()
            .unwrap_or(1);
        let pieces = self.upload_u32(pieces);
        kernels::embedding_step::launch::<R>(
            &self.client,
            CubeCount::Static(widest.div_ceil(256) as u32, lay.n_cat as u32, count as u32),
            CubeDim::new_1d(256),
            arg(embeddings),
            arg(grad_x0),
            arg(cats),
            arg(models),
            arg(rows),
            arg(&pieces),
            lr,
            lay.n_cat,
        );
    }
}
