//! A local folder as a store: the embedded default for development and single servers.
//!
//! Layout under the root:
//! - `objects/<key>`: the object's bytes, at the path its key names;
//! - `meta/<key>.json`: its sidecar (content type, SHA-256, cache control, disposition, user
//!   metadata, size), in a tree apart, so that a sidecar can never collide with an object nor
//!   be served as one.
//!
//! A put writes a temp file beside its target (`.offload-tmp-<uuid>`: a name no key may use),
//! fsyncs it, then renames it over the target: readers see the old object or the new one,
//! never a part. A failure or a dropped future removes the temp file.
//!
//! A key can never escape the root: `..`, `.`, empty segments, absolute paths, NUL and
//! backslashes are refused, and no symlink is followed (every existing component is checked
//! with `symlink_metadata`, and files are opened with `O_NOFOLLOW`).
//!
//! A sidecar records the size and mtime of the object it describes; one that does not match
//! (a crash between the two renames, a file copied in by hand) is ignored.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures_util::stream::{BoxStream, StreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use url::Url;

use super::{
    ByteRange, ByteStream, GetObject, ObjectInfo, PutOptions, Store, StoreError, join_url,
    push_joined_url,
};

/// Temp files start with this; no key segment may.
pub(crate) const TEMP_PREFIX: &str = ".offload-tmp-";
/// Longest key accepted (S3's limit too).
const MAX_KEY_LEN: usize = 1024;
/// Read size when serving a file.
const READ_CHUNK: usize = 64 * 1024;

/// A folder as a [`Store`].
#[derive(Debug, Clone)]
pub struct FsStore {
    objects: PathBuf,
    meta: PathBuf,
    serve_prefix: String,
    public_url: Option<Url>,
}

/// What `meta/<key>.json` holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Sidecar {
    size: u64,
    /// The object file's mtime, in nanoseconds since the epoch.
    mtime_ns: u64,
    sha256: Option<String>,
    content_type: Option<String>,
    cache_control: Option<String>,
    content_disposition: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

impl FsStore {
    /// A store in `root` (created if missing). Objects are served by this proxy under
    /// `serve_prefix` (e.g. `/_offload/`), or by whatever `public_url` points at.
    pub fn new(
        root: impl AsRef<Path>,
        serve_prefix: &str,
        public_url: Option<Url>,
    ) -> Result<FsStore, StoreError> {
        let root = root.as_ref();
        let store = FsStore {
            objects: root.join("objects"),
            meta: root.join("meta"),
            serve_prefix: serve_prefix.to_string(),
            public_url,
        };
        for dir in [&store.objects, &store.meta] {
            std::fs::create_dir_all(dir).map_err(|e| {
                let context = format!("store.root: creating {}: {e}", dir.display());
                StoreError::Io(io::Error::new(e.kind(), context))
            })?;
        }
        Ok(store)
    }

    /// Whether a store could be opened in `root`, found without creating anything
    /// (`check-config`): for each of its two trees, the nearest folder that exists on the
    /// way to it is a folder this process may write in, and nothing on the way that exists
    /// is a file.
    pub fn check_root(root: &Path) -> Result<(), StoreError> {
        for tree in [root.join("objects"), root.join("meta")] {
            let existing = nearest_existing(&tree)?;
            if !existing.is_dir() {
                return Err(root_error(
                    &tree,
                    format!("{} is not a folder", existing.display()),
                ));
            }
            if !writable(&existing) {
                return Err(root_error(
                    &tree,
                    format!("{} is not writable by this process", existing.display()),
                ));
            }
        }
        Ok(())
    }

    fn paths(&self, key: &str) -> Result<KeyPaths, StoreError> {
        let segments = key_segments(key)?;
        Ok(KeyPaths {
            key: key.to_string(),
            segments: segments.iter().map(|s| s.to_string()).collect(),
            objects: self.objects.clone(),
            meta: self.meta.clone(),
        })
    }
}

/// Where one key lives, checked to be a safe relative path.
#[derive(Debug, Clone)]
struct KeyPaths {
    key: String,
    segments: Vec<String>,
    objects: PathBuf,
    meta: PathBuf,
}

impl KeyPaths {
    fn invalid(&self) -> StoreError {
        StoreError::InvalidKey(self.key.clone())
    }

