//! The HTML pages: login form, logout, dashboard.
//!
//! No template engine: the pages are small and every interpolated value goes through
//! [`escape`]. The dashboard's one inline `<script>` carries the CSP nonce of the
//! request when there is one ([`CspNonce`] in the extensions) and no inline event
//! handler is used, so a `script-src 'nonce-…'` policy allows it and nothing else.

use axum::{
    Extension, Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{Html, IntoResponse, Redirect, Response},
    routing::{get, post},
};
use serde::Deserialize;

use crate::{
    AppState,
    auth::{self, Principal},
    error::{ApiError, ApiForm},
    ledger,
    tenant::CurrentTenant,
};

/// The per-request CSP nonce the security-headers layer inserts (128 random bits).
pub use tower_rampart::csp::CspNonce;
use tower_rampart::security_headers::{ClearSiteData, ClearSiteDataType};

/// The HTML routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/dashboard/") }))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/accounts/login/", get(login_page).post(login))
        .route("/accounts/logout/", post(logout))
        .route("/dashboard/", get(dashboard))
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            c => out.push(c),
        }
    }
    out
}

/// Formats minor units as `1234.56`.
pub fn money(minor: i64) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let m = minor.unsigned_abs();
    format!("{sign}{}.{:02}", m / 100, m % 100)
}

fn nonce_attr(nonce: Option<&str>) -> String {
    nonce.map_or_else(String::new, |n| format!(" nonce=\"{}\"", escape(n)))
}

fn page(title: &str, body: &str, nonce: Option<&str>) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} · rampart-erp</title>\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"referrer\" content=\"same-origin\">\
         <style{}>body{{font-family:system-ui,sans-serif;margin:2rem;max-width:60rem}}\
         table{{border-collapse:collapse;margin:1rem 0}}td,th{{border:1px solid #ccc;padding:.25rem .5rem}}\
         td.n{{text-align:right}}.error{{color:#b00}}</style></head><body>{body}</body></html>",
        escape(title),
        nonce_attr(nonce)
    )
}

fn login_form(tenant: &str, error: Option<&str>, nonce: Option<&str>) -> String {
    let error = error.map_or_else(String::new, |e| {
        format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e))
    });
    page(
        "Log in",
        &format!(
            "<h1>Log in</h1>{error}<form method=\"post\" action=\"/accounts/login/\">\
             <p><label>Tenant <input name=\"tenant\" value=\"{}\" required></label></p>\
             <p><label>User name <input name=\"username\" autocomplete=\"username\" required></label></p>\
             <p><label>Password <input name=\"password\" type=\"password\" autocomplete=\"current-password\" required></label></p>\
             <p><button type=\"submit\">Log in</button></p></form>",
            escape(tenant)
        ),
        nonce,
    )
}

/// `GET /accounts/login/`: the form (tenant prefilled from the subdomain or header).
pub async fn login_page(
    principal: Option<Extension<Principal>>,
    tenant: Option<Extension<CurrentTenant>>,
    nonce: Option<Extension<CspNonce>>,
) -> Response {
    if principal.is_some() {
        return Redirect::to("/dashboard/").into_response();
    }
    let tenant = tenant
        .map(|Extension(t)| t.id().to_string())
        .unwrap_or_default();
    Html(login_form(
        &tenant,
        None,
        nonce.as_ref().map(|n| n.0.as_str()),
    ))
    .into_response()
}

