//! The keep-alive pool of HTTP/1.1 connections to the app.
//!
//! hyper-util's pooled client gives every connection a task of its own and hands each request
//! and response between that task and the client's through channels: two extra task switches
//! per request, which measured as the largest cost of a small pass-through request after the
//! kernel's. Here a connection has no task: whoever holds it polls it. The request's task
//! polls it while the request goes out and the response head comes back; then the response
//! body ([`LeasedBody`]) carries it and polls it whenever the body is read, so the upstream
//! socket is read exactly as fast as the client takes the answer (back-pressure for free).
//! When the body has ended, the connection goes back to the pool, as nginx's `keepalive`
//! cache does; a body dropped half-read closes it (its rest would still be in the socket).
//!
//! Each worker thread (`server.worker_threads`) has a pool of its own (see
//! [`super::Upstream`]), as each nginx worker keeps its own `keepalive` cache: a
//! connection's socket is registered with the runtime of the thread that opened it, and taken
//! up on another thread every readiness event of it would have to be handed across threads.
//! Nor does a request write memory another worker writes (the idle list's lock, the pool's
//! reference count): on a line another core wrote last, each such write is a cache miss.
//!
//! Idle connections are not polled, so an app closing one is noticed when it is next taken
//! (each is polled once then, and a closed one is dropped) or by the sweep that also closes
//! those idle longer than `upstream.pool_idle_timeout`. A request that still meets a
//! connection the app has just closed is retried by [`super::Upstream`].

use std::error::Error as StdError;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Once, OnceLock, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::admission::Place;
use super::connect::{AppConnector, AppIo};
use super::error::ANSWER_CUT;
use crate::body::{Body, BoxError};
use crate::config::UpstreamConfig;
use crate::metrics::Metrics;

/// One HTTP/1.1 connection to the app: the sending half and the connection future that does
/// its I/O, which must be polled for anything to happen.
pub(super) struct Conn {
    sender: http1::SendRequest<Body>,
    /// Boxed so that the futures and bodies a connection moves through stay small (they are
    /// moved by value at each step of a request). `None`: the I/O runs in a task of its own
    /// (a connection that may be upgraded), or has finished; either is never pooled.
    io: Option<Box<AppConnection>>,
    /// Taken from the pool (it served a request before), as opposed to freshly opened.
    reused: bool,
    /// The request's place under `upstream.max_connections`, given back with the connection.
    admitted: Option<Place>,
    /// Resolves once the request body has gone out; kept when the app answered before it
    /// had (see [`Pool::checkin`]).
    body_unsent: Option<oneshot::Receiver<()>>,
    /// The app answered in HTTP/1.0: the connection is not pooled, whatever its
    /// `Connection: keep-alive` says, as nginx does not keep it. hyper would send the next
    /// request on it as HTTP/1.0, which cannot carry a body of unknown length: a chunked
    /// upload would reach the app without its body.
    http10: bool,
}

type AppConnection = http1::Connection<AppIo, Body>;

/// The most an app connection reads at once, which bounds the response head too (as
/// nginx's `proxy_buffer_size` does, at 4 or 8 KiB). hyper's default (408 KiB) lets its
/// read buffer grow that far on a fast app, and each piece of body it hands on is one such
/// read: a client that reads slower than the app answers then holds that much per request,
/// and an HTTP/2 client with large flow-control windows that much per stream (32
/// connections of 32 streams of 1 MiB answers took 1.2 GB; 0.23 GB with this bound and
/// the HTTP/2 one of `server::settings`).
pub(super) const APP_READ_BUFFER: usize = 64 * 1024;

/// Why an exchange with the app failed.
pub(super) enum SendError {
    /// Boxed: failures are rare, and this travels in every request's `Result`.
    Failed(Box<SendFailure>),
    /// No response head within the response timeout.
    Timeout(Duration),
}

/// Why a connection could not be had.
#[derive(Debug)]
pub(super) struct ConnectError(pub(super) Box<dyn StdError + Send + Sync>);

/// Connecting took longer than `upstream.connect_timeout` (this long), as [`ConnectError`]'s
/// cause.
#[derive(Debug, thiserror::Error)]
#[error("connecting timed out after {}", humantime::format_duration(*.0))]
pub(super) struct ConnectTimedOut(pub(super) Duration);

