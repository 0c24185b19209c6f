//! `offload-manifest.json`: what a backup holds, written at the backup target's root.

use std::collections::BTreeMap;

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::store::{PutOptions, Store, StoreError};

/// The manifest's name under the backup's prefix.
pub const MANIFEST_NAME: &str = "offload-manifest.json";

/// A manifest larger than this is refused rather than read into memory (≈ 5 million keys).
const MAX_MANIFEST: u64 = 1 << 30;

/// What one backup holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    /// The store the backup was taken from (kind, bucket or folder, prefix).
    pub source: String,
    /// Start and end of the last backup run (RFC 3339, UTC).
    pub started: String,
    pub finished: String,
    /// Counts of the last run.
    pub copied: u64,
    pub skipped: u64,
    pub failed: u64,
    /// Per key relative to the source prefix: every object the backup holds.
    pub objects: BTreeMap<String, ManifestEntry>,
}

/// One object in the backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub size: u64,
    pub sha256: Option<String>,
    /// The source object's ETag when it was copied.
    pub etag: Option<String>,
    /// When it was copied (RFC 3339, UTC).
    pub backed_up_at: String,
}

/// Now, as RFC 3339 UTC.
pub(crate) fn now() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_else(|_| "unknown".into())
}

/// Reads the manifest at `key`, `None` when there is none.
pub(crate) async fn read(store: &dyn Store, key: &str) -> anyhow::Result<Option<Manifest>> {
    let Some(mut object) = store.get(key, None).await? else {
        return Ok(None);
    };
    if object.info.size > MAX_MANIFEST {
        anyhow::bail!("{key}: manifest of {} bytes is too large", object.info.size);
    }
    let mut text = Vec::with_capacity(object.info.size as usize);
    while let Some(chunk) = object.body.next().await {
        text.extend_from_slice(&chunk?);
        if text.len() as u64 > MAX_MANIFEST {
            anyhow::bail!("{key}: manifest is too large");
        }
    }
    let manifest =
        serde_json::from_slice(&text).map_err(|e| anyhow::anyhow!("{key}: bad manifest: {e}"))?;
    Ok(Some(manifest))
}

/// Writes the manifest at `key` (replacing the old one atomically, by the store contract).
pub(crate) async fn write(
    store: &dyn Store,
    key: &str,
    manifest: &Manifest,
) -> Result<(), StoreError> {
    let text = serde_json::to_vec_pretty(manifest).map_err(|e| StoreError::Body(e.into()))?;
    let size = text.len() as u64;
    let body = stream::once(async move { Ok(Bytes::from(text)) }).boxed();
    let opts = PutOptions {
        content_type: Some("application/json".into()),
        cache_control: Some("no-cache".into()),
        size_hint: Some(size),
        ..PutOptions::default()
    };
    store.put(key, body, opts).await.map(|_| ())
}
