//! TLS to an `https://` app: the connector the pool opens its connections with.
//!
//! Certificates are verified against the system's roots (as curl does) plus
//! `upstream.tls_ca_file`, and the name checked is the upstream URL's host, also sent as SNI.
//! Unlike nginx's `proxy_ssl_verify off` default there is no switch to skip verification: an
//! app with a self-signed certificate is trusted by naming that certificate.

use std::path::Path;
use std::sync::Arc;

use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::RootCertStore;
use tracing::debug;

use super::ProxyError;

/// The pool's network connector: plain TCP for `http://`, TCP + TLS (ALPN `http/1.1`) for
/// `https://`.
pub(super) type NetConnector = HttpsConnector<HttpConnector>;

/// Wraps `tcp` for the upstream URL's scheme. `tls_ca_file` only matters for `https`.
pub(super) fn connector(
    mut tcp: HttpConnector,
    https: bool,
    tls_ca_file: Option<&Path>,
) -> Result<NetConnector, ProxyError> {
    // The TLS layer hands `https://` targets to the TCP connector, which must accept them.
    tcp.enforce_http(false);
    let roots = if https {
        trusted_roots(tls_ca_file)?
    } else {
        // An http:// app never reaches the TLS layer; it still needs a config to exist.
        RootCertStore::empty()
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ProxyError::Config(format!("upstream.url: TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .wrap_connector(tcp))
}

/// The system's roots and those of `tls_ca_file`; an error when there are none at all.
pub(super) fn trusted_roots(tls_ca_file: Option<&Path>) -> Result<RootCertStore, ProxyError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        debug!(%error, "skipping part of the system's certificate store");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    debug!(added, ignored, "system roots for the app's TLS");
    if let Some(path) = tls_ca_file {
        let certs =
            crate::pem::certificates("upstream.tls_ca_file", path).map_err(ProxyError::Config)?;
        let (_, ignored) = roots.add_parsable_certificates(certs);
        if ignored > 0 {
            return Err(ProxyError::Config(format!(
                "upstream.tls_ca_file: {ignored} unusable certificate(s) in {}",
                path.display()
            )));
        }
    }
    if roots.is_empty() {
        return Err(ProxyError::Config(
            "upstream.url: https:// needs trusted roots: the system has none; set \
             upstream.tls_ca_file"
                .into(),
        ));
    }
    Ok(roots)
}
