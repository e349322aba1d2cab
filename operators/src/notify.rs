//! Notifications (`[notifications]`): rules over each epoch's output send a JSON event to a
//! webhook, a Kafka topic and/or NATS subjects (`dfp.events.notification.{source}`, and
//! `dfp.events.drift.{source}` for drift), through an outbox so that none is dropped silently.
//!
//! Rules, judged on the lines an epoch writes (the notifier is a [`Sink`] after the files):
//! `alert_volume` when the epoch writes more alerts (or, without the alerts file, detections)
//! than `max_alerts_per_epoch`; `parity_breach` for each group the parity stage flags;
//! `feature_drift` for each feature drifted over all models (`[drift]`); `training_failed`
//! when models of the epoch failed to train (their dead letters). And one rule on time:
//! `stream_stalled` when no epoch has been written for `stalled_seconds` (once per silence).
//!
//! Delivery: each notification is appended to the outbox (`dfp_notifications_outbox.jsonl` in
//! the output directory, fsynced) before the epoch counts as written; a courier thread sends
//! what the outbox holds to each destination (POSTed to the webhook; produced to the topic,
//! keyed by its id, acknowledged by the brokers; published to NATS with its id as
//! `Nats-Msg-Id`, flushed to the server) that its `.delivered` companion does not
//! record as done for it (lines `DESTINATION ID`), at most `max_per_minute` sends a minute,
//! retrying with backoff (0.5 s to 30 s). At the end of the run it keeps trying for
//! `flush_seconds`; what is left stays in the outbox and the next run with the same output
//! directory delivers it first. Every notification has a stable `id` (the hash of its kind,
//! source, epoch and subject): a replayed epoch sends the same id again, so a receiver that
//! keeps ids sees each notification once (delivery is at least once).

use std::collections::{BTreeSet, VecDeque};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use dfp_engine::config::Problems;
use dfp_engine::{Error, Result};

use crate::kafka::KafkaSettings;
use crate::retry::Backoff;
use crate::serialize::{Line, OutKind, csv_cells};
use crate::sink::Sink;
use crate::sink::kafka::KafkaSink;

/// `[notifications]`: where they go and what raises them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// The webhook (`http://HOST:PORT/PATH`) each notification is POSTed to.
    pub webhook: Option<String>,
    /// The topic (`kafka://HOST:PORT/TOPIC`) each notification is produced to (`[source]
    /// options` pass to its producer).
    pub kafka: Option<String>,
    /// The NATS server (`nats://HOST:PORT`) each notification is published to, on
    /// `dfp.events.notification.{source}` (a `feature_drift` one on `dfp.events.drift.{source}`
    /// too), header `Nats-Msg-Id` = its id. None of the three: off.
    pub nats: Option<String>,
    /// `alert_volume` when an epoch writes more alerts than this; none: never.
    pub max_alerts_per_epoch: Option<u64>,
    /// `parity_breach` for each group flagged by `[parity]`.
    pub parity: bool,
    /// `feature_drift` for each feature `[drift]` finds drifted over all models.
    pub drift: bool,
    /// `training_failed` when models fail to train.
    pub training_failures: bool,
    /// `stream_stalled` when no epoch is written for this many seconds; none: never.
    pub stalled_seconds: Option<u64>,
    /// At most this many deliveries a minute; the rest wait in the outbox.
    pub max_per_minute: u32,
    /// How long the end of a run keeps trying to deliver, in seconds.
    pub flush_seconds: u64,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            webhook: None,
            kafka: None,
            nats: None,
            max_alerts_per_epoch: None,
            parity: true,
            drift: true,
            training_failures: true,
            stalled_seconds: None,
            max_per_minute: 60,
            flush_seconds: 10,
        }
    }
}

