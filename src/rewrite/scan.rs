//! The URL scanner shared by every content kind: finds managed-prefix spellings with one
//! Aho-Corasick pass, looks back for an origin, forward for the end of the URL, and asks a
//! decision function whether to replace it.
//!
//! [`Scanner`] streams: it keeps a bounded carry-over (the unfinished URL plus [`LOOKBACK`] bytes
//! of context), so the output never depends on where the input was split.

use std::collections::HashSet;

use super::rules::{Origin, Rules, Search};

/// How far back from a prefix an origin (`https:\/\/` + host + `:port`) may start.
pub(crate) const LOOKBACK: usize = 300;
/// The longest URL (from the prefix on) the scanner waits for; longer ones are left as they are.
pub(crate) const MAX_URL: usize = 8 * 1024;

/// Where scanned output goes.
pub(crate) trait Out {
    fn put(&mut self, bytes: &[u8]);
}

impl Out for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl Out for bytes::BytesMut {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Decides whether a managed path (decoded, normalised) is replaced; if so, appends the URL
/// that replaces it to the `String` (see [`super::AssetMap`]).
pub(crate) type Decide<'a> = dyn FnMut(&str, &mut String) -> bool + 'a;

/// The site a response belongs to: the rules plus the request's own origin.
#[derive(Clone, Copy)]
pub(crate) struct Site<'a> {
    pub(crate) rules: &'a Rules,
    pub(crate) request_origin: Option<&'a Origin>,
}

impl Site<'_> {
    fn is_site(&self, host: &[u8], port: Option<u16>) -> bool {
        self.request_origin.is_some_and(|o| o.matches(host, port)) || self.rules.is_site(host, port)
    }
}

/// Reusable buffers for path decoding and the decision's answer, so a match allocates nothing.
#[derive(Default)]
pub(crate) struct Scratch {
    bytes: Vec<u8>,
    path: String,
    url: String,
}

/// Byte classes for the forward scan to the end of a URL.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Go,
    Stop,
    Poison,
    Query,
    Comma,
    Backslash,
    Amp,
}

const CLASS: [Class; 256] = {
    let mut t = [Class::Go; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = Class::Poison;
        b += 1;
    }
    t[0x7f] = Class::Poison;
    let stops = b" \t\n\r\x0c\"'<>()`{}|^[]";
    let mut i = 0;
    while i < stops.len() {
        t[stops[i] as usize] = Class::Stop;
        i += 1;
    }
    t[b'?' as usize] = Class::Query;
    t[b'#' as usize] = Class::Query;
    t[b',' as usize] = Class::Comma;
    t[b'\\' as usize] = Class::Backslash;
    t[b'&' as usize] = Class::Amp;
    t
};

/// Bytes that continue a URL to the left: a prefix preceded by one of them is part of a
/// relative URL, a query value or a foreign path, never a URL of its own.
const URL_CHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0x80;
    while b < 256 {
        t[b] = true;
        b += 1;
    }
    let extra = b"-._~%/\\:@!$&*+;=#?";
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = true;
        i += 1;
    }
    let mut c = 0;
    while c < 128 {
        if (c as u8).is_ascii_alphanumeric() {
            t[c] = true;
        }
        c += 1;
    }
    t
};

/// HTML entities that end a URL written raw inside an attribute value.
const ENTITIES: [&[u8]; 7] = [
    b"&quot;", b"&#34;", b"&#39;", b"&#039;", b"&apos;", b"&lt;", b"&gt;",
];
/// Entity-encoded quotes, after which a URL may start.
const QUOTE_ENTITIES: [&[u8]; 5] = [b"&quot;", b"&#34;", b"&#39;", b"&#039;", b"&apos;"];

/// Bytes kept before the first unemitted one: an origin's lookback plus the longest quote entity
/// before it, so a prefix arriving in the next chunk sees what a single pass would have seen.
const CONTEXT: usize = LOOKBACK + 8;

