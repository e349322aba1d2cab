//! Kafka source (Morpheus' `KafkaSourceStage` for raw logs): reads a topic of JSON log records
//! (one record per message) with the source schema's reader; the epochs are cut by event time
//! by an [`EpochAssigner`] (see [`super::epochs`]).
//!
//! Each worker reads the partitions `p` with `p % workers == worker` (assigned, not balanced by
//! the group, so the layout is fixed), from a checkpoint's offsets, else the group's committed
//! offsets, else the beginning. Malformed messages, late records and outliers (dated after the
//! wall clock plus `[events] max_ahead`) are dead-lettered with their partition and offset.
//!
//! State: the consumer, and the assigner's (offsets, newest event times, open epochs).
//! Offsets are committed only by [`Source::commit`], after the rows up to them are written.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dfp_engine::Result;
use dfp_engine::ingest::{InputFormat, Reader};
use dfp_engine::rows::{Origin, rows_from_batch};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::epochs::{EpochAssigner, EpochSettings, EpochState, Placed, Progress};
use super::{Batch, Polled, Source};
use crate::dead_letter::DeadLetter;
use crate::file_to_batch::Tasks;
use crate::kafka::{KafkaConsumer, KafkaSettings, TIMEOUT, kafka_error, partition_count};
use crate::post_proc::Clock;

/// What the source reads and how it cuts epochs.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceSettings {
    /// The cluster.
    pub kafka: KafkaSettings,
    /// The topic of raw log records.
    pub topic: String,
    /// The consumer group whose committed offsets are the starting point.
    pub group: String,
    /// Event time per epoch, µs.
    pub period_us: i64,
    /// How far behind its partition's newest record a record may be and still be placed, µs.
    pub lateness_us: i64,
    /// Longest wait for messages in one poll.
    pub poll: Duration,
    /// Stop once every partition has been read to its end (a replayed, bounded stream).
    pub stop_at_end: bool,
    /// How long a partition must stay at its end before it stops holding the others' epochs
    /// open (a consumer that has caught up sees ends all the time).
    pub idle_after: Duration,
}

impl SourceSettings {
    /// What a checkpoint of this stream belongs to: a restart on another topic, group or epoch
    /// length is refused.
    pub fn fingerprint(&self) -> String {
        format!(
            "kafka topic {} group {} epoch {}us",
            self.topic, self.group, self.period_us
        )
    }
}

/// One worker's share of a topic.
pub struct KafkaSource {
    consumer: KafkaConsumer,
    reader: Arc<Reader>,
    settings: SourceSettings,
    epochs: EpochAssigner,
    tasks: Tasks,
    /// The wall clock and `[events] max_ahead`, µs: the newest event time accepted.
    clock: Clock,
    max_ahead_us: i64,
    /// Messages read at most in one poll.
    batch: usize,
    /// When the lag was last measured.
    lag_at: Option<Instant>,
}

/// How often the consumer lag is measured (a metadata request per partition), besides when a
/// partition reaches its end.
const LAG_EVERY: Duration = Duration::from_secs(5);

