//! Behaviour tests of the profiler (real sqlx tests live in `tests/profiler_sqlx.rs`).

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::{BodyExt, Full};
use tower::{ServiceExt, service_fn};
use tower_layer::Layer;
use tracing_subscriber::prelude::*;

use super::*;
use crate::identity::{IdentityReader, TenantIdentity, UserIdentity};

fn subscriber_guard() -> tracing::subscriber::DefaultGuard {
    tracing_subscriber::registry()
        .with(query_capture_layer())
        .set_default()
}

async fn send<S, B>(svc: S, req: Request<()>) -> (Response<Bytes>, http::HeaderMap)
where
    S: tower::Service<Request<()>, Response = Response<B>, Error = Infallible>,
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let res = svc.oneshot(req).await.unwrap();
    let (parts, body) = res.into_parts();
    let headers = parts.headers.clone();
    let bytes = body.collect().await.unwrap().to_bytes();
    (Response::from_parts(parts, bytes), headers)
}

#[derive(Clone)]
struct Claims(&'static str);
impl UserIdentity for Claims {
    fn user_id(&self) -> &str {
        self.0
    }
    fn tenant_id(&self) -> Option<&str> {
        Some("from-user")
    }
}

#[derive(Clone)]
struct Tenant;
impl TenantIdentity for Tenant {
    fn tenant_id(&self) -> &str {
        "acme"
    }
}

#[tokio::test]
async fn records_request_fields_and_redacts() {
    let _g = subscriber_guard();
    let profiler =
        ProfilerLayer::new().identity(IdentityReader::new().user::<Claims>().tenant::<Tenant>());
    let svc = profiler.layer(service_fn(|_req: Request<()>| async {
        record_query(
            "SELECT * FROM t WHERE secret = 'hunter2'",
            Duration::from_millis(2),
            Some(3),
        );
        let res = Response::builder()
            .status(StatusCode::CREATED)
            .header("set-cookie", "session=abcdef")
            .header("etag", "\"v1\"")
            .body(Full::new(Bytes::from_static(b"hello world")))
            .unwrap();
        Ok::<_, Infallible>(res)
    }));
    let req = Request::post("/orders/42?page=1&api_key=k3y&token=t0k")
        .header("authorization", "Bearer s3cr3t")
        .header("cookie", "sid=c00k1e")
        .header("x-api-key", "ap1k3y")
        .header("x-request-id", "req-7")
        .extension(Claims("alice"))
        .extension(Tenant)
        .body(())
        .unwrap();
    let (res, headers) = send(svc, req).await;
    assert_eq!(res.status(), 201);
    assert_eq!(&res.body()[..], b"hello world");
    assert_eq!(headers["etag"], "\"v1\"", "validators are kept");
    let st = headers["server-timing"].to_str().unwrap();
    assert!(st.starts_with("total;dur="), "{st}");
    assert!(st.contains(", db;dur=2.000;desc=\"1 query\""), "{st}");

    let records = profiler.store().records();
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/orders/{id}");
    assert_eq!(r.route, "/orders/{id}");
    assert_eq!(r.status, 201);
    assert_eq!(r.response_bytes, 11);
    assert_eq!(r.request_id.as_deref(), Some("req-7"));
    assert_eq!(r.user.as_deref(), Some("alice"));
    assert_eq!(r.tenant.as_deref(), Some("acme"));
    assert_eq!(
        r.query.as_deref(),
        Some("page=1&api_key=[redacted]&token=[redacted]")
    );
    assert!(r.duration_ms > 0.0);
    assert_eq!(r.query_count, 1);
    assert_eq!(r.queries[0].statement, "SELECT * FROM t WHERE secret = ?");
    assert_eq!(r.queries[0].rows_returned, Some(3));
    assert_eq!(r.queries[0].source, "manual");
    let json = serde_json::to_string(r).unwrap();
    for secret in [
        "s3cr3t", "c00k1e", "ap1k3y", "k3y&", "t0k", "abcdef", "hunter2",
    ] {
        assert!(!json.contains(secret), "{secret} leaked: {json}");
    }
    let header =
        |h: &[(String, String)], n: &str| h.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    assert_eq!(
        header(&r.request_headers, "authorization").unwrap(),
        REDACTED
    );
    assert_eq!(header(&r.request_headers, "cookie").unwrap(), REDACTED);
    assert_eq!(header(&r.request_headers, "x-api-key").unwrap(), REDACTED);
    assert_eq!(header(&r.response_headers, "set-cookie").unwrap(), REDACTED);
    assert_eq!(header(&r.response_headers, "etag").unwrap(), "\"v1\"");
}

#[tokio::test]
async fn user_tenant_is_used_without_resolved_tenant_and_304_passes() {
    let profiler = ProfilerLayer::new()
        .identity(IdentityReader::new().user::<Claims>())
        .server_timing(false);
    let svc = profiler.layer(service_fn(|_req: Request<()>| async {
        let res = Response::builder()
            .status(StatusCode::NOT_MODIFIED)
            .header("etag", "\"v1\"")
            .body(Full::new(Bytes::new()))
            .unwrap();
        Ok::<_, Infallible>(res)
    }));
    let req = Request::get("/x")
        .extension(Claims("bob"))
        .body(())
        .unwrap();
    let (res, headers) = send(svc, req).await;
    assert_eq!(res.status(), 304);
    assert_eq!(headers["etag"], "\"v1\"");
    assert!(headers.get("server-timing").is_none(), "switched off");
    let r = &profiler.store().records()[0];
    assert_eq!(r.tenant.as_deref(), Some("from-user"));
    assert_eq!(r.status, 304);
}

fn hello() -> impl tower::Service<
    Request<()>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hi"))))
    })
}

