//! Per-request overhead of the profiler on a request without queries, against the same
//! bare service (the anchor), measured in the same run.
//!
//! `cargo bench --bench profiler --all-features`
//!
//! Criterion prints each variant; a summary with ratios to the bare service (from
//! `Instant` timings of the same loop for every variant) is printed at the end, followed
//! by a small list endpoint: a handler listing 20 rows from SQLite through sqlx and
//! serialising them, with the profiler at 100 % vs without it, under the same `tracing`
//! subscriber (the ERP's own list endpoint is measured by `examples/erp/benches/load.rs`).
//!
//! `profiler/normalize_sql_330_bytes` reports what normalising a statement the store has
//! not seen costs (report only: it has no anchor).

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
    // What a statement costs to normalise when the store has not seen it yet (the ERP's
    // entry-lines statement, ~330 bytes).
    let statement = "SELECT l.entry_id, l.line_no, l.account_id, a.code, a.name, l.debit, l.credit
         FROM journal_lines l
         JOIN accounts a ON a.tenant_id = l.tenant_id AND a.id = l.account_id
         WHERE l.tenant_id = $1 AND l.entry_id IN (
             SELECT e.id FROM journal_entries e WHERE e.tenant_id = $1
             ORDER BY e.created_at DESC, e.id DESC LIMIT $2 OFFSET $3)
         ORDER BY l.entry_id, l.line_no";
    g.bench_function("normalize_sql_330_bytes", |b| {
        b.iter(|| tower_rampart::profiler::normalize_sql(std::hint::black_box(statement)));
    });
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

/// Requests per second of `svc` over `n` sequential requests.
fn throughput<S, B>(rt: &tokio::runtime::Runtime, svc: &S, n: u32) -> f64
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible> + Clone,
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    rt.block_on(async {
        let t = Instant::now();
        for _ in 0..n {
            once(svc.clone()).await;
        }
        f64::from(n) / t.elapsed().as_secs_f64()
    })
}

fn list_endpoint_stand_in(_: &mut Criterion) {
    use sqlx::sqlite::SqlitePoolOptions;
    // sqlx emits its events from worker threads: a global subscriber, as a server has.
    let _ = tracing_subscriber::registry()
        .with(query_capture_layer())
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let pool = rt.block_on(async {
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .test_before_acquire(false)
            .connect("sqlite::memory:")
            .await
            .unwrap();
        sqlx::query("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, total REAL)")
            .execute(&pool)
            .await
            .unwrap();
        for i in 0..200 {
            sqlx::query("INSERT INTO orders (customer, total) VALUES (?, ?)")
                .bind(format!("customer {i}"))
                .bind(f64::from(i) * 1.5)
                .execute(&pool)
                .await
                .unwrap();
        }
        pool
    });
    let endpoint = service_fn(move |_req: Request<()>| {
        let pool = pool.clone();
        async move {
            let rows: Vec<(i64, String, f64)> =
                sqlx::query_as("SELECT id, customer, total FROM orders ORDER BY id DESC LIMIT 20")
                    .fetch_all(&pool)
                    .await
                    .unwrap();
            let body = serde_json::to_vec(&rows).unwrap();
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
        }
    });
    let profiled = layer(100.0).layer(endpoint.clone());
    let n = 5_000;
    // Warm up both, then alternate to spread the machine's noise over both.
    throughput(&rt, &endpoint, 500);
    throughput(&rt, &profiled, 500);
    let (mut off, mut on) = (0.0, 0.0);
    for _ in 0..3 {
        off += throughput(&rt, &endpoint, n);
        on += throughput(&rt, &profiled, n);
    }
    println!("\nlist endpoint stand-in (SQLite, 20 rows, 3 x {n} requests each):");
    println!("  profiler off      {:>8.0} req/s", off / 3.0);
    println!(
        "  profiler 100 %    {:>8.0} req/s  {:.3}x",
        on / 3.0,
        on / off
    );
}

criterion_group!(benches, bench, list_endpoint_stand_in);
criterion_main!(benches);
