//! Kafka source (Morpheus' `KafkaSourceStage` for raw logs): reads a topic of JSON log records
//! (one record per message) with the source schema's reader and cuts the stream into dataflow
//! epochs by event time.
//!
//! Each worker reads the partitions `p` with `p % workers == worker` (assigned, not balanced by
//! the group, so the layout is fixed), from the group's committed offsets or the beginning.
//! A record's epoch is its event time divided by the epoch period (`1h`: one epoch an hour),
//! so the same records make the same epochs whatever the partitions, workers or poll timing.
//! Per partition the watermark is its newest event time less the allowed lateness; an epoch is
//! closed, its rows sent into the dataflow, once every partition of the worker still being read
//! has a watermark past its end (a partition that has been at its end for the idle time does
//! not hold the others back, as an idle source in Flink; in a bounded read, at once; one that
//! has given nothing yet does). A record
//! whose epoch its own partition had already closed when it arrived is late: counted and
//! dead-lettered with the reason, never dropped silently. Malformed messages are dead-lettered
//! with their partition and offset.
//!
//! State: per partition the next offset and the newest event time; the rows of open epochs.
//! Offsets are committed only by [`KafkaSource::commit`], after the rows up to them have been
//! processed and written. A checkpoint holds that state with the rows read but not yet sent
//! ([`KafkaSource::state`]); a source resumed from it reads on from its offsets.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dfp_engine::ingest::{InputFormat, Reader};
use dfp_engine::rows::{Origin, Row, rows_from_batch};
use dfp_engine::{Error, Result};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize, Serializer};

use crate::dead_letter::DeadLetter;

/// librdkafka's log lines and errors, passed on to `tracing` at their level; but the end of
/// a partition, which a consumer reading to the end meets all the time, is not an error: it
/// is logged at debug.
#[derive(Debug, Clone, Copy, Default)]
pub struct KafkaLogs;

impl rdkafka::ClientContext for KafkaLogs {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error => {
                tracing::error!(facility = fac, "librdkafka: {message}");
            }
            L::Warning => tracing::warn!(facility = fac, "librdkafka: {message}"),
            L::Notice | L::Info => tracing::info!(facility = fac, "librdkafka: {message}"),
            L::Debug => tracing::debug!(facility = fac, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let eof = matches!(error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF);
        if eof {
            tracing::debug!("librdkafka: {error}: {reason}");
        } else {
            tracing::error!("librdkafka: {error}: {reason}");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for KafkaLogs {}

/// A consumer whose librdkafka logs go through [`KafkaLogs`].
pub type KafkaConsumer = BaseConsumer<KafkaLogs>;

/// How to reach a Kafka cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSettings {
    /// `bootstrap.servers`: `host:port[,host:port...]`.
    pub brokers: String,
    /// Further librdkafka settings passed through as given (`security.protocol`,
    /// `sasl.mechanisms`, `sasl.username`, `ssl.ca.location`, ...).
    pub options: Vec<(String, String)>,
}

impl KafkaSettings {
    /// A consumer in `group` that commits only when told, starts where the group committed (or
    /// at the beginning) and reports the end of each partition.
    pub fn consumer(&self, group: &str) -> Result<KafkaConsumer> {
        self.client_config()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "true")
            .create_with_context(KafkaLogs)
            .map_err(|e| kafka_error("creating the consumer", e))
    }

    /// A librdkafka configuration with the brokers and the pass-through options.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in &self.options {
            c.set(k, v);
        }
        c
    }
}

/// The number of partitions of `topic`; an unreachable broker or a missing topic is an error
/// naming them.
pub fn partition_count(
    consumer: &KafkaConsumer,
    kafka: &KafkaSettings,
    topic: &str,
) -> Result<usize> {
    let metadata = consumer.fetch_metadata(Some(topic), TIMEOUT).map_err(|e| {
        kafka_error(
            &format!("reading topic {topic:?} from {}", kafka.brokers),
            e,
        )
    })?;
    let count = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map_or(0, |t| t.partitions().len());
    if count == 0 {
        return Err(Error::stage(
            "kafka",
            format!(
                "topic {topic:?} does not exist on {} (or has no partitions)",
                kafka.brokers
            ),
        ));
    }
    Ok(count)
}

