//! Sources: where a run's records come from, behind one trait, and the one driver that feeds
//! any of them into the dataflow.
//!
//! A [`Source`] is one worker's share of a run's input. It hands the dataflow complete epochs,
//! in time order: files for the dataflow to read ([`Batch::Files`], shared out over the
//! workers), or rows it read itself ([`Batch::Rows`]); and dead letters for what it could not
//! use. It keeps what it has read as its state for checkpoints and commits it once written.
//! Implemented by a control message's plan ([`plan`]), a Kafka topic of records ([`kafka`]),
//! a watched directory ([`watch`]); the control topic runs each of its messages as a plan
//! (`crate::pipeline`'s control topic). Epochs of streams are cut by the pure [`epochs::EpochAssigner`].
//!
//! [`drive`] runs a source: it sends each epoch with the capability of its time, keeps at most
//! [`Source::in_flight`] epochs in the dataflow (the backpressure: meanwhile the broker or the
//! directory holds what comes next), offers the source's state for checkpoints, commits after
//! each complete cut, and on a stop drains what the source has read. State: the source's.

pub mod epochs;
pub mod kafka;
pub mod plan;
pub mod watch;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dfp_engine::Result;
use timely::dataflow::{InputHandleVec, ProbeHandle};

use crate::dead_letter::DeadLetter;
use crate::file_to_batch::{FileRows, FileTask};
use crate::metrics::SharedStats;
use crate::retry::Backoff;
use crate::state::StageState;

/// What a source hands the dataflow for one epoch.
#[derive(Debug)]
pub enum Batch {
    /// Files for the dataflow to read.
    Files(Vec<FileTask>),
    /// Rows the source read itself.
    Rows(FileRows),
}

/// What one poll gave.
#[derive(Debug, Default)]
pub struct Polled {
    /// Epochs now complete, in time order.
    pub epochs: Vec<(u64, Batch)>,
    /// Records the source could not use (malformed, late, outliers), sent at once.
    pub dead: Vec<DeadLetter>,
    /// Bytes read.
    pub bytes: u64,
    /// Records in the source not read yet, where it measured that in this poll.
    pub lag: Option<u64>,
}

/// One worker's share of a run's input (see the module's doc).
///
/// ```
/// use dfp_operators::source::{Batch, Polled, Source};
///
/// /// A source of one empty epoch of rows, then nothing.
/// struct Once(bool);
///
/// impl Source for Once {
///     fn describe(&self) -> String { "once".into() }
///     fn poll(&mut self, _now: std::time::Instant) -> dfp_engine::Result<Option<Polled>> {
///         if std::mem::replace(&mut self.0, true) {
///             return Ok(None);
///         }
///         let rows = dfp_operators::file_to_batch::FileRows {
///             epoch: 0,
///             tasks: Default::default(),
///             rows: Vec::new(),
///             bytes: 0,
///         };
///         Ok(Some(Polled { epochs: vec![(0, Batch::Rows(rows))], ..Polled::default() }))
///     }
/// }
///
/// let mut s = Once(false);
/// assert!(s.poll(std::time::Instant::now()).unwrap().is_some());
/// assert!(s.poll(std::time::Instant::now()).unwrap().is_none());
/// assert_eq!(s.in_flight(), 1);
/// ```
pub trait Source {
    /// What it reads, for logs and errors.
    fn describe(&self) -> String;

    /// Reads what there is as of `now`: the epochs now complete and dead letters, or `None`
    /// once the source has ended (a plan done, a bounded stream read to its end).
    fn poll(&mut self, now: Instant) -> Result<Option<Polled>>;

    /// Epochs kept in the dataflow at once: 1 (a stream: the next waits in the broker), or 2
    /// for files (the next epoch is read while one trains).
    fn in_flight(&self) -> u64 {
        1
    }

    /// The first epoch it sends (a resumed stream: its checkpoint's cut).
    fn start(&self) -> u64 {
        0
    }

    /// Ends now (a stop): every epoch still open, complete or not.
    fn drain(&mut self) -> Vec<(u64, Batch)> {
        Vec::new()
    }

    /// Whether it has state of its own to checkpoint (a plan has none: it is replayed whole).
    fn stateful(&self) -> bool {
        false
    }

