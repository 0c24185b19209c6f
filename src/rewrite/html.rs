//! HTML: a streaming tokenizer that finds the URL positions of a page and rewrites them in
//! place, leaving every other byte as it was.
//!
//! URL positions are the values of URL attributes ([`URL_ATTRIBUTES`], and `content` of
//! `og:image` / `twitter:image` metas) on any element (in those that hold one URL, as `src`
//! and `href`, only at the value's start), and the raw text of `<style>`,
//! `<noscript>` (raw text, as to a browser with scripting on), JSON `<script>`s and, when
//! enabled, JavaScript ones. Prose, comments, `<textarea>`/`<title>` text and other scripts
//! are never touched.
//!
//! To know which is which the engine follows the states of the WHATWG tokenizer that decide
//! where markup starts and ends: tags and their quoted attribute values, comments (`-->`,
//! `--!>`, `<!-->`), bogus comments and doctypes, the raw-text, RCDATA and script-data
//! elements with the script escape states (`<!--` … `<script>` … `-->`), `<plaintext>`, and
//! CDATA sections and the absence of raw text inside `<svg>`/`<math>`. It does not build a
//! tree; the only tree state kept is whether foreign content is open.
//!
//! Why not lol_html, which did this job first: with the handlers this needs (attribute
//! selectors match on every start tag) its parser alone ran at ~370 MiB/s on the benchmark
//! page, as much CPU per page as nginx's whole `sub_filter` request, before a single URL was
//! rewritten. This tokenizer jumps between markup with memchr and touches only the tags, and
//! the test suite checks it against lol_html's output on generated documents.

mod tag;

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use memchr::memmem;

use super::rewriter::Context;
use super::scan::{Out, Scanner, Scratch, rewrite_into, rewrite_url_into};
use tag::{Attr, Tag, is_space};

/// The longest tag held while waiting for its end (a `data:` URL in a `src` can be long);
/// beyond it the rest of the page passes through unchanged.
const MAX_TAG: usize = 4 * 1024 * 1024;

/// Attributes whose values hold one URL, a srcset, or inline CSS: those of HTML (with
/// `<link rel=preload>`'s `imagesrcset`, `<body>`/`<table>`'s `background`, SVG's
/// `xlink:href`) and those lazy loaders fill.
const URL_ATTRIBUTES: [&[u8]; 12] = [
    b"src",
    b"srcset",
    b"data-srcset",
    b"imagesrcset",
    b"href",
    b"xlink:href",
    b"poster",
    b"background",
    b"data-src",
    b"data-bg",
    b"data-lazy-src",
    b"style",
];

/// `<script type>` values whose text is JSON: always scanned.
const JSON_SCRIPTS: [&[u8]; 2] = [b"application/json", b"application/ld+json"];
/// `<script type>` values whose text is JavaScript: scanned only when enabled (a script
/// without `type` is JavaScript too).
const JS_SCRIPTS: [&[u8]; 4] = [
    b"",
    b"text/javascript",
    b"application/javascript",
    b"module",
];

/// Start tags that close open `<svg>`/`<math>` content and are then parsed as HTML
/// ("parsing main inforeign", §13.2.6.5); `<font>` only with color, face or size.
const FOREIGN_BREAKOUT: [&[u8]; 45] = [
    b"b",
    b"big",
    b"blockquote",
    b"body",
    b"br",
    b"center",
    b"code",
    b"dd",
    b"div",
    b"dl",
    b"dt",
    b"em",
    b"embed",
    b"h1",
    b"h2",
    b"h3",
    b"h4",
    b"h5",
    b"h6",
    b"head",
    b"hr",
    b"i",
    b"img",
    b"li",
    b"listing",
    b"menu",
    b"meta",
    b"nobr",
    b"ol",
    b"p",
    b"pre",
    b"ruby",
    b"s",
    b"small",
    b"span",
    b"strong",
    b"strike",
    b"sub",
    b"sup",
    b"table",
    b"tt",
    b"u",
    b"ul",
    b"var",
    b"font",
];

