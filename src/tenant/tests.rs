//! Service-level tests: strategies, chains, outcomes, anti-spoofing, cached store.

use std::{
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use proptest::prelude::*;
use tower::{ServiceExt, service_fn};
use tower_layer::Layer;

use super::*;
use crate::identity::{IdentityReader, UserIdentity};

#[derive(Clone)]
struct Claims {
    tenant: Option<&'static str>,
}

impl UserIdentity for Claims {
    fn user_id(&self) -> &str {
        "alice"
    }
    fn tenant_id(&self) -> Option<&str> {
        self.tenant
    }
}

/// A store that counts its calls, can fail, and can be slow.
#[derive(Clone, Default)]
struct Counting {
    mem: MemoryStore<String>,
    calls: Arc<AtomicUsize>,
    fail: Arc<AtomicBool>,
    delay: Option<Duration>,
}

impl Counting {
    fn with(ids: &[&str]) -> Self {
        let s = Self::default();
        for id in ids {
            s.mem.insert(id, format!("{id}-value")).unwrap();
        }
        s
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl TenantStore for Counting {
    type Tenant = String;

    async fn lookup(&self, id: &TenantId) -> Result<Option<String>, StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(d) = self.delay {
            tokio::time::sleep(d).await;
        }
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreError::new("database is down"));
        }
        self.mem.lookup(id).await
    }
}

/// (tenant id, value, strategy, path and query) the inner service saw.
type Saw = (String, String, StrategyKind, String);

#[derive(Debug, Clone, Default)]
struct Seen {
    calls: Arc<AtomicUsize>,
    last: Arc<Mutex<Option<Saw>>>,
}

impl Seen {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
    fn last(&self) -> Option<Saw> {
        self.last.lock().unwrap().clone()
    }
}

type Svc = super::TenantResolver<
    tower::util::BoxCloneSyncService<Request<()>, Response<String>, Infallible>,
    Counting,
>;

fn service(builder: TenantLayerBuilder<Counting>) -> (Svc, Seen) {
    let seen = Seen::default();
    let s2 = seen.clone();
    let inner = tower::util::BoxCloneSyncService::new(service_fn(move |req: Request<()>| {
        let seen = s2.clone();
        async move {
            seen.calls.fetch_add(1, Ordering::SeqCst);
            let t = req.extensions().get::<ResolvedTenant<String>>().map(|t| {
                (
                    t.id().to_string(),
                    t.value().clone(),
                    t.strategy(),
                    req.uri().path_and_query().unwrap().to_string(),
                )
            });
            *seen.last.lock().unwrap() = t;
            Ok::<_, Infallible>(Response::new("inner".to_owned()))
        }
    }));
    (builder.build().unwrap().layer(inner), seen)
}

fn req(uri: &str, headers: &[(&str, &str)]) -> Request<()> {
    let mut b = Request::builder().uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap()
}

fn as_user(mut r: Request<()>, tenant: &'static str) -> Request<()> {
    r.extensions_mut().insert(Claims {
        tenant: Some(tenant),
    });
    r
}

async fn call(
    svc: &Svc,
    r: Request<()>,
) -> (StatusCode, serde_json::Value, Option<TenantRejection>) {
    let res = svc.clone().oneshot(r).await.unwrap();
    let status = res.status();
    let rej = res.extensions().get::<TenantRejection>().cloned();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    (status, json, rej)
}

fn store() -> Counting {
    Counting::with(&["acme", "globex", "public"])
}

