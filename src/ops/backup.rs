//! `offload backup`: an incremental, verified copy of everything under the store's prefix to a
//! folder or another bucket, with `offload-manifest.json` recording what the backup holds.

use std::sync::Arc;

use super::copy::{CopyPlan, CopyReport, Side, copy_all};
use super::manifest::{self, MANIFEST_NAME, Manifest};
use crate::store::Store;

/// How to run a backup.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// Objects copied at once (at least 1).
    pub jobs: usize,
    /// Draw a progress bar (only ever on a terminal).
    pub progress: bool,
    /// Names the source in the manifest, e.g. `s3://assets/site-a/`.
    pub source_name: String,
}

/// Copies every object under `source_prefix` in `source` to the same relative key under
/// `target_prefix` in `target`, skipping objects the target already holds with the same size
/// and SHA-256, then updates the manifest at `target_prefix + offload-manifest.json`.
///
/// A key named `offload-manifest.json` right under the source prefix is not copied: that name
/// is the manifest's.
pub async fn backup(
    source: Arc<dyn Store>,
    source_prefix: &str,
    target: Arc<dyn Store>,
    target_prefix: &str,
    opts: BackupOptions,
) -> anyhow::Result<CopyReport> {
    let started = manifest::now();
    let manifest_key = format!("{target_prefix}{MANIFEST_NAME}");
    let previous = manifest::read(target.as_ref(), &manifest_key)
        .await?
        .unwrap_or_default();
    let plan = CopyPlan {
        from: Side {
            store: source,
            prefix: source_prefix.to_string(),
        },
        to: Side {
            store: target.clone(),
            prefix: target_prefix.to_string(),
        },
        jobs: opts.jobs,
        progress: opts.progress,
        exclude: Some(MANIFEST_NAME.to_string()),
        expected: None,
    };
    let mut report = copy_all(plan).await;
    report.action = "backup";
    let manifest = updated_manifest(previous, &report, opts.source_name, started);
    manifest::write(target.as_ref(), &manifest_key, &manifest)
        .await
        .map_err(|e| anyhow::anyhow!("writing {manifest_key}: {e}"))?;
    Ok(report)
}

/// The previous manifest with this run's objects laid over it. Objects the run skipped keep
/// the time of the backup that copied them; objects gone from the source stay listed, since
/// the backup still holds them.
fn updated_manifest(
    previous: Manifest,
    report: &CopyReport,
    source: String,
    started: String,
) -> Manifest {
    let mut objects = previous.objects;
    for object in &report.entries {
        let unchanged = objects.get(&object.key).is_some_and(|old| {
            !object.copied && old.size == object.entry.size && old.sha256 == object.entry.sha256
        });
        if !unchanged {
            objects.insert(object.key.clone(), object.entry.clone());
        }
    }
    Manifest {
        version: 1,
        source,
        started,
        finished: manifest::now(),
        copied: report.copied,
        skipped: report.skipped,
        failed: report.failed.len() as u64,
        objects,
    }
}