    /// Its state at a cut, with `unsent` (epochs taken from it but not yet sent).
    fn state(&self, _unsent: &[(u64, Batch)]) -> Result<Vec<u8>> {
        Ok(Vec::new())
    }

    /// Everything it read up to the state `checkpointed` (a complete cut's), or up to now
    /// when `None` (the run ended without checkpoints), is written: commit it.
    fn commit(&mut self, _checkpointed: Option<&[u8]>) -> Result<()> {
        Ok(())
    }

    /// Epochs sent and epochs in all, for a progress bar, where it knows them.
    fn progress(&self) -> Option<(usize, usize)> {
        None
    }
}

/// One worker's inputs of the dataflow, and the source's checkpoints.
pub struct Feed {
    /// Files to read.
    pub files: InputHandleVec<u64, FileTask>,
    /// Rows read by the source.
    pub rows: InputHandleVec<u64, FileRows>,
    /// The source's dead letters.
    pub dead: InputHandleVec<u64, DeadLetter>,
    /// The source's state for checkpoints.
    pub snapshots: StageState,
    /// The worker's counters.
    pub stats: SharedStats,
    /// Where the worker publishes its counters for `/metrics`, when the run serves them.
    pub publisher: Option<crate::telemetry::Publisher>,
    /// When each epoch in the dataflow was sent (worker 0 times them; none elsewhere).
    pub timing: Option<VecDeque<(u64, Instant)>>,
}

impl Feed {
    fn tick(&mut self, probe: &ProbeHandle<u64>) {
        tick(&self.stats, &mut self.publisher, &mut self.timing, probe);
    }
}

/// Counts the epochs the dataflow has written (those the probe has passed) with their time,
/// and publishes the worker's counters for `/metrics` (at most every 200 ms).
fn tick(
    stats: &SharedStats,
    publisher: &mut Option<crate::telemetry::Publisher>,
    timing: &mut Option<VecDeque<(u64, Instant)>>,
    probe: &ProbeHandle<u64>,
) {
    if let Some(sent) = timing.as_mut() {
        while let Some(&(t, at)) = sent.front() {
            if probe.less_equal(&t) {
                break;
            }
            sent.pop_front();
            let secs = at.elapsed().as_secs_f64();
            let mut s = stats.borrow_mut();
            s.epochs_done += 1;
            s.epoch_seconds += secs;
            s.last_epoch_seconds = secs;
        }
    }
    if let Some(p) = publisher.as_mut() {
        p.tick(&stats.borrow());
    }
}

impl Feed {
    fn time(&self) -> u64 {
        *self.rows.time()
    }

    /// Moves the inputs on to `t`: everything before it has been sent, so the source's state
    /// (with `unsent`) holds for the cuts up to `t`.
    fn advance(&mut self, t: u64, source: &dyn Source, unsent: &[(u64, Batch)]) {
        if t > self.time() {
            self.files.advance_to(t);
            self.rows.advance_to(t);
            self.dead.advance_to(t);
        }
        if source.stateful() {
            self.snapshots
                .offer(t, || source.state(unsent), &self.stats);
        }
    }

    /// Sends dead letters at the present epoch.
    fn send_dead(&mut self, dead: Vec<DeadLetter>) {
        if dead.is_empty() {
            return;
        }
        let t = self.time();
        for d in dead {
            self.dead.send(d);
        }
        self.snapshots.applied(t);
    }

    /// Sends one epoch's batch at its time.
    fn send(&mut self, epoch: u64, batch: Batch) {
        let mut s = self.stats.borrow_mut();
        match batch {
            Batch::Files(tasks) => {
                if let Some(t) = tasks.first() {
                    s.train_epochs += u64::from(t.tasks.train);
                    s.infer_epochs += u64::from(t.tasks.infer);
                }
                drop(s);
                for task in tasks {
                    self.files.send(task);
                }
            }
            Batch::Rows(rows) => {
                s.rows += rows.rows.len() as u64;
                s.train_epochs += u64::from(rows.tasks.train);
                s.infer_epochs += u64::from(rows.tasks.infer);
                drop(s);
                self.rows.send(rows);
            }
        }
        self.snapshots.applied(epoch);
    }
}

