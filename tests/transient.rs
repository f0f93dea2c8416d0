//! `Error::is_transient` against the real errors of each backend, and a
//! pool timeout that names what it met.

mod support;

use std::time::Duration;

use es::store::Error;
use sqlx::Connection;

/// The store's error for a driver error, as the store reports it.
fn store_error(error: sqlx::Error) -> Error {
    Error::from(error)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_serialization_failures_deadlocks_and_terminated_sessions_are_transient() {
    let db = support::TestDb::new().await;
    db.execute("CREATE TABLE t (id int PRIMARY KEY, v int)")
        .await;
    db.execute("INSERT INTO t VALUES (1, 0), (2, 0)").await;
    let mut a = db.pool.acquire().await.unwrap();
    let mut b = db.pool.acquire().await.unwrap();

    // 40001: a repeatable-read transaction updates a row changed since its
    // snapshot.
    sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT v FROM t WHERE id = 1")
        .execute(&mut *a)
        .await
        .unwrap();
    sqlx::query("UPDATE t SET v = v + 1 WHERE id = 1")
        .execute(&mut *b)
        .await
        .unwrap();
    let failure = sqlx::query("UPDATE t SET v = v + 1 WHERE id = 1")
        .execute(&mut *a)
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&failure).as_deref(), Some("40001"));
    assert!(store_error(failure).is_transient());
    sqlx::raw_sql("ROLLBACK").execute(&mut *a).await.unwrap();

    // 40P01: two transactions each wait for the other's row.
    for conn in [&mut a, &mut b] {
        sqlx::raw_sql("SET deadlock_timeout = '50ms'; BEGIN")
            .execute(&mut **conn)
            .await
            .unwrap();
    }
    sqlx::query("SELECT 1 FROM t WHERE id = 1 FOR UPDATE")
        .execute(&mut *a)
        .await
        .unwrap();
    sqlx::query("SELECT 1 FROM t WHERE id = 2 FOR UPDATE")
        .execute(&mut *b)
        .await
        .unwrap();
    let lock = "SELECT 1 FROM t WHERE id = $1 FOR UPDATE";
    let (from_a, from_b) = tokio::join!(
        sqlx::query(lock).bind(2).execute(&mut *a),
        sqlx::query(lock).bind(1).execute(&mut *b),
    );
    let victim = from_a
        .err()
        .or(from_b.err())
        .expect("one is the deadlock's victim");
    assert_eq!(sqlstate(&victim).as_deref(), Some("40P01"));
    assert!(store_error(victim).is_transient());
    for conn in [&mut a, &mut b] {
        sqlx::raw_sql("ROLLBACK")
            .execute(&mut **conn)
            .await
            .unwrap();
    }

    // 57P01: the test's own session is terminated under it.
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *a)
        .await
        .unwrap();
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .execute(&mut *b)
        .await
        .unwrap();
    let lost = sqlx::query("SELECT 1").execute(&mut *a).await.unwrap_err();
    assert!(
        matches!(&lost, sqlx::Error::Io(_)) || sqlstate(&lost).as_deref() == Some("57P01"),
        "{lost:?}"
    );
    assert!(store_error(lost).is_transient());
    a.detach().close().await.ok();

    // Not transient: a unique violation, a syntax error.
    let duplicate = sqlx::query("INSERT INTO t VALUES (1, 0)")
        .execute(&mut *b)
        .await
        .unwrap_err();
    assert!(!store_error(duplicate).is_transient());
    let syntax = sqlx::query("SELEC 1").execute(&mut *b).await.unwrap_err();
    assert!(!store_error(syntax).is_transient());
    drop(b);
    db.drop().await;
}

fn sqlstate(error: &sqlx::Error) -> Option<String> {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned())
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_sqlite_database_is_transient() {
    let db = support::sqlite::SqliteDb::new().await;
    let mut holder = db.pool.acquire().await.unwrap();
    let mut other = db.pool.acquire().await.unwrap();
    sqlx::raw_sql("BEGIN IMMEDIATE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let busy = sqlx::raw_sql("PRAGMA busy_timeout = 0; BEGIN IMMEDIATE")
        .execute(&mut *other)
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&busy).as_deref(), Some("5"), "{busy:?}");
    assert!(store_error(busy).is_transient());
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut *holder)
        .await
        .unwrap();
    let syntax = sqlx::raw_sql("SELEC 1")
        .execute(&mut *other)
        .await
        .unwrap_err();
    assert!(!store_error(syntax).is_transient());
    drop((holder, other));
    db.drop().await;
}

