//! The object store: where offloaded bytes live.
//!
//! One small interface, [`Store`], with two implementations: S3 (and every S3-compatible
//! store) and a local folder (the embedded default). Everything else in offload talks to
//! `Arc<dyn Store>` and never knows which one it has.
//!
//! Keys are full object keys (the configured `store.prefix` already applied, see
//! [`asset_key`]); the store adds nothing to them.
//!
//! - [`S3Store`]: aws-sdk-s3; streams of unknown length go up as one PutObject when they fit
//!   in one part, as a multipart upload otherwise (aborted on any failure or when dropped).
//! - [`FsStore`]: a folder; atomic writes (temp file + rename), metadata in sidecar JSON.
//! - [`serve_object`]: one object as an HTTP response (ranges, conditionals).
//! - [`Presence`]: the per-replica cache of which keys exist.
//! - [`Measured`]: any store, with its failures counted and its answers timed for `/metrics`.
//! - [`open`]: the store the config asks for.

mod fs;
mod measured;
mod presence;
mod s3;
mod serve;

pub use fs::FsStore;
pub(crate) use fs::TEMP_PREFIX;
pub use measured::Measured;
pub use presence::Presence;
pub use s3::S3Store;
pub use serve::{FromStore, serve_object};

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use serde::Serialize;

use crate::config::{StoreConfig, StoreKind};

/// A stream of body chunks going into or coming out of the store.
pub type ByteStream = BoxStream<'static, io::Result<Bytes>>;

/// What is stored with an object besides its bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutOptions {
    pub content_type: Option<String>,
    pub cache_control: Option<String>,
    pub content_disposition: Option<String>,
    /// User metadata (`x-amz-meta-*` on S3).
    pub metadata: BTreeMap<String, String>,
    /// The exact length, when known in advance.
    pub size_hint: Option<u64>,
}

/// What the store knows of one object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
    /// Hex SHA-256 of the whole object, computed while it was written.
    pub sha256: Option<String>,
    pub content_type: Option<String>,
    pub cache_control: Option<String>,
    pub content_disposition: Option<String>,
    #[serde(skip)]
    pub last_modified: Option<SystemTime>,
    pub metadata: BTreeMap<String, String>,
}

/// A byte range as a client asks for it (`Range: bytes=…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `start-end`, both inclusive.
    FromTo(u64, u64),
    /// `start-`
    From(u64),
    /// `-n`: the last n bytes.
    Suffix(u64),
}

/// An object being read.
pub struct GetObject {
    pub info: ObjectInfo,
    /// The bytes served, inclusive, when a range was asked for.
    pub range: Option<(u64, u64)>,
    pub body: ByteStream,
}

/// Why a store operation failed, sorted by who is to blame.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The key is not acceptable (escapes the root, empty, too long): the caller's fault.
    #[error("invalid key {0:?}")]
    InvalidKey(String),
    /// The requested range lies outside the object.
    #[error("range not satisfiable")]
    RangeNotSatisfiable,
    /// The body stream handed to `put` failed (the client went away, or sent too much).
    #[error("upload body failed: {0}")]
    Body(#[source] io::Error),
    /// The store could not be reached, or timed out: try again later (503).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store answered with an error (credentials, permissions, bucket missing…) (502).
    #[error("store refused the request: {0}")]
    Refused(String),
    /// A local I/O failure (fs store).
    #[error("store i/o failed: {0}")]
    Io(io::Error),
}

/// Not `#[from]`: that would make the I/O error the source too, and a chain printed whole
/// would say its message twice.
impl From<io::Error> for StoreError {
    fn from(e: io::Error) -> StoreError {
        StoreError::Io(e)
    }
}

