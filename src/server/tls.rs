//! TLS termination with rustls, from PEM files, re-read on demand (SIGHUP) so that a renewed
//! certificate is served without a restart.

use std::fs::File;
use std::io::BufReader;
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, error, warn};
use x509_cert::der::Decode;

use crate::config::TlsConfig;
use crate::metrics::Metrics;

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

    /// What is wrong with serving the certificate now, if anything (and its dates can be
    /// read).
    pub(super) fn concern(&self) -> Option<Concern> {
        self.validity()?.concern(SystemTime::now())
    }

    /// When the certificate served (the chain's first) may be served: `None` when its
    /// dates cannot be read (rustls takes certificates a strict DER reading refuses).
    pub(super) fn validity(&self) -> Option<Validity> {
        let current = Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner));
        let leaf = current.cert.first()?;
        let cert = x509_cert::Certificate::from_der(leaf).ok()?;
        let dates = cert.tbs_certificate().validity();
        Some(Validity {
            not_before: UNIX_EPOCH + dates.not_before.to_unix_duration(),
            not_after: UNIX_EPOCH + dates.not_after.to_unix_duration(),
        })
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

/// When a certificate may be served: its `notBefore` and `notAfter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Validity {
    pub(super) not_before: SystemTime,
    pub(super) not_after: SystemTime,
}

/// How long before its end a certificate is warned of: two weeks, or the last third of its
/// life for one issued for less than six weeks (Let's Encrypt's six-day certificates are
/// renewed with two days left). An ACME client renews well before either (certbot with 30
/// of 90 days left): a certificate this close to its end was not renewed, or not reloaded.
const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// What is wrong with serving a certificate now.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Concern {
    /// Past its `notAfter`: clients refuse it.
    Expired(SystemTime),
    /// Before its `notBefore` (a clock behind, or a certificate issued for later): clients
    /// refuse it.
    NotYetValid(SystemTime),
    /// Near its `notAfter`.
    ExpiresSoon(SystemTime),
}

impl Validity {
    /// What is wrong with serving the certificate at `now`, if anything.
    pub(super) fn concern(&self, now: SystemTime) -> Option<Concern> {
        if now >= self.not_after {
            return Some(Concern::Expired(self.not_after));
        }
        if now < self.not_before {
            return Some(Concern::NotYetValid(self.not_before));
        }
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        let warned_for = EXPIRY_WARNING.min(life / 3);
        let left = self.not_after.duration_since(now).unwrap_or_default();
        (left < warned_for).then_some(Concern::ExpiresSoon(self.not_after))
    }
}

impl std::fmt::Display for Concern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = |t: &SystemTime| humantime::format_rfc3339_seconds(*t);
        match self {
            Concern::Expired(t) => {
                write!(f, "the certificate expired at {}; clients refuse it", at(t))
            }
            Concern::NotYetValid(t) => write!(
                f,
                "the certificate is not valid before {}; clients refuse it until then",
                at(t)
            ),
            Concern::ExpiresSoon(t) => write!(
                f,
                "the certificate expires at {}; renew it, then send SIGHUP",
                at(t)
            ),
        }
    }
}

/// Shows the end of the certificate being served in `metrics`, and logs what is wrong with
/// it, if anything (nginx serves an expired certificate without a word). At start and at
/// each reload: between them, the metric is what an alert watches.
pub(super) fn report_validity(certificates: &Certificates, metrics: &Metrics) {
    let cert = certificates.cert_path().display();
    let Some(validity) = certificates.validity() else {
        return warn!(%cert, "server.tls.cert: the certificate's dates cannot be read; its expiry is not watched");
    };
    metrics.tls_certificate_expires(&cert.to_string(), validity.not_after);
    match certificates.concern() {
        Some(concern @ Concern::Expired(_)) => error!(%cert, "server.tls.cert: {concern}"),
        Some(concern) => warn!(%cert, "server.tls.cert: {concern}"),
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn valid_for(days: u32) -> Validity {
        let not_before = UNIX_EPOCH + 20_000 * DAY;
        Validity {
            not_before,
            not_after: not_before + days * DAY,
        }
    }

    #[test]
    fn a_certificate_is_warned_of_near_its_end_and_after() {
        let ninety = valid_for(90);
        let start = ninety.not_before;
        assert_eq!(ninety.concern(start), None);
        assert_eq!(ninety.concern(start + 76 * DAY), None);
        let soon = Some(Concern::ExpiresSoon(ninety.not_after));
        assert_eq!(ninety.concern(start + 77 * DAY), soon);
        let expired = Some(Concern::Expired(ninety.not_after));
        assert_eq!(ninety.concern(ninety.not_after), expired);
        assert_eq!(
            ninety.concern(start - Duration::from_secs(1)),
            Some(Concern::NotYetValid(start))
        );
        // A six-day certificate is warned of in its last two days, not from its first.
        let six = valid_for(6);
        assert_eq!(six.concern(six.not_before + 3 * DAY), None);
        let soon = Some(Concern::ExpiresSoon(six.not_after));
        assert_eq!(six.concern(six.not_before + 5 * DAY), soon);
    }

    #[test]
    fn concerns_say_when() {
        let t = UNIX_EPOCH + 20_000 * DAY;
        assert_eq!(
            Concern::Expired(t).to_string(),
            "the certificate expired at 2024-10-04T00:00:00Z; clients refuse it"
        );
        assert_eq!(
            Concern::ExpiresSoon(t).to_string(),
            "the certificate expires at 2024-10-04T00:00:00Z; renew it, then send SIGHUP"
        );
    }
}
