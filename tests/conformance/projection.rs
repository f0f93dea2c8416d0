//! Projection processing, written once for every backend.

use std::collections::{HashMap, HashSet};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use es::RetryPolicy;
use es::aggregate::projection::{
    BatchFailure, ErrorPolicy, HandlerError, Projection, ProjectionError, ProjectionProcessor,
    Transient,
};
use es::store::{
    CheckpointHolder, CheckpointStore, Event, EventFilter, EventStore, ExpectedVersion,
    PersistedEvent, ProjectionStore,
};
use serde_json::json;

use crate::support::Fixture;
use crate::support::fixture::Handled;

/// How the test projection misbehaves, shared with the test.
#[derive(Default)]
pub struct Behaviour {
    /// Fail on this event ...
    pub fail_on: Mutex<Option<uuid::Uuid>>,
    /// ... this many more times (`u32::MAX`: always).
    pub failures_left: AtomicU32,
    /// Sleep this long on every event (to be caught mid-batch).
    pub slow: Mutex<Duration>,
    /// Fail whole batches without saying which event (as a bulk writer
    /// would).
    pub whole_batch: std::sync::atomic::AtomicBool,
    /// Fail every batch as a whole, although each event passes on its own.
    pub batches_fail: std::sync::atomic::AtomicBool,
    /// Handler calls, failed ones included.
    pub calls: AtomicU64,
    /// Stop in the middle of a handler call until the test says to go on.
    pub pause: Mutex<Option<Pause>>,
    /// Fail as [`Transient`]: what the handler writes to is unavailable.
    pub transient: std::sync::atomic::AtomicBool,
}

/// Where a handler stops, and how it tells the test and hears back from it.
pub struct Pause {
    /// The handler call (1 for the first) that stops, before it writes.
    pub at_call: u64,
    /// Told when that call has stopped, holding its transaction.
    pub reached: tokio::sync::oneshot::Sender<()>,
    /// Waited for before the call goes on.
    pub resume: tokio::sync::oneshot::Receiver<()>,
}

impl Behaviour {
    /// Makes handler call `at_call` stop before it writes: the first
    /// receiver completes when it has stopped (inside its batch's
    /// transaction), and it goes on when the returned sender is used or
    /// dropped.
    pub fn pause_at(
        &self,
        at_call: u64,
    ) -> (
        tokio::sync::oneshot::Receiver<()>,
        tokio::sync::oneshot::Sender<()>,
    ) {
        let (reached, reached_rx) = tokio::sync::oneshot::channel();
        let (resume_tx, resume) = tokio::sync::oneshot::channel();
        *self.pause.lock().unwrap() = Some(Pause {
            at_call,
            reached,
            resume,
        });
        (reached_rx, resume_tx)
    }

    pub fn fail(&self, event: uuid::Uuid, times: u32) {
        *self.fail_on.lock().unwrap() = Some(event);
        self.failures_left.store(times, Ordering::SeqCst);
    }
}

/// Records every event it handles in the fixture's `handled` table.
pub struct Recorder<F> {
    pub name: String,
    pub filter: EventFilter,
    pub worker: String,
    pub behaviour: Arc<Behaviour>,
    _fixture: PhantomData<fn() -> F>,
}

impl<F: Fixture> Recorder<F> {
    pub fn new(name: &str, worker: &str, behaviour: Arc<Behaviour>) -> Self {
        Self {
            name: name.to_owned(),
            filter: EventFilter::all(),
            worker: worker.to_owned(),
            behaviour,
            _fixture: PhantomData,
        }
    }