impl NotifyConfig {
    /// Every problem, under `path`.
    pub fn check(&self, path: &str, p: &mut Problems) {
        let key = |k: &str| dfp_engine::config::join(path, k);
        if let Some(url) = &self.webhook
            && !url.starts_with("http://")
        {
            p.push(
                key("webhook"),
                "an http:// URL (https is not built into dfp's client)",
            );
        }
        if let Some(url) = &self.kafka
            && let Err(e) = crate::kafka::parse_kafka_url(url)
        {
            p.push(key("kafka"), e.to_string());
        }
        if let Some(url) = &self.nats
            && !url.starts_with("nats://")
        {
            p.push(key("nats"), "a nats://HOST:PORT URL");
        }
        if self.max_per_minute == 0 {
            p.push(key("max_per_minute"), "at least 1");
        }
        if self.stalled_seconds == Some(0) {
            p.push(key("stalled_seconds"), "at least 1");
        }
    }
}

/// One notification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// Stable: the same event of a replayed epoch has the same id.
    pub id: String,
    /// `alert_volume`, `parity_breach`, `feature_drift`, `training_failed`, `stream_stalled`.
    pub kind: String,
    /// The source.
    pub source: String,
    /// The epoch.
    pub epoch: u64,
    /// One sentence.
    pub summary: String,
    /// The figures.
    pub details: Value,
}

fn notification(
    source: &str,
    epoch: u64,
    kind: &str,
    subject: &str,
    summary: String,
    details: Value,
) -> Notification {
    let key = format!("{kind}\0{source}\0{epoch}\0{subject}");
    Notification {
        id: format!("{:016x}", dfp_engine::hash::fnv1a64(key.as_bytes())),
        kind: kind.to_string(),
        source: source.to_string(),
        epoch,
        summary,
        details,
    }
}

/// The notifications `cfg`'s rules raise on one epoch's lines.
pub fn judge(cfg: &NotifyConfig, source: &str, epoch: u64, lines: &[Line]) -> Vec<Notification> {
    let mut out = Vec::new();
    if let Some(limit) = cfg.max_alerts_per_epoch {
        let alerts = lines.iter().filter(|l| l.kind == OutKind::Alerts).count() as u64;
        let (count, what) = if alerts > 0 {
            (alerts, "alerts")
        } else {
            let d = lines
                .iter()
                .filter(|l| l.kind == OutKind::DetectionsJson)
                .count() as u64;
            (d, "detections")
        };
        if count > limit {
            out.push(notification(
                source,
                epoch,
                "alert_volume",
                "",
                format!("epoch {epoch} wrote {count} {what}, more than {limit}"),
                json!({ "count": count, "limit": limit, "of": what }),
            ));
        }
    }
    if cfg.parity {
        for l in lines.iter().filter(|l| l.kind == OutKind::Parity) {
            // Read as CSV: a group may hold a comma (a location "city, country").
            let Some(cells) = csv_cells(&l.text, crate::parity::HEADER) else {
                continue;
            };
            if cells[8] == "true" {
                let (field, group, ratio) = (&cells[1], &cells[2], &cells[7]);
                out.push(notification(
                    source,
                    epoch,
                    "parity_breach",
                    group,
                    format!("epoch {epoch}: {field} {group} is alerted on at {ratio} times the overall rate"),
                    json!({ "group_field": field, "group": group, "rows": cells[3],
                            "alerts": cells[4], "ratio": ratio }),
                ));
            }
        }
    }
    if cfg.drift {
        for l in lines.iter().filter(|l| l.kind == OutKind::Drift) {
            let Some(c) = csv_cells(&l.text, crate::drift::HEADER) else {
                continue;
            };
            if c[1] == crate::drift::ALL && c[7] == "true" {
                let (feature, psi) = (&c[2], &c[4]);
                out.push(notification(
                    source,
                    epoch,
                    "feature_drift",
                    feature,
                    format!("epoch {epoch}: {feature} has drifted from the models' training windows (PSI {psi})"),
                    json!({ "feature": feature, "rows": c[3], "psi": psi, "js": c[5], "ks": c[6] }),
                ));
            }
        }
    }
    if cfg.training_failures {
        let failed: Vec<String> = lines
            .iter()
            .filter(|l| l.kind == OutKind::DeadLetters)
            .filter_map(|l| serde_json::from_str::<Value>(&l.text).ok())
            .filter(|d| d["stage"] == "training")
            .map(|d| {
                format!(
                    "{}: {}",
                    d["user"].as_str().unwrap_or("?"),
                    d["reason"].as_str().unwrap_or("")
                )
            })
            .collect();
        if !failed.is_empty() {
            out.push(notification(
                source,
                epoch,
                "training_failed",
                "",
                format!("epoch {epoch}: {} models failed to train", failed.len()),
                json!({ "failures": failed }),
            ));
        }
    }
    out
}

