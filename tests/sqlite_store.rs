//! The store API against SQLite: the conformance suite, plus what only
//! SQLite has: one writer (busy waits, refused lock upgrades, claims that
//! wait), gap-free reads without a horizon, table names without schemas.
#![cfg(feature = "sqlite")]

mod conformance;
mod support;

use support::sqlite::SqliteDb;

store_conformance_tests!(SqliteDb);
projection_conformance_tests!(SqliteDb);

use std::sync::Arc;
use std::time::{Duration, Instant};

use conformance::store::{append_in, event, events, read_all};
use es::store::{
    AggregateStreamReader, Error, EventStore, ExpectedVersion, ProjectionStore, SqliteStore,
};
use sqlx::{Connection, SqliteConnection};

async fn version(db: &SqliteDb, id: &str) -> i64 {
    let mut conn = db.pool.acquire().await.unwrap();
    db.store
        .read_aggregate_stream(&mut conn, ("Billing", "Account", id), ..)
        .await
        .unwrap()
        .version()
}

/// While one transaction holds the write lock, appends on pooled
/// connections and in fresh transactions wait for it (the busy timeout)
/// and then all succeed: no "database is locked".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writers_wait_for_the_write_lock_instead_of_failing() {
    let db = Arc::new(SqliteDb::with_pool_size(12).await);
    let mut holder = db.pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    append_in(&*db, &mut holder, "held", 1).await;
    let started = Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|task| {
            let db = db.clone();
            tokio::spawn(async move {
                let id = format!("waiting-{task}");
                if task % 2 == 0 {
                    let mut conn = db.pool.acquire().await.unwrap();
                    append_in(&*db, &mut conn, &id, 2).await;
                } else {
                    let mut tx = db.pool.begin().await.unwrap();
                    append_in(&*db, &mut tx, &id, 2).await;
                    tx.commit().await.unwrap();
                }
                Instant::now()
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        tasks.iter().all(|t| !t.is_finished()),
        "nobody writes while the lock is held"
    );
    holder.commit().await.unwrap();
    for task in tasks {
        let done = task.await.unwrap();
        assert!(done - started >= Duration::from_millis(400));
    }
    assert_eq!(read_all(&*db, 0).await.len(), 1 + 8 * 2);
    Arc::into_inner(db).unwrap().drop().await;
}

/// A deferred transaction that read and then appends cannot wait for the
/// lock (its snapshot would be stale): the append is a conflict, at once,
/// whether the other writer still holds the lock or has committed. Starting
/// the transaction with BEGIN IMMEDIATE avoids it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_after_a_read_is_a_conflict_when_another_writer_came_first() {
    let db = SqliteDb::new().await;
    let mut conn = db.pool.acquire().await.unwrap();
    append_in(&db, &mut conn, "a", 1).await;
    drop(conn);
    let read_then_append = async |tx: &mut SqliteConnection| {
        let seen = db
            .store
            .read_aggregate_stream(tx, ("Billing", "Account", "a"), ..)
            .await
            .unwrap()
            .version();
        let started = Instant::now();
        let result = db
            .store
            .append(tx, ExpectedVersion::at(seen), events("a", 1))
            .await;
        (result, started.elapsed())
    };
    let assert_refused = |result: es::store::Result<_>, elapsed: Duration| {
        assert!(
            matches!(
                &result,
                Err(Error::OptimisticConcurrency {
                    expected: ExpectedVersion::Exact(1),
                    actual: None,
                    ..
                })
            ),
            "{result:?}"
        );
        assert!(elapsed < Duration::from_secs(1), "refused at once");
    };

    // Another writer committed after our read.
    let mut reader = db.pool.begin().await.unwrap();
    db.store
        .read_aggregate_stream(&mut reader, ("Billing", "Account", "a"), ..)
        .await
        .unwrap();
    let mut other = db.pool.acquire().await.unwrap();
    append_in(&db, &mut other, "b", 1).await;
    drop(other);
    let (result, elapsed) = read_then_append(&mut reader).await;
    assert_refused(result, elapsed);
    // the transaction is still usable for reading, and rolls back
    assert_eq!(
        db.store.head_position(&mut reader).await.unwrap(),
        1,
        "the old snapshot"
    );
    reader.rollback().await.unwrap();

    // Another writer holds the lock.
    let mut reader = db.pool.begin().await.unwrap();
    db.store.head_position(&mut reader).await.unwrap();
    let holder = db.pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    let (result, elapsed) = read_then_append(&mut reader).await;
    assert_refused(result, elapsed);
    // nor can it claim a checkpoint: told no, at once
    let started = Instant::now();
    assert_eq!(
        db.store.claim_checkpoint(&mut reader, "p").await.unwrap(),
        None
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    reader.rollback().await.unwrap();
    holder.rollback().await.unwrap();

    // BEGIN IMMEDIATE takes the lock first: the read is never stale.
    let mut writer = db.pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    let (result, _) = read_then_append(&mut writer).await;
    assert_eq!(result.unwrap().to_version(), 2);
    writer.commit().await.unwrap();
    assert_eq!(version(&db, "a").await, 2);
    db.drop().await;
}

/// Past the busy timeout, a writer gets SQLite's "database is locked" as a
/// database error (not a conflict): something held the lock that long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_busy_timeout_bounds_the_wait() {
    let db = SqliteDb::new().await;
    let impatient = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            SqliteStore::connect_options(&db.path).busy_timeout(Duration::from_millis(200)),
        )
        .await
        .unwrap();
    let mut holder = db.pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    append_in(&db, &mut holder, "held", 1).await;
    let mut conn = impatient.acquire().await.unwrap();
    let started = Instant::now();
    let err = db
        .store
        .append(&mut conn, ExpectedVersion::Any, events("late", 1))
        .await
        .unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(200));
    match &err {
        Error::Database(e) => assert!(e.to_string().contains("database is locked"), "{e}"),
        other => panic!("expected a database error, got {other:?}"),
    }
    holder.commit().await.unwrap();
    // the connection is clean: the next append goes through
    append_in(&db, &mut conn, "late", 1).await;
    drop(conn);
    impatient.close().await;
    db.drop().await;
}

