//! Control messages from a Kafka topic (Morpheus' streaming DFP pipeline, whose
//! `KafkaSourceStage` reads control messages with its bootstrap servers, input topic, group id,
//! poll interval and disable-commit options): each message is run as `dfp run
//! --control-messages` runs a file (its load tasks, epochs, training and inference), one
//! message after the other, into the same outputs.
//!
//! Exactly once, message by message: after a message's outputs are written, a state file
//! (`control.state` in the state directory, atomic and checksummed) records the offsets past
//! it, the output files' lengths and the model versions scoring starts from; then the offset
//! is committed to the group (unless commits are off). A process that dies inside a message
//! restarts at that message: the outputs are cut back to the recorded lengths, the models the
//! dead process registered are found again instead of doubled, and scoring starts from the
//! recorded versions, so the message's output is written once. A message that is not a valid
//! control message, or names no file, is dead-lettered with its partition, offset and every
//! problem found, and the next one runs.
//!
//! State: the consumer, each partition's next offset, the versions.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dfp_engine::control::{ControlMessage, FileScope};
use dfp_engine::lifecycle::Serving;
use dfp_engine::{Error, Result};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use super::worker::{Feed, execute_once, other_sinks};
use super::{RunOptions, plan};
use crate::checkpoint::{self, read_state, write_atomic};
use crate::dead_letter::DeadLetter;
use crate::kafka::{KafkaConsumer, KafkaSettings, assign_all, kafka_error};
use crate::metrics::Stats;
use crate::serialize::dead_letter_line;
use crate::sink::SinkSet;
use crate::sink::files::{OutputFiles, SinkState};

/// Where control messages come from and how they are consumed.
#[derive(Debug, Clone)]
pub struct ControlTopicInput {
    /// The cluster.
    pub kafka: KafkaSettings,
    /// The topic of control messages.
    pub topic: String,
    /// The consumer group whose committed offsets are the starting point.
    pub group: String,
    /// Longest wait for a message in one poll (Morpheus' `poll_interval`).
    pub poll: Duration,
    /// Commit each message's offset to the group once it is done (Morpheus'
    /// `disable_commit` turns this off).
    pub commit: bool,
    /// Where the messages' relative load globs resolve.
    pub files_root: PathBuf,
    /// The directories messages may read under (empty: only `files_root`): whoever can
    /// write to the topic cannot make dfp read other files.
    pub allowed_roots: Vec<PathBuf>,
    /// Stop once every partition has been read to its end.
    pub stop_at_end: bool,
    /// Set (by a signal handler) to stop after the message being run.
    pub stop: Arc<AtomicBool>,
    /// Record progress here, message by message, and resume from it.
    pub state_dir: Option<PathBuf>,
    /// Unknown keys in a message are problems (it is dead-lettered), not warnings.
    pub strict: bool,
}

/// Progress after the last message done.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ControlState {
    /// Per partition, the next offset to read.
    next: BTreeMap<i32, i64>,
    /// The output files then.
    sinks: SinkState,
    /// Every model's champion and challenger then: what the next message scores from.
    versions: Serving,
}

/// The consumer, assigned every partition of `input.topic` from `next` (else the group's
/// committed offsets, else the beginning).
fn consumer(
    input: &ControlTopicInput,
    next: &BTreeMap<i32, i64>,
) -> Result<(KafkaConsumer, usize)> {
    let consumer = input.kafka.consumer(&input.group)?;
    let count = assign_all(&consumer, &input.kafka, &input.topic, next)?;
    Ok((consumer, count))
}

/// Runs every control message of the topic, in order, until stopped (or, bounded, at the
/// topic's end); returns the counters summed over the messages and the epochs run.
pub(crate) fn run(opts: &RunOptions, input: &ControlTopicInput) -> Result<(Stats, usize)> {
    let registry = opts.open_registry()?;
    let source = &opts.schema.name;
    let state_path = input.state_dir.as_ref().map(|d| d.join("control.state"));
    if let Some(dir) = &input.state_dir {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "creating state directory", e))?;
    }
    let saved: Option<ControlState> = match &state_path {
        Some(p) if p.exists() => Some(checkpoint::decode(&read_state(p)?, p)?),
        _ => None,
    };
    let mut state = match saved {
        Some(s) => {
            tracing::info!(next = ?s.next, "resuming the control topic after the last message done");
            OutputFiles::resume(&opts.output, source, &s.sinks)?;
            s
        }
        None => {
            let mut files =
                OutputFiles::create(&opts.output, source, &opts.columns()?, &opts.out_kinds())?;
            ControlState {
                next: BTreeMap::new(),
                sinks: files.lengths()?,
                versions: registry.serving_all()?,
            }
        }
    };
    let save = |state: &ControlState| -> Result<()> {
        match &state_path {
            Some(p) => write_atomic(p, &checkpoint::frame(0, 0, &checkpoint::encode(state)?)),
            None => Ok(()),
        }
    };
    save(&state)?;
    let (consumer, partitions) = consumer(input, &state.next)?;
    let roots = if input.allowed_roots.is_empty() {
        vec![input.files_root.clone()]
    } else {
        input.allowed_roots.clone()
    };
    let scope = FileScope::confined(&input.files_root, roots);
    let mut at_end = std::collections::HashSet::new();
    let mut stats = Stats::default();
    let mut epochs = 0;
    loop {
        let done = input.stop_at_end && at_end.len() == partitions;
        if done || input.stop.load(Ordering::Relaxed) {
            break;
        }

        let m = match consumer.poll(input.poll) {
            None => continue,
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
                continue;
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "control topic");
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
            Some(Ok(m)) => m,
        };
        let (p, offset) = (m.partition(), m.offset());
        at_end.remove(&p);
        let text = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
        let label = format!("kafka:{}/{p}@{offset}", input.topic);
        let planned = ControlMessage::parse_with(&text, &label, input.strict).and_then(|msg| {
            msg.warn_ignored(&label);
            let plan = plan(&msg, &scope)?;
            if plan.files() == 0 {
                return Err(Error::stage(
                    "control topic",
                    format!(
                        "{label}: its load tasks match no file ({})",
                        plan.unmatched.join(", ")
                    ),
                ));
            }
            Ok(plan)
        });
        let mut files = OutputFiles::resume(&opts.output, source, &state.sinks)?;
        match planned {
            Ok(plan) => {
                tracing::info!(message = %label, epochs = plan.epochs.len(), files = plan.files(), "running a control message");
                let sinks = SinkSet::new(files, other_sinks(opts, None)?);
                let (s, e) = execute_once(
                    opts,
                    Feed::Plan(Arc::new(plan)),
                    Some(sinks),
                    state.versions.clone(),
                    input.state_dir.is_some(),
                )?;
                stats.merge(s);
                epochs += e;
                files = OutputFiles::reopen(&opts.output, source, &state.sinks)?;
            }
            Err(e) => {
                tracing::warn!(message = %label, error = %e, "control message dead-lettered");
                let mut d = DeadLetter::message(&input.topic, p, offset, e.to_string(), text);
                d.stage = "control_topic".into();
                files.write(&[dead_letter_line(&d)])?;
                stats.dead_letters += 1;
            }
        }
        state.next.insert(p, offset + 1);
        state.sinks = files.lengths()?;
        state.versions = registry.serving_all()?;
        save(&state)?;
        if input.commit {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&input.topic, p, Offset::Offset(offset + 1))
                .map_err(|e| kafka_error("committing", e))?;
            if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
                tracing::warn!(error = %e, "committing the control message's offset");
            }
        }
    }
    Ok((stats, epochs))
}