/// The outbox of an output directory.
pub fn outbox_path(output: &Path) -> PathBuf {
    output.join("dfp_notifications_outbox.jsonl")
}

fn delivered_path(outbox: &Path) -> PathBuf {
    outbox.with_extension("jsonl.delivered")
}

/// The outbox: notifications waiting, and what each destination has been sent.
struct Outbox {
    path: PathBuf,
}

impl Outbox {
    fn append(&self, path: &Path, line: &str) -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, "opening", e))?;
        f.write_all(format!("{line}\n").as_bytes())
            .and_then(|()| f.sync_data())
            .map_err(|e| Error::io(path, "appending", e))
    }

    fn lines(path: &Path) -> Vec<String> {
        match std::fs::File::open(path) {
            Ok(f) => std::io::BufReader::new(f)
                .lines()
                .map_while(|l| l.ok())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Records that `destination` has notification `id`.
    fn delivered(&self, destination: &str, id: &str) -> Result<()> {
        self.append(&delivered_path(&self.path), &format!("{destination} {id}"))
    }

    /// The notifications not delivered yet to all of `destinations`, oldest first, each with
    /// the destinations still to send it to (a line that is not a notification is logged and
    /// left).
    fn pending(&self, destinations: &[&str]) -> Vec<(Notification, Vec<usize>)> {
        let done: BTreeSet<String> = Self::lines(&delivered_path(&self.path))
            .into_iter()
            .collect();
        let mut seen = BTreeSet::new();
        Self::lines(&self.path)
            .into_iter()
            .filter_map(|l| match serde_json::from_str::<Notification>(&l) {
                Ok(n) => Some(n),
                Err(e) => {
                    tracing::warn!(file = %self.path.display(), error = %e, "not a notification; left in the outbox");
                    None
                }
            })
            .filter(|n| seen.insert(n.id.clone()))
            .filter_map(|n| {
                let to: Vec<usize> = (0..destinations.len())
                    .filter(|&d| !done.contains(&format!("{} {}", destinations[d], n.id)))
                    .collect();
                (!to.is_empty()).then_some((n, to))
            })
            .collect()
    }

    /// Empties both files once everything in the outbox is delivered to `destinations`.
    fn compact(&self, destinations: &[&str]) -> Result<()> {
        if self.pending(destinations).is_empty() {
            for p in [self.path.clone(), delivered_path(&self.path)] {
                match std::fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io(&p, "emptying the outbox", e)),
                }
            }
        }
        Ok(())
    }
}

/// Where notifications go.
trait Destination: Send {
    /// Its name in the `.delivered` file and in logs (`webhook`, `kafka`, `nats`).
    fn name(&self) -> &'static str;
    /// Sends one notification (its JSON `body`), returning once it is taken.
    fn send(&mut self, n: &Notification, body: &str) -> std::result::Result<(), String>;
}

/// POSTs to a webhook.
struct Webhook {
    url: String,
    agent: ureq::Agent,
}

impl Destination for Webhook {
    fn name(&self) -> &'static str {
        "webhook"
    }

    fn send(&mut self, _: &Notification, body: &str) -> std::result::Result<(), String> {
        let reply = self
            .agent
            .post(&self.url)
            .header("Content-Type", "application/json")
            .send(body)
            .map_err(|e| format!("{}: {e}", self.url))?;
        let status = reply.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(format!("{} answered {status}", self.url));
        }
        Ok(())
    }
}

