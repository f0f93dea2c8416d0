//! Rebuilds without downtime: a new version of a projection builds its
//! read model beside the active one while writers append, takes over when
//! caught up, and the old one is dropped; readers never see an empty or
//! half-built read model; handlers can tell replayed events from live
//! ones.

use std::marker::PhantomData;
use std::sync::Arc;

use es::aggregate::projection::{
    BatchFailure, Envelope, HandlerError, Projection, ProjectionError, ProjectionProcessor, Replay,
    Typed, TypedProjection,
};
use es::store::{
    CheckpointStore, DomainEvent as _, EventReader, EventStore, ExpectedVersion, Metadata,
    PersistedEvent, ProjectionStore, VersionState,
};
use tokio::sync::{mpsc, oneshot, watch};

use super::typed::AccountEvent;
use crate::support::Fixture;

const NAME: &str = "deposits";

/// One row per deposit in `deposits_v<version>`: its position, and
/// whether it was handled as a replay.
struct Deposits<F> {
    version: u32,
    /// Whether `promote` points the view `deposits` at this version.
    view: bool,
    fixture: PhantomData<fn() -> F>,
}

impl<F> Deposits<F> {
    fn new(version: u32) -> Self {
        Self {
            version,
            view: false,
            fixture: PhantomData,
        }
    }
}

/// How the test's readers find the read model.
#[derive(Debug, Clone, Copy, PartialEq)]
enum ReadPath {
    /// They look the active version up, then read its table.
    Lookup,
    /// They read the view `deposits`, which `promote` points at the new
    /// version in the switch's transaction.
    View,
}

/// Points the view `deposits` at a version's table (with the version as a
/// column, for the assertions).
async fn point_view<F: Fixture>(
    conn: &mut <F::Db as sqlx::Database>::Connection,
    version: u32,
) -> Result<(), sqlx::Error> {
    F::execute_on(conn, "DROP VIEW IF EXISTS deposits".to_owned()).await?;
    F::execute_on(
        conn,
        format!(
            "CREATE VIEW deposits AS SELECT position, replaying, {version} AS version FROM {}",
            table(version)
        ),
    )
    .await
}

fn table(version: u32) -> String {
    format!("deposits_v{version}")
}

impl<F: Fixture> TypedProjection<F::Db> for Deposits<F> {
    type Events = AccountEvent;

    fn name(&self) -> &str {
        NAME
    }

    fn version(&self) -> u32 {
        self.version
    }

    async fn handle(
        &self,
        tx: &mut <F::Db as sqlx::Database>::Connection,
        event: Envelope<'_, AccountEvent>,
    ) -> Result<(), HandlerError> {
        // A second row for one event fails the batch: the position is the
        // primary key.
        F::execute_on(
            tx,
            format!(
                "INSERT INTO {} (position, replaying) VALUES ({}, {})",
                table(self.version),
                event.position(),
                i64::from(event.replaying())
            ),
        )
        .await?;
        Ok(())
    }

    async fn promote(
        &self,
        tx: &mut <F::Db as sqlx::Database>::Connection,
    ) -> Result<(), HandlerError> {
        if self.view {
            point_view::<F>(tx, self.version).await?;
        }
        Ok(())
    }

    async fn reset(
        &self,
        tx: &mut <F::Db as sqlx::Database>::Connection,
    ) -> Result<(), HandlerError> {
        F::execute_on(tx, format!("DELETE FROM {}", table(self.version))).await?;
        Ok(())
    }

    async fn retire(
        &self,
        tx: &mut <F::Db as sqlx::Database>::Connection,
        version: u32,
    ) -> Result<(), HandlerError> {
        F::execute_on(tx, format!("DROP TABLE {}", table(version))).await?;
        Ok(())
    }
}

type Processor<F> = ProjectionProcessor<<F as Fixture>::Store, Typed<Deposits<F>>>;

fn processor<F: Fixture>(db: &F, version: u32) -> Processor<F> {
    ProjectionProcessor::typed(
        db.store().clone(),
        db.pool().clone(),
        Deposits::new(version),
    )
    .with_batch_size(25)
}

