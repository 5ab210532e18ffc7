//! Typed rejections and the swappable strategy that turns them into responses.

use std::fmt;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use super::{
    id::{InvalidTenantId, TenantId},
    store::StoreError,
    strategy::StrategyKind,
};
use crate::error::JsonError;

/// Why a request was not let through.
///
/// # Example
///
/// ```
/// use tower_rampart::tenant::RejectionKind;
///
/// assert_eq!(RejectionKind::Forbidden.status(), 403);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectionKind {
    /// No strategy named a tenant and there is no fallback (400).
    Missing,
    /// A strategy named a malformed identifier or host (400).
    Invalid,
    /// The store does not know the identifier (404).
    Unknown,
    /// The authenticated principal belongs to another tenant (403).
    Forbidden,
    /// The store could not answer (503).
    StoreUnavailable,
}

impl RejectionKind {
    /// The status of the default response.
    pub fn status(self) -> StatusCode {
        match self {
            Self::Missing | Self::Invalid => StatusCode::BAD_REQUEST,
            Self::Unknown => StatusCode::NOT_FOUND,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A metrics label: `missing`, `invalid`, `unknown`, `forbidden`, `store_error`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Invalid => "invalid",
            Self::Unknown => "unknown",
            Self::Forbidden => "forbidden",
            Self::StoreUnavailable => "store_error",
        }
    }
}

/// A request the tenant layer refused. Put into the response's extensions.
///
/// # Example
///
/// ```
/// use tower_rampart::tenant::{RejectionKind, TenantRejection};
///
/// let r = TenantRejection::missing();
/// assert_eq!(r.kind(), RejectionKind::Missing);
/// assert_eq!(r.status(), 400);
/// ```
#[derive(Debug, Clone)]
pub struct TenantRejection {
    kind: RejectionKind,
    strategy: Option<StrategyKind>,
    tenant: Option<TenantId>,
    invalid: Option<InvalidTenantId>,
    store_error: Option<StoreError>,
}

impl TenantRejection {
    fn new(kind: RejectionKind) -> Self {
        Self {
            kind,
            strategy: None,
            tenant: None,
            invalid: None,
            store_error: None,
        }
    }

    /// No tenant named (400).
    pub fn missing() -> Self {
        Self::new(RejectionKind::Missing)
    }

    pub(crate) fn invalid(strategy: StrategyKind, reason: InvalidTenantId) -> Self {
        Self {
            strategy: Some(strategy),
            invalid: Some(reason),
            ..Self::new(RejectionKind::Invalid)
        }
    }

    pub(crate) fn unknown(strategy: StrategyKind, tenant: TenantId) -> Self {
        Self {
            strategy: Some(strategy),
            tenant: Some(tenant),
            ..Self::new(RejectionKind::Unknown)
        }
    }

    pub(crate) fn forbidden(strategy: StrategyKind, tenant: TenantId) -> Self {
        Self {
            strategy: Some(strategy),
            tenant: Some(tenant),
            ..Self::new(RejectionKind::Forbidden)
        }
    }

    pub(crate) fn store(strategy: StrategyKind, tenant: TenantId, error: StoreError) -> Self {
        Self {
            strategy: Some(strategy),
            tenant: Some(tenant),
            store_error: Some(error),
            ..Self::new(RejectionKind::StoreUnavailable)
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> RejectionKind {
        self.kind
    }

    /// The status of the default response.
    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }

    /// The strategy that named the tenant, when one did.
    pub fn strategy(&self) -> Option<StrategyKind> {
        self.strategy
    }

    /// The (valid) identifier that was requested, for `Unknown`, `Forbidden` and
    /// `StoreUnavailable`.
    pub fn tenant(&self) -> Option<&TenantId> {
        self.tenant.as_ref()
    }

    /// Why the identifier was refused, for `Invalid`.
    pub fn invalid_reason(&self) -> Option<InvalidTenantId> {
        self.invalid
    }

    /// The store's error, for `StoreUnavailable` (log it; it is not sent to clients).
    pub fn store_error(&self) -> Option<&StoreError> {
        self.store_error.as_ref()
    }

    /// The default JSON body for this rejection.
    pub fn json(&self) -> JsonError {
        match self.kind {
            RejectionKind::Missing => JsonError::new(
                "Tenant required",
                "This request must name a tenant (host, header or path).",
            ),
            RejectionKind::Invalid => JsonError::new(
                "Invalid tenant",
                self.invalid.map_or(
                    "The tenant identifier is malformed.",
                    InvalidTenantId::describe,
                ),
            ),
            RejectionKind::Unknown => JsonError::new("Unknown tenant", "No such tenant exists."),
            RejectionKind::Forbidden => JsonError::new(
                "Forbidden tenant",
                "The authenticated user does not belong to the requested tenant.",
            ),
            RejectionKind::StoreUnavailable => JsonError::new(
                "Tenant lookup unavailable",
                "The tenant directory is temporarily unavailable; retry shortly.",
            )
            .with_field("retry_after", 1),
        }
    }
}

impl fmt::Display for TenantRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.json(), f)
    }
}

