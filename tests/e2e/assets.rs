//! Managed assets end to end, through the real router: presence and origin pull, the asset
//! fallback (app first, then the store or a redirect), the fs store's serve prefix and
//! `offload demo`. A real app ([`Site`]) and a real S3 server (s3s-fs in-process).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use offload::config::{Config, MissingAsset, StoreKind, UploadMode, UploadRouteConfig};
use offload::store::{PutOptions, Store};
use sha2::{Digest, Sha256};

use crate::support::s3::{self, S3Server};
use crate::support::site::{Page, Site};
use crate::support::{Proxy, client, config_for, get_text, raw_exchange};

pub const PREFIX: &str = "/wp-content/uploads/";
pub const CDN: &str = "https://cdn.example.com/";

/// The app, the S3 server, the store offload uses, and offload in front of the app.
pub struct Rig {
    pub site: Site,
    pub s3: S3Server,
    pub store: Arc<dyn Store>,
    pub proxy: Proxy,
}

/// offload with `/wp-content/uploads/` managed, `https://example.com` a site origin, and an S3
/// store whose public URL is `https://cdn.example.com/`; `tweak` edits the config first.
pub async fn rig(tweak: impl FnOnce(&mut Config)) -> Rig {
    let site = Site::start().await;
    let s3 = s3::start().await;
    let mut config = config_for(site.addr);
    config.assets.prefixes = vec![PREFIX.into()];
    config.assets.site_origins = vec!["https://example.com".parse().expect("origin")];
    config.store = s3.target().store_config();
    config.store.public_url = Some(CDN.parse().expect("cdn"));
    tweak(&mut config);
    let store: Arc<dyn Store> = Arc::new(s3.target().store_with(&config.store).await);
    let proxy = Proxy::start_with_store(config, store.clone()).await;
    Rig {
        site,
        s3,
        store,
        proxy,
    }
}

pub fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Deterministic "image" bytes.
pub fn image(len: usize, seed: u8) -> Bytes {
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut x = u32::from(seed) | 1;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        v.push(x as u8);
    }
    v.truncate(len);
    Bytes::from(v)
}

pub async fn put(store: &Arc<dyn Store>, key: &str, bytes: Bytes, ct: &str, cc: &str) {
    let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(bytes) });
    let opts = PutOptions {
        content_type: Some(ct.into()),
        cache_control: Some(cc.into()),
        ..PutOptions::default()
    };
    store
        .put(key, Box::pin(stream), opts)
        .await
        .expect("put into the store");
}

async fn stored_bytes(store: &Arc<dyn Store>, key: &str) -> Option<Vec<u8>> {
    use futures_util::StreamExt;
    let mut obj = store.get(key, None).await.ok()??;
    let mut out = Vec::new();
    while let Some(chunk) = obj.body.next().await {
        out.extend_from_slice(&chunk.ok()?);
    }
    Some(out)
}

/// Polls `url` until its body contains `needle` (bounded); returns the body.
async fn poll_page(url: &str, needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, text) = get_text(url).await;
        if status == 200 && text.contains(needle) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{url} never showed {needle}: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn post_page(asset: &str) -> String {
    format!("<html><body><p>hello</p><img src=\"{asset}\" alt=\"a\"></body></html>")
}

