//! Which keys are in the store, as this replica last saw it.
//!
//! Answers are kept in a bounded cache: "present" for `cache_ttl`, "absent" only for
//! `cache_absent_ttl` (another replica may offload the key any moment). A miss asks the store
//! (HEAD); concurrent misses for one key share a single request. Nothing here is needed for
//! correctness across replicas: a stale answer only delays a rewrite or an offload.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;

use super::{Store, StoreError};
use crate::config::StoreConfig;

/// The presence cache in front of a store.
pub struct Presence {
    store: Arc<dyn Store>,
    /// Answers, readable without I/O (from inside the HTML rewriter).
    known: moka::sync::Cache<String, bool>,
    /// HEADs in flight: one per key, whoever asks meanwhile waits for it.
    in_flight: moka::future::Cache<String, bool>,
}

/// Present and absent answers live for different times.
struct AnswerExpiry {
    present: Duration,
    absent: Duration,
}

impl AnswerExpiry {
    fn ttl(&self, present: bool) -> Option<Duration> {
        Some(if present { self.present } else { self.absent })
    }
}

impl Expiry<String, bool> for AnswerExpiry {
    fn expire_after_create(&self, _: &String, present: &bool, _: Instant) -> Option<Duration> {
        self.ttl(*present)
    }

    fn expire_after_update(
        &self,
        _: &String,
        present: &bool,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        self.ttl(*present)
    }
}

impl Presence {
    /// A cache sized and timed by `cfg` (`cache_capacity`, `cache_ttl`, `cache_absent_ttl`).
    pub fn new(store: Arc<dyn Store>, cfg: &StoreConfig) -> Presence {
        Self::with_limits(
            store,
            cfg.cache_capacity,
            cfg.cache_ttl,
            cfg.cache_absent_ttl,
        )
    }

    /// A cache of at most `capacity` keys, trusting "present" for `ttl` and "absent" for
    /// `absent_ttl`.
    pub fn with_limits(
        store: Arc<dyn Store>,
        capacity: u64,
        ttl: Duration,
        absent_ttl: Duration,
    ) -> Presence {
        let known = moka::sync::Cache::builder()
            .max_capacity(capacity)
            .expire_after(AnswerExpiry {
                present: ttl,
                absent: absent_ttl,
            })
            .build();
        // Entries here only bridge the moment between a HEAD's answer and its waiters
        // reading it; the TTL is a safety net.
        let in_flight = moka::future::Cache::builder()
            .max_capacity(capacity)
            .time_to_live(Duration::from_secs(60))
            .build();
        Presence {
            store,
            known,
            in_flight,
        }
    }

    /// Whether `key` is in the store: from the cache, else from one HEAD (shared by every
    /// concurrent caller for this key).
    pub async fn is_present(&self, key: &str) -> Result<bool, StoreError> {
        if let Some(present) = self.cached(key) {
            return Ok(present);
        }
        let result = self
            .in_flight
            .try_get_with_by_ref(key, async {
                let present = self.store.head(key).await?.is_some();
                self.known.insert(key.to_string(), present);
                Ok::<_, StoreError>(present)
            })
            .await;
        // From now on `known` answers; a later miss must ask the store again.
        self.in_flight.invalidate(key).await;
        result.map_err(|err| err.duplicate())
    }

    /// The cached answer for `key`, if any; never does I/O.
    pub fn cached(&self, key: &str) -> Option<bool> {
        self.known.get(key)
    }

    /// Records that `key` was just written.
    pub fn mark_present(&self, key: &str) {
        self.known.insert(key.to_string(), true);
    }

    /// Records that `key` was just found missing or deleted.
    pub fn mark_absent(&self, key: &str) {
        self.known.insert(key.to_string(), false);
    }
}
