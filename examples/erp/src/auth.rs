//! Authentication: bearer tokens (API) and session cookies (HTML), both HS256 JWTs.
//!
//! [`authenticate`] runs early in the stack (before the rate limiter and the tenant
//! layer, which read the user through [`tower_rampart::identity::UserIdentity`]): it
//! verifies the `Authorization: Bearer` token or the session cookie and inserts the
//! [`Principal`] into the request extensions. Handlers that need a user take
//! [`Principal`] as an extractor (401 JSON without one).
//!
//! CSRF: the session cookie is `HttpOnly; SameSite=Strict`, and every unsafe request
//! authenticated by the cookie must also come from the server's own origin (`Origin`,
//! or `Sec-Fetch-Site` when there is no `Origin`), else 403.

use std::sync::Arc;

use argon2::{Argon2, PasswordHash};
use axum::{
    extract::{FromRequestParts, Request, State},
    http::{HeaderMap, HeaderValue, Method, header, request::Parts},
    middleware::Next,
    response::{IntoResponse, Response},
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tower_rampart::identity::UserIdentity;
use utoipa::ToSchema;

use crate::{AppState, error::ApiError};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "rampart_session";

/// A user's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Manages the chart of accounts; sees the profiler.
    Admin,
    /// Posts and reads journal entries.
    User,
}

impl Role {
    /// `"admin"` or `"user"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::User => "user",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(Self::Admin),
            "user" => Some(Self::User),
            _ => None,
        }
    }
}

/// How the request was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// The session cookie.
    Session,
}

/// The authenticated user, in the request extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user's id (UUID).
    pub user_id: String,
    /// The user's name, unique within the tenant.
    pub username: String,
    /// The tenant the user belongs to.
    pub tenant: String,
    /// The user's role.
    pub role: Role,
    /// Bearer token or session cookie.
    pub method: AuthMethod,
}

impl UserIdentity for Principal {
    fn user_id(&self) -> &str {
        &self.user_id
    }

    fn tenant_id(&self) -> Option<&str> {
        Some(&self.tenant)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Self>().cloned().ok_or_else(|| {
            ApiError::unauthorized(
                "Authentication required: send `Authorization: Bearer <token>` (POST /api/v1/auth/token) or log in at /accounts/login/.",
            )
        })
    }
}

/// A [`Principal`] with the admin role (403 JSON for other users).
#[derive(Debug, Clone)]
pub struct Admin(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let p = Principal::from_request_parts(parts, state).await?;
        if p.role == Role::Admin {
            Ok(Self(p))
        } else {
            Err(ApiError::forbidden("This action needs the admin role."))
        }
    }
}

/// Token claims: user, tenant, role, audience (`api` or `session`), expiry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user's id.
    pub sub: String,
    /// The user's name.
    pub username: String,
    /// The tenant.
    pub tenant: String,
    /// `admin` or `user`.
    pub role: String,
    /// `api` for bearer tokens, `session` for the cookie.
    pub aud: String,
    /// Issued at (Unix seconds).
    pub iat: u64,
    /// Expires at (Unix seconds).
    pub exp: u64,
    /// The user's session epoch when issued: a logout or a password change raises it,
    /// which ends the token.
    #[serde(default)]
    pub epoch: i64,
}

/// The HS256 keys, built once from the configured secret.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: Arc<EncodingKey>,
    decoding: Arc<DecodingKey>,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtKeys(<redacted>)")
    }
}

impl JwtKeys {
    /// Keys from a secret.
    pub fn new(secret: &[u8]) -> Self {
        Self {
            encoding: Arc::new(EncodingKey::from_secret(secret)),
            decoding: Arc::new(DecodingKey::from_secret(secret)),
        }
    }

    /// Signs claims for a user.
    ///
    /// # Errors
    ///
    /// Signing failed (not with HS256 and a valid key).
    pub fn issue(
        &self,
        user: &VerifiedUser,
        aud: &str,
        ttl: std::time::Duration,
    ) -> Result<String, ApiError> {
        let now = crate::db::unix_now();
        let claims = Claims {
            sub: user.id.clone(),
            username: user.username.clone(),
            tenant: user.tenant.clone(),
            role: user.role.as_str().to_owned(),
            aud: aud.to_owned(),
            iat: now,
            exp: now + ttl.as_secs(),
            epoch: user.epoch,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| ApiError::internal(&e))
    }

