//! The repository on every backend: load and fold, execute with
//! Exact(version), retries, the caller's-transaction variant, metadata and
//! snapshots (the bodies are in `conformance/repository.rs`).

mod conformance;
mod support;

/// Against PostgreSQL.
mod postgres {
    crate::repository_conformance_tests!(crate::support::TestDb);
}

/// Against SQLite.
#[cfg(feature = "sqlite")]
mod sqlite {
    crate::repository_conformance_tests!(crate::support::sqlite::SqliteDb);
}

/// Against MySQL / MariaDB.
#[cfg(feature = "mysql")]
mod mysql {
    crate::repository_conformance_tests!(crate::support::mysql::MySqlDb);
}

use conformance::repository::bank::{Account, AccountCommand, AccountError, AccountEvent};

fn deposit(amount: i64) -> AccountCommand {
    AccountCommand::Deposit { amount }
}

#[test]
fn given_when_then_without_a_database() {
    use es::aggregate::testing::given;
    let opened = AccountEvent::Opened {
        owner: "Alice".into(),
    };
    let state = given::<Account>([opened.clone()])
        .when(deposit(5))
        .then([AccountEvent::Deposited { amount: 5 }]);
    assert_eq!(state.balance, 5);
    given::<Account>([opened.clone(), AccountEvent::Deposited { amount: 5 }])
        .when(AccountCommand::Withdraw { amount: 6 })
        .then_error(AccountError::InsufficientFunds {
            balance: 5,
            asked: 6,
        });
    given::<Account>([])
        .when(deposit(1))
        .then_error(AccountError::NotOpen);
    given::<Account>([opened.clone(), AccountEvent::Closed])
        .when(AccountCommand::Close)
        .then([]);
    given::<Account>([opened])
        .when(deposit(-1))
        .then_error_matches(|e| matches!(e, AccountError::NonPositiveAmount(-1)));
    assert_eq!(given::<Account>([]).state(), &Account::default());
}

/// A command retried after a conflict runs under the aggregate's lock:
/// while the retried handler decides, no other writer gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_holds_the_aggregate_lock() {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    use es::store::{Event, EventStore, ExpectedVersion};
    use es::{Aggregate, Repository, RetryPolicy};

    /// What another writer's append did while the handler ran.
    #[derive(Debug, PartialEq)]
    enum Outsider {
        Appended,
        TimedOutOnTheLock,
    }

    #[derive(Default)]
    struct Probed;
    struct Probe {
        url: String,
        schema: String,
        attempts: AtomicU32,
        outsiders: Mutex<Vec<Outsider>>,
    }
    #[derive(Debug, thiserror::Error)]
    #[error("never")]
    struct Never;

    impl Aggregate for Probed {
        type Event = AccountEvent;
        type Command = Probe;
        type Error = Never;
        fn apply(&mut self, _: &AccountEvent) {}
        fn handle(&self, probe: &Probe) -> Result<Vec<AccountEvent>, Never> {
            probe.attempts.fetch_add(1, Ordering::SeqCst);
            // Another writer tries to append, giving up on a lock after 300 ms.
            let (url, schema) = (probe.url.clone(), probe.schema.clone());
            let outsider = std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(async {
                        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
                            .await
                            .unwrap();
                        sqlx::query("SET lock_timeout = '300ms'")
                            .execute(&mut conn)
                            .await
                            .unwrap();
                        let store = es::store::PostgresStore::builder()
                            .schema(schema)
                            .build()
                            .unwrap();
                        let event = Event::new(
                            "Billing",
                            "Account",
                            "probed",
                            "Deposited",
                            &serde_json::json!({"amount": 1}),
                        )
                        .unwrap();
                        match store
                            .append(&mut conn, ExpectedVersion::Any, vec![event])
                            .await
                        {
                            Ok(_) => Outsider::Appended,
                            Err(es::store::Error::Database(e))
                                if e.as_database_error().and_then(|d| d.code()).as_deref()
                                    == Some("55P03") =>
                            {
                                Outsider::TimedOutOnTheLock
                            }
                            Err(other) => panic!("{other}"),
                        }
                    })
            })
            .join()
            .unwrap();
            probe.outsiders.lock().unwrap().push(outsider);
            Ok(vec![AccountEvent::Deposited { amount: 1 }])
        }
    }

    let db = support::TestDb::new().await;
    let mut conn = db.pool.acquire().await.unwrap();
    let opened = Event::new(
        "Billing",
        "Account",
        "probed",
        "Opened",
        &serde_json::json!({"owner": "p"}),
    )
    .unwrap();
    db.store
        .append(&mut conn, ExpectedVersion::NoStream, vec![opened])
        .await
        .unwrap();
    drop(conn);
    let repository = Repository::<Probed>::new(db.store.clone(), db.pool.clone())
        .with_retry_policy(RetryPolicy::immediate(3));
    let probe = Probe {
        url: support::database_url(),
        schema: db.schema.clone(),
        attempts: AtomicU32::new(0),
        outsiders: Mutex::new(Vec::new()),
    };
    let done = repository.execute("probed", &probe).await.unwrap();
    // The first, optimistic attempt lost to the outsider; the retry held the
    // lock, so the outsider waited and gave up, and the retry won.
    assert_eq!(done.attempts, 2);
    assert_eq!(
        *probe.outsiders.lock().unwrap(),
        [Outsider::Appended, Outsider::TimedOutOnTheLock]
    );
    drop(repository);
    db.drop().await;
}

