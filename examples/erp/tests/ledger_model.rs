//! Property test: random entries within the limits give the same trial balance as a
//! model (128-bit sums, the ceilings applied), on SQLite and on PostgreSQL.

mod common;

use std::collections::BTreeMap;

use proptest::{
    prelude::*,
    test_runner::{Config as PropConfig, TestRunner},
};
use rampart_erp::{
    Db,
    ledger::{self, MAX_ACCOUNT_TOTAL, MAX_AMOUNT, MAX_TENANT_TOTAL, NewEntry, NewLine},
};

/// One entry: pairs of (debited account, credited account, amount).
type Pairs = Vec<(usize, usize, i64)>;

fn entries() -> impl Strategy<Value = Vec<Pairs>> {
    let amount = prop_oneof![1 => 1..=1_000i64, 4 => (MAX_AMOUNT - 1_000)..=MAX_AMOUNT];
    // Account 0 takes most debits and entries are mostly large, so its ceiling is
    // reached in most runs (the test asserts some entries were refused).
    let debited = prop_oneof![4 => Just(0usize), 1 => 0..3usize];
    let pair = (debited, 0..3usize, amount);
    let entry = prop_oneof![
        1 => prop::collection::vec(pair.clone(), 1..=5),
        4 => prop::collection::vec(pair, 150..=250),
    ];
    prop::collection::vec(entry, 6..=12)
}

async fn check(
    db: &Db,
    case: &[Pairs],
    refused: &std::cell::Cell<usize>,
) -> Result<(), TestCaseError> {
    let tenant = format!("p{}", uuid::Uuid::new_v4().simple());
    sqlx::query("INSERT INTO tenants (id, name, created_at) VALUES ($1, 'p', 'now')")
        .bind(&tenant)
        .execute(db.pool())
        .await
        .unwrap();
    let mut ids = Vec::new();
    for code in ["A", "B", "C"] {
        let id = rampart_erp::db::new_id();
        sqlx::query(
            "INSERT INTO accounts (id, tenant_id, code, name, account_type, created_at)
             VALUES ($1, $2, $3, $3, 'asset', 'now')",
        )
        .bind(&id)
        .bind(&tenant)
        .bind(code)
        .execute(db.pool())
        .await
        .unwrap();
        ids.push(id);
    }
    // The model: per account (debits, credits), and the tenant's total.
    let mut model = [(0i128, 0i128); 3];
    let mut posted: i128 = 0;
    for pairs in case {
        let mut lines = Vec::new();
        let mut next = model;
        let mut total = 0i128;
        for &(d, c, amount) in pairs {
            lines.push(NewLine {
                account_id: ids[d].clone(),
                debit: Some(amount),
                credit: None,
                memo: None,
            });
            lines.push(NewLine {
                account_id: ids[c].clone(),
                debit: None,
                credit: Some(amount),
                memo: None,
            });
            next[d].0 += i128::from(amount);
            next[c].1 += i128::from(amount);
            total += i128::from(amount);
        }
        let fits = posted + total <= i128::from(MAX_TENANT_TOTAL)
            && next.iter().all(|(d, c)| {
                *d <= i128::from(MAX_ACCOUNT_TOTAL) && *c <= i128::from(MAX_ACCOUNT_TOTAL)
            });
        let entry = NewEntry {
            date: "2026-06-01".into(),
            description: "p".into(),
            lines,
        };
        match ledger::create_entry(db, &tenant, "u", &entry, None).await {
            Ok(_) => {
                prop_assert!(fits, "accepted past a ceiling");
                model = next;
                posted += total;
            }
            Err(e) => {
                prop_assert_eq!(e.status().as_u16(), 422);
                prop_assert!(!fits, "refused within the limits");
                refused.set(refused.get() + 1);
            }
        }
    }
    let tb = ledger::trial_balance(db, &tenant).await.unwrap();
    let got: BTreeMap<&str, (i64, i64)> = tb
        .accounts
        .iter()
        .map(|r| (r.code.as_str(), (r.debit, r.credit)))
        .collect();
    for (i, code) in ["A", "B", "C"].iter().enumerate() {
        let want = (
            i64::try_from(model[i].0).unwrap(),
            i64::try_from(model[i].1).unwrap(),
        );
        prop_assert_eq!(got[code], want);
    }
    prop_assert_eq!(i128::from(tb.total_debit), posted);
    prop_assert_eq!(i128::from(tb.total_credit), posted);
    prop_assert!(tb.balanced);
    Ok(())
}

fn run(db: &Db, cases: u32) {
    let rt = tokio::runtime::Handle::current();
    let mut runner = TestRunner::new(PropConfig {
        cases,
        ..PropConfig::default()
    });
    // Entries the model and the ledger both refused over the run: the ceilings are
    // exercised, not only the sums.
    let refused = std::cell::Cell::new(0);
    let result = tokio::task::block_in_place(|| {
        runner.run(&entries(), |case| rt.block_on(check(db, &case, &refused)))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let refused = refused.get();
    println!("entries refused at a ceiling: {refused}");
    assert!(
        refused > 0,
        "no case reached a ceiling: the generator is too timid"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trial_balance_matches_the_model_on_sqlite() {
    let db = Db::connect("sqlite::memory:").await.unwrap();
    db.migrate().await.unwrap();
    run(&db, 24);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trial_balance_matches_the_model_on_postgres() {
    let Some(tmp) = common::TempDatabase::create().await else {
        return;
    };
    let db = Db::connect(&tmp.url).await.unwrap();
    db.migrate().await.unwrap();
    let result = std::panic::AssertUnwindSafe(async { run(&db, 8) });
    let outcome = futures_catch(result).await;
    db.close().await;
    tmp.drop_db().await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e);
    }
}

async fn futures_catch<F: std::future::Future<Output = ()>>(
    f: std::panic::AssertUnwindSafe<F>,
) -> Result<(), Box<dyn std::any::Any + Send>> {
    // The runner blocks in place; a panic inside it is caught here so the database is
    // dropped either way.
    let fut = f.0;
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(fut));
    }))
}
