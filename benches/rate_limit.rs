//! Rate-limit cost per request.
//!
//! - in memory: our layer vs `tower_governor` (same quota: one per microsecond, burst
//!   10^9, so every request is allowed; same key: the peer IP from `ConnectInfo`) vs a
//!   bare `service_fn`. Target: ≤ 1.0× tower_governor.
//! - in memory, production features: the client from `X-Forwarded-For` behind a trusted
//!   proxy and `X-RateLimit-*` headers (ours: `HeaderStyle::Legacy`, the proxy trusted),
//!   against tower_governor with `SmartIpKeyExtractor` and `use_headers()` (it believes
//!   the header from anyone: it does strictly less). Target: ≤ 1.0×.
//! - in memory, two worker threads, four tasks, 10 000 distinct clients (peer IP key, no
//!   headers), against tower_governor the same way. Target: ≤ 1.0×.
//! - Redis: one decision through the layer vs a raw `GET` on the same connection
//!   manager. Target: ≤ 1.3×. Also timed: the decision's script alone (the layer's
//!   `EVALSHA` of [`REDIS_SCRIPT`], same key and arguments), which splits the ratio into
//!   what the server's script costs and what the layer adds. And a decision with
//!   leasing (`RedisBackend::lease`, batch 100): one round trip per 100 decisions.
//!
//! `cargo bench --bench rate_limit --all-features`. After criterion's figures, a summary
//! of the ratios measured with plain `Instant` loops in the same run is printed: medians
//! of interleaved rounds (anchor, ours, anchor, ours, …); `BENCH_NO_SUMMARY=1` skips it
//! (for a run under a profiler).

use std::{
    convert::Infallible,
    hint::black_box,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{body::Body, extract::ConnectInfo};
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use rampart_test_support::RedisServer;
use redis::AsyncCommands;
use tower::{Service, ServiceExt, service_fn};
use tower_governor::{
    GovernorLayer, governor::GovernorConfigBuilder, key_extractor::SmartIpKeyExtractor,
};
use tower_layer::Layer;
use tower_rampart::{
    client_ip::{ClientIpResolver, TrustedProxies},
    rate_limit::{HeaderStyle, Policy, Quota, REDIS_SCRIPT, RateLimitLayer, RedisBackend},
};

fn request() -> Request<Body> {
    let mut req = Request::get("/api/orders").body(Body::empty()).unwrap();
    req.extensions_mut().insert(ConnectInfo(
        "203.0.113.7:40000".parse::<SocketAddr>().unwrap(),
    ));
    req
}

/// Behind a trusted proxy (10.0.0.1) that appended the client to `X-Forwarded-For`.
fn proxied_request() -> Request<Body> {
    let mut req = Request::get("/api/orders")
        .header("x-forwarded-for", "198.51.100.1, 203.0.113.7")
        .body(Body::empty())
        .unwrap();
    req.extensions_mut()
        .insert(ConnectInfo("10.0.0.1:40000".parse::<SocketAddr>().unwrap()));
    req
}

/// The request of client `i` (of 10 000 distinct addresses).
fn client_request(i: u32) -> Request<Body> {
    let mut req = Request::get("/api/orders").body(Body::empty()).unwrap();
    let ip = std::net::Ipv4Addr::from(0xC633_0000 + (i % 10_000));
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::new(ip.into(), 40000)));
    req
}

