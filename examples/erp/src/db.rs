//! The data layer: one pool over SQLite or PostgreSQL, embedded migrations, demo seed.
//!
//! The pool is sqlx's `any` driver, so one set of portable SQL runs on both databases.
//! Its limits shape the schema: only `TEXT`, `BIGINT` and nullable variants are used
//! (ids are UUID strings, dates ISO-8601 strings, amounts `BIGINT` minor units), sums
//! are cast back to `BIGINT` (PostgreSQL's `SUM(bigint)` is `NUMERIC`, which `any`
//! cannot decode) and taken in two halves that cannot overflow (see
//! [`crate::ledger::trial_balance`]), and placeholders are `$1, $2, …` (both drivers accept them).
//!
//! Every table that holds tenant data has a `tenant_id` column, every query filters on
//! it, and foreign keys include it (`(tenant_id, account_id)` references
//! `accounts(tenant_id, id)`), so even a buggy query cannot link two tenants' rows.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::{
    Argon2, PasswordHasher,
    password_hash::{SaltString, rand_core::OsRng},
};
use sqlx::{
    AnyPool, Row,
    any::{AnyConnectOptions, AnyPoolOptions},
};

/// The embedded migrations, applied in order, each once.
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "initial schema",
        include_str!("../migrations/0001_initial.sql"),
    ),
    (
        2,
        "ledger ceilings",
        include_str!("../migrations/0002_ledger_ceilings.sql"),
    ),
    (
        3,
        "session epoch",
        include_str!("../migrations/0003_session_epoch.sql"),
    ),
    (
        4,
        "idempotency entry",
        include_str!("../migrations/0004_idempotency_entry.sql"),
    ),
];

/// Which database the pool talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite (one connection: SQLite serialises writers anyway).
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// The database handle shared by every request.
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
    sqlite_path: Option<std::path::PathBuf>,
}

/// The demo tenants: `(id, name)`.
pub const DEMO_TENANTS: &[(&str, &str)] = &[("acme", "Acme Corporation"), ("globex", "Globex")];

/// The demo chart of accounts: `(code, name, type)`.
pub const DEMO_ACCOUNTS: &[(&str, &str, &str)] = &[
    ("1000", "Cash", "asset"),
    ("1100", "Accounts receivable", "asset"),
    ("2000", "Accounts payable", "liability"),
    ("3000", "Owner's equity", "equity"),
    ("4000", "Sales", "income"),
    ("5000", "Rent", "expense"),
    ("5100", "Salaries", "expense"),
];

