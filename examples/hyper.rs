//! tower-rampart on bare hyper through hyper-util's tower adapter:
//! `cargo run --example hyper`, then `curl localhost:3001/`.
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

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3001").await?;
    println!("listening on http://{}", listener.local_addr()?);
    let resolver = ClientIpResolver::new(TrustedProxies::loopback());
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
    loop {
        let (stream, peer) = listener.accept().await?;
        let resolver = resolver.clone();
        let svc = ServiceBuilder::new()
            .map_request(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(PeerAddr(peer));
                req
            })
            .layer(limiter.clone())
            .service(service_fn(move |req: Request<Incoming>| {
                let ip = resolver.resolve(&req).map(|ip| ip.to_string());
                async move {
                    let text = format!("hello, {}\n", ip.as_deref().unwrap_or("stranger"));
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
                }
            }));
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc));
            if let Err(e) = conn.await {
                eprintln!("connection error: {e}");
            }
        });
    }
}
