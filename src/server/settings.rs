//! How a connection is served: `[server]`'s HTTP settings (HTTP/2 among them), timeouts and
//! PROXY protocol. Each connection takes them from the live state as it is accepted, so a
//! reload applies them to connections accepted afterwards while open ones keep what they
//! began with. (`server.idle_timeout` as a request's own bound on its body or answer
//! standing still is read from the live state by each request, so a reload applies it to
//! every request that begins afterwards.)

use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::TokioTimer;
use hyper_util::server::conn::auto;

use super::streams::StreamExecutor;
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
    /// HTTP/1.1, and HTTP/2 (h2c with prior knowledge, or `h2` in ALPN) when
    /// `server.http2` is on.
    pub(super) builder: auto::Builder<StreamExecutor>,
    /// The same, HTTP/2 only: for a TLS connection whose ALPN settled on `h2`, served
    /// without waiting for the client's first bytes to tell the protocol, so that the
    /// server's SETTINGS (its stream limit) go out at once, as nginx sends them.
    pub(super) http2_only: auto::Builder<StreamExecutor>,
    /// `server.http2 = false`: HTTP/1.1 only, from this builder (see `super::served` for
    /// why not the auto one), and no `h2` in ALPN.
    pub(super) http1_only: Option<http1::Builder>,
    /// `server.http2`, for the `h2` a TLS handshake offers in ALPN.
    pub(super) http2: bool,
    pub(super) idle_timeout: Duration,
    /// `server.keepalive_requests`.
    pub(super) keepalive_requests: u64,
    /// `server.http2_max_concurrent_streams`.
    pub(super) http2_max_concurrent_streams: u64,
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
            http2_only: http_builder(cfg).http2_only(),
            http1_only: (!cfg.http2).then(|| http1_builder(cfg)),
            http2: cfg.http2,
            idle_timeout: cfg.idle_timeout,
            keepalive_requests: cfg.keepalive_requests,
            http2_max_concurrent_streams: u64::from(cfg.http2_max_concurrent_streams),
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

/// The most of an answer each HTTP/2 stream holds while it waits to be sent (hyper's
/// default: 400 KiB), for a client that grants large flow-control windows (h2load's are
/// 1 GiB) and reads slower than the app answers. With 32 connections of 32 streams of
/// 1 MiB answers this bound alone took offload's peak from 1.2 GB to 0.93 GB, and with the
/// app's reads bounded too (`proxy::pool`) to 0.23 GB (scripts/bench/h2memory.sh). The
/// socket's own buffer holds what is in flight: throughput needs no more.
const HTTP2_SEND_BUFFER: usize = 64 * 1024;

/// The request-head header limit hyper applies when none is configured.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// `server.max_header_size` in bytes.
fn max_head(cfg: &ServerConfig) -> usize {
    usize::try_from(cfg.max_header_size.as_u64()).unwrap_or(usize::MAX)
}

/// The HTTP/1.1 + HTTP/2 connection builder, set up from `[server]`. Its HTTP/1 settings
/// are [`http1_builder`]'s (the two builders are of different types).
fn http_builder(cfg: &ServerConfig) -> auto::Builder<StreamExecutor> {
    let mut builder = auto::Builder::new(StreamExecutor);
    let mut http1 = builder.http1();
    http1.max_buf_size(max_buf_size(cfg)).keep_alive(true);
    if let Some(max) = max_headers(cfg) {
        http1.max_headers(max);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(cfg.http2_max_concurrent_streams)
        .max_send_buf_size(HTTP2_SEND_BUFFER)
        .max_header_list_size(u32::try_from(max_head(cfg)).unwrap_or(u32::MAX));
    builder
}

/// The HTTP/1.1-only connection builder, set up from `[server]`.
fn http1_builder(cfg: &ServerConfig) -> http1::Builder {
    let mut http1 = http1::Builder::new();
    http1.max_buf_size(max_buf_size(cfg)).keep_alive(true);
    if let Some(max) = max_headers(cfg) {
        http1.max_headers(max);
    }
    http1
}

/// hyper's read buffer limit, which bounds a request head: `server.max_header_size`, and
/// no less than the 8 KiB hyper requires (config validation guarantees it; stay safe). No
/// hyper header read timeout is set: the connection's watchdog (server/idle.rs) enforces
/// `server.header_read_timeout` without a timer per request.
fn max_buf_size(cfg: &ServerConfig) -> usize {
    max_head(cfg).max(8192)
}

/// `server.max_headers` for hyper's HTTP/1 parser, unless it is hyper's default: hyper
/// parses into a fixed array of that size unless a limit is set, and then builds a vector of
/// that many slots per request head.
fn max_headers(cfg: &ServerConfig) -> Option<usize> {
    (cfg.max_headers != HYPER_DEFAULT_MAX_HEADERS).then_some(cfg.max_headers)
}
