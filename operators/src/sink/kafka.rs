//! Kafka sink (Morpheus' `WriteToKafkaStage`): produces each detection, as the JSON line of
//! `dfp_detections_{source}.jsonl`, to a topic, beside the file sinks; `dfp replay` produces
//! log records through it too.
//!
//! The sink stage writes each epoch to it after the files, in the files' order
//! ([`Sink::write_epoch`]); it returns once the broker has acknowledged every message
//! (`acks=all`), so an epoch counts as written only when it is in the topic too.
//!
//! Idempotence across crashes: in a checkpointed run each message is keyed
//! `{run}:{epoch}:{n}` (the run's name, the epoch, the line's place in the epoch's sorted
//! lines). On a restart from a cut, [`KafkaSink::resume`] reads the topic and remembers the
//! keys of this run at or after the cut, which a crashed process may have produced; those
//! messages are not produced again. This works with any broker (tansu included), where a
//! transactional producer would need the broker's transactions. State: the producer and the
//! keys to skip.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dfp_engine::{Error, Result};
use rdkafka::ClientContext;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::DeliveryResult;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::{Offset, TopicPartitionList};

use super::Sink;
use crate::kafka::{KafkaSettings, partition_count};
use crate::serialize::{Line, OutKind};

/// Remembers the first message the broker did not take, so that [`KafkaSink::flush`] can say
/// so instead of losing it silently.
#[derive(Default)]
struct Deliveries {
    failed: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, m)) = result
            && let Ok(mut failed) = self.failed.lock()
            && failed.is_none()
        {
            *failed = Some(format!(
                "a message to partition {} was not delivered: {e}",
                m.partition()
            ));
        }
    }
}

/// A producer bound to the detections topic.
pub struct KafkaSink {
    producer: BaseProducer<Deliveries>,
    topic: String,
    /// The run's name, keying each message, in a checkpointed run.
    run: Option<String>,
    /// Keys already in the topic, produced before a crash.
    written: HashSet<String>,
}

const FLUSH: Duration = Duration::from_secs(30);

impl KafkaSink {
    /// A producer for `topic` on the cluster of `settings`.
    pub fn new(settings: &KafkaSettings, topic: &str) -> Result<Self> {
        let producer: BaseProducer<Deliveries> = settings
            .client_config()
            .set("acks", "all")
            .set("message.timeout.ms", "30000")
            .create_with_context(Deliveries::default())
            .map_err(|e| Error::stage("kafka", format!("creating the producer: {e}")))?;
        Ok(Self {
            producer,
            topic: topic.to_string(),
            run: None,
            written: HashSet::new(),
        })
    }

    /// Keys every message with `run`; with `from` (a restart at that cut), first reads the
    /// topic for this run's messages of epochs from `from` on, so they are not produced twice.
    pub fn resume(
        mut self,
        settings: &KafkaSettings,
        run: &str,
        from: Option<u64>,
    ) -> Result<Self> {
        if let Some(cut) = from {
            self.written = keys_in_topic(settings, &self.topic, run, cut)?;
            tracing::info!(topic = %self.topic, found = self.written.len(), "detections already in the topic");
        }
        self.run = Some(run.to_string());
        Ok(self)
    }

    /// Produces one epoch's `lines` in order (skipping those already in the topic) and waits
    /// until the broker has them all.
    pub fn send<'a>(&mut self, epoch: u64, lines: impl IntoIterator<Item = &'a str>) -> Result<()> {
        for (n, line) in lines.into_iter().enumerate() {
            match &self.run {
                Some(run) => {
                    let key = format!("{run}:{epoch}:{n}");
                    if !self.written.remove(&key) {
                        self.produce(Some(&key), line)?;
                    }
                }
                None => self.produce(None, line)?,
            }
        }
        self.flush()
    }

    /// Queues one message (waiting while the local queue is full).
    pub fn produce(&self, key: Option<&str>, payload: &str) -> Result<()> {
        let mut record = BaseRecord::<str, str>::to(&self.topic).payload(payload);
        if let Some(k) = key {
            record = record.key(k);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((e, back))
                    if matches!(
                        e.rdkafka_error_code(),
                        Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                    ) =>
                {
                    // Let deliveries drain, then retry.
                    self.producer.poll(Duration::from_millis(50));
                    record = back;
                }
                Err((e, _)) => {
                    return Err(Error::stage(
                        "kafka",
                        format!("producing to {:?}: {e}", self.topic),
                    ));
                }
            }
        }
    }

    /// Waits until the broker has acknowledged everything queued. (rdkafka's own `flush`
    /// waits in steps of 100 ms, because its `poll` runs to its deadline: that was a fixed
    /// 100 ms per epoch. Polling 1 ms at a time returns within a millisecond of the last
    /// acknowledgement.)
    pub fn flush(&self) -> Result<()> {
        let started = Instant::now();
        while self.producer.in_flight_count() > 0 {
            if started.elapsed() > FLUSH {
                return Err(Error::stage(
                    "kafka",
                    format!(
                        "{} messages not acknowledged by the broker within {FLUSH:?} ({:?})",
                        self.producer.in_flight_count(),
                        self.topic
                    ),
                ));
            }
            self.producer.poll(Duration::from_millis(1));
        }
        let failed = self
            .producer
            .context()
            .failed
            .lock()
            .ok()
            .and_then(|mut f| f.take());
        match failed {
            Some(why) => Err(Error::stage(
                "kafka",
                format!("producing to {:?}: {why}", self.topic),
            )),
            None => Ok(()),
        }
    }
}

impl Sink for KafkaSink {
    fn describe(&self) -> String {
        format!("the topic {:?}", self.topic)
    }

    fn write_epoch(&mut self, epoch: u64, lines: &[Line]) -> Result<()> {
        self.send(
            epoch,
            lines
                .iter()
                .filter(|l| l.kind == OutKind::DetectionsJson)
                .map(|l| l.text.as_str()),
        )
    }

    /// Nothing: its messages are keyed, and a restart skips those already in the topic.
    fn state(&mut self) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }
}

/// The keys of `run`'s messages in `topic` for epochs from `from` on, read to the end of every
/// partition.
fn keys_in_topic(
    settings: &KafkaSettings,
    topic: &str,
    run: &str,
    from: u64,
) -> Result<HashSet<String>> {
    let fail = |what: &str, e: KafkaError| {
        Error::stage("kafka", format!("reading {topic:?} back ({what}): {e}"))
    };
    let consumer = settings.consumer(&format!("dfp-sink-{run}"))?;
    let partitions = partition_count(&consumer, settings, topic)?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .map_err(|e| fail("assigning", e))?;
    }
    consumer.assign(&tpl).map_err(|e| fail("assigning", e))?;
    let prefix = format!("{run}:");
    let mut keys = HashSet::new();
    let mut at_end = HashSet::new();
    let started = Instant::now();
    while at_end.len() < partitions {
        if started.elapsed() > Duration::from_secs(120) {
            return Err(Error::stage(
                "kafka",
                format!("reading {topic:?} back: not at its end after 120 s"),
            ));
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => return Err(fail("reading", e)),
            Some(Ok(m)) => {
                let key = m.key().and_then(|k| std::str::from_utf8(k).ok());
                let epoch = key
                    .and_then(|k| k.strip_prefix(&prefix))
                    .and_then(|rest| rest.split(':').next())
                    .and_then(|e| e.parse::<u64>().ok());
                if let (Some(k), Some(e)) = (key, epoch)
                    && e >= from
                {
                    keys.insert(k.to_string());
                }
            }
        }
    }
    Ok(keys)
}
