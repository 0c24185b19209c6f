//! The object store: where offloaded bytes live.
//!
//! One small interface, [`Store`], with two implementations: S3 (and every S3-compatible
//! store) and a local folder (the embedded default). Everything else in offload talks to
//! `Arc<dyn Store>` and never knows which one it has.
//!
//! Keys are full object keys (the configured `store.prefix` already applied, see
//! [`asset_key`]); the store adds nothing to them.

use std::collections::BTreeMap;
use std::io;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use serde::Serialize;

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
    Io(#[from] io::Error),
    /// The operation does not exist for this store kind.
    #[error("not supported by this store: {0}")]
    Unsupported(&'static str),
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

    /// A presigned GET URL valid for `expires`.
    async fn presign_get(&self, key: &str, expires: Duration) -> Result<String, StoreError>;
}

/// The key of the managed asset at URL path `path` (decoded): `prefix + path without its
/// leading '/'`. Any replica computes the same key; nothing is looked up.
pub fn asset_key(prefix: &str, path: &str) -> String {
    format!("{prefix}{}", path.trim_start_matches('/'))
}
