//! `dfp serve`'s Prometheus metrics (served on the admin API's `/metrics`): requests and
//! records by outcome, busy replies, state writes that lost a compare-and-set and were
//! redone, and the time a request takes from its arrival to its reply. One `dfp_serve_`
//! prefix, base units, no user id as a label.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// The counters one instance keeps.
pub struct Metrics {
    registry: Registry,
    /// Requests answered (busy replies included).
    pub requests: Counter,
    /// Requests answered "busy".
    pub busy: Counter,
    /// Records scored.
    pub scored: Counter,
    /// Records answered with an error.
    pub failed: Counter,
    /// Detections among the scored records.
    pub detections: Counter,
    /// Users' state writes redone because another request wrote first.
    pub conflicts: Counter,
    /// Seconds from a request's arrival to its reply.
    pub seconds: Histogram,
}

impl Metrics {
    /// Fresh counters, registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("dfp_serve");
        let requests = Counter::default();
        let busy = Counter::default();
        let scored = Counter::default();
        let failed = Counter::default();
        let detections = Counter::default();
        let conflicts = Counter::default();
        // 0.1 ms to about 3 s.
        let seconds = Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
            1e-4, 2.0, 16,
        ));
        registry.register("requests", "Requests answered", requests.clone());
        registry.register("busy", "Requests answered busy", busy.clone());
        registry.register("records_scored", "Records scored", scored.clone());
        registry.register(
            "records_failed",
            "Records answered with an error",
            failed.clone(),
        );
        registry.register(
            "detections",
            "Scored records that are detections",
            detections.clone(),
        );
        registry.register(
            "state_conflicts",
            "Users scored again because another instance extended their state first",
            conflicts.clone(),
        );
        registry.register_with_unit(
            "request",
            "Time from a request's arrival to its reply",
            Unit::Seconds,
            seconds.clone(),
        );
        Metrics {
            registry,
            requests,
            busy,
            scored,
            failed,
            detections,
            conflicts,
            seconds,
        }
    }

    /// The Prometheus text exposition.
    pub fn text(&self) -> String {
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding the metrics");
        }
        out
    }
}
