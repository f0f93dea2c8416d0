//! Projection workers as real processes: three worker processes share a
//! partitioned projection while a writer appends; one is frozen with
//! SIGSTOP mid-batch for longer than its lease, another is killed with
//! SIGKILL mid-batch. Every event must be handled exactly once, each
//! aggregate's events in order, and the frozen worker's partitions must be
//! taken over by the others within the lease.
//!
//! The test binary is its own worker: run with `ES_WORKER_SCHEMA` set,
//! the ignored test `worker_process` runs a worker until it is killed.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use es::aggregate::projection::{HandlerError, Notifier, Projection, ProjectionProcessor};
use es::store::{Event, EventStore, ExpectedVersion, PersistedEvent, PostgresStore};
use sqlx::PgConnection;
use support::TestDb;
use support::fixture::{Fixture, Handled};

/// The writer appends at least this many events.
const MIN_EVENTS: usize = 600;
const AGGREGATES: usize = 24;
const LEASE: Duration = Duration::from_secs(3);

/// Records each event in `handled`, slowly enough to be caught mid-batch.
struct Slow {
    worker: String,
}

impl Projection<sqlx::Postgres> for Slow {
    fn name(&self) -> &str {
        "workers"
    }

    async fn handle(
        &self,
        tx: &mut PgConnection,
        event: &PersistedEvent,
    ) -> Result<(), HandlerError> {
        tokio::time::sleep(Duration::from_millis(3)).await;
        TestDb::record(
            tx,
            &Handled {
                event_id: event.event_id,
                global_position: event.global_position,
                aggregate_id: event.aggregate_id.clone(),
                aggregate_version: event.aggregate_version,
                worker: self.worker.clone(),
            },
        )
        .await?;
        Ok(())
    }

    async fn reset(&self, _tx: &mut PgConnection) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// The worker process's body (ignored unless a test spawns it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by a_frozen_and_a_killed_worker_lose_nothing_and_repeat_nothing"]
async fn worker_process() {
    let (Ok(schema), Ok(worker)) = (
        std::env::var("ES_WORKER_SCHEMA"),
        std::env::var("ES_WORKER_NAME"),
    ) else {
        return;
    };
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(3)
        .connect_with(
            support::connect_options()
                .application_name(&worker)
                .options([("search_path", schema.as_str())]),
        )
        .await
        .expect("the worker connects");
    let store = PostgresStore::builder().schema(&schema).build().unwrap();
    let notifier = Notifier::listen(&pool, &store).await.unwrap();
    let processor = ProjectionProcessor::new(
        store,
        pool,
        Slow {
            worker: worker.clone(),
        },
    )
    .with_partitions(6)
    .with_batch_size(5)
    .with_lease(LEASE)
    .with_poll_interval(Duration::from_millis(200))
    .with_wakeup(notifier.subscribe());
    println!("{worker} ready");
    processor
        .run(std::future::pending())
        .await
        .expect("the worker runs until it is killed");
}

/// The worker processes, killed however the test ends (a stopped one is
/// continued first, so that it can die).
struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for worker in &mut self.0 {
            let _ = Command::new("kill")
                .args(["-CONT", &worker.id().to_string()])
                .status();
            let _ = worker.kill();
            let _ = worker.wait();
        }
    }
}

/// A worker process on `schema`.
fn spawn_worker(schema: &str, name: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["worker_process", "--exact", "--ignored", "--nocapture"])
        .env("ES_WORKER_SCHEMA", schema)
        .env("ES_WORKER_NAME", name)
        .env("DATABASE_URL", support::database_url())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn a worker")
}

fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal}");
}

/// Waits until `worker` has a batch open: a transaction that has claimed
/// a partition and is handling events.
async fn mid_batch(db: &TestDb, worker: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE application_name = $1 AND xact_start IS NOT NULL \
               AND query ILIKE '%INSERT INTO handled%'",
        )
        .bind(worker)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if open > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{worker} never opened a batch");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Stops `worker` with SIGSTOP while it holds a batch open (trying again
