//! tower-rampart on axum: `cargo run --example axum --features axum,security-headers,csp`,
//! then `curl -i localhost:3000/`.
//!
//! Each capability adds its layer here as it lands.

use std::net::SocketAddr;

use axum::{Router, extract::Request, response::Html, routing::get};
use tower_rampart::client_ip::{ClientIpResolver, TrustedProxies};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Believe X-Forwarded-For only from a proxy on this host.
    let resolver = ClientIpResolver::new(TrustedProxies::loopback());
    let ip_resolver = resolver.clone();
    let app = Router::new().route(
        "/",
        get(move |req: Request| {
            let resolver = ip_resolver.clone();
            async move {
                match resolver.resolve(&req) {
                    Some(ip) => format!("hello, {ip}\n"),
                    None => "hello, stranger\n".to_owned(),
                }
            }
        }),
    );

    // --- security headers + CSP with a per-request nonce (features `security-headers`, `csp`)
    let app = {
        use tower_rampart::csp::{Csp, CspNonce, ReportReceiver};
        use tower_rampart::security_headers::SecurityHeadersLayer;

        let headers = SecurityHeadersLayer::strict()
            // HSTS when the local proxy says the client used HTTPS.
            .client_ip_resolver(resolver)
            .no_store_paths(["/account"])
            .csp(Csp::strict().report_uri("/csp-reports"))
            .build()?;
        app.route(
            "/page",
            get(|nonce: CspNonce| async move {
                Html(format!(
                    "<script nonce=\"{nonce}\">document.title = 'ok'</script>\n"
                ))
            }),
        )
        .route_service("/csp-reports", ReportReceiver::new())
        .layer(headers)
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
