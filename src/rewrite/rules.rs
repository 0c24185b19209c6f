//! What counts as "a managed asset URL of this site": prefixes, origins, path normalisation.
//!
//! Everything here is built once per configuration ([`Rules::new`]) and shared read-only, so the
//! hot path never compiles a pattern or parses a URL.

use aho_corasick::{AhoCorasick, Input, MatchKind};
use memchr::memmem;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use url::Url;

/// A configuration that [`Rules::new`] refuses.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// No managed prefix was given.
    #[error("no managed url prefixes")]
    NoPrefixes,
    /// A prefix is not a clean absolute path ending in '/'.
    #[error("managed prefix {0:?} must be a clean path that starts and ends with '/'")]
    BadPrefix(String),
    /// A site origin is not a bare http(s) origin.
    #[error("site origin {0} must be an http(s) origin without path, query or fragment")]
    BadOrigin(Url),
    /// The public base is not an http(s) URL ending in '/'.
    #[error("public base {0} must be an http(s) url ending with '/', without query or fragment")]
    BadPublicBase(Url),
    /// The prefix automaton could not be built (too many or too long prefixes).
    #[error("building the prefix matcher: {0}")]
    Matcher(#[from] aho_corasick::BuildError),
}

/// Characters that a prefix must not contain: they would make it ambiguous once written in a URL.
const PREFIX_FORBIDDEN: &[char] = &['?', '#', '%', '\\', '"', '\'', '<', '>'];

/// How a prefix is spelled when percent-encoded in a path (space, non-ASCII, ...).
const PATH_ENCODE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// Most spellings searched with one memmem finder each; more go through the automaton.
const MAX_FINDERS: usize = 8;

/// A prefix spelling found in a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Found {
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) pattern: usize,
}

/// Finds prefix spellings in one text, leftmost first (the longest of those starting at the
/// same place), remembering each finder's next hit so that a text is scanned about once per
/// spelling however many URLs it holds.
pub(crate) struct Search<'r> {
    rules: &'r Rules,
    /// Per finder: the next hit at or after the position it was last asked from (`None`:
    /// none left in the text).
    next: [Option<usize>; MAX_FINDERS],
    /// Per finder: the position its `next` was searched from.
    from: [usize; MAX_FINDERS],
    fresh: bool,
}

impl<'r> Search<'r> {
    pub(crate) fn new(rules: &'r Rules) -> Search<'r> {
        Search {
            rules,
            next: [None; MAX_FINDERS],
            from: [0; MAX_FINDERS],
            fresh: true,
        }
    }

    /// The leftmost-longest spelling in `buf[from..]`. `buf` must be the same text (or the
    /// same text with bytes appended) for every call on one `Search`, and `from` must not go
    /// backwards.
    pub(crate) fn find(&mut self, buf: &[u8], from: usize) -> Option<Found> {
        let rules = self.rules;
        if rules.finders.is_empty() {
            let m = rules
                .automaton
                .find(Input::new(buf).span(from.min(buf.len())..buf.len()))?;
            return Some(Found {
                start: m.start(),
                end: m.end(),
                pattern: m.pattern().as_usize(),
            });
        }
        let mut best: Option<Found> = None;
        for (i, finder) in rules.finders.iter().enumerate() {
            let stale = self.fresh || self.next[i].is_some_and(|n| n < from) || self.from[i] > from;
            if stale {
                self.next[i] = buf
                    .get(from..)
                    .and_then(|rest| finder.find(rest))
                    .map(|at| at + from);
                self.from[i] = from;
            }
            let Some(start) = self.next[i] else { continue };
            let end = start + finder.needle().len();
            let better = best.is_none_or(|b| start < b.start || (start == b.start && end > b.end));
            if better {
                best = Some(Found {
                    start,
                    end,
                    pattern: i,
                });
            }
        }
        self.fresh = false;
        best
    }
}

/// One spelling of one prefix in the automaton.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pattern {
    /// Whether this spelling is JSON-escaped (`\/`), so the URL around it is too.
    pub(crate) escaped: bool,
}

/// An origin that counts as "this site", compared by host and effective port.
///
/// The scheme is deliberately not compared: sites behind a TLS terminator emit `http://` and
/// `https://` links to the same host, and both point at the same uploads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    host: String,
    port: u16,
    default_port: bool,
}

impl Origin {
    /// The origin of an http(s) URL, or None for any other URL.
    pub(crate) fn from_url(url: &Url) -> Option<Origin> {
        let default = match url.scheme() {
            "http" => 80,
            "https" => 443,
            _ => return None,
        };
        let host = url.host_str()?.to_ascii_lowercase();
        let port = url.port().unwrap_or(default);
        Some(Origin {
            host,
            port,
            default_port: port == default,
        })
    }

