//! A configurable web app for the asset and rewriting tests (hyper, HTTP/1.1): each path
//! answers what the test set for it ([`Page`]), anything else `404 text/plain "not found"`;
//! every request is recorded (method and raw target) so tests can count what reached the app.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use offload::body::{self, Body};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What one path answers.
#[derive(Clone)]
pub struct Page {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// Sent as a chunked stream of this many bytes per chunk (no Content-Length).
    pub chunked: Option<usize>,
    /// The body comes from this channel instead (taken by the first request).
    stream: Option<Arc<Mutex<Option<mpsc::Receiver<Bytes>>>>>,
    /// Served to requests with this Host only, as a name-based virtual host (404 to others).
    host: Option<String>,
}

impl Page {
    pub fn new(status: u16, content_type: &str, body: impl Into<Bytes>) -> Page {
        Page {
            status,
            headers: vec![("content-type".into(), content_type.into())],
            body: body.into(),
            chunked: None,
            stream: None,
            host: None,
        }
    }

    pub fn html(body: impl Into<Bytes>) -> Page {
        Page::new(200, "text/html; charset=utf-8", body)
    }

    pub fn header(mut self, name: &str, value: &str) -> Page {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn only_for_host(mut self, host: &str) -> Page {
        self.host = Some(host.into());
        self
    }

    pub fn chunked(mut self, chunk: usize) -> Page {
        self.chunked = Some(chunk);
        self
    }

    /// A page whose body the test sends through the returned channel, chunk by chunk.
    pub fn streamed(status: u16, content_type: &str) -> (Page, mpsc::Sender<Bytes>) {
        let (tx, rx) = mpsc::channel(4);
        let mut page = Page::new(status, content_type, Bytes::new());
        page.stream = Some(Arc::new(Mutex::new(Some(rx))));
        (page, tx)
    }
}

#[derive(Default)]
struct State {
    pages: Mutex<HashMap<String, Page>>,
    log: Mutex<Vec<(String, String)>>,
}

pub struct Site {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
    stopped: CancellationToken,
}

impl Site {
    pub async fn start() -> Site {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("site binds");
        let addr = listener.local_addr().expect("site address");
        let state = Arc::new(State::default());
        let stopped = CancellationToken::new();
        let (st, token) = (state.clone(), stopped.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (st, token) = (st.clone(), token.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(st.clone(), req));
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = token.cancelled() => {}
                    }
                });
            }
        });
        Site {
            addr,
            state,
            task,
            stopped,
        }
    }

    /// Sets what `path` answers.
    pub fn set(&self, path: &str, page: Page) {
        self.state
            .pages
            .lock()
            .unwrap()
            .insert(path.to_string(), page);
    }

    /// Every request so far: (method, raw target).
    pub fn log(&self) -> Vec<(String, String)> {
        self.state.log.lock().unwrap().clone()
    }

    /// How many `method` requests for exactly `target` reached the app.
    pub fn count(&self, method: &str, target: &str) -> usize {
        self.log()
            .iter()
            .filter(|(m, t)| m == method && t == target)
            .count()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Polls until `method target` has reached the app at least once (bounded).
    pub async fn wait_for(&self, method: &str, target: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while self.count(method, target) == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{method} {target} never reached the app; log: {:?}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.task.abort();
        self.stopped.cancel();
    }
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let target = req
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_string(), |p| p.to_string());
    let (head, mut request_body) = req.into_parts();
    // The whole request is read before the answer, as PHP reads a form before its script
    // runs: an upload's answer comes after the upload.
    while let Some(Ok(_)) = http_body_util::BodyExt::frame(&mut request_body).await {}
    let req = Request::from_parts(head, ());
    state
        .log
        .lock()
        .unwrap()
        .push((req.method().to_string(), target));
    let host = req.headers().get(http::header::HOST).cloned();
    let page = state
        .pages
        .lock()
        .unwrap()
        .get(req.uri().path())
        .filter(|page| {
            page.host
                .as_deref()
                .is_none_or(|h| host.as_ref().is_some_and(|v| v == h))
        })
        .cloned();
    let Some(page) = page else {
        let mut r = Response::new(body::full("not found"));
        *r.status_mut() = StatusCode::NOT_FOUND;
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
        return Ok(r);
    };
    let body = if let Some(slot) = &page.stream {
        let rx = slot.lock().unwrap().take();
        match rx {
            Some(rx) => body::from_stream(futures_util::stream::unfold(rx, |mut rx| async {
                let chunk = rx.recv().await?;
                Some((Ok::<_, std::io::Error>(chunk), rx))
            })),
            None => body::empty(),
        }
    } else if let Some(size) = page.chunked {
        let chunks: Vec<Result<Bytes, std::io::Error>> = page
            .body
            .chunks(size.max(1))
            .map(|c| Ok(page.body.slice_ref(c)))
            .collect();
        body::from_stream(futures_util::stream::iter(chunks))
    } else {
        body::full(page.body.clone())
    };
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::from_u16(page.status).expect("status");
    for (k, v) in &page.headers {
        r.headers_mut().append(
            HeaderName::from_bytes(k.as_bytes()).expect("header name"),
            HeaderValue::from_str(v).expect("header value"),
        );
    }
    if page.chunked.is_none() && page.stream.is_none() {
        r.headers_mut().insert(
            http::header::CONTENT_LENGTH,
            HeaderValue::from(page.body.len()),
        );
    }
    Ok(r)
}