    /// Verifies a token for an audience; `None` when invalid or expired.
    pub fn verify(&self, token: &str, aud: &str) -> Option<Claims> {
        let mut v = Validation::new(Algorithm::HS256);
        v.set_audience(&[aud]);
        v.leeway = 5;
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &v)
            .ok()
            .map(|d| d.claims)
    }
}

/// A bounded pool for password checks: Argon2 at the shipped cost takes about 19 MiB
/// and a core for each check, so the checks run on `threads` dedicated threads (the
/// core count), at most `max_waiting` more wait in a queue, each for at most
/// `max_wait`; beyond that a check is refused with a 503 and `Retry-After` instead of
/// growing memory without bound. Dedicated threads, not tokio's blocking pool: every
/// new thread gets its own allocator arena, which keeps an Argon2 buffer after the
/// check, so the number of threads bounds the memory too.
#[derive(Debug, Clone)]
pub struct HashPool {
    jobs: std::sync::mpsc::SyncSender<Job>,
    max_wait: std::time::Duration,
}

type Job = (std::time::Instant, Box<dyn FnOnce(bool) + Send>);

impl HashPool {
    /// `threads` checks at once (at least 1), `max_waiting` queued, each waiting at
    /// most `max_wait`.
    pub fn new(threads: usize, max_waiting: usize, max_wait: std::time::Duration) -> Self {
        let (jobs, queue) = std::sync::mpsc::sync_channel::<Job>(max_waiting);
        let queue = Arc::new(std::sync::Mutex::new(queue));
        for i in 0..threads.max(1) {
            let queue = Arc::clone(&queue);
            // A thread that cannot start leaves the others; with none, checks answer 503.
            let _ = std::thread::Builder::new()
                .name(format!("password-check-{i}"))
                .spawn(move || {
                    loop {
                        let job = match queue.lock() {
                            Ok(q) => q.recv(),
                            Err(_) => return,
                        };
                        // The pool is gone (every sender dropped): stop.
                        let Ok((queued, job)) = job else { return };
                        job(queued.elapsed() <= max_wait);
                    }
                });
        }
        Self { jobs, max_wait }
    }

    /// The default: one thread per core, four queued per core, two seconds of wait.
    pub fn for_this_machine() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        Self::new(cores, cores * 4, std::time::Duration::from_secs(2))
    }

    /// Runs `check` on one of the pool's threads.
    ///
    /// # Errors
    ///
    /// 503 with `Retry-After` when the queue is full or the check waited too long.
    pub async fn run<T: Send + 'static>(
        &self,
        check: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let busy = || {
            ApiError::unavailable(
                "Too many password checks are in progress; retry in a second.",
                1,
            )
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Box<dyn FnOnce(bool) + Send> = Box::new(move |in_time| {
            // Too late: the caller has been answered 503 already; skip the work.
            let _ = tx.send(in_time.then(check));
        });
        self.jobs
            .try_send((std::time::Instant::now(), job))
            .map_err(|_| busy())?;
        match tokio::time::timeout(self.max_wait + std::time::Duration::from_secs(30), rx).await {
            Ok(Ok(Some(v))) => Ok(v),
            _ => Err(busy()),
        }
    }
}

/// A user whose password was checked.
#[derive(Debug, Clone)]
pub struct VerifiedUser {
    /// Id.
    pub id: String,
    /// Name.
    pub username: String,
    /// Tenant.
    pub tenant: String,
    /// Role.
    pub role: Role,
    /// Session epoch (see [`Claims::epoch`]).
    pub epoch: i64,
}

/// The `[rate_limit]` policy that counts failed sign-ins per tenant and user name (a
/// `key = "direct"` policy: the form and the token endpoint decide it themselves).
pub const ACCOUNT_FAILURES: &str = "account-failures";

