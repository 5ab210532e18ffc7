//! The general ledger: chart of accounts, journal entries, trial balance.
//!
//! Double-entry rules, checked before anything is written: at least two lines; each
//! line has exactly one of `debit` or `credit`, and it is > 0; amounts are integer
//! minor units (cents), at most [`MAX_AMOUNT`]; debits equal credits; every account
//! belongs to the tenant; and the entry keeps each account's debits and credits within
//! [`MAX_ACCOUNT_TOTAL`] and the tenant's total within [`MAX_TENANT_TOTAL`] (running
//! totals raised in the entry's transaction), so no sum the ledger computes can
//! overflow: the trial balance never answers 5xx. An entry and its lines are written in one transaction and
//! never updated or deleted: a mistake is corrected by a reversal, a new entry with
//! debits and credits swapped that points at the original (at most one per entry).
//!
//! Every function takes the tenant and filters on it.

use serde::{Deserialize, Serialize};
use sqlx::{Row, any::AnyRow};
use utoipa::{IntoParams, ToSchema};

use crate::{
    db::{Db, is_valid_date, new_id, now_rfc3339},
    error::ApiError,
    idempotency::Claim,
};
use axum::http;

/// The largest amount of one line, in minor units (10^15: sums of many lines stay far
/// from `i64::MAX`).
pub const MAX_AMOUNT: i64 = 1_000_000_000_000_000;

/// The ceiling of one account, per side: its debits, and its credits, each sum to at
/// most 10^18 minor units. A post that would pass it is refused (422 naming the line).
pub const MAX_ACCOUNT_TOTAL: i64 = 1_000_000_000_000_000_000;

/// The ceiling of one tenant: all its debits (= all its credits) sum to at most
/// 5 × 10^18 minor units, so no sum of a tenant's amounts can pass `i64::MAX`
/// (≈ 9.2 × 10^18). A post that would pass it is refused (422, field `lines`).
pub const MAX_TENANT_TOTAL: i64 = 5_000_000_000_000_000_000;

/// The most lines one entry may have.
pub const MAX_LINES: usize = 500;

/// The five account types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AccountType {
    /// What the company owns.
    Asset,
    /// What it owes.
    Liability,
    /// The owners' stake.
    Equity,
    /// Revenue.
    Income,
    /// Costs.
    Expense,
}

impl AccountType {
    /// The lower-case name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Asset => "asset",
            Self::Liability => "liability",
            Self::Equity => "equity",
            Self::Income => "income",
            Self::Expense => "expense",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "liability" => Self::Liability,
            "equity" => Self::Equity,
            "income" => Self::Income,
            "expense" => Self::Expense,
            _ => Self::Asset,
        }
    }
}

/// An account of the chart of accounts.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Account {
    /// Id (UUID).
    pub id: String,
    /// Code, unique within the tenant (e.g. `1000`).
    pub code: String,
    /// Name.
    pub name: String,
    /// Type.
    #[serde(rename = "type")]
    pub account_type: AccountType,
    /// Creation time (RFC 3339, UTC).
    pub created_at: String,
}

/// Body of `POST /api/v1/accounts`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAccount {
    /// 1–20 characters of letters, digits, `.` and `-`; unique within the tenant.
    pub code: String,
    /// 1–200 characters.
    pub name: String,
    /// `asset`, `liability`, `equity`, `income` or `expense`.
    #[serde(rename = "type")]
    pub account_type: AccountType,
}

/// One line of a new journal entry: exactly one of `debit` or `credit`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewLine {
    /// The account (UUID) in the same tenant.
    pub account_id: String,
    /// Debit in minor units (> 0).
    pub debit: Option<i64>,
    /// Credit in minor units (> 0).
    pub credit: Option<i64>,
    /// Optional note (≤ 500 characters).
    pub memo: Option<String>,
}

/// Body of `POST /api/v1/journal-entries`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEntry {
    /// Accounting date, `YYYY-MM-DD`.
    pub date: String,
    /// 1–500 characters.
    pub description: String,
    /// At least two lines; debits must equal credits.
    pub lines: Vec<NewLine>,
}

