//! Protocol upgrades (WebSocket): once both sides switched, bytes are copied both ways
//! until either closes, or nothing has moved either way for `server.idle_timeout`.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tracing::debug;

/// Waits in the background for both upgrades to complete, then copies bytes both ways.
/// A tunnel nothing crosses for `idle` is closed, as nginx's `proxy_read_timeout` closes
/// one: a client that vanished without a word (a NAT mapping dropped, a phone gone out of
/// range) would otherwise hold its socket, a connection to the app and the app's worker
/// for good. WebSocket apps that keep quiet connections open send pings more often.
pub(super) fn tunnel(client: OnUpgrade, app: OnUpgrade, idle: Duration) {
    tokio::spawn(async move {
        let (client, app) = match tokio::try_join!(client, app) {
            Ok(pair) => pair,
            Err(e) => {
                debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        let began = Instant::now();
        let moved = LastMove::default();
        let mut client = Watched::new(TokioIo::new(client), began, &moved);
        let mut app = Watched::new(TokioIo::new(app), began, &moved);
        let copy = tokio::io::copy_bidirectional(&mut client, &mut app);
        tokio::pin!(copy);
        loop {
            let deadline = began + moved.since_start() + idle;
            tokio::select! {
                result = &mut copy => {
                    match result {
                        Ok((to_app, to_client)) => debug!(to_app, to_client, "tunnel closed"),
                        Err(e) => debug!(error = %e, "tunnel ended"),
                    }
                    return;
                }
                () = tokio::time::sleep_until(deadline) => {
                    if began + moved.since_start() + idle <= Instant::now() {
                        debug!(idle = ?idle, "tunnel idle; closing it");
                        return;
                    }
                }
            }
        }
    });
}

/// When bytes last crossed a tunnel either way, as time since it began (nanoseconds): both
/// sides' reads set it.
#[derive(Default)]
struct LastMove(AtomicU64);

impl LastMove {
    fn since_start(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }

    fn set(&self, since_start: Duration) {
        let nanos = u64::try_from(since_start.as_nanos()).unwrap_or(u64::MAX);
        self.0.fetch_max(nanos, Ordering::Relaxed);
    }
}

/// One side of a tunnel, noting in [`LastMove`] each read that brought bytes.
struct Watched<'a, T> {
    io: T,
    began: Instant,
    moved: &'a LastMove,
}

impl<'a, T> Watched<'a, T> {
    fn new(io: T, began: Instant, moved: &'a LastMove) -> Watched<'a, T> {
        Watched { io, began, moved }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.moved.set(self.began.elapsed());
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
