//! The admin listener: health, readiness, metrics.

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
