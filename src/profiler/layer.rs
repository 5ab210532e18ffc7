//! [`ProfilerLayer`], the [`Profiler`] service, its future and its body.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
    time::{SystemTime, UNIX_EPOCH},
};

use bytes::Buf;
use http::{Extensions, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use quanta::Instant;
use serde::Deserialize;
use tower_layer::Layer;
use tower_service::Service;
use tracing::Span;

use super::{
    capture::{Collector, request_span, truncated},
    record::RequestRecord,
    redact::{Redaction, redact_headers},
    store::{ProfileStore, StoreLimits},
};
use crate::{error::ConfigError, identity::IdentityReader, key::push_decimal};

/// The parts of a request a sampling closure can look at.
///
/// # Example
///
/// ```
/// use tower_rampart::profiler::ProfilerLayer;
///
/// // Profile only the API.
/// let layer = ProfilerLayer::new().sample_with(|r| r.uri().path().starts_with("/api/"));
/// # let _ = layer;
/// ```
#[derive(Debug)]
pub struct SampleRequest<'a> {
    method: &'a Method,
    uri: &'a Uri,
    headers: &'a HeaderMap,
    extensions: &'a Extensions,
}

impl SampleRequest<'_> {
    /// The method.
    pub fn method(&self) -> &Method {
        self.method
    }
    /// The URI.
    pub fn uri(&self) -> &Uri {
        self.uri
    }
    /// The headers.
    pub fn headers(&self) -> &HeaderMap {
        self.headers
    }
    /// The extensions (the user, the tenant…).
    pub fn extensions(&self) -> &Extensions {
        self.extensions
    }
}

type SampleFn = dyn Fn(&SampleRequest<'_>) -> bool + Send + Sync;

#[derive(Clone)]
enum Sampler {
    /// Out of `u64::MAX`; `u64::MAX` means always.
    Ratio(u64),
    Custom(Arc<SampleFn>),
}

/// The profiler's settings as a configuration file describes them.
///
/// # Example
///
/// ```
/// use tower_rampart::profiler::{ProfilerConfig, ProfilerLayer};
///
/// let cfg: ProfilerConfig = serde_json::from_str(
///     r#"{"sample_percent": 10.0, "store": {"max_records": 500}}"#,
/// ).unwrap();
/// let layer = ProfilerLayer::from_config(&cfg).unwrap();
/// assert_eq!(layer.store().limits().max_records, 500);
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProfilerConfig {
    /// Percentage of requests profiled, 0 to 100. By default, 100.
    pub sample_percent: f64,
    /// Whether to add a `Server-Timing` header. By default, `true`.
    pub server_timing: bool,
    /// Consecutive executions of one statement that make an N+1 finding. By default, 5.
    pub n_plus_one_threshold: usize,
    /// The least total time, in milliseconds, of an N+1 finding that is signalled (counter
    /// and warning). By default, 50.
    pub n_plus_one_min_total_ms: f64,
    /// Queries kept per request (the rest are counted). By default, 1000.
    pub max_queries_per_request: usize,
    /// Whether to record `metrics` histograms. By default, `true`.
    pub metrics: bool,
    /// What the store keeps.
    pub store: StoreLimits,
}

impl Default for ProfilerConfig {
    fn default() -> Self {
        Self {
            sample_percent: 100.0,
            server_timing: true,
            n_plus_one_threshold: 5,
            n_plus_one_min_total_ms: 50.0,
            max_queries_per_request: 1000,
            metrics: true,
            store: StoreLimits::default(),
        }
    }
}

/// Profiles requests: timings, status, size, identity, the database queries made while
/// serving them, N+1 findings; optional `Server-Timing` header and `metrics` histograms.
///
/// Records go to a [`ProfileStore`] (see [`ProfilerLayer::store`]) and are shown by
/// [`ProfilerUi`](super::ProfilerUi). Queries are attributed when the
/// [`query_capture_layer`](super::query_capture_layer) is installed on the `tracing`
/// subscriber.
///
/// # Example
///
/// ```
/// use tower_rampart::profiler::{ProfilerLayer, ProfilerUi};
///
/// let profiler = ProfilerLayer::new().sample_percent(25.0).unwrap().server_timing(false);
/// let ui = ProfilerUi::new(profiler.store()).authorize(|_parts| false);
/// # let _ = ui;
/// ```
#[derive(Clone)]
#[must_use]
pub struct ProfilerLayer {
    shared: Arc<Shared>,
}

#[derive(Clone)]
struct Shared {
    store: ProfileStore,
    sampler: Sampler,
    server_timing: bool,
    /// Who gets `Server-Timing`; `None`: requests with an authenticated user.
    server_timing_when: Option<Arc<SampleFn>>,
    n_plus_one_threshold: usize,
    n_plus_one_min_total_ms: f64,
    max_queries: usize,
    metrics: bool,
    identity: IdentityReader,
    redaction: Arc<Redaction>,
    counter: Arc<AtomicU64>,
}

impl Default for ProfilerLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ProfilerLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.shared;
        let sampler = match &s.sampler {
            Sampler::Ratio(r) => format!("ratio({r})"),
            Sampler::Custom(_) => "closure".to_owned(),
        };
        f.debug_struct("ProfilerLayer")
            .field("store", &s.store)
            .field("sampler", &sampler)
            .field("server_timing", &s.server_timing)
            .field("n_plus_one_threshold", &s.n_plus_one_threshold)
            .field("max_queries", &s.max_queries)
            .field("metrics", &s.metrics)
            .field("identity", &s.identity)
            .finish()
    }
}

