//! The backend conformance suite, written once and run on every backend present: the CPU
//! always, cubecl on wgpu where an adapter answers (CI: Mesa's software Vulkan, required there
//! through `DFP_REQUIRE_WGPU=1`), cubecl on CUDA where a GPU and its driver are there
//! (required with `DFP_REQUIRE_CUDA=1`). Each backend is compared with the CPU backend:
//! scores of the same weights within float rounding (1e-4 relative), and training from the same
//! seed to the same loss within 15% (the GPU's swap noise is drawn on the device from another
//! random stream, so the trajectories are not bit-equal). Without swap noise the batches are
//! the same, and every weight must match the CPU's after several epochs.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers: a failure is a test failure

use dfp_gpu as gpu;
use dfp_model::backend::{Backend, CpuBackend, EvalJob};
use dfp_model::config::ModelConfig;
use dfp_model::encode::Encoded;
use dfp_model::network::{Evaluation, Network, Shape};
use dfp_model::train::TrainJob;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Every backend present, with the CPU reference first.
fn backends() -> Vec<Box<dyn Backend>> {
    let mut out: Vec<Box<dyn Backend>> = vec![Box::new(CpuBackend::new(2).unwrap())];
    let require = |var: &str| std::env::var(var).is_ok_and(|v| v == "1");
    match gpu::wgpu() {
        Ok(b) => out.push(Box::new(b)),
        Err(e) if require("DFP_REQUIRE_WGPU") => panic!("wgpu is required here: {e}"),
        Err(e) => eprintln!("skipping wgpu: {e}"),
    }
    match gpu::cuda() {
        Ok(b) => out.push(Box::new(b)),
        Err(e) if require("DFP_REQUIRE_CUDA") => panic!("CUDA is required here: {e}"),
        Err(e) => eprintln!("skipping cuda: {e}"),
    }
    out
}

/// Shapes of one schema: the same feature counts and hidden widths, ragged vocabularies (so
/// ragged embedding and head widths), sizes off the GEMM's 64-wide tiles.
fn shapes(hidden: &[usize]) -> Vec<Shape> {
    [
        vec![5, 12, 40],
        vec![2, 3, 90],
        vec![7, 1, 13],
        vec![30, 30, 30],
    ]
    .into_iter()
    .map(|categories| Shape {
        n_numeric: 3,
        n_binary: 2,
        categories,
        hidden: hidden.to_vec(),
    })
    .collect()
}

/// `rows` random rows for `shape`; a few codes past the vocabulary (read as `_other`).
fn rows(shape: &Shape, rows: usize, seed: u64) -> Encoded {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n_cat = shape.categories.len();
    Encoded {
        rows,
        numeric: (0..rows * shape.n_numeric)
            .map(|_| rng.random_range(-2.0..2.0))
            .collect(),
        binary: (0..rows * shape.n_binary)
            .map(|_| f32::from(rng.random_bool(0.3)))
            .collect(),
        categorical: (0..rows * n_cat)
            .map(|i| {
                let slots = shape.categories[i % n_cat] as u32;
                if rng.random_bool(0.02) {
                    slots + 3
                } else {
                    // Skewed, so that the vocabulary's head is learnable.
                    (rng.random_range(0..slots) * rng.random_range(0..slots)) / slots
                }
            })
            .collect(),
    }
}

/// One job per shape of `shapes(hidden)`, with `train[i]` training rows and `validation(n)`
/// validation rows; data and seeds from `seed`.
fn jobs(
    hidden: &[usize],
    train: [usize; 4],
    validation: impl Fn(usize) -> usize,
    seed: u64,
) -> Vec<TrainJob> {
    shapes(hidden)
        .into_iter()
        .zip(train)
        .enumerate()
        .map(|(i, (shape, n))| {
            let s = seed + 2 * i as u64;
            TrainJob {
                name: format!("user{i}"),
                train: rows(&shape, n, s),
                validation: rows(&shape, validation(n), s + 1),
                shape,
                seed: s,
            }
        })
        .collect()
}

fn close(a: f32, b: f32, rel: f32) -> bool {
    (a - b).abs() <= rel * (1.0 + a.abs().max(b.abs()))
}

