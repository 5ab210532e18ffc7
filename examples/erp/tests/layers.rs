//! The tower-rampart layers composed in `app()`: security headers and CSP, the CSP
//! report receiver and the admin-only profiler.

mod common;

use axum::{
    body::Body,
    http::{Method, Request},
};
use common::TestApp;
use serde_json::json;
use tower::ServiceExt;

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

#[tokio::test]
async fn every_response_carries_the_recommended_headers() {
    let t = TestApp::sqlite().await;
    for path in ["/health/live/", "/api/v1/accounts", "/nope"] {
        let res = t.send(get(path)).await;
        let h = &res.headers;
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["cross-origin-opener-policy"], "same-origin", "{path}");
        assert_eq!(h["x-xss-protection"], "0", "{path}");
        assert!(h.contains_key("permissions-policy"), "{path}");
        assert!(!h.contains_key("server"), "{path}");
        assert!(
            !h.contains_key("strict-transport-security"),
            "plain HTTP: no HSTS ({path})"
        );
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("report-uri /csp-report/"), "{csp}");
        assert!(
            !csp.contains("upgrade-insecure-requests"),
            "plain HTTP deployment: no upgrade ({csp})"
        );
        assert!(h["reporting-endpoints"].to_str().unwrap().contains("csp="));
    }
}

#[tokio::test]
async fn behind_https_the_csp_upgrades_insecure_requests() {
    let mut config = rampart_erp::Config::for_tests("sqlite::memory:");
    config.secure_cookies = true;
    let t = TestApp::with_config(config).await;
    let res = t.send(get("/accounts/login/")).await;
    let csp = res.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("upgrade-insecure-requests"), "{csp}");
}

#[tokio::test]
async fn nonces_differ_per_response_and_docs_get_their_own_policy() {
    let t = TestApp::sqlite().await;
    let a = t.send(get("/health/")).await;
    let b = t.send(get("/health/")).await;
    let nonce = |r: &common::Res| {
        r.headers["content-security-policy"]
            .to_str()
            .unwrap()
            .split('\'')
            .find_map(|s| s.strip_prefix("nonce-"))
            .map(str::to_owned)
            .expect("nonce")
    };
    assert_ne!(nonce(&a), nonce(&b));
    let docs = t.send(get("/api/docs/")).await;
    let csp = docs.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(!csp.contains("nonce-"), "{csp}");
}

#[tokio::test]
async fn csp_reports_are_received() {
    let t = TestApp::sqlite().await;
    let report = json!({"csp-report": {
        "document-uri": "http://localhost:8080/dashboard/",
        "violated-directive": "script-src-elem",
        "effective-directive": "script-src-elem",
        "original-policy": "default-src 'self'",
        "blocked-uri": "inline",
        "disposition": "enforce",
        "status-code": 200
    }});
    let ok = t
        .send(
            Request::post("/csp-report/")
                .header("content-type", "application/csp-report")
                .body(Body::from(report.to_string()))
                .unwrap(),
        )
        .await;
    assert_eq!(ok.status, 204, "{}", ok.text());
    let bad = t
        .send(
            Request::post("/csp-report/")
                .header("content-type", "application/csp-report")
                .body(Body::from("{not json"))
                .unwrap(),
        )
        .await;
    assert_eq!(bad.status, 400);
    assert!(bad.json()["error"].is_string());
    let wrong_type = t
        .send(
            Request::post("/csp-report/")
                .header("content-type", "text/plain")
                .body(Body::from("x"))
                .unwrap(),
        )
        .await;
    assert_eq!(wrong_type.status, 415);
}

