//! The response cache on the trial balance, and two instances sharing one Redis: one
//! rate-limit truth, coherent caches, explicit failure modes.

mod common;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    extract::ConnectInfo,
    http::{Method, Request},
};
use common::{Res, TempDir, TestApp};
use rampart_erp::{Config, ledger};
use rampart_test_support::RedisServer;
use serde_json::{Value, json};

fn tb_request(token: &str, etag: Option<&str>) -> Request<Body> {
    let mut b = Request::get("/api/v1/reports/trial-balance")
        .header("authorization", format!("Bearer {token}"));
    if let Some(e) = etag {
        b = b.header("if-none-match", e);
    }
    b.body(Body::empty()).unwrap()
}

fn total(res: &Res) -> i64 {
    assert_eq!(res.status, 200, "{}", res.text());
    res.json()["total_debit"].as_i64().unwrap()
}

fn etag(res: &Res) -> String {
    res.headers["etag"].to_str().unwrap().to_owned()
}

fn new_entry(debit: &str, credit: &str, amount: i64) -> ledger::NewEntry {
    serde_json::from_value(json!({
        "date": "2026-02-01",
        "description": "written behind the cache's back",
        "lines": [
            {"account_id": debit, "debit": amount},
            {"account_id": credit, "credit": amount}
        ]
    }))
    .unwrap()
}

