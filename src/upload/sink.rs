//! Streaming one file into the store: the policy checked on its first bytes, then every chunk
//! hashed, counted and handed to `Store::put` through a small channel; and the guard that
//! deletes what a failed request already stored.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use http_body::Frame;
use http_body_util::BodyExt;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::channel::{self, Msg};

use super::error::UploadError;
use super::keys::KeyInput;
use super::multipart::PartMeta;
use super::policy::{self, SNIFF_BYTES};
use super::routes::UploadRoute;
use crate::body::{Body, BoxError};
use crate::store::{ObjectInfo, PutOptions, Store};

/// Chunks in flight between the reader and the store's `put`.
const PUT_CHANNEL: usize = 2;

/// Background attempts to delete what a failed request stored (0.25 s, 0.5 s, … 8 s apart).
const DELETE_RETRIES: usize = 6;

/// A file now in the store.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StoredFile {
    pub field: String,
    pub filename: String,
    pub key: String,
    pub url: String,
    pub size: u64,
    pub sha256: String,
    pub content_type: String,
}

/// What to do with a file the policy refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRefused {
    /// Fail the request (replace, respond).
    Fail,
    /// Read past it without storing it (mirror: the app decides).
    Skip,
}

/// Streams one file part into the store. `Ok(None)`: nothing stored (an empty file input, or
/// a refused file with [`OnRefused::Skip`]). On error nothing is left under the key, and
/// `chunks` may hold unread bytes (the caller drains or drops them).
pub async fn store_file<S>(
    route: &UploadRoute,
    store: &Arc<dyn Store>,
    meta: &PartMeta,
    chunks: &mut S,
    on_refused: OnRefused,
) -> Result<Option<StoredFile>, UploadError>
where
    S: Stream<Item = Result<Bytes, UploadError>> + Unpin,
{
    let raw_name = meta.filename.as_deref().unwrap_or_default();
    let filename = policy::sanitize_filename(raw_name);
    let head = read_head(chunks, route.limits.max_file_size).await?;
    if head.is_empty() && raw_name.is_empty() {
        // Browsers send an empty file input as `filename=""` and no bytes.
        return Ok(None);
    }
    let decision = route.policy.check_extension(&filename).and_then(|()| {
        route
            .policy
            .decide(&filename, meta.content_type.as_deref(), &head)
    });
    let decision = match (decision, on_refused) {
        (Ok(d), _) => d,
        (Err(e), OnRefused::Fail) => return Err(e),
        (Err(e), OnRefused::Skip) => {
            tracing::info!(field = %meta.field, %filename, reason = %e, "not storing refused file");
            return Ok(None);
        }
    };
    let key = route.keys.render(&KeyInput {
        prefix: &route.key_prefix,
        filename: &filename,
        now: time::OffsetDateTime::now_utc(),
    });
    let opts = PutOptions {
        content_type: Some(decision.content_type.clone()),
        content_disposition: decision.content_disposition,
        cache_control: Some(route.cache_control.clone()),
        ..PutOptions::default()
    };
    let (size, sha256, info) = put_stream(store, &key, opts, head, chunks, route).await?;
    check_stored(&info, size, &sha256)?;
    Ok(Some(StoredFile {
        field: meta.field.clone(),
        filename,
        url: store.public_url(&key),
        key,
        size,
        sha256,
        content_type: decision.content_type,
    }))
}

/// The first bytes, up to [`SNIFF_BYTES`] (one chunk more at most), for the sniffer.
async fn read_head<S>(chunks: &mut S, max: u64) -> Result<Bytes, UploadError>
where
    S: Stream<Item = Result<Bytes, UploadError>> + Unpin,
{
    let mut head = BytesMut::new();
    while head.len() < SNIFF_BYTES {
        match chunks.next().await {
            Some(chunk) => head.extend_from_slice(&chunk?),
            None => break,
        }
        if head.len() as u64 > max {
            return Err(UploadError::FileTooLarge { max });
        }
    }
    Ok(head.freeze())
}

fn aborted() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "upload aborted")
}

/// Runs `put` in its own task (so a cancelled request still lets the store clean up) and
/// feeds it `head` then the rest of `chunks`, hashing on the way.
async fn put_stream<S>(
    store: &Arc<dyn Store>,
    key: &str,
    opts: PutOptions,
    head: Bytes,
    chunks: &mut S,
    route: &UploadRoute,
) -> Result<(u64, String, ObjectInfo), UploadError>
where
    S: Stream<Item = Result<Bytes, UploadError>> + Unpin,
{
    let (tx, rx) = channel::channel(PUT_CHANNEL, aborted);
    let task = {
        let store = store.clone();
        let key = key.to_string();
        tokio::spawn(async move { store.put(&key, rx.boxed(), opts).await })
    };
    let fed = feed(&tx, head, chunks, route.limits.max_file_size).await;
    if fed.is_ok() {
        // The receiver may be gone if the store already failed; its error comes below.
        let _ = tx.send(Msg::Done).await;
    }
    drop(tx);
    let put = task
        .await
        .map_err(|e| UploadError::StoreIntegrity(format!("store task failed: {e}")));
    let (size, hasher) = fed?; // a client-side error wins over the store's consequent one
    let info = put??;
    Ok((size, hex::encode(hasher.finalize()), info))
}

