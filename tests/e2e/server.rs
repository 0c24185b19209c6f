//! The listener: TLS with ALPN, slowloris defence, idle connections, graceful shutdown.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::support::app::Echo;
use crate::support::process::{OffloadProcess, activated};
use crate::support::raw::{RawApp, read_head};
use crate::support::{
    App, Proxy, app_and_proxy, client, config_for, get_text, h2_client, raw_body, raw_exchange,
    says_close,
};

#[tokio::test]
async fn tls_with_alpn_h2_and_http1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).expect("write cert");
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).expect("write key");

    let app = App::start().await;
    let mut config = config_for(app.addr);
    config.server.tls = Some(tls_config(cert_path, key_path, false));
    let proxy = Proxy::start(config).await;
    let root = reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).expect("root");
    let url = format!("https://localhost:{}/t", proxy.addr.port());

    for http1_only in [false, true] {
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .use_rustls_tls()
            .add_root_certificate(root.clone())
            .resolve("localhost", proxy.addr);
        if http1_only {
            builder = builder.http1_only();
        }
        let resp = builder
            .build()
            .expect("client")
            .get(&url)
            .send()
            .await
            .expect("TLS request");
        let expected = if http1_only {
            http::Version::HTTP_11
        } else {
            http::Version::HTTP_2
        };
        assert_eq!(resp.version(), expected);
        let echo = Echo::parse(&resp.text().await.expect("body"));
        assert_eq!(echo.one("x-forwarded-proto"), Some("https"));
        assert!(
            echo.one("forwarded")
                .is_some_and(|f| f.ends_with("proto=https"))
        );
    }
}

/// Plain HTTP sent to the TLS port gets a `400` that says so (as nginx answers), not a TLS
/// alert; the app never sees it, and it is counted (and logged) as a refused request.
#[tokio::test]
async fn plain_http_on_the_tls_port_is_400_naming_the_mistake() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key, _) = write_localhost_certificate(dir.path());
    let app = App::start().await;
    let mut config = config_for(app.addr);
    config.server.tls = Some(tls_config(cert, key, false));
    let proxy = Proxy::start(config).await;
    let response = raw_exchange(
        proxy.addr,
        b"GET /page HTTP/1.1\r\nHost: localhost\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        response.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{response}"
    );
    assert_eq!(
        raw_body(&response),
        "plain HTTP request sent to the HTTPS port: use https://\n"
    );
    assert!(app.seen().is_empty(), "{:?}", app.seen());
    // Counted as a refused request, as hyper's 400s are.
    let counted = "offload_requests_total{kind=\"refused\",class=\"4xx\"} 1";
    let text = proxy.metrics_until(counted).await;
    assert!(text.contains(counted), "{text}");
}

/// `server.tls.listen` beside `server.listen`: TLS on one, plain HTTP on the other, each
/// request told which it came on; with `redirect_http`, plain requests get a 308 to HTTPS but
/// for ACME's challenges.
#[tokio::test]
async fn tls_and_plain_http_on_listeners_of_their_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key, cert_pem) = write_localhost_certificate(dir.path());
    let app = App::start().await;
    let root = reqwest::Certificate::from_pem(cert_pem.as_bytes()).expect("root");
    for redirect_http in [false, true] {
        let mut config = config_for(app.addr);
        config.server.tls = Some(offload::config::TlsConfig {
            redirect_http,
            ..tls_config(cert.clone(), key.clone(), true)
        });
        let proxy = Proxy::start(config).await;
        let tls_addr = proxy.tls_addr.expect("a TLS listener");
        let https = reqwest::Client::builder()
            .no_proxy()
            .use_rustls_tls()
            .add_root_certificate(root.clone())
            .resolve("localhost", tls_addr)
            .build()
            .expect("client");
        let resp = https
            .get(format!("https://localhost:{}/t?s", tls_addr.port()))
            .send()
            .await
            .expect("over TLS");
        let echo = Echo::parse(&resp.text().await.expect("body"));
        assert_eq!(echo.one("x-forwarded-proto"), Some("https"));

        let plain = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let resp = plain
            .post(format!("http://{}/form?x=1", proxy.addr))
            .header("host", "site.test:8080")
            .body("a=b")
            .send()
            .await
            .expect("plain");
        if redirect_http {
            assert_eq!(resp.status(), 308);
            assert_eq!(
                resp.headers()["location"],
                format!("https://site.test:{}/form?x=1", tls_addr.port()).as_str()
            );
            let posts = app
                .seen()
                .iter()
                .filter(|s| s.starts_with("POST /form"))
                .count();
            assert_eq!(
                posts, 1,
                "only the round without the redirect reached the app"
            );
        } else {
            assert_eq!(resp.status(), 200);
            let echo = Echo::parse(&resp.text().await.expect("body"));
            assert_eq!(echo.one("x-forwarded-proto"), Some("http"));
            assert_eq!(echo.body_len, 3);
        }
        // ACME's HTTP-01 challenge reaches the app either way.
        let resp = plain
            .get(format!(
                "http://{}/.well-known/acme-challenge/t0k3n",
                proxy.addr
            ))
            .send()
            .await
            .expect("challenge");
        assert_eq!(resp.status(), 200);
        let echo = Echo::parse(&resp.text().await.expect("body"));
        assert_eq!(echo.target, "/.well-known/acme-challenge/t0k3n");
    }
}

/// A self-signed certificate for `localhost` and its key written into `dir`: their paths,
/// and the certificate's PEM (for a client to trust).
fn write_localhost_certificate(dir: &std::path::Path) -> (PathBuf, PathBuf, String) {
    let (cert_pem, key_pem, _) = localhost_certificate();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, &cert_pem).expect("write cert");
    std::fs::write(&key, &key_pem).expect("write key");
    (cert, key, cert_pem)
}

/// `server.tls` with `cert` and `key`: on `server.listen` alone, or with a listener of its
/// own on a free port of 127.0.0.1; no redirect, no PROXY header.
fn tls_config(cert: PathBuf, key: PathBuf, own_listener: bool) -> offload::config::TlsConfig {
    offload::config::TlsConfig {
        cert,
        key,
        listen: own_listener.then(|| "127.0.0.1:0".parse().expect("address")),
        redirect_http: false,
        proxy_protocol: None,
    }
}

/// A self-signed certificate for `localhost`: its PEM, its key's PEM and its DER.
fn localhost_certificate() -> (String, String, Vec<u8>) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let der = cert.cert.der().to_vec();
    (cert.cert.pem(), cert.key_pair.serialize_pem(), der)
}

/// A TLS client trusting each of `certs` (PEM), with no session resumption.
fn tls_client(certs: &[&str]) -> tokio_rustls::TlsConnector {
    tls_client_offering(certs, &[])
}

/// [`tls_client`], offering `alpn` in its ClientHello.
fn tls_client_offering(certs: &[&str], alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for pem in certs {
        for cert in rustls_pemfile::certs(&mut pem.as_bytes()) {
            roots.add(cert.expect("PEM")).expect("root");
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Full handshakes only: a resumed session shows the certificate of the one it resumes.
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

/// Once ALPN has settled on `h2`, the server's SETTINGS (its stream limit among them) go out
/// at once, before the client's preface, as nginx sends them: a client that opens many
/// streams in its first flight then knows the limit, and none of them is refused.
#[tokio::test]
async fn settings_go_out_as_soon_as_alpn_settles_on_h2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key, cert_pem) = write_localhost_certificate(dir.path());
    let app = App::start().await;
    let mut config = config_for(app.addr);
    config.server.http2_max_concurrent_streams = 8;
    config.server.tls = Some(tls_config(cert, key, false));
    let proxy = Proxy::start(config).await;
    let connector = tls_client_offering(&[&cert_pem], &[b"h2", b"http/1.1"]);
    let (mut tls, _) = tls_connect(&connector, proxy.addr).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut head = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(2), tls.read_exact(&mut head))
        .await
        .expect("SETTINGS before the client said anything")
        .expect("a frame");
    assert_eq!(head[3], 0x4, "SETTINGS first: {head:?}");
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    tls.read_exact(&mut payload)
        .await
        .expect("SETTINGS payload");
    assert_eq!(max_concurrent_streams(&payload), Some(8));
}

/// A TLS connection to `addr` as `localhost`, and the certificate it was shown (DER).
async fn tls_connect(
    connector: &tokio_rustls::TlsConnector,
    addr: std::net::SocketAddr,
) -> (tokio_rustls::client::TlsStream<TcpStream>, Vec<u8>) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tls = connector.connect(name, tcp).await.expect("handshake");
    let shown = tls
        .get_ref()
        .1
        .peer_certificates()
        .expect("peer certificate")[0]
        .to_vec();
    (tls, shown)
}

/// GET `path` on an open HTTP/1.1 connection; the response's status line.
async fn status_line<S: AsyncReadExt + AsyncWriteExt + Unpin>(
    stream: &mut S,
    path: &str,
) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("request");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(2).any(|w| w == b"\r\n") {
        let n = stream.read(&mut buf).await.expect("response");
        assert!(n > 0, "closed before a status line");
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    text.lines().next().unwrap_or_default().to_string()
}