#[tokio::test]
async fn anonymous_requests_get_no_server_timing() {
    let profiler =
        ProfilerLayer::new().identity(IdentityReader::new().user::<Claims>().tenant::<Tenant>());
    let svc = profiler.layer(hello());
    let (_, headers) = send(svc.clone(), Request::new(())).await;
    assert!(headers.get("server-timing").is_none(), "anonymous");
    let (_, headers) = send(
        svc,
        Request::get("/")
            .extension(Claims("alice"))
            .body(())
            .unwrap(),
    )
    .await;
    assert!(headers.contains_key("server-timing"), "authenticated");
    // No identity configured: nobody is known, nobody gets it.
    let (_, headers) = send(ProfilerLayer::new().layer(hello()), Request::new(())).await;
    assert!(headers.get("server-timing").is_none());
    let only_staff =
        ProfilerLayer::new().server_timing_when(|r| r.headers().contains_key("x-staff"));
    let req = Request::get("/").header("x-staff", "1").body(()).unwrap();
    let (_, headers) = send(only_staff.layer(hello()), req).await;
    assert!(headers.contains_key("server-timing"));
}

#[tokio::test]
async fn sampling_zero_percent_records_nothing() {
    let profiler = ProfilerLayer::new()
        .sample_percent(0.0)
        .unwrap()
        .server_timing_when(|_| true);
    let svc = profiler.layer(hello());
    for _ in 0..200 {
        let (_, headers) = send(svc.clone(), Request::new(())).await;
        let st = headers["server-timing"].to_str().unwrap();
        assert!(st.starts_with("total;dur=") && !st.contains("db;"), "{st}");
    }
    assert_eq!(profiler.store().len(), 0);
    assert_eq!(profiler.store().recorded_total(), 0);
}

#[tokio::test]
async fn sampling_by_percent_and_by_closure() {
    let profiler = ProfilerLayer::new().sample_percent(50.0).unwrap();
    let svc = profiler.layer(hello());
    for _ in 0..1000 {
        send(svc.clone(), Request::new(())).await;
    }
    let n = profiler.store().len();
    assert!((350..650).contains(&n), "50 % of 1000 sampled {n}");

    let profiler = ProfilerLayer::new().sample_with(|r| r.headers().contains_key("x-profile"));
    let svc = profiler.layer(hello());
    send(svc.clone(), Request::new(())).await;
    send(
        svc.clone(),
        Request::get("/").header("x-profile", "1").body(()).unwrap(),
    )
    .await;
    assert_eq!(profiler.store().len(), 1);
}

