//! The rate limiter's behaviour through the layer, in memory and (feature `redis`) on a
//! real Redis from `rampart_test_support`.

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceExt, service_fn};

use super::*;
use crate::{
    body::ResponseBody,
    client_ip::{ClientIpResolver, PeerAddr, TrustedProxies},
    identity::{IdentityReader, TenantIdentity, UserIdentity},
};

#[derive(Clone)]
pub(super) struct User(pub(super) &'static str);
impl UserIdentity for User {
    fn user_id(&self) -> &str {
        self.0
    }
}

#[derive(Clone)]
struct Tenant(&'static str);
impl TenantIdentity for Tenant {
    fn tenant_id(&self) -> &str {
        self.0
    }
}

type Svc = RateLimit<
    tower::util::BoxCloneSyncService<Request<Full<Bytes>>, Response<Full<Bytes>>, Infallible>,
>;

fn service(layer: &RateLimitLayer) -> Svc {
    use tower_layer::Layer as _;
    layer.layer(tower::util::BoxCloneSyncService::new(service_fn(
        |_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        },
    )))
}

fn req(method: Method, path: &str, peer: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .extension(PeerAddr(peer.parse::<SocketAddr>().unwrap()))
        .body(Full::default())
        .unwrap()
}

fn get(path: &str, peer: &str) -> Request<Full<Bytes>> {
    req(Method::GET, path, peer)
}

async fn send(svc: &mut Svc, req: Request<Full<Bytes>>) -> Response<ResponseBody<Full<Bytes>>> {
    svc.ready().await.unwrap().call(req).await.unwrap()
}

async fn status(svc: &mut Svc, req: Request<Full<Bytes>>) -> u16 {
    send(svc, req).await.status().as_u16()
}

async fn json(res: Response<ResponseBody<Full<Bytes>>>) -> serde_json::Value {
    serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap()
}

const PEER: &str = "203.0.113.5:40000";

/// The origin ERP defaults, written with the builder.
fn erp_builder() -> RateLimitBuilder {
    RateLimitLayer::builder()
        .policy(
            Policy::new("api", Quota::per_hour(100))
                .path("/api/*")
                .key(Key::User),
        )
        .policy(
            Policy::new("login", Quota::per_minute(5))
                .post("/accounts/login/")
                .key(Key::ClientIp),
        )
        .policy(
            Policy::new("admin", Quota::per_hour(50))
                .path("/admin/*")
                .key(Key::User),
        )
        .exempt("/health/*")
}

#[tokio::test(start_paused = true)]
async fn login_is_limited_with_json_429_and_headers() {
    let layer = erp_builder().headers(HeaderStyle::Both).build().unwrap();
    let mut svc = service(&layer);
    for i in 0..5u64 {
        let res = send(&mut svc, req(Method::POST, "/accounts/login/", PEER)).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["ratelimit-policy"], "\"login\";q=5;w=60");
        assert_eq!(
            res.headers()["ratelimit"],
            format!("\"login\";r={};t={}", 4 - i, 12 * (i + 1)).as_str()
        );
        assert_eq!(
            res.headers()["x-ratelimit-remaining"],
            (4 - i).to_string().as_str()
        );
    }
    let res = send(&mut svc, req(Method::POST, "/accounts/login/", PEER)).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers()["retry-after"], "12");
    assert_eq!(res.headers()["content-type"], "application/json");
    assert_eq!(res.headers()["ratelimit"], "\"login\";r=0;t=60");
    assert_eq!(res.headers()["x-ratelimit-limit"], "5");
    let rejection = res.extensions().get::<Rejection>().unwrap().clone();
    assert_eq!(rejection.kind(), RejectionKind::RateLimited);
    assert_eq!(rejection.policy(), "login");
    assert_eq!(
        json(res).await,
        serde_json::json!({
            "error": "Rate limit exceeded",
            "detail": "Too many requests. Please try again in 12 seconds.",
            "retry_after": 12
        })
    );
    // GET on the login path, another client, exempt health: not limited.
    assert_eq!(status(&mut svc, get("/accounts/login/", PEER)).await, 200);
    assert_eq!(
        status(
            &mut svc,
            req(Method::POST, "/accounts/login/", "198.51.100.1:1")
        )
        .await,
        200
    );
    let health = send(&mut svc, get("/health/live/", PEER)).await;
    assert_eq!(health.status(), 200);
    assert!(!health.headers().contains_key("ratelimit"));
    // Twelve seconds later one more login is allowed.
    tokio::time::advance(Duration::from_secs(12)).await;
    assert_eq!(
        status(&mut svc, req(Method::POST, "/accounts/login/", PEER)).await,
        200
    );
    assert_eq!(
        status(&mut svc, req(Method::POST, "/accounts/login/", PEER)).await,
        429
    );
}

