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
//! epochs and are read back once. The host only shuffles each model's rows per epoch (as the
//! CPU backend does, from the model's seed) and applies early stopping from the validation
//! losses it reads once per epoch.
//!
//! The swap noise is drawn on the device from a hash of (model seed, step, row, column), not
//! from the CPU's ChaCha stream, so a model trained here is not bit-equal to the CPU's: it
//! starts from the same weights and reaches the same loss within the conformance suite's
//! tolerance. Scores of the same weights agree with the CPU's within float rounding.
//!
//! Start-up ([`cuda`], [`wgpu`]; `dfp_engine::device` picks by `--device`): CUDA only where the
//! driver library loads and a device answers, wgpu only where an adapter is found; any
//! failure to start a runtime is an error, not a panic.

mod kernels;

use std::panic::{AssertUnwindSafe, catch_unwind};

use cubecl::prelude::*;
use cubecl::server::Handle;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use self::kernels::{
    ACCUMULATE, CAT_FIELDS, GEMM_FIELDS, ROW_FIELDS, STORE, STORE_BIAS, TILE, model_fields,
    score_fields,
};
use dfp_core::{Error, Result};
use dfp_model::backend::{Backend, EvalJob};
use dfp_model::config::ModelConfig;
use dfp_model::encode::Encoded;
use dfp_model::network::{Dense, Evaluation, Network, Shape};
use dfp_model::train::{EarlyStopping, TrainJob, Trained, loss_stats};

/// The CUDA backend on device 0.
pub fn cuda() -> Result<GpuBackend<cubecl::cuda::CudaRuntime>> {
    // SAFETY: loads the driver library (dlopen) and reports whether it was found.
    #[allow(unsafe_code)]
    let present = unsafe { cudarc::driver::sys::is_culib_present() };
    if !present {
        return Err(Error::model(
            "cuda",
            "the CUDA driver library (libcuda.so) is not there",
        ));
    }
    GpuBackend::start(&cubecl::cuda::CudaDevice::new(0), "cuda")
}

/// The wgpu backend on the default adapter (`CUBECL_WGPU_DEFAULT_DEVICE` overrides it; with
/// no GPU, a software Vulkan such as Mesa's lavapipe).
pub fn wgpu() -> Result<GpuBackend<cubecl::wgpu::WgpuRuntime>> {
    // cubecl panics on a thread of its own when there is no adapter, which leaves only a
    // closed channel to report: look for one first, so the error says what is missing.
    use cubecl::wgpu::GraphicsApi;
    let api: wgpu::Backends = cubecl::wgpu::AutoGraphicsApi::backend().into();
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: api,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let adapters = cubecl::future::block_on(instance.enumerate_adapters(api));
    if adapters.is_empty() {
        return Err(Error::model(
            "wgpu",
            "no graphics adapter: the Vulkan loader (libvulkan.so.1) or a Vulkan driver is missing \
             (with a GPU, install its driver; without one, Mesa's software Vulkan: \
             apt-get install libvulkan1 mesa-vulkan-drivers)",
        ));
    }
    GpuBackend::start(&cubecl::wgpu::WgpuDevice::DefaultDevice, "wgpu")
}

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

/// A panic's message.
fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown failure".into())
}

/// Rows of one launch at most (activations of 64k rows x 512 wide: 128 MiB per layer).
const LAUNCH_ROWS: usize = 1 << 16;
/// Rows of one training step at most; a group with more models is trained in several packs.
const STEP_ROWS: usize = 1 << 17;
/// Cubes along one grid axis at most.
const GRID_AXIS: usize = 65_535;

impl<R: Runtime> GpuBackend<R> {
    /// Starts the runtime on `device`; a runtime that fails to start is an error.
    pub fn start(device: &R::Device, label: &str) -> Result<Self> {
        let client = catch_unwind(AssertUnwindSafe(|| R::client(device)))
            .map_err(|p| Error::model(label, format!("no device: {}", panic_text(p))))?;
        let backend = GpuBackend {
            client,
            label: label.to_string(),
        };
        // A first launch, so that a device that cannot run kernels fails here.
        backend.guard(|| {
            let h = backend.upload_f32(&[1.0]);
            backend.relu_mask(&h, &h, 1);
            backend.read_f32(h);
        })?;
        Ok(backend)
    }

