//! The run's workers: [`execute`] starts timely (threads in this process, or one process of a
//! cluster); each worker makes its context (its backend, windows, scorer and, on worker 0, the
//! sinks; each stateful stage registers with the worker's [`StateRegistry`], which restores
//! it from the cut a stream resumes from), builds the graph (`graph`), makes its
//! [`Source`] and hands it to the one driver ([`crate::source::drive`]). A worker returns its
//! counters, or the error that stopped it with its cause; the run fails with the first.
//!
//! State: each worker's stages' (see `graph`), for the life of the run.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use dfp_engine::device;
use dfp_engine::ingest::Reader;
use dfp_engine::lifecycle::{Promotion, Serving};
use dfp_engine::model::Backend;
use dfp_engine::registry::Registry;
use dfp_engine::{Error, Result};

use super::graph::{Stages, build};
use super::resume::Checkpointing;
use super::{RunOptions, StreamInput, StreamSource};
use crate::alerts::{EpochEnds, Suppressor};
use crate::budget::Budget;
use crate::config::SinkConfig;
use crate::dead_letter::FileIndex;
use crate::dead_letter::Originals;
use crate::drift::Retrainer;
use crate::inference::Scorer;
use crate::kafka::KafkaSettings;
use crate::metrics::{SharedStats, Stats};
use crate::plan::Plan;
use crate::promotion::Promoter;
use crate::rolling_window::{RollingWindows, WindowState};
use crate::sink::files::OutputFiles;
use crate::sink::kafka::KafkaSink;
use crate::sink::stdout::StdoutSink;
use crate::sink::{Sink, SinkSet};
use crate::source::kafka::KafkaSource;
use crate::source::plan::PlanSource;
use crate::source::watch::WatchSource;
use crate::source::{self, Source};
use crate::state::{StageState, StateRegistry};

/// What a run's workers read.
pub(crate) enum Feed {
    /// A control message's plan.
    Plan(Arc<Plan>),
    /// A stream, checkpointed when it has a state directory.
    Stream(Box<StreamInput>, Option<Arc<Checkpointing>>),
}

/// The sinks of a run of a plan (on the process that writes outputs): the files, created
/// anew, then the run's other sinks.
pub(crate) fn sinks_for_plan(opts: &RunOptions) -> Result<Option<SinkSet>> {
    if !opts.writes_outputs() {
        return Ok(None);
    }
    let files = OutputFiles::create(
        &opts.output,
        &opts.schema.name,
        &opts.columns()?,
        &opts.out_kinds(),
    )?;
    Ok(Some(SinkSet::new(files, other_sinks(opts, None)?)))
}

/// The sinks beside the files; a checkpointed stream's Kafka sink keys its messages with the
/// run's name and skips those a crashed process already produced (`resume`: the run and, on a
/// restart, the cut).
pub(crate) fn other_sinks(
    opts: &RunOptions,
    resume: Option<(&str, Option<u64>)>,
) -> Result<Vec<Box<dyn Sink>>> {
    let mut out: Vec<Box<dyn Sink>> = Vec::new();
    for spec in &opts.config.sinks {
        match spec {
            SinkConfig::Kafka { url, options } => {
                let mut all = opts.config.source.options.clone();
                all.extend(options.clone());
                let (kafka, topic) = KafkaSettings::from_url(url, all)?;
                let mut sink = KafkaSink::new(&kafka, &topic)?;
                if let Some((run, from)) = resume {
                    sink = sink.resume(&kafka, run, from)?;
                }
                out.push(Box::new(sink));
            }
            SinkConfig::Stdout {} => out.push(Box::new(StdoutSink::default())),
        }
    }
    let notifications = &opts.config.notifications;
    if notifications.webhook.is_some()
        || notifications.kafka.is_some()
        || notifications.nats.is_some()
    {
        out.push(Box::new(crate::notify::Notifier::start(
            notifications,
            &opts.schema.name,
            &opts.output,
            &opts.config.source.options,
        )?));
    }
    Ok(out)
}

/// Runs `feed` through the dataflow into `sinks` (held by this process when its worker 0 is
/// the run's), scoring from the model `versions` (a checkpoint's, when resuming) and
/// registering each model `once` (not again when the same model is there); returns the
/// counters summed over workers and the epochs run.
pub(crate) fn execute(
    opts: &RunOptions,
    feed: Feed,
    sinks: Option<SinkSet>,
    versions: Serving,
) -> Result<(Stats, usize)> {
    let once = matches!(&feed, Feed::Stream(_, Some(_)));
    execute_once(opts, feed, sinks, versions, once)
}

