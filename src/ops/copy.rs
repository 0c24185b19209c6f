//! The store-to-store copy behind backup and restore: incremental, verified, metadata kept.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use indicatif::ProgressBar;

use super::checked::{Expect, checked};
use super::manifest::{Manifest, ManifestEntry, now};
use super::progress;
use crate::store::{ObjectInfo, PutOptions, Store};

/// One side of a copy: a store and the key prefix under which the objects lie.
#[derive(Clone)]
pub(crate) struct Side {
    pub store: Arc<dyn Store>,
    pub prefix: String,
}

/// What to copy.
pub(crate) struct CopyPlan {
    pub from: Side,
    pub to: Side,
    pub jobs: usize,
    pub progress: bool,
    /// A key relative to `from.prefix` not to copy (the manifest of a backup being restored).
    pub exclude: Option<String>,
    /// Checksums that the source objects must have (a backup's manifest, on restore).
    pub expected: Option<Arc<Manifest>>,
}

/// An object that could not be copied, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyFailure {
    pub key: String,
    pub reason: String,
}

/// What a backup or restore did.
#[derive(Debug, Clone, Default)]
pub struct CopyReport {
    /// `backup` or `restore`, for the summary.
    pub action: &'static str,
    pub copied: u64,
    pub copied_bytes: u64,
    pub skipped: u64,
    pub skipped_bytes: u64,
    pub failed: Vec<CopyFailure>,
    pub elapsed: Duration,
    /// Every object now in the target (what the manifest records).
    pub entries: Vec<CopiedObject>,
}

impl CopyReport {
    /// True when every object was copied or skipped.
    pub fn is_success(&self) -> bool {
        self.failed.is_empty()
    }
}

impl fmt::Display for CopyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: copied {} objects, {} bytes",
            self.action, self.copied, self.copied_bytes
        )?;
        writeln!(
            f,
            "skipped: {} objects, {} bytes (identical in the target)",
            self.skipped, self.skipped_bytes
        )?;
        writeln!(f, "failed: {} objects", self.failed.len())?;
        for fail in &self.failed {
            writeln!(f, "  FAILED {}: {}", fail.key, fail.reason)?;
        }
        write!(f, "elapsed: {:.1?}", self.elapsed)
    }
}

/// An object the target now holds.
#[derive(Debug, Clone)]
pub struct CopiedObject {
    /// Relative to the prefixes.
    pub key: String,
    pub entry: ManifestEntry,
    /// False when it was already there (skipped).
    pub copied: bool,
}

enum Done {
    Copied(String, ManifestEntry),
    Skipped(String, ManifestEntry),
    Excluded,
    Failed(CopyFailure),
}

/// Copies every object under `plan.from.prefix` to the same relative key under
/// `plan.to.prefix`, `plan.jobs` at once.
pub(crate) async fn copy_all(plan: CopyPlan) -> CopyReport {
    let started = std::time::Instant::now();
    let bar = progress::bar(plan.progress);
    let plan = Arc::new(plan);
    // A listing error ends the listing: it is reported once, as a failure.
    let listing = plan
        .from
        .store
        .list(&plan.from.prefix)
        .scan(false, |failed, item| {
            let out = if *failed { None } else { Some(item) };
            *failed |= out.as_ref().is_some_and(|i| i.is_err());
            futures_util::future::ready(out)
        });
    let found = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut report = listing
        .map(|item| {
            let (plan, bar, found) = (plan.clone(), bar.clone(), found.clone());
            async move {
                let info = match item {
                    Ok(info) => info,
                    Err(e) => {
                        return Done::Failed(CopyFailure {
                            key: plan.from.prefix.clone(),
                            reason: format!("listing: {e}"),
                        });
                    }
                };
                bar.inc_length(info.size);
                let n = found.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                bar.set_message(format!("{n} objects"));
                copy_one(&plan, info, &bar).await
            }
        })
        .buffer_unordered(plan.jobs.max(1))
        .fold(CopyReport::default(), |mut report, done| async move {
            report.record(done);
            report
        })
        .await;
    bar.finish_and_clear();
    report.elapsed = started.elapsed();
    report
}

impl CopyReport {
    fn record(&mut self, done: Done) {
        match done {
            Done::Copied(key, entry) => {
                self.copied += 1;
                self.copied_bytes += entry.size;
                self.entries.push(CopiedObject {
                    key,
                    entry,
                    copied: true,
                });
            }
            Done::Skipped(key, entry) => {
                self.skipped += 1;
                self.skipped_bytes += entry.size;
                self.entries.push(CopiedObject {
                    key,
                    entry,
                    copied: false,
                });
            }
            Done::Excluded => {}
            Done::Failed(f) => self.failed.push(f),
        }
    }
}

