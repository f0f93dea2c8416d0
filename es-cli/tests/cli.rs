//! The `es` binary end to end, as an operator runs it, on a PostgreSQL
//! schema, a SQLite file and a MariaDB database of their own, seeded by the
//! bank example's domain through the repository; and the embedded CLI
//! (a service's projections registered) in-process.

#[path = "../../tests/support/mod.rs"]
mod support;

#[path = "../../examples/bank/domain.rs"]
#[allow(dead_code)]
mod domain;

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use domain::{Account, AccountCommand};
use es::aggregate::projection::{HandlerError, Projection};
use es::aggregate::{ErrorPolicy, ProjectionProcessor};
use es::store::{CheckpointStore, Metadata, PersistedEvent, ProjectionStore, Store};
use es::{Repository, RetryPolicy};
use support::Fixture;
use support::mysql::MySqlDb;
use support::sqlite::SqliteDb;
use tokio::io::{AsyncBufReadExt, BufReader};

/// How long one run of the binary may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// A backend under test: its fixture, and the flags that point `es` at it.
trait Target: Fixture<Store: es_cli::CliStore> {
    fn flags(&self) -> Vec<String>;
}

impl Target for support::TestDb {
    fn flags(&self) -> Vec<String> {
        vec![
            "--url".into(),
            support::database_url(),
            "--schema".into(),
            self.schema.clone(),
        ]
    }
}

impl Target for SqliteDb {
    fn flags(&self) -> Vec<String> {
        vec!["--url".into(), format!("sqlite:{}", self.path.display())]
    }
}

impl Target for MySqlDb {
    fn flags(&self) -> Vec<String> {
        vec![
            "--url".into(),
            support::mysql_url(),
            "--schema".into(),
            self.database.clone(),
        ]
    }
}

/// What one run of `es` did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self) -> Run {
        assert_eq!(self.code, 0, "{self:#?}");
        self
    }

    /// A failure: one line on stderr, `es: ...`, and this exit code.
    fn fails(self, code: i32, says: &str) -> Run {
        assert_eq!(self.code, code, "{self:#?}");
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line on stderr: {self:#?}");
        assert!(lines[0].starts_with("es: "), "{self:#?}");
        assert!(lines[0].contains(says), "`{says}` in {self:#?}");
        assert!(!self.stderr.contains("panicked"), "{self:#?}");
        self
    }

    fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect()
    }
}