fn assert_same_scores(name: &str, want: &Evaluation, got: &Evaluation) {
    assert_eq!(got.rows, want.rows, "{name}: rows");
    for (what, w, g) in [
        ("loss", &want.losses, &got.losses),
        ("z", &want.z_loss, &got.z_loss),
        ("max |z|", &want.max_abs_z, &got.max_abs_z),
        ("mean |z|", &want.mean_abs_z, &got.mean_abs_z),
        ("numeric prediction", &want.numeric_pred, &got.numeric_pred),
    ] {
        assert_eq!(w.len(), g.len(), "{name}: {what} length");
        for (i, (&a, &b)) in w.iter().zip(g).enumerate() {
            assert!(close(a, b, 1e-4), "{name}: {what}[{i}]: cpu {a}, got {b}");
        }
    }
    // Predictions may differ only where two outputs tie within rounding.
    let agree = |a: &[bool], b: &[bool]| a.iter().zip(b).filter(|(x, y)| x == y).count();
    let n = want.binary_pred.len();
    assert!(
        agree(&want.binary_pred, &got.binary_pred) * 100 >= n * 99,
        "{name}: binaries"
    );
    let n = want.categorical_pred.len();
    let same = want
        .categorical_pred
        .iter()
        .zip(&got.categorical_pred)
        .filter(|(x, y)| x == y)
        .count();
    assert!(same * 100 >= n * 99, "{name}: categories");
}

#[test]
fn every_backend_scores_like_the_cpu() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let nets: Vec<Network> = shapes(&[70, 33, 65])
        .into_iter()
        .map(|s| Network::new(s, &mut rng))
        .collect();
    // Row counts: none, one, a partial tile, several tiles.
    let inputs: Vec<Encoded> = nets
        .iter()
        .zip([0, 1, 77, 300])
        .enumerate()
        .map(|(i, (n, r))| rows(&n.shape, r, i as u64))
        .collect();
    let stats: Vec<(Vec<f64>, Vec<f64>)> = nets
        .iter()
        .map(|n| {
            let f = n.shape.n_features();
            ((0..f).map(|j| 0.1 * j as f64).collect(), vec![0.5; f])
        })
        .collect();
    let jobs: Vec<EvalJob<'_>> = nets
        .iter()
        .zip(&inputs)
        .zip(&stats)
        .map(|((network, input), (m, s))| EvalJob {
            network,
            input,
            stats: Some((m, s)),
        })
        .collect();
    let all = backends();
    let want = all[0].evaluate(&jobs, 64).unwrap();
    for b in &all {
        let together = b.evaluate(&jobs, 64).unwrap();
        for (i, (w, g)) in want.iter().zip(&together).enumerate() {
            assert_same_scores(&format!("{} model {i}", b.name()), w, g);
            // One model alone scores as it does among the others.
            let alone = b.evaluate(&jobs[i..=i], 1000).unwrap();
            assert_same_scores(&format!("{} model {i} alone", b.name()), g, &alone[0]);
        }
    }
}

#[test]
fn every_backend_trains_to_the_cpu_loss() {
    let config = ModelConfig {
        encoder_layers: vec![48, 40],
        decoder_layers: vec![48],
        lr: 0.05,
        batch_size: 64,
        eval_batch_size: 100,
        epochs: 12,
        early_stopping: false,
        ..ModelConfig::default()
    };
    let jobs = jobs(&[48, 40, 48], [400, 150, 64, 230], |n| n / 9, 10);
    let all = backends();
    let want = all[0].train(&jobs, &config).unwrap();
    for b in &all {
        let got = b.train(&jobs, &config).unwrap();
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            let name = format!("{} model {i}", b.name());
            assert_eq!(g.epochs_run, config.epochs, "{name}");
            assert_eq!(g.network.shape, jobs[i].shape, "{name}");
            g.network.check().unwrap();
            let (wv, gv) = (w.val_loss.unwrap(), g.val_loss.unwrap());
            assert!(
                (wv - gv).abs() <= 0.15 * wv,
                "{name}: validation loss cpu {wv}, got {gv}"
            );
            assert!(
                (w.train_loss - g.train_loss).abs() <= 0.15 * w.train_loss,
                "{name}: training loss cpu {}, got {}",
                w.train_loss,
                g.train_loss
            );
            // The loss statistics describe the returned weights on the clean training rows.
            let job = EvalJob {
                network: &g.network,
                input: &jobs[i].train,
                stats: None,
            };
            let ev = b.evaluate(&[job], 1024).unwrap();
            let f = g.loss_mean.len();
            let mean0 = ev[0]
                .losses
                .iter()
                .step_by(f)
                .map(|&l| f64::from(l))
                .sum::<f64>()
                / jobs[i].train.rows as f64;
            assert!(
                (mean0 - g.loss_mean[0]).abs() <= 1e-3 * (1.0 + mean0),
                "{name}: loss mean {mean0} vs {}",
                g.loss_mean[0]
            );
        }
        // Training lowered the loss from the initial weights.
        let first = &jobs[0];
        let mut rng = ChaCha8Rng::seed_from_u64(first.seed);
        let init = Network::new(first.shape.clone(), &mut rng);
        let job = EvalJob {
            network: &init,
            input: &first.validation,
            stats: None,
        };
        let before = b.evaluate(&[job], 1024).unwrap()[0].net_loss();
        let after = got[0].val_loss.unwrap();
        assert!(after < 0.9 * before, "{}: {before} -> {after}", b.name());
    }
}

