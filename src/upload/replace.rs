//! `replace` mode: files go to the store, and the app receives the form with each file part
//! replaced by text fields describing the stored object (`NAME[key]`, `NAME[url]`, …). The
//! new body is built only after every file is stored, so it holds text fields only: small.

use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response, header};

use super::UploadContext;
use super::error::UploadError;
use super::form::{self, Item};
use super::multipart::BodyKind;
use super::routes::UploadRoute;
use super::sink::{Committed, StoredFile};
use crate::body::{self, Body};
use crate::config::FieldStyle;

pub async fn handle(
    route: &UploadRoute,
    kind: BodyKind,
    req: Request<Body>,
    ctx: &UploadContext,
) -> Result<Response<Body>, UploadError> {
    let (mut parts, body) = req.into_parts();
    let mut committed = Committed::new(ctx.store.clone());
    let boundary = match &kind {
        BodyKind::Multipart(b) => b.clone(),
        // A raw file body becomes a one-part form under a fresh boundary.
        _ => format!("offload-{}", uuid::Uuid::new_v4().simple()),
    };
    let is_raw = matches!(kind, BodyKind::Raw(_));
    let items = match form::read(route, ctx, kind, super::client_stream(body), &mut committed).await
    {
        Ok(items) => items,
        Err(e) => {
            committed.rollback().await;
            return Err(e);
        }
    };
    let new_body = encode(&items, &boundary, route.field_style);
    set_body_headers(&mut parts.headers, &boundary, is_raw, new_body.len());
    let length = Some(new_body.len() as u64);
    let req = Request::from_parts(
        parts,
        committed.keep_once_sent(body::full(new_body), length),
    );
    match ctx.upstream.forward(req, &ctx.client).await {
        // The app refused the form: the objects it will never reference go too.
        Ok(resp) if resp.status().is_client_error() || resp.status().is_server_error() => {
            committed.rollback().await;
            Ok(resp)
        }
        Ok(resp) => {
            let _ = committed.keep();
            Ok(resp)
        }
        Err(e) => {
            committed.rollback().await;
            Err(e.into())
        }
    }
}

fn set_body_headers(headers: &mut HeaderMap, boundary: &str, is_raw: bool, len: usize) {
    headers.remove(header::TRANSFER_ENCODING);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if is_raw {
        headers.remove(header::CONTENT_DISPOSITION);
        if let Ok(ct) = HeaderValue::from_str(&format!("multipart/form-data; boundary={boundary}"))
        {
            headers.insert(header::CONTENT_TYPE, ct);
        }
    }
}

/// The form again: text fields with their original headers and bytes, files as text fields.
fn encode(items: &[Item], boundary: &str, style: FieldStyle) -> Bytes {
    let mut out = BytesMut::new();
    // How many files each `name[]` field has had so far: each gets an index of its own.
    let mut listed: HashMap<&str, usize> = HashMap::new();
    for item in items {
        match item {
            Item::Field { headers, value, .. } => {
                part_start(&mut out, boundary);
                for (name, v) in headers {
                    out.put_slice(title_case(name.as_str()).as_bytes());
                    out.put_slice(b": ");
                    out.put_slice(v.as_bytes());
                    out.put_slice(b"\r\n");
                }
                out.put_slice(b"\r\n");
                out.put_slice(value);
                out.put_slice(b"\r\n");
            }
            Item::File(file) => {
                let names = FieldNames::of(&file.field, style, &mut listed);
                file_fields(&mut out, boundary, file, &names);
            }
        }
    }
    out.put_slice(format!("--{boundary}--\r\n").as_bytes());
    out.freeze()
}

fn part_start(out: &mut BytesMut, boundary: &str) {
    out.put_slice(format!("--{boundary}\r\n").as_bytes());
}

