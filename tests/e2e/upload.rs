//! Upload routes end to end: a real offload request handler on a socket, a real app on a
//! socket that records what it received (size and SHA-256, byte for byte), and real stores
//! (the in-process s3s-fs server, and FsStore in a temp dir). Bodies are generated from seeds
//! as they are sent and hashed on the way, so 512 MiB never sits in memory.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use offload::body::{self, Body};
use offload::config::{
    FieldStyle, OnStoreError, StoreConfig, UploadMode, UploadRouteConfig, UpstreamConfig,
};
use offload::proxy::{ClientInfo, Upstream};
use offload::store::{FsStore, Store};
use offload::upload::{AfterApp, UploadContext, UploadRoutes, handle};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::raw::RawApp;
use crate::support::s3;

const MIB: u64 = 1 << 20;
const BOUNDARY: &str = "----offloadTestBoundary7MA4YWxkTrZu0gW";

// ---------------------------------------------------------------------------------------
// The app: records every request's body (size, SHA-256, first MiB) and answers JSON.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Default)]
struct Received {
    size: u64,
    sha256: String,
    head: Vec<u8>,
    complete: bool,
}

#[derive(Clone, Default)]
struct AppLog {
    requests: Arc<AtomicUsize>,
    received: Arc<Mutex<Vec<Received>>>,
}

impl AppLog {
    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
    fn last(&self) -> Received {
        self.received
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the app got a request")
    }
}

async fn start_app() -> (SocketAddr, AppLog) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = AppLog::default();
    let app_log = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            let log = app_log.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| app_answer(req, log.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(socket), svc)
                    .await;
            });
        }
    });
    (addr, log)
}

async fn app_answer(
    req: hyper::Request<hyper::body::Incoming>,
    log: AppLog,
) -> Result<hyper::Response<Body>, Infallible> {
    log.requests.fetch_add(1, Ordering::SeqCst);
    let status: u16 = req
        .headers()
        .get("x-answer-status")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(200);
    let delay_ms: u64 = req
        .headers()
        .get("x-answer-delay-ms")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0);
    let mut body = req.into_body();
    let mut rec = Received::default();
    let mut hasher = Sha256::new();
    rec.complete = true;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    hasher.update(data);
                    rec.size += data.len() as u64;
                    let room = (MIB as usize).saturating_sub(rec.head.len());
                    rec.head.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
            Err(_) => {
                rec.complete = false;
                break;
            }
        }
    }
    rec.sha256 = hex::encode(hasher.finalize());
    let answer = serde_json::json!({ "size": rec.size, "sha256": rec.sha256 });
    log.received.lock().unwrap().push(rec);
    // An app at work on the upload after reading it (PHP resizing an image).
    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    let mut resp = hyper::Response::new(body::full(answer.to_string()));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    Ok(resp)
}

// ---------------------------------------------------------------------------------------
// offload's upload handling on a socket, in front of the app.
// ---------------------------------------------------------------------------------------

struct Offload {
    addr: SocketAddr,
    store: Arc<dyn Store>,
    app: AppLog,
}

impl Offload {
    fn url(&self) -> String {
        format!("http://{}/upload", self.addr)
    }
}

async fn start_offload(
    route: UploadRouteConfig,
    store: Arc<dyn Store>,
    after_app: Option<Arc<dyn AfterApp>>,
) -> Offload {
    let (app_addr, app) = start_app().await;
    start_offload_for(route, store, after_app, app_addr, app).await
}

/// [`start_offload`] in front of the app at `app_addr`, whose requests `app` logs.
async fn start_offload_for(
    route: UploadRouteConfig,
    store: Arc<dyn Store>,
    after_app: Option<Arc<dyn AfterApp>>,
    app_addr: SocketAddr,
    app: AppLog,
) -> Offload {
    let upstream = Arc::new(
        Upstream::new(&UpstreamConfig {
            url: format!("http://{app_addr}").parse().unwrap(),
            ..UpstreamConfig::default()
        })
        .unwrap(),
    );
    let routes = Arc::new(UploadRoutes::new(&[route], &StoreConfig::default()).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = store.clone();
    tokio::spawn(async move {
        loop {
            let Ok((socket, peer)) = listener.accept().await else {
                continue;
            };
            let ctx = Arc::new(UploadContext {
                store: served.clone(),
                upstream: upstream.clone(),
                client: ClientInfo { peer, tls: false },
                after_app: after_app.clone(),
                answer_stall: Duration::from_secs(60),
            });
            let routes = routes.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (ctx, routes) = (ctx.clone(), routes.clone());
                    async move {
                        let req = req.map(body::boxed);
                        let resp = match routes.find(req.method(), req.uri()) {
                            Some(route) => handle(&route, req, &ctx).await,
                            None => match ctx.upstream.forward(req, &ctx.client).await {
                                Ok(r) => r,
                                Err(e) => e.into_response(),
                            },
                        };
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(socket), svc)
                    .await;
            });
        }
    });
    Offload { addr, store, app }
}

fn route(mode: UploadMode) -> UploadRouteConfig {
    UploadRouteConfig {
        path: "/upload".into(),
        mode,
        ..UploadRouteConfig::default()
    }
}

struct FsHandle {
    store: Arc<dyn Store>,
    dir: tempfile::TempDir,
}

