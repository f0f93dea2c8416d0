//! Commands against real faults on a private PostgreSQL server of each
//! test's own: restarts (fast, and immediate, which forces crash
//! recovery), backends terminated under the pool, and a proxy that loses
//! the reply to a commit. Every command that returned `Ok` must be stored
//! exactly once at the version it returned, none twice, and the failures
//! the retries absorb must not reach the caller.

mod support;

#[path = "../examples/bank/domain.rs"]
#[allow(dead_code)]
mod bank;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bank::{Account, AccountCommand, AccountError, AccountEvent};
use es::aggregate::Executed;
use es::store::{
    AggregateStreamReader, Event, EventStore, ExpectedVersion, PostgresStore, SnapshotStore,
};
use es::{Aggregate, Repository, RepositoryError, RetryPolicy};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use support::proxy::Proxy;
use support::server::TestServer;
use tokio::sync::watch;

/// The tasks running commands.
const TASKS: usize = 8;
/// The accounts they share.
const SHARED: [&str; 2] = ["shared-0", "shared-1"];

/// Patient enough to ride out a restart with crash recovery on a loaded
/// machine: 20 retries of up to 1 s, each try that cannot connect waiting
/// up to the pool's 2 s acquire timeout on top.
fn patient() -> RetryPolicy {
    RetryPolicy::default().with_transient_retries(
        20,
        Duration::from_millis(10),
        Duration::from_secs(1),
    )
}

fn options(port: u16, application: &str) -> PgConnectOptions {
    format!("postgres://postgres@127.0.0.1:{port}/test")
        .parse::<PgConnectOptions>()
        .unwrap()
        .application_name(application)
}

async fn pool(port: u16, application: &str, size: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(Duration::from_secs(2))
        .connect_with(options(port, application))
        .await
        .expect("connect to the private server")
}

/// The store's capabilities the tests need, on any backend.
trait Store: EventStore + AggregateStreamReader + SnapshotStore + Clone {}
impl<S: EventStore + AggregateStreamReader + SnapshotStore + Clone> Store for S {}

/// A migrated PostgreSQL store on `pool`, with the accounts the tasks use
/// opened.
async fn accounts(pool: &PgPool) -> Repository<Account, PostgresStore> {
    let store = PostgresStore::new();
    store.migrate(pool).await.expect("migrations apply");
    open_accounts(store, pool.clone()).await
}

/// A repository with the accounts the tasks use opened.
async fn open_accounts<S: Store>(
    store: S,
    pool: sqlx::Pool<S::Database>,
) -> Repository<Account, S> {
    let repository = Repository::new(store, pool).with_retry_policy(patient());
    let owned = (0..TASKS).map(|t| format!("own-{t}"));
    for id in owned.chain(SHARED.iter().map(|s| s.to_string())) {
        repository
            .execute(&id, &AccountCommand::Open { owner: id.clone() })
            .await
            .unwrap();
    }
    repository
}

/// What one command did.
struct Outcome {
    aggregate: String,
    amount: i64,
    took: Duration,
    result: Result<Executed<Account>, RepositoryError<AccountError>>,
}

/// Runs the tasks until `stop`, each alternating between its own account
/// and a shared one, every deposit of a distinct amount; `progress` counts
/// the commands done.
async fn run_tasks<S: Store>(
    repository: &Repository<Account, S>,
    stop: Arc<AtomicBool>,
    progress: Arc<watch::Sender<usize>>,
) -> Vec<Outcome> {
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (repository, stop, progress) = (repository.clone(), stop.clone(), progress.clone());
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let aggregate = if n % 2 == 0 {
                    format!("own-{t}")
                } else {
                    SHARED[(n / 2) % 2].to_owned()
                };
                let amount = (t as i64 + 1) * 1_000_000 + n as i64;
                let started = Instant::now();
                let result = repository
                    .execute(&aggregate, &AccountCommand::Deposit { amount })
                    .await;
                outcomes.push(Outcome {
                    aggregate,
                    amount,
                    took: started.elapsed(),
                    result,
                });
                progress.send_modify(|done| *done += 1);
                n += 1;
            }
            outcomes
        }));
    }
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.extend(task.await.unwrap());
    }
    outcomes
}