/// The store interface shared by every part of offload.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Writes `body` under `key`, whole or not at all: on any error (including a failing
    /// `body`), nothing is visible under `key` and no partial upload is left behind.
    async fn put(
        &self,
        key: &str,
        body: ByteStream,
        opts: PutOptions,
    ) -> Result<ObjectInfo, StoreError>;

    /// The object's metadata, or `None` when absent.
    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError>;

    /// The object's bytes (a range of them when asked), or `None` when absent.
    async fn get(
        &self,
        key: &str,
        range: Option<ByteRange>,
    ) -> Result<Option<GetObject>, StoreError>;

    /// Removes the object; removing an absent object succeeds.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;

    /// Every object whose key starts with `prefix`, streamed page by page.
    fn list<'a>(&'a self, prefix: &'a str) -> BoxStream<'a, Result<ObjectInfo, StoreError>>;

    /// The public URL of `key` (CDN, bucket or this proxy's serve prefix), percent-encoded.
    fn public_url(&self, key: &str) -> String;

    /// [`Store::public_url`] appended to `url`: rewriting asks for one per asset URL of every
    /// page, and the stores build it without an allocation of its own.
    fn push_public_url(&self, key: &str, url: &mut String) {
        url.push_str(&self.public_url(key));
    }

    /// Whether the store answers now (`/readyz`): a HEAD of a key nobody writes, whose
    /// absence is a fine answer (the store is reachable and takes the credentials).
    async fn probe(&self) -> Result<(), StoreError> {
        self.head(PROBE_KEY).await.map(drop)
    }
}

/// The key [`Store::probe`] looks for.
const PROBE_KEY: &str = ".offload-readyz";

/// The key of the managed asset at URL path `path` (decoded): `prefix + path without its
/// leading '/'`. Any replica computes the same key; nothing is looked up.
pub fn asset_key(prefix: &str, path: &str) -> String {
    let path = path.trim_start_matches('/');
    let mut key = String::with_capacity(prefix.len() + path.len());
    key.push_str(prefix);
    key.push_str(path);
    key
}

/// What opening the store `cfg` asks for would trip on, found without opening it
/// (`check-config`): a folder store's root is looked at; a bucket is not asked, as that
/// takes the network and credentials a check may not have.
pub fn check(cfg: &StoreConfig) -> Result<(), StoreError> {
    match cfg.kind {
        StoreKind::S3 => Ok(()),
        StoreKind::Fs => FsStore::check_root(&cfg.root),
    }
}

/// The store `cfg` asks for: S3 (credentials from the standard AWS chain) or a folder.
pub async fn open(cfg: &StoreConfig) -> Result<Arc<dyn Store>, StoreError> {
    match cfg.kind {
        StoreKind::S3 => Ok(Arc::new(S3Store::new(cfg).await?)),
        StoreKind::Fs => Ok(Arc::new(FsStore::new(
            &cfg.root,
            &cfg.serve_prefix,
            cfg.public_url.clone(),
        )?)),
    }
}

impl ByteRange {
    /// The inclusive byte span this range covers in an object of `size` bytes, or
    /// `RangeNotSatisfiable` (RFC 9110 §14.1.2: a range starting past the end, or a zero
    /// suffix, cannot be served; an end past the end is clamped).
    pub fn resolve(self, size: u64) -> Result<(u64, u64), StoreError> {
        let last = size.checked_sub(1).ok_or(StoreError::RangeNotSatisfiable)?;
        let (start, end) = match self {
            ByteRange::FromTo(start, end) if start <= end => (start, end.min(last)),
            ByteRange::FromTo(..) => return Err(StoreError::RangeNotSatisfiable),
            ByteRange::From(start) => (start, last),
            ByteRange::Suffix(0) => return Err(StoreError::RangeNotSatisfiable),
            ByteRange::Suffix(n) => (size.saturating_sub(n), last),
        };
        if start > last {
            return Err(StoreError::RangeNotSatisfiable);
        }
        Ok((start, end))
    }

    /// The `Range` header value for this range (`bytes=…`).
    pub fn header_value(self) -> String {
        match self {
            ByteRange::FromTo(start, end) => format!("bytes={start}-{end}"),
            ByteRange::From(start) => format!("bytes={start}-"),
            ByteRange::Suffix(n) => format!("bytes=-{n}"),
        }
    }
}

