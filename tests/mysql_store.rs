//! The store API against MySQL / MariaDB: the conformance suite, plus what
//! only MySQL has: positions drawn under a lock held to commit, names
//! compared as bytes, aggregate locks that always exist.
#![cfg(feature = "mysql")]

mod conformance;
mod support;

use support::mysql::MySqlDb;

store_conformance_tests!(MySqlDb);
projection_conformance_tests!(MySqlDb);

use std::time::Duration;

use conformance::store::{append_in, event, events, read_all};
use es::store::{
    AggregateStreamReader, Error, EventStore, ExpectedVersion, MySqlStore, ProjectionStore,
};
use sqlx::{Connection, MySqlConnection};

/// The server's id of a connection, to watch it from another one.
async fn connection_id(conn: &mut MySqlConnection) -> u64 {
    sqlx::query_scalar("SELECT CONNECTION_ID()")
        .fetch_one(conn)
        .await
        .unwrap()
}

/// Returns once the connection `id` waits for a row lock: the event the
/// tests synchronise on. Read from `SHOW ENGINE INNODB STATUS`, which is
/// current; `information_schema.innodb_trx` is a cache that is not
/// refreshed while it is read more often than every 100 ms.
async fn until_waiting_for_a_lock(db: &MySqlDb, id: u64) {
    let thread = format!("thread id {id},");
    loop {
        let (_, _, status): (String, String, String) = sqlx::query_as("SHOW ENGINE INNODB STATUS")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        let waiting = status
            .split("---TRANSACTION")
            .any(|trx| trx.contains(&thread) && trx.contains("LOCK WAIT"));
        if waiting {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A holds positions and stays open; B, appending to another aggregate,
/// queues behind A's counter lock instead of committing past it, so a
/// reader never sees B's positions before A's: after A commits, the feed
/// holds A then B, with nothing skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_later_append_cannot_commit_before_an_earlier_one() {
    let db = std::sync::Arc::new(MySqlDb::new().await);
    let earlier = {
        let mut conn = db.pool.acquire().await.unwrap();
        append_in(&*db, &mut conn, "earlier", 2).await
    };
    let mut a = db.pool.begin().await.unwrap();
    let a_positions = append_in(&*db, &mut a, "agg-a", 2).await;

    let mut b_conn = db.pool.acquire().await.unwrap().detach();
    let b_id = connection_id(&mut b_conn).await;
    let b = tokio::spawn({
        let db = db.clone();
        async move {
            let mut tx = b_conn.begin().await.unwrap();
            let positions = append_in(&*db, &mut tx, "agg-b", 3).await;
            tx.commit().await.unwrap();
            positions
        }
    });
    until_waiting_for_a_lock(&db, b_id).await;
    // A is open and B waits behind it: the feed ends before A.
    assert_eq!(read_all(&*db, 0).await, earlier);
    assert!(read_all(&*db, earlier[1]).await.is_empty());

    a.commit().await.unwrap();
    let b_positions = b.await.unwrap();
    assert!(
        b_positions[0] > a_positions[1],
        "{a_positions:?} {b_positions:?}"
    );
    assert_eq!(
        read_all(&*db, earlier[1]).await,
        [a_positions, b_positions].concat()
    );
    std::sync::Arc::into_inner(db).unwrap().drop().await;
}

/// A rolled-back append gives its positions back: the next append takes
/// them, and readers see no hole and are never held up.
#[tokio::test]
async fn a_rolled_back_append_leaves_no_hole() {
    let db = MySqlDb::new().await;
    let mut tx = db.pool.begin().await.unwrap();
    let rolled_back = append_in(&db, &mut tx, "agg-a", 3).await;
    tx.rollback().await.unwrap();
    let mut conn = db.pool.acquire().await.unwrap();
    let stored = append_in(&db, &mut conn, "agg-b", 2).await;
    assert_eq!(stored, rolled_back[..2]);
    assert_eq!(read_all(&db, 0).await, stored);
    drop(conn);
    db.drop().await;
}

/// Names are compared as bytes: MySQL's text collations would make
/// `acc-1`, `acc-1 ` and `ACC-1` one aggregate.
#[tokio::test]
async fn names_that_differ_only_in_trailing_spaces_or_case_are_different_aggregates() {
    let db = MySqlDb::new().await;
    let mut conn = db.pool.acquire().await.unwrap();
    let ids = ["acc-1", "acc-1 ", "ACC-1", "acc-\u{e9}"];
    for id in ids {
        db.store
            .append(
                &mut *conn,
                ExpectedVersion::NoStream,
                vec![event(id, "Opened", 1)],
            )
            .await
            .unwrap_or_else(|e| panic!("{id:?}: {e}"));
    }
    for id in ids {
        let stream = db
            .store
            .read_aggregate_stream(&mut *conn, ("Billing", "Account", id), ..)
            .await
            .unwrap();
        assert_eq!(stream.version(), 1, "{id:?}");
        assert_eq!(stream.events[0].aggregate_id, id);
    }
    assert_eq!(db.count("SELECT count(*) FROM {heads}").await, 4);
    drop(conn);
    db.drop().await;
}

/// Locking a new aggregate holds its other writers off (they queue on the
/// aggregate's lock row), and creators of other new aggregates, whose
/// head rows would share a gap of the heads table, neither wait nor
/// deadlock.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn locking_a_new_aggregate_excludes_its_writers_and_no_one_else() {
    let db = std::sync::Arc::new(MySqlDb::new().await);
    let mut holder = db.pool.begin().await.unwrap();
    let mut neighbour = db.pool.begin().await.unwrap();
    for (tx, id) in [(&mut *holder, "new-a"), (&mut *neighbour, "new-b")] {
        let version = db
            .store
            .lock_aggregate(tx, ("Billing", "Account", id))
            .await
            .unwrap();
        assert_eq!(version, 0);
    }
    let mut writer = db.pool.acquire().await.unwrap().detach();
    let writer_id = connection_id(&mut writer).await;
    let other = tokio::spawn(async move {
        let mut writer = writer;
        let db = MySqlStore::new();
        db.append(&mut writer, ExpectedVersion::NoStream, events("new-a", 1))
            .await
    });
    until_waiting_for_a_lock(&db, writer_id).await;
    // The neighbour creates its aggregate (in the gap of the heads table
    // where the holder's will go), then the holder.
    db.store
        .append(
            &mut *neighbour,
            ExpectedVersion::NoStream,
            events("new-b", 2),
        )
        .await
        .unwrap();
    neighbour.commit().await.unwrap();
    db.store
        .append(&mut *holder, ExpectedVersion::NoStream, events("new-a", 2))
        .await
        .unwrap();
    holder.commit().await.unwrap();
    let refused = other.await.unwrap().unwrap_err();
    assert!(
        matches!(
            refused,
            Error::OptimisticConcurrency {
                expected: ExpectedVersion::NoStream,
                actual: Some(2),
                ..
            }
        ),
        "{refused:?}"
    );
    assert_eq!(db.count("SELECT count(*) FROM {events}").await, 4);
    std::sync::Arc::into_inner(db).unwrap().drop().await;
}

/// One batch sent twice at once, the second while the first is
/// uncommitted: the second waits for the first and returns its result.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_batch_sent_twice_at_once_is_stored_once() {
    let db = std::sync::Arc::new(MySqlDb::new().await);
    let batch = events("twice", 3);
    let mut holder = db.pool.begin().await.unwrap();
    let first = db
        .store
        .append(&mut *holder, ExpectedVersion::Any, batch.clone())
        .await
        .unwrap();
    let mut conn = db.pool.acquire().await.unwrap().detach();
    let id = connection_id(&mut conn).await;
    let again = tokio::spawn({
        let (db, batch) = (db.clone(), batch.clone());
        async move {
            db.store
                .append(&mut conn, ExpectedVersion::Any, batch)
                .await
        }
    });
    until_waiting_for_a_lock(&db, id).await;
    holder.commit().await.unwrap();
    let second = again.await.unwrap().unwrap();
    assert_eq!(second.global_positions, first.global_positions);
    assert_eq!(db.count("SELECT count(*) FROM {events}").await, 3);
    std::sync::Arc::into_inner(db).unwrap().drop().await;
}

