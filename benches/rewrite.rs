//! Throughput of response rewriting on a generated ~200 KiB WordPress-like page (every URL in
//! the store), through the public streaming API: HTML via lol_html, JSON via the scanner; and
//! of collecting the asset paths a page names (looked up in the store before it is rewritten),
//! on that page and on one naming 20,000 distinct paths.

use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http_body_util::BodyExt;
use offload::rewrite::{AssetMap, ContentKind, Rewriter, Rules, collect_asset_paths};

/// Every asset is in the store.
struct AllPresent;

impl AssetMap for AllPresent {
    fn public_url(&self, path: &str, url: &mut String) -> bool {
        url.push_str("https://cdn.example.com");
        url.push_str(path);
        true
    }
}

const TARGET: usize = 200 * 1024;

fn page() -> String {
    let mut html = String::from(
        "<!doctype html><html><head><title>Blog</title>\
         <link rel='stylesheet' href='https://example.com/wp-content/themes/t/style.css'>\
         <style>.hero{background:url(/wp-content/uploads/2024/05/hero.jpg)}</style></head><body>",
    );
    let mut i = 0;
    while html.len() < TARGET {
        let u = format!("/wp-content/uploads/2024/05/photo-{i}");
        html.push_str(&format!(
            "<article class=\"post\"><h2><a href=\"https://example.com/blog/post-{i}/\">Post {i}</a></h2>\
             <p>Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.</p>\
             <img width=\"1024\" height=\"768\" src=\"https://example.com{u}.jpg\" alt=\"photo {i}\" \
             srcset=\"https://example.com{u}.jpg 1024w, https://example.com{u}-300x225.jpg 300w, \
             https://example.com{u}-768x576.jpg 768w\" sizes=\"(max-width: 1024px) 100vw, 1024px\" loading=\"lazy\">\
             <div class=\"bg\" style=\"background-image:url('{u}-bg.jpg')\"></div></article>\n"
        ));
        if i % 10 == 0 {
            html.push_str(&format!(
                "<script type=\"application/ld+json\">{{\"@type\":\"ImageObject\",\"url\":\"https:\\/\\/example.com\\/wp-content\\/uploads\\/2024\\/05\\/photo-{i}.jpg\",\"width\":1024}}</script>\n"
            ));
        }
        i += 1;
    }
    html.push_str("</body></html>");
    html
}

fn json() -> String {
    let mut json = String::from("[");
    let mut i = 0;
    while json.len() < TARGET {
        json.push_str(&format!(
            "{{\"id\":{i},\"title\":{{\"rendered\":\"Post {i}\"}},\"content\":{{\"rendered\":\"<p>Lorem ipsum dolor sit amet, consectetur adipiscing elit.<\\/p>\\n\
             <img src=\\\"https:\\/\\/example.com\\/wp-content\\/uploads\\/2024\\/05\\/photo-{i}.jpg\\\" alt=\\\"\\\">\"}},\
             \"source_url\":\"https:\\/\\/example.com\\/wp-content\\/uploads\\/2024\\/05\\/photo-{i}.jpg\",\"link\":\"https:\\/\\/example.com\\/blog\\/post-{i}\\/\"}},"
        ));
        i += 1;
    }
    json.push_str("{}]");
    json
}

fn chunks(text: &str) -> Vec<Bytes> {
    text.as_bytes()
        .chunks(16 * 1024)
        .map(Bytes::copy_from_slice)
        .collect()
}

/// A page naming `count` distinct assets, one per line.
fn many_paths(count: usize) -> String {
    (0..count)
        .map(|i| format!("<img src=\"/wp-content/uploads/2024/05/p{i}.jpg\">\n"))
        .collect()
}

fn rules() -> Arc<Rules> {
    Arc::new(
        Rules::new(
            vec!["/wp-content/uploads/".into()],
            vec!["https://example.com".parse().expect("origin")],
            "https://cdn.example.com/".parse().expect("base"),
        )
        .expect("rules"),
    )
}

fn bench_kind(c: &mut Criterion, name: &str, kind: ContentKind, text: &str) {
    let rules = rules();
    let map: Arc<dyn AssetMap> = Arc::new(AllPresent);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let input = chunks(text);
    let mut group = c.benchmark_group("rewrite");
    group.throughput(Throughput::Bytes(text.len() as u64));
    group.bench_function(name, |b| {
        b.to_async(&rt).iter(|| async {
            let stream =
                futures_util::stream::iter(input.clone().into_iter().map(Ok::<_, std::io::Error>));
            let body = offload::body::from_stream(stream);
            let rewriter = Rewriter::new(rules.clone(), None, map.clone());
            let out = rewriter.body(kind, None, body).expect("identity");
            out.collect().await.expect("rewritten").to_bytes()
        })
    });
    group.finish();
}

fn bench_collect(c: &mut Criterion, name: &str, text: &str) {
    let rules = rules();
    let mut group = c.benchmark_group("collect");
    group.throughput(Throughput::Bytes(text.len() as u64));
    group.sample_size(10);
    group.bench_function(name, |b| {
        b.iter(|| collect_asset_paths(&rules, None, text.as_bytes()).len())
    });
    group.finish();
}

fn rewrite(c: &mut Criterion) {
    bench_kind(c, "html_200k", ContentKind::Html, &page());
    bench_kind(c, "json_200k", ContentKind::Json, &json());
    bench_collect(c, "html_200k", &page());
    bench_collect(c, "distinct_20000", &many_paths(20_000));
}

criterion_group!(benches, rewrite);
criterion_main!(benches);
