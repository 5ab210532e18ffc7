//! Rejections, the swappable rejection response, and the rate-limit headers.

use std::{
    fmt,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode, header::RETRY_AFTER};
use serde::Deserialize;

use super::{gcra::Outcome, policy::Compiled};
use crate::error::JsonError;

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectionKind {
    /// A policy's quota is exhausted (HTTP 429, gRPC `RESOURCE_EXHAUSTED`).
    RateLimited,
    /// The backend failed and the failure mode is `Closed` (HTTP 503, gRPC `UNAVAILABLE`).
    BackendUnavailable,
    /// The client address is unknown and [`MissingPeer::Reject`](super::MissingPeer::Reject)
    /// applies (HTTP 500, gRPC `INTERNAL`): a deployment error, named in the detail.
    MissingPeer,
}

/// A refused request, given to the [`OnRejection`] strategy and put into the response's
/// extensions.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_rampart::rate_limit::{Rejection, RejectionKind};
///
/// let r = Rejection::rate_limited("login", Duration::from_millis(11_200));
/// assert_eq!(r.kind(), RejectionKind::RateLimited);
/// assert_eq!(r.retry_after_secs(), 12);
/// assert_eq!(r.policy(), "login");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    kind: RejectionKind,
    policy: Arc<str>,
    retry_after: Duration,
    grpc: bool,
}

impl Rejection {
    /// A rate-limited rejection (for custom strategies' tests).
    pub fn rate_limited(policy: &str, retry_after: Duration) -> Self {
        Self::new(
            RejectionKind::RateLimited,
            policy.into(),
            retry_after,
            false,
        )
    }

    pub(crate) fn new(
        kind: RejectionKind,
        policy: Arc<str>,
        retry_after: Duration,
        grpc: bool,
    ) -> Self {
        Self {
            kind,
            policy,
            retry_after,
            grpc,
        }
    }

    /// Why the request was refused.
    pub fn kind(&self) -> RejectionKind {
        self.kind
    }

    /// The name of the policy that refused it.
    pub fn policy(&self) -> &str {
        &self.policy
    }

    /// When the request would be allowed.
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }

    /// [`retry_after`](Self::retry_after) in whole seconds, rounded up, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        ceil_secs(u64::try_from(self.retry_after.as_micros()).unwrap_or(u64::MAX)).max(1)
    }

    /// Whether the request was a gRPC call (`content-type: application/grpc…`).
    pub fn is_grpc(&self) -> bool {
        self.grpc
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            RejectionKind::RateLimited => write!(
                f,
                "rate limit `{}` exceeded, retry in {} s",
                self.policy,
                self.retry_after_secs()
            ),
            RejectionKind::BackendUnavailable => {
                write!(f, "rate limit `{}` backend unavailable", self.policy)
            }
            RejectionKind::MissingPeer => {
                write!(
                    f,
                    "rate limit `{}` needs the client address, and none is known",
                    self.policy
                )
            }
        }
    }
}

pub(crate) fn ceil_secs(us: u64) -> u64 {
    us.div_ceil(1_000_000)
}

/// Builds the response for a refused request. Implemented for closures
/// `Fn(&Rejection) -> Response<Bytes>`; [`DefaultRejection`] is the default.
///
/// The layer then adds `Retry-After` (unless set), the rate-limit headers and the
/// [`Rejection`] as a response extension.
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use http::{Response, StatusCode};
/// use tower_rampart::rate_limit::{OnRejection, Rejection};
///
/// let plain = |r: &Rejection| {
///     let mut res = Response::new(Bytes::from(format!("slow down ({})", r.policy())));
///     *res.status_mut() = StatusCode::TOO_MANY_REQUESTS;
///     res
/// };
/// let res = plain.on_rejection(&Rejection::rate_limited("api", Default::default()));
/// assert_eq!(res.body(), "slow down (api)");
/// ```
pub trait OnRejection: Send + Sync + 'static {
    /// The response for `rejection`.
    fn on_rejection(&self, rejection: &Rejection) -> Response<Bytes>;
}

impl<F> OnRejection for F
where
    F: Fn(&Rejection) -> Response<Bytes> + Send + Sync + 'static,
{
    fn on_rejection(&self, rejection: &Rejection) -> Response<Bytes> {
        self(rejection)
    }
}

