//! Every way an upload can fail, sorted by side, and the one place that maps them to a status
//! and a JSON body.

use http::{Response, StatusCode, header};
use serde_json::json;

use crate::body::{self, Body, Stalled};
use crate::config::human_size;
use crate::proxy::ProxyError;
use crate::store::StoreError;

/// Why an upload failed. The variant's side picks the status: the client's fault is a 4xx,
/// the store's a 502/503, the app's whatever the proxy says for it.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    // --- the client's side (4xx) ---
    #[error("file too large")]
    FileTooLarge { max: u64 },
    #[error("request body too large")]
    BodyTooLarge { max: u64 },
    #[error("form field too large")]
    FieldTooLarge { max: u64 },
    #[error("form fields too large in all")]
    FieldsTooLarge { max: u64 },
    #[error("too many parts")]
    TooManyParts { max: usize },
    /// A fixed bound, not a key (`routes::MAX_PART_HEADER_SIZE`): named in the message.
    #[error("part headers too large (at most {} per part)", human_size(*max))]
    PartHeadersTooLarge { max: u64 },
    #[error("bad multipart boundary: {0}")]
    Boundary(&'static str),
    /// An upload's `Content-Type` that cannot be read as one value.
    #[error("bad Content-Type: {0}")]
    ContentType(&'static str),
    #[error("malformed multipart body: {0}")]
    Malformed(String),
    #[error("file extension not allowed: {0:?}")]
    ExtensionDenied(String),
    #[error("content type not allowed: {0:?}")]
    TypeDenied(String),
    #[error("file content does not match its declared type {declared:?}")]
    TypeMismatch { declared: String },
    /// The client's body stream failed (disconnect, reset): nobody is listening any more.
    #[error("client body failed: {0}")]
    ClientBody(String),
    /// The client's body stopped coming for `server.idle_timeout`: `408`.
    #[error("request body stalled: {0}")]
    ClientStalled(Stalled),

    // --- the store's side (502/503) ---
    #[error("store failed: {0}")]
    Store(#[from] StoreError),
    #[error("stored object does not match what was sent ({0})")]
    StoreIntegrity(String),

    // --- the app's side ---
    #[error("app failed: {0}")]
    App(#[from] ProxyError),
    /// mirror: the app stopped reading the body before its end.
    #[error("app stopped reading the upload")]
    AppStoppedReading,
}

/// `UploadRoutes::new` refuses a route it cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum UploadConfigError {
    #[error("uploads[{index}].path: bad glob {path:?}: {reason}")]
    Glob {
        index: usize,
        path: String,
        reason: String,
    },
    #[error("uploads[{index}].methods: {method:?} is not an HTTP method")]
    Method { index: usize, method: String },
    #[error("uploads[{index}].query: {pair:?} must be name=value")]
    Query { index: usize, pair: String },
    #[error("uploads[{index}].key_template: {reason}")]
    KeyTemplate { index: usize, reason: String },
}

impl UploadError {
    /// The status this failure answers with.
    pub fn status(&self) -> StatusCode {
        use UploadError::*;
        match self {
            FileTooLarge { .. }
            | BodyTooLarge { .. }
            | FieldTooLarge { .. }
            | FieldsTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ExtensionDenied(_) | TypeDenied(_) | TypeMismatch { .. } => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            TooManyParts { .. }
            | PartHeadersTooLarge { .. }
            | Boundary(_)
            | ContentType(_)
            | Malformed(_)
            | ClientBody(_) => StatusCode::BAD_REQUEST,
            ClientStalled(_) => StatusCode::REQUEST_TIMEOUT,
            Store(StoreError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            Store(StoreError::Body(_)) => StatusCode::BAD_REQUEST,
            Store(_) | StoreIntegrity(_) => StatusCode::BAD_GATEWAY,
            App(e) => e.status(),
            AppStoppedReading => StatusCode::BAD_GATEWAY,
        }
    }

    /// Whether the client is to blame (used to pick the log level).
    pub fn is_client_side(&self) -> bool {
        self.status().is_client_error()
    }

    /// The config key of the limit that was hit, and its value, for the JSON body (a
    /// fixed bound has no key: its message says it).
    fn limit(&self) -> Option<(&'static str, String)> {
        use UploadError::*;
        match self {
            FileTooLarge { max } => Some(("max_file_size", human_size(*max))),
            BodyTooLarge { max } => Some(("max_body_size", human_size(*max))),
            FieldTooLarge { max } => Some(("max_field_size", human_size(*max))),
            FieldsTooLarge { max } => Some(("max_fields_size", human_size(*max))),
            TooManyParts { max } => Some(("max_parts", max.to_string())),
            ExtensionDenied(_) => Some(("denied_extensions", String::new())),
            TypeDenied(_) => Some(("allowed_types", String::new())),
            _ => None,
        }
    }

    /// The answer the client gets: a status and a short JSON body. Store details stay in the
    /// log; the client learns only which side failed.
    pub fn into_response(self) -> Response<Body> {
        if let UploadError::App(e) = self {
            return e.into_response();
        }
        let status = self.status();
        let message = match &self {
            UploadError::Store(StoreError::Unavailable(_)) => "store unavailable".to_string(),
            UploadError::Store(StoreError::Body(_)) => "request body failed".to_string(),
            UploadError::Store(_) | UploadError::StoreIntegrity(_) => "store failed".to_string(),
            UploadError::AppStoppedReading => "app failed".to_string(),
            other => other.to_string(),
        };
        let mut value = json!({ "error": message });
        if let Some((name, max)) = self.limit() {
            value["limit"] = json!(name);
            if !max.is_empty() {
                value["max"] = json!(max);
            }
        }
        json_response(status, &value)
    }
}

/// A JSON answer made by the proxy itself.
pub(crate) fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(body::full(value.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn limits_name_themselves() {
        let resp = UploadError::FileTooLarge { max: 512 << 20 }.into_response();
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["error"], "file too large");
        assert_eq!(v["limit"], "max_file_size");
        assert_eq!(v["max"], "512 MiB");
        // A bound no key sets names no key.
        let resp = UploadError::PartHeadersTooLarge { max: 16 << 10 }.into_response();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            bytes,
            r#"{"error":"part headers too large (at most 16 KiB per part)"}"#
        );
    }

    #[test]
    fn sides_pick_the_status() {
        let unavailable = UploadError::Store(StoreError::Unavailable("down".into()));
        assert_eq!(unavailable.status(), StatusCode::SERVICE_UNAVAILABLE);
        let refused = UploadError::Store(StoreError::Refused("denied".into()));
        assert_eq!(refused.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(
            UploadError::TooManyParts { max: 3 }.status(),
            StatusCode::BAD_REQUEST
        );
        assert!(
            UploadError::TypeMismatch {
                declared: "image/png".into()
            }
            .is_client_side()
        );
        let stalled = UploadError::ClientStalled(Stalled(std::time::Duration::from_secs(60)));
        assert_eq!(stalled.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(stalled.to_string(), "request body stalled: no data for 1m");
        // The app's failures answer as the proxy answers them, and are sorted the same way.
        let app_slow = UploadError::App(ProxyError::Timeout(std::time::Duration::from_secs(1)));
        assert_eq!(app_slow.status(), StatusCode::GATEWAY_TIMEOUT);
        assert!(!app_slow.is_client_side());
        let client_gone = UploadError::App(ProxyError::ClientBody("reset".into()));
        assert!(client_gone.is_client_side());
    }
}
