//! A real HTTP app for the proxy to forward to (hyper, HTTP/1.1), with routes:
//! - `/bytes/N[?chunked]`: N pattern bytes, with Content-Length unless `chunked`;
//! - `/sleep/MS`: answers after MS milliseconds;
//! - `/hop`: answers with hop-by-hop headers the proxy must drop;
//! - `/ws`: a WebSocket echo;
//! - `/set-cookie?V`: answers with `Set-Cookie: V` (for log hygiene tests);
//! - any path registered with [`App::serve_file`]: that file, with its content type;
//! - `/wp-content/uploads/…` otherwise: `404` (an upload this replica lacks);
//! - anything else: JSON describing the request (method, raw target, version, headers in
//!   order, body length and SHA-256), the body read as a stream.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use offload::body::{self, Body};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;

pub struct App {
    pub addr: SocketAddr,
    /// Every request the app received, as `METHOD target`, in arrival order.
    pub seen: Arc<Mutex<Vec<String>>>,
    /// How many connections the app has accepted.
    connections: Arc<AtomicUsize>,
    /// Files served by path: (content type, bytes).
    files: Files,
    task: JoinHandle<()>,
    /// Ends every open connection too, so that pooled keep-alive connections die with the app.
    stopped: CancellationToken,
}

impl App {
    pub async fn start() -> App {
        App::start_with(None).await
    }

    /// The same app over TLS (HTTP/1.1), with the certificate and key given as PEM.
    pub async fn start_tls(cert_pem: &str, key_pem: &str) -> App {
        let certs = rustls_pemfile::certs(&mut cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("app certificate");
        let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
            .expect("app key")
            .expect("a key in the PEM");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("certificate and key");
        App::start_with(Some(TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn start_with(tls: Option<TlsAcceptor>) -> App {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("app binds");
        let addr = listener.local_addr().expect("app address");
        App::serve(addr, move |app| async move {
            while let Ok((stream, _)) = listener.accept().await {
                app.accepted(stream, tls.clone());
            }
        })
    }

    /// The same app on a Unix socket at `path` (its `addr` is then no address of it).
    pub async fn start_unix(path: &std::path::Path) -> App {
        let listener = tokio::net::UnixListener::bind(path).expect("app binds its socket");
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        App::serve(addr, move |app| async move {
            while let Ok((stream, _)) = listener.accept().await {
                app.accepted(stream, None);
            }
        })
    }

    /// Runs `accept_loop` with what each connection needs.
    fn serve<F, Fut>(addr: SocketAddr, accept_loop: F) -> App
    where
        F: FnOnce(Accepting) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let stopped = CancellationToken::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let files = Files::default();
        let accepting = Accepting {
            stopped: stopped.clone(),
            seen: Arc::clone(&seen),
            connections: Arc::clone(&connections),
            files: files.clone(),
        };
        let task = tokio::spawn(accept_loop(accepting));
        App {
            addr,
            seen,
            connections,
            files,
            task,
            stopped,
        }
    }
}

/// What an app's accept loop hands each connection.
struct Accepting {
    stopped: CancellationToken,
    seen: Arc<Mutex<Vec<String>>>,
    connections: Arc<AtomicUsize>,
    files: Files,
}

impl Accepting {
    /// Serves `stream` (over TLS when `tls` is given) until it ends or the app stops.
    fn accepted<S>(&self, stream: S, tls: Option<TlsAcceptor>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        self.connections.fetch_add(1, Ordering::Relaxed);
        let token = self.stopped.clone();
        let recorder = Arc::clone(&self.seen);
        let served = self.files.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                if let Ok(mut seen) = recorder.lock() {
                    seen.push(format!("{} {}", req.method(), req.uri()));
                }
                handle(req, served.clone())
            });
            let served = async {
                match tls {
                    None => serve_connection(stream, service).await,
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            serve_connection(stream, service).await;
                        }
                    }
                }
            };
            tokio::select! {
                _ = served => {}
                _ = token.cancelled() => {}
            }
        });
    }
}