#[cfg(feature = "mysql")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_deadlocks_and_lock_wait_timeouts_are_transient() {
    let db = support::mysql::MySqlDb::new().await;
    db.execute("CREATE TABLE t (id int PRIMARY KEY, v int) ENGINE = InnoDB")
        .await;
    db.execute("INSERT INTO t VALUES (1, 0), (2, 0)").await;
    let mut a = db.pool.acquire().await.unwrap();
    let mut b = db.pool.acquire().await.unwrap();
    let number = |e: &sqlx::Error| {
        e.as_database_error()
            .and_then(|d| d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>())
            .map(|d| d.number())
    };

    // 1213: each waits for the other's row.
    for conn in [&mut a, &mut b] {
        sqlx::raw_sql("BEGIN").execute(&mut **conn).await.unwrap();
    }
    let lock = "SELECT 1 FROM t WHERE id = ? FOR UPDATE";
    sqlx::query(lock).bind(1).execute(&mut *a).await.unwrap();
    sqlx::query(lock).bind(2).execute(&mut *b).await.unwrap();
    let (from_a, from_b) = tokio::join!(
        sqlx::query(lock).bind(2).execute(&mut *a),
        sqlx::query(lock).bind(1).execute(&mut *b),
    );
    let victim = from_a
        .err()
        .or(from_b.err())
        .expect("one is the deadlock's victim");
    assert_eq!(number(&victim), Some(1213), "{victim:?}");
    assert!(store_error(victim).is_transient());
    for conn in [&mut a, &mut b] {
        sqlx::raw_sql("ROLLBACK")
            .execute(&mut **conn)
            .await
            .unwrap();
    }

    // 1205: a row lock not granted within the (shortened) wait.
    sqlx::raw_sql("BEGIN").execute(&mut *a).await.unwrap();
    sqlx::query(lock).bind(1).execute(&mut *a).await.unwrap();
    sqlx::raw_sql("SET SESSION innodb_lock_wait_timeout = 1; BEGIN")
        .execute(&mut *b)
        .await
        .unwrap();
    let waited = sqlx::query(lock)
        .bind(1)
        .execute(&mut *b)
        .await
        .unwrap_err();
    assert_eq!(number(&waited), Some(1205), "{waited:?}");
    assert!(store_error(waited).is_transient());
    for conn in [&mut a, &mut b] {
        sqlx::raw_sql("ROLLBACK")
            .execute(&mut **conn)
            .await
            .unwrap();
    }

    let duplicate = sqlx::query("INSERT INTO t VALUES (1, 0)")
        .execute(&mut *b)
        .await
        .unwrap_err();
    assert!(!store_error(duplicate).is_transient());
    drop((a, b));
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_timeout_names_what_it_met() {
    use es::store::PostgresStore;
    use es::{Repository, RepositoryError, RetryPolicy};
    use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

    let server = support::server::TestServer::postgres();
    let url = server.url();
    let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql("CREATE ROLE limited LOGIN CONNECTION LIMIT 0")
        .execute(&mut admin)
        .await
        .unwrap();
    let limited = url.parse::<PgConnectOptions>().unwrap().username("limited");
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_millis(300))
        .connect_lazy_with(limited);

    // sqlx retries 53300 until its timeout and says only PoolTimedOut;
    // the store says why.
    let error = es::store::acquire(&pool).await.unwrap_err();
    let Error::PoolTimedOut { cause: Some(cause) } = &error else {
        panic!("expected a pool timeout with its cause, got {error:?}");
    };
    assert_eq!(sqlstate(cause).as_deref(), Some("53300"), "{cause:?}");
    assert!(error.is_transient());
    assert!(
        error.to_string().contains("too many connections"),
        "{error}"
    );
    assert!(std::error::Error::source(&error).is_some());

    // Through the repository, with no retries left: Unavailable, nothing
    // stored, the cause kept.
    let repository =
        Repository::<support_bank::Account, _>::new(PostgresStore::new(), pool.clone())
            .with_retry_policy(RetryPolicy::none());
    let refused = repository
        .execute(
            "a",
            &support_bank::AccountCommand::Open { owner: "A".into() },
        )
        .await
        .unwrap_err();
    assert!(
        refused.outcome_known() && refused.is_transient(),
        "{refused:?}"
    );
    match &refused {
        RepositoryError::Unavailable {
            source, retries: 0, ..
        } => {
            assert!(
                matches!(**source, Error::PoolTimedOut { cause: Some(_) }),
                "{source:?}"
            );
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }

    // A pool whose connections are all in use: the cause is None.
    let busy = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_millis(200))
        .connect(&url)
        .await
        .unwrap();
    let held = busy.acquire().await.unwrap();
    let error = es::store::acquire(&busy).await.unwrap_err();
    assert!(
        matches!(error, Error::PoolTimedOut { cause: None }),
        "{error:?}"
    );
    drop(held);
    busy.close().await;
    pool.close().await;
    admin.close().await.ok();
}

#[path = "../examples/bank/domain.rs"]
#[allow(dead_code)]
mod support_bank;