/// Produces to a Kafka topic, keyed by the notification's id.
struct Topic {
    url: String,
    producer: KafkaSink,
}

impl Destination for Topic {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn send(&mut self, n: &Notification, body: &str) -> std::result::Result<(), String> {
        self.producer
            .produce(Some(&n.id), body)
            .and_then(|()| self.producer.flush())
            .map_err(|e| format!("{}: {}", self.url, e.chain()))
    }
}

/// Publishes on NATS subjects ([`subjects`]); sent once the server has it (flushed). Connects
/// on the first send, so an unreachable server leaves notifications in the outbox.
struct Subjects {
    url: String,
    runtime: tokio::runtime::Runtime,
    client: Option<async_nats::Client>,
}

/// The subjects a notification is published on: `dfp.events.notification.{source}`, and
/// `dfp.events.drift.{source}` for a `feature_drift` one.
fn subjects(n: &Notification) -> Vec<String> {
    let mut out = vec![format!("dfp.events.notification.{}", n.source)];
    if n.kind == "feature_drift" {
        out.push(format!("dfp.events.drift.{}", n.source));
    }
    out
}

/// How long a send to NATS may take before it counts as failed (and is retried).
const NATS_TIMEOUT: Duration = Duration::from_secs(10);

impl Destination for Subjects {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn send(&mut self, n: &Notification, body: &str) -> std::result::Result<(), String> {
        let url = self.url.clone();
        let known = self.client.clone();
        let publish = async move {
            let client = match known {
                Some(c) => c,
                None => async_nats::ConnectOptions::new()
                    .connection_timeout(NATS_TIMEOUT)
                    .connect(&url)
                    .await
                    .map_err(|e| format!("{url}: {e}"))?,
            };
            for subject in subjects(n) {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", n.id.as_str());
                client
                    .publish_with_headers(subject, headers, body.to_string().into())
                    .await
                    .map_err(|e| format!("{url}: {e}"))?;
            }
            client.flush().await.map_err(|e| format!("{url}: {e}"))?;
            Ok::<_, String>(client)
        };
        // The timer is made inside the runtime, which it needs.
        let sent = self
            .runtime
            .block_on(async { tokio::time::timeout(NATS_TIMEOUT, publish).await });
        match sent {
            Ok(Ok(client)) => {
                self.client = Some(client);
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!("{}: no answer within {NATS_TIMEOUT:?}", self.url)),
        }
    }
}

/// When the last epoch was written, for `stream_stalled`.
#[derive(Debug)]
struct Progress {
    epoch: Option<u64>,
    at: Instant,
    told: bool,
}

/// The notifier: a [`Sink`] that judges each epoch's lines, appends what the rules raise to
/// the outbox, and wakes the courier; dropped, it lets the courier flush and waits for it.
pub struct Notifier {
    cfg: NotifyConfig,
    source: String,
    outbox: Arc<Mutex<Outbox>>,
    progress: Arc<Mutex<Progress>>,
    wake: Option<Sender<()>>,
    courier: Option<JoinHandle<()>>,
}

