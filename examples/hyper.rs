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
    #[cfg(feature = "cache")]
    let cache = tower_rampart::cache::Cache::builder()
        .build(tower_rampart::cache::MemoryBackend::new(16 << 20))?;
    loop {
        let (stream, peer) = listener.accept().await?;
        let resolver = resolver.clone();
        let svc = ServiceBuilder::new();
        // Response cache (feature `cache`): answers repeated GETs from memory, with ETags.
        #[cfg(feature = "cache")]
        let svc = svc.layer(tower_rampart::cache::ResponseCacheLayer::new(cache.clone()));
        let svc = svc
            .map_request(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(PeerAddr(peer));
                req
            })
            .service(service_fn(move |req: Request<Incoming>| {
                let ip = resolver.resolve(&req).map(|ip| ip.to_string());
                async move {
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
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc));
            if let Err(e) = conn.await {
                eprintln!("connection error: {e}");
            }
        });
    }
}