    /// Runs device work, turning a runtime panic into an error naming the backend.
    fn guard<T>(&self, work: impl FnOnce() -> T) -> Result<T> {
        catch_unwind(AssertUnwindSafe(work))
            .map_err(|p| Error::model(&self.label, format!("device failure: {}", panic_text(p))))
    }

    fn upload_f32(&self, v: &[f32]) -> Handle {
        let v = if v.is_empty() { &[0.0][..] } else { v };
        self.client.create_from_slice(f32::as_bytes(v))
    }

    fn upload_u32(&self, v: &[u32]) -> Handle {
        let v = if v.is_empty() { &[0][..] } else { v };
        self.client.create_from_slice(u32::as_bytes(v))
    }

    fn empty(&self, floats: usize) -> Handle {
        self.client.empty(4 * floats.max(1))
    }

    fn read_f32(&self, h: Handle) -> Vec<f32> {
        f32::from_bytes(&self.client.read_one_unchecked(h)).to_vec()
    }

    fn relu_mask(&self, grad: &Handle, act: &Handle, n: usize) {
        let (count, dim) = grid_1d(n);
        kernels::relu_mask::launch::<R>(&self.client, count, dim, arg(grad), arg(act), n as u32);
    }
}

/// An array argument over a whole handle (its byte size / 4 elements).
fn arg<R: Runtime>(h: &Handle) -> ArrayArg<R> {
    let len = (h.size() / 4) as usize;
    // SAFETY: the length is the handle's own, so the kernel's (checked) indexing stays inside
    // the buffer.
    #[allow(unsafe_code)]
    unsafe {
        ArrayArg::from_raw_parts(h.clone(), len)
    }
}

/// A 1-D launch of `units` units in cubes of 256 (spread over two grid axes when needed).
fn grid_1d(units: usize) -> (CubeCount, CubeDim) {
    let cubes = units.div_ceil(256).max(1);
    let x = cubes.min(GRID_AXIS);
    let y = cubes.div_ceil(x);
    (
        CubeCount::Static(x as u32, y as u32, 1),
        CubeDim::new_1d(256),
    )
}

/// Where one model of a pack lives in the pack's buffers.
#[derive(Debug, Clone)]
struct Slot {
    shape: Shape,
    in_w: usize,
    out_w: usize,
    /// Per dense layer, offsets in the weight and bias buffers.
    w_off: Vec<usize>,
    b_off: Vec<usize>,
    /// Per categorical, offset of its table in the embedding buffer.
    emb_off: Vec<usize>,
}

impl Slot {
    /// Widths of every dense layer's input and output, head included.
    fn dims(&self) -> Vec<usize> {
        let mut d = vec![self.in_w];
        d.extend(&self.shape.hidden);
        d.push(self.out_w);
        d
    }
}

/// The layout of a pack of models that share numeric/binary/categorical counts and hidden
/// widths.
#[derive(Debug, Clone)]
struct Layout {
    n_num: usize,
    n_bin: usize,
    n_cat: usize,
    hidden: Vec<usize>,
    slots: Vec<Slot>,
    /// The per-model table the kernels read.
    table: Vec<u32>,
    weights: usize,
    biases: usize,
    embeddings: usize,
}

impl Layout {
    fn new(shapes: &[&Shape], seeds: &[u64]) -> Self {
        let first = shapes[0];
        let n_cat = first.categories.len();
        let (mut weights, mut biases, mut embeddings) = (0, 0, 0);
        let mut table = Vec::with_capacity(shapes.len() * model_fields(n_cat));
        let mut slots = Vec::with_capacity(shapes.len());
        for (shape, &seed) in shapes.iter().zip(seeds) {
            let mut slot = Slot {
                shape: (*shape).clone(),
                in_w: shape.input_width(),
                out_w: shape.output_width(),
                w_off: Vec::new(),
                b_off: Vec::new(),
                emb_off: Vec::new(),
            };
            for d in slot.dims().windows(2) {
                slot.w_off.push(weights);
                slot.b_off.push(biases);
                weights += d[0] * d[1];
                biases += d[1];
            }
            table.extend([slot.in_w as u32, slot.out_w as u32, seed as u32, 0]);
            let mut x_col = shape.n_numeric + shape.n_binary;
            let mut y_col = x_col;
            for (&n, w) in shape.categories.iter().zip(shape.embedding_widths()) {
                slot.emb_off.push(embeddings);
                table.extend([
                    embeddings as u32,
                    n as u32,
                    w as u32,
                    x_col as u32,
                    y_col as u32,
                ]);
                debug_assert_eq!(CAT_FIELDS, 5);
                embeddings += n * w;
                x_col += w;
                y_col += n;
            }
            slots.push(slot);
        }
        Layout {
            n_num: first.n_numeric,
            n_bin: first.n_binary,
            n_cat,
            hidden: first.hidden.clone(),
            slots,
            table,
            weights,
            biases,
            embeddings,
        }
    }