fn processor_for<F: Fixture>(db: &F, version: u32, path: ReadPath) -> Processor<F> {
    let mut deposits = Deposits::new(version);
    deposits.view = path == ReadPath::View;
    ProjectionProcessor::typed(db.store().clone(), db.pool().clone(), deposits).with_batch_size(25)
}

async fn create_table<F: Fixture>(db: &F, version: u32) {
    let mut conn = db.pool().acquire().await.unwrap();
    F::execute_on(
        &mut conn,
        format!(
            "CREATE TABLE {} (position BIGINT NOT NULL PRIMARY KEY, replaying BIGINT NOT NULL)",
            table(version)
        ),
    )
    .await
    .unwrap();
}

/// The rows of a version's read model: (position, replaying), by position.
async fn rows<F: Fixture>(db: &F, version: u32) -> Vec<(i64, i64)> {
    let mut conn = db.pool().acquire().await.unwrap();
    F::pairs_on(
        &mut conn,
        format!(
            "SELECT position, replaying FROM {} ORDER BY position",
            table(version)
        ),
    )
    .await
    .unwrap()
}

/// Appends one deposit; returns its position.
async fn deposit<F: Fixture>(db: &F, account: &str, amount: i64) -> i64 {
    let event = AccountEvent::Deposited { amount }
        .to_event(account, &Metadata::default())
        .unwrap();
    let mut conn = db.pool().acquire().await.unwrap();
    let appended = db
        .store()
        .append(&mut *conn, ExpectedVersion::Any, vec![event])
        .await
        .unwrap();
    appended.global_positions[0]
}

/// Every stored position, in order.
async fn all_positions<F: Fixture>(db: &F) -> Vec<i64> {
    let mut conn = db.pool().acquire().await.unwrap();
    let mut positions = Vec::new();
    let mut from = 0;
    loop {
        let page = db
            .store()
            .read_events(&mut *conn, from, 1000)
            .await
            .unwrap();
        if page.is_empty() {
            return positions;
        }
        from = page.last().unwrap().global_position;
        positions.extend(page.iter().map(|e| e.global_position));
    }
}

/// What a reader saw: the active version, and the read model's row count
/// and highest position.
#[derive(Debug, Clone, Copy)]
struct Read {
    version: u32,
    count: i64,
    max: i64,
}

/// Reads the read model the way a reader of the application would: looks
/// up the active version, then reads that version's table; or reads the
/// view.
async fn read<F: Fixture>(db: &F, path: ReadPath) -> Read {
    if path == ReadPath::View {
        // One statement: the count, and the highest position with the
        // view's version in its last digit.
        let mut conn = db.pool().acquire().await.unwrap();
        let (count, last) = F::pairs_on(
            &mut conn,
            "SELECT count(*), COALESCE(MAX(position * 10 + version), 0) FROM deposits".to_owned(),
        )
        .await
        .unwrap()[0];
        return Read {
            version: (last % 10) as u32,
            count,
            max: last / 10,
        };
    }
    let mut tx = db.pool().begin().await.unwrap();
    let version = db
        .store()
        .active_projection_version(&mut *tx, NAME)
        .await
        .unwrap()
        .expect("a version is active");
    let (count, max) = F::pairs_on(
        &mut tx,
        format!(
            "SELECT count(*), COALESCE(MAX(position), 0) FROM {}",
            table(version)
        ),
    )
    .await
    .unwrap()[0];
    tx.commit().await.unwrap();
    Read {
        version,
        count,
        max,
    }
}

pub async fn a_new_version_takes_over_while_writers_append<F: Fixture>() {
    blue_green::<F>(ReadPath::Lookup).await
}

/// The same switch, readers reading a view that the new version's
/// `promote` replaces in the switch's transaction (where DDL is
/// transactional: not on MySQL).
pub async fn a_promoted_view_switches_readers_with_the_version<F: Fixture>() {
    if !F::TRANSACTIONAL_DDL {
        eprintln!("skipped: DDL commits the transaction on this backend");
        return;
    }
    blue_green::<F>(ReadPath::View).await
}

