//! `mirror` mode: the app receives the request byte for byte while file parts are teed into
//! the store. A chunk moves on only once both the app side and the parser side took it
//! (channels of one chunk each), so memory stays bounded and the app goes no slower than
//! the store. The app's answer is released only after every teed put completed.

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
    let app_req = Request::from_parts(parts.clone(), body::from_stream(app_rx));
    let mut committed = Committed::new(ctx.store.clone());
    let (app, (), parsed) = tokio::join!(
        ctx.upstream.forward(app_req, &ctx.client),
        tee(super::client_stream(body), app_tx, parse_tx),
        parse(route, ctx, kind, parse_rx, &mut committed),
    );
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

/// Copies each client chunk to the app, then to the parser. If the parser stops (a store
/// failure under `reject`, a limit), the app's body is aborted by dropping its sender, so the
/// app never receives a complete request.
async fn tee<S>(
    mut client: S,
    app: mpsc::Sender<Msg<BoxError>>,
    parser: mpsc::Sender<Msg<UploadError>>,
) where
    S: Stream<Item = Result<Bytes, UploadError>> + Unpin,
{
    while let Some(item) = client.next().await {
        let chunk = match item {
            Ok(chunk) => chunk,
            Err(e) => {
                drop(app);
                let _ = parser.send(Msg::Fail(e)).await;
                return;
            }
        };
        if app.send(Msg::Chunk(chunk.clone())).await.is_err() {
            let _ = parser.send(Msg::Fail(UploadError::AppStoppedReading)).await;
            return;
        }
        if parser.send(Msg::Chunk(chunk)).await.is_err() {
            return;
        }
    }
    // Every chunk reached both sides. The app's side may already be gone: hyper stops
    // polling a body once it has sent `Content-Length` bytes.
    let _ = app.send(Msg::Done).await;
    let _ = parser.send(Msg::Done).await;
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
