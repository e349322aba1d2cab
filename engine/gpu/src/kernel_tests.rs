//! Each kernel alone against a plain Rust reference (CubeCL's style): every test is written
//! once, generic over the runtime, and instantiated for every runtime present by
//! `on_every_runtime!`: wgpu where an adapter answers (required with `DFP_REQUIRE_WGPU=1`, as
//! in CI on Mesa's software Vulkan), CUDA where the driver and a device answer (required with
//! `DFP_REQUIRE_CUDA=1`). A test goes through the kernel's thin launch wrapper, so the grid and
//! the packing of its tables are checked too. Sizes are small (software Vulkan is slow) but
//! cross the kernels' edges: GEMM problems off the 64-wide tiles and 16-deep steps, launches
//! past one cube of 256 units, ragged vocabularies, codes past the vocabulary.
//!
//! References are computed in f64 from the definitions (dfp_model's CPU network computes the
//! same things; the conformance suite in `tests/backends.rs` compares whole passes with it).

use std::sync::OnceLock;

use cubecl::cuda::CudaRuntime;
use cubecl::prelude::*;
use cubecl::wgpu::WgpuRuntime;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::GpuBackend;
use crate::kernels::{ACCUMULATE, STORE, STORE_BIAS};
use crate::layout::Layout;
use crate::plans::{Gemm, Plan, plans};
use dfp_model::network::{Network, Shape};

/// Whether the environment variable `var` is `1`.
fn required(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1")
}

/// The backend, if the runtime started; a runtime that `var` requires must start.
fn present<R: Runtime>(
    started: dfp_core::Result<GpuBackend<R>>,
    var: &str,
) -> Option<GpuBackend<R>> {
    match started {
        Ok(b) => Some(b),
        Err(e) if required(var) => panic!("{var}=1, but the runtime did not start: {e}"),
        Err(e) => {
            eprintln!("skipping: {e}");
            None
        }
    }
}

fn wgpu_runtime() -> Option<&'static GpuBackend<WgpuRuntime>> {
    static B: OnceLock<Option<GpuBackend<WgpuRuntime>>> = OnceLock::new();
    B.get_or_init(|| present(crate::wgpu(), "DFP_REQUIRE_WGPU"))
        .as_ref()
}

fn cuda_runtime() -> Option<&'static GpuBackend<CudaRuntime>> {
    static B: OnceLock<Option<GpuBackend<CudaRuntime>>> = OnceLock::new();
    B.get_or_init(|| present(crate::cuda(), "DFP_REQUIRE_CUDA"))
        .as_ref()
}

/// `|got - want| <= tol (1 + scale)`, with a message naming the value.
fn assert_near(what: &str, got: f32, want: f64, scale: f64, tol: f64) {
    let err = (f64::from(got) - want).abs();
    assert!(
        err <= tol * (1.0 + scale),
        "{what}: got {got}, want {want} (error {err:e}, scale {scale})"
    );
}