/// The end of the URL whose prefix starts at `p`.
enum End {
    /// The path runs to `path`, the whole URL (query, fragment) to `url`.
    Found { path: usize, url: usize },
    /// Needs more input.
    Incomplete,
    /// Longer than [`MAX_URL`]: left alone.
    TooLong,
    /// Contains a byte that makes it unsafe: left alone, scanning resumes after `at`.
    Poison { at: usize },
}

/// Bytes that simply continue a URL ([`Class::Go`]), as a table for the fast inner loop.
const GO: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = matches!(CLASS[b], Class::Go);
        b += 1;
    }
    t
};

fn find_end(buf: &[u8], p: usize, mut i: usize, escaped: bool, eof: bool) -> End {
    let mut path = None;
    loop {
        // Skip plain URL bytes in a tight loop; only the others need a decision.
        let limit = buf.len().min(p + MAX_URL + 1);
        i = buf
            .get(i..limit)
            .and_then(|rest| rest.iter().position(|&b| !GO[usize::from(b)]))
            .map_or(limit.max(i), |at| i + at);
        if i - p > MAX_URL {
            return End::TooLong;
        }
        let Some(&b) = buf.get(i) else {
            return match eof {
                true => End::Found {
                    path: path.unwrap_or(i),
                    url: i,
                },
                false => End::Incomplete,
            };
        };
        let step = match CLASS[b as usize] {
            Class::Go => 1,
            Class::Query => {
                path.get_or_insert(i);
                1
            }
            Class::Stop => 0,
            Class::Poison => return End::Poison { at: i },
            Class::Comma => match buf.get(i + 1) {
                None if !eof => return End::Incomplete,
                None => 0,
                Some(n) if n.is_ascii_whitespace() => 0,
                Some(_) => 1,
            },
            Class::Backslash => match buf.get(i + 1) {
                None if !eof => return End::Incomplete,
                Some(b'/') if escaped => 2,
                Some(b'"' | b'\'' | b'n' | b'r' | b't') => 0,
                _ => return End::Poison { at: i },
            },
            Class::Amp => match entity_at(&buf[i..], eof) {
                None => return End::Incomplete,
                Some(true) => 0,
                Some(false) => 1,
            },
        };
        if step == 0 {
            return End::Found {
                path: path.unwrap_or(i),
                url: i,
            };
        }
        i += step;
    }
}

/// Whether `rest` starts with an entity ending the URL; None if more input is needed to know.
fn entity_at(rest: &[u8], eof: bool) -> Option<bool> {
    let mut undecided = false;
    for e in ENTITIES {
        if rest.starts_with(e) {
            return Some(true);
        }
        undecided |= !eof && rest.len() < e.len() && e.starts_with(rest);
    }
    if undecided { None } else { Some(false) }
}

/// What precedes a prefix.
enum Lead<'b> {
    /// Nothing: a root-relative URL starting at the prefix.
    Root,
    /// `[scheme:]//host[:port]` starting at `start`.
    Origin {
        start: usize,
        host: &'b [u8],
        port: Option<u16>,
    },
}

fn is_host_char(b: u8) -> bool {
    HOST_CHAR[usize::from(b)]
}

const HOST_CHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 128 {
        t[b] = (b as u8).is_ascii_alphanumeric() || b == b'.' as usize || b == b'-' as usize;
        b += 1;
    }
    t
};

