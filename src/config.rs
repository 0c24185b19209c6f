//! Typed configuration: TOML file → environment overrides → presets → validation.
//!
//! Loading happens in three steps, each with errors that name the key:
//! 1. the file is parsed as a TOML table and every `OFFLOAD_<SECTION>_<KEY>` variable is laid
//!    over it (`env`: values are read as TOML when they parse, as strings otherwise);
//! 2. the table is deserialized into [`Config`] with `deny_unknown_fields` (an unknown key is
//!    refused with the nearest valid one), typed values (addresses, URLs, sizes, durations)
//!    parsed on the way; a variable's value read as TOML into a number or a boolean where
//!    the key takes a string is taken as the string;
//! 3. a preset fills in what it implies, then [`Config::validate`] checks what types cannot.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use bytesize::ByteSize;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use url::Url;

mod env;

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `wordpress` or `joomla`: fills in upload routes and asset prefixes.
    pub preset: Option<Preset>,
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub store: StoreConfig,
    pub assets: AssetsConfig,
    pub rewrite: RewriteConfig,
    pub uploads: Vec<UploadRouteConfig>,
    pub log: LogConfig,
    /// Which `OFFLOAD_*` variables set which keys, to name them in the errors of what is
    /// checked once the configuration is loaded (files read, the store opened).
    #[serde(skip)]
    set_by: env::EnvKeys,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    Wordpress,
    Joomla,
}

/// `[server]`: the public listener and the admin listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    #[serde(with = "addr")]
    pub listen: SocketAddr,
    /// `/healthz`, `/readyz`, `/metrics`; `"off"` disables it.
    #[serde(with = "opt_addr")]
    pub admin_listen: Option<SocketAddr>,
    pub tls: Option<TlsConfig>,
    /// Serve HTTP/2 (ALPN `h2` on TLS, prior knowledge on plain TCP) besides HTTP/1.1.
    pub http2: bool,
    /// HTTP/2 streams one connection may have open at once (nginx's
    /// `http2_max_concurrent_streams`); each may hold a connection to the app.
    pub http2_max_concurrent_streams: u32,
    /// Requests one client connection may carry (HTTP/1.1 keep-alive requests, HTTP/2
    /// streams), as nginx's `keepalive_requests`: then the connection is closed gracefully
    /// and the client opens another. Bounds what one HTTP/2 connection can have the app do
    /// by opening streams and resetting them (rapid reset, CVE-2023-44487).
    pub keepalive_requests: u64,
    /// A client must send its whole request head within this time (slowloris defence).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// How long a request body, an answer or an idle connection may stand still: 408 for a
    /// body the client stops sending, 504 for one the app stops reading, a cut for an
    /// answer, a graceful close between requests (see `server::idle`).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// On SIGTERM/SIGINT, requests in flight get this long to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// On SIGTERM/SIGINT, first keep serving this long with `/readyz` failing, so that a
    /// load balancer takes the server out before it stops accepting.
    #[serde(with = "humantime_serde")]
    pub shutdown_delay: Duration,
    /// Largest request head (request line + headers) accepted.
    #[serde(
        serialize_with = "exact_size::serialize",
        deserialize_with = "exact_size::deserialize"
    )]
    pub max_header_size: ByteSize,
    /// Most headers accepted in one request.
    pub max_headers: usize,
    /// Largest request body accepted, as nginx's `client_max_body_size`: a larger declared
    /// length gets `413` before anything reaches the app, a longer chunked body is cut with
    /// `413` when it gets there. `None` (the default): no limit, as the app has its own.
    #[serde(
        serialize_with = "exact_size::option",
        deserialize_with = "exact_size::deserialize_option"
    )]
    pub max_body_size: Option<ByteSize>,
    /// Peers whose `X-Forwarded-*`/`Forwarded` headers are kept and extended; from anyone else
    /// they are replaced. Networks, or single addresses (as nginx's `set_real_ip_from`).
    #[serde(with = "nets")]
    pub trusted_proxies: Vec<IpNet>,
    /// Worker threads serving requests, each with an event loop and app connections of its
    /// own (like nginx's worker processes): 0 = one per CPU core. See `server::workers`.
    pub worker_threads: usize,
    /// Most client connections open at once, all workers together, as nginx's
    /// `worker_connections`: past it, new ones wait in the listen backlog. 0: what the
    /// open-file limit leaves room for (see `server::limits`).
    pub max_connections: usize,
    /// Every connection to `listen` and `tls.listen` (not the admin listener; `tls.listen`
    /// unless `tls.proxy_protocol` says otherwise) begins with a PROXY protocol header (v1 or
    /// v2), whose source address is the client's, as nginx's `listen … proxy_protocol`
    /// behind a TCP load balancer. A connection without one is closed.
    pub proxy_protocol: bool,
    /// A header (e.g. `X-Request-ID`) that carries each request's ID to the app and back to
    /// the client, and into its access log line; one from a trusted proxy is kept. `None`:
    /// no IDs.
    pub request_id_header: Option<String>,
}

impl ServerConfig {
    /// `max_body_size` in bytes; `None`: no limit.
    pub fn max_body_bytes(&self) -> Option<u64> {
        self.max_body_size.map(|max| max.as_u64())
    }

    /// Whether connections to `tls.listen` begin with a PROXY protocol header:
    /// `tls.proxy_protocol`, else `proxy_protocol`.
    pub fn tls_proxy_protocol(&self) -> bool {
        self.tls
            .as_ref()
            .and_then(|tls| tls.proxy_protocol)
            .unwrap_or(self.proxy_protocol)
    }

    /// How many worker threads serve requests: `worker_threads`, or one per CPU core.
    pub fn workers(&self) -> usize {
        match self.worker_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
            tls: None,
            http2: true,
            http2_max_concurrent_streams: 128,
            keepalive_requests: 1000,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
            shutdown_delay: Duration::ZERO,
            max_header_size: ByteSize::kib(64),
            max_headers: 100,
            max_body_size: None,
            trusted_proxies: Vec::new(),
            worker_threads: 0,
            max_connections: 0,
            proxy_protocol: false,
            request_id_header: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Serve TLS on this address and plain HTTP on `server.listen` (as nginx's `listen 443
    /// ssl` beside `listen 80`); `None`: TLS on `server.listen` alone.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// With `listen`: answer requests on the plain listener with a `308` to the same URL on
    /// HTTPS, but for ACME's HTTP-01 challenges (`/.well-known/acme-challenge/`), which
    /// still reach the app (certbot's webroot).
    #[serde(default)]
    pub redirect_http: bool,
    /// With `listen`: whether connections to the TLS listener begin with a PROXY protocol
    /// header, when that differs from the plain listener's (`server.proxy_protocol`), as
    /// nginx's `proxy_protocol` is per `listen`: haproxy passing 443 through in TCP mode
    /// (`send-proxy`) while it speaks HTTP to port 80 (`X-Forwarded-For`). `None`: as
    /// `server.proxy_protocol`.
    #[serde(default)]
    pub proxy_protocol: Option<bool>,
}

/// `[upstream]`: the app behind the proxy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    pub url: Url,
    /// Opening a connection to the app (TCP connect, TLS handshake); past it: `504` (a
    /// refused connection: `502`).
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time allowed for the app to start answering (response head); past it: `504`.
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
    /// A WebSocket tunnel with nothing moving either way for this long is closed (nginx's
    /// `proxy_read_timeout` for an upgraded connection).
    #[serde(with = "humantime_serde")]
    pub websocket_idle_timeout: Duration,
    /// Idle pooled connections to the app are closed after this long.
    #[serde(with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    /// Most idle keep-alive connections kept to the app, per worker thread.
    pub pool_max_idle: usize,
    /// Most requests at the app at once, over all workers (0: no limit). A request past it
    /// waits up to `connect_timeout` for one to finish, then gets `503`.
    pub max_connections: usize,
    /// Send the client's `Host` to the app (true) or the upstream URL's host (false).
    pub preserve_host: bool,
    /// PEM certificates trusted for an `https://` app, besides the system's roots (a private
    /// CA, or the app's own self-signed certificate).
    pub tls_ca_file: Option<PathBuf>,
    /// Reach the app on this Unix socket instead of `url`'s host and port (which still give
    /// the `Host` sent when `preserve_host` is off, and `url`'s path still prefixes requests).
    pub unix_socket: Option<PathBuf>,
    /// `/readyz` asks the app for this path (a GET) and is ready when it answers below 500
    /// within 2 s; `None`: a connection opened is enough.
    pub ready_path: Option<String>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            url: Url::parse("http://127.0.0.1:8000").unwrap_or_else(|_| unreachable!()),
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(60),
            websocket_idle_timeout: Duration::from_secs(60),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle: 256,
            max_connections: 0,
            preserve_host: true,
            tls_ca_file: None,
            unix_socket: None,
            ready_path: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// A local folder: the embedded default for development and single servers.
    Fs,
    /// S3 or any S3-compatible store.
    S3,
}

/// `[store]`: where offloaded bytes live.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub kind: StoreKind,
    /// fs: the folder objects are kept in.
    pub root: PathBuf,
    /// fs: the URL path under which offload serves the folder itself.
    pub serve_prefix: String,
    /// s3: the bucket.
    pub bucket: String,
    /// s3: the region (S3-compatible stores usually accept `us-east-1`).
    pub region: String,
    /// s3: a custom endpoint for S3-compatible stores; omit for AWS.
    pub endpoint: Option<Url>,
    /// s3: path-style addressing (`endpoint/bucket/key`), which most S3-compatible stores need.
    pub path_style: bool,
    /// Key prefix inside the bucket or folder, e.g. `site-a/`.
    pub prefix: String,
    /// Where rewritten URLs point: a CDN or custom domain. Default: the bucket's own URL (s3),
    /// or `serve_prefix` on this proxy (fs).
    pub public_url: Option<Url>,
    /// s3: size of one multipart part; a stream that fits in one part is a single PutObject.
    #[serde(
        serialize_with = "exact_size::serialize",
        deserialize_with = "exact_size::deserialize"
    )]
    pub part_size: ByteSize,
    /// s3: parts uploaded concurrently per stream (memory ≈ part_size × parts_in_flight).
    pub parts_in_flight: usize,
    /// s3: storage class, e.g. `STANDARD_IA`.
    pub storage_class: Option<String>,
    /// s3: server-side encryption: `AES256` or `aws:kms`.
    pub sse: Option<String>,
    /// s3: the KMS key id when `sse = "aws:kms"`.
    pub sse_kms_key_id: Option<String>,
    /// s3: attempts per request, with exponential backoff.
    pub max_attempts: u32,
    /// s3: how long an attempt may wait for the store's answer to begin, from when the
    /// request is sent (a part's upload counts its sending too); then it is retried.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// `Cache-Control` stored with objects that come without one.
    pub cache_control: String,
    /// Presence cache: most keys remembered.
    pub cache_capacity: u64,
    /// Presence cache: how long a key known present is trusted.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// Presence cache: how long a key known absent is trusted (short: another replica may
    /// offload it any moment).
    #[serde(with = "humantime_serde")]
    pub cache_absent_ttl: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            kind: StoreKind::Fs,
            root: PathBuf::from("./offload-data"),
            serve_prefix: "/_offload/".into(),
            bucket: String::new(),
            region: "us-east-1".into(),
            endpoint: None,
            path_style: false,
            prefix: String::new(),
            public_url: None,
            part_size: ByteSize::mib(8),
            parts_in_flight: 4,
            storage_class: None,
            sse: None,
            sse_kms_key_id: None,
            max_attempts: 3,
            request_timeout: Duration::from_secs(60),
            cache_control: "public, max-age=31536000".into(),
            cache_capacity: 100_000,
            cache_ttl: Duration::from_secs(3600),
            cache_absent_ttl: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MissingAsset {
    /// Serve the object from the store, streamed.
    Store,
    /// Redirect (302) to the object's public URL.
    Redirect,
    /// Pass the app's 404 through.
    Off,
}