/// The default rejection: JSON through [`JsonError`], or a gRPC status for gRPC calls
/// (feature `tonic`).
///
/// - rate limited: **429** `{"error": "Rate limit exceeded", "detail": "Too many
///   requests. Please try again in N seconds.", "retry_after": N}`;
/// - backend unavailable (`FailureMode::Closed`): **503** `{"error": "Service
///   unavailable", "detail": "…", "retry_after": N}`;
/// - client address unknown (`MissingPeer::Reject`): **500** `{"error": "Client address
///   unknown", "detail": "…"}`, the detail naming the fix (no `Retry-After`);
/// - gRPC: a trailers-only response with `grpc-status` 8 (`RESOURCE_EXHAUSTED`) or 14
///   (`UNAVAILABLE`) and the retry hint in the `retry-after` (seconds) and
///   `grpc-retry-pushback-ms` metadata.
///
/// # Example
///
/// ```
/// use tower_rampart::rate_limit::{DefaultRejection, OnRejection, Rejection};
///
/// let res = DefaultRejection.on_rejection(&Rejection::rate_limited("login", std::time::Duration::from_secs(7)));
/// assert_eq!(res.status(), 429);
/// let body: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
/// assert_eq!(body["detail"], "Too many requests. Please try again in 7 seconds.");
/// assert_eq!(body["retry_after"], 7);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultRejection;

impl OnRejection for DefaultRejection {
    fn on_rejection(&self, rejection: &Rejection) -> Response<Bytes> {
        let secs = rejection.retry_after_secs();
        #[cfg(feature = "tonic")]
        if rejection.is_grpc() {
            return grpc_response(rejection, secs);
        }
        let unit = if secs == 1 { "second" } else { "seconds" };
        if rejection.kind() == RejectionKind::MissingPeer {
            return JsonError::new("Client address unknown", MISSING_PEER_DETAIL)
                .into_response(StatusCode::INTERNAL_SERVER_ERROR);
        }
        let (status, body) = match rejection.kind() {
            RejectionKind::RateLimited => (
                StatusCode::TOO_MANY_REQUESTS,
                JsonError::new(
                    "Rate limit exceeded",
                    format!("Too many requests. Please try again in {secs} {unit}."),
                ),
            ),
            RejectionKind::BackendUnavailable | RejectionKind::MissingPeer => (
                StatusCode::SERVICE_UNAVAILABLE,
                JsonError::new(
                    "Service unavailable",
                    format!(
                        "Rate limiting is temporarily unavailable. Please try again in {secs} {unit}."
                    ),
                ),
            ),
        };
        body.with_field("retry_after", secs).into_response(status)
    }
}

/// What a server without peer addresses must change, for the 500 and the log.
pub(crate) const MISSING_PEER_DETAIL: &str = "The server cannot tell the client's address, so its \
    rate limits cannot apply. Operators: serve the app with \
    `into_make_service_with_connect_info::<SocketAddr>()` (axum, feature `axum`), insert \
    `PeerAddr` when accepting (hyper), or choose `MissingPeer::Shared` or `MissingPeer::Skip` \
    on the rate limiter.";

