//! Shared helpers for the end-to-end tests: a real app behind the proxy, offload itself on
//! 127.0.0.1:0, raw HTTP/1.1 exchanges, deterministic streamed bodies, and a real S3 server
//! (`s3`) with test data (`data`).

#![allow(dead_code)]

pub mod app;
pub mod data;
pub mod php;
pub mod process;
pub mod raw;
pub mod s3;
pub mod site;

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use offload::config::Config;
use offload::server::Server;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use app::App;

/// A config for a proxy in front of `app`: both listeners on 127.0.0.1:0.
pub fn config_for(app: SocketAddr) -> Config {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().expect("literal address");
    config.server.admin_listen = Some("127.0.0.1:0".parse().expect("literal address"));
    config.upstream.url = format!("http://{app}").parse().expect("app URL");
    config
}

/// offload running in this process.
pub struct Proxy {
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    /// `server.tls.listen`'s address, when TLS has a listener of its own.
    pub tls_addr: Option<SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
    pub handle: JoinHandle<anyhow::Result<()>>,
}

impl Proxy {
    pub async fn start(config: Config) -> Proxy {
        config.validate().expect("test config is valid");
        let server = Server::bind(config).await.expect("proxy binds");
        Proxy::run(server)
    }

    /// offload with an already opened store (an S3 store whose credentials are not in the
    /// environment).
    pub async fn start_with_store(
        config: Config,
        store: std::sync::Arc<dyn offload::store::Store>,
    ) -> Proxy {
        config.validate().expect("test config is valid");
        let server = Server::bind_with_store(config, store)
            .await
            .expect("proxy binds");
        Proxy::run(server)
    }

    fn run(server: Server) -> Proxy {
        let addr = server.local_addr();
        let admin = server.admin_addr();
        let tls_addr = server.tls_addr();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        Proxy {
            addr,
            admin,
            tls_addr,
            shutdown: Some(tx),
            handle,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin.expect("admin listener on"))
    }

    /// The admin listener's `/metrics` once it contains `needle` (counters are bumped when
    /// a request's answer ends, which may be just after the client saw it); the last text
    /// read when it never does within 2 s.
    pub async fn metrics_until(&self, needle: &str) -> String {
        let url = self.admin_url("/metrics");
        let mut text = String::new();
        for _ in 0..40 {
            let resp = client().get(&url).send().await.expect("metrics");
            text = resp.text().await.expect("metrics body");
            if text.contains(needle) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        text
    }

    /// Starts the graceful shutdown; await `handle` to see it finish.
    pub fn shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// An app and offload in front of it, with `tweak` applied to the config.
pub async fn app_and_proxy(tweak: impl FnOnce(&mut Config)) -> (App, Proxy) {
    let app = App::start().await;
    let mut config = config_for(app.addr);
    tweak(&mut config);
    let proxy = Proxy::start(config).await;
    (app, proxy)
}

/// A GET's status and body text.
pub async fn get_text(url: &str) -> (u16, String) {
    let resp = client().get(url).send().await.expect("GET");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("body"))
}

/// A plain reqwest client (HTTP/1.1, no proxy from the environment).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("reqwest client")
}

/// A reqwest client that speaks HTTP/2 with prior knowledge (h2c), no proxy from the
/// environment.
pub fn h2_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .expect("reqwest h2 client")
}

/// Sends `request` as raw bytes and reads until the server closes the connection (send
/// `Connection: close`) or `wait` passes.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], wait: Duration) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write request");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The body of a raw HTTP/1.1 response (after the blank line).
pub fn raw_body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// Whether a raw HTTP/1.1 response's head says the connection closes after it.
pub fn says_close(response: &str) -> bool {
    let head = response.split_once("\r\n\r\n").map_or(response, |(h, _)| h);
    head.to_ascii_lowercase()
        .contains("\r\nconnection: close\r\n")
        || head.to_ascii_lowercase().ends_with("\r\nconnection: close")
}

/// 64 KiB of fixed pseudo-random bytes; bodies are this block repeated.
pub fn pattern_block() -> Bytes {
    static BLOCK: OnceLock<Bytes> = OnceLock::new();
    BLOCK
        .get_or_init(|| {
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
            let mut v = Vec::with_capacity(64 * 1024);
            while v.len() < 64 * 1024 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                v.extend_from_slice(&x.to_le_bytes());
            }
            Bytes::from(v)
        })
        .clone()
}

/// `len` bytes of the pattern as a stream of 64 KiB chunks (nothing held but the block).
pub fn pattern_stream(
    len: u64,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + Sync + 'static {
    let block = pattern_block();
    let mut left = len;
    futures_util::stream::iter(std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        let n = left.min(block.len() as u64) as usize;
        left -= n as u64;
        Some(Ok(block.slice(..n)))
    }))
}

/// Hex SHA-256 of `len` pattern bytes.
pub fn pattern_sha256(len: u64) -> String {
    let block = pattern_block();
    let mut hasher = Sha256::new();
    let mut left = len;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        hasher.update(&block[..n]);
        left -= n as u64;
    }
    hex::encode(hasher.finalize())
}

/// Reads a response body chunk by chunk, returning its length and hex SHA-256.
pub async fn hash_body(mut response: reqwest::Response) -> (u64, String) {
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    while let Some(chunk) = response.chunk().await.expect("body chunk") {
        len += chunk.len() as u64;
        hasher.update(&chunk);
    }
    (len, hex::encode(hasher.finalize()))
}

/// A self-signed certificate for `localhost` valid from `not_before` to `not_after`
/// (seconds since the Unix epoch), with its key: both PEM.
pub fn certificate_valid(not_before: u64, not_after: u64) -> (String, String) {
    let at = |secs| time::OffsetDateTime::from_unix_timestamp(secs).expect("a date");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    params.not_before = at(i64::try_from(not_before).expect("a date"));
    params.not_after = at(i64::try_from(not_after).expect("a date"));
    let cert = params.self_signed(&key).expect("certificate");
    (cert.pem(), key.serialize_pem())
}

/// Now, in seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}