/// `[assets]`: which URLs are managed assets, and what happens on the app's 404.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AssetsConfig {
    /// URL path prefixes of managed assets, e.g. `/wp-content/uploads/`.
    pub prefixes: Vec<String>,
    /// Origins that count as this site in absolute URLs (the request's own origin always does).
    pub site_origins: Vec<Url>,
    pub missing: MissingAsset,
    /// Rewrite every managed URL without asking the store (for sites already synced).
    pub assume_present: bool,
    /// Copy assets the store lacks from the app in the background when a page names them.
    pub origin_pull: bool,
    /// Origin pulls running at once.
    pub pull_concurrency: usize,
    /// Largest asset copied by origin pull.
    #[serde(
        serialize_with = "exact_size::serialize",
        deserialize_with = "exact_size::deserialize"
    )]
    pub pull_max_size: ByteSize,
    /// Content types origin pull copies (a trailing `/` matches a whole family).
    pub pull_types: Vec<String>,
}

impl Default for AssetsConfig {
    fn default() -> Self {
        AssetsConfig {
            prefixes: Vec::new(),
            site_origins: Vec::new(),
            missing: MissingAsset::Store,
            assume_present: false,
            origin_pull: true,
            pull_concurrency: 4,
            pull_max_size: ByteSize::mib(256),
            pull_types: [
                "image/",
                "video/",
                "audio/",
                "font/",
                "application/pdf",
                "application/zip",
                "text/css",
                "text/csv",
                "text/plain",
                "application/json",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

/// `[rewrite]`: which responses get their asset URLs rewritten.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewriteConfig {
    pub enabled: bool,
    /// Also rewrite JavaScript bodies and inline scripts.
    pub javascript: bool,
    /// Responses declaring a larger `Content-Length` pass untouched.
    #[serde(
        serialize_with = "exact_size::serialize",
        deserialize_with = "exact_size::deserialize"
    )]
    pub max_size: ByteSize,
}

impl Default for RewriteConfig {
    fn default() -> Self {
        RewriteConfig {
            enabled: true,
            javascript: false,
            max_size: ByteSize::mib(64),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UploadMode {
    /// The app gets the request unchanged; file parts are teed into the store.
    Mirror,
    /// File parts are stored and replaced by text fields describing them.
    Replace,
    /// The proxy answers itself with JSON describing the stored files.
    Respond,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStoreError {
    /// Answer 502/503; the app never sees the request.
    Reject,
    /// Forward the request to the app anyway.
    Forward,
}

/// `[[uploads]]`: one upload route.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadRouteConfig {
    /// Exact path, or a glob such as `/api/*/files`.
    pub path: String,
    /// Query parameters (`name=value`, all of them) the request must carry, e.g.
    /// `["option=com_media", "task=file.upload"]`; empty matches any query.
    pub query: Vec<String>,
    pub methods: Vec<String>,
    pub mode: UploadMode,
    /// Placeholders: {prefix} {yyyy} {mm} {dd} {uuid} {filename} {ext}.
    pub key_template: String,
    #[serde(
        serialize_with = "exact_size::serialize",
        deserialize_with = "exact_size::deserialize"
    )]
    pub max_file_size: ByteSize,
    #[serde(
        serialize_with = "exact_size::serialize",
        deserialize_with = "exact_size::deserialize"
    )]
    pub max_body_size: ByteSize,
    pub max_parts: usize,
    #[serde(
        serialize_with = "exact_size::serialize",
        deserialize_with = "exact_size::deserialize"
    )]
    pub max_field_size: ByteSize,
    /// Largest total of a request's text fields that offload keeps to pass on (replace) or
    /// answer with (respond), as PHP's `post_max_size`; mirror keeps none.
    #[serde(
        serialize_with = "exact_size::serialize",
        deserialize_with = "exact_size::deserialize"
    )]
    pub max_fields_size: ByteSize,
    /// Extensions accepted (empty: any not denied), lowercase without the dot.
    pub allowed_extensions: Vec<String>,
    /// Extensions refused; default: server-executable types.
    pub denied_extensions: Vec<String>,
    /// Content types accepted (empty: any); a trailing `/` matches a family.
    pub allowed_types: Vec<String>,
    /// Types stored without `Content-Disposition: attachment` though a browser would run them.
    pub inline_types: Vec<String>,
    pub on_store_error: OnStoreError,
    /// replace: how the fields describing a stored file are named: `brackets` (`NAME[key]`)
    /// or `underscore` (`NAME_key`).
    pub field_style: FieldStyle,
    /// mirror: after the app's 2xx, also GET this path from the app (with the uploader's
    /// cookies) and copy the assets it names; `{id}` is the `id` or `data.id` of the app's
    /// JSON answer. The wordpress preset sets `/wp-json/wp/v2/media/{id}` for
    /// async-upload.php, whose answer names four of an image's six files.
    pub follow: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldStyle {
    Brackets,
    Underscore,
}

/// Extensions of files a web server may execute: never accepted by default.
pub const SERVER_EXECUTABLE_EXTENSIONS: &[&str] = &[
    "php", "php3", "php4", "php5", "php7", "phps", "pht", "phtml", "phar", "cgi", "pl", "py", "rb",
    "asp", "aspx", "ashx", "asmx", "jsp", "jspx", "sh", "bash", "exe", "dll", "htaccess", "shtml",
];

impl Default for UploadRouteConfig {
    fn default() -> Self {
        UploadRouteConfig {
            path: String::new(),
            query: Vec::new(),
            methods: vec!["POST".into(), "PUT".into()],
            mode: UploadMode::Mirror,
            key_template: "{prefix}uploads/{yyyy}/{mm}/{uuid}/{filename}".into(),
            max_file_size: ByteSize::mib(512),
            max_body_size: ByteSize::gib(1),
            max_parts: 100,
            max_field_size: ByteSize::mib(1),
            max_fields_size: ByteSize::mib(8),
            allowed_extensions: Vec::new(),
            denied_extensions: SERVER_EXECUTABLE_EXTENSIONS
                .iter()
                .map(|e| e.to_string())
                .collect(),
            allowed_types: Vec::new(),
            inline_types: Vec::new(),
            on_store_error: OnStoreError::Reject,
            field_style: FieldStyle::Brackets,
            follow: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `offload=debug,info`; `RUST_LOG` wins when set.
    pub level: String,
    /// Log request query strings. Off by default: queries can carry one-time secrets
    /// (password-reset keys, signed-URL signatures); the path alone is logged then.
    pub query: bool,
    /// Each worker thread gathers its lines in a buffer of this size and writes them out
    /// when it is full or the worker has nothing else to do (see `logging`); 0 writes each
    /// line as it comes.
    #[serde(
        serialize_with = "exact_size::serialize",
        deserialize_with = "exact_size::deserialize"
    )]
    pub buffer: ByteSize,
}

impl LogConfig {
    /// Most bytes a worker's line buffer may be set to hold.
    pub const MAX_BUFFER: ByteSize = ByteSize::mib(16);

    /// `buffer` in bytes.
    pub fn buffer_bytes(&self) -> usize {
        usize::try_from(self.buffer.as_u64()).unwrap_or(usize::MAX)
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
            query: false,
            buffer: ByteSize::kib(64),
        }
    }
}

/// The highest `server.max_connections`: Linux's open-file limit cannot reach it
/// (`fs.nr_open` stops below 2^30), and tokio's semaphore takes no more than 2^61.
const MAX_CONNECTIONS: usize = 1 << 30;
/// `server.max_headers`' largest value (10 times hyper's default): hyper sets aside room
/// for this many for each request head it reads, 64 bytes apiece.
const MAX_HEADERS: usize = 1_000;
/// `server.worker_threads`' largest value; each worker is a thread with its own event loop.
const MAX_WORKER_THREADS: usize = 1024;
/// `assets.pull_concurrency`' largest value; a pull holds an app connection while it runs.
const MAX_PULLS: usize = 1024;
/// `store.parts_in_flight`' largest value: each part in flight is a `part_size` buffer.
const MAX_PARTS_IN_FLIGHT: usize = 64;
/// `store.max_attempts`' largest value (the AWS SDK's backoff waits up to 20 s between them).
const MAX_STORE_ATTEMPTS: u32 = 10;

/// Sections that environment variables may address, in the order they are tried (longest
/// first would matter only if one name prefixed another; none does).
const SECTIONS: &[&str] = &["server", "upstream", "store", "assets", "rewrite", "log"];

