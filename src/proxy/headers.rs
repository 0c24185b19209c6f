//! Header hygiene: the `Host` check (RFC 9112 §3.2), hop-by-hop removal (RFC 9110 §7.6.1),
//! message framing and HTTP/2's own checks. The forwarding headers are `forwarding`'s.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Version};

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that describe one connection, never the message: RFC 9110 §7.6.1, plus the
/// obsolete `Proxy-Connection` that old clients still send. `Connection` comes first (the
/// headers it names go too).
fn hop_by_hop() -> [&'static HeaderName; 6] {
    [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TE,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
    ]
}

/// What is wrong with a request's `Host`, if anything; RFC 9112 §3.2 asks a server to
/// answer `400` to an HTTP/1.1 request without one, to any with more than one, and to an
/// invalid one (the app would pick one Host and a cache or a log another).
pub fn host_problem<B>(req: &Request<B>) -> Option<&'static str> {
    // The target's authority wins over `Host` (`request_host`): it is the app's Host then,
    // and is held to the same rules.
    if let Some(authority) = req.uri().authority()
        && !is_host(authority.as_str().as_bytes())
    {
        return Some(match req.version() {
            Version::HTTP_2 => "invalid :authority",
            _ => "invalid host in the request target",
        });
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Some("more than one Host header"),
        (Some(host), None) if !is_host(host.as_bytes()) => Some("invalid Host header"),
        (Some(_), None) => None,
        // The absolute form (and HTTP/2's :authority) names the host in the target itself.
        (None, _) if req.version() == Version::HTTP_11 && req.uri().authority().is_none() => {
            Some("HTTP/1.1 request without a Host header")
        }
        // Else the app would get the upstream's own address as its Host (as nginx, a 400).
        (None, _) if req.version() == Version::HTTP_2 && req.uri().authority().is_none() => {
            Some("HTTP/2 request without :authority or Host")
        }
        (None, _) => None,
    }
}

/// What is wrong with a request's method and target, if anything, each a `400` as nginx
/// answers them:
/// - a method with lower-case letters: methods are case-sensitive (RFC 9110 §9.1), so
///   `post` is no POST to offload's upload routes, nor `connect` a CONNECT to its refusal,
///   but frameworks (Django, Flask) upper-case it and take it for one;
/// - the authority form without CONNECT, the asterisk form without OPTIONS (RFC 9112 §3.2):
///   `GET evil.example:80` would reach the app as `GET /` with that Host;
/// - an absolute form (or HTTP/2's `:scheme`) other than http or https, or userinfo in its
///   authority (RFC 9110 §4.2.4, RFC 9113 §8.3.1): the target's authority becomes the app's
///   Host, and `good.example@evil.example` gets past allow-lists.
pub fn target_problem<B>(req: &Request<B>) -> Option<&'static str> {
    let method = req.method();
    if method.as_str().bytes().any(|b| b.is_ascii_lowercase()) {
        return Some("a method in lower case");
    }
    let uri = req.uri();
    // HTTP/2's `:path *` comes with an authority; HTTP/1's absolute form never has it.
    if uri.path() == "*" && method != Method::OPTIONS {
        return Some("an asterisk-form target without OPTIONS");
    }
    let authority = uri.authority()?;
    match uri.scheme_str() {
        None if method != Method::CONNECT => Some("an authority-form target without CONNECT"),
        Some(scheme)
            if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") =>
        {
            Some("a target that is no http or https URL")
        }
        _ if authority.as_str().contains('@') && req.version() == Version::HTTP_2 => {
            Some("userinfo in :authority")
        }
        _ if authority.as_str().contains('@') => Some("userinfo in the request target"),
        _ => None,
    }
}

/// `uri-host [ ":" port ]`: a registered name, an IPv4 address or a bracketed IP literal;
/// never anything that would end the authority in a URL (`/ ? # @`), nor spaces or controls.
pub(super) fn is_host(value: &[u8]) -> bool {
    has_host_bytes(value) && is_well_formed_host(value)
}