    /// `port` is None when the URL names no port (or its scheme's default port).
    pub(crate) fn matches(&self, host: &[u8], port: Option<u16>) -> bool {
        self.host.as_bytes().eq_ignore_ascii_case(host)
            && match port {
                None => self.default_port,
                Some(port) => port == self.port,
            }
    }
}

/// The rewriting rules of one configuration; build once, share in an `Arc`.
#[derive(Debug)]
pub struct Rules {
    automaton: AhoCorasick,
    /// One substring finder per spelling, used instead of the automaton when there are few:
    /// every spelling starts with `/` or `\`, so the automaton's start-byte prefilter stops
    /// at every slash, while memmem skips to the spelling's rare bytes.
    finders: Vec<memmem::Finder<'static>>,
    pub(crate) patterns: Vec<Pattern>,
    pub(crate) max_pattern_len: usize,
    prefixes: Vec<String>,
    origins: Vec<Origin>,
    public_base: Url,
}

impl Rules {
    /// Builds the rules.
    ///
    /// * `prefixes`: managed URL path prefixes, e.g. `/wp-content/uploads/` (start and end with '/').
    /// * `site_origins`: extra origins that count as "this site" besides the request's own, e.g.
    ///   `https://example.com`, `http://example.com:8080`.
    /// * `public_base`: where rewritten URLs point, e.g. `https://cdn.example.com/`.
    pub fn new(
        prefixes: Vec<String>,
        site_origins: Vec<Url>,
        public_base: Url,
    ) -> Result<Rules, RulesError> {
        if prefixes.is_empty() {
            return Err(RulesError::NoPrefixes);
        }
        if let Some(bad) = prefixes.iter().find(|p| !valid_prefix(p)) {
            return Err(RulesError::BadPrefix(bad.clone()));
        }
        let origins = site_origins
            .into_iter()
            .map(|url| site_origin(&url).ok_or(RulesError::BadOrigin(url)))
            .collect::<Result<Vec<_>, _>>()?;
        if !valid_public_base(&public_base) {
            return Err(RulesError::BadPublicBase(public_base));
        }
        let (spellings, patterns) = spellings(&prefixes);
        let max_pattern_len = spellings.iter().map(String::len).max().unwrap_or(0);
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&spellings)?;
        let finders = match spellings.len() <= MAX_FINDERS {
            true => spellings
                .iter()
                .map(|s| memmem::Finder::new(s.as_bytes()).into_owned())
                .collect(),
            false => Vec::new(),
        };
        Ok(Rules {
            automaton,
            finders,
            patterns,
            max_pattern_len,
            prefixes,
            origins,
            public_base,
        })
    }

    /// Where rewritten URLs point.
    pub fn public_base(&self) -> &Url {
        &self.public_base
    }

    /// The managed prefixes, as configured.
    pub fn prefixes(&self) -> &[String] {
        &self.prefixes
    }

    /// Whether `host[:port]` is one of the configured site origins.
    pub(crate) fn is_site(&self, host: &[u8], port: Option<u16>) -> bool {
        self.origins.iter().any(|o| o.matches(host, port))
    }

    /// Whether a `Host` header value names one of the configured site origins (its port
    /// left aside: offload may listen on another port than the site's public one).
    pub fn names_the_site(&self, host: &[u8]) -> bool {
        let name = match host.iter().rposition(|&b| b == b':') {
            // Not the colons of an IPv6 literal (`[::1]`).
            Some(colon) if !host[colon..].contains(&b']') => &host[..colon],
            _ => host,
        };
        self.origins
            .iter()
            .any(|o| o.host.as_bytes().eq_ignore_ascii_case(name))
    }

    /// Whether a normalised path lies strictly below a managed prefix.
    pub(crate) fn is_managed(&self, path: &str) -> bool {
        self.prefixes
            .iter()
            .any(|p| path.len() > p.len() && path.starts_with(p.as_str()))
    }

    /// The decoded, normalised managed path of a request path (`/wp-content/uploads/a%20b.jpg`
    /// → `/wp-content/uploads/a b.jpg`), or `None` when it is not strictly below a managed
    /// prefix or could escape it (the same refusals as for URLs found in bodies).
    ///
    /// Only requests spelling a prefix literally count (the hot path pays one `starts_with`
    /// per prefix); an encoded spelling of the prefix itself goes to the app like any path.
    pub fn managed_path(&self, raw_path: &str) -> Option<String> {
        if !self
            .prefixes
            .iter()
            .any(|p| raw_path.starts_with(p.as_str()))
        {
            return None;
        }
        let mut scratch = Vec::new();
        let mut out = String::new();
        self.normalise(raw_path.as_bytes(), false, &mut scratch, &mut out)
            .then_some(out)
    }

    /// Decodes and normalises the raw path of a found URL into `out`.
    ///
    /// Returns false (and the URL stays as it is) for anything that could smuggle a path out of
    /// the prefix or confuse a store key: encoded slashes or backslashes, NUL and other control
    /// bytes, empty segments, `..` escaping the prefix, invalid UTF-8.
    pub(crate) fn normalise(
        &self,
        raw: &[u8],
        escaped: bool,
        scratch: &mut Vec<u8>,
        out: &mut String,
    ) -> bool {
        scratch.clear();
        out.clear();
        if !decode_path(raw, escaped, scratch) {
            return false;
        }
        let Ok(decoded) = std::str::from_utf8(scratch) else {
            return false;
        };
        resolve_dots(decoded, out) && self.is_managed(out)
    }
}

