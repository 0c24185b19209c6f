//! Parts failing under the proxy: an app that dies mid-answer, answers garbage or never
//! answers; a full disk under the fs store; SIGTERM with a request in flight.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use offload::store::{FsStore, PutOptions, Store, StoreError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::data;
use crate::support::process::OffloadProcess;
use crate::support::raw::{RawApp, read_head};
use crate::support::{Proxy, client, config_for};

/// An app that misbehaves by path: `/die-cl` and `/die-chunked` send a head and part of the
/// body, then close; `/garbage` answers something that is not HTTP; `/huge-head` sends an
/// endless head; `/close` closes without a word; `/hang` never answers; anything else
/// answers `hello`.
async fn bad_app() -> RawApp {
    RawApp::start(|mut stream, mut head| async move {
        // Requests on one connection are answered in turn until one of them ends it.
        loop {
            let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
            if !misbehave(&mut stream, &target).await {
                return;
            }
            match read_head(&mut stream).await {
                Some(next) => head = next,
                None => return,
            }
        }
    })
    .await
}

/// Answers (or not) one request for `target`; whether the connection lives on.
async fn misbehave(stream: &mut TcpStream, target: &str) -> bool {
    match target {
        "/die-cl" => {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
                .await;
            let _ = stream.write_all(&[b'x'; 65536]).await;
        }
        "/die-chunked" => {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                .await;
            let _ = stream.write_all(b"10000\r\n").await;
            let _ = stream.write_all(&[b'x'; 65536]).await;
            let _ = stream.write_all(b"\r\n100\r\nxx").await;
        }
        "/garbage" => {
            let _ = stream
                .write_all(b"SSH-2.0-OpenSSH_9.2\r\n\r\nnot http at all")
                .await;
        }
        "/bad-length" => {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 12abc\r\n\r\nhello")
                .await;
        }
        "/huge-head" => {
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\n").await;
            let line = format!("X-Filler: {}\r\n", "f".repeat(1000));
            for _ in 0..4096 {
                if stream.write_all(line.as_bytes()).await.is_err() {
                    break;
                }
            }
        }
        "/close" => {}
        "/hang" => {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        _ => {
            return stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
                .await
                .is_ok();
        }
    }
    false
}

async fn proxy_for(app: &RawApp) -> Proxy {
    let mut config = config_for(app.addr);
    config.upstream.response_timeout = Duration::from_millis(700);
    Proxy::start(config).await
}

async fn assert_serves_hello(proxy: &Proxy) {
    let resp = client().get(proxy.url("/ok")).send().await.expect("answer");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.expect("body"), "hello");
}

#[tokio::test]
async fn app_dying_mid_response_truncates_visibly_and_the_proxy_carries_on() {
    let app = bad_app().await;
    let proxy = proxy_for(&app).await;
    for path in ["/die-cl", "/die-chunked"] {
        let started = Instant::now();
        let resp = client().get(proxy.url(path)).send().await.expect("head");
        assert_eq!(resp.status(), 200, "{path}");
        let body = tokio::time::timeout(Duration::from_secs(10), resp.bytes()).await;
        let body = body.unwrap_or_else(|_| panic!("{path}: body hangs"));
        assert!(
            body.is_err(),
            "{path}: a truncated body was delivered as complete ({} bytes)",
            body.map(|b| b.len()).unwrap_or(0)
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_serves_hello(&proxy).await;
    }

    // Over a raw socket: the chunked answer never gets its terminating chunk.
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(b"GET /die-chunked HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("request");
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "connection left open after the app died");
    assert!(out.starts_with(b"HTTP/1.1 200"));
    assert!(
        !out.ends_with(b"0\r\n\r\n"),
        "the body was terminated cleanly"
    );
}

#[tokio::test]
async fn garbage_from_the_app_is_502_with_a_short_body() {
    let app = bad_app().await;
    let proxy = proxy_for(&app).await;
    for path in ["/garbage", "/bad-length", "/huge-head", "/close"] {
        let started = Instant::now();
        let resp = client().get(proxy.url(path)).send().await.expect("answer");
        assert_eq!(resp.status(), 502, "{path}");
        assert_eq!(
            resp.headers()["content-type"],
            "text/plain; charset=utf-8",
            "{path}"
        );
        let body = resp.text().await.expect("body");
        assert!(body.starts_with("upstream failed: "), "{path}: {body:?}");
        assert!(body.len() < 200 && body.ends_with('\n'), "{path}: {body:?}");
        assert!(started.elapsed() < Duration::from_secs(10), "{path}");
    }
    assert_serves_hello(&proxy).await;
}

#[tokio::test]
async fn an_app_that_never_answers_is_504_within_the_timeout() {
    let app = bad_app().await;
    let proxy = proxy_for(&app).await;
    let started = Instant::now();
    let resp = client()
        .get(proxy.url("/hang"))
        .send()
        .await
        .expect("answer");
    let took = started.elapsed();
    assert_eq!(resp.status(), 504);
    assert_eq!(
        resp.text().await.expect("body"),
        "upstream timed out after 700ms\n"
    );
    assert!(took >= Duration::from_millis(700), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_serves_hello(&proxy).await;
}

/// Unmounts on drop.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Mounts a tmpfs of `size` on `dir`, or `None` when not permitted here.
fn mount_tmpfs(dir: &Path, size: &str) -> Option<Mounted> {
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .stderr(std::process::Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() => Some(Mounted(dir.to_path_buf())),
        _ => None,
    }
}

/// Free bytes on the file system holding `dir`.
fn free_bytes(dir: &Path) -> u64 {
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).expect("path");
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a zeroed struct statvfs that the call fills.
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
    assert_eq!(rc, 0, "statvfs");
    stat.f_bavail as u64 * stat.f_frsize as u64
}

/// Every file under `dir`, with its size.
fn files_under(dir: &Path) -> Vec<(String, u64)> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let len = e.metadata().map(|m| m.len()).unwrap_or(0);
            (e.path().display().to_string(), len)
        })
        .collect()
}