#[tokio::test]
async fn origin_pull_once_then_public_url() {
    let r = rig(|_| {}).await;
    let asset = "/wp-content/uploads/2024/05/a.png";
    let bytes = image(70_000, 1);
    r.site.set(
        asset,
        Page::new(200, "image/png", bytes.clone()).header("cache-control", "public, max-age=600"),
    );
    r.site.set("/post", Page::html(post_page(asset)));

    // The first answer keeps the URL local (the object is not in the store yet).
    let (status, first) = get_text(&r.proxy.url("/post")).await;
    assert_eq!(status, 200);
    assert_eq!(first, post_page(asset));
    // 20 pages at once name it too: the app still sees one GET for it.
    let post = r.proxy.url("/post");
    let pages = (0..20).map(|_| get_text(&post));
    for (status, _) in futures_util::future::join_all(pages).await {
        assert_eq!(status, 200);
    }
    let public = format!("{CDN}wp-content/uploads/2024/05/a.png");
    let page = poll_page(&r.proxy.url("/post"), &public).await;
    assert_eq!(page, post_page(&public));
    assert_eq!(r.site.count("GET", asset), 1, "{:?}", r.site.log());

    let key = "wp-content/uploads/2024/05/a.png";
    let info = r.store.head(key).await.expect("head").expect("stored");
    assert_eq!(info.content_type.as_deref(), Some("image/png"));
    assert_eq!(info.cache_control.as_deref(), Some("public, max-age=600"));
    let stored = stored_bytes(&r.store, key).await.expect("stored bytes");
    assert_eq!(sha(&stored), sha(&bytes));
    // Later pages keep pointing at the store without asking the app again.
    for _ in 0..3 {
        assert_eq!(get_text(&r.proxy.url("/post")).await.1, post_page(&public));
    }
    assert_eq!(r.site.count("GET", asset), 1);
}

/// An app that serves its files to its own name only (a name-based virtual host) is asked
/// for an asset with the Host of the page that named it, as the page itself was asked, when
/// that Host names the site (`assets.site_origins`; any other could have another site's
/// files stored under our keys).
#[tokio::test]
async fn origin_pull_asks_the_app_with_the_pages_host() {
    let r = rig(|c| {
        c.assets
            .site_origins
            .push("http://site.test".parse().unwrap())
    })
    .await;
    let asset = "/wp-content/uploads/vhost.png";
    let bytes = image(5_000, 9);
    r.site.set(
        asset,
        Page::new(200, "image/png", bytes.clone()).only_for_host("site.test"),
    );
    r.site.set("/post", Page::html(post_page(asset)));
    let public = format!("{CDN}wp-content/uploads/vhost.png");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let page = client()
            .get(r.proxy.url("/post"))
            .header("host", "site.test")
            .send()
            .await
            .expect("page")
            .text()
            .await
            .expect("text");
        if page == post_page(&public) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never rewritten: {page}; the app saw {:?}",
            r.site.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stored = stored_bytes(&r.store, "wp-content/uploads/vhost.png").await;
    assert_eq!(stored.map(|b| sha(&b)), Some(sha(&bytes)));
}

#[tokio::test]
async fn origin_pull_takes_only_allowed_200s_within_the_size_limit() {
    let r = rig(|c| {
        c.assets.pull_max_size = bytesize::ByteSize::kib(4);
        c.store.cache_absent_ttl = Duration::from_millis(200);
    })
    .await;
    let html = "/wp-content/uploads/page.html";
    let missing = "/wp-content/uploads/missing.png";
    let big = "/wp-content/uploads/big.png";
    let big_chunked = "/wp-content/uploads/big-chunked.png";
    let ok = "/wp-content/uploads/ok.png";
    r.site.set(html, Page::html("<p>not an asset</p>"));
    r.site.set(big, Page::new(200, "image/png", image(5000, 2)));
    r.site.set(
        big_chunked,
        Page::new(200, "image/png", image(9000, 3)).chunked(1000),
    );
    r.site.set(ok, Page::new(200, "image/png", image(4096, 4)));
    let body = [html, missing, big, big_chunked, ok]
        .map(|a| format!("<img src=\"{a}\">"))
        .concat();
    r.site.set("/post", Page::html(body.clone()));
    assert_eq!(get_text(&r.proxy.url("/post")).await.1, body);
    // The allowed one lands; the others were each fetched once and not stored.
    poll_page(
        &r.proxy.url("/post"),
        &format!("{CDN}wp-content/uploads/ok.png"),
    )
    .await;
    for a in [html, missing, big, big_chunked] {
        r.site.wait_for("GET", a).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for a in [html, missing, big, big_chunked] {
        let key = a.trim_start_matches('/');
        assert_eq!(
            r.store.head(key).await.expect("head"),
            None,
            "{a} was stored"
        );
        assert_eq!(r.site.count("GET", a), 1, "{a}");
    }
    let text = get_text(&r.proxy.url("/post")).await.1;
    for a in [html, missing, big, big_chunked] {
        assert!(text.contains(&format!("<img src=\"{a}\">")), "{text}");
    }
    // Views past the absent answers' life: what the app turned down is not asked again
    // (as a CDN caches an error), the chunked one too large as the one that said so.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        get_text(&r.proxy.url("/post")).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for a in [html, missing, big, big_chunked] {
        assert_eq!(r.site.count("GET", a), 1, "{a} asked again");
    }
}