async fn blue_green<F: Fixture>(path: ReadPath) {
    const HISTORY: i64 = 120;
    const WRITERS: usize = 3;
    let db = Arc::new(F::create().await);
    create_table(&*db, 1).await;
    if path == ReadPath::View {
        let mut conn = db.pool().acquire().await.unwrap();
        point_view::<F>(&mut conn, 1).await.unwrap();
    }
    for i in 0..HISTORY {
        deposit(&*db, &format!("acc-{}", i % 7), i).await;
    }

    // Version 1 is built and serves; it follows the feed live.
    let v1 = processor(&*db, 1);
    assert_eq!(v1.catch_up().await.unwrap().events, HISTORY as u64);
    let v1_versions = v1.versions().await.unwrap();
    assert_eq!(v1_versions.len(), 1);
    assert_eq!(
        (v1_versions[0].version, v1_versions[0].state),
        (1, VersionState::Active)
    );
    let (stop_v1, v1_stopped) = oneshot::channel::<()>();
    let v1_task = tokio::spawn(async move {
        v1.run(async {
            let _ = v1_stopped.await;
        })
        .await
    });

    // Writers append until told to stop; they are appending before, during
    // and after the switch.
    let (stop_writers, writers_stop) = watch::channel(false);
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (db, mut stop) = (db.clone(), writers_stop.clone());
            tokio::spawn(async move {
                let mut appended = 0u32;
                while !*stop.borrow_and_update() {
                    deposit(&*db, &format!("writer-{w}"), 1).await;
                    appended += 1;
                }
                appended
            })
        })
        .collect();

    // A reader reads in a loop through the reader's path until told to
    // stop; it says when it has read once.
    let (stop_reader, reader_stop) = watch::channel(false);
    let (first_read, mut has_read) = mpsc::channel::<()>(1);
    let (read_v2, mut has_read_v2) = mpsc::channel::<()>(1);
    let reader = {
        let db = db.clone();
        tokio::spawn(async move {
            let mut reads = Vec::new();
            loop {
                let done = *reader_stop.borrow();
                let r = read(&*db, path).await;
                reads.push(r);
                let _ = first_read.try_send(());
                if r.version == 2 && reads.iter().filter(|r| r.version == 2).count() >= 30 {
                    let _ = read_v2.try_send(());
                }
                if done {
                    return reads;
                }
            }
        })
    };
    has_read.recv().await.unwrap();

    // Version 2 catches up beside version 1 (workers running, and an
    // operator's call that switches when it is caught up).
    create_table(&*db, 2).await;
    let head_before_v2 = {
        let mut conn = db.pool().acquire().await.unwrap();
        db.store().head_position(&mut *conn).await.unwrap()
    };
    // (the operator's call switches: the workers' own switch is tested
    // below)
    let v2_worker = processor_for(&*db, 2, path).with_auto_switch(false);
    let (stop_v2, v2_stopped) = oneshot::channel::<()>();
    let v2_task = tokio::spawn(async move {
        v2_worker
            .run(async {
                let _ = v2_stopped.await;
            })
            .await
    });
    let v2 = processor_for(&*db, 2, path);
    let started = std::time::Instant::now();
    let switched = v2.switch_when_caught_up().await.unwrap();
    let switch_took = started.elapsed();
    assert_eq!((switched.previous, switched.version), (Some(1), 2));

    // The old version stops at its next batch: writers are still appending.
    let v1_end = v1_task.await.unwrap();
    assert!(
        matches!(
            v1_end,
            Err(ProjectionError::Superseded {
                version: 1,
                active: 2,
                ..
            })
        ),
        "{v1_end:?}"
    );
    drop(stop_v1);
    // Readers are served from version 2 while writers go on appending and
    // its workers follow them.
    has_read_v2.recv().await.unwrap();
    stop_writers.send(true).unwrap();
    let mut appended_live = 0;
    for writer in writers {
        appended_live += writer.await.unwrap();
    }
    // Version 2 goes on from its own checkpoint.
    stop_v2.send(()).unwrap();
    v2_task.await.unwrap().unwrap();
    v2.catch_up().await.unwrap();
    stop_reader.send(true).unwrap();
    let reads = reader.await.unwrap();

    let positions = all_positions(&*db).await;
    assert_eq!(positions.len() as i64, HISTORY + i64::from(appended_live));
    eprintln!(
        "blue/green ({path:?}): {} events ({appended_live} appended live), switched at position {} \
         after {switch_took:?} of catch-up and switch, {} reads ({} of version 1)",
        positions.len(),
        switched.position,
        reads.len(),
        reads.iter().filter(|r| r.version == 1).count()
    );
    let versions = v2.versions().await.unwrap();
    let v2_record = versions.iter().find(|v| v.version == 2).unwrap();
    let v1_record = versions.iter().find(|v| v.version == 1).unwrap();
    assert_eq!(v2_record.state, VersionState::Active);
    assert_eq!(v1_record.state, VersionState::Superseded);

    // Every read saw a complete read model: all the events up to some
    // position, growing, version 1 and then version 2.
    assert!(reads.iter().any(|r| r.version == 1) && reads.last().unwrap().version == 2);
    let mut last = (0, 0);
    for r in &reads {
        let complete = positions.partition_point(|p| *p <= r.max) as i64;
        assert_eq!(r.count, complete, "read {r:?} is not a complete read model");
        assert!(r.count >= HISTORY, "read {r:?} is (partly) empty");
        assert!(
            (r.version, r.count) >= last && r.count >= last.1,
            "read {r:?} went back from {last:?}"
        );
        last = (r.version, r.count);
    }
    assert_eq!(reads.last().unwrap().count, positions.len() as i64);

    // Each version handled each event once (the position is the key):
    // version 1 every event up to where it stopped, version 2 all.
    let v1_rows = rows(&*db, 1).await;
    let v1_positions: Vec<i64> = v1_rows.iter().map(|r| r.0).collect();
    assert_eq!(v1_positions[..], positions[..v1_positions.len()]);
    assert!(switched.position >= *v1_positions.last().unwrap());
    let v2_rows = rows(&*db, 2).await;
    let v2_positions: Vec<i64> = v2_rows.iter().map(|r| r.0).collect();
    assert_eq!(v2_positions, positions);

    // Replaying: version 1 was built from history (its first catch-up),
    // version 2 replayed what was there when it started, and handled
    // what came after live, the events after the switch among them.
    assert!(v1_rows[..HISTORY as usize].iter().all(|r| r.1 == 1));
    assert!(v1_rows[HISTORY as usize..].iter().all(|r| r.1 == 0));
    assert!(v2_record.replay_until >= head_before_v2);
    for (position, replaying) in &v2_rows {
        assert_eq!(
            *replaying,
            i64::from(*position <= v2_record.replay_until),
            "event {position}"
        );
    }
    assert!(v2_rows.iter().any(|r| r.1 == 1));
    assert!(v2_rows.iter().any(|r| r.0 > switched.position && r.1 == 0));

    // The active version cannot be retired; the old one is dropped.
    assert!(matches!(
        v2.retire(2).await,
        Err(ProjectionError::RetireActive { version: 2, .. })
    ));
    let checkpoints = db.rows_in("checkpoints").await;
    v2.retire(1).await.unwrap();
    let versions = v2.versions().await.unwrap();
    assert_eq!(versions.len(), 1);
    assert_eq!(
        (versions[0].version, versions[0].state),
        (2, VersionState::Active)
    );
    assert_eq!(db.rows_in("checkpoints").await, checkpoints - 1);
    {
        let mut conn = db.pool().acquire().await.unwrap();
        assert!(
            F::pairs_on(
                &mut conn,
                format!("SELECT position, replaying FROM {}", table(1))
            )
            .await
            .is_err(),
            "version 1's table is dropped"
        );
    }
    assert!(matches!(
        v2.retire(1).await,
        Err(ProjectionError::UnknownVersion { version: 1, .. })
    ));
    // An old deployment started again refuses to handle anything.
    let restarted = processor(&*db, 1).catch_up().await;
    assert!(
        matches!(
            restarted,
            Err(ProjectionError::Superseded {
                version: 1,
                active: 2,
                ..
            })
        ),
        "{restarted:?}"
    );
    assert_eq!(read(&*db, path).await.count, positions.len() as i64);

    Arc::into_inner(db).unwrap().finish().await;
}

