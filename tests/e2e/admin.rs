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
