//! The log output of the real binary: one access line per request with its figures, and
//! lines a file or a collector can take as they are.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::support::app::{App, Echo};
use crate::support::process::OffloadProcess;
use crate::support::{client, raw_exchange};

/// The JSON access log lines written so far.
fn access_lines(process: &OffloadProcess) -> Vec<Value> {
    process
        .logs()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|json| json["target"] == "offload::access")
        .collect()
}

/// Waits (up to 10 s) until the logs hold `count` access lines.
async fn wait_for_access_lines(process: &OffloadProcess, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = access_lines(process);
        if lines.len() >= count || Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// GETs `path` from `process`, expecting a 200.
async fn get_ok(process: &OffloadProcess, path: &str) {
    let got = client()
        .get(format!("http://{}{path}", process.addr))
        .send()
        .await
        .expect("GET");
    assert_eq!(got.status(), 200, "{path}");
}

#[tokio::test]
async fn each_request_is_logged_once_with_its_figures() {
    let app = App::start().await;
    // One worker: each writes out its own buffered lines, so with two the order could differ.
    let one_worker = [("OFFLOAD_SERVER_WORKER_THREADS", "1")];
    let process = OffloadProcess::start(app.addr, &[], &one_worker).await;
    let http = client();
    let base = format!("http://{}", process.addr);

    let got = http
        .get(format!("{base}/bytes/1000?token=QUERY"))
        .send()
        .await
        .expect("GET");
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.expect("GET body").len(), 1000);
    let posted = http
        .post(format!("{base}/form"))
        .body(vec![b'x'; 5000])
        .send()
        .await
        .expect("POST");
    assert_eq!(posted.status(), 200);
    let answer_len = posted.bytes().await.expect("POST body").len();

    let lines = wait_for_access_lines(&process, 2).await;
    assert_eq!(lines.len(), 2, "one line per request: {}", process.logs());
    let (get, post) = (&lines[0], &lines[1]);
    for (line, method, path, bytes_in, bytes_out) in [
        (get, "GET", "/bytes/1000", 0, 1000),
        (post, "POST", "/form", 5000, answer_len),
    ] {
        assert_eq!(line["level"], "INFO", "{line}");
        assert_eq!(line["method"], method, "{line}");
        // Queries can carry secrets: only the path is logged by default.
        assert_eq!(line["path"], path, "{line}");
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["kind"], "passthrough", "{line}");
        assert_eq!(line["bytes_in"], bytes_in, "{line}");
        assert_eq!(line["bytes_out"], bytes_out, "{line}");
        assert_eq!(line["complete"], true, "{line}");
        let peer = line["peer"].as_str().expect("peer");
        assert!(peer.starts_with("127.0.0.1:"), "{line}");
        let duration = line["duration_ms"].as_f64().expect("duration_ms");
        let upstream = line["upstream_ms"].as_f64().expect("upstream_ms");
        assert!(
            0.0 < upstream && upstream <= duration && duration < 10_000.0,
            "{line}"
        );
    }
}

/// An object served from the store over HTTP/1.1, all of it sent, is logged complete, as an
/// app's answer is: hyper stops reading a body at its Content-Length, before a stream from
/// the store has said it ended.
#[tokio::test]
async fn an_answer_from_the_store_sent_whole_is_logged_complete() {
    let app = App::start().await;
    let data = tempfile::tempdir().expect("temp dir");
    // The fs store's layout: the object's bytes under objects/ (its sidecar is optional).
    std::fs::create_dir_all(data.path().join("objects")).expect("objects/");
    std::fs::write(data.path().join("objects/cat.bin"), vec![7u8; 300_000]).expect("object");
    let config = format!("[store]\nroot = {:?}\n", data.path().display().to_string());
    let process = OffloadProcess::start_with_config(app.addr, Some(&config), &[], &[]).await;
    let got = client()
        .get(format!("http://{}/_offload/cat.bin", process.addr))
        .send()
        .await
        .expect("GET");
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.expect("body").len(), 300_000);
    let lines = wait_for_access_lines(&process, 1).await;
    let line = lines.first().expect("an access line");
    assert_eq!(line["kind"], "store", "{line}");
    assert_eq!(line["bytes_out"], 300_000, "{line}");
    assert_eq!(line["complete"], true, "{line}");
}

