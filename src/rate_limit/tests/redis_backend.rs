//! The Redis backend on real servers: exactness across instances, equivalence with the
//! in-memory backend, failure modes and recovery, timeouts, NOSCRIPT, expiry, Cluster.

use std::time::{Duration, Instant};

use rampart_test_support::{RedisCluster, RedisServer};
use redis::AsyncCommands;

use super::*;
use crate::rate_limit::backend::{memory::MemoryStore, redis::BackendError};

/// A backend with a generous timeout: the test machine is busy, and the timeout has its
/// own test.
async fn backend(url: &str) -> RedisBackend {
    RedisBackend::connect(url)
        .await
        .unwrap()
        .timeout(Duration::from_secs(1))
}

fn one_policy(quota: Quota) -> RateLimitBuilder {
    RateLimitLayer::builder().policy(Policy::new("p", quota))
}

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_100_of_1000_concurrent_requests_across_four_instances() {
    // Four separate layers, four connection managers: four simulated app servers.
    let server = RedisServer::start();
    let (ok, _) = run_four(&server.url(), Quota::per_hour(100), None, "exact").await;
    assert_eq!(ok, 100);
}

#[tokio::test]
async fn same_sequence_same_answers_in_memory_and_redis() {
    let server = RedisServer::start();
    let store = backend(&server.url()).await.build();
    let memory = MemoryStore::new(1000, Clock::manual(&ManualClock::new()));
    let policy = Policy::new("eq", Quota::per_second(3).burst(5))
        .window(Quota::per_minute(40))
        .cost(2)
        .compile(0, 1)
        .unwrap();
    let subject = crate::rate_limit::policy::Subject::Ip("192.0.2.44".parse().unwrap());
    // A deterministic pseudo-random sequence of arrival gaps (0..700 ms).
    let mut now: u64 = 1_700_000_000_000_000;
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut allowed = 0;
    for i in 0..300 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        now += seed % 700_000;
        let m = memory.check_at(0, subject.clone(), &policy.windows, policy.cost, now, true);
        let r = store.eval(&policy, &subject, Some(now)).await.unwrap();
        assert_eq!(m, r, "decision {i} at {now}");
        allowed += usize::from(m.allowed);
    }
    assert!(
        allowed > 20 && allowed < 280,
        "the sequence exercises both answers: {allowed}"
    );
}

/// Arrival times go through Lua's doubles and back: round instants (which a careless
/// conversion writes in exponent form, `1.8e+15`) are stored as exact integers.
#[tokio::test]
async fn round_instants_are_stored_exactly() {
    let server = RedisServer::start();
    let store = backend(&server.url()).await.build();
    let memory = MemoryStore::new(1000, Clock::manual(&ManualClock::new()));
    let policy = Policy::new("round", Quota::per_second(2).burst(3))
        .compile(0, 1)
        .unwrap();
    let subject = crate::rate_limit::policy::Subject::Global;
    for i in 0..40u64 {
        let now = 1_800_000_000_000_000 + i * 250_000;
        let m = memory.check_at(0, subject.clone(), &policy.windows, policy.cost, now, true);
        let r = store.eval(&policy, &subject, Some(now)).await.unwrap();
        assert_eq!(m, r, "decision {i} at {now}");
    }
    let mut conn = raw(&server.url()).await;
    let stored: String = conn.get("{rampart-rl:1:round:global:}:0").await.unwrap();
    let tat: u64 = stored.parse().unwrap();
    // Every instant and interval is a multiple of 250 ms: so is an exact arrival time.
    assert!(
        tat > 1_800_000_000_000_000 && tat.is_multiple_of(250_000),
        "stored as {stored}"
    );
}

