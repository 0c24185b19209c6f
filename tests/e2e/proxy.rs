//! Pass-through: bodies, paths, headers, forwarding headers, Expect, upgrades, errors.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

use crate::support::app::Echo;
use crate::support::raw::{RawApp, read_head};
use crate::support::{
    App, Proxy, app_and_proxy, client, config_for, get_text, h2_client, hash_body, pattern_sha256,
    pattern_stream, raw_body, raw_exchange,
};

const SIZES: [u64; 5] = [0, 1, 64 * 1024, 8 * 1024 * 1024, 256 * 1024 * 1024];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_round_trip_byte_exact_both_ways() {
    let (_app, proxy) = app_and_proxy(|_| {}).await;
    let http = client();
    for size in SIZES {
        let expected = pattern_sha256(size);
        for chunked in [false, true] {
            // Upload: the app hashes what it received.
            let mut req = http
                .post(proxy.url("/upload"))
                .body(reqwest::Body::wrap_stream(pattern_stream(size)));
            if !chunked {
                req = req.header("content-length", size);
            }
            let resp = req.send().await.expect("upload");
            assert_eq!(resp.status(), 200);
            let echo = Echo::parse(&resp.text().await.expect("echo body"));
            assert_eq!(
                (echo.body_len, echo.body_sha256.as_str()),
                (size, expected.as_str()),
                "upload {size} chunked={chunked}"
            );

            // Download: the app streams, we hash what arrives.
            let q = if chunked { "?chunked" } else { "" };
            let resp = http
                .get(proxy.url(&format!("/bytes/{size}{q}")))
                .send()
                .await
                .expect("download");
            assert_eq!(resp.status(), 200);
            if !chunked {
                assert_eq!(resp.content_length(), Some(size));
            }
            assert_eq!(
                hash_body(resp).await,
                (size, expected.clone()),
                "download {size} chunked={chunked}"
            );
        }
    }
    // Streamed both ways: 256 MiB bodies never sit in memory (client, proxy and app all live
    // in this process, so its peak resident size bounds all three).
    if let Some(peak) = peak_rss_kib() {
        assert!(
            peak < 160 * 1024,
            "peak RSS {peak} KiB: something buffered a body"
        );
    }
}