/// Waits until `more` commands were done after now.
async fn commands_done(progress: &watch::Sender<usize>, more: usize) {
    let target = *progress.borrow() + more;
    progress
        .subscribe()
        .wait_for(|done| *done >= target)
        .await
        .unwrap();
}

/// Checks every outcome against what is stored, and reports.
async fn check<S: Store>(name: &str, repository: &Repository<Account, S>, outcomes: &[Outcome]) {
    let store = repository.store();
    let mut conn = repository.pool().acquire().await.unwrap();
    // amount -> (aggregate, version, event id) of each stored deposit
    let mut stored: HashMap<i64, Vec<(String, i64, uuid::Uuid)>> = HashMap::new();
    let owned = (0..TASKS).map(|t| format!("own-{t}"));
    for id in owned.chain(SHARED.iter().map(|s| s.to_string())) {
        let stream = store
            .read_aggregate_stream(&mut *conn, ("Billing", "Account", id.as_str()), ..)
            .await
            .unwrap();
        for event in stream.events {
            if event.event_type == "Deposited" {
                let amount = serde_json::from_str::<serde_json::Value>(event.payload.get())
                    .unwrap()["amount"]
                    .as_i64()
                    .unwrap();
                stored.entry(amount).or_default().push((
                    id.clone(),
                    event.aggregate_version,
                    event.event_id,
                ));
            }
        }
    }
    let errors: Vec<String> = outcomes
        .iter()
        .filter_map(|o| {
            o.result
                .as_ref()
                .err()
                .map(|e| format!("{}: {e}", o.amount))
        })
        .collect();
    for outcome in outcomes {
        let copies = stored.get(&outcome.amount).map_or(0, Vec::len);
        assert!(
            copies <= 1,
            "deposit {} is stored {copies} times",
            outcome.amount
        );
        if let Ok(executed) = &outcome.result {
            let (aggregate, version, event_id) =
                &stored.get(&outcome.amount).unwrap_or_else(|| {
                    panic!("deposit {} returned Ok but is not stored", outcome.amount)
                })[0];
            assert_eq!(aggregate, &outcome.aggregate);
            assert_eq!(
                *version, executed.version,
                "deposit {} is stored at the version it returned",
                outcome.amount
            );
            assert_eq!(*event_id, executed.command_id.event_id(0));
        }
    }
    assert_eq!(
        stored.values().map(Vec::len).sum::<usize>(),
        outcomes
            .iter()
            .filter(|o| stored.contains_key(&o.amount))
            .count(),
        "every stored deposit is one a task made"
    );
    let retries: u32 = outcomes
        .iter()
        .filter_map(|o| o.result.as_ref().ok())
        .map(|e| e.transient_retries)
        .sum();
    let retried = outcomes
        .iter()
        .filter(|o| o.result.as_ref().is_ok_and(|e| e.transient_retries > 0))
        .count();
    let replayed = outcomes
        .iter()
        .filter(|o| o.result.as_ref().is_ok_and(|e| e.replayed))
        .count();
    let stall = outcomes.iter().map(|o| o.took).max().unwrap_or_default();
    eprintln!(
        "{name}: {} commands, {} failed, {retried} retried after transient failures ({retries} retries in all), \
         {replayed} found stored by their retry (lost reply), longest stall {stall:?}",
        outcomes.len(),
        errors.len(),
    );
    assert!(errors.is_empty(), "callers saw errors: {errors:#?}");
    assert!(retries > 0, "the faults were felt");
}

/// Restarts the PostgreSQL server three times while the tasks run.
async fn commands_across_restarts(name: &str, immediate: bool) {
    let server = TestServer::postgres();
    let pool = pool(server.port(), "es-faults", 8).await;
    let repository = accounts(&pool).await;
    let server = under_restarts(name, server, &repository, immediate).await;
    let recoveries = server
        .log()
        .matches("not properly shut down; automatic recovery in progress")
        .count();
    assert_eq!(
        recoveries,
        if immediate { 3 } else { 0 },
        "crash recoveries"
    );
    pool.close().await;
    drop(server);
}

