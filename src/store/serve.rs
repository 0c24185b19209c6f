//! One stored object as an HTTP response: shared by the fs store's serve prefix and the asset
//! fallback. Ranges (one range; several are answered whole), conditional requests
//! (`If-None-Match`, `If-Modified-Since`, `If-Range`) and HEAD, per RFC 9110.

use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::Stream;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};

use super::{ByteRange, ByteStream, GetObject, ObjectInfo, Store, StoreError};
use crate::body::{self, Body};

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
        Ok(Some(GetObject { info, range, body })) => Ok(object_response(
            &info,
            range,
            body::from_stream(SyncStream(Mutex::new(body))),
        )),
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

fn object_response(info: &ObjectInfo, range: Option<(u64, u64)>, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
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
    let length = match range {
        Some((start, end)) => {
            let value = format!("bytes {start}-{end}/{}", info.size);
            set(headers, header::CONTENT_RANGE, &value);
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            end - start + 1
        }
        None => info.size,
    };
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    response
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

/// A [`ByteStream`] made `Sync` (the shared [`Body`] type requires it): the stream is only
/// ever polled through `&mut`, so the mutex is never contended.
struct SyncStream(Mutex<ByteStream>);

impl Stream for SyncStream {
    type Item = std::io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let inner = self
            .get_mut()
            .0
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        inner.as_mut().poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
