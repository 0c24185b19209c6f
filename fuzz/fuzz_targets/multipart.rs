//! The multipart interceptor (respond mode, so no app is needed): any body, chunked any way,
//! gets `201` or a `4xx` naming the client's mistake, never a panic nor a `5xx` while the
//! store works; every object it reports was stored whole.
#![no_main]

use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use http::{Method, Request};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use offload::body;
use offload::config::{UploadMode, UploadRouteConfig, UpstreamConfig};
use offload::proxy::{ClientInfo, Upstream};
use offload::store::{ByteStream, GetObject, ObjectInfo, PutOptions, Store, StoreError};
use offload::upload::{UploadContext, UploadRoutes, handle};
use offload_fuzz::{Layout, chunks, runtime};

/// Keeps the size of each put (bytes are counted, not kept).
#[derive(Default)]
struct Counting {
    puts: Mutex<Vec<(String, u64)>>,
}

#[async_trait]
impl Store for Counting {
    async fn put(
        &self,
        key: &str,
        mut body: ByteStream,
        opts: PutOptions,
    ) -> Result<ObjectInfo, StoreError> {
        let mut size = 0;
        while let Some(chunk) = body.next().await {
            size += chunk.map_err(StoreError::Body)?.len() as u64;
        }
        self.puts
            .lock()
            .expect("lock")
            .push((key.to_string(), size));
        Ok(ObjectInfo {
            key: key.to_string(),
            size,
            content_type: opts.content_type,
            ..ObjectInfo::default()
        })
    }
    async fn head(&self, _key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        Ok(None)
    }
    async fn get(
        &self,
        _key: &str,
        _range: Option<offload::store::ByteRange>,
    ) -> Result<Option<GetObject>, StoreError> {
        Ok(None)
    }
    async fn delete(&self, _key: &str) -> Result<(), StoreError> {
        Ok(())
    }
    fn list<'a>(&'a self, _prefix: &'a str) -> BoxStream<'a, Result<ObjectInfo, StoreError>> {
        futures_util::stream::empty().boxed()
    }
    fn public_url(&self, key: &str) -> String {
        format!("https://cdn.example.net/{key}")
    }
    async fn presign_get(
        &self,
        _key: &str,
        _expires: std::time::Duration,
    ) -> Result<String, StoreError> {
        Err(StoreError::Unsupported("presign"))
    }
}

fn routes() -> &'static UploadRoutes {
    static ROUTES: OnceLock<UploadRoutes> = OnceLock::new();
    ROUTES.get_or_init(|| {
        let cfg = UploadRouteConfig {
            path: "/upload".into(),
            mode: UploadMode::Respond,
            max_file_size: bytesize(64 * 1024),
            max_body_size: bytesize(256 * 1024),
            max_parts: 8,
            max_field_size: bytesize(4096),
            ..UploadRouteConfig::default()
        };
        UploadRoutes::new(&[cfg], "site/").expect("route")
    })
}

fn bytesize(n: u64) -> bytesize::ByteSize {
    bytesize::ByteSize::b(n)
}

// Byte 0: bit 0 raw body (else multipart); byte 1: chunk-length count; the chunk lengths;
// then the header value (boundary or Content-Disposition) up to the first `\n`; then the body.
fuzz_target!(|data: &[u8]| {
    let Some(input) = Layout::parse(data) else {
        return;
    };
    let raw = input.variant & 1 == 1;
    let cuts = input.cuts;
    let (header, data) = match input.body.iter().position(|&b| b == b'\n') {
        Some(at) => (&input.body[..at], &input.body[at + 1..]),
        None => return,
    };
    let Ok(header) = std::str::from_utf8(header) else {
        return;
    };
    let route = routes()
        .find(&Method::POST, &"/upload".parse().expect("uri"))
        .expect("route");
    let mut req = Request::builder().method(Method::POST).uri("/upload");
    req = if raw {
        // A raw body: the file name comes from Content-Disposition.
        req.header("content-type", "application/octet-stream")
            .header("content-disposition", header)
    } else {
        req.header(
            "content-type",
            format!("multipart/form-data; boundary={header}"),
        )
    };
    let parts = chunks(data, cuts);
    let body = body::from_stream(futures_util::stream::iter(
        parts.into_iter().map(Ok::<_, std::io::Error>),
    ));
    let Ok(req) = req.body(body) else {
        return;
    };
    let store = Arc::new(Counting::default());
    let upstream = Upstream::new(&UpstreamConfig::default()).expect("upstream");
    let ctx = UploadContext {
        store: store.clone(),
        upstream: Arc::new(upstream),
        client: ClientInfo {
            peer: "127.0.0.1:1".parse().expect("peer"),
            tls: false,
        },
        after_app: None,
    };
    let (status, text) = runtime().block_on(async {
        let resp = handle(&route, req, &ctx).await;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    });
    // A body that is not an upload (raw, without a file name) passes through to the app,
    // which the harness does not run: that is the 502 naming it.
    let passed_through = status == 502 && text.starts_with("upstream unreachable");
    assert!(
        status.is_success() || status.is_client_error() || passed_through,
        "{status}: {text}"
    );
    if status.is_success() {
        // Every file the answer names was stored, with the size it reports.
        let json: serde_json::Value = serde_json::from_str(&text).expect("JSON answer");
        let puts = store.puts.lock().expect("lock").clone();
        let files = json["files"].as_array().cloned().unwrap_or_default();
        for file in files {
            let key = file["key"].as_str().expect("key");
            let size = file["size"].as_u64().expect("size");
            assert!(puts.contains(&(key.to_string(), size)), "{key} {size}: {puts:?}");
        }
    }
});