fn record(id: u64, duration_ms: f64, queries: usize) -> RequestRecord {
    RequestRecord {
        id,
        request_id: None,
        method: "GET".into(),
        path: "/p".into(),
        route: "/p".into(),
        query: None,
        status: 200,
        started_at_ms: 0,
        duration_ms,
        response_bytes: 0,
        tenant: None,
        user: None,
        request_headers: vec![("accept".into(), "*/*".into())],
        response_headers: Vec::new(),
        queries: (0..queries)
            .map(|i| QueryRecord {
                statement: format!("SELECT * FROM table_{i} WHERE id = ?"),
                start_ms: 0.0,
                duration_ms: 0.1,
                rows_returned: None,
                rows_affected: None,
                source: "manual".into(),
            })
            .collect(),
        query_count: queries,
        queries_dropped: 0,
        db_ms: 0.0,
        similar: Vec::new(),
        n_plus_one: Vec::new(),
    }
}

#[test]
fn ring_bound_byte_cap_and_slowest_hold_under_100_000_records() {
    let store = ProfileStore::new(
        StoreLimits::default()
            .max_records(1000)
            .max_bytes(200_000)
            .slowest(5),
    )
    .unwrap();
    for i in 0..100_000u64 {
        // A few very slow requests early on; they must survive the ring.
        let slow = if i % 20_000 == 7 {
            10_000.0 + i as f64
        } else {
            1.0
        };
        store.push(record(i + 1, slow, (i % 7) as usize));
        if i % 997 == 0 {
            assert!(store.len() <= 1000);
            assert!(store.bytes() <= 200_000);
        }
    }
    assert!(store.len() <= 1000);
    assert!(store.bytes() <= 200_000, "{}", store.bytes());
    assert!(store.len() > 100, "the byte cap, not the count, binds here");
    assert_eq!(store.recorded_total(), 100_000);
    let records = store.records();
    let slow: Vec<u64> = records
        .iter()
        .filter(|r| r.duration_ms > 1000.0)
        .map(|r| r.id)
        .collect();
    assert_eq!(slow.len(), 5, "the slowest survive: {slow:?}");
    assert!(
        store.get(8).is_some(),
        "the slowest record from the start is kept"
    );
    assert!(store.get(50).is_none(), "an ordinary old record is evicted");
    assert!(
        records.windows(2).all(|w| w[0].id > w[1].id),
        "newest first"
    );
    // Count cap binds with small records.
    let small = ProfileStore::new(StoreLimits::default().max_records(10).slowest(0)).unwrap();
    for i in 0..1000 {
        small.push(record(i, 1.0, 0));
    }
    assert_eq!(small.len(), 10);
    assert_eq!(small.records().len(), 10);
    // A single record over the cap keeps its summary only.
    let tiny = ProfileStore::new(StoreLimits::default().max_bytes(4096)).unwrap();
    tiny.push(record(1, 1.0, 200));
    let r = tiny.get(1).unwrap();
    assert!(r.queries.is_empty() && r.queries_dropped == 200);
    tiny.clear();
    assert!(tiny.is_empty());
    assert!(StoreLimits::default().max_bytes(10).validate().is_err());
}

#[test]
fn the_slowest_records_count_against_the_byte_cap() {
    let cap = 40_000;
    let store = ProfileStore::new(StoreLimits::default().max_bytes(cap).slowest(50)).unwrap();
    // Ever slower requests, each with large (already normalised) statements.
    for i in 0..500u64 {
        store.push(record(i + 1, i as f64, 20));
        let held: usize = store
            .records()
            .iter()
            .map(RequestRecord::approx_bytes)
            .sum();
        assert!(held <= cap, "{held} bytes held after {i} records");
        assert!(store.bytes() <= cap);
    }
}

#[tokio::test]
async fn huge_statements_are_cut_as_they_arrive() {
    let _g = subscriber_guard();
    let profiler = ProfilerLayer::new()
        .with_store(ProfileStore::new(StoreLimits::default().max_bytes(1 << 20)).unwrap());
    let svc = profiler.layer(service_fn(|_req: Request<()>| async {
        let huge = format!(
            "SELECT * FROM t WHERE {}",
            "a = 'sk_live' OR ".repeat(100_000)
        );
        for _ in 0..50 {
            record_query(&huge, Duration::from_millis(1), None);
        }
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
    }));
    send(svc, Request::get("/slow").body(()).unwrap()).await;
    let r = &profiler.store().records()[0];
    assert_eq!(r.queries.len(), 50);
    for q in &r.queries {
        assert!(q.statement.len() <= 4100, "{}", q.statement.len());
        assert!(!q.statement.contains("sk_live"));
    }
    assert!(profiler.store().bytes() <= 1 << 20);
}