#[tokio::test(start_paused = true)]
async fn per_user_policy_counts_users_and_falls_back_to_ip() {
    let layer = erp_builder()
        .identity(IdentityReader::new().user::<User>())
        .build()
        .unwrap();
    let mut svc = service(&layer);
    let as_user = |name: &'static str, peer: &str| {
        let mut r = get("/api/orders", peer);
        r.extensions_mut().insert(User(name));
        r
    };
    for _ in 0..100 {
        assert_eq!(status(&mut svc, as_user("alice", PEER)).await, 200);
    }
    assert_eq!(
        status(&mut svc, as_user("alice", "198.51.100.7:1")).await,
        429,
        "same user, other IP"
    );
    assert_eq!(status(&mut svc, as_user("bob", PEER)).await, 200);
    // Anonymous requests are counted by client IP, never a 500.
    for _ in 0..100 {
        assert_eq!(
            status(&mut svc, get("/api/orders", "192.0.2.1:1")).await,
            200
        );
    }
    assert_eq!(
        status(&mut svc, get("/api/orders", "192.0.2.1:1")).await,
        429
    );
    assert_eq!(
        status(&mut svc, get("/api/orders", "192.0.2.2:1")).await,
        200
    );
    // An anonymous request without any peer address cannot be counted by IP: refused
    // loudly (`MissingPeer::Reject`, the default), never a shared bucket.
    let no_peer = || Request::get("/api/x").body(Full::default()).unwrap();
    assert_eq!(status(&mut svc, no_peer()).await, 500);
    // 100 per hour: after 36 s one more request of alice's is allowed.
    tokio::time::advance(Duration::from_secs(36)).await;
    assert_eq!(status(&mut svc, as_user("alice", PEER)).await, 200);
    assert_eq!(status(&mut svc, as_user("alice", PEER)).await, 429);
}

#[tokio::test(start_paused = true)]
async fn anonymous_skip_and_shared() {
    let layer = RateLimitLayer::builder()
        .policy(
            Policy::new("skip", Quota::per_minute(1))
                .path("/s")
                .key(Key::User)
                .anonymous(Anonymous::Skip),
        )
        .policy(
            Policy::new("shared", Quota::per_minute(1))
                .path("/h")
                .key(Key::User)
                .anonymous(Anonymous::Shared),
        )
        .build()
        .unwrap();
    let mut svc = service(&layer);
    for _ in 0..3 {
        assert_eq!(status(&mut svc, get("/s", PEER)).await, 200);
    }
    assert_eq!(status(&mut svc, get("/h", PEER)).await, 200);
    assert_eq!(
        status(&mut svc, get("/h", "192.0.2.9:1")).await,
        429,
        "anonymous share one bucket"
    );
}

#[tokio::test(start_paused = true)]
async fn every_matching_policy_is_checked_and_windows_are_atomic() {
    for style in STYLES {
        let layer = RateLimitLayer::builder()
            .policy(
                Policy::new("burst", Quota::per_second(2))
                    .window(Quota::per_minute(3))
                    .path("/api/*"),
            )
            .policy(Policy::new("writes", Quota::per_minute(1)).method(Method::POST))
            .headers(style)
            .build()
            .unwrap();
        let headers = style == HeaderStyle::Ietf;
        let mut svc = service(&layer);
        let res = send(&mut svc, req(Method::POST, "/api/a", PEER)).await;
        assert_eq!(res.status(), 200);
        if headers {
            assert_eq!(
                res.headers()["ratelimit-policy"],
                "\"burst-0\";q=2;w=1, \"burst-1\";q=3;w=60, \"writes\";q=1;w=60"
            );
        }
        let res = send(&mut svc, req(Method::POST, "/api/a", PEER)).await;
        assert_eq!(res.status(), 429, "the second policy rejects ({style:?})");
        assert_eq!(
            res.extensions().get::<Rejection>().unwrap().policy(),
            "writes"
        );
        assert_eq!(res.headers().contains_key("ratelimit"), headers);
        // The POST rejected by `writes` was still counted by `burst` (policies are
        // checked in order); one second later the per-second window has room, the minute
        // one has one.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(status(&mut svc, get("/api/a", PEER)).await, 200);
        for _ in 0..3 {
            let res = send(&mut svc, get("/api/a", PEER)).await;
            assert_eq!(res.status(), 429, "the minute window is full");
            assert_eq!(res.headers()["retry-after"], "19");
            if headers {
                // Atomic windows: the per-second window was not charged by the rejections.
                assert_eq!(
                    res.headers()["ratelimit"],
                    "\"burst-0\";r=1;t=1, \"burst-1\";r=0;t=59"
                );
            }
        }
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(
            status(&mut svc, get("/api/a", PEER)).await,
            200,
            "minute window refilled one"
        );
    }
}

