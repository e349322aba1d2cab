//! Prometheus metrics while a run goes on (`--metrics-addr HOST:PORT`): dfp serves
//! `GET /metrics` in the OpenMetrics text format from a thread of its own (std::net, one
//! connection at a time: a scraper's load), and every worker publishes its counters there as it
//! steps the dataflow (at most every 200 ms, and once at its end), as the difference since its
//! last publication: no hot-path code touches the metrics.
//!
//! Names follow Prometheus' conventions: one `dfp_` prefix, base units (`_seconds`, `_bytes`),
//! `_total` for counters; no label carries a user, a model or anything else unbounded.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Metric, Registry, Unit};

use dfp_engine::{Error, Result};

use crate::metrics::Stats;

type Seconds = Counter<f64, AtomicU64>;

/// The run's metrics, shared by its workers and the server.
pub struct Telemetry {
    registry: Registry,
    files: Counter,
    bytes: Counter,
    rows: Counter,
    dead_letters: Counter,
    models_trained: Counter,
    training_failures: Counter,
    train_epochs: Counter,
    infer_epochs: Counter,
    scored: Counter,
    generic_fallbacks: Counter,
    detections: Counter,
    over_budget: Counter,
    alerts: Counter,
    promoted: Counter,
    parity_breaches: Counter,
    drifted_features: Counter,
    suppressed: Counter,
    train_seconds: Seconds,
    score_seconds: Seconds,
    epochs_done: Counter,
    epoch_seconds: Seconds,
    last_epoch_seconds: Gauge<f64, AtomicU64>,
    checkpoint_writes: Counter,
    checkpoint_seconds: Seconds,
    consumer_lag: Gauge,
    feedback_judged: Gauge,
    feedback_precision: Gauge<f64, AtomicU64>,
    users: Gauge,
    workers_done: Gauge,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Telemetry")
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

/// A new metric of type `M`, registered in `registry` under `name` (with its unit, if any).
fn metric<M: Metric + Clone + Default>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    unit: Option<Unit>,
) -> M {
    let m = M::default();
    match unit {
        Some(u) => registry.register_with_unit(name, help, u, m.clone()),
        None => registry.register(name, help, m.clone()),
    }
    m
}

impl Telemetry {
    /// Every metric, registered.
    pub fn new() -> Telemetry {
        let mut registry = Registry::with_prefix("dfp");
        let r = &mut registry;
        let files: Counter = metric(r, "files_read", "Log files read", None);
        let rows: Counter = metric(r, "events_read", "Log records read into rows", None);
        let dead_letters: Counter = metric(
            r,
            "dead_letters",
            "Records, files and rows written to the dead-letter output (bad input, late records, unscored rows)",
            None,
        );
        let models_trained: Counter = metric(r, "models_trained", "Model versions trained", None);
        let training_failures: Counter =
            metric(r, "training_failures", "Models whose training failed", None);
        let train_epochs: Counter =
            metric(r, "training_epochs", "Epochs with a training task", None);
        let infer_epochs: Counter =
            metric(r, "inference_epochs", "Epochs with an inference task", None);
        let scored: Counter = metric(r, "events_scored", "Rows scored", None);
        let generic_fallbacks: Counter = metric(
            r,
            "generic_fallbacks",
            "Rows scored by the generic model because their user had none",
            None,
        );
        let detections: Counter = metric(r, "detections", "Detections written", None);
        let over_budget: Counter = metric(
            r,
            "detections_over_budget",
            "Detections held back by the alert budget",
            None,
        );
        let alerts: Counter = metric(
            r,
            "alerts",
            "Alerts opened (detections grouped by suppression)",
            None,
        );
        let promoted: Counter = metric(
            r,
            "challengers_promoted",
            "Challengers promoted by the automatic policy",
            None,
        );
        let parity_breaches: Counter = metric(
            r,
            "parity_breaches",
            "Groups flagged outside the alert-rate parity band",
            None,
        );
        let drifted_features: Counter = metric(
            r,
            "drifted_features",
            "Features drifted across all models, one per epoch and feature",
            None,
        );
        let suppressed: Counter = metric(
            r,
            "detections_suppressed",
            "Detections silenced by analysts' suppression rules",
            None,
        );
        let epochs_done: Counter = metric(
            r,
            "epochs_written",
            "Epochs whose output the dataflow has written",
            None,
        );
        let checkpoint_writes: Counter = metric(
            r,
            "checkpoint_writes",
            "Stage states written at checkpoints, summed over workers",
            None,
        );
        let bytes: Counter = metric(r, "input", "Input read", Some(Unit::Bytes));
        let train_seconds: Seconds = metric(
            r,
            "training",
            "Time spent training models, summed over workers",
            Some(Unit::Seconds),
        );
        let score_seconds: Seconds = metric(
            r,
            "scoring",
            "Time spent scoring rows, summed over workers",
            Some(Unit::Seconds),
        );
        let epoch_seconds: Seconds = metric(
            r,
            "epoch_latency",
            "Time from an epoch's input closing to its output written, summed over epochs",
            Some(Unit::Seconds),
        );
        let last_epoch_seconds: Gauge<f64, AtomicU64> = metric(
            r,
            "last_epoch_latency",
            "Time from the last written epoch's input closing to its output written",
            Some(Unit::Seconds),
        );
        let checkpoint_seconds: Seconds = metric(
            r,
            "checkpoint_write",
            "Time spent writing stage states at checkpoints, summed over workers",
            Some(Unit::Seconds),
        );
        let consumer_lag: Gauge = metric(
            r,
            "consumer_lag_records",
            "Records in the source topic's partitions not read yet (Kafka sources)",
            None,
        );
        let feedback_judged: Gauge = metric(
            r,
            "feedback_judged_detections",
            "Detections of the run's output with an analyst's verdict (from the feedback topic)",
            None,
        );
        let feedback_precision: Gauge<f64, AtomicU64> = metric(
            r,
            "feedback_precision_ratio",
            "Share of judged detections that were true positives",
            None,
        );
        let users: Gauge = metric(
            r,
            "users",
            "Users seen by the workers (each counted by the worker that owns it)",
            None,
        );
        let workers_done: Gauge = metric(
            r,
            "workers_finished",
            "Workers that have finished the run",
            None,
        );
        Telemetry {
            registry,
            files,
            bytes,
            rows,
            dead_letters,
            models_trained,
            training_failures,
            train_epochs,
            infer_epochs,
            scored,
            generic_fallbacks,
            detections,
            over_budget,
            alerts,
            promoted,
            parity_breaches,
            drifted_features,
            suppressed,
            train_seconds,
            score_seconds,
            epochs_done,
            epoch_seconds,
            last_epoch_seconds,
            checkpoint_writes,
            checkpoint_seconds,
            consumer_lag,
            feedback_judged,
            feedback_precision,
            users,
            workers_done,
        }
    }