#[tokio::test]
async fn each_strategy_alone() {
    let cases: Vec<(TenantLayerBuilder<Counting>, Request<()>, StrategyKind)> = vec![
        (
            TenantLayer::builder(store()).host("{tenant}.example.com"),
            req("/", &[("host", "ACME.example.com:8080")]),
            StrategyKind::Host,
        ),
        (
            TenantLayer::builder(store()).subdomain_of(["example.org"]),
            req("/", &[("host", "acme.example.org")]),
            StrategyKind::Subdomain,
        ),
        (
            TenantLayer::builder(store()).header(),
            req("/", &[("x-tenant-id", "acme")]),
            StrategyKind::Header,
        ),
        (
            TenantLayer::builder(store()).header_named("x-org"),
            req("/", &[("x-org", "acme")]),
            StrategyKind::Header,
        ),
        (
            TenantLayer::builder(store()).path_prefix("/t/{tenant}"),
            req("/t/acme/orders", &[]),
            StrategyKind::Path,
        ),
        (
            TenantLayer::builder(store()).claim().principal::<Claims>(),
            as_user(req("/", &[]), "acme"),
            StrategyKind::Claim,
        ),
        (
            TenantLayer::builder(store()).custom(|h| {
                h.uri()
                    .query()
                    .and_then(|q| q.strip_prefix("org="))
                    .map(str::to_owned)
            }),
            req("/?org=acme", &[]),
            StrategyKind::Custom,
        ),
        (
            TenantLayer::builder(store()).fallback("acme"),
            req("/", &[]),
            StrategyKind::Fallback,
        ),
    ];
    for (builder, r, kind) in cases {
        let (svc, seen) = service(builder);
        let (status, _, rej) = call(&svc, r).await;
        assert_eq!(status, StatusCode::OK, "{kind:?}");
        assert!(rej.is_none());
        let (id, value, strategy, _) = seen.last().unwrap();
        assert_eq!(
            (id.as_str(), value.as_str(), strategy),
            ("acme", "acme-value", kind)
        );
    }
}

#[tokio::test]
async fn chain_order_and_fallback() {
    let (svc, seen) = service(
        TenantLayer::builder(store())
            .host("{tenant}.example.com")
            .header()
            .fallback("public"),
    );
    // Both host and header: the first strategy (host) decides.
    let both = req(
        "/",
        &[("host", "globex.example.com"), ("x-tenant-id", "acme")],
    );
    assert_eq!(call(&svc, both).await.0, StatusCode::OK);
    assert_eq!(seen.last().unwrap().0, "globex");
    // Host does not match the template: the header decides.
    let hdr = req("/", &[("host", "localhost:3000"), ("x-tenant-id", "acme")]);
    assert_eq!(call(&svc, hdr).await.0, StatusCode::OK);
    assert_eq!(seen.last().unwrap().2, StrategyKind::Header);
    // Nothing: the fallback.
    assert_eq!(call(&svc, req("/", &[])).await.0, StatusCode::OK);
    assert_eq!(seen.last().unwrap().0, "public");
    // An invalid identifier from the first matching strategy is a 400, not a fall-through.
    let bad = req("/", &[("host", "a.b.example.com"), ("x-tenant-id", "acme")]);
    let (status, body, rej) = call(&svc, bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "Invalid tenant");
    assert_eq!(rej.unwrap().strategy(), Some(StrategyKind::Host));
    assert_eq!(seen.calls(), 3);
}

#[tokio::test]
async fn outcomes_missing_unknown_store_error() {
    let st = store();
    let (svc, seen) = service(TenantLayer::builder(st.clone()).header());
    let (status, body, rej) = call(&svc, req("/", &[])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "Tenant required");
    assert_eq!(rej.unwrap().kind(), RejectionKind::Missing);

    let (status, body, rej) = call(&svc, req("/", &[("x-tenant-id", "initech")])).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "Unknown tenant");
    assert_eq!(rej.unwrap().tenant().unwrap().as_str(), "initech");

    st.fail.store(true, Ordering::SeqCst);
    let (status, body, rej) = call(&svc, req("/", &[("x-tenant-id", "acme")])).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"], "Tenant lookup unavailable");
    assert_eq!(rej.unwrap().kind(), RejectionKind::StoreUnavailable);
    assert_eq!(seen.calls(), 0, "the inner service never ran");
    assert_eq!(st.calls(), 2);
}