    fn n_dense(&self) -> usize {
        self.n_num + self.n_bin
    }

    fn features(&self) -> usize {
        self.n_dense() + self.n_cat
    }

    fn score_fields(&self) -> usize {
        score_fields(self.n_num, self.n_bin, self.n_cat)
    }

    /// The networks' weights flattened into the pack's three buffers.
    fn flatten(&self, nets: &[&Network]) -> [Vec<f32>; 3] {
        let mut w = Vec::with_capacity(self.weights);
        let mut b = Vec::with_capacity(self.biases);
        let mut e = Vec::with_capacity(self.embeddings);
        for net in nets {
            for layer in &net.layers {
                w.extend_from_slice(&layer.weight);
                b.extend_from_slice(&layer.bias);
            }
            for table in &net.embeddings {
                e.extend_from_slice(table);
            }
        }
        [w, b, e]
    }

    /// Networks back from the pack's buffers.
    fn unflatten(&self, w: &[f32], b: &[f32], e: &[f32]) -> Vec<Network> {
        self.slots
            .iter()
            .map(|s| {
                let layers = s
                    .dims()
                    .windows(2)
                    .enumerate()
                    .map(|(l, d)| Dense {
                        inputs: d[0],
                        outputs: d[1],
                        weight: w[s.w_off[l]..s.w_off[l] + d[0] * d[1]].to_vec(),
                        bias: b[s.b_off[l]..s.b_off[l] + d[1]].to_vec(),
                    })
                    .collect();
                let embeddings = s
                    .shape
                    .categories
                    .iter()
                    .zip(s.shape.embedding_widths())
                    .zip(&s.emb_off)
                    .map(|((&n, w), &off)| e[off..off + n * w].to_vec())
                    .collect();
                Network {
                    shape: s.shape.clone(),
                    embeddings,
                    layers,
                }
            })
            .collect()
    }
}

/// Where a piece's input rows to dense layer `l` are: (offset, row stride) in the `x0` buffer
/// for the first layer, in the previous layer's activations for the others.
fn layer_input(pc: &Piece, s: &Slot, l: usize) -> (usize, usize) {
    if l == 0 {
        (pc.x_off, s.in_w)
    } else {
        let k = s.dims()[l];
        (pc.first * k, k)
    }
}

/// Rows of one model in one launch.
#[derive(Debug, Clone, Copy)]
struct Piece {
    model: usize,
    first: usize,
    rows: usize,
    x_off: usize,
    y_off: usize,
}

/// The rows of one launch: pieces of models, and the per-row table.
#[derive(Debug, Clone, Default)]
struct Plan {
    pieces: Vec<Piece>,
    rows: usize,
    x_len: usize,
    y_len: usize,
    table: Vec<u32>,
}

impl Plan {
    /// Adds `sources.len()` rows of `model` (`sources`: row indices in the resident training
    /// data, or anything when there is none).
    fn push(&mut self, lay: &Layout, model: usize, sources: &[u32]) {
        let slot = &lay.slots[model];
        let n = sources.len();
        let piece = Piece {
            model,
            first: self.rows,
            rows: n,
            x_off: self.x_len,
            y_off: self.y_len,
        };
        for (i, &src) in sources.iter().enumerate() {
            self.table.extend([
                model as u32,
                (piece.x_off + i * slot.in_w) as u32,
                (piece.y_off + i * slot.out_w) as u32,
                src,
                piece.first as u32,
                n as u32,
            ]);
        }
        debug_assert_eq!(self.table.len(), (self.rows + n) * ROW_FIELDS);
        self.rows += n;
        self.x_len += n * slot.in_w;
        self.y_len += n * slot.out_w;
        self.pieces.push(piece);
    }

