//! Issue 17: responses to signed-in users carry `Cache-Control: no-store` (bearer token or
//! session cookie), so no shared cache or back button keeps them; anonymous pages do not.

mod common;

use axum::{body::Body, http::Request};
use common::{PASSWORD, TestApp};

#[tokio::test]
async fn signed_in_responses_are_not_stored() {
    let t = TestApp::sqlite().await;
    // Bearer token on the API.
    let token = t.token("acme", "user").await;
    let res = t.get("/api/v1/users/me", &token).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.headers["cache-control"], "no-store");

    // Session cookie on the dashboard.
    let res = t
        .send(
            Request::post("/accounts/login/")
                .header("content-type", "application/x-www-form-urlencoded")
                .header("host", "localhost:8080")
                .body(Body::from(format!(
                    "tenant=acme&username=user&password={PASSWORD}"
                )))
                .unwrap(),
        )
        .await;
    assert_eq!(res.status, 303, "{}", res.text());
    let set = res.headers["set-cookie"].to_str().unwrap();
    let cookie = set.split(';').next().unwrap().to_owned();
    let res = t
        .send(
            Request::get("/dashboard/")
                .header("cookie", cookie)
                .header("host", "localhost:8080")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(res.status, 200);
    assert_eq!(res.headers["cache-control"], "no-store");

    // Anonymous: the login page is not marked by this rule.
    let res = t
        .send(
            Request::get("/accounts/login/")
                .header("host", "localhost:8080")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(res.status, 200);
    assert_ne!(
        res.headers
            .get("cache-control")
            .map(|v| v.to_str().unwrap()),
        Some("no-store"),
        "anonymous pages are not forced to no-store"
    );
}