impl ProfilerLayer {
    /// A profiler with the defaults: every request sampled, `Server-Timing` on, N+1 at 5,
    /// `metrics` on, a store of the last 1000 records within 32 MiB plus the 50 slowest.
    pub fn new() -> Self {
        // quanta calibrates its clock on first use (up to 200 ms): now, not on a request.
        let _ = Instant::now();
        Self {
            shared: Arc::new(Shared {
                store: ProfileStore::default(),
                sampler: Sampler::Ratio(u64::MAX),
                server_timing: true,
                server_timing_when: None,
                n_plus_one_threshold: 5,
                n_plus_one_min_total_ms: 50.0,
                max_queries: 1000,
                metrics: true,
                identity: IdentityReader::new(),
                redaction: Arc::new(Redaction::default()),
                counter: Arc::new(AtomicU64::new(0)),
            }),
        }
    }

    /// A profiler from a configuration file's settings.
    ///
    /// # Errors
    ///
    /// When a value is out of range (see the setters).
    pub fn from_config(cfg: &ProfilerConfig) -> Result<Self, ConfigError> {
        Self::new()
            .with_store(ProfileStore::new(cfg.store)?)
            .sample_percent(cfg.sample_percent)?
            .n_plus_one_threshold(cfg.n_plus_one_threshold)?
            .n_plus_one_min_total_ms(cfg.n_plus_one_min_total_ms)
            .map(|l| {
                l.server_timing(cfg.server_timing)
                    .max_queries_per_request(cfg.max_queries_per_request)
                    .metrics(cfg.metrics)
            })
    }

    fn edit(mut self, f: impl FnOnce(&mut Shared)) -> Self {
        f(Arc::make_mut(&mut self.shared));
        self
    }

    /// The store records go to (a handle: clones share it).
    pub fn store(&self) -> ProfileStore {
        self.shared.store.clone()
    }

    /// Uses this store (for example one shared by several routers).
    /// By default, a store with [`StoreLimits::default`].
    pub fn with_store(self, store: ProfileStore) -> Self {
        self.edit(|s| s.store = store)
    }