fn uniform(rng: &mut ChaCha8Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

// ---------------------------------------------------------------------------- grouped GEMM

/// One problem of the GEMM test: sizes, and whether `a` and `b` are stored transposed.
struct Problem {
    m: usize,
    n: usize,
    k: usize,
    a_t: bool,
    b_t: bool,
}

/// The problems' operands packed one after another, as the kernel reads them.
struct GemmCase {
    problems: Vec<Gemm>,
    a: Vec<f32>,
    b: Vec<f32>,
    bias: Vec<f32>,
    c_len: usize,
}

fn gemm_case(list: &[Problem], rng: &mut ChaCha8Rng) -> GemmCase {
    let (mut a_len, mut b_len, mut c_len, mut bias_len) = (0, 0, 0, 0);
    let mut problems = Vec::new();
    for p in list {
        // Logical a is m x k, b is k x n; stored transposed, the strides swap.
        let a = if p.a_t {
            (a_len, 1, p.m)
        } else {
            (a_len, p.k, 1)
        };
        let b = if p.b_t {
            (b_len, 1, p.k)
        } else {
            (b_len, p.n, 1)
        };
        // Rows of c have three columns of padding that no problem may touch.
        problems.push(Gemm {
            m: p.m,
            n: p.n,
            k: p.k,
            a,
            b,
            c: (c_len, p.n + 3),
            bias: bias_len,
        });
        a_len += p.m * p.k;
        b_len += p.k * p.n;
        c_len += p.m * (p.n + 3);
        bias_len += p.n;
    }
    GemmCase {
        problems,
        a: uniform(rng, a_len, -1.0, 1.0),
        b: uniform(rng, b_len, -1.0, 1.0),
        bias: uniform(rng, bias_len, -1.0, 1.0),
        c_len: c_len + 5,
    }
}

/// Element (i, j) of `a b` and the sum of the magnitudes of its terms.
fn product(case: &GemmCase, g: &Gemm, i: usize, j: usize) -> (f64, f64) {
    let (mut sum, mut mag) = (0.0, 0.0);
    for kk in 0..g.k {
        let a = f64::from(case.a[g.a.0 + i * g.a.1 + kk * g.a.2]);
        let b = f64::from(case.b[g.b.0 + kk * g.b.1 + j * g.b.2]);
        sum += a * b;
        mag += (a * b).abs();
    }
    (sum, mag)
}

fn grouped_gemm_solves_every_problem_alone<R: Runtime>(gpu: &GpuBackend<R>) {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let list = [
        (1, 1, 1, false, false),
        (5, 7, 3, true, false),
        (64, 64, 16, false, true),
        (70, 33, 65, true, true),
        (130, 17, 100, false, false),
        (3, 129, 40, true, true),
        (4, 6, 0, false, false),
        (0, 5, 4, false, false),
    ]
    .map(|(m, n, k, a_t, b_t)| Problem { m, n, k, a_t, b_t });
    let case = gemm_case(&list, &mut rng);
    let (a, b, bias) = (
        gpu.upload_f32(&case.a),
        gpu.upload_f32(&case.b),
        gpu.upload_f32(&case.bias),
    );
    let alpha = -0.05f32;
    for (mode, relu, name) in [
        (STORE_BIAS, false, "c = a b + bias"),
        (STORE_BIAS, true, "c = relu(a b + bias)"),
        (STORE, false, "c = a b"),
        (ACCUMULATE, false, "c += -lr a b"),
    ] {
        let before = uniform(&mut rng, case.c_len, -2.0, 2.0);
        let c = gpu.upload_f32(&before);
        gpu.gemm(&case.problems, [&a, &b, &c, &bias], alpha, mode, relu);
        let got = gpu.read_f32(c);
        let mut touched = vec![false; case.c_len];
        for (p, g) in case.problems.iter().enumerate() {
            for i in 0..g.m {
                for j in 0..g.n {
                    let at = g.c.0 + i * g.c.1 + j;
                    touched[at] = true;
                    let (ab, mag) = product(&case, g, i, j);
                    let want = match mode {
                        STORE_BIAS if relu => (ab + f64::from(case.bias[g.bias + j])).max(0.0),
                        STORE_BIAS => ab + f64::from(case.bias[g.bias + j]),
                        STORE => ab,
                        _ => f64::from(before[at]) + f64::from(alpha) * ab,
                    };
                    let what = format!("{name}: problem {p} ({}x{}x{}) c[{i}][{j}]", g.m, g.n, g.k);
                    assert_near(&what, got[at], want, mag, 2e-5);
                }
            }
        }
        for (at, _) in touched.iter().enumerate().filter(|(_, t)| !**t) {
            assert_eq!(
                got[at], before[at],
                "{name}: c[{at}] is outside every problem"
            );
        }
    }
}

// ------------------------------------------------------------------------ per-row kernels

/// Two models of one group with ragged vocabularies (so ragged embedding and head widths),
/// their networks, and a plan of `rows[m]` rows of model `m` (sources `0..rows[m]`).
fn pack(rows: [usize; 2], seed: u64) -> (Layout, Vec<Network>, Plan) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let nets: Vec<Network> = [vec![3, 7], vec![12, 2]]
        .into_iter()
        .map(|categories| {
            // Unequal numeric and binary counts: their gradients are scaled apart.
            let shape = Shape {
                n_numeric: 3,
                n_binary: 2,
                categories,
                hidden: vec![6],
            };
            Network::new(shape, &mut rng)
        })
        .collect();
    let shapes: Vec<&Shape> = nets.iter().map(|n| &n.shape).collect();
    let lay = Layout::new(&shapes, &[11, 12]);
    let mut plan = Plan::default();
    for (m, &n) in rows.iter().enumerate() {
        plan.push(&lay, m, &(0..n as u32).collect::<Vec<_>>());
    }
    (lay, nets, plan)
}

