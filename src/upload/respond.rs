//! `respond` mode: offload stores the files and answers `201` itself with JSON describing
//! them; no app involved.

use http::{Response, StatusCode};
use serde_json::{Map, Value, json};

use super::UploadContext;
use super::error::{UploadError, json_response};
use super::form::{self, Item};
use super::multipart::BodyKind;
use super::routes::UploadRoute;
use super::sink::Committed;
use crate::body::Body;

pub async fn handle(
    route: &UploadRoute,
    kind: BodyKind,
    body: Body,
    ctx: &UploadContext,
) -> Result<Response<Body>, UploadError> {
    let mut committed = Committed::new(ctx.store.clone());
    let items = match form::read(route, ctx, kind, super::client_stream(body), &mut committed).await
    {
        Ok(items) => items,
        Err(e) => {
            committed.rollback().await;
            return Err(e);
        }
    };
    let _ = committed.keep();
    Ok(json_response(StatusCode::CREATED, &describe(&items)))
}

/// `{"files": [...], "fields": {...}}`; a field sent more than once becomes an array.
fn describe(items: &[Item]) -> Value {
    let mut files = Vec::new();
    let mut fields = Map::new();
    for item in items {
        match item {
            Item::File(f) => files.push(json!(f)),
            Item::Field { name, value, .. } => {
                let text = Value::String(String::from_utf8_lossy(value).into_owned());
                match fields.get_mut(name) {
                    None => {
                        fields.insert(name.clone(), text);
                    }
                    Some(Value::Array(list)) => list.push(text),
                    Some(first) => *first = Value::Array(vec![first.take(), text]),
                }
            }
        }
    }
    json!({ "files": files, "fields": fields })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upload::sink::StoredFile;

    #[test]
    fn describes_files_and_fields() {
        let field = |name: &str, v: &'static str| Item::Field {
            name: name.into(),
            headers: Default::default(),
            value: v.into(),
        };
        let file = StoredFile {
            field: "f".into(),
            filename: "a.png".into(),
            key: "k".into(),
            url: "http://x/k".into(),
            size: 1,
            sha256: "00".into(),
            content_type: "image/png".into(),
        };
        let v = describe(&[
            field("a", "1"),
            Item::File(file),
            field("t", "x"),
            field("t", "y"),
        ]);
        assert_eq!(v["files"][0]["key"], "k");
        assert_eq!(v["files"][0]["field"], "f");
        assert_eq!(v["fields"]["a"], "1");
        assert_eq!(v["fields"]["t"], json!(["x", "y"]));
    }
}
