//! Listeners, TLS, the router of the ways through the proxy, graceful shutdown.
//!
//! [`Server::bind`] opens the public and admin listeners and builds the shared
//! [`AppState`]; [`Server::run`] accepts connections until the shutdown future resolves,
//! handing each to a worker thread (`workers`; the runtime it runs on is the first worker),
//! then stops accepting and gives requests in flight `server.shutdown_grace` to finish.
//! Every request goes through [`route`], the one place that knows all the ways through.

mod activation;
mod hangup;
mod idle;
mod limits;
mod linger;
mod live;
mod notify;
mod observe;
mod proxy_protocol;
mod redirect;
mod request_id;
mod served;
mod settings;
mod streams;
mod tls;
mod workers;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http::{Method, Request, Response, Version, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};
use url::Url;

use crate::admin::{Admin, NotShuttingDown, ReadinessCheck, StoreReachable, UpstreamReachable};
use crate::assets::{self, Assets, MirrorCopy};
use crate::body::{self, Body};
use crate::config::{Config, RewriteConfig, StoreKind};
use crate::metrics::{Metrics, RequestKind};
use crate::proxy::{
    ClientInfo, ProxyError, Tunnel, Upstream, UpstreamTiming, canonical_ip, h2_problem,
    host_problem, target_problem,
};
use crate::rewrite::{self, ContentKind, PlanOptions, Rewriter, Rules};
use crate::store::{self, Presence, Store};
use crate::upload::{self, AfterApp, UploadContext, UploadRoutes};
use activation::Listeners;
use idle::{Activity, ConnectionState, TunnelGuard, Verdict, Watchdog};
use limits::ConnectionSlots;
pub(crate) use limits::open_files_limit;
pub use limits::raise_open_files_limit;
use live::LiveState;
use observe::{
    Logged, Observed, Refusal, RequestRecord, Way, head_timed_out, observe, observe_tunnel,
    plain_http_on_tls, refused_head, track_request_body,
};
use request_id::RequestIds;
use served::Served;
use settings::{ConnectionSettings, Entry};
pub use tls::Certificates;

/// What a start reads and builds besides the configuration, done the same way, for
/// `check-config` (as `nginx -t` reads the certificates): the TLS certificate and key, the
/// roots an `https://` app is checked against (`upstream.tls_ca_file`), a folder store's
/// root (looked at, not created; a bucket is not asked: see `store::check`), the upload
/// routes (their key templates) and the rewrite rules. Returns what a start would warn of
/// (a certificate expired or near its end), as `nginx -t` prints its warnings.
pub fn check_files(config: &Config) -> anyhow::Result<Vec<String>> {
    let mut warnings = Vec::new();
    if let Some(files) = &config.server.tls
        && let Some(concern) = Certificates::load(files)?.concern()
    {
        let cert = files.cert.display();
        warnings.push(format!("server.tls.cert {cert}: {concern}"));
    }
    crate::proxy::check_app_tls(&config.upstream)?;
    store::check(&config.store)?;
    UploadRoutes::new(&config.uploads, &config.store)?;
    if !config.assets.prefixes.is_empty() {
        // The store's own URL is known once it is built; any valid base checks the rest.
        let base = match &config.store.public_url {
            Some(url) => url.clone(),
            None => Url::parse("https://store.invalid/")?,
        };
        rewrite_rules(config, base)?;
    }
    Ok(warnings)
}
use workers::Workers;

/// What every request handler shares: built at start-up, and again by each reload of the
/// configuration (`server::hangup`, `server::live`). Each worker thread serves
/// from a copy of its own (the parts are shared behind `Arc`s): a request takes and drops a
/// reference to it, and that count is best written by one core only. Aligned so that two
/// copies never share a cache line.
#[derive(Clone)]
#[repr(align(128))]
pub struct AppState {
    pub config: Arc<Config>,
    pub upstream: Arc<Upstream>,
    pub metrics: Metrics,
    pub store: Arc<dyn Store>,
    pub presence: Arc<Presence>,
    pub uploads: UploadRoutes,
    /// Managed assets and rewriting; `None` when no asset prefix is configured.
    pub assets: Option<Arc<Assets>>,
    /// Mirror mode's step on the app's 2xx answer (needs managed assets).
    after_app: Option<Arc<dyn AfterApp>>,
    /// The fs store's own URL prefix, when offload serves the store itself.
    store_prefix: Option<String>,
    /// How many worker threads serve connections (`server.worker_threads`, resolved once:
    /// the pool keeps idle app connections per worker).
    workers: usize,
    /// `server.tls.redirect_http`: the TLS listener's port, which requests on the plain one
    /// are redirected to.
    https_redirect: Option<u16>,
    /// `server.request_id_header`, when set.
    request_ids: Option<Arc<RequestIds>>,
    /// How connections accepted now are served (timeouts, HTTP limits, PROXY protocol).
    connection_settings: Arc<ConnectionSettings>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("upstream", &self.config.upstream.url.as_str())
            .field("store", &self.config.store.kind)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Builds the state for `config`: the upstream client pool, the store and its presence
    /// cache, upload routes, rewriting rules and fresh metrics.
    pub async fn new(config: Arc<Config>) -> anyhow::Result<AppState> {
        let store = store::open(&config.store)
            .await
            .context("store: opening the configured store")?;
        AppState::with_store(config, store)
    }

    /// Builds the state around an already opened `store` (for embedding, and for tests
    /// whose S3 credentials are not in the environment); `config.store` still sets the
    /// presence cache, key prefix and serve prefix.
    pub fn with_store(config: Arc<Config>, store: Arc<dyn Store>) -> anyhow::Result<AppState> {
        let metrics = Metrics::for_workers(config.server.workers());
        let store = measured(store, &metrics);
        let connected = Connected {
            presence: Arc::new(Presence::new(store.clone(), &config.store)),
            store,
            upstream: app_upstream(&config, &metrics)?,
        };
        AppState::build(config, connected, metrics)
    }

    /// The state for a reloaded `config` (see [`Config::reloadable_part`]) to serve in place
    /// of `running`, whose configuration differs in the `changed` keys
    /// ([`Config::changed_keys`]): upload routes and rewriting rules of its own, the same
    /// metrics. The store with its presence cache, and the app's connection pools, are kept
    /// unless their settings changed: a reload for a rewriting rule neither asks the store
    /// again about every asset nor reconnects to the app.
    pub(crate) async fn reloaded(
        config: Arc<Config>,
        running: &AppState,
        changed: &[String],
    ) -> anyhow::Result<AppState> {
        let changed_in = |section: &str| {
            changed.iter().any(|key| {
                key.strip_prefix(section)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
            })
        };
        let (store, presence) = match changed_in("store") {
            false => (running.store.clone(), running.presence.clone()),
            true => {
                let store = store::open(&config.store)
                    .await
                    .context("store: opening the configured store")?;
                let store = measured(store, &running.metrics);
                let presence = Arc::new(Presence::new(store.clone(), &config.store));
                (store, presence)
            }
        };
        let upstream = match changed_in("upstream") || changed_in("server.trusted_proxies") {
            false => running.upstream.clone(),
            true => app_upstream(&config, &running.metrics)?,
        };
        let connected = Connected {
            store,
            presence,
            upstream,
        };
        let mut state = AppState::build(config, connected, running.metrics.clone())?;
        state.https_redirect = running.https_redirect;
        Ok(state)
    }

