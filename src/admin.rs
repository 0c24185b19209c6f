//! The admin listener: `/healthz` (the process answers), `/readyz` (every readiness check
//! passes: the app is reachable, and later the store), `/metrics` (Prometheus text).
//!
//! It listens apart from the public listener (loopback by default) so that probes and
//! scrapers never compete with, or get exposed to, public traffic.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::join_all;
use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::body::{self, Body};
use crate::metrics::Metrics;
use crate::proxy::Upstream;

/// Something `/readyz` asks before saying the proxy can take traffic.
#[async_trait]
pub trait ReadinessCheck: Send + Sync {
    /// A short name shown in `/readyz`'s answer, e.g. `upstream`.
    fn name(&self) -> &'static str;
    /// `Ok` when ready; otherwise a short reason.
    async fn check(&self) -> Result<(), String>;
}

/// Not ready once the server is shutting down (`server.shutdown_delay`): the load balancer
/// is to stop sending requests before the listener closes.
pub struct NotShuttingDown(pub CancellationToken);

#[async_trait]
impl ReadinessCheck for NotShuttingDown {
    fn name(&self) -> &'static str {
        "server"
    }

    async fn check(&self) -> Result<(), String> {
        match self.0.is_cancelled() {
            true => Err("shutting down".into()),
            false => Ok(()),
        }
    }
}

/// Ready when a connection to the app opens within `timeout`: the TCP connect and, for an
/// `https://` app, the TLS handshake with its certificate verified (the way requests go);
/// with `upstream.ready_path`, when the app answers that path below 500 in time.
pub struct UpstreamReachable {
    upstream: Arc<Upstream>,
    timeout: Duration,
    /// `upstream.ready_path`: asked of the app, whose answer must be below 500.
    ready_path: Option<String>,
}

/// How long the app may take to answer `upstream.ready_path`, its body included.
const READY_ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// How much of that answer's body is read: past it, the connection is dropped.
const READY_ANSWER_READ: usize = 64 * 1024;

impl UpstreamReachable {
    pub fn new(upstream: Arc<Upstream>, timeout: Duration) -> Self {
        UpstreamReachable {
            upstream,
            timeout,
            ready_path: None,
        }
    }

    /// Asks the app for `path` rather than only opening a connection to it.
    pub fn asking(mut self, path: Option<String>) -> Self {
        self.ready_path = path;
        self
    }

    async fn answers(&self, authority: &str, path: &str) -> Result<(), String> {
        let asked = async {
            let answer = self.upstream.get(path, http::HeaderMap::new()).await?;
            let status = answer.status();
            // Read to its end (up to a bound), so that its connection goes back to the pool
            // rather than a new one being opened for every probe.
            let mut body = answer.into_body();
            let mut read = 0;
            while read <= READY_ANSWER_READ {
                match http_body_util::BodyExt::frame(&mut body).await {
                    Some(Ok(frame)) => read += frame.data_ref().map_or(0, |data| data.len()),
                    _ => break,
                }
            }
            Ok::<_, crate::proxy::ProxyError>(status)
        };
        match tokio::time::timeout(READY_ANSWER_TIMEOUT, asked).await {
            Ok(Ok(status)) if status.as_u16() < 500 => Ok(()),
            Ok(Ok(status)) => Err(format!("{authority}{path}: the app answered {status}")),
            Ok(Err(e)) => Err(format!("{authority}{path}: {e}")),
            Err(_) => Err(format!(
                "{authority}{path}: no answer within {}",
                humantime::format_duration(READY_ANSWER_TIMEOUT)
            )),
        }
    }
}

#[async_trait]
impl ReadinessCheck for UpstreamReachable {
    fn name(&self) -> &'static str {
        "upstream"
    }

    async fn check(&self) -> Result<(), String> {
        let authority = self.upstream.address();
        if let Some(path) = &self.ready_path {
            return self.answers(authority, path).await;
        }
        match tokio::time::timeout(self.timeout, self.upstream.probe()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("{authority}: {e}")),
            Err(_) => Err(format!(
                "{authority}: no connection within {}",
                humantime::format_duration(self.timeout)
            )),
        }
    }
}

/// Ready when the store answers a HEAD (of a key that need not exist) in time.
pub struct StoreReachable {
    store: Arc<dyn crate::store::Store>,
    timeout: Duration,
}

impl StoreReachable {
    pub fn new(store: Arc<dyn crate::store::Store>) -> Self {
        StoreReachable {
            store,
            timeout: Duration::from_secs(2),
        }
    }
}

#[async_trait]
impl ReadinessCheck for StoreReachable {
    fn name(&self) -> &'static str {
        "store"
    }

    async fn check(&self) -> Result<(), String> {
        match tokio::time::timeout(self.timeout, self.store.probe()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "no answer within {}",
                humantime::format_duration(self.timeout)
            )),
        }
    }
}

/// The admin endpoints and what they report on.
pub struct Admin {
    metrics: Metrics,
    checks: Vec<Arc<dyn ReadinessCheck>>,
}

impl Admin {
    pub fn new(metrics: Metrics) -> Admin {
        Admin {
            metrics,
            checks: Vec::new(),
        }
    }

    /// Adds a check that `/readyz` runs (all run concurrently).
    pub fn with_check(mut self, check: Arc<dyn ReadinessCheck>) -> Admin {
        self.checks.push(check);
        self
    }

    /// Serves the admin endpoints on `listener` until `cancel` fires.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, cancel: CancellationToken) {
        loop {
            let (stream, _) = tokio::select! {
                _ = cancel.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let admin = Arc::clone(&self);
            let cancel = cancel.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let admin = Arc::clone(&admin);
                    async move { Ok::<_, Infallible>(admin.handle(req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    result = conn => if let Err(e) = result { debug!(error = %e, "admin connection") },
                    _ = cancel.cancelled() => {}
                }
            });
        }
    }

    /// Answers one admin request.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path();
        if !matches!(path, "/healthz" | "/readyz" | "/metrics") {
            return body::text(
                StatusCode::NOT_FOUND,
                "not found: try /healthz, /readyz, /metrics\n",
            );
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            // RFC 9110 §15.5.6: a 405 says which methods the resource has.
            let mut refused = body::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            refused.headers_mut().insert(
                http::header::ALLOW,
                http::HeaderValue::from_static("GET, HEAD"),
            );
            return refused;
        }
        match path {
            "/healthz" => body::text(StatusCode::OK, "ok\n"),
            "/readyz" => self.readyz().await,
            _ => self.metrics(),
        }
    }

    async fn readyz(&self) -> Response<Body> {
        let results = join_all(
            self.checks
                .iter()
                .map(|c| async move { (c.name(), c.check().await) }),
        )
        .await;
        let failures: Vec<String> = results
            .into_iter()
            .filter_map(|(name, result)| result.err().map(|reason| format!("{name}: {reason}")))
            .collect();
        if failures.is_empty() {
            body::text(StatusCode::OK, "ready\n")
        } else {
            body::text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {}\n", failures.join("; ")),
            )
        }
    }

    fn metrics(&self) -> Response<Body> {
        match self.metrics.encode() {
            Ok(encoded) => {
                let mut response = body::text(StatusCode::OK, encoded);
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                response
            }
            Err(_) => body::text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding metrics failed\n",
            ),
        }
    }
}
