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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