    fn build(
        config: Arc<Config>,
        connected: Connected,
        metrics: Metrics,
    ) -> anyhow::Result<AppState> {
        let Connected {
            store,
            presence,
            upstream,
        } = connected;
        let workers = config.server.workers();
        let uploads = UploadRoutes::new(&config.uploads, &config.store)?;
        let assets = match config.assets.prefixes.is_empty() {
            true => None,
            false => Some(Arc::new(build_assets(
                &config, &store, &presence, &upstream,
            )?)),
        };
        let follows = config
            .uploads
            .iter()
            .filter_map(|r| Some((r.path.clone(), r.follow.clone()?)))
            .collect();
        let after_app = assets.as_ref().map(|assets| {
            Arc::new(MirrorCopy {
                assets: assets.clone(),
                follows,
            }) as Arc<dyn AfterApp>
        });
        let store_prefix =
            (config.store.kind == StoreKind::Fs).then(|| config.store.serve_prefix.clone());
        let request_ids = RequestIds::new(&config.server)?.map(Arc::new);
        let connection_settings = Arc::new(ConnectionSettings::new(&config.server));
        Ok(AppState {
            config,
            upstream,
            metrics,
            store,
            presence,
            uploads,
            assets,
            after_app,
            store_prefix,
            workers,
            https_redirect: None,
            request_ids,
            connection_settings,
        })
    }
}

/// The parts of a state that hold connections and cached answers.
struct Connected {
    store: Arc<dyn Store>,
    presence: Arc<Presence>,
    upstream: Arc<Upstream>,
}

/// `store` with its failures counted and its answers timed in `metrics`.
fn measured(store: Arc<dyn Store>, metrics: &Metrics) -> Arc<dyn Store> {
    Arc::new(store::Measured::new(store, metrics.clone()))
}

/// The app's client: a pool of connections per worker.
fn app_upstream(config: &Config, metrics: &Metrics) -> anyhow::Result<Arc<Upstream>> {
    let upstream = Upstream::for_workers(&config.upstream, config.server.workers())?
        .with_trusted_proxies(config.server.trusted_proxies.clone())
        .with_metrics(metrics);
    Ok(Arc::new(upstream))
}

fn build_assets(
    config: &Config,
    store: &Arc<dyn Store>,
    presence: &Arc<Presence>,
    upstream: &Arc<Upstream>,
) -> anyhow::Result<Assets> {
    let rules = rewrite_rules(config, public_base(config, store.as_ref())?)?;
    Ok(Assets::new(
        Arc::new(rules),
        store.clone(),
        presence.clone(),
        upstream.clone(),
        &config.store,
        &config.assets,
        config.server.idle_timeout,
    ))
}

/// `assets.prefixes` and `assets.site_origins` rewritten to `public_base`.
fn rewrite_rules(config: &Config, public_base: Url) -> anyhow::Result<Rules> {
    Rules::new(
        config.assets.prefixes.clone(),
        config.assets.site_origins.clone(),
        public_base,
    )
    .context("assets: building the rewrite rules")
}

/// Where rewritten URLs point: `store.public_url`, else the store's own URL of the empty key
/// (the bucket's URL, or the fs store's serve prefix on this proxy).
fn public_base(config: &Config, store: &dyn Store) -> anyhow::Result<Url> {
    if let Some(url) = &config.store.public_url {
        return Ok(url.clone());
    }
    let base = store.public_url(&config.store.prefix);
    let base = base
        .strip_suffix(config.store.prefix.as_str())
        .unwrap_or(&base)
        .to_string();
    // A path-only base (the fs store served by this proxy): rewritten URLs stay on the
    // request's own origin, which the rewriter writes as root-relative.
    Url::parse(&base)
        .or_else(|_| Url::parse("http://offload.invalid").and_then(|u| u.join(&base)))
        .with_context(|| format!("store: public URL {base:?}"))
}

/// The origin the client used (`scheme://host[:port]`), as rewriting compares URLs with it;
/// put in the request's extensions for the ways that need it (mirror uploads).
#[derive(Debug, Clone)]
pub struct RequestOrigin(pub Option<Url>);

/// What the origin is made of, captured cheaply before the request is forwarded; the URL is
/// only built when a response is actually rewritten.
struct OriginParts {
    host: Option<http::HeaderValue>,
    tls: bool,
}

impl OriginParts {
    fn of(req: &Request<Body>, client: &ClientInfo) -> OriginParts {
        OriginParts {
            host: crate::proxy::request_host(req.uri(), req.headers()),
            tls: client.tls,
        }
    }

    fn url(&self) -> Option<Url> {
        let host = self.host.as_ref()?.to_str().ok()?;
        let scheme = if self.tls { "https" } else { "http" };
        Url::parse(&format!("{scheme}://{host}/")).ok()
    }
}

/// A request's answer, with what its access log line and metrics need to know.
pub struct Answer {
    pub response: Response<Body>,
    /// The way through the proxy that answered.
    pub kind: RequestKind,
    /// How long the app took to send its response head, when it was asked.
    pub upstream: Option<Duration>,
}

impl Answer {
    /// The answer of a way that asks the app (if at all) as part of more work: the app's
    /// time rides on the response as [`UpstreamTiming`].
    fn of_way(mut response: Response<Body>, kind: RequestKind) -> Answer {
        let upstream = response.extensions_mut().remove::<UpstreamTiming>();
        Answer {
            response,
            kind,
            upstream: upstream.map(|timing| timing.0),
        }
    }
}