#[tokio::test]
async fn profiler_is_for_admins_only_and_records_requests() {
    let t = TestApp::sqlite().await;
    let user = t.token("acme", "user").await;
    let admin = t.token("acme", "admin").await;
    let anonymous = t.send(get("/_profiler/")).await;
    assert_eq!(anonymous.status, 403);
    let res = t.call(Method::GET, "/_profiler/", Some(&user), None).await;
    assert_eq!(res.status, 403, "a regular user is refused");

    // Profiled requests: a list call, with Server-Timing on the response.
    let list = t.get("/api/v1/accounts", &admin).await;
    assert_eq!(list.status, 200);
    let timing = list.headers["server-timing"].to_str().unwrap();
    assert!(timing.contains("total;dur="), "{timing}");
    let not_admin = t.get("/api/v1/accounts", &user).await;
    assert!(
        !not_admin.headers.contains_key("server-timing"),
        "timings only for admins"
    );
    let anonymous = t.send(get("/health/")).await;
    assert!(!anonymous.headers.contains_key("server-timing"));

    let ui = t.call(Method::GET, "/_profiler/", Some(&admin), None).await;
    assert_eq!(ui.status, 200);
    assert!(ui.text().contains("/api/v1/accounts"), "{}", ui.text());

    // Another tenant's admin sees none of acme's records, in the UI or its JSON.
    let globex = t.token("globex", "admin").await;
    let theirs = t
        .call(Method::GET, "/_profiler/api/requests", Some(&globex), None)
        .await;
    assert_eq!(theirs.status, 200);
    let listed = theirs.json()["requests"].as_array().unwrap().clone();
    assert!(listed.iter().all(|r| r["tenant"] == "globex"), "{listed:?}");
    let ours = t
        .call(Method::GET, "/_profiler/api/requests", Some(&admin), None)
        .await;
    let ours = ours.json()["requests"].as_array().unwrap().clone();
    assert!(
        !ours.is_empty() && ours.iter().all(|r| r["tenant"] == "acme"),
        "{ours:?}"
    );
    let id = ours[0]["id"].as_u64().unwrap();
    let detail = format!("/_profiler/api/requests/{id}");
    assert_eq!(
        t.call(Method::GET, &detail, Some(&globex), None)
            .await
            .status,
        404
    );
    assert_eq!(
        t.call(Method::GET, &detail, Some(&admin), None)
            .await
            .status,
        200
    );
    let page = t
        .call(Method::GET, "/_profiler/", Some(&globex), None)
        .await;
    assert!(!page.text().contains("/api/v1/accounts"), "{}", page.text());
}

#[tokio::test]
async fn login_is_limited_to_five_per_minute_per_client_ip() {
    let t = TestApp::sqlite().await;
    let attempt = |peer: &'static str| {
        let mut req = Request::post("/accounts/login/")
            .header("content-type", "application/x-www-form-urlencoded")
            .header("origin", "http://localhost")
            .body(Body::from("tenant=acme&username=user&password=wrong"))
            .unwrap();
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo::<std::net::SocketAddr>(
                peer.parse().unwrap(),
            ));
        req
    };
    for i in 0..5 {
        let res = t.send(attempt("198.51.100.7:4000")).await;
        assert_ne!(res.status, 429, "attempt {i} is within the quota");
        assert!(
            res.headers.contains_key("ratelimit-policy"),
            "IETF headers on allowed responses"
        );
    }
    let limited = t.send(attempt("198.51.100.7:4001")).await;
    assert_eq!(limited.status, 429);
    assert!(limited.headers.contains_key("retry-after"));
    assert_eq!(limited.json()["error"], "Rate limit exceeded");
    // Another client is not affected, and health checks are never limited.
    assert_ne!(t.send(attempt("203.0.113.9:4000")).await.status, 429);
    for _ in 0..10 {
        assert_eq!(t.send(get("/health/live/")).await.status, 200);
    }
}

#[tokio::test]
async fn api_is_limited_per_user() {
    let t = TestApp::sqlite().await;
    let alice = t.token("acme", "user").await;
    let admin = t.token("acme", "admin").await;
    for i in 0..100 {
        let res = t.get("/api/v1/accounts", &alice).await;
        assert_eq!(res.status, 200, "call {i}: {}", res.text());
    }
    let res = t.get("/api/v1/accounts", &alice).await;
    assert_eq!(res.status, 429, "the 101st call in the hour");
    assert_eq!(
        t.get("/api/v1/accounts", &admin).await.status,
        200,
        "other users keep their quota"
    );
}

