//! What can go wrong while forwarding, and the answer each failure gets.

use std::error::Error as StdError;
use std::fmt::Write as _;
use std::time::Duration;

use http::{Response, StatusCode};

use crate::body::{self, Body, Stalled, TooLarge};

/// A forwarding failure. The variant picks the status; the message is the short body the
/// client sees (lowercase, no secrets, no trailing period).
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The app could not be reached (refused, unresolvable, connect timed out): `502`.
    #[error("upstream unreachable: {0}")]
    Connect(String),
    /// The app did not start answering within `upstream.response_timeout`: `504`.
    #[error("upstream timed out after {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// The app did not take the connection (TCP, and TLS for an `https://` app) within this
    /// long: `504`, as nginx answers a `proxy_connect_timeout`.
    #[error("upstream connect timed out after {}", humantime::format_duration(*.0))]
    ConnectTimeout(Duration),
    /// The request body stopped being taken (the app, or the store, stopped reading it) for
    /// this long while the client was still sending it: `504`, as nginx's
    /// `proxy_send_timeout`.
    #[error("upstream stopped reading the request body: none taken for {}", humantime::format_duration(*.0))]
    BodyNotTaken(Duration),
    /// `upstream.max_connections` requests were at the app, and none finished within this
    /// long: `503`, as haproxy answers a request whose queue time ran out.
    #[error("upstream busy: upstream.max_connections ({max}) requests at the app, none finished within {}", humantime::format_duration(*waited))]
    Busy { max: usize, waited: Duration },
    /// The app was reached but the exchange failed (reset, malformed answer): `502`.
    #[error("upstream failed: {0}")]
    Upstream(String),
    /// The client's request cannot be forwarded as it is: `400`.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The client's request asks for what a reverse proxy does not do (`CONNECT`, a
    /// transfer coding other than `chunked`): `501`, as RFC 9110 §15.6.2 and RFC 9112 §6.1
    /// say, and as nginx answers an unknown transfer coding.
    #[error("not implemented: {0}")]
    NotImplemented(String),
    /// The client's request body failed while it was being forwarded (the client went away
    /// or sent a malformed body): `400`, and not the app's fault.
    #[error("request body failed: {0}")]
    ClientBody(String),
    /// The client's request body stopped coming for this long: `408`, as nginx's
    /// `client_body_timeout`.
    #[error("request body stalled: {}", Stalled(*.0))]
    ClientStalled(Duration),
    /// The client's request body is longer than `server.max_body_size` (this many bytes):
    /// `413`, as nginx's `client_max_body_size`.
    #[error("{}", TooLarge(*.0))]
    BodyTooLarge(u64),
    /// The upstream configuration cannot be used (found when building [`super::Upstream`]).
    // The message names the key (`upstream.tls_ca_file: …`).
    #[error("{0}")]
    Config(String),
}

/// The cause an answer the app broke off after its head is counted under (see
/// `Pool::answer_broke_off`): the client got the head and part of the body.
pub const ANSWER_CUT: &str = "answer_cut";

/// The cause an answer cut for standing still at the app is counted under (nginx's
/// `proxy_read_timeout` mid-answer): no byte of it came for `server.idle_timeout`.
pub const ANSWER_STALLED: &str = "answer_stalled";