#[tokio::test]
async fn optional_passes_through_without_tenant() {
    let (mut svc, seen) = service(TenantLayer::builder(store()).header().required(false));
    let _ = svc.get_mut();
    assert!(format!("{svc:?}").contains("TenantResolver"));
    let _ = svc.get_ref();
    let svc = TenantLayer::builder(store())
        .header()
        .required(false)
        .build()
        .unwrap()
        .layer(svc.into_inner());
    assert_eq!(call(&svc, req("/", &[])).await.0, StatusCode::OK);
    assert_eq!(seen.calls(), 1);
    assert!(seen.last().is_none(), "no tenant in extensions");
}

#[tokio::test]
async fn bypass_routes_skip_resolution() {
    let st = store();
    let (svc, seen) = service(
        TenantLayer::builder(st.clone())
            .header()
            .bypass("/health")
            .bypass("/metrics/"),
    );
    for path in ["/health", "/health/live", "/metrics/", "/metrics/x"] {
        assert_eq!(call(&svc, req(path, &[])).await.0, StatusCode::OK, "{path}");
    }
    assert_eq!(seen.calls(), 4);
    assert_eq!(st.calls(), 0, "bypass routes never look anything up");
    for path in [
        "/healthz",
        "/health/../admin",
        "/health/%2e%2e/admin",
        "/metrics",
    ] {
        assert_eq!(
            call(&svc, req(path, &[])).await.0,
            StatusCode::BAD_REQUEST,
            "{path} must not bypass"
        );
    }
    assert_eq!(seen.calls(), 4);
}

#[tokio::test]
async fn path_prefix_stripping() {
    let (svc, seen) = service(TenantLayer::builder(store()).path_prefix_stripped("/t/{tenant}"));
    call(&svc, req("/t/Acme/orders/7?page=2", &[])).await;
    let (id, _, _, pq) = seen.last().unwrap();
    assert_eq!((id.as_str(), pq.as_str()), ("acme", "/orders/7?page=2"));
    call(&svc, req("/t/globex", &[])).await;
    assert_eq!(seen.last().unwrap().3, "/");
    call(&svc, req("http://h.example/t/globex?q", &[])).await;
    assert_eq!(seen.last().unwrap().3, "/?q");

    let (keep, seen) = service(TenantLayer::builder(store()).path_prefix("/t/{tenant}"));
    call(&keep, req("/t/acme/orders", &[])).await;
    assert_eq!(seen.last().unwrap().3, "/t/acme/orders");
}

