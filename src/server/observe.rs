//! Per-request bookkeeping: byte counts, the access log line and the request metrics, all
//! emitted once when the response body ends (or is dropped: a client that went away); and
//! the same line and count for a request head refused before it reached routing (by hyper:
//! malformed or too large) or cut off (not complete within `server.header_read_timeout`).

use std::borrow::Cow;
use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body as _, SizeHint};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use tracing::{info, warn};

use super::idle::{BodyProgress, RequestInFlight, StallTimer};
use super::streams::{self, AnswerWatch};
use super::{Answer, AppState};
use crate::body::{Body, BoxError, TooLarge};
use crate::logging::{ACCESS_TARGET, ClientAddr, masked_path, masked_target};
use crate::metrics::RequestKind;
use crate::proxy::{ANSWER_STALLED, Traffic, Tunnel, TunnelEnd};
use crate::store::FromStore;

/// Boxes the request body, following its progress (bytes, end, whether it is waited on)
/// when it has any. `stall_limit`: how long the body may keep its reader waiting (see
/// [`StallTimer`]); `max_size`: past this many bytes the body fails with [`TooLarge`].
pub(super) fn track_request_body(
    req: Request<Incoming>,
    stall_limit: Duration,
    max_size: Option<u64>,
) -> (Request<Body>, Option<Arc<BodyProgress>>) {
    if req.body().is_end_stream() {
        // Nothing to count or read: an empty body needs no allocation, a boxed one would.
        return (req.map(|_| crate::body::empty()), None);
    }
    let progress = Arc::new(BodyProgress::default());
    let tracked = Arc::clone(&progress);
    let req = req.map(|inner| {
        Counted {
            inner,
            progress: tracked,
            stall: StallTimer::new(stall_limit),
            max_size,
        }
        .boxed()
    });
    (req, Some(progress))
}

struct Counted {
    inner: Incoming,
    progress: Arc<BodyProgress>,
    stall: StallTimer,
    /// `server.max_body_size`.
    max_size: Option<u64>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.progress.dropped();
    }
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let received = self.progress.add_bytes(data.len());
                    if let Some(max) = self.max_size.filter(|max| received > *max) {
                        // Whoever reads it (the app's connection, an upload) stops here,
                        // and the client gets 413.
                        return Poll::Ready(Some(Err(TooLarge(max).into())));
                    }
                }
                // Readers stop at the last frame of a body of known length, and at its
                // trailers, which come last.
                if frame.is_trailers() || self.inner.is_end_stream() {
                    self.progress.ended();
                }
                self.stall.progressed();
                self.progress.reader_took();
            }
            Poll::Ready(None) => self.progress.ended(),
            Poll::Pending => {
                self.stall.poll_waiting(cx)?;
                self.progress.reader_waits();
            }
            Poll::Ready(Some(Err(_))) => {}
        }
        polled.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What the request looked like, kept until the response is done. Dropped before an
/// answer, it logs and counts the request rather than letting it pass unseen: as 499 when
/// the client left while the app or the store was still at it (nginx's "client closed
/// request"), as 444 when the shutdown's grace ran out (nginx's "closed without an
/// answer").
pub(super) struct RequestRecord {
    pub state: Arc<AppState>,
    /// The way the request took ([`crate::server::route`] sets it as it picks one), for a
    /// request dropped before its answer.
    pub way: Way,
    /// Logged and counted: the access line is written once.
    finished: bool,
    /// Ends the request on its connection when the record is dropped with the response;
    /// knows the request body's byte count.
    pub in_flight: RequestInFlight,
    /// What the access log line names; `None` when that line is filtered out. Boxed: the
    /// record travels in the response body, which is moved at every step of its way through
    /// hyper, and without an access log it is one word rather than ~100 bytes.
    pub logged: Option<Box<Logged>>,
    pub peer: SocketAddr,
    pub started: Instant,
}

impl RequestRecord {
    pub(super) fn new(
        state: Arc<AppState>,
        in_flight: RequestInFlight,
        logged: Option<Box<Logged>>,
        peer: SocketAddr,
        started: Instant,
    ) -> RequestRecord {
        RequestRecord {
            state,
            way: Way::default(),
            finished: false,
            in_flight,
            logged,
            peer,
            started,
        }
    }