/// A reload whose `upstream.url` names offload's own listener (the app moved to its port in
/// the same edit that moved `server.listen`, which takes a restart) is refused, as the same
/// file is at start: applied, every request would come back to offload.
#[tokio::test]
async fn sighup_refuses_an_upstream_at_offloads_own_listener() {
    let app = App::start().await;
    let config =
        |upstream: std::net::SocketAddr| format!("[upstream]\nurl = \"http://{upstream}\"\n");
    let process =
        OffloadProcess::start_with_config(app.addr, Some(&config(app.addr)), &[], &[]).await;
    let logs = process
        .reload(
            &config(process.addr),
            "SIGHUP: configuration not reloaded; serving with the previous one",
        )
        .await;
    assert!(logs.contains("is offload's own server.listen"), "{logs}");
    let mut stream = TcpStream::connect(process.addr).await.expect("connect");
    let echo = echo_with_forwarded_for(&mut stream).await;
    assert_eq!(echo.one("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(app.seen().len(), 1, "still the app");
}

/// SIGHUP reloads what can change while serving (nginx's reload): once the file names
/// another app and trusts the client's proxy, the next request on a connection opened before
/// goes to the new app with its X-Forwarded-For kept; a setting fixed at start
/// (`worker_threads`) is named as taking a restart; a file that no longer loads changes
/// nothing.
#[tokio::test]
async fn sighup_reloads_the_configuration() {
    let (first, second) = (App::start().await, App::start().await);
    let config = |app: std::net::SocketAddr, workers: u32, trusted: &str| {
        format!(
            "[server]\nworker_threads = {workers}\n{trusted}[upstream]\nurl = \"http://{app}\"\n"
        )
    };
    let started_with = config(first.addr, 1, "");
    let process =
        OffloadProcess::start_with_config(first.addr, Some(&started_with), &[], &[]).await;
    process
        .reload(&started_with, "SIGHUP: the configuration is unchanged")
        .await;
    let mut stream = TcpStream::connect(process.addr).await.expect("connect");
    let echo = echo_with_forwarded_for(&mut stream).await;
    assert_eq!(
        echo.one("x-forwarded-for"),
        Some("127.0.0.1"),
        "not trusted yet"
    );
    assert_eq!((first.seen().len(), second.seen().len()), (1, 0));

    let trusted = "trusted_proxies = [\"127.0.0.1/32\"]\n";
    let edited = config(second.addr, 2, trusted);
    let logs = process
        .reload(&edited, "SIGHUP: configuration reloaded")
        .await;
    assert!(
        logs.contains("server.trusted_proxies, upstream.url"),
        "{logs}"
    );
    assert!(
        logs.contains("SIGHUP: these settings take a restart"),
        "{logs}"
    );
    assert!(logs.contains("server.worker_threads"), "{logs}");
    let echo = echo_with_forwarded_for(&mut stream).await;
    assert_eq!(echo.one("x-forwarded-for"), Some("6.6.6.6, 127.0.0.1"));
    assert_eq!(
        (first.seen().len(), second.seen().len()),
        (1, 1),
        "the same connection's next request went to the new app"
    );

    let mistyped = "[server]\nidle_timeot = \"2m\"\n";
    let logs = process
        .reload(mistyped, "SIGHUP: the configuration does not load")
        .await;
    assert!(logs.contains("did you mean `idle_timeout`"), "{logs}");
    let echo = echo_with_forwarded_for(&mut stream).await;
    assert_eq!(echo.one("x-forwarded-for"), Some("6.6.6.6, 127.0.0.1"));
    assert_eq!((first.seen().len(), second.seen().len()), (1, 2));
}

/// An app that answers `ok` on keep-alive connections, counting those open.
async fn app_counting_connections() -> (RawApp, Arc<AtomicUsize>) {
    let open = Arc::new(AtomicUsize::new(0));
    let app = RawApp::start({
        let open = Arc::clone(&open);
        move |mut stream, _| {
            let open = Arc::clone(&open);
            async move {
                open.fetch_add(1, Ordering::SeqCst);
                loop {
                    let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                    if stream.write_all(answer).await.is_err() {
                        break;
                    }
                    if read_head(&mut stream).await.is_none() {
                        break;
                    }
                }
                open.fetch_sub(1, Ordering::SeqCst);
            }
        }
    })
    .await;
    (app, open)
}

/// A reload that names another app closes the idle connections to the one before, as
/// nginx's old workers close theirs, rather than holding them for `pool_idle_timeout`.
#[tokio::test]
async fn sighup_to_another_app_closes_the_idle_connections_to_the_first() {
    let ((first, first_open), (second, _)) = (
        app_counting_connections().await,
        app_counting_connections().await,
    );
    let config = |app: std::net::SocketAddr| {
        format!(
            "[server]\nworker_threads = 1\n[upstream]\nurl = \"http://{app}\"\npool_idle_timeout = \"5m\"\n"
        )
    };
    let process =
        OffloadProcess::start_with_config(first.addr, Some(&config(first.addr)), &[], &[]).await;
    let (status, body) = get_text(&format!("http://{}/a", process.addr)).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    assert_eq!(
        first_open.load(Ordering::SeqCst),
        1,
        "one pooled connection"
    );

    process
        .reload(&config(second.addr), "SIGHUP: configuration reloaded")
        .await;
    let (status, _) = get_text(&format!("http://{}/b", process.addr)).await;
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    while first_open.load(Ordering::SeqCst) > 0 {
        assert!(
            Instant::now() < deadline,
            "the first app's idle connection is still open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A reloaded `server.max_connections` applies at once: raised, a connection waiting in
/// the backlog is served; lowered, the open connections carry on and a new one waits until
/// fewer than the limit are open. The open ones stay busy throughout (a request at the app
/// right after their first answer, sent with it): idle ones would be closed to make room.
#[tokio::test]
async fn sighup_resizes_the_connection_limit() {
    let app = App::start().await;
    let config = |most: u32| max_connections_config(app.addr, most);
    let process = OffloadProcess::start_with_config(app.addr, Some(&config(1)), &[], &[]).await;
    let mut first = connect_and_ask_then_wait(process.addr).await;
    let answer = read_response(&mut first).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let mut second = connect_and_ask_then_wait(process.addr).await;
    assert_unanswered(&mut second, "one connection allowed").await;

    process
        .reload(&config(2), "SIGHUP: configuration reloaded")
        .await;
    let answer = read_response(&mut second).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    process
        .reload(&config(1), "SIGHUP: configuration reloaded")
        .await;
    // Neither open one is cut: no answer and no close.
    assert_unanswered(&mut first, "first still open").await;
    assert_unanswered(&mut second, "second still open").await;
    let mut third = connect_and_ask(process.addr).await;
    assert_unanswered(&mut third, "two open, one allowed").await;
    drop(first);
    assert_unanswered(&mut third, "one open, one allowed").await;
    drop(second);
    let answer = read_response(&mut third).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// While a lowered `server.max_connections` waits for open connections to go, those kept
/// alive between requests close to make room for a new one that waits, as at the limit:
/// it does not wait for their `header_read_timeout` (10 s).
#[tokio::test]
async fn after_a_lowering_idle_connections_make_room() {
    let app = App::start().await;
    let config = |most: u32| max_connections_config(app.addr, most);
    let process = OffloadProcess::start_with_config(app.addr, Some(&config(3)), &[], &[]).await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut stream = connect_and_ask(process.addr).await;
        let answer = read_response(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        idle.push(stream);
    }
    process
        .reload(&config(1), "SIGHUP: configuration reloaded")
        .await;
    let mut waiting = connect_and_ask(process.addr).await;
    let answer = tokio::time::timeout(Duration::from_secs(5), read_response(&mut waiting))
        .await
        .expect("answered while the idle ones are open");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// A config file of offload in front of `app` with `server.max_connections = most`.
fn max_connections_config(app: std::net::SocketAddr, most: u32) -> String {
    format!("[server]\nmax_connections = {most}\n[upstream]\nurl = \"http://{app}\"\n")
}

/// A new connection to `addr` with GET /echo sent on it.
async fn connect_and_ask(addr: std::net::SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("request");
    stream
}

/// A new connection to `addr` with GET /echo and, behind it, a request the app answers only
/// after 30 s: once answered, the connection is busy rather than idle.
async fn connect_and_ask_then_wait(addr: std::net::SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(
            b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\nGET /sleep/30000 HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await
        .expect("requests");
    stream
}

/// Asserts that nothing comes back on `stream` within 300 ms.
async fn assert_unanswered(stream: &mut TcpStream, why: &str) {
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut byte)).await;
    assert!(read.is_err(), "{why}: answered {read:?}");
}

/// A reloaded `server.http2` applies to the TLS handshakes from then on: ALPN offers `h2`
/// once it is on, and no longer once it is off.
#[tokio::test]
async fn sighup_turns_http2_on_and_off_for_tls_handshakes_afterwards() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key, cert_pem) = write_localhost_certificate(dir.path());
    let app = App::start().await;
    let config = |http2: bool| {
        format!(
            "[server]\nhttp2 = {http2}\ntls = {{ cert = {:?}, key = {:?} }}\n\
             [upstream]\nurl = \"http://{}\"\n",
            cert.display().to_string(),
            key.display().to_string(),
            app.addr
        )
    };
    let process = OffloadProcess::start_with_config(app.addr, Some(&config(false)), &[], &[]).await;
    let root = reqwest::Certificate::from_pem(cert_pem.as_bytes()).expect("root");
    // A new client, so a new connection, each time: one offering h2 and http/1.1.
    let version_on_a_new_connection = || async {
        let client = reqwest::Client::builder()
            .no_proxy()
            .use_rustls_tls()
            .add_root_certificate(root.clone())
            .resolve("localhost", process.addr)
            .build()
            .expect("client");
        let url = format!("https://localhost:{}/echo", process.addr.port());
        let resp = client.get(url).send().await.expect("TLS request");
        assert_eq!(resp.status(), 200);
        resp.version()
    };
    assert_eq!(version_on_a_new_connection().await, http::Version::HTTP_11);

    process
        .reload(&config(true), "SIGHUP: configuration reloaded")
        .await;
    assert_eq!(version_on_a_new_connection().await, http::Version::HTTP_2);

    process
        .reload(&config(false), "SIGHUP: configuration reloaded")
        .await;
    assert_eq!(version_on_a_new_connection().await, http::Version::HTTP_11);
}

/// A reloaded `server.header_read_timeout` applies to connections accepted afterwards (a
/// slow head is cut off after the new time), while one accepted before keeps its own.
#[tokio::test]
async fn sighup_applies_timeouts_to_connections_accepted_afterwards() {
    let app = App::start().await;
    let config = |timeout: &str| {
        format!(
            "[server]\nheader_read_timeout = \"{timeout}\"\n[upstream]\nurl = \"http://{}\"\n",
            app.addr
        )
    };
    let process = OffloadProcess::start_with_config(app.addr, Some(&config("30s")), &[], &[]).await;
    let mut before = TcpStream::connect(process.addr).await.expect("connect");
    echo_with_forwarded_for(&mut before).await;

    let logs = process
        .reload(&config("400ms"), "SIGHUP: configuration reloaded")
        .await;
    assert!(logs.contains("server.header_read_timeout"), "{logs}");
    let partial_head = b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Slow: ";
    let mut after = TcpStream::connect(process.addr).await.expect("connect");
    after.write_all(partial_head).await.expect("partial head");
    before.write_all(partial_head).await.expect("partial head");
    let started = Instant::now();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), after.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the new connection still open after 5 s");
    assert!(started.elapsed() < Duration::from_secs(3));

    let mut byte = [0u8; 1];
    let waited = tokio::time::timeout(Duration::from_millis(600), before.read(&mut byte)).await;
    assert!(waited.is_err(), "the older connection was cut: {waited:?}");
    before
        .write_all(b"1\r\n\r\n")
        .await
        .expect("rest of the head");
    let response = read_response(&mut before).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}

/// A reload that leaves `[upstream]` as it was keeps the app connections open (a reload
/// for a rewriting rule does not reconnect to the app); one that changes it opens new ones.
#[tokio::test]
async fn sighup_keeps_app_connections_unless_upstream_changed() {
    let app = App::start().await;
    let config = |extra: &str| {
        format!(
            "[server]\nworker_threads = 1\n[upstream]\nurl = \"http://{}\"\n{extra}",
            app.addr
        )
    };
    let process = OffloadProcess::start_with_config(app.addr, Some(&config("")), &[], &[]).await;
    let mut stream = TcpStream::connect(process.addr).await.expect("connect");
    echo_with_forwarded_for(&mut stream).await;
    assert_eq!(app.connections(), 1);

    let logs = process
        .reload(
            &config("[log]\nquery = true\n"),
            "SIGHUP: configuration reloaded",
        )
        .await;
    assert!(logs.contains("log.query"), "{logs}");
    echo_with_forwarded_for(&mut stream).await;
    assert_eq!(
        (app.seen().len(), app.connections()),
        (2, 1),
        "the pooled app connection served the request after the reload"
    );

    let slower = "[log]\nquery = true\n";
    let slower = config(slower).replace("[log]", "response_timeout = \"2m\"\n[log]");
    let logs = process
        .reload(&slower, "SIGHUP: configuration reloaded")
        .await;
    assert!(logs.contains("upstream.response_timeout"), "{logs}");
    echo_with_forwarded_for(&mut stream).await;
    assert_eq!(
        (app.seen().len(), app.connections()),
        (3, 2),
        "a new pool connected anew"
    );
}

/// GET /echo on an open connection with `X-Forwarded-For: 6.6.6.6`: what the app heard.
async fn echo_with_forwarded_for<S: AsyncReadExt + AsyncWriteExt + Unpin>(stream: &mut S) -> Echo {
    stream
        .write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n")
        .await
        .expect("request");
    let response = read_response(stream).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    Echo::parse(raw_body(&response))
}

#[tokio::test]
async fn sighup_serves_a_renewed_certificate_and_keeps_the_old_on_a_bad_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let (old_pem, old_key, old_der) = localhost_certificate();
    let (new_pem, new_key, new_der) = localhost_certificate();
    std::fs::write(&cert_path, &old_pem).expect("write cert");
    std::fs::write(&key_path, &old_key).expect("write key");
    let app = App::start().await;
    let config = format!(
        "[server]\ntls = {{ cert = {:?}, key = {:?} }}\n",
        cert_path.display().to_string(),
        key_path.display().to_string()
    );
    let process = OffloadProcess::start_with_config(app.addr, Some(&config), &[], &[]).await;
    let client = tls_client(&[&old_pem, &new_pem]);
    let (mut before, shown) = tls_connect(&client, process.addr).await;
    assert_eq!(shown, old_der);

    // Renewed: the new pair is written and the process told.
    std::fs::write(&cert_path, &new_pem).expect("write cert");
    std::fs::write(&key_path, &new_key).expect("write key");
    process.signal(libc::SIGHUP);
    process
        .wait_for_log("SIGHUP: TLS certificate reloaded")
        .await;
    let (mut after, shown) = tls_connect(&client, process.addr).await;
    assert_eq!(shown, new_der, "new handshakes get the renewed certificate");
    assert_eq!(status_line(&mut after, "/t").await, "HTTP/1.1 200 OK");
    assert_eq!(
        status_line(&mut before, "/t").await,
        "HTTP/1.1 200 OK",
        "a connection open before the reload carries on"
    );

    // Half renewed: the old certificate with the new key does not fit; nothing changes.
    std::fs::write(&cert_path, &old_pem).expect("write cert");
    process.signal(libc::SIGHUP);
    let logs = process.wait_for_log("TLS certificate not reloaded").await;
    assert!(
        logs.contains("certificate and key do not fit together"),
        "{logs}"
    );
    let (mut still, shown) = tls_connect(&client, process.addr).await;
    assert_eq!(shown, new_der, "the certificate served before stays");
    assert_eq!(status_line(&mut still, "/t").await, "HTTP/1.1 200 OK");
}

/// The served certificate's end is watched: one near it is warned of at start, an expired
/// one at a reload (nginx serves either without a word), and `/metrics` shows the end of
/// the one served, which is what an alert watches between reloads.
#[tokio::test]
async fn the_certificates_end_is_warned_of_and_shown_in_metrics() {
    const DAY: u64 = 24 * 3600;
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let write = |not_before: u64, not_after: u64| {
        let (cert, key) = crate::support::certificate_valid(not_before, not_after);
        std::fs::write(&cert_path, cert).expect("write cert");
        std::fs::write(&key_path, key).expect("write key");
    };
    let now = crate::support::unix_now();
    let rfc3339 = |secs: u64| {
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(secs))
            .to_string()
    };
    let app = App::start().await;
    let config = format!(
        "[server]\ntls = {{ cert = {:?}, key = {:?} }}\n",
        cert_path.display().to_string(),
        key_path.display().to_string()
    );
    let admin = ["--admin-listen", "127.0.0.1:0"];
    let ends_at = |secs: u64| {
        let cert = cert_path.display();
        format!("offload_tls_certificate_expiry_timestamp_seconds{{cert=\"{cert}\"}} {secs}\n")
    };

    // Three days left of ninety: renewal failed, or was not reloaded.
    write(now - 87 * DAY, now + 3 * DAY);
    let process = OffloadProcess::start_with_config(app.addr, Some(&config), &admin, &[]).await;
    let metrics = format!("http://{}/metrics", process.admin_addr());
    let expected = format!(
        "server.tls.cert: the certificate expires at {}; renew it, then send SIGHUP",
        rfc3339(now + 3 * DAY)
    );
    let logs = process.wait_for_log(&expected).await;
    let warning = logs
        .lines()
        .find(|l| l.contains(&expected))
        .expect("warned");
    assert!(warning.contains("\"level\":\"WARN\""), "{warning}");
    assert!(get_text(&metrics).await.1.contains(&ends_at(now + 3 * DAY)));

    // Expired: served (clients refuse it), and said so louder.
    write(now - 90 * DAY, now - DAY);
    process.signal(libc::SIGHUP);
    let expected = format!(
        "server.tls.cert: the certificate expired at {}; clients refuse it",
        rfc3339(now - DAY)
    );
    let logs = process.wait_for_log(&expected).await;
    let error = logs.lines().find(|l| l.contains(&expected)).expect("said");
    assert!(error.contains("\"level\":\"ERROR\""), "{error}");
    assert!(get_text(&metrics).await.1.contains(&ends_at(now - DAY)));

    // Renewed: nothing to say, and the metric moves on.
    write(now - DAY, now + 89 * DAY);
    process.signal(libc::SIGHUP);
    let logs = process
        .wait_for_logs("SIGHUP: TLS certificate reloaded", 2)
        .await;
    let (text, warned) = (
        get_text(&metrics).await.1,
        "server.tls.cert: the certificate",
    );
    assert!(text.contains(&ends_at(now + 89 * DAY)), "{text}");
    assert_eq!(logs.matches(warned).count(), 2, "{logs}");
}

/// `Type=notify`: systemd hears READY=1 once offload serves, RELOADING=1 and READY=1 around
/// a SIGHUP's certificate reload, and STOPPING=1 when the shutdown begins.
#[tokio::test]
async fn systemd_hears_when_offload_is_ready_reloads_and_stops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let notify_path = dir.path().join("notify.sock");
    let systemd = tokio::net::UnixDatagram::bind(&notify_path).expect("bind");
    let (cert, key, _) = localhost_certificate();
    std::fs::write(dir.path().join("cert.pem"), cert).expect("write cert");
    std::fs::write(dir.path().join("key.pem"), key).expect("write key");
    let config = format!(
        "[server]\ntls = {{ cert = {:?}, key = {:?} }}\n",
        dir.path().join("cert.pem").display().to_string(),
        dir.path().join("key.pem").display().to_string()
    );
    let app = App::start().await;
    let notify_socket = notify_path.to_str().expect("UTF-8 path");
    let env = [("NOTIFY_SOCKET", notify_socket)];
    let mut process = OffloadProcess::start_with_config(app.addr, Some(&config), &[], &env).await;
    assert_eq!(notification(&systemd).await, "READY=1");

    process.signal(libc::SIGHUP);
    assert_eq!(notification(&systemd).await, "RELOADING=1");
    assert_eq!(notification(&systemd).await, "READY=1");
    process
        .wait_for_log("SIGHUP: TLS certificate reloaded")
        .await;

    process.signal(libc::SIGTERM);
    assert_eq!(notification(&systemd).await, "STOPPING=1");
    let exit = process.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(exit.and_then(|e| e.code()), Some(0), "{}", process.logs());
}

