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
                Ok(match connector.clone().oneshot(target.clone()).await? {
                    MaybeHttpsStream::Http(io) => AppIo::Http(io),
                    MaybeHttpsStream::Https(io) => AppIo::Https(io),
                })
            }
            AppConnector::Unix(path) => match UnixStream::connect(path).await {
                Ok(stream) => Ok(AppIo::Unix(TokioIo::new(stream))),
                Err(e) => Err(format!("unix:{}: {e}", path.display()).into()),
            },
        }
    }
}

/// A connection to the app. One level of variants, not the TLS connector's own enum inside
/// one of ours: nested, the reads and writes were no longer inlined into hyper's and cost
/// ~200 more instructions per request (callgrind).
// The TLS variant's size is no cost: a connection lives boxed in the pool's `Conn`, where
// boxing that variant again would add an indirection to every read and write.
#[allow(clippy::large_enum_variant)]
pub(super) enum AppIo {
    Http(TokioIo<TcpStream>),
    Https(TlsIo),
    Unix(TokioIo<UnixStream>),
}

type TlsIo = TokioIo<tokio_rustls::client::TlsStream<TokioIo<TokioIo<TcpStream>>>>;

/// `f` on whichever stream `io` is.
macro_rules! on_stream {
    ($io:expr, $s:ident => $f:expr) => {
        match $io {
            AppIo::Http($s) => $f,
            AppIo::Https($s) => $f,
            AppIo::Unix($s) => $f,
        }
    };
}

impl Read for AppIo {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        on_stream!(self.get_mut(), io => Pin::new(io).poll_read(cx, buf))
    }
}

impl Write for AppIo {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        on_stream!(self.get_mut(), io => Pin::new(io).poll_write(cx, buf))
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        on_stream!(self.get_mut(), io => Pin::new(io).poll_write_vectored(cx, bufs))
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        on_stream!(self, io => io.is_write_vectored())
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_stream!(self.get_mut(), io => Pin::new(io).poll_flush(cx))
    }

    #[inline]
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_stream!(self.get_mut(), io => Pin::new(io).poll_shutdown(cx))
    }
}
