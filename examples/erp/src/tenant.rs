//! A minimal tenant resolver, until the library's tenant layer is plugged in.
//!
//! The tenant comes from the `X-Tenant-ID` header or, failing that, from a
//! `{tenant}.localhost` host name. A malformed id is a 400, an unknown tenant a 404,
//! and a tenant different from the authenticated user's is a 403 (a token of `acme`
//! cannot be used against `globex`). Without either, an authenticated request runs in
//! its user's tenant. The resolved tenant goes into the extensions as [`CurrentTenant`]
//! (a [`TenantIdentity`]). Health, metrics and API-docs paths are exempt.

use axum::{
    extract::{Request, State},
    http::{HeaderMap, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use tower_rampart::identity::TenantIdentity;

use crate::{AppState, auth::Principal, error::ApiError};

/// The header naming the tenant.
pub const TENANT_HEADER: &str = "x-tenant-id";

/// Paths that never need a tenant.
pub const EXEMPT_PREFIXES: &[&str] = &[
    "/health/",
    "/metrics",
    "/api/schema/",
    "/api/docs",
    "/api/redoc",
];

/// The tenant a request runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentTenant(pub String);

impl TenantIdentity for CurrentTenant {
    fn tenant_id(&self) -> &str {
        &self.0
    }
}

/// Whether `s` is a valid tenant id: 1–63 of `a-z`, `0-9`, `-`, not starting or ending
/// with `-` (a DNS label, so it also works as a subdomain).
pub fn valid_tenant_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The tenant the request asks for: `Ok(None)` when it names none, `Err` when the
/// header is present but malformed.
///
/// # Errors
///
/// A malformed `X-Tenant-ID` header (400).
pub fn requested_tenant(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    if let Some(v) = headers.get(TENANT_HEADER) {
        let v = v.to_str().unwrap_or("").trim().to_ascii_lowercase();
        if !valid_tenant_id(&v) {
            return Err(ApiError::bad_request(
                "X-Tenant-ID must be 1-63 characters of a-z, 0-9 and '-', e.g. `acme`.",
            ));
        }
        return Ok(Some(v));
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let host = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    let host = host.to_ascii_lowercase();
    Ok(host
        .strip_suffix(".localhost")
        .filter(|sub| valid_tenant_id(sub))
        .map(str::to_owned))
}

/// Middleware: resolves the tenant and checks it against the user's.
pub async fn resolve(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if EXEMPT_PREFIXES.iter().any(|p| path.starts_with(p)) {
        return next.run(req).await;
    }
    let requested = match requested_tenant(req.headers()) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let principal_tenant = req
        .extensions()
        .get::<Principal>()
        .map(|p| p.tenant.clone());
    let tenant = match (requested, principal_tenant) {
        (Some(t), Some(p)) if t != p => {
            return ApiError::forbidden(format!(
                "The request names tenant `{t}` but you are authenticated for another tenant."
            ))
            .into_response();
        }
        (Some(t), _) => {
            match state.db().tenant_exists(&t).await {
                Ok(true) => {}
                Ok(false) => {
                    return ApiError::not_found(format!("Unknown tenant `{t}`.")).into_response();
                }
                Err(e) => return ApiError::from(e).into_response(),
            }
            Some(t)
        }
        (None, p) => p,
    };
    if let Some(t) = tenant {
        req.extensions_mut().insert(CurrentTenant(t));
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    axum::http::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn tenant_ids() {
        assert!(valid_tenant_id("acme"));
        assert!(valid_tenant_id("a-1"));
        for bad in ["", "-a", "a-", "Acme", "a_b", "a.b", &"x".repeat(64)] {
            assert!(!valid_tenant_id(bad), "{bad}");
        }
    }

    #[test]
    fn header_beats_subdomain() {
        assert_eq!(
            requested_tenant(&h(&[
                ("x-tenant-id", "Globex"),
                ("host", "acme.localhost:8080")
            ]))
            .unwrap()
            .as_deref(),
            Some("globex")
        );
        assert_eq!(
            requested_tenant(&h(&[("host", "acme.localhost:8080")]))
                .unwrap()
                .as_deref(),
            Some("acme")
        );
        assert_eq!(
            requested_tenant(&h(&[("host", "ACME.localhost")]))
                .unwrap()
                .as_deref(),
            Some("acme")
        );
        assert_eq!(
            requested_tenant(&h(&[("host", "localhost:8080")])).unwrap(),
            None
        );
        assert_eq!(
            requested_tenant(&h(&[("host", "a.b.localhost")])).unwrap(),
            None
        );
        assert_eq!(requested_tenant(&h(&[])).unwrap(), None);
        assert_eq!(
            requested_tenant(&h(&[("x-tenant-id", "bad tenant")]))
                .unwrap_err()
                .status(),
            400
        );
    }
}
