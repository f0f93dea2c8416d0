//! Rebuilds beside running workers, written once for every backend: a
//! rebuild owns every partition before it clears the read model, so that
//! no batch of a worker commits between the reset and the replay, and
//! every event ends up in the read model exactly once.

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use es::aggregate::projection::{HandlerError, Projection, ProjectionError, ProjectionProcessor};
use es::store::{Event, EventStore, ExpectedVersion, PersistedEvent};
use serde_json::json;
use tokio::sync::{Semaphore, oneshot, watch};

use super::projection::{Behaviour, Recorder};
use crate::support::Fixture;

/// Aggregates the writers append to, round robin.
const AGGREGATES: usize = 12;
/// Partitions of the projection; two workers share them.
const PARTITIONS: u32 = 4;
/// Rounds of the test: in each, the writers append `PER_ROUND` events
/// while two rebuilds (each with a pool of its own, as two processes)
/// run at once beside the workers.
const ROUNDS: usize = 8;
const PER_ROUND: usize = 24;

/// Counts each aggregate's events in table `tally`, with the version of
/// the last one handled: as long as each event is handled once, in order,
/// `events == last_version` on every row. A read model without a unique
/// key: handling an event twice would count it twice, silently.
pub struct Tally<F> {
    worker_slowness: Duration,
    _fixture: PhantomData<fn() -> F>,
}

impl<F: Fixture> Tally<F> {
    fn new(worker_slowness: Duration) -> Self {
        Self {
            worker_slowness,
            _fixture: PhantomData,
        }
    }

    async fn create_table(db: &F) {
        let mut conn = db.pool().acquire().await.unwrap();
        F::execute_on(
            &mut conn,
            "CREATE TABLE tally (n BIGINT NOT NULL PRIMARY KEY, events BIGINT NOT NULL, \
             last_version BIGINT NOT NULL)"
                .to_owned(),
        )
        .await
        .unwrap();
        let rows: Vec<String> = (0..AGGREGATES).map(|n| format!("({n}, 0, 0)")).collect();
        F::execute_on(
            &mut conn,
            format!(
                "INSERT INTO tally (n, events, last_version) VALUES {}",
                rows.join(", ")
            ),
        )
        .await
        .unwrap();
    }

    /// `(events, last_version)` of each aggregate, in aggregate order.
    async fn rows(db: &F) -> Vec<(i64, i64)> {
        let mut conn = db.pool().acquire().await.unwrap();
        F::pairs_on(
            &mut conn,
            "SELECT events, last_version FROM tally ORDER BY n".to_owned(),
        )
        .await
        .unwrap()
    }
}

impl<F: Fixture> Projection<F::Db> for Tally<F> {
    fn name(&self) -> &str {
        "tally"
    }

    async fn handle(
        &self,
        tx: &mut <F::Db as sqlx::Database>::Connection,
        event: &PersistedEvent,
    ) -> Result<(), HandlerError> {
        if !self.worker_slowness.is_zero() {
            tokio::time::sleep(self.worker_slowness).await;
        }
        let n: i64 = event
            .aggregate_id
            .strip_prefix("Rb-")
            .and_then(|n| n.parse().ok())
            .ok_or("not an aggregate of the test")?;
        F::execute_on(
            tx,
            format!(
                "UPDATE tally SET events = events + 1, last_version = {} WHERE n = {n}",
                event.aggregate_version
            ),
        )
        .await?;
        Ok(())
    }

    async fn reset(
        &self,
        tx: &mut <F::Db as sqlx::Database>::Connection,
    ) -> Result<(), HandlerError> {
        F::execute_on(
            tx,
            "UPDATE tally SET events = 0, last_version = 0".to_owned(),
        )
        .await?;
        Ok(())
    }
}

/// Writers that append one event per credit, round robin over the
/// test's aggregates, until the credits are closed.
struct Writers {
    credits: Arc<Semaphore>,
    appended: watch::Receiver<u64>,
    tasks: Vec<tokio::task::JoinHandle<Vec<PersistedEvent>>>,
}