pub async fn a_rebuild_replays_history_and_then_runs_live<F: Fixture>() {
    let db = F::create().await;
    create_table(&db, 1).await;
    for i in 0..30 {
        deposit(&db, "acc-1", i).await;
    }
    let v1 = processor(&db, 1);
    v1.catch_up().await.unwrap();
    for i in 0..5 {
        deposit(&db, "acc-2", i).await;
    }
    // The rebuild replays everything there is now: what version 1 had
    // handled live is history.
    assert_eq!(v1.rebuild().await.unwrap().events, 35);
    let head = all_positions(&db).await.last().copied().unwrap();
    for i in 0..4 {
        deposit(&db, "acc-3", i).await;
    }
    v1.catch_up().await.unwrap();
    let rows = rows(&db, 1).await;
    assert_eq!(rows.len(), 39);
    for (position, replaying) in &rows {
        assert_eq!(*replaying, i64::from(*position <= head), "event {position}");
    }
    assert_eq!(v1.versions().await.unwrap()[0].replay_until, head);
    assert_eq!(v1.status().await.unwrap().version, 1);
    db.finish().await;
}

/// A version 1 that ran before versions were recorded (its checkpoint
/// is there, its record is not) is recorded as the active version when a
/// newer one starts, and goes on live from its checkpoint.
pub async fn a_version_1_from_before_versions_keeps_serving<F: Fixture>() {
    let db = F::create().await;
    create_table(&db, 1).await;
    create_table(&db, 2).await;
    for i in 0..10 {
        deposit(&db, "acc-1", i).await;
    }
    let v1 = processor(&db, 1);
    v1.catch_up().await.unwrap();
    let checkpoint = v1.status().await.unwrap().checkpoint;
    {
        let mut conn = db.pool().acquire().await.unwrap();
        db.store()
            .delete_projection_version(&mut *conn, NAME, 1)
            .await
            .unwrap();
    }
    deposit(&db, "acc-1", 10).await;
    let v2 = processor(&db, 2);
    v2.catch_up().await.unwrap();
    let versions = v2.versions().await.unwrap();
    let states: Vec<_> = versions
        .iter()
        .map(|v| (v.version, v.state, v.replay_until))
        .collect();
    let head = all_positions(&db).await.last().copied().unwrap();
    assert_eq!(
        states,
        [
            (1, VersionState::Active, checkpoint),
            (2, VersionState::CatchingUp, head)
        ]
    );
    // version 1 still runs, and handles the event after its checkpoint live
    assert_eq!(v1.catch_up().await.unwrap().events, 1);
    assert_eq!(rows(&db, 1).await.last().unwrap(), &(head, 0));
    assert_eq!(rows(&db, 2).await.len(), 11);
    db.finish().await;
}