/// The process's peak resident set size (Linux), in KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test]
async fn upstream_get_fetches_from_the_app() {
    let app = crate::support::App::start().await;
    let config = crate::support::config_for(app.addr);
    let upstream = offload::proxy::Upstream::new(&config.upstream).expect("upstream");
    let mut headers = http::HeaderMap::new();
    headers.insert("cookie", http::HeaderValue::from_static("session=1"));
    let resp = upstream.get("/g%20x?y=1", headers).await.expect("GET");
    assert_eq!(resp.status(), 200);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .expect("body")
        .to_bytes();
    let echo = Echo::parse(&String::from_utf8_lossy(&body));
    assert_eq!(
        (echo.method.as_str(), echo.target.as_str()),
        ("GET", "/g%20x?y=1")
    );
    assert_eq!(echo.one("cookie"), Some("session=1"));
    assert_eq!(echo.one("host"), Some(app.addr.to_string().as_str()));
    let err = upstream
        .get("not a path", http::HeaderMap::new())
        .await
        .expect_err("bad target");
    assert_eq!(err.status(), http::StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn odd_paths_and_queries_pass_byte_exact() {
    let (_app, proxy) = app_and_proxy(|_| {}).await;
    for target in [
        "/a%2Fb/%20?x=%41&&y",
        "//double",
        "/%E2%9C%93/caf%C3%A9?q=%F0%9F%98%80",
        "/semi;colon/./dot/../?a=b=c&",
        "/?",
    ] {
        let request =
            format!("GET {target} HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n");
        let response = raw_exchange(proxy.addr, request.as_bytes(), Duration::from_secs(5)).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{target}: {response}");
        let echo = Echo::parse(raw_body(&response));
        assert_eq!(echo.target, target);
    }
}

#[tokio::test]
async fn every_method_passes() {
    let (_app, proxy) = app_and_proxy(|_| {}).await;
    for method in [
        "GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND",
    ] {
        let request = format!(
            "{method} /m HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let response = raw_exchange(proxy.addr, request.as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(Echo::parse(raw_body(&response)).method, method);
    }
    let resp = client()
        .head(proxy.url("/bytes/10"))
        .send()
        .await
        .expect("HEAD");
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn duplicate_and_unusual_headers_keep_their_order() {
    let (_app, proxy) = app_and_proxy(|_| {}).await;
    let request = "GET /h HTTP/1.1\r\nHost: site.test\r\nX-Dup: one\r\nX-Other: o\r\nX-Dup: two\r\n\
                   x-dup: three\r\nX-Under_Score: u\r\nX-Empty:\r\nX-Spaces:   a  b  \r\n\
                   Cookie: a=1\r\nCookie: b=2\r\nConnection: close\r\n\r\n";
    let response = raw_exchange(proxy.addr, request.as_bytes(), Duration::from_secs(5)).await;
    let echo = Echo::parse(raw_body(&response));
    assert_eq!(echo.all("x-dup"), ["one", "two", "three"]);
    assert_eq!(echo.all("cookie"), ["a=1", "b=2"]);
    assert_eq!(echo.one("x-under_score"), Some("u"));
    assert_eq!(echo.one("x-empty"), Some(""));
    assert_eq!(echo.one("x-spaces"), Some("a  b"));
    assert_eq!(
        echo.one("host"),
        Some("site.test"),
        "Host preserved by default"
    );
    let names: Vec<&str> = echo.headers.iter().map(|(k, _)| k.as_str()).collect();
    let pos = |n: &str| names.iter().position(|k| *k == n);
    assert!(
        pos("x-dup") < pos("x-other") && pos("x-other") < pos("x-under_score"),
        "{names:?}"
    );
}

#[tokio::test]
async fn hop_by_hop_headers_are_dropped_both_ways() {
    let (_app, proxy) = app_and_proxy(|_| {}).await;
    let request = "GET /h HTTP/1.1\r\nHost: x\r\nConnection: close, X-Hop\r\nX-Hop: secret\r\n\
                   Keep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\n\
                   Proxy-Authorization: Basic Zm9vOmJhcg==\r\nUpgrade: h2c\r\nX-Stay: 1\r\n\r\n";
    let response = raw_exchange(proxy.addr, request.as_bytes(), Duration::from_secs(5)).await;
    let echo = Echo::parse(raw_body(&response));
    for gone in [
        "connection",
        "x-hop",
        "keep-alive",
        "te",
        "proxy-connection",
        "proxy-authorization",
        "upgrade",
    ] {
        assert_eq!(echo.one(gone), None, "{gone} reached the app");
    }
    assert_eq!(echo.one("x-stay"), Some("1"));

    let resp = client()
        .get(proxy.url("/hop"))
        .send()
        .await
        .expect("answer");
    assert_eq!(
        resp.headers().get("x-app-kept").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    assert!(
        resp.headers().get("x-app-hop").is_none(),
        "header named in Connection dropped"
    );
    assert!(resp.headers().get("keep-alive").is_none());
}

#[tokio::test]
async fn forwarding_headers_from_an_untrusted_peer_are_replaced() {
    let (_app, proxy) = app_and_proxy(|_| {}).await;
    let request = "GET /f HTTP/1.1\r\nHost: site.test:8443\r\nX-Forwarded-For: 6.6.6.6\r\n\
                   X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.test\r\nForwarded: for=6.6.6.6\r\n\
                   Connection: close\r\n\r\n";
    let response = raw_exchange(proxy.addr, request.as_bytes(), Duration::from_secs(5)).await;
    let echo = Echo::parse(raw_body(&response));
    assert_eq!(echo.all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(echo.all("x-forwarded-proto"), ["http"]);
    assert_eq!(echo.all("x-forwarded-host"), ["site.test:8443"]);
    assert_eq!(
        echo.all("forwarded"),
        ["for=127.0.0.1;host=\"site.test:8443\";proto=http"]
    );
    assert_eq!(echo.one("host"), Some("site.test:8443"));
}

#[tokio::test]
async fn forwarding_headers_from_a_trusted_peer_are_extended() {
    let (_app, proxy) = app_and_proxy(|c| {
        c.server.trusted_proxies = vec!["127.0.0.0/8".parse().expect("net")];
    })
    .await;
    let request = "GET /f HTTP/1.1\r\nHost: site.test\r\nX-Forwarded-For: 203.0.113.7\r\n\
                   X-Forwarded-For: 10.1.1.1\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: www.example.com\r\n\
                   Forwarded: for=203.0.113.7;proto=https\r\nConnection: close\r\n\r\n";
    let response = raw_exchange(proxy.addr, request.as_bytes(), Duration::from_secs(5)).await;
    let echo = Echo::parse(raw_body(&response));
    assert_eq!(
        echo.all("x-forwarded-for"),
        ["203.0.113.7, 10.1.1.1, 127.0.0.1"]
    );
    assert_eq!(echo.all("x-forwarded-proto"), ["https"]);
    assert_eq!(echo.all("x-forwarded-host"), ["www.example.com"]);
    assert_eq!(
        echo.all("forwarded"),
        ["for=203.0.113.7;proto=https, for=127.0.0.1;host=\"site.test\";proto=http"]
    );

    // A client's own `Connection` options, passed on by the balancer, do not erase what
    // the balancer said of it.
    let request = "GET /f HTTP/1.1\r\nHost: site.test\r\nX-Forwarded-For: 203.0.113.7\r\n\
                   X-Forwarded-Proto: https\r\nForwarded: for=203.0.113.7;proto=https\r\n\
                   Connection: X-Forwarded-For, X-Forwarded-Proto, Forwarded, Host, close\r\n\r\n";
    let response = raw_exchange(proxy.addr, request.as_bytes(), Duration::from_secs(5)).await;
    let echo = Echo::parse(raw_body(&response));
    assert_eq!(echo.all("x-forwarded-for"), ["203.0.113.7, 127.0.0.1"]);
    assert_eq!(echo.all("x-forwarded-proto"), ["https"]);
    assert_eq!(
        echo.all("forwarded"),
        ["for=203.0.113.7;proto=https, for=127.0.0.1;host=\"site.test\";proto=http"]
    );
    assert_eq!(echo.one("host"), Some("site.test"));
}

/// A balancer that sends one form alone (HAProxy's `option forwarded`; AWS's X-Forwarded-*):
/// the app sees the same client, scheme and host in the other.
#[tokio::test]
async fn a_trusted_peers_one_form_is_written_in_the_other() {
    let (_app, proxy) = app_and_proxy(|c| {
        c.server.trusted_proxies = vec!["127.0.0.0/8".parse().expect("net")];
    })
    .await;
    let request = "GET /f HTTP/1.1\r\nHost: site.test\r\n\
                   Forwarded: for=203.0.113.7;host=www.example.com;proto=https\r\n\
                   Connection: close\r\n\r\n";
    let response = raw_exchange(proxy.addr, request.as_bytes(), Duration::from_secs(5)).await;
    let echo = Echo::parse(raw_body(&response));
    assert_eq!(echo.all("x-forwarded-for"), ["203.0.113.7, 127.0.0.1"]);
    assert_eq!(echo.all("x-forwarded-proto"), ["https"]);
    assert_eq!(echo.all("x-forwarded-host"), ["www.example.com"]);

    let request = "GET /f HTTP/1.1\r\nHost: site.test\r\nX-Forwarded-For: 203.0.113.7\r\n\
                   X-Forwarded-Proto: https\r\nConnection: close\r\n\r\n";
    let response = raw_exchange(proxy.addr, request.as_bytes(), Duration::from_secs(5)).await;
    let echo = Echo::parse(raw_body(&response));
    assert_eq!(
        echo.all("forwarded"),
        ["for=203.0.113.7;proto=https, for=127.0.0.1;host=\"site.test\";proto=http"]
    );
    assert_eq!(echo.all("x-forwarded-host"), ["site.test"]);
}

#[tokio::test]
async fn host_can_be_the_upstreams() {
    let (app, proxy) = app_and_proxy(|c| c.upstream.preserve_host = false).await;
    let request = "GET /f HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n";
    let response = raw_exchange(proxy.addr, request.as_bytes(), Duration::from_secs(5)).await;
    let echo = Echo::parse(raw_body(&response));
    assert_eq!(echo.one("host"), Some(app.addr.to_string().as_str()));
    assert_eq!(echo.one("x-forwarded-host"), Some("site.test"));
}

#[tokio::test]
async fn expect_100_continue_does_not_stall() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_app, proxy) = app_and_proxy(|_| {}).await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    stream
        .write_all(b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        .await
        .expect("head");
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("100 Continue arrives")
        .expect("read");
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 100 Continue"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    stream.write_all(b"hello").await.expect("body");
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
        .await
        .expect("final answer in time")
        .expect("read");
    let text = String::from_utf8_lossy(&rest);
    let echo = Echo::parse(raw_body(&text));
    assert_eq!(echo.body_len, 5);
    assert_eq!(echo.one("expect"), None, "Expect is not forwarded");
}

/// An app that answers a POST at once, then reads its body to the end (and reports its
/// SHA-256), then answers `GET`s on the same connection with `ok`.
async fn early_answering_app() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    use sha2::{Digest, Sha256};
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("app binds");
    let addr = listener.local_addr().expect("app address");
    let (digests, received) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let digests = digests.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some(end) = read_until_head_end(&mut stream, &mut buf).await else {
                        return;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    buf.drain(..end);
                    if !head.starts_with("post ") {
                        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        if stream.write_all(ok).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    let Some(length) = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                    else {
                        return;
                    };
                    let answer = b"HTTP/1.1 204 No Content\r\n\r\n";
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                    // Long enough for the answer to reach the client before the body has.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let mut hasher = Sha256::new();
                    let mut left = length;
                    loop {
                        let take = left.min(buf.len());
                        hasher.update(&buf[..take]);
                        buf.drain(..take);
                        left -= take;
                        if left == 0 {
                            break;
                        }
                        let mut chunk = vec![0u8; 64 * 1024];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => {
                                let _ = digests.send(format!("cut short, {left} bytes missing"));
                                return;
                            }
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let _ = digests.send(hex::encode(hasher.finalize()));
                }
            });
        }
    });
    (addr, received)
}

/// Reads into `buf` until it holds a whole head; the head's length (with its blank line).
async fn read_until_head_end(
    stream: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
) -> Option<usize> {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(at + 4);
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// An app may answer before it has read the request body (RFC 9110 §15), and read the rest
/// afterwards: the rest still reaches it whole, and the client's connection carries its
/// next request (the app connection was not left idle with the body half sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_answer_still_gets_the_app_the_whole_body() {
    use tokio::io::AsyncReadExt;
    const LEN: u64 = 32 * 1024 * 1024;
    let (app, mut digests) = early_answering_app().await;
    let proxy = Proxy::start(config_for(app)).await;
    let stream = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let sending = tokio::spawn(async move {
        let head = format!("POST /early HTTP/1.1\r\nHost: x\r\nContent-Length: {LEN}\r\n\r\n");
        writer.write_all(head.as_bytes()).await?;
        let mut body = std::pin::pin!(pattern_stream(LEN));
        while let Some(chunk) = body.next().await {
            writer.write_all(&chunk?).await?;
        }
        writer
            .write_all(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
            .await?;
        Ok::<_, std::io::Error>(writer)
    });
    let mut answers = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        let mut chunk = [0u8; 4096];
        while !answers.ends_with(b"\r\n\r\nok") {
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answers.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let answers = String::from_utf8_lossy(&answers);
    assert!(read.is_ok(), "both answers in time: {answers:?}");
    assert!(
        answers.starts_with("HTTP/1.1 204 No Content\r\n"),
        "{answers:?}"
    );
    assert!(answers.contains("HTTP/1.1 200 OK\r\n"), "{answers:?}");
    assert!(answers.ends_with("\r\n\r\nok"), "{answers:?}");
    let _writer = sending.await.expect("sender").expect("whole request sent");
    let digest = tokio::time::timeout(Duration::from_secs(5), digests.recv())
        .await
        .expect("the app read the body")
        .expect("digest");
    assert_eq!(digest, pattern_sha256(LEN));
}

#[tokio::test]
async fn websocket_echoes_through_the_tunnel() {
    let (_app, proxy) = app_and_proxy(|_| {}).await;
    let url = format!("ws://{}/ws", proxy.addr);
    let (mut ws, response) = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket handshake");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws.send(Message::text("hello")).await.expect("send text");
    assert_eq!(
        ws.next().await.expect("reply").expect("frame"),
        Message::text("hello")
    );
    let big = vec![7u8; 300_000];
    ws.send(Message::binary(big.clone()))
        .await
        .expect("send binary");
    assert_eq!(
        ws.next().await.expect("reply").expect("frame"),
        Message::binary(big)
    );
    ws.close(None).await.expect("close");
}

#[tokio::test]
async fn http2_prior_knowledge_reaches_an_http1_app() {
    let (_app, proxy) = app_and_proxy(|_| {}).await;
    let h2 = h2_client();
    let resp = h2
        .post(proxy.url("/p?q=1"))
        .body("abc")
        .send()
        .await
        .expect("h2 request");
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let echo = Echo::parse(&resp.text().await.expect("body"));
    assert_eq!(echo.version, "HTTP/1.1");
    assert_eq!(echo.target, "/p?q=1");
    assert_eq!(echo.body_len, 3);
    assert_eq!(
        echo.one("host"),
        Some(proxy.addr.to_string().as_str()),
        "authority becomes Host"
    );
    let resp = h2
        .get(proxy.url("/bytes/1000000"))
        .send()
        .await
        .expect("h2 download");
    assert_eq!(
        hash_body(resp).await,
        (1_000_000, pattern_sha256(1_000_000))
    );
}

#[tokio::test]
async fn app_down_is_502_naming_it() {
    let (app, proxy) = app_and_proxy(|_| {}).await;
    drop(app);
    // The freed port refuses connections now.
    let resp = client().get(proxy.url("/x")).send().await.expect("answer");
    assert_eq!(resp.status(), 502);
    let text = resp.text().await.expect("body");
    assert!(text.starts_with("upstream unreachable"), "{text}");
}

#[tokio::test]
async fn slow_app_is_504() {
    let (_app, proxy) =
        app_and_proxy(|c| c.upstream.response_timeout = Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let resp = client()
        .get(proxy.url("/sleep/3000"))
        .send()
        .await
        .expect("answer");
    assert_eq!(resp.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(2));
    let text = resp.text().await.expect("body");
    assert_eq!(text.trim(), "upstream timed out after 300ms");
}

#[tokio::test]
async fn a_slow_upload_is_not_an_app_timeout() {
    let (_app, proxy) =
        app_and_proxy(|c| c.upstream.response_timeout = Duration::from_millis(300)).await;
    // The body takes ~1 s to send; the response timeout only starts once it is sent.
    let slow = futures_util::stream::iter(0..5).then(|_| async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"0123456789"))
    });
    let resp = client()
        .post(proxy.url("/slow"))
        .body(reqwest::Body::wrap_stream(slow))
        .send()
        .await
        .expect("answer");
    assert_eq!(resp.status(), 200);
    assert_eq!(Echo::parse(&resp.text().await.expect("body")).body_len, 50);
}

/// An app that keeps connections alive and answers every request on them (after `delay`),
/// counting the connections open right now and all it ever accepted.
struct KeepAliveApp {
    app: RawApp,
    open: Arc<AtomicUsize>,
}

impl KeepAliveApp {
    async fn start(delay: Duration) -> KeepAliveApp {
        let open = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&open);
        let app = RawApp::start(move |mut stream, _head| {
            let open = Arc::clone(&counted);
            async move {
                open.fetch_add(1, Ordering::SeqCst);
                loop {
                    tokio::time::sleep(delay).await;
                    let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                    if stream.write_all(answer).await.is_err()
                        || read_head(&mut stream).await.is_none()
                    {
                        break;
                    }
                }
                open.fetch_sub(1, Ordering::SeqCst);
            }
        })
        .await;
        KeepAliveApp { app, open }
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Waits up to 5 s for the open connections to drop to `most`.
    async fn wait_open_at_most(&self, most: usize) -> usize {
        for _ in 0..50 {
            if self.open() <= most {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.open()
    }
}

async fn get_ok(proxy: &Proxy, path: &str) {
    let resp = client().get(proxy.url(path)).send().await.expect("answer");
    assert_eq!(resp.status(), 200, "{path}");
    assert_eq!(resp.text().await.expect("body"), "ok", "{path}");
}

/// offload in front of `app` with `count` worker threads: the pool tests below count the app
/// connections of each worker's pool.
fn workers(app: &KeepAliveApp, count: usize) -> offload::config::Config {
    let mut config = config_for(app.app.addr);
    config.server.worker_threads = count;
    config
}

#[tokio::test]
async fn app_connections_are_reused_one_after_another() {
    let app = KeepAliveApp::start(Duration::ZERO).await;
    let proxy = Proxy::start(workers(&app, 1)).await;
    for round in 0..20 {
        get_ok(&proxy, &format!("/page-{round}")).await;
    }
    assert_eq!(
        app.app.connections(),
        1,
        "one kept-alive connection serves them all"
    );
}

#[tokio::test]
async fn idle_app_connections_beyond_pool_max_idle_are_closed() {
    let app = KeepAliveApp::start(Duration::from_millis(300)).await;
    let mut config = workers(&app, 1);
    config.upstream.pool_max_idle = 2;
    let proxy = Arc::new(Proxy::start(config).await);
    let burst: Vec<_> = (0..8)
        .map(|i| {
            let proxy = Arc::clone(&proxy);
            tokio::spawn(async move { get_ok(&proxy, &format!("/burst-{i}")).await })
        })
        .collect();
    for request in burst {
        request.await.expect("request task");
    }
    // Requests in flight together each have a connection (all eight, unless a slow machine
    // started one only after another had finished).
    let opened = app.app.connections();
    assert!(
        opened > 2,
        "only {opened} connections for 8 concurrent requests"
    );
    assert_eq!(
        app.wait_open_at_most(2).await,
        2,
        "two stay idle, the rest close"
    );
    // The two kept are used again.
    get_ok(&proxy, "/again").await;
    assert_eq!(app.app.connections(), opened);
}

/// Each worker thread keeps app connections of its own (as nginx workers do): two client
/// connections served by two workers, taking turns, use two app connections, each kept alive
/// throughout; one shared pool would have used one.
#[tokio::test]
async fn each_worker_keeps_its_own_app_connections() {
    let app = KeepAliveApp::start(Duration::ZERO).await;
    let proxy = Proxy::start(workers(&app, 2)).await;
    // Each client keeps one connection; the second goes to the worker without one.
    let (first, second) = (client(), client());
    for round in 0..10 {
        for (name, client) in [("first", &first), ("second", &second)] {
            let resp = client
                .get(proxy.url(&format!("/{name}-{round}")))
                .send()
                .await
                .expect("answer");
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.text().await.expect("body"), "ok");
        }
    }
    assert_eq!(app.app.connections(), 2, "one app connection per worker");
}

#[tokio::test]
async fn idle_app_connections_close_after_pool_idle_timeout() {
    let app = KeepAliveApp::start(Duration::ZERO).await;
    let mut config = config_for(app.app.addr);
    config.upstream.pool_idle_timeout = Duration::from_secs(1);
    let proxy = Proxy::start(config).await;
    get_ok(&proxy, "/first").await;
    assert_eq!(app.open(), 1, "kept alive after the answer");
    // Swept within a second or two of turning stale.
    assert_eq!(
        app.wait_open_at_most(0).await,
        0,
        "closed once idle too long"
    );
    get_ok(&proxy, "/second").await;
    assert_eq!(
        app.app.connections(),
        2,
        "a new connection after the old one was closed"
    );
}

/// A self-signed certificate for `localhost`, and the PEM file (in `dir`) that trusts it.
fn app_certificate(dir: &std::path::Path) -> (rcgen::CertifiedKey, std::path::PathBuf) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let ca_file = dir.join("app.pem");
    std::fs::write(&ca_file, cert.cert.pem()).expect("write cert");
    (cert, ca_file)
}

/// An `https://` app: reached over TLS with its certificate checked against
/// `upstream.tls_ca_file`, bodies intact both ways, WebSockets tunnelled; without the
/// certificate trusted, a 502 that says why.
/// Through `proxy`, twice: 3 MB up to the app's echo (at `/upload?{tag}`) and down from it,
/// checked by SHA-256; then a WebSocket echo. The last upload's echo.
async fn round_trips_and_a_websocket(proxy: &Proxy, tag: &str) -> Echo {
    let http = client();
    let size = 3_000_000;
    let mut last = None;
    for _ in 0..2 {
        let target = format!("/upload?{tag}");
        let resp = http
            .post(proxy.url(&target))
            .body(reqwest::Body::wrap_stream(pattern_stream(size)))
            .send()
            .await
            .expect("upload");
        assert_eq!(resp.status(), 200);
        let echo = Echo::parse(&resp.text().await.expect("echo"));
        assert_eq!(echo.body_len, size);
        assert_eq!(echo.body_sha256, pattern_sha256(size));
        assert_eq!(echo.target, target);
        last = Some(echo);
        let resp = http
            .get(proxy.url(&format!("/bytes/{size}")))
            .send()
            .await
            .expect("download");
        assert_eq!(hash_body(resp).await, (size, pattern_sha256(size)));
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", proxy.addr))
        .await
        .expect("websocket");
    let text = format!("over {tag}");
    ws.send(Message::text(text.clone())).await.expect("send");
    assert_eq!(
        ws.next().await.expect("reply").expect("frame"),
        Message::text(text)
    );
    last.expect("two uploads")
}

#[tokio::test]
async fn an_https_app_is_reached_over_verified_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, ca_file) = app_certificate(dir.path());
    let app = App::start_tls(&cert.cert.pem(), &cert.key_pair.serialize_pem()).await;
    let https_url = format!("https://localhost:{}", app.addr.port());

    let mut config = config_for(app.addr);
    config.upstream.url = https_url.parse().expect("app URL");
    config.upstream.tls_ca_file = Some(ca_file);
    let proxy = Proxy::start(config).await;
    let http = client();
    round_trips_and_a_websocket(&proxy, "tls").await;
    let ready = http
        .get(proxy.admin_url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);

    // Not trusted: the system's roots do not include the app's self-signed certificate.
    let mut untrusted = config_for(app.addr);
    untrusted.upstream.url = https_url.parse().expect("app URL");
    let untrusted = Proxy::start(untrusted).await;
    let (status, text) = get_text(&untrusted.url("/x")).await;
    assert_eq!(status, 502);
    assert!(
        text.starts_with("upstream unreachable:") && text.contains("certificate"),
        "{text}"
    );
    assert!(
        !app.seen().iter().any(|s| s == "GET /x"),
        "{:?}",
        app.seen()
    );
    // /readyz checks the way requests go: TLS and all.
    let (status, text) = get_text(&untrusted.admin_url("/readyz")).await;
    assert_eq!(status, 503);
    assert!(
        text.starts_with("not ready: upstream:") && text.contains("certificate"),
        "{text}"
    );
}

