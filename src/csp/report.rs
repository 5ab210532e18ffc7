//! The violation report receiver: a tower service for `report-uri` and `report-to`.

use std::{
    convert::Infallible,
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::{BodyExt as _, Empty, LengthLimitError, Limited};
use serde::Serialize;
use serde_json::Value;

use crate::{body::ResponseBody, error::JsonError, log_safe::Escaped};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Longest string field kept from a report; longer values are truncated.
const MAX_FIELD_LEN: usize = 2048;

/// Which of the two report formats a violation arrived in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ReportFormat {
    /// `application/csp-report`, sent to `report-uri` (CSP Level 2).
    CspReport,
    /// `application/reports+json`, sent to a `report-to` endpoint (Reporting API).
    ReportsJson,
}

impl ReportFormat {
    /// `"csp-report"` or `"reports+json"`, as used in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CspReport => "csp-report",
            Self::ReportsJson => "reports+json",
        }
    }
}

/// One validated CSP violation, whatever format it arrived in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CspViolation {
    /// The format of the report.
    pub format: ReportFormat,
    /// The page where the violation happened (`document-uri` / `documentURL`).
    pub document_uri: String,
    /// The directive that was violated (`effective-directive`, else `violated-directive`).
    pub effective_directive: String,
    /// What was blocked (`blocked-uri` / `blockedURL`): a URL, `inline`, `eval`, …
    pub blocked_uri: Option<String>,
    /// `enforce` or `report`.
    pub disposition: Option<String>,
    /// The script or style file where it happened.
    pub source_file: Option<String>,
    /// The line in `source_file`.
    pub line_number: Option<u64>,
    /// The first characters of the violating code (with `'report-sample'`).
    pub sample: Option<String>,
}

/// Why a report body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReportErrorKind {
    /// Not `application/csp-report`, `application/reports+json` or `application/json` (415).
    UnsupportedMediaType,
    /// Larger than the configured cap (413).
    PayloadTooLarge,
    /// Not JSON, or not the shape of a CSP report (400).
    Malformed,
    /// Not a `POST` (405).
    MethodNotAllowed,
}

impl ReportErrorKind {
    /// The HTTP status the receiver answers with.
    pub fn status(self) -> StatusCode {
        match self {
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Malformed => StatusCode::BAD_REQUEST,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::UnsupportedMediaType => "unsupported-media-type",
            Self::PayloadTooLarge => "too-large",
            Self::Malformed => "malformed",
            Self::MethodNotAllowed => "method-not-allowed",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Self::UnsupportedMediaType => "Unsupported media type",
            Self::PayloadTooLarge => "Payload too large",
            Self::Malformed => "Malformed report",
            Self::MethodNotAllowed => "Method not allowed",
        }
    }
}

/// A refused report body; [`kind`](Self::kind) says why.
///
/// The receiver puts it into the extensions of its error responses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportError {
    kind: ReportErrorKind,
    detail: String,
}

impl ReportError {
    fn new(kind: ReportErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }

    fn malformed(detail: impl Into<String>) -> Self {
        Self::new(ReportErrorKind::Malformed, detail)
    }

    /// Why the body was refused.
    pub fn kind(&self) -> ReportErrorKind {
        self.kind
    }

    /// A sentence for the client.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

impl fmt::Display for ReportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.title(), self.detail)
    }
}

impl std::error::Error for ReportError {}

