//! `server.request_id_header`: every request carries an ID, in that header, to the app and
//! back to the client, and in its access log line, so that one request can be followed
//! through the load balancer, offload and the app's own logs (as nginx's `$request_id`
//! with `proxy_set_header X-Request-ID $request_id`).
//!
//! An ID a trusted proxy (`server.trusted_proxies`: the balancer) already set is kept, when
//! it is a short printable token; anything else gets a new one: 32 hex digits of a random
//! UUID, as nginx's.

use anyhow::Context;
use http::header::{CONNECTION, HeaderName, HeaderValue};
use http::{HeaderMap, Request};

use crate::config::ServerConfig;

/// The longest ID taken from a trusted proxy.
const MAX_KEPT_ID: usize = 200;

pub(super) struct RequestIds {
    header: HeaderName,
}

impl RequestIds {
    /// `None` when `server.request_id_header` is not set.
    pub(super) fn new(cfg: &ServerConfig) -> anyhow::Result<Option<RequestIds>> {
        let Some(name) = &cfg.request_id_header else {
            return Ok(None);
        };
        let header = HeaderName::try_from(name.as_str())
            .with_context(|| format!("server.request_id_header: {name:?} is no header name"))?;
        Ok(Some(RequestIds { header }))
    }

    pub(super) fn header(&self) -> &HeaderName {
        &self.header
    }

    /// `req`'s ID, set on it: the one it came with when usable and from a `trusted` peer
    /// (`Upstream::is_trusted`), else a new one (replacing any other).
    pub(super) fn assign<B>(&self, req: &mut Request<B>, trusted: bool) -> HeaderValue {
        let kept = req
            .headers()
            .get(&self.header)
            .filter(|id| trusted && usable(id))
            .cloned();
        let id = kept.unwrap_or_else(new_id);
        unlist_from_connection(req.headers_mut(), &self.header);
        req.headers_mut().insert(self.header.clone(), id.clone());
        id
    }
}

/// Takes `name` out of `Connection`: a client naming the ID's header there would have it
/// removed as hop-by-hop before the app saw it (nginx sets its `$request_id` header
/// whatever `Connection` says). Rare: most requests' `Connection` says `keep-alive` at most.
fn unlist_from_connection(headers: &mut HeaderMap, name: &HeaderName) {
    let named = |option: &&[u8]| option.eq_ignore_ascii_case(name.as_str().as_bytes());
    let options = || {
        headers
            .get_all(CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|option| !option.is_empty())
    };
    if !options().any(|option| named(&option)) {
        return;
    }
    let kept: Vec<&[u8]> = options().filter(|option| !named(option)).collect();
    let value = match kept.is_empty() {
        true => None,
        false => HeaderValue::from_bytes(&kept.join(&b", "[..])).ok(),
    };
    headers.remove(CONNECTION);
    if let Some(value) = value {
        headers.insert(CONNECTION, value);
    }
}

/// A token a log line can carry as it is: printable ASCII without spaces, not too long.
fn usable(id: &HeaderValue) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty() && bytes.len() <= MAX_KEPT_ID && bytes.iter().all(|b| b.is_ascii_graphic())
}

fn new_id() -> HeaderValue {
    let mut text = [0u8; uuid::fmt::Simple::LENGTH];
    let text = uuid::Uuid::new_v4().simple().encode_lower(&mut text);
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> RequestIds {
        let cfg = ServerConfig {
            request_id_header: Some("X-Request-ID".into()),
            ..ServerConfig::default()
        };
        RequestIds::new(&cfg).unwrap().unwrap()
    }

    fn request_with(id: Option<&str>) -> Request<()> {
        let mut builder = Request::get("/");
        if let Some(id) = id {
            builder = builder.header("x-request-id", id);
        }
        builder.body(()).unwrap()
    }

    fn is_fresh(id: &HeaderValue) -> bool {
        id.len() == 32 && id.as_bytes().iter().all(|b| b.is_ascii_hexdigit())
    }

    #[test]
    fn a_trusted_proxys_id_is_kept_and_anyone_elses_replaced() {
        let ids = ids();
        let mut req = request_with(Some("lb-7f3a"));
        assert_eq!(ids.assign(&mut req, true), "lb-7f3a");
        assert_eq!(req.headers()["x-request-id"], "lb-7f3a");
        let mut req = request_with(Some("lb-7f3a"));
        let id = ids.assign(&mut req, false);
        assert!(is_fresh(&id), "{id:?}");
        assert_eq!(
            req.headers()["x-request-id"],
            id,
            "replaced on the request too"
        );
    }

    #[test]
    fn unusable_ids_are_replaced_and_new_ones_differ() {
        let ids = ids();
        let long = "a".repeat(MAX_KEPT_ID + 1);
        for bad in ["", "with space", long.as_str()] {
            let id = ids.assign(&mut request_with(Some(bad)), true);
            assert!(is_fresh(&id), "{bad:?} → {id:?}");
        }
        let first = ids.assign(&mut request_with(None), true);
        let second = ids.assign(&mut request_with(None), true);
        assert!(is_fresh(&first) && is_fresh(&second));
        assert_ne!(first, second);
    }

    #[test]
    fn no_header_no_ids_and_a_bad_name_is_refused() {
        assert!(RequestIds::new(&ServerConfig::default()).unwrap().is_none());
        let cfg = ServerConfig {
            request_id_header: Some("bad name".into()),
            ..ServerConfig::default()
        };
        let err = RequestIds::new(&cfg).err().expect("refused");
        assert!(
            format!("{err:#}").contains("server.request_id_header"),
            "{err:#}"
        );
    }
}
