//! The floor under offload's pass-through: the smallest reverse proxies hyper allows, for
//! `scripts/bench/hyper-floor.sh` to measure next to nginx and offload. Nothing of offload's
//! own runs here (no header hygiene, routing, metrics or logs).
//!
//!   hyper_floor pooled LISTEN UPSTREAM   # hyper-util's pooled client, as offload uses it
//!   hyper_floor paired LISTEN UPSTREAM   # each client connection gets its own upstream
//!                                        # connection, driven in the same task
//!
//! One thread (a current-thread runtime), like `server.worker_threads = 1`.

use std::convert::Infallible;
use std::sync::Arc;

use anyhow::Context;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

type Answer = Response<http_body_util::Either<Incoming, Full<Bytes>>>;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, listen, upstream] = args.as_slice() else {
        anyhow::bail!("usage: hyper_floor pooled|paired LISTEN UPSTREAM");
    };
    let paired = match mode.as_str() {
        "pooled" => false,
        "paired" => true,
        other => anyhow::bail!("unknown mode {other:?}"),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(listen.clone(), upstream.clone(), paired))
}

async fn serve(listen: String, upstream: String, paired: bool) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&listen).await.context("bind")?;
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build_http();
    loop {
        let (socket, _) = listener.accept().await?;
        socket.set_nodelay(true)?;
        let (client, upstream) = (client.clone(), upstream.clone());
        tokio::spawn(async move {
            let result = match paired {
                true => paired_connection(socket, &upstream).await,
                false => pooled_connection(socket, client, upstream).await,
            };
            if let Err(e) = result {
                eprintln!("connection: {e:#}");
            }
        });
    }
}

fn bad_gateway(e: impl std::fmt::Display) -> Answer {
    let mut answer = Response::new(http_body_util::Either::Right(Full::new(Bytes::from(
        e.to_string(),
    ))));
    *answer.status_mut() = StatusCode::BAD_GATEWAY;
    answer
}

async fn pooled_connection(
    socket: TcpStream,
    client: Client<HttpConnector, Incoming>,
    upstream: String,
) -> anyhow::Result<()> {
    let service = service_fn(move |mut req: Request<Incoming>| {
        let client = client.clone();
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let uri = format!("http://{upstream}{path}").parse();
        async move {
            let answer = match uri {
                Ok(uri) => {
                    *req.uri_mut() = uri;
                    match client.request(req).await {
                        Ok(res) => res.map(http_body_util::Either::Left),
                        Err(e) => bad_gateway(e),
                    }
                }
                Err(e) => bad_gateway(e),
            };
            Ok::<_, Infallible>(answer)
        }
    });
    hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(socket), service)
        .await?;
    Ok(())
}

async fn paired_connection(socket: TcpStream, upstream: &str) -> anyhow::Result<()> {
    let app = TcpStream::connect(upstream).await.context("connect")?;
    app.set_nodelay(true)?;
    let (sender, connection) =
        hyper::client::conn::http1::handshake::<_, Incoming>(TokioIo::new(app)).await?;
    let sender = Arc::new(Mutex::new(sender));
    let service = service_fn(move |req: Request<Incoming>| {
        let sender = sender.clone();
        async move {
            let mut sender = sender.lock().await;
            let answer = match sender.ready().await {
                Ok(()) => match sender.send_request(req).await {
                    Ok(res) => res.map(http_body_util::Either::Left),
                    Err(e) => bad_gateway(e),
                },
                Err(e) => bad_gateway(e),
            };
            Ok::<_, Infallible>(answer)
        }
    });
    let server =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(socket), service);
    // Both connections in this one task: no hand-off between tasks per request.
    tokio::select! {
        served = server => served?,
        closed = connection => closed?,
    }
    Ok(())
}
