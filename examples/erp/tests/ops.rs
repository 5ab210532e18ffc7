//! Health probes, readiness (with a real Redis), metrics and the API documentation.

mod common;

use axum::http::Method;
use common::TestApp;
use rampart_erp::Config;
use rampart_test_support::RedisServer;

#[tokio::test]
async fn health_and_liveness() {
    let t = TestApp::sqlite().await;
    let res = t.call(Method::GET, "/health/", None, None).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.json()["status"], "ok");
    let res = t.call(Method::GET, "/health/live/", None, None).await;
    assert_eq!(res.json()["status"], "alive");
}

#[tokio::test]
async fn readiness_checks_database_and_disk() {
    let t = TestApp::sqlite().await;
    let res = t.call(Method::GET, "/health/ready/", None, None).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let v = res.json();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["checks"]["database"]["status"], "ok");
    assert!(v["checks"]["database"]["latency_ms"].is_number());
    assert_eq!(v["checks"]["disk"]["status"], "ok");
    assert!(
        v["checks"].get("redis").is_none(),
        "Redis is not configured"
    );

    // The database going away makes readiness fail with 503.
    t.state.db().close().await;
    let res = t.call(Method::GET, "/health/ready/", None, None).await;
    assert_eq!(res.status, 503);
    let v = res.json();
    assert_eq!(v["status"], "fail");
    assert_eq!(v["checks"]["database"]["status"], "fail");
    assert!(v["checks"]["database"]["detail"].is_string());
    // Liveness does not depend on it.
    let res = t.call(Method::GET, "/health/live/", None, None).await;
    assert_eq!(res.status, 200);
}

#[tokio::test]
async fn readiness_fails_when_disk_is_short() {
    let mut config = Config::for_tests("sqlite::memory:");
    config.min_free_disk_bytes = u64::MAX;
    let t = TestApp::with_config(config).await;
    let res = t.call(Method::GET, "/health/ready/", None, None).await;
    assert_eq!(res.status, 503);
    assert_eq!(res.json()["checks"]["disk"]["status"], "fail");
}

#[tokio::test]
async fn readiness_pings_redis() {
    let mut redis = RedisServer::start();
    let mut config = Config::for_tests("sqlite::memory:");
    config.redis_url = Some(redis.url());
    let t = TestApp::with_config(config).await;
    let res = t.call(Method::GET, "/health/ready/", None, None).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let v = res.json();
    assert_eq!(v["checks"]["redis"]["status"], "ok");
    assert_eq!(
        v["checks"]["redis"]["detail"],
        "redis, 1 node(s) answer PING"
    );

    redis.stop();
    // The limiter's failure mode keeps the instance serving (`local_fallback` by
    // default): degraded, still ready, so a balancer does not drain the whole fleet.
    let res = t.call(Method::GET, "/health/ready/", None, None).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let v = res.json();
    assert_eq!(v["status"], "degraded");
    assert_eq!(v["checks"]["redis"]["status"], "degraded");
    assert_eq!(v["checks"]["database"]["status"], "ok");

    redis.restart();
    let res = t.call(Method::GET, "/health/ready/", None, None).await;
    assert_eq!(res.status, 200, "{}", res.text());
}