#[test]
fn labels_stay_bounded_under_random_paths_and_methods() {
    let recorder = crate::test_util::TestRecorder::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        let svc = ProfilerLayer::new()
            .sample_percent(0.0)
            .unwrap()
            .layer(hello());
        for i in 0..10_000u32 {
            let method = if i % 2 == 0 {
                format!("M{i}")
            } else {
                "GET".to_owned()
            };
            let req = Request::builder()
                .method(method.as_str())
                .uri(format!("/x{i}/y/{}", i * 7919))
                .body(())
                .unwrap();
            rt.block_on(send(svc.clone(), req));
        }
    });
    let series: std::collections::HashSet<Vec<(String, String)>> = recorder
        .histograms()
        .into_iter()
        .map(|h| h.labels)
        .collect();
    assert_eq!(
        series.len(),
        2,
        "{:?}",
        series.iter().take(5).collect::<Vec<_>>()
    );
    for labels in &series {
        assert!(labels.contains(&("route".to_owned(), "unmatched".to_owned())));
    }
}

#[test]
fn n_plus_one_findings_over_the_floor_are_counted() {
    let recorder = crate::test_util::TestRecorder::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let run = |floor_ms: f64, each_ms: u64| {
        metrics::with_local_recorder(&recorder, || {
            let _g = subscriber_guard();
            let profiler = ProfilerLayer::new()
                .n_plus_one_min_total_ms(floor_ms)
                .unwrap();
            let svc = profiler.layer(service_fn(move |_req: Request<()>| async move {
                record_query("SELECT id FROM orders", Duration::from_millis(1), None);
                for _ in 0..6 {
                    // Sequential: each query ends after the previous one ended.
                    std::thread::sleep(Duration::from_millis(each_ms));
                    record_query(
                        "SELECT * FROM items WHERE order_id = 1",
                        Duration::from_millis(each_ms),
                        None,
                    );
                }
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
            }));
            rt.block_on(send(svc, Request::get("/orders").body(()).unwrap()));
            assert_eq!(profiler.store().records()[0].n_plus_one.len(), 1);
        });
        recorder.counter_total(
            "rampart_profiler_n_plus_one_total",
            &[("route", "unmatched")],
        )
    };
    assert_eq!(run(50.0, 1), 0, "6 fast repeats under the floor: no signal");
    assert_eq!(run(50.0, 10), 1, "60 ms of repeats: one signal");
}