/// Both decision paths: with headers (`plan`) and without (`plan_in_memory`).
const STYLES: [HeaderStyle; 2] = [HeaderStyle::Ietf, HeaderStyle::None];

#[tokio::test(start_paused = true)]
async fn shadow_mode_counts_but_never_rejects() {
    for style in STYLES {
        let layer = RateLimitLayer::builder()
            .policy(Policy::new("shadow", Quota::per_minute(1)).shadow(true))
            .headers(style)
            .build()
            .unwrap();
        let mut svc = service(&layer);
        for _ in 0..5 {
            let res = send(&mut svc, get("/", PEER)).await;
            assert_eq!(res.status(), 200, "{style:?}");
            assert!(!res.headers().contains_key("ratelimit"));
        }
        assert_eq!(layer.memory_keys(), 1, "the shadow policy did count");
    }
}

#[tokio::test(start_paused = true)]
async fn keys_tenant_header_global_custom_and_cost() {
    let layer = RateLimitLayer::builder()
        .identity(IdentityReader::new().tenant::<Tenant>())
        .policy(
            Policy::new("tenant", Quota::per_minute(1))
                .path("/t")
                .key(Key::Tenant),
        )
        .policy(
            Policy::new("header", Quota::per_minute(1))
                .path("/k")
                .key(Key::header("x-api-key").unwrap()),
        )
        .policy(
            Policy::new("global", Quota::per_minute(2))
                .path("/g")
                .key(Key::Global),
        )
        .policy(
            Policy::new("custom", Quota::per_minute(1))
                .path("/c/*")
                .key(Key::custom(|r| {
                    r.uri().path().strip_prefix("/c/").map(str::to_owned)
                })),
        )
        .policy(
            Policy::new("cost", Quota::per_minute(10))
                .path("/expensive")
                .cost(5),
        )
        .build()
        .unwrap();
    let mut svc = service(&layer);
    let tenant = |t: &'static str| {
        let mut r = get("/t", PEER);
        r.extensions_mut().insert(Tenant(t));
        r
    };
    assert_eq!(status(&mut svc, tenant("acme")).await, 200);
    assert_eq!(status(&mut svc, tenant("acme")).await, 429);
    assert_eq!(status(&mut svc, tenant("globex")).await, 200);
    let keyed = |k: &[u8]| {
        let mut r = get("/k", PEER);
        r.headers_mut()
            .insert("x-api-key", http::HeaderValue::from_bytes(k).unwrap());
        r
    };
    assert_eq!(status(&mut svc, keyed(b"k1")).await, 200);
    assert_eq!(status(&mut svc, keyed(b"k1")).await, 429);
    assert_eq!(status(&mut svc, keyed(b"k2")).await, 200);
    let long = "x".repeat(100_000);
    assert_eq!(status(&mut svc, keyed(long.as_bytes())).await, 200);
    assert_eq!(
        status(&mut svc, keyed(long.as_bytes())).await,
        429,
        "long keys are hashed, still distinct"
    );
    assert_eq!(
        status(&mut svc, keyed(b"\xff\xfe")).await,
        200,
        "non-UTF-8 values are hashed"
    );
    assert_eq!(status(&mut svc, keyed(b"\xff\xfe")).await, 429);
    assert_eq!(status(&mut svc, get("/g", PEER)).await, 200);
    assert_eq!(status(&mut svc, get("/g", "192.0.2.1:1")).await, 200);
    assert_eq!(status(&mut svc, get("/g", "192.0.2.2:1")).await, 429);
    assert_eq!(status(&mut svc, get("/c/a", PEER)).await, 200);
    assert_eq!(status(&mut svc, get("/c/a", PEER)).await, 429);
    assert_eq!(status(&mut svc, get("/c/b", PEER)).await, 200);
    assert_eq!(status(&mut svc, get("/expensive", PEER)).await, 200);
    assert_eq!(status(&mut svc, get("/expensive", PEER)).await, 200);
    assert_eq!(status(&mut svc, get("/expensive", PEER)).await, 429);
}

