//! [`ProfilerUi`]: the protected HTML and JSON views of the store.

use std::{
    convert::Infallible,
    fmt::{self, Write as _},
    future::{Ready, ready},
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header, request::Parts};
use http_body_util::Full;
use tower_service::Service;

use super::{record::RequestRecord, store::ProfileStore};
use crate::{error::JsonError, identity::IdentityReader};

type AuthorizeFn = dyn Fn(&Parts) -> bool + Send + Sync;
type VisibleFn = dyn Fn(&Parts, &RequestRecord) -> bool + Send + Sync;

/// The profiler's user interface, a service to mount under a path (by default
/// `/_profiler`):
///
/// | path | answer |
/// |---|---|
/// | `/` | HTML list of recent requests (`?sort=duration` for the slowest first), N+1 badges |
/// | `/requests/{id}` | HTML detail: headers (redacted), queries, similar groups, N+1 findings |
/// | `/api/requests` | the list as JSON: `{"requests": [summary…]}` |
/// | `/api/requests/{id}` | one record as JSON |
/// | `/assets/profiler.css` | the stylesheet (the pages have no inline style or script) |
///
/// **Closed by default**: every path answers `403` with the JSON error shape until
/// [`authorize`](Self::authorize) is given a predicate that accepts the request.
/// The pages work under a strict CSP (`default-src 'self'`): no CDN, no script, the
/// stylesheet is served by this service; every value is HTML-escaped.
///
/// It works mounted with axum's `nest_service` (which strips the prefix) or given the
/// full path (the [`base_path`](Self::base_path) prefix is stripped when present).
///
/// # Example
///
/// ```
/// use tower::ServiceExt;
/// use tower_rampart::profiler::{ProfileStore, ProfilerUi};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let closed = ProfilerUi::new(ProfileStore::default());
/// let res = closed.oneshot(http::Request::new(())).await.unwrap();
/// assert_eq!(res.status(), 403);
///
/// let open = ProfilerUi::new(ProfileStore::default())
///     .authorize(|parts| parts.headers.get("x-admin-token").is_some_and(|v| v == "let-me-in"));
/// let req = http::Request::get("/_profiler/api/requests").header("x-admin-token", "let-me-in").body(()).unwrap();
/// assert_eq!(open.oneshot(req).await.unwrap().status(), 200);
/// # });
/// ```
#[derive(Clone)]
#[must_use]
pub struct ProfilerUi {
    store: ProfileStore,
    authorize: Option<Arc<AuthorizeFn>>,
    visible: Option<Arc<VisibleFn>>,
    base: Arc<str>,
}

impl fmt::Debug for ProfilerUi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProfilerUi")
            .field("store", &self.store)
            .field("authorized", &self.authorize.is_some())
            .field("visibility_rule", &self.visible.is_some())
            .field("base", &self.base)
            .finish()
    }
}

impl ProfilerUi {
    /// A closed UI over this store.
    pub fn new(store: ProfileStore) -> Self {
        Self {
            store,
            authorize: None,
            visible: None,
            base: Arc::from("/_profiler"),
        }
    }

    /// Opens the UI to requests for which `f` answers `true` (check a session, an admin
    /// role in extensions, a header set by an authenticating proxy…).
    /// By default, none: every request gets `403`.
    pub fn authorize<F>(mut self, f: F) -> Self
    where
        F: Fn(&Parts) -> bool + Send + Sync + 'static,
    {
        self.authorize = Some(Arc::new(f));
        self
    }

    /// Shows a viewer (an authorized request) only the records for which `rule` answers
    /// `true`, in the pages and the JSON alike; others answer `404` as evicted ones do.
    /// By default, every record to every authorized viewer.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_rampart::profiler::{ProfileStore, ProfilerUi};
    ///
    /// // Each user sees their own requests.
    /// let ui = ProfilerUi::new(ProfileStore::default())
    ///     .authorize(|_| true)
    ///     .visible_to(|viewer, record| {
    ///         viewer.headers.get("x-user").and_then(|v| v.to_str().ok()) == record.user.as_deref()
    ///     });
    /// # let _ = ui;
    /// ```
    pub fn visible_to<F>(mut self, rule: F) -> Self
    where
        F: Fn(&Parts, &RequestRecord) -> bool + Send + Sync + 'static,
    {
        self.visible = Some(Arc::new(rule));
        self
    }

