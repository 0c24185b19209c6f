//! The watch kept over each client connection, for its two timeouts.
//!
//! - `server.idle_timeout`, as nginx's `client_body_timeout`, `proxy_send_timeout`,
//!   `send_timeout` and `proxy_read_timeout`, by the phase of the request:
//!   - while a request body comes in, the body watches itself: a client that stops sending
//!     it trips the body's [`StallTimer`] (the request fails with 408), a reader (the app,
//!     the store) that stops taking it is found by [`left_unread`] (504);
//!   - while the request waits for the app's answer to begin, `upstream.response_timeout`
//!     bounds the wait (it may be set longer); a wait on the store (an upload's parts, an
//!     asset served from it) is bounded by the store's client alone (its connect timeout
//!     and retries), not here;
//!   - while answers stream, and between requests, the I/O is wrapped so that each read or
//!     write that moves bytes bumps a counter. A connection whose counter did not move for
//!     that long is closed gracefully when no request is in flight, and dropped when an
//!     answer stalled (the client stopped reading it, the app stopped sending it). On
//!     HTTP/2, where bytes moving for one stream say nothing of another, each answer is
//!     watched by its stream's task instead (`super::streams`: a timer per answer, which
//!     HTTP/1 does without).
//! - `server.header_read_timeout` (slowloris): an HTTP/1 connection with no request in flight
//!   must complete its next request head within that time, or it is dropped (and, when part
//!   of a head came, logged as a 408). HTTP/2's preface, told apart on the first bytes read,
//!   begins no head; nor does the rest of a refused body a closing connection lingers for.
//!
//! hyper has a header read timeout of its own, but it arms a fresh timer for every request
//! (an allocation and two trips through the timer wheel: 3% of a small pass-through request's
//! CPU). Here the requests only bump counters, and one ticker per connection, a quarter of
//! the shorter timeout apart, looks at them: a timeout fires between 1 and 1.5 times its
//! length after the wait began.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::{Instant, Interval, Sleep};

use super::linger::Linger;
use crate::body::Stalled;

/// What the connection's requests and I/O report; shared by the I/O wrapper, the requests
/// and the [`Watchdog`].
pub(super) struct ConnectionState {
    /// Reads and writes that moved bytes.
    activity: AtomicU64,
    /// Requests whose head was read.
    begun: AtomicU64,
    /// Requests whose response ended (or was dropped).
    ended: AtomicU64,
    /// Requests whose answer has not begun: their body is still coming, which the body
    /// watches itself ([`StallTimer`], [`left_unread`]), or they wait for the app, which
    /// `upstream.response_timeout` bounds, or for the store.
    unanswered: AtomicU64,
    /// HTTP/2 (its preface came): requests are streams, and there is no head to wait for.
    multiplexed: AtomicBool,
    /// A request ended before its body was read to the end: the client may still be
    /// sending it, so the connection closes lingering ([`Linger`]).
    body_left_unread: AtomicBool,
    /// HTTP/1 bytes were read since the last request ended (or the connection began): the
    /// start of a request head, when no request is in flight.
    read_since_end: AtomicBool,
    /// The connection closes after its next answer, which says so.
    close_after_answer: AtomicBool,
    /// The server dropped the connection at the end of the shutdown's grace (or at a
    /// second signal), with its requests in flight.
    dropped_at_shutdown: AtomicBool,
    /// The server dropped the connection because its answer stood still for
    /// `idle_timeout` ([`Verdict::Stalled`]).
    answer_stalled: AtomicBool,
    /// The tunnel a request switched the connection to (WebSocket), to run once hyper hands
    /// the connection over.
    upgraded: Mutex<Option<Upgraded>>,
    /// `server.keepalive_requests`: the requests the connection may carry.
    max_requests: u64,
    /// HTTP/2 streams past `max_requests` let in before the connection is dropped: those a
    /// client sent before it saw the GOAWAY (`server.http2_max_concurrent_streams`).
    slack: u64,
    /// Notified when an HTTP/2 connection opened its last stream (`max_requests`): it is
    /// closed gracefully then (a GOAWAY), or when it went on past the slack: then it is
    /// dropped.
    served_enough: Notify,
}

/// Drops the connection's tunnel, if one is still kept, when the connection's task ends.
pub(super) struct TunnelGuard(pub(super) Arc<ConnectionState>);

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        drop(self.0.take_upgraded());
    }
}

/// A tunnel to run on the connection's task: it ends when the tunnel closes.
pub(super) type Upgraded = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A connection with no request limit, for the unit tests.
#[cfg(test)]
impl Default for ConnectionState {
    fn default() -> Self {
        ConnectionState::carrying(u64::MAX, 0)
    }
}

