//! Users' state for `dfp serve`, in a NATS JetStream stream that every instance shares: each
//! user's inference window and the answers of their last requests, so that whichever instance
//! answers a user's request, and after an instance dies, the request starts from the state
//! the user's last applied request left.
//!
//! A user's state is a chain of entries on the subject `dfp.state.{stream}.u.{user in hex}`:
//! a **snapshot** (the whole state) now and then, and between snapshots one **change** per
//! request (the rows the window took and the answers kept for retries, a few hundred bytes a
//! record: `Online::replay` makes it to a copy of the state). Every entry is appended with a
//! compare-and-set on the subject's last sequence (`Nats-Expected-Last-Subject-Sequence`), so
//! two instances never both extend the same state: the one that loses reads the state again
//! and scores again. A change names the snapshot its chain starts from,
//! so a state is read as that snapshot plus the changes after it. The stream keeps at most
//! `2 x --snapshot-every` entries per user (older ones are dropped by the server), and a
//! snapshot follows every `--snapshot-every` changes, so the chain from the last snapshot is
//! always there.
//!
//! Why a chain and not one key-value entry per user rewritten by every request: the state is
//! 5-25 KB (a day of rows, the familiar values, the kept answers); nats-server 2.9's file
//! store pays for replacing such an entry on every write (p99 of a write at 1,000/s: 8-10 ms
//! for 8 KB entries replaced, 0.5-1.5 ms for appends), while appending a change of a few
//! hundred bytes and dropping an old one costs about what an append does. Per request the
//! cost is one append per user in it (a snapshot too every `--snapshot-every`), and reads
//! (the last entry, the snapshot and the changes after it) only when this instance has no
//! copy of the user's state or its copy is stale.
//!
//! State: the instance's copies of the states it wrote last (`--cache-users`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{Config, DirectGetErrorKind, StorageType, Stream};
use dfp_operators::online::{Change, Online, UserState};
use serde::{Deserialize, Serialize};

use super::StateStorage;

/// How often a user's state is read again when another instance extended it first.
const ATTEMPTS: usize = 50;

/// One entry of a user's chain.
#[derive(Serialize, Deserialize)]
enum Entry {
    /// The whole state.
    Snapshot(UserState),
    /// One request's change to the state at `prev` (the subject's last sequence it was
    /// appended after; none for a user's first entry), in the chain that starts at the
    /// snapshot `base`.
    Change {
        prev: Option<u64>,
        base: Option<u64>,
        change: Change,
    },
}

/// A user's state and where it stands in the user's chain.
#[derive(Default)]
pub struct Stored {
    /// The state.
    pub state: UserState,
    /// The sequence of the chain's last entry the state includes.
    at: Option<u64>,
    /// The sequence of the snapshot the chain starts from.
    base: Option<u64>,
    /// Changes since that snapshot.
    since: usize,
}

impl Stored {
    /// The state of the snapshot at sequence `seq`.
    fn snapshot(state: UserState, seq: u64) -> Stored {
        Stored {
            state,
            at: Some(seq),
            base: Some(seq),
            since: 0,
        }
    }
}

/// What became of a change appended to a user's chain.
pub enum Appended {
    /// It is the chain's last entry.
    Done,
    /// Another instance extended the chain first: the change was not stored.
    Stale,
}

/// The users' state stream, and this instance's copies of the states it wrote last.
pub struct States {
    js: async_nats::jetstream::Context,
    stream: Stream,
    prefix: String,
    snapshot_every: usize,
    cache: Mutex<HashMap<String, Stored>>,
    cache_users: usize,
}

