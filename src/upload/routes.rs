//! Which requests are uploads: routes compiled once from the config, matched per request by
//! path (exact or glob), method and required query parameters.
//!
//! Paths are compared as the app's server may resolve them, not as they were spelt: a
//! request that reaches the app's upload script by another spelling (`//upload`,
//! `/x/../upload`, `/%75pload`, `/Upload`, `/upload/`, `/upload.php/extra` for PHP's
//! PATH_INFO) would otherwise skip the route, and with it the store and every check. Such
//! spellings get the route, as nginx normalises a path before matching its locations;
//! matching a spelling the app would not resolve costs only that request its checks.

use std::borrow::Cow;
use std::sync::Arc;

use globset::{GlobBuilder, GlobMatcher};
use http::{Method, Uri};
use percent_encoding::percent_decode_str;

use super::error::UploadConfigError;
use super::keys::KeyTemplate;
use super::policy::Policy;
use crate::config::{FieldStyle, OnStoreError, StoreConfig, UploadMode, UploadRouteConfig};

/// Most bytes of one part's headers (`Content-Disposition`, `Content-Type`…) offload reads
/// before refusing the request; multer itself only bounds them by the whole body.
pub const MAX_PART_HEADER_SIZE: u64 = 16 * 1024;

/// How a route's path is matched, against [`canonical`] paths.
#[derive(Debug)]
enum PathMatch {
    /// The canonical path; `below` when its last segment names a file (`upload.php`), which
    /// servers also run for paths below it (PATH_INFO).
    Exact { path: String, below: bool },
    /// `*` stays within one path segment; `**` crosses them.
    Glob(GlobMatcher),
}

impl PathMatch {
    fn matches(&self, canonical: &str) -> bool {
        match self {
            PathMatch::Exact { path, below } => {
                canonical == path
                    || (*below
                        && canonical
                            .strip_prefix(path.as_str())
                            .is_some_and(|rest| rest.starts_with('/')))
            }
            PathMatch::Glob(glob) => glob.is_match(canonical),
        }
    }
}

/// A query parameter's name as PHP registers it: `.` and spaces become `_`.
fn php_name(name: &str) -> String {
    name.replace(['.', ' '], "_")
}

/// A query value to compare: one that is a path, [`canonical`]; any other as it is.
fn query_value(value: &str) -> Cow<'_, str> {
    match value.starts_with('/') {
        true => Cow::Owned(canonical(value)),
        false => Cow::Borrowed(value),
    }
}

/// `path` as a server may resolve it, in lower case: percent-decoded (`%2F` too, which
/// nginx decodes before matching), each segment without `;parameters` (Tomcat, Jetty),
/// empty and `.` segments dropped, `..` resolved (never above the root), no trailing slash
/// (Express ignores it, and case, by default).
fn canonical(path: &str) -> String {
    let decoded = percent_decode_str(path).decode_utf8_lossy();
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment.split(';').next().unwrap_or_default() {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            kept => segments.push(kept),
        }
    }
    if segments.is_empty() {
        return "/".to_string();
    }
    let mut out = String::with_capacity(decoded.len());
    for segment in segments {
        out.push('/');
        out.push_str(segment);
    }
    out.to_lowercase()
}

/// The limits of one route, in bytes and counts.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_file_size: u64,
    pub max_body_size: u64,
    pub max_parts: usize,
    pub max_field_size: u64,
    /// The total of a request's text fields kept (replace, respond).
    pub max_fields_size: u64,
    pub max_part_header_size: u64,
}

/// One upload route, ready to serve.
#[derive(Debug)]
pub struct UploadRoute {
    path: PathMatch,
    methods: Vec<Method>,
    query: Vec<(String, String)>,
    pub mode: UploadMode,
    pub on_store_error: OnStoreError,
    pub field_style: FieldStyle,
    pub limits: Limits,
    pub policy: Policy,
    pub keys: KeyTemplate,
    /// The store's key prefix, substituted for `{prefix}`.
    pub key_prefix: String,
    /// `store.cache_control`, stored with each file (an upload comes with none of its own).
    pub cache_control: String,
}

/// Every upload route, in config order (the first match wins).
#[derive(Debug, Default, Clone)]
pub struct UploadRoutes {
    routes: Vec<Arc<UploadRoute>>,
}

