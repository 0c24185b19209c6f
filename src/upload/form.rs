//! Reading a whole upload (replace, respond): every file part streamed into the store, every
//! text field kept (each bounded by `max_field_size`, all by `max_fields_size`). All or
//! nothing: on any error the files already stored are deleted by the caller's
//! [`Committed`] guard.

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use http::HeaderMap;

use super::UploadContext;
use super::error::UploadError;
use super::multipart::{BodyKind, Parts, map_multer_error};
use super::routes::{Limits, UploadRoute};
use super::sink::{Committed, OnRefused, StoredFile, store_file};

/// One part of the form, in the order received.
#[derive(Debug)]
pub enum Item {
    /// A text field, with its part headers as received.
    Field {
        name: String,
        headers: HeaderMap,
        value: Bytes,
    },
    File(StoredFile),
}

/// Reads the body of a multipart or raw upload; `committed` collects every stored key.
pub async fn read<S>(
    route: &UploadRoute,
    ctx: &UploadContext,
    kind: BodyKind,
    mut body: S,
    committed: &mut Committed,
) -> Result<Vec<Item>, UploadError>
where
    S: Stream<Item = Result<Bytes, UploadError>> + Send + Unpin,
{
    match kind {
        BodyKind::Multipart(boundary) => {
            read_multipart(route, ctx, &boundary, body, committed).await
        }
        BodyKind::Raw(meta) => {
            let stored = store_file(route, &ctx.store, &meta, &mut body, OnRefused::Fail).await?;
            Ok(stored.into_iter().map(|f| commit(committed, f)).collect())
        }
        BodyKind::Other => Ok(Vec::new()),
    }
}

fn commit(committed: &mut Committed, file: StoredFile) -> Item {
    committed.push(file.key.clone());
    Item::File(file)
}

async fn read_multipart<S>(
    route: &UploadRoute,
    ctx: &UploadContext,
    boundary: &str,
    body: S,
    committed: &mut Committed,
) -> Result<Vec<Item>, UploadError>
where
    S: Stream<Item = Result<Bytes, UploadError>> + Send + Unpin,
{
    let limits = route.limits;
    let mut parts = Parts::new(body, boundary, limits);
    let mut items = Vec::new();
    let mut fields_left = limits.max_fields_size;
    while let Some(part) = parts.next().await? {
        let mut data = part
            .field
            .map(|r| r.map_err(|e| map_multer_error(e, &limits)));
        if part.meta.filename.is_some() {
            let stored =
                store_file(route, &ctx.store, &part.meta, &mut data, OnRefused::Fail).await?;
            items.extend(stored.map(|f| commit(committed, f)));
        } else {
            let value = read_field(&mut data, &limits, &mut fields_left).await?;
            items.push(Item::Field {
                name: part.meta.field,
                headers: part.headers,
                value,
            });
        }
    }
    Ok(items)
}

/// A text field's value, refused past `max_field_size` bytes, or past what is `left` of
/// the request's `max_fields_size` (taken off it).
async fn read_field<S>(data: &mut S, limits: &Limits, left: &mut u64) -> Result<Bytes, UploadError>
where
    S: Stream<Item = Result<Bytes, UploadError>> + Unpin,
{
    let mut value = BytesMut::new();
    while let Some(chunk) = data.next().await {
        let chunk = chunk?;
        let len = chunk.len() as u64;
        if value.len() as u64 + len > limits.max_field_size {
            return Err(UploadError::FieldTooLarge {
                max: limits.max_field_size,
            });
        }
        *left = left.checked_sub(len).ok_or(UploadError::FieldsTooLarge {
            max: limits.max_fields_size,
        })?;
        value.extend_from_slice(&chunk);
    }
    Ok(value.freeze())
}

/// Reads a part to its end without keeping it (mirror: the app gets the bytes anyway).
pub async fn drain<S>(data: &mut S) -> Result<(), UploadError>
where
    S: Stream<Item = Result<Bytes, UploadError>> + Unpin,
{
    while let Some(chunk) = data.next().await {
        chunk?;
    }
    Ok(())
}
