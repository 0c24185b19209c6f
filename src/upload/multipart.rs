//! Reading a `multipart/form-data` body as a stream, with every limit enforced and memory
//! bounded: what kind of body a request carries, the boundary, part headers
//! (`Content-Disposition` with `filename*=`), and a gate in front of multer that bounds its
//! read-ahead and its part-header reading.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use http::{HeaderMap, header};
use multer::{Constraints, Multipart, SizeLimit};

use super::error::UploadError;
use super::routes::Limits;

/// RFC 2046: a boundary is 1 to 70 characters.
pub const MAX_BOUNDARY_LEN: usize = 70;

/// Largest slice the gate hands multer at once: multer appends whatever it pulls to its
/// buffer, so slicing bounds what one step can hold.
pub const MAX_CHUNK: usize = 64 * 1024;

/// What kind of body an upload route received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyKind {
    /// `multipart/form-data` with this boundary.
    Multipart(String),
    /// A raw file body named by `Content-Disposition` (WordPress's REST media upload).
    Raw(PartMeta),
    /// Anything else (e.g. a form-urlencoded admin post sharing the path): passed through.
    Other,
}

/// What a file part (or a raw file body) says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PartMeta {
    /// The form field's name.
    pub field: String,
    /// The filename as sent (decoded, not yet sanitised); `None` for a text field.
    pub filename: Option<String>,
    /// The declared `Content-Type`.
    pub content_type: Option<String>,
}

/// Sorts a request by its headers; a malformed multipart `Content-Type` is a 400.
pub fn classify(headers: &HeaderMap) -> Result<BodyKind, UploadError> {
    // One `Content-Type` of visible ASCII, or none: anything else was passed to the app as
    // it came, and the app (PHP, Django) may still read a multipart form in it, its files
    // past the route's checks and never stored.
    let mut types = headers.get_all(header::CONTENT_TYPE).iter();
    let content_type = match (types.next(), types.next()) {
        (None, _) => "",
        (Some(_), Some(_)) => return Err(UploadError::ContentType("given more than once")),
        (Some(value), None) => value
            .to_str()
            .map_err(|_| UploadError::ContentType("not visible ASCII"))?,
    };
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    if essence.eq_ignore_ascii_case("multipart/form-data") {
        return boundary(content_type).map(BodyKind::Multipart);
    }
    let disposition = headers
        .get(header::CONTENT_DISPOSITION)
        .map(|v| parse_disposition(v.as_bytes()));
    match disposition {
        Some(Disposition {
            filename: Some(filename),
            ..
        }) => Ok(BodyKind::Raw(PartMeta {
            field: "file".into(),
            filename: Some(filename),
            content_type: (!content_type.is_empty()).then(|| content_type.to_string()),
        })),
        _ => Ok(BodyKind::Other),
    }
}

fn boundary(content_type: &str) -> Result<String, UploadError> {
    let boundary = multer::parse_boundary(content_type)
        .map_err(|_| UploadError::Boundary("missing or unparsable"))?;
    if boundary.is_empty() || boundary.len() > MAX_BOUNDARY_LEN {
        return Err(UploadError::Boundary("must be 1 to 70 characters"));
    }
    Ok(boundary)
}

/// `name`, `filename` and `filename*` of a `Content-Disposition`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Disposition {
    pub name: Option<String>,
    pub filename: Option<String>,
}

/// Parses `form-data; name="f"; filename="a.jpg"; filename*=UTF-8''a%C3%A9.jpg`. The extended
/// `filename*` (RFC 5987/8187) wins over `filename`; raw UTF-8 in a quoted filename (what
/// browsers send) is kept, invalid bytes replaced.
pub fn parse_disposition(value: &[u8]) -> Disposition {
    let mut out = Disposition::default();
    let mut extended = None;
    for (key, val) in params(value) {
        match key.to_ascii_lowercase().as_str() {
            "name" => out.name = Some(val),
            "filename" => out.filename = Some(val),
            "filename*" => extended = decode_ext_value(&val),
            _ => {}
        }
    }
    if extended.is_some() {
        out.filename = extended;
    }
    out
}

