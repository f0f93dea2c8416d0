//! Settings at their extremes: a typed refusal with the allowed range, or
//! a documented clamp, never a panic or an abort. Each check runs in a
//! child process (this test binary running one of its ignored tests,
//! `settings_child_*`, with `ES_SETTINGS_CHILD` set), so that an abort (a
//! failed allocation of hundreds of gigabytes aborts the process) shows
//! up as a failed exit status instead of killing the test runner.

mod support;

#[path = "../examples/bank/domain.rs"]
#[allow(dead_code)]
mod bank;

use std::process::Command;
use std::time::Duration;

use bank::{Account, AccountCommand};
use es::aggregate::Jitter;
use es::aggregate::projection::{
    HandlerError, MAX_BATCH_SIZE, MAX_LEASE, MAX_PARTITIONS, MIN_LEASE, MIN_POLL_INTERVAL,
    Projection, ProjectionError, ProjectionProcessor,
};
use es::store::{Event, EventStore, ExpectedVersion, PersistedEvent, SqliteStore};
use es::{Repository, RetryPolicy};
use sqlx::SqliteConnection;
use support::sqlite::SqliteDb;

/// Whether this process is a child the parent tests started.
fn is_child() -> bool {
    std::env::var_os("ES_SETTINGS_CHILD").is_some()
}

