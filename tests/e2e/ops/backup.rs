//! `offload backup` / `restore`: incremental, verified copies, metadata kept.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use offload::ops::{BackupOptions, MANIFEST_NAME, Manifest, RestoreOptions, backup, restore};
use offload::store::{ObjectInfo, PutOptions, Store};

use super::*;
use crate::support;

/// Objects with every kind of metadata, a non-ASCII key, and one multipart-sized object.
async fn populate(store: &dyn Store, prefix: &str) -> usize {
    let mut n = 0;
    for i in 0..40u64 {
        let (name, ct) = match i % 4 {
            0 => (format!("2024/05/photo-{i}.jpg"), "image/jpeg"),
            1 => (format!("docs/résumé-{i}.pdf"), "application/pdf"),
            2 => (format!("css/site-{i}.css"), "text/css"),
            _ => (format!("svg/icon-{i}.svg"), "image/svg+xml"),
        };
        let mut metadata = BTreeMap::new();
        metadata.insert("origin".to_string(), format!("test-{i}"));
        let opts = PutOptions {
            content_type: Some(ct.into()),
            cache_control: Some(format!("public, max-age={}", 60 + i)),
            content_disposition: (i % 4 == 3).then(|| "attachment".to_string()),
            metadata,
            size_hint: None,
        };
        put_bytes(
            store,
            &format!("{prefix}{name}"),
            pseudo_random(i, 100 + 50 * i as usize),
            opts,
        )
        .await;
        n += 1;
    }
    let big = pseudo_random(99, 6 * 1024 * 1024 + 123);
    let opts = PutOptions {
        content_type: Some("video/mp4".into()),
        ..PutOptions::default()
    };
    put_bytes(store, &format!("{prefix}video/big.mp4"), big, opts).await;
    n + 1
}

async fn put_bytes(store: &dyn Store, key: &str, bytes: Vec<u8>, opts: PutOptions) {
    // Streamed in 64 KiB chunks, as real bodies arrive.
    let chunks: Vec<std::io::Result<Bytes>> = bytes
        .chunks(64 * 1024)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    store
        .put(key, futures_util::stream::iter(chunks).boxed(), opts)
        .await
        .expect("put");
}

/// What must survive a round trip: bytes (by hash) and metadata, by key relative to prefix.
async fn snapshot(store: &dyn Store, prefix: &str) -> BTreeMap<String, ObjectInfo> {
    let mut out = BTreeMap::new();
    for key in list_all(store, prefix).await.into_keys() {
        let mut info = store.head(&key).await.unwrap().unwrap();
        let bytes = read_object(store, &key).await;
        assert_eq!(
            info.sha256.as_deref(),
            Some(sha256_hex(&bytes).as_str()),
            "{key}"
        );
        let rel = key.strip_prefix(prefix).unwrap().to_string();
        // What may differ between stores and copies: the key's prefix, ETag, time.
        info.key = rel.clone();
        info.etag = None;
        info.last_modified = None;
        out.insert(rel, info);
    }
    out
}

fn opts_b() -> BackupOptions {
    BackupOptions {
        jobs: 4,
        progress: false,
        source_name: "test".into(),
    }
}

fn opts_r() -> RestoreOptions {
    RestoreOptions {
        jobs: 4,
        progress: false,
    }
}

async fn roundtrip(source: Arc<dyn Store>, empty: Arc<dyn Store>) {
    let n = populate(source.as_ref(), "site/").await;
    let work = tempfile::tempdir().unwrap();
    let backup_dir = fs_store(work.path());

    let first = backup(source.clone(), "site/", backup_dir.clone(), "", opts_b())
        .await
        .unwrap();
    assert!(first.is_success(), "{first}");
    assert_eq!((first.copied as usize, first.skipped), (n, 0), "{first}");
    let second = backup(source.clone(), "site/", backup_dir.clone(), "", opts_b())
        .await
        .unwrap();
    assert_eq!(
        (second.copied, second.skipped as usize),
        (0, n),
        "incremental: {second}"
    );

    let manifest_bytes = read_object(backup_dir.as_ref(), MANIFEST_NAME).await;
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes).unwrap();
    assert_eq!(manifest.objects.len(), n);
    assert_eq!((manifest.copied, manifest.skipped as usize), (0, n));

    let restored = restore(backup_dir, "", empty.clone(), "restored/", opts_r())
        .await
        .unwrap();
    assert!(restored.is_success(), "{restored}");
    assert_eq!(restored.copied as usize, n);
    let want = snapshot(source.as_ref(), "site/").await;
    let got = snapshot(empty.as_ref(), "restored/").await;
    assert_eq!(
        got, want,
        "objects or metadata differ after backup and restore"
    );
    for (rel, entry) in &manifest.objects {
        assert_eq!(
            Some(entry.sha256.clone().unwrap()),
            want[rel].sha256,
            "{rel}"
        );
    }
}

