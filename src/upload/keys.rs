//! Key templates: `{prefix}uploads/{yyyy}/{mm}/{uuid}/{filename}` and friends, parsed once per
//! route and rendered per file.
//!
//! `{sha256}` is refused: a key must be known before the first byte streams into the store
//! (the `Store` trait has no server-side copy), and supporting it would mean spooling every
//! file to a temporary file first. A route that wants content addressing can use `{uuid}`.

use time::OffsetDateTime;

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Prefix,
    Year,
    Month,
    Day,
    Uuid,
    Filename,
    Ext,
}

/// A parsed key template.
#[derive(Debug, Clone)]
pub struct KeyTemplate {
    pieces: Vec<Piece>,
}

/// What a key is made of, for one file.
pub struct KeyInput<'a> {
    pub prefix: &'a str,
    /// Already sanitised (see `policy::sanitize_filename`).
    pub filename: &'a str,
    pub now: OffsetDateTime,
}

impl KeyTemplate {
    /// Parses `template`; an unknown placeholder, `{sha256}` or an unclosed brace is an error
    /// naming the reason.
    pub fn parse(template: &str) -> Result<KeyTemplate, String> {
        let mut pieces = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                pieces.push(Piece::Literal(rest[..open].to_string()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| format!("unclosed '{{' in {template:?}"))?;
            pieces.push(match &after[..close] {
                "prefix" => Piece::Prefix,
                "yyyy" => Piece::Year,
                "mm" => Piece::Month,
                "dd" => Piece::Day,
                "uuid" => Piece::Uuid,
                "filename" => Piece::Filename,
                "ext" => Piece::Ext,
                "sha256" => {
                    return Err("{sha256} is not supported: keys must be known before the \
                                bytes stream into the store; use {uuid}"
                        .into());
                }
                other => return Err(format!("unknown placeholder {{{other}}}")),
            });
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Literal(rest.to_string()));
        }
        // `{filename}` alone does not: two uploads of `photo.jpg` would get one key, the
        // second would replace the first, and a failed one would delete it.
        if !pieces.iter().any(|p| matches!(p, Piece::Uuid)) {
            return Err(
                "needs {uuid}, so that each upload's key is its own (two files of one \
                        name would otherwise replace each other)"
                    .into(),
            );
        }
        Ok(KeyTemplate { pieces })
    }

    /// The key for one file. Literal parts come from the config; the filename is sanitised,
    /// so the key never holds `..` segments or control characters.
    pub fn render(&self, input: &KeyInput<'_>) -> String {
        let mut key = String::with_capacity(64 + input.filename.len());
        for piece in &self.pieces {
            match piece {
                Piece::Literal(s) => key.push_str(s),
                Piece::Prefix => key.push_str(input.prefix),
                Piece::Year => key.push_str(&format!("{:04}", input.now.year())),
                Piece::Month => key.push_str(&format!("{:02}", u8::from(input.now.month()))),
                Piece::Day => key.push_str(&format!("{:02}", input.now.day())),
                Piece::Uuid => key.push_str(&uuid::Uuid::new_v4().to_string()),
                Piece::Filename => key.push_str(input.filename),
                Piece::Ext => key.push_str(&super::policy::extension(input.filename)),
            }
        }
        key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(filename: &str) -> KeyInput<'_> {
        KeyInput {
            prefix: "site-a/",
            filename,
            // 2024-03-07 10:00 UTC
            now: OffsetDateTime::from_unix_timestamp(1_709_805_600).unwrap(),
        }
    }

    #[test]
    fn default_template_renders() {
        let t = KeyTemplate::parse("{prefix}uploads/{yyyy}/{mm}/{uuid}/{filename}").unwrap();
        let key = t.render(&input("photo.jpg"));
        let parts: Vec<_> = key.split('/').collect();
        assert_eq!(parts[0], "site-a");
        assert_eq!(parts[1], "uploads");
        assert_eq!(parts[2], "2024");
        assert_eq!(parts[3], "03");
        assert_eq!(parts[4].len(), 36, "{key}");
        assert_eq!(parts[5], "photo.jpg");
        // Two renders never collide.
        assert_ne!(t.render(&input("a")), t.render(&input("a")));
    }

    #[test]
    fn day_and_ext() {
        let t = KeyTemplate::parse("{dd}/{uuid}.{ext}").unwrap();
        let key = t.render(&input("Photo.JPG"));
        assert!(key.starts_with("07/"), "{key}");
        assert!(key.ends_with(".jpg"), "{key}");
    }

    #[test]
    fn bad_templates_are_refused() {
        assert!(
            KeyTemplate::parse("{prefix}{sha256}")
                .unwrap_err()
                .contains("sha256")
        );
        assert!(
            KeyTemplate::parse("{nope}/{uuid}")
                .unwrap_err()
                .contains("nope")
        );
        assert!(
            KeyTemplate::parse("{uuid")
                .unwrap_err()
                .contains("unclosed")
        );
        for without_uuid in ["{yyyy}/x", "{prefix}u/{filename}"] {
            assert!(
                KeyTemplate::parse(without_uuid)
                    .unwrap_err()
                    .contains("needs {uuid}"),
                "{without_uuid}"
            );
        }
    }
}