/// A new version's workers take over by themselves when they have caught
/// up; the old version's workers stop.
pub async fn run_switches_to_a_new_version_when_it_has_caught_up<F: Fixture>() {
    let db = Arc::new(F::create().await);
    create_table(&*db, 1).await;
    create_table(&*db, 2).await;
    for i in 0..60 {
        deposit(&*db, &format!("acc-{}", i % 5), i).await;
    }
    let v1 = processor(&*db, 1);
    v1.catch_up().await.unwrap();
    let v1_task = tokio::spawn(async move { v1.run(std::future::pending()).await });
    let (stop_v2, v2_stopped) = oneshot::channel::<()>();
    let v2_task = {
        let v2 = processor(&*db, 2);
        tokio::spawn(async move {
            v2.run(async {
                let _ = v2_stopped.await;
            })
            .await
        })
    };
    // A writer appends until version 1 has stopped: its workers notice the
    // switch at their next batch.
    let (stop_writer, writer_stop) = watch::channel(false);
    let writer = {
        let db = db.clone();
        tokio::spawn(async move {
            while !*writer_stop.borrow() {
                deposit(&*db, "writer", 1).await;
            }
        })
    };
    let v1_end = v1_task.await.unwrap();
    assert!(
        matches!(
            v1_end,
            Err(ProjectionError::Superseded {
                version: 1,
                active: 2,
                ..
            })
        ),
        "{v1_end:?}"
    );
    stop_writer.send(true).unwrap();
    writer.await.unwrap();
    stop_v2.send(()).unwrap();
    v2_task.await.unwrap().unwrap();
    let v2 = processor(&*db, 2);
    v2.catch_up().await.unwrap();
    let states: Vec<_> = v2
        .versions()
        .await
        .unwrap()
        .iter()
        .map(|v| (v.version, v.state))
        .collect();
    assert_eq!(
        states,
        [(1, VersionState::Superseded), (2, VersionState::Active)]
    );
    let positions = all_positions(&*db).await;
    let v2_positions: Vec<i64> = rows(&*db, 2).await.iter().map(|r| r.0).collect();
    assert_eq!(v2_positions, positions);
    let v1_positions: Vec<i64> = rows(&*db, 1).await.iter().map(|r| r.0).collect();
    assert_eq!(v1_positions[..], positions[..v1_positions.len()]);
    Arc::into_inner(db).unwrap().finish().await;
}