impl States {
    /// The stream `name`, created when it is not there yet (entries kept `days` after they
    /// were written, at most `2 x snapshot_every` per subject).
    pub async fn open(
        client: &async_nats::Client,
        name: &str,
        days: u64,
        storage: StateStorage,
        snapshot_every: usize,
        cache_users: usize,
    ) -> Result<States> {
        let js = async_nats::jetstream::new(client.clone());
        let prefix = format!("dfp.state.{name}");
        let keep = i64::try_from(2 * snapshot_every.max(1)).unwrap_or(i64::MAX);
        let stream = js
            .get_or_create_stream(Config {
                name: name.to_string(),
                description: Some(
                    "dfp serve: users' inference windows and last answers (snapshots and changes)"
                        .into(),
                ),
                subjects: vec![format!("{prefix}.>")],
                max_messages_per_subject: keep,
                max_age: Duration::from_secs(days.saturating_mul(86_400)),
                allow_direct: true,
                deny_delete: true,
                storage: match storage {
                    StateStorage::File => StorageType::File,
                    StateStorage::Memory => StorageType::Memory,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "opening the state stream {name:?}: {e} (is JetStream on? start nats-server with -js)"
                )
            })?;
        let kept = stream.cached_info().config.max_messages_per_subject;
        if kept >= 0 && kept < keep {
            bail!(
                "the state stream {name:?} keeps {kept} entries per user, fewer than 2 x --snapshot-every ({keep}): use the --snapshot-every it was made with, or another --state-stream"
            );
        }
        Ok(States {
            js,
            stream,
            prefix,
            snapshot_every: snapshot_every.max(1),
            cache: Mutex::new(HashMap::new()),
            cache_users: cache_users.max(1),
        })
    }

    fn subject(&self, user: &str) -> String {
        format!("{}.u.{}", self.prefix, super::hex(user))
    }

    /// The subject a detection is kept under.
    fn detection_subject(&self, id: &str) -> String {
        format!("{}.d.{}", self.prefix, super::hex(id))
    }

    /// Stores `bytes` under `key` (below the stream's prefix), e.g. a verdict.
    pub async fn record(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        let subject = format!("{}.{key}", self.prefix);
        self.js
            .publish(subject.clone(), bytes.into())
            .await
            .with_context(|| format!("storing {subject}"))?
            .await
            .with_context(|| format!("storing {subject}"))?;
        Ok(())
    }

