//! TLS termination with rustls, from PEM files, re-read on demand (SIGHUP) so that a renewed
//! certificate is served without a restart.

use std::fs::File;
use std::io::BufReader;
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};

use anyhow::Context;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use crate::config::TlsConfig;

/// The TLS acceptors for `server.tls`, both serving what `certificates` holds: one whose ALPN
/// offers `h2` and `http/1.1`, one offering `http/1.1` alone. Each connection takes the one
/// `server.http2` asks for as it is accepted, so that a reload turning HTTP/2 on or off
/// applies to the handshakes from then on (as nginx's `http2` does on reload).
#[derive(Clone)]
pub(super) struct Acceptors {
    http2: TlsAcceptor,
    http1_only: TlsAcceptor,
}

impl Acceptors {
    pub(super) fn new(certificates: &Arc<Certificates>) -> anyhow::Result<Acceptors> {
        Ok(Acceptors {
            http2: acceptor(Arc::clone(certificates), &[b"h2", b"http/1.1"])?,
            http1_only: acceptor(Arc::clone(certificates), &[b"http/1.1"])?,
        })
    }

    /// The acceptor whose ALPN offers HTTP/2 when `http2` is on.
    pub(super) fn offering(&self, http2: bool) -> &TlsAcceptor {
        if http2 { &self.http2 } else { &self.http1_only }
    }
}

/// Whether a connection to a TLS port begins with plain HTTP (a request line's method,
/// letters) rather than a TLS record (a handshake's begins with 22). Peeked: the bytes stay
/// for the handshake. A connection closed before a byte is neither.
pub(super) async fn sent_plain_http(stream: &TcpStream) -> bool {
    let mut first = [0u8; 1];
    matches!(stream.peek(&mut first).await, Ok(1) if first[0].is_ascii_uppercase())
}

/// Answers plain HTTP sent to a TLS port with a `400` that says so, as nginx does ("The
/// plain HTTP request was sent to HTTPS port"), rather than a TLS alert the client cannot
/// read: the usual cause is a load balancer or a link with `http://` and the TLS port.
pub(super) async fn answer_plain_http(stream: &mut TcpStream, peer: SocketAddr) {
    const BODY: &str = "plain HTTP request sent to the HTTPS port: use https://\n";
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    debug!(%peer, "plain HTTP on a TLS port; answered 400");
    // The client may be gone already; nothing more to do either way.
    let _ = stream.write_all(answer.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn acceptor(certificates: Arc<Certificates>, alpn: &[&[u8]]) -> anyhow::Result<TlsAcceptor> {
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::clone(&certificates.provider))
            .with_safe_default_protocol_versions()
            .context("server.tls: protocol versions")?
            .with_no_client_auth()
            .with_cert_resolver(certificates);
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The certificate chain and key the listener serves, as read from `server.tls`'s files.
#[derive(Debug)]
pub struct Certificates {
    files: TlsConfig,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl Certificates {
    /// Reads `files`; the error names the key, the file and the reason.
    pub(super) fn load(files: &TlsConfig) -> anyhow::Result<Certificates> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let current = read(files, &provider)?;
        Ok(Certificates {
            files: files.clone(),
            provider,
            current: RwLock::new(Arc::new(current)),
        })
    }

    /// Reads the files again and serves what they hold to the handshakes from now on
    /// (connections already open keep theirs). On an error (a file half written, a key that
    /// does not fit the certificate) the certificate served so far stays.
    pub fn reload(&self) -> anyhow::Result<()> {
        let fresh = read(&self.files, &self.provider)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(fresh);
        Ok(())
    }

    /// The certificate file, for the log.
    pub fn cert_path(&self) -> &std::path::Path {
        &self.files.cert
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        Some(Arc::clone(&current))
    }
}

/// The chain and key in `files`, checked to fit together.
fn read(files: &TlsConfig, provider: &CryptoProvider) -> anyhow::Result<CertifiedKey> {
    let certs =
        crate::pem::certificates("server.tls.cert", &files.cert).map_err(anyhow::Error::msg)?;
    let key_path = files.key.display();
    let file =
        File::open(&files.key).with_context(|| format!("server.tls.key: opening {key_path}"))?;
    let key = rustls_pemfile::private_key(&mut BufReader::new(file))
        .with_context(|| format!("server.tls.key: reading {key_path}"))?
        .with_context(|| format!("server.tls.key: no private key in {key_path}"))?;
    CertifiedKey::from_der(certs, key, provider)
        .context("server.tls: certificate and key do not fit together")
}