/// Looks back from the prefix at `p` for an origin, then checks the URL starts at a boundary.
/// `at_start`: `buf[0]` is the first byte of the whole text.
fn find_lead(buf: &[u8], p: usize, escaped: bool, at_start: bool) -> Option<Lead<'_>> {
    let floor = p.saturating_sub(LOOKBACK);
    let mut j = p;
    while j > floor && buf[j - 1].is_ascii_digit() {
        j -= 1;
    }
    let (host_end, port) = match j < p && j > floor && buf[j - 1] == b':' {
        true => (j - 1, Some(&buf[j..p])),
        false => (p, None),
    };
    let mut h = host_end;
    while h > floor && is_host_char(buf[h - 1]) {
        h -= 1;
    }
    if h == host_end {
        return (port.is_none() && boundary(buf, p, at_start)).then_some(Lead::Root);
    }
    let slashes: &[u8] = if escaped { b"\\/\\/" } else { b"//" };
    let q = h.checked_sub(slashes.len()).filter(|&q| q >= floor)?;
    if &buf[q..h] != slashes {
        return None;
    }
    let (start, default) =
        scheme_before(&buf[floor..q]).map_or((q, None), |(len, d)| (q - len, Some(d)));
    if !boundary(buf, start, at_start) {
        return None;
    }
    let port = match port {
        None => None,
        Some(digits) => Some(parse_port(digits)?).filter(|&p| Some(p) != default),
    };
    Some(Lead::Origin {
        start,
        host: &buf[h..host_end],
        port,
    })
}

/// `http:` or `https:` (any case) at the end of `before`: its length and default port.
fn scheme_before(before: &[u8]) -> Option<(usize, u16)> {
    let ends = |s: &[u8]| {
        before.len() >= s.len() && before[before.len() - s.len()..].eq_ignore_ascii_case(s)
    };
    if ends(b"https:") {
        Some((6, 443))
    } else if ends(b"http:") {
        Some((5, 80))
    } else {
        None
    }
}

