//! `upstream.max_connections`: how many requests are at the app at once, over all workers
//! (nginx's `max_conns`, haproxy's `maxconn` with its queue). A request past the limit waits
//! for a place up to `upstream.connect_timeout`, then is refused with `503`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::ProxyError;
use crate::metrics::AppPlaces;

/// Bounds the requests at the app at once.
#[derive(Debug)]
pub(super) struct Admission {
    slots: Arc<Semaphore>,
    max: usize,
    /// How long a request past the limit waits for a place (`upstream.connect_timeout`, as
    /// haproxy's `timeout queue` defaults to its `timeout connect`).
    wait: Duration,
    /// Where the requests at the app and waiting are shown; not exported until
    /// [`Admission::show_in`].
    places: AppPlaces,
}

/// A request's place at the app, given back when dropped: when its connection returns to
/// the pool, or is dropped.
#[derive(Debug)]
pub(super) struct Place {
    _permit: OwnedSemaphorePermit,
    /// The gauge of requests at the app, counted down as the place is given back.
    active: Gauge,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.active.dec();
    }
}

/// A response body that keeps its request's place until it is read to its end or dropped:
/// for an answer on a connection that is never pooled (an upgrade the app declined), where
/// no [`super::pool::LeasedBody`] carries the place.
pub(super) struct PlacedBody<B> {
    body: B,
    place: Option<Place>,
}

impl<B> PlacedBody<B> {
    pub(super) fn new(body: B, place: Option<Place>) -> PlacedBody<B> {
        PlacedBody { body, place }
    }
}

impl<B: Body + Unpin> Body for PlacedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) {
            self.place = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Counts a request out of those waiting when its wait ends: with a place, with a `503`, or
/// with its client leaving (the wait's future is then dropped).
struct Waiting<'a>(&'a Gauge);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Admission {
    /// The limit of `max` requests at once, `None` for no limit (0).
    pub(super) fn new(max: usize, wait: Duration) -> Option<Admission> {
        (max > 0).then(|| Admission {
            slots: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
            max,
            wait,
            places: AppPlaces::default(),
        })
    }

    /// The limit, as configured.
    pub(super) fn max(&self) -> usize {
        self.max
    }

    /// Shows the requests at the app and waiting in `places` (the proxy's metrics).
    pub(super) fn show_in(&mut self, places: AppPlaces) {
        self.places = places;
    }

    /// A place among the requests at the app, held until the [`Place`] is dropped.
    pub(super) async fn admit(&self) -> Result<Place, ProxyError> {
        let permit = match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(permit) => permit,
            // Boxed: waiting is the exception, and every request's future would carry its
            // state.
            Err(_) => Box::pin(self.queue()).await?,
        };
        self.places.active.inc();
        Ok(Place {
            _permit: permit,
            active: self.places.active.clone(),
        })
    }

    async fn queue(&self) -> Result<OwnedSemaphorePermit, ProxyError> {
        self.places.waits.inc();
        self.places.queued.inc();
        let _waiting = Waiting(&self.places.queued);
        match tokio::time::timeout(self.wait, Arc::clone(&self.slots).acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; a timeout is the one way here.
            Ok(Err(_)) | Err(_) => Err(ProxyError::Busy {
                max: self.max,
                waited: self.wait,
            }),
        }
    }
}