impl Db {
    /// Connects to `sqlite:…` (the file is created when missing) or `postgres://…`.
    ///
    /// # Errors
    ///
    /// The database cannot be reached or opened.
    pub async fn connect(url: &str) -> Result<Self, sqlx::Error> {
        sqlx::any::install_default_drivers();
        if url.starts_with("sqlite:") {
            let memory = url.contains(":memory:") || url.contains("mode=memory");
            let url = if memory || url.contains("mode=") {
                url.to_owned()
            } else if url.contains('?') {
                format!("{url}&mode=rwc")
            } else {
                format!("{url}?mode=rwc")
            };
            let sqlite_path = if memory {
                None
            } else {
                let p = url
                    .trim_start_matches("sqlite://")
                    .trim_start_matches("sqlite:");
                Some(std::path::PathBuf::from(p.split('?').next().unwrap_or(p)))
            };
            let opts: AnyConnectOptions = url.parse()?;
            // One connection that never expires: SQLite serialises writers anyway, and
            // an in-memory database lives exactly as long as its connection.
            let pool = AnyPoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                // An embedded connection cannot be lost: no ping (a round trip to
                // SQLite's worker thread) before every query.
                .test_before_acquire(false)
                .acquire_timeout(Duration::from_secs(10))
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        sqlx::query("PRAGMA foreign_keys = ON")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA busy_timeout = 5000")
                            .execute(&mut *conn)
                            .await?;
                        Ok(())
                    })
                })
                .connect_with(opts)
                .await?;
            Ok(Self {
                pool,
                backend: Backend::Sqlite,
                sqlite_path,
            })
        } else {
            let opts: AnyConnectOptions = url.parse()?;
            let pool = AnyPoolOptions::new()
                .max_connections(10)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(opts)
                .await?;
            Ok(Self {
                pool,
                backend: Backend::Postgres,
                sqlite_path: None,
            })
        }
    }

    /// The pool.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Where the SQLite file lives (for the free-disk check), `None` otherwise.
    pub fn sqlite_path(&self) -> Option<&std::path::Path> {
        self.sqlite_path.as_deref()
    }

    /// Applies the embedded migrations that have not run yet, each in a transaction.
    /// Returns how many ran.
    ///
    /// # Errors
    ///
    /// A statement failed; that migration is rolled back.
    pub async fn migrate(&self) -> Result<usize, sqlx::Error> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS erp_migrations (
                version BIGINT PRIMARY KEY,
                description TEXT NOT NULL,
                applied_at TEXT NOT NULL
            )",
        )
        .execute(&self.pool)
        .await?;
        let mut ran = 0;
        for (version, description, sql) in MIGRATIONS {
            let mut tx = self.pool.begin().await?;
            let done: Option<i64> =
                sqlx::query_scalar("SELECT version FROM erp_migrations WHERE version = $1")
                    .bind(*version)
                    .fetch_optional(&mut *tx)
                    .await?;
            if done.is_some() {
                continue;
            }
            for stmt in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                sqlx::query(stmt).execute(&mut *tx).await?;
            }
            sqlx::query(
                "INSERT INTO erp_migrations (version, description, applied_at) VALUES ($1, $2, $3)",
            )
            .bind(*version)
            .bind(*description)
            .bind(now_rfc3339())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            tracing::info!(version, description, "migration applied");
            ran += 1;
        }
        Ok(ran)
    }

    /// Seeds the demo tenants, users and chart of accounts when the database has no
    /// tenant yet. Returns the password used when one was generated (to print once).
    ///
    /// # Errors
    ///
    /// A statement failed; nothing is seeded.
    pub async fn seed(
        &self,
        demo_password: Option<&str>,
        cost: crate::config::PasswordCost,
    ) -> Result<Option<String>, sqlx::Error> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tenants")
            .fetch_one(&self.pool)
            .await?;
        if count > 0 {
            return Ok(None);
        }
        let (password, generated) = match demo_password {
            Some(p) => (p.to_owned(), false),
            None => (crate::config::random_hex(12), true),
        };
        let now = now_rfc3339();
        let mut tx = self.pool.begin().await?;
        for (tenant, name) in DEMO_TENANTS {
            sqlx::query("INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, $3)")
                .bind(*tenant)
                .bind(*name)
                .bind(&now)
                .execute(&mut *tx)
                .await?;
            for (username, role) in [("admin", "admin"), ("user", "user")] {
                let hash = hash_password(&password, cost)
                    .map_err(|e| sqlx::Error::Protocol(format!("password hashing failed: {e}")))?;
                sqlx::query(
                    "INSERT INTO users (id, tenant_id, username, password_hash, role, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(new_id())
                .bind(*tenant)
                .bind(username)
                .bind(hash)
                .bind(role)
                .bind(&now)
                .execute(&mut *tx)
                .await?;
            }
            for (code, name, kind) in DEMO_ACCOUNTS {
                sqlx::query(
                    "INSERT INTO accounts (id, tenant_id, code, name, account_type, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(new_id())
                .bind(*tenant)
                .bind(*code)
                .bind(*name)
                .bind(*kind)
                .bind(&now)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        tracing::info!("seeded demo tenants acme and globex");
        Ok(generated.then_some(password))
    }

    /// Whether a tenant exists.
    ///
    /// # Errors
    ///
    /// The query failed.
    pub async fn tenant_exists(&self, tenant: &str) -> Result<bool, sqlx::Error> {
        Ok(self.tenant_name(tenant).await?.is_some())
    }

    /// A tenant's display name, `None` when there is no such tenant.
    ///
    /// # Errors
    ///
    /// The query failed.
    pub async fn tenant_name(&self, tenant: &str) -> Result<Option<String>, sqlx::Error> {
        let row = sqlx::query("SELECT name FROM tenants WHERE id = $1")
            .bind(tenant)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| r.try_get::<String, _>("name")).transpose()
    }

    /// Checks the database answers (`SELECT 1`).
    ///
    /// # Errors
    ///
    /// The database does not answer.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        let one: i64 = sqlx::query("SELECT CAST(1 AS BIGINT) AS one")
            .fetch_one(&self.pool)
            .await?
            .try_get("one")?;
        debug_assert_eq!(one, 1);
        Ok(())
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Hashes a password with Argon2id at the given cost (PHC string).
///
/// # Errors
///
/// Invalid parameters (not with the built-in costs).
pub fn hash_password(
    password: &str,
    cost: crate::config::PasswordCost,
) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    let argon = Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        cost.params(),
    );
    Ok(argon.hash_password(password.as_bytes(), &salt)?.to_string())
}

/// A new random id (UUID v4, hyphenated).
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SS.ffffffZ` (sorts as text).
pub fn now_rfc3339() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format_rfc3339(d.as_secs(), d.subsec_micros())
}

/// A Unix time (seconds) in the format of [`now_rfc3339`].
pub fn format_unix(secs: u64) -> String {
    format_rfc3339(secs, 0)
}

fn format_rfc3339(secs: u64, micros: u32) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to (year, month, day).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let m = u32::try_from(m).unwrap_or(1);
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Whether `s` is a valid calendar date `YYYY-MM-DD` (years 1000–9999).
pub fn is_valid_date(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = &s[r];
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    let (Some(y), Some(m), Some(d)) = (num(0..4), num(5..7), num(8..10)) else {
        return false;
    };
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let max = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    y >= 1000 && (1..=max).contains(&d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formatting() {
        assert_eq!(format_rfc3339(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            format_rfc3339(951_782_400 + 3661, 7),
            "2000-02-29T01:01:01.000007Z"
        );
        assert_eq!(
            format_rfc3339(1_798_761_599, 0),
            "2026-12-31T23:59:59.000000Z"
        );
        assert!(now_rfc3339().ends_with('Z'));
    }

    #[test]
    fn date_validation() {
        for ok in ["2026-01-31", "2024-02-29", "2000-02-29", "1999-12-01"] {
            assert!(is_valid_date(ok), "{ok}");
        }
        for bad in [
            "2026-02-29",
            "1900-02-29",
            "2026-13-01",
            "2026-00-10",
            "2026-04-31",
            "2026-1-01",
            "20260101",
            "abcd-ef-gh",
            "2026-01-0a",
            "0999-01-01",
            "",
            "2026-01-01T00:00",
        ] {
            assert!(!is_valid_date(bad), "{bad}");
        }
    }
}
