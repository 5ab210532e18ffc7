//! Named policies: quota windows, a key, the requests they apply to.

use std::{fmt, net::IpAddr, sync::Arc};

use http::{Extensions, HeaderMap, HeaderName, HeaderValue, Method, Uri};
use serde::Deserialize;

use super::{
    gcra::{MAX_WINDOWS, Window},
    pattern::PathPattern,
    quota::Quota,
};
use crate::{client_ip::ClientIp, error::ConfigError, key::cap_len};

/// The longest key part kept as is; longer values (a huge header) are hashed.
pub(crate) const MAX_SUBJECT_LEN: usize = 128;

/// What a policy counts requests by.
///
/// # Example
///
/// ```
/// use tower_rampart::rate_limit::Key;
///
/// let by_api_key = Key::header("x-api-key").unwrap();
/// let by_path = Key::custom(|req| Some(req.uri().path().to_owned()));
/// assert!(matches!(by_api_key, Key::Header(_)));
/// assert!(format!("{by_path:?}").contains("Custom"));
/// ```
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum Key {
    /// The client address from [`ClientIpResolver`](crate::client_ip::ClientIpResolver)
    /// (IPv6 grouped by prefix). The default.
    #[default]
    ClientIp,
    /// The authenticated user, read through [`IdentityReader`](crate::identity::IdentityReader).
    User,
    /// The tenant the request was resolved to (or the user's tenant).
    Tenant,
    /// The value of a request header (for example an API key).
    Header(HeaderName),
    /// One bucket shared by every request.
    Global,
    /// A key computed by the application; `None` counts as anonymous.
    Custom(KeyFn),
    /// Used only by direct decisions ([`RateLimitLayer::check`](super::RateLimitLayer::check)):
    /// the policy applies to no request by itself.
    Direct,
}

impl Key {
    /// A header key.
    ///
    /// # Errors
    ///
    /// When `name` is not a valid header name.
    pub fn header(name: &str) -> Result<Self, ConfigError> {
        HeaderName::try_from(name).map(Self::Header).map_err(|_| {
            ConfigError::new(format!(
                "rate-limit key header {name:?} is not a valid header name: use letters, digits \
                 and `-`, e.g. \"x-api-key\""
            ))
        })
    }

    /// A key computed by a closure from the request.
    pub fn custom<F>(f: F) -> Self
    where
        F: Fn(&RequestInfo<'_>) -> Option<String> + Send + Sync + 'static,
    {
        Self::Custom(Arc::new(f))
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::ClientIp => "ip",
            Self::User => "user",
            Self::Tenant => "tenant",
            Self::Header(_) => "header",
            Self::Global => "global",
            Self::Custom(_) => "custom",
            Self::Direct => "direct",
        }
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ClientIp => f.write_str("ClientIp"),
            Self::User => f.write_str("User"),
            Self::Tenant => f.write_str("Tenant"),
            Self::Header(h) => f.debug_tuple("Header").field(h).finish(),
            Self::Global => f.write_str("Global"),
            Self::Custom(_) => f.write_str("Custom(..)"),
            Self::Direct => f.write_str("Direct"),
        }
    }
}

/// A key closure: the request's key, or `None` for "anonymous".
pub type KeyFn = Arc<dyn Fn(&RequestInfo<'_>) -> Option<String> + Send + Sync>;

/// What a policy does with a request that has no value for its key (an anonymous request
/// on a per-user policy, a missing header).
///
/// By default, [`Anonymous::ClientIp`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Anonymous {
    /// Count the request by its client address instead.
    #[default]
    ClientIp,
    /// The policy does not apply to the request.
    Skip,
    /// All such requests share one bucket.
    Shared,
}

/// What the limiter does with a request whose client address is unknown (no peer address
/// in the request extensions: an axum app served without
/// `into_make_service_with_connect_info::<SocketAddr>()`, the `axum` feature off, or bare
/// hyper without [`PeerAddr`](crate::client_ip::PeerAddr)) when a policy needs it.
///
/// By default, [`MissingPeer::Reject`]: silently counting such requests together would
/// let one client lock out everyone.
///
/// # Example
///
/// ```
/// use tower_rampart::rate_limit::{MissingPeer, Policy, Quota, RateLimitLayer};
///
/// let layer = RateLimitLayer::builder()
///     .policy(Policy::new("api", Quota::per_second(10)))
///     .missing_peer(MissingPeer::Skip) // e.g. a Unix-socket deployment, limited upstream
///     .build()
///     .unwrap();
/// # let _ = layer;
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum MissingPeer {
    /// Answer a JSON **500** whose detail names the fix, and log one warning. The default.
    #[default]
    Reject,
    /// Count all such requests in one shared bucket per policy.
    Shared,
    /// Do not limit such requests by the policies that need an address.
    Skip,
}