#[tokio::test]
async fn fs_store_on_a_full_disk_fails_whole_and_leaves_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(_mounted) = mount_tmpfs(dir.path(), "8m") else {
        eprintln!("SKIPPED fs_store_on_a_full_disk…: cannot mount a tmpfs here (not root?)");
        return;
    };
    let store = FsStore::new(dir.path(), "/_offload/", None).expect("store");

    // Larger than the disk.
    let (body, _) = data::body(7, 16 << 20, false);
    let err = store
        .put("big/too-large.bin", body, PutOptions::default())
        .await
        .expect_err("a 16 MiB put on an 8 MiB disk");
    assert!(
        matches!(&err, StoreError::Io(e) if e.raw_os_error() == Some(libc::ENOSPC)),
        "{err:?}"
    );
    assert!(
        store
            .head("big/too-large.bin")
            .await
            .expect("head")
            .is_none()
    );
    assert!(
        files_under(dir.path()).is_empty(),
        "{:?}",
        files_under(dir.path())
    );

    // The object fits to the last page, its sidecar does not.
    let free = free_bytes(dir.path());
    let (body, _) = data::body(8, free, false);
    let err = store
        .put("exact/fit.bin", body, PutOptions::default())
        .await
        .expect_err("no room left for the sidecar");
    assert!(
        matches!(&err, StoreError::Io(e) if e.raw_os_error() == Some(libc::ENOSPC)),
        "{err:?}"
    );
    assert!(store.head("exact/fit.bin").await.expect("head").is_none());
    assert!(
        files_under(dir.path()).is_empty(),
        "{:?}",
        files_under(dir.path())
    );

    // Space is back: the store works again.
    let (body, expected) = data::body(9, 1 << 20, false);
    let info = store
        .put("after/ok.bin", body, PutOptions::default())
        .await
        .expect("put after the failures");
    assert_eq!(info.sha256.as_deref(), Some(expected.hex().as_str()));
    let got = store
        .get("after/ok.bin", None)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(
        data::digest(got.body).await.expect("read").1,
        expected.hex()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_slow_request_finish_refuses_new_ones_and_exits_0() {
    let app = RawApp::start(|mut stream, _| async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nfinished!")
            .await;
    })
    .await;
    let mut process =
        OffloadProcess::start(app.addr, &[], &[("OFFLOAD_SERVER_SHUTDOWN_GRACE", "20s")]).await;
    let url = format!("http://{}/slow", process.addr);
    let in_flight = tokio::spawn(async move {
        let resp = client().get(url).send().await?;
        let status = resp.status();
        resp.text().await.map(|body| (status, body))
    });
    tokio::time::timeout(Duration::from_secs(10), app.request_seen.notified())
        .await
        .expect("the request reached the app");
    let signalled = Instant::now();
    process.signal(libc::SIGTERM);

    // New connections are refused once the listener is closed.
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(process.addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = in_flight.await.expect("task").expect("in-flight request");
    assert_eq!((status.as_u16(), body.as_str()), (200, "finished!"));
    let exit = process
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("offload exits after its last request");
    assert_eq!(exit.code(), Some(0), "{}", process.logs());
    assert!(signalled.elapsed() < Duration::from_secs(15));
    assert!(
        process.logs().contains("shutting down"),
        "{}",
        process.logs()
    );
}