/// Where the tokenizer is between two calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Data,
    /// After `<!--`; `start`: nothing of the comment read yet (`<!-->` and `<!--->` end it).
    Comment {
        start: bool,
    },
    /// `<!doctype …>`, `<?…>`, `</3…>` and the like: up to the next `>`.
    Bogus,
    /// `<![CDATA[` in foreign content, up to `]]>`.
    Cdata,
    /// The text of a raw-text or RCDATA element, up to `</name`; `scan`: a URL position.
    RawText {
        name: &'static [u8],
        scan: bool,
    },
    /// The text of a `<script>`, with the tokenizer's escape states.
    Script {
        scan: bool,
        escape: Escape,
    },
    /// After `<plaintext>`: everything is text.
    Plaintext,
}

/// Script data escape states (§13.2.5.4 to §13.2.5.31, collapsed to what moves the end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    /// `</script>` ends the script; `<!--` escapes.
    None,
    /// After `<!--`: `-->` unescapes, `<script` double-escapes, `</script>` ends.
    Escaped,
    /// After `<!--` … `<script`: `</script>` goes back to escaped, `-->` unescapes.
    Double,
}

/// Streams HTML, rewriting the URLs at URL positions.
pub(crate) struct HtmlEngine {
    ctx: Arc<Context>,
    javascript: bool,
    state: State,
    /// Input taken in but not yet written out: an unfinished tag or end marker.
    pending: Vec<u8>,
    /// The raw text being scanned (style, noscript, a scanned script).
    text: Scanner,
    scratch: Scratch,
    attrs: Vec<Attr>,
    /// The rewritten value of the attribute at hand.
    value: Vec<u8>,
    /// Open `<svg>` and `<math>` elements (foreign content: no raw-text elements, CDATA).
    foreign: u32,
    /// Gave up on a tag over [`MAX_TAG`]: the rest passes unchanged.
    passthrough: bool,
    out: BytesMut,
}

impl HtmlEngine {
    pub(crate) fn new(ctx: &Arc<Context>, javascript: bool) -> HtmlEngine {
        HtmlEngine {
            ctx: ctx.clone(),
            javascript,
            state: State::Data,
            pending: Vec::new(),
            text: Scanner::default(),
            scratch: Scratch::default(),
            attrs: Vec::new(),
            value: Vec::new(),
            foreign: 0,
            passthrough: false,
            out: BytesMut::new(),
        }
    }

    /// Rewrites one chunk; returns the output that is final so far.
    pub(crate) fn write(&mut self, chunk: &[u8]) -> Bytes {
        // Room for the chunk and some longer URLs; one allocation per chunk in the usual case.
        self.out.reserve(chunk.len() + chunk.len() / 4 + 256);
        if self.passthrough {
            self.out.extend_from_slice(chunk);
            return self.out.split().freeze();
        }
        let rest = self.settle_pending(chunk);
        if self.passthrough {
            self.out.extend_from_slice(rest);
        } else if self.pending.is_empty() {
            let done = self.run(rest, false);
            self.pending.extend_from_slice(&rest[done..]);
        }
        self.out.split().freeze()
    }

