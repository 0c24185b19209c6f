//! A trusted peer's hops written in the form it did not send them in (RFC 7239 §7.4). Load
//! balancers send either `X-Forwarded-For/-Proto/-Host` (AWS's, nginx's
//! `$proxy_add_x_forwarded_for`) or `Forwarded` (HAProxy's `option forwarded`), and apps read
//! either (WordPress and Rails the first, Symfony and Laravel either). An app reading the one
//! the peer left out would take the peer for the client, or plain HTTP for HTTPS.
//!
//! The scheme and host go with the peer's own hop, the last of the list: what came before it
//! may be the client's own words, since a balancer that appends to the headers (HAProxy's
//! `option forwarded` does) passes on what the client sent.

use std::borrow::Cow;
use std::net::IpAddr;

use bytes::BytesMut;
use http::HeaderValue;

use super::quoted;
use crate::proxy::headers::is_host;

/// The `Forwarded` elements an `X-Forwarded-For` list stands for: each address as `for=`, an
/// IPv6 one bracketed and quoted, anything else (`unknown`, an address with a port) quoted as
/// it came. The last element, the peer's own hop, also carries the scheme and host the peer
/// was asked for, from its `X-Forwarded-Proto/-Host`; with no list, an element of those
/// alone.
pub(super) fn forwarded_from_x_forwarded(
    xff: &[u8],
    proto: Option<&HeaderValue>,
    host: Option<&HeaderValue>,
) -> Vec<u8> {
    let mut out = BytesMut::new();
    let items: Vec<&[u8]> = xff
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|item| !item.is_empty())
        .collect();
    let mut params = Vec::with_capacity(2);
    if let Some(host) = host.map(last_item).filter(|h| is_host(h)) {
        params.push(("host", host));
    }
    if let Some(proto) = proto.map(last_item).filter(|p| is_scheme(p)) {
        params.push(("proto", proto));
    }
    for (i, &item) in items.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(b"for=");
        match parse_ip(item) {
            Some(IpAddr::V4(_)) => out.extend_from_slice(item),
            Some(IpAddr::V6(_)) => {
                out.extend_from_slice(b"\"[");
                out.extend_from_slice(item);
                out.extend_from_slice(b"]\"");
            }
            None => quoted(&mut out, item),
        }
        if i + 1 == items.len() {
            write_params(&mut out, &params, true);
        }
    }
    if out.is_empty() {
        write_params(&mut out, &params, false);
    }
    out.to_vec()
}

/// `;host="…";proto=…` after a node (or without the first `;` in an element of their own).
fn write_params(out: &mut BytesMut, params: &[(&str, &[u8])], after_node: bool) {
    for (i, (name, value)) in params.iter().enumerate() {
        if after_node || i > 0 {
            out.extend_from_slice(b";");
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"=");
        if *name == "host" {
            quoted(out, value);
        } else {
            out.extend_from_slice(value);
        }
    }
}

/// What a `Forwarded` list says in `X-Forwarded-*` terms.
#[derive(Debug, Default, PartialEq)]
pub(super) struct XForwarded {
    /// Each element's node as an `X-Forwarded-For` list: an address without brackets or
    /// port, `unknown` or an obfuscated name as it is, `unknown` for an element with none.
    pub for_list: Vec<u8>,
    /// The scheme (lowercased) and host the peer was asked for: the last element's that
    /// has one.
    pub proto: Option<HeaderValue>,
    pub host: Option<HeaderValue>,
}

pub(super) fn x_forwarded_from_forwarded(forwarded: &[u8]) -> XForwarded {
    let mut x = XForwarded::default();
    for (i, element) in split_unquoted(forwarded, b',').enumerate() {
        let mut node = None;
        for (name, value) in params(element) {
            let Some(value) = unquoted(value) else {
                continue;
            };
            if name.eq_ignore_ascii_case(b"for") {
                node = Some(value);
            } else if name.eq_ignore_ascii_case(b"proto") && is_scheme(&value) {
                let scheme = value.to_ascii_lowercase();
                x.proto = HeaderValue::from_bytes(&scheme).ok().or(x.proto);
            } else if name.eq_ignore_ascii_case(b"host") && is_host(&value) {
                x.host = HeaderValue::from_bytes(&value).ok().or(x.host);
            }
        }
        if i > 0 {
            x.for_list.extend_from_slice(b", ");
        }
        x.for_list.extend_from_slice(&xff_node(node.as_deref()));
    }
    x
}

