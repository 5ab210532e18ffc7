//! Why [`CaptureFilter`](tower_rampart::profiler::CaptureFilter) answers
//! `Interest::sometimes`: the same server setup with the capture layer behind a plain
//! static filter (`Targets`, which answers `always`) loses request spans as soon as
//! something calls `enabled` through `LogTracer` without a following event — what
//! `log::log_enabled!` does, and sqlx does after every query (tokio-rs/tracing#2519).
//!
//! If a `tracing-subscriber` release fixes that bug, the second assertion fails: the
//! workaround can then be documented as unnecessary.
#![cfg(feature = "profiler")]

use std::{convert::Infallible, time::Duration};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{ServiceExt, service_fn};
use tower_layer::Layer;
use tower_rampart::profiler::{ProfilerLayer, QueryCapture, record_query};
use tracing_subscriber::{EnvFilter, filter::Targets, fmt, prelude::*};

#[tokio::test]
async fn a_static_per_layer_filter_drops_request_spans_under_log_compatibility() {
    tracing_subscriber::registry()
        .with(
            fmt::layer()
                .with_writer(std::io::sink)
                .with_filter(EnvFilter::new("info")),
        )
        .with(
            QueryCapture::default().with_filter(
                Targets::new()
                    .with_target("tower_rampart::profiler", tracing::Level::INFO)
                    .with_target("sqlx::query", tracing::Level::DEBUG),
            ),
        )
        .init();

    let profiler = ProfilerLayer::new();
    let svc = profiler.layer(service_fn(|_req: Request<()>| async {
        record_query("SELECT 1", Duration::ZERO, None);
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
    }));
    let run = |stale: bool| {
        let svc = svc.clone();
        async move {
            if stale {
                let _ = log::log_enabled!(target: "noise", log::Level::Info);
            }
            let res = svc.oneshot(Request::new(())).await.unwrap();
            res.into_body().collect().await.unwrap();
        }
    };

    run(false).await;
    let clean = profiler.store().records();
    assert_eq!(
        clean[0].query_count, 1,
        "without the stale check the naive setup works"
    );

    profiler.store().clear();
    for _ in 0..10 {
        run(true).await;
    }
    let lost = profiler
        .store()
        .records()
        .iter()
        .filter(|r| r.query_count == 0)
        .count();
    assert_eq!(
        lost, 10,
        "the pitfall: every request span was dropped for the layer"
    );
}