    /// The analysts' verdicts so far: detections judged, true positives among them.
    pub fn feedback(&self, judged: u64, true_positives: u64) {
        self.feedback_judged.set(judged as i64);
        if judged > 0 {
            self.feedback_precision
                .set(true_positives as f64 / judged as f64);
        }
    }

    /// The metrics in the OpenMetrics text format.
    pub fn text(&self) -> String {
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encoding the metrics");
        }
        out
    }
}

/// What one worker has published so far: its counters as of then (its users as a count).
#[derive(Debug)]
pub struct Publisher {
    telemetry: Arc<Telemetry>,
    last: Stats,
    users: usize,
    drifted: u64,
    at: Instant,
}

const EVERY: Duration = Duration::from_millis(200);

impl Publisher {
    /// A worker's publisher.
    pub fn new(telemetry: Arc<Telemetry>) -> Publisher {
        Publisher {
            telemetry,
            last: Stats::default(),
            users: 0,
            drifted: 0,
            at: Instant::now(),
        }
    }

    /// Publishes what `now` counted since the last publication, at most every 200 ms.
    pub fn tick(&mut self, now: &Stats) {
        if self.at.elapsed() >= EVERY {
            self.publish(now);
        }
    }

    /// Publishes what `now` counted since the last publication.
    pub fn publish(&mut self, now: &Stats) {
        let t = &self.telemetry;
        let l = &self.last;
        let add = |c: &Counter, now: u64, then: u64| {
            if now > then {
                c.inc_by(now - then);
            }
        };
        add(&t.files, now.files, l.files);
        add(&t.bytes, now.bytes, l.bytes);
        add(&t.rows, now.rows, l.rows);
        add(&t.dead_letters, now.dead_letters, l.dead_letters);
        add(&t.models_trained, now.models_trained, l.models_trained);
        add(&t.training_failures, now.train_failed, l.train_failed);
        add(&t.train_epochs, now.train_epochs, l.train_epochs);
        add(&t.infer_epochs, now.infer_epochs, l.infer_epochs);
        add(&t.scored, now.scored, l.scored);
        add(
            &t.generic_fallbacks,
            now.generic_fallbacks,
            l.generic_fallbacks,
        );
        add(&t.detections, now.detections, l.detections);
        add(&t.over_budget, now.over_budget, l.over_budget);
        add(&t.alerts, now.alerts, l.alerts);
        add(&t.promoted, now.promoted, l.promoted);
        add(&t.parity_breaches, now.parity_breaches, l.parity_breaches);
        add(&t.suppressed, now.suppressed, l.suppressed);
        let drifted = |s: &Stats| s.drifted.values().sum::<u64>();
        add(&t.drifted_features, drifted(now), self.drifted);
        self.drifted = drifted(now);
        add(&t.epochs_done, now.epochs_done, l.epochs_done);
        add(
            &t.checkpoint_writes,
            now.checkpoint_writes,
            l.checkpoint_writes,
        );
        for (c, now, then) in [
            (&t.train_seconds, now.train_seconds, l.train_seconds),
            (&t.score_seconds, now.score_seconds, l.score_seconds),
            (&t.epoch_seconds, now.epoch_seconds, l.epoch_seconds),
            (
                &t.checkpoint_seconds,
                now.checkpoint_seconds,
                l.checkpoint_seconds,
            ),
        ] {
            if now > then {
                c.inc_by(now - then);
            }
        }
        if now.epochs_done > l.epochs_done {
            t.last_epoch_seconds.set(now.last_epoch_seconds);
        }
        t.consumer_lag
            .inc_by(now.consumer_lag as i64 - l.consumer_lag as i64);
        t.users.inc_by(now.users.len() as i64 - self.users as i64);
        self.users = now.users.len();
        self.last = Stats {
            users: Default::default(),
            drifted: Default::default(),
            fatal: Vec::new(),
            ..*now
        };
        self.at = Instant::now();
    }