    /// Pieces as (target, first row, rows) triples, the target being the model or the piece.
    fn triples(&self, by_model: bool) -> Vec<u32> {
        self.pieces
            .iter()
            .enumerate()
            .flat_map(|(i, p)| {
                let target = if by_model { p.model } else { i };
                [target as u32, p.first as u32, p.rows as u32]
            })
            .collect()
    }
}

/// Splits `(model, rows)` work into launches of at most [`LAUNCH_ROWS`] rows and `piece_rows`
/// rows per piece.
fn plans(lay: &Layout, work: &[(usize, usize)], piece_rows: usize) -> Vec<Plan> {
    let mut out = vec![Plan::default()];
    for &(model, rows) in work {
        let mut start = 0;
        while start < rows {
            let end = (start + piece_rows.max(1)).min(rows);
            let full = out.last().is_some_and(|p| {
                p.rows + (end - start) > LAUNCH_ROWS || p.pieces.len() == GRID_AXIS
            });
            if full {
                out.push(Plan::default());
            }
            let sources: Vec<u32> = (start..end).map(|r| r as u32).collect();
            if let Some(plan) = out.last_mut() {
                plan.push(lay, model, &sources);
            }
            start = end;
        }
    }
    out.retain(|p| p.rows > 0);
    out
}

/// The device buffers of a pack's weights.
struct Params {
    weights: Handle,
    biases: Handle,
    embeddings: Handle,
    models: Handle,
}

/// Device buffers of one forward pass.
struct Forward {
    x0: Handle,
    acts: Vec<Handle>,
    out: Handle,
}

/// One GEMM problem (see [`kernels::grouped_gemm`]).
#[derive(Debug, Clone, Copy)]
struct Gemm {
    m: usize,
    n: usize,
    k: usize,
    a: (usize, usize, usize),
    b: (usize, usize, usize),
    c: (usize, usize),
    bias: usize,
}

/// Rows of `dense` (numerics then binaries) and codes of `cats`, in plan order.
fn inputs(parts: &[(&Encoded, usize, usize)]) -> (Vec<f32>, Vec<u32>) {
    let (mut dense, mut cats) = (Vec::new(), Vec::new());
    for &(e, start, end) in parts {
        let (nn, nb) = (
            e.numeric.len().checked_div(e.rows).unwrap_or(0),
            e.binary.len().checked_div(e.rows).unwrap_or(0),
        );
        let nc = e.categorical.len().checked_div(e.rows).unwrap_or(0);
        for r in start..end {
            dense.extend_from_slice(&e.numeric[r * nn..(r + 1) * nn]);
            dense.extend_from_slice(&e.binary[r * nb..(r + 1) * nb]);
        }
        cats.extend_from_slice(&e.categorical[start * nc..end * nc]);
    }
    (dense, cats)
}

impl<R: Runtime> GpuBackend<R> {
    fn params(&self, lay: &Layout, nets: &[&Network]) -> Params {
        let [w, b, e] = lay.flatten(nets);
        Params {
            weights: self.upload_f32(&w),
            biases: self.upload_f32(&b),
            embeddings: self.upload_f32(&e),
            models: self.upload_u32(&lay.table),
        }
    }

