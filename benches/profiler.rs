//! Per-request overhead of the profiler on a request without queries, against the same
//! bare service (the anchor), measured in the same run.
//!
//! `cargo bench --bench profiler --all-features`
//!
//! Criterion prints each variant; a summary with ratios to the bare service (from
//! `Instant` timings of the same loop for every variant) is printed at the end.

use std::{
    convert::Infallible,
    hint::black_box,
    time::{Duration, Instant},
};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceExt, service_fn};
use tower_layer::Layer;
use tower_rampart::profiler::{ProfileStore, ProfilerLayer, StoreLimits, query_capture_layer};
use tracing_subscriber::prelude::*;

fn request() -> Request<()> {
    Request::get("/api/orders/42?page=2")
        .header("accept", "application/json")
        .header("user-agent", "bench/1.0")
        .header("authorization", "Bearer secret")
        .body(())
        .unwrap()
}

fn bare()
-> impl Service<Request<()>, Response = Response<Full<Bytes>>, Error = Infallible, Future = impl Send>
+ Clone {
    service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
            b"{\"ok\":true}",
        ))))
    })
}

async fn once<S, B>(svc: S)
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible>,
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let res = svc.oneshot(request()).await.unwrap();
    black_box(res.into_body().collect().await.unwrap().to_bytes());
}

fn layer(percent: f64) -> ProfilerLayer {
    // A small ring so that the bench measures steady state, evictions included.
    let store = ProfileStore::new(StoreLimits::default().max_records(1000)).unwrap();
    ProfilerLayer::new()
        .with_store(store)
        .sample_percent(percent)
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let on = layer(100.0).layer(bare());
    let off = layer(0.0).layer(bare());
    let mut g = c.benchmark_group("profiler");
    g.bench_function("bare", |b| {
        b.to_async(&rt).iter(|| once(bare()));
    });
    g.bench_function("sample_0pct", |b| {
        b.to_async(&rt).iter(|| once(off.clone()));
    });
    g.bench_function("sample_100pct_no_subscriber", |b| {
        b.to_async(&rt).iter(|| once(on.clone()));
    });
    {
        let _guard = tracing_subscriber::registry()
            .with(query_capture_layer())
            .set_default();
        g.bench_function("sample_100pct_capture_layer", |b| {
            b.to_async(&rt).iter(|| once(on.clone()));
        });
    }
    g.finish();

    // Summary: same loop, every variant, ratios to the bare service.
    let n = 100_000u32;
    let time = |f: &dyn Fn() -> Duration| f().as_secs_f64() * 1e9 / f64::from(n);
    let run = |svc: &dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>| {
        rt.block_on(async {
            let t = Instant::now();
            for _ in 0..n {
                svc().await;
            }
            t.elapsed()
        })
    };
    let bare_ns = time(&|| run(&|| Box::pin(once(bare()))));
    let off_ns = time(&|| run(&|| Box::pin(once(off.clone()))));
    let on_ns = time(&|| run(&|| Box::pin(once(on.clone()))));
    let capture_ns = {
        let _guard = tracing_subscriber::registry()
            .with(query_capture_layer())
            .set_default();
        time(&|| run(&|| Box::pin(once(on.clone()))))
    };
    println!("\nprofiler overhead summary ({n} requests each, no queries):");
    println!("  bare service                     {bare_ns:>8.0} ns/req  1.00x");
    for (name, ns) in [
        ("profiler, 0 % sampled", off_ns),
        ("profiler, 100 %, no subscriber", on_ns),
        ("profiler, 100 %, capture layer", capture_ns),
    ] {
        println!(
            "  {name:<32} {ns:>8.0} ns/req  {:.2}x  (+{:.0} ns)",
            ns / bare_ns,
            ns - bare_ns
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
