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
    /// While set, every event fails as "unavailable" (retried, never
    /// skipped): a worker that runs but makes no progress.
    blocked: std::sync::atomic::AtomicBool,
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
        if self.blocked.load(Ordering::SeqCst) {
            return Err(es::aggregate::projection::Transient::new("blocked by the test").into());
        }
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

    // A worker runs: the rebuild waits for it to record itself (whenever
    // it starts), rewinds and follows it until it caught up.
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
    .fails(2, "does not parse (invalid port number)");
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

// ---------------------------------------------------------------- redact

/// Runs `es` with `RUST_LOG=trace` (and `env`), and returns all it
/// printed, stdout and stderr.
async fn es_output(flags: &[String], args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = es_command(flags, args);
    command.env("RUST_LOG", "trace");
    for (key, value) in env {
        command.env(key, value);
    }
    let output = tokio::time::timeout(RUN_TIMEOUT, command.output())
        .await
        .expect("es ended")
        .expect("run es");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Asserts that nothing `es` printed holds any of `secrets`.
fn assert_hidden(run: &Run, secrets: &[&str], case: &str) {
    for secret in secrets {
        assert!(
            !run.stdout.contains(secret) && !run.stderr.contains(secret),
            "{case}: `{secret}` printed: {run:#?}"
        );
    }
    assert!(!run.stderr.contains("panicked"), "{case}: {run:#?}");
}

/// `url` with its database (path) replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let mut url = url::Url::parse(url).expect("a test server URL");
    url.set_path(&format!("/{database}"));
    url.to_string()
}