/// Runs the ignored test `name` in a child process and checks that it
/// passed: it neither panicked nor aborted.
fn in_a_child_process(name: &str) {
    let output = Command::new(std::env::current_exe().expect("the test binary"))
        .args([
            name,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("ES_SETTINGS_CHILD", "1")
        .output()
        .expect("start the child process");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the child process `{name}` failed ({}: an abort shows as a signal)\n\
         --- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("1 passed"),
        "the child process ran `{name}`:\n{stdout}"
    );
    print!("{stdout}");
}

#[test]
fn processor_settings_out_of_range_are_refused_typed_in_a_child_process() {
    in_a_child_process("settings_child_processor");
}

#[test]
fn repository_and_retry_settings_at_their_extremes_never_panic_in_a_child_process() {
    in_a_child_process("settings_child_repository");
}

/// Handles nothing.
struct Quiet;

impl Projection<sqlx::Sqlite> for Quiet {
    fn name(&self) -> &str {
        "settings"
    }

    async fn handle(
        &self,
        _tx: &mut SqliteConnection,
        _event: &PersistedEvent,
    ) -> Result<(), HandlerError> {
        Ok(())
    }

    async fn reset(&self, _tx: &mut SqliteConnection) -> Result<(), HandlerError> {
        Ok(())
    }
}

type Processor = ProjectionProcessor<SqliteStore, Quiet>;

/// Checks that `outcome` is the refusal of `setting`, naming the value
/// and the allowed range.
fn refused<T: std::fmt::Debug>(
    call: &str,
    setting: &str,
    outcome: Result<T, ProjectionError>,
) -> String {
    match outcome {
        Err(ProjectionError::InvalidSetting {
            projection,
            setting: named,
            value,
            allowed,
        }) if named == setting => {
            assert_eq!(projection, "settings");
            assert!(!value.is_empty() && !allowed.is_empty());
            format!("{call}: {setting}({value}) refused, allowed {allowed}")
        }
        other => panic!("{call} with {setting} out of range: {other:?}"),
    }
}

/// Every way into a processor refuses each setting out of range, with
/// [`ProjectionError::InvalidSetting`], and nothing is written; the
/// extremes of each range are accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run in a child process by processor_settings_out_of_range_are_refused_typed_in_a_child_process"]
async fn settings_child_processor() {
    if !is_child() {
        return;
    }
    let db = SqliteDb::new().await;
    let base = || Processor::new(db.store.clone(), db.pool.clone(), Quiet);
    let out_of_range: Vec<(&str, Processor)> = vec![
        ("with_partitions", base().with_partitions(u32::MAX)),
        (
            "with_partitions",
            base().with_partitions(MAX_PARTITIONS + 1),
        ),
        ("with_batch_size", base().with_batch_size(u32::MAX)),
        (
            "with_batch_size",
            base().with_batch_size(MAX_BATCH_SIZE + 1),
        ),
        (
            "with_poll_interval",
            base().with_poll_interval(Duration::ZERO),
        ),
        (
            "with_poll_interval",
            base().with_poll_interval(MIN_POLL_INTERVAL - Duration::from_nanos(1)),
        ),
        ("with_lease", base().with_lease(Duration::ZERO)),
        (
            "with_lease",
            base().with_lease(MIN_LEASE - Duration::from_nanos(1)),
        ),
        (
            "with_lease",
            base().with_lease(MAX_LEASE + Duration::from_millis(1)),
        ),
        ("with_lease", base().with_lease(Duration::MAX)),
    ];
    for (setting, processor) in &out_of_range {
        println!(
            "{}",
            refused("catch_up", setting, processor.catch_up().await)
        );
        refused("run", setting, processor.run(std::future::pending()).await);
        refused("rebuild", setting, processor.rebuild().await);
        refused("status", setting, processor.status().await);
        refused(
            "switch_when_caught_up",
            setting,
            processor.switch_when_caught_up().await,
        );
    }
    // nothing was recorded or claimed
    assert!(base().versions().await.unwrap().is_empty());
    assert_eq!(db.count("SELECT count(*) FROM {checkpoints}").await, 0);
    let message = out_of_range[0].1.catch_up().await.unwrap_err().to_string();
    assert!(
        message.contains("with_partitions(4294967295)") && message.contains("1..=1024"),
        "{message}"
    );

    // The extremes of every range are accepted.
    for i in 0..20 {
        let event = Event::new(
            "Settings",
            "Thing",
            format!("t-{i}"),
            "Happened",
            &serde_json::json!({ "i": i }),
        )
        .unwrap();
        let mut conn = db.pool.acquire().await.unwrap();
        db.store
            .append(&mut *conn, ExpectedVersion::Any, vec![event])
            .await
            .unwrap();
    }
    let widest = base()
        .with_partitions(MAX_PARTITIONS)
        .with_batch_size(MAX_BATCH_SIZE)
        .with_poll_interval(MIN_POLL_INTERVAL)
        .with_lease(MAX_LEASE)
        .with_durable_commits(false);
    assert_eq!(widest.catch_up().await.unwrap().events, 20);
    let status = widest.status().await.unwrap();
    assert_eq!(status.partitions.len(), MAX_PARTITIONS as usize);
    assert_eq!(status.lag, 0);
    // 0 partitions and a batch of 0 are taken as 1, as documented; the
    // shortest lease and Duration::MAX between polls are accepted
    let narrowest = ProjectionProcessor::new(db.store.clone(), db.pool.clone(), Quiet)
        .with_partitions(0)
        .with_batch_size(0)
        .with_lease(MIN_LEASE)
        .with_poll_interval(Duration::MAX);
    assert_eq!(narrowest.rebuild().await.unwrap().events, 20);
    assert_eq!(narrowest.status().await.unwrap().partitions.len(), 1);
    db.drop().await;
}

/// The repository's settings at their extremes are documented clamps (a
/// state cache of `usize::MAX` aggregates allocates nothing up front,
/// snapshots every 0 events are every event) and a retry policy of
/// `Duration::MAX` backoffs and an `f64::MAX` multiplier saturates instead
/// of overflowing: commands run, conflicts included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run in a child process by repository_and_retry_settings_at_their_extremes_never_panic_in_a_child_process"]
async fn settings_child_repository() {
    if !is_child() {
        return;
    }
    let extreme = RetryPolicy::exponential(u32::MAX, Duration::MAX, Duration::MAX)
        .with_multiplier(f64::MAX)
        .with_transient_retries(u32::MAX, Duration::MAX, Duration::MAX)
        .with_contention_window(Duration::MAX);
    for jitter in [Jitter::None, Jitter::Full, Jitter::Equal] {
        let policy = extreme.with_jitter(jitter);
        for retry in [0, 1, 2, 64, u32::MAX] {
            assert!(policy.backoff(retry) <= Duration::MAX);
            assert!(policy.transient_backoff(retry) <= Duration::MAX);
        }
    }
    assert_eq!(
        extreme.with_jitter(Jitter::None).backoff(u32::MAX),
        Duration::MAX
    );
    let db = SqliteDb::new().await;
    for every in [0, u32::MAX] {
        let accounts = Repository::<Account, SqliteStore>::new(db.store.clone(), db.pool.clone())
            .with_state_cache(usize::MAX)
            .with_snapshots(every, 1)
            // conflicts are retried under the aggregate's lock, without
            // sleeping the huge backoff
            .with_retry_policy(extreme);
        let id = format!("acc-{every}");
        accounts
            .execute(
                &id,
                &AccountCommand::Open {
                    owner: "Ada".into(),
                },
            )
            .await
            .unwrap();
        let depositors: Vec<_> = (0..4)
            .map(|_| {
                let (accounts, id) = (accounts.clone(), id.clone());
                tokio::spawn(async move {
                    for _ in 0..5 {
                        accounts
                            .execute(&id, &AccountCommand::Deposit { amount: 1 })
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for depositor in depositors {
            depositor.await.unwrap();
        }
        let loaded = accounts.load(&id).await.unwrap();
        assert_eq!((loaded.version, loaded.state.balance), (21, 20));
        println!("snapshots every {every}: 21 events, balance 20");
    }
    db.drop().await;
}
