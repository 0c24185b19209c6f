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
];

/// Words that make it one as a whole part of its name (parts split at `_`, `-`, `.` and
/// PHP's brackets): WordPress's password-reset `key`, OAuth's `code`, S3's `X-Amz-Credential`
/// and `sig`, `otp`, CAS's `ticket`; `monkey` and `keys` are no credentials.
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
    let name = percent_encoding::percent_decode_str(name)
        .decode_utf8_lossy()
        .to_ascii_lowercase();
    SECRET_WORDS.iter().any(|word| name.contains(word))
        || name
            .split(['_', '-', '.', '[', ']'])
            .any(|part| SECRET_PARTS.contains(&part))
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
            "/a?keys=1&monkey=2&sort_by=date&pwa=1&tickets=3",
        ] {
            assert_eq!(mask(kept), kept);
        }
    }
}