fn fs_store() -> FsHandle {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FsStore::new(dir.path(), "/_offload/", None).unwrap());
    FsHandle { store, dir }
}

/// Every regular file under `dir` (temp files included).
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

async fn keys(store: &Arc<dyn Store>) -> Vec<String> {
    let mut keys: Vec<String> = store
        .list("")
        .map_ok(|o| o.key)
        .try_collect()
        .await
        .unwrap();
    keys.sort();
    keys
}

/// The stored object's size and SHA-256, computed from its bytes.
async fn stored_hash(store: &Arc<dyn Store>, key: &str) -> (u64, String) {
    let obj = store.get(key, None).await.unwrap().expect("object present");
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut body = obj.body;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        size += chunk.len() as u64;
        hasher.update(&chunk);
    }
    (size, hex::encode(hasher.finalize()))
}

// ---------------------------------------------------------------------------------------
// Bodies: generated from seeds as sent, hashed on the way.
// ---------------------------------------------------------------------------------------

#[derive(Clone)]
enum P {
    Text(&'static str, &'static str),
    /// field, the rest of Content-Disposition after `name="…"`, declared type, magic, size
    File {
        field: &'static str,
        disposition: String,
        content_type: Option<&'static str>,
        magic: &'static [u8],
        size: u64,
    },
}

fn file(field: &'static str, filename: &str, size: u64) -> P {
    P::File {
        field,
        disposition: format!("; filename=\"{filename}\""),
        content_type: Some("application/octet-stream"),
        magic: b"",
        size,
    }
}

const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0";

fn png(field: &'static str, filename: &str, size: u64) -> P {
    P::File {
        field,
        disposition: format!("; filename=\"{filename}\""),
        content_type: Some("image/png"),
        magic: PNG_MAGIC,
        size,
    }
}

#[derive(Default)]
struct Sent {
    body: Sha256,
    body_len: u64,
    files: Vec<(u64, Sha256)>,
}

#[derive(Debug, Clone)]
struct SentHashes {
    body_sha: String,
    body_len: u64,
    files: Vec<(u64, String)>,
}

enum Seg {
    Fixed(Bytes),
    Gen {
        file: usize,
        magic: &'static [u8],
        size: u64,
        seed: u64,
    },
}

/// Stop reading the generated body after `at` bytes: signal, then wait `pause`.
struct Trigger {
    at: u64,
    tx: tokio::sync::oneshot::Sender<()>,
    pause: Duration,
}

struct Gen {
    segs: std::vec::IntoIter<Seg>,
    current: Option<(usize, &'static [u8], u64, u64, u64)>, // file, magic, size, pos, state
    sent: Arc<Mutex<Sent>>,
    trigger: Option<Trigger>,
}

fn multipart(parts: &[P]) -> (Vec<Seg>, usize) {
    let mut segs = Vec::new();
    let mut files = 0;
    for (i, p) in parts.iter().enumerate() {
        let mut head = format!("--{BOUNDARY}\r\n");
        match p {
            P::Text(name, value) => {
                head +=
                    &format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n");
                segs.push(Seg::Fixed(head.into()));
            }
            P::File {
                field,
                disposition,
                content_type,
                magic,
                size,
            } => {
                head +=
                    &format!("Content-Disposition: form-data; name=\"{field}\"{disposition}\r\n");
                if let Some(ct) = content_type {
                    head += &format!("Content-Type: {ct}\r\n");
                }
                head += "\r\n";
                segs.push(Seg::Fixed(head.into()));
                segs.push(Seg::Gen {
                    file: files,
                    magic,
                    size: *size,
                    seed: 0x9E37_79B9 + i as u64,
                });
                segs.push(Seg::Fixed(Bytes::from_static(b"\r\n")));
                files += 1;
            }
        }
    }
    segs.push(Seg::Fixed(format!("--{BOUNDARY}--\r\n").into()));
    (segs, files)
}

impl Gen {
    fn new(segs: Vec<Seg>, files: usize, trigger: Option<Trigger>) -> (Gen, Arc<Mutex<Sent>>) {
        let sent = Arc::new(Mutex::new(Sent {
            files: (0..files).map(|_| (0, Sha256::new())).collect(),
            ..Sent::default()
        }));
        let g = Gen {
            segs: segs.into_iter(),
            current: None,
            sent: sent.clone(),
            trigger,
        };
        (g, sent)
    }

    fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if let Some((file, magic, size, pos, state)) = self.current.as_mut() {
                if *pos < *size {
                    let n = (*size - *pos).min(64 * 1024) as usize;
                    let mut buf = Vec::with_capacity(n + 8);
                    while buf.len() < n {
                        // xorshift64*: fast, deterministic, incompressible.
                        *state ^= *state >> 12;
                        *state ^= *state << 25;
                        *state ^= *state >> 27;
                        buf.extend_from_slice(
                            &state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes(),
                        );
                    }
                    buf.truncate(n);
                    let start = *pos as usize;
                    for (i, b) in magic.iter().enumerate().skip(start).take(n) {
                        buf[i - start] = *b;
                    }
                    *pos += n as u64;
                    let chunk = Bytes::from(buf);
                    let mut sent = self.sent.lock().unwrap();
                    sent.files[*file].0 += n as u64;
                    sent.files[*file].1.update(&chunk);
                    return Some(chunk);
                }
                self.current = None;
            }
            match self.segs.next()? {
                Seg::Fixed(b) => return Some(b),
                Seg::Gen {
                    file,
                    magic,
                    size,
                    seed,
                } => {
                    self.current = Some((file, magic, size, 0, seed | 1));
                }
            }
        }
    }
}