impl ProxyError {
    /// The status this failure answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Connect(_) | ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout(_)
            | ProxyError::ConnectTimeout(_)
            | ProxyError::BodyNotTaken(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::BadRequest(_) | ProxyError::ClientBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::ClientStalled(_) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ProxyError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::Config(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The client's side failed (its request or its body), not the app.
    pub fn is_clients(&self) -> bool {
        matches!(
            self,
            ProxyError::BadRequest(_)
                | ProxyError::NotImplemented(_)
                | ProxyError::ClientBody(_)
                | ProxyError::ClientStalled(_)
                | ProxyError::BodyTooLarge(_)
        )
    }

    /// A stable label for metrics (`offload_upstream_errors_total{cause}`); an answer the
    /// app broke off after its head is [`ANSWER_CUT`].
    pub fn cause(&self) -> &'static str {
        match self {
            ProxyError::Connect(_) | ProxyError::ConnectTimeout(_) => "connect",
            ProxyError::Timeout(_) => "timeout",
            ProxyError::BodyNotTaken(_) => "body_not_taken",
            ProxyError::Busy { .. } => "busy",
            ProxyError::Upstream(_) => "upstream",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::NotImplemented(_) => "not_implemented",
            ProxyError::ClientBody(_) => "client_body",
            ProxyError::ClientStalled(_) => "client_stalled",
            ProxyError::BodyTooLarge(_) => "body_too_large",
            ProxyError::Config(_) => "config",
        }
    }

    /// The answer the client gets: the status and a one-line text body naming the cause.
    pub fn into_response(self) -> Response<Body> {
        let mut text = self.to_string();
        text.push('\n');
        body::text(self.status(), text)
    }

    /// An exchange with the app that failed after it was reached, with hyper's causes as
    /// text; a failure of the request body the client was sending is the client's.
    pub(crate) fn from_hyper(err: &hyper::Error) -> ProxyError {
        let mut source = err.source();
        while let Some(cause) = source {
            if let Some(Stalled(limit)) = cause.downcast_ref::<Stalled>() {
                return ProxyError::ClientStalled(*limit);
            }
            if let Some(TooLarge(max)) = cause.downcast_ref::<TooLarge>() {
                return ProxyError::BodyTooLarge(*max);
            }
            source = cause.source();
        }
        // hyper's only user error that carries a cause is the request body's own; hyper's
        // own words for it ("error from user's Body stream") would only puzzle the client.
        if err.is_user()
            && let Some(cause) = err.source()
        {
            return ProxyError::ClientBody(chain(cause));
        }
        if err.is_parse_too_large() {
            return ProxyError::Upstream(format!(
                "response head too large: more than {APP_MAX_HEADERS} header lines or {} KiB",
                super::pool::APP_READ_BUFFER / 1024
            ));
        }
        ProxyError::Upstream(chain(err))
    }
}

/// hyper's limit on the header lines of an app's response head (its client's default).
const APP_MAX_HEADERS: usize = 100;

/// The error and its sources joined with ": " (hyper's own messages are terse).
pub(super) fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_side() {
        assert_eq!(
            ProxyError::Connect("x".into()).status(),
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(
            ProxyError::Timeout(Duration::from_secs(3)).status(),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            ProxyError::BadRequest("x".into()).status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            ProxyError::ClientBody("x".into()).status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            ProxyError::ClientStalled(Duration::from_secs(1)).status(),
            StatusCode::REQUEST_TIMEOUT
        );
        let busy = ProxyError::Busy {
            max: 8,
            waited: Duration::from_secs(5),
        };
        assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(busy.cause(), "busy");
        assert!(!busy.is_clients());
        assert!(ProxyError::ClientBody("x".into()).is_clients());
        assert!(!ProxyError::Upstream("x".into()).is_clients());
    }

    #[test]
    fn messages_name_the_cause() {
        let e = ProxyError::Timeout(Duration::from_millis(1500));
        assert_eq!(e.to_string(), "upstream timed out after 1s 500ms");
        let e = ProxyError::Connect("connection refused".into());
        assert_eq!(e.to_string(), "upstream unreachable: connection refused");
        let e = ProxyError::ConnectTimeout(Duration::from_secs(5));
        assert_eq!(e.to_string(), "upstream connect timed out after 5s");
        assert_eq!(e.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(e.cause(), "connect");
        let e = ProxyError::BodyTooLarge(1 << 20);
        assert_eq!(
            e.to_string(),
            "request body larger than server.max_body_size (1 MiB)"
        );
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(e.is_clients());
        let e = ProxyError::BodyNotTaken(Duration::from_secs(60));
        assert_eq!(
            e.to_string(),
            "upstream stopped reading the request body: none taken for 1m"
        );
        assert_eq!(e.status(), StatusCode::GATEWAY_TIMEOUT);
        let e = ProxyError::ClientStalled(Duration::from_secs(60));
        assert_eq!(e.to_string(), "request body stalled: no data for 1m");
    }
}
