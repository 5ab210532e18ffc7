//! The profiler with real sqlx 0.8 + SQLite, under the `tracing` setup a server uses:
//! a registry, `fmt` with a per-layer `EnvFilter`, the query-capture layer, and `log`
//! compatibility (`tracing-log`'s `LogTracer`, installed by `init()`).
//!
//! One subscriber per test binary: it is global, because sqlx emits its query events
//! from its SQLite worker threads.
#![cfg(feature = "profiler")]

use std::{
    convert::Infallible,
    sync::{
        Once,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use sqlx::{SqlitePool, sqlite::SqlitePoolOptions};
use tower::{ServiceExt, service_fn};
use tower_layer::Layer;
use tower_rampart::profiler::{ProfileStore, ProfilerLayer, RequestRecord, query_capture_layer};
use tracing_subscriber::{EnvFilter, filter::Targets, fmt, prelude::*};

/// Counts the profiler's request spans, behind a plain static per-layer filter.
struct SpanCounter;
static SPANS_SEEN: AtomicUsize = AtomicUsize::new(0);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for SpanCounter {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _: &tracing::span::Id,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if attrs.metadata().name() == tower_rampart::profiler::REQUEST_SPAN_NAME {
            SPANS_SEEN.fetch_add(1, Ordering::SeqCst);
        }
    }
}

static INIT: Once = Once::new();

fn init_tracing() {
    INIT.call_once(|| {
        tracing_subscriber::registry()
            .with(
                fmt::layer()
                    .with_writer(std::io::sink)
                    .with_filter(EnvFilter::new("info")),
            )
            .with(query_capture_layer())
            .with(SpanCounter.with_filter(
                Targets::new().with_target("tower_rampart::profiler", tracing::Level::INFO),
            ))
            .init();
    });
    assert!(
        log::log_enabled!(target: "app", log::Level::Info),
        "log compatibility (LogTracer) is active"
    );
}

async fn pool() -> SqlitePool {
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .test_before_acquire(false)
        .connect("sqlite::memory:")
        .await
        .unwrap();
    sqlx::query("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE items (id INTEGER PRIMARY KEY, order_id INTEGER NOT NULL, sku TEXT NOT NULL, qty INTEGER NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    for o in 1..=20i64 {
        sqlx::query("INSERT INTO orders (id, customer) VALUES (?, ?)")
            .bind(o)
            .bind(format!("customer-{o}"))
            .execute(&pool)
            .await
            .unwrap();
        for i in 0..3i64 {
            sqlx::query("INSERT INTO items (order_id, sku, qty) VALUES (?, ?, ?)")
                .bind(o)
                .bind(format!("sku-{i}"))
                .bind(i + 1)
                .execute(&pool)
                .await
                .unwrap();
        }
    }
    pool
}

async fn call<S>(svc: S, path: &str) -> Bytes
where
    S: tower::Service<
            Request<()>,
            Response = Response<tower_rampart::profiler::ProfiledBody<Full<Bytes>>>,
            Error = Infallible,
        >,
{
    let res = svc
        .oneshot(Request::get(path).body(()).unwrap())
        .await
        .unwrap();
    res.into_body().collect().await.unwrap().to_bytes()
}

/// The record is pushed once the response body ended *and* sqlx's worker released the
/// request span; wait for that (bounded).
async fn wait_for_records(store: &ProfileStore, n: usize) -> Vec<RequestRecord> {
    for _ in 0..1000 {
        if store.len() >= n {
            return store.records();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("expected {n} records, have {}", store.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_plus_twenty_queries_is_an_n_plus_one_and_three_distinct_are_not() {
    init_tracing();
    let pool = pool().await;
    let profiler = ProfilerLayer::new();

    let p = pool.clone();
    let n_plus_one = profiler.layer(service_fn(move |_req: Request<()>| {
        let pool = p.clone();
        async move {
            let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM orders ORDER BY id")
                .fetch_all(&pool)
                .await
                .unwrap();
            let mut total = 0i64;
            for id in ids {
                let qty: i64 = sqlx::query_scalar("SELECT sum(qty) FROM items WHERE order_id = ?")
                    .bind(id)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                total += qty;
            }
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(total.to_string()))))
        }
    }));
    assert_eq!(&call(n_plus_one, "/orders").await[..], b"120");
    let r = wait_for_records(&profiler.store(), 1).await.remove(0);
    assert_eq!(r.query_count, 21, "{:#?}", r.queries);
    assert_eq!(r.queries[0].statement, "SELECT id FROM orders ORDER BY id");
    assert_eq!(r.queries[0].source, "sqlx");
    assert_eq!(r.queries[0].rows_returned, Some(20));
    assert_eq!(r.n_plus_one.len(), 1, "{r:#?}");
    let f = &r.n_plus_one[0];
    assert_eq!(f.statement, "SELECT sum(qty) FROM items WHERE order_id = ?");
    assert_eq!(f.source, "SELECT id FROM orders ORDER BY id");
    assert_eq!(f.count, 20);
    assert!(f.total_ms > 0.0 && f.total_ms <= r.db_ms);
    assert_eq!(r.similar[0].count, 20);
    for q in &r.queries {
        assert!(!q.statement.contains("customer-"), "no values stored");
    }

    profiler.store().clear();
    let p = pool.clone();
    let distinct = profiler.layer(service_fn(move |_req: Request<()>| {
        let pool = p.clone();
        async move {
            // A short statement: sqlx puts it in `summary` and leaves `db.statement` empty.
            let _: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
                .fetch_one(&pool)
                .await
                .unwrap();
            let _: Vec<String> =
                sqlx::query_scalar("SELECT sku FROM items WHERE qty > ? ORDER BY sku")
                    .bind(2)
                    .fetch_all(&pool)
                    .await
                    .unwrap();
            let _: i64 = sqlx::query_scalar("SELECT max(id) FROM items")
                .fetch_one(&pool)
                .await
                .unwrap();
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        }
    }));
    call(distinct, "/summary").await;
    let r = wait_for_records(&profiler.store(), 1).await.remove(0);
    let stmts: Vec<&str> = r.queries.iter().map(|q| q.statement.as_str()).collect();
    assert_eq!(
        stmts,
        [
            "SELECT count(*) FROM orders",
            "SELECT sku FROM items WHERE qty > ? ORDER BY sku",
            "SELECT max(id) FROM items",
        ]
    );
    assert!(r.n_plus_one.is_empty());
    assert!(r.similar.is_empty());
    assert!(r.queries.iter().all(|q| q.duration_ms >= 0.0));
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_requests_each_see_only_their_own_queries() {
    init_tracing();
    let pool = pool().await;
    let profiler = ProfilerLayer::new();
    let p = pool.clone();
    let svc = profiler.layer(service_fn(move |req: Request<()>| {
        let pool = p.clone();
        async move {
            let n: u32 = req.uri().path()[2..].parse().unwrap();
            for k in 0..3 {
                // Distinct per request after normalisation: the alias differs.
                let sql = format!("SELECT count(*) AS r{n}_q{k} FROM items WHERE qty >= ?");
                let _: i64 = sqlx::query_scalar(&sql)
                    .bind(1)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                tokio::task::yield_now().await;
            }
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        }
    }));
    let tasks: Vec<_> = (0..100)
        .map(|n| {
            let svc = svc.clone();
            // Not `/{n}`: a numeric segment is stored as `{id}`.
            tokio::spawn(async move { call(svc, &format!("/r{n}")).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    pool.close().await;
    let records = wait_for_records(&profiler.store(), 100).await;
    assert_eq!(records.len(), 100);
    for r in &records {
        let n = &r.path[2..];
        assert_eq!(r.queries.len(), 3, "{} got {:#?}", r.path, r.queries);
        for (k, q) in r.queries.iter().enumerate() {
            assert_eq!(
                q.statement,
                format!("SELECT count(*) AS r{n}_q{k} FROM items WHERE qty >= ?")
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_compatibility_does_not_drop_request_spans() {
    init_tracing();
    let pool = pool().await;
    let profiler = ProfilerLayer::new();
    let p = pool.clone();
    let svc = profiler.layer(service_fn(move |_req: Request<()>| {
        let pool = p.clone();
        async move {
            // What `log`-based crates do between queries: an `enabled` check through
            // LogTracer that the capture filter rejects but `fmt` accepts, without an event.
            let _ = log::log_enabled!(target: "noise", log::Level::Info);
            let _: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE id > ?")
                .bind(0)
                .fetch_one(&pool)
                .await
                .unwrap();
            let _ = log::log_enabled!(target: "noise", log::Level::Info);
            // A span created right after the stale check, then a query inside it.
            let inner = tracing::info_span!("handler.step");
            let _: i64 = tracing::Instrument::instrument(
                sqlx::query_scalar("SELECT count(*) FROM items").fetch_one(&pool),
                inner,
            )
            .await
            .unwrap();
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        }
    }));
    let before = SPANS_SEEN.load(Ordering::SeqCst);
    for _ in 0..50 {
        // The stale check right before the profiler opens its request span.
        let _ = log::log_enabled!(target: "noise", log::Level::Info);
        call(svc.clone(), "/compat").await;
    }
    pool.close().await;
    let records = wait_for_records(&profiler.store(), 50).await;
    assert_eq!(records.len(), 50);
    for r in &records {
        assert_eq!(
            r.query_count, 2,
            "queries lost in record {}: {:?}",
            r.id, r.queries
        );
    }
    assert!(
        SPANS_SEEN.load(Ordering::SeqCst) - before >= 50,
        "other per-layer-filtered layers see the request spans too"
    );
}