impl ConnectError {
    /// The error, or [`ConnectTimedOut`] when it is a timeout at any depth: the TCP
    /// connector's own (the same limit, per address) or the kernel's.
    fn classify(err: Box<dyn StdError + Send + Sync>, limit: Duration) -> ConnectError {
        let mut cause: Option<&(dyn StdError + 'static)> = Some(&*err);
        while let Some(e) = cause {
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
            {
                return ConnectError(Box::new(ConnectTimedOut(limit)));
            }
            cause = e.source();
        }
        ConnectError(err)
    }
}

/// Why an exchange on a connection failed; `request` is the request back when hyper had not
/// begun to send it (it may be sent elsewhere as it is).
pub(super) struct SendFailure {
    pub(super) error: hyper::Error,
    pub(super) request: Option<Request<Body>>,
}

/// One worker's keep-alive pool: idle connections, most recently used last. Aligned so that
/// no two workers' pools share a cache line.
#[repr(align(128))]
pub(super) struct Pool {
    connector: AppConnector,
    /// `http://host:port/` or `https://…`: where a network connector connects (a Unix
    /// socket's connector has its path).
    target: Uri,
    /// Bounds opening a connection: TCP connect, TLS handshake and all.
    connect_timeout: Duration,
    /// Idle connections, most recently used last.
    idle: Mutex<Vec<Idle>>,
    /// Whether the sweep of idle connections has been started.
    sweeping: Once,
    /// As nginx's `keepalive`, per worker.
    max_idle: usize,
    idle_timeout: Duration,
    /// How long the rest of a request body the app answered early may take to go out.
    finish_timeout: Duration,
    /// Where an answer the app broke off is counted (set once, by
    /// [`super::Upstream::with_metrics`]).
    metrics: OnceLock<Metrics>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("idle", &lock(&self.idle).len())
            .field("max_idle", &self.max_idle)
            .field("idle_timeout", &self.idle_timeout)
            .finish()
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

impl Pool {
    /// A pool of connections to `target`, bounded by `[upstream]`'s `connect_timeout`,
    /// `pool_max_idle` and `pool_idle_timeout`.
    pub(super) fn new(connector: AppConnector, target: Uri, cfg: &UpstreamConfig) -> Pool {
        Pool {
            connector,
            target,
            connect_timeout: cfg.connect_timeout,
            idle: Mutex::new(Vec::new()),
            sweeping: Once::new(),
            max_idle: cfg.pool_max_idle,
            idle_timeout: cfg.pool_idle_timeout,
            finish_timeout: cfg.response_timeout,
            metrics: OnceLock::new(),
        }
    }

    /// Counts the answers the app breaks off in `metrics`.
    pub(super) fn count_in(&self, metrics: &Metrics) {
        let _ = self.metrics.set(metrics.clone());
    }

    /// The app's answer failed midway, after its head (it closed, reset the connection or
    /// sent a malformed chunk): the client's answer ends short. Counted and logged, as
    /// nginx's "upstream prematurely closed connection while reading upstream" is; a
    /// client that leaves drops the body instead, which is not the app's failure.
    fn answer_broke_off(&self, error: &hyper::Error) {
        if let Some(metrics) = self.metrics.get() {
            metrics.upstream_error(ANSWER_CUT);
        }
        warn!(%error, "the app's answer broke off before its end");
    }

    /// Where the pool connects.
    #[cfg(test)]
    pub(super) fn target(&self) -> &Uri {
        &self.target
    }

    /// A connection to the app: an idle one not known to be closed, else a new one.
    ///
    /// Its I/O is not polled here to see whether the app closed it while idle: the
    /// exchange's first poll of it reads before it writes, so such a close is seen before
    /// the request goes out, and hyper hands the unsent request back to be sent on a new
    /// connection (`Upstream::send`). Polling here too cost every request a poll of its
    /// app connection (~700 instructions) for what the next one sees as well.
    pub(super) async fn checkout(&self) -> Result<Conn, ConnectError> {
        while let Some(conn) = self.pop_idle() {
            if conn.sender.is_ready() {
                return Ok(conn);
            }
            debug!("dropping an idle app connection that closed");
        }
        // Boxed: connecting's state is large and rare; every request's future would carry it.
        Box::pin(self.connect()).await
    }