impl ConnectionState {
    /// The state of a connection that may carry `max_requests` requests
    /// (`server.keepalive_requests`), and on HTTP/2 `slack` more while its GOAWAY is on
    /// its way.
    pub(super) fn carrying(max_requests: u64, slack: u64) -> ConnectionState {
        ConnectionState {
            activity: AtomicU64::new(0),
            begun: AtomicU64::new(0),
            ended: AtomicU64::new(0),
            unanswered: AtomicU64::new(0),
            multiplexed: AtomicBool::new(false),
            body_left_unread: AtomicBool::new(false),
            read_since_end: AtomicBool::new(false),
            close_after_answer: AtomicBool::new(false),
            dropped_at_shutdown: AtomicBool::new(false),
            answer_stalled: AtomicBool::new(false),
            upgraded: Mutex::new(None),
            max_requests,
            slack,
            served_enough: Notify::new(),
        }
    }

    /// Resolves once an HTTP/2 connection has opened as many streams as it may carry, and
    /// again if it goes on opening them past the slack.
    pub(super) async fn served_enough(&self) {
        self.served_enough.notified().await;
    }

    /// The HTTP/2 connection opened streams past its GOAWAY and the slack: a client that
    /// ignores the GOAWAY (h2 lets streams in until the client answers its PING), as one
    /// opening and resetting streams to keep the app busy does.
    pub(super) fn past_its_requests(&self) -> bool {
        self.begun.load(Ordering::Relaxed) > self.max_requests.saturating_add(self.slack)
    }

    /// Keeps `tunnel` for [`ConnectionState::take_upgraded`].
    pub(super) fn upgrade_to(&self, tunnel: Upgraded) {
        *self.upgraded.lock().unwrap_or_else(PoisonError::into_inner) = Some(tunnel);
    }