#[test]
fn without_noise_every_backend_takes_the_cpu_steps() {
    // With no swap noise the only randomness is the initial weights and the shuffles, which
    // every backend draws from the model's seed as the CPU does: the same batches, so the same
    // SGD steps within float rounding.
    let config = ModelConfig {
        encoder_layers: vec![40, 24],
        decoder_layers: vec![40],
        lr: 0.05,
        swap_p: 0.0,
        batch_size: 50,
        eval_batch_size: 64,
        epochs: 3,
        early_stopping: false,
        ..ModelConfig::default()
    };
    let jobs = jobs(&[40, 24, 40], [130, 50, 7, 99], |_| 20, 30);
    let all = backends();
    let want = all[0].train(&jobs, &config).unwrap();
    for b in &all {
        let got = b.train(&jobs, &config).unwrap();
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            let name = format!("{} model {i}", b.name());
            let pairs = w
                .network
                .layers
                .iter()
                .zip(&g.network.layers)
                .flat_map(|(a, b)| {
                    a.weight
                        .iter()
                        .zip(&b.weight)
                        .chain(a.bias.iter().zip(&b.bias))
                })
                .chain(
                    w.network
                        .embeddings
                        .iter()
                        .zip(&g.network.embeddings)
                        .flat_map(|(a, b)| a.iter().zip(b)),
                );
            for (k, (&a, &b)) in pairs.enumerate() {
                assert!(close(a, b, 1e-3), "{name}: weight {k}: cpu {a}, got {b}");
            }
            let (wv, gv) = (w.val_loss.unwrap(), g.val_loss.unwrap());
            assert!(
                (wv - gv).abs() <= 1e-3 * wv,
                "{name}: validation loss {wv} vs {gv}"
            );
            assert!(
                (w.train_loss - g.train_loss).abs() <= 1e-3 * w.train_loss,
                "{name}: training loss {} vs {}",
                w.train_loss,
                g.train_loss
            );
        }
    }
}

#[test]
fn early_stopping_and_empty_validation_behave_alike() {
    let config = ModelConfig {
        encoder_layers: vec![16],
        decoder_layers: vec![16],
        lr: 3.0,
        batch_size: 32,
        epochs: 6,
        early_stopping: true,
        ..ModelConfig::default()
    };
    let shape = shapes(&[16, 16])[0].clone();
    let jobs = vec![
        TrainJob {
            name: "diverges".into(),
            train: rows(&shape, 90, 1),
            validation: rows(&shape, 30, 2),
            shape: shape.clone(),
            seed: 5,
        },
        TrainJob {
            name: "no validation".into(),
            train: rows(&shape, 40, 3),
            validation: rows(&shape, 0, 4),
            shape,
            seed: 6,
        },
    ];
    for b in backends() {
        let got = b.train(&jobs, &config).unwrap();
        let name = b.name();
        assert!(
            got[0].epochs_run < config.epochs,
            "{name}: lr 3 should diverge"
        );
        assert_eq!(got[1].epochs_run, config.epochs, "{name}");
        assert_eq!(got[1].val_loss, None, "{name}");
    }
}