/// As nginx checks a Host: no empty label (`a..b`, `.a`: an app that builds a file path from
/// its Host, as multi-site setups do, could take one for a parent directory), no empty name
/// before a port (`:80`), and brackets
/// only around a whole IP literal (`[::1]`, `[::1]:8080`). A trailing dot (`example.com.`)
/// is a fully qualified name, and fine.
fn is_well_formed_host(value: &[u8]) -> bool {
    // `:80`: a port with no host at all.
    if value.starts_with(b".")
        || value.starts_with(b":")
        || value.windows(2).any(|pair| pair == b"..")
    {
        return false;
    }
    let Some(rest) = value.strip_prefix(b"[") else {
        return !value.contains(&b'[') && !value.contains(&b']');
    };
    let Some(end) = rest.iter().position(|&b| b == b']') else {
        return false;
    };
    let (literal, after) = (&rest[..end], &rest[end + 1..]);
    !literal.contains(&b'[')
        && (after.is_empty() || after.starts_with(b":"))
        && !after.contains(&b'[')
        && !after.contains(&b']')
}

fn has_host_bytes(value: &[u8]) -> bool {
    !value.is_empty()
        && value.iter().all(|&b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.'
                        | b'_'
                        | b'~'
                        | b'%'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                        | b':'
                        | b'['
                        | b']'
                )
        })
}

/// Whether the message asks to switch to WebSocket: `websocket` among its `Upgrade`
/// protocols and the `upgrade` option in `Connection`. No other protocol is tunnelled:
/// through an `h2c` tunnel a client would send requests the proxy never sees (no forwarding
/// headers, upload routes, body limits or logs), which is why RFC 9113 §3.1 dropped that
/// upgrade and Envoy and HAProxy refuse it.
pub(super) fn wants_websocket(headers: &HeaderMap) -> bool {
    upgrades_to_websocket(headers)
        && connection_options(headers).any(|o| o.eq_ignore_ascii_case(b"upgrade"))
}

/// Whether `websocket` is among the message's `Upgrade` protocols.
pub(super) fn upgrades_to_websocket(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::UPGRADE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|protocol| protocol.trim_ascii().eq_ignore_ascii_case(b"websocket"))
}

/// The comma-separated options of every `Connection` header.
fn connection_options(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|o| !o.is_empty())
}

/// `Connection` options that name no header: `close`, `keep-alive` (handled by the fixed
/// hop-by-hop list) and `upgrade` (by the tunnel).
fn is_connection_keyword(option: &[u8]) -> bool {
    [&b"keep-alive"[..], b"close", b"upgrade"]
        .iter()
        .any(|k| option.eq_ignore_ascii_case(k))
}

/// What [`strip_hop_by_hop`] saw of a message's framing, which hyper has already acted on
/// (the body it hands over is decoded, and is framed anew on the way out): what the proxy
/// must check because it cannot pass it on as it came.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Framing {
    /// `Transfer-Encoding` was there.
    pub transfer_encoding: bool,
    /// It named a coding besides `chunked` (`gzip`, an unknown one), or `chunked` more than
    /// once (RFC 9112 §6.1 forbids it): hyper undid one chunking only, and once
    /// `Transfer-Encoding` goes the rest would pass as the body's bytes.
    pub other_coding: bool,
    /// `Content-Length` was there.
    pub content_length: bool,
    /// It was there more than once, as a list (`5, 5`; hyper checked that the values
    /// agree) or with leading zeros (`010`, which a C parser may read as octal): to be
    /// passed on as one plain number, as nginx passes it.
    pub content_length_to_normalise: bool,
    /// `Proxy-Authorization` or `Proxy` was there (see [`strip_proxy_headers`]).
    pub proxy_headers: bool,
    /// `Expect` was there. (These two are no framing, but found in the same pass, a lookup
    /// each is saved on the requests without them.)
    pub expect: bool,
}

