//! The JSON API under `/api/v1/`.
//!
//! Every handler that touches data takes the [`Principal`] and passes its tenant to the
//! ledger, which filters every query on it; a resource of another tenant is a 404,
//! indistinguishable from one that does not exist.

use axum::{
    Json, Router,
    body::Bytes,
    extract::{FromRequest, Request, State},
    http::{HeaderMap, StatusCode, header},
    response::Response,
    routing::{get, post},
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;
use tower_rampart::cache::{CacheTags, ResponseCacheLayer};
use utoipa::ToSchema;

use crate::{
    AppState, TRIAL_BALANCE_TAG,
    auth::{self, Admin, Principal, Role},
    error::{ApiError, ApiPath, ApiQuery, ErrorBody},
    idempotency,
    ledger::{self, Account, Entry, NewAccount, NewEntry, Page, ReverseRequest, TrialBalance},
    tenant::CurrentTenant,
};

/// The API version served under `/api/v1/` and sent in the `API-Version` header.
pub const VERSION: &str = "1";

/// The `/api/v1` routes (nested by [`crate::app`]).
///
/// `trial_balance_cache` wraps `GET /reports/trial-balance` only: the report is the one
/// expensive read, and its responses carry the [`TRIAL_BALANCE_TAG`] that posting an
/// entry invalidates. Other reads are not cached (they would go stale until their TTL).
pub fn router(trial_balance_cache: Option<ResponseCacheLayer>) -> Router<AppState> {
    Router::new()
        .route("/auth/token", post(token))
        .route("/users/me", get(me))
        .route("/accounts", get(list_accounts).post(create_account))
        .route("/accounts/{id}", get(get_account))
        .route("/journal-entries", get(list_entries).post(create_entry))
        .route("/journal-entries/{id}", get(get_entry))
        .route("/journal-entries/{id}/reverse", post(reverse_entry))
        .route(
            "/reports/trial-balance",
            match trial_balance_cache {
                Some(cache) => get(trial_balance).layer(cache),
                None => get(trial_balance),
            },
        )
        .fallback(not_found)
}

async fn not_found() -> ApiError {
    ApiError::not_found("No such API endpoint; see /api/schema/ for the list.")
}

/// A JSON body kept both typed and raw (for the idempotency fingerprint).
/// 415 without a JSON content type, 400 malformed, 413 too large, 422 wrong shape.
/// With `OPTIONAL`, an empty body means `{}`.
#[derive(Debug)]
pub struct JsonBody<T, const OPTIONAL: bool = false> {
    /// The typed body.
    pub value: T,
    /// The body as parsed JSON.
    pub raw: Value,
}

impl<T, S, const OPTIONAL: bool> FromRequest<S> for JsonBody<T, OPTIONAL>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|m| {
                let m = m.trim();
                m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
            });
        let has_ct = req.headers().contains_key(header::CONTENT_TYPE);
        let bytes = Bytes::from_request(req, state).await.map_err(|rej| {
            let status = if rej.status().is_server_error() {
                StatusCode::BAD_REQUEST
            } else {
                rej.status()
            };
            let title = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "Payload too large"
            } else {
                "Bad request"
            };
            ApiError::new(status, title, rej.body_text())
        })?;
        let raw: Value =
            if OPTIONAL && bytes.iter().all(u8::is_ascii_whitespace) && (!has_ct || is_json) {
                Value::Object(serde_json::Map::new())
            } else {
                if !is_json {
                    return Err(ApiError::new(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "Unsupported media type",
                        "Expected a request with `Content-Type: application/json`.",
                    ));
                }
                serde_json::from_slice(&bytes).map_err(|e| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "Malformed JSON",
                        format!("The body is not valid JSON: {e}."),
                    )
                })?
            };
        let value = serde_json::from_value(raw.clone()).map_err(|e| {
            ApiError::validation(format!("The body does not match the expected shape: {e}."))
        })?;
        Ok(Self { value, raw })
    }
}

/// Body of `POST /api/v1/auth/token`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// Tenant id, e.g. `acme`.
    pub tenant: String,
    /// User name, e.g. `admin`.
    pub username: String,
    /// Password.
    pub password: String,
}

/// An access token.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    /// The JWT (HS256) carrying user, tenant and role.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Lifetime in seconds.
    pub expires_in: u64,
}

/// The current user.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Me {
    /// Id.
    pub id: String,
    /// Name.
    pub username: String,
    /// Tenant.
    pub tenant: String,
    /// Role.
    pub role: Role,
}