/// An app on a Unix socket (`upstream.unix_socket`): bodies both ways byte for byte, the
/// URL's host as `Host` when the client's is not kept, WebSocket, readiness; once the socket
/// is gone, a 502 and a failed /readyz naming it.
#[tokio::test]
async fn an_app_on_a_unix_socket_is_reached() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("app.sock");
    let app = App::start_unix(&socket).await;
    let mut config = config_for(app.addr);
    config.upstream.url = "http://app.internal/".parse().expect("URL");
    config.upstream.unix_socket = Some(socket.clone());
    config.upstream.preserve_host = false;
    let proxy = Proxy::start(config).await;
    let echo = round_trips_and_a_websocket(&proxy, "unix").await;
    assert_eq!(echo.one("host"), Some("app.internal"));
    let (status, _) = get_text(&proxy.admin_url("/readyz")).await;
    assert_eq!(status, 200);

    drop(app);
    std::fs::remove_file(&socket).expect("socket gone");
    let (status, text) = get_text(&proxy.url("/after")).await;
    assert_eq!(status, 502);
    let named = format!("unix:{}", socket.display());
    assert!(
        text.starts_with("upstream unreachable:") && text.contains(&named),
        "{text}"
    );
    let (status, text) = get_text(&proxy.admin_url("/readyz")).await;
    assert_eq!(status, 503);
    assert!(text.contains(&named), "{text}");
}

