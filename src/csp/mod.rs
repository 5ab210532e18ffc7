//! A typed Content-Security-Policy with per-request nonces, enforce and report-only
//! policies, `Reporting-Endpoints`, and a receiver for violation reports.
//!
//! - [`Csp`] is the typed policy (W3C CSP Level 3): typed [`Directive`]s and
//!   [`Source`]s, deterministic rendering, no duplicates, [`Csp::validate`] with messages
//!   that say how to fix a mistake, and [`Csp::parse`] for existing policy strings.
//! - [`CspLayer`] (or the security headers layer with the `security-headers` feature)
//!   renders the policies **once** at build time, split around their nonce slots; per
//!   request it draws a 128-bit [`CspNonce`] from a CSPRNG, puts it into the request
//!   extensions for your templates, and joins the pre-rendered pieces with it: one small
//!   buffer per response, never a re-render.
//! - [`ReportReceiver`] is a tower service for `report-uri` and `report-to` endpoints.
//!
//! See `docs/security-headers.md` for the guide.
//!
//! # Example
//!
//! ```
//! use tower_rampart::csp::{Csp, Directive, Source};
//!
//! let csp = Csp::new()
//!     .default_src([Source::SelfOrigin])
//!     .script_src([Source::Nonce, Source::StrictDynamic, Source::sha256_of("init()")])
//!     .img_src([Source::SelfOrigin, Source::scheme("data"), Source::host("*.cdn.example")])
//!     .report_to("csp");
//! assert!(csp.validate().is_ok());
//! assert_eq!(csp.render_with_nonce("abc"), Csp::parse(&csp.to_string()).unwrap().render_with_nonce("abc"));
//!
//! // Mistakes are caught at build time, with a fix in the message.
//! let err = Csp::new().default_src([Source::host("self")]).validate().unwrap_err();
//! assert!(err.to_string().contains("write 'self' with single quotes"));
//! let err = Csp::new().default_src([Source::SelfOrigin]).img_src([Source::Nonce]).validate().unwrap_err();
//! assert!(err.to_string().contains("cannot use a nonce"));
//! assert!(Csp::parse("script-src 'strict-dynamic'").is_err());
//! assert!(!csp.contains(Directive::Sandbox));
//! ```

mod layer;
mod policy;
mod report;
mod source;

#[cfg(test)]
mod tests;

#[cfg(feature = "security-headers")]
pub(crate) use layer::{CompiledCsp, CspSettings};
pub use layer::{CspLayer, CspLayerBuilder, CspNonce, CspService, ResponseFuture};
pub use policy::{Csp, Directive};
pub use report::{
    CspViolation, DefaultReportRejection, ReportError, ReportErrorKind, ReportFormat, ReportFuture,
    ReportReceiver, ReportResponse, parse_reports,
};
pub use source::{HashAlgorithm, Source};

#[cfg(feature = "axum")]
mod extract {
    use axum::{
        extract::FromRequestParts,
        response::{IntoResponse, Response},
    };
    use http::{StatusCode, request::Parts};

    use super::CspNonce;
    use crate::error::JsonError;

    /// The rejection of the [`CspNonce`] extractor: no CSP layer with a nonce policy ran
    /// before the handler (a server bug, hence 500).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct MissingCspNonce;

    impl IntoResponse for MissingCspNonce {
        fn into_response(self) -> Response {
            let (parts, body) = JsonError::new(
                "CSP nonce missing",
                "The server has no CSP nonce for this request.",
            )
            .into_response(StatusCode::INTERNAL_SERVER_ERROR)
            .into_parts();
            Response::from_parts(parts, axum::body::Body::from(body))
        }
    }

    /// Extracts the request's nonce (feature `axum`).
    ///
    /// The layer only draws a nonce when the route's policy uses [`Source::Nonce`](super::Source::Nonce);
    /// otherwise the extractor rejects with [`MissingCspNonce`]. Use `Option<CspNonce>`
    /// where a nonce is optional.
    impl<S: Send + Sync> FromRequestParts<S> for CspNonce {
        type Rejection = MissingCspNonce;

        async fn from_request_parts(
            parts: &mut Parts,
            _state: &S,
        ) -> Result<Self, Self::Rejection> {
            parts
                .extensions
                .get::<CspNonce>()
                .copied()
                .ok_or(MissingCspNonce)
        }
    }

    impl<S: Send + Sync> axum::extract::OptionalFromRequestParts<S> for CspNonce {
        type Rejection = std::convert::Infallible;

        async fn from_request_parts(
            parts: &mut Parts,
            _state: &S,
        ) -> Result<Option<Self>, Self::Rejection> {
            Ok(parts.extensions.get::<CspNonce>().copied())
        }
    }
}

#[cfg(feature = "axum")]
pub use extract::MissingCspNonce;