/// A generated multipart body as a reqwest body, and the hashes of what it sent.
fn gen_body(
    parts: &[P],
    trigger: Option<Trigger>,
) -> (reqwest::Body, impl Fn() -> SentHashes + use<>) {
    let (segs, files) = multipart(parts);
    let (generator, sent) = Gen::new(segs, files, trigger);
    let stream = futures_util::stream::unfold(generator, |mut g| async move {
        let chunk = g.next_chunk()?;
        let len = {
            let mut sent = g.sent.lock().unwrap();
            sent.body.update(&chunk);
            sent.body_len += chunk.len() as u64;
            sent.body_len
        };
        if g.trigger.as_ref().is_some_and(|t| len >= t.at)
            && let Some(t) = g.trigger.take()
        {
            let _ = t.tx.send(());
            tokio::time::sleep(t.pause).await;
        }
        Some((Ok::<_, std::io::Error>(chunk), g))
    });
    let hashes = move || {
        let sent = sent.lock().unwrap();
        SentHashes {
            body_sha: hex::encode(sent.body.clone().finalize()),
            body_len: sent.body_len,
            files: sent
                .files
                .iter()
                .map(|(n, h)| (*n, hex::encode(h.clone().finalize())))
                .collect(),
        }
    };
    (reqwest::Body::wrap_stream(stream), hashes)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// A multipart POST of `body` to offload's upload route.
fn form_post(off: &Offload, body: reqwest::Body) -> reqwest::RequestBuilder {
    client()
        .post(off.url())
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(body)
}

async fn post(off: &Offload, parts: &[P]) -> (u16, Value, SentHashes) {
    let (body, hashes) = gen_body(parts, None);
    let resp = form_post(off, body).send().await.unwrap();
    let status = resp.status().as_u16();
    let json = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, json, hashes())
}

// ---------------------------------------------------------------------------------------
// respond
// ---------------------------------------------------------------------------------------

fn mixed(files: usize, size: u64) -> Vec<P> {
    let mut parts = vec![P::Text("title", "héllo"), P::Text("action", "upload")];
    for i in 0..files {
        parts.push(file("file", &format!("f{i}.bin"), size + i as u64));
        parts.push(P::Text("between", "x"));
    }
    parts
}

async fn check_respond(store: Arc<dyn Store>, files: usize, size: u64) {
    let off = start_offload(route(UploadMode::Respond), store, None).await;
    let (status, json, sent) = post(&off, &mixed(files, size)).await;
    assert_eq!(status, 201, "{json}");
    let listed = json["files"].as_array().unwrap();
    assert_eq!(listed.len(), files, "{json}");
    assert_eq!(json["fields"]["title"], "héllo");
    for (i, f) in listed.iter().enumerate() {
        let key = f["key"].as_str().unwrap();
        assert_eq!(f["field"], "file");
        assert_eq!(f["filename"], format!("f{i}.bin"));
        assert_eq!(f["sha256"], sent.files[i].1);
        assert_eq!(f["size"], sent.files[i].0);
        assert!(f["url"].as_str().unwrap().len() > key.len());
        assert_eq!(stored_hash(&off.store, key).await, sent.files[i]);
    }
    assert_eq!(keys(&off.store).await.len(), files);
    assert_eq!(off.app.requests(), 0, "respond never involves the app");
}

#[tokio::test]
async fn respond_0_1_3_files_fs() {
    for files in [0, 1, 3] {
        check_respond(fs_store().store, files, 1000).await;
    }
}

#[tokio::test]
async fn respond_0_1_3_files_s3() {
    let server = s3::start().await;
    for files in [0, 1, 3] {
        let store: Arc<dyn Store> = Arc::new(server.target().store().await);
        for k in keys(&store).await {
            store.delete(&k).await.unwrap();
        }
        check_respond(store, files, 5 * MIB + 1).await;
    }
}

#[tokio::test]
async fn respond_sizes_0_1_and_5mib_plus_1() {
    let server = s3::start().await;
    let store: Arc<dyn Store> = Arc::new(server.target().store().await);
    let off = start_offload(route(UploadMode::Respond), store, None).await;
    let parts = [
        file("a", "zero.bin", 0),
        file("b", "one.bin", 1),
        file("c", "big.bin", 5 * MIB + 1),
    ];
    let (status, json, sent) = post(&off, &parts).await;
    assert_eq!(status, 201, "{json}");
    let listed = json["files"].as_array().unwrap();
    assert_eq!(
        listed.len(),
        3,
        "a 0-byte file with a name is still a file: {json}"
    );
    for (i, f) in listed.iter().enumerate() {
        assert_eq!(
            stored_hash(&off.store, f["key"].as_str().unwrap()).await,
            sent.files[i]
        );
    }
}

#[tokio::test]
async fn empty_file_inputs_are_skipped() {
    let fs = fs_store();
    let off = start_offload(route(UploadMode::Respond), fs.store.clone(), None).await;
    let (status, json, _) = post(&off, &[file("a", "", 0), P::Text("t", "1")]).await;
    assert_eq!(status, 201, "{json}");
    assert_eq!(json["files"].as_array().unwrap().len(), 0);
    assert!(keys(&off.store).await.is_empty());
}

