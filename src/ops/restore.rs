//! `offload restore`: a backup (folder or bucket) read back into the configured store,
//! verified against the source's checksums and the backup's manifest.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::copy::{CopyFailure, CopyPlan, CopyReport, Side, copy_all};
use super::manifest::{self, MANIFEST_NAME};
use crate::store::Store;

/// How to run a restore.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Objects copied at once (at least 1).
    pub jobs: usize,
    /// Draw a progress bar (only ever on a terminal).
    pub progress: bool,
}

/// Copies every object under `source_prefix` in `source` (a backup) to the same relative key
/// under `target_prefix` in `target`, skipping objects the target already holds identically.
/// Each object's bytes must hash to its `sha256` metadata and to the manifest's entry, or it
/// fails and nothing is written for it; objects the manifest lists but the backup lacks are
/// failures too.
pub async fn restore(
    source: Arc<dyn Store>,
    source_prefix: &str,
    target: Arc<dyn Store>,
    target_prefix: &str,
    opts: RestoreOptions,
) -> anyhow::Result<CopyReport> {
    let manifest_key = format!("{source_prefix}{MANIFEST_NAME}");
    let manifest = manifest::read(source.as_ref(), &manifest_key)
        .await?
        .map(Arc::new);
    let plan = CopyPlan {
        from: Side {
            store: source,
            prefix: source_prefix.to_string(),
        },
        to: Side {
            store: target,
            prefix: target_prefix.to_string(),
        },
        jobs: opts.jobs,
        progress: opts.progress,
        exclude: Some(MANIFEST_NAME.to_string()),
        expected: manifest.clone(),
    };
    let mut report = copy_all(plan).await;
    report.action = "restore";
    if let Some(manifest) = manifest {
        let seen: BTreeSet<&str> = report
            .entries
            .iter()
            .map(|o| o.key.as_str())
            .chain(
                report
                    .failed
                    .iter()
                    .map(|f| f.key.strip_prefix(source_prefix).unwrap_or(&f.key)),
            )
            .collect();
        let missing: Vec<CopyFailure> = manifest
            .objects
            .keys()
            .filter(|k| !seen.contains(k.as_str()))
            .map(|k| CopyFailure {
                key: format!("{source_prefix}{k}"),
                reason: "listed in the manifest but missing from the backup".into(),
            })
            .collect();
        report.failed.extend(missing);
    }
    Ok(report)
}
