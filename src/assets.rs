//! Managed assets: which URLs point at the store, serving what a replica lacks, origin pull.
//!
//! - [`AssetIndex`] answers the rewriter's question "does this asset live in the store?" from
//!   the presence cache alone (no I/O on the response path); an unknown or absent asset stays
//!   local and is queued for an [`OriginPull`].
//! - [`OriginPull`] copies assets the app has and the store lacks: GET from the configured app
//!   (never a URL from a request), PUT to the store, once per key, with bounded concurrency.
//! - [`handle_request`] serves `GET`/`HEAD` under a managed prefix: the app first; on its
//!   `404`, the object from the store (or a redirect to its public URL).
//! - [`MirrorCopy`] is what mirror-mode uploads run on the app's `2xx` answer: every managed
//!   asset the answer names is copied into the store before the answer is released.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::body::{self, Body, BoxError, Stalled};
use crate::config::{AssetsConfig, MissingAsset, StoreConfig};
use crate::proxy::{ClientInfo, Upstream};
use crate::rewrite::{self, AssetMap, Rules};
use crate::server::RequestOrigin;
use crate::store::{self, ObjectInfo, Presence, PutOptions, Store, StoreError};
use crate::upload::{AfterApp, json_response};

/// Largest app answer to an upload that mirror mode reads to find the assets it names.
const MIRROR_ANSWER_LIMIT: usize = 4 << 20;

/// Most assets one upload's answer has copied into the store in mirror mode: an upload makes
/// a few files (WordPress: an image and its sizes, ~10), and each copy is a request to the
/// app made while the client waits; an answer naming thousands would hold it that long.
const MIRROR_MAX_COPIES: usize = 256;

/// How long an asset whose pull the app's answer turned down (a 404, a type or size not
/// pulled) is not asked of the app again, as a CDN caches an error: the page naming it is
/// viewed again and again, and its absent answer lasts only `store.cache_absent_ttl`.
const PULL_REFUSED_TTL: Duration = Duration::from_secs(300);

/// Most origin pulls waiting at once; past it new ones are dropped (a later page asks again).
const PULL_QUEUE_LIMIT: usize = 10_000;

/// Largest (uncompressed) text answer read whole to look up the assets it names before it
/// is rewritten; larger answers stream, rewriting from the presence cache alone.
const RESOLVE_BODY_LIMIT: usize = 2 << 20;

/// Longest a response waits for the store to say which of its unknown assets it holds.
const RESOLVE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Presence checks (HEADs) in flight at once for one response.
const RESOLVE_CONCURRENCY: usize = 16;

/// Answers read whole at once (each at most [`RESOLVE_BODY_LIMIT`]: 64 MiB in all); past it,
/// answers stream and are rewritten from the presence cache alone.
const RESOLVE_BODIES_AT_ONCE: usize = 32;

/// Everything asset handling needs, built once.
pub struct Assets {
    pub rules: Arc<Rules>,
    pub index: Arc<AssetIndex>,
    pub store: Arc<dyn Store>,
    pub upstream: Arc<Upstream>,
    missing: MissingAsset,
    /// Bounds the memory of answers read whole by [`Assets::resolve_body`].
    resolve_budget: Semaphore,
    /// How long an app's answer read whole may go without a byte (`server.idle_timeout`):
    /// nothing is sent to the client meanwhile, so no other timeout watches it.
    answer_stall: Duration,
}

impl Assets {
    pub fn new(
        rules: Arc<Rules>,
        store: Arc<dyn Store>,
        presence: Arc<Presence>,
        upstream: Arc<Upstream>,
        store_cfg: &StoreConfig,
        cfg: &AssetsConfig,
        answer_stall: Duration,
    ) -> Assets {
        let pull = OriginPull::new(
            store.clone(),
            presence.clone(),
            upstream.clone(),
            cfg,
            store_cfg.cache_control.clone(),
            answer_stall,
        );
        let index = Arc::new(AssetIndex {
            store: store.clone(),
            presence,
            key_prefix: store_cfg.prefix.clone(),
            assume_present: cfg.assume_present,
            pull: Arc::new(pull),
        });
        Assets {
            rules,
            index,
            store,
            upstream,
            missing: cfg.missing,
            resolve_budget: Semaphore::new(RESOLVE_BODIES_AT_ONCE),
            answer_stall,
        }
    }

