//! Listeners, TLS, the router of the ways through the proxy, graceful shutdown.
//!
//! [`Server::bind`] opens the public and admin listeners and builds the shared
//! [`AppState`]; [`Server::run`] accepts connections until the shutdown future resolves,
//! then stops accepting and gives requests in flight `server.shutdown_grace` to finish.
//! Every request goes through [`route`], the one place that knows all the ways through.

mod idle;
mod observe;
mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::admin::{Admin, UpstreamReachable};
use crate::body::Body;
use crate::config::{Config, ServerConfig};
use crate::metrics::Metrics;
use crate::proxy::{ClientInfo, Upstream};
use idle::{Activity, ActivityCounter};
use observe::{RequestRecord, count_request, observe};

/// What every request handler shares: built once at start-up.
#[derive(Debug)]
pub struct AppState {
    pub config: Arc<Config>,
    pub upstream: Upstream,
    pub metrics: Metrics,
}

impl AppState {
    /// Builds the state for `config`: the upstream client pool and fresh metrics.
    pub fn new(config: Arc<Config>) -> anyhow::Result<AppState> {
        let upstream = Upstream::new(&config.upstream)?
            .with_trusted_proxies(config.server.trusted_proxies.clone());
        Ok(AppState {
            config,
            upstream,
            metrics: Metrics::new(),
        })
    }
}

/// Answers one request: the dispatch between the ways through the proxy. Infallible:
/// every failure has already become a response. The answering way marks the response
/// with its [`crate::metrics::RequestKind`] extension (default: pass-through).
pub async fn route(state: Arc<AppState>, req: Request<Body>, client: ClientInfo) -> Response<Body> {
    // [uploads] Upload routes are matched here, before anything reaches the app.
    // [assets] The fs store's own prefix and managed-asset requests (with their fallback on
    //          the app's 404) are dispatched here.
    let response = passthrough(&state, req, &client).await;
    // [rewrite] Response rewriting of asset URLs wraps `response` here.
    response
}

/// Way 1: forward to the app as it is.
async fn passthrough(state: &AppState, req: Request<Body>, client: &ClientInfo) -> Response<Body> {
    match state.upstream.forward(req, client).await {
        Ok(response) => response,
        Err(e) => {
            warn!(error = %e, peer = %client.peer, "forwarding failed");
            state.metrics.upstream_error(e.cause());
            e.into_response()
        }
    }
}

/// Wraps [`route`] with the per-request bookkeeping (byte counts, access log, metrics).
async fn handle(
    state: Arc<AppState>,
    req: Request<Incoming>,
    client: ClientInfo,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let method = req.method().clone();
    let target = req.uri().path_and_query().cloned();
    let (req, bytes_in) = count_request(req);
    let response = route(Arc::clone(&state), req, client).await;
    let record = RequestRecord {
        state,
        method,
        target,
        peer: client.peer,
        started,
        bytes_in,
    };
    Ok(observe(response, record))
}

/// A bound, not yet running server.
pub struct Server {
    state: Arc<AppState>,
    listener: TcpListener,
    admin_listener: Option<TcpListener>,
    admin: Arc<Admin>,
    tls: Option<TlsAcceptor>,
}

impl Server {
    /// Builds the state and binds the listeners (`server.listen`, `server.admin_listen`);
    /// port 0 picks a free port, see [`Server::local_addr`].
    pub async fn bind(config: Config) -> anyhow::Result<Server> {
        let config = Arc::new(config);
        let state = Arc::new(AppState::new(Arc::clone(&config))?);
        let tls = match &config.server.tls {
            Some(t) => Some(tls::acceptor(t, config.server.http2)?),
            None => None,
        };
        let listener = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("server.listen: binding {}", config.server.listen))?;
        let admin_listener = match config.server.admin_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("server.admin_listen: binding {addr}"))?,
            ),
            None => None,
        };
        let admin = Admin::new(state.metrics.clone()).with_check(Arc::new(upstream_check(&config)));
        // [store] A store readiness check joins here once the store is built.
        Ok(Server {
            state,
            listener,
            admin_listener,
            admin: Arc::new(admin),
            tls,
        })
    }

    /// The public listener's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| self.state.config.server.listen)
    }

    /// The admin listener's address, unless it is off.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The shared state (for tests and embedding).
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Serves until `shutdown` resolves, then stops accepting and waits up to
    /// `server.shutdown_grace` for connections in flight.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        if let Some(listener) = self.admin_listener {
            tokio::spawn(Arc::clone(&self.admin).serve(listener, cancel.clone()));
        }
        let server_cfg = &self.state.config.server;
        let grace = server_cfg.shutdown_grace;
        let shared = Arc::new(Shared {
            builder: http_builder(server_cfg),
            tls: self.tls,
            idle_timeout: server_cfg.idle_timeout,
            handshake_timeout: server_cfg.header_read_timeout,
            cancel: cancel.clone(),
            state: self.state,
        });
        info!(listen = %self.listener.local_addr()?, "serving");
        let mut shutdown = pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        tracker.spawn(accept(stream, peer, Arc::clone(&shared)));
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        drop(self.listener);
        info!(
            connections = tracker.len(),
            "shutting down: no new connections"
        );
        cancel.cancel();
        tracker.close();
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            warn!(
                connections = tracker.len(),
                "shutdown grace expired, dropping connections"
            );
        }
        Ok(())
    }
}