fn valid_prefix(prefix: &str) -> bool {
    prefix.len() >= 3
        && prefix.starts_with('/')
        && prefix.ends_with('/')
        && !prefix.contains(PREFIX_FORBIDDEN)
        && !prefix.chars().any(char::is_control)
        && prefix[1..prefix.len() - 1]
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
}

fn site_origin(url: &Url) -> Option<Origin> {
    let bare = matches!(url.path(), "" | "/") && url.query().is_none() && url.fragment().is_none();
    if bare { Origin::from_url(url) } else { None }
}

fn valid_public_base(url: &Url) -> bool {
    matches!(url.scheme(), "http" | "https")
        && url.host_str().is_some()
        && url.path().ends_with('/')
        && url.query().is_none()
        && url.fragment().is_none()
}

/// Every spelling of every prefix the scanner looks for, with what each spelling means.
fn spellings(prefixes: &[String]) -> (Vec<String>, Vec<Pattern>) {
    let mut spellings: Vec<String> = Vec::new();
    let mut patterns = Vec::new();
    for prefix in prefixes {
        let encoded = utf8_percent_encode(prefix, PATH_ENCODE).to_string();
        for plain in [prefix.clone(), encoded] {
            for (text, escaped) in [(plain.replace('/', "\\/"), true), (plain, false)] {
                if !spellings.contains(&text) {
                    spellings.push(text);
                    patterns.push(Pattern { escaped });
                }
            }
        }
    }
    (spellings, patterns)
}

