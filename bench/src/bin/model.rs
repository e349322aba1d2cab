//! Autoencoder speed on this machine, beside its GEMM peak: scoring rows/s for 1024-row
//! batches, training rows x epochs/s (one user, and many users per backend call), each on 1 and
//! 2 threads, with the achieved GFLOP/s and the fraction of the peak measured here, in the same
//! run, with the same GEMM crate on large square matrices.
//!
//!   cargo run --release -p dfp-bench --bin model [-- --reps 5]
//!
//! The network is Morpheus' size ([512, 500] encoder, [512] decoder) on a typical Azure user's
//! inputs (3 numerics, 6 categoricals with 6-16 slots). Prints JSON; also written to
//! target/bench/model.json.

use anyhow::Result;
use dfp_bench::{arg, best_of, morpheus_shape as shape, random_rows as rows, write_report};
use dfp_engine::model::backend::{Backend, CpuBackend};
use dfp_engine::model::network::Workspace;
use dfp_engine::model::train::{TrainJob, train_one};
use dfp_engine::model::{ModelConfig, Network};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::json;

/// GFLOP/s of the gemm crate on n x n x n, f32.
fn gemm_peak(n: usize, threads: usize, reps: usize) -> f64 {
    let a: Vec<f32> = (0..n * n).map(|i| (i % 7) as f32 * 0.1).collect();
    let b = a.clone();
    let mut c = vec![0.0f32; n * n];
    let pool = rayon_pool(threads);
    let secs = pool.install(|| {
        best_of(reps, || {
            dfp_engine::model::linalg::matmul(
                &mut c,
                dfp_engine::model::linalg::View::new(&a, n, n),
                dfp_engine::model::linalg::View::new(&b, n, n),
                1.0,
                false,
                threads,
            )
        })
    });
    2.0 * (n * n * n) as f64 / secs / 1e9
}

fn rayon_pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap_or_else(|e| panic!("thread pool: {e}"))
}

fn main() -> Result<()> {
    let reps: usize = arg("--reps", 5)?;
    let shape = shape();
    let flops = shape.forward_flops_per_row() as f64;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let net = Network::new(shape.clone(), &mut rng);
    let batch = rows(&shape, 1024, 2);
    let mut results = Vec::new();
    for threads in [1usize, 2] {
        let peak = gemm_peak(1536, threads, reps);
        let pool = rayon_pool(threads);
        // Scoring: one 1024-row batch of one model.
        let mut ws = Workspace::default();
        let score_s =
            pool.install(|| best_of(reps * 4, || drop(net.evaluate(&batch, &mut ws, threads))));
        let score_rows_s = 1024.0 / score_s;
        // Training steps: 512-row batches, forward + backward + SGD.
        let train_batch = batch.slice(0, 512);
        let mut trained = net.clone();
        let step_s = pool.install(|| {
            best_of(reps * 2, || {
                trained.train_step(&train_batch, &train_batch, 1e-3, &mut ws, threads);
            })
        });
        let step_rows_s = 512.0 / step_s;
        // Whole training of one user: 2048 rows, 3 epochs, no early stopping (Morpheus' loop,
        // validation and loss statistics included).
        let config = ModelConfig {
            epochs: 3,
            early_stopping: false,
            ..ModelConfig::default()
        };
        let all = rows(&shape, 2048, 3);
        let job = |seed: u64, n: usize| TrainJob {
            name: format!("user{seed}"),
            shape: shape.clone(),
            train: all.slice(0, n * 9 / 10),
            validation: all.slice(n * 9 / 10, n),
            seed,
        };
        let one = job(1, 2048);
        let train_s = pool.install(|| best_of(2, || drop(train_one(&one, &config, threads))));
        // Many users in one backend call: 8 users x 1000 rows.
        let backend = CpuBackend::new(threads)?;
        let jobs: Vec<TrainJob> = (0..8).map(|u| job(u, 1000)).collect();
        let many_s = best_of(1, || drop(backend.train(&jobs, &config)));
        let gf = |rows_per_s: f64, passes: f64| rows_per_s * flops * passes / 1e9;
        results.push(json!({
            "threads": threads,
            "gemm_peak_gflops": peak,
            "score_1024_rows_per_s": score_rows_s,
            "score_gflops": gf(score_rows_s, 1.0),
            "score_fraction_of_peak": gf(score_rows_s, 1.0) / peak,
            "train_step_512_rows_per_s": step_rows_s,
            "train_step_gflops": gf(step_rows_s, 3.0),
            "train_step_fraction_of_peak": gf(step_rows_s, 3.0) / peak,
            "train_one_user_2048_rows_3_epochs_s": train_s,
            "train_one_user_rows_epochs_per_s": 2048.0 * 0.9 * 3.0 / train_s,
            "train_8_users_1000_rows_3_epochs_s": many_s,
            "train_8_users_rows_epochs_per_s": 8.0 * 900.0 * 3.0 / many_s,
        }));
    }
    write_report(
        "model",
        &json!({
            "workload": "autoencoder [512,500]/[512], 3 numeric + 6 categorical inputs",
            "forward_mflop_per_row": flops / 1e6,
            "input_width": shape.input_width(),
            "output_width": shape.output_width(),
            "gemm": "gemm 0.19 (f32), peak on 1536^3",
            "results": results,
        }),
    )
}
