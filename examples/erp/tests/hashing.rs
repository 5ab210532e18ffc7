//! Password hashing under load: 200 parallel wrong logins at the shipped Argon2 cost
//! stay within 150 MiB of the idle memory and get 401 or 503 only (its own test binary,
//! so the process's peak memory is this test's).

mod common;

use axum::{body::Body, http::Request};
use common::TestApp;
use rampart_erp::{Config, config::PasswordCost};
use serde_json::json;

/// `VmRSS` or `VmHWM` of this process, in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_wrong_logins_stay_within_150_mib() {
    let mut config = Config::for_tests("sqlite::memory:");
    config.password_cost = if std::env::var("FASTX").is_ok() {
        PasswordCost::Fast
    } else {
        PasswordCost::Default
    };
    let t = TestApp::with_config(config).await;
    // One login first, so the idle figure includes a warmed-up blocking thread.
    let one = |i: usize| {
        Request::post("/api/v1/auth/token")
            .header("content-type", "application/json")
            .body(Body::from(
                json!({"tenant": "acme", "username": if i.is_multiple_of(2) { "user" } else { "nobody" }, "password": "wrong"})
                    .to_string(),
            ))
            .unwrap()
    };
    assert_eq!(t.send(one(0)).await.status, 401);
    let idle = status_kib("VmRSS:");
    println!(
        "before the burst: RSS {} MiB, peak so far {} MiB",
        idle / 1024,
        status_kib("VmHWM:") / 1024
    );
    let mut tasks = Vec::new();
    for i in 0..200 {
        let router = t.router.clone();
        let req = one(i);
        tasks.push(tokio::spawn(async move {
            let mut req = req;
            let peer = std::net::SocketAddr::from((
                std::net::Ipv6Addr::from(uuid::Uuid::new_v4().as_u128() | (0xfd << 120)),
                4000,
            ));
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            let res = tower::ServiceExt::oneshot(router, req).await.unwrap();
            let retry = res.headers().contains_key("retry-after");
            (res.status().as_u16(), retry)
        }));
    }
    let mut counts = std::collections::BTreeMap::new();
    for task in tasks {
        let (status, retry) = task.await.unwrap();
        assert!(status == 401 || status == 503, "{status}");
        if status == 503 {
            assert!(retry, "503 carries Retry-After");
        }
        *counts.entry(status).or_insert(0) += 1;
    }
    let peak = status_kib("VmHWM:");
    let growth_mib = peak.saturating_sub(idle) / 1024;
    println!(
        "idle RSS {} MiB, peak {} MiB, growth {growth_mib} MiB, statuses {counts:?}",
        idle / 1024,
        peak / 1024
    );
    assert!(growth_mib <= 150, "peak grew {growth_mib} MiB above idle");
}
