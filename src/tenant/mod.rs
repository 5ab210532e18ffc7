//! Tenant resolution: which tenant a request belongs to, checked against the principal.
//!
//! [`TenantLayer`] tries the configured strategies **in order** until one names a tenant:
//! host template (`{tenant}.example.com`, port ignored), subdomain of base domains,
//! header (by default `X-Tenant-ID`), path prefix (`/t/{tenant}/…`, optionally stripped
//! before the inner service), the tenant claim of the authenticated principal (read
//! through [`crate::identity`]), a closure, and finally a static fallback. The first
//! strategy that finds something decides: later strategies are not consulted.
//!
//! Every identifier is validated and normalised ([`TenantId`]: 1–63 characters of
//! `[a-z0-9_-]`, lower-cased) **before** any lookup. Dots, slashes, `..`, `%` (nothing is
//! percent-decoded), control characters, IDN hosts and oversized or repeated `Host`
//! headers are refused with 400; raw input never reaches a store.
//!
//! | outcome | default response | `RejectionKind` |
//! |---|---|---|
//! | no tenant named, no fallback, [`required`](TenantLayerBuilder::required) | 400 `Tenant required` | `Missing` |
//! | malformed identifier or host | 400 `Invalid tenant` | `Invalid` |
//! | the principal's tenant differs (anti-spoofing) | 403 `Forbidden tenant` | `Forbidden` |
//! | store says "no such tenant" | 404 `Unknown tenant` | `Unknown` |
//! | store failed or exceeded `lookup_timeout` (2 s) | 503 `Tenant lookup unavailable`, `Retry-After: 1` | `StoreUnavailable` |
//! | bypass route (`/health`, `/metrics`) | inner service, no resolution | – |
//!
//! Bodies are [`JsonError`](crate::error::JsonError)s; swap them with
//! [`responder`](TenantLayerBuilder::responder). The typed [`TenantRejection`] is always
//! in the response's extensions. The inner service is never called on a rejection.
//!
//! On success a [`ResolvedTenant<T>`] (`.id()`, `.value()`, `.strategy()`) is in the
//! request's extensions. It implements [`TenantIdentity`](crate::identity::TenantIdentity),
//! so the cache namespaces keys and the rate limiter keys quotas by it through an
//! [`IdentityReader`](crate::identity::IdentityReader) configured with
//! `.tenant::<ResolvedTenant<T>>()`. With the `axum` feature, handlers take
//! [`Tenant<T>`].
//!
//! # Anti-spoofing
//!
//! When the request carries an authenticated principal (configure its type with
//! [`principal`](TenantLayerBuilder::principal)) whose
//! [`UserIdentity::tenant_id`](crate::identity::UserIdentity::tenant_id) is set, a tenant
//! named by host, header, path, closure or fallback that differs from it is refused with
//! 403 before the store and the inner service run. Put the layer **after** (inside) your
//! authentication layer so the principal is in the extensions. Anonymous requests are not
//! checked; disable the check with [`check_principal(false)`](TenantLayerBuilder::check_principal)
//! only for operator tools.
//!
//! # Stores
//!
//! A [`TenantStore`] maps a [`TenantId`] to your tenant value. [`MemoryStore`] and
//! [`store_fn`] are provided; wrap a database-backed store in [`CachedStore`] (moka:
//! TTL, shorter-TTL negative caching of unknown identifiers, bounded, single-flight).
//! The `tenant` feature enables the `moka` dependency for it.
//!
//! # Isolating data per tenant
//!
//! Resolving the tenant is half the job; every query must then be scoped to it.
//!
//! - **Row-level filtering**: every tenant-owned table has a `tenant_id` column, and
//!   every query filters on the resolved id, never on an id from the request body:
//!   `SELECT … FROM orders WHERE tenant_id = $1 AND id = $2`, binding
//!   `tenant.id().as_str()`. Put the filter in one repository type that takes the
//!   [`ResolvedTenant`] so it cannot be forgotten.
//! - **PostgreSQL row-level security / schema per tenant**: open a transaction and set
//!   the tenant **for that transaction only**:
//!   `SELECT set_config('app.tenant_id', $1, true)` (policies then use
//!   `current_setting('app.tenant_id')`), or
//!   `SELECT set_config('search_path', $1, true)` with a quoted schema name for
//!   schema-per-tenant. The third argument `true` makes it transaction-local (like
//!   `SET LOCAL`). **Never** use a session-level `SET` on a pooled connection: the next
//!   request that borrows the connection would run as the previous tenant.
//!
//! ```text
//! let mut tx = pool.begin().await?;
//! sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
//!     .bind(tenant.id().as_str())
//!     .execute(&mut *tx).await?;
//! let orders = sqlx::query_as::<_, Order>("SELECT * FROM orders").fetch_all(&mut *tx).await?;
//! tx.commit().await?;
//! ```
//!
//! # Metrics
//!
//! Through the `metrics` facade: `rampart_tenant_resolutions_total{strategy, outcome}`
//! (outcome `resolved`, `missing`, `invalid`, `unknown`, `forbidden`, `store_error`,
//! `bypass`, `none`), the histogram `rampart_tenant_store_lookup_seconds`, and
//! `rampart_tenant_cache_total{result="hit"|"miss"}` from [`CachedStore`].
//!
//! # Example
//!
//! ```
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceExt, service_fn};
//! use tower_rampart::identity::UserIdentity;
//! use tower_rampart::tenant::{MemoryStore, ResolvedTenant, TenantLayer};
//! use tower_layer::Layer;
//!
//! #[derive(Clone)]
//! struct Claims { sub: String, tenant: String }
//! impl UserIdentity for Claims {
//!     fn user_id(&self) -> &str { &self.sub }
//!     fn tenant_id(&self) -> Option<&str> { Some(&self.tenant) }
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let store = MemoryStore::new().with("acme", "Acme").unwrap().with("globex", "Globex").unwrap();
//! let layer = TenantLayer::builder(store)
//!     .host("{tenant}.example.com")
//!     .header()
//!     .principal::<Claims>()
//!     .bypass("/health")
//!     .build()
//!     .unwrap();
//! let svc = layer.layer(service_fn(|req: Request<()>| async move {
//!     let t = req.extensions().get::<ResolvedTenant<&'static str>>().unwrap();
//!     Ok::<_, std::convert::Infallible>(Response::new(t.value().to_string()))
//! }));
//!
//! let req = Request::builder().header("host", "acme.example.com").body(()).unwrap();
//! assert_eq!(svc.clone().oneshot(req).await.unwrap().status(), StatusCode::OK);
//!
//! let unknown = Request::builder().header("host", "initech.example.com").body(()).unwrap();
//! assert_eq!(svc.clone().oneshot(unknown).await.unwrap().status(), StatusCode::NOT_FOUND);
//!
//! // A user of acme asking for globex's data: refused before the handler runs.
//! let spoof = Request::builder()
//!     .header("x-tenant-id", "globex")
//!     .extension(Claims { sub: "alice".into(), tenant: "acme".into() })
//!     .body(()).unwrap();
//! assert_eq!(svc.oneshot(spoof).await.unwrap().status(), StatusCode::FORBIDDEN);
//! # });
//! ```

