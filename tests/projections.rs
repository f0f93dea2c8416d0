//! Projections against PostgreSQL: the conformance suite, plus what only
//! PostgreSQL has (LISTEN/NOTIFY, transactions committing out of order,
//! a processor's connection killed mid-batch).

mod conformance;
mod support;

use support::TestDb;

projection_conformance_tests!(TestDb);

use std::sync::Arc;
use std::time::{Duration, Instant};

use conformance::projection::{Behaviour, Recorder};
use es::aggregate::projection::{Notifier, ProjectionError, ProjectionProcessor};
use es::store::{Event, EventStore, ExpectedVersion, PersistedEvent};
use support::Fixture;

fn recorder(name: &str, worker: &str) -> Recorder<TestDb> {
    Recorder::new(name, worker, Arc::new(Behaviour::default()))
}

async fn append_one(db: &TestDb, conn: &mut sqlx::PgConnection, id: &str) -> PersistedEvent {
    let event = Event::new("Billing", "Account", id, "Happened", &serde_json::json!({})).unwrap();
    db.store
        .append(conn, ExpectedVersion::Any, vec![event])
        .await
        .unwrap()
        .events
        .remove(0)
}

async fn wait_for_rows(db: &TestDb, rows: usize, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if db.handled().await.len() >= rows {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{rows} rows not handled within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Transaction A draws a position, B draws a later one and commits first:
/// the processor must not handle B before A commits, and then handles A
/// before B.
#[tokio::test]
async fn the_processor_waits_for_an_earlier_transaction_still_open() {
    let db = TestDb::new().await;
    db.create_read_model().await;
    let p = ProjectionProcessor::new(db.store.clone(), db.pool.clone(), recorder("ordered", "w"));
    let mut a = db.pool.begin().await.unwrap();
    let event_a = append_one(&db, &mut a, "a").await;
    let mut b = db.pool.begin().await.unwrap();
    let event_b = append_one(&db, &mut b, "b").await;
    b.commit().await.unwrap();
    assert_eq!(p.catch_up().await.unwrap().events, 0);
    assert!(db.handled().await.is_empty());
    a.commit().await.unwrap();
    assert_eq!(p.catch_up().await.unwrap().events, 2);
    let handled: Vec<i64> = db
        .handled()
        .await
        .iter()
        .map(|r| r.global_position)
        .collect();
    assert_eq!(handled, [event_a.global_position, event_b.global_position]);
    db.drop().await;
}

/// With a polling interval of a minute, an appended event is handled
/// within a fraction of a second: the append's notification wakes the
/// processor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_wake_a_live_processor_at_once() {
    let db = TestDb::new().await;
    db.create_read_model().await;
    let notifier = Notifier::listen(&db.pool, &db.store).await.unwrap();
    let p = ProjectionProcessor::new(db.store.clone(), db.pool.clone(), recorder("live", "w"))
        .with_poll_interval(Duration::from_secs(60))
        .with_wakeup(notifier.subscribe());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(async move {
        p.run(async {
            stopped.await.ok();
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await; // the processor is idle now
    let mut latencies = Vec::new();
    for i in 0..5 {
        let mut conn = db.pool.acquire().await.unwrap();
        append_one(&db, &mut conn, "a").await;
        drop(conn);
        latencies.push(wait_for_rows(&db, i + 1, Duration::from_secs(5)).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("append-to-handled latencies: {latencies:?}");
    assert!(
        latencies.iter().all(|l| *l < Duration::from_secs(2)),
        "{latencies:?}"
    );
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    db.drop().await;
}

/// The listener's connection is killed; it reconnects, and the next
/// append still wakes the processor long before the polling interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_listener_connection_reconnects() {
    let db = TestDb::new().await;
    db.create_read_model().await;
    let notifier = Notifier::listen(&db.pool, &db.store).await.unwrap();
    let p = ProjectionProcessor::new(db.store.clone(), db.pool.clone(), recorder("relisten", "w"))
        .with_poll_interval(Duration::from_secs(60))
        .with_wakeup(notifier.subscribe());
    let running = tokio::spawn(async move { p.run(std::future::pending()).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The listener's connection is the one registered with the store.
    let killed: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(
        db.sql("SELECT count(pg_terminate_backend(pid)) FROM {schema}.events_listeners"),
    ))
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(killed, 1, "the listener's connection was found and killed");
    tokio::time::sleep(Duration::from_millis(500)).await; // time to reconnect
    let mut conn = db.pool.acquire().await.unwrap();
    append_one(&db, &mut conn, "a").await;
    drop(conn);
    let latency = wait_for_rows(&db, 1, Duration::from_secs(5)).await;
    println!("latency after reconnecting: {latency:?}");
    running.abort();
    db.drop().await;
}

/// The processor's connection dies in the middle of a batch (as when its
/// process crashes): the batch is rolled back, and the next processor
/// handles every event exactly once. (Only this test's connections are
/// killed: they carry its schema's name as application name.)
///
/// The handler stops in the middle of the second batch, holding its
/// transaction, until the connections are dead: the kill cannot land
/// between two batches, where the pool would replace the dead connection
/// unnoticed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_killed_mid_batch_loses_nothing_and_repeats_nothing() {
    let db = TestDb::new().await;
    db.create_read_model().await;
    let mut conn = db.pool.acquire().await.unwrap();
    let mut events = Vec::new();
    for i in 0..40 {
        events.push(append_one(&db, &mut conn, &format!("agg-{}", i % 3)).await);
    }
    drop(conn);
    let behaviour = Arc::new(Behaviour::default());
    // the third event of the second batch of 10
    let (reached, resume) = behaviour.pause_at(13);
    let doomed_app = format!("{}_doomed", &db.schema[..40]);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_with(
            support::connect_options()
                .application_name(&doomed_app)
                .options([("search_path", db.schema.as_str())]),
        )
        .await
        .unwrap();
    let doomed = ProjectionProcessor::new(
        db.store.clone(),
        pool.clone(),
        Recorder::<TestDb>::new("crash", "doomed", behaviour),
    )
    .with_batch_size(10);
    let running = tokio::spawn(async move { doomed.catch_up().await });
    tokio::time::timeout(Duration::from_secs(60), reached)
        .await
        .expect("the handler reaches the second batch")
        .unwrap();
    assert_eq!(
        db.handled().await.len(),
        10,
        "the first batch is committed, the second is open"
    );
    // Kill every connection of the processor, the one holding the open
    // batch among them, and wait until each has exited.
    let (in_transaction, killed, connections): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state = 'idle in transaction'), \
                count(*) FILTER (WHERE pg_terminate_backend(pid, 30000)), \
                count(*) \
         FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(&doomed_app)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(in_transaction, 1, "the open batch's connection was found");
    assert_eq!(killed, connections, "every connection was terminated");
    resume.send(()).unwrap();
    let outcome = running.await.unwrap();
    assert!(
        matches!(outcome, Err(ProjectionError::Store { .. })),
        "the killed processor reports a store error, got {outcome:?}"
    );
    assert_eq!(
        db.handled().await.len(),
        10,
        "the killed batch is rolled back whole"
    );
    let survivor = ProjectionProcessor::new(
        db.store.clone(),
        db.pool.clone(),
        recorder("crash", "survivor"),
    );
    survivor.catch_up().await.unwrap();
    let handled: Vec<i64> = db
        .handled()
        .await
        .iter()
        .map(|r| r.global_position)
        .collect();
    assert_eq!(
        handled,
        events.iter().map(|e| e.global_position).collect::<Vec<_>>()
    );
    pool.close().await;
    db.drop().await;
}

/// With durable commits off, batches commit asynchronously (the setting is
/// visible inside the handler's transaction) and still handle each event
/// once.
#[tokio::test]
async fn batches_can_commit_without_waiting_for_durability() {
    struct Probe;
    impl es::aggregate::Projection for Probe {
        fn name(&self) -> &str {
            "probe"
        }
        async fn handle(
            &self,
            tx: &mut sqlx::PgConnection,
            event: &PersistedEvent,
        ) -> Result<(), es::aggregate::projection::HandlerError> {
            let setting: String =
                sqlx::query_scalar("SELECT current_setting('synchronous_commit')")
                    .fetch_one(&mut *tx)
                    .await?;
            assert_eq!(setting, "off");
            sqlx::query("INSERT INTO handled (event_id, global_position, aggregate_id, aggregate_version, worker) VALUES ($1, $2, $3, $4, 'probe')")
                .bind(event.event_id)
                .bind(event.global_position)
                .bind(&event.aggregate_id)
                .bind(event.aggregate_version)
                .execute(&mut *tx)
                .await?;
            Ok(())
        }
    }
    let db = TestDb::new().await;
    db.create_read_model().await;
    let mut conn = db.pool.acquire().await.unwrap();
    for i in 0..25 {
        append_one(&db, &mut conn, &format!("a{}", i % 4)).await;
    }
    drop(conn);
    let p = ProjectionProcessor::new(db.store.clone(), db.pool.clone(), Probe)
        .with_batch_size(4)
        .with_durable_commits(false);
    assert_eq!(p.catch_up().await.unwrap().events, 25);
    assert_eq!(db.handled().await.len(), 25);
    // outside the processor's transactions the session setting is untouched
    let setting: String = sqlx::query_scalar("SELECT current_setting('synchronous_commit')")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(setting, "on");
    db.drop().await;
}

/// Appends notify only while a listener is registered: a notifying
/// transaction takes a database-wide lock to commit.
#[tokio::test]
async fn appends_notify_only_while_someone_listens() {
    use sqlx::postgres::PgListener;

    let db = TestDb::new().await;
    let channel = db.store.notification_channel();
    // A bare LISTEN, not registered with the store.
    let mut listener = PgListener::connect_with(&db.pool).await.unwrap();
    listener.listen(&channel).await.unwrap();
    let mut conn = db.pool.acquire().await.unwrap();
    append_one(&db, &mut conn, "a").await;
    let heard = tokio::time::timeout(Duration::from_millis(300), listener.recv()).await;
    assert!(heard.is_err(), "notified although nobody is registered");

    // Registered: every append notifies.
    let mut registered = PgListener::connect_with(&db.pool).await.unwrap();
    registered.listen(&channel).await.unwrap();
    db.store
        .register_listener(sqlx::Acquire::acquire(&mut registered).await.unwrap())
        .await
        .unwrap();
    append_one(&db, &mut conn, "a").await;
    let heard = tokio::time::timeout(Duration::from_secs(5), registered.recv())
        .await
        .expect("notified once a listener is registered")
        .unwrap();
    assert_eq!(heard.channel(), channel);
    // (the unregistered LISTEN hears it too: the channel is the same)
    listener.recv().await.unwrap();
    drop(conn);
    drop((listener, registered));
    db.drop().await;
}