/// A page of accounts.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AccountList {
    /// The accounts, by code.
    pub items: Vec<Account>,
    /// Page size.
    pub limit: i64,
    /// Offset.
    pub offset: i64,
}

/// A page of journal entries.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EntryList {
    /// The entries, newest first.
    pub items: Vec<Entry>,
    /// Page size.
    pub limit: i64,
    /// Offset.
    pub offset: i64,
}

fn to_value<T: Serialize>(v: &T) -> Result<Value, ApiError> {
    serde_json::to_value(v).map_err(|e| ApiError::internal(&e))
}

/// Issues an access token.
#[utoipa::path(post, path = "/api/v1/auth/token", tag = "auth",
    request_body = TokenRequest,
    params(("X-Tenant-ID" = Option<String>, Header, description = "When present, must equal `tenant`.")),
    responses(
        (status = 200, description = "Token issued", body = TokenResponse),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Wrong tenant, user name or password", body = ErrorBody),
        (status = 403, description = "Body tenant differs from the request's tenant", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Wrong shape or unknown field", body = ErrorBody),
        (status = 503, description = "Too many password checks in progress", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ))]
pub async fn token(
    State(state): State<AppState>,
    current: Option<axum::Extension<CurrentTenant>>,
    JsonBody { value: req, .. }: JsonBody<TokenRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    if let Some(axum::Extension(t)) = current
        && t.id().as_str() != req.tenant
    {
        return Err(ApiError::forbidden(
            "The tenant in the body differs from the request's tenant (X-Tenant-ID or subdomain).",
        ));
    }
    let user = auth::verify_credentials(&state, &req.tenant, &req.username, &req.password)
        .await?
        .ok_or_else(|| ApiError::unauthorized("Invalid tenant, user name or password."))?;
    let ttl = state.config().token_ttl;
    let access_token = state.jwt().issue(&user, "api", ttl)?;
    Ok(Json(TokenResponse {
        access_token,
        token_type: "Bearer".into(),
        expires_in: ttl.as_secs(),
    }))
}

/// The authenticated user.
#[utoipa::path(get, path = "/api/v1/users/me", tag = "auth", security(("bearer" = [])),
    responses(
        (status = 200, body = Me),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 403, description = "Tenant mismatch", body = ErrorBody),
    ))]
pub async fn me(p: Principal) -> Json<Me> {
    Json(Me {
        id: p.user_id,
        username: p.username,
        tenant: p.tenant,
        role: p.role,
    })
}

/// The chart of accounts.
#[utoipa::path(get, path = "/api/v1/accounts", tag = "accounts", security(("bearer" = [])),
    params(Page),
    responses(
        (status = 200, body = AccountList),
        (status = 400, description = "Bad paging parameters", body = ErrorBody),
        (status = 401, body = ErrorBody),
    ))]
pub async fn list_accounts(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<AccountList>, ApiError> {
    let (limit, offset) = page.resolve()?;
    let items = ledger::list_accounts(state.db(), &p.tenant, limit, offset).await?;
    Ok(Json(AccountList {
        items,
        limit,
        offset,
    }))
}

/// Adds an account (admins only).
#[utoipa::path(post, path = "/api/v1/accounts", tag = "accounts", security(("bearer" = [])),
    request_body = NewAccount,
    responses(
        (status = 201, body = Account),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 409, description = "Code already used", body = ErrorBody),
        (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody),
    ))]
pub async fn create_account(
    State(state): State<AppState>,
    Admin(p): Admin,
    JsonBody { value: new, .. }: JsonBody<NewAccount>,
) -> Result<(StatusCode, Json<Account>), ApiError> {
    let account = ledger::create_account(state.db(), &p.tenant, &new).await?;
    // The trial balance lists every account.
    state.invalidate_reports(&p.tenant).await;
    Ok((StatusCode::CREATED, Json(account)))
}

/// One account.
#[utoipa::path(get, path = "/api/v1/accounts/{id}", tag = "accounts", security(("bearer" = [])),
    params(("id" = String, Path, description = "Account id (UUID)")),
    responses(
        (status = 200, body = Account),
        (status = 400, description = "Not a UUID", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, description = "No such account in this tenant", body = ErrorBody),
    ))]
pub async fn get_account(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Account>, ApiError> {
    let id = ledger::parse_id(&id)?;
    Ok(Json(ledger::get_account(state.db(), &p.tenant, &id).await?))
}

/// Journal entries, newest first.
#[utoipa::path(get, path = "/api/v1/journal-entries", tag = "journal", security(("bearer" = [])),
    params(Page),
    responses(
        (status = 200, body = EntryList),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
    ))]