/// What a custom key closure sees of the request.
#[derive(Debug)]
pub struct RequestInfo<'a> {
    pub(crate) method: &'a Method,
    pub(crate) uri: &'a Uri,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) extensions: &'a Extensions,
    pub(crate) client_ip: Option<ClientIp>,
}

impl RequestInfo<'_> {
    /// The request method.
    pub fn method(&self) -> &Method {
        self.method
    }
    /// The request URI.
    pub fn uri(&self) -> &Uri {
        self.uri
    }
    /// The request headers.
    pub fn headers(&self) -> &HeaderMap {
        self.headers
    }
    /// The request extensions (for example the authenticated principal).
    pub fn extensions(&self) -> &Extensions {
        self.extensions
    }
    /// The client address, resolved behind trusted proxies only.
    pub fn client_ip(&self) -> Option<ClientIp> {
        self.client_ip
    }
}

/// A named rate-limit policy: one or more quota windows, a key, the requests it applies
/// to, a cost and a shadow switch.
///
/// A policy with no path applies to every request (not exempted). All windows of one
/// policy are checked atomically: a request is counted in all of them or in none.
///
/// # Example
///
/// ```
/// use tower_rampart::rate_limit::{Key, Policy, Quota};
///
/// let login = Policy::new("login", Quota::per_minute(5)).post("/accounts/login/").key(Key::ClientIp);
/// let api = Policy::new("api", Quota::per_second(10))
///     .window(Quota::per_hour(1000))
///     .path("/api/*")
///     .key(Key::User);
/// assert_eq!(login.name(), "login");
/// assert_eq!(api.quotas().len(), 2);
/// ```
#[derive(Clone)]
#[must_use]
pub struct Policy {
    name: String,
    quotas: Vec<Quota>,
    key: Key,
    paths: Vec<String>,
    methods: Vec<Method>,
    cost: u32,
    shadow: bool,
    anonymous: Anonymous,
    count_if: Option<CountIf>,
    tiers: Vec<(String, Quota)>,
    tier_fn: Option<TierFn>,
}

/// Which tier of a [`Policy::tiers`] policy a request belongs to; `None`: the policy
/// does not limit it.
pub type TierFn = Arc<dyn for<'r> Fn(&'r RequestInfo<'_>) -> Option<&'r str> + Send + Sync>;

/// Which responses a [`Policy::count_if`] policy counts.
pub type CountIf = Arc<dyn Fn(http::StatusCode) -> bool + Send + Sync>;

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("name", &self.name)
            .field("quotas", &self.quotas)
            .field("key", &self.key)
            .field("paths", &self.paths)
            .field("methods", &self.methods)
            .field("cost", &self.cost)
            .field("shadow", &self.shadow)
            .field("anonymous", &self.anonymous)
            .field("count_if", &self.count_if.is_some())
            .field("tiers", &self.tiers)
            .finish()
    }
}

impl Policy {
    /// A policy named `name` (letters, digits, `-`, `_`, `.`) with one quota window.
    pub fn new(name: impl Into<String>, quota: Quota) -> Self {
        Self {
            name: name.into(),
            quotas: vec![quota],
            key: Key::ClientIp,
            paths: Vec::new(),
            methods: Vec::new(),
            cost: 1,
            shadow: false,
            anonymous: Anonymous::ClientIp,
            count_if: None,
            tiers: Vec::new(),
            tier_fn: None,
        }
    }

    /// Quotas per request: plans, tenant tiers. `tiers` names each tier's quota and
    /// `select` picks the tier of a request (from its extensions: the user's plan, the
    /// tenant's tier); `None` means this policy does not limit the request, and a name
    /// that is not a tier gets the policy's own quota (the one given to
    /// [`new`](Self::new)).
    ///
    /// Each tier counts in buckets of its own (named `policy.tier` in keys, headers and
    /// metrics), so a plan change never mixes counts, and the set of quotas is fixed at
    /// build time: a request can choose among them, never invent one. Same on both
    /// backends. By default, a policy has one quota for every request.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_rampart::rate_limit::{Key, Policy, Quota, RateLimitLayer};
    ///
    /// #[derive(Clone)]
    /// struct Plan(&'static str);
    ///
    /// let api = Policy::new("api", Quota::per_hour(100))
    ///     .key(Key::User)
    ///     .tiers(
    ///         [("free", Quota::per_hour(100)), ("pro", Quota::per_hour(10_000))],
    ///         |req| req.extensions().get::<Plan>().map(|p| p.0),
    ///     );
    /// let layer = RateLimitLayer::builder().policy(api).build().unwrap();
    /// assert_eq!(layer.policy_names().collect::<Vec<_>>(), ["api"]);
    /// ```
    pub fn tiers<I, N, F>(mut self, tiers: I, select: F) -> Self
    where
        I: IntoIterator<Item = (N, Quota)>,
        N: Into<String>,
        F: for<'r> Fn(&'r RequestInfo<'_>) -> Option<&'r str> + Send + Sync + 'static,
    {
        self.tiers = tiers.into_iter().map(|(n, q)| (n.into(), q)).collect();
        self.tier_fn = Some(Arc::new(select));
        self
    }

