//! Tenant resolution with the library's [`TenantLayer`] over the `tenants` table.
//!
//! Strategies, first match wins: the `X-Tenant-ID` header, then a `{tenant}.localhost`
//! host name, then the tenant of the authenticated user (so an authenticated request
//! that names none runs in its user's tenant). A malformed id is a 400, an unknown
//! tenant a 404 and a tenant different from the authenticated user's a 403 (a token of
//! `acme` cannot be used against `globex`) — all JSON `{"error", "detail"}`. Anonymous
//! requests that name no tenant go through without one (the login form asks for it).
//! Health, metrics and API-docs paths are exempt.
//!
//! Lookups go through a [`CachedStore`] (a minute for known tenants, ten seconds for
//! unknown ones, bounded, single-flight), so the database is not asked on every request.
//! The resolved tenant is in the extensions as [`CurrentTenant`], which the rate limiter
//! and the response cache read through `tower_rampart::identity`.

use std::time::Duration;

use tower_rampart::{
    error::ConfigError,
    tenant::{CachedStore, ResolvedTenant, StoreError, TenantId, TenantLayer, TenantStore},
};

use crate::{Db, auth::Principal};

/// The header naming the tenant.
pub const TENANT_HEADER: &str = "x-tenant-id";

/// Paths that never need a tenant.
pub const EXEMPT_PREFIXES: &[&str] = &[
    "/health",
    "/metrics",
    "/api/schema",
    "/api/docs",
    "/api/redoc",
];

/// The tenant a request runs in; its value is the tenant's display name.
pub type CurrentTenant = ResolvedTenant<String>;

/// The `tenants` table as a [`TenantStore`]: tenant id → display name.
#[derive(Debug, Clone)]
pub struct DbTenants(pub Db);

impl TenantStore for DbTenants {
    type Tenant = String;

    async fn lookup(&self, id: &TenantId) -> Result<Option<String>, StoreError> {
        self.0
            .tenant_name(id.as_str())
            .await
            .map_err(StoreError::from_error)
    }
}

/// The tenant layer of the ERP (see the module documentation).
///
/// # Errors
///
/// Never in practice: the strategies and store settings are constants.
pub fn layer(db: Db) -> Result<TenantLayer<CachedStore<DbTenants>>, ConfigError> {
    let store = CachedStore::builder(DbTenants(db))
        .ttl(Duration::from_secs(60))
        .negative_ttl(Duration::from_secs(10))
        .max_capacity(10_000)
        .build()?;
    let mut builder = TenantLayer::builder(store)
        .header_named(TENANT_HEADER)
        .host("{tenant}.localhost")
        .claim()
        .principal::<Principal>()
        .required(false);
    for prefix in EXEMPT_PREFIXES {
        builder = builder.bypass(*prefix);
    }
    builder.build()
}
