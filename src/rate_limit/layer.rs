//! The layer, its builder and the shared limiter.

use std::{fmt, sync::Arc, time::Duration};

use http::{Request, header::CONTENT_TYPE};
use tower_layer::Layer;

#[cfg(feature = "redis")]
use super::backend::redis::{BackendError, FailureMode, RedisBackend, RedisStore};
use super::{
    backend::{
        Mode,
        memory::{MemoryBackend, MemoryStore},
    },
    pattern::PathPattern,
    policy::{Compiled, MissingPeer, Policy, RequestInfo, Subject},
    response::{
        Checked, Checks, DefaultRejection, HeaderStyle, OnRejection, Rejection, RejectionKind,
        Rendered, render,
    },
    service::RateLimit,
};
use crate::{client_ip::ClientIpResolver, error::ConfigError, identity::IdentityReader};

/// Applies named rate-limit policies to every request of the wrapped service.
///
/// Build it with [`RateLimitLayer::builder`]; clones share the same counters.
///
/// # Example
///
/// ```
/// use tower_rampart::rate_limit::{Key, Policy, Quota, RateLimitLayer};
///
/// let layer = RateLimitLayer::builder()
///     .policy(Policy::new("login", Quota::per_minute(5)).post("/accounts/login/").key(Key::ClientIp))
///     .policy(Policy::new("api", Quota::per_hour(100)).path("/api/*").key(Key::User))
///     .exempt("/health/*")
///     .build()
///     .unwrap();
/// assert_eq!(layer.policy_names().collect::<Vec<_>>(), ["login", "api"]);
/// ```
#[derive(Clone)]
#[must_use]
pub struct RateLimitLayer {
    pub(crate) limiter: Arc<Limiter>,
}

impl fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("policies", &self.limiter.policies.len())
            .field("backend", &self.limiter.backend)
            .finish_non_exhaustive()
    }
}

impl RateLimitLayer {
    /// A builder with no policy, the in-memory backend and default settings.
    pub fn builder() -> RateLimitBuilder {
        RateLimitBuilder::default()
    }

    /// The names of the policies, in order.
    pub fn policy_names(&self) -> impl Iterator<Item = &str> {
        self.limiter
            .policies
            .iter()
            .filter(|p| p.tier_of.is_none())
            .map(|p| &*p.name)
    }

    /// The number of keys held by the in-memory backend (or the local fallback of the
    /// Redis backend); 0 when there is none.
    pub fn memory_keys(&self) -> usize {
        self.limiter.memory().map_or(0, MemoryStore::len)
    }

    /// Decides `cost` units for `key` under the policy named `policy`, from inside a
    /// handler: the same backend, failure mode, metrics and rejection response as the
    /// layer's own decisions. For what the request alone cannot say, such as failed
    /// sign-ins per account (keyed by tenant and user name from a form body).
    ///
    /// The key is counted in the policy's own namespace (a `Key::User` policy checked
    /// with `"alice"` shares alice's bucket); give the policy [`Key::Direct`](super::Key::Direct) to use it
    /// only here.
    ///
    /// # Errors
    ///
    /// [`UnknownPolicy`] when no policy has that name (a programming error).
    ///
    /// # Example
    ///
    /// ```
    /// use tower_rampart::rate_limit::{Key, Policy, Quota, RateLimitLayer};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let limiter = RateLimitLayer::builder()
    ///     .policy(Policy::new("account-failures", Quota::per_minute(2)).key(Key::Direct))
    ///     .build()
    ///     .unwrap();
    /// // After each failed sign-in of acme/alice:
    /// assert!(limiter.check("account-failures", "acme/alice", 1).await.unwrap().is_allowed());
    /// assert!(limiter.check("account-failures", "acme/alice", 1).await.unwrap().is_allowed());
    /// let third = limiter.check("account-failures", "acme/alice", 1).await.unwrap();
    /// assert!(!third.is_allowed());
    /// assert_eq!(third.into_response().unwrap().status(), 429);
    /// // Before checking a password: would one more attempt fit? (consumes nothing)
    /// assert!(!limiter.peek("account-failures", "acme/alice", 1).await.unwrap().is_allowed());
    /// # }
    /// ```
    pub async fn check(
        &self,
        policy: &str,
        key: &str,
        cost: u32,
    ) -> Result<Decision, UnknownPolicy> {
        self.direct(policy, key, cost, Mode::Decide).await
    }