/// A `for=` node as `X-Forwarded-For` writes one: apps and nginx's realip module read its
/// items as bare addresses, so a port (a number, or obfuscated: `:_p1`) and an IPv6
/// address's brackets go.
fn xff_node(node: Option<&[u8]>) -> Cow<'static, [u8]> {
    let Some(node) = node else {
        return Cow::Borrowed(b"unknown");
    };
    let name = node_name(node);
    let ip = std::str::from_utf8(name)
        .ok()
        .and_then(|text| text.parse::<IpAddr>().ok());
    match ip {
        Some(ip) => Cow::Owned(ip.to_string().into_bytes()),
        None if is_obfuscated_or_unknown(name) => Cow::Owned(name.to_vec()),
        None => Cow::Borrowed(b"unknown"),
    }
}

/// A node without its port: `[2001:db8::1]:80` → `2001:db8::1`, `192.0.2.1:_p` →
/// `192.0.2.1`. An IPv6 address is bracketed whenever a port follows (RFC 7239 §6), so a
/// bare one (more than one `:`) has none.
fn node_name(node: &[u8]) -> &[u8] {
    if let Some(bracketed) = node.strip_prefix(b"[") {
        let end = bracketed.iter().position(|&b| b == b']');
        return end.map_or(node, |end| &bracketed[..end]);
    }
    match node.iter().filter(|&&b| b == b':').count() {
        1 => node.split(|&b| b == b':').next().unwrap_or(node),
        _ => node,
    }
}

/// `unknown`, or an obfuscated identifier: `_` then letters, digits, `.`, `_` or `-`
/// (RFC 7239 §6.3). Anything else (a comma from inside a quoted node) would break the list.
fn is_obfuscated_or_unknown(node: &[u8]) -> bool {
    node.eq_ignore_ascii_case(b"unknown")
        || node.strip_prefix(b"_").is_some_and(|rest| {
            !rest.is_empty()
                && rest
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        })
}

