//! How many client connections the server holds at once (`server.max_connections`, as
//! nginx's `worker_connections`), and the open-file limit under it.
//!
//! Each connection costs a file descriptor, and one more while it has a connection to the
//! app. Past the process's open-file limit `accept` fails (EMFILE) and so would connecting
//! to the app, opening a stored file or a log: everyone's requests fail, not just the
//! newest. So the server stops accepting at a limit below that: new connections wait in
//! the kernel's listen backlog until one closes, as nginx does when its workers are full.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tracing::warn;

use crate::metrics::Metrics;

/// Descriptors kept for everything but client connections and their app connections:
/// listeners, the store's files, logs, the S3 client's connections.
const RESERVED_FILES: u64 = 256;

/// The most connections [`max_connections`] derives when the open-file limit is unlimited.
const UNLIMITED_FILES: u64 = 1 << 20;

/// Raises this process's soft open-file limit to its hard limit (as Go's runtime does, and
/// nginx's `worker_rlimit_nofile`): a shell's soft 1024 would otherwise cap a proxy at a
/// few hundred clients. Returns the soft limit in effect, `None` where it cannot be read.
pub fn raise_open_files_limit() -> Option<u64> {
    let limit = nofile()?;
    if limit.rlim_cur < limit.rlim_max && set_nofile(limit.rlim_max, limit.rlim_max) {
        return Some(limit.rlim_max);
    }
    Some(limit.rlim_cur)
}

/// The open-file limits (soft, hard), `None` where they cannot be read.
fn nofile() -> Option<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we own; no other memory is involved.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0).then_some(limit)
}

/// Sets the open-file limits; false when refused (the limits stay as they were).
fn set_nofile(soft: u64, hard: u64) -> bool {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads the struct we own.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 }
}

/// `server.max_connections`, or when it is 0, what the open-file limit leaves room for: half
/// of it past [`RESERVED_FILES`] (a client connection and its app connection each).
pub fn max_connections(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    let files = nofile().map_or(1024, |n| n.rlim_cur.min(UNLIMITED_FILES));
    let room = files.saturating_sub(RESERVED_FILES) / 2;
    usize::try_from(room).unwrap_or(usize::MAX).max(16)
}

/// The connection slots: one is held by each open client connection.
pub(super) struct ConnectionSlots {
    slots: Arc<Semaphore>,
    limit: usize,
    metrics: Metrics,
    /// When the limit was last reported, so that a server held at it warns once a minute.
    last_warned: Mutex<Option<Instant>>,
}

/// How often a server held at its connection limit says so.
const WARN_EVERY: Duration = Duration::from_secs(60);

impl ConnectionSlots {
    /// `limit` slots; the limit and each wait for a slot are shown in `metrics`.
    pub(super) fn new(limit: usize, metrics: Metrics) -> ConnectionSlots {
        metrics.max_connections(limit);
        ConnectionSlots {
            slots: Arc::new(Semaphore::new(limit)),
            limit,
            metrics,
            last_warned: Mutex::new(None),
        }
    }

    /// A slot for the next connection, waiting (and warning) while all are taken.
    pub(super) async fn next(&self) -> OwnedSemaphorePermit {
        match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(slot) => return slot,
            Err(TryAcquireError::NoPermits) => self.warn_full(),
            // Never closed: the semaphore lives as long as the server.
            Err(TryAcquireError::Closed) => {}
        }
        match Arc::clone(&self.slots).acquire_owned().await {
            Ok(slot) => slot,
            Err(_) => std::future::pending().await,
        }
    }

    fn warn_full(&self) {
        self.metrics.connection_waited();
        let mut last = self
            .last_warned
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.is_some_and(|at| at.elapsed() < WARN_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        warn!(
            max_connections = self.limit,
            "server.max_connections reached: new connections wait in the listen backlog"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configured_limit_is_taken_as_it_is() {
        assert_eq!(max_connections(2), 2);
        assert_eq!(max_connections(50_000), 50_000);
    }

    #[test]
    fn the_soft_open_file_limit_is_raised_to_the_hard_one_and_sizes_the_default() {
        let hard = nofile().expect("limits").rlim_max;
        let lowered = hard.min(4096) / 2;
        assert!(
            set_nofile(lowered, hard),
            "lowering the soft limit needs no privilege"
        );
        assert_eq!(nofile().map(|l| l.rlim_cur), Some(lowered));
        assert_eq!(raise_open_files_limit(), Some(hard));
        assert_eq!(nofile().map(|l| l.rlim_cur), Some(hard));
        let expected = (hard.min(UNLIMITED_FILES) - RESERVED_FILES) / 2;
        assert_eq!(max_connections(0) as u64, expected.max(16));
    }

    #[tokio::test]
    async fn connections_past_the_limit_wait_for_a_slot() {
        let metrics = Metrics::new();
        let slots = ConnectionSlots::new(2, metrics.clone());
        let first = slots.next().await;
        let _second = slots.next().await;
        let third = tokio::time::timeout(Duration::from_millis(50), slots.next()).await;
        assert!(third.is_err(), "all taken: the third waits");
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(1), slots.next()).await;
        assert!(third.is_ok(), "a slot freed");
        let text = metrics.encode().expect("metrics");
        assert!(text.contains("offload_max_connections 2\n"), "{text}");
        assert!(
            text.contains("offload_connection_waits_total 1\n"),
            "{text}"
        );
    }
}