    /// Keeps a detection (its answer, as published) under `{prefix}.d.{id in hex}` for the
    /// admin API of any instance, for `--state-days`; a copy (a retried request) is dropped by
    /// its `Nats-Msg-Id`. Sent without waiting for the stream's ack: a detection is published
    /// as an event whether or not it is kept.
    pub async fn keep_detection(&self, id: &str, json: &str) {
        let subject = self.detection_subject(id);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id);
        let sent = self
            .js
            .publish_with_headers(subject, headers, json.to_string().into())
            .await;
        if let Err(e) = sent {
            tracing::warn!(detection = %id, error = %e, "a detection could not be kept for feedback");
        }
    }

    /// A detection kept by any instance ([`States::keep_detection`]), if still there.
    pub async fn detection(&self, id: &str) -> Result<Option<Vec<u8>>> {
        let subject = self.detection_subject(id);
        Ok(self.get(None, &subject).await?.map(|m| m.payload.to_vec()))
    }

    /// The user's state: this instance's copy (taken out; hand it back with [`States::keep`]),
    /// else read from the stream.
    pub async fn take(&self, online: &Online, user: &str) -> Result<Stored> {
        if let Some(stored) = self.cache.lock().ok().and_then(|mut c| c.remove(user)) {
            return Ok(stored);
        }
        self.read(online, user).await
    }

    /// Keeps this instance's copy of a user's state (at most `--cache-users`; one is
    /// forgotten to make room).
    pub fn keep(&self, user: &str, stored: Stored) {
        if let Ok(mut c) = self.cache.lock() {
            if c.len() >= self.cache_users
                && let Some(k) = c.keys().next().cloned()
            {
                c.remove(&k);
            }
            c.insert(user.to_string(), stored);
        }
    }

    /// The user's state read from the stream: the snapshot the last entry's chain starts
    /// from, and the changes after it.
    pub async fn read(&self, online: &Online, user: &str) -> Result<Stored> {
        let subject = self.subject(user);
        for _ in 0..ATTEMPTS {
            let Some(last) = self.get(None, &subject).await? else {
                return Ok(Stored::default());
            };
            let base = match decode(&last, user)? {
                Entry::Snapshot(state) => return Ok(Stored::snapshot(state, last.sequence)),
                Entry::Change { base, .. } => base,
            };
            let (mut stored, strict) = match base {
                None => (Stored::default(), true),
                Some(b) => match self.stream.direct_get(b).await {
                    Ok(m) if m.subject.as_str() == subject => match decode(&m, user)? {
                        Entry::Snapshot(state) => (Stored::snapshot(state, b), true),
                        Entry::Change { .. } => {
                            bail!("user {user:?}'s state: entry {b} should be a snapshot")
                        }
                    },
                    Ok(_) => bail!("user {user:?}'s state: entry {b} is another subject's"),
                    Err(e) if e.kind() == DirectGetErrorKind::NotFound => {
                        // Dropped while it was read (entries were appended meanwhile: read
                        // again), or expired (--state-days): the changes left, from empty.
                        let now = self.get(None, &subject).await?.map(|m| m.sequence);
                        if now != Some(last.sequence) {
                            continue;
                        }
                        (Stored::default(), false)
                    }
                    Err(e) => {
                        return Err(e).with_context(|| format!("reading user {user:?}'s state"));
                    }
                },
            };
            if self.follow(online, user, &mut stored, strict).await? {
                return Ok(stored);
            }
        }
        bail!("user {user:?}'s state changed under {ATTEMPTS} reads in a row; retry")
    }

    /// Makes the entries appended after `stored` to it; false when its chain does not go on
    /// from `stored` (entries were dropped meanwhile: read it afresh). `strict`: the first
    /// change must follow `stored` too (else it starts the state).
    async fn follow(
        &self,
        online: &Online,
        user: &str,
        stored: &mut Stored,
        mut strict: bool,
    ) -> Result<bool> {
        let subject = self.subject(user);
        while let Some(m) = self
            .get(Some(stored.at.map_or(1, |a| a + 1)), &subject)
            .await?
        {
            match decode(&m, user)? {
                Entry::Snapshot(state) => *stored = Stored::snapshot(state, m.sequence),
                Entry::Change { prev, base, change } if prev == stored.at || !strict => {
                    online.replay(&mut stored.state, user, change);
                    stored.base = base;
                    stored.since += 1;
                }
                Entry::Change { .. } => return Ok(false),
            }
            stored.at = Some(m.sequence);
            strict = true;
        }
        Ok(true)
    }

    /// The subject's last entry (`from` none), or its first at or after sequence `from`.
    async fn get(&self, from: Option<u64>, subject: &str) -> Result<Option<StreamMessage>> {
        let got = match from {
            None => self.stream.direct_get_last_for_subject(subject).await,
            Some(seq) => {
                self.stream
                    .direct_get_next_for_subject(subject, Some(seq))
                    .await
            }
        };
        match got {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {subject}")),
        }
    }

    /// Appends `change` to the user's chain if `stored` is still its end, and a snapshot
    /// after it when `--snapshot-every` changes have gone by; `stored` then includes them.
    pub async fn append(
        &self,
        user: &str,
        stored: &mut Stored,
        change: Change,
    ) -> Result<Appended> {
        let entry = Entry::Change {
            prev: stored.at,
            base: stored.base,
            change,
        };
        let Some(at) = self.put(user, stored.at, &entry).await? else {
            return Ok(Appended::Stale);
        };
        stored.at = Some(at);
        stored.since += 1;
        if stored.since >= self.snapshot_every {
            // The change is stored: a snapshot that is not (another instance extended the
            // chain first, or the server failed) is left to a later change.
            match self
                .put(user, stored.at, &Entry::Snapshot(stored.state.clone()))
                .await
            {
                Ok(Some(at)) => {
                    stored.at = Some(at);
                    stored.base = Some(at);
                    stored.since = 0;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(
                    user = %user,
                    error = %format!("{e:#}"),
                    "a snapshot could not be stored; a later change stores one"
                ),
            }
        }
        Ok(Appended::Done)
    }

    /// Appends `entry` if the user's subject's last sequence is still `after` (none: no
    /// entry): its sequence, or none when it is not.
    async fn put(&self, user: &str, after: Option<u64>, entry: &Entry) -> Result<Option<u64>> {
        let subject = self.subject(user);
        let bytes = dfp_operators::checkpoint::encode(entry)?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence",
            after.unwrap_or(0).to_string().as_str(),
        );
        let acked = match self
            .js
            .publish_with_headers(subject, headers, bytes.into())
            .await
        {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match acked {
            Ok(ack) => Ok(Some(ack.sequence)),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                tracing::debug!(user = %user, "state extended meanwhile");
                Ok(None)
            }
            Err(e) => Err(e).with_context(|| format!("storing user {user:?}'s state")),
        }
    }
}

fn decode(m: &StreamMessage, user: &str) -> Result<Entry> {
    dfp_operators::checkpoint::decode(&m.payload, std::path::Path::new(m.subject.as_str()))
        .with_context(|| format!("user {user:?}'s stored state"))
}