/// A URI scheme (RFC 3986 §3.1), which RFC 7239's `proto` is.
fn is_scheme(value: &[u8]) -> bool {
    value.first().is_some_and(u8::is_ascii_alphabetic)
        && value
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// An address written as `X-Forwarded-For` writes one.
fn parse_ip(item: &[u8]) -> Option<IpAddr> {
    std::str::from_utf8(item).ok()?.parse().ok()
}

/// The last item of a list header's value: where proxies append, the peer's own.
fn last_item(value: &HeaderValue) -> &[u8] {
    let bytes = value.as_bytes();
    bytes
        .rsplit(|&b| b == b',')
        .next()
        .unwrap_or(bytes)
        .trim_ascii()
}

/// The `name=value` pairs of one element, names and values trimmed.
fn params(element: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    split_unquoted(element, b';').filter_map(|pair| {
        let eq = pair.iter().position(|&b| b == b'=')?;
        Some((pair[..eq].trim_ascii(), pair[eq + 1..].trim_ascii()))
    })
}

/// `list` split at each `separator` outside a quoted string (a quoted node or host may hold
/// a `,` or a `;`).
fn split_unquoted(list: &[u8], separator: u8) -> impl Iterator<Item = &[u8]> {
    let mut in_quotes = false;
    let mut escaped = false;
    list.split(move |&b| {
        if escaped {
            escaped = false;
            return false;
        }
        match b {
            b'\\' if in_quotes => escaped = true,
            b'"' => in_quotes = !in_quotes,
            _ => return b == separator && !in_quotes,
        }
        false
    })
    .map(<[u8]>::trim_ascii)
    .filter(|piece| !piece.is_empty())
}

/// A parameter's value: a token as it is, a quoted string without its quotes and escapes;
/// `None` for a quoted string that does not end.
fn unquoted(value: &[u8]) -> Option<Cow<'_, [u8]>> {
    let Some(inner) = value.strip_prefix(b"\"") else {
        return Some(Cow::Borrowed(value));
    };
    let inner = inner.strip_suffix(b"\"")?;
    if !inner.contains(&b'\\') {
        return Some(Cow::Borrowed(inner));
    }
    let mut out = Vec::with_capacity(inner.len());
    let mut bytes = inner.iter();
    while let Some(&b) = bytes.next() {
        out.push(if b == b'\\' { *bytes.next()? } else { b });
    }
    Some(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    fn text(bytes: &[u8]) -> &str {
        std::str::from_utf8(bytes).unwrap()
    }

    #[test]
    fn x_forwarded_for_becomes_for_nodes() {
        let seeded = forwarded_from_x_forwarded(
            b"203.0.113.9, 2001:db8::7, unknown, 198.51.100.2:4711",
            None,
            None,
        );
        assert_eq!(
            text(&seeded),
            "for=203.0.113.9, for=\"[2001:db8::7]\", for=\"unknown\", for=\"198.51.100.2:4711\""
        );
        assert_eq!(text(&forwarded_from_x_forwarded(b"", None, None)), "");
    }

    #[test]
    fn the_peers_scheme_and_host_go_on_its_own_node() {
        let proto = value("http, https");
        let host = value("www.example.com");
        let seeded =
            forwarded_from_x_forwarded(b"203.0.113.9, 10.0.0.1", Some(&proto), Some(&host));
        assert_eq!(
            text(&seeded),
            "for=203.0.113.9, for=10.0.0.1;host=\"www.example.com\";proto=https"
        );
        // With no X-Forwarded-For, an element of its own.
        let seeded = forwarded_from_x_forwarded(b"", Some(&proto), None);
        assert_eq!(text(&seeded), "proto=https");
        // Values that are not a scheme or a host stay out.
        let seeded =
            forwarded_from_x_forwarded(b"192.0.2.1", Some(&value("ht tp")), Some(&value("a/b")));
        assert_eq!(text(&seeded), "for=192.0.2.1");
    }

    #[test]
    fn for_nodes_become_x_forwarded_for() {
        let x = x_forwarded_from_forwarded(
            b"for=192.0.2.60;proto=https;by=203.0.113.43, For=\"[2001:db8:cafe::17]:4711\", \
              for=\"198.51.100.17:80\", for=unknown, for=_hidden-1, by=10.0.0.1, for=\"_a,b\", \
              for=\"[::ffff:10.0.0.1]\", for=\"192.0.2.43:_abc\", for=\"[2001:db8::1]:_p\", \
              for=\"_hidden:4711\", for=\"2001:db8::2\"",
        );
        assert_eq!(
            text(&x.for_list),
            "192.0.2.60, 2001:db8:cafe::17, 198.51.100.17, unknown, _hidden-1, unknown, unknown, \
             ::ffff:10.0.0.1, 192.0.2.43, 2001:db8::1, _hidden, 2001:db8::2"
        );
        assert_eq!(x.proto, Some(value("https")));
        assert_eq!(x.host, None);
    }

    #[test]
    fn the_peers_scheme_and_host_are_the_last_given() {
        let x = x_forwarded_from_forwarded(
            b"for=192.0.2.60;host=\"evil.example\";proto=https, \
              for=10.0.0.1;host=\"b.example\";proto=HTTPS, for=10.0.0.2;host=\"a/b\"",
        );
        // A host that is not one is passed over; a scheme is lowercased.
        assert_eq!(x.host, Some(value("b.example")));
        assert_eq!(x.proto, Some(value("https")));
        assert_eq!(text(&x.for_list), "192.0.2.60, 10.0.0.1, 10.0.0.2");
        let x = x_forwarded_from_forwarded(b"for=\"192.0.2.1;proto=https");
        assert_eq!(text(&x.for_list), "unknown");
        assert_eq!(x.proto, None);
    }

    #[test]
    fn quoted_strings_are_read_whole() {
        assert_eq!(
            split_unquoted(b"a=\"x,y\";b=1, c=\"\\\"q\\\\\", d", b',').collect::<Vec<_>>(),
            [&b"a=\"x,y\";b=1"[..], b"c=\"\\\"q\\\\\"", b"d"]
        );
        assert_eq!(unquoted(b"\"\\\"q\\\\\"").unwrap().as_ref(), b"\"q\\");
        assert_eq!(unquoted(b"token").unwrap().as_ref(), b"token");
        assert_eq!(unquoted(b"\"open"), None);
        assert_eq!(unquoted(b"\"ends in escape\\\""), None);
    }
}