/// Answers one request: the dispatch between the ways through the proxy. Infallible:
/// every failure has already become a response. `way` is set to the way taken as soon as
/// it is known: a request dropped before its answer is counted under it.
pub(crate) async fn route(
    state: &AppState,
    mut req: Box<Request<Body>>,
    client: ClientInfo,
    way: &Way,
) -> Answer {
    // Refused as malformed before any way, as hyper refuses a malformed head.
    // The target first: userinfo in it is named as such, not as an invalid host.
    if let Some(problem) = target_problem(&req).or_else(|| host_problem(&req)) {
        let mut response = ProxyError::BadRequest(problem.into()).into_response();
        response.extensions_mut().insert(Refusal(problem));
        return Answer::of_way(response, RequestKind::Refused);
    }
    if req.version() == Version::HTTP_2
        && let Some((status, problem)) = h2_problem(&req, state.config.server.max_headers)
    {
        let mut response = body::text(status, format!("{problem}\n"));
        response.extensions_mut().insert(Refusal(problem));
        return Answer::of_way(response, RequestKind::Refused);
    }
    if !client.tls
        && let Some(port) = state.https_redirect
        && let Some(response) = redirect::to_https(&req, port)
    {
        return Answer::of_way(response, RequestKind::Passthrough);
    }
    // A declared length over `server.max_body_size` is refused before anything reaches the
    // app or the store (a chunked body is cut where it passes the limit: `track_request_body`).
    if let Some(max) = state.config.server.max_body_bytes()
        && http_body::Body::size_hint(req.body()).lower() > max
    {
        // Counted as the chunked one is, where it passes the limit.
        let response = forwarding_failed(state, ProxyError::BodyTooLarge(max), &client);
        return Answer::of_way(response, RequestKind::Passthrough);
    }
    let is_read = matches!(*req.method(), Method::GET | Method::HEAD);
    // The fs store, served by offload itself under its own prefix.
    if is_read && let Some(key) = store_key(state, req.uri().path()) {
        way.set(RequestKind::Store);
        let head_only = req.method() == Method::HEAD;
        let response = Box::pin(store::serve_object(
            &*state.store,
            &key,
            req.headers(),
            head_only,
        ))
        .await;
        if response.status() == http::StatusCode::NOT_FOUND {
            // Gone behind offload's back: pages stop pointing at it (see `Presence`).
            state.presence.mark_absent(&key);
        }
        return Answer::of_way(response, RequestKind::Store);
    }
    // Upload routes: caught before anything reaches the app.
    if let Some(upload_route) = state.uploads.find(req.method(), req.uri()) {
        way.set(RequestKind::Upload);
        let origin = OriginParts::of(&req, &client).url();
        req.extensions_mut().insert(RequestOrigin(origin));
        let ctx = UploadContext {
            store: state.store.clone(),
            upstream: state.upstream.clone(),
            client,
            after_app: state.after_app.clone(),
            answer_stall: state.config.server.idle_timeout,
        };
        let response = Box::pin(upload::handle(&upload_route, *req, &ctx)).await;
        return Answer::of_way(response, RequestKind::Upload);
    }
    // Managed assets: the app first, the store on its 404.
    if is_read
        && let Some(assets) = &state.assets
        && let Some(path) = assets.managed_path(req.uri().path())
    {
        way.set(RequestKind::Asset);
        let response = Box::pin(assets::handle_request(assets, &path, *req, &client)).await;
        return Answer::of_way(response, RequestKind::Asset);
    }
    // Everything else: forwarded as it is, asset URLs in the answer rewritten (where that
    // is set up: then what the answer is rewritten for is captured before forwarding).
    let rewrite_with = match &state.assets {
        Some(assets) if state.config.rewrite.enabled => {
            Some((assets, OriginParts::of(&req, &client)))
        }
        _ => None,
    };
    let method = req.method().clone();
    // Awaited here rather than in a helper: one `.await` level less on every request's
    // future (each level copies the one below it).
    let (response, upstream) = match state.upstream.forward_timed(req, &client).await {
        Ok((response, took)) => (response, Some(took)),
        Err(e) => (forwarding_failed(state, e, &client), None),
    };
    let response = match rewrite_with {
        Some((assets, origin)) => match rewriting(&state.config.rewrite, &method, &response) {
            Some(work) => Box::pin(rewrite_response(state, assets, work, &origin, response)).await,
            // Most responses (assets, redirect-free API calls): nothing to rewrite, and no
            // rewriting future is even allocated.
            None => response,
        },
        None => response,
    };
    Answer {
        response,
        kind: RequestKind::Passthrough,
        upstream,
    }
}

/// The key of a request under the fs store's serve prefix; `None` for any other path. A
/// path the store refuses (traversal…) still maps to a key: the store answers 400 for it.
fn store_key(state: &AppState, path: &str) -> Option<String> {
    let prefix = state.store_prefix.as_deref()?;
    let rest = path.strip_prefix(prefix)?;
    Some(
        percent_encoding::percent_decode_str(rest)
            .decode_utf8_lossy()
            .into_owned(),
    )
}

/// What way 3 has to rewrite in a response.
enum Rewriting {
    /// URL-valued headers only.
    Headers,
    /// The URL-valued headers, and the others as the GET's rewritten body has them (a
    /// `HEAD` of a page a GET would have rewritten): no length, no ranges, a weak ETag.
    HeadOfRewritten,
    /// The body (of this kind) and the URL-valued headers.
    Body(ContentKind),
}

/// What a response needs rewritten, if anything: a look at its status and headers.
fn rewriting(cfg: &RewriteConfig, method: &Method, response: &Response<Body>) -> Option<Rewriting> {
    let opts = PlanOptions {
        javascript: cfg.javascript,
        text_plain: false,
        max_size: cfg.max_size.as_u64(),
    };
    let headers = response.headers();
    // A HEAD says what the GET would: its rewritten answer's headers.
    if method == Method::HEAD
        && rewrite::plan(&Method::GET, response.status(), headers, &opts).is_some()
    {
        return Some(Rewriting::HeadOfRewritten);
    }
    match rewrite::plan(method, response.status(), headers, &opts) {
        Some(kind) => Some(Rewriting::Body(kind)),
        None if URL_HEADERS.iter().any(|h| headers.contains_key(h)) => Some(Rewriting::Headers),
        None => None,
    }
}

/// Way 3: rewrites asset URLs in the URL-valued headers and a rewritable body, as
/// [`rewriting`] found needed.
///
/// An uncompressed body of at most [`assets::RESOLVE_BODY_LIMIT`] is read whole first and
/// the store is asked about the assets it names that this replica does not know yet, so a
/// replica that did not handle an upload still points its first page at the bucket; larger
/// or compressed bodies stream, rewritten from the presence cache alone.
async fn rewrite_response(
    state: &AppState,
    assets: &Assets,
    work: Rewriting,
    origin_parts: &OriginParts,
    response: Response<Body>,
) -> Response<Body> {
    let cfg = &state.config.rewrite;
    let (mut parts, body) = response.into_parts();
    let origin = origin_parts.url();
    let kind = match work {
        Rewriting::Headers | Rewriting::HeadOfRewritten => {
            let page = assets.page(origin_parts.host.as_ref());
            let rewriter = Rewriter::new(assets.rules.clone(), origin, page);
            rewrite_headers(&rewriter, &mut parts.headers);
            if matches!(work, Rewriting::HeadOfRewritten) {
                rewrite::prepare_headers(&mut parts.headers);
            }
            return Response::from_parts(parts, body);
        }
        Rewriting::Body(kind) => kind,
    };
    let coding = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let page = assets.page(origin_parts.host.as_ref());
    let rewriter =
        Rewriter::new(assets.rules.clone(), origin.clone(), page).javascript(cfg.javascript);
    rewrite_headers(&rewriter, &mut parts.headers);
    let stall = state.config.server.idle_timeout;
    let read = match coding {
        None => {
            let host = origin_parts.host.as_ref();
            assets.resolve_body(origin.as_ref(), host, body).await
        }
        // A compressed body is not read whole, but its first bytes must show its coding
        // before the head goes out: decoded as what it is not, it would be cut short.
        Some(_) => match body::peek(body, rewrite::SNIFF_BYTES, stall).await {
            Ok((head, body)) if rewrite::coding_fits(coding.as_deref(), &head) => Ok(body),
            Ok((_, body)) => {
                debug!(coding = ?coding, "the answer is not in its Content-Encoding; passed on");
                return Response::from_parts(parts, body);
            }
            Err(err) => Err(err),
        },
    };
    let body = match read {
        Ok(body) => body,
        Err(err) => {
            warn!(error = %err, "reading the app's answer failed");
            return assets::answer_failed(&err, "the app's answer");
        }
    };
    match rewriter.body(kind, coding.as_deref(), body) {
        Ok(body) => {
            rewrite::prepare_headers(&mut parts.headers);
            Response::from_parts(parts, body)
        }
        // `plan` only accepts codings the rewriter decodes; this is a bug, not the app's.
        Err(err) => {
            warn!(error = %err, "rewriting a planned response failed");
            upload::json_response(
                http::StatusCode::INTERNAL_SERVER_ERROR,
                &serde_json::json!({"error": "the response could not be rewritten"}),
            )
        }
    }
}

/// Response headers whose values are URLs.
const URL_HEADERS: [header::HeaderName; 4] = [
    header::LOCATION,
    header::CONTENT_LOCATION,
    header::LINK,
    header::REFRESH,
];

