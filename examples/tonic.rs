//! tower-rampart on a tonic gRPC server (the standard health service):
//! `cargo run --example tonic`, then call `grpc.health.v1.Health/Check` on 127.0.0.1:50051.
//!
//! tonic records the peer in `TcpConnectInfo`, which the `tonic` feature reads.

use tower::ServiceBuilder;
use tower_rampart::client_ip::ClientIpResolver;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>>().await;
    let resolver = ClientIpResolver::default();
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
    tonic::transport::Server::builder()
        .layer(limiter)
        .layer(
            ServiceBuilder::new().map_request(move |req: http::Request<tonic::body::Body>| {
                if let Some(ip) = resolver.resolve(&req) {
                    eprintln!("call from {ip}");
                }
                req
            }),
        )
        .add_service(health)
        .serve(addr)
        .await?;
    Ok(())
}