    /// Prepares an uncompressed text answer for rewriting: when it is small (at most
    /// [`RESOLVE_BODY_LIMIT`]) and the memory budget allows, it is read whole and the store is
    /// asked about the assets it names ([`Assets::resolve_named`]); otherwise it streams on.
    pub async fn resolve_body(
        &self,
        origin: Option<&url::Url>,
        host: Option<&HeaderValue>,
        body: Body,
    ) -> Result<Body, crate::body::BoxError> {
        if self.index.assume_present {
            return Ok(body);
        }
        let Ok(_permit) = self.resolve_budget.try_acquire() else {
            return Ok(body);
        };
        match read_bounded(body, RESOLVE_BODY_LIMIT, self.answer_stall).await {
            Ok(text) => {
                self.resolve_named(origin, self.pull_host(host), &text)
                    .await;
                Ok(body::full(text))
            }
            Err(ReadBounded::TooLarge(prefix, rest)) => Ok(body::prepend(prefix, rest)),
            Err(ReadBounded::Failed(err)) => Err(err),
        }
    }

    /// The rewriter's view of the store for a page asked with `host`.
    pub fn page(&self, host: Option<&HeaderValue>) -> Arc<PageAssets> {
        PageAssets::new(self.index.clone(), self.pull_host(host).cloned())
    }

    /// The Host origin pulls for a page asked with `host` send the app: `host` when it names
    /// the site (`assets.site_origins`), so that a name-based virtual host answers as for
    /// the page; else none (the upstream's own). Keys do not depend on the host: a client's
    /// Host naming another site on the app must not have that site's files stored as ours.
    pub fn pull_host<'a>(&self, host: Option<&'a HeaderValue>) -> Option<&'a HeaderValue> {
        host.filter(|host| self.rules.names_the_site(host.as_bytes()))
    }

    /// The normalised, decoded managed path of a request path, or `None` when the path is not
    /// under a managed prefix or normalises outside it (traversal, encoded slashes, NUL…).
    pub fn managed_path(&self, raw_path: &str) -> Option<String> {
        self.rules.managed_path(raw_path)
    }

    /// The store key of a managed path.
    pub fn key(&self, path: &str) -> String {
        store::asset_key(&self.index.key_prefix, path)
    }

    /// Asks the store about every asset `text` names that the presence cache does not know
    /// (HEADs, shared with concurrent askers, at most [`RESOLVE_WAIT`] in all), so that the
    /// rewrite that follows points at the bucket for objects another replica just stored.
    /// Assets found absent are queued for an origin pull, asked of the app with `host`, the
    /// page's own (a name-based virtual host serves its files to its own name only).
    /// Returns how many were looked up.
    ///
    /// Without this, a replica whose cache is cold (it did not handle the upload) would serve
    /// its first pages with local URLs for files only the bucket has.
    pub async fn resolve_named(
        &self,
        origin: Option<&url::Url>,
        host: Option<&HeaderValue>,
        text: &[u8],
    ) -> usize {
        if self.index.assume_present {
            return 0;
        }
        let unknown: Vec<(String, String)> =
            rewrite::collect_asset_paths(&self.rules, origin, text)
                .into_iter()
                .filter(|path| names_an_object(path))
                .map(|path| {
                    let key = self.key(&path);
                    (path, key)
                })
                .filter(|(_, key)| self.index.presence.cached(key).is_none())
                .collect();
        let count = unknown.len();
        if count == 0 {
            return 0;
        }
        let lookups = futures_util::stream::iter(unknown)
            .map(|(path, key)| async move {
                if let Ok(false) = self.index.presence.is_present(&key).await {
                    self.index.pull.enqueue(path, key, host.cloned());
                }
            })
            .buffer_unordered(RESOLVE_CONCURRENCY)
            .for_each(|()| async {});
        if tokio::time::timeout(RESOLVE_WAIT, lookups).await.is_err() {
            debug!(
                count,
                "store lookups for a response timed out; unknown assets stay local"
            );
        }
        count
    }
}

/// The rewriter's view of the store for one page: the presence cache, and the page's Host
/// for the origin pulls of assets it names that the cache does not know.
pub struct PageAssets {
    index: Arc<AssetIndex>,
    host: Option<HeaderValue>,
}

