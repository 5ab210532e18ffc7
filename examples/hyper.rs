//! tower-rampart on bare hyper through hyper-util's tower adapter:
//! `cargo run --example hyper --features security-headers`, then `curl -i localhost:3001/`.
//!
//! With bare hyper, insert [`PeerAddr`] into each request so layers know the peer.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::{rt::TokioIo, service::TowerToHyperService};
use tower::{ServiceBuilder, service_fn};
use tower_rampart::client_ip::{ClientIpResolver, PeerAddr, TrustedProxies};
use tower_rampart::security_headers::SecurityHeadersLayer;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3001").await?;
    println!("listening on http://{}", listener.local_addr()?);
    let resolver = ClientIpResolver::new(TrustedProxies::loopback());
    #[cfg(feature = "tenant")]
    let tenant_layer = tenants::layer()?;
    // Request profiler (feature `profiler`): the UI under /_profiler/ is closed by
    // default, opened here to loopback peers; its own pages are not profiled.
    #[cfg(feature = "profiler")]
    let (profiler, ui) = {
        use tower_rampart::profiler::{ProfilerLayer, ProfilerUi};
        let profiler =
            ProfilerLayer::new().sample_with(|r| !r.uri().path().starts_with("/_profiler"));
        let ui = ProfilerUi::new(profiler.store()).authorize(|parts| {
            parts
                .extensions
                .get::<PeerAddr>()
                .is_some_and(|p| p.0.ip().is_loopback())
        });
        (profiler, ui)
    };
    // Security headers: validated and rendered once, shared by every connection. HSTS is
    // sent only when the trusted local proxy says the client used HTTPS.
    let security_headers = SecurityHeadersLayer::recommended()
        .client_ip_resolver(resolver.clone())
        .build()?;
    // Rate limiting (feature `rate-limit`): 10 requests per second per client IP, burst 20.
    // One layer built once: every connection's service shares its counters.
    #[cfg(feature = "rate-limit")]
    let limiter = {
        use tower_rampart::rate_limit::{Policy, Quota, RateLimitLayer};
        RateLimitLayer::builder()
            .client_ip(resolver.clone())
            .policy(Policy::new("per-ip", Quota::per_second(10).burst(20)))
            .build()?
    };
    #[cfg(not(feature = "rate-limit"))]
    let limiter = tower::layer::util::Identity::new();
    // Response cache (feature `cache`): answers repeated GETs from memory, with ETags.
    #[cfg(feature = "cache")]
    let cache = tower_rampart::cache::Cache::builder()
        .build(tower_rampart::cache::MemoryBackend::new(16 << 20))?;
    loop {
        let (stream, peer) = listener.accept().await?;
        let resolver = resolver.clone();
        #[cfg(feature = "profiler")]
        let ui = ui.clone();
        let svc = ServiceBuilder::new()
            .map_request(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(PeerAddr(peer));
                req
            })
            .layer(security_headers.clone())
            .layer(limiter.clone())
            .service(service_fn(move |req: Request<Incoming>| {
                let ip = resolver.resolve(&req).map(|ip| ip.to_string());
                #[cfg(feature = "profiler")]
                let ui = ui.clone();
                async move {
                    #[cfg(feature = "profiler")]
                    if req.uri().path().starts_with("/_profiler") {
                        return tower::ServiceExt::oneshot(ui, req).await;
                    }
                    let text = format!("hello, {}\n", ip.as_deref().unwrap_or("stranger"));
                    let mut res = Response::new(Full::new(Bytes::from(text)));
                    // Personal to the client: `private` keeps it out of the response cache.
                    res.headers_mut().insert(
                        http::header::CACHE_CONTROL,
                        http::HeaderValue::from_static("private"),
                    );
                    Ok::<_, Infallible>(res)
                }
            }));
        // With `--features tenant`: `curl -H 'X-Tenant-ID: acme' localhost:3001/`.
        #[cfg(feature = "tenant")]
        let svc = tower::Layer::layer(&tenant_layer, svc);
        #[cfg(feature = "cache")]
        let svc = tower::Layer::layer(
            &tower_rampart::cache::ResponseCacheLayer::new(cache.clone()),
            svc,
        );
        #[cfg(feature = "profiler")]
        let svc = tower_layer::Layer::layer(&profiler, svc);
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc));
            if let Err(e) = conn.await {
                eprintln!("connection error: {e}");
            }
        });
    }
}

/// Tenants (feature `tenant`): resolved from `X-Tenant-ID` or `/t/{tenant}/…` (stripped
/// before the service), looked up through a cached store, `public` when none is named.
#[cfg(feature = "tenant")]
mod tenants {
    use std::time::Duration;

    use tower_rampart::tenant::{CachedStore, MemoryStore, TenantLayer};

    pub(crate) fn layer()
    -> Result<TenantLayer<CachedStore<MemoryStore<String>>>, Box<dyn std::error::Error>> {
        let store = MemoryStore::new()
            .with("acme", "Acme Corp".to_owned())?
            .with("public", "Public site".to_owned())?;
        let cached = CachedStore::builder(store)
            .ttl(Duration::from_secs(60))
            .negative_ttl(Duration::from_secs(5))
            .build()?;
        Ok(TenantLayer::builder(cached)
            .header()
            .path_prefix_stripped("/t/{tenant}")
            .fallback("public")
            .build()?)
    }
}
