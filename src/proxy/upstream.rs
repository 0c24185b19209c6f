//! Forwarding one request to the app: header hygiene, retries, upgrades (the connections
//! come from [`super::pool`]).

use std::error::Error as StdError;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::connect::HttpConnector;
use ipnet::IpNet;
use tracing::debug;

use super::admission::{Admission, Place, PlacedBody};
use super::connect::AppConnector;
use super::pool::{Conn, ConnectError, ConnectTimedOut, LeasedBody, Pool, SendError};
use super::replay::Replay;
use super::upgrade::Tunnel;
use super::{ProxyError, error, forwarding, headers, tls};
use crate::body::{self, Body};
use crate::config::UpstreamConfig;
use crate::metrics::Metrics;

/// Who sent a request: the peer address and whether it came over TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientInfo {
    pub peer: SocketAddr,
    pub tls: bool,
}

/// How long the app took to send its response head; set in the extensions of every
/// response [`Upstream::forward`] returns (for logs and metrics).
/// [`Upstream::forward_timed`] returns it instead: a response's first extension costs
/// three allocations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamTiming(pub Duration);

/// The app behind the proxy: a pooled keep-alive client and what forwarding needs to know.
/// Built once, shared by every connection.
#[derive(Debug)]
pub struct Upstream {
    /// One pool per worker thread, each used by its own worker only (see [`Upstream::pool`]).
    pools: Box<[Arc<Pool>]>,
    /// Where connections go, for messages: `host:port`, or `unix:/path`.
    address: String,
    /// The upstream authority as a `Host` value (used when the client's is not kept).
    host: HeaderValue,
    /// The upstream URL's path without its trailing '/', when it is not just "/".
    base_path: Option<String>,
    preserve_host: bool,
    response_timeout: Duration,
    trusted_proxies: Vec<IpNet>,
    /// `upstream.max_connections`, when set.
    admission: Option<Admission>,
    /// `upstream.websocket_idle_timeout`.
    tunnel_idle_timeout: Duration,
    /// Where [`Upstream::forward`] counts what it could not forward (see
    /// [`Upstream::with_metrics`]).
    metrics: Option<Metrics>,
}

impl Upstream {
    /// Builds the client pool for `cfg`, for one worker thread. Nothing is connected yet.
    pub fn new(cfg: &UpstreamConfig) -> Result<Upstream, ProxyError> {
        Upstream::for_workers(cfg, 1)
    }

    /// Builds the client pool for `cfg` with idle connections kept per worker thread, for
    /// `workers` of them (see [`crate::worker`]).
    pub fn for_workers(cfg: &UpstreamConfig, workers: usize) -> Result<Upstream, ProxyError> {
        let url = &cfg.url;
        let https = match url.scheme() {
            "http" => false,
            "https" => true,
            other => {
                return Err(ProxyError::Config(format!(
                    "upstream.url: scheme must be http or https, not {other:?}"
                )));
            }
        };
        let host = url
            .host_str()
            .ok_or_else(|| ProxyError::Config("upstream.url: needs a host".into()))?;
        let authority_text = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        let authority = Authority::try_from(authority_text.as_str())
            .map_err(|e| ProxyError::Config(format!("upstream.url: {e}")))?;
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|e| ProxyError::Config(format!("upstream.url: {e}")))?;
        let path = url.path().trim_end_matches('/');
        let base_path = (!path.is_empty()).then(|| path.to_string());