/// Splits `kafka://host:port[,host:port]/topic` into brokers and topic.
pub fn parse_kafka_url(url: &str) -> Result<(String, String)> {
    let bad = |why: &str| {
        Error::stage(
            "kafka address",
            format!("{url:?} {why}; expected kafka://HOST:PORT/TOPIC"),
        )
    };
    let rest = url
        .strip_prefix("kafka://")
        .ok_or_else(|| bad("does not start with kafka://"))?;
    let (brokers, topic) = rest.split_once('/').ok_or_else(|| bad("names no topic"))?;
    if brokers.is_empty() || topic.is_empty() || topic.contains('/') {
        return Err(bad("needs one host:port list and one topic"));
    }
    Ok((brokers.to_string(), topic.to_string()))
}

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

/// What one poll gave.
#[derive(Debug, Default)]
pub struct Polled {
    /// Epochs now closed, in order, with their rows.
    pub closed: Vec<(u64, Vec<Row>)>,
    /// Malformed and late records.
    pub dead: Vec<DeadLetter>,
    /// Messages read.
    pub messages: u64,
    /// Payload bytes read.
    pub bytes: u64,
}

/// One partition's progress.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct Progress {
    /// The next offset to read (unknown until a message is read when the group has committed
    /// nothing: reading starts at the beginning).
    next: Option<i64>,
    /// Whether the partition has been read to its end.
    at_end: bool,
    /// Since when it has been at its end.
    #[serde(skip)]
    end_since: Option<Instant>,
    /// The newest event time read, µs.
    newest: Option<i64>,
}

/// A source's state at a cut: each partition's progress, the rows read but not yet sent into
/// the dataflow, and the epoch below which epochs were closed.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SourceState {
    partitions: BTreeMap<i32, Progress>,
    open: BTreeMap<u64, Vec<Row>>,
    closed_below: Option<u64>,
}

/// [`SourceState`]'s encoding, borrowed.
#[derive(Serialize)]
struct SourceStateRef<'a> {
    partitions: &'a BTreeMap<i32, Progress>,
    open: OpenRef<'a>,
    closed_below: Option<u64>,
}

/// The open epochs and the closed ones not yet sent, encoded as one map.
struct OpenRef<'a> {
    open: &'a BTreeMap<u64, Vec<Row>>,
    unsent: &'a [(u64, Vec<Row>)],
}

impl Serialize for OpenRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_map(
            self.unsent
                .iter()
                .map(|(e, r)| (e, r))
                .chain(self.open.iter()),
        )
    }
}

/// One worker's share of a topic, cut into epochs by event time.
pub struct KafkaSource {
    consumer: KafkaConsumer,
    reader: Arc<Reader>,
    settings: SourceSettings,
    partitions: BTreeMap<i32, Progress>,
    /// Rows of epochs not yet closed.
    open: BTreeMap<u64, Vec<Row>>,
    /// Epochs below this have been closed.
    closed_below: Option<u64>,
}

const TIMEOUT: Duration = Duration::from_secs(10);

/// The epoch of event time `ts` (µs) with epochs `period_us` long (before 1970: epoch 0).
fn epoch_of(ts: i64, period_us: i64) -> u64 {
    u64::try_from(ts.div_euclid(period_us.max(1))).unwrap_or(0)
}

fn kafka_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::stage("kafka", format!("{what}: {e}"))
}

