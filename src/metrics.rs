//! Prometheus metrics, cheap on the hot path.
//!
//! A request's figures (count by kind and status class, duration, body bytes, the app's
//! time) go into cells of the worker thread that served it (see [`crate::worker`]): each
//! worker owns a block of plain atomic counters on cache lines of its own, so recording
//! takes no lock, no hashing and no cache line another core is writing. Shared counters (and
//! `prometheus_client`'s histograms, which take a lock per sample) cost a cross-core cache
//! miss per update once two workers serve requests: with two threads recording at once,
//! ~15x the time of one (`cargo bench --bench metrics`). `/metrics` adds the workers'
//! cells up when it is scraped. Upstream and store errors are rare and use label families
//! directly.

mod process;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
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
    /// A request head the HTTP layer refused (malformed, or over the size limits) and
    /// answered itself, or one begun and not complete in time (408, unanswered): it never
    /// reached routing.
    Refused,
}

impl RequestKind {
    const ALL: [RequestKind; 5] = [
        RequestKind::Passthrough,
        RequestKind::Upload,
        RequestKind::Asset,
        RequestKind::Store,
        RequestKind::Refused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Passthrough => "passthrough",
            RequestKind::Upload => "upload",
            RequestKind::Asset => "asset",
            RequestKind::Store => "store",
            RequestKind::Refused => "refused",
        }
    }

    /// Its row in a worker's cells (the order of [`RequestKind::ALL`]).
    fn index(self) -> usize {
        self as usize
    }
}

/// Status classes; "other" holds the 600-999 an app may send (HTTP allows any three digits,
/// and offload passes them on), which are neither server errors nor anything else here.
const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

/// `status`'s index in [`CLASSES`].
fn status_class(status: StatusCode) -> usize {
    // `StatusCode` holds 100 to 999.
    usize::from(status.as_u16() / 100).clamp(1, 6) - 1
}

type CauseLabels = [(&'static str, &'static str); 1];

/// The causes of `offload_upstream_errors` (`ProxyError::cause`), each shown at 0 from the
/// start: a series that first appears with its first error has Prometheus's `increase()`
/// and `rate()` miss that error, and an alert on them wait for the next.
const UPSTREAM_ERROR_CAUSES: &[&str] = &[
    "connect",
    "timeout",
    "upstream",
    "body_not_taken",
    "busy",
    "bad_request",
    "not_implemented",
    "client_body",
    "client_stalled",
    "body_too_large",
    crate::proxy::ANSWER_CUT,
    crate::proxy::ANSWER_STALLED,
];
type StoreErrorLabels = [(&'static str, &'static str); 2];

/// The store's operations and its ways of failing (`Metrics::store_error`), each pair shown
/// at 0 from the start for the same reason as [`UPSTREAM_ERROR_CAUSES`].
const STORE_OPERATIONS: [&str; 5] = ["put", "head", "get", "delete", "list"];
pub(crate) const STORE_ERRORS: [&str; 3] = ["unavailable", "refused", "io"];
/// A `get` whose object's bytes stopped coming: the one failure of a body under way.
const STORE_INTERRUPTED: (&str, &str) = ("get", "interrupted");
type OperationLabels = [(&'static str, &'static str); 1];
type StoreTimes = Family<OperationLabels, Histogram, fn() -> Histogram>;

