//! The forwarding headers: `X-Forwarded-For/-Proto/-Host` and RFC 7239 `Forwarded`, set for
//! every request offload forwards, kept and extended only from a trusted peer.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::net::IpAddr;

use bytes::{BufMut, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::ClientInfo;

mod seed;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The headers [`set_forwarding`] sets (it drops [`UNSET_CLAIMS`] besides).
const FORWARDING: [&str; 4] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
];

/// Whether `name` (lower case) is a forwarding header offload sets, or a claim it drops
/// from an untrusted peer.
pub(super) fn is_forwarding_header(name: &str) -> bool {
    FORWARDING.contains(&name) || UNSET_CLAIMS.iter().any(|claim| claim.as_str() == name)
}

/// Removes every underscore spelling of a forwarding header or claim (`X_Forwarded_For`,
/// `X-Forwarded_Proto`, `X_Forwarded_Ssl`…), from any peer: no proxy sends them, and an app
/// behind a CGI-style gateway would read them as the real ones: PHP (and every CGI or WSGI
/// gateway) turns `X_Forwarded_For` and `X-Forwarded-For` into the same
/// `HTTP_X_FORWARDED_FOR`, so an underscore spelling would slip a forged value past us.
pub(super) fn strip_forwarding_lookalikes(headers: &mut HeaderMap) {
    let lookalikes: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let name = name.as_str();
            name.contains('_') && is_forwarding_header(&name.replace('_', "-"))
        })
        .cloned()
        .collect();
    for name in lookalikes {
        headers.remove(&name);
    }
}

/// Claims about the client that only a proxy may make and that offload does not set itself,
/// which apps behind trusted proxies read: Symfony and Laravel take the port and prefix,
/// many apps the real IP (`X-Real-IP`, Akamai's `True-Client-IP`, `X-Client-IP`, and
/// `Client-IP`, `X-Cluster-Client-IP`, Cloudflare's and Fastly's, which Rails and WordPress
/// security plugins read before `X-Forwarded-For`); Rack
/// takes the scheme from `X-Forwarded-Ssl: on` and `X-Forwarded-Scheme` before
/// `X-Forwarded-Proto`, others from `Front-End-Https` and `X-Url-Scheme`; IIS rewrites and
/// older Symfony and Zend take the path from `X-Original-URL` and `X-Rewrite-URL` (an
/// access-control bypass). From an untrusted peer they are dropped.
static UNSET_CLAIMS: [HeaderName; 15] = [
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("true-client-ip"),
    HeaderName::from_static("x-client-ip"),
    HeaderName::from_static("client-ip"),
    HeaderName::from_static("x-cluster-client-ip"),
    HeaderName::from_static("cf-connecting-ip"),
    HeaderName::from_static("fastly-client-ip"),
    HeaderName::from_static("x-forwarded-ssl"),
    HeaderName::from_static("x-forwarded-scheme"),
    HeaderName::from_static("front-end-https"),
    HeaderName::from_static("x-url-scheme"),
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
];

/// Sets `X-Forwarded-For/-Proto/-Host` and `Forwarded` for a request from `client` whose
/// original host (Host header or URI authority) was `host`. From a trusted peer the
/// headers it sent are kept and extended ([`extend_trusted`]); from anyone else they are
/// replaced, and the claims offload does not make ([`UNSET_CLAIMS`]: `X-Real-IP`,
/// `X-Forwarded-Ssl` and the like) removed, so a client cannot forge its address, scheme
/// or path.
///
/// Runs for every forwarded request, so it allocates little: the claims are looked up only
/// when a pass over the names finds one, both built values share one buffer, and a worker
/// reuses the values it built last for an untrusted peer ([`LastBuilt`]).
pub(super) fn set_forwarding(
    headers: &mut HeaderMap,
    client: &ClientInfo,
    trusted: bool,
    host: Option<&HeaderValue>,
) {
    let ip = canonical_ip(client.peer.ip());
    let proto = if client.tls { "https" } else { "http" };
    if trusted {
        extend_trusted(headers, ip, proto, host);
        return;
    }
    remove_present(headers, UNSET_CLAIMS.each_ref());
    let (xff, forwarded) = LAST_BUILT.with_borrow_mut(|last| last.values(ip, proto, host));
    // Up to four new names: one growth of the map at most.
    headers.reserve(4);
    insert_or_remove(headers, &X_FORWARDED_FOR, xff);
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    insert_or_remove(headers, &X_FORWARDED_HOST, host.cloned());
    insert_or_remove(headers, &header::FORWARDED, forwarded);
}