/// Checks a tenant, user name and password against the database (Argon2, in a blocking
/// thread of the bounded [`HashPool`]). Unknown users cost as much as wrong passwords
/// (a dummy hash of the same cost is checked).
///
/// Failed attempts are counted per tenant and user name (whether the account exists or
/// not, so the answer tells nothing) under the [`ACCOUNT_FAILURES`] policy; past it, the
/// account's sign-ins are refused with 429 before any password is hashed, from every
/// client address: guessing one account's password from many addresses is bounded too.
///
/// # Errors
///
/// Database failure (500), too many checks in progress (503 with `Retry-After`), too
/// many failed attempts for the account (429 with `Retry-After`); wrong credentials are
/// `Ok(None)`.
pub async fn verify_credentials(
    state: &AppState,
    tenant: &str,
    username: &str,
    password: &str,
) -> Result<Option<VerifiedUser>, ApiError> {
    // PostgreSQL rejects NUL in text; such credentials cannot exist anyway.
    if [tenant, username, password]
        .iter()
        .any(|s| s.contains('\0'))
    {
        return Ok(None);
    }
    // Length-prefixed: no two (tenant, user name) pairs give the same key.
    let account = format!("{}:{tenant}/{username}", tenant.len());
    let limiter = state.direct_limiter();
    if let Some(Ok(decision)) = match limiter {
        Some(l) => Some(l.peek(ACCOUNT_FAILURES, &account, 1).await),
        None => None,
    } && !decision.is_allowed()
    {
        return Err(ApiError::too_many(
            "Too many failed sign-ins for this account. Please try again later.",
            decision.retry_after().as_secs().max(1),
        ));
    }
    let verified = check_password(state, tenant, username, password).await?;
    if verified.is_none()
        && let Some(l) = limiter
    {
        // A policy missing from a hand-written table just turns the throttle off.
        let _ = l.record(ACCOUNT_FAILURES, &account, 1).await;
    }
    Ok(verified)
}

async fn check_password(
    state: &AppState,
    tenant: &str,
    username: &str,
    password: &str,
) -> Result<Option<VerifiedUser>, ApiError> {
    use sqlx::Row;
    let row = sqlx::query(
        "SELECT id, password_hash, role, session_epoch FROM users WHERE tenant_id = $1 AND username = $2",
    )
    .bind(tenant)
    .bind(username)
    .fetch_optional(state.db().pool())
    .await?;
    let (id, hash, role, epoch) = match &row {
        Some(r) => (
            Some(r.try_get::<String, _>("id")?),
            r.try_get::<String, _>("password_hash")?,
            r.try_get::<String, _>("role")?,
            r.try_get::<i64, _>("session_epoch")?,
        ),
        None => (None, state.dummy_hash().to_owned(), String::new(), 0),
    };
    let password = password.to_owned();
    let ok = state
        .hash_pool()
        .run(move || verify_password(password.as_bytes(), &hash))
        .await?;
    match (ok, id, Role::parse(&role)) {
        (true, Some(id), Some(role)) => Ok(Some(VerifiedUser {
            id,
            username: username.to_owned(),
            tenant: tenant.to_owned(),
            role,
            epoch,
        })),
        _ => Ok(None),
    }
}

/// The most Argon2 memory one check may use (stored hashes are ours; this bounds a
/// corrupted row too): 64 MiB.
const MAX_HASH_BLOCKS: usize = 64 * 1024;

