//! Start and end tags, split the way the WHATWG tokenizer splits them ("Tokenization",
//! §13.2.5: tag name, before/after attribute name, attribute value (double-quoted,
//! single-quoted, unquoted), self-closing start tag states), over raw bytes.
//!
//! Only positions are recorded: names and values are ranges of the input, values still
//! entity-encoded, exactly as they will be written back.

use std::ops::Range;

/// A complete tag, `buf[lt..end]`.
#[derive(Debug)]
pub(crate) struct Tag {
    pub(crate) name: Range<usize>,
    pub(crate) end: usize,
    pub(crate) end_tag: bool,
    pub(crate) self_closing: bool,
}

/// One attribute of a tag.
#[derive(Debug, Clone)]
pub(crate) struct Attr {
    pub(crate) name: Range<usize>,
    /// The value between its quotes; None for an attribute without `=`.
    pub(crate) value: Option<Range<usize>>,
    /// `"` or `'`; None for an unquoted value.
    pub(crate) quote: Option<u8>,
}

/// HTML's whitespace for the tokenizer: tab, LF, FF, CR, space.
pub(crate) fn is_space(b: u8) -> bool {
    matches!(b, b'\t' | b'\n' | b'\x0c' | b'\r' | b' ')
}

/// Bytes that end a tag name, an attribute name and an unquoted value, as lookup tables.
const TAG_NAME_END: [bool; 256] = table(b"\t\n\x0c\r />");
const ATTR_NAME_END: [bool; 256] = table(b"\t\n\x0c\r />=");
const UNQUOTED_END: [bool; 256] = table(b"\t\n\x0c\r >");

const fn table(bytes: &[u8]) -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < bytes.len() {
        t[bytes[i] as usize] = true;
        i += 1;
    }
    t
}

/// The first position from `i` on whose byte is in `end`; None if the input ends first.
fn find(buf: &[u8], i: usize, end: &[bool; 256]) -> Option<usize> {
    buf.get(i..)?
        .iter()
        .position(|&b| end[usize::from(b)])
        .map(|at| i + at)
}

/// The first position from `i` on that is not whitespace.
fn skip_space(buf: &[u8], i: usize) -> Option<usize> {
    buf.get(i..)?
        .iter()
        .position(|&b| !is_space(b))
        .map(|at| i + at)
}

/// The most attributes of a tag recorded: those past it are passed over (written as they
/// came, never rewritten). Each is 48 bytes, and `" a"` is one in two bytes of a tag: a tag
/// of a few MiB from the app would otherwise take ~100 MB while it is rewritten.
pub(crate) const MAX_ATTRS: usize = 1024;

/// Records `attr`, unless [`MAX_ATTRS`] are.
fn record(attrs: &mut Vec<Attr>, attr: Attr) {
    if attrs.len() < MAX_ATTRS {
        attrs.push(attr);
    }
}