    /// Counting by outcome: a request is admitted while the bucket has room, and only
    /// responses whose status matches `predicate` consume (for example only 401s:
    /// failed sign-ins, so a user who signs in right away is never limited).
    ///
    /// Every matching response is counted, concurrent ones included (past the quota
    /// the bucket stays full). Requests in flight are admitted while the bucket has
    /// room, so pair the policy with a plain one (every attempt counted, a higher
    /// quota) to bound concurrent guessing. With Redis, responses that do not match
    /// cost no round trip; matching ones one more. By default, every admitted request
    /// consumes.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_rampart::rate_limit::{Policy, Quota};
    ///
    /// let failed_logins = Policy::new("login-failures", Quota::per_minute(5))
    ///     .post("/api/v1/auth/token")
    ///     .count_if(|status| status == http::StatusCode::UNAUTHORIZED);
    /// # let _ = failed_logins;
    /// ```
    pub fn count_if<F>(mut self, predicate: F) -> Self
    where
        F: Fn(http::StatusCode) -> bool + Send + Sync + 'static,
    {
        self.count_if = Some(Arc::new(predicate));
        self
    }

    /// Adds another window (up to four), checked together with the others.
    ///
    /// By default, a policy has the one window given to [`new`](Self::new).
    pub fn window(mut self, quota: Quota) -> Self {
        self.quotas.push(quota);
        self
    }

    /// What requests are counted by.
    ///
    /// By default, [`Key::ClientIp`].
    pub fn key(mut self, key: Key) -> Self {
        self.key = key;
        self
    }

    /// Adds a path pattern (see [`PathPattern`]) the policy applies to.
    ///
    /// By default, a policy applies to every path.
    pub fn path(mut self, pattern: impl Into<String>) -> Self {
        self.paths.push(pattern.into());
        self
    }

    /// Restricts the policy to a method (call again to add more).
    ///
    /// By default, a policy applies to every method.
    pub fn method(mut self, method: Method) -> Self {
        if !self.methods.contains(&method) {
            self.methods.push(method);
        }
        self
    }

    /// `path(pattern)` and `method(GET)`.
    pub fn get(self, pattern: impl Into<String>) -> Self {
        self.path(pattern).method(Method::GET)
    }

    /// `path(pattern)` and `method(POST)`.
    pub fn post(self, pattern: impl Into<String>) -> Self {
        self.path(pattern).method(Method::POST)
    }

    /// How many units one request consumes.
    ///
    /// By default, 1.
    pub fn cost(mut self, cost: u32) -> Self {
        self.cost = cost;
        self
    }

    /// Shadow mode: requests are counted and over-limit ones logged and counted in
    /// metrics (outcome `shadow_rejected`), but never rejected.
    ///
    /// By default, `false`.
    pub fn shadow(mut self, shadow: bool) -> Self {
        self.shadow = shadow;
        self
    }

    /// What to do when the request has no value for the key.
    ///
    /// By default, [`Anonymous::ClientIp`]: count it by client address.
    pub fn anonymous(mut self, anonymous: Anonymous) -> Self {
        self.anonymous = anonymous;
        self
    }