async fn copy_one(plan: &CopyPlan, listed: ObjectInfo, bar: &ProgressBar) -> Done {
    let rel = listed
        .key
        .strip_prefix(&plan.from.prefix)
        .unwrap_or(&listed.key)
        .to_string();
    if plan.exclude.as_deref() == Some(rel.as_str()) {
        bar.dec_length(listed.size);
        return Done::Excluded;
    }
    let size = listed.size;
    let key = listed.key.clone();
    let before = bar.position();
    match try_copy(plan, listed, &rel, bar).await {
        Ok(done) => done,
        Err(reason) => {
            // The object is done with, for the bar's ETA, whatever was counted of it.
            let counted = bar.position().saturating_sub(before).min(size);
            bar.inc(size - counted);
            Done::Failed(CopyFailure { key, reason })
        }
    }
}

async fn try_copy(
    plan: &CopyPlan,
    listed: ObjectInfo,
    rel: &str,
    bar: &ProgressBar,
) -> Result<Done, String> {
    let src = source_info(plan, listed).await?;
    let expected = expected_sha256(plan, rel, &src)?;
    let to_key = format!("{}{rel}", plan.to.prefix);
    let existing = plan
        .to
        .store
        .head(&to_key)
        .await
        .map_err(|e| format!("target head: {e}"))?;
    if let Some(dst) = existing
        && dst.size == src.size
        && expected.is_some()
        && dst.sha256 == expected
    {
        bar.inc(src.size);
        return Ok(Done::Skipped(rel.to_string(), entry(&src, expected)));
    }
    let object = plan
        .from
        .store
        .get(&src.key, None)
        .await
        .map_err(|e| format!("source get: {e}"))?;
    let object = object.ok_or("vanished from the source while copying")?;
    let expect = Expect {
        size: Some(object.info.size),
        sha256: expected.clone(),
    };
    let (body, outcome) = checked(object.body, expect, bar.clone());
    let put = plan
        .to
        .store
        .put(&to_key, body, put_options(&object.info))
        .await
        .map_err(|e| e.to_string())?;
    let read = outcome
        .get()
        .ok_or("copy ended before the whole object was read")?;
    if let Some(stored) = &put.sha256
        && *stored != read.sha256
    {
        return Err(format!(
            "target stored sha256 {stored}, read {}",
            read.sha256
        ));
    }
    Ok(Done::Copied(
        rel.to_string(),
        entry(&object.info, Some(read.sha256)),
    ))
}

/// Listings (S3's in particular) carry no user metadata: ask for it when the SHA-256 is
/// missing.
async fn source_info(plan: &CopyPlan, listed: ObjectInfo) -> Result<ObjectInfo, String> {
    if listed.sha256.is_some() {
        return Ok(listed);
    }
    let head = plan
        .from
        .store
        .head(&listed.key)
        .await
        .map_err(|e| format!("source head: {e}"))?;
    head.ok_or_else(|| "vanished from the source while copying".to_string())
}

/// What the bytes must hash to: the source's own `sha256`, which must agree with the
/// manifest's when there is one. `None`: unknown (an object written by another tool), copied
/// unverified and recorded with the hash read.
fn expected_sha256(plan: &CopyPlan, rel: &str, src: &ObjectInfo) -> Result<Option<String>, String> {
    let from_manifest = plan
        .expected
        .as_ref()
        .and_then(|m| m.objects.get(rel))
        .and_then(|e| e.sha256.clone());
    match (&src.sha256, from_manifest) {
        (Some(a), Some(b)) if !a.eq_ignore_ascii_case(&b) => Err(format!(
            "checksum mismatch: source metadata says sha256 {a}, manifest says {b}"
        )),
        (Some(a), _) => Ok(Some(a.clone())),
        (None, b) => Ok(b),
    }
}

fn entry(info: &ObjectInfo, sha256: Option<String>) -> ManifestEntry {
    ManifestEntry {
        size: info.size,
        sha256,
        etag: info.etag.clone(),
        backed_up_at: now(),
    }
}

/// The source's metadata, as the target must store it. The SHA-256 is left to the target,
/// which computes it while writing.
fn put_options(info: &ObjectInfo) -> PutOptions {
    let mut metadata = info.metadata.clone();
    metadata.remove("sha256");
    PutOptions {
        content_type: info.content_type.clone(),
        cache_control: info.cache_control.clone(),
        content_disposition: info.content_disposition.clone(),
        metadata,
        size_hint: Some(info.size),
    }
}