/// A trusted peer's forwarding headers extended with this hop. What it sent in one form
/// alone is written in the other too ([`seed`]), so that an app reading either sees the
/// same client, scheme and host: the addresses of a list it left out, and the
/// `X-Forwarded-Proto/-Host` it did not send from its `Forwarded`. Those it sent are kept as
/// they came; where it named neither, this hop's are set.
fn extend_trusted(
    headers: &mut HeaderMap,
    ip: IpAddr,
    proto: &'static str,
    host: Option<&HeaderValue>,
) {
    let mut old_xff = joined(headers, &X_FORWARDED_FOR);
    let mut old_forwarded = joined(headers, &header::FORWARDED);
    let mut original_proto = headers.get(&X_FORWARDED_PROTO).cloned();
    let mut original_host = headers.get(&X_FORWARDED_HOST).cloned();
    if old_forwarded.is_empty() {
        old_forwarded = seed::forwarded_from_x_forwarded(
            &old_xff,
            original_proto.as_ref(),
            original_host.as_ref(),
        );
    } else if old_xff.is_empty() || original_proto.is_none() || original_host.is_none() {
        let x = seed::x_forwarded_from_forwarded(&old_forwarded);
        if old_xff.is_empty() {
            old_xff = x.for_list;
        }
        original_proto = original_proto.or(x.proto);
        original_host = original_host.or(x.host);
    }
    let (xff, forwarded) = forwarding_values(&old_xff, &old_forwarded, ip, host, proto);
    headers.reserve(4);
    insert_or_remove(headers, &X_FORWARDED_FOR, xff);
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        let proto = original_proto.unwrap_or(HeaderValue::from_static(proto));
        headers.insert(X_FORWARDED_PROTO.clone(), proto);
    }
    if !headers.contains_key(&X_FORWARDED_HOST) {
        insert_or_remove(headers, &X_FORWARDED_HOST, original_host.or(host.cloned()));
    }
    insert_or_remove(headers, &header::FORWARDED, forwarded);
}

/// `X-Forwarded-For` and `Forwarded` for a request from `ip` to `host` over `proto`,
/// appended to the lists a trusted peer sent (empty otherwise). `None` for a value that
/// would not be a valid header value (never, as long as the lists came from valid values).
fn forwarding_values(
    old_xff: &[u8],
    old_forwarded: &[u8],
    ip: IpAddr,
    host: Option<&HeaderValue>,
    proto: &str,
) -> (Option<HeaderValue>, Option<HeaderValue>) {
    let mut ip_text = IpText::new();
    ip_text.write(ip);
    let host_len = host.map_or(0, |h| h.len());
    let mut buf = BytesMut::with_capacity(
        old_xff.len() + old_forwarded.len() + 2 * ip_text.len + host_len + 64,
    );
    list_item(&mut buf, old_xff);
    buf.extend_from_slice(ip_text.as_bytes());
    let xff = buf.split().freeze();
    list_item(&mut buf, old_forwarded);
    forwarded_element(&mut buf, ip.is_ipv6(), ip_text.as_bytes(), host, proto);
    let forwarded = buf.split().freeze();
    (
        HeaderValue::from_maybe_shared(xff).ok(),
        HeaderValue::from_maybe_shared(forwarded).ok(),
    )
}

thread_local! {
    static LAST_BUILT: RefCell<LastBuilt> = const { RefCell::new(LastBuilt(None)) };
}

/// The forwarding values a worker built last for an untrusted peer, and what they were built
/// from. For such a peer they depend on nothing else, and consecutive requests on a worker
/// tend to share all three: the requests of one keep-alive connection, or of a load balancer
/// not listed in `trusted_proxies`. Reusing them saves building, validating and allocating
/// two values (~1,100 instructions of a 1 KiB pass-through request's ~39,000); a request
/// from elsewhere costs a comparison and replaces them.
struct LastBuilt(Option<Built>);