/// An append cancelled while it waits for the lock leaves no transaction
/// open on its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_append_leaves_the_connection_clean() {
    let db = SqliteDb::with_pool_size(2).await;
    let mut holder = db.pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    append_in(&db, &mut holder, "held", 1).await;
    let mut conn = db.pool.acquire().await.unwrap();
    let cancelled = tokio::time::timeout(
        Duration::from_millis(200),
        db.store
            .append(&mut conn, ExpectedVersion::Any, events("cancelled", 1)),
    )
    .await;
    assert!(cancelled.is_err(), "still waiting for the lock");
    holder.commit().await.unwrap();
    // Not left in a transaction (which would now hold the lock for ever):
    // sqlx rolls the cancelled transaction back before the next command.
    assert!(!conn.is_in_transaction());
    append_in(&db, &mut conn, "after", 1).await;
    drop(conn);
    let mut other = db.pool.acquire().await.unwrap();
    append_in(&db, &mut other, "other", 1).await;
    drop(other);
    assert_eq!(version(&db, "cancelled").await, 0);
    assert_eq!(read_all(&db, 0).await.len(), 3);
    db.drop().await;
}

/// Positions of a rolled-back append are handed out again: nobody saw them.
#[tokio::test]
async fn positions_of_a_rollback_are_reused_unseen() {
    let db = SqliteDb::new().await;
    let mut kept = db.pool.acquire().await.unwrap();
    let first = append_in(&db, &mut kept, "kept", 1).await;
    let mut rolled_back = db.pool.begin().await.unwrap();
    let gone = append_in(&db, &mut rolled_back, "gone", 2).await;
    assert!(
        read_all(&db, 0).await == first,
        "uncommitted events are not read"
    );
    rolled_back.rollback().await.unwrap();
    let later = append_in(&db, &mut kept, "later", 1).await;
    assert_eq!(later[0], gone[0]);
    assert_eq!(read_all(&db, 0).await, vec![first[0], later[0]]);
    drop(kept);
    db.drop().await;
}

#[tokio::test]
async fn the_unique_constraint_is_the_last_safety_net() {
    let db = SqliteDb::new().await;
    let mut conn = db.pool.acquire().await.unwrap();
    append_in(&db, &mut conn, "a", 2).await;
    // A head that lags behind its events (written around the store) lets
    // the version check pass; the unique index still refuses version 2.
    db.execute("UPDATE {heads} SET version = 1").await;
    let err = db
        .store
        .append(&mut conn, ExpectedVersion::Exact(1), events("a", 1))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::OptimisticConcurrency {
                expected: ExpectedVersion::Exact(1),
                actual: None,
                ..
            }
        ),
        "{err:?}"
    );
    // the append's own transaction rolled back: the head is still lagging
    assert_eq!(db.count("SELECT version FROM {heads}").await, 1);
    assert_eq!(db.count("SELECT count(*) FROM {events}").await, 2);
    drop(conn);
    db.drop().await;
}

