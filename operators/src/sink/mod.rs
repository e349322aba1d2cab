//! Sinks: where a run's output lines go, behind one trait, and the sink stage that writes
//! every epoch once.
//!
//! A [`Sink`] takes one epoch's lines at a time. Implemented by the output files
//! ([`files::OutputFiles`]: detections CSV and JSON lines, scores, dead letters), the detections
//! topic ([`kafka::KafkaSink`]) and standard output ([`stdout::StdoutSink`]). The files come
//! first, so an epoch is in the files before it is anywhere else.
//!
//! The sink stage ([`WriteSinks::sinks`]): every line is exchanged to worker 0, which holds
//! the sinks; once the frontier has passed an epoch its lines are sorted (by file, event time,
//! origin) and written to each sink, so each line is written once, in an order that does not
//! depend on the number of workers. State ([`Stateful`]): the sinks' own (the files' lengths),
//! checkpointed as the component `sinks`.

pub mod files;
pub mod kafka;
pub mod stdout;

use dfp_engine::{Error, Result};
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Operator;
use timely::dataflow::operators::generic::OutputBuilderSession;

use crate::checkpoint::frontier_cut;
use crate::frontier::Pending;
use crate::metrics::SharedStats;
use crate::serialize::{Line, OutKind};
use crate::state::{StageState, Stateful, timed};

/// One destination of a run's output lines.
///
/// ```
/// use dfp_operators::serialize::{Line, OutKind};
/// use dfp_operators::sink::Sink;
///
/// /// Counts detections.
/// #[derive(Default)]
/// struct Count(usize);
///
/// impl Sink for Count {
///     fn describe(&self) -> String { "a counter".into() }
///     fn write_epoch(&mut self, _epoch: u64, lines: &[Line]) -> dfp_engine::Result<()> {
///         self.0 += lines.iter().filter(|l| l.kind == OutKind::DetectionsJson).count();
///         Ok(())
///     }
///     fn state(&mut self) -> dfp_engine::Result<Option<Vec<u8>>> { Ok(None) }
/// }
///
/// let mut c = Count::default();
/// let line = Line { kind: OutKind::DetectionsJson, ts: 0, origin: None, text: "{}".into() };
/// c.write_epoch(0, &[line]).unwrap();
/// assert_eq!(c.0, 1);
/// ```
pub trait Sink: Send {
    /// Where it writes, for logs and errors.
    fn describe(&self) -> String;

    /// Writes one epoch's lines (sorted), durably before it returns: the epoch counts as
    /// written once every sink has it.
    fn write_epoch(&mut self, epoch: u64, lines: &[Line]) -> Result<()>;

    /// Its state for a checkpoint, if it keeps one (the files: their lengths).
    fn state(&mut self) -> Result<Option<Vec<u8>>>;
}

/// The sinks of a run, held by worker 0: the files first, then the others in order.
pub struct SinkSet {
    sinks: Vec<Box<dyn Sink>>,
}

/// The sinks' state at a cut: each sink's own, by its description.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkSetState(pub Vec<(String, Vec<u8>)>);

impl SinkSetState {
    /// The state of the sink described as `name`.
    pub fn of(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.as_slice())
    }
}

impl SinkSet {
    /// The sinks, the files first.
    pub fn new(files: files::OutputFiles, others: Vec<Box<dyn Sink>>) -> Self {
        let mut sinks: Vec<Box<dyn Sink>> = vec![Box::new(files)];
        sinks.extend(others);
        Self { sinks }
    }

    /// Writes one epoch's lines, sorted, to every sink in order.
    pub fn write(&mut self, epoch: u64, mut lines: Vec<Line>) -> Result<()> {
        lines.sort();
        for sink in &mut self.sinks {
            sink.write_epoch(epoch, &lines)
                .map_err(|e| Error::stage("sink", format!("{}: {}", sink.describe(), e.chain())))?;
        }
        Ok(())
    }
}

impl Stateful for SinkSet {
    fn snapshot(&mut self) -> Result<Vec<u8>> {
        let mut parts = Vec::new();
        for sink in &mut self.sinks {
            if let Some(bytes) = sink.state()? {
                parts.push((sink.describe(), bytes));
            }
        }
        crate::checkpoint::encode(&SinkSetState(parts))
    }
}

/// The sinks of worker 0, or none on the other workers.
struct Held(Option<SinkSet>);

impl Stateful for Held {
    fn snapshot(&mut self) -> Result<Vec<u8>> {
        self.0
            .as_mut()
            .ok_or_else(|| {
                Error::stage(
                    "checkpoint",
                    "the sinks' state asked of a worker without the sinks",
                )
            })?
            .snapshot()
    }
}

