//! How many client connections the server holds at once (`server.max_connections`, as
//! nginx's `worker_connections`), and the open-file limit under it.
//!
//! Each connection costs a file descriptor, and one more while it has a connection to the
//! app. Past the process's open-file limit `accept` fails (EMFILE) and so would connecting
//! to the app, opening a stored file or a log: everyone's requests fail, not just the
//! newest. So the server stops accepting at a limit below that: new connections wait in
//! the kernel's listen backlog until one closes, as nginx does when its workers are full.
//! When a connection waits there, the connections kept alive between requests are asked to
//! close, as nginx reuses its idle keep-alive connections when
//! `worker_connections` run out: otherwise a client holding idle connections (a browser
//! keeps six) would keep everyone else out until `server.header_read_timeout`.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, SemaphorePermit, TryAcquireError};
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

/// The soft open-file limit in force (what `process_max_fds` shows), `None` where it cannot
/// be read.
pub(crate) fn open_files_limit() -> Option<u64> {
    nofile().map(|limit| limit.rlim_cur)
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

/// The connection slots: one is held by each open client connection. A reload may resize
/// them ([`ConnectionSlots::resize`]), as nginx's reload applies `worker_connections`.
pub(super) struct ConnectionSlots {
    slots: Arc<Semaphore>,
    sizing: Mutex<Sizing>,
    /// Woken by each resize, so that a wait for a slot (or for open connections to fall to a
    /// lowered limit) starts over with the new sizes.
    resized: Notify,
    metrics: Metrics,
    /// When the limit was last reported, so that a server held at it warns once a minute.
    last_warned: Mutex<Option<Instant>>,
    /// Asks the connections between requests to close ([`ConnectionSlots::reclaimer`]).
    reclaim: Arc<Notify>,
    /// When they were last asked.
    last_reclaimed: Mutex<Option<Instant>>,
}

struct Sizing {
    limit: usize,
    /// Slots the semaphore still holds above `limit` after a lowering found them taken:
    /// taken back as those connections close, before any new one is accepted.
    excess: usize,
}

/// How often a server held at its connection limit says so.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// How often, at most, a server held at its connection limit asks the connections between
/// requests to close: each time wakes every connection's task, and those busy then may be
/// between requests a moment later.
const RECLAIM_EVERY: Duration = Duration::from_millis(250);

impl ConnectionSlots {
    /// `limit` slots; the limit and each wait for a slot are shown in `metrics`.
    pub(super) fn new(limit: usize, metrics: Metrics) -> ConnectionSlots {
        metrics.max_connections(limit);
        ConnectionSlots {
            slots: Arc::new(Semaphore::new(limit)),
            sizing: Mutex::new(Sizing { limit, excess: 0 }),
            resized: Notify::new(),
            metrics,
            last_warned: Mutex::new(None),
            reclaim: Arc::new(Notify::new()),
            last_reclaimed: Mutex::new(None),
        }
    }

    /// What each connection listens to, to close when it is between requests while new
    /// connections wait for a slot.
    pub(super) fn reclaimer(&self) -> Arc<Notify> {
        Arc::clone(&self.reclaim)
    }

    /// Makes the limit `limit`. Raised, the new slots are free at once; lowered, the free
    /// slots above it go at once and taken ones as their connections close, while new
    /// connections wait until fewer than `limit` are open. Open connections are never cut.
    pub(super) fn resize(&self, limit: usize) {
        let mut sizing = lock(&self.sizing);
        let held = sizing.limit + sizing.excess;
        if limit >= held {
            self.slots.add_permits(limit - held);
            sizing.excess = 0;
        } else {
            let gone = self.slots.forget_permits(held - limit);
            sizing.excess = held - limit - gone;
        }
        sizing.limit = limit;
        drop(sizing);
        self.metrics.max_connections(limit);
        self.resized.notify_waiters();
    }

    /// A slot for the next connection, waiting (and warning) while all are taken, and
    /// asking the connections between requests to make room whenever `queued` says a new
    /// one waits for it.
    pub(super) async fn next(
        &self,
        queued: &(dyn Fn() -> bool + Send + Sync),
    ) -> OwnedSemaphorePermit {
        let mut warned = false;
        loop {
            // Made before the sizes are read: a resize from then on wakes it.
            let resized = self.resized.notified();
            let excess = lock(&self.sizing).excess;
            if excess > 0 {
                // Over a lowered limit: as at the limit, the connections between requests
                // make room while a new one waits. (Dropped at the sleep, the acquisition
                // gives back what it had taken.)
                self.reclaim_idle(queued);
                tokio::select! {
                    taken = self.slots.acquire_many(clamp_u32(excess)) => {
                        if let Ok(taken) = taken {
                            self.take_back(taken);
                        }
                    }
                    () = resized => {}
                    () = tokio::time::sleep(RECLAIM_EVERY) => {}
                }
                continue;
            }
            match Arc::clone(&self.slots).try_acquire_owned() {
                Ok(slot) => return slot,
                Err(TryAcquireError::NoPermits) => {
                    if !std::mem::replace(&mut warned, true) {
                        self.warn_full();
                    }
                    self.reclaim_idle(queued);
                }
                // Never closed: the semaphore lives as long as the server.
                Err(TryAcquireError::Closed) => return std::future::pending().await,
            }
            tokio::select! {
                slot = Arc::clone(&self.slots).acquire_owned() => match slot {
                    Ok(slot) => return slot,
                    Err(_) => return std::future::pending().await,
                },
                () = resized => {}
                // Connections busy a moment ago may be between requests now.
                () = tokio::time::sleep(RECLAIM_EVERY) => {}
            }
        }
    }

    /// Drops `taken` slots for good, as far as a lowering still asks for them; the rest go
    /// back (a raise may have come since they were asked for).
    fn take_back(&self, mut taken: SemaphorePermit<'_>) {
        let mut sizing = lock(&self.sizing);
        let kept = taken.num_permits().min(sizing.excess);
        sizing.excess -= kept;
        if let Some(gone) = taken.split(kept) {
            gone.forget();
        }
    }

    /// The limit in force.
    pub(super) fn limit(&self) -> usize {
        lock(&self.sizing).limit
    }

    /// Asks the connections between requests to close when a new one is `queued`, unless
    /// that was done less than [`RECLAIM_EVERY`] ago.
    fn reclaim_idle(&self, queued: &dyn Fn() -> bool) {
        let mut last = lock(&self.last_reclaimed);
        if last.is_some_and(|at| at.elapsed() < RECLAIM_EVERY) || !queued() {
            return;
        }
        *last = Some(Instant::now());
        self.reclaim.notify_waiters();
    }

    fn warn_full(&self) {
        self.metrics.connection_waited();
        let mut last = lock(&self.last_warned);
        if last.is_some_and(|at| at.elapsed() < WARN_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        warn!(
            max_connections = self.limit(),
            "server.max_connections reached: connections that come meanwhile wait in the listen \
             backlog"
        );
    }
}

/// Whether a connection waits in `listener`'s accept queue: Linux gives a listening
/// socket's queue length in `TCP_INFO`'s `tcpi_unacked` (what `ss -l` shows as Recv-Q).
/// True where that cannot be read: making room then is the side that keeps clients out
/// for less long.
pub(super) fn connections_queued(listener: &impl AsRawFd) -> bool {
    // SAFETY: tcp_info is plain integers, for which all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, which we own, and the fd
    // is the listener's, open for as long as it is borrowed.
    let read = unsafe {
        libc::getsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    } == 0;
    !read || info.tcpi_unacked > 0
}

fn clamp_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A lock held for a few instructions; a poisoned one holds whole values still.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
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
        let first = slots.next(&|| true).await;
        let _second = slots.next(&|| true).await;
        let third = tokio::time::timeout(Duration::from_millis(50), slots.next(&|| true)).await;
        assert!(third.is_err(), "all taken: the third waits");
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(1), slots.next(&|| true)).await;
        assert!(third.is_ok(), "a slot freed");
        let text = metrics.encode().expect("metrics");
        assert!(text.contains("offload_max_connections 2\n"), "{text}");
        assert!(
            text.contains("offload_connection_waits_total 1\n"),
            "{text}"
        );
    }

    /// Whether the next slot comes within a short wait.
    async fn slot_free(slots: &ConnectionSlots) -> Option<OwnedSemaphorePermit> {
        tokio::time::timeout(Duration::from_millis(50), slots.next(&|| true))
            .await
            .ok()
    }

    #[tokio::test]
    async fn a_raised_limit_lets_a_waiting_connection_in_at_once() {
        let metrics = Metrics::new();
        let slots = Arc::new(ConnectionSlots::new(1, metrics.clone()));
        let _open = slots.next(&|| true).await;
        let waiting = tokio::spawn({
            let slots = Arc::clone(&slots);
            async move { slots.next(&|| true).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "at the limit");
        slots.resize(2);
        let let_in = tokio::time::timeout(Duration::from_secs(1), waiting).await;
        assert!(
            let_in.is_ok(),
            "the new slot went to the waiting connection"
        );
        assert!(slot_free(&slots).await.is_none(), "two open: the new limit");
        let text = metrics.encode().expect("metrics");
        assert!(text.contains("offload_max_connections 2\n"), "{text}");
    }

    #[tokio::test]
    async fn a_lowered_limit_cuts_no_connection_and_admits_none_until_under_it() {
        let metrics = Metrics::new();
        let slots = ConnectionSlots::new(4, metrics.clone());
        let mut open = vec![
            slots.next(&|| true).await,
            slots.next(&|| true).await,
            slots.next(&|| true).await,
        ];
        slots.resize(1);
        assert!(slot_free(&slots).await.is_none(), "three open, one allowed");
        open.pop();
        assert!(slot_free(&slots).await.is_none(), "two open, one allowed");
        open.pop();
        assert!(slot_free(&slots).await.is_none(), "one open, one allowed");
        open.pop();
        let only = slot_free(&slots).await;
        assert!(only.is_some(), "none open: one may come in");
        assert!(slot_free(&slots).await.is_none(), "and only one");
        let text = metrics.encode().expect("metrics");
        assert!(text.contains("offload_max_connections 1\n"), "{text}");
    }

    #[tokio::test]
    async fn a_lowering_takes_free_slots_at_once() {
        let slots = ConnectionSlots::new(4, Metrics::new());
        let _first = slots.next(&|| true).await;
        slots.resize(2);
        let second = slot_free(&slots).await;
        assert!(second.is_some(), "one open, two allowed");
        assert!(slot_free(&slots).await.is_none(), "two open, two allowed");
    }

    #[tokio::test]
    async fn a_raise_after_a_lowering_still_owed_counts_from_the_open_connections() {
        let slots = ConnectionSlots::new(3, Metrics::new());
        let open = [
            slots.next(&|| true).await,
            slots.next(&|| true).await,
            slots.next(&|| true).await,
        ];
        slots.resize(1);
        assert!(slot_free(&slots).await.is_none(), "three open, one allowed");
        slots.resize(4);
        let fourth = slot_free(&slots).await;
        assert!(fourth.is_some(), "three open, four allowed");
        assert!(slot_free(&slots).await.is_none(), "four open, four allowed");
        drop(open);
        let mut again = Vec::new();
        while let Some(slot) = slot_free(&slots).await {
            again.push(slot);
        }
        assert_eq!(again.len(), 3, "four in all, as the limit says");
    }
}
