//! HTTP/2 streams: hyper runs each request of an HTTP/2 connection as a task of its own,
//! spawned through the builder's executor. [`StreamExecutor`] wraps each such task so that
//! an answer that stops moving for `server.idle_timeout` has its stream reset, whichever
//! side stopped it, as nginx's `send_timeout` and `proxy_read_timeout` reset an HTTP/2
//! stream.
//!
//! A client stops an HTTP/2 answer by granting it no more flow-control window. hyper then
//! waits for window before it polls the answer's body again, so no timer in the body runs;
//! and the connection's watchdog, which on HTTP/1 sees the socket stand still, sees the
//! connection's other streams and pings move. Left alone, such a stream kept its app
//! connection (and the app's worker) for as long as the client kept the connection: one
//! client could hold `server.http2_max_concurrent_streams` of them for a PING a second.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::debug;

tokio::task_local! {
    /// The answer watch of the stream whose task is running.
    static STREAM: Arc<AnswerWatch>;
}

/// Spawns each HTTP/2 stream hyper hands it on the current worker, watched by an
/// [`AnswerWatch`] that the stream's request handler finds with [`watch_answer`].
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct StreamExecutor;

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, stream: F) {
        tokio::spawn(watched(stream));
    }
}

/// Runs `stream` until it ends, or until its answer stands still past its limit: then it is
/// dropped, and h2 resets the stream (`CANCEL`), which drops the app's connection with it.
async fn watched(stream: impl Future<Output = ()>) {
    let watch = Arc::new(AnswerWatch::new());
    let stalled = Arc::clone(&watch);
    let watched = async move {
        tokio::select! {
            biased;
            () = stream => {}
            limit = stalled.stalled() => {
                debug!(?limit, "an HTTP/2 answer stood still; resetting its stream");
            }
        }
    };
    STREAM.scope(watch, watched).await;
}

/// The answer watch of the HTTP/2 stream being handled, armed with `limit`: from now on
/// the answer must move (its body yield a piece, see [`AnswerWatch::moved`]) at least once
/// per `limit`. `None` outside an HTTP/2 stream's task.
pub(super) fn watch_answer(limit: Duration) -> Option<Arc<AnswerWatch>> {
    STREAM
        .try_with(|watch| {
            watch.arm(limit);
            Arc::clone(watch)
        })
        .ok()
}

/// When a stream's answer last moved. Not armed while the request is read and the app is
/// asked: those waits have bounds of their own (the request body's stall timer,
/// `upstream.response_timeout`).
pub(super) struct AnswerWatch {
    began: Instant,
    /// The limit in nanoseconds, 0 until armed.
    limit: AtomicU64,
    /// When the answer last moved, as nanoseconds since `began`.
    last_move: AtomicU64,
    armed: Notify,
    /// The answer went its limit without moving: its stream is being reset.
    stood_still: AtomicBool,
}

impl AnswerWatch {
    fn new() -> AnswerWatch {
        AnswerWatch {
            began: Instant::now(),
            limit: AtomicU64::new(0),
            last_move: AtomicU64::new(0),
            armed: Notify::new(),
            stood_still: AtomicBool::new(false),
        }
    }

    fn arm(&self, limit: Duration) {
        self.moved();
        self.limit.store(nanos(limit).max(1), Ordering::Relaxed);
        self.armed.notify_one();
    }

    /// The answer moved: a piece of its body went to the client.
    pub(super) fn moved(&self) {
        let now = nanos(self.began.elapsed());
        self.last_move.fetch_max(now, Ordering::Relaxed);
    }

    /// The answer went its limit without moving (its stream is reset).
    pub(super) fn stood_still(&self) -> bool {
        self.stood_still.load(Ordering::Relaxed)
    }

    /// Resolves once the watch is armed and the answer then goes its limit without moving.
    async fn stalled(&self) -> Duration {
        self.armed.notified().await;
        let limit = Duration::from_nanos(self.limit.load(Ordering::Relaxed));
        loop {
            let last_move = Duration::from_nanos(self.last_move.load(Ordering::Relaxed));
            let deadline = self.began + last_move + limit;
            if deadline <= Instant::now() {
                // Set before the stream's task drops the answer, whose end reads it.
                self.stood_still.store(true, Ordering::Relaxed);
                return limit;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