/// Rewrites `Location`, `Content-Location`, `Link` and `Refresh`, every value of each.
fn rewrite_headers(rewriter: &Rewriter, headers: &mut http::HeaderMap) {
    for name in URL_HEADERS {
        let http::header::Entry::Occupied(mut entry) = headers.entry(&name) else {
            continue;
        };
        for value in entry.iter_mut() {
            if let Some(new) = rewriter.header(&name, value) {
                *value = new;
            }
        }
    }
}

/// The answer when way 1 (forwarding as it is) failed; logged and counted.
fn forwarding_failed(state: &AppState, e: ProxyError, client: &ClientInfo) -> Response<Body> {
    // A client that cancels an upload is common and not the operator's concern.
    if e.is_clients() {
        debug!(error = %e, peer = %client.peer, "forwarding failed on the client's side");
    } else {
        warn!(error = %e, peer = %client.peer, "forwarding failed");
    }
    state.metrics.upstream_error(e.cause());
    e.into_response()
}

/// Wraps [`route`] with the per-request bookkeeping (byte counts, access log, metrics).
async fn handle(
    state: Arc<AppState>,
    mut req: Request<Incoming>,
    client: ClientInfo,
    connection: Arc<ConnectionState>,
) -> Result<Response<Observed>, Infallible> {
    let started = Instant::now();
    let http2 = req.version() == Version::HTTP_2;
    let http10 = req.version() == Version::HTTP_10;
    let head = req.method() == Method::HEAD;
    let request_id = state
        .request_ids
        .as_ref()
        .map(|ids| ids.assign(&mut req, state.upstream.is_trusted(client.peer.ip())));
    let logged = Logged::of(&req, request_id.clone());
    let idle_timeout = state.config.server.idle_timeout;
    let max_body_size = state.config.server.max_body_bytes();
    let (req, body) = track_request_body(req, idle_timeout, max_body_size);
    let in_flight = connection.begin(http2, body.clone());
    let mut record = RequestRecord::new(state, in_flight, logged, client.peer, started);
    let state = &record.state;
    // Boxed once here: each `.await` level below (`route`, `forward_timed`, `send`,
    // `exchange`) then keeps a pointer where it kept the 240-byte request, and a level's
    // future is copied whole into the one above it. That memory is seldom still in the
    // cache when a connection's next request comes: ~60 fewer L1 data misses per request
    // (callgrind, 64 and 256 connections), against one small allocation.
    let routed = route(state, Box::new(req), client, &record.way);
    let mut answer = match &body {
        // Boxed: only requests with a body are watched, and a GET's future stays as small.
        Some(body) => Box::pin(unless_left_unread(routed, body, state, &client)).await,
        None => routed.await,
    };
    record.in_flight.answered();
    if head {
        without_body(&mut answer.response);
    }
    if !http2
        && (body.as_deref().is_some_and(idle::BodyProgress::abandoned)
            || connection.closes_after_answer()
            || (http10 && !head && ends_with_the_connection(&answer.response)))
    {
        // hyper closes the connection once the answer is out, as it must (the rest of the
        // body would be read as the next request), but learns that only after it has
        // written the head: say so in it, so the client does not send its next request
        // on a connection that is closing (as nginx's 413 says). The same for a request
        // that came in at shutdown: hyper closes the connection after an answer that says so.
        answer
            .response
            .headers_mut()
            .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
        if http10 {
            // To an HTTP/1.0 client that asked to keep its connection, hyper adds
            // `keep-alive` after that `close` in an answer marked HTTP/1.1; one marked 1.0,
            // as it goes out anyway, it leaves as it is.
            *answer.response.version_mut() = Version::HTTP_10;
        }
    }
    if let Some(ids) = &state.request_ids
        && let Some(id) = request_id
    {
        answer
            .response
            .headers_mut()
            .insert(ids.header().clone(), id);
    }
    if let Some(tunnel) = answer.response.extensions_mut().remove::<Tunnel>() {
        let (response, run) = observe_tunnel(answer, record, tunnel);
        connection.upgrade_to(Box::pin(run));
        return Ok(response);
    }
    // HTTP/2 streams share their connection's watchdog: each answer bounds its own stalls.
    Ok(observe(answer, record, http2.then_some(idle_timeout)))
}

/// Whether an answer to an HTTP/1.0 client can only end with the connection: its length is
/// unknown (the app's answer was chunked, which HTTP/1.0 does not have). hyper sends it
/// close-delimited and closes, but its head says `Connection: keep-alive` to a client that
/// asked for that, which then takes the close for a failure or waits on; nginx says `close`.
fn ends_with_the_connection(response: &Response<Body>) -> bool {
    let body = response.body();
    !response.headers().contains_key(header::CONTENT_LENGTH)
        && !http_body::Body::is_end_stream(body)
        && http_body::Body::size_hint(body).exact().is_none()
}

/// The answer to a HEAD without the body offload's own answers carry (a 404's or a 502's
/// text): hyper leaves it out over HTTP/1, but over HTTP/2 it would send it, which a client
/// takes for a protocol error and loses the answer. Its length stays in `Content-Length`,
/// as a HEAD's answer says what the GET's would be. The app's answers to a HEAD have no
/// body already.
fn without_body(response: &mut Response<Body>) {
    let body = response.body();
    if http_body::Body::is_end_stream(body) {
        return;
    }
    if let Some(length) = http_body::Body::size_hint(body).exact() {
        response
            .headers_mut()
            .entry(header::CONTENT_LENGTH)
            .or_insert_with(|| length.into());
    }
    *response.body_mut() = body::empty();
}

/// `routed`, unless its request body goes `server.idle_timeout` without being read (the app
/// or the store stopped taking it): then 504, and dropping `routed` drops its app connection
/// (or store upload) too.
async fn unless_left_unread(
    routed: impl Future<Output = Answer>,
    body: &idle::BodyProgress,
    state: &AppState,
    client: &ClientInfo,
) -> Answer {
    let limit = state.config.server.idle_timeout;
    tokio::select! {
        answer = routed => answer,
        () = idle::left_unread(body, limit) => {
            let response = forwarding_failed(state, ProxyError::BodyNotTaken(limit), client);
            Answer::of_way(response, RequestKind::Passthrough)
        }
    }
}

/// A bound, not yet running server.
pub struct Server {
    /// What requests are served with: the state built at start, until a reload replaces it.
    /// Nothing else keeps a state: one replaced is dropped with its pools of app
    /// connections once its last request ends.
    live: Arc<LiveState>,
    /// The request metrics, kept across reloads.
    metrics: Metrics,
    listener: TcpListener,
    admin_listener: Option<TcpListener>,
    admin: Arc<Admin>,
    tls: Option<tls::Acceptors>,
    /// `server.tls.listen`: TLS here, plain HTTP on `listener`. `None` with TLS configured:
    /// TLS on `listener`.
    tls_listener: Option<TcpListener>,
    certificates: Option<Arc<Certificates>>,
    /// `server.max_connections`: a reload resizes them.
    slots: Arc<ConnectionSlots>,
    /// Fired when the shutdown signal comes: `/readyz` fails from then on.
    shutting_down: CancellationToken,
}