/// An app that accepts the TCP connection but never answers the TLS handshake gets
/// `upstream.connect_timeout`, then a 504 saying so (as nginx's `proxy_connect_timeout`):
/// never a hang.
#[tokio::test]
async fn a_stalled_tls_handshake_is_bounded_by_the_connect_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, ca_file) = app_certificate(dir.path());
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let silent_addr = silent.local_addr().expect("address");
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            open.push(stream);
        }
    });

    let mut config = config_for(silent_addr);
    config.upstream.url = format!("https://localhost:{}", silent_addr.port())
        .parse()
        .expect("app URL");
    config.upstream.tls_ca_file = Some(ca_file);
    config.upstream.connect_timeout = Duration::from_millis(300);
    let proxy = Proxy::start(config).await;
    let started = std::time::Instant::now();
    connect_times_out_after_300ms(&proxy).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    held.abort();
}

/// A GET through `proxy`, whose app does not take the connection within 300 ms.
async fn connect_times_out_after_300ms(proxy: &Proxy) {
    let resp = client()
        .get(proxy.url("/x"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("an answer, not a hang");
    assert_eq!(resp.status(), 504);
    assert_eq!(
        resp.text().await.expect("body"),
        "upstream connect timed out after 300ms\n"
    );
}

/// An app whose listen backlog is full never completes the TCP handshake (the kernel drops
/// the SYNs): 504 after `upstream.connect_timeout`, as nginx answers, counted under the
/// cause `connect`.
#[tokio::test]
async fn an_app_that_never_takes_the_connection_is_504_after_the_connect_timeout() {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("address"))
        .expect("bind");
    let full = socket.listen(1).expect("listen");
    let full_addr = full.local_addr().expect("address");
    // Never accepted: these fill the backlog, and the SYNs after them go unanswered.
    let mut filling = Vec::new();
    for _ in 0..4 {
        let connecting = tokio::net::TcpStream::connect(full_addr);
        if let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_millis(200), connecting).await {
            filling.push(stream);
        }
    }
    let mut config = config_for(full_addr);
    config.upstream.connect_timeout = Duration::from_millis(300);
    let proxy = Proxy::start(config).await;
    connect_times_out_after_300ms(&proxy).await;
    let counted = "offload_upstream_errors_total{cause=\"connect\"} 1";
    let text = proxy.metrics_until(counted).await;
    assert!(text.contains(counted), "{text}");
    drop((full, filling));
}