struct Built {
    ip: IpAddr,
    proto: &'static str,
    host: Option<HeaderValue>,
    xff: Option<HeaderValue>,
    forwarded: Option<HeaderValue>,
}

impl LastBuilt {
    /// The values for an untrusted peer at `ip` asking for `host` over `proto`.
    fn values(
        &mut self,
        ip: IpAddr,
        proto: &'static str,
        host: Option<&HeaderValue>,
    ) -> (Option<HeaderValue>, Option<HeaderValue>) {
        if let Some(b) = &self.0
            && b.ip == ip
            && b.proto == proto
            && b.host.as_ref() == host
        {
            return (b.xff.clone(), b.forwarded.clone());
        }
        let (xff, forwarded) = forwarding_values(&[], &[], ip, host, proto);
        self.0 = Some(Built {
            ip,
            proto,
            host: host.cloned(),
            xff: xff.clone(),
            forwarded: forwarded.clone(),
        });
        (xff, forwarded)
    }
}

/// Starts a list value with the elements already there, if any (`a, b` then `, `).
fn list_item(buf: &mut BytesMut, existing: &[u8]) {
    if !existing.is_empty() {
        buf.extend_from_slice(existing);
        buf.extend_from_slice(b", ");
    }
}

/// Which of `names` `headers` has, in one pass over its names (a lookup per name would hash
/// each one, and most messages carry none of them).
fn present<const N: usize>(headers: &HeaderMap, names: [&HeaderName; N]) -> [bool; N] {
    let mut found = [false; N];
    for name in headers.keys() {
        if let Some(i) = names.iter().position(|n| *n == name) {
            found[i] = true;
        }
    }
    found
}

/// Removes those of `names` that `headers` has; only a name found is looked up.
fn remove_present<const N: usize>(headers: &mut HeaderMap, names: [&HeaderName; N]) {
    let found = present(headers, names);
    for (name, _) in names.iter().zip(found).filter(|(_, here)| *here) {
        headers.remove(*name);
    }
}

/// `value` as an RFC 7230 quoted-string: in quotes, with `"` and `\` escaped.
fn quoted(out: &mut BytesMut, value: &[u8]) {
    out.put_u8(b'"');
    for &b in value {
        if b == b'"' || b == b'\\' {
            out.put_u8(b'\\');
        }
        out.put_u8(b);
    }
    out.put_u8(b'"');
}

/// One RFC 7239 element: `for=…;host="…";proto=…`. IPv6 nodes and hosts are quoted (":"
/// and "[" are not token characters).
fn forwarded_element(
    out: &mut BytesMut,
    ipv6: bool,
    ip: &[u8],
    host: Option<&HeaderValue>,
    proto: &str,
) {
    out.extend_from_slice(b"for=");
    if ipv6 {
        out.extend_from_slice(b"\"[");
        out.extend_from_slice(ip);
        out.extend_from_slice(b"]\"");
    } else {
        out.extend_from_slice(ip);
    }
    if let Some(host) = host {
        out.extend_from_slice(b";host=");
        quoted(out, host.as_bytes());
    }
    out.extend_from_slice(b";proto=");
    out.extend_from_slice(proto.as_bytes());
}

/// An IP address as text, written without the formatting machinery for IPv4 (every request
/// writes its client's address twice).
struct IpText {
    buf: [u8; 48],
    len: usize,
}

impl IpText {
    fn new() -> IpText {
        IpText {
            buf: [0; 48],
            len: 0,
        }
    }

    fn write(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        self.push(b'.');
                    }
                    if octet >= 100 {
                        self.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        self.push(b'0' + octet / 10 % 10);
                    }
                    self.push(b'0' + octet % 10);
                }
            }
            IpAddr::V6(v6) => {
                // At most 45 characters ("ffff:…:255.255.255.255"): always fits.
                let _ = write!(self, "{v6}");
            }
        }
    }

    fn push(&mut self, b: u8) {
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = b;
            self.len += 1;
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl std::fmt::Write for IpText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        s.bytes().for_each(|b| self.push(b));
        Ok(())
    }
}

