//! Recommended preset + a nonce CSP per response, against the same static headers set by a
//! stack of tower-http `SetResponseHeaderLayer`s (which cannot do nonces), and a bare
//! service.
//!
//! `cargo bench --bench security_headers --all-features`
//!
//! Criterion prints each variant's time per request; at the end a summary measured with
//! `Instant` over the same services in the same run prints the ratios (target: ours ≤
//! 1.0× the tower-http stack).

use std::{convert::Infallible, hint::black_box, time::Instant};

use criterion::{Criterion, criterion_group};
use http::{HeaderName, HeaderValue, Request, Response};
use tower::{Layer as _, Service, ServiceBuilder, ServiceExt, service_fn};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_rampart::{
    csp::{Csp, CspNonce},
    security_headers::{PermissionsPolicy, SecurityHeadersLayer},
};

async fn handler(_req: Request<()>) -> Result<Response<()>, Infallible> {
    Ok(Response::new(()))
}

fn request() -> Request<()> {
    Request::get("https://example.com/dashboard")
        .body(())
        .unwrap()
}

fn ours()
-> impl Service<Request<()>, Response = Response<()>, Error = Infallible, Future: Send> + Clone + Send
{
    SecurityHeadersLayer::recommended()
        .csp(Csp::strict())
        .build()
        .unwrap()
        .layer(service_fn(handler))
}

/// The same static headers (the CSP with one fixed nonce, since tower-http cannot draw one).
fn tower_http_stack()
-> impl Service<Request<()>, Response = Response<()>, Error = Infallible, Future: Send> + Clone + Send
{
    let h = |name: &'static str, value: &str| {
        SetResponseHeaderLayer::if_not_present(
            HeaderName::from_static(name),
            HeaderValue::from_str(value).unwrap(),
        )
    };
    let csp = Csp::strict().render_with_nonce(CspNonce::generate().as_str());
    let permissions = PermissionsPolicy::recommended().render().unwrap();
    ServiceBuilder::new()
        .layer(h("cross-origin-opener-policy", "same-origin"))
        .layer(h("cross-origin-resource-policy", "same-origin"))
        .layer(h("origin-agent-cluster", "?1"))
        .layer(h("referrer-policy", "no-referrer"))
        .layer(h(
            "strict-transport-security",
            "max-age=31536000; includeSubDomains",
        ))
        .layer(h("x-content-type-options", "nosniff"))
        .layer(h("x-dns-prefetch-control", "off"))
        .layer(h("x-download-options", "noopen"))
        .layer(h("x-frame-options", "SAMEORIGIN"))
        .layer(h("x-permitted-cross-domain-policies", "none"))
        .layer(h("x-xss-protection", "0"))
        .layer(h("permissions-policy", &permissions))
        .layer(h("content-security-policy", &csp))
        .service(service_fn(handler))
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("security_headers");
    let svc = ours();
    group.bench_function("rampart_recommended_with_nonce_csp", |b| {
        b.to_async(&rt)
            .iter(|| svc.clone().oneshot(black_box(request())));
    });
    let svc = tower_http_stack();
    group.bench_function("tower_http_set_response_header_x13", |b| {
        b.to_async(&rt)
            .iter(|| svc.clone().oneshot(black_box(request())));
    });
    let svc = service_fn(handler);
    group.bench_function("bare_service", |b| {
        b.to_async(&rt).iter(|| svc.oneshot(black_box(request())));
    });
    group.finish();
}

/// Nanoseconds per request over `n` sequential requests.
fn per_request<S>(rt: &tokio::runtime::Runtime, svc: &S, n: u32) -> f64
where
    S: Service<Request<()>, Response = Response<()>, Error = Infallible> + Clone,
{
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..n {
            let res = svc.clone().oneshot(request()).await.unwrap();
            black_box(res);
        }
        start.elapsed().as_nanos() as f64 / f64::from(n)
    })
}

fn summary() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (ours, stack, bare) = (ours(), tower_http_stack(), service_fn(handler));
    // Interleave rounds so machine noise hits all three alike; keep the best round.
    let (mut o, mut t, mut b) = (f64::MAX, f64::MAX, f64::MAX);
    for _ in 0..5 {
        o = o.min(per_request(&rt, &ours, 100_000));
        t = t.min(per_request(&rt, &stack, 100_000));
        b = b.min(per_request(&rt, &bare, 100_000));
    }
    println!();
    println!("summary (best of 5 rounds of 100 000 requests, ns per request):");
    println!("  rampart recommended + nonce CSP : {o:8.1}");
    println!("  tower-http SetResponseHeader x13: {t:8.1}");
    println!("  bare service                    : {b:8.1}");
    println!(
        "  ratio rampart / tower-http      : {:.2}x (target <= 1.0x)",
        o / t
    );
    println!(
        "  overhead vs bare: rampart {:.1} ns, tower-http {:.1} ns",
        o - b,
        t - b
    );
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
