//! Telling systemd what state offload is in (`Type=notify` in `offload.service`), as
//! `sd_notify(3)` does: `READY=1` once the listeners are bound and connections are being
//! accepted (so `systemctl start` returns, and units ordered after offload start, only
//! then), `RELOADING=1` and `READY=1` around a SIGHUP's certificate reload, `STOPPING=1`
//! when the shutdown begins. Without `NOTIFY_SOCKET` (not started by systemd) nothing is
//! sent.

use sd_notify::NotifyState;
use tracing::debug;

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

fn send(state: &[NotifyState<'_>]) {
    // The service manager may be gone (a stop racing us); the proxy carries on regardless.
    if let Err(e) = sd_notify::notify(state) {
        debug!(error = %e, ?state, "telling systemd failed");
    }
}