/// Restarts the MariaDB server three times while the tasks run.
#[cfg(feature = "mysql")]
async fn mysql_commands_across_restarts(name: &str, immediate: bool) {
    let server = TestServer::mysql();
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(2))
        .connect(&server.url())
        .await
        .expect("connect to the private server");
    let store = es::store::MySqlStore::new();
    store.migrate(&pool).await.expect("migrations apply");
    let repository = open_accounts(store, pool.clone()).await;
    let server = under_restarts(name, server, &repository, immediate).await;
    let recoveries = server
        .log()
        .matches("InnoDB: Starting crash recovery")
        .count();
    assert_eq!(
        recoveries,
        if immediate { 3 } else { 0 },
        "crash recoveries"
    );
    pool.close().await;
    drop(server);
}

/// Runs the tasks while `server` is restarted three times (after 30
/// commands each time), and checks what they were told against what is
/// stored. Gives the server back.
async fn under_restarts<S: Store>(
    name: &str,
    mut server: TestServer,
    repository: &Repository<Account, S>,
    immediate: bool,
) -> TestServer {
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(watch::channel(0).0);
    let controller = {
        let (stop, progress) = (stop.clone(), progress.clone());
        async move {
            for _ in 0..3 {
                commands_done(&progress, 30).await;
                server = tokio::task::spawn_blocking(move || {
                    if immediate {
                        server.stop_immediate();
                    } else {
                        server.stop_fast();
                    }
                    server.start();
                    server
                })
                .await
                .unwrap();
            }
            commands_done(&progress, 30).await;
            stop.store(true, Ordering::SeqCst);
            server
        }
    };
    let (outcomes, server) = tokio::join!(run_tasks(repository, stop, progress), controller);
    check(name, repository, &outcomes).await;
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commands_survive_fast_restarts() {
    commands_across_restarts("fast restarts", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commands_survive_immediate_restarts_with_crash_recovery() {
    commands_across_restarts("immediate restarts", true).await;
}

#[cfg(feature = "mysql")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mysql_commands_survive_fast_restarts() {
    mysql_commands_across_restarts("MariaDB fast restarts", false).await;
}

#[cfg(feature = "mysql")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mysql_commands_survive_immediate_restarts_with_crash_recovery() {
    mysql_commands_across_restarts("MariaDB immediate restarts", true).await;
}

/// After 10 commands, terminates a random backend of the pool
/// `es-faults` every 100 ms, 40 times; after 30 more commands, tells the
/// tasks to stop. Returns how many backends it terminated.
async fn terminate_backends_every_100ms(
    port: u16,
    stop: Arc<AtomicBool>,
    progress: Arc<watch::Sender<usize>>,
) -> i64 {
    let mut admin = PgConnection::connect_with(&options(port, "es-faults-admin"))
        .await
        .unwrap();
    let mut terminated = 0;
    let mut every = tokio::time::interval(Duration::from_millis(100));
    commands_done(&progress, 10).await;
    for _ in 0..40 {
        every.tick().await;
        terminated += sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = 'es-faults' ORDER BY random() LIMIT 1) AS t",
        )
        .fetch_one(&mut admin)
        .await
        .unwrap();
    }
    commands_done(&progress, 30).await;
    stop.store(true, Ordering::SeqCst);
    admin.close().await.ok();
    terminated
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commands_survive_backends_terminated_every_100ms() {
    let server = TestServer::postgres();
    let port = server.port();
    let pool = pool(port, "es-faults", 8).await;
    let repository = accounts(&pool).await;
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(watch::channel(0).0);
    let controller = terminate_backends_every_100ms(port, stop.clone(), progress.clone());
    let (outcomes, terminated) = tokio::join!(run_tasks(&repository, stop, progress), controller);
    eprintln!("terminated {terminated} backends");
    assert!(terminated > 0);
    check("terminated backends", &repository, &outcomes).await;
    pool.close().await;
    drop(server);
}

/// The deposit whose commit's reply the proxy loses: a marker no other
/// message holds.
const LOST: i64 = 777_001;

