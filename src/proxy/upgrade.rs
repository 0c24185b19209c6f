//! Protocol upgrades (WebSocket): once both sides switched, bytes are copied both ways
//! until either closes.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::debug;

/// Waits in the background for both upgrades to complete, then copies bytes both ways.
pub(super) fn tunnel(client: OnUpgrade, app: OnUpgrade) {
    tokio::spawn(async move {
        let (client, app) = match tokio::try_join!(client, app) {
            Ok(pair) => pair,
            Err(e) => {
                debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut app = TokioIo::new(app);
        match tokio::io::copy_bidirectional(&mut client, &mut app).await {
            Ok((to_app, to_client)) => debug!(to_app, to_client, "tunnel closed"),
            Err(e) => debug!(error = %e, "tunnel ended"),
        }
    });
}
