//! A request profiler safe to leave on in production: per-request timings, the SQL each
//! request ran (through `tracing`), N+1 findings, `Server-Timing`, `metrics` histograms,
//! and a small UI that is closed by default.
//!
//! - [`ProfilerLayer`] records each sampled request into a bounded in-memory
//!   [`ProfileStore`] (a ring of recent records with a byte cap, plus the slowest ones);
//!   nothing is written to your database.
//! - [`query_capture_layer`] is a `tracing_subscriber` layer that attributes sqlx's
//!   `sqlx::query` events and OpenTelemetry-style `db.statement` spans and events to the
//!   request they run in; [`record_query`] does the same for other drivers.
//! - Statements are normalised ([`normalize_sql`]): values and bind parameters are never
//!   stored. Header and query values are recorded only for an allowlist of harmless
//!   names ([`Redaction`]); paths are stored as their route template.
//! - [`ProfilerUi`] serves the records as HTML and JSON, and answers `403` until given an
//!   authorization predicate.
//!
//! See `docs/profiler.md` for the guide, the `tracing` setup pitfalls and performance.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use tower::{ServiceExt, service_fn};
//! use tower_layer::Layer;
//! use tower_rampart::profiler::{ProfilerLayer, query_capture_layer, record_query};
//! use tracing_subscriber::prelude::*;
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let _guard = tracing_subscriber::registry().with(query_capture_layer()).set_default();
//! // Server-Timing for everyone here; by default only for authenticated users.
//! let profiler = ProfilerLayer::new().server_timing_when(|_| true);
//! let svc = profiler.layer(service_fn(|_req: http::Request<()>| async {
//!     // sqlx queries are captured from its events; other drivers call record_query.
//!     record_query("SELECT * FROM orders WHERE id = 42", std::time::Duration::from_millis(3), Some(1));
//!     Ok::<_, Infallible>(http::Response::new(String::from("ok")))
//! }));
//! let res = svc.oneshot(http::Request::get("/orders/42").body(()).unwrap()).await.unwrap();
//! assert!(res.headers()["server-timing"].to_str().unwrap().contains("desc=\"1 query\""));
//! drop(res);
//! let record = &profiler.store().records()[0];
//! assert_eq!(record.route, "/orders/{id}");
//! assert_eq!(record.queries[0].statement, "SELECT * FROM orders WHERE id = ?");
//! # });
//! ```

mod capture;
mod layer;
mod normalize;
mod record;
mod redact;
mod store;
mod testing;
mod ui;

#[cfg(test)]
mod tests;

pub use capture::{
    CaptureFilter, QueryCapture, REQUEST_SPAN_NAME, REQUEST_SPAN_TARGET, query_capture_layer,
    record_query,
};
pub use layer::{
    ProfiledBody, Profiler, ProfilerConfig, ProfilerLayer, ResponseFuture, SampleRequest,
};
pub use normalize::{NPlusOne, SimilarGroup, normalize_sql};
pub use record::{QueryRecord, RequestRecord};
pub use redact::{REDACTED, Redaction, is_sensitive_field, is_sensitive_header, redact_query};
pub use store::{ProfileStore, StoreLimits};
pub use testing::{assert_max_queries, assert_no_queries, capture_queries};
pub use ui::ProfilerUi;