    /// Completes the held input (usually a tag cut by the end of the last chunk) with as
    /// little of `chunk` as it takes, rather than copying the whole chunk behind it; returns
    /// the part of `chunk` still to tokenize (all of it is held when the held input still
    /// cannot settle).
    fn settle_pending<'c>(&mut self, mut chunk: &'c [u8]) -> &'c [u8] {
        while !self.pending.is_empty() && !chunk.is_empty() {
            let held = self.pending.len();
            let take = chunk.len().min(held.max(256));
            let mut buf = std::mem::take(&mut self.pending);
            buf.extend_from_slice(&chunk[..take]);
            let done = self.run(&buf, false);
            if done >= held {
                // Settled into the new bytes: go on from there in the chunk itself.
                buf.clear();
                self.pending = buf;
                return &chunk[done - held..];
            }
            buf.drain(..done);
            self.pending = buf;
            chunk = &chunk[take..];
        }
        chunk
    }

    /// Ends the document; returns the last output.
    pub(crate) fn end(&mut self) -> Bytes {
        let buf = std::mem::take(&mut self.pending);
        if self.passthrough {
            self.out.extend_from_slice(&buf);
        } else {
            let done = self.run(&buf, true);
            debug_assert_eq!(done, buf.len());
            if matches!(
                self.state,
                State::RawText { scan: true, .. } | State::Script { scan: true, .. }
            ) {
                let ctx = &self.ctx;
                let mut decide = |path: &str, url: &mut String| ctx.map.public_url(path, url);
                self.text.finish(ctx.site(), &mut decide, &mut self.out);
            }
        }
        self.out.split().freeze()
    }

    /// Tokenizes `buf`, writing output for what is settled; returns how many bytes were
    /// settled (the rest must be offered again with more input). With `eof`, all of it.
    fn run(&mut self, buf: &[u8], eof: bool) -> usize {
        let mut pos = 0;
        while pos < buf.len() {
            let next = match self.state {
                State::Data => self.data(buf, pos, eof),
                State::Comment { start } => self.comment(buf, pos, start, eof),
                State::Bogus => self.until(buf, pos, b">", eof),
                State::Cdata => self.until(buf, pos, b"]]>", eof),
                State::RawText { name, scan } => self.raw_text(buf, pos, name, scan, eof),
                State::Script { scan, escape } => self.script(buf, pos, scan, escape, eof),
                State::Plaintext => {
                    self.out.put(&buf[pos..]);
                    Some(buf.len())
                }
            };
            match next {
                Some(next) => pos = next,
                None => break,
            }
        }
        pos
    }

    /// Text up to the next `<`, then whatever markup starts there.
    fn data(&mut self, buf: &[u8], pos: usize, eof: bool) -> Option<usize> {
        let Some(lt) = memchr::memchr(b'<', &buf[pos..]).map(|i| pos + i) else {
            self.out.put(&buf[pos..]);
            return Some(buf.len());
        };
        self.out.put(&buf[pos..lt]);
        match self.markup_at(buf, lt, eof) {
            // The text before it is settled even when the markup needs more input.
            None if lt > pos => Some(lt),
            next => next,
        }
    }

    /// The markup at `buf[lt] == b'<'`.
    fn markup_at(&mut self, buf: &[u8], lt: usize, eof: bool) -> Option<usize> {
        let rest = &buf[lt..];
        let Some(&next) = rest.get(1) else {
            return self.wait(buf, lt, eof);
        };
        match next {
            b if b.is_ascii_alphabetic() => self.tag(buf, lt, eof),
            b'/' => match rest.get(2) {
                Some(b) if b.is_ascii_alphabetic() => self.tag(buf, lt, eof),
                // `</>` is dropped by browsers; written as it was.
                Some(b'>') => self.markup(buf, lt, 3, State::Data),
                Some(_) => self.markup(buf, lt, 2, State::Bogus),
                None => self.wait(buf, lt, eof),
            },
            b'!' => self.declaration(buf, lt, eof),
            b'?' => self.markup(buf, lt, 1, State::Bogus),
            // A `<` of text.
            _ => self.markup(buf, lt, 1, State::Data),
        }
    }

    /// Markup at `at` that the input ends too soon to classify: waits for more, or at the
    /// end of the document writes it as it is.
    fn wait(&mut self, buf: &[u8], at: usize, eof: bool) -> Option<usize> {
        if !eof {
            return None;
        }
        self.out.put(&buf[at..]);
        Some(buf.len())
    }

    /// Writes `len` bytes of markup at `at` and goes on in `state`.
    fn markup(&mut self, buf: &[u8], at: usize, len: usize, state: State) -> Option<usize> {
        self.out.put(&buf[at..at + len]);
        self.state = state;
        Some(at + len)
    }

    /// `<!`: a comment, a CDATA section (foreign content only) or a bogus comment.
    fn declaration(&mut self, buf: &[u8], lt: usize, eof: bool) -> Option<usize> {
        let rest = &buf[lt..];
        if rest.starts_with(b"<!--") {
            return self.markup(buf, lt, 4, State::Comment { start: true });
        }
        let cdata = self.foreign > 0;
        if cdata && rest.starts_with(b"<![CDATA[") {
            return self.markup(buf, lt, 9, State::Cdata);
        }
        let undecided = b"<!--".starts_with(rest) || (cdata && b"<![CDATA[".starts_with(rest));
        if undecided && !eof {
            return None;
        }
        self.markup(buf, lt, 2, State::Bogus)
    }

    /// Comment text up to `-->` or `--!>` (`<!-->` and `<!--->` end at once).
    fn comment(&mut self, buf: &[u8], pos: usize, start: bool, eof: bool) -> Option<usize> {
        let rest = &buf[pos..];
        if start {
            if rest.starts_with(b">") {
                return self.markup(buf, pos, 1, State::Data);
            }
            if rest.starts_with(b"->") {
                return self.markup(buf, pos, 2, State::Data);
            }
            if rest == b"-" && !eof {
                return None;
            }
            self.state = State::Comment { start: false };
        }
        let mut from = 0;
        while let Some(d) = memmem::find(&rest[from..], b"--").map(|i| from + i) {
            match rest.get(d + 2) {
                Some(b'>') => return self.markup(buf, pos, d + 3, State::Data),
                Some(b'!') => match rest.get(d + 3) {
                    Some(b'>') => return self.markup(buf, pos, d + 4, State::Data),
                    None if !eof => return self.hold(buf, pos, pos + d),
                    _ => from = d + 2,
                },
                Some(_) => from = d + 1,
                None if !eof => return self.hold(buf, pos, pos + d),
                None => from = d + 2,
            }
        }
        let keep = usize::from(!eof && rest.ends_with(b"-"));
        self.hold(buf, pos, buf.len() - keep)
    }

    /// Writes `buf[pos..to]`; None (wait for more) when that is nothing.
    fn hold(&mut self, buf: &[u8], pos: usize, to: usize) -> Option<usize> {
        self.out.put(&buf[pos..to]);
        (to > pos).then_some(to)
    }

    /// Markup up to and including `end` (bogus comments, CDATA), then data.
    fn until(&mut self, buf: &[u8], pos: usize, end: &[u8], eof: bool) -> Option<usize> {
        let rest = &buf[pos..];
        if let Some(at) = memmem::find(rest, end) {
            return self.markup(buf, pos, at + end.len(), State::Data);
        }
        // Keep what could be the start of `end`.
        let keep = match eof {
            true => 0,
            false => (1..end.len())
                .rev()
                .find(|&n| rest.ends_with(&end[..n]))
                .unwrap_or(0),
        };
        self.hold(buf, pos, buf.len() - keep)
    }

    /// A start or end tag at `lt`.
    fn tag(&mut self, buf: &[u8], lt: usize, eof: bool) -> Option<usize> {
        let mut attrs = std::mem::take(&mut self.attrs);
        let parsed = tag::parse(buf, lt, &mut attrs);
        let next = match parsed {
            Some(tag) if tag.end_tag => {
                self.end_tag(buf, &tag);
                self.out.put(&buf[lt..tag.end]);
                Some(tag.end)
            }
            Some(tag) => {
                self.start_tag(buf, lt, &tag, &attrs);
                Some(tag.end)
            }
            // Browsers drop a tag cut off by the end of the document; it is written as it was.
            None if eof => {
                self.out.put(&buf[lt..]);
                Some(buf.len())
            }
            None if buf.len() - lt > MAX_TAG => {
                tracing::warn!(
                    limit = MAX_TAG,
                    "html rewriting gave up on a tag over the limit, passing the rest through"
                );
                self.passthrough = true;
                self.out.put(&buf[lt..]);
                Some(buf.len())
            }
            None => None,
        };
        self.attrs = attrs;
        next
    }

    fn end_tag(&mut self, buf: &[u8], tag: &Tag) {
        let name = &buf[tag.name.clone()];
        if self.foreign > 0 && (is(name, b"svg") || is(name, b"math")) {
            self.foreign -= 1;
        }
    }

    /// Writes a start tag with its URL attributes rewritten, then enters the state its
    /// element's content needs.
    fn start_tag(&mut self, buf: &[u8], lt: usize, tag: &Tag, attrs: &[Attr]) {
        let name = &buf[tag.name.clone()];
        let meta = is(name, b"meta") && is_image_meta(buf, attrs);
        let mut written = lt;
        for (i, attr) in attrs.iter().enumerate() {
            let attr_name = &buf[attr.name.clone()];
            let Some(value) = attr.value.clone() else {
                continue;
            };
            let wanted = is_url_attribute(attr_name) || (meta && is(attr_name, b"content"));
            // Browsers ignore all but the first of attributes with the same name.
            if !wanted
                || attrs[..i]
                    .iter()
                    .any(|a| is(&buf[a.name.clone()], attr_name))
            {
                continue;
            }
            let ctx = &self.ctx;
            let mut decide = |path: &str, url: &mut String| ctx.map.public_url(path, url);
            let new = &mut self.value;
            let rewrite = match meta || holds_one_url(attr_name) {
                true => rewrite_url_into,
                false => rewrite_into,
            };
            if rewrite(ctx.site(), &mut decide, &mut self.scratch, &buf[value], new) {
                written = put_value(&mut self.out, buf, written, attr, new);
            }
        }
        self.out.put(&buf[written..tag.end]);
        self.enter(buf, name, tag, attrs);
    }

    /// The state after the start tag of element `name`.
    fn enter(&mut self, buf: &[u8], name: &[u8], tag: &Tag, attrs: &[Attr]) {
        if self.foreign > 0 {
            let breakout = FOREIGN_BREAKOUT.iter().any(|b| is(name, b))
                && (!is(name, b"font") || attrs_named(buf, attrs, &[b"color", b"face", b"size"]));
            if !breakout {
                if !tag.self_closing && (is(name, b"svg") || is(name, b"math")) {
                    self.foreign += 1;
                }
                return;
            }
            self.foreign = 0;
        }
        // Only these elements change the tokenizer's state: a quick test of the first letter
        // spares the comparisons for every other tag.
        if !matches!(
            name.first().map(u8::to_ascii_lowercase),
            Some(b'i' | b'm' | b'n' | b'p' | b's' | b't' | b'x')
        ) {
            return;
        }
        self.state = match name.len() {
            3 | 4 if (is(name, b"svg") || is(name, b"math")) => {
                self.foreign += u32::from(!tag.self_closing);
                State::Data
            }
            6 if is(name, b"script") => State::Script {
                scan: self.scan_script(buf, attrs),
                escape: Escape::None,
            },
            5 if is(name, b"style") => State::RawText {
                name: b"style",
                scan: true,
            },
            8 if is(name, b"noscript") => State::RawText {
                name: b"noscript",
                scan: true,
            },
            9 if is(name, b"plaintext") => State::Plaintext,
            _ => match [
                &b"textarea"[..],
                b"title",
                b"xmp",
                b"iframe",
                b"noembed",
                b"noframes",
            ]
            .into_iter()
            .find(|n| is(name, n))
            {
                Some(raw) => State::RawText {
                    name: raw,
                    scan: false,
                },
                None => State::Data,
            },
        };
    }

    /// Whether a script's text is a URL position, by its first `type` attribute.
    fn scan_script(&self, buf: &[u8], attrs: &[Attr]) -> bool {
        let Some(ty) = first_value(buf, attrs, b"type") else {
            return self.javascript;
        };
        JSON_SCRIPTS.iter().any(|t| is(ty, t))
            || (self.javascript && JS_SCRIPTS.iter().any(|t| is(ty, t)))
    }

    /// Raw text (or RCDATA) up to `</name` followed by a space, `/` or `>`.
    fn raw_text(
        &mut self,
        buf: &[u8],
        pos: usize,
        name: &'static [u8],
        scan: bool,
        eof: bool,
    ) -> Option<usize> {
        let mut from = pos;
        while let Some(lt) = memchr::memchr(b'<', &buf[from..]).map(|i| from + i) {
            match end_tag_at(buf, lt, name, eof) {
                Some(true) => {
                    self.text(buf, pos, lt, scan, true);
                    self.state = State::Data;
                    return Some(lt);
                }
                Some(false) => from = lt + 1,
                None => return self.text_until(buf, pos, lt, scan),
            }
        }
        self.text_until(buf, pos, buf.len(), scan)
    }

    /// Script text: ends at `</script` outside a double escape.
    fn script(
        &mut self,
        buf: &[u8],
        pos: usize,
        scan: bool,
        mut escape: Escape,
        eof: bool,
    ) -> Option<usize> {
        let mut from = pos;
        while let Some(at) = memchr::memchr2(b'<', b'-', &buf[from..]).map(|i| from + i) {
            let rest = &buf[at..];
            let need_more =
                |marker: &[u8]| !eof && rest.len() < marker.len() && marker.starts_with(rest);
            from = at + 1;
            if rest[0] == b'-' {
                if escape != Escape::None && rest.starts_with(b"-->") {
                    escape = Escape::None;
                    from = at + 3;
                } else if escape != Escape::None && need_more(b"-->") {
                    return self.script_until(buf, pos, at, scan, escape);
                }
                continue;
            }
            match end_tag_at(buf, at, b"script", eof) {
                None => return self.script_until(buf, pos, at, scan, escape),
                Some(true) if escape == Escape::Double => {
                    escape = Escape::Escaped;
                    from = at + 8;
                    continue;
                }
                Some(true) => {
                    self.text(buf, pos, at, scan, true);
                    self.state = State::Data;
                    return Some(at);
                }
                Some(false) => {}
            }
            match escape {
                Escape::None if rest.starts_with(b"<!--") => {
                    escape = Escape::Escaped;
                    // The dashes of `<!--` count towards `-->`: `<!-->` unescapes at once.
                    from = at + 2;
                }
                Escape::None if need_more(b"<!--") => {
                    return self.script_until(buf, pos, at, scan, escape);
                }
                Escape::Escaped => match start_tag_at(buf, at, b"script", eof) {
                    Some(true) => {
                        escape = Escape::Double;
                        from = at + 7;
                    }
                    None => return self.script_until(buf, pos, at, scan, escape),
                    Some(false) => {}
                },
                _ => {}
            }
        }
        self.script_until(buf, pos, buf.len(), scan, escape)
    }

    fn script_until(
        &mut self,
        buf: &[u8],
        pos: usize,
        to: usize,
        scan: bool,
        escape: Escape,
    ) -> Option<usize> {
        self.state = State::Script { scan, escape };
        self.text_until(buf, pos, to, scan)
    }

    /// Element text `buf[pos..to]`, then waits for more input.
    fn text_until(&mut self, buf: &[u8], pos: usize, to: usize, scan: bool) -> Option<usize> {
        self.text(buf, pos, to, scan, false);
        (to > pos).then_some(to)
    }

    /// Element text: scanned for URLs when `scan`, else written as it is.
    fn text(&mut self, buf: &[u8], pos: usize, to: usize, scan: bool, last: bool) {
        if !scan {
            self.out.put(&buf[pos..to]);
            return;
        }
        let ctx = &self.ctx;
        let mut decide = |path: &str, url: &mut String| ctx.map.public_url(path, url);
        if to > pos {
            self.text
                .feed(ctx.site(), &mut decide, &buf[pos..to], &mut self.out);
        }
        if last {
            self.text.finish(ctx.site(), &mut decide, &mut self.out);
        }
    }
}