/// An answer that ends in trailers is whole: hyper polls no further after them.
#[tokio::test]
async fn an_answer_ending_in_trailers_is_logged_complete() {
    let app = crate::support::raw::RawApp::with_trailers().await;
    let process = OffloadProcess::start(app.addr, &[], &[]).await;
    let mut stream = TcpStream::connect(process.addr).await.expect("connect");
    let request = "GET /t HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nConnection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).await.expect("request");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("answer");
    assert!(
        answer.ends_with(b"x-checksum: 5d41402a\r\n\r\n"),
        "{answer:?}"
    );
    let lines = wait_for_access_lines(&process, 1).await;
    let line = lines.first().expect("an access line");
    assert_eq!(line["bytes_out"], 5, "{line}");
    assert_eq!(line["complete"], true, "{line}");
}

/// An answer cut for standing still names the side that stopped it: the app, which is
/// warned of (nginx's "upstream timed out"), or the client, which is not.
#[tokio::test]
async fn an_answer_cut_for_standing_still_names_the_side_that_stalled() {
    let app = crate::support::raw::RawApp::start(|mut stream, head| async move {
        if head.starts_with("GET /half ") {
            let head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhalf";
            let _ = stream.write_all(head).await;
            // Then nothing more, until the proxy closes.
            let _ = stream.read(&mut [0; 1]).await;
            return;
        }
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 67108864\r\n\r\n";
        let chunk = vec![b'x'; 1 << 20];
        if stream.write_all(head).await.is_ok() {
            for _ in 0..64 {
                if stream.write_all(&chunk).await.is_err() {
                    break;
                }
            }
        }
    })
    .await;
    let env = [
        ("OFFLOAD_SERVER_IDLE_TIMEOUT", "300ms"),
        ("OFFLOAD_SERVER_WORKER_THREADS", "1"),
    ];
    let process = OffloadProcess::start(app.addr, &[], &env).await;
    let mut half = TcpStream::connect(process.addr).await.expect("connect");
    let request = "GET /half HTTP/1.1\r\nHost: x\r\n\r\n";
    half.write_all(request.as_bytes()).await.expect("request");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), half.read_to_end(&mut answer));
    read.await.expect("closed").expect("read");
    assert!(answer.ends_with(b"\r\n\r\nhalf"), "{answer:?}");

    let mut unread = TcpStream::connect(process.addr).await.expect("connect");
    let request = "GET /large HTTP/1.1\r\nHost: x\r\n\r\n";
    unread.write_all(request.as_bytes()).await.expect("request");
    // Not read: the answer stands still once the sockets' buffers are full.
    let lines = wait_for_access_lines(&process, 2).await;
    assert_eq!(lines.len(), 2, "{}", process.logs());
    let reasons: Vec<_> = lines
        .iter()
        .map(|line| {
            assert_eq!(
                (&line["status"], &line["complete"]),
                (&200.into(), &false.into()),
                "{line}"
            );
            (line["path"].as_str(), line["reason"].as_str())
        })
        .collect();
    assert_eq!(
        reasons,
        [
            (Some("/half"), Some("the app stopped sending the answer")),
            (
                Some("/large"),
                Some("the client stopped reading the answer")
            ),
        ]
    );
    let warnings: Vec<_> = process
        .logs()
        .lines()
        .filter(|line| line.contains("\"WARN\"") && line.contains("stood still"))
        .map(str::to_owned)
        .collect();
    assert_eq!(warnings.len(), 1, "the app's stall alone: {warnings:?}");
    assert!(
        warnings[0].contains("the app's answer stood still"),
        "{warnings:?}"
    );
    drop(unread);
}