/// How the text fields standing for one file are named after its field: `NAME[key]` or
/// `NAME_key`. A field named as a list (`files[]`, several files at once: PHP appends each
/// value to the list) would make a list element of every `files[][key]`: each file takes
/// an index of its own instead (`files[0][key]`, `files[1][key]`), and in the underscore
/// style each suffix is the list (`files_key[]`), in the files' order.
enum FieldNames<'a> {
    Brackets(&'a str),
    Indexed(&'a str, usize),
    Underscore(&'a str),
    UnderscoreListed(&'a str),
}

impl<'a> FieldNames<'a> {
    fn of(field: &'a str, style: FieldStyle, listed: &mut HashMap<&'a str, usize>) -> Self {
        let list = field.strip_suffix("[]").filter(|base| !base.is_empty());
        match (style, list) {
            (FieldStyle::Brackets, None) => FieldNames::Brackets(field),
            (FieldStyle::Brackets, Some(base)) => {
                let next = listed.entry(base).or_default();
                *next += 1;
                FieldNames::Indexed(base, *next - 1)
            }
            (FieldStyle::Underscore, None) => FieldNames::Underscore(field),
            (FieldStyle::Underscore, Some(base)) => FieldNames::UnderscoreListed(base),
        }
    }

    fn name(&self, suffix: &str) -> String {
        match self {
            FieldNames::Brackets(field) => format!("{field}[{suffix}]"),
            FieldNames::Indexed(base, index) => format!("{base}[{index}][{suffix}]"),
            FieldNames::Underscore(field) => format!("{field}_{suffix}"),
            FieldNames::UnderscoreListed(base) => format!("{base}_{suffix}[]"),
        }
    }
}

fn file_fields(out: &mut BytesMut, boundary: &str, file: &StoredFile, names: &FieldNames) {
    let size = file.size.to_string();
    let values: [(&str, &str); 6] = [
        ("key", &file.key),
        ("url", &file.url),
        ("size", &size),
        ("sha256", &file.sha256),
        ("content_type", &file.content_type),
        ("filename", &file.filename),
    ];
    for (suffix, value) in values {
        let name = names.name(suffix);
        part_start(out, boundary);
        out.put_slice(
            format!(
                "Content-Disposition: form-data; name=\"{}\"\r\n\r\n",
                escape_name(&name)
            )
            .as_bytes(),
        );
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
}

/// WHATWG's escaping of names in multipart headers.
fn escape_name(name: &str) -> String {
    name.replace('"', "%22")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// `content-disposition` → `Content-Disposition`: parsers ignore case, but apps that compare
/// header names literally exist.
fn title_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        out.push(if upper { c.to_ascii_uppercase() } else { c });
        upper = c == '-';
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_fields_and_files() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_static("form-data; name=\"title\""),
        );
        let file = StoredFile {
            field: "async-upload".into(),
            filename: "a b.png".into(),
            key: "u/1/a b.png".into(),
            url: "http://cdn/u/1/a%20b.png".into(),
            size: 42,
            sha256: "ab".into(),
            content_type: "image/png".into(),
        };
        let items = [
            Item::Field {
                name: "title".into(),
                headers,
                value: Bytes::from_static(b"hi\r\nthere"),
            },
            Item::File(file),
        ];
        let body = encode(&items, "XyZ", FieldStyle::Brackets);
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(text.starts_with(
            "--XyZ\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nhi\r\nthere\r\n"
        ));
        assert!(text.contains("name=\"async-upload[key]\"\r\n\r\nu/1/a b.png\r\n"));
        assert!(text.contains("name=\"async-upload[size]\"\r\n\r\n42\r\n"));
        assert!(text.ends_with("--XyZ--\r\n"));
        let under = encode(&items, "XyZ", FieldStyle::Underscore);
        assert!(String::from_utf8_lossy(&under).contains("name=\"async-upload_sha256\""));
    }

    /// Several files in a list field (`Filedata[]`, Joomla's media manager) each keep
    /// their fields together; other fields are left as they are.
    #[test]
    fn files_of_a_list_field_are_indexed() {
        let file = |field: &str, key: &str| {
            Item::File(StoredFile {
                field: field.into(),
                filename: "f".into(),
                key: key.into(),
                url: "u".into(),
                size: 1,
                sha256: "s".into(),
                content_type: "t".into(),
            })
        };
        let items = [
            file("Filedata[]", "k0"),
            file("other", "k1"),
            file("Filedata[]", "k2"),
            file("[]", "k3"),
        ];
        let names = |style| {
            let body = encode(&items, "B", style);
            String::from_utf8(body.to_vec())
                .unwrap()
                .split("\r\n")
                .filter_map(|line| line.strip_prefix("Content-Disposition: form-data; name="))
                .filter(|name| name.contains("key"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(FieldStyle::Brackets),
            [
                "\"Filedata[0][key]\"",
                "\"other[key]\"",
                "\"Filedata[1][key]\"",
                "\"[][key]\""
            ]
        );
        assert_eq!(
            names(FieldStyle::Underscore),
            [
                "\"Filedata_key[]\"",
                "\"other_key\"",
                "\"Filedata_key[]\"",
                "\"[]_key\""
            ]
        );
    }
}
