//! The forward pass and what is computed from it: per-row losses, predictions and z-scores
//! (scoring), and net losses per piece of rows (validation, training losses).
//!
//! Inputs: a pack's [`Params`] and a [`Plan`] of rows whose inputs are on the device (or, for
//! evaluation, host rows uploaded here). Outputs: the [`Forward`] buffers (first-layer input,
//! hidden activations, head outputs), the scores buffer ([`crate::kernels::score_fields`] f32
//! per row), and read back, [`Evaluation`]s and per-model losses. State: none; buffers live
//! for one launch sequence.

use cubecl::prelude::*;
use cubecl::server::Handle;

use crate::GpuBackend;
use crate::device::arg;
use crate::kernels::{self, STORE_BIAS};
use crate::layout::{Layout, Params};
use crate::plans::{
    Gemm, LAUNCH_ROWS, Piece, Plan, grid_1d, inputs, layer_input, layer_output, plans,
};
use dfp_model::backend::EvalJob;
use dfp_model::encode::Encoded;
use dfp_model::network::{Evaluation, Network, Shape};

/// Device buffers of one forward pass.
pub(crate) struct Forward {
    /// First-layer input (numerics, binaries, embeddings), the plan's `x_len` values.
    pub(crate) x0: Handle,
    /// Each hidden layer's activations (after ReLU), `rows x width`.
    pub(crate) acts: Vec<Handle>,
    /// The head's outputs, the plan's `y_len` values.
    pub(crate) out: Handle,
}

/// The problems of dense layer `l` of a plan's pieces (`x W + b`).
fn layer_problems(lay: &Layout, plan: &Plan, l: usize, head: bool) -> Vec<Gemm> {
    plan.pieces
        .iter()
        .map(|pc| {
            let s = &lay.slots[pc.model];
            let d = s.dims();
            let (k, n) = (d[l], d[l + 1]);
            let (x_off, x_rs) = layer_input(pc, s, l);
            Gemm {
                m: pc.rows,
                n,
                k,
                a: (x_off, x_rs, 1),
                b: (s.w_off[l], n, 1),
                c: layer_output(pc, n, head),
                bias: s.b_off[l],
            }
        })
        .collect()
}

impl<R: Runtime> GpuBackend<R> {
    /// Each row's first-layer input: its numerics and binaries, then each categorical's
    /// embedding row; the plan's `x_len` values.
    pub(crate) fn gather_input(
        &self,
        lay: &Layout,
        p: &Params,
        plan: &Plan,
        rows: &Handle,
        [dense, cats]: [&Handle; 2],
    ) -> Handle {
        let x0 = self.empty(plan.x_len);
        let max_in = lay.slots.iter().map(|s| s.in_w).max().unwrap_or(1).max(1);
        let (count, dim) = grid_1d(plan.rows * max_in);
        kernels::gather_input::launch::<R>(
            &self.client,
            count,
            dim,
            arg(dense),
            arg(cats),
            arg(&p.embeddings),
            arg(&p.models),
            arg(rows),
            arg(&x0),
            plan.rows as u32,
            max_in as u32,
            lay.n_dense(),
            lay.n_cat,
        );
        x0
    }

    /// The forward pass of a plan's rows (inputs already on the device, in plan row order).
    pub(crate) fn forward(
        &self,
        lay: &Layout,
        p: &Params,
        plan: &Plan,
        rows: &Handle,
        inputs: [&Handle; 2],
    ) -> Forward {
        let x0 = self.gather_input(lay, p, plan, rows, inputs);
        let layers = lay.hidden.len() + 1;
        let mut acts: Vec<Handle> = Vec::with_capacity(lay.hidden.len());
        let out = self.empty(plan.y_len);
        for l in 0..layers {
            let head = l + 1 == layers;
            let problems = layer_problems(lay, plan, l, head);
            let input = if l == 0 { &x0 } else { &acts[l - 1] };
            let dst = if head {
                out.clone()
            } else {
                self.empty(plan.rows * lay.hidden[l])
            };
            self.gemm(
                &problems,
                [input, &p.weights, &dst, &p.biases],
                1.0,
                STORE_BIAS,
                !head,
            );
            if !head {
                acts.push(dst);
            }
        }
        Forward { x0, acts, out }
    }