impl Writers {
    fn start<F: Fixture>(db: &Arc<F>, writers: usize) -> Self {
        let credits = Arc::new(Semaphore::new(0));
        let (count, appended) = watch::channel(0u64);
        let count = Arc::new(count);
        let next = Arc::new(AtomicU64::new(0));
        let tasks = (0..writers)
            .map(|_| {
                let (db, credits, count, next) =
                    (db.clone(), credits.clone(), count.clone(), next.clone());
                tokio::spawn(async move {
                    let mut stored = Vec::new();
                    while let Ok(credit) = credits.acquire().await {
                        credit.forget();
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        let event = Event::new(
                            "Rebuild",
                            "Thing",
                            format!("Rb-{}", i as usize % AGGREGATES),
                            "Happened",
                            &json!({ "i": i }),
                        )
                        .unwrap();
                        let mut conn = db.pool().acquire().await.unwrap();
                        let mut appended = db
                            .store()
                            .append(&mut *conn, ExpectedVersion::Any, vec![event])
                            .await
                            .unwrap();
                        stored.push(appended.events.remove(0));
                        count.send_modify(|n| *n += 1);
                    }
                    stored
                })
            })
            .collect();
        Self {
            credits,
            appended,
            tasks,
        }
    }

    /// Lets the writers append `events` more, and returns once `started`
    /// of them are committed (so that the workers have batches to work on).
    async fn append(&mut self, events: usize, started: usize) {
        let target = *self.appended.borrow() + started as u64;
        self.credits.add_permits(events);
        self.appended
            .wait_for(|n| *n >= target)
            .await
            .expect("the writers run");
    }

    /// Stops the writers once their credits are used, and returns every
    /// event they appended.
    async fn finish(mut self) -> Vec<PersistedEvent> {
        let target = (self.appended.borrow().to_owned()) + self.credits.available_permits() as u64;
        self.appended.wait_for(|n| *n >= target).await.unwrap();
        self.credits.close();
        let mut all = Vec::new();
        for task in self.tasks {
            all.extend(task.await.unwrap());
        }
        all.sort_by_key(|e| e.global_position);
        all
    }
}

/// What the test needs of a read model.
trait Model<F: Fixture>: Projection<F::Db> + Sized {
    /// Creates the read model's tables.
    fn create(db: &F) -> impl std::future::Future<Output = ()> + Send;
    /// The projection a worker (`slow`) or a rebuilder runs.
    fn make(worker: &str, slow: bool) -> Self;
    /// Checks the read model as it is (with workers running): nothing in
    /// it twice.
    fn check_now(db: &F) -> impl std::future::Future<Output = ()> + Send;
    /// Checks that the read model holds `events`, each once.
    fn check_all(db: &F, events: &[PersistedEvent])
    -> impl std::future::Future<Output = ()> + Send;
}

impl<F: Fixture> Model<F> for Recorder<F> {
    async fn create(db: &F) {
        db.create_read_model().await;
    }

    fn make(worker: &str, slow: bool) -> Self {
        let behaviour = Behaviour::default();
        if slow {
            *behaviour.slow.lock().unwrap() = Duration::from_millis(1);
        }
        let mut recorder = Recorder::new("rebuilt_beside_workers", worker, Arc::new(behaviour));
        recorder.filter = es::store::EventFilter::all().bounded_context("Rebuild");
        recorder
    }

    async fn check_now(_db: &F) {
        // the unique key refuses a second row of an event: the batch that
        // tried would have failed its worker or the rebuild
    }

    async fn check_all(db: &F, events: &[PersistedEvent]) {
        let mut handled: Vec<i64> = db
            .handled()
            .await
            .iter()
            .map(|r| r.global_position)
            .collect();
        handled.sort();
        let expected: Vec<i64> = events.iter().map(|e| e.global_position).collect();
        assert_eq!(handled, expected, "every event once in the read model");
    }
}

impl<F: Fixture> Model<F> for Tally<F> {
    async fn create(db: &F) {
        Tally::create_table(db).await;
    }

    fn make(_worker: &str, slow: bool) -> Self {
        Tally::new(if slow {
            Duration::from_millis(1)
        } else {
            Duration::ZERO
        })
    }

    async fn check_now(db: &F) {
        for (n, (events, last_version)) in Tally::rows(db).await.into_iter().enumerate() {
            assert_eq!(
                events, last_version,
                "aggregate Rb-{n}: {events} events counted up to version {last_version}"
            );
        }
    }

