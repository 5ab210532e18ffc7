//! `GET /metrics`: Prometheus exposition of everything recorded through the `metrics`
//! facade (the library layers and this server's own request counters).
//!
//! The recorder is process-global; [`handle`] installs it once.

use std::{sync::OnceLock, time::Instant};

use axum::{
    extract::{MatchedPath, Request},
    http::header,
    middleware::Next,
    response::{IntoResponse, Response},
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide Prometheus handle, installing the recorder on first use. When
/// another recorder is already installed, a private one is returned (and `/metrics`
/// only shows what is rendered through it).
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    &[0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
                )
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!(
                    "a metrics recorder is already installed; /metrics shows a private one"
                );
            }
            handle
        })
        .clone()
}

/// Middleware: counts requests by method, route and status, and times them.
pub async fn track(req: Request, next: Next) -> Response {
    // Labels from closed sets: standard methods or `other`, the route template or
    // `unmatched` (a client must not create series by inventing methods or paths).
    let method = method_label(req.method());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let t0 = Instant::now();
    let res = next.run(req).await;
    let status = res.status().as_u16().to_string();
    metrics::counter!("erp_http_requests_total", "method" => method, "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("erp_http_request_duration_seconds", "method" => method, "route" => route)
        .record(t0.elapsed().as_secs_f64());
    res
}

/// The method as a label: one of the standard methods, else `other`.
fn method_label(m: &axum::http::Method) -> &'static str {
    const STANDARD: [&str; 9] = [
        "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE",
    ];
    STANDARD
        .iter()
        .copied()
        .find(|s| *s == m.as_str())
        .unwrap_or("other")
}

/// `GET /metrics`.
#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn render() -> Response {
    let h = handle();
    h.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        h.render(),
    )
        .into_response()
}
