//! A real S3 server for tests: s3s-fs in-process, on 127.0.0.1:0, storing into a temp dir,
//! checking SigV4 with its own access key. Plus, when `OFFLOAD_TEST_S3_ENDPOINT` (and
//! `…_ACCESS_KEY`, `…_SECRET_KEY`, `…_BUCKET`) are set, a second, external server
//! (`scripts/test-servers/moto.sh start` prints them).
//!
//! ```ignore
//! let server = support::s3::start().await;
//! let store = server.target().store().await;   // an S3Store on it
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytesize::ByteSize;
use hyper_util::rt::TokioIo;
use offload::config::{StoreConfig, StoreKind};
use offload::store::S3Store;
use s3s::auth::SimpleAuth;
use s3s::service::{S3Service, S3ServiceBuilder};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// Where an S3-compatible server is and how to sign for it.
#[derive(Debug, Clone)]
pub struct S3Target {
    /// `s3s-fs` or `external`.
    pub name: &'static str,
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub bucket: String,
    /// Every key a test writes starts with this (unique per run: external buckets persist).
    pub key_prefix: String,
}

impl S3Target {
    /// A store config for this target: path-style, 5 MiB parts.
    pub fn store_config(&self) -> StoreConfig {
        StoreConfig {
            kind: StoreKind::S3,
            bucket: self.bucket.clone(),
            region: "us-east-1".into(),
            endpoint: Some(self.endpoint.parse().expect("endpoint URL")),
            path_style: true,
            part_size: ByteSize::mib(5),
            max_attempts: 2,
            ..StoreConfig::default()
        }
    }

    /// An [`S3Store`] on this target with its credentials and `cfg`.
    pub async fn store_with(&self, cfg: &StoreConfig) -> S3Store {
        S3Store::with_credentials(cfg, &self.access_key, &self.secret_key)
            .await
            .expect("S3Store")
    }

    /// An [`S3Store`] on this target, configured by [`S3Target::store_config`].
    pub async fn store(&self) -> S3Store {
        self.store_with(&self.store_config()).await
    }

    /// `key_prefix` + `name`.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.key_prefix)
    }
}

/// An in-process s3s-fs server. Dropping it stops it.
pub struct S3Server {
    pub addr: SocketAddr,
    pub access_key: String,
    pub secret_key: String,
    pub bucket: String,
    /// The server's data folder: buckets are folders in it; in-progress multipart uploads
    /// leave `.upload*` files at its top.
    pub root: PathBuf,
    dir: TempDir,
    task: Option<JoinHandle<()>>,
}

static SERVERS: AtomicU64 = AtomicU64::new(0);

/// Starts an s3s-fs server on 127.0.0.1:0 with a fresh temp dir, a bucket `test-bucket` and
/// its own access key and secret.
pub async fn start() -> S3Server {
    let n = SERVERS.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    start_with_keys(&format!("AKTEST{n:04}"), &format!("secret-{nanos:x}-{n}")).await
}

/// Like [`start`], with the given access key and secret (for an offload that reads its
/// credentials from the AWS chain, i.e. the environment).
pub async fn start_with_keys(access_key: &str, secret_key: &str) -> S3Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().to_path_buf();
    let bucket = "test-bucket".to_string();
    std::fs::create_dir(root.join(&bucket)).expect("bucket folder");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let mut server = S3Server {
        addr: listener.local_addr().expect("local addr"),
        access_key: access_key.to_string(),
        secret_key: secret_key.to_string(),
        bucket,
        root,
        dir,
        task: None,
    };
    server.task = Some(tokio::spawn(serve(listener, server.service())));
    server
}

impl S3Server {
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// This server as a test target.
    pub fn target(&self) -> S3Target {
        S3Target {
            name: "s3s-fs",
            endpoint: self.endpoint(),
            access_key: self.access_key.clone(),
            secret_key: self.secret_key.clone(),
            bucket: self.bucket.clone(),
            key_prefix: String::new(),
        }
    }

    fn service(&self) -> S3Service {
        let fs = s3s_fs::FileSystem::new(&self.root).expect("s3s-fs root");
        let mut builder = S3ServiceBuilder::new(fs);
        builder.set_auth(SimpleAuth::from_single(
            self.access_key.clone(),
            self.secret_key.clone(),
        ));
        builder.build()
    }

    /// Stops listening and drops every open connection at once (requests in flight fail).
    pub fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Starts again on the same address, with the same data.
    pub async fn restart(&mut self) {
        self.stop();
        let listener = TcpListener::bind(self.addr).await.expect("rebind");
        self.task = Some(tokio::spawn(serve(listener, self.service())));
    }

    /// Files at the top of the data folder left by multipart uploads never completed nor
    /// aborted (s3s-fs does not implement ListMultipartUploads).
    pub fn leftover_uploads(&self) -> Vec<String> {
        leftover_uploads(&self.root)
    }

    /// The temp dir holding the data (kept alive as long as the server).
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn leftover_uploads(root: &Path) -> Vec<String> {
    std::fs::read_dir(root)
        .expect("read data dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(".upload"))
        .collect()
}

/// Accepts connections until aborted; connections live in a JoinSet so that aborting this
/// task closes them too.
async fn serve(listener: TcpListener, service: S3Service) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            continue;
        };
        // Without it, responses on reused connections stall ~40 ms (Nagle + delayed ACK).
        let _ = socket.set_nodelay(true);
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(socket), service.clone());
        connections.spawn(async move {
            let _ = conn.await;
        });
        while connections.try_join_next().is_some() {}
    }
}

/// The external server named by `OFFLOAD_TEST_S3_*`, if set.
pub fn external() -> Option<S3Target> {
    let var = |name: &str| std::env::var(format!("OFFLOAD_TEST_S3_{name}")).ok();
    let endpoint = var("ENDPOINT").filter(|e| !e.is_empty())?;
    let run = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    Some(S3Target {
        name: "external",
        endpoint,
        access_key: var("ACCESS_KEY").expect("OFFLOAD_TEST_S3_ACCESS_KEY"),
        secret_key: var("SECRET_KEY").expect("OFFLOAD_TEST_S3_SECRET_KEY"),
        bucket: var("BUCKET").expect("OFFLOAD_TEST_S3_BUCKET"),
        key_prefix: format!("offload-test-{run:x}/"),
    })
}