    /// The tunnel a request switched the connection to, once hyper is done with it.
    pub(super) fn take_upgraded(&self) -> Option<Upgraded> {
        self.upgraded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    fn bump(&self) {
        self.activity.fetch_add(1, Ordering::Relaxed);
    }

    /// Kept alive between requests: at least one answered (or, on HTTP/2, its preface in),
    /// none in flight and no byte of the next one read (nginx's "reusable" connections).
    /// Closing it now loses nothing a client does not retry. (An HTTP/1 connection that has
    /// yet to send its first request is left to `server.header_read_timeout`: its request
    /// may be on its way.)
    pub(super) fn between_requests(&self) -> bool {
        let begun = self.begun.load(Ordering::Relaxed);
        // An HTTP/2 connection is ready for requests from its preface on (a browser's
        // preconnect), and one that opened no stream yet is as idle as one between them.
        (begun > 0 || self.multiplexed.load(Ordering::Relaxed))
            && begun == self.ended.load(Ordering::Relaxed)
            && !self.read_since_end.load(Ordering::Relaxed)
            // Closing lingering: dropped, it would answer the client's bytes with a reset.
            && !self.body_left_unread.load(Ordering::Relaxed)
    }

    /// Has the next answer say `Connection: close` (a request head arriving at shutdown).
    pub(super) fn close_after_answer(&self) {
        self.close_after_answer.store(true, Ordering::Relaxed);
    }

    /// The shutdown's grace is over: the connection is dropped with what is in flight.
    pub(super) fn drop_at_shutdown(&self) {
        self.dropped_at_shutdown.store(true, Ordering::Relaxed);
    }

    /// The answer in flight stood still: the connection is dropped with it.
    pub(super) fn drop_stalled(&self) {
        self.answer_stalled.store(true, Ordering::Relaxed);
    }

    pub(super) fn closes_after_answer(&self) -> bool {
        self.close_after_answer.load(Ordering::Relaxed)
    }

    /// An HTTP/1 request head has begun to arrive: bytes came since the last request ended
    /// (or the connection began), and no request is in flight.
    pub(super) fn head_arriving(&self) -> bool {
        !self.multiplexed.load(Ordering::Relaxed)
            && self.read_since_end.load(Ordering::Relaxed)
            && self.begun.load(Ordering::Relaxed) == self.ended.load(Ordering::Relaxed)
    }

    /// Bytes of HTTP/1 came in (or bytes not yet told apart from it).
    fn read_http1(&self) {
        self.bump();
        self.read_since_end.store(true, Ordering::Relaxed);
    }

    /// A request's head has been read; `body` is its body's progress, `None` when it has
    /// none. The returned guard marks its end when dropped (keep it until the response body
    /// is done).
    pub(super) fn begin(
        self: &Arc<Self>,
        http2: bool,
        body: Option<Arc<BodyProgress>>,
    ) -> RequestInFlight {
        if http2 {
            self.multiplexed.store(true, Ordering::Relaxed);
            // A stream opening is an HTTP/2 connection's activity (see `Activity`).
            self.bump();
        }
        let begun = self.begun.fetch_add(1, Ordering::Relaxed) + 1;
        if begun == self.max_requests {
            // The last request the connection carries (`server.keepalive_requests`): on
            // HTTP/1.1 its answer says `Connection: close`; HTTP/2 gets a GOAWAY, after
            // which the streams in flight finish.
            match http2 {
                true => self.served_enough.notify_one(),
                false => self.close_after_answer(),
            }
        } else if http2
            && begun
                == self
                    .max_requests
                    .saturating_add(self.slack)
                    .saturating_add(1)
        {
            self.served_enough.notify_one();
        }
        self.unanswered.fetch_add(1, Ordering::Relaxed);
        RequestInFlight {
            connection: Arc::clone(self),
            body,
            answered: false,
        }
    }
}

/// How far a request's body has come: its bytes, whether it has ended, and whether its
/// reader is waiting for the client. Shared by the body's reader, the [`RequestInFlight`]
/// and [`left_unread`].
#[derive(Debug)]
pub(super) struct BodyProgress {
    bytes: AtomicU64,
    ended: AtomicBool,
    /// Its reader let go of it (having read it or not).
    dropped: AtomicBool,
    /// Where its reader is: [`NOT_ASKED`] yet, [`WAITING`] for the client, or [`TOOK`] what
    /// came and has not asked again. What tells a slow client from a reader that stopped.
    reader: AtomicU8,
}

/// The reader has not asked for the body yet (it is connecting to the app, which
/// `upstream.connect_timeout` bounds).
const NOT_ASKED: u8 = 0;
/// The reader asked for more and the client has not sent it yet.
const WAITING: u8 = 1;
/// The reader took what came and has not asked again.
const TOOK: u8 = 2;

impl Default for BodyProgress {
    fn default() -> Self {
        BodyProgress {
            bytes: AtomicU64::new(0),
            ended: AtomicBool::new(false),
            dropped: AtomicBool::new(false),
            reader: AtomicU8::new(NOT_ASKED),
        }
    }
}

impl BodyProgress {
    /// Counts `n` more bytes; returns the body's bytes so far.
    pub(super) fn add_bytes(&self, n: usize) -> u64 {
        self.bytes.fetch_add(n as u64, Ordering::Relaxed) + n as u64
    }

    /// The body has been read to its end.
    pub(super) fn ended(&self) {
        self.ended.store(true, Ordering::Relaxed);
    }

    /// The body's reader let go of it.
    pub(super) fn dropped(&self) {
        self.dropped.store(true, Ordering::Relaxed);
    }

    /// Its reader let go of it before its end: what the client still sends of it is read
    /// by nobody, and the connection cannot carry another request.
    pub(super) fn abandoned(&self) -> bool {
        self.dropped.load(Ordering::Relaxed) && !self.ended.load(Ordering::Relaxed)
    }

    /// The body's reader asked for more and has to wait for the client.
    pub(super) fn reader_waits(&self) {
        self.reader.store(WAITING, Ordering::Relaxed);
    }

