//! Hostile clients: request smuggling, oversized heads, slowloris, clients that never read,
//! secrets in logs, the admin listener's exposure.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::process::OffloadProcess;
use crate::support::{App, Proxy, app_and_proxy, client, config_for, raw_exchange};

/// What a hostile request must get.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Verdict {
    /// `400`, and the connection closes.
    Rejected,
    /// Any single reading of the bytes, as long as the app never sees the smuggled request.
    NotSmuggled,
}

/// A second request hidden in the first one's framing.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";

fn smuggling_cases() -> Vec<(&'static str, String, Verdict)> {
    use Verdict::*;
    let n = SMUGGLED.len();
    vec![
        (
            "content-length then transfer-encoding",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\
                 Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}",
                5 + n
            ),
            NotSmuggled,
        ),
        (
            "transfer-encoding then content-length",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\
                 Content-Length: {}\r\n\r\n0\r\n\r\n{SMUGGLED}",
                5 + n
            ),
            NotSmuggled,
        ),
        (
            "two different content-lengths",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: {n}\r\n\r\n\
                 {SMUGGLED}"
            ),
            Rejected,
        ),
        (
            "content-length list",
            format!("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0, {n}\r\n\r\n{SMUGGLED}"),
            Rejected,
        ),
        (
            "signed content-length",
            format!("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: +{n}\r\n\r\n{SMUGGLED}"),
            Rejected,
        ),
        (
            "chunked, identity",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\
                 Content-Length: 5\r\n\r\n0\r\n\r\n{SMUGGLED}"
            ),
            Rejected,
        ),
        (
            "chunked then identity on two lines",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\
                 Transfer-Encoding: identity\r\n\r\n0\r\n\r\n{SMUGGLED}"
            ),
            Rejected,
        ),
        (
            "xchunked",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n\
                 {SMUGGLED}"
            ),
            Rejected,
        ),
        (
            "space before the colon",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\
                 Content-Length: {n}\r\n\r\n{SMUGGLED}"
            ),
            Rejected,
        ),
        (
            "obs-fold continuation",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nX-Fold: a\r\n Transfer-Encoding: chunked\r\n\
                 Content-Length: 5\r\n\r\n0\r\n\r\n{SMUGGLED}"
            ),
            Rejected,
        ),
        (
            "folded transfer-encoding value",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n chunked\r\n\
                 \r\n0\r\n\r\n{SMUGGLED}"
            ),
            Rejected,
        ),
        (
            "bare CR inside a header line",
            format!("POST /a HTTP/1.1\r\nHost: x\r\nX-A: 1\rContent-Length: {n}\r\n\r\n{SMUGGLED}"),
            Rejected,
        ),
        (
            "bare LF line endings",
            format!("POST /a HTTP/1.1\nHost: x\nContent-Length: {n}\n\n{SMUGGLED}"),
            NotSmuggled,
        ),
        (
            "bare LF before transfer-encoding",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nX-A: 1\nTransfer-Encoding: chunked\r\n\
                 Content-Length: 5\r\n\r\n0\r\n\r\n{SMUGGLED}"
            ),
            NotSmuggled,
        ),
        (
            "transfer-encoding in HTTP/1.0",
            format!(
                "POST /a HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\
                 Content-Length: 5\r\n\r\n0\r\n\r\n{SMUGGLED}"
            ),
            Rejected,
        ),
        (
            "chunk size overflow",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
                 10000000000000000000001\r\nx\r\n0\r\n\r\n{SMUGGLED}"
            ),
            NotSmuggled,
        ),
        (
            "chunk longer than its size",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
                 1\r\nxx\r\n0\r\n\r\n{SMUGGLED}"
            ),
            NotSmuggled,
        ),
        (
            "NUL in a header value",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nX-A: 1\0\r\nContent-Length: {n}\r\n\r\n{SMUGGLED}"
            ),
            Rejected,
        ),
    ]
}

