//! Security response headers at helmet + OWASP level, with HSTS only over HTTPS.
//!
//! [`SecurityHeadersLayer::recommended`] and [`SecurityHeadersLayer::strict`] return a
//! [`SecurityHeadersBuilder`] with a typed setter per header (pass `None` to switch one
//! off); [`build`](SecurityHeadersBuilder::build) validates and renders every value once,
//! so a response costs a few header inserts.
//!
//! - `Server` and `X-Powered-By` are removed from responses.
//! - HSTS is sent only on HTTPS requests: the request URI's scheme, or
//!   `X-Forwarded-Proto` / `Forwarded: proto=` **from a trusted proxy only**, as decided
//!   by the shared [`ClientIpResolver::scheme`](crate::client_ip::ClientIpResolver::scheme);
//!   or always, with [`HstsWhen::Always`].
//! - A header the application already set is kept, unless its [`HeaderMode`] is
//!   `Overwrite`.
//! - [`route`](SecurityHeadersBuilder::route) gives a path prefix its own header set (for
//!   example a different CSP for API docs).
//! - With the `csp` feature the layer also sends the [`Csp`](crate::csp::Csp) policies with
//!   a fresh nonce per response (see [`crate::csp`]).
//!
//! [`SecurityHeadersConfig`] describes the same configuration in a TOML or JSON file.
//!
//! See `docs/security-headers.md` for the guide.
//!
//! # Example
//!
//! ```
//! use http::Request;
//! use tower::{ServiceExt, service_fn};
//! use tower_layer::Layer;
//! use tower_rampart::client_ip::{ClientIpResolver, PeerAddr, TrustedProxies};
//! use tower_rampart::security_headers::{HeaderMode, SecurityHeadersLayer};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let layer = SecurityHeadersLayer::recommended()
//!     .client_ip_resolver(ClientIpResolver::new(TrustedProxies::new(["10.0.0.0/8"]).unwrap()))
//!     .mode("x-frame-options", HeaderMode::Overwrite)
//!     .build()
//!     .unwrap();
//! let svc = layer.layer(service_fn(|_req: Request<()>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(()))
//! }));
//!
//! // Behind the trusted proxy, X-Forwarded-Proto: https turns HSTS on.
//! let req = Request::builder()
//!     .header("x-forwarded-proto", "https")
//!     .extension(PeerAddr("10.0.0.2:4000".parse().unwrap()))
//!     .body(())
//!     .unwrap();
//! let res = svc.clone().oneshot(req).await.unwrap();
//! assert_eq!(res.headers()["strict-transport-security"], "max-age=31536000; includeSubDomains");
//!
//! // The same header from anyone else is ignored.
//! let req = Request::builder()
//!     .header("x-forwarded-proto", "https")
//!     .extension(PeerAddr("203.0.113.9:4000".parse().unwrap()))
//!     .body(())
//!     .unwrap();
//! let res = svc.oneshot(req).await.unwrap();
//! assert!(res.headers().get("strict-transport-security").is_none());
//! # }
//! ```

mod config;
mod layer;
mod values;

#[cfg(test)]
mod tests;

pub use config::{Preset, SecurityHeadersConfig, Setting};
pub use layer::{ResponseFuture, SecurityHeaders, SecurityHeadersBuilder, SecurityHeadersLayer};
pub use values::{
    Allowlist, ClearSiteData, ClearSiteDataType, CrossOriginEmbedderPolicy,
    CrossOriginOpenerPolicy, CrossOriginResourcePolicy, DnsPrefetchControl, Feature, FrameOptions,
    HeaderMode, Hsts, HstsWhen, ONE_YEAR_SECS, PermissionsPolicy, PermittedCrossDomainPolicies,
    ReferrerPolicy,
};
