//! `rampart-erp`: serves the reference ERP on `--bind` / `RAMPART_BIND` (default
//! `127.0.0.1:8080`) and shuts down gracefully on SIGTERM or Ctrl-C.
//!
//! Configuration: see `rampart_erp::config`. On an empty database the demo tenants
//! `acme` and `globex` are created, each with users `admin` and `user`; the password is
//! `RAMPART_DEMO_PASSWORD`, or generated and printed once.

use std::net::SocketAddr;

use rampart_erp::{
    AppState, Config,
    config::{CliArgs, redact_url},
    openapi,
};
use tower_rampart::profiler::query_capture_layer;
use tracing_subscriber::{
    EnvFilter, Layer as _, layer::SubscriberExt as _, util::SubscriberInitExt as _,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let cli = CliArgs::parse(std::env::args().skip(1))?;
    let config = Config::load(&cli, |k| std::env::var(k).ok())?;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // The log filter is per-layer, not global: a global filter would hide sqlx's DEBUG
    // query events from the profiler's query capture.
    let fmt = if config.json_logs {
        tracing_subscriber::fmt::layer()
            .json()
            .with_filter(filter)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer().with_filter(filter).boxed()
    };
    tracing_subscriber::registry()
        .with(fmt)
        .with(query_capture_layer())
        .init();
    if config.jwt_secret_generated {
        tracing::warn!(
            "RAMPART_JWT_SECRET is not set: generated a random secret, so tokens and sessions end with this process; set it to 32+ random bytes in production"
        );
    }
    if config.redis_url.is_some()
        && config.redis.instances == 1
        && matches!(
            config.redis.failure_mode,
            tower_rampart::rate_limit::FailureMode::LocalFallback { .. }
        )
    {
        tracing::warn!(
            "REDIS_URL is set but RAMPART_INSTANCES is 1: while Redis is down each instance enforces the whole quota on its own; set RAMPART_INSTANCES to the number of instances"
        );
    }
    if config.password_cost == rampart_erp::config::PasswordCost::Fast {
        tracing::warn!("RAMPART_PASSWORD_COST=fast: password hashes are weak (tests only)");
    }
    tracing::info!(database = %redact_url(&config.database_url), "opening the database");
    let bind = config.bind;
    let (state, generated) = AppState::connect(config).await?;
    if let Some(password) = generated {
        // Printed once, when the demo users are created.
        eprintln!(
            "\n  Demo users created: tenants `acme` and `globex`, users `admin` and `user`.\n  Password (shown once): {password}\n"
        );
    }
    let state = state.with_redoc_bundle(openapi::load_redoc_bundle(
        std::env::var("RAMPART_REDOC_JS").ok(),
    ));
    let db = state.db().clone();
    // Expired Idempotency-Keys are purged every hour.
    tokio::spawn({
        let db = db.clone();
        let ttl = state.config().idempotency_ttl;
        async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(3600));
            loop {
                every.tick().await;
                match rampart_erp::idempotency::purge_expired(&db, ttl).await {
                    Ok(n) => tracing::debug!(purged = n, "expired idempotency keys purged"),
                    Err(e) => tracing::warn!(error = %e, "idempotency key purge failed"),
                }
            }
        }
    });
    let listener = tokio::net::TcpListener::bind(bind).await?;
    tracing::info!(
        addr = %listener.local_addr()?,
        backends = state.backends().kind,
        "rampart-erp listening"
    );
    axum::serve(
        listener,
        rampart_erp::app(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown())
    .await?;
    db.close().await;
    Ok(())
}

async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}