/// The `key=value` parameters after the disposition type; quoted values unescaped.
fn params(value: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = value;
    // Skip the disposition type (`form-data`, `attachment`).
    match rest.iter().position(|b| *b == b';') {
        Some(i) => rest = &rest[i + 1..],
        None => return out,
    }
    while !rest.is_empty() {
        let trimmed = rest.trim_ascii_start();
        let Some(eq) = trimmed.iter().position(|b| *b == b'=' || *b == b';') else {
            break;
        };
        if trimmed[eq] == b';' {
            rest = &trimmed[eq + 1..];
            continue;
        }
        let key = String::from_utf8_lossy(trimmed[..eq].trim_ascii()).into_owned();
        let after = trimmed[eq + 1..].trim_ascii_start();
        let (val, next) = if after.first() == Some(&b'"') {
            quoted(&after[1..])
        } else {
            let end = after.iter().position(|b| *b == b';').unwrap_or(after.len());
            (after[..end].trim_ascii().to_vec(), &after[end..])
        };
        out.push((key, String::from_utf8_lossy(&val).into_owned()));
        rest = next.strip_prefix(b";").unwrap_or(next);
        if next.is_empty() {
            break;
        }
    }
    out
}

/// A quoted string's content (backslash escapes resolved) and what follows its closing quote.
fn quoted(s: &[u8]) -> (Vec<u8>, &[u8]) {
    let mut val = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'\\' if i + 1 < s.len() => {
                val.push(s[i + 1]);
                i += 2;
            }
            b'"' => {
                let rest = &s[i + 1..];
                let end = rest.iter().position(|b| *b == b';').unwrap_or(rest.len());
                return (val, &rest[end..]);
            }
            b => {
                val.push(b);
                i += 1;
            }
        }
    }
    (val, &[])
}

/// `UTF-8'lang'percent-encoded` → text; ISO-8859-1 is mapped byte for char.
fn decode_ext_value(value: &str) -> Option<String> {
    let mut it = value.splitn(3, '\'');
    let charset = it.next()?.to_ascii_lowercase();
    let _lang = it.next()?;
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(it.next()?).collect();
    match charset.as_str() {
        "utf-8" => Some(String::from_utf8_lossy(&bytes).into_owned()),
        "iso-8859-1" => Some(bytes.iter().map(|b| char::from(*b)).collect()),
        _ => None,
    }
}

/// What the gate shares with the reader driving multer.
#[derive(Debug, Default)]
struct GateState {
    /// Bytes pulled from the body so far.
    pulled: AtomicU64,
    /// While reading part headers: refuse to pull past this count (`u64::MAX`: no budget).
    budget_end: AtomicU64,
}

/// The gate refused to pull more bytes while multer looked for a part's header end.
#[derive(Debug, thiserror::Error)]
#[error("part headers too large")]
struct HeaderBudgetExceeded;

/// Sits between the body and multer. multer's buffer pulls from its stream until the stream
/// says `Pending`, so a fast client could grow it without bound; the gate yields at most one
/// slice of [`MAX_CHUNK`] bytes per poll (then says `Pending` and wakes itself at once), so
/// multer hands each slice on before it pulls the next.
struct Gate<S> {
    inner: S,
    state: Arc<GateState>,
    carry: Bytes,
    yielded: bool,
}

