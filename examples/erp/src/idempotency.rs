//! `Idempotency-Key` for POST requests, stored in the database.
//!
//! The first request with a key (per tenant and user) records it as in flight; when it
//! finishes, its status and body are stored. A retry with the same key and the same
//! request (method, path and JSON body, compared after canonicalising key order)
//! replays the stored response with `Idempotent-Replayed: true`; the same key with a
//! different request is a 422; a retry while the first is still running is a 409.
//! Server errors are not stored (the key is released so the client can retry), and a
//! key left in flight by a crashed process is taken over after
//! [`STALE_AFTER_SECS`].
//!
//! Crash safety: the work receives the [`Claim`] and writes the key's completion (state
//! `done`, status, the entry's id) in the entry's own transaction with
//! [`Claim::complete`], fenced by the claim's time: a worker whose key was taken over
//! after it stalled finds its claim gone and rolls its entry back (409). Whatever step
//! a crash interrupts, a retry therefore posts at most once: before the commit nothing
//! was posted and the key is taken over; after it the key is done and the response is
//! replayed (rebuilt from the entry when the body had not been stored yet).
//!
//! Keys expire after [`crate::Config::idempotency_ttl`] (24 hours by default): an
//! expired key is treated as new, and [`purge_expired`] deletes them (the server runs it
//! every hour).

use axum::{
    Json,
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::{AppState, auth::Principal, error::ApiError};

/// The request header.
pub const HEADER: &str = "idempotency-key";

/// An in-flight key older than this is considered abandoned.
pub const STALE_AFTER_SECS: u64 = 60;

/// Reads and validates the `Idempotency-Key` header (1–255 visible ASCII characters).
///
/// # Errors
///
/// A malformed key (400).
pub fn key_from(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get(HEADER) else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(s) if !s.is_empty() && s.len() <= 255 && s.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(s.to_owned()))
        }
        _ => Err(ApiError::bad_request(
            "Idempotency-Key must be 1-255 visible ASCII characters, e.g. a UUID.",
        )),
    }
}