/// Four tasks on the current multi-thread runtime, `n` requests each over 10 000
/// clients; ns per request (wall time).
async fn time_parallel<S>(svc: S, n: u32) -> f64
where
    S: Service<Request<Body>> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Send,
    S::Error: std::fmt::Debug,
{
    let start = Instant::now();
    let tasks: Vec<_> = (0..4u32)
        .map(|t| {
            let svc = svc.clone();
            tokio::spawn(async move {
                for i in 0..n {
                    black_box(
                        svc.clone()
                            .oneshot(client_request(i * 4 + t))
                            .await
                            .unwrap(),
                    );
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    start.elapsed().as_nanos() as f64 / f64::from(4 * n)
}

async fn ok(_req: Request<Body>) -> Result<Response<Body>, Infallible> {
    Ok(Response::new(Body::empty()))
}

fn quota() -> Quota {
    Quota::new(1, Duration::from_micros(1)).burst(1_000_000_000)
}

fn ours(style: HeaderStyle) -> RateLimitLayer {
    RateLimitLayer::builder()
        .policy(Policy::new("bench", quota()))
        .headers(style)
        .build()
        .unwrap()
}

/// Times `n` sequential calls of a service, in ns per call.
async fn time_loop<S>(svc: S, n: u32) -> f64
where
    S: Service<Request<Body>> + Clone,
    S::Error: std::fmt::Debug,
{
    time_loop_with(svc, n, request).await
}

/// [`time_loop`] with requests from `make`.
async fn time_loop_with<S>(svc: S, n: u32, make: fn() -> Request<Body>) -> f64
where
    S: Service<Request<Body>> + Clone,
    S::Error: std::fmt::Debug,
{
    let start = Instant::now();
    for _ in 0..n {
        black_box(svc.clone().oneshot(make()).await.unwrap());
    }
    start.elapsed().as_nanos() as f64 / f64::from(n)
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bare = service_fn(ok);
    let governor_config = Arc::new(
        GovernorConfigBuilder::default()
            .period(Duration::from_micros(1))
            .burst_size(1_000_000_000)
            .finish()
            .unwrap(),
    );
    let governor = GovernorLayer::new(governor_config).layer(service_fn(ok));
    let plain = ours(HeaderStyle::None).layer(service_fn(ok));
    let ietf = ours(HeaderStyle::Ietf).layer(service_fn(ok));
    // Production features, equal on both sides: client from X-Forwarded-For, and
    // X-RateLimit-* headers.
    let governor_prod_config = Arc::new(
        GovernorConfigBuilder::default()
            .period(Duration::from_micros(1))
            .burst_size(1_000_000_000)
            .key_extractor(SmartIpKeyExtractor)
            .use_headers()
            .finish()
            .unwrap(),
    );
    let governor_prod = GovernorLayer::new(governor_prod_config).layer(service_fn(ok));
    let prod = RateLimitLayer::builder()
        .policy(Policy::new("bench", quota()))
        .headers(HeaderStyle::Legacy)
        .client_ip(ClientIpResolver::new(
            TrustedProxies::new(["10.0.0.0/8"]).unwrap(),
        ))
        .build()
        .unwrap()
        .layer(service_fn(ok));
    // The layer's fixed cost: a policy that does not match the request's path.
    let bypass = RateLimitLayer::builder()
        .policy(Policy::new("bench", quota()).path("/elsewhere"))
        .build()
        .unwrap()
        .layer(service_fn(ok));

    let mut g = c.benchmark_group("rate_limit_memory");
    g.bench_function("bare_service_fn", |b| {
        b.to_async(&rt).iter(|| bare.oneshot(request()));
    });
    g.bench_function("tower_governor", |b| {
        b.to_async(&rt).iter(|| governor.clone().oneshot(request()));
    });
    g.bench_function("rampart_no_headers", |b| {
        b.to_async(&rt).iter(|| plain.clone().oneshot(request()));
    });
    g.bench_function("rampart_ietf_headers", |b| {
        b.to_async(&rt).iter(|| ietf.clone().oneshot(request()));
    });
    g.bench_function("rampart_no_policy_hit", |b| {
        b.to_async(&rt).iter(|| bypass.clone().oneshot(request()));
    });
    g.bench_function("tower_governor_smart_ip_headers", |b| {
        b.to_async(&rt)
            .iter(|| governor_prod.clone().oneshot(proxied_request()));
    });
    g.bench_function("rampart_xff_legacy_headers", |b| {
        b.to_async(&rt)
            .iter(|| prod.clone().oneshot(proxied_request()));
    });
    g.finish();

    let server = RedisServer::start();
    let (manager, redis_svc, leased_svc) = rt.block_on(async {
        let client = redis::Client::open(server.url()).unwrap();
        let manager = redis::aio::ConnectionManager::new(client).await.unwrap();
        let layer = RateLimitLayer::builder()
            .policy(Policy::new("bench", quota()))
            .headers(HeaderStyle::None)
            .redis(RedisBackend::from_manager(manager.clone()).timeout(Duration::from_secs(1)))
            .build()
            .unwrap();
        // Leasing: 100 units reserved per round trip, served locally for up to a minute.
        let leased = RateLimitLayer::builder()
            .policy(Policy::new("bench-leased", quota()))
            .headers(HeaderStyle::None)
            .redis(
                RedisBackend::from_manager(manager.clone())
                    .timeout(Duration::from_secs(1))
                    .lease(100, Duration::from_secs(60)),
            )
            .build()
            .unwrap();
        (
            manager,
            layer.layer(service_fn(ok)),
            leased.layer(service_fn(ok)),
        )
    });
    let mut g = c.benchmark_group("rate_limit_redis");
    g.bench_function("raw_get", |b| {
        b.to_async(&rt).iter(|| {
            let mut m = manager.clone();
            async move {
                let v: Option<String> = m.get("bench-key").await.unwrap();
                v
            }
        });
    });
    // The script alone: the `EVALSHA` the layer sends (same key, same arguments: one
    // window, cost 1, the server's time, interval 1 µs, burst 10^9), built the same way.
    let script = redis::Script::new(REDIS_SCRIPT);
    rt.block_on(script.load_async(&mut manager.clone()))
        .unwrap();
    let mut evalsha = redis::cmd("EVALSHA");
    evalsha
        .arg(script.get_hash())
        .arg(1)
        .arg("{rampart-rl:1:bench:ip:203.0.113.7}:0")
        .arg(1)
        .arg("")
        .arg(1)
        .arg(1_000_000_000);
    let raw_script = |mut m: redis::aio::ConnectionManager| {
        let evalsha = &evalsha;
        async move {
            let v: Vec<i64> = evalsha.query_async(&mut m).await.unwrap();
            v
        }
    };
    g.bench_function("raw_script", |b| {
        b.to_async(&rt).iter(|| raw_script(manager.clone()));
    });
    g.bench_function("rampart_decision", |b| {
        b.to_async(&rt)
            .iter(|| redis_svc.clone().oneshot(request()));
    });
    // With leasing (batch 100): one round trip per 100 decisions, the others served
    // from the reservation.
    g.bench_function("rampart_leased_decision", |b| {
        b.to_async(&rt)
            .iter(|| leased_svc.clone().oneshot(request()));
    });
    g.finish();

    // The summary: the anchors and ours in interleaved blocks, in the same process; the
    // median ratio of the blocks is robust to a shared machine's load drifting during
    // the run.
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    // `BENCH_NO_SUMMARY=1`: criterion's measurements only (for a profiler run).
    if std::env::var_os("BENCH_NO_SUMMARY").is_some() {
        return;
    }
    rt.block_on(async {
        let (rounds, n) = (15, 20_000);
        let mut t: [Vec<f64>; 5] = Default::default();
        let mut ratios: [Vec<f64>; 2] = Default::default();
        for round in 0..rounds {
            // The order rotates every round: no variant always runs right after another.
            let mut x = [0.0; 5];
            for k in 0..5 {
                let i = (round + k) % 5;
                x[i] = match i {
                    0 => time_loop(bare, n).await,
                    1 => time_loop(governor.clone(), n).await,
                    2 => time_loop(plain.clone(), n).await,
                    3 => time_loop(ietf.clone(), n).await,
                    _ => time_loop(bypass.clone(), n).await,
                };
            }
            let [bare_ns, gov, plain_ns, ietf_ns, bypass_ns] = x;
            ratios[0].push(plain_ns / gov);
            ratios[1].push(ietf_ns / gov);
            for (v, x) in t.iter_mut().zip([bare_ns, gov, plain_ns, ietf_ns, bypass_ns]) {
                v.push(x);
            }
        }
        let [bare_ns, gov, plain_ns, ietf_ns, bypass_ns] = t.map(median);
        let [r_plain, r_ietf] = ratios.map(median);
        println!("\nsummary (in memory, ns per request, medians of {rounds} interleaved rounds of {n} calls, order rotated every round):");
        println!("  bare service_fn          {bare_ns:8.1}");
        println!("  tower_governor           {gov:8.1}");
        println!("  rampart (no headers)     {plain_ns:8.1}   ratio vs tower_governor: {r_plain:.2}x (target <= 1.0x)");
        println!("  rampart (IETF headers)   {ietf_ns:8.1}   ratio vs tower_governor: {r_ietf:.2}x");
        println!("  rampart (no policy hit)  {bypass_ns:8.1}   (the layer's fixed cost)");

        // Production features: X-Forwarded-For behind a proxy, X-RateLimit-* headers.
        let mut t: [Vec<f64>; 2] = Default::default();
        let mut ratio = Vec::new();
        for round in 0..rounds {
            let mut x = [0.0; 2];
            for k in 0..2 {
                let i = (round + k) % 2;
                x[i] = match i {
                    0 => time_loop_with(governor_prod.clone(), n, proxied_request).await,
                    _ => time_loop_with(prod.clone(), n, proxied_request).await,
                };
            }
            ratio.push(x[1] / x[0]);
            t[0].push(x[0]);
            t[1].push(x[1]);
        }
        let [gov_prod, prod_ns] = t.map(median);
        println!("  tower_governor (SmartIp, use_headers)   {gov_prod:8.1}");
        println!("  rampart (trusted XFF, X-RateLimit-*)   {prod_ns:8.1}   ratio: {:.2}x (target <= 1.0x)", median(ratio));

        let (rounds, n) = (15, 1_000u32);
        let mut t: [Vec<f64>; 3] = Default::default();
        let mut ratios: [Vec<f64>; 2] = Default::default();
        let mut added = Vec::new();
        let raw_get = |mut m: redis::aio::ConnectionManager| async move {
            let start = Instant::now();
            for _ in 0..n {
                let v: Option<String> = m.get("bench-key").await.unwrap();
                black_box(v);
            }
            start.elapsed().as_nanos() as f64 / f64::from(n)
        };
        let script_loop = || async {
            let start = Instant::now();
            for _ in 0..n {
                black_box(raw_script(manager.clone()).await);
            }
            start.elapsed().as_nanos() as f64 / f64::from(n)
        };
        for round in 0..rounds {
            // The order rotates: none always runs right after another.
            let mut x = [0.0; 3];
            for k in 0..3 {
                let i = (round + k) % 3;
                x[i] = match i {
                    0 => raw_get(manager.clone()).await,
                    1 => script_loop().await,
                    _ => time_loop(redis_svc.clone(), n).await,
                };
            }
            ratios[0].push(x[2] / x[0]);
            ratios[1].push(x[1] / x[0]);
            added.push(x[2] - x[1]);
            for (v, x) in t.iter_mut().zip(x) {
                v.push(x);
            }
        }
        let [get, script_ns, dec] = t.map(median);
        let [ratio, script_ratio] = ratios.map(median);
        let added = median(added);
        println!("summary (Redis, ns per request, medians of {rounds} interleaved rounds of {n} calls):");
        println!("  raw GET                  {get:8.1}");
        println!("  the script alone         {script_ns:8.1}   ratio vs GET: {script_ratio:.2}x (the server's share: EVALSHA of REDIS_SCRIPT)");
        println!("  rampart decision         {dec:8.1}   ratio vs GET: {ratio:.2}x (target <= 1.3x); the layer adds {:.1} us to the script (median of the rounds' differences)", added / 1000.0);
    });
    drop(server);

    // Two worker threads, four tasks, 10 000 distinct clients (peer IP key, no headers).
    let mt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    mt.block_on(async {
        let (rounds, n) = (15, 10_000u32);
        let governor = GovernorLayer::new(Arc::new(
            GovernorConfigBuilder::default()
                .period(Duration::from_micros(1))
                .burst_size(1_000_000_000)
                .finish()
                .unwrap(),
        ))
        .layer(service_fn(ok));
        let ours = ours(HeaderStyle::None).layer(service_fn(ok));
        let (mut gov, mut our, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let (g, o) = if round % 2 == 0 {
                let g = time_parallel(governor.clone(), n).await;
                (g, time_parallel(ours.clone(), n).await)
            } else {
                let o = time_parallel(ours.clone(), n).await;
                (time_parallel(governor.clone(), n).await, o)
            };
            gov.push(g);
            our.push(o);
            ratio.push(o / g);
        }
        println!("summary (in memory, 2 worker threads, 4 tasks, 10 000 clients, ns per request, medians of {rounds} alternating rounds):");
        println!("  tower_governor           {:8.1}", median(gov));
        println!("  rampart (no headers)     {:8.1}   ratio: {:.2}x (target <= 1.0x)", median(our), median(ratio));
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
