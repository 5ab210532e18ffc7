//! The ERP's error type and the extractors whose rejections are JSON.
//!
//! Every error the server answers is `{"error", "detail"}` built with
//! [`tower_rampart::error::JsonError`]: handler errors ([`ApiError`]), axum's extractor
//! rejections ([`ApiJson`], [`ApiPath`], [`ApiQuery`], [`ApiForm`]) and the empty error
//! responses other layers produce (405, 408, 413), rewritten by [`jsonify`].

use axum::{
    Json,
    body::Body,
    extract::{FromRequest, FromRequestParts, Request, rejection::JsonRejection},
    http::{HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use serde::de::DeserializeOwned;
use tower_rampart::error::JsonError;
use utoipa::ToSchema;

/// The error body every endpoint documents in the OpenAPI schema.
#[derive(Debug, serde::Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorBody {
    /// A short, stable title such as `"Validation failed"`.
    pub error: String,
    /// What happened and what to do.
    pub detail: String,
}

/// An error answered as JSON `{"error", "detail"}` with a status code.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: JsonError,
    retry_after: Option<u64>,
}

impl ApiError {
    /// An error with any status, title and detail.
    pub fn new(status: StatusCode, error: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            body: JsonError::new(error, detail),
            retry_after: None,
        }
    }

    /// 400: the request is malformed.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "Bad request", detail)
    }

    /// 401: credentials missing or invalid.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Unauthorized", detail)
    }

    /// 403: authenticated but not allowed.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "Forbidden", detail)
    }

    /// 503 with `Retry-After: {retry_after_secs}`: the server is busy, try again then.
    pub fn unavailable(detail: impl Into<String>, retry_after_secs: u64) -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service unavailable",
            detail,
        );
        e.retry_after = Some(retry_after_secs);
        e
    }

    /// 429 with `Retry-After: {retry_after_secs}`, the rate limiter's words: too many
    /// attempts, try again then.
    pub fn too_many(detail: impl Into<String>, retry_after_secs: u64) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "Rate limit exceeded", detail);
        e.retry_after = Some(retry_after_secs);
        e
    }

    /// 404: no such resource (in this tenant).
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "Not found", detail)
    }

    /// 409: conflicts with the current state.
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "Conflict", detail)
    }

    /// 422: well-formed but breaks a rule.
    pub fn validation(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Validation failed",
            detail,
        )
    }

    /// 500: logged with its cause; the client only learns that it failed.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal server error",
            "The server failed to handle the request; it has been logged. Try again later.",
        )
    }

    /// Adds a machine-readable field to the body.
    #[must_use]
    pub fn with_field(mut self, name: &str, value: impl Into<serde_json::Value>) -> Self {
        self.body = self.body.with_field(name, value);
        self
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The body.
    pub fn body(&self) -> &JsonError {
        &self.body
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        Self::internal(&e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (mut parts, bytes) = self.body.into_response(self.status).into_parts();
        if let Some(secs) = self.retry_after {
            parts
                .headers
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        Response::from_parts(parts, Body::from(bytes))
    }
}

fn title(status: StatusCode) -> &'static str {
    status.canonical_reason().unwrap_or("Error")
}

/// `Json<T>` whose rejections are JSON: 400 malformed, 415 wrong content type,
/// 413 too large, 422 wrong types or unknown fields.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Self(v)),
            Err(rej) => Err(json_rejection(&rej)),
        }
    }
}

pub(crate) fn json_rejection(rej: &JsonRejection) -> ApiError {
    let status = rej.status();
    let error = match status {
        StatusCode::UNPROCESSABLE_ENTITY => "Validation failed",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "Unsupported media type",
        StatusCode::PAYLOAD_TOO_LARGE => "Payload too large",
        StatusCode::BAD_REQUEST => "Malformed JSON",
        s => title(s),
    };
    // Rejections of a request are never server errors.
    let status = if status.is_server_error() {
        StatusCode::BAD_REQUEST
    } else {
        status
    };
    ApiError::new(status, error, rej.body_text())
}

impl<T: serde::Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        Json(self.0).into_response()
    }
}

/// `Path<T>` whose rejection is a JSON 400 (a malformed id, for example).
#[derive(Debug, Clone, Copy)]
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Self(v)),
            Err(rej) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "Invalid path parameter",
                rej.body_text(),
            )),
        }
    }
}

/// `Query<T>` whose rejection is a JSON 400.
#[derive(Debug, Clone, Copy)]
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Self(v)),
            Err(rej) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "Invalid query string",
                rej.body_text(),
            )),
        }
    }
}

/// `Form<T>` whose rejection is a JSON 400/413/415.
#[derive(Debug, Clone, Copy)]
pub struct ApiForm<T>(pub T);

impl<T, S> FromRequest<S> for ApiForm<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Form::<T>::from_request(req, state).await {
            Ok(axum::Form(v)) => Ok(Self(v)),
            Err(rej) => {
                let status = rej.status();
                let status = if status.is_server_error() {
                    StatusCode::BAD_REQUEST
                } else {
                    status
                };
                Err(ApiError::new(status, title(status), rej.body_text()))
            }
        }
    }
}

/// Rewrites error responses that are not JSON or HTML (axum's empty 405, tower-http's
/// 408 and 413, a plain-text rejection) into the JSON error shape, keeping the status
/// and headers such as `Allow`.
pub async fn jsonify<B>(res: Response<B>) -> Response
where
    B: http_body::Body<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let res = res.map(Body::new);
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    let ct = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct.starts_with("application/json") || ct.starts_with("text/html") {
        return res;
    }
    let detail = match status {
        StatusCode::METHOD_NOT_ALLOWED => {
            "This method is not allowed on this path; see the Allow header.".to_owned()
        }
        StatusCode::PAYLOAD_TOO_LARGE => {
            "The request body is larger than this server accepts.".to_owned()
        }
        StatusCode::REQUEST_TIMEOUT => {
            "The request took too long to complete; try again.".to_owned()
        }
        s => format!("The request failed with status {}.", s.as_u16()),
    };
    let (mut parts, _) = res.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let body = JsonError::new(title(status), detail).to_bytes();
    Response::from_parts(parts, Body::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn jsonify_rewrites_empty_errors_and_keeps_headers() {
        let res = Response::builder()
            .status(405)
            .header("allow", "GET")
            .body(Body::empty())
            .unwrap();
        let res = jsonify(res).await;
        assert_eq!(res.status(), 405);
        assert_eq!(res.headers()["allow"], "GET");
        assert_eq!(res.headers()["content-type"], "application/json");
        let b = res.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error"], "Method Not Allowed");
        assert!(v["detail"].as_str().unwrap().contains("Allow"));
    }

    #[tokio::test]
    async fn jsonify_leaves_success_and_json_alone() {
        let ok = jsonify(Response::new(Body::from("hi"))).await;
        assert_eq!(ok.status(), 200);
        let b = ok.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&b[..], b"hi");
        let json = ApiError::not_found("x").into_response();
        let json = jsonify(json).await;
        let b = json.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["detail"], "x");
    }
}
