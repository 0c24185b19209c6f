//! TEMPORARY stub of the proxy branch's interface so the upload module compiles before the
//! merge; the `proxy` branch replaces this file wholesale.

use http::{Request, Response};

use crate::body::{self, Body};

/// The app behind the proxy.
pub struct Upstream;

/// Who the client is (address, scheme), for `X-Forwarded-*`.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo;

/// Why forwarding failed.
#[derive(Debug, thiserror::Error)]
#[error("upstream unavailable")]
pub struct ProxyError;

impl Upstream {
    pub async fn forward(
        &self,
        _req: Request<Body>,
        _client: &ClientInfo,
    ) -> Result<Response<Body>, ProxyError> {
        Err(ProxyError)
    }
}

impl ProxyError {
    pub fn into_response(self) -> Response<Body> {
        let mut resp = Response::new(body::full("upstream unavailable"));
        *resp.status_mut() = http::StatusCode::BAD_GATEWAY;
        resp
    }
}