#[tokio::test(start_paused = true)]
async fn spoofed_forwarded_for_is_ignored_unless_from_a_trusted_proxy() {
    let layer = RateLimitLayer::builder()
        .client_ip(ClientIpResolver::new(
            TrustedProxies::new(["10.0.0.0/8"]).unwrap(),
        ))
        .policy(Policy::new("ip", Quota::per_minute(1)))
        .build()
        .unwrap();
    let mut svc = service(&layer);
    let xff = |peer: &str, xff: &str| {
        let mut r = get("/", peer);
        r.headers_mut()
            .insert("x-forwarded-for", xff.parse().unwrap());
        r
    };
    // An attacker rotating X-Forwarded-For from an untrusted address is one client.
    assert_eq!(status(&mut svc, xff(PEER, "1.1.1.1")).await, 200);
    assert_eq!(status(&mut svc, xff(PEER, "2.2.2.2")).await, 429);
    // Behind the trusted proxy, each forwarded client has its own bucket.
    assert_eq!(
        status(&mut svc, xff("10.0.0.1:1", "198.51.100.1")).await,
        200
    );
    assert_eq!(
        status(&mut svc, xff("10.0.0.1:1", "198.51.100.2")).await,
        200
    );
    assert_eq!(
        status(&mut svc, xff("10.0.0.2:1", "198.51.100.1")).await,
        429
    );
    // Garbage is ignored: the proxy itself is the client.
    assert_eq!(
        status(&mut svc, xff("10.0.0.1:1", "not an ip, ###")).await,
        200
    );
    assert_eq!(status(&mut svc, xff("10.0.0.1:1", "%%%")).await, 429);
    // IPv6 clients of one /64 share a bucket.
    assert_eq!(status(&mut svc, get("/", "[2001:db8:1:2::1]:1")).await, 200);
    assert_eq!(
        status(&mut svc, get("/", "[2001:db8:1:2::ffff]:1")).await,
        429
    );
    assert_eq!(status(&mut svc, get("/", "[2001:db8:1:3::1]:1")).await, 200);
}

#[tokio::test(start_paused = true)]
async fn rejection_is_swappable() {
    let layer = RateLimitLayer::builder()
        .policy(Policy::new("p", Quota::per_minute(1)))
        .headers(HeaderStyle::None)
        .on_rejection(|r: &Rejection| {
            let mut res = Response::new(Bytes::from(format!("slow down: {}", r.policy())));
            *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            res
        })
        .build()
        .unwrap();
    let mut svc = service(&layer);
    let ok = send(&mut svc, get("/", PEER)).await;
    assert!(!ok.headers().contains_key("ratelimit"));
    let res = send(&mut svc, get("/", PEER)).await;
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "60");
    assert!(res.extensions().get::<Rejection>().is_some());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"slow down: p");
}

#[tokio::test(start_paused = true)]
async fn time_behaviour_with_manual_clock() {
    let clock = ManualClock::new();
    let layer = RateLimitLayer::builder()
        .memory(MemoryBackend::new().clock(Clock::manual(&clock)))
        .policy(Policy::new("p", Quota::per_second(2).burst(4)))
        .build()
        .unwrap();
    let mut svc = service(&layer);
    for _ in 0..4 {
        assert_eq!(status(&mut svc, get("/", PEER)).await, 200);
    }
    assert_eq!(status(&mut svc, get("/", PEER)).await, 429);
    clock.advance(Duration::from_millis(499));
    assert_eq!(status(&mut svc, get("/", PEER)).await, 429);
    clock.advance(Duration::from_millis(1));
    assert_eq!(status(&mut svc, get("/", PEER)).await, 200);
    clock.advance(Duration::from_secs(2));
    layer.evict_idle();
    assert_eq!(layer.memory_keys(), 0, "fully recovered keys are dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_100_of_1000_concurrent_requests_in_memory() {
    let layer = RateLimitLayer::builder()
        .policy(Policy::new("p", Quota::per_hour(100)))
        .build()
        .unwrap();
    let svc = service(&layer);
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move { svc.oneshot(get("/", PEER)).await.unwrap().status() })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap() == StatusCode::OK {
            ok += 1;
        }
    }
    assert_eq!(ok, 100);
}

#[test]
fn toml_file_builds_the_same_limiter_as_the_builder() {
    let text = include_str!("../../docs/rate-limit.example.toml");
    let config: RateLimitConfig = toml::from_str(text).unwrap();
    let from_file = config.builder().unwrap().build().unwrap();
    let from_code = erp_builder().build().unwrap();
    assert_eq!(
        format!("{:?}", from_file.limiter.policies),
        format!("{:?}", from_code.limiter.policies)
    );
    assert_eq!(
        format!("{:?}", from_file.limiter.exempt_patterns()),
        format!("{:?}", from_code.limiter.exempt_patterns())
    );
}

