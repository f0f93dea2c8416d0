//! The store API against PostgreSQL: the conformance suite, plus what only
//! PostgreSQL has (configurable schema, the unique-constraint safety net,
//! one statement per append).

mod conformance;
mod support;

use support::TestDb;

store_conformance_tests!(TestDb);

use std::sync::Arc;

use conformance::store::{append_in, event, events, read_all};
use es::store::{
    AggregateStreamReader, Error, EventIdConflictReason, EventReader, EventStore, ExpectedVersion,
    PostgresStore,
};
use support::round_trips::count_statements;

/// A commits after B although A drew the lower positions: a reader must
/// wait for A, then see A's events before B's.
async fn out_of_order_commit(a_writes_elsewhere_first: bool) {
    let db = TestDb::new().await;
    db.execute("CREATE TABLE {schema}.side (x int)").await;
    let mut before = db.pool.begin().await.unwrap();
    let earlier = append_in(&db, &mut before, "earlier", 2).await;
    before.commit().await.unwrap();

    let mut a = db.pool.begin().await.unwrap();
    if a_writes_elsewhere_first {
        sqlx::query(sqlx::AssertSqlSafe(
            db.sql("INSERT INTO {schema}.side VALUES (1)"),
        ))
        .execute(&mut *a)
        .await
        .unwrap();
    }
    let a_positions = append_in(&db, &mut a, "agg-a", 2).await;
    let mut b = db.pool.begin().await.unwrap();
    let b_positions = append_in(&db, &mut b, "agg-b", 3).await;
    assert!(b_positions[0] > a_positions[1]);
    b.commit().await.unwrap();

    // B is committed, A is not: nothing at or past A's first position.
    for _ in 0..3 {
        assert_eq!(read_all(&db, 0).await, earlier);
        assert!(read_all(&db, earlier[1]).await.is_empty());
    }
    a.commit().await.unwrap();
    let after: Vec<i64> = [a_positions.clone(), b_positions.clone()].concat();
    assert_eq!(read_all(&db, earlier[1]).await, after);
    db.drop().await;
}

#[tokio::test]
async fn reader_waits_for_an_earlier_position_still_in_flight() {
    out_of_order_commit(false).await;
}

#[tokio::test]
async fn reader_waits_even_when_the_slow_transaction_wrote_elsewhere_first() {
    out_of_order_commit(true).await;
}

#[tokio::test]
async fn a_transaction_appending_twice_holds_readers_at_its_first_position() {
    let db = TestDb::new().await;
    let mut a = db.pool.begin().await.unwrap();
    let first = append_in(&db, &mut a, "x", 1).await;
    let mut b = db.pool.begin().await.unwrap();
    let b_positions = append_in(&db, &mut b, "y", 1).await;
    b.commit().await.unwrap();
    let second = append_in(&db, &mut a, "z", 1).await;
    assert!(first[0] < b_positions[0] && b_positions[0] < second[0]);
    assert!(read_all(&db, 0).await.is_empty());
    a.commit().await.unwrap();
    assert_eq!(
        read_all(&db, 0).await,
        vec![first[0], b_positions[0], second[0]]
    );
    // many appends in one transaction keep one lock, not one each
    let mut bulk = db.pool.begin().await.unwrap();
    for i in 0..500 {
        append_in(&db, &mut bulk, &format!("bulk-{i}"), 1).await;
    }
    let locks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
    )
    .fetch_one(&mut *bulk)
    .await
    .unwrap();
    assert_eq!(locks, 1);
    bulk.commit().await.unwrap();
    assert_eq!(read_all(&db, 0).await.len(), 503);
    db.drop().await;
}

#[tokio::test]
async fn holes_from_rollbacks_and_losing_writers_do_not_stall_readers() {
    let db = TestDb::new().await;
    let mut rolled_back = db.pool.begin().await.unwrap();
    let hole = append_in(&db, &mut rolled_back, "gone", 3).await;
    rolled_back.rollback().await.unwrap();
    // a losing writer draws nothing
    let mut tx = db.pool.begin().await.unwrap();
    append_in(&db, &mut tx, "kept", 1).await;
    tx.commit().await.unwrap();
    let mut loser = db.pool.begin().await.unwrap();
    let err = db
        .store
        .append(&mut loser, ExpectedVersion::NoStream, events("kept", 1))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::OptimisticConcurrency { .. }));
    // the loser's transaction is still open and holds no lock that stalls readers
    let mut tx = db.pool.begin().await.unwrap();
    let later = append_in(&db, &mut tx, "later", 1).await;
    tx.commit().await.unwrap();
    let read = read_all(&db, 0).await;
    assert_eq!(read.len(), 2);
    assert!(read[0] > hole[2]);
    assert_eq!(read[1], later[0]);
    loser.rollback().await.unwrap();
    db.drop().await;
}