/// Removes hop-by-hop headers and every header named in `Connection`, and tells what the
/// message's framing headers were. When `tunnel` is set (a switch to WebSocket is being
/// passed on), `Upgrade: websocket` and `Connection: upgrade` are set, as the next hop needs
/// both to switch protocols; any other protocol offered beside it goes.
///
/// Runs twice per forwarded request, and nearly every message carries nothing to remove but
/// `Connection: keep-alive`: one pass over the headers finds what is there, and only that
/// is looked up and removed.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap, tunnel: bool) -> Framing {
    let names = hop_by_hop();
    let (found, mut framing) = scan(headers);
    if found[4] {
        framing.transfer_encoding = true;
        let mut codings = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii);
        framing.other_coding = !codings
            .next()
            .is_some_and(|coding| coding.eq_ignore_ascii_case(b"chunked"))
            || codings.next().is_some();
    }
    // Options that name another header, which are rare: nearly every `Connection` says
    // only `keep-alive` or `close`, and is looked through once without collecting anything.
    if found[0] && connection_options(headers).any(|o| !is_connection_keyword(o)) {
        let named: Vec<HeaderName> = connection_options(headers)
            .filter(|o| !is_connection_keyword(o))
            .filter_map(|o| HeaderName::from_bytes(o).ok())
            .filter(|name| !outlives_connection_options(name))
            .collect();
        for name in named {
            headers.remove(&name);
        }
    }
    for (name, _) in names.iter().zip(found).filter(|(_, here)| *here) {
        headers.remove(*name);
    }
    if tunnel {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    framing
}

/// Headers a `Connection` option does not remove: `Host`, and the forwarding headers a
/// trusted proxy in front sets. A client whose request passes such a proxy with its own
/// `Connection: X-Forwarded-For, X-Forwarded-Proto` would otherwise erase what that proxy
/// said of it, and the app would take the proxy for the client, on plain HTTP. None of them
/// is hop-by-hop by nature (RFC 9110 §7.6.1 forbids naming such fields), and nginx ignores
/// `Connection` options altogether; an untrusted peer's are replaced all the same.
fn outlives_connection_options(name: &HeaderName) -> bool {
    name == header::HOST || super::forwarding::is_forwarding_header(name.as_str())
}

/// Which of [`hop_by_hop`]'s headers `headers` has, in its order, and whether (and how) it
/// has `Content-Length`, in one pass. Each name is looked at once, by its text: a `match` on
/// it is a switch on the length and at most one comparison, where comparing each name with
/// all six (two of them not among `http`'s standard names, so compared as text anyway) cost
/// ~200 instructions a request more, and [`present`] comparing names by their text ~460 more.
fn scan(headers: &HeaderMap) -> ([bool; 6], Framing) {
    let mut found = [false; 6];
    let mut framing = Framing::default();
    for (name, value) in headers {
        match scanned_index(name) {
            Some(CONTENT_LENGTH_INDEX) => {
                let value = value.as_bytes();
                framing.content_length_to_normalise |= framing.content_length
                    || value.contains(&b',')
                    || (value.len() > 1 && value[0] == b'0');
                framing.content_length = true;
            }
            Some(PROXY_HEADERS_INDEX) => framing.proxy_headers = true,
            Some(EXPECT_INDEX) => framing.expect = true,
            Some(i) => found[i] = true,
            None => {}
        }
    }
    (found, framing)
}