    /// The policy each tier compiles to: this policy with the tier's quota, named
    /// `policy.tier`.
    pub(crate) fn tier_policies(&self) -> impl Iterator<Item = (&str, Self)> {
        self.tiers.iter().map(|(tier, quota)| {
            let mut p = self.clone();
            p.name = format!("{}.{tier}", self.name);
            p.quotas = vec![*quota];
            p.tiers = Vec::new();
            p.tier_fn = None;
            (tier.as_str(), p)
        })
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The quota windows.
    pub fn quotas(&self) -> &[Quota] {
        &self.quotas
    }

    pub(crate) fn compile(&self, index: usize, divisor: u32) -> Result<Compiled, ConfigError> {
        let name = &self.name;
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(ConfigError::new(format!(
                "rate-limit policy name {name:?} is not usable: use 1 to 64 letters, digits, `-`, \
                 `_` or `.` (e.g. \"login\")"
            )));
        }
        if self.quotas.len() > MAX_WINDOWS {
            return Err(ConfigError::new(format!(
                "rate-limit policy `{name}` has {} windows: use at most {MAX_WINDOWS}, or split it \
                 into several policies",
                self.quotas.len()
            )));
        }
        let windows = self
            .quotas
            .iter()
            .map(|q| q.window(name))
            .collect::<Result<Vec<_>, _>>()?;
        if self.cost == 0 {
            return Err(ConfigError::new(format!(
                "rate-limit policy `{name}` has cost 0, so it would never limit: use .cost(1) or more"
            )));
        }
        if let Some(w) = windows.iter().find(|w| u64::from(self.cost) > w.burst) {
            return Err(ConfigError::new(format!(
                "rate-limit policy `{name}`: cost {} exceeds the burst {} of a window, so every \
                 request would be rejected; raise the burst or lower the cost",
                self.cost, w.burst
            )));
        }
        let paths = self
            .paths
            .iter()
            .map(|p| PathPattern::new(p))
            .collect::<Result<Vec<_>, _>>()?;
        let divisor = u64::from(divisor.max(1));
        let fallback = windows
            .iter()
            .map(|w| Window {
                interval: w.interval * divisor,
                burst: (w.burst / divisor).max(u64::from(self.cost)),
            })
            .collect();
        let items: Vec<String> = self
            .quotas
            .iter()
            .enumerate()
            .map(|(i, q)| {
                format!(
                    "\"{}\";q={};w={}",
                    item_name(name, i, self.quotas.len()),
                    q.count(),
                    q.period().as_secs().max(1)
                )
            })
            .collect();
        let policy_header = HeaderValue::try_from(items.join(", "))
            .map_err(|_| ConfigError::new("rate-limit policy header could not be rendered"))?;
        Ok(Compiled {
            index,
            name: name.as_str().into(),
            quotas: self.quotas.clone(),
            windows,
            fallback,
            key: self.key.clone(),
            paths,
            methods: self.methods.clone(),
            cost: u64::from(self.cost),
            shadow: self.shadow,
            anonymous: self.anonymous,
            policy_header,
            allow: Vec::new(),
            count_if: self.count_if.clone(),
            tier_fn: self.tier_fn.clone(),
            tiers: Vec::new(),
            tier_of: None,
            metric_keys: ["allowed", "rejected", "shadow_rejected"].map(|outcome| {
                metrics::Key::from_parts(
                    "rampart_rate_limit_decisions_total",
                    vec![
                        metrics::Label::new("policy", name.clone()),
                        metrics::Label::new("outcome", outcome),
                    ],
                )
            }),
        })
    }
}

/// The name of window `i` in the IETF headers: the policy name, suffixed when the policy
/// has several windows.
pub(crate) fn item_name(name: &str, i: usize, len: usize) -> String {
    if len == 1 {
        name.to_owned()
    } else {
        format!("{name}-{i}")
    }
}

/// A validated policy, ready for requests.
pub(crate) struct Compiled {
    pub(crate) index: usize,
    pub(crate) name: Arc<str>,
    pub(crate) quotas: Vec<Quota>,
    pub(crate) windows: Vec<Window>,
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fallback: Vec<Window>,
    pub(crate) key: Key,
    pub(crate) paths: Vec<PathPattern>,
    pub(crate) methods: Vec<Method>,
    pub(crate) cost: u64,
    pub(crate) shadow: bool,
    pub(crate) anonymous: Anonymous,
    pub(crate) policy_header: HeaderValue,
    /// Client networks this policy never limits (the limiter's allowlist and its own).
    pub(crate) allow: Vec<ipnet::IpNet>,
    /// Only responses matching it consume (admission is a peek).
    pub(crate) count_if: Option<CountIf>,
    /// Picks a tier by name among `tiers` (indexes of their compiled policies).
    pub(crate) tier_fn: Option<TierFn>,
    pub(crate) tiers: Vec<(Box<str>, usize)>,
    /// For a tier's own compiled policy: its base policy's index (never matched alone).
    pub(crate) tier_of: Option<usize>,
    /// `rampart_rate_limit_decisions_total{policy, outcome}` for allowed, rejected, shadow_rejected.
    pub(crate) metric_keys: [metrics::Key; 3],
}

impl fmt::Debug for Compiled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Compiled")
            .field("name", &self.name)
            .field("windows", &self.windows)
            .field("key", &self.key)
            .field("count_if", &self.count_if.is_some())
            .finish_non_exhaustive()
    }
}

