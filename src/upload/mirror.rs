//! `mirror` mode: the app receives the request byte for byte while file parts are teed into
//! the store. A chunk moves on only once both the app side and the parser side took it
//! (channels of one chunk each), so memory stays bounded and the app goes no slower than
//! the store. The app's answer is released only after every teed put completed.
//!
//! The app gets the body's last chunk only once every file in it is stored: under
//! `on_store_error = "reject"` a store failure (or a body the parser refuses) must leave the
//! app with an incomplete request, which it discards, rather than a complete upload whose
//! answer the client never sees. And the app's answer is watched all along: one given
//! before the app took the whole body (a `401`, a `413` from a server in front of PHP) goes
//! to the client at once, the teed files rolled back, as a pass-through answers early.

use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::{Request, Response};
use tokio::sync::mpsc;

use super::UploadContext;
use super::channel::{self, Guarded, Msg};
use super::error::UploadError;
use super::form::drain;
use super::multipart::{BodyKind, Parts, map_multer_error};
use super::routes::UploadRoute;
use super::sink::{Committed, OnRefused, store_file};
use crate::body::{self, Body, BoxError};
use crate::config::OnStoreError;
use crate::proxy::ProxyError;

/// How much of an answer the app gave before it took the whole upload is read while its
/// request is still open (closing the request first could cut the answer): such answers
/// are short refusals.
const EARLY_ANSWER_READ: usize = 64 * 1024;

fn app_aborted() -> BoxError {
    "upload aborted: its files could not be stored".into()
}

fn tee_aborted() -> UploadError {
    UploadError::ClientBody("upload aborted".into())
}

pub async fn handle(
    route: &UploadRoute,
    kind: BodyKind,
    req: Request<Body>,
    ctx: &UploadContext,
) -> Result<Response<Body>, UploadError> {
    let (parts, body) = req.into_parts();
    let (app_tx, app_rx) = channel::channel(1, app_aborted);
    let (parse_tx, parse_rx) = channel::channel(1, tee_aborted);
    let mut committed = Committed::new(ctx.store.clone());
    let length = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let app_body = committed.keep_once_sent(body::from_stream(app_rx), length);
    let app_req = Request::from_parts(parts.clone(), app_body);
    let released = AtomicBool::new(false);
    let outcome = {
        let feeding = async {
            let (last, parsed) = tokio::join!(
                tee(super::client_stream(body), &app_tx, parse_tx),
                parse(route, ctx, kind, parse_rx, &mut committed),
            );
            if parsed.is_ok() {
                released.store(true, Ordering::Release);
                release(&app_tx, last).await;
            }
            // Dropped without `Done` when parsing failed: the app's body is aborted.
            drop(app_tx);
            parsed
        };
        let forward = ctx.upstream.forward(app_req, &ctx.client);
        tokio::pin!(feeding, forward);
        tokio::select! {
            parsed = &mut feeding => Outcome::Fed(forward.await, parsed),
            app = &mut forward => match released.load(Ordering::Acquire) {
                // Parsed and stored; the app answered as its last bytes went out.
                true => Outcome::Fed(app, Ok(())),
                false => Outcome::Early(early_answer(app, ctx).await),
            },
        }
    };
    let (app, parsed) = match outcome {
        Outcome::Fed(app, parsed) => (app, parsed),
        Outcome::Early(app) => {
            committed.rollback().await;
            return app.map_err(UploadError::from);
        }
    };
    let resp = match (app, parsed) {
        (_, Err(e)) => {
            committed.rollback().await;
            return Err(e);
        }
        (Err(e), Ok(())) => {
            committed.rollback().await;
            return Err(e.into());
        }
        (Ok(resp), Ok(())) => resp,
    };
    if !resp.status().is_success() {
        // Not stored by the app: the teed copies would be orphans. (A 3xx keeps them: forms
        // often answer a successful post with a redirect.)
        if resp.status().is_client_error() || resp.status().is_server_error() {
            committed.rollback().await;
        } else {
            let _ = committed.keep();
        }
        return Ok(resp);
    }
    let teed = committed.keep();
    Ok(match &ctx.after_app {
        Some(hook) => hook.on_success(&parts, &teed, resp).await,
        None => resp,
    })
}

/// How the app's request and the upload's parsing came out.
enum Outcome {
    /// The whole body went to the parser (and, when it parsed, to the app).
    Fed(Result<Response<Body>, ProxyError>, Result<(), UploadError>),
    /// The app answered (or failed) before it had the whole body.
    Early(Result<Response<Body>, ProxyError>),
}

