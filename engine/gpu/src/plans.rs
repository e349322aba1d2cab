//! Launch plans: which rows one launch sequence works on, and how the grids cover them.
//!
//! Jobs are first grouped by what a pack needs in common ([`groups`]), and a group's training
//! jobs cut into packs whose one step stays under [`STEP_ROWS`] rows ([`packs`]). Inside a
//! pack, a [`Plan`] lists the rows of one launch as *pieces* (consecutive rows of one model)
//! with the per-row table the kernels read ([`crate::kernels::ROW_FIELDS`] u32 per row);
//! [`plans`] cuts work into launches of at most [`LAUNCH_ROWS`] rows. A [`Gemm`] is one problem
//! of the grouped GEMM, and [`GpuBackend::gemm`] launches a list of them. Inputs: layouts and
//! row counts; outputs: plans, problems and grids. No state.

use cubecl::prelude::*;
use cubecl::server::Handle;

use crate::GpuBackend;
use crate::device::arg;
use crate::kernels::{self, GEMM_FIELDS, ROW_FIELDS, TILE};
use crate::layout::{Layout, Slot};
use dfp_model::encode::Encoded;
use dfp_model::network::Shape;
use dfp_model::train::TrainJob;

/// Rows of one launch at most (activations of 64k rows x 512 wide: 128 MiB per layer).
pub(crate) const LAUNCH_ROWS: usize = 1 << 16;
/// Rows of one training step at most; a group with more models is trained in several packs.
pub(crate) const STEP_ROWS: usize = 1 << 17;
/// Cubes along one grid axis at most.
pub(crate) const GRID_AXIS: usize = 65_535;

/// A 1-D launch of `units` units in cubes of 256 (spread over two grid axes when needed).
pub(crate) fn grid_1d(units: usize) -> (CubeCount, CubeDim) {
    let cubes = units.div_ceil(256).max(1);
    let x = cubes.min(GRID_AXIS);
    let y = cubes.div_ceil(x);
    (
        CubeCount::Static(x as u32, y as u32, 1),
        CubeDim::new_1d(256),
    )
}

/// Rows of one model in one launch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Piece {
    pub(crate) model: usize,
    pub(crate) first: usize,
    pub(crate) rows: usize,
    pub(crate) x_off: usize,
    pub(crate) y_off: usize,
}

/// The rows of one launch: pieces of models, and the per-row table.
#[derive(Debug, Clone, Default)]
pub(crate) struct Plan {
    pub(crate) pieces: Vec<Piece>,
    pub(crate) rows: usize,
    pub(crate) x_len: usize,
    pub(crate) y_len: usize,
    pub(crate) table: Vec<u32>,
}

