//! One stored object as an HTTP response: shared by the fs store's serve prefix and the asset
//! fallback. Ranges (one range; several are answered whole), conditional requests
//! (`If-None-Match`, `If-Modified-Since`, `If-Range`) and HEAD, per RFC 9110.

use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, ready};
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;

use super::{ByteRange, ByteStream, GetObject, ObjectInfo, Store, StoreError};
use crate::body::{self, Body, BoxError};

/// Serves `key` from `store` as the answer to a GET (or HEAD, with `head_only`) carrying
/// `req_headers`. Never fails: a missing object is `404`, a store failure `502`/`503`, each
/// with a short body (details go to the log).
pub async fn serve_object(
    store: &dyn Store,
    key: &str,
    req_headers: &HeaderMap,
    head_only: bool,
) -> Response<Body> {
    match respond(store, key, req_headers, head_only).await {
        Ok(response) => response,
        Err(err) => error_response(key, &err),
    }
}

async fn respond(
    store: &dyn Store,
    key: &str,
    req: &HeaderMap,
    head_only: bool,
) -> Result<Response<Body>, StoreError> {
    let range = req
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_range);
    let conditional = [
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_RANGE,
    ]
    .iter()
    .any(|h| req.contains_key(h));
    if !head_only && !conditional {
        return get(store, key, range, None).await;
    }
    // Conditions are decided on metadata alone, before any byte is fetched.
    let Some(info) = store.head(key).await? else {
        return Ok(short(StatusCode::NOT_FOUND, "not found\n"));
    };
    if not_modified(&info, req) {
        return Ok(not_modified_response(&info));
    }
    if head_only {
        // A HEAD answers as a whole-object GET would (a server may ignore Range).
        return Ok(object_response(&info, None, body::empty()));
    }
    let range = range.filter(|_| if_range_holds(&info, req));
    get(store, key, range, Some(info)).await
}

async fn get(
    store: &dyn Store,
    key: &str,
    range: Option<ByteRange>,
    known: Option<ObjectInfo>,
) -> Result<Response<Body>, StoreError> {
    match store.get(key, range).await {
        Ok(Some(GetObject { info, range, body })) => {
            let body = ObjectBody::new(body, served_length(&info, range));
            Ok(object_response(&info, range, BodyExt::boxed(body)))
        }
        Ok(None) => Ok(short(StatusCode::NOT_FOUND, "not found\n")),
        Err(StoreError::RangeNotSatisfiable) => {
            let size = match known {
                Some(info) => Some(info.size),
                None => store.head(key).await?.map(|i| i.size),
            };
            Ok(unsatisfiable(size))
        }
        Err(err) => Err(err),
    }
}

/// `bytes=a-b`, `bytes=a-` or `bytes=-n`; `None` for anything else, several ranges included
/// (then the whole object is served, as RFC 9110 allows), and `a-b` with `b < a`, which
/// RFC 9110 §14.1.1 calls invalid: ignored, as nginx and S3 ignore it.
fn parse_range(value: &str) -> Option<ByteRange> {
    let spec = value.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    let (start, end) = (start.trim(), end.trim());
    match (start.is_empty(), end.is_empty()) {
        (true, false) => Some(ByteRange::Suffix(end.parse().ok()?)),
        (false, true) => Some(ByteRange::From(start.parse().ok()?)),
        (false, false) => {
            let (start, end) = (start.parse().ok()?, end.parse().ok()?);
            (start <= end).then_some(ByteRange::FromTo(start, end))
        }
        (true, true) => None,
    }
}

/// Weak comparison (RFC 9110 §8.8.3.2): `W/` prefixes ignored.
fn etag_matches_weak(list: &str, etag: &str) -> bool {
    let strip = |t: &str| t.trim().trim_start_matches("W/").to_string();
    let etag = strip(etag);
    list.split(',').any(|t| t.trim() == "*" || strip(t) == etag)
}

/// Whole seconds: HTTP dates carry no more.
fn http_seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn header_str<'a>(req: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    req.get(name).and_then(|v| v.to_str().ok())
}