/// A version with partitions takes over from one without, its two
/// workers racing to switch while a writer appends: readers only ever see
/// the read model grow, each version handles each event once, and the new
/// version's checkpoints are its partitions'.
pub async fn a_partitioned_version_takes_over_from_an_unpartitioned_one<F: Fixture>() {
    let db = Arc::new(F::create().await);
    create_table(&*db, 1).await;
    create_table(&*db, 2).await;
    for i in 0..80 {
        deposit(&*db, &format!("acc-{}", i % 9), i).await;
    }
    let v1 = processor(&*db, 1);
    v1.catch_up().await.unwrap();
    let v1_task = tokio::spawn(async move { v1.run(std::future::pending()).await });
    let (stop_writer, writer_stop) = watch::channel(false);
    let writer = {
        let db = db.clone();
        tokio::spawn(async move {
            let mut i = 0;
            while !*writer_stop.borrow() {
                deposit(&*db, &format!("live-{}", i % 4), 1).await;
                i += 1;
            }
        })
    };
    let (stop_reader, reader_stop) = watch::channel(false);
    let reader = {
        let db = db.clone();
        tokio::spawn(async move {
            let mut reads = Vec::new();
            loop {
                let done = *reader_stop.borrow();
                reads.push(read(&*db, ReadPath::Lookup).await);
                if done {
                    return reads;
                }
            }
        })
    };
    let (stop_v2, v2_stopped) = watch::channel(false);
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let v2 = processor(&*db, 2).with_partitions(2);
            let mut stopped = v2_stopped.clone();
            tokio::spawn(async move {
                v2.run(async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                })
                .await
            })
        })
        .collect();
    let v1_end = v1_task.await.unwrap();
    assert!(
        matches!(v1_end, Err(ProjectionError::Superseded { active: 2, .. })),
        "{v1_end:?}"
    );
    stop_writer.send(true).unwrap();
    writer.await.unwrap();
    stop_v2.send(true).unwrap();
    for worker in workers {
        worker.await.unwrap().unwrap();
    }
    let v2 = processor(&*db, 2).with_partitions(2);
    v2.catch_up().await.unwrap();
    stop_reader.send(true).unwrap();
    let reads = reader.await.unwrap();

    let positions = all_positions(&*db).await;
    let mut last = (0, 0);
    for r in &reads {
        assert!(r.count >= 80, "read {r:?} is (partly) empty");
        assert!(
            (r.version, r.count) >= last && r.count >= last.1,
            "read {r:?} went back from {last:?}"
        );
        if r.version == 1 {
            let complete = positions.partition_point(|p| *p <= r.max) as i64;
            assert_eq!(r.count, complete, "read {r:?} is not a complete read model");
        }
        last = (r.version, r.count);
    }
    assert_eq!(reads.last().unwrap().count, positions.len() as i64);
    let v2_positions: Vec<i64> = rows(&*db, 2).await.iter().map(|r| r.0).collect();
    assert_eq!(v2_positions, positions);
    let v1_positions: Vec<i64> = rows(&*db, 1).await.iter().map(|r| r.0).collect();
    assert_eq!(v1_positions[..], positions[..v1_positions.len()]);
    let status = v2.status().await.unwrap();
    assert_eq!((status.version, status.partitions.len()), (2, 2));
    let mut conn = db.pool().acquire().await.unwrap();
    let mut handled = 0;
    for key in ["deposits@v2#0/2", "deposits@v2#1/2"] {
        handled += db.store().get_checkpoint(&mut *conn, key).await.unwrap();
    }
    assert!(handled > 0, "the partitions' checkpoints moved");
    drop(conn);
    eprintln!(
        "partitioned blue/green: {} events, {} reads ({} of version 1)",
        positions.len(),
        reads.len(),
        reads.iter().filter(|r| r.version == 1).count()
    );
    Arc::into_inner(db).unwrap().finish().await;
}