impl Server {
    /// Builds the state and binds the listeners (`server.listen`, `server.admin_listen`), or
    /// takes those systemd passed on their addresses (socket activation);
    /// port 0 picks a free port, see [`Server::local_addr`].
    pub async fn bind(config: Config) -> anyhow::Result<Server> {
        let config = Arc::new(config);
        let state = AppState::new(Arc::clone(&config)).await?;
        Server::bind_state(config, state).await
    }

    /// Like [`Server::bind`], with an already opened store (see [`AppState::with_store`]).
    pub async fn bind_with_store(config: Config, store: Arc<dyn Store>) -> anyhow::Result<Server> {
        let config = Arc::new(config);
        let state = AppState::with_store(Arc::clone(&config), store)?;
        Server::bind_state(config, state).await
    }

    async fn bind_state(config: Arc<Config>, mut state: AppState) -> anyhow::Result<Server> {
        let certificates = match &config.server.tls {
            Some(files) => Some(Arc::new(Certificates::load(files)?)),
            None => None,
        };
        if let Some(certificates) = &certificates {
            tls::report_validity(certificates, &state.metrics);
        }
        let tls = match &certificates {
            Some(c) => Some(tls::Acceptors::new(c)?),
            None => None,
        };
        let mut listeners = Listeners::passed()?;
        let listener = listeners
            .bind("server.listen", config.server.listen)
            .await?;
        let tls_listen = config.server.tls.as_ref().and_then(|t| t.listen);
        let tls_listener = listeners
            .bind_if_set("server.tls.listen", tls_listen)
            .await?;
        if config.server.tls.as_ref().is_some_and(|t| t.redirect_http) {
            state.https_redirect = tls_listener
                .as_ref()
                .and_then(|l| l.local_addr().ok())
                .map(|addr| addr.port());
        }
        let live = Arc::new(LiveState::new(&state, state.workers));
        let metrics = state.metrics.clone();
        drop(state);
        let admin_listen = config.server.admin_listen;
        let admin_listener = listeners
            .bind_if_set("server.admin_listen", admin_listen)
            .await?;
        listeners.all_taken()?;
        let max_connections = limits::max_connections(config.server.max_connections);
        let slots = Arc::new(ConnectionSlots::new(max_connections, metrics.clone()));
        let shutting_down = CancellationToken::new();
        let admin = Admin::new(metrics.clone())
            .with_check(Arc::new(NotShuttingDown(shutting_down.clone())))
            .with_check(Arc::new(OnLiveState::new(&live, upstream_check)))
            .with_check(Arc::new(OnLiveState::new(&live, store_check)));
        Ok(Server {
            live,
            metrics,
            shutting_down,
            listener,
            tls_listener,
            admin_listener,
            admin: Arc::new(admin),
            tls,
            certificates,
            slots,
        })
    }

    /// What the TLS listener serves, when there is one: [`Certificates::reload`] renews it.
    pub fn certificates(&self) -> Option<&Arc<Certificates>> {
        self.certificates.as_ref()
    }