impl PageAssets {
    fn new(index: Arc<AssetIndex>, host: Option<HeaderValue>) -> Arc<PageAssets> {
        Arc::new(PageAssets { index, host })
    }
}

/// The store as the pages see it: a sync lookup in the presence cache.
pub struct AssetIndex {
    store: Arc<dyn Store>,
    presence: Arc<Presence>,
    key_prefix: String,
    assume_present: bool,
    pull: Arc<OriginPull>,
}

impl AssetMap for PageAssets {
    fn public_url(&self, path: &str, url: &mut String) -> bool {
        self.index.public_url(path, url, self.host.as_ref())
    }
}

impl AssetIndex {
    /// Whether the asset at `path` is served from its public URL (into `url`); an asset the
    /// cache does not know is queued for an origin pull, asked of the app with `host`.
    fn public_url(&self, path: &str, url: &mut String, host: Option<&HeaderValue>) -> bool {
        if !names_an_object(path) {
            return false;
        }
        // The key without a copy in the usual case of no key prefix.
        let key = match self.key_prefix.is_empty() {
            true => Cow::Borrowed(path.trim_start_matches('/')),
            false => Cow::Owned(store::asset_key(&self.key_prefix, path)),
        };
        if self.assume_present {
            self.store.push_public_url(&key, url);
            return true;
        }
        match self.presence.cached(&key) {
            Some(true) => {
                self.store.push_public_url(&key, url);
                true
            }
            // Known absent: a pull is (or was just) under way; stay local meanwhile.
            Some(false) => false,
            None => {
                self.pull
                    .enqueue(path.to_string(), key.into_owned(), host.cloned());
                false
            }
        }
    }
}

/// Whether a managed path can name an object: a folder's (`/uploads/2024/`) cannot, and
/// the store refuses it as a key.
fn names_an_object(path: &str) -> bool {
    !path.ends_with('/')
}

/// Background copies of assets from the app into the store.
pub struct OriginPull {
    store: Arc<dyn Store>,
    presence: Arc<Presence>,
    upstream: Arc<Upstream>,
    enabled: bool,
    max_size: u64,
    /// How long the app's answer may go without a byte (`server.idle_timeout`): a copy holds
    /// its place under `pull_concurrency` and an app connection while it runs.
    stall: Duration,
    types: Vec<String>,
    cache_control: String,
    permits: Arc<Semaphore>,
    /// Keys queued or being pulled: each is pulled once however many pages name it.
    pending: Mutex<HashSet<String>>,
    /// Keys whose pull the app's answer turned down (not a 200, a type not pulled, too
    /// large, compressed), not asked of the app again for [`PULL_REFUSED_TTL`].
    refused: moka::sync::Cache<String, ()>,
}

impl OriginPull {
    fn new(
        store: Arc<dyn Store>,
        presence: Arc<Presence>,
        upstream: Arc<Upstream>,
        cfg: &AssetsConfig,
        cache_control: String,
        stall: Duration,
    ) -> OriginPull {
        OriginPull {
            store,
            presence,
            upstream,
            enabled: cfg.origin_pull,
            max_size: cfg.pull_max_size.as_u64(),
            stall,
            types: cfg.pull_types.clone(),
            cache_control,
            permits: Arc::new(Semaphore::new(cfg.pull_concurrency)),
            pending: Mutex::new(HashSet::new()),
            refused: moka::sync::Cache::builder()
                .max_capacity(PULL_QUEUE_LIMIT as u64)
                .time_to_live(PULL_REFUSED_TTL)
                .build(),
        }
    }

    /// Queues a check (and, when absent, a copy with `host` as the app's Host) of `key`,
    /// unless one is already queued.
    fn enqueue(self: &Arc<Self>, path: String, key: String, host: Option<HeaderValue>) {
        {
            let Ok(mut pending) = self.pending.lock() else {
                return;
            };
            if pending.len() >= PULL_QUEUE_LIMIT || !pending.insert(key.clone()) {
                return;
            }
        }
        let this = self.clone();
        tokio::spawn(async move {
            let Ok(_permit) = this.permits.clone().acquire_owned().await else {
                return;
            };
            this.check_and_pull(&path, &key, host.as_ref()).await;
            if let Ok(mut pending) = this.pending.lock() {
                pending.remove(&key);
            }
        });
    }

