//! SIGHUP, as `systemctl reload` sends it (nginx's reload): re-reads `server.tls`'s
//! certificate and key (after a renewal), and loads the configuration again as at start
//! (file, environment, flags). What changed and can change while serving (see
//! [`Config::reloadable_part`]) is applied: new requests, also on connections already open,
//! are served with a state built from it, while requests in flight finish with the old
//! (its store and app connections kept when their settings did not change,
//! [`AppState::reloaded`]); `[server]`'s timeouts, HTTP limits, HTTP/2 and PROXY protocol
//! apply to connections accepted afterwards (`server::settings`), and the connection limit
//! at once (`server::limits`), as does `log.level`. What is set up once at start
//! (listeners, workers, the log's format and buffer) is named in a warning as taking a
//! restart. A file that no longer loads, or a state that cannot be built from it
//! (a store that does not open), changes nothing and is logged as an error.
//!
//! Without a handler the signal's default action would end the process.

use std::net::SocketAddr;
use std::sync::Arc;

use tracing::{error, info, warn};

use super::limits::{self, ConnectionSlots};
use super::live::LiveState;
use super::tls::Certificates;
use super::{AppState, notify};
use crate::config::Config;
use crate::logging;
use crate::metrics::Metrics;

/// Handles every SIGHUP until the task is aborted. `reread` loads the configuration again as
/// at start; the one being served is the live state's. `listening`: the addresses bound,
/// each with the key that set it.
pub(super) async fn on_hangup(
    certificates: Option<Arc<Certificates>>,
    live: Arc<LiveState>,
    slots: Arc<ConnectionSlots>,
    listening: Vec<(&'static str, SocketAddr)>,
    reread: impl Fn() -> anyhow::Result<Config>,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => hangups,
            Err(e) => return warn!(error = %e, "cannot watch SIGHUP; no reloads"),
        };
        while hangups.recv().await.is_some() {
            notify::reloading();
            if let Some(certificates) = &certificates {
                reload_certificate(certificates, &live.current().metrics);
            }
            // A small file read on this thread, as the certificate's: no I/O worth a
            // blocking pool.
            match reread() {
                Ok(next) => reload_configuration(&live, &slots, &listening, next).await,
                Err(e) => error!(
                    error = format!("{e:#}"),
                    "SIGHUP: the configuration does not load; nothing reloaded, and a restart \
                     would fail"
                ),
            }
            notify::ready();
        }
    }
    #[cfg(not(unix))]
    let _ = (certificates, live, slots, listening, reread);
}

fn reload_certificate(certificates: &Certificates, metrics: &Metrics) {
    match certificates.reload() {
        Ok(()) => {
            info!(
                cert = %certificates.cert_path().display(),
                "SIGHUP: TLS certificate reloaded"
            );
            super::tls::report_validity(certificates, metrics);
        }
        Err(e) => error!(
            error = format!("{e:#}"),
            "SIGHUP: TLS certificate not reloaded; serving the previous one"
        ),
    }
}

/// Applies what a reload can of `next` over the configuration being served, and says what it
/// could not. Keys are logged by name only: values may be secrets.
async fn reload_configuration(
    live: &LiveState,
    slots: &ConnectionSlots,
    listening: &[(&'static str, SocketAddr)],
    next: Config,
) {
    let current = live.current();
    let running = &current.config;
    let changed = running.changed_keys(&next);
    let applied = running.reloadable_part(next);
    // The file was checked against the listeners it names, which a reload does not move:
    // an app moved to offload's own port (the listener moved in the same edit) would have
    // every request come back to offload, each opening another connection.
    if let Err(e) = applied.check_upstream_not_at(listening) {
        return error!(
            error = format!("{e:#}"),
            "SIGHUP: configuration not reloaded; serving with the previous one"
        );
    }
    let reloaded = running.changed_keys(&applied);
    let pending: Vec<&String> = changed.iter().filter(|k| !reloaded.contains(k)).collect();
    if !pending.is_empty() {
        warn!(
            changed = join(&pending),
            "SIGHUP: these settings take a restart; they keep their running values"
        );
    }
    if reloaded.is_empty() {
        if changed.is_empty() {
            info!("SIGHUP: the configuration is unchanged");
        }
        return;
    }
    match AppState::reloaded(Arc::new(applied), &current, &reloaded).await {
        Ok(state) => {
            live.replace(&state);
            slots.resize(limits::max_connections(state.config.server.max_connections));
            if reloaded.iter().any(|key| key == "log.level") {
                reload_log_level(&state.config.log.level);
            }
            info!(changed = join(&reloaded), "SIGHUP: configuration reloaded");
        }
        Err(e) => error!(
            error = format!("{e:#}"),
            "SIGHUP: configuration not reloaded; serving with the previous one"
        ),
    }
}

/// Filters the log with a reloaded `log.level` (validated as the file loaded).
fn reload_log_level(level: &str) {
    match logging::reload_level(level) {
        Ok(true) => {}
        Ok(false) => warn!("SIGHUP: log.level changed, but RUST_LOG is set and overrides it"),
        Err(e) => error!(error = format!("{e:#}"), "SIGHUP: log.level not applied"),
    }
}

fn join(keys: &[impl AsRef<str>]) -> String {
    keys.iter()
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join(", ")
}