    /// A new connection, never one from the pool.
    pub(super) async fn connect(&self) -> Result<Conn, ConnectError> {
        let (sender, io) = self.handshake().await?;
        Ok(Conn {
            sender,
            io: Some(Box::new(io)),
            reused: false,
            admitted: None,
            body_unsent: None,
            http10: false,
        })
    }

    /// A new connection that may switch protocols: its I/O runs in a task of its own, as an
    /// upgraded connection outlives the request (and it is never pooled).
    pub(super) async fn connect_upgradable(&self) -> Result<Conn, ConnectError> {
        let (sender, io) = self.handshake().await?;
        tokio::spawn(async move {
            if let Err(e) = io.with_upgrades().await {
                debug!(error = %e, "app connection ended with an error");
            }
        });
        Ok(Conn {
            sender,
            io: None,
            reused: false,
            admitted: None,
            body_unsent: None,
            http10: false,
        })
    }

    async fn handshake(&self) -> Result<(http1::SendRequest<Body>, AppConnection), ConnectError> {
        // The TCP connector has its own timeout, but a TLS handshake the app never finishes
        // must not hang the request either (nginx bounds both by proxy_connect_timeout too).
        let connecting = self.connector.connect(&self.target);
        let io = tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| ConnectError(Box::new(ConnectTimedOut(self.connect_timeout))))?
            .map_err(|e| ConnectError::classify(e, self.connect_timeout))?;
        http1::Builder::new()
            .max_buf_size(APP_READ_BUFFER)
            .handshake(io)
            .await
            .map_err(|e| ConnectError(e.into()))
    }

    fn pop_idle(&self) -> Option<Conn> {
        let mut idle = lock(&self.idle);
        let entry = idle.pop()?;
        if entry.since.elapsed() < self.idle_timeout {
            return Some(entry.conn);
        }
        // The most recent is too old: all the others are older still.
        idle.clear();
        None
    }

    /// Takes a connection back after its response ended.
    ///
    /// An app may answer before it has read the whole request body (RFC 9110 §15): a
    /// rejection, or an answer that needs only the start. The connection then still owes
    /// the app the rest, and the client's connection cannot carry its next request before
    /// the rest has come in. So the rest goes on to the app, as it would have through
    /// nginx's buffering of request bodies, for up to `upstream.response_timeout`, and
    /// only then is the connection idle; an app that closes instead ends it.
    fn checkin(self: &Arc<Pool>, mut conn: Conn) {
        if let Some(mut sent) = conn.body_unsent.take()
            && conn.io.is_some()
            && matches!(sent.try_recv(), Err(oneshot::error::TryRecvError::Empty))
        {
            self.finish_sending(conn, sent);
            return;
        }
        // The request is done with the app: an idle connection keeps no place.
        conn.admitted = None;
        if conn.io.is_none() || conn.http10 || conn.sender.is_closed() {
            return;
        }
        conn.reused = true;
        {
            let mut idle = lock(&self.idle);
            if idle.len() >= self.max_idle {
                // Full: the oldest goes (closed when dropped).
                idle.remove(0);
            }
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
        self.sweeping.call_once(|| self.start_sweeping());
    }

    /// Drives `conn` in a task of its own until its request body has gone out (`sent`),
    /// then takes it back; drops it (and with it the rest of the body) after
    /// `finish_timeout` or when no runtime is there to drive it.
    fn finish_sending(self: &Arc<Pool>, mut conn: Conn, mut sent: oneshot::Receiver<()>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let pool = Arc::clone(self);
        runtime.spawn(async move {
            let finished = poll_fn(|cx| {
                conn.poll_driving(cx, false, |cx| Pin::new(&mut sent).poll(cx).map(drop))
            });
            match tokio::time::timeout(pool.finish_timeout, finished).await {
                Ok(()) => pool.checkin(conn),
                Err(_) => debug!("the app took the rest of a request body too slowly"),
            }
        });
    }

    /// Closes, every so often, the idle connections past the idle timeout and those the app
    /// closed. Runs while the pool exists, on the runtime of the pool's worker (the one
    /// returning its first connection).
    fn start_sweeping(self: &Arc<Pool>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let pool = Arc::downgrade(self);
        let every = self
            .idle_timeout
            .clamp(Duration::from_secs(1), Duration::from_secs(5));
        runtime.spawn(sweep(pool, every));
    }
}

fn lock(idle: &Mutex<Vec<Idle>>) -> MutexGuard<'_, Vec<Idle>> {
    // A panic elsewhere while holding the lock leaves a plain Vec: still consistent.
    idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn sweep(pool: Weak<Pool>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        let now = Instant::now();
        lock(&pool.idle).retain_mut(|entry| {
            now.duration_since(entry.since) < pool.idle_timeout && entry.conn.usable()
        });
    }
}

impl Conn {
    /// Keeps the request's place under `upstream.max_connections` until the response has
    /// been read (or the connection dropped).
    pub(super) fn hold(&mut self, admitted: Option<Place>) {
        self.admitted = admitted;
    }