mod cached;
#[cfg(feature = "axum")]
mod extract;
mod id;
mod layer;
mod rejection;
mod service;
mod store;
mod strategy;
#[cfg(test)]
mod tests;

pub use cached::{CacheConfig, CacheStats, CachedStore, CachedStoreBuilder};
#[cfg(feature = "axum")]
pub use extract::Tenant;
pub use id::{DEFAULT_MAX_ID_LEN, InvalidTenantId, TenantId};
pub use layer::{ResolvedTenant, TenantConfig, TenantLayer, TenantLayerBuilder};
pub use rejection::{DefaultResponder, RejectionKind, RejectionResponder, TenantRejection};
pub use service::{ResponseFuture, TenantResolver};
pub use store::{FnStore, MemoryStore, StoreError, TenantStore, store_fn};
pub use strategy::{RequestHead, StrategyConfig, StrategyKind};

/// Extracts the tenant identifier a host or path would name, exactly as the layer's host
/// template `{tenant}.example.com`, subdomain (`example.com`) and path `/t/{tenant}`
/// strategies would, for fuzzing and property tests.
#[doc(hidden)]
pub fn __extract_for_fuzzing(host: &[u8], path: &str) -> [Result<Option<String>, ()>; 3] {
    use strategy::{Found, Strategy};
    let mut b = http::Request::builder();
    if let Ok(h) = http::HeaderValue::from_bytes(host) {
        b = b.header(http::header::HOST, h);
    }
    if let Ok(uri) = http::Uri::try_from(path) {
        b = b.uri(uri);
    }
    let Ok(req) = b.body(()) else {
        return [Ok(None), Ok(None), Ok(None)];
    };
    let reader = crate::identity::IdentityReader::new();
    let head = RequestHead::of(&req);
    let strategies = [
        Strategy::host("{tenant}.example.com"),
        Strategy::subdomain(["example.com"]),
        Strategy::path("/t/{tenant}", true),
    ];
    strategies.map(|s| match s {
        Ok(s) => match s.find(&head, &reader, DEFAULT_MAX_ID_LEN) {
            Found::Nothing => Ok(None),
            Found::Id(id, _) => Ok(Some(id.to_string())),
            Found::Invalid(_) => Err(()),
        },
        Err(_) => Err(()),
    })
}
