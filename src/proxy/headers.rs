//! Header hygiene: hop-by-hop removal (RFC 9110 §7.6.1) and the forwarding headers
//! (`X-Forwarded-For/-Proto/-Host`, RFC 7239 `Forwarded`).

use std::fmt::Write as _;
use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::ClientInfo;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that describe one connection, never the message: RFC 9110 §7.6.1, plus the
/// obsolete `Proxy-Connection` that old clients still send.
fn fixed_hop_by_hop() -> [&'static HeaderName; 5] {
    [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TE,
        &header::TRANSFER_ENCODING,
    ]
}

/// Whether the message asks to switch protocols: an `Upgrade` header and the `upgrade`
/// option in `Connection`.
pub(super) fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && connection_options(headers).any(|o| o.eq_ignore_ascii_case("upgrade"))
}

/// The comma-separated options of every `Connection` header.
fn connection_options(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|o| !o.is_empty())
}

/// Removes hop-by-hop headers and every header named in `Connection`. When `tunnel` is set
/// (an upgrade is being passed on), `Upgrade` stays and `Connection: upgrade` is re-added,
/// as the next hop needs both to switch protocols.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap, tunnel: bool) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = connection_options(headers)
            .filter_map(|o| HeaderName::from_bytes(o.as_bytes()).ok())
            .collect();
        for name in named {
            if !(tunnel && name == header::UPGRADE) {
                headers.remove(&name);
            }
        }
    }
    for name in fixed_hop_by_hop() {
        headers.remove(name);
    }
    if tunnel {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// The headers [`set_forwarding`] owns or drops, as a CGI-style app sees them: PHP (and every CGI or
/// WSGI gateway) turns `X_Forwarded_For` and `X-Forwarded-For` into the same
/// `HTTP_X_FORWARDED_FOR`, so an underscore spelling would slip a forged value past us.
const FORWARDING: [&str; 7] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-real-ip",
    "forwarded",
];

/// Removes every underscore spelling of a forwarding header (`X_Forwarded_For`,
/// `X-Forwarded_Proto`…), from any peer: no proxy sends them, and an app behind a CGI-style
/// gateway would read them as the real ones.
pub(super) fn strip_forwarding_lookalikes(headers: &mut HeaderMap) {
    let lookalikes: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let name = name.as_str();
            name.contains('_') && FORWARDING.contains(&name.replace('_', "-").as_str())
        })
        .cloned()
        .collect();
    for name in lookalikes {
        headers.remove(&name);
    }
}

/// Credentials meant for a proxy: offload asks for none, so they stop here rather than
/// reach the app.
pub(super) fn strip_proxy_credentials(headers: &mut HeaderMap) {
    headers.remove(header::PROXY_AUTHORIZATION);
}

/// Claims about the client that only a proxy may make and that offload does not set itself
/// (apps behind trusted proxies read them: Symfony and Laravel take the port and prefix,
/// many apps the real IP). From an untrusted peer they are dropped.
const UNSET_CLAIMS: [&str; 3] = ["x-forwarded-port", "x-forwarded-prefix", "x-real-ip"];

/// Sets `X-Forwarded-For/-Proto/-Host` and `Forwarded` for a request from `client` whose
/// original host (Host header or URI authority) was `host`. From a trusted peer the
/// headers it sent are kept and extended; from anyone else they are replaced, and the
/// claims offload does not make (`X-Forwarded-Port/-Prefix`, `X-Real-IP`) removed, so a
/// client cannot forge its address.
pub(super) fn set_forwarding(
    headers: &mut HeaderMap,
    client: &ClientInfo,
    trusted: bool,
    host: Option<&HeaderValue>,
) {
    let ip = canonical_ip(client.peer.ip());
    let proto = if client.tls { "https" } else { "http" };
    if !trusted {
        for name in UNSET_CLAIMS {
            headers.remove(name);
        }
    }

    let mut xff = if trusted {
        joined(headers, &X_FORWARDED_FOR)
    } else {
        String::new()
    };
    if !xff.is_empty() {
        xff.push_str(", ");
    }
    let _ = write!(xff, "{ip}");
    insert_text(headers, &X_FORWARDED_FOR, &xff);

    if !(trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    }
    if !(trusted && headers.contains_key(&X_FORWARDED_HOST)) {
        match host {
            Some(h) => headers.insert(X_FORWARDED_HOST.clone(), h.clone()),
            None => headers.remove(&X_FORWARDED_HOST),
        };
    }

    let mut forwarded = if trusted {
        joined(headers, &header::FORWARDED)
    } else {
        String::new()
    };
    if !forwarded.is_empty() {
        forwarded.push_str(", ");
    }
    forwarded_element(&mut forwarded, ip, host, proto);
    insert_text(headers, &header::FORWARDED, &forwarded);
}