    async fn handle_one(
        &self,
        tx: &mut <F::Db as sqlx::Database>::Connection,
        event: &PersistedEvent,
    ) -> Result<(), HandlerError> {
        let call = self.behaviour.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let pause = {
            let mut pause = self.behaviour.pause.lock().unwrap();
            match pause.as_ref() {
                Some(p) if p.at_call == call => pause.take(),
                _ => None,
            }
        };
        if let Some(Pause {
            reached, resume, ..
        }) = pause
        {
            reached.send(()).ok();
            resume.await.ok();
        }
        let slow = *self.behaviour.slow.lock().unwrap();
        if !slow.is_zero() {
            tokio::time::sleep(slow).await;
        }
        if *self.behaviour.fail_on.lock().unwrap() == Some(event.event_id) {
            let left = self.behaviour.failures_left.load(Ordering::SeqCst);
            if left > 0 {
                if left != u32::MAX {
                    self.behaviour.failures_left.fetch_sub(1, Ordering::SeqCst);
                }
                let error = format!("boom at {}", event.global_position);
                if self.behaviour.transient.load(Ordering::SeqCst) {
                    return Err(Transient::new(error).into());
                }
                return Err(error.into());
            }
        }
        let row = Handled {
            event_id: event.event_id,
            global_position: event.global_position,
            aggregate_id: event.aggregate_id.clone(),
            aggregate_version: event.aggregate_version,
            worker: self.worker.clone(),
        };
        F::record(tx, &row).await?;
        Ok(())
    }
}

impl<F: Fixture> Projection<F::Db> for Recorder<F> {
    fn name(&self) -> &str {
        &self.name
    }

    fn filter(&self) -> EventFilter {
        self.filter.clone()
    }

    async fn handle(
        &self,
        tx: &mut <F::Db as sqlx::Database>::Connection,
        event: &PersistedEvent,
    ) -> Result<(), HandlerError> {
        self.handle_one(tx, event).await
    }

    async fn handle_batch(
        &self,
        tx: &mut <F::Db as sqlx::Database>::Connection,
        events: &[PersistedEvent],
    ) -> Result<(), BatchFailure> {
        if self.behaviour.batches_fail.load(Ordering::SeqCst) {
            return Err(BatchFailure::whole_batch("the batch as a whole is refused"));
        }
        let whole = self.behaviour.whole_batch.load(Ordering::SeqCst);
        for (index, event) in events.iter().enumerate() {
            if let Err(error) = self.handle_one(tx, event).await {
                return Err(if whole {
                    BatchFailure::whole_batch(error)
                } else {
                    BatchFailure::at(index, error)
                });
            }
        }
        Ok(())
    }

    async fn reset(
        &self,
        tx: &mut <F::Db as sqlx::Database>::Connection,
    ) -> Result<(), HandlerError> {
        F::clear_read_model(tx).await?;
        Ok(())
    }
}

type Processor<F> = ProjectionProcessor<<F as Fixture>::Store, Recorder<F>>;

fn processor<F: Fixture>(db: &F, recorder: Recorder<F>) -> Processor<F> {
    ProjectionProcessor::new(db.store().clone(), db.pool().clone(), recorder).with_batch_size(10)
}

/// Appends `count` events, one per transaction, round robin over
/// `aggregates` aggregates of `bounded_context`/`aggregate_type`.
pub async fn append_events<F: Fixture>(
    db: &F,
    bounded_context: &str,
    aggregate_type: &str,
    aggregates: usize,
    count: usize,
) -> Vec<PersistedEvent> {
    let mut stored = Vec::new();
    for i in 0..count {
        let id = format!("{aggregate_type}-{}", i % aggregates);
        let event = Event::new(
            bounded_context,
            aggregate_type,
            id,
            "Happened",
            &json!({ "i": i }),
        )
        .unwrap();
        let mut conn = db.pool().acquire().await.unwrap();
        let mut result = db
            .store()
            .append(&mut *conn, ExpectedVersion::Any, vec![event])
            .await
            .unwrap();
        stored.push(result.events.remove(0));
    }
    stored
}

fn positions(rows: &[Handled]) -> Vec<i64> {
    rows.iter().map(|r| r.global_position).collect()
}

fn event_positions(events: &[PersistedEvent]) -> Vec<i64> {
    events.iter().map(|e| e.global_position).collect()
}