async fn deposits_of(pool: &PgPool, id: &str, amount: i64) -> Vec<(i64, uuid::Uuid)> {
    let mut conn = pool.acquire().await.unwrap();
    PostgresStore::new()
        .read_aggregate_stream(&mut *conn, ("Billing", "Account", id), ..)
        .await
        .unwrap()
        .events
        .iter()
        .filter(|e| {
            serde_json::from_str::<serde_json::Value>(e.payload.get()).unwrap()["amount"] == amount
        })
        .map(|e| (e.aggregate_version, e.event_id))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_reply_to_a_self_committing_append_returns_the_original_result() {
    let server = TestServer::postgres();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port()).into()).await;
    let pool = pool(proxy.port(), "es-proxy", 2).await;
    let store = PostgresStore::new();
    store.migrate(&pool).await.unwrap();
    let repository = Repository::<Account, _>::new(store, pool.clone());
    repository
        .execute("a", &AccountCommand::Open { owner: "A".into() })
        .await
        .unwrap();

    proxy.lose_commit_reply_after(LOST.to_string().as_bytes());
    let (done, dropped) = tokio::join!(
        repository.execute("a", &AccountCommand::Deposit { amount: LOST }),
        proxy.dropped()
    );
    // The append is one statement that commits on its own.
    assert!(!dropped.explicit_commit);
    let done = done.expect("the retry absorbs the lost reply");
    assert!(done.replayed, "the retry found the committed events");
    assert!(done.transient_retries >= 1);
    assert_eq!(done.version, 2);
    eprintln!(
        "lost reply to the append: {} retr(ies), found stored at version {}",
        done.transient_retries, done.version
    );
    let direct = self::pool(server.port(), "es-check", 1).await;
    assert_eq!(
        deposits_of(&direct, "a", LOST).await,
        [(2, done.command_id.event_id(0))],
        "stored once"
    );
    assert_eq!(repository.load("a").await.unwrap().state.balance, LOST);
    pool.close().await;
    direct.close().await;
}

/// An account whose first decision lets another writer in (so the retry
/// runs in a transaction that locks the aggregate and ends with `COMMIT`).
#[derive(Default)]
struct Raced(Account);

struct Race {
    amount: i64,
    /// The server the other writer appends on, directly.
    port: u16,
    raced: AtomicBool,
}

impl Aggregate for Raced {
    type Event = AccountEvent;
    type Command = Race;
    type Error = AccountError;

    fn apply(&mut self, event: &AccountEvent) {
        self.0.apply(event);
    }