#[tokio::test]
async fn respond_512_mib_streams() {
    let server = s3::start().await;
    let store: Arc<dyn Store> = Arc::new(server.target().store().await);
    let off = start_offload(route(UploadMode::Respond), store, None).await;
    let (status, json, sent) = post(&off, &[file("big", "big.bin", 512 * MIB)]).await;
    assert_eq!(status, 201, "{json}");
    let key = json["files"][0]["key"].as_str().unwrap();
    assert_eq!(json["files"][0]["sha256"], sent.files[0].1);
    assert_eq!(stored_hash(&off.store, key).await, sent.files[0]);
}

#[tokio::test]
async fn filenames_unicode_extended_and_hostile() {
    let fs = fs_store();
    let off = start_offload(route(UploadMode::Respond), fs.store.clone(), None).await;
    let long = "a".repeat(1000) + ".jpg";
    let cases: Vec<(String, &str)> = vec![
        ("; filename=\"fïlé 名前.jpg\"".into(), "fïlé 名前.jpg"),
        (
            "; filename=\"x.jpg\"; filename*=UTF-8''f%C3%AFl%C3%A9%20%E5%90%8D%E5%89%8D.jpg".into(),
            "fïlé 名前.jpg",
        ),
        ("; filename=\"../../etc/passwd\"".into(), "passwd"),
        ("; filename*=UTF-8''a%00b.txt".into(), "ab.txt"),
        (format!("; filename=\"{long}\""), ""),
    ];
    for (disposition, expected) in cases {
        let part = P::File {
            field: "f",
            disposition: disposition.clone(),
            content_type: None,
            magic: b"",
            size: 10,
        };
        let (status, json, _) = post(&off, &[part]).await;
        assert_eq!(status, 201, "{disposition}: {json}");
        let name = json["files"][0]["filename"].as_str().unwrap();
        let key = json["files"][0]["key"].as_str().unwrap();
        assert!(!key.contains(".."), "{key}");
        if expected.is_empty() {
            assert_eq!(name.len(), 200);
            assert!(name.ends_with(".jpg"));
        } else {
            assert_eq!(name, expected);
            assert!(key.ends_with(expected), "{key}");
        }
    }
    // RTL override hiding a PHP file: sanitised to `gpj.php`, then refused.
    let part = P::File {
        field: "f",
        disposition: "; filename=\"\u{202E}gpj.php\"".into(),
        content_type: None,
        magic: b"",
        size: 10,
    };
    let (status, json, _) = post(&off, &[part]).await;
    assert_eq!(status, 415, "{json}");
    assert_eq!(json["limit"], "denied_extensions");
}