    /// Whether [`check`](Self::check) would allow `cost` units now, consuming nothing.
    ///
    /// # Errors
    ///
    /// [`UnknownPolicy`] when no policy has that name.
    pub async fn peek(
        &self,
        policy: &str,
        key: &str,
        cost: u32,
    ) -> Result<Decision, UnknownPolicy> {
        self.direct(policy, key, cost, Mode::Peek).await
    }

    /// Consumes `cost` units for `key` whether they fit or not (the bucket's fill
    /// capped at full): an outcome that already happened, such as a failed sign-in.
    ///
    /// # Errors
    ///
    /// [`UnknownPolicy`] when no policy has that name.
    pub async fn record(
        &self,
        policy: &str,
        key: &str,
        cost: u32,
    ) -> Result<Decision, UnknownPolicy> {
        self.direct(policy, key, cost, Mode::Force).await
    }

    async fn direct(
        &self,
        policy: &str,
        key: &str,
        cost: u32,
        mode: Mode,
    ) -> Result<Decision, UnknownPolicy> {
        let limiter = &self.limiter;
        let policy = limiter
            .policies
            .iter()
            .find(|p| &*p.name == policy)
            .ok_or_else(|| UnknownPolicy(policy.to_owned()))?;
        let subject = Subject::Text(
            crate::key::cap_len(key.to_owned(), super::policy::MAX_SUBJECT_LEN).into(),
        );
        let cost = u64::from(cost.max(1));
        let outcome = limiter.direct_outcome(policy, subject, cost, mode).await;
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(rejection) => {
                return Ok(Decision {
                    allowed: false,
                    retry_after: rejection.retry_after(),
                    response: Some(limiter.reject(rejection, &Checks::default())),
                });
            }
        };
        if mode == Mode::Peek {
            return Ok(Decision {
                allowed: outcome.allowed,
                retry_after: Duration::from_micros(outcome.retry_after),
                response: None,
            });
        }
        let mut checked = Checks::new(limiter.headers.any());
        let rejection = Limiter::record(policy, outcome, || false, &mut checked);
        Ok(Decision {
            allowed: rejection.is_none() && (outcome.allowed || mode != Mode::Force),
            retry_after: Duration::from_micros(outcome.retry_after),
            response: rejection.map(|r| limiter.reject(r, &checked)),
        })
    }

    /// Drops the in-memory keys whose windows have all fully recovered. This loses no
    /// information (an idle key behaves exactly like a new one); full shards do it on
    /// their own, so calling it is only useful to give memory back early.
    pub fn evict_idle(&self) {
        if let Some(m) = self.limiter.memory() {
            m.sweep();
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(inner, self.limiter.clone())
    }
}

/// The answer of a direct decision ([`RateLimitLayer::check`], `peek`, `record`).
#[derive(Debug)]
pub struct Decision {
    allowed: bool,
    retry_after: Duration,
    response: Option<http::Response<bytes::Bytes>>,
}

impl Decision {
    /// Whether the units fit (for `record`: whether they fitted before being counted).
    pub fn is_allowed(&self) -> bool {
        self.allowed
    }

    /// How long until the units would fit (zero when they do).
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }

    /// The limiter's rejection response (429 with `Retry-After` and the rate-limit
    /// headers, or the failure mode's 503) when the decision refused; `None` when it
    /// allowed, and for `peek`.
    pub fn into_response(self) -> Option<http::Response<bytes::Bytes>> {
        self.response
    }
}

/// A direct decision named a policy the limiter does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownPolicy(String);

impl fmt::Display for UnknownPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no rate-limit policy is named `{}`: add it to the builder (with Key::Direct if it \
             is only for direct decisions)",
            self.0
        )
    }
}

impl std::error::Error for UnknownPolicy {}

