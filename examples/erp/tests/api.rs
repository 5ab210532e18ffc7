//! Every API route and its error paths, through `app().oneshot(…)` on SQLite.

mod common;

use axum::{
    body::Body,
    http::{Method, Request},
};
use common::{PASSWORD, TestApp};
use serde_json::{Value, json};

#[tokio::test]
async fn ledger_life_cycle_on_sqlite() {
    common::ledger_suite(&TestApp::sqlite().await).await;
}

#[tokio::test]
async fn idempotency_on_sqlite() {
    common::idempotency_suite(&TestApp::sqlite().await).await;
}

#[tokio::test]
async fn acme_reaches_no_globex_data_on_sqlite() {
    common::isolation_suite(&TestApp::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_on_sqlite() {
    common::concurrency_suite(&TestApp::sqlite().await).await;
}

#[tokio::test]
async fn token_endpoint() {
    let t = TestApp::sqlite().await;
    let ok = t
        .call(
            Method::POST,
            "/api/v1/auth/token",
            None,
            Some(json!({"tenant": "acme", "username": "admin", "password": PASSWORD})),
        )
        .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.headers["api-version"], "1");
    let v = ok.json();
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["expires_in"], 3600);
    let me = t
        .get("/api/v1/users/me", v["access_token"].as_str().unwrap())
        .await;
    assert_eq!(me.status, 200);
    let me = me.json();
    assert_eq!(
        (
            me["tenant"].as_str(),
            me["username"].as_str(),
            me["role"].as_str()
        ),
        (Some("acme"), Some("admin"), Some("admin"))
    );

    for body in [
        json!({"tenant": "acme", "username": "admin", "password": "wrong"}),
        json!({"tenant": "acme", "username": "nobody", "password": PASSWORD}),
        json!({"tenant": "nope", "username": "admin", "password": PASSWORD}),
    ] {
        let res = t
            .call(Method::POST, "/api/v1/auth/token", None, Some(body))
            .await;
        assert_eq!(
            res.error(401)["detail"],
            "Invalid tenant, user name or password."
        );
    }
    // Unknown field, wrong type, missing field: 422.
    for body in [
        json!({"tenant": "acme", "username": "admin", "password": PASSWORD, "extra": 1}),
        json!({"tenant": "acme", "username": 5, "password": PASSWORD}),
        json!({"tenant": "acme"}),
        json!([1, 2]),
    ] {
        t.call(Method::POST, "/api/v1/auth/token", None, Some(body))
            .await
            .error(422);
    }
    // Malformed JSON: 400; no content type: 415; wrong content type: 415.
    let raw = |ct: Option<&str>, body: &str| {
        let mut b = Request::post("/api/v1/auth/token");
        if let Some(ct) = ct {
            b = b.header("content-type", ct);
        }
        b.body(Body::from(body.to_owned())).unwrap()
    };
    t.send(raw(Some("application/json"), "{\"tenant\": "))
        .await
        .error(400);
    t.send(raw(Some("application/json"), "")).await.error(400);
    t.send(raw(None, "{}")).await.error(415);
    t.send(raw(Some("text/plain"), "{}")).await.error(415);
}