impl Plan {
    /// Adds `sources.len()` rows of `model` (`sources`: row indices in the resident training
    /// data, or anything when there is none).
    pub(crate) fn push(&mut self, lay: &Layout, model: usize, sources: &[u32]) {
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
    pub(crate) fn triples(&self, by_model: bool) -> Vec<u32> {
        self.pieces
            .iter()
            .enumerate()
            .flat_map(|(i, p)| {
                let target = if by_model { p.model } else { i };
                [target as u32, p.first as u32, p.rows as u32]
            })
            .collect()
    }

    /// The source row (`rows[.. + 3]`) of a piece's first row.
    pub(crate) fn source(&self, pc: &Piece) -> usize {
        self.table[pc.first * ROW_FIELDS + 3] as usize
    }
}

/// Splits `(model, rows)` work into launches of at most [`LAUNCH_ROWS`] rows and `piece_rows`
/// rows per piece.
pub(crate) fn plans(lay: &Layout, work: &[(usize, usize)], piece_rows: usize) -> Vec<Plan> {
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

/// Jobs grouped by what a pack needs in common: numeric/binary/categorical counts and hidden
/// widths. Groups keep the jobs' order.
pub(crate) fn groups<'a>(shapes: impl Iterator<Item = &'a Shape>) -> Vec<Vec<usize>> {
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

/// A group's jobs cut into packs whose one step (a batch of each model) stays under
/// [`STEP_ROWS`] rows; packs keep the group's order and are never empty.
pub(crate) fn packs(jobs: &[TrainJob], group: &[usize], batch_size: usize) -> Vec<Vec<usize>> {
    let bs = batch_size.max(1);
    let (mut packs, mut pack, mut rows) = (Vec::new(), Vec::new(), 0);
    for &i in group {
        let step = jobs[i].train.rows.min(bs);
        if !pack.is_empty() && rows + step > STEP_ROWS {
            packs.push(std::mem::take(&mut pack));
            rows = 0;
        }
        pack.push(i);
        rows += step;
    }
    packs.push(pack);
    packs.retain(|p| !p.is_empty());
    packs
}

/// Where a piece's input rows to dense layer `l` are: (offset, row stride) in the `x0` buffer
/// for the first layer, in the previous layer's activations for the others.
pub(crate) fn layer_input(pc: &Piece, s: &Slot, l: usize) -> (usize, usize) {
    if l == 0 {
        (pc.x_off, s.in_w)
    } else {
        let k = s.dims()[l];
        (pc.first * k, k)
    }
}

/// Where a piece's rows of layer `l`'s output (`n` wide) are: (offset, row stride) in the
/// head's buffer for the head, in the layer's activations (or their gradient) otherwise.
pub(crate) fn layer_output(pc: &Piece, n: usize, head: bool) -> (usize, usize) {
    if head {
        (pc.y_off, n)
    } else {
        (pc.first * n, n)
    }
}

/// Rows of `dense` (numerics then binaries) and codes of `cats`, in plan order.
pub(crate) fn inputs(parts: &[(&Encoded, usize, usize)]) -> (Vec<f32>, Vec<u32>) {
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

/// One problem of the grouped GEMM (see [`kernels::grouped_gemm`]): `c = a b` of
/// `m x k` by `k x n`, each operand at an offset with its own strides.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Gemm {
    pub(crate) m: usize,
    pub(crate) n: usize,
    pub(crate) k: usize,
    /// Offset, row stride, column stride of `a`.
    pub(crate) a: (usize, usize, usize),
    /// Offset, row stride, column stride of `b`.
    pub(crate) b: (usize, usize, usize),
    /// Offset and row stride of `c`.
    pub(crate) c: (usize, usize),
    /// Offset of the bias (epilogue [`kernels::STORE_BIAS`]).
    pub(crate) bias: usize,
}

impl<R: Runtime> GpuBackend<R> {
    /// Launches the grouped GEMM on `problems` (empty ones skipped), in launches of at most
    /// [`GRID_AXIS`] problems; `mode` is the epilogue ([`kernels::STORE_BIAS`],
    /// [`kernels::STORE`], [`kernels::ACCUMULATE`] with `alpha`), `relu` clamps after the bias.
    pub(crate) fn gemm(
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(models: usize) -> Layout {
        let shapes: Vec<Shape> = (0..models)
            .map(|i| Shape {
                n_numeric: 1,
                n_binary: 1,
                categories: vec![2 + i],
                hidden: vec![3],
            })
            .collect();
        let refs: Vec<&Shape> = shapes.iter().collect();
        Layout::new(&refs, &vec![0; models])
    }

    #[test]
    fn plans_cut_pieces_and_keep_the_row_table_consistent() {
        let lay = layout(2);
        let all = plans(&lay, &[(0, 5), (1, 0), (1, 3)], 2);
        assert_eq!(all.len(), 1);
        let plan = &all[0];
        let sizes: Vec<(usize, usize)> = plan.pieces.iter().map(|p| (p.model, p.rows)).collect();
        assert_eq!(sizes, [(0, 2), (0, 2), (0, 1), (1, 2), (1, 1)]);
        assert_eq!(plan.rows, 8);
        let (w0, w1) = (lay.slots[0].in_w, lay.slots[1].in_w);
        assert_eq!(plan.x_len, 5 * w0 + 3 * w1);
        // Row 6 is the second row of model 1's first piece: source 1, piece from row 5.
        let row = &plan.table[6 * ROW_FIELDS..7 * ROW_FIELDS];
        assert_eq!(row, [1, (5 * w0 + w1) as u32, row[2], 1, 5, 2]);
        assert_eq!(plan.source(&plan.pieces[4]), 2);
        assert_eq!(plan.triples(true)[9..], [1, 5, 2, 1, 7, 1]);
        assert_eq!(plan.triples(false)[9..12], [3, 5, 2]);
    }

    #[test]
    fn packs_stay_under_the_step_rows() {
        let job = |rows: usize| TrainJob {
            name: String::new(),
            shape: Shape {
                n_numeric: 1,
                n_binary: 0,
                categories: vec![],
                hidden: vec![1],
            },
            train: Encoded {
                rows,
                numeric: vec![0.0; rows],
                ..Encoded::default()
            },
            validation: Encoded::default(),
            seed: 0,
        };
        // Each step takes min(rows, batch) = STEP_ROWS / 2 rows: two models per pack.
        let jobs: Vec<TrainJob> = (0..5).map(|_| job(STEP_ROWS)).collect();
        let got = packs(&jobs, &[0, 1, 2, 3, 4], STEP_ROWS / 2);
        assert_eq!(got, [vec![0, 1], vec![2, 3], vec![4]]);
        assert_eq!(packs(&jobs, &[3], 0), [vec![3]]);
    }
}