/// `If-None-Match` decides when present; `If-Modified-Since` only without it.
fn not_modified(info: &ObjectInfo, req: &HeaderMap) -> bool {
    if let Some(list) = header_str(req, &header::IF_NONE_MATCH) {
        return info
            .etag
            .as_deref()
            .is_some_and(|etag| etag_matches_weak(list, etag))
            || list.trim() == "*";
    }
    let since =
        header_str(req, &header::IF_MODIFIED_SINCE).and_then(|v| httpdate::parse_http_date(v).ok());
    match (since, info.last_modified) {
        (Some(since), Some(modified)) => http_seconds(modified) <= http_seconds(since),
        _ => false,
    }
}

/// `If-Range`: the range holds only if the validator still matches (strongly, for an ETag).
fn if_range_holds(info: &ObjectInfo, req: &HeaderMap) -> bool {
    let Some(value) = header_str(req, &header::IF_RANGE).map(str::trim) else {
        return true;
    };
    if value.starts_with('"') || value.starts_with("W/") {
        return !value.starts_with("W/") && info.etag.as_deref() == Some(value);
    }
    match (httpdate::parse_http_date(value), info.last_modified) {
        (Ok(date), Some(modified)) => http_seconds(date) == http_seconds(modified),
        _ => false,
    }
}