/// Body of `POST /api/v1/journal-entries/{id}/reverse` (optional).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReverseRequest {
    /// Date of the reversal, `YYYY-MM-DD`; by default the original's date.
    pub date: Option<String>,
    /// Description; by default `Reversal of {original description}`.
    pub description: Option<String>,
}

/// A posted line.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Line {
    /// Position in the entry, from 1.
    pub line_no: i64,
    /// The account.
    pub account_id: String,
    /// The account's code.
    pub account_code: String,
    /// Debit in minor units (0 when a credit line).
    pub debit: i64,
    /// Credit in minor units (0 when a debit line).
    pub credit: i64,
    /// Note.
    pub memo: Option<String>,
}

/// A posted journal entry.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Entry {
    /// Id (UUID).
    pub id: String,
    /// Accounting date.
    pub date: String,
    /// Description.
    pub description: String,
    /// The entry this one reverses.
    pub reverses_id: Option<String>,
    /// The entry that reverses this one.
    pub reversed_by: Option<String>,
    /// The user who posted it.
    pub created_by: String,
    /// Posting time (RFC 3339, UTC).
    pub created_at: String,
    /// Sum of the debits (= sum of the credits), minor units.
    pub total: i64,
    /// Lines in order.
    pub lines: Vec<Line>,
}

/// One account of the trial balance.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TrialBalanceRow {
    /// Account id.
    pub account_id: String,
    /// Code.
    pub code: String,
    /// Name.
    pub name: String,
    /// Type.
    #[serde(rename = "type")]
    pub account_type: AccountType,
    /// Sum of debits.
    pub debit: i64,
    /// Sum of credits.
    pub credit: i64,
    /// `debit - credit`.
    pub balance: i64,
}

/// The trial balance of a tenant.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TrialBalance {
    /// Every account, by code.
    pub accounts: Vec<TrialBalanceRow>,
    /// Sum of all debits.
    pub total_debit: i64,
    /// Sum of all credits.
    pub total_credit: i64,
    /// Whether the totals agree (always, by construction).
    pub balanced: bool,
}

/// `?limit=&offset=` of list endpoints.
#[derive(Debug, Clone, Copy, Default, Deserialize, IntoParams)]
pub struct Page {
    /// 1–200, by default 50.
    pub limit: Option<i64>,
    /// ≥ 0, by default 0.
    pub offset: Option<i64>,
}

impl Page {
    /// `(limit, offset)`, validated.
    ///
    /// # Errors
    ///
    /// Out of range (400).
    pub fn resolve(self) -> Result<(i64, i64), ApiError> {
        let limit = self.limit.unwrap_or(50);
        let offset = self.offset.unwrap_or(0);
        if !(1..=200).contains(&limit) {
            return Err(ApiError::bad_request("limit must be between 1 and 200."));
        }
        if offset < 0 {
            return Err(ApiError::bad_request("offset must be 0 or more."));
        }
        Ok((limit, offset))
    }
}

/// Parses an id as a UUID and returns its canonical form.
///
/// # Errors
///
/// Not a UUID (400).
pub fn parse_id(id: &str) -> Result<String, ApiError> {
    uuid::Uuid::parse_str(id)
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| ApiError::bad_request(format!("`{id}` is not a valid id (a UUID).")))
}

/// Whether text holds a character a reader cannot see: controls (category Cc, NUL above
/// all, which PostgreSQL rejects), format characters (category Cf: the bidi overrides
/// and isolates U+202A–U+202E and U+2066–U+2069 that make `Cash\u{202E}evil` read
/// backwards, zero-width U+200B–U+200F, U+FEFF, the soft hyphen…), line and paragraph
/// separators, and the Hangul fillers that render as blank letters. Names,
/// descriptions and memos refuse them (422 naming the field).
pub fn has_invisible(s: &str) -> bool {
    s.chars().any(|c| c.is_control() || is_invisible(c))
}