impl Notifier {
    /// A notifier of `source`'s epochs through the outbox in `output`, to `cfg.webhook`,
    /// `cfg.kafka` and/or `cfg.nats` (one must be set; `options`: the Kafka producer's librdkafka settings); the
    /// courier starts at once with what an earlier run left.
    pub fn start(
        cfg: &NotifyConfig,
        source: &str,
        output: &Path,
        options: &std::collections::BTreeMap<String, String>,
    ) -> Result<Notifier> {
        let mut destinations: Vec<Box<dyn Destination>> = Vec::new();
        if let Some(url) = &cfg.webhook {
            destinations.push(Box::new(Webhook {
                url: url.clone(),
                agent: ureq::Agent::config_builder()
                    .timeout_global(Some(Duration::from_secs(10)))
                    .http_status_as_error(false)
                    .build()
                    .into(),
            }));
        }
        if let Some(url) = &cfg.kafka {
            let (kafka, topic) = KafkaSettings::from_url(url, options.clone())?;
            destinations.push(Box::new(Topic {
                url: url.clone(),
                producer: KafkaSink::new(&kafka, &topic)?,
            }));
        }
        if let Some(url) = &cfg.nats {
            destinations.push(Box::new(Subjects {
                url: url.clone(),
                runtime: tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| {
                        Error::stage("notifications", format!("starting a NATS client: {e}"))
                    })?,
                client: None,
            }));
        }
        if destinations.is_empty() {
            return Err(Error::stage(
                "notifications",
                "no webhook, topic or NATS server to notify",
            ));
        }
        std::fs::create_dir_all(output).map_err(|e| Error::io(output, "creating", e))?;
        let outbox = Arc::new(Mutex::new(Outbox {
            path: outbox_path(output),
        }));
        let progress = Arc::new(Mutex::new(Progress {
            epoch: None,
            at: Instant::now(),
            told: false,
        }));
        let (wake, rx) = channel();
        let courier = Courier {
            destinations,
            outbox: outbox.clone(),
            per_minute: cfg.max_per_minute.max(1) as usize,
            sent: VecDeque::new(),
            flush: Duration::from_secs(cfg.flush_seconds),
            stall: cfg
                .stalled_seconds
                .map(|s| (Duration::from_secs(s), source.to_string(), progress.clone())),
        };
        let handle = std::thread::Builder::new()
            .name("dfp-notify".to_string())
            .spawn(move || courier.run(&rx))
            .map_err(|e| Error::stage("notifications", format!("starting the courier: {e}")))?;
        Ok(Notifier {
            cfg: cfg.clone(),
            source: source.to_string(),
            outbox,
            progress,
            wake: Some(wake),
            courier: Some(handle),
        })
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        drop(self.wake.take());
        if let Some(h) = self.courier.take() {
            let _ = h.join();
        }
    }
}

fn keep(outbox: &Mutex<Outbox>, raised: &[Notification]) -> Result<()> {
    let outbox = outbox
        .lock()
        .map_err(|_| Error::stage("notifications", "the outbox lock was poisoned"))?;
    for n in raised {
        let text = serde_json::to_string(n).map_err(|e| Error::Json {
            context: "writing a notification".into(),
            source: e,
        })?;
        outbox.append(&outbox.path, &text)?;
    }
    Ok(())
}

impl Sink for Notifier {
    fn describe(&self) -> String {
        let to: Vec<&str> = [self.cfg.webhook.as_deref(), self.cfg.kafka.as_deref()]
            .into_iter()
            .flatten()
            .collect();
        format!("notifications to {}", to.join(" and "))
    }

    fn write_epoch(&mut self, epoch: u64, lines: &[Line]) -> Result<()> {
        if let Ok(mut p) = self.progress.lock() {
            *p = Progress {
                epoch: Some(epoch),
                at: Instant::now(),
                told: false,
            };
        }
        let raised = judge(&self.cfg, &self.source, epoch, lines);
        if raised.is_empty() {
            return Ok(());
        }
        keep(&self.outbox, &raised)?;
        if let Some(w) = &self.wake {
            let _ = w.send(());
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }
}

/// Delivers the outbox.
struct Courier {
    destinations: Vec<Box<dyn Destination>>,
    outbox: Arc<Mutex<Outbox>>,
    per_minute: usize,
    sent: VecDeque<Instant>,
    flush: Duration,
    /// `stream_stalled` after this long without an epoch (the source, and the progress).
    stall: Option<(Duration, String, Arc<Mutex<Progress>>)>,
}

impl Courier {
    fn names(&self) -> Vec<&'static str> {
        self.destinations.iter().map(|d| d.name()).collect()
    }