    /// The body's reader took a frame.
    pub(super) fn reader_took(&self) {
        self.reader.store(TOOK, Ordering::Relaxed);
    }
}

/// A request being answered on the connection; its drop ends it.
pub(super) struct RequestInFlight {
    connection: Arc<ConnectionState>,
    body: Option<Arc<BodyProgress>>,
    answered: bool,
}

impl RequestInFlight {
    /// The answer's head is ready: from now on the answer is streaming.
    pub(super) fn answered(&mut self) {
        if !std::mem::replace(&mut self.answered, true) {
            self.connection.unanswered.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The server, not the client, dropped the request's connection (the shutdown's grace
    /// ran out).
    pub(super) fn dropped_at_shutdown(&self) -> bool {
        self.connection.dropped_at_shutdown.load(Ordering::Relaxed)
    }

    /// The server dropped the request's connection because its answer stood still.
    pub(super) fn answer_stalled(&self) -> bool {
        self.connection.answer_stalled.load(Ordering::Relaxed)
    }

    /// The request body's bytes read so far.
    pub(super) fn bytes_in(&self) -> u64 {
        self.body
            .as_ref()
            .map_or(0, |b| b.bytes.load(Ordering::Relaxed))
    }
}

impl Drop for RequestInFlight {
    fn drop(&mut self) {
        self.answered();
        // What comes from now on is the next request's.
        self.connection
            .read_since_end
            .store(false, Ordering::Relaxed);
        if let Some(body) = &self.body
            && !body.ended.load(Ordering::Relaxed)
        {
            self.connection
                .body_left_unread
                .store(true, Ordering::Relaxed);
        }
        self.connection.ended.fetch_add(1, Ordering::Relaxed);
        // So is a stream ending: the idle time of an HTTP/2 connection counts from the last
        // answer, as nginx's `keepalive_timeout` does.
        if self.connection.multiplexed.load(Ordering::Relaxed) {
            self.connection.bump();
        }
    }
}

/// What the [`Watchdog`] found wrong with a connection.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// No bytes moved for `idle_timeout` and no request in flight: close gracefully.
    Idle,
    /// No bytes moved for `idle_timeout` while the answers in flight stream: drop the
    /// connection (the answer is cut short).
    Stalled,
    /// No request head completed within `header_read_timeout` while none was in flight:
    /// drop the connection. `began`: part of a head came (nginx logs that as a 408); no
    /// bytes at all is a connection opened and never used, or a kept-alive one left idle.
    SlowHead { began: bool },
}

/// Looks at a connection's [`ConnectionState`] at every tick.
pub(super) struct Watchdog {
    state: Arc<ConnectionState>,
    ticks: Interval,
    /// No bytes moved this long and nothing in flight: [`Verdict::Idle`].
    idle_timeout: Duration,
    /// No bytes moved this long while answers stream: [`Verdict::Stalled`].
    stall_timeout: Duration,
    header_timeout: Duration,
    last_activity: u64,
    active_at: Instant,
    /// Since when no request has been in flight, with the count of requests begun then.
    waiting: Option<(u64, Instant)>,
}

impl Watchdog {
    pub(super) fn new(
        state: Arc<ConnectionState>,
        idle_timeout: Duration,
        header_timeout: Duration,
    ) -> Watchdog {
        Watchdog::with_idle_limit(state, idle_timeout, idle_timeout, header_timeout)
    }

    /// A watchdog for a connection that is closing (a GOAWAY sent): idle for `linger`
    /// (at most `idle_timeout`), it is done with; answers still streaming are held to
    /// `idle_timeout` as before.
    pub(super) fn closing(
        state: Arc<ConnectionState>,
        linger: Duration,
        idle_timeout: Duration,
        header_timeout: Duration,
    ) -> Watchdog {
        let linger = linger.min(idle_timeout);
        Watchdog::with_idle_limit(state, linger, idle_timeout, header_timeout)
    }

    fn with_idle_limit(
        state: Arc<ConnectionState>,
        idle_timeout: Duration,
        stall_timeout: Duration,
        header_timeout: Duration,
    ) -> Watchdog {
        let every = (idle_timeout.min(header_timeout) / 4).max(Duration::from_millis(10));
        let now = Instant::now();
        let mut ticks = tokio::time::interval_at(now + every, every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Watchdog {
            state,
            ticks,
            idle_timeout,
            stall_timeout,
            header_timeout,
            last_activity: 0,
            active_at: now,
            // A new connection waits for its first head from the start.
            waiting: Some((0, now)),
        }
    }

    /// Judges the connection at every tick until something is wrong with it, and says what.
    pub(super) async fn alarm(mut self) -> Verdict {
        loop {
            let now = self.ticks.tick().await;
            if let Some(verdict) = self.judge(now) {
                return verdict;
            }
        }
    }

    /// What is wrong with the connection at `now`, if anything.
    fn judge(&mut self, now: Instant) -> Option<Verdict> {
        let state = &self.state;
        let activity = state.activity.load(Ordering::Relaxed);
        if activity != self.last_activity {
            self.last_activity = activity;
            self.active_at = now;
        }
        let begun = state.begun.load(Ordering::Relaxed);
        let in_flight = begun != state.ended.load(Ordering::Relaxed);
        let quiet = now.duration_since(self.active_at);
        if quiet >= self.idle_timeout && !in_flight {
            return Some(Verdict::Idle);
        }
        let multiplexed = state.multiplexed.load(Ordering::Relaxed);
        // HTTP/2's answers are each watched by their stream's task instead.
        if quiet >= self.stall_timeout
            && in_flight
            && !multiplexed
            && state.unanswered.load(Ordering::Relaxed) == 0
        {
            return Some(Verdict::Stalled);
        }
        // A connection closing lingering waits for no head: what still comes is the rest of
        // a refused body, and the lingering close has bounds of its own ([`Linger`]).
        if in_flight || multiplexed || state.body_left_unread.load(Ordering::Relaxed) {
            self.waiting = None;
            return None;
        }
        match self.waiting {
            Some((count, since)) if count == begun => {
                if now.duration_since(since) >= self.header_timeout {
                    let began = state.read_since_end.load(Ordering::Relaxed);
                    return Some(Verdict::SlowHead { began });
                }
            }
            // Requests came and went since the last look: the wait starts now.
            _ => self.waiting = Some((begun, now)),
        }
        None
    }
}

/// Whether a body polled while it has nothing to give has gone `limit` without progress.
/// One per request body that is waited on.
#[derive(Debug)]
pub(super) struct StallTimer {
    limit: Duration,
    /// Armed at the first wait, moved on after each progress; never freed in between.
    deadline: Option<Pin<Box<Sleep>>>,
    progressed: bool,
}

impl StallTimer {
    pub(super) fn new(limit: Duration) -> StallTimer {
        StallTimer {
            limit,
            deadline: None,
            progressed: false,
        }
    }

