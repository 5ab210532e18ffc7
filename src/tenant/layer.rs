//! The layer: configuration, builder and the resolved tenant type.

use std::{fmt, sync::Arc, time::Duration};

use serde::Deserialize;
use tower_layer::Layer;

use super::{
    id::{DEFAULT_MAX_ID_LEN, TenantId},
    rejection::{DefaultResponder, RejectionResponder, TenantRejection},
    service::TenantResolver,
    store::TenantStore,
    strategy::{CustomFn, Found, RequestHead, Strategy, StrategyConfig, StrategyKind},
};
use crate::{
    error::ConfigError,
    identity::{IdentityReader, TenantIdentity, UserIdentity},
};

/// The tenant a request was resolved to, inserted into the request's extensions.
///
/// It implements [`TenantIdentity`], so the other layers (cache namespaces, per-tenant
/// rate limits) read it through an [`IdentityReader`] configured with
/// `.tenant::<ResolvedTenant<T>>()`.
///
/// # Example
///
/// ```
/// use tower_rampart::identity::IdentityReader;
/// use tower_rampart::tenant::{ResolvedTenant, StrategyKind, TenantId};
///
/// let t = ResolvedTenant::new(TenantId::parse("acme").unwrap(), 7_u32, StrategyKind::Host);
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(t);
/// let reader = IdentityReader::new().tenant::<ResolvedTenant<u32>>();
/// assert_eq!(reader.tenant_id(req.extensions()), Some("acme"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedTenant<T> {
    id: TenantId,
    value: T,
    strategy: StrategyKind,
}

impl<T> ResolvedTenant<T> {
    /// A resolved tenant (the layer builds these; tests may too).
    pub fn new(id: TenantId, value: T, strategy: StrategyKind) -> Self {
        Self {
            id,
            value,
            strategy,
        }
    }

    /// The validated, normalised identifier.
    pub fn id(&self) -> &TenantId {
        &self.id
    }

    /// The store's value for the tenant.
    pub fn value(&self) -> &T {
        &self.value
    }

    /// The strategy that named the tenant.
    pub fn strategy(&self) -> StrategyKind {
        self.strategy
    }

    /// The store's value, consuming the wrapper.
    pub fn into_value(self) -> T {
        self.value
    }
}

impl<T: Clone + Send + Sync + 'static> TenantIdentity for ResolvedTenant<T> {
    fn tenant_id(&self) -> &str {
        self.id.as_str()
    }
}

/// The layer's settings, as a TOML file describes them (the store and responder are
/// given in code).
///
/// ```toml
/// strategies = [{ host = "{tenant}.example.com" }, { header = "x-tenant-id" }]
/// fallback = "public"
/// bypass = ["/health", "/metrics"]
/// ```
///
/// # Example
///
/// ```
/// use tower_rampart::tenant::{MemoryStore, TenantConfig, TenantLayer};
///
/// let config: TenantConfig = serde_json::from_str(
///     r#"{"strategies": [{"header": "x-tenant-id"}], "bypass": ["/health"]}"#,
/// ).unwrap();
/// assert!(config.required);
/// let layer = TenantLayer::builder(MemoryStore::<u8>::new()).config(&config).build();
/// assert!(layer.is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct TenantConfig {
    /// The strategies, tried in order. By default, none.
    pub strategies: Vec<StrategyConfig>,
    /// The tenant used when no strategy names one. By default, none.
    pub fallback: Option<String>,
    /// Whether a request without a tenant is refused (400). By default, `true`.
    pub required: bool,
    /// Path prefixes that skip resolution (health, metrics). By default, none.
    pub bypass: Vec<String>,
    /// The longest identifier accepted. By default, 63.
    pub max_id_len: usize,
    /// Whether a tenant that differs from the principal's is refused (403). By default,
    /// `true`.
    pub check_principal: bool,
    /// Milliseconds a store lookup may take before the request is answered 503. By
    /// default, 2 000.
    pub lookup_timeout_ms: u64,
}

impl Default for TenantConfig {
    fn default() -> Self {
        Self {
            strategies: Vec::new(),
            fallback: None,
            required: true,
            bypass: Vec::new(),
            max_id_len: DEFAULT_MAX_ID_LEN,
            check_principal: true,
            lookup_timeout_ms: 2_000,
        }
    }
}