    /// Counts the request and writes its access line (if that is logged).
    fn finish(&mut self, end: End) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let took = self.started.elapsed();
        let bytes_in = self.in_flight.bytes_in() + end.tunneled_in;
        let metrics = &self.state.metrics;
        let answered_in = end.answered_in.unwrap_or(took);
        metrics.request(end.kind, end.status, answered_in, bytes_in, end.sent);
        if let Some(upstream) = end.upstream {
            metrics.upstream_response(upstream);
        }
        let Some(logged) = &self.logged else { return };
        // Queries can carry one-time secrets (reset keys, signatures): logged only when
        // `log.query` says so, and even then without the values of known credentials.
        // Header values are never logged, but for the request ID (a printable token
        // offload made or a trusted proxy set).
        let path = match &logged.target {
            Some(t) if self.state.config.log.query => masked_target(t),
            Some(t) => masked_path(t.path()),
            None => Cow::Borrowed(""),
        };
        let path = path.as_ref();
        info!(
            target: ACCESS_TARGET,
            method = %logged.method,
            path,
            status = end.status.as_u16(),
            kind = end.kind.as_str(),
            bytes_in,
            bytes_out = end.sent,
            duration_ms = millis(took),
            upstream_ms = end.upstream.map(millis),
            peer = %ClientAddr(self.peer),
            complete = end.complete,
            request_id = logged.request_id.as_ref().and_then(|id| id.to_str().ok()),
            reason = logged.reason,
        );
    }
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        if !self.finished {
            // Dropped by the server at the end of the shutdown's grace, not by its client:
            // nginx's 444 (closed without an answer), with the reason.
            let status = match self.in_flight.dropped_at_shutdown() {
                true => {
                    if let Some(logged) = self.logged.as_deref_mut() {
                        logged.reason = Some("dropped when the shutdown's grace ran out");
                    }
                    CLOSED_WITHOUT_ANSWER
                }
                false => CLIENT_CLOSED_REQUEST,
            };
            self.finish(End {
                kind: self.way.get(),
                status,
                upstream: None,
                sent: 0,
                tunneled_in: 0,
                answered_in: None,
                complete: false,
            });
        }
    }
}

/// The way a request took through the proxy, as far as routing got. An atomic only so
/// that the request's future may move between threads: nothing else shares it, and a
/// relaxed store is a plain one.
#[derive(Default)]
pub(crate) struct Way(AtomicU8);

impl Way {
    pub(crate) fn set(&self, kind: RequestKind) {
        self.0.store(kind as u8, Ordering::Relaxed);
    }

    fn get(&self) -> RequestKind {
        match self.0.load(Ordering::Relaxed) {
            k if k == RequestKind::Upload as u8 => RequestKind::Upload,
            k if k == RequestKind::Asset as u8 => RequestKind::Asset,
            k if k == RequestKind::Store as u8 => RequestKind::Store,
            _ => RequestKind::Passthrough,
        }
    }
}

/// nginx's status for a request whose client left before the answer.
const CLIENT_CLOSED_REQUEST: StatusCode = match StatusCode::from_u16(499) {
    Ok(status) => status,
    Err(_) => StatusCode::BAD_REQUEST,
};

/// nginx's status for a request it closed the connection of without an answer.
const CLOSED_WITHOUT_ANSWER: StatusCode = match StatusCode::from_u16(444) {
    Ok(status) => status,
    Err(_) => StatusCode::SERVICE_UNAVAILABLE,
};

/// How a request ended, for its count and access line.
struct End {
    kind: RequestKind,
    status: StatusCode,
    upstream: Option<Duration>,
    sent: u64,
    /// Bytes the client sent through a tunnel (WebSocket), besides the request body.
    tunneled_in: u64,
    /// For the latency histogram, when not the request's whole time: a tunnel's time to
    /// its switch (its life, minutes or hours, is the access line's).
    answered_in: Option<Duration>,
    complete: bool,
}

/// The request's method, target and ID (`server.request_id_header`), kept for its access
/// log line.
pub(super) struct Logged {
    method: Method,
    target: Option<PathAndQuery>,
    request_id: Option<HeaderValue>,
    /// Why a request refused before any way was (its answer's [`Refusal`]).
    reason: Option<&'static str>,
}

/// Why a request was refused before any way (a bad Host, a target no proxy passes on): set
/// on the refusal's answer, and named in its access line as a refused head's reason is.
#[derive(Debug, Clone, Copy)]
pub(super) struct Refusal(pub &'static str);

impl Logged {
    /// What `req`'s access log line needs, if that line is logged at all (the log level
    /// lets it through).
    pub(super) fn of<B>(req: &Request<B>, request_id: Option<HeaderValue>) -> Option<Box<Logged>> {
        tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO).then(|| {
            Box::new(Logged {
                method: req.method().clone(),
                target: req.uri().path_and_query().cloned(),
                request_id,
                reason: None,
            })
        })
    }
}

