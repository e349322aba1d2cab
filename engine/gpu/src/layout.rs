//! The pack layout: where each model of a pack lives in the pack's device buffers.
//!
//! Input: the shapes of models that share numeric/binary/categorical counts and hidden widths
//! (their vocabularies, so their embedding and head widths, may differ) and their seeds.
//! Output: a [`Layout`], one [`Slot`] per model (offsets of each dense layer's weights and
//! biases, of each embedding table) and the per-model table the kernels read
//! ([`crate::kernels::model_fields`] u32 per model); networks flattened into the three weight
//! buffers and back, and [`Params`], those buffers on the device. State: none beyond the
//! buffers, dropped with the pack.

use cubecl::prelude::*;
use cubecl::server::Handle;

use crate::GpuBackend;
use crate::kernels::{CAT_FIELDS, model_fields, score_fields};
use dfp_model::network::{Dense, Network, Shape};

/// Where one model of a pack lives in the pack's buffers.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub(crate) shape: Shape,
    pub(crate) in_w: usize,
    pub(crate) out_w: usize,
    /// Per dense layer, offsets in the weight and bias buffers.
    pub(crate) w_off: Vec<usize>,
    pub(crate) b_off: Vec<usize>,
    /// Per categorical, offset of its table in the embedding buffer.
    pub(crate) emb_off: Vec<usize>,
}

impl Slot {
    /// Widths of every dense layer's input and output, head included.
    pub(crate) fn dims(&self) -> Vec<usize> {
        let mut d = vec![self.in_w];
        d.extend(&self.shape.hidden);
        d.push(self.out_w);
        d
    }
}

/// The layout of a pack of models that share numeric/binary/categorical counts and hidden
/// widths.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub(crate) n_num: usize,
    pub(crate) n_bin: usize,
    pub(crate) n_cat: usize,
    pub(crate) hidden: Vec<usize>,
    pub(crate) slots: Vec<Slot>,
    /// The per-model table the kernels read.
    pub(crate) table: Vec<u32>,
    pub(crate) weights: usize,
    pub(crate) biases: usize,
    pub(crate) embeddings: usize,
}

impl Layout {
    /// The layout of models of `shapes` (at least one, all of one group) with `seeds`.
    pub(crate) fn new(shapes: &[&Shape], seeds: &[u64]) -> Self {
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

    /// Numeric and binary features: the dense part of a row.
    pub(crate) fn n_dense(&self) -> usize {
        self.n_num + self.n_bin
    }

    /// Features (losses per row).
    pub(crate) fn features(&self) -> usize {
        self.n_dense() + self.n_cat
    }

    /// f32 fields per row of the scores buffer.
    pub(crate) fn score_fields(&self) -> usize {
        score_fields(self.n_num, self.n_bin, self.n_cat)
    }

    /// The networks' weights flattened into the pack's three buffers.
    pub(crate) fn flatten(&self, nets: &[&Network]) -> [Vec<f32>; 3] {
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
    pub(crate) fn unflatten(&self, w: &[f32], b: &[f32], e: &[f32]) -> Vec<Network> {
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

/// The device buffers of a pack's weights, and its per-model table.
pub(crate) struct Params {
    pub(crate) weights: Handle,
    pub(crate) biases: Handle,
    pub(crate) embeddings: Handle,
    pub(crate) models: Handle,
}

impl<R: Runtime> GpuBackend<R> {
    /// Uploads the networks' weights and the layout's table.
    pub(crate) fn params(&self, lay: &Layout, nets: &[&Network]) -> Params {
        let [w, b, e] = lay.flatten(nets);
        Params {
            weights: self.upload_f32(&w),
            biases: self.upload_f32(&b),
            embeddings: self.upload_f32(&e),
            models: self.upload_u32(&lay.table),
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;

    #[test]
    fn flatten_and_unflatten_round_trip_ragged_models() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let nets: Vec<Network> = [vec![3, 9], vec![40, 2]]
            .into_iter()
            .map(|categories| {
                let shape = Shape {
                    n_numeric: 2,
                    n_binary: 1,
                    categories,
                    hidden: vec![5, 4],
                };
                Network::new(shape, &mut rng)
            })
            .collect();
        let shapes: Vec<&Shape> = nets.iter().map(|n| &n.shape).collect();
        let lay = Layout::new(&shapes, &[7, 8]);
        let [w, b, e] = lay.flatten(&nets.iter().collect::<Vec<_>>());
        assert_eq!(
            (w.len(), b.len(), e.len()),
            (lay.weights, lay.biases, lay.embeddings)
        );
        assert_eq!(lay.unflatten(&w, &b, &e), nets);
        assert_eq!(lay.table.len(), 2 * model_fields(2));
        // The second model's record: widths, seed, then its first categorical's table offset
        // (after the first model's two tables) and its 40 slots.
        let second = &lay.table[model_fields(2)..];
        let first_tables: usize = nets[0].embeddings.iter().map(Vec::len).sum();
        assert_eq!(
            second[..3],
            [lay.slots[1].in_w as u32, lay.slots[1].out_w as u32, 8]
        );
        assert_eq!(second[4..6], [first_tables as u32, 40]);
    }
}