/// Reads until the peer closes (a hang fails the test).
async fn read_to_close(stream: &mut TcpStream, what: &str) -> String {
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "{what}: connection neither answered nor closed"
    );
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn smuggled_requests_never_reach_the_app() {
    let (app, proxy) = app_and_proxy(|_| {}).await;

    // Control: plain pipelining reaches the app, so the recorder would see a smuggled request.
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(
            b"GET /first HTTP/1.1\r\nHost: x\r\n\r\nGET /second HTTP/1.1\r\nHost: x\r\n\
              Connection: close\r\n\r\n",
        )
        .await
        .expect("write");
    let answer = read_to_close(&mut stream, "pipelining").await;
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 2, "{answer}");
    assert_eq!(app.seen(), ["GET /first", "GET /second"]);

    for (i, (name, payload, verdict)) in smuggling_cases().into_iter().enumerate() {
        // Each case posts to its own path: a forwarded request of an earlier case may still
        // be arriving at the app.
        let payload = payload.replacen("POST /a ", &format!("POST /case-{i} "), 1);
        let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
        // A final, honest request: answered only if the connection is still in sync.
        let last = format!("GET /last-{i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let _ = stream.write_all(payload.as_bytes()).await;
        let _ = stream.write_all(last.as_bytes()).await;
        let answer = read_to_close(&mut stream, name).await;
        let all = app.seen();
        assert!(
            !all.iter().any(|r| r.contains("smuggled")),
            "{name}: the app saw {all:?}"
        );
        let mine = [format!("POST /case-{i}"), format!("GET /last-{i}")];
        let seen: Vec<&String> = all.iter().filter(|r| mine.contains(r)).collect();
        match verdict {
            Verdict::Rejected => {
                assert!(
                    answer.starts_with("HTTP/1.1 400"),
                    "{name}: expected 400, got {answer:?}"
                );
                assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{name}: {answer}");
                assert!(
                    seen.is_empty(),
                    "{name}: the app saw {seen:?}; answer {answer:?}"
                );
            }
            Verdict::NotSmuggled => {
                assert!(answer.starts_with("HTTP/1.1 "), "{name}: {answer:?}");
                assert!(
                    seen.iter().all(|r| mine.contains(r)),
                    "{name}: the app saw {seen:?}"
                );
            }
        }
    }
    // Still serving.
    let resp = client().get(proxy.url("/ok")).send().await.expect("answer");
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn oversized_heads_get_431_and_the_proxy_stays_up() {
    let (app, proxy) = app_and_proxy(|c| {
        c.server.max_header_size = bytesize::ByteSize::kib(8);
        c.server.max_headers = 20;
    })
    .await;
    // One header line past the limit.
    let big = format!(
        "GET /big HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(9 * 1024)
    );
    let response = raw_exchange(proxy.addr, big.as_bytes(), Duration::from_secs(10)).await;
    assert!(response.starts_with("HTTP/1.1 431"), "{response:?}");
    // Many small headers, the head itself short.
    let many: String = (0..40).map(|i| format!("X-H{i}: v\r\n")).collect();
    let request = format!("GET /many HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    let response = raw_exchange(proxy.addr, request.as_bytes(), Duration::from_secs(10)).await;
    assert!(response.starts_with("HTTP/1.1 431"), "{response:?}");
    assert!(
        app.seen().is_empty(),
        "the app saw a refused request: {:?}",
        app.seen()
    );
    // A head within the limits still passes.
    let fine: String = (0..15).map(|i| format!("X-H{i}: v\r\n")).collect();
    let request = format!("GET /fine HTTP/1.1\r\nHost: x\r\n{fine}Connection: close\r\n\r\n");
    let response = raw_exchange(proxy.addr, request.as_bytes(), Duration::from_secs(10)).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response:?}");
}

#[tokio::test]
async fn slowloris_clients_are_cut_off_and_others_served() {
    let (_app, proxy) =
        app_and_proxy(|c| c.server.header_read_timeout = Duration::from_millis(800)).await;
    // 50 clients dribbling one byte of the head every 100 ms.
    let started = Instant::now();
    let mut dribblers = Vec::new();
    for _ in 0..50 {
        let addr = proxy.addr;
        dribblers.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            let head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
            for byte in head.iter().cycle() {
                if stream.write_all(&[*byte]).await.is_err() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                // A closed connection shows up as a read of 0 (or a reset).
                let mut buf = [0u8; 512];
                if let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_millis(1), stream.read(&mut buf)).await
                {
                    let _ = n;
                    return true;
                }
                if started.elapsed() > Duration::from_secs(15) {
                    return false;
                }
            }
            false
        }));
    }
    // Meanwhile an honest client is served promptly.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let resp = client().get(proxy.url("/ok")).send().await.expect("answer");
    assert_eq!(resp.status(), 200);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    for d in dribblers {
        assert!(
            d.await.expect("task"),
            "a dribbling client was never cut off"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(15));
}