/// [`Deposits`] without `retire`.
struct Kept<F>(Deposits<F>);

impl<F: Fixture> TypedProjection<F::Db> for Kept<F> {
    type Events = AccountEvent;

    fn name(&self) -> &str {
        NAME
    }

    fn version(&self) -> u32 {
        self.0.version
    }

    async fn handle(
        &self,
        tx: &mut <F::Db as sqlx::Database>::Connection,
        event: Envelope<'_, AccountEvent>,
    ) -> Result<(), HandlerError> {
        self.0.handle(tx, event).await
    }
}

/// A projection that does not say how to drop a version's read model
/// cannot retire it: the retirement refuses and changes nothing.
pub async fn retiring_needs_the_projection_to_say_how<F: Fixture>() {
    let db = F::create().await;
    create_table(&db, 1).await;
    create_table(&db, 2).await;
    for i in 0..5 {
        deposit(&db, "acc-1", i).await;
    }
    processor(&db, 1).catch_up().await.unwrap();
    let v2 = ProjectionProcessor::typed(
        db.store().clone(),
        db.pool().clone(),
        Kept(Deposits::<F>::new(2)),
    );
    assert_eq!(v2.switch_when_caught_up().await.unwrap().previous, Some(1));
    let refused = v2.retire(1).await;
    assert!(
        matches!(&refused, Err(ProjectionError::NoRetire { version: 1, .. })),
        "{refused:?}"
    );
    assert!(
        refused
            .unwrap_err()
            .to_string()
            .contains("does not implement `retire`")
    );
    assert_eq!(v2.versions().await.unwrap().len(), 2);
    assert_eq!(rows(&db, 1).await.len(), 5);
    db.finish().await;
}

/// An untyped projection that records, in memory, which events it was
/// told are replayed.
struct Untyped<F> {
    seen: std::sync::Mutex<Vec<(i64, bool)>>,
    fixture: PhantomData<fn() -> F>,
}

impl<F: Fixture> Projection<F::Db> for Untyped<F> {
    fn name(&self) -> &str {
        "untyped_replays"
    }

    async fn handle(
        &self,
        _tx: &mut <F::Db as sqlx::Database>::Connection,
        _event: &PersistedEvent,
    ) -> Result<(), HandlerError> {
        unreachable!("the processor calls handle_batch_with")
    }

    async fn handle_batch_with(
        &self,
        _tx: &mut <F::Db as sqlx::Database>::Connection,
        events: &[PersistedEvent],
        replay: &Replay,
    ) -> Result<(), BatchFailure> {
        let mut seen = self.seen.lock().unwrap();
        seen.extend(
            events
                .iter()
                .map(|e| (e.global_position, replay.is_replaying(e))),
        );
        Ok(())
    }
}

/// Untyped projections are told which events they replay too: the
/// history there was when the projection first ran, and not what came
/// after.
pub async fn an_untyped_projection_is_told_what_it_replays<F: Fixture>() {
    let db = F::create().await;
    let mut history = Vec::new();
    for i in 0..3 {
        history.push(deposit(&db, "acc-1", i).await);
    }
    let untyped = Arc::new(Untyped::<F> {
        seen: std::sync::Mutex::new(Vec::new()),
        fixture: PhantomData,
    });
    let processor =
        ProjectionProcessor::shared(db.store().clone(), db.pool().clone(), untyped.clone());
    processor.catch_up().await.unwrap();
    let mut live = Vec::new();
    for i in 0..2 {
        live.push(deposit(&db, "acc-1", i).await);
    }
    processor.catch_up().await.unwrap();
    let expected: Vec<(i64, bool)> = history
        .iter()
        .map(|p| (*p, true))
        .chain(live.iter().map(|p| (*p, false)))
        .collect();
    assert_eq!(*untyped.seen.lock().unwrap(), expected);
    db.finish().await;
}