    async fn check_all(db: &F, events: &[PersistedEvent]) {
        let mut expected = vec![(0i64, 0i64); AGGREGATES];
        for event in events {
            let n: usize = event.aggregate_id["Rb-".len()..].parse().unwrap();
            expected[n].0 += 1;
            expected[n].1 = expected[n].1.max(event.aggregate_version);
        }
        assert_eq!(Tally::rows(db).await, expected, "each event counted once");
    }
}

/// Two workers run a partitioned projection while writers append; in each
/// round two rebuilds (two pools, as two processes) run at once. Every
/// rebuild succeeds, no batch fails, and at the end the read model holds
/// every event exactly once.
async fn rebuilds_beside_running_workers<F: Fixture, M: Model<F>>() {
    let db = Arc::new(F::create().await);
    M::create(&db).await;
    let mut writers = Writers::start(&db, 2);
    writers.append(PER_ROUND, PER_ROUND).await;
    let (stop, stopped) = watch::channel(false);
    let mut workers = Vec::new();
    for w in 0..2 {
        let processor = ProjectionProcessor::new(
            db.store().clone(),
            db.another_pool().await,
            // slow workers are caught mid-batch (SQLite's one writer
            // serialises the batches anyway)
            M::make(&format!("w{w}"), !F::SINGLE_WRITER),
        )
        .with_partitions(PARTITIONS)
        .with_batch_size(5)
        .with_poll_interval(Duration::from_millis(10));
        let mut stopped = stopped.clone();
        workers.push(tokio::spawn(async move {
            processor
                .run(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await
        }));
    }
    let mut rebuilders = Vec::new();
    for r in 0..2 {
        rebuilders.push(Arc::new(
            ProjectionProcessor::new(
                db.store().clone(),
                db.another_pool().await,
                M::make(&format!("rebuild{r}"), false),
            )
            .with_partitions(PARTITIONS)
            .with_batch_size(20),
        ));
    }
    let mut rebuilt = 0;
    for round in 0..ROUNDS {
        // batches in flight in the workers when the rebuilds begin
        writers.append(PER_ROUND, 2).await;
        let rebuilds: Vec<_> = rebuilders
            .iter()
            .map(|p| {
                let p = p.clone();
                tokio::spawn(async move { p.rebuild().await })
            })
            .collect();
        for rebuild in rebuilds {
            match rebuild.await.unwrap() {
                Ok(_) => rebuilt += 1,
                Err(error) => panic!("rebuild in round {round} failed: {error}"),
            }
        }
        M::check_now(&db).await;
        for worker in &workers {
            assert!(!worker.is_finished(), "a worker stopped in round {round}");
        }
    }
    let events = writers.finish().await;
    // what the workers have not handled yet
    ProjectionProcessor::new(
        db.store().clone(),
        db.pool().clone(),
        M::make("last", false),
    )
    .with_partitions(PARTITIONS)
    .catch_up()
    .await
    .unwrap();
    stop.send(true).unwrap();
    for worker in workers {
        let ran: Result<(), ProjectionError> = worker.await.unwrap();
        ran.expect("a worker failed");
    }
    M::check_now(&db).await;
    M::check_all(&db, &events).await;
    assert_eq!(rebuilt, 2 * ROUNDS);
    drop(rebuilders);
    if let Ok(db) = Arc::try_unwrap(db) {
        db.finish().await;
    }
}

/// With a read model whose unique key refuses an event handled twice.
pub async fn a_rebuild_beside_partitioned_workers_handles_each_event_once<F: Fixture>() {
    rebuilds_beside_running_workers::<F, Recorder<F>>().await;
}

/// With a read model that counts, where an event handled twice would be
/// counted twice without an error.
pub async fn a_rebuild_beside_partitioned_workers_counts_each_event_once<F: Fixture>() {
    rebuilds_beside_running_workers::<F, Tally<F>>().await;
}

/// Writes each event's position into `versioned_v<version>` (the
/// position is the key); its `reset` can be made to stop until the test
/// says to go on.
pub struct Versioned<F> {
    version: u32,
    pause: std::sync::Mutex<Option<(oneshot::Sender<()>, oneshot::Receiver<()>)>>,
    _fixture: PhantomData<fn() -> F>,
}

impl<F: Fixture> Versioned<F> {
    fn new(version: u32) -> Self {
        Self {
            version,
            pause: std::sync::Mutex::new(None),
            _fixture: PhantomData,
        }
    }

    /// Makes the next `reset` stop: the first receiver completes when it
    /// has stopped (inside the rebuild's transaction), and it goes on when
    /// the returned sender is used or dropped.
    fn pause_reset(&self) -> (oneshot::Receiver<()>, oneshot::Sender<()>) {
        let (reached, reached_rx) = oneshot::channel();
        let (resume_tx, resume) = oneshot::channel();
        *self.pause.lock().unwrap() = Some((reached, resume));
        (reached_rx, resume_tx)
    }

    async fn positions(db: &F, version: u32) -> Vec<i64> {
        let mut conn = db.pool().acquire().await.unwrap();
        F::pairs_on(
            &mut conn,
            format!("SELECT position, position FROM versioned_v{version} ORDER BY position"),
        )
        .await
        .unwrap()
        .into_iter()
        .map(|(p, _)| p)
        .collect()
    }
}

impl<F: Fixture> Projection<F::Db> for Versioned<F> {
    fn name(&self) -> &str {
        "versioned"
    }

    fn version(&self) -> u32 {
        self.version
    }

    async fn handle(
        &self,
        tx: &mut <F::Db as sqlx::Database>::Connection,
        event: &PersistedEvent,
    ) -> Result<(), HandlerError> {
        F::execute_on(
            tx,
            format!(
                "INSERT INTO versioned_v{} (position) VALUES ({})",
                self.version, event.global_position
            ),
        )
        .await?;
        Ok(())
    }

    async fn reset(
        &self,
        tx: &mut <F::Db as sqlx::Database>::Connection,
    ) -> Result<(), HandlerError> {
        let pause = self.pause.lock().unwrap().take();
        if let Some((reached, resume)) = pause {
            reached.send(()).ok();
            resume.await.ok();
        }
        F::execute_on(tx, format!("DELETE FROM versioned_v{}", self.version)).await?;
        Ok(())
    }
}

/// A rebuild of version 1 and a switch to version 2 at the same moment:
/// the rebuild holds the lock a switch takes, from before it resets until
/// it commits, so the switch waits for it (and a rebuild that came after
/// the switch would find its version superseded). Exactly one version is
/// active at the end, version 2 with every event once, and version 1 is
/// superseded, not brought back to life by the rebuild's stale record.
pub async fn a_rebuild_and_a_switch_to_a_new_version_leave_one_active_version<F: Fixture>() {
    let db = Arc::new(F::create().await);
    {
        let mut conn = db.pool().acquire().await.unwrap();
        for version in [1, 2] {
            F::execute_on(
                &mut conn,
                format!("CREATE TABLE versioned_v{version} (position BIGINT NOT NULL PRIMARY KEY)"),
            )
            .await
            .unwrap();
        }
    }
    let mut writers = Writers::start(&db, 1);
    writers.append(20, 20).await;
    let v1 = Arc::new(ProjectionProcessor::new(
        db.store().clone(),
        db.pool().clone(),
        Versioned::<F>::new(1),
    ));
    assert_eq!(v1.catch_up().await.unwrap().events, 20);
    let v2 = Arc::new(ProjectionProcessor::new(
        db.store().clone(),
        db.another_pool().await,
        Versioned::<F>::new(2),
    ));
    assert_eq!(v2.catch_up().await.unwrap().events, 20);

    let (reached, resume) = v1.projection().pause_reset();
    let rebuild = {
        let v1 = v1.clone();
        tokio::spawn(async move { v1.rebuild().await })
    };
    reached.await.expect("the rebuild resets");
    let mut switch = {
        let v2 = v2.clone();
        tokio::spawn(async move { v2.switch_when_caught_up().await })
    };
    // The switch waits for the rebuild (it cannot end while the reset is
    // stopped); let the rebuild go on once it has ended or after a moment.
    // Either way the outcome below must hold.
    let switched_early = tokio::time::timeout(Duration::from_millis(300), &mut switch)
        .await
        .ok();
    resume.send(()).ok();
    let rebuilt = rebuild.await.unwrap();
    let switched = match switched_early {
        Some(switched) => switched,
        None => switch.await,
    }
    .unwrap()
    .expect("the switch succeeds");
    assert_eq!(switched.version, 2);
    match rebuilt {
        Ok(done) => assert_eq!(done.events, 20, "the rebuild replayed version 1"),
        Err(ProjectionError::Superseded {
            version: 1,
            active: 2,
            ..
        }) => {}
        Err(other) => panic!("the rebuild failed: {other}"),
    }
    let versions = v2.versions().await.unwrap();
    let states: Vec<(u32, es::store::VersionState)> =
        versions.iter().map(|v| (v.version, v.state)).collect();
    assert_eq!(
        states,
        [
            (1, es::store::VersionState::Superseded),
            (2, es::store::VersionState::Active)
        ],
        "one active version"
    );
    let all: Vec<i64> = writers
        .finish()
        .await
        .iter()
        .map(|e| e.global_position)
        .collect();
    assert_eq!(Versioned::<F>::positions(&db, 2).await, all);
    drop((v1, v2));
    if let Ok(db) = Arc::try_unwrap(db) {
        db.finish().await;
    }
}

/// A rebuild frozen while it holds every partition (stopped inside its
/// reset) loses them when its lease runs out, as a frozen worker does: a
/// worker then takes the partition over, and the frozen rebuild cannot
/// commit its reset. (SQLite has one writer: a frozen holder keeps the
/// lock until it resumes.)
pub async fn a_frozen_rebuild_loses_the_partitions_when_its_lease_runs_out<F: Fixture>() {
    if F::SINGLE_WRITER {
        return;
    }
    let db = Arc::new(F::create().await);
    {
        let mut conn = db.pool().acquire().await.unwrap();
        F::execute_on(
            &mut conn,
            "CREATE TABLE versioned_v1 (position BIGINT NOT NULL PRIMARY KEY)".to_owned(),
        )
        .await
        .unwrap();
    }
    let mut writers = Writers::start(&db, 1);
    writers.append(10, 10).await;
    let lease = es::aggregate::projection::MIN_LEASE;
    let rebuilder = Arc::new(
        ProjectionProcessor::new(
            db.store().clone(),
            db.another_pool().await,
            Versioned::<F>::new(1),
        )
        .with_lease(lease),
    );
    assert_eq!(rebuilder.catch_up().await.unwrap().events, 10);
    let (reached, resume) = rebuilder.projection().pause_reset();
    let rebuild = {
        let rebuilder = rebuilder.clone();
        tokio::spawn(async move { rebuilder.rebuild().await })
    };
    reached.await.expect("the rebuild resets");
    let frozen_at = std::time::Instant::now();
    writers.append(5, 5).await;
    let worker = ProjectionProcessor::new(
        db.store().clone(),
        db.pool().clone(),
        Versioned::<F>::new(1),
    )
    .with_lease(lease);
    // waits while the frozen rebuild holds the partition, then takes it
    let done = worker.catch_up().await.unwrap();
    let takeover = frozen_at.elapsed();
    assert_eq!(done.events, 5, "the worker goes on from its checkpoint");
    assert!(
        takeover + Duration::from_millis(500) >= lease,
        "taken over after the lease, not before: {takeover:?}"
    );
    resume.send(()).ok();
    // The frozen reset cannot commit: the rebuild fails, or (a commit
    // refused as a lost connection is tried again) resets and replays anew.
    match rebuild.await.unwrap() {
        Ok(done) => assert_eq!(done.events, 15),
        Err(ProjectionError::Reset { .. } | ProjectionError::Store { .. }) => {}
        Err(other) => panic!("{other}"),
    }
    let all: Vec<i64> = writers
        .finish()
        .await
        .iter()
        .map(|e| e.global_position)
        .collect();
    assert_eq!(Versioned::<F>::positions(&db, 1).await, all, "each once");
    println!(
        "{}: lease {lease:?}, partition taken from the frozen rebuild after {takeover:?}",
        std::any::type_name::<F>()
    );
    drop(rebuilder);
    if let Ok(db) = Arc::try_unwrap(db) {
        db.finish().await;
    }
}
