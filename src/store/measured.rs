//! A store that counts its failures in `/metrics` (`offload_store_errors_total`) and times
//! its answers (`offload_store_response_seconds`).
//!
//! Clients see few of its failures: mirror mode forwards an upload the store refused, an asset the
//! store cannot give is asked of the app, an origin pull that fails is given up. Without a
//! count an unreachable bucket shows only in the logs, and nothing can alert on it. Only
//! the store's own failures count: a bad key, a range outside the object or a client's
//! failing upload body are not the store's.
//!
//! Readiness probes (`/readyz`) are neither timed nor counted. The times are those of the
//! operations on a request's way: `head` (is the asset there),
//! `get` until the object's first bytes, `delete`. A `put` takes as long as its body takes to
//! come (a client's upload), which would say more of the client than of the store.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

use super::{ByteRange, ByteStream, GetObject, ObjectInfo, PutOptions, Store, StoreError};
use crate::metrics::Metrics;

/// `inner`, with its failures counted and its answers timed in `metrics`.
pub struct Measured {
    inner: Arc<dyn Store>,
    metrics: Metrics,
}

impl Measured {
    pub fn new(inner: Arc<dyn Store>, metrics: Metrics) -> Measured {
        Measured { inner, metrics }
    }

    /// `result`, counted when it is a failure of the store's.
    fn count<T>(
        &self,
        operation: &'static str,
        result: Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if let Err(error) = &result
            && let Some(label) = store_side(error)
        {
            self.metrics.store_error(operation, label);
        }
        result
    }

    /// What `call` gives, timed as `operation` and counted when it fails.
    async fn answered<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = call.await;
        self.metrics.store_answered(operation, started.elapsed());
        self.count(operation, result)
    }
}

/// The metric's label for a failure of the store's (one of `metrics::STORE_ERRORS`, each
/// shown from the start), `None` for one that is not.
fn store_side(error: &StoreError) -> Option<&'static str> {
    let [unavailable, refused, io] = crate::metrics::STORE_ERRORS;
    match error {
        StoreError::Unavailable(_) => Some(unavailable),
        StoreError::Refused(_) => Some(refused),
        StoreError::Io(_) => Some(io),
        StoreError::InvalidKey(_) | StoreError::RangeNotSatisfiable | StoreError::Body(_) => None,
    }
}

#[async_trait]
impl Store for Measured {
    async fn put(
        &self,
        key: &str,
        body: ByteStream,
        opts: PutOptions,
    ) -> Result<ObjectInfo, StoreError> {
        self.count("put", self.inner.put(key, body, opts).await)
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        self.answered("head", self.inner.head(key)).await
    }

    async fn get(
        &self,
        key: &str,
        range: Option<ByteRange>,
    ) -> Result<Option<GetObject>, StoreError> {
        let object = self.answered("get", self.inner.get(key, range)).await?;
        Ok(object.map(|object| GetObject {
            body: interruptions_counted(object.body, self.metrics.clone()),
            ..object
        }))
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.answered("delete", self.inner.delete(key)).await
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxStream<'a, Result<ObjectInfo, StoreError>> {
        self.inner
            .list(prefix)
            .map(|page| self.count("list", page))
            .boxed()
    }

    fn public_url(&self, key: &str) -> String {
        self.inner.public_url(key)
    }

    fn push_public_url(&self, key: &str, url: &mut String) {
        self.inner.push_public_url(key, url);
    }

    /// Neither timed nor counted: a probe every few seconds from a load balancer would
    /// otherwise make up most of the `head` times, and count a store failure once per
    /// probe besides the requests' own.
    async fn probe(&self) -> Result<(), StoreError> {
        self.inner.probe().await
    }
}

/// `body`, with a failure while its bytes come counted as an interrupted `get` (the store
/// went away mid-object; the client's response ends short).
fn interruptions_counted(body: ByteStream, metrics: Metrics) -> ByteStream {
    body.inspect(move |chunk| {
        if chunk.is_err() {
            metrics.store_interrupted();
        }
    })
    .boxed()
}
