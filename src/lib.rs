//! Composable [Tower] layers that harden an axum, hyper or tonic service in an afternoon.
//!
//! Each capability is one module behind one Cargo feature:
//!
//! | feature            | module                 | status            |
//! |--------------------|------------------------|-------------------|
//! | `rate-limit`       | [`rate_limit`]         | available         |
//! | `security-headers` | `security_headers`     | see the README    |
//! | `csp`              | `csp`                  | see the README    |
//! | `tenant`           | `tenant`               | available         |
//! | `cache`            | `cache`                | see the README    |
//! | `profiler`         | `profiler`             | available         |
//!
//! Code shared by every layer lives here once and is reused:
//!
//! - [`client_ip`]: the client address behind **trusted** proxies only;
//! - [`error`]: the one JSON error shape `{"error", "detail"}` every layer answers with;
//! - [`key`]: the one key builder for Redis and in-process keys;
//! - [`identity`]: the user and tenant of a request, read from extensions through traits;
//! - [`body`]: the response body type layers use when they answer on their own.
//!
//! # Example
//!
//! ```
//! use tower_rampart::client_ip::{ClientIpResolver, TrustedProxies};
//! use http::Request;
//!
//! let resolver = ClientIpResolver::new(TrustedProxies::new(["10.0.0.0/8"]).unwrap());
//! let req = Request::builder()
//!     .header("x-forwarded-for", "203.0.113.7, 10.0.0.2")
//!     .extension(tower_rampart::client_ip::PeerAddr("10.0.0.1:5000".parse().unwrap()))
//!     .body(())
//!     .unwrap();
//! assert_eq!(resolver.resolve(&req).unwrap().addr().to_string(), "203.0.113.7");
//! ```
//!
//! [Tower]: https://docs.rs/tower
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod body;
mod builder;
#[cfg(feature = "cache")]
pub mod cache;
pub mod client_ip;
#[cfg(feature = "csp")]
#[cfg_attr(docsrs, doc(cfg(feature = "csp")))]
pub mod csp;
pub mod error;
pub mod identity;
pub mod key;
// Used by the layers that log request-controlled text.
#[allow(dead_code)]
mod log_safe;
// Which helpers a build uses depends on the features under test.
#[cfg(test)]
#[allow(dead_code)]
mod test_util;

pub use builder::ServiceBuilderExt;
#[cfg(feature = "profiler")]
#[cfg_attr(docsrs, doc(cfg(feature = "profiler")))]
pub mod profiler;
#[cfg(feature = "rate-limit")]
#[cfg_attr(docsrs, doc(cfg(feature = "rate-limit")))]
pub mod rate_limit;
#[cfg(feature = "security-headers")]
#[cfg_attr(docsrs, doc(cfg(feature = "security-headers")))]
pub mod security_headers;
#[cfg(feature = "tenant")]
#[cfg_attr(docsrs, doc(cfg(feature = "tenant")))]
pub mod tenant;