/// A projection that publishes what it handles (a side effect), or says
/// it does not.
struct Publishes {
    side_effects: bool,
}

impl<DB: sqlx::Database> Projection<DB> for Publishes {
    fn name(&self) -> &str {
        "publishes"
    }

    fn has_side_effects(&self) -> bool {
        self.side_effects
    }

    async fn handle(&self, _: &mut DB::Connection, _: &PersistedEvent) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// [`Publishes`], typed.
struct TypedPublishes;

impl<DB: sqlx::Database> TypedProjection<DB> for TypedPublishes {
    type Events = AccountEvent;

    fn name(&self) -> &str {
        "typed_publishes"
    }

    fn has_side_effects(&self) -> bool {
        true
    }

    async fn handle(
        &self,
        _: &mut DB::Connection,
        _: Envelope<'_, AccountEvent>,
    ) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// What operators' tools read before they rewind a projection: whether
/// it declares side effects (recorded when its processor starts, and
/// again when the declaration changed), and whether a worker runs it
/// (recorded by `run`, not by a one-off catch-up).
pub async fn processors_record_side_effects_and_running_workers<F: Fixture>() {
    let db = F::create().await;
    deposit(&db, "acc-1", 1).await;
    let record = |name: &'static str| {
        let (store, pool) = (db.store().clone(), db.pool().clone());
        async move {
            let mut conn = pool.acquire().await.unwrap();
            let mut versions = store.projection_versions(&mut *conn, name).await.unwrap();
            assert_eq!(versions.len(), 1, "{versions:?}");
            versions.remove(0)
        }
    };
    let publishes = |side_effects| {
        ProjectionProcessor::new(
            db.store().clone(),
            db.pool().clone(),
            Publishes { side_effects },
        )
        .with_poll_interval(std::time::Duration::from_millis(20))
    };
    publishes(true).catch_up().await.unwrap();
    let first = record("publishes").await;
    assert!(first.side_effects);
    assert_eq!(
        first.worker_seen_at, None,
        "a catch-up is not a running worker"
    );
    ProjectionProcessor::typed(db.store().clone(), db.pool().clone(), TypedPublishes)
        .catch_up()
        .await
        .unwrap();
    assert!(record("typed_publishes").await.side_effects);
    // A declaration that changed (or a record from before declarations)
    // is recorded at the next start.
    publishes(false).catch_up().await.unwrap();
    assert!(!record("publishes").await.side_effects);
    publishes(true).catch_up().await.unwrap();
    assert!(record("publishes").await.side_effects);

    // A running worker records itself when it starts.
    let (stop, stopped) = oneshot::channel::<()>();
    let worker = {
        let processor = publishes(true);
        tokio::spawn(async move {
            processor
                .run(async {
                    let _ = stopped.await;
                })
                .await
        })
    };
    let seen = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            if let Some(seen) = record("publishes").await.worker_seen_at {
                break seen;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the running worker recorded itself");
    assert!(
        (chrono::Utc::now() - seen).num_seconds().abs() < 60,
        "{seen}"
    );
    stop.send(()).unwrap();
    worker.await.unwrap().unwrap();
    let after = record("publishes").await;
    assert_eq!(
        (after.state, after.replay_until, after.partitions),
        (first.state, first.replay_until, first.partitions),
        "nothing else changed"
    );

    // Bad input is refused and writes nothing; a version not recorded is
    // left alone.
    let before = record("publishes").await.worker_seen_at;
    let mut conn = db.pool().acquire().await.unwrap();
    let store = db.store();
    assert!(
        store
            .record_projection_worker(&mut *conn, "", 1)
            .await
            .is_err()
    );
    assert!(
        store
            .record_projection_side_effects(&mut *conn, "", 1, true)
            .await
            .is_err()
    );
    store
        .record_projection_worker(&mut *conn, "publishes", 7)
        .await
        .unwrap();
    drop(conn);
    assert_eq!(record("publishes").await.worker_seen_at, before);
    db.finish().await;
}