    /// The last publication, at the worker's end.
    pub fn finish(mut self, now: &Stats) {
        self.publish(now);
        self.telemetry.workers_done.inc();
    }
}

/// `/metrics` served on an address while a run goes on; stopped when dropped.
#[derive(Debug)]
pub struct MetricsServer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    /// The address it listens on (the port chosen when the address gave 0).
    pub addr: std::net::SocketAddr,
}

impl MetricsServer {
    /// Listens on `addr` (`HOST:PORT`); an address that cannot be bound is an error naming it.
    pub fn start(addr: &str, telemetry: Arc<Telemetry>) -> Result<MetricsServer> {
        let listener = TcpListener::bind(addr).map_err(|e| {
            Error::stage(
                "metrics",
                format!("--metrics-addr {addr}: cannot listen there: {e}"),
            )
        })?;
        let bound = listener
            .local_addr()
            .map_err(|e| Error::stage("metrics", format!("--metrics-addr {addr}: {e}")))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("dfp-metrics".to_string())
            .spawn(move || {
                // Blocking: the thread sleeps until a scrape (or the stop's own connection).
                while !flag.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) if flag.load(Ordering::Relaxed) => drop(conn),
                        Ok((conn, _)) => answer(conn, &telemetry),
                        Err(e) => {
                            tracing::warn!(error = %e, "metrics: accepting a connection");
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
            })
            .map_err(|e| Error::stage("metrics", format!("starting the metrics server: {e}")))?;
        tracing::info!(addr = %bound, "serving /metrics");
        Ok(MetricsServer {
            stop,
            handle: Some(handle),
            addr: bound,
        })
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept; when that fails the thread is left to end with the process.
        if TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).is_ok()
            && let Some(h) = self.handle.take()
        {
            let _ = h.join();
        }
    }
}

/// Answers one request: `GET /metrics` with the metrics, anything else 404 (or 405).
fn answer(conn: TcpStream, telemetry: &Telemetry) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(&conn);
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    // The headers are read and ignored.
    let mut header = String::new();
    while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
        header.clear();
    }
    let mut parts = request.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, kind, body) = match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            telemetry.text(),
        ),
        (_, "/metrics") => ("405 Method Not Allowed", "text/plain", "GET only\n".into()),
        _ => (
            "404 Not Found",
            "text/plain",
            "dfp serves /metrics\n".into(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut w = &conn;
    let _ = w
        .write_all(head.as_bytes())
        .and_then(|()| w.write_all(body.as_bytes()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn workers_publish_differences_and_the_server_answers_in_prometheus_format() {
        let t = Arc::new(Telemetry::new());
        let server = MetricsServer::start("127.0.0.1:0", t.clone()).unwrap();
        let (mut a, b) = (Publisher::new(t.clone()), Publisher::new(t.clone()));
        let mut s = Stats {
            rows: 10,
            detections: 2,
            score_seconds: 0.5,
            ..Stats::default()
        };
        a.publish(&s);
        s.rows = 25;
        a.publish(&s);
        t.feedback(4, 3);
        b.finish(&Stats {
            rows: 5,
            ..Stats::default()
        });
        let text = get(server.addr, "/metrics");
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        for line in [
            "dfp_events_read_total 30",
            "dfp_detections_total 2",
            "dfp_scoring_seconds_total 0.5",
            "dfp_workers_finished 1",
            "dfp_feedback_judged_detections 4",
            "dfp_feedback_precision_ratio 0.75",
            "# TYPE dfp_input_bytes counter",
            "# EOF",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
        assert!(get(server.addr, "/").starts_with("HTTP/1.1 404"));
        let taken = MetricsServer::start(&server.addr.to_string(), t).unwrap_err();
        assert!(taken.to_string().contains("cannot listen"), "{taken}");
    }
}