pub async fn every_event_is_handled_once_in_order<F: Fixture>() {
    let db = F::create().await;
    db.create_read_model().await;
    let events = append_events(&db, "Billing", "Account", 5, 57).await;
    let behaviour = Arc::new(Behaviour::default());
    let p = processor(&db, Recorder::<F>::new("all", "w", behaviour.clone()));
    let done = p.catch_up().await.unwrap();
    assert_eq!(done.events, 57);
    assert_eq!(done.batches, 6);
    assert_eq!(positions(&db.handled().await), event_positions(&events));
    let status = p.status().await.unwrap();
    assert_eq!(status.name, "all");
    assert_eq!(status.checkpoint, events.last().unwrap().global_position);
    assert_eq!((status.head, status.lag), (status.checkpoint, 0));
    // nothing new: nothing handled
    assert_eq!(p.catch_up().await.unwrap().events, 0);
    assert_eq!(behaviour.calls.load(Ordering::SeqCst), 57);
    // the lag shows before the next catch-up
    append_events(&db, "Billing", "Account", 5, 3).await;
    assert_eq!(p.status().await.unwrap().lag, 3);
    db.finish().await;
}

pub async fn a_restarted_processor_resumes_from_its_checkpoint<F: Fixture>() {
    let db = F::create().await;
    db.create_read_model().await;
    let behaviour = Arc::new(Behaviour::default());
    let first = append_events(&db, "Billing", "Account", 3, 30).await;
    processor(&db, Recorder::<F>::new("resume", "a", behaviour.clone()))
        .catch_up()
        .await
        .unwrap();
    let second = append_events(&db, "Billing", "Account", 3, 20).await;
    // a new processor (as after a restart)
    let done = processor(&db, Recorder::<F>::new("resume", "b", behaviour.clone()))
        .catch_up()
        .await
        .unwrap();
    assert_eq!(done.events, 20);
    let handled = db.handled().await;
    assert_eq!(
        positions(&handled),
        [event_positions(&first), event_positions(&second)].concat()
    );
    assert!(handled[..30].iter().all(|r| r.worker == "a"));
    assert!(handled[30..].iter().all(|r| r.worker == "b"));
    db.finish().await;
}

pub async fn a_scoped_projection_sees_only_its_events<F: Fixture>() {
    let db = F::create().await;
    db.create_read_model().await;
    let accounts = append_events(&db, "Billing", "Account", 2, 7).await;
    append_events(&db, "Billing", "Invoice", 2, 5).await;
    let more_accounts = append_events(&db, "Billing", "Account", 2, 4).await;
    append_events(&db, "Shipping", "Account", 2, 5).await;
    append_events(&db, "Shipping", "Parcel", 2, 6).await;
    let mut recorder = Recorder::<F>::new("accounts", "w", Arc::new(Behaviour::default()));
    recorder.filter = EventFilter::all()
        .bounded_context("Billing")
        .aggregate_type("Account");
    let p = processor(&db, recorder);
    let done = p.catch_up().await.unwrap();
    assert_eq!(done.events, 11);
    assert_eq!(
        positions(&db.handled().await),
        [event_positions(&accounts), event_positions(&more_accounts)].concat()
    );
    // the checkpoint moved past the events out of scope at the end
    let status = p.status().await.unwrap();
    assert_eq!(status.lag, 0);
    db.finish().await;
}

