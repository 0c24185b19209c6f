//! Response rewriting end to end: a real app's pages through the real router, every asset
//! known present (`assume_present`), public base `https://cdn.example.com/`.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncReadExt;

use crate::assets::{CDN, Rig, rig};
use crate::support::site::Page;

async fn present() -> Rig {
    rig(|c| c.assets.assume_present = true).await
}

fn cdn(path: &str) -> String {
    format!("{CDN}{}", path.trim_start_matches('/'))
}

const PAGE: &str = r#"<!doctype html><html><head>
<meta property="og:image" content="https://example.com/wp-content/uploads/og.jpg">
<link rel="stylesheet" href="/wp-content/uploads/style.css">
<style>.a{background:url(/wp-content/uploads/bg.png)}</style>
<script type="application/ld+json">{"image":"https:\/\/example.com\/wp-content\/uploads\/ld.jpg","logo":"https://example.com/wp-content/uploads/logo.png"}</script>
</head><body>
<img src="/wp-content/uploads/a.jpg" srcset="/wp-content/uploads/a-300x200.jpg 300w, https://example.com/wp-content/uploads/a-1024x768.jpg 1024w">
<a href="//example.com/wp-content/uploads/doc.pdf?x=1#p">doc</a>
<div style="background-image:url(&quot;/wp-content/uploads/div.png&quot;)">x</div>
<p>Text /wp-content/uploads/prose.jpg stays</p>
<img src="https://other.com/wp-content/uploads/o.jpg">
<img src="/wp-content/uploads-old/l.jpg">
<img src="/wp-content/uploadsx/l.jpg">
<img src="/blog/wp-content/uploads/l.jpg">
</body></html>"#;

fn page_expected() -> String {
    PAGE.replace(
        "https://example.com/wp-content/uploads/og.jpg",
        &cdn("/wp-content/uploads/og.jpg"),
    )
    .replace(
        "\"/wp-content/uploads/style.css\"",
        &format!("\"{}\"", cdn("/wp-content/uploads/style.css")),
    )
    .replace(
        "url(/wp-content/uploads/bg.png)",
        &format!("url({})", cdn("/wp-content/uploads/bg.png")),
    )
    .replace(
        r"https:\/\/example.com\/wp-content\/uploads\/ld.jpg",
        r"https:\/\/cdn.example.com\/wp-content\/uploads\/ld.jpg",
    )
    .replace(
        "https://example.com/wp-content/uploads/logo.png",
        &cdn("/wp-content/uploads/logo.png"),
    )
    .replace(
        "\"/wp-content/uploads/a.jpg\"",
        &format!("\"{}\"", cdn("/wp-content/uploads/a.jpg")),
    )
    .replace(
        "\"/wp-content/uploads/a-300x200.jpg 300w",
        &format!("\"{} 300w", cdn("/wp-content/uploads/a-300x200.jpg")),
    )
    .replace(
        "https://example.com/wp-content/uploads/a-1024x768.jpg",
        &cdn("/wp-content/uploads/a-1024x768.jpg"),
    )
    .replace(
        "//example.com/wp-content/uploads/doc.pdf?x=1#p",
        &format!("{}?x=1#p", cdn("/wp-content/uploads/doc.pdf")),
    )
    .replace(
        "&quot;/wp-content/uploads/div.png&quot;",
        &format!("&quot;{}&quot;", cdn("/wp-content/uploads/div.png")),
    )
}

async fn fetch(url: &str) -> reqwest::Response {
    crate::support::client().get(url).send().await.expect("GET")
}

#[tokio::test]
async fn html_positions_are_rewritten_and_the_rest_is_not() {
    let r = present().await;
    let page = Page::html(PAGE)
        .header("etag", "\"v1\"")
        .header("accept-ranges", "bytes")
        .header("last-modified", "Sun, 06 Dec 2026 10:00:00 GMT");
    r.site.set("/post", page);
    let resp = fetch(&r.proxy.url("/post")).await;
    assert_eq!(resp.status(), 200);
    // Not the app's bytes: no length, a weak tag, and no ranges to resume from (the app
    // would answer a range of its own bytes).
    for gone in ["content-length", "accept-ranges", "last-modified"] {
        assert!(!resp.headers().contains_key(gone), "{:?}", resp.headers());
    }
    assert_eq!(resp.headers()["etag"], "W/\"v1\"");
    let text = resp.text().await.unwrap();
    assert_eq!(text, page_expected());
    // Chunked from the app, split everywhere: the same answer.
    r.site.set("/post-chunked", Page::html(PAGE).chunked(7));
    let text = fetch(&r.proxy.url("/post-chunked"))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(text, page_expected());
}