/// Builds a [`RateLimitLayer`].
///
/// By default: no policy, no exemption, the in-memory backend with
/// [`MemoryBackend::default`], a [`ClientIpResolver`] that trusts no proxy, an
/// [`IdentityReader`] that knows no user type, [`HeaderStyle::Ietf`] and
/// [`DefaultRejection`].
#[must_use]
pub struct RateLimitBuilder {
    policies: Vec<Policy>,
    exempt: Vec<String>,
    allow: Vec<(Option<String>, String)>,
    missing_peer: MissingPeer,
    resolver: ClientIpResolver,
    identity: IdentityReader,
    memory: MemoryBackend,
    #[cfg(feature = "redis")]
    redis: Option<RedisBackend>,
    headers: HeaderStyle,
    on_rejection: Arc<dyn OnRejection>,
}

impl Default for RateLimitBuilder {
    fn default() -> Self {
        Self {
            policies: Vec::new(),
            exempt: Vec::new(),
            allow: Vec::new(),
            missing_peer: MissingPeer::default(),
            resolver: ClientIpResolver::default(),
            identity: IdentityReader::new(),
            memory: MemoryBackend::default(),
            #[cfg(feature = "redis")]
            redis: None,
            headers: HeaderStyle::default(),
            on_rejection: Arc::new(DefaultRejection),
        }
    }
}

impl fmt::Debug for RateLimitBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitBuilder")
            .field("policies", &self.policies)
            .field("exempt", &self.exempt)
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