/// The login form.
#[derive(Debug, Deserialize)]
pub struct LoginForm {
    /// Tenant id.
    pub tenant: String,
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

/// `POST /accounts/login/`: checks the password, sets the session cookie, redirects to
/// the dashboard. Cross-origin posts are refused (login CSRF).
pub async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    peer: Option<Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    tenant: Option<Extension<CurrentTenant>>,
    nonce: Option<Extension<CspNonce>>,
    ApiForm(form): ApiForm<LoginForm>,
) -> Result<Response, ApiError> {
    if !auth::same_origin(&headers) {
        return Err(ApiError::forbidden(
            "Cross-origin login refused (CSRF protection).",
        ));
    }
    let form_tenant = form.tenant.trim().to_ascii_lowercase();
    if let Some(Extension(t)) = &tenant
        && t.id().as_str() != form_tenant
    {
        return Err(ApiError::forbidden(
            "The tenant in the form differs from the request's tenant (X-Tenant-ID or subdomain).",
        ));
    }
    let user = auth::verify_credentials(&state, &form_tenant, form.username.trim(), &form.password)
        .await?;
    let Some(user) = user else {
        return Ok((
            StatusCode::UNAUTHORIZED,
            Html(login_form(
                &form_tenant,
                Some("Invalid tenant, user name or password."),
                nonce.as_ref().map(|n| n.0.as_str()),
            )),
        )
            .into_response());
    };
    let ttl = state.config().session_ttl;
    let token = state.jwt().issue(&user, "session", ttl)?;
    let mut res = Redirect::to("/dashboard/").into_response();
    res.headers_mut().insert(
        header::SET_COOKIE,
        auth::session_cookie(
            Some(&token),
            ttl.as_secs(),
            auth::secure_cookie(&state, &headers, peer.map(|Extension(c)| c.0)),
        ),
    );
    Ok(res)
}

/// `POST /accounts/logout/`: ends the user's sessions on every instance (the session
/// epoch in the database), clears the cookie and sends `Clear-Site-Data`.
///
/// # Errors
///
/// Database failure.
pub async fn logout(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
    peer: Option<Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
) -> Result<Response, ApiError> {
    if let Some(Extension(p)) = principal {
        auth::end_sessions(&state, &p.tenant, &p.user_id).await?;
    }
    let mut res = Redirect::to("/accounts/login/").into_response();
    // The browser drops the origin's cache, cookies and storage (W3C Clear Site Data).
    static CLEAR: std::sync::LazyLock<ClearSiteData> = std::sync::LazyLock::new(|| {
        ClearSiteData::new([
            ClearSiteDataType::Cache,
            ClearSiteDataType::Cookies,
            ClearSiteDataType::Storage,
        ])
        .expect("a non-empty list")
    });
    CLEAR.apply(res.headers_mut());
    res.headers_mut().insert(
        header::SET_COOKIE,
        auth::session_cookie(
            None,
            0,
            auth::secure_cookie(&state, &headers, peer.map(|Extension(c)| c.0)),
        ),
    );
    Ok(res)
}

/// `GET /dashboard/`: recent journal entries, the trial balance and a form that posts
/// an entry through the API from the page's one (nonce'd) script.
pub async fn dashboard(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
    nonce: Option<Extension<CspNonce>>,
) -> Result<Response, ApiError> {
    let Some(Extension(p)) = principal else {
        return Ok(Redirect::to("/accounts/login/").into_response());
    };
    let db = state.db();
    let entries = ledger::list_entries(db, &p.tenant, 20, 0).await?;
    let tb = state.trial_balance(&p.tenant).await?;
    let accounts = ledger::list_accounts(db, &p.tenant, 200, 0).await?;

    let mut entry_rows = String::new();
    for e in &entries {
        entry_rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
            escape(&e.date),
            escape(&e.description),
            money(e.total),
            e.reverses_id.as_ref().map_or("", |_| "reversal"),
        ));
    }
    if entries.is_empty() {
        entry_rows.push_str("<tr><td colspan=\"4\">No entries yet.</td></tr>");
    }
    let mut tb_rows = String::new();
    for r in &tb.accounts {
        tb_rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            escape(&r.code),
            escape(&r.name),
            money(r.debit),
            money(r.credit),
        ));
    }
    let options: String = accounts
        .iter()
        .map(|a| {
            format!(
                "<option value=\"{}\">{} {}</option>",
                escape(&a.id),
                escape(&a.code),
                escape(&a.name)
            )
        })
        .collect();
    let nonce = nonce.map(|Extension(n)| n.as_str().to_owned());
    let nonce_attr = nonce_attr(nonce.as_deref());
    let body = format!(
        "<h1>Dashboard</h1>\
         <p>Signed in as <strong>{user}</strong> ({role}) in tenant <strong>{tenant}</strong>.</p>\
         <form method=\"post\" action=\"/accounts/logout/\"><button type=\"submit\">Log out</button></form>\
         <h2>Post a journal entry</h2>\
         <form id=\"entry-form\">\
         <label>Date <input name=\"date\" type=\"date\" required></label> \
         <label>Description <input name=\"description\" required></label> \
         <label>Debit <select name=\"debit_account\">{options}</select></label> \
         <label>Credit <select name=\"credit_account\">{options}</select></label> \
         <label>Amount (cents) <input name=\"amount\" type=\"number\" min=\"1\" step=\"1\" required></label> \
         <button type=\"submit\">Post</button></form>\
         <p id=\"entry-status\" role=\"status\"></p>\
         <h2>Recent journal entries</h2>\
         <table id=\"entries\"><thead><tr><th>Date</th><th>Description</th><th>Amount</th><th></th></tr></thead>\
         <tbody>{entry_rows}</tbody></table>\
         <h2>Trial balance</h2>\
         <table id=\"trial-balance\"><thead><tr><th>Code</th><th>Account</th><th>Debit</th><th>Credit</th></tr></thead>\
         <tbody>{tb_rows}</tbody><tfoot><tr><th colspan=\"2\">Total</th>\
         <td class=\"n\" id=\"tb-debit\">{td}</td><td class=\"n\" id=\"tb-credit\">{tc}</td></tr></tfoot></table>\
         <script{nonce_attr}>{script}</script>",
        user = escape(&p.username),
        role = p.role.as_str(),
        tenant = escape(&p.tenant),
        td = money(tb.total_debit),
        tc = money(tb.total_credit),
        script = DASHBOARD_SCRIPT,
    );
    Ok(Html(page("Dashboard", &body, nonce.as_deref())).into_response())
}