#[tokio::test]
async fn json_css_and_xml() {
    let r = present().await;
    let json = r#"{"url":"https:\/\/example.com\/wp-content\/uploads\/2024\/a.jpg","rel":"\/wp-content\/uploads\/b.jpg","html":"<img src=\"https:\/\/example.com\/wp-content\/uploads\/c.jpg\">","other":"https:\/\/other.com\/wp-content\/uploads\/d.jpg","plain":"https://example.com/wp-content/uploads/e.jpg"}"#;
    let json_expected = r#"{"url":"https:\/\/cdn.example.com\/wp-content\/uploads\/2024\/a.jpg","rel":"https:\/\/cdn.example.com\/wp-content\/uploads\/b.jpg","html":"<img src=\"https:\/\/cdn.example.com\/wp-content\/uploads\/c.jpg\">","other":"https:\/\/other.com\/wp-content\/uploads\/d.jpg","plain":"https://cdn.example.com/wp-content/uploads/e.jpg"}"#;
    r.site.set(
        "/wp-json/wp/v2/posts",
        Page::new(200, "application/json; charset=UTF-8", json),
    );
    let text = fetch(&r.proxy.url("/wp-json/wp/v2/posts"))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(text, json_expected);

    let css = ".a{background:url('/wp-content/uploads/a.png')} .b{background:url(https://example.com/wp-content/uploads/b.png)} .c{background:url(/wp-content/uploads-old/c.png)}";
    let css_expected = format!(
        ".a{{background:url('{}')}} .b{{background:url({})}} .c{{background:url(/wp-content/uploads-old/c.png)}}",
        cdn("/wp-content/uploads/a.png"),
        cdn("/wp-content/uploads/b.png")
    );
    r.site.set("/style.css", Page::new(200, "text/css", css));
    let text = fetch(&r.proxy.url("/style.css"))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(text, css_expected);

    let rss =
        "<rss><item><enclosure url=\"https://example.com/wp-content/uploads/p.mp3\"/></item></rss>";
    r.site
        .set("/feed", Page::new(200, "application/rss+xml", rss));
    let text = fetch(&r.proxy.url("/feed")).await.text().await.unwrap();
    assert_eq!(text, rss.replace("https://example.com/", CDN));
}

async fn encode(coding: &str, data: &[u8]) -> Vec<u8> {
    use async_compression::tokio::bufread::{
        BrotliEncoder, DeflateEncoder, GzipEncoder, ZlibEncoder, ZstdEncoder,
    };
    let mut out = Vec::new();
    match coding {
        "deflate" => ZlibEncoder::new(data).read_to_end(&mut out).await,
        "raw-deflate" => DeflateEncoder::new(data).read_to_end(&mut out).await,
        "gzip" => GzipEncoder::new(data).read_to_end(&mut out).await,
        "br" => BrotliEncoder::new(data).read_to_end(&mut out).await,
        "zstd" => ZstdEncoder::new(data).read_to_end(&mut out).await,
        _ => unreachable!(),
    }
    .expect("encode");
    out
}

async fn decode(coding: &str, data: &[u8]) -> Vec<u8> {
    use async_compression::tokio::bufread::{BrotliDecoder, GzipDecoder, ZlibDecoder, ZstdDecoder};
    let mut out = Vec::new();
    match coding {
        "deflate" => ZlibDecoder::new(data).read_to_end(&mut out).await,
        "gzip" => GzipDecoder::new(data).read_to_end(&mut out).await,
        "br" => BrotliDecoder::new(data).read_to_end(&mut out).await,
        "zstd" => ZstdDecoder::new(data).read_to_end(&mut out).await,
        _ => unreachable!(),
    }
    .expect("decode");
    out
}

/// A client that takes what it gets as it comes (no decoding).
fn raw_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .no_gzip()
        .no_brotli()
        .no_zstd()
        .no_deflate()
        .build()
        .unwrap()
}

#[tokio::test]
async fn compressed_pages_are_decoded_rewritten_and_reencoded() {
    let r = present().await;
    let raw = raw_client();
    // "deflate" is zlib, but raw DEFLATE under that name (which browsers take) is read too;
    // either way the answer is zlib.
    for (sent, coding) in [
        ("gzip", "gzip"),
        ("br", "br"),
        ("zstd", "zstd"),
        ("deflate", "deflate"),
        ("raw-deflate", "deflate"),
    ] {
        let path = format!("/post-{sent}");
        let body = encode(sent, PAGE.as_bytes()).await;
        r.site.set(
            &path,
            Page::new(200, "text/html", body).header("content-encoding", coding),
        );
        let resp = raw
            .get(r.proxy.url(&path))
            .header("accept-encoding", "gzip, br, zstd")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-encoding"], coding);
        assert!(!resp.headers().contains_key("content-length"));
        let body = resp.bytes().await.unwrap();
        let text = String::from_utf8(decode(coding, &body).await).unwrap();
        assert_eq!(text, page_expected(), "{sent}");
    }
}