    /// Profiles this percentage of requests, chosen uniformly.
    /// By default, 100 (every request).
    ///
    /// # Errors
    ///
    /// When `percent` is not within 0 to 100.
    pub fn sample_percent(self, percent: f64) -> Result<Self, ConfigError> {
        if !(0.0..=100.0).contains(&percent) {
            return Err(ConfigError::new(format!(
                "profiler: sample_percent = {percent} must be between 0 and 100 \
                 (for example 10.0 to profile one request in ten)"
            )));
        }
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let ratio = if percent >= 100.0 {
            u64::MAX
        } else {
            (percent / 100.0 * u64::MAX as f64) as u64
        };
        Ok(self.edit(|s| s.sampler = Sampler::Ratio(ratio)))
    }

    /// Profiles the requests for which `f` answers `true` (for example only some routes,
    /// or a header set by a developer). Replaces the percentage. By default, every request.
    pub fn sample_with<F>(self, f: F) -> Self
    where
        F: Fn(&SampleRequest<'_>) -> bool + Send + Sync + 'static,
    {
        self.edit(|s| s.sampler = Sampler::Custom(Arc::new(f)))
    }

    /// Adds a `Server-Timing` header (`total;dur=…, db;dur=…;desc="N queries"`) to
    /// profiled responses (`total` only on others) of the requests
    /// [`server_timing_when`](Self::server_timing_when) allows. By default, `true`.
    pub fn server_timing(self, on: bool) -> Self {
        self.edit(|s| s.server_timing = on)
    }

    /// Sends `Server-Timing` only to the requests for which `f` answers `true` (timings
    /// and query counts tell an attacker which requests hit the database and how hard).
    /// By default, requests with an authenticated user (see
    /// [`identity`](Self::identity)): never to anonymous clients, and to nobody while no
    /// identity is configured.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_rampart::profiler::ProfilerLayer;
    ///
    /// // Developers only: a header set by the authenticating proxy.
    /// let layer = ProfilerLayer::new()
    ///     .server_timing_when(|r| r.headers().get("x-staff").is_some_and(|v| v == "1"));
    /// # let _ = layer;
    /// ```
    pub fn server_timing_when<F>(self, f: F) -> Self
    where
        F: Fn(&SampleRequest<'_>) -> bool + Send + Sync + 'static,
    {
        self.edit(|s| s.server_timing_when = Some(Arc::new(f)))
    }

    /// Consecutive executions of one statement after a source query that make an N+1
    /// finding. By default, 5.
    ///
    /// # Errors
    ///
    /// When `n` is under 2.
    pub fn n_plus_one_threshold(self, n: usize) -> Result<Self, ConfigError> {
        if n < 2 {
            return Err(ConfigError::new(format!(
                "profiler: n_plus_one_threshold = {n} must be at least 2 (the default is 5)"
            )));
        }
        Ok(self.edit(|s| s.n_plus_one_threshold = n))
    }

    /// The least total time of an N+1 finding that is signalled: the counter
    /// `rampart_profiler_n_plus_one_total{route}` and a `tracing` warning (target
    /// `tower_rampart::profiler`). Every finding still shows in the record.
    /// By default, 50 milliseconds.
    ///
    /// # Errors
    ///
    /// When `ms` is negative or not a number.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_rampart::profiler::ProfilerLayer;
    ///
    /// let layer = ProfilerLayer::new().n_plus_one_min_total_ms(10.0).unwrap();
    /// assert!(ProfilerLayer::new().n_plus_one_min_total_ms(-1.0).is_err());
    /// # let _ = layer;
    /// ```
    pub fn n_plus_one_min_total_ms(self, ms: f64) -> Result<Self, ConfigError> {
        if !(ms >= 0.0 && ms.is_finite()) {
            return Err(ConfigError::new(format!(
                "profiler: n_plus_one_min_total_ms = {ms} must be a number of milliseconds, \
                 0 or more (the default is 50)"
            )));
        }
        Ok(self.edit(|s| s.n_plus_one_min_total_ms = ms))
    }

    /// Queries kept per request; further ones are only counted. By default, 1000.
    pub fn max_queries_per_request(self, n: usize) -> Self {
        self.edit(|s| s.max_queries = n)
    }

    /// Records the `metrics` histograms `rampart_profiler_request_duration_seconds`
    /// (labels `method`, `route`, `status`; every request, sampled or not) and
    /// `rampart_profiler_queries_per_request` (label `route`; profiled requests).
    /// By default, `true`.
    pub fn metrics(self, on: bool) -> Self {
        self.edit(|s| s.metrics = on)
    }

    /// What is recorded of header and query values.
    /// By default, [`Redaction::allowlist`]: only harmless values.
    pub fn redaction(self, redaction: Redaction) -> Self {
        self.edit(|s| s.redaction = Arc::new(redaction))
    }

    /// How to read the user and tenant from request extensions.
    /// By default, [`IdentityReader::new`] (anonymous, no tenant).
    pub fn identity(self, reader: IdentityReader) -> Self {
        self.edit(|s| s.identity = reader)
    }
}

impl<S> Layer<S> for ProfilerLayer {
    type Service = Profiler<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Profiler {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The service built by [`ProfilerLayer`].
///
/// # Example
///
/// ```
/// use tower::{ServiceExt, service_fn};
/// use tower_layer::Layer;
/// use tower_rampart::profiler::ProfilerLayer;
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let profiler = ProfilerLayer::new().server_timing_when(|_| true);
/// let svc = profiler.layer(service_fn(|_req: http::Request<()>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hi")))
/// }));
/// let res = svc.oneshot(http::Request::new(())).await.unwrap();
/// assert!(res.headers()["server-timing"].to_str().unwrap().starts_with("total;dur="));
/// drop(res); // the record is finished when the body ends (or is dropped)
/// assert_eq!(profiler.store().records()[0].response_bytes, 0);
/// # });
/// ```
#[derive(Clone)]
pub struct Profiler<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> fmt::Debug for Profiler<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Profiler").finish_non_exhaustive()
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl Shared {
    fn timing_allowed<B>(&self, req: &Request<B>) -> bool {
        if !self.server_timing {
            return false;
        }
        match &self.server_timing_when {
            None => self.identity.user_id(req.extensions()).is_some(),
            Some(f) => f(&SampleRequest {
                method: req.method(),
                uri: req.uri(),
                headers: req.headers(),
                extensions: req.extensions(),
            }),
        }
    }

    fn sampled<B>(&self, req: &Request<B>) -> bool {
        match &self.sampler {
            Sampler::Ratio(u64::MAX) => true,
            Sampler::Ratio(0) => false,
            Sampler::Ratio(r) => splitmix(self.counter.fetch_add(1, Ordering::Relaxed)) < *r,
            Sampler::Custom(f) => f(&SampleRequest {
                method: req.method(),
                uri: req.uri(),
                headers: req.headers(),
                extensions: req.extensions(),
            }),
        }
    }
}

/// The matched route template (axum's `MatchedPath`), when a router set one.
#[cfg_attr(not(feature = "axum"), allow(clippy::unnecessary_wraps))]
fn matched_route<B>(req: &Request<B>) -> Option<&str> {
    #[cfg(feature = "axum")]
    if let Some(m) = req.extensions().get::<axum::extract::MatchedPath>() {
        return Some(m.as_str());
    }
    let _ = req;
    None
}

/// Whether a path segment looks like a value (an id, a token) rather than a name:
/// digits, hexadecimal or UUID-like runs, long segments, and segments mixing letters with
/// digits.
fn variable_segment(seg: &str) -> bool {
    let digits = seg.bytes().filter(u8::is_ascii_digit).count();
    let hexish = seg.len() >= 16 && seg.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    !seg.is_empty()
        && (digits == seg.len() || hexish || seg.len() >= 24 || (digits > 0 && seg.len() >= 8))
}

fn generic_route(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        if variable_segment(seg) {
            out.push_str("{id}");
        } else {
            out.push_str(seg);
        }
    }
    if out.len() > 200 {
        out.truncate(200);
    }
    out
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn draft_record<B>(
    id: u64,
    route: &str,
    req: &Request<B>,
    identity: IdentityReader,
    redaction: &Redaction,
) -> RequestRecord {
    let ext = req.extensions();
    RequestRecord {
        id,
        request_id: req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(128).collect()),
        method: req.method().as_str().to_owned(),
        // The path is stored as its route: tokens in paths (password resets, invitations)
        // are not kept.
        path: route.to_owned(),
        route: route.to_owned(),
        query: req
            .uri()
            .query()
            .map(|q| redaction.redact_query(truncated(q, 2048))),
        status: 0,
        started_at_ms: unix_ms(),
        duration_ms: 0.0,
        response_bytes: 0,
        tenant: identity
            .tenant_id(ext)
            .or_else(|| identity.principal_tenant_id(ext))
            .map(str::to_owned),
        user: identity.user_id(ext).map(str::to_owned),
        request_headers: redact_headers(req.headers(), redaction),
        response_headers: Vec::new(),
        queries: Vec::new(),
        query_count: 0,
        queries_dropped: 0,
        db_ms: 0.0,
        similar: Vec::new(),
        n_plus_one: Vec::new(),
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Profiler<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body,
{
    type Response = Response<ProfiledBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let start = Instant::now();
        let sh = &self.shared;
        let matched = matched_route(&req);
        // Labels from a closed set: the route template, else one `unmatched` series.
        let route_label = match matched {
            Some(m) => metrics::SharedString::from(m.to_owned()),
            None => metrics::SharedString::const_str("unmatched"),
        };
        let method = req.method().clone();
        let server_timing = sh.timing_allowed(&req);
        let (collector, span) = if sh.sampled(&req) {
            let id = sh.store.next_id();
            let route = matched.map_or_else(|| generic_route(req.uri().path()), str::to_owned);
            let c = Arc::new(Collector::new(
                start,
                draft_record(id, &route, &req, sh.identity, &sh.redaction),
                sh.store.clone(),
                (sh.n_plus_one_threshold, sh.n_plus_one_min_total_ms),
                sh.max_queries,
                sh.metrics.then(|| route_label.clone()),
            ));
            let span = request_span(&c, id);
            (Some(c), span)
        } else {
            (None, Span::none())
        };
        let inner = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        ResponseFuture {
            inner,
            span,
            state: Some(Guard {
                start,
                method,
                route: route_label,
                redaction: collector.as_ref().map(|_| Arc::clone(&sh.redaction)),
                status: 0,
                bytes: 0,
                collector,
                metrics: sh.metrics,
            }),
            server_timing,
        }
    }
}

/// A metrics label for the method, without allocating for the standard ones.
fn method_label(m: &Method) -> metrics::SharedString {
    const STANDARD: [(Method, &str); 9] = [
        (Method::GET, "GET"),
        (Method::POST, "POST"),
        (Method::PUT, "PUT"),
        (Method::DELETE, "DELETE"),
        (Method::PATCH, "PATCH"),
        (Method::HEAD, "HEAD"),
        (Method::OPTIONS, "OPTIONS"),
        (Method::CONNECT, "CONNECT"),
        (Method::TRACE, "TRACE"),
    ];
    match STANDARD.iter().find(|(s, _)| s == m) {
        Some((_, name)) => metrics::SharedString::const_str(name),
        // Invented methods share one series.
        None => metrics::SharedString::const_str("other"),
    }
}

/// The three digits of every status code from 100 to 599, so that a status label is a
/// `&'static str` (no allocation per request).
static STATUS_DIGITS: [u8; 1500] = {
    let mut d = [0u8; 1500];
    let mut i = 0;
    while i < 500 {
        let n = 100 + i;
        // Each digit is below 10: the casts cannot truncate.
        #[allow(clippy::cast_possible_truncation)]
        {
            d[i * 3] = b'0' + (n / 100) as u8;
            d[i * 3 + 1] = b'0' + (n / 10 % 10) as u8;
            d[i * 3 + 2] = b'0' + (n % 10) as u8;
        }
        i += 1;
    }
    d
};

/// A metrics label for a status code, without allocating for 100 to 599.
fn status_label(status: u16) -> metrics::SharedString {
    if (100..600).contains(&status) {
        let at = usize::from(status - 100) * 3;
        if let Ok(digits) = std::str::from_utf8(&STATUS_DIGITS[at..at + 3]) {
            return metrics::SharedString::const_str(digits);
        }
    }
    metrics::SharedString::from(status.to_string())
}

/// Writes a duration in milliseconds with three decimals (`12.345`) from whole
/// microseconds, without the formatting machinery.
fn push_millis(out: &mut String, micros: u64) {
    push_decimal(out, micros / 1000);
    out.push('.');
    let frac = micros % 1000;
    for pad in [100, 10] {
        if frac < pad {
            out.push('0');
        }
    }
    push_decimal(out, frac);
}

/// The `Server-Timing` value: `total;dur=…` and, for a profiled request,
/// `db;dur=…;desc="N queries"`.
fn server_timing_value(total: std::time::Duration, db: Option<(usize, f64)>) -> String {
    let mut v = String::with_capacity(64);
    v.push_str("total;dur=");
    push_millis(&mut v, u64::try_from(total.as_micros()).unwrap_or(u64::MAX));
    if let Some((n, db_ms)) = db {
        v.push_str(", db;dur=");
        // Finite and non-negative by construction (a sum of durations); saturating.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        push_millis(&mut v, (db_ms * 1000.0).round() as u64);
        v.push_str(";desc=\"");
        push_decimal(&mut v, u64::try_from(n).unwrap_or(u64::MAX));
        v.push_str(if n == 1 { " query\"" } else { " queries\"" });
    }
    v
}

/// Finishes the profile when dropped: at the end of the body, or when the body or the
/// future is dropped early.
struct Guard {
    start: Instant,
    method: Method,
    route: metrics::SharedString,
    redaction: Option<Arc<Redaction>>,
    status: u16,
    bytes: u64,
    collector: Option<Arc<Collector>>,
    metrics: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let elapsed = self.start.elapsed();
        if self.metrics {
            metrics::histogram!(
                "rampart_profiler_request_duration_seconds",
                "method" => method_label(&self.method),
                "route" => self.route.clone(),
                "status" => status_label(self.status),
            )
            .record(elapsed.as_secs_f64());
        }
        if let Some(c) = &self.collector {
            let mut d = c.lock();
            d.record.status = self.status;
            d.record.duration_ms = elapsed.as_secs_f64() * 1000.0;
            d.record.response_bytes = self.bytes;
        }
    }
}

pin_project! {
    /// The future of [`Profiler`]: polls the inner future inside the request's span.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        span: Span,
        state: Option<Guard>,
        server_timing: bool,
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

const SERVER_TIMING: HeaderName = HeaderName::from_static("server-timing");

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: Body,
{
    type Output = Result<Response<ProfiledBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _entered = this.span.enter();
            ready!(this.inner.poll(cx))
        };
        let Some(mut guard) = this.state.take() else {
            // Polled after completion: the inner future decides what that means.
            return Poll::Pending;
        };
        let res = match result {
            Ok(res) => res,
            Err(e) => return Poll::Ready(Err(e)),
        };
        let (mut parts, body) = res.into_parts();
        guard.status = parts.status.as_u16();
        if *this.server_timing {
            let value = server_timing_value(
                guard.start.elapsed(),
                guard.collector.as_ref().map(|c| c.db_summary()),
            );
            if let Ok(v) = HeaderValue::try_from(value) {
                parts.headers.append(SERVER_TIMING, v);
            }
        }
        if let (Some(c), Some(r)) = (&guard.collector, &guard.redaction) {
            c.lock().record.response_headers = redact_headers(&parts.headers, r);
        }
        let span = std::mem::replace(this.span, Span::none());
        Poll::Ready(Ok(Response::from_parts(
            parts,
            ProfiledBody {
                inner: body,
                span,
                guard: Some(guard),
            },
        )))
    }
}

pin_project! {
    /// The response body of [`Profiler`]: counts the bytes sent and finishes the profile
    /// when the body ends (or is dropped). Frames pass through unchanged.
    pub struct ProfiledBody<B> {
        #[pin]
        inner: B,
        span: Span,
        guard: Option<Guard>,
    }
}

impl<B> fmt::Debug for ProfiledBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProfiledBody")
            .field("finished", &self.guard.is_none())
            .finish_non_exhaustive()
    }
}