/// An answer the app gave before it had the whole upload, its first [`EARLY_ANSWER_READ`]
/// bytes read while the app's request is still open (its body neither finished nor
/// aborted, which could cut the answer short), then handed on whole.
async fn early_answer(
    app: Result<Response<Body>, ProxyError>,
    ctx: &UploadContext,
) -> Result<Response<Body>, ProxyError> {
    let (parts, body) = app?.into_parts();
    match body::peek(body, EARLY_ANSWER_READ, ctx.answer_stall).await {
        Ok((_, body)) => Ok(Response::from_parts(parts, body)),
        Err(e) => Err(ProxyError::Upstream(format!(
            "reading the app's answer: {e}"
        ))),
    }
}

/// Copies each client chunk to the parser and, one chunk behind, to the app: the last one
/// is returned, not sent (see [`release`]). If the parser stops (a store failure under
/// `reject`, a limit), teeing stops; the caller then drops the app's sender, aborting its
/// body, so the app never receives a complete request.
async fn tee<S>(
    mut client: S,
    app: &mpsc::Sender<Msg<BoxError>>,
    parser: mpsc::Sender<Msg<UploadError>>,
) -> Option<Bytes>
where
    S: Stream<Item = Result<Bytes, UploadError>> + Unpin,
{
    let mut held: Option<Bytes> = None;
    while let Some(item) = client.next().await {
        let chunk = match item {
            Ok(chunk) => chunk,
            Err(e) => {
                let _ = parser.send(Msg::Fail(e)).await;
                return None;
            }
        };
        if let Some(previous) = held.replace(chunk.clone())
            && app.send(Msg::Chunk(previous)).await.is_err()
        {
            let _ = parser.send(Msg::Fail(UploadError::AppStoppedReading)).await;
            return None;
        }
        if parser.send(Msg::Chunk(chunk)).await.is_err() {
            return None;
        }
    }
    let _ = parser.send(Msg::Done).await;
    held
}

/// The body's last chunk and its end, to the app, once every file is stored. The app's side
/// may already be gone: hyper stops polling a body once it has sent `Content-Length` bytes.
async fn release(app: &mpsc::Sender<Msg<BoxError>>, last: Option<Bytes>) {
    if let Some(last) = last
        && app.send(Msg::Chunk(last)).await.is_err()
    {
        return;
    }
    let _ = app.send(Msg::Done).await;
}

/// Parses the teed copy and stores its files. On success it keeps reading to the end (an
/// epilogue after the closing boundary must still reach the app); on failure it returns at
/// once, dropping its receiver, which makes the tee abort the app's body.
async fn parse(
    route: &UploadRoute,
    ctx: &UploadContext,
    kind: BodyKind,
    mut input: Guarded<UploadError>,
    committed: &mut Committed,
) -> Result<(), UploadError> {
    match kind {
        BodyKind::Multipart(boundary) => {
            tee_multipart(route, ctx, &boundary, &mut input, committed).await?
        }
        BodyKind::Raw(meta) => {
            if let Some(key) = tee_file(route, ctx, &meta, &mut input).await? {
                committed.push(key);
            }
        }
        BodyKind::Other => {}
    }
    input.drain().await;
    Ok(())
}

async fn tee_multipart(
    route: &UploadRoute,
    ctx: &UploadContext,
    boundary: &str,
    input: &mut Guarded<UploadError>,
    committed: &mut Committed,
) -> Result<(), UploadError> {
    let limits = route.limits;
    let mut parts = Parts::new(input, boundary, limits);
    while let Some(part) = parts.next().await? {
        let mut data = part
            .field
            .map(|r| r.map_err(|e| map_multer_error(e, &limits)));
        if part.meta.filename.is_some()
            && let Some(key) = tee_file(route, ctx, &part.meta, &mut data).await?
        {
            committed.push(key);
        }
        drain(&mut data).await?;
    }
    Ok(())
}

/// Stores one teed file. A refused file is skipped (the app decides); a store failure fails
/// the request under `reject` and is logged and skipped under `forward`.
async fn tee_file<S>(
    route: &UploadRoute,
    ctx: &UploadContext,
    meta: &super::multipart::PartMeta,
    data: &mut S,
) -> Result<Option<String>, UploadError>
where
    S: Stream<Item = Result<Bytes, UploadError>> + Unpin,
{
    match store_file(route, &ctx.store, meta, data, OnRefused::Skip).await {
        Ok(stored) => Ok(stored.map(|f| f.key)),
        Err(e) if !e.is_client_side() && route.on_store_error == OnStoreError::Forward => {
            tracing::warn!(field = %meta.field, error = %e, "store failed; forwarding the upload anyway");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}