/// An app that stops sending an asset mid-way does not hold the pull (its place under
/// `pull_concurrency`, its app connection) for good: the copy fails after
/// `server.idle_timeout` without a byte, nothing is stored, and the next asset is pulled.
#[tokio::test]
async fn an_origin_pull_the_app_stalls_gives_way_after_the_idle_timeout() {
    let r = rig(|c| {
        c.assets.pull_concurrency = 1;
        c.server.idle_timeout = Duration::from_millis(500);
    })
    .await;
    let stalled = "/wp-content/uploads/stalled.png";
    let ok = "/wp-content/uploads/ok.png";
    let (page, tx) = Page::streamed(200, "image/png");
    r.site.set(stalled, page);
    tx.send(image(1000, 5)).await.expect("first bytes");
    r.site.set(ok, Page::new(200, "image/png", image(4096, 6)));
    r.site.set("/first", Page::html(post_page(stalled)));
    r.site.set("/second", Page::html(post_page(ok)));

    assert_eq!(get_text(&r.proxy.url("/first")).await.0, 200);
    r.site.wait_for("GET", stalled).await;
    // The only pull's place is taken by the stalled copy; this one waits for it.
    assert_eq!(get_text(&r.proxy.url("/second")).await.0, 200);
    poll_page(
        &r.proxy.url("/second"),
        &format!("{CDN}wp-content/uploads/ok.png"),
    )
    .await;
    let stalled_key = stalled.trim_start_matches('/');
    assert_eq!(r.store.head(stalled_key).await.expect("head"), None);
    // Kept open to here: the copy gave up, the app never ended the answer.
    drop(tx);
}

#[tokio::test]
async fn assume_present_rewrites_without_checks() {
    let r = rig(|c| c.assets.assume_present = true).await;
    let asset = "/wp-content/uploads/x.png";
    r.site.set("/post", Page::html(post_page(asset)));
    let (status, text) = get_text(&r.proxy.url("/post")).await;
    assert_eq!(status, 200);
    assert_eq!(text, post_page(&format!("{CDN}wp-content/uploads/x.png")));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(r.site.log(), vec![("GET".to_string(), "/post".to_string())]);
}

#[tokio::test]
async fn the_app_answers_first_then_the_store() {
    let r = rig(|_| {}).await;
    let key = "wp-content/uploads/s.png";
    let stored = image(10_000, 5);
    put(
        &r.store,
        key,
        stored.clone(),
        "image/png",
        "public, max-age=99",
    )
    .await;
    // The app has it: the app's bytes.
    let app_bytes = image(3000, 6);
    r.site.set(
        "/wp-content/uploads/s.png",
        Page::new(200, "image/png", app_bytes.clone()),
    );
    let resp = client()
        .get(r.proxy.url("/wp-content/uploads/s.png"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap(), app_bytes);

    // The app lacks it: the store's object, with its metadata.
    let r2 = rig(|_| {}).await;
    put(
        &r2.store,
        key,
        stored.clone(),
        "image/png",
        "public, max-age=99",
    )
    .await;
    let url = r2.proxy.url("/wp-content/uploads/s.png");
    let resp = client().get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["content-type"], "image/png");
    assert_eq!(h["cache-control"], "public, max-age=99");
    assert_eq!(h["content-length"], "10000");
    assert!(h.contains_key("last-modified"), "{h:?}");
    let etag = h["etag"].to_str().unwrap().to_string();
    assert_eq!(resp.bytes().await.unwrap(), stored);

    let resp = client()
        .get(&url)
        .header("range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(resp.headers()["content-range"], "bytes 100-199/10000");
    assert_eq!(resp.bytes().await.unwrap(), stored.slice(100..200));

    let resp = client()
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 304);
    assert_eq!(resp.headers()["etag"], etag.as_str());
    assert!(resp.bytes().await.unwrap().is_empty());

    let resp = client().head(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], "10000");
    assert!(resp.bytes().await.unwrap().is_empty());

    // Neither has it: the app's own 404.
    let (status, text) = get_text(&r2.proxy.url("/wp-content/uploads/none.png")).await;
    assert_eq!((status, text.as_str()), (404, "not found"));
}

