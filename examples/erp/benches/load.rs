//! Load on the ERP list endpoint (`GET /api/v1/journal-entries`, 20 entries, SQLite),
//! 8 requests in flight on a 2-worker runtime, through three stacks built in the same
//! run:
//!
//! - `bare`: the routes with authentication only (the anchor);
//! - `full`: every layer, as `rampart_erp::app` serves it (profiler at 100 %);
//! - `full_no_profiler`: every layer but the profiler.
//!
//! Targets: full ≥ 0.8× bare (issue #8), profiler at 100 % ≥ 0.95× without it (issue #7).
//! The process runs the ERP's `tracing` setup (the profiler's query capture layer), so
//! the profiler really records the queries.
//!
//! `cargo bench -p rampart-erp --bench load` — criterion prints each stack, then a
//! summary with the median throughput ratios of interleaved rounds.

use std::{
    hint::black_box,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Body,
    http::{Request, StatusCode},
};
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::BodyExt;
use rampart_erp::{AppState, Config, Stack, app_with};
use serde_json::json;
use tokio::runtime::Runtime;
use tower::ServiceExt;
use tracing_subscriber::prelude::*;

const IN_FLIGHT: u64 = 8;
/// Interleaved rounds of the summary (odd: the median is one round's ratio).
const ROUNDS: usize = 15;

/// A limiter that never says no (every request still pays for a decision).
const GENEROUS: &str = r#"
exempt = ["/health/*", "/metrics"]
[[policy]]
name = "api"
rate = "1000000000/hour"
key = "user"
paths = ["/api/*"]
"#;

struct Setup {
    token: Arc<str>,
    bare: Router,
    full: Router,
    no_profiler: Router,
}

async fn setup() -> Setup {
    let mut config = Config::for_tests("sqlite::memory:");
    config.layers.rate_limit = Some(toml::from_str(GENEROUS).unwrap());
    let (state, _) = AppState::connect(config).await.unwrap();
    let full = app_with(state.clone(), Stack::FULL);
    let call = |req: Request<Body>| {
        let full = full.clone();
        async move {
            let res = full.oneshot(req).await.unwrap();
            let status = res.status();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            (
                status,
                serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
            )
        }
    };
    let (status, token) = call(
        Request::post("/api/v1/auth/token")
            .header("content-type", "application/json")
            .body(Body::from(
                json!({"tenant": "acme", "username": "user", "password": "demo-password"})
                    .to_string(),
            ))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let token: Arc<str> = token["access_token"].as_str().unwrap().into();
    let auth = format!("Bearer {token}");
    let (_, accounts) = call(
        Request::get("/api/v1/accounts?limit=200")
            .header("authorization", &auth)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    let id = |code: &str| {
        accounts["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["code"] == code)
            .unwrap()["id"]
            .clone()
    };
    let (cash, sales) = (id("1000"), id("4000"));
    for n in 0..20 {
        let body = json!({"date": "2026-01-15", "description": format!("entry {n}"),
            "lines": [{"account_id": cash, "debit": 100 + n}, {"account_id": sales, "credit": 100 + n}]});
        let (status, _) = call(
            Request::post("/api/v1/journal-entries")
                .header("authorization", &auth)
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    Setup {
        token,
        bare: app_with(state.clone(), Stack::BARE),
        no_profiler: app_with(
            state.clone(),
            Stack {
                profiler: false,
                ..Stack::FULL
            },
        ),
        full,
    }
}

async fn list(router: Router, token: &str) {
    let req = Request::get("/api/v1/journal-entries?limit=20")
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    let res = router.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    black_box(res.into_body().collect().await.unwrap().to_bytes());
}

/// `n` requests, `IN_FLIGHT` at a time; the wall time.
async fn load(router: &Router, token: &Arc<str>, n: u64) -> Duration {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..IN_FLIGHT {
        let (router, token) = (router.clone(), token.clone());
        let count = n / IN_FLIGHT + u64::from(worker < n % IN_FLIGHT);
        tasks.spawn(async move {
            for _ in 0..count {
                list(router.clone(), &token).await;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    tracing_subscriber::registry()
        .with(tower_rampart::profiler::query_capture_layer())
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let s = rt.block_on(setup());
    let mut g = c.benchmark_group("erp_list_journal_entries");
    for (name, router) in [
        ("bare", &s.bare),
        ("full", &s.full),
        ("full_no_profiler", &s.no_profiler),
    ] {
        let token = &s.token;
        g.bench_function(name, |b| {
            b.to_async(&rt)
                .iter_custom(|iters| async move { load(router, token, iters).await });
        });
    }
    g.finish();
    // `BENCH_NO_SUMMARY=1`: criterion's measurements only (for a profiler run).
    if std::env::var_os("BENCH_NO_SUMMARY").is_none() {
        summary(&rt, &s);
    }
}

fn summary(rt: &Runtime, s: &Setup) {
    let n = 2_000;
    let rps = |router: &Router| n as f64 / rt.block_on(load(router, &s.token, n)).as_secs_f64();
    let (mut full_vs_bare, mut prof_vs_off) = (Vec::new(), Vec::new());
    let (mut bare, mut full, mut off) = (0.0, 0.0, 0.0);
    // Interleaved rounds, the order rotated each round (no stack always runs after
    // another); the median ratio is robust to a shared machine's drift.
    for round in 0..ROUNDS {
        for k in 0..3 {
            match (round + k) % 3 {
                0 => bare = rps(&s.bare),
                1 => full = rps(&s.full),
                _ => off = rps(&s.no_profiler),
            }
        }
        full_vs_bare.push(full / bare);
        prof_vs_off.push(full / off);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let spread: Vec<String> = v.iter().map(|r| format!("{r:.3}")).collect();
        eprintln!("  rounds (sorted): {}", spread.join(" "));
        v[v.len() / 2]
    };
    println!(
        "\nERP list endpoint, {IN_FLIGHT} in flight, {n} requests per round, {ROUNDS} rounds (last round: bare {bare:.0}, full {full:.0}, full without profiler {off:.0} req/s)"
    );
    println!(
        "  full stack / bare:            median {:.3}x  (target >= 0.8x)",
        median(full_vs_bare)
    );
    println!(
        "  profiler 100 % / profiler off: median {:.3}x  (target >= 0.95x)",
        median(prof_vs_off)
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(4));
    targets = bench
}
criterion_main!(benches);