        let (connector, address) = match &cfg.unix_socket {
            Some(path) => (
                AppConnector::unix(path.clone()),
                format!("unix:{}", path.display()),
            ),
            None => {
                let mut tcp = HttpConnector::new();
                tcp.set_nodelay(true);
                tcp.set_connect_timeout(Some(cfg.connect_timeout));
                let net = tls::connector(tcp, https, cfg.tls_ca_file.as_deref())?;
                (AppConnector::Net(net), authority.to_string())
            }
        };
        let target = Uri::builder()
            .scheme(if https { Scheme::HTTPS } else { Scheme::HTTP })
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| ProxyError::Config(format!("upstream.url: {e}")))?;
        let pools = (0..workers.max(1))
            .map(|_| Arc::new(Pool::new(connector.clone(), target.clone(), cfg)))
            .collect();

        Ok(Upstream {
            pools,
            address,
            host,
            base_path,
            preserve_host: cfg.preserve_host,
            response_timeout: cfg.response_timeout,
            trusted_proxies: Vec::new(),
            admission: Admission::new(cfg.max_connections, cfg.connect_timeout),
            tunnel_idle_timeout: cfg.websocket_idle_timeout,
            metrics: None,
        })
    }

    /// Peers whose `X-Forwarded-*`/`Forwarded` headers are kept and extended
    /// (`server.trusted_proxies`). Default: none.
    pub fn with_trusted_proxies(mut self, nets: Vec<IpNet>) -> Self {
        self.trusted_proxies = nets;
        self
    }

    /// Shows `upstream.max_connections` in `metrics`, with the requests at the app and
    /// waiting for a place under it; and counts there, by cause, the requests
    /// [`Upstream::forward`] could not forward and the answers the app broke off.
    pub fn with_metrics(mut self, metrics: &Metrics) -> Self {
        let places = metrics.app_places(self.admission.as_ref().map_or(0, Admission::max));
        if let Some(admission) = &mut self.admission {
            admission.show_in(places);
        }
        for pool in &self.pools {
            pool.count_in(metrics);
        }
        self.metrics = Some(metrics.clone());
        self
    }

    /// Where connections to the app go (`host:port`, or `unix:/path`), e.g. for a
    /// reachability check's message.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Opens a connection to the app (TCP, and TLS for `https://`; or its Unix socket) and
    /// closes it: whether requests could reach it now.
    pub async fn probe(&self) -> Result<(), ProxyError> {
        self.pool().connect().await?;
        Ok(())
    }

    /// Forwards `req` to the app with header hygiene and forwarding headers applied,
    /// streaming both ways. An upgrade the app accepts (`101`) comes back with a [`Tunnel`]
    /// in its extensions, for the client connection's task to run. The response carries
    /// [`UpstreamTiming`]. A failure is counted in `offload_upstream_errors` (the asset and
    /// upload ways' requests, and origin pulls, come this way).
    pub async fn forward(
        &self,
        req: Request<Body>,
        client: &ClientInfo,
    ) -> Result<Response<Body>, ProxyError> {
        match self.forward_timed(Box::new(req), client).await {
            Ok((mut response, took)) => {
                response.extensions_mut().insert(UpstreamTiming(took));
                Ok(response)
            }
            Err(e) => {
                if let Some(metrics) = &self.metrics {
                    metrics.upstream_error(e.cause());
                }
                Err(e)
            }
        }
    }

    /// [`Upstream::forward`], returning how long the app took to send its response head
    /// next to the response rather than in it; a failure is the caller's to count (way 1
    /// does, as it answers it).
    pub async fn forward_timed(
        &self,
        mut req: Box<Request<Body>>,
        client: &ClientInfo,
    ) -> Result<(Response<Body>, Duration), ProxyError> {
        if req.method() == Method::CONNECT {
            // A tunnel to any host the client names: a forward proxy's job, not ours.
            return Err(ProxyError::NotImplemented(
                "CONNECT (offload is a reverse proxy)".into(),
            ));
        }
        // Changed in place: taken apart and put together again, the request (240 bytes)
        // would be copied twice more into every request's future.
        // Upgrades exist in HTTP/1.1 only (HTTP/2's extended CONNECT is not tunnelled).
        let tunnel = req.version() == Version::HTTP_11 && headers::wants_websocket(req.headers());
        let client_upgrade = req.extensions_mut().remove::<OnUpgrade>();

        let original_host = headers::request_host(req.uri(), req.headers());
        let trusted = self.is_trusted(client.peer.ip());
        let from_h2 = req.version() == Version::HTTP_2;
        let headers = req.headers_mut();
        if from_h2 {
            headers::join_cookies(headers);
        }
        let seen = headers::strip_hop_by_hop(headers, tunnel);
        if seen.other_coding {
            // hyper undid the chunking only: the app would get gzip as if it were plain.
            return Err(ProxyError::NotImplemented(
                "a transfer coding other than chunked, or chunked twice".into(),
            ));
        }
        if seen.content_length_to_normalise {
            // HTTP/2 passes a length given twice when the values agree; HTTP/1.1's parser
            // merges them, and an app may refuse them repeated ("Duplicate Content-Length").
            headers::normalise_content_length(headers);
        }
        if seen.proxy_headers {
            headers::strip_proxy_headers(headers);
        }
        // The client already got its `100 Continue` from our server when the body was first
        // polled; an app that never answers 100 (PHP's built-in server) must not stall us.
        if seen.expect {
            headers.remove(header::EXPECT);
        }
        forwarding::strip_forwarding_lookalikes(headers);
        forwarding::set_forwarding(headers, client, trusted, original_host.as_ref());
        let host = match original_host {
            Some(h) if self.preserve_host => h,
            _ => self.host.clone(),
        };
        headers.insert(header::HOST, host);
        *req.uri_mut() = self.uri_for(req.uri().path_and_query())?;
        *req.version_mut() = Version::HTTP_11;
        *req.extensions_mut() = http::Extensions::new();
        if has_unsized_body_hyper_would_drop(&req) {
            // The client sent a body of no stated length (chunked, or HTTP/2 without
            // content-length) with a GET or HEAD: hyper sends such a request without its
            // body unless told to chunk it.
            req.headers_mut().insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
        }

        let started = Instant::now();
        let mut response = match (tunnel, client_upgrade) {
            (true, Some(client_upgrade)) => {
                let (response, admitted) = Box::pin(self.send_upgradable(req)).await?;
                if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                    let took = started.elapsed();
                    return Ok((self.switch_protocols(response, client_upgrade)?, took));
                }
                response.map(|body| body::boxed(PlacedBody::new(body, admitted)))
            }
            _ => self.send(req).await?,
        };
        let took = started.elapsed();
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            return Err(ProxyError::Upstream(
                "switched protocols without an upgrade request".into(),
            ));
        }
        clean_response(&mut response)?;
        Ok((response, took))
    }

    /// A plain GET to the app for `path_and_query`, with `headers` as given (e.g. Cookie,
    /// and the Host of the request it is made for); `Host` is the upstream's own when none
    /// is given or `upstream.preserve_host` is off, as for a forwarded request.
    pub async fn get(
        &self,
        path_and_query: &str,
        headers: HeaderMap,
    ) -> Result<Response<Body>, ProxyError> {
        let pq = PathAndQuery::try_from(path_and_query)
            .map_err(|e| ProxyError::BadRequest(format!("{path_and_query:?}: {e}")))?;
        let mut req = Request::new(body::empty());
        *req.uri_mut() = self.uri_for(Some(&pq))?;
        *req.headers_mut() = headers;
        if !self.preserve_host || !req.headers().contains_key(header::HOST) {
            req.headers_mut().insert(header::HOST, self.host.clone());
        }
        let mut response = self.send(Box::new(req)).await?;
        clean_response(&mut response)?;
        Ok(response)
    }

    /// Sends `req` and waits for the response head. A request that meets a pooled connection
    /// the app closed meanwhile (its keep-alive timeout racing our reuse) is sent once more,
    /// on a fresh connection, as nginx does, when that is safe: hyper had not begun sending
    /// it, or it is idempotent and bodiless. The client never sees that race as a `502`.
    async fn send(&self, req: Box<Request<Body>>) -> Result<Response<Body>, ProxyError> {
        let admitted = self.admit().await?;
        let conn = self.pool().checkout().await?;
        let reused = conn.reused();
        // Only a reused connection can meet that race: a fresh one needs no copy.
        let replay = if reused { Replay::of(&req) } else { None };
        let failure = match conn.exchange(req, self.response_timeout).await {
            Ok((response, mut conn)) => {
                conn.hold(admitted);
                return Ok(self.leased(response, conn));
            }
            Err(SendError::Failed(failure)) if reused => failure,
            Err(other) => return Err(other.into()),
        };
        let retry = match failure.request {
            Some(unsent) => unsent,
            None => match replay
                .filter(|_| closed_before_answer(&failure.error))
                .and_then(Replay::into_request)
            {
                Some(copy) => copy,
                None => return Err(ProxyError::from_hyper(&failure.error)),
            },
        };
        debug!(error = %failure.error, "app closed a pooled connection; sending again");
        // Boxed: rare, and every request's future would otherwise carry its state.
        Box::pin(self.send_again(retry, admitted)).await
    }

    /// The request's place under `upstream.max_connections`; `None` when there is no limit.
    async fn admit(&self) -> Result<Option<Place>, ProxyError> {
        match &self.admission {
            Some(admission) => admission.admit().await.map(Some),
            None => Ok(None),
        }
    }

    /// The retry of [`Upstream::send`], on a new connection, in the place it was admitted to.
    async fn send_again(
        &self,
        req: Request<Body>,
        admitted: Option<Place>,
    ) -> Result<Response<Body>, ProxyError> {
        let conn = self.pool().connect().await?;
        let (response, mut conn) = conn.exchange(Box::new(req), self.response_timeout).await?;
        conn.hold(admitted);
        Ok(self.leased(response, conn))
    }

    /// The response with its body carrying the connection back to the pool when read.
    fn leased(&self, response: Response<Incoming>, conn: Conn) -> Response<Body> {
        let pool = Arc::clone(self.pool());
        response.map(|body| body::boxed(LeasedBody::new(body, conn, pool)))
    }

    /// Sends an upgrade request on a connection of its own, for a tunnel if the app agrees;
    /// with the request's place under `upstream.max_connections`, which an open tunnel does
    /// not keep, but an answer that is no `101` keeps until its body is in.
    async fn send_upgradable(
        &self,
        req: Box<Request<Body>>,
    ) -> Result<(Response<Incoming>, Option<Place>), ProxyError> {
        let admitted = self.admit().await?;
        let conn = self.pool().connect_upgradable().await?;
        let (response, _) = conn.exchange(req, self.response_timeout).await?;
        Ok((response, admitted))
    }

    /// Answers a `101` from the app: tunnels when the client asked to upgrade, refuses
    /// otherwise (an app cannot switch protocols unasked).
    fn switch_protocols(
        &self,
        mut response: Response<Incoming>,
        client_upgrade: OnUpgrade,
    ) -> Result<Response<Body>, ProxyError> {
        if !headers::upgrades_to_websocket(response.headers()) {
            return Err(ProxyError::Upstream(
                "switched to a protocol other than the websocket asked for".into(),
            ));
        }
        let Some(app_upgrade) = response.extensions_mut().remove::<OnUpgrade>() else {
            return Err(ProxyError::Upstream(
                "switched protocols without a connection".into(),
            ));
        };
        let tunnel = Tunnel::new(client_upgrade, app_upgrade, self.tunnel_idle_timeout);
        headers::strip_hop_by_hop(response.headers_mut(), true);
        let mut response = response.map(|_| body::empty());
        response.extensions_mut().insert(tunnel);
        Ok(response)
    }

    /// The calling worker's pool (shared by threads that are no worker: still correct, as
    /// each pool locks its idle list).
    fn pool(&self) -> &Arc<Pool> {
        crate::worker::mine(&self.pools)
    }

    /// Whether `ip` is one of `server.trusted_proxies`, whose forwarding headers (and
    /// request IDs) are kept.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = forwarding::canonical_ip(ip);
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    /// The app's request target for a request's path and query, kept byte for byte.
    /// `OPTIONS *` (the asterisk form: the server as a whole) stays `*`, under a base path
    /// too.
    fn uri_for(&self, pq: Option<&PathAndQuery>) -> Result<Uri, ProxyError> {
        let pq = match (&self.base_path, pq) {
            (None, Some(pq)) => pq.clone(),
            (Some(_), Some(pq)) if pq.as_str() == "*" => pq.clone(),
            (None, None) => PathAndQuery::from_static("/"),
            (Some(base), pq) => {
                let rest = pq.map_or("/", PathAndQuery::as_str);
                PathAndQuery::try_from(format!("{base}{rest}"))
                    .map_err(|e| ProxyError::BadRequest(e.to_string()))?
            }
        };
        // Origin form (`/path?query`): what an HTTP/1.1 request to the app carries.
        Ok(Uri::from(pq))
    }
}

