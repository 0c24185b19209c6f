//! Prometheus metrics, cheap on the hot path.
//!
//! Every label combination a request can produce is resolved once at start-up into plain
//! counters and histograms (atomics behind an `Arc`), so recording a request takes no lock
//! and no hashing. Upstream errors are rare and use the label family directly.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Which of the ways through the proxy answered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// Forwarded to the app as it is.
    Passthrough,
    /// Matched an upload route.
    Upload,
    /// A managed asset (the app's answer, or the store's on the app's 404).
    Asset,
    /// Served from the filesystem store's own URL prefix.
    Store,
}

impl RequestKind {
    const ALL: [RequestKind; 4] = [
        RequestKind::Passthrough,
        RequestKind::Upload,
        RequestKind::Asset,
        RequestKind::Store,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Passthrough => "passthrough",
            RequestKind::Upload => "upload",
            RequestKind::Asset => "asset",
            RequestKind::Store => "store",
        }
    }
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

type Labels = [(&'static str, &'static str); 2];
type CauseLabels = [(&'static str, &'static str); 1];
type WorkerLabels = [(&'static str, String); 1];

/// The proxy's metrics; cloning shares them.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    /// `[kind][status class]`
    requests: Vec<[Counter; 5]>,
    /// `[kind]`
    durations: Vec<Histogram>,
    upstream_duration: Histogram,
    bytes_in: Counter,
    bytes_out: Counter,
    upstream_errors: Family<CauseLabels, Counter>,
    open_connections: Family<WorkerLabels, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// 1 ms to ~33 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests_family = Family::<Labels, Counter>::default();
        let durations_family =
            Family::<[(&str, &str); 1], Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        let requests = RequestKind::ALL
            .iter()
            .map(|kind| {
                CLASSES.map(|class| {
                    requests_family
                        .get_or_create(&[("kind", kind.as_str()), ("class", class)])
                        .clone()
                })
            })
            .collect();
        let durations = RequestKind::ALL
            .iter()
            .map(|kind| {
                durations_family
                    .get_or_create(&[("kind", kind.as_str())])
                    .clone()
            })
            .collect();
        let upstream_duration = latency_histogram();
        let bytes_in = Counter::default();
        let bytes_out = Counter::default();
        let upstream_errors = Family::<CauseLabels, Counter>::default();
        let open_connections = Family::<WorkerLabels, Gauge>::default();

        registry.register(
            "offload_requests",
            "Requests answered, by kind and status class",
            requests_family,
        );
        registry.register(
            "offload_request_duration_seconds",
            "Time from request head to the last response byte, by kind",
            durations_family,
        );
        registry.register(
            "offload_upstream_response_seconds",
            "Time the app took to send its response head",
            upstream_duration.clone(),
        );
        registry.register(
            "offload_request_body_bytes",
            "Request body bytes received from clients",
            bytes_in.clone(),
        );
        registry.register(
            "offload_response_body_bytes",
            "Response body bytes sent to clients",
            bytes_out.clone(),
        );
        registry.register(
            "offload_upstream_errors",
            "Failures reaching the app, by cause",
            upstream_errors.clone(),
        );
        registry.register(
            "offload_open_connections",
            "Client connections open, by worker thread",
            open_connections.clone(),
        );
        Metrics {
            inner: Arc::new(Inner {
                registry,
                requests,
                durations,
                upstream_duration,
                bytes_in,
                bytes_out,
                upstream_errors,
                open_connections,
            }),
        }
    }

    /// Records one finished request.
    pub fn request(
        &self,
        kind: RequestKind,
        status: StatusCode,
        took: Duration,
        bytes_in: u64,
        bytes_out: u64,
    ) {
        let kind_index = RequestKind::ALL
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(0);
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        if let Some(row) = self.inner.requests.get(kind_index) {
            row[class].inc();
        }
        if let Some(h) = self.inner.durations.get(kind_index) {
            h.observe(took.as_secs_f64());
        }
        self.inner.bytes_in.inc_by(bytes_in);
        self.inner.bytes_out.inc_by(bytes_out);
    }

    /// Records how long the app took to answer.
    pub fn upstream_response(&self, took: Duration) {
        self.inner.upstream_duration.observe(took.as_secs_f64());
    }

    /// Counts a failure reaching the app (`cause` from `ProxyError::cause`).
    pub fn upstream_error(&self, cause: &'static str) {
        self.inner
            .upstream_errors
            .get_or_create(&[("cause", cause)])
            .inc();
    }

    /// The count of client connections open on `worker` (the server keeps it).
    pub fn open_connections(&self, worker: usize) -> Gauge {
        self.inner
            .open_connections
            .get_or_create(&[("worker", worker.to_string())])
            .clone()
    }

    /// The registry, for modules that register metrics of their own at start-up.
    /// (Registration needs `&mut`, so it must happen before the metrics are shared.)
    pub fn registry_mut(&mut self) -> Option<&mut Registry> {
        Arc::get_mut(&mut self.inner).map(|inner| &mut inner.registry)
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &self.inner.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_counted_under_its_kind_and_class() {
        let m = Metrics::new();
        m.request(
            RequestKind::Passthrough,
            StatusCode::OK,
            Duration::from_millis(3),
            10,
            20,
        );
        m.request(
            RequestKind::Asset,
            StatusCode::NOT_FOUND,
            Duration::from_millis(3),
            0,
            5,
        );
        m.upstream_error("connect");
        let text = m.encode().unwrap();
        assert!(
            text.contains("offload_requests_total{kind=\"passthrough\",class=\"2xx\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("offload_requests_total{kind=\"asset\",class=\"4xx\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("offload_response_body_bytes_total 25"),
            "{text}"
        );
        assert!(
            text.contains("offload_upstream_errors_total{cause=\"connect\"} 1"),
            "{text}"
        );
    }
}