impl std::error::Error for TenantRejection {}

/// Turns a [`TenantRejection`] into a response. Implemented for closures
/// `Fn(&TenantRejection) -> Response<Bytes>`; [`DefaultResponder`] is the default.
///
/// The layer always inserts the rejection into the response's extensions afterwards.
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use http::{Response, StatusCode};
/// use tower_rampart::tenant::{RejectionKind, RejectionResponder, TenantRejection};
///
/// // Answer unknown tenants like missing pages of a static site.
/// let responder = |r: &TenantRejection| {
///     let mut res = Response::new(Bytes::from_static(b"not here"));
///     *res.status_mut() = if r.kind() == RejectionKind::StoreUnavailable {
///         StatusCode::SERVICE_UNAVAILABLE
///     } else {
///         StatusCode::NOT_FOUND
///     };
///     res
/// };
/// assert_eq!(responder.respond(&TenantRejection::missing()).status(), 404);
/// ```
pub trait RejectionResponder: Send + Sync + 'static {
    /// The response for a rejection.
    fn respond(&self, rejection: &TenantRejection) -> Response<Bytes>;
}

impl<F> RejectionResponder for F
where
    F: Fn(&TenantRejection) -> Response<Bytes> + Send + Sync + 'static,
{
    fn respond(&self, rejection: &TenantRejection) -> Response<Bytes> {
        self(rejection)
    }
}

/// The default responses: JSON `{"error", "detail"}` with 400, 404, 403 or 503 (with
/// `Retry-After: 1`).
///
/// # Example
///
/// ```
/// use tower_rampart::tenant::{DefaultResponder, RejectionResponder, TenantRejection};
///
/// let res = DefaultResponder.respond(&TenantRejection::missing());
/// assert_eq!(res.status(), 400);
/// let body: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
/// assert_eq!(body["error"], "Tenant required");
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultResponder;

impl RejectionResponder for DefaultResponder {
    fn respond(&self, rejection: &TenantRejection) -> Response<Bytes> {
        let mut res = rejection.json().into_response(rejection.status());
        if rejection.kind() == RejectionKind::StoreUnavailable {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_bodies_are_distinct() {
        let t = TenantId::parse("acme").unwrap();
        let all = [
            TenantRejection::missing(),
            TenantRejection::invalid(StrategyKind::Host, InvalidTenantId::Charset),
            TenantRejection::unknown(StrategyKind::Header, t.clone()),
            TenantRejection::forbidden(StrategyKind::Header, t.clone()),
            TenantRejection::store(StrategyKind::Path, t, StoreError::new("db down")),
        ];
        let mut titles = std::collections::HashSet::new();
        for r in &all {
            let res = DefaultResponder.respond(r);
            assert_eq!(res.status(), r.kind().status());
            let v: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
            assert!(titles.insert(v["error"].as_str().unwrap().to_owned()));
            assert!(
                !v["detail"].as_str().unwrap().contains("db down"),
                "store errors are not leaked"
            );
            assert!(!r.to_string().is_empty());
            assert!(!r.kind().as_str().is_empty());
        }
        assert_eq!(all[1].invalid_reason(), Some(InvalidTenantId::Charset));
        assert_eq!(all[2].tenant().unwrap().as_str(), "acme");
        assert_eq!(all[3].strategy(), Some(StrategyKind::Header));
        assert_eq!(all[4].store_error().unwrap().to_string(), "db down");
        let res = DefaultResponder.respond(&all[4]);
        assert_eq!(res.headers()["retry-after"], "1");
        assert_eq!(res.status(), 503);
    }
}
