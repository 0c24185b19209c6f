//! Parts failing under the proxy: an app that dies mid-answer, answers garbage or never
//! answers; a full disk under the fs store; SIGTERM with a request in flight.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use offload::store::{FsStore, PutOptions, Store, StoreError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::support::data;
use crate::support::process::OffloadProcess;
use crate::support::raw::{RawApp, read_head, read_until_ending};
use crate::support::{Proxy, client, config_for, h2_client};

/// An app that misbehaves by path: `/die-cl` and `/die-chunked` send a head and part of the
/// body, then close (`/die-in-one-write` both in one write, `/die-after-4-mib` 4 MiB of 8);
/// `/http10` answers `hello` as HTTP/1.0; `/garbage` answers something that is not HTTP;
/// `/huge-head` sends an endless head, `/many-headers` 120 header lines; `/close` closes
/// without a word; `/hang` never answers; anything else answers `hello`.
async fn bad_app() -> RawApp {
    RawApp::start(|mut stream, mut head| async move {
        // Requests on one connection are answered in turn until one of them ends it.
        loop {
            let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
            if !misbehave(&mut stream, &target).await {
                return;
            }
            match read_head(&mut stream).await {
                Some(next) => head = next,
                None => return,
            }
        }
    })
    .await
}

/// Answers (or not) one request for `target`; whether the connection lives on.
async fn misbehave(stream: &mut TcpStream, target: &str) -> bool {
    match target {
        "/die-cl" => {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
                .await;
            let _ = stream.write_all(&[b'x'; 65536]).await;
        }
        "/die-chunked" => {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                .await;
            let _ = stream.write_all(b"10000\r\n").await;
            let _ = stream.write_all(&[b'x'; 65536]).await;
            let _ = stream.write_all(b"\r\n100\r\nxx").await;
        }
        "/die-in-one-write" => {
            let mut answer = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n".to_vec();
            answer.extend_from_slice(&[b'x'; 50000]);
            let _ = stream.write_all(&answer).await;
        }
        "/die-after-4-mib" => {
            let head = b"HTTP/1.1 200 OK\r\nContent-Length: 8388608\r\n\r\n";
            let _ = stream.write_all(head).await;
            let _ = stream.write_all(&vec![b'x'; 4 << 20]).await;
        }
        "/http10" => {
            let _ = stream
                .write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello")
                .await;
        }
        "/garbage" => {
            let _ = stream
                .write_all(b"SSH-2.0-OpenSSH_9.2\r\n\r\nnot http at all")
                .await;
        }
        "/bad-length" => {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 12abc\r\n\r\nhello")
                .await;
        }
        "/huge-head" => {
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\n").await;
            let line = format!("X-Filler: {}\r\n", "f".repeat(1000));
            for _ in 0..4096 {
                if stream.write_all(line.as_bytes()).await.is_err() {
                    break;
                }
            }
        }
        "/many-headers" => {
            let lines: String = (0..120).map(|i| format!("X-H{i}: 1\r\n")).collect();
            let answer = format!("HTTP/1.1 200 OK\r\n{lines}Content-Length: 2\r\n\r\nok");
            let _ = stream.write_all(answer.as_bytes()).await;
        }
        "/close" => {}
        "/hang" => {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        _ => {
            return answer_hello(stream).await;
        }
    }
    false
}

/// Answers `200 hello` on a keep-alive connection; whether that was written.
async fn answer_hello(stream: &mut TcpStream) -> bool {
    stream
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        .await
        .is_ok()
}

async fn proxy_for(app: &RawApp) -> Proxy {
    let mut config = config_for(app.addr);
    config.upstream.response_timeout = Duration::from_millis(700);
    // One worker, so one pool of app connections: with two, a new client connection goes to
    // the worker with fewer open, and on a busy machine the previous client's may not have
    // closed yet: a test of what meets a pooled connection would then meet a fresh one.
    config.server.worker_threads = 1;
    Proxy::start(config).await
}

async fn assert_serves_hello(proxy: &Proxy) {
    let resp = client().get(proxy.url("/ok")).send().await.expect("answer");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.expect("body"), "hello");
}

