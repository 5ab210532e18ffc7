//! The one JSON error shape every layer answers with, and the configuration error type.
//!
//! Every response a layer produces on its own (429, 503, 400, 403, 404, 413, 415) has the
//! body `{"error": "<short title>", "detail": "<what to do>"}`, optionally with extra
//! fields such as `retry_after`. Applications that answer errors themselves can reuse
//! [`JsonError`] so clients see one shape everywhere.

use std::{borrow::Cow, fmt};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde::{Deserialize, Serialize};

/// A JSON error body: `{"error", "detail", ...extra}`.
///
/// # Example
///
/// ```
/// use http::StatusCode;
/// use tower_rampart::error::JsonError;
///
/// let res = JsonError::new("Rate limit exceeded", "Too many requests.")
///     .with_field("retry_after", 3)
///     .into_response(StatusCode::TOO_MANY_REQUESTS);
/// assert_eq!(res.status(), 429);
/// assert_eq!(res.headers()["content-type"], "application/json");
/// let body: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
/// assert_eq!(body["retry_after"], 3);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JsonError {
    /// A short, stable title such as `"Rate limit exceeded"`.
    pub error: Cow<'static, str>,
    /// A sentence telling the client what happened and what to do.
    pub detail: String,
    /// Extra machine-readable fields, flattened into the object.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl JsonError {
    /// A new error body with a title and a detail sentence.
    pub fn new(error: impl Into<Cow<'static, str>>, detail: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            detail: detail.into(),
            extra: serde_json::Map::new(),
        }
    }

    /// Adds a machine-readable field (for example `retry_after`).
    #[must_use]
    pub fn with_field(
        mut self,
        name: impl Into<String>,
        value: impl Into<serde_json::Value>,
    ) -> Self {
        self.extra.insert(name.into(), value.into());
        self
    }

    /// Serialises the body to JSON bytes.
    pub fn to_bytes(&self) -> Bytes {
        // Serialising a map of strings and JSON values cannot fail.
        Bytes::from(serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec()))
    }

    /// A complete response with this body, the given status and
    /// `Content-Type: application/json`.
    pub fn into_response(self, status: StatusCode) -> Response<Bytes> {
        let mut res = Response::new(self.to_bytes());
        *res.status_mut() = status;
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        res
    }
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.error, self.detail)
    }
}

/// A configuration that cannot work, found while building a layer.
///
/// The message says what is wrong and how to fix it.
///
/// # Example
///
/// ```
/// use tower_rampart::client_ip::TrustedProxies;
///
/// let err = TrustedProxies::new(["10.0.0.0/33"]).unwrap_err();
/// assert!(err.to_string().contains("10.0.0.0/33"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfigError {
    message: Cow<'static, str>,
}

impl ConfigError {
    /// A configuration error with a message that says how to fix it.
    pub fn new(message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Hides the password of a URL (`redis://user:secret@host/0` →
/// `redis://user:***@host/0`), for messages and logs; other strings are returned as they
/// are. The crate's own [`ConfigError`]s name URLs this way.
///
/// # Example
///
/// ```
/// use tower_rampart::error::redact_url;
///
/// assert_eq!(redact_url("redis://:hunter2@10.0.0.5:6379/0"), "redis://:***@10.0.0.5:6379/0");
/// assert_eq!(redact_url("postgres://app:pw@db/erp"), "postgres://app:***@db/erp");
/// assert_eq!(redact_url("redis://10.0.0.5"), "redis://10.0.0.5");
/// ```
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_error_round_trips_with_extra_fields() {
        let err = JsonError::new("Not found", "No such tenant.").with_field("tenant", "acme");
        let parsed: JsonError = serde_json::from_slice(&err.to_bytes()).unwrap();
        assert_eq!(parsed, err);
        assert_eq!(err.to_string(), "Not found: No such tenant.");
        let v: serde_json::Value = serde_json::from_slice(&err.to_bytes()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": "Not found", "detail": "No such tenant.", "tenant": "acme"})
        );
    }

    #[test]
    fn config_error_displays_message() {
        let e = ConfigError::new("quota must be > 0: use Quota::per_minute(1) or more");
        assert!(e.message().starts_with("quota"));
        assert_eq!(e.to_string(), e.message());
    }
}
