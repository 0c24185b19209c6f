//! What may be stored, under which name, with which type: filename sanitising, extension and
//! type lists, content sniffing, and the `Content-Type`/`Content-Disposition` an object gets.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use unicode_normalization::UnicodeNormalization;

use super::error::UploadError;
use crate::config::UploadRouteConfig;

/// Longest sanitised filename, in bytes (S3 keys are at most 1024 bytes in all).
pub const MAX_FILENAME_BYTES: usize = 200;

/// How many leading bytes the sniffer looks at.
pub const SNIFF_BYTES: usize = 8192;

/// Types a browser would run or render as a document: stored as attachments unless the route
/// lists them in `inline_types`.
const ACTIVE_TYPES: &[&str] = &[
    "text/html",
    "application/xhtml+xml",
    "image/svg+xml",
    "text/xml",
    "application/xml",
    "text/javascript",
    "application/javascript",
    "application/x-javascript",
    "application/ecmascript",
    "text/ecmascript",
    "application/x-httpd-php",
    "text/x-shellscript",
];

/// The route's rules, compiled once.
#[derive(Debug, Clone)]
pub struct Policy {
    allowed_extensions: Vec<String>,
    denied_extensions: Vec<String>,
    allowed_types: Vec<String>,
    inline_types: Vec<String>,
}

/// What an accepted file is stored with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub content_type: String,
    pub content_disposition: Option<String>,
}

impl Policy {
    pub fn new(route: &UploadRouteConfig) -> Policy {
        let lower = |v: &[String]| -> Vec<String> {
            v.iter()
                .map(|s| s.trim().trim_start_matches('.').to_ascii_lowercase())
                .collect()
        };
        Policy {
            allowed_extensions: lower(&route.allowed_extensions),
            denied_extensions: lower(&route.denied_extensions),
            allowed_types: lower(&route.allowed_types),
            inline_types: lower(&route.inline_types),
        }
    }

    /// Refuses a denied extension, or one outside the allow list. Every dot-separated
    /// segment after the first is checked against the deny list, because some servers
    /// (Apache's `AddHandler`) execute `shell.php.jpg`.
    pub fn check_extension(&self, filename: &str) -> Result<(), UploadError> {
        let ext = extension(filename);
        let mut segments = filename.split('.').skip(1).map(str::to_ascii_lowercase);
        if let Some(bad) = segments.find(|s| self.denied_extensions.contains(s)) {
            return Err(UploadError::ExtensionDenied(bad));
        }
        if !self.allowed_extensions.is_empty() && !self.allowed_extensions.contains(&ext) {
            return Err(UploadError::ExtensionDenied(ext));
        }
        Ok(())
    }