async fn serve_connection<I, S>(io: I, service: S)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = Body>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // Real apps (nginx, PHP) take far more than hyper's default of 100 headers; the
    // proxy's own limit is what tests look at.
    let _ = hyper::server::conn::http1::Builder::new()
        .max_headers(400)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades()
        .await;
}

type Files = Arc<Mutex<HashMap<String, (String, Bytes)>>>;

impl App {
    /// Serves `bytes` as `content_type` at `path` from now on.
    pub fn serve_file(&self, path: &str, content_type: &str, bytes: impl Into<Bytes>) {
        if let Ok(mut files) = self.files.lock() {
            files.insert(path.to_string(), (content_type.to_string(), bytes.into()));
        }
    }

    /// Stops serving `path`.
    pub fn remove_file(&self, path: &str) {
        if let Ok(mut files) = self.files.lock() {
            files.remove(path);
        }
    }

    /// How many connections the app has accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// The requests seen so far (`METHOD target`).
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
        self.stopped.cancel();
    }
}

async fn handle(req: Request<Incoming>, files: Files) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let file = files.lock().ok().and_then(|f| f.get(&path).cloned());
    let response = if let Some((content_type, bytes)) = file {
        let mut r = Response::new(body::full(bytes.clone()));
        if let Ok(ct) = HeaderValue::from_str(&content_type) {
            r.headers_mut().insert(header::CONTENT_TYPE, ct);
        }
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        r
    } else if path.starts_with("/wp-content/uploads/") {
        let mut r = Response::new(body::full("not found"));
        *r.status_mut() = StatusCode::NOT_FOUND;
        r
    } else if let Some(n) = path.strip_prefix("/bytes/") {
        let chunked = req.uri().query().is_some_and(|q| q.contains("chunked"));
        bytes(n.parse().unwrap_or(0), chunked)
    } else if let Some(ms) = path.strip_prefix("/sleep/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        Response::new(body::full("slept"))
    } else if path == "/hop" {
        let mut r = Response::new(body::full("hop"));
        let h = r.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("x-app-hop"));
        h.insert("x-app-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-app-kept", HeaderValue::from_static("1"));
        r
    } else if path == "/set-cookie" {
        let mut r = Response::new(body::full("cookie set"));
        if let Some(Ok(v)) = req.uri().query().map(HeaderValue::from_str) {
            r.headers_mut().insert(header::SET_COOKIE, v);
        }
        r
    } else if path == "/ws" {
        websocket(req)
    } else {
        echo(req).await
    };
    Ok(response)
}

fn bytes(n: u64, chunked: bool) -> Response<Body> {
    let mut r = Response::new(body::from_stream(super::pattern_stream(n)));
    if !chunked {
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    r
}

async fn echo(req: Request<Incoming>) -> Response<Body> {
    let (parts, mut incoming) = req.into_parts();
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    let mut head = Vec::new();
    while let Some(frame) = incoming.frame().await {
        let Ok(frame) = frame else { break };
        if let Some(data) = frame.data_ref() {
            len += data.len() as u64;
            hasher.update(data);
            let room = (64 * 1024usize).saturating_sub(head.len());
            head.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let json = serde_json::json!({
        "method": parts.method.as_str(),
        "target": parts.uri.to_string(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_len": len,
        "body_sha256": hex::encode(hasher.finalize()),
        "body_head": String::from_utf8_lossy(&head),
    });
    let mut r = Response::new(body::full(Bytes::from(json.to_string())));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn websocket(mut req: Request<Incoming>) -> Response<Body> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        let mut r = Response::new(body::full("not a websocket request"));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    let mut r = Response::new(body::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert("sec-websocket-accept", accept);
    }
    r
}

/// The JSON the echo route answers, parsed.
#[derive(Debug, serde::Deserialize)]
pub struct Echo {
    pub method: String,
    pub target: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
    pub body_sha256: String,
    /// The first 64 KiB of the body, lossily as text.
    #[serde(default)]
    pub body_head: String,
}

impl Echo {
    pub fn parse(text: &str) -> Echo {
        serde_json::from_str(text).unwrap_or_else(|e| panic!("echo JSON: {e}: {text}"))
    }

    /// Every value of header `name`, in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn one(&self, name: &str) -> Option<&str> {
        self.all(name).first().copied()
    }
}