#[tokio::test]
async fn missing_redirect_points_at_our_public_base_only() {
    let r = rig(|c| c.assets.missing = MissingAsset::Redirect).await;
    put(
        &r.store,
        "wp-content/uploads/r.png",
        image(100, 7),
        "image/png",
        "public",
    )
    .await;
    let no_redirects = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = no_redirects
        .get(
            r.proxy
                .url("/wp-content/uploads/r.png?x=https://evil.example/"),
        )
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    // The query goes along (a cache buster, as rewritten URLs keep it), on our own base.
    assert_eq!(
        resp.headers()["location"],
        format!("{CDN}wp-content/uploads/r.png?x=https://evil.example/")
    );
    // Not in the store: the app's 404.
    let resp = no_redirects
        .get(r.proxy.url("/wp-content/uploads/none.png"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert!(!resp.headers().contains_key("location"));
    assert_eq!(resp.text().await.unwrap(), "not found");
}

#[tokio::test]
async fn missing_off_keeps_the_apps_404() {
    let r = rig(|c| c.assets.missing = MissingAsset::Off).await;
    put(
        &r.store,
        "wp-content/uploads/o.png",
        image(100, 8),
        "image/png",
        "public",
    )
    .await;
    let (status, text) = get_text(&r.proxy.url("/wp-content/uploads/o.png")).await;
    assert_eq!((status, text.as_str()), (404, "not found"));
}

#[tokio::test]
async fn the_store_serves_while_the_app_is_down_or_failing() {
    let r = rig(|_| {}).await;
    let stored = image(2000, 9);
    put(
        &r.store,
        "wp-content/uploads/d.png",
        stored.clone(),
        "image/png",
        "public",
    )
    .await;
    let Rig {
        site,
        s3,
        store,
        proxy,
    } = r;
    // An app whose own proxy answers for it (502, 503, 504: PHP-FPM down behind nginx): the
    // store's copy too; and the app's answer where the store has none.
    for status in [502, 503, 504] {
        site.set(
            "/wp-content/uploads/d.png",
            Page::new(status, "text/html", "app down"),
        );
        let resp = client()
            .get(proxy.url("/wp-content/uploads/d.png"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{status}");
        assert_eq!(resp.bytes().await.unwrap(), stored);
        site.set(
            "/wp-content/uploads/x.png",
            Page::new(status, "text/html", "app down"),
        );
        let (got, text) = get_text(&proxy.url("/wp-content/uploads/x.png")).await;
        assert_eq!((got, text.as_str()), (status, "app down"));
    }
    // A proxy whose app is gone.
    let dead = site.addr;
    drop(site);
    let mut config = config_for(dead);
    config.assets.prefixes = vec![PREFIX.into()];
    config.store = s3.target().store_config();
    config.upstream.connect_timeout = Duration::from_secs(2);
    let proxy2 = Proxy::start_with_store(config, store.clone()).await;
    for p in [&proxy, &proxy2] {
        let resp = client()
            .get(p.url("/wp-content/uploads/d.png"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.bytes().await.unwrap(), stored);
        let resp = client()
            .get(p.url("/wp-content/uploads/none.png"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 502);
    }
}

#[tokio::test]
async fn traversal_never_reaches_the_store_nor_queues_a_pull() {
    for missing in [MissingAsset::Store, MissingAsset::Redirect] {
        let r = rig(|c| c.assets.missing = missing).await;
        let secret = Bytes::from_static(b"DB_PASSWORD=hunter2");
        for key in [
            "wp-config.php",
            "wp-content/wp-config.php",
            "wp-content/uploads/wp-config.php",
        ] {
            put(&r.store, key, secret.clone(), "text/plain", "private").await;
        }
        let attempts = [
            "/wp-content/uploads/../../wp-config.php",
            "/wp-content/uploads/%2e%2e/%2e%2e/wp-config.php",
            "/wp-content/uploads/%2E%2E/wp-config.php",
            "/wp-content/uploads/..%2f..%2fwp-config.php",
            "/wp-content/uploads/a%2f..%2f..%2fwp-config.php",
            "/wp-content/uploads/..\\..\\wp-config.php",
            "/wp-content/uploads/%2e%2e%5c%2e%2e%5cwp-config.php",
        ];
        for target in attempts {
            let request =
                format!("GET {target} HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n");
            let response =
                raw_exchange(r.proxy.addr, request.as_bytes(), Duration::from_secs(20)).await;
            assert!(!response.contains("hunter2"), "{target}: {response}");
            assert!(
                !response.contains("cdn.example.com"),
                "{target}: {response}"
            );
            let status = response.split(' ').nth(1).unwrap_or_default();
            assert!(["404", "400"].contains(&status), "{target}: {response}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Only the requests themselves reached the app (never an origin pull).
        let log = r.site.log();
        assert!(log.len() <= attempts.len(), "{log:?}");
        assert!(log.iter().all(|(m, _)| m == "GET"), "{log:?}");
    }
}

/// The app, the fs store's folder, and offload with `/wp-content/uploads/` managed, a
/// respond-mode upload route at `/upload` and objects stored with `max-age=600`; `tweak`
/// edits the config last.
async fn fs_rig(tweak: impl FnOnce(&mut Config)) -> (Site, tempfile::TempDir, Proxy) {
    let site = Site::start().await;
    let data = tempfile::tempdir().unwrap();
    let mut config = config_for(site.addr);
    config.store.kind = StoreKind::Fs;
    config.store.root = data.path().to_path_buf();
    config.store.cache_control = "public, max-age=600".into();
    config.assets.prefixes = vec![PREFIX.into()];
    config.uploads = vec![UploadRouteConfig {
        path: "/upload".into(),
        mode: UploadMode::Respond,
        ..UploadRouteConfig::default()
    }];
    tweak(&mut config);
    let proxy = Proxy::start(config).await;
    (site, data, proxy)
}

/// Uploads `bytes` as the PNG `name` to `/upload`; the JSON answer (201).
async fn upload_png(proxy: &Proxy, bytes: &[u8], name: &str) -> serde_json::Value {
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(bytes.to_vec())
            .file_name(name.to_string())
            .mime_str("image/png")
            .unwrap(),
    );
    let resp = client()
        .post(proxy.url("/upload"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    resp.json().await.unwrap()
}

#[tokio::test]
async fn fs_store_serve_prefix_after_a_respond_upload() {
    let (site, data, proxy) = fs_rig(|_| {}).await;
    let bytes = image(12_345, 10);
    let json = upload_png(&proxy, &bytes, "photo.png").await;
    let key = json["files"][0]["key"].as_str().expect("key").to_string();
    let url = json["files"][0]["url"].as_str().expect("url").to_string();
    assert!(key.ends_with("/photo.png"), "{json}");
    assert_eq!(url, format!("/_offload/{key}"));
    let resp = client().get(proxy.url(&url)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "image/png");
    // An upload comes with no Cache-Control of its own: it is stored with the store's.
    assert_eq!(resp.headers()["cache-control"], "public, max-age=600");
    assert_eq!(resp.bytes().await.unwrap(), bytes);
    assert!(site.log().is_empty(), "the app saw {:?}", site.log());
    // Nothing outside the folder through the serve prefix.
    std::fs::write(data.path().join("secret.txt"), "hunter2").unwrap();
    for target in [
        "/_offload/../secret.txt",
        "/_offload/%2e%2e/secret.txt",
        "/_offload/..%2fsecret.txt",
    ] {
        let request = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let response = raw_exchange(proxy.addr, request.as_bytes(), Duration::from_secs(20)).await;
        assert!(!response.contains("hunter2"), "{target}: {response}");
        assert!(
            !response.starts_with("HTTP/1.1 200"),
            "{target}: {response}"
        );
    }
}

/// Each way through the proxy is counted under its own kind, and the app's time is counted for
/// the ways that asked the app (the asset, the pass-through) and only those.
#[tokio::test]
async fn each_way_is_counted_under_its_kind() {
    let (site, _data, proxy) = fs_rig(|_| {}).await;
    site.set("/page", Page::new(200, "text/plain", "hello"));
    site.set(
        "/wp-content/uploads/a.png",
        Page::new(200, "image/png", image(100, 1)),
    );
    let json = upload_png(&proxy, &image(500, 2), "b.png").await;
    let stored = json["files"][0]["url"].as_str().expect("url").to_string();
    for path in [stored.as_str(), "/wp-content/uploads/a.png", "/page"] {
        let (status, _) = get_text(&proxy.url(path)).await;
        assert_eq!(status, 200, "{path}");
    }
    let counted = |kind: &str| format!("offload_requests_total{{kind=\"{kind}\",class=\"2xx\"}} 1");
    let text = proxy.metrics_until(&counted("passthrough")).await;
    for kind in ["upload", "store", "asset", "passthrough"] {
        assert!(text.contains(&counted(kind)), "{kind}: {text}");
    }
    assert!(
        text.contains("offload_upstream_response_seconds_count 2"),
        "{text}"
    );
}

/// `offload demo`, the real binary: upload a picture, see it in the data folder and the gallery
/// pointing at the store, and the generated banner pulled on a later view.
#[tokio::test]
async fn demo_binary_tour() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let data = tempfile::tempdir().unwrap();
    let site_dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_offload"))
        .args(["demo", "--listen", "127.0.0.1:0", "--data"])
        .arg(data.path())
        .arg("--site-dir")
        .arg(site_dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("offload demo starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let base = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.expect("stdout") {
            if let Some(rest) = line.trim().strip_prefix("open") {
                let url = rest.split_whitespace().next().expect("url");
                return url.trim_end_matches('/').to_string();
            }
        }
        panic!("demo ended without printing its address");
    })
    .await
    .expect("demo prints its address");
    assert!(
        base.starts_with("http://127.0.0.1:") && !base.ends_with(":0"),
        "{base}"
    );

    let png = image(5000, 11);
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(png.to_vec())
            .file_name("cat.png")
            .mime_str("image/png")
            .unwrap(),
    );
    let resp = client()
        .post(format!("{base}/upload"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    let stored = std::fs::read(data.path().join("objects/uploads/cat.png")).expect("in the store");
    assert_eq!(sha(&stored), sha(&png));
    let gallery = poll_page(&format!("{base}/gallery"), "/_offload/uploads/cat.png").await;
    assert!(!gallery.contains("\"/uploads/cat.png\""), "{gallery}");
    // The banner: local at first, then pulled into the store.
    poll_page(
        &format!("{base}/gallery"),
        "/_offload/uploads/generated/banner.svg",
    )
    .await;
    assert!(
        data.path()
            .join("objects/uploads/generated/banner.svg")
            .is_file()
    );
    let resp = client()
        .get(format!("{base}/_offload/uploads/cat.png"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.bytes().await.unwrap(), png);
    child.kill().await.ok();
}

/// Defect: origin pull stored an app's SVG without `Content-Disposition: attachment`, so the
/// store (the fs store is served on the site's own origin) would render it as a document and
/// run its scripts; uploads through a route were already stored as attachments.
#[tokio::test]
async fn origin_pull_stores_active_types_as_attachments() {
    let r = rig(|_| {}).await;
    let svg = "/wp-content/uploads/logo.svg";
    let body = "<svg xmlns=\"http://www.w3.org/2000/svg\"><script>alert(1)</script></svg>";
    r.site.set(svg, Page::new(200, "image/svg+xml", body));
    r.site.set("/post", Page::html(post_page(svg)));
    get_text(&r.proxy.url("/post")).await;
    poll_page(
        &r.proxy.url("/post"),
        &format!("{CDN}wp-content/uploads/logo.svg"),
    )
    .await;
    let info = r
        .store
        .head("wp-content/uploads/logo.svg")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.content_type.as_deref(), Some("image/svg+xml"));
    assert_eq!(
        info.content_disposition.as_deref(),
        Some("attachment; filename=\"logo.svg\"; filename*=UTF-8''logo.svg")
    );
    // Served from the store once the app no longer has it: still an attachment.
    r.site.set(svg, Page::new(404, "text/plain", "gone"));
    let resp = client().get(r.proxy.url(svg)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-disposition"],
        "attachment; filename=\"logo.svg\"; filename*=UTF-8''logo.svg"
    );
    assert_eq!(resp.text().await.unwrap(), body);
}

/// Mirror mode copies the assets the app's answer to an upload names, while the client
/// waits: an answer naming hundreds has the first 256 copied, not one request to the app per
/// name however many there are.
#[tokio::test]
async fn mirror_copies_at_most_256_assets_per_upload_answer() {
    let r = rig(|c| {
        // Nothing copied in the background: what the app is asked for is the mirror's.
        c.assets.origin_pull = false;
        c.uploads = vec![UploadRouteConfig {
            path: "/upload".into(),
            mode: UploadMode::Mirror,
            ..UploadRouteConfig::default()
        }];
    })
    .await;
    let named: Vec<String> = (0..300).map(|i| format!("{PREFIX}size-{i}.png")).collect();
    for path in &named {
        r.site.set(path, Page::new(200, "image/png", image(64, 7)));
    }
    let answer = serde_json::json!({ "sizes": named.iter().map(|p| format!("https://example.com{p}")).collect::<Vec<_>>() });
    r.site.set(
        "/upload",
        Page::new(200, "application/json", answer.to_string()),
    );
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(image(100, 3).to_vec())
            .file_name("photo.png")
            .mime_str("image/png")
            .unwrap(),
    );
    let resp = client()
        .post(r.proxy.url("/upload"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let copied = named.iter().filter(|p| r.site.count("GET", p) > 0).count();
    assert_eq!(copied, 256);
    // The first 256, in the order the answer names them.
    assert_eq!(r.site.count("GET", &named[255]), 1);
    assert_eq!(r.site.count("GET", &named[256]), 0);
    assert!(
        stored_bytes(&r.store, "wp-content/uploads/size-0.png")
            .await
            .is_some()
    );
}

/// An object deleted from the store behind offload's back: the store's 404 for it tells the
/// presence cache, so pages point at the app again (not at a dead URL for `cache_ttl`), and
/// the asset is pulled back.
#[tokio::test]
async fn a_404_from_the_store_sets_pages_back_to_the_app() {
    let (site, data, proxy) =
        fs_rig(|c| c.store.cache_absent_ttl = Duration::from_millis(300)).await;
    let asset = "/wp-content/uploads/gone.png";
    site.set(asset, Page::new(200, "image/png", image(3_000, 4)));
    site.set("/post", Page::html(post_page(asset)));
    let served = "/_offload/wp-content/uploads/gone.png";
    poll_page(&proxy.url("/post"), served).await;
    for tree in ["objects", "meta"] {
        let dir = data.path().join(tree).join("wp-content/uploads");
        for entry in std::fs::read_dir(&dir).unwrap() {
            std::fs::remove_file(entry.unwrap().path()).unwrap();
        }
    }
    assert_eq!(get_text(&proxy.url(served)).await.0, 404);
    assert_eq!(get_text(&proxy.url("/post")).await.1, post_page(asset));
    poll_page(&proxy.url("/post"), served).await;
    assert_eq!(site.count("GET", asset), 2, "pulled again");
}

/// A managed URL naming a folder (a trailing `/`) is no object: the app's own answer stands
/// where the store would refuse the key.
#[tokio::test]
async fn a_folder_url_under_a_managed_prefix_gets_the_apps_404() {
    let (_site, _data, proxy) = fs_rig(|_| {}).await;
    let (status, text) = get_text(&proxy.url("/wp-content/uploads/2024/")).await;
    assert_eq!((status, text.as_str()), (404, "not found"));
}