#[tokio::test]
async fn read_events_refuses_snapshot_isolation() {
    let db = TestDb::new().await;
    for level in ["REPEATABLE READ", "SERIALIZABLE"] {
        let mut tx = db.pool.begin().await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SET TRANSACTION ISOLATION LEVEL {level}"
        )))
        .execute(&mut *tx)
        .await
        .unwrap();
        let err = db.store.read_events(&mut tx, 0, 10).await.unwrap_err();
        assert!(
            matches!(&err, Error::UnsupportedIsolation { level: l } if l.eq_ignore_ascii_case(level)),
            "{err:?}"
        );
    }
    db.drop().await;
}

#[tokio::test]
async fn the_unique_constraint_is_the_last_safety_net() {
    let db = TestDb::new().await;
    let mut tx = db.pool.begin().await.unwrap();
    append_in(&db, &mut tx, "a", 2).await;
    tx.commit().await.unwrap();
    // A head that lags behind its events (written around the store) lets
    // the version check pass; the constraint still refuses version 2.
    db.execute("UPDATE {heads} SET version = 1").await;
    let mut tx = db.pool.begin().await.unwrap();
    let err = db
        .store
        .append(&mut tx, ExpectedVersion::Exact(1), events("a", 1))
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
    tx.rollback().await.unwrap();
    assert_eq!(db.count("SELECT count(*) FROM {events}").await, 2);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_batch_sent_twice_at_once_is_stored_once() {
    let db = Arc::new(TestDb::new().await);
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
                    if r.is_ok() {
                        tx.commit().await.unwrap();
                    }
                    r.map(|r| r.global_positions)
                })
            })
            .collect();
        let mut stored = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                Ok(positions) => stored.push(positions),
                // the loser ran in a transaction the unique constraint
                // aborted, so it could not compare
                Err(Error::EventIdConflict {
                    reason: EventIdConflictReason::Unverified,
                    event_id,
                }) => assert_eq!(event_id, batch[0].event_id),
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
        // both may succeed only by the second returning the first's result
        assert!(!stored.is_empty());
        assert!(stored.windows(2).all(|w| w[0] == w[1]));
    }
    assert_eq!(db.count("SELECT count(*) FROM {events}").await, 20);
    Arc::into_inner(db).unwrap().drop().await;
}

/// One statement per append, whatever the batch size.
#[test]
fn an_append_is_one_statement() {
    let ((), statements) = count_statements(async {
        let db = TestDb::with_pool_size(1).await;
        let mut conn = db.pool.acquire().await.unwrap();
        // warm the prepared-statement cache
        append_in(&db, &mut conn, "warm", 1).await;
        drop(conn);
        db.drop().await;
    });
    assert!(
        !statements.is_empty(),
        "the statement log is empty: is sqlx logging?"
    );
    for size in [1usize, 100, 10_000] {
        let (db, _) = count_statements(TestDb::with_pool_size(1));
        let (result, statements) = count_statements(async {
            let mut conn = db.pool.acquire().await.unwrap();
            db.store
                .append(&mut conn, ExpectedVersion::NoStream, events("a", size))
                .await
        });
        assert_eq!(result.unwrap().events.len(), size);
        assert_eq!(statements.len(), 1, "{size} events took {statements:#?}");
        assert!(statements[0].contains("INSERT"), "{}", statements[0]);
        count_statements(db.drop());
    }
}

#[tokio::test]
async fn names_are_configurable_and_validated() {
    let db = TestDb::new().await;
    let custom = PostgresStore::builder()
        .schema(format!("{}_custom", db.schema))
        .events_table("Ledger_Events")
        .heads_table("ledger_heads")
        .checkpoints_table("ledger_checkpoints")
        .snapshots_table("ledger_snapshots")
        .build()
        .unwrap();
    custom.migrate(&db.pool).await.unwrap();
    custom.migrate(&db.pool).await.unwrap(); // idempotent
    let mut tx = db.pool.begin().await.unwrap();
    custom
        .append(
            &mut tx,
            ExpectedVersion::NoStream,
            vec![event("a", "Opened", 1)],
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1",
    )
    .bind(custom.schema().unwrap())
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        tables,
        [
            "Ledger_Events",
            "Ledger_Events_listeners",
            "Ledger_Events_projection_versions",
            // each store tracks its own migrations
            "_es_migrations_Ledger_Events",
            "ledger_checkpoints",
            "ledger_heads",
            "ledger_snapshots",
            "projection_failures",
            "read_models",
        ]
    );
    // the default-named store in the test schema did not see it
    let mut conn = db.pool.acquire().await.unwrap();
    assert!(
        db.store
            .read_events(&mut conn, 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let s = custom
        .read_aggregate_stream(&mut conn, ("Billing", "Account", "a"), ..)
        .await
        .unwrap();
    assert_eq!(s.version(), 1);
    drop(conn);
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA \"{}\" CASCADE",
        custom.schema().unwrap()
    )))
    .execute(&db.pool)
    .await
    .unwrap();

    for (what, builder) in [
        ("schema", PostgresStore::builder().schema("bad schema")),
        ("schema", PostgresStore::builder().schema("")),
        (
            "events table",
            PostgresStore::builder().events_table("x\"; DROP TABLE y; --"),
        ),
        (
            "heads table",
            PostgresStore::builder().heads_table("9heads"),
        ),
        (
            "checkpoints table",
            PostgresStore::builder().checkpoints_table("a.b"),
        ),
        (
            "table names",
            PostgresStore::builder().heads_table("events"),
        ),
    ] {
        let err = builder.build().unwrap_err();
        assert!(
            matches!(&err, Error::InvalidIdentifier { what: w, .. } if *w == what),
            "{err:?}"
        );
    }
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_migrations_are_safe() {
    let db = TestDb::new().await;
    let store = PostgresStore::builder()
        .schema(format!("{}_m", db.schema))
        .build()
        .unwrap();
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (store, pool) = (store.clone(), db.pool.clone());
            tokio::spawn(async move { store.migrate(&pool).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let applied: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM \"{}_m\"._es_migrations",
        db.schema
    )))
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(applied, store.migrator().iter().count() as i64);
    assert!(applied >= 6);
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA \"{}_m\" CASCADE",
        db.schema
    )))
    .execute(&db.pool)
    .await
    .unwrap();
    db.drop().await;
}

