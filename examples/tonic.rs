//! tower-rampart on a tonic gRPC server (the standard health service):
//! `cargo run --example tonic --features tonic,security-headers`, then call
//! `grpc.health.v1.Health/Check` on 127.0.0.1:50051.
//!
//! tonic records the peer in `TcpConnectInfo`, which the `tonic` feature reads.
//!
//! Profiler (feature `profiler`): `Server::builder().layer(ProfilerLayer::new())` profiles
//! each call (route = the `/package.Service/Method` path; the gRPC status is in the
//! trailers, so records show HTTP 200), and `query_capture_layer()` on the `tracing`
//! registry attributes the calls' sqlx queries; serve `ProfilerUi` from an HTTP router.
//!
//! Caching with gRPC: gRPC calls are `POST`s, so `ResponseCacheLayer` passes them
//! through untouched; cache inside the service implementation with
//! `tower_rampart::cache::Cache::get_or_load` instead (single-flight, tags, tenants).

use tower::ServiceBuilder;
use tower_rampart::client_ip::ClientIpResolver;
use tower_rampart::security_headers::SecurityHeadersLayer;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>>().await;
    let resolver = ClientIpResolver::default();
    // Security headers on gRPC responses too (gRPC-Web clients are browsers); the server
    // terminates no TLS here, so HSTS stays off.
    let security_headers = SecurityHeadersLayer::recommended().build()?;
    let addr = "127.0.0.1:50051".parse()?;
    println!("gRPC health service on {addr}");
    // Rate limiting (feature `rate-limit`): 2 health checks per second per client; a
    // limited call gets RESOURCE_EXHAUSTED with `retry-after` metadata.
    #[cfg(feature = "rate-limit")]
    let limiter = {
        use tower_rampart::rate_limit::{Policy, Quota, RateLimitLayer};
        RateLimitLayer::builder()
            .policy(Policy::new("health", Quota::per_second(2)).path("/grpc.health.v1.Health/*"))
            .build()?
    };
    #[cfg(not(feature = "rate-limit"))]
    let limiter = tower::layer::util::Identity::new();
    let stack = ServiceBuilder::new()
        .layer(security_headers)
        .layer(limiter)
        .map_request(move |req: http::Request<tonic::body::Body>| {
            if let Some(ip) = resolver.resolve(&req) {
                eprintln!("call from {ip}");
            }
            req
        });
    // With `--features tenant`: the `x-tenant-id` metadata names the tenant.
    #[cfg(feature = "tenant")]
    let stack = stack.layer(tenants::layer()?);
    tonic::transport::Server::builder()
        .layer(stack)
        .add_service(health)
        .serve(addr)
        .await?;
    Ok(())
}

/// Tenants (feature `tenant`) from the `x-tenant-id` metadata. Rejections become gRPC
/// statuses (a trailers-only response) instead of JSON: malformed → `INVALID_ARGUMENT`,
/// unknown → `NOT_FOUND`, another user's tenant → `PERMISSION_DENIED`, store down →
/// `UNAVAILABLE`. Calls without the metadata pass (`required(false)`).
#[cfg(feature = "tenant")]
mod tenants {
    use bytes::Bytes;
    use http::{HeaderValue, Response};
    use tower_rampart::tenant::{MemoryStore, RejectionKind, TenantLayer, TenantRejection};

    fn grpc_status(rejection: &TenantRejection) -> Response<Bytes> {
        let code = match rejection.kind() {
            RejectionKind::Unknown => tonic::Code::NotFound,
            RejectionKind::Forbidden => tonic::Code::PermissionDenied,
            RejectionKind::StoreUnavailable => tonic::Code::Unavailable,
            _ => tonic::Code::InvalidArgument,
        };
        let mut res = Response::new(Bytes::new());
        let h = res.headers_mut();
        h.insert("content-type", HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", HeaderValue::from(code as i32));
        h.insert("grpc-message", HeaderValue::from_static("tenant rejected"));
        res
    }

    pub(crate) fn layer()
    -> Result<TenantLayer<MemoryStore<&'static str>>, Box<dyn std::error::Error>> {
        let store = MemoryStore::new().with("acme", "Acme Corp")?;
        Ok(TenantLayer::builder(store)
            .header()
            .required(false)
            .responder(grpc_status)
            .build()?)
    }
}