/// Per plan row, dense values (numerics in -2..2, binaries 0/1) and codes (one in ten past
/// the row's model's vocabulary).
fn row_inputs(lay: &Layout, plan: &Plan, rng: &mut ChaCha8Rng) -> (Vec<f32>, Vec<u32>) {
    let (mut dense, mut cats) = (Vec::new(), Vec::new());
    for pc in &plan.pieces {
        let cats_of = &lay.slots[pc.model].shape.categories;
        for _ in 0..pc.rows {
            dense.extend((0..lay.n_num).map(|_| rng.random_range(-2.0f32..2.0)));
            dense.extend((0..lay.n_bin).map(|_| f32::from(rng.random_bool(0.4))));
            cats.extend(cats_of.iter().map(|&n| {
                if rng.random_bool(0.1) {
                    (n + rng.random_range(0..3)) as u32
                } else {
                    rng.random_range(0..n) as u32
                }
            }));
        }
    }
    (dense, cats)
}

fn gather_input_builds_first_layer_rows<R: Runtime>(gpu: &GpuBackend<R>) {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let (lay, nets, plan) = pack([23, 17], 3);
    let (dense, cats) = row_inputs(&lay, &plan, &mut rng);
    let p = gpu.params(&lay, &nets.iter().collect::<Vec<_>>());
    let rows = gpu.upload_u32(&plan.table);
    let (d, c) = (gpu.upload_f32(&dense), gpu.upload_u32(&cats));
    let x0 = gpu.read_f32(gpu.gather_input(&lay, &p, &plan, &rows, [&d, &c]));
    assert!(x0.len() >= plan.x_len);
    let (nd, nc) = (lay.n_dense(), lay.n_cat);
    for pc in &plan.pieces {
        let shape = &nets[pc.model].shape;
        let in_w = shape.input_width();
        for i in 0..pc.rows {
            let r = pc.first + i;
            let mut want = dense[r * nd..(r + 1) * nd].to_vec();
            for (c, (&n, w)) in shape
                .categories
                .iter()
                .zip(shape.embedding_widths())
                .enumerate()
            {
                // Codes past the vocabulary read its last slot (`_other`).
                let code = (cats[r * nc + c] as usize).min(n - 1);
                want.extend_from_slice(&nets[pc.model].embeddings[c][code * w..(code + 1) * w]);
            }
            let at = pc.x_off + i * in_w;
            assert_eq!(x0[at..at + in_w], want, "model {} row {i}", pc.model);
        }
    }
}

/// dfencoder's per-feature losses of one row's head outputs `y` (network order), with the
/// predictions and the gradient of the training objective for a batch of `batch` rows.
struct RowReference {
    losses: Vec<f64>,
    preds: Vec<f64>,
    grad: Vec<f64>,
}

