//! The tower-rampart reference ERP server.
//!
//! [`app`] builds the whole router with its layer stack so tests can call
//! `app(state).oneshot(request)`; `main.rs` only reads configuration and serves.
//!
//! - [`config`]: flags, environment, TOML file;
//! - [`db`]: SQLite or PostgreSQL through sqlx's `any` driver, embedded migrations, seed;
//! - [`ledger`]: chart of accounts, double-entry journal, trial balance (tenant-scoped);
//! - [`api`]: the JSON API under `/api/v1/`; [`idempotency`]: `Idempotency-Key`;
//! - [`auth`]: bearer tokens and session cookies; [`tenant`]: tenant resolution
//!   (the library's `TenantLayer` over the `tenants` table);
//! - [`backends`]: in-memory or Redis (standalone / Cluster) limiter and cache;
//! - [`html`]: login and dashboard; [`health`], [`metrics`], [`openapi`];
//! - [`error`]: one JSON error shape everywhere.

use std::sync::Arc;

use axum::{
    Router,
    body::Bytes,
    extract::Request,
    http::{HeaderName, HeaderValue, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use tower::ServiceBuilder;
use tower_http::{
    catch_panic::CatchPanicLayer,
    compression::CompressionLayer,
    limit::RequestBodyLimitLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    timeout::TimeoutLayer,
    trace::TraceLayer,
};
use tower_rampart::{
    cache::{CacheOptions, LoadError, ResponseCacheLayer, Ttl},
    client_ip::{ClientIp, ClientIpLayer, ClientIpResolver},
    csp::{Csp, Directive, ReportReceiver, Source},
    error::ConfigError,
    identity::IdentityReader,
    profiler::{ProfilerLayer, ProfilerUi},
    rate_limit::{RateLimitConfig, RateLimitLayer, RedisBackend},
    security_headers::SecurityHeadersLayer,
};

pub mod api;
pub mod auth;
pub mod backends;
pub mod config;
pub mod db;
pub mod error;
pub mod health;
pub mod html;
pub mod idempotency;
pub mod ledger;
pub mod metrics;
pub mod openapi;
pub mod tenant;

pub use backends::Backends;
pub use config::Config;
pub use db::Db;

use error::ApiError;

/// Called after a journal entry is posted (and the cached trial balance of its tenant
/// invalidated), with the tenant.
pub type PostedHook = Arc<dyn Fn(&str) + Send + Sync>;

/// The cache tag of a tenant's trial balance (the cache namespaces it by tenant): the
/// `GET /api/v1/reports/trial-balance` responses and the dashboard's cached report carry
/// it; posting or reversing an entry invalidates it.
pub const TRIAL_BALANCE_TAG: &str = "trial-balance";

struct Inner {
    config: Config,
    db: Db,
    jwt: auth::JwtKeys,
    dummy_hash: String,
    redoc: Option<Bytes>,
    on_posted: Option<PostedHook>,
    backends: Backends,
    hash_pool: auth::HashPool,
    /// The limiter for direct decisions (per-account sign-in failures), built once.
    direct_limiter: std::sync::OnceLock<Option<RateLimitLayer>>,
}

/// Everything a request handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("config", &self.0.config)
            .field("backend", &self.0.db.backend())
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// State over a connected (migrated) database, with in-memory limiter and cache
    /// (see [`AppState::with_backends`]).
    ///
    /// # Errors
    ///
    /// The dummy password hash cannot be computed (invalid Argon2 parameters).
    pub fn new(config: Config, db: Db) -> Result<Self, argon2::password_hash::Error> {
        let dummy_hash = db::hash_password("not-a-real-password", config.password_cost)?;
        let jwt = auth::JwtKeys::new(config.jwt_secret.as_bytes());
        Ok(Self(Arc::new(Inner {
            config,
            db,
            jwt,
            dummy_hash,
            redoc: None,
            on_posted: None,
            backends: Backends::memory(),
            hash_pool: auth::HashPool::for_this_machine(),
            direct_limiter: std::sync::OnceLock::new(),
        })))
    }

    /// Connects, migrates and seeds the database of `config`, connects the limiter and
    /// cache backends it asks for (Redis when `REDIS_URL` is set); returns the state and
    /// the demo password when one was generated (print it once).
    ///
    /// # Errors
    ///
    /// The database cannot be opened, migrated or seeded, or the configured Redis cannot
    /// be reached.
    pub async fn connect(
        config: Config,
    ) -> Result<(Self, Option<String>), Box<dyn std::error::Error + Send + Sync>> {
        let backends = Backends::from_config(&config).await?;
        let db = Db::connect(&config.database_url).await?;
        db.migrate().await?;
        let generated = db
            .seed(config.demo_password.as_deref(), config.password_cost)
            .await?;
        let state = Self::new(config, db)
            .map_err(|e| format!("password hashing: {e}"))?
            .with_backends(backends);
        Ok((state, generated))
    }

    /// Uses these limiter and cache backends.
    #[must_use]
    pub fn with_backends(self, backends: Backends) -> Self {
        self.map_inner(|i| i.backends = backends)
    }

    /// Serves this ReDoc bundle at `/api/redoc/redoc.standalone.js`.
    #[must_use]
    pub fn with_redoc_bundle(self, bundle: Option<Bytes>) -> Self {
        self.map_inner(|i| i.redoc = bundle)
    }

    /// Calls `hook(tenant)` after every posted entry (cache invalidation).
    #[must_use]
    pub fn on_entry_posted(self, hook: PostedHook) -> Self {
        self.map_inner(|i| i.on_posted = Some(hook))
    }

    fn map_inner(self, f: impl FnOnce(&mut Inner)) -> Self {
        let mut inner = Arc::try_unwrap(self.0).unwrap_or_else(|arc| Inner {
            config: arc.config.clone(),
            db: arc.db.clone(),
            jwt: arc.jwt.clone(),
            dummy_hash: arc.dummy_hash.clone(),
            redoc: arc.redoc.clone(),
            on_posted: arc.on_posted.clone(),
            backends: arc.backends.clone(),
            hash_pool: arc.hash_pool.clone(),
            direct_limiter: std::sync::OnceLock::new(),
        });
        f(&mut inner);
        inner.direct_limiter = std::sync::OnceLock::new();
        Self(Arc::new(inner))
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.0.config
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.0.db
    }

    /// The token keys.
    pub fn jwt(&self) -> &auth::JwtKeys {
        &self.0.jwt
    }

    /// A hash verified when the user does not exist (constant-time-ish login).
    pub fn dummy_hash(&self) -> &str {
        &self.0.dummy_hash
    }

    /// The bounded pool password checks run in.
    pub fn hash_pool(&self) -> &auth::HashPool {
        &self.0.hash_pool
    }

    /// The ReDoc bundle, when installed.
    pub fn redoc_bundle(&self) -> Option<&Bytes> {
        self.0.redoc.as_ref()
    }

    /// The limiter for decisions made inside handlers (the `account-failures` policy of
    /// the `[rate_limit]` table: failed sign-ins per tenant and user name), over the same
    /// backend as the layer's; `None` when the table cannot build a limiter (it was
    /// validated at start-up, so only in hand-built test states).
    pub fn direct_limiter(&self) -> Option<&RateLimitLayer> {
        self.0
            .direct_limiter
            .get_or_init(|| rate_limit_layer(&self.0.config, self.0.backends.limiter.clone()).ok())
            .as_ref()
    }

    /// The limiter and cache backends.
    pub fn backends(&self) -> &Backends {
        &self.0.backends
    }

    /// The application cache (tenant-namespaced with `.for_tenant(…)`).
    pub fn cache(&self) -> &tower_rampart::cache::Cache {
        &self.0.backends.cache
    }

    /// The trial balance of `tenant` through the cache (cache-aside, single-flight,
    /// tagged [`TRIAL_BALANCE_TAG`]); the dashboard reads it this way.
    ///
    /// # Errors
    ///
    /// The database query failed.
    pub async fn trial_balance(&self, tenant: &str) -> Result<ledger::TrialBalance, ApiError> {
        let options = CacheOptions::new().tag(TRIAL_BALANCE_TAG).ttl(Ttl::Default);
        let cache = self.cache().for_tenant(tenant);
        match cache
            .get_or_load("report:trial-balance", &options, || {
                ledger::trial_balance(self.db(), tenant)
            })
            .await
        {
            Ok(tb) => Ok(tb),
            Err(LoadError::Loader(e)) => Err(e),
            // The load this call waited for failed or stalled: ask the database itself.
            Err(_) => Ok(ledger::trial_balance(self.db(), tenant).await?),
        }
    }

    /// After an entry of `tenant` is posted: invalidates the tenant's cached reports,
    /// then runs the hook. Awaited before the response is sent, so the poster reads its
    /// own write.
    pub async fn entry_posted(&self, tenant: &str) {
        self.invalidate_reports(tenant).await;
        if let Some(h) = &self.0.on_posted {
            h(tenant);
        }
    }

    /// Invalidates the tenant's cached trial balance (on every instance, through the
    /// cache's invalidation): after anything the report shows changes (an entry, an
    /// account).
    pub async fn invalidate_reports(&self, tenant: &str) {
        self.cache()
            .for_tenant(tenant)
            .invalidate_tag(TRIAL_BALANCE_TAG)
            .await;
    }
}

/// The `API-Version` response header.
pub const API_VERSION_HEADER: HeaderName = HeaderName::from_static("api-version");

/// Which layers [`app_with`] puts around the routes. [`Stack::FULL`] is what [`app`]
/// serves; the others exist to measure what each layer costs (`benches/load.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::struct_excessive_bools)]
pub struct Stack {
    /// Request id, trace, panic → JSON 500, metrics, `API-Version`, compression, JSON
    /// for bodiless errors, body-size limit, timeout.
    pub plumbing: bool,
    /// Security headers + CSP with a per-request nonce.
    pub security_headers: bool,
    /// The rate limiter.
    pub rate_limit: bool,
    /// The tenant layer (without it, handlers still scope every query by the user's
    /// tenant; only `X-Tenant-ID` / subdomain checks are skipped).
    pub tenant: bool,
    /// The profiler (its UI is mounted either way).
    pub profiler: bool,
    /// The response cache on the trial balance (needs `tenant`: entries live in the
    /// tenant's namespace).
    pub response_cache: bool,
}

impl Stack {
    /// Every layer: the server as shipped.
    pub const FULL: Self = Self {
        plumbing: true,
        security_headers: true,
        rate_limit: true,
        tenant: true,
        profiler: true,
        response_cache: true,
    };

    /// The routes with authentication only (handlers need the user): the anchor of the
    /// load benchmark.
    pub const BARE: Self = Self {
        plumbing: false,
        security_headers: false,
        rate_limit: false,
        tenant: false,
        profiler: false,
        response_cache: false,
    };
}

/// Builds the ERP router with its whole layer stack ([`Stack::FULL`]).
///
/// From the outside in, a request meets:
///
/// 0. the client address, resolved once behind the trusted proxies;
/// 1. request id (set and propagated), 2. trace span, panic → JSON 500, metrics,
///    `API-Version`;
/// 3. security headers + CSP nonce;
/// 4. authentication (this crate), then the rate limiter;
/// 5. tenant; 6. profiler;
/// 7. the response cache (a route layer on the trial balance, in [`api::router`]);
/// 8. compression, JSON for bodiless errors, 9. body-size limit, 10. timeout;
///
/// then the router.
pub fn app(state: AppState) -> Router {
    app_with(state, Stack::FULL)
}

/// Builds the ERP router with the layers of `stack` (see [`app`] for the order).
///
/// # Panics
///
/// Never for a configuration that `Config::load` accepted (the rate-limit table is
/// validated there; the other layers' settings are constants).
pub fn app_with(state: AppState, stack: Stack) -> Router {
    let config = state.config().clone();
    let resolver = ClientIpResolver::new(config.trusted());
    // Cached trial balances, per tenant and user, tagged `trial-balance` (see api.rs).
    // The cache namespace is the resolved tenant's: without the tenant layer, entries
    // would be global and `invalidate_reports` (per tenant) could not reach them.
    let trial_balance_cache = (stack.response_cache && stack.tenant).then(|| {
        ResponseCacheLayer::new(state.cache().clone())
            .identity(identity())
            .by_principal(true)
            // Declared: versions read before the handler, so a report computed while an
            // entry is being posted is never stored as fresh.
            .tags([TRIAL_BALANCE_TAG])
            .ttl(Ttl::Default)
    });
    // The profiler records every request but its own pages; its UI is for admins only
    // (the authentication middleware has put the `Principal` in the extensions).
    // `Server-Timing` follows the UI's rule: timings and query counts only for admins.
    let profiler = ProfilerLayer::new()
        .sample_with(|r| !r.uri().path().starts_with("/_profiler"))
        .identity(identity())
        .server_timing_when(|r| is_admin(r.extensions()));
    // An admin sees the records of their own tenant only.
    let profiler_ui = ProfilerUi::new(profiler.store())
        .authorize(|parts| is_admin(&parts.extensions))
        .same_tenant(identity());
    let mut router = Router::new()
        .route("/health/", get(health::health))
        .route("/health/live/", get(health::live))
        .route("/health/ready/", get(health::ready))
        .route("/metrics", get(metrics::render))
        .nest("/api/v1", api::router(trial_balance_cache))
        .merge(openapi::router())
        .merge(html::router())
        // CSP violation reports (report-uri and report-to): 204, or a JSON 4xx.
        .route_service("/csp-report/", ReportReceiver::new())
        .nest_service("/_profiler", profiler_ui)
        .fallback(fallback)
        .with_state(state.clone());

    // Make sure the recorder exists before the first request records anything.
    let _ = metrics::handle();

    // The layers, innermost first (each `Router::layer` wraps everything added before).
    if stack.plumbing {
        router = router.layer(
            ServiceBuilder::new()
                // 8. Compression (gzip) of everything above the size threshold.
                .layer(CompressionLayer::new())
                // Error responses produced below without a JSON body (405, 408, 413)
                // get one.
                .layer(middleware::map_response(
                    error::jsonify::<tower_http::limit::ResponseBody<axum::body::Body>>,
                ))
                // 9. Body-size limit: 413 before a large body is read (above the
                //    timeout, whose 408 needs a body type with a default).
                .layer(RequestBodyLimitLayer::new(config.body_limit_bytes))
                // 10. Timeout of the whole request.
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::REQUEST_TIMEOUT,
                    config.request_timeout,
                )),
        );
    }
    if stack.profiler {
        // 6. Profiler: per-request records, N+1 findings, Server-Timing; UI at
        //    /_profiler/ for admins only.
        router = router.layer(profiler);
    }
    if stack.tenant {
        // 5. Tenant (library TenantLayer): X-Tenant-ID, {tenant}.localhost or the user's
        //    tenant; must match the user's tenant (403); cached lookups.
        router = router.layer(tenant::layer(state.db().clone()).expect("constant strategies"));
    }
    if stack.rate_limit {
        // 4b. Rate limit: API 100/hour per user, login 5/minute per client IP (form and token endpoint), admin
        //     50/hour per user, health exempt (policies in rampart-erp.toml); after
        //     authentication so per-user policies know the user. 429 JSON. In Redis when
        //     REDIS_URL is set (one truth for every instance).
        router = router.layer(
            rate_limit_layer(&config, state.backends().limiter.clone())
                .expect("the [rate_limit] table was validated by Config::load"),
        );
    }
    // 4a. Authentication (this crate): before the rate limiter and the tenant layer,
    //     which read the user through `tower_rampart::identity::UserIdentity`.
    router = router.layer(middleware::from_fn_with_state(state, auth::authenticate));
    if stack.security_headers {
        // 3. Security headers + CSP with a per-request nonce (`html::CspNonce`, read by
        //    the dashboard); HSTS only over HTTPS as said by a trusted proxy.
        router = router.layer(security_headers(&resolver, config.secure_cookies));
    }
    if stack.plumbing {
        router = router.layer(
            ServiceBuilder::new()
                // 1. Request id: first, so every log line and every layer below sees
                //    it, and the response carries it back (`x-request-id`).
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(PropagateRequestIdLayer::x_request_id())
                // 2. Trace: one span per request with the request id and the client
                //    address (forwarding headers believed from RAMPART_TRUSTED_PROXIES
                //    only).
                .layer(TraceLayer::new_for_http().make_span_with(move |req: &Request| {
                    let id = req
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    // Resolved once by the outermost `ClientIpLayer` (0.).
                    let client = req
                        .extensions()
                        .get::<ClientIp>()
                        .map_or_else(String::new, |c| c.addr().to_string());
                    tracing::info_span!("request", method = %req.method(), uri = %req.uri(), request_id = %id, client_ip = %client)
                }))
                // A panic anywhere below becomes a JSON 500 instead of a dropped
                // connection.
                .layer(CatchPanicLayer::custom(panic_response))
                // Request counters and latency histograms for /metrics.
                .layer(middleware::from_fn(metrics::track))
                // `API-Version: 1` on every /api/v1/ response, errors of outer layers
                // included.
                .layer(middleware::from_fn(api_version)),
        );
    }
    // 0. The client address, resolved once (forwarding headers believed from
    //    RAMPART_TRUSTED_PROXIES only) and stored for every layer below: the trace span,
    //    the security headers, the rate limiter and the handlers see one answer.
    router.layer(ClientIpLayer::new(resolver))
}