/// The format characters of Unicode 16 (category Cf) and the other invisible letters.
fn is_invisible(c: char) -> bool {
    matches!(
        u32::from(c),
        0x00AD
            | 0x0600..=0x0605
            | 0x061C
            | 0x06DD
            | 0x070F
            | 0x0890..=0x0891
            | 0x08E2
            | 0x115F..=0x1160
            | 0x180E
            | 0x200B..=0x200F
            | 0x2028..=0x202E
            | 0x2060..=0x2064
            | 0x2066..=0x206F
            | 0x3164
            | 0xFEFF
            | 0xFFA0
            | 0xFFF9..=0xFFFB
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0001
            | 0xE0020..=0xE007F
    )
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => {
            d.is_unique_violation() || d.message().contains("UNIQUE constraint failed")
        }
        _ => false,
    }
}

fn account_from(r: &AnyRow) -> Result<Account, sqlx::Error> {
    Ok(Account {
        id: r.try_get("id")?,
        code: r.try_get("code")?,
        name: r.try_get("name")?,
        account_type: AccountType::parse(&r.try_get::<String, _>("account_type")?),
        created_at: r.try_get("created_at")?,
    })
}

/// The tenant's accounts by code.
///
/// # Errors
///
/// Database failure.
pub async fn list_accounts(
    db: &Db,
    tenant: &str,
    limit: i64,
    offset: i64,
) -> Result<Vec<Account>, ApiError> {
    let rows = sqlx::query(
        "SELECT id, code, name, account_type, created_at FROM accounts
         WHERE tenant_id = $1 ORDER BY code LIMIT $2 OFFSET $3",
    )
    .bind(tenant)
    .bind(limit)
    .bind(offset)
    .fetch_all(db.pool())
    .await?;
    Ok(rows.iter().map(account_from).collect::<Result<_, _>>()?)
}

/// One account of the tenant.
///
/// # Errors
///
/// Unknown in this tenant (404), database failure.
pub async fn get_account(db: &Db, tenant: &str, id: &str) -> Result<Account, ApiError> {
    let row = sqlx::query(
        "SELECT id, code, name, account_type, created_at FROM accounts
         WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant)
    .bind(id)
    .fetch_optional(db.pool())
    .await?;
    match row {
        Some(r) => Ok(account_from(&r)?),
        None => Err(ApiError::not_found(format!("No account `{id}`."))),
    }
}

