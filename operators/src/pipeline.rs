//! The DFP job as one timely dataflow (Morpheus' `dfp_integrated_training_batch_pipeline.py`):
//! a control message becomes a [`Plan`] of epochs; each epoch's files are read, split by user,
//! windowed, prepared, trained on and/or scored, and the detections, scores and dead letters
//! written, every stage emitting an epoch once the frontier has passed it. The output does not
//! depend on the number of workers.
//!
//! Inputs: the control message, the source schema, the run config, the registry directory.
//! Outputs: the files of [`crate::sinks`], new model versions in the registry, and a
//! [`RunSummary`]. State: per worker, the windows of its users and a model cache; at most two
//! epochs are in flight at once.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use dfp_engine::control::ControlMessage;
use dfp_engine::ingest::Reader;
use dfp_engine::model::{Backend, CpuBackend};
use dfp_engine::period::Period;
use dfp_engine::registry::Registry;
use dfp_engine::schema::SourceSchema;
use dfp_engine::{Error, Result};
use serde::Serialize;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Concatenate, OkErr, Probe};
use timely::dataflow::{InputHandleVec, ProbeHandle};

use crate::config::RunConfig;
use crate::data_prep::DataPrep;
use crate::file_to_batch::{FileTask, FileToBatch};
use crate::filter_detections::FilterDetections;
use crate::inference::{Inference, Scorer};
use crate::metrics::{SharedStats, Stats};
use crate::plan::Plan;
use crate::post_proc::{Clock, PostProc};
use crate::registry_writer::RegistryWriter;
use crate::rolling_window::{RollingWindowExt, RollingWindows};
use crate::serialize::{Columns, OutKind, SerializeDeadLetters, SerializeDetections};
use crate::sinks::{OutputFiles, Sinks, output_path};
use crate::split_users::SplitUsers;
use crate::training::Training;

/// Everything a run needs.
#[derive(Clone)]
pub struct RunOptions {
    /// The source schema.
    pub schema: SourceSchema,
    /// The control message file.
    pub control: PathBuf,
    /// Where relative load globs resolve (default: the control message's directory).
    pub files_root: Option<PathBuf>,
    /// Stage settings.
    pub config: RunConfig,
    /// Timely workers (threads), each owning a share of the users.
    pub workers: usize,
    /// Model threads in all (0: one per core), shared out over the workers.
    pub threads: usize,
    /// The model registry directory.
    pub registry: PathBuf,
    /// The output directory.
    pub output: PathBuf,
    /// Also write every scored row.
    pub write_scores: bool,
    /// Stamps detections.
    pub clock: Clock,
    /// Print progress on stderr.
    pub progress: bool,
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// Epochs run.
    pub epochs: usize,
    /// Counters summed over workers.
    pub stats: Stats,
    /// Wall time.
    pub seconds: f64,
    /// The output files.
    pub outputs: Vec<PathBuf>,
    /// Load patterns that matched no file.
    pub unmatched: Vec<String>,
}

impl RunSummary {
    /// The one-line summary.
    pub fn line(&self) -> String {
        let s = &self.stats;
        format!(
            "{} rows from {} files in {} epochs, {} users, {} models trained, {} rows scored, {} detections, {} dead letters; {:.1} s ({:.0} rows/s)",
            s.rows,
            s.files,
            self.epochs,
            s.users.len(),
            s.models_trained,
            s.scored,
            s.detections,
            s.dead_letters,
            self.seconds,
            s.rows as f64 / self.seconds.max(1e-9)
        )
    }
}