/// The shipped configuration file; its `[rate_limit]` table holds the origin ERP's
/// limits, used when the running configuration has none.
const SHIPPED_CONFIG: &str = include_str!("../rampart-erp.toml");

/// Whether the request's principal is an admin (the profiler's UI and `Server-Timing`).
fn is_admin(extensions: &axum::http::Extensions) -> bool {
    extensions
        .get::<auth::Principal>()
        .is_some_and(|p| p.role == auth::Role::Admin)
}

/// Who the request is for, as the library layers read it: the authenticated
/// [`auth::Principal`] and the resolved [`tenant::CurrentTenant`].
pub fn identity() -> IdentityReader {
    IdentityReader::new()
        .user::<auth::Principal>()
        .tenant::<tenant::CurrentTenant>()
}

/// The rate limiter: the configuration's `[rate_limit]` table, or the shipped one;
/// client IPs behind `RAMPART_TRUSTED_PROXIES`, users from the authenticated
/// [`auth::Principal`]. In memory without `redis`; with it, one truth shared by every
/// instance (and the configured failure mode while Redis fails).
///
/// # Errors
///
/// A `[rate_limit]` table that does not describe usable policies.
pub fn rate_limit_layer(
    config: &Config,
    redis: Option<RedisBackend>,
) -> Result<RateLimitLayer, ConfigError> {
    let table = match &config.layers.rate_limit {
        Some(table) => table.clone(),
        None => {
            let shipped: toml::Table = toml::from_str(SHIPPED_CONFIG)
                .map_err(|e| ConfigError::new(format!("rampart-erp.toml: {e}")))?;
            match shipped.get("rate_limit") {
                Some(toml::Value::Table(t)) => t.clone(),
                _ => toml::Table::new(),
            }
        }
    };
    let file: RateLimitConfig = table
        .try_into()
        .map_err(|e| ConfigError::new(format!("[rate_limit]: {e}")))?;
    let mut builder = file
        .builder()?
        .client_ip(ClientIpResolver::new(config.trusted()))
        .identity(identity());
    if let Some(redis) = redis {
        builder = builder.redis(redis);
    }
    builder.build()
}

