//! The kinds of connection a client connection is served as: hyper-util's auto one
//! (HTTP/1.1, or HTTP/2 when it begins with the HTTP/2 preface), its HTTP/2-only one (TLS
//! whose ALPN settled on `h2`), and hyper's HTTP/1-only one for `server.http2 = false`.
//! The auto builder cannot be the last: its upgradable connection (the one WebSocket needs)
//! picks the protocol from the first bytes whatever the builder was told (hyper-util
//! 0.1.21), so an h2c client would still be served HTTP/2.

use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::rt::{Read, Write};
use hyper::server::conn::http1;
use hyper::service::{HttpService, Service};
use hyper_util::server::conn::auto;

use super::streams::StreamExecutor;
use crate::body::BoxError;

/// A connection being served: polled until it ends, and asked to close once the requests
/// in flight are answered.
pub(super) trait Served {
    /// Drives the connection; ready when it has ended.
    fn poll_end(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>>;

    /// Finishes the requests in flight, takes no more and closes.
    fn close_gracefully(self: Pin<&mut Self>);
}

/// hyper-util's auto connections (upgradable or not, the same API), as [`Served`].
macro_rules! served_auto {
    ($connection:ident) => {
        impl<I, S, B> Served for auto::$connection<'_, I, S, StreamExecutor>
        where
            S: Service<Request<Incoming>, Response = Response<B>>,
            S::Future: Send + 'static,
            S::Error: Into<BoxError>,
            B: Body + Send + 'static,
            B::Data: Send,
            B::Error: Into<BoxError>,
            I: Read + Write + Unpin + Send + 'static,
        {
            fn poll_end(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
                std::future::Future::poll(self, cx)
            }

            fn close_gracefully(self: Pin<&mut Self>) {
                self.graceful_shutdown();
            }
        }
    };
}

served_auto!(UpgradeableConnection);
served_auto!(Connection);

impl<I, S, B> Served for http1::UpgradeableConnection<I, S>
where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    B: Body + 'static,
    B::Error: Into<BoxError>,
    I: Read + Write + Unpin + Send + 'static,
{
    fn poll_end(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        std::future::Future::poll(self, cx).map_err(Into::into)
    }

    fn close_gracefully(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}