/// Wraps the response so that its end is logged and counted.
/// `stall_limit`: an HTTP/2 answer's own bound on standing still (its stream's
/// [`AnswerWatch`]); `None` on HTTP/1, where the connection's watchdog does it.
pub(super) fn observe(
    answer: Answer,
    mut request: RequestRecord,
    stall_limit: Option<Duration>,
) -> Response<Observed> {
    let Answer {
        response,
        kind,
        upstream,
    } = answer;
    if kind == RequestKind::Refused
        && let Some(logged) = request.logged.as_deref_mut()
    {
        logged.reason = response.extensions().get::<Refusal>().map(|r| r.0);
    }
    let status = response.status();
    let from_store = response.extensions().get::<FromStore>().is_some();
    response.map(|inner| Observed {
        inner,
        sent: 0,
        waiting: false,
        failed: None,
        paced: stall_limit.and_then(streams::watch_answer).map(|watch| {
            Box::new(Paced {
                watch,
                rest: Bytes::new(),
            })
        }),
        done: Some(Done {
            request,
            kind,
            status,
            upstream,
            from_store,
        }),
    })
}

/// A `101` the app answered to a WebSocket request: the response goes out with no access
/// line of its own, and the returned future runs the tunnel (see [`Tunnel`]), then counts
/// the request and logs it with the bytes that crossed the tunnel each way and the time it
/// was open, as nginx logs a WebSocket's request when it closes. Dropped before (the
/// shutdown's grace ran out), it does the same, as not complete.
pub(super) fn observe_tunnel(
    answer: Answer,
    request: RequestRecord,
    tunnel: Tunnel,
) -> (
    Response<Observed>,
    impl Future<Output = ()> + Send + 'static,
) {
    let Answer {
        response,
        kind,
        upstream,
    } = answer;
    let mut closing = Closing {
        switched_in: request.started.elapsed(),
        done: Some(Done {
            request,
            kind,
            status: response.status(),
            upstream,
            from_store: false,
        }),
        traffic: Traffic::new(),
    };
    let run = async move {
        let end = tunnel.run(&closing.traffic).await;
        closing.finish(end);
    };
    let response = response.map(|inner| Observed {
        inner,
        sent: 0,
        waiting: false,
        failed: None,
        paced: None,
        done: None,
    });
    (response, run)
}

/// A tunnel's request, finished when the tunnel is over (or dropped: the shutdown's grace
/// ran out, as a failed end).
struct Closing {
    done: Option<Done>,
    traffic: Traffic,
    /// How long the request took to be answered with its `101`.
    switched_in: Duration,
}

impl Closing {
    fn finish(&mut self, end: TunnelEnd) {
        let Some(mut done) = self.done.take() else {
            return;
        };
        // A client gone before the switch is logged as nginx logs one gone before its answer.
        let status = match end {
            TunnelEnd::NotOpened => CLIENT_CLOSED_REQUEST,
            _ => done.status,
        };
        done.request.finish(End {
            kind: done.kind,
            status,
            upstream: done.upstream,
            sent: self.traffic.from_app(),
            tunneled_in: self.traffic.from_client(),
            answered_in: Some(self.switched_in),
            complete: matches!(end, TunnelEnd::Closed | TunnelEnd::Idle),
        });
    }
}

impl Drop for Closing {
    fn drop(&mut self) {
        self.finish(TunnelEnd::Failed);
    }
}

struct Done {
    request: RequestRecord,
    kind: RequestKind,
    status: StatusCode,
    upstream: Option<Duration>,
    /// The body comes from the store ([`FromStore`]), not the app.
    from_store: bool,
}