/// With `log.query` on, queries are logged, but for the values of credentials.
#[tokio::test]
async fn logged_queries_keep_credentials_out() {
    let app = App::start().await;
    let process = OffloadProcess::start(app.addr, &[], &[("OFFLOAD_LOG_QUERY", "true")]).await;
    get_ok(&process, "/bytes/10?action=rp&key=S3CRET&login=admin").await;
    let lines = wait_for_access_lines(&process, 1).await;
    let line = lines
        .first()
        .unwrap_or_else(|| panic!("no line: {}", process.logs()));
    assert_eq!(
        line["path"], "/bytes/10?action=rp&key=***&login=admin",
        "{line}"
    );
    assert!(!process.logs().contains("S3CRET"));
}

/// With `log.query` off (the default) the path alone is logged, its own credential
/// parameters masked too: a servlet container's session (`;jsessionid=`) is in the path.
#[tokio::test]
async fn a_session_in_the_path_is_masked() {
    let app = App::start().await;
    let process = OffloadProcess::start(app.addr, &[], &[]).await;
    get_ok(&process, "/shop;jsessionid=S3SS10N/cart?token=QUERY").await;
    let lines = wait_for_access_lines(&process, 1).await;
    let line = lines
        .first()
        .unwrap_or_else(|| panic!("no line: {}", process.logs()));
    assert_eq!(line["path"], "/shop;jsessionid=***/cart", "{line}");
    assert!(!process.logs().contains("S3SS10N"));
    assert!(!process.logs().contains("QUERY"));
}