/// Joins the `cookie` fields an HTTP/2 client may send one per cookie (RFC 9113 §8.2.3:
/// "; " between them) into one, as an HTTP/1.1 app reads a single `Cookie` header.
pub(super) fn join_cookies(headers: &mut HeaderMap) {
    if headers.get_all(header::COOKIE).iter().nth(1).is_none() {
        return;
    }
    let mut joined = Vec::new();
    for value in headers.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(value.as_bytes());
    }
    // Each part was a valid value, and "; " is too.
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// What is wrong with an HTTP/2 request that hyper's HTTP/2 server lets through where its
/// HTTP/1 parser would not, if anything: more headers than `server.max_headers` (`431`;
/// the HTTP/2 server bounds only their bytes) or a value with whitespace at either end
/// (RFC 9113 §8.2.1, `400`), or a `Host` that differs from `:authority` (§8.3.1, `400`).
/// (Userinfo in `:authority` is [`target_problem`]'s.) The
/// `cookie` fields count as the one header [`join_cookies`] makes of them, as over HTTP/1.1.
pub fn h2_problem<B>(req: &Request<B>, max_headers: usize) -> Option<(StatusCode, &'static str)> {
    let headers = req.headers();
    if headers.len() > max_headers
        && headers.len()
            - headers
                .get_all(header::COOKIE)
                .iter()
                .count()
                .saturating_sub(1)
            > max_headers
    {
        return Some((
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "more headers than server.max_headers",
        ));
    }
    let padded = |v: &HeaderValue| {
        let bytes = v.as_bytes();
        [bytes.first(), bytes.last()]
            .into_iter()
            .flatten()
            .any(|b| matches!(b, b' ' | b'\t'))
    };
    if req.headers().values().any(padded) {
        return Some((
            StatusCode::BAD_REQUEST,
            "a header value with whitespace at either end",
        ));
    }
    // RFC 9113 §8.3.1: a Host that differs from :authority makes the request malformed
    // (nginx refuses any request with both). One rule reads them ([`request_host`]), but a
    // cache or a log in front may have read the other.
    if let (Some(authority), Some(host)) = (req.uri().authority(), headers.get(header::HOST))
        && !authority
            .as_str()
            .as_bytes()
            .eq_ignore_ascii_case(host.as_bytes())
    {
        return Some((
            StatusCode::BAD_REQUEST,
            "a Host that differs from :authority",
        ));
    }
    None
}