    /// The public listener's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| self.live.current().config.server.listen)
    }

    /// The TLS listener's address, when it is one of its own (`server.tls.listen`).
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The admin listener's address, unless it is off.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` resolves (and `server.shutdown_delay` more, with `/readyz`
    /// failing), then stops accepting and waits up to
    /// `server.shutdown_grace` for connections in flight; those still open then are dropped,
    /// on every worker, before this returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        self.run_hurried(shutdown, std::future::pending()).await
    }

    /// [`Server::run`] until SIGTERM or SIGINT (Ctrl-C); a second one ends the delay and the
    /// grace at once, dropping the connections still open, as a second Ctrl-C is meant.
    pub async fn run_until_signalled(self) -> anyhow::Result<()> {
        let signals = Signals::watch();
        self.run_hurried(signals.nth(1), signals.nth(2)).await
    }

    /// [`Server::run`], cutting the shutdown short once `hurry` resolves.
    async fn run_hurried(
        self,
        shutdown: impl Future<Output = ()>,
        hurry: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let hurried = CancellationToken::new();
        let hurrying = tokio::spawn({
            let hurried = hurried.clone();
            async move {
                hurry.await;
                hurried.cancel();
            }
        });
        let cancel = CancellationToken::new();
        let abandon = CancellationToken::new();
        let tracker = TaskTracker::new();
        // Both are set at start: a reload leaves them as they are.
        let (worker_count, log_buffer) = {
            let state = self.live.current();
            (state.workers, state.config.log.buffer_bytes())
        };
        let workers = Workers::start(worker_count, &self.metrics, log_buffer)
            .context("starting the workers")?;
        let tls_addr = self.tls_addr();
        let admin_addr = self.admin_addr();
        // The admin listener stays open through the drain, until the server stops: `/readyz`
        // keeps saying "shutting down", and `/metrics` shows the requests finishing (Envoy's
        // admin stays up the same way; nginx closes every listener at once).
        let admin_stop = CancellationToken::new();
        if let Some(listener) = self.admin_listener {
            tokio::spawn(Arc::clone(&self.admin).serve(listener, admin_stop.clone()));
        }
        // TLS on the main listener only when it has no listener of its own.
        let on_main = Entry::Main {
            tls: self.tls.is_some() && self.tls_listener.is_none(),
        };
        let shared = Arc::new(Shared {
            tls: self.tls,
            cancel: cancel.clone(),
            abandon: abandon.clone(),
            live: Arc::clone(&self.live),
            reclaim: self.slots.reclaimer(),
        });
        let slots = self.slots;
        info!(
            listen = %self.listener.local_addr()?,
            tls_listen = tls_addr.map(tracing::field::display),
            admin_listen = admin_addr.map(tracing::field::display),
            workers = worker_count,
            max_connections = slots.limit(),
            "serving"
        );
        notify::ready();
        let watchdog = notify::watchdog_interval()
            .map(|interval| tokio::spawn(notify::keep_watchdog(interval, workers.liveness())));
        let shutting_down = self.shutting_down.clone();
        let live = Arc::clone(&self.live);
        let delay_cut = hurried.clone();
        let mut shutdown = pin!(async move {
            shutdown.await;
            // As reloaded last, as `server.shutdown_grace` below.
            let delay = live.current().config.server.shutdown_delay;
            shutting_down.cancel();
            notify::stopping();
            if !delay.is_zero() {
                info!(
                    delay = %humantime::format_duration(delay),
                    "shutting down: /readyz fails now; still serving until the delay ends"
                );
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = delay_cut.cancelled() => {}
                }
            }
        });
        let mut tls_first = false;
        let queued = || {
            limits::connections_queued(&self.listener)
                || self
                    .tls_listener
                    .as_ref()
                    .is_some_and(limits::connections_queued)
        };
        loop {
            // A slot first: at the limit, connections wait in the listen backlog.
            let slot = tokio::select! {
                biased;
                _ = &mut shutdown => break,
                slot = slots.next(&queued) => slot,
            };
            let listeners = (&self.listener, self.tls_listener.as_ref());
            let (accepted, entry) = tokio::select! {
                biased;
                _ = &mut shutdown => break,
                accepted = accept_either(listeners, on_main, tls_first) => accepted,
            };
            // The other listener first next time: when both have connections waiting (at
            // `server.max_connections`, or under a flood on one), each gets every other
            // place, as nginx's listening sockets are each an event of their own.
            tls_first = !matches!(entry, Entry::TlsListener);
            match accepted {
                Ok((stream, peer)) => {
                    let shared = Arc::clone(&shared);
                    workers.serve(stream, &tracker, move |stream| {
                        accept(stream, peer, entry, shared, slot)
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        drop(self.listener);
        drop(self.tls_listener);
        info!(
            connections = tracker.len(),
            "shutting down: no new connections"
        );
        cancel.cancel();
        tracker.close();
        let grace = self.live.current().config.server.shutdown_grace;
        let finished = tokio::select! {
            finished = tokio::time::timeout(grace, tracker.wait()) => finished.is_ok(),
            () = hurried.cancelled() => tracker.is_empty(),
        };
        hurrying.abort();
        if !finished {
            match hurried.is_cancelled() {
                true => warn!(
                    connections = tracker.len(),
                    "shutting down at once (a second signal), dropping connections"
                ),
                false => warn!(
                    connections = tracker.len(),
                    "shutdown grace expired, dropping connections"
                ),
            }
            abandon.cancel();
            // Each connection drops itself when it is next polled, on its worker; bounded in
            // case a worker is stuck in a long poll.
            let _ = tokio::time::timeout(ABANDON_WAIT, tracker.wait()).await;
        }
        // systemd stops watching once the stop began; nothing to tell it now.
        if let Some(watchdog) = watchdog {
            watchdog.abort();
        }
        admin_stop.cancel();
        // The last line: where the process log shows a clean stop (as nginx's "exit").
        info!("stopped");
        Ok(())
    }
}

/// How long [`Server::run`] waits, after the grace period, for the connections it drops.
const ABANDON_WAIT: Duration = Duration::from_secs(1);

/// Binds per `config` and serves until SIGTERM or SIGINT (see
/// [`Server::run_until_signalled`]); meanwhile each SIGHUP re-reads the TLS certificate and
/// key, and checks the configuration `reread` loads against the one running (see
/// `server::hangup`).
pub async fn run(
    config: Config,
    reread: impl Fn() -> anyhow::Result<Config> + Send + 'static,
) -> anyhow::Result<()> {
    let server = Server::bind(config).await?;
    let mut listening = vec![("server.listen", server.local_addr())];
    listening.extend(server.tls_addr().map(|addr| ("server.tls.listen", addr)));
    let reloads = tokio::spawn(hangup::on_hangup(
        server.certificates().cloned(),
        Arc::clone(&server.live),
        Arc::clone(&server.slots),
        listening,
        reread,
    ));
    let served = server.run_until_signalled().await;
    reloads.abort();
    served
}

/// SIGTERM and SIGINT (Ctrl-C) as they come, counted.
struct Signals(tokio::sync::watch::Receiver<u32>);

impl Signals {
    /// Counts the signals from now on, in a task of its own.
    fn watch() -> Signals {
        let (count, counted) = tokio::sync::watch::channel(0);
        tokio::spawn(async move {
            let mut signals = ShutdownSignals::new();
            loop {
                signals.next().await;
                count.send_modify(|n| *n += 1);
                match *count.borrow() {
                    1 => info!("shutdown signal received"),
                    _ => info!("another shutdown signal received: not waiting any longer"),
                }
            }
        });
        Signals(counted)
    }

    /// Resolves once the `n`th signal has come.
    fn nth(&self, n: u32) -> impl Future<Output = ()> + Send + 'static {
        let mut counted = self.0.clone();
        async move {
            let _ = counted.wait_for(|count| *count >= n).await;
        }
    }
}

/// SIGTERM's and SIGINT's streams, each made once: a signal between two waits is not lost.
#[cfg(unix)]
struct ShutdownSignals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

#[cfg(unix)]
impl ShutdownSignals {
    fn new() -> ShutdownSignals {
        use tokio::signal::unix::{SignalKind, signal};
        let watch = |kind, name: &str| {
            signal(kind)
                .inspect_err(|e| warn!(error = %e, "cannot watch {name}"))
                .ok()
        };
        ShutdownSignals {
            term: watch(SignalKind::terminate(), "SIGTERM"),
            int: watch(SignalKind::interrupt(), "SIGINT"),
        }
    }

    async fn next(&mut self) {
        async fn recv(stream: &mut Option<tokio::signal::unix::Signal>) {
            let received = match stream {
                Some(stream) => stream.recv().await,
                None => None,
            };
            if received.is_none() {
                std::future::pending::<()>().await;
            }
        }
        tokio::select! {
            () = recv(&mut self.term) => {}
            () = recv(&mut self.int) => {}
        }
    }
}

#[cfg(not(unix))]
struct ShutdownSignals;

#[cfg(not(unix))]
impl ShutdownSignals {
    fn new() -> ShutdownSignals {
        ShutdownSignals
    }

    async fn next(&mut self) {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A `/readyz` check made afresh from the state served now each time it runs: after a
/// reload it asks the app and the store that requests go to.
struct OnLiveState<F> {
    live: Arc<LiveState>,
    check_for: F,
}

impl<F> OnLiveState<F> {
    fn new(live: &Arc<LiveState>, check_for: F) -> OnLiveState<F> {
        OnLiveState {
            live: Arc::clone(live),
            check_for,
        }
    }
}

#[async_trait::async_trait]
impl<F, C> ReadinessCheck for OnLiveState<F>
where
    F: Fn(&AppState) -> C + Send + Sync,
    C: ReadinessCheck,
{
    fn name(&self) -> &'static str {
        (self.check_for)(&self.live.current()).name()
    }

    async fn check(&self) -> Result<(), String> {
        let check = (self.check_for)(&self.live.current());
        check.check().await
    }
}

/// `/readyz`'s check of the store.
fn store_check(state: &AppState) -> StoreReachable {
    StoreReachable::new(Arc::clone(&state.store))
}

/// `/readyz`'s check of the app: a connection opened within the connect timeout (at most
/// 2 s).
fn upstream_check(state: &AppState) -> UpstreamReachable {
    let timeout = state
        .config
        .upstream
        .connect_timeout
        .min(Duration::from_secs(2));
    UpstreamReachable::new(Arc::clone(&state.upstream), timeout)
        .asking(state.config.upstream.ready_path.clone())
}

/// What every connection task shares.
struct Shared {
    /// The state requests are served with, a copy per worker; a reload replaces it.
    live: Arc<LiveState>,
    tls: Option<tls::Acceptors>,
    /// Shutdown began: connections close once their requests in flight are answered.
    cancel: CancellationToken,
    /// The shutdown grace expired: connections still open are dropped.
    abandon: CancellationToken,
    /// At `server.max_connections`: connections between requests close.
    reclaim: Arc<Notify>,
}

/// The next connection on the main listener or `server.tls.listen`'s (the listener it came
/// on, as the [`Entry`] to serve it by); `tls_first`: which to take when both have one.
async fn accept_either(
    (main, tls): (&TcpListener, Option<&TcpListener>),
    on_main: Entry,
    tls_first: bool,
) -> (std::io::Result<(TcpStream, SocketAddr)>, Entry) {
    if tls_first {
        tokio::select! {
            biased;
            accepted = accept_on(tls) => (accepted, Entry::TlsListener),
            accepted = main.accept() => (accepted, on_main),
        }
    } else {
        tokio::select! {
            biased;
            accepted = main.accept() => (accepted, on_main),
            accepted = accept_on(tls) => (accepted, Entry::TlsListener),
        }
    }
}

/// The next connection on `listener`; never, when there is none.
async fn accept_on(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// Sets up one accepted connection (PROXY header and TLS handshake as its listener's
/// `entry` and the settings in force ask) and serves it. `_slot` is its place under
/// `server.max_connections`, freed when it ends (held here rather than by a future wrapping
/// this one: a layer more to poll at every wake-up cost ~20 instructions a request).
async fn accept(
    mut stream: TcpStream,
    mut peer: SocketAddr,
    entry: Entry,
    shared: Arc<Shared>,
    _slot: OwnedSemaphorePermit,
) {
    if let Err(e) = stream.set_nodelay(true) {
        debug!(error = %e, "set_nodelay failed");
    }
    let settings = Arc::clone(&shared.live.current().connection_settings);
    if settings.proxy_protocol(entry) {
        let header = proxy_protocol::read_header(&mut stream, peer);
        match tokio::time::timeout(settings.handshake_timeout, header).await {
            Ok(Ok(client)) => peer = client,
            // As nginx logs "broken header": a balancer that does not send one (or a
            // `proxy_protocol` turned on before the balancer's) shows, not just resets.
            Ok(Err(e)) => return info!(%peer, error = %e, "closing: no PROXY header"),
            Err(_) => return info!(%peer, "closing: no PROXY header in time"),
        }
    }
    // An IPv4 client of a dual-stack socket (systemd's `ListenStream=8080` is `[::]:8080`)
    // comes as `::ffff:1.2.3.4`: logged, forwarded and checked as `1.2.3.4`.
    peer.set_ip(canonical_ip(peer.ip()));
    let acceptor = shared.tls.as_ref().filter(|_| entry.tls());
    match acceptor.map(|tls| tls.offering(settings.http2).clone()) {
        None => {
            let client = ClientInfo { peer, tls: false };
            serve_connection(stream, client, Protocol::Either, shared, settings).await;
        }
        // Boxed: a TLS connection's state (rustls' and hyper's over it) is over twice a
        // plain one's, and every connection's task would otherwise be that large.
        Some(acceptor) => Box::pin(accept_tls(stream, peer, acceptor, shared, settings)).await,
    }
}

/// The TLS handshake on an accepted connection, then [`serve_connection`] over it.
async fn accept_tls(
    mut stream: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    settings: Arc<ConnectionSettings>,
) {
    let deadline = tokio::time::Instant::now() + settings.handshake_timeout;
    match tokio::time::timeout_at(deadline, tls::sent_plain_http(&stream)).await {
        Ok(true) => {
            plain_http_on_tls(&shared.live.current(), peer);
            return tls::answer_plain_http(&mut stream, peer).await;
        }
        Ok(false) => {}
        Err(_) => return debug!(%peer, "TLS handshake timed out"),
    }
    let handshake = tokio::time::timeout_at(deadline, acceptor.accept(stream));
    match handshake.await {
        Ok(Ok(tls_stream)) => {
            let client = ClientInfo { peer, tls: true };
            let protocol = match tls_stream.get_ref().1.alpn_protocol() {
                Some(b"h2") => Protocol::Http2,
                _ => Protocol::Either,
            };
            serve_connection(tls_stream, client, protocol, shared, settings).await;
        }
        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => debug!(%peer, "TLS handshake timed out"),
    }
}

/// Serves HTTP on one connection until it ends, its watchdog finds it idle past
/// `server.idle_timeout` (closed gracefully) or slow to send a request head (dropped), or the
/// server shuts down (then in-flight requests finish first, until the grace expires). A
/// connection switched to a tunnel (WebSocket) is served until the tunnel closes, or the
/// shutdown's grace expires.
async fn serve_connection<I>(
    io: I,
    client: ClientInfo,
    protocol: Protocol,
    shared: Arc<Shared>,
    settings: Arc<ConnectionSettings>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let connection = Arc::new(ConnectionState::carrying(
        settings.keepalive_requests,
        settings.http2_max_concurrent_streams,
    ));
    // A tunnel kept on the state holds its request, which holds the state: whatever ends
    // this task (the runtime shutting down with it pending too) lets go of the tunnel.
    let _tunnel_dropped = TunnelGuard(Arc::clone(&connection));
    let io = TokioIo::new(Activity::new(io, Arc::clone(&connection)));
    let live = Arc::clone(&shared.live);
    let requests = Arc::clone(&connection);
    let service = service_fn(move |req| handle(live.current(), req, client, Arc::clone(&requests)));
    match (&settings.http1_only, protocol) {
        (None, Protocol::Http2) => {
            let conn = pin!(settings.http2_only.serve_connection(io, service));
            drive(conn, Arc::clone(&connection), client, &shared, &settings).await;
        }
        (None, Protocol::Either) => {
            let conn = pin!(settings.builder.serve_connection_with_upgrades(io, service));
            drive(conn, Arc::clone(&connection), client, &shared, &settings).await;
        }
        (Some(http1), _) => {
            let conn = pin!(http1.serve_connection(io, service).with_upgrades());
            drive(conn, Arc::clone(&connection), client, &shared, &settings).await;
        }
    }
    if let Some(tunnel) = connection.take_upgraded() {
        tokio::select! {
            () = tunnel => {}
            () = shared.abandon.cancelled() => {
                debug!(peer = %client.peer, "shutdown grace expired; closing a tunnel");
            }
        }
    }
}

/// What a connection speaks, as far as is known before its first bytes.
#[derive(Debug, Clone, Copy)]
enum Protocol {
    /// ALPN settled on `h2`.
    Http2,
    /// HTTP/1.1, or HTTP/2 if it begins with the preface (h2c with prior knowledge, or TLS
    /// without ALPN).
    Either,
}

/// [`serve_connection`]'s watch over the connection being served, until it ends.
async fn drive<C: Served>(
    mut conn: Pin<&mut C>,
    connection: Arc<ConnectionState>,
    client: ClientInfo,
    shared: &Shared,
    settings: &ConnectionSettings,
) {
    let watch_over = |watchdog: Watchdog| -> Watcher {
        Box::pin(async move { ConnectionEvent::Watchdog(watchdog.alarm().await) })
    };
    // Once closing (a GOAWAY sent), an idle connection is given CLOSE_LINGER: HTTP/2 closes
    // after a PING the client must acknowledge, which a client may never do.
    let watch_closing = |connection: &Arc<ConnectionState>| -> Watcher {
        watch_over(Watchdog::closing(
            Arc::clone(connection),
            CLOSE_LINGER,
            settings.idle_timeout,
            settings.handshake_timeout,
        ))
    };
    // The connection wakes this task for nearly every reason; the watchers (shutdown, the
    // watchdog's timer) are polled only when they were woken themselves. Polled on every
    // wake-up, a shutdown token and a timer cost ~4% of a small request's CPU.
    let mut watchers = FuturesUnordered::new();
    watchers.push(watch(ConnectionEvent::ShutdownBegan, shared.cancel.clone()));
    watchers.push(watch_over(Watchdog::new(
        Arc::clone(&connection),
        settings.idle_timeout,
        settings.handshake_timeout,
    )));
    watchers.push(watch_reclaim(&shared.reclaim, &connection));
    watchers.push(watch_served_enough(&connection));
    let mut closing = false;
    loop {
        tokio::select! {
            biased;
            result = std::future::poll_fn(|cx| conn.as_mut().poll_end(cx)) => {
                if let Err(e) = result
                    && !refused_head(&shared.live.current(), client.peer, e.as_ref())
                {
                    match http2_goaway_sent(e.as_ref()) {
                        // The reason by its RFC 9113 name (`PROTOCOL_ERROR`,
                        // `ENHANCE_YOUR_CALM`): hyper's error says only "http2 error".
                        Some(reason) => info!(
                            peer = %client.peer,
                            reason = ?reason,
                            "HTTP/2 connection closed for the client's error"
                        ),
                        None => debug!(peer = %client.peer, error = %e, "connection ended with an error"),
                    }
                }
                return;
            }
            Some(event) = watchers.next() => match event {
                ConnectionEvent::ShutdownBegan => {
                    closing = true;
                    // Requests in flight have until the end of the shutdown grace; an idle
                    // connection does not hold the shutdown that long.
                    watchers.clear();
                    watchers.push(watch(ConnectionEvent::GraceExpired, shared.abandon.clone()));
                    watchers.push(watch_closing(&connection));
                    // hyper closes a kept-alive connection at once, part of a request head
                    // read or not: that request would be lost. As nginx, let it come, as
                    // long as it keeps coming; its answer says `Connection: close`, after
                    // which hyper closes the connection.
                    match connection.head_arriving() {
                        true => connection.close_after_answer(),
                        false => conn.as_mut().close_gracefully(),
                    }
                }
                ConnectionEvent::ServedEnough if connection.past_its_requests() => {
                    info!(
                        peer = %client.peer,
                        "an HTTP/2 client went on opening streams after its GOAWAY \
                         (server.keepalive_requests); dropping the connection"
                    );
                    return;
                }
                ConnectionEvent::ServedEnough => {
                    if !closing {
                        conn.as_mut().close_gracefully();
                        closing = true;
                        watchers.push(watch_closing(&connection));
                    }
                    // Told again if the client goes on past the slack.
                    watchers.push(watch_served_enough(&connection));
                }
                ConnectionEvent::Watchdog(Verdict::Idle) | ConnectionEvent::Reclaimed
                    if !closing =>
                {
                    conn.as_mut().close_gracefully();
                    closing = true;
                    watchers.push(watch_closing(&connection));
                }
                ConnectionEvent::Reclaimed => {}
                ConnectionEvent::Watchdog(Verdict::Idle) => {
                    debug!(peer = %client.peer, "an idle connection did not close; dropping it");
                    return;
                }
                ConnectionEvent::GraceExpired => {
                    debug!(peer = %client.peer, "shutdown grace expired; dropping the connection");
                    connection.drop_at_shutdown();
                    return;
                }
                ConnectionEvent::Watchdog(Verdict::SlowHead { began }) => {
                    if began {
                        head_timed_out(&shared.live.current(), client.peer, settings.handshake_timeout);
                    }
                    debug!(peer = %client.peer, "request head too slow; dropping the connection");
                    return;
                }
                ConnectionEvent::Watchdog(Verdict::Stalled) => {
                    // The answer's end tells which side stalled (`observe::Observed`).
                    debug!(peer = %client.peer, "an answer stalled; dropping the connection");
                    connection.drop_stalled();
                    return;
                }
            },
        }
    }
}

/// The reason of the GOAWAY `h2` sent when `error` ended an HTTP/2 connection for the
/// client's fault (a malformed frame or header, a flood of CONTINUATION or empty frames, a
/// window overflow), as nginx logs "client sent …" and "http2 flood detected" at `info`;
/// `None` for any other end (the client closed, an I/O error).
fn http2_goaway_sent(error: &(dyn std::error::Error + 'static)) -> Option<h2::Reason> {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(h2) = error.downcast_ref::<h2::Error>() {
            return (h2.is_go_away() && h2.is_library())
                .then(|| h2.reason())
                .flatten();
        }
        cause = error.source();
    }
    None
}

/// How long a closing connection with nothing in flight is left to close by itself before
/// it is dropped: an HTTP/2 client acknowledges the GOAWAY's PING within a round trip (nginx
/// does not wait at all).
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// What a connection's watchers report.
enum ConnectionEvent {
    /// The server began shutting down: close once the requests in flight are answered.
    ShutdownBegan,
    /// The shutdown grace expired: drop the connection.
    GraceExpired,
    Watchdog(Verdict),
    /// New connections wait for a place, and this one is between requests: close it.
    Reclaimed,
    /// The HTTP/2 connection opened the last stream it may carry
    /// (`server.keepalive_requests`): close it gracefully.
    ServedEnough,
}

type Watcher = Pin<Box<dyn Future<Output = ConnectionEvent> + Send>>;

/// A watcher reporting [`ConnectionEvent::Reclaimed`] once `reclaim` is notified while the
/// connection is between requests.
fn watch_reclaim(reclaim: &Arc<Notify>, connection: &Arc<ConnectionState>) -> Watcher {
    let (reclaim, connection) = (Arc::clone(reclaim), Arc::clone(connection));
    Box::pin(async move {
        loop {
            reclaim.notified().await;
            if connection.between_requests() {
                return ConnectionEvent::Reclaimed;
            }
        }
    })
}

/// A watcher reporting [`ConnectionEvent::ServedEnough`].
fn watch_served_enough(connection: &Arc<ConnectionState>) -> Watcher {
    let connection = Arc::clone(connection);
    Box::pin(async move {
        connection.served_enough().await;
        ConnectionEvent::ServedEnough
    })
}

/// A watcher reporting `event` once `token` is cancelled.
fn watch(event: ConnectionEvent, token: CancellationToken) -> Watcher {
    Box::pin(async move {
        token.cancelled().await;
        event
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn config(store: &std::path::Path, extra: &str) -> Arc<Config> {
        let text = format!(
            "[upstream]\nurl = \"http://127.0.0.1:9\"\n[store]\nroot = {:?}\n{extra}",
            store.display()
        );
        Arc::new(Config::from_toml_with_env(&text, &BTreeMap::new()).unwrap())
    }

    /// `running` reloaded with `next`, as SIGHUP does it.
    async fn reload(running: &AppState, next: Arc<Config>) -> AppState {
        let changed = running.config.changed_keys(&next);
        AppState::reloaded(next, running, &changed).await.unwrap()
    }

    /// A reload keeps the store's presence answers and the app's pools unless their own
    /// settings changed, and builds them anew when they did.
    #[tokio::test]
    async fn a_reload_keeps_the_store_and_pools_whose_settings_did_not_change() {
        let root = tempfile::tempdir().unwrap();
        let running = AppState::new(config(root.path(), "")).await.unwrap();
        running.presence.mark_present("media/a.jpg");

        let rules_only = config(root.path(), "[assets]\nprefixes = [\"/media/\"]\n");
        let reloaded = reload(&running, rules_only).await;
        assert_eq!(reloaded.presence.cached("media/a.jpg"), Some(true));
        assert!(Arc::ptr_eq(&reloaded.upstream, &running.upstream));
        assert!(reloaded.assets.is_some(), "the new rules are in force");

        let store_changed = config(root.path(), "cache_ttl = \"1m\"\n");
        let reloaded = reload(&running, store_changed).await;
        assert_eq!(reloaded.presence.cached("media/a.jpg"), None);
        assert!(Arc::ptr_eq(&reloaded.upstream, &running.upstream));

        let trust_changed = config(
            root.path(),
            "[server]\ntrusted_proxies = [\"10.0.0.0/8\"]\n",
        );
        let reloaded = reload(&running, trust_changed).await;
        assert!(!Arc::ptr_eq(&reloaded.upstream, &running.upstream));
        assert_eq!(reloaded.presence.cached("media/a.jpg"), Some(true));
    }
}