/// However the password is given, and however malformed the URL, no
/// output of `es` holds it: not the errors (its own, sqlx's, clap's, the
/// server's), not what a successful command prints, not a log line; a URL
/// that does not parse is not shown at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redact_passwords_never_reach_the_output() {
    // (Nothing listens on port 1: each connection is refused at once.)
    let refused: &[(&str, &[&str], i32, &str)] = &[
        (
            "postgres://app:Xq7Secret@127.0.0.1:1/test",
            &["Xq7Secret"],
            1,
            "postgres://app:***@127.0.0.1:1/test",
        ),
        (
            "postgresql://app@127.0.0.1:1/test?password=Xq7Secret&sslmode=disable",
            &["Xq7Secret"],
            1,
            "password=***&sslmode=disable",
        ),
        (
            "postgres://app@127.0.0.1:1/test?sslpassword=Xq7Secret&pasword=Yw8Secret",
            &["Xq7Secret", "Yw8Secret"],
            1,
            "ignoring the URL parameter `pasword`",
        ),
        (
            "postgres://app:Xq7%2FSe%40cret@127.0.0.1:1/test",
            &["Xq7%2FSe%40cret", "Xq7/Se@cret", "Xq7"],
            1,
            "postgres://app:***@127.0.0.1:1/test",
        ),
        (
            "postgres://app:Xq7@Secret@127.0.0.1:1/test",
            &["Xq7@Secret", "Xq7"],
            1,
            "postgres://app:***@127.0.0.1:1/test",
        ),
        (
            "mysql://root:Xq7Secret@127.0.0.1:1/test",
            &["Xq7Secret"],
            1,
            "mysql://root:***@127.0.0.1:1/test",
        ),
        (
            "mariadb://root@127.0.0.1:1/test?password=Xq7Secret",
            &["Xq7Secret"],
            1,
            "cannot connect to MySQL at mariadb://root@127.0.0.1:1/test",
        ),
        // Malformed: a raw `/`, `?` or `#` in the password, a scheme
        // without its colon or slashes: not shown at all.
        (
            "postgres://app:Xq7/Yw8Secret@127.0.0.1:1/test",
            &["Xq7", "Yw8Secret"],
            2,
            "is not shown",
        ),
        (
            "postgres://app:Xq7?Yw8Secret@127.0.0.1:1/test",
            &["Xq7", "Yw8Secret"],
            2,
            "not shown",
        ),
        (
            "postgres://app:Xq7#Yw8Secret@127.0.0.1:1/test",
            &["Xq7", "Yw8Secret"],
            2,
            "not shown",
        ),
        (
            "postgres://app:123/456789@127.0.0.1:1/test",
            &["456789"],
            2,
            "an `@` after its host",
        ),
        (
            "postgres//app:Xq7Secret@127.0.0.1:1/test",
            &["Xq7Secret"],
            2,
            "not shown",
        ),
        (
            "postgres:app:Xq7Secret@127.0.0.1:1/test",
            &["Xq7Secret"],
            2,
            "not shown",
        ),
        (
            "mysql://root:Xq7/Yw8Secret@127.0.0.1:1/test",
            &["Xq7", "Yw8Secret"],
            2,
            "not shown",
        ),
        (
            "http://app:Xq7Secret@127.0.0.1:1/test",
            &["Xq7Secret"],
            2,
            "http://app:***@127.0.0.1:1/test",
        ),
        (
            "sqlite:/nonexistent/es.db?key=Xq7Secret",
            &["Xq7Secret"],
            2,
            "sqlite:/nonexistent/es.db?key=***",
        ),
    ];
    for (url, secrets, code, says) in refused {
        let flags = vec!["--url".to_owned(), url.to_string()];
        let run = es_output(&flags, &["status"], &[]).await;
        assert_hidden(&run, secrets, url);
        assert_eq!(run.code, *code, "{url}: {run:#?}");
        assert!(run.stderr.contains(says), "{url}: `{says}` in {run:#?}");
        // The same URL from the environment and from a config file.
        let run = es_output(&[], &["status"], &[("DATABASE_URL", url)]).await;
        assert_hidden(&run, secrets, url);
        assert_eq!(run.code, *code, "{url}: {run:#?}");
        let config =
            std::env::temp_dir().join(format!("es_cli_{}.toml", uuid::Uuid::new_v4().simple()));
        std::fs::write(&config, format!("url = {:?}\n", url)).unwrap();
        let flags = vec!["--config".to_owned(), config.display().to_string()];
        let run = es_output(&flags, &["status"], &[]).await;
        std::fs::remove_file(&config).unwrap();
        assert_hidden(&run, secrets, url);
        assert_eq!(run.code, *code, "{url}: {run:#?}");
    }

    // A config file's values, where the file is wrong; a URL given as the
    // config file; a URL where clap expected a subcommand or a number.
    let config =
        std::env::temp_dir().join(format!("es_cli_{}.toml", uuid::Uuid::new_v4().simple()));
    for (text, says) in [
        ("url = 9876543210\n", "invalid type"),
        ("url = [\"postgres://a:Xq7Secret@h/db\"]\n", "invalid type"),
        (
            "url = \"postgres://a:Xq7Secret@h/db\"\npassword = \"Xq7Secret\"\n",
            "unknown field",
        ),
        ("url = \"postgres://a:Xq7Secret@h/db\n", "not valid TOML"),
    ] {
        std::fs::write(&config, text).unwrap();
        let flags = vec!["--config".to_owned(), config.display().to_string()];
        let run = es_output(&flags, &["status"], &[]).await;
        assert_hidden(&run, &["Xq7Secret", "9876543210"], text);
        run.fails(2, says);
    }
    std::fs::remove_file(&config).unwrap();
    let url = "postgres://app:Xq7Secret@127.0.0.1:1/test";
    for args in [
        &["--config", url, "status"][..],
        &[url, "status"],
        &["--url", url, "tail", "--last", url],
        &["--url", url, "stream", "B", "A", url, "--to", url],
    ] {
        let run = es_output(&[], args, &[]).await;
        assert_hidden(&run, &["Xq7Secret"], &format!("{args:?}"));
        assert_eq!(run.code, 2, "{args:?}: {run:#?}");
    }

    // Successful runs on the real servers print the URL redacted. (The test
    // server trusts its clients: the password is not checked.)
    let db = support::TestDb::new().await;
    let mut parsed = url::Url::parse(&support::database_url()).unwrap();
    parsed.set_password(Some("Xq7Secret")).unwrap();
    parsed.set_query(Some("password=Yw8Secret&application_name=es-redact"));
    let flags = vec![
        "--url".to_owned(),
        parsed.to_string(),
        "--schema".to_owned(),
        db.schema.clone(),
    ];
    for args in [&["status"][..], &["migrate", "--dry-run"], &["projections"]] {
        let run = es_output(&flags, args, &[]).await;
        assert_hidden(&run, &["Xq7Secret", "Yw8Secret"], &format!("{args:?}"));
        assert_eq!(run.code, 0, "{args:?}: {run:#?}");
    }
    let run = es_output(&flags, &["status"], &[]).await;
    assert!(run.stdout.contains(":***@"), "{run:#?}");
    assert!(run.stdout.contains("password=***"), "{run:#?}");
    db.finish().await;
    // The server refuses a password root does not have: its message is
    // printed, the password is not.
    let mut my = url::Url::parse(&support::mysql_url()).unwrap();
    my.set_password(Some("Xq7Secret")).unwrap();
    let flags = vec!["--url".to_owned(), my.to_string()];
    let run = es_output(&flags, &["status"], &[]).await;
    assert_hidden(&run, &["Xq7Secret"], "mysql with a wrong password");
    assert_eq!(run.code, 1, "{run:#?}");
}