#[tokio::test]
async fn app_dying_mid_response_truncates_visibly_and_the_proxy_carries_on() {
    let app = bad_app().await;
    let proxy = proxy_for(&app).await;
    for path in ["/die-cl", "/die-chunked"] {
        let started = Instant::now();
        let resp = client().get(proxy.url(path)).send().await.expect("head");
        assert_eq!(resp.status(), 200, "{path}");
        let body = tokio::time::timeout(Duration::from_secs(10), resp.bytes()).await;
        let body = body.unwrap_or_else(|_| panic!("{path}: body hangs"));
        assert!(
            body.is_err(),
            "{path}: a truncated body was delivered as complete ({} bytes)",
            body.map(|b| b.len()).unwrap_or(0)
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_serves_hello(&proxy).await;
    }

    // Over a raw socket: the chunked answer never gets its terminating chunk.
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(b"GET /die-chunked HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("request");
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "connection left open after the app died");
    assert!(out.starts_with(b"HTTP/1.1 200"));
    assert!(
        !out.ends_with(b"0\r\n\r\n"),
        "the body was terminated cleanly"
    );

    // Each answer the app broke off is counted as the app's failure, as nginx logs
    // "upstream prematurely closed connection".
    let cut = "offload_upstream_errors_total{cause=\"answer_cut\"} 3";
    let text = proxy.metrics_until(cut).await;
    assert!(text.contains(cut), "{text}");
}

/// `target`'s answer over a raw HTTP/1.1 connection, read `per_read` bytes at a time with
/// `pause` between reads: its head and its body as far as it came before the close.
async fn slowly_read(
    proxy: &Proxy,
    target: &str,
    per_read: usize,
    pause: Duration,
) -> (String, usize) {
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let request = format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("request");
    let mut out = Vec::new();
    let mut buf = vec![0; per_read];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf));
        match read.await.expect("connection left open") {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
        tokio::time::sleep(pause).await;
    }
    let head_end = out.windows(4).position(|w| w == b"\r\n\r\n");
    let head = String::from_utf8_lossy(&out[..head_end.unwrap_or(out.len())]).into_owned();
    (head, out.len() - head_end.map_or(out.len(), |e| e + 4))
}

/// An answer that ends early reaches the client as far as it came: the head and the bytes
/// before the end, then the connection closes. hyper drops a connection whose response body
/// fails with what it has not written out yet, so a head and body read in one go with the
/// app's close used to leave the client with nothing at all; and a client reading slowly
/// lost what hyper had not flushed yet.
#[tokio::test]
async fn an_answer_cut_short_reaches_the_client_as_far_as_it_came() {
    let app = bad_app().await;
    let proxy = proxy_for(&app).await;
    let attempts = (0..20).map(|_| slowly_read(&proxy, "/die-in-one-write", 65536, Duration::ZERO));
    for (attempt, (head, body)) in futures_util::future::join_all(attempts)
        .await
        .into_iter()
        .enumerate()
    {
        assert!(
            head.starts_with("HTTP/1.1 200 OK"),
            "attempt {attempt}: {head:?}"
        );
        assert!(head.contains("content-length: 100000"), "{head}");
        assert_eq!(body, 50000, "attempt {attempt}");
    }
    // 4 MiB of 8, to a client that takes 16 KiB every 10 ms: when the app's close comes,
    // the sockets are full and hyper still holds part of the body.
    let (head, body) =
        slowly_read(&proxy, "/die-after-4-mib", 16384, Duration::from_millis(10)).await;
    assert!(head.contains("content-length: 8388608"), "{head}");
    assert_eq!(body, 4 << 20);
    // Over HTTP/2 the stream is reset after the head.
    let h2 = h2_client();
    let attempts = (0..20).map(|_| h2.get(proxy.url("/die-in-one-write")).send());
    for (attempt, resp) in futures_util::future::join_all(attempts)
        .await
        .into_iter()
        .enumerate()
    {
        let resp = resp.unwrap_or_else(|e| panic!("attempt {attempt}: no head: {e:?}"));
        assert_eq!(resp.status(), 200);
        assert!(resp.bytes().await.is_err(), "attempt {attempt}: whole");
    }
}

/// An app's HTTP/1.0 answer goes to an HTTP/1.1 client as HTTP/1.1, as nginx answers: an
/// HTTP/1.0 status line would have the client close its connection after it.
#[tokio::test]
async fn an_http10_answer_goes_on_as_http11_and_the_connection_stays() {
    let app = bad_app().await;
    let proxy = proxy_for(&app).await;
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    for _ in 0..2 {
        stream
            .write_all(b"GET /http10 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("request");
        let answer = read_until_ending(&mut stream, b"hello").await;
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    }
}

/// An app that answers every request in HTTP/1.0 with `Connection: keep-alive`, echoing
/// the request line and the body as it came (chunked or of a stated length).
async fn http10_keep_alive_app() -> RawApp {
    RawApp::start(|mut stream, mut head| async move {
        loop {
            let Some((head_only, rest)) = head.split_once("\r\n\r\n") else {
                return;
            };
            let lower = head_only.to_ascii_lowercase();
            let length = lower
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|value| value.trim().parse::<usize>().ok());
            let mut body = rest.as_bytes().to_vec();
            let body_done = |body: &Vec<u8>| match length {
                Some(length) => body.len() >= length,
                None if lower.contains("transfer-encoding: chunked") => {
                    body.ends_with(b"0\r\n\r\n")
                }
                None => true,
            };
            while !body_done(&body) {
                let mut buf = [0; 4096];
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => body.extend_from_slice(&buf[..n]),
                }
            }
            let request_line = head_only.lines().next().unwrap_or_default();
            let echo = format!("{request_line}\n{}", String::from_utf8_lossy(&body));
            let answer = format!(
                "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: {}\r\n\r\n{echo}",
                echo.len()
            );
            if stream.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
            match read_head(&mut stream).await {
                Some(next) => head = next,
                None => return,
            }
        }
    })
    .await
}

