//! Hostile clients: request smuggling, oversized heads, slowloris, clients that never read,
//! secrets in logs, the admin listener's exposure.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use offload::store::Store as _;

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

/// After a burst of connections closes, the memory they held goes back to the system
/// (`memory::start_trimming`). glibc alone keeps freed heap memory scattered among what
/// stays in use, and RSS would stay at the burst's peak until a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_held_by_a_burst_of_connections_is_returned() {
    let app = App::start().await;
    let process = OffloadProcess::start(app.addr, &[], &[]).await;
    let mut warm_up = answered_connection(process.addr).await;
    warm_up.shutdown().await.expect("close");
    let baseline = process.rss_kib();

    let mut burst = Vec::new();
    for _ in 0..30 {
        let opened = (0..100).map(|_| answered_connection(process.addr));
        burst.extend(futures_util::future::join_all(opened).await);
    }
    let held = process.rss_kib().saturating_sub(baseline);
    assert!(held > 40 * 1024, "3,000 connections held only {held} KiB");
    drop(burst);

    let started = Instant::now();
    let mut now = process.rss_kib().saturating_sub(baseline);
    while now > held / 2 && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        now = process.rss_kib().saturating_sub(baseline);
    }
    assert!(
        now <= held / 2,
        "RSS still {now} KiB over the baseline, {:?} after the burst ({held} KiB) closed",
        started.elapsed()
    );
}