impl<S> Stream for Gate<S>
where
    S: Stream<Item = Result<Bytes, UploadError>> + Unpin,
{
    type Item = Result<Bytes, UploadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.yielded {
            self.yielded = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let pulled = self.state.pulled.load(Ordering::Relaxed);
        if pulled >= self.state.budget_end.load(Ordering::Relaxed) {
            return Poll::Ready(Some(Err(UploadError::Malformed(
                HeaderBudgetExceeded.to_string(),
            ))));
        }
        if self.carry.is_empty() {
            match Pin::new(&mut self.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => self.carry = chunk,
                other => return other,
            }
        }
        let take = self.carry.len().min(MAX_CHUNK);
        let slice = self.carry.split_to(take);
        self.state.pulled.fetch_add(take as u64, Ordering::Relaxed);
        self.yielded = true;
        Poll::Ready(Some(Ok(slice)))
    }
}

/// A multipart body read part by part, with the route's limits.
pub struct Parts<'r> {
    multipart: Multipart<'r>,
    state: Arc<GateState>,
    limits: Limits,
    count: usize,
}

/// One part: what it says about itself, and its bytes as a stream.
pub struct Part<'r> {
    pub meta: PartMeta,
    /// The part's headers as received (names lowercase), to re-emit text fields.
    pub headers: HeaderMap,
    pub field: multer::Field<'r>,
}

impl<'r> Parts<'r> {
    /// `body` yields the request's bytes; a client failure arrives as `UploadError::ClientBody`.
    pub fn new<S>(body: S, boundary: &str, limits: Limits) -> Parts<'r>
    where
        S: Stream<Item = Result<Bytes, UploadError>> + Send + Unpin + 'r,
    {
        let state = Arc::new(GateState {
            pulled: AtomicU64::new(0),
            budget_end: AtomicU64::new(u64::MAX),
        });
        let gate = Gate {
            inner: body,
            state: state.clone(),
            carry: Bytes::new(),
            yielded: false,
        };
        // multer bounds each field by one number; files and text fields have their own
        // limits, enforced by the readers, so the larger of the two is only a backstop.
        let constraints = Constraints::new().size_limit(
            SizeLimit::new()
                .whole_stream(limits.max_body_size)
                .per_field(limits.max_file_size.max(limits.max_field_size)),
        );
        Parts {
            multipart: Multipart::with_constraints(gate, boundary, constraints),
            state,
            limits,
            count: 0,
        }
    }

    /// The next part, or `None` after the closing boundary. The previous part must have
    /// been dropped (read to its end or not).
    pub async fn next(&mut self) -> Result<Option<Part<'r>>, UploadError> {
        let pulled = self.state.pulled.load(Ordering::Relaxed);
        self.state.budget_end.store(
            pulled.saturating_add(self.limits.max_part_header_size),
            Ordering::Relaxed,
        );
        let next = self.multipart.next_field().await;
        self.state.budget_end.store(u64::MAX, Ordering::Relaxed);
        let Some(field) = next.map_err(|e| self.map_error(e))? else {
            return Ok(None);
        };
        self.count += 1;
        if self.count > self.limits.max_parts {
            return Err(UploadError::TooManyParts {
                max: self.limits.max_parts,
            });
        }
        let headers = field.headers().clone();
        let disposition = headers
            .get(header::CONTENT_DISPOSITION)
            .map(|v| parse_disposition(v.as_bytes()))
            .unwrap_or_default();
        let Some(name) = disposition.name else {
            return Err(UploadError::Malformed("part without a name".into()));
        };
        let meta = PartMeta {
            field: name,
            filename: disposition.filename,
            content_type: headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        };
        Ok(Some(Part {
            meta,
            headers,
            field,
        }))
    }

    /// multer's errors, sorted: limits name themselves, the client's stream failures stay
    /// theirs, the rest is a malformed body.
    pub fn map_error(&self, e: multer::Error) -> UploadError {
        map_multer_error(e, &self.limits)
    }
}

