//! HTML: lol_html handlers for URL-valued attributes and for the raw text of `<style>`,
//! `<noscript>` (raw text to lol_html, as to a browser with scripting on) and `<script>`.
//!
//! Prose in ordinary text nodes is never touched: only attributes and these raw-text elements
//! are URL positions.

use std::borrow::Cow;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::{Bytes, BytesMut};
use lol_html::errors::{RewritingError, SelectorError};
use lol_html::html_content::{ContentType, TextChunk};
use lol_html::send::{ElementContentHandlers, HtmlRewriter, Settings};
use lol_html::{MemorySettings, OutputSink, Selector, bail_out};

use super::rewriter::Context;
use super::scan::{Scanner, Scratch, rewrite_once};

/// lol_html's own buffer limit (a single huge tag); beyond it the rest passes through unchanged.
const MAX_MEMORY: usize = 4 * 1024 * 1024;

/// Attributes whose values hold one URL, a srcset, or inline CSS.
const URL_ATTRIBUTES: [&str; 9] = [
    "src",
    "srcset",
    "data-srcset",
    "href",
    "poster",
    "data-src",
    "data-bg",
    "data-lazy-src",
    "style",
];

const META_IMAGES: [&str; 2] = [
    r#"meta[property^="og:image" i][content]"#,
    r#"meta[name^="twitter:image" i][content]"#,
];

/// Elements whose text is always scanned: CSS, JSON data, noscript markup.
const DATA_TEXT: [&str; 4] = [
    "style",
    "noscript",
    r#"script[type="application/json" i]"#,
    r#"script[type="application/ld+json" i]"#,
];

/// Inline JavaScript, scanned only when JavaScript rewriting is on.
const SCRIPT_TEXT: [&str; 5] = [
    "script:not([type])",
    r#"script[type="" i]"#,
    r#"script[type="text/javascript" i]"#,
    r#"script[type="application/javascript" i]"#,
    r#"script[type="module" i]"#,
];