    /// The object's path, after checking that no existing component of it is a symlink.
    fn object(&self) -> Result<PathBuf, StoreError> {
        let mut path = self.objects.clone();
        for segment in &self.segments {
            path.push(segment);
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.file_type().is_symlink() => return Err(self.invalid()),
                Ok(_) => {}
                // Not a directory: a file on the way, which the walk up finds.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                    ) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(path)
    }

    /// The sidecar's path (`meta/<key>.json`).
    fn sidecar(&self) -> PathBuf {
        let mut path = self.meta.clone();
        path.extend(&self.segments);
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(".json");
        path.set_file_name(name);
        path
    }

    /// Creates the directories above the key under `base`, refusing symlinks and files in
    /// the way; returns the innermost one.
    fn make_parent(&self, base: &Path) -> Result<PathBuf, StoreError> {
        let mut dir = base.to_path_buf();
        let parents = &self.segments[..self.segments.len().saturating_sub(1)];
        for segment in parents {
            dir.push(segment);
            match std::fs::symlink_metadata(&dir) {
                Ok(m) if m.file_type().is_dir() => continue,
                Ok(_) => return Err(self.invalid()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                // Another put made it meanwhile: check it again on the next round.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if !std::fs::symlink_metadata(&dir)?.file_type().is_dir() {
                        return Err(self.invalid());
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(dir)
    }
}

/// `path`, or the nearest of its ancestors that exists (the current folder for a relative
/// path none of whose parts exist).
fn nearest_existing(path: &Path) -> Result<PathBuf, StoreError> {
    let mut candidate = path;
    loop {
        match std::fs::metadata(candidate) {
            Ok(_) => return Ok(candidate.to_path_buf()),
            // Not a directory: a file on the way, which the walk up comes to.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) => {}
            Err(e) => return Err(root_error(path, format!("{}: {e}", candidate.display()))),
        }
        match candidate.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => candidate = parent,
            _ => return Ok(PathBuf::from(".")),
        }
    }
}

/// Whether this process may create entries in the folder `dir` (`access(2)`, as the
/// service's user, whatever the permission bits say to root).
fn writable(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `path` is a NUL-terminated string that outlives the call.
    unsafe { libc::access(path.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

/// An error about the store's root, worded as when opening it fails.
fn root_error(tree: &Path, reason: String) -> StoreError {
    let context = format!("store.root: creating {}: {reason}", tree.display());
    StoreError::Io(io::Error::other(context))
}

/// The segments of `key`, or `InvalidKey` when it could name anything outside the root or a
/// temp file.
fn key_segments(key: &str) -> Result<Vec<&str>, StoreError> {
    let invalid = || StoreError::InvalidKey(key.to_string());
    if key.is_empty()
        || key.len() > MAX_KEY_LEN
        || key.starts_with('/')
        || key.contains('\0')
        || key.contains('\\')
    {
        return Err(invalid());
    }
    let segments: Vec<&str> = key.split('/').collect();
    for segment in &segments {
        if segment.is_empty()
            || *segment == "."
            || *segment == ".."
            || segment.starts_with(TEMP_PREFIX)
            || segment.len() > 255
        {
            return Err(invalid());
        }
    }
    Ok(segments)
}

/// Opens `path` for reading without following a symlink in its last component.
fn open_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

fn nanos_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A temp file removed on drop unless it was renamed into place.
struct TempFile {
    path: Option<PathBuf>,
}

impl TempFile {
    fn disarm(&mut self) {
        self.path = None;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Creates the object's temp file beside its target.
fn create_temp(paths: &KeyPaths) -> Result<(File, TempFile), StoreError> {
    let dir = paths.make_parent(&paths.objects)?;
    let path = dir.join(format!("{TEMP_PREFIX}{}", uuid::Uuid::new_v4().simple()));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)?;
    Ok((file, TempFile { path: Some(path) }))
}

/// Writes the sidecar, then renames the temp file over the object. Runs to the end even if
/// the put future is dropped meanwhile: by now the object is whole.
fn commit(paths: &KeyPaths, mut temp: TempFile, mut sidecar: Sidecar) -> Result<(), StoreError> {
    let temp_path = temp.path.clone().ok_or_else(|| paths.invalid())?;
    let target = paths.object()?;
    if std::fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
        return Err(paths.invalid());
    }
    sidecar.mtime_ns = nanos_since_epoch(std::fs::metadata(&temp_path)?.modified()?);
    write_sidecar(paths, &sidecar)?;
    std::fs::rename(&temp_path, &target)?;
    temp.disarm();
    // The rename itself must survive a crash: sync the directory entry.
    if let Some(dir) = target.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn write_sidecar(paths: &KeyPaths, sidecar: &Sidecar) -> Result<(), StoreError> {
    let dir = paths.make_parent(&paths.meta)?;
    let target = paths.sidecar();
    let temp_path = dir.join(format!("{TEMP_PREFIX}{}", uuid::Uuid::new_v4().simple()));
    let mut temp = TempFile {
        path: Some(temp_path.clone()),
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&temp_path)?;
    file.write_all(&serde_json::to_vec(sidecar).map_err(io::Error::other)?)?;
    std::fs::rename(&temp_path, &target)?;
    temp.disarm();
    Ok(())
}

/// The sidecar of an object with this size and mtime, if there is one that matches.
fn read_sidecar(paths: &KeyPaths, size: u64, mtime_ns: u64) -> Option<Sidecar> {
    let file = open_nofollow(&paths.sidecar()).ok()?;
    let sidecar: Sidecar = serde_json::from_reader(io::BufReader::new(file)).ok()?;
    (sidecar.size == size && sidecar.mtime_ns == mtime_ns).then_some(sidecar)
}

fn object_info(paths: &KeyPaths, meta: &std::fs::Metadata) -> ObjectInfo {
    let modified = meta.modified().ok();
    let mtime_ns = modified.map_or(0, nanos_since_epoch);
    let sidecar = read_sidecar(paths, meta.len(), mtime_ns).unwrap_or_default();
    let etag = match &sidecar.sha256 {
        Some(sha) => format!("\"{sha}\""),
        None => format!("\"{:x}-{:x}\"", meta.len(), mtime_ns),
    };
    ObjectInfo {
        key: paths.key.clone(),
        size: meta.len(),
        etag: Some(etag),
        sha256: sidecar.sha256,
        content_type: sidecar.content_type,
        cache_control: sidecar.cache_control,
        content_disposition: sidecar.content_disposition,
        last_modified: modified,
        metadata: sidecar.metadata,
    }
}

/// Opens the object for reading: `None` when absent (or a directory).
fn open_object(paths: &KeyPaths) -> Result<Option<(File, ObjectInfo)>, StoreError> {
    let path = paths.object()?;
    let file = match open_nofollow(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(paths.invalid()),
        Err(e) => return Err(e.into()),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(None);
    }
    let info = object_info(paths, &meta);
    Ok(Some((file, info)))
}

/// Runs blocking file-system work off the async threads.
async fn blocking<T, F>(work: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StoreError::Io(io::Error::other(e)))?
}

/// Copies `body` into `file`, hashing it; returns (size, hex SHA-256).
async fn write_body(
    file: &mut tokio::fs::File,
    mut body: ByteStream,
) -> Result<(u64, String), StoreError> {
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(StoreError::Body)?;
        hasher.update(&chunk);
        size += chunk.len() as u64;
        file.write_all(&chunk).await?;
    }
    file.flush().await?;
    file.sync_all().await?;
    Ok((size, hex::encode(hasher.finalize())))
}

#[async_trait]
impl Store for FsStore {
    async fn put(
        &self,
        key: &str,
        body: ByteStream,
        opts: PutOptions,
    ) -> Result<ObjectInfo, StoreError> {
        let paths = self.paths(key)?;
        // The guard is created inside the blocking task: if this future is dropped before it
        // returns, the guard is dropped with the result and the temp file goes too.
        let (file, temp) = blocking({
            let paths = paths.clone();
            move || create_temp(&paths)
        })
        .await?;
        let mut file = tokio::fs::File::from_std(file);
        let (size, sha256) = write_body(&mut file, body).await?;
        drop(file);
        let sidecar = Sidecar {
            size,
            mtime_ns: 0,
            sha256: Some(sha256.clone()),
            content_type: opts.content_type.clone(),
            cache_control: opts.cache_control.clone(),
            content_disposition: opts.content_disposition.clone(),
            metadata: opts.metadata.clone(),
        };
        blocking(move || commit(&paths, temp, sidecar)).await?;
        Ok(ObjectInfo {
            key: key.to_string(),
            size,
            etag: Some(format!("\"{sha256}\"")),
            sha256: Some(sha256),
            content_type: opts.content_type,
            cache_control: opts.cache_control,
            content_disposition: opts.content_disposition,
            last_modified: Some(SystemTime::now()),
            metadata: opts.metadata,
        })
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        let paths = self.paths(key)?;
        let opened = blocking(move || open_object(&paths)).await?;
        Ok(opened.map(|(_, info)| info))
    }

    async fn get(
        &self,
        key: &str,
        range: Option<ByteRange>,
    ) -> Result<Option<GetObject>, StoreError> {
        let paths = self.paths(key)?;
        let Some((file, info)) = blocking(move || open_object(&paths)).await? else {
            return Ok(None);
        };
        let span = range.map(|r| r.resolve(info.size)).transpose()?;
        let mut file = tokio::fs::File::from_std(file);
        let (start, len) = match span {
            Some((start, end)) => (start, end - start + 1),
            None => (0, info.size),
        };
        if start > 0 {
            file.seek(io::SeekFrom::Start(start)).await?;
        }
        let reader = file.take(len);
        let body = tokio_util::io::ReaderStream::with_capacity(reader, READ_CHUNK).boxed();
        Ok(Some(GetObject {
            info,
            range: span,
            body,
        }))
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let paths = self.paths(key)?;
        blocking(move || {
            for path in [paths.object()?, paths.sidecar()] {
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        })
        .await
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxStream<'a, Result<ObjectInfo, StoreError>> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let store = self.clone();
        let prefix = prefix.to_string();
        // walkdir is blocking; a bounded channel keeps the walk at the reader's pace.
        tokio::task::spawn_blocking(move || store.walk(&prefix, &tx));
        tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
    }

    fn public_url(&self, key: &str) -> String {
        join_url(self.public_base(), key)
    }

    fn push_public_url(&self, key: &str, url: &mut String) {
        push_joined_url(url, self.public_base(), key);
    }
}

impl FsStore {
    /// Where public URLs point: `public_url` if set, else this proxy's serve prefix.
    fn public_base(&self) -> &str {
        match &self.public_url {
            Some(base) => base.as_str(),
            None => &self.serve_prefix,
        }
    }

    /// Sends every object under `prefix` to `tx` (in directory order), until done or the
    /// receiver is gone.
    fn walk(&self, prefix: &str, tx: &tokio::sync::mpsc::Sender<Result<ObjectInfo, StoreError>>) {
        let walker = walkdir::WalkDir::new(&self.objects)
            .follow_links(false)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|e| !e.file_name().to_string_lossy().starts_with(TEMP_PREFIX));
        for entry in walker {
            let item = match entry {
                Ok(entry) if entry.file_type().is_file() => self.listed(&entry, prefix),
                Ok(_) => None,
                Err(e) => Some(Err(StoreError::Io(io::Error::other(e)))),
            };
            if let Some(item) = item
                && tx.blocking_send(item).is_err()
            {
                return;
            }
        }
    }

    fn listed(
        &self,
        entry: &walkdir::DirEntry,
        prefix: &str,
    ) -> Option<Result<ObjectInfo, StoreError>> {
        let relative = entry.path().strip_prefix(&self.objects).ok()?;
        let key = relative
            .components()
            .map(|c| c.as_os_str().to_str())
            .collect::<Option<Vec<_>>>()?
            .join("/");
        if !key.starts_with(prefix) {
            return None;
        }
        let paths = self.paths(&key).ok()?;
        Some(
            entry
                .metadata()
                .map(|meta| object_info(&paths, &meta))
                .map_err(|e| StoreError::Io(io::Error::other(e))),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_that_cannot_be_made_is_named_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"").unwrap();
        let err = FsStore::new(file.join("data"), "/_offload/", None).unwrap_err();
        let chain = format!("{:#}", anyhow::Error::new(err));
        assert_eq!(
            chain,
            format!(
                "store i/o failed: store.root: creating {}: Not a directory (os error 20)",
                file.join("data/objects").display()
            )
        );
    }

    /// check-config's look at the root finds what opening the store would trip on, and
    /// creates nothing.
    #[test]
    fn a_root_is_checked_without_creating_it() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("a/b/data");
        FsStore::check_root(&fresh).unwrap();
        assert!(!dir.path().join("a").exists());
        FsStore::check_root(Path::new("relative-store-that-does-not-exist")).unwrap();

        let file = dir.path().join("a-file");
        std::fs::write(&file, b"").unwrap();
        let err = FsStore::check_root(&file.join("data")).unwrap_err();
        assert_eq!(
            format!("{:#}", anyhow::Error::new(err)),
            format!(
                "store i/o failed: store.root: creating {}: {} is not a folder",
                file.join("data/objects").display(),
                file.display()
            )
        );

        let meta_is_a_file = dir.path().join("store");
        std::fs::create_dir_all(meta_is_a_file.join("objects")).unwrap();
        std::fs::write(meta_is_a_file.join("meta"), b"").unwrap();
        let err = FsStore::check_root(&meta_is_a_file).unwrap_err();
        assert!(err.to_string().contains("meta is not a folder"), "{err}");
    }

    #[test]
    fn hostile_keys_are_refused() {
        for key in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/./b",
            "a//b",
            "a/",
            "a\\b",
            "a\0b",
            ".offload-tmp-1",
            "a/.offload-tmp-x/b",
        ] {
            assert!(
                matches!(key_segments(key), Err(StoreError::InvalidKey(_))),
                "{key:?}"
            );
        }
        assert_eq!(
            key_segments("a/b c/ü.jpg").unwrap(),
            vec!["a", "b c", "ü.jpg"]
        );
        assert!(key_segments(".hidden/..x/x..").is_ok());
    }
}