/// A request whose client leaves before the answer (here while the app takes its time) is
/// logged as nginx logs it, 499, rather than not at all.
#[tokio::test]
async fn a_request_the_client_left_before_its_answer_is_logged_as_499() {
    let app = App::start().await;
    let process = OffloadProcess::start(app.addr, &[], &[]).await;
    let mut stream = TcpStream::connect(process.addr).await.expect("connect");
    stream
        .write_all(b"GET /sleep/3000?token=QUERY HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("request");
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(stream);

    let lines = wait_for_access_lines(&process, 1).await;
    let line = lines
        .first()
        .unwrap_or_else(|| panic!("no line: {}", process.logs()));
    assert_eq!(line["status"], 499, "{line}");
    assert_eq!(line["path"], "/sleep/3000", "{line}");
    assert_eq!(line["kind"], "passthrough", "{line}");
    assert_eq!(line["complete"], false, "{line}");
    assert_eq!(line["bytes_out"], 0, "{line}");
    let duration = line["duration_ms"].as_f64().expect("duration_ms");
    assert!((250.0..2900.0).contains(&duration), "{line}");
}

/// A WebSocket's request is logged when its tunnel closes, as nginx logs it: status 101,
/// the bytes that crossed the tunnel each way and the time it was open. Before, the line
/// came at the switch, with no bytes, and the tunnel's traffic was in no count.
#[tokio::test]
async fn a_websocket_is_logged_when_its_tunnel_closes() {
    let app = App::start().await;
    let process = OffloadProcess::start(app.addr, &[], &[]).await;
    let url = format!("ws://{}/ws", process.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("websocket handshake");
    let message = Message::binary(vec![7u8; 10_000]);
    ws.send(message.clone()).await.expect("send");
    let echoed = ws.next().await.expect("echo").expect("frame");
    assert_eq!(echoed, message);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(access_lines(&process).is_empty(), "{}", process.logs());
    ws.close(None).await.expect("close");
    drop(ws);

    let lines = wait_for_access_lines(&process, 1).await;
    let line = lines
        .first()
        .unwrap_or_else(|| panic!("no line: {}", process.logs()));
    assert_eq!(line["status"], 101, "{line}");
    assert_eq!(line["path"], "/ws", "{line}");
    assert_eq!(line["complete"], true, "{line}");
    // The message in a frame (a 14-byte head masked from the client, 4 from the app), and
    // the two close frames.
    let bytes = |name: &str| line[name].as_u64().unwrap_or_else(|| panic!("{line}"));
    assert!((10_014..10_040).contains(&bytes("bytes_in")), "{line}");
    assert!((10_004..10_030).contains(&bytes("bytes_out")), "{line}");
    let duration = line["duration_ms"].as_f64().expect("duration_ms");
    assert!(duration >= 300.0, "{line}");
}

/// An IPv4 client of a dual-stack socket (here one bound to `::ffff:127.0.0.1`, as systemd's
/// `[::]:PORT` is for all of them) is logged and forwarded with its IPv4 address.
#[tokio::test]
async fn an_ipv4_client_of_an_ipv6_socket_is_logged_as_ipv4() {
    let app = App::start().await;
    let process = OffloadProcess::start(app.addr, &["--listen", "[::ffff:127.0.0.1]:0"], &[]).await;
    assert!(process.addr.is_ipv6(), "{}", process.addr);
    let url = format!("http://127.0.0.1:{}/p", process.addr.port());
    let echo = Echo::parse(
        &client()
            .get(url)
            .send()
            .await
            .expect("GET")
            .text()
            .await
            .expect("body"),
    );
    assert_eq!(echo.one("x-forwarded-for"), Some("127.0.0.1"));
    let lines = wait_for_access_lines(&process, 1).await;
    let peer = lines[0]["peer"].as_str().expect("peer");
    assert!(peer.starts_with("127.0.0.1:"), "{}", lines[0]);
}

/// Heads hyper refuses and answers itself (malformed, too many headers, a URI over 64 KiB)
/// are logged as requests of kind `refused`, with the status the client got and the reason;
/// a client that hangs up in the middle of its head was answered nothing and is not logged.
#[tokio::test]
async fn refused_heads_are_logged_with_the_status_sent() {
    let app = App::start().await;
    let config = "[server]\nmax_headers = 10\nmax_header_size = \"128KiB\"\n";
    let process = OffloadProcess::start_with_config(app.addr, Some(config), &[], &[]).await;
    let many: String = (0..20).map(|i| format!("X-H{i}: v\r\n")).collect();
    let long_uri = format!("/{}", "u".repeat(70_000));
    let refusals = [
        (
            "GET / HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n".to_string(),
            400,
        ),
        (format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n"), 431),
        (format!("GET {long_uri} HTTP/1.1\r\nHost: x\r\n\r\n"), 414),
    ];
    for (request, status) in &refusals {
        let response = raw_exchange(process.addr, request.as_bytes(), Duration::from_secs(5)).await;
        assert!(
            response.starts_with(&format!("HTTP/1.1 {status} ")),
            "{status}: {response}"
        );
    }
    // Half a head, then the client hangs up.
    let mut stream = TcpStream::connect(process.addr).await.expect("connect");
    stream
        .write_all(b"GET /half HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("half a head");
    stream.shutdown().await.expect("hang up");
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest).await;
    assert!(
        rest.is_empty(),
        "answered {:?}",
        String::from_utf8_lossy(&rest)
    );
    get_ok(&process, "/bytes/10").await;

    let lines = wait_for_access_lines(&process, 4).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let lines_now = access_lines(&process);
    assert_eq!(lines_now.len(), 4, "{}", process.logs());
    assert_eq!(lines, lines_now);
    let mut refused: Vec<(u64, String)> = lines
        .iter()
        .filter(|line| line["kind"] == "refused")
        .map(|line| {
            assert_eq!(line["method"], "-", "{line}");
            assert_eq!(line["path"], "", "{line}");
            let peer = line["peer"].as_str().expect("peer");
            assert!(peer.starts_with("127.0.0.1:"), "{line}");
            let status = line["status"].as_u64().expect("status");
            (status, line["reason"].as_str().expect("reason").to_string())
        })
        .collect();
    refused.sort();
    assert_eq!(
        refused,
        [
            (400, "invalid HTTP header parsed".to_string()),
            (414, "URI too long".to_string()),
            (431, "message head is too large".to_string()),
        ]
    );
    assert!(
        lines
            .iter()
            .any(|line| line["kind"] == "passthrough" && line["path"] == "/bytes/10"),
        "{}",
        process.logs()
    );
}

/// Requests offload itself refuses before any way (a bad Host, a target no proxy passes on)
/// are logged with their method and path, kind `refused`, and the reason, as refused heads.
#[tokio::test]
async fn requests_refused_before_any_way_are_logged_with_the_reason() {
    let app = App::start().await;
    let process = OffloadProcess::start_with_config(app.addr, None, &[], &[]).await;
    for request in [
        "GET /no-host HTTP/1.1\r\nConnection: close\r\n\r\n",
        "get /lower HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ] {
        let response = raw_exchange(process.addr, request.as_bytes(), Duration::from_secs(5)).await;
        assert!(response.starts_with("HTTP/1.1 400 "), "{response}");
    }
    get_ok(&process, "/bytes/10").await;
    let lines = wait_for_access_lines(&process, 3).await;
    let mut refused: Vec<(String, String, String)> = lines
        .iter()
        .filter(|line| line["kind"] == "refused")
        .map(|line| {
            assert_eq!(line["status"], 400, "{line}");
            let text = |field: &str| line[field].as_str().unwrap_or_default().to_string();
            (text("method"), text("path"), text("reason"))
        })
        .collect();
    refused.sort();
    assert_eq!(
        refused,
        [
            (
                "GET".to_string(),
                "/no-host".to_string(),
                "HTTP/1.1 request without a Host header".to_string()
            ),
            (
                "get".to_string(),
                "/lower".to_string(),
                "a method in lower case".to_string()
            ),
        ]
    );
    let passed = lines
        .iter()
        .find(|line| line["path"] == "/bytes/10")
        .expect("the pass-through line");
    assert!(passed.get("reason").is_none(), "{passed}");
}

/// Reads until the server closes `stream` (at most 5 s); what it sent meanwhile.
async fn until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut got))
        .await
        .expect("closed within 5 s")
        .expect("read to the end");
    got
}