    /// The built-in visibility rule: a viewer sees the records of their own tenant (read
    /// by `identity`, the resolved tenant else the user's), and none when they have no
    /// tenant. Give the profiler layer the same reader so that records carry the tenant.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_rampart::{identity::IdentityReader, profiler::{ProfileStore, ProfilerUi}};
    ///
    /// let ui = ProfilerUi::new(ProfileStore::default())
    ///     .authorize(|_| true)
    ///     .same_tenant(IdentityReader::new());
    /// # let _ = ui;
    /// ```
    pub fn same_tenant(self, identity: IdentityReader) -> Self {
        self.visible_to(move |viewer, record| {
            let ext = &viewer.extensions;
            identity
                .tenant_id(ext)
                .or_else(|| identity.principal_tenant_id(ext))
                .is_some_and(|t| record.tenant.as_deref() == Some(t))
        })
    }

    /// The path the UI is mounted at, used for links. By default, `/_profiler`.
    pub fn base_path(mut self, base: &str) -> Self {
        self.base = Arc::from(base.trim_end_matches('/'));
        self
    }

    fn answer(&self, parts: &Parts) -> Response<Full<Bytes>> {
        let allowed = self.authorize.as_ref().is_some_and(|f| f(parts));
        if !allowed {
            return json_error(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "The profiler UI is closed: configure ProfilerUi::authorize with a predicate \
                 that accepts this request.",
            );
        }
        if parts.method != Method::GET && parts.method != Method::HEAD {
            let mut res = json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "Method not allowed",
                "The profiler UI only answers GET and HEAD.",
            );
            res.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return res;
        }
        let path = parts.uri.path();
        let rel = path.strip_prefix(&*self.base).unwrap_or(path);
        let rel = rel.trim_end_matches('/');
        let sort_by_duration = parts
            .uri
            .query()
            .is_some_and(|q| q.split('&').any(|p| p == "sort=duration"));
        let not_found = || {
            json_error(
                StatusCode::NOT_FOUND,
                "Not found",
                "No such profiler page or record (records are evicted as new ones arrive).",
            )
        };
        match rel {
            "" => html(self.list_page(parts, sort_by_duration)),
            "/api/requests" => {
                let records = self.sorted(parts, sort_by_duration);
                let body = serde_json::json!({
                    "requests": records.iter().map(|r| r.summary()).collect::<Vec<_>>(),
                });
                json(
                    StatusCode::OK,
                    serde_json::to_vec(&body).unwrap_or_default(),
                )
            }
            "/assets/profiler.css" => {
                let mut res = Response::new(Full::new(Bytes::from_static(CSS.as_bytes())));
                res.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/css; charset=utf-8"),
                );
                res.headers_mut().insert(
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("private, max-age=3600"),
                );
                res
            }
            _ => {
                let (json_view, id) = if let Some(id) = rel.strip_prefix("/api/requests/") {
                    (true, id)
                } else if let Some(id) = rel.strip_prefix("/requests/") {
                    (false, id)
                } else {
                    return not_found();
                };
                let Some(record) = id
                    .parse()
                    .ok()
                    .and_then(|id| self.store.get_shared(id))
                    .filter(|r| self.can_see(parts, r))
                else {
                    return not_found();
                };
                if json_view {
                    json(
                        StatusCode::OK,
                        serde_json::to_vec(&*record).unwrap_or_default(),
                    )
                } else {
                    html(self.detail_page(&record))
                }
            }
        }
    }

    fn can_see(&self, viewer: &Parts, record: &RequestRecord) -> bool {
        self.visible
            .as_ref()
            .is_none_or(|rule| rule(viewer, record))
    }

    fn sorted(&self, viewer: &Parts, by_duration: bool) -> Vec<Arc<RequestRecord>> {
        let mut records = self.store.shared_records();
        records.retain(|r| self.can_see(viewer, r));
        if by_duration {
            records.sort_by(|a, b| b.duration_ms.total_cmp(&a.duration_ms));
        }
        records
    }

    fn list_page(&self, viewer: &Parts, by_duration: bool) -> String {
        let base = esc(&self.base);
        let mut out = head("Requests", &base);
        let records = self.sorted(viewer, by_duration);
        let _ = write!(
            out,
            "<h1>Requests</h1><p class=\"meta\">{} kept · {} recorded in total · \
             sort: <a href=\"{base}/\">recent</a> | <a href=\"{base}/?sort=duration\">slowest</a> · \
             <a href=\"{base}/api/requests\">JSON</a></p>",
            records.len(),
            self.store.recorded_total()
        );
        out.push_str(
            "<table><thead><tr><th>#</th><th>method</th><th>path</th><th>status</th>\
             <th>duration (ms)</th><th>queries</th><th>db (ms)</th><th>user</th><th>tenant</th>\
             <th>findings</th></tr></thead><tbody>",
        );
        for r in &records {
            let badge = if r.n_plus_one.is_empty() {
                String::new()
            } else {
                format!("<span class=\"badge\">N+1 ×{}</span>", r.n_plus_one.len())
            };
            let _ = write!(
                out,
                "<tr><td><a href=\"{base}/requests/{id}\">{id}</a></td><td>{m}</td>\
                 <td><a href=\"{base}/requests/{id}\">{p}</a></td><td>{s}</td>\
                 <td class=\"num\">{d:.2}</td><td class=\"num\">{q}</td><td class=\"num\">{db:.2}</td>\
                 <td>{u}</td><td>{t}</td><td>{badge}</td></tr>",
                id = r.id,
                m = esc(&r.method),
                p = esc(&r.path),
                s = r.status,
                d = r.duration_ms,
                q = r.query_count,
                db = r.db_ms,
                u = esc(r.user.as_deref().unwrap_or("")),
                t = esc(r.tenant.as_deref().unwrap_or("")),
            );
        }
        out.push_str("</tbody></table></body></html>");
        out
    }

    fn detail_page(&self, r: &RequestRecord) -> String {
        let base = esc(&self.base);
        let mut out = head(&format!("Request {}", r.id), &base);
        let _ = write!(
            out,
            "<p><a href=\"{base}/\">← all requests</a> · <a href=\"{base}/api/requests/{id}\">JSON</a></p>\
             <h1>{m} {p}</h1><dl>\
             <dt>route</dt><dd>{route}</dd><dt>query string</dt><dd>{qs}</dd>\
             <dt>status</dt><dd>{s}</dd><dt>duration</dt><dd>{d:.3} ms</dd>\
             <dt>response size</dt><dd>{b} bytes</dd><dt>request id</dt><dd>{rid}</dd>\
             <dt>user</dt><dd>{u}</dd><dt>tenant</dt><dd>{t}</dd>\
             <dt>queries</dt><dd>{qc} ({db:.3} ms{dropped})</dd></dl>",
            id = r.id,
            m = esc(&r.method),
            p = esc(&r.path),
            route = esc(&r.route),
            qs = esc(r.query.as_deref().unwrap_or("")),
            s = r.status,
            d = r.duration_ms,
            b = r.response_bytes,
            rid = esc(r.request_id.as_deref().unwrap_or("")),
            u = esc(r.user.as_deref().unwrap_or("")),
            t = esc(r.tenant.as_deref().unwrap_or("")),
            qc = r.query_count,
            db = r.db_ms,
            dropped = if r.queries_dropped > 0 {
                format!(", {} not kept", r.queries_dropped)
            } else {
                String::new()
            },
        );
        if !r.n_plus_one.is_empty() {
            out.push_str("<h2>N+1 findings</h2><ul class=\"findings\">");
            for f in &r.n_plus_one {
                let _ = write!(
                    out,
                    "<li><span class=\"badge\">N+1</span> <code>{}</code> ran {} times in a row \
                     ({:.3} ms) after <code>{}</code></li>",
                    esc(&f.statement),
                    f.count,
                    f.total_ms,
                    esc(&f.source)
                );
            }
            out.push_str("</ul>");
        }
        if !r.similar.is_empty() {
            out.push_str("<h2>Similar queries</h2><table><thead><tr><th>count</th><th>total (ms)</th><th>statement</th></tr></thead><tbody>");
            for g in &r.similar {
                let _ = write!(
                    out,
                    "<tr><td class=\"num\">{}</td><td class=\"num\">{:.3}</td><td><code>{}</code></td></tr>",
                    g.count,
                    g.total_ms,
                    esc(&g.statement)
                );
            }
            out.push_str("</tbody></table>");
        }
        out.push_str("<h2>Queries</h2><table><thead><tr><th>#</th><th>start (ms)</th><th>duration (ms)</th><th>rows</th><th>source</th><th>statement</th></tr></thead><tbody>");
        for (i, q) in r.queries.iter().enumerate() {
            let rows = q
                .rows_returned
                .or(q.rows_affected)
                .map(|n| n.to_string())
                .unwrap_or_default();
            let _ = write!(
                out,
                "<tr><td>{}</td><td class=\"num\">{:.3}</td><td class=\"num\">{:.3}</td><td class=\"num\">{}</td><td>{}</td><td><code>{}</code></td></tr>",
                i + 1,
                q.start_ms,
                q.duration_ms,
                rows,
                esc(&q.source),
                esc(&q.statement)
            );
        }
        out.push_str("</tbody></table>");
        for (title, headers) in [
            ("Request headers", &r.request_headers),
            ("Response headers", &r.response_headers),
        ] {
            let _ = write!(out, "<h2>{title}</h2><table><tbody>");
            for (k, v) in headers {
                let _ = write!(out, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(v));
            }
            out.push_str("</tbody></table>");
        }
        out.push_str("</body></html>");
        out
    }
}