impl UploadRoutes {
    /// Compiles the routes once; an unusable route is an error naming its index and key.
    /// `store` gives what each stored file's key and object take from it (`prefix`,
    /// `cache_control`).
    pub fn new(
        routes: &[UploadRouteConfig],
        store: &StoreConfig,
    ) -> Result<UploadRoutes, UploadConfigError> {
        let routes = routes
            .iter()
            .enumerate()
            .map(|(index, cfg)| UploadRoute::new(index, cfg, store).map(Arc::new))
            .collect::<Result<_, _>>()?;
        Ok(UploadRoutes { routes })
    }

    /// The route for this request (path exact or glob, method, required query params), if any.
    pub fn find(&self, method: &Method, uri: &Uri) -> Option<Arc<UploadRoute>> {
        // Made only for a request whose method some route takes: most are GETs.
        let mut path = None;
        self.routes
            .iter()
            .find(|route| {
                route.methods.contains(method)
                    && route
                        .path
                        .matches(path.get_or_insert_with(|| canonical(uri.path())))
                    && route.query_matches(uri.query().unwrap_or_default())
            })
            .cloned()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

impl UploadRoute {
    fn new(
        index: usize,
        cfg: &UploadRouteConfig,
        store: &StoreConfig,
    ) -> Result<UploadRoute, UploadConfigError> {
        let path = if cfg.path.contains(['*', '?', '[', '{']) {
            let pattern = match cfg.path.trim_end_matches('/') {
                "" => "/",
                trimmed => trimmed,
            };
            let glob = GlobBuilder::new(pattern)
                .literal_separator(true)
                .case_insensitive(true)
                .build()
                .map_err(|e| UploadConfigError::Glob {
                    index,
                    path: cfg.path.clone(),
                    reason: e.kind().to_string(),
                })?;
            PathMatch::Glob(glob.compile_matcher())
        } else {
            let path = canonical(&cfg.path);
            let below = path
                .rsplit('/')
                .next()
                .is_some_and(|last| last.contains('.'));
            PathMatch::Exact { path, below }
        };
        let methods = cfg
            .methods
            .iter()
            .map(|m| {
                Method::from_bytes(m.to_ascii_uppercase().as_bytes()).map_err(|_| {
                    UploadConfigError::Method {
                        index,
                        method: m.clone(),
                    }
                })
            })
            .collect::<Result<_, _>>()?;
        let query = cfg
            .query
            .iter()
            .map(|pair| {
                pair.split_once('=')
                    .map(|(k, v)| (php_name(k), query_value(v).into_owned()))
                    .ok_or_else(|| UploadConfigError::Query {
                        index,
                        pair: pair.clone(),
                    })
            })
            .collect::<Result<_, _>>()?;
        let keys = KeyTemplate::parse(&cfg.key_template)
            .map_err(|reason| UploadConfigError::KeyTemplate { index, reason })?;
        Ok(UploadRoute {
            path,
            methods,
            query,
            mode: cfg.mode,
            on_store_error: cfg.on_store_error,
            field_style: cfg.field_style,
            limits: Limits {
                max_file_size: cfg.max_file_size.as_u64(),
                max_body_size: cfg.max_body_size.as_u64(),
                max_parts: cfg.max_parts,
                max_field_size: cfg.max_field_size.as_u64(),
                max_fields_size: cfg.max_fields_size.as_u64(),
                max_part_header_size: MAX_PART_HEADER_SIZE,
            },
            policy: Policy::new(cfg),
            keys,
            key_prefix: store.prefix.clone(),
            cache_control: store.cache_control.clone(),
        })
    }

    /// Every required `name=value` pair is present (decoded, in any order), as the app reads
    /// the query: names as PHP takes them (`rest.route` and `rest route` are its
    /// `rest_route`), and a value that is a path (WordPress's `rest_route=/wp/v2/media`) as
    /// [`canonical`] resolves it (`/wp/v2/media/`, `/WP/v2/Media` run the same route).
    fn query_matches(&self, query: &str) -> bool {
        self.query.iter().all(|(name, value)| {
            url::form_urlencoded::parse(query.as_bytes())
                .any(|(k, v)| php_name(&k) == *name && query_value(&v) == *value)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(path: &str) -> UploadRouteConfig {
        UploadRouteConfig {
            path: path.into(),
            ..UploadRouteConfig::default()
        }
    }

    fn uri(s: &str) -> Uri {
        s.parse().unwrap()
    }

    fn store() -> StoreConfig {
        StoreConfig::default()
    }

    #[test]
    fn exact_path_and_methods() {
        let routes = UploadRoutes::new(&[route("/upload")], &store()).unwrap();
        assert!(routes.find(&Method::POST, &uri("/upload")).is_some());
        assert!(routes.find(&Method::PUT, &uri("/upload?x=1")).is_some());
        assert!(routes.find(&Method::GET, &uri("/upload")).is_none());
        assert!(routes.find(&Method::POST, &uri("/uploads")).is_none());
        assert!(routes.find(&Method::POST, &uri("/upload/x")).is_none());
    }

    #[test]
    fn other_spellings_of_a_routes_path_get_the_route() {
        let routes = UploadRoutes::new(
            &[route("/upload"), route("/wp-admin/async-upload.php")],
            &store(),
        )
        .unwrap();
        for path in [
            "//upload",
            "/./upload",
            "/x/../upload",
            "/../upload",
            "/%75pload",
            "/%2fupload",
            "/upload/",
            "/upload;x",
            "/UPLOAD",
            "//wp-admin//async-upload.php",
            "/wp-admin/async-upload.php/extra",
            "/wp-admin/%61sync-upload.php?x=1",
        ] {
            assert!(routes.find(&Method::POST, &uri(path)).is_some(), "{path}");
        }
        for path in [
            "/uploads",
            "/upload/x",
            "/x/upload",
            "/wp-admin/async-upload.phpx",
        ] {
            assert!(routes.find(&Method::POST, &uri(path)).is_none(), "{path}");
        }
    }

    #[test]
    fn paths_are_compared_as_servers_resolve_them() {
        for (path, resolved) in [
            ("/", "/"),
            ("", "/"),
            ("/a/b/", "/a/b"),
            ("/a/./b/../c", "/a/c"),
            ("/../../a", "/a"),
            ("/a%2Fb", "/a/b"),
            ("/a;jsessionid=1/b;v=2", "/a/b"),
            ("/%C3%84/X", "/ä/x"),
            ("/%ff", "/\u{fffd}"),
        ] {
            assert_eq!(canonical(path), resolved, "{path}");
        }
    }

    #[test]
    fn globs_stay_in_one_segment() {
        let routes = UploadRoutes::new(&[route("/api/*/files")], &store()).unwrap();
        assert!(routes.find(&Method::POST, &uri("/api/v1/files")).is_some());
        assert!(
            routes
                .find(&Method::POST, &uri("/api/v1/x/files"))
                .is_none()
        );
        let deep = UploadRoutes::new(&[route("/api/**/files")], &store()).unwrap();
        assert!(deep.find(&Method::POST, &uri("/api/v1/x/files")).is_some());
        assert!(
            deep.find(&Method::POST, &uri("/API/v1//x/files/"))
                .is_some()
        );
    }

    #[test]
    fn required_query_pairs() {
        let cfg = UploadRouteConfig {
            query: vec!["option=com_media".into(), "task=file.upload".into()],
            methods: vec!["post".into()],
            ..route("/administrator/index.php")
        };
        let routes = UploadRoutes::new(&[cfg], &store()).unwrap();
        let m = Method::POST;
        assert!(
            routes
                .find(
                    &m,
                    &uri("/administrator/index.php?task=file.upload&x=1&option=com_media")
                )
                .is_some()
        );
        assert!(
            routes
                .find(&m, &uri("/administrator/index.php?option=com_media"))
                .is_none()
        );
        assert!(routes.find(&m, &uri("/administrator/index.php")).is_none());
    }

    #[test]
    fn first_match_wins_and_prefix_is_kept() {
        let a = UploadRouteConfig {
            mode: UploadMode::Respond,
            ..route("/u")
        };
        let store = StoreConfig {
            prefix: "site/".into(),
            cache_control: "max-age=60".into(),
            ..store()
        };
        let routes = UploadRoutes::new(&[a, route("/u")], &store).unwrap();
        let r = routes.find(&Method::POST, &uri("/u")).unwrap();
        assert_eq!(r.mode, UploadMode::Respond);
        assert_eq!(r.key_prefix, "site/");
        assert_eq!(r.cache_control, "max-age=60");
    }

    #[test]
    fn bad_routes_are_refused() {
        let bad_glob = UploadRoutes::new(&[route("/a/[")], &store()).unwrap_err();
        assert!(
            bad_glob.to_string().contains("uploads[0].path"),
            "{bad_glob}"
        );
        let sha = UploadRouteConfig {
            key_template: "{sha256}".into(),
            ..route("/u")
        };
        let err = UploadRoutes::new(&[route("/ok"), sha], &store()).unwrap_err();
        assert!(err.to_string().contains("uploads[1].key_template"), "{err}");
    }
}
