//! Query strings as the access log writes them with `log.query` on: the values of the
//! parameters that carry credentials masked, so that turning queries on for debugging does
//! not put reset keys, tokens and signatures into every log store the lines reach.

use std::borrow::Cow;

use http::uri::PathAndQuery;

/// Words that make a parameter's value a credential wherever they appear in its name
/// (compared without case): `new_password`, `accessToken`, `oauth_signature`,
/// `X-Goog-Signature`, `user[password]`.
const SECRET_WORDS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "signature",
    "credential",
    "apikey",
    "api_key",
    "api-key",
    "jwt",
    "nonce",
    "sessionid",
    "session_id",
    "sessid",
    "passphrase",
    "hmac",
    "samlresponse",
    "privatekey",
    "private_key",
    "accesskey",
    "access_key",
    "authkey",
    "auth_key",
    "bearer",
];

/// Words that make it one as a whole part of its name (parts split at `_`, `-`, `.` and
/// PHP's brackets): WordPress's password-reset `key`, OAuth's `code`, S3's `X-Amz-Credential`
/// and `sig`, `otp`, CAS's `ticket`, a session's `sid` (phpBB); `monkey`, `keys` and `side`
/// are no credentials.
const SECRET_PARTS: &[&str] = &[
    "pass",
    "pwd",
    "auth",
    "authorization",
    "key",
    "code",
    "sig",
    "otp",
    "session",
    "pw",
    "ticket",
    "sid",
];

/// The path and query, each credential's value written as `***` (see [`masked_path`] for
/// the path's own parameters). Parameters are split at `&` and at `;` (the older separator
/// some apps still write); a value holding a URL with a password in it is a credential too.
pub(crate) fn masked(target: &PathAndQuery) -> Cow<'_, str> {
    let path = masked_path(target.path());
    let Some(query) = target.query() else {
        return path;
    };
    let has_secret = params(query).any(|(name, value)| is_secret(name, value));
    if !has_secret && matches!(path, Cow::Borrowed(_)) {
        return Cow::Borrowed(target.as_str());
    }
    let mut out = String::with_capacity(target.as_str().len());
    out.push_str(&path);
    out.push('?');
    push_masked_params(&mut out, query);
    Cow::Owned(out)
}

/// The path, with the values of its credential parameters (`;jsessionid=…`, Java servlet
/// containers' session in the URL) written as `***`. Logged even with `log.query` off.
pub(crate) fn masked_path(path: &str) -> Cow<'_, str> {
    if !path.contains(';') {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        match segment.split_once(';') {
            Some((name, parameters)) => {
                out.push_str(name);
                out.push(';');
                push_masked_params(&mut out, parameters);
            }
            None => out.push_str(segment),
        }
    }
    match out == path {
        true => Cow::Borrowed(path),
        false => Cow::Owned(out),
    }
}

/// `text`'s parameters (`name=value`, split at `&` and `;`), each credential's value
/// written as `***`, the separators kept.
fn push_masked_params(out: &mut String, text: &str) {
    let mut rest = text;
    loop {
        let end = rest.find(['&', ';']).unwrap_or(rest.len());
        let pair = &rest[..end];
        let (name, value) = split_pair(pair);
        match is_secret(name, value) {
            true => {
                out.push_str(name);
                out.push_str("=***");
            }
            false => out.push_str(pair),
        }
        let Some(separator) = rest[end..].chars().next() else {
            return;
        };
        out.push(separator);
        rest = &rest[end + 1..];
    }
}

fn params(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.split(['&', ';']).map(split_pair)
}

fn split_pair(pair: &str) -> (&str, &str) {
    pair.split_once('=').unwrap_or((pair, ""))
}

fn is_secret(name: &str, value: &str) -> bool {
    secret_name(name) || holds_url_password(value)
}

fn secret_name(name: &str) -> bool {
    let name = percent_encoding::percent_decode_str(name)
        .decode_utf8_lossy()
        .to_ascii_lowercase();
    SECRET_WORDS.iter().any(|word| name.contains(word))
        || name
            .split(['_', '-', '.', '[', ']'])
            .any(|part| SECRET_PARTS.contains(&part))
}