#[tokio::test]
async fn authentication_errors() {
    let t = TestApp::sqlite().await;
    for path in [
        "/api/v1/users/me",
        "/api/v1/accounts",
        "/api/v1/journal-entries",
        "/api/v1/reports/trial-balance",
        "/api/v1/accounts/00000000-0000-4000-8000-000000000000",
    ] {
        let res = t.call(Method::GET, path, None, None).await;
        res.error(401);
        assert_eq!(res.headers["api-version"], "1");
    }
    t.call(
        Method::POST,
        "/api/v1/journal-entries",
        None,
        Some(json!({})),
    )
    .await
    .error(401);
    // Invalid and malformed tokens: 401 with WWW-Authenticate.
    let res = t.get("/api/v1/users/me", "not-a-jwt").await;
    res.error(401);
    assert!(res.headers.contains_key("www-authenticate"));
    let res = t
        .send(
            Request::get("/api/v1/users/me")
                .header("authorization", "Basic YWRtaW46YWRtaW4=")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    res.error(401);
    // A session token is not an API token.
    let user = rampart_erp::auth::VerifiedUser {
        id: "x".into(),
        username: "admin".into(),
        tenant: "acme".into(),
        role: rampart_erp::auth::Role::Admin,
        epoch: 0,
    };
    let session = t
        .state
        .jwt()
        .issue(&user, "session", std::time::Duration::from_secs(60))
        .unwrap();
    t.get("/api/v1/users/me", &session).await.error(401);
    // An expired token.
    let expired = t
        .state
        .jwt()
        .issue(&user, "api", std::time::Duration::from_secs(0));
    let expired = expired.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    let claims_ok = t.state.jwt().verify(&expired, "api");
    // Leeway is 5 s, so a zero-lifetime token is still accepted right away; forge one
    // that expired an hour ago instead.
    assert!(claims_ok.is_some());
    let old = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "x", "username": "admin", "tenant": "acme", "role": "admin", "aud": "api", "iat": 1, "exp": 2}),
        &jsonwebtoken::EncodingKey::from_secret(t.state.config().jwt_secret.as_bytes()),
    )
    .unwrap();
    t.get("/api/v1/users/me", &old).await.error(401);
}

#[tokio::test]
async fn accounts_errors() {
    let t = TestApp::sqlite().await;
    let user = t.token("acme", "user").await;
    let admin = t.token("acme", "admin").await;
    let list = t.get("/api/v1/accounts", &user).await;
    assert_eq!(list.status, 200);
    let v = list.json();
    assert_eq!(v["items"].as_array().unwrap().len(), 7);
    assert_eq!(v["items"][0]["code"], "1000");
    assert_eq!(
        (v["limit"].as_i64(), v["offset"].as_i64()),
        (Some(50), Some(0))
    );
    let page = t
        .get("/api/v1/accounts?limit=2&offset=1", &user)
        .await
        .json();
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    assert_eq!(page["items"][0]["code"], "1100");
    for q in [
        "limit=0",
        "limit=201",
        "offset=-1",
        "limit=abc",
        "limit=1.5",
    ] {
        t.get(&format!("/api/v1/accounts?{q}"), &user)
            .await
            .error(400);
    }
    // Regular users cannot create accounts.
    t.post(
        "/api/v1/accounts",
        &user,
        json!({"code": "9", "name": "x", "type": "asset"}),
    )
    .await
    .error(403);
    for body in [
        json!({"code": "9", "name": "x", "type": "bogus"}),
        json!({"code": "9", "name": "x"}),
        json!({"code": "9", "name": "x", "type": "asset", "extra": true}),
        json!({"code": "", "name": "x", "type": "asset"}),
        json!({"code": "a b", "name": "x", "type": "asset"}),
        json!({"code": "x".repeat(21), "name": "x", "type": "asset"}),
        json!({"code": "9", "name": " ", "type": "asset"}),
        json!({"code": 9, "name": "x", "type": "asset"}),
    ] {
        t.post("/api/v1/accounts", &admin, body).await.error(422);
    }
    // Bad ids: 400; unknown ids: 404.
    t.get("/api/v1/accounts/not-a-uuid", &user).await.error(400);
    t.get(
        "/api/v1/accounts/00000000-0000-4000-8000-000000000000",
        &user,
    )
    .await
    .error(404);
}

