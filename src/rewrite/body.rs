//! The streaming body adapter: decoded chunks in, rewritten chunks out, one chunk at a time.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context as TaskContext, Poll, ready};

use bytes::{Bytes, BytesMut};
use futures_util::Stream;

use super::encoding::ByteStream;
use super::html::HtmlEngine;
use super::rewriter::Context;
use super::scan::Scanner;

/// What rewrites the decoded bytes.
pub(crate) enum Engine {
    Html(Box<HtmlEngine>),
    Text(TextEngine),
}

impl Engine {
    pub(crate) fn write(&mut self, chunk: &[u8]) -> io::Result<Bytes> {
        match self {
            Engine::Html(html) => Ok(html.write(chunk)),
            Engine::Text(text) => Ok(text.write(chunk)),
        }
    }

    pub(crate) fn end(&mut self) -> io::Result<Bytes> {
        match self {
            Engine::Html(html) => Ok(html.end()),
            Engine::Text(text) => Ok(text.end()),
        }
    }
}

/// CSS, JSON, XML, JavaScript and text: the scanner alone.
pub(crate) struct TextEngine {
    ctx: Arc<Context>,
    scanner: Scanner,
    out: BytesMut,
}

impl TextEngine {
    pub(crate) fn new(ctx: Arc<Context>) -> TextEngine {
        TextEngine {
            ctx,
            scanner: Scanner::default(),
            out: BytesMut::new(),
        }
    }

    pub(crate) fn write(&mut self, chunk: &[u8]) -> Bytes {
        let ctx = &self.ctx;
        let mut decide = |path: &str, url: &mut String| ctx.map.public_url(path, url);
        self.scanner
            .feed(ctx.site(), &mut decide, chunk, &mut self.out);
        self.out.split().freeze()
    }

    pub(crate) fn end(&mut self) -> Bytes {
        let ctx = &self.ctx;
        let mut decide = |path: &str, url: &mut String| ctx.map.public_url(path, url);
        self.scanner.finish(ctx.site(), &mut decide, &mut self.out);
        self.out.split().freeze()
    }
}

/// The rewriting stage of the body pipeline.
pub(crate) struct Rewritten {
    input: ByteStream,
    engine: Engine,
    done: bool,
}

impl Rewritten {
    pub(crate) fn new(input: ByteStream, engine: Engine) -> Rewritten {
        Rewritten {
            input,
            engine,
            done: false,
        }
    }
}

impl Stream for Rewritten {
    type Item = io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        while !this.done {
            let out = match ready!(this.input.as_mut().poll_next(cx)) {
                Some(Ok(chunk)) => this.engine.write(&chunk),
                Some(Err(e)) => Err(e),
                None => {
                    this.done = true;
                    this.engine.end()
                }
            };
            match out {
                Ok(bytes) if bytes.is_empty() => continue,
                Err(e) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                out => return Poll::Ready(Some(out)),
            }
        }
        Poll::Ready(None)
    }
}

/// Makes a `Send` stream `Sync` (as [`crate::body::Body`] requires) without locking: polling
/// takes `&mut self`, so the mutex is only ever reached through `get_mut`.
pub(crate) struct SyncStream(Mutex<ByteStream>);

impl SyncStream {
    pub(crate) fn new(inner: ByteStream) -> SyncStream {
        SyncStream(Mutex::new(inner))
    }
}

impl Stream for SyncStream {
    type Item = io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let inner = self
            .get_mut()
            .0
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        inner.as_mut().poll_next(cx)
    }
}