/// A connection to `addr` on which one small request has been answered, kept open.
async fn answered_connection(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /bytes/10 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("request");
    // The head and its 10 bytes of body.
    let answered = |got: &[u8]| {
        let head = got.windows(4).position(|w| w == b"\r\n\r\n");
        head.is_some_and(|at| got.len() >= at + 4 + 10)
    };
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !answered(&got) {
        let n = stream.read(&mut buf).await.expect("response");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    stream
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

    let logs = process.wait_for_log("/set-cookie").await;
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
                   X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Ssl: on\r\nX_Forwarded_Ssl: on\r\n\
                   True-Client-IP: 6.6.6.6\r\nX-Original-URL: /admin\r\n\
                   Proxy: http://evil.example:3128\r\nX_Other_Header: kept\r\n\
                   Connection: close\r\n\r\n";
    let response = raw_exchange(proxy.addr, request.as_bytes(), Duration::from_secs(10)).await;
    let echo = crate::support::app::Echo::parse(crate::support::raw_body(&response));
    let forged: Vec<_> = echo
        .headers
        .iter()
        .filter(|(_, v)| {
            v.contains("6.6.6.6")
                || v.contains("evil")
                || ["443", "/admin", "on"].contains(&v.as_str())
        })
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

// ---------------------------------------------------------------------------------------
// The store, assets, uploads: traversal, redirects, SSRF, active content, field injection.
// ---------------------------------------------------------------------------------------

/// A proxy on an fs store in `root` with `/wp-content/uploads/` managed, plus `tweak`.
async fn fs_site(
    root: &std::path::Path,
    tweak: impl FnOnce(&mut offload::config::Config),
) -> (App, Proxy, offload::store::FsStore) {
    let (app, proxy) = app_and_proxy(|c| {
        c.store.root = root.to_path_buf();
        c.assets.prefixes = vec!["/wp-content/uploads/".into()];
        tweak(c);
    })
    .await;
    let store = offload::store::FsStore::new(root, "/_offload/", None).expect("fs store");
    (app, proxy, store)
}

async fn put_text(store: &dyn offload::store::Store, key: &str, text: &str) {
    store
        .put(
            key,
            crate::support::data::bytes_body(text.to_string()),
            offload::store::PutOptions::default(),
        )
        .await
        .expect("put");
}

/// `GET target` over a raw socket (the target byte for byte): (status line, whole answer).
async fn raw_get(addr: SocketAddr, target: &str, extra: &str) -> String {
    let request =
        format!("GET {target} HTTP/1.1\r\nHost: site.test\r\n{extra}Connection: close\r\n\r\n");
    raw_exchange(addr, request.as_bytes(), Duration::from_secs(10)).await
}

#[tokio::test]
async fn the_fs_store_prefix_never_serves_outside_its_root() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("store");
    std::fs::write(dir.path().join("secret.txt"), "SECRET-NEXT-TO-ROOT").expect("secret");
    let (_app, proxy, store) = fs_site(&root, |_| {}).await;
    std::fs::write(root.join("secret.txt"), "SECRET-IN-ROOT").expect("secret");
    put_text(&store, "ok.txt", "fine").await;
    let ok = raw_get(proxy.addr, "/_offload/ok.txt", "").await;
    assert!(
        ok.starts_with("HTTP/1.1 200") && ok.ends_with("fine"),
        "{ok}"
    );

    for target in [
        "/_offload/../secret.txt",
        "/_offload/../../secret.txt",
        "/_offload/..%2fsecret.txt",
        "/_offload/..%2Fsecret.txt",
        "/_offload/..%2F..%2Fsecret.txt",
        "/_offload/%2e%2e/secret.txt",
        "/_offload/%2e%2e%2fsecret.txt",
        "/_offload/%2E%2E%2F%2E%2E%2Fsecret.txt",
        "/_offload/..%5csecret.txt",
        "/_offload/..%5c..%5csecret.txt",
        "/_offload/..\\secret.txt",
        "/_offload/ok.txt%00",
        "/_offload/%00../secret.txt",
        "/_offload/%252e%252e/secret.txt",
        "/_offload/%252e%252e%252fsecret.txt",
        "/_offload/%2fetc%2fpasswd",
        "/_offload//etc/passwd",
        "/_offload/../../../../../../etc/passwd",
        "/_offload/%2e%2e/meta/ok.txt.json",
        "/_offload/../meta/ok.txt.json",
        "/_offload/.offload-tmp-x",
        "/_offload/%c0%ae%c0%ae/secret.txt",
    ] {
        let answer = raw_get(proxy.addr, target, "").await;
        let status = answer.get(9..12).unwrap_or("");
        assert!(["400", "404"].contains(&status), "{target}: {answer:?}");
        for leak in ["SECRET", "root:", "sha256", "mtime_ns"] {
            assert!(!answer.contains(leak), "{target} leaked {leak}: {answer:?}");
        }
    }
}

#[tokio::test]
async fn asset_path_traversal_is_never_served_from_or_pulled_into_the_store() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (app, proxy, store) = fs_site(dir.path(), |_| {}).await;
    // What a traversal would reach in the store, and in the app.
    put_text(&store, "wp-config.php", "STORE-SECRET-1").await;
    put_text(&store, "wp-content/wp-config.php", "STORE-SECRET-2").await;
    app.serve_file("/wp-config.php", "image/jpeg", "APP-SECRET-DB-PASSWORD");
    app.serve_file("/wp-content/uploads/real.jpg", "image/jpeg", "real jpeg");
    let traversals = [
        "/wp-content/uploads/../../wp-config.php",
        "/wp-content/uploads/../wp-config.php",
        "/wp-content/uploads/%2e%2e/%2e%2e/wp-config.php",
        "/wp-content/uploads/..%2f..%2fwp-config.php",
        "/wp-content/uploads/%2e%2e%2f%2e%2e%2fwp-config.php",
        "/wp-content/uploads/..%5c..%5cwp-config.php",
        "/wp-content/uploads/%252e%252e/%252e%252e/wp-config.php",
        "/wp-content/uploads/a/../../../wp-config.php",
        "/wp-content/uploads/x%00/../../../wp-config.php",
        "/wp-content/uploads//../../wp-config.php",
    ];
    for target in traversals {
        let answer = raw_get(proxy.addr, target, "").await;
        assert!(!answer.contains("STORE-SECRET"), "{target}: {answer:?}");
    }
    // A page naming them: only the real upload may be pulled into the store.
    let mut page = String::from("<html><body>");
    for target in traversals {
        page.push_str(&format!(
            "<img src=\"{target}\"><img src=\"http://site.test{target}\">"
        ));
    }
    page.push_str("<img src=\"/wp-content/uploads/real.jpg\"></body></html>");
    app.serve_file("/page.html", "text/html", page);
    let answer = raw_get(proxy.addr, "/page.html", "").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while store
        .head("wp-content/uploads/real.jpg")
        .await
        .expect("head")
        .is_none()
    {
        assert!(
            Instant::now() < deadline,
            "the real upload was never pulled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let any other pull finish, then look at everything the store holds.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut keys: Vec<String> = futures_util::StreamExt::collect::<Vec<_>>(store.list(""))
        .await
        .into_iter()
        .map(|r| r.expect("listing").key)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "wp-config.php",
            "wp-content/uploads/real.jpg",
            "wp-content/wp-config.php"
        ]
    );
    assert!(
        !app.seen().iter().any(|r| r == "GET /wp-config.php"),
        "a pull asked the app for a path outside the prefix: {:?}",
        app.seen()
    );
}

