//! Query capture: the per-request collector, the `tracing` layer that feeds it, and
//! [`record_query`] for drivers that do not emit `tracing` data.

use std::{
    cell::RefCell,
    fmt,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use quanta::Instant;
use tracing::{
    Event, Metadata, Subscriber,
    field::{Field, Visit},
    span,
    subscriber::Interest,
};
use tracing_subscriber::{
    Layer, Registry,
    filter::Filtered,
    layer::{Context, Filter},
    registry::LookupSpan,
};

use crate::log_safe::Escaped;

use super::{
    normalize::{n_plus_one, similar_groups},
    record::{QueryRecord, RequestRecord},
    store::ProfileStore,
};

/// The name of the span the profiler opens around each sampled request.
pub const REQUEST_SPAN_NAME: &str = "rampart.profiler.request";
/// The target of that span.
pub const REQUEST_SPAN_TARGET: &str = "tower_rampart::profiler";

pub(crate) struct Draft {
    pub(crate) record: RequestRecord,
    pub(crate) query_count: usize,
    pub(crate) db_ms: f64,
}

/// Everything gathered about one request while it is served. The record is pushed to the
/// store when the last reference goes away: after the response body ended *and* the
/// request's span closed (so late query events from driver threads are not lost).
pub(crate) struct Collector {
    pub(crate) start: Instant,
    draft: Mutex<Draft>,
    store: ProfileStore,
    /// The N+1 threshold (repeats) and the floor (total milliseconds) of a signalled finding.
    n_plus_one: (usize, f64),
    max_queries: usize,
    /// The `route` label of the queries-per-request histogram, when metrics are on.
    metrics: Option<metrics::SharedString>,
}

impl fmt::Debug for Collector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Collector").finish_non_exhaustive()
    }
}