    async fn check_and_pull(&self, path: &str, key: &str, host: Option<&HeaderValue>) {
        match self.presence.is_present(key).await {
            Ok(true) => return,
            Ok(false) => {}
            Err(err) => {
                warn!(%key, error = %err, "presence check failed");
                return;
            }
        }
        if !self.enabled || self.refused.contains_key(key) {
            return;
        }
        match self.copy_from_app(path, key, host).await {
            Ok(Some(_)) => info!(%key, "origin pull stored"),
            Ok(None) => self.refused.insert(key.to_string(), ()),
            Err(err) => warn!(%key, error = %err, "origin pull failed"),
        }
    }

    /// GETs `path` from the app (as `host`, the Host of the page that named it) and stores
    /// it under `key`. `Ok(None)` when the app's answer is not something to offload (not
    /// 200, wrong type, too large).
    pub async fn copy_from_app(
        &self,
        path: &str,
        key: &str,
        host: Option<&HeaderValue>,
    ) -> Result<Option<ObjectInfo>, PullError> {
        let request_path = store::encode_key(path);
        let mut headers = HeaderMap::new();
        if let Some(host) = host {
            headers.insert(header::HOST, host.clone());
        }
        let response = self
            .upstream
            .get(&request_path, headers)
            .await
            .map_err(|e| PullError::App(e.to_string()))?;
        if response.status() != StatusCode::OK {
            debug!(%key, status = %response.status(), "origin pull skipped: app did not answer 200");
            return Ok(None);
        }
        let headers = response.headers();
        let content_type = header_str(headers, header::CONTENT_TYPE);
        if !type_allowed(&self.types, content_type.as_deref()) {
            debug!(%key, ?content_type, "origin pull skipped: type not allowed");
            return Ok(None);
        }
        let length =
            header_str(headers, header::CONTENT_LENGTH).and_then(|l| l.parse::<u64>().ok());
        if length.is_some_and(|l| l > self.max_size) {
            return Ok(None);
        }
        if headers.contains_key(header::CONTENT_ENCODING) {
            // The app compressed it on the fly; storing that would serve the wrong bytes.
            return Ok(None);
        }
        // Active content (SVG, HTML…) is stored as a download, as uploads are: served from
        // the store in the site's origin, it must never run there.
        let filename = path.rsplit('/').next().unwrap_or_default();
        let content_disposition = content_type
            .as_deref()
            .and_then(|ct| crate::upload::download_disposition(ct, filename));
        let opts = PutOptions {
            content_type,
            cache_control: header_str(headers, header::CACHE_CONTROL)
                .or_else(|| Some(self.cache_control.clone())),
            content_disposition,
            metadata: Default::default(),
            size_hint: length,
        };
        let over_limit = Arc::new(AtomicBool::new(false));
        let stream = limited_stream(
            response.into_body(),
            self.max_size,
            self.stall,
            Arc::clone(&over_limit),
        );
        let info = match self.store.put(key, stream, opts).await {
            Ok(info) => info,
            // An answer of no stated length that ran past the limit: too large, as one
            // whose Content-Length said so.
            Err(_) if over_limit.load(Ordering::Relaxed) => {
                debug!(%key, limit = self.max_size, "origin pull skipped: larger than pull_max_size");
                return Ok(None);
            }
            Err(err) => return Err(PullError::Store(err)),
        };
        self.presence.mark_present(key);
        Ok(Some(info))
    }
}

/// Why an origin pull failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("fetching from the app: {0}")]
    App(String),
    #[error(transparent)]
    Store(StoreError),
}