/// The security headers: the recommended preset with a strict, nonce-based CSP whose
/// violations are reported to `/csp-report/`; the API docs pages (Swagger UI, ReDoc) load
/// their own scripts and styles from this server, so they get a `'self'` policy instead.
///
/// `upgrade-insecure-requests` is sent only when the server is deployed behind HTTPS
/// (`server.secure_cookies`): over plain HTTP on a non-loopback host, browsers would
/// upgrade the login form's POST to `https://` and break it.
fn security_headers(resolver: &ClientIpResolver, behind_https: bool) -> SecurityHeadersLayer {
    let docs_csp = Csp::new()
        .default_src([Source::SelfOrigin])
        .script_src([Source::SelfOrigin])
        .style_src([Source::SelfOrigin, Source::UnsafeInline])
        .img_src([Source::SelfOrigin, Source::scheme("data")])
        .worker_src([Source::SelfOrigin, Source::scheme("blob")])
        .object_src([Source::None])
        .frame_ancestors([Source::None])
        .report_uri("/csp-report/");
    let strict = Csp::strict().report_uri("/csp-report/").report_to("csp");
    let docs = || {
        SecurityHeadersLayer::recommended()
            .client_ip_resolver(resolver.clone())
            .csp(docs_csp.clone())
    };
    SecurityHeadersLayer::recommended()
        .client_ip_resolver(resolver.clone())
        // Signed-in pages (bearer token or session cookie) get `Cache-Control: no-store`.
        .session_cookie(auth::SESSION_COOKIE)
        .csp(if behind_https {
            strict
        } else {
            strict.remove(Directive::UpgradeInsecureRequests)
        })
        .reporting_endpoint("csp", "/csp-report/")
        .route("/api/docs", docs())
        .route("/api/redoc", docs())
        .build()
        .expect("the ERP's security header configuration is valid")
}

async fn api_version(req: Request, next: Next) -> Response {
    let is_api = req.uri().path().starts_with("/api/v1/") || req.uri().path() == "/api/v1";
    let mut res = next.run(req).await;
    if is_api {
        res.headers_mut()
            .insert(API_VERSION_HEADER, HeaderValue::from_static(api::VERSION));
    }
    res
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::internal(&"a handler panicked").into_response()
}

/// Anything unrouted: an unknown API version, or an unknown page.
async fn fallback(req: Request) -> ApiError {
    let path = req.uri().path();
    if let Some(rest) = path.strip_prefix("/api/") {
        let version = rest.split('/').next().unwrap_or("");
        if version.len() > 1
            && version.starts_with('v')
            && version[1..].bytes().all(|b| b.is_ascii_digit())
            && version != "v1"
        {
            return ApiError::not_found(format!(
                "Unknown API version `{version}`; this server supports v1 (/api/v1/)."
            ));
        }
    }
    ApiError::not_found(format!("No route for {path}."))
}