fn es_command(flags: &[String], args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_es"));
    command
        .args(flags)
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("ES_CONFIG")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Runs `es FLAGS ARGS` to its end.
async fn es(flags: &[String], args: &[&str]) -> Run {
    let output = tokio::time::timeout(RUN_TIMEOUT, es_command(flags, args).output())
        .await
        .unwrap_or_else(|_| panic!("es {args:?} did not end within {RUN_TIMEOUT:?}"))
        .expect("run es");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

/// The two accounts the bank example's steps leave.
struct Seeded {
    alice: String,
    bob: String,
}

/// What the bank example does, through the repository: open two
/// accounts, deposit, withdraw, and a transfer in a unit of work with a
/// correlation id. Alice: versions 1-4; Bob: 1-3 (his second event is a
/// deposit of 13); 7 events in all.
async fn seed<S: Store>(store: S, pool: sqlx::Pool<S::Database>) -> Seeded {
    let accounts =
        Repository::<Account, S>::new(store, pool).with_retry_policy(RetryPolicy::default());
    let run = uuid::Uuid::new_v4().simple().to_string();
    let (alice, bob) = (format!("alice-{}", &run[..8]), format!("bob-{}", &run[..8]));
    for (id, owner) in [(&alice, "Alice"), (&bob, "Bob")] {
        accounts
            .execute(
                id,
                &AccountCommand::Open {
                    owner: owner.into(),
                },
            )
            .await
            .unwrap();
    }
    accounts
        .execute(&alice, &AccountCommand::Deposit { amount: 100 })
        .await
        .unwrap();
    accounts
        .execute(&alice, &AccountCommand::Withdraw { amount: 30 })
        .await
        .unwrap();
    accounts
        .execute(&bob, &AccountCommand::Deposit { amount: 13 })
        .await
        .unwrap();
    let metadata = Metadata::new().with_correlation_id(uuid::Uuid::now_v7());
    let accounts = &accounts;
    let (from, to) = (alice.clone(), bob.clone());
    accounts
        .unit_of_work()
        .run_with(&metadata, move |work| {
            let (from, to) = (from.clone(), to.clone());
            async move {
                work.execute(accounts, &from, &AccountCommand::Withdraw { amount: 50 })
                    .await?;
                work.execute(accounts, &to, &AccountCommand::Deposit { amount: 50 })
                    .await?;
                Ok(())
            }
        })
        .await
        .unwrap();
    Seeded { alice, bob }
}

async fn open<S: Store>(store: S, pool: sqlx::Pool<S::Database>, id: &str) {
    Repository::<Account, S>::new(store, pool)
        .execute(
            id,
            &AccountCommand::Open {
                owner: "Carol".into(),
            },
        )
        .await
        .unwrap();
}

/// The test projection: remembers the events it handled (a handler may be
/// called again for an event whose batch was rolled back, so `calls` can
/// be more), refuses a deposit of `fail_amount`, and counts its resets. It
/// writes nothing, so it runs on every backend.
#[derive(Default)]
struct Counter {
    seen: Mutex<HashSet<uuid::Uuid>>,
    calls: AtomicU64,
    resets: AtomicU64,
    fail_amount: AtomicI64,
}

impl Counter {
    fn seen(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
}

impl<DB: sqlx::Database> Projection<DB> for Counter {
    fn name(&self) -> &str {
        "counter"
    }

    async fn handle(
        &self,
        _: &mut DB::Connection,
        event: &PersistedEvent,
    ) -> Result<(), HandlerError> {
        let payload: serde_json::Value = serde_json::from_str(event.payload.get())?;
        let fail = self.fail_amount.load(Ordering::SeqCst);
        if event.event_type == "Deposited" && fail != 0 && payload["amount"] == fail {
            return Err(format!("a deposit of {fail} is refused\nby the test").into());
        }
        self.seen.lock().unwrap().insert(event.event_id);
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn reset(&self, _: &mut DB::Connection) -> Result<(), HandlerError> {
        self.resets.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

fn processor<F: Fixture>(db: &F, counter: &Arc<Counter>) -> ProjectionProcessor<F::Store, Counter> {
    ProjectionProcessor::shared(db.store().clone(), db.pool().clone(), counter.clone())
        .with_partitions(2)
        .with_error_policy(ErrorPolicy::Skip)
        .with_poll_interval(Duration::from_millis(50))
}

// ---------------------------------------------------------------- migrate

/// `es migrate --dry-run` prints every migration's SQL on an empty store,
/// `es migrate` applies them, and then nothing is pending.
async fn migrate_and_dry_run(flags: Vec<String>, backend: &str) {
    let run = es(&flags, &["status"]).await;
    run.fails(4, "run `es migrate`");
    let run = es(&flags, &["migrate", "--dry-run"]).await.ok();
    assert!(
        run.stdout.contains("-- migration 1: event store"),
        "{run:#?}"
    );
    assert!(run.stdout.contains("CREATE TABLE"), "{run:#?}");
    es(&flags, &["status"]).await.fails(4, "run `es migrate`"); // still nothing applied
    let run = es(&flags, &["migrate"]).await.ok();
    assert!(run.stdout.contains("applied"), "{run:#?}");
    assert!(run.stdout.contains(backend), "{run:#?}");
    let run = es(&flags, &["migrate"]).await.ok();
    assert!(run.stdout.contains("up to date"), "{run:#?}");
    let run = es(&flags, &["migrate", "--dry-run"]).await.ok();
    assert!(run.stdout.contains("nothing to apply"), "{run:#?}");
    assert!(!run.stdout.contains("CREATE TABLE"), "{run:#?}");
    let run = es(&flags, &["status", "--json"]).await.ok();
    let status = &run.json_lines()[0];
    assert_eq!(status["events"], 0);
    assert_eq!(status["migrations"]["pending"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_migrate_and_dry_run() {
    let schema = format!(
        "es_test_{}_{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
        uuid::Uuid::new_v4().simple()
    );
    let flags = vec![
        "--url".into(),
        support::database_url(),
        "--schema".into(),
        schema.clone(),
    ];
    migrate_and_dry_run(flags, "PostgreSQL").await;
    let pool = sqlx::PgPool::connect(&support::database_url())
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
    )))
    .execute(&pool)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_migrate_and_dry_run() {
    let path = std::env::temp_dir().join(format!("es_cli_{}.db", uuid::Uuid::new_v4().simple()));
    let flags = vec!["--url".into(), format!("sqlite:{}", path.display())];
    migrate_and_dry_run(flags, "SQLite").await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

// ------------------------------------------------- status, stream, tail

/// status, stream (human, --json, a range, unknown), tail (all,
/// filtered, limited).
async fn reads<F: Target>() {
    let db = F::create().await;
    let flags = db.flags();
    let seeded = seed(db.store().clone(), db.pool().clone()).await;

    let run = es(&flags, &["status"]).await.ok();
    assert!(run.stdout.contains("migrations      "), "{run:#?}");
    let status = &es(&flags, &["status", "--json"]).await.ok().json_lines()[0];
    assert_eq!(status["events"], 7, "{status}");
    assert_eq!(status["aggregates"], 2, "{status}");
    assert!(status["head_position"].as_i64().unwrap() >= 7, "{status}");

    let run = es(&flags, &["stream", "Billing", "Account", &seeded.alice])
        .await
        .ok();
    assert!(
        run.stdout.contains("4 event(s), versions 1 to 4"),
        "{run:#?}"
    );
    assert!(run.stdout.contains("Opened (schema 1)"), "{run:#?}");
    // (PostgreSQL's jsonb prints a space after the colon)
    assert!(run.stdout.contains(r#"payload   {"owner":"#), "{run:#?}");
    assert!(run.stdout.contains(r#""Alice"}"#), "{run:#?}");
    assert!(run.stdout.contains("correlation "), "{run:#?}");

    let run = es(
        &flags,
        &["stream", "Billing", "Account", &seeded.bob, "--json"],
    )
    .await
    .ok();
    let events = run.json_lines();
    assert_eq!(events.len(), 3);
    assert_eq!(events[1]["event_type"], "Deposited");
    assert_eq!(events[1]["payload"]["amount"], 13);
    assert_eq!(events[2]["aggregate_version"], 3);
    // the transfer's deposit carries the unit's correlation id
    assert!(events[2]["correlation_id"].is_string(), "{}", events[2]);
    assert!(events[0]["correlation_id"].is_null());

    let run = es(
        &flags,
        &[
            "stream",
            "Billing",
            "Account",
            &seeded.alice,
            "--from",
            "2",
            "--to",
            "3",
            "--json",
        ],
    )
    .await
    .ok();
    let versions: Vec<i64> = run
        .json_lines()
        .iter()
        .map(|e| e["aggregate_version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, [2, 3]);
    es(&flags, &["stream", "Billing", "Account", "nobody"])
        .await
        .fails(3, "no events for Billing/Account/nobody");

    let run = es(&flags, &["tail", "--from", "0"]).await.ok();
    assert_eq!(run.stdout.lines().count(), 7, "{run:#?}");
    assert!(
        run.stdout
            .contains(&format!("Billing/Account/{} v1  Opened", seeded.alice))
    );
    let run = es(&flags, &["tail", "--from", "0", "--json", "--limit", "2"])
        .await
        .ok();
    let events = run.json_lines();
    assert_eq!(events.len(), 2);
    assert!(events[0]["global_position"].as_i64() < events[1]["global_position"].as_i64());
    let run = es(&flags, &["tail", "--from", "0", "--filter", "type=Invoice"])
        .await
        .ok();
    assert_eq!(run.stdout, "");
    let run = es(
        &flags,
        &[
            "tail",
            "--last",
            "3",
            "--filter",
            "context=Billing,type=Account",
        ],
    )
    .await
    .ok();
    assert_eq!(run.stdout.lines().count(), 3, "{run:#?}");
    es(&flags, &["tail", "--filter", "colour=red"])
        .await
        .fails(2, "bad --filter");
    db.finish().await;
}

/// `tail --follow` prints an event appended while it runs, and Ctrl-C
/// ends it with 0.
async fn follow<F: Target>() {
    let db = F::create().await;
    let flags = db.flags();
    seed(db.store().clone(), db.pool().clone()).await;
    let head = {
        let mut conn = db.pool().acquire().await.unwrap();
        db.store()
            .head_position(&mut conn)
            .await
            .unwrap()
            .to_string()
    };
    let mut child = es_command(&flags, &["tail", "--follow", "--from", &head, "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // Whenever it starts reading, it reads from the head of before.
    let carol = format!("carol-{}", uuid::Uuid::new_v4().simple());
    open(db.store().clone(), db.pool().clone(), &carol).await;
    let line = tokio::time::timeout(RUN_TIMEOUT, async {
        loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("es tail ended early");
            if line.contains(&carol) {
                break line;
            }
        }
    })
    .await
    .expect("tail --follow printed the new event");
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["event_type"], "Opened");
    // On PostgreSQL it listens to the appends' notifications meanwhile.
    let status = &es(&flags, &["status", "--json"]).await.ok().json_lines()[0];
    if let Some(listeners) = status["listeners"].as_array() {
        assert_eq!(listeners.len(), 1, "{status}");
        assert_eq!(listeners[0]["application"], "es-cli", "{status}");
    }
    let interrupted = std::process::Command::new("kill")
        .args(["-INT", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    let status = tokio::time::timeout(RUN_TIMEOUT, child.wait())
        .await
        .expect("es tail ends on Ctrl-C")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    db.finish().await;
}

// ------------------------------------------------------------ projections

fn counter_partitions(run: &Run) -> Vec<serde_json::Value> {
    let projections = run.json_lines();
    let counter = projections
        .iter()
        .find(|p| p["name"] == "counter")
        .unwrap_or_else(|| panic!("counter in {run:#?}"));
    counter["partitions"].as_array().unwrap().clone()
}

/// The list with lag and claims; reset (refused without --yes); rebuild
/// followed while a worker replays; a rebuild that nobody works on times
/// out.
async fn projections<F: Target>() {
    let db = F::create().await;
    let flags = db.flags();
    seed(db.store().clone(), db.pool().clone()).await;
    let counter = Arc::new(Counter::default());
    processor(&db, &counter).catch_up().await.unwrap();
    assert_eq!(counter.seen(), 7);

    let partitions = counter_partitions(&es(&flags, &["projections", "--json"]).await.ok());
    assert_eq!(partitions.len(), 2);
    assert!(partitions.iter().all(|p| p["lag"] == 0), "{partitions:?}");
    assert_eq!(partitions[0]["partition"], "0/2");

    open(db.store().clone(), db.pool().clone(), "carol").await;
    let run = es(&flags, &["projections"]).await.ok();
    assert!(run.stdout.contains("PROJECTION"), "{run:#?}");
    assert!(
        run.stdout.contains(" ago"),
        "an oldest unhandled event: {run:#?}"
    );
    let partitions = counter_partitions(&es(&flags, &["projections", "--json"]).await.ok());
    assert!(
        partitions.iter().all(|p| p["lag"].as_i64() > Some(0)),
        "{partitions:?}"
    );
    assert!(
        partitions
            .iter()
            .any(|p| p["oldest_unhandled_age_secs"].is_number()),
        "{partitions:?}"
    );

    es(&flags, &["projections", "reset", "counter"])
        .await
        .fails(2, "pass --yes");
    es(&flags, &["projections", "reset", "nothing", "--yes"])
        .await
        .fails(3, "no projection `nothing`");
    let run = es(&flags, &["projections", "reset", "counter", "--yes"])
        .await
        .ok();
    assert!(
        run.stdout.contains("2 checkpoint(s) rewound to 0"),
        "{run:#?}"
    );
    assert!(run.stderr.contains("not cleared"), "{run:#?}");
    let mut conn = db.pool().acquire().await.unwrap();
    for key in ["counter#0/2", "counter#1/2"] {
        assert_eq!(db.store().get_checkpoint(&mut conn, key).await.unwrap(), 0);
    }
    drop(conn);

    // Nobody works on it: the rebuild gives up after its timeout (after
    // its progress lines).
    let run = es(
        &flags,
        &[
            "projections",
            "rebuild",
            "counter",
            "--yes",
            "--timeout",
            "1",
        ],
    )
    .await;
    assert_eq!(run.code, 1, "{run:#?}");
    let last = run.stderr.lines().last().unwrap();
    assert!(
        last.starts_with("es: `counter` did not catch up within"),
        "{run:#?}"
    );
    assert!(last.ends_with("are its workers running?"), "{run:#?}");

    // A worker runs: the rebuild follows it until it caught up.
    let before = counter.calls();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = {
        let processor = processor(&db, &counter);
        tokio::spawn(async move {
            processor
                .run(async {
                    let _ = stopped.await;
                })
                .await
        })
    };
    let run = es(
        &flags,
        &[
            "projections",
            "rebuild",
            "counter",
            "--yes",
            "--timeout",
            "60",
        ],
    )
    .await
    .ok();
    assert!(run.stderr.contains("rebuild counter: 0/"), "{run:#?}");
    assert!(run.stderr.contains("events/s"), "{run:#?}");
    assert!(run.stderr.contains("(100%)"), "{run:#?}");
    assert!(
        run.stderr
            .contains("rebuilt `counter`: its workers caught up"),
        "{run:#?}"
    );
    stop.send(()).unwrap();
    worker.await.unwrap().unwrap();
    assert!(counter.calls() >= before + 8, "replayed");

    // A version 2 building beside the active version 1: the list names
    // each version and its state.
    {
        use es::store::{ProjectionVersion, VersionState};
        let mut conn = db.pool().acquire().await.unwrap();
        let store = db.store();
        let head = store.head_position(&mut conn).await.unwrap();
        for (version, state) in [(1, VersionState::Active), (2, VersionState::CatchingUp)] {
            let record = ProjectionVersion::new("counter", version, state, head, 2);
            store
                .insert_projection_version(&mut conn, &record)
                .await
                .unwrap();
        }
        store
            .update_checkpoint(&mut conn, "counter@v2", 3)
            .await
            .unwrap();
    }
    let run = es(&flags, &["projections", "--json"]).await.ok();
    let listed = run.json_lines();
    let version = |name: &str| {
        let p = listed
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {run:#?}"));
        (p["version"].clone(), p["state"].clone(), p["lag"].clone())
    };
    assert_eq!(version("counter").0, 1);
    assert_eq!(version("counter").1, "active");
    assert_eq!(version("counter@v2").0, 2);
    assert_eq!(version("counter@v2").1, "catching_up");
    assert!(version("counter@v2").2.as_i64() > Some(0), "{run:#?}");
    let run = es(&flags, &["projections"]).await.ok();
    assert!(run.stdout.contains("counter (v1, active)"), "{run:#?}");
    assert!(
        run.stdout.contains("counter@v2 (v2, catching up)"),
        "{run:#?}"
    );
    db.finish().await;
}

/// A partition claimed by a processor's transaction shows as claimed, by
/// whom on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_claims_show_their_holder() {
    let db = support::TestDb::new().await;
    let flags = db.flags();
    seed(db.store.clone(), db.pool.clone()).await;
    processor(&db, &Arc::new(Counter::default()))
        .catch_up()
        .await
        .unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    assert!(
        db.store
            .claim_checkpoint(&mut tx, "counter#1/2")
            .await
            .unwrap()
            .is_some()
    );
    let partitions = counter_partitions(&es(&flags, &["projections", "--json"]).await.ok());
    assert_eq!(partitions[0]["claim"], "free", "{partitions:?}");
    assert_eq!(partitions[1]["claim"], "claimed", "{partitions:?}");
    let holder = partitions[1]["holder"].as_str().unwrap();
    assert!(holder.starts_with("pid "), "{holder}");
    let run = es(&flags, &["projections"]).await.ok();
    assert!(run.stdout.contains("claimed by pid "), "{run:#?}");
    tx.rollback().await.unwrap();
    db.finish().await;
}

// --------------------------------------------------------------- failures

/// A skipped event listed, not retried by the plain binary (exit 5), and
/// discarded.
async fn failures<F: Target>() {
    let db = F::create().await;
    let flags = db.flags();
    let seeded = seed(db.store().clone(), db.pool().clone()).await;
    let counter = Arc::new(Counter::default());
    counter.fail_amount.store(13, Ordering::SeqCst);
    let caught = processor(&db, &counter).catch_up().await.unwrap();
    assert_eq!(caught.skipped, 1);

    let run = es(&flags, &["failures"]).await.ok();
    assert!(
        run.stdout
            .contains("a deposit of 13 is refused\\nby the test"),
        "{run:#?}"
    );
    let failures = es(&flags, &["failures", "counter", "--json"])
        .await
        .ok()
        .json_lines();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0]["event_type"], "Deposited");
    let position = failures[0]["global_position"].as_i64().unwrap().to_string();
    let run = es(
        &flags,
        &["stream", "Billing", "Account", &seeded.bob, "--json"],
    )
    .await
    .ok();
    assert_eq!(run.json_lines()[1]["global_position"].to_string(), position);

    es(&flags, &["failures", "nothing"])
        .await
        .fails(3, "no projection `nothing`");
    es(&flags, &["failures", "retry", "counter", "--all"])
        .await
        .fails(5, "embeds es_cli");
    let run = es(&flags, &["failures", "discard", "counter", &position])
        .await
        .ok();
    assert!(run.stdout.contains("discarded"), "{run:#?}");
    es(&flags, &["failures", "discard", "counter", &position])
        .await
        .fails(3, "no skipped event at position");
    let run = es(&flags, &["failures", "counter"]).await.ok();
    assert!(
        run.stdout.contains("no skipped events for `counter`"),
        "{run:#?}"
    );
    db.finish().await;
}

// ------------------------------------------------------------- bad input

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_one_line_and_an_exit_code() {
    let none: Vec<String> = Vec::new();
    es(&none, &["status"]).await.fails(2, "no database");
    let url = |u: &str| vec!["--url".to_owned(), u.to_owned()];
    es(&url("http://example.invalid/x"), &["status"])
        .await
        .fails(2, "postgres://, sqlite: or mysql://");
    es(
        &url("postgres://postgres@127.0.0.1:notaport/test"),
        &["status"],
    )
    .await
    .fails(2, "bad PostgreSQL URL");
    // Nothing listens on port 1.
    es(&url("postgres://app:secret@127.0.0.1:1/test"), &["status"])
        .await
        .fails(
            1,
            "cannot connect to PostgreSQL at postgres://app:***@127.0.0.1:1/test",
        );
    let run = es(&url("mysql://root@127.0.0.1:1/test"), &["status"]).await;
    run.fails(1, "cannot connect to MySQL");
    let missing = std::env::temp_dir().join(format!("es_cli_{}.db", uuid::Uuid::new_v4().simple()));
    es(&url(&format!("sqlite:{}", missing.display())), &["tail"])
        .await
        .fails(4, "no SQLite database");
    assert!(!missing.exists(), "a read does not create the file");
    es(&url("sqlite:x.db"), &["--schema", "s", "status"])
        .await
        .fails(2, "SQLite has no schemas");
    es(
        &url("sqlite:x.db"),
        &["--events-table", "bad name", "status"],
    )
    .await
    .fails(2, "invalid events table");

    // A config file: its url and names, bad keys refused.
    let config =
        std::env::temp_dir().join(format!("es_cli_{}.toml", uuid::Uuid::new_v4().simple()));
    std::fs::write(&config, "url = \"sqlite:x.db\"\nevnts_table = \"e\"\n").unwrap();
    let flags = vec!["--config".to_owned(), config.display().to_string()];
    es(&flags, &["status"]).await.fails(2, "bad config file");
    std::fs::write(&config, format!("url = \"sqlite:{}\"\n", missing.display())).unwrap();
    es(&flags, &["status"]).await.fails(4, "no SQLite database");
    std::fs::remove_file(&config).unwrap();

    // An unmigrated PostgreSQL schema, an unknown projection.
    let pg = |schema: &str| {
        vec![
            "--url".to_owned(),
            support::database_url(),
            "--schema".to_owned(),
            schema.to_owned(),
        ]
    };
    es(&pg("es_no_such_schema"), &["projections"])
        .await
        .fails(4, "run `es migrate`");
    let db = support::TestDb::new().await;
    es(
        &pg(&db.schema),
        &["projections", "rebuild", "nothing", "--yes"],
    )
    .await
    .fails(3, "no projection `nothing`");
    // usage errors are clap's, with its exit code
    let run = es(&pg(&db.schema), &["stream", "Billing"]).await;
    assert_eq!(run.code, 2, "{run:#?}");
    db.finish().await;
}

// ----------------------------------------------------------- embedded CLI

/// A service's own binary with its projection registered: retry runs the
/// handler (and removes the record only when it succeeds), rebuild and
/// reset clear the read model.
async fn embedded<F: Target>() {
    let db = F::create().await;
    let flags = db.flags();
    seed(db.store().clone(), db.pool().clone()).await;
    let counter = Arc::new(Counter::default());
    counter.fail_amount.store(13, Ordering::SeqCst);
    processor(&db, &counter).catch_up().await.unwrap();
    assert_eq!(counter.seen(), 6);

    let cli = || {
        let counter = counter.clone();
        es_cli::Cli::new().projection(move |store: F::Store, pool| {
            ProjectionProcessor::shared(store, pool, counter.clone())
                .with_partitions(2)
                .with_error_policy(ErrorPolicy::Skip)
        })
    };
    let run = |args: &[&str]| {
        let mut all = vec!["es".to_owned()];
        all.extend(flags.iter().cloned());
        all.extend(args.iter().map(|a| a.to_string()));
        cli().execute(all)
    };
    let failures = |db: &F| {
        let (store, pool) = (db.store().clone(), db.pool().clone());
        async move {
            let mut conn = pool.acquire().await.unwrap();
            store.failures(&mut conn, "counter").await.unwrap()
        }
    };

    // Still refused: it stays recorded, with the new error.
    let error = run(&["failures", "retry", "counter", "--all"])
        .await
        .unwrap_err();
    assert_eq!(error.exit_code(), 1, "{error}");
    assert_eq!(failures(&db).await.len(), 1);
    counter.fail_amount.store(0, Ordering::SeqCst);
    run(&["failures", "retry", "counter", "--all"])
        .await
        .unwrap();
    assert!(failures(&db).await.is_empty());
    assert_eq!(counter.seen(), 7);
    let error = run(&["failures", "retry", "other", "--all"])
        .await
        .unwrap_err();
    assert_eq!(error.exit_code(), 3, "{error}");

    let before = counter.calls();
    run(&["projections", "rebuild", "counter", "--yes"])
        .await
        .unwrap();
    assert_eq!(counter.resets.load(Ordering::SeqCst), 1);
    assert!(counter.calls() >= before + 7, "replayed");
    run(&["projections", "reset", "counter", "--yes"])
        .await
        .unwrap();
    assert_eq!(counter.resets.load(Ordering::SeqCst), 2);
    let mut conn = db.pool().acquire().await.unwrap();
    assert_eq!(
        db.store()
            .get_checkpoint(&mut conn, "counter#0/2")
            .await
            .unwrap(),
        0
    );
    drop(conn);
    db.finish().await;
}

/// One test per backend for each test body above, named
/// `<body>::<backend>`.
macro_rules! on_every_backend {
    ($($body:ident),* $(,)?) => {
        $(
            mod $body {
                use super::*;

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$body::<support::TestDb>().await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$body::<SqliteDb>().await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn mysql() {
                    super::$body::<MySqlDb>().await;
                }
            }
        )*
    };
}

on_every_backend!(reads, follow, projections, failures, embedded);
