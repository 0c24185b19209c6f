//! TLS termination with rustls, from PEM files.

use std::fs::File;
use std::io::BufReader;
use std::sync::Arc;

use anyhow::Context;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// Builds the acceptor for `server.tls`; ALPN offers `h2` (when HTTP/2 is on) and
/// `http/1.1`.
pub(super) fn acceptor(cfg: &TlsConfig, http2: bool) -> anyhow::Result<TlsAcceptor> {
    let certs =
        crate::pem::certificates("server.tls.cert", &cfg.cert).map_err(anyhow::Error::msg)?;
    let key = {
        let file = File::open(&cfg.key)
            .with_context(|| format!("server.tls.key: opening {}", cfg.key.display()))?;
        rustls_pemfile::private_key(&mut BufReader::new(file))
            .with_context(|| format!("server.tls.key: reading {}", cfg.key.display()))?
            .with_context(|| format!("server.tls.key: no private key in {}", cfg.key.display()))?
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("server.tls: protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("server.tls: certificate and key do not fit together")?;
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(TlsAcceptor::from(Arc::new(config)))
}
