//! [`ServiceBuilderExt`]: one method per tower-rampart layer on tower's `ServiceBuilder`.
//!
//! The trait is sealed: it is implemented for `ServiceBuilder` only. Each method is
//! `self.layer(layer)` with a name that reads like the stack it builds, and exists only
//! when the layer's feature is on.
//!
//! # Example
//!
//! ```
//! # #[cfg(all(feature = "rate-limit", feature = "security-headers"))]
//! # {
//! use tower::ServiceBuilder;
//! use tower_rampart::ServiceBuilderExt;
//! use tower_rampart::rate_limit::{Policy, Quota, RateLimitLayer};
//! use tower_rampart::security_headers::SecurityHeadersLayer;
//!
//! let stack = ServiceBuilder::new()
//!     .security_headers(SecurityHeadersLayer::recommended().build().unwrap())
//!     .limit_rate(
//!         RateLimitLayer::builder()
//!             .policy(Policy::new("api", Quota::per_minute(100)))
//!             .build()
//!             .unwrap(),
//!     );
//! let svc = stack.service(tower::service_fn(|_req: http::Request<String>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
//! }));
//! # let _ = svc;
//! # }
//! ```

use tower::ServiceBuilder;
#[allow(unused_imports)]
use tower_layer::Stack;

mod sealed {
    pub trait Sealed {}
    impl<L> Sealed for tower::ServiceBuilder<L> {}
}

/// Adds the tower-rampart layers to a [`ServiceBuilder`], one method per layer.
///
/// The order of calls is the order of the stack, outermost first, as with
/// `ServiceBuilder::layer`.
pub trait ServiceBuilderExt<L>: sealed::Sealed + Sized {
    /// Adds a [`ClientIpLayer`](crate::client_ip::ClientIpLayer): the client address,
    /// resolved once for every layer below (call it first).
    #[must_use]
    fn client_ip(
        self,
        layer: crate::client_ip::ClientIpLayer,
    ) -> ServiceBuilder<Stack<crate::client_ip::ClientIpLayer, L>>;

    /// Adds a [`RateLimitLayer`](crate::rate_limit::RateLimitLayer). (Named `limit_rate`
    /// because tower's own `ServiceBuilder::rate_limit` is a different, waiting limiter.)
    #[cfg(feature = "rate-limit")]
    #[must_use]
    fn limit_rate(
        self,
        layer: crate::rate_limit::RateLimitLayer,
    ) -> ServiceBuilder<Stack<crate::rate_limit::RateLimitLayer, L>>;

    /// Adds a [`SecurityHeadersLayer`](crate::security_headers::SecurityHeadersLayer).
    #[cfg(feature = "security-headers")]
    #[must_use]
    fn security_headers(
        self,
        layer: crate::security_headers::SecurityHeadersLayer,
    ) -> ServiceBuilder<Stack<crate::security_headers::SecurityHeadersLayer, L>>;

    /// Adds a [`CspLayer`](crate::csp::CspLayer) (CSP headers only, without the other
    /// security headers).
    #[cfg(feature = "csp")]
    #[must_use]
    fn csp(self, layer: crate::csp::CspLayer) -> ServiceBuilder<Stack<crate::csp::CspLayer, L>>;

    /// Adds a [`TenantLayer`](crate::tenant::TenantLayer).
    #[cfg(feature = "tenant")]
    #[must_use]
    fn tenant<St>(
        self,
        layer: crate::tenant::TenantLayer<St>,
    ) -> ServiceBuilder<Stack<crate::tenant::TenantLayer<St>, L>>;

    /// Adds a [`ProfilerLayer`](crate::profiler::ProfilerLayer).
    #[cfg(feature = "profiler")]
    #[must_use]
    fn profiler(
        self,
        layer: crate::profiler::ProfilerLayer,
    ) -> ServiceBuilder<Stack<crate::profiler::ProfilerLayer, L>>;

    /// Adds a [`ResponseCacheLayer`](crate::cache::ResponseCacheLayer).
    #[cfg(feature = "cache")]
    #[must_use]
    fn response_cache<C>(
        self,
        layer: crate::cache::ResponseCacheLayer<C>,
    ) -> ServiceBuilder<Stack<crate::cache::ResponseCacheLayer<C>, L>>;
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    fn client_ip(
        self,
        layer: crate::client_ip::ClientIpLayer,
    ) -> ServiceBuilder<Stack<crate::client_ip::ClientIpLayer, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "rate-limit")]
    fn limit_rate(
        self,
        layer: crate::rate_limit::RateLimitLayer,
    ) -> ServiceBuilder<Stack<crate::rate_limit::RateLimitLayer, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "security-headers")]
    fn security_headers(
        self,
        layer: crate::security_headers::SecurityHeadersLayer,
    ) -> ServiceBuilder<Stack<crate::security_headers::SecurityHeadersLayer, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "csp")]
    fn csp(self, layer: crate::csp::CspLayer) -> ServiceBuilder<Stack<crate::csp::CspLayer, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "tenant")]
    fn tenant<St>(
        self,
        layer: crate::tenant::TenantLayer<St>,
    ) -> ServiceBuilder<Stack<crate::tenant::TenantLayer<St>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "profiler")]
    fn profiler(
        self,
        layer: crate::profiler::ProfilerLayer,
    ) -> ServiceBuilder<Stack<crate::profiler::ProfilerLayer, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "cache")]
    fn response_cache<C>(
        self,
        layer: crate::cache::ResponseCacheLayer<C>,
    ) -> ServiceBuilder<Stack<crate::cache::ResponseCacheLayer<C>, L>> {
        self.layer(layer)
    }
}

#[cfg(all(test, feature = "rate-limit", feature = "security-headers"))]
mod tests {
    use super::ServiceBuilderExt;
    use crate::rate_limit::{Policy, Quota, RateLimitLayer};
    use crate::security_headers::SecurityHeadersLayer;
    use std::convert::Infallible;
    use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

    #[tokio::test]
    async fn builder_methods_stack_the_layers() {
        let mut svc = ServiceBuilder::new()
            .security_headers(SecurityHeadersLayer::recommended().build().unwrap())
            .limit_rate(
                RateLimitLayer::builder()
                    .policy(Policy::new("one", Quota::per_hour(1)))
                    .build()
                    .unwrap(),
            )
            .service(service_fn(|_req: http::Request<String>| async {
                Ok::<_, Infallible>(http::Response::new(String::new()))
            }));
        let req = || {
            http::Request::builder()
                .extension(crate::client_ip::PeerAddr("203.0.113.1:1".parse().unwrap()))
                .body(String::new())
                .unwrap()
        };
        let first = svc.ready().await.unwrap().call(req()).await.unwrap();
        assert_eq!(first.status(), 200);
        assert_eq!(first.headers()["x-content-type-options"], "nosniff");
        let second = svc.ready().await.unwrap().call(req()).await.unwrap();
        assert_eq!(second.status(), 429, "the limiter is in the stack");
        assert_eq!(
            second.headers()["x-content-type-options"],
            "nosniff",
            "outside the limiter"
        );
    }
}
