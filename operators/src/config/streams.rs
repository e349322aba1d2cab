//! The run config's tables for streams and outputs: `[source]` (what a stream reads and how
//! its epochs are cut), `[checkpoint]` (where and how often a stream checkpoints) and
//! `[[sinks]]` (where detections go beside the output files). Durations are parsed when the
//! file is read; every other problem is reported with its dotted path by
//! [`super::RunConfig::validate`]. `dfp run`'s flags (`--stream`, `--watch`, `--epoch`,
//! `--state-dir`, `--detections-to`, ...) override these keys.

use std::collections::BTreeMap;
use std::path::PathBuf;

use dfp_engine::config::Problems;
use dfp_engine::period::Span;
use serde::{Deserialize, Serialize};

/// What a stream reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// Raw log records, one JSON record per message, from the topic of `url`.
    Kafka,
    /// Log files appearing in the directory `dir`.
    Watch,
    /// Morpheus' control messages, one per message, from the topic of `url`.
    ControlTopic,
}

/// `[source]`: a stream's input. Without `kind` (and without `--stream`, `--watch` or
/// `--control-topic`), `dfp run` runs the control message given with `--control-messages`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    /// What is read.
    pub kind: Option<SourceKind>,
    /// `kafka://HOST:PORT/TOPIC` (kinds `kafka` and `control_topic`).
    pub url: Option<String>,
    /// The watched directory (kind `watch`).
    pub dir: Option<PathBuf>,
    /// The Kafka consumer group (default `dfp-{source}`, `dfp-{source}-control` for a control
    /// topic): where reading starts without a checkpoint, and what is committed.
    pub group: Option<String>,
    /// Event time per epoch: windows, training and outputs advance one epoch at a time.
    pub epoch: Span,
    /// How far behind the newest record of its partition (or file) a record may come and
    /// still be placed; later ones are dead-lettered.
    pub lateness: Span,
    /// How long one poll waits (Kafka: 100ms; a watched directory is listed every 1s).
    pub poll: Option<Span>,
    /// How long a partition at its end (a directory without a new file) waits before the
    /// others' epochs stop waiting for it.
    pub idle_after: Span,
    /// Read what is there and stop (a replayed, bounded stream).
    pub until_end: bool,
    /// Commit a control topic's offsets to the group as each message is done (Morpheus'
    /// `disable_commit` is `commit = false`).
    pub commit: bool,
    /// librdkafka settings passed through (`security.protocol`, `sasl.mechanisms`, ...),
    /// for the source and every Kafka sink.
    pub options: BTreeMap<String, String>,
}

impl Default for SourceConfig {
    fn default() -> Self {
        let span = |t: &str| {
            t.parse()
                .unwrap_or_else(|_| unreachable!("a valid duration"))
        };
        Self {
            kind: None,
            url: None,
            dir: None,
            group: None,
            epoch: span("1d"),
            lateness: span("0s"),
            poll: None,
            idle_after: span("1s"),
            until_end: false,
            commit: true,
            options: BTreeMap::new(),
        }
    }
}

/// `[checkpoint]`: a stream's state, kept so that a crash or a stop loses and doubles nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Checkpoint (false: a crash may double or lose output, as in Morpheus).
    pub enabled: bool,
    /// The state directory (default: the output directory's `.dfp-state`).
    pub dir: Option<PathBuf>,
    /// Event time from one cut to the next, a whole number of epochs (default: one epoch).
    pub every: Option<Span>,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: None,
            every: None,
        }
    }
}

/// `[[sinks]]`: where detections go beside the output files, each as a JSON line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkConfig {
    /// A Kafka topic (exactly once in a checkpointed stream: a restart skips what it finds
    /// already there).
    Kafka {
        /// `kafka://HOST:PORT/TOPIC`.
        url: String,
        /// librdkafka settings, over `[source] options`.
        #[serde(default)]
        options: BTreeMap<String, String>,
    },
    /// Standard output, for piping into other tools (at least once: a restarted stream writes
    /// again the epochs after its cut). A struct variant, so that a key it does not take is
    /// refused.
    Stdout {},
}

impl SourceConfig {
    /// Every problem, under `path`.
    pub(super) fn check(&self, path: &str, p: &mut Problems) {
        let key = |k: &str| dfp_engine::config::join(path, k);
        if self.epoch.us() <= 0 {
            p.push(key("epoch"), "must be longer than 0");
        }
        match self.kind {
            Some(SourceKind::Kafka | SourceKind::ControlTopic) => {
                match &self.url {
                    Some(url) => {
                        if let Err(e) = crate::kafka::parse_kafka_url(url) {
                            p.push(key("url"), e.to_string());
                        }
                    }
                    None => p.push(key("url"), "is needed: kafka://HOST:PORT/TOPIC"),
                }
                if self.dir.is_some() {
                    p.push(key("dir"), "is for kind = \"watch\"");
                }
            }
            Some(SourceKind::Watch) => {
                if self.dir.is_none() {
                    p.push(key("dir"), "is needed: the directory to watch");
                }
                if self.url.is_some() {
                    p.push(key("url"), "is for a Kafka kind");
                }
            }
            None => {}
        }
    }
}