#[tokio::test]
async fn a_head_not_finished_in_time_is_logged_as_a_408() {
    let app = App::start().await;
    let config = "[server]\nheader_read_timeout = \"300ms\"\n";
    let process = OffloadProcess::start_with_config(app.addr, Some(config), &[], &[]).await;
    let connect = || TcpStream::connect(process.addr);
    let mut half_head = connect().await.expect("connect");
    half_head
        .write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .expect("half a head");
    let mut unused = connect().await.expect("connect");
    let mut kept_alive = connect().await.expect("connect");
    kept_alive
        .write_all(b"GET /bytes/10 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("request");
    // HTTP/2 with prior knowledge: its preface and an empty SETTINGS frame, then no request.
    let mut http2 = connect().await.expect("connect");
    http2
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .expect("preface");

    assert!(
        until_closed(&mut half_head).await.is_empty(),
        "dropped unanswered"
    );
    assert!(until_closed(&mut unused).await.is_empty());
    let answer = until_closed(&mut kept_alive).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    // HTTP/2, its preface in, waits for no head: it is idle, and still open past the
    // header read timeout (closed with a GOAWAY after idle_timeout; see
    // server::an_http2_connection_with_no_request_yet_gets_a_goaway).
    let mut frames = Vec::new();
    let mut buf = [0u8; 1024];
    while let Ok(read) =
        tokio::time::timeout(Duration::from_millis(300), http2.read(&mut buf)).await
    {
        let n = read.expect("read");
        assert!(n > 0, "closed: {frames:?}");
        frames.extend_from_slice(&buf[..n]);
    }
    assert!(
        frames.len() >= 9 && frames[3] == 4,
        "SETTINGS first: {frames:?}"
    );

    let lines = wait_for_access_lines(&process, 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(access_lines(&process), lines, "{}", process.logs());
    let refused: Vec<&Value> = lines.iter().filter(|l| l["kind"] == "refused").collect();
    assert_eq!(refused.len(), 1, "{lines:?}");
    let line = refused[0];
    assert_eq!(line["status"], 408, "{line}");
    assert_eq!(line["method"], "-", "{line}");
    assert_eq!(
        line["reason"],
        "request head not complete within server.header_read_timeout (300ms)"
    );
    assert_eq!(
        line["peer"].as_str(),
        Some(half_head.local_addr().expect("addr").to_string().as_str())
    );
    assert!(
        lines
            .iter()
            .any(|l| l["kind"] == "passthrough" && l["path"] == "/bytes/10"),
        "{lines:?}"
    );
}

/// `server.request_id_header`: the app, the client and the access log see the same ID; a
/// trusted proxy's is kept, a bad one replaced.
#[tokio::test]
async fn each_request_carries_one_id_to_the_app_the_client_and_the_log() {
    let app = App::start().await;
    // One worker: each worker writes out its own buffered lines, so with two the log's
    // order need not be the requests' order.
    let config = "[server]\nrequest_id_header = \"X-Request-ID\"\n\
                  trusted_proxies = [\"127.0.0.1/32\"]\nworker_threads = 1\n";
    let process = OffloadProcess::start_with_config(app.addr, Some(config), &[], &[]).await;
    let url = format!("http://{}/echo", process.addr);
    let mut answered = Vec::new();
    // Last, a client naming the header in Connection (hop-by-hop): the app gets it still.
    for (sent, connection) in [
        (None, None),
        (Some("lb-42"), None),
        (Some("not a token"), None),
        (None, Some("keep-alive, X-Request-ID")),
    ] {
        let mut request = client().get(&url);
        if let Some(id) = sent {
            request = request.header("x-request-id", id);
        }
        if let Some(options) = connection {
            request = request.header("connection", options);
        }
        let resp = request.send().await.expect("request");
        assert_eq!(resp.status(), 200);
        let returned = resp.headers()["x-request-id"]
            .to_str()
            .expect("text")
            .to_string();
        let echo = Echo::parse(&resp.text().await.expect("body"));
        assert_eq!(
            echo.one("x-request-id"),
            Some(returned.as_str()),
            "{sent:?}"
        );
        match sent {
            Some("lb-42") => assert_eq!(returned, "lb-42", "a trusted proxy's ID is kept"),
            _ => assert!(
                returned.len() == 32 && returned.bytes().all(|b| b.is_ascii_hexdigit()),
                "{sent:?} got {returned:?}"
            ),
        }
        answered.push(returned);
    }
    let lines = wait_for_access_lines(&process, 4).await;
    let logged: Vec<&str> = lines
        .iter()
        .map(|line| line["request_id"].as_str().expect("request_id"))
        .collect();
    assert_eq!(logged, answered);
}

#[tokio::test]
async fn text_logs_written_to_a_file_carry_no_colour_codes() {
    let app = App::start().await;
    let process = OffloadProcess::start(app.addr, &["--log-format", "text"], &[]).await;
    get_ok(&process, "/bytes/10").await;
    let logs = process.wait_for_log("offload::access").await;
    assert!(!logs.contains('\x1b'), "escape codes in {logs:?}");
    let access = logs
        .lines()
        .find(|line| line.contains("offload::access"))
        .expect("access line");
    for field in [
        "method=GET",
        "path=\"/bytes/10\"",
        "status=200",
        "bytes_out=10",
    ] {
        assert!(access.contains(field), "{field} missing from {access:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_is_out_when_the_process_stops() {
    let app = App::start().await;
    let config = "[server]\nworker_threads = 2\n[log]\nbuffer = \"1MiB\"\n";
    let mut process = OffloadProcess::start_with_config(app.addr, Some(config), &[], &[]).await;
    let base = format!("http://{}", process.addr);
    let get = |path: String| {
        let url = format!("{base}{path}");
        async move {
            let got = client().get(url).send().await.expect("GET");
            assert_eq!(got.status(), 200);
            got.bytes().await.expect("body").len()
        }
    };
    // Several connections at once, so that both workers log lines.
    let sizes = futures_util::future::join_all((0..40).map(|n| get(format!("/bytes/{n}")))).await;
    assert_eq!(sizes, (0..40).collect::<Vec<_>>());
    // And requests still in flight when the signal comes: their lines are logged during the
    // shutdown, the last ones just before the process exits.
    let slow: Vec<_> = (0..4)
        .map(|n| tokio::spawn(get(format!("/sleep/{}", 2000 + n))))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    process.signal(libc::SIGTERM);
    for answered in slow {
        assert_eq!(answered.await.expect("slow request"), "slept".len());
    }
    let exit = process.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(exit.and_then(|s| s.code()), Some(0), "{}", process.logs());
    let mut paths: Vec<String> = access_lines(&process)
        .iter()
        .filter_map(|line| line["path"].as_str().map(str::to_string))
        .collect();
    paths.sort();
    let mut expected: Vec<String> = (0..40)
        .map(|n| format!("/bytes/{n}"))
        .chain((0..4).map(|n| format!("/sleep/{}", 2000 + n)))
        .collect();
    expected.sort();
    assert_eq!(paths, expected, "{}", process.logs());
    // Logged by worker 0 as the server returns, with no idle moment after it to write it.
    let logs = process.logs();
    let stopped = logs
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .any(|line| line["message"] == "stopped");
    assert!(stopped, "no \"stopped\" line: {logs}");
}

/// A reloaded `log.level` applies at once, as nginx's reload applies `error_log`'s level:
/// access lines the file turned off are written once a reload turns them on, and no longer
/// once another turns them off again.
#[tokio::test]
async fn sighup_applies_a_changed_log_level() {
    let app = App::start().await;
    let config = |level: &str| with_log_level(&app, level);
    let quiet = config("info,offload::access=off");
    let process = OffloadProcess::start_with_config(app.addr, Some(&quiet), &[], &[]).await;
    get_ok(&process, "/before").await;

    let logs = process
        .reload(&config("info"), "SIGHUP: configuration reloaded")
        .await;
    assert!(logs.contains("log.level"), "{logs}");
    get_ok(&process, "/after").await;
    assert_eq!(access_paths_after_a_while(&process).await, ["/after"]);

    process
        .reload(&quiet, "SIGHUP: configuration reloaded")
        .await;
    get_ok(&process, "/again").await;
    assert_eq!(access_paths_after_a_while(&process).await, ["/after"]);
}

/// Under `RUST_LOG` the file's `log.level` applies neither at start nor on a reload, and the
/// reload says so.
#[tokio::test]
async fn rust_log_overrides_a_reloaded_log_level() {
    let app = App::start().await;
    let config = |level: &str| with_log_level(&app, level);
    let env = [("RUST_LOG", "info,offload::access=off")];
    let process =
        OffloadProcess::start_with_config(app.addr, Some(&config("info")), &[], &env).await;
    let logs = process
        .reload(&config("debug"), "SIGHUP: configuration reloaded")
        .await;
    assert!(logs.contains("RUST_LOG is set and overrides it"), "{logs}");
    get_ok(&process, "/after").await;
    assert!(access_paths_after_a_while(&process).await.is_empty());
}

/// A configuration file for `app` with `log.level` set to `level`.
fn with_log_level(app: &App, level: &str) -> String {
    format!(
        "[log]\nlevel = \"{level}\"\n[upstream]\nurl = \"http://{}\"\n",
        app.addr
    )
}

/// The paths of the access lines written within 300 ms (a worker writes its buffered lines
/// out as soon as it has nothing else to do).
async fn access_paths_after_a_while(process: &OffloadProcess) -> Vec<String> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    access_lines(process)
        .iter()
        .map(|line| line["path"].as_str().unwrap_or_default().to_string())
        .collect()
}