    /// The body gave something: the next wait starts anew.
    pub(super) fn progressed(&mut self) {
        self.progressed = true;
    }

    /// The body has nothing to give now: `Err` once that has lasted `limit` since it last
    /// gave something (or since it was first waited on).
    pub(super) fn poll_waiting(&mut self, cx: &mut Context<'_>) -> Result<(), Stalled> {
        let limit = self.limit;
        let progressed = std::mem::take(&mut self.progressed);
        let deadline = match &mut self.deadline {
            Some(deadline) => {
                if progressed {
                    deadline.as_mut().reset(Instant::now() + limit);
                }
                deadline
            }
            None => self.deadline.insert(Box::pin(tokio::time::sleep(limit))),
        };
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Err(Stalled(limit)),
            Poll::Pending => Ok(()),
        }
    }
}

/// Resolves once the request body, still coming, has gone `limit` without being read: its
/// reader (the app's connection, the store) took some and stopped taking it, nginx's
/// `proxy_send_timeout`. A client that stopped sending is its [`StallTimer`]'s business
/// instead: there the reader is waiting. Never resolves before the reader first asks (it
/// may still be connecting) or once the body is in.
///
/// Needed because a body nobody polls runs no timer of its own.
pub(super) async fn left_unread(body: &BodyProgress, limit: Duration) {
    let every = (limit / 4).max(Duration::from_millis(10));
    let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = body.bytes.load(Ordering::Relaxed);
    let mut since = Instant::now();
    loop {
        let now = ticks.tick().await;
        if body.ended.load(Ordering::Relaxed) {
            return std::future::pending().await;
        }
        let bytes = body.bytes.load(Ordering::Relaxed);
        if bytes != seen || body.reader.load(Ordering::Relaxed) != TOOK {
            seen = bytes;
            since = now;
        } else if now.duration_since(since) >= limit {
            return;
        }
    }
}

/// I/O that reports its activity to a [`ConnectionState`], and closes lingering when a
/// request body was left unread.
pub(super) struct Activity<S> {
    inner: S,
    state: Arc<ConnectionState>,
    linger: Option<Linger>,
    preface: Preface,
}

impl<S> Activity<S> {
    pub(super) fn new(inner: S, state: Arc<ConnectionState>) -> Self {
        Activity {
            inner,
            state,
            linger: None,
            preface: Preface::Matching(0),
        }
    }