#[tokio::test]
async fn keys_share_a_hash_tag_expire_and_use_the_prefix() {
    let server = RedisServer::start();
    let layer = RateLimitLayer::builder()
        .policy(Policy::new("two", Quota::per_second(5)).window(Quota::per_minute(30)))
        .redis(backend(&server.url()).await.prefix("myapp"))
        .build()
        .unwrap();
    let mut svc = service(&layer);
    let res = send(&mut svc, get("/", PEER)).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["ratelimit"],
        "\"two-0\";r=4;t=1, \"two-1\";r=29;t=2"
    );
    let mut con = raw(&server.url()).await;
    let mut keys: Vec<String> = con.keys("*").await.unwrap();
    keys.sort();
    assert_eq!(
        keys,
        [
            "{myapp:1:two:ip:203.0.113.5}:0",
            "{myapp:1:two:ip:203.0.113.5}:1"
        ]
    );
    for k in &keys {
        let ttl: i64 = con.pttl(k).await.unwrap();
        assert!(ttl > 0 && ttl <= 2_001, "{k} expires: {ttl}");
    }
    // A user-supplied long key never reaches Redis unbounded.
    let layer = RateLimitLayer::builder()
        .policy(Policy::new("h", Quota::per_second(5)).key(Key::header("x-k").unwrap()))
        .redis(backend(&server.url()).await.prefix("long"))
        .build()
        .unwrap();
    let mut svc = service(&layer);
    let mut r = get("/", PEER);
    r.headers_mut()
        .insert("x-k", "z".repeat(50_000).parse().unwrap());
    assert_eq!(status(&mut svc, r).await, 200);
    let long: Vec<String> = con.keys("{long*").await.unwrap();
    assert_eq!(long.len(), 1);
    assert!(long[0].len() < 260, "{}", long[0].len());
}

#[tokio::test]
async fn script_is_reloaded_after_noscript() {
    let server = RedisServer::start();
    let layer = one_policy(Quota::per_minute(2))
        .redis(backend(&server.url()).await)
        .build()
        .unwrap();
    let mut svc = service(&layer);
    assert_eq!(status(&mut svc, get("/", PEER)).await, 200);
    let mut con = raw(&server.url()).await;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut con)
        .await
        .unwrap();
    let res = send(&mut svc, get("/", PEER)).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["ratelimit"],
        "\"p\";r=0;t=60",
        "decided by Redis, not a fallback"
    );
    assert_eq!(status(&mut svc, get("/", PEER)).await, 429);
}

/// Waits (real time: an external process restarts) until Redis decides again.
async fn until_redis_answers(svc: &mut Svc, peer: &str) -> Response<ResponseBody<Full<Bytes>>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let res = send(svc, get("/", peer)).await;
        if res
            .headers()
            .get("ratelimit")
            .is_some_and(|v| v == "\"p\";r=2;t=20")
            || Instant::now() > deadline
        {
            return res;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn failure_mode_open_allows_and_recovers() {
    let mut server = RedisServer::start();
    let layer = one_policy(Quota::per_minute(3))
        .redis(
            backend(&server.url())
                .await
                .failure_mode(FailureMode::Open)
                .retry_interval(Duration::ZERO),
        )
        .build()
        .unwrap();
    let mut svc = service(&layer);
    for _ in 0..3 {
        assert_eq!(status(&mut svc, get("/", PEER)).await, 200);
    }
    assert_eq!(status(&mut svc, get("/", PEER)).await, 429);
    server.stop();
    for _ in 0..5 {
        let res = send(&mut svc, get("/", PEER)).await;
        assert_eq!(res.status(), 200, "open: allowed while Redis is down");
        assert!(!res.headers().contains_key("ratelimit"));
    }
    server.restart();
    let res = until_redis_answers(&mut svc, PEER).await;
    assert_eq!(
        res.headers()["ratelimit"],
        "\"p\";r=2;t=20",
        "recovered without a restart"
    );
}

#[tokio::test]
async fn failure_mode_closed_answers_503_json_and_recovers() {
    let mut server = RedisServer::start();
    let layer = one_policy(Quota::per_minute(3))
        .redis(
            backend(&server.url())
                .await
                .failure_mode(FailureMode::Closed)
                .retry_interval(Duration::ZERO),
        )
        .build()
        .unwrap();
    let mut svc = service(&layer);
    assert_eq!(status(&mut svc, get("/", PEER)).await, 200);
    server.stop();
    let res = send(&mut svc, get("/", PEER)).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        res.extensions().get::<Rejection>().unwrap().kind(),
        RejectionKind::BackendUnavailable
    );
    assert_eq!(res.headers()["retry-after"], "1");
    let body = json(res).await;
    assert_eq!(body["error"], "Service unavailable");
    assert_eq!(body["retry_after"], 1);
    server.restart();
    let res = until_redis_answers(&mut svc, PEER).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["ratelimit"], "\"p\";r=2;t=20");
}