    /// Per-row losses and predictions of the head's outputs `y` against the clean `targets`
    /// (dense values, codes); with `train`, the gradient of the training objective is written
    /// over `y`; with `zscore`, z-scores against `stats` (per model the loss means, then the
    /// stds). Returns the scores buffer.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn losses(
        &self,
        lay: &Layout,
        p: &Params,
        plan: &Plan,
        rows: &Handle,
        y: &Handle,
        [dense, cats]: [&Handle; 2],
        stats: &Handle,
        train: bool,
        zscore: bool,
    ) -> Handle {
        let scores = self.empty(plan.rows * lay.score_fields());
        let (count, dim) = grid_1d(plan.rows);
        kernels::row_losses::launch::<R>(
            &self.client,
            count,
            dim,
            arg(y),
            arg(dense),
            arg(cats),
            arg(&p.models),
            arg(rows),
            arg(stats),
            arg(&scores),
            plan.rows as u32,
            lay.n_num,
            lay.n_bin,
            lay.n_cat,
            train,
            zscore,
        );
        scores
    }

    /// Net loss per piece of `plan` (added into `out[model]` or `out[piece]`).
    pub(crate) fn piece_losses(
        &self,
        lay: &Layout,
        plan: &Plan,
        scores: &Handle,
        out: &Handle,
        by_model: bool,
    ) {
        let pieces = self.upload_u32(&plan.triples(by_model));
        let (count, dim) = grid_1d(plan.pieces.len());
        kernels::piece_loss::launch::<R>(
            &self.client,
            count,
            dim,
            arg(scores),
            arg(&pieces),
            arg(out),
            plan.pieces.len() as u32,
            lay.features(),
            lay.score_fields(),
        );
    }

    /// The scores of host rows `parts` (one per piece of `plan`): upload, forward, losses.
    fn evaluate_plan(
        &self,
        lay: &Layout,
        p: &Params,
        parts: &[(&Encoded, usize, usize)],
        plan: &Plan,
        stats: &Handle,
        zscore: bool,
    ) -> Handle {
        let (dense, cats) = inputs(parts);
        let (dense, cats) = (self.upload_f32(&dense), self.upload_u32(&cats));
        let rows = self.upload_u32(&plan.table);
        let fwd = self.forward(lay, p, plan, &rows, [&dense, &cats]);
        self.losses(
            lay,
            p,
            plan,
            &rows,
            &fwd.out,
            [&dense, &cats],
            stats,
            false,
            zscore,
        )
    }

    /// Mean over pieces of `piece_rows` rows of each piece's net loss, per model with rows
    /// (dfencoder's validation loss), and the per-row losses when `keep_rows`.
    pub(crate) fn loss_by_model(
        &self,
        lay: &Layout,
        p: &Params,
        sets: &[&Encoded],
        piece_rows: usize,
        keep_rows: bool,
    ) -> (Vec<Option<f64>>, Vec<Evaluation>) {
        let work: Vec<(usize, usize)> = sets.iter().enumerate().map(|(m, e)| (m, e.rows)).collect();
        let (mut sums, mut counts) = (vec![0.0f64; sets.len()], vec![0usize; sets.len()]);
        let mut evals = vec![Evaluation::default(); sets.len()];
        let stats = self.upload_f32(&[]);
        for plan in plans(lay, &work, piece_rows) {
            let parts: Vec<(&Encoded, usize, usize)> = plan
                .pieces
                .iter()
                .map(|pc| (sets[pc.model], plan.source(pc), plan.source(pc) + pc.rows))
                .collect();
            let scores = self.evaluate_plan(lay, p, &parts, &plan, &stats, false);
            let out = self.upload_f32(&vec![0.0; plan.pieces.len()]);
            self.piece_losses(lay, &plan, &scores, &out, false);
            for (pc, loss) in plan.pieces.iter().zip(self.read_f32(out)) {
                sums[pc.model] += f64::from(loss);
                counts[pc.model] += 1;
            }
            if keep_rows {
                let scores = self.read_f32(scores);
                for pc in &plan.pieces {
                    evals[pc.model].extend(read_evaluation(lay, &scores, pc, false));
                }
            }
        }
        let losses = sums
            .iter()
            .zip(&counts)
            .map(|(&s, &n)| (n > 0).then(|| s / n as f64))
            .collect();
        (losses, evals)
    }

    /// Scores every row of a group of jobs (one pack) into `out`, in job order.
    pub(crate) fn evaluate_group(&self, jobs: &[&EvalJob<'_>], out: &mut [Evaluation]) {
        let shapes: Vec<&Shape> = jobs.iter().map(|j| &j.network.shape).collect();
        let lay = Layout::new(&shapes, &vec![0; jobs.len()]);
        let nets: Vec<&Network> = jobs.iter().map(|j| j.network).collect();
        let p = self.params(&lay, &nets);
        let zscore = jobs.iter().any(|j| j.stats.is_some());
        let stats = self.upload_f32(&stats_table(jobs, lay.features()));
        let work: Vec<(usize, usize)> = jobs
            .iter()
            .enumerate()
            .map(|(m, j)| (m, j.input.rows))
            .collect();
        for plan in plans(&lay, &work, LAUNCH_ROWS) {
            let parts: Vec<(&Encoded, usize, usize)> = plan
                .pieces
                .iter()
                .map(|pc| {
                    let start = plan.source(pc);
                    (jobs[pc.model].input, start, start + pc.rows)
                })
                .collect();
            let scores = self.evaluate_plan(&lay, &p, &parts, &plan, &stats, zscore);
            let scores = self.read_f32(scores);
            for pc in &plan.pieces {
                let z = jobs[pc.model].stats.is_some();
                out[pc.model].extend(read_evaluation(&lay, &scores, pc, z));
            }
        }
    }
}