const CSS: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5rem;color:#222}\
table{border-collapse:collapse;width:100%;margin:.5rem 0 1.5rem}\
th,td{border-bottom:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top}\
td.num{text-align:right;font-variant-numeric:tabular-nums}\
code{font:12px/1.3 ui-monospace,monospace;white-space:pre-wrap;word-break:break-all}\
.badge{background:#c0392b;color:#fff;border-radius:3px;padding:0 .35rem;font-size:12px}\
.meta{color:#666}dl{display:grid;grid-template-columns:max-content auto;gap:.2rem 1rem}\
dt{font-weight:600}dd{margin:0}a{color:#1a5fb4}\n";

fn head(title: &str, base: &str) -> String {
    format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"robots\" content=\"noindex\">\
         <title>{} · profiler</title><link rel=\"stylesheet\" href=\"{base}/assets/profiler.css\">\
         </head><body>",
        esc(title)
    )
}

/// HTML-escapes text for element content and double-quoted attributes.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn no_store(res: &mut Response<Full<Bytes>>) {
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res.headers_mut().insert(
        header::HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
}

fn html(body: String) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(body)));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    res.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    no_store(&mut res);
    res
}

fn json(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    no_store(&mut res);
    res
}

fn json_error(status: StatusCode, title: &'static str, detail: &str) -> Response<Full<Bytes>> {
    let mut res = JsonError::new(title, detail)
        .into_response(status)
        .map(Full::new);
    no_store(&mut res);
    res
}

impl<ReqBody> Service<Request<ReqBody>> for ProfilerUi {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let (parts, _body) = req.into_parts();
        let mut res = self.answer(&parts);
        if parts.method == Method::HEAD {
            *res.body_mut() = Full::new(Bytes::new());
        }
        ready(Ok(res))
    }
}
