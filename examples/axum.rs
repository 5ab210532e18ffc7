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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