/// An app connection answered in HTTP/1.0 is not used again, keep-alive or not, as nginx
/// does not keep it: hyper would send the next request on it as HTTP/1.0, where a body of
/// no stated length cannot go, and the app got that upload without its body.
#[tokio::test]
async fn a_connection_the_app_answered_in_http10_is_not_reused() {
    let app = http10_keep_alive_app().await;
    let proxy = Proxy::start(config_for(app.addr)).await;
    for round in 0..3 {
        let body =
            reqwest::Body::wrap_stream(futures_util::stream::iter([Ok::<_, std::io::Error>(
                bytes::Bytes::from(format!("upload-{round}")),
            )]));
        let resp = client()
            .post(proxy.url("/upload"))
            .body(body)
            .send()
            .await
            .expect("POST");
        assert_eq!(resp.status(), 200, "round {round}");
        let echo = resp.text().await.expect("echo");
        assert!(
            echo.starts_with("POST /upload HTTP/1.1\n"),
            "round {round}: {echo:?}"
        );
        assert!(
            echo.contains(&format!("upload-{round}")),
            "round {round}: the body reached the app: {echo:?}"
        );
    }
    assert_eq!(app.connections(), 3, "a connection per request");
}

#[tokio::test]
async fn garbage_from_the_app_is_502_with_a_short_body() {
    let app = bad_app().await;
    let proxy = proxy_for(&app).await;
    for path in [
        "/garbage",
        "/bad-length",
        "/huge-head",
        "/many-headers",
        "/close",
    ] {
        let started = Instant::now();
        let resp = client().get(proxy.url(path)).send().await.expect("answer");
        assert_eq!(resp.status(), 502, "{path}");
        assert_eq!(
            resp.headers()["content-type"],
            "text/plain; charset=utf-8",
            "{path}"
        );
        let body = resp.text().await.expect("body");
        assert!(body.starts_with("upstream failed: "), "{path}: {body:?}");
        assert!(body.len() < 200 && body.ends_with('\n'), "{path}: {body:?}");
        assert!(started.elapsed() < Duration::from_secs(10), "{path}");
        if path.starts_with("/huge") || path.starts_with("/many") {
            assert_eq!(
                body,
                "upstream failed: response head too large: more than 100 header lines or 64 KiB\n",
                "the limit it passed is named"
            );
        }
    }
    assert_serves_hello(&proxy).await;
}

/// The app's response head may be as large as offload reads at once (64 KiB, where nginx's
/// proxy_buffer_size allows 4 or 8): one just under it passes whole.
#[tokio::test]
async fn a_response_head_under_64_kib_passes() {
    let big = "b".repeat(60 * 1024);
    let app = RawApp::start(move |mut stream, _| {
        let answer = format!("HTTP/1.1 200 OK\r\nX-Big: {big}\r\nContent-Length: 2\r\n\r\nok");
        async move {
            let _ = stream.write_all(answer.as_bytes()).await;
        }
    })
    .await;
    let proxy = proxy_for(&app).await;
    let resp = client()
        .get(proxy.url("/big"))
        .send()
        .await
        .expect("answer");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-big"].len(), 60 * 1024);
    assert_eq!(resp.text().await.expect("body"), "ok");
}

