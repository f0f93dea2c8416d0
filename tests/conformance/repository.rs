//! The repository's behaviour, written once for every backend: load and
//! fold, execute with Exact(version), retries, the caller's-transaction
//! variant, metadata and snapshots.

#[path = "../../examples/bank/domain.rs"]
#[allow(dead_code)]
pub mod bank;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bank::{Account, AccountCommand, AccountError, AccountEvent};
use es::aggregate::Jitter;
use es::store::{
    AggregateStreamReader, Error, Event, EventStore, ExpectedVersion, Metadata, Snapshot,
    SnapshotStore,
};
use es::{Aggregate, Repository, RepositoryError, RetryPolicy};

use crate::support::Fixture;
use crate::support::fixture::Handled;

fn repository<F: Fixture>(db: &F) -> Repository<Account, F::Store> {
    Repository::new(db.store().clone(), db.pool().clone())
}

fn open(owner: &str) -> AccountCommand {
    AccountCommand::Open {
        owner: owner.into(),
    }
}

fn deposit(amount: i64) -> AccountCommand {
    AccountCommand::Deposit { amount }
}

async fn stored_events<F: Fixture>(db: &F, id: &str) -> Vec<es::store::PersistedEvent> {
    let mut conn = db.pool().acquire().await.unwrap();
    db.store()
        .read_aggregate_stream(&mut *conn, ("Billing", "Account", id), ..)
        .await
        .unwrap()
        .events
}

pub async fn an_absent_aggregate_is_default_at_version_zero<F: Fixture>() {
    let db = F::create().await;
    let loaded = repository(&db).load("nobody").await.unwrap();
    assert_eq!(loaded.version, 0);
    assert!(!loaded.exists());
    assert_eq!(loaded.state, Account::default());
    db.finish().await;
}

pub async fn execute_appends_and_load_folds<F: Fixture>() {
    let db = F::create().await;
    let accounts = repository(&db);
    let opened = accounts.execute("a", &open("Alice")).await.unwrap();
    assert_eq!((opened.version, opened.attempts), (1, 1));
    assert_eq!(
        opened.events,
        vec![AccountEvent::Opened {
            owner: "Alice".into()
        }]
    );
    let deposited = accounts.execute("a", &deposit(70)).await.unwrap();
    assert_eq!(deposited.version, 2);
    assert_eq!(deposited.state.balance, 70);
    assert_eq!(deposited.global_positions.len(), 1);
    assert!(deposited.global_positions[0] > opened.global_positions[0]);
    accounts
        .execute("a", &AccountCommand::Withdraw { amount: 20 })
        .await
        .unwrap();

    let loaded = accounts.load("a").await.unwrap();
    assert_eq!(loaded.version, 3);
    assert_eq!(loaded.state.balance, 50);
    assert_eq!(loaded.state.owner.as_deref(), Some("Alice"));
    let stored = stored_events(&db, "a").await;
    let types: Vec<_> = stored.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["Opened", "Deposited", "Withdrawn"]);
    db.finish().await;
}

pub async fn load_at_travels_back_in_time<F: Fixture>() {
    let db = F::create().await;
    let accounts = repository(&db);
    accounts.execute("a", &open("Alice")).await.unwrap();
    for amount in [10, 20, 30] {
        accounts.execute("a", &deposit(amount)).await.unwrap();
    }
    let balances: Vec<i64> = balances_at(&accounts, "a", 0..=6).await;
    assert_eq!(balances, [0, 0, 10, 30, 60, 60, 60]);
    let at_two = accounts.load_at("a", 2).await.unwrap();
    assert_eq!(at_two.version, 2);
    db.finish().await;
}

async fn balances_at<S>(
    accounts: &Repository<Account, S>,
    id: &str,
    versions: std::ops::RangeInclusive<i64>,
) -> Vec<i64>
where
    S: EventStore + AggregateStreamReader + SnapshotStore,
{
    let mut balances = Vec::new();
    for v in versions {
        balances.push(accounts.load_at(id, v).await.unwrap().state.balance);
    }
    balances
}

pub async fn a_refused_command_writes_nothing_and_is_not_retried<F: Fixture>() {
    let db = F::create().await;
    let accounts = repository(&db).with_retry_policy(RetryPolicy::immediate(5));
    accounts.execute("a", &open("Alice")).await.unwrap();
    accounts.execute("a", &deposit(5)).await.unwrap();
    let err = accounts
        .execute("a", &AccountCommand::Withdraw { amount: 6 })
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        RepositoryError::Rejected(AccountError::InsufficientFunds {
            balance: 5,
            asked: 6
        })
    ));
    let err = accounts.execute("b", &deposit(1)).await.unwrap_err();
    assert!(matches!(
        err,
        RepositoryError::Rejected(AccountError::NotOpen)
    ));
    assert_eq!(db.event_rows().await, 2);
    assert_eq!(accounts.load("a").await.unwrap().version, 2);
    db.finish().await;
}