/// A URL with a user and password in it (`https://user:pw@host/`), percent-encoded or not:
/// a redirect target or callback carrying credentials.
fn holds_url_password(value: &str) -> bool {
    if !value.contains("//") && !value.contains("%2F") && !value.contains("%2f") {
        return false;
    }
    let value = percent_encoding::percent_decode_str(value).decode_utf8_lossy();
    let Some((_, after)) = value.split_once("://") else {
        return false;
    };
    let authority = after.split(['/', '?', '#']).next().unwrap_or_default();
    authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(target: &str) -> String {
        masked(&PathAndQuery::try_from(target).unwrap()).into_owned()
    }

    #[test]
    fn credentials_are_masked_and_the_rest_kept() {
        assert_eq!(
            mask("/wp-login.php?action=rp&key=Xy12&login=admin"),
            "/wp-login.php?action=rp&key=***&login=admin"
        );
        assert_eq!(
            mask("/o.jpg?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=ab12&x-id=GetObject"),
            "/o.jpg?X-Amz-Credential=***&X-Amz-Signature=***&x-id=GetObject"
        );
        assert_eq!(
            mask("/a?PASSWORD=p&q=1&pass"),
            "/a?PASSWORD=***&q=1&pass=***"
        );
        assert_eq!(mask("/a?%6Bey=1"), "/a?%6Bey=***");
        // Names that carry a credential word, in the spellings apps use.
        for name in [
            "password[]",
            "user[password]",
            "new_password",
            "newPassword",
            "auth_token",
            "private_token",
            "oauth_token",
            "accessToken",
            "oauth_signature",
            "X-Goog-Signature",
            "X-Goog-Credential",
            "X-API-Key",
            "secret_key",
            "clientSecret",
            "jwt",
            "otp",
            "wp_nonce",
            "PHPSESSID",
            "session_id",
            "passphrase",
            "pw",
            "ticket",
            "SAMLResponse",
            "hmac",
        ] {
            assert_eq!(
                mask(&format!("/a?q=1&{name}=v")),
                format!("/a?q=1&{name}=***"),
                "{name}"
            );
        }
        for kept in [
            "/a?q=1&page=2",
            "/a",
            "/a?",
            "/a?keys=1&monkey=2&sort_by=date&pwa=1&tickets=3&side=left",
            "/a?next=https://example.com/x&u=http%3A%2F%2Fhost%2Fa%40b",
            "/a;v=1/b?q=1",
        ] {
            assert_eq!(mask(kept), kept);
        }
    }

    #[test]
    fn more_carriers_of_credentials_are_masked() {
        for (target, expected) in [
            // phpBB's session in the URL; keys by their other names.
            ("/viewtopic.php?f=2&sid=ab12", "/viewtopic.php?f=2&sid=***"),
            (
                "/a?privateKey=k&accesskey=a&authKey=b&bearer=c",
                "/a?privateKey=***&accesskey=***&authKey=***&bearer=***",
            ),
            // `;` between parameters, kept as it was.
            ("/a?p=1;token=SEMI&q=2", "/a?p=1;token=***&q=2"),
            // A URL with a password inside a value, plain or percent-encoded.
            ("/a?u=http://user:PW@host/x&q=1", "/a?u=***&q=1"),
            ("/a?next=https%3A%2F%2Fuser%3APW%40host%2F", "/a?next=***"),
            // Path parameters (a servlet container's session).
            (
                "/shop;jsessionid=0A1B/cart?q=1",
                "/shop;jsessionid=***/cart?q=1",
            ),
        ] {
            assert_eq!(mask(target), expected, "{target}");
        }
        assert_eq!(
            masked_path("/shop;jsessionid=0A1B;v=2/cart"),
            "/shop;jsessionid=***;v=2/cart"
        );
        assert!(matches!(masked_path("/a;v=1"), Cow::Borrowed(_)));
    }
}
