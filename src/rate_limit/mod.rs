//! Rate limiting: named policies, GCRA in memory or in Redis, standard headers, failure
//! modes, gRPC answers.
//!
//! A [`RateLimitLayer`] holds named [`Policy`]s. Each policy has one or more [`Quota`]
//! windows (checked atomically), a [`Key`] (client IP, user, tenant, header, global or a
//! closure), the paths and methods it applies to, a cost and a shadow switch. Every
//! policy matching a request is checked; any rejection rejects with **429**,
//! `Retry-After` and the JSON body `{"error": "Rate limit exceeded", "detail": "Too many
//! requests. Please try again in N seconds.", "retry_after": N}` (swappable through
//! [`OnRejection`]; the typed [`Rejection`] is in the response's extensions). Responses
//! carry the `RateLimit-Policy` / `RateLimit` headers of
//! draft-ietf-httpapi-ratelimit-headers-11 and/or the legacy `X-RateLimit-*` ones.
//!
//! Both backends run the same GCRA arithmetic, so they give the same answers for the same
//! sequence. The in-memory backend is bounded by construction ([`MemoryBackend`]); the
//! Redis backend (feature `redis`) makes one round trip per decision and has explicit
//! [`FailureMode`]s. The guide is `docs/rate-limit.md`.
//!
//! # Example
//!
//! ```
//! use http::{Request, Response, StatusCode};
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//! use tower_rampart::{client_ip::PeerAddr, rate_limit::{Key, Policy, Quota, RateLimitLayer}};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let layer = RateLimitLayer::builder()
//!     .policy(Policy::new("login", Quota::per_minute(2)).post("/accounts/login/").key(Key::ClientIp))
//!     .exempt("/health/*")
//!     .build()
//!     .unwrap();
//! let mut svc = ServiceBuilder::new().layer(layer).service(service_fn(|_req: Request<String>| async {
//!     Ok::<_, std::convert::Infallible>(Response::new(String::from("ok")))
//! }));
//! let login = || Request::post("/accounts/login/")
//!     .extension(PeerAddr("203.0.113.9:5000".parse().unwrap()))
//!     .body(String::new()).unwrap();
//! for _ in 0..2 {
//!     let res = svc.ready().await.unwrap().call(login()).await.unwrap();
//!     assert_eq!(res.status(), StatusCode::OK);
//! }
//! let res = svc.ready().await.unwrap().call(login()).await.unwrap();
//! assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(res.headers()["retry-after"], "30");
//! # }
//! ```

mod backend;
mod config;
mod gcra;
mod layer;
mod pattern;
mod policy;
mod quota;
mod response;
mod service;
#[cfg(test)]
mod tests;

pub use backend::memory::{DEFAULT_MAX_KEYS, MemoryBackend};
#[cfg(feature = "redis")]
pub use backend::redis::{
    DEFAULT_RETRY_INTERVAL, DEFAULT_TIMEOUT, FailureMode, REDIS_SCRIPT, RedisBackend,
};
pub use config::{KeyConfig, PolicyConfig, RateLimitConfig, Rates};
pub use gcra::{Clock, ManualClock};
pub use layer::{Decision, RateLimitBuilder, RateLimitLayer, UnknownPolicy};
pub use pattern::PathPattern;
pub use policy::{Anonymous, CountIf, Key, KeyFn, MissingPeer, Policy, RequestInfo, TierFn};
pub use quota::Quota;
pub use response::{DefaultRejection, HeaderStyle, OnRejection, Rejection, RejectionKind};
pub use service::{RateLimit, ResponseFuture};
