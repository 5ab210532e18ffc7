//! A real tonic server and client: a limited call sees `RESOURCE_EXHAUSTED`.

use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use super::*;

#[tokio::test]
async fn limited_grpc_call_gets_resource_exhausted_with_a_retry_hint() {
    // Both decision paths: with headers and without (the lean in-memory one).
    for style in [HeaderStyle::Ietf, HeaderStyle::None] {
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_serving::<tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>>()
            .await;
        let layer = RateLimitLayer::builder()
            .policy(Policy::new("grpc", Quota::per_minute(2)).path("/grpc.health.v1.Health/*"))
            .headers(style)
            .build()
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .layer(layer)
                .add_service(health)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = HealthClient::new(channel);
        let check = || {
            tonic::Request::new(HealthCheckRequest {
                service: String::new(),
            })
        };
        for _ in 0..2 {
            let res = client.check(check()).await.unwrap();
            assert_eq!(res.get_ref().status, 1, "SERVING");
            assert_eq!(
                res.metadata().get("ratelimit").is_some(),
                style == HeaderStyle::Ietf
            );
        }
        let status = client.check(check()).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(status.metadata().get("retry-after").unwrap(), "30");
        let ms: u64 = status
            .metadata()
            .get("grpc-retry-pushback-ms")
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((29_000..=30_000).contains(&ms), "{ms}");
        assert!(status.message().contains("rate limit exceeded"));
        server.abort();
    }
}