    /// Counts a read that moved `bytes`; HTTP/1's may begin a request head.
    fn bytes_read(&mut self, bytes: &[u8]) {
        if let Preface::Matching(_) = self.preface {
            self.preface = self.preface.read(bytes);
            // From its preface on an HTTP/2 connection waits for no head: it is idle until
            // a stream opens (closed with a GOAWAY after `idle_timeout`, as nginx's
            // `keepalive_timeout`).
            if self.preface == Preface::Http2 {
                self.state.multiplexed.store(true, Ordering::Relaxed);
            }
        }
        match self.preface {
            // HTTP/2's frames between requests are no request head, nor activity: a
            // client's PINGs, SETTINGS and WINDOW_UPDATEs would otherwise keep a connection
            // with no stream open for ever. Its streams beginning and ending are its
            // activity (each answer is watched by its stream's task, `super::streams`).
            Preface::Http2 => {}
            Preface::Matching(_) | Preface::Http1 => self.state.read_http1(),
        }
    }
}

impl<S> Activity<S> {
    /// Counts a write that moved bytes; HTTP/2's are no activity (see `bytes_read`): a
    /// PING's answer is one.
    fn bytes_written(&self) {
        if self.preface != Preface::Http2 {
            self.state.bump();
        }
    }
}

/// HTTP/2's connection preface, with which a client speaking it begins (RFC 9113, 3.4).
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a connection speaks, told from its first bytes as hyper-util's automatic builder
/// tells it: HTTP/2 when they are its preface, HTTP/1 when they are anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Preface {
    /// The bytes so far (this many) are the preface's start.
    Matching(usize),
    Http1,
    Http2,
}

impl Preface {
    /// Where it stands after the next `bytes` read.
    fn read(self, bytes: &[u8]) -> Preface {
        let Preface::Matching(matched) = self else {
            return self;
        };
        let rest = &HTTP2_PREFACE[matched..];
        let n = bytes.len().min(rest.len());
        if bytes[..n] != rest[..n] {
            Preface::Http1
        } else if n == rest.len() {
            Preface::Http2
        } else {
            Preface::Matching(matched + n)
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Activity<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.bytes_read(&buf.filled()[before..]);
        }
        polled
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Activity<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.bytes_written();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.bytes_written();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.state.body_left_unread.load(Ordering::Relaxed) {
            return Pin::new(&mut self.inner).poll_shutdown(cx);
        }
        let this = &mut *self;
        // Bytes still moving keep the watchdog's idle timeout off: the lingering close
        // has its own bounds.
        let state = &this.state;
        this.linger
            .get_or_insert_with(Linger::new)
            .poll_close(&mut this.inner, cx, || state.bump())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(60);
    const HEAD: Duration = Duration::from_secs(10);
    const S: Duration = Duration::from_secs(1);

    fn watchdog() -> (Arc<ConnectionState>, Watchdog, Instant) {
        let state = Arc::new(ConnectionState::default());
        let dog = Watchdog::new(Arc::clone(&state), IDLE, HEAD);
        let start = dog.active_at;
        (state, dog, start)
    }

    #[tokio::test]
    async fn a_new_connection_must_send_a_head_in_time() {
        let (state, mut dog, start) = watchdog();
        state.read_http1();
        assert_eq!(dog.judge(start + 3 * S), None);
        state.read_http1();
        assert_eq!(dog.judge(start + 9 * S), None);
        // Bytes trickle in, but no head completes.
        state.read_http1();
        assert_eq!(
            dog.judge(start + 10 * S),
            Some(Verdict::SlowHead { began: true })
        );
    }

    #[tokio::test]
    async fn a_connection_never_used_has_begun_no_head() {
        let (_state, mut dog, start) = watchdog();
        assert_eq!(dog.judge(start + 9 * S), None);
        assert_eq!(
            dog.judge(start + 10 * S),
            Some(Verdict::SlowHead { began: false })
        );
    }

    #[tokio::test]
    async fn a_request_in_flight_is_never_a_slow_head() {
        let (state, mut dog, start) = watchdog();
        let request = state.begin(false, None);
        for second in [5, 15, 30, 50] {
            // Its body coming in.
            state.read_http1();
            assert_eq!(dog.judge(start + second * S), None, "{second}s");
        }
        drop(request);
        // The wait for the next head starts when the watchdog sees the request ended.
        assert_eq!(dog.judge(start + 55 * S), None);
        // The answer's last write: no part of a head.
        state.bump();
        assert_eq!(dog.judge(start + 64 * S), None);
        assert_eq!(
            dog.judge(start + 65 * S),
            Some(Verdict::SlowHead { began: false }),
            "a kept-alive connection left idle"
        );
    }

    #[tokio::test]
    async fn the_next_head_begun_on_a_kept_alive_connection() {
        let (state, mut dog, start) = watchdog();
        state.read_http1();
        drop(state.begin(false, None));
        assert_eq!(dog.judge(start + S), None);
        state.read_http1();
        assert_eq!(
            dog.judge(start + 11 * S),
            Some(Verdict::SlowHead { began: true })
        );
    }

    #[test]
    fn http2s_preface_is_told_from_http1_in_any_pieces() {
        let whole = Preface::Matching(0).read(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\x12\x04");
        assert_eq!(whole, Preface::Http2);
        let start = Preface::Matching(0).read(b"PRI * HTTP/2");
        assert_eq!(start, Preface::Matching(12));
        assert_eq!(start.read(b".0\r\n\r\nSM\r\n\r\n"), Preface::Http2);
        assert_eq!(start.read(b".1\r\n"), Preface::Http1);
        assert_eq!(
            Preface::Matching(0).read(b"GET / HTTP/1.1\r\n"),
            Preface::Http1
        );
        assert_eq!(Preface::Matching(0).read(b"P"), Preface::Matching(1));
        assert_eq!(Preface::Matching(1).read(b"OST /"), Preface::Http1);
        assert_eq!(
            Preface::Http1.read(HTTP2_PREFACE),
            Preface::Http1,
            "decided once"
        );
    }

    #[tokio::test]
    async fn http2s_preface_and_frames_before_its_first_request_begin_no_head() {
        let state = Arc::new(ConnectionState::default());
        let mut dog = Watchdog::new(Arc::clone(&state), IDLE, HEAD);
        let start = dog.active_at;
        let (client, mut server) = tokio::io::duplex(64);
        let mut io = Activity::new(client, Arc::clone(&state));
        let mut preface = HTTP2_PREFACE.to_vec();
        preface.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        tokio::io::AsyncWriteExt::write_all(&mut server, &preface)
            .await
            .expect("preface");
        let mut got = vec![0; preface.len()];
        tokio::io::AsyncReadExt::read_exact(&mut io, &mut got)
            .await
            .expect("read through Activity");
        assert_eq!(got, preface);
        // No head is waited for: the connection is idle until its first stream.
        assert_eq!(dog.judge(start + HEAD), None);
        // (The watchdog saw the preface's bytes at its look above.)
        assert_eq!(dog.judge(start + HEAD + IDLE), Some(Verdict::Idle));
    }

    /// An HTTP/2 connection's frames are no activity: a client that sends PINGs but opens
    /// no stream is idle all the same. Its streams opening and ending are activity, and an
    /// answer streaming on it is its stream's to watch, not the connection's.
    #[tokio::test]
    async fn only_streams_keep_an_http2_connection_from_idling() {
        let state = Arc::new(ConnectionState::default());
        let mut dog = Watchdog::new(Arc::clone(&state), IDLE, HEAD);
        let start = dog.active_at;
        let (client, mut server) = tokio::io::duplex(1024);
        let mut io = Activity::new(client, Arc::clone(&state));
        let ping = [0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
        let mut sent = HTTP2_PREFACE.to_vec();
        for _ in 0..3 {
            sent.extend_from_slice(&ping);
        }
        tokio::io::AsyncWriteExt::write_all(&mut server, &sent)
            .await
            .expect("preface and PINGs");
        let mut got = vec![0; sent.len()];
        tokio::io::AsyncReadExt::read_exact(&mut io, &mut got)
            .await
            .expect("read through Activity");
        tokio::io::AsyncWriteExt::write_all(&mut io, &ping)
            .await
            .expect("a PING's answer");
        assert!(state.between_requests(), "reclaimable from its preface on");
        assert_eq!(dog.judge(start + 30 * S), None);
        assert_eq!(dog.judge(start + IDLE), Some(Verdict::Idle));

        let (state, mut dog) = (Arc::clone(&state), Watchdog::new(state, IDLE, HEAD));
        let start = dog.active_at;
        let mut stream = state.begin(true, None);
        stream.answered();
        assert!(!state.between_requests());
        assert_eq!(
            dog.judge(start + 2 * IDLE),
            None,
            "no stall of the connection's"
        );
        drop(stream);
        assert_eq!(dog.judge(start + 2 * IDLE + S), None, "a stream ended");
        assert_eq!(dog.judge(start + 3 * IDLE + S), Some(Verdict::Idle));
    }

    #[tokio::test]
    async fn no_bytes_for_the_idle_timeout_between_requests_is_idle() {
        // A head timeout longer than the idle one, so that the idle one is what fires.
        let state = Arc::new(ConnectionState::default());
        let mut dog = Watchdog::new(Arc::clone(&state), IDLE, IDLE * 2);
        let start = dog.active_at;
        drop(state.begin(false, None));
        state.bump();
        assert_eq!(dog.judge(start + S), None);
        assert_eq!(dog.judge(start + 60 * S), None);
        assert_eq!(dog.judge(start + 61 * S), Some(Verdict::Idle));
    }

    /// A closing connection is done with once idle for the linger, but an answer still
    /// streaming to a slow client keeps the idle timeout as its bound.
    #[tokio::test]
    async fn a_closing_connection_lingers_only_when_idle() {
        let state = Arc::new(ConnectionState::default());
        let mut dog = Watchdog::closing(Arc::clone(&state), S, IDLE, IDLE * 2);
        let start = dog.active_at;
        let mut request = state.begin(false, None);
        request.answered();
        state.bump();
        // The bytes are seen at the first look, 2 s in.
        assert_eq!(dog.judge(start + 2 * S), None, "streaming, past the linger");
        assert_eq!(dog.judge(start + 61 * S), None);
        assert_eq!(dog.judge(start + 62 * S), Some(Verdict::Stalled));
        drop(request);
        state.bump();
        assert_eq!(dog.judge(start + 63 * S), None);
        assert_eq!(dog.judge(start + 63 * S + S / 2), None);
        assert_eq!(dog.judge(start + 64 * S), Some(Verdict::Idle));
    }

    #[tokio::test]
    async fn waiting_for_the_answer_is_never_a_stall() {
        let (state, mut dog, start) = watchdog();
        let mut request = state.begin(false, None);
        state.bump();
        assert_eq!(dog.judge(start + S), None);
        // The response timeout's business, however long it is.
        assert_eq!(dog.judge(start + 600 * S), None);
        request.answered();
        // Now streaming the answer: no bytes for the idle timeout is a stall.
        assert_eq!(dog.judge(start + 601 * S), Some(Verdict::Stalled));
    }

    #[tokio::test]
    async fn a_request_body_coming_in_is_left_to_its_own_timers() {
        let (state, mut dog, start) = watchdog();
        let body = Arc::new(BodyProgress::default());
        let mut request = state.begin(false, Some(Arc::clone(&body)));
        body.add_bytes(10);
        state.bump();
        assert_eq!(dog.judge(start + S), None);
        // No bytes: the body's stall timer or `left_unread` answers it, with a status.
        assert_eq!(dog.judge(start + 61 * S), None);
        body.ended();
        assert_eq!(dog.judge(start + 62 * S), None);
        // The answer streams: no bytes for the idle timeout is the watchdog's stall.
        request.answered();
        assert_eq!(dog.judge(start + 63 * S), Some(Verdict::Stalled));
        assert_eq!(request.bytes_in(), 10);
    }

    #[tokio::test]
    async fn a_body_still_coming_after_an_early_answer_is_not_waited_for() {
        let (state, mut dog, start) = watchdog();
        let body = Arc::new(BodyProgress::default());
        let mut request = state.begin(false, Some(Arc::clone(&body)));
        request.answered();
        state.bump();
        assert_eq!(dog.judge(start + S), None);
        assert_eq!(dog.judge(start + 61 * S), Some(Verdict::Stalled));
        drop(request);
        assert_eq!(state.unanswered.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_nobody_reads_is_left_unread_after_the_limit() {
        let body = BodyProgress::default();
        let watch = left_unread(&body, S);
        tokio::pin!(watch);
        // Taken bit by bit for 4 s: fine.
        let mut last_taken = Instant::now();
        for _ in 0..8 {
            body.add_bytes(1);
            body.reader_took();
            last_taken = Instant::now();
            let fired = tokio::time::timeout(S / 2, watch.as_mut()).await;
            assert!(fired.is_err(), "the body is being read");
        }
        tokio::time::timeout(2 * S, watch.as_mut())
            .await
            .expect("no bytes taken for the limit");
        let quiet = last_taken.elapsed();
        assert!(quiet >= S && quiet <= S + S / 2, "{quiet:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_not_asked_for_waiting_on_its_client_or_in_is_never_left_unread() {
        let body = BodyProgress::default();
        // Not asked for yet: the reader may be connecting to the app.
        let fired = tokio::time::timeout(10 * S, left_unread(&body, S)).await;
        assert!(
            fired.is_err(),
            "a reader that has not begun has not stopped"
        );
        // The reader asked for more: a slow client, the stall timer's business.
        body.reader_waits();
        let fired = tokio::time::timeout(10 * S, left_unread(&body, S)).await;
        assert!(fired.is_err(), "a slow client is not a reader that stopped");
        body.reader_took();
        body.ended();
        let fired = tokio::time::timeout(10 * S, left_unread(&body, S)).await;
        assert!(
            fired.is_err(),
            "the body is in: the wait for the answer is not judged"
        );
    }

    #[tokio::test]
    async fn http2_connections_wait_for_no_head() {
        let (state, mut dog, start) = watchdog();
        drop(state.begin(true, None));
        state.bump();
        assert_eq!(dog.judge(start + 30 * S), None);
        assert_eq!(dog.judge(start + 89 * S), None);
        assert_eq!(dog.judge(start + 90 * S), Some(Verdict::Idle));
    }
}