impl Config {
    /// Loads `path` (or only defaults and the environment when `None`), applies the
    /// environment's `OFFLOAD_*` overrides and the preset, and validates.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        Config::load_with(path, |_| {})
    }

    /// [`Config::load`], with `flags` laid over what the file and the environment say before
    /// the values are checked: a flag may make them fit together (`--upstream https://…`
    /// for a file's `upstream.tls_ca_file`).
    pub fn load_with(
        path: Option<&Path>,
        flags: impl FnOnce(&mut Config),
    ) -> anyhow::Result<Config> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p)
                .with_context(|| format!("reading config file {}", p.display()))?,
            None => String::new(),
        };
        let env = env::offload_vars(std::env::vars_os())?;
        Config::parse_with_env(&text, path, &env, flags)
    }

    /// Parses TOML text, lays `env` (variables named `OFFLOAD_<SECTION>_<KEY>`) over it, applies
    /// the preset and validates.
    pub fn from_toml_with_env(
        text: &str,
        env: &BTreeMap<String, String>,
    ) -> anyhow::Result<Config> {
        Config::parse_with_env(text, None, env, |_| {})
    }

    /// [`Config::from_toml_with_env`], with `flags` laid over before the values are checked;
    /// `file`: where `text` came from, named with a syntax error's line and column.
    fn parse_with_env(
        text: &str,
        file: Option<&Path>,
        env: &BTreeMap<String, String>,
        flags: impl FnOnce(&mut Config),
    ) -> anyhow::Result<Config> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| {
            let message = unknown_key_message(e.message(), None)
                .unwrap_or_else(|| mask_credential_lines(&mask_passwords_in_text(&e.to_string())));
            match file {
                Some(file) => anyhow::anyhow!("{}: {message}", file.display()),
                None => anyhow::anyhow!("{message}"),
            }
        })?;
        let mut env_keys = env::apply(&mut table, env)?;
        check_shapes(&table).map_err(|e| env_keys.name_variable(e))?;
        let mut config = loop {
            match Config::deserialize(toml::Value::Table(table.clone())) {
                Ok(config) => break config,
                Err(e) => {
                    let key = indexed_route(&table, error_key(&e));
                    if !env_keys.retry_as_string(&mut table, &key, &e) {
                        return Err(key_error(&e, &key, &env_keys));
                    }
                }
            }
        };
        config.apply_preset();
        flags(&mut config);
        config
            .validate_values()
            .map_err(|e| env_keys.name_variable(e))?;
        config.set_by = env_keys;
        Ok(config)
    }

    /// `error`, whose message begins with the key it is about (`server.tls.cert: reading
    /// …`), naming the `OFFLOAD_*` variable that set that key, if one did.
    pub fn name_variable(&self, error: anyhow::Error) -> anyhow::Error {
        self.set_by.name_variable(error)
    }

    /// Fills in what the preset implies, without overriding what the file says.
    fn apply_preset(&mut self) {
        let Some(preset) = self.preset else { return };
        let (prefixes, routes): (&[&str], &[(&str, &[&str])]) = match preset {
            Preset::Wordpress => (
                &["/wp-content/uploads/"],
                &[
                    ("/wp-admin/async-upload.php", &[]),
                    ("/wp-admin/media-new.php", &[]),
                    ("/wp-json/wp/v2/media", &[]),
                    // The same REST route without pretty permalinks (WordPress takes it on
                    // any site), and with PATH_INFO ones.
                    ("/", &["rest_route=/wp/v2/media"]),
                    ("/index.php", &["rest_route=/wp/v2/media"]),
                    ("/index.php/wp-json/wp/v2/media", &[]),
                ],
            ),
            Preset::Joomla => (
                &["/images/"],
                &[
                    // Joomla 3's media manager: com_media's file.upload task, multipart.
                    (
                        "/administrator/index.php",
                        &["option=com_media", "task=file.upload"],
                    ),
                    // Joomla 4/5 web-services API (JSON bodies are left to origin pull).
                    ("/api/index.php/v1/media/files", &[]),
                ],
            ),
        };
        for prefix in prefixes {
            if !self.assets.prefixes.iter().any(|p| p == prefix) {
                self.assets.prefixes.push((*prefix).into());
            }
        }
        // A route of the file's own with the same path and query replaces the preset's; one
        // with another query (`action=my_upload` at `/index.php`) stands beside it.
        let same_query = |theirs: &[String], ours: &[&str]| {
            theirs.len() == ours.len() && ours.iter().all(|q| theirs.iter().any(|t| t == q))
        };
        for (path, query) in routes {
            if !self
                .uploads
                .iter()
                .any(|r| r.path == *path && same_query(&r.query, query))
            {
                self.uploads.push(UploadRouteConfig {
                    path: (*path).into(),
                    query: query.iter().map(|q| q.to_string()).collect(),
                    mode: UploadMode::Mirror,
                    ..UploadRouteConfig::default()
                });
            }
        }
        if preset == Preset::Wordpress {
            // The media uploader's answer names four of an image's six files; the REST media
            // item names them all.
            for route in &mut self.uploads {
                if route.path == "/wp-admin/async-upload.php"
                    && route.mode == UploadMode::Mirror
                    && route.follow.is_none()
                {
                    route.follow = Some("/wp-json/wp/v2/media/{id}".into());
                }
            }
        }
    }

    /// Checks what the types alone cannot; the error names the key and the reason. Run on
    /// the configuration as it will be served: after the command line's flags, which may
    /// settle a clash of listeners the file and the environment have (`--admin-listen off`).
    pub fn validate(&self) -> anyhow::Result<()> {
        self.validate_values()?;
        self.check_listeners_differ()
    }

    /// [`Config::validate`] but for what flags may still change: each key's own value, and
    /// those that go together.
    fn validate_values(&self) -> anyhow::Result<()> {
        match self.upstream.url.scheme() {
            "http" | "https" => {}
            other => bail!("upstream.url: scheme must be http or https, not {other:?}"),
        }
        if self.upstream.url.host().is_none() {
            bail!("upstream.url: needs a host");
        }
        if self.upstream.url.query().is_some() || self.upstream.url.fragment().is_some() {
            // Each request's own query is what the app gets: this one would be dropped.
            bail!("upstream.url: no query or fragment (a path prefix is kept)");
        }
        if has_userinfo(&self.upstream.url) {
            // hyper sends no credentials from a URL: the app would never see them.
            bail!(
                "upstream.url: no user or password in it (offload sends none; the client's \
                 own Authorization header reaches the app)"
            );
        }
        if self.upstream.tls_ca_file.is_some() && self.upstream.url.scheme() != "https" {
            bail!("upstream.tls_ca_file: only used with an https:// upstream.url");
        }
        if let Some(tls) = &self.server.tls {
            if tls.redirect_http && tls.listen.is_none() {
                bail!("server.tls.redirect_http: needs server.tls.listen (TLS beside plain HTTP)");
            }
            if tls.proxy_protocol.is_some() && tls.listen.is_none() {
                bail!(
                    "server.tls.proxy_protocol: needs server.tls.listen (TLS on server.listen \
                     alone follows server.proxy_protocol)"
                );
            }
        }
        if let Some(name) = &self.server.request_id_header {
            let Ok(header) = http::HeaderName::try_from(name.as_str()) else {
                bail!("server.request_id_header: {name:?} is no header name");
            };
            // Set on every request and answer: one of these would reframe or redirect them,
            // or replace what the client meant by it.
            if crate::proxy::is_managed_header(&header)
                || crate::proxy::is_http_defined_header(&header)
            {
                bail!(
                    "server.request_id_header: {name:?} is a header offload or HTTP itself \
                     sets or reads; pick another, as \"X-Request-ID\""
                );
            }
        }
        if let Some(path) = &self.upstream.ready_path
            && (!path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err())
        {
            bail!(
                "upstream.ready_path: {path:?} must be a path (and query) on the app, as \"/healthz\""
            );
        }
        if self.upstream.unix_socket.is_some() && self.upstream.url.scheme() != "http" {
            bail!("upstream.unix_socket: HTTP only; upstream.url must be http://");
        }
        // hyper's HTTP/1 reader cannot work with a buffer below 8 KiB.
        if self.server.max_header_size < ByteSize::kib(8)
            || self.server.max_header_size > ByteSize::mib(1)
        {
            bail!("server.max_header_size: must be 8KiB to 1MiB");
        }
        if self.server.max_connections > MAX_CONNECTIONS {
            bail!(
                "server.max_connections: at most {MAX_CONNECTIONS}, more than any open-file \
                 limit allows (0: derived from the open-file limit)"
            );
        }
        // A zero wait fails every request at once: never what was meant.
        for (key, wait) in [
            (
                "server.header_read_timeout",
                self.server.header_read_timeout,
            ),
            ("server.idle_timeout", self.server.idle_timeout),
            ("upstream.connect_timeout", self.upstream.connect_timeout),
            ("store.request_timeout", self.store.request_timeout),
            ("upstream.response_timeout", self.upstream.response_timeout),
            (
                "upstream.websocket_idle_timeout",
                self.upstream.websocket_idle_timeout,
            ),
        ] {
            if wait.is_zero() {
                bail!("{key}: must be more than 0");
            }
        }
        if self.server.http2_max_concurrent_streams == 0 {
            bail!("server.http2_max_concurrent_streams: must be at least 1");
        }
        if self.server.keepalive_requests == 0 {
            bail!("server.keepalive_requests: must be at least 1");
        }
        if self.server.max_headers == 0 || self.server.max_headers > MAX_HEADERS {
            bail!("server.max_headers: must be 1 to {MAX_HEADERS}");
        }
        if self.server.worker_threads > MAX_WORKER_THREADS {
            bail!("server.worker_threads: at most {MAX_WORKER_THREADS} (0: one per core)");
        }
        if self.server.max_body_size == Some(ByteSize(0)) {
            bail!("server.max_body_size: must be more than 0 (leave it out for no limit)");
        }
        if self.upstream.pool_max_idle == 0 {
            bail!("upstream.pool_max_idle: must be at least 1 (keep-alive to the app)");
        }
        if self.store.kind == StoreKind::S3 && self.store.bucket.is_empty() {
            bail!("store.bucket: required when store.kind = \"s3\"");
        }
        if !self.store.serve_prefix.starts_with('/') || !self.store.serve_prefix.ends_with('/') {
            bail!("store.serve_prefix: must start and end with '/'");
        }
        if self.store.serve_prefix == "/" {
            bail!("store.serve_prefix: must not be '/' (every request would go to the store)");
        }
        if self.store.endpoint.as_ref().is_some_and(has_userinfo) {
            // The store's URLs are written into rewritten pages: any credentials would be too.
            bail!(
                "store.endpoint: no user or password in it (credentials come from the AWS \
                 chain: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile, a role)"
            );
        }
        if let Some(url) = &self.store.public_url {
            if has_userinfo(url) {
                bail!("store.public_url: no user or password (it is written into every page)");
            }
            if !url.path().ends_with('/') || url.query().is_some() || url.fragment().is_some() {
                bail!(
                    "store.public_url: must end with '/', without query or fragment (keys are \
                     appended to it: \"https://cdn.example.com/media/\")"
                );
            }
        }
        if !self.store.prefix.is_empty() && self.store.prefix.starts_with('/') {
            bail!("store.prefix: a key prefix must not start with '/'");
        }
        if self.store.part_size < ByteSize::mib(5) || self.store.part_size > ByteSize::gib(5) {
            bail!("store.part_size: S3 parts are 5 MiB to 5 GiB");
        }
        // Each part in flight is held in memory; past a few dozen they only queue at the
        // store (the AWS CLI sends 10 at once).
        if !(1..=MAX_PARTS_IN_FLIGHT).contains(&self.store.parts_in_flight) {
            bail!("store.parts_in_flight: must be 1 to {MAX_PARTS_IN_FLIGHT}");
        }
        // With exponential backoff, more attempts keep an upload waiting for minutes on a
        // store that is down, where it should fail and say so.
        if !(1..=MAX_STORE_ATTEMPTS).contains(&self.store.max_attempts) {
            bail!("store.max_attempts: must be 1 to {MAX_STORE_ATTEMPTS}");
        }
        if let Some(sse) = &self.store.sse
            && sse != "AES256"
            && sse != "aws:kms"
        {
            bail!("store.sse: must be \"AES256\" or \"aws:kms\", not {sse:?}");
        }
        if self.store.sse_kms_key_id.is_some() && self.store.sse.as_deref() != Some("aws:kms") {
            bail!("store.sse_kms_key_id: only with store.sse = \"aws:kms\"");
        }
        for prefix in &self.assets.prefixes {
            if !prefix.starts_with('/') || !prefix.ends_with('/') || prefix == "/" {
                bail!("assets.prefixes: {prefix:?} must start and end with '/' and not be '/'");
            }
        }
        for origin in &self.assets.site_origins {
            if origin.host().is_none()
                || origin.path() != "/"
                || origin.query().is_some()
                || origin.fragment().is_some()
                || has_userinfo(origin)
            {
                let origin = mask_passwords_in_text(origin.as_str());
                bail!("assets.site_origins: {origin} must be scheme://host[:port] only");
            }
        }
        // A size that rounds to nothing ("0.1 B") refuses everything it bounds.
        for (key, size) in [
            ("assets.pull_max_size", self.assets.pull_max_size),
            ("rewrite.max_size", self.rewrite.max_size),
        ] {
            if size.as_u64() == 0 {
                bail!("{key}: must be more than 0");
            }
        }
        if self.assets.pull_concurrency == 0 || self.assets.pull_concurrency > MAX_PULLS {
            bail!("assets.pull_concurrency: must be 1 to {MAX_PULLS}");
        }
        for (i, route) in self.uploads.iter().enumerate() {
            route.validate().with_context(|| format!("uploads[{i}]"))?;
        }
        if self.log.level.trim().is_empty() {
            bail!("log.level: must not be empty");
        }
        crate::logging::level_filter(&self.log.level)?;
        if self.log.buffer > LogConfig::MAX_BUFFER {
            bail!("log.buffer: at most {}", LogConfig::MAX_BUFFER);
        }
        Ok(())
    }

    /// Each listener needs a port of its own: two on one port (on the same address, or one on
    /// every address) fail at start with "address in use". Nor may `upstream.url` name
    /// offload's own listener: each request would be forwarded to itself until no file
    /// descriptor is left.
    fn check_listeners_differ(&self) -> anyhow::Result<()> {
        self.check_upstream_is_elsewhere()?;
        let mut listeners = vec![("server.listen", self.server.listen)];
        if let Some(tls_listen) = self.server.tls.as_ref().and_then(|tls| tls.listen) {
            listeners.push(("server.tls.listen", tls_listen));
        }
        if let Some(admin) = self.server.admin_listen {
            listeners.push(("server.admin_listen", admin));
        }
        // One on every address takes the port on each address of its family, and `[::]`
        // on IPv4's too (Linux binds it dual-stack by default).
        let covers = |a: &SocketAddr, b: &SocketAddr| {
            a.ip() == b.ip() || (a.ip().is_unspecified() && (a.is_ipv6() || b.is_ipv4()))
        };
        for (i, (key, addr)) in listeners.iter().enumerate() {
            for (other_key, other) in &listeners[..i] {
                // Port 0 is any free port: two of them never clash.
                let same_host = covers(addr, other) || covers(other, addr);
                if addr.port() == other.port() && addr.port() != 0 && same_host {
                    bail!("{key}: must differ from {other_key} ({other})");
                }
            }
        }
        Ok(())
    }

    /// `upstream.url` (without `unix_socket`) names no address and port offload listens on
    /// for requests. Only addresses known to be this host's (loopback, the listener's own,
    /// every address) are compared: a name is not resolved, but `localhost`.
    fn check_upstream_is_elsewhere(&self) -> anyhow::Result<()> {
        let mut listeners = vec![("server.listen", self.server.listen)];
        if let Some(tls_listen) = self.server.tls.as_ref().and_then(|tls| tls.listen) {
            listeners.push(("server.tls.listen", tls_listen));
        }
        self.check_upstream_not_at(&listeners)
    }

    /// As [`Config::check_upstream_is_elsewhere`], against `listeners` (what key set each,
    /// and its address): a reload checks the addresses actually bound, which a reload does
    /// not change whatever the file now says.
    pub fn check_upstream_not_at(&self, listeners: &[(&str, SocketAddr)]) -> anyhow::Result<()> {
        let url = &self.upstream.url;
        let (Some(host), Some(port)) = (url.host(), url.port_or_known_default()) else {
            return Ok(());
        };
        if self.upstream.unix_socket.is_some() {
            return Ok(());
        }
        let ips: Vec<IpAddr> = match host {
            url::Host::Ipv4(ip) => vec![ip.into()],
            url::Host::Ipv6(ip) => vec![ip.into()],
            url::Host::Domain(name) if name.eq_ignore_ascii_case("localhost") => {
                vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()]
            }
            url::Host::Domain(_) => return Ok(()),
        };
        let this_host = |ip: IpAddr| ip.is_loopback() || ip.is_unspecified();
        for &(key, listen) in listeners {
            let reached = ips.iter().any(|&ip| {
                ip == listen.ip()
                    || (listen.ip().is_unspecified() && this_host(ip))
                    || (ip.is_unspecified() && this_host(listen.ip()))
            });
            if listen.port() == port && reached {
                bail!(
                    "upstream.url: {url} is offload's own {key} ({listen}): every request \
                     would come back to it; name the app's address"
                );
            }
        }
        Ok(())
    }

    /// The keys whose values differ between `self` and `other`, dotted (`upstream.url`;
    /// an array of tables whole: `uploads`), sorted. Names only: values may be secrets.
    pub fn changed_keys(&self, other: &Config) -> Vec<String> {
        let (Ok(ours), Ok(theirs)) = (toml::Value::try_from(self), toml::Value::try_from(other))
        else {
            // Both printed fine at start (check-config); unreachable in practice.
            return vec!["(the whole configuration)".to_string()];
        };
        let mut changed = Vec::new();
        changed_between("", &ours, &theirs, &mut changed);
        changed
    }

    /// `next` as a reload applies it over `self`, the running configuration. What is set up
    /// once at start keeps its running value: the listeners (`listen`, `admin_listen`,
    /// `[server.tls]` but for its `proxy_protocol`), `worker_threads`, and `[log]` but for
    /// `level` and `query`. The rest is taken from `next`: timeouts, HTTP limits, HTTP/2 and
    /// the PROXY protocol apply to connections accepted afterwards, `max_connections` and
    /// `log.level` at once, everything else to requests that begin afterwards.
    pub fn reloadable_part(&self, next: Config) -> Config {
        let running = &self.server;
        // Only the TLS listener of its own has a PROXY setting of its own.
        let tls = match (&running.tls, &next.server.tls) {
            (Some(tls), Some(next)) if tls.listen.is_some() => Some(TlsConfig {
                proxy_protocol: next.proxy_protocol,
                ..tls.clone()
            }),
            (tls, _) => tls.clone(),
        };
        let server = ServerConfig {
            listen: running.listen,
            admin_listen: running.admin_listen,
            tls,
            worker_threads: running.worker_threads,
            ..next.server
        };
        let log = LogConfig {
            level: next.log.level,
            query: next.log.query,
            ..self.log.clone()
        };
        Config {
            server,
            log,
            ..next
        }
    }

    /// The effective config as TOML, secrets hidden. Credentials have no key of their own
    /// (they come from the AWS chain), but a URL may carry a password
    /// (`http://user:password@app/`): it is printed as `***`.
    pub fn to_redacted_toml(&self) -> anyhow::Result<String> {
        let mut value = toml::Value::try_from(self).context("printing the effective config")?;
        mask_url_passwords(&mut value);
        toml::to_string_pretty(&value).context("printing the effective config")
    }
}

