//! Message framing and protocol edges the proxy must not pass on as they came: an app's
//! response framed two ways, transfer codings besides chunked, a chunked GET body, CONNECT,
//! upgrades to anything but WebSocket, HTTP/2 requests that HTTP/1.1 apps cannot take as
//! they are, `server.http2 = false`, and tunnels left idle.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::support::app::Echo;
use crate::support::raw::{RawApp, read_head, read_until_ending};
use crate::support::{Proxy, app_and_proxy, config_for, h2_client, raw_body, raw_exchange};

/// An app answering each request with the raw `answer`.
async fn answering(answer: &'static [u8]) -> RawApp {
    RawApp::start(move |mut stream, _| async move {
        let _ = stream.write_all(answer).await;
        // Held open: the proxy decides whether the connection is used again.
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await;
    })
    .await
}

/// One request to `proxy` as raw bytes, with `Connection: close`: the whole raw answer.
async fn raw_request(proxy: &Proxy, head_and_body: &str) -> String {
    raw_exchange(proxy.addr, head_and_body.as_bytes(), Duration::from_secs(5)).await
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
}

#[tokio::test]
async fn an_app_answer_with_both_lengths_is_502_and_its_connection_is_not_used_again() {
    // Read by its Content-Length, the client would get "hel" and take it for the whole
    // answer; read chunked, the length would go on with the chunked body.
    let app = answering(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let proxy = Proxy::start(config_for(app.addr)).await;
    for round in 0..2 {
        let response = raw_request(&proxy, &get("/page")).await;
        assert!(
            response.starts_with("HTTP/1.1 502 "),
            "round {round}: {response}"
        );
        assert_eq!(
            raw_body(&response),
            "upstream failed: response has both Transfer-Encoding and Content-Length\n"
        );
    }
    assert_eq!(
        app.connections(),
        2,
        "a connection framed two ways is dropped"
    );
}

#[tokio::test]
async fn an_app_answer_with_a_transfer_coding_besides_chunked_is_502() {
    // hyper undoes one chunking only: passed on, the gzip would reach the client
    // unlabelled, and a second chunking as the body's bytes.
    for answer in [
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n\
          f\r\n5\r\nhello\r\n0\r\n\r\n\r\n0\r\n\r\n",
    ] {
        let app = answering(answer).await;
        let proxy = Proxy::start(config_for(app.addr)).await;
        let response = raw_request(&proxy, &get("/page")).await;
        assert!(response.starts_with("HTTP/1.1 502 "), "{response}");
        assert_eq!(
            raw_body(&response),
            "upstream failed: response has a transfer coding other than chunked, or chunked twice\n"
        );
    }
}

/// A length given twice, or with leading zeros (which a C parser may read as octal), goes
/// on once as a plain number, as nginx sends it.
#[tokio::test]
async fn a_length_the_app_gives_twice_over_goes_on_once() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nContent-Length: 005\r\n\r\nhello",
    ] {
        let answer: &'static [u8] = answer;
        let app = answering(answer).await;
        let proxy = Proxy::start(config_for(app.addr)).await;
        let response = raw_request(&proxy, &get("/page")).await;
        assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
        let lengths: Vec<_> = response
            .lines()
            .filter(|l| l.to_ascii_lowercase().starts_with("content-length:"))
            .collect();
        assert_eq!(lengths, ["content-length: 5"], "{response}");
        assert_eq!(raw_body(&response), "hello");
    }
}