#[tokio::test]
async fn failure_mode_local_fallback_divides_the_quota_and_recovers() {
    let mut server = RedisServer::start();
    let layer = one_policy(Quota::per_minute(3))
        .redis(
            backend(&server.url())
                .await
                .failure_mode(FailureMode::LocalFallback { divisor: 3 })
                .retry_interval(Duration::ZERO),
        )
        .build()
        .unwrap();
    let mut svc = service(&layer);
    assert_eq!(status(&mut svc, get("/", PEER)).await, 200);
    server.stop();
    // 3 per minute over 3 instances: 1 per minute locally.
    let res = send(&mut svc, get("/", PEER)).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["ratelimit"], "\"p\";r=0;t=60");
    let res = send(&mut svc, get("/", PEER)).await;
    assert_eq!(res.status(), 429, "the fallback enforces the divided quota");
    assert_eq!(res.headers()["retry-after"], "60");
    assert_eq!(layer.memory_keys(), 1);
    server.restart();
    let res = until_redis_answers(&mut svc, PEER).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["ratelimit"], "\"p\";r=2;t=20");
}

#[tokio::test]
async fn after_a_failure_redis_is_left_alone_for_the_retry_interval() {
    let mut server = RedisServer::start();
    let clock = ManualClock::new();
    let layer = one_policy(Quota::per_minute(3))
        .redis(
            backend(&server.url())
                .await
                .failure_mode(FailureMode::LocalFallback { divisor: 3 })
                .clock(Clock::manual(&clock))
                .retry_interval(Duration::from_secs(5)),
        )
        .build()
        .unwrap();
    let mut svc = service(&layer);
    server.stop();
    assert_eq!(status(&mut svc, get("/", "192.0.2.1:1")).await, 200);
    server.restart();
    // Redis is back, but the retry interval has not passed: still the fallback.
    let started = Instant::now();
    let res = send(&mut svc, get("/", "192.0.2.2:1")).await;
    assert_eq!(res.headers()["ratelimit"], "\"p\";r=0;t=60");
    assert!(
        started.elapsed() < Duration::from_millis(40),
        "no Redis call while marked down"
    );
    clock.advance(Duration::from_secs(5));
    let res = until_redis_answers(&mut svc, "192.0.2.3:1").await;
    assert_eq!(res.headers()["ratelimit"], "\"p\";r=2;t=20");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_times_out_into_the_failure_mode() {
    let server = RedisServer::start_with_args(&["--enable-debug-command", "yes"]);
    let layer = one_policy(Quota::per_minute(3))
        .redis(
            backend(&server.url())
                .await
                .timeout(Duration::from_millis(50))
                .failure_mode(FailureMode::Open),
        )
        .build()
        .unwrap();
    let mut svc = service(&layer);
    assert!(
        send(&mut svc, get("/", PEER))
            .await
            .headers()
            .contains_key("ratelimit")
    );
    let sleeper = stall(&server, "0.5");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let res = send(&mut svc, get("/", PEER)).await;
    let took = started.elapsed();
    assert_eq!(res.status(), 200);
    assert!(
        !res.headers().contains_key("ratelimit"),
        "decided by the failure mode"
    );
    assert!(
        took < Duration::from_millis(400),
        "the timeout cut the call short: {took:?}"
    );
    sleeper.await.unwrap();
    let err = BackendError::Timeout;
    assert_eq!(err.to_string(), "redis timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_work_on_a_three_master_cluster() {
    let cluster = RedisCluster::start();
    let layer = RateLimitLayer::builder()
        .policy(Policy::new("c", Quota::per_second(2)).window(Quota::per_minute(3)))
        .redis(
            RedisBackend::cluster(cluster.urls())
                .await
                .unwrap()
                .timeout(Duration::from_secs(2)),
        )
        .build()
        .unwrap();
    let mut svc = service(&layer);
    for i in 0..30 {
        let peer = format!("198.51.100.{i}:1");
        assert_eq!(status(&mut svc, get("/", &peer)).await, 200);
        assert_eq!(status(&mut svc, get("/", &peer)).await, 200);
        let res = send(&mut svc, get("/", &peer)).await;
        assert_eq!(res.status(), 429, "client {i}");
        assert_eq!(
            res.headers()["ratelimit"],
            "\"c-0\";r=0;t=1, \"c-1\";r=1;t=40"
        );
    }
    // The keys are spread over the masters.
    let mut nodes_with_keys = 0;
    for url in cluster.urls() {
        let mut con = raw(&url).await;
        let n: i64 = redis::cmd("DBSIZE").query_async(&mut con).await.unwrap();
        if n > 0 {
            nodes_with_keys += 1;
        }
    }
    assert!(nodes_with_keys >= 2, "keys on {nodes_with_keys} masters");
    assert!(format!("{layer:?}").contains("cluster"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_cluster_master_only_affects_the_keys_of_its_slots() {
    let mut cluster = RedisCluster::start();
    let layer = one_policy(Quota::per_minute(1000))
        .redis(
            RedisBackend::cluster(cluster.urls())
                .await
                .unwrap()
                .timeout(Duration::from_millis(300))
                .failure_mode(FailureMode::Closed),
        )
        .build()
        .unwrap();
    let mut svc = service(&layer);
    let peers: Vec<String> = (0..24).map(|i| format!("198.51.100.{i}:1")).collect();
    for peer in &peers {
        assert_eq!(status(&mut svc, get("/", peer)).await, 200);
    }
    // Which master holds each client's key (`{…:198.51.100.i}:0`).
    let dead_port = cluster.ports()[0];
    let mut con = raw(&cluster.urls()[0]).await;
    let on_dead: Vec<String> = con.keys("*").await.unwrap();
    let on_dead = |peer: &str| {
        let ip = peer.trim_end_matches(":1");
        on_dead.iter().any(|k| k.contains(&format!(":{ip}}}")))
    };
    let dead = peers.iter().filter(|p| on_dead(p)).count();
    assert!(
        dead > 0 && dead < peers.len(),
        "{dead} of {} keys on :{dead_port}",
        peers.len()
    );

    cluster.stop_node(0);
    // Twice over, interleaved: a failure on the dead master's slots must not put the
    // other masters' keys into the failure mode (the retry interval is per slot).
    for round in 0..2 {
        for peer in &peers {
            let expected = if on_dead(peer) { 503 } else { 200 };
            assert_eq!(
                status(&mut svc, get("/", peer)).await,
                expected,
                "round {round}, {peer}"
            );
        }
    }
}

#[test]
fn cluster_slots_match_redis() {
    use crate::rate_limit::backend::redis::key_slot;
    // Values from `CLUSTER KEYSLOT` and the Redis Cluster specification.
    assert_eq!(key_slot("123456789"), 0x31c3);
    assert_eq!(key_slot("foo"), 12182);
    assert_eq!(key_slot("{user1000}.following"), key_slot("user1000"));
    assert_eq!(key_slot("{}.x"), key_slot("{}.x"));
    assert_ne!(
        key_slot("{}.x"),
        key_slot(""),
        "an empty tag hashes the whole key"
    );
    assert_eq!(key_slot("a{b}c{d}"), key_slot("b"));
}

/// Keeps `server` (started with `--enable-debug-command yes`) busy for `secs` seconds
/// (`DEBUG SLEEP`); the handle ends when the server answers again.
fn stall(server: &RedisServer, secs: &'static str) -> tokio::task::JoinHandle<()> {
    let url = server.url();
    tokio::spawn(async move {
        let mut con = raw(&url).await;
        let _: Result<(), _> = redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg(secs)
            .query_async(&mut con)
            .await;
    })
}

/// Script calls Redis has served since the last `CONFIG RESETSTAT`.
async fn script_calls(con: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(con)
        .await
        .unwrap();
    info.lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| l.split(['=', ',']).nth(1)?.parse::<u64>().ok())
        .sum()
}

/// 1000 concurrent requests of one client over four instances; (allowed, script calls).
async fn run_four(url: &str, quota: Quota, lease: Option<u32>, prefix: &str) -> (u32, u64) {
    let mut con = raw(url).await;
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut con)
        .await
        .unwrap();
    let mut services = Vec::new();
    for _ in 0..4 {
        let mut b = backend(url)
            .await
            .timeout(Duration::from_secs(5))
            .prefix(prefix);
        if let Some(batch) = lease {
            b = b.lease(batch, Duration::from_secs(10));
        }
        let svc = service(&one_policy(quota).redis(b).build().unwrap());
        // Load the script (another client's key) before counting.
        let warm = svc.clone().oneshot(get("/", "192.0.2.99:1")).await.unwrap();
        assert_eq!(warm.status(), StatusCode::OK);
        services.push(svc);
    }
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut con)
        .await
        .unwrap();
    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            let svc = services[i % 4].clone();
            tokio::spawn(async move { svc.oneshot(get("/", PEER)).await.unwrap().status() })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        let s = t.await.unwrap();
        assert!(
            s == StatusCode::OK || s == StatusCode::TOO_MANY_REQUESTS,
            "{s}"
        );
        ok += u32::from(s == StatusCode::OK);
    }
    (ok, script_calls(&mut con).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leasing_cuts_round_trips_and_never_over_admits() {
    let server = RedisServer::start();
    let url = server.url();
    // A quota far above the traffic: leasing's home ground.
    let big = Quota::per_hour(100_000);
    let (plain_ok, plain_calls) = run_four(&url, big, None, "plain-big").await;
    let (leased_ok, leased_calls) = run_four(&url, big, Some(10), "leased-big").await;
    // A quota the traffic exhausts: exactness at the end of the quota.
    let small = Quota::per_hour(100);
    let (plain_exact, plain_exact_calls) = run_four(&url, small, None, "plain-small").await;
    let (leased_exact, leased_exact_calls) = run_four(&url, small, Some(10), "leased-small").await;
    println!(
        "leasing (batch 10, 4 instances, 1000 concurrent requests):\n  \
         quota 100000/h: plain {plain_ok} allowed, {plain_calls} round trips; leased {leased_ok} allowed, {leased_calls} round trips\n  \
         quota 100/h:    plain {plain_exact} allowed, {plain_exact_calls} round trips; leased {leased_exact} allowed ({} over, {} under), {leased_exact_calls} round trips",
        leased_exact.saturating_sub(plain_exact),
        plain_exact.saturating_sub(leased_exact),
    );
    assert_eq!((plain_ok, leased_ok), (1000, 1000));
    assert!(plain_calls >= 1000, "{plain_calls}");
    // About one round trip per batch per instance: 1000 / 10, plus the first batch of
    // each instance racing.
    assert!(
        leased_calls <= 150,
        "{leased_calls} round trips for 1000 decisions"
    );
    assert_eq!(plain_exact, 100);
    assert!(
        leased_exact <= 100,
        "leasing never admits more than the quota"
    );
    assert!(
        leased_exact >= 100 - 4 * 9,
        "at most batch - 1 units per instance are stranded: {leased_exact}"
    );
    // Refusals are repeated locally within Redis' retry delay.
    assert!(
        leased_exact_calls < plain_exact_calls / 2,
        "{leased_exact_calls}"
    );
}

/// A reservation was taken from the shared quota: while Redis is down it still answers
/// its key, and only keys without one get the failure mode.
#[tokio::test]
async fn a_live_lease_answers_while_redis_is_down() {
    let mut server = RedisServer::start();
    let layer = one_policy(Quota::per_minute(1000))
        .redis(
            backend(&server.url())
                .await
                .failure_mode(FailureMode::Closed)
                .retry_interval(Duration::from_secs(30))
                .lease(10, Duration::from_secs(60)),
        )
        .build()
        .unwrap();
    let mut svc = service(&layer);
    // The first request reserves 10 units: 9 left for this key on this instance.
    assert_eq!(status(&mut svc, get("/", PEER)).await, 200);
    server.stop();
    // Another key finds Redis gone: Redis is marked down for the retry interval.
    assert_eq!(
        status(&mut svc, get("/", "192.0.2.99:1")).await,
        503,
        "no reservation: the failure mode"
    );
    for i in 0..9 {
        assert_eq!(
            status(&mut svc, get("/", PEER)).await,
            200,
            "leased unit {i}"
        );
    }
    assert_eq!(
        status(&mut svc, get("/", PEER)).await,
        503,
        "reservation used up: the failure mode"
    );
}

/// Requests of one key waiting for the same round trip do not each wait out a timeout
/// when it fails: after the first timeout, the others see Redis marked down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_on_a_failed_lease_call_do_not_time_out_one_by_one() {
    let server = RedisServer::start_with_args(&["--enable-debug-command", "yes"]);
    let layer = one_policy(Quota::per_minute(1000))
        .redis(
            backend(&server.url())
                .await
                .timeout(Duration::from_millis(200))
                .failure_mode(FailureMode::Open)
                .lease(10, Duration::from_secs(60)),
        )
        .build()
        .unwrap();
    let svc = service(&layer);
    let sleeper = stall(&server, "2");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let waiters: Vec<_> = (0..5)
        .map(|_| {
            let mut svc = svc.clone();
            tokio::spawn(async move { send(&mut svc, get("/", PEER)).await })
        })
        .collect();
    for w in waiters {
        let res = w.await.unwrap();
        assert_eq!(res.status(), 200, "open: allowed");
        assert!(
            !res.headers().contains_key("ratelimit"),
            "decided by the failure mode, not by Redis"
        );
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(700),
        "one timeout for all five, not one each: {took:?}"
    );
    sleeper.await.unwrap();
}

/// The retry interval counts from the end of the failed call: a timeout longer than the
/// interval still leaves Redis alone afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_longer_than_the_retry_interval_still_marks_redis_down() {
    let server = RedisServer::start_with_args(&["--enable-debug-command", "yes"]);
    let layer = one_policy(Quota::per_minute(1000))
        .redis(
            backend(&server.url())
                .await
                .timeout(Duration::from_millis(300))
                .retry_interval(Duration::from_millis(200))
                .failure_mode(FailureMode::Open),
        )
        .build()
        .unwrap();
    let mut svc = service(&layer);
    let sleeper = stall(&server, "2");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let res = send(&mut svc, get("/", PEER)).await;
    assert!(!res.headers().contains_key("ratelimit"), "timed out");
    let started = Instant::now();
    let res = send(&mut svc, get("/", PEER)).await;
    let took = started.elapsed();
    assert!(!res.headers().contains_key("ratelimit"));
    assert!(
        took < Duration::from_millis(150),
        "marked down: no second timeout ({took:?})"
    );
    sleeper.await.unwrap();
}

/// The leasing attack: instance A reserves a batch, the shared bucket refills
/// for instance B, then both spend at once. Reserved units that have leaked out of the
/// bucket must not be served: no short window admits more than the burst (was 17 of a
/// burst of 10 within a few milliseconds).
#[tokio::test]
async fn leasing_keeps_the_burst_when_the_bucket_refills() {
    let server = RedisServer::start();
    let url = server.url();
    let layer = || async {
        one_policy(Quota::per_second(10))
            .redis(backend(&url).await.lease(10, Duration::from_millis(900)))
            .build()
            .unwrap()
    };
    let (a, b) = (layer().await, layer().await);
    let (mut a, mut b) = (service(&a), service(&b));
    // A reserves 10 units (serving 1) on a full bucket.
    assert_eq!(status(&mut a, get("/", PEER)).await, 200);
    // Real time: Redis' own clock refills the bucket (7 units in 700 ms).
    tokio::time::sleep(Duration::from_millis(700)).await;
    let start = Instant::now();
    let mut admitted = 0;
    for _ in 0..10 {
        admitted += u32::from(status(&mut b, get("/", PEER)).await == 200);
        admitted += u32::from(status(&mut a, get("/", PEER)).await == 200);
    }
    let took = start.elapsed();
    println!("leasing burst: {admitted} admitted in {took:?} (burst 10)");
    // Within a window shorter than one interval, Redis alone admits at most the burst
    // (plus the unit that refills if the window straddles an interval boundary).
    if took < Duration::from_millis(90) {
        assert!(admitted <= 11, "{admitted} admitted in {took:?}");
    }
    assert!(admitted >= 7, "the refilled units are usable: {admitted}");
}

#[tokio::test]
async fn direct_decisions_on_redis() {
    let server = RedisServer::start();
    let layer = RateLimitLayer::builder()
        .policy(Policy::new("failures", Quota::per_minute(2)).key(Key::Direct))
        .redis(backend(&server.url()).await)
        .build()
        .unwrap();
    assert!(super::direct(&layer, "peek", "acme/alice").await);
    assert!(super::direct(&layer, "peek", "acme/alice").await);
    assert!(super::direct(&layer, "check", "acme/alice").await);
    assert!(super::direct(&layer, "record", "acme/alice").await);
    assert!(!super::direct(&layer, "record", "acme/alice").await);
    let refused = layer.check("failures", "acme/alice", 1).await.unwrap();
    assert!(!refused.is_allowed());
    assert_eq!(refused.into_response().unwrap().status(), 429);
    assert!(!super::direct(&layer, "peek", "acme/alice").await);
    assert!(super::direct(&layer, "check", "acme/bob").await);
    // Concurrent records are all counted: exactly the quota is then used up.
    let many = futures_like_join(&layer, 50).await;
    assert_eq!(many, 2, "two of fifty fitted");
    assert!(!super::direct(&layer, "check", "acme/carol").await);
}

async fn futures_like_join(layer: &RateLimitLayer, n: usize) -> usize {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let layer = layer.clone();
        set.spawn(async move { super::direct(&layer, "record", "acme/carol").await });
    }
    let mut fitted = 0;
    while let Some(r) = set.join_next().await {
        fitted += usize::from(r.unwrap());
    }
    fitted
}

#[tokio::test]
async fn count_if_on_redis_counts_only_matching_responses() {
    let server = RedisServer::start();
    let layer = RateLimitLayer::builder()
        .policy(super::failures_policy())
        .redis(backend(&server.url()).await)
        .build()
        .unwrap();
    let mut svc = super::failing_service(&layer);
    for _ in 0..50 {
        assert_eq!(status(&mut svc, get("/ok", PEER)).await, 200);
    }
    for _ in 0..5 {
        assert_eq!(status(&mut svc, get("/fail", PEER)).await, 401);
    }
    assert_eq!(status(&mut svc, get("/fail", PEER)).await, 429);
    assert_eq!(status(&mut svc, get("/ok", PEER)).await, 429);
    assert_eq!(status(&mut svc, get("/ok", "192.0.2.78:1")).await, 200);
}

#[tokio::test]
async fn tiers_on_redis() {
    let server = RedisServer::start();
    let layer = RateLimitLayer::builder()
        .policy(super::tiered_policy())
        .identity(crate::identity::IdentityReader::new().user::<super::User>())
        .redis(backend(&server.url()).await)
        .build()
        .unwrap();
    super::tiers_suite(&layer).await;
}
