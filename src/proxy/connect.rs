//! How the pool reaches the app: TCP (with TLS for an `https://` app), or a Unix socket
//! (`upstream.unix_socket`, as nginx's `proxy_pass http://unix:/path`), for apps such as
//! Gunicorn, Puma or an nginx in front of PHP-FPM listening on one.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_rustls::MaybeHttpsStream;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpStream, UnixStream};
use tower::ServiceExt;

use super::tls::NetConnector;
use crate::body::BoxError;

/// Opens connections to the app.
#[derive(Clone)]
pub(super) enum AppConnector {
    /// To the upstream URL's host and port.
    Net(NetConnector),
    /// To a Unix socket; the upstream URL still names the app (its `Host`).
    Unix(Arc<Path>),
}

impl AppConnector {
    pub(super) fn unix(path: PathBuf) -> AppConnector {
        AppConnector::Unix(path.into())
    }

    /// A new connection, to `target` (the upstream URL's scheme and authority) for
    /// [`AppConnector::Net`].
    pub(super) async fn connect(&self, target: &Uri) -> Result<AppIo, BoxError> {
        match self {
            AppConnector::Net(connector) => {
                let io = connector.clone().oneshot(target.clone()).await?;
                Ok(AppIo::Net(io))
            }
            AppConnector::Unix(path) => match UnixStream::connect(path).await {
                Ok(stream) => Ok(AppIo::Unix(TokioIo::new(stream))),
                Err(e) => Err(format!("unix:{}: {e}", path.display()).into()),
            },
        }
    }
}

/// A connection to the app.
// The TLS variant's size is no cost: a connection lives boxed in the pool's `Conn`, where
// boxing that variant again would add an indirection to every read and write.
#[allow(clippy::large_enum_variant)]
pub(super) enum AppIo {
    Net(MaybeHttpsStream<TokioIo<TcpStream>>),
    Unix(TokioIo<UnixStream>),
}

impl Read for AppIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AppIo::Net(io) => Pin::new(io).poll_read(cx, buf),
            AppIo::Unix(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl Write for AppIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            AppIo::Net(io) => Pin::new(io).poll_write(cx, buf),
            AppIo::Unix(io) => Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            AppIo::Net(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            AppIo::Unix(io) => Pin::new(io).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            AppIo::Net(io) => io.is_write_vectored(),
            AppIo::Unix(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AppIo::Net(io) => Pin::new(io).poll_flush(cx),
            AppIo::Unix(io) => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AppIo::Net(io) => Pin::new(io).poll_shutdown(cx),
            AppIo::Unix(io) => Pin::new(io).poll_shutdown(cx),
        }
    }
}