fn row_reference(
    y: &[f32],
    dense: &[f32],
    cats: &[u32],
    lay: &Layout,
    slots: &[usize],
    batch: usize,
) -> RowReference {
    let (nn, nb) = (lay.n_num, lay.n_bin);
    let b = batch as f64;
    let mut out = RowReference {
        losses: Vec::new(),
        preds: Vec::new(),
        grad: vec![0.0; y.len()],
    };
    for j in 0..nn {
        let d = f64::from(y[j]) - f64::from(dense[j]);
        out.losses.push(d * d);
        out.preds.push(f64::from(y[j]));
        out.grad[j] = 2.0 * d / (b * nn as f64);
    }
    for j in nn..nn + nb {
        let (z, t) = (f64::from(y[j]), f64::from(dense[j]));
        let p = 1.0 / (1.0 + (-z).exp());
        // ln(sigmoid(z)) = -softplus(-z), ln(1 - sigmoid(z)) = -softplus(z); torch clamps
        // each log at -100.
        let softplus = |x: f64| x.max(0.0) + (-x.abs()).exp().ln_1p();
        let (log_p, log_q) = ((-softplus(-z)).max(-100.0), (-softplus(z)).max(-100.0));
        out.losses.push(-(t * log_p + (1.0 - t) * log_q));
        out.preds.push(p);
        out.grad[j] = (p - t) / (b * nb as f64);
    }
    let mut at = nn + nb;
    for (i, &n) in slots.iter().enumerate() {
        let logits: Vec<f64> = y[at..at + n].iter().map(|&v| f64::from(v)).collect();
        let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = logits.iter().map(|v| (v - max).exp()).sum();
        let t = cats[i] as usize;
        // A code past the vocabulary has probability 0, clamped at f32's smallest normal.
        let log_picked = if t < n {
            logits[t] - max
        } else {
            f64::from(f32::MIN_POSITIVE).ln()
        };
        out.losses.push(sum.ln() - log_picked);
        let best = (0..n).fold(0, |best, c| if logits[c] > logits[best] { c } else { best });
        out.preds.push(best as f64);
        for (c, (g, &v)) in out.grad[at..at + n].iter_mut().zip(&logits).enumerate() {
            let onehot = if c == t { 1.0 } else { 0.0 };
            *g = ((v - max).exp() / sum - onehot) / b;
        }
        at += n;
    }
    out
}

fn row_losses_match_mse_bce_and_cross_entropy<R: Runtime>(gpu: &GpuBackend<R>) {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let (lay, nets, plan) = pack([5, 3], 5);
    let (mut dense, cats) = row_inputs(&lay, &plan, &mut rng);
    let mut y = uniform(&mut rng, plan.y_len, -3.0, 3.0);
    // Saturated binary logits against the wrong target, where torch's clamp of each log at
    // -100 decides the loss (100, not 150), and one right but confident.
    let nd = lay.n_dense();
    for (r, z, t) in [(0, 150.0, 0.0), (1, -150.0, 1.0), (6, 40.0, 1.0)] {
        let row = plan.table[r * crate::kernels::ROW_FIELDS + 2] as usize;
        y[row + lay.n_num] = z;
        dense[r * nd + lay.n_num] = t;
    }
    let f = lay.features();
    let stats: Vec<f32> = (0..2)
        .flat_map(|_| {
            let mut s = uniform(&mut rng, f, 0.0, 1.0);
            s.extend(uniform(&mut rng, f, 0.5, 2.0));
            s
        })
        .collect();
    let p = gpu.params(&lay, &nets.iter().collect::<Vec<_>>());
    let rows = gpu.upload_u32(&plan.table);
    let (d, c, st) = (
        gpu.upload_f32(&dense),
        gpu.upload_u32(&cats),
        gpu.upload_f32(&stats),
    );
    let sf = lay.score_fields();
    for train in [false, true] {
        let y_dev = gpu.upload_f32(&y);
        let scores = gpu.losses(&lay, &p, &plan, &rows, &y_dev, [&d, &c], &st, train, !train);
        let (scores, y_after) = (gpu.read_f32(scores), gpu.read_f32(y_dev));
        for pc in &plan.pieces {
            let slots = &lay.slots[pc.model].shape.categories;
            let out_w = lay.slots[pc.model].out_w;
            for i in 0..pc.rows {
                let r = pc.first + i;
                let y_at = pc.y_off + i * out_w;
                let want = row_reference(
                    &y[y_at..y_at + out_w],
                    &dense[r * lay.n_dense()..(r + 1) * lay.n_dense()],
                    &cats[r * lay.n_cat..(r + 1) * lay.n_cat],
                    &lay,
                    slots,
                    pc.rows,
                );
                let row = &scores[r * sf..(r + 1) * sf];
                let name = format!("train {train}, model {} row {i}", pc.model);
                if r < 2 {
                    assert_eq!(
                        want.losses[lay.n_num], 100.0,
                        "{name}: the reference clamps"
                    );
                }
                for j in 0..f {
                    let l = want.losses[j];
                    assert_near(&format!("{name}: loss {j}"), row[j], l, l.abs(), 1e-5);
                    let pr = want.preds[j];
                    assert_near(
                        &format!("{name}: prediction {j}"),
                        row[2 * f + 2 + j],
                        pr,
                        pr.abs(),
                        1e-5,
                    );
                }
                for (k, &g) in want.grad.iter().enumerate() {
                    let got = y_after[y_at + k];
                    if train {
                        assert_near(&format!("{name}: gradient {k}"), got, g, g.abs(), 1e-5);
                    } else {
                        assert_eq!(got, y[y_at + k], "{name}: y is left alone when scoring");
                    }
                }
                if !train {
                    let st = &stats[pc.model * 2 * f..(pc.model + 1) * 2 * f];
                    let z: Vec<f64> = (0..f)
                        .map(|j| {
                            ((f64::from(row[j]) - f64::from(st[j])) / f64::from(st[f + j])).abs()
                        })
                        .collect();
                    for (j, &zj) in z.iter().enumerate() {
                        assert_near(&format!("{name}: z {j}"), row[f + j], zj, zj, 1e-5);
                    }
                    let max = z.iter().copied().fold(0.0, f64::max);
                    let mean = z.iter().sum::<f64>() / f as f64;
                    assert_near(&format!("{name}: max |z|"), row[2 * f], max, max, 1e-5);
                    assert_near(
                        &format!("{name}: mean |z|"),
                        row[2 * f + 1],
                        mean,
                        mean,
                        1e-5,
                    );
                }
            }
        }
    }
}