#[tokio::test]
async fn journal_entry_errors() {
    let t = TestApp::sqlite().await;
    let tok = t.token("acme", "user").await;
    let cash = t.account_id(&tok, "1000").await;
    let sales = t.account_id(&tok, "4000").await;
    let entry = |lines: Value| json!({"date": "2026-01-15", "description": "x", "lines": lines});
    let cases = [
        // One line.
        entry(json!([{"account_id": cash, "debit": 5}])),
        // Both debit and credit on a line.
        entry(json!([{"account_id": cash, "debit": 5, "credit": 5}, {"account_id": sales, "credit": 5}])),
        // Neither.
        entry(json!([{"account_id": cash}, {"account_id": sales, "credit": 5}])),
        // Zero and negative.
        entry(json!([{"account_id": cash, "debit": 0}, {"account_id": sales, "credit": 0}])),
        entry(json!([{"account_id": cash, "debit": -5}, {"account_id": sales, "credit": -5}])),
        // Floats are not money.
        entry(json!([{"account_id": cash, "debit": 10.5}, {"account_id": sales, "credit": 10.5}])),
        // Strings are not numbers.
        entry(json!([{"account_id": cash, "debit": "5"}, {"account_id": sales, "credit": "5"}])),
        // Beyond i64.
        serde_json::from_str(&format!(
            r#"{{"date":"2026-01-15","description":"x","lines":[{{"account_id":"{cash}","debit":99999999999999999999}},{{"account_id":"{sales}","credit":1}}]}}"#
        ))
        .unwrap(),
        // Unbalanced.
        entry(json!([{"account_id": cash, "debit": 5}, {"account_id": sales, "credit": 4}])),
        // Bad account id, unknown field on a line.
        entry(json!([{"account_id": "nope", "debit": 5}, {"account_id": sales, "credit": 5}])),
        entry(json!([{"account_id": cash, "debit": 5, "x": 1}, {"account_id": sales, "credit": 5}])),
        // Bad date, empty description, unknown top-level field, missing lines.
        json!({"date": "2026-02-30", "description": "x", "lines": [{"account_id": cash, "debit": 5}, {"account_id": sales, "credit": 5}]}),
        json!({"date": "2026-01-15", "description": "", "lines": [{"account_id": cash, "debit": 5}, {"account_id": sales, "credit": 5}]}),
        json!({"date": "2026-01-15", "description": "x", "lines": [], "posted": true}),
        json!({"date": "2026-01-15", "description": "x"}),
    ];
    for body in cases {
        let res = t.post("/api/v1/journal-entries", &tok, body.clone()).await;
        res.error(422);
    }
    let list = t.get("/api/v1/journal-entries", &tok).await.json();
    assert!(
        list["items"].as_array().unwrap().is_empty(),
        "nothing was posted"
    );

    t.get("/api/v1/journal-entries/123", &tok).await.error(400);
    t.get(
        "/api/v1/journal-entries/00000000-0000-4000-8000-000000000000",
        &tok,
    )
    .await
    .error(404);
    t.call(
        Method::POST,
        "/api/v1/journal-entries/nope/reverse",
        Some(&tok),
        None,
    )
    .await
    .error(400);
    t.call(
        Method::POST,
        "/api/v1/journal-entries/00000000-0000-4000-8000-000000000000/reverse",
        Some(&tok),
        None,
    )
    .await
    .error(404);
    // Reverse with a bad body.
    let posted = t.post_entry(&tok, &cash, &sales, 10).await.json();
    let id = posted["id"].as_str().unwrap();
    for body in [json!({"date": "yesterday"}), json!({"nope": 1})] {
        t.post(&format!("/api/v1/journal-entries/{id}/reverse"), &tok, body)
            .await
            .error(422);
    }
    let res = t
        .send(
            Request::post(format!("/api/v1/journal-entries/{id}/reverse"))
                .header("authorization", format!("Bearer {tok}"))
                .header("content-type", "application/json")
                .body(Body::from("{oops"))
                .unwrap(),
        )
        .await;
    res.error(400);
    // Reverse with an explicit date and description.
    let rev = t
        .post(
            &format!("/api/v1/journal-entries/{id}/reverse"),
            &tok,
            json!({"date": "2026-02-01", "description": "Undo"}),
        )
        .await;
    assert_eq!(rev.status, 201);
    assert_eq!(rev.json()["date"], "2026-02-01");
    // Entries cannot be edited or deleted.
    for m in [Method::PUT, Method::PATCH, Method::DELETE] {
        let res = t
            .call(
                m,
                &format!("/api/v1/journal-entries/{id}"),
                Some(&tok),
                Some(json!({})),
            )
            .await;
        let v = res.error(405);
        assert!(res.headers.contains_key("allow"), "{v}");
    }
}

