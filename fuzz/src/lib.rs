//! Shared pieces of the fuzz targets: a runtime, rules, asset maps, chunked bodies.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http_body_util::BodyExt;
use offload::body::{self, Body};
use offload::rewrite::{AssetMap, ContentKind, Rewriter, Rules};

/// One current-thread runtime for every run of a target.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

/// Two managed prefixes, one extra site origin, a CDN base.
pub fn rules() -> Arc<Rules> {
    static RULES: OnceLock<Arc<Rules>> = OnceLock::new();
    RULES
        .get_or_init(|| {
            Arc::new(
                Rules::new(
                    vec!["/wp-content/uploads/".into(), "/media/".into()],
                    vec!["https://example.com".parse().expect("origin")],
                    "https://cdn.example.net/base/".parse().expect("base"),
                )
                .expect("rules"),
            )
        })
        .clone()
}

/// Every asset is in the store.
pub struct Everything;

impl AssetMap for Everything {
    fn public_url(&self, path: &str, url: &mut String) -> bool {
        url.push_str("https://cdn.example.net/base");
        url.push_str(path);
        true
    }
}

/// No asset is in the store: nothing may change.
pub struct Nothing;

impl AssetMap for Nothing {
    fn public_url(&self, _path: &str, _url: &mut String) -> bool {
        false
    }
}

/// Splits `data` into chunks at the positions `cuts` names (each byte of `cuts` is a chunk
/// length, 0 meaning 1).
pub fn chunks(data: &[u8], cuts: &[u8]) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut at = 0;
    let mut lens = cuts.iter().cycle();
    while at < data.len() {
        let len = if cuts.is_empty() {
            data.len()
        } else {
            usize::from(*lens.next().unwrap_or(&1)).max(1)
        };
        let end = (at + len).min(data.len());
        out.push(Bytes::copy_from_slice(&data[at..end]));
        at = end;
    }
    out
}

fn stream_body(parts: Vec<Bytes>) -> Body {
    body::from_stream(futures_util::stream::iter(
        parts.into_iter().map(Ok::<_, std::io::Error>),
    ))
}

/// Rewrites `parts` as one response body of `kind` through `map`; the output whole.
pub fn rewrite(kind: ContentKind, map: Arc<dyn AssetMap>, parts: Vec<Bytes>) -> Vec<u8> {
    let origin = "http://site.test:8080".parse().ok();
    let rewriter = Rewriter::new(rules(), origin, map).javascript(true);
    let body = rewriter
        .body(kind, None, stream_body(parts))
        .expect("identity coding is supported");
    runtime().block_on(async move {
        let collected = body.collect().await.expect("rewriting an in-memory body");
        collected.to_bytes().to_vec()
    })
}

/// A fuzz input laid out so that plain files make good seeds: byte 0 picks a variant, byte 1
/// is the number of chunk lengths that follow, the rest is the body.
pub struct Layout<'a> {
    pub variant: u8,
    pub cuts: &'a [u8],
    pub body: &'a [u8],
}

impl<'a> Layout<'a> {
    pub fn parse(data: &'a [u8]) -> Option<Layout<'a>> {
        let (&variant, rest) = data.split_first()?;
        let (&n, rest) = rest.split_first()?;
        let n = usize::from(n).min(rest.len());
        let (cuts, body) = rest.split_at(n);
        Some(Layout {
            variant,
            cuts,
            body,
        })
    }
}