#[test]
fn bad_configurations_are_errors_with_advice() {
    let dup = RateLimitLayer::builder()
        .policy(Policy::new("a", Quota::per_minute(1)))
        .policy(Policy::new("a", Quota::per_minute(2)))
        .build()
        .unwrap_err();
    assert!(dup.message().contains("used twice"), "{dup}");
    let zero = RateLimitLayer::builder()
        .policy(Policy::new("z", Quota::per_minute(0)))
        .build()
        .unwrap_err();
    assert!(zero.message().contains("at least 1"));
    let burst = RateLimitLayer::builder()
        .policy(Policy::new("b", Quota::per_minute(3).burst(0)))
        .build()
        .unwrap_err();
    assert!(burst.message().contains("burst"));
    let empty = RateLimitLayer::builder().exempt("").build().unwrap_err();
    assert!(empty.message().contains("empty"));
    let debug = format!("{:?}", RateLimitLayer::builder().exempt("/x"));
    assert!(debug.contains("/x"));
    let layer = RateLimitLayer::builder().build().unwrap();
    assert!(format!("{layer:?}").contains("policies: 0"));
    assert!(format!("{:?}", service(&layer)).contains("RateLimit"));
}

#[tokio::test]
async fn no_policy_passes_through_untouched() {
    let layer = RateLimitLayer::builder().build().unwrap();
    let mut svc = service(&layer);
    let res = send(&mut svc, get("/", PEER)).await;
    assert_eq!(res.status(), 200);
    assert!(res.headers().is_empty());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"ok");
    let mut svc2 = svc.clone();
    assert!(svc2.get_mut().ready().await.is_ok());
    let _ = svc.get_ref();
    let _inner = svc.into_inner();
}

#[cfg(feature = "tonic")]
mod grpc;
/// Decisions of `policy` with `outcome`, as counted by the test recorder.
fn decisions(recorder: &crate::test_util::TestRecorder, policy: &str, outcome: &str) -> u64 {
    recorder.counter_total(
        "rampart_rate_limit_decisions_total",
        &[("policy", policy), ("outcome", outcome)],
    )
}

#[tokio::test(start_paused = true)]
async fn decisions_are_counted_by_policy_and_outcome() {
    for style in STYLES {
        let layer = RateLimitLayer::builder()
            .policy(Policy::new("login", Quota::per_minute(2)))
            .policy(Policy::new("watch", Quota::per_minute(1)).shadow(true))
            .headers(style)
            .build()
            .unwrap();
        let mut svc = service(&layer);
        let recorder = crate::test_util::TestRecorder::default();
        // The in-memory decision happens in `call`, so a local recorder sees it.
        let futures: Vec<_> = metrics::with_local_recorder(&recorder, || {
            (0..3).map(|_| svc.call(get("/", PEER))).collect()
        });
        let mut statuses = Vec::new();
        for f in futures {
            statuses.push(f.await.unwrap().status().as_u16());
        }
        assert_eq!(statuses, [200, 200, 429], "{style:?}");
        assert_eq!(decisions(&recorder, "login", "allowed"), 2);
        assert_eq!(decisions(&recorder, "login", "rejected"), 1);
        assert_eq!(decisions(&recorder, "watch", "allowed"), 1);
        assert_eq!(
            decisions(&recorder, "watch", "shadow_rejected"),
            1,
            "the third request stopped at `login`"
        );
    }
}

#[cfg(feature = "redis")]
mod redis_backend;

fn no_peer(path: &str) -> Request<Full<Bytes>> {
    Request::builder().uri(path).body(Full::default()).unwrap()
}

/// Without a peer address, the default is a loud 500 naming the fix, never a silent
/// shared bucket that one client can exhaust for everyone.
#[tokio::test]
async fn missing_peer_is_rejected_by_default_with_the_fix_named() {
    let layer = RateLimitLayer::builder()
        .policy(Policy::new("api", Quota::per_minute(2)))
        .build()
        .unwrap();
    let mut svc = service(&layer);
    let res = send(&mut svc, no_peer("/x")).await;
    assert_eq!(res.status(), 500);
    assert!(!res.headers().contains_key("retry-after"));
    assert_eq!(
        res.extensions().get::<Rejection>().unwrap().kind(),
        RejectionKind::MissingPeer
    );
    let body = json(res).await;
    assert_eq!(body["error"], "Client address unknown");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("into_make_service_with_connect_info"),
        "{body}"
    );
    // A request with a peer is limited as usual.
    assert_eq!(status(&mut svc, get("/x", PEER)).await, 200);
}

