//! The nonce, the compiled (pre-rendered) headers and the standalone [`CspLayer`].

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use base64::Engine as _;
use bytes::{BufMut as _, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, header};
use pin_project_lite::pin_project;
use rand::RngCore as _;
use tower_layer::Layer;
use tower_service::Service;

use super::policy::Csp;
use crate::error::ConfigError;

/// The per-request CSP nonce: 128 bits from a CSPRNG, base64-encoded (24 characters).
///
/// The layers insert it into the request extensions before calling your handler, and
/// splice the same value into every `'nonce-…'` slot of the response's policies. Write it
/// into templates as `<script nonce="{{ nonce }}">`. It is `Copy` and allocation-free.
/// With the `axum` feature it is also an extractor.
///
/// The bytes come from `rand`'s thread-local generator (ChaCha12, seeded and periodically
/// reseeded from the operating system), a cryptographically secure generator.
///
/// # Example
///
/// ```
/// use tower_rampart::csp::CspNonce;
///
/// let a = CspNonce::generate();
/// let b = CspNonce::generate();
/// assert_ne!(a, b);
/// assert_eq!(a.as_str().len(), 24);
/// assert!(a.as_str().ends_with("=="));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CspNonce {
    b64: [u8; 24],
}

impl CspNonce {
    /// A fresh nonce from the thread-local CSPRNG.
    pub fn generate() -> Self {
        let mut raw = [0u8; 16];
        rand::rng().fill_bytes(&mut raw);
        let mut b64 = [0u8; 24];
        // 16 bytes always encode to exactly 24 base64 characters.
        let written = base64::engine::general_purpose::STANDARD
            .encode_slice(raw, &mut b64)
            .unwrap_or(0);
        debug_assert_eq!(written, 24);
        Self { b64 }
    }

    /// The base64 text, for `nonce="…"` attributes.
    pub fn as_str(&self) -> &str {
        // Always ASCII base64 by construction.
        std::str::from_utf8(&self.b64).unwrap_or_default()
    }
}

impl fmt::Display for CspNonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for CspNonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CspNonce").field(&self.as_str()).finish()
    }
}

/// One policy rendered once, split around its nonce slots.
#[derive(Debug)]
pub(crate) struct CompiledPolicy {
    /// The full value when the policy has no nonce slot.
    fixed: Option<HeaderValue>,
    /// `segments.len() == slots + 1`; joined with the nonce per request.
    segments: Box<[Box<str>]>,
    len: usize,
}

impl CompiledPolicy {
    fn new(csp: &Csp) -> Result<Self, ConfigError> {
        let segments = csp.render_segments();
        let fixed = if segments.len() == 1 {
            Some(HeaderValue::from_str(&segments[0]).map_err(|_| {
                ConfigError::new(
                    "the CSP renders to an invalid header value: remove non-ASCII characters",
                )
            })?)
        } else {
            // Check the rendering once with a sample nonce.
            HeaderValue::from_str(&segments.join("AAAAAAAAAAAAAAAAAAAAAA==")).map_err(|_| {
                ConfigError::new(
                    "the CSP renders to an invalid header value: remove non-ASCII characters",
                )
            })?;
            None
        };
        let len = segments.iter().map(std::string::String::len).sum::<usize>()
            + (segments.len() - 1) * 24;
        Ok(Self {
            fixed,
            segments: segments.into_iter().map(String::into_boxed_str).collect(),
            len,
        })
    }

    /// The header value: a clone of the fixed value, or one small buffer build.
    fn value(&self, nonce: Option<&CspNonce>) -> Option<HeaderValue> {
        if let Some(v) = &self.fixed {
            return Some(v.clone());
        }
        let nonce = nonce?;
        let mut buf = BytesMut::with_capacity(self.len);
        let mut first = true;
        for seg in &self.segments {
            if !first {
                buf.put_slice(nonce.as_str().as_bytes());
            }
            first = false;
            buf.put_slice(seg.as_bytes());
        }
        HeaderValue::from_maybe_shared(buf.freeze()).ok()
    }

    fn needs_nonce(&self) -> bool {
        self.fixed.is_none()
    }
}

/// Enforced and report-only policies plus `Reporting-Endpoints`, validated and rendered.
#[derive(Debug)]
pub(crate) struct CompiledCsp {
    enforce: Option<CompiledPolicy>,
    report_only: Option<CompiledPolicy>,
    reporting_endpoints: Option<HeaderValue>,
}

const REPORTING_ENDPOINTS: HeaderName = HeaderName::from_static("reporting-endpoints");

/// The CSP part of a configuration, shared by [`CspLayer`] and the security headers layer.
#[derive(Debug, Clone, Default)]
pub(crate) struct CspSettings {
    pub(crate) enforce: Option<Csp>,
    pub(crate) report_only: Option<Csp>,
    pub(crate) endpoints: Vec<(String, String)>,
}