impl Done {
    /// The answer stood still for `server.idle_timeout` and was cut. `source_waited`: the
    /// body was waiting for its source (the app, the store), not for the client to read:
    /// counted as the source's failure and warned of, as nginx logs "upstream timed out
    /// while reading upstream" (`proxy_read_timeout`), where a client that stops reading
    /// (`send_timeout`) is only the access line's reason.
    fn stood_still(&mut self, source_waited: bool) {
        let state = &self.request.state;
        let limit = humantime::format_duration(state.config.server.idle_timeout);
        let reason = match (source_waited, self.from_store) {
            (false, _) => "the client stopped reading the answer",
            (true, false) => {
                state.metrics.upstream_error(ANSWER_STALLED);
                warn!(%limit, "the app's answer stood still for server.idle_timeout; cut off");
                "the app stopped sending the answer"
            }
            (true, true) => {
                state.metrics.store_interrupted();
                warn!(%limit, "an answer from the store stood still for server.idle_timeout; cut off");
                "the store stopped sending the answer"
            }
        };
        if let Some(logged) = self.request.logged.as_deref_mut() {
            logged.reason = Some(reason);
        }
    }
}

/// The response body as the client gets it: the body, counted and logged when it ends.
/// (Handed to hyper as it is: boxing it again would cost an allocation per request.)
pub(super) struct Observed {
    inner: Body,
    sent: u64,
    /// The last poll of `inner` found nothing ready: the answer waits for its source, not
    /// for the client (which hyper would be writing to instead of asking for more).
    waiting: bool,
    /// An HTTP/2 answer's watch (see [`streams`]), told each time the answer moves, and
    /// what is left of a large piece (boxed: HTTP/1 answers carry only the pointer).
    paced: Option<Box<Paced>>,
    done: Option<Done>,
    /// The body's error, held back for [`ERROR_HOLD`]. hyper's HTTP/1 server drops a
    /// connection whose response body fails without writing out what it holds, the head and
    /// the bytes before the error among them: the client of an app that sent part of an
    /// answer and closed, all read at once, got nothing. Meanwhile hyper writes out what it
    /// holds (it flushes whenever the body is not ready, and again as the socket takes
    /// more), and the client gets the answer as far as it came, then the close.
    failed: Option<Held>,
}

/// An HTTP/2 answer handed on in pieces of at most [`PIECE`], each telling its stream's
/// watch that the answer moved. hyper holds one piece until the client's window has taken
/// the one before, and asks for the next only then, so the watch hears from the answer each
/// time the client has read a [`PIECE`]. A page read whole (up to 2 MiB, one piece) to a
/// slow but steady reader would otherwise look stalled until the reader had all of it.
struct Paced {
    watch: Arc<AnswerWatch>,
    rest: Bytes,
}

/// The largest piece of an HTTP/2 answer handed on at once: h2's default frame size.
const PIECE: usize = 16 * 1024;

impl Paced {
    /// The next piece of `data`, keeping what is left of it.
    fn piece(&mut self, mut data: Bytes) -> Bytes {
        self.watch.moved();
        if data.len() > PIECE {
            self.rest = data.split_off(PIECE);
        }
        data
    }
}

/// How long a body's error waits behind the bytes before it: what a client that reads
/// slower has not taken by then is lost with the connection, as with nginx's
/// `proxy_buffering off` when the app fails.
const ERROR_HOLD: Duration = Duration::from_secs(1);

struct Held {
    error: BoxError,
    until: Pin<Box<tokio::time::Sleep>>,
}

impl Observed {
    fn finish(&mut self, complete: bool) {
        let Some(mut done) = self.done.take() else {
            return;
        };
        done.request.finish(End {
            kind: done.kind,
            status: done.status,
            upstream: done.upstream,
            sent: self.sent,
            tunneled_in: 0,
            answered_in: None,
            complete,
        });
    }
}