    fn gemm(
        &self,
        problems: &[Gemm],
        [a, b, c, bias]: [&Handle; 4],
        alpha: f32,
        mode: u32,
        relu: bool,
    ) {
        let problems: Vec<&Gemm> = problems.iter().filter(|g| g.m * g.n > 0).collect();
        if problems.is_empty() {
            return;
        }
        let mut meta = Vec::with_capacity(problems.len() * GEMM_FIELDS);
        for g in &problems {
            meta.extend(
                [
                    g.m, g.n, g.k, g.a.0, g.a.1, g.a.2, g.b.0, g.b.1, g.b.2, g.c.0, g.c.1, g.bias,
                ]
                .map(|v| v as u32),
            );
        }
        let tile = TILE as usize;
        let max_m = problems.iter().map(|g| g.m).max().unwrap_or(0);
        let max_n = problems.iter().map(|g| g.n).max().unwrap_or(0);
        for meta in meta.chunks(GRID_AXIS * GEMM_FIELDS) {
            let count = meta.len() / GEMM_FIELDS;
            let view = self.upload_u32(meta);
            kernels::grouped_gemm::launch::<R>(
                &self.client,
                CubeCount::Static(
                    max_n.div_ceil(tile) as u32,
                    max_m.div_ceil(tile) as u32,
                    count as u32,
                ),
                CubeDim::new_2d(16, 16),
                arg(a),
                arg(b),
                arg(c),
                arg(bias),
                arg(&view),
                alpha,
                mode,
                relu,
            );
        }
    }