impl KafkaSource {
    /// Connects and assigns this worker's partitions, from `resume` (a checkpoint's state and
    /// its cut), else the group's committed offsets. An unreachable broker or a missing topic
    /// is an error naming them.
    pub fn new(
        settings: SourceSettings,
        reader: Arc<Reader>,
        (worker, workers): (usize, usize),
        resume: Option<(EpochState, u64)>,
        tasks: Tasks,
        (clock, max_ahead_us): (Clock, i64),
    ) -> Result<Self> {
        let consumer = settings.kafka.consumer(&settings.group)?;
        let count = partition_count(&consumer, &settings.kafka, &settings.topic)?;
        let mine: Vec<i32> = (0..count as i32)
            .filter(|p| *p as usize % workers.max(1) == worker)
            .collect();
        let epochs = EpochAssigner::new(
            EpochSettings {
                period_us: settings.period_us,
                lateness_us: settings.lateness_us,
                idle_after: settings.idle_after,
                stop_at_end: settings.stop_at_end,
            },
            mine.iter().copied(),
            resume,
        );
        let mut wanted = TopicPartitionList::new();
        for &p in &mine {
            wanted.add_partition(&settings.topic, p);
        }
        let committed = consumer
            .committed_offsets(wanted, TIMEOUT)
            .map_err(|e| kafka_error("reading committed offsets", e))?;
        let mut assign = TopicPartitionList::new();
        for &p in &mine {
            let saved = epochs.partitions().get(&p).and_then(|p| p.next);
            let next = match committed
                .find_partition(&settings.topic, p)
                .map(|e| e.offset())
            {
                _ if saved.is_some() => saved,
                Some(Offset::Offset(o)) => Some(o),
                _ => None,
            };
            assign
                .add_partition_offset(
                    &settings.topic,
                    p,
                    next.map_or(Offset::Beginning, Offset::Offset),
                )
                .map_err(|e| kafka_error("assigning partitions", e))?;
        }
        consumer
            .assign(&assign)
            .map_err(|e| kafka_error("assigning partitions", e))?;
        tracing::debug!(topic = %settings.topic, worker, partitions = ?mine, "kafka source assigned");
        Ok(Self {
            consumer,
            reader,
            settings,
            epochs,
            tasks,
            clock,
            max_ahead_us,
            batch: 10_000,
            lag_at: None,
        })
    }

    /// Parses one partition's lines and places their rows in epochs.
    fn place(&mut self, p: i32, lines: &[u8], offsets: &[i64], polled: &mut Polled) -> Result<()> {
        let topic = self.settings.topic.clone();
        let label = format!("kafka:{topic}/{p}");
        let read = self
            .reader
            .read_bytes(Path::new(&label), lines, InputFormat::JsonLines);
        let mut rejected = vec![false; offsets.len()];
        for r in &read.rejected {
            let offset = offsets.get(r.record).copied().unwrap_or(-1);
            if let Some(flag) = rejected.get_mut(r.record) {
                *flag = true;
            }
            polled.dead.push(DeadLetter::message(
                &topic,
                p,
                offset,
                r.reason.clone(),
                r.raw.clone(),
            ));
        }
        let good = offsets
            .iter()
            .zip(&rejected)
            .filter(|(_, r)| !**r)
            .map(|(o, _)| *o);
        let rows = rows_from_batch(&read.batch, 0, 0)?;
        let until_us = (self.clock)()
            .timestamp_micros()
            .saturating_add(self.max_ahead_us);
        let mut outliers = 0;
        for (mut row, offset) in rows.into_iter().zip(good) {
            row.origin = Origin {
                epoch: super::epochs::epoch_of(row.ts, self.settings.period_us),
                file: u32::try_from(p).unwrap_or(0),
                record: u64::try_from(offset).unwrap_or(0),
            };
            let json = || serde_json::to_string(&row).unwrap_or_default();
            match self.epochs.place(p, row.clone(), until_us) {
                Placed::Open(_) => {}
                Placed::Late(reason) => polled.dead.push(DeadLetter::row(
                    "kafka_source",
                    row.user.as_deref(),
                    &row,
                    reason,
                )),
                Placed::Outlier(reason) => {
                    outliers += 1;
                    polled
                        .dead
                        .push(DeadLetter::message(&topic, p, offset, reason, json()));
                }
            }
        }
        if outliers > 0 {
            tracing::warn!(
                topic = %topic,
                partition = p,
                records = outliers,
                "records dated ahead of the wall clock (plus [events] max_ahead) dead-lettered as outliers"
            );
        }
        Ok(())
    }

    /// Records in this worker's partitions not read yet (the high watermark less the next
    /// offset; from the low watermark where nothing has been read); None when the brokers do
    /// not answer.
    fn lag(&self) -> Option<u64> {
        let mut lag = 0;
        for (&p, progress) in self.epochs.partitions() {
            let (low, high) = self
                .consumer
                .fetch_watermarks(&self.settings.topic, p, Duration::from_secs(1))
                .map_err(|e| tracing::debug!(partition = p, error = %e, "measuring the lag"))
                .ok()?;
            lag += (high - progress.next.unwrap_or(low)).max(0) as u64;
        }
        Some(lag)
    }

