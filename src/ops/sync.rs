//! `offload sync`: bulk-offload an existing folder to the keys the proxy computes for the URLs
//! it is served under.
//!
//! A walker thread feeds a bounded channel; `jobs` files are processed at once. Each file is
//! skipped when the store already has an object of the same size and SHA-256, which is what
//! makes an interrupted run resumable: the next run skips what the last one finished, and the
//! store's all-or-nothing `put` guarantees an interrupted upload left nothing behind.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use indicatif::ProgressBar;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::checked::{Expect, Fingerprint, checked, file_stream, hash_file};
use super::progress;
use crate::store::{PutOptions, Store, asset_key};

/// What to sync and how.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// The folder to offload, e.g. `/var/www/wp-content/uploads`.
    pub dir: PathBuf,
    /// The URL path the folder is served under, e.g. `/wp-content/uploads/`; a file's key is
    /// `asset_key(key_prefix, url_prefix + relative path)`.
    pub url_prefix: String,
    /// List what would be uploaded; upload nothing.
    pub dry_run: bool,
    /// Files processed at once (at least 1).
    pub jobs: usize,
    /// Delete each local file once its object is verified in the store (size and SHA-256).
    pub delete_local: bool,
    /// `Cache-Control` stored with every object.
    pub cache_control: String,
    /// Draw a progress bar (only ever on a terminal).
    pub progress: bool,
}

/// Files and bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub files: u64,
    pub bytes: u64,
}

impl Tally {
    fn add(&mut self, bytes: u64) {
        self.files += 1;
        self.bytes += bytes;
    }
}

/// A file that could not be offloaded, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncFailure {
    pub path: PathBuf,
    pub reason: String,
}

/// What a sync did.
#[derive(Debug, Clone, Default)]
pub struct SyncReport {
    pub dry_run: bool,
    /// Uploaded (or, in a dry run, that would be uploaded).
    pub uploaded: Tally,
    /// Already in the store with the same size and SHA-256.
    pub skipped: Tally,
    /// Local files deleted after verification (`--delete-local`).
    pub deleted: u64,
    /// Symlinks left alone because they lead out of the folder or to a directory.
    pub ignored: Vec<SyncFailure>,
    pub failed: Vec<SyncFailure>,
    pub elapsed: Duration,
}

impl SyncReport {
    /// True when every file was offloaded or skipped.
    pub fn is_success(&self) -> bool {
        self.failed.is_empty()
    }
}

impl fmt::Display for SyncReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.dry_run {
            "would upload"
        } else {
            "uploaded"
        };
        writeln!(
            f,
            "{verb}: {} files, {} bytes",
            self.uploaded.files, self.uploaded.bytes
        )?;
        writeln!(
            f,
            "skipped: {} files, {} bytes (already in the store)",
            self.skipped.files, self.skipped.bytes
        )?;
        if self.deleted > 0 {
            writeln!(f, "deleted locally: {} files", self.deleted)?;
        }
        for i in &self.ignored {
            writeln!(f, "ignored: {}: {}", i.path.display(), i.reason)?;
        }
        writeln!(f, "failed: {} files", self.failed.len())?;
        for fail in &self.failed {
            writeln!(f, "  FAILED {}: {}", fail.path.display(), fail.reason)?;
        }
        write!(f, "elapsed: {:.1?}", self.elapsed)
    }
}

/// A file found by the walker.
struct LocalFile {
    path: PathBuf,
    key: String,
    size: u64,
}

/// What the walker sends.
enum Found {
    File(LocalFile),
    Failed(SyncFailure),
    Ignored(SyncFailure),
}

/// What happened to one file.
enum Done {
    Uploaded { bytes: u64, deleted: bool },
    Skipped { bytes: u64, deleted: bool },
    Failed(SyncFailure),
    Ignored(SyncFailure),
}

struct Ctx {
    store: Arc<dyn Store>,
    opts: SyncOptions,
    bar: ProgressBar,
    done_files: AtomicU64,
    found_files: Arc<AtomicU64>,
    walking: Arc<AtomicBool>,
}

