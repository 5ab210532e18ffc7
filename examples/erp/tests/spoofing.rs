//! The client address behind a reverse proxy, tried as an attacker would: the ERP trusts
//! `127.0.0.1/32`, the proxy appends the real client to `X-Forwarded-For`, and the client
//! writes every other forwarding header itself. The login limit (5/minute per client IP)
//! must hold by the 6th attempt, whatever the client writes.

mod common;

use axum::{
    body::Body,
    extract::ConnectInfo,
    http::{Method, Request},
};
use common::TestApp;
use rampart_erp::config::Config;

async fn behind_proxy() -> TestApp {
    let mut config = Config::for_tests("sqlite::memory:");
    config.trusted_proxies = vec!["127.0.0.1/32".to_owned()];
    TestApp::with_config(config).await
}

fn login(headers: &[(&str, String)]) -> Request<Body> {
    let mut b = Request::builder()
        .method(Method::POST)
        .uri("/accounts/login/")
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", "http://localhost");
    for (k, v) in headers {
        b = b.header(*k, v);
    }
    let mut req = b
        .body(Body::from("tenant=acme&username=user&password=wrong"))
        .unwrap();
    req.extensions_mut()
        .insert(ConnectInfo::<std::net::SocketAddr>(
            "127.0.0.1:50000".parse().unwrap(),
        ));
    req
}

async fn first_429(
    t: &TestApp,
    attempt: impl Fn(u32) -> Vec<(&'static str, String)>,
) -> Option<u32> {
    for n in 1..=8 {
        let res = t.send(login(&attempt(n))).await;
        if res.status == 429 {
            return Some(n);
        }
        assert_ne!(res.status.as_u16() / 100, 5, "attempt {n}: {}", res.text());
    }
    None
}

#[tokio::test]
async fn a_client_written_forwarded_header_is_not_believed() {
    let t = behind_proxy().await;
    let hit = first_429(&t, |n| {
        vec![
            ("x-forwarded-for", "203.0.113.8".to_owned()),
            ("forwarded", format!("for=198.51.100.{n}")),
        ]
    })
    .await;
    assert_eq!(hit, Some(6));
}

#[tokio::test]
async fn junk_in_the_list_does_not_fall_back_to_x_real_ip() {
    let t = behind_proxy().await;
    let hit = first_429(&t, |n| {
        vec![
            ("x-forwarded-for", "junk, 203.0.113.9".to_owned()),
            ("x-real-ip", format!("192.0.2.{n}")),
        ]
    })
    .await;
    assert_eq!(hit, Some(6));
}

#[tokio::test]
async fn a_rotating_left_part_of_the_list_changes_nothing() {
    let t = behind_proxy().await;
    let hit = first_429(&t, |n| {
        vec![(
            "x-forwarded-for",
            format!("198.51.100.{n}, \"x{n}, 203.0.113.10"),
        )]
    })
    .await;
    assert_eq!(hit, Some(6));
}

#[tokio::test]
async fn hsts_follows_the_proxy_scheme_not_a_client_forwarded_header() {
    let t = behind_proxy().await;
    let res = t
        .send(login(&[
            ("x-forwarded-for", "203.0.113.11".to_owned()),
            ("x-forwarded-proto", "http".to_owned()),
            ("forwarded", "proto=https".to_owned()),
        ]))
        .await;
    assert!(
        !res.headers.contains_key("strict-transport-security"),
        "HSTS over plain HTTP"
    );
    let res = t
        .send(login(&[
            ("x-forwarded-for", "203.0.113.12".to_owned()),
            ("x-forwarded-proto", "https".to_owned()),
        ]))
        .await;
    assert!(res.headers.contains_key("strict-transport-security"));
}