/// A body that is not in the coding it names (plain text labelled gzip, an empty one) is
/// passed on as the app sent it, where decoding it would have cut it short: the client
/// got a 200 with no body and a dropped connection.
#[tokio::test]
async fn a_body_not_in_its_named_coding_passes_as_it_came() {
    let r = present().await;
    let raw = raw_client();
    for (path, coding, body) in [
        ("/plain-as-gzip", "gzip", PAGE.as_bytes()),
        ("/plain-as-zstd", "zstd", PAGE.as_bytes()),
        ("/empty-gzip", "gzip", b"".as_slice()),
    ] {
        r.site.set(
            path,
            Page::new(200, "text/html", body.to_vec()).header("content-encoding", coding),
        );
        let resp = raw.get(r.proxy.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.headers()["content-encoding"], coding, "{path}");
        assert_eq!(resp.bytes().await.unwrap(), body, "{path}");
    }
}

#[tokio::test]
async fn location_link_and_refresh_headers() {
    let r = present().await;
    let no_redirects = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    r.site.set(
        "/go",
        Page::new(302, "text/plain", "moved")
            .header("location", "https://example.com/wp-content/uploads/a.png")
            .header("link", "</wp-content/uploads/a.css>; rel=preload; as=style")
            .header("refresh", "0; url=/wp-content/uploads/b.png"),
    );
    let resp = no_redirects.get(r.proxy.url("/go")).send().await.unwrap();
    assert_eq!(resp.status(), 302);
    let h = resp.headers();
    assert_eq!(h["location"], cdn("/wp-content/uploads/a.png"));
    assert_eq!(
        h["link"],
        format!(
            "<{}>; rel=preload; as=style",
            cdn("/wp-content/uploads/a.css")
        )
    );
    assert_eq!(
        h["refresh"],
        format!("0; url={}", cdn("/wp-content/uploads/b.png"))
    );
    assert_eq!(resp.text().await.unwrap(), "moved");

    r.site.set(
        "/go-elsewhere",
        Page::new(302, "text/plain", "moved")
            .header("location", "https://other.com/wp-content/uploads/a.png"),
    );
    let resp = no_redirects
        .get(r.proxy.url("/go-elsewhere"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["location"],
        "https://other.com/wp-content/uploads/a.png"
    );
}

#[tokio::test]
async fn non_2xx_206_and_no_transform_are_untouched_and_head_says_what_get_does() {
    let r = present().await;
    let cases = [
        ("/nf", Page::new(404, "text/html", PAGE)),
        (
            "/partial",
            Page::new(206, "text/html", PAGE).header(
                "content-range",
                &format!("bytes 0-{}/99999", PAGE.len() - 1),
            ),
        ),
        (
            "/nt",
            Page::new(200, "text/html", PAGE).header("cache-control", "public, no-transform"),
        ),
    ];
    for (path, page) in cases {
        r.site.set(path, page.header("etag", "\"e1\""));
        let resp = fetch(&r.proxy.url(path)).await;
        assert_eq!(resp.headers()["etag"], "\"e1\"", "{path}");
        assert_eq!(
            resp.headers()["content-length"],
            PAGE.len().to_string().as_str(),
            "{path}"
        );
        assert_eq!(
            resp.bytes().await.unwrap(),
            Bytes::from_static(PAGE.as_bytes()),
            "{path}"
        );
    }
    // A HEAD of a page a GET rewrites says what the GET says (as nginx's sub_filter does):
    // not the app's length, ranges or strong tag.
    r.site.set(
        "/post",
        Page::html(PAGE)
            .header("etag", "\"e2\"")
            .header("accept-ranges", "bytes")
            .header("content-md5", "Q2hlY2sgSW50ZWdyaXR5IQ=="),
    );
    let head = crate::support::client()
        .head(r.proxy.url("/post"))
        .send()
        .await
        .unwrap();
    let get = fetch(&r.proxy.url("/post")).await;
    assert_eq!(head.status(), 200);
    for name in ["etag", "content-length", "accept-ranges", "content-md5"] {
        assert_eq!(
            head.headers().get(name),
            get.headers().get(name),
            "{name}: HEAD {:?}, GET {:?}",
            head.headers(),
            get.headers()
        );
    }
    assert_eq!(head.headers()["etag"], "W/\"e2\"");
    assert!(head.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_50_mib_page_streams() {
    let r = present().await;
    let (page, tx) = Page::streamed(200, "text/html");
    r.site.set("/big", page);
    let tag = "<img src=\"/wp-content/uploads/i.jpg\">";
    let mut chunk = String::new();
    while chunk.len() + tag.len() <= 64 * 1024 {
        chunk.push_str(tag);
    }
    let per_chunk = chunk.len() / tag.len();
    let chunk = Bytes::from(chunk);
    let chunks = (50 << 20) / chunk.len() + 1;
    tx.send(Bytes::from_static(b"<!doctype html><html><body>"))
        .await
        .unwrap();
    tx.send(chunk.clone()).await.unwrap();
    let mut resp = fetch(&r.proxy.url("/big")).await;
    assert_eq!(resp.status(), 200);
    // Output arrives while the app has sent one chunk of ~800.
    let first = tokio::time::timeout(Duration::from_secs(30), resp.chunk())
        .await
        .expect("first bytes before the app finished")
        .unwrap()
        .expect("a chunk");
    assert!(first.starts_with(b"<!doctype html><html><body>"));
    let sender = tokio::spawn(async move {
        for _ in 1..chunks {
            tx.send(chunk.clone()).await.unwrap();
        }
        tx.send(Bytes::from_static(b"</body></html>"))
            .await
            .unwrap();
    });
    let new_tag = format!("<img src=\"{}\">", cdn("/wp-content/uploads/i.jpg"));
    let mut total = first.len();
    let mut tail = first.to_vec();
    let mut found = count(&tail, new_tag.as_bytes());
    tail = tail[tail.len().saturating_sub(new_tag.len())..].to_vec();
    while let Some(c) = resp.chunk().await.unwrap() {
        total += c.len();
        let mut window = std::mem::take(&mut tail);
        let keep = window.len();
        window.extend_from_slice(&c);
        found += count(&window, new_tag.as_bytes()) - count(&window[..keep], new_tag.as_bytes());
        tail = window[window.len().saturating_sub(new_tag.len())..].to_vec();
    }
    sender.await.unwrap();
    let tags = chunks * per_chunk;
    assert_eq!(found, tags);
    assert_eq!(
        total,
        "<!doctype html><html><body>".len() + tags * new_tag.len() + "</body></html>".len()
    );
    assert!(tail.ends_with(b"</body></html>"));
}

fn count(hay: &[u8], needle: &[u8]) -> usize {
    memchr::memmem::find_iter(hay, needle).count()
}

/// A large page to rewrite goes out over HTTP/2 in pieces that each tell the stream's
/// watch the answer moved: a client reading it slowly but steadily through a small window
/// is not reset as stalled, though the page takes it longer than `idle_timeout`. Here
/// 2.5 MiB, of which the first 2 MiB were read whole (to look their assets up) and went on
/// as one piece: hyper took the next piece at once and then waited for the window to
/// drain the first, and the watch, seeing no move for that long, reset the stream.
#[tokio::test]
async fn a_slow_steady_http2_reader_of_a_rewritten_page_is_not_cut_off() {
    let r = rig(|c| c.server.idle_timeout = Duration::from_millis(300)).await;
    let page = "<p>a paragraph of text, no assets</p>\n".repeat(70_000);
    r.site.set("/long", Page::html(page.clone()));
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .http2_initial_stream_window_size(65_535)
        .build()
        .unwrap();
    let mut resp = h2.get(r.proxy.url("/long")).send().await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let began = std::time::Instant::now();
    // 32 KiB per 20 ms: 2 MiB take ~1.3 s, a 16 KiB piece ~10 ms.
    let (mut body, mut paused_at) = (Vec::new(), 0);
    while let Some(chunk) = resp.chunk().await.expect("no reset") {
        body.extend_from_slice(&chunk);
        if body.len() - paused_at >= 32 << 10 {
            paused_at = body.len();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(began.elapsed() > Duration::from_secs(1), "read slowly");
    assert_eq!(body.len(), page.len());
    assert!(body == page.as_bytes());
}

/// The site a page is asked for is its target's authority when it has one (an absolute-form
/// target; HTTP/2's `:authority`), over `Host`, everywhere: the app is asked for that site,
/// and that site's own absolute URLs are rewritten, not another's named in `Host`.
#[tokio::test]
async fn the_target_authority_names_the_site_for_the_app_and_the_rewrite_alike() {
    let rig = present().await;
    let page = r#"<img src="http://a.example/wp-content/uploads/x.jpg"><img src="http://b.example/wp-content/uploads/y.jpg">"#;
    rig.site
        .set("/page", Page::html(page).only_for_host("a.example"));
    let request =
        "GET http://a.example/page HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n";
    let response =
        crate::support::raw_exchange(rig.proxy.addr, request.as_bytes(), Duration::from_secs(5))
            .await;
    assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
    let expected = page.replace(
        "http://a.example/wp-content/uploads/x.jpg",
        &cdn("/wp-content/uploads/x.jpg"),
    );
    // Chunked: the rewritten page is one chunk.
    let body = crate::support::raw_body(&response);
    assert!(body.contains(&expected), "{body}");
}