#[tokio::test]
async fn reversal_is_idempotent_with_a_key() {
    let t = TestApp::sqlite().await;
    let tok = t.token("acme", "user").await;
    let cash = t.account_id(&tok, "1000").await;
    let sales = t.account_id(&tok, "4000").await;
    let id = t.post_entry(&tok, &cash, &sales, 10).await.json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let reverse = || {
        Request::post(format!("/api/v1/journal-entries/{id}/reverse"))
            .header("authorization", format!("Bearer {tok}"))
            .header("idempotency-key", "rev-1")
            .body(Body::empty())
            .unwrap()
    };
    let first = t.send(reverse()).await;
    assert_eq!(first.status, 201, "{}", first.text());
    // A retry replays the reversal instead of answering 409 "already reversed".
    let retry = t.send(reverse()).await;
    assert_eq!(retry.status, 201);
    assert_eq!(retry.headers["idempotent-replayed"], "true");
    assert_eq!(retry.json()["id"], first.json()["id"]);
    // Without the key, a second reversal is a conflict.
    t.call(
        Method::POST,
        &format!("/api/v1/journal-entries/{id}/reverse"),
        Some(&tok),
        None,
    )
    .await
    .error(409);
}

#[tokio::test]
async fn huge_bodies_are_413() {
    let t = TestApp::sqlite().await;
    let tok = t.token("acme", "user").await;
    let big = format!(
        r#"{{"date":"2026-01-15","description":"{}","lines":[]}}"#,
        "x".repeat(200_000)
    );
    // With a Content-Length.
    let res = t
        .send(
            Request::post("/api/v1/journal-entries")
                .header("authorization", format!("Bearer {tok}"))
                .header("content-type", "application/json")
                .header("content-length", big.len())
                .body(Body::from(big.clone()))
                .unwrap(),
        )
        .await;
    res.error(413);
    // Streamed without a length.
    let stream = futures_stream(big.into_bytes());
    let res = t
        .send(
            Request::post("/api/v1/auth/token")
                .header("content-type", "application/json")
                .body(stream)
                .unwrap(),
        )
        .await;
    res.error(413);
}

/// A body sent in chunks with no known length (like `Transfer-Encoding: chunked`).
fn futures_stream(bytes: Vec<u8>) -> Body {
    struct Chunks(std::collections::VecDeque<axum::body::Bytes>);
    impl http_body::Body for Chunks {
        type Data = axum::body::Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
            std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
        }
    }
    Body::new(Chunks(
        bytes
            .chunks(8192)
            .map(axum::body::Bytes::copy_from_slice)
            .collect(),
    ))
}

#[tokio::test]
async fn versions_and_unknown_routes() {
    let t = TestApp::sqlite().await;
    let res = t.call(Method::GET, "/api/v2/accounts", None, None).await;
    assert!(res.error(404)["detail"].as_str().unwrap().contains("v2"));
    let res = t.call(Method::GET, "/api/v1/nope", None, None).await;
    res.error(404);
    assert_eq!(res.headers["api-version"], "1");
    t.call(Method::GET, "/nope", None, None).await.error(404);
    t.call(Method::GET, "/api/nope", None, None)
        .await
        .error(404);
    let res = t.call(Method::DELETE, "/health/", None, None).await;
    res.error(405);
    // Request ids are generated and propagated.
    let res = t.call(Method::GET, "/health/", None, None).await;
    assert!(res.headers.contains_key("x-request-id"));
    let res = t
        .send(
            Request::get("/health/")
                .header("x-request-id", "abc-123")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(res.headers["x-request-id"], "abc-123");
}

#[tokio::test]
async fn tenant_resolution_errors() {
    let t = TestApp::sqlite().await;
    let tok = t.token("acme", "user").await;
    let with = |name: &'static str, value: &'static str| {
        Request::get("/api/v1/users/me")
            .header("authorization", format!("Bearer {tok}"))
            .header(name, value)
            .body(Body::empty())
            .unwrap()
    };
    // The matching tenant, by header or subdomain: fine.
    assert_eq!(t.send(with("x-tenant-id", "acme")).await.status, 200);
    assert_eq!(
        t.send(with("host", "acme.localhost:8080")).await.status,
        200
    );
    // Malformed: 400. Unknown (anonymous request): 404.
    t.send(with("x-tenant-id", "not a tenant")).await.error(400);
    let anon = Request::post("/api/v1/auth/token")
        .header("x-tenant-id", "initech")
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"tenant": "initech", "username": "admin", "password": PASSWORD}).to_string(),
        ))
        .unwrap();
    t.send(anon).await.error(404);
    // Health is exempt from tenant resolution.
    let res = t
        .send(
            Request::get("/health/")
                .header("x-tenant-id", "not a tenant")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(res.status, 200);
}