fn piece_loss_adds_each_piece_mean<R: Runtime>(gpu: &GpuBackend<R>) {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let (lay, _, step) = pack([4, 3], 7);
    // Validation: pieces of at most 2 rows (model 0: 2, 2, 1 rows; model 1: 2, 1), a loss per
    // piece. A training step: one piece per model, added into the model's running sum (the
    // kernel has no atomics: a launch's targets are distinct).
    let pieces = plans(&lay, &[(0, 5), (1, 3)], 2).remove(0);
    assert_eq!(pieces.pieces.len(), 5);
    let (f, sf) = (lay.features(), lay.score_fields());
    for (plan, by_model) in [(pieces, false), (step, true)] {
        let scores = uniform(&mut rng, plan.rows * sf, 0.0, 3.0);
        let s = gpu.upload_f32(&scores);
        let targets = if by_model { 2 } else { plan.pieces.len() };
        let before = uniform(&mut rng, targets, -1.0, 1.0);
        let out = gpu.upload_f32(&before);
        gpu.piece_losses(&lay, &plan, &s, &out, by_model);
        let got = gpu.read_f32(out);
        let mut want: Vec<f64> = before.iter().map(|&v| f64::from(v)).collect();
        for (i, pc) in plan.pieces.iter().enumerate() {
            let sum: f64 = (pc.first..pc.first + pc.rows)
                .flat_map(|r| scores[r * sf..r * sf + f].iter().map(|&v| f64::from(v)))
                .sum();
            want[if by_model { pc.model } else { i }] += sum / (pc.rows * f) as f64;
        }
        for (t, (&g, &w)) in got.iter().zip(&want).enumerate() {
            assert_near(
                &format!("by model {by_model}: target {t}"),
                g,
                w,
                w.abs(),
                1e-5,
            );
        }
    }
}