impl Collector {
    pub(crate) fn new(
        start: Instant,
        record: RequestRecord,
        store: ProfileStore,
        n_plus_one: (usize, f64),
        max_queries: usize,
        metrics: Option<metrics::SharedString>,
    ) -> Self {
        Self {
            start,
            draft: Mutex::new(Draft {
                record,
                query_count: 0,
                db_ms: 0.0,
            }),
            store,
            n_plus_one,
            max_queries,
            metrics,
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Draft> {
        self.draft.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a query that ended at `ended` after running for `elapsed`. The statement is
    /// normalised as it arrives (memoised, so a repeated statement costs a lookup; a huge
    /// one is cut first): nothing raw is held until the request ends.
    pub(crate) fn add_query(
        &self,
        raw_statement: &str,
        elapsed: Duration,
        ended: Instant,
        rows_returned: Option<u64>,
        rows_affected: Option<u64>,
        source: &'static str,
    ) {
        let started = ended.checked_sub(elapsed).unwrap_or(ended);
        let start_ms = started
            .checked_duration_since(self.start)
            .unwrap_or_default()
            .as_secs_f64()
            * 1000.0;
        let duration_ms = elapsed.as_secs_f64() * 1000.0;
        {
            let mut d = self.lock();
            d.query_count += 1;
            d.db_ms += duration_ms;
            if d.record.queries.len() >= self.max_queries {
                d.record.queries_dropped += 1;
                return;
            }
        }
        let statement = self
            .store
            .normalize(truncated(raw_statement, MAX_RAW_STATEMENT));
        let mut d = self.lock();
        d.record.queries.push(QueryRecord {
            statement,
            start_ms,
            duration_ms,
            rows_returned,
            rows_affected,
            source: source.to_owned(),
        });
    }

    /// `(query count, total query milliseconds)` so far.
    pub(crate) fn db_summary(&self) -> (usize, f64) {
        let d = self.lock();
        (d.query_count, d.db_ms)
    }
}

/// The longest raw statement normalised, in bytes: the rest is dropped first (a literal
/// cut open becomes one `?` to the end, so nothing leaks).
const MAX_RAW_STATEMENT: usize = 16 * 1024;

/// At most `max` bytes of `s`, cut at a character boundary.
pub(crate) fn truncated(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

impl Drop for Collector {
    fn drop(&mut self) {
        let d = self.draft.get_mut().unwrap_or_else(PoisonError::into_inner);
        let mut record = std::mem::replace(&mut d.record, empty_record());
        record
            .queries
            .sort_by(|a, b| a.start_ms.total_cmp(&b.start_ms));
        record.query_count = d.query_count;
        record.db_ms = d.db_ms;
        record.similar = similar_groups(&record.queries);
        record.n_plus_one = n_plus_one(&record.queries, self.n_plus_one.0);
        // Signals for the findings over the floor: fast repeated queries raise no noise.
        for f in record
            .n_plus_one
            .iter()
            .filter(|f| f.total_ms >= self.n_plus_one.1)
        {
            if let Some(route) = &self.metrics {
                metrics::counter!("rampart_profiler_n_plus_one_total", "route" => route.clone())
                    .increment(1);
            }
            tracing::warn!(
                target: "tower_rampart::profiler",
                route = %Escaped(&record.route),
                statement = %Escaped(&f.statement),
                source = %Escaped(&f.source),
                count = f.count,
                total_ms = f.total_ms,
                "N+1 queries"
            );
        }
        if let Some(route) = self.metrics.take() {
            #[allow(clippy::cast_precision_loss)]
            metrics::histogram!("rampart_profiler_queries_per_request", "route" => route)
                .record(record.query_count as f64);
        }
        self.store.push(record);
    }
}

pub(crate) fn empty_record() -> RequestRecord {
    RequestRecord {
        id: 0,
        request_id: None,
        method: String::new(),
        path: String::new(),
        route: String::new(),
        query: None,
        status: 0,
        started_at_ms: 0,
        duration_ms: 0.0,
        response_bytes: 0,
        tenant: None,
        user: None,
        request_headers: Vec::new(),
        response_headers: Vec::new(),
        queries: Vec::new(),
        query_count: 0,
        queries_dropped: 0,
        db_ms: 0.0,
        similar: Vec::new(),
        n_plus_one: Vec::new(),
    }
}

thread_local! {
    /// Hands the collector to [`QueryCapture::on_new_span`], which runs synchronously on
    /// this thread while the request span is created.
    static PENDING: RefCell<Option<Arc<Collector>>> = const { RefCell::new(None) };
}

/// Opens the request span, attaching `collector` to it when a [`QueryCapture`] layer is
/// installed.
pub(crate) fn request_span(collector: &Arc<Collector>, id: u64) -> tracing::Span {
    PENDING.with(|p| *p.borrow_mut() = Some(Arc::clone(collector)));
    let span = tracing::info_span!(
        target: "tower_rampart::profiler",
        "rampart.profiler.request",
        profile.id = id
    );
    PENDING.with(|p| p.borrow_mut().take());
    span
}

/// The span extension linking a request span to its collector.
struct Attached(Arc<Collector>);

/// The span extension of a span carrying an OpenTelemetry-style `db.statement`.
struct DbSpan {
    fields: DbFields,
    start: Instant,
    covered: bool,
}

#[derive(Default)]
struct DbFields {
    statement: Option<String>,
    summary: Option<String>,
    elapsed: Option<Duration>,
    rows_returned: Option<u64>,
    rows_affected: Option<u64>,
}

impl DbFields {
    fn set_u64(&mut self, name: &str, v: u64) {
        match name {
            "rows_returned" | "db.response.returned_rows" | "db.rows_returned" => {
                self.rows_returned = Some(v);
            }
            "rows_affected" | "db.rows_affected" => self.rows_affected = Some(v),
            "elapsed_ms" | "duration_ms" => self.elapsed = Some(Duration::from_millis(v)),
            _ => {}
        }
    }
}

impl Visit for DbFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "db.statement" | "db.query.text" => self.statement = Some(value.to_owned()),
            "summary" => self.summary = Some(value.to_owned()),
            _ => {}
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        let secs = match field.name() {
            "elapsed_secs" => value,
            "elapsed_ms" | "duration_ms" => value / 1000.0,
            _ => return,
        };
        if secs.is_finite() && secs >= 0.0 {
            self.elapsed = Some(Duration::from_secs_f64(secs.min(1e9)));
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.set_u64(field.name(), value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if let Ok(v) = u64::try_from(value) {
            self.set_u64(field.name(), v);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            // sqlx 0.8 also emits `elapsed` as a `Duration`'s debug form ("1.5ms"); it is
            // only used when `elapsed_secs` is absent.
            "elapsed" if self.elapsed.is_none() => {
                self.elapsed = parse_debug_duration(&format!("{value:?}"));
            }
            "db.statement" | "db.query.text" | "summary" => {
                let s = format!("{value:?}");
                let s = s
                    .strip_prefix('"')
                    .and_then(|s| s.strip_suffix('"'))
                    .map_or(s.clone(), |inner| {
                        inner
                            .replace("\\n", "\n")
                            .replace("\\\"", "\"")
                            .replace("\\t", " ")
                    });
                if field.name() == "summary" {
                    self.summary = Some(s);
                } else {
                    self.statement = Some(s);
                }
            }
            _ => {}
        }
    }
}

/// Parses `Duration`'s debug form: `1.5s`, `12ms`, `3.2µs`, `800ns`.
fn parse_debug_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ns") {
        (n, 1e-9)
    } else if let Some(n) = s.strip_suffix("µs").or_else(|| s.strip_suffix("us")) {
        (n, 1e-6)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        return None;
    };
    let v: f64 = num.trim().parse().ok()?;
    let secs = v * scale;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(1e9)))
}

