//! `server.tls.redirect_http`: the plain listener answers every request with a redirect to
//! the same URL on HTTPS, as nginx's `return 301 https://$host$request_uri;` in its
//! `listen 80` server, but for ACME's HTTP-01 challenges, which the app answers (certbot's
//! webroot writes them into the app's document root).

use http::header::{self, HeaderValue};
use http::uri::Authority;
use http::{Request, Response, StatusCode};

use crate::body::{self, Body};
use crate::proxy::ProxyError;

/// Where ACME's HTTP-01 challenges are asked for (RFC 8555, 8.3).
const ACME_CHALLENGES: &str = "/.well-known/acme-challenge/";

/// The answer to a plain-HTTP `req` when HTTPS is on `https_port`: a `308` to the same
/// host, path and query there (the method and body kept, where a `301` lets clients turn a
/// POST into a GET), or a `400` when the request names no usable host. `None` for ACME's
/// challenges, which go on to the app.
pub(super) fn to_https<B>(req: &Request<B>, https_port: u16) -> Option<Response<Body>> {
    if is_acme_challenge(req.uri().path()) {
        return None;
    }
    // `OPTIONS *` asks about the server, and names no URL to send it to (nginx: 400).
    if req.uri().path() == "*" {
        let problem = "an asterisk-form target has no URL to redirect to HTTPS".to_string();
        return Some(ProxyError::BadRequest(problem).into_response());
    }
    let Some(location) = https_location(req, https_port) else {
        let problem = "no host to redirect to HTTPS".to_string();
        return Some(ProxyError::BadRequest(problem).into_response());
    };
    let text = format!("moved to {}\n", location.to_str().unwrap_or_default());
    let mut response = body::text(StatusCode::PERMANENT_REDIRECT, text);
    response.headers_mut().insert(header::LOCATION, location);
    Some(response)
}

/// Whether `path` asks for one ACME challenge: the prefix and a token, which is base64url
/// (RFC 8555, 8.1). Matched on the raw path, so anything else after the prefix (`..`, `%2e`,
/// `%2f`, another `/`), which the app may resolve to a path outside it, is redirected.
fn is_acme_challenge(path: &str) -> bool {
    path.strip_prefix(ACME_CHALLENGES).is_some_and(|token| {
        !token.is_empty()
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// `https://host[:port]/path?query` for `req`: its host (the request target's authority,
/// else Host: RFC 9112 §3.2.2, as forwarding takes it) without the plain listener's port,
/// and `https_port` unless it is 443.
fn https_location<B>(req: &Request<B>, https_port: u16) -> Option<HeaderValue> {
    let host = crate::proxy::request_host(req.uri(), req.headers())?;
    let authority = Authority::try_from(host.as_bytes()).ok()?;
    let host = authority.host();
    let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let location = match https_port {
        443 => format!("https://{host}{path}"),
        port => format!("https://{host}:{port}{path}"),
    };
    HeaderValue::try_from(location).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(target: &str, host: Option<&str>) -> Request<()> {
        let mut builder = Request::get(target);
        if let Some(host) = host {
            builder = builder.header(header::HOST, host);
        }
        builder.body(()).unwrap()
    }

    fn location(response: &Response<Body>) -> &str {
        response.headers()[header::LOCATION].to_str().unwrap()
    }

    #[test]
    fn the_same_url_on_https_with_the_listeners_port() {
        let r = to_https(&get("/a/b%20c?x=1&y", Some("example.com:8080")), 8443).unwrap();
        assert_eq!(r.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(location(&r), "https://example.com:8443/a/b%20c?x=1&y");
        let r = to_https(&get("/", Some("example.com")), 443).unwrap();
        assert_eq!(location(&r), "https://example.com/");
        let r = to_https(&get("/p", Some("[2001:db8::1]:80")), 443).unwrap();
        assert_eq!(location(&r), "https://[2001:db8::1]/p");
        let r = to_https(&get("http://example.org/abs?q", None), 443).unwrap();
        assert_eq!(location(&r), "https://example.org/abs?q");
        // The target's authority wins over Host, as in forwarding (RFC 9112 §3.2.2).
        let r = to_https(&get("http://example.org/abs", Some("other.test")), 443).unwrap();
        assert_eq!(location(&r), "https://example.org/abs");
    }

    #[test]
    fn acme_challenges_go_on_to_the_app() {
        assert!(
            to_https(
                &get("/.well-known/acme-challenge/tok3n", Some("a.test")),
                443
            )
            .is_none()
        );
        assert!(to_https(&get("/.well-known/other", Some("a.test")), 443).is_some());
    }

    #[test]
    fn only_a_challenge_token_escapes_the_redirect() {
        for path in [
            "/.well-known/acme-challenge/",
            "/.well-known/acme-challenge/../../wp-login.php",
            "/.well-known/acme-challenge/%2e%2e/%2e%2e/secret",
            "/.well-known/acme-challenge/..%2f..%2fsecret",
            "/.well-known/acme-challenge/tok/../../x",
            "/.well-known/acme-challenge/tok.php",
        ] {
            let r = to_https(&get(path, Some("a.test")), 443);
            let r = r.unwrap_or_else(|| panic!("{path} went on to the app"));
            assert_eq!(r.status(), StatusCode::PERMANENT_REDIRECT, "{path}");
        }
        let token = "/.well-known/acme-challenge/LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0";
        assert!(to_https(&get(token, Some("a.test")), 443).is_none());
    }

    #[test]
    fn no_usable_host_is_a_400() {
        for host in [None, Some("bad host"), Some("a.test/evil")] {
            let r = to_https(&get("/x", host), 443).unwrap();
            assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{host:?}");
            assert!(!r.headers().contains_key(header::LOCATION));
        }
    }

    #[test]
    fn options_asterisk_is_a_400() {
        let req = Request::options("*")
            .header(header::HOST, "a.test")
            .body(())
            .unwrap();
        let r = to_https(&req, 8443).unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert!(!r.headers().contains_key(header::LOCATION));
    }
}