/// Words in a key's name that say its value is a credential (`aws_secret_access_key`).
const CREDENTIAL_WORDS: [&str; 6] = [
    "secret",
    "access_key",
    "password",
    "credential",
    "session_token",
    "token",
];

fn names_a_credential(key: &str) -> bool {
    let lower = key.to_ascii_lowercase();
    CREDENTIAL_WORDS.iter().any(|word| lower.contains(word))
}

/// A TOML syntax error's message with the value of a credential's key in its quoted lines
/// (`2 | aws_secret_access_key = wJalr…`) written as `***`: toml quotes the line it could
/// not parse, and an unquoted secret is such a line.
fn mask_credential_lines(message: &str) -> String {
    let masked_line = |line: &str| -> Option<String> {
        let (gutter, code) = line.split_once("| ")?;
        let (key, _) = code.split_once('=')?;
        names_a_credential(key.trim().trim_matches(['"', '\'']))
            .then(|| format!("{gutter}| {}= ***", key))
    };
    message
        .lines()
        .map(|line| masked_line(line).unwrap_or_else(|| line.to_string()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether `url` carries a user or a password (`scheme://user:password@host`).
fn has_userinfo(url: &Url) -> bool {
    !url.username().is_empty() || url.password().is_some()
}

/// `text` with the password of every `scheme://user:password@` in it replaced by `***`, and
/// a user name given alone (`scheme://token@`) too: for messages that quote a URL that does not parse (so [`Url`] cannot mask it).
pub fn mask_passwords_in_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        let authority_end = after
            .find(|c: char| matches!(c, '/' | '?' | '#' | '"' | '\'' | '`') || c.is_whitespace())
            .unwrap_or(after.len());
        let authority = &after[..authority_end];
        match authority.rfind('@') {
            // `user:password@`: the user is kept, to tell which account it was.
            Some(at) if authority[..at].contains(':') => {
                let user = authority[..at].split_once(':').map_or("", |(user, _)| user);
                out.push_str(user);
                out.push_str(":***");
                out.push_str(&authority[at..]);
            }
            // `token@`: a user name alone is often a token (`https://TOKEN@host/`).
            Some(at) if at > 0 => {
                out.push_str("***");
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &after[authority_end..];
    }
    out.push_str(rest);
    out
}

/// Every URL under `value` with a password, the password replaced by `***`.
fn mask_url_passwords(value: &mut toml::Value) {
    match value {
        toml::Value::String(text) => {
            if let Ok(mut url) = Url::parse(text)
                && url.password().is_some()
                && url.set_password(Some("***")).is_ok()
            {
                *text = url.to_string();
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(mask_url_passwords),
        toml::Value::Table(table) => table.iter_mut().for_each(|(_, v)| mask_url_passwords(v)),
        _ => {}
    }
}

impl UploadRouteConfig {
    fn validate(&self) -> anyhow::Result<()> {
        if !self.path.starts_with('/') {
            bail!("path: {:?} must start with '/'", self.path);
        }
        // Routes match the request's path; its query is matched by `query` (in a glob, `?`
        // is any one character, so such a path would never match).
        if let Some((path, query)) = self.path.split_once('?')
            && query.contains('=')
        {
            bail!(
                "path: {:?} holds a query: write path = {path:?} and query = [{}]",
                self.path,
                query
                    .split('&')
                    .map(|pair| format!("{pair:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        globset::Glob::new(&self.path)
            .with_context(|| format!("path: bad glob {:?}", self.path))?;
        if let Some(q) = self.query.iter().find(|q| !q.contains('=')) {
            bail!("query: {q:?} must be name=value");
        }
        if self.methods.is_empty() {
            bail!("methods: at least one method");
        }
        for m in &self.methods {
            http::Method::from_bytes(m.as_bytes())
                .with_context(|| format!("methods: {m:?} is not an HTTP method"))?;
        }
        if self.key_template.contains("{sha256}") {
            bail!(
                "key_template: {{sha256}} is not supported: the key must exist before the bytes stream in"
            );
        }
        if !self.key_template.contains("{uuid}") {
            bail!(
                "key_template: needs {{uuid}}, so that each upload's key is its own (two files \
                 of one name would otherwise replace each other)"
            );
        }

        if self.max_parts == 0 {
            bail!("max_parts: must be at least 1");
        }
        for (key, size) in [
            ("max_file_size", self.max_file_size),
            ("max_body_size", self.max_body_size),
            ("max_field_size", self.max_field_size),
            ("max_fields_size", self.max_fields_size),
        ] {
            if size.as_u64() == 0 {
                bail!("{key}: must be more than 0");
            }
        }
        if self.max_file_size > self.max_body_size {
            bail!("max_file_size: larger than max_body_size");
        }
        if let Some(follow) = &self.follow {
            check_follow(follow, self.mode)?;
        }
        Ok(())
    }
}

/// `follow` is a path (and query) on the app, with `{id}` where the answer's id goes; only
/// mirror mode, which forwards the upload to the app and reads its answer, follows one.
fn check_follow(follow: &str, mode: UploadMode) -> anyhow::Result<()> {
    if mode != UploadMode::Mirror {
        let mode = format!("{mode:?}").to_lowercase();
        bail!("follow: only mirror mode follows the app's answer (this route's mode is {mode:?})");
    }
    if !follow.starts_with('/') {
        bail!("follow: {follow:?} must start with '/': a path on the app");
    }
    let example = follow.replace("{id}", "1");
    if example.parse::<http::uri::PathAndQuery>().is_err() {
        bail!(
            "follow: {follow:?} is not a path and query a request can carry (spaces and quotes are written %20, %22)"
        );
    }
    Ok(())
}

/// Refuses a section written in the wrong shape, which serde reports in its own terms: a
/// `[[server]]` reads as "invalid type: map, expected socket address" (a list of tables is
/// taken field by field) and an `[uploads]` as "expected a sequence".
fn check_shapes(table: &toml::Table) -> anyhow::Result<()> {
    let sections = SECTIONS.iter().map(|name| (*name, table.get(*name)));
    let tls = table
        .get("server")
        .and_then(toml::Value::as_table)
        .map(|server| ("server.tls", server.get("tls")));
    for (name, value) in sections.chain(tls) {
        match value {
            None | Some(toml::Value::Table(_)) => {}
            Some(toml::Value::Array(_)) => anyhow::bail!(
                "{name}: is one table, written [{name}]; [[{name}]] makes a list of them"
            ),
            Some(other) => anyhow::bail!(
                "{name}: is a table, written [{name}], not a {}",
                other.type_str()
            ),
        }
    }
    match table.get("uploads") {
        None | Some(toml::Value::Array(_)) => Ok(()),
        Some(_) => anyhow::bail!("uploads: is a list of routes, each written [[uploads]]"),
    }
}

/// The key a deserializer's error is about: toml ends its message with "in `server.listen`"
/// (for an unknown key, the table it is in). Empty at the top level.
fn error_key(e: &toml::de::Error) -> String {
    let text = e.to_string();
    text.lines()
        .filter_map(|line| line.strip_prefix("in `")?.strip_suffix('`'))
        .next_back()
        .unwrap_or_default()
        .to_string()
}

/// `key` as `uploads[i]…` when it is in the upload routes: toml names the array of tables
/// alone, so each route is tried on its own to find the one the error is in.
fn indexed_route(table: &toml::Table, key: String) -> String {
    let Some(rest) = key.strip_prefix("uploads") else {
        return key;
    };
    let routes = table.get("uploads").and_then(toml::Value::as_array);
    let failing = routes
        .into_iter()
        .flatten()
        .position(|route| UploadRouteConfig::deserialize(route.clone()).is_err());
    match failing {
        Some(i) => format!("uploads[{i}]{rest}"),
        None => key,
    }
}

/// A deserializer's error as `key: reason`, naming the variable that set the key, if one did.
fn key_error(e: &toml::de::Error, key: &str, env: &env::EnvKeys) -> anyhow::Error {
    // bytesize's word for what a size looks like says nothing to an operator.
    let reason = e.message().replace(
        "expected parsable string",
        "expected a size, as \"64KiB\" or \"100MB\"",
    );
    // A URL the url crate refuses is quoted whole, password and all.
    let reason = mask_passwords_in_text(&reason);
    let (key, message) = match unknown_key_message(e.message(), Some(key)) {
        Some(message) => (unknown_key(e.message(), key), message),
        None => (key.to_string(), format!("{key}: {reason}")),
    };
    match env.variable(&key) {
        Some(variable) => anyhow::anyhow!("{message} (set by {variable})"),
        None => anyhow::anyhow!("{message}"),
    }
}

/// The dotted name of the unknown key serde's message is about, in table `table`.
fn unknown_key(message: &str, table: &str) -> String {
    let name = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once('`'))
        .map_or("", |(name, _)| name);
    match table {
        "" => name.to_string(),
        _ => format!("{table}.{name}"),
    }
}

/// Turns serde's "unknown field `x`, expected one of `a`, `b`" into a message naming the
/// key, in `table` where known, and the nearest valid one.
fn unknown_key_message(message: &str, table: Option<&str>) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (unknown, rest) = rest.split_once('`')?;
    let candidates: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    let nearest = candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(unknown, c), *c))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .filter(|(score, _)| *score > 0.7)
        .map(|(_, c)| c);
    let table = table.unwrap_or_default();
    let key = unknown_key(message, table);
    if names_a_credential(unknown) {
        // A near name would only invite putting the secret in another key.
        return Some(format!(
            "{key}: unknown key; credentials are no config keys: they come from the AWS chain \
             (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, profiles, instance and web-identity \
             roles)"
        ));
    }
    // A key written in the wrong section (before any header, or under the wrong one) is
    // named where it belongs, before a near name of this section's.
    let elsewhere = keys_elsewhere(unknown, table);
    if !elsewhere.is_empty() {
        let places: Vec<String> = elsewhere.iter().map(|k| format!("`{k}`")).collect();
        return Some(format!(
            "{key}: unknown key here; did you mean {}?",
            places.join(" or ")
        ));
    }
    Some(match nearest {
        Some(near) => format!("{key}: unknown key; did you mean `{near}`?"),
        None => format!(
            "{key}: unknown key; valid keys are {}",
            candidates.join(", ")
        ),
    })
}

/// Where else `name` is a key, as `section.key` (`uploads[].key` for an upload route's),
/// `table` (where it was found unknown) left out.
fn keys_elsewhere(name: &str, table: &str) -> Vec<String> {
    // An upload route's keys are met as `uploads[0]`'s.
    let in_routes = table.starts_with("uploads");
    section_keys()
        .into_iter()
        .filter(|(section, keys)| {
            *section != table
                && !(in_routes && *section == "uploads[]")
                && keys.iter().any(|key| key == name)
        })
        .map(|(section, _)| match section {
            "" => name.to_string(),
            "uploads[]" => format!("uploads[].{name}"),
            section => format!("{section}.{name}"),
        })
        .collect()
}

/// Every table's keys, as serde lists them when it refuses an unknown one (so the list
/// cannot fall behind the structs): "" is the top level.
fn section_keys() -> Vec<(&'static str, Vec<String>)> {
    fn keys_of<T: serde::de::DeserializeOwned>() -> Vec<String> {
        let probe = toml::Table::from_iter([("\u{1}".to_string(), toml::Value::Integer(0))]);
        let Err(e) = T::deserialize(toml::Value::Table(probe)) else {
            return Vec::new();
        };
        let message = e.message().to_string();
        message
            .split_once("expected ")
            .map(|(_, listed)| {
                listed
                    .split('`')
                    .skip(1)
                    .step_by(2)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }
    vec![
        ("", keys_of::<Config>()),
        ("server", keys_of::<ServerConfig>()),
        ("server.tls", keys_of::<TlsConfig>()),
        ("upstream", keys_of::<UpstreamConfig>()),
        ("store", keys_of::<StoreConfig>()),
        ("assets", keys_of::<AssetsConfig>()),
        ("rewrite", keys_of::<RewriteConfig>()),
        ("log", keys_of::<LogConfig>()),
        ("uploads[]", keys_of::<UploadRouteConfig>()),
    ]
}

/// Durations written as humantime strings ("30s", "5m", "250ms").
mod humantime_serde {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(Text)
    }

    /// The longest wait or lifetime any key takes. Deadlines are the time now plus a key's
    /// duration, and humantime reads up to 2^64 seconds, past which that sum panics.
    const LONGEST: Duration = Duration::from_secs(31_557_600); // humantime's "1y": 365.25 days

    /// A duration is text with a unit; a bare number is refused with what to write instead.
    struct Text;

    impl serde::de::Visitor<'_> for Text {
        type Value = Duration;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a duration with its unit, as \"30s\" or \"1m 30s\"")
        }

        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Duration, E> {
            let duration = humantime::parse_duration(text).map_err(|e| {
                E::custom(format!(
                    "bad duration {text:?}: {e} (a number with its unit, as \"30s\" or \"1m 30s\")"
                ))
            })?;
            if duration > LONGEST {
                return Err(E::custom(format!(
                    "duration {text:?} is too long: at most 1 year"
                )));
            }
            Ok(duration)
        }

        fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Duration, E> {
            Err(E::custom(format!(
                "{n} has no unit: write a duration as text with one, as \"{n}s\""
            )))
        }

        fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Duration, E> {
            Err(E::custom(format!(
                "{n} has no unit: write a duration as text with one, as \"{n}s\""
            )))
        }
    }
}

/// Networks in CIDR notation, where a single address is a network of one.
mod nets {
    use std::net::IpAddr;

    use ipnet::IpNet;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(nets: &[IpNet], s: S) -> Result<S::Ok, S::Error> {
        nets.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|text| {
                text.parse::<IpNet>()
                    .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        serde::de::Error::custom(format!(
                            "{text:?} is neither an address nor a network (as \"10.0.0.0/8\")"
                        ))
                    })
            })
            .collect()
    }
}