impl CspSettings {
    pub(crate) fn is_empty(&self) -> bool {
        self.enforce.is_none() && self.report_only.is_none() && self.endpoints.is_empty()
    }

    pub(crate) fn compile(&self) -> Result<CompiledCsp, ConfigError> {
        let endpoints = render_endpoints(&self.endpoints)?;
        let mut compiled = CompiledCsp {
            enforce: None,
            report_only: None,
            reporting_endpoints: endpoints,
        };
        for (csp, report_only) in [(&self.enforce, false), (&self.report_only, true)] {
            let Some(csp) = csp else { continue };
            let which = if report_only {
                "report-only CSP"
            } else {
                "CSP"
            };
            csp.validate()
                .map_err(|e| ConfigError::new(format!("{which}: {e}")))?;
            if let Some(name) = csp.report_to_endpoint()
                && !self.endpoints.iter().any(|(n, _)| n == name)
            {
                return Err(ConfigError::new(format!(
                    "{which} reports to endpoint `{name}`, which is not declared: add .reporting_endpoint(\"{name}\", \"https://…/csp-reports\") so the Reporting-Endpoints header names it"
                )));
            }
            if report_only {
                for d in csp.ignored_in_report_only() {
                    tracing::warn!(
                        directive = d.name(),
                        "`{d}` is ignored by browsers in Content-Security-Policy-Report-Only; enforce it or remove it"
                    );
                }
            }
            let policy = Some(CompiledPolicy::new(csp)?);
            if report_only {
                compiled.report_only = policy;
            } else {
                compiled.enforce = policy;
            }
        }
        Ok(compiled)
    }
}

/// `Reporting-Endpoints: name="url", …` (Reporting API, a structured-field dictionary).
fn render_endpoints(endpoints: &[(String, String)]) -> Result<Option<HeaderValue>, ConfigError> {
    if endpoints.is_empty() {
        return Ok(None);
    }
    let mut out = String::new();
    for (i, (name, url)) in endpoints.iter().enumerate() {
        let name_ok = name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'*')
            && name.bytes().all(|b| {
                b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || matches!(b, b'_' | b'-' | b'.' | b'*')
            });
        if !name_ok {
            return Err(ConfigError::new(format!(
                "reporting endpoint name `{name}` must start with a lowercase letter and use only a-z, 0-9, `_`, `-`, `.`, `*`"
            )));
        }
        if endpoints[..i].iter().any(|(n, _)| n == name) {
            return Err(ConfigError::new(format!(
                "reporting endpoint `{name}` is declared twice: keep one"
            )));
        }
        let url_ok = (url.starts_with("https://") || url.starts_with('/'))
            && url
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
        if !url_ok {
            return Err(ConfigError::new(format!(
                "reporting endpoint `{name}` URL `{}` must be an https:// URL or a path starting with `/`, without spaces, quotes or backslashes",
                url.escape_debug()
            )));
        }
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(name);
        out.push_str("=\"");
        out.push_str(url);
        out.push('"');
    }
    HeaderValue::from_str(&out)
        .map(Some)
        .map_err(|_| ConfigError::new("Reporting-Endpoints renders to an invalid header value"))
}

impl CompiledCsp {
    pub(crate) fn needs_nonce(&self) -> bool {
        self.enforce
            .as_ref()
            .is_some_and(CompiledPolicy::needs_nonce)
            || self
                .report_only
                .as_ref()
                .is_some_and(CompiledPolicy::needs_nonce)
    }

    /// Writes the headers; with `overwrite == false` a header the application set wins.
    pub(crate) fn apply(&self, headers: &mut HeaderMap, nonce: Option<&CspNonce>, overwrite: bool) {
        for (policy, name) in [
            (&self.enforce, header::CONTENT_SECURITY_POLICY),
            (
                &self.report_only,
                header::CONTENT_SECURITY_POLICY_REPORT_ONLY,
            ),
        ] {
            if let Some(policy) = policy
                && (overwrite || !headers.contains_key(&name))
                && let Some(v) = policy.value(nonce)
            {
                headers.insert(name, v);
            }
        }
        if let Some(v) = &self.reporting_endpoints
            && (overwrite || !headers.contains_key(REPORTING_ENDPOINTS))
        {
            headers.insert(REPORTING_ENDPOINTS, v.clone());
        }
    }
}