/// One RFC 7239 element: `for=…;host="…";proto=…`. IPv6 nodes and hosts are quoted (":"
/// and "[" are not token characters).
fn forwarded_element(out: &mut String, ip: IpAddr, host: Option<&HeaderValue>, proto: &str) {
    match ip {
        IpAddr::V4(v4) => {
            let _ = write!(out, "for={v4}");
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "for=\"[{v6}]\"");
        }
    }
    if let Some(host) = host.and_then(|h| h.to_str().ok()) {
        out.push_str(";host=\"");
        for c in host.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    }
    out.push_str(";proto=");
    out.push_str(proto);
}

/// Every value of `name`, joined with ", " (how a list header's values combine).
fn joined(headers: &HeaderMap, name: &HeaderName) -> String {
    let mut out = String::new();
    for value in headers.get_all(name) {
        let Ok(text) = value.to_str() else { continue };
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push_str(text);
    }
    out
}

/// Replaces every `name` header with one value; text we built is always a valid value.
fn insert_text(headers: &mut HeaderMap, name: &HeaderName, text: &str) {
    if let Ok(value) = HeaderValue::from_str(text) {
        headers.insert(name.clone(), value);
    } else {
        headers.remove(name);
    }
}

/// `::ffff:1.2.3.4` (an IPv4 peer on a dual-stack socket) is reported as `1.2.3.4`.
pub(super) fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn client(peer: &str, tls: bool) -> ClientInfo {
        ClientInfo {
            peer: peer.parse().unwrap(),
            tls,
        }
    }

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
    fn tunnel_keeps_upgrade() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(wants_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert!(!wants_upgrade(&map(&[("upgrade", "websocket")])));
    }

    #[test]
    fn untrusted_peer_headers_are_replaced() {
        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil"),
            ("forwarded", "for=6.6.6.6"),
            ("x-forwarded-port", "443"),
            ("x-forwarded-prefix", "/admin"),
            ("x-real-ip", "6.6.6.6"),
        ]);
        let host = HeaderValue::from_static("example.com:8080");
        set_forwarding(&mut h, &client("192.0.2.1:5000", false), false, Some(&host));
        assert_eq!(h["x-forwarded-for"], "192.0.2.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "example.com:8080");
        assert_eq!(
            h["forwarded"],
            "for=192.0.2.1;host=\"example.com:8080\";proto=http"
        );
        for claim in UNSET_CLAIMS {
            assert!(!h.contains_key(claim), "{claim} kept");
        }
    }

    #[test]
    fn trusted_peer_headers_are_extended() {
        let mut h = map(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "example.com"),
            ("forwarded", "for=203.0.113.9;proto=https"),
        ]);
        set_forwarding(&mut h, &client("[::1]:5000", true), true, None);
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 10.0.0.1, ::1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "example.com");
        assert_eq!(
            h["forwarded"],
            "for=203.0.113.9;proto=https, for=\"[::1]\";proto=https"
        );
    }

    #[test]
    fn underscore_spellings_of_forwarding_headers_go() {
        let mut h = map(&[
            ("x_forwarded_for", "6.6.6.6"),
            ("x-forwarded_proto", "https"),
            ("x_forwarded-host", "evil"),
            ("x_forwarded_port", "443"),
            ("x_forwarded_prefix", "/admin"),
            ("x-forwarded-for", "7.7.7.7"),
            ("x_kept_header", "1"),
            ("x-forwarded-for-not", "1"),
        ]);
        strip_forwarding_lookalikes(&mut h);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["x-forwarded-for", "x-forwarded-for-not", "x_kept_header"]
        );
    }

    #[test]
    fn mapped_ipv4_is_reported_as_ipv4() {
        let ip: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(canonical_ip(ip).to_string(), "192.0.2.7");
    }
}