thread_local! {
    /// Argon2's working memory, kept by each thread of the [`HashPool`] and reused by
    /// every check it runs (an allocation of 19 MiB per check would leave a copy in
    /// each allocator arena).
    static BLOCKS: std::cell::RefCell<Vec<argon2::Block>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Checks `password` against a PHC string, in the thread's reused memory; the
/// comparison of the outputs is constant-time.
fn verify_password(password: &[u8], phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) = (
        argon2::Algorithm::try_from(parsed.algorithm),
        argon2::Params::try_from(&parsed),
    ) else {
        return false;
    };
    let version = match parsed.version.map(argon2::Version::try_from) {
        None => argon2::Version::V0x13,
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    if params.block_count() > MAX_HASH_BLOCKS {
        return false;
    }
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    let argon = Argon2::new(algorithm, version, params.clone());
    let hashed = BLOCKS.with_borrow_mut(|blocks| {
        blocks.resize(params.block_count(), argon2::Block::default());
        argon.hash_password_into_with_memory(
            password,
            salt,
            &mut out,
            &mut blocks[..params.block_count()],
        )
    });
    hashed.is_ok()
        && argon2::password_hash::Output::new(&out).is_ok_and(|computed| computed == expected)
}

/// Sets a user's password (Argon2 at the configured cost, in the [`HashPool`]) and
/// ends every session and token of the user, on every instance, in the same statement.
///
/// # Errors
///
/// No such user (404), too many password checks in progress (503), database failure.
pub async fn set_password(
    state: &AppState,
    tenant: &str,
    user_id: &str,
    password: &str,
) -> Result<(), ApiError> {
    let cost = state.config().password_cost;
    let password = password.to_owned();
    let hash = state
        .hash_pool()
        .run(move || crate::db::hash_password(&password, cost))
        .await?
        .map_err(|e| ApiError::internal(&e))?;
    let changed = sqlx::query(
        "UPDATE users SET password_hash = $1, session_epoch = session_epoch + 1
         WHERE tenant_id = $2 AND id = $3",
    )
    .bind(hash)
    .bind(tenant)
    .bind(user_id)
    .execute(state.db().pool())
    .await?
    .rows_affected();
    if changed == 0 {
        return Err(ApiError::not_found("No such user."));
    }
    Ok(())
}

/// Ends every session and token of a user, on every instance (raises the user's
/// session epoch, which each request checks).
///
/// # Errors
///
/// Database failure.
pub async fn end_sessions(state: &AppState, tenant: &str, user_id: &str) -> Result<(), ApiError> {
    sqlx::query(
        "UPDATE users SET session_epoch = session_epoch + 1 WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant)
    .bind(user_id)
    .execute(state.db().pool())
    .await?;
    Ok(())
}

/// The claims of a valid token for `aud` whose session epoch is still the user's (not
/// ended by a logout or a password change since it was issued); `None` otherwise.
async fn current_claims(
    state: &AppState,
    token: &str,
    aud: &str,
) -> Result<Option<Claims>, ApiError> {
    let Some(claims) = state.jwt().verify(token, aud) else {
        return Ok(None);
    };
    Ok(epoch_is_current(state, &claims).await?.then_some(claims))
}

/// Whether the claims' session epoch is still the user's.
async fn epoch_is_current(state: &AppState, claims: &Claims) -> Result<bool, sqlx::Error> {
    let epoch: Option<i64> =
        sqlx::query_scalar("SELECT session_epoch FROM users WHERE tenant_id = $1 AND id = $2")
            .bind(&claims.tenant)
            .bind(&claims.sub)
            .fetch_optional(state.db().pool())
            .await?;
    Ok(epoch == Some(claims.epoch))
}

/// Whether the session cookie should carry `Secure`: always with
/// `RAMPART_SECURE_COOKIES` / `server.secure_cookies`, and for a request that came over
/// HTTPS (its scheme as [`ClientIpResolver::scheme`] reads it: the forwarded protocol
/// is believed from trusted proxies only).
///
/// [`ClientIpResolver::scheme`]: tower_rampart::client_ip::ClientIpResolver::scheme
pub fn secure_cookie(
    state: &AppState,
    headers: &HeaderMap,
    peer: Option<std::net::SocketAddr>,
) -> bool {
    if state.config().secure_cookies {
        return true;
    }
    let mut req = axum::http::Request::new(());
    *req.headers_mut() = headers.clone();
    if let Some(peer) = peer {
        req.extensions_mut()
            .insert(tower_rampart::client_ip::PeerAddr(peer));
    }
    tower_rampart::client_ip::ClientIpResolver::new(state.config().trusted()).scheme(&req)
        == Some("https")
}

fn principal_from(claims: Claims, method: AuthMethod) -> Option<Principal> {
    Some(Principal {
        role: Role::parse(&claims.role)?,
        user_id: claims.sub,
        username: claims.username,
        tenant: claims.tenant,
        method,
    })
}

/// Reads a cookie from the `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The `Set-Cookie` value of a session, or of its removal when `token` is `None`.
pub fn session_cookie(token: Option<&str>, max_age: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let v = match token {
        Some(t) => {
            format!(
                "{SESSION_COOKIE}={t}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
            )
        }
        None => format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    };
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Whether a request comes from the server's own origin, as far as the browser says:
/// `Origin` (when present) must name the `Host`; without `Origin`, `Sec-Fetch-Site`
/// (when present) must be `same-origin` or `none`; `Origin: null` is judged by
/// `Sec-Fetch-Site` alone (refused without it). Requests with neither header are not
/// from a browser page and pass.
pub fn same_origin(headers: &HeaderMap) -> bool {
    // `Origin: null` is what a browser sends when it may not say (an opaque origin,
    // or a `no-referrer` policy on some requests): then only `Sec-Fetch-Site` can tell.
    if let Some(origin) = headers
        .get(header::ORIGIN)
        .filter(|o| o.as_bytes() != b"null")
    {
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
            return false;
        };
        let authority = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"));
        return authority.is_some_and(|a| a.eq_ignore_ascii_case(host));
    }
    match headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        Some(site) => matches!(site, "same-origin" | "none"),
        // A null origin the browser does not explain is refused.
        None => !headers.contains_key(header::ORIGIN),
    }
}

fn is_unsafe(m: &Method) -> bool {
    !matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// Middleware: authenticates the bearer token or the session cookie and inserts the
/// [`Principal`]. A malformed or invalid bearer token is a 401; an invalid cookie is
/// ignored (the request is anonymous); a cross-origin unsafe request carrying the
/// cookie is a 403.
pub async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let headers = req.headers();
    let principal = if let Some(authz) = headers.get(header::AUTHORIZATION) {
        let token = authz
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        let Some(token) = token else {
            return bearer_error("The Authorization header must be `Bearer <token>`.");
        };
        let claims = match current_claims(&state, token, "api").await {
            Ok(c) => c,
            Err(e) => return e.into_response(),
        };
        match claims.and_then(|c| principal_from(c, AuthMethod::Bearer)) {
            Some(p) => Some(p),
            None => {
                return bearer_error(
                    "The bearer token is invalid or expired; get a new one from POST /api/v1/auth/token.",
                );
            }
        }
    } else if let Some(token) = cookie(headers, SESSION_COOKIE) {
        // Ended by a logout or a password change: anonymous.
        let claims = match current_claims(&state, token, "session").await {
            Ok(c) => c,
            Err(e) => return e.into_response(),
        };
        let headers = req.headers();
        let p = claims.and_then(|c| principal_from(c, AuthMethod::Session));
        if p.is_some() && is_unsafe(req.method()) && !same_origin(headers) {
            return ApiError::forbidden(
                "Cross-origin request refused (CSRF protection): the session cookie is only accepted from this site's own pages.",
            )
            .into_response();
        }
        p
    } else {
        None
    };
    if let Some(p) = principal {
        req.extensions_mut().insert(p);
    }
    next.run(req).await
}

fn bearer_error(detail: &str) -> Response {
    let mut res = ApiError::unauthorized(detail).into_response();
    res.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer error=\"invalid_token\""),
    );
    res
}