#[tokio::test]
async fn responses_are_compressed_when_asked() {
    let t = TestApp::sqlite().await;
    let res = t
        .send(
            Request::get("/api/schema/")
                .header("accept-encoding", "gzip")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(res.status, 200);
    assert_eq!(res.headers["content-encoding"], "gzip");
}

#[tokio::test]
async fn slow_requests_time_out_with_json_408() {
    let t = TestApp::sqlite().await;
    // A client that never finishes sending its body.
    struct Stalled;
    impl http_body::Body for Stalled {
        type Data = axum::body::Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
            std::task::Poll::Pending
        }
    }
    tokio::time::pause();
    let res = t
        .send(
            Request::post("/api/v1/auth/token")
                .header("content-type", "application/json")
                .body(Body::new(Stalled))
                .unwrap(),
        )
        .await;
    let v = res.error(408);
    assert!(v["detail"].as_str().unwrap().contains("too long"));
}

#[tokio::test]
async fn ledger_sums_cannot_overflow_on_sqlite() {
    common::overflow_suite(&TestApp::sqlite().await).await;
}

#[tokio::test]
async fn invisible_characters_are_refused_naming_the_field() {
    let t = TestApp::sqlite().await;
    let admin = t.token("acme", "admin").await;
    let cash = t.account_id(&admin, "1000").await;
    let sales = t.account_id(&admin, "4000").await;
    for bad in [
        "\u{202E}", "\u{202A}", "\u{2066}", "\u{2069}", "\u{200B}", "\u{200F}", "\u{FEFF}",
        "\u{AD}", "\u{061C}",
    ] {
        let res = t
            .post(
                "/api/v1/accounts",
                &admin,
                serde_json::json!({"code": "1999", "name": format!("Cash{bad}evil"), "type": "asset"}),
            )
            .await;
        assert_eq!(res.error(422)["field"], "name", "{bad:?}");
        let entry = |desc: &str, memo: &str| {
            serde_json::json!({"date": "2026-01-15", "description": desc, "lines": [
                {"account_id": cash, "debit": 1, "memo": memo}, {"account_id": sales, "credit": 1}]})
        };
        let res = t
            .post(
                "/api/v1/journal-entries",
                &admin,
                entry(&format!("a{bad}b"), "m"),
            )
            .await;
        assert_eq!(res.error(422)["field"], "description", "{bad:?}");
        let res = t
            .post(
                "/api/v1/journal-entries",
                &admin,
                entry("ok", &format!("a{bad}b")),
            )
            .await;
        assert_eq!(res.error(422)["field"], "lines[0].memo", "{bad:?}");
    }
    // Visible non-ASCII text is fine.
    let res = t
        .post(
            "/api/v1/accounts",
            &admin,
            serde_json::json!({"code": "1998", "name": "Caisse – espèces ☕ مصرف", "type": "asset"}),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text());
}

#[tokio::test]
async fn idempotency_survives_crashes_on_sqlite() {
    common::idempotency_crash_suite(&TestApp::sqlite().await).await;
}