impl From<SendError> for ProxyError {
    fn from(err: SendError) -> ProxyError {
        match err {
            SendError::Failed(failure) => ProxyError::from_hyper(&failure.error),
            SendError::Timeout(after) => ProxyError::Timeout(after),
        }
    }
}

impl From<ConnectError> for ProxyError {
    fn from(err: ConnectError) -> ProxyError {
        match err.0.downcast_ref::<ConnectTimedOut>() {
            Some(ConnectTimedOut(limit)) => ProxyError::ConnectTimeout(*limit),
            None => ProxyError::Connect(error::chain(&*err.0)),
        }
    }
}

/// The app closed the connection before any answer: what a pooled connection that timed out
/// on the app's side looks like when we reuse it. Closed with our request unread in its
/// socket, the app's kernel answers with a reset rather than an end of stream.
fn closed_before_answer(err: &hyper::Error) -> bool {
    if err.is_incomplete_message() || err.is_canceled() {
        return true;
    }
    StdError::source(err)
        .and_then(|cause| cause.downcast_ref::<io::Error>())
        .is_some_and(|io| {
            matches!(
                io.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
            )
        })
}

/// Whether `req` is a GET or HEAD with a body of unknown length, which hyper would send
/// without it.
fn has_unsized_body_hyper_would_drop(req: &Request<Body>) -> bool {
    matches!(*req.method(), Method::GET | Method::HEAD)
        && !req.body().is_end_stream()
        && req.body().size_hint().exact().is_none()
}

