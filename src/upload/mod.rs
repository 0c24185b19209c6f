//! Upload interception: requests on configured upload routes whose files go to the store.
//!
//! A route (path exact or glob, methods, required query parameters) picks one of three modes:
//! - **mirror** (default): the app gets the body byte for byte while file parts are teed into
//!   the store; the app's answer is released only once every put completed;
//! - **replace**: files go to the store and the app gets text fields describing them;
//! - **respond**: offload answers `201` with JSON describing the stored files.
//!
//! Multipart bodies are parsed as streams (multer behind a gate that bounds its read-ahead);
//! each file part streams into `Store::put` as it arrives, hashed and sniffed on the way.
//! A raw body with `Content-Disposition: attachment; filename=…` is one file; any other body
//! on an upload route (a form-urlencoded admin post) passes through untouched.
//!
//! Memory per request is bounded by a few chunks of at most 64 KiB, plus, in replace and
//! respond, the text fields (`max_fields_size` in all), plus what the store buffers
//! for a multipart upload part.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # async fn run(routes_cfg: Vec<offload::config::UploadRouteConfig>, ctx: offload::upload::UploadContext,
//! #              store_cfg: offload::config::StoreConfig, req: http::Request<offload::body::Body>) {
//! use offload::upload::{UploadRoutes, handle};
//! let routes = UploadRoutes::new(&routes_cfg, &store_cfg).expect("valid routes");
//! if let Some(route) = routes.find(req.method(), req.uri()) {
//!     let resp = handle(&route, req, &ctx).await;
//! }
//! # }
//! ```

mod channel;
mod error;
mod form;
mod keys;
mod mirror;
mod multipart;
mod policy;
mod replace;
mod respond;
mod routes;
mod sink;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{Stream, TryStreamExt};
use http::{Request, Response, header};
use http_body_util::BodyExt;

pub(crate) use error::json_response;
pub use error::{UploadConfigError, UploadError};
pub use policy::{download_disposition, sanitize_filename};
pub use routes::{UploadRoute, UploadRoutes};
pub use sink::StoredFile;

use crate::body::{Body, Stalled, TooLarge};
use crate::config::UploadMode;
use crate::proxy::{ClientInfo, ProxyError, Upstream};
use crate::store::Store;
use multipart::BodyKind;

/// What handling an upload needs besides the route.
pub struct UploadContext {
    pub store: Arc<dyn Store>,
    pub upstream: Arc<Upstream>,
    pub client: ClientInfo,
    pub after_app: Option<Arc<dyn AfterApp>>,
    /// How long an answer of the app read by offload may stand still (`server.idle_timeout`).
    pub answer_stall: std::time::Duration,
}

/// Mirror mode: called with the app's 2xx answer before it is released, with the keys of the
/// files teed into the store (see `assets::MirrorCopy`: copies every managed asset the answer
/// names from the app into the store, then rewrites the answer).
#[async_trait]
pub trait AfterApp: Send + Sync {
    async fn on_success(
        &self,
        req: &http::request::Parts,
        teed: &[String],
        resp: Response<Body>,
    ) -> Response<Body>;
}

/// Handles one request on an upload route. Infallible: every error is a response.
pub async fn handle(
    route: &UploadRoute,
    req: Request<Body>,
    ctx: &UploadContext,
) -> Response<Body> {
    let kind = match precheck(route, &req) {
        Ok(kind) => kind,
        Err(e) => return error_response(e),
    };
    if kind == BodyKind::Other {
        return match ctx.upstream.forward(req, &ctx.client).await {
            Ok(resp) => resp,
            Err(e) => e.into_response(),
        };
    }
    let result = match route.mode {
        UploadMode::Mirror => mirror::handle(route, kind, req, ctx).await,
        UploadMode::Replace => replace::handle(route, kind, req, ctx).await,
        UploadMode::Respond => {
            let body = req.into_body();
            respond::handle(route, kind, body, ctx).await
        }
    };
    result.unwrap_or_else(error_response)
}

/// What the headers alone decide: the body kind, and a declared length over the limit.
fn precheck(route: &UploadRoute, req: &Request<Body>) -> Result<BodyKind, UploadError> {
    let kind = multipart::classify(req.headers())?;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let max = route.limits.max_body_size;
    if kind != BodyKind::Other && declared.is_some_and(|len| len > max) {
        return Err(UploadError::BodyTooLarge { max });
    }
    Ok(kind)
}

fn error_response(e: UploadError) -> Response<Body> {
    if e.is_client_side() {
        tracing::info!(error = %e, "upload refused");
    } else {
        tracing::warn!(error = %e, "upload failed");
    }
    e.into_response()
}

/// The client's body as a stream of chunks; its failures are the client's.
fn client_stream(body: Body) -> impl Stream<Item = Result<Bytes, UploadError>> + Send + Unpin {
    body.into_data_stream()
        .map_err(|e| match e.downcast::<Stalled>() {
            Ok(stalled) => UploadError::ClientStalled(*stalled),
            Err(e) => match e.downcast::<TooLarge>() {
                Ok(too_large) => UploadError::App(ProxyError::BodyTooLarge(too_large.0)),
                Err(e) => UploadError::ClientBody(e.to_string()),
            },
        })
}