/// A store operation's time: 1 ms to ~16 s, doubling (then `+Inf`). The store is asked far
/// less often than requests come, so `prometheus_client`'s histogram (a lock per sample) is
/// fine here.
fn store_times() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}
type WorkerLabels = [(&'static str, String); 1];

/// Latency histograms' finite buckets: 1 ms to ~33 s, doubling (then `+Inf`).
const LATENCY_BUCKETS: usize = 16;

/// The proxy's metrics; cloning shares them.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    cells: Arc<WorkerCells>,
    upstream_errors: Family<CauseLabels, Counter>,
    store_errors: Family<StoreErrorLabels, Counter>,
    store_times: StoreTimes,
    open_connections: Family<WorkerLabels, Gauge>,
    max_connections: Gauge,
    connection_waits: Counter,
    upstream_max_connections: Gauge,
    app_places: AppPlaces,
    tls_certificate_expiry: Family<CertificateLabels, Gauge>,
}

/// The certificate file (`server.tls.cert`).
type CertificateLabels = [(&'static str, String); 1];

/// What `upstream.max_connections` shows (kept by the proxy as it admits requests to the
/// app): cloning shares them.
#[derive(Clone, Debug, Default)]
pub struct AppPlaces {
    /// Requests at the app now.
    pub active: Gauge,
    /// Requests waiting for a place now.
    pub queued: Gauge,
    /// Requests that found the limit reached and waited, ever.
    pub waits: Counter,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Metrics recorded by one worker (every thread shares its cells).
    pub fn new() -> Metrics {
        Metrics::for_workers(1)
    }

    /// Metrics with cells for `workers` worker threads (`server.worker_threads`, resolved).
    pub fn for_workers(workers: usize) -> Metrics {
        let cells = Arc::new(WorkerCells::new(workers));
        let upstream_errors = Family::<CauseLabels, Counter>::default();
        for &cause in UPSTREAM_ERROR_CAUSES {
            drop(upstream_errors.get_or_create(&[("cause", cause)]));
        }
        let store_errors = Family::<StoreErrorLabels, Counter>::default();
        let store_error_pairs = STORE_OPERATIONS
            .iter()
            .flat_map(|&operation| STORE_ERRORS.iter().map(move |&error| (operation, error)))
            .chain([STORE_INTERRUPTED]);
        for (operation, error) in store_error_pairs {
            drop(store_errors.get_or_create(&[("operation", operation), ("error", error)]));
        }
        let store_times = StoreTimes::new_with_constructor(store_times);
        let open_connections = Family::<WorkerLabels, Gauge>::default();
        let max_connections = Gauge::default();
        let connection_waits = Counter::default();
        let upstream_max_connections = Gauge::default();
        let app_places = AppPlaces::default();
        let tls_certificate_expiry = Family::<CertificateLabels, Gauge>::default();
        let view = |what| View {
            cells: Arc::clone(&cells),
            what,
        };
        let mut registry = Registry::default();
        registry.register(
            "offload_requests",
            "Requests answered, by kind and status class",
            view(Figure::Requests),
        );
        registry.register(
            "offload_request_duration_seconds",
            "Time from request head to the last response byte, by kind",
            view(Figure::Durations),
        );
        registry.register(
            "offload_upstream_response_seconds",
            "Time the app took to send its response head",
            view(Figure::UpstreamDuration),
        );
        registry.register(
            "offload_request_body_bytes",
            "Request body bytes received from clients",
            view(Figure::BytesIn),
        );
        registry.register(
            "offload_response_body_bytes",
            "Response body bytes sent to clients",
            view(Figure::BytesOut),
        );
        registry.register(
            "offload_upstream_errors",
            "Requests that could not be forwarded or answers cut short, by cause: the app's \
             (connect, timeout, upstream, body_not_taken, busy, answer_cut, answer_stalled) or \
             the client's (bad_request, not_implemented, \
             client_body, client_stalled, body_too_large)",
            upstream_errors.clone(),
        );
        registry.register(
            "offload_store_errors",
            "Store operations that failed on the store's side, by operation and error",
            store_errors.clone(),
        );
        registry.register(
            "offload_store_response_seconds",
            "Time the store took to answer, by operation (head; get: to the object's first bytes; delete)",
            store_times.clone(),
        );
        registry.register(
            "offload_open_connections",
            "Client connections open, by worker thread",
            open_connections.clone(),
        );
        registry.register(
            "offload_max_connections",
            "server.max_connections: client connections open at most, all workers together",
            max_connections.clone(),
        );
        registry.register(
            "offload_connection_waits",
            "Times every slot was taken (server.max_connections reached): connections that come \
             meanwhile wait in the listen backlog",
            connection_waits.clone(),
        );
        registry.register(
            "offload_upstream_max_connections",
            "upstream.max_connections: requests at the app at once at most, all workers together (0: no limit)",
            upstream_max_connections.clone(),
        );
        registry.register(
            "offload_upstream_active_requests",
            "Requests at the app now (counted while upstream.max_connections is set)",
            app_places.active.clone(),
        );
        registry.register(
            "offload_upstream_queued_requests",
            "Requests waiting for a place at the app now (upstream.max_connections)",
            app_places.queued.clone(),
        );
        registry.register(
            "offload_upstream_waits",
            "Requests that found upstream.max_connections requests at the app and waited for a place",
            app_places.waits.clone(),
        );
        registry.register(
            "offload_tls_certificate_expiry_timestamp_seconds",
            "When the certificate served (server.tls.cert) expires, in seconds since the Unix epoch, as read at start and at each reload",
            tls_certificate_expiry.clone(),
        );
        registry.register_collector(Box::new(process::ProcessCollector));
        Metrics {
            inner: Arc::new(Inner {
                registry,
                cells,
                upstream_errors,
                store_errors,
                store_times,
                open_connections,
                max_connections,
                connection_waits,
                upstream_max_connections,
                app_places,
                tls_certificate_expiry,
            }),
        }
    }

    /// The certificate file `cert` serves a certificate that expires `at`.
    pub fn tls_certificate_expires(&self, cert: &str, at: SystemTime) {
        let seconds = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.inner
            .tls_certificate_expiry
            .get_or_create(&[("cert", cert.to_owned())])
            .set(i64::try_from(seconds).unwrap_or(i64::MAX));
    }

    /// Records one finished request, in this worker's cells.
    pub fn request(
        &self,
        kind: RequestKind,
        status: StatusCode,
        took: Duration,
        bytes_in: u64,
        bytes_out: u64,
    ) {
        let cells = self.inner.cells.mine();
        cells.requests[kind.index()][status_class(status)].fetch_add(1, Relaxed);
        cells.durations[kind.index()].observe(took);
        cells.bytes_in.fetch_add(bytes_in, Relaxed);
        cells.bytes_out.fetch_add(bytes_out, Relaxed);
    }

    /// Counts a request head refused with `status` (kind `refused`), in this worker's cells.
    /// Neither a duration nor body bytes: the head never completed, and there is no body.
    pub fn refused(&self, status: StatusCode) {
        let cells = self.inner.cells.mine();
        cells.requests[RequestKind::Refused.index()][status_class(status)].fetch_add(1, Relaxed);
    }

    /// Records how long the app took to answer, in this worker's cells.
    pub fn upstream_response(&self, took: Duration) {
        self.inner.cells.mine().upstream_duration.observe(took);
    }

    /// Counts a failure reaching the app (`cause` from `ProxyError::cause`).
    pub fn upstream_error(&self, cause: &'static str) {
        self.inner
            .upstream_errors
            .get_or_create(&[("cause", cause)])
            .inc();
    }

    /// Counts a store operation (`put`, `get`, …) that failed on the store's side: `error` is
    /// `unavailable`, `refused`, `io` or `interrupted` (an object's bytes stopped coming).
    pub fn store_error(&self, operation: &'static str, error: &'static str) {
        self.inner
            .store_errors
            .get_or_create(&[("operation", operation), ("error", error)])
            .inc();
    }

    /// Counts a `get` whose object's bytes stopped coming midway.
    pub fn store_interrupted(&self) {
        let (operation, error) = STORE_INTERRUPTED;
        self.store_error(operation, error);
    }

    /// Records how long the store took to answer an `operation`, failures included.
    pub fn store_answered(&self, operation: &'static str, took: Duration) {
        self.inner
            .store_times
            .get_or_create(&[("operation", operation)])
            .observe(took.as_secs_f64());
    }

    /// The count of client connections open on `worker` (the server keeps it).
    pub fn open_connections(&self, worker: usize) -> Gauge {
        self.inner
            .open_connections
            .get_or_create(&[("worker", worker.to_string())])
            .clone()
    }

    /// Sets the connection limit shown (`server.max_connections`, resolved).
    pub fn max_connections(&self, limit: usize) {
        self.inner
            .max_connections
            .set(i64::try_from(limit).unwrap_or(i64::MAX));
    }

    /// Counts a connection that found every slot taken.
    pub fn connection_waited(&self) {
        self.inner.connection_waits.inc();
    }

    /// Shows `upstream.max_connections` as `max` (0: no limit) and returns where the
    /// requests at the app and waiting for a place under it are counted. The counts are
    /// shared by every upstream built on these metrics, so that requests still at the app
    /// from before a reload are counted with the new ones.
    pub fn app_places(&self, max: usize) -> AppPlaces {
        self.inner
            .upstream_max_connections
            .set(i64::try_from(max).unwrap_or(i64::MAX));
        self.inner.app_places.clone()
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &self.inner.registry)?;
        Ok(out)
    }
}

/// Every worker's block of request figures.
struct WorkerCells {
    blocks: Box<[Block]>,
}

impl WorkerCells {
    fn new(workers: usize) -> WorkerCells {
        WorkerCells {
            blocks: (0..workers.max(1)).map(|_| Block::default()).collect(),
        }
    }

    /// The calling worker's block.
    fn mine(&self) -> &Block {
        crate::worker::mine(&self.blocks)
    }

    /// One cell, summed over the workers.
    fn total(&self, cell: impl Fn(&Block) -> &AtomicU64) -> u64 {
        self.blocks
            .iter()
            .map(|block| cell(block).load(Relaxed))
            .sum()
    }

    /// One latency histogram, summed over the workers.
    fn latency(&self, cells: impl Fn(&Block) -> &LatencyCells) -> Latency {
        // In seconds, as Prometheus has them; 2^i ms divides exactly, as doubling does.
        let bounds = LATENCY_BOUNDS_NANOS
            .iter()
            .map(|&nanos| nanos as f64 / 1e9)
            .chain(std::iter::once(f64::MAX));
        let buckets: Vec<(f64, u64)> = bounds
            .enumerate()
            .map(|(i, bound)| (bound, self.total(|block| &cells(block).buckets[i])))
            .collect();
        let sum_micros = self.total(|block| &cells(block).sum_micros);
        Latency {
            count: buckets.iter().map(|(_, count)| count).sum(),
            sum_seconds: sum_micros as f64 / 1e6,
            buckets,
        }
    }
}

/// One worker's request figures, written by that worker (atomics all the same, so that
/// threads sharing a block stay correct), on cache lines no other worker writes.
#[repr(align(128))]
#[derive(Default)]
struct Block {
    /// `[kind][status class]`
    requests: [[AtomicU64; CLASSES.len()]; RequestKind::ALL.len()],
    /// `[kind]`
    durations: [LatencyCells; RequestKind::ALL.len()],
    upstream_duration: LatencyCells,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

/// A latency histogram's counts in one worker: samples per bucket (not cumulative; the last
/// is `+Inf`) and their sum in microseconds.
#[derive(Default)]
struct LatencyCells {
    buckets: [AtomicU64; LATENCY_BUCKETS + 1],
    sum_micros: AtomicU64,
}

/// The finite buckets' upper bounds in nanoseconds: 1 ms, 2 ms, 4 ms…
const LATENCY_BOUNDS_NANOS: [u64; LATENCY_BUCKETS] = {
    let mut bounds = [0; LATENCY_BUCKETS];
    let mut i = 0;
    while i < LATENCY_BUCKETS {
        bounds[i] = 1_000_000 << i;
        i += 1;
    }
    bounds
};

impl LatencyCells {
    fn observe(&self, took: Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BOUNDS_NANOS
            .iter()
            .position(|&bound| nanos <= bound)
            .unwrap_or(LATENCY_BUCKETS);
        self.buckets[bucket].fetch_add(1, Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Relaxed);
    }
}

/// A latency histogram as Prometheus encodes it.
struct Latency {
    sum_seconds: f64,
    count: u64,
    /// Upper bound and samples of each bucket, not cumulative.
    buckets: Vec<(f64, u64)>,
}

impl Latency {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        encoder.encode_histogram::<NoLabelSet>(self.sum_seconds, self.count, &self.buckets, None)
    }
}

/// Which figure of the workers' cells a [`View`] shows.
#[derive(Debug, Clone, Copy)]
enum Figure {
    Requests,
    Durations,
    UpstreamDuration,
    BytesIn,
    BytesOut,
}

/// A registered metric: one figure, summed over the workers' cells when scraped.
struct View {
    cells: Arc<WorkerCells>,
    what: Figure,
}

impl fmt::Debug for View {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("View").field("what", &self.what).finish()
    }
}

impl EncodeMetric for View {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        let cells = &self.cells;
        match self.what {
            Figure::Requests => {
                for kind in RequestKind::ALL {
                    for (class_index, class) in CLASSES.into_iter().enumerate() {
                        let count = cells.total(|block| &block.requests[kind.index()][class_index]);
                        encoder
                            .encode_family(&[("kind", kind.as_str()), ("class", class)])?
                            .encode_counter::<NoLabelSet, _, u64>(&count, None)?;
                    }
                }
                Ok(())
            }
            Figure::Durations => {
                // A refused head has no duration to show (see `Metrics::refused`).
                for kind in RequestKind::ALL
                    .into_iter()
                    .filter(|k| *k != RequestKind::Refused)
                {
                    let latency = cells.latency(|block| &block.durations[kind.index()]);
                    latency.encode(encoder.encode_family(&[("kind", kind.as_str())])?)?;
                }
                Ok(())
            }
            Figure::UpstreamDuration => cells
                .latency(|block| &block.upstream_duration)
                .encode(encoder),
            Figure::BytesIn => {
                encoder.encode_counter::<NoLabelSet, _, u64>(&cells.total(|b| &b.bytes_in), None)
            }
            Figure::BytesOut => {
                encoder.encode_counter::<NoLabelSet, _, u64>(&cells.total(|b| &b.bytes_out), None)
            }
        }
    }

    fn metric_type(&self) -> MetricType {
        match self.what {
            Figure::Durations | Figure::UpstreamDuration => MetricType::Histogram,
            Figure::Requests | Figure::BytesIn | Figure::BytesOut => MetricType::Counter,
        }
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
        m.request(
            RequestKind::Passthrough,
            StatusCode::from_u16(999).unwrap(),
            Duration::from_millis(3),
            0,
            0,
        );
        m.upstream_error("connect");
        let text = m.encode().unwrap();
        assert!(
            text.contains("offload_requests_total{kind=\"passthrough\",class=\"other\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("offload_requests_total{kind=\"passthrough\",class=\"5xx\"} 0"),
            "an app's 999 is no server error: {text}"
        );
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
        // The others are there from the start.
        for cause in UPSTREAM_ERROR_CAUSES.iter().filter(|&&c| c != "connect") {
            let line = format!("offload_upstream_errors_total{{cause=\"{cause}\"}} 0\n");
            assert!(text.contains(&line), "{line}{text}");
        }
        // So are the store's failures, every operation with every error.
        for operation in STORE_OPERATIONS {
            for error in STORE_ERRORS {
                let line = format!(
                    "offload_store_errors_total{{operation=\"{operation}\",error=\"{error}\"}} 0\n"
                );
                assert!(text.contains(&line), "{line}{text}");
            }
        }
        let interrupted = "offload_store_errors_total{operation=\"get\",error=\"interrupted\"} 0\n";
        assert!(text.contains(interrupted), "{text}");
    }

    /// The line of `text` for `series` (a metric name with its labels), as a number.
    fn value(text: &str, series: &str) -> f64 {
        let line = text
            .lines()
            .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"));
        line[series.len()..].trim().parse().unwrap()
    }

    #[test]
    fn each_worker_records_in_its_own_cells_and_scrapes_see_the_sum() {
        let m = Metrics::for_workers(2);
        std::thread::scope(|s| {
            // Worker 5 of 2 shares a block with another worker: still counted.
            for (worker, millis) in [(0, 3), (1, 3), (1, 40), (5, 2000)] {
                let m = &m;
                s.spawn(move || {
                    crate::worker::set_current(worker);
                    let took = Duration::from_millis(millis);
                    m.request(RequestKind::Passthrough, StatusCode::OK, took, 100, 1000);
                    m.upstream_response(took / 2);
                });
            }
        });
        let text = m.encode().unwrap();
        let requests = "offload_requests_total{kind=\"passthrough\",class=\"2xx\"}";
        assert_eq!(value(&text, requests), 4.0);
        assert_eq!(value(&text, "offload_request_body_bytes_total"), 400.0);
        assert_eq!(value(&text, "offload_response_body_bytes_total"), 4000.0);
        let duration = "offload_request_duration_seconds";
        let kind = "kind=\"passthrough\"";
        assert_eq!(value(&text, &format!("{duration}_count{{{kind}}}")), 4.0);
        assert!((value(&text, &format!("{duration}_sum{{{kind}}}")) - 2.046).abs() < 1e-9);
        for (le, cumulative) in [
            ("0.002", 0.0),
            ("0.004", 2.0),
            ("0.064", 3.0),
            ("2.048", 4.0),
        ] {
            let bucket = format!("{duration}_bucket{{le=\"{le}\",{kind}}}");
            assert_eq!(value(&text, &bucket), cumulative, "{bucket}");
        }
        let upstream = "offload_upstream_response_seconds";
        assert_eq!(value(&text, &format!("{upstream}_count")), 4.0);
        assert_eq!(
            value(&text, &format!("{upstream}_bucket{{le=\"0.002\"}}")),
            2.0
        );
    }

    #[test]
    fn a_bucket_holds_samples_up_to_its_bound() {
        let m = Metrics::new();
        m.upstream_response(Duration::from_millis(1));
        m.upstream_response(Duration::from_millis(1) + Duration::from_nanos(1));
        m.upstream_response(Duration::from_secs(3600));
        let text = m.encode().unwrap();
        let upstream = "offload_upstream_response_seconds_bucket";
        assert_eq!(value(&text, &format!("{upstream}{{le=\"0.001\"}}")), 1.0);
        assert_eq!(value(&text, &format!("{upstream}{{le=\"0.002\"}}")), 2.0);
        assert_eq!(value(&text, &format!("{upstream}{{le=\"32.768\"}}")), 2.0);
        assert_eq!(value(&text, &format!("{upstream}{{le=\"+Inf\"}}")), 3.0);
    }
}