/// Whether an end tag `</name` + space, `/` or `>` starts at `lt`; None when the input ends
/// before that is known.
fn end_tag_at(buf: &[u8], lt: usize, name: &[u8], eof: bool) -> Option<bool> {
    marker_at(buf, lt, b"</", name, eof)
}

/// The same for a start tag `<name`.
fn start_tag_at(buf: &[u8], lt: usize, name: &[u8], eof: bool) -> Option<bool> {
    marker_at(buf, lt, b"<", name, eof)
}

fn marker_at(buf: &[u8], at: usize, lead: &[u8], name: &[u8], eof: bool) -> Option<bool> {
    let rest = &buf[at..];
    let len = lead.len() + name.len();
    if rest.len() <= len {
        let partial = (rest.len() <= lead.len() && lead.starts_with(rest))
            || (rest.starts_with(lead)
                && name[..rest.len() - lead.len()].eq_ignore_ascii_case(&rest[lead.len()..]));
        return if partial && !eof { None } else { Some(false) };
    }
    Some(
        rest.starts_with(lead)
            && rest[lead.len()..len].eq_ignore_ascii_case(name)
            && (is_space(rest[len]) || matches!(rest[len], b'/' | b'>')),
    )
}

/// Writes the tag bytes before `attr`'s value, then `new` in its place; returns where the
/// original continues. A value whose new text cannot stand in the original quoting is
/// written double-quoted, `"` as `&quot;`.
fn put_value(out: &mut BytesMut, buf: &[u8], written: usize, attr: &Attr, new: &[u8]) -> usize {
    let Some(value) = attr.value.clone() else {
        return written;
    };
    let fits = match attr.quote {
        Some(quote) => !new.contains(&quote),
        None => {
            !new.is_empty()
                && !new
                    .iter()
                    .any(|&b| is_space(b) || matches!(b, b'"' | b'\'' | b'=' | b'<' | b'>' | b'`'))
        }
    };
    if fits {
        out.put(&buf[written..value.start]);
        out.put(new);
        return value.end;
    }
    let quoted = usize::from(attr.quote.is_some());
    out.put(&buf[written..value.start - quoted]);
    out.put(b"\"");
    let mut rest = new;
    while let Some(at) = memchr::memchr(b'"', rest) {
        out.put(&rest[..at]);
        out.put(b"&quot;");
        rest = &rest[at + 1..];
    }
    out.put(rest);
    out.put(b"\"");
    value.end + quoted
}

