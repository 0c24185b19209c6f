//! `offload sync`: resumable bulk offload of a folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use offload::ops::{SyncOptions, sync};
use offload::store::{
    ByteRange, ByteStream, GetObject, ObjectInfo, PutOptions, Store, StoreError, asset_key,
};

use super::*;

const URL_PREFIX: &str = "/wp-content/uploads/";
const SMALL_FILES: usize = 2000;
const LARGE: usize = 20 * 1024 * 1024;

/// 2,000 small files in nested year/month/folder trees, a third of them with non-ASCII
/// names, and 3 × 20 MiB files in the middle of the walk order.
fn make_tree(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for i in 0..SMALL_FILES {
        let folder = dir.join(format!(
            "20{:02}/{:02}/set-{}",
            20 + i % 5,
            1 + i % 12,
            i % 7
        ));
        std::fs::create_dir_all(&folder).expect("mkdir");
        let name = match i % 3 {
            0 => format!("image-{i}.jpg"),
            1 => format!("café-été-{i}.png"),
            _ => format!("日本語 ファイル {i}.txt"),
        };
        let path = folder.join(name);
        std::fs::write(&path, pseudo_random(i as u64, 200 + (i * 37) % 3000)).expect("write");
        files.push(path);
    }
    let big = dir.join("2022/06/big");
    std::fs::create_dir_all(&big).expect("mkdir");
    for i in 0..3 {
        let path = big.join(format!("video-{i}.mp4"));
        std::fs::write(&path, pseudo_random(10_000 + i, LARGE)).expect("write");
        files.push(path);
    }
    files
}

fn key_of(dir: &Path, path: &Path, prefix: &str) -> String {
    let rel = path
        .strip_prefix(dir)
        .expect("under dir")
        .to_str()
        .expect("utf-8");
    asset_key(prefix, &format!("{URL_PREFIX}{rel}"))
}

fn count_files(root: &Path) -> usize {
    walkdir::WalkDir::new(root)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        // Puts in flight show as temp files; only renamed objects count.
        .filter(|e| !e.file_name().to_string_lossy().starts_with(".offload-tmp-"))
        .count()
}

fn options(dir: &Path) -> SyncOptions {
    SyncOptions {
        dir: dir.to_path_buf(),
        url_prefix: URL_PREFIX.into(),
        dry_run: false,
        jobs: 4,
        delete_local: false,
        cache_control: "public, max-age=600".into(),
        progress: false,
    }
}

/// Kills the real binary once about half the objects exist, resumes, and checks that every
/// object ends up present and verified, and that nothing present before the resume was
/// written again. What is measured: the resumed run's own count of uploads and skips, and
/// each pre-existing object's ETag and mtime before and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_resumes_after_being_killed() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("uploads");
    let files = make_tree(&dir);
    let root = work.path().join("store");
    let config = fs_config(work.path(), &root, "site/");
    let store = fs_store(&root);

    let mut child = Command::new(offload_bin())
        .args([
            "sync",
            dir.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--jobs",
            "2",
        ])
        .env_remove("OFFLOAD_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn offload sync");
    let objects = root.join("objects");
    let deadline = Instant::now() + Duration::from_secs(120);
    while count_files(&objects) < files.len() / 2 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "sync finished before it could be interrupted"
        );
        assert!(Instant::now() < deadline, "sync made no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().expect("kill");
    child.wait().expect("wait");

    let before = list_all(store.as_ref(), "site/").await;
    // About half: the count above saw object files land; the listing also needs sidecars.
    assert!(
        before.len() > files.len() / 3 && before.len() < files.len(),
        "{} objects",
        before.len()
    );

    let report = sync(options(&dir), store.clone(), "site/")
        .await
        .expect("resume");
    assert!(report.is_success(), "{report}");
    assert_eq!(
        report.skipped.files as usize,
        before.len(),
        "everything present was skipped\n{report}"
    );
    assert_eq!(
        report.uploaded.files as usize,
        files.len() - before.len(),
        "{report}"
    );

    let after = list_all(store.as_ref(), "site/").await;
    assert_eq!(after.len(), files.len());
    for (key, old) in &before {
        let new = &after[key];
        assert_eq!(
            (&old.etag, old.last_modified),
            (&new.etag, new.last_modified),
            "{key} was rewritten"
        );
    }
    verify_all(store.as_ref(), &dir, &files).await;

    let again = sync(options(&dir), store.clone(), "site/")
        .await
        .expect("third run");
    assert_eq!(
        (again.uploaded.files, again.skipped.files as usize),
        (0, files.len()),
        "{again}"
    );
}

/// Every object's size, SHA-256 and metadata; the bytes of a sample and the large files.
async fn verify_all(store: &dyn Store, dir: &Path, files: &[PathBuf]) {
    for (i, path) in files.iter().enumerate() {
        let key = key_of(dir, path, "site/");
        let info = store
            .head(&key)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{key} missing"));
        let (size, sha) = file_sha256(path);
        assert_eq!(
            (info.size, info.sha256.as_deref()),
            (size, Some(sha.as_str())),
            "{key}"
        );
        let mime = mime_guess::from_path(path).first_or_octet_stream();
        assert_eq!(
            info.content_type.as_deref(),
            Some(mime.essence_str()),
            "{key}"
        );
        assert_eq!(
            info.cache_control.as_deref(),
            Some("public, max-age=600"),
            "{key}"
        );
        if i % 97 == 0 || size > 1 << 20 {
            let bytes = read_object(store, &key).await;
            assert!(bytes == std::fs::read(path).unwrap(), "{key}: bytes differ");
        }
    }
}