// -------------------------------------------------------------- negative

/// Every numeric argument of every subcommand refuses a negative number
/// alike (`--last=-5` is no longer taken as 0), before anything is read
/// or changed.
async fn negative_numbers_are_refused<F: Target>() {
    let db = F::create().await;
    let flags = db.flags();
    seed(db.store().clone(), db.pool().clone()).await;
    let counter = Arc::new(Counter::default());
    counter.fail_amount.store(13, Ordering::SeqCst);
    processor(&db, &counter).catch_up().await.unwrap();
    let before = checkpoints(&db).await;
    let position = {
        let mut conn = db.pool().acquire().await.unwrap();
        db.store().failures(&mut conn, "counter").await.unwrap()[0].global_position
    };
    for args in [
        &["tail", "--last=-5"][..],
        &["tail", "--last", "-5"],
        &["tail", "--from=-1"],
        &["tail", "--from", "-1"],
        &["tail", "--limit=-1"],
        &["tail", "--follow", "--poll-interval=-500"],
        &["stream", "Billing", "Account", "x", "--from=-1"],
        &["stream", "Billing", "Account", "x", "--to", "-1"],
        &["projections", "rebuild", "counter", "--yes", "--timeout=-1"],
        &[
            "projections",
            "rebuild",
            "counter",
            "--yes",
            "--worker-timeout",
            "-1",
        ],
        &["failures", "discard", "counter", "-1"],
        &["failures", "retry", "counter", "-1"],
        &["--connect-timeout=-1", "status"],
        &["tail", "--last=-99999999999999999999999"],
    ] {
        let run = es(&flags, args).await;
        assert_eq!(run.code, 2, "{args:?}: {run:#?}");
        assert!(
            run.stderr.contains("must not be negative"),
            "{args:?}: {run:#?}"
        );
        assert_eq!(run.stdout, "", "{args:?}: {run:#?}");
    }
    assert_eq!(checkpoints(&db).await, before, "nothing rewound");
    let mut conn = db.pool().acquire().await.unwrap();
    let failures = db.store().failures(&mut conn, "counter").await.unwrap();
    assert_eq!(failures[0].global_position, position, "nothing discarded");
    drop(conn);
    // 0 is a count like any other.
    let run = es(&flags, &["tail", "--last=0"]).await.ok();
    assert_eq!(run.stdout, "", "{run:#?}");
    let run = es(&flags, &["tail", "--from=0", "--limit=0"]).await.ok();
    assert_eq!(run.stdout, "", "{run:#?}");
    db.finish().await;
}

// --------------------------------------------------------------- rebuild

/// The checkpoint names of `counter`'s two partitions, and their
/// positions.
async fn checkpoints<F: Fixture>(db: &F) -> Vec<i64> {
    checkpoints_of(db, "counter").await
}

async fn checkpoints_of<F: Fixture>(db: &F, name: &str) -> Vec<i64> {
    let mut conn = db.pool().acquire().await.unwrap();
    let mut positions = Vec::new();
    for i in 0..2 {
        let key = format!("{name}#{i}/2");
        positions.push(db.store().get_checkpoint(&mut conn, &key).await.unwrap());
    }
    positions
}