    fn handle(&self, race: &Race) -> Result<Vec<AccountEvent>, AccountError> {
        if !race.raced.swap(true, Ordering::SeqCst) {
            let port = race.port;
            std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(async {
                        let mut conn = PgConnection::connect_with(&options(port, "es-other"))
                            .await
                            .unwrap();
                        let event = Event::new(
                            "Billing",
                            "Account",
                            "a",
                            "Deposited",
                            &serde_json::json!({"amount": 1}),
                        )
                        .unwrap();
                        PostgresStore::new()
                            .append(&mut conn, ExpectedVersion::Any, vec![event])
                            .await
                            .unwrap();
                    })
            })
            .join()
            .unwrap();
        }
        self.0.handle(&AccountCommand::Deposit {
            amount: race.amount,
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_reply_to_commit_returns_the_original_result() {
    let server = TestServer::postgres();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port()).into()).await;
    let pool = pool(proxy.port(), "es-proxy", 2).await;
    let store = PostgresStore::new();
    store.migrate(&pool).await.unwrap();
    Repository::<Account, _>::new(store.clone(), pool.clone())
        .execute("a", &AccountCommand::Open { owner: "A".into() })
        .await
        .unwrap();
    let repository = Repository::<Raced, _>::new(store, pool.clone());

    // The first, optimistic append (which conflicts) holds the marker too,
    // and commits on its own: only the COMMIT's reply is lost.
    proxy.lose_explicit_commit_reply_after(LOST.to_string().as_bytes());
    let race = Race {
        amount: LOST,
        port: server.port(),
        raced: AtomicBool::new(false),
    };
    let (done, dropped) = tokio::join!(repository.execute("a", &race), proxy.dropped());
    assert!(dropped.explicit_commit, "the locked retry ends with COMMIT");
    let done = done.expect("the retry absorbs the lost reply");
    assert!(done.replayed, "the retry found the committed events");
    assert_eq!(done.attempts, 2, "one conflict, then the locked retry");
    assert!(done.transient_retries >= 1);
    // Opened, the other writer's deposit, then ours.
    assert_eq!(done.version, 3);
    eprintln!(
        "lost reply to COMMIT: {} attempt(s), {} transient retr(ies), found stored at version {}",
        done.attempts, done.transient_retries, done.version
    );
    let direct = self::pool(server.port(), "es-check", 1).await;
    assert_eq!(
        deposits_of(&direct, "a", LOST).await,
        [(3, done.command_id.event_id(0))],
        "stored once"
    );
    pool.close().await;
    direct.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_retries_run_out_the_error_says_whether_the_outcome_is_known() {
    use es::store::Metadata;

    let server = TestServer::postgres();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port()).into()).await;
    let pool = pool(proxy.port(), "es-proxy", 2).await;
    let store = PostgresStore::new();
    store.migrate(&pool).await.unwrap();
    let brief = RetryPolicy::default().with_transient_retries(
        3,
        Duration::from_millis(1),
        Duration::from_millis(5),
    );
    let repository = Repository::<Account, _>::new(store, pool.clone()).with_retry_policy(brief);
    repository
        .execute("a", &AccountCommand::Open { owner: "A".into() })
        .await
        .unwrap();
    let direct = self::pool(server.port(), "es-check", 1).await;

    // The server looks down from the start (to a pool with no connection
    // yet): nothing was sent, nothing stored.
    pool.close().await;
    proxy.set_refusing(true);
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy_with(options(proxy.port(), "es-proxy"));
    let repository =
        Repository::<Account, _>::new(PostgresStore::new(), pool.clone()).with_retry_policy(brief);
    let down = repository
        .execute("a", &AccountCommand::Deposit { amount: 5 })
        .await
        .unwrap_err();
    assert!(down.outcome_known() && down.is_transient(), "{down:?}");
    assert!(
        matches!(down, RepositoryError::Unavailable { retries: 3, .. }),
        "{down:?}"
    );
    assert!(deposits_of(&direct, "a", 5).await.is_empty());
    proxy.set_refusing(false);

    // The reply to the commit is lost and the server then looks down:
    // the outcome is unknown, and the error names the command id to ask
    // with.
    proxy.lose_commit_reply_after(LOST.to_string().as_bytes());
    proxy.refuse_after_loss();
    let command = AccountCommand::Deposit { amount: LOST };
    let unknown = repository.execute("a", &command).await.unwrap_err();
    assert!(!unknown.outcome_known(), "{unknown:?}");
    let RepositoryError::OutcomeUnknown {
        command_id,
        retries: 3,
        ..
    } = unknown
    else {
        panic!("expected OutcomeUnknown, got {unknown:?}");
    };
    proxy.set_refusing(false);
    // Asking again with the command id finds it stored: once.
    let metadata = Metadata::new().with_command_id(command_id);
    let found = repository
        .execute_with("a", &command, &metadata)
        .await
        .unwrap();
    assert!(found.replayed);
    assert_eq!(found.version, 2);
    assert_eq!(found.command_id, command_id);
    assert_eq!(
        deposits_of(&direct, "a", LOST).await,
        [(2, command_id.event_id(0))],
        "stored once"
    );
    pool.close().await;
    direct.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_reply_to_a_units_commit_replays_the_unit_instead_of_repeating_it() {
    let server = TestServer::postgres();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port()).into()).await;
    let pool = pool(proxy.port(), "es-proxy", 2).await;
    let store = PostgresStore::new();
    store.migrate(&pool).await.unwrap();
    let accounts = Repository::<Account, _>::new(store, pool.clone());
    for id in ["a", "b"] {
        accounts
            .execute(id, &AccountCommand::Open { owner: id.into() })
            .await
            .unwrap();
    }

    // The unit's first append holds the marker; the reply to its COMMIT
    // is lost.
    proxy.lose_explicit_commit_reply_after(LOST.to_string().as_bytes());
    let unit = accounts.unit_of_work();
    let accounts_ref = &accounts;
    let runs = std::sync::atomic::AtomicU32::new(0);
    let runs_ref = &runs;
    let (done, dropped) = tokio::join!(
        unit.run(move |work| async move {
            runs_ref.fetch_add(1, Ordering::SeqCst);
            let a = work
                .execute(accounts_ref, "a", &AccountCommand::Deposit { amount: LOST })
                .await?;
            let b = work
                .execute(accounts_ref, "b", &AccountCommand::Deposit { amount: 1 })
                .await?;
            Ok((work.replayed(), a.version, b.version, work.command_id()))
        }),
        proxy.dropped()
    );
    assert!(dropped.explicit_commit);
    let (replayed, a, b, unit_id) = done.expect("the unit's retry absorbs the lost reply");
    assert!(replayed, "the last run found the unit committed");
    assert_eq!((a, b), (2, 2), "the original versions");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "one lost commit, one replay"
    );
    let direct = self::pool(server.port(), "es-check", 1).await;
    assert_eq!(
        deposits_of(&direct, "a", LOST).await,
        [(2, unit_id.part(0).event_id(0))],
        "stored once"
    );
    assert_eq!(deposits_of(&direct, "b", 1).await.len(), 1, "stored once");
    eprintln!("lost reply to a unit's COMMIT: the second run replayed versions {a} and {b}");
    pool.close().await;
    direct.close().await;
}

