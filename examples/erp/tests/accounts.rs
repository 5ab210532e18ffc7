//! Guessing one account's password from many client addresses: failed sign-ins are
//! counted per tenant and user name (`account-failures`, 10 an hour), by the token
//! endpoint and the form together, whether the account exists or not.

mod common;

use axum::http::Method;
use common::{PASSWORD, TestApp};
use serde_json::json;

async fn token_attempt(t: &TestApp, tenant: &str, user: &str, password: &str) -> u16 {
    // Each call comes from a new client address (`TestApp::send`): the per-IP login
    // policy never applies here.
    t.call(
        Method::POST,
        "/api/v1/auth/token",
        None,
        Some(json!({"tenant": tenant, "username": user, "password": password})),
    )
    .await
    .status
    .as_u16()
}

#[tokio::test]
async fn failed_sign_ins_are_limited_per_account_from_any_address() {
    let t = TestApp::sqlite().await;
    for i in 0..10 {
        assert_eq!(
            token_attempt(&t, "acme", "user", "wrong").await,
            401,
            "attempt {i}"
        );
    }
    // The 11th, even with the right password, is refused before any hash.
    let res = t
        .call(
            Method::POST,
            "/api/v1/auth/token",
            None,
            Some(json!({"tenant": "acme", "username": "user", "password": PASSWORD})),
        )
        .await;
    assert_eq!(res.status, 429, "{}", res.text());
    assert!(res.headers.contains_key("retry-after"));
    res.error(429);
    // Other accounts, and the same name in another tenant, are not affected.
    assert_eq!(token_attempt(&t, "acme", "admin", PASSWORD).await, 200);
    assert_eq!(token_attempt(&t, "globex", "user", PASSWORD).await, 200);
    // An account that does not exist answers the same way.
    for _ in 0..10 {
        assert_eq!(token_attempt(&t, "acme", "nobody", "wrong").await, 401);
    }
    assert_eq!(token_attempt(&t, "acme", "nobody", "wrong").await, 429);
}

#[tokio::test]
async fn successful_sign_ins_are_not_counted() {
    let t = TestApp::sqlite().await;
    for _ in 0..15 {
        assert_eq!(token_attempt(&t, "acme", "user", PASSWORD).await, 200);
    }
}