/// The body of an app answer as a store stream, failing past `limit` bytes (and then setting
/// `over_limit`) or when no byte comes for `stall` (the put is then aborted: nothing
/// half-written).
fn limited_stream(
    body: Body,
    limit: u64,
    stall: Duration,
    over_limit: Arc<AtomicBool>,
) -> store::ByteStream {
    let state = (body, 0u64, over_limit);
    futures_util::stream::try_unfold(state, move |(mut body, seen, over_limit)| async move {
        let next = body::next_data(&mut body, stall).await;
        let Some(chunk) = next.map_err(std::io::Error::other)? else {
            return Ok(None);
        };
        let seen = seen + chunk.len() as u64;
        if seen > limit {
            over_limit.store(true, Ordering::Relaxed);
            return Err(std::io::Error::other(format!("larger than {limit} bytes")));
        }
        Ok(Some((chunk, (body, seen, over_limit))))
    })
    .boxed()
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Whether `content_type` is in `allowed` (an entry ending in `/` matches a whole family).
fn type_allowed(allowed: &[String], content_type: Option<&str>) -> bool {
    let Some(ct) = content_type else { return false };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    allowed.iter().any(|a| {
        if a.ends_with('/') {
            essence.starts_with(a.as_str())
        } else {
            essence == *a
        }
    })
}

/// `GET`/`HEAD` of a managed asset: the app first; on its `404` (or its `502`/`503`/`504`,
/// or no answer at all), the store.
pub async fn handle_request(
    assets: &Assets,
    path: &str,
    req: Request<Body>,
    client: &ClientInfo,
) -> Response<Body> {
    let head_only = req.method() == Method::HEAD;
    let req_headers = req.headers().clone();
    let query = req.uri().query().map(str::to_string);
    let asked = Asked {
        path,
        query: query.as_deref(),
        headers: &req_headers,
        head_only,
    };
    let response = match assets.upstream.forward(req, client).await {
        Ok(response) => response,
        // The app is down: the store can still serve what it holds.
        Err(err) => {
            warn!(error = %err, "app unreachable for an asset; trying the store");
            return serve_missing(assets, &asked)
                .await
                .unwrap_or_else(|| err.into_response());
        }
    };
    // The app lacks it, or its server is up but the app behind it is not (PHP-FPM down
    // behind nginx: 502, 503, 504): the store may have it.
    let app_lacks_it = matches!(
        response.status(),
        StatusCode::NOT_FOUND
            | StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT
    );
    if !app_lacks_it || assets.missing == MissingAsset::Off {
        return response;
    }
    match serve_missing(assets, &asked).await {
        Some(from_store) => from_store,
        None => response,
    }
}

/// What the client asked for an asset.
struct Asked<'a> {
    path: &'a str,
    query: Option<&'a str>,
    headers: &'a HeaderMap,
    head_only: bool,
}

/// The store's answer for an asset the app lacks, or `None` to keep the app's own answer:
/// when the store has nothing there either, or the path names no object (a folder's, with
/// its trailing `/`), whose `404` is the app's to give.
async fn serve_missing(assets: &Assets, asked: &Asked<'_>) -> Option<Response<Body>> {
    if !names_an_object(asked.path) {
        return None;
    }
    let key = assets.key(asked.path);
    match assets.missing {
        MissingAsset::Off => None,
        MissingAsset::Store => {
            let response =
                store::serve_object(&*assets.store, &key, asked.headers, asked.head_only).await;
            if response.status() == StatusCode::NOT_FOUND {
                // Gone from the store behind offload's back: pages stop pointing at it.
                assets.index.presence.mark_absent(&key);
                return None;
            }
            Some(response)
        }
        MissingAsset::Redirect => match assets.index.presence.is_present(&key).await {
            Ok(true) => {
                // The target is built from our own public base and the key: never from the
                // request, so this cannot become an open redirect. The query (a cache
                // buster, `?ver=2`) goes along, as rewritten URLs keep it.
                let mut url = assets.store.public_url(&key);
                if let Some(query) = asked.query {
                    url.push('?');
                    url.push_str(query);
                }
                let location = HeaderValue::from_str(&url).ok()?;
                let mut response = Response::new(body::empty());
                *response.status_mut() = StatusCode::FOUND;
                response.headers_mut().insert(header::LOCATION, location);
                Some(response)
            }
            _ => None,
        },
    }
}

/// Mirror mode's post-answer step: copies every managed asset named in the app's `2xx`
/// answer into the store, then rewrites the answer's URLs to the public ones.
///
/// The files teed into the store while the upload streamed are kept only when the app's
/// answer does not account for them: a teed copy whose bytes (SHA-256) equal an asset now
/// stored under the app's own URL is removed, so the bucket holds each upload once, under the
/// key every replica computes from its URL.
pub struct MirrorCopy {
    pub assets: Arc<Assets>,
    /// Per upload path, a follow-up lookup (`upload.follow`) naming more of the upload's
    /// assets than the answer does.
    pub follows: HashMap<String, String>,
}

