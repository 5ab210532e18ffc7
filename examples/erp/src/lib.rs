//! The tower-rampart reference ERP server.
//!
//! [`app`] builds the whole router so tests can call `app().oneshot(request)`; `main.rs`
//! only reads configuration and serves. The server grows with each capability of the
//! library; for now it answers the health probes.

use axum::{Json, Router, routing::get};
use serde_json::{Value, json};

/// Builds the ERP router with its layer stack.
pub fn app() -> Router {
    Router::new()
        .route("/health/", get(health))
        .route("/health/live/", get(live))
}

/// `GET /health/`: the process is up.
async fn health() -> Json<Value> {
    Json(json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

/// `GET /health/live/`: liveness, no dependency checked.
async fn live() -> Json<Value> {
    Json(json!({"status": "alive"}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    #[tokio::test]
    async fn liveness_answers_json() {
        let res = app()
            .oneshot(
                axum::http::Request::get("/health/live/")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["status"], "alive");
    }

    #[tokio::test]
    async fn unknown_route_is_404() {
        let res = app()
            .oneshot(
                axum::http::Request::get("/nope")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(res.status(), 404);
    }
}
