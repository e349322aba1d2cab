//! Where the math runs. A [`Backend`] trains many models in one call and evaluates rows of many
//! models in one call: per-user models are small, and Morpheus' one-user-at-a-time loop is what
//! leaves its hardware idle. The CPU backend (the default) runs on its own thread pool: with at
//! least as many models as threads, each thread trains or scores whole models (largest first,
//! so one big model does not finish last alone); with fewer, every GEMM is split across the
//! threads. Each model trains through the shared loop ([`crate::train::train_models`] over
//! the CPU's steps, [`crate::train::CpuModels`]). The cubecl GPU backend implements the same
//! trait, and trains through the same loop.
//!
//! Results never depend on the thread count: each model draws from its own seeded stream, and
//! the GEMM splits its output, not its sums.

use rayon::prelude::*;

use super::config::ModelConfig;
use super::encode::Encoded;
use super::network::{Evaluation, Network, Workspace};
use super::train::{TrainJob, Trained, train_one};
use dfp_core::{Error, Result};

/// Rows of one model to evaluate.
#[derive(Debug, Clone, Copy)]
pub struct EvalJob<'a> {
    /// The model's weights.
    pub network: &'a Network,
    /// Its rows (clean; the targets are the input).
    pub input: &'a Encoded,
    /// The training loss statistics (per feature mean, std): with them, the evaluation
    /// carries z-scores.
    pub stats: Option<(&'a [f64], &'a [f64])>,
}

/// Trains and evaluates autoencoders for many models at once.
pub trait Backend: Send + Sync {
    /// A short name for logs and reports ("cpu", "cuda", "wgpu").
    fn name(&self) -> String;

    /// Trains one network per job; results in job order. An error (a device that failed) fails
    /// the whole call.
    fn train(&self, jobs: &[TrainJob], config: &ModelConfig) -> Result<Vec<Trained>>;

    /// Losses, predictions and (for jobs with statistics) z-scores of each job's rows, in
    /// batches of up to `batch_size` rows where the backend batches; results in job order.
    fn evaluate(&self, jobs: &[EvalJob<'_>], batch_size: usize) -> Result<Vec<Evaluation>>;
}

/// The CPU backend: GEMMs from the `gemm` crate on a dedicated thread pool.
#[derive(Debug)]
pub struct CpuBackend {
    pool: rayon::ThreadPool,
    threads: usize,
}

impl CpuBackend {
    /// A backend with `threads` threads (0: one per core).
    pub fn new(threads: usize) -> Result<Self> {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, usize::from)
        } else {
            threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("dfp-model-{i}"))
            .build()
            .map_err(|e| Error::model("cpu backend", format!("starting {threads} threads: {e}")))?;
        Ok(CpuBackend { pool, threads })
    }

    /// Threads each GEMM may use when `tasks` independent tasks share the pool.
    fn gemm_threads(&self, tasks: usize) -> usize {
        if tasks >= self.threads {
            1
        } else {
            self.threads
        }
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        format!("cpu x{}", self.threads)
    }

    fn train(&self, jobs: &[TrainJob], config: &ModelConfig) -> Result<Vec<Trained>> {
        let mut order: Vec<usize> = (0..jobs.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(jobs[i].train.rows));
        let threads = self.gemm_threads(jobs.len());
        let mut done: Vec<(usize, Trained)> = self.pool.install(|| {
            order
                .par_iter()
                .with_max_len(1)
                .map(|&i| (i, train_one(&jobs[i], config, threads)))
                .collect()
        });
        done.sort_by_key(|(i, _)| *i);
        Ok(done.into_iter().map(|(_, t)| t).collect())
    }

    fn evaluate(&self, jobs: &[EvalJob<'_>], batch_size: usize) -> Result<Vec<Evaluation>> {
        let size = batch_size.max(1);
        let tasks: Vec<(usize, usize)> = jobs
            .iter()
            .enumerate()
            .flat_map(|(j, job)| (0..job.input.rows).step_by(size).map(move |s| (j, s)))
            .collect();
        let threads = self.gemm_threads(tasks.len());
        let run = |ws: &mut Workspace, &(j, start): &(usize, usize)| {
            let job = &jobs[j];
            let end = (start + size).min(job.input.rows);
            let rows = job.input.slice(start, end);
            let mut ev = job.network.evaluate(&rows, ws, threads);
            if let Some((mean, std)) = job.stats {
                ev.add_zscores(mean, std);
            }
            (j, ev)
        };
        let parts: Vec<(usize, Evaluation)> = if self.threads == 1 {
            // One thread: the caller's, not a hand-over to the pool's thread and back (two
            // thread switches, which cost more than scoring a handful of rows).
            let mut ws = Workspace::default();
            tasks.iter().map(|t| run(&mut ws, t)).collect()
        } else {
            self.pool.install(|| {
                tasks
                    .par_iter()
                    .with_max_len(1)
                    .map_init(Workspace::default, run)
                    .collect()
            })
        };
        let mut out = vec![Evaluation::default(); jobs.len()];
        for (j, ev) in parts {
            out[j].extend(ev);
        }
        Ok(out)
    }
}
