//! Query-count assertions for tests: the statements a future runs, and a failure that
//! lists them when there are too many (Django's `assertNumQueries`).

use std::{future::Future, sync::Arc};

use quanta::Instant;
use tracing::Instrument as _;

use super::{
    capture::{Collector, empty_record, request_span},
    store::ProfileStore,
};

/// Runs `fut` and returns its output with the normalised statements it ran, in order,
/// captured as the profiler captures a request's (sqlx events, `db.statement` spans and
/// events, [`record_query`](super::record_query)).
///
/// Needs the [`query_capture_layer`](super::query_capture_layer) on the current
/// `tracing` subscriber; without it nothing is captured.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_rampart::profiler::{capture_queries, query_capture_layer, record_query};
/// use tracing_subscriber::prelude::*;
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let _guard = tracing_subscriber::registry().with(query_capture_layer()).set_default();
/// let (n, statements) = capture_queries(async {
///     record_query("SELECT * FROM t WHERE id = 1", Duration::ZERO, None);
///     7
/// })
/// .await;
/// assert_eq!(n, 7);
/// assert_eq!(statements, ["SELECT * FROM t WHERE id = ?"]);
/// # });
/// ```
pub async fn capture_queries<F: Future>(fut: F) -> (F::Output, Vec<String>) {
    // A private store: nothing reaches the application's profiles.
    let store = ProfileStore::default();
    let collector = Arc::new(Collector::new(
        Instant::now(),
        empty_record(),
        store.clone(),
        (usize::MAX, f64::INFINITY),
        10_000,
        None,
    ));
    let span = request_span(&collector, 0);
    let out = fut.instrument(span).await;
    let statements = collector
        .lock()
        .record
        .queries
        .iter()
        .map(|q| q.statement.clone())
        .collect();
    (out, statements)
}

/// Runs `fut` and panics, listing the statements, when it ran more than `max` queries.
///
/// # Panics
///
/// When more than `max` queries ran (that is the assertion).
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_rampart::profiler::{assert_max_queries, query_capture_layer, record_query};
/// use tracing_subscriber::prelude::*;
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let _guard = tracing_subscriber::registry().with(query_capture_layer()).set_default();
/// assert_max_queries(2, async {
///     record_query("SELECT 1", Duration::ZERO, None);
/// })
/// .await;
/// # });
/// ```
pub async fn assert_max_queries<F: Future>(max: usize, fut: F) -> F::Output {
    let (out, statements) = capture_queries(fut).await;
    assert!(
        statements.len() <= max,
        "expected at most {max} queries, {} ran:\n{}",
        statements.len(),
        statements
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{}. {s}", i + 1))
            .collect::<Vec<_>>()
            .join("\n")
    );
    out
}

/// Runs `fut` and panics, listing the statements, when it ran any query.
///
/// # Panics
///
/// When a query ran.
///
/// # Example
///
/// ```
/// use tower_rampart::profiler::{assert_no_queries, query_capture_layer};
/// use tracing_subscriber::prelude::*;
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let _guard = tracing_subscriber::registry().with(query_capture_layer()).set_default();
/// let cached = assert_no_queries(async { "served from the cache" }).await;
/// assert_eq!(cached, "served from the cache");
/// # });
/// ```
pub async fn assert_no_queries<F: Future>(fut: F) -> F::Output {
    assert_max_queries(0, fut).await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tracing_subscriber::prelude::*;

    use super::*;
    use crate::profiler::{query_capture_layer, record_query};

    #[tokio::test]
    async fn over_the_maximum_fails_with_the_statements() {
        let _g = tracing_subscriber::registry()
            .with(query_capture_layer())
            .set_default();
        let run = || async {
            for id in 0..3 {
                record_query(
                    &format!("SELECT * FROM items WHERE id = {id}"),
                    Duration::ZERO,
                    None,
                );
            }
        };
        assert_max_queries(3, run()).await;
        let failed = tokio::spawn(async move {
            let _g = tracing_subscriber::registry()
                .with(query_capture_layer())
                .set_default();
            assert_max_queries(2, run()).await;
        })
        .await
        .unwrap_err();
        let msg = failed.into_panic();
        let msg = msg.downcast_ref::<String>().unwrap();
        assert!(msg.contains("at most 2 queries, 3 ran"), "{msg}");
        assert!(msg.contains("3. SELECT * FROM items WHERE id = ?"), "{msg}");
        let (_, none) = capture_queries(async {}).await;
        assert!(none.is_empty());
    }
}