#[cfg(feature = "tonic")]
fn grpc_response(rejection: &Rejection, secs: u64) -> Response<Bytes> {
    use tonic::metadata::MetadataValue;
    let mut status = match rejection.kind() {
        RejectionKind::RateLimited => {
            tonic::Status::resource_exhausted(format!("rate limit exceeded, retry in {secs} s"))
        }
        RejectionKind::BackendUnavailable => {
            tonic::Status::unavailable("rate limiting temporarily unavailable")
        }
        RejectionKind::MissingPeer => {
            return tonic::Status::internal(MISSING_PEER_DETAIL).into_http();
        }
    };
    let ms = u64::try_from(rejection.retry_after().as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let md = status.metadata_mut();
    md.insert("retry-after", MetadataValue::from(secs));
    md.insert("grpc-retry-pushback-ms", MetadataValue::from(ms));
    status.into_http::<Bytes>()
}

/// Which rate-limit headers responses carry.
///
/// By default, [`HeaderStyle::Ietf`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum HeaderStyle {
    /// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers-11).
    #[default]
    Ietf,
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset` (Unix time).
    Legacy,
    /// Both sets.
    Both,
    /// No rate-limit headers (only `Retry-After` on rejections).
    None,
}

impl HeaderStyle {
    fn ietf(self) -> bool {
        matches!(self, Self::Ietf | Self::Both)
    }
    fn legacy(self) -> bool {
        matches!(self, Self::Legacy | Self::Both)
    }
    pub(crate) fn any(self) -> bool {
        self != Self::None
    }
}

const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// One policy's decision, for the headers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Checked<'a> {
    pub(crate) policy: &'a Compiled,
    pub(crate) outcome: Outcome,
}

/// The decisions of one request, for the headers: the first one inline (most requests
/// match one policy), the others in a vector allocated only when needed. Without headers
/// to render, nothing is kept (a decision is a hundred bytes to copy).
#[derive(Debug)]
pub(crate) struct Checks<'a> {
    keep: bool,
    first: Option<Checked<'a>>,
    rest: Vec<Checked<'a>>,
}

impl Default for Checks<'_> {
    fn default() -> Self {
        Self::new(true)
    }
}

impl<'a> Checks<'a> {
    /// Decisions that are kept only when `keep` (the layer renders headers).
    pub(crate) fn new(keep: bool) -> Self {
        Self {
            keep,
            first: None,
            rest: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, c: Checked<'a>) {
        if !self.keep {
            return;
        }
        if self.first.is_none() {
            self.first = Some(c);
        } else {
            self.rest.push(c);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    fn iter(&self) -> impl Iterator<Item = &Checked<'a>> {
        self.first.iter().chain(self.rest.iter())
    }
}

#[cfg(test)]
impl<'a> FromIterator<Checked<'a>> for Checks<'a> {
    fn from_iter<I: IntoIterator<Item = Checked<'a>>>(iter: I) -> Self {
        let mut c = Self::default();
        for x in iter {
            c.push(x);
        }
        c
    }
}

/// Rendered rate-limit headers, added to the response as they are.
pub(crate) type Rendered = Vec<(HeaderName, HeaderValue)>;

/// Renders the configured headers for the decisions of one request.
pub(crate) fn render(style: HeaderStyle, checked: &Checks<'_>, out: &mut Rendered) {
    let Some(first) = &checked.first else {
        return;
    };
    if !style.any() {
        return;
    }
    if style.ietf() {
        let policy = if checked.len() == 1 {
            first.policy.policy_header.clone()
        } else {
            let mut joined = Vec::with_capacity(32 * checked.len());
            for c in checked.iter() {
                if !joined.is_empty() {
                    joined.extend_from_slice(b", ");
                }
                joined.extend_from_slice(c.policy.policy_header.as_bytes());
            }
            HeaderValue::from_maybe_shared(Bytes::from(joined))
                .unwrap_or_else(|_| HeaderValue::from_static(""))
        };
        out.push((RATELIMIT_POLICY, policy));
        let mut value = String::with_capacity(32 * checked.len());
        for c in checked.iter() {
            let n = c.outcome.len;
            for (i, w) in c.outcome.windows().iter().enumerate() {
                if !value.is_empty() {
                    value.push_str(", ");
                }
                // The item's name, as `item_name` renders it (without allocating).
                value.push('"');
                value.push_str(&c.policy.name);
                if n > 1 {
                    value.push('-');
                    crate::key::push_decimal(&mut value, i as u64);
                }
                value.push_str("\";r=");
                crate::key::push_decimal(&mut value, w.remaining);
                value.push_str(";t=");
                crate::key::push_decimal(&mut value, ceil_secs(w.reset));
            }
        }
        if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(value)) {
            out.push((RATELIMIT, v));
        }
    }
    if style.legacy() {
        // The most restrictive window: fewest remaining, then the longest reset.
        let mut best: Option<(u64, u64, u32)> = None;
        for c in checked.iter() {
            for (i, w) in c.outcome.windows().iter().enumerate() {
                let cand = (w.remaining, w.reset, c.policy.quotas[i].count());
                best = Some(match best {
                    Some(b)
                        if (b.0, std::cmp::Reverse(b.1)) <= (cand.0, std::cmp::Reverse(cand.1)) =>
                    {
                        b
                    }
                    _ => cand,
                });
            }
        }
        if let Some((remaining, reset, limit)) = best {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            out.push((X_LIMIT, HeaderValue::from(limit)));
            out.push((X_REMAINING, HeaderValue::from(remaining)));
            out.push((X_RESET, HeaderValue::from(now + ceil_secs(reset))));
        }
    }
}

/// Completes a rejection response: `Retry-After`, rate headers, the typed rejection.
pub(crate) fn finish_rejection(
    mut res: Response<Bytes>,
    rejection: Rejection,
    headers: Option<Rendered>,
) -> Response<Bytes> {
    if !rejection.is_grpc()
        && rejection.kind() != RejectionKind::MissingPeer
        && !res.headers().contains_key(RETRY_AFTER)
    {
        res.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(rejection.retry_after_secs()));
    }
    for (name, value) in headers.into_iter().flatten() {
        res.headers_mut().insert(name, value);
    }
    res.extensions_mut().insert(rejection);
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limit::{Policy, Quota, gcra::WindowState};

    fn outcome(windows: &[(u64, u64)]) -> Outcome {
        let mut o = Outcome {
            allowed: true,
            retry_after: 0,
            windows: [WindowState::default(); 4],
            len: windows.len(),
        };
        for (i, (r, t)) in windows.iter().enumerate() {
            o.windows[i] = WindowState {
                remaining: *r,
                reset: *t,
            };
        }
        o
    }

    #[test]
    fn renders_ietf_and_legacy_headers() {
        let api = Policy::new("api", Quota::per_second(10))
            .window(Quota::per_hour(1000))
            .compile(0, 1)
            .unwrap();
        let login = Policy::new("login", Quota::per_minute(5))
            .compile(1, 1)
            .unwrap();
        let checked: Checks<'_> = [
            Checked {
                policy: &api,
                outcome: outcome(&[(9, 100_000), (999, 3_600_000)]),
            },
            Checked {
                policy: &login,
                outcome: outcome(&[(2, 36_000_001)]),
            },
        ]
        .into_iter()
        .collect();
        let mut rendered = Rendered::new();
        render(HeaderStyle::Both, &checked, &mut rendered);
        let h: http::HeaderMap = rendered.into_iter().collect();
        assert_eq!(
            h["ratelimit-policy"],
            "\"api-0\";q=10;w=1, \"api-1\";q=1000;w=3600, \"login\";q=5;w=60"
        );
        assert_eq!(
            h["ratelimit"],
            "\"api-0\";r=9;t=1, \"api-1\";r=999;t=4, \"login\";r=2;t=37"
        );
        assert_eq!(h["x-ratelimit-limit"], "5");
        assert_eq!(h["x-ratelimit-remaining"], "2");
        let reset: u64 = h["x-ratelimit-reset"].to_str().unwrap().parse().unwrap();
        assert!(reset > 1_700_000_000);
        let mut none = Rendered::new();
        render(HeaderStyle::None, &checked, &mut none);
        assert!(none.is_empty());
        let only_api: Checks<'_> = checked.iter().take(1).copied().collect();
        let mut legacy = Rendered::new();
        render(HeaderStyle::Legacy, &only_api, &mut legacy);
        let legacy: http::HeaderMap = legacy.into_iter().collect();
        assert!(!legacy.contains_key("ratelimit"));
        assert_eq!(legacy["x-ratelimit-limit"], "10");
    }

    #[test]
    fn default_rejections() {
        let r = Rejection::new(
            RejectionKind::BackendUnavailable,
            "api".into(),
            Duration::from_millis(1),
            false,
        );
        let res = DefaultRejection.on_rejection(&r);
        assert_eq!(res.status(), 503);
        let v: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
        assert_eq!(v["error"], "Service unavailable");
        assert_eq!(v["retry_after"], 1);
        assert!(r.to_string().contains("unavailable"));
        let one = Rejection::rate_limited("p", Duration::from_millis(10));
        let v: serde_json::Value =
            serde_json::from_slice(DefaultRejection.on_rejection(&one).body()).unwrap();
        assert_eq!(
            v["detail"],
            "Too many requests. Please try again in 1 second."
        );
        assert!(one.to_string().contains("retry in 1 s"));
        let res = finish_rejection(DefaultRejection.on_rejection(&one), one.clone(), None);
        assert_eq!(res.headers()["retry-after"], "1");
        assert_eq!(res.extensions().get::<Rejection>(), Some(&one));
    }
}