/// ASCII case-insensitive equality, as HTML compares tag and attribute names.
fn is(name: &[u8], want: &[u8]) -> bool {
    name.eq_ignore_ascii_case(want)
}

/// Whether URL attribute `name` holds one URL (`src`, `href`), where the others hold several
/// (`srcset`) or CSS (`style`, and `data-bg`, which lazy loaders fill either way).
pub(super) fn holds_one_url(name: &[u8]) -> bool {
    const ONE_URL: [&[u8]; 7] = [
        b"src",
        b"href",
        b"xlink:href",
        b"poster",
        b"background",
        b"data-src",
        b"data-lazy-src",
    ];
    ONE_URL.iter().any(|one| is(name, one))
}

fn is_url_attribute(name: &[u8]) -> bool {
    // Most attributes are not URL attributes: their length alone tells.
    const LENGTHS: u32 = {
        let mut bits = 0;
        let mut i = 0;
        while i < URL_ATTRIBUTES.len() {
            bits |= 1 << URL_ATTRIBUTES[i].len();
            i += 1;
        }
        bits
    };
    name.len() < 32
        && LENGTHS & (1 << name.len()) != 0
        && URL_ATTRIBUTES.iter().any(|a| is(name, a))
}

/// The value of the first attribute called `name` (later duplicates are ignored, as browsers
/// ignore them).
fn first_value<'b>(buf: &'b [u8], attrs: &[Attr], name: &[u8]) -> Option<&'b [u8]> {
    let attr = attrs.iter().find(|a| is(&buf[a.name.clone()], name))?;
    Some(attr.value.clone().map_or(&b""[..], |v| &buf[v]))
}

fn attrs_named(buf: &[u8], attrs: &[Attr], names: &[&[u8]]) -> bool {
    attrs
        .iter()
        .any(|a| names.iter().any(|n| is(&buf[a.name.clone()], n)))
}

/// `<meta property="og:image…">` or `<meta name="twitter:image…">` (any case).
fn is_image_meta(buf: &[u8], attrs: &[Attr]) -> bool {
    let starts = |value: Option<&[u8]>, prefix: &[u8]| {
        value.is_some_and(|v| v.len() >= prefix.len() && is(&v[..prefix.len()], prefix))
    };
    starts(first_value(buf, attrs, b"property"), b"og:image")
        || starts(first_value(buf, attrs, b"name"), b"twitter:image")
}
