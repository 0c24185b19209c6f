//! Real PHP apps for the end-to-end tests: the WordPress that `scripts/e2e/wordpress-up.sh`
//! starts (state file named by `OFFLOAD_TEST_WORDPRESS`, exported by `scripts/test.sh`), and
//! PHP's built-in server, which comes with the same packages.
//!
//! Without `OFFLOAD_TEST_WORDPRESS` these tests print why they are skipped and pass, unless
//! `OFFLOAD_REQUIRE_WORDPRESS=1` (set by `scripts/test.sh` when it started WordPress): then
//! they fail.
//!
//! offload reads its S3 credentials from the AWS chain; [`offload`] sets
//! `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` once per process to fixed test values and
//! [`s3_server`] starts the in-process S3 server with the same pair, so every test's value is
//! the same whichever runs first.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use offload::config::Config;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::Proxy;
use super::s3::{self, S3Server};

/// PHP's built-in server on a free 127.0.0.1 port, serving `root` through `router` (if
/// any), with `env` set; killed when the child is dropped.
pub async fn built_in_server(
    root: &Path,
    router: Option<&Path>,
    env: &[(&str, &std::ffi::OsStr)],
) -> (SocketAddr, tokio::process::Child) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("its address")
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    let mut command = tokio::process::Command::new("php");
    command.arg("-S").arg(addr.to_string()).arg("-t").arg(root);
    if let Some(router) = router {
        command.arg(router);
    }
    let child = command
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("php -S (installed by scripts/e2e/wordpress-up.sh)");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "php -S did not listen on {addr}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    (addr, child)
}

/// The public base rewritten URLs point at (a CDN in front of the bucket, say).
pub const PUBLIC_BASE: &str = "http://cdn.test.invalid/bucket/";

const ACCESS_KEY: &str = "AKWORDPRESSE2E";
const SECRET_KEY: &str = "wordpress-e2e-secret";

/// Whether the PHP-backed tests run; prints why not. Panics when they are required.
pub fn enabled(test: &str) -> bool {
    if std::env::var_os("OFFLOAD_TEST_WORDPRESS").is_some_and(|v| !v.is_empty()) {
        return true;
    }
    if std::env::var("OFFLOAD_REQUIRE_WORDPRESS").as_deref() == Ok("1") {
        panic!("{test}: OFFLOAD_REQUIRE_WORDPRESS=1 but OFFLOAD_TEST_WORDPRESS is not set");
    }
    eprintln!("{test}: skipped: WordPress not running (scripts/test.sh starts it)");
    false
}

/// The running WordPress, as its state file describes it.
pub struct WordPress {
    pub state_file: PathBuf,
    vars: HashMap<String, String>,
}

impl WordPress {
    /// The WordPress of `OFFLOAD_TEST_WORDPRESS`, or `None` (after saying so) when the tests
    /// are to be skipped.
    pub fn from_env(test: &str) -> Option<WordPress> {
        if !enabled(test) {
            return None;
        }
        let state_file = PathBuf::from(std::env::var_os("OFFLOAD_TEST_WORDPRESS").unwrap());
        let text = std::fs::read_to_string(&state_file)
            .unwrap_or_else(|e| panic!("reading {}: {e}", state_file.display()));
        let vars = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        Some(WordPress { state_file, vars })
    }

    pub fn var(&self, name: &str) -> &str {
        self.vars
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing in {}", self.state_file.display()))
    }

    /// Web server `i`'s address (1-based).
    pub fn addr(&self, i: usize) -> SocketAddr {
        let url = self.var(&format!("WP_{i}_URL"));
        url.trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .expect("WP_i_URL is http://IP:PORT")
    }

    pub fn url(&self, i: usize) -> String {
        self.var(&format!("WP_{i}_URL")).to_string()
    }

    pub fn uploads_dir(&self, i: usize) -> PathBuf {
        PathBuf::from(self.var(&format!("WP_{i}_UPLOADS_DIR")))
    }

    /// Runs `scripts/e2e/wp_client.py ARGS` with this site's state file; its JSON output.
    /// Panics (with its stderr) when it fails.
    pub async fn client(&self, args: &[&str]) -> Value {
        let out = tokio::process::Command::new("python3")
            .arg(repo_root().join("scripts/e2e/wp_client.py"))
            .args(args)
            .arg("--state")
            .arg(&self.state_file)
            .output()
            .await
            .expect("running python3 scripts/e2e/wp_client.py");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "wp_client.py {args:?} failed ({}):\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("wp_client.py {args:?}: not JSON ({e}): {stdout}"))
    }
}

/// The repository's root (for scripts and test apps).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// An in-process S3 server signing with the credentials [`offload`] puts in the environment.
pub async fn s3_server() -> S3Server {
    s3::start_with_keys(ACCESS_KEY, SECRET_KEY).await
}

/// Sets the AWS credentials offload's store reads from the environment, once per process.
fn credentials_in_env() {
    static SET: OnceLock<()> = OnceLock::new();
    SET.get_or_init(|| {
        // SAFETY: nextest runs each test in its own process; under `cargo test` every test
        // of this module sets the same two values, once, before its offload reads them.
        unsafe {
            std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
            std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
        }
    });
}

/// offload with `preset` in front of `app`, storing into `s3`'s bucket, rewriting to
/// [`PUBLIC_BASE`]; `extra` is more TOML appended to the config (top-level keys excluded).
pub async fn offload(preset: &str, app: SocketAddr, s3: &S3Server, extra: &str) -> Proxy {
    credentials_in_env();
    let text = format!(
        r#"
preset = "{preset}"

[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[upstream]
url = "http://{app}"

[store]
kind = "s3"
bucket = "{bucket}"
region = "us-east-1"
endpoint = "{endpoint}"
path_style = true
public_url = "{PUBLIC_BASE}"
max_attempts = 2
{extra}
"#,
        bucket = s3.bucket,
        endpoint = s3.endpoint(),
    );
    let config = Config::from_toml_with_env(&text, &BTreeMap::new()).expect("test config");
    Proxy::start(config).await
}

/// Every object in `s3`'s bucket: key → hex SHA-256 of its bytes.
pub async fn bucket_objects(s3: &S3Server) -> BTreeMap<String, String> {
    use futures_util::TryStreamExt;
    use offload::store::Store;
    let store = s3.target().store().await;
    let infos: Vec<_> = store.list("").try_collect().await.expect("list the bucket");
    let mut out = BTreeMap::new();
    for info in infos {
        let object = store
            .get(&info.key, None)
            .await
            .expect("get")
            .expect("listed object exists");
        let bytes: Vec<bytes::Bytes> = object.body.try_collect().await.expect("object body");
        out.insert(info.key, sha256(&bytes.concat()));
    }
    out
}

pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn file_sha256(path: &Path) -> String {
    sha256(&std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display())))
}

/// A fresh name for this test's upload (the database is shared by every test and run).
pub fn unique_name(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{test}-{}-{:x}", std::process::id(), nanos % (1 << 40))
}