impl KafkaSource {
    /// Connects and assigns this worker's partitions (`p % workers == worker`), from `resume`
    /// (a checkpoint's state and its cut) or else the group's committed offsets. An unreachable
    /// broker or a missing topic is an error naming them.
    pub fn new(
        settings: SourceSettings,
        reader: Arc<Reader>,
        worker: usize,
        workers: usize,
        resume: Option<(SourceState, u64)>,
    ) -> Result<Self> {
        let consumer = settings.kafka.consumer(&settings.group)?;
        let count = partition_count(&consumer, &settings.kafka, &settings.topic)?;
        let mine: Vec<i32> = (0..count as i32)
            .filter(|p| *p as usize % workers.max(1) == worker)
            .collect();
        let mut wanted = TopicPartitionList::new();
        for &p in &mine {
            wanted.add_partition(&settings.topic, p);
        }
        let committed = consumer
            .committed_offsets(wanted, TIMEOUT)
            .map_err(|e| kafka_error("reading committed offsets", e))?;
        let (state, cut) = resume.unwrap_or_default();
        let mut assign = TopicPartitionList::new();
        let mut partitions = BTreeMap::new();
        for &p in &mine {
            let saved = state.partitions.get(&p).copied().unwrap_or_default();
            let next = match committed
                .find_partition(&settings.topic, p)
                .map(|e| e.offset())
            {
                _ if saved.next.is_some() => saved.next,
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
            partitions.insert(
                p,
                Progress {
                    next,
                    newest: saved.newest,
                    at_end: false,
                    end_since: None,
                },
            );
        }
        consumer
            .assign(&assign)
            .map_err(|e| kafka_error("assigning partitions", e))?;
        tracing::debug!(topic = %settings.topic, worker, partitions = ?partitions, "kafka source assigned");
        Ok(Self {
            consumer,
            reader,
            settings,
            partitions,
            open: state.open,
            // Nothing before the cut can be sent any more.
            closed_below: match (state.closed_below, cut) {
                (c, 0) => c,
                (c, cut) => Some(c.map_or(cut, |c| c.max(cut))),
            },
        })
    }

    /// The state for a checkpoint, with `unsent`: epochs closed but not yet sent.
    pub fn state(&self, unsent: &[(u64, Vec<Row>)]) -> Result<Vec<u8>> {
        crate::checkpoint::encode(&SourceStateRef {
            partitions: &self.partitions,
            open: OpenRef {
                open: &self.open,
                unsent,
            },
            closed_below: self.closed_below,
        })
    }

    /// Whether this worker has partitions to read.
    pub fn has_partitions(&self) -> bool {
        !self.partitions.is_empty()
    }

    /// Whether a bounded read has read every partition to its end.
    pub fn at_end(&self) -> bool {
        self.settings.stop_at_end && self.partitions.values().all(|p| p.at_end)
    }

    /// The epoch of an event time.
    pub fn epoch_of(&self, ts: i64) -> u64 {
        epoch_of(ts, self.settings.period_us)
    }

    /// Reads what is there (up to `max` messages, waiting at most the poll interval for the
    /// first), places the records and returns the epochs that closed. Records dated after
    /// `until_us` (the wall clock plus `[events] max_ahead`) are outliers, dead-lettered
    /// without moving the watermark.
    pub fn poll(&mut self, max: usize, until_us: i64) -> Result<Polled> {
        let mut polled = Polled::default();
        // Per partition: the payloads read, one line each, and their offsets.
        let mut batches: BTreeMap<i32, (Vec<u8>, Vec<i64>)> = BTreeMap::new();
        let mut wait = self.settings.poll;
        while (polled.messages as usize) < max && !self.at_end() {
            let Some(message) = self.consumer.poll(wait) else {
                break;
            };
            wait = Duration::ZERO;
            let m = match message {
                Ok(m) => m,
                Err(KafkaError::PartitionEOF(p)) => {
                    if let Some(progress) = self.partitions.get_mut(&p) {
                        if !progress.at_end {
                            progress.end_since = Some(Instant::now());
                        }
                        progress.at_end = true;
                    }
                    continue;
                }
                Err(e) => return Err(kafka_error("reading messages", e)),
            };
            let (p, offset) = (m.partition(), m.offset());
            if let Some(progress) = self.partitions.get_mut(&p) {
                progress.next = Some(progress.next.map_or(offset + 1, |n| n.max(offset + 1)));
                progress.at_end = false;
                progress.end_since = None;
            }
            polled.messages += 1;
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
        tracing::trace!(messages = polled.messages, "kafka poll");
        for (p, (lines, offsets)) in batches {
            self.place(p, &lines, &offsets, until_us, &mut polled)?;
        }
        polled.closed = self.close(false);
        Ok(polled)
    }

    /// Parses one partition's lines and places their rows in epochs.
    fn place(
        &mut self,
        p: i32,
        lines: &[u8],
        offsets: &[i64],
        until_us: i64,
        polled: &mut Polled,
    ) -> Result<()> {
        let label = format!("kafka:{}/{p}", self.settings.topic);
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
                &self.settings.topic,
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
        let (lateness, period) = (self.settings.lateness_us, self.settings.period_us);
        let mut outliers = 0;
        for (mut row, offset) in rows.into_iter().zip(good) {
            if row.ts > until_us {
                outliers += 1;
                polled.dead.push(DeadLetter::message(
                    &self.settings.topic,
                    p,
                    offset,
                    format!(
                        "event time {} is after {}, the wall clock plus [events] max_ahead: an outlier (a forged record or a skewed clock?)",
                        crate::file_to_batch::time_text(row.ts),
                        crate::file_to_batch::time_text(until_us)
                    ),
                    serde_json::to_string(&row).unwrap_or_default(),
                ));
                continue;
            }
            let epoch = epoch_of(row.ts, period);
            let progress = self.partitions.entry(p).or_default();
            let closed_here = progress
                .newest
                .map(|n| epoch_of(n.saturating_sub(lateness), period))
                .unwrap_or(0);
            progress.newest = Some(progress.newest.map_or(row.ts, |n| n.max(row.ts)));
            row.origin = Origin {
                epoch,
                file: u32::try_from(p).unwrap_or(0),
                record: u64::try_from(offset).unwrap_or(0),
            };
            if epoch < closed_here || self.closed_below.is_some_and(|c| epoch < c) {
                polled.dead.push(DeadLetter::row(
                    "kafka_source",
                    row.user.as_deref(),
                    &row,
                    format!(
                        "late record: partition {p} offset {offset} is more than the allowed lateness behind the partition's newest event, and its epoch has closed"
                    ),
                ));
                continue;
            }
            self.open.entry(epoch).or_default().push(row);
        }
        if outliers > 0 {
            tracing::warn!(
                topic = %self.settings.topic,
                partition = p,
                records = outliers,
                "records dated ahead of the wall clock (plus [events] max_ahead) dead-lettered as outliers"
            );
        }
        Ok(())
    }

    /// The epoch below which every partition's watermark has passed: the oldest newest event
    /// time, less the lateness, over the partitions still being read (a partition read to its
    /// end does not hold the others back; when all are, over those with data). `None` while a
    /// partition still being read has given nothing yet.
    fn watermark(&self) -> Option<u64> {
        let idle = |p: &Progress| {
            p.at_end
                && (self.settings.stop_at_end
                    || p.end_since
                        .is_some_and(|t| t.elapsed() >= self.settings.idle_after))
        };
        let reading: Vec<&Progress> = self.partitions.values().filter(|p| !idle(p)).collect();
        let newest: Option<Vec<i64>> = if reading.is_empty() {
            Some(self.partitions.values().filter_map(|p| p.newest).collect())
        } else {
            reading.iter().map(|p| p.newest).collect()
        };
        let oldest = newest?.into_iter().min()?;
        Some(self.epoch_of(oldest.saturating_sub(self.settings.lateness_us)))
    }

    /// Closes the epochs the watermark has passed (all of them when `all`).
    fn close(&mut self, all: bool) -> Vec<(u64, Vec<Row>)> {
        let watermark = self.watermark();
        let mut out = Vec::new();
        while let Some((&epoch, _)) = self.open.first_key_value() {
            if !all && watermark.is_none_or(|w| epoch >= w) {
                break;
            }
            if let Some((e, rows)) = self.open.pop_first() {
                out.push((e, rows));
            }
        }
        if let Some(w) = watermark {
            self.closed_below = Some(self.closed_below.map_or(w, |c| c.max(w)));
        }
        out
    }

    /// Closes every open epoch (end of a bounded stream, or shutdown).
    pub fn drain(&mut self) -> Vec<(u64, Vec<Row>)> {
        self.close(true)
    }

    /// Commits the offsets read so far for the group (call once their rows are written).
    pub fn commit(&self) -> Result<()> {
        self.commit_progress(&self.partitions)
    }

    /// Commits the offsets a checkpoint's state had read for the group.
    pub fn commit_state(&self, state: &SourceState) -> Result<()> {
        self.commit_progress(&state.partitions)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_urls_name_brokers_and_one_topic() {
        assert_eq!(
            parse_kafka_url("kafka://127.0.0.1:9092/logs").unwrap(),
            ("127.0.0.1:9092".to_string(), "logs".to_string())
        );
        assert_eq!(parse_kafka_url("kafka://a:1,b:2/t").unwrap().0, "a:1,b:2");
        for bad in [
            "127.0.0.1:9092/logs",
            "kafka://host:1",
            "kafka:///t",
            "kafka://h:1/a/b",
        ] {
            let e = parse_kafka_url(bad).unwrap_err().to_string();
            assert!(e.contains("kafka://HOST:PORT/TOPIC"), "{bad}: {e}");
        }
    }
}