fn make_batch_copies_rows_and_swaps_within_a_models_batch<R: Runtime>(gpu: &GpuBackend<R>) {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let (lay, nets, _) = pack([0, 0], 9);
    let (nd, nc) = (lay.n_dense(), lay.n_cat);
    // Resident rows: model 0's 50 rows, then model 1's 40; every value unique.
    let resident = 90;
    let train_dense: Vec<f32> = (0..resident * nd).map(|v| v as f32 + 0.5).collect();
    let train_cats: Vec<u32> = (0..(resident * nc) as u32).collect();
    // A step: 40 shuffled rows of model 0 and 30 of model 1.
    let mut plan = Plan::default();
    let mut sources: Vec<Vec<u32>> = Vec::new();
    for (m, (base, n, take)) in [(0u32, 50u32, 40), (50, 40, 30)].into_iter().enumerate() {
        let mut s: Vec<u32> = (base..base + n).collect();
        rand::seq::SliceRandom::shuffle(&mut s[..], &mut rng);
        s.truncate(take);
        plan.push(&lay, m, &s);
        sources.push(s);
    }
    let p = gpu.params(&lay, &nets.iter().collect::<Vec<_>>());
    let rows = gpu.upload_u32(&plan.table);
    let train = [gpu.upload_f32(&train_dense), gpu.upload_u32(&train_cats)];
    let run = |salt: u32, swap_p: f32| {
        let b = gpu.make_batch(&lay, &p, &plan, &rows, [&train[0], &train[1]], salt, swap_p);
        (
            gpu.read_f32(b.clean_dense),
            gpu.read_u32(b.clean_cats),
            gpu.read_f32(b.noisy_dense),
            gpu.read_u32(b.noisy_cats),
        )
    };
    let src: Vec<usize> = sources.iter().flatten().map(|&s| s as usize).collect();
    let want_dense: Vec<f32> = src
        .iter()
        .flat_map(|&s| train_dense[s * nd..(s + 1) * nd].to_vec())
        .collect();
    let want_cats: Vec<u32> = src
        .iter()
        .flat_map(|&s| train_cats[s * nc..(s + 1) * nc].to_vec())
        .collect();
    let (clean_d, clean_c, noisy_d, noisy_c) = run(1, 0.0);
    assert_eq!(clean_d[..want_dense.len()], want_dense);
    assert_eq!(clean_c[..want_cats.len()], want_cats);
    assert_eq!(noisy_d[..want_dense.len()], want_dense, "no noise at p = 0");
    assert_eq!(noisy_c[..want_cats.len()], want_cats, "no noise at p = 0");

    let noisy = run(5, 0.3);
    assert_eq!(
        noisy.0[..want_dense.len()],
        want_dense,
        "the clean rows stay clean"
    );
    assert_eq!(
        noisy.1[..want_cats.len()],
        want_cats,
        "the clean rows stay clean"
    );
    let mut swapped = 0;
    for pc in &plan.pieces {
        let batch = &sources[pc.model];
        for i in 0..pc.rows {
            let r = pc.first + i;
            for j in 0..nd + nc {
                // A value's source row, found from its (unique) value.
                let from = if j < nd {
                    (noisy.2[r * nd + j] - 0.5) as usize / nd
                } else {
                    noisy.3[r * nc + j - nd] as usize / nc
                };
                assert!(
                    batch.contains(&(from as u32)),
                    "model {} row {i} column {j}: value from row {from}, outside its batch",
                    pc.model
                );
                let same_column = if j < nd {
                    (noisy.2[r * nd + j] - 0.5) as usize % nd == j
                } else {
                    noisy.3[r * nc + j - nd] as usize % nc == j - nd
                };
                assert!(
                    same_column,
                    "row {r} column {j}: a value from another column"
                );
                swapped += usize::from(from != src[r]);
            }
        }
    }
    let frac = swapped as f64 / (plan.rows * (nd + nc)) as f64;
    assert!(
        (0.2..0.4).contains(&frac),
        "swapped {frac} of the values at p = 0.3"
    );
    assert_eq!(run(5, 0.3).2, noisy.2, "the same salt draws the same noise");
    assert_ne!(run(6, 0.3).2, noisy.2, "another salt draws other noise");
}

// ------------------------------------------------------------------------ backward pieces

fn relu_mask_zeroes_the_gradient_where_the_unit_was_off<R: Runtime>(gpu: &GpuBackend<R>) {
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    let (n, len) = (600, 610);
    let grad = uniform(&mut rng, len, -1.0, 1.0);
    let mut act = uniform(&mut rng, len, -1.0, 1.0);
    for i in (0..len).step_by(7) {
        act[i] = 0.0;
    }
    let (g, a) = (gpu.upload_f32(&grad), gpu.upload_f32(&act));
    gpu.relu_mask(&g, &a, n);
    let got = gpu.read_f32(g);
    for i in 0..len {
        let want = if i < n && act[i] <= 0.0 { 0.0 } else { grad[i] };
        assert_eq!(got[i], want, "gradient {i} (activation {})", act[i]);
    }
}