/// The plain `es` leaves the replay to the projection's workers: with
/// none running, a rebuild stops after its bound and changes nothing (it
/// used to rewind first and then wait for ever); with a worker that
/// stopped after recording itself, it stops when nothing progresses, and
/// says the projection stays rewound.
async fn rebuild_without_a_worker_changes_nothing<F: Target>() {
    let db = F::create().await;
    let flags = db.flags();
    seed(db.store().clone(), db.pool().clone()).await;
    let counter = Arc::new(Counter::default());
    processor(&db, &counter).catch_up().await.unwrap();
    let before = checkpoints(&db).await;
    let record = || async {
        let mut conn = db.pool().acquire().await.unwrap();
        db.store()
            .projection_versions(&mut conn, "counter")
            .await
            .unwrap()
            .remove(0)
    };
    let recorded = record().await;
    assert!(before.iter().all(|c| *c > 0), "{before:?}");

    for bound in [
        &["--worker-timeout", "1"][..],
        &["--timeout", "1"],
        &["--worker-timeout", "0"],
    ] {
        let started = std::time::Instant::now();
        let mut args = vec!["projections", "rebuild", "counter", "--yes"];
        args.extend(bound);
        let run = es(&flags, &args).await;
        assert_eq!(run.code, 1, "{run:#?}");
        let last = run.stderr.lines().last().unwrap();
        assert!(
            last.starts_with("es: no worker of `counter` ran within"),
            "{run:#?}"
        );
        assert!(last.contains("nothing was changed"), "{run:#?}");
        assert!(started.elapsed() < RUN_TIMEOUT / 2, "bounded: {run:#?}");
        assert_eq!(
            checkpoints(&db).await,
            before,
            "{bound:?}: checkpoints unchanged"
        );
        let after = record().await;
        assert_eq!(
            after.replay_until, recorded.replay_until,
            "record unchanged"
        );
    }

    // A worker runs (and has recorded itself) but makes no progress: the
    // rebuild rewinds, sees no progress within its bound, and stops
    // saying so.
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
    tokio::time::timeout(RUN_TIMEOUT, async {
        while record().await.worker_seen_at.is_none() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the worker recorded itself");
    counter.blocked.store(true, Ordering::SeqCst);
    let run = es(
        &flags,
        &[
            "projections",
            "rebuild",
            "counter",
            "--yes",
            "--worker-timeout",
            "1",
        ],
    )
    .await;
    assert_eq!(run.code, 1, "{run:#?}");
    let last = run.stderr.lines().last().unwrap();
    assert!(
        last.starts_with("es: `counter` made no progress for"),
        "{run:#?}"
    );
    assert!(last.contains("It stays rewound"), "{run:#?}");
    stop.send(()).unwrap();
    worker.await.unwrap().unwrap();
    assert_eq!(checkpoints(&db).await, [0, 0]);
    // The rewind records, as a rebuild does, that what is there now is
    // replayed.
    let head = {
        let mut conn = db.pool().acquire().await.unwrap();
        db.store().head_position(&mut conn).await.unwrap()
    };
    assert_eq!(record().await.replay_until, head);
    db.finish().await;
}

/// A projection with side effects (it "announces" what it handles, as
/// es-nats's `Publisher` publishes).
struct Announcer(Arc<Counter>);

impl<DB: sqlx::Database> Projection<DB> for Announcer {
    fn name(&self) -> &str {
        "announcer"
    }

    fn has_side_effects(&self) -> bool {
        true
    }

    async fn handle_page(
        &self,
        ctx: &mut es::aggregate::projection::Context<'_, DB>,
        events: &[PersistedEvent],
    ) -> Result<(), es::aggregate::projection::BatchFailure> {
        Projection::<DB>::handle_page(&*self.0, ctx, events).await
    }

    async fn reset(&self, tx: &mut DB::Connection) -> Result<(), HandlerError> {
        Projection::<DB>::reset(&*self.0, tx).await
    }
}

/// A rebuild or reset of a projection that declares side effects is
/// refused, before anything changes and before asking, by the plain `es`
/// (which reads the declaration its processor recorded) and by the
/// embedded CLI (which has its code); `--force` goes on and says what it
/// skips.
async fn rebuild_of_a_side_effect_projection_is_refused<F: Target>() {
    let db = F::create().await;
    let flags = db.flags();
    seed(db.store().clone(), db.pool().clone()).await;
    let counter = Arc::new(Counter::default());
    let announcer = || {
        ProjectionProcessor::new(
            db.store().clone(),
            db.pool().clone(),
            Announcer(counter.clone()),
        )
        .with_partitions(2)
    };
    announcer().catch_up().await.unwrap();
    let before = checkpoints_of(&db, "announcer").await;
    assert!(before.iter().all(|c| *c > 0), "{before:?}");
    let listed = es(&flags, &["projections", "--json"])
        .await
        .ok()
        .json_lines();
    let announced = listed.iter().find(|p| p["name"] == "announcer").unwrap();
    assert_eq!(announced["side_effects"], true, "{announced}");
    let run = es(&flags, &["projections"]).await.ok();
    assert!(
        run.stdout.contains("announcer (v1, active) [side effects]"),
        "{run:#?}"
    );

    for args in [
        &["projections", "rebuild", "announcer", "--yes"][..],
        &["projections", "rebuild", "announcer"],
        &["projections", "reset", "announcer", "--yes"],
    ] {
        es(&flags, args)
            .await
            .fails(2, "it declares side effects")
            .fails(2, "nothing was changed");
        assert_eq!(checkpoints_of(&db, "announcer").await, before, "{args:?}");
    }

    // The embedded CLI, with the projection's code: refused too.
    let cli = || {
        let counter = counter.clone();
        es_cli::Cli::new().projection(move |store: F::Store, pool| {
            ProjectionProcessor::new(store, pool, Announcer(counter.clone())).with_partitions(2)
        })
    };
    let run = |args: &[&str]| {
        let mut all = vec!["es".to_owned()];
        all.extend(flags.iter().cloned());
        all.extend(args.iter().map(|a| a.to_string()));
        cli().execute(all)
    };
    let error = run(&["projections", "rebuild", "announcer", "--yes"])
        .await
        .unwrap_err();
    assert!(
        matches!(&error, es_cli::Error::SideEffects { projection, action: "rebuild" } if projection == "announcer"),
        "{error}"
    );
    assert_eq!(error.exit_code(), 2);
    assert_eq!(counter.resets.load(Ordering::SeqCst), 0, "read model kept");
    assert_eq!(checkpoints_of(&db, "announcer").await, before);
    let error = run(&["projections", "reset", "announcer", "--yes"])
        .await
        .unwrap_err();
    assert!(
        matches!(error, es_cli::Error::SideEffects { .. }),
        "{error}"
    );
    assert_eq!(counter.resets.load(Ordering::SeqCst), 0, "read model kept");

    // --force: on it goes, saying what it skips.
    let calls = counter.calls();
    run(&["projections", "rebuild", "announcer", "--yes", "--force"])
        .await
        .unwrap();
    assert_eq!(counter.resets.load(Ordering::SeqCst), 1);
    assert!(counter.calls() >= calls + 7, "replayed");
    let run = es(
        &flags,
        &["projections", "reset", "announcer", "--yes", "--force"],
    )
    .await
    .ok();
    assert!(
        run.stderr
            .contains("--force: `announcer` declares side effects"),
        "{run:#?}"
    );
    assert_eq!(checkpoints_of(&db, "announcer").await, [0, 0]);
    db.finish().await;
}

// ---------------------------------------------------------------- schema

/// Pointed at the bank example's PostgreSQL database (its store in schema
/// `es_bank`) without `--schema`, `es` names that schema instead of
/// suggesting `es migrate` (which would create a second, empty store).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_schema_of_the_store_is_named() {
    // A database of its own, with the bank example's layout.
    let database = format!("es_cli_bank_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(&support::database_url())
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE \"{database}\""
    )))
    .execute(&admin)
    .await
    .unwrap();
    let url = with_database(&support::database_url(), &database);
    {
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        let store = es::store::PostgresStore::builder()
            .schema("es_bank")
            .build()
            .unwrap();
        store.migrate(&pool).await.unwrap();
        seed(store, pool.clone()).await;
        pool.close().await;
    }
    let flags = vec!["--url".to_owned(), url.clone()];
    for args in [&["status"][..], &["projections"], &["tail"]] {
        let run = es(&flags, args)
            .await
            .fails(4, "schema \"es_bank\" (--schema es_bank)");
        assert!(
            run.stderr.contains("would create another, empty store"),
            "{run:#?}"
        );
        assert!(!run.stderr.contains("run `es migrate`"), "{run:#?}");
    }
    // Pointed there, it works; pointed at another schema on purpose, it
    // offers `es migrate` and names the store too.
    let mut there = flags.clone();
    there.extend(["--schema".to_owned(), "es_bank".to_owned()]);
    let status = &es(&there, &["status", "--json"]).await.ok().json_lines()[0];
    assert_eq!(status["events"], 7, "{status}");
    let mut elsewhere = flags.clone();
    elsewhere.extend(["--schema".to_owned(), "es_other".to_owned()]);
    es(&elsewhere, &["status"])
        .await
        .fails(4, "run `es migrate`")
        .fails(4, "schema \"es_bank\"");
    // Creating a store beside it anyway is allowed, and says so.
    let run = es(&flags, &["migrate"]).await.ok();
    assert!(
        run.stderr
            .contains("creating a new, empty store; the database holds others: schema \"es_bank\""),
        "{run:#?}"
    );
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE \"{database}\" WITH (FORCE)"
    )))
    .execute(&admin)
    .await
    .unwrap();
}

