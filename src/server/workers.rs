//! The threads that serve connections: `server.worker_threads` of them, each running a
//! single-threaded runtime of its own, as nginx runs single-threaded worker processes.
//!
//! Why not one work-stealing runtime for all: a small pass-through request is a handful of
//! wake-ups between the client's connection, the app's connection and the request, and on a
//! work-stealing runtime those hop between threads (a woken task is queued where its waker
//! ran, idle threads are woken to steal, each socket's events arrive on whichever thread
//! polls the I/O driver). Here a connection stays on the worker it was given for its life,
//! and its requests take app connections from that worker's own keep-alive list
//! ([`crate::worker::set_current`]), so a request's I/O never leaves its thread.
//! The price is nginx's too: a connection whose request keeps its thread busy (hashing,
//! rewriting) delays the others on that thread, where work stealing would move them.
//!
//! Worker 0 is the runtime that runs the server: it also accepts, and runs the admin
//! listener and background tasks. The others get a thread each. A new connection goes to
//! the worker with the fewest open connections (`offload_open_connections{worker}`).

use std::future::Future;
use std::io;

use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::metrics::Metrics;

/// The running workers; dropping this ends the worker threads (and drops what still runs
/// on them).
pub(super) struct Workers {
    workers: Vec<Worker>,
    _stop: DropGuard,
}

struct Worker {
    runtime: Handle,
    /// Connections open on this worker (a metric too).
    open: Gauge,
}

impl Workers {
    /// `count` workers: the current runtime and `count - 1` threads, counting their open
    /// connections in `metrics`; the threads buffer up to `log_buffer` bytes of log lines
    /// (see `crate::logging`).
    pub(super) fn start(count: usize, metrics: &Metrics, log_buffer: usize) -> io::Result<Workers> {
        let stop = CancellationToken::new();
        let mut workers = vec![Worker {
            runtime: Handle::current(),
            open: metrics.open_connections(0),
        }];
        for index in 1..count {
            workers.push(Worker {
                runtime: start_thread(index, stop.clone(), log_buffer)?,
                open: metrics.open_connections(index),
            });
        }
        Ok(Workers {
            workers,
            _stop: stop.drop_guard(),
        })
    }

    /// Serves `stream` with `serve` on the worker with the fewest open connections, as a
    /// task `tracker` tracks.
    pub(super) fn serve<F, Fut>(&self, stream: TcpStream, tracker: &TaskTracker, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (index, worker) = self.least_busy();
        let open = Open::count(&worker.open);
        if index == 0 {
            worker.runtime.spawn(tracker.track_future(async move {
                let _open = open;
                serve(stream).await;
            }));
            return;
        }
        // The socket is registered with this runtime's I/O driver: move it to the worker's.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => return warn!(error = %e, "handing a connection to a worker failed"),
        };
        worker.runtime.spawn(tracker.track_future(async move {
            let _open = open;
            match TcpStream::from_std(stream) {
                Ok(stream) => serve(stream).await,
                Err(e) => warn!(error = %e, "handing a connection to a worker failed"),
            }
        }));
    }

    /// What tells whether the workers still run tasks.
    pub(super) fn liveness(&self) -> Liveness {
        Liveness(self.workers.iter().map(|w| w.runtime.clone()).collect())
    }

    fn least_busy(&self) -> (usize, &Worker) {
        self.workers
            .iter()
            .enumerate()
            .min_by_key(|(_, w)| w.open.get())
            .unwrap_or((0, &self.workers[0]))
    }
}

/// The workers' runtimes, to check that they still run tasks.
pub(super) struct Liveness(Vec<Handle>);

impl Liveness {
    /// Resolves once every worker has run a task queued now: never while one is stuck in a
    /// long poll (a bug, a blocking call), which systemd's watchdog is there to catch.
    pub(super) async fn all_ran(&self) {
        for runtime in &self.0 {
            // A worker that has stopped cancels the task at once: nothing to wait for.
            let _ = runtime.spawn(async {}).await;
        }
    }
}

/// Worker `index`'s thread: a single-threaded runtime that runs what is spawned on it until
/// `stop`, and writes out its buffered log lines whenever it runs out of work.
fn start_thread(index: usize, stop: CancellationToken, log_buffer: usize) -> io::Result<Handle> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_park(crate::logging::flush_this_thread)
        .build()?;
    let handle = runtime.handle().clone();
    std::thread::Builder::new()
        .name(format!("offload-worker-{index}"))
        .spawn(move || {
            crate::worker::set_current(index);
            let _lines = crate::logging::buffer_this_thread(log_buffer);
            runtime.block_on(stop.cancelled());
        })?;
    Ok(handle)
}