#[tokio::test]
async fn concurrent_requests_keep_their_own_queries() {
    let _g = subscriber_guard();
    let profiler = ProfilerLayer::new();
    let svc = profiler.layer(service_fn(|req: Request<()>| async move {
        let n: usize = req.uri().path()[2..].parse().unwrap();
        for i in 0..3 {
            // Alternate the two capture paths and interleave with other requests.
            if i % 2 == 0 {
                tracing::debug!(
                    target: "sqlx::query",
                    summary = "…",
                    db.statement = format!("\n\nSELECT c{i} FROM req_{n} WHERE x = 1\n"),
                    rows_affected = 0u64,
                    rows_returned = 1u64,
                    elapsed_secs = 0.001,
                );
            } else {
                record_query(
                    &format!("SELECT c{i} FROM req_{n}"),
                    Duration::from_micros(10),
                    None,
                );
            }
            tokio::task::yield_now().await;
        }
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    }));
    let mut tasks = Vec::new();
    for n in 0..100 {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            send(svc, Request::get(format!("/r{n}")).body(()).unwrap()).await
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let records = profiler.store().records();
    assert_eq!(records.len(), 100);
    for r in records {
        let n = &r.path[2..];
        assert_eq!(r.queries.len(), 3, "{r:?}");
        for q in &r.queries {
            assert!(
                q.statement.contains(&format!("FROM req_{n}")),
                "{q:?} in {}",
                r.path
            );
        }
        assert_eq!(r.queries[0].source, "sqlx");
        assert_eq!(
            r.queries[0].statement,
            format!("SELECT c0 FROM req_{n} WHERE x = ?")
        );
    }
}

#[tokio::test]
async fn sqlx_summary_otel_spans_and_elapsed_fallback() {
    let _g = subscriber_guard();
    let profiler = ProfilerLayer::new();
    let svc = profiler.layer(service_fn(|_req: Request<()>| async {
        // Short statement: sqlx leaves db.statement empty and puts it in summary.
        tracing::debug!(target: "sqlx::query", summary = "SELECT 1", db.statement = "", rows_returned = 1u64, elapsed = ?Duration::from_millis(4));
        // An OpenTelemetry-style span, its duration is its lifetime.
        {
            let span = tracing::info_span!("db.query", db.statement = "UPDATE t SET a = 5", db.response.returned_rows = tracing::field::Empty);
            span.record("db.response.returned_rows", 2u64);
            let _e = span.enter();
        }
        // A sqlx event inside a db span is counted once.
        {
            let span = tracing::info_span!("db.query", db.query.text = "SELECT b FROM t");
            let _e = span.enter();
            tracing::debug!(target: "sqlx::query", summary = "SELECT b FROM t", db.statement = "", elapsed_secs = 0.002);
        }
        // An OTel-style event.
        tracing::info!(db.statement = "DELETE FROM t WHERE id = 9", duration_ms = 1.5);
        // Events without a statement are ignored.
        tracing::debug!(target: "sqlx::query", rows_returned = 1u64);
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
    }));
    send(svc, Request::new(())).await;
    let r = &profiler.store().records()[0];
    // Queries are ordered by start (end minus the reported elapsed time); look them up by
    // statement instead.
    assert_eq!(r.queries.len(), 4, "{:?}", r.queries);
    let find = |s: &str| {
        r.queries
            .iter()
            .find(|q| q.statement == s)
            .unwrap_or_else(|| panic!("{s} missing: {:?}", r.queries))
    };
    let short = find("SELECT ?");
    assert_eq!(short.source, "sqlx");
    assert!((short.duration_ms - 4.0).abs() < 1e-6);
    let update = find("UPDATE t SET a = ?");
    assert_eq!(update.source, "otel");
    assert_eq!(update.rows_returned, Some(2));
    let inner = find("SELECT b FROM t");
    assert_eq!(
        inner.source, "sqlx",
        "the event wins over its enclosing db span"
    );
    assert!((inner.duration_ms - 2.0).abs() < 1e-6);
    let delete = find("DELETE FROM t WHERE id = ?");
    assert_eq!(delete.source, "otel");
    assert!((delete.duration_ms - 1.5).abs() < 1e-6);
}

#[tokio::test]
async fn per_request_query_cap_and_n_plus_one_from_events() {
    let _g = subscriber_guard();
    let profiler = ProfilerLayer::new()
        .max_queries_per_request(10)
        .server_timing_when(|_| true);
    let svc = profiler.layer(service_fn(|_req: Request<()>| async {
        record_query("SELECT id FROM orders", Duration::from_micros(5), None);
        for i in 0..20 {
            record_query(
                &format!("SELECT * FROM items WHERE order_id = {i}"),
                Duration::ZERO,
                None,
            );
        }
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
    }));
    let (_, headers) = send(svc, Request::new(())).await;
    assert!(
        headers["server-timing"]
            .to_str()
            .unwrap()
            .contains("desc=\"21 queries\"")
    );
    let r = &profiler.store().records()[0];
    assert_eq!(r.query_count, 21);
    assert_eq!(r.queries.len(), 10);
    assert_eq!(r.queries_dropped, 11);
    assert_eq!(r.n_plus_one.len(), 1, "9 kept repetitions still exceed 5");
    assert_eq!(
        r.n_plus_one[0].statement,
        "SELECT * FROM items WHERE order_id = ?"
    );
}

#[tokio::test]
async fn dropped_body_and_errors_still_finish_the_record() {
    let profiler = ProfilerLayer::new();
    let svc = profiler.layer(hello());
    let res = svc.oneshot(Request::new(())).await.unwrap();
    assert!(format!("{:?}", res.body()).contains("finished: false"));
    drop(res);
    assert_eq!(profiler.store().len(), 1);

    let failing = profiler.layer(service_fn(|_req: Request<()>| async {
        Err::<Response<Full<Bytes>>, _>("boom")
    }));
    assert!(failing.oneshot(Request::new(())).await.is_err());
    let records = profiler.store().records();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].status, 0, "no response: status 0");
}