impl RateLimitBuilder {
    /// Adds a policy. Every policy matching a request is checked; any rejection rejects.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policies.push(policy);
        self
    }

    /// Exempts paths matching `pattern` (see [`PathPattern`]) from every policy.
    ///
    /// By default, nothing is exempt.
    pub fn exempt(mut self, pattern: impl Into<String>) -> Self {
        self.exempt.push(pattern.into());
        self
    }

    /// Exempts clients in these networks (CIDRs such as `10.0.0.0/8`, or single
    /// addresses) from every policy: internal monitors, an office network.
    ///
    /// By default, no client is exempt. Entries are checked by [`build`](Self::build): an
    /// empty or malformed entry is an error there.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_rampart::rate_limit::{Policy, Quota, RateLimitLayer};
    ///
    /// let layer = RateLimitLayer::builder()
    ///     .policy(Policy::new("api", Quota::per_second(10)))
    ///     .allow(["192.0.2.0/24", "2001:db8::1"])
    ///     .build();
    /// assert!(layer.is_ok());
    /// let bad = RateLimitLayer::builder().allow([""]).build();
    /// assert!(bad.unwrap_err().to_string().contains("allowlist"));
    /// ```
    pub fn allow<I, S>(mut self, networks: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.allow
            .extend(networks.into_iter().map(|n| (None, n.into())));
        self
    }

    /// Exempts clients in these networks from the policy named `policy` only.
    ///
    /// By default, no client is exempt. An unknown policy name is an error at
    /// [`build`](Self::build).
    pub fn allow_for<I, S>(mut self, policy: &str, networks: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.allow.extend(
            networks
                .into_iter()
                .map(|n| (Some(policy.to_owned()), n.into())),
        );
        self
    }

    /// What happens to requests whose client address is unknown when a policy needs it.
    ///
    /// By default, [`MissingPeer::Reject`]: a JSON 500 naming the fix, and one warning.
    pub fn missing_peer(mut self, missing: MissingPeer) -> Self {
        self.missing_peer = missing;
        self
    }

    /// How the client address is found (trusted proxies, IPv6 prefix).
    ///
    /// By default, [`ClientIpResolver::default`]: no proxy is trusted.
    pub fn client_ip(mut self, resolver: ClientIpResolver) -> Self {
        self.resolver = resolver;
        self
    }

    /// How the user and tenant are read from request extensions.
    ///
    /// By default, [`IdentityReader::new`]: every request is anonymous.
    pub fn identity(mut self, reader: IdentityReader) -> Self {
        self.identity = reader;
        self
    }

    /// Uses the in-memory backend with these settings.
    ///
    /// By default, the in-memory backend with [`MemoryBackend::default`].
    pub fn memory(mut self, backend: MemoryBackend) -> Self {
        self.memory = backend;
        #[cfg(feature = "redis")]
        {
            self.redis = None;
        }
        self
    }

    /// Uses Redis (shared by every instance of the application).
    ///
    /// By default, the in-memory backend.
    #[cfg(feature = "redis")]
    pub fn redis(mut self, backend: RedisBackend) -> Self {
        self.redis = Some(backend);
        self
    }

    /// Which rate-limit headers responses carry.
    ///
    /// By default, [`HeaderStyle::Ietf`].
    pub fn headers(mut self, style: HeaderStyle) -> Self {
        self.headers = style;
        self
    }

    /// The response for refused requests.
    ///
    /// By default, [`DefaultRejection`].
    pub fn on_rejection(mut self, strategy: impl OnRejection) -> Self {
        self.on_rejection = Arc::new(strategy);
        self
    }

    /// Checks the configuration and builds the layer.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] saying how to fix it for a zero quota or burst, an empty or
    /// malformed path pattern, a duplicate or unusable policy name, a cost above a burst,
    /// or more than four windows in a policy.
    pub fn build(self) -> Result<RateLimitLayer, ConfigError> {
        #[cfg(feature = "redis")]
        let divisor = self.redis.as_ref().map_or(1, RedisBackend::divisor);
        #[cfg(not(feature = "redis"))]
        let divisor = 1;
        let mut policies: Vec<Compiled> = Vec::with_capacity(self.policies.len());
        for (i, p) in self.policies.iter().enumerate() {
            if policies.iter().any(|c| &*c.name == p.name()) {
                return Err(ConfigError::new(format!(
                    "rate-limit policy name `{}` is used twice: give each policy its own name \
                     (it names the counters, the headers and the metrics)",
                    p.name()
                )));
            }
            policies.push(p.compile(i, divisor)?);
        }
        // Each tier: its own compiled policy (own buckets, headers, metrics), reached
        // only through its base policy.
        for (base, p) in self.policies.iter().enumerate() {
            for (tier, tp) in p.tier_policies() {
                let index = policies.len();
                let mut compiled = tp.compile(index, divisor)?;
                compiled.tier_of = Some(base);
                policies.push(compiled);
                policies[base].tiers.push((tier.into(), index));
            }
        }
        for (name, entry) in &self.allow {
            let net = parse_allow(entry)?;
            match name {
                None => policies.iter_mut().for_each(|c| c.allow.push(net)),
                Some(name) => policies
                    .iter_mut()
                    .find(|c| &*c.name == name && c.tier_of.is_none())
                    .ok_or_else(|| {
                        ConfigError::new(format!(
                            "rate-limit allowlist names policy `{name}`, which is not configured: \
                             add the policy first, or use .allow(...) for every policy"
                        ))
                    })?
                    .allow
                    .push(net),
            }
        }
        let exempt = self
            .exempt
            .iter()
            .map(|p| PathPattern::new(p))
            .collect::<Result<Vec<_>, _>>()?;
        #[cfg(feature = "redis")]
        let backend = match &self.redis {
            Some(r) => Backend::Redis(Box::new(r.build())),
            None => Backend::Memory(self.memory.build()),
        };
        #[cfg(not(feature = "redis"))]
        let backend = Backend::Memory(self.memory.build());
        // A policy's allowlist holds for its tiers.
        for i in 0..policies.len() {
            if let Some(base) = policies[i].tier_of {
                policies[i].allow = policies[base].allow.clone();
            }
        }
        let counted = policies.iter().any(|p| p.count_if.is_some());
        match &backend {
            Backend::Memory(m) => m.set_windows(policies.iter().map(|p| &*p.windows)),
            #[cfg(feature = "redis")]
            Backend::Redis(r) => {
                if let Some(m) = &r.fallback {
                    m.set_windows(policies.iter().map(|p| &*p.fallback));
                }
            }
        }
        Ok(RateLimitLayer {
            limiter: Arc::new(Limiter {
                policies,
                exempt,
                missing_peer: self.missing_peer,
                counted,
                warned_missing_peer: std::sync::atomic::AtomicBool::new(false),
                resolver: self.resolver,
                identity: self.identity,
                backend,
                headers: self.headers,
                on_rejection: self.on_rejection,
            }),
        })
    }
}

#[derive(Debug)]
pub(crate) enum Backend {
    Memory(MemoryStore),
    #[cfg(feature = "redis")]
    Redis(Box<RedisStore>),
}