/// With one writer, the second of two identical appends sent at once waits
/// and then finds the batch stored: both get the same result.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_batch_sent_twice_at_once_is_stored_once() {
    let db = Arc::new(SqliteDb::new().await);
    for round in 0..10 {
        let batch = events(&format!("r{round}"), 2);
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let tasks: Vec<_> = (0..2)
            .map(|_| {
                let (db, batch, barrier) = (db.clone(), batch.clone(), barrier.clone());
                tokio::spawn(async move {
                    let mut tx = db.pool.begin().await.unwrap();
                    barrier.wait().await;
                    let r = db.store.append(&mut tx, ExpectedVersion::Any, batch).await;
                    tx.commit().await.unwrap();
                    r.unwrap().global_positions
                })
            })
            .collect();
        let mut stored = Vec::new();
        for t in tasks {
            stored.push(t.await.unwrap());
        }
        assert_eq!(stored[0], stored[1]);
    }
    assert_eq!(db.count("SELECT count(*) FROM {events}").await, 20);
    Arc::into_inner(db).unwrap().drop().await;
}

/// One store per database file (its migrations are tracked in
/// `_es_migrations`, as on PostgreSQL one store per schema).
#[tokio::test]
async fn names_are_configurable_and_validated() {
    let path = std::env::temp_dir().join(format!(
        "es_test_names_{}.db",
        uuid::Uuid::new_v4().simple()
    ));
    let pool = SqliteDb::connect(&path, 2).await;
    let custom = SqliteStore::builder()
        .events_table("Ledger_Events")
        .heads_table("ledger_heads")
        .checkpoints_table("ledger_checkpoints")
        .snapshots_table("ledger_snapshots")
        .failures_table("ledger_failures")
        .build()
        .unwrap();
    custom.migrate(&pool).await.unwrap();
    custom.migrate(&pool).await.unwrap(); // idempotent
    let mut conn = pool.acquire().await.unwrap();
    custom
        .append(
            &mut conn,
            ExpectedVersion::NoStream,
            vec![event("a", "Opened", 1)],
        )
        .await
        .unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite%' ORDER BY 1",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    assert_eq!(
        tables,
        [
            "Ledger_Events",
            "Ledger_Events_projection_versions",
            // each store tracks its own migrations
            "_es_migrations_Ledger_Events",
            "ledger_checkpoints",
            "ledger_failures",
            "ledger_heads",
            "ledger_snapshots",
            "read_models",
        ]
    );
    let s = custom
        .read_aggregate_stream(&mut conn, ("Billing", "Account", "a"), ..)
        .await
        .unwrap();
    assert_eq!(s.version(), 1);
    drop(conn);
    pool.close().await;
    remove_database(&path);

    for (what, builder) in [
        (
            "events table",
            SqliteStore::builder().events_table("x\"; DROP TABLE y; --"),
        ),
        ("heads table", SqliteStore::builder().heads_table("9heads")),
        (
            "checkpoints table",
            SqliteStore::builder().checkpoints_table("a.b"),
        ),
        (
            "snapshots table",
            SqliteStore::builder().snapshots_table(""),
        ),
        ("table names", SqliteStore::builder().heads_table("events")),
    ] {
        let err = builder.build().unwrap_err();
        assert!(
            matches!(&err, Error::InvalidIdentifier { what: w, .. } if *w == what),
            "{err:?}"
        );
    }
}

fn remove_database(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
}

/// Several processes starting at once all migrate: they take turns.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_migrations_are_safe() {
    let path = std::env::temp_dir().join(format!(
        "es_test_migrations_{}.db",
        uuid::Uuid::new_v4().simple()
    ));
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let path = path.clone();
            tokio::spawn(async move {
                // a pool each, as separate processes would have
                let pool = SqliteDb::connect(&path, 1).await;
                let result = SqliteStore::new().migrate(&pool).await;
                pool.close().await;
                result
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let mut conn = SqliteConnection::connect_with(&SqliteStore::connect_options(&path))
        .await
        .unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _es_migrations")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(applied, SqliteStore::new().migrator().iter().count() as i64);
    conn.close().await.unwrap();
    remove_database(&path);
}