/// Every value of `name`, joined with ", " (how a list header's values combine).
fn joined(headers: &HeaderMap, name: &HeaderName) -> Vec<u8> {
    let mut out = Vec::new();
    for value in headers.get_all(name) {
        let text = value.as_bytes().trim_ascii();
        if text.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(text);
    }
    out
}

/// Replaces every `name` header with `value`, or removes them when there is none.
fn insert_or_remove(headers: &mut HeaderMap, name: &HeaderName, value: Option<HeaderValue>) {
    match value {
        Some(value) => headers.insert(name.clone(), value),
        None => headers.remove(name),
    };
}

/// `::ffff:1.2.3.4` (an IPv4 peer on a dual-stack socket) is reported as `1.2.3.4`.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::header_map as map;

    fn client(peer: &str, tls: bool) -> ClientInfo {
        ClientInfo {
            peer: peer.parse().unwrap(),
            tls,
        }
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
            ("true-client-ip", "6.6.6.6"),
            ("x-client-ip", "6.6.6.6"),
            ("client-ip", "6.6.6.6"),
            ("x-cluster-client-ip", "6.6.6.6"),
            ("cf-connecting-ip", "6.6.6.6"),
            ("fastly-client-ip", "6.6.6.6"),
            ("x-forwarded-ssl", "on"),
            ("x-forwarded-scheme", "https"),
            ("front-end-https", "on"),
            ("x-url-scheme", "https"),
            ("x-original-url", "/wp-admin/"),
            ("x-rewrite-url", "/wp-admin/"),
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
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "forwarded",
                "x-forwarded-for",
                "x-forwarded-host",
                "x-forwarded-proto"
            ]
        );
    }

    /// A worker reuses the values it built last for an untrusted peer: only while the
    /// address, the scheme and the host they were built from are the same.
    #[test]
    fn untrusted_values_follow_address_scheme_and_host() {
        let forwarded = |peer: &str, tls: bool, host: Option<&str>| {
            let host = host.map(HeaderValue::from_str).transpose().unwrap();
            let mut h = map(&[("x-forwarded-for", "6.6.6.6")]);
            set_forwarding(&mut h, &client(peer, tls), false, host.as_ref());
            let value = |name| h.get(name).map(|v| v.to_str().unwrap().to_string());
            (value("x-forwarded-for"), value("forwarded"))
        };
        let owned = |xff: &str, fwd: &str| (Some(xff.to_string()), Some(fwd.to_string()));
        for _ in 0..2 {
            assert_eq!(
                forwarded("192.0.2.1:5000", false, Some("a.example")),
                owned("192.0.2.1", "for=192.0.2.1;host=\"a.example\";proto=http")
            );
        }
        assert_eq!(
            forwarded("192.0.2.1:5001", false, Some("b.example")),
            owned("192.0.2.1", "for=192.0.2.1;host=\"b.example\";proto=http")
        );
        assert_eq!(
            forwarded("192.0.2.9:5001", false, Some("b.example")),
            owned("192.0.2.9", "for=192.0.2.9;host=\"b.example\";proto=http")
        );
        assert_eq!(
            forwarded("192.0.2.9:5001", true, Some("b.example")),
            owned("192.0.2.9", "for=192.0.2.9;host=\"b.example\";proto=https")
        );
        assert_eq!(
            forwarded("192.0.2.9:5001", true, None),
            owned("192.0.2.9", "for=192.0.2.9;proto=https")
        );
        assert_eq!(
            forwarded("[2001:db8::1]:5001", true, None),
            owned("2001:db8::1", "for=\"[2001:db8::1]\";proto=https")
        );
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
    fn a_trusted_peers_x_forwarded_headers_alone_go_into_forwarded_too() {
        let mut h = map(&[
            ("x-forwarded-for", "203.0.113.9, 2001:db8::7"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "www.example.com"),
        ]);
        let host = HeaderValue::from_static("backend.internal");
        set_forwarding(&mut h, &client("10.0.0.2:5000", false), true, Some(&host));
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 2001:db8::7, 10.0.0.2");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "www.example.com");
        assert_eq!(
            h["forwarded"],
            "for=203.0.113.9, for=\"[2001:db8::7]\";host=\"www.example.com\";proto=https, \
             for=10.0.0.2;host=\"backend.internal\";proto=http"
        );
        // A TLS terminator that says only which scheme the client used.
        let mut h = map(&[("x-forwarded-proto", "https")]);
        set_forwarding(&mut h, &client("10.0.0.2:5000", false), true, None);
        assert_eq!(h["x-forwarded-for"], "10.0.0.2");
        assert_eq!(h["forwarded"], "proto=https, for=10.0.0.2;proto=http");
        // A Forwarded it sent is extended as it is.
        let mut h = map(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("forwarded", "for=192.0.2.1"),
        ]);
        set_forwarding(&mut h, &client("10.0.0.2:5000", false), true, None);
        assert_eq!(h["forwarded"], "for=192.0.2.1, for=10.0.0.2;proto=http");
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 10.0.0.2");
    }

    /// HAProxy with both `option forwardfor` and `option forwarded`: the scheme and host
    /// are in Forwarded alone.
    #[test]
    fn a_trusted_peers_forwarded_names_the_scheme_beside_its_x_forwarded_for() {
        let mut h = map(&[
            ("x-forwarded-for", "203.0.113.7"),
            (
                "forwarded",
                "for=203.0.113.7;proto=https;host=www.example.com",
            ),
        ]);
        let host = HeaderValue::from_static("backend.internal");
        set_forwarding(&mut h, &client("10.0.0.2:5000", false), true, Some(&host));
        assert_eq!(h["x-forwarded-for"], "203.0.113.7, 10.0.0.2");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "www.example.com");
    }

    #[test]
    fn a_trusted_peers_forwarded_alone_goes_into_x_forwarded_too() {
        let mut h = map(&[(
            "forwarded",
            "for=203.0.113.9;host=www.example.com;proto=https, for=\"[2001:db8::7]:4711\"",
        )]);
        let host = HeaderValue::from_static("backend.internal");
        set_forwarding(&mut h, &client("10.0.0.2:5000", false), true, Some(&host));
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 2001:db8::7, 10.0.0.2");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "www.example.com");
        assert_eq!(
            h["forwarded"],
            "for=203.0.113.9;host=www.example.com;proto=https, for=\"[2001:db8::7]:4711\", \
             for=10.0.0.2;host=\"backend.internal\";proto=http"
        );
        // What it sent as X-Forwarded-Proto/-Host stands; what it did not name is this hop's.
        let mut h = map(&[
            ("forwarded", "for=203.0.113.9;proto=https"),
            ("x-forwarded-proto", "http"),
        ]);
        set_forwarding(&mut h, &client("10.0.0.2:5000", false), true, Some(&host));
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "backend.internal");
    }

    #[test]
    fn underscore_spellings_of_forwarding_headers_go() {
        let mut h = map(&[
            ("x_forwarded_for", "6.6.6.6"),
            ("x-forwarded_proto", "https"),
            ("x_forwarded-host", "evil"),
            ("x_forwarded_port", "443"),
            ("x_forwarded_prefix", "/admin"),
            ("x_forwarded_ssl", "on"),
            ("x_original_url", "/wp-admin/"),
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
    fn addresses_are_written_as_std_writes_them() {
        for text in [
            "0.0.0.0",
            "9.10.99.100",
            "255.255.255.255",
            "192.0.2.1",
            "::1",
            "2001:db8::8a2e:370:7334",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:10.0.0.1",
        ] {
            let ip: IpAddr = text.parse().unwrap();
            let mut written = IpText::new();
            written.write(ip);
            assert_eq!(written.as_bytes(), ip.to_string().as_bytes());
        }
    }

    #[test]
    fn mapped_ipv4_is_reported_as_ipv4() {
        let ip: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(canonical_ip(ip).to_string(), "192.0.2.7");
    }
}
