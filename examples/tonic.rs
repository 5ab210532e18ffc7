//! tower-rampart on a tonic gRPC server (the standard health service):
//! `cargo run --example tonic`, then call `grpc.health.v1.Health/Check` on 127.0.0.1:50051.
//!
//! tonic records the peer in `TcpConnectInfo`, which the `tonic` feature reads.
//!
//! Caching with gRPC: gRPC calls are `POST`s, so `ResponseCacheLayer` passes them
//! through untouched; cache inside the service implementation with
//! `tower_rampart::cache::Cache::get_or_load` instead (single-flight, tags, tenants).

use tower::ServiceBuilder;
use tower_rampart::client_ip::ClientIpResolver;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>>().await;
    let resolver = ClientIpResolver::default();
    let addr = "127.0.0.1:50051".parse()?;
    println!("gRPC health service on {addr}");
    tonic::transport::Server::builder()
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