/// Removes the app's response's hop-by-hop headers, and refuses a framing that cannot be
/// passed on as it came, as nginx does: `Transfer-Encoding` with `Content-Length` (RFC 9112
/// §6.3: a smuggling pattern; the length would be forwarded with the chunked body), or a
/// coding besides `chunked` (once `Transfer-Encoding` goes, it would be lost). A length
/// given twice over (`5, 5`) goes on once. The answer goes on as HTTP/1.1 whatever the
/// app spoke: an app's HTTP/1.0 status line would tell the client to close after it.
fn clean_response<B>(response: &mut Response<B>) -> Result<(), ProxyError> {
    *response.version_mut() = Version::HTTP_11;
    let headers = response.headers_mut();
    let framing = headers::strip_hop_by_hop(headers, false);
    if framing.transfer_encoding && framing.content_length {
        return Err(ProxyError::Upstream(
            "response has both Transfer-Encoding and Content-Length".into(),
        ));
    }
    if framing.other_coding {
        return Err(ProxyError::Upstream(
            "response has a transfer coding other than chunked, or chunked twice".into(),
        ));
    }
    if framing.content_length_to_normalise {
        headers::normalise_content_length(headers);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(url: &str) -> Upstream {
        let cfg = UpstreamConfig {
            url: url.parse().unwrap(),
            ..UpstreamConfig::default()
        };
        Upstream::new(&cfg).unwrap()
    }

    #[test]
    fn uri_keeps_path_and_query_byte_exact() {
        let u = upstream("http://127.0.0.1:8000");
        for target in ["/a%2Fb/%20?x=%41&&y", "//double", "/%E2%9C%93?q=%C3%A9"] {
            let pq = PathAndQuery::try_from(target).unwrap();
            let uri = u.uri_for(Some(&pq)).unwrap();
            assert_eq!(uri.to_string(), target);
            assert!(uri.authority().is_none(), "origin form");
        }
    }

    #[test]
    fn base_path_is_prefixed() {
        let u = upstream("http://app:81/base/");
        let pq = PathAndQuery::from_static("/x?y");
        assert_eq!(u.uri_for(Some(&pq)).unwrap().to_string(), "/base/x?y");
        assert_eq!(u.pool().target().to_string(), "http://app:81/");
        let asterisk = PathAndQuery::from_static("*");
        assert_eq!(u.uri_for(Some(&asterisk)).unwrap().to_string(), "*");
    }

    #[test]
    fn https_upstream_connects_with_tls_to_the_default_port() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let cert = rcgen::generate_simple_self_signed(vec!["app".to_string()]).unwrap();
        std::fs::write(&ca, cert.cert.pem()).unwrap();
        let cfg = UpstreamConfig {
            url: "https://app".parse().unwrap(),
            tls_ca_file: Some(ca),
            ..UpstreamConfig::default()
        };
        let u = Upstream::new(&cfg).unwrap();
        assert_eq!(u.pool().target().to_string(), "https://app/");
        assert_eq!(u.host, "app");
    }

    #[test]
    fn other_schemes_are_refused_clearly() {
        let cfg = UpstreamConfig {
            url: "ftp://app".parse().unwrap(),
            ..UpstreamConfig::default()
        };
        let err = Upstream::new(&cfg).unwrap_err().to_string();
        assert!(err.contains("scheme must be http or https"), "{err}");
    }

    #[test]
    fn an_unusable_tls_ca_file_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        for (path, reason) in [
            (dir.path().join("missing.pem"), "reading"),
            (empty, "no certificate"),
        ] {
            let cfg = UpstreamConfig {
                url: "https://app".parse().unwrap(),
                tls_ca_file: Some(path),
                ..UpstreamConfig::default()
            };
            let err = Upstream::new(&cfg).unwrap_err().to_string();
            assert!(
                err.contains("upstream.tls_ca_file") && err.contains(reason),
                "{err}"
            );
        }
    }
}