/// Sends every chunk to the put; stops early (Ok) if the store stopped listening.
async fn feed<S>(
    tx: &mpsc::Sender<Msg<io::Error>>,
    head: Bytes,
    chunks: &mut S,
    max: u64,
) -> Result<(u64, Sha256), UploadError>
where
    S: Stream<Item = Result<Bytes, UploadError>> + Unpin,
{
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut next = Some(head).filter(|h| !h.is_empty());
    loop {
        let chunk = match next.take() {
            Some(c) => c,
            None => match chunks.next().await {
                Some(c) => c?,
                None => return Ok((size, hasher)),
            },
        };
        size += chunk.len() as u64;
        if size > max {
            return Err(UploadError::FileTooLarge { max });
        }
        hasher.update(&chunk);
        if tx.send(Msg::Chunk(chunk)).await.is_err() {
            return Ok((size, hasher));
        }
    }
}

/// The store's own account must match ours; a mismatch is the store's fault (502).
fn check_stored(info: &ObjectInfo, size: u64, sha256: &str) -> Result<(), UploadError> {
    if info.size != size {
        return Err(UploadError::StoreIntegrity(format!(
            "size {} != {size}",
            info.size
        )));
    }
    if let Some(theirs) = &info.sha256
        && !theirs.eq_ignore_ascii_case(sha256)
    {
        return Err(UploadError::StoreIntegrity("sha256 differs".into()));
    }
    Ok(())
}

/// Keys a request has stored so far. Unless [`Committed::keep`] is called, they are deleted:
/// by [`Committed::rollback`], or in the background when the guard is dropped (a request
/// cancelled by a client that went away) before the app had the whole request
/// ([`Committed::keep_once_sent`]).
pub struct Committed {
    store: Arc<dyn Store>,
    keys: Vec<String>,
    /// Set once the body sent to the app has gone out whole.
    sent: Option<Arc<AtomicBool>>,
}

impl Committed {
    pub fn new(store: Arc<dyn Store>) -> Committed {
        Committed {
            store,
            keys: Vec::new(),
            sent: None,
        }
    }

    /// `body`, the one the app gets, marked so that once it has gone out whole the objects
    /// are kept should the request be dropped before the app answers (its client left):
    /// the app goes on with what it got (PHP does, without its client) and would refer to
    /// keys deleted under it. An answer the app does give still decides.
    /// `length`: the body's, when the request says it (`Content-Length`): hyper takes no
    /// more once it has that many bytes, and does not ask for the end.
    pub fn keep_once_sent(&mut self, body: Body, length: Option<u64>) -> Body {
        let sent = Arc::new(AtomicBool::new(false));
        self.sent = Some(Arc::clone(&sent));
        SentWhole {
            inner: body,
            sent,
            left: length,
        }
        .boxed()
    }

    pub fn push(&mut self, key: String) {
        self.keys.push(key);
    }

    /// The request succeeded: keep everything; returns the keys kept.
    pub fn keep(mut self) -> Vec<String> {
        std::mem::take(&mut self.keys)
    }

    /// The request failed: delete what it stored, now.
    pub async fn rollback(mut self) {
        let keys = std::mem::take(&mut self.keys);
        delete_all(&self.store, keys).await;
    }
}

impl Drop for Committed {
    fn drop(&mut self) {
        if self.keys.is_empty() {
            return;
        }
        if self
            .sent
            .as_ref()
            .is_some_and(|sent| sent.load(Ordering::Acquire))
        {
            tracing::info!(
                keys = self.keys.len(),
                "the client left after the app had its whole upload; its objects are kept"
            );
            return;
        }
        let keys = std::mem::take(&mut self.keys);
        let store = self.store.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { delete_all(&store, keys).await });
        }
    }
}

/// A body that says when it has gone out whole (see [`Committed::keep_once_sent`]).
struct SentWhole {
    inner: Body,
    sent: Arc<AtomicBool>,
    /// Bytes still to go, when the length is known.
    left: Option<u64>,
}

impl http_body::Body for SentWhole {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        // A body of known length is over with its last frame: hyper asks no further.
        let whole = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(frame))) => {
                let taken = frame.data_ref().map_or(0, |data| data.len() as u64);
                if let Some(left) = &mut self.left {
                    *left = left.saturating_sub(taken);
                }
                self.left == Some(0) || self.inner.is_end_stream()
            }
            _ => false,
        };
        if whole {
            self.sent.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Deletes `keys`; the ones the store refuses now (it may be down: that is often why the
/// request failed) are retried in the background with backoff, so a short outage does not
/// leave orphans.
async fn delete_all(store: &Arc<dyn Store>, keys: Vec<String>) {
    let mut failed = Vec::new();
    for key in keys {
        if store.delete(&key).await.is_err() {
            failed.push(key);
        }
    }
    if failed.is_empty() {
        return;
    }
    let store = store.clone();
    tokio::spawn(async move {
        let mut wait = Duration::from_millis(250);
        for _ in 0..DELETE_RETRIES {
            tokio::time::sleep(wait).await;
            wait *= 2;
            let mut still = Vec::new();
            for key in failed {
                if store.delete(&key).await.is_err() {
                    still.push(key);
                }
            }
            failed = still;
            if failed.is_empty() {
                return;
            }
        }
        for key in failed {
            tracing::warn!(%key, "could not delete the object of a failed upload");
        }
    });
}
