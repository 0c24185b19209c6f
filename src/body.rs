//! The one body type that flows between the proxy's parts.
//!
//! Every layer (forwarding, uploads, rewriting, store serving) hands bodies to the next as a
//! [`Body`]: a boxed, streaming `http_body::Body` of [`Bytes`] chunks. Boxing at this edge keeps
//! the generics shallow everywhere else.

use bytes::Bytes;
use futures_util::{Stream, TryStreamExt};
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;

/// Any error a body can carry.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streaming HTTP body.
pub type Body = BoxBody<Bytes, BoxError>;

/// A body that made no progress for this long while it was waited on (`server.idle_timeout`
/// for a request body: see `server::idle`).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("no data for {}", humantime::format_duration(*.0))]
pub struct Stalled(pub std::time::Duration);

/// A request body that went past `server.max_body_size` (this many bytes): the client gets
/// `413`, and what read the body (the app's connection, an upload) stops.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("request body larger than server.max_body_size ({})", crate::config::human_size(*.0))]
pub struct TooLarge(pub u64);

/// An empty body.
pub fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

/// A body holding `bytes` in full (short, proxy-made answers only).
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A short answer made by the proxy itself: `status` and `text` as `text/plain`.
pub fn text(status: StatusCode, text: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A body from a stream of chunks.
pub fn from_stream<S, E>(stream: S) -> Body
where
    S: Stream<Item = Result<Bytes, E>> + Send + Sync + 'static,
    E: Into<BoxError> + 'static,
{
    StreamBody::new(stream.map_ok(Frame::data).map_err(Into::into)).boxed()
}

/// Boxes any body whose error converts into [`BoxError`] (e.g. `hyper::body::Incoming`).
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

/// `head`, then the rest of `tail`: a body read from in part, whole again.
pub fn prepend(head: Bytes, tail: Body) -> Body {
    let head = futures_util::stream::once(async move { Ok::<_, std::io::Error>(head) });
    let tail = tail.into_data_stream().map_err(std::io::Error::other);
    from_stream(futures_util::StreamExt::chain(head, tail))
}

/// The next piece of `body`'s data, `None` at its end; trailers are skipped. Waits at most
/// `stall`, then fails with [`Stalled`]: for bodies read by offload itself, where nothing
/// is sent meanwhile that another timeout would watch.
pub async fn next_data(
    body: &mut Body,
    stall: std::time::Duration,
) -> Result<Option<Bytes>, BoxError> {
    loop {
        match tokio::time::timeout(stall, body.frame()).await {
            Err(_) => return Err(Box::new(Stalled(stall))),
            Ok(None) => return Ok(None),
            Ok(Some(frame)) => {
                if let Ok(data) = frame?.into_data() {
                    return Ok(Some(data));
                }
            }
        }
    }
}

/// The first `want` bytes of `body` (fewer when it ends sooner; more when a piece brings
/// more) and the body whole again. Each read waits at most `stall`, then fails with
/// [`Stalled`]. Trailers are not kept.
pub async fn peek(
    mut body: Body,
    want: usize,
    stall: std::time::Duration,
) -> Result<(Bytes, Body), BoxError> {
    // Kept as the pieces came: a first piece of `want` bytes or more is not copied.
    let mut pieces: Vec<Bytes> = Vec::new();
    let mut read = 0;
    let mut ended = false;
    while read < want {
        let Some(data) = next_data(&mut body, stall).await? else {
            ended = true;
            break;
        };
        read += data.len();
        pieces.push(data);
    }
    let head = match pieces.len() {
        1 => pieces.swap_remove(0),
        _ => pieces.concat().into(),
    };
    let again = match ended {
        true => full(head.clone()),
        false => prepend(head.clone(), body),
    };
    Ok((head, again))
}
