//! Telling systemd what state offload is in (`Type=notify` in `offload.service`), as
//! `sd_notify(3)` does: `READY=1` once the listeners are bound and connections are being
//! accepted (so `systemctl start` returns, and units ordered after offload start, only
//! then), `RELOADING=1` and `READY=1` around a SIGHUP (see `server::hangup`), `STOPPING=1`
//! when the shutdown begins. Without `NOTIFY_SOCKET` (not started by systemd) nothing is
//! sent.
//!
//! With `WatchdogSec=` in the unit, offload also says `WATCHDOG=1` every half of that
//! interval, each time only once every worker has run a task since the last: a worker stuck
//! in a long poll (a bug, a blocking call) leaves its connections hanging, and systemd then
//! restarts offload rather than letting them hang.

use std::time::Duration;

use sd_notify::NotifyState;
use tracing::{debug, warn};

use super::workers::Liveness;

/// The listeners are bound and serving.
pub(super) fn ready() {
    send(&[NotifyState::Ready]);
}

/// A reload (SIGHUP) begins; [`ready`] when it is done.
pub(super) fn reloading() {
    send(&[NotifyState::Reloading]);
}

/// The shutdown began: draining, no longer ready.
pub(super) fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// The watchdog interval systemd set (`WatchdogSec=`, passed as `WATCHDOG_USEC`), if any.
pub(super) fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|interval| !interval.is_zero())
}

/// Says `WATCHDOG=1` every half `interval`, each time once all `workers` ran a task since
/// the last; runs until dropped.
pub(super) async fn keep_watchdog(interval: Duration, workers: Liveness) {
    // Bounded below so that a nonsensical WATCHDOG_USEC=1 does not become a busy loop.
    let period = (interval / 2).max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(period).await;
        let mut ran = std::pin::pin!(workers.all_ran());
        // Warned a quarter interval before systemd would act, so the log says why.
        if tokio::time::timeout(interval / 4, &mut ran).await.is_err() {
            warn!(
                watchdog = %humantime::format_duration(interval),
                "a worker has not run for a quarter of the watchdog interval; \
                 systemd restarts offload if it does not run within another quarter"
            );
            ran.await;
        }
        send(&[NotifyState::Watchdog]);
    }
}

fn send(state: &[NotifyState<'_>]) {
    // The service manager may be gone (a stop racing us); the proxy carries on regardless.
    if let Err(e) = sd_notify::notify(state) {
        debug!(error = %e, ?state, "telling systemd failed");
    }
}