/// Parses a report body of the given `Content-Type` into violations.
///
/// `application/csp-report` carries one `{"csp-report": {…}}` object;
/// `application/reports+json` an array of reports, of which those of type
/// `csp-violation` are returned (other report types are valid and skipped);
/// `application/json` is accepted and recognised by shape.
///
/// # Errors
///
/// A [`ReportError`] of kind `UnsupportedMediaType` or `Malformed`.
///
/// # Example
///
/// ```
/// use tower_rampart::csp::{ReportFormat, parse_reports};
///
/// let body = br#"{"csp-report": {"document-uri": "https://example.com/",
///     "violated-directive": "script-src-elem", "blocked-uri": "inline"}}"#;
/// let v = parse_reports("application/csp-report", body).unwrap();
/// assert_eq!(v[0].format, ReportFormat::CspReport);
/// assert_eq!(v[0].effective_directive, "script-src-elem");
/// assert!(parse_reports("text/plain", body).is_err());
/// ```
pub fn parse_reports(content_type: &str, body: &[u8]) -> Result<Vec<CspViolation>, ReportError> {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let format = match media.as_str() {
        "application/csp-report" => Some(ReportFormat::CspReport),
        "application/reports+json" => Some(ReportFormat::ReportsJson),
        "application/json" => None,
        _ => {
            return Err(ReportError::new(
                ReportErrorKind::UnsupportedMediaType,
                "send application/csp-report (report-uri) or application/reports+json (report-to)",
            ));
        }
    };
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ReportError::malformed(format!("the body is not JSON ({e})")))?;
    let format = format.unwrap_or(if value.is_array() {
        ReportFormat::ReportsJson
    } else {
        ReportFormat::CspReport
    });
    match format {
        ReportFormat::CspReport => parse_csp_report(&value).map(|v| vec![v]),
        ReportFormat::ReportsJson => parse_reports_json(&value),
    }
}

fn text(obj: &serde_json::Map<String, Value>, key: &str) -> Option<String> {
    let s = obj.get(key)?.as_str()?;
    let mut end = s.len().min(MAX_FIELD_LEN);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Some(s[..end].to_owned())
}

fn number(obj: &serde_json::Map<String, Value>, key: &str) -> Option<u64> {
    obj.get(key)?.as_u64()
}

fn parse_csp_report(value: &Value) -> Result<CspViolation, ReportError> {
    let report = value
        .get("csp-report")
        .and_then(Value::as_object)
        .ok_or_else(|| ReportError::malformed("expected an object {\"csp-report\": {…}}"))?;
    let document_uri = text(report, "document-uri")
        .ok_or_else(|| ReportError::malformed("csp-report.document-uri (a string) is missing"))?;
    let effective_directive = text(report, "effective-directive")
        .or_else(|| text(report, "violated-directive"))
        .ok_or_else(|| {
            ReportError::malformed(
                "csp-report.effective-directive or violated-directive is missing",
            )
        })?;
    Ok(CspViolation {
        format: ReportFormat::CspReport,
        document_uri,
        effective_directive,
        blocked_uri: text(report, "blocked-uri"),
        disposition: text(report, "disposition"),
        source_file: text(report, "source-file"),
        line_number: number(report, "line-number"),
        sample: text(report, "script-sample"),
    })
}

/// At most this many reports are read from one `reports+json` batch.
const MAX_BATCH: usize = 100;

fn parse_reports_json(value: &Value) -> Result<Vec<CspViolation>, ReportError> {
    let reports = value
        .as_array()
        .ok_or_else(|| ReportError::malformed("expected a JSON array of reports"))?;
    if reports.is_empty() {
        return Err(ReportError::malformed("the array of reports is empty"));
    }
    if reports.len() > MAX_BATCH {
        return Err(ReportError::malformed(format!(
            "at most {MAX_BATCH} reports per request"
        )));
    }
    let mut out = Vec::new();
    for (i, report) in reports.iter().enumerate() {
        let obj = report
            .as_object()
            .ok_or_else(|| ReportError::malformed(format!("report {i} is not an object")))?;
        let kind = text(obj, "type")
            .ok_or_else(|| ReportError::malformed(format!("report {i} has no `type`")))?;
        let body = obj
            .get("body")
            .and_then(Value::as_object)
            .ok_or_else(|| ReportError::malformed(format!("report {i} has no `body` object")))?;
        if kind != "csp-violation" {
            continue;
        }
        let document_uri = text(body, "documentURL")
            .or_else(|| text(obj, "url"))
            .ok_or_else(|| ReportError::malformed(format!("report {i} has no documentURL")))?;
        let effective_directive = text(body, "effectiveDirective").ok_or_else(|| {
            ReportError::malformed(format!("report {i} has no body.effectiveDirective"))
        })?;
        out.push(CspViolation {
            format: ReportFormat::ReportsJson,
            document_uri,
            effective_directive,
            blocked_uri: text(body, "blockedURL"),
            disposition: text(body, "disposition"),
            source_file: text(body, "sourceFile"),
            line_number: number(body, "lineNumber"),
            sample: text(body, "sample"),
        });
    }
    Ok(out)
}