    /// Decides the stored type from the first bytes, the declared type and the extension,
    /// refusing a declared image whose bytes are not one (415).
    pub fn decide(
        &self,
        filename: &str,
        declared: Option<&str>,
        head: &[u8],
    ) -> Result<Decision, UploadError> {
        let declared = declared.map(essence).filter(|d| d.contains('/'));
        let sniffed = sniff(head);
        if let Some(d) = &declared
            && d.starts_with("image/")
            && !sniffed.is_some_and(|s| s.starts_with("image/"))
        {
            return Err(UploadError::TypeMismatch {
                declared: d.clone(),
            });
        }
        let content_type = sniffed
            .map(str::to_string)
            .or(declared.filter(|d| !is_active(d)))
            .or_else(|| {
                mime_guess::from_path(filename)
                    .first_raw()
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "application/octet-stream".to_string());
        if !self.allowed_types.is_empty() && !matches_any(&self.allowed_types, &content_type) {
            return Err(UploadError::TypeDenied(content_type));
        }
        let content_disposition = (is_active(&content_type)
            && !matches_any(&self.inline_types, &content_type))
        .then(|| attachment(filename));
        Ok(Decision {
            content_type,
            content_disposition,
        })
    }
}

/// `Content-Disposition: attachment` for a type a browser would run (HTML, SVG, XML,
/// JavaScript), `None` for any other: what every object stored without an upload route's
/// decision (origin pull, mirror copies of the app's files) gets, so that the store never
/// serves active content inline in the site's origin.
pub fn download_disposition(content_type: &str, filename: &str) -> Option<String> {
    is_active(&essence(content_type)).then(|| attachment(filename))
}

/// `type/subtype`, lowercase, without parameters.
fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

fn is_active(content_type: &str) -> bool {
    ACTIVE_TYPES.contains(&content_type) || content_type.ends_with("+xml")
}

/// Exact match, or a family when the entry ends with `/` (`image/`).
fn matches_any(list: &[String], content_type: &str) -> bool {
    list.iter().any(|entry| {
        if entry.ends_with('/') {
            content_type.starts_with(entry.as_str())
        } else {
            entry == content_type
        }
    })
}

/// The type the bytes show, if they show one: text formats a browser or server would run are
/// recognised here (infer knows binary magic numbers, not PHP or SVG).
pub fn sniff(head: &[u8]) -> Option<&'static str> {
    let text = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    let start = text
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(text.len());
    let lead: Vec<u8> = text[start..]
        .iter()
        .take(512)
        .map(u8::to_ascii_lowercase)
        .collect();
    let has = |needle: &[u8]| lead.windows(needle.len()).any(|w| w == needle);
    if lead.starts_with(b"<?php") || lead.starts_with(b"<?=") {
        return Some("application/x-httpd-php");
    }
    if lead.starts_with(b"<svg") || (lead.starts_with(b"<?xml") && has(b"<svg")) {
        return Some("image/svg+xml");
    }
    const HTML: [&[u8]; 7] = [
        b"<!doctype html",
        b"<html",
        b"<script",
        b"<head",
        b"<body",
        b"<iframe",
        b"<!--",
    ];
    if HTML.iter().any(|p| lead.starts_with(p)) {
        return Some("text/html");
    }
    if lead.starts_with(b"<?xml") {
        return Some("application/xml");
    }
    infer::get(head).map(|t| t.mime_type())
}

/// `attachment` with the filename twice: an ASCII fallback and the exact UTF-8 name.
fn attachment(filename: &str) -> String {
    const ATTR: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'.')
        .remove(b'-')
        .remove(b'_')
        .remove(b'~');
    let fallback: String = filename
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!(
        "attachment; filename=\"{fallback}\"; filename*=UTF-8''{}",
        utf8_percent_encode(filename, ATTR)
    )
}

/// The lowercase extension without its dot, or "".
pub fn extension(filename: &str) -> String {
    filename
        .rsplit_once('.')
        .map(|(_, ext)| ext.to_ascii_lowercase())
        .unwrap_or_default()
}

/// A filename safe to put in a key and a header: path parts (`/` and `\`) stripped, control
/// and bidi-override characters removed, Unicode NFC, whitespace collapsed, trailing dots and
/// spaces trimmed (Windows drops them, which would hide an extension), at most
/// [`MAX_FILENAME_BYTES`] bytes keeping the extension; empty, `.` and `..` become `file`.
pub fn sanitize_filename(raw: &str) -> String {
    let base = raw.rsplit(['/', '\\']).next().unwrap_or_default();
    let mut clean = String::with_capacity(base.len());
    let mut last_space = true; // drops leading whitespace
    // Controls go before normalising: removed after, they could leave combining marks next
    // to each other out of canonical order (the result would not be NFC, and a second pass
    // would change it).
    let visible = base
        .chars()
        .filter(|&c| !c.is_control() && !is_bidi_control(c));
    for c in visible.nfc() {
        if c.is_whitespace() {
            if !last_space {
                clean.push(' ');
            }
            last_space = true;
        } else {
            clean.push(c);
            last_space = false;
        }
    }
    let trimmed = clean.trim_end_matches([' ', '.']);
    if trimmed.is_empty() || trimmed == "." || trimmed.chars().all(|c| c == '.') {
        return "file".to_string();
    }
    // The cap may cut the stem just after a dot or a space: trim again.
    let capped = cap_length(trimmed);
    let capped = capped.trim_end_matches([' ', '.']);
    if capped.is_empty() {
        return "file".to_string();
    }
    // The folder store's temporary files begin so, and it refuses keys that do (one could
    // be taken for a write under way): a client's name is no store failure.
    if capped.starts_with(crate::store::TEMP_PREFIX) {
        return format!("_{capped}");
    }
    capped.to_string()
}

/// Bidi overrides/isolates (U+202A–202E, U+2066–2069) and marks (U+200E/200F), which make
/// `<U+202E>gpj.php` read as `php.jpg`.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}')
}

