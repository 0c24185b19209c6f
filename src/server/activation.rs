//! Listening sockets handed over by systemd (socket activation, `offload.socket`): systemd
//! holds the listening socket and passes it to each offload it starts (`LISTEN_FDS`,
//! `LISTEN_PID`). While offload restarts, connections wait in that socket's backlog instead
//! of being refused, and the ports may be privileged without offload being so.
//!
//! A passed socket stands in for the configured listener bound to the same address
//! (`server.listen`, `server.tls.listen`, `server.admin_listen`), so the config does not
//! change with the way offload is started. systemd's `ListenStream=8080` listens on `[::]:8080`
//! (both families): it stands in for `0.0.0.0:8080` too. A passed socket no listener is
//! configured for fails the start: connections to it would otherwise wait unanswered.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail};
use listenfd::ListenFd;
use tokio::net::TcpListener;
use tracing::info;

/// Whether this process's passed sockets were taken: each may have one owner only (a second
/// would close the first one's descriptor when done).
static TAKEN: AtomicBool = AtomicBool::new(false);

/// The descriptor of the first passed socket (`SD_LISTEN_FDS_START`).
const FIRST_FD: usize = 3;

/// The listening sockets passed to this process, until listeners take them.
pub(super) struct Listeners {
    passed: Vec<(SocketAddr, std::net::TcpListener)>,
}

impl Listeners {
    /// The sockets passed to this process, the first time this is called; none after that,
    /// nor when offload was not socket-activated.
    pub(super) fn passed() -> anyhow::Result<Listeners> {
        let mut fds = match TAKEN.swap(true, Ordering::SeqCst) {
            false => ListenFd::from_env(),
            true => ListenFd::empty(),
        };
        let mut passed = Vec::with_capacity(fds.len());
        for index in 0..fds.len() {
            let fd = FIRST_FD + index;
            let listener = fds
                .take_tcp_listener(index)
                .with_context(|| format!("socket activation: descriptor {fd}"))?
                .with_context(|| format!("socket activation: descriptor {fd} is not there"))?;
            let addr = listener
                .local_addr()
                .with_context(|| format!("socket activation: descriptor {fd}'s address"))?;
            passed.push((addr, listener));
        }
        Ok(Listeners { passed })
    }

    /// A listener on `addr` for the config key `key`: the passed socket listening there, or
    /// else one bound now.
    pub(super) async fn bind(
        &mut self,
        key: &str,
        addr: SocketAddr,
    ) -> anyhow::Result<TcpListener> {
        let Some(index) = self
            .passed
            .iter()
            .position(|(on, _)| stands_in_for(*on, addr))
        else {
            return TcpListener::bind(addr)
                .await
                .with_context(|| format!("{key}: binding {addr}"));
        };
        let (on, listener) = self.passed.swap_remove(index);
        listener
            .set_nonblocking(true)
            .and_then(|()| TcpListener::from_std(listener))
            .with_context(|| format!("{key}: taking the socket systemd passed on {on}"))
            .inspect(|_| info!(key, listen = %on, "listening on a socket passed by systemd"))
    }

    /// [`Listeners::bind`] when the config key `key` sets an address.
    pub(super) async fn bind_if_set(
        &mut self,
        key: &str,
        addr: Option<SocketAddr>,
    ) -> anyhow::Result<Option<TcpListener>> {
        match addr {
            Some(addr) => self.bind(key, addr).await.map(Some),
            None => Ok(None),
        }
    }

    /// Fails when a passed socket is left that no listener took.
    pub(super) fn all_taken(&self) -> anyhow::Result<()> {
        if let Some((on, _)) = self.passed.first() {
            bail!(
                "socket activation: systemd passed a socket on {on}, but none of server.listen, \
                 server.tls.listen and server.admin_listen is that address"
            );
        }
        Ok(())
    }
}

/// Whether a passed socket listening on `on` can serve as the listener configured on
/// `configured`: the same address, or the same port on any address of either family.
fn stands_in_for(on: SocketAddr, configured: SocketAddr) -> bool {
    on == configured
        || (on.port() == configured.port()
            && on.ip().is_unspecified()
            && configured.ip().is_unspecified())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("literal address")
    }

    #[test]
    fn a_passed_socket_stands_in_for_its_own_address() {
        assert!(stands_in_for(
            addr("127.0.0.1:8080"),
            addr("127.0.0.1:8080")
        ));
        assert!(stands_in_for(addr("[::1]:8080"), addr("[::1]:8080")));
        assert!(!stands_in_for(
            addr("127.0.0.1:8080"),
            addr("127.0.0.1:8081")
        ));
        assert!(!stands_in_for(
            addr("127.0.0.1:8080"),
            addr("127.0.0.2:8080")
        ));
    }

    #[test]
    fn any_address_stands_in_for_any_address_of_either_family() {
        // systemd's ListenStream=8080 listens on [::]:8080, for IPv4 clients too.
        assert!(stands_in_for(addr("[::]:8080"), addr("0.0.0.0:8080")));
        assert!(stands_in_for(addr("0.0.0.0:8080"), addr("[::]:8080")));
        assert!(!stands_in_for(addr("[::]:8080"), addr("0.0.0.0:9090")));
        // A socket on one address does not serve a listener meant for all of them, nor the
        // other way round: clients would be missed, or served where they should not be.
        assert!(!stands_in_for(addr("127.0.0.1:8080"), addr("0.0.0.0:8080")));
        assert!(!stands_in_for(addr("[::]:9090"), addr("127.0.0.1:9090")));
    }
}