#[async_trait]
impl AfterApp for MirrorCopy {
    async fn on_success(
        &self,
        req: &http::request::Parts,
        teed: &[String],
        resp: Response<Body>,
    ) -> Response<Body> {
        let (mut parts, body) = resp.into_parts();
        if parts.headers.contains_key(header::CONTENT_ENCODING) {
            // Upload answers are small and rarely compressed; don't decode here.
            return Response::from_parts(parts, body);
        }
        let text = match read_bounded(body, MIRROR_ANSWER_LIMIT, self.assets.answer_stall).await {
            Ok(text) => text,
            Err(ReadBounded::TooLarge(prefix, rest)) => {
                // Too large to scan: release it as it is.
                return Response::from_parts(parts, body::prepend(prefix, rest));
            }
            Err(ReadBounded::Failed(err)) => {
                warn!(error = %err, "reading the app's upload answer failed");
                return answer_failed(&err, "the app's answer to the upload");
            }
        };
        let origin = req
            .extensions
            .get::<RequestOrigin>()
            .and_then(|o| o.0.clone());
        // The upload's Host: the copies are asked of the app as the page that named them was.
        let host = crate::proxy::request_host(&req.uri, &req.headers);
        let host = self.assets.pull_host(host.as_ref());
        let mut paths = rewrite::collect_asset_paths(&self.assets.rules, origin.as_ref(), &text);
        paths.extend(self.follow_up(req, &text, origin.as_ref()).await);
        let mut stored_hashes = HashSet::new();
        let paths: Vec<String> = dedup(paths)
            .into_iter()
            .filter(|path| names_an_object(path))
            .collect();
        if paths.len() > MIRROR_MAX_COPIES {
            warn!(
                named = paths.len(),
                copied = MIRROR_MAX_COPIES,
                "mirror: the app's answer to an upload names more assets than are copied; \
                 the rest are left to origin pull"
            );
        }
        for path in paths.into_iter().take(MIRROR_MAX_COPIES) {
            let key = self.assets.key(&path);
            match self
                .assets
                .index
                .pull
                .copy_from_app(&path, &key, host)
                .await
            {
                Ok(Some(info)) => {
                    debug!(%key, "mirror: stored");
                    stored_hashes.extend(info.sha256);
                }
                Ok(None) => debug!(%key, "mirror: app did not serve it"),
                Err(err) => {
                    warn!(%key, error = %err, "mirror: copying an uploaded asset failed");
                    return json_response(
                        StatusCode::BAD_GATEWAY,
                        &serde_json::json!({
                            "error": "the upload reached the app but could not be copied to the store"
                        }),
                    );
                }
            }
        }
        self.drop_duplicate_tees(teed, &stored_hashes).await;
        let page = self.assets.page(host);
        let rewriter = rewrite::Rewriter::new(self.assets.rules.clone(), origin, page);
        let content_type = header_str(&parts.headers, header::CONTENT_TYPE).unwrap_or_default();
        let body = match rewrite::ContentKind::from_content_type(&content_type, false, true) {
            Some(kind) => rewriter
                .body(kind, None, body::full(text.clone()))
                .unwrap_or_else(|_| body::full(text)),
            None => body::full(text),
        };
        rewrite::prepare_headers(&mut parts.headers);
        Response::from_parts(parts, body)
    }
}

impl MirrorCopy {
    /// The asset paths named by the route's follow-up lookup, if it has one: `{id}` is the
    /// `id` (or `data.id`) of the app's JSON answer, fetched from the app with the uploader's
    /// cookies (WordPress's async-upload answer lists four of an image's six files; its REST
    /// media item lists all of them).
    async fn follow_up(
        &self,
        req: &http::request::Parts,
        answer: &[u8],
        origin: Option<&url::Url>,
    ) -> Vec<String> {
        let Some(template) = self.follows.get(req.uri.path()) else {
            return Vec::new();
        };
        let Some(id) = answer_id(answer) else {
            return Vec::new();
        };
        let target = template.replace("{id}", &id.to_string());
        let mut headers = HeaderMap::new();
        for name in [header::COOKIE, header::HOST] {
            for value in req.headers.get_all(&name) {
                headers.append(name.clone(), value.clone());
            }
        }
        let response = match self.assets.upstream.get(&target, headers).await {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => {
                debug!(%target, status = %r.status(), "mirror follow-up not answered");
                return Vec::new();
            }
            Err(err) => {
                warn!(%target, error = %err, "mirror follow-up failed");
                return Vec::new();
            }
        };
        let stall = self.assets.answer_stall;
        match read_bounded(response.into_body(), MIRROR_ANSWER_LIMIT, stall).await {
            Ok(text) => rewrite::collect_asset_paths(&self.assets.rules, origin, &text),
            Err(_) => Vec::new(),
        }
    }

