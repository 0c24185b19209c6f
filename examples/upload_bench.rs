//! The app behind offload in `scripts/bench/upload.sh`: reads every body to its end and
//! answers `{}`.
//!
//!   upload_bench app ADDR

use std::convert::Infallible;
use std::net::SocketAddr;

use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use offload::body;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("app") if args.len() == 2 => app(args[1].parse()?).await,
        _ => anyhow::bail!("usage: upload_bench app ADDR"),
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
