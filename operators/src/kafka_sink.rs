//! Kafka sink (Morpheus' `WriteToKafkaStage`): produces each detection, as the JSON line of
//! `dfp_detections_{source}.jsonl`, to a topic, beside the file sinks; `dfp replay` produces
//! log records through it too.
//!
//! The sink stage calls [`KafkaSink::send`] once per epoch, after the epoch's lines are in the
//! files, in the files' order; it returns once the broker has acknowledged every message
//! (`acks=all`), so an epoch counts as written only when it is in the topic too. State: the
//! producer.

use std::time::Duration;

use dfp_engine::{Error, Result};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::kafka_source::KafkaSettings;

/// A producer bound to the detections topic.
pub struct KafkaSink {
    producer: BaseProducer,
    topic: String,
}

const FLUSH: Duration = Duration::from_secs(30);

impl KafkaSink {
    /// A producer for `topic` on the cluster of `settings`.
    pub fn new(settings: &KafkaSettings, topic: &str) -> Result<Self> {
        let producer: BaseProducer = settings
            .client_config()
            .set("acks", "all")
            .set("message.timeout.ms", "30000")
            .create()
            .map_err(|e| Error::stage("kafka", format!("creating the producer: {e}")))?;
        Ok(Self {
            producer,
            topic: topic.to_string(),
        })
    }

    /// Produces `lines` in order and waits until the broker has them all.
    pub fn send<'a>(&self, lines: impl IntoIterator<Item = &'a str>) -> Result<()> {
        for line in lines {
            self.produce(None, line)?;
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

    /// Waits until the broker has acknowledged everything queued.
    pub fn flush(&self) -> Result<()> {
        self.producer.flush(FLUSH).map_err(|e| {
            Error::stage(
                "kafka",
                format!(
                    "messages not acknowledged by the broker ({:?}): {e}",
                    self.topic
                ),
            )
        })
    }
}