pub async fn concurrent_processors_of_one_projection_handle_each_event_once<F: Fixture>() {
    let db = Arc::new(F::create().await);
    db.create_read_model().await;
    let writer = {
        let db = db.clone();
        tokio::spawn(async move { append_events(&*db, "Billing", "Account", 7, 150).await })
    };
    let mut processors = Vec::new();
    for w in 0..4 {
        let db = db.clone();
        processors.push(tokio::spawn(async move {
            let p = processor(
                &*db,
                Recorder::<F>::new("shared", &format!("w{w}"), Arc::new(Behaviour::default())),
            )
            .with_batch_size(7);
            let mut handled = 0;
            for _ in 0..20 {
                handled += p.catch_up().await.unwrap().events;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            handled
        }));
    }
    let events = writer.await.unwrap();
    let mut handled_by_processors = 0;
    for p in processors {
        handled_by_processors += p.await.unwrap();
    }
    // whatever is left after the writer finished
    handled_by_processors += processor(
        &*db,
        Recorder::<F>::new("shared", "last", Arc::new(Behaviour::default())),
    )
    .catch_up()
    .await
    .unwrap()
    .events;
    assert_eq!(handled_by_processors, 150);
    assert_eq!(positions(&db.handled().await), event_positions(&events));
    Arc::into_inner(db).unwrap().finish().await;
}

/// Several workers, each with its own pool, share a partitioned
/// projection; one is stopped mid-batch. Every event is handled exactly
/// once, each aggregate's events in order.
pub async fn partitioned_workers_share_the_work_and_take_over<F: Fixture>() {
    let db = Arc::new(F::create().await);
    db.create_read_model().await;
    const PARTITIONS: u32 = 6;
    let mut workers = Vec::new();
    let mut slow_worker = None;
    for w in 0..3 {
        let pool = db.another_pool().await;
        let behaviour = Arc::new(Behaviour::default());
        if w == 0 {
            // worker 0 is slow, so that stopping it lands mid-batch
            *behaviour.slow.lock().unwrap() = Duration::from_millis(30);
        }
        let p = ProjectionProcessor::new(
            db.store().clone(),
            pool,
            Recorder::<F>::new("partitioned", &format!("w{w}"), behaviour),
        )
        .with_partitions(PARTITIONS)
        .with_batch_size(5)
        .with_poll_interval(Duration::from_millis(20));
        let task = tokio::spawn(async move { p.run(std::future::pending()).await });
        if w == 0 {
            slow_worker = Some(task);
        } else {
            workers.push(task);
        }
    }
    let events = append_events(&*db, "Billing", "Account", 24, 240).await;
    // let worker 0 get into a batch, then kill it
    tokio::time::sleep(Duration::from_millis(150)).await;
    let slow_worker = slow_worker.unwrap();
    slow_worker.abort();
    assert!(slow_worker.await.unwrap_err().is_cancelled());
    let more = append_events(&*db, "Billing", "Account", 24, 60).await;
    let all: Vec<PersistedEvent> = [events, more].concat();
    // wait for the survivors to finish
    let status_of = ProjectionProcessor::new(
        db.store().clone(),
        db.pool().clone(),
        Recorder::<F>::new("partitioned", "status", Arc::new(Behaviour::default())),
    )
    .with_partitions(PARTITIONS);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = status_of.status().await.unwrap();
        assert_eq!(status.partitions.len(), PARTITIONS as usize);
        if status.lag == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "workers did not catch up: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for w in workers {
        w.abort();
    }
    let handled = db.handled().await;
    // exactly once
    let mut seen = HashSet::new();
    assert!(
        handled.iter().all(|r| seen.insert(r.event_id)),
        "an event was handled twice"
    );
    let mut sorted = positions(&handled);
    sorted.sort();
    assert_eq!(sorted, event_positions(&all));
    // in order per aggregate
    let mut last_version: HashMap<&str, i64> = HashMap::new();
    for row in &handled {
        let last = last_version.entry(&row.aggregate_id).or_insert(0);
        assert_eq!(
            row.aggregate_version,
            *last + 1,
            "{} out of order",
            row.aggregate_id
        );
        *last = row.aggregate_version;
    }
    // the work was shared (on SQLite, one writer at a time: a worker woken
    // first by each append may take every batch)
    let workers: HashSet<&str> = handled.iter().map(|r| r.worker.as_str()).collect();
    assert!(
        F::SINGLE_WRITER || workers.len() >= 2,
        "only {workers:?} handled events"
    );
    Arc::into_inner(db).unwrap().finish().await;
}

async fn ten_events_failing_at_the_fifth<F: Fixture>(
    db: &F,
    behaviour: &Behaviour,
    times: u32,
) -> Vec<PersistedEvent> {
    db.create_read_model().await;
    let events = append_events(db, "Billing", "Account", 2, 10).await;
    behaviour.fail(events[4].event_id, times);
    events
}