#[tokio::test]
async fn metrics_are_exposed() {
    let t = TestApp::sqlite().await;
    let tok = t.token("acme", "user").await;
    let cash = t.account_id(&tok, "1000").await;
    let sales = t.account_id(&tok, "4000").await;
    assert_eq!(t.post_entry(&tok, &cash, &sales, 1).await.status, 201);
    let res = t.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(res.status, 200);
    assert!(
        res.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = res.text();
    assert!(text.contains("erp_http_requests_total"), "{text}");
    assert!(text.contains("route=\"/api/v1/accounts\""), "{text}");
    assert!(text.contains("erp_journal_entries_posted_total"), "{text}");
    assert!(
        text.contains("erp_http_request_duration_seconds_bucket"),
        "{text}"
    );
}

#[tokio::test]
async fn invented_paths_and_methods_create_no_series() {
    let t = TestApp::sqlite().await;
    for i in 0..400u32 {
        let method = if i % 4 == 0 {
            Method::from_bytes(format!("ZQM{i}").as_bytes()).unwrap()
        } else {
            Method::GET
        };
        let path = format!("/zqp{i}/{}", i * 7919);
        let _ = t.call(method, &path, None, None).await;
    }
    let text = t.call(Method::GET, "/metrics", None, None).await.text();
    assert!(!text.contains("zqp"), "a path became a label");
    assert!(!text.contains("ZQM"), "a method became a label");
    assert!(text.contains("route=\"unmatched\""), "{text}");
    assert!(text.contains("method=\"other\""), "{text}");
}

#[tokio::test]
async fn openapi_document_matches_the_routes() {
    let t = TestApp::sqlite().await;
    let res = t.call(Method::GET, "/api/schema/", None, None).await;
    assert_eq!(res.status, 200);
    let doc = res.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/api/v1/auth/token",
        "/api/v1/users/me",
        "/api/v1/accounts",
        "/api/v1/accounts/{id}",
        "/api/v1/journal-entries",
        "/api/v1/journal-entries/{id}",
        "/api/v1/journal-entries/{id}/reverse",
        "/api/v1/reports/trial-balance",
        "/health/ready/",
        "/metrics",
    ] {
        assert!(paths.contains_key(p), "missing {p}");
    }
    let post = &doc["paths"]["/api/v1/journal-entries"]["post"];
    for code in ["201", "400", "401", "409", "413", "415", "422"] {
        assert!(
            post["responses"].get(code).is_some(),
            "POST entries lacks {code}"
        );
    }
    assert_eq!(
        post["responses"]["422"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/ErrorBody"
    );
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    assert!(doc["components"]["schemas"]["NewEntry"].is_object());
}

#[tokio::test]
async fn swagger_ui_is_served_locally() {
    let t = TestApp::sqlite().await;
    let res = t.call(Method::GET, "/api/docs/", None, None).await;
    assert_eq!(res.status, 200);
    let html = res.text();
    assert!(html.contains("swagger-ui"), "{html}");
    assert!(!html.contains("https://"), "no CDN: {html}");
    // Its assets come from the server too.
    let js = t
        .call(Method::GET, "/api/docs/swagger-ui-bundle.js", None, None)
        .await;
    assert_eq!(js.status, 200);
    assert!(js.body.len() > 100_000);
    let init = t
        .call(Method::GET, "/api/docs/swagger-initializer.js", None, None)
        .await;
    assert!(init.text().contains("/api/schema/"), "{}", init.text());
}

#[tokio::test]
async fn redoc_is_served_locally() {
    let t = TestApp::sqlite().await;
    let res = t.call(Method::GET, "/api/redoc/", None, None).await;
    assert_eq!(res.status, 200);
    let html = res.text();
    assert!(html.contains("<script src=\"/api/redoc/redoc.standalone.js\">"));
    // No inline script: every <script> is either external or a JSON data block.
    for tag in html.split("<script").skip(1) {
        let open = &tag[..tag.find('>').unwrap()];
        assert!(
            open.contains(" src=") || open.contains("application/json"),
            "inline script in ReDoc page: {open}"
        );
    }
    let init = t.call(Method::GET, "/api/redoc/init.js", None, None).await;
    assert!(init.text().contains("Redoc.init"));
    assert!(!html.contains("cdn."), "no CDN");
    assert!(
        html.contains("/api/v1/journal-entries"),
        "the spec is embedded"
    );
    // Without the bundle installed: a JSON 404 that says how to install it.
    let res = t
        .call(Method::GET, "/api/redoc/redoc.standalone.js", None, None)
        .await;
    assert!(
        res.error(404)["detail"]
            .as_str()
            .unwrap()
            .contains("fetch-redoc.sh")
    );
    // With it: served as JavaScript.
    let state = t
        .state
        .clone()
        .with_redoc_bundle(Some(axum::body::Bytes::from_static(b"var Redoc = {};")));
    let router = rampart_erp::app(state);
    let res = tower::ServiceExt::oneshot(
        router,
        axum::http::Request::get("/api/redoc/redoc.standalone.js")
            .extension(axum::extract::ConnectInfo::<std::net::SocketAddr>(
                ([192, 0, 2, 200], 1).into(),
            ))
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
}

#[tokio::test]
async fn redoc_cdn_logo_is_served_locally() {
    let b = rampart_erp::openapi::localize_redoc(b"a='https://cdn.redoc.ly/redoc/logo-mini.svg';");
    assert_eq!(&b[..], b"a='/api/redoc/logo-mini.svg';");
    let t = TestApp::sqlite().await;
    let res = t
        .call(Method::GET, "/api/redoc/logo-mini.svg", None, None)
        .await;
    assert_eq!(res.status, 200);
    assert_eq!(res.headers["content-type"], "image/svg+xml");
    let res = t.call(Method::GET, "/favicon.ico", None, None).await;
    assert_eq!(res.status, 204);
}

#[tokio::test]
async fn shipped_redoc_bundle_loads_when_installed() {
    // `scripts/fetch-redoc.sh` installs it; a missing file is reported, not fatal.
    assert!(
        rampart_erp::openapi::load_redoc_bundle(Some("/nonexistent/redoc.js".into())).is_none()
    );
    if let Some(b) = rampart_erp::openapi::load_redoc_bundle(None) {
        assert!(
            String::from_utf8_lossy(&b[..200.min(b.len())]).contains("Redoc") || b.len() > 100_000
        );
    }
}

#[tokio::test]
async fn documented_statuses_match_real_answers() {
    // For every secured operation of the schema: an anonymous call answers 401, a call
    // with a valid token never answers a status the schema does not document.
    let t = TestApp::sqlite().await;
    let tok = t.token("acme", "user").await;
    let doc = t.call(Method::GET, "/api/schema/", None, None).await.json();
    let mut checked = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            if op.get("security").is_none() {
                continue;
            }
            let documented: Vec<String> = op["responses"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect();
            let url = path.replace("{id}", "00000000-0000-4000-8000-000000000000");
            let m: Method = method.to_uppercase().parse().unwrap();
            let body = (m == Method::POST).then(|| serde_json::json!({}));
            let anon = t.call(m.clone(), &url, None, body.clone()).await;
            assert_eq!(anon.status, 401, "{method} {path}");
            assert!(
                documented.contains(&"401".to_owned()),
                "{method} {path} lacks 401"
            );
            let authed = t.call(m, &url, Some(&tok), body).await;
            assert!(
                documented.contains(&authed.status.as_u16().to_string()),
                "{method} {path} answered {} which is not documented ({documented:?})",
                authed.status
            );
            checked += 1;
        }
    }
    assert!(checked >= 9, "checked {checked} operations");
}

#[tokio::test]
async fn every_api_operation_documents_429_with_its_headers() {
    let t = TestApp::sqlite().await;
    let doc = t.call(Method::GET, "/api/schema/", None, None).await.json();
    let mut seen = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        if !path.starts_with("/api/v1/") {
            continue;
        }
        for (method, op) in item.as_object().unwrap() {
            let limited = &op["responses"]["429"];
            assert!(limited.is_object(), "{method} {path} does not document 429");
            for h in ["Retry-After", "RateLimit", "RateLimit-Policy"] {
                assert!(limited["headers"][h].is_object(), "{method} {path}: no {h}");
            }
            seen += 1;
        }
    }
    assert!(seen >= 10, "{seen}");
    // The token endpoint also documents the password pool's 503.
    assert!(doc["paths"]["/api/v1/auth/token"]["post"]["responses"]["503"].is_object());
}

#[tokio::test]
async fn every_api_operation_documents_the_tenant_header_and_errors() {
    let t = TestApp::sqlite().await;
    let doc = t.call(Method::GET, "/api/schema/", None, None).await.json();
    for (path, item) in doc["paths"].as_object().unwrap() {
        if !path.starts_with("/api/v1/") {
            continue;
        }
        for (method, op) in item.as_object().unwrap() {
            for status in ["400", "403", "404", "413"] {
                assert!(
                    op["responses"][status].is_object(),
                    "{method} {path} does not document {status}"
                );
            }
            let tenant = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| {
                    p["name"]
                        .as_str()
                        .is_some_and(|n| n.eq_ignore_ascii_case("x-tenant-id"))
                })
                .count();
            assert_eq!(tenant, 1, "{method} {path}: the tenant header once");
        }
    }
}
