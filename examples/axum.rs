//! tower-rampart on axum: `cargo run --example axum`, then `curl localhost:3000/`.
//!
//! Each capability adds its layer here as it lands.

use std::net::SocketAddr;

use axum::{Router, extract::Request, routing::get};
use tower_rampart::client_ip::{ClientIpResolver, TrustedProxies};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Believe X-Forwarded-For only from a proxy on this host.
    let resolver = ClientIpResolver::new(TrustedProxies::loopback());
    let app = Router::new().route(
        "/",
        get(move |req: Request| {
            let resolver = resolver.clone();
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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