/// A client that goes away mid-upload is the client's failure, not the app's: counted under
/// its own cause, never as an upstream error.
#[tokio::test]
async fn a_client_leaving_mid_body_is_not_an_upstream_error() {
    let (_app, proxy) = app_and_proxy(|_| {}).await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nsome")
        .await
        .expect("request");
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(stream);
    let counted = "offload_upstream_errors_total{cause=\"client_body\"} 1";
    let text = proxy.metrics_until(counted).await;
    assert!(text.contains(counted), "{text}");
    assert!(text.contains("cause=\"upstream\"} 0\n"), "{text}");
}

/// RFC 9112 §3.2: an HTTP/1.1 request without `Host`, with two, or with a malformed one gets
/// `400` from the proxy and never reaches the app (which might pick another Host than a
/// cache or a log did); HTTP/1.0 without Host and the absolute form are fine.
#[tokio::test]
async fn requests_with_a_missing_double_or_bad_host_get_400() {
    let (app, proxy) = app_and_proxy(|_| {}).await;
    for (request, problem) in [
        (
            "GET /h1 HTTP/1.1\r\n",
            "HTTP/1.1 request without a Host header",
        ),
        (
            "GET /h2 HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n",
            "more than one Host header",
        ),
        (
            "GET /h3 HTTP/1.1\r\nHost: evil.test/x\r\n",
            "invalid Host header",
        ),
        (
            "GET /h4 HTTP/1.1\r\nHost: user@evil.test\r\n",
            "invalid Host header",
        ),
        (
            "GET /h5 HTTP/1.1\r\nHost: site..test\r\n",
            "invalid Host header",
        ),
        ("GET /h6 HTTP/1.1\r\nHost: [::1\r\n", "invalid Host header"),
        ("GET /h7 HTTP/1.1\r\nHost: :80\r\n", "invalid Host header"),
        // The target's authority is the app's Host then, held to the same rules.
        (
            "GET http://../h8 HTTP/1.1\r\nHost: a.test\r\n",
            "invalid host in the request target",
        ),
        (
            "GET http://site..test/h9 HTTP/1.1\r\nHost: a.test\r\n",
            "invalid host in the request target",
        ),
        (
            "GET http://[x]y/h10 HTTP/1.1\r\nHost: a.test\r\n",
            "invalid host in the request target",
        ),
    ] {
        let request = format!("{request}Connection: close\r\n\r\n");
        let response = raw_exchange(proxy.addr, request.as_bytes(), Duration::from_secs(5)).await;
        assert!(
            response.starts_with("HTTP/1.1 400"),
            "{request:?}: {response}"
        );
        assert_eq!(raw_body(&response), format!("bad request: {problem}\n"));
    }
    for request in [
        "GET /ok1 HTTP/1.0\r\n\r\n",
        "GET http://site.test/ok2 HTTP/1.1\r\nConnection: close\r\n\r\n",
    ] {
        let response = raw_exchange(proxy.addr, request.as_bytes(), Duration::from_secs(5)).await;
        assert!(response.contains(" 200 OK"), "{request:?}: {response}");
    }
    assert_eq!(app.seen(), ["GET /ok1", "GET /ok2"]);
}

