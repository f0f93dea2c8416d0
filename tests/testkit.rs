//! The exported test kit: a throwaway database per test on every backend,
//! and given / when / then over several aggregates through a unit of work.

mod support;

#[path = "../examples/bank/domain.rs"]
#[allow(dead_code)]
mod bank;

use bank::{Account, AccountCommand, AccountError, AccountEvent};
use es::Repository;
use es::aggregate::testing::TestDatabase;
use es::aggregate::{Work, WorkError};
use es::store::Store;

/// A transfer, written once for every backend.
async fn transfer<S: Store>(
    work: &Work<S>,
    accounts: &Repository<Account, S>,
    from: &str,
    to: &str,
    amount: i64,
) -> Result<(), WorkError> {
    work.execute(accounts, from, &AccountCommand::Withdraw { amount })
        .await?;
    work.execute(accounts, to, &AccountCommand::Deposit { amount })
        .await?;
    Ok(())
}

async fn transfers_across_accounts<S: Store>(db: TestDatabase<S>) {
    let opened = |owner: &str| AccountEvent::Opened {
        owner: owner.into(),
    };
    db.given::<Account>("a", [opened("A"), AccountEvent::Deposited { amount: 100 }])
        .await;
    db.given::<Account>("b", [opened("B")]).await;
    db.given::<Account>("c", [opened("C")]).await;
    let accounts = db.repository::<Account>();
    let accounts = &accounts;

    db.when(move |work| async move { transfer(&work, accounts, "a", "b", 30).await })
        .await
        .then::<Account>("a", [AccountEvent::Withdrawn { amount: 30 }])
        .then::<Account>("b", [AccountEvent::Deposited { amount: 30 }])
        .then_nothing_else();

    db.when(move |work| async move { transfer(&work, accounts, "a", "c", 500).await })
        .await
        .then_rejected(AccountError::InsufficientFunds {
            balance: 70,
            asked: 500,
        });

    // the kit's assertions fail when the unit did something else
    let then = db
        .when(move |work| async move { transfer(&work, accounts, "b", "c", 10).await })
        .await;
    let wrong = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        then.then::<Account>("b", [AccountEvent::Withdrawn { amount: 10 }])
            .then_nothing_else();
    }));
    assert!(wrong.is_err(), "c's deposit was not asserted on");
    let wrong = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        then.then::<Account>("c", [AccountEvent::Deposited { amount: 11 }]);
    }));
    assert!(wrong.is_err(), "c got 10, not 11");
    assert_eq!(then.appended().len(), 2);
    db.remove().await;
}

#[tokio::test]
async fn sqlite_transfers_across_accounts() {
    let db = TestDatabase::sqlite().await.unwrap();
    let path = db.path().unwrap().to_owned();
    let wal = format!("{}-wal", path.display());
    transfers_across_accounts(db).await;
    assert!(!path.exists(), "the database file is removed");
    assert!(!std::path::Path::new(&wal).exists(), "and its WAL file");
}

#[tokio::test]
async fn sqlite_test_databases_are_removed_when_dropped() {
    let db = TestDatabase::sqlite().await.unwrap();
    db.given::<Account>("a", [AccountEvent::Opened { owner: "A".into() }])
        .await;
    let path = db.path().unwrap().to_owned();
    drop(db);
    assert!(!path.exists());
}

#[tokio::test]
async fn postgres_transfers_across_accounts() {
    let url = support::database_url();
    let db = TestDatabase::postgres(&url).await.unwrap_or_else(|e| {
        support::server::unreachable(support::server::Backend::Postgres, &url, &e)
    });
    let schema = db.store().schema().unwrap().to_owned();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    transfers_across_accounts(db).await;
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.schemata WHERE schema_name = $1",
    )
    .bind(&schema)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(left, 0, "the schema is dropped");
}

#[cfg(feature = "mysql")]
#[tokio::test]
async fn mysql_transfers_across_accounts() {
    let url = support::mysql_url();
    let db = TestDatabase::mysql(&url).await.unwrap_or_else(|e| {
        support::server::unreachable(support::server::Backend::MySql, &url, &e)
    });
    transfers_across_accounts(db).await;
}