#[tokio::test]
async fn missing_redirect_points_at_the_public_base_only() {
    let dir = tempfile::tempdir().expect("temp dir");
    let public = "https://cdn.example.net/b/";
    let (_app, proxy, _) = fs_site(dir.path(), |c| {
        c.assets.missing = offload::config::MissingAsset::Redirect;
        c.store.public_url = Some(public.parse().expect("url"));
    })
    .await;
    let store = offload::store::FsStore::new(dir.path(), "/_offload/", None).expect("store");
    put_text(&store, "wp-content/uploads/a.jpg", "jpeg").await;
    let expected = format!("location: {public}wp-content/uploads/a.jpg\r\n");
    for (target, extra) in [
        ("/wp-content/uploads/a.jpg", ""),
        (
            "/wp-content/uploads/a.jpg",
            "X-Forwarded-Host: evil.example\r\n",
        ),
        (
            "/wp-content/uploads/a.jpg",
            "Forwarded: host=evil.example\r\n",
        ),
        ("http://evil.example/wp-content/uploads/a.jpg", ""),
        ("/wp-content/uploads/./a.jpg", ""),
    ] {
        let request = format!(
            "GET {target} HTTP/1.1\r\nHost: evil.example\r\n{extra}Connection: close\r\n\r\n"
        );
        let answer = raw_exchange(proxy.addr, request.as_bytes(), Duration::from_secs(10)).await;
        assert!(answer.starts_with("HTTP/1.1 302"), "{target}: {answer}");
        assert!(
            answer.to_ascii_lowercase().contains(&expected),
            "{target} {extra}: {answer}"
        );
    }
    for target in [
        "/wp-content/uploads//evil.example/a.jpg",
        "/wp-content/uploads/%2F%2Fevil.example/a.jpg",
        "/wp-content/uploads/missing.jpg",
    ] {
        let answer = raw_get(proxy.addr, target, "").await;
        assert!(answer.starts_with("HTTP/1.1 404"), "{target}: {answer}");
        assert!(
            !answer.to_ascii_lowercase().contains("location:"),
            "{answer}"
        );
    }
}