/// Serialises JSON with object keys sorted, so `{"a":1,"b":2}` and `{"b":2,"a":1}`
/// fingerprint the same.
pub fn canonical_json(v: &Value) -> String {
    fn write(v: &Value, out: &mut String) {
        match v {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push(':');
                    write(&map[k], out);
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(item, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    write(v, &mut out);
    out
}

/// The fingerprint of a request: SHA-256 of method, path and canonical body.
pub fn fingerprint(method: &str, path: &str, body: &Value) -> String {
    let mut h = Sha256::new();
    h.update(method.as_bytes());
    h.update(b"\n");
    h.update(path.as_bytes());
    h.update(b"\n");
    h.update(canonical_json(body).as_bytes());
    crate::config::hex(&h.finalize())
}

/// A key claimed by this request: what [`Claim::complete`] needs to mark it done in
/// the entry's transaction.
#[derive(Debug, Clone)]
pub struct Claim {
    tenant: String,
    user_id: String,
    key: String,
    claimed_at: String,
}

impl Claim {
    /// A claim of `key` for a tenant's user, recorded at `claimed_at` (the row's
    /// `created_at`, the fencing token).
    pub fn new(tenant: &str, user_id: &str, key: &str, claimed_at: &str) -> Self {
        Self {
            tenant: tenant.to_owned(),
            user_id: user_id.to_owned(),
            key: key.to_owned(),
            claimed_at: claimed_at.to_owned(),
        }
    }

    /// Marks the key done with `status` and the posted entry, inside the entry's
    /// transaction.
    ///
    /// # Errors
    ///
    /// The claim was taken over (409: the caller must roll back), database failure.
    pub async fn complete(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        status: StatusCode,
        entry_id: &str,
    ) -> Result<(), ApiError> {
        let done = sqlx::query(
            "UPDATE idempotency_keys SET state = 'done', status = $1, entry_id = $2
             WHERE tenant_id = $3 AND user_id = $4 AND idem_key = $5
               AND state = 'in_flight' AND created_at = $6",
        )
        .bind(i64::from(status.as_u16()))
        .bind(entry_id)
        .bind(&self.tenant)
        .bind(&self.user_id)
        .bind(&self.key)
        .bind(&self.claimed_at)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if done == 0 {
            return Err(ApiError::conflict(
                "This request's Idempotency-Key was taken over by a retry; nothing was posted by this attempt.",
            ));
        }
        Ok(())
    }
}

/// Deletes the keys older than `ttl`; returns how many.
///
/// # Errors
///
/// Database failure.
pub async fn purge_expired(db: &crate::Db, ttl: std::time::Duration) -> Result<u64, sqlx::Error> {
    let cutoff = crate::db::format_unix(crate::db::unix_now().saturating_sub(ttl.as_secs()));
    Ok(
        sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
            .bind(cutoff)
            .execute(db.pool())
            .await?
            .rows_affected(),
    )
}

/// Runs `work` at most once per key: see the module docs.
///
/// # Errors
///
/// 409 while in flight, 422 for a different request, 500 on database failure; the
/// errors of `work` itself are returned (and stored, unless they are 5xx).
pub async fn run<F, Fut>(
    state: &AppState,
    principal: &Principal,
    key: Option<String>,
    fingerprint: String,
    work: F,
) -> Result<Response, ApiError>
where
    F: FnOnce(Option<Claim>) -> Fut,
    Fut: std::future::Future<Output = Result<(StatusCode, Value), ApiError>>,
{
    let Some(key) = key else {
        return Ok(match work(None).await {
            Ok((status, body)) => (status, Json(body)).into_response(),
            Err(e) => e.into_response(),
        });
    };
    let pool = state.db().pool();
    let now = crate::db::now_rfc3339();
    // An expired key is forgotten: this request is new.
    let ttl = state.config().idempotency_ttl.as_secs();
    sqlx::query(
        "DELETE FROM idempotency_keys WHERE tenant_id = $1 AND user_id = $2 AND idem_key = $3 AND created_at < $4",
    )
    .bind(&principal.tenant)
    .bind(&principal.user_id)
    .bind(&key)
    .bind(crate::db::format_unix(crate::db::unix_now().saturating_sub(ttl)))
    .execute(pool)
    .await?;
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (tenant_id, user_id, idem_key, fingerprint, state, created_at)
         VALUES ($1, $2, $3, $4, 'in_flight', $5) ON CONFLICT DO NOTHING",
    )
    .bind(&principal.tenant)
    .bind(&principal.user_id)
    .bind(&key)
    .bind(&fingerprint)
    .bind(&now)
    .execute(pool)
    .await?
    .rows_affected();

    if inserted == 0 {
        let row = sqlx::query(
            "SELECT fingerprint, state, status, body, entry_id, created_at FROM idempotency_keys
             WHERE tenant_id = $1 AND user_id = $2 AND idem_key = $3",
        )
        .bind(&principal.tenant)
        .bind(&principal.user_id)
        .bind(&key)
        .fetch_optional(pool)
        .await?;
        let Some(row) = row else {
            // Released between our insert and select: the client may simply retry.
            return Err(ApiError::conflict(
                "A request with this Idempotency-Key just finished with a server error; retry.",
            ));
        };
        let stored_fp: String = row.try_get("fingerprint")?;
        let stored_state: String = row.try_get("state")?;
        if stored_fp != fingerprint {
            return Err(ApiError::validation(
                "This Idempotency-Key was already used for a different request; use a new key for a new request.",
            ));
        }
        if stored_state == "in_flight" {
            let created: String = row.try_get("created_at")?;
            if !is_stale(&created) {
                return Err(ApiError::conflict(
                    "A request with this Idempotency-Key is still being processed; retry later.",
                ));
            }
            // Abandoned by a crashed process: take it over.
            let taken = sqlx::query(
                "UPDATE idempotency_keys SET created_at = $1
                 WHERE tenant_id = $2 AND user_id = $3 AND idem_key = $4 AND state = 'in_flight' AND created_at = $5",
            )
            .bind(&now)
            .bind(&principal.tenant)
            .bind(&principal.user_id)
            .bind(&key)
            .bind(&created)
            .execute(pool)
            .await?
            .rows_affected();
            if taken == 0 {
                return Err(ApiError::conflict(
                    "A request with this Idempotency-Key is still being processed; retry later.",
                ));
            }
        } else {
            let status: i64 = row.try_get("status")?;
            let body: Option<String> = row.try_get("body")?;
            let body = match body {
                Some(b) => b,
                // Done in the entry's transaction, the process stopped before the
                // response was stored: rebuild it from the entry.
                None => {
                    let entry_id: Option<String> = row.try_get("entry_id")?;
                    let entry_id = entry_id.unwrap_or_default();
                    let entry =
                        crate::ledger::get_entry(state.db(), &principal.tenant, &entry_id).await?;
                    serde_json::to_string(&entry).map_err(|e| ApiError::internal(&e))?
                }
            };
            let status = u16::try_from(status)
                .ok()
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(StatusCode::OK);
            let mut res = (
                status,
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response();
            res.headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            return Ok(res);
        }
    }

    // The row's `created_at` (set by the insert or the takeover) fences this claim.
    let claimed_at = now;
    let result = work(Some(Claim::new(
        &principal.tenant,
        &principal.user_id,
        &key,
        &claimed_at,
    )))
    .await;
    let (status, body) = match &result {
        Ok((s, b)) => (*s, b.to_string()),
        Err(e) => (
            e.status(),
            String::from_utf8_lossy(&e.body().to_bytes()).into_owned(),
        ),
    };
    // Both statements are fenced by the claim: a key completed in the entry's
    // transaction is never released, and a taken-over key is not touched.
    if status.is_server_error() {
        sqlx::query(
            "DELETE FROM idempotency_keys WHERE tenant_id = $1 AND user_id = $2 AND idem_key = $3
               AND state = 'in_flight' AND created_at = $4",
        )
        .bind(&principal.tenant)
        .bind(&principal.user_id)
        .bind(&key)
        .bind(&claimed_at)
        .execute(pool)
        .await?;
    } else {
        sqlx::query(
            "UPDATE idempotency_keys SET state = 'done', status = $1, body = $2
             WHERE tenant_id = $3 AND user_id = $4 AND idem_key = $5
               AND (state = 'done' AND body IS NULL AND status = $1
                    OR state = 'in_flight' AND created_at = $6)",
        )
        .bind(i64::from(status.as_u16()))
        .bind(body)
        .bind(&principal.tenant)
        .bind(&principal.user_id)
        .bind(&key)
        .bind(&claimed_at)
        .execute(pool)
        .await?;
    }
    Ok(match result {
        Ok((status, body)) => (status, Json(body)).into_response(),
        Err(e) => e.into_response(),
    })
}

fn is_stale(created_at: &str) -> bool {
    // Timestamps are fixed-width RFC 3339 strings, so they compare as text.
    let secs = crate::db::unix_now().saturating_sub(STALE_AFTER_SECS);
    let cutoff = crate::db::format_unix(secs);
    created_at < cutoff.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_sorts_keys_recursively() {
        let a = json!({"b": [1, {"y": 2, "x": 1}], "a": "é\""});
        let b: Value = serde_json::from_str(r#"{"a":"é\"","b":[1,{"x":1,"y":2}]}"#).unwrap();
        assert_eq!(canonical_json(&a), canonical_json(&b));
        assert_eq!(canonical_json(&a), r#"{"a":"é\"","b":[1,{"x":1,"y":2}]}"#);
        assert_eq!(fingerprint("POST", "/x", &a), fingerprint("POST", "/x", &b));
        assert_ne!(fingerprint("POST", "/x", &a), fingerprint("POST", "/y", &a));
    }

    #[test]
    fn key_validation() {
        let mut h = HeaderMap::new();
        assert_eq!(key_from(&h).unwrap(), None);
        h.insert(HEADER, HeaderValue::from_static("abc-123"));
        assert_eq!(key_from(&h).unwrap().as_deref(), Some("abc-123"));
        h.insert(HEADER, HeaderValue::from_static("has space"));
        assert_eq!(key_from(&h).unwrap_err().status(), 400);
        h.insert(HEADER, HeaderValue::from_str(&"k".repeat(256)).unwrap());
        assert!(key_from(&h).is_err());
    }

    #[test]
    fn staleness() {
        assert!(is_stale("2000-01-01T00:00:00.000000Z"));
        assert!(!is_stale(&crate::db::now_rfc3339()));
    }
}