    fn run(mut self, wake: &Receiver<()>) {
        let mut backoff = Backoff::server();
        let mut deadline: Option<Instant> = None;
        loop {
            if deadline.is_none() {
                self.watch_stall();
            }
            let delivered = self.deliver();
            let done = matches!(delivered, Ok(true));
            let wait = match delivered {
                Ok(true) => {
                    backoff.reset();
                    Duration::from_secs(1)
                }
                // Rate-limited: wait for the oldest delivery to leave the minute.
                Ok(false) => self.sent.front().map_or(Duration::from_millis(100), |t| {
                    (*t + Duration::from_secs(60)).saturating_duration_since(Instant::now())
                }),
                Err(e) => {
                    let wait = backoff.wait();
                    tracing::warn!(error = %e, retry_in = ?wait, "notification not delivered; kept in the outbox");
                    wait
                }
            };
            if let Some(d) = deadline {
                if done || Instant::now() >= d {
                    break;
                }
                std::thread::sleep(wait.min(d.saturating_duration_since(Instant::now())));
                continue;
            }
            match wake.recv_timeout(wait) {
                Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => deadline = Some(Instant::now() + self.flush),
            }
        }
        let names = self.names();
        if let Ok(o) = self.outbox.lock() {
            let left = o.pending(&names).len();
            if left > 0 {
                tracing::warn!(outbox = %o.path.display(), left, "notifications not delivered; the next run delivers them");
            }
            if let Err(e) = o.compact(&names) {
                tracing::warn!(error = %e.chain(), "emptying the outbox");
            }
        }
    }

    /// Raises `stream_stalled` once when no epoch has been written for the stall time.
    fn watch_stall(&mut self) {
        let Some((limit, source, progress)) = &self.stall else {
            return;
        };
        let raised = {
            let Ok(mut p) = progress.lock() else { return };
            if p.told || p.at.elapsed() < *limit {
                return;
            }
            p.told = true;
            let after = p
                .epoch
                .map_or_else(|| "the start".to_string(), |e| format!("epoch {e}"));
            notification(
                source,
                p.epoch.unwrap_or(0),
                "stream_stalled",
                &format!("{:?}", p.epoch),
                format!("no epoch written for {} s after {after}", limit.as_secs()),
                json!({ "last_epoch": p.epoch, "seconds": limit.as_secs() }),
            )
        };
        if let Err(e) = keep(&self.outbox, &[raised]) {
            tracing::warn!(error = %e.chain(), "keeping a stalled-stream notification");
        }
    }

