//! Forwarding to the app: the pooled client (TLS to an `https://` app, or a Unix socket),
//! header hygiene, upgrades.
//!
//! [`Upstream`] is built once from `[upstream]` and shared; [`Upstream::forward`] sends a
//! client's request on with hop-by-hop headers dropped and `X-Forwarded-*`/`Forwarded` set,
//! streaming both bodies with back-pressure (nothing is buffered whole). An `Upgrade` request
//! (WebSocket) that the app accepts with `101` is tunnelled both ways.
//!
//! Failures are [`ProxyError`]s, sorted by side; [`ProxyError::into_response`] turns one into
//! the short answer the client sees (`502` app unreachable, `504` app too slow, `400` bad
//! request).

mod admission;
mod connect;
mod error;
mod forwarding;
mod headers;
mod pool;
mod replay;
mod tls;
mod upgrade;
mod upstream;

pub use error::{ANSWER_CUT, ANSWER_STALLED, ProxyError};
pub use forwarding::canonical_ip;
pub use headers::{
    h2_problem, host_problem, is_http_defined_header, is_managed_header, request_host,
    target_problem,
};
pub use upgrade::{Traffic, Tunnel, TunnelEnd};
pub use upstream::{ClientInfo, Upstream, UpstreamTiming};

/// Reads what connecting to an `https://` app needs (the system's roots and
/// `upstream.tls_ca_file`), as a start would, without connecting.
pub fn check_app_tls(cfg: &crate::config::UpstreamConfig) -> Result<(), ProxyError> {
    if cfg.url.scheme() == "https" {
        tls::trusted_roots(cfg.tls_ca_file.as_deref())?;
    }
    Ok(())
}

/// A header map of `pairs`, in order, for the header modules' tests.
#[cfg(test)]
fn header_map(pairs: &[(&str, &str)]) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}