#[tokio::test]
async fn trial_balance_is_cached_with_etags_and_invalidated_by_posting() {
    let t = TestApp::sqlite().await;
    let tok = t.token("acme", "user").await;
    let cash = t.account_id(&tok, "1000").await;
    let sales = t.account_id(&tok, "4000").await;

    let first = t.send(tb_request(&tok, None)).await;
    assert_eq!(total(&first), 0);
    let tag = etag(&first);
    let not_modified = t.send(tb_request(&tok, Some(&tag))).await;
    assert_eq!(not_modified.status, 304);
    assert!(not_modified.body.is_empty());

    // A write that bypasses `entry_posted` is not seen: the report is served from the
    // cache (this is what proves it is cached at all) ...
    let me = t.get("/api/v1/users/me", &tok).await.json();
    let user_id = me["id"].as_str().unwrap().to_owned();
    ledger::create_entry(
        t.state.db(),
        "acme",
        &user_id,
        &new_entry(&cash, &sales, 7),
        None,
    )
    .await
    .unwrap();
    assert_eq!(total(&t.send(tb_request(&tok, None)).await), 0);
    // ... until the tenant's tag is invalidated.
    t.state.entry_posted("acme").await;
    assert_eq!(total(&t.send(tb_request(&tok, None)).await), 7);

    // Posting through the API invalidates before answering: read-your-writes.
    assert_eq!(t.post_entry(&tok, &cash, &sales, 100).await.status, 201);
    let fresh = t.send(tb_request(&tok, Some(&tag))).await;
    assert_eq!(total(&fresh), 107, "the old ETag no longer matches");
    assert_ne!(etag(&fresh), tag);

    // Another tenant's cached report is its own, and unaffected.
    let globex = t.token("globex", "user").await;
    assert_eq!(total(&t.send(tb_request(&globex, None)).await), 0);
    // The dashboard reads the same tagged report through the cache.
    let cached = t.state.trial_balance("acme").await.unwrap();
    assert_eq!(cached.total_debit, 107);

    // A new account shows in the (cached) report at once.
    let admin = t.token("acme", "admin").await;
    let codes = |res: &Res| -> Vec<String> {
        res.json()["accounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["code"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(!codes(&t.send(tb_request(&admin, None)).await).contains(&"1999".to_owned()));
    let created = t
        .post(
            "/api/v1/accounts",
            &admin,
            json!({"code": "1999", "name": "Petty cash", "type": "asset"}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    assert!(codes(&t.send(tb_request(&admin, None)).await).contains(&"1999".to_owned()));
}

/// Two instances over one SQLite file and one Redis.
struct Pair {
    a: TestApp,
    b: TestApp,
    _dir: TempDir,
}

async fn pair(redis_url: &str, failure_mode: &str) -> Pair {
    let dir = TempDir::new("rampart-erp-shared");
    let db = format!("sqlite:{}", dir.path().join("erp.db").display());
    let instance = || {
        let mut config = Config::for_tests(db.clone());
        config.redis_url = Some(redis_url.to_owned());
        config.redis.failure_mode = match failure_mode {
            "closed" => tower_rampart::rate_limit::FailureMode::Closed,
            "open" => tower_rampart::rate_limit::FailureMode::Open,
            _ => tower_rampart::rate_limit::FailureMode::LocalFallback { divisor: 2 },
        };
        config.redis.instances = 2;
        config
    };
    let a = TestApp::with_config(instance()).await;
    let b = TestApp::with_config(instance()).await;
    assert_eq!(a.state.backends().kind, "redis");
    Pair { a, b, _dir: dir }
}

fn login_attempt() -> Request<Body> {
    let mut req = Request::post("/accounts/login/")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from("tenant=acme&username=user&password=wrong"))
        .unwrap();
    req.extensions_mut().insert(ConnectInfo::<SocketAddr>(
        "198.51.100.7:4000".parse().unwrap(),
    ));
    req
}

#[tokio::test]
async fn two_instances_share_one_login_quota_and_one_cache() {
    let redis = RedisServer::start();
    let p = pair(&redis.url(), "local_fallback").await;

    // 5/minute per client IP, whichever instance answers.
    let mut allowed = 0;
    for i in 0..20 {
        let app = if i % 2 == 0 { &p.a } else { &p.b };
        if app.send(login_attempt()).await.status != 429 {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 5, "one quota shared by both instances");

    // B caches the report; A posts; B sees it (invalidation through Redis pub/sub).
    let tok = p.a.token("acme", "admin").await;
    let cash = p.a.account_id(&tok, "1000").await;
    let sales = p.a.account_id(&tok, "4000").await;
    assert_eq!(total(&p.b.send(tb_request(&tok, None)).await), 0);
    assert_eq!(total(&p.b.send(tb_request(&tok, None)).await), 0);
    assert_eq!(p.a.post_entry(&tok, &cash, &sales, 42).await.status, 201);
    let start = Instant::now();
    loop {
        let seen = total(&p.b.send(tb_request(&tok, None)).await);
        if seen == 42 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_millis(100),
            "B still serves the old report after {:?}",
            start.elapsed()
        );
        tokio::task::yield_now().await;
    }
    println!("B saw A's entry after {:?}", start.elapsed());
}

#[tokio::test]
async fn redis_loss_applies_the_failure_mode_and_recovers() {
    let mut redis = RedisServer::start();
    let p = pair(&redis.url(), "closed").await;
    let tok = p.a.token("acme", "user").await;
    assert_eq!(p.a.get("/api/v1/users/me", &tok).await.status, 200);

    redis.stop();
    // Closed: the limited API answers 503 JSON; health and the cache do not fail.
    let res = p.a.get("/api/v1/users/me", &tok).await;
    let body: Value = res.error(503);
    assert!(
        body["detail"].as_str().unwrap().contains("unavailable"),
        "{body}"
    );
    let health = p.b.call(Method::GET, "/health/live/", None, None).await;
    assert_eq!(health.status, 200, "health is exempt from the limiter");
    let ready = p.b.call(Method::GET, "/health/ready/", None, None).await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["checks"]["redis"]["status"], "fail");

    redis.restart();
    let start = Instant::now();
    loop {
        if p.a.get("/api/v1/users/me", &tok).await.status == 200 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "no recovery within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("recovered {:?} after the restart", start.elapsed());
}

#[tokio::test]
async fn local_fallback_keeps_limiting_while_redis_is_down() {
    let mut redis = RedisServer::start();
    let p = pair(&redis.url(), "local_fallback").await;
    redis.stop();
    // Each instance enforces 5/2 → 2 per minute on its own (quota divided by 2), and
    // nothing answers 5xx.
    let mut allowed = 0;
    for _ in 0..10 {
        let res = p.a.send(login_attempt()).await;
        assert!(res.status.as_u16() < 500, "{}", res.status);
        if res.status != 429 {
            allowed += 1;
        }
    }
    assert!(
        (1..=3).contains(&allowed),
        "the fallback limiter still limits (allowed {allowed})"
    );
}
