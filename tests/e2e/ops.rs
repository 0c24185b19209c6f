//! `offload sync`, `backup`, `restore` and the files in `deploy/`, against real stores: a
//! folder (FsStore) and the in-process S3 server. Long operations run the real binary.

mod backup;
mod deploy;
mod sync;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use futures_util::TryStreamExt;
use offload::store::{FsStore, ObjectInfo, Store};
use sha2::{Digest, Sha256};

/// The built `offload` binary.
fn offload_bin() -> &'static str {
    env!("CARGO_BIN_EXE_offload")
}

/// Runs `offload ARGS` with `envs`, without inheriting `OFFLOAD_*`/`AWS_*` from the test's
/// own environment.
fn run_offload(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(offload_bin());
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("OFFLOAD_") || k.starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(envs.iter().copied());
    cmd.output().expect("running offload")
}

fn text(output: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// An FsStore rooted at `root`.
fn fs_store(root: &Path) -> Arc<dyn Store> {
    Arc::new(FsStore::new(root, "/_offload/", None).expect("fs store"))
}

/// A config file for an fs store at `root` with key prefix `prefix`.
fn fs_config(dir: &Path, root: &Path, prefix: &str) -> PathBuf {
    let path = dir.join("proxy.toml");
    let text = format!(
        "preset = \"wordpress\"\n[store]\nkind = \"fs\"\nroot = {root:?}\nprefix = {prefix:?}\n\
         cache_control = \"public, max-age=600\"\n",
        root = root.display().to_string(),
    );
    std::fs::write(&path, text).expect("writing config");
    path
}

/// Every object under `prefix`, by key.
async fn list_all(store: &dyn Store, prefix: &str) -> BTreeMap<String, ObjectInfo> {
    store
        .list(prefix)
        .map_ok(|o| (o.key.clone(), o))
        .try_collect()
        .await
        .expect("listing")
}

/// The object's bytes.
async fn read_object(store: &dyn Store, key: &str) -> Vec<u8> {
    let object = store
        .get(key, None)
        .await
        .expect("get")
        .expect("object present");
    let chunks: Vec<bytes::Bytes> = object.body.try_collect().await.expect("body");
    chunks.concat()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Size and SHA-256 of a local file, streamed.
fn file_sha256(path: &Path) -> (u64, String) {
    let mut file = std::fs::File::open(path).expect("open");
    let mut hasher = Sha256::new();
    let size = std::io::copy(&mut file, &mut hasher).expect("read");
    (size, hex::encode(hasher.finalize()))
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