/// On MySQL a store's schema is a database: pointed at one without a
/// store, `es` names the databases that hold one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_schema_of_the_store_is_named() {
    let admin = sqlx::MySqlPool::connect(&support::mysql_url())
        .await
        .unwrap();
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    // (Named to sort before the other tests' databases in the list.)
    let (empty, bank) = (
        format!("es_cli_empty_{suffix}"),
        format!("es_cli_bank_{suffix}"),
    );
    for database in [&empty, &bank] {
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE `{database}`")))
            .execute(&admin)
            .await
            .unwrap();
    }
    {
        let pool = sqlx::MySqlPool::connect(&with_database(&support::mysql_url(), &bank))
            .await
            .unwrap();
        es::store::MySqlStore::new().migrate(&pool).await.unwrap();
        pool.close().await;
    }
    let flags = vec![
        "--url".to_owned(),
        with_database(&support::mysql_url(), &empty),
    ];
    let run = es(&flags, &["status"])
        .await
        .fails(4, &format!("database \"{bank}\" (--schema {bank})"));
    assert!(!run.stderr.contains("run `es migrate`"), "{run:#?}");
    let mut there = flags.clone();
    there.extend(["--schema".to_owned(), bank.clone()]);
    es(&there, &["status"]).await.ok();
    for database in [&empty, &bank] {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE `{database}`")))
            .execute(&admin)
            .await
            .unwrap();
    }
}

/// SQLite has no schemas, but one file may hold stores on other events
/// tables: `es` names them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_schema_of_the_store_is_named() {
    let path = std::env::temp_dir().join(format!("es_cli_{}.db", uuid::Uuid::new_v4().simple()));
    {
        let pool = SqliteDb::connect(&path, 1).await;
        let store = es::store::SqliteStore::builder()
            .events_table("ledger")
            .build()
            .unwrap();
        store.migrate(&pool).await.unwrap();
        pool.close().await;
    }
    let flags = vec!["--url".to_owned(), format!("sqlite:{}", path.display())];
    es(&flags, &["status"])
        .await
        .fails(4, "events table \"ledger\" (--events-table ledger)");
    let mut there = flags.clone();
    there.extend(["--events-table".to_owned(), "ledger".to_owned()]);
    es(&there, &["status"]).await.ok();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
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

on_every_backend!(
    reads,
    follow,
    projections,
    failures,
    embedded,
    negative_numbers_are_refused,
    rebuild_without_a_worker_changes_nothing,
    rebuild_of_a_side_effect_projection_is_refused,
);
