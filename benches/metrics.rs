//! Recording a request's metrics from one worker thread, and from two at once: with cells
//! shared by both threads (every update a cache line the other core wrote last), with a
//! block of cells per worker (what `server.worker_threads` > 1 uses), and, as the baseline
//! offload used before, with `prometheus_client`'s shared counters and histograms (a lock
//! per sample). The time is per request per thread; two threads on cells of their own
//! should cost what one does.

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use http::StatusCode;
use offload::metrics::{Metrics, RequestKind};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// What recording a request did before per-worker cells: shared `prometheus_client` metrics.
#[derive(Clone)]
struct Shared {
    requests: Counter,
    duration: Histogram,
    upstream: Histogram,
    bytes_in: Counter,
    bytes_out: Counter,
}

impl Shared {
    fn new() -> Shared {
        let histogram = || Histogram::new(exponential_buckets(0.001, 2.0, 16));
        Shared {
            requests: Counter::default(),
            duration: histogram(),
            upstream: histogram(),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
        }
    }

    fn record(&self, requests: u64) {
        for i in 0..requests {
            let took = Duration::from_micros(900 + i % 200);
            self.requests.inc();
            self.duration.observe(took.as_secs_f64());
            self.bytes_in.inc_by(0);
            self.bytes_out.inc_by(1024);
            self.upstream.observe((took / 2).as_secs_f64());
        }
    }
}

/// Records `requests` requests as worker `worker`, as the proxy does for each one.
fn record(metrics: &Metrics, worker: usize, requests: u64) {
    offload::worker::set_current(worker);
    for i in 0..requests {
        let took = Duration::from_micros(900 + i % 200);
        metrics.request(RequestKind::Passthrough, StatusCode::OK, took, 0, 1024);
        metrics.upstream_response(took / 2);
    }
}

/// Wall time for `threads` threads (workers 0, 1, …) to record `requests` each.
fn run(metrics: &Metrics, threads: usize, requests: u64) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for worker in 0..threads {
            s.spawn(move || record(metrics, worker, requests));
        }
    });
    start.elapsed()
}

fn metrics(c: &mut Criterion) {
    let mut group = c.benchmark_group("metrics_record");
    let cases = [
        ("one thread", 1, Metrics::for_workers(1)),
        ("two threads, shared cells", 2, Metrics::for_workers(1)),
        ("two threads, cells per worker", 2, Metrics::for_workers(2)),
    ];
    for (name, threads, metrics) in cases {
        group.bench_function(name, |b| b.iter_custom(|n| run(&metrics, threads, n)));
    }
    let shared = Shared::new();
    group.bench_function("two threads, prometheus_client (before)", |b| {
        b.iter_custom(|n| {
            let start = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..2 {
                    s.spawn(|| shared.record(n));
                }
            });
            start.elapsed()
        })
    });
    group.finish();
}

criterion_group!(benches, metrics);
criterion_main!(benches);