pub async fn a_command_without_events_appends_nothing_and_succeeds<F: Fixture>() {
    let db = F::create().await;
    let accounts = repository(&db);
    accounts.execute("a", &open("Alice")).await.unwrap();
    accounts.execute("a", &AccountCommand::Close).await.unwrap();
    let before = db.event_rows().await;
    let again = accounts.execute("a", &AccountCommand::Close).await.unwrap();
    assert!(again.events.is_empty());
    assert!(again.global_positions.is_empty());
    assert_eq!(again.version, 2);
    assert_eq!(db.event_rows().await, before);
    db.finish().await;
}

/// Produces two events per command, to see metadata on each.
#[derive(Default)]
struct Twice(Account);

impl Aggregate for Twice {
    type Event = AccountEvent;
    type Command = i64;
    type Error = AccountError;
    fn apply(&mut self, event: &AccountEvent) {
        self.0.apply(event)
    }
    fn handle(&self, amount: &i64) -> Result<Vec<AccountEvent>, AccountError> {
        Ok(vec![
            AccountEvent::Deposited { amount: *amount },
            AccountEvent::Withdrawn { amount: *amount },
        ])
    }
}

pub async fn metadata_lands_on_every_event<F: Fixture>() {
    let db = F::create().await;
    let repo = Repository::<Twice, F::Store>::new(db.store().clone(), db.pool().clone());
    let (correlation, causation) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let metadata = Metadata::new()
        .with_correlation_id(correlation)
        .with_causation_id(causation)
        .with_trace_id("4bf92f3577b34da6a3ce929d0e0e4736")
        .with_field("user", "alice")
        .with_field("attempt", 1);
    let executed = repo.execute_with("a", &7, &metadata).await.unwrap();
    assert_eq!(executed.events.len(), 2);
    let stored = stored_events(&db, "a").await;
    assert_eq!(stored.len(), 2);
    for event in &stored {
        assert_eq!(event.correlation_id, Some(correlation));
        assert_eq!(event.causation_id, Some(causation));
        assert_eq!(
            event.trace_id.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        let fields: serde_json::Value = serde_json::from_str(event.metadata.get()).unwrap();
        assert_eq!(fields, serde_json::json!({"user": "alice", "attempt": 1}));
    }
    db.finish().await;
}

/// The test from the issue: 8 tasks, 100 deposits each, one account.
pub async fn eight_concurrent_depositors_end_with_the_exact_balance<F: Fixture>() {
    let db = F::create().await;
    let accounts = Arc::new(repository(&db).with_retry_policy(RetryPolicy::exponential(
        200,
        Duration::from_micros(200),
        Duration::from_millis(20),
    )));
    accounts.execute("shared", &open("Everyone")).await.unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(8));
    let tasks: Vec<_> = (0..8)
        .map(|task| {
            let (accounts, barrier) = (accounts.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let mut retried = 0;
                for i in 0..100 {
                    let done = accounts
                        .execute("shared", &deposit(task * 1000 + i + 1))
                        .await
                        .unwrap();
                    retried += done.attempts - 1;
                }
                retried
            })
        })
        .collect();
    let mut conflicts = 0;
    for task in tasks {
        conflicts += task.await.unwrap();
    }
    let expected: i64 = (0..8)
        .flat_map(|t| (0..100).map(move |i| t * 1000 + i + 1))
        .sum();
    let account = accounts.load("shared").await.unwrap();
    assert_eq!(account.state.balance, expected);
    assert_eq!(account.state.deposits, 800);
    // the Opened event, then the 800 deposits: versions 1..=801
    let versions: Vec<i64> = stored_events(&db, "shared")
        .await
        .iter()
        .map(|e| e.aggregate_version)
        .collect();
    assert_eq!(versions, (1..=801).collect::<Vec<_>>());
    println!("8 x 100 concurrent deposits: {conflicts} conflicts retried");
    assert!(
        conflicts > 0,
        "eight tasks on one aggregate should conflict"
    );
    drop(accounts);
    db.finish().await;
}