/// The dashboard's script: posts the form through the JSON API (same origin, session
/// cookie, an `Idempotency-Key` per submission) and redraws the trial balance.
const DASHBOARD_SCRIPT: &str = r#"
(function () {
  var form = document.getElementById('entry-form');
  var status = document.getElementById('entry-status');
  function money(m) { var s = m < 0 ? '-' : ''; m = Math.abs(m); return s + Math.floor(m / 100) + '.' + String(m % 100).padStart(2, '0'); }
  function cell(text, numeric) { var td = document.createElement('td'); td.textContent = text; if (numeric) { td.className = 'n'; } return td; }
  function refresh() {
    return fetch('/api/v1/reports/trial-balance', { credentials: 'same-origin' })
      .then(function (r) { return r.json(); })
      .then(function (tb) {
        var body = document.querySelector('#trial-balance tbody');
        body.textContent = '';
        tb.accounts.forEach(function (a) {
          var tr = document.createElement('tr');
          tr.appendChild(cell(a.code)); tr.appendChild(cell(a.name));
          tr.appendChild(cell(money(a.debit), true)); tr.appendChild(cell(money(a.credit), true));
          body.appendChild(tr);
        });
        document.getElementById('tb-debit').textContent = money(tb.total_debit);
        document.getElementById('tb-credit').textContent = money(tb.total_credit);
      });
  }
  form.addEventListener('submit', function (ev) {
    ev.preventDefault();
    var f = new FormData(form);
    var amount = parseInt(f.get('amount'), 10);
    var body = { date: f.get('date'), description: f.get('description'), lines: [
      { account_id: f.get('debit_account'), debit: amount },
      { account_id: f.get('credit_account'), credit: amount } ] };
    var key = (window.crypto && crypto.randomUUID) ? crypto.randomUUID() : String(Date.now()) + Math.random();
    fetch('/api/v1/journal-entries', { method: 'POST', credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json', 'Idempotency-Key': key }, body: JSON.stringify(body) })
      .then(function (r) { return r.json().then(function (j) { return { ok: r.ok, body: j }; }); })
      .then(function (res) {
        if (res.ok) { status.textContent = 'Posted.'; form.reset(); return refresh(); }
        status.textContent = res.body.error + ': ' + res.body.detail;
      })
      .catch(function (e) { status.textContent = 'Failed: ' + e; });
  });
})();
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_money() {
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#x27;&amp;&#x27;&lt;/a&gt;"
        );
        assert_eq!(money(0), "0.00");
        assert_eq!(money(123_456), "1234.56");
        assert_eq!(money(-5), "-0.05");
        assert_eq!(money(i64::MIN), "-92233720368547758.08");
    }
}
