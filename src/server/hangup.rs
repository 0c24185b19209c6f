//! SIGHUP, as `systemctl reload` sends it: re-reads `server.tls`'s certificate and key (after
//! a renewal, as nginx's reload is used), and loads the configuration again to say what a
//! reload cannot do: which settings changed since start (they take a restart) or that the
//! file no longer loads (a restart would fail). Operators who edit the file and reload, as
//! with nginx, learn at once that offload still runs the configuration it started with.
//!
//! Without a handler the signal's default action would end the process.

use std::sync::Arc;

use tracing::{error, info, warn};

use super::notify;
use super::tls::Certificates;
use crate::config::Config;

/// Handles every SIGHUP until the task is aborted. `running` is the configuration being
/// served; `reread` loads it again as at start (file, environment, flags).
pub(super) async fn on_hangup(
    certificates: Option<Arc<Certificates>>,
    running: Config,
    reread: impl Fn() -> anyhow::Result<Config>,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => hangups,
            Err(e) => return warn!(error = %e, "cannot watch SIGHUP; no certificate reloads"),
        };
        while hangups.recv().await.is_some() {
            notify::reloading();
            if let Some(certificates) = &certificates {
                reload_certificate(certificates);
            }
            // A small file read on this thread, as the certificate's: no I/O worth a
            // blocking pool.
            check_configuration(&running, reread());
            notify::ready();
        }
    }
    #[cfg(not(unix))]
    let _ = (certificates, running, reread);
}

fn reload_certificate(certificates: &Certificates) {
    match certificates.reload() {
        Ok(()) => info!(
            cert = %certificates.cert_path().display(),
            "SIGHUP: TLS certificate reloaded"
        ),
        Err(e) => error!(
            error = format!("{e:#}"),
            "SIGHUP: TLS certificate not reloaded; serving the previous one"
        ),
    }
}

/// Logs how `reread` differs from the `running` configuration. Key names only: values may
/// be secrets.
fn check_configuration(running: &Config, reread: anyhow::Result<Config>) {
    match reread {
        Err(e) => error!(
            error = format!("{e:#}"),
            "SIGHUP: the configuration no longer loads; offload keeps running the one it \
             started with, but a restart would fail"
        ),
        Ok(now) => {
            let changed = running.changed_keys(&now);
            if changed.is_empty() {
                info!("SIGHUP: the configuration is as offload started with it");
            } else {
                warn!(
                    changed = changed.join(", "),
                    "SIGHUP: the configuration changed since start; offload keeps running the \
                     one it started with until a restart"
                );
            }
        }
    }
}