/// Everything the service needs, shared by all clones.
pub(crate) struct Limiter {
    pub(crate) policies: Vec<Compiled>,
    exempt: Vec<PathPattern>,
    missing_peer: MissingPeer,
    /// Whether a policy counts by outcome (no lean path then).
    counted: bool,
    warned_missing_peer: std::sync::atomic::AtomicBool,
    resolver: ClientIpResolver,
    identity: IdentityReader,
    pub(crate) backend: Backend,
    headers: HeaderStyle,
    on_rejection: Arc<dyn OnRejection>,
}

/// The result of the synchronous part of a decision.
pub(crate) enum Plan {
    /// No policy applies: call the inner service untouched.
    Bypass,
    /// Decided in memory: call the inner service, then add these headers.
    Allow(Rendered),
    /// Decided in memory: answer with this response.
    Reject(Box<http::Response<bytes::Bytes>>),
    /// Needs Redis: these `(policy, subject)` pairs.
    #[cfg(feature = "redis")]
    Remote(Vec<(usize, Subject)>, bool),
    /// Decided in memory, with `count_if` policies to settle once the status is known.
    Counted(Option<Rendered>, Vec<(usize, Subject)>),
}

pub(crate) static METRIC_METADATA: metrics::Metadata<'static> =
    metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// Increments a decision counter whose key was built once, at build time (no allocation
/// per request; a recorder installed after the layer was built is still used).
fn count(key: &metrics::Key) {
    metrics::with_recorder(|r| r.register_counter(key, &METRIC_METADATA)).increment(1);
}

impl Limiter {
    pub(crate) fn memory(&self) -> Option<&MemoryStore> {
        match &self.backend {
            Backend::Memory(m) => Some(m),
            #[cfg(feature = "redis")]
            Backend::Redis(r) => r.fallback.as_ref(),
        }
    }

    #[cfg(test)]
    pub(crate) fn exempt_patterns(&self) -> &[PathPattern] {
        &self.exempt
    }