/// Runs the control message's tasks to completion.
pub fn run(opts: RunOptions) -> Result<RunSummary> {
    let started = Instant::now();
    opts.config.validate("run config")?;
    let msg = ControlMessage::from_file(&opts.control)?;
    let base = opts.files_root.clone().unwrap_or_else(|| {
        opts.control
            .parent()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."))
    });
    // Morpheus batches Azure by day and Duo in one batch unless the message says otherwise.
    let default_period = (opts.schema.name != "duo").then_some(Period::Day);
    let plan = Arc::new(Plan::build(&msg, &base, default_period)?);
    for u in &plan.unmatched {
        tracing::warn!(pattern = %u, "load pattern matches no file");
    }
    let registry = Registry::open(&opts.registry)?;
    let versions: HashMap<String, u32> = registry
        .list()?
        .into_iter()
        .filter_map(|(name, v)| v.last().map(|&l| (name, l)))
        .collect();
    let schema = Arc::new(opts.schema.clone());
    let columns = Arc::new(Columns::new(&schema));
    let files = Arc::new(Mutex::new(Some(OutputFiles::create(
        &opts.output,
        &schema.name,
        &columns,
        opts.write_scores,
    )?)));
    let workers = opts.workers.max(1);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (if opts.threads == 0 {
        cores
    } else {
        opts.threads
    } / workers)
        .max(1);
    let reader = Arc::new(Reader::new(schema.clone()));
    let o = Arc::new(opts.clone());
    let epochs = plan.epochs.len();
    let unmatched = plan.unmatched.clone();
    tracing::info!(
        epochs = plan.epochs.len(),
        files = plan.files(),
        workers,
        threads,
        "starting the dataflow"
    );

    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let stats: SharedStats = Rc::new(RefCell::new(Stats::default()));
        let fail = |e: Error| Stats {
            fatal: vec![e.to_string()],
            ..Stats::default()
        };
        let backend: Rc<dyn Backend> = match CpuBackend::new(threads) {
            Ok(b) => Rc::new(b),
            Err(e) => return fail(e),
        };
        let windows = match RollingWindows::new(
            &schema,
            o.config.training_window.clone(),
            o.config.inference_window.clone(),
        ) {
            Ok(w) => w,
            Err(e) => return fail(e),
        };
        let scorer = Scorer::new(
            schema.clone(),
            registry.clone(),
            versions.clone(),
            &o.config.split.generic_user,
            &o.config.inference,
            o.config.model.eval_batch_size,
        );
        let my_files = if worker.index() == 0 {
            files.lock().ok().and_then(|mut f| f.take())
        } else {
            None
        };
        let mut input = InputHandleVec::<u64, FileTask>::new();
        let probe = ProbeHandle::new();
        let cfg = &o.config;
        worker.dataflow::<u64, _, _>(|scope| {
            let (rows, bad_files) = input
                .to_stream(scope)
                .file_to_batch(reader.clone(), stats.clone());
            let (users, no_user) = rows.split_users(cfg.split.clone(), plan.clone(), stats.clone());
            let (windows, late) = users.rolling_window(windows, stats.clone());
            let (train_w, infer_w) = windows.ok_err(|w| if w.train { Ok(w) } else { Err(w) });
            let (train_p, bad_train) = train_w.data_prep(schema.clone());
            let (models, failed) = train_p.training(
                backend.clone(),
                schema.clone(),
                cfg.model.clone(),
                stats.clone(),
            );
            let (notes, unregistered) = models.registry_writer(registry.clone(), stats.clone());
            let (infer_p, bad_infer) = infer_w.data_prep(schema.clone());
            let (scored, unscored) =
                infer_p.inference(notes.broadcast(), scorer, backend.clone(), stats.clone());
            let features = Arc::new(columns.features().to_vec());
            let mut lines = vec![
                scored
                    .clone()
                    .filter_detections(&cfg.detection)
                    .post_proc(features.clone(), o.clock.clone())
                    .serialize(
                        columns.clone(),
                        vec![OutKind::DetectionsCsv, OutKind::DetectionsJson],
                    ),
            ];
            if o.write_scores {
                lines.push(
                    scored
                        .post_proc(features, o.clock.clone())
                        .serialize(columns.clone(), vec![OutKind::ScoresCsv]),
                );
            }
            lines.push(
                scope
                    .concatenate(vec![
                        bad_files,
                        no_user,
                        late,
                        bad_train,
                        failed,
                        unregistered,
                        bad_infer,
                        unscored,
                    ])
                    .serialize_dead_letters(),
            );
            scope
                .concatenate(lines)
                .sinks(my_files, stats.clone())
                .probe_with(&probe);
        });
        let n = plan.epochs.len();
        for (t, epoch) in plan.epochs.iter().enumerate() {
            if worker.index() == 0 {
                for (i, path) in epoch.files.iter().enumerate() {
                    input.send(FileTask {
                        epoch: t as u64,
                        index: u32::try_from(i).unwrap_or(u32::MAX),
                        path: path.clone(),
                        format: epoch.format,
                    });
                }
            }
            input.advance_to(t as u64 + 1);
            // At most two epochs in flight: read the next while this one trains.
            while probe.less_than(&(t as u64)) {
                worker.step();
            }
            if o.progress && worker.index() == 0 {
                progress(t, n, &stats.borrow(), started);
            }
        }
        drop(input);
        while worker.step_or_park(None) {}
        if o.progress && worker.index() == 0 {
            progress(n, n, &stats.borrow(), started);
            eprintln!();
        }
        stats.borrow().clone()
    })
    .map_err(|e| Error::model("dataflow", e))?;
    let mut stats = Stats::default();
    for r in guards.join() {
        stats.merge(r.map_err(|e| Error::model("dataflow worker", e))?);
    }
    if !stats.fatal.is_empty() {
        return Err(Error::model("run", stats.fatal.join("; ")));
    }
    let mut outputs = vec![
        output_path(&opts.output, &opts.schema.name, OutKind::DetectionsCsv),
        output_path(&opts.output, &opts.schema.name, OutKind::DetectionsJson),
    ];
    if opts.write_scores {
        outputs.push(output_path(
            &opts.output,
            &opts.schema.name,
            OutKind::ScoresCsv,
        ));
    }
    outputs.push(output_path(
        &opts.output,
        &opts.schema.name,
        OutKind::DeadLetters,
    ));
    Ok(RunSummary {
        epochs,
        stats,
        seconds: started.elapsed().as_secs_f64(),
        outputs,
        unmatched,
    })
}

fn progress(done: usize, total: usize, s: &Stats, started: Instant) {
    let width = 30;
    let filled = (done * width).checked_div(total).unwrap_or(width);
    let mut err = std::io::stderr();
    let _ = write!(
        err,
        "\r[{}{}] epoch {done}/{total}  {} rows  {:.0} s",
        "#".repeat(filled),
        " ".repeat(width - filled),
        s.rows,
        started.elapsed().as_secs_f64()
    );
    let _ = err.flush();
}