/// After a conflict, the repository's next command on the same aggregate
/// starts under the lock (no optimistic attempt to lose), for the policy's
/// contention window; with a zero window it tries optimistically first.
pub async fn a_recently_contended_aggregate_starts_under_the_lock<F: Fixture>() {
    let db = Arc::new(F::create().await);
    let window = RetryPolicy::default().with_contention_window(Duration::from_secs(60));
    let repo = observed(&*db).with_retry_policy(window);
    // optimistic first: it decides, loses to the holder, decides again
    assert_eq!(against_a_holder(&db, &repo, Start::Optimistic).await, 2);
    // contended moments ago: it waits for the lock before deciding
    assert_eq!(against_a_holder(&db, &repo, Start::Locked).await, 1);
    // a clone shares the memory
    assert_eq!(against_a_holder(&db, &repo.clone(), Start::Locked).await, 1);
    // without a window, every command tries optimistically first
    let optimistic = repo
        .clone()
        .with_retry_policy(window.with_contention_window(Duration::ZERO));
    assert_eq!(
        against_a_holder(&db, &optimistic, Start::Optimistic).await,
        2
    );
    // four holders' events and four commands'
    assert_eq!(repo.load("hot").await.unwrap().version, 8);
    drop((repo, optimistic));
    Arc::into_inner(db).unwrap().finish().await;
}

/// How a command is expected to start.
#[derive(Debug, PartialEq)]
enum Start {
    Optimistic,
    Locked,
}

/// Another transaction locks aggregate `hot` and appends to it; a command
/// runs meanwhile. Returns the attempts the command took, after checking
/// when it decided and on which state.
async fn against_a_holder<F: Fixture>(
    db: &Arc<F>,
    repo: &Repository<Observed, F::Store>,
    start: Start,
) -> u32 {
    let mut holder = db.pool().begin().await.unwrap();
    let version = db
        .store()
        .lock_aggregate(&mut *holder, ("Billing", "Account", "hot"))
        .await
        .unwrap();
    let event = Event::new(
        "Billing",
        "Account",
        "hot",
        "Deposited",
        &serde_json::json!({"amount": 1}),
    )
    .unwrap();
    db.store()
        .append(&mut *holder, ExpectedVersion::Exact(version), vec![event])
        .await
        .unwrap();
    let (decided, mut decisions) = tokio::sync::mpsc::unbounded_channel();
    let command = {
        let repo = repo.clone();
        tokio::spawn(async move { repo.execute("hot", &Observe { decided }).await })
    };
    match start {
        Start::Optimistic => {
            // it decides on the state before the holder's event, and its
            // append then waits for the holder
            assert_eq!(decisions.recv().await, Some(version));
            holder.commit().await.unwrap();
            assert_eq!(decisions.recv().await, Some(version + 1), "decided again");
        }
        Start::Locked => {
            let early = tokio::time::timeout(Duration::from_millis(500), decisions.recv()).await;
            assert!(
                early.is_err(),
                "it decided while another transaction held the lock: it did not start under it"
            );
            holder.commit().await.unwrap();
            assert_eq!(
                decisions.recv().await,
                Some(version + 1),
                "its only decision saw the holder's event"
            );
        }
    }
    let done = command.await.unwrap().unwrap();
    assert_eq!(decisions.recv().await, None, "no other decision");
    done.attempts
}

/// An aggregate whose handler reports the version it decides on.
#[derive(Debug, Default)]
struct Observed {
    version: i64,
}

#[derive(Clone)]
struct Observe {
    decided: tokio::sync::mpsc::UnboundedSender<i64>,
}

impl Aggregate for Observed {
    type Event = AccountEvent;
    type Command = Observe;
    type Error = Never;
    fn apply(&mut self, _: &AccountEvent) {
        self.version += 1;
    }
    fn handle(&self, observe: &Observe) -> Result<Vec<AccountEvent>, Never> {
        observe.decided.send(self.version).unwrap();
        Ok(vec![AccountEvent::Deposited { amount: 1 }])
    }
}

fn observed<F: Fixture>(db: &F) -> Repository<Observed, F::Store> {
    Repository::new(db.store().clone(), db.pool().clone())
}

/// An aggregate whose command handler lets a test interfere: before it
/// decides, another writer appends to the same aggregate, so the append
/// that follows conflicts.
#[derive(Debug, Default)]
struct Contested {
    version: i64,
}

#[derive(Clone)]
struct Interfere {
    /// Appends to aggregate `c` as another process would: on its own
    /// thread, runtime and pool, and waits until that append committed.
    writer: Arc<dyn Fn() + Send + Sync>,
    /// How many attempts get interfered with.
    times: u32,
    seen: Arc<AtomicU32>,
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Aggregate for Contested {
    type Event = AccountEvent;
    type Command = Interfere;
    type Error = Never;
    fn apply(&mut self, _: &AccountEvent) {
        self.version += 1;
    }
    fn handle(&self, interfere: &Interfere) -> Result<Vec<AccountEvent>, Never> {
        let attempt = interfere.seen.fetch_add(1, Ordering::SeqCst) + 1;
        if attempt <= interfere.times {
            // Another writer, on its own connection, moves the aggregate
            // while this attempt is deciding.
            (interfere.writer)();
        }
        Ok(vec![AccountEvent::Deposited { amount: 1 }])
    }
}

fn interfere<F: Fixture>(db: &Arc<F>, times: u32) -> Interfere {
    let db = db.clone();
    let writer = move || {
        let db = db.clone();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    let pool = db.another_pool().await;
                    let mut conn = pool.acquire().await.unwrap();
                    let event = Event::new(
                        "Billing",
                        "Account",
                        "c",
                        "Deposited",
                        &serde_json::json!({"amount": 1}),
                    )
                    .unwrap();
                    db.store()
                        .append(&mut *conn, ExpectedVersion::Any, vec![event])
                        .await
                        .unwrap();
                    drop(conn);
                    pool.close().await;
                })
        })
        .join()
        .unwrap();
    };
    Interfere {
        writer: Arc::new(writer),
        times,
        seen: Arc::new(AtomicU32::new(0)),
    }
}

