//! Query strings as the access log writes them with `log.query` on: the values of the
//! parameters that carry credentials masked, so that turning queries on for debugging does
//! not put reset keys, tokens and signatures into every log store the lines reach.

use std::borrow::Cow;

use http::uri::PathAndQuery;

/// Parameter names (compared without case) whose values are credentials: passwords,
/// tokens and API keys, OAuth's codes, S3's presigned signatures, WordPress's password-reset
/// `key` and nonces.
const SECRET_NAMES: &[&str] = &[
    "password",
    "passwd",
    "pass",
    "pwd",
    "secret",
    "client_secret",
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "auth",
    "authorization",
    "api_key",
    "apikey",
    "key",
    "code",
    "signature",
    "sig",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "_wpnonce",
    "session",
    "sessionid",
];

/// The path and query, each credential's value written as `***`.
pub(crate) fn masked(target: &PathAndQuery) -> Cow<'_, str> {
    let Some(query) = target.query() else {
        return Cow::Borrowed(target.as_str());
    };
    let has_secret = query.split('&').any(|pair| is_secret(name_of(pair)));
    if !has_secret {
        return Cow::Borrowed(target.as_str());
    }
    let mut out = String::with_capacity(target.as_str().len());
    out.push_str(target.path());
    out.push('?');
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        let name = name_of(pair);
        match is_secret(name) {
            true => {
                out.push_str(name);
                out.push_str("=***");
            }
            false => out.push_str(pair),
        }
    }
    Cow::Owned(out)
}

fn name_of(pair: &str) -> &str {
    pair.split_once('=').map_or(pair, |(name, _)| name)
}

fn is_secret(name: &str) -> bool {
    let decoded = percent_encoding::percent_decode_str(name).decode_utf8_lossy();
    SECRET_NAMES
        .iter()
        .any(|s| s.eq_ignore_ascii_case(&decoded))
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
        for kept in ["/a?q=1&page=2", "/a", "/a?", "/a?keys=1&tokens=2"] {
            assert_eq!(mask(kept), kept);
        }
    }
}