/// A HEAD that offload answers itself (a store key it lacks: 404; the app down: 502) gets
/// the head alone, with the length the GET's body would have, over HTTP/1.1 and HTTP/2:
/// a body sent on HTTP/2 after a HEAD is a protocol error to the client, which then loses
/// the answer (curl: "stream 1 was not closed cleanly: PROTOCOL_ERROR").
#[tokio::test]
async fn a_head_offload_answers_itself_has_no_body() {
    let data = tempfile::tempdir().expect("temp dir");
    let (app, proxy) = app_and_proxy(|c| c.store.root = data.path().to_path_buf()).await;
    drop(app);
    for (path, status) in [("/_offload/nope.bin", 404), ("/down", 502)] {
        for (http, version) in [(client(), "HTTP/1.1"), (h2_client(), "HTTP/2")] {
            let get = http.get(proxy.url(path)).send().await.expect("GET");
            assert_eq!(get.status(), status, "{version} GET {path}");
            let get_length = get.bytes().await.expect("GET body").len();
            assert!(get_length > 0);
            let resp = http.head(proxy.url(path)).send().await.expect("HEAD");
            assert_eq!(resp.status(), status, "{version} HEAD {path}");
            let length = resp.headers().get(http::header::CONTENT_LENGTH).cloned();
            assert_eq!(
                length.as_ref().and_then(|l| l.to_str().ok()),
                Some(get_length.to_string().as_str()),
                "{version} HEAD {path}"
            );
            let body = resp.bytes().await.expect("the whole (empty) answer");
            assert!(body.is_empty(), "{version} HEAD {path}: {body:?}");
        }
    }
}