    /// Whether this connection served a request before (taken from the pool).
    pub(super) fn reused(&self) -> bool {
        self.reused
    }

    /// For the sweep: whether this idle connection is still worth keeping: it has not closed
    /// or failed, and is waiting for a request. Polls its I/O once (which notices an app's
    /// close).
    ///
    /// With a waker that wakes nobody: the sweep's task has nothing to do with the
    /// connection's events, and whoever takes it next polls it with their own.
    fn usable(&mut self) -> bool {
        let mut idle = Context::from_waker(Waker::noop());
        if self.poll_io(&mut idle).is_ready() {
            return false;
        }
        self.sender.is_ready()
    }

    /// Drives the connection's I/O; ready when it has closed or failed (the exchange's
    /// futures report how), and never when its I/O runs elsewhere.
    fn poll_io(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.io {
            Some(io) => Pin::new(io.as_mut()).poll(cx).map(|_| ()),
            None => Poll::Pending,
        }
    }

    /// Polls `progress` (the response head, the response body) and, while it is not ready,
    /// the I/O it waits on: whoever drives the connection's I/O is the only one feeding it.
    ///
    /// Quietly first, with a waker that wakes nobody: hyper wakes whoever polled last as it
    /// hands a response head or body data over and as they are taken, which would only poll
    /// this task once more for nothing. Only when that brought nothing is the I/O polled
    /// again with the task's waker, so that what it waits on next (the app's socket, the
    /// request body) wakes the task. A connection whose I/O runs in a task of its own (or
    /// has ended) wakes through `progress` itself.
    ///
    /// `quiet_first`: whether the I/O may bring what `progress` waits for right now; not
    /// when a request has only just been queued (it has to reach the app first), and then
    /// the I/O is polled once, with the task's waker.
    fn poll_driving<T>(
        &mut self,
        cx: &mut Context<'_>,
        quiet_first: bool,
        mut progress: impl FnMut(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        let mut quiet = Context::from_waker(Waker::noop());
        if self.io.is_none() {
            return progress(cx);
        }
        if quiet_first {
            if let ready @ Poll::Ready(_) = progress(&mut quiet) {
                return ready;
            }
            self.drive(&mut quiet);
            if let ready @ Poll::Ready(_) = progress(&mut quiet) {
                return ready;
            }
        }
        self.drive(cx);
        match self.io {
            Some(_) => progress(&mut quiet),
            None => progress(cx),
        }
    }

    /// Polls the I/O; a connection that closed or failed is not polled again (nor pooled:
    /// `checkin` drops connections without I/O), and what was waiting on it reports how.
    fn drive(&mut self, cx: &mut Context<'_>) {
        if self.poll_io(cx).is_ready() {
            self.io = None;
        }
    }

    /// Sends `req` and waits for the response head, driving the connection meanwhile; the
    /// connection comes back with the response, for [`LeasedBody`].
    ///
    /// The response timeout starts once the request body is fully sent: a slow 1 GiB upload
    /// is not the app being slow. One flat future on purpose: futures are moved by value at
    /// each `.await` level, and this one runs for every request.
    pub(super) async fn exchange(
        mut self,
        req: Box<Request<Body>>,
        response_timeout: Duration,
    ) -> Result<(Response<Incoming>, Conn), SendError> {
        let (req, mut body_sent) = watch_body_end(*req);
        let mut response = std::pin::pin!(self.sender.try_send_request(req));
        let mut deadline = std::pin::pin!(tokio::time::sleep(response_timeout));
        let mut sending = true;
        let result = poll_fn(|cx| {
            let quiet_first = !std::mem::take(&mut sending);
            let polled = self.poll_driving(cx, quiet_first, |cx| response.as_mut().poll(cx));
            if let Poll::Ready(result) = polled {
                return Poll::Ready(Ok(result));
            }
            if let Some(sent) = &mut body_sent {
                if Pin::new(sent).poll(cx).is_pending() {
                    return Poll::Pending;
                }
                body_sent = None;
                deadline
                    .as_mut()
                    .reset(tokio::time::Instant::now() + response_timeout);
            }
            deadline.as_mut().poll(cx).map(|()| Err(()))
        })
        .await;
        match result {
            Ok(Ok(response)) => {
                self.body_unsent = body_sent;
                self.http10 = response.version() < http::Version::HTTP_11;
                Ok((response, self))
            }
            Ok(Err(mut failed)) => Err(SendError::Failed(Box::new(SendFailure {
                request: failed.take_message(),
                error: failed.into_error(),
            }))),
            Err(()) => Err(SendError::Timeout(response_timeout)),
        }
    }
}

/// Wraps a request body that has bytes still to come so that its end is signalled; `None`
/// when there is nothing to send.
fn watch_body_end(req: Request<Body>) -> (Request<Body>, Option<oneshot::Receiver<()>>) {
    if req.body().is_end_stream() {
        return (req, None);
    }
    let (tx, rx) = oneshot::channel();
    let req = req.map(|inner| {
        http_body_util::BodyExt::boxed(EndSignal {
            inner,
            done: Some(tx),
        })
    });
    (req, Some(rx))
}

/// A body that reports, once, that it has ended (or failed, or was dropped: the receiver
/// then sees the sender gone, which counts as ended too).
struct EndSignal {
    inner: Body,
    done: Option<oneshot::Sender<()>>,
}

impl http_body::Body for EndSignal {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_))))
            && let Some(done) = self.done.take()
        {
            let _ = done.send(());
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body from the app that carries its connection: reading the body drives the
/// connection, and the connection returns to the pool when the body has ended.
pub(super) struct LeasedBody {
    body: Incoming,
    conn: Option<Conn>,
    pool: Arc<Pool>,
    /// The answer's trailers came: it has nothing more (its `Incoming` says so only when
    /// polled again).
    trailers_read: bool,
}

impl LeasedBody {
    pub(super) fn new(body: Incoming, conn: Conn, pool: Arc<Pool>) -> LeasedBody {
        LeasedBody {
            body,
            conn: Some(conn),
            pool,
            trailers_read: false,
        }
    }

    fn release(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.checkin(conn);
        }
    }
}

impl http_body::Body for LeasedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let body = &mut this.body;
        let polled = match &mut this.conn {
            // The body asks for more (the connection reads only what is wanted), and the
            // connection reads it now rather than on the next wake-up.
            Some(conn) => conn.poll_driving(cx, true, |cx| Pin::new(&mut *body).poll_frame(cx)),
            None => Pin::new(body).poll_frame(cx),
        };
        match &polled {
            Poll::Ready(None) => this.release(),
            // Trailers come after the last chunk: the answer is whole, and its reader (hyper's
            // server) polls no further.
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => {
                this.trailers_read = true;
                this.release();
            }
            Poll::Ready(Some(Err(error))) => this.pool.answer_broke_off(error),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.trailers_read || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for LeasedBody {
    fn drop(&mut self) {
        // A body with nothing to read (HEAD, 204, 304, empty) is never polled; one dropped
        // half-read leaves bytes in the socket, and its connection is closed with it.
        if self.body.is_end_stream() {
            self.release();
        }
    }
}
