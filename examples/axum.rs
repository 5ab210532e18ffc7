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
    let app = tenants::add(app)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}

/// Tenants (feature `tenant`): `curl -H 'X-Tenant-ID: acme' localhost:3000/tenant` or
/// `curl acme.localhost:3000/tenant`; unknown tenants get 404 JSON, malformed ones 400,
/// requests naming no tenant get the `public` fallback.
#[cfg(feature = "tenant")]
mod tenants {
    use axum::{Router, routing::get};
    use tower_rampart::tenant::{MemoryStore, Tenant, TenantLayer};

    pub(crate) fn add(app: Router) -> Result<Router, Box<dyn std::error::Error>> {
        let tenants = MemoryStore::new()
            .with("acme", "Acme Corp")?
            .with("globex", "Globex")?
            .with("public", "Public site")?;
        let layer = TenantLayer::builder(tenants)
            .host("{tenant}.localhost")
            .header()
            .fallback("public")
            .bypass("/health")
            .build()?;
        Ok(app
            .route(
                "/tenant",
                get(|tenant: Tenant<&'static str>| async move {
                    format!("tenant {} ({})\n", tenant.id(), tenant.value())
                }),
            )
            .route("/health", get(|| async { "ok\n" }))
            .layer(layer))
    }
}

#[cfg(not(feature = "tenant"))]
mod tenants {
    pub(crate) fn add(app: axum::Router) -> Result<axum::Router, Box<dyn std::error::Error>> {
        Ok(app)
    }
}
