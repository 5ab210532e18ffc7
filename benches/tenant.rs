//! Tenant resolution cost: a request resolved from its host through a cached store,
//! against the same bare service without the layer.
//!
//! `cargo bench --bench tenant --all-features`
//!
//! Criterion reports both as `tenant/bare` and `tenant/host_cached`; a summary line at the
//! end prints ns per request of each (from `Instant` timings of the same run) and the
//! ratio.

use std::{convert::Infallible, hint::black_box, time::Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use tower::{Service, ServiceExt, service_fn};
use tower_layer::Layer;
use tower_rampart::tenant::{CachedStore, MemoryStore, ResolvedTenant, TenantLayer};

type Tenant = std::sync::Arc<str>;

fn request() -> Request<()> {
    Request::builder()
        .uri("/orders")
        .header("host", "acme.example.com")
        .body(())
        .unwrap()
}

async fn handler(req: Request<()>) -> Result<Response<String>, Infallible> {
    let n = req
        .extensions()
        .get::<ResolvedTenant<Tenant>>()
        .map_or(0, |t| t.value().len());
    black_box(n);
    Ok(Response::new(String::new()))
}

fn layered()
-> impl Service<Request<()>, Response = Response<impl Sized>, Error = Infallible, Future: Send> + Clone
{
    let store = MemoryStore::new();
    for i in 0..1000 {
        store
            .insert(&format!("tenant{i}"), Tenant::from(format!("Tenant {i}")))
            .unwrap();
    }
    store.insert("acme", Tenant::from("Acme Corp")).unwrap();
    let cached = CachedStore::builder(store).build().unwrap();
    TenantLayer::builder(cached)
        .host("{tenant}.example.com")
        .header()
        .build()
        .unwrap()
        .layer(service_fn(handler))
}

fn per_request_ns<S>(rt: &tokio::runtime::Runtime, svc: &S, n: u32) -> f64
where
    S: Service<Request<()>, Error = Infallible> + Clone,
{
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..n {
            black_box(svc.clone().oneshot(request()).await.unwrap());
        }
        start.elapsed().as_secs_f64() * 1e9 / f64::from(n)
    })
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bare = service_fn(handler);
    let tenant = layered();
    // Warm the cache.
    rt.block_on(tenant.clone().oneshot(request())).unwrap();

    let mut g = c.benchmark_group("tenant");
    g.bench_function("bare", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(bare.oneshot(request()).await.unwrap()) });
    });
    g.bench_function("host_cached", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(tenant.clone().oneshot(request()).await.unwrap()) });
    });
    g.finish();

    let n = 200_000;
    let bare_ns = per_request_ns(&rt, &bare, n);
    let tenant_ns = per_request_ns(&rt, &tenant, n);
    println!(
        "summary: bare {bare_ns:.0} ns/request, host + cached store {tenant_ns:.0} ns/request, \
         ratio {:.1}x ({:.0} ns added per request)",
        tenant_ns / bare_ns,
        tenant_ns - bare_ns
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