#[tokio::test]
async fn anti_spoofing_header_and_host() {
    let st = store();
    let (svc, seen) = service(
        TenantLayer::builder(st.clone())
            .host("{tenant}.example.com")
            .header()
            .principal::<Claims>(),
    );
    // A user of acme sending X-Tenant-ID: globex.
    let (status, body, rej) = call(
        &svc,
        as_user(req("/", &[("x-tenant-id", "globex")]), "acme"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"], "Forbidden tenant");
    assert_eq!(rej.unwrap().kind(), RejectionKind::Forbidden);
    // ... or using globex's host.
    let host = as_user(req("/", &[("host", "globex.example.com")]), "acme");
    assert_eq!(call(&svc, host).await.0, StatusCode::FORBIDDEN);
    // Even for a tenant that does not exist: 403, and the store is not asked.
    let ghost = as_user(req("/", &[("x-tenant-id", "initech")]), "acme");
    assert_eq!(call(&svc, ghost).await.0, StatusCode::FORBIDDEN);
    assert_eq!(seen.calls(), 0, "the inner service was never called");
    assert_eq!(st.calls(), 0);

    // The user's own tenant (case-insensitively) is fine.
    let own = as_user(req("/", &[("x-tenant-id", "ACME")]), "Acme");
    assert_eq!(call(&svc, own).await.0, StatusCode::OK);
    // Anonymous requests and principals without a tenant are not checked.
    assert_eq!(
        call(&svc, req("/", &[("x-tenant-id", "globex")])).await.0,
        StatusCode::OK
    );
    let mut no_tenant = req("/", &[("x-tenant-id", "globex")]);
    no_tenant.extensions_mut().insert(Claims { tenant: None });
    assert_eq!(call(&svc, no_tenant).await.0, StatusCode::OK);
    // A malformed principal tenant never matches.
    let weird = as_user(req("/", &[("x-tenant-id", "acme")]), "ac.me");
    assert_eq!(call(&svc, weird).await.0, StatusCode::FORBIDDEN);
    assert_eq!(seen.calls(), 3);

    // Explicitly disabled (operator tools).
    let (open, _) = service(
        TenantLayer::builder(store())
            .header()
            .identity(IdentityReader::new().user::<Claims>())
            .check_principal(false),
    );
    let r = as_user(req("/", &[("x-tenant-id", "globex")]), "acme");
    assert_eq!(call(&open, r).await.0, StatusCode::OK);
}

#[tokio::test]
async fn bad_input_is_400_and_never_looked_up() {
    let st = store();
    let (svc, seen) = service(
        TenantLayer::builder(st.clone())
            .host("{tenant}.example.com")
            .header_named("x-t")
            .path_prefix("/t/{tenant}"),
    );
    let long_host = format!("{}.example.com", "a".repeat(300));
    let long_id = "a".repeat(64);
    let bad: Vec<Request<()>> = vec![
        req("/", &[("host", &long_host)]),
        req("/", &[("host", "evil.acme.example.com")]),
        req("/", &[("host", "xn--80ak6aa92e.example.com")]),
        req("/", &[("host", "acme.example.com:abc")]),
        req("/", &[("x-t", "a.b")]),
        req("/", &[("x-t", "../globex")]),
        req("/", &[("x-t", "a/b")]),
        req("/", &[("x-t", "%61cme")]),
        req("/", &[("x-t", "a\tb")]),
        req("/", &[("x-t", &long_id)]),
        req("/t/%2e%2e/x", &[]),
        req("/t/../x", &[]),
        req("/t/a%2Fb/x", &[]),
        req("/t//x", &[]),
        {
            let mut r = req("/", &[]);
            r.headers_mut().insert(
                "host",
                http::HeaderValue::from_bytes("аcme.example.com".as_bytes()).unwrap(),
            );
            r
        },
        {
            let mut r = req("/", &[]);
            r.headers_mut().insert(
                "x-t",
                http::HeaderValue::from_bytes(b"\xc3\xa9cme").unwrap(),
            );
            r
        },
        {
            let mut r = req("/", &[("x-t", "acme")]);
            r.headers_mut()
                .append("x-t", http::HeaderValue::from_static("globex"));
            r
        },
    ];
    let n = bad.len();
    for (i, r) in bad.into_iter().enumerate() {
        let (status, body, rej) = call(&svc, r).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "case {i}");
        assert_eq!(body["error"], "Invalid tenant", "case {i}");
        assert_eq!(rej.unwrap().kind(), RejectionKind::Invalid);
    }
    assert!(n > 15);
    assert_eq!(st.calls(), 0, "raw input never reaches the store");
    assert_eq!(seen.calls(), 0);
}

#[tokio::test]
async fn custom_responder_and_rejection_extension() {
    let (svc, _) = service(TenantLayer::builder(store()).header().responder(
        |r: &TenantRejection| {
            let mut res = Response::new(Bytes::from(format!("nope: {}", r.kind().as_str())));
            *res.status_mut() = StatusCode::IM_A_TEAPOT;
            res
        },
    ));
    let res = svc
        .oneshot(req("/", &[("x-tenant-id", "nobody")]))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::IM_A_TEAPOT);
    assert_eq!(
        res.extensions().get::<TenantRejection>().unwrap().kind(),
        RejectionKind::Unknown
    );
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"nope: unknown");
}