// ---------------------------------------------------------------------------------------
// limits
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn every_limit_names_itself() {
    let fs = fs_store();
    let small = UploadRouteConfig {
        max_file_size: bytesize::ByteSize::kib(64),
        max_body_size: bytesize::ByteSize::kib(200),
        max_parts: 4,
        max_field_size: bytesize::ByteSize::kib(1),
        max_fields_size: bytesize::ByteSize::kib(2),
        ..route(UploadMode::Respond)
    };
    let off = start_offload(small, fs.store.clone(), None).await;
    let too_big = [file("f", "a.bin", 64 * 1024 + 1)];
    let (status, json, _) = post(&off, &too_big).await;
    assert_eq!(
        (status, json["limit"].as_str()),
        (413, Some("max_file_size")),
        "{json}"
    );
    assert_eq!(json["max"], "64 KiB");
    let body_big: Vec<P> = (0..4)
        .map(|i| file("f", &format!("{i}.bin"), 60 * 1024))
        .collect();
    let (status, json, _) = post(&off, &body_big[..]).await;
    assert_eq!(status, 413, "{json}");
    let many: Vec<P> = (0..5).map(|_| P::Text("t", "1")).collect();
    let (status, json, _) = post(&off, &many).await;
    assert_eq!(
        (status, json["limit"].as_str()),
        (400, Some("max_parts")),
        "{json}"
    );
    let long_field = [P::Text("t", Box::leak("x".repeat(2000).into_boxed_str()))];
    let (status, json, _) = post(&off, &long_field).await;
    assert_eq!(
        (status, json["limit"].as_str()),
        (413, Some("max_field_size")),
        "{json}"
    );
    // Each field within its limit, but not all of them: what offload keeps is bounded too.
    let field = Box::leak("x".repeat(900).into_boxed_str());
    let (status, json, _) = post(&off, &[P::Text("a", field), P::Text("b", field)]).await;
    assert_eq!(status, 201, "{json}");
    let fields = [
        P::Text("a", field),
        P::Text("b", field),
        P::Text("c", field),
    ];
    let (status, json, _) = post(&off, &fields).await;
    assert_eq!(
        (status, json["limit"].as_str()),
        (413, Some("max_fields_size")),
        "{json}"
    );
    assert_eq!(json["max"], "2 KiB");
    let liar = [P::File {
        field: "f",
        disposition: "; filename=\"a.png\"".into(),
        content_type: Some("image/png"),
        magic: b"<?php echo 1; ?>",
        size: 100,
    }];
    let (status, json, _) = post(&off, &liar).await;
    assert_eq!(status, 415, "{json}");
    let denied = [file("f", "shell.php", 10)];
    let (status, json, _) = post(&off, &denied).await;
    assert_eq!(status, 415, "{json}");
    // A declared body over the limit is refused before reading it.
    let resp = client()
        .post(off.url())
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .header("content-length", (1u64 << 30).to_string())
        .body(Vec::<u8>::new())
        .send()
        .await;
    if let Ok(resp) = resp {
        assert_eq!(resp.status(), 413);
    }
    // Boundary over 70 characters, malformed body.
    let long = "b".repeat(71);
    let resp = client()
        .post(off.url())
        .header(
            "content-type",
            format!("multipart/form-data; boundary={long}"),
        )
        .body("--x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let resp = client()
        .post(off.url())
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nunterminated"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("malformed"), "{v}");
    assert!(
        keys(&off.store).await.is_empty(),
        "no limit leaves anything behind"
    );
}

// ---------------------------------------------------------------------------------------
// replace
// ---------------------------------------------------------------------------------------

fn text_fields(body: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(body);
    text.split(&format!("--{BOUNDARY}"))
        .filter_map(|part| {
            let (head, value) = part.split_once("\r\n\r\n")?;
            let name = head.split("name=\"").nth(1)?.split('"').next()?;
            Some((name.to_string(), value.trim_end_matches("\r\n").to_string()))
        })
        .collect()
}

/// Several files in a list field (`files[]`, Joomla 3's `Filedata[]`) reach a PHP app in
/// replace mode as one record per file, as PHP reads the fields offload writes in their
/// place (`files[0][key]`, …), with nothing lost.
#[tokio::test]
async fn replace_keeps_the_files_of_a_list_field_apart_for_php() {
    if !crate::support::php::enabled("upload::replace_list_field") {
        return;
    }
    let root = crate::support::php::repo_root().join("tests/apps/form-echo");
    let (php, _child) = crate::support::php::built_in_server(&root, None, &[]).await;
    let fs = fs_store();
    let off = start_offload_for(
        route(UploadMode::Replace),
        fs.store.clone(),
        None,
        php,
        AppLog::default(),
    )
    .await;
    let (status, json, sent) = post(
        &off,
        &[
            file("files[]", "a.bin", 1000),
            P::Text("title", "two"),
            file("files[]", "b.bin", 2000),
        ],
    )
    .await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["files"], serde_json::json!([]), "no file part left");
    assert_eq!(json["post"]["title"], "two");
    let files = json["post"]["files"].as_array().expect("a list of files");
    assert_eq!(files.len(), 2, "{json}");
    for (i, (record, name)) in files.iter().zip(["a.bin", "b.bin"]).enumerate() {
        assert_eq!(record["filename"], name, "{json}");
        assert_eq!(record["size"], sent.files[i].0.to_string());
        assert_eq!(record["sha256"], sent.files[i].1);
        let key = record["key"].as_str().expect("key");
        assert_eq!(stored_hash(&off.store, key).await, sent.files[i]);
    }
}