/// What one unit of work did: a deposit of `amount` into the task's own
/// account and the same into a shared one, both or neither.
struct UnitOutcome {
    own: String,
    shared: String,
    amount: i64,
    took: Duration,
    result: Result<(es::store::CommandId, i64, i64), es::WorkError>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn units_of_work_survive_backends_terminated_every_100ms() {
    let server = TestServer::postgres();
    let port = server.port();
    let pool = pool(port, "es-faults", 8).await;
    let repository = accounts(&pool).await;
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(watch::channel(0).0);
    let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (repository, stop, progress, runs) = (
            repository.clone(),
            stop.clone(),
            progress.clone(),
            runs.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let unit = repository.unit_of_work();
            let mut outcomes = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let own = format!("own-{t}");
                let shared = SHARED[n % 2].to_owned();
                let amount = (t as i64 + 1) * 1_000_000 + n as i64;
                let started = Instant::now();
                let (repository, runs, own_ref, shared_ref) = (&repository, &runs, &own, &shared);
                let result = unit
                    .run(move |work| async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        let deposit = AccountCommand::Deposit { amount };
                        let a = work.execute(repository, own_ref, &deposit).await?;
                        let b = work.execute(repository, shared_ref, &deposit).await?;
                        Ok((work.command_id(), a.version, b.version))
                    })
                    .await;
                outcomes.push(UnitOutcome {
                    own,
                    shared,
                    amount,
                    took: started.elapsed(),
                    result,
                });
                progress.send_modify(|done| *done += 1);
                n += 1;
            }
            outcomes
        }));
    }
    let controller = terminate_backends_every_100ms(port, stop.clone(), progress.clone());
    let terminated = controller.await;
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.extend(task.await.unwrap());
    }
    assert!(terminated > 0);

    // amount -> where each deposit of it is stored: (aggregate, version, id)
    let mut stored: HashMap<i64, Vec<(String, i64, uuid::Uuid)>> = HashMap::new();
    let mut conn = pool.acquire().await.unwrap();
    let owned = (0..TASKS).map(|t| format!("own-{t}"));
    for id in owned.chain(SHARED.iter().map(|s| s.to_string())) {
        let stream = repository
            .store()
            .read_aggregate_stream(&mut *conn, ("Billing", "Account", id.as_str()), ..)
            .await
            .unwrap();
        for event in &stream.events {
            let payload: serde_json::Value = serde_json::from_str(event.payload.get()).unwrap();
            if let Some(amount) = payload["amount"].as_i64() {
                stored.entry(amount).or_default().push((
                    id.clone(),
                    event.aggregate_version,
                    event.event_id,
                ));
            }
        }
    }
    let longest = outcomes.iter().map(|o| o.took).max().unwrap();
    for outcome in &outcomes {
        let (unit_id, own_version, shared_version) = match &outcome.result {
            Ok(done) => *done,
            Err(error) => panic!("a unit failed although retries remained: {error}"),
        };
        let mut found = stored.remove(&outcome.amount).unwrap_or_default();
        found.sort();
        let mut expected = vec![
            (
                outcome.own.clone(),
                own_version,
                unit_id.part(0).event_id(0),
            ),
            (
                outcome.shared.clone(),
                shared_version,
                unit_id.part(1).event_id(0),
            ),
        ];
        expected.sort();
        assert_eq!(
            found, expected,
            "unit {unit_id} is stored once, whole, as it returned"
        );
    }
    assert!(stored.is_empty(), "deposits no unit returned: {stored:?}");
    let units = outcomes.len();
    eprintln!(
        "units under terminated backends: {terminated} backends terminated, {units} units, \
         {} runs ({} run again), longest unit {longest:?}, 0 errors",
        runs.load(Ordering::SeqCst),
        runs.load(Ordering::SeqCst) - units
    );
    drop(conn);
    pool.close().await;
    drop(server);
}