/// [`execute`], saying whether models register `once`.
pub(crate) fn execute_once(
    opts: &RunOptions,
    feed: Feed,
    sinks: Option<SinkSet>,
    versions: Serving,
    once: bool,
) -> Result<(Stats, usize)> {
    // The run its models' lineage names: when it started and where it writes.
    let run = format!(
        "{} {}",
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        opts.output.display()
    );
    let registry = opts.open_registry()?.for_run(&run);
    let workers = opts.workers.max(1);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (if opts.threads == 0 {
        cores
    } else {
        opts.threads
    } / workers)
        .max(1);
    let shared = Arc::new(Shared {
        opts: opts.clone(),
        registry,
        reader: Arc::new(Reader::new(Arc::new(opts.schema.clone()))),
        feed,
        sinks: Mutex::new(sinks),
        versions,
        once,
        threads,
        epochs: AtomicUsize::new(0),
        files: FileIndex::default(),
    });
    tracing::info!(workers, threads, "starting the dataflow");
    let cluster = opts.cluster.is_some();
    let config = opts.timely_config();
    let run = shared.clone();
    // A cluster process that goes away makes timely's network threads panic here; that is
    // turned into an error naming the cause, so the other processes stop instead of hanging.
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let guards = timely::execute(config, move |worker| work(worker, &run))
            .map_err(|e| Error::stage("dataflow", e))?;
        let mut stats = Stats::default();
        for r in guards.join() {
            stats.merge(r.map_err(|e| Error::stage("dataflow worker", e))??);
        }
        Ok::<_, Error>(stats)
    }));
    let stats = match ran {
        Ok(stats) => stats?,
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a worker panicked".into());
            let what = if cluster {
                "another process of the cluster went away or failed"
            } else {
                "a worker failed"
            };
            return Err(Error::stage("dataflow", format!("{what}: {why}")));
        }
    };
    Ok((stats, shared.epochs.load(Ordering::Relaxed)))
}

/// Each epoch's end in event time: a plan's batch period end, a stream's epoch end.
fn epoch_ends(feed: &Feed) -> EpochEnds {
    match feed {
        Feed::Plan(plan) => {
            let ends: Vec<i64> = plan
                .epochs
                .iter()
                .map(|e| e.period_end.timestamp_micros())
                .collect();
            Arc::new(move |e| usize::try_from(e).ok().and_then(|e| ends.get(e).copied()))
        }
        Feed::Stream(stream, _) => {
            let period = match &stream.source {
                StreamSource::Kafka(k) => k.period_us,
                StreamSource::Watch(w) => w.period_us,
            };
            Arc::new(move |e| {
                i64::try_from(e)
                    .ok()
                    .and_then(|e| e.checked_add(1))
                    .and_then(|e| e.checked_mul(period))
            })
        }
    }
}

/// What every worker of this process shares.
struct Shared {
    opts: RunOptions,
    registry: Registry,
    reader: Arc<Reader>,
    feed: Feed,
    /// The sinks, taken by worker 0.
    sinks: Mutex<Option<SinkSet>>,
    versions: Serving,
    once: bool,
    /// Model threads per worker.
    threads: usize,
    /// Epochs sent, the most of any worker.
    epochs: AtomicUsize,
    /// The files a watched directory has read.
    files: FileIndex,
}