/// Adds `Content-Security-Policy`, `Content-Security-Policy-Report-Only` and
/// `Reporting-Endpoints` to responses, with a fresh [`CspNonce`] per request.
///
/// Use it alone, or attach policies to the security headers layer instead (feature
/// `security-headers`), which also supports per-route policies.
///
/// # Example
///
/// ```
/// use http::{Request, Response};
/// use tower::{ServiceExt, service_fn};
/// use tower_rampart::csp::{Csp, CspLayer, CspNonce, Source};
/// use tower_layer::Layer;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let layer = CspLayer::builder()
///     .enforce(Csp::strict())
///     .report_only(Csp::new().default_src([Source::SelfOrigin]).report_to("csp"))
///     .reporting_endpoint("csp", "/csp-reports")
///     .build()
///     .unwrap();
/// let svc = layer.layer(service_fn(|req: Request<()>| async move {
///     let nonce = *req.extensions().get::<CspNonce>().unwrap();
///     Ok::<_, std::convert::Infallible>(Response::new(nonce.to_string()))
/// }));
/// let res = svc.oneshot(Request::new(())).await.unwrap();
/// let csp = res.headers()["content-security-policy"].to_str().unwrap();
/// assert!(csp.contains(&format!("'nonce-{}'", res.body())));
/// assert_eq!(res.headers()["reporting-endpoints"], "csp=\"/csp-reports\"");
/// # }
/// ```
#[derive(Clone)]
#[must_use]
pub struct CspLayer {
    csp: Arc<CompiledCsp>,
    overwrite: bool,
}

impl fmt::Debug for CspLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CspLayer")
            .field("needs_nonce", &self.csp.needs_nonce())
            .field("overwrite", &self.overwrite)
            .finish_non_exhaustive()
    }
}

impl CspLayer {
    /// A builder with no policy.
    pub fn builder() -> CspLayerBuilder {
        CspLayerBuilder::default()
    }

    /// A layer enforcing one policy.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] if the policy is invalid (see [`Csp::validate`]).
    pub fn new(csp: Csp) -> Result<Self, ConfigError> {
        Self::builder().enforce(csp).build()
    }
}

/// Configures a [`CspLayer`].
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct CspLayerBuilder {
    settings: CspSettings,
    overwrite: bool,
}

impl CspLayerBuilder {
    /// The enforced policy (`Content-Security-Policy`).
    ///
    /// By default, none.
    pub fn enforce(mut self, csp: Csp) -> Self {
        self.settings.enforce = Some(csp);
        self
    }

    /// The report-only policy (`Content-Security-Policy-Report-Only`), sent alongside the
    /// enforced one: try a stricter policy before enforcing it.
    ///
    /// By default, none.
    pub fn report_only(mut self, csp: Csp) -> Self {
        self.settings.report_only = Some(csp);
        self
    }

    /// Declares a `Reporting-Endpoints` entry, the target of a policy's `report-to`.
    ///
    /// By default, none.
    pub fn reporting_endpoint(mut self, name: impl Into<String>, url: impl Into<String>) -> Self {
        self.settings.endpoints.push((name.into(), url.into()));
        self
    }

    /// Whether to replace CSP headers the application already set.
    ///
    /// By default, `false`: a handler's own policy is kept.
    pub fn overwrite(mut self, overwrite: bool) -> Self {
        self.overwrite = overwrite;
        self
    }

    /// Validates and renders the policies once.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] if a policy is invalid, a `report-to` endpoint is not declared,
    /// or an endpoint's name or URL is malformed; or if nothing was configured.
    pub fn build(self) -> Result<CspLayer, ConfigError> {
        if self.settings.is_empty() {
            return Err(ConfigError::new(
                "CspLayer has no policy: call .enforce(Csp::strict()) or .report_only(…)",
            ));
        }
        Ok(CspLayer {
            csp: Arc::new(self.settings.compile()?),
            overwrite: self.overwrite,
        })
    }
}

impl<S> Layer<S> for CspLayer {
    type Service = CspService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CspService {
            inner,
            csp: self.csp.clone(),
            overwrite: self.overwrite,
        }
    }
}

/// The service made by [`CspLayer`].
#[derive(Clone)]
pub struct CspService<S> {
    inner: S,
    csp: Arc<CompiledCsp>,
    overwrite: bool,
}

impl<S: fmt::Debug> fmt::Debug for CspService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CspService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for CspService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let nonce = self.csp.needs_nonce().then(CspNonce::generate);
        if let Some(n) = nonce {
            req.extensions_mut().insert(n);
        }
        ResponseFuture {
            inner: self.inner.call(req),
            state: Some((self.csp.clone(), nonce, self.overwrite)),
        }
    }
}

pin_project! {
    /// The response future of [`CspService`]: adds the headers when the response is ready.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        state: Option<(Arc<CompiledCsp>, Option<CspNonce>, bool)>,
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = std::task::ready!(this.inner.poll(cx))?;
        if let Some((csp, nonce, overwrite)) = this.state.take() {
            csp.apply(res.headers_mut(), nonce.as_ref(), overwrite);
        }
        Poll::Ready(Ok(res))
    }
}