#[tokio::test]
async fn replace_0_1_3_files() {
    for files in [0usize, 1, 3] {
        let fs = fs_store();
        let off = start_offload(route(UploadMode::Replace), fs.store.clone(), None).await;
        let (status, json, sent) = post(&off, &mixed(files, 5 * MIB + 1)).await;
        assert_eq!(status, 200, "{json}");
        let got = off.app.last();
        assert!(got.complete);
        assert!(got.size < 64 * 1024, "no file bytes reach the app");
        let fields = text_fields(&got.head);
        let get = |n: &str| {
            fields
                .iter()
                .filter(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(get("title"), vec!["héllo"]);
        assert_eq!(get("between").len(), files);
        let keys_sent = get("file[key]");
        assert_eq!(keys_sent.len(), files);
        for (i, key) in keys_sent.iter().enumerate() {
            assert_eq!(get("file[sha256]")[i], sent.files[i].1);
            assert_eq!(get("file[size]")[i], sent.files[i].0.to_string());
            assert_eq!(get("file[filename]")[i], format!("f{i}.bin"));
            assert!(!get("file[url]")[i].is_empty());
            assert_eq!(stored_hash(&off.store, key).await, sent.files[i]);
        }
    }
}

#[tokio::test]
async fn replace_underscore_style_and_app_refusal_rolls_back() {
    let fs = fs_store();
    let cfg = UploadRouteConfig {
        field_style: FieldStyle::Underscore,
        ..route(UploadMode::Replace)
    };
    let off = start_offload(cfg, fs.store.clone(), None).await;
    let (status, _, _) = post(&off, &[png("pic", "a.png", 100)]).await;
    assert_eq!(status, 200);
    let fields = text_fields(&off.app.last().head);
    assert!(
        fields
            .iter()
            .any(|(k, v)| k == "pic_content_type" && v == "image/png"),
        "{fields:?}"
    );
    assert_eq!(keys(&off.store).await.len(), 1);

    // The app refuses the form: what was stored for it goes.
    let (body, _) = gen_body(&[png("pic", "b.png", 100)], None);
    let resp = client()
        .post(off.url())
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .header("x-answer-status", "422")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    assert_eq!(keys(&off.store).await.len(), 1);
}

#[tokio::test]
async fn raw_body_with_content_disposition() {
    for mode in [UploadMode::Respond, UploadMode::Replace, UploadMode::Mirror] {
        let fs = fs_store();
        let off = start_offload(route(mode), fs.store.clone(), None).await;
        let mut bytes = PNG_MAGIC.to_vec();
        bytes.extend(std::iter::repeat_n(7u8, 100_000));
        let resp = client()
            .post(off.url())
            .header("content-type", "image/png")
            .header("content-disposition", "attachment; filename=photo.png")
            .body(bytes.clone())
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{mode:?}: {}", resp.status());
        let stored = keys(&off.store).await;
        assert_eq!(stored.len(), 1, "{mode:?}");
        assert!(stored[0].ends_with("photo.png"));
        let expect = (bytes.len() as u64, hex::encode(Sha256::digest(&bytes)));
        assert_eq!(stored_hash(&off.store, &stored[0]).await, expect);
        if mode == UploadMode::Mirror {
            assert_eq!((off.app.last().size, off.app.last().sha256), expect);
        }
    }
}

#[tokio::test]
async fn other_bodies_pass_through_untouched() {
    let fs = fs_store();
    let off = start_offload(route(UploadMode::Respond), fs.store.clone(), None).await;
    let resp = client()
        .post(off.url())
        .header("content-type", "application/x-www-form-urlencoded")
        .body("action=save&x=1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(off.app.last().head, b"action=save&x=1");
    assert!(keys(&off.store).await.is_empty());
}

// ---------------------------------------------------------------------------------------
// mirror
// ---------------------------------------------------------------------------------------

async fn check_mirror(store: Arc<dyn Store>, parts: &[P]) {
    let off = start_offload(route(UploadMode::Mirror), store, None).await;
    let (status, json, sent) = post(&off, parts).await;
    assert_eq!(status, 200, "{json}");
    let got = off.app.last();
    assert!(got.complete);
    assert_eq!(
        (got.size, got.sha256.as_str()),
        (sent.body_len, sent.body_sha.as_str()),
        "byte-identical body"
    );
    let stored = keys(&off.store).await;
    assert_eq!(stored.len(), sent.files.len());
    let mut hashes = Vec::new();
    for k in &stored {
        hashes.push(stored_hash(&off.store, k).await);
    }
    for f in &sent.files {
        assert!(hashes.contains(f), "{f:?} stored");
    }
}

#[tokio::test]
async fn mirror_0_1_3_files() {
    let server = s3::start().await;
    for files in [0, 1, 3] {
        let store: Arc<dyn Store> = Arc::new(server.target().store().await);
        for k in keys(&store).await {
            store.delete(&k).await.unwrap();
        }
        check_mirror(store, &mixed(files, 5 * MIB + 1)).await;
    }
    check_mirror(
        fs_store().store,
        &[file("a", "one.bin", 1), P::Text("x", "y")],
    )
    .await;
}

#[tokio::test]
async fn mirror_512_mib() {
    let server = s3::start().await;
    let store: Arc<dyn Store> = Arc::new(server.target().store().await);
    check_mirror(
        store,
        &[
            P::Text("name", "big"),
            file("async-upload", "big.bin", 512 * MIB),
        ],
    )
    .await;
}

#[tokio::test]
async fn mirror_skips_denied_types_but_forwards_them() {
    let fs = fs_store();
    let off = start_offload(route(UploadMode::Mirror), fs.store.clone(), None).await;
    let (status, _, sent) = post(&off, &[file("a", "x.php", 100), png("b", "ok.png", 100)]).await;
    assert_eq!(status, 200);
    assert_eq!(off.app.last().sha256, sent.body_sha);
    let stored = keys(&off.store).await;
    assert_eq!(stored.len(), 1);
    assert!(stored[0].ends_with("ok.png"));
}

struct Hook {
    calls: AtomicUsize,
    teed: std::sync::Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl AfterApp for Hook {
    async fn on_success(
        &self,
        req: &http::request::Parts,
        teed: &[String],
        resp: http::Response<Body>,
    ) -> http::Response<Body> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.teed.lock().unwrap().extend(teed.iter().cloned());
        assert_eq!(req.uri.path(), "/upload");
        let (mut parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        let mut v: Value = serde_json::from_slice(&bytes).unwrap();
        v["hooked"] = Value::Bool(true);
        parts.headers.remove(http::header::CONTENT_LENGTH);
        http::Response::from_parts(parts, body::full(v.to_string()))
    }
}

#[tokio::test]
async fn mirror_after_app_hook_sees_2xx_only() {
    let fs = fs_store();
    let hook = Arc::new(Hook {
        calls: AtomicUsize::new(0),
        teed: Default::default(),
    });
    let off = start_offload(
        route(UploadMode::Mirror),
        fs.store.clone(),
        Some(hook.clone()),
    )
    .await;
    let (status, json, sent) = post(&off, &[png("f", "a.png", 1000)]).await;
    assert_eq!(status, 200);
    assert_eq!(json["hooked"], true);
    assert_eq!(
        json["sha256"], sent.body_sha,
        "the app's own answer, passed through the hook"
    );
    assert_eq!(hook.calls.load(Ordering::SeqCst), 1);
    // When the hook runs, the file is already in the store, and the hook is told its key.
    let stored = keys(&off.store).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(*hook.teed.lock().unwrap(), stored);

    let (body, _) = gen_body(&[png("f", "b.png", 1000)], None);
    let resp = client()
        .post(off.url())
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .header("x-answer-status", "500")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 500);
    assert_eq!(hook.calls.load(Ordering::SeqCst), 1, "no hook on a non-2xx");
    assert_eq!(
        keys(&off.store).await.len(),
        1,
        "teed copy of a refused upload removed"
    );
}

// ---------------------------------------------------------------------------------------
// store down mid-upload, client gone mid-upload, concurrency
// ---------------------------------------------------------------------------------------

async fn store_down_mid_upload(
    mode: UploadMode,
    on_store_error: OnStoreError,
) -> (u16, Offload, SentHashes, s3::S3Server) {
    let parts = [file("a", "first.bin", 1000), file("b", "big.bin", 30 * MIB)];
    store_down_at(mode, on_store_error, &parts, 12 * MIB).await
}

/// An upload of `parts` during which the S3 server stops once `at` bytes of the body were
/// sent (the client pausing 300 ms there), and starts again once the client has its answer:
/// the answer's status (0 for none), offload, what was sent, and the server.
async fn store_down_at(
    mode: UploadMode,
    on_store_error: OnStoreError,
    parts: &[P],
    at: u64,
) -> (u16, Offload, SentHashes, s3::S3Server) {
    let mut server = s3::start().await;
    let store: Arc<dyn Store> = Arc::new(server.target().store().await);
    let cfg = UploadRouteConfig {
        on_store_error,
        ..route(mode)
    };
    let off = start_offload(cfg, store, None).await;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let trigger = Trigger {
        at,
        tx,
        pause: Duration::from_millis(300),
    };
    let (body, hashes) = gen_body(parts, Some(trigger));
    let request = form_post(&off, body).send();
    let stopper = async {
        let _ = rx.await;
        server.stop();
    };
    let (resp, ()) = tokio::join!(request, stopper);
    let status = resp.map(|r| r.status().as_u16()).unwrap_or(0);
    server.restart().await;
    (status, off, hashes(), server)
}

#[tokio::test]
async fn store_down_mid_upload_every_mode() {
    for mode in [UploadMode::Respond, UploadMode::Replace, UploadMode::Mirror] {
        let (status, off, _, _server) = store_down_mid_upload(mode, OnStoreError::Reject).await;
        assert!(status == 502 || status == 503, "{mode:?}: {status}");
        // Objects stored before the outage are deleted once the store is back.
        let mut left = keys(&off.store).await;
        for _ in 0..40 {
            if left.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            left = keys(&off.store).await;
        }
        assert!(left.is_empty(), "{mode:?}: nothing stored: {left:?}");
        match mode {
            UploadMode::Mirror => {
                let log = off.app.received.lock().unwrap().clone();
                assert!(
                    log.iter().all(|r| !r.complete),
                    "{mode:?}: the app never got a whole request"
                );
            }
            _ => assert_eq!(off.app.requests(), 0, "{mode:?}: the app untouched"),
        }
    }
}

/// The store failing on the upload's last file, after every byte of it came: under
/// `reject` the app still never gets a whole request (its last bytes wait for the file to
/// be stored), so it cannot act on an upload whose client is told it failed.
#[tokio::test]
async fn mirror_store_down_at_the_end_never_completes_the_apps_request() {
    // Past the file's last byte: only the closing boundary is still to come.
    let parts = [file("f", "last.bin", 2 * MIB)];
    let (status, off, _, _server) =
        store_down_at(UploadMode::Mirror, OnStoreError::Reject, &parts, 2 * MIB).await;
    assert!(status == 502 || status == 503, "{status}");
    let log = off.app.received.lock().unwrap().clone();
    assert!(
        log.iter().all(|r| !r.complete),
        "the app got a whole request: {:?}",
        log.iter().map(|r| r.size).collect::<Vec<_>>()
    );
}

/// An app that answers before it has the whole upload (a `401` for a missing login, a
/// `413` from a server in front of the app) is answered at once, not after the client
/// sent everything, and the files teed meanwhile are removed.
#[tokio::test]
async fn mirror_passes_on_an_early_answer_at_once() {
    let fs = fs_store();
    let early = RawApp::start(|mut stream, _head| async move {
        let _ = stream
            .write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 12\r\n\r\nlog in first")
            .await;
        // The body is never read; the connection is held open a while, as an app would.
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let off = start_offload_for(
        route(UploadMode::Mirror),
        fs.store.clone(),
        None,
        early.addr,
        AppLog::default(),
    )
    .await;
    let (body, _) = gen_body(
        &[file("a", "small.bin", 1000), file("b", "big.bin", 64 * MIB)],
        None,
    );
    let began = Instant::now();
    let resp = form_post(&off, body).send().await.expect("an answer");
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.text().await.unwrap_or_default(), "log in first");
    // Bounded loosely, for a busy machine: the idle timeout (60 s) is what it waited before.
    assert!(
        began.elapsed() < Duration::from_secs(20),
        "{:?}",
        began.elapsed()
    );
    assert!(keys(&off.store).await.is_empty(), "teed files removed");
}

#[tokio::test]
async fn store_down_mirror_forward_keeps_the_app_going() {
    let (status, off, sent, _server) =
        store_down_mid_upload(UploadMode::Mirror, OnStoreError::Forward).await;
    assert_eq!(status, 200);
    let got = off.app.last();
    assert!(got.complete);
    assert_eq!(got.sha256, sent.body_sha);
}

async fn disconnect_mid_upload(off: &Offload) {
    let mut sock = TcpStream::connect(off.addr).await.unwrap();
    let mut head = format!(
        "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {}\r\n\r\n",
        20 * MIB
    )
    .into_bytes();
    head.extend_from_slice(
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"a\"; filename=\"a.bin\"\r\n\r\n"
        )
        .as_bytes(),
    );
    head.extend_from_slice(&[1u8; 1000]);
    head.extend_from_slice(format!("\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"b\"; filename=\"b.bin\"\r\n\r\n").as_bytes());
    sock.write_all(&head).await.unwrap();
    let chunk = vec![2u8; 64 * 1024];
    for _ in 0..(6 * 16) {
        sock.write_all(&chunk).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(sock);
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

#[tokio::test]
async fn client_disconnect_leaves_nothing() {
    for mode in [UploadMode::Respond, UploadMode::Replace, UploadMode::Mirror] {
        let fs = fs_store();
        let off = start_offload(route(mode), fs.store.clone(), None).await;
        disconnect_mid_upload(&off).await;
        assert!(keys(&off.store).await.is_empty(), "{mode:?}");
        assert!(
            files_under(fs.dir.path()).is_empty(),
            "{mode:?}: {:?}",
            files_under(fs.dir.path())
        );

        let server = s3::start().await;
        let store: Arc<dyn Store> = Arc::new(server.target().store().await);
        let off = start_offload(route(mode), store, None).await;
        disconnect_mid_upload(&off).await;
        assert!(keys(&off.store).await.is_empty(), "{mode:?} s3");
        assert!(
            server.leftover_uploads().is_empty(),
            "{mode:?}: {:?}",
            server.leftover_uploads()
        );
    }
}

/// A client that leaves once the app has its whole upload (the app still at work on it, as
/// PHP goes on without its client) does not have the stored objects deleted under the app,
/// which refers to them.
#[tokio::test]
async fn a_client_leaving_after_the_app_has_the_upload_keeps_its_objects() {
    for mode in [UploadMode::Replace, UploadMode::Mirror] {
        let fs = fs_store();
        let off = start_offload(route(mode), fs.store.clone(), None).await;
        let body = format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"a\"; filename=\"kept.bin\"\r\n\r\n\
             kept bytes\r\n--{BOUNDARY}--\r\n"
        );
        let request = format!(
            "POST /upload HTTP/1.1\r\nHost: x\r\nX-Answer-Delay-Ms: 1500\r\n\
             Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut sock = TcpStream::connect(off.addr).await.unwrap();
        sock.write_all(request.as_bytes()).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while off.app.received.lock().unwrap().is_empty() {
            assert!(Instant::now() < deadline, "{mode:?}: the app got nothing");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(off.app.last().complete, "{mode:?}");
        drop(sock);
        // Past the app's answer, and a background deletion's first attempts.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let kept = keys(&off.store).await;
        assert_eq!(kept.len(), 1, "{mode:?}: {kept:?}");
        assert!(kept[0].ends_with("/kept.bin"), "{mode:?}: {kept:?}");
    }
}

/// On an upload route, a `Content-Type` offload cannot read as one value (given twice, or
/// with a byte past ASCII) is refused: passed on as it came, the app could still read a
/// multipart form in it, its files past the route's checks and never stored.
#[tokio::test]
async fn an_upload_with_an_unreadable_content_type_is_refused() {
    let fs = fs_store();
    let off = start_offload(route(UploadMode::Replace), fs.store.clone(), None).await;
    let body = "--b\r\nContent-Disposition: form-data; name=\"a\"; filename=\"shell.php\"\r\n\r\n\
                <?php\r\n--b--\r\n";
    for types in [
        &b"Content-Type: multipart/form-data; boundary=b; x=\xe9\r\n"[..],
        b"Content-Type: text/plain\r\nContent-Type: multipart/form-data; boundary=b\r\n",
    ] {
        let mut request = b"POST /upload HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".to_vec();
        request.extend_from_slice(types);
        request
            .extend_from_slice(format!("Content-Length: {}\r\n\r\n{body}", body.len()).as_bytes());
        let mut sock = TcpStream::connect(off.addr).await.unwrap();
        sock.write_all(&request).await.unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut answer));
        read.await.expect("answered").expect("read");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        assert!(answer.contains("bad Content-Type"), "{answer}");
    }
    assert_eq!(off.app.requests(), 0);
    assert!(keys(&off.store).await.is_empty());
}

#[tokio::test]
async fn two_hundred_concurrent_uploads() {
    let server = s3::start().await;
    let store: Arc<dyn Store> = Arc::new(server.target().store().await);
    let off = Arc::new(start_offload(route(UploadMode::Respond), store, None).await);
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let off = off.clone();
            tokio::spawn(async move {
                let parts = [P::Text("n", "1"), file("f", &format!("c{i}.bin"), 1000 + i)];
                let (status, json, sent) = post(&off, &parts).await;
                assert_eq!(status, 201, "{json}");
                (
                    json["files"][0]["key"].as_str().unwrap().to_string(),
                    sent.files[0].clone(),
                )
            })
        })
        .collect();
    for t in tasks {
        let (key, sent) = t.await.unwrap();
        assert_eq!(stored_hash(&off.store, &key).await, sent);
    }
    assert_eq!(keys(&off.store).await.len(), 200);
}