/// The selectors, parsed once per configuration.
#[derive(Debug)]
pub(crate) struct Selectors {
    attributes: Vec<(&'static str, Selector)>,
    meta: Vec<Selector>,
    data_text: Vec<Selector>,
    script_text: Vec<Selector>,
}

impl Selectors {
    pub(crate) fn new() -> Result<Selectors, SelectorError> {
        let parse = |list: &[&str]| {
            list.iter()
                .map(|s| s.parse())
                .collect::<Result<Vec<Selector>, _>>()
        };
        let attributes = URL_ATTRIBUTES
            .iter()
            .map(|name| Ok((*name, format!("[{name}]").parse()?)))
            .collect::<Result<_, SelectorError>>()?;
        Ok(Selectors {
            attributes,
            meta: parse(&META_IMAGES)?,
            data_text: parse(&DATA_TEXT)?,
            script_text: parse(&SCRIPT_TEXT)?,
        })
    }
}

/// Where lol_html writes: shared with [`HtmlEngine`], which takes the bytes after each write.
struct SharedSink(Arc<Mutex<BytesMut>>);

impl OutputSink for SharedSink {
    fn handle_chunk(&mut self, chunk: &[u8]) {
        lock(&self.0).extend_from_slice(chunk);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The carry-over of the text node being scanned, shared by every text handler; the bail-out
/// handler flushes it.
///
/// One is enough: lol_html hands out text chunks in document order and ends each text node
/// (`last_in_text_node`) before the next one starts. But a chunk reaches the text handler of
/// every matching element open around it, not just the innermost, so [`text_handler`] scans
/// each chunk once, in whichever handler sees it first. Matching elements do nest: lol_html
/// parses what follows a start tag ending in an empty unquoted attribute (`<script type=>`) as
/// markup rather than raw text, so `<script type=><script>...</script>` is a script inside a
/// script.
#[derive(Default)]
struct TextState {
    scanner: Scanner,
    out: Vec<u8>,
}

/// Streams HTML through lol_html with the URL handlers.
pub(crate) struct HtmlEngine {
    /// None once lol_html bailed out (memory limit): the rest passes through unchanged.
    rewriter: Option<HtmlRewriter<'static, SharedSink>>,
    out: Arc<Mutex<BytesMut>>,
}

impl HtmlEngine {
    pub(crate) fn new(ctx: &Arc<Context>, javascript: bool) -> HtmlEngine {
        let out = Arc::new(Mutex::new(BytesMut::with_capacity(16 * 1024)));
        let settings = settings(ctx, javascript);
        let rewriter = HtmlRewriter::new(settings, SharedSink(out.clone()));
        HtmlEngine {
            rewriter: Some(rewriter),
            out,
        }
    }

    /// Rewrites one chunk; returns the output that is final so far.
    pub(crate) fn write(&mut self, chunk: &[u8]) -> Result<Bytes, RewritingError> {
        match self.rewriter.as_mut() {
            Some(rewriter) => {
                if let Err(e) = rewriter.write(chunk) {
                    self.bail(e)?;
                }
            }
            None => lock(&self.out).extend_from_slice(chunk),
        }
        Ok(self.take())
    }

    /// Ends the document; returns the last output.
    pub(crate) fn end(&mut self) -> Result<Bytes, RewritingError> {
        if let Some(rewriter) = self.rewriter.take()
            && let Err(e) = rewriter.end()
        {
            self.bail(e)?;
        }
        Ok(self.take())
    }

    /// A memory-limit error is a graceful bail-out (lol_html already flushed the input as-is);
    /// anything else is fatal.
    fn bail(&mut self, e: RewritingError) -> Result<(), RewritingError> {
        self.rewriter = None;
        match e {
            RewritingError::MemoryLimitExceeded(_) => {
                tracing::warn!(error = %e, "html rewriting gave up, passing the rest through");
                Ok(())
            }
            e => Err(e),
        }
    }

    fn take(&self) -> Bytes {
        lock(&self.out).split().freeze()
    }
}

fn settings(ctx: &Arc<Context>, javascript: bool) -> Settings<'static, '_> {
    let sel = &ctx.rules.selectors;
    let text = Arc::new(Mutex::new(TextState::default()));
    let scripts = if javascript {
        &sel.script_text[..]
    } else {
        &[]
    };
    let handlers = sel
        .attributes
        .iter()
        .map(|(name, selector)| (selector, attribute_handler(ctx, name)))
        .chain(
            sel.meta
                .iter()
                .map(|selector| (selector, attribute_handler(ctx, "content"))),
        )
        .chain(
            sel.data_text
                .iter()
                .chain(scripts)
                .map(|selector| (selector, text_handler(ctx, &text))),
        );
    let memory = MemorySettings::new()
        .with_max_allowed_memory_usage(MAX_MEMORY)
        .with_graceful_bail_out_on_memory_limit_exceeded(true);
    let settings = Settings::new_send()
        .with_strict(false)
        .with_memory_settings(memory);
    let settings = handlers.fold(settings, |settings, (selector, handler)| {
        settings.append_element_content_handler((Cow::Borrowed(selector), handler))
    });
    // Text withheld by the scanner (a URL split across chunks) must reach the output before
    // lol_html's raw flush of the rest.
    settings.append_bail_out_handler(bail_out!(move |_, bail_out| {
        let pending = lock(&text).scanner.take_pending();
        bail_out.append(&utf8(&pending), ContentType::Html);
    }))
}

fn attribute_handler(ctx: &Arc<Context>, name: &'static str) -> ElementContentHandlers<'static> {
    let ctx = ctx.clone();
    let mut scratch = Scratch::default();
    ElementContentHandlers::default().element(move |el: &mut lol_html::send::Element<'_, '_>| {
        let Some(value) = el.get_attribute(name) else {
            return Ok(());
        };
        let mut decide = |path: &str| ctx.map.public_url(path);
        if let Some(new) = rewrite_once(ctx.site(), &mut decide, &mut scratch, value.as_bytes())
            && let Err(e) = el.set_attribute(name, &utf8(&new))
        {
            tracing::debug!(error = %e, name, "cannot set attribute");
        }
        Ok(())
    })
}

fn text_handler(
    ctx: &Arc<Context>,
    state: &Arc<Mutex<TextState>>,
) -> ElementContentHandlers<'static> {
    let (ctx, state) = (ctx.clone(), state.clone());
    ElementContentHandlers::default().text(move |chunk: &mut TextChunk<'_>| {
        // Already scanned by the handler of another matching element around this text (only
        // these handlers touch text chunks, and they always replace them): feeding it again
        // would duplicate it in the carry-over and interleave the two outputs.
        if chunk.removed() {
            return Ok(());
        }
        let mut guard = lock(&state);
        let TextState { scanner, out } = &mut *guard;
        out.clear();
        let mut decide = |path: &str| ctx.map.public_url(path);
        scanner.feed(ctx.site(), &mut decide, chunk.as_str().as_bytes(), out);
        if chunk.last_in_text_node() {
            scanner.finish(ctx.site(), &mut decide, out);
        }
        // Raw text: written as is (ContentType::Html), never entity-escaped.
        chunk.replace(&utf8(out), ContentType::Html);
        Ok(())
    })
}

/// The scanner's output is UTF-8 when its input was (it cuts only at character boundaries and
/// inserts UTF-8 URLs); the lossy path is a guard, not an expected case. `from_utf8` first
/// because it validates far faster than the lossy iterator.
fn utf8(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}