#[tokio::test]
async fn dry_run_uploads_nothing() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("uploads");
    std::fs::create_dir_all(dir.join("2024/05")).unwrap();
    std::fs::write(dir.join("2024/05/a.jpg"), b"jpeg").unwrap();
    std::fs::write(dir.join("2024/05/b.css"), b"body{}").unwrap();
    let root = work.path().join("store");
    let config = fs_config(work.path(), &root, "");

    let out = run_offload(
        &[
            "sync",
            dir.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--dry-run",
        ],
        &[],
    );
    let printed = text(&out);
    assert!(out.status.success(), "{printed}");
    assert!(
        printed.contains("would upload") && printed.contains("wp-content/uploads/2024/05/a.jpg"),
        "{printed}"
    );
    assert!(
        printed.contains("would upload: 2 files, 10 bytes"),
        "{printed}"
    );
    assert!(
        list_all(fs_store(&root).as_ref(), "").await.is_empty(),
        "a dry run stored something"
    );
}

/// A broken symlink and a FIFO fail (listed, exit 1: tests run as root, so chmod 000 would
/// not stop a read); a symlink out of the folder is ignored; every other file is uploaded.
#[tokio::test]
async fn failing_files_are_listed_and_fail_the_run() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("uploads");
    std::fs::create_dir_all(dir.join("ok")).unwrap();
    std::fs::write(dir.join("ok/a.jpg"), b"a").unwrap();
    std::fs::write(dir.join("ok/b.jpg"), b"bb").unwrap();
    std::os::unix::fs::symlink(dir.join("ok/a.jpg"), dir.join("ok/link-inside.jpg")).unwrap();
    std::os::unix::fs::symlink(work.path().join("nowhere"), dir.join("broken.jpg")).unwrap();
    std::fs::write(work.path().join("secret.txt"), b"outside").unwrap();
    std::os::unix::fs::symlink(work.path().join("secret.txt"), dir.join("escape.txt")).unwrap();
    let fifo = dir.join("pipe.jpg");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let root = work.path().join("store");
    let config = fs_config(work.path(), &root, "");

    let out = run_offload(
        &[
            "sync",
            dir.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
        &[],
    );
    let printed = text(&out);
    assert_eq!(out.status.code(), Some(1), "{printed}");
    assert!(
        printed.contains("FAILED")
            && printed.contains("broken.jpg")
            && printed.contains("pipe.jpg"),
        "{printed}"
    );
    assert!(printed.contains("2 files failed"), "{printed}");
    assert!(
        printed.contains("ignored") && printed.contains("escape.txt"),
        "{printed}"
    );
    let keys: Vec<String> = list_all(fs_store(&root).as_ref(), "")
        .await
        .into_keys()
        .collect();
    assert_eq!(
        keys,
        [
            "wp-content/uploads/ok/a.jpg",
            "wp-content/uploads/ok/b.jpg",
            "wp-content/uploads/ok/link-inside.jpg"
        ]
    );
}

/// A real FsStore whose `head` lies about one key's checksum: the object can then never be
/// verified, so its file must stay.
struct UnverifiableKey {
    inner: Arc<dyn Store>,
    key: String,
}

#[async_trait]
impl Store for UnverifiableKey {
    async fn put(
        &self,
        key: &str,
        body: ByteStream,
        opts: PutOptions,
    ) -> Result<ObjectInfo, StoreError> {
        self.inner.put(key, body, opts).await
    }
    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        let info = self.inner.head(key).await?;
        Ok(info.map(|mut i| {
            if i.key == self.key {
                i.sha256 = Some("0".repeat(64));
            }
            i
        }))
    }
    async fn get(
        &self,
        key: &str,
        range: Option<ByteRange>,
    ) -> Result<Option<GetObject>, StoreError> {
        self.inner.get(key, range).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(key).await
    }
    fn list<'a>(&'a self, prefix: &'a str) -> BoxStream<'a, Result<ObjectInfo, StoreError>> {
        self.inner.list(prefix)
    }
    fn public_url(&self, key: &str) -> String {
        self.inner.public_url(key)
    }
}

#[tokio::test]
async fn delete_local_deletes_only_verified_files() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("uploads");
    std::fs::create_dir_all(dir.join("2024")).unwrap();
    let names = [
        "2024/a.jpg",
        "2024/b.png",
        "2024/c.pdf",
        "2024/unverifiable.gif",
    ];
    for (i, name) in names.iter().enumerate() {
        std::fs::write(dir.join(name), pseudo_random(i as u64, 1000 + i)).unwrap();
    }
    std::os::unix::fs::symlink(work.path().join("nowhere"), dir.join("2024/broken.jpg")).unwrap();
    let root = work.path().join("store");
    let real = fs_store(&root);
    let store: Arc<dyn Store> = Arc::new(UnverifiableKey {
        inner: real.clone(),
        key: "wp-content/uploads/2024/unverifiable.gif".into(),
    });
    let shas: BTreeMap<&str, (u64, String)> = names
        .iter()
        .map(|n| (*n, file_sha256(&dir.join(n))))
        .collect();

    let report = sync(
        SyncOptions {
            delete_local: true,
            ..options(&dir)
        },
        store,
        "",
    )
    .await
    .unwrap();

    assert_eq!(report.deleted, 3, "{report}");
    assert_eq!(report.failed.len(), 2, "{report}");
    assert!(
        dir.join("2024/unverifiable.gif").exists(),
        "an unverified file was deleted"
    );
    assert!(std::fs::symlink_metadata(dir.join("2024/broken.jpg")).is_ok());
    for name in &names[..3] {
        assert!(!dir.join(name).exists(), "{name} kept");
        let info = real
            .head(&format!("wp-content/uploads/{name}"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((info.size, info.sha256.unwrap()), shas[name].clone());
    }
}
