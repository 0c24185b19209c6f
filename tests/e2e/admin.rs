//! The admin listener: health, readiness, metrics.

use std::time::Duration;

use crate::support::{app_and_proxy, client};

#[tokio::test]
async fn healthz_readyz_and_metrics() {
    let (app, proxy) = app_and_proxy(|_| {}).await;
    let http = client();
    let resp = http
        .get(proxy.admin_url("/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.expect("body").trim(), "ok");
    let resp = http
        .get(proxy.admin_url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(resp.status(), 200);

    let resp = http
        .get(proxy.url("/counted"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let _ = resp.bytes().await;
    let metrics = http
        .get(proxy.admin_url("/metrics"))
        .send()
        .await
        .expect("metrics");
    let text = metrics.text().await.expect("body");
    assert!(
        text.contains("offload_requests_total{kind=\"passthrough\",class=\"2xx\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("offload_request_duration_seconds_count{kind=\"passthrough\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("offload_upstream_response_seconds_count 1"),
        "{text}"
    );
    // The readiness probe asked the store, but is no request's: not timed.
    assert!(
        !text.contains("offload_store_response_seconds_count{operation=\"head\"}"),
        "{text}"
    );

    drop(app);
    let resp = http
        .get(proxy.admin_url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(resp.status(), 503);
    let text = resp.text().await.expect("body");
    assert!(text.starts_with("not ready: upstream:"), "{text}");

    let _ = http.get(proxy.url("/down")).send().await.expect("502");
    let text = http
        .get(proxy.admin_url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    assert!(
        text.contains("offload_upstream_errors_total{cause=\"connect\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("offload_requests_total{kind=\"passthrough\",class=\"5xx\"} 1"),
        "{text}"
    );
}

/// `offload_upstream_errors_total` counts every request the app could not be reached for,
/// whichever way it took (pass-through, an asset, an upload route's non-form body), and a
/// declared length over `server.max_body_size` as the chunked body over it is.
#[tokio::test]
async fn requests_that_could_not_be_forwarded_are_counted_on_every_way() {
    use offload::config::{UploadMode, UploadRouteConfig};

    let data = tempfile::tempdir().expect("temp dir");
    let (app, proxy) = app_and_proxy(|config| {
        config.store.root = data.path().to_path_buf();
        config.assets.prefixes = vec!["/media/".into()];
        config.uploads = vec![UploadRouteConfig {
            path: "/upload".into(),
            mode: UploadMode::Mirror,
            ..UploadRouteConfig::default()
        }];
        config.server.max_body_size = Some(bytesize::ByteSize::kib(1));
    })
    .await;
    drop(app);
    let http = client();
    let asked = [
        http.get(proxy.url("/page")),
        http.get(proxy.url("/media/missing.jpg")),
        http.post(proxy.url("/upload")).body("not a form"),
    ];
    for request in asked {
        let resp = request.send().await.expect("answer");
        assert_eq!(resp.status(), 502);
    }
    let resp = http
        .post(proxy.url("/page"))
        .body(vec![b'x'; 2048])
        .send()
        .await
        .expect("answer");
    assert_eq!(resp.status(), 413);
    let counted = "offload_upstream_errors_total{cause=\"connect\"} 3\n";
    let text = proxy.metrics_until(counted).await;
    assert!(text.contains(counted), "{text}");
    assert!(
        text.contains("offload_upstream_errors_total{cause=\"body_too_large\"} 1\n"),
        "{text}"
    );
}

/// `offload_open_connections` counts client connections per worker thread: two kept-alive
/// clients are served by the two workers, and the counts fall back when they leave.
#[tokio::test]
async fn open_connections_are_counted_per_worker() {
    let (_app, proxy) = app_and_proxy(|c| c.server.worker_threads = 2).await;
    let (first, second) = (client(), client());
    for http in [&first, &second] {
        let resp = http.get(proxy.url("/open")).send().await.expect("request");
        assert_eq!(resp.status(), 200);
        let _ = resp.bytes().await;
    }
    let open = |worker: usize, count: usize| {
        format!("offload_open_connections{{worker=\"{worker}\"}} {count}")
    };
    let text = proxy.metrics_until(&open(1, 1)).await;
    assert!(text.contains(&open(0, 1)), "{text}");
    assert!(text.contains(&open(1, 1)), "{text}");
    drop((first, second));
    proxy.metrics_until(&open(1, 0)).await;
    let text = proxy.metrics_until(&open(0, 0)).await;
    assert!(text.contains(&open(0, 0)), "{text}");
    assert!(text.contains(&open(1, 0)), "{text}");
}

/// `/metrics` shows the process's own figures under the standard names: here the test's
/// process, which serves the proxy, checked against what `/proc` and `getrlimit` say.
#[tokio::test]
async fn process_metrics_describe_the_process() {
    let (_app, proxy) = app_and_proxy(|_| {}).await;
    // CPU time of its own to show (the clock ticks are 10 ms).
    let mut spin = 0u64;
    while cpu_seconds() < 0.1 {
        spin = spin.wrapping_mul(6364136223846793005).wrapping_add(1);
    }
    std::hint::black_box(spin);
    let cpu_before = cpu_seconds();
    let text = proxy.metrics_until("process_max_fds").await;
    let value = |name: &str| metric(&text, name);
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let kib = |key: &str| -> f64 {
        let line = status.lines().find_map(|l| l.strip_prefix(key)).expect(key);
        line.trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .expect("kB")
    };
    let resident = value("process_resident_memory_bytes") / 1024.0;
    let now_resident = kib("VmRSS:");
    assert!(
        resident > now_resident * 0.5 && resident < now_resident * 2.0,
        "{resident} KiB against VmRSS {now_resident}"
    );
    assert!(value("process_virtual_memory_bytes") / 1024.0 >= kib("VmSize:") * 0.5);
    assert!(value("process_threads") >= 2.0);
    assert!(value("process_open_fds") >= 3.0);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into `limit`, which lives through the call.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    assert_eq!(value("process_max_fds"), limit.rlim_cur as f64);
    let cpu = value("process_cpu_seconds_total");
    assert!(
        cpu >= cpu_before - 0.02 && cpu <= cpu_seconds() + 0.02,
        "{cpu} s against getrusage's {cpu_before} s"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let started = value("process_start_time_seconds");
    assert!(
        started <= now + 1.0 && started > now - 600.0,
        "{started} against {now}"
    );
    assert!(
        text.contains("# TYPE process_cpu_seconds counter"),
        "{text}"
    );
}

/// This process's user and system CPU time so far (getrusage).
fn cpu_seconds() -> f64 {
    // SAFETY: an all-zero rusage is a valid value for getrusage to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into `usage`, which lives through the call.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) }, 0);
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// A store failure the client never sees (mirror mode forwarding an upload the store did not
/// take) is counted in `offload_store_errors_total`, by operation and error; answers from a
/// working store, an absent object among them, are not.
#[tokio::test]
async fn store_failures_clients_never_see_are_counted() {
    use offload::config::{OnStoreError, UploadMode, UploadRouteConfig};
    use std::sync::Arc;

    let app = crate::support::App::start().await;
    let mut s3 = crate::support::s3::start().await;
    let mut config = crate::support::config_for(app.addr);
    config.store = s3.target().store_config();
    config.store.max_attempts = 1;
    config.assets.prefixes = vec!["/wp-content/uploads/".into()];
    config.uploads = vec![UploadRouteConfig {
        path: "/mirror".into(),
        mode: UploadMode::Mirror,
        on_store_error: OnStoreError::Forward,
        ..UploadRouteConfig::default()
    }];
    let store: Arc<dyn offload::store::Store> =
        Arc::new(s3.target().store_with(&config.store).await);
    let proxy = crate::support::Proxy::start_with_store(config, store).await;
    let upload = || {
        let boundary = "countedBoundary";
        client()
            .post(proxy.url("/mirror"))
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; \
                 filename=\"a.txt\"\r\nContent-Type: text/plain\r\n\r\nsome bytes\r\n\
                 --{boundary}--\r\n"
            ))
            .send()
    };
    let series = "offload_store_errors_total{operation=\"put\",error=\"unavailable\"}";

    let resp = client()
        .get(proxy.url("/wp-content/uploads/absent.jpg"))
        .send()
        .await
        .expect("asset");
    let _ = resp.bytes().await;
    assert_eq!(upload().await.expect("upload").status(), 200);
    let text = proxy
        .metrics_until("offload_requests_total{kind=\"upload\",class=\"2xx\"} 1")
        .await;
    assert!(
        store_errors_counted(&text).is_empty(),
        "none counted: {text}"
    );
    // The asset was looked for in the store: its answer was timed.
    assert!(
        text.contains("offload_store_response_seconds_count{operation=\"head\"} "),
        "{text}"
    );

    s3.stop();
    let resp = upload().await.expect("upload while the store is down");
    assert_eq!(resp.status(), 200, "forwarded to the app all the same");
    let text = proxy.metrics_until(&format!("{series} 1")).await;
    assert!(text.contains(&format!("{series} 1")), "{text}");

    s3.restart().await;
    assert_eq!(upload().await.expect("upload").status(), 200);
    let text = proxy
        .metrics_until("offload_requests_total{kind=\"upload\",class=\"2xx\"} 3")
        .await;
    assert!(
        text.contains("offload_requests_total{kind=\"upload\",class=\"2xx\"} 3"),
        "{text}"
    );
    assert!(text.contains(&format!("{series} 1")), "{text}");
    assert_eq!(
        store_errors_counted(&text),
        [format!("{series} 1")],
        "one failure, one count: {text}"
    );
    assert_eq!(
        app.seen()
            .iter()
            .filter(|r| r.starts_with("POST /mirror"))
            .count(),
        3,
        "every upload reached the app"
    );
}

/// The lines of `offload_store_errors_total` in `text` that count anything (every
/// operation and error is shown from the start, at 0).
fn store_errors_counted(text: &str) -> Vec<String> {
    text.lines()
        .filter(|line| line.starts_with("offload_store_errors_total{") && !line.ends_with(" 0"))
        .map(str::to_owned)
        .collect()
}

/// An object whose bytes stop coming (the store gone mid-download) is counted as an
/// interrupted `get`: the client's response ends short, and nothing else would tell.
#[tokio::test]
async fn a_store_gone_mid_object_is_counted_as_an_interrupted_get() {
    use futures_util::StreamExt;
    use std::sync::Arc;

    const LEN: u64 = 64 << 20;
    let app = crate::support::App::start().await;
    let mut s3 = crate::support::s3::start().await;
    let mut config = crate::support::config_for(app.addr);
    config.store = s3.target().store_config();
    config.assets.prefixes = vec!["/wp-content/uploads/".into()];
    let store: Arc<dyn offload::store::Store> =
        Arc::new(s3.target().store_with(&config.store).await);
    let stream = crate::support::pattern_stream(LEN).boxed();
    store
        .put("wp-content/uploads/big.bin", stream, Default::default())
        .await
        .expect("put");
    let proxy = crate::support::Proxy::start_with_store(config, store).await;

    let resp = client()
        .get(proxy.url("/wp-content/uploads/big.bin"))
        .send()
        .await
        .expect("asset");
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut got = body
        .next()
        .await
        .expect("a first chunk")
        .expect("bytes")
        .len() as u64;
    s3.stop();
    while let Some(Ok(chunk)) = body.next().await {
        got += chunk.len() as u64;
    }
    assert!(got < LEN, "the whole object came: {got}");
    let series = "offload_store_errors_total{operation=\"get\",error=\"interrupted\"} 1";
    let text = proxy.metrics_until(series).await;
    assert!(text.contains(series), "{text}");
    // The get itself answered (its first bytes came): timed once, as an answer.
    assert!(
        text.contains("offload_store_response_seconds_count{operation=\"get\"} 1"),
        "{text}"
    );
}

/// A request whose client leaves before the answer is counted, as a 4xx (499), under the
/// way it took.
#[tokio::test]
async fn a_request_the_client_left_is_counted() {
    use tokio::io::AsyncWriteExt;
    let (_app, proxy) = app_and_proxy(|_| {}).await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    stream
        .write_all(b"GET /sleep/3000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("request");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    drop(stream);
    proxy
        .metrics_until("offload_requests_total{kind=\"passthrough\",class=\"4xx\"} 1")
        .await;
}

#[tokio::test]
async fn other_methods_are_405_with_allow_and_other_paths_404() {
    let (_app, proxy) = app_and_proxy(|_| {}).await;
    let http = client();
    let refused = http
        .post(proxy.admin_url("/metrics"))
        .send()
        .await
        .expect("answer");
    assert_eq!(refused.status(), 405);
    assert_eq!(refused.headers()["allow"], "GET, HEAD");
    let missing = http
        .post(proxy.admin_url("/nope"))
        .send()
        .await
        .expect("answer");
    assert_eq!(missing.status(), 404);
}

/// Every metric deploy/grafana/offload-dashboard.json queries is one offload exports (with
/// `upstream.max_connections` set, as the gauges of its panel need), by the names a scrape
/// shows: a counter's with `_total`, a histogram's with `_bucket`.
#[tokio::test]
async fn the_dashboards_queries_name_metrics_offload_exports() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/offload-dashboard.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("JSON");
    let mut queried = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("expr");
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("offload_") || word.starts_with("process_") {
                    queried.insert(word.to_string());
                }
            }
        }
    }
    assert!(queried.len() >= 15, "{queried:?}");

    let (_app, proxy) = app_and_proxy(|c| c.upstream.max_connections = 8).await;
    let scraped = client()
        .get(proxy.admin_url("/metrics"))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body");
    let mut exported = std::collections::BTreeSet::new();
    for line in scraped.lines() {
        let mut words = line.split_whitespace();
        if line.starts_with("# TYPE") {
            let (name, kind) = (words.nth(2).unwrap_or(""), words.next().unwrap_or(""));
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_count", "_sum"],
                _ => &[""],
            };
            exported.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        }
    }
    let missing: Vec<_> = queried.difference(&exported).collect();
    assert!(missing.is_empty(), "not exported: {missing:?}\n{scraped}");
}

/// A WebSocket's request counts in the latency histogram with the time to its switch, not
/// the tunnel's life (minutes or hours, which would swamp the pass-through p99), and its
/// tunnel's bytes count in the byte totals.
#[tokio::test]
async fn a_websocket_counts_its_switch_time_and_its_tunnels_bytes() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let (_app, proxy) = app_and_proxy(|_| {}).await;
    let url = format!("ws://{}/ws", proxy.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("websocket handshake");
    let message = Message::binary(vec![1u8; 50_000]);
    ws.send(message.clone()).await.expect("send");
    assert_eq!(ws.next().await.expect("echo").expect("frame"), message);
    tokio::time::sleep(Duration::from_millis(700)).await;
    ws.close(None).await.expect("close");
    drop(ws);

    let counted = "offload_requests_total{kind=\"passthrough\",class=\"1xx\"} 1";
    let text = proxy.metrics_until(counted).await;
    assert!(text.contains(counted), "{text}");
    let value = |name: &str| metric(&text, name);
    let seconds = value("offload_request_duration_seconds_sum{kind=\"passthrough\"}");
    assert!(seconds < 0.5, "the tunnel's 0.7 s counted: {seconds}");
    assert!(
        value("offload_request_body_bytes_total") >= 50_000.0,
        "{text}"
    );
    assert!(
        value("offload_response_body_bytes_total") >= 50_000.0,
        "{text}"
    );
}

/// The value of the sample `name` (with its labels) in a `/metrics` text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .parse()
        .expect("a number")
}

/// With `upstream.ready_path`, `/readyz` asks the app for it: ready on an answer below 500
/// in time, not ready on a 5xx or on no answer (an app frozen with its socket open, which a
/// connection alone cannot tell).
#[tokio::test]
async fn readyz_asks_the_app_its_ready_path() {
    use crate::support::raw::RawApp;
    use tokio::io::AsyncWriteExt;

    let readyz = |proxy: &crate::support::Proxy| {
        let url = proxy.admin_url("/readyz");
        async move {
            let resp = client().get(url).send().await.expect("readyz");
            (resp.status().as_u16(), resp.text().await.expect("body"))
        }
    };
    let (app, answering) =
        app_and_proxy(|c| c.upstream.ready_path = Some("/bytes/1000".into())).await;
    for _ in 0..3 {
        assert_eq!(readyz(&answering).await.0, 200);
    }
    // Each answer is read to its end: one connection serves every probe.
    assert_eq!(app.connections(), 1);
    let (_app, slow) = app_and_proxy(|c| c.upstream.ready_path = Some("/sleep/3000".into())).await;
    let (status, text) = readyz(&slow).await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("/sleep/3000: no answer within 2s"), "{text}");

    let unavailable = RawApp::start(|mut stream, _| async move {
        let _ = stream
            .write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
            .await;
    })
    .await;
    let mut config = crate::support::config_for(unavailable.addr);
    config.upstream.ready_path = Some("/ready".into());
    let proxy = crate::support::Proxy::start(config).await;
    let (status, text) = readyz(&proxy).await;
    assert_eq!(status, 503, "{text}");
    assert!(
        text.contains("/ready: the app answered 503 Service Unavailable"),
        "{text}"
    );

    // A frozen app: its socket takes connections, nothing answers. Without a path it looks
    // ready; with one it does not.
    let frozen = RawApp::counting().await;
    let connected = crate::support::Proxy::start(crate::support::config_for(frozen.addr)).await;
    assert_eq!(readyz(&connected).await.0, 200);
    let mut config = crate::support::config_for(frozen.addr);
    config.upstream.ready_path = Some("/".into());
    let asking = crate::support::Proxy::start(config).await;
    assert_eq!(readyz(&asking).await.0, 503);
}
