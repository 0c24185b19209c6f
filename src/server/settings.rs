//! How a connection is served: `[server]`'s HTTP settings (HTTP/2 among them), timeouts and
//! PROXY protocol. Each connection takes them from the live state as it is accepted, so a
//! reload applies them to connections accepted afterwards while open ones keep what they
//! began with.

use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;

use crate::config::ServerConfig;

/// The listener a connection came in on.
#[derive(Clone, Copy)]
pub(super) enum Entry {
    /// `server.listen`, with TLS when it has no listener of its own (`server.tls` without
    /// `tls.listen`).
    Main { tls: bool },
    /// `server.tls.listen`.
    TlsListener,
}

impl Entry {
    /// Whether a TLS handshake comes first (after any PROXY header).
    pub(super) fn tls(self) -> bool {
        match self {
            Entry::Main { tls } => tls,
            Entry::TlsListener => true,
        }
    }
}

/// What a connection takes from `[server]` as it is accepted.
pub(crate) struct ConnectionSettings {
    pub(super) builder: auto::Builder<TokioExecutor>,
    /// `server.http2`: the builder takes HTTP/2 (h2c with prior knowledge) and a TLS
    /// handshake offers `h2` in ALPN; HTTP/1.1 only otherwise.
    pub(super) http2: bool,
    pub(super) idle_timeout: Duration,
    /// `server.header_read_timeout`: bounds the PROXY header, the TLS handshake and each
    /// request head.
    pub(super) handshake_timeout: Duration,
    /// `server.proxy_protocol`.
    proxy_protocol: bool,
    /// `ServerConfig::tls_proxy_protocol`, for `server.tls.listen`.
    tls_proxy_protocol: bool,
}

impl ConnectionSettings {
    pub(crate) fn new(cfg: &ServerConfig) -> ConnectionSettings {
        ConnectionSettings {
            builder: http_builder(cfg),
            http2: cfg.http2,
            idle_timeout: cfg.idle_timeout,
            handshake_timeout: cfg.header_read_timeout,
            proxy_protocol: cfg.proxy_protocol,
            tls_proxy_protocol: cfg.tls_proxy_protocol(),
        }
    }

    /// Whether a connection on `entry` begins with a PROXY protocol header.
    pub(super) fn proxy_protocol(&self, entry: Entry) -> bool {
        match entry {
            Entry::Main { .. } => self.proxy_protocol,
            Entry::TlsListener => self.tls_proxy_protocol,
        }
    }
}

/// The request-head header limit hyper applies when none is configured.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// The HTTP/1.1 + HTTP/2 connection builder, set up from `[server]`.
fn http_builder(cfg: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let max_head = usize::try_from(cfg.max_header_size.as_u64()).unwrap_or(usize::MAX);
    // No hyper header read timeout: the connection's watchdog (server/idle.rs) enforces
    // `server.header_read_timeout` without a timer per request.
    let mut http1 = builder.http1();
    http1
        // hyper refuses buffers under 8 KiB (config validation guarantees it; stay safe).
        .max_buf_size(max_head.max(8192))
        .keep_alive(true);
    // hyper parses into a fixed array of its default size (100) unless a limit is set, and
    // then builds a vector of that many slots per request head: set only a different limit.
    if cfg.max_headers != HYPER_DEFAULT_MAX_HEADERS {
        http1.max_headers(cfg.max_headers);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(cfg.http2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(max_head).unwrap_or(u32::MAX));
    if cfg.http2 {
        builder
    } else {
        builder.http1_only()
    }
}