/// Checkpoint claims on a checkpoint another transaction is creating do
/// not wait for it, and nobody deadlocks when that transaction rolls back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claims_of_a_checkpoint_being_created_do_not_wait() {
    let db = MySqlDb::new().await;
    let mut creator = db.pool.begin().await.unwrap();
    assert_eq!(
        db.store.claim_checkpoint(&mut *creator, "p").await.unwrap(),
        Some(0)
    );
    let mut others = Vec::new();
    for _ in 0..2 {
        let mut tx = db.pool.begin().await.unwrap();
        assert_eq!(
            db.store.claim_checkpoint(&mut *tx, "p").await.unwrap(),
            None
        );
        others.push(tx);
    }
    creator.rollback().await.unwrap();
    let mut tx = others.pop().unwrap();
    assert_eq!(
        db.store.claim_checkpoint(&mut *tx, "p").await.unwrap(),
        Some(0)
    );
    tx.commit().await.unwrap();
    let mut tx = others.pop().unwrap();
    assert_eq!(
        db.store.claim_checkpoint(&mut *tx, "p").await.unwrap(),
        Some(0)
    );
    tx.commit().await.unwrap();
    db.drop().await;
}

/// A store in a database of its own (MySQL's schemas), migrated from four
/// tasks at once: sqlx's named lock makes them take turns.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_in_another_database_migrates_concurrently() {
    let db = MySqlDb::new().await;
    let other = format!("{}_m", db.database);
    let store = MySqlStore::builder().schema(&other).build().unwrap();
    assert_eq!(store.events_table(), format!("`{other}`.`events`"));
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (store, pool) = (store.clone(), db.pool.clone());
            tokio::spawn(async move { store.migrate(&pool).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let mut conn = db.pool.acquire().await.unwrap();
    let stored = store
        .append(
            &mut *conn,
            ExpectedVersion::NoStream,
            events("elsewhere", 2),
        )
        .await
        .unwrap();
    assert_eq!(stored.global_positions, [1, 2]);
    assert_eq!(db.count("SELECT count(*) FROM {events}").await, 0);
    drop(conn);
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE `{other}`")))
        .execute(&db.pool)
        .await
        .unwrap();
    db.drop().await;
}