/// when the stop lands just after its commit).
async fn freeze_mid_batch(db: &TestDb, child: &Child, worker: &str) {
    loop {
        mid_batch(db, worker).await;
        signal(child, "-STOP");
        // the statement in flight finishes: is the transaction left open?
        let mut open = false;
        for _ in 0..40 {
            let state: Option<String> = sqlx::query_scalar(
                "SELECT max(state) FROM pg_stat_activity \
                 WHERE application_name = $1 AND xact_start IS NOT NULL",
            )
            .bind(worker)
            .fetch_one(&db.pool)
            .await
            .unwrap();
            match state.as_deref() {
                Some("idle in transaction") => {
                    open = true;
                    break;
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                None => break,
            }
        }
        if open {
            return;
        }
        signal(child, "-CONT");
    }
}

async fn handled_count(db: &TestDb) -> i64 {
    db.count("SELECT count(*) FROM {schema}.handled").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_and_a_killed_worker_lose_nothing_and_repeat_nothing() {
    let db = TestDb::new().await;
    db.create_read_model().await;
    let names = ["worker-a", "worker-b", "worker-c"];
    let names: Vec<String> = names
        .iter()
        .map(|n| format!("{n}-{}", &db.schema[8..20]))
        .collect();
    let mut guard = Workers(names.iter().map(|n| spawn_worker(&db.schema, n)).collect());
    let workers = &mut guard.0;

    // Appends until told to stop (so that there is always work to be
    // caught in the middle of), then says how many.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (store, pool, stop) = (db.store.clone(), db.pool.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while i < MIN_EVENTS || !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let event = Event::new(
                    "Workers",
                    "Thing",
                    format!("thing-{}", i % AGGREGATES),
                    "Happened",
                    &serde_json::json!({ "i": i }),
                )
                .unwrap();
                let mut conn = pool.acquire().await.unwrap();
                store
                    .append(&mut *conn, ExpectedVersion::Any, vec![event])
                    .await
                    .unwrap();
                if i % 20 == 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                i += 1;
            }
            i
        })
    };

    freeze_mid_batch(&db, &workers[0], &names[0]).await;
    let frozen_at = Instant::now();
    let before = handled_count(&db).await;
    // The others go on, and take the frozen worker's partitions over
    // after its lease: wait until every event stored when it froze is
    // handled (its batch's events among them).
    let head: i64 = db
        .count("SELECT coalesce(max(global_position), 0) FROM {schema}.events")
        .await;
    loop {
        let (stored, handled): (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(db.sql(
            "SELECT (SELECT count(*) FROM {schema}.events WHERE global_position <= $1), \
                    (SELECT count(*) FROM {schema}.handled WHERE global_position <= $1)",
        )))
        .bind(head)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if handled == stored {
            break;
        }
        if frozen_at.elapsed() > LEASE * 10 {
            let rows: Vec<(Option<String>, Option<String>, Option<String>)> = sqlx::query_as(
                "SELECT state, wait_event, left(query, 80) FROM pg_stat_activity \
                 WHERE application_name = $1",
            )
            .bind(&names[0])
            .fetch_all(&db.pool)
            .await
            .unwrap();
            panic!(
                "the frozen worker's partitions were not taken over ({handled} of {stored}): {rows:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let released = frozen_at.elapsed();

    // Kill the second worker inside a batch.
    mid_batch(&db, &names[1]).await;
    signal(&workers[1], "-KILL");
    let _ = workers[1].wait();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let events = writer.await.unwrap();
    // everything is handled by the third (the first is still frozen)
    let deadline = Instant::now() + Duration::from_secs(180);
    while handled_count(&db).await < events as i64 {
        assert!(Instant::now() < deadline, "not every event was handled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all_handled = frozen_at.elapsed();
    // The frozen worker wakes: its batch is gone, it commits nothing twice.
    signal(&workers[0], "-CONT");
    tokio::time::sleep(LEASE).await; // its retries, had they committed, would show by now

    // the workers go before their schema does
    drop(guard);
    let rows = db.handled().await;
    assert_eq!(rows.len(), events, "every event handled exactly once");
    let mut last = std::collections::HashMap::new();
    for row in &rows {
        let version = last.entry(row.aggregate_id.clone()).or_insert(0);
        assert_eq!(
            row.aggregate_version,
            *version + 1,
            "{} in order",
            row.aggregate_id
        );
        *version = row.aggregate_version;
    }
    eprintln!(
        "workers: lease {LEASE:?}; everything stored at the freeze was handled {released:?} after it \
         ({before} handled then); all {events} handled {all_handled:?} after it, each once and in order"
    );
    db.drop().await;
}