/// systemd's watchdog (`WatchdogSec=`, passed as `WATCHDOG_USEC`): offload says
/// `WATCHDOG=1` every half interval, after each of its workers ran a task.
#[tokio::test]
async fn systemd_watchdog_hears_from_offload_while_it_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let notify_path = dir.path().join("notify.sock");
    let systemd = tokio::net::UnixDatagram::bind(&notify_path).expect("bind");
    let app = App::start().await;
    let notify_socket = notify_path.to_str().expect("UTF-8 path");
    let env = [
        ("NOTIFY_SOCKET", notify_socket),
        ("WATCHDOG_USEC", "400000"),
        ("OFFLOAD_SERVER_WORKER_THREADS", "2"),
    ];
    let process = OffloadProcess::start_with_config(app.addr, None, &[], &env).await;
    assert_eq!(notification(&systemd).await, "READY=1");
    let started = tokio::time::Instant::now();
    for _ in 0..3 {
        assert_eq!(notification(&systemd).await, "WATCHDOG=1");
    }
    // Three pings, every 0.2 s, take 0.6 s: not a burst (bounded loosely, for a busy machine).
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    let mut stream = TcpStream::connect(process.addr).await.expect("connect");
    assert_eq!(status_line(&mut stream, "/t").await, "HTTP/1.1 200 OK");
}

/// The next message on the notification socket, without its trailing newline.
async fn notification(socket: &tokio::net::UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(10), socket.recv(&mut buf))
        .await
        .expect("a notification within 10 s")
        .expect("receive");
    String::from_utf8_lossy(&buf[..n]).trim_end().to_string()
}

/// Socket activation: the listening socket stays open (here in the test, as in systemd)
/// while offload restarts, so a client connecting between the two processes waits in its
/// backlog and is answered by the next one, rather than refused.
#[tokio::test]
async fn a_socket_passed_by_systemd_keeps_clients_waiting_across_a_restart() {
    let app = App::start().await;
    let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = socket.local_addr().expect("address");
    let mut first = OffloadProcess::start_activated(app.addr, &socket, &[]).await;
    assert_eq!(first.addr, addr, "serves on the passed socket");
    first
        .wait_for_log("listening on a socket passed by systemd")
        .await;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    assert_eq!(status_line(&mut stream, "/first").await, "HTTP/1.1 200 OK");
    drop(stream);

    first.signal(libc::SIGTERM);
    let exit = first.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(exit.and_then(|e| e.code()), Some(0), "{}", first.logs());
    // Nobody serves now; the connection is still made, and its request waits.
    let mut waiting = TcpStream::connect(addr)
        .await
        .expect("connect between the two");
    let _second = OffloadProcess::start_activated(app.addr, &socket, &[]).await;
    let status = tokio::time::timeout(
        Duration::from_secs(10),
        status_line(&mut waiting, "/between"),
    )
    .await
    .expect("answered by the second process");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let seen = app.seen.lock().expect("seen").clone();
    assert_eq!(seen, ["GET /first", "GET /between"]);
}

#[test]
fn a_passed_socket_no_listener_is_configured_for_fails_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let unix = std::os::unix::net::UnixListener::bind(dir.path().join("s")).expect("bind unix");
    for (passed, expected) in [
        (
            socket.as_fd(),
            format!(
                "systemd passed a socket on {}, but none of server.listen",
                socket.local_addr().expect("address")
            ),
        ),
        (unix.as_fd(), "socket activation: descriptor 3".to_string()),
    ] {
        let out = activated(passed)
            .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "off"])
            .args(["--upstream", "http://127.0.0.1:9"])
            .current_dir(dir.path())
            .env_remove("RUST_LOG")
            .env_remove("OFFLOAD_CONFIG")
            .output()
            .expect("run offload");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(&expected), "{expected:?} not in {stderr}");
    }
}

/// Connections busy with a request hold their places: past the limit, new ones wait.
#[tokio::test]
async fn past_max_connections_new_ones_wait_until_one_closes() {
    let app = App::start().await;
    let config = "[server]\nmax_connections = 2\n";
    let process = OffloadProcess::start_with_config(app.addr, Some(config), &[], &[]).await;
    let serving = process.wait_for_log("\"max_connections\":2").await;
    assert!(serving.contains("\"serving\""), "{serving}");
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(process.addr).await.expect("connect");
        stream
            .write_all(b"GET /sleep/30000 HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .expect("request");
        held.push(stream);
    }
    // The third is taken by the kernel's backlog, and not answered while both are busy.
    let mut third = TcpStream::connect(process.addr).await.expect("connect");
    let waiting = tokio::time::timeout(
        Duration::from_millis(500),
        status_line(&mut third, "/bytes/3"),
    )
    .await;
    assert!(waiting.is_err(), "answered past the limit: {waiting:?}");
    process
        .wait_for_log("server.max_connections reached: connections that come meanwhile wait")
        .await;
    drop(held.pop());
    let mut answer = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut answer))
        .await
        .expect("answered once a connection closed")
        .expect("read");
    assert!(
        answer[..n].starts_with(b"HTTP/1.1 200 OK"),
        "{:?}",
        String::from_utf8_lossy(&answer[..n])
    );
}

/// At the limit, connections between requests (kept alive after their answer) close to
/// make room, as nginx reuses its idle keep-alive connections: a new client does not wait
/// for their `header_read_timeout`.
#[tokio::test]
async fn at_max_connections_idle_keep_alive_connections_make_room() {
    let (_app, proxy) = app_and_proxy(|c| c.server.max_connections = 2).await;
    let mut idle = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
        assert_eq!(
            status_line(&mut stream, "/bytes/0").await,
            "HTTP/1.1 200 OK"
        );
        idle.push(stream);
    }
    // Full, but nobody waits: they stay open (RECLAIM_EVERY is 250 ms).
    for stream in &mut idle {
        assert_unanswered(stream, "open while nobody waits").await;
    }
    let mut third = TcpStream::connect(proxy.addr).await.expect("connect");
    let answered =
        tokio::time::timeout(Duration::from_secs(5), status_line(&mut third, "/bytes/3"))
            .await
            .expect("answered while the idle ones are open");
    assert_eq!(answered, "HTTP/1.1 200 OK");
    // The idle ones were closed (no answer was cut: they had none in flight).
    for mut stream in idle {
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
            .await
            .expect("closed");
        assert!(closed.is_ok(), "{closed:?}");
        assert!(
            !String::from_utf8_lossy(&rest).contains("HTTP/1.1"),
            "{rest:?}"
        );
    }
}

