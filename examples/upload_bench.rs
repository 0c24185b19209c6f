//! Upload routes on a socket, for `scripts/bench/upload.sh` (until `offload serve` routes
//! uploads itself, this wires `UploadRoutes` + `handle` exactly as the router will).
//!
//!   upload_bench app ADDR                                  # an app that discards bodies
//!   upload_bench proxy ADDR APP_ADDR S3_ENDPOINT BUCKET MODE   # AWS_ACCESS_KEY_ID/SECRET from env

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use offload::body;
use offload::config::{StoreConfig, StoreKind, UploadMode, UploadRouteConfig, UpstreamConfig};
use offload::proxy::{ClientInfo, Upstream};
use offload::store::{S3Store, Store};
use offload::upload::{UploadContext, UploadRoutes, handle};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // As `offload` itself does at start-up.
    offload::memory::tune_allocator();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("app") => app(args[1].parse()?).await,
        Some("proxy") if args.len() == 6 => proxy(&args[1..]).await,
        _ => anyhow::bail!("usage: upload_bench app ADDR | proxy ADDR APP S3_ENDPOINT BUCKET MODE"),
    }
}

/// Reads every body to its end and answers `{}`.
async fn app(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    loop {
        let (socket, _) = listener.accept().await?;
        tokio::spawn(async move {
            let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                let mut body = req.into_body();
                while let Some(Ok(_)) = body.frame().await {}
                Ok::<_, Infallible>(hyper::Response::new(body::full("{}")))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(socket), svc)
                .await;
        });
    }
}

async fn proxy(args: &[String]) -> anyhow::Result<()> {
    let addr: SocketAddr = args[0].parse()?;
    let mode = match args[4].as_str() {
        "mirror" => UploadMode::Mirror,
        "replace" => UploadMode::Replace,
        _ => UploadMode::Respond,
    };
    let store_cfg = StoreConfig {
        kind: StoreKind::S3,
        bucket: args[3].clone(),
        endpoint: Some(args[2].parse()?),
        path_style: true,
        ..StoreConfig::default()
    };
    let key = std::env::var("AWS_ACCESS_KEY_ID").context("AWS_ACCESS_KEY_ID")?;
    let secret = std::env::var("AWS_SECRET_ACCESS_KEY").context("AWS_SECRET_ACCESS_KEY")?;
    let store: Arc<dyn Store> =
        Arc::new(S3Store::with_credentials(&store_cfg, &key, &secret).await?);
    let upstream = Arc::new(Upstream::new(&UpstreamConfig {
        url: format!("http://{}", args[1]).parse()?,
        ..UpstreamConfig::default()
    })?);
    let route = UploadRouteConfig {
        path: "/upload".into(),
        mode,
        max_file_size: bytesize::ByteSize::gib(2),
        max_body_size: bytesize::ByteSize::gib(2),
        ..UploadRouteConfig::default()
    };
    let routes = Arc::new(UploadRoutes::new(&[route], "")?);
    let listener = TcpListener::bind(addr).await?;
    loop {
        let (socket, peer) = listener.accept().await?;
        let _ = socket.set_nodelay(true);
        let ctx = Arc::new(UploadContext {
            store: store.clone(),
            upstream: upstream.clone(),
            client: ClientInfo { peer, tls: false },
            after_app: None,
        });
        let routes = routes.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let (ctx, routes) = (ctx.clone(), routes.clone());
                async move {
                    let req = req.map(body::boxed);
                    let resp = match routes.find(req.method(), req.uri()) {
                        Some(route) => handle(&route, req, &ctx).await,
                        None => match ctx.upstream.forward(req, &ctx.client).await {
                            Ok(r) => r,
                            Err(e) => e.into_response(),
                        },
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(socket), svc)
                .await;
        });
    }
}