/// One store without a schema, used through two search paths in one
/// transaction (as schema-per-tenant code does): each schema's readers must
/// still wait for the transaction's append to their schema.
#[tokio::test]
async fn stores_found_through_the_search_path_guard_their_own_positions() {
    let db = TestDb::new().await;
    let (a, b) = (format!("{}_a", db.schema), format!("{}_b", db.schema));
    let store = PostgresStore::new(); // unqualified names
    let mut conn = db.pool.acquire().await.unwrap();
    for schema in [&a, &b] {
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA \"{schema}\"")))
            .execute(&mut *conn)
            .await
            .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SET search_path = \"{schema}\""
        )))
        .execute(&mut *conn)
        .await
        .unwrap();
        store.migrate(&mut *conn).await.unwrap();
    }
    drop(conn);
    let in_schema = async |schema: &str| {
        let mut conn = db.pool.acquire().await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SET search_path = \"{schema}\""
        )))
        .execute(&mut *conn)
        .await
        .unwrap();
        conn
    };

    // One transaction appends to a, then to b, and stays open.
    let mut open = db.pool.begin().await.unwrap();
    for schema in [&a, &b] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SET LOCAL search_path = \"{schema}\""
        )))
        .execute(&mut *open)
        .await
        .unwrap();
        store
            .append(&mut open, ExpectedVersion::Any, events("x", 1))
            .await
            .unwrap();
    }
    // Another appends to b and commits.
    let mut other = in_schema(&b).await;
    store
        .append(&mut other, ExpectedVersion::Any, events("y", 1))
        .await
        .unwrap();
    // b's reader waits for the open transaction's event in b.
    let mut reader = in_schema(&b).await;
    assert!(
        store
            .read_events(&mut reader, 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    open.commit().await.unwrap();
    assert_eq!(
        store.read_events(&mut reader, 0, 10).await.unwrap().len(),
        2
    );
    drop((other, reader));
    for schema in [&a, &b] {
        db.execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
            .await;
    }
    db.drop().await;
}

/// Under `NoStream` and `Exact(n)` a reused id is caught by the unique
/// constraint: inside the caller's transaction, which that aborts, the
/// error says the id is stored but not what differs; nothing is written.
#[tokio::test]
async fn a_reused_id_inside_a_transaction_is_reported_unverified() {
    let db = TestDb::new().await;
    let stored = events("a", 1);
    let mut conn = db.pool.acquire().await.unwrap();
    db.store
        .append(&mut conn, ExpectedVersion::NoStream, stored.clone())
        .await
        .unwrap();
    drop(conn);
    let mut reused = stored[0].clone();
    reused.aggregate_id = "b".into();
    for expected in [ExpectedVersion::NoStream, ExpectedVersion::Any] {
        let mut tx = db.pool.begin().await.unwrap();
        let err = db
            .store
            .append(&mut tx, expected, vec![reused.clone()])
            .await
            .unwrap_err();
        match expected {
            // Any looks for the ids first: precise, and the transaction goes on
            ExpectedVersion::Any => {
                assert!(
                    matches!(
                        &err,
                        Error::EventIdConflict {
                            reason: EventIdConflictReason::OtherAggregate(_),
                            ..
                        }
                    ),
                    "{err:?}"
                );
                sqlx::query("SELECT 1").execute(&mut *tx).await.unwrap();
            }
            _ => {
                assert!(
                    matches!(&err, Error::EventIdConflict { event_id, reason: EventIdConflictReason::Unverified } if *event_id == stored[0].event_id),
                    "{err:?}"
                );
                assert!(
                    sqlx::query("SELECT 1").execute(&mut *tx).await.is_err(),
                    "aborted"
                );
            }
        }
        tx.rollback().await.unwrap();
    }
    assert_eq!(db.count("SELECT count(*) FROM {events}").await, 1);
    assert_eq!(db.count("SELECT count(*) FROM {heads}").await, 1);
    db.drop().await;
}