    fn commit_progress(&self, partitions: &BTreeMap<i32, Progress>) -> Result<()> {
        let mut tpl = TopicPartitionList::new();
        for (&p, progress) in partitions {
            if let Some(next) = progress.next {
                tpl.add_partition_offset(&self.settings.topic, p, Offset::Offset(next))
                    .map_err(|e| kafka_error("committing offsets", e))?;
            }
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        self.consumer
            .commit(&tpl, CommitMode::Sync)
            .map_err(|e| kafka_error("committing offsets", e))
    }
}

impl Source for KafkaSource {
    fn describe(&self) -> String {
        format!(
            "kafka://{}/{}",
            self.settings.kafka.brokers, self.settings.topic
        )
    }

    /// Reads what is there (up to 10,000 messages, waiting at most the poll interval for the
    /// first), places the records and returns the epochs that closed; `None` once a bounded
    /// read is at the end of every partition (or this worker has none).
    fn poll(&mut self, now: Instant) -> Result<Option<Polled>> {
        if self.epochs.partitions().is_empty() || self.epochs.finished() {
            return Ok(None);
        }
        let mut polled = Polled::default();
        // Per partition: the payloads read, one line each, and their offsets.
        let mut batches: BTreeMap<i32, (Vec<u8>, Vec<i64>)> = BTreeMap::new();
        let mut wait = self.settings.poll;
        let mut messages = 0;
        let mut reached_end = false;
        while messages < self.batch && !self.epochs.finished() {
            let Some(message) = self.consumer.poll(wait) else {
                break;
            };
            wait = Duration::ZERO;
            let m = match message {
                Ok(m) => m,
                Err(KafkaError::PartitionEOF(p)) => {
                    self.epochs.at_end(p, Instant::now());
                    reached_end = true;
                    continue;
                }
                Err(e) => return Err(kafka_error("reading messages", e)),
            };
            let (p, offset) = (m.partition(), m.offset());
            self.epochs.read(p, offset);
            messages += 1;
            let payload = m.payload().unwrap_or_default();
            polled.bytes += payload.len() as u64;
            if payload.iter().all(u8::is_ascii_whitespace) {
                polled.dead.push(DeadLetter::message(
                    &self.settings.topic,
                    p,
                    offset,
                    "empty message".into(),
                    String::new(),
                ));
                continue;
            }
            let (lines, offsets) = batches.entry(p).or_default();
            // A raw newline can only be whitespace between JSON tokens: one record, one line.
            lines.extend(payload.iter().map(|&b| if b == b'\n' { b' ' } else { b }));
            lines.push(b'\n');
            offsets.push(offset);
        }
        tracing::trace!(messages, "kafka poll");
        if reached_end || self.lag_at.is_none_or(|t| t.elapsed() >= LAG_EVERY) {
            self.lag_at = Some(Instant::now());
            polled.lag = self.lag();
        }
        for (p, (lines, offsets)) in batches {
            self.place(p, &lines, &offsets, &mut polled)?;
        }
        polled.epochs = self.epochs.close_batches(now, false, self.tasks);
        Ok(Some(polled))
    }

    fn drain(&mut self) -> Vec<(u64, Batch)> {
        self.epochs.close_batches(Instant::now(), true, self.tasks)
    }

    fn stateful(&self) -> bool {
        true
    }

    fn state(&self, unsent: &[(u64, Batch)]) -> Result<Vec<u8>> {
        self.epochs.state_of(unsent)
    }

    fn commit(&mut self, checkpointed: Option<&[u8]>) -> Result<()> {
        match checkpointed {
            Some(bytes) => {
                let state: EpochState =
                    crate::checkpoint::decode(bytes, Path::new("the source's checkpoint"))?;
                self.commit_progress(state.partitions())
            }
            None => self.commit_progress(self.epochs.partitions()),
        }
    }
}
