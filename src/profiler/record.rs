//! What the profiler stores: one [`RequestRecord`] per sampled request.

use serde::{Deserialize, Serialize};

use super::normalize::{NPlusOne, SimilarGroup};

/// One database query made while serving a request.
///
/// The statement is normalised (see [`normalize_sql`](super::normalize_sql)): literals and
/// bind parameters are never stored.
///
/// # Example
///
/// ```
/// use tower_rampart::profiler::QueryRecord;
///
/// let q = QueryRecord {
///     statement: "SELECT * FROM t WHERE id = ?".into(),
///     start_ms: 0.5,
///     duration_ms: 1.25,
///     rows_returned: Some(1),
///     rows_affected: None,
///     source: "sqlx".into(),
/// };
/// assert_eq!(serde_json::to_value(&q).unwrap()["duration_ms"], 1.25);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryRecord {
    /// The normalised statement.
    pub statement: String,
    /// When it started, in milliseconds after the request started.
    pub start_ms: f64,
    /// How long it took, in milliseconds.
    pub duration_ms: f64,
    /// Rows returned, when the driver reports it.
    pub rows_returned: Option<u64>,
    /// Rows affected, when the driver reports it.
    pub rows_affected: Option<u64>,
    /// Where it was captured: `"sqlx"`, `"otel"` (a `db.statement` span or event) or `"manual"`.
    pub source: String,
}

/// Everything the profiler knows about one request, with sensitive values redacted.
///
/// # Example
///
/// ```
/// use tower_rampart::profiler::{ProfilerLayer, RequestRecord};
///
/// let layer = ProfilerLayer::new();
/// let records: Vec<RequestRecord> = layer.store().records();
/// assert!(records.is_empty());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// The profiler's id for the request (increasing).
    pub id: u64,
    /// The `X-Request-Id` header, when present.
    pub request_id: Option<String>,
    /// The HTTP method.
    pub method: String,
    /// The URI path.
    pub path: String,
    /// The matched route (axum's `MatchedPath`), else the path with numeric and UUID-like
    /// segments replaced by `{id}`.
    pub route: String,
    /// The query string, redacted.
    pub query: Option<String>,
    /// The response status code.
    pub status: u16,
    /// Start time, milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    /// From the request to the end of the response body, in milliseconds.
    pub duration_ms: f64,
    /// Response body bytes sent.
    pub response_bytes: u64,
    /// The tenant, when known (see [`IdentityReader`](crate::identity::IdentityReader)).
    pub tenant: Option<String>,
    /// The authenticated user, when known.
    pub user: Option<String>,
    /// Request headers, redacted.
    pub request_headers: Vec<(String, String)>,
    /// Response headers, redacted.
    pub response_headers: Vec<(String, String)>,
    /// Queries in start order.
    pub queries: Vec<QueryRecord>,
    /// Number of queries (including those dropped over the per-request cap).
    pub query_count: usize,
    /// Queries not kept because the per-request cap was reached.
    pub queries_dropped: usize,
    /// Total time spent in queries, in milliseconds.
    pub db_ms: f64,
    /// Statements that ran more than once.
    pub similar: Vec<SimilarGroup>,
    /// N+1 findings.
    pub n_plus_one: Vec<NPlusOne>,
}

/// The summary of a record shown in lists: no headers, no queries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RecordSummary<'a> {
    pub(crate) id: u64,
    pub(crate) request_id: Option<&'a str>,
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    pub(crate) route: &'a str,
    pub(crate) status: u16,
    pub(crate) started_at_ms: u64,
    pub(crate) duration_ms: f64,
    pub(crate) response_bytes: u64,
    pub(crate) tenant: Option<&'a str>,
    pub(crate) user: Option<&'a str>,
    pub(crate) query_count: usize,
    pub(crate) db_ms: f64,
    pub(crate) n_plus_one: usize,
}

impl RequestRecord {
    pub(crate) fn summary(&self) -> RecordSummary<'_> {
        RecordSummary {
            id: self.id,
            request_id: self.request_id.as_deref(),
            method: &self.method,
            path: &self.path,
            route: &self.route,
            status: self.status,
            started_at_ms: self.started_at_ms,
            duration_ms: self.duration_ms,
            response_bytes: self.response_bytes,
            tenant: self.tenant.as_deref(),
            user: self.user.as_deref(),
            query_count: self.query_count,
            db_ms: self.db_ms,
            n_plus_one: self.n_plus_one.len(),
        }
    }

    /// An estimate of the memory the record holds, used for the store's byte cap.
    pub fn approx_bytes(&self) -> usize {
        let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        let headers =
            |h: &[(String, String)]| h.iter().map(|(k, v)| k.len() + v.len() + 48).sum::<usize>();
        std::mem::size_of::<Self>()
            + opt(&self.request_id)
            + self.method.len()
            + self.path.len()
            + self.route.len()
            + opt(&self.query)
            + opt(&self.tenant)
            + opt(&self.user)
            + headers(&self.request_headers)
            + headers(&self.response_headers)
            + self
                .queries
                .iter()
                .map(|q| std::mem::size_of::<QueryRecord>() + q.statement.len() + q.source.len())
                .sum::<usize>()
            + self
                .similar
                .iter()
                .map(|g| std::mem::size_of::<SimilarGroup>() + g.statement.len())
                .sum::<usize>()
            + self
                .n_plus_one
                .iter()
                .map(|f| std::mem::size_of::<NPlusOne>() + f.statement.len() + f.source.len())
                .sum::<usize>()
    }
}