    /// Sends what is pending, within the rate limit: Ok(true) when nothing is left, Ok(false)
    /// when the limit stopped it, Err when a destination failed (the others go on).
    fn deliver(&mut self) -> std::result::Result<bool, String> {
        let names = self.names();
        let pending = self
            .outbox
            .lock()
            .map_err(|_| "outbox lock poisoned".to_string())?
            .pending(&names);
        let mut failed: Option<String> = None;
        for (n, to) in pending {
            let body = serde_json::to_string(&n).map_err(|e| e.to_string())?;
            for d in to {
                while self
                    .sent
                    .front()
                    .is_some_and(|t| t.elapsed() >= Duration::from_secs(60))
                {
                    self.sent.pop_front();
                }
                if self.sent.len() >= self.per_minute {
                    return Ok(false);
                }
                if let Err(e) = self.destinations[d].send(&n, &body) {
                    failed.get_or_insert(e);
                    continue;
                }
                self.sent.push_back(Instant::now());
                let o = self
                    .outbox
                    .lock()
                    .map_err(|_| "outbox lock poisoned".to_string())?;
                o.delivered(names[d], &n.id).map_err(|e| e.chain())?;
            }
        }
        failed.map_or(Ok(true), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(kind: OutKind, text: &str) -> Line {
        Line::unkeyed(kind, text)
    }

    #[test]
    fn drift_notifications_go_on_the_drift_subject_too() {
        let n = |kind: &str| notification("azure", 3, kind, "x", String::new(), json!({}));
        assert_eq!(
            subjects(&n("feature_drift")),
            ["dfp.events.notification.azure", "dfp.events.drift.azure"]
        );
        assert_eq!(
            subjects(&n("alert_volume")),
            ["dfp.events.notification.azure"]
        );
    }

    #[test]
    fn rules_raise_stable_notifications_from_an_epochs_lines() {
        let cfg = NotifyConfig {
            webhook: Some("http://127.0.0.1:1/hook".into()),
            max_alerts_per_epoch: Some(1),
            ..NotifyConfig::default()
        };
        let lines = vec![
            line(OutKind::Alerts, "{}"),
            line(OutKind::Alerts, "{}"),
            line(
                OutKind::Parity,
                "4,location,\"Paris, FR\",100,30,0.3,0.1,3.0000,true",
            ),
            line(OutKind::Parity, "4,country,DE,100,10,0.1,0.1,1.0000,false"),
            line(
                OutKind::DeadLetters,
                r#"{"stage":"training","user":"DFP-azure-u","reason":"NaN loss"}"#,
            ),
            line(
                OutKind::DeadLetters,
                r#"{"stage":"ingest","reason":"bad json"}"#,
            ),
        ];
        let got = judge(&cfg, "azure", 4, &lines);
        let kinds: Vec<&str> = got.iter().map(|n| n.kind.as_str()).collect();
        assert_eq!(kinds, ["alert_volume", "parity_breach", "training_failed"]);
        assert_eq!(got[0].details["count"], 2);
        assert_eq!(got[1].details["group"], "Paris, FR");
        assert!(got[2].summary.contains("1 models failed"));
        assert_eq!(got, judge(&cfg, "azure", 4, &lines), "ids are stable");
        assert_ne!(got[0].id, judge(&cfg, "azure", 5, &lines)[0].id);
        let quiet = NotifyConfig {
            max_alerts_per_epoch: Some(2),
            parity: false,
            training_failures: false,
            ..cfg
        };
        assert!(judge(&quiet, "azure", 4, &lines).is_empty());
    }

    #[test]
    fn the_outbox_keeps_what_is_not_delivered_and_empties_once_all_is() {
        let dir = tempfile::tempdir().unwrap();
        let o = Outbox {
            path: outbox_path(dir.path()),
        };
        let n = |id: &str| Notification {
            id: id.into(),
            kind: "k".into(),
            source: "s".into(),
            epoch: 1,
            summary: String::new(),
            details: Value::Null,
        };
        for id in ["a", "b", "a"] {
            o.append(&o.path, &serde_json::to_string(&n(id)).unwrap())
                .unwrap();
        }
        let both = ["webhook", "kafka"];
        assert_eq!(o.pending(&both).len(), 2, "a repeated id is sent once");
        o.delivered("webhook", "a").unwrap();
        o.delivered("kafka", "a").unwrap();
        o.delivered("webhook", "b").unwrap();
        o.compact(&both).unwrap();
        assert_eq!(o.pending(&both), vec![(n("b"), vec![1])]);
        assert!(o.pending(&["webhook"]).is_empty());
        o.delivered("kafka", "b").unwrap();
        o.compact(&both).unwrap();
        assert!(!o.path.exists() && !delivered_path(&o.path).exists());
    }

    #[test]
    fn a_silence_longer_than_stalled_seconds_raises_one_notification_per_silence() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = NotifyConfig {
            webhook: Some("http://127.0.0.1:1/down".into()),
            stalled_seconds: Some(1),
            flush_seconds: 0,
            ..NotifyConfig::default()
        };
        let mut notifier = Notifier::start(&cfg, "azure", dir.path(), &Default::default()).unwrap();
        let stalled = |epoch: u64| -> usize {
            Outbox::lines(&outbox_path(dir.path()))
                .iter()
                .filter_map(|l| serde_json::from_str::<Notification>(l).ok())
                .filter(|n| n.kind == "stream_stalled" && n.details["last_epoch"] == epoch)
                .count()
        };
        // The deadlines only stop a hang; the courier looks about once a second.
        let wait_for = |epoch: u64| {
            let started = Instant::now();
            while stalled(epoch) == 0 && started.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        notifier.write_epoch(3, &[]).unwrap();
        wait_for(3);
        notifier.write_epoch(4, &[]).unwrap();
        wait_for(4);
        drop(notifier);
        assert_eq!((stalled(3), stalled(4)), (1, 1));
    }
}