/// A directive name safe to use as a metric label (bounded cardinality).
fn directive_label(d: &str) -> &'static str {
    let base = d.split_ascii_whitespace().next().unwrap_or_default();
    super::Directive::from_name(base).map_or("other", super::Directive::name)
}

type Hook = Arc<dyn Fn(&CspViolation) + Send + Sync>;

/// A tower service receiving CSP violation reports from browsers.
///
/// Mount it at your `report-uri` path and your `Reporting-Endpoints` URL. It accepts
/// `POST` bodies of type `application/csp-report` and `application/reports+json` (and
/// `application/json`, recognised by shape), reads at most
/// [`max_body_bytes`](Self::max_body_bytes), validates them, emits one `tracing` event
/// (target `tower_rampart::csp`, level WARN) per violation and increments the `metrics`
/// counters `rampart_csp_reports_total{format, directive}` and
/// `rampart_csp_reports_rejected_total{reason}`. It answers `204 No Content`, or a JSON
/// error: 400 (malformed), 405 (not `POST`), 413 (too large), 415 (wrong content type),
/// with the [`ReportError`] in the response extensions. It never panics and never fails.
///
/// # Example
///
/// ```
/// use http::Request;
/// use tower::ServiceExt;
/// use tower_rampart::csp::ReportReceiver;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let receiver = ReportReceiver::new().on_violation(|v| assert_eq!(v.effective_directive, "img-src"));
/// let req = Request::post("/csp-reports")
///     .header("content-type", "application/reports+json")
///     .body(http_body_util::Full::<bytes::Bytes>::from(
///         r#"[{"type":"csp-violation","url":"https://example.com/","body":{"documentURL":"https://example.com/","effectiveDirective":"img-src","blockedURL":"https://evil.example/x.png","disposition":"enforce"}}]"#,
///     ))
///     .unwrap();
/// let res = receiver.oneshot(req).await.unwrap();
/// assert_eq!(res.status(), 204);
/// # }
/// ```
#[derive(Clone)]
#[must_use]
pub struct ReportReceiver {
    max_body: usize,
    hook: Option<Hook>,
    rejection: Arc<dyn ReportRejection>,
}

/// Builds the response for a refused report body; implemented for closures
/// `Fn(&ReportError) -> ReportResponse`, with [`DefaultReportRejection`] as the default.
///
/// The receiver puts the [`ReportError`] into the response's extensions afterwards.
///
/// # Example
///
/// ```
/// use http::Response;
/// use tower_rampart::{body::ResponseBody, csp::{ReportError, ReportReceiver}};
///
/// let receiver = ReportReceiver::new().rejection(|err: &ReportError| {
///     let mut res = Response::new(ResponseBody::full(err.detail().to_owned()));
///     *res.status_mut() = err.kind().status();
///     res
/// });
/// # let _ = receiver;
/// ```
pub trait ReportRejection: Send + Sync + 'static {
    /// The response for `err`.
    fn response(&self, err: &ReportError) -> ReportResponse;
}

impl<F> ReportRejection for F
where
    F: Fn(&ReportError) -> ReportResponse + Send + Sync + 'static,
{
    fn response(&self, err: &ReportError) -> ReportResponse {
        self(err)
    }
}

/// The default rejection: `{"error", "detail"}` JSON ([`JsonError`]) with the error's
/// status, and `Allow: POST` on 405.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultReportRejection;

impl ReportRejection for DefaultReportRejection {
    fn response(&self, err: &ReportError) -> ReportResponse {
        let json = JsonError::new(err.kind.title(), err.detail.clone());
        let mut res = Response::new(ResponseBody::full(json.to_bytes()));
        *res.status_mut() = err.kind.status();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if err.kind == ReportErrorKind::MethodNotAllowed {
            res.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
        }
        res
    }
}

impl Default for ReportReceiver {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ReportReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReportReceiver")
            .field("max_body", &self.max_body)
            .field("hook", &self.hook.is_some())
            .finish_non_exhaustive()
    }
}

impl ReportReceiver {
    /// A receiver with a 64 KiB body cap and no hook.
    pub fn new() -> Self {
        Self {
            max_body: 64 * 1024,
            hook: None,
            rejection: Arc::new(DefaultReportRejection),
        }
    }

