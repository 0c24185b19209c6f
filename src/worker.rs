//! Which worker thread the current thread is (`server.worker_threads`).
//!
//! Per-worker state (the app connection pools, the request metrics' cells, the copies of the
//! server's state) is picked by it with [`mine`], so that each worker writes memory of its
//! own, as each nginx worker process does. A thread that is no worker (a test's, a blocking
//! task's) counts as worker 0, and an index past the end wraps: such threads share a
//! worker's state, which stays correct, only not contention-free.

use std::cell::Cell;

thread_local! {
    static CURRENT: Cell<usize> = const { Cell::new(0) };
}

/// Makes this thread worker `index` for the rest of its life.
pub fn set_current(index: usize) {
    CURRENT.set(index);
}

/// This thread's worker index (0 unless [`set_current`] said otherwise).
pub fn current() -> usize {
    CURRENT.get()
}

/// This thread's entry of `per_worker` (one entry per worker; must not be empty).
pub fn mine<T>(per_worker: &[T]) -> &T {
    &per_worker[current() % per_worker.len()]
}