/// Counts and logs a request head that hyper refused on an HTTP/1 connection, if `error`
/// (the connection's end) is one: hyper has answered it itself (400 for a malformed head,
/// 431 for one over `server.max_header_size` or `server.max_headers`, 414 for a URI over
/// 64 KiB) and closes the connection; the request never reached routing. Its access line
/// has kind `refused`, no method or path (the head did not parse) and hyper's reason, as
/// nginx logs its 400s. Returns false for any other end (a client gone mid-request, an I/O
/// error): those answered nobody.
pub(super) fn refused_head(
    state: &AppState,
    peer: SocketAddr,
    error: &(dyn std::error::Error + Send + Sync + 'static),
) -> bool {
    let Some(status) = refusal_status(error) else {
        return false;
    };
    log_refusal(state, peer, status, error);
    true
}

/// Counts and logs a request head begun on an HTTP/1 connection and not completed within
/// `server.header_read_timeout` (`limit`): the connection is dropped with no answer and
/// logged as a 408 of kind `refused`, as nginx logs one for `client_header_timeout`.
pub(super) fn head_timed_out(state: &AppState, peer: SocketAddr, limit: Duration) {
    let reason = format_args!(
        "request head not complete within server.header_read_timeout ({})",
        humantime::format_duration(limit)
    );
    log_refusal(state, peer, StatusCode::REQUEST_TIMEOUT, &reason);
}

/// Counts and logs plain HTTP sent to a TLS port, answered `400` before any request was
/// read (see `tls::answer_plain_http`), as nginx logs its 400 for it.
pub(super) fn plain_http_on_tls(state: &AppState, peer: SocketAddr) {
    let reason = "plain HTTP request sent to the HTTPS port";
    log_refusal(state, peer, StatusCode::BAD_REQUEST, &reason);
}

/// The count and the access line of a head that never became a request.
fn log_refusal(state: &AppState, peer: SocketAddr, status: StatusCode, reason: &dyn Display) {
    state.metrics.refused(status);
    info!(
        target: ACCESS_TARGET,
        method = "-",
        path = "",
        status = status.as_u16(),
        kind = RequestKind::Refused.as_str(),
        peer = %ClientAddr(peer),
        reason = %reason,
    );
}

/// The status hyper answered a refused request head with (its `on_error`), or `None` when
/// `error` is no such refusal.
fn refusal_status(error: &(dyn std::error::Error + Send + Sync + 'static)) -> Option<StatusCode> {
    let error = error.downcast_ref::<hyper::Error>()?;
    // hyper answers nothing to an HTTP/2 preface on an HTTP/1-only connection, nor after
    // an internal error of its own.
    if !error.is_parse() || error.is_parse_version_h2() {
        return None;
    }
    // hyper's API tells the kinds of a parse error apart only by their message.
    let message = error.to_string();
    if message.starts_with("internal error") {
        return None;
    }
    if error.is_parse_too_large() {
        return Some(if message.starts_with("URI too long") {
            StatusCode::URI_TOO_LONG
        } else {
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        });
    }
    Some(StatusCode::BAD_REQUEST)
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

impl http_body::Body for Observed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(held) = &mut self.failed {
            if held.until.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            return Poll::Ready(self.failed.take().map(|held| Err(held.error)));
        }
        if let Some(paced) = &mut self.paced
            && !paced.rest.is_empty()
        {
            let rest = std::mem::take(&mut paced.rest);
            let piece = paced.piece(rest);
            self.sent += piece.len() as u64;
            return Poll::Ready(Some(Ok(Frame::data(piece))));
        }
        let polled = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Err(error))) => {
                self.finish(false);
                let mut until = Box::pin(tokio::time::sleep(ERROR_HOLD));
                // Polled once so that it wakes this body when it is over.
                let _ = until.as_mut().poll(cx);
                self.failed = Some(Held { error, until });
                return Poll::Pending;
            }
            polled => polled,
        };
        self.waiting = polled.is_pending();
        let frame = match polled {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(None) => {
                self.finish(true);
                return Poll::Ready(None);
            }
            // Errors are held back above.
            other => return other,
        };
        let frame = match &mut self.paced {
            Some(paced) => match frame.into_data() {
                Ok(data) => Frame::data(paced.piece(data)),
                Err(trailers) => trailers,
            },
            None => frame,
        };
        if let Some(data) = frame.data_ref() {
            self.sent += data.len() as u64;
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.paced.as_ref().is_none_or(|p| p.rest.is_empty()) && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let hint = self.inner.size_hint();
        let Some(rest) = self.paced.as_ref().map(|p| p.rest.len() as u64) else {
            return hint;
        };
        let mut more = SizeHint::new();
        if let Some(upper) = hint.upper() {
            more.set_upper(upper + rest);
        }
        more.set_lower(hint.lower() + rest);
        more
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        // An empty body may never be polled, and a client may leave mid-body: either way
        // the request is over now. It is complete when nothing was left to send.
        let complete = self.is_end_stream();
        if !complete {
            self.note_standing_still();
        }
        self.finish(complete);
    }
}

impl Observed {
    /// When the server cut the answer for standing still (the HTTP/2 stream's watch, the
    /// HTTP/1 connection's watchdog), says which side stopped it.
    fn note_standing_still(&mut self) {
        let Some(done) = &mut self.done else { return };
        let stood_still = self.paced.as_ref().is_some_and(|p| p.watch.stood_still())
            || done.request.in_flight.answer_stalled();
        if stood_still {
            done.stood_still(self.waiting);
        }
    }
}
