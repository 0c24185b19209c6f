//! Whether a response is rewritten at all, and how its headers change when it is.

use http::{HeaderMap, HeaderValue, Method, StatusCode, header};

use super::encoding::Coding;

/// What kind of body a response carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentKind {
    /// `text/html`, `application/xhtml+xml`.
    Html,
    /// `text/css`.
    Css,
    /// `application/json`, `*/*+json`.
    Json,
    /// `application/xml`, `text/xml`, RSS, Atom, `*/*+xml`.
    Xml,
    /// `application/javascript`, `text/javascript` (opt-in).
    JavaScript,
    /// `text/plain` (opt-in).
    Text,
}

impl ContentKind {
    /// The kind of a `Content-Type` value, or None when it is not rewritten. JavaScript and
    /// plain text are rewritten only when asked for.
    pub fn from_content_type(ct: &str, javascript: bool, text_plain: bool) -> Option<ContentKind> {
        // Compared without lowercasing a copy: this runs for every response.
        let essence = ct.split(';').next().unwrap_or_default().trim();
        let is = |names: &[&str]| names.iter().any(|n| essence.eq_ignore_ascii_case(n));
        let ends_with = |suffix: &str| {
            let len = essence.len();
            len >= suffix.len()
                && essence.as_bytes()[len - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
        };
        let kind = if is(&["text/html", "application/xhtml+xml"]) {
            ContentKind::Html
        } else if is(&["text/css"]) {
            ContentKind::Css
        } else if is(&["application/json"]) {
            ContentKind::Json
        } else if is(&[
            "application/xml",
            "text/xml",
            "application/rss+xml",
            "application/atom+xml",
        ]) {
            ContentKind::Xml
        } else if javascript && is(&["application/javascript", "text/javascript"]) {
            ContentKind::JavaScript
        } else if text_plain && is(&["text/plain"]) {
            ContentKind::Text
        } else if ends_with("+json") {
            ContentKind::Json
        } else if ends_with("+xml") {
            ContentKind::Xml
        } else {
            return None;
        };
        Some(kind)
    }
}

/// What [`plan`] accepts.
#[derive(Debug, Clone, Copy)]
pub struct PlanOptions {
    /// Rewrite JavaScript responses (and inline scripts).
    pub javascript: bool,
    /// Rewrite `text/plain` responses.
    pub text_plain: bool,
    /// Larger bodies (by `Content-Length`) pass through untouched.
    pub max_size: u64,
}

/// Should this response be rewritten at all? Some(kind) when it should; the caller then calls
/// [`prepare_headers`].
///
/// Only `2xx` answers (not `204`/`206`) to non-`HEAD` requests, without `Content-Range` or
/// `Cache-Control: no-transform`, within `max_size`, of a rewritable type and a supported coding.
pub fn plan(
    method: &Method,
    status: StatusCode,
    headers: &HeaderMap,
    opts: &PlanOptions,
) -> Option<ContentKind> {
    let rewritable_status = status.is_success()
        && status != StatusCode::NO_CONTENT
        && status != StatusCode::PARTIAL_CONTENT;
    if method == Method::HEAD || !rewritable_status || headers.contains_key(header::CONTENT_RANGE) {
        return None;
    }
    if no_transform(headers) || too_large(headers, opts.max_size) {
        return None;
    }
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(HeaderValue::to_str);
    Coding::parse(encoding.transpose().ok()?)?;
    let ct = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    if !utf8_compatible(ct) {
        return None;
    }
    ContentKind::from_content_type(ct, opts.javascript, opts.text_plain)
}

/// Whether the `charset` of `content_type` (none counts as UTF-8) is one the rewriter reads
/// byte for byte. HTML is rewritten as UTF-8 text: a page in Latin-1 or Shift_JIS would have
/// every non-ASCII byte of its scripts and styles replaced by U+FFFD, so it passes untouched.
fn utf8_compatible(content_type: &str) -> bool {
    content_type
        .split(';')
        .skip(1)
        .filter_map(|param| param.split_once('='))
        .filter(|(name, _)| name.trim().eq_ignore_ascii_case("charset"))
        .all(|(_, value)| {
            let value = value.trim().trim_matches('"');
            ["utf-8", "utf8", "us-ascii"]
                .iter()
                .any(|ok| value.eq_ignore_ascii_case(ok))
        })
}

fn no_transform(headers: &HeaderMap) -> bool {
    headers.get_all(header::CACHE_CONTROL).iter().any(|v| {
        v.to_str()
            .unwrap_or_default()
            .split(',')
            .any(|d| d.trim().eq_ignore_ascii_case("no-transform"))
    })
}

/// An unreadable `Content-Length` counts as too large: when in doubt, don't touch the body.
fn too_large(headers: &HeaderMap, max: u64) -> bool {
    headers.get(header::CONTENT_LENGTH).is_some_and(|v| {
        v.to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .is_none_or(|len| len > max)
    })
}

/// Headers that carry a checksum of the body as the app sent it: `Content-MD5` (RFC 1864),
/// `Digest` (RFC 3230), and `Content-Digest`/`Repr-Digest` (RFC 9530).
const BODY_DIGESTS: [&str; 4] = ["content-md5", "digest", "content-digest", "repr-digest"];

/// Fixes the headers of a response that will be rewritten: the length changes (removed) and the
/// bytes are no longer the app's (a strong `ETag` becomes weak). Ranges of it cannot be had:
/// the app answers a `Range` request with a part of its own bytes, which `206`s are left as
/// (a client resuming a download with `If-Range` and the `Last-Modified` date would splice
/// the app's bytes onto the rewritten ones), so `Accept-Ranges` and `Last-Modified` go, as
/// nginx's `sub_filter` drops them. So do the checksums of the app's bytes
/// ([`BODY_DIGESTS`]), which a client that checks them would find wrong.
pub fn prepare_headers(headers: &mut HeaderMap) {
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::ACCEPT_RANGES);
    headers.remove(header::LAST_MODIFIED);
    for digest in BODY_DIGESTS {
        headers.remove(digest);
    }
    let Some(etag) = headers.get(header::ETAG) else {
        return;
    };
    if etag.as_bytes().starts_with(b"W/") {
        return;
    }
    let mut weak = b"W/".to_vec();
    weak.extend_from_slice(etag.as_bytes());
    if let Ok(weak) = HeaderValue::from_bytes(&weak) {
        headers.insert(header::ETAG, weak);
    }
}