/// Sizes printed as read (`check-config`): bytesize's own display rounds to one decimal
/// ("95.4 MiB" for 100MB), which read back is another size.
mod exact_size {
    use bytesize::ByteSize;
    use serde::{Deserialize, Deserializer, Serializer, de};

    /// A size, refused when it is too large for 64 bits: bytesize saturates ("99999 EiB"
    /// reads as 16 EiB), which would turn a limit off without a word.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
        let size = ByteSize::deserialize(d)?;
        if size.as_u64() == u64::MAX {
            return Err(de::Error::custom("too large: at most 16 EiB"));
        }
        Ok(size)
    }

    pub fn deserialize_option<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<ByteSize>, D::Error> {
        // `deserialize_with` on an Option field is only called when the key is there.
        deserialize(d).map(Some)
    }

    pub fn serialize<S: Serializer>(size: &ByteSize, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::human_size(size.as_u64()))
    }

    pub fn option<S: Serializer>(size: &Option<ByteSize>, s: S) -> Result<S::Ok, S::Error> {
        match size {
            Some(size) => serialize(size, s),
            None => s.serialize_none(),
        }
    }
}

/// A socket address; the error quotes what was written and shows the form.
mod addr {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(a: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&a.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(|e| {
            serde::de::Error::custom(format!(
                "bad address {text:?}: {e} (an address and port, as \"0.0.0.0:8080\")"
            ))
        })
    }
}