/// Who a request is counted as, for one policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Subject {
    Ip(IpAddr),
    Text(Box<str>),
    Global,
    /// Requests without a value for the key ([`Anonymous::Shared`]): a bucket of its own,
    /// never the one of a user or header value that happens to read `anonymous`.
    Anonymous,
    /// No client address known ([`MissingPeer`] decides).
    Unknown,
}

impl Compiled {
    #[inline]
    pub(crate) fn applies(&self, method: &Method, path: &str) -> bool {
        self.tier_of.is_none()
            && (self.methods.is_empty() || self.methods.contains(method))
            && (self.paths.is_empty() || self.paths.iter().any(|p| p.matches(path)))
    }

    /// The subject of `req` for this policy; `None` when the policy skips it.
    #[inline]
    pub(crate) fn subject(
        &self,
        info: &RequestInfo<'_>,
        identity: &crate::identity::IdentityReader,
    ) -> Option<Subject> {
        let ip = || {
            info.client_ip
                .map_or(Subject::Unknown, |c| Subject::Ip(c.key()))
        };
        let text = |s: &str| Subject::Text(cap_len(s.to_owned(), MAX_SUBJECT_LEN).into());
        let found = match &self.key {
            Key::ClientIp => return Some(ip()),
            Key::Global => return Some(Subject::Global),
            Key::User => identity.user_id(info.extensions).map(text),
            Key::Tenant => identity
                .tenant_id(info.extensions)
                .or_else(|| identity.principal_tenant_id(info.extensions))
                .map(text),
            Key::Header(name) => info.headers.get(name).map(|v| match v.to_str() {
                Ok(s) => text(s),
                Err(_) => text(&crate::key::digest(v.as_bytes())),
            }),
            Key::Custom(f) => f(info).map(|s| text(&s)),
            Key::Direct => return None,
        };
        match (found, self.anonymous) {
            (Some(s), _) => Some(s),
            (None, Anonymous::ClientIp) => Some(ip()),
            (None, Anonymous::Skip) => None,
            (None, Anonymous::Shared) => Some(Subject::Anonymous),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_policies_fail_with_advice() {
        let e = Policy::new("", Quota::per_minute(1))
            .compile(0, 1)
            .unwrap_err();
        assert!(e.message().contains("letters"), "{e}");
        let e = Policy::new("a b", Quota::per_minute(1))
            .compile(0, 1)
            .unwrap_err();
        assert!(e.message().contains("letters"), "{e}");
        let mut p = Policy::new("many", Quota::per_second(1));
        for _ in 0..4 {
            p = p.window(Quota::per_hour(100));
        }
        assert!(p.compile(0, 1).unwrap_err().message().contains("at most 4"));
        let e = Policy::new("c", Quota::per_minute(1))
            .cost(0)
            .compile(0, 1)
            .unwrap_err();
        assert!(e.message().contains("cost 0"));
        let e = Policy::new("c", Quota::per_minute(2))
            .cost(3)
            .compile(0, 1)
            .unwrap_err();
        assert!(e.message().contains("exceeds the burst"));
        let e = Policy::new("p", Quota::per_minute(2))
            .path("")
            .compile(0, 1)
            .unwrap_err();
        assert!(e.message().contains("is empty"));
        assert!(Key::header("bad header").is_err());
    }

    #[test]
    fn compiles_headers_and_fallback_windows() {
        let c = Policy::new("api", Quota::per_second(10))
            .window(Quota::per_hour(1000))
            .cost(2)
            .compile(3, 4)
            .unwrap();
        assert_eq!(
            c.policy_header,
            "\"api-0\";q=10;w=1, \"api-1\";q=1000;w=3600"
        );
        assert_eq!(c.fallback[0].interval, c.windows[0].interval * 4);
        assert_eq!(c.fallback[0].burst, 2);
        assert_eq!(c.fallback[1].burst, 250);
        assert_eq!(c.index, 3);
        assert!(c.applies(&Method::DELETE, "/x"));
        let login = Policy::new("login", Quota::per_minute(5))
            .post("/accounts/login/")
            .get("/accounts/login/")
            .method(Method::POST)
            .compile(0, 1)
            .unwrap();
        assert_eq!(login.methods.len(), 2);
        assert!(login.applies(&Method::POST, "/accounts/login/"));
        assert!(!login.applies(&Method::PUT, "/accounts/login/"));
        assert!(!login.applies(&Method::POST, "/accounts/logout/"));
        assert_eq!(login.policy_header, "\"login\";q=5;w=60");
    }
}