/// The port number, None if it does not fit in a port.
fn parse_port(digits: &[u8]) -> Option<u16> {
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Whether a URL can start at `at`: after a delimiter, or after an entity-encoded quote (a URL
/// in a `style` attribute: `url(&quot;/wp-content/...&quot;)`).
fn boundary(buf: &[u8], at: usize, at_start: bool) -> bool {
    match at {
        0 => at_start,
        _ if !URL_CHAR[buf[at - 1] as usize] => true,
        _ => QUOTE_ENTITIES.iter().any(|e| buf[..at].ends_with(e)),
    }
}

/// The outcome of one scanning pass over a buffer.
pub(crate) struct Step {
    /// Output was produced for `buf[..emitted]`.
    pub(crate) emitted: usize,
    /// The next pass searches for prefixes from here.
    pub(crate) resume: usize,
    /// How many URLs were replaced.
    pub(crate) replaced: usize,
}

/// One pass over `buf`, whose bytes before `start` are context only (already emitted).
pub(crate) struct Pass<'a, 'b> {
    pub(crate) site: Site<'a>,
    pub(crate) decide: &'b mut Decide<'a>,
    pub(crate) scratch: &'b mut Scratch,
    /// Over `buf`; it remembers the hits it found, so it may have been asked before the pass.
    pub(crate) search: Search<'a>,
    /// Only a URL starting here is replaced (a value that holds one URL); `None`: any.
    pub(crate) anchor: Option<usize>,
}

impl Pass<'_, '_> {
    /// Scans `buf[from..]`, writing output for `buf[start..emitted]` to `out`. Without `eof`, it
    /// stops before anything a later chunk could still turn into (part of) a URL.
    pub(crate) fn run(
        &mut self,
        buf: &[u8],
        start: usize,
        from: usize,
        eof: bool,
        at_start: bool,
        out: &mut impl Out,
    ) -> Step {
        let rules = self.site.rules;
        let (mut pos, mut from, mut replaced) = (start, from, 0);
        while let Some(m) = self.search.find(buf, from) {
            let (p, escaped) = (m.start, rules.patterns[m.pattern].escaped);
            let (path_end, url_end) = match find_end(buf, p, m.end, escaped, eof) {
                End::Found { path, url } => (path, url),
                End::TooLong => {
                    from = p + 1;
                    continue;
                }
                End::Poison { at } => {
                    from = at + 1;
                    continue;
                }
                End::Incomplete => {
                    let hold = char_floor(buf, pos, p.saturating_sub(LOOKBACK).max(pos));
                    out.put(&buf[pos..hold]);
                    return Step {
                        emitted: hold,
                        resume: p,
                        replaced,
                    };
                }
            };
            from = url_end;
            let Some(o) = self.replacement(buf, p, path_end, escaped, at_start) else {
                continue;
            };
            if o < pos || self.anchor.is_some_and(|anchor| o != anchor) {
                continue;
            }
            out.put(&buf[pos..o]);
            put_url(out, &self.scratch.url, escaped);
            pos = path_end;
            replaced += 1;
        }
        let hold = match eof {
            true => buf.len(),
            false => char_floor(
                buf,
                pos,
                origin_start(buf, pos, buf.len().saturating_sub(rules.max_pattern_len)),
            ),
        };
        out.put(&buf[pos..hold]);
        Step {
            emitted: hold,
            resume: from.max(hold),
            replaced,
        }
    }

    /// The start of the URL found at prefix `p`, if it is replaced; the public URL to put
    /// there is then in `self.scratch.url`.
    fn replacement(
        &mut self,
        buf: &[u8],
        p: usize,
        path_end: usize,
        escaped: bool,
        at_start: bool,
    ) -> Option<usize> {
        let rules = self.site.rules;
        let start = match find_lead(buf, p, escaped, at_start)? {
            Lead::Root => p,
            Lead::Origin { start, host, port } => {
                if !self.site.is_site(host, port)
                    || buf[start..].starts_with(rules.public_base().as_str().as_bytes())
                {
                    return None;
                }
                start
            }
        };
        let Scratch { bytes, path, url } = &mut *self.scratch;
        if !rules.normalise(&buf[p..path_end], escaped, bytes, path) {
            return None;
        }
        url.clear();
        (self.decide)(path, url).then_some(start)
    }
}

/// Moves `before` back over anything that could be the origin (`https:\/\/host:port`) of a URL
/// whose prefix starts at or after it, since an origin is replaced together with its path.
fn origin_start(buf: &[u8], pos: usize, before: usize) -> usize {
    let floor = before.saturating_sub(LOOKBACK).max(pos);
    let mut at = before.max(pos);
    while at > floor && (is_host_char(buf[at - 1]) || matches!(buf[at - 1], b':' | b'/' | b'\\')) {
        at -= 1;
    }
    at
}

/// Moves `at` back (not below `min`) to a UTF-8 character boundary, so that every chunk of
/// output is valid UTF-8 on its own when the input was.
fn char_floor(buf: &[u8], min: usize, mut at: usize) -> usize {
    while at > min && at < buf.len() && (buf[at] & 0xC0) == 0x80 {
        at -= 1;
    }
    at
}

/// Writes a public URL, JSON-escaping its slashes when the original was escaped.
fn put_url(out: &mut impl Out, url: &str, escaped: bool) {
    let mut rest = url.as_bytes();
    if !escaped {
        return out.put(rest);
    }
    while let Some(at) = memchr::memchr(b'/', rest) {
        out.put(&rest[..at]);
        out.put(b"\\/");
        rest = &rest[at + 1..];
    }
    out.put(rest);
}

/// Rewrites a complete text (an attribute value, a header) in one go; None when nothing changed.
pub(crate) fn rewrite_once(
    site: Site<'_>,
    decide: &mut Decide<'_>,
    scratch: &mut Scratch,
    text: &[u8],
) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    rewrite_into(site, decide, scratch, text, &mut out).then_some(out)
}

/// [`rewrite_once`] into a reused buffer (cleared first); false when nothing changed.
pub(crate) fn rewrite_into(
    site: Site<'_>,
    decide: &mut Decide<'_>,
    scratch: &mut Scratch,
    text: &[u8],
    out: &mut Vec<u8>,
) -> bool {
    rewrite_anchored(site, decide, scratch, text, out, None)
}

/// [`rewrite_into`] for a value that holds one URL (`src`, `href`): only a URL at its start,
/// past leading whitespace, as browsers read it, is replaced. A managed path later in the
/// value belongs to another URL (another site's path or query, a `data:` payload).
pub(crate) fn rewrite_url_into(
    site: Site<'_>,
    decide: &mut Decide<'_>,
    scratch: &mut Scratch,
    text: &[u8],
    out: &mut Vec<u8>,
) -> bool {
    let anchor = text.iter().take_while(|b| b.is_ascii_whitespace()).count();
    rewrite_anchored(site, decide, scratch, text, out, Some(anchor))
}

/// One pass over a complete `text` into `out`, replacing only a URL starting at `anchor`
/// when one is given.
fn rewrite_anchored(
    site: Site<'_>,
    decide: &mut Decide<'_>,
    scratch: &mut Scratch,
    text: &[u8],
    out: &mut Vec<u8>,
    anchor: Option<usize>,
) -> bool {
    out.clear();
    let mut search = Search::new(site.rules);
    if search.find(text, 0).is_none() {
        return false;
    }
    out.reserve(text.len() + 64);
    let step = Pass {
        site,
        decide,
        scratch,
        search,
        anchor,
    }
    .run(text, 0, 0, true, true, out);
    step.replaced > 0
}

/// A streaming scanner: feed chunks, then finish.
#[derive(Default)]
pub(crate) struct Scanner {
    /// Context (already emitted) bytes, then pending ones from `emitted` on.
    buf: Vec<u8>,
    emitted: usize,
    resume: usize,
    /// Context was dropped from the front: `buf[0]` is not the start of the text.
    trimmed: bool,
    scratch: Scratch,
}

impl Scanner {
    /// Scans one more chunk, writing whatever output is final to `out`.
    pub(crate) fn feed(
        &mut self,
        site: Site<'_>,
        decide: &mut Decide<'_>,
        chunk: &[u8],
        out: &mut impl Out,
    ) {
        self.buf.extend_from_slice(chunk);
        self.pass(site, decide, false, out);
    }

    /// Ends the text: flushes the carry-over.
    pub(crate) fn finish(&mut self, site: Site<'_>, decide: &mut Decide<'_>, out: &mut impl Out) {
        self.pass(site, decide, true, out);
        self.buf.clear();
        (self.emitted, self.resume, self.trimmed) = (0, 0, false);
    }

    fn pass(&mut self, site: Site<'_>, decide: &mut Decide<'_>, eof: bool, out: &mut impl Out) {
        let mut pass = Pass {
            site,
            decide,
            scratch: &mut self.scratch,
            search: Search::new(site.rules),
            anchor: None,
        };
        let step = pass.run(
            &self.buf,
            self.emitted,
            self.resume,
            eof,
            !self.trimmed,
            out,
        );
        let keep_from = step.emitted.saturating_sub(CONTEXT);
        self.buf.drain(..keep_from);
        self.emitted = step.emitted - keep_from;
        self.resume = step.resume - keep_from;
        self.trimmed |= keep_from > 0;
    }
}

/// Every managed path mentioned in `text`, in order of first mention.
pub(crate) fn collect(site: Site<'_>, text: &[u8]) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    // A set beside the list: a page of 2 MiB can name tens of thousands of paths, and
    // looking each up in the list took seconds of the worker's time (40,000: 4 s).
    let mut seen: HashSet<String> = HashSet::new();
    let mut decide = |path: &str, _: &mut String| {
        if !seen.contains(path) {
            seen.insert(path.to_owned());
            found.push(path.to_owned());
        }
        false
    };
    let mut sink = Discard;
    Pass {
        site,
        decide: &mut decide,
        scratch: &mut Scratch::default(),
        search: Search::new(site.rules),
        anchor: None,
    }
    .run(text, 0, 0, true, true, &mut sink);
    found
}

struct Discard;

impl Out for Discard {
    fn put(&mut self, _: &[u8]) {}
}