fn has_db_field(meta: &Metadata<'_>) -> bool {
    let f = meta.fields();
    f.field("db.statement").is_some() || f.field("db.query.text").is_some()
}

fn is_request_span(meta: &Metadata<'_>) -> bool {
    meta.name() == REQUEST_SPAN_NAME && meta.target() == REQUEST_SPAN_TARGET
}

fn interesting(meta: &Metadata<'_>) -> bool {
    if meta.is_span() {
        is_request_span(meta) || has_db_field(meta)
    } else {
        meta.target().starts_with("sqlx::query") || has_db_field(meta)
    }
}

/// The per-layer filter of [`QueryCapture`]: the profiler's request spans and every span
/// opened inside one (so that a query made under a child span — even on another thread,
/// as sqlx's SQLite worker does — is attributed through the span's ancestry), spans with
/// a `db.statement` / `db.query.text` field, `sqlx::query` events, and events with a
/// `db.statement` / `db.query.text` field.
///
/// It answers [`Interest::sometimes`] (never `always`) for those callsites, so that
/// `tracing-subscriber` asks every per-layer filter again on each use. With `always`,
/// the per-layer filter state can be stale when something called `enabled` without a
/// following event — which is exactly what `tracing-log`'s `LogTracer` does for
/// `log::log_enabled!`, as sqlx calls after every query — and the span is then silently
/// dropped for this layer (tokio-rs/tracing#2519). Events of other targets are `never`
/// interesting, so they cost nothing.
///
/// # Example
///
/// ```
/// use tower_rampart::profiler::CaptureFilter;
/// use tracing_subscriber::layer::Filter;
///
/// let f = CaptureFilter::default();
/// assert!(<CaptureFilter as Filter<tracing_subscriber::Registry>>::max_level_hint(&f).is_none());
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct CaptureFilter {
    _priv: (),
}

impl<S> Filter<S> for CaptureFilter
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn enabled(&self, meta: &Metadata<'_>, cx: &Context<'_, S>) -> bool {
        // A span inside a span this filter enabled (a request span or one of its
        // descendants) is enabled too.
        interesting(meta) || (meta.is_span() && cx.lookup_current().is_some())
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if meta.is_span() || interesting(meta) {
            Interest::sometimes()
        } else {
            Interest::never()
        }
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        None
    }
}

/// The `tracing` layer that attributes database queries to the request they run in, by
/// span ancestry. Install it with its filter: [`query_capture_layer`].
///
/// It understands:
/// - sqlx's events (target `sqlx::query`, fields `summary`, `db.statement` — empty for
///   short statements, then `summary` is the statement — `rows_affected`,
///   `rows_returned`, `elapsed_secs`, and `elapsed` as a fallback);
/// - spans and events carrying OpenTelemetry-style `db.statement` or `db.query.text`
///   (a span's duration is its lifetime).
///
/// Only statements are read; bind parameters are never recorded, and statements are
/// normalised (literals replaced) before they are stored.
///
/// # Example
///
/// ```
/// use tower_rampart::profiler::QueryCapture;
///
/// assert_eq!(format!("{:?}", QueryCapture::default()), "QueryCapture { .. }");
/// ```
#[derive(Clone, Copy, Default)]
pub struct QueryCapture {
    _priv: (),
}

impl fmt::Debug for QueryCapture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueryCapture").finish_non_exhaustive()
    }
}

/// The query-capture layer with its per-layer filter, ready for
/// `tracing_subscriber::registry().with(…)`.
///
/// Keep other layers' filters per-layer too (`fmt::layer().with_filter(EnvFilter…)`): a
/// *global* filter such as `fmt().with_env_filter("info")` disables sqlx's `DEBUG` query
/// events for every layer, this one included.
///
/// # Example
///
/// ```
/// use tower_rampart::profiler::query_capture_layer;
/// use tracing_subscriber::{EnvFilter, fmt, prelude::*};
///
/// let subscriber = tracing_subscriber::registry()
///     .with(fmt::layer().with_writer(std::io::sink).with_filter(EnvFilter::new("info")))
///     .with(query_capture_layer());
/// tracing::subscriber::with_default(subscriber, || {
///     // Outside a profiled request: nothing to attribute the query to.
///     assert!(!tower_rampart::profiler::record_query("SELECT 1", std::time::Duration::ZERO, None));
/// });
/// ```
pub fn query_capture_layer<S>() -> Filtered<QueryCapture, CaptureFilter, S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    QueryCapture::default().with_filter(CaptureFilter::default())
}