/// Adds an account.
///
/// # Errors
///
/// Invalid code or name (422), duplicate code (409), database failure.
pub async fn create_account(db: &Db, tenant: &str, new: &NewAccount) -> Result<Account, ApiError> {
    let code = new.code.trim();
    let name = new.name.trim();
    if code.is_empty()
        || code.chars().count() > 20
        || !code
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    {
        return Err(ApiError::validation(
            "code must be 1-20 characters of letters, digits, '.' and '-'.",
        )
        .with_field("field", "code"));
    }
    if name.is_empty() || name.chars().count() > 200 || has_invisible(name) {
        return Err(ApiError::validation(
            "name must be 1-200 characters, without control or invisible format characters (such as bidi overrides or zero-width spaces).",
        )
        .with_field("field", "name"));
    }
    let id = new_id();
    let res = sqlx::query(
        "INSERT INTO accounts (id, tenant_id, code, name, account_type, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&id)
    .bind(tenant)
    .bind(code)
    .bind(name)
    .bind(new.account_type.as_str())
    .bind(now_rfc3339())
    .execute(db.pool())
    .await;
    match res {
        Ok(_) => get_account(db, tenant, &id).await,
        Err(e) if is_unique_violation(&e) => Err(ApiError::conflict(format!(
            "An account with code `{code}` already exists."
        ))),
        Err(e) => Err(e.into()),
    }
}

/// Checks the double-entry rules; returns the total.
///
/// # Errors
///
/// The first broken rule (422), naming the field.
pub fn validate_entry(e: &NewEntry) -> Result<i64, ApiError> {
    let invalid =
        |field: String, detail: String| ApiError::validation(detail).with_field("field", field);
    if !is_valid_date(&e.date) {
        return Err(invalid(
            "date".into(),
            "date must be a calendar date YYYY-MM-DD.".into(),
        ));
    }
    let desc = e.description.trim();
    if desc.is_empty() || desc.chars().count() > 500 || has_invisible(desc) {
        return Err(invalid(
            "description".into(),
            "description must be 1-500 characters, without control or invisible format characters (such as bidi overrides or zero-width spaces).".into(),
        ));
    }
    if e.lines.len() < 2 {
        return Err(invalid(
            "lines".into(),
            "A journal entry needs at least two lines.".into(),
        ));
    }
    if e.lines.len() > MAX_LINES {
        return Err(invalid(
            "lines".into(),
            format!("A journal entry has at most {MAX_LINES} lines."),
        ));
    }
    let (mut debits, mut credits) = (0i64, 0i64);
    for (i, l) in e.lines.iter().enumerate() {
        let f = |name: &str| format!("lines[{i}].{name}");
        parse_id(&l.account_id).map_err(|_| {
            invalid(
                f("account_id"),
                format!("lines[{i}].account_id is not a valid id."),
            )
        })?;
        let amount = match (l.debit, l.credit) {
            (Some(d), None) => d,
            (None, Some(c)) => c,
            _ => {
                return Err(invalid(
                    format!("lines[{i}]"),
                    format!("lines[{i}] must have exactly one of debit or credit."),
                ));
            }
        };
        if amount <= 0 || amount > MAX_AMOUNT {
            return Err(invalid(
                format!("lines[{i}]"),
                format!(
                    "lines[{i}]: amounts are integer minor units greater than 0 and at most {MAX_AMOUNT}."
                ),
            ));
        }
        if l.memo
            .as_ref()
            .is_some_and(|m| m.chars().count() > 500 || has_invisible(m))
        {
            return Err(invalid(
                f("memo"),
                "memo is at most 500 characters, without control or invisible format characters (such as bidi overrides or zero-width spaces).".into(),
            ));
        }
        // Bounded by MAX_AMOUNT * MAX_LINES, far below i64::MAX.
        if l.debit.is_some() {
            debits += amount;
        } else {
            credits += amount;
        }
    }
    if debits != credits {
        return Err(ApiError::validation(format!(
            "The entry is unbalanced: debits {debits} != credits {credits}."
        ))
        .with_field("field", "lines")
        .with_field("debits", debits)
        .with_field("credits", credits));
    }
    Ok(debits)
}

/// Posts an entry atomically; with an `Idempotency-Key` claim, the key is marked done
/// in the same transaction.
///
/// # Errors
///
/// A broken rule, an account of another tenant or a ceiling passed (422), the claim
/// taken over (409, nothing posted), database failure.
pub async fn create_entry(
    db: &Db,
    tenant: &str,
    user_id: &str,
    new: &NewEntry,
    claim: Option<&Claim>,
) -> Result<Entry, ApiError> {
    validate_entry(new)?;
    let mut tx = db.pool().begin().await?;
    raise_totals(&mut tx, tenant, &new.lines).await?;
    let id = new_id();
    insert_entry(
        &mut tx,
        tenant,
        &id,
        &new.date,
        new.description.trim(),
        None,
        user_id,
    )
    .await?;
    for (i, l) in new.lines.iter().enumerate() {
        insert_line(
            &mut tx,
            tenant,
            &id,
            i64::try_from(i + 1).unwrap_or(i64::MAX),
            &parse_id(&l.account_id)?,
            l.debit.unwrap_or(0),
            l.credit.unwrap_or(0),
            l.memo.as_deref(),
        )
        .await?;
    }
    if let Some(claim) = claim {
        claim
            .complete(&mut tx, http::StatusCode::CREATED, &id)
            .await?;
    }
    tx.commit().await?;
    metrics::counter!("erp_journal_entries_posted_total").increment(1);
    get_entry(db, tenant, &id).await
}

/// Raises the running totals of the tenant and of every account the lines touch, in
/// the entry's transaction, each with a conditional `UPDATE` that refuses to pass
/// [`MAX_TENANT_TOTAL`] or [`MAX_ACCOUNT_TOTAL`]. The tenant's row is updated first: it
/// serialises a tenant's posts on PostgreSQL (SQLite has one writer anyway), so two
/// concurrent posts cannot both pass a ceiling, and accounts are updated in id order
/// (no deadlock). Deltas are summed in 128 bits; the SQL sides stay far from
/// `i64::MAX` (a total at most 5 × 10^18 plus one entry's at most 2.5 × 10^17).
///
/// # Errors
///
/// An account of no such id in the tenant (422, `lines[i].account_id`), a ceiling
/// passed (422, `lines[i].debit`/`lines[i].credit` or `lines`), database failure.
async fn raise_totals(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    tenant: &str,
    lines: &[NewLine],
) -> Result<(), ApiError> {
    // account id -> (first line index, debits, credits, first debit line, first credit line)
    let mut per_account: std::collections::BTreeMap<String, (usize, i128, i128, usize, usize)> =
        std::collections::BTreeMap::new();
    let mut entry_total: i128 = 0;
    for (i, l) in lines.iter().enumerate() {
        let id = parse_id(&l.account_id)?;
        let slot = per_account
            .entry(id)
            .or_insert((i, 0, 0, usize::MAX, usize::MAX));
        if let Some(d) = l.debit {
            slot.1 += i128::from(d);
            slot.3 = slot.3.min(i);
            entry_total += i128::from(d);
        }
        if let Some(c) = l.credit {
            slot.2 += i128::from(c);
            slot.4 = slot.4.min(i);
        }
    }
    let too_big = || {
        ApiError::validation(format!(
            "The entry would take the tenant's posted total above its ceiling of {MAX_TENANT_TOTAL} minor units."
        ))
        .with_field("field", "lines")
    };
    let total = i64::try_from(entry_total).map_err(|_| too_big())?;
    let raised = sqlx::query(
        "UPDATE tenants SET posted_total = posted_total + $1 WHERE id = $2 AND posted_total <= $3 - $1",
    )
    .bind(total)
    .bind(tenant)
    .bind(MAX_TENANT_TOTAL)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if raised == 0 {
        return Err(too_big());
    }
    for (id, (first, debit, credit, first_debit, first_credit)) in &per_account {
        let (Ok(debit), Ok(credit)) = (i64::try_from(*debit), i64::try_from(*credit)) else {
            return Err(
                ApiError::validation("An account's lines exceed its ceiling.")
                    .with_field("field", "lines"),
            );
        };
        let raised = sqlx::query(
            "UPDATE accounts SET total_debit = total_debit + $1, total_credit = total_credit + $2
             WHERE tenant_id = $3 AND id = $4 AND total_debit <= $5 - $1 AND total_credit <= $5 - $2",
        )
        .bind(debit)
        .bind(credit)
        .bind(tenant)
        .bind(id)
        .bind(MAX_ACCOUNT_TOTAL)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if raised == 1 {
            continue;
        }
        let row = sqlx::query(
            "SELECT total_debit, total_credit FROM accounts WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant)
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
        let Some(row) = row else {
            return Err(ApiError::validation(format!(
                "lines[{first}].account_id: no such account."
            ))
            .with_field("field", format!("lines[{first}].account_id")));
        };
        let total_debit: i64 = row.try_get("total_debit")?;
        let field = if i128::from(total_debit) + i128::from(debit) > i128::from(MAX_ACCOUNT_TOTAL) {
            format!("lines[{first_debit}].debit")
        } else {
            format!("lines[{first_credit}].credit")
        };
        return Err(ApiError::validation(format!(
            "{field}: the entry would take this account's debits or credits above its ceiling of {MAX_ACCOUNT_TOTAL} minor units."
        ))
        .with_field("field", field));
    }
    Ok(())
}

async fn insert_entry(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    tenant: &str,
    id: &str,
    date: &str,
    description: &str,
    reverses: Option<&str>,
    user_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO journal_entries (id, tenant_id, entry_date, description, reverses_id, created_by, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(id)
    .bind(tenant)
    .bind(date)
    .bind(description)
    .bind(reverses)
    .bind(user_id)
    .bind(now_rfc3339())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn insert_line(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    tenant: &str,
    entry: &str,
    line_no: i64,
    account: &str,
    debit: i64,
    credit: i64,
    memo: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO journal_lines (tenant_id, entry_id, line_no, account_id, debit, credit, memo)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(tenant)
    .bind(entry)
    .bind(line_no)
    .bind(account)
    .bind(debit)
    .bind(credit)
    .bind(memo)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

const ENTRY_COLUMNS: &str = "e.id, e.entry_date, e.description, e.reverses_id, e.created_by, e.created_at,
     (SELECT r.id FROM journal_entries r WHERE r.tenant_id = e.tenant_id AND r.reverses_id = e.id) AS reversed_by";

const LINE_COLUMNS: &str = "l.entry_id, l.line_no, l.account_id, a.code, l.debit, l.credit, l.memo";

fn entry_from(r: &AnyRow) -> Result<Entry, sqlx::Error> {
    Ok(Entry {
        id: r.try_get("id")?,
        date: r.try_get("entry_date")?,
        description: r.try_get("description")?,
        reverses_id: r.try_get("reverses_id")?,
        reversed_by: r.try_get("reversed_by")?,
        created_by: r.try_get("created_by")?,
        created_at: r.try_get("created_at")?,
        total: 0,
        lines: Vec::new(),
    })
}

fn attach_lines(entries: &mut [Entry], rows: &[AnyRow]) -> Result<(), sqlx::Error> {
    for r in rows {
        let entry_id: String = r.try_get("entry_id")?;
        if let Some(e) = entries.iter_mut().find(|e| e.id == entry_id) {
            let line = Line {
                line_no: r.try_get("line_no")?,
                account_id: r.try_get("account_id")?,
                account_code: r.try_get("code")?,
                debit: r.try_get("debit")?,
                credit: r.try_get("credit")?,
                memo: r.try_get("memo")?,
            };
            e.total += line.debit;
            e.lines.push(line);
        }
    }
    Ok(())
}

/// One entry of the tenant, with its lines.
///
/// # Errors
///
/// Unknown in this tenant (404), database failure.
pub async fn get_entry(db: &Db, tenant: &str, id: &str) -> Result<Entry, ApiError> {
    let row = sqlx::query(&format!(
        "SELECT {ENTRY_COLUMNS} FROM journal_entries e WHERE e.tenant_id = $1 AND e.id = $2"
    ))
    .bind(tenant)
    .bind(id)
    .fetch_optional(db.pool())
    .await?;
    let Some(row) = row else {
        return Err(ApiError::not_found(format!("No journal entry `{id}`.")));
    };
    let mut entries = vec![entry_from(&row)?];
    let lines = sqlx::query(&format!(
        "SELECT {LINE_COLUMNS} FROM journal_lines l
         JOIN accounts a ON a.tenant_id = l.tenant_id AND a.id = l.account_id
         WHERE l.tenant_id = $1 AND l.entry_id = $2 ORDER BY l.line_no"
    ))
    .bind(tenant)
    .bind(id)
    .fetch_all(db.pool())
    .await?;
    attach_lines(&mut entries, &lines)?;
    Ok(entries.remove(0))
}

/// The tenant's entries, newest first, with their lines (two queries, not N + 1).
///
/// # Errors
///
/// Database failure.
pub async fn list_entries(
    db: &Db,
    tenant: &str,
    limit: i64,
    offset: i64,
) -> Result<Vec<Entry>, ApiError> {
    let rows = sqlx::query(&format!(
        "SELECT {ENTRY_COLUMNS} FROM journal_entries e WHERE e.tenant_id = $1
         ORDER BY e.created_at DESC, e.id DESC LIMIT $2 OFFSET $3"
    ))
    .bind(tenant)
    .bind(limit)
    .bind(offset)
    .fetch_all(db.pool())
    .await?;
    let mut entries = rows.iter().map(entry_from).collect::<Result<Vec<_>, _>>()?;
    if entries.is_empty() {
        return Ok(entries);
    }
    let lines = sqlx::query(&format!(
        "SELECT {LINE_COLUMNS} FROM journal_lines l
         JOIN accounts a ON a.tenant_id = l.tenant_id AND a.id = l.account_id
         WHERE l.tenant_id = $1 AND l.entry_id IN (
             SELECT e.id FROM journal_entries e WHERE e.tenant_id = $1
             ORDER BY e.created_at DESC, e.id DESC LIMIT $2 OFFSET $3)
         ORDER BY l.entry_id, l.line_no"
    ))
    .bind(tenant)
    .bind(limit)
    .bind(offset)
    .fetch_all(db.pool())
    .await?;
    attach_lines(&mut entries, &lines)?;
    Ok(entries)
}

/// Posts the reversal of an entry.
///
/// # Errors
///
/// Unknown entry (404), already reversed (409), invalid date or description (422),
/// database failure.
pub async fn reverse_entry(
    db: &Db,
    tenant: &str,
    user_id: &str,
    id: &str,
    req: &ReverseRequest,
    claim: Option<&Claim>,
) -> Result<Entry, ApiError> {
    let original = get_entry(db, tenant, id).await?;
    if original.reversed_by.is_some() {
        return Err(ApiError::conflict(format!(
            "Journal entry `{id}` has already been reversed."
        )));
    }
    let date = req.date.clone().unwrap_or_else(|| original.date.clone());
    let description = req.description.clone().unwrap_or_else(|| {
        let d = format!("Reversal of {}", original.description);
        d.chars().take(500).collect()
    });
    let lines = original
        .lines
        .iter()
        .map(|l| NewLine {
            account_id: l.account_id.clone(),
            debit: (l.credit > 0).then_some(l.credit),
            credit: (l.debit > 0).then_some(l.debit),
            memo: l.memo.clone(),
        })
        .collect();
    let new = NewEntry {
        date,
        description,
        lines,
    };
    validate_entry(&new)?;
    let new_id = new_id();
    let mut tx = db.pool().begin().await?;
    let res = insert_entry(
        &mut tx,
        tenant,
        &new_id,
        &new.date,
        new.description.trim(),
        Some(&original.id),
        user_id,
    )
    .await;
    match res {
        Ok(()) => {}
        Err(e) if is_unique_violation(&e) => {
            return Err(ApiError::conflict(format!(
                "Journal entry `{id}` has already been reversed."
            )));
        }
        Err(e) => return Err(e.into()),
    }
    raise_totals(&mut tx, tenant, &new.lines).await?;
    for (i, l) in new.lines.iter().enumerate() {
        insert_line(
            &mut tx,
            tenant,
            &new_id,
            i64::try_from(i + 1).unwrap_or(i64::MAX),
            &l.account_id,
            l.debit.unwrap_or(0),
            l.credit.unwrap_or(0),
            l.memo.as_deref(),
        )
        .await?;
    }
    if let Some(claim) = claim {
        claim
            .complete(&mut tx, http::StatusCode::CREATED, &new_id)
            .await?;
    }
    tx.commit().await?;
    metrics::counter!("erp_journal_entries_posted_total").increment(1);
    get_entry(db, tenant, &new_id).await
}

/// The tenant's trial balance.
///
/// # Errors
///
/// Database failure.
pub async fn trial_balance(db: &Db, tenant: &str) -> Result<TrialBalance, ApiError> {
    let rows = sqlx::query(
        "SELECT a.id, a.code, a.name, a.account_type,
                CAST(COALESCE(SUM(l.debit / 1000000000), 0) AS BIGINT) AS debit_hi,
                CAST(COALESCE(SUM(l.debit % 1000000000), 0) AS BIGINT) AS debit_lo,
                CAST(COALESCE(SUM(l.credit / 1000000000), 0) AS BIGINT) AS credit_hi,
                CAST(COALESCE(SUM(l.credit % 1000000000), 0) AS BIGINT) AS credit_lo
         FROM accounts a
         LEFT JOIN journal_lines l ON l.tenant_id = a.tenant_id AND l.account_id = a.id
         WHERE a.tenant_id = $1
         GROUP BY a.id, a.code, a.name, a.account_type
         ORDER BY a.code",
    )
    .bind(tenant)
    .fetch_all(db.pool())
    .await?;
    let mut accounts = Vec::with_capacity(rows.len());
    let (mut total_debit, mut total_credit) = (0i128, 0i128);
    // Each sum in two halves (quotient and remainder by 10^9): neither can overflow
    // below 10^9 lines, whatever the amounts; joined in 128 bits.
    let joined = |r: &AnyRow, side: &str| -> Result<i128, sqlx::Error> {
        let hi: i64 = r.try_get(format!("{side}_hi").as_str())?;
        let lo: i64 = r.try_get(format!("{side}_lo").as_str())?;
        Ok(i128::from(hi) * 1_000_000_000 + i128::from(lo))
    };
    for r in &rows {
        let debit = joined(r, "debit")?;
        let credit = joined(r, "credit")?;
        total_debit += debit;
        total_credit += credit;
        accounts.push(TrialBalanceRow {
            account_id: r.try_get("id")?,
            code: r.try_get("code")?,
            name: r.try_get("name")?,
            account_type: AccountType::parse(&r.try_get::<String, _>("account_type")?),
            debit: clamp(debit),
            credit: clamp(credit),
            balance: clamp(debit - credit),
        });
    }
    Ok(TrialBalance {
        accounts,
        total_debit: clamp(total_debit),
        total_credit: clamp(total_credit),
        balanced: total_debit == total_credit,
    })
}

/// A 128-bit sum as the report's `i64`. The ceilings keep every figure of a ledger
/// posted through [`create_entry`] within range; only a ledger written before them can
/// pass it, and is then shown at the limit rather than failing the whole report.
fn clamp(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(debit: Option<i64>, credit: Option<i64>) -> NewLine {
        NewLine {
            account_id: new_id(),
            debit,
            credit,
            memo: None,
        }
    }

    fn entry(lines: Vec<NewLine>) -> NewEntry {
        NewEntry {
            date: "2026-01-31".into(),
            description: "x".into(),
            lines,
        }
    }

    #[test]
    fn double_entry_rules() {
        assert_eq!(
            validate_entry(&entry(vec![line(Some(5), None), line(None, Some(5))])).unwrap(),
            5
        );
        let status = |e: NewEntry| validate_entry(&e).unwrap_err().status();
        assert_eq!(status(entry(vec![line(Some(5), None)])), 422);
        assert_eq!(
            status(entry(vec![line(Some(5), None), line(None, Some(4))])),
            422
        );
        assert_eq!(
            status(entry(vec![line(Some(5), Some(5)), line(None, Some(5))])),
            422
        );
        assert_eq!(
            status(entry(vec![line(None, None), line(None, Some(5))])),
            422
        );
        assert_eq!(
            status(entry(vec![line(Some(0), None), line(None, Some(0))])),
            422
        );
        assert_eq!(
            status(entry(vec![line(Some(-5), None), line(None, Some(-5))])),
            422
        );
        assert_eq!(
            status(entry(vec![
                line(Some(MAX_AMOUNT + 1), None),
                line(None, Some(MAX_AMOUNT + 1))
            ])),
            422
        );
        let mut bad_date = entry(vec![line(Some(1), None), line(None, Some(1))]);
        bad_date.date = "2026-02-30".into();
        assert_eq!(status(bad_date), 422);
        let mut nul = entry(vec![line(Some(1), None), line(None, Some(1))]);
        nul.description = "a\0b".into();
        assert_eq!(status(nul), 422);
        let mut memo = entry(vec![line(Some(1), None), line(None, Some(1))]);
        memo.lines[0].memo = Some("\u{7}".into());
        assert_eq!(status(memo), 422);
        let mut blank = entry(vec![line(Some(1), None), line(None, Some(1))]);
        blank.description = "  ".into();
        assert_eq!(status(blank), 422);
        let mut bad_id = entry(vec![line(Some(1), None), line(None, Some(1))]);
        bad_id.lines[0].account_id = "nope".into();
        assert_eq!(status(bad_id), 422);
        let many = (0..=MAX_LINES).map(|_| line(Some(1), None)).collect();
        assert_eq!(status(entry(many)), 422);
    }

    #[test]
    fn pages_and_ids() {
        assert_eq!(Page::default().resolve().unwrap(), (50, 0));
        assert!(
            Page {
                limit: Some(0),
                offset: None
            }
            .resolve()
            .is_err()
        );
        assert!(
            Page {
                limit: Some(201),
                offset: None
            }
            .resolve()
            .is_err()
        );
        assert!(
            Page {
                limit: None,
                offset: Some(-1)
            }
            .resolve()
            .is_err()
        );
        let id = new_id();
        assert_eq!(parse_id(&id.to_uppercase()).unwrap(), id);
        assert_eq!(parse_id("x").unwrap_err().status(), 400);
        for t in ["asset", "liability", "equity", "income", "expense"] {
            assert_eq!(AccountType::parse(t).as_str(), t);
        }
    }
}
