//! burn 0.21 (ndarray, multi-threaded matrixmultiply) on Morpheus-sized autoencoder layers: the
//! time of a 512-row SGD step and of a 1024-row forward pass, printed as JSON with GFLOP/s.

use burn::backend::{Autodiff, NdArray};
use burn::module::{AutodiffModule, Module};
use burn::nn::{Linear, LinearConfig};
use burn::optim::{GradientsParams, Optimizer, SgdConfig};
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use std::time::Instant;

#[derive(Module, Debug)]
struct Mlp<B: Backend> {
    l1: Linear<B>,
    l2: Linear<B>,
    l3: Linear<B>,
    head: Linear<B>,
}

impl<B: Backend> Mlp<B> {
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let x = relu(self.l1.forward(x));
        let x = relu(self.l2.forward(x));
        let x = relu(self.l3.forward(x));
        self.head.forward(x)
    }
}

type B = Autodiff<NdArray<f32>>;

fn best(reps: usize, mut f: impl FnMut()) -> f64 {
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let device = Default::default();
    let mut model: Mlp<B> = Mlp {
        l1: LinearConfig::new(40, 512).init(&device),
        l2: LinearConfig::new(512, 500).init(&device),
        l3: LinearConfig::new(500, 512).init(&device),
        head: LinearConfig::new(512, 80).init(&device),
    };
    let mut optim = SgdConfig::new().init();
    let x = Tensor::<B, 2>::random([512, 40], Distribution::Default, &device);
    let y = Tensor::<B, 2>::random([512, 80], Distribution::Default, &device);
    let fwd = 2.0 * (40.0 * 512.0 + 512.0 * 500.0 + 500.0 * 512.0 + 512.0 * 80.0);
    let mut step = || {
        let out = model.clone().forward(x.clone());
        let loss = (out - y.clone()).powf_scalar(2.0).mean();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(0.001, model.clone(), grads);
    };
    step();
    let t_step = best(10, &mut step);
    let valid = model.valid();
    let xs = Tensor::<NdArray<f32>, 2>::random([1024, 40], Distribution::Default, &device);
    let _ = valid.forward(xs.clone()).into_data();
    let t_score = best(20, || {
        let _ = valid.forward(xs.clone()).into_data();
    });
    println!(
        "{{\"train_step_512_ms\": {:.2}, \"train_gflops\": {:.1}, \"score_1024_ms\": {:.2}, \"score_gflops\": {:.1}, \"score_rows_per_s\": {:.0}, \"train_rows_per_s\": {:.0}}}",
        t_step * 1e3,
        3.0 * fwd * 512.0 / t_step / 1e9,
        t_score * 1e3,
        fwd * 1024.0 / t_score / 1e9,
        1024.0 / t_score,
        512.0 / t_step
    );
}
