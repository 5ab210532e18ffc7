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
    let app: Router = Router::new().route(
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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
