//! A bare TCP "app" that misbehaves on purpose: it reads one request head, then hands the
//! socket to the test's handler (answer garbage, never answer, die mid-response…). Also
//! serves as a listener that only counts connections (the "evil" host of SSRF tests).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

pub struct RawApp {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    /// Notified each time a request head has been read.
    pub request_seen: Arc<Notify>,
    task: JoinHandle<()>,
}

impl RawApp {
    /// Accepts connections on 127.0.0.1:0; for each, reads the request head and calls
    /// `handler(stream, head)`.
    pub async fn start<F, Fut>(handler: F) -> RawApp
    where
        F: Fn(TcpStream, String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("raw app binds");
        let addr = listener.local_addr().expect("raw app address");
        let connections = Arc::new(AtomicUsize::new(0));
        let request_seen = Arc::new(Notify::new());
        let handler = Arc::new(handler);
        let task = tokio::spawn({
            let connections = Arc::clone(&connections);
            let request_seen = Arc::clone(&request_seen);
            async move {
                while let Ok((mut stream, _)) = listener.accept().await {
                    connections.fetch_add(1, Ordering::SeqCst);
                    let handler = Arc::clone(&handler);
                    let request_seen = Arc::clone(&request_seen);
                    tokio::spawn(async move {
                        let Some(head) = read_head(&mut stream).await else {
                            return;
                        };
                        request_seen.notify_one();
                        handler(stream, head).await;
                    });
                }
            }
        });
        RawApp {
            addr,
            connections,
            request_seen,
            task,
        }
    }

    /// A listener that accepts and counts connections, and never answers.
    pub async fn counting() -> RawApp {
        RawApp::start(|stream, _| async move {
            // Hold the socket a moment so a client sees an accepted connection.
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            drop(stream);
        })
        .await
    }

    /// Answers every request on a connection with `hello`, chunked, and the trailer
    /// `x-checksum: 5d41402a`, whether it was asked for trailers or not (as many apps do).
    pub async fn with_trailers() -> RawApp {
        RawApp::start(|mut stream, _| async move {
            let answer =
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n\
                           5\r\nhello\r\n0\r\nx-checksum: 5d41402a\r\n\r\n";
            while stream.write_all(answer).await.is_ok() && read_head(&mut stream).await.is_some() {
            }
        })
        .await
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for RawApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What `stream` sends until it ends with `end` (an answer on a kept-alive connection),
/// each read within 5 s; panics if the peer closes first.
pub async fn read_until_ending(stream: &mut TcpStream, end: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    while !got.ends_with(end) {
        let mut buf = [0; 1024];
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf));
        let n = read.await.expect("more within 5 s").expect("read");
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    got
}

/// Reads up to the end of a request head (`\r\n\r\n`); `None` if the peer closed first.
pub async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > 1 << 20 {
            return None;
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}