impl<B: Body> Body for ProfiledBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let polled = {
            let _entered = this.span.enter();
            this.inner.as_mut().poll_frame(cx)
        };
        let ended = match &polled {
            Poll::Pending => false,
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(g), Some(d)) = (this.guard.as_mut(), frame.data_ref()) {
                    g.bytes += d.remaining() as u64;
                }
                this.inner.is_end_stream()
            }
            Poll::Ready(_) => true,
        };
        if ended {
            this.guard.take();
            *this.span = Span::none();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_timings_are_formatted_without_floats() {
        assert_eq!(status_label(200).as_ref(), "200");
        assert_eq!(status_label(429).as_ref(), "429");
        assert_eq!(status_label(599).as_ref(), "599");
        assert_eq!(status_label(100).as_ref(), "100");
        assert_eq!(status_label(999).as_ref(), "999");
        assert_eq!(status_label(0).as_ref(), "0");
        let d = std::time::Duration::from_nanos(12_345_678);
        assert_eq!(server_timing_value(d, None), "total;dur=12.345");
        assert_eq!(
            server_timing_value(std::time::Duration::from_micros(7), Some((1, 2.0))),
            "total;dur=0.007, db;dur=2.000;desc=\"1 query\""
        );
        assert_eq!(
            server_timing_value(std::time::Duration::ZERO, Some((3, 0.0004))),
            "total;dur=0.000, db;dur=0.000;desc=\"3 queries\""
        );
    }

    #[test]
    fn generic_routes_hide_ids() {
        assert_eq!(generic_route("/orders/42/items"), "/orders/{id}/items");
        assert_eq!(
            generic_route("/u/3f2504e0-4f89-11d3-9a0c-0305e82c3301"),
            "/u/{id}"
        );
        assert_eq!(generic_route("/health/"), "/health/");
        assert_eq!(
            generic_route("/reset/k3j4h5g6f7/confirm"),
            "/reset/{id}/confirm"
        );
        assert_eq!(
            generic_route("/invite/abcdefghijklmnopqrstuvwxyzABCD"),
            "/invite/{id}"
        );
        assert_eq!(generic_route("/api/v2/orders"), "/api/v2/orders");
        assert!(generic_route(&"/a".repeat(300)).len() <= 200);
        assert_eq!(truncated("aé", 2), "a");
        assert_eq!(truncated("abc", 5), "abc");
    }

    #[test]
    fn bad_settings_are_config_errors() {
        assert!(ProfilerLayer::new().sample_percent(101.0).is_err());
        assert!(ProfilerLayer::new().sample_percent(f64::NAN).is_err());
        assert!(ProfilerLayer::new().n_plus_one_threshold(1).is_err());
        let e = ProfilerLayer::new().sample_percent(-1.0).unwrap_err();
        assert!(e.message().contains("between 0 and 100"));
        let cfg = ProfilerConfig {
            store: StoreLimits::default().max_records(0),
            ..ProfilerConfig::default()
        };
        assert!(ProfilerLayer::from_config(&cfg).is_err());
        assert!(format!("{:?}", ProfilerLayer::new().sample_with(|_| true)).contains("closure"));
    }
}