/// Replaces a `Content-Length` given more than once, as a list or with leading zeros with
/// its first value as a plain number (hyper has checked that the values agree, and are
/// numbers; a client may not accept them repeated).
pub(super) fn normalise_content_length(headers: &mut HeaderMap) {
    let first = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.as_bytes().split(|&b| b == b',').next())
        .and_then(|v| std::str::from_utf8(v.trim_ascii()).ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(length) = first {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
}

/// Where [`scanned_index`] puts `Content-Length`: after [`hop_by_hop`]'s names.
const CONTENT_LENGTH_INDEX: usize = 6;

/// Where [`scanned_index`] puts `Proxy-Authorization` and `Proxy`.
const PROXY_HEADERS_INDEX: usize = 7;

/// Where [`scanned_index`] puts `Expect`.
const EXPECT_INDEX: usize = 8;

/// `name`'s place in [`hop_by_hop`], or [`CONTENT_LENGTH_INDEX`]: the names [`scan`] looks
/// for. Compared by text in one `match`, as `name.as_str()` is at hand: comparing the name
/// with `header::CONTENT_LENGTH` besides cost ~10 instructions per header.
fn scanned_index(name: &HeaderName) -> Option<usize> {
    match name.as_str() {
        "connection" => Some(0),
        "keep-alive" => Some(1),
        "proxy-connection" => Some(2),
        "te" => Some(3),
        "transfer-encoding" => Some(4),
        "upgrade" => Some(5),
        "content-length" => Some(CONTENT_LENGTH_INDEX),
        "proxy-authorization" | "proxy" => Some(PROXY_HEADERS_INDEX),
        "expect" => Some(EXPECT_INDEX),
        _ => None,
    }
}

/// Whether `name` is a header HTTP or offload sets or reads for its own ends (framing,
/// hop-by-hop, `Host`, the forwarding headers, credentials, the content's kind and place):
/// none to carry a request ID in, which is set on every request and answer.
pub fn is_managed_header(name: &HeaderName) -> bool {
    scanned_index(name).is_some()
        || matches!(
            name.as_str(),
            "host"
                | "cookie"
                | "set-cookie"
                | "authorization"
                | "content-type"
                | "content-encoding"
                | "location"
        )
        || super::forwarding::is_forwarding_header(name.as_str())
}

/// Whether `name` is a header HTTP or browsers define for a meaning of its own (content
/// negotiation, caching, conditions, ranges, CORS, the `Sec-` ones): a request ID set on
/// every request and answer in its place would replace the client's real one.
pub fn is_http_defined_header(name: &HeaderName) -> bool {
    const DEFINED: &[&str] = &[
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "cache-control",
        "content-disposition",
        "content-language",
        "content-location",
        "content-range",
        "date",
        "dnt",
        "etag",
        "expires",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "link",
        "origin",
        "pragma",
        "range",
        "referer",
        "refresh",
        "retry-after",
        "server",
        "user-agent",
        "vary",
        "via",
        "www-authenticate",
    ];
    let name = name.as_str();
    DEFINED.contains(&name) || name.starts_with("sec-") || name.starts_with("access-control-")
}

/// The host a request is for: its target's authority (an absolute-form target, HTTP/2's
/// `:authority`), which wins over `Host` (RFC 9112 §3.2.2, RFC 9113 §8.3.1), else its `Host`.
/// Forwarding, rewriting and origin pulls all take it from here, so that the app is never
/// asked for one site while offload rewrites for another.
pub fn request_host(uri: &http::Uri, headers: &HeaderMap) -> Option<HeaderValue> {
    match uri.authority() {
        Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
        None => headers.get(header::HOST).cloned(),
    }
}

/// `Proxy` (httpoxy): no HTTP header, but a CGI-style gateway (PHP-FPM, CGI) passes it on
/// as `HTTP_PROXY`, which HTTP client libraries take for their outgoing proxy.
static PROXY: HeaderName = HeaderName::from_static("proxy");

/// What is meant for a proxy, or would be taken for a setting of the app's own: credentials
/// for a proxy (offload asks for none) and `Proxy` (httpoxy) stop here rather than reach
/// the app, from any peer. Called when [`strip_hop_by_hop`]'s pass found either
/// ([`Framing::proxy_headers`]), so that a request without them is not looked up twice.
pub(super) fn strip_proxy_headers(headers: &mut HeaderMap) {
    headers.remove(header::PROXY_AUTHORIZATION);
    headers.remove(&PROXY);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::header_map as map;

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = map(&[
            ("connection", "close, X-Secret-Hop"),
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("proxy-connection", "keep-alive"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }

    #[test]
    fn connection_options_leave_host_and_the_forwarding_headers() {
        let mut h = map(&[
            ("host", "example.com"),
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=203.0.113.7"),
            ("x-hop", "1"),
            (
                "connection",
                "Host, X-Forwarded-For, X-Forwarded-Proto, Forwarded, X-Hop",
            ),
        ]);
        strip_hop_by_hop(&mut h, false);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            ["host", "x-forwarded-for", "x-forwarded-proto", "forwarded"]
        );
    }

    #[test]
    fn hop_by_hop_names_are_found_in_their_place() {
        for (i, name) in hop_by_hop().into_iter().enumerate() {
            assert_eq!(scanned_index(name), Some(i), "{name}");
        }
        assert_eq!(
            scanned_index(&header::CONTENT_LENGTH),
            Some(CONTENT_LENGTH_INDEX)
        );
        for (name, flag) in [
            ("proxy-authorization", "proxy_headers"),
            ("proxy", "proxy_headers"),
            ("expect", "expect"),
        ] {
            let seen = strip_hop_by_hop(&mut map(&[(name, "x")]), false);
            let found = [
                ("proxy_headers", seen.proxy_headers),
                ("expect", seen.expect),
            ];
            for (which, set) in found {
                assert_eq!(set, which == flag, "{name}: {which}");
            }
        }
        for other in [header::HOST, HeaderName::from_static("x-forwarded-for")] {
            assert_eq!(scanned_index(&other), None, "{other}");
        }
    }

    #[test]
    fn tunnel_passes_on_websocket_only() {
        let mut h = map(&[
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c, WebSocket"),
            ("http2-settings", "AAMAAABkAAQAoAAAAAIAAAAA"),
        ]);
        assert!(wants_websocket(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h.len(), 2, "{h:?}");
        assert!(!wants_websocket(&map(&[("upgrade", "websocket")])));
        for other in ["h2c", "TLS/1.0", "websocketx"] {
            let h = map(&[("connection", "upgrade"), ("upgrade", other)]);
            assert!(!wants_websocket(&h), "{other}");
        }
    }

    #[test]
    fn framing_headers_are_told() {
        let mut h = map(&[("transfer-encoding", "chunked"), ("content-length", "5")]);
        let framing = strip_hop_by_hop(&mut h, false);
        assert!(framing.transfer_encoding && framing.content_length);
        assert!(!framing.other_coding && !framing.content_length_to_normalise);
        for codings in [
            &["gzip, chunked"][..],
            &["gzip", "chunked"],
            &["chunked, x"],
            &["chunked, chunked"],
            &["chunked", "chunked"],
        ] {
            let pairs: Vec<_> = codings.iter().map(|c| ("transfer-encoding", *c)).collect();
            let framing = strip_hop_by_hop(&mut map(&pairs), false);
            assert!(framing.other_coding, "{codings:?}");
        }
        let framing = strip_hop_by_hop(&mut map(&[("transfer-encoding", " Chunked ")]), false);
        assert!(framing.transfer_encoding && !framing.other_coding);
        for lengths in [&["5, 5"][..], &["5", "5"], &["005"], &["05, 5"]] {
            let pairs: Vec<_> = lengths.iter().map(|l| ("content-length", *l)).collect();
            let mut h = map(&pairs);
            assert!(
                strip_hop_by_hop(&mut h, false).content_length_to_normalise,
                "{lengths:?}"
            );
            normalise_content_length(&mut h);
            assert_eq!(
                h.get_all("content-length").iter().collect::<Vec<_>>(),
                ["5"]
            );
        }
        for plain in ["5", "0", "10"] {
            let framing = strip_hop_by_hop(&mut map(&[("content-length", plain)]), false);
            assert!(framing.content_length && !framing.content_length_to_normalise);
        }
        assert_eq!(strip_hop_by_hop(&mut map(&[]), false), Framing::default());
    }

    #[test]
    fn cookies_split_over_http2_are_joined() {
        let mut h = map(&[
            ("cookie", "a=1"),
            ("x", "y"),
            ("cookie", "b=2"),
            ("cookie", "c=3"),
        ]);
        join_cookies(&mut h);
        assert_eq!(
            h.get_all("cookie").iter().collect::<Vec<_>>(),
            ["a=1; b=2; c=3"]
        );
        let mut h = map(&[("cookie", "a=1; b=2")]);
        join_cookies(&mut h);
        assert_eq!(h["cookie"], "a=1; b=2");
    }

    #[test]
    fn host_is_required_once_and_well_formed() {
        let req = |version, target: &str, hosts: &[&str]| {
            let mut builder = Request::builder().version(version).uri(target);
            for h in hosts {
                builder = builder.header(header::HOST, *h);
            }
            builder.body(()).unwrap()
        };
        let v11 = Version::HTTP_11;
        for good in [
            "example.com",
            "example.com:8080",
            "127.0.0.1:80",
            "[::1]:8080",
            "[::1]",
            "xn--bcher-kva.example",
            "example.com.",
        ] {
            assert_eq!(host_problem(&req(v11, "/", &[good])), None, "{good}");
        }
        for bad in [
            "",
            "a b",
            "evil.com/x",
            "user@evil.com",
            "a?b",
            "a#b",
            "a\tb",
            "a..b",
            ".example.com",
            "..",
            "[::1",
            "::1]",
            "[::1]x",
            "[::1]:80]",
            "a[b]",
        ] {
            assert_eq!(
                host_problem(&req(v11, "/", &[bad])),
                Some("invalid Host header"),
                "{bad:?}"
            );
        }
        assert_eq!(
            host_problem(&req(v11, "/", &["a", "b"])),
            Some("more than one Host header")
        );
        assert_eq!(
            host_problem(&req(v11, "/", &[])),
            Some("HTTP/1.1 request without a Host header")
        );
        assert_eq!(host_problem(&req(Version::HTTP_10, "/", &[])), None);
        assert_eq!(host_problem(&req(v11, "http://example.com/", &[])), None);
        let v2 = Version::HTTP_2;
        assert_eq!(
            host_problem(&req(v2, "/", &[])),
            Some("HTTP/2 request without :authority or Host")
        );
        assert_eq!(host_problem(&req(v2, "/", &["example.com"])), None);
        assert_eq!(host_problem(&req(v2, "https://example.com/", &[])), None);
    }

    #[test]
    fn targets_and_methods_nginx_refuses_are_refused() {
        let req = |method: &str, target: &str, version: Version| {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            Request::builder()
                .method(method)
                .uri(target)
                .version(version)
                .body(())
                .unwrap()
        };
        let v11 = Version::HTTP_11;
        for (method, target) in [
            ("GET", "/a?b"),
            ("GET", "http://example.com/x"),
            ("GET", "HTTPS://example.com:8443/x"),
            ("OPTIONS", "*"),
            ("CONNECT", "example.com:443"),
            ("M-SEARCH", "/"),
        ] {
            assert_eq!(
                target_problem(&req(method, target, v11)),
                None,
                "{method} {target}"
            );
        }
        for (method, target, problem) in [
            ("post", "/upload", "a method in lower case"),
            ("Post", "/upload", "a method in lower case"),
            ("connect", "evil.example:443", "a method in lower case"),
            ("GET", "*", "an asterisk-form target without OPTIONS"),
            (
                "GET",
                "evil.example:80",
                "an authority-form target without CONNECT",
            ),
            ("GET", "evil", "an authority-form target without CONNECT"),
            (
                "GET",
                "ftp://example.com/x",
                "a target that is no http or https URL",
            ),
            (
                "GET",
                "http://good.example@evil.example/x",
                "userinfo in the request target",
            ),
        ] {
            let found = target_problem(&req(method, target, v11));
            assert_eq!(found, Some(problem), "{method} {target}");
        }
        let h2 = req("GET", "https://u:p@example.com/", Version::HTTP_2);
        assert_eq!(target_problem(&h2), Some("userinfo in :authority"));
        let mut h2_star = req("GET", "/", Version::HTTP_2);
        *h2_star.uri_mut() = http::Uri::from_parts({
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(http::uri::Scheme::HTTPS);
            parts.authority = Some(http::uri::Authority::from_static("example.com"));
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("*"));
            parts
        })
        .unwrap();
        assert_eq!(
            target_problem(&h2_star),
            Some("an asterisk-form target without OPTIONS")
        );
        *h2_star.method_mut() = Method::OPTIONS;
        assert_eq!(target_problem(&h2_star), None);
    }

    #[test]
    fn proxy_credentials_and_httpoxy_go() {
        let mut h = map(&[
            ("proxy-authorization", "Basic c2VjcmV0"),
            ("proxy", "http://evil.example:3128"),
            ("accept", "*/*"),
        ]);
        strip_proxy_headers(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["accept"]);
    }
}