/// An optional socket address, where `"off"` means none.
mod opt_addr {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(a: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match a {
            Some(addr) => s.serialize_str(&addr.to_string()),
            None => s.serialize_str("off"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let text = String::deserialize(d)?;
        if text.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        text.parse().map(Some).map_err(|e| {
            serde::de::Error::custom(format!(
                "bad address {text:?}: {e} (an address and port, as \"127.0.0.1:9090\", or \"off\")"
            ))
        })
    }
}

/// Adds to `changed` the dotted path of every key under `path` whose value differs between
/// `ours` and `theirs`, including keys only one of them has.
fn changed_between(
    path: &str,
    ours: &toml::Value,
    theirs: &toml::Value,
    changed: &mut Vec<String>,
) {
    let (toml::Value::Table(ours), toml::Value::Table(theirs)) = (ours, theirs) else {
        if ours != theirs {
            changed.push(path.to_string());
        }
        return;
    };
    let keys: std::collections::BTreeSet<&String> = ours.keys().chain(theirs.keys()).collect();
    for key in keys {
        let path = match path {
            "" => key.clone(),
            _ => format!("{path}.{key}"),
        };
        match (ours.get(key), theirs.get(key)) {
            (Some(ours), Some(theirs)) => changed_between(&path, ours, theirs, changed),
            _ => changed.push(path),
        }
    }
}

/// `512 MiB`, `1 GiB`, `100 KiB`, `17 B`: exact sizes as a config file would write them.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
    ];
    for (unit, name) in UNITS {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{} {name}", bytes / unit);
        }
    }
    format!("{bytes} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_config() {
        assert_eq!(human_size(512 << 20), "512 MiB");
        assert_eq!(human_size(1 << 30), "1 GiB");
        assert_eq!(human_size(1536), "1536 B");
        assert_eq!(human_size(3 << 10), "3 KiB");
        assert_eq!(human_size(0), "0 B");
    }

    /// As `offload` loads a file without flags: values, then the whole.
    fn load(text: &str) -> anyhow::Result<Config> {
        load_env(text, &[])
    }

    fn load_env(text: &str, env: &[(&str, &str)]) -> anyhow::Result<Config> {
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let config = Config::from_toml_with_env(text, &env)?;
        config.validate()?;
        Ok(config)
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = load("").unwrap();
        assert_eq!(c.server.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(
            c.server.admin_listen,
            Some("127.0.0.1:9090".parse().unwrap())
        );
        assert_eq!(c.store.kind, StoreKind::Fs);
        assert_eq!(c.store.root, PathBuf::from("./offload-data"));
        assert_eq!(c.store.part_size, ByteSize::mib(8));
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(c.server.workers(), cores, "one worker per core");
    }

    #[test]
    fn the_tls_listener_follows_proxy_protocol_unless_told_otherwise() {
        let tls = |extra: &str| {
            format!(
                "[server]\n{extra}\ntls = {{ cert = \"c.pem\", key = \"k.pem\", \
                 listen = \"127.0.0.1:8443\" }}"
            )
        };
        let both = load(&tls("proxy_protocol = true")).unwrap().server;
        assert!(both.proxy_protocol && both.tls_proxy_protocol());
        let neither = load(&tls("")).unwrap().server;
        assert!(!neither.proxy_protocol && !neither.tls_proxy_protocol());
        let own = |main: bool, on_tls: bool| {
            let text = format!(
                "[server]\nproxy_protocol = {main}\ntls = {{ cert = \"c.pem\", key = \"k.pem\", \
                 listen = \"127.0.0.1:8443\", proxy_protocol = {on_tls} }}"
            );
            let server = load(&text).unwrap().server;
            (server.proxy_protocol, server.tls_proxy_protocol())
        };
        assert_eq!(own(false, true), (false, true));
        assert_eq!(own(true, false), (true, false));
    }

    #[test]
    fn changed_keys_name_what_differs_and_nothing_else() {
        let text = "[server]\nidle_timeout = \"1m\"\n[upstream]\nurl = \"http://127.0.0.1:8000\"\n\
                    [[uploads]]\npath = \"/u\"";
        let running = load(text).unwrap();
        assert_eq!(
            running.changed_keys(&load(text).unwrap()),
            Vec::<String>::new()
        );
        let edited = text
            .replace("1m", "2m")
            .replace("8000", "8001")
            .replace("/u", "/v");
        let edited = format!("{edited}\n[log]\nquery = true");
        assert_eq!(
            running.changed_keys(&load(&edited).unwrap()),
            [
                "log.query",
                "server.idle_timeout",
                "uploads",
                "upstream.url"
            ]
        );
        // A key set to its default is no change; one only the new file sets (an optional
        // value) is.
        let with_default = text.replace("[server]\n", "[server]\nshutdown_delay = \"0s\"\n");
        assert!(
            running
                .changed_keys(&load(&with_default).unwrap())
                .is_empty()
        );
        let with_limit = text.replace("[server]\n", "[server]\nmax_body_size = \"1MiB\"\n");
        assert_eq!(
            running.changed_keys(&load(&with_limit).unwrap()),
            ["server.max_body_size"]
        );
    }

    #[test]
    fn a_reload_takes_all_but_what_is_set_up_at_start() {
        let running = load(
            "[server]\nidle_timeout = \"1m\"\n[server.tls]\ncert = \"a.pem\"\nkey = \"a.key\"\n\
             listen = \"127.0.0.1:8443\"\n[log]\nlevel = \"info\"",
        )
        .unwrap();
        let next = load(
            "[server]\nidle_timeout = \"2m\"\ntrusted_proxies = [\"10.0.0.0/8\"]\n\
             max_body_size = \"1MiB\"\nrequest_id_header = \"X-Request-ID\"\n\
             listen = \"127.0.0.1:8081\"\nhttp2 = false\nworker_threads = 3\n\
             max_connections = 10\nproxy_protocol = true\n\
             [server.tls]\ncert = \"b.pem\"\nkey = \"a.key\"\nlisten = \"127.0.0.1:9443\"\n\
             proxy_protocol = false\n\
             [upstream]\nurl = \"http://127.0.0.1:9000\"\n[log]\nlevel = \"debug\"\nquery = true\nformat = \"json\"",
        )
        .unwrap();
        let applied = running.reloadable_part(next.clone());
        assert_eq!(
            running.changed_keys(&applied),
            [
                "log.level",
                "log.query",
                "server.http2",
                "server.idle_timeout",
                "server.max_body_size",
                "server.max_connections",
                "server.proxy_protocol",
                "server.request_id_header",
                "server.tls.proxy_protocol",
                "server.trusted_proxies",
                "upstream.url"
            ]
        );
        assert_eq!(
            applied.changed_keys(&next),
            [
                "log.format",
                "server.listen",
                "server.tls.cert",
                "server.tls.listen",
                "server.worker_threads"
            ]
        );
        // TLS on `listen` alone has no PROXY setting of its own: one comes with
        // `tls.listen`, which takes a restart.
        let on_listen = load("[server.tls]\ncert = \"a.pem\"\nkey = \"a.key\"").unwrap();
        let own_listener = load(
            "[server.tls]\ncert = \"a.pem\"\nkey = \"a.key\"\nlisten = \"127.0.0.1:8443\"\n\
             proxy_protocol = true",
        )
        .unwrap();
        let applied = on_listen.reloadable_part(own_listener);
        assert!(on_listen.changed_keys(&applied).is_empty());
    }

    #[test]
    fn typed_values_parse() {
        let c = load(
            r#"
            [server]
            listen = "127.0.0.1:1234"
            admin_listen = "off"
            header_read_timeout = "250ms"
            max_header_size = "16KiB"
            max_body_size = "100MiB"
            trusted_proxies = ["10.0.0.0/8", "::1/128"]
            worker_threads = 1
            [store]
            cache_ttl = "1y"
            [[uploads]]
            path = "/api/*/files"
            mode = "respond"
            max_file_size = "2MiB"
            "#,
        )
        .unwrap();
        assert_eq!(c.server.admin_listen, None);
        assert_eq!(c.server.header_read_timeout, Duration::from_millis(250));
        assert_eq!(c.server.max_header_size, ByteSize::kib(16));
        assert_eq!(c.server.max_body_size, Some(ByteSize::mib(100)));
        assert_eq!(c.server.trusted_proxies.len(), 2);
        assert_eq!(c.server.worker_threads, 1);
        assert_eq!(c.server.workers(), 1);
        // The longest duration taken.
        assert_eq!(c.store.cache_ttl, Duration::from_secs(31_557_600));
        assert_eq!(c.uploads[0].mode, UploadMode::Respond);
        assert_eq!(c.uploads[0].max_file_size, ByteSize::mib(2));
    }

    #[test]
    fn unknown_key_names_the_nearest() {
        let err = load("[server]\nlisten_addr = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(
            format!("{err:#}").contains("did you mean `listen`"),
            "{err:#}"
        );
        let err = load("[stor]\nkind = \"fs\"\n").unwrap_err();
        assert!(
            format!("{err:#}").contains("did you mean `store`"),
            "{err:#}"
        );
        // A key in the wrong section is named where it belongs.
        for (text, message) in [
            (
                "listen = \"127.0.0.1:1\"\n",
                "listen: unknown key here; did you mean `server.listen` or `server.tls.listen`?",
            ),
            (
                "[server]\nbucket = \"b\"\n",
                "server.bucket: unknown key here; did you mean `store.bucket`?",
            ),
            (
                "[assets]\nmax_body_size = \"1MiB\"\n",
                "assets.max_body_size: unknown key here; did you mean `server.max_body_size` or `uploads[].max_body_size`?",
            ),
            (
                "[[uploads]]\npath = \"/u\"\nworker_threads = 1\n",
                "uploads[0].worker_threads: unknown key here; did you mean `server.worker_threads`?",
            ),
            (
                "level = \"debug\"\n",
                "level: unknown key here; did you mean `log.level`?",
            ),
        ] {
            let err = load(text).unwrap_err();
            assert_eq!(format!("{err:#}"), message, "{text}");
        }
        // The key is named with its table, and the variable that set it.
        for (text, env, message) in [
            (
                "[upstream]\ntimeout = \"5s\"",
                &[][..],
                "upstream.timeout: unknown key; valid keys are url, connect_timeout,",
            ),
            (
                "[server.tls]\ncert = \"c\"\nkey = \"k\"\nlsiten = \"x\"",
                &[],
                "server.tls.lsiten: unknown key; did you mean `listen`?",
            ),
            (
                "",
                &[("OFFLOAD_SERVER_LISTN", "127.0.0.1:1")],
                "server.listn: unknown key; did you mean `listen`? (set by OFFLOAD_SERVER_LISTN)",
            ),
            (
                "",
                &[("OFFLOAD_SERVER_IDLE_TIMEOUT", "soon")],
                "server.idle_timeout: bad duration \"soon\"",
            ),
        ] {
            let err = format!("{:#}", load_env(text, env).unwrap_err());
            assert!(err.starts_with(message), "{text:?} {env:?} → {err}");
        }
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, needle) in [
            ("[server]\nlisten = \"nope\"", "listen"),
            ("[server]\nidle_timeout = \"soon\"", "bad duration"),
            (
                "[server]\nidle_timeout = \"-5s\"",
                "server.idle_timeout: bad duration \"-5s\": expected number at 0 (a number with its unit, as \"30s\"",
            ),
            (
                "[store]\naws_secret_access_key = \"wJalr\"",
                "store.aws_secret_access_key: unknown key; credentials are no config keys: they come from the AWS chain",
            ),
            ("[store]\npart_size = \"1KiB\"", "store.part_size"),
            ("[store]\nkind = \"s3\"", "store.bucket"),
            ("[store]\nkind = \"ftp\"", "kind"),
            ("[upstream]\nurl = \"ftp://x\"", "upstream.url"),
            (
                "[upstream]\nurl = \"http://app/base?token=abc\"",
                "upstream.url: no query or fragment",
            ),
            ("[assets]\nprefixes = [\"uploads\"]", "assets.prefixes"),
            ("[[uploads]]\npath = \"upload\"", "uploads[0]"),
            (
                "[[uploads]]\npath = \"/u\"\nmethods = [\"GE T\"]",
                "methods",
            ),
            (
                "[[uploads]]\npath = \"/a\"\n[[uploads]]\npath = \"/b\"\nmod = \"respond\"",
                "uploads[1].mod: unknown key; did you mean `mode`?",
            ),
            (
                "[[uploads]]\npath = \"/a\"\nmode = \"mirorr\"",
                "uploads[0].mode: unknown variant `mirorr`",
            ),
            (
                "[[uploads]]\npath = \"/u\"\nkey_template = \"{sha256}\"",
                "key_template",
            ),
            (
                "[[uploads]]\npath = \"/u\"\nkey_template = \"u/{filename}\"",
                "key_template: needs {uuid}",
            ),
            ("[store]\nsse = \"rot13\"", "store.sse"),
            ("[server\nlisten = 1", "TOML"),
            (
                "[server]\nmax_header_size = \"1KiB\"",
                "server.max_header_size: must be 8KiB to 1MiB",
            ),
            // hyper's read buffer may grow to it on every connection.
            (
                "[server]\nmax_header_size = \"1EiB\"",
                "server.max_header_size: must be 8KiB to 1MiB",
            ),
            ("[upstream]\npool_max_idle = 0", "upstream.pool_max_idle"),
            (
                "[server]\nkeepalive_requests = 0",
                "server.keepalive_requests: must be at least 1",
            ),
            (
                "[server]\nhttp2_max_concurrent_streams = 0",
                "server.http2_max_concurrent_streams",
            ),
            ("[log]\nlevel = \"offload=loud\"", "log.level: "),
            (
                "[log]\nlevel = \"inof\"",
                "log.level: \"inof\" is no level (trace, debug, info, warn, error, off)",
            ),
            (
                "[log]\nlevel = \"warn,verbose\"",
                "log.level: \"verbose\" is no level",
            ),
            (
                "[server]\nmax_connections = 5000000000000000000",
                "server.max_connections: at most 1073741824",
            ),
            (
                "[server]\nmax_body_size = \"0B\"",
                "server.max_body_size: must be more than 0",
            ),
            (
                "[upstream]\nurl = \"http://app\"\ntls_ca_file = \"/ca.pem\"",
                "upstream.tls_ca_file: only used with an https://",
            ),
            (
                "[upstream]\nurl = \"https://app\"\nunix_socket = \"/run/app.sock\"",
                "upstream.unix_socket: HTTP only",
            ),
            (
                "[server]\nrequest_id_header = \"X Request\"",
                "server.request_id_header: \"X Request\" is no header name",
            ),
            (
                "[server]\nrequest_id_header = \"Content-Length\"",
                "server.request_id_header: \"Content-Length\" is a header offload or HTTP",
            ),
            (
                "[server]\nrequest_id_header = \"host\"",
                "server.request_id_header: \"host\" is a header",
            ),
            (
                "[server]\nrequest_id_header = \"X-Forwarded-For\"",
                "server.request_id_header: \"X-Forwarded-For\" is a header",
            ),
            (
                "[upstream]\nready_path = \"healthz\"",
                "upstream.ready_path: \"healthz\" must be a path (and query) on the app, as \"/healthz\"",
            ),
            (
                "[server]\nrequest_id_header = \"Accept-Encoding\"",
                "server.request_id_header: \"Accept-Encoding\" is a header offload or HTTP itself sets or reads; pick another, as \"X-Request-ID\"",
            ),
            (
                "[server]\nrequest_id_header = \"Sec-Fetch-Site\"",
                "server.request_id_header: \"Sec-Fetch-Site\" is a header",
            ),
            (
                "[server]\nlisten = \"8080\"",
                "server.listen: bad address \"8080\": invalid socket address syntax (an address and port, as \"0.0.0.0:8080\")",
            ),
            (
                "[server]\ntls = { cert = \"c.pem\", key = \"k.pem\", redirect_http = true }",
                "server.tls.redirect_http: needs server.tls.listen",
            ),
            (
                "[server]\ntls = { cert = \"c.pem\", key = \"k.pem\", proxy_protocol = true }",
                "server.tls.proxy_protocol: needs server.tls.listen",
            ),
            (
                "[server]\nlisten = \"0.0.0.0:8080\"\ntls = { cert = \"c.pem\", key = \"k.pem\", listen = \"0.0.0.0:8080\" }",
                "server.tls.listen: must differ from server.listen",
            ),
            (
                "[server]\nlisten = \"127.0.0.1:8080\"\nadmin_listen = \"127.0.0.1:8080\"",
                "server.admin_listen: must differ from server.listen (127.0.0.1:8080)",
            ),
            (
                "[server]\nlisten = \"0.0.0.0:9090\"",
                "server.admin_listen: must differ from server.listen (0.0.0.0:9090)",
            ),
            (
                "[server]\ntls = { cert = \"c.pem\", key = \"k.pem\", listen = \"127.0.0.1:9090\" }",
                "server.admin_listen: must differ from server.tls.listen",
            ),
            (
                "[server]\nidle_timeout = \"0s\"",
                "server.idle_timeout: must be more than 0",
            ),
            (
                "[server]\nlisten = \"[::]:8080\"\nadmin_listen = \"127.0.0.1:8080\"",
                "server.admin_listen: must differ from server.listen ([::]:8080)",
            ),
            (
                "[upstream]\nresponse_timeout = \"0s\"",
                "upstream.response_timeout: must be more than 0",
            ),
            (
                "[[server]]\nlisten = \"127.0.0.1:8080\"",
                "server: is one table, written [server]; [[server]] makes a list of them",
            ),
            (
                "[[server.tls]]\ncert = \"c.pem\"\nkey = \"k.pem\"",
                "server.tls: is one table, written [server.tls]",
            ),
            (
                "log = \"info\"",
                "log: is a table, written [log], not a string",
            ),
            (
                "[uploads]\npath = \"/upload\"",
                "uploads: is a list of routes, each written [[uploads]]",
            ),
            (
                "[assets]\nsite_origins = [\"https://u:SECRET@example.com\"]",
                "assets.site_origins: https://u:***@example.com/ must be scheme://host[:port] only",
            ),
            (
                "[store]\nparts_in_flight = 1000",
                "store.parts_in_flight: must be 1 to 64",
            ),
            (
                "[store]\nmax_attempts = 100",
                "store.max_attempts: must be 1 to 10",
            ),
            (
                "[rewrite]\nmax_size = \"99999 EiB\"",
                "rewrite.max_size: too large: at most 16 EiB",
            ),
            (
                "[server]\nmax_body_size = \"20 EiB\"",
                "server.max_body_size: too large: at most 16 EiB",
            ),
            (
                "[rewrite]\nmax_size = \"0.0000001 B\"",
                "rewrite.max_size: must be more than 0",
            ),
            (
                "[assets]\npull_max_size = \"0B\"",
                "assets.pull_max_size: must be more than 0",
            ),
            (
                "[[uploads]]\npath = \"/u\"\nmax_field_size = \"0B\"",
                "uploads[0]: max_field_size: must be more than 0",
            ),
            (
                "[[uploads]]\npath = \"/u\"\nfollow = \"api/files/{id}\"",
                "uploads[0]: follow: \"api/files/{id}\" must start with '/': a path on the app",
            ),
            (
                "[[uploads]]\npath = \"/u\"\nfollow = \"/api/files/{id} full\"",
                "uploads[0]: follow: \"/api/files/{id} full\" is not a path and query a request can carry (spaces and quotes are written %20, %22)",
            ),
            (
                "[[uploads]]\npath = \"/u\"\nmode = \"respond\"\nfollow = \"/api/files/{id}\"",
                "uploads[0]: follow: only mirror mode follows the app's answer (this route's mode is \"respond\")",
            ),
            (
                "[[uploads]]\npath = \"/index.php?option=com_media&task=file.upload\"",
                "uploads[0]: path: \"/index.php?option=com_media&task=file.upload\" holds a query: write path = \"/index.php\" and query = [\"option=com_media\", \"task=file.upload\"]",
            ),
            (
                "[upstream]\nurl = \"http://admin:S3cret@127.0.0.1:8000/\"",
                "upstream.url: no user or password in it",
            ),
            (
                "[store]\nkind = \"s3\"\nbucket = \"b\"\nendpoint = \"http://AKIA:wJalr@127.0.0.1:9000\"",
                "store.endpoint: no user or password in it",
            ),
            (
                "[store]\npublic_url = \"https://cdn.example.com/media\"",
                "store.public_url: must end with '/'",
            ),
            (
                "[store]\npublic_url = \"https://u:p@cdn.example.com/\"",
                "store.public_url: no user or password",
            ),
            (
                "[store]\nserve_prefix = \"/\"",
                "store.serve_prefix: must not be '/'",
            ),
            (
                "[assets]\nsite_origins = [\"https://example.com/?lang=en\"]",
                "assets.site_origins: https://example.com/?lang=en must be scheme://host[:port] only",
            ),
            (
                "[server]\nlisten = \"127.0.0.1:8080\"\n[upstream]\nurl = \"http://localhost:8080\"",
                "upstream.url: http://localhost:8080/ is offload's own server.listen (127.0.0.1:8080)",
            ),
            (
                "[server]\nlisten = \"0.0.0.0:80\"\n[upstream]\nurl = \"http://127.0.0.1/\"",
                "upstream.url: http://127.0.0.1/ is offload's own server.listen (0.0.0.0:80)",
            ),
            (
                "[server]\ntls = { cert = \"c.pem\", key = \"k.pem\", listen = \"[::]:8443\" }\n\
                 [upstream]\nurl = \"https://[::1]:8443\"",
                "upstream.url: https://[::1]:8443/ is offload's own server.tls.listen ([::]:8443)",
            ),
            // Past what a deadline (now + the duration) can hold: every request panicked.
            (
                "[upstream]\nresponse_timeout = \"300000000000y\"",
                "upstream.response_timeout: duration \"300000000000y\" is too long: at most 1 year",
            ),
            (
                "[store]\ncache_ttl = \"366days\"",
                "store.cache_ttl: duration \"366days\" is too long",
            ),
            // hyper allocated room for this many per request head: the first one aborted.
            (
                "[server]\nmax_headers = 1000000000000",
                "server.max_headers: must be 1 to 1000",
            ),
            (
                "[server]\nworker_threads = 100000000000",
                "server.worker_threads: at most 1024",
            ),
            (
                "[assets]\npull_concurrency = 2305843009213693952",
                "assets.pull_concurrency: must be 1 to 1024",
            ),
        ] {
            let err = load(text).unwrap_err();
            let msg = format!("{err:#}");
            assert!(
                msg.to_lowercase().contains(&needle.to_lowercase()),
                "{text:?} → {msg}"
            );
        }
    }

    #[test]
    fn values_are_read_as_operators_write_them() {
        let c = load(
            "[server]\ntrusted_proxies = [\"10.0.0.1\", \"2001:db8::/32\", \"::1\"]\n\
             admin_listen = \"Off\"",
        )
        .unwrap();
        let nets: Vec<String> = c
            .server
            .trusted_proxies
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(nets, ["10.0.0.1/32", "2001:db8::/32", "::1/128"]);
        assert_eq!(c.server.admin_listen, None);
        for (text, message) in [
            (
                "[server]\nidle_timeout = 30",
                "server.idle_timeout: 30 has no unit: write a duration as text with one, as \"30s\"",
            ),
            (
                "[server]\nidle_timeout = true",
                "server.idle_timeout: invalid type: boolean `true`, expected a duration with its unit",
            ),
            (
                "[server]\nmax_header_size = \"lots\"",
                "server.max_header_size: invalid value: string \"lots\", expected a size, as \"64KiB\"",
            ),
            (
                "[server]\ntrusted_proxies = [\"10.0.0.300\"]",
                "server.trusted_proxies: \"10.0.0.300\" is neither an address nor a network",
            ),
            (
                "[server]\nadmin_listen = \"bogus\"",
                "server.admin_listen: bad address \"bogus\": invalid socket address syntax (an address and port",
            ),
        ] {
            let err = format!("{:#}", load(text).unwrap_err());
            assert!(err.starts_with(message), "{text:?} → {err}");
        }
    }

    /// Listeners clash only where one would take the other's address and port.
    #[test]
    fn listeners_of_other_families_or_ports_do_not_clash() {
        for text in [
            "[server]\nlisten = \"0.0.0.0:8080\"\nadmin_listen = \"[::1]:8080\"",
            "[server]\nlisten = \"127.0.0.1:8080\"\nadmin_listen = \"127.0.0.2:8080\"",
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"",
        ] {
            assert!(load(text).is_ok(), "{text}");
        }
        // A flag may still settle what the file leaves clashing: checked after flags.
        let text = "[server]\nlisten = \"0.0.0.0:9090\"";
        let mut config = Config::from_toml_with_env(text, &BTreeMap::new()).unwrap();
        config.server.admin_listen = None;
        assert!(config.validate().is_ok());
    }

    #[test]
    fn log_levels_and_targets_are_told_apart() {
        for good in [
            "info",
            "WARN",
            "off",
            "info,offload::access=off",
            "hyper::proto",
            "5",
        ] {
            let text = format!("[log]\nlevel = {good:?}");
            assert!(load(&text).is_ok(), "{good}");
        }
        // The parser's message once, not again as its own cause.
        let err = format!("{:#}", load("[log]\nlevel = \"offload=inf\"").unwrap_err());
        assert_eq!(
            err.matches("error parsing level filter").count(),
            1,
            "{err}"
        );
    }

    #[test]
    fn environment_overrides_file() {
        let c = load_env(
            "[store]\nbucket = \"a\"\n",
            &[
                ("OFFLOAD_STORE_BUCKET", "b"),
                ("OFFLOAD_STORE_PATH_STYLE", "true"),
                ("OFFLOAD_SERVER_LISTEN", "127.0.0.1:9"),
                ("OFFLOAD_SERVER_MAX_BODY_SIZE", "2GiB"),
                ("OFFLOAD_ASSETS_PREFIXES", "[\"/media/\"]"),
                ("OFFLOAD_PRESET", "wordpress"),
                ("OFFLOAD_UPSTREAM_UNIX_SOCKET", "/run/app/http.sock"),
            ],
        )
        .unwrap();
        assert_eq!(c.store.bucket, "b");
        assert_eq!(
            c.upstream.unix_socket.as_deref(),
            Some(std::path::Path::new("/run/app/http.sock"))
        );
        assert!(c.store.path_style);
        assert_eq!(c.server.listen, "127.0.0.1:9".parse().unwrap());
        assert_eq!(c.server.max_body_size, Some(ByteSize::gib(2)));
        assert!(c.assets.prefixes.contains(&"/media/".to_string()));
        assert!(
            c.assets
                .prefixes
                .contains(&"/wp-content/uploads/".to_string())
        );
        let err = load_env("", &[("OFFLOAD_STORE_BUKET", "x")]).unwrap_err();
        assert!(
            format!("{err:#}").contains("did you mean `bucket`"),
            "{err:#}"
        );
        assert!(load_env("", &[("OFFLOAD_E2E_DIR", "/tmp/x")]).is_ok());
    }

    #[test]
    fn environment_reaches_every_kind_of_key() {
        let c = load_env(
            "",
            &[
                // Strings that read as TOML numbers or booleans stay strings.
                ("OFFLOAD_STORE_BUCKET", "12345"),
                ("OFFLOAD_STORE_PREFIX", "true"),
                ("OFFLOAD_LOG_LEVEL", "info"),
                ("OFFLOAD_SERVER_TLS_CERT", "/etc/c.pem"),
                ("OFFLOAD_SERVER_TLS_KEY", "/etc/k.pem"),
                (
                    "OFFLOAD_UPLOADS",
                    "[{ path = \"/upload\", mode = \"respond\" }]",
                ),
            ],
        )
        .unwrap();
        assert_eq!(c.store.bucket, "12345");
        assert_eq!(c.store.prefix, "true");
        let tls = c.server.tls.expect("tls from the environment");
        assert_eq!(tls.cert, std::path::Path::new("/etc/c.pem"));
        assert_eq!(tls.key, std::path::Path::new("/etc/k.pem"));
        assert_eq!(c.uploads.len(), 1);
        assert_eq!(c.uploads[0].path, "/upload");
        // A number where one is wanted is still one, and still checked; a list or a table
        // with a mistake in it is reported as that mistake.
        for (variable, value, message) in [
            (
                "OFFLOAD_SERVER_MAX_HEADERS",
                "many",
                "server.max_headers: invalid type: string",
            ),
            (
                "OFFLOAD_SERVER_MAX_HEADERS",
                "-1",
                "server.max_headers: invalid value: integer `-1`",
            ),
            (
                "OFFLOAD_UPLOADS",
                "[{ pth = \"/x\" }]",
                "uploads[0].pth: unknown key; did you mean `path`?",
            ),
            (
                "OFFLOAD_SERVER_TLS",
                "{ cert = \"c.pem\" }",
                "server.tls: missing field `key`",
            ),
        ] {
            let err = format!("{:#}", load_env("", &[(variable, value)]).unwrap_err());
            assert!(err.starts_with(message), "{variable}={value} → {err}");
        }
    }

    /// Whatever finds a variable's value wrong, the message names the variable, down to a
    /// key inside the list or table it set.
    #[test]
    fn errors_name_the_variable_that_set_the_key() {
        for (variable, value, message) in [
            (
                "OFFLOAD_SERVER_MAX_HEADERS",
                "0",
                "server.max_headers: must be 1 to 1000 (set by OFFLOAD_SERVER_MAX_HEADERS)",
            ),
            (
                "OFFLOAD_UPSTREAM_URL",
                "ftp://x",
                "upstream.url: scheme must be http or https, not \"ftp\" \
                 (set by OFFLOAD_UPSTREAM_URL)",
            ),
            (
                "OFFLOAD_UPLOADS",
                "[{ pth = \"/x\" }]",
                "uploads[0].pth: unknown key; did you mean `path`? (set by OFFLOAD_UPLOADS)",
            ),
            (
                "OFFLOAD_UPLOADS",
                "[{ path = \"x\" }]",
                "uploads[0]: path: \"x\" must start with '/' (set by OFFLOAD_UPLOADS)",
            ),
            (
                "OFFLOAD_UPLOADS",
                "[{ path = ",
                "uploads: is a list of routes, each written [[uploads]] (set by OFFLOAD_UPLOADS)",
            ),
        ] {
            let err = format!("{:#}", load_env("", &[(variable, value)]).unwrap_err());
            assert_eq!(err, message, "{variable}={value}");
        }
        // The same mistake in the file names no variable.
        let err = load("[server]\nmax_headers = 0\n").unwrap_err();
        assert_eq!(err.to_string(), "server.max_headers: must be 1 to 1000");
    }

    #[test]
    fn command_variables_are_not_config_keys() {
        let c = load_env(
            "",
            &[
                ("OFFLOAD_CONFIG", "/etc/offload/proxy.toml"),
                ("OFFLOAD_BACKUP_ENDPOINT", "http://127.0.0.1:9000"),
            ],
        )
        .unwrap();
        assert_eq!(c.store.kind, StoreKind::Fs);
    }

    #[test]
    fn wordpress_preset_fills_routes_once() {
        let c = load("preset = \"wordpress\"\n[[uploads]]\npath = \"/wp-json/wp/v2/media\"\nmode = \"mirror\"\nmax_file_size = \"1MiB\"\n").unwrap();
        assert_eq!(c.assets.prefixes, vec!["/wp-content/uploads/".to_string()]);
        let paths: Vec<_> = c.uploads.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(
            paths
                .iter()
                .filter(|p| **p == "/wp-json/wp/v2/media")
                .count(),
            1
        );
        assert!(paths.contains(&"/wp-admin/async-upload.php"));
        // The file's own route keeps its own limits.
        assert_eq!(c.uploads[0].max_file_size, ByteSize::mib(1));
        // The REST media route as every permalink setting spells it.
        let routes = crate::upload::UploadRoutes::new(&c.uploads, &c.store).unwrap();
        for target in [
            "/wp-json/wp/v2/media",
            "/?rest_route=/wp/v2/media",
            "/index.php?rest_route=%2Fwp%2Fv2%2Fmedia",
            "/index.php/wp-json/wp/v2/media",
            "/?rest_route=/wp/v2/media/",
            "/?rest.route=/WP/v2/Media",
        ] {
            let uri: http::Uri = target.parse().unwrap();
            assert!(routes.find(&http::Method::POST, &uri).is_some(), "{target}");
        }
        let other = "/?rest_route=/wp/v2/posts".parse().unwrap();
        assert!(routes.find(&http::Method::POST, &other).is_none());
        let async_upload = |c: &Config| {
            c.uploads
                .iter()
                .find(|r| r.path == "/wp-admin/async-upload.php")
                .map(|r| r.follow.clone())
        };
        let media = Some("/wp-json/wp/v2/media/{id}".to_string());
        assert_eq!(async_upload(&c), Some(media));
        // A route of the file's own there in another mode follows nothing (it could not).
        let own = "preset = \"wordpress\"\n[[uploads]]\npath = \"/wp-admin/async-upload.php\"\nmode = \"replace\"\n";
        assert_eq!(async_upload(&load(own).unwrap()), Some(None));
    }

    /// A route of the file's own at a preset's path with another query does not take the
    /// preset's place: both are matched.
    #[test]
    fn a_route_at_a_preset_path_with_another_query_keeps_the_presets() {
        let c = load(
            "preset = \"wordpress\"\n[[uploads]]\npath = \"/index.php\"\nquery = [\"action=my_upload\"]\n",
        )
        .unwrap();
        let routes = crate::upload::UploadRoutes::new(&c.uploads, &c.store).unwrap();
        for target in [
            "/index.php?action=my_upload",
            "/index.php?rest_route=/wp/v2/media",
        ] {
            let uri: http::Uri = target.parse().unwrap();
            assert!(routes.find(&http::Method::POST, &uri).is_some(), "{target}");
        }
        let with_same_query = load(
            "preset = \"wordpress\"\n[[uploads]]\npath = \"/index.php\"\nquery = [\"rest_route=/wp/v2/media\"]\nmax_file_size = \"1MiB\"\n",
        )
        .unwrap();
        let at_index: Vec<_> = with_same_query
            .uploads
            .iter()
            .filter(|r| r.path == "/index.php")
            .collect();
        assert_eq!(at_index.len(), 1);
        assert_eq!(at_index[0].max_file_size, ByteSize::mib(1));
    }

    /// Refused at load (see the table above), but printed masked should one get through.
    #[test]
    fn passwords_in_urls_are_not_printed() {
        let mut c = load("[store]\nkind = \"s3\"\nbucket = \"b\"").unwrap();
        c.upstream.url = Url::parse("http://admin:S3cret@127.0.0.1:8000/").unwrap();
        c.store.endpoint = Some(Url::parse("http://AKIA:wJalr@127.0.0.1:9000").unwrap());
        let printed = c.to_redacted_toml().unwrap();
        assert!(
            !printed.contains("S3cret") && !printed.contains("wJalr"),
            "{printed}"
        );
        assert!(
            printed.contains("url = \"http://admin:***@127.0.0.1:8000/\""),
            "{printed}"
        );
        assert!(
            printed.contains("endpoint = \"http://AKIA:***@127.0.0.1:9000/\""),
            "{printed}"
        );
    }

    /// A URL that does not parse is quoted in the error: its password is not.
    #[test]
    fn passwords_in_refused_urls_are_not_printed() {
        let err = load("[store]\npublic_url = \"https://bob:PUBSECRET@cdn.example.com:99999/\"")
            .unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "store.public_url: invalid port number: \"https://bob:***@cdn.example.com:99999/\""
        );
        let err = load_env(
            "",
            &[(
                "OFFLOAD_UPSTREAM_URL",
                "http://u:envsecret@127.0.0.1:999999",
            )],
        )
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(!msg.contains("envsecret"), "{msg}");
        assert!(msg.contains("http://u:***@127.0.0.1:999999"), "{msg}");
        // Only what sits between "://" and "@" in one authority is masked.
        assert_eq!(
            mask_passwords_in_text("a \"http://h:1/p@x\" b ftp://u:p:q@h/ c://@ d://u@h"),
            "a \"http://h:1/p@x\" b ftp://u:***@h/ c://@ d://***@h"
        );
    }

    #[test]
    fn effective_config_round_trips() {
        let c = load("preset = \"joomla\"").unwrap();
        let printed = c.to_redacted_toml().unwrap();
        let again = load(&printed).unwrap();
        assert_eq!(again.uploads.len(), c.uploads.len());
        assert_eq!(again.assets.prefixes, c.assets.prefixes);
    }

    /// What check-config prints of a size reads back as the same number of bytes.
    #[test]
    fn printed_sizes_are_the_sizes_in_force() {
        let c = load(
            "[server]\nmax_body_size = \"100MB\"\n[store]\npart_size = \"5242881\"\n\
             [log]\nbuffer = \"1000\"\n[[uploads]]\npath = \"/u\"\nmax_file_size = \"1.5MiB\"\n",
        )
        .unwrap();
        let printed = c.to_redacted_toml().unwrap();
        assert!(
            printed.contains("max_body_size = \"100000000 B\""),
            "{printed}"
        );
        assert!(
            printed.contains("max_header_size = \"64 KiB\""),
            "{printed}"
        );
        let again = load(&printed).unwrap();
        assert_eq!(again.server.max_body_size, Some(ByteSize(100_000_000)));
        assert_eq!(again.store.part_size, ByteSize(5_242_881));
        assert_eq!(again.log.buffer, ByteSize(1000));
        assert_eq!(again.uploads[0].max_file_size, ByteSize::kib(1536));
        assert_eq!(again.server.max_header_size, ByteSize::kib(64));
        // Unset stays unset.
        let printed = load("").unwrap().to_redacted_toml().unwrap();
        assert!(!printed.contains("max_body_size = "), "{printed}");
    }
}