fn contested<F: Fixture>(db: &F) -> Repository<Contested, F::Store> {
    Repository::new(db.store().clone(), db.pool().clone())
}

pub async fn conflicts_are_retried_up_to_the_policy_with_backoff<F: Fixture>() {
    let db = Arc::new(F::create().await);
    let backoff = Duration::from_millis(40);
    // The interfering writer appends while the handler runs: under the
    // aggregate lock of a locked retry it would wait for the handler, which
    // waits for it. These tests are about the optimistic retries.
    let repo =
        contested(&*db).with_retry_policy(RetryPolicy::fixed(4, backoff).with_lock_on_retry(false));

    // two attempts lose, the third wins
    let command = interfere(&db, 2);
    let started = Instant::now();
    let done = repo.execute("c", &command).await.unwrap();
    assert_eq!(done.attempts, 3);
    assert_eq!(command.seen.load(Ordering::SeqCst), 3);
    assert!(started.elapsed() >= backoff * 2, "two backoffs were waited");
    assert_eq!(done.version, 3, "two interfering events, then ours");
    drop(command);

    // every attempt loses: the caller gets the conflict and the attempts made
    let command = interfere(&db, u32::MAX);
    let started = Instant::now();
    let err = repo.execute("c", &command).await.unwrap_err();
    match err {
        RepositoryError::Conflict {
            attempts,
            expected,
            actual,
            aggregate,
        } => {
            assert_eq!(attempts, 4);
            assert_eq!(aggregate.aggregate_id, "c");
            let ExpectedVersion::Exact(v) = expected else {
                panic!("{expected:?}")
            };
            assert_eq!(actual, Some(v + 1));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(command.seen.load(Ordering::SeqCst), 4);
    assert!(
        started.elapsed() >= backoff * 3,
        "three backoffs were waited"
    );
    drop(command);

    // no retry at all
    let repo = repo.with_retry_policy(RetryPolicy::none().with_lock_on_retry(false));
    let command = interfere(&db, 1);
    let err = repo.execute("c", &command).await.unwrap_err();
    assert!(matches!(err, RepositoryError::Conflict { attempts: 1, .. }));
    // the interfering writers' events are all there, ours only when we won
    assert_eq!(db.event_rows().await, 2 + 1 + 4 + 1);
    drop((repo, command));
    Arc::into_inner(db).unwrap().finish().await;
}

pub async fn jitter_policies_are_honoured<F: Fixture>() {
    let db = Arc::new(F::create().await);
    let repo = contested(&*db).with_retry_policy(
        RetryPolicy::exponential(3, Duration::from_millis(30), Duration::from_millis(30))
            .with_jitter(Jitter::Equal)
            .with_lock_on_retry(false),
    );
    let started = Instant::now();
    let command = interfere(&db, 2);
    let done = repo.execute("c", &command).await.unwrap();
    assert_eq!(done.attempts, 3);
    // equal jitter waits at least half of each backoff
    assert!(started.elapsed() >= Duration::from_millis(30));
    drop((repo, command));
    Arc::into_inner(db).unwrap().finish().await;
}

/// A write of the caller's own, in the caller's transaction: a row of the
/// fixture's test table.
fn audit_row() -> Handled {
    Handled {
        event_id: uuid::Uuid::now_v7(),
        global_position: 0,
        aggregate_id: "transfer".into(),
        aggregate_version: 0,
        worker: "audit".into(),
    }
}

pub async fn execute_in_commits_and_rolls_back_with_the_caller<F: Fixture>() {
    let db = Arc::new(F::create().await);
    let accounts = repository(&*db);
    db.create_read_model().await;
    accounts.execute("a", &open("Alice")).await.unwrap();
    accounts.execute("a", &deposit(100)).await.unwrap();
    accounts.execute("b", &open("Bob")).await.unwrap();

    // rolled back: neither the caller's row nor the events remain
    let mut tx = db.pool().begin().await.unwrap();
    F::record(&mut *tx, &audit_row()).await.unwrap();
    accounts
        .execute_in(&mut *tx, "a", &AccountCommand::Withdraw { amount: 40 })
        .await
        .unwrap();
    accounts
        .execute_in(&mut *tx, "b", &deposit(40))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(db.handled().await.len(), 0);
    assert_eq!(accounts.load("a").await.unwrap().state.balance, 100);
    assert_eq!(accounts.load("b").await.unwrap().version, 1);

    // committed: both accounts and the caller's row
    let mut tx = db.pool().begin().await.unwrap();
    F::record(&mut *tx, &audit_row()).await.unwrap();
    accounts
        .execute_in(&mut *tx, "a", &AccountCommand::Withdraw { amount: 40 })
        .await
        .unwrap();
    accounts
        .execute_in(&mut *tx, "b", &deposit(40))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(db.handled().await.len(), 1);
    assert_eq!(accounts.load("a").await.unwrap().state.balance, 60);
    assert_eq!(accounts.load("b").await.unwrap().state.balance, 40);

    // a refusal inside the transaction is reported and leaves it usable
    let mut tx = db.pool().begin().await.unwrap();
    let err = accounts
        .execute_in(&mut *tx, "a", &AccountCommand::Withdraw { amount: 1000 })
        .await
        .unwrap_err();
    assert!(matches!(err, RepositoryError::Rejected(_)));
    accounts
        .execute_in(&mut *tx, "a", &deposit(1))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(accounts.load("a").await.unwrap().state.balance, 61);

    // a conflict inside the caller's transaction is not retried
    let mut tx = db.pool().begin().await.unwrap();
    let command = interfere(&db, 1);
    let err = contested(&*db)
        .execute_in(&mut *tx, "c", &command)
        .await
        .unwrap_err();
    assert!(matches!(err, RepositoryError::Conflict { attempts: 1, .. }));
    tx.rollback().await.unwrap();
    drop((accounts, command));
    Arc::into_inner(db).unwrap().finish().await;
}

pub async fn snapshots_give_the_same_state_as_full_folds<F: Fixture>() {
    let db = F::create().await;
    let plain = repository(&db);
    let snapshotting = repository(&db).with_snapshots(10, 1);
    snapshotting.execute("a", &open("Alice")).await.unwrap();
    for i in 1..=94 {
        let command = if i % 5 == 0 {
            AccountCommand::Withdraw { amount: 3 }
        } else {
            deposit(i)
        };
        snapshotting.execute("a", &command).await.unwrap();
    }
    let mut conn = db.pool().acquire().await.unwrap();
    let snapshot = db
        .store()
        .load_snapshot(&mut *conn, ("Billing", "Account", "a"), None)
        .await
        .unwrap()
        .expect("a snapshot every 10 events");
    assert_eq!(snapshot.version, 90);
    assert_eq!(snapshot.schema_version, 1);
    drop(conn);

    let full = plain.load("a").await.unwrap();
    let from_snapshot = snapshotting.load("a").await.unwrap();
    assert_eq!(full.version, 95);
    assert_eq!(from_snapshot, full);
    // time travel below the snapshot folds from the start
    for v in [0, 1, 45, 89, 90, 91, 95, 200] {
        assert_eq!(
            snapshotting.load_at("a", v).await.unwrap(),
            plain.load_at("a", v).await.unwrap(),
            "version {v}"
        );
    }
    db.finish().await;
}

pub async fn loading_starts_from_the_snapshot_and_ignores_unusable_ones<F: Fixture>() {
    let db = F::create().await;
    let plain = repository(&db);
    let snapshotting = repository(&db).with_snapshots(1000, 3);
    plain.execute("a", &open("Alice")).await.unwrap();
    for _ in 0..4 {
        plain.execute("a", &deposit(10)).await.unwrap();
    }
    let truth = plain.load("a").await.unwrap();
    let save = async |snapshot: Snapshot| {
        let mut conn = db.pool().acquire().await.unwrap();
        db.store()
            .save_snapshot(&mut *conn, &snapshot)
            .await
            .unwrap();
    };

    // A snapshot at version 3 with a distinguishable state: loading uses it
    // and folds only versions 4 and 5 on top.
    let marked = Account {
        owner: Some("from the snapshot".into()),
        balance: 1_000,
        open: true,
        deposits: 0,
    };
    save(Snapshot::new("Billing", "Account", "a", 3, 3, &marked).unwrap()).await;
    let loaded = snapshotting.load("a").await.unwrap();
    assert_eq!(loaded.version, 5);
    assert_eq!(loaded.state.owner.as_deref(), Some("from the snapshot"));
    assert_eq!(loaded.state.balance, 1_020);
    assert_eq!(loaded.state.deposits, 2);

    // another schema version: ignored, full fold
    save(Snapshot::new("Billing", "Account", "a", 4, 2, &marked).unwrap()).await;
    assert_eq!(snapshotting.load("a").await.unwrap(), truth);
    // a state that does not decode: ignored, full fold
    save(
        Snapshot::new(
            "Billing",
            "Account",
            "a",
            5,
            3,
            &serde_json::json!({"balance": "many"}),
        )
        .unwrap(),
    )
    .await;
    assert_eq!(snapshotting.load("a").await.unwrap(), truth);
    db.finish().await;
}

pub async fn snapshot_is_the_state_loading_starts_from<F: Fixture>() {
    let db = F::create().await;
    let plain = repository(&db);
    let snapshotting = repository(&db).with_snapshots(10, 1);
    assert_eq!(snapshotting.snapshot("a").await.unwrap(), None);
    snapshotting.execute("a", &open("Alice")).await.unwrap();
    for amount in 1..=13 {
        snapshotting.execute("a", &deposit(amount)).await.unwrap();
    }
    // the one the repository took when the aggregate crossed version 10
    let taken = snapshotting
        .snapshot("a")
        .await
        .unwrap()
        .expect("a snapshot every 10 events");
    assert_eq!(taken.version, 10);
    assert_eq!(taken, plain.load_at("a", 10).await.unwrap());
    // a repository without snapshots starts from none
    assert_eq!(plain.snapshot("a").await.unwrap(), None);
    assert_eq!(snapshotting.snapshot("b").await.unwrap(), None);

    // the stored ones that loading ignores are not given
    let save = async |snapshot: Snapshot| {
        let mut conn = db.pool().acquire().await.unwrap();
        db.store()
            .save_snapshot(&mut *conn, &snapshot)
            .await
            .unwrap();
    };
    let at_11 = plain.load_at("a", 11).await.unwrap();
    save(Snapshot::new("Billing", "Account", "a", 11, 2, &at_11.state).unwrap()).await;
    assert_eq!(snapshotting.snapshot("a").await.unwrap(), None, "schema 2");
    let undecodable = serde_json::json!({"balance": "many"});
    save(Snapshot::new("Billing", "Account", "a", 12, 1, &undecodable).unwrap()).await;
    assert_eq!(
        snapshotting.snapshot("a").await.unwrap(),
        None,
        "no Account"
    );
    let at_13 = plain.load_at("a", 13).await.unwrap();
    save(Snapshot::new("Billing", "Account", "a", 13, 1, &at_13.state).unwrap()).await;
    assert_eq!(snapshotting.snapshot("a").await.unwrap(), Some(at_13));
    assert_eq!(
        snapshotting.load("a").await.unwrap(),
        plain.load("a").await.unwrap()
    );

    assert!(matches!(
        snapshotting.snapshot("").await,
        Err(RepositoryError::Store(Error::EmptyName { .. }))
    ));
    db.finish().await;
}

pub async fn lock_in_holds_other_writers_off_until_the_transaction_ends<F: Fixture>() {
    let db = Arc::new(F::create().await);
    let repo = observed(&*db);
    let (ours, _our_decisions) = tokio::sync::mpsc::unbounded_channel();
    let observe = Observe { decided: ours };

    // an aggregate without events is at version 0 (and cannot be locked)
    let mut tx = db.pool().begin().await.unwrap();
    assert_eq!(repo.lock_in(&mut *tx, "hot").await.unwrap(), 0);
    tx.rollback().await.unwrap();
    for _ in 0..2 {
        repo.execute("hot", &observe).await.unwrap();
    }

    let mut tx = db.pool().begin().await.unwrap();
    assert_eq!(repo.lock_in(&mut *tx, "hot").await.unwrap(), 2);
    // another writer decides on version 2; its append waits for the lock
    let (decided, mut decisions) = tokio::sync::mpsc::unbounded_channel();
    let other = {
        let repo = observed(&*db);
        tokio::spawn(async move { repo.execute("hot", &Observe { decided }).await })
    };
    assert_eq!(decisions.recv().await, Some(2));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !other.is_finished(),
        "another writer appended while the aggregate was locked"
    );
    // so what the holder decides on the version it locked cannot conflict
    let executed = repo.execute_in(&mut *tx, "hot", &observe).await.unwrap();
    assert_eq!((executed.version, executed.attempts), (3, 1));
    tx.commit().await.unwrap();
    // the other writer lost the race it waited in, and decided again
    assert_eq!(decisions.recv().await, Some(3));
    let done = other.await.unwrap().unwrap();
    assert_eq!((done.version, done.attempts), (4, 2));
    assert_eq!(decisions.recv().await, None, "no other decision");

    let mut conn = db.pool().acquire().await.unwrap();
    assert!(matches!(
        repo.lock_in(&mut *conn, "").await,
        Err(RepositoryError::Store(Error::EmptyName { .. }))
    ));
    drop((conn, repo, observe));
    Arc::into_inner(db).unwrap().finish().await;
}

pub async fn an_undecodable_stored_event_is_a_typed_error<F: Fixture>() {
    let db = F::create().await;
    let mut conn = db.pool().acquire().await.unwrap();
    let bad = Event::new(
        "Billing",
        "Account",
        "a",
        "Deposited",
        &serde_json::json!({"amount": "ten"}),
    )
    .unwrap();
    let unknown = Event::new("Billing", "Account", "b", "Frozen", &serde_json::json!({})).unwrap();
    db.store()
        .append(&mut *conn, ExpectedVersion::NoStream, vec![bad])
        .await
        .unwrap();
    db.store()
        .append(&mut *conn, ExpectedVersion::NoStream, vec![unknown])
        .await
        .unwrap();
    drop(conn);
    let accounts = repository(&db);
    for id in ["a", "b"] {
        let err = accounts.load(id).await.unwrap_err();
        assert!(
            matches!(&err, RepositoryError::Decode { aggregate, .. } if aggregate.aggregate_id == id),
            "{err:?}"
        );
        assert!(accounts.execute(id, &deposit(1)).await.is_err());
    }
    let err = accounts.load("a").await.unwrap_err();
    assert!(err.to_string().contains("Deposited"), "{err}");
    drop(accounts);
    db.finish().await;
}

pub async fn a_state_cache_never_decides_on_stale_state<F: Fixture>() {
    let db = F::create().await;
    let cached = repository(&db).with_state_cache(16);
    let other = repository(&db);
    cached.execute("a", &open("Alice")).await.unwrap();
    let hit = cached.execute("a", &deposit(10)).await.unwrap();
    assert_eq!((hit.version, hit.state.balance, hit.attempts), (2, 10, 1));

    // Another writer moves the aggregate: the cache is stale. A command
    // the stale state rejects is decided again on the current state.
    other.execute("a", &deposit(100)).await.unwrap();
    let withdrawn = cached
        .execute("a", &AccountCommand::Withdraw { amount: 105 })
        .await
        .unwrap();
    assert_eq!((withdrawn.version, withdrawn.state.balance), (4, 5));

    // A command the stale state accepts conflicts, and runs again on the
    // current state.
    other.execute("a", &deposit(1)).await.unwrap();
    let deposited = cached.execute("a", &deposit(1)).await.unwrap();
    assert_eq!((deposited.version, deposited.state.balance), (6, 7));

    // A rejection stands once confirmed, and writes nothing.
    let refused = cached
        .execute("a", &AccountCommand::Withdraw { amount: 8 })
        .await;
    assert!(
        matches!(
            refused,
            Err(RepositoryError::Rejected(AccountError::InsufficientFunds {
                balance: 7,
                asked: 8
            }))
        ),
        "{refused:?}"
    );
    let loaded = other.load("a").await.unwrap();
    assert_eq!((loaded.version, loaded.state.balance), (6, 7));

    // Capacity 1: the least recently used aggregate is forgotten, and
    // commands on it load as usual.
    let small = repository(&db).with_state_cache(1);
    for id in ["b", "c", "b"] {
        small.execute(id, &open(id)).await.ok();
        small.execute(id, &deposit(1)).await.unwrap();
    }
    assert_eq!(other.load("b").await.unwrap().state.balance, 2);
    assert_eq!(other.load("c").await.unwrap().state.balance, 1);
    db.finish().await;
}

/// The ids of a stored aggregate's events, in version order.
async fn stored_ids<F: Fixture>(db: &F, id: &str) -> Vec<uuid::Uuid> {
    stored_events(db, id)
        .await
        .iter()
        .map(|e| e.event_id)
        .collect()
}

pub async fn a_command_id_applied_before_returns_its_original_outcome<F: Fixture>() {
    use es::store::CommandId;

    let db = F::create().await;
    // Through the state cache and without it: the answer is the store's.
    let cached = repository(&db).with_state_cache(16);
    let plain = repository(&db);
    cached.execute("a", &open("Alice")).await.unwrap();
    let key = Metadata::new().with_command_id(CommandId::from_key("request-1"));
    let first = cached.execute_with("a", &deposit(10), &key).await.unwrap();
    assert!(!first.replayed);
    assert_eq!(first.command_id, CommandId::from_key("request-1"));
    assert_eq!(first.version, 2);
    assert_eq!(
        stored_ids(&db, "a").await[1],
        CommandId::from_key("request-1").event_id(0),
        "the event id is derived from the command id"
    );

    // The aggregate moves on; the same command id still answers with the
    // original outcome, and nothing is appended.
    cached.execute("a", &deposit(5)).await.unwrap();
    for repository in [&cached, &plain] {
        let again = repository
            .execute_with("a", &deposit(10), &key)
            .await
            .unwrap();
        assert!(again.replayed);
        assert_eq!(again.version, first.version);
        assert_eq!(again.global_positions, first.global_positions);
        assert_eq!(again.events, first.events);
        assert_eq!(
            again.state.balance, 10,
            "the state right after the original"
        );
    }
    // In the caller's transaction too.
    let mut tx = db.pool().begin().await.unwrap();
    let inside = plain
        .execute_in_with(&mut *tx, "a", &deposit(10), &key)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(inside.replayed);
    assert_eq!(inside.global_positions, first.global_positions);

    assert_eq!(stored_events(&db, "a").await.len(), 3);
    let loaded = plain.load("a").await.unwrap();
    assert_eq!((loaded.version, loaded.state.balance), (3, 15));
    // The cache still answers with the current state.
    let next = cached.execute("a", &deposit(1)).await.unwrap();
    assert_eq!((next.version, next.state.balance), (4, 16));
    db.finish().await;
}

pub async fn a_reused_command_id_is_a_typed_error_and_writes_nothing<F: Fixture>() {
    use es::aggregate::CommandIdReuse;
    use es::store::CommandId;

    let db = F::create().await;
    let accounts = repository(&db).with_state_cache(16);
    accounts.execute("a", &open("Alice")).await.unwrap();
    accounts.execute("b", &open("Bob")).await.unwrap();
    let key = Metadata::new().with_command_id(CommandId::from_key("request-2"));
    accounts
        .execute_with("a", &deposit(10), &key)
        .await
        .unwrap();
    let events_before = db.event_rows().await;

    // Another aggregate.
    match accounts.execute_with("b", &deposit(10), &key).await {
        Err(RepositoryError::CommandIdReused {
            command_id,
            aggregate,
            reason: CommandIdReuse::OtherAggregate(other),
        }) => {
            assert_eq!(command_id, CommandId::from_key("request-2"));
            assert_eq!(aggregate.aggregate_id, "b");
            assert_eq!(other.aggregate_id, "a");
        }
        other => panic!("expected CommandIdReused for another aggregate, got {other:?}"),
    }
    // A different command on the same aggregate: one that decides other
    // events on the original state, and one that the original state refuses.
    for different in [deposit(11), AccountCommand::Withdraw { amount: 1_000 }] {
        match accounts.execute_with("a", &different, &key).await {
            Err(RepositoryError::CommandIdReused {
                reason: CommandIdReuse::DifferentCommand { version: 2 },
                ..
            }) => {}
            other => panic!("expected CommandIdReused for a different command, got {other:?}"),
        }
    }
    let mut tx = db.pool().begin().await.unwrap();
    let inside = accounts
        .execute_in_with(&mut *tx, "b", &deposit(10), &key)
        .await;
    tx.rollback().await.unwrap();
    assert!(
        matches!(inside, Err(RepositoryError::CommandIdReused { .. })),
        "{inside:?}"
    );
    assert_eq!(db.event_rows().await, events_before, "nothing was written");
    assert_eq!(accounts.load("b").await.unwrap().state.balance, 0);
    db.finish().await;
}

pub async fn a_long_batch_of_one_command_is_replayed_whole<F: Fixture>() {
    use es::store::{CommandId, DomainEvent};

    /// An aggregate whose one command produces `n` events.
    #[derive(Default)]
    struct Counter(i64);
    #[derive(Debug, thiserror::Error)]
    #[error("never")]
    struct Never;
    impl Aggregate for Counter {
        type Event = AccountEvent;
        type Command = usize;
        type Error = Never;
        fn apply(&mut self, _: &AccountEvent) {
            self.0 += 1;
        }
        fn handle(&self, n: &usize) -> Result<Vec<AccountEvent>, Never> {
            Ok((0..*n as i64)
                .map(|i| AccountEvent::Deposited {
                    amount: self.0 + i + 1,
                })
                .collect())
        }
    }
    let db = F::create().await;
    let counters = Repository::<Counter, F::Store>::new(db.store().clone(), db.pool().clone());
    counters.execute("c", &3).await.unwrap();
    // 40 events: more than one lookup's worth of ids.
    let key = Metadata::new().with_command_id(CommandId::from_key("batch"));
    let first = counters.execute_with("c", &40, &key).await.unwrap();
    counters.execute("c", &2).await.unwrap();
    let again = counters.execute_with("c", &40, &key).await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.version, 43);
    assert_eq!(again.global_positions, first.global_positions);
    assert_eq!(again.state.0, 43);
    let encoded = |events: &[AccountEvent]| {
        AccountEvent::to_events(events, "c", &Metadata::new())
            .unwrap()
            .into_iter()
            .map(|e| e.payload.get().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(encoded(&again.events), encoded(&first.events));
    assert_eq!(stored_events(&db, "c").await.len(), 45);
    db.finish().await;
}