/// One open connection in a worker's count, for as long as this lives.
struct Open(Gauge);

impl Open {
    fn count(open: &Gauge) -> Open {
        open.inc();
        Open(open.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    use super::*;

    /// What a served connection reports: the thread it ran on and what it read.
    type Served = (Option<String>, u8);

    /// Serves a connection by echoing its first byte, reporting where it ran, then holding
    /// the connection until the task is dropped (which `dropped` hears of).
    async fn echo_and_hold(
        mut stream: TcpStream,
        served: mpsc::UnboundedSender<Served>,
        dropped: mpsc::UnboundedSender<()>,
    ) {
        struct Hold(mpsc::UnboundedSender<()>);
        impl Drop for Hold {
            fn drop(&mut self) {
                let _ = self.0.send(());
            }
        }
        let _hold = Hold(dropped);
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.expect("a byte");
        stream.write_all(&byte).await.expect("echo");
        let name = std::thread::current().name().map(str::to_string);
        served.send((name, byte[0])).expect("test listening");
        std::future::pending::<()>().await;
    }

    #[tokio::test]
    async fn connections_spread_over_the_workers_and_stop_with_them() {
        let workers = Workers::start(3, &Metrics::new(), 0).expect("workers start");
        let tracker = TaskTracker::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let (served_tx, mut served) = mpsc::unbounded_channel();
        let (dropped_tx, mut dropped) = mpsc::unbounded_channel();
        let mut clients = Vec::new();
        for n in 0..3u8 {
            let mut client = TcpStream::connect(addr).await.expect("connect");
            let (stream, _) = listener.accept().await.expect("accept");
            let (s, d) = (served_tx.clone(), dropped_tx.clone());
            workers.serve(stream, &tracker, move |stream| echo_and_hold(stream, s, d));
            // The moved socket works on its worker's own I/O driver.
            client.write_all(&[b'a' + n]).await.expect("send");
            let mut echo = [0u8; 1];
            client.read_exact(&mut echo).await.expect("echo");
            assert_eq!(echo[0], b'a' + n);
            clients.push(client);
        }
        let mut threads = Vec::new();
        for _ in 0..3 {
            threads.push(served.recv().await.expect("served").0);
        }
        let here = std::thread::current().name().map(str::to_string);
        assert!(
            threads.contains(&here),
            "worker 0 is this runtime: {threads:?}"
        );
        for worker in ["offload-worker-1", "offload-worker-2"] {
            assert!(
                threads.contains(&Some(worker.to_string())),
                "one connection each: {threads:?}"
            );
        }
        // Stopping ends the worker threads, and the connections held on them with them.
        drop(workers);
        for _ in 0..2 {
            tokio::time::timeout(Duration::from_secs(2), dropped.recv())
                .await
                .expect("a worker's connection dropped")
                .expect("sender alive");
        }
        // The tracker lets go of a task just after the task's own state is dropped.
        for _ in 0..100 {
            if tracker.len() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(tracker.len(), 1, "worker 0's connection is still served");
    }

    #[tokio::test]
    async fn one_worker_is_the_current_runtime() {
        let workers = Workers::start(1, &Metrics::new(), 0).expect("workers start");
        assert_eq!(workers.workers.len(), 1);
        assert_eq!(workers.least_busy().0, 0);
    }

    #[tokio::test]
    async fn all_ran_waits_for_a_worker_stuck_in_a_poll() {
        let workers = Workers::start(3, &Metrics::new(), 0).expect("workers start");
        let liveness = workers.liveness();
        tokio::time::timeout(Duration::from_secs(5), liveness.all_ran())
            .await
            .expect("idle workers run a task at once");

        // Worker 2's thread blocks inside a task until released.
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = tokio::sync::oneshot::channel();
        workers.workers[2].runtime.spawn(async move {
            let _ = started_tx.send(());
            let _ = released.recv();
        });
        started.await.expect("the blocking task started");
        let mut ran = std::pin::pin!(liveness.all_ran());
        assert!(
            tokio::time::timeout(Duration::from_millis(300), &mut ran)
                .await
                .is_err(),
            "a stuck worker holds the check back"
        );
        release.send(()).expect("the blocked task listens");
        tokio::time::timeout(Duration::from_secs(5), ran)
            .await
            .expect("the check completes once the worker runs again");
    }
}