    /// The largest body read, in bytes; larger bodies get 413.
    ///
    /// By default, 65 536 (64 KiB).
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// A function called with every accepted violation (store them, forward them…); it
    /// runs on the request's task, so keep it quick.
    ///
    /// By default, none: violations only go to `tracing` and `metrics`.
    pub fn on_violation(mut self, hook: impl Fn(&CspViolation) + Send + Sync + 'static) -> Self {
        self.hook = Some(Arc::new(hook));
        self
    }

    /// How refused bodies are answered.
    ///
    /// By default, [`DefaultReportRejection`] (JSON errors).
    pub fn rejection(mut self, rejection: impl ReportRejection) -> Self {
        self.rejection = Arc::new(rejection);
        self
    }

    pub(super) fn reject(&self, err: ReportError) -> ReportResponse {
        metrics::counter!("rampart_csp_reports_rejected_total", "reason" => err.kind.label())
            .increment(1);
        tracing::debug!(target: "tower_rampart::csp", reason = err.kind.label(), detail = %Escaped(&err.detail), "CSP report refused");
        let mut res = self.rejection.response(&err);
        res.extensions_mut().insert(err);
        res
    }

    pub(super) fn accept(
        &self,
        violations: &[CspViolation],
    ) -> Response<ResponseBody<Empty<Bytes>>> {
        for v in violations {
            let directive = directive_label(&v.effective_directive);
            metrics::counter!(
                "rampart_csp_reports_total",
                "format" => v.format.as_str(),
                "directive" => directive
            )
            .increment(1);
            tracing::warn!(
                target: "tower_rampart::csp",
                format = v.format.as_str(),
                document_uri = %Escaped(&v.document_uri),
                effective_directive = %Escaped(&v.effective_directive),
                blocked_uri = v.blocked_uri.as_deref().unwrap_or(""),
                disposition = v.disposition.as_deref().unwrap_or(""),
                source_file = v.source_file.as_deref().unwrap_or(""),
                line_number = v.line_number.unwrap_or(0),
                "CSP violation"
            );
            if let Some(hook) = &self.hook {
                hook(v);
            }
        }
        let mut res = Response::new(ResponseBody::empty());
        *res.status_mut() = StatusCode::NO_CONTENT;
        res
    }
}

/// The response type of [`ReportReceiver`].
pub type ReportResponse = Response<ResponseBody<Empty<Bytes>>>;

/// The future of [`ReportReceiver`]: boxed once, since the body must be read first.
pub struct ReportFuture {
    inner: Pin<Box<dyn Future<Output = ReportResponse> + Send>>,
}

impl fmt::Debug for ReportFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReportFuture").finish_non_exhaustive()
    }
}

impl Future for ReportFuture {
    type Output = Result<Response<ResponseBody<Empty<Bytes>>>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx).map(Ok)
    }
}

impl<B> tower_service::Service<Request<B>> for ReportReceiver
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<Empty<Bytes>>>;
    type Error = Infallible;
    type Future = ReportFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let this = self.clone();
        ReportFuture {
            inner: Box::pin(async move { this.handle(req).await }),
        }
    }
}

impl ReportReceiver {
    async fn handle<B>(self, req: Request<B>) -> Response<ResponseBody<Empty<Bytes>>>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        if req.method() != Method::POST {
            return self.reject(ReportError::new(
                ReportErrorKind::MethodNotAllowed,
                "browsers send reports with POST",
            ));
        }
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        // Check the media type before reading the body.
        if let Err(e) = parse_reports(&content_type, b"")
            && e.kind == ReportErrorKind::UnsupportedMediaType
        {
            return self.reject(e);
        }
        let too_large = || {
            ReportError::new(
                ReportErrorKind::PayloadTooLarge,
                format!("report bodies are limited to {} bytes", self.max_body),
            )
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body as u64) {
            return self.reject(too_large());
        }
        let body = match Limited::new(req.into_body(), self.max_body).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
                return self.reject(too_large());
            }
            Err(_) => {
                return self.reject(ReportError::malformed("the body could not be read"));
            }
        };
        match parse_reports(&content_type, &body) {
            Ok(violations) => self.accept(&violations),
            Err(e) => self.reject(e),
        }
    }
}