/// After each complete checkpoint, what the driver calls to commit the source; without
/// checkpoints, `None` (the source commits at the end).
pub type OnCut<'a> = &'a mut dyn FnMut(&mut dyn Source) -> Result<()>;

/// Feeds `source` into the dataflow through `feed` until it ends, `stop` is set or a stage
/// fails (a fatal error in `feed.stats`); returns the epochs sent. A poll that fails (a broker
/// gone, a directory unreadable) is retried with backoff and a warning each time.
pub fn drive(
    worker: &mut timely::worker::Worker,
    source: &mut dyn Source,
    mut feed: Feed,
    probe: &ProbeHandle<u64>,
    stop: &AtomicBool,
    mut on_cut: Option<OnCut<'_>>,
    progress: bool,
) -> usize {
    let stats = feed.stats.clone();
    feed.advance(source.start(), source, &[]);
    let mut sent = 0;
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    let started = Instant::now();
    loop {
        if !stats.borrow().fatal.is_empty() {
            stop.store(true, Ordering::Relaxed);
        }
        if stop.load(Ordering::Relaxed) {
            let rest = source.drain();
            sent += send_epochs(worker, rest, &mut feed, source, probe);
            break;
        }
        match source.poll(Instant::now()) {
            Ok(None) => {
                let rest = source.drain();
                sent += send_epochs(worker, rest, &mut feed, source, probe);
                break;
            }
            Ok(Some(polled)) => {
                backoff.reset();
                let mut s = stats.borrow_mut();
                s.bytes += polled.bytes;
                if let Some(lag) = polled.lag {
                    s.consumer_lag = lag;
                }
                drop(s);
                feed.send_dead(polled.dead);
                if !polled.epochs.is_empty() {
                    sent += send_epochs(worker, polled.epochs, &mut feed, source, probe);
                    if let Some(cb) = on_cut.as_mut()
                        && let Err(e) = cb(source)
                    {
                        tracing::warn!(error = %e.chain(), "committing the checkpoint's offsets");
                    }
                    if progress && let Some((done, total)) = source.progress() {
                        crate::metrics::progress_bar(done, total, &stats.borrow(), started);
                    }
                }
            }
            Err(e) => {
                let wait = backoff.wait();
                tracing::warn!(source = %source.describe(), error = %e.chain(), retry_in = ?wait, "source");
                std::thread::sleep(wait);
            }
        }
        worker.step();
        feed.tick(probe);
    }
    if source.stateful() {
        feed.snapshots.offer(u64::MAX, || source.state(&[]), &stats);
    }
    let Feed {
        files,
        rows,
        dead,
        mut publisher,
        mut timing,
        ..
    } = feed;
    // Closing the inputs lets the dataflow run to its end.
    drop((files, rows, dead));
    while worker.step_or_park(None) {
        tick(&stats, &mut publisher, &mut timing, probe);
    }
    let committed = match on_cut {
        Some(cb) => cb(source),
        None => source.commit(None),
    };
    if let Err(e) = committed {
        stats.borrow_mut().fail(e);
    }
    if let Some(p) = publisher {
        p.finish(&stats.borrow());
    }
    sent
}

/// Sends epochs in order, keeping at most the source's in-flight count in the dataflow;
/// returns how many it sent.
fn send_epochs(
    worker: &mut timely::worker::Worker,
    mut epochs: Vec<(u64, Batch)>,
    feed: &mut Feed,
    source: &dyn Source,
    probe: &ProbeHandle<u64>,
) -> usize {
    let in_flight = source.in_flight().max(1);
    for i in 0..epochs.len() {
        let epoch = epochs[i].0;
        feed.advance(epoch, source, &epochs[i..]);
        let batch = std::mem::replace(&mut epochs[i].1, Batch::Files(Vec::new()));
        feed.send(epoch, batch);
        feed.advance(epoch + 1, source, &epochs[i + 1..]);
        if let Some(sent) = feed.timing.as_mut() {
            sent.push_back((epoch, Instant::now()));
        }
        // The dataflow is stepped until only `in_flight` epochs are in it, so an epoch moves
        // through every stage at once instead of one step per poll of the source.
        while probe.less_than(&(epoch + 2).saturating_sub(in_flight)) {
            worker.step();
            feed.tick(probe);
        }
    }
    epochs.len()
}