#[test]
fn builder_errors_say_how_to_fix() {
    let b = || TenantLayer::builder(store());
    let cases = [
        (b().build().unwrap_err(), "no strategy"),
        (b().claim().build().unwrap_err(), ".principal"),
        (
            b().header().fallback("a.b").build().unwrap_err(),
            "fallback",
        ),
        (b().header().bypass("health").build().unwrap_err(), "bypass"),
        (
            b().header().max_id_len(0).build().unwrap_err(),
            "max_id_len",
        ),
        (b().header_named("bad name").build().unwrap_err(), "header"),
        (
            b().subdomain_of(["a b"]).build().unwrap_err(),
            "base domain",
        ),
        (b().path_prefix("t/{tenant}").build().unwrap_err(), "path"),
        (b().path_prefix_stripped("/t").build().unwrap_err(), "path"),
    ];
    for (err, needle) in cases {
        assert!(err.to_string().contains(needle), "{err}");
    }
    let ok = b().header().fallback("Public").build().unwrap();
    assert!(format!("{ok:?}").contains("public"));
    assert!(format!("{:?}", b().header()).contains("Header"));
}

#[tokio::test]
async fn config_from_json() {
    let config: TenantConfig = serde_json::from_str(
        r#"{"strategies": [{"path": {"template": "/t/{tenant}", "strip": true}}, {"header": "x-org"}],
            "fallback": "public", "bypass": ["/health"], "max_id_len": 20, "check_principal": false}"#,
    )
    .unwrap();
    let (svc, seen) = service(TenantLayer::builder(store()).config(&config));
    call(&svc, req("/t/acme/x", &[])).await;
    assert_eq!(seen.last().unwrap().3, "/x");
    call(&svc, req("/", &[("x-org", "globex")])).await;
    assert_eq!(seen.last().unwrap().0, "globex");
    call(&svc, req("/", &[])).await;
    assert_eq!(seen.last().unwrap().0, "public");
    assert_eq!(
        call(&svc, req("/", &[("x-org", &"a".repeat(21))])).await.0,
        StatusCode::BAD_REQUEST
    );
    assert!(serde_json::from_str::<TenantConfig>(r#"{"strategy": []}"#).is_err());
}

// ---- cached store ----

fn cached(st: Counting) -> CachedStore<Counting> {
    CachedStore::builder(st)
        .ttl(Duration::from_secs(60))
        .negative_ttl(Duration::from_secs(5))
        .max_capacity(100)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn cached_store_calls_backing_store_once_per_ttl() {
    let st = store();
    let c = cached(st.clone());
    let acme = TenantId::parse("acme").unwrap();
    for _ in 0..5 {
        assert_eq!(
            c.lookup(&acme).await.unwrap().as_deref(),
            Some("acme-value")
        );
    }
    assert_eq!(st.calls(), 1);
    tokio::time::advance(Duration::from_secs(59)).await;
    c.lookup(&acme).await.unwrap();
    assert_eq!(st.calls(), 1, "still fresh before the TTL");
    tokio::time::advance(Duration::from_secs(2)).await;
    c.lookup(&acme).await.unwrap();
    assert_eq!(st.calls(), 2, "reloaded after the TTL");
    let stats = c.stats();
    assert_eq!((stats.hits, stats.misses), (5, 2));
    assert!((stats.hit_ratio() - 5.0 / 7.0).abs() < 1e-9);

    c.invalidate(&acme).await;
    c.lookup(&acme).await.unwrap();
    assert_eq!(st.calls(), 3, "invalidated");
    c.invalidate_all();
    c.lookup(&acme).await.unwrap();
    assert_eq!(st.calls(), 4);
    assert!(format!("{c:?}").contains("CachedStore"));
}

#[tokio::test(start_paused = true)]
async fn negative_caching_uses_the_shorter_ttl() {
    let st = store();
    let c = cached(st.clone());
    let ghost = TenantId::parse("ghost").unwrap();
    for _ in 0..10 {
        assert_eq!(c.lookup(&ghost).await.unwrap(), None);
    }
    assert_eq!(st.calls(), 1, "unknown identifiers are cached");
    tokio::time::advance(Duration::from_secs(6)).await;
    // The tenant was created meanwhile: found after the negative TTL.
    st.mem.insert("ghost", "boo".into()).unwrap();
    assert_eq!(c.lookup(&ghost).await.unwrap().as_deref(), Some("boo"));
    assert_eq!(st.calls(), 2, "once per negative TTL");

    // Negative caching disabled: every unknown lookup reaches the store.
    let st2 = store();
    let c2 = CachedStore::builder(st2.clone())
        .negative_ttl(Duration::ZERO)
        .build()
        .unwrap();
    for _ in 0..3 {
        c2.lookup(&TenantId::parse("nobody").unwrap())
            .await
            .unwrap();
    }
    assert_eq!(st2.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn store_errors_are_cached_briefly() {
    let st = store();
    let c = cached(st.clone());
    let acme = TenantId::parse("acme").unwrap();
    st.fail.store(true, Ordering::SeqCst);
    assert!(c.lookup(&acme).await.is_err());
    st.fail.store(false, Ordering::SeqCst);
    assert!(
        c.lookup(&acme).await.is_err(),
        "the error is cached for error_ttl"
    );
    assert_eq!(st.calls(), 1);
    tokio::time::advance(Duration::from_millis(2_001)).await;
    assert_eq!(
        c.lookup(&acme).await.unwrap().as_deref(),
        Some("acme-value")
    );
    assert_eq!(st.calls(), 2, "retried after error_ttl");

    // Error caching disabled: the next lookup retries at once.
    let st2 = store();
    let c2 = CachedStore::builder(st2.clone())
        .error_ttl(Duration::ZERO)
        .build()
        .unwrap();
    st2.fail.store(true, Ordering::SeqCst);
    assert!(c2.lookup(&acme).await.is_err());
    assert!(c2.lookup(&acme).await.is_err());
    assert_eq!(st2.calls(), 2);
}

/// Issue 17: 10 concurrent lookups of one tenant against a store failing after 100 ms
/// made 10 store calls, one after the other (the last caller waited 1 s).
#[tokio::test(start_paused = true)]
async fn concurrent_lookups_share_one_failing_store_call() {
    for error_ttl in [Duration::from_secs(2), Duration::ZERO] {
        let st = Counting {
            delay: Some(Duration::from_millis(100)),
            ..store()
        };
        st.fail.store(true, Ordering::SeqCst);
        let c = CachedStore::builder(st.clone())
            .error_ttl(error_ttl)
            .build()
            .unwrap();
        let started = tokio::time::Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let c = c.clone();
            set.spawn(async move { c.lookup(&TenantId::parse("acme").unwrap()).await });
        }
        while let Some(r) = set.join_next().await {
            let e = r.unwrap().unwrap_err();
            assert_eq!(e.to_string(), "database is down", "the error is shared");
        }
        assert_eq!(st.calls(), 1, "single-flight on failure ({error_ttl:?})");
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(100),
            "every caller answered after one store call"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn concurrent_lookups_of_one_id_call_the_store_once() {
    let st = Counting {
        delay: Some(Duration::from_millis(50)),
        ..store()
    };
    let c = cached(st.clone());
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let c = c.clone();
        set.spawn(async move { c.lookup(&TenantId::parse("acme").unwrap()).await });
    }
    while let Some(r) = set.join_next().await {
        assert_eq!(r.unwrap().unwrap().as_deref(), Some("acme-value"));
    }
    assert_eq!(st.calls(), 1, "single-flight");
    assert_eq!(c.stats().misses, 1);
    assert_eq!(c.stats().hits, 15);
}

#[test]
fn cache_builder_errors() {
    let b = || CachedStore::builder(store());
    assert!(b().ttl(Duration::ZERO).build().is_err());
    let e = b()
        .ttl(Duration::from_secs(1))
        .negative_ttl(Duration::from_secs(2))
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("negative_ttl"));
    assert!(b().max_capacity(0).build().is_err());
    let config: CacheConfig =
        serde_json::from_str(r#"{"ttl_secs": 10, "negative_ttl_secs": 1, "max_capacity": 5}"#)
            .unwrap();
    assert!(b().config(&config).build().is_ok());
    assert!(format!("{:?}", b()).contains("ttl"));
}

#[tokio::test(start_paused = true)]
async fn layer_with_cached_store_end_to_end() {
    let st = store();
    let layer = TenantLayer::builder(cached(st.clone()))
        .host("{tenant}.example.com")
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(|req: Request<()>| async move {
        let t = req.extensions().get::<ResolvedTenant<String>>().unwrap();
        Ok::<_, Infallible>(Response::new(t.value().clone()))
    }));
    for _ in 0..3 {
        let res = svc
            .clone()
            .oneshot(req("/", &[("host", "acme.example.com")]))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        for _ in 0..2 {
            let res = svc
                .clone()
                .oneshot(req("/", &[("host", "nope.example.com")]))
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::NOT_FOUND);
        }
    }
    assert_eq!(st.calls(), 2, "one lookup for acme, one for the unknown id");
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn axum_extractors() {
    use axum::{Router, routing::get};
    let app = Router::new()
        .route(
            "/",
            get(|t: Tenant<String>| async move { t.id().to_string() }),
        )
        .route(
            "/opt",
            get(|t: Option<Tenant<String>>| async move {
                t.map_or_else(|| "none".to_owned(), |t| t.0.into_value())
            }),
        )
        .layer(
            TenantLayer::builder(store())
                .header()
                .required(false)
                .build()
                .unwrap(),
        );
    let get = |uri: &str, tenant: Option<&str>| {
        let mut b = Request::builder().uri(uri);
        if let Some(t) = tenant {
            b = b.header("x-tenant-id", t);
        }
        b.body(axum::body::Body::empty()).unwrap()
    };
    let text = |res: axum::response::Response| async move {
        (
            res.status(),
            res.into_body().collect().await.unwrap().to_bytes(),
        )
    };
    let (s, b) = text(app.clone().oneshot(get("/", Some("Acme"))).await.unwrap()).await;
    assert_eq!((s, &b[..]), (StatusCode::OK, &b"acme"[..]));
    let res = app.clone().oneshot(get("/", None)).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(res.extensions().get::<TenantRejection>().is_some());
    let (s, b) = text(app.clone().oneshot(get("/opt", None)).await.unwrap()).await;
    assert_eq!((s, &b[..]), (StatusCode::OK, &b"none"[..]));
    let (_, b) = text(app.oneshot(get("/opt", Some("globex"))).await.unwrap()).await;
    assert_eq!(&b[..], b"globex-value");
}

// ---- property: the first matching strategy decides ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum S {
    Host,
    Header,
    Path,
    Claim,
}

fn raw_id() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        2 => Just(None),
        4 => "[a-zA-Z0-9][a-zA-Z0-9_-]{0,10}".prop_map(Some),
        1 => "[a-z.%_-]{1,5}".prop_map(Some),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn first_matching_strategy_decides(
        order in Just(vec![S::Host, S::Header, S::Path, S::Claim]).prop_shuffle(),
        host in raw_id(), header in raw_id(), path in raw_id(), claim in raw_id(),
    ) {
        // Every valid identifier exists, so only selection and validation matter.
        let st = store_fn(|id: TenantId| async move { Ok::<_, StoreError>(Some(id.to_string())) });
        let mut b = TenantLayer::builder(st).identity(IdentityReader::new().user::<Owned>());
        for s in &order {
            b = match s {
                S::Host => b.host("{tenant}.example.com"),
                S::Header => b.header(),
                S::Path => b.path_prefix("/t/{tenant}"),
                S::Claim => b.claim(),
            };
        }
        let layer = b.build().unwrap();
        let svc = layer.layer(service_fn(|req: Request<()>| async move {
            let id = req.extensions().get::<ResolvedTenant<String>>().map(|t| t.id().to_string());
            let mut res = Response::new(String::new());
            res.headers_mut().insert("x-id", id.unwrap_or_default().parse().unwrap());
            Ok::<_, Infallible>(res)
        }));
        let mut rb = Request::builder();
        if let Some(h) = &host { rb = rb.header("host", format!("{h}.example.com")); }
        if let Some(h) = &header { rb = rb.header("x-tenant-id", h.as_str()); }
        rb = rb.uri(path.as_ref().map_or_else(|| "/".to_owned(), |p| format!("/t/{p}/x")));
        let Ok(mut r) = rb.body(()) else { return Ok(()); };
        if let Some(c) = &claim { r.extensions_mut().insert(Owned(c.clone())); }

        let first = order.iter().find_map(|s| match s {
            S::Host => host.as_ref(),
            S::Header => header.as_ref(),
            S::Path => path.as_ref(),
            S::Claim => claim.as_ref(),
        });
        let res = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap()
            .block_on(svc.oneshot(r)).unwrap();
        match first.map(|raw| TenantId::parse(raw)) {
            None => prop_assert_eq!(res.status(), StatusCode::BAD_REQUEST),
            Some(Err(_)) => prop_assert_eq!(res.status(), StatusCode::BAD_REQUEST),
            Some(Ok(want)) => {
                let principal = claim.as_ref().map(|c| TenantId::parse(c));
                match principal {
                    Some(p) if p.as_ref() != Ok(&want) => {
                        prop_assert_eq!(res.status(), StatusCode::FORBIDDEN);
                    }
                    _ => {
                        prop_assert_eq!(res.status(), StatusCode::OK);
                        prop_assert_eq!(res.headers()["x-id"].to_str().unwrap(), want.as_str());
                    }
                }
            }
        }
    }

    #[test]
    fn extraction_never_panics(host in proptest::collection::vec(any::<u8>(), 0..300), path in "\\PC{0,80}") {
        let [h, s, p] = __extract_for_fuzzing(&host, &path);
        for r in [h, s, p].into_iter().flatten().flatten() {
            prop_assert!(TenantId::parse(&r).is_ok());
        }
    }
}

#[derive(Clone)]
struct Owned(String);

impl UserIdentity for Owned {
    fn user_id(&self) -> &str {
        "u"
    }
    fn tenant_id(&self) -> Option<&str> {
        Some(&self.0)
    }
}

/// Issue 17: the layer had no timeout of its own; a hung store held every request.
#[tokio::test(start_paused = true)]
async fn slow_store_answers_503_after_the_lookup_timeout() {
    let st = Counting {
        delay: Some(Duration::from_secs(30)),
        ..Counting::with(&["acme"])
    };
    let build = |b: TenantLayerBuilder<Counting>| {
        b.host("{tenant}.example.com")
            .build()
            .unwrap()
            .layer(service_fn(|_req: Request<()>| async move {
                Ok::<_, Infallible>(Response::new(String::new()))
            }))
    };
    // By default, 2 s.
    let started = tokio::time::Instant::now();
    let res = build(TenantLayer::builder(st.clone()))
        .oneshot(req("/", &[("host", "acme.example.com")]))
        .await
        .unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "1");
    assert_eq!(res.headers()["content-type"], "application/json");
    let r = res.extensions().get::<TenantRejection>().unwrap();
    assert_eq!(r.kind(), RejectionKind::StoreUnavailable);
    assert!(r.store_error().unwrap().to_string().contains("timed out"));

    // Configured.
    let started = tokio::time::Instant::now();
    let res = build(TenantLayer::builder(st.clone()).lookup_timeout(Duration::from_millis(300)))
        .oneshot(req("/", &[("host", "acme.example.com")]))
        .await
        .unwrap();
    assert_eq!(started.elapsed(), Duration::from_millis(300));
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        TenantLayer::builder(st)
            .host("{tenant}.example.com")
            .lookup_timeout(Duration::ZERO)
            .build()
            .is_err()
    );
}