/// Per job, the loss means then stds (`f` each) the z-scores divide by; jobs without
/// statistics (or with the wrong count) get mean 0, std 1.
fn stats_table(jobs: &[&EvalJob<'_>], f: usize) -> Vec<f32> {
    let mut stats = Vec::with_capacity(jobs.len() * 2 * f);
    for j in jobs {
        match j.stats {
            Some((mean, std)) if mean.len() == f && std.len() == f => {
                stats.extend(mean.iter().map(|&v| v as f32));
                stats.extend(std.iter().map(|&v| v as f32));
            }
            _ => {
                stats.extend(std::iter::repeat_n(0.0, f));
                stats.extend(std::iter::repeat_n(1.0, f));
            }
        }
    }
    stats
}

/// A piece's rows of the scores buffer as an [`Evaluation`].
pub(crate) fn read_evaluation(
    lay: &Layout,
    scores: &[f32],
    pc: &Piece,
    zscore: bool,
) -> Evaluation {
    let (f, sf) = (lay.features(), lay.score_fields());
    let mut ev = Evaluation {
        rows: pc.rows,
        ..Evaluation::default()
    };
    for r in pc.first..pc.first + pc.rows {
        let row = &scores[r * sf..(r + 1) * sf];
        ev.losses.extend_from_slice(&row[..f]);
        if zscore {
            ev.z_loss.extend_from_slice(&row[f..2 * f]);
            ev.max_abs_z.push(row[2 * f]);
            ev.mean_abs_z.push(row[2 * f + 1]);
        }
        let pred = &row[2 * f + 2..];
        ev.numeric_pred.extend_from_slice(&pred[..lay.n_num]);
        ev.binary_pred
            .extend(pred[lay.n_num..lay.n_dense()].iter().map(|&p| p > 0.5));
        ev.categorical_pred
            .extend(pred[lay.n_dense()..f].iter().map(|&c| c as u32));
    }
    ev
}