/// Counts what it handles, for the test to wait on.
struct Counted(watch::Sender<u64>);

impl es::aggregate::Projection<sqlx::Postgres> for Counted {
    fn name(&self) -> &str {
        "counted"
    }

    async fn handle(
        &self,
        _tx: &mut PgConnection,
        _event: &es::store::PersistedEvent,
    ) -> Result<(), es::aggregate::projection::HandlerError> {
        self.0.send_modify(|n| *n += 1);
        Ok(())
    }

    async fn reset(
        &self,
        _tx: &mut PgConnection,
    ) -> Result<(), es::aggregate::projection::HandlerError> {
        Ok(())
    }
}

/// The database goes away under a running processor, after the one wakeup
/// it will get: it keeps retrying the failed batch on its own (not at the
/// next wakeup, with an hour-long polling interval), never gives up on
/// the transient failures, and handles the event once the database is
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_processor_retries_through_an_outage_without_a_wakeup() {
    use es::aggregate::ProjectionProcessor;

    let server = TestServer::postgres();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port()).into()).await;
    let direct = pool(server.port(), "es-writer", 2).await;
    let accounts = accounts(&direct).await;
    let proxied = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(1))
        .connect_with(options(proxy.port(), "es-processor"))
        .await
        .unwrap();
    let (counter, mut handled) = watch::channel(0);
    let processor =
        ProjectionProcessor::new(PostgresStore::new(), proxied.clone(), Counted(counter))
            .with_poll_interval(Duration::from_secs(3600));
    let running = tokio::spawn(async move { processor.run(std::future::pending()).await });
    let opened = 2 + TASKS as u64;
    let wait = |handled: &mut watch::Receiver<u64>, count: u64| {
        let mut handled = handled.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(120), handled.wait_for(|n| *n >= count))
                .await
                .expect("handled")
                .unwrap();
        }
    };
    wait(&mut handled, opened).await;

    // The database looks down to the processor: its connections are cut
    // and new ones refused.
    proxy.set_refusing(true);
    let cut: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid, 30000)) FROM pg_stat_activity \
         WHERE application_name = 'es-processor'",
    )
    .fetch_one(&direct)
    .await
    .unwrap();
    accounts
        .execute("own-0", &AccountCommand::Deposit { amount: 1 })
        .await
        .unwrap();
    // the append's wakeup makes it try, and it tries again by itself
    proxy.refused(3).await;
    assert!(
        !running.is_finished(),
        "run() gives up on nothing transient"
    );
    proxy.set_refusing(false);
    let started = Instant::now();
    wait(&mut handled, opened + 1).await;
    eprintln!(
        "outage: {cut} connection(s) cut, handled {:?} after the database came back",
        started.elapsed()
    );
    assert!(!running.is_finished());
    running.abort();
    proxied.close().await;
    direct.close().await;
}