fn bias_step_subtracts_lr_times_each_column_sum<R: Runtime>(gpu: &GpuBackend<R>) {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    // (bias offset, width, gradient offset, rows, row stride): one piece wider than a cube.
    let pieces: [[usize; 5]; 3] = [[0, 5, 0, 7, 9], [5, 300, 63, 3, 300], [305, 1, 1000, 4, 2]];
    let grad = uniform(&mut rng, 1100, -1.0, 1.0);
    let bias = uniform(&mut rng, 310, -1.0, 1.0);
    let lr = 0.1f32;
    let (g, b) = (gpu.upload_f32(&grad), gpu.upload_f32(&bias));
    let table: Vec<u32> = pieces.iter().flatten().map(|&v| v as u32).collect();
    gpu.bias_step(&b, &g, &table, lr);
    let got = gpu.read_f32(b);
    let mut want: Vec<f64> = bias.iter().map(|&v| f64::from(v)).collect();
    for [off, width, g_off, rows, stride] in pieces {
        for c in 0..width {
            let sum: f64 = (0..rows)
                .map(|r| f64::from(grad[g_off + r * stride + c]))
                .sum();
            want[off + c] -= f64::from(lr) * sum;
        }
    }
    for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
        assert_near(&format!("bias {i}"), g, w, w.abs(), 1e-6);
    }
}

fn embedding_step_sums_the_gradient_of_each_slots_rows<R: Runtime>(gpu: &GpuBackend<R>) {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let (lay, nets, plan) = pack([9, 6], 13);
    let (_, cats) = row_inputs(&lay, &plan, &mut rng);
    let grad = uniform(&mut rng, plan.x_len, -1.0, 1.0);
    let p = gpu.params(&lay, &nets.iter().collect::<Vec<_>>());
    let rows = gpu.upload_u32(&plan.table);
    let (g, c) = (gpu.upload_f32(&grad), gpu.upload_u32(&cats));
    let pieces: Vec<u32> = plan
        .pieces
        .iter()
        .flat_map(|pc| [pc.model as u32, pc.first as u32, pc.rows as u32])
        .collect();
    let lr = 0.5f32;
    gpu.embedding_step(
        &lay,
        [&p.embeddings, &p.models],
        &g,
        [&c, &rows],
        &pieces,
        lr,
    );
    let got = gpu.read_f32(p.embeddings.clone());
    let [_, _, before] = lay.flatten(&nets.iter().collect::<Vec<_>>());
    let mut want: Vec<f64> = before.iter().map(|&v| f64::from(v)).collect();
    let nc = lay.n_cat;
    for pc in &plan.pieces {
        let slot = &lay.slots[pc.model];
        let widths = slot.shape.embedding_widths();
        for i in 0..pc.rows {
            let r = pc.first + i;
            let mut col = lay.n_dense();
            for (c, (&n, &w)) in slot.shape.categories.iter().zip(&widths).enumerate() {
                let code = (cats[r * nc + c] as usize).min(n - 1);
                for k in 0..w {
                    let gv = f64::from(grad[pc.x_off + i * slot.in_w + col + k]);
                    want[slot.emb_off[c] + code * w + k] -= f64::from(lr) * gv;
                }
                col += w;
            }
        }
    }
    for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
        assert_near(&format!("embedding value {i}"), g, w, w.abs(), 1e-5);
    }
    assert_ne!(
        got[..before.len()],
        before[..],
        "the step changed the tables"
    );
}

/// Instantiates each generic test for every runtime: `on_wgpu::name`, `on_cuda::name`.
macro_rules! on_every_runtime {
    ($($test:ident),* $(,)?) => {
        mod on_wgpu {
            $(
                #[test]
                fn $test() {
                    if let Some(gpu) = super::wgpu_runtime() {
                        super::$test(gpu);
                    }
                }
            )*
        }
        mod on_cuda {
            $(
                #[test]
                fn $test() {
                    if let Some(gpu) = super::cuda_runtime() {
                        super::$test(gpu);
                    }
                }
            )*
        }
    };
}

on_every_runtime!(
    grouped_gemm_solves_every_problem_alone,
    gather_input_builds_first_layer_rows,
    row_losses_match_mse_bce_and_cross_entropy,
    piece_loss_adds_each_piece_mean,
    make_batch_copies_rows_and_swaps_within_a_models_batch,
    relu_mask_zeroes_the_gradient_where_the_unit_was_off,
    bias_step_subtracts_lr_times_each_column_sum,
    embedding_step_sums_the_gradient_of_each_slots_rows,
);
