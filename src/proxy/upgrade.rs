//! Protocol upgrades (WebSocket): once both sides switched, bytes are copied both ways
//! until either closes, or nothing has moved either way for
//! `upstream.websocket_idle_timeout`.

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

/// A switch to WebSocket that the client asked for and the app accepted, handed to the
/// server on the `101` response (in its extensions) to run on the client connection's own
/// task once hyper hands that connection over: so an open tunnel keeps the connection's
/// place under `server.max_connections`, counts as an open connection, is waited for by a
/// graceful shutdown, and is logged when it closes. (`Clone` only as extensions ask.)
#[derive(Clone)]
pub struct Tunnel {
    client: OnUpgrade,
    app: OnUpgrade,
    idle: Duration,
}

impl Tunnel {
    pub(super) fn new(client: OnUpgrade, app: OnUpgrade, idle: Duration) -> Tunnel {
        Tunnel { client, app, idle }
    }

    /// Waits for both upgrades to complete, then copies bytes both ways, noting them in
    /// `traffic`, until the tunnel ends.
    ///
    /// A tunnel nothing crosses for its idle time is closed, as nginx's `proxy_read_timeout`
    /// closes one: a client that vanished without a word (a NAT mapping dropped, a phone
    /// gone out of range) would otherwise hold its socket, a connection to the app and the
    /// app's worker for good. WebSocket apps that keep quiet connections open send pings
    /// more often.
    pub async fn run(self, traffic: &Traffic) -> TunnelEnd {
        let (client, app) = match tokio::try_join!(self.client, self.app) {
            Ok(pair) => pair,
            Err(e) => {
                debug!(error = %e, "upgrade did not complete");
                return TunnelEnd::NotOpened;
            }
        };
        let mut client = Watched::new(TokioIo::new(client), traffic, &traffic.from_client);
        let mut app = Watched::new(TokioIo::new(app), traffic, &traffic.from_app);
        let copy = tokio::io::copy_bidirectional(&mut client, &mut app);
        tokio::pin!(copy);
        loop {
            let deadline = traffic.began + traffic.last_move() + self.idle;
            tokio::select! {
                result = &mut copy => {
                    return match result {
                        Ok((to_app, to_client)) => {
                            debug!(to_app, to_client, "tunnel closed");
                            TunnelEnd::Closed
                        }
                        Err(e) => {
                            debug!(error = %e, "tunnel ended");
                            TunnelEnd::Failed
                        }
                    };
                }
                () = tokio::time::sleep_until(deadline) => {
                    if traffic.began + traffic.last_move() + self.idle <= Instant::now() {
                        debug!(idle = ?self.idle, "tunnel idle; closing it");
                        return TunnelEnd::Idle;
                    }
                }
            }
        }
    }
}

/// How a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelEnd {
    /// Never opened: the client left before the switch (or hyper could not hand it over).
    NotOpened,
    /// Either side closed it.
    Closed,
    /// Nothing crossed it for `upstream.websocket_idle_timeout`: closed, as nginx does.
    Idle,
    /// A read or write failed (a reset).
    Failed,
}

/// What crossed a tunnel: bytes each way, and when bytes last moved either way (as time
/// since it began, in nanoseconds; both sides' reads set it).
pub struct Traffic {
    began: Instant,
    last_move: AtomicU64,
    from_client: AtomicU64,
    from_app: AtomicU64,
}

impl Traffic {
    pub fn new() -> Traffic {
        Traffic {
            began: Instant::now(),
            last_move: AtomicU64::new(0),
            from_client: AtomicU64::new(0),
            from_app: AtomicU64::new(0),
        }
    }

    /// Bytes the client sent through the tunnel.
    pub fn from_client(&self) -> u64 {
        self.from_client.load(Ordering::Relaxed)
    }

    /// Bytes the app sent through the tunnel.
    pub fn from_app(&self) -> u64 {
        self.from_app.load(Ordering::Relaxed)
    }

    fn last_move(&self) -> Duration {
        Duration::from_nanos(self.last_move.load(Ordering::Relaxed))
    }

    fn moved(&self, bytes: usize, side: &AtomicU64) {
        side.fetch_add(bytes as u64, Ordering::Relaxed);
        let nanos = u64::try_from(self.began.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_move.fetch_max(nanos, Ordering::Relaxed);
    }
}

impl Default for Traffic {
    fn default() -> Traffic {
        Traffic::new()
    }
}

/// One side of a tunnel, noting in [`Traffic`] each read that brought bytes (into
/// `read`, that side's count).
struct Watched<'a, T> {
    io: T,
    traffic: &'a Traffic,
    read: &'a AtomicU64,
}

impl<'a, T> Watched<'a, T> {
    fn new(io: T, traffic: &'a Traffic, read: &'a AtomicU64) -> Watched<'a, T> {
        Watched { io, traffic, read }
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
        let read = buf.filled().len() - before;
        if read > 0 {
            self.traffic.moved(read, self.read);
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