/// JSON-unescapes (`\/`) and percent-decodes `raw` into `out`, refusing encoded separators.
fn decode_path(raw: &[u8], escaped: bool, out: &mut Vec<u8>) -> bool {
    // Nearly every real path has nothing to decode: check it in one pass and copy it whole.
    if memchr::memchr2(b'%', b'\\', raw).is_none() {
        out.extend_from_slice(raw);
        // A fold rather than `any`: without the early exit the check vectorises.
        return !raw.iter().fold(false, |found, &b| found | is_control(b));
    }
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        match b {
            b'\\' if escaped && raw.get(i + 1) == Some(&b'/') => {
                out.push(b'/');
                i += 2;
                continue;
            }
            b'\\' => return false,
            b'%' => {
                if let Some(v) = hex_pair(raw.get(i + 1..i + 3)) {
                    if matches!(v, b'/' | b'\\') || is_control(v) {
                        return false;
                    }
                    out.push(v);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            _ if is_control(b) => return false,
            _ => out.push(b),
        }
        i += 1;
    }
    true
}

fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

fn hex_pair(pair: Option<&[u8]>) -> Option<u8> {
    let pair = pair?;
    let hi = (pair[0] as char).to_digit(16)?;
    let lo = (pair[1] as char).to_digit(16)?;
    u8::try_from(hi * 16 + lo).ok()
}

/// Resolves `.` and `..` segments of an absolute path into `out`; false if `..` climbs above
/// the root or a segment is empty (`//`), which no upload path has.
fn resolve_dots(path: &str, out: &mut String) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    // Nearly every real path has no dot segment and no empty one: copy it as it is.
    let bytes = path.as_bytes();
    let dot_or_empty = |at: usize| matches!(bytes.get(at + 1), Some(b'.' | b'/'));
    if !memchr::memchr_iter(b'/', bytes).any(dot_or_empty) {
        out.push_str(path);
        return true;
    }
    let mut trailing = false;
    let mut segments = rest.split('/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        trailing = last && matches!(seg, "" | "." | "..");
        match seg {
            "" if !last => return false,
            "" | "." => {}
            ".." => match out.rfind('/') {
                Some(cut) => out.truncate(cut),
                None => return false,
            },
            seg => {
                out.push('/');
                out.push_str(seg);
            }
        }
    }
    if trailing || out.is_empty() {
        out.push('/');
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules::new(
            vec!["/wp-content/uploads/".into()],
            vec![Url::parse("https://example.com").unwrap()],
            Url::parse("https://cdn.example.com/").unwrap(),
        )
        .unwrap()
    }

    fn norm(raw: &str) -> Option<String> {
        let (mut scratch, mut out) = (Vec::new(), String::new());
        rules()
            .normalise(raw.as_bytes(), raw.contains("\\/"), &mut scratch, &mut out)
            .then_some(out)
    }

    #[test]
    fn normalises_paths() {
        let cases = [
            (
                "/wp-content/uploads/a.jpg",
                Some("/wp-content/uploads/a.jpg"),
            ),
            (
                "/wp-content/uploads/a%20b.jpg",
                Some("/wp-content/uploads/a b.jpg"),
            ),
            (
                "/wp-content/uploads/%C3%A9.jpg",
                Some("/wp-content/uploads/é.jpg"),
            ),
            (
                "\\/wp-content\\/uploads\\/a.jpg",
                Some("/wp-content/uploads/a.jpg"),
            ),
            (
                "/wp-content/uploads/2024/../a.jpg",
                Some("/wp-content/uploads/a.jpg"),
            ),
            (
                "/wp-content/uploads/./a.jpg",
                Some("/wp-content/uploads/a.jpg"),
            ),
            ("/wp-content/uploads/../../wp-config.php", None),
            ("/wp-content/uploads/%2e%2e/%2e%2e/wp-config.php", None),
            ("/wp-content/uploads/..%2f..%2fwp-config.php", None),
            ("/wp-content/uploads/a%5cb", None),
            ("/wp-content/uploads/a%00.jpg", None),
            ("/wp-content/uploads/a\\b", None),
            ("/wp-content/uploads//a.jpg", None),
            ("/wp-content/uploads/", None),
            ("/wp-content/uploads/..", None),
            ("/wp-content/uploads/%ff.jpg", None),
            (
                "/wp-content/uploads/100%.jpg",
                Some("/wp-content/uploads/100%.jpg"),
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(norm(raw).as_deref(), want, "{raw}");
        }
    }

    #[test]
    fn a_host_header_names_the_site_by_its_name() {
        let rules = Rules::new(
            vec!["/wp-content/uploads/".into()],
            vec!["https://Example.com".parse().unwrap()],
            "https://cdn.example.net/".parse().unwrap(),
        )
        .unwrap();
        for host in ["example.com", "EXAMPLE.com:8080", "example.com:443"] {
            assert!(rules.names_the_site(host.as_bytes()), "{host}");
        }
        for host in ["evil.test", "example.com.evil.test", "[::1]:443", ""] {
            assert!(!rules.names_the_site(host.as_bytes()), "{host}");
        }
    }

    #[test]
    fn origins_compare_host_and_effective_port() {
        let o = Origin::from_url(&Url::parse("http://Example.com:80").unwrap()).unwrap();
        assert!(o.matches(b"example.COM", None));
        assert!(!o.matches(b"example.com", Some(8080)));
        let o = Origin::from_url(&Url::parse("http://example.com:8080").unwrap()).unwrap();
        assert!(o.matches(b"example.com", Some(8080)));
        assert!(!o.matches(b"example.com", None));
        assert!(!o.matches(b"example.org", Some(8080)));
    }

    #[test]
    fn rejects_bad_config() {
        let base = Url::parse("https://cdn.example.com/").unwrap();
        let new = |p: &str, o: &str, b: &Url| {
            Rules::new(vec![p.into()], vec![Url::parse(o).unwrap()], b.clone())
        };
        assert!(matches!(
            new("wp/", "https://a", &base),
            Err(RulesError::BadPrefix(_))
        ));
        assert!(matches!(
            new("/a/../", "https://a", &base),
            Err(RulesError::BadPrefix(_))
        ));
        assert!(matches!(
            new("/", "https://a", &base),
            Err(RulesError::BadPrefix(_))
        ));
        assert!(matches!(
            new("/a/", "https://a/x", &base),
            Err(RulesError::BadOrigin(_))
        ));
        assert!(matches!(
            new("/a/", "ftp://a", &base),
            Err(RulesError::BadOrigin(_))
        ));
        let bad_base = Url::parse("https://cdn.example.com/x?y").unwrap();
        assert!(matches!(
            new("/a/", "https://a", &bad_base),
            Err(RulesError::BadPublicBase(_))
        ));
        assert!(matches!(
            Rules::new(vec![], vec![], base),
            Err(RulesError::NoPrefixes)
        ));
    }

    #[test]
    fn spells_prefixes_plain_escaped_and_encoded() {
        let (s, _) = spellings(&["/my files/".to_string()]);
        assert_eq!(
            s,
            [
                "\\/my files\\/",
                "/my files/",
                "\\/my%20files\\/",
                "/my%20files/"
            ]
        );
    }
}
