//! Health probes: `/health/` (basic), `/health/live/` (liveness), `/health/ready/`
//! (readiness: database, Redis when configured, free disk; 503 when a check fails).
//! No authentication, no tenant, never rate limited.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use axum::{Json, extract::State, http::StatusCode};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use tower_rampart::rate_limit::FailureMode;

use crate::AppState;

/// How long one readiness check may take.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /health/`: the process is up.
#[utoipa::path(get, path = "/health/", tag = "health", responses((status = 200, description = "Up")))]
pub async fn health() -> Json<Value> {
    Json(json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

/// `GET /health/live/`: liveness, no dependency checked.
#[utoipa::path(get, path = "/health/live/", tag = "health", responses((status = 200, description = "Alive")))]
pub async fn live() -> Json<Value> {
    Json(json!({"status": "alive"}))
}

/// The result of one readiness check.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Check {
    /// `ok`, `fail`, or `degraded` (Redis down while the limiter has a failure mode
    /// that keeps serving: readiness stays 200).
    pub status: &'static str,
    /// How long the check took, in milliseconds.
    pub latency_ms: f64,
    /// What failed, or what was measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

async fn timed<F>(f: F) -> Check
where
    F: std::future::Future<Output = Result<Option<String>, String>>,
{
    let t0 = Instant::now();
    let res = tokio::time::timeout(CHECK_TIMEOUT, f).await;
    let latency_ms = (t0.elapsed().as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0;
    let (status, detail) = match res {
        Ok(Ok(d)) => ("ok", d),
        Ok(Err(e)) => ("fail", Some(e)),
        Err(_) => (
            "fail",
            Some(format!("timed out after {} ms", CHECK_TIMEOUT.as_millis())),
        ),
    };
    Check {
        status,
        latency_ms,
        detail,
    }
}

/// Free bytes available to unprivileged users on the file system holding `path`.
///
/// # Errors
///
/// `statvfs` failed.
pub fn free_disk_bytes(path: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(path)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Pings every configured node (each Cluster master and replica given in `REDIS_URL`).
async fn ping_redis(nodes: &[String], kind: &str) -> Result<Option<String>, String> {
    for (i, url) in nodes.iter().enumerate() {
        let client = redis::Client::open(url.as_str()).map_err(|e| e.to_string())?;
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| format!("node {i}: cannot connect: {e}"))?;
        let _pong: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("node {i}: PING failed: {e}"))?;
    }
    Ok(Some(format!("{kind}, {} node(s) answer PING", nodes.len())))
}

/// `GET /health/ready/`: every check with its status and latency; 503 when one fails.
#[utoipa::path(get, path = "/health/ready/", tag = "health", responses(
    (status = 200, description = "Ready"),
    (status = 503, description = "A check failed"),
))]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let db = state.db().clone();
    let database = timed(async move { db.ping().await.map(|()| None).map_err(|e| e.to_string()) });
    let nodes = state.config().redis_nodes();
    let kind = state.backends().kind;
    let redis = async move {
        if nodes.is_empty() {
            None
        } else {
            Some(timed(ping_redis(&nodes, kind)).await)
        }
    };
    let dir = state
        .db()
        .sqlite_path()
        .and_then(Path::parent)
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let min = state.config().min_free_disk_bytes;
    let disk = timed(async move {
        let free = free_disk_bytes(&dir).map_err(|e| format!("statvfs {}: {e}", dir.display()))?;
        if free >= min {
            Ok(Some(format!("{free} bytes free (minimum {min})")))
        } else {
            Err(format!("only {free} bytes free, minimum is {min}"))
        }
    });
    let (database, mut redis, disk) = tokio::join!(database, redis, disk);
    // Redis down is fatal only when the limiter refuses requests without it (`closed`):
    // otherwise the instance still serves (limiter in its failure mode, cache misses), and
    // failing readiness would drain every instance of the fleet at once.
    let closed = state.config().redis.failure_mode == FailureMode::Closed;
    if let Some(c) = redis.as_mut()
        && c.status == "fail"
        && !closed
    {
        c.status = "degraded";
        c.detail = Some(format!(
            "{}; serving without Redis: the rate limiter applies its failure mode, the cache misses",
            c.detail.as_deref().unwrap_or("unreachable")
        ));
    }
    let mut checks = serde_json::Map::new();
    let mut ok = true;
    let mut degraded = false;
    for (name, check) in [
        ("database", Some(database)),
        ("redis", redis),
        ("disk", Some(disk)),
    ] {
        if let Some(c) = check {
            ok &= c.status != "fail";
            degraded |= c.status == "degraded";
            checks.insert(
                name.to_owned(),
                serde_json::to_value(&c).unwrap_or(Value::Null),
            );
        }
    }
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "status": match (ok, degraded) {
                (false, _) => "fail",
                (true, true) => "degraded",
                (true, false) => "ok",
            },
            "checks": checks
        })),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_disk_is_measured() {
        assert!(free_disk_bytes(Path::new(".")).unwrap() > 0);
        assert!(free_disk_bytes(Path::new("/nonexistent/dir")).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn slow_checks_time_out() {
        let c = timed(async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok(None)
        })
        .await;
        assert_eq!(c.status, "fail");
        assert!(c.detail.unwrap().contains("timed out"));
    }
}