/// Offloads every file under `opts.dir` to `store`, keys under `key_prefix` (the configured
/// `store.prefix`). Failures of single files are listed in the report, not returned as errors;
/// an error means the sync could not run at all (e.g. `dir` is missing).
pub async fn sync(
    opts: SyncOptions,
    store: Arc<dyn Store>,
    key_prefix: &str,
) -> anyhow::Result<SyncReport> {
    let started = Instant::now();
    let root = std::fs::canonicalize(&opts.dir)
        .map_err(|e| anyhow::anyhow!("{}: {e}", opts.dir.display()))?;
    if !root.is_dir() {
        anyhow::bail!("{}: not a directory", opts.dir.display());
    }
    let bar = progress::bar(opts.progress);
    let found_files = Arc::new(AtomicU64::new(0));
    let walking = Arc::new(AtomicBool::new(true));
    let (tx, rx) = mpsc::channel(1024);
    let walker = Walker {
        root,
        url_prefix: normalise_url_prefix(&opts.url_prefix),
        key_prefix: key_prefix.to_string(),
        bar: bar.clone(),
        found: found_files.clone(),
        walking: walking.clone(),
    };
    let walk = tokio::task::spawn_blocking(move || walker.run(tx));
    let jobs = opts.jobs.max(1);
    let ctx = Arc::new(Ctx {
        store,
        opts,
        bar,
        done_files: AtomicU64::new(0),
        found_files,
        walking,
    });
    let mut report = ReceiverStream::new(rx)
        .map(|found| {
            let ctx = ctx.clone();
            async move { ctx.handle(found).await }
        })
        .buffer_unordered(jobs)
        .fold(SyncReport::default(), |mut report, done| async move {
            report.record(done);
            report
        })
        .await;
    walk.await?;
    ctx.bar.finish_and_clear();
    report.dry_run = ctx.opts.dry_run;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// `/wp-content/uploads` → `/wp-content/uploads/`; empty stays empty (keys are the relative
/// paths under `store.prefix`).
fn normalise_url_prefix(prefix: &str) -> String {
    if prefix.is_empty() || prefix.ends_with('/') {
        prefix.to_string()
    } else {
        format!("{prefix}/")
    }
}

impl SyncReport {
    fn record(&mut self, done: Done) {
        match done {
            Done::Uploaded { bytes, deleted } => {
                self.uploaded.add(bytes);
                self.deleted += u64::from(deleted);
            }
            Done::Skipped { bytes, deleted } => {
                self.skipped.add(bytes);
                self.deleted += u64::from(deleted);
            }
            Done::Failed(f) => self.failed.push(f),
            Done::Ignored(i) => self.ignored.push(i),
        }
    }
}

impl Ctx {
    async fn handle(&self, found: Found) -> Done {
        let done = match found {
            Found::File(file) => {
                let size = file.size;
                let before = self.bar.position();
                match self.sync_file(&file).await {
                    Ok(done) => done,
                    Err(reason) => {
                        // Keep the bar's byte count honest for the ETA: the file is done.
                        let counted = self.bar.position().saturating_sub(before).min(size);
                        self.bar.inc(size - counted);
                        Done::Failed(SyncFailure {
                            path: file.path,
                            reason,
                        })
                    }
                }
            }
            Found::Failed(f) => Done::Failed(f),
            Found::Ignored(i) => Done::Ignored(i),
        };
        let n = self.done_files.fetch_add(1, Ordering::Relaxed) + 1;
        let found = self.found_files.load(Ordering::Relaxed);
        self.bar.set_message(progress::files_message(
            n,
            found,
            self.walking.load(Ordering::Relaxed),
        ));
        done
    }

    async fn sync_file(&self, file: &LocalFile) -> Result<Done, String> {
        let existing = self
            .store
            .head(&file.key)
            .await
            .map_err(|e| format!("head {}: {e}", file.key))?;
        if let Some(info) = existing
            && info.size == file.size
            && info.sha256.is_some()
        {
            let local = hash_file(&file.path)
                .await
                .map_err(|e| format!("reading: {e}"))?;
            if info.sha256.as_deref() == Some(local.sha256.as_str()) {
                self.bar.inc(file.size);
                let deleted = self.delete_if_asked(file, &local).await?;
                return Ok(Done::Skipped {
                    bytes: file.size,
                    deleted,
                });
            }
        }
        if self.opts.dry_run {
            progress::say(
                &self.bar,
                &format!("would upload {} -> {}", file.path.display(), file.key),
            );
            self.bar.inc(file.size);
            return Ok(Done::Uploaded {
                bytes: file.size,
                deleted: false,
            });
        }
        let local = self.upload(file).await?;
        let deleted = self.delete_if_asked(file, &local).await?;
        Ok(Done::Uploaded {
            bytes: local.size,
            deleted,
        })
    }

    /// Streams the file into the store, hashing it on the way; the store's own SHA-256 must
    /// agree (it would not if the file changed between reads).
    async fn upload(&self, file: &LocalFile) -> Result<Fingerprint, String> {
        let handle = tokio::fs::File::open(&file.path)
            .await
            .map_err(|e| format!("opening: {e}"))?;
        let (body, outcome) = checked(file_stream(handle), Expect::default(), self.bar.clone());
        let content_type = mime_guess::from_path(&file.path).first_or_octet_stream();
        let opts = PutOptions {
            content_disposition: runs_in_browser(content_type.essence_str())
                .then(|| "attachment".to_string()),
            content_type: Some(content_type.essence_str().to_string()),
            cache_control: Some(self.opts.cache_control.clone()),
            size_hint: Some(file.size),
            ..PutOptions::default()
        };
        let info = self
            .store
            .put(&file.key, body, opts)
            .await
            .map_err(|e| format!("upload: {e}"))?;
        let local = outcome
            .get()
            .ok_or("upload ended before the whole file was read")?;
        if let Some(stored) = &info.sha256
            && *stored != local.sha256
        {
            return Err(format!(
                "stored sha256 {stored} differs from the file's {}",
                local.sha256
            ));
        }
        Ok(local)
    }

    /// With `--delete-local`, removes the file once a fresh `head` shows the object with the
    /// same size and SHA-256; never otherwise.
    async fn delete_if_asked(&self, file: &LocalFile, local: &Fingerprint) -> Result<bool, String> {
        if !self.opts.delete_local || self.opts.dry_run {
            return Ok(false);
        }
        let info = self
            .store
            .head(&file.key)
            .await
            .map_err(|e| format!("verifying: {e}"))?;
        let verified = info
            .is_some_and(|i| i.size == local.size && i.sha256.as_deref() == Some(&local.sha256));
        if !verified {
            return Err("not deleted: the stored object does not match the file".into());
        }
        tokio::fs::remove_file(&file.path)
            .await
            .map_err(|e| format!("deleting: {e}"))?;
        Ok(true)
    }
}

/// Types a browser would run if served inline from the bucket's origin: stored as
/// attachments, as uploads are.
fn runs_in_browser(content_type: &str) -> bool {
    matches!(
        content_type,
        "text/html"
            | "image/svg+xml"
            | "application/xhtml+xml"
            | "text/xml"
            | "application/xml"
            | "text/javascript"
            | "application/javascript"
            | "application/x-javascript"
    )
}

/// Walks the folder on a blocking thread, without following symlinks out of it.
struct Walker {
    root: PathBuf,
    url_prefix: String,
    key_prefix: String,
    bar: ProgressBar,
    found: Arc<AtomicU64>,
    walking: Arc<AtomicBool>,
}

impl Walker {
    fn run(self, tx: mpsc::Sender<Found>) {
        for entry in walkdir::WalkDir::new(&self.root)
            .follow_links(false)
            .sort_by_file_name()
        {
            let found = match entry {
                Ok(entry) if entry.file_type().is_dir() => continue,
                Ok(entry) => self.classify(entry.path(), entry.file_type()),
                Err(e) => {
                    let path = e
                        .path()
                        .map(Path::to_path_buf)
                        .unwrap_or_else(|| self.root.clone());
                    Found::Failed(SyncFailure {
                        path,
                        reason: e.to_string(),
                    })
                }
            };
            if let Found::File(file) = &found {
                self.bar.inc_length(file.size);
            }
            self.found.fetch_add(1, Ordering::Relaxed);
            if tx.blocking_send(found).is_err() {
                break;
            }
        }
        self.walking.store(false, Ordering::Relaxed);
    }

    fn classify(&self, path: &Path, file_type: std::fs::FileType) -> Found {
        let fail = |reason: String| {
            Found::Failed(SyncFailure {
                path: path.to_path_buf(),
                reason,
            })
        };
        let size = if file_type.is_symlink() {
            match self.symlink_target_size(path) {
                Ok(Some(size)) => size,
                Ok(None) => {
                    return Found::Ignored(SyncFailure {
                        path: path.to_path_buf(),
                        reason: "symlink to a directory or out of the folder: not followed".into(),
                    });
                }
                Err(reason) => return fail(reason),
            }
        } else if file_type.is_file() {
            match std::fs::metadata(path) {
                Ok(m) => m.len(),
                Err(e) => return fail(format!("reading metadata: {e}")),
            }
        } else {
            return fail("not a regular file".into());
        };
        match self.key_of(path) {
            Ok(key) => Found::File(LocalFile {
                path: path.to_path_buf(),
                key,
                size,
            }),
            Err(reason) => fail(reason),
        }
    }

    /// `Some(size)` for a link to a regular file inside the folder, `None` for one to leave
    /// alone, an error for a broken one.
    fn symlink_target_size(&self, path: &Path) -> Result<Option<u64>, String> {
        let target = std::fs::canonicalize(path).map_err(|e| format!("broken symlink: {e}"))?;
        if !target.starts_with(&self.root) {
            return Ok(None);
        }
        let meta =
            std::fs::metadata(&target).map_err(|e| format!("reading symlink target: {e}"))?;
        if meta.is_file() {
            Ok(Some(meta.len()))
        } else if meta.is_dir() {
            Ok(None)
        } else {
            Err("symlink to something that is not a regular file".into())
        }
    }

    fn key_of(&self, path: &Path) -> Result<String, String> {
        let rel = path
            .strip_prefix(&self.root)
            .map_err(|_| "outside the folder".to_string())?;
        let mut parts = Vec::new();
        for part in rel.components() {
            let part = part
                .as_os_str()
                .to_str()
                .ok_or("file name is not valid UTF-8")?;
            parts.push(part);
        }
        Ok(asset_key(
            &self.key_prefix,
            &format!("{}{}", self.url_prefix, parts.join("/")),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_prefix_gets_its_slash() {
        assert_eq!(
            normalise_url_prefix("/wp-content/uploads"),
            "/wp-content/uploads/"
        );
        assert_eq!(
            normalise_url_prefix("/wp-content/uploads/"),
            "/wp-content/uploads/"
        );
        assert_eq!(normalise_url_prefix(""), "");
    }

    #[test]
    fn keys_match_the_proxys_asset_keys() {
        let walker = Walker {
            root: PathBuf::from("/var/www/wp-content/uploads"),
            url_prefix: "/wp-content/uploads/".into(),
            key_prefix: "site-a/".into(),
            bar: ProgressBar::hidden(),
            found: Arc::default(),
            walking: Arc::default(),
        };
        let key = walker
            .key_of(Path::new("/var/www/wp-content/uploads/2024/05/café.jpg"))
            .unwrap();
        assert_eq!(
            key,
            asset_key("site-a/", "/wp-content/uploads/2024/05/café.jpg")
        );
        assert_eq!(key, "site-a/wp-content/uploads/2024/05/café.jpg");
    }
}