#[tokio::test]
async fn origin_pull_only_ever_asks_the_configured_app() {
    let evil = crate::support::raw::RawApp::counting().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (app, proxy, store) = fs_site(dir.path(), |c| {
        c.assets.site_origins = vec!["http://site.test".parse().expect("origin")];
    })
    .await;
    let e = evil.addr;
    app.serve_file("/wp-content/uploads/real.jpg", "image/jpeg", "real jpeg");
    let page = format!(
        "<html><body>\
         <img src=\"http://{e}/wp-content/uploads/e1.jpg\">\
         <img src=\"//{e}/wp-content/uploads/e2.jpg\">\
         <img srcset=\"http://{e}/wp-content/uploads/e3.jpg 2x, //{e}/wp-content/uploads/e4.jpg 3x\">\
         <img src=\"http://169.254.169.254/wp-content/uploads/e5.jpg\">\
         <img src=\"//169.254.169.254/latest/meta-data/iam/\">\
         <img src=\"http://evil.example/wp-content/uploads/e6.jpg\">\
         <img src=\"http://site.test@{e}/wp-content/uploads/e7.jpg\">\
         <img src=\"http://{e}\\@site.test/wp-content/uploads/e8.jpg\">\
         <img src=\"/wp-content/uploads/real.jpg\">\
         </body></html>"
    );
    app.serve_file("/page.html", "text/html", page);
    // The request's own origin counts as the site: name the evil host as Host.
    for host in [e.to_string(), "169.254.169.254".to_string()] {
        let request = format!(
            "GET /page.html HTTP/1.1\r\nHost: {host}\r\nX-Forwarded-Host: {e}\r\n\
             Connection: close\r\n\r\n"
        );
        let answer = raw_exchange(proxy.addr, request.as_bytes(), Duration::from_secs(10)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while store
        .head("wp-content/uploads/real.jpg")
        .await
        .expect("head")
        .is_none()
    {
        assert!(
            Instant::now() < deadline,
            "the real upload was never pulled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Pulls of the names under the request's own origin went to the app (which 404s).
    while !app
        .seen()
        .iter()
        .any(|r| r == "GET /wp-content/uploads/e1.jpg")
    {
        assert!(
            Instant::now() < deadline,
            "no pull for e1: {:?}",
            app.seen()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(evil.connections(), 0, "the evil host was contacted");
}

/// A multipart body with one text field and the given file parts (raw header lines).
fn multipart(boundary: &str, files: &[(&str, &str, &[u8])]) -> Vec<u8> {
    let mut body =
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nhello\r\n")
            .into_bytes();
    for (disposition, content_type, bytes) in files {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: {content_type}\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    body
}

const SVG: &[u8] =
    b"<svg xmlns=\"http://www.w3.org/2000/svg\"><script>alert(document.domain)</script></svg>";
const HTML: &[u8] = b"<!doctype html><html><script>alert(document.domain)</script></html>";

/// Whether a browser would run this answer in the site's origin: it is inline and of an
/// active type, or it may be sniffed.
fn runs_in_browser(headers: &reqwest::header::HeaderMap) -> bool {
    let get = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase()
    };
    let attachment = get("content-disposition").starts_with("attachment");
    let nosniff = get("x-content-type-options") == "nosniff";
    let ct = get("content-type");
    let active = ["html", "svg", "xml", "javascript"]
        .iter()
        .any(|t| ct.contains(t));
    !nosniff || (active && !attachment)
}

#[tokio::test]
async fn uploaded_and_pulled_active_content_is_served_as_a_download() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (app, proxy, store) = fs_site(dir.path(), |c| {
        c.uploads = vec![offload::config::UploadRouteConfig {
            path: "/upload".into(),
            mode: offload::config::UploadMode::Respond,
            ..Default::default()
        }];
    })
    .await;
    // Each file on its own: a type the route refuses (415) is as safe as a download.
    let mut stored = 0;
    for (disposition, content_type, bytes) in [
        (
            "form-data; name=\"a\"; filename=\"x.svg\"",
            "image/svg+xml",
            SVG,
        ),
        (
            "form-data; name=\"b\"; filename=\"x.html\"",
            "text/html",
            HTML,
        ),
        (
            "form-data; name=\"c\"; filename=\"x.png\"",
            "image/png",
            HTML,
        ),
        (
            "form-data; name=\"d\"; filename=\"x.jpg\"",
            "text/html",
            SVG,
        ),
        ("form-data; name=\"e\"; filename=\"x.xml\"", "text/xml", SVG),
    ] {
        let body = multipart("XyZ", &[(disposition, content_type, bytes)]);
        let resp = client()
            .post(proxy.url("/upload"))
            .header("content-type", "multipart/form-data; boundary=XyZ")
            .body(body)
            .send()
            .await
            .expect("upload");
        let status = resp.status();
        let json: serde_json::Value = resp.json().await.expect("json");
        if status == 415 {
            continue;
        }
        assert_eq!(status, 201, "{disposition}: {json}");
        let key = json["files"][0]["key"].as_str().expect("key").to_string();
        let resp = client()
            .get(proxy.url(&format!("/_offload/{}", offload::store::encode_key(&key))))
            .send()
            .await
            .expect("get");
        assert_eq!(resp.status(), 200, "{key}");
        assert!(
            !runs_in_browser(resp.headers()),
            "{key}: {:?}",
            resp.headers()
        );
        stored += 1;
    }
    assert!(
        stored >= 2,
        "only {stored} of the files were accepted at all"
    );

    // Pulled from the app (a page names it), then served from the store.
    app.serve_file("/wp-content/uploads/logo.svg", "image/svg+xml", SVG);
    app.serve_file(
        "/page.html",
        "text/html",
        "<img src=\"/wp-content/uploads/logo.svg\">",
    );
    let page = client()
        .get(proxy.url("/page.html"))
        .send()
        .await
        .expect("page");
    assert_eq!(page.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while store
        .head("wp-content/uploads/logo.svg")
        .await
        .expect("head")
        .is_none()
    {
        assert!(Instant::now() < deadline, "the SVG was never pulled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.remove_file("/wp-content/uploads/logo.svg");
    for path in [
        "/_offload/wp-content/uploads/logo.svg",
        "/wp-content/uploads/logo.svg",
    ] {
        let resp = client().get(proxy.url(path)).send().await.expect("get");
        assert_eq!(resp.status(), 200, "{path}");
        assert!(
            !runs_in_browser(resp.headers()),
            "{path}: {:?}",
            resp.headers()
        );
    }
}

/// A request that reaches the app's upload script by another spelling of its path gets
/// the upload route and its checks (here a PHP file refused, 415), as nginx matches its
/// locations on the normalised path; before, `//upload` and the like went to the app as
/// they were, PHP file and all, and nothing reached the store.
#[tokio::test]
async fn other_spellings_of_an_upload_path_get_its_route() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (app, proxy, _) = fs_site(dir.path(), |c| {
        c.uploads = vec![offload::config::UploadRouteConfig {
            path: "/upload".into(),
            mode: offload::config::UploadMode::Replace,
            ..Default::default()
        }];
    })
    .await;
    let b = "XyZ";
    let shell = (
        "form-data; name=\"f\"; filename=\"shell.php\"",
        "application/x-php",
    );
    let body = multipart(b, &[(shell.0, shell.1, b"<?php system($_GET['c']); ?>")]);
    // As Apache (and nginx's location matching) resolve them: the same script.
    for target in [
        "/upload",
        "//upload",
        "/./upload",
        "/x/../upload",
        "/%75pload",
        "/upload/",
        "/upload;x",
        "/UPLOAD",
    ] {
        let head = format!(
            "POST {target} HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\
             Content-Type: multipart/form-data; boundary={b}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let mut request = head.into_bytes();
        request.extend_from_slice(&body);
        let answer = raw_exchange(proxy.addr, &request, Duration::from_secs(10)).await;
        assert!(answer.starts_with("HTTP/1.1 415 "), "{target}: {answer}");
    }
    assert_eq!(app.seen(), Vec::<String>::new(), "the app got a PHP file");
}

/// Hostile file names in replace mode: whatever they hold, the fields sent on to the app
/// stay the fields offload meant to send.
#[tokio::test]
async fn hostile_filenames_never_break_the_fields_replace_mode_sends() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_app, proxy, _) = fs_site(dir.path(), |c| {
        c.uploads = vec![offload::config::UploadRouteConfig {
            path: "/replace".into(),
            mode: offload::config::UploadMode::Replace,
            ..Default::default()
        }];
    })
    .await;
    let b = "XyZ";
    let injected = format!(
        "evil%0D%0A--{b}%0D%0AContent-Disposition%3A%20form-data%3B%20name%3D%22injected%22%0D%0A%0D%0Apwned%0D%0A--{b}--%0D%0A.jpg"
    );
    let star = format!("form-data; name=\"f1\"; filename*=UTF-8''{injected}");
    let body = multipart(
        b,
        &[
            (star.as_str(), "image/jpeg", b"\xff\xd8\xff\xe0 one"),
            (
                "form-data; name=\"f2\"; filename=\"a\\\"; name=\\\"injected\\\".jpg\"",
                "image/jpeg",
                b"\xff\xd8\xff\xe0 two",
            ),
            (
                "form-data; name=\"f3\"; filename=\"..\\\\..\\\\x\u{202e}gnp.jpg\"",
                "image/jpeg",
                b"\xff\xd8\xff\xe0 three",
            ),
        ],
    );
    let resp = client()
        .post(proxy.url("/replace"))
        .header("content-type", format!("multipart/form-data; boundary={b}"))
        .body(body)
        .send()
        .await
        .expect("upload");
    let status = resp.status();
    let text = resp.text().await.expect("body");
    if status.is_client_error() {
        // Refusing a malformed part is fine too; it must say why.
        eprintln!("replace-mode upload refused ({status}): {text}");
        assert!(text.contains("error"), "{text}");
        return;
    }
    assert_eq!(status, 200, "{text}");
    let echo = crate::support::app::Echo::parse(&text);
    let ct = echo.one("content-type").expect("content type").to_string();
    let boundary = multer::parse_boundary(&ct).expect("boundary");
    let stream = futures_util::stream::once(async move {
        Ok::<_, std::io::Error>(bytes::Bytes::from(echo.body_head.clone()))
    });
    let mut form = multer::Multipart::new(stream, boundary);
    let mut names = Vec::new();
    while let Some(field) = form.next_field().await.expect("well-formed multipart") {
        let name = field.name().unwrap_or_default().to_string();
        let value = field.text().await.expect("field text");
        assert!(
            !value.contains(['\r', '\n', '\0', '\u{202e}']),
            "{name} = {value:?}"
        );
        names.push(name);
    }
    names.sort();
    let mut expected = vec!["title".to_string()];
    for f in ["f1", "f2", "f3"] {
        for suffix in ["content_type", "filename", "key", "sha256", "size", "url"] {
            expected.push(format!("{f}[{suffix}]"));
        }
    }
    expected.sort();
    assert_eq!(names, expected);
}