fn set(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

/// The validators and caching headers every answer about an object carries.
fn validators(headers: &mut HeaderMap, info: &ObjectInfo) {
    if let Some(etag) = &info.etag {
        set(headers, header::ETAG, etag);
    }
    if let Some(modified) = info.last_modified {
        set(
            headers,
            header::LAST_MODIFIED,
            &httpdate::fmt_http_date(modified),
        );
    }
    if let Some(cache_control) = &info.cache_control {
        set(headers, header::CACHE_CONTROL, cache_control);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
}

/// Marks an answer whose body comes from the store (the app's answers carry no mark): an
/// answer cut for standing still is then counted and logged as the store's.
#[derive(Debug, Clone, Copy)]
pub struct FromStore;

fn object_response(info: &ObjectInfo, range: Option<(u64, u64)>, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    response.extensions_mut().insert(FromStore);
    let headers = response.headers_mut();
    validators(headers, info);
    let content_type = info.content_type.clone().unwrap_or_else(|| {
        mime_guess::from_path(&info.key)
            .first_or_octet_stream()
            .to_string()
    });
    set(headers, header::CONTENT_TYPE, &content_type);
    if let Some(disposition) = &info.content_disposition {
        set(headers, header::CONTENT_DISPOSITION, disposition);
    }
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some((start, end)) = range {
        let value = format!("bytes {start}-{end}/{}", info.size);
        set(headers, header::CONTENT_RANGE, &value);
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    let length = served_length(info, range);
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    response
}

/// How many bytes an answer about `info` carries: the range's, else the whole object's.
fn served_length(info: &ObjectInfo, range: Option<(u64, u64)>) -> u64 {
    range.map_or(info.size, |(start, end)| end - start + 1)
}

fn not_modified_response(info: &ObjectInfo) -> Response<Body> {
    let mut response = Response::new(body::empty());
    *response.status_mut() = StatusCode::NOT_MODIFIED;
    validators(response.headers_mut(), info);
    response
}

fn unsatisfiable(size: Option<u64>) -> Response<Body> {
    let mut response = short(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable\n");
    if let Some(size) = size {
        set(
            response.headers_mut(),
            header::CONTENT_RANGE,
            &format!("bytes */{size}"),
        );
    }
    response
}

fn short(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = body::text(status, text);
    response.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

fn error_response(key: &str, err: &StoreError) -> Response<Body> {
    match err {
        StoreError::InvalidKey(_) => short(StatusCode::BAD_REQUEST, "invalid object path\n"),
        StoreError::RangeNotSatisfiable => unsatisfiable(None),
        StoreError::Unavailable(_) => {
            tracing::warn!(%key, error = %err, "serving from the store");
            short(
                StatusCode::SERVICE_UNAVAILABLE,
                "object store unavailable\n",
            )
        }
        _ => {
            tracing::warn!(%key, error = %err, "serving from the store");
            short(StatusCode::BAD_GATEWAY, "object store error\n")
        }
    }
}

/// An object's bytes as a body of known length: it says it has ended as soon as the last
/// byte is out (hyper stops polling an answer at its Content-Length, so a stream that learns
/// its end only when polled again would never say so, and the access log would call every
/// download cut short), and a stream that ends short of its length or runs past it fails
/// rather than being sent under a Content-Length it does not match.
///
/// The stream sits in a mutex only to make the body `Sync`, as the shared [`Body`] type
/// requires: it is only ever polled through `&mut`, so the mutex is never contended.
struct ObjectBody {
    stream: Mutex<ByteStream>,
    remaining: u64,
}

impl ObjectBody {
    fn new(stream: ByteStream, length: u64) -> Self {
        Self {
            stream: Mutex::new(stream),
            remaining: length,
        }
    }
}

impl http_body::Body for ObjectBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let stream = this
            .stream
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let chunk = match ready!(stream.as_mut().poll_next(cx)) {
            Some(Ok(chunk)) => chunk,
            Some(Err(err)) => return Poll::Ready(Some(Err(err.into()))),
            None => {
                let short = format!("the object ended {} bytes short", this.remaining);
                return Poll::Ready(Some(Err(short.into())));
            }
        };
        match this.remaining.checked_sub(chunk.len() as u64) {
            Some(left) => this.remaining = left,
            None => return Poll::Ready(Some(Err("the object is longer than its length".into()))),
        }
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;

    fn object_body(chunks: &[&'static [u8]], length: u64) -> ObjectBody {
        let chunks: Vec<std::io::Result<Bytes>> =
            chunks.iter().map(|c| Ok(Bytes::from_static(c))).collect();
        ObjectBody::new(Box::pin(futures_util::stream::iter(chunks)), length)
    }

    #[tokio::test]
    async fn an_object_body_ends_with_its_last_byte() {
        let mut body = object_body(&[b"abc", b"de"], 5);
        assert_eq!(body.size_hint().exact(), Some(5));
        let first = body.frame().await.expect("a frame").expect("data");
        assert_eq!(first.into_data().ok(), Some(Bytes::from_static(b"abc")));
        assert!(!body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(2));
        body.frame().await.expect("a frame").expect("data");
        assert!(body.is_end_stream(), "ended without another poll");
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn an_object_body_that_does_not_match_its_length_fails() {
        let mut short = object_body(&[b"abc"], 5);
        short.frame().await.expect("a frame").expect("data");
        let err = short.frame().await.expect("a frame").expect_err("short");
        assert_eq!(err.to_string(), "the object ended 2 bytes short");
        let mut long = object_body(&[b"abcdef"], 5);
        let err = long.frame().await.expect("a frame").expect_err("long");
        assert_eq!(err.to_string(), "the object is longer than its length");
    }

    #[test]
    fn ranges_parse() {
        assert_eq!(parse_range("bytes=0-9"), Some(ByteRange::FromTo(0, 9)));
        assert_eq!(parse_range("bytes=5-"), Some(ByteRange::From(5)));
        assert_eq!(parse_range("bytes=-5"), Some(ByteRange::Suffix(5)));
        assert_eq!(parse_range("bytes=0-1,4-5"), None);
        assert_eq!(parse_range("items=0-1"), None);
        assert_eq!(parse_range("bytes=x-1"), None);
        assert_eq!(parse_range("bytes=-"), None);
        assert_eq!(parse_range("bytes=5-2"), None, "invalid: the whole object");
        assert_eq!(parse_range("bytes=5-5"), Some(ByteRange::FromTo(5, 5)));
    }

    #[test]
    fn etags_compare_weakly_for_if_none_match() {
        assert!(etag_matches_weak("\"a\", W/\"b\"", "\"b\""));
        assert!(etag_matches_weak("*", "\"x\""));
        assert!(!etag_matches_weak("\"a\"", "\"b\""));
    }
}