#[tokio::test]
async fn a_request_with_a_transfer_coding_besides_chunked_is_501_and_reaches_no_app() {
    let app = answering(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let proxy = Proxy::start(config_for(app.addr)).await;
    for codings in ["gzip, chunked", "x-custom, chunked", "chunked, chunked"] {
        let request = format!(
            "POST /form HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\
             Transfer-Encoding: {codings}\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        );
        let response = raw_request(&proxy, &request).await;
        assert!(
            response.starts_with("HTTP/1.1 501 "),
            "{codings}: {response}"
        );
        assert_eq!(
            raw_body(&response),
            "not implemented: a transfer coding other than chunked, or chunked twice\n"
        );
    }
    assert_eq!(app.connections(), 0);
}

#[tokio::test]
async fn a_chunked_get_body_reaches_the_app() {
    let (_app, proxy) = app_and_proxy(|_| {}).await;
    for method in ["GET", "HEAD"] {
        let request = format!(
            "{method} /search HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\
             Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        );
        let response = raw_request(&proxy, &request).await;
        assert!(
            response.starts_with("HTTP/1.1 200 "),
            "{method}: {response}"
        );
        if method == "GET" {
            let echo = Echo::parse(raw_body(&response));
            assert_eq!(echo.body_len, 11);
            assert_eq!(echo.body_head, "hello world");
        }
    }
    // Over HTTP/2 a body comes without a length unless the client gives one.
    let h2 = h2_client();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter([
        Ok::<_, std::io::Error>(Bytes::from_static(b"hello")),
        Ok(Bytes::from_static(b" h2")),
    ]));
    let resp = h2
        .get(proxy.url("/search"))
        .body(body)
        .send()
        .await
        .expect("h2 GET");
    let echo = Echo::parse(&resp.text().await.expect("body"));
    assert_eq!((echo.body_len, echo.body_head.as_str()), (8, "hello h2"));
}

#[tokio::test]
async fn a_malformed_chunked_body_is_400_in_plain_words() {
    let (_app, proxy) = app_and_proxy(|_| {}).await;
    let request = "POST /form HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\
                   Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZ\r\nworld\r\n0\r\n\r\n";
    let response = raw_request(&proxy, request).await;
    assert!(response.starts_with("HTTP/1.1 400 "), "{response}");
    let body = raw_body(&response);
    assert!(body.starts_with("request body failed: "), "{body}");
    assert!(body.contains("chunk size"), "names what was wrong: {body}");
    assert!(
        !body.contains("user's Body stream"),
        "hyper's inner words: {body}"
    );
}

#[tokio::test]
async fn connect_is_501_and_reaches_no_app() {
    let app = answering(b"HTTP/1.1 200 Connection established\r\n\r\n").await;
    let proxy = Proxy::start(config_for(app.addr)).await;
    let response = raw_request(
        &proxy,
        "CONNECT 10.0.0.1:22 HTTP/1.1\r\nHost: 10.0.0.1:22\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 501 "), "{response}");
    assert_eq!(
        raw_body(&response),
        "not implemented: CONNECT (offload is a reverse proxy)\n"
    );
    // Over HTTP/2 too (without :protocol: no extended CONNECT).
    let connect = Request::connect("10.0.0.1:22")
        .body(Empty::new())
        .expect("request");
    let (status, body) = h2_send(&proxy, connect).await;
    assert_eq!(status, StatusCode::NOT_IMPLEMENTED, "{body}");
    assert_eq!(app.connections(), 0);
}

/// An app that switches to whatever protocol a request asks for (as an h2c-capable server
/// does), naming `protocol` in its `101`; the heads it read are kept.
async fn switching_app(protocol: &'static str) -> (RawApp, Arc<Mutex<Vec<String>>>) {
    let heads = Arc::new(Mutex::new(Vec::new()));
    let app = RawApp::start({
        let heads = Arc::clone(&heads);
        move |mut stream, head| {
            let heads = Arc::clone(&heads);
            async move {
                heads.lock().expect("heads").push(head);
                let answer = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\
                     Upgrade: {protocol}\r\n\r\n"
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                // Whatever comes through the tunnel is a smuggled request: keep it.
                if let Some(smuggled) = read_head(&mut stream).await {
                    heads.lock().expect("heads").push(smuggled);
                }
            }
        }
    })
    .await;
    (app, heads)
}

#[tokio::test]
async fn an_upgrade_to_anything_but_websocket_is_not_tunnelled() {
    let (app, heads) = switching_app("h2c").await;
    let proxy = Proxy::start(config_for(app.addr)).await;
    // The h2c smuggling pattern: once switched, the client's next bytes would pass the
    // proxy unseen (no forwarding headers, upload checks or logs).
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(
            b"GET / HTTP/1.1\r\nHost: example.com\r\nConnection: Upgrade, HTTP2-Settings\r\n\
              Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n\
              GET /admin HTTP/1.1\r\nHost: example.com\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n",
        )
        .await
        .expect("send");
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("an answer in time")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 502 "), "{answer}");
    assert!(
        answer.contains("switched protocols without an upgrade request"),
        "{answer}"
    );
    let heads = heads.lock().expect("heads").clone();
    assert!(
        !heads[0].to_ascii_lowercase().contains("upgrade: h2c"),
        "{heads:?}"
    );
    assert!(
        heads.iter().all(|h| !h.contains("10.0.0.1")),
        "a request passed the proxy inside a tunnel: {heads:?}"
    );
}

#[tokio::test]
async fn only_websocket_is_offered_to_the_app_and_only_websocket_accepted_from_it() {
    // A client offering h2c beside websocket: the app is offered websocket alone.
    let (app, heads) = switching_app("h2c").await;
    let proxy = Proxy::start(config_for(app.addr)).await;
    let request = "GET /ws HTTP/1.1\r\nHost: example.com\r\nConnection: Upgrade\r\n\
                   Upgrade: h2c, websocket\r\nSec-WebSocket-Version: 13\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let response = raw_exchange(proxy.addr, request.as_bytes(), Duration::from_secs(1)).await;
    let head = heads.lock().expect("heads")[0].to_ascii_lowercase();
    assert!(head.contains("\r\nupgrade: websocket\r\n"), "{head}");
    assert!(!head.contains("h2c"), "{head}");
    // And an app that switches to another protocol than the one asked for is refused.
    assert!(response.starts_with("HTTP/1.1 502 "), "{response}");
    assert_eq!(
        raw_body(&response),
        "upstream failed: switched to a protocol other than the websocket asked for\n"
    );
}

#[tokio::test]
async fn cookies_an_http2_client_splits_reach_the_app_as_one_header() {
    let (_app, proxy) = app_and_proxy(|_| {}).await;
    let h2 = h2_client();
    let resp = h2
        .get(proxy.url("/cookies"))
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .header("cookie", "c=3")
        .send()
        .await
        .expect("h2 request");
    let echo = Echo::parse(&resp.text().await.expect("body"));
    assert_eq!(echo.all("cookie"), ["a=1; b=2; c=3"]);
    // As one header they count as one against server.max_headers (100), as over HTTP/1.1.
    let mut many = h2.get(proxy.url("/cookies"));
    for i in 0..150 {
        many = many.header("cookie", format!("c{i}={i}"));
    }
    let resp = many.send().await.expect("h2 request");
    assert_eq!(resp.status(), StatusCode::OK);
    let echo = Echo::parse(&resp.text().await.expect("body"));
    let expected: Vec<String> = (0..150).map(|i| format!("c{i}={i}")).collect();
    assert_eq!(echo.all("cookie"), [expected.join("; ")]);
}

/// Sends `req` over a new HTTP/2 (prior knowledge) connection to `proxy`: the status and
/// body.
async fn h2_send(proxy: &Proxy, req: Request<Empty<Bytes>>) -> (StatusCode, String) {
    let stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.expect("h2 answer");
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn http2_requests_an_http1_parser_would_refuse_are_refused() {
    let (app, proxy) = app_and_proxy(|_| {}).await;
    let base = format!("http://{}", proxy.addr);
    // More headers than server.max_headers (100 by default), as HTTP/1.1 gets 431 for.
    let mut many = Request::get(format!("{base}/many"));
    for i in 0..120 {
        many = many.header(format!("x-h{i}"), "1");
    }
    let (status, body) = h2_send(&proxy, many.body(Empty::new()).expect("request")).await;
    assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(body, "more headers than server.max_headers\n");
    // Userinfo in :authority (RFC 9113 §8.3.1).
    let userinfo = Request::get(format!("http://user:pw@{}/x", proxy.addr))
        .body(Empty::new())
        .expect("request");
    let (status, body) = h2_send(&proxy, userinfo).await;
    assert_eq!(
        (status, body.as_str()),
        (
            StatusCode::BAD_REQUEST,
            "bad request: userinfo in :authority\n"
        )
    );
    // An :authority an HTTP/1.1 Host could not be (an empty label), as nginx refuses it.
    let empty_label = Request::get("http://site..test/x")
        .body(Empty::new())
        .expect("request");
    let (status, body) = h2_send(&proxy, empty_label).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::BAD_REQUEST, "bad request: invalid :authority\n")
    );
    // A value with whitespace at either end (RFC 9113 §8.2.1).
    let padded = Request::get(format!("{base}/x"))
        .header("x-padded", " value ")
        .body(Empty::new())
        .expect("request");
    let (status, body) = h2_send(&proxy, padded).await;
    assert_eq!(
        (status, body.as_str()),
        (
            StatusCode::BAD_REQUEST,
            "a header value with whitespace at either end\n"
        )
    );
    // A Host that differs from :authority (RFC 9113 §8.3.1); the same one is fine.
    let other_host = Request::get(format!("{base}/x"))
        .header("host", "other.example")
        .body(Empty::new())
        .expect("request");
    let (status, body) = h2_send(&proxy, other_host).await;
    assert_eq!(
        (status, body.as_str()),
        (
            StatusCode::BAD_REQUEST,
            "a Host that differs from :authority\n"
        )
    );
    assert!(app.seen().is_empty(), "reached the app: {:?}", app.seen());
    let same_host = Request::get(format!("{base}/same"))
        .header("host", proxy.addr.to_string())
        .body(Empty::new())
        .expect("request");
    assert_eq!(h2_send(&proxy, same_host).await.0, StatusCode::OK);
    // Within the limits, the same requests pass.
    let mut fine = Request::get(format!("{base}/fine"));
    for i in 0..90 {
        fine = fine.header(format!("x-h{i}"), "1");
    }
    let (status, _) = h2_send(&proxy, fine.body(Empty::new()).expect("request")).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn with_http2_off_an_h2c_client_is_not_served_http2() {
    let (_app, proxy) = app_and_proxy(|c| c.server.http2 = false).await;
    let h2 = h2_client();
    let refused = h2.get(proxy.url("/x")).send().await;
    assert!(refused.is_err(), "served HTTP/2: {refused:?}");
    let response = raw_request(&proxy, &get("/x")).await;
    assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
}

#[tokio::test]
async fn a_websocket_tunnel_idle_past_its_timeout_is_closed_and_a_busy_one_is_not() {
    // server.idle_timeout (keep-alive) is not the tunnels'.
    let (_app, proxy) = app_and_proxy(|c| {
        c.upstream.websocket_idle_timeout = Duration::from_secs(1);
        c.server.idle_timeout = Duration::from_secs(60);
    })
    .await;
    let url = format!("ws://{}/ws", proxy.addr);
    let (mut busy, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("websocket handshake");
    let (mut idle, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("websocket handshake");
    // Three idle timeouts long, the busy tunnel carries a message every 400 ms.
    for i in 0..8 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let text = format!("ping {i}");
        busy.send(Message::text(text.clone())).await.expect("send");
        assert_eq!(
            busy.next().await.expect("reply").expect("frame"),
            Message::text(text)
        );
    }
    // The idle one was closed under it: the end of the stream, or an error.
    let ended = tokio::time::timeout(Duration::from_secs(1), idle.next())
        .await
        .expect("the idle tunnel ended");
    assert!(
        !matches!(ended, Some(Ok(Message::Text(_) | Message::Binary(_)))),
        "{ended:?}"
    );
}

/// An open WebSocket tunnel is an open connection: it holds its place under
/// `server.max_connections` (a file descriptor each side, as nginx's `worker_connections`
/// counts upgraded connections), shows in `offload_open_connections`, and a graceful
/// shutdown waits for it to close. Before, the tunnel ran outside its connection: any
/// number of them escaped the limit, and a shutdown cut them at once.
#[tokio::test]
async fn a_websocket_tunnel_is_an_open_connection_until_it_closes() {
    let (_app, mut proxy) = app_and_proxy(|c| {
        c.server.max_connections = 1;
        c.server.worker_threads = 1;
        c.server.shutdown_grace = Duration::from_secs(10);
    })
    .await;
    let url = format!("ws://{}/ws", proxy.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("websocket handshake");
    let text = proxy
        .metrics_until("offload_open_connections{worker=\"0\"} 1")
        .await;
    assert!(
        text.contains("offload_open_connections{worker=\"0\"} 1"),
        "{text}"
    );
    // The one place is the tunnel's: a plain request waits in the listen backlog.
    let addr = proxy.addr;
    let waiting = tokio::spawn(async move {
        raw_exchange(addr, get("/after").as_bytes(), Duration::from_secs(10)).await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "served past max_connections");

    // A shutdown lets the tunnel carry on until it closes.
    proxy.shutdown();
    tokio::time::sleep(Duration::from_millis(300)).await;
    ws.send(Message::text("still here")).await.expect("send");
    let echoed = tokio::time::timeout(Duration::from_secs(2), ws.next()).await;
    assert!(
        matches!(&echoed, Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "still here"),
        "{echoed:?}"
    );
    assert!(!proxy.handle.is_finished(), "stopped with a tunnel open");
    ws.close(None).await.expect("close");
    drop(ws);
    let stopped = tokio::time::timeout(Duration::from_secs(5), &mut proxy.handle).await;
    assert!(matches!(stopped, Ok(Ok(Ok(())))), "{stopped:?}");
    // The waiting client was never served: the listener closed under it.
    let answer = waiting.await.expect("task");
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// Methods and request targets nginx answers with 400 get it here too, and never reach the
/// app: a lower-case method (an app that upper-cases it would take `post` for a POST past
/// the upload routes), the authority form without CONNECT, the asterisk form without
/// OPTIONS, and an absolute form with userinfo or another scheme, whose authority would
/// become the app's Host.
#[tokio::test]
async fn request_lines_nginx_refuses_are_refused() {
    let (app, proxy) = app_and_proxy(|_| {}).await;
    for line in [
        "post /upload HTTP/1.1",
        "connect evil.example:443 HTTP/1.1",
        "GET evil.example:80 HTTP/1.1",
        "GET * HTTP/1.1",
        "GET http://good.example@evil.example:8443/x HTTP/1.1",
        "GET ftp://evil.example/x HTTP/1.1",
    ] {
        let request = format!("{line}\r\nHost: good.example\r\nConnection: close\r\n\r\n");
        let answer = raw_request(&proxy, &request).await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{line}: {answer}");
    }
    assert_eq!(app.seen(), Vec::<String>::new());
    let absolute =
        "GET http://good.example/x HTTP/1.1\r\nHost: good.example\r\nConnection: close\r\n\r\n";
    let answer = raw_request(&proxy, absolute).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert_eq!(app.seen(), ["GET /x"]);
}

/// A chunked request body that ends in trailers is read to its end: the connection carries
/// the next request (the trailers themselves go no further, as with nginx).
#[tokio::test]
async fn a_request_body_ending_in_trailers_keeps_the_connection() {
    let (app, proxy) = app_and_proxy(|_| {}).await;
    let requests = "POST /with-trailers HTTP/1.1\r\nHost: example.com\r\n\
                    Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n\
                    GET /after HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n";
    let response = raw_request(&proxy, requests).await;
    assert_eq!(
        response.matches("HTTP/1.1 200 OK\r\n").count(),
        2,
        "{response}"
    );
    assert!(response.contains("\"body_head\":\"hello\""), "{response}");
    let seen = app.seen();
    assert!(seen.iter().any(|r| r == "GET /after"), "{seen:?}");
}

/// An answer that ends in trailers is read to its end: its app connection goes back to
/// the pool. Over HTTP/1.1 the trailers reach a client that asks for them (`TE: trailers`),
/// and hyper polls no further after them.
#[tokio::test]
async fn an_answer_ending_in_trailers_keeps_its_app_connection() {
    let app = RawApp::with_trailers().await;
    let proxy = Proxy::start(config_for(app.addr)).await;
    let request = "GET /t HTTP/1.1\r\nHost: example.com\r\nTE: trailers\r\n\r\n";
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    for _ in 0..3 {
        stream.write_all(request.as_bytes()).await.expect("request");
        let answer = read_until_ending(&mut stream, b"x-checksum: 5d41402a\r\n\r\n").await;
        let text = String::from_utf8_lossy(&answer);
        assert!(text.contains("\r\n\r\n5\r\nhello\r\n0\r\n"), "{text}");
    }
    assert_eq!(app.connections(), 1, "one app connection, used again");
}

/// An HTTP/1.0 client asking to keep its connection gets an answer of unknown length (the
/// app's was chunked) close-delimited, with a head that says `Connection: close`, as nginx
/// sends it; an answer of known length keeps the connection, and says so. Nor does an
/// answer after which the connection closes for another reason (a body refused) say both.
#[tokio::test]
async fn an_http10_answer_that_ends_with_the_connection_says_close() {
    let (_app, proxy) = app_and_proxy(|c| {
        c.server.max_body_size = Some(bytesize::ByteSize(1024));
    })
    .await;
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let ask =
        |path: &str| format!("GET {path} HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n");
    stream
        .write_all(ask("/bytes/5").as_bytes())
        .await
        .expect("request");
    let five = crate::support::pattern_block().slice(..5);
    let answer = read_until_ending(&mut stream, &five).await;
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.0 200 ok\r\n"), "{answer}");
    assert!(
        answer.contains("\r\nconnection: keep-alive\r\n"),
        "{answer}"
    );
    assert!(answer.contains("\r\ncontent-length: 5\r\n"), "{answer}");

    stream
        .write_all(ask("/bytes/5?chunked").as_bytes())
        .await
        .expect("request");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer));
    read.await.expect("closed after the answer").expect("read");
    assert!(answer.ends_with(&five), "the body whole, then the close");
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.0 200 ok\r\n"), "{answer}");
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
    assert!(!answer.contains("keep-alive"), "{answer}");
    assert!(!answer.contains("transfer-encoding"), "{answer}");

    let too_large = "POST /x HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\
                     Content-Length: 5000\r\n\r\n";
    let answer = raw_exchange(proxy.addr, too_large.as_bytes(), Duration::from_secs(5)).await;
    let answer = answer.to_ascii_lowercase();
    assert!(answer.starts_with("http/1.0 413 "), "{answer}");
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
    assert!(!answer.contains("keep-alive"), "{answer}");
}

/// A request's length with leading zeros (`010`, which a C parser may read as octal: 8)
/// reaches the app as a plain number, as nginx sends it.
#[tokio::test]
async fn a_request_length_with_leading_zeros_reaches_the_app_as_a_plain_number() {
    let (_app, proxy) = app_and_proxy(|_| {}).await;
    let request = "POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
                   Content-Length: 010\r\n\r\n0123456789";
    let response = raw_request(&proxy, request).await;
    assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
    let echo = Echo::parse(raw_body(&response));
    assert_eq!(echo.one("content-length"), Some("10"));
    assert_eq!(echo.body_len, 10);
}
