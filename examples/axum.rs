//! tower-rampart on axum: `cargo run --example axum --features axum,security-headers,csp`,
//! then `curl -i localhost:3000/`.
//!
//! Each capability adds its layer here as it lands.

use std::net::SocketAddr;

use axum::{Router, extract::Request, response::Html, routing::get};
use tower_rampart::client_ip::{ClientIpResolver, TrustedProxies};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Believe X-Forwarded-For only from a proxy on this host.
    let resolver = ClientIpResolver::new(TrustedProxies::loopback());
    let ip_resolver = resolver.clone();
    let app: Router = Router::new().route(
        "/",
        get(move |req: Request| {
            let resolver = ip_resolver.clone();
            async move {
                match resolver.resolve(&req) {
                    Some(ip) => format!("hello, {ip}\n"),
                    None => "hello, stranger\n".to_owned(),
                }
            }
        }),
    );
    // Response cache (feature `cache`): GET /time/ is computed once per 60 s, with a
    // strong ETag; `curl -H 'If-None-Match: <etag>'` gets a 304.
    #[cfg(feature = "cache")]
    let app = {
        use tower_rampart::cache::{Cache, CacheTags, MemoryBackend, ResponseCacheLayer};
        let cache = Cache::builder().build(MemoryBackend::new(16 << 20))?;
        let cached = Router::new()
            .route(
                "/time/",
                get(|| async {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    // Tags let `cache.invalidate_tag("clock")` drop this response.
                    (
                        axum::Extension(CacheTags::new(["clock"])),
                        format!("{now}\n"),
                    )
                }),
            )
            .layer(ResponseCacheLayer::new(cache));
        app.merge(cached)
    };

    let app = tenants::add(app)?;
    // Request profiler (feature `profiler`): records, Server-Timing, N+1 findings; the UI
    // at /_profiler/ is closed by default, opened here to loopback callers only.
    #[cfg(feature = "profiler")]
    let app = {
        use axum::extract::ConnectInfo;
        use tower_rampart::profiler::{ProfilerLayer, ProfilerUi, query_capture_layer};
        use tracing_subscriber::prelude::*;
        // Keep tracing filters per-layer: a global filter would hide sqlx's query events.
        tracing_subscriber::registry()
            .with(query_capture_layer())
            .init();
        let profiler = ProfilerLayer::new();
        let ui = ProfilerUi::new(profiler.store()).authorize(|parts| {
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .is_some_and(|c| c.0.ip().is_loopback())
        });
        // `.layer` before `nest_service`: routes are profiled (with their MatchedPath),
        // the profiler's own pages are not.
        app.layer(profiler).nest_service("/_profiler", ui)
    };

    // Rate limiting (feature `rate-limit`): 5 logins per minute per client IP, 100 API
    // calls per hour; try `for i in $(seq 7); do curl -si -XPOST localhost:3000/accounts/login/ | head -1; done`.
    #[cfg(feature = "rate-limit")]
    let app = {
        use tower_rampart::rate_limit::{Key, Policy, Quota, RateLimitLayer};
        let limiter = RateLimitLayer::builder()
            .client_ip(ClientIpResolver::new(TrustedProxies::loopback()))
            .policy(
                Policy::new("login", Quota::per_minute(5))
                    .post("/accounts/login/")
                    .key(Key::ClientIp),
            )
            .policy(Policy::new("api", Quota::per_hour(100)).path("/*"))
            .exempt("/health/*")
            .build()?;
        app.route(
            "/accounts/login/",
            axum::routing::post(|| async { "welcome\n" }),
        )
        .layer(limiter)
    };

    // --- security headers + CSP with a per-request nonce (features `security-headers`, `csp`)
    let app = {
        use tower_rampart::csp::{Csp, CspNonce, ReportReceiver};
        use tower_rampart::security_headers::SecurityHeadersLayer;

        let headers = SecurityHeadersLayer::strict()
            // HSTS when the local proxy says the client used HTTPS.
            .client_ip_resolver(resolver)
            .no_store_paths(["/account"])
            .csp(Csp::strict().report_uri("/csp-reports"))
            .build()?;
        app.route(
            "/page",
            get(|nonce: CspNonce| async move {
                Html(format!(
                    "<script nonce=\"{nonce}\">document.title = 'ok'</script>\n"
                ))
            }),
        )
        .route_service("/csp-reports", ReportReceiver::new())
        .layer(headers)
    };

    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}

/// Tenants (feature `tenant`): `curl -H 'X-Tenant-ID: acme' localhost:3000/tenant` or
/// `curl acme.localhost:3000/tenant`; unknown tenants get 404 JSON, malformed ones 400,
/// requests naming no tenant get the `public` fallback.
#[cfg(feature = "tenant")]
mod tenants {
    use axum::{Router, routing::get};
    use tower_rampart::tenant::{MemoryStore, Tenant, TenantLayer};

    pub(crate) fn add(app: Router) -> Result<Router, Box<dyn std::error::Error>> {
        let tenants = MemoryStore::new()
            .with("acme", "Acme Corp")?
            .with("globex", "Globex")?
            .with("public", "Public site")?;
        let layer = TenantLayer::builder(tenants)
            .host("{tenant}.localhost")
            .header()
            .fallback("public")
            .bypass("/health")
            .build()?;
        Ok(app
            .route(
                "/tenant",
                get(|tenant: Tenant<&'static str>| async move {
                    format!("tenant {} ({})\n", tenant.id(), tenant.value())
                }),
            )
            .route("/health", get(|| async { "ok\n" }))
            .layer(layer))
    }
}

#[cfg(not(feature = "tenant"))]
mod tenants {
    pub(crate) fn add(app: axum::Router) -> Result<axum::Router, Box<dyn std::error::Error>> {
        Ok(app)
    }
}
