//! Speed of a model backend at Morpheus' model size: scoring rows/s (many users' rows in one
//! call, input to max |z|) and training user-models/s (`--users` models x `--rows` rows x
//! `--epochs` epochs in one call, Morpheus' hyperparameters, 10% validation, no early stopping
//! so that every backend does the same work). The first call of each kind is a warm-up (kernel
//! compilation) and is reported apart.
//!
//!   cargo run --release -p dfp-bench --bin gpu -- --device cuda
//!   cargo run --release -p dfp-bench --bin gpu -- --device cpu --users 20 --epochs 3
//!
//! `bench/gpu.sh` runs it on CUDA beside the PyTorch peer (bench/peers/torch_gpu.py) on the
//! same GPU. Prints JSON; also written to target/bench/gpu-<device>.json.

use std::time::Instant;

use anyhow::{Context, Result};
use dfp_bench::{arg, morpheus_shape, random_rows, write_report};
use dfp_engine::device::{self, Device};
use dfp_engine::model::backend::EvalJob;
use dfp_engine::model::train::TrainJob;
use dfp_engine::model::{ModelConfig, Network};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::json;

fn main() -> Result<()> {
    let device: Device = arg("--device", Device::Auto)?;
    let users: usize = arg("--users", 1000)?;
    let rows: usize = arg("--rows", 1000)?;
    let epochs: usize = arg("--epochs", 30)?;
    let score_users: usize = arg("--score-users", 1000)?;
    let score_rows: usize = arg("--score-rows", 4_000_000)?;
    let reps: usize = arg("--reps", 3)?;
    let backend = device::backend(device, 0).context("starting the backend")?;
    let shape = morpheus_shape();
    let flops = shape.forward_flops_per_row() as f64;

    // Scoring: score_users models, score_rows rows in all, one call, z-scores included.
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let nets: Vec<Network> = (0..score_users)
        .map(|_| Network::new(shape.clone(), &mut rng))
        .collect();
    let per_user = score_rows.div_ceil(score_users.max(1));
    let inputs: Vec<_> = (0..score_users)
        .map(|u| random_rows(&shape, per_user, u as u64))
        .collect();
    let f = shape.n_features();
    let (mean, std) = (vec![1.0f64; f], vec![0.5f64; f]);
    let jobs: Vec<EvalJob<'_>> = nets
        .iter()
        .zip(&inputs)
        .map(|(network, input)| EvalJob {
            network,
            input,
            stats: Some((&mean, &std)),
        })
        .collect();
    let total_rows = per_user * score_users;
    let start = Instant::now();
    backend.evaluate(&jobs, 1024)?;
    let score_warmup_s = start.elapsed().as_secs_f64();
    let mut score_s = f64::INFINITY;
    for _ in 0..reps {
        let start = Instant::now();
        let out = backend.evaluate(&jobs, 1024)?;
        score_s = score_s.min(start.elapsed().as_secs_f64());
        anyhow::ensure!(out.iter().map(|e| e.max_abs_z.len()).sum::<usize>() == total_rows);
    }
    drop(jobs);
    drop((inputs, nets));

    // Training: users x rows, 90% training and 10% validation, epochs.
    let config = ModelConfig {
        epochs,
        early_stopping: false,
        ..ModelConfig::default()
    };
    let split = rows * 9 / 10;
    let jobs: Vec<TrainJob> = (0..users)
        .map(|u| {
            let all = random_rows(&shape, rows, 1000 + u as u64);
            TrainJob {
                name: format!("user{u}"),
                shape: shape.clone(),
                train: all.slice(0, split),
                validation: all.slice(split, rows),
                seed: u as u64,
            }
        })
        .collect();
    let warm = ModelConfig {
        epochs: 1,
        ..config.clone()
    };
    let start = Instant::now();
    backend.train(&jobs[..users.min(8)], &warm)?;
    let train_warmup_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let trained = backend.train(&jobs, &config)?;
    let train_s = start.elapsed().as_secs_f64();
    let loss: f64 = trained.iter().filter_map(|t| t.val_loss).sum::<f64>() / users.max(1) as f64;
    // Per training row and epoch: forward + backward (2x) on the noisy batch; validation and
    // the final loss statistics are forward passes on top.
    let train_flops = (users * split * epochs) as f64 * 3.0 * flops;

    write_report(
        &format!("gpu-{}", backend.name().replace(' ', "")),
        &json!({
            "backend": backend.name(),
            "model": "autoencoder [512,500]/[512], 3 numeric + 6 categorical inputs",
            "forward_mflop_per_row": flops / 1e6,
            "scoring": {
                "users": score_users,
                "rows": total_rows,
                "warmup_s": score_warmup_s,
                "best_s": score_s,
                "rows_per_s": total_rows as f64 / score_s,
                "gflops": total_rows as f64 * flops / score_s / 1e9,
            },
            "training": {
                "users": users,
                "rows_per_user": rows,
                "epochs": epochs,
                "warmup_s": train_warmup_s,
                "seconds": train_s,
                "user_models_per_s": users as f64 / train_s,
                "rows_epochs_per_s": (users * split * epochs) as f64 / train_s,
                "gflops_training_passes": train_flops / train_s / 1e9,
                "mean_final_val_loss": loss,
            },
        }),
    )
}
