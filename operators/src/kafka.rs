//! Kafka connections shared by the Kafka source, the detections sink and the control topic:
//! settings (brokers and librdkafka pass-through options, `kafka://HOST:PORT/TOPIC` URLs),
//! consumers whose librdkafka logs reach `tracing` at their level, and the partition count of
//! a topic (an unreachable broker or a missing topic is an error naming them). State: none.

use std::time::Duration;

use dfp_engine::{Error, Result};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;

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
    /// The cluster and the topic of `url` (`kafka://HOST:PORT/TOPIC`), with the librdkafka
    /// `options`.
    pub fn from_url(
        url: &str,
        options: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(KafkaSettings, String)> {
        let (brokers, topic) = parse_kafka_url(url)?;
        let options = options.into_iter().collect();
        Ok((KafkaSettings { brokers, options }, topic))
    }

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

/// Assigns `consumer` every partition of `topic`, each from `next` (else the group's committed
/// offset, else the beginning); returns the number of partitions.
pub fn assign_all(
    consumer: &KafkaConsumer,
    kafka: &KafkaSettings,
    topic: &str,
    next: &std::collections::BTreeMap<i32, i64>,
) -> Result<usize> {
    use rdkafka::{Offset, TopicPartitionList};
    let count = partition_count(consumer, kafka, topic)?;
    let mut wanted = TopicPartitionList::new();
    for p in 0..count as i32 {
        wanted.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(wanted, TIMEOUT)
        .map_err(|e| kafka_error("reading committed offsets", e))?;
    let mut assign = TopicPartitionList::new();
    for p in 0..count as i32 {
        let from = match (
            next.get(&p),
            committed.find_partition(topic, p).map(|e| e.offset()),
        ) {
            (Some(&o), _) => Offset::Offset(o),
            (None, Some(Offset::Offset(o))) => Offset::Offset(o),
            _ => Offset::Beginning,
        };
        assign
            .add_partition_offset(topic, p, from)
            .map_err(|e| kafka_error("assigning partitions", e))?;
    }
    consumer
        .assign(&assign)
        .map_err(|e| kafka_error("assigning partitions", e))?;
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

/// How long a metadata or offsets request waits.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(10);

/// A Kafka failure as a stage error saying what was being done.
pub(crate) fn kafka_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::stage("kafka", format!("{what}: {e}"))
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