#[tokio::test]
async fn missing_peer_shared_and_skip_are_explicit_choices() {
    let shared = RateLimitLayer::builder()
        .policy(Policy::new("api", Quota::per_minute(2)))
        .missing_peer(MissingPeer::Shared)
        .build()
        .unwrap();
    let mut svc = service(&shared);
    assert_eq!(status(&mut svc, no_peer("/x")).await, 200);
    assert_eq!(status(&mut svc, no_peer("/x")).await, 200);
    assert_eq!(status(&mut svc, no_peer("/x")).await, 429);
    let skip = RateLimitLayer::builder()
        .policy(Policy::new("api", Quota::per_minute(2)))
        .policy(Policy::new("all", Quota::per_minute(3)).key(Key::Global))
        .missing_peer(MissingPeer::Skip)
        .build()
        .unwrap();
    let mut svc = service(&skip);
    // The per-IP policy skips; the global one still counts.
    for _ in 0..3 {
        assert_eq!(status(&mut svc, no_peer("/x")).await, 200);
    }
    assert_eq!(status(&mut svc, no_peer("/x")).await, 429);
    let from_file: RateLimitConfig = serde_json::from_value(serde_json::json!({
        "missing_peer": "shared",
        "policy": [{"name": "api", "rate": "1/minute"}]
    }))
    .unwrap();
    let mut svc = service(&from_file.builder().unwrap().build().unwrap());
    assert_eq!(status(&mut svc, no_peer("/x")).await, 200);
    assert_eq!(status(&mut svc, no_peer("/x")).await, 429);
}

#[tokio::test]
async fn missing_peer_with_headers_on_is_rejected_too() {
    let layer = RateLimitLayer::builder()
        .policy(Policy::new("api", Quota::per_minute(2)))
        .headers(HeaderStyle::Both)
        .build()
        .unwrap();
    let mut svc = service(&layer);
    assert_eq!(status(&mut svc, no_peer("/x")).await, 500);
}

#[tokio::test]
async fn allowlisted_clients_are_not_limited() {
    let layer = RateLimitLayer::builder()
        .policy(Policy::new("api", Quota::per_minute(1)))
        .policy(Policy::new("login", Quota::per_minute(1)).path("/login"))
        .allow(["192.0.2.0/24", "::ffff:100.64.0.0/120"])
        .allow_for("login", ["198.51.100.7"])
        .build()
        .unwrap();
    let mut svc = service(&layer);
    for _ in 0..5 {
        assert_eq!(status(&mut svc, get("/x", "192.0.2.9:1")).await, 200);
        assert_eq!(status(&mut svc, get("/login", "192.0.2.9:1")).await, 200);
    }
    // An IPv4-mapped network holds the IPv4 clients.
    for _ in 0..3 {
        assert_eq!(status(&mut svc, get("/x", "100.64.0.9:1")).await, 200);
    }
    // Exempt from `login` only: `api` still applies to it.
    assert_eq!(status(&mut svc, get("/login", "198.51.100.7:1")).await, 200);
    assert_eq!(status(&mut svc, get("/login", "198.51.100.7:1")).await, 429);
    assert_eq!(status(&mut svc, get("/x", PEER)).await, 200);
    assert_eq!(status(&mut svc, get("/x", PEER)).await, 429);
    for (bad, want) in [
        (RateLimitLayer::builder().allow([" "]), "empty entry"),
        (
            RateLimitLayer::builder().allow(["10.0.0.0/33"]),
            "`10.0.0.0/33`",
        ),
        (
            RateLimitLayer::builder()
                .policy(Policy::new("api", Quota::per_minute(1)))
                .allow_for("nope", ["10.0.0.1"]),
            "`nope`",
        ),
    ] {
        let err = bad.build().unwrap_err().to_string();
        assert!(err.contains(want), "{err}");
    }
}

/// A user named `anonymous` and a header value `anonymous` never share the bucket of
/// requests without a key value.
#[tokio::test]
async fn anonymous_is_a_subject_of_its_own() {
    let layer = RateLimitLayer::builder()
        .policy(
            Policy::new("api", Quota::per_minute(1))
                .key(Key::User)
                .anonymous(Anonymous::Shared),
        )
        .policy(
            Policy::new("keys", Quota::per_minute(1))
                .path("/k")
                .key(Key::header("x-api-key").unwrap())
                .anonymous(Anonymous::Shared),
        )
        .identity(IdentityReader::new().user::<User>())
        .build()
        .unwrap();
    let mut svc = service(&layer);
    assert_eq!(status(&mut svc, get("/x", PEER)).await, 200);
    assert_eq!(status(&mut svc, get("/x", PEER)).await, 429);
    let mut named = get("/x", PEER);
    named.extensions_mut().insert(User("anonymous"));
    assert_eq!(
        status(&mut svc, named).await,
        200,
        "user `anonymous` has its own bucket"
    );
    let mut keyed = get("/k", PEER);
    keyed.extensions_mut().insert(User("k"));
    assert_eq!(status(&mut svc, keyed).await, 200);
    let mut anon_key = get("/k", PEER);
    anon_key.extensions_mut().insert(User("k2"));
    anon_key
        .headers_mut()
        .insert("x-api-key", "anonymous".parse().unwrap());
    assert_eq!(
        status(&mut svc, anon_key).await,
        200,
        "header value `anonymous` too"
    );
}