/// A snapshot that cannot be stored is only a cache miss: the command
/// succeeds, and the caller's transaction goes on (the snapshot is written
/// in a savepoint).
#[tokio::test]
async fn a_failed_snapshot_neither_fails_the_command_nor_aborts_the_transaction() {
    use es::Repository;

    let db = support::TestDb::new().await;
    let accounts =
        Repository::<Account>::new(db.store.clone(), db.pool.clone()).with_snapshots(1, 1);
    accounts
        .execute(
            "a",
            &AccountCommand::Open {
                owner: "Alice".into(),
            },
        )
        .await
        .unwrap();
    // Storing a snapshot now fails (reading them still works).
    db.execute(
        "ALTER TABLE {schema}.snapshots ADD CONSTRAINT refuse CHECK (version < 0) NOT VALID",
    )
    .await;

    // on a pooled connection
    let done = accounts.execute("a", &deposit(5)).await.unwrap();
    assert_eq!(done.version, 2);

    // in the caller's transaction, next to the caller's own writes
    db.execute("CREATE TABLE {schema}.audit (note text)").await;
    let mut tx = db.pool.begin().await.unwrap();
    accounts
        .execute_in(&mut tx, "a", &deposit(1))
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(
        db.sql("INSERT INTO {schema}.audit VALUES ('after')"),
    ))
    .execute(&mut *tx)
    .await
    .unwrap();
    accounts
        .execute_in(&mut tx, "a", &deposit(1))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let loaded = accounts.load("a").await.unwrap();
    assert_eq!((loaded.version, loaded.state.balance), (4, 7));
    assert_eq!(db.count("SELECT count(*) FROM {events}").await, 4);
    assert_eq!(db.count("SELECT count(*) FROM {schema}.audit").await, 1);
    drop(accounts);
    db.drop().await;
}

/// With the state cache, a command on a cached aggregate is one statement
/// on PostgreSQL (the append), where it is two without (the fold, then the
/// append).
#[test]
fn a_cached_aggregate_takes_one_statement_per_command() {
    use support::round_trips::count_statements;
    let (db, _) = count_statements(support::TestDb::with_pool_size(1));
    for (cache, expected) in [(false, 2), (true, 1)] {
        let id = format!("cached-{cache}");
        let mut accounts = es::Repository::<Account, _>::new(db.store.clone(), db.pool.clone());
        if cache {
            accounts = accounts.with_state_cache(8);
        }
        let ((), _) = count_statements(async {
            let open = AccountCommand::Open {
                owner: "Alice".into(),
            };
            accounts.execute(&id, &open).await.unwrap();
            accounts.execute(&id, &deposit(1)).await.unwrap();
        });
        let (executed, statements) = count_statements(accounts.execute(&id, &deposit(1)));
        assert_eq!(executed.unwrap().state.balance, 2);
        assert_eq!(statements.len(), expected, "{statements:#?}");
    }
    count_statements(db.drop());
}
