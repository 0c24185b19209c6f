//! What is kept of a request to send it again when a reused app connection turns out to
//! have been closed by the app before it answered (`Upstream::send`).

use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, Version};
use http_body::Body as _;

use crate::body::{self, Body};

/// A bodiless, idempotent request's head in one buffer, as nginx keeps the request it sent,
/// rather than a second [`Request`]: a cloned `HeaderMap` allocates twice and takes a
/// reference count (an atomic operation) on each shared name and value, which dropping it
/// gives back; ~1,900 instructions per 1 KiB GET under callgrind, for a copy that is almost
/// never sent.
pub(super) struct Replay {
    method: Method,
    version: Version,
    /// The path and query, then each header's name and value in the map's order, each
    /// field after its length (`u32`, little-endian).
    head: Vec<u8>,
}

impl Replay {
    /// A copy of `req` if it may be sent twice: an idempotent method (RFC 9110 §9.2.2, the
    /// methods nginx sends again), no body, and the origin-form target every request to the
    /// app has (`Upstream::uri_for`). A DELETE (WordPress's REST API deletes media with one)
    /// meeting the race is sent again as a GET is.
    pub(super) fn of(req: &Request<Body>) -> Option<Replay> {
        let idempotent = matches!(
            *req.method(),
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        );
        let uri = req.uri();
        if !idempotent || !req.body().is_end_stream() || uri.authority().is_some() {
            return None;
        }
        let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
        let headers = req.headers();
        let size = headers
            .iter()
            .fold(4 + target.len(), |size, (name, value)| {
                size + 8 + name.as_str().len() + value.len()
            });
        let mut head = Vec::with_capacity(size);
        put(&mut head, target.as_bytes())?;
        for (name, value) in headers {
            put(&mut head, name.as_str().as_bytes())?;
            put(&mut head, value.as_bytes())?;
        }
        Some(Replay {
            method: req.method().clone(),
            version: req.version(),
            head,
        })
    }

    /// The request again, with an empty body. `None` only if the head does not read back
    /// (it was written from a valid request, so it does); the caller then gives up the
    /// retry rather than send something else.
    pub(super) fn into_request(self) -> Option<Request<Body>> {
        let mut fields = Fields(&self.head);
        let uri = Uri::try_from(fields.next()?).ok()?;
        let mut headers = HeaderMap::new();
        while let Some(name) = fields.next() {
            let name = HeaderName::from_bytes(name).ok()?;
            let value = HeaderValue::from_bytes(fields.next()?).ok()?;
            headers.append(name, value);
        }
        // Every byte read: a head cut short in a length is not a complete request either.
        if !fields.0.is_empty() {
            return None;
        }
        let mut req = Request::new(body::empty());
        *req.method_mut() = self.method;
        *req.uri_mut() = uri;
        *req.version_mut() = self.version;
        *req.headers_mut() = headers;
        Some(req)
    }
}

/// Appends `field` after its length; `None` for a field too long to say in 32 bits (no
/// request head is: `server.max_header_size` bounds them).
fn put(head: &mut Vec<u8>, field: &[u8]) -> Option<()> {
    let len = u32::try_from(field.len()).ok()?;
    head.extend_from_slice(&len.to_le_bytes());
    head.extend_from_slice(field);
    Some(())
}

/// The fields of a [`Replay`]'s head, in order.
struct Fields<'a>(&'a [u8]);

impl<'a> Iterator for Fields<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let (len, rest) = self.0.split_first_chunk::<4>()?;
        let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
        let (field, rest) = rest.split_at_checked(len)?;
        self.0 = rest;
        Some(field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, target: &str, headers: &[(&str, &[u8])]) -> Request<Body> {
        let mut req = Request::new(body::empty());
        *req.method_mut() = method;
        *req.uri_mut() = target.parse().expect("a valid target");
        for (name, value) in headers {
            req.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes()).expect("a valid name"),
                HeaderValue::from_bytes(value).expect("a valid value"),
            );
        }
        req
    }

    #[test]
    fn a_bodiless_get_comes_back_byte_for_byte_with_its_headers_in_order() {
        let original = request(
            Method::GET,
            "/a%2Fb/%20?x=%41&&y=%E2%9C%93",
            &[
                ("host", b"example.test"),
                ("x-forwarded-for", b"192.0.2.1, 198.51.100.7"),
                ("accept", b"text/html"),
                ("x-dup", b"one"),
                ("cookie", b"a=1"),
                ("x-dup", b""),
                ("x-dup", b"three: with a colon"),
                ("x-obs-text", b"caf\xe9 \t tab"),
            ],
        );
        let copy = Replay::of(&original)
            .expect("a GET without a body is replayable")
            .into_request()
            .expect("the copy reads back");
        assert_eq!(copy.method(), original.method());
        assert_eq!(copy.uri(), original.uri());
        assert_eq!(copy.version(), original.version());
        let pairs = |req: &Request<Body>| {
            req.headers()
                .iter()
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(pairs(&copy), pairs(&original));
        assert_eq!(copy.headers().len(), 8);
        assert!(copy.body().is_end_stream());
    }

    #[test]
    fn every_idempotent_method_is_replayable() {
        let methods = [
            Method::HEAD,
            Method::OPTIONS,
            Method::TRACE,
            Method::PUT,
            Method::DELETE,
        ];
        for method in methods {
            let copy = Replay::of(&request(method.clone(), "/", &[]))
                .and_then(Replay::into_request)
                .expect("replayable");
            assert_eq!(copy.method(), method);
            assert_eq!(copy.uri(), "/");
            assert!(copy.headers().is_empty());
        }
    }

    #[test]
    fn what_must_not_be_sent_twice_is_not_kept() {
        // Not idempotent: as nginx, never sent twice.
        for method in [
            Method::POST,
            Method::PATCH,
            Method::from_bytes(b"LOCK").unwrap(),
        ] {
            assert!(Replay::of(&request(method, "/", &[])).is_none());
        }
        // A PUT with a body: the body is gone once sent.
        let put = request(Method::PUT, "/", &[]).map(|_| body::full("body"));
        assert!(Replay::of(&put).is_none());
        // A GET with a body: the body is gone once sent.
        let with_body = request(Method::GET, "/", &[]).map(|_| body::full("body"));
        assert!(Replay::of(&with_body).is_none());
        // Not the origin form of a request to the app.
        let absolute = request(Method::GET, "http://app.test/x", &[]);
        assert!(Replay::of(&absolute).is_none());
    }

    #[test]
    fn a_head_that_does_not_read_back_gives_no_request() {
        let replay = |head: Vec<u8>| Replay {
            method: Method::GET,
            version: Version::HTTP_11,
            head,
        };
        // Cut short in a length, in a field, and a name without its value.
        let mut head = Vec::new();
        put(&mut head, b"/").expect("short");
        put(&mut head, b"host").expect("short");
        assert!(replay(head.clone()).into_request().is_none());
        put(&mut head, b"example.test").expect("short");
        assert!(replay(head.clone()).into_request().is_some());
        assert!(
            replay(head[..head.len() - 1].to_vec())
                .into_request()
                .is_none()
        );
        head.extend_from_slice(&[9, 0]);
        assert!(replay(head).into_request().is_none());
        // A name that is no header name.
        let mut bad = Vec::new();
        put(&mut bad, b"/").expect("short");
        put(&mut bad, b"no name").expect("short");
        put(&mut bad, b"value").expect("short");
        assert!(replay(bad).into_request().is_none());
    }
}