/// Middleware for admin-only areas (the profiler UI, for example): 401 without a user,
/// 403 for a user who is not an admin.
pub async fn require_admin(req: Request, next: Next) -> Response {
    match req.extensions().get::<Principal>() {
        None => ApiError::unauthorized("Authentication required.").into_response(),
        Some(p) if p.role != Role::Admin => {
            ApiError::forbidden("This area is for administrators only.").into_response()
        }
        Some(_) => next.run(req).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[tokio::test]
    async fn require_admin_guards_admin_areas() {
        use axum::{Router, body::Body, routing::get};
        use tower::ServiceExt;
        let app = |p: Option<Principal>| {
            let router = Router::new()
                .route("/_profiler/", get(|| async { "profiles" }))
                .layer(axum::middleware::from_fn(require_admin));
            match p {
                Some(p) => router.layer(axum::Extension(p)),
                None => router,
            }
        };
        let who = |role| Principal {
            user_id: "u".into(),
            username: "n".into(),
            tenant: "acme".into(),
            role,
            method: AuthMethod::Session,
        };
        let status = |p| async move {
            app(p)
                .oneshot(Request::get("/_profiler/").body(Body::empty()).unwrap())
                .await
                .unwrap()
                .status()
        };
        assert_eq!(status(None).await, 401);
        assert_eq!(status(Some(who(Role::User))).await, 403);
        assert_eq!(status(Some(who(Role::Admin))).await, 200);
    }

    #[test]
    fn passwords_verify_in_reused_memory() {
        use crate::config::PasswordCost;
        for cost in [PasswordCost::Fast, PasswordCost::Default] {
            let phc = crate::db::hash_password("s3cret", cost).unwrap();
            assert!(verify_password(b"s3cret", &phc));
            assert!(!verify_password(b"s3cret!", &phc));
            assert!(!verify_password(b"", &phc));
            // The reused memory holds the previous check's blocks: still exact.
            assert!(verify_password(b"s3cret", &phc));
        }
        assert!(!verify_password(b"x", "not a hash"));
        assert!(!verify_password(
            b"x",
            "$argon2id$v=19$m=1048576,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"
        ));
    }

    #[tokio::test]
    async fn a_full_hash_pool_answers_503_with_retry_after() {
        let pool = HashPool::new(1, 0, std::time::Duration::from_secs(5));
        let (release, wait) = std::sync::mpsc::channel::<()>();
        // Let the worker reach its queue before the first job.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let busy = tokio::spawn({
            let pool = pool.clone();
            async move { pool.run(move || wait.recv().is_ok()).await.unwrap() }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let refused = pool.run(|| true).await.unwrap_err();
        assert_eq!(refused.status(), 503);
        let res = refused.into_response();
        assert_eq!(res.headers()[header::RETRY_AFTER], "1");
        release.send(()).unwrap();
        assert!(busy.await.unwrap());
    }

    #[test]
    fn same_origin_rules() {
        assert!(same_origin(&headers(&[])));
        assert!(same_origin(&headers(&[
            ("host", "acme.localhost:8080"),
            ("origin", "http://acme.localhost:8080")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "acme.localhost:8080"),
            ("origin", "http://evil.example")
        ])));
        assert!(!same_origin(&headers(&[("origin", "http://x")])));
        assert!(!same_origin(&headers(&[
            ("host", "x"),
            ("origin", "null"),
            ("sec-fetch-site", "cross-site")
        ])));
        assert!(same_origin(&headers(&[
            ("host", "x"),
            ("origin", "null"),
            ("sec-fetch-site", "same-origin")
        ])));
        assert!(!same_origin(&headers(&[("host", "x"), ("origin", "null")])));
        assert!(same_origin(&headers(&[("sec-fetch-site", "same-origin")])));
        assert!(!same_origin(&headers(&[("sec-fetch-site", "cross-site")])));
    }

    #[test]
    fn cookies_parse_and_render() {
        let h = headers(&[("cookie", "a=1; rampart_session=tok"), ("cookie", "b=2")]);
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("tok"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "c"), None);
        let set = session_cookie(Some("t"), 60, true);
        let s = set.to_str().unwrap();
        assert!(s.contains("HttpOnly") && s.contains("SameSite=Strict") && s.contains("Secure"));
        assert!(
            session_cookie(None, 0, false)
                .to_str()
                .unwrap()
                .contains("Max-Age=0")
        );
    }

    #[test]
    fn tokens_are_bound_to_audience_and_secret() {
        let keys = JwtKeys::new(b"0123456789abcdef0123456789abcdef");
        let user = VerifiedUser {
            id: "u1".into(),
            username: "admin".into(),
            tenant: "acme".into(),
            role: Role::Admin,
            epoch: 0,
        };
        let t = keys
            .issue(&user, "api", std::time::Duration::from_secs(60))
            .unwrap();
        let c = keys.verify(&t, "api").unwrap();
        assert_eq!((c.sub.as_str(), c.tenant.as_str()), ("u1", "acme"));
        assert!(keys.verify(&t, "session").is_none());
        assert!(
            JwtKeys::new(b"another-secret-another-secret-xx")
                .verify(&t, "api")
                .is_none()
        );
        let p = principal_from(c, AuthMethod::Bearer).unwrap();
        assert_eq!(p.user_id(), "u1");
        assert_eq!(UserIdentity::tenant_id(&p), Some("acme"));
        assert_eq!(Role::User.as_str(), "user");
    }
}
