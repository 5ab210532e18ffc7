//! Shared test helpers: an app over a fresh database, request helpers, and the
//! database-independent suites run on SQLite and on PostgreSQL.
#![allow(dead_code, unreachable_pub, missing_docs)]

use axum::{
    Router,
    body::Body,
    http::{HeaderMap, Method, Request, StatusCode},
};
use http_body_util::BodyExt;
use rampart_erp::{AppState, Config, app};
use serde_json::{Value, json};
use sqlx::{Connection, Executor};
use tower::ServiceExt;

pub const PASSWORD: &str = "demo-password";

pub struct TestApp {
    pub state: AppState,
    pub router: Router,
}

pub struct Res {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Res {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}), status {}: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts the JSON error shape and returns the body.
    pub fn error(&self, status: u16) -> Value {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text());
        assert_eq!(
            self.headers["content-type"], "application/json",
            "error responses are JSON"
        );
        let v = self.json();
        assert!(v["error"].is_string(), "{v}");
        assert!(v["detail"].is_string(), "{v}");
        v
    }
}

impl TestApp {
    pub async fn sqlite() -> Self {
        Self::with_config(Config::for_tests("sqlite::memory:")).await
    }

    pub async fn with_config(config: Config) -> Self {
        let (state, generated) = AppState::connect(config).await.expect("connect");
        assert!(generated.is_none(), "the test password is configured");
        let router = app(state.clone());
        Self { state, router }
    }

    pub fn rebuild(&mut self) {
        self.router = app(self.state.clone());
    }