/// So do HTTP/2 connections with no stream open, those that never opened one among them
/// (a browser's preconnect): they are closed with a GOAWAY.
#[tokio::test]
async fn at_max_connections_http2_connections_with_no_stream_make_room() {
    let (_app, proxy) = app_and_proxy(|c| c.server.max_connections = 2).await;
    let mut idle = Vec::new();
    for _ in 0..2 {
        let (mut stream, _) = http2_connect(proxy.addr).await;
        http2_ack_settings(&mut stream).await;
        idle.push(stream);
    }
    let mut third = TcpStream::connect(proxy.addr).await.expect("connect");
    let answered =
        tokio::time::timeout(Duration::from_secs(5), status_line(&mut third, "/bytes/3"))
            .await
            .expect("answered while the HTTP/2 ones are open");
    assert_eq!(answered, "HTTP/1.1 200 OK");
    for mut stream in idle {
        let kinds = frame_types_until_closed(&mut stream).await;
        assert!(kinds.contains(&0x7), "a GOAWAY: frame types {kinds:?}");
    }
}

/// At `server.max_connections`, connections waiting on the TLS listener and on the plain one
/// take turns at the places that free up: a busy plain listener does not starve the other.
#[tokio::test]
async fn at_max_connections_the_tls_listener_takes_its_turn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key, cert_pem) = write_localhost_certificate(dir.path());
    let app = App::start().await;
    let mut config = config_for(app.addr);
    config.server.max_connections = 1;
    config.server.tls = Some(tls_config(cert, key, true));
    let proxy = Proxy::start(config).await;
    let tls_addr = proxy.tls_addr.expect("a TLS listener");
    let mut holding = TcpStream::connect(proxy.addr).await.expect("connect");
    assert_eq!(
        status_line(&mut holding, "/bytes/3").await,
        "HTTP/1.1 200 OK"
    );
    // Both wait in their listener's backlog while the one place is taken.
    let mut plain = TcpStream::connect(proxy.addr).await.expect("connect");
    plain
        .write_all(b"GET /bytes/3 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("request");
    let tcp = TcpStream::connect(tls_addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let handshake = tokio::spawn(tls_client(&[&cert_pem]).connect(name, tcp));
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(holding);
    let mut tls = tokio::time::timeout(Duration::from_secs(5), handshake)
        .await
        .expect("the TLS connection is taken first")
        .expect("task")
        .expect("handshake");
    // Busy (an idle one would be closed to make room), it keeps the place.
    tls.write_all(b"GET /sleep/1000 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("request");
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(300), plain.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "the plain one waits for the place: {early:?}"
    );
    let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
        .await
        .expect("the TLS one is answered")
        .expect("read");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK"), "{:?}", &buf[..n]);
    drop(tls);
    let n = tokio::time::timeout(Duration::from_secs(5), plain.read(&mut buf))
        .await
        .expect("then the plain one is served")
        .expect("read");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK"), "{:?}", &buf[..n]);
}

/// `server.proxy_protocol`: the PROXY header's source is the client the app hears of (in
/// X-Forwarded-For), whatever X-Forwarded-For the client sent; a connection without the
/// header is closed unanswered.
#[tokio::test]
async fn a_proxy_protocol_header_names_the_client() {
    let (app, proxy) = app_and_proxy(|c| c.server.proxy_protocol = true).await;
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(
            b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 80\r\n\
              GET /echo HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n",
        )
        .await
        .expect("header and request");
    let response = read_response(&mut stream).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let echo = Echo::parse(raw_body(&response));
    assert_eq!(echo.one("x-forwarded-for"), Some("203.0.113.7"));
    // The next request on the connection is the same client's.
    stream
        .write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("second request");
    let response = read_response(&mut stream).await;
    let echo = Echo::parse(raw_body(&response));
    assert_eq!(echo.one("x-forwarded-for"), Some("203.0.113.7"));

    let seen = app.seen().len();
    let response = crate::support::raw_exchange(
        proxy.addr,
        b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(response.is_empty(), "answered without a header: {response}");
    assert_eq!(app.seen().len(), seen, "nothing reached the app");
}

/// `server.tls.proxy_protocol`: haproxy passing 443 through in TCP mode (`send-proxy`) while
/// it speaks HTTP to port 80 (and says who the client is in X-Forwarded-For): only the TLS
/// listener expects a PROXY header, and each listener keeps to its own.
#[tokio::test]
async fn proxy_protocol_on_the_tls_listener_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key, cert_pem) = write_localhost_certificate(dir.path());
    let app = App::start().await;
    let mut config = config_for(app.addr);
    config.server.tls = Some(offload::config::TlsConfig {
        proxy_protocol: Some(true),
        ..tls_config(cert, key, true)
    });
    let proxy = Proxy::start(config).await;
    let tls_addr = proxy.tls_addr.expect("a TLS listener");
    let connector = tls_client(&[&cert_pem]);
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");

    // TLS: the header first, then the handshake; the header's source is the client.
    let mut tcp = TcpStream::connect(tls_addr).await.expect("connect");
    tcp.write_all(b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\r\n")
        .await
        .expect("PROXY header");
    let mut tls = connector
        .connect(name.clone(), tcp)
        .await
        .expect("handshake after the header");
    let echo = echo_with_forwarded_for(&mut tls).await;
    assert_eq!(echo.one("x-forwarded-for"), Some("203.0.113.7"));
    assert_eq!(echo.one("x-forwarded-proto"), Some("https"));

    // TLS without the header: the ClientHello is no PROXY header; closed, nothing served.
    let seen = app.seen().len();
    let tcp = TcpStream::connect(tls_addr).await.expect("connect");
    let handshake = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .expect("closed rather than left hanging");
    assert!(handshake.is_err(), "a handshake without the header");

    // Plain HTTP needs no header: the peer is the client, its own X-Forwarded-For dropped
    // (127.0.0.1 is no trusted proxy here).
    let response = crate::support::raw_exchange(
        proxy.addr,
        b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 6.6.6.6\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let echo = Echo::parse(raw_body(&response));
    assert_eq!(echo.one("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(echo.one("x-forwarded-proto"), Some("http"));
    assert_eq!(
        app.seen().len(),
        seen + 1,
        "only the plain request reached the app"
    );
}

#[tokio::test]
async fn a_partial_request_head_is_cut_off() {
    let (_app, proxy) =
        app_and_proxy(|c| c.server.header_read_timeout = Duration::from_millis(500)).await;
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .expect("partial head");
    let started = Instant::now();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "connection still open after 5 s");
    assert!(started.elapsed() < Duration::from_secs(3));
    // Dropped unanswered, as nginx does, and counted as a refused head (a 408).
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    let counted = "offload_requests_total{kind=\"refused\",class=\"4xx\"} 1";
    let text = proxy.metrics_until(counted).await;
    assert!(text.contains(counted), "{text}");
}

/// Reads one response with a `Content-Length` body off a kept-alive connection.
async fn read_response<S: AsyncReadExt + Unpin>(stream: &mut S) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await.expect("response bytes");
        assert!(
            n > 0,
            "closed mid-response: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_string)
                })
                .and_then(|v| v.trim().parse().ok())
                .expect("content-length");
            if body.len() >= length {
                return text;
            }
        }
    }
}