pub async fn the_stop_policy_names_the_projection_the_event_and_its_position<F: Fixture>() {
    let db = F::create().await;
    let behaviour = Arc::new(Behaviour::default());
    let events = ten_events_failing_at_the_fifth(&db, &behaviour, u32::MAX).await;
    let p =
        processor(&db, Recorder::<F>::new("stopping", "w", behaviour.clone())).with_batch_size(3);
    let err = p.catch_up().await.unwrap_err();
    match &err {
        ProjectionError::Handler {
            projection,
            global_position,
            event_id,
            event_type,
            attempts,
            source,
        } => {
            assert_eq!(projection, "stopping");
            assert_eq!(*global_position, events[4].global_position);
            assert_eq!(*event_id, events[4].event_id);
            assert_eq!(event_type, "Happened");
            assert_eq!(*attempts, 1);
            assert!(source.to_string().contains("boom"));
        }
        other => panic!("{other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains("stopping") && message.contains(&events[4].global_position.to_string()),
        "{message}"
    );
    // the failed batch (events 4 to 6) was rolled back; the one before stays
    assert_eq!(
        positions(&db.handled().await),
        event_positions(&events[..3])
    );
    assert_eq!(
        p.status().await.unwrap().checkpoint,
        events[2].global_position
    );
    // fixed: it goes on from the checkpoint
    behaviour.fail(events[4].event_id, 0);
    assert_eq!(p.catch_up().await.unwrap().events, 7);
    assert_eq!(positions(&db.handled().await), event_positions(&events));
    db.finish().await;
}

pub async fn the_retry_policy_retries_then_gives_up<F: Fixture>() {
    let db = F::create().await;
    let behaviour = Arc::new(Behaviour::default());
    let events = ten_events_failing_at_the_fifth(&db, &behaviour, 2).await;
    let p =
        processor(&db, Recorder::<F>::new("retrying", "w", behaviour.clone())).with_error_policy(
            ErrorPolicy::Retry(RetryPolicy::fixed(3, Duration::from_millis(20))),
        );
    let started = Instant::now();
    assert_eq!(p.catch_up().await.unwrap().events, 10);
    assert!(
        started.elapsed() >= Duration::from_millis(40),
        "two backoffs"
    );
    assert_eq!(positions(&db.handled().await), event_positions(&events));

    // always failing: three attempts, then the error
    let more = append_events(&db, "Billing", "Account", 2, 3).await;
    behaviour.fail(more[1].event_id, u32::MAX);
    let err = p.catch_up().await.unwrap_err();
    assert!(
        matches!(&err, ProjectionError::Handler { attempts: 3, global_position, .. } if *global_position == more[1].global_position),
        "{err:?}"
    );
    db.finish().await;
}

/// A handler that says what it writes to is unavailable ([`Transient`])
/// is neither skipped nor counted against the error policy: `catch_up`
/// reports it, typed, and `run` tries the batch again until it passes.
pub async fn a_transient_handler_failure_is_retried_and_never_skipped<F: Fixture>() {
    let db = Arc::new(F::create().await);
    let behaviour = Arc::new(Behaviour::default());
    behaviour.transient.store(true, Ordering::SeqCst);
    let events = ten_events_failing_at_the_fifth(&*db, &behaviour, 3).await;
    let p = Arc::new(
        processor(
            &*db,
            Recorder::<F>::new("unavailable", "w", behaviour.clone()),
        )
        .with_error_policy(ErrorPolicy::Skip),
    );
    let err = p.catch_up().await.unwrap_err();
    assert!(
        matches!(&err, ProjectionError::Unavailable { projection, .. } if projection == "unavailable")
            && err.is_transient(),
        "{err:?}"
    );
    assert!(
        db.handled().await.is_empty(),
        "the batch was rolled back whole"
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = {
        let p = p.clone();
        tokio::spawn(async move {
            p.run(async {
                let _ = stopped.await;
            })
            .await
        })
    };
    // run retries after its backoff, without a wakeup: the two failures
    // left, then the batch passes.
    let deadline = Instant::now() + Duration::from_secs(60);
    while db.handled().await.len() < events.len() {
        assert!(
            Instant::now() < deadline,
            "run did not get past the failures"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    assert_eq!(behaviour.failures_left.load(Ordering::SeqCst), 0);
    assert_eq!(positions(&db.handled().await), event_positions(&events));
    let mut conn = db.pool().acquire().await.unwrap();
    let skipped = db.store().failures(&mut conn, "unavailable").await.unwrap();
    assert!(skipped.is_empty(), "nothing skipped: {skipped:?}");
    drop(conn);
    drop(p);
    if let Ok(db) = Arc::try_unwrap(db) {
        db.finish().await;
    }
}

pub async fn the_skip_policy_records_the_event_and_goes_on<F: Fixture>() {
    let db = F::create().await;
    let behaviour = Arc::new(Behaviour::default());
    let events = ten_events_failing_at_the_fifth(&db, &behaviour, u32::MAX).await;
    let p = processor(&db, Recorder::<F>::new("skipping", "w", behaviour.clone()))
        .with_batch_size(3)
        .with_error_policy(ErrorPolicy::Skip);
    let done = p.catch_up().await.unwrap();
    assert_eq!((done.events, done.skipped), (9, 1));
    let expected: Vec<i64> = events
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 4)
        .map(|(_, e)| e.global_position)
        .collect();
    assert_eq!(positions(&db.handled().await), expected);
    let mut conn = db.pool().acquire().await.unwrap();
    let failures = db.store().failures(&mut *conn, "skipping").await.unwrap();
    drop(conn);
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].event_id, events[4].event_id);
    assert_eq!(failures[0].global_position, events[4].global_position);
    assert!(failures[0].error.contains("boom"), "{}", failures[0].error);
    assert_eq!(p.status().await.unwrap().lag, 0);
    db.finish().await;
}

pub async fn a_whole_batch_failure_is_traced_to_its_event<F: Fixture>() {
    let db = F::create().await;
    let behaviour = Arc::new(Behaviour::default());
    behaviour.whole_batch.store(true, Ordering::SeqCst);
    let events = ten_events_failing_at_the_fifth(&db, &behaviour, u32::MAX).await;
    let p = processor(&db, Recorder::<F>::new("bulk", "w", behaviour.clone()));
    let err = p.catch_up().await.unwrap_err();
    assert!(
        matches!(&err, ProjectionError::Handler { event_id, .. } if *event_id == events[4].event_id),
        "{err:?}"
    );
    assert!(db.handled().await.is_empty());
    db.finish().await;
}

/// A batch that fails as a whole while each of its events passes alone
/// names no event to skip: the skip policy stops instead of skipping an
/// event that did nothing wrong.
pub async fn the_skip_policy_skips_nothing_it_cannot_pin_down<F: Fixture>() {
    let db = F::create().await;
    db.create_read_model().await;
    let events = append_events(&db, "Billing", "Account", 2, 6).await;
    let behaviour = Arc::new(Behaviour::default());
    behaviour.batches_fail.store(true, Ordering::SeqCst);
    let p = processor(&db, Recorder::<F>::new("unpinned", "w", behaviour.clone()))
        .with_error_policy(ErrorPolicy::Skip);
    let err = p.catch_up().await.unwrap_err();
    assert!(
        matches!(&err, ProjectionError::Handler { event_id, .. } if *event_id == events[0].event_id),
        "{err:?}"
    );
    let mut conn = db.pool().acquire().await.unwrap();
    assert!(
        db.store()
            .failures(&mut *conn, "unpinned")
            .await
            .unwrap()
            .is_empty()
    );
    drop(conn);
    assert!(db.handled().await.is_empty());
    assert_eq!(p.status().await.unwrap().checkpoint, 0);
    db.finish().await;
}

pub async fn a_rebuild_resets_and_replays<F: Fixture>() {
    let db = F::create().await;
    db.create_read_model().await;
    let events = append_events(&db, "Billing", "Account", 4, 25).await;
    let p = processor(
        &db,
        Recorder::<F>::new("rebuilt", "before", Arc::new(Behaviour::default())),
    );
    p.catch_up().await.unwrap();
    let p = processor(
        &db,
        Recorder::<F>::new("rebuilt", "after", Arc::new(Behaviour::default())),
    );
    let done = p.rebuild().await.unwrap();
    assert_eq!(done.events, 25);
    let handled = db.handled().await;
    assert_eq!(positions(&handled), event_positions(&events));
    assert!(handled.iter().all(|r| r.worker == "after"));
    assert_eq!(p.status().await.unwrap().lag, 0);
    db.finish().await;
}

/// A worker frozen inside a batch (it holds its transaction and says
/// nothing to the database, as a stopped process or a vanished host
/// would) loses its partition once its lease runs out: another worker
/// takes it over and handles every event once, and the frozen worker,
/// when it wakes, cannot commit. (SQLite has one writer per database: a
/// frozen holder keeps the lock until it resumes.)
pub async fn a_frozen_worker_loses_its_partition_when_its_lease_runs_out<F: Fixture>() {
    if F::SINGLE_WRITER {
        return;
    }
    let db = Arc::new(F::create().await);
    db.create_read_model().await;
    let events = append_events(&*db, "Lease", "Thing", 3, 30).await;
    // The checkpoint exists before the freeze (a first batch's checkpoint
    // is a row only its own transaction sees: its holder is unknown).
    {
        let mut conn = db.pool().acquire().await.unwrap();
        let probe = db
            .store()
            .checkpoint_holder(&mut conn, "leased")
            .await
            .unwrap();
        assert_eq!(probe, CheckpointHolder::Unknown);
        db.store()
            .update_checkpoint(&mut conn, "leased", 0)
            .await
            .unwrap();
        let probe = db
            .store()
            .checkpoint_holder(&mut conn, "leased")
            .await
            .unwrap();
        assert_eq!(probe, CheckpointHolder::Free);
    }
    let lease = Duration::from_secs(2);
    let behaviour = Arc::new(Behaviour::default());
    // the third event of the first batch
    let (reached, resume) = behaviour.pause_at(3);
    let frozen = ProjectionProcessor::new(
        db.store().clone(),
        db.another_pool().await,
        Recorder::<F>::new("leased", "frozen", behaviour),
    )
    .with_batch_size(10)
    .with_lease(lease);
    let freezing = tokio::spawn(async move { frozen.catch_up().await });
    tokio::time::timeout(Duration::from_secs(60), reached)
        .await
        .expect("the frozen worker reaches its batch")
        .unwrap();
    let frozen_at = Instant::now();
    let survivor = ProjectionProcessor::new(
        db.store().clone(),
        db.pool().clone(),
        Recorder::<F>::new("leased", "survivor", Arc::default()),
    )
    .with_batch_size(10)
    .with_lease(lease);
    // The status names the frozen worker as the partition's holder (its
    // session, on PostgreSQL).
    let status = survivor.status().await.unwrap();
    match &status.holders[..] {
        [CheckpointHolder::Held { by }] => {
            if std::any::type_name::<F::Db>().contains("Postgres") {
                let by = by.as_deref().expect("PostgreSQL names the session");
                assert!(by.starts_with("pid "), "{by}");
            }
        }
        other => panic!("the frozen worker holds the partition: {other:?}"),
    }
    // waits while the frozen worker holds the partition, then takes it
    let done = survivor.catch_up().await.unwrap();
    let takeover = frozen_at.elapsed();
    assert_eq!(done.events, 30);
    // (the lease runs from the frozen batch's last statement, a moment
    // before the test hears it stopped)
    assert!(
        takeover + Duration::from_millis(500) >= lease,
        "taken over after the lease, not before: {takeover:?}"
    );
    resume.send(()).unwrap();
    let woke = freezing.await.unwrap();
    assert!(
        matches!(woke, Err(ProjectionError::Store { .. })),
        "the frozen worker cannot commit: {woke:?}"
    );
    let handled = db.handled().await;
    assert_eq!(
        positions(&handled),
        event_positions(&events),
        "each once, in order"
    );
    assert!(handled.iter().all(|r| r.worker == "survivor"));
    let status = survivor.status().await.unwrap();
    assert_eq!(status.holders, [CheckpointHolder::Free]);
    println!(
        "{}: lease {lease:?}, partition taken over {takeover:?} after the freeze",
        std::any::type_name::<F>()
    );
    if let Ok(db) = Arc::try_unwrap(db) {
        db.finish().await;
    }
}

/// A projection written against the one entry point, `handle_page`: a
/// page at a time, told the replay, with nothing else implemented.
struct Pages<F> {
    pages: Mutex<Vec<usize>>,
    fixture: PhantomData<fn() -> F>,
}

impl<F: Fixture> Projection<F::Db> for Pages<F> {
    fn name(&self) -> &str {
        "pages"
    }

    async fn handle_page(
        &self,
        ctx: &mut es::aggregate::projection::Context<'_, F::Db>,
        events: &[PersistedEvent],
    ) -> Result<(), BatchFailure> {
        self.pages.lock().unwrap().push(events.len());
        for (index, event) in events.iter().enumerate() {
            let row = Handled {
                event_id: event.event_id,
                global_position: event.global_position,
                aggregate_id: event.aggregate_id.clone(),
                aggregate_version: event.aggregate_version,
                worker: if ctx.is_replaying(event) {
                    "replay"
                } else {
                    "live"
                }
                .to_owned(),
            };
            F::record(ctx.tx(), &row)
                .await
                .map_err(|error| BatchFailure::at(index, error))?;
        }
        Ok(())
    }

    async fn reset(
        &self,
        tx: &mut <F::Db as sqlx::Database>::Connection,
    ) -> Result<(), HandlerError> {
        F::clear_read_model(tx).await?;
        Ok(())
    }
}

/// A projection that implements no handler at all.
struct NoHandlerAtAll;

impl<DB: sqlx::Database> Projection<DB> for NoHandlerAtAll {
    fn name(&self) -> &str {
        "no_handler"
    }
}

/// The one handler entry point: a projection that implements only
/// `handle_page` gets every event once, in order, in pages of the batch
/// size, told which are replays after a rebuild; the deprecated
/// per-event `handle` reaches it too (as earlier callers use it); and a
/// projection implementing no handler fails with a clear error instead of
/// recursing.
pub async fn a_page_handler_gets_every_event_once_in_pages<F: Fixture>() {
    let db = F::create().await;
    db.create_read_model().await;
    let events = append_events(&db, "Billing", "Account", 3, 10).await;
    let pages = Pages::<F> {
        pages: Mutex::new(Vec::new()),
        fixture: PhantomData,
    };
    let p =
        ProjectionProcessor::new(db.store().clone(), db.pool().clone(), pages).with_batch_size(4);
    assert_eq!(p.catch_up().await.unwrap().events, 10);
    assert_eq!(*p.projection().pages.lock().unwrap(), vec![4, 4, 2]);
    let handled = db.handled().await;
    assert_eq!(positions(&handled), positions_of(&events));
    // stored before the version started: replays
    assert!(
        handled.iter().all(|row| row.worker == "replay"),
        "{handled:?}"
    );
    // what comes after is live
    let later = append_events(&db, "Billing", "Account", 3, 3).await;
    assert_eq!(p.catch_up().await.unwrap().events, 3);
    let handled = db.handled().await;
    assert_eq!(positions(&handled[10..]), positions_of(&later));
    assert!(
        handled[10..].iter().all(|row| row.worker == "live"),
        "{handled:?}"
    );
    let events: Vec<PersistedEvent> = events.into_iter().chain(later).collect();
    // a rebuild replays them all, and says so
    p.rebuild().await.unwrap();
    let handled = db.handled().await;
    assert_eq!(positions(&handled), positions_of(&events));
    assert!(
        handled.iter().all(|row| row.worker == "replay"),
        "{handled:?}"
    );
    // the deprecated per-event entry point reaches handle_page
    F::clear_read_model(&mut *db.pool().acquire().await.unwrap())
        .await
        .unwrap();
    let mut tx = db.pool().begin().await.unwrap();
    #[allow(deprecated)]
    Projection::<F::Db>::handle(p.projection(), &mut *tx, &events[0])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        positions(&db.handled().await),
        vec![events[0].global_position]
    );
    // no handler at all: a typed failure, not a stack overflow
    let none = ProjectionProcessor::new(db.store().clone(), db.pool().clone(), NoHandlerAtAll);
    let err = none.catch_up().await.unwrap_err();
    assert!(
        matches!(&err, ProjectionError::Handler { .. }) && err.to_string().contains("neither"),
        "{err}"
    );
    db.finish().await;
}

fn positions_of(events: &[PersistedEvent]) -> Vec<i64> {
    events.iter().map(|e| e.global_position).collect()
}