#[tokio::test]
async fn fs_to_dir_to_fs_roundtrip_is_identical() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    roundtrip(fs_store(a.path()), fs_store(b.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_to_dir_to_s3_roundtrip_is_identical() {
    let source = support::s3::start().await;
    let target = support::s3::start().await;
    let source_store: Arc<dyn Store> = Arc::new(source.target().store().await);
    let target_store: Arc<dyn Store> = Arc::new(target.target().store().await);
    roundtrip(source_store, target_store).await;
}

/// Through the binary: S3 → s3://bucket/prefix (credentials from the AWS chain) → restored
/// into a folder store, and a corrupted backup object fails the restore and is named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_backup_to_a_bucket_and_restore() {
    let server = support::s3::start().await;
    let t = server.target();
    let store: Arc<dyn Store> = Arc::new(t.store().await);
    let n = populate(store.as_ref(), "site/").await;
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("s3.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\nkind = \"s3\"\nbucket = {:?}\nendpoint = {:?}\npath_style = true\nprefix = \"site/\"\n",
            t.bucket, t.endpoint
        ),
    )
    .unwrap();
    let env = [
        ("AWS_ACCESS_KEY_ID", t.access_key.as_str()),
        ("AWS_SECRET_ACCESS_KEY", t.secret_key.as_str()),
        ("AWS_REGION", "us-east-1"),
    ];
    let to = format!("s3://{}/backups/monday", t.bucket);
    let cfg = config.to_str().unwrap();

    let out = run_offload(&["backup", "--config", cfg, "--to", &to], &env);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("backup: copied {n} objects")),
        "{}",
        text(&out)
    );
    let out = run_offload(&["backup", "--config", cfg, "--to", &to], &env);
    assert!(
        text(&out).contains("backup: copied 0 objects"),
        "{}",
        text(&out)
    );
    assert!(
        store
            .head(&format!("backups/monday/{MANIFEST_NAME}"))
            .await
            .unwrap()
            .is_some()
    );

    let restored_root = work.path().join("restored");
    let fs_cfg = fs_config(work.path(), &restored_root, "site/");
    let out = run_offload(
        &[
            "restore",
            "--config",
            fs_cfg.to_str().unwrap(),
            "--from",
            &to,
        ],
        // The fs config names no S3 endpoint nor key: the backup bucket's come from here.
        &[
            ("OFFLOAD_BACKUP_ENDPOINT", t.endpoint.as_str()),
            ("OFFLOAD_BACKUP_PATH_STYLE", "true"),
            ("OFFLOAD_BACKUP_ACCESS_KEY_ID", t.access_key.as_str()),
            ("OFFLOAD_BACKUP_SECRET_ACCESS_KEY", t.secret_key.as_str()),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let restored = fs_store(&restored_root);
    assert_eq!(
        snapshot(restored.as_ref(), "site/").await,
        snapshot(store.as_ref(), "site/").await
    );
}

/// A backup object whose bytes were altered on disk (same size) is refused on restore: the
/// key is listed, nothing is written for it, the rest is restored.
#[tokio::test]
async fn corrupted_backup_is_detected_on_restore() {
    let src = tempfile::tempdir().unwrap();
    let source = fs_store(src.path());
    let n = populate(source.as_ref(), "").await;
    let work = tempfile::tempdir().unwrap();
    let backup_root = work.path().join("backup");
    let config = fs_config(work.path(), src.path(), "");
    let out = run_offload(
        &[
            "backup",
            "--config",
            config.to_str().unwrap(),
            "--to",
            backup_root.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));

    let victim = backup_root.join("objects/docs/résumé-1.pdf");
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&victim, bytes).unwrap();

    let restored_root = work.path().join("restored");
    let restore_cfg = work.path().join("restore.toml");
    std::fs::write(
        &restore_cfg,
        format!(
            "[store]\nkind = \"fs\"\nroot = {:?}\n",
            restored_root.display().to_string()
        ),
    )
    .unwrap();
    let out = run_offload(
        &[
            "restore",
            "--config",
            restore_cfg.to_str().unwrap(),
            "--from",
            backup_root.to_str().unwrap(),
        ],
        &[],
    );
    let printed = text(&out);
    assert_eq!(out.status.code(), Some(1), "{printed}");
    assert!(
        printed.contains("FAILED docs/résumé-1.pdf") && printed.contains("checksum mismatch"),
        "{printed}"
    );
    let restored = fs_store(&restored_root);
    let keys = list_all(restored.as_ref(), "").await;
    assert_eq!(keys.len(), n - 1);
    assert!(!keys.contains_key("docs/résumé-1.pdf"));
}
