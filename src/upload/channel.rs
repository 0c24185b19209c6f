//! A bounded channel of body chunks whose receiving stream ends cleanly only when told to.
//!
//! A plain channel ends its stream when the sender is dropped, which would turn an aborted
//! upload into a complete-looking (truncated) body for the app or the store. Here only
//! [`Msg::Done`] ends the stream; a dropped sender ends it with an error, so every consumer
//! (hyper sending to the app, `Store::put`) discards what it got.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::mpsc;

/// What a sender puts into the channel.
#[derive(Debug)]
pub enum Msg<E> {
    Chunk(Bytes),
    /// The body is complete.
    Done,
    /// The body failed for this reason.
    Fail(E),
}

/// The receiving end as a stream of chunks.
pub struct Guarded<E> {
    rx: mpsc::Receiver<Msg<E>>,
    finished: bool,
    on_abort: fn() -> E,
}

/// A channel holding at most `capacity` messages; `on_abort` makes the error a dropped
/// sender ends the stream with.
pub fn channel<E>(capacity: usize, on_abort: fn() -> E) -> (mpsc::Sender<Msg<E>>, Guarded<E>) {
    let (tx, rx) = mpsc::channel(capacity);
    (
        tx,
        Guarded {
            rx,
            finished: false,
            on_abort,
        },
    )
}

impl<E> Stream for Guarded<E> {
    type Item = Result<Bytes, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.finished {
            return Poll::Ready(None);
        }
        let item = match self.rx.poll_recv(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(Msg::Chunk(b))) => return Poll::Ready(Some(Ok(b))),
            Poll::Ready(Some(Msg::Done)) => None,
            Poll::Ready(Some(Msg::Fail(e))) => Some(Err(e)),
            Poll::Ready(None) => Some(Err((self.on_abort)())),
        };
        self.finished = true;
        Poll::Ready(item)
    }
}

impl<E> Guarded<E> {
    /// Reads and discards everything until the sender finishes or goes away.
    pub async fn drain(&mut self) {
        while self.rx.recv().await.is_some() {}
        self.finished = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn only_done_ends_cleanly() {
        let (tx, mut rx) = channel(1, || "aborted");
        tokio::spawn(async move {
            tx.send(Msg::Chunk(Bytes::from_static(b"a"))).await.unwrap();
            tx.send(Msg::Done).await.unwrap();
        });
        assert_eq!(rx.next().await.unwrap().unwrap(), "a");
        assert!(rx.next().await.is_none());

        let (tx, mut rx) = channel(1, || "aborted");
        tokio::spawn(async move {
            tx.send(Msg::Chunk(Bytes::from_static(b"a"))).await.unwrap();
            drop(tx);
        });
        assert!(rx.next().await.unwrap().is_ok());
        assert_eq!(rx.next().await.unwrap().unwrap_err(), "aborted");
        assert!(rx.next().await.is_none());
    }
}