#[test]
fn metrics_histograms_by_method_route_status() {
    let recorder = crate::test_util::TestRecorder::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        let _g = subscriber_guard();
        let profiler = ProfilerLayer::new();
        let svc = profiler.layer(service_fn(|_req: Request<()>| async {
            record_query("SELECT 1", Duration::ZERO, None);
            record_query("SELECT 2", Duration::ZERO, None);
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        }));
        rt.block_on(send(svc, Request::delete("/items/7").body(()).unwrap()));
        let off = ProfilerLayer::new().metrics(false).layer(hello());
        rt.block_on(send(off, Request::new(())));
    });
    let got = recorder.histograms();
    assert_eq!(got.len(), 2, "{got:?}");
    let dur = got
        .iter()
        .find(|h| h.name == "rampart_profiler_request_duration_seconds")
        .unwrap();
    assert_eq!(
        dur.labels,
        vec![
            ("method".to_owned(), "DELETE".to_owned()),
            ("route".to_owned(), "unmatched".to_owned()),
            ("status".to_owned(), "200".to_owned()),
        ]
    );
    let q = got
        .iter()
        .find(|h| h.name == "rampart_profiler_queries_per_request")
        .unwrap();
    assert!((q.value - 2.0).abs() < f64::EPSILON);
}

async fn ui_get(ui: &ProfilerUi, path: &str, open: bool) -> (StatusCode, http::HeaderMap, String) {
    let mut req = Request::get(path);
    if open {
        req = req.header("x-admin", "yes");
    }
    let (res, headers) = send(ui.clone(), req.body(()).unwrap()).await;
    (
        res.status(),
        headers,
        String::from_utf8(res.body().to_vec()).unwrap(),
    )
}