/// One worker: its context, its graph, its source, driven to the end.
fn work(worker: &mut timely::worker::Worker, run: &Shared) -> Result<Stats> {
    let me = worker.index();
    let o = &run.opts;
    let stats: SharedStats = Rc::new(RefCell::new(Stats::default()));
    let backend: Rc<dyn Backend> = Rc::from(device::backend(o.device, run.threads)?);
    let ckpt = match &run.feed {
        Feed::Stream(_, c) => c.clone(),
        Feed::Plan(_) => None,
    };
    let mut states = match &ckpt {
        Some(c) => StateRegistry::new(Some(c.settings.clone()), me, c.cut.clone()),
        None => StateRegistry::new(None, me, None),
    };
    let mut windows = RollingWindows::new(
        &o.schema,
        o.config.training_window.clone(),
        o.config.inference_window.clone(),
    )?
    .with_familiarity(&o.schema, &o.config.familiarity)?;
    let (window_state, restored) = states.register::<WindowState>("windows")?;
    if let Some(users) = restored {
        windows.restore(users);
    }
    let (scorer_state, restored) = states.register::<Serving>("scorer")?;
    let versions = restored.unwrap_or_else(|| match &ckpt {
        Some(c) => c.meta.versions.clone(),
        None => run.versions.clone(),
    });
    let mut scorer = Scorer::new(
        Arc::new(o.schema.clone()),
        run.registry.clone(),
        versions,
        &o.config.split.generic_user,
        &o.config.inference,
        o.config.model.eval_batch_size,
    );
    if o.config.drift.enabled {
        scorer = scorer.with_drift(o.config.drift.min_rows);
    }
    let (sinks, sink_state) = if me == 0 {
        let sinks = run.sinks.lock().ok().and_then(|mut s| s.take());
        let (state, _) = states.register_raw("sinks")?;
        (sinks, state)
    } else {
        (None, Default::default())
    };
    let (source_state, source_restored) = match &run.feed {
        Feed::Stream(..) => states.register_raw("source")?,
        Feed::Plan(_) => (Default::default(), None),
    };
    let budget = if o.config.detection.budgeted() {
        let (state, restored) = states.register::<Budget>("budget")?;
        let mut budget = restored.unwrap_or_else(|| Budget::new(&o.config.detection));
        budget.configure(&o.config.detection);
        Some((budget, state))
    } else {
        None
    };
    let alerts = if o.config.alerts.enabled {
        let (state, restored) = states.register::<Suppressor>("alerts")?;
        let mut suppressor = restored.unwrap_or_else(|| Suppressor::new(&o.config.alerts));
        suppressor.configure(&o.config.alerts);
        Some((suppressor, state))
    } else {
        None
    };
    let promoter = if o.config.lifecycle.promotion == Promotion::Auto {
        let (state, restored) = states.register::<Promoter>("promotion")?;
        // Promotions decided just before the cut had not reached inference yet.
        if let Some(cut) = ckpt.as_ref().and_then(|c| c.cut.as_ref()) {
            for note in Promoter::in_flight(cut, o.total_workers())? {
                scorer.apply(note);
            }
        }
        Some((restored.unwrap_or_default(), state))
    } else {
        None
    };
    let retrainer = if o.config.drift.retrain_after.is_some() {
        let (state, restored) = states.register::<Retrainer>("drift")?;
        // Retraining asked for just before the cut had not reached the rolling window yet.
        let resumed = match ckpt.as_ref().and_then(|c| c.cut.as_ref()) {
            Some(cut) => Some((cut.time, Retrainer::in_flight(cut)?)),
            None => None,
        };
        (restored.unwrap_or_default(), state, resumed)
    } else {
        (Retrainer::default(), StageState::default(), None)
    };
    let from = states.from();
    states.finish()?;
    let originals = match &run.feed {
        Feed::Plan(plan) => Originals::of_plan(plan.clone()),
        Feed::Stream(s, _) if matches!(s.source, StreamSource::Watch(_)) => {
            Originals::of_files(run.files.clone())
        }
        Feed::Stream(..) => Originals::none(),
    };
    let stages = Stages {
        schema: Arc::new(o.schema.clone()),
        columns: Arc::new(o.columns()?),
        reader: run.reader.clone(),
        config: o.config.clone(),
        backend,
        registry: run.registry.clone(),
        once: run.once,
        clock: o.clock.clone(),
        write_scores: o.write_scores,
        stats: stats.clone(),
        windows: (windows, window_state),
        retrainer,
        scorer: (scorer, scorer_state),
        sinks: (sinks, sink_state),
        budget,
        alerts,
        promoter,
        silenced: Arc::new(crate::feedback::Suppressions::load(&o.registry)?),
        epoch_ends: epoch_ends(&run.feed),
        originals,
    };
    let graph = worker.dataflow::<u64, _, _>(|scope| build(scope, stages));
    let max_ahead = o.config.events.max_ahead.us();
    let (mut source, stop): (Box<dyn Source>, _) = match &run.feed {
        Feed::Plan(plan) => (
            Box::new(PlanSource::new(plan.clone(), me == 0, max_ahead)),
            o.stop.clone(),
        ),
        Feed::Stream(stream, _) => {
            let clock = (o.clock.clone(), max_ahead);
            let resume = source_restored.map(|b| (b, from));
            let source: Box<dyn Source> = match &stream.source {
                StreamSource::Kafka(settings) => {
                    let resume = match resume {
                        Some((bytes, cut)) => Some((
                            crate::checkpoint::decode(&bytes, std::path::Path::new("source"))?,
                            cut,
                        )),
                        None => None,
                    };
                    Box::new(KafkaSource::new(
                        settings.clone(),
                        run.reader.clone(),
                        (me, worker.peers()),
                        resume,
                        stream.tasks,
                        clock,
                    )?)
                }
                StreamSource::Watch(settings) => Box::new(WatchSource::new(
                    settings.clone(),
                    run.reader.clone(),
                    me == 0,
                    resume,
                    stream.tasks,
                    clock,
                    run.files.clone(),
                )?),
            };
            (source, stream.stop.clone())
        }
    };
    let feed = source::Feed {
        files: graph.files,
        rows: graph.rows,
        dead: graph.dead,
        snapshots: source_state,
        stats: stats.clone(),
        publisher: o
            .metrics
            .as_ref()
            .and_then(|m| m.telemetry.clone())
            .map(crate::telemetry::Publisher::new),
        timing: (me == 0).then(Default::default),
    };
    let mut committed = None;
    let mut on_cut = |source: &mut dyn Source| match &ckpt {
        Some(c) => c.commit_cut(source, me, &mut committed),
        None => Ok(()),
    };
    let progress = o.progress && me == 0;
    let sent = source::drive(
        worker,
        source.as_mut(),
        feed,
        &graph.probe,
        &stop,
        ckpt.is_some().then_some(&mut on_cut as source::OnCut<'_>),
        progress,
    );
    run.epochs.fetch_max(sent, Ordering::Relaxed);
    if progress {
        eprintln!();
    }
    let stats = stats.borrow().clone();
    match stats.failed() {
        Some(e) => Err(e),
        None => Ok(stats),
    }
}
