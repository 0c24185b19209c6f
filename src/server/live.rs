//! The state requests are served with: one copy per worker (see `AppState`), replaced whole
//! when a SIGHUP reloads the configuration (`server::hangup`). Each request takes its
//! worker's copy as it begins, so a kept-alive connection (a load balancer's may stay open
//! for hours) serves its next request with the new configuration, while requests in flight
//! finish with the one they began with.

use std::sync::{Arc, PoisonError, RwLock};

use super::AppState;

pub(crate) struct LiveState {
    /// Worker `i`'s copy is `per_worker[i]`: a lock no other worker takes, but for a reload.
    per_worker: Box<[Slot]>,
}

/// Each request writes its worker's lock word (a reader count): on a cache line of its own,
/// so that workers do not take the line from each other (see `AppState`).
#[repr(align(128))]
struct Slot(RwLock<Arc<AppState>>);

impl LiveState {
    /// `state`, copied for each of `workers`.
    pub(crate) fn new(state: &AppState, workers: usize) -> LiveState {
        LiveState {
            per_worker: (0..workers.max(1))
                .map(|_| Slot(RwLock::new(Arc::new(state.clone()))))
                .collect(),
        }
    }

    /// The calling worker's copy of the state being served.
    pub(crate) fn current(&self) -> Arc<AppState> {
        let slot = crate::worker::mine(&self.per_worker);
        // Replacing an Arc cannot leave it half written: a poisoned lock holds a whole one.
        Arc::clone(&slot.0.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Every worker serves the requests that begin from now on with (a copy of) `state`.
    pub(crate) fn replace(&self, state: &AppState) {
        for slot in &self.per_worker {
            let copy = Arc::new(state.clone());
            *slot.0.write().unwrap_or_else(PoisonError::into_inner) = copy;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::admin::ReadinessCheck;
    use crate::config::Config;
    use crate::server::{OnLiveState, upstream_check};

    async fn state_for(app: SocketAddr, store: &std::path::Path) -> AppState {
        let mut config = Config::default();
        config.upstream.url = format!("http://{app}").parse().unwrap();
        config.store.root = store.to_path_buf();
        AppState::new(Arc::new(config)).await.unwrap()
    }

    /// After a reload, requests and `/readyz` both use the new state: here an app that is
    /// gone is replaced by one that listens.
    #[tokio::test]
    async fn requests_and_readiness_follow_a_replaced_state() {
        let store = tempfile::tempdir().unwrap();
        let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gone = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (app_addr, gone_addr) = (app.local_addr().unwrap(), gone.local_addr().unwrap());
        drop(gone);

        let live = Arc::new(LiveState::new(&state_for(gone_addr, store.path()).await, 2));
        let readiness = OnLiveState::new(&live, upstream_check);
        assert_eq!(readiness.name(), "upstream");
        let refused = readiness.check().await.unwrap_err();
        assert!(refused.contains(&gone_addr.to_string()), "{refused}");

        let before = live.current();
        live.replace(&state_for(app_addr, store.path()).await);
        assert_eq!(readiness.check().await, Ok(()));
        let url = live.current().config.upstream.url.clone();
        assert_eq!(url.as_str(), format!("http://{app_addr}/"));
        // A request that began before keeps the state it began with.
        assert_eq!(
            before.config.upstream.url.as_str(),
            format!("http://{gone_addr}/")
        );
    }
}