pub(crate) struct Shared<St> {
    pub(crate) strategies: Vec<Strategy>,
    pub(crate) fallback: Option<TenantId>,
    pub(crate) required: bool,
    pub(crate) bypass: Vec<String>,
    pub(crate) max_len: usize,
    pub(crate) identity: IdentityReader,
    pub(crate) check_principal: bool,
    pub(crate) store: St,
    pub(crate) lookup_timeout: Duration,
    pub(crate) responder: Arc<dyn RejectionResponder>,
}

/// What the synchronous part of resolution decided.
#[derive(Debug)]
pub(crate) enum Decision {
    /// A bypass route, or no tenant while not required: call the inner service as is.
    Pass(&'static str),
    Reject(TenantRejection),
    Lookup {
        id: TenantId,
        kind: StrategyKind,
        strip: Option<usize>,
    },
}

impl<St> Shared<St> {
    fn is_bypass(&self, path: &str) -> bool {
        if self.bypass.is_empty() || path.contains("..") || path.contains('%') {
            return false;
        }
        self.bypass.iter().any(|p| {
            path.strip_prefix(p.as_str())
                .is_some_and(|rest| rest.is_empty() || p.ends_with('/') || rest.starts_with('/'))
        })
    }

    pub(crate) fn decide<B>(&self, req: &http::Request<B>) -> Decision {
        if self.is_bypass(req.uri().path()) {
            return Decision::Pass("bypass");
        }
        let head = RequestHead::of(req);
        let mut chosen = None;
        for s in &self.strategies {
            match s.find(&head, &self.identity, self.max_len) {
                Found::Nothing => {}
                Found::Invalid(e) => {
                    return Decision::Reject(TenantRejection::invalid(s.kind(), e));
                }
                Found::Id(id, strip) => {
                    chosen = Some((id, s.kind(), strip));
                    break;
                }
            }
        }
        let (id, kind, strip) = match chosen {
            Some(c) => c,
            None => match &self.fallback {
                Some(f) => (f.clone(), StrategyKind::Fallback, None),
                None if self.required => return Decision::Reject(TenantRejection::missing()),
                None => return Decision::Pass("none"),
            },
        };
        // Anti-spoofing: a tenant named by host, header, path or closure must be the
        // principal's own tenant.
        if self.check_principal
            && let Some(own) = self.identity.principal_tenant_id(req.extensions())
        {
            let same = TenantId::parse_with_max(own, self.max_len).is_ok_and(|own| own == id);
            if !same {
                return Decision::Reject(TenantRejection::forbidden(kind, id));
            }
        }
        Decision::Lookup { id, kind, strip }
    }
}

/// Resolves the tenant of every request; see the [module docs](super).
///
/// # Example
///
/// ```
/// use tower_rampart::tenant::{MemoryStore, TenantLayer};
///
/// let store = MemoryStore::new().with("acme", "Acme Corp").unwrap();
/// let layer = TenantLayer::builder(store)
///     .host("{tenant}.example.com")
///     .header()
///     .bypass("/health")
///     .build()
///     .unwrap();
/// assert!(format!("{layer:?}").contains("Host"));
/// ```
#[must_use]
pub struct TenantLayer<St> {
    shared: Arc<Shared<St>>,
}

impl<St> Clone for TenantLayer<St> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<St> fmt::Debug for TenantLayer<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.shared;
        f.debug_struct("TenantLayer")
            .field("strategies", &s.strategies)
            .field("fallback", &s.fallback)
            .field("required", &s.required)
            .field("bypass", &s.bypass)
            .field("check_principal", &s.check_principal)
            .finish_non_exhaustive()
    }
}

impl<St: TenantStore> TenantLayer<St> {
    /// A builder resolving tenants with `store` (wrap it in
    /// [`CachedStore`](super::CachedStore) for a database).
    pub fn builder(store: St) -> TenantLayerBuilder<St> {
        TenantLayerBuilder {
            store,
            strategies: Vec::new(),
            error: None,
            fallback: None,
            required: true,
            bypass: Vec::new(),
            max_len: DEFAULT_MAX_ID_LEN,
            identity: None,
            check_principal: true,
            lookup_timeout: Duration::from_millis(2_000),
            responder: Arc::new(DefaultResponder),
        }
    }
}

impl<S, St> Layer<S> for TenantLayer<St> {
    type Service = TenantResolver<S, St>;

    fn layer(&self, inner: S) -> Self::Service {
        TenantResolver::new(inner, Arc::clone(&self.shared))
    }
}