    pub async fn send(&self, mut req: Request<Body>) -> Res {
        // Each request without a peer address comes from a client of its own: the login
        // policy (5/minute per client IP, token endpoint included) would otherwise
        // count every test's logins in one bucket.
        if req
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .is_none()
        {
            let id = uuid::Uuid::new_v4().as_u128();
            let peer =
                std::net::SocketAddr::from((std::net::Ipv6Addr::from(id | (0xfd << 120)), 4000));
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
        }
        let res = self.router.clone().oneshot(req).await.expect("infallible");
        let status = res.status();
        let headers = res.headers().clone();
        let body = res
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .to_vec();
        Res {
            status,
            headers,
            body,
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Res {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        let req = match body {
            Some(v) => b
                .header("content-type", "application/json")
                .body(Body::from(v.to_string()))
                .unwrap(),
            None => b.body(Body::empty()).unwrap(),
        };
        self.send(req).await
    }

    pub async fn get(&self, path: &str, token: &str) -> Res {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Res {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    pub async fn token(&self, tenant: &str, username: &str) -> String {
        let res = self
            .call(
                Method::POST,
                "/api/v1/auth/token",
                None,
                Some(json!({"tenant": tenant, "username": username, "password": PASSWORD})),
            )
            .await;
        assert_eq!(res.status, 200, "{}", res.text());
        res.json()["access_token"].as_str().unwrap().to_owned()
    }

    /// `code -> id` of a tenant's accounts.
    pub async fn account_id(&self, token: &str, code: &str) -> String {
        let res = self.get("/api/v1/accounts?limit=200", token).await;
        assert_eq!(res.status, 200);
        res.json()["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["code"] == code)
            .unwrap_or_else(|| panic!("no account {code}"))["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn post_entry(&self, token: &str, debit: &str, credit: &str, amount: i64) -> Res {
        let body = json!({
            "date": "2026-01-15",
            "description": "Test entry",
            "lines": [
                {"account_id": debit, "debit": amount, "memo": "d"},
                {"account_id": credit, "credit": amount}
            ]
        });
        self.post("/api/v1/journal-entries", token, body).await
    }
}

/// The journal-entry life cycle: post, read, list, trial balance, reverse.
pub async fn ledger_suite(t: &TestApp) {
    let tok = t.token("acme", "user").await;
    let cash = t.account_id(&tok, "1000").await;
    let sales = t.account_id(&tok, "4000").await;

    let res = t.post_entry(&tok, &cash, &sales, 12_345).await;
    assert_eq!(res.status, 201, "{}", res.text());
    let entry = res.json();
    let id = entry["id"].as_str().unwrap().to_owned();
    assert_eq!(entry["total"], 12_345);
    assert_eq!(entry["lines"].as_array().unwrap().len(), 2);
    assert_eq!(entry["lines"][0]["account_code"], "1000");
    assert_eq!(entry["lines"][0]["debit"], 12_345);
    assert_eq!(entry["lines"][0]["credit"], 0);
    assert_eq!(entry["lines"][0]["memo"], "d");
    assert_eq!(entry["lines"][1]["memo"], Value::Null);

    let got = t.get(&format!("/api/v1/journal-entries/{id}"), &tok).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["id"], id.as_str());

    let list = t.get("/api/v1/journal-entries", &tok).await.json();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(list["items"][0]["lines"].as_array().unwrap().len(), 2);

    let tb = t.get("/api/v1/reports/trial-balance", &tok).await.json();
    assert_eq!(tb["total_debit"], 12_345);
    assert_eq!(tb["total_credit"], 12_345);
    assert_eq!(tb["balanced"], true);
    let row = |tb: &Value, code: &str| {
        tb["accounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["code"] == code)
            .unwrap()
            .clone()
    };
    assert_eq!(row(&tb, "1000")["balance"], 12_345);
    assert_eq!(row(&tb, "4000")["balance"], -12_345);
    assert_eq!(row(&tb, "5000")["balance"], 0);

    // NUL and control characters (PostgreSQL rejects NUL): 422, never a 500.
    let nul = t
        .post(
            "/api/v1/journal-entries",
            &tok,
            json!({"date": "2026-01-15", "description": "a\u{0}b", "lines": [
                {"account_id": cash, "debit": 1}, {"account_id": sales, "credit": 1}]}),
        )
        .await;
    nul.error(422);
    let admin_tok = t.token("acme", "admin").await;
    t.post(
        "/api/v1/accounts",
        &admin_tok,
        json!({"code": "77", "name": "x\u{0}", "type": "asset"}),
    )
    .await
    .error(422);
    let res = t
        .call(
            Method::POST,
            "/api/v1/auth/token",
            None,
            Some(json!({"tenant": "acme", "username": "ad\u{0}min", "password": "p\u{0}"})),
        )
        .await;
    res.error(401);

    // Unbalanced: nothing is written.
    let bad = t
        .post(
            "/api/v1/journal-entries",
            &tok,
            json!({"date": "2026-01-15", "description": "x", "lines": [
                {"account_id": cash, "debit": 100}, {"account_id": sales, "credit": 99}]}),
        )
        .await;
    assert_eq!(bad.error(422)["debits"], 100);
    // An account that does not exist: rolled back, nothing written.
    let ghost = t
        .post(
            "/api/v1/journal-entries",
            &tok,
            json!({"date": "2026-01-15", "description": "x", "lines": [
                {"account_id": cash, "debit": 100},
                {"account_id": "00000000-0000-4000-8000-000000000000", "credit": 100}]}),
        )
        .await;
    ghost.error(422);
    let list = t.get("/api/v1/journal-entries", &tok).await.json();
    assert_eq!(
        list["items"].as_array().unwrap().len(),
        1,
        "nothing partial"
    );

    // Reversal: swapped lines, linked both ways, at most once.
    let rev = t
        .call(
            Method::POST,
            &format!("/api/v1/journal-entries/{id}/reverse"),
            Some(&tok),
            None,
        )
        .await;
    assert_eq!(rev.status, 201, "{}", rev.text());
    let rev = rev.json();
    assert_eq!(rev["reverses_id"], id.as_str());
    assert_eq!(rev["lines"][0]["credit"], 12_345);
    assert_eq!(rev["lines"][1]["debit"], 12_345);
    assert_eq!(rev["description"], "Reversal of Test entry");
    let orig = t
        .get(&format!("/api/v1/journal-entries/{id}"), &tok)
        .await
        .json();
    assert_eq!(orig["reversed_by"], rev["id"]);
    let again = t
        .post(
            &format!("/api/v1/journal-entries/{id}/reverse"),
            &tok,
            json!({"date": "2026-02-01"}),
        )
        .await;
    again.error(409);
    let tb = t.get("/api/v1/reports/trial-balance", &tok).await.json();
    assert_eq!(row(&tb, "1000")["balance"], 0);
    assert_eq!(tb["total_debit"], 24_690);

    // Accounts: admins create, codes are unique per tenant.
    let admin = t.token("acme", "admin").await;
    let created = t
        .post(
            "/api/v1/accounts",
            &admin,
            json!({"code": "1200", "name": "Inventory", "type": "asset"}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let acc = created.json();
    assert_eq!(acc["type"], "asset");
    let got = t
        .get(
            &format!("/api/v1/accounts/{}", acc["id"].as_str().unwrap()),
            &tok,
        )
        .await;
    assert_eq!(got.json()["name"], "Inventory");
    t.post(
        "/api/v1/accounts",
        &admin,
        json!({"code": "1200", "name": "Dup", "type": "asset"}),
    )
    .await
    .error(409);
    // The same code in another tenant is fine.
    let gadmin = t.token("globex", "admin").await;
    let other = t
        .post(
            "/api/v1/accounts",
            &gadmin,
            json!({"code": "1200", "name": "Inventory", "type": "asset"}),
        )
        .await;
    assert_eq!(other.status, 201);
}

/// `Idempotency-Key`: replay, mismatch, in flight.
pub async fn idempotency_suite(t: &TestApp) {
    let tok = t.token("acme", "user").await;
    let cash = t.account_id(&tok, "1000").await;
    let rent = t.account_id(&tok, "5000").await;
    let body = json!({"date": "2026-03-01", "description": "Rent", "lines": [
        {"account_id": rent, "debit": 50_000}, {"account_id": cash, "credit": 50_000}]});
    let req = |key: &str, body: &Value| {
        Request::post("/api/v1/journal-entries")
            .header("authorization", format!("Bearer {tok}"))
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let first = t.send(req("key-1", &body)).await;
    assert_eq!(first.status, 201, "{}", first.text());
    // Same key, same body (keys reordered): the same response, nothing new posted.
    let reordered: Value = serde_json::from_str(&format!(
        r#"{{"lines": {}, "description": "Rent", "date": "2026-03-01"}}"#,
        body["lines"]
    ))
    .unwrap();
    let replay = t.send(req("key-1", &reordered)).await;
    assert_eq!(replay.status, 201);
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    assert_eq!(replay.json(), first.json());
    let list = t.get("/api/v1/journal-entries", &tok).await.json();
    let rents = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["description"] == "Rent")
        .count();
    assert_eq!(rents, 1, "replay posted nothing");
    // Same key, different body: 422.
    let mut other = body.clone();
    other["description"] = json!("Other");
    t.send(req("key-1", &other)).await.error(422);
    // A validation error is stored and replayed too.
    let mut bad = body.clone();
    bad["lines"][0]["debit"] = json!(1);
    let e1 = t.send(req("key-bad", &bad)).await;
    e1.error(422);
    let e2 = t.send(req("key-bad", &bad)).await;
    assert_eq!(e2.headers["idempotent-replayed"], "true");
    assert_eq!(e2.json(), e1.json());
    // The key is per user: another user may use the same key.
    let admin = t.token("acme", "admin").await;
    let res = t
        .send(
            Request::post("/api/v1/journal-entries")
                .header("authorization", format!("Bearer {admin}"))
                .header("content-type", "application/json")
                .header("idempotency-key", "key-1")
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await;
    assert_eq!(res.status, 201);
    assert!(!res.headers.contains_key("idempotent-replayed"));
    // In flight: a key recorded but not finished answers 409.
    let me = t.get("/api/v1/users/me", &tok).await.json();
    sqlx::query(
        "INSERT INTO idempotency_keys (tenant_id, user_id, idem_key, fingerprint, state, created_at)
         VALUES ($1, $2, $3, $4, 'in_flight', $5)",
    )
    .bind("acme")
    .bind(me["id"].as_str().unwrap())
    .bind("key-busy")
    .bind(rampart_erp::idempotency::fingerprint(
        "POST",
        "/api/v1/journal-entries",
        &body,
    ))
    .bind(rampart_erp::db::now_rfc3339())
    .execute(t.state.db().pool())
    .await
    .unwrap();
    t.send(req("key-busy", &body)).await.error(409);
    // Malformed key: 400.
    t.send(req("has space", &body)).await.error(400);
}

/// A user of `acme` reaches no `globex` data through any endpoint.
pub async fn isolation_suite(t: &TestApp) {
    let g = t.token("globex", "admin").await;
    let g_cash = t.account_id(&g, "1000").await;
    let g_sales = t.account_id(&g, "4000").await;
    let g_entry = t.post_entry(&g, &g_cash, &g_sales, 777).await.json();
    let g_entry_id = g_entry["id"].as_str().unwrap().to_owned();

    for user in ["user", "admin"] {
        let a = t.token("acme", user).await;
        // Direct reads by id: 404, as if it did not exist.
        t.get(&format!("/api/v1/accounts/{g_cash}"), &a)
            .await
            .error(404);
        t.get(&format!("/api/v1/journal-entries/{g_entry_id}"), &a)
            .await
            .error(404);
        // Reversing it: 404, nothing posted.
        t.call(
            Method::POST,
            &format!("/api/v1/journal-entries/{g_entry_id}/reverse"),
            Some(&a),
            None,
        )
        .await
        .error(404);
        // Posting to its accounts: refused.
        let a_cash = t.account_id(&a, "1000").await;
        t.post_entry(&a, &a_cash, &g_sales, 5).await.error(422);
        // Lists and reports show only acme's data.
        let accounts = t.get("/api/v1/accounts?limit=200", &a).await.json();
        assert!(
            accounts["items"]
                .as_array()
                .unwrap()
                .iter()
                .all(|x| x["id"] != g_cash.as_str() && x["id"] != g_sales.as_str())
        );
        let entries = t.get("/api/v1/journal-entries?limit=200", &a).await.json();
        assert!(
            entries["items"]
                .as_array()
                .unwrap()
                .iter()
                .all(|x| x["id"] != g_entry_id.as_str())
        );
        let tb = t.get("/api/v1/reports/trial-balance", &a).await.json();
        assert!(
            tb["accounts"]
                .as_array()
                .unwrap()
                .iter()
                .all(|x| x["account_id"] != g_cash.as_str())
        );
        assert_ne!(tb["total_debit"], 777);
        // Asking for globex explicitly: 403, by header and by subdomain.
        for (name, value) in [("x-tenant-id", "globex"), ("host", "globex.localhost:8080")] {
            for path in [
                "/api/v1/accounts",
                "/api/v1/journal-entries",
                "/api/v1/reports/trial-balance",
                "/api/v1/users/me",
                "/dashboard/",
            ] {
                let res = t
                    .send(
                        Request::get(path)
                            .header("authorization", format!("Bearer {a}"))
                            .header(name, value)
                            .body(Body::empty())
                            .unwrap(),
                    )
                    .await;
                res.error(403);
            }
        }
        // Idempotency keys do not leak across tenants either: globex's key is unknown.
        let me = t.get("/api/v1/users/me", &a).await.json();
        assert_eq!(me["tenant"], "acme");
    }
    // A token for acme cannot be obtained with globex credentials in the body and
    // acme in the header.
    let res = t
        .send(
            Request::post("/api/v1/auth/token")
                .header("content-type", "application/json")
                .header("x-tenant-id", "acme")
                .body(Body::from(
                    json!({"tenant": "globex", "username": "admin", "password": PASSWORD})
                        .to_string(),
                ))
                .unwrap(),
        )
        .await;
    res.error(403);
    // Globex's own view is intact.
    let tb = t.get("/api/v1/reports/trial-balance", &g).await.json();
    assert_eq!(tb["total_debit"], 777);
}

/// Concurrent requests with one `Idempotency-Key` post exactly one entry, and
/// concurrent reversals of one entry post exactly one reversal.
pub async fn concurrency_suite(t: &TestApp) {
    let tok = t.token("acme", "user").await;
    let cash = t.account_id(&tok, "1000").await;
    let sales = t.account_id(&tok, "4000").await;
    let body = json!({"date": "2026-04-01", "description": "Concurrent", "lines": [
        {"account_id": cash, "debit": 3}, {"account_id": sales, "credit": 3}]});
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let router = t.router.clone();
        let req = Request::post("/api/v1/journal-entries")
            .header("authorization", format!("Bearer {tok}"))
            .header("content-type", "application/json")
            .header("idempotency-key", "same-key")
            .body(Body::from(body.to_string()))
            .unwrap();
        tasks.push(tokio::spawn(async move {
            router.oneshot(req).await.unwrap().status().as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    assert!(
        statuses.iter().all(|s| *s == 201 || *s == 409),
        "{statuses:?}"
    );
    assert!(statuses.contains(&201), "{statuses:?}");
    let list = t
        .get("/api/v1/journal-entries?limit=200", &tok)
        .await
        .json();
    let posted: Vec<&Value> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["description"] == "Concurrent")
        .collect();
    assert_eq!(posted.len(), 1, "exactly one entry for one key");

    let id = posted[0]["id"].as_str().unwrap().to_owned();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let router = t.router.clone();
        let req = Request::post(format!("/api/v1/journal-entries/{id}/reverse"))
            .header("authorization", format!("Bearer {tok}"))
            .body(Body::empty())
            .unwrap();
        tasks.push(tokio::spawn(async move {
            router.oneshot(req).await.unwrap().status().as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 201 || *s == 409),
        "{statuses:?}"
    );
}

const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A fresh PostgreSQL database, dropped by [`TempDatabase::drop_db`].
pub struct TempDatabase {
    admin_url: String,
    name: String,
    pub url: String,
}

impl TempDatabase {
    /// `None` (test skipped) when PostgreSQL is unreachable, unless
    /// `RAMPART_REQUIRE_POSTGRES=1`.
    pub async fn create() -> Option<Self> {
        let admin_url =
            std::env::var("RAMPART_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.into());
        let mut conn = match sqlx::PgConnection::connect(&admin_url).await {
            Ok(c) => c,
            Err(e) => {
                assert!(
                    std::env::var("RAMPART_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                    "PostgreSQL is required but unreachable at {admin_url}: {e}"
                );
                eprintln!("SKIPPED: PostgreSQL unreachable at {admin_url}: {e}");
                return None;
            }
        };
        let name = format!("rampart_erp_test_{}", uuid::Uuid::new_v4().simple());
        conn.execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("create database");
        conn.close().await.ok();
        let base = admin_url
            .rsplit_once('/')
            .map_or(admin_url.as_str(), |(b, _)| b);
        let url = format!("{base}/{name}");
        Some(Self {
            admin_url,
            name,
            url,
        })
    }

    pub async fn drop_db(self) {
        let mut conn = sqlx::PgConnection::connect(&self.admin_url)
            .await
            .expect("reconnect");
        conn.execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name).as_str())
            .await
            .expect("drop database");
    }
}

/// A fresh directory under the system's temporary directory, removed on drop (also when
/// the test panics).
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Issue 18's attack on the ledger: entries of 250 debit lines of 10^15 minor units
/// each (inside the per-line and per-entry limits), posted until the sums would pass
/// `i64::MAX`. Every post is 201 or a 422 naming the field; the trial balance and the
/// dashboard keep answering 200 with exact figures.
pub async fn overflow_suite(t: &TestApp) {
    use rampart_erp::ledger::{MAX_ACCOUNT_TOTAL, MAX_AMOUNT, MAX_TENANT_TOTAL};
    let tok = t.token("acme", "user").await;
    let admin = t.token("acme", "admin").await;
    let cash = t.account_id(&tok, "1000").await;
    let sales = t.account_id(&tok, "4000").await;
    let entry = |debits: &[String], credits: &[String]| {
        let mut lines = Vec::new();
        for i in 0..250 {
            lines.push(json!({"account_id": debits[i % debits.len()], "debit": MAX_AMOUNT}));
        }
        for i in 0..250 {
            lines.push(json!({"account_id": credits[i % credits.len()], "credit": MAX_AMOUNT}));
        }
        json!({"date": "2026-05-01", "description": "Attack", "lines": lines})
    };
    let per_entry = 250 * i128::from(MAX_AMOUNT);
    let mut posted: i128 = 0;
    // One account per side: its ceiling stops the fifth entry.
    let mut refused = Vec::new();
    for _ in 0..5 {
        let res = t
            .post(
                "/api/v1/journal-entries",
                &tok,
                entry(std::slice::from_ref(&cash), std::slice::from_ref(&sales)),
            )
            .await;
        if res.status == 201 {
            posted += per_entry;
        } else {
            refused.push(res.error(422));
        }
    }
    assert_eq!(posted, i128::from(MAX_ACCOUNT_TOTAL), "{refused:?}");
    assert_eq!(refused.len(), 1);
    // Accounts are raised in id order: either side's first line is named.
    assert!(
        ["lines[0].debit", "lines[250].credit"].contains(&refused[0]["field"].as_str().unwrap()),
        "{}",
        refused[0]
    );
    // Eight accounts per side: the tenant's ceiling stops the rest of 40 entries.
    let mut debits = Vec::new();
    let mut credits = Vec::new();
    for i in 0..16 {
        let res = t
            .post(
                "/api/v1/accounts",
                &admin,
                json!({"code": format!("9{i:03}"), "name": format!("Attack {i}"),
                       "type": if i < 8 { "asset" } else { "income" }}),
            )
            .await;
        assert_eq!(res.status, 201, "{}", res.text());
        let id = res.json()["id"].as_str().unwrap().to_owned();
        if i < 8 {
            debits.push(id);
        } else {
            credits.push(id);
        }
    }
    let mut tenant_refusals = 0;
    for _ in 0..40 {
        let res = t
            .post("/api/v1/journal-entries", &tok, entry(&debits, &credits))
            .await;
        if res.status == 201 {
            posted += per_entry;
        } else {
            let e = res.error(422);
            assert_eq!(e["field"], "lines", "{e}");
            tenant_refusals += 1;
        }
    }
    assert_eq!(posted, i128::from(MAX_TENANT_TOTAL));
    assert_eq!(tenant_refusals, 40 - 16);
    let tb = t.get("/api/v1/reports/trial-balance", &tok).await;
    assert_eq!(tb.status, 200, "{}", tb.text());
    let tb = tb.json();
    assert_eq!(tb["total_debit"], MAX_TENANT_TOTAL);
    assert_eq!(tb["total_credit"], MAX_TENANT_TOTAL);
    assert_eq!(tb["balanced"], true);
    let res = t.get("/dashboard/", &tok).await;
    assert_eq!(res.status, 200, "{}", res.text());
    // A refused entry left no row behind.
    let count: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM journal_entries WHERE tenant_id = 'acme' AND description = 'Attack'",
    )
    .fetch_one(t.state.db().pool())
    .await
    .unwrap();
    assert_eq!(count, 4 + 16);
}

/// `Idempotency-Key` across crashes: a failure injected at each step of a keyed post
/// (before the commit, between the commit and the stored response, a stalled worker
/// whose key was taken over) never lets a retry post twice; expired keys are purged.
pub async fn idempotency_crash_suite(t: &TestApp) {
    use rampart_erp::{idempotency, ledger};
    let tok = t.token("globex", "user").await;
    let me = t.get("/api/v1/users/me", &tok).await.json();
    let user = me["id"].as_str().unwrap().to_owned();
    let cash = t.account_id(&tok, "1000").await;
    let sales = t.account_id(&tok, "4000").await;
    let db = t.state.db();
    let body = |desc: &str| {
        json!({"date": "2026-07-01", "description": desc, "lines": [
            {"account_id": cash, "debit": 9}, {"account_id": sales, "credit": 9}]})
    };
    let fp = |b: &Value| idempotency::fingerprint("POST", "/api/v1/journal-entries", b);
    let claim_row = |key: &'static str, b: Value, created_at: String| {
        let user = user.clone();
        async move {
            sqlx::query(
            "INSERT INTO idempotency_keys (tenant_id, user_id, idem_key, fingerprint, state, created_at)
             VALUES ('globex', $1, $2, $3, 'in_flight', $4)",
        )
        .bind(&user)
        .bind(key)
        .bind(fp(&b))
        .bind(&created_at)
        .execute(t.state.db().pool())
        .await
        .unwrap();
            idempotency::Claim::new("globex", &user, key, &created_at)
        }
    };
    let retry = |key: &'static str, b: Value| {
        Request::post("/api/v1/journal-entries")
            .header("authorization", format!("Bearer {tok}"))
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(Body::from(b.to_string()))
            .unwrap()
    };
    let count = |desc: &'static str| async move {
        sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM journal_entries WHERE tenant_id = 'globex' AND description = $1",
        )
        .bind(desc)
        .fetch_one(t.state.db().pool())
        .await
        .unwrap()
    };
    let new_entry = |b: &Value| serde_json::from_value::<ledger::NewEntry>(b.clone()).unwrap();

    // 1. The process stops after the entry's commit, before the response is stored:
    //    the retry replays (rebuilt from the entry), nothing new is posted.
    let b = body("crash-after-commit");
    let claim = claim_row("k-after", b.clone(), rampart_erp::db::now_rfc3339()).await;
    let posted = ledger::create_entry(db, "globex", &user, &new_entry(&b), Some(&claim))
        .await
        .unwrap();
    let res = t.send(retry("k-after", b.clone())).await;
    assert_eq!(res.status, 201, "{}", res.text());
    assert_eq!(res.headers["idempotent-replayed"], "true");
    assert_eq!(res.json()["id"], posted.id.as_str());
    assert_eq!(count("crash-after-commit").await, 1);

    // 2. The process stops before the commit: nothing was posted; once the key is
    //    stale, the retry takes it over and posts exactly once.
    let b = body("crash-before-commit");
    claim_row("k-before", b.clone(), "2000-01-01T00:00:00.000000Z".into()).await;
    let res = t.send(retry("k-before", b.clone())).await;
    assert_eq!(res.status, 201, "{}", res.text());
    assert_eq!(t.send(retry("k-before", b.clone())).await.status, 201);
    assert_eq!(count("crash-before-commit").await, 1);

    // 3. A worker that stalled past the takeover finishes late: its claim is gone, its
    //    entry rolled back (409), the retry's entry is the only one.
    let b = body("stalled-worker");
    let stale = claim_row("k-stall", b.clone(), "2000-01-01T00:00:00.000000Z".into()).await;
    assert_eq!(t.send(retry("k-stall", b.clone())).await.status, 201);
    let late = ledger::create_entry(db, "globex", &user, &new_entry(&b), Some(&stale))
        .await
        .unwrap_err();
    assert_eq!(late.status(), 409);
    assert_eq!(count("stalled-worker").await, 1);

    // 4. Expiry: an expired key is purged, and reusing it is a new request.
    let b = body("expired-key");
    let first = t.send(retry("k-old", b.clone())).await;
    assert_eq!(first.status, 201);
    sqlx::query("UPDATE idempotency_keys SET created_at = '2000-01-01T00:00:00.000000Z' WHERE idem_key = 'k-old'")
        .execute(db.pool())
        .await
        .unwrap();
    let again = t.send(retry("k-old", b.clone())).await;
    assert_eq!(again.status, 201);
    assert!(!again.headers.contains_key("idempotent-replayed"));
    sqlx::query("UPDATE idempotency_keys SET created_at = '2000-01-01T00:00:00.000000Z'")
        .execute(db.pool())
        .await
        .unwrap();
    let purged = idempotency::purge_expired(db, std::time::Duration::from_secs(86_400))
        .await
        .unwrap();
    assert!(purged >= 4, "{purged}");
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM idempotency_keys")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(left, 0);
}