/// Splits the tag starting at `buf[lt] == b'<'` (followed by a letter, or by `/` and a
/// letter), filling `attrs` with its first [`MAX_ATTRS`] attributes. None when the tag does
/// not end within `buf`.
pub(crate) fn parse(buf: &[u8], lt: usize, attrs: &mut Vec<Attr>) -> Option<Tag> {
    attrs.clear();
    let end_tag = buf.get(lt + 1) == Some(&b'/');
    let name_start = lt + 1 + usize::from(end_tag);
    let mut i = find(buf, name_start, &TAG_NAME_END)?;
    let name = name_start..i;
    let tag = |end, self_closing| Tag {
        name: name.clone(),
        end,
        end_tag,
        self_closing,
    };
    loop {
        // Before attribute name.
        i = skip_space(buf, i)?;
        match buf[i] {
            b'/' => {
                if *buf.get(i + 1)? == b'>' {
                    return Some(tag(i + 2, true));
                }
                i += 1;
                continue;
            }
            b'>' => return Some(tag(i + 1, false)),
            _ => {}
        }
        // Attribute name: its first byte may be anything else, '=' included.
        let name_start = i;
        i = find(buf, i + 1, &ATTR_NAME_END)?;
        let name = name_start..i;
        // After attribute name.
        i = skip_space(buf, i)?;
        if buf[i] != b'=' {
            // '/', '>' or the next attribute: the loop takes it from here.
            record(
                attrs,
                Attr {
                    name,
                    value: None,
                    quote: None,
                },
            );
            continue;
        }
        // Before attribute value.
        i = skip_space(buf, i + 1)?;
        match buf[i] {
            quote @ (b'"' | b'\'') => {
                let close = i + 1 + memchr::memchr(quote, &buf[i + 1..])?;
                record(
                    attrs,
                    Attr {
                        name,
                        value: Some(i + 1..close),
                        quote: Some(quote),
                    },
                );
                i = close + 1;
            }
            // A missing value: the attribute's value is empty and the tag ends.
            b'>' => {
                record(
                    attrs,
                    Attr {
                        name,
                        value: Some(i..i),
                        quote: None,
                    },
                );
                return Some(tag(i + 1, false));
            }
            _ => {
                let start = i;
                i = find(buf, i, &UNQUOTED_END)?;
                record(
                    attrs,
                    Attr {
                        name,
                        value: Some(start..i),
                        quote: None,
                    },
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An attribute as (name, value).
    type Split = (String, Option<String>);

    /// (tag name, attributes, end, self-closing).
    fn split(html: &str) -> Option<(String, Vec<Split>, usize, bool)> {
        let mut attrs = Vec::new();
        let tag = parse(html.as_bytes(), 0, &mut attrs)?;
        let s = |r: Range<usize>| html[r].to_string();
        let attrs = attrs
            .into_iter()
            .map(|a| (s(a.name), a.value.map(s)))
            .collect();
        Some((s(tag.name), attrs, tag.end, tag.self_closing))
    }

    fn a(name: &str, value: Option<&str>) -> Split {
        (name.to_string(), value.map(str::to_string))
    }

    #[test]
    fn splits_tags_as_the_tokenizer_does() {
        let t = split(r#"<img src="a>b" alt='x"y' data-x=1 hidden>rest"#).unwrap();
        assert_eq!(t.0, "img");
        assert_eq!(
            t.1,
            [
                a("src", Some("a>b")),
                a("alt", Some("x\"y")),
                a("data-x", Some("1")),
                a("hidden", None)
            ]
        );
        assert_eq!(t.2, r#"<img src="a>b" alt='x"y' data-x=1 hidden>"#.len());

        let t = split("<br/>").unwrap();
        assert_eq!((t.0.as_str(), t.3, t.2), ("br", true, 5));
        // '/' not followed by '>' is skipped; "=" may start a name; a missing value is empty.
        let t = split("<a / href = x =y type=>").unwrap();
        assert_eq!(
            t.1,
            [a("href", Some("x")), a("=y", None), a("type", Some(""))]
        );
        // No space between attributes after a quoted value.
        let t = split(r#"<a href="x"title="y">"#).unwrap();
        assert_eq!(t.1, [a("href", Some("x")), a("title", Some("y"))]);
        let t = split("<p\n\tclass\n=\n'c'\n>").unwrap();
        assert_eq!(t.1, [a("class", Some("c"))]);
        assert_eq!(split("</div foo=\">\">").unwrap().2, 14);
    }

    /// A tag of a million attributes takes no more than [`MAX_ATTRS`] records; its end is
    /// found all the same.
    #[test]
    fn attributes_past_the_most_are_passed_over() {
        let html = format!("<img src=x{}>after", " a".repeat(1_000_000));
        let mut attrs = Vec::new();
        let tag = parse(html.as_bytes(), 0, &mut attrs).unwrap();
        assert_eq!(tag.end, html.len() - "after".len());
        assert_eq!(attrs.len(), MAX_ATTRS);
        assert!(attrs.capacity() < 2 * MAX_ATTRS, "{}", attrs.capacity());
        assert_eq!(&html[attrs[0].name.clone()], "src");
    }

    #[test]
    fn unfinished_tags_need_more_input() {
        for html in [
            "<img",
            "<img ",
            "<img src",
            "<img src=",
            "<img src=\"a>",
            "<img src='a",
            "<img src=a",
            "<img /",
            "</p",
        ] {
            assert!(split(html).is_none(), "{html}");
        }
    }
}