fn statement_of(fields: &mut DbFields, sqlx: bool) -> Option<String> {
    let stmt = fields
        .statement
        .take()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    if sqlx {
        stmt.or_else(|| {
            fields
                .summary
                .take()
                .map(|s| s.trim().trim_end_matches('…').trim().to_owned())
                .filter(|s| !s.is_empty())
        })
    } else {
        stmt
    }
}

impl<S> Layer<S> for QueryCapture
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let meta = attrs.metadata();
        if is_request_span(meta) {
            if let Some(c) = PENDING.with(|p| p.borrow_mut().take()) {
                span.extensions_mut().insert(Attached(c));
            }
            return;
        }
        if has_db_field(meta) {
            let mut fields = DbFields::default();
            attrs.record(&mut fields);
            span.extensions_mut().insert(DbSpan {
                fields,
                start: Instant::now(),
                covered: false,
            });
        }
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(db) = span.extensions_mut().get_mut::<DbSpan>()
        {
            values.record(&mut db.fields);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let sqlx = meta.target().starts_with("sqlx::query");
        if !sqlx && !has_db_field(meta) {
            return;
        }
        let Some(scope) = ctx.event_scope(event) else {
            return;
        };
        // The profiled request first: outside one, nothing is read or copied.
        let mut collector = None;
        for span in scope {
            let mut ext = span.extensions_mut();
            if let Some(db) = ext.get_mut::<DbSpan>() {
                // The span describes the same query as this event: count it once.
                db.covered = true;
            }
            if let Some(Attached(c)) = ext.get_mut::<Attached>() {
                collector = Some(Arc::clone(c));
                break;
            }
        }
        let Some(c) = collector else { return };
        let mut fields = DbFields::default();
        event.record(&mut fields);
        let Some(statement) = statement_of(&mut fields, sqlx) else {
            return;
        };
        c.add_query(
            &statement,
            fields.elapsed.unwrap_or_default(),
            Instant::now(),
            fields.rows_returned,
            fields.rows_affected,
            if sqlx { "sqlx" } else { "otel" },
        );
    }

    fn on_close(&self, id: span::Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(mut db) = span.extensions_mut().remove::<DbSpan>() else {
            return;
        };
        if db.covered {
            return;
        }
        let Some(statement) = statement_of(&mut db.fields, false) else {
            return;
        };
        let elapsed = db.fields.elapsed.unwrap_or_else(|| db.start.elapsed());
        for ancestor in span.scope().skip(1) {
            if let Some(Attached(c)) = ancestor.extensions().get::<Attached>() {
                c.add_query(
                    &statement,
                    elapsed,
                    Instant::now(),
                    db.fields.rows_returned,
                    db.fields.rows_affected,
                    "otel",
                );
                return;
            }
        }
    }
}

/// Records a query made by a driver that emits no `tracing` data, attributing it to the
/// profiled request the current span belongs to. Returns whether a request was found.
///
/// Needs the [`query_capture_layer`] installed on a `tracing_subscriber` registry. Pass the
/// statement with placeholders; it is normalised (literals replaced) before storage.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_rampart::profiler::record_query;
///
/// // No profiled request is running here, so nothing is recorded.
/// assert!(!record_query("SELECT * FROM users WHERE id = $1", Duration::from_millis(2), Some(1)));
/// ```
pub fn record_query(statement: &str, elapsed: Duration, rows_returned: Option<u64>) -> bool {
    let now = Instant::now();
    tracing::Span::current()
        .with_subscriber(|(id, dispatch)| {
            let registry = dispatch.downcast_ref::<Registry>()?;
            let span = registry.span(id)?;
            for s in span.scope() {
                if let Some(Attached(c)) = s.extensions().get::<Attached>() {
                    c.add_query(statement, elapsed, now, rows_returned, None, "manual");
                    return Some(());
                }
            }
            None
        })
        .flatten()
        .is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_durations_parse() {
        assert_eq!(
            parse_debug_duration("1.5ms"),
            Some(Duration::from_micros(1500))
        );
        assert_eq!(parse_debug_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_debug_duration("3µs"), Some(Duration::from_micros(3)));
        assert_eq!(parse_debug_duration("3us"), Some(Duration::from_micros(3)));
        assert_eq!(
            parse_debug_duration("800ns"),
            Some(Duration::from_nanos(800))
        );
        assert_eq!(parse_debug_duration("fast"), None);
        assert_eq!(parse_debug_duration("-1ms"), None);
    }
}
