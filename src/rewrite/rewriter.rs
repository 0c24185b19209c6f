//! The per-response [`Rewriter`] and the [`AssetMap`] it asks.

use std::io;
use std::sync::Arc;

use futures_util::TryStreamExt;
use http::{HeaderName, HeaderValue, header};
use http_body_util::BodyExt;
use url::Url;

use super::body::{Engine, Rewritten, SyncStream, TextEngine};
use super::encoding::{ByteStream, Coding};
use super::html::HtmlEngine;
use super::plan::ContentKind;
use super::rules::{Origin, Rules};
use super::scan::{self, Scratch, Site};
use crate::body::Body;

/// Decides, synchronously (it is called in the middle of tokenizing a chunk), whether a managed asset
/// should point at the store.
///
/// `path` is the normalised, percent-decoded URL path starting with a managed prefix (e.g.
/// `/wp-content/uploads/2024/05/a b.jpg`). Append the full public URL (already
/// percent-encoded) to `url` and return true to rewrite, or return false to leave the URL
/// local (the implementor may queue an origin pull then). Appending to a buffer the caller
/// reuses keeps a page's thousands of URLs from costing an allocation each.
pub trait AssetMap: Send + Sync {
    /// Whether the asset at `path` is served from its public URL, which goes into `url`.
    fn public_url(&self, path: &str, url: &mut String) -> bool;
}

/// A body cannot be rewritten; the caller passes it through untouched.
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    /// The `Content-Encoding` is not one this module decodes.
    #[error("unsupported content encoding {0:?}")]
    UnsupportedEncoding(String),
}

/// Everything a rewriting handler needs, shared by the handlers of one response.
pub(crate) struct Context {
    pub(crate) rules: Arc<Rules>,
    pub(crate) origin: Option<Origin>,
    pub(crate) map: Arc<dyn AssetMap>,
}

impl Context {
    pub(crate) fn site(&self) -> Site<'_> {
        Site {
            rules: &self.rules,
            request_origin: self.origin.as_ref(),
        }
    }
}

/// Rewrites one response: its URL-valued headers and its body.
pub struct Rewriter {
    ctx: Arc<Context>,
    javascript: bool,
}

impl Rewriter {
    /// `request_origin`: `scheme://host[:port]` of the incoming request, which counts as "this
    /// site" besides the configured site origins.
    pub fn new(rules: Arc<Rules>, request_origin: Option<Url>, map: Arc<dyn AssetMap>) -> Self {
        let origin = request_origin.as_ref().and_then(Origin::from_url);
        Rewriter {
            ctx: Arc::new(Context { rules, origin, map }),
            javascript: false,
        }
    }

    /// Also rewrite URLs in inline `<script>` code of HTML pages (JSON scripts always are).
    /// Default: off; set it like [`PlanOptions::javascript`](super::PlanOptions).
    pub fn javascript(mut self, on: bool) -> Self {
        self.javascript = on;
        self
    }

    /// Rewrites one URL-valued header (`Location`, `Content-Location`, `Link`, `Refresh`).
    /// None = unchanged.
    pub fn header(&self, name: &HeaderName, value: &HeaderValue) -> Option<HeaderValue> {
        let bytes = value.as_bytes();
        let new = if name == header::REFRESH {
            self.refresh(bytes)?
        } else if [header::LOCATION, header::CONTENT_LOCATION, header::LINK].contains(name) {
            self.once(bytes)?
        } else {
            return None;
        };
        HeaderValue::from_bytes(&new).ok()
    }

    /// `Refresh: 0; url=/x`: the URL follows `url=`, where the scanner would not start a URL.
    fn refresh(&self, value: &[u8]) -> Option<Vec<u8>> {
        let at = value
            .windows(4)
            .position(|w| w.eq_ignore_ascii_case(b"url="))?
            + 4;
        let mut new = value[..at].to_vec();
        new.extend(self.once(&value[at..])?);
        Some(new)
    }

    fn once(&self, text: &[u8]) -> Option<Vec<u8>> {
        let mut decide = |path: &str, url: &mut String| self.ctx.map.public_url(path, url);
        scan::rewrite_once(self.ctx.site(), &mut decide, &mut Scratch::default(), text)
    }

    /// Wraps a (possibly compressed) response body into a streaming rewritten body.
    ///
    /// `content_encoding`: None/identity, gzip, deflate, br or zstd; the body is decoded,
    /// rewritten and re-encoded with the same coding. An unsupported coding is an error, and the
    /// caller passes the body through untouched.
    pub fn body(
        self,
        kind: ContentKind,
        content_encoding: Option<&str>,
        body: Body,
    ) -> Result<Body, RewriteError> {
        let coding = Coding::parse(content_encoding).ok_or_else(|| {
            RewriteError::UnsupportedEncoding(content_encoding.unwrap_or_default().to_owned())
        })?;
        let engine = match kind {
            ContentKind::Html => {
                Engine::Html(Box::new(HtmlEngine::new(&self.ctx, self.javascript)))
            }
            _ => Engine::Text(TextEngine::new(self.ctx)),
        };
        let input: ByteStream = Box::pin(body.into_data_stream().map_err(io::Error::other));
        let rewritten = Rewritten::new(coding.decode(input), engine);
        let output = coding.encode(Box::pin(rewritten));
        Ok(crate::body::from_stream(SyncStream::new(output)))
    }
}

/// Every managed asset path (decoded, normalised, as given to [`AssetMap`]) mentioned in `text`
/// (HTML, JSON or plain), in order of first mention, without duplicates.
pub fn collect_asset_paths(
    rules: &Rules,
    request_origin: Option<&Url>,
    text: &[u8],
) -> Vec<String> {
    let origin = request_origin.and_then(Origin::from_url);
    scan::collect(
        Site {
            rules,
            request_origin: origin.as_ref(),
        },
        text,
    )
}