/// Cuts the stem (on a char boundary) so the whole name fits, keeping a short extension.
fn cap_length(name: &str) -> String {
    if name.len() <= MAX_FILENAME_BYTES {
        return name.to_string();
    }
    let ext = match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() && ext.len() <= 16 => &name[stem.len()..],
        _ => "",
    };
    let mut cut = MAX_FILENAME_BYTES - ext.len();
    let stem = &name[..name.len() - ext.len()];
    while !stem.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{ext}", &stem[..cut])
}

#[cfg(test)]
mod tests {
    #[test]
    fn capped_names_never_end_in_a_dot() {
        // Found by the `filename` fuzz target: a long name whose cut fell after dots.
        let raw = format!("{}{}{}", ",".repeat(150), ".".repeat(60), "x".repeat(100));
        let name = sanitize_filename(&raw);
        assert!(name.len() <= MAX_FILENAME_BYTES, "{}", name.len());
        assert!(!name.ends_with(['.', ' ']), "{name:?}");
        assert_eq!(sanitize_filename(&name), name);
    }

    #[test]
    fn sanitized_names_are_nfc_and_stable() {
        // Found by the `filename` fuzz target: backspaces between two combining marks out of
        // canonical order.
        let raw = "\u{11}o \u{611}\u{8}\u{8}\u{8}\u{619}`&";
        let once = sanitize_filename(raw);
        assert!(unicode_normalization::is_nfc(&once), "{once:?}");
        assert_eq!(sanitize_filename(&once), once);
    }

    #[test]
    fn active_types_download_others_not() {
        for ct in [
            "image/svg+xml",
            "text/html; charset=utf-8",
            "TEXT/XML",
            "application/atom+xml",
        ] {
            let cd = download_disposition(ct, "a b.svg").expect(ct);
            assert!(cd.starts_with("attachment"), "{ct}: {cd}");
        }
        for ct in ["image/png", "image/jpeg", "text/css", "application/pdf"] {
            assert_eq!(download_disposition(ct, "x"), None, "{ct}");
        }
    }

    use super::*;

    fn policy() -> Policy {
        Policy::new(&UploadRouteConfig::default())
    }

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0";

    #[test]
    fn hostile_filenames() {
        assert_eq!(sanitize_filename("../../etc/passwd"), "passwd");
        assert_eq!(sanitize_filename("C:\\Users\\x\\evil.exe"), "evil.exe");
        assert_eq!(sanitize_filename("a\0b.txt"), "ab.txt");
        // The folder store's temporary names are its own.
        assert_eq!(sanitize_filename(".offload-tmp-.jpg"), "_.offload-tmp-.jpg");
        assert_eq!(sanitize_filename("\u{202E}gpj.php"), "gpj.php");
        assert_eq!(sanitize_filename("x\u{2066}y\u{2069}.txt"), "xy.txt");
        assert_eq!(
            sanitize_filename("  many   \t spaces  .jpg"),
            "many spaces .jpg"
        );
        assert_eq!(sanitize_filename("evil.php. . ."), "evil.php");
        assert_eq!(sanitize_filename(""), "file");
        assert_eq!(sanitize_filename(".."), "file");
        assert_eq!(sanitize_filename("dir/"), "file");
        assert_eq!(sanitize_filename("fïlé 名前.jpg"), "fïlé 名前.jpg");
    }

    #[test]
    fn unicode_is_normalised() {
        // "e" + combining acute (NFD) becomes "é" (NFC).
        assert_eq!(sanitize_filename("cafe\u{301}.txt"), "caf\u{e9}.txt");
    }

    #[test]
    fn long_names_keep_their_extension() {
        let long = format!("{}.jpeg", "a".repeat(1000));
        let s = sanitize_filename(&long);
        assert_eq!(s.len(), MAX_FILENAME_BYTES);
        assert!(s.ends_with(".jpeg"));
        let wide = format!("{}.png", "名".repeat(1000));
        let s = sanitize_filename(&wide);
        assert!(s.len() <= MAX_FILENAME_BYTES && s.ends_with(".png"));
        assert!(s.starts_with('名'));
    }