    /// The forward pass of a plan's rows (inputs already on the device, in plan row order).
    fn forward(
        &self,
        lay: &Layout,
        p: &Params,
        plan: &Plan,
        rows: &Handle,
        dense: &Handle,
        cats: &Handle,
    ) -> Forward {
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
        let layers = lay.hidden.len() + 1;
        let mut acts: Vec<Handle> = Vec::with_capacity(lay.hidden.len());
        let out = self.empty(plan.y_len);
        for l in 0..layers {
            let head = l + 1 == layers;
            let problems: Vec<Gemm> = plan
                .pieces
                .iter()
                .map(|pc| {
                    let s = &lay.slots[pc.model];
                    let d = s.dims();
                    let (k, n) = (d[l], d[l + 1]);
                    let (x_off, x_rs) = layer_input(pc, s, l);
                    let c = if head {
                        (pc.y_off, n)
                    } else {
                        (pc.first * n, n)
                    };
                    Gemm {
                        m: pc.rows,
                        n,
                        k,
                        a: (x_off, x_rs, 1),
                        b: (s.w_off[l], n, 1),
                        c,
                        bias: s.b_off[l],
                    }
                })
                .collect();
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

    /// Per-row losses (and z-scores, and the training gradient over `y`) of a forward pass.
    #[allow(clippy::too_many_arguments)]
    fn losses(
        &self,
        lay: &Layout,
        p: &Params,
        plan: &Plan,
        rows: &Handle,
        y: &Handle,
        dense: &Handle,
        cats: &Handle,
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
    fn piece_losses(
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

    /// Net loss of every piece of rows: the forward pass and losses of `parts`.
    fn evaluate_plans(
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
        let fwd = self.forward(lay, p, plan, &rows, &dense, &cats);
        self.losses(
            lay, p, plan, &rows, &fwd.out, &dense, &cats, stats, false, zscore,
        )
    }

    /// Mean over pieces of `piece_rows` rows of each piece's net loss, per model with rows
    /// (dfencoder's validation loss), and the per-row losses when `keep_rows`.
    fn loss_by_model(
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
                .map(|pc| {
                    let start = plan.table[pc.first * ROW_FIELDS + 3] as usize;
                    (sets[pc.model], start, start + pc.rows)
                })
                .collect();
            let scores = self.evaluate_plans(lay, p, &parts, &plan, &stats, false);
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
}

/// A piece's rows of the scores buffer as an [`Evaluation`].
fn read_evaluation(lay: &Layout, scores: &[f32], pc: &Piece, zscore: bool) -> Evaluation {
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

/// Jobs grouped by what a pack needs in common: numeric/binary/categorical counts and hidden
/// widths. Groups keep the jobs' order.
fn groups<'a>(shapes: impl Iterator<Item = &'a Shape>) -> Vec<Vec<usize>> {
    let mut keys: Vec<(usize, usize, usize, Vec<usize>)> = Vec::new();
    let mut out: Vec<Vec<usize>> = Vec::new();
    for (i, s) in shapes.enumerate() {
        let key = (
            s.n_numeric,
            s.n_binary,
            s.categories.len(),
            s.hidden.clone(),
        );
        match keys.iter().position(|k| *k == key) {
            Some(g) => out[g].push(i),
            None => {
                keys.push(key);
                out.push(vec![i]);
            }
        }
    }
    out
}

impl<R: Runtime> GpuBackend<R> {
    fn evaluate_group(&self, jobs: &[&EvalJob<'_>], out: &mut [Evaluation]) {
        let shapes: Vec<&Shape> = jobs.iter().map(|j| &j.network.shape).collect();
        let lay = Layout::new(&shapes, &vec![0; jobs.len()]);
        let nets: Vec<&Network> = jobs.iter().map(|j| j.network).collect();
        let p = self.params(&lay, &nets);
        let f = lay.features();
        let zscore = jobs.iter().any(|j| j.stats.is_some());
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
        let stats = self.upload_f32(&stats);
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
                    let start = plan.table[pc.first * ROW_FIELDS + 3] as usize;
                    (jobs[pc.model].input, start, start + pc.rows)
                })
                .collect();
            let scores = self.evaluate_plans(&lay, &p, &parts, &plan, &stats, zscore);
            let scores = self.read_f32(scores);
            for pc in &plan.pieces {
                let z = jobs[pc.model].stats.is_some();
                out[pc.model].extend(read_evaluation(&lay, &scores, pc, z));
            }
        }
    }

    /// Trains one pack of models (same layout) for every epoch on the device.
    fn train_pack(&self, jobs: &[&TrainJob], config: &ModelConfig) -> Vec<Trained> {
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
                    lr,
                    salt,
                    config.swap_p as f32,
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

    /// One SGD step of every model in `plan` on its batch.
    #[allow(clippy::too_many_arguments)]
    fn train_step(
        &self,
        lay: &Layout,
        p: &Params,
        plan: &Plan,
        [train_dense, train_cats]: [&Handle; 2],
        epoch_loss: &Handle,
        lr: f32,
        salt: u32,
        swap_p: f32,
    ) {
        if plan.rows == 0 {
            return;
        }
        let rows = self.upload_u32(&plan.table);
        let nd = lay.n_dense();
        let (clean_dense, clean_cats) = (
            self.empty(plan.rows * nd),
            self.empty(plan.rows * lay.n_cat),
        );
        let (noisy_dense, noisy_cats) = (
            self.empty(plan.rows * nd),
            self.empty(plan.rows * lay.n_cat),
        );
        let (count, dim) = grid_1d(plan.rows * (nd + lay.n_cat));
        kernels::make_batch::launch::<R>(
            &self.client,
            count,
            dim,
            arg(train_dense),
            arg(train_cats),
            arg(&p.models),
            arg(&rows),
            arg(&clean_dense),
            arg(&clean_cats),
            arg(&noisy_dense),
            arg(&noisy_cats),
            plan.rows as u32,
            salt,
            swap_p,
            nd,
            lay.n_cat,
        );
        let fwd = self.forward(lay, p, plan, &rows, &noisy_dense, &noisy_cats);
        let stats = self.upload_f32(&[]);
        let scores = self.losses(
            lay,
            p,
            plan,
            &rows,
            &fwd.out,
            &clean_dense,
            &clean_cats,
            &stats,
            true,
            false,
        );
        self.piece_losses(lay, plan, &scores, epoch_loss, true);
        self.backward(lay, p, plan, &rows, &fwd, &noisy_cats, lr);
    }

    /// Backpropagates the head's gradient (in `fwd.out`) and steps every weight.
    #[allow(clippy::too_many_arguments)]
    fn backward(
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
        let emb_at = lay.n_dense();
        let mut dz = fwd.out.clone();
        let mut grad_x0 = None;
        for l in (0..layers).rev() {
            let head = l + 1 == layers;
            if !head {
                self.relu_mask(&dz, &fwd.acts[l], plan.rows * lay.hidden[l]);
            }
            // Where each piece's dz rows are: (offset, row stride).
            let dz_at = |pc: &Piece, n: usize| {
                if head {
                    (pc.y_off, n)
                } else {
                    (pc.first * n, n)
                }
            };
            // dz W^T into `dst`: the gradient of the layer's input.
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
                let k = lay.hidden[l - 1];
                let g = self.empty(plan.rows * k);
                let problems: Vec<Gemm> = plan
                    .pieces
                    .iter()
                    .map(|pc| {
                        let s = &lay.slots[pc.model];
                        let n = s.dims()[l + 1];
                        let (off, rs) = dz_at(pc, n);
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
                    .collect();
                input_grad(&problems, &g);
                below = Some(g);
            } else if lay.n_cat > 0 {
                let problems: Vec<Gemm> = plan
                    .pieces
                    .iter()
                    .map(|pc| {
                        let s = &lay.slots[pc.model];
                        let n = s.dims()[1];
                        Gemm {
                            m: pc.rows,
                            n: s.in_w - emb_at,
                            k: n,
                            a: (dz_at(pc, n).0, n, 1),
                            b: (s.w_off[0] + emb_at * n, 1, n),
                            c: (pc.x_off + emb_at, s.in_w),
                            bias: 0,
                        }
                    })
                    .collect();
                // The input gradient has the input's layout (embedding columns only).
                let g = self.empty(plan.x_len);
                input_grad(&problems, &g);
                grad_x0 = Some(g);
            }
            // Weights: W -= lr x^T dz (fused step), with x the layer's input.
            let problems: Vec<Gemm> = plan
                .pieces
                .iter()
                .map(|pc| {
                    let s = &lay.slots[pc.model];
                    let d = s.dims();
                    let (k_in, n) = (d[l], d[l + 1]);
                    let (x_off, x_rs) = layer_input(pc, s, l);
                    let (off, rs) = dz_at(pc, n);
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
                .collect();
            let x = if l == 0 { &fwd.x0 } else { &fwd.acts[l - 1] };
            self.gemm(
                &problems,
                [x, &dz, &p.weights, &p.biases],
                -lr,
                ACCUMULATE,
                false,
            );
            let pieces: Vec<u32> = plan
                .pieces
                .iter()
                .flat_map(|pc| {
                    let s = &lay.slots[pc.model];
                    let n = s.dims()[l + 1];
                    let (off, rs) = dz_at(pc, n);
                    [s.b_off[l], n, off, pc.rows, rs].map(|v| v as u32)
                })
                .collect();
            let max_n = plan
                .pieces
                .iter()
                .map(|pc| lay.slots[pc.model].dims()[l + 1])
                .max()
                .unwrap_or(1);
            let pieces = self.upload_u32(&pieces);
            kernels::bias_step::launch::<R>(
                &self.client,
                CubeCount::Static(max_n.div_ceil(256) as u32, plan.pieces.len() as u32, 1),
                CubeDim::new_1d(256),
                arg(&p.biases),
                arg(&dz),
                arg(&pieces),
                lr,
            );
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
            let pieces = self.upload_u32(&pieces);
            kernels::embedding_step::launch::<R>(
                &self.client,
                CubeCount::Static(
                    widest.div_ceil(256) as u32,
                    lay.n_cat as u32,
                    plan.pieces.len() as u32,
                ),
                CubeDim::new_1d(256),
                arg(&p.embeddings),
                arg(&grad_x0),
                arg(noisy_cats),
                arg(&p.models),
                arg(rows),
                arg(&pieces),
                lr,
                lay.n_cat,
            );
        }
    }
}

impl<R: Runtime> Backend for GpuBackend<R> {
    fn name(&self) -> String {
        self.label.clone()
    }

    fn train(&self, jobs: &[TrainJob], config: &ModelConfig) -> Result<Vec<Trained>> {
        let mut out: Vec<Option<Trained>> = vec![None; jobs.len()];
        for group in groups(jobs.iter().map(|j| &j.shape)) {
            // Packs whose one step stays under STEP_ROWS rows.
            let mut pack: Vec<usize> = Vec::new();
            let mut rows = 0;
            let bs = config.batch_size.max(1);
            let mut packs = Vec::new();
            for i in group {
                let step = jobs[i].train.rows.min(bs);
                if !pack.is_empty() && rows + step > STEP_ROWS {
                    packs.push(std::mem::take(&mut pack));
                    rows = 0;
                }
                pack.push(i);
                rows += step;
            }
            packs.push(pack);
            for pack in packs.into_iter().filter(|p| !p.is_empty()) {
                let members: Vec<&TrainJob> = pack.iter().map(|&i| &jobs[i]).collect();
                let trained = self.guard(|| self.train_pack(&members, config))?;
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
        for group in groups(jobs.iter().map(|j| &j.network.shape)) {
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
