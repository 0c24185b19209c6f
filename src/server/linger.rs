//! Lingering close, as nginx's `lingering_close`.
//!
//! A request can be answered before its body was read to the end: a 413 for a file over the
//! limit, a 408 or 504 for a stalled body, an app's early 401. hyper then closes the
//! connection, and closing a socket with the client's bytes still arriving makes the kernel
//! answer them with a reset, which can destroy the answer before the client has read it:
//! the uploader sees "connection reset" instead of the 413. So such a connection is closed
//! in two steps: its write side is shut (the answer and a FIN go out), then what the client
//! still sends is read and thrown away until it closes its side (it has read the answer),
//! goes quiet for [`QUIET`], or [`MAX`] has passed.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// How long the client may stay silent before the connection is closed anyway (nginx's
/// `lingering_timeout`).
pub(super) const QUIET: Duration = Duration::from_secs(5);
/// The longest a connection lingers (nginx's `lingering_time`).
pub(super) const MAX: Duration = Duration::from_secs(30);
/// Reads per poll before yielding to the other connections of the thread.
const READS_PER_POLL: usize = 16;

/// The state of one lingering close.
#[derive(Debug)]
pub(super) struct Linger {
    write_shut: bool,
    quiet: Pin<Box<Sleep>>,
    until: Instant,
}

impl Linger {
    pub(super) fn new() -> Linger {
        let now = Instant::now();
        Linger {
            write_shut: false,
            quiet: Box::pin(tokio::time::sleep_until(now + QUIET)),
            until: now + MAX,
        }
    }

    /// Shuts `io`'s write side, then discards what the client still sends, calling `read`
    /// for each read that moved bytes; ready when the socket may be closed. Read errors end
    /// the lingering: the client is gone.
    pub(super) fn poll_close<S>(
        &mut self,
        io: &mut S,
        cx: &mut Context<'_>,
        mut read: impl FnMut(),
    ) -> Poll<io::Result<()>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if !self.write_shut {
            ready!(Pin::new(&mut *io).poll_shutdown(cx))?;
            self.write_shut = true;
        }
        let mut scratch = [MaybeUninit::<u8>::uninit(); 8192];
        for _ in 0..READS_PER_POLL {
            let mut buf = ReadBuf::uninit(&mut scratch);
            match Pin::new(&mut *io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {
                    read();
                    let now = Instant::now();
                    if now >= self.until {
                        return Poll::Ready(Ok(()));
                    }
                    self.quiet.as_mut().reset((now + QUIET).min(self.until));
                }
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => return self.quiet.as_mut().poll(cx).map(Ok),
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;

    async fn linger(ours: &mut DuplexStream) {
        let mut linger = Linger::new();
        poll_fn(|cx| linger.poll_close(ours, cx, || {}))
            .await
            .expect("closed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_gets_the_quiet_time_and_our_fin() {
        let (mut ours, mut theirs) = tokio::io::duplex(1024);
        let started = Instant::now();
        linger(&mut ours).await;
        assert_eq!(started.elapsed(), QUIET);
        let mut rest = Vec::new();
        let read = theirs.read_to_end(&mut rest).await.expect("read");
        assert_eq!(read, 0, "our write side was shut first");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_closes_ends_it_at_once() {
        let (mut ours, mut theirs) = tokio::io::duplex(1024);
        theirs
            .write_all(b"the rest of a body")
            .await
            .expect("write");
        theirs.shutdown().await.expect("shutdown");
        let started = Instant::now();
        linger(&mut ours).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_stops_is_cut_at_the_longest() {
        let (mut ours, mut theirs) = tokio::io::duplex(64 * 1024);
        let feeding = tokio::spawn(async move {
            while theirs.write_all(&[0; 1024]).await.is_ok() {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let started = Instant::now();
        linger(&mut ours).await;
        let took = started.elapsed();
        assert!(
            took >= MAX && took <= MAX + Duration::from_secs(1),
            "{took:?}"
        );
        feeding.abort();
    }
}
