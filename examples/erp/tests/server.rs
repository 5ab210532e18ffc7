//! A real server over TCP: bind, serve, speak HTTP/1.1 with a raw socket, shut down.

use std::net::SocketAddr;

use rampart_erp::{AppState, Config, app};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn http(addr: SocketAddr, request: String) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn serves_over_tcp_and_shuts_down_gracefully() {
    let (state, _) = AppState::connect(Config::for_tests("sqlite::memory:"))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app(state).into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async {
            let _ = stop_rx.await;
        })
        .await
    });

    let res = http(
        addr,
        format!("GET /health/live/ HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    assert!(res.contains("\"alive\""), "{res}");
    assert!(res.to_ascii_lowercase().contains("x-request-id:"), "{res}");

    let body = r#"{"tenant":"acme","username":"admin","password":"demo-password"}"#;
    let res = http(
        addr,
        format!(
            "POST /api/v1/auth/token HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    assert!(res.contains("access_token"), "{res}");
    assert!(res.to_ascii_lowercase().contains("api-version: 1"), "{res}");

    // Garbage JSON over the wire: a JSON 400, not a 5xx.
    let res = http(
        addr,
        format!(
            "POST /api/v1/auth/token HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 3\r\nConnection: close\r\n\r\n{{x}}"
        ),
    )
    .await;
    assert!(res.starts_with("HTTP/1.1 400"), "{res}");

    stop_tx.send(()).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), server)
        .await
        .expect("graceful shutdown completes")
        .unwrap()
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "port closed"
    );
}