pub async fn list_entries(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<EntryList>, ApiError> {
    let (limit, offset) = page.resolve()?;
    let items = ledger::list_entries(state.db(), &p.tenant, limit, offset).await?;
    Ok(Json(EntryList {
        items,
        limit,
        offset,
    }))
}

/// Posts a balanced journal entry atomically.
#[utoipa::path(post, path = "/api/v1/journal-entries", tag = "journal", security(("bearer" = [])),
    request_body = NewEntry,
    params(("Idempotency-Key" = Option<String>, Header, description = "Same key + same body replays the first response")),
    responses(
        (status = 201, body = Entry),
        (status = 400, description = "Malformed JSON or Idempotency-Key", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 409, description = "Same Idempotency-Key still in flight", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody),
        (status = 422, description = "Double-entry rule broken, or Idempotency-Key reused with another body", body = ErrorBody),
    ))]
pub async fn create_entry(
    State(state): State<AppState>,
    p: Principal,
    headers: HeaderMap,
    body: JsonBody<NewEntry>,
) -> Result<Response, ApiError> {
    let key = idempotency::key_from(&headers)?;
    let fp = idempotency::fingerprint("POST", "/api/v1/journal-entries", &body.raw);
    let st = state.clone();
    let principal = p.clone();
    idempotency::run(&state, &p, key, fp, |claim| async move {
        let entry = ledger::create_entry(
            st.db(),
            &principal.tenant,
            &principal.user_id,
            &body.value,
            claim.as_ref(),
        )
        .await?;
        st.entry_posted(&principal.tenant).await;
        Ok((StatusCode::CREATED, to_value(&entry)?))
    })
    .await
}

/// One journal entry with its lines.
#[utoipa::path(get, path = "/api/v1/journal-entries/{id}", tag = "journal", security(("bearer" = [])),
    params(("id" = String, Path, description = "Entry id (UUID)")),
    responses(
        (status = 200, body = Entry),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
pub async fn get_entry(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Entry>, ApiError> {
    let id = ledger::parse_id(&id)?;
    Ok(Json(ledger::get_entry(state.db(), &p.tenant, &id).await?))
}

/// Posts the reversal of an entry (debits and credits swapped).
#[utoipa::path(post, path = "/api/v1/journal-entries/{id}/reverse", tag = "journal", security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "Entry id (UUID)"),
        ("Idempotency-Key" = Option<String>, Header, description = "Same key + same body replays the first response"),
    ),
    request_body(content = Option<ReverseRequest>, description = "Optional; an empty body uses the defaults"),
    responses(
        (status = 201, body = Entry),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Already reversed, or same key in flight", body = ErrorBody),
        (status = 422, body = ErrorBody),
    ))]
pub async fn reverse_entry(
    State(state): State<AppState>,
    p: Principal,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    body: JsonBody<ReverseRequest, true>,
) -> Result<Response, ApiError> {
    let id = ledger::parse_id(&id)?;
    let key = idempotency::key_from(&headers)?;
    let fp = idempotency::fingerprint(
        "POST",
        &format!("/api/v1/journal-entries/{id}/reverse"),
        &body.raw,
    );
    let st = state.clone();
    let principal = p.clone();
    idempotency::run(&state, &p, key, fp, |claim| async move {
        let entry = ledger::reverse_entry(
            st.db(),
            &principal.tenant,
            &principal.user_id,
            &id,
            &body.value,
            claim.as_ref(),
        )
        .await?;
        st.entry_posted(&principal.tenant).await;
        Ok((StatusCode::CREATED, to_value(&entry)?))
    })
    .await
}

/// The trial balance: debits, credits and balance per account.
///
/// Cached per tenant and user by the response cache (strong `ETag`, `If-None-Match` →
/// 304), invalidated on every instance when an entry is posted or reversed.
#[utoipa::path(get, path = "/api/v1/reports/trial-balance", tag = "reports", security(("bearer" = [])),
    params(("If-None-Match" = Option<String>, Header, description = "An ETag of an earlier response: 304 when unchanged")),
    responses(
        (status = 200, body = TrialBalance, headers(("ETag" = String, description = "Strong validator of the report"))),
        (status = 304, description = "Not modified since the given ETag"),
        (status = 401, body = ErrorBody),
    ))]
pub async fn trial_balance(
    State(state): State<AppState>,
    p: Principal,
) -> Result<(axum::Extension<CacheTags>, Json<TrialBalance>), ApiError> {
    let report = ledger::trial_balance(state.db(), &p.tenant).await?;
    Ok((
        axum::Extension(CacheTags::new([TRIAL_BALANCE_TAG])),
        Json(report),
    ))
}