pub fn map_multer_error(e: multer::Error, limits: &Limits) -> UploadError {
    match e {
        multer::Error::StreamSizeExceeded { .. } => UploadError::BodyTooLarge {
            max: limits.max_body_size,
        },
        multer::Error::FieldSizeExceeded { .. } => UploadError::FileTooLarge {
            max: limits.max_file_size,
        },
        multer::Error::StreamReadFailed(inner) => match inner.downcast::<UploadError>() {
            Ok(err) => match *err {
                UploadError::Malformed(m) if m == HeaderBudgetExceeded.to_string() => {
                    UploadError::PartHeadersTooLarge {
                        max: limits.max_part_header_size,
                    }
                }
                other => other,
            },
            Err(other) => UploadError::ClientBody(other.to_string()),
        },
        other => UploadError::Malformed(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{StreamExt, stream};

    fn limits() -> Limits {
        Limits {
            max_file_size: 1 << 20,
            max_body_size: 4 << 20,
            max_parts: 3,
            max_field_size: 1 << 10,
            max_fields_size: 1 << 12,
            max_part_header_size: 1024,
        }
    }

    fn body(text: Vec<u8>, chunk: usize) -> impl Stream<Item = Result<Bytes, UploadError>> + Unpin {
        let chunks: Vec<_> = text
            .chunks(chunk)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        stream::iter(chunks)
    }

    fn headers(ct: &str, cd: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, ct.parse().unwrap());
        if let Some(cd) = cd {
            h.insert(header::CONTENT_DISPOSITION, cd.parse().unwrap());
        }
        h
    }

    #[test]
    fn classifies_bodies() {
        let h = headers("multipart/form-data; boundary=abc", None);
        assert_eq!(classify(&h).unwrap(), BodyKind::Multipart("abc".into()));
        let long = format!("multipart/form-data; boundary={}", "x".repeat(71));
        assert!(matches!(
            classify(&headers(&long, None)),
            Err(UploadError::Boundary(_))
        ));
        assert!(classify(&headers("multipart/form-data", None)).is_err());
        let raw = headers("image/jpeg", Some("attachment; filename=photo.jpg"));
        let BodyKind::Raw(meta) = classify(&raw).unwrap() else {
            panic!()
        };
        assert_eq!(meta.filename.as_deref(), Some("photo.jpg"));
        assert_eq!(meta.content_type.as_deref(), Some("image/jpeg"));
        let form = headers("application/x-www-form-urlencoded", None);
        assert_eq!(classify(&form).unwrap(), BodyKind::Other);
        // A type the app may read as multipart where offload could not: refused, not
        // passed on past the route's checks.
        let mut twice = headers("text/plain", None);
        twice.append(
            header::CONTENT_TYPE,
            "multipart/form-data; boundary=b".parse().unwrap(),
        );
        assert!(matches!(classify(&twice), Err(UploadError::ContentType(_))));
        let mut opaque = HeaderMap::new();
        let value = http::HeaderValue::from_bytes(b"multipart/form-data; boundary=b; x=\xe9");
        opaque.insert(header::CONTENT_TYPE, value.unwrap());
        assert!(matches!(
            classify(&opaque),
            Err(UploadError::ContentType(_))
        ));
    }

    #[test]
    fn dispositions() {
        let d = parse_disposition(b"form-data; name=\"f\"; filename=\"a \\\"b\\\".jpg\"");
        assert_eq!(d.name.as_deref(), Some("f"));
        assert_eq!(d.filename.as_deref(), Some("a \"b\".jpg"));
        let d = parse_disposition(
            b"form-data; name=f; filename*=UTF-8''f%C3%AFl%C3%A9%20%E5%90%8D.jpg; filename=\"x.jpg\"",
        );
        assert_eq!(d.filename.as_deref(), Some("fïlé 名.jpg"));
        let d = parse_disposition("form-data; name=\"a;b\"; filename=\"名前.png\"".as_bytes());
        assert_eq!(d.name.as_deref(), Some("a;b"));
        assert_eq!(d.filename.as_deref(), Some("名前.png"));
        let d = parse_disposition(b"attachment; filename*=iso-8859-1'en'caf%E9.txt");
        assert_eq!(d.filename.as_deref(), Some("café.txt"));
        assert_eq!(parse_disposition(b"form-data").name, None);
        assert_eq!(
            parse_disposition(b"form-data; name=").name.as_deref(),
            Some("")
        );
        assert_eq!(
            parse_disposition(b"form-data; ;;name=\"x").name.as_deref(),
            Some("x")
        );
    }

    fn form(parts: &[(&str, &str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, filename, data) in parts {
            out.extend_from_slice(b"--B\r\nContent-Disposition: form-data; name=\"");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\"");
            if !filename.is_empty() {
                out.extend_from_slice(format!("; filename=\"{filename}\"").as_bytes());
            }
            out.extend_from_slice(b"\r\n\r\n");
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"--B--\r\n");
        out
    }

    async fn read_all(
        text: Vec<u8>,
        chunk: usize,
        limits: Limits,
    ) -> Result<Vec<(PartMeta, Vec<u8>)>, UploadError> {
        let mut parts = Parts::new(body(text, chunk), "B", limits);
        let mut out = Vec::new();
        while let Some(mut part) = parts.next().await? {
            let mut data = Vec::new();
            while let Some(chunk) = part.field.next().await {
                data.extend_from_slice(&chunk.map_err(|e| map_multer_error(e, &limits))?);
            }
            out.push((part.meta, data));
        }
        Ok(out)
    }

    #[tokio::test]
    async fn reads_parts_in_any_chunking() {
        let big = vec![7u8; 200_000];
        let text = form(&[("a", "", b"1"), ("f", "x.bin", &big)]);
        for chunk in [1, 7, 4096, 1 << 20] {
            let parts = read_all(text.clone(), chunk, limits()).await.unwrap();
            assert_eq!(parts.len(), 2);
            assert_eq!(parts[0].1, b"1");
            assert_eq!(parts[1].0.filename.as_deref(), Some("x.bin"));
            assert_eq!(parts[1].1, big);
        }
    }

    #[tokio::test]
    async fn limits_are_enforced() {
        let four = form(&[
            ("a", "", b"1"),
            ("b", "", b"2"),
            ("c", "", b"3"),
            ("d", "", b"4"),
        ]);
        let err = read_all(four, 64, limits()).await.unwrap_err();
        assert!(matches!(err, UploadError::TooManyParts { max: 3 }), "{err}");

        let huge_header = format!(
            "--B\r\nContent-Disposition: form-data; name=\"a\"\r\nX-Pad: {}\r\n\r\n1\r\n--B--\r\n",
            "p".repeat(100_000)
        );
        let err = read_all(huge_header.into_bytes(), 512, limits())
            .await
            .unwrap_err();
        assert!(
            matches!(err, UploadError::PartHeadersTooLarge { .. }),
            "{err}"
        );

        let body_limit = Limits {
            max_body_size: 1000,
            ..limits()
        };
        let err = read_all(form(&[("f", "x", &[0u8; 5000])]), 100, body_limit)
            .await
            .unwrap_err();
        assert!(
            matches!(err, UploadError::BodyTooLarge { max: 1000 }),
            "{err}"
        );

        let err = read_all(
            b"--B\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nxx".to_vec(),
            8,
            limits(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, UploadError::Malformed(_)), "{err}");
    }

    #[tokio::test]
    async fn client_failures_stay_the_clients() {
        let chunks = vec![
            Ok(Bytes::from_static(
                b"--B\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n12",
            )),
            Err(UploadError::ClientBody("reset".into())),
        ];
        let mut parts = Parts::new(stream::iter(chunks), "B", limits());
        let mut part = parts.next().await.unwrap().unwrap();
        let mut err = None;
        while let Some(c) = part.field.next().await {
            if let Err(e) = c {
                err = Some(map_multer_error(e, &limits()));
                break;
            }
        }
        assert!(matches!(err, Some(UploadError::ClientBody(_))), "{err:?}");
    }
}
