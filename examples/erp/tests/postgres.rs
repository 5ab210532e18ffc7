//! The data layer and the API suites on PostgreSQL, in a fresh database created for the
//! test and dropped afterwards.
//!
//! The server is `RAMPART_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`). When it cannot be reached the test says
//! so and passes, unless `RAMPART_REQUIRE_POSTGRES=1` (CI with PostgreSQL sets it).

mod common;

use common::{TempDatabase, TestApp};
use rampart_erp::{Config, Db};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_layer_and_api_on_postgres() {
    let Some(tmp) = TempDatabase::create().await else {
        return;
    };
    let result = tokio::spawn({
        let url = tmp.url.clone();
        async move {
            // Migrations are idempotent, and the seed runs once.
            let db = Db::connect(&url).await.expect("connect");
            assert_eq!(db.backend(), rampart_erp::db::Backend::Postgres);
            assert_eq!(db.migrate().await.unwrap(), 4);
            assert_eq!(db.migrate().await.unwrap(), 0);
            assert!(
                db.seed(None, rampart_erp::config::PasswordCost::Fast)
                    .await
                    .unwrap()
                    .is_some()
            );
            assert!(
                db.seed(None, rampart_erp::config::PasswordCost::Fast)
                    .await
                    .unwrap()
                    .is_none()
            );
            db.ping().await.unwrap();
            assert!(db.tenant_exists("acme").await.unwrap());
            assert!(!db.tenant_exists("initech").await.unwrap());
            db.close().await;

            // The same suites as on SQLite, over a fresh schema each.
            let reset = Db::connect(&url).await.unwrap();
            for table in [
                "idempotency_keys",
                "journal_lines",
                "journal_entries",
                "accounts",
                "users",
                "tenants",
            ] {
                sqlx::query(&format!("DELETE FROM {table}"))
                    .execute(reset.pool())
                    .await
                    .unwrap();
            }
            reset.close().await;
            let t = TestApp::with_config(Config::for_tests(url.clone())).await;
            common::ledger_suite(&t).await;
            common::idempotency_suite(&t).await;
            common::isolation_suite(&t).await;
            common::concurrency_suite(&t).await;
            let res = t
                .call(axum::http::Method::GET, "/health/ready/", None, None)
                .await;
            assert_eq!(res.status, 200, "{}", res.text());
            t.state.db().close().await;
        }
    })
    .await;
    tmp.drop_db().await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_sums_and_idempotency_crashes_on_postgres() {
    let Some(tmp) = TempDatabase::create().await else {
        return;
    };
    let result = tokio::spawn({
        let url = tmp.url.clone();
        async move {
            let t = TestApp::with_config(Config::for_tests(url)).await;
            common::idempotency_crash_suite(&t).await;
            common::overflow_suite(&t).await;
            t.state.db().close().await;
        }
    })
    .await;
    tmp.drop_db().await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}