/// Binds per `config` and serves until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    Server::bind(config).await?.run(shutdown).await
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot watch SIGTERM; Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    info!("shutdown signal received");
}

/// `/readyz`'s check of the app: a TCP connect within the connect timeout (at most 2 s).
fn upstream_check(config: &Config) -> UpstreamReachable {
    let url = &config.upstream.url;
    let host = url.host_str().unwrap_or("127.0.0.1");
    let port = url.port_or_known_default().unwrap_or(80);
    let timeout = config.upstream.connect_timeout.min(Duration::from_secs(2));
    UpstreamReachable::new(format!("{host}:{port}"), timeout)
}

/// The HTTP/1.1 + HTTP/2 connection builder, set up from `[server]`.
fn http_builder(cfg: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let max_head = usize::try_from(cfg.max_header_size.as_u64()).unwrap_or(usize::MAX);
    builder
        .http1()
        .timer(TokioTimer::new())
        // Slowloris: the whole head within this time; also bounds idle keep-alive waits.
        .header_read_timeout(cfg.header_read_timeout)
        // hyper refuses buffers under 8 KiB (config validation guarantees it; stay safe).
        .max_buf_size(max_head.max(8192))
        .max_headers(cfg.max_headers)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(max_head).unwrap_or(u32::MAX));
    if cfg.http2 {
        builder
    } else {
        builder.http1_only()
    }
}

/// What every connection task shares.
struct Shared {
    state: Arc<AppState>,
    builder: auto::Builder<TokioExecutor>,
    tls: Option<TlsAcceptor>,
    idle_timeout: Duration,
    handshake_timeout: Duration,
    cancel: CancellationToken,
}

/// Sets up one accepted connection (TLS handshake when configured) and serves it.
async fn accept(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    if let Err(e) = stream.set_nodelay(true) {
        debug!(error = %e, "set_nodelay failed");
    }
    let Some(acceptor) = shared.tls.clone() else {
        let client = ClientInfo { peer, tls: false };
        return serve_connection(stream, client, shared).await;
    };
    let handshake = tokio::time::timeout(shared.handshake_timeout, acceptor.accept(stream));
    match handshake.await {
        Ok(Ok(tls_stream)) => {
            let client = ClientInfo { peer, tls: true };
            serve_connection(tls_stream, client, shared).await;
        }
        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => debug!(%peer, "TLS handshake timed out"),
    }
}

/// Serves HTTP on one connection until it ends, it idles past `server.idle_timeout`, or
/// the server shuts down (then in-flight requests finish first).
async fn serve_connection<I>(io: I, client: ClientInfo, shared: Arc<Shared>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = ActivityCounter::default();
    let io = TokioIo::new(Activity::new(io, activity.clone()));
    let state = Arc::clone(&shared.state);
    let service = service_fn(move |req| handle(Arc::clone(&state), req, client));
    let mut conn = pin!(shared.builder.serve_connection_with_upgrades(io, service));
    let idle = shared.idle_timeout;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + idle, idle);
    let mut last_seen = activity.get();
    let mut closing = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    debug!(peer = %client.peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = shared.cancel.cancelled(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = ticks.tick(), if !closing => {
                let seen = activity.get();
                if seen == last_seen {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                last_seen = seen;
            }
        }
    }
}
