//! `server.proxy_protocol`: the PROXY protocol header (HAProxy's, v1 text or v2 binary) that
//! a TCP load balancer (AWS NLB, haproxy in TCP mode) puts before each connection's bytes, so
//! that the proxy learns the client's address, as nginx's `listen … proxy_protocol`.
//!
//! The header is peeked at, parsed (the `ppp` crate) and then read off exactly: what follows
//! it (a TLS handshake, a request) stays in the socket for the layer above. A load balancer
//! sends the header in its connection's first segment; bytes that come in pieces are waited
//! for a little at a time, within `server.header_read_timeout`.

use std::net::SocketAddr;
use std::time::Duration;

use ppp::{HeaderResult, PartialResult, v1, v2};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The longest header: v1's is at most 107 bytes; v2's 16 bytes and its addresses (at most
/// 216, for Unix sockets) and TLVs, which some load balancers fill (AWS: the VPC endpoint):
/// 1 KiB is ample, as nginx reads at most 4 KiB less what it leaves the request.
const MAX_HEADER: usize = 1024;

/// How long to wait before looking again at a header that came in part, at first; each
/// wait doubles, up to [`PIECE_WAIT_MAX`]. The bytes are only peeked (they stay for the
/// parser), so the socket stays readable and there is nothing to wait on but time: a
/// connection that sent one byte would otherwise be looked at 200 times a second.
const PIECE_WAIT: Duration = Duration::from_millis(5);
const PIECE_WAIT_MAX: Duration = Duration::from_millis(200);

/// The longest v1 header, `\r\n` included (the spec's 107 bytes).
const V1_MAX: usize = 107;

/// Reads the PROXY header off `stream` and returns the client's address it names: the
/// source of a `PROXY` command, `peer` itself for a `LOCAL` command or v1's `UNKNOWN` (the
/// load balancer's own health checks). An error (to close the connection with) when the
/// connection does not begin with a valid header.
pub(super) async fn read_header(
    stream: &mut TcpStream,
    peer: SocketAddr,
) -> Result<SocketAddr, String> {
    let mut buf = vec![0u8; MAX_HEADER];
    let mut wait = PIECE_WAIT;
    loop {
        let seen = stream
            .peek(&mut buf)
            .await
            .map_err(|e| format!("reading the PROXY header: {e}"))?;
        if seen == 0 {
            return Err("closed before a PROXY header".into());
        }
        let header = HeaderResult::parse(&buf[..seen]);
        if header.is_incomplete() || v1_unfinished(&buf[..seen]) {
            if seen == buf.len() {
                return Err(format!("no PROXY header within {MAX_HEADER} bytes"));
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(PIECE_WAIT_MAX);
            continue;
        }
        let (length, client) = match header {
            HeaderResult::V1(Ok(h)) => (h.header.len(), v1_client(&h.addresses)),
            HeaderResult::V2(Ok(h)) => (h.len(), v2_client(&h)),
            HeaderResult::V1(Err(e)) => return Err(format!("no valid PROXY header: {e}")),
            HeaderResult::V2(Err(e)) => return Err(format!("no valid PROXY header: {e}")),
        };
        stream
            .read_exact(&mut buf[..length])
            .await
            .map_err(|e| format!("reading the PROXY header: {e}"))?;
        return Ok(client.unwrap_or(peer));
    }
}

/// A v1 header still on its way: `PROXY ` and no line end yet, within the longest a v1
/// header may be. The parser judges a line cut after the source port's space (an empty
/// destination port) invalid rather than incomplete.
fn v1_unfinished(seen: &[u8]) -> bool {
    seen.starts_with(b"PROXY ")
        && seen.len() < V1_MAX
        && !seen.windows(2).any(|pair| pair == b"\r\n")
}

fn v1_client(addresses: &v1::Addresses) -> Option<SocketAddr> {
    match addresses {
        v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v1::Addresses::Unknown => None,
    }
}

fn v2_client(header: &v2::Header<'_>) -> Option<SocketAddr> {
    if header.command == v2::Command::Local {
        return None;
    }
    match header.addresses {
        v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v2::Addresses::Unix(_) | v2::Addresses::Unspecified => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// A connection to a local listener on which `sent` is written in `pieces`; the server
    /// side's header, and what it reads after it.
    async fn server_reads(pieces: &[&[u8]]) -> (Result<SocketAddr, String>, Vec<u8>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let pieces: Vec<Vec<u8>> = pieces.iter().map(|p| p.to_vec()).collect();
        let client = tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            for piece in pieces {
                stream.write_all(&piece).await.expect("write");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            stream.shutdown().await.expect("shutdown");
        });
        let (mut stream, peer) = listener.accept().await.expect("accept");
        let header = read_header(&mut stream, peer).await;
        let mut rest = Vec::new();
        if header.is_ok() {
            stream.read_to_end(&mut rest).await.expect("rest");
        }
        client.await.expect("client");
        (header, rest)
    }

    #[tokio::test]
    async fn v1_names_the_client_and_leaves_the_request() {
        let (client, rest) =
            server_reads(&[b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\r\nGET / HTTP/1.1\r\n"])
                .await;
        assert_eq!(client, Ok("203.0.113.7:51234".parse().unwrap()));
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");
        let (client, _) = server_reads(&[b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 80\r\n"]).await;
        assert_eq!(client, Ok("[2001:db8::7]:40000".parse().unwrap()));
    }

    #[tokio::test]
    async fn a_header_in_pieces_is_waited_for() {
        let (client, rest) =
            server_reads(&[b"PROXY TCP4 203.0.", b"113.7 10.0.0.1 5 80\r\nX"]).await;
        assert_eq!(client, Ok("203.0.113.7:5".parse().unwrap()));
        assert_eq!(rest, b"X");
        // Cut after the source port's space, where the parser saw an empty destination
        // port, and in every other place.
        let whole = b"PROXY TCP4 203.0.113.7 10.0.0.1 5 80\r\nX";
        for cut in [33, 1, 6, 20, 34, 36, 37] {
            let (first, second) = whole.split_at(cut);
            let (client, rest) = server_reads(&[first, second]).await;
            assert_eq!(client, Ok("203.0.113.7:5".parse().unwrap()), "cut at {cut}");
            assert_eq!(rest, b"X", "cut at {cut}");
        }
    }

    #[tokio::test]
    async fn v2_names_the_client_and_local_is_the_peer() {
        let addresses: v2::Addresses = (
            "198.51.100.9:6000".parse::<SocketAddr>().unwrap(),
            "10.0.0.1:443".parse::<SocketAddr>().unwrap(),
        )
            .into();
        let header = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            addresses,
        )
        .write_tlv(v2::Type::NoOp, b"padding")
        .expect("tlv")
        .build()
        .expect("header");
        let mut sent = header.clone();
        sent.extend_from_slice(b"\x16\x03\x01");
        let (client, rest) = server_reads(&[&sent]).await;
        assert_eq!(client, Ok("198.51.100.9:6000".parse().unwrap()));
        assert_eq!(
            rest, b"\x16\x03\x01",
            "the TLS handshake stays for the layer above"
        );

        let local = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Local,
            v2::Protocol::Unspecified,
            v2::Addresses::Unspecified,
        )
        .build()
        .expect("header");
        let (client, _) = server_reads(&[&local]).await;
        let client = client.expect("a LOCAL header");
        assert!(client.ip().is_loopback(), "the peer itself: {client}");
    }

    #[tokio::test]
    async fn anything_else_is_refused() {
        for sent in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"PROXY TCP4 not-an-ip 10.0.0.1 1 2\r\n",
            b"",
        ] {
            let (client, _) = server_reads(&[sent]).await;
            assert!(
                client.is_err(),
                "{:?}: {client:?}",
                String::from_utf8_lossy(sent)
            );
        }
        // A v2 header declaring 2,000 bytes of addresses: past the bound, not waited for.
        let mut long = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x07\xd0".to_vec();
        long.extend_from_slice(&[0; 2000]);
        let (client, _) = server_reads(&[&long]).await;
        assert_eq!(client, Err("no PROXY header within 1024 bytes".to_string()));
    }
}
