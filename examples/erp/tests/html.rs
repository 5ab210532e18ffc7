//! Login, logout, dashboard, session cookies and CSRF, through `app().oneshot(…)`.

mod common;

use axum::{
    body::Body,
    http::{Method, Request},
};
use common::{PASSWORD, TestApp};
use serde_json::json;
use tower::ServiceExt;

fn login_req(tenant: &str, username: &str, password: &str) -> Request<Body> {
    Request::post("/accounts/login/")
        .header("content-type", "application/x-www-form-urlencoded")
        .header("host", "localhost:8080")
        .body(Body::from(format!(
            "tenant={tenant}&username={username}&password={password}"
        )))
        .unwrap()
}

/// Logs in and returns the `name=value` of the session cookie.
async fn login(t: &TestApp, tenant: &str, username: &str) -> String {
    let res = t.send(login_req(tenant, username, PASSWORD)).await;
    assert_eq!(res.status, 303, "{}", res.text());
    assert_eq!(res.headers["location"], "/dashboard/");
    let set = res.headers["set-cookie"].to_str().unwrap().to_owned();
    assert!(set.contains("HttpOnly"), "{set}");
    assert!(set.contains("SameSite=Strict"), "{set}");
    assert!(set.contains("Path=/"), "{set}");
    set.split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn login_page_and_form() {
    let t = TestApp::sqlite().await;
    let res = t
        .send(
            Request::get("/accounts/login/")
                .header("host", "globex.localhost:8080")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(res.status, 200);
    assert!(
        res.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = res.text();
    assert!(html.contains("<form method=\"post\" action=\"/accounts/login/\""));
    assert!(
        html.contains("value=\"globex\""),
        "tenant prefilled from the subdomain"
    );

    // Wrong password: 401 with the form again, no cookie.
    let res = t.send(login_req("acme", "admin", "wrong")).await;
    assert_eq!(res.status, 401);
    assert!(
        res.text()
            .contains("Invalid tenant, user name or password.")
    );
    assert!(!res.headers.contains_key("set-cookie"));

    // Missing fields: JSON 422 (axum's form rejection, rewritten).
    let res = t
        .send(
            Request::post("/accounts/login/")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Body::from("tenant=acme"))
                .unwrap(),
        )
        .await;
    assert!(res.status.is_client_error());
    assert_eq!(res.headers["content-type"], "application/json");

    // Cross-origin login: refused.
    let res = t
        .send(
            Request::post("/accounts/login/")
                .header("content-type", "application/x-www-form-urlencoded")
                .header("host", "localhost:8080")
                .header("origin", "http://evil.example")
                .body(Body::from(format!(
                    "tenant=acme&username=admin&password={PASSWORD}"
                )))
                .unwrap(),
        )
        .await;
    res.error(403);

    // Form tenant differs from the subdomain: refused.
    let res = t
        .send(
            Request::post("/accounts/login/")
                .header("content-type", "application/x-www-form-urlencoded")
                .header("host", "globex.localhost:8080")
                .body(Body::from(format!(
                    "tenant=acme&username=admin&password={PASSWORD}"
                )))
                .unwrap(),
        )
        .await;
    res.error(403);
}

#[tokio::test]
async fn session_dashboard_logout() {
    let t = TestApp::sqlite().await;
    // Anonymous: redirected to the login page.
    let res = t.call(Method::GET, "/dashboard/", None, None).await;
    assert_eq!(res.status, 303);
    assert_eq!(res.headers["location"], "/accounts/login/");
    let res = t.call(Method::GET, "/", None, None).await;
    assert_eq!(res.headers["location"], "/dashboard/");

    let cookie = login(&t, "acme", "user").await;
    let get = |path: &str| {
        Request::get(path)
            .header("cookie", cookie.clone())
            .header("host", "localhost:8080")
            .body(Body::empty())
            .unwrap()
    };
    // Logged in: the login page forwards to the dashboard.
    let res = t.send(get("/accounts/login/")).await;
    assert_eq!(res.headers["location"], "/dashboard/");

    let res = t.send(get("/dashboard/")).await;
    assert_eq!(res.status, 200);
    let html = res.text();
    assert!(html.contains("Signed in as <strong>user</strong>"));
    assert!(html.contains("tenant <strong>acme</strong>"));
    assert!(html.contains("id=\"trial-balance\""));
    assert!(html.contains("No entries yet."));
    assert!(
        html.contains("<script nonce=\""),
        "the CSP layer's nonce is on the script"
    );
    assert!(!html.contains(" onclick="), "no inline handlers (CSP)");

    // The session cookie works on the API for reads...
    let me = t.send(get("/api/v1/users/me")).await;
    assert_eq!(me.json()["username"], "user");

    // ...and for same-origin writes (the dashboard's script).
    let tok = t.token("acme", "user").await;
    let cash = t.account_id(&tok, "1000").await;
    let sales = t.account_id(&tok, "4000").await;
    let body = json!({"date": "2026-01-15", "description": "From <the> dashboard", "lines": [
        {"account_id": cash, "debit": 250}, {"account_id": sales, "credit": 250}]})
    .to_string();
    let post = |origin: Option<&str>, site: Option<&str>| {
        let mut b = Request::post("/api/v1/journal-entries")
            .header("cookie", cookie.clone())
            .header("host", "localhost:8080")
            .header("content-type", "application/json");
        if let Some(o) = origin {
            b = b.header("origin", o);
        }
        if let Some(s) = site {
            b = b.header("sec-fetch-site", s);
        }
        b.body(Body::from(body.clone())).unwrap()
    };
    let res = t.send(post(Some("http://localhost:8080"), None)).await;
    assert_eq!(res.status, 201, "{}", res.text());
    // Cross-site writes with the cookie: 403 (CSRF).
    t.send(post(Some("http://evil.example"), None))
        .await
        .error(403);
    t.send(post(None, Some("cross-site"))).await.error(403);

    // The dashboard shows the entry (escaped) and the new trial balance.
    let html = t.send(get("/dashboard/")).await.text();
    assert!(html.contains("From &lt;the&gt; dashboard"));
    assert!(html.contains("id=\"tb-debit\">2.50<"));

    // A tampered cookie is ignored (anonymous).
    let res = t
        .send(
            Request::get("/dashboard/")
                .header("cookie", format!("{cookie}x"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(res.status, 303);

    // Logout clears the cookie; cross-origin logout is refused.
    let res = t
        .send(
            Request::post("/accounts/logout/")
                .header("cookie", cookie.clone())
                .header("host", "localhost:8080")
                .header("origin", "http://evil.example")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    res.error(403);
    let res = t.send(logout_request(&cookie)).await;
    assert_eq!(res.status, 303);
    assert_eq!(res.headers["location"], "/accounts/login/");
    assert_eq!(
        res.headers["clear-site-data"], "\"cache\", \"cookies\", \"storage\"",
        "the browser drops what the signed-out user left"
    );
    assert!(
        res.headers["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
}

#[tokio::test]
async fn dashboard_script_carries_the_csp_nonce() {
    let t = TestApp::sqlite().await;
    let cookie = login(&t, "acme", "admin").await;
    let res = t
        .router
        .clone()
        .oneshot(
            Request::get("/dashboard/")
                .header("cookie", cookie)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    // The security-headers layer drew a nonce, put it in the CSP header and gave the
    // same value to the handler.
    let csp = res.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    let nonce = csp
        .split('\'')
        .find_map(|t| t.strip_prefix("nonce-"))
        .expect("a nonce in the CSP")
        .to_owned();
    assert!(csp.contains("'strict-dynamic'"), "{csp}");
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    let html = String::from_utf8_lossy(&body);
    assert!(
        html.contains(&format!("<script nonce=\"{nonce}\">")),
        "{html}"
    );
    assert!(
        html.contains(&format!("<style nonce=\"{nonce}\">")),
        "{html}"
    );
    assert_eq!(html.matches("<script").count(), 1, "one script only");
}

#[tokio::test]
async fn session_of_one_tenant_cannot_browse_another() {
    let t = TestApp::sqlite().await;
    let cookie = login(&t, "acme", "admin").await;
    let res = t
        .send(
            Request::get("/dashboard/")
                .header("cookie", cookie)
                .header("host", "globex.localhost:8080")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    res.error(403);
}

#[tokio::test]
async fn logout_ends_the_session_everywhere() {
    let t = TestApp::sqlite().await;
    let cookie = login(&t, "acme", "user").await;
    let other = login(&t, "acme", "user").await;
    let dashboard = |cookie: &str| {
        Request::get("/dashboard/")
            .header("cookie", cookie.to_owned())
            .header("host", "localhost:8080")
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(t.send(dashboard(&cookie)).await.status, 200);
    let res = t.send(logout_request(&cookie)).await;
    assert_eq!(res.status, 303);
    // The old cookie (replayed, as a thief would) and the user's other session are
    // over: a second app over the same database (another instance) agrees.
    for cookie in [&cookie, &other] {
        let res = t.send(dashboard(cookie)).await;
        assert_eq!(res.status, 303, "{}", res.text());
        assert_eq!(res.headers["location"], "/accounts/login/");
        let api = t
            .send(
                Request::get("/api/v1/users/me")
                    .header("cookie", cookie.to_owned())
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        api.error(401);
        let instance2 = rampart_erp::app(t.state.clone());
        let res = instance2.oneshot(dashboard(cookie)).await.unwrap();
        assert_eq!(res.status(), 303);
    }
    // A new login works.
    let fresh = login(&t, "acme", "user").await;
    assert_eq!(t.send(dashboard(&fresh)).await.status, 200);
}

#[tokio::test]
async fn a_password_change_ends_the_sessions() {
    let t = TestApp::sqlite().await;
    let cookie = login(&t, "acme", "admin").await;
    let token = t.token("acme", "admin").await;
    let me = t.get("/api/v1/users/me", &token).await.json();
    rampart_erp::auth::set_password(
        &t.state,
        "acme",
        me["id"].as_str().unwrap(),
        "new-password-123",
    )
    .await
    .unwrap();
    let res = t
        .send(
            Request::get("/dashboard/")
                .header("cookie", cookie)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(res.status, 303);
    // Bearer tokens issued before the change end too.
    t.get("/api/v1/users/me", &token).await.error(401);
    let res = t.send(login_req("acme", "admin", "new-password-123")).await;
    assert_eq!(res.status, 303);
}

#[tokio::test]
async fn cookies_are_secure_over_https_or_by_env() {
    // Behind a trusted proxy that says the request came over HTTPS.
    let mut config = rampart_erp::Config::for_tests("sqlite::memory:");
    config.trusted_proxies = vec!["10.0.0.0/8".into()];
    let t = TestApp::with_config(config).await;
    let mut req = login_req("acme", "user", PASSWORD);
    req.headers_mut()
        .insert("x-forwarded-proto", "https".parse().unwrap());
    req.headers_mut()
        .insert("x-forwarded-for", "203.0.113.5".parse().unwrap());
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo::<std::net::SocketAddr>(
            "10.1.2.3:5000".parse().unwrap(),
        ));
    let res = t.send(req).await;
    assert_eq!(res.status, 303);
    assert!(
        res.headers["set-cookie"]
            .to_str()
            .unwrap()
            .contains("; Secure")
    );
    // The same header from an untrusted peer is not believed.
    let mut req = login_req("acme", "user", PASSWORD);
    req.headers_mut()
        .insert("x-forwarded-proto", "https".parse().unwrap());
    let res = t.send(req).await;
    assert!(
        !res.headers["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Secure")
    );
}

/// A same-origin `POST /accounts/logout/` with the session cookie.
fn logout_request(cookie: &str) -> Request<Body> {
    Request::post("/accounts/logout/")
        .header("cookie", cookie)
        .header("host", "localhost:8080")
        .header("origin", "http://localhost:8080")
        .body(Body::empty())
        .unwrap()
}