    fn is_grpc<B>(req: &Request<B>) -> bool {
        cfg!(feature = "tonic")
            && req
                .headers()
                .get(CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
    }

    /// Decides what to do with `req`, synchronously for the in-memory backend.
    pub(crate) fn plan<B>(&self, req: &Request<B>) -> Plan {
        let path = req.uri().path();
        if self.policies.is_empty() || self.exempt.iter().any(|p| p.matches(path)) {
            return Plan::Bypass;
        }
        if let (Backend::Memory(store), false, false) =
            (&self.backend, self.headers.any(), self.counted)
        {
            return self.plan_in_memory(store, req, path);
        }
        let method = req.method();
        let mut info: Option<RequestInfo<'_>> = None;
        // Read only when needed (a rejection, a Redis decision): most requests pass.
        let grpc = || Self::is_grpc(req);
        let states = self.headers.any();
        let mut checked = Checks::new(states);
        #[cfg(feature = "redis")]
        let mut remote: Vec<(usize, Subject)> = Vec::new();
        let mut deferred: Vec<(usize, Subject)> = Vec::new();
        for policy in self.policies.iter().filter(|p| p.applies(method, path)) {
            let info = info.get_or_insert_with(|| self.info(req));
            let Some(policy) = self.tier(policy, info) else {
                continue;
            };
            let subject = match self.subject(policy, info) {
                Ok(Some(subject)) => subject,
                Ok(None) => continue,
                Err(()) => return self.missing_peer_plan(policy, grpc()),
            };
            match &self.backend {
                Backend::Memory(store) => {
                    let outcome = if policy.count_if.is_some() {
                        deferred.push((policy.index, subject.clone()));
                        store.check_mode(
                            policy.index,
                            subject,
                            &policy.windows,
                            policy.cost,
                            Mode::Peek,
                        )
                    } else {
                        store.check(policy.index, subject, &policy.windows, policy.cost, states)
                    };
                    if let Some(reject) = Self::record(policy, outcome, grpc, &mut checked) {
                        return Plan::Reject(Box::new(self.reject(reject, &checked)));
                    }
                }
                #[cfg(feature = "redis")]
                Backend::Redis(_) => remote.push((policy.index, subject)),
            }
        }
        #[cfg(feature = "redis")]
        if !remote.is_empty() {
            return Plan::Remote(remote, grpc());
        }
        if !deferred.is_empty() {
            return Plan::Counted(self.headers_for(&checked), deferred);
        }
        match self.headers_for(&checked) {
            Some(headers) => Plan::Allow(headers),
            None => Plan::Bypass,
        }
    }

    /// [`plan`](Self::plan) for the in-memory backend without headers, the hot path: a
    /// bare decision per policy (a number, no state for headers), nothing kept.
    #[inline]
    fn plan_in_memory<B>(&self, store: &MemoryStore, req: &Request<B>, path: &str) -> Plan {
        let method = req.method();
        let mut info: Option<RequestInfo<'_>> = None;
        for policy in self.policies.iter().filter(|p| p.applies(method, path)) {
            let info = info.get_or_insert_with(|| self.info(req));
            let Some(policy) = self.tier(policy, info) else {
                continue;
            };
            let subject = match self.subject(policy, info) {
                Ok(Some(subject)) => subject,
                Ok(None) => continue,
                Err(()) => return self.missing_peer_plan(policy, Self::is_grpc(req)),
            };
            let retry_after = store.refusal(policy.index, subject, &policy.windows, policy.cost);
            if retry_after == 0 {
                count(&policy.metric_keys[0]);
            } else if let Some(plan) = self.refused(policy, retry_after, req) {
                return plan;
            }
        }
        Plan::Bypass
    }

    /// A request [`plan_in_memory`](Self::plan_in_memory) found over a policy's quota:
    /// counted and logged as any decision; the rejection, unless the policy is in shadow
    /// mode.
    #[cold]
    #[inline(never)]
    fn refused<B>(&self, policy: &Compiled, retry_after: u64, req: &Request<B>) -> Option<Plan> {
        let outcome = super::gcra::Outcome {
            allowed: false,
            retry_after,
            windows: Default::default(),
            len: policy.windows.len(),
        };
        let mut checked = Checks::new(false);
        let reject = Self::record(policy, outcome, || Self::is_grpc(req), &mut checked)?;
        Some(Plan::Reject(Box::new(self.reject(reject, &checked))))
    }

    /// The policy that decides `info` for `policy`: itself, or the tier its
    /// [`Policy::tiers`] selector names; `None` when the selector leaves the request
    /// unlimited.
    #[inline]
    fn tier<'p>(&'p self, policy: &'p Compiled, info: &RequestInfo<'_>) -> Option<&'p Compiled> {
        let Some(select) = &policy.tier_fn else {
            return Some(policy);
        };
        let name = select(info)?;
        Some(
            policy
                .tiers
                .iter()
                .find(|(tier, _)| &**tier == name)
                .map_or(policy, |(_, i)| &self.policies[*i]),
        )
    }

    /// The subject of a request for `policy` after the allowlist and the missing-peer
    /// rule: `Ok(None)` when the policy does not limit it, `Err(())` when it must be
    /// refused for want of a client address.
    #[inline]
    fn subject(&self, policy: &Compiled, info: &RequestInfo<'_>) -> Result<Option<Subject>, ()> {
        if !policy.allow.is_empty()
            && info
                .client_ip
                .is_some_and(|c| policy.allow.iter().any(|n| n.contains(&c.addr())))
        {
            return Ok(None);
        }
        match policy.subject(info, &self.identity) {
            Some(Subject::Unknown) => match self.missing_peer {
                MissingPeer::Shared => Ok(Some(Subject::Unknown)),
                MissingPeer::Skip => Ok(None),
                MissingPeer::Reject => Err(()),
            },
            other => Ok(other),
        }
    }

    /// A request refused because its client address is unknown: counted, warned about
    /// once per limiter (the fix is a deployment change), answered 500.
    #[cold]
    #[inline(never)]
    fn missing_peer_plan(&self, policy: &Compiled, grpc: bool) -> Plan {
        if !self
            .warned_missing_peer
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(
                policy = %policy.name,
                "{}",
                super::response::MISSING_PEER_DETAIL
            );
        }
        metrics::counter!("rampart_rate_limit_decisions_total", "policy" => policy.name.clone(), "outcome" => "missing_peer").increment(1);
        let r = Rejection::new(
            RejectionKind::MissingPeer,
            policy.name.clone(),
            Duration::ZERO,
            grpc,
        );
        Plan::Reject(Box::new(self.reject(r, &Checks::default())))
    }

    /// The outcome of a direct decision, the backend's failure mode applied; `Err` with
    /// the rejection when the failure mode refuses.
    async fn direct_outcome(
        &self,
        policy: &Compiled,
        subject: Subject,
        cost: u64,
        mode: Mode,
    ) -> Result<super::gcra::Outcome, Rejection> {
        match &self.backend {
            Backend::Memory(store) => {
                Ok(store.check_mode(policy.index, subject, &policy.windows, cost, mode))
            }
            #[cfg(feature = "redis")]
            Backend::Redis(store) => match store.decide_mode(policy, &subject, cost, mode).await {
                Ok(outcome) => Ok(outcome),
                Err(err) => {
                    tracing::warn!(policy = %policy.name, error = %err, "rate limit backend failed: failure mode applies");
                    metrics::counter!("rampart_rate_limit_backend_errors_total", "policy" => policy.name.clone()).increment(1);
                    match (store.failure_mode(), &store.fallback) {
                        (FailureMode::LocalFallback { .. }, Some(m)) => {
                            Ok(m.check_mode(policy.index, subject, &policy.fallback, cost, mode))
                        }
                        (FailureMode::Closed, _) => Err(Rejection::new(
                            RejectionKind::BackendUnavailable,
                            policy.name.clone(),
                            Duration::from_secs(1),
                            false,
                        )),
                        _ => Ok(super::gcra::Outcome {
                            allowed: true,
                            retry_after: 0,
                            windows: Default::default(),
                            len: 0,
                        }),
                    }
                }
            },
        }
    }

    /// What the policies may key a request on.
    #[inline]
    fn info<'r, B>(&self, req: &'r Request<B>) -> RequestInfo<'r> {
        RequestInfo {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
            extensions: req.extensions(),
            client_ip: self.resolver.resolve(req),
        }
    }

    /// Counts a decision; returns the rejection if the request must be refused.
    fn record<'a>(
        policy: &'a Compiled,
        outcome: super::gcra::Outcome,
        grpc: impl FnOnce() -> bool,
        checked: &mut Checks<'a>,
    ) -> Option<Rejection> {
        count(
            &policy.metric_keys[match (outcome.allowed, policy.shadow) {
                (true, _) => 0,
                (false, false) => 1,
                (false, true) => 2,
            }],
        );
        if policy.shadow {
            if !outcome.allowed {
                tracing::info!(policy = %policy.name, retry_after_us = outcome.retry_after, "rate limit exceeded (shadow mode: allowed)");
            }
            return None;
        }
        checked.push(Checked { policy, outcome });
        if outcome.allowed {
            return None;
        }
        tracing::debug!(policy = %policy.name, retry_after_us = outcome.retry_after, "rate limit exceeded");
        Some(Rejection::new(
            RejectionKind::RateLimited,
            policy.name.clone(),
            Duration::from_micros(outcome.retry_after),
            grpc(),
        ))
    }

    fn headers_for(&self, checked: &Checks<'_>) -> Option<Rendered> {
        if !self.headers.any() || checked.is_empty() {
            return None;
        }
        let mut h = Rendered::with_capacity(5);
        render(self.headers, checked, &mut h);
        Some(h)
    }

    pub(crate) fn reject(
        &self,
        rejection: Rejection,
        checked: &Checks<'_>,
    ) -> http::Response<bytes::Bytes> {
        let res = self.on_rejection.on_rejection(&rejection);
        let headers = if rejection.is_grpc() {
            None
        } else {
            self.headers_for(checked)
        };
        super::response::finish_rejection(res, rejection, headers)
    }

    /// The Redis part of a decision: one round trip per policy.
    #[cfg(feature = "redis")]
    pub(crate) async fn decide_remote(
        &self,
        subjects: Vec<(usize, Subject)>,
        grpc: bool,
    ) -> Result<(Option<Rendered>, Vec<(usize, Subject)>), http::Response<bytes::Bytes>> {
        let mut deferred = Vec::new();
        let Backend::Redis(store) = &self.backend else {
            return Ok((None, deferred));
        };
        let mut checked = Checks::new(self.headers.any());
        for (index, subject) in subjects {
            let policy = &self.policies[index];
            let counted = policy.count_if.is_some();
            let result = if counted {
                deferred.push((index, subject.clone()));
                store
                    .decide_mode(policy, &subject, policy.cost, Mode::Peek)
                    .await
            } else {
                store.check(policy, &subject).await
            };
            let outcome = match result {
                Ok(o) => o,
                Err(err) => {
                    if matches!(err, BackendError::Down) {
                        tracing::debug!(policy = %policy.name, "rate limit backend down: failure mode applies");
                    } else {
                        tracing::warn!(policy = %policy.name, error = %err, "rate limit backend failed: failure mode applies");
                    }
                    metrics::counter!("rampart_rate_limit_backend_errors_total", "policy" => policy.name.clone()).increment(1);
                    match store.failure_mode() {
                        FailureMode::Open => {
                            metrics::counter!("rampart_rate_limit_decisions_total", "policy" => policy.name.clone(), "outcome" => "backend_error").increment(1);
                            continue;
                        }
                        FailureMode::Closed => {
                            metrics::counter!("rampart_rate_limit_decisions_total", "policy" => policy.name.clone(), "outcome" => "unavailable").increment(1);
                            let r = Rejection::new(
                                RejectionKind::BackendUnavailable,
                                policy.name.clone(),
                                Duration::from_secs(1),
                                grpc,
                            );
                            return Err(self.reject(r, &Checks::default()));
                        }
                        FailureMode::LocalFallback { .. } => match &store.fallback {
                            Some(m) => m.check_mode(
                                index,
                                subject,
                                &policy.fallback,
                                policy.cost,
                                if counted { Mode::Peek } else { Mode::Decide },
                            ),
                            None => continue,
                        },
                    }
                }
            };
            if let Some(reject) = Self::record(policy, outcome, || grpc, &mut checked) {
                return Err(self.reject(reject, &checked));
            }
        }
        Ok((self.headers_for(&checked), deferred))
    }

    /// [`settle`](Self::settle) for the in-memory backend, synchronously.
    #[cfg_attr(not(feature = "redis"), allow(irrefutable_let_patterns))]
    pub(crate) fn settle_in_memory(&self, deferred: &[(usize, Subject)], status: http::StatusCode) {
        let Backend::Memory(store) = &self.backend else {
            return;
        };
        for (index, subject) in deferred {
            let policy = &self.policies[*index];
            if policy
                .count_if
                .as_ref()
                .is_some_and(|counts| counts(status))
            {
                metrics::counter!("rampart_rate_limit_decisions_total", "policy" => policy.name.clone(), "outcome" => "counted").increment(1);
                store.check_mode(
                    *index,
                    subject.clone(),
                    &policy.windows,
                    policy.cost,
                    Mode::Force,
                );
            }
        }
    }

    /// Counts the `count_if` policies of an answered request whose `status` they count
    /// (one Redis round trip each; none for a status they do not count).
    #[cfg(feature = "redis")]
    pub(crate) async fn settle(&self, deferred: Vec<(usize, Subject)>, status: http::StatusCode) {
        for (index, subject) in deferred {
            let policy = &self.policies[index];
            if !policy
                .count_if
                .as_ref()
                .is_some_and(|counts| counts(status))
            {
                continue;
            }
            metrics::counter!("rampart_rate_limit_decisions_total", "policy" => policy.name.clone(), "outcome" => "counted").increment(1);
            let _ = self
                .direct_outcome(policy, subject, policy.cost, Mode::Force)
                .await;
        }
    }
}

/// One allowlist entry: a network or a single address.
fn parse_allow(entry: &str) -> Result<ipnet::IpNet, ConfigError> {
    let trimmed = entry.trim();
    if trimmed.is_empty() {
        return Err(ConfigError::new(
            "rate-limit allowlist has an empty entry: remove it, or write a network such as \
             `10.0.0.0/8` or an address such as `192.0.2.7`",
        ));
    }
    let net = trimmed
        .parse::<ipnet::IpNet>()
        .map(|n| n.trunc())
        .or_else(|_| trimmed.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| {
            ConfigError::new(format!(
                "rate-limit allowlist entry `{trimmed}` is neither a network (`10.0.0.0/8`) nor \
                 an address (`192.0.2.7`)"
            ))
        })?;
    // Clients are compared in canonical form (IPv4-mapped addresses as IPv4): an
    // IPv4-mapped network is its IPv4 network.
    Ok(match net {
        ipnet::IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, ipnet::IpNet::V4),
            None => net,
        },
        _ => net,
    })
}