/// The sink stage as a timely operator.
pub trait WriteSinks<'s> {
    /// Writes every epoch's lines once the frontier has passed it (`sinks` on worker 0 only,
    /// checkpointed through `snapshots`). The returned stream carries nothing; its frontier
    /// tells what has been written.
    fn sinks(
        self,
        sinks: Option<SinkSet>,
        snapshots: StageState,
        stats: SharedStats,
    ) -> StreamVec<'s, u64, ()>;
}

impl<'s> WriteSinks<'s> for StreamVec<'s, u64, Line> {
    fn sinks(
        self,
        sinks: Option<SinkSet>,
        mut snapshots: StageState,
        stats: SharedStats,
    ) -> StreamVec<'s, u64, ()> {
        let mut held = Held(sinks);
        self.unary_frontier(Exchange::new(|_: &Line| 0), "Sinks", move |_cap, _info| {
            let mut pending = Pending::<Line>::default();
            move |(input, frontier), _output: &mut OutputBuilderSession<'_, u64, CapacityContainerBuilder<Vec<()>>>| {
                input.for_each_stamp(|cap, data| pending.stash(cap, data, 0));
                let ready = timed(pending.ready(&[frontier]));
                snapshots.epochs(&mut held, ready, frontier_cut(&[frontier]), &stats, |held, epoch, (_cap, lines)| {
                    let mut s = stats.borrow_mut();
                    s.detections += lines.iter().filter(|l| l.kind == OutKind::DetectionsCsv).count() as u64;
                    s.dead_letters += lines.iter().filter(|l| l.kind == OutKind::DeadLetters).count() as u64;
                    let Some(set) = held.0.as_mut() else {
                        s.fail(Error::stage("sink", "output lines reached a worker without the sinks"));
                        return;
                    };
                    if let Err(e) = set.write(epoch, lines) {
                        s.fail(e);
                    }
                });
            }
        })
        .container::<Vec<()>>()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::testing::run_stage;

    /// Each epoch written and its lines.
    type Written = Arc<Mutex<Vec<(u64, Vec<String>)>>>;

    /// Records what it is given.
    struct Recorder(Written);

    impl Sink for Recorder {
        fn describe(&self) -> String {
            "recorder".into()
        }
        fn write_epoch(&mut self, epoch: u64, lines: &[Line]) -> Result<()> {
            let texts = lines.iter().map(|l| l.text.clone()).collect();
            self.0.lock().unwrap().push((epoch, texts));
            Ok(())
        }
        fn state(&mut self) -> Result<Option<Vec<u8>>> {
            Ok(None)
        }
    }

    fn line(kind: OutKind, ts: i64, text: &str) -> Line {
        Line {
            kind,
            ts,
            origin: None,
            text: text.into(),
        }
    }

    #[test]
    fn every_epoch_is_written_once_in_order_sorted_files_first() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().to_path_buf();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorder = seen.clone();
        let epochs = vec![
            (
                0,
                vec![
                    line(OutKind::DetectionsJson, 5, "{\"b\":1}"),
                    line(OutKind::DetectionsJson, 1, "{\"a\":1}"),
                    line(OutKind::DeadLetters, 0, "{\"dead\":1}"),
                ],
            ),
            (
                1,
                vec![
                    line(OutKind::DetectionsCsv, 2, "x,y"),
                    line(OutKind::DetectionsJson, 2, "{\"c\":1}"),
                ],
            ),
        ];
        let (_, stats) = run_stage(epochs, move |s, stats| {
            let schema = dfp_engine::schema::SourceSchema::builtin("duo").unwrap();
            let columns = crate::serialize::Columns::new(&schema);
            let files = files::OutputFiles::create(
                &out,
                "duo",
                &columns,
                &[
                    OutKind::DetectionsCsv,
                    OutKind::DetectionsJson,
                    OutKind::DeadLetters,
                ],
            )
            .unwrap();
            let set = SinkSet::new(files, vec![Box::new(Recorder(recorder))]);
            s.sinks(Some(set), StageState::default(), stats)
        });
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen,
            [
                (
                    0,
                    vec![
                        "{\"a\":1}".to_string(),
                        "{\"b\":1}".into(),
                        "{\"dead\":1}".into()
                    ]
                ),
                (1, vec!["x,y".to_string(), "{\"c\":1}".into()]),
            ]
        );
        let json = std::fs::read_to_string(dir.path().join("dfp_detections_duo.jsonl")).unwrap();
        assert_eq!(json, "{\"a\":1}\n{\"b\":1}\n{\"c\":1}\n");
        let dead = std::fs::read_to_string(dir.path().join("dfp_dead_letter_duo.jsonl")).unwrap();
        assert_eq!(dead, "{\"dead\":1}\n");
        assert_eq!((stats.detections, stats.dead_letters), (1, 1));
    }
}