    /// Removes teed copies whose bytes the store now holds under the app's own URL.
    async fn drop_duplicate_tees(&self, teed: &[String], stored: &HashSet<String>) {
        for key in teed {
            let duplicate = match self.assets.store.head(key).await {
                Ok(Some(info)) => info.sha256.is_some_and(|h| stored.contains(&h)),
                _ => false,
            };
            if !duplicate {
                continue;
            }
            match self.assets.store.delete(key).await {
                // Known gone at once, rather than trusted present until the cache's TTL.
                Ok(()) => self.assets.index.presence.mark_absent(key),
                Err(err) => warn!(%key, error = %err, "mirror: removing the teed copy failed"),
            }
        }
    }
}

/// The `id` or `data.id` of a JSON answer (WordPress's upload answers carry one of them).
fn answer_id(answer: &[u8]) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_slice(answer).ok()?;
    value
        .get("id")
        .or_else(|| value.get("data").and_then(|d| d.get("id")))
        .and_then(|id| id.as_u64())
}

/// `paths` in their first order, without repeats.
fn dedup(paths: Vec<String>) -> Vec<String> {
    let mut seen = HashSet::new();
    paths
        .into_iter()
        .filter(|p| seen.insert(p.clone()))
        .collect()
}

/// `head` followed by the rest of `tail`: a body given back whole after a bounded read.
enum ReadBounded {
    TooLarge(Bytes, Body),
    Failed(crate::body::BoxError),
}

/// The answer to a client whose app answer (`what`) could not be read whole: `504` when the
/// app stopped sending it ([`Stalled`]), `502` when it broke off.
pub fn answer_failed(err: &BoxError, what: &str) -> Response<Body> {
    match err.downcast_ref::<Stalled>() {
        Some(stalled) => json_response(
            StatusCode::GATEWAY_TIMEOUT,
            &serde_json::json!({"error": format!("{what} stopped coming: {stalled}")}),
        ),
        None => json_response(
            StatusCode::BAD_GATEWAY,
            &serde_json::json!({"error": format!("{what} broke off")}),
        ),
    }
}

/// Reads a body whole if it is at most `limit` bytes; otherwise hands back what was read and
/// the rest, so nothing is lost. A body that goes `stall` without a byte fails with
/// [`Stalled`], as nginx's `proxy_read_timeout` bounds each read from the app.
async fn read_bounded(mut body: Body, limit: usize, stall: Duration) -> Result<Bytes, ReadBounded> {
    let mut buf = Vec::new();
    while let Some(data) = body::next_data(&mut body, stall)
        .await
        .map_err(ReadBounded::Failed)?
    {
        buf.extend_from_slice(&data);
        if buf.len() > limit {
            return Err(ReadBounded::TooLarge(Bytes::from(buf), body));
        }
    }
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_types_match_families_and_exact_types() {
        let allowed = vec!["image/".to_string(), "application/pdf".to_string()];
        assert!(type_allowed(&allowed, Some("image/jpeg")));
        assert!(type_allowed(&allowed, Some("Image/PNG; charset=binary")));
        assert!(type_allowed(&allowed, Some("application/pdf")));
        assert!(!type_allowed(&allowed, Some("application/pdfx")));
        assert!(!type_allowed(&allowed, Some("text/html")));
        assert!(!type_allowed(&allowed, None));
    }

    #[test]
    fn paths_are_encoded_for_the_request_line() {
        assert_eq!(store::encode_key("/u/a b%.jpg"), "/u/a%20b%25.jpg");
        assert_eq!(store::encode_key("/u/名.jpg"), "/u/%E5%90%8D.jpg");
    }
}