#[test]
fn a_broken_rate_limit_table_is_a_startup_error() {
    let path = std::env::temp_dir().join(format!("rampart-erp-bad-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        "[rate_limit]\n[[rate_limit.policy]]\nname = \"x\"\nrate = \"0/minute\"\n",
    )
    .unwrap();
    let cli = rampart_erp::config::CliArgs {
        config: Some(path),
        ..Default::default()
    };
    let err = rampart_erp::Config::load(&cli, |_| None).unwrap_err();
    let _ = std::fs::remove_file(cli.config.as_ref().unwrap());
    assert!(err.to_string().contains("rate"), "{err}");
}

#[tokio::test]
async fn the_bare_stack_has_no_library_layers_and_the_full_one_has_them_all() {
    let t = TestApp::sqlite().await;
    // An admin: `Server-Timing` is for admins only.
    let tok = t.token("acme", "admin").await;
    let req = || {
        Request::get("/api/v1/reports/trial-balance")
            .header("authorization", format!("Bearer {tok}"))
            .body(Body::empty())
            .unwrap()
    };
    let bare = rampart_erp::app_with(t.state.clone(), rampart_erp::Stack::BARE)
        .oneshot(req())
        .await
        .unwrap();
    assert_eq!(
        bare.status(),
        200,
        "handlers work with authentication alone"
    );
    // Security headers, rate limit, profiler, response cache, request id, API-Version.
    let layer_headers = [
        "content-security-policy",
        "ratelimit-policy",
        "server-timing",
        "etag",
        "x-request-id",
        "api-version",
    ];
    let full = t.send(req()).await;
    for name in layer_headers {
        assert!(!bare.headers().contains_key(name), "bare has {name}");
        assert!(full.headers.contains_key(name), "full lacks {name}");
    }
}

#[tokio::test]
async fn the_token_endpoint_shares_the_login_policy_with_the_form() {
    let t = TestApp::sqlite().await;
    let peer = |req: &mut Request<Body>, ip: &str| {
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo::<std::net::SocketAddr>(
                format!("{ip}:4000").parse().unwrap(),
            ));
    };
    let form = |ip: &str| {
        let mut req = Request::post("/accounts/login/")
            .header("content-type", "application/x-www-form-urlencoded")
            .header("origin", "http://localhost")
            .body(Body::from("tenant=acme&username=user&password=wrong"))
            .unwrap();
        peer(&mut req, ip);
        req
    };
    let token = |ip: &str, username: &str| {
        let mut req = Request::post("/api/v1/auth/token")
            .header("content-type", "application/json")
            .body(Body::from(
                json!({"tenant": "acme", "username": username, "password": "wrong"}).to_string(),
            ))
            .unwrap();
        peer(&mut req, ip);
        req
    };
    // Five guesses through either route, then the sixth is refused on both.
    let ip = "198.51.100.20";
    let mut bodies = Vec::new();
    for i in 0..5u32 {
        let res = if i.is_multiple_of(2) {
            t.send(token(ip, if i == 0 { "user" } else { "nobody" }))
                .await
        } else {
            t.send(form(ip)).await
        };
        assert_ne!(res.status, 429, "attempt {i} is within the quota");
        if i.is_multiple_of(2) {
            bodies.push(res.error(401));
        }
    }
    // The same answer whether the account exists or not.
    assert_eq!(bodies[0], bodies[1]);
    let limited = t.send(token(ip, "user")).await;
    limited.error(429);
    assert!(limited.headers.contains_key("retry-after"));
    assert_eq!(t.send(form(ip)).await.status, 429);
    // Another client still may.
    t.send(token("203.0.113.20", "user")).await.error(401);
}