/// The eviction attack: a flood of fresh keys of a long-window policy must not
/// push out an exhausted short-window key (which would give back its attempts).
#[tokio::test(start_paused = true)]
async fn a_flood_on_one_policy_never_resets_another_policys_exhausted_key() {
    let layer = RateLimitLayer::builder()
        .policy(Policy::new("login", Quota::per_minute(5)).path("/login"))
        .policy(
            Policy::new("keys", Quota::per_day(1000))
                .path("/api/*")
                .key(Key::header("x-api-key").unwrap()),
        )
        .memory(MemoryBackend::new().max_keys(1000))
        .build()
        .unwrap();
    let mut svc = service(&layer);
    for _ in 0..5 {
        assert_eq!(status(&mut svc, get("/login", PEER)).await, 200);
    }
    assert_eq!(status(&mut svc, get("/login", PEER)).await, 429);
    for i in 0..20_000 {
        let mut r = get("/api/x", "198.51.100.1:1");
        r.headers_mut()
            .insert("x-api-key", format!("k{i}").parse().unwrap());
        assert_eq!(status(&mut svc, r).await, 200);
    }
    assert!(
        layer.limiter.memory().unwrap().len() <= 1000,
        "memory stays bounded"
    );
    for _ in 0..5 {
        assert_eq!(
            status(&mut svc, get("/login", PEER)).await,
            429,
            "the exhausted login key survived the flood"
        );
    }
}

/// `check`, `peek` or `record` of one unit of the `failures` policy for `key`: allowed?
pub(super) async fn direct(layer: &RateLimitLayer, op: &str, key: &str) -> bool {
    let decision = match op {
        "check" => layer.check("failures", key, 1).await,
        "peek" => layer.peek("failures", key, 1).await,
        _ => layer.record("failures", key, 1).await,
    };
    decision.unwrap().is_allowed()
}

#[tokio::test(start_paused = true)]
async fn direct_decisions_check_peek_and_record() {
    let layer = RateLimitLayer::builder()
        .policy(Policy::new("failures", Quota::per_minute(2)).key(Key::Direct))
        .build()
        .unwrap();
    // A direct-only policy limits no request by itself.
    let mut svc = service(&layer);
    for _ in 0..5 {
        assert_eq!(status(&mut svc, get("/x", PEER)).await, 200);
    }
    assert!(direct(&layer, "peek", "acme/alice").await);
    assert!(direct(&layer, "record", "acme/alice").await);
    assert!(direct(&layer, "record", "acme/alice").await);
    // Recorded past the quota: counted anyway (the bucket stays full), never an error.
    assert!(!direct(&layer, "record", "acme/alice").await);
    let refused = layer.check("failures", "acme/alice", 1).await.unwrap();
    assert!(!refused.is_allowed());
    assert!(refused.retry_after() > Duration::ZERO);
    let res = refused.into_response().unwrap();
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key("retry-after"));
    assert!(direct(&layer, "check", "acme/bob").await);
    // A peek consumes nothing.
    for _ in 0..5 {
        assert!(direct(&layer, "peek", "acme/carol").await);
    }
    let err = layer.check("nope", "x", 1).await.unwrap_err();
    assert!(err.to_string().contains("`nope`"));
    tokio::time::advance(Duration::from_secs(30)).await;
    assert!(direct(&layer, "check", "acme/alice").await);
}

/// A service answering 401 on `/fail` and 200 elsewhere, for counting by outcome.
pub(super) fn failing_service(layer: &RateLimitLayer) -> Svc {
    use tower_layer::Layer as _;
    layer.layer(tower::util::BoxCloneSyncService::new(service_fn(
        |req: Request<Full<Bytes>>| async move {
            tokio::task::yield_now().await;
            let mut res = Response::new(Full::new(Bytes::from_static(b"x")));
            if req.uri().path() == "/fail" {
                *res.status_mut() = StatusCode::UNAUTHORIZED;
            }
            Ok::<_, Infallible>(res)
        },
    )))
}

pub(super) fn failures_policy() -> Policy {
    Policy::new("failures", Quota::per_minute(5)).count_if(|s| s == StatusCode::UNAUTHORIZED)
}