#[tokio::test]
async fn an_app_that_never_answers_is_504_within_the_timeout() {
    let app = bad_app().await;
    let proxy = proxy_for(&app).await;
    let started = Instant::now();
    let resp = client()
        .get(proxy.url("/hang"))
        .send()
        .await
        .expect("answer");
    let took = started.elapsed();
    assert_eq!(resp.status(), 504);
    assert_eq!(
        resp.text().await.expect("body"),
        "upstream timed out after 700ms\n"
    );
    assert!(took >= Duration::from_millis(700), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_serves_hello(&proxy).await;
}

/// An app that answers `/slow` after `hold`, counting the requests at it at once (now and
/// the most seen); anything else answers `hello` at once.
struct CountingApp {
    app: RawApp,
    at_once: Arc<AtomicUsize>,
    most_at_once: Arc<AtomicUsize>,
}

async fn counting_app(hold: Duration) -> CountingApp {
    let at_once = Arc::new(AtomicUsize::new(0));
    let most_at_once = Arc::new(AtomicUsize::new(0));
    let app = RawApp::start({
        let at_once = Arc::clone(&at_once);
        let most_at_once = Arc::clone(&most_at_once);
        move |mut stream, mut head| {
            let at_once = Arc::clone(&at_once);
            let most_at_once = Arc::clone(&most_at_once);
            async move {
                loop {
                    if head.starts_with("GET /slow ") {
                        let now = at_once.fetch_add(1, Ordering::SeqCst) + 1;
                        most_at_once.fetch_max(now, Ordering::SeqCst);
                        tokio::time::sleep(hold).await;
                        at_once.fetch_sub(1, Ordering::SeqCst);
                    }
                    if !answer_hello(&mut stream).await {
                        return;
                    }
                    match read_head(&mut stream).await {
                        Some(next) => head = next,
                        None => return,
                    }
                }
            }
        }
    })
    .await;
    CountingApp {
        app,
        at_once,
        most_at_once,
    }
}

/// offload in front of `app` with `upstream.max_connections = max`, a request past it
/// waiting up to `wait` (`upstream.connect_timeout`).
async fn proxy_limited(app: &CountingApp, max: usize, wait: Duration) -> Proxy {
    let mut config = config_for(app.app.addr);
    config.upstream.max_connections = max;
    config.upstream.connect_timeout = wait;
    Proxy::start(config).await
}

/// A GET of `url` sent in a task of its own: its status and body text when awaited.
fn get_in_background(http: &reqwest::Client, url: String) -> JoinHandle<(u16, String)> {
    let http = http.clone();
    tokio::spawn(async move {
        let resp = http.get(url).send().await.expect("answer");
        (resp.status().as_u16(), resp.text().await.expect("body"))
    })
}

#[tokio::test]
async fn max_connections_keeps_requests_at_the_app_to_the_limit_and_queues_the_rest() {
    let hold = Duration::from_millis(300);
    let app = counting_app(hold).await;
    let proxy = proxy_limited(&app, 2, Duration::from_secs(5)).await;
    let http = client();
    let started = Instant::now();
    let requests: Vec<_> = (0..6)
        .map(|_| get_in_background(&http, proxy.url("/slow")))
        .collect();
    for request in requests {
        let (status, body) = request.await.expect("request");
        assert_eq!((status, body.as_str()), (200, "hello"));
    }
    let took = started.elapsed();
    // Two at a time, never more, and the others waited their turn rather than failing.
    assert_eq!(app.most_at_once.load(Ordering::SeqCst), 2);
    assert!(took >= hold * 3, "{took:?}");
    assert_eq!(app.at_once.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_request_that_waits_past_connect_timeout_for_a_busy_app_is_503() {
    let hold = Duration::from_millis(1500);
    let app = counting_app(hold).await;
    let proxy = proxy_limited(&app, 1, Duration::from_millis(300)).await;
    let http = client();
    let first = get_in_background(&http, proxy.url("/slow"));
    app.app.request_seen.notified().await;
    let started = Instant::now();
    let resp = http.get(proxy.url("/ok")).send().await.expect("answer");
    let waited = started.elapsed();
    assert_eq!(resp.status(), 503);
    assert_eq!(
        resp.text().await.expect("body"),
        "upstream busy: upstream.max_connections (1) requests at the app, \
         none finished within 300ms\n"
    );
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    assert!(waited < hold, "{waited:?}");
    // Operators see the wait, and the 503 by its cause.
    let metrics = proxy
        .metrics_until("offload_upstream_errors_total{cause=\"busy\"} 1\n")
        .await;
    assert!(metrics.contains("offload_upstream_errors_total{cause=\"busy\"} 1\n"));
    assert!(
        metrics.contains("offload_upstream_waits_total 1\n"),
        "{metrics}"
    );
    let (status, body) = first.await.expect("first request");
    assert_eq!((status, body.as_str()), (200, "hello"));
    // The first request gave its place back with its response: the next one gets through.
    assert_serves_hello(&proxy).await;
    assert_serves_hello(&proxy).await;
}

/// A request asking to upgrade that the app answers without switching (a page, a `403`)
/// holds its place under `upstream.max_connections` while the answer streams, as any other
/// request does: `Upgrade: websocket` is no way past the app's limit.
#[tokio::test]
async fn an_upgrade_the_app_declines_keeps_its_place_until_the_answer_is_in() {
    let app = RawApp::start(|mut stream, _head| async move {
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf ")
            .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let _ = stream.write_all(b"done.").await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    })
    .await;
    let mut config = config_for(app.addr);
    config.upstream.max_connections = 1;
    config.upstream.connect_timeout = Duration::from_millis(300);
    let proxy = Proxy::start(config).await;
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(
            b"GET /chat HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .expect("request");
    let head = read_head(&mut stream).await.expect("the answer's head");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    // Its body still coming, the request is at the app.
    let metrics = proxy
        .metrics_until("offload_upstream_active_requests 1\n")
        .await;
    assert!(
        metrics.contains("offload_upstream_active_requests 1\n"),
        "{metrics}"
    );
    let resp = client()
        .get(proxy.url("/other"))
        .send()
        .await
        .expect("answer");
    assert_eq!(
        resp.status(),
        503,
        "no place while the first answer streams"
    );
}

#[tokio::test]
async fn metrics_show_the_requests_at_the_app_and_those_waiting_for_a_place() {
    // Long enough that the checks made while the first request is at the app are done
    // before it finishes, also on a busy machine.
    let hold = Duration::from_secs(3);
    let app = counting_app(hold).await;
    let proxy = proxy_limited(&app, 1, Duration::from_secs(10)).await;
    let http = client();
    let first = get_in_background(&http, proxy.url("/slow"));
    app.app.request_seen.notified().await;
    // Two more wait for the first's place; the client of one of them then leaves.
    let second = get_in_background(&http, proxy.url("/slow"));
    let mut leaving = TcpStream::connect(proxy.addr).await.expect("connect");
    leaving
        .write_all(b"GET /slow HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .expect("send");
    let metrics = proxy
        .metrics_until("offload_upstream_queued_requests 2\n")
        .await;
    for line in [
        "offload_upstream_max_connections 1\n",
        "offload_upstream_active_requests 1\n",
        "offload_upstream_queued_requests 2\n",
    ] {
        assert!(metrics.contains(line), "{line}{metrics}");
    }
    drop(leaving);
    let metrics = proxy
        .metrics_until("offload_upstream_queued_requests 1\n")
        .await;
    assert!(
        metrics.contains("offload_upstream_queued_requests 1\n"),
        "{metrics}"
    );
    // The first still holds the one place: the wait that ended was the leaving client's.
    assert!(!first.is_finished());
    assert!(metrics.contains("offload_upstream_active_requests 1\n"));
    for request in [first, second] {
        let (status, body) = request.await.expect("request");
        assert_eq!((status, body.as_str()), (200, "hello"));
    }
    let metrics = proxy
        .metrics_until("offload_upstream_active_requests 0\n")
        .await;
    for line in [
        "offload_upstream_active_requests 0\n",
        "offload_upstream_queued_requests 0\n",
        "offload_upstream_waits_total 2\n",
    ] {
        assert!(metrics.contains(line), "{line}{metrics}");
    }
}

/// Unmounts on drop.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Mounts a tmpfs of `size` on `dir`, or `None` when not permitted here.
fn mount_tmpfs(dir: &Path, size: &str) -> Option<Mounted> {
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .stderr(std::process::Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() => Some(Mounted(dir.to_path_buf())),
        _ => None,
    }
}

/// Free bytes on the file system holding `dir`.
fn free_bytes(dir: &Path) -> u64 {
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).expect("path");
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a zeroed struct statvfs that the call fills.
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
    assert_eq!(rc, 0, "statvfs");
    stat.f_bavail as u64 * stat.f_frsize as u64
}

/// Every file under `dir`, with its size.
fn files_under(dir: &Path) -> Vec<(String, u64)> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let len = e.metadata().map(|m| m.len()).unwrap_or(0);
            (e.path().display().to_string(), len)
        })
        .collect()
}

#[tokio::test]
async fn fs_store_on_a_full_disk_fails_whole_and_leaves_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(_mounted) = mount_tmpfs(dir.path(), "8m") else {
        eprintln!("SKIPPED fs_store_on_a_full_disk…: cannot mount a tmpfs here (not root?)");
        return;
    };
    let store = FsStore::new(dir.path(), "/_offload/", None).expect("store");

    // Larger than the disk.
    let (body, _) = data::body(7, 16 << 20, false);
    let err = store
        .put("big/too-large.bin", body, PutOptions::default())
        .await
        .expect_err("a 16 MiB put on an 8 MiB disk");
    assert!(
        matches!(&err, StoreError::Io(e) if e.raw_os_error() == Some(libc::ENOSPC)),
        "{err:?}"
    );
    assert!(
        store
            .head("big/too-large.bin")
            .await
            .expect("head")
            .is_none()
    );
    assert!(
        files_under(dir.path()).is_empty(),
        "{:?}",
        files_under(dir.path())
    );

    // The object fits to the last page, its sidecar does not.
    let free = free_bytes(dir.path());
    let (body, _) = data::body(8, free, false);
    let err = store
        .put("exact/fit.bin", body, PutOptions::default())
        .await
        .expect_err("no room left for the sidecar");
    assert!(
        matches!(&err, StoreError::Io(e) if e.raw_os_error() == Some(libc::ENOSPC)),
        "{err:?}"
    );
    assert!(store.head("exact/fit.bin").await.expect("head").is_none());
    assert!(
        files_under(dir.path()).is_empty(),
        "{:?}",
        files_under(dir.path())
    );

    // Space is back: the store works again.
    let (body, expected) = data::body(9, 1 << 20, false);
    let info = store
        .put("after/ok.bin", body, PutOptions::default())
        .await
        .expect("put after the failures");
    assert_eq!(info.sha256.as_deref(), Some(expected.hex().as_str()));
    let got = store
        .get("after/ok.bin", None)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(
        data::digest(got.body).await.expect("read").1,
        expected.hex()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_slow_request_finish_refuses_new_ones_and_exits_0() {
    let app = RawApp::start(|mut stream, _| async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nfinished!")
            .await;
    })
    .await;
    let mut process =
        OffloadProcess::start(app.addr, &[], &[("OFFLOAD_SERVER_SHUTDOWN_GRACE", "20s")]).await;
    let url = format!("http://{}/slow", process.addr);
    let in_flight = tokio::spawn(async move {
        let resp = client().get(url).send().await?;
        let status = resp.status();
        resp.text().await.map(|body| (status, body))
    });
    tokio::time::timeout(Duration::from_secs(10), app.request_seen.notified())
        .await
        .expect("the request reached the app");
    let signalled = Instant::now();
    process.signal(libc::SIGTERM);

    // New connections are refused once the listener is closed.
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(process.addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = in_flight.await.expect("task").expect("in-flight request");
    assert_eq!((status.as_u16(), body.as_str()), (200, "finished!"));
    let exit = process
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("offload exits after its last request");
    assert_eq!(exit.code(), Some(0), "{}", process.logs());
    assert!(signalled.elapsed() < Duration::from_secs(15));
    assert!(
        process.logs().contains("shutting down"),
        "{}",
        process.logs()
    );
}

/// A second SIGTERM (or Ctrl-C) does not wait out the grace: the connections still open are
/// dropped at once and offload exits 0, as a second Ctrl-C is meant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_drops_what_is_left_and_exits_at_once() {
    let app = RawApp::start(|stream, _| async move {
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(stream);
    })
    .await;
    let mut process =
        OffloadProcess::start(app.addr, &[], &[("OFFLOAD_SERVER_SHUTDOWN_GRACE", "60s")]).await;
    let url = format!("http://{}/slow", process.addr);
    let in_flight = tokio::spawn(async move { client().get(url).send().await });
    tokio::time::timeout(Duration::from_secs(10), app.request_seen.notified())
        .await
        .expect("the request reached the app");
    let signalled = Instant::now();
    process.signal(libc::SIGTERM);
    process
        .wait_for_log("shutting down: no new connections")
        .await;
    process.signal(libc::SIGINT);
    let exit = process
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("offload exits at once on the second signal");
    assert_eq!(exit.code(), Some(0), "{}", process.logs());
    assert!(signalled.elapsed() < Duration::from_secs(10));
    assert!(
        process
            .logs()
            .contains("shutting down at once (a second signal), dropping connections"),
        "{}",
        process.logs()
    );
    let cut = in_flight.await.expect("task");
    assert!(cut.is_err(), "the request in flight is dropped: {cut:?}");
    // Logged as dropped by the server, not as a client that left (499).
    let logs = process.logs();
    let line = logs
        .lines()
        .find(|line| line.contains("offload::access") && line.contains("/slow"))
        .unwrap_or_else(|| panic!("no access line for /slow: {logs}"));
    assert!(line.contains("\"status\":444"), "{line}");
    assert!(
        line.contains("\"reason\":\"dropped when the shutdown's grace ran out\""),
        "{line}"
    );
}

// ---------------------------------------------------------------------------------------
// The store failing under the full proxy (the real binary on s3s-fs, or in-process on fs).
// ---------------------------------------------------------------------------------------

const MIB: u64 = 1 << 20;
const BOUNDARY: &str = "faultsBoundary7MA4YWxkTrZu0gW";

/// A multipart body with one `file_len`-byte file; when `trigger_at` file bytes are sent it
/// signals `tx` and pauses 300 ms (so the test can break the store mid-stream).
fn upload_body(
    file_len: u64,
    trigger_at: u64,
    tx: Option<tokio::sync::oneshot::Sender<()>>,
) -> reqwest::Body {
    let head = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nt\r\n\
         --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.bin\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    );
    let tail = format!("\r\n--{BOUNDARY}--\r\n");
    let block = crate::support::pattern_block();
    let state = (0u8, 0u64, tx);
    let stream = futures_util::stream::unfold(state, move |(phase, sent, mut tx)| {
        let (head, tail, block) = (head.clone(), tail.clone(), block.clone());
        async move {
            match phase {
                0 => Some((
                    Ok::<_, std::io::Error>(bytes::Bytes::from(head)),
                    (1, 0, tx),
                )),
                1 if sent < file_len => {
                    if sent >= trigger_at
                        && let Some(tx) = tx.take()
                    {
                        let _ = tx.send(());
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    let n = (file_len - sent).min(block.len() as u64);
                    Some((Ok(block.slice(..n as usize)), (1, sent + n, tx)))
                }
                1 => Some((Ok(bytes::Bytes::from(tail)), (2, sent, tx))),
                _ => None,
            }
        }
    });
    reqwest::Body::wrap_stream(stream)
}

async fn s3_keys(store: &dyn Store) -> Vec<String> {
    futures_util::StreamExt::collect::<Vec<_>>(store.list(""))
        .await
        .into_iter()
        .filter_map(|r| r.ok().map(|i| i.key))
        .collect()
}

async fn s3_offload(
    server: &crate::support::s3::S3Server,
    app: std::net::SocketAddr,
) -> OffloadProcess {
    let config = crate::support::process::s3_config(server);
    let env = crate::support::process::s3_env(server);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    OffloadProcess::start_with_config(app, Some(&config), &[], &env).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_stopped_mid_upload_leaves_nothing_in_every_mode() {
    let mut server = crate::support::s3::start().await;
    let app = crate::support::App::start().await;
    let process = s3_offload(&server, app.addr).await;
    let store = server.target().store().await;
    let url = |path: &str| format!("http://{}{path}", process.addr);
    for mode in ["respond", "replace", "mirror"] {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let request = client()
            .post(url(&format!("/{mode}")))
            .header(
                "content-type",
                format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .body(upload_body(30 * MIB, 12 * MIB, Some(tx)))
            .send();
        let stopper = async {
            let _ = rx.await;
            server.stop();
        };
        let (resp, ()) = tokio::join!(request, stopper);
        if let Ok(resp) = resp {
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap_or_default();
            assert!(status == 502 || status == 503, "{mode}: {status} {text}");
            assert!(
                text.contains("\"error\"") && text.len() < 300,
                "{mode}: {text}"
            );
        }
        server.restart().await;
        // Rollback deletes and multipart aborts finish once the store is back.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let keys = s3_keys(&store).await;
            let open = server.leftover_uploads();
            if keys.is_empty() && open.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{mode}: left behind: objects {keys:?}, open multipart uploads {open:?}\n{}",
                process.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if mode != "mirror" {
            assert!(
                !app.seen().iter().any(|r| r.contains(&format!("/{mode}"))),
                "{mode}: the app saw the upload"
            );
        }
        // Still serving: an upload now succeeds and is whole.
        let resp = client()
            .post(url("/respond"))
            .header(
                "content-type",
                format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .body(upload_body(MIB + 1, u64::MAX, None))
            .send()
            .await
            .expect("upload after the outage");
        assert_eq!(resp.status(), 201, "{mode}");
        let json: serde_json::Value = resp.json().await.expect("json");
        let key = json["files"][0]["key"].as_str().expect("key").to_string();
        let got = store.get(&key, None).await.expect("get").expect("stored");
        assert_eq!(
            data::digest(got.body).await.expect("read").1,
            crate::support::pattern_sha256(MIB + 1)
        );
        store.delete(&key).await.expect("delete");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_down_while_serving_a_fallback_is_503_with_a_short_body() {
    let mut server = crate::support::s3::start().await;
    let app = crate::support::App::start().await;
    let process = s3_offload(&server, app.addr).await;
    let store = server.target().store().await;
    store
        .put(
            "wp-content/uploads/x.jpg",
            data::bytes_body("jpeg bytes"),
            PutOptions::default(),
        )
        .await
        .expect("put");
    let url = |path: &str| format!("http://{}{path}", process.addr);
    let resp = client()
        .get(url("/wp-content/uploads/x.jpg"))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.expect("body"), "jpeg bytes");

    server.stop();
    for path in ["/wp-content/uploads/x.jpg", "/wp-content/uploads/y.jpg"] {
        let started = Instant::now();
        let resp = client().get(url(path)).send().await.expect("get");
        assert_eq!(resp.status(), 503, "{path}");
        assert_eq!(
            resp.text().await.expect("body"),
            "object store unavailable\n"
        );
        assert!(started.elapsed() < Duration::from_secs(10), "{path}");
    }
    // Pass-through does not need the store.
    let resp = client().get(url("/ok")).send().await.expect("get");
    assert_eq!(resp.status(), 200);

    server.restart().await;
    let resp = client()
        .get(url("/wp-content/uploads/x.jpg"))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn a_full_disk_under_the_fs_store_fails_the_upload_and_nothing_else() {
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(_mounted) = mount_tmpfs(dir.path(), "8m") else {
        eprintln!("SKIPPED a_full_disk…: cannot mount a tmpfs here (not root?)");
        return;
    };
    let app = crate::support::App::start().await;
    let mut config = config_for(app.addr);
    config.store.root = dir.path().to_path_buf();
    config.uploads = vec![offload::config::UploadRouteConfig {
        path: "/respond".into(),
        mode: offload::config::UploadMode::Respond,
        ..Default::default()
    }];
    let proxy = Proxy::start(config).await;
    let store = FsStore::new(dir.path(), "/_offload/", None).expect("store");
    store
        .put(
            "kept/ok.txt",
            data::bytes_body("still here"),
            PutOptions::default(),
        )
        .await
        .expect("put");
    let before = files_under(dir.path());

    let resp = client()
        .post(proxy.url("/respond"))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(upload_body(16 * MIB, u64::MAX, None))
        .send()
        .await;
    if let Ok(resp) = resp {
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert!(status.is_server_error(), "{status}: {text}");
        assert!(text.contains("\"error\"") && text.len() < 300, "{text}");
    }
    assert_eq!(
        files_under(dir.path()),
        before,
        "a partial object or temp file was left"
    );
    // Still serving what it has, and taking uploads that fit.
    let resp = client()
        .get(proxy.url("/_offload/kept/ok.txt"))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.text().await.expect("body"), "still here");
    let resp = client()
        .post(proxy.url("/respond"))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(upload_body(MIB, u64::MAX, None))
        .send()
        .await
        .expect("upload");
    assert_eq!(resp.status(), 201);
}

/// An app that closes each connection right after answering on it (as one whose keep-alive
/// timeout expired would): a request never goes out on a pooled connection the app has
/// closed, so even one the proxy never sends twice (a POST) gets through, on a new one.
#[tokio::test]
async fn a_pooled_connection_the_app_closed_while_idle_is_not_used() {
    let app = RawApp::start(|mut stream, _| async move {
        answer_hello(&mut stream).await;
        // Dropped here: closed after the answer, while the proxy keeps it as idle.
    })
    .await;
    let proxy = proxy_for(&app).await;
    assert_serves_hello(&proxy).await;
    for round in 0..3 {
        // Time for the app's close to reach the proxy's idle connection.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let resp = client()
            .post(proxy.url("/form"))
            .send()
            .await
            .expect("answer");
        assert_eq!(resp.status(), 200, "round {round}");
        assert_eq!(resp.text().await.expect("body"), "hello");
    }
    assert_eq!(app.connections(), 4, "one connection per request");
}

/// An app whose keep-alive timeout races the proxy's reuse of its connection: it answers the
/// first request on each connection, then closes the connection when the next one arrives.
#[tokio::test]
async fn a_pooled_connection_closed_by_the_app_is_retried_for_idempotent_requests() {
    let app = RawApp::start(|mut stream, _first| async move {
        if answer_hello(&mut stream).await {
            // The next request on this connection meets a closed door.
            let _ = read_head(&mut stream).await;
        }
    })
    .await;
    let proxy = proxy_for(&app).await;
    for round in 0..5 {
        let resp = client()
            .get(proxy.url(&format!("/page-{round}")))
            .send()
            .await
            .expect("answer");
        assert_eq!(resp.status(), 200, "round {round}");
        assert_eq!(resp.text().await.expect("body"), "hello");
    }
    // A request with a body is never sent twice (the app may have acted on it): on the
    // pooled connection the app now closes, it is a 502.
    let resp = client()
        .post(proxy.url("/form"))
        .body("a=1")
        .send()
        .await
        .expect("answer");
    assert_eq!(resp.status(), 502);
}

/// The same race where the app closes with the request unread in its socket: its kernel
/// answers with a reset, not an end of stream. Idempotent requests without a body (PUT and
/// DELETE too) are sent again (as nginx does on an error from a cached connection); a POST
/// is not.
#[tokio::test]
async fn a_pooled_connection_reset_by_the_app_is_retried_for_idempotent_requests() {
    let app = RawApp::start(|mut stream, _first| async move {
        if answer_hello(&mut stream).await {
            // Closed once the next request has arrived, unread: a reset.
            let _ = stream.readable().await;
        }
    })
    .await;
    let proxy = proxy_for(&app).await;
    let methods = ["GET", "HEAD", "GET", "OPTIONS", "DELETE", "PUT"];
    for (round, method) in methods.into_iter().enumerate() {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let resp = client()
            .request(method.clone(), proxy.url(&format!("/page-{round}")))
            .send()
            .await
            .expect("answer");
        assert_eq!(resp.status(), 200, "round {round}: {method}");
    }
    let resp = client()
        .post(proxy.url("/form"))
        .body("a=1")
        .send()
        .await
        .expect("answer");
    assert_eq!(resp.status(), 502);
    let text = resp.text().await.expect("body");
    assert!(text.contains("reset"), "{text}");
}

/// What the proxy sends again after that race is the request it sent first, byte for byte:
/// the same target, the same headers in the same order, duplicates and all.
#[tokio::test]
async fn a_request_sent_again_is_the_request_sent_first() {
    // Each head the app read: whether it was the one at a closed door (never answered),
    // and the head.
    let heads = Arc::new(Mutex::new(Vec::new()));
    let app = RawApp::start({
        let heads = Arc::clone(&heads);
        move |mut stream, first| {
            let heads = Arc::clone(&heads);
            async move {
                heads.lock().expect("heads").push((false, first));
                if answer_hello(&mut stream).await
                    && let Some(next) = read_head(&mut stream).await
                {
                    heads.lock().expect("heads").push((true, next));
                }
            }
        }
    })
    .await;
    let proxy = proxy_for(&app).await;
    for round in 0..4 {
        let resp = client()
            .get(proxy.url(&format!("/a%2Fb/page-{round}?x=%41&&y")))
            .header("x-dup", "one")
            .header("cookie", "a=1")
            .header("x-dup", "two: with a colon")
            .send()
            .await
            .expect("answer");
        assert_eq!(resp.status(), 200, "round {round}");
        assert_eq!(resp.text().await.expect("body"), "hello");
    }
    let heads = heads.lock().expect("heads").clone();
    let unanswered: Vec<_> = heads.iter().filter(|(door, _)| *door).collect();
    assert!(
        !unanswered.is_empty(),
        "no request met a closed door: {heads:#?}"
    );
    for (_, head) in unanswered {
        assert!(head.contains("?x=%41&&y HTTP/1.1\r\n"), "{head}");
        assert!(
            head.contains("x-dup: one\r\nx-dup: two: with a colon\r\n"),
            "{head}"
        );
        assert!(head.contains("cookie: a=1\r\n"), "{head}");
        // Each round has a target of its own: the same head again is the same request.
        let sent_again = heads.iter().filter(|(door, h)| !door && h == head).count();
        assert_eq!(sent_again, 1, "{head} not sent again as it was: {heads:#?}");
    }
}
