//! The axum extractor.

use std::ops::Deref;

use axum::{
    extract::{FromRequestParts, OptionalFromRequestParts},
    response::{IntoResponse, Response},
};
use http::request::Parts;

use super::{
    layer::ResolvedTenant,
    rejection::{DefaultResponder, RejectionResponder, TenantRejection},
};

/// The resolved tenant, as an axum extractor (`T` is the store's tenant type).
///
/// Without a tenant in the request (the layer is missing, or not required and none was
/// named) it rejects with the layer's default 400 JSON; use `Option<Tenant<T>>` where a
/// tenant is optional.
///
/// # Example
///
/// ```
/// use axum::{Router, routing::get};
/// use tower_rampart::tenant::{MemoryStore, Tenant, TenantLayer};
/// use tower::ServiceExt;
///
/// async fn who(tenant: Tenant<&'static str>) -> String {
///     format!("{} ({})", tenant.value(), tenant.id())
/// }
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let store = MemoryStore::new().with("acme", "Acme Corp").unwrap();
/// let app = Router::new()
///     .route("/", get(who))
///     .layer(TenantLayer::builder(store).header().build().unwrap());
/// let req = http::Request::builder().uri("/").header("x-tenant-id", "ACME")
///     .body(axum::body::Body::empty()).unwrap();
/// let res = app.oneshot(req).await.unwrap();
/// let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
/// assert_eq!(&body[..], b"Acme Corp (acme)");
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct Tenant<T>(pub ResolvedTenant<T>);

impl<T> Deref for Tenant<T> {
    type Target = ResolvedTenant<T>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl IntoResponse for TenantRejection {
    fn into_response(self) -> Response {
        let mut res = DefaultResponder.respond(&self).map(axum::body::Body::from);
        res.extensions_mut().insert(self);
        res
    }
}

impl<S, T> FromRequestParts<S> for Tenant<T>
where
    S: Send + Sync,
    T: Clone + Send + Sync + 'static,
{
    type Rejection = TenantRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<ResolvedTenant<T>>()
            .cloned()
            .map(Tenant)
            .ok_or_else(TenantRejection::missing)
    }
}

impl<S, T> OptionalFromRequestParts<S> for Tenant<T>
where
    S: Send + Sync,
    T: Clone + Send + Sync + 'static,
{
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<ResolvedTenant<T>>()
            .cloned()
            .map(Tenant))
    }
}