impl CheckpointConfig {
    /// Every problem, under `path`; `epoch` is the stream's.
    pub(super) fn check(&self, path: &str, epoch: &Span, p: &mut Problems) {
        if let Some(every) = &self.every
            && epoch.us() > 0
            && (every.us() < epoch.us() || every.us() % epoch.us() != 0)
        {
            p.push(
                dfp_engine::config::join(path, "every"),
                format!("{every} is not a whole number of epochs (source.epoch is {epoch})",),
            );
        }
    }

    /// Epochs from one cut to the next.
    pub fn every_epochs(&self, epoch: &Span) -> u64 {
        match &self.every {
            Some(every) if epoch.us() > 0 => {
                u64::try_from(every.us() / epoch.us()).unwrap_or(1).max(1)
            }
            _ => 1,
        }
    }
}

impl SinkConfig {
    /// Every problem, under `path`.
    pub(super) fn check(&self, path: &str, p: &mut Problems) {
        if let SinkConfig::Kafka { url, .. } = self
            && let Err(e) = crate::kafka::parse_kafka_url(url)
        {
            p.push(dfp_engine::config::join(path, "url"), e.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::RunConfig;
    use super::*;

    /// The example in configs/README.md.
    fn readme_example() -> String {
        let readme = include_str!("../../../configs/README.md");
        let section = &readme[readme.find("## Streams").unwrap()..];
        let start = section.find("```toml\n").unwrap() + "```toml\n".len();
        section[start..start + section[start..].find("```").unwrap()].to_string()
    }

    #[test]
    fn the_documented_example_reads_as_documented() {
        let c = RunConfig::from_toml(&readme_example(), "configs/README.md").unwrap();
        assert_eq!(c.source.kind, Some(SourceKind::Watch));
        assert_eq!(c.source.dir, Some(PathBuf::from("/var/log/azure")));
        assert_eq!(c.source.epoch.us(), 86_400_000_000);
        assert_eq!(c.checkpoint.every_epochs(&c.source.epoch), 1);
        assert!(c.checkpoint.enabled);
        assert_eq!(c.sinks.len(), 2);
        assert_eq!(c.sinks[0], SinkConfig::Stdout {});
        assert!(
            matches!(&c.sinks[1], SinkConfig::Kafka { url, .. } if url.ends_with("/azure-detections"))
        );
    }

    #[test]
    fn defaults_are_a_day_no_lateness_and_checkpoints_on() {
        let c = RunConfig::from_toml("", "cfg.toml").unwrap();
        assert_eq!(c.source.kind, None);
        assert_eq!(c.source.epoch.text(), "1d");
        assert_eq!(c.source.lateness.us(), 0);
        assert!(c.checkpoint.enabled && c.source.commit);
        assert!(c.sinks.is_empty());
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let e = RunConfig::from_toml(
            "[source]\nkind = \"kafka\"\ndir = \"x\"\nepoch = \"1h\"\n[checkpoint]\nevery = \"90m\"\n\
             [[sinks]]\nkind = \"kafka\"\nurl = \"http://x/y\"\n",
            "cfg.toml",
        )
        .unwrap_err()
        .to_string();
        for key in [
            "source.url",
            "source.dir",
            "checkpoint.every",
            "sinks[0].url",
        ] {
            assert!(e.contains(key), "{key} missing from {e}");
        }
        let e = RunConfig::from_toml("[source]\nkind = \"watch\"\n", "cfg.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("source.dir"), "{e}");
    }

    #[test]
    fn durations_and_kinds_are_checked_when_read() {
        for (text, word) in [
            ("[source]\nepoch = \"soon\"\n", "soon"),
            ("[source]\nlateness = \"-1h\"\n", "-1h"),
            ("[source]\nkind = \"ftp\"\n", "ftp"),
            ("[[sinks]]\nkind = \"stdout\"\nurl = \"x\"\n", "url"),
            ("[checkpoint]\nbogus = 1\n", "bogus"),
        ] {
            let e = RunConfig::from_toml(text, "cfg.toml")
                .unwrap_err()
                .to_string();
            assert!(e.contains(word) && e.contains("cfg.toml"), "{text}: {e}");
        }
    }
}