/// Samples the process's RSS (KiB) every 100 ms for `period`, returning the largest.
async fn peak_rss(process: &OffloadProcess, period: Duration) -> u64 {
    let until = Instant::now() + period;
    let mut peak = 0;
    while Instant::now() < until {
        peak = peak.max(process.rss_kib());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    peak
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_does_not_grow_memory() {
    let app = App::start().await;
    let process = OffloadProcess::start(app.addr, &[], &[]).await;
    // Warm up (pools, allocator) before the baseline.
    let resp = client()
        .get(format!("http://{}/bytes/1048576", process.addr))
        .send()
        .await
        .expect("warm-up");
    assert_eq!(resp.bytes().await.expect("body").len(), 1 << 20);
    let baseline = process.rss_kib();

    // Four clients ask for 512 MiB each and read only the head.
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(process.addr).await.expect("connect");
        stream
            .write_all(b"GET /bytes/536870912 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("request");
        let mut head = [0u8; 64];
        let n = stream.read(&mut head).await.expect("head");
        assert!(head[..n].starts_with(b"HTTP/1.1 200"));
        stalled.push(stream);
    }
    let peak = peak_rss(&process, Duration::from_secs(2)).await;
    let grown = peak.saturating_sub(baseline);
    assert!(
        grown < 32 * 1024,
        "RSS grew by {grown} KiB (baseline {baseline} KiB) with 4 stalled 512 MiB downloads"
    );
    // Other clients are still served, and promptly.
    let t = Instant::now();
    let resp = client()
        .get(format!("http://{}/bytes/10", process.addr))
        .send()
        .await
        .expect("answer");
    assert_eq!(resp.status(), 200);
    assert!(t.elapsed() < Duration::from_secs(3));
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_and_secrets_never_reach_the_logs() {
    let app = App::start().await;
    let aws_secret = "AWSSECRETxK3yNeverLogged0123456789abcdef";
    let process = OffloadProcess::start(
        app.addr,
        &[],
        &[
            ("RUST_LOG", "debug"),
            ("AWS_ACCESS_KEY_ID", "AKIDLOGTEST"),
            ("AWS_SECRET_ACCESS_KEY", aws_secret),
        ],
    )
    .await;
    let base = format!("http://{}", process.addr);
    let http = client();
    let resp = http
        .get(format!("{base}/private?token=QUERYSECRETq1w2e3"))
        .header("authorization", "Bearer AUTHSECRETa1b2c3")
        .header("proxy-authorization", "Basic PROXYSECRETz9y8x7")
        .header("cookie", "session=COOKIESECRETd4e5f6")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let resp = http
        .get(format!("{base}/set-cookie?sid=SETCOOKIESECRETg7h8"))
        .send()
        .await
        .expect("request");
    assert_eq!(
        resp.headers()["set-cookie"],
        "sid=SETCOOKIESECRETg7h8",
        "the app's cookie passes to the client"
    );
    let _ = resp.bytes().await;
    // A request hyper refuses, carrying credentials.
    let refused = raw_exchange(
        process.addr,
        b"GET /x HTTP/1.1\r\nHost: x\r\nAuthorization: Basic BADREQSECRETj1k2\r\n\
          Content-Length: 1\r\nContent-Length: 2\r\n\r\n",
        Duration::from_secs(10),
    )
    .await;
    assert!(refused.starts_with("HTTP/1.1 400"), "{refused}");

    // The access log lines are written when the response ends: wait for them.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !process.logs().contains("/set-cookie") {
        assert!(
            Instant::now() < deadline,
            "no access log: {}",
            process.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let logs = process.logs();
    assert!(logs.contains("\"path\":\"/private\""), "{logs}");
    for secret in [
        "QUERYSECRET",
        "AUTHSECRET",
        "PROXYSECRET",
        "COOKIESECRET",
        "SETCOOKIESECRET",
        "BADREQSECRET",
        aws_secret,
    ] {
        assert!(!logs.contains(secret), "{secret} in the logs:\n{logs}");
    }
}

#[tokio::test]
async fn admin_listens_on_loopback_only_by_default() {
    let defaults = offload::config::Config::default();
    let admin = defaults.server.admin_listen.expect("admin on by default");
    assert!(admin.ip().is_loopback(), "{admin}");
    // Moving the public listener does not move the admin one.
    let config = offload::config::Config::from_toml_with_env(
        "[server]\nlisten = \"0.0.0.0:8080\"\n",
        &Default::default(),
    )
    .expect("config");
    assert_eq!(config.server.admin_listen, Some(admin));

    // Bound as configured: on 127.0.0.1 only, not on every address (a wildcard bind would
    // also answer on 127.0.0.2).
    let app = App::start().await;
    let mut config = config_for(app.addr);
    config.server.admin_listen = Some(SocketAddr::new(admin.ip(), 0));
    let proxy = Proxy::start(config).await;
    let bound = proxy.admin.expect("admin bound");
    assert_eq!(bound.ip(), admin.ip());
    assert!(TcpStream::connect(bound).await.is_ok());
    let other = SocketAddr::from(([127, 0, 0, 2], bound.port()));
    assert!(
        TcpStream::connect(other).await.is_err(),
        "admin answers on {other}"
    );
}

#[tokio::test]
async fn forged_forwarding_headers_never_reach_the_app() {
    let (_app, proxy) = app_and_proxy(|_| {}).await;
    // Underscore spellings read as the real headers by PHP and every CGI-style gateway, and
    // claims offload does not make itself.
    let request = "GET /who HTTP/1.1\r\nHost: site.test\r\nX_Forwarded_For: 6.6.6.6\r\n\
                   X-Forwarded_Proto: https\r\nX_Forwarded-Host: evil.example\r\n\
                   X_Forwarded_Port: 443\r\nX-Forwarded-Port: 443\r\n\
                   X-Forwarded-Prefix: /admin\r\nX-Real-IP: 6.6.6.6\r\nX_Real_IP: 6.6.6.6\r\n\
                   X-Forwarded-For: 6.6.6.6\r\nX_Other_Header: kept\r\nConnection: close\r\n\r\n";
    let response = raw_exchange(proxy.addr, request.as_bytes(), Duration::from_secs(10)).await;
    let echo = crate::support::app::Echo::parse(crate::support::raw_body(&response));
    let forged: Vec<_> = echo
        .headers
        .iter()
        .filter(|(_, v)| v.contains("6.6.6.6") || v.contains("evil") || v == "443" || v == "/admin")
        .collect();
    assert!(
        forged.is_empty(),
        "forged headers reached the app: {forged:?}"
    );
    assert_eq!(echo.one("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(echo.one("x-forwarded-proto"), Some("http"));
    assert_eq!(echo.one("x-forwarded-host"), Some("site.test"));
    assert_eq!(echo.one("x_other_header"), Some("kept"));
}