/// Builds a [`TenantLayer`]. Strategies are tried in the order their methods are called.
///
/// # Example
///
/// ```
/// use tower_rampart::tenant::{MemoryStore, TenantLayer};
///
/// let err = TenantLayer::builder(MemoryStore::<u8>::new()).host("example.com").build().unwrap_err();
/// assert!(err.to_string().contains("{tenant}"));
/// ```
#[must_use]
pub struct TenantLayerBuilder<St> {
    store: St,
    strategies: Vec<Strategy>,
    error: Option<ConfigError>,
    fallback: Option<String>,
    required: bool,
    bypass: Vec<String>,
    max_len: usize,
    identity: Option<IdentityReader>,
    check_principal: bool,
    lookup_timeout: Duration,
    responder: Arc<dyn RejectionResponder>,
}

impl<St> fmt::Debug for TenantLayerBuilder<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantLayerBuilder")
            .field("strategies", &self.strategies)
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl<St: TenantStore> TenantLayerBuilder<St> {
    fn push(mut self, s: Result<Strategy, ConfigError>) -> Self {
        match s {
            Ok(s) => self.strategies.push(s),
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
        self
    }

    /// Adds a host-template strategy: `"{tenant}.example.com"` names tenant `acme` for
    /// `acme.example.com:8443` (the port is ignored, the host lower-cased). A host that
    /// matches the template with a dotted or otherwise invalid tenant part is refused
    /// (400). By default, no host strategy.
    pub fn host(self, template: impl AsRef<str>) -> Self {
        let s = Strategy::host(template.as_ref());
        self.push(s)
    }

    /// Adds a subdomain strategy: the single label left of one of `bases` (the longest
    /// matching base wins). By default, no subdomain strategy.
    pub fn subdomain_of<I, D>(self, bases: I) -> Self
    where
        I: IntoIterator<Item = D>,
        D: AsRef<str>,
    {
        let s = Strategy::subdomain(bases);
        self.push(s)
    }

    /// Adds a header strategy reading `X-Tenant-ID`. A repeated header is refused (400).
    /// By default, no header strategy.
    pub fn header(self) -> Self {
        self.header_named("x-tenant-id")
    }

    /// Adds a header strategy reading the named header. By default, no header strategy.
    pub fn header_named(self, name: impl AsRef<str>) -> Self {
        let s = Strategy::header(name.as_ref());
        self.push(s)
    }

    /// Adds a path-prefix strategy such as `"/t/{tenant}"`; the inner service sees the
    /// full path. The path is never percent-decoded: `/t/%61cme` is refused. By default,
    /// no path strategy.
    pub fn path_prefix(self, template: impl AsRef<str>) -> Self {
        let s = Strategy::path(template.as_ref(), false);
        self.push(s)
    }

    /// Like [`path_prefix`](Self::path_prefix), but the prefix is removed before the
    /// inner service sees the path: `/t/acme/orders?x=1` becomes `/orders?x=1`. With
    /// axum, wrap the whole `Router` (not `Router::layer`, which runs after routing).
    pub fn path_prefix_stripped(self, template: impl AsRef<str>) -> Self {
        let s = Strategy::path(template.as_ref(), true);
        self.push(s)
    }

    /// Adds the claim strategy: the tenant of the authenticated principal, read with the
    /// reader given to [`identity`](Self::identity) or [`principal`](Self::principal).
    /// By default, no claim strategy.
    pub fn claim(mut self) -> Self {
        self.strategies.push(Strategy::Claim);
        self
    }

    /// Adds a closure strategy; its answer is validated like any other. By default, no
    /// closure strategy.
    pub fn custom<F>(mut self, f: F) -> Self
    where
        F: Fn(&RequestHead<'_>) -> Option<String> + Send + Sync + 'static,
    {
        let f: CustomFn = Arc::new(f);
        self.strategies.push(Strategy::Custom(f));
        self
    }

    /// The tenant used when no strategy names one. By default, none (and a request
    /// without a tenant is refused with 400 while [`required`](Self::required)).
    pub fn fallback(mut self, id: impl AsRef<str>) -> Self {
        self.fallback = Some(id.as_ref().to_owned());
        self
    }

    /// Whether a request naming no tenant is refused (400) or passed through without a
    /// tenant. By default, `true`.
    pub fn required(mut self, required: bool) -> Self {
        self.required = required;
        self
    }

    /// A path prefix that skips resolution, e.g. `"/health"` (matches `/health` and
    /// `/health/…` but not `/healthz`). Paths containing `..` or `%` never bypass. By
    /// default, none.
    pub fn bypass(mut self, prefix: impl Into<String>) -> Self {
        self.bypass.push(prefix.into());
        self
    }

    /// The longest identifier accepted (1 to 255). By default, 63.
    pub fn max_id_len(mut self, n: usize) -> Self {
        self.max_len = n;
        self
    }

    /// Where the authenticated principal is read from (for the claim strategy and the
    /// anti-spoofing check). By default, nowhere: no principal, no check.
    pub fn identity(mut self, reader: IdentityReader) -> Self {
        self.identity = Some(reader);
        self
    }

    /// Shorthand for `.identity(IdentityReader::new().user::<P>())`.
    pub fn principal<P: UserIdentity>(self) -> Self {
        self.identity(IdentityReader::new().user::<P>())
    }

    /// Whether a resolved tenant that differs from the authenticated principal's tenant
    /// is refused with 403 before the inner service is called. Anonymous requests and
    /// principals without a tenant are not checked. By default, `true`.
    pub fn check_principal(mut self, check: bool) -> Self {
        self.check_principal = check;
        self
    }

    /// How long a store lookup may take: a slower store answers 503 JSON with
    /// `Retry-After` (as a store error does) instead of holding the request. By default,
    /// 2 seconds.
    pub fn lookup_timeout(mut self, timeout: Duration) -> Self {
        self.lookup_timeout = timeout;
        self
    }

    /// How rejections become responses. By default, [`DefaultResponder`] (JSON 400,
    /// 403, 404, 503).
    pub fn responder(mut self, responder: impl RejectionResponder) -> Self {
        self.responder = Arc::new(responder);
        self
    }

    /// Applies a [`TenantConfig`]: its strategies are appended, its other settings
    /// replace the builder's.
    pub fn config(mut self, config: &TenantConfig) -> Self {
        for s in &config.strategies {
            self = self.push(s.build());
        }
        self.fallback.clone_from(&config.fallback);
        self.required = config.required;
        self.bypass.extend(config.bypass.iter().cloned());
        self.max_len = config.max_id_len;
        self.check_principal = config.check_principal;
        self.lookup_timeout = Duration::from_millis(config.lookup_timeout_ms);
        self
    }

    /// Builds the layer.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for an invalid template, header name, base domain, fallback or
    /// bypass prefix; when no strategy and no fallback is configured; or when the claim
    /// strategy is used without [`identity`](Self::identity); when `lookup_timeout` is
    /// zero.
    pub fn build(self) -> Result<TenantLayer<St>, ConfigError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if !(1..=255).contains(&self.max_len) {
            return Err(ConfigError::new(format!(
                "tenant max_id_len {} is out of range: use 1 to 255 (63, one DNS label, is \
                 the default)",
                self.max_len
            )));
        }
        let fallback = match &self.fallback {
            None => None,
            Some(f) => Some(TenantId::parse_with_max(f, self.max_len).map_err(|e| {
                ConfigError::new(format!(
                    "tenant fallback {f:?} is not a valid identifier: {e}"
                ))
            })?),
        };
        if self.strategies.is_empty() && fallback.is_none() {
            return Err(ConfigError::new(
                "tenant layer has no strategy: add one, e.g. .host(\"{tenant}.example.com\") \
                 or .header(), or a .fallback(\"default\")",
            ));
        }
        if self.identity.is_none() && self.strategies.iter().any(|s| matches!(s, Strategy::Claim)) {
            return Err(ConfigError::new(
                "the tenant claim strategy needs to know the principal type: add \
                 .principal::<YourClaims>() or .identity(IdentityReader::new().user::<YourClaims>())",
            ));
        }
        if self.lookup_timeout.is_zero() {
            return Err(ConfigError::new(
                "tenant lookup_timeout must be positive: use e.g. \
                 .lookup_timeout(Duration::from_secs(2))",
            ));
        }
        for p in &self.bypass {
            if !p.starts_with('/') || p.contains("..") || p.contains('%') {
                return Err(ConfigError::new(format!(
                    "tenant bypass prefix {p:?} must be a plain path starting with '/', e.g. \
                     \"/health\""
                )));
            }
        }
        Ok(TenantLayer {
            shared: Arc::new(Shared {
                strategies: self.strategies,
                fallback,
                required: self.required,
                bypass: self.bypass,
                max_len: self.max_len,
                identity: self.identity.unwrap_or_default(),
                check_principal: self.check_principal,
                store: self.store,
                lookup_timeout: self.lookup_timeout,
                responder: self.responder,
            }),
        })
    }
}