impl StoreError {
    /// A copy of this error (an `io::Error` keeps its kind and message): shared results, such
    /// as one HEAD answering many waiters, hand each waiter its own error.
    pub fn duplicate(&self) -> StoreError {
        match self {
            StoreError::InvalidKey(k) => StoreError::InvalidKey(k.clone()),
            StoreError::RangeNotSatisfiable => StoreError::RangeNotSatisfiable,
            StoreError::Body(e) => StoreError::Body(io::Error::new(e.kind(), e.to_string())),
            StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
            StoreError::Refused(m) => StoreError::Refused(m.clone()),
            StoreError::Io(e) => StoreError::Io(io::Error::new(e.kind(), e.to_string())),
        }
    }
}

/// Characters kept as they are in a key turned into a URL path: RFC 3986 unreserved and '/'.
const KEY_PATH: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// The bytes [`KEY_PATH`] keeps, as a table: most keys need no encoding at all, and one
/// table lookup per byte tells.
const KEY_PATH_KEPT: [bool; 256] = {
    let mut kept = [false; 256];
    let mut b = 0;
    while b < 128 {
        kept[b] = (b as u8).is_ascii_alphanumeric()
            || matches!(b as u8, b'-' | b'.' | b'_' | b'~' | b'/');
        b += 1;
    }
    kept
};

/// `key` percent-encoded for use as a URL path (slashes kept).
pub fn encode_key(key: &str) -> String {
    let mut encoded = String::with_capacity(key.len());
    push_encoded_key(&mut encoded, key);
    encoded
}

fn push_encoded_key(out: &mut String, key: &str) {
    if key.bytes().all(|b| KEY_PATH_KEPT[usize::from(b)]) {
        out.push_str(key);
    } else {
        out.extend(percent_encoding::utf8_percent_encode(key, KEY_PATH));
    }
}

/// `base` joined with the encoded `key`, with exactly one '/' between them.
///
fn join_url(base: &str, key: &str) -> String {
    let mut url = String::with_capacity(base.len() + key.len() + 8);
    push_joined_url(&mut url, base, key);
    url
}

/// [`join_url`] appended to `url`.
fn push_joined_url(url: &mut String, base: &str, key: &str) {
    url.push_str(base.trim_end_matches('/'));
    url.push('/');
    push_encoded_key(url, key);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_resolve_like_rfc_9110() {
        assert_eq!(ByteRange::FromTo(0, 0).resolve(10).unwrap(), (0, 0));
        assert_eq!(ByteRange::FromTo(5, 100).resolve(10).unwrap(), (5, 9));
        assert_eq!(ByteRange::From(9).resolve(10).unwrap(), (9, 9));
        assert_eq!(ByteRange::Suffix(3).resolve(10).unwrap(), (7, 9));
        assert_eq!(ByteRange::Suffix(30).resolve(10).unwrap(), (0, 9));
        for bad in [
            ByteRange::From(10),
            ByteRange::FromTo(10, 12),
            ByteRange::FromTo(3, 2),
            ByteRange::Suffix(0),
        ] {
            assert!(matches!(
                bad.resolve(10),
                Err(StoreError::RangeNotSatisfiable)
            ));
        }
        assert!(ByteRange::From(0).resolve(0).is_err());
    }

    #[test]
    fn keys_encode_as_paths() {
        assert_eq!(encode_key("a b/ü?.jpg"), "a%20b/%C3%BC%3F.jpg");
        assert_eq!(join_url("https://cdn/x/", "k/1"), "https://cdn/x/k/1");
        assert_eq!(join_url("/_offload/", "k"), "/_offload/k");
    }

    #[test]
    fn the_fast_path_keeps_what_the_encode_set_keeps() {
        for b in 0..=127u8 {
            let one = char::from(b).to_string();
            let kept = percent_encoding::utf8_percent_encode(&one, KEY_PATH).to_string() == one;
            assert_eq!(KEY_PATH_KEPT[usize::from(b)], kept, "byte {b}");
            assert_eq!(
                encode_key(&format!("a{one}b")),
                format!(
                    "a{}b",
                    percent_encoding::utf8_percent_encode(&one, KEY_PATH)
                )
            );
        }
    }
}