#[tokio::test]
async fn ui_is_closed_by_default_and_opens_with_a_predicate() {
    let _g = subscriber_guard();
    let profiler = ProfilerLayer::new().identity(IdentityReader::new().user::<Claims>());
    let svc = profiler.layer(service_fn(|_req: Request<()>| async {
        record_query(
            "SELECT id FROM orders WHERE note = '<script>'",
            Duration::ZERO,
            None,
        );
        for _ in 0..6 {
            record_query(
                "SELECT * FROM items WHERE order_id = $1",
                Duration::ZERO,
                None,
            );
        }
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
    }));
    send(
        svc.clone(),
        Request::get("/first?sort='x'")
            .extension(Claims("<b>eve</b>"))
            .body(())
            .unwrap(),
    )
    .await;
    send(svc, Request::get("/second").body(()).unwrap()).await;

    let closed = ProfilerUi::new(profiler.store());
    for path in [
        "/_profiler/",
        "/_profiler/api/requests",
        "/_profiler/requests/1",
        "/_profiler/assets/profiler.css",
    ] {
        let (status, headers, body) = ui_get(&closed, path, true).await;
        assert_eq!(status, 403, "{path}");
        assert_eq!(headers["content-type"], "application/json");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"], "Forbidden");
        assert!(v["detail"].as_str().unwrap().contains("authorize"));
    }

    let ui = ProfilerUi::new(profiler.store())
        .authorize(|p| p.headers.get("x-admin").is_some_and(|v| v == "yes"));
    assert_eq!(ui_get(&ui, "/_profiler/", false).await.0, 403);

    // HTML list: escaped, badge, no inline script or style, stylesheet from the service.
    let (status, headers, html) = ui_get(&ui, "/_profiler/", true).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert!(
        headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    assert!(html.contains("&lt;b&gt;eve&lt;/b&gt;"), "{html}");
    assert!(!html.contains("<b>"));
    assert!(html.contains("N+1 ×1"));
    assert!(html.contains("href=\"/_profiler/assets/profiler.css\""));
    for forbidden in [
        "<script", "<style", "style=", "onclick", "http://", "https://",
    ] {
        assert!(!html.contains(forbidden), "{forbidden} in list page");
    }
    let recent = html.find("/second").unwrap();
    assert!(recent < html.find("/first").unwrap(), "newest first");

    // Detail page, via nest_service-style stripped paths too.
    let (status, _, detail) = ui_get(&ui, "/requests/1", true).await;
    assert_eq!(status, 200);
    assert!(detail.contains("SELECT * FROM items WHERE order_id = ?"));
    assert!(detail.contains("ran 6 times in a row"));
    assert!(detail.contains("Similar queries"));
    assert!(
        !detail.contains("<script"),
        "statement is normalised and escaped"
    );
    assert!(detail.contains("sort=&#39;x&#39;"));

    // JSON list and detail.
    let (status, headers, body) = ui_get(&ui, "/_profiler/api/requests", true).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let list = v["requests"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    let first = &list[1];
    for key in [
        "id",
        "method",
        "path",
        "route",
        "status",
        "started_at_ms",
        "duration_ms",
        "response_bytes",
        "query_count",
        "db_ms",
        "n_plus_one",
        "user",
        "tenant",
        "request_id",
    ] {
        assert!(first.get(key).is_some(), "summary lacks {key}: {first}");
    }
    assert_eq!(first["n_plus_one"], 1);
    assert!(first.get("queries").is_none(), "lists carry no queries");
    let (_, _, body) = ui_get(&ui, "/_profiler/api/requests/1", true).await;
    let d: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(d["id"], 1);
    assert_eq!(d["query_count"], 7);
    assert_eq!(d["queries"].as_array().unwrap().len(), 7);
    assert_eq!(
        d["queries"][1]["statement"],
        "SELECT * FROM items WHERE order_id = ?"
    );
    for key in [
        "start_ms",
        "duration_ms",
        "rows_returned",
        "rows_affected",
        "source",
    ] {
        assert!(d["queries"][0].get(key).is_some(), "query lacks {key}");
    }
    assert_eq!(d["n_plus_one"][0]["count"], 6);
    assert_eq!(
        d["n_plus_one"][0]["source"],
        "SELECT id FROM orders WHERE note = ?"
    );
    assert_eq!(d["similar"][0]["count"], 6);
    let back: RequestRecord = serde_json::from_str(&body).unwrap();
    assert_eq!(
        back.queries.len(),
        profiler.store().get(1).unwrap().queries.len()
    );

    // Sorting, stylesheet, 404, 405, HEAD.
    let (_, _, sorted) = ui_get(&ui, "/_profiler/?sort=duration", true).await;
    assert!(sorted.contains("<table>"));
    let (status, headers, css) = ui_get(&ui, "/_profiler/assets/profiler.css", true).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/css; charset=utf-8");
    assert!(css.contains(".badge"));
    assert_eq!(ui_get(&ui, "/_profiler/requests/999", true).await.0, 404);
    assert_eq!(ui_get(&ui, "/_profiler/requests/abc", true).await.0, 404);
    assert_eq!(ui_get(&ui, "/_profiler/nope", true).await.0, 404);
    let post = Request::post("/_profiler/")
        .header("x-admin", "yes")
        .body(())
        .unwrap();
    let (res, headers) = send(ui.clone(), post).await;
    assert_eq!(res.status(), 405);
    assert_eq!(headers["allow"], "GET, HEAD");
    let head = Request::head("/_profiler/")
        .header("x-admin", "yes")
        .body(())
        .unwrap();
    let (res, _) = send(ui.clone(), head).await;
    assert_eq!(res.status(), 200);
    assert!(res.body().is_empty());
    let based = ui.clone().base_path("/admin/prof/");
    let (_, _, html) = ui_get(&based, "/admin/prof/", true).await;
    assert!(html.contains("href=\"/admin/prof/requests/2\""));
    assert!(format!("{based:?}").contains("authorized: true"));
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn axum_matched_path_is_the_route() {
    use axum::{Router, routing::get};
    let profiler = ProfilerLayer::new();
    let app = Router::new()
        .route("/users/{name}", get(|| async { "hi" }))
        .layer(profiler.clone());
    let res = app
        .oneshot(
            Request::get("/users/alice")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    res.into_body().collect().await.unwrap();
    let r = &profiler.store().records()[0];
    assert_eq!(r.route, "/users/{name}");
    assert_eq!(r.path, "/users/{name}", "the path is stored as its route");
}

#[tokio::test]
async fn config_debug_and_less_common_fields() {
    let _g = subscriber_guard();
    let cfg: ProfilerConfig = serde_json::from_str(
        r#"{"sample_percent": 100.0, "server_timing": false, "n_plus_one_threshold": 3,
            "max_queries_per_request": 5, "metrics": false, "store": {"max_records": 7}}"#,
    )
    .unwrap();
    let profiler = ProfilerLayer::from_config(&cfg).unwrap();
    assert_eq!(profiler.store().limits().max_records, 7);
    let dbg = format!(
        "{:?}",
        ProfilerLayer::default().sample_percent(10.0).unwrap()
    );
    assert!(dbg.contains("ratio("), "{dbg}");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = Arc::clone(&seen);
    let profiler = profiler.sample_with(move |r| {
        seen2.lock().unwrap().push(format!(
            "{} {} {}",
            r.method(),
            r.uri(),
            r.extensions().get::<Claims>().map_or("-", |c| c.0)
        ));
        true
    });
    let svc = profiler.layer(service_fn(|_req: Request<()>| async {
        // Debug-formatted statements, signed row counts and millisecond durations.
        tracing::info!(db.statement = ?"SELECT \"a\"\n FROM t", rows_affected = 2i64, elapsed_ms = 3u64);
        tracing::info!(db.query.text = "SELECT b FROM t", rows_returned = -1i64, other = 1.5f64, elapsed_ms = 0.5f64);
        tracing::debug!(target: "sqlx::query", summary = ?"SELECT 9", db.statement = "");
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
    }));
    assert!(format!("{svc:?}").contains("Profiler"));
    let mut fut = Box::pin(
        svc.oneshot(
            Request::builder()
                .method("PURGE")
                .uri("/cache")
                .extension(Claims("carol"))
                .body(())
                .unwrap(),
        ),
    );
    let res = fut.as_mut().await.unwrap();
    assert!(res.headers().get("server-timing").is_none());
    assert!(res.body().is_end_stream());
    drop(res);
    assert_eq!(*seen.lock().unwrap(), ["PURGE /cache carol"]);
    let r = &profiler.store().records()[0];
    assert_eq!(r.method, "PURGE");
    let q: Vec<(&str, Option<u64>, Option<u64>, f64)> = r
        .queries
        .iter()
        .map(|q| {
            (
                q.statement.as_str(),
                q.rows_returned,
                q.rows_affected,
                q.duration_ms,
            )
        })
        .collect();
    assert!(
        q.contains(&("SELECT ? FROM t", None, Some(2), 3.0)),
        "{q:?}"
    );
    assert!(q.contains(&("SELECT b FROM t", None, None, 0.5)), "{q:?}");
    assert!(q.iter().any(|x| x.0 == "SELECT ?"), "{q:?}");
}

/// A body fed frame by frame through a channel.
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|o| o.map(|b| Ok(http_body::Frame::data(b))))
    }
}

#[tokio::test]
async fn streaming_bodies_are_counted_to_their_end() {
    let profiler = ProfilerLayer::new();
    let svc = profiler.layer(service_fn(|_req: Request<()>| async {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        tokio::spawn(async move {
            for chunk in [&b"abc"[..], b"defg"] {
                tokio::task::yield_now().await;
                tx.send(Bytes::from_static(chunk)).await.unwrap();
            }
        });
        Ok::<_, Infallible>(Response::new(ChannelBody(rx)))
    }));
    let res = svc.oneshot(Request::new(())).await.unwrap();
    assert!(!res.body().is_end_stream());
    assert_eq!(res.body().size_hint().exact(), None);
    let (_, mut body) = res.into_parts();
    assert!(format!("{body:?}").contains("finished: false"));
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        bytes.extend_from_slice(frame.unwrap().data_ref().unwrap());
    }
    assert_eq!(&bytes[..], b"abcdefg");
    assert!(format!("{body:?}").contains("finished: true"));
    assert_eq!(profiler.store().records()[0].response_bytes, 7);
}