#[tokio::test(start_paused = true)]
async fn count_if_counts_only_matching_responses() {
    for headers in [HeaderStyle::None, HeaderStyle::Ietf] {
        let layer = RateLimitLayer::builder()
            .policy(failures_policy())
            .headers(headers)
            .build()
            .unwrap();
        let mut svc = failing_service(&layer);
        for _ in 0..100 {
            assert_eq!(
                status(&mut svc, get("/ok", PEER)).await,
                200,
                "successes never consume"
            );
        }
        for _ in 0..5 {
            assert_eq!(status(&mut svc, get("/fail", PEER)).await, 401);
        }
        assert_eq!(status(&mut svc, get("/ok", PEER)).await, 429, "{headers:?}");
        assert_eq!(status(&mut svc, get("/fail", PEER)).await, 429);
        assert_eq!(status(&mut svc, get("/ok", "192.0.2.77:1")).await, 200);
        tokio::time::advance(Duration::from_secs(12)).await;
        assert_eq!(status(&mut svc, get("/ok", PEER)).await, 200);
    }
}

/// Under 1000 concurrent requests, every counted response is counted: afterwards the
/// bucket is full, and 1000 concurrent successes consume nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_if_is_exact_under_concurrency() {
    let layer = RateLimitLayer::builder()
        .policy(failures_policy())
        .build()
        .unwrap();
    let run = |path: &'static str| {
        let layer = layer.clone();
        async move {
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..1000 {
                let mut svc = failing_service(&layer);
                set.spawn(async move { status(&mut svc, get(path, PEER)).await });
            }
            let mut by_status = std::collections::BTreeMap::new();
            while let Some(s) = set.join_next().await {
                *by_status.entry(s.unwrap()).or_insert(0) += 1;
            }
            by_status
        }
    };
    let ok = run("/ok").await;
    assert_eq!(ok.get(&200), Some(&1000), "{ok:?}");
    let failed = run("/fail").await;
    assert!(failed.get(&401).copied().unwrap_or(0) >= 5, "{failed:?}");
    let mut svc = failing_service(&layer);
    assert_eq!(status(&mut svc, get("/ok", PEER)).await, 429, "{failed:?}");
}

#[derive(Clone)]
pub(super) struct Plan(pub(super) &'static str);

pub(super) fn tiered_policy() -> Policy {
    Policy::new("api", Quota::per_minute(1))
        .key(Key::User)
        .tiers(
            [
                ("free", Quota::per_minute(2)),
                ("pro", Quota::per_minute(4)),
            ],
            |req| match req.extensions().get::<Plan>() {
                Some(Plan("internal")) => None,
                Some(p) => Some(p.0),
                None => Some("free"),
            },
        )
}

pub(super) fn as_plan(user: &'static str, plan: &'static str) -> Request<Full<Bytes>> {
    let mut r = get("/x", PEER);
    r.extensions_mut().insert(User(user));
    r.extensions_mut().insert(Plan(plan));
    r
}

pub(super) async fn tiers_suite(layer: &RateLimitLayer) {
    let mut svc = service(layer);
    for _ in 0..4 {
        assert_eq!(status(&mut svc, as_plan("alice", "pro")).await, 200);
    }
    assert_eq!(status(&mut svc, as_plan("alice", "pro")).await, 429);
    // A plan change never mixes counts: alice's free bucket is her own.
    assert_eq!(status(&mut svc, as_plan("alice", "free")).await, 200);
    assert_eq!(status(&mut svc, as_plan("alice", "free")).await, 200);
    let refused = send(&mut svc, as_plan("alice", "free")).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(
        refused.extensions().get::<Rejection>().unwrap().policy(),
        "api.free"
    );
    // An unknown tier gets the policy's own quota; `None` is not limited.
    assert_eq!(status(&mut svc, as_plan("bob", "gold")).await, 200);
    assert_eq!(status(&mut svc, as_plan("bob", "gold")).await, 429);
    for _ in 0..10 {
        assert_eq!(status(&mut svc, as_plan("carol", "internal")).await, 200);
    }
}

#[tokio::test(start_paused = true)]
async fn tiers_give_each_plan_its_quota_and_buckets() {
    let layer = RateLimitLayer::builder()
        .policy(tiered_policy())
        .identity(IdentityReader::new().user::<User>())
        .build()
        .unwrap();
    assert_eq!(layer.policy_names().collect::<Vec<_>>(), ["api"]);
    tiers_suite(&layer).await;
    let bad = RateLimitLayer::builder()
        .policy(
            Policy::new("api", Quota::per_minute(1))
                .tiers([("a b", Quota::per_minute(2))], |_| None),
        )
        .build()
        .unwrap_err();
    assert!(bad.to_string().contains("api.a b"), "{bad}");
}