    #[test]
    fn extensions() {
        let p = policy();
        assert!(p.check_extension("photo.JPG").is_ok());
        assert!(p.check_extension("noext").is_ok());
        assert!(
            matches!(p.check_extension("x.PHP"), Err(UploadError::ExtensionDenied(e)) if e == "php")
        );
        assert!(p.check_extension("shell.php.jpg").is_err());
        assert!(p.check_extension(".htaccess").is_err());
        let only_images = Policy::new(&UploadRouteConfig {
            allowed_extensions: vec!["jpg".into(), ".PNG".into()],
            ..UploadRouteConfig::default()
        });
        assert!(only_images.check_extension("a.png").is_ok());
        assert!(only_images.check_extension("a.pdf").is_err());
    }

    #[test]
    fn declared_image_must_be_one() {
        let p = policy();
        assert!(p.decide("a.png", Some("image/png"), PNG).is_ok());
        for bytes in [
            &b"<?php system($_GET['c']);"[..],
            b"<html><script>",
            b"just text",
        ] {
            let err = p.decide("a.png", Some("image/png"), bytes).unwrap_err();
            assert!(matches!(err, UploadError::TypeMismatch { .. }), "{bytes:?}");
        }
    }

    #[test]
    fn stored_type_prefers_the_bytes() {
        let p = policy();
        let d = p
            .decide("a.bin", Some("application/octet-stream"), PNG)
            .unwrap();
        assert_eq!(d.content_type, "image/png");
        assert_eq!(d.content_disposition, None);
        // Not sniffable: the declared type when safe…
        let d = p
            .decide("a.csv", Some("text/csv; charset=utf-8"), b"a,b\n1,2")
            .unwrap();
        assert_eq!(d.content_type, "text/csv");
        // …else the extension's.
        let d = p.decide("notes.txt", None, b"hello").unwrap();
        assert_eq!(d.content_type, "text/plain");
        let d = p.decide("blob", None, b"hello").unwrap();
        assert_eq!(d.content_type, "application/octet-stream");
    }

    #[test]
    fn active_types_are_attachments() {
        let p = policy();
        let d = p
            .decide("x.html", Some("text/plain"), b"<!DOCTYPE html><p>")
            .unwrap();
        assert_eq!(d.content_type, "text/html");
        let cd = d.content_disposition.unwrap();
        assert!(cd.starts_with("attachment; filename=\"x.html\""), "{cd}");
        let d = p
            .decide("i.svg", Some("image/svg+xml"), b"<svg xmlns=''/>")
            .unwrap();
        assert_eq!(d.content_type, "image/svg+xml");
        assert!(d.content_disposition.is_some());
        let inline = Policy::new(&UploadRouteConfig {
            inline_types: vec!["image/svg+xml".into()],
            ..UploadRouteConfig::default()
        });
        let d = inline
            .decide("i.svg", None, b"<?xml version='1.0'?><svg/>")
            .unwrap();
        assert_eq!(d.content_disposition, None);
        let d = p
            .decide("名.js", Some("text/javascript"), b"alert(1)")
            .unwrap();
        let cd = d.content_disposition.unwrap();
        assert!(cd.contains("filename*=UTF-8''%E5%90%8D.js"), "{cd}");
    }

    #[test]
    fn allowed_types_by_family() {
        let images = Policy::new(&UploadRouteConfig {
            allowed_types: vec!["image/".into()],
            ..UploadRouteConfig::default()
        });
        assert!(images.decide("a.png", None, PNG).is_ok());
        let err = images.decide("a.pdf", None, b"%PDF-1.4\n").unwrap_err();
        assert!(matches!(err, UploadError::TypeDenied(t) if t == "application/pdf"));
    }

    /// The client's words are quoted where they go into a message (and a log line), so that
    /// a content type cannot pass for more fields: `status=999 path="/fake"`.
    #[test]
    fn client_text_in_messages_is_quoted() {
        let denied = UploadError::TypeDenied("text/x status=999 path=\"/fake\"".into());
        assert_eq!(
            denied.to_string(),
            "content type not allowed: \"text/x status=999 path=\\\"/fake\\\"\""
        );
        let mismatch = UploadError::TypeMismatch {
            declared: "image/png x=1".into(),
        };
        assert_eq!(
            mismatch.to_string(),
            "file content does not match its declared type \"image/png x=1\""
        );
    }
}