#[tokio::test]
async fn a_partial_second_head_on_a_kept_alive_connection_is_cut_off() {
    let (_app, proxy) =
        app_and_proxy(|c| c.server.header_read_timeout = Duration::from_millis(400)).await;
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(b"GET /bytes/3 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("request");
    assert!(read_response(&mut stream).await.starts_with("HTTP/1.1 200"));
    // The next head starts, then trickles: one byte every 100 ms never completes it.
    let started = Instant::now();
    let mut closed = false;
    for byte in b"GET /bytes/3 HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
    {
        if stream.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut rest = Vec::new();
    closed = closed
        || stream
            .read_to_end(&mut rest)
            .await
            .is_ok_and(|_| rest.is_empty());
    assert!(closed, "still open: {:?}", String::from_utf8_lossy(&rest));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let counted = "offload_requests_total{kind=\"refused\",class=\"4xx\"} 1";
    let text = proxy.metrics_until(counted).await;
    assert!(text.contains(counted), "{text}");
}

#[tokio::test]
async fn a_slow_request_body_is_not_a_slow_head() {
    let (_app, proxy) =
        app_and_proxy(|c| c.server.header_read_timeout = Duration::from_millis(300)).await;
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n")
        .await
        .expect("head");
    // The body takes 1.2 s, four times the header timeout.
    for part in [b"abc", b"def", b"ghi", b"jkl"] {
        tokio::time::sleep(Duration::from_millis(300)).await;
        stream.write_all(part).await.expect("body part");
    }
    let response = read_response(&mut stream).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let echo = Echo::parse(raw_body(&response));
    assert_eq!(echo.body_len, 12);
}

#[tokio::test]
async fn oversized_heads_are_refused() {
    let (_app, proxy) = app_and_proxy(|c| {
        c.server.max_header_size = bytesize::ByteSize::kib(8);
        c.server.max_headers = 10;
    })
    .await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let response =
        crate::support::raw_exchange(proxy.addr, big.as_bytes(), Duration::from_secs(5)).await;
    assert!(
        response.is_empty() || response.starts_with("HTTP/1.1 431"),
        "{response}"
    );
    let many: String = (0..20).map(|i| format!("X-H{i}: v\r\n")).collect();
    let request = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    let response =
        crate::support::raw_exchange(proxy.addr, request.as_bytes(), Duration::from_secs(5)).await;
    assert!(
        response.is_empty() || response.starts_with("HTTP/1.1 431"),
        "{response}"
    );
    // Both are counted as requests, refused (there is no duration to show for them).
    let counted = "offload_requests_total{kind=\"refused\",class=\"4xx\"} 2";
    let text = proxy.metrics_until(counted).await;
    assert!(text.contains(counted), "{text}");
    assert!(
        !text.contains("offload_request_duration_seconds_count{kind=\"refused\"}"),
        "{text}"
    );
    // The proxy is still up.
    assert_eq!(
        client()
            .get(proxy.url("/ok"))
            .send()
            .await
            .expect("answer")
            .status(),
        200
    );
}

/// The default limit (100, hyper's own) is applied without being configured explicitly.
#[tokio::test]
async fn the_default_header_limit_is_one_hundred() {
    let (app, proxy) = app_and_proxy(|_| {}).await;
    let head = |count: usize| {
        let extra: String = (1..count).map(|i| format!("X-H{i}: v\r\n")).collect();
        format!("GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n")
    };
    // Host and Connection plus 98 more: 100 headers, all of which reach the app.
    let response =
        crate::support::raw_exchange(proxy.addr, head(99).as_bytes(), Duration::from_secs(5)).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert_eq!(app.seen(), ["GET /ok"]);
    let response =
        crate::support::raw_exchange(proxy.addr, head(100).as_bytes(), Duration::from_secs(5))
            .await;
    assert!(response.starts_with("HTTP/1.1 431"), "{response}");
    assert_eq!(
        app.seen().len(),
        1,
        "the refused head never reached the app"
    );
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let (_app, proxy) = app_and_proxy(|c| c.server.idle_timeout = Duration::from_millis(300)).await;
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(b"GET /bytes/3 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("request");
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.expect("response");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let closed = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "idle connection still open");
}

#[tokio::test]
async fn graceful_shutdown_lets_a_request_in_flight_finish() {
    let (_app, mut proxy) =
        app_and_proxy(|c| c.server.shutdown_grace = Duration::from_secs(5)).await;
    let in_flight = requests_in_flight(&proxy, "/sleep/800", 1).await;
    proxy.shutdown();
    let request = in_flight.into_iter().next().expect("one request");
    let status = request.await.expect("task").expect("request completes");
    assert_eq!(status, 200);
    let ended = tokio::time::timeout(Duration::from_secs(5), &mut proxy.handle).await;
    assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
    assert!(
        TcpStream::connect(proxy.addr).await.is_err(),
        "still accepting"
    );
}

/// At shutdown, a kept-alive connection whose next request head has begun to arrive is not
/// closed under it: the request is answered (with `Connection: close`), as nginx lets a
/// keep-alive connection that has read part of a request finish it. Closed, the request
/// would be lost, and a client retries only idempotent ones.
#[tokio::test]
async fn graceful_shutdown_answers_a_request_whose_head_is_arriving() {
    let (_app, mut proxy) =
        app_and_proxy(|c| c.server.shutdown_grace = Duration::from_secs(5)).await;
    let mut stream = connect_and_ask(proxy.addr).await;
    let answer = read_response(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("half a head");
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.shutdown();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stream
        .write_all(b"Content-Length: 5\r\n\r\nhello")
        .await
        .expect("the rest");
    let answer = read_response(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(says_close(&answer), "{answer}");
    let ended = tokio::time::timeout(Duration::from_secs(5), &mut proxy.handle).await;
    assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
}

/// `server.shutdown_delay`: after the signal, `/readyz` fails at once while new connections
/// are still served until the delay ends; then the listener closes and the server exits.
#[tokio::test]
async fn shutdown_delay_fails_readiness_first_and_keeps_serving() {
    let (_app, mut proxy) =
        app_and_proxy(|c| c.server.shutdown_delay = Duration::from_millis(800)).await;
    assert_eq!(get_text(&proxy.admin_url("/readyz")).await.0, 200);
    let signalled = Instant::now();
    proxy.shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, text) = get_text(&proxy.admin_url("/readyz")).await;
    assert_eq!(status, 503);
    assert!(text.contains("server: shutting down"), "{text}");
    // A new connection, during the delay: served.
    let (status, _) = get_text(&proxy.url("/bytes/5")).await;
    assert_eq!(status, 200, "served during the delay");
    assert!(signalled.elapsed() < Duration::from_millis(800));
    let ended = tokio::time::timeout(Duration::from_secs(5), &mut proxy.handle).await;
    assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
    assert!(
        signalled.elapsed() >= Duration::from_millis(800),
        "stopped before the delay: {:?}",
        signalled.elapsed()
    );
    assert!(
        TcpStream::connect(proxy.addr).await.is_err(),
        "still accepting"
    );
}

/// `count` requests for `path`, each on a connection of its own (opened together, so the
/// workers get one each), given 200 ms to reach the app.
async fn requests_in_flight(
    proxy: &Proxy,
    path: &str,
    count: usize,
) -> Vec<tokio::task::JoinHandle<reqwest::Result<reqwest::StatusCode>>> {
    let in_flight = (0..count)
        .map(|_| {
            let url = proxy.url(path);
            tokio::spawn(async move { client().get(url).send().await.map(|r| r.status()) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    in_flight
}

/// Requests in flight on every worker thread finish before the server exits.
#[tokio::test]
async fn graceful_shutdown_waits_for_requests_on_every_worker() {
    let (_app, mut proxy) = app_and_proxy(|c| {
        c.server.shutdown_grace = Duration::from_secs(5);
        c.server.worker_threads = 3;
    })
    .await;
    let in_flight = requests_in_flight(&proxy, "/sleep/800", 3).await;
    proxy.shutdown();
    // Draining: no new connections, but the admin listener answers until the end.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        TcpStream::connect(proxy.addr).await.is_err(),
        "still accepting"
    );
    let (status, text) = get_text(&proxy.admin_url("/readyz")).await;
    assert_eq!(
        (status, text.contains("server: shutting down")),
        (503, true),
        "{text}"
    );
    let (status, text) = get_text(&proxy.admin_url("/metrics")).await;
    assert_eq!(status, 200, "{text}");
    let open: u32 = text
        .lines()
        .filter(|line| line.starts_with("offload_open_connections{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u32>().ok())
        .sum();
    assert_eq!(open, 3, "the requests in flight: {text}");
    for request in in_flight {
        let status = request.await.expect("task").expect("request completes");
        assert_eq!(status, 200);
    }
    let ended = tokio::time::timeout(Duration::from_secs(5), &mut proxy.handle).await;
    assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
    let admin = proxy.admin.expect("admin listener");
    let mut closed = false;
    for _ in 0..50 {
        closed = TcpStream::connect(admin).await.is_err();
        if closed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(closed, "the admin listener closes once the server stops");
}

/// Requests still running when the shutdown grace expires are cut off on every worker, and
/// the server returns without waiting for them.
#[tokio::test]
async fn shutdown_grace_expiry_drops_the_requests_left_on_every_worker() {
    let (_app, mut proxy) = app_and_proxy(|c| {
        c.server.shutdown_grace = Duration::from_millis(300);
        c.server.worker_threads = 2;
    })
    .await;
    let in_flight = requests_in_flight(&proxy, "/sleep/5000", 2).await;
    proxy.shutdown();
    let ended = tokio::time::timeout(Duration::from_secs(3), &mut proxy.handle).await;
    assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
    for request in in_flight {
        let outcome = tokio::time::timeout(Duration::from_secs(2), request)
            .await
            .expect("cut off, not left to finish")
            .expect("task");
        assert!(outcome.is_err(), "a request past the grace got {outcome:?}");
    }
}

/// A replica that did not handle an upload knows nothing of its files: its first page must
/// still point at the bucket for objects another replica stored (offload asks the store about
/// the assets a text answer names before rewriting it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_replica_rewrites_its_first_answer_to_objects_already_in_the_bucket() {
    use offload::store::{PutOptions, Store};
    let s3 = crate::support::php::s3_server().await;
    let store = s3.target().store().await;
    let body = futures_util::stream::once(async {
        Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"jpeg bytes"))
    });
    store
        .put(
            "wp-content/uploads/2026/01/there.jpg",
            Box::pin(body),
            PutOptions::default(),
        )
        .await
        .unwrap();
    let app = crate::support::App::start().await;
    let proxy = crate::support::php::offload("wordpress", app.addr, &s3, "").await;
    // The app echoes the request's headers in its JSON answer.
    let answer = crate::support::client()
        .get(proxy.url("/page"))
        .header("x-there", "/wp-content/uploads/2026/01/there.jpg")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        answer.contains("\"http://cdn.test.invalid/bucket/wp-content/uploads/2026/01/there.jpg\""),
        "{answer}"
    );
}

/// A proxy with `server.idle_timeout` = 300 ms in front of `app`.
async fn proxy_with_short_idle_timeout(app: std::net::SocketAddr) -> Proxy {
    let mut config = config_for(app);
    config.server.idle_timeout = Duration::from_millis(300);
    Proxy::start(config).await
}

/// A raw app that runs `answer` on each request (given its head), then, when `answer` hands
/// the connection back, reports when the proxy closes its end of it.
async fn app_reporting_close<F, Fut>(answer: F) -> (RawApp, mpsc::UnboundedReceiver<()>)
where
    F: Fn(TcpStream, String) -> Fut + Send + Sync + Copy + 'static,
    Fut: std::future::Future<Output = Option<TcpStream>> + Send + 'static,
{
    let (closed, closes) = mpsc::unbounded_channel();
    let app = RawApp::start(move |stream, head| {
        let closed = closed.clone();
        async move {
            let Some(mut stream) = answer(stream, head).await else {
                return;
            };
            let mut sink = [0u8; 1024];
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
            let _ = closed.send(());
        }
    })
    .await;
    (app, closes)
}

/// Sends `request` and reads until the proxy closes the connection (at most 5 s).
async fn send_until_closed(proxy: &Proxy, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream.write_all(request).await.expect("request");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("the proxy closes the stalled connection")
        .expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}

/// nginx's `proxy_read_timeout`: an app that stops sending mid-answer does not hold the
/// client forever; the client's connection is dropped (the answer cut short) and so is the
/// app's.
#[tokio::test]
async fn an_app_that_stalls_mid_answer_is_cut_off_after_the_idle_timeout() {
    let (app, mut app_closed) = app_reporting_close(|stream, _| answer_half(stream)).await;
    let proxy = proxy_with_short_idle_timeout(app.addr).await;
    let answer = send_until_closed(&proxy, b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nhalf"), "cut short: {answer}");
    tokio::time::timeout(Duration::from_secs(5), app_closed.recv())
        .await
        .expect("the app's connection is closed too");
    assert_answers_stalled_at_the_app(&proxy, 1).await;
}

/// The count of answers cut for standing still at the app, `expected`, once the answer is
/// over: an answer the client stopped reading is not the app's failure.
async fn assert_answers_stalled_at_the_app(proxy: &Proxy, expected: u32) {
    let counted = format!("offload_upstream_errors_total{{cause=\"answer_stalled\"}} {expected}\n");
    let text = proxy.metrics_until(&counted).await;
    assert!(text.contains(&counted), "{text}");
}

/// nginx's `send_timeout`: a client that stops reading its answer does not hold the proxy
/// and the app forever; its connection is dropped after `idle_timeout`, and so is the app's.
/// The client stalled, not the app: no upstream error is counted.
#[tokio::test]
async fn an_answer_the_client_stops_reading_is_cut_off_after_the_idle_timeout() {
    let (app, mut app_closed) = app_reporting_close(|stream, _| answer_64_mib(stream)).await;
    let proxy = proxy_with_short_idle_timeout(app.addr).await;
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(b"GET /large HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("request");
    // Not read: the sockets' buffers fill up, and the answer stands still.
    tokio::time::timeout(Duration::from_secs(5), app_closed.recv())
        .await
        .expect("the app's connection is closed");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer));
    // What the buffers held, then the close (or a reset, for what was left unread).
    let _ = read.await.expect("the client's connection is closed");
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    assert!(answer.len() < 64 << 20, "cut short: {} bytes", answer.len());
    assert_answers_stalled_at_the_app(&proxy, 0).await;
}

/// nginx's `client_body_timeout`: a client that stops sending its request body does not hold
/// the proxy and the app forever; it gets 408 and the connection is closed.
#[tokio::test]
async fn a_client_that_stalls_its_body_gets_408_after_the_idle_timeout() {
    let (app, mut app_closed) = app_reporting_close(|stream, _| async move { Some(stream) }).await;
    let proxy = proxy_with_short_idle_timeout(app.addr).await;
    let request = b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nhalf";
    let answer = send_until_closed(&proxy, request).await;
    assert!(
        answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{answer}"
    );
    assert_eq!(
        raw_body(&answer),
        "request body stalled: no data for 300ms\n"
    );
    assert!(says_close(&answer), "{answer}");
    tokio::time::timeout(Duration::from_secs(5), app_closed.recv())
        .await
        .expect("the app's connection is closed too");
}

/// nginx's `proxy_send_timeout`: an app that stops reading the request body while the client
/// keeps sending does not hold either forever. The request ends with 504 (counted and
/// logged), which the client reads though it is still sending (the proxy closes lingering),
/// and the app's connection is closed.
#[tokio::test]
async fn an_app_that_stops_reading_the_body_is_cut_off_after_the_idle_timeout() {
    let (app, mut app_closed) = app_reporting_close(|stream, _| stop_reading(stream)).await;
    let proxy = proxy_with_short_idle_timeout(app.addr).await;
    let (mut from_proxy, mut to_proxy) = TcpStream::connect(proxy.addr)
        .await
        .expect("connect")
        .into_split();
    let sending = tokio::spawn(async move {
        let head = b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\n";
        let chunk = vec![b'x'; 64 * 1024];
        if to_proxy.write_all(head).await.is_ok() {
            while to_proxy.write_all(&chunk).await.is_ok() {}
        }
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), from_proxy.read_to_end(&mut answer))
        .await
        .expect("the proxy closes the connection");
    let answer = String::from_utf8_lossy(&answer);
    assert!(read.is_ok(), "{read:?} {answer}");
    assert!(
        answer.starts_with("HTTP/1.1 504 Gateway Timeout\r\n"),
        "{answer}"
    );
    assert_eq!(
        raw_body(&answer),
        "upstream stopped reading the request body: none taken for 300ms\n"
    );
    assert!(says_close(&answer), "{answer}");
    let counted = "offload_upstream_errors_total{cause=\"body_not_taken\"} 1";
    let text = proxy.metrics_until(counted).await;
    assert!(text.contains(counted), "{text}");
    tokio::time::timeout(Duration::from_secs(5), app_closed.recv())
        .await
        .expect("the app's connection is closed too");
    sending.abort();
}

/// nginx's `lingering_close`: a client still sending a body the proxy refused mid-way (a file
/// over the route's limit, sent without `Expect: 100-continue`) reads the 413, where closing
/// at once would answer its bytes in flight with a reset that can destroy the 413 (seen
/// with curl: "Send failure: Broken pipe" and no status, two times in three).
#[tokio::test]
async fn a_client_still_sending_a_refused_body_reads_the_answer() {
    let (_app, _data, proxy) = proxy_with_upload_route(|config| {
        config.uploads[0].max_file_size = bytesize::ByteSize::kib(64);
    })
    .await;
    let head = "--b\r\nContent-Disposition: form-data; name=\"f\"; filename=\"big.bin\"\r\n\r\n";
    let request = format!(
        "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n\
         Content-Length: 1000000000\r\n\r\n{head}"
    );
    for attempt in 0..5 {
        let (answer, sending) =
            send_until_answered(proxy.addr, request.clone(), vec![b'x'; 64 * 1024]).await;
        assert!(
            answer.starts_with("HTTP/1.1 413 Payload Too Large\r\n"),
            "attempt {attempt}: {answer:?}"
        );
        assert!(
            raw_body(&answer).contains("\"limit\":\"max_file_size\""),
            "{answer}"
        );
        assert!(says_close(&answer), "attempt {attempt}: {answer}");
        // Still being read (and thrown away): an uploader's writes do not fail before it
        // has noticed the answer, as curl's do when the proxy's socket is already gone.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!sending.is_finished(), "attempt {attempt}: a write failed");
        sending.abort();
    }
}

/// The lingering close is bounded by its own times (5 s of silence, 30 s in all, as nginx's
/// `lingering_timeout` and `lingering_time`), not by `server.header_read_timeout` or
/// `server.idle_timeout`: the bytes of the refused body still coming are no request head
/// that is late, and they move.
#[tokio::test]
async fn a_lingering_close_outlasts_the_connection_timeouts() {
    let (_app, _data, proxy) = proxy_with_upload_route(|config| {
        config.uploads[0].max_file_size = bytesize::ByteSize::kib(64);
        config.server.header_read_timeout = Duration::from_millis(300);
        config.server.idle_timeout = Duration::from_millis(400);
    })
    .await;
    let head = "--b\r\nContent-Disposition: form-data; name=\"f\"; filename=\"big.bin\"\r\n\r\n";
    let request = format!(
        "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n\
         Content-Length: 1000000000\r\n\r\n{head}"
    );
    let (answer, sending) = send_until_answered(proxy.addr, request, vec![b'x'; 64 * 1024]).await;
    assert!(
        answer.starts_with("HTTP/1.1 413 Payload Too Large\r\n"),
        "{answer:?}"
    );
    // Five times either timeout: the client's writes still go through.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert!(
        !sending.is_finished(),
        "a write failed: the connection was cut"
    );
    sending.abort();
}

/// An app, and offload in front of it with one upload route, `/upload` in respond mode,
/// storing into a temporary folder (kept alive by the caller); `tweak` adjusts the config.
async fn proxy_with_upload_route(
    tweak: impl FnOnce(&mut offload::config::Config),
) -> (App, tempfile::TempDir, Proxy) {
    let app = App::start().await;
    let data = tempfile::tempdir().expect("temp dir");
    let mut config = config_for(app.addr);
    config.store.root = data.path().to_path_buf();
    config.uploads = vec![offload::config::UploadRouteConfig {
        path: "/upload".into(),
        mode: offload::config::UploadMode::Respond,
        ..Default::default()
    }];
    tweak(&mut config);
    let proxy = Proxy::start(config).await;
    (app, data, proxy)
}

/// Waiting for the app's answer is `upstream.response_timeout`'s business, even when it is
/// longer than `server.idle_timeout`.
#[tokio::test]
async fn waiting_for_an_answer_longer_than_the_idle_timeout_is_fine() {
    let app = App::start().await;
    let proxy = proxy_with_short_idle_timeout(app.addr).await;
    for http in [client(), h2_client()] {
        for path in ["/sleep/1200", "/echo"] {
            let resp = http
                .post(proxy.url(path))
                .body("some body")
                .send()
                .await
                .expect("answer");
            assert_eq!(resp.status(), 200, "{path}");
            resp.bytes().await.expect("the whole answer");
        }
        let resp = http
            .get(proxy.url("/sleep/1200"))
            .send()
            .await
            .expect("answer");
        assert_eq!(resp.status(), 200);
        resp.bytes().await.expect("the whole answer");
    }
}

/// Sends half of a 100-byte answer and keeps the connection.
async fn answer_half(mut stream: TcpStream) -> Option<TcpStream> {
    let _ = stream
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhalf")
        .await;
    Some(stream)
}

/// `GET /ping` gets a short answer at once (and its connection is not watched); anything
/// else gets `then`.
async fn ping_or<Fut>(
    mut stream: TcpStream,
    head: String,
    then: fn(TcpStream) -> Fut,
) -> Option<TcpStream>
where
    Fut: std::future::Future<Output = Option<TcpStream>>,
{
    if head.starts_with("GET /ping ") {
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            .await;
        return None;
    }
    then(stream).await
}

/// An HTTP/2 client and a proxy (`idle_timeout` = 300 ms) in front of `app`, and a task that
/// keeps the connection busy with `GET /ping` every 50 ms until it is aborted.
async fn busy_http2_connection(
    app: std::net::SocketAddr,
) -> (Proxy, reqwest::Client, tokio::task::JoinHandle<()>) {
    let proxy = proxy_with_short_idle_timeout(app).await;
    let h2 = h2_client();
    let ping = proxy.url("/ping");
    let pinger = h2.clone();
    let busy = tokio::spawn(async move {
        loop {
            let resp = pinger.get(&ping).send().await.expect("ping");
            assert_eq!(resp.status(), 200);
            let _ = resp.bytes().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    (proxy, h2, busy)
}

/// An answer offload reads whole before it answers (a page to rewrite, small enough to
/// look its assets up first) from an app that stops sending it mid-way: a 504 after
/// `idle_timeout`, as nginx's `proxy_read_timeout`, and the app's connection closed.
/// Before, nothing bounded that read: the client waited as long as the app held on.
#[tokio::test]
async fn an_answer_read_whole_that_stops_coming_is_a_504_after_the_idle_timeout() {
    let (app, mut app_closed) = app_reporting_close(|mut stream, _| async move {
        let _ = stream
            .write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 100\r\n\r\n<p>half",
            )
            .await;
        Some(stream)
    })
    .await;
    let store = tempfile::tempdir().expect("temp dir");
    let mut config = config_for(app.addr);
    config.server.idle_timeout = Duration::from_millis(300);
    config.store.root = store.path().to_path_buf();
    config.assets.prefixes = vec!["/wp-content/uploads/".into()];
    let proxy = Proxy::start(config).await;
    let answered = client().get(proxy.url("/page")).send();
    let resp = tokio::time::timeout(Duration::from_secs(5), answered)
        .await
        .expect("an answer within 5 s")
        .expect("answer");
    assert_eq!(resp.status(), 504);
    let text = resp.text().await.expect("body");
    assert!(
        text.contains("the app's answer stopped coming: no data for 300ms"),
        "{text}"
    );
    tokio::time::timeout(Duration::from_secs(5), app_closed.recv())
        .await
        .expect("the app's connection is closed");
}

/// On HTTP/2 the connection keeps moving for the other streams: a stream whose request body
/// stops coming gets its own `idle_timeout` and a 408, and the app's connection is closed.
#[tokio::test]
async fn an_http2_stream_whose_body_stalls_gets_408_while_others_go_on() {
    let (app, mut app_closed) =
        app_reporting_close(|stream, head| ping_or(stream, head, |s| async move { Some(s) })).await;
    let (proxy, h2, busy) = busy_http2_connection(app.addr).await;
    use futures_util::StreamExt as _;
    let stalling = futures_util::stream::iter([Ok::<_, std::io::Error>("half")])
        .chain(futures_util::stream::pending());
    let (status, text) = post_over_http2(&h2, &proxy, reqwest::Body::wrap_stream(stalling)).await;
    assert_eq!(status, 408);
    assert_eq!(text, "request body stalled: no data for 300ms\n");
    app_closed_while_others_went_on(&mut app_closed, busy).await;
}

/// POSTs `body` to `/upload` over HTTP/2: the answer's status and text (within 5 s).
async fn post_over_http2(
    h2: &reqwest::Client,
    proxy: &Proxy,
    body: reqwest::Body,
) -> (u16, String) {
    let sent = h2.post(proxy.url("/upload")).body(body).send();
    let resp = tokio::time::timeout(Duration::from_secs(5), sent)
        .await
        .expect("an answer within the timeout")
        .expect("answer");
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("body"))
}

/// The app's connection is closed (within 5 s), and the pings on the same HTTP/2 connection
/// (`busy`) went on meanwhile.
async fn app_closed_while_others_went_on(
    app_closed: &mut mpsc::UnboundedReceiver<()>,
    busy: tokio::task::JoinHandle<()>,
) {
    tokio::time::timeout(Duration::from_secs(5), app_closed.recv())
        .await
        .expect("the app's connection is closed");
    assert!(!busy.is_finished(), "the other streams went on");
    busy.abort();
}

/// A raw app's answer: reads nothing for a second (the request body piles up in front of
/// it), then hands the connection back.
async fn stop_reading(stream: TcpStream) -> Option<TcpStream> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    Some(stream)
}

/// nginx's `proxy_send_timeout` on HTTP/2: an app that stops reading a stream's request body
/// while the client keeps sending gets the stream a 504 after `idle_timeout` (nothing polls
/// that body, so its own stall timer never runs); the app's connection is closed and the
/// connection's other streams go on.
#[tokio::test]
async fn an_http2_stream_whose_body_the_app_stops_reading_gets_504_while_others_go_on() {
    let (app, mut app_closed) =
        app_reporting_close(|stream, head| ping_or(stream, head, stop_reading)).await;
    let (proxy, h2, busy) = busy_http2_connection(app.addr).await;
    let chunk = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
    let endless = futures_util::stream::repeat_with(move || Ok::<_, std::io::Error>(chunk.clone()));
    let (status, text) = post_over_http2(&h2, &proxy, reqwest::Body::wrap_stream(endless)).await;
    assert_eq!(status, 504);
    assert_eq!(
        text,
        "upstream stopped reading the request body: none taken for 300ms\n"
    );
    // The app reads again after a second: it must find its connection closed, not an
    // endless body.
    app_closed_while_others_went_on(&mut app_closed, busy).await;
}

/// On HTTP/2, an app that stops sending one stream's answer gets that stream reset after
/// `idle_timeout`, while the connection's other streams go on.
#[tokio::test]
async fn an_http2_stream_whose_answer_stalls_is_reset_while_others_go_on() {
    let (app, mut app_closed) =
        app_reporting_close(|stream, head| ping_or(stream, head, answer_half)).await;
    let (proxy, h2, busy) = busy_http2_connection(app.addr).await;
    let resp = h2.get(proxy.url("/stall")).send().await.expect("head");
    assert_eq!(resp.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(5), resp.bytes())
        .await
        .expect("the stream ends within the timeout");
    assert!(body.is_err(), "the stalled answer is cut short: {body:?}");
    app_closed_while_others_went_on(&mut app_closed, busy).await;
    assert_answers_stalled_at_the_app(&proxy, 1).await;
}

/// A raw app's answer: 64 MiB, written until the proxy stops taking it or closes.
async fn answer_64_mib(mut stream: TcpStream) -> Option<TcpStream> {
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 67108864\r\n\r\n";
    stream.write_all(head).await.ok()?;
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..64 {
        if stream.write_all(&chunk).await.is_err() {
            break;
        }
    }
    Some(stream)
}

/// nginx's `send_timeout` on HTTP/2: a client that stops reading one answer (it grants no
/// more flow-control window for it) while its connection stays busy has that stream reset
/// after `idle_timeout`, and the app's connection is closed; before, the stream held its
/// app connection for as long as the client kept the connection.
#[tokio::test]
async fn an_http2_answer_the_client_stops_reading_is_reset_while_others_go_on() {
    let (app, mut app_closed) =
        app_reporting_close(|stream, head| ping_or(stream, head, answer_64_mib)).await;
    let (proxy, h2, busy) = busy_http2_connection(app.addr).await;
    let resp = h2.get(proxy.url("/large")).send().await.expect("head");
    assert_eq!(resp.status(), 200);
    // Not read: the stream's window runs out, and the answer stands still.
    app_closed_while_others_went_on(&mut app_closed, busy).await;
    let body = tokio::time::timeout(Duration::from_secs(5), resp.bytes())
        .await
        .expect("the stream ends");
    assert!(body.is_err(), "the answer is cut short");
    assert_answers_stalled_at_the_app(&proxy, 0).await;
}

/// Sends `head`, then `chunk` over and over (as an uploader does until it sees an answer),
/// and returns what the proxy answered before it closed the connection, with the sending
/// task (still running while the proxy reads and throws away what comes; abort it).
async fn send_until_answered(
    addr: std::net::SocketAddr,
    head: String,
    chunk: Vec<u8>,
) -> (String, tokio::task::JoinHandle<()>) {
    let (mut from_proxy, mut to_proxy) = TcpStream::connect(addr)
        .await
        .expect("connect")
        .into_split();
    let sending = tokio::spawn(async move {
        if to_proxy.write_all(head.as_bytes()).await.is_ok() {
            while to_proxy.write_all(&chunk).await.is_ok() {}
        }
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), from_proxy.read_to_end(&mut answer))
        .await
        .expect("the proxy answers and closes within 5 s");
    assert!(read.is_ok(), "{read:?}");
    (String::from_utf8_lossy(&answer).into_owned(), sending)
}

/// One 64 KiB chunk of a chunked body, framed.
fn body_chunk() -> Vec<u8> {
    let mut chunk = b"10000\r\n".to_vec();
    chunk.extend(std::iter::repeat_n(b'x', 64 * 1024));
    chunk.extend(b"\r\n");
    chunk
}

const MAX_BODY: u64 = 1 << 20;
const TOO_LARGE: &str = "request body larger than server.max_body_size (1 MiB)\n";

/// `server.max_body_size`, as nginx's `client_max_body_size`: a body of exactly the limit
/// passes byte for byte; a longer declared length gets 413 before the app sees anything; a
/// chunked body is cut with 413 where it passes the limit.
#[tokio::test]
async fn bodies_over_server_max_body_size_get_413() {
    let (app, proxy) = app_and_proxy(|c| {
        c.server.max_body_size = Some(bytesize::ByteSize(MAX_BODY));
    })
    .await;
    for chunked in [false, true] {
        let mut req = client()
            .post(proxy.url("/at-the-limit"))
            .body(reqwest::Body::wrap_stream(crate::support::pattern_stream(
                MAX_BODY,
            )));
        if !chunked {
            req = req.header("content-length", MAX_BODY);
        }
        let resp = req.send().await.expect("answer");
        assert_eq!(resp.status(), 200, "chunked={chunked}");
        // Read to its end: the connection carries the next request.
        assert_eq!(resp.headers().get("connection"), None, "chunked={chunked}");
        let echo = Echo::parse(&resp.text().await.expect("echo"));
        assert_eq!(
            (echo.body_len, echo.body_sha256),
            (MAX_BODY, crate::support::pattern_sha256(MAX_BODY)),
            "chunked={chunked}"
        );
    }

    let declared = format!(
        "POST /declared HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        MAX_BODY + 1
    );
    let (answer, sending) = send_until_answered(proxy.addr, declared, vec![b'x'; 64 * 1024]).await;
    sending.abort();
    assert!(
        answer.starts_with("HTTP/1.1 413 Payload Too Large\r\n"),
        "{answer}"
    );
    assert_eq!(raw_body(&answer), TOO_LARGE);
    assert!(says_close(&answer), "{answer}");
    assert!(
        !app.seen().iter().any(|r| r.contains("/declared")),
        "the app saw a refused request: {:?}",
        app.seen()
    );

    let chunked = "POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    let (answer, sending) = send_until_answered(proxy.addr, chunked.into(), body_chunk()).await;
    sending.abort();
    assert!(
        answer.starts_with("HTTP/1.1 413 Payload Too Large\r\n"),
        "{answer}"
    );
    assert_eq!(raw_body(&answer), TOO_LARGE);
    assert!(says_close(&answer), "{answer}");
}

/// An upload route's own `max_body_size` may be larger: the server's limit still holds, and
/// the answer names it.
#[tokio::test]
async fn an_upload_over_server_max_body_size_gets_413() {
    // The route keeps its default max_body_size (1 GiB).
    let (_app, _data, proxy) = proxy_with_upload_route(|config| {
        config.server.max_body_size = Some(bytesize::ByteSize(MAX_BODY));
    })
    .await;
    let part = "--b\r\nContent-Disposition: form-data; name=\"f\"; filename=\"big.bin\"\r\n\r\n";
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n\
         Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{part}\r\n",
        part.len()
    );
    let (answer, sending) = send_until_answered(proxy.addr, head, body_chunk()).await;
    sending.abort();
    assert!(
        answer.starts_with("HTTP/1.1 413 Payload Too Large\r\n"),
        "{answer}"
    );
    assert_eq!(raw_body(&answer), TOO_LARGE);
    assert!(says_close(&answer), "{answer}");
}

/// `server.http2_max_concurrent_streams`: advertised in the server's first SETTINGS frame,
/// and a stream past it is refused (RST_STREAM with REFUSED_STREAM, which clients retry)
/// while those within it are answered.
#[tokio::test]
async fn http2_streams_past_the_limit_are_refused() {
    let (_app, default) = app_and_proxy(|_| {}).await;
    let (mut stream, settings) = http2_connect(default.addr).await;
    assert_eq!(
        max_concurrent_streams(&settings),
        Some(128),
        "nginx's default"
    );
    drop(stream);

    let (_app, proxy) = app_and_proxy(|c| c.server.http2_max_concurrent_streams = 2).await;
    (stream, _) = http2_connect(proxy.addr).await;
    for id in [1u8, 3, 5] {
        stream
            .write_all(&http2_get(id, "/sleep/1000"))
            .await
            .expect("HEADERS");
    }
    // Frames until both answers: (type, stream, first payload word).
    let mut seen = Vec::new();
    while seen.iter().filter(|(kind, _, _)| *kind == 0x1).count() < 2 {
        let (kind, flags, id, payload) = read_frame(&mut stream).await;
        if kind != 0x4 || flags & 0x1 == 0 {
            let word = payload
                .get(..4)
                .map(|w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
            seen.push((kind, id, word));
        }
    }
    let refused = seen
        .iter()
        .filter(|(kind, _, _)| *kind == 0x3)
        .collect::<Vec<_>>();
    assert_eq!(refused, [&(0x3, 5, Some(0x7))], "{seen:?}");
    let answered: Vec<u32> = seen.iter().filter(|f| f.0 == 0x1).map(|f| f.1).collect();
    assert_eq!(answered, [1, 3], "{seen:?}");
}

/// An HTTP/2 request that names no host (neither :authority nor Host) gets 400, as nginx
/// answers it and as an HTTP/1.1 request without Host gets; the app used to get the
/// upstream's own address as its Host.
#[tokio::test]
async fn an_http2_request_naming_no_host_gets_400() {
    let (app, proxy) = app_and_proxy(|_| {}).await;
    let (mut stream, _) = http2_connect(proxy.addr).await;
    for frame in [http2_get_from(1, "/nameless", None), http2_get(3, "/named")] {
        stream.write_all(&frame).await.expect("HEADERS");
    }
    // The first field of each answer's HEADERS: :status from HPACK's static table.
    let mut statuses = std::collections::BTreeMap::new();
    while statuses.len() < 2 {
        let (kind, _, id, payload) = read_frame(&mut stream).await;
        if kind == 0x1 {
            statuses.insert(id, payload.first().copied());
        }
    }
    let (status_400, status_200) = (Some(0x80 | 12), Some(0x80 | 8));
    assert_eq!(statuses[&1], status_400, "{statuses:?}");
    assert_eq!(statuses[&3], status_200, "{statuses:?}");
    assert_eq!(app.seen(), ["GET /named"]);
}

/// An HTTP/2 request with its `content-length` given twice (the h2 crate checks that they
/// agree) reaches the app with it once, as HTTP/1.1's parser merges them: an app may refuse
/// it repeated (Node: "Duplicate Content-Length").
#[tokio::test]
async fn an_http2_length_given_twice_reaches_the_app_once() {
    let heads = Arc::new(Mutex::new(Vec::new()));
    let app = RawApp::start({
        let heads = Arc::clone(&heads);
        move |mut stream, head| {
            heads.lock().expect("heads").push(head);
            async move {
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
            }
        }
    })
    .await;
    let proxy = Proxy::start(config_for(app.addr)).await;
    let (mut stream, _) = http2_connect(proxy.addr).await;
    // HEADERS (END_HEADERS): :method POST, :scheme http, :path /twice, :authority x, and
    // content-length (static table entry 28) 5 twice; then DATA "hello" (END_STREAM).
    let mut block = vec![0x83, 0x86, 0x04, 6];
    block.extend_from_slice(b"/twice");
    block.extend_from_slice(&[0x01, 1, b'x']);
    for _ in 0..2 {
        block.extend_from_slice(&[0x0f, 0x0d, 1, b'5']);
    }
    let mut frames = vec![
        0,
        0,
        u8::try_from(block.len()).expect("short"),
        0x1,
        0x4,
        0,
        0,
        0,
        1,
    ];
    frames.extend_from_slice(&block);
    frames.extend_from_slice(&[0, 0, 5, 0x0, 0x1, 0, 0, 0, 1]);
    frames.extend_from_slice(b"hello");
    stream.write_all(&frames).await.expect("request");
    loop {
        let (kind, _, id, payload) = read_frame(&mut stream).await;
        if kind == 0x1 && id == 1 {
            assert_eq!(payload.first(), Some(&(0x80 | 8)), ":status 200");
            break;
        }
    }
    let heads = heads.lock().expect("heads").clone();
    let head = heads
        .first()
        .expect("the app got the request")
        .to_ascii_lowercase();
    assert_eq!(head.matches("content-length:").count(), 1, "{head}");
    assert!(head.contains("content-length: 5\r\n"), "{head}");
}

/// An idle HTTP/2 connection is closed with a GOAWAY and a PING whose acknowledgement tells
/// the server the client has seen it. A client that never acknowledges it does not keep the
/// connection (and its place under `server.max_connections`) for good: still idle after
/// another `idle_timeout`, it is dropped. nginx closes it at once.
#[tokio::test]
async fn an_idle_http2_connection_whose_client_ignores_the_goaway_is_dropped() {
    let app = App::start().await;
    let proxy = proxy_with_short_idle_timeout(app.addr).await;
    let (mut stream, _) = http2_connect(proxy.addr).await;
    // The server's SETTINGS acknowledged; nothing else is ever sent.
    http2_ack_settings(&mut stream).await;
    let kinds = frame_types_until_closed(&mut stream).await;
    assert!(
        kinds.contains(&0x7),
        "a GOAWAY first: frame types {kinds:?}"
    );
}

/// An HTTP/2 connection that has sent its preface and no request yet is idle, not a slow
/// request head: it is closed after `idle_timeout` with a GOAWAY (as nginx closes it after
/// `keepalive_timeout`), not dropped without a word after `header_read_timeout`, which
/// would reset a request the client sends just then.
#[tokio::test]
async fn an_http2_connection_with_no_request_yet_gets_a_goaway() {
    let (_app, proxy) = app_and_proxy(|c| {
        c.server.header_read_timeout = Duration::from_millis(200);
        c.server.idle_timeout = Duration::from_millis(1500);
    })
    .await;
    let (mut stream, _) = http2_connect(proxy.addr).await;
    http2_ack_settings(&mut stream).await;
    // Past the header read timeout, the connection still serves a request.
    tokio::time::sleep(Duration::from_millis(700)).await;
    stream
        .write_all(&http2_get(1, "/late"))
        .await
        .expect("HEADERS");
    let kinds = frame_types_until_closed(&mut stream).await;
    assert!(kinds.contains(&0x1), "an answer: frame types {kinds:?}");
    assert!(
        kinds.contains(&0x7),
        "a GOAWAY before the close: frame types {kinds:?}"
    );
}

/// An HTTP/2 connection whose client sends PINGs but opens no stream is idle all the same:
/// closed with a GOAWAY after `idle_timeout`, as nginx closes it. Its PINGs kept it open
/// for ever, and a few such connections held every place under `max_connections`.
#[tokio::test]
async fn pings_do_not_keep_an_idle_http2_connection_open() {
    let (_app, proxy) = app_and_proxy(|c| {
        c.server.idle_timeout = Duration::from_millis(1500);
    })
    .await;
    let (mut stream, _) = http2_connect(proxy.addr).await;
    http2_ack_settings(&mut stream).await;
    let opened = Instant::now();
    let (mut reader, mut writer) = stream.into_split();
    let pings = tokio::spawn(async move {
        let ping = [0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
        while writer.write_all(&ping).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let mut kinds = Vec::new();
    let frames = async {
        while !kinds.contains(&0x7) {
            let mut head = [0u8; 9];
            if reader.read_exact(&mut head).await.is_err() {
                break;
            }
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            if reader.read_exact(&mut payload).await.is_err() {
                break;
            }
            kinds.push(head[3]);
        }
    };
    let closed = tokio::time::timeout(Duration::from_secs(8), frames).await;
    pings.abort();
    assert!(
        closed.is_ok(),
        "still open after 8 s: frame types {kinds:?}"
    );
    assert!(kinds.contains(&0x6), "the PINGs were answered: {kinds:?}");
    assert!(kinds.contains(&0x7), "a GOAWAY: frame types {kinds:?}");
    let after = opened.elapsed();
    assert!(
        after >= Duration::from_millis(1400) && after < Duration::from_secs(6),
        "closed after {after:?}"
    );
}

/// At shutdown, an idle HTTP/2 connection whose client never acknowledges the GOAWAY's
/// PING does not hold the server until the end of `shutdown_grace`: it is dropped a moment
/// after, as nginx closes it at once.
#[tokio::test]
async fn an_idle_http2_client_ignoring_the_goaway_does_not_hold_a_shutdown() {
    let (_app, mut proxy) =
        app_and_proxy(|c| c.server.shutdown_grace = Duration::from_secs(30)).await;
    let (mut stream, _) = http2_connect(proxy.addr).await;
    http2_ack_settings(&mut stream).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let signalled = Instant::now();
    proxy.shutdown();
    let ended = tokio::time::timeout(Duration::from_secs(10), &mut proxy.handle).await;
    assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
    // The grace is 30 s; the connection lingers a second (bounded loosely, for a busy machine).
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "{:?}",
        signalled.elapsed()
    );
    let kinds = frame_types_until_closed(&mut stream).await;
    assert!(
        kinds.contains(&0x7),
        "a GOAWAY first: frame types {kinds:?}"
    );
}

/// `server.keepalive_requests`, as nginx's: a keep-alive connection carries that many
/// requests; the last one's answer says `Connection: close`, and the connection closes.
#[tokio::test]
async fn a_connection_carries_keepalive_requests_then_closes() {
    let (_app, proxy) = app_and_proxy(|c| c.server.keepalive_requests = 3).await;
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    for i in 1..=3 {
        let request = format!("GET /echo/{i} HTTP/1.1\r\nHost: x\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("request");
        let answer = read_response(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert_eq!(says_close(&answer), i == 3, "request {i}: {answer}");
    }
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest));
    assert!(matches!(read.await, Ok(Ok(0))), "closed after the third");
}

/// On HTTP/2, `server.keepalive_requests` counts streams: the last is followed by a GOAWAY.
/// A client that ignores it, opening streams and resetting them once the app has them
/// (rapid reset, CVE-2023-44487), gets its connection dropped once it has opened
/// `http2_max_concurrent_streams` more (those a client may have sent before it saw the
/// GOAWAY): one connection cannot keep the app busy without end.
#[tokio::test]
async fn an_http2_client_resetting_streams_past_its_goaway_is_dropped() {
    let (app, proxy) = app_and_proxy(|c| {
        c.server.keepalive_requests = 10;
        c.server.http2_max_concurrent_streams = 5;
    })
    .await;
    let (mut stream, _) = http2_connect(proxy.addr).await;
    http2_ack_settings(&mut stream).await;
    let (reader, mut writer) = stream.into_split();
    let frames = tokio::spawn(async move {
        let mut reader = reader;
        let mut kinds = Vec::new();
        let mut head = [0u8; 9];
        while reader.read_exact(&mut head).await.is_ok() {
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            if reader.read_exact(&mut payload).await.is_err() {
                break;
            }
            kinds.push(head[3]);
        }
        kinds
    });
    // Five streams at a time, reset (CANCEL) once the app has them; PINGs unanswered.
    'rounds: for round in 0u8..12 {
        let ids: Vec<u8> = (0..5).map(|i| 1 + 2 * (round * 5 + i)).collect();
        for &id in &ids {
            if writer
                .write_all(&http2_get(id, "/sleep/5000"))
                .await
                .is_err()
            {
                break 'rounds;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        for &id in &ids {
            let reset = [0, 0, 4, 0x3, 0, 0, 0, 0, id, 0, 0, 0, 0x8];
            if writer.write_all(&reset).await.is_err() {
                break 'rounds;
            }
        }
    }
    let kinds = tokio::time::timeout(Duration::from_secs(5), frames)
        .await
        .expect("the connection is closed within 5 s")
        .expect("reader");
    assert!(kinds.contains(&0x7), "a GOAWAY: frame types {kinds:?}");
    let seen = app.seen().len();
    assert!(
        (10..=15).contains(&seen),
        "the app got {seen} of 60 requests"
    );

    // A client that takes the GOAWAY opens a new connection and loses nothing.
    let h2 = h2_client();
    for i in 0..25 {
        let resp = h2.get(proxy.url(&format!("/t{i}"))).send().await;
        let status = resp.map(|r| r.status()).expect("answered");
        assert_eq!(status, 200, "request {i}");
    }
}

/// An HTTP/2 connection `h2` ends for the client's error (here a header name in upper case,
/// which it takes for an error of the whole connection) is logged at `info` with the peer
/// and the GOAWAY's reason, as nginx logs "client sent invalid header name".
#[tokio::test]
async fn an_http2_connection_closed_for_the_clients_error_is_logged() {
    let app = App::start().await;
    let process = OffloadProcess::start(app.addr, &[], &[]).await;
    let (mut stream, _) = http2_connect(process.addr).await;
    http2_ack_settings(&mut stream).await;
    let mut block = vec![0x82, 0x86, 0x84, 0x01, 9];
    block.extend_from_slice(b"localhost");
    block.extend_from_slice(&[0x00, 4]);
    block.extend_from_slice(b"X-Up");
    block.extend_from_slice(&[1, b'1']);
    let len = u8::try_from(block.len()).expect("short block");
    let mut headers = vec![0, 0, len, 0x1, 0x5, 0, 0, 0, 1];
    headers.extend_from_slice(&block);
    stream.write_all(&headers).await.expect("HEADERS");
    let kinds = frame_types_until_closed(&mut stream).await;
    assert!(kinds.contains(&0x7), "a GOAWAY: frame types {kinds:?}");
    let logs = process
        .wait_for_log("HTTP/2 connection closed for the client's error")
        .await;
    let line = logs
        .lines()
        .find(|l| l.contains("HTTP/2 connection closed"))
        .expect("logged");
    assert!(line.contains("\"level\":\"INFO\""), "{line}");
    assert!(line.contains("\"reason\":\"PROTOCOL_ERROR\""), "{line}");
    assert!(line.contains("\"peer\":\"127.0.0.1:"), "{line}");
    assert!(app.seen().is_empty(), "{:?}", app.seen());
}

/// A plain HTTP/2 connection (prior knowledge): the preface and an empty SETTINGS frame
/// sent; the server's SETTINGS payload read.
async fn http2_connect(addr: std::net::SocketAddr) -> (TcpStream, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .expect("preface");
    let (kind, _, _, payload) = read_frame(&mut stream).await;
    assert_eq!(kind, 0x4, "SETTINGS first");
    (stream, payload)
}

/// Acknowledges the server's SETTINGS (as a client must, RFC 9113 §6.5.3).
async fn http2_ack_settings(stream: &mut TcpStream) {
    stream
        .write_all(b"\0\0\0\x04\x01\0\0\0\0")
        .await
        .expect("settings ack");
}

/// SETTINGS_MAX_CONCURRENT_STREAMS (0x3) in a SETTINGS payload.
fn max_concurrent_streams(settings: &[u8]) -> Option<u32> {
    settings
        .chunks_exact(6)
        .find_map(|s| (s[..2] == [0, 3]).then(|| u32::from_be_bytes([s[2], s[3], s[4], s[5]])))
}

/// A HEADERS frame (END_STREAM, END_HEADERS) for a GET of `path` on stream `id`, its
/// fields HPACK-coded without Huffman: :method GET, :scheme http (static table entries),
/// :path and :authority as literals.
fn http2_get(id: u8, path: &str) -> Vec<u8> {
    http2_get_from(id, path, Some("localhost"))
}

/// As [`http2_get`], with `authority` as :authority, or none.
fn http2_get_from(id: u8, path: &str, authority: Option<&str>) -> Vec<u8> {
    let mut block = vec![
        0x82,
        0x86,
        0x04,
        u8::try_from(path.len()).expect("short path"),
    ];
    block.extend_from_slice(path.as_bytes());
    if let Some(authority) = authority {
        block.extend_from_slice(&[0x01, u8::try_from(authority.len()).expect("short")]);
        block.extend_from_slice(authority.as_bytes());
    }
    let len = u8::try_from(block.len()).expect("short block");
    let mut frame = vec![0, 0, len, 0x1, 0x5, 0, 0, 0, id];
    frame.extend_from_slice(&block);
    frame
}

/// The types of the frames the server sends until it closes the connection (each within
/// 5 s).
async fn frame_types_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut kinds = Vec::new();
    loop {
        let mut head = [0u8; 9];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut head))
            .await
            .expect("the connection is closed within 5 s");
        if read.is_err() {
            return kinds;
        }
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        if stream.read_exact(&mut payload).await.is_err() {
            return kinds;
        }
        kinds.push(head[3]);
    }
}

/// The next frame: type, flags, stream and payload.
async fn read_frame(stream: &mut TcpStream) -> (u8, u8, u32, Vec<u8>) {
    let mut head = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut head))
        .await
        .expect("a frame within 5 s")
        .expect("frame header");
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    stream
        .read_exact(&mut payload)
        .await
        .expect("frame payload");
    (head[3], head[4], id, payload)
}
