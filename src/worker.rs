//! Which worker thread the current thread is (`server.worker_threads`).
//!
//! Per-worker state (the app connection pool's idle lists, the request metrics' cells) is
//! indexed by it, so that each worker touches memory of its own, as each nginx worker
//! process does. A thread that is no worker (a test's, a blocking task's) counts as worker 0:
//! it shares that worker's state, which stays correct, only not contention-free.

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
