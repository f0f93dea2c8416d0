//! Run with: `cargo run --release -p es-bench -- [workload ...] [--backend postgres|sqlite|mysql] [--quick] [--json]`
//!
//! Benchmarks the framework's hot paths against plain sqlx doing the same
//! work, in the same run, on the same backend, and prints for each side
//! throughput and p50/p99 latency, and the ratio framework ÷ plain (above 1:
//! the framework is faster). The write workloads (`append_c*`,
//! `store_append_c*`, `batch_100`) have several plain sides where the
//! backend has them (on every backend: on the store's tables, and on minimal
//! tables of their own with a locked head, a conditional upsert, or no
//! head; see `backend::Variant`); their ratio is to the fastest plain side
//! of the run, which the table and the JSON line name.
//!
//! Workloads: `append_c1`, `append_c1_cached` (the repository's state
//! cache on), `append_c8`, `store_append_c1`,
//! `store_append_c8`, `batch_100`, `contended_c8`, `load_10k`,
//! `catchup_1m`, `publish_nats`, `growth` (all when none is named; with `--quick`, all
//! but `growth`, which runs when named). The catch-ups also
//! run into a projection that writes nothing (`catchup_1m_discard`): the
//! framework's own part, beside the read model's writes.
//!
//! Options:
//! - `--backend postgres|sqlite|mysql`: where both sides run (default
//!   `postgres`); see `backend/` for each one's plain SQL;
//! - `--quick`: short runs and a smaller catch-up (the whole suite in
//!   under a minute);
//! - `--seconds N`: how long each side of a workload runs (default 10,
//!   2 with `--quick`);
//! - `--catchup-events N`: events for `catchup_1m` (default 1,000,000,
//!   50,000 with `--quick`);
//! - `--growth-events N`: events the store holds when `growth` measures
//!   again (default 10,000,000, 1,000,000 with `--quick`; see
//!   `growth.rs`);
//! - `--publish-events N`: events for `publish_nats` (default 200,000,
//!   50,000 with `--quick`; see `nats.rs`: it needs a NATS server with
//!   JetStream, `NATS_URL`, default `nats://127.0.0.1:4222`, and is
//!   skipped when none answers);
//! - `--json`: one JSON object per workload on stdout (the table goes to
//!   stderr);
//! - `--no-notify`: the store sends no LISTEN/NOTIFY notification on
//!   append (PostgreSQL only).
//!
//! PostgreSQL: `DATABASE_URL` selects the server (default
//! `postgres://postgres@127.0.0.1:5432/test`); everything is written in a
//! fresh schema that is dropped at the end. SQLite: a temporary database
//! file, removed at the end. MySQL / MariaDB: `MYSQL_URL` (default
//! `mysql://root@127.0.0.1:3306/test`), a fresh database `es_bench_<random>`
//! dropped at the end.
//!
//! What is PostgreSQL's alone does not apply elsewhere: LISTEN/NOTIFY
//! (`--no-notify`), and commits that do not wait for the disk
//! (`catchup_1m_async_commit` is run on PostgreSQL only).

mod backend;
#[path = "../../examples/bank/domain.rs"]
#[allow(dead_code)]
mod domain;
mod growth;
mod nats;
mod plain;
mod stats;

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backend::{Conn, NewEvent, Opened, Pool, Target, Variant};
use domain::{Account, AccountCommand, AccountError, AccountEvent};
use es::aggregate::projection::{
    BatchFailure, Context, HandlerError, Projection, ProjectionProcessor,
};
use es::store::{Event, EventStore, ExpectedVersion, PersistedEvent, Snapshot, SnapshotStore};
use es::{Repository, RepositoryError, RetryPolicy};
use plain::Plain;
use stats::{Outcome, Stats, run_for};

const ALL: &[&str] = &[
    "append_c1",
    "append_c1_cached",
    "append_c8",
    "store_append_c1",
    "store_append_c8",
    "batch_100",
    "contended_c8",
    "load_10k",
    "catchup_1m",
    "publish_nats",
    "growth",
];

/// Events per batch of the catch-up, and per page of the plain read.
const CATCHUP_BATCH: i64 = 5000;

const BACKENDS: &[&str] = &["postgres", "sqlite", "mysql"];

struct Config {
    backend: String,
    workloads: Vec<String>,
    seconds: f64,
    catchup_events: u64,
    growth_events: u64,
    publish_events: u64,
    json: bool,
    notify: bool,
}

fn parse_args() -> Result<Config, String> {
    let mut config = Config {
        backend: "postgres".to_owned(),
        workloads: Vec::new(),
        seconds: 10.0,
        catchup_events: 1_000_000,
        growth_events: 10_000_000,
        publish_events: 200_000,
        json: false,
        notify: true,
    };
    let mut quick = false;
    let (mut seconds, mut catchup, mut growth, mut publish) = (None, None, None, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> Result<f64, String> {
            args.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{name} needs a number"))
        };
        match arg.as_str() {
            "--quick" => quick = true,
            "--json" => config.json = true,
            "--no-notify" => config.notify = false,
            "--backend" => match args.next() {
                Some(b) if BACKENDS.contains(&b.as_str()) => config.backend = b,
                _ => return Err(format!("--backend needs one of {}", BACKENDS.join(", "))),
            },
            "--seconds" => seconds = Some(number("--seconds")?),
            "--catchup-events" => catchup = Some(number("--catchup-events")? as u64),
            "--growth-events" => growth = Some(number("--growth-events")? as u64),
            "--publish-events" => publish = Some(number("--publish-events")? as u64),
            "-h" | "--help" => {
                return Err(format!(
                    "usage: es-bench [workload ...] [--backend postgres|sqlite|mysql] [--quick] [--seconds N] [--catchup-events N] [--growth-events N] [--publish-events N] [--json] [--no-notify]\nworkloads: {}",
                    ALL.join(", ")
                ));
            }
            w if ALL.contains(&w) => config.workloads.push(w.to_owned()),
            other => return Err(format!("unknown argument `{other}`; try --help")),
        }
    }
    if quick {
        config.seconds = 2.0;
        config.catchup_events = 50_000;
        config.growth_events = 1_000_000;
        config.publish_events = 50_000;
    }
    if let Some(p) = publish {
        config.publish_events = p;
    }
    if let Some(s) = seconds {
        config.seconds = s;
    }
    if let Some(c) = catchup {
        config.catchup_events = c;
    }
    if let Some(g) = growth {
        config.growth_events = g;
    }
    if config.workloads.is_empty() {
        // `growth` fills a million events even when quick: named only
        config.workloads = ALL
            .iter()
            .filter(|w| !(quick && **w == "growth"))
            .map(|w| (*w).to_owned())
            .collect();
    }
    Ok(config)
}

/// The sides of one workload: the framework and one or more plain ones.
struct Comparison {
    workload: String,
    framework: Stats,
    /// Each plain side, named by its variant.
    plain: Vec<(&'static str, Stats)>,
    /// What an op is, for the table ("commands", "events", ...).
    unit: &'static str,
    note: String,
}

struct Bench<T: Target> {
    pool: Pool<T>,
    store: T::Store,
    /// On the store's tables: the plain side of the workloads that have one.
    plain: Arc<Plain<T>>,
    /// One per [`Target::VARIANTS`]: the plain sides of the write workloads.
    plains: Vec<Arc<Plain<T>>>,
    side_duration: Duration,
    catchup_events: u64,
}

#[tokio::main]
async fn main() {
    let config = match parse_args() {
        Ok(c) => c,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    match config.backend.as_str() {
        "postgres" => run::<backend::postgres::Postgres>(&config).await,
        "sqlite" => run::<backend::sqlite::Sqlite>(&config).await,
        "mysql" => run::<backend::mysql::MySql>(&config).await,
        _ => unreachable!("checked when parsing"),
    }
}

/// Runs the workloads on one backend, in a fresh place that is removed at
/// the end.
async fn run<T: Target>(config: &Config) {
    let opened: Opened<T> = match T::open(config.notify).await {
        Ok(opened) => opened,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(1);
        }
    };
    eprintln!(
        "es-bench: {}, {} s per side, {}",
        opened.server, config.seconds, opened.place
    );
    if !config.notify && !T::POSTGRES_FEATURES {
        eprintln!("  --no-notify does not apply: only PostgreSQL notifies on append");
    }
    if T::VARIANTS.len() == 1 {
        eprintln!(
            "  one plain side, on the store's tables: the plain sides on minimal tables \
             (head-lock, upsert, no-head) are not written for this backend yet"
        );
    }
    let mut plains = Vec::new();
    for &variant in T::VARIANTS {
        T::create_plain_tables(&opened.store, &opened.pool, variant).await;
        let plain = Plain::new(opened.pool.clone(), &opened.store, variant);
        check_conflicts(&plain).await;
        plains.push(Arc::new(plain));
    }
    let bench = Bench::<T> {
        plain: Arc::new(Plain::new(
            opened.pool.clone(),
            &opened.store,
            Variant::StoreTables,
        )),
        plains,
        pool: opened.pool.clone(),
        store: opened.store.clone(),
        side_duration: Duration::from_secs_f64(config.seconds),
        catchup_events: config.catchup_events,
    };
    for workload in &config.workloads {
        eprintln!("running {workload} ...");
        let comparisons = match workload.as_str() {
            "append_c1" => vec![bench.append(1, false).await],
            "append_c1_cached" => vec![bench.append(1, true).await],
            "append_c8" => vec![bench.append(8, false).await],
            "store_append_c1" => vec![bench.store_append(1, 1).await],
            "store_append_c8" => vec![bench.store_append(8, 1).await],
            "batch_100" => vec![bench.store_append(1, 100).await],
            "contended_c8" => vec![bench.contended(8).await],
            "load_10k" => bench.load(10_000).await,
            "catchup_1m" => bench.catchup().await,
            "publish_nats" => bench.publish_nats(config.publish_events).await,
            "growth" => {
                let (measured, catchup, fill) =
                    bench.growth(config.growth_events, config.notify).await;
                for g in &measured {
                    growth::report(T::NAME, g, config.growth_events, fill, config.json);
                }
                catchup
            }
            _ => unreachable!("checked when parsing"),
        };
        for c in comparisons {
            report(T::NAME, &c, config.json);
        }
    }
    T::close(&opened).await;
}

/// Checks that a plain side refuses a stale expected version, for a new
/// aggregate and an existing one: a side that did not would be measured
/// doing less than the framework.
async fn check_conflicts<T: Target>(plain: &Plain<T>) {
    let id = format!("probe-{}", plain.variant.name());
    let events = [("Deposited", r#"{"amount": 1}"#.to_owned())];
    for version in [0, 1] {
        plain.append(&id, version, &events).await.expect("probe");
        assert!(
            plain.append(&id, version, &events).await.is_err(),
            "the plain side {} took a stale version",
            plain.variant.name()
        );
    }
}

fn ms(d: Option<Duration>) -> Option<f64> {
    d.map(|d| d.as_secs_f64() * 1000.0)
}

/// A latency column: milliseconds, or a dash when none was timed.
fn column(d: Option<Duration>) -> String {
    match ms(d) {
        Some(ms) => format!("{ms:>8.3} ms"),
        None => format!("{:>8}   ", "—"),
    }
}

fn report(backend: &str, c: &Comparison, json: bool) {
    let ratio_to = |s: &Stats| c.framework.ops_per_sec() / s.ops_per_sec().max(1e-9);
    let (fastest, plain) = c
        .plain
        .iter()
        .max_by(|a, b| a.1.ops_per_sec().total_cmp(&b.1.ops_per_sec()))
        .expect("a plain side");
    let ratio = ratio_to(plain);
    let sides = |s: &Stats| {
        format!(
            "{:>10.1} {}/s  p50 {}  p99 {}",
            s.ops_per_sec() * s.units_per_op as f64,
            c.unit,
            column(s.percentile(50.0)),
            column(s.percentile(99.0)),
        )
    };
    let mut line = format!(
        "{:<24} framework {} | plain {} | ratio {:.2}{}{}",
        c.workload,
        sides(&c.framework),
        sides(plain),
        ratio,
        if c.plain.len() > 1 {
            format!(" to the fastest plain side, {fastest}")
        } else {
            String::new()
        },
        if c.note.is_empty() {
            String::new()
        } else {
            format!("  ({})", c.note)
        }
    );
    if c.plain.len() > 1 {
        for (name, s) in &c.plain {
            line.push_str(&format!(
                "\n    plain {name:<12} {}  ratio {:.2}",
                sides(s),
                ratio_to(s)
            ));
        }
    }
    if json {
        eprintln!("{line}");
        let side = |s: &Stats| {
            serde_json::json!({
                "ops": s.ops,
                "seconds": s.elapsed.as_secs_f64(),
                "ops_per_sec": s.ops_per_sec(),
                "units_per_sec": s.ops_per_sec() * s.units_per_op as f64,
                "p50_ms": ms(s.percentile(50.0)),
                "p99_ms": ms(s.percentile(99.0)),
                "max_ms": ms(s.percentile(100.0)),
                "conflicts": s.conflicts,
                "gave_up": s.failed,
            })
        };
        println!(
            "{}",
            serde_json::json!({
                "backend": backend,
                "workload": c.workload,
                "unit": c.unit,
                "framework": side(&c.framework),
                "plain": side(plain),
                "fastest_plain": fastest,
                "plain_sides": c
                    .plain
                    .iter()
                    .map(|(name, s)| {
                        let mut json = side(s);
                        json["ratio"] = serde_json::json!(ratio_to(s));
                        (name.to_string(), json)
                    })
                    .collect::<serde_json::Map<_, _>>(),
                "ratio": ratio,
                "note": c.note,
            })
        );
    } else {
        println!("{line}");
    }
}

/// A count for a workload's name: `1m`, `10m`, `50k`, `999`.
fn count(n: i64) -> String {
    match n {
        n if n >= 1_000_000 => format!("{}m", (n as f64 / 1e6).round()),
        n if n >= 1_000 => format!("{}k", (n as f64 / 1e3).round()),
        n => n.to_string(),
    }
}

fn deposit() -> AccountCommand {
    AccountCommand::Deposit { amount: 1 }
}

/// Events of a freshly opened account with `deposits` deposits.
fn account_events(id: &str, deposits: usize) -> Vec<Event> {
    let event = |t: &str, payload: serde_json::Value| {
        Event::new("Billing", "Account", id, t, &payload).expect("json")
    };
    std::iter::once(event("Opened", serde_json::json!({"owner": "bench"})))
        .chain((0..deposits).map(|_| event("Deposited", serde_json::json!({"amount": 1}))))
        .collect()
}

async fn conn<T: Target>(pool: &Pool<T>) -> sqlx::pool::PoolConnection<T::Db> {
    pool.acquire().await.expect("acquire")
}

impl<T: Target> Bench<T> {
    /// Runs the framework and `sides` plain sides (`plain`'s first
    /// argument: which), alternating in four rounds each to even out drift
    /// (the machine, the disk's flush latency, autovacuum).
    async fn compare<Fw, FwFut, Pl, PlFut>(
        &self,
        concurrency: usize,
        max_ops_per_task: u64,
        sides: usize,
        framework: Fw,
        plain: Pl,
    ) -> (Stats, Vec<Stats>)
    where
        Fw: Fn(usize, usize, u64) -> FwFut + Send + Sync + Clone + 'static,
        FwFut: std::future::Future<Output = Outcome> + Send,
        Pl: Fn(usize, usize, usize, u64) -> PlFut + Send + Sync + Clone + 'static,
        PlFut: std::future::Future<Output = Outcome> + Send,
    {
        const ROUNDS: u32 = 4;
        let round = self.side_duration / ROUNDS;
        let mut fw = Stats::default();
        let mut pl = vec![Stats::default(); sides];
        for r in 0..ROUNDS as usize {
            for (side, stats) in pl.iter_mut().enumerate() {
                let p = plain.clone();
                stats.merge(
                    run_for(round, concurrency, max_ops_per_task, move |t, i| {
                        p(side, r, t, i)
                    })
                    .await,
                );
            }
            let f = framework.clone();
            fw.merge(run_for(round, concurrency, max_ops_per_task, move |t, i| f(r, t, i)).await);
        }
        (fw, pl)
    }

    /// Names each plain side's stats by its variant.
    fn named(&self, stats: Vec<Stats>) -> Vec<(&'static str, Stats)> {
        self.plains
            .iter()
            .map(|p| p.variant.name())
            .zip(stats)
            .collect()
    }

    /// One plain side's stats, on the store's tables.
    fn store_tables(stats: Vec<Stats>) -> Vec<(&'static str, Stats)> {
        vec![(
            Variant::StoreTables.name(),
            stats.into_iter().next().expect("one side"),
        )]
    }

    /// A command (load, fold, handle, append one event) on distinct
    /// aggregates that already hold a few events.
    async fn append(&self, concurrency: usize, cached: bool) -> Comparison {
        const AGGREGATES: usize = 1000;
        let workload = format!(
            "append_c{concurrency}{}",
            if cached { "_cached" } else { "" }
        );
        let prefix = workload.replace('_', "");
        let mut c = conn::<T>(&self.pool).await;
        for k in 0..AGGREGATES {
            let id = format!("{prefix}-fw-{k}");
            self.store
                .append(&mut c, ExpectedVersion::NoStream, account_events(&id, 4))
                .await
                .expect("populate");
        }
        drop(c);
        // Each plain side's aggregates, in its own tables, the same events.
        let opened = AccountEvent::Opened {
            owner: "bench".to_owned(),
        };
        let deposited = AccountEvent::Deposited { amount: 1 };
        let events: Vec<NewEvent<'_>> = std::iter::once(&opened)
            .chain(std::iter::repeat_n(&deposited, 4))
            .map(plain::encode)
            .collect();
        for (side, plain) in self.plains.iter().enumerate() {
            for k in 0..AGGREGATES {
                let id = format!("{prefix}-plain{side}-{k}");
                plain.append(&id, 0, &events).await.expect("populate");
            }
        }
        let mut repository =
            Repository::<Account, T::Store>::new(self.store.clone(), self.pool.clone());
        if cached {
            // The working set fits: after the first round every command
            // finds its aggregate cached (the plain side reads it).
            repository = repository.with_state_cache(AGGREGATES);
        }
        let repository = Arc::new(repository);
        let plains = self.plains.clone();
        let (p1, p2) = (prefix.clone(), prefix.clone());
        // Task t takes aggregates t, t + c, t + 2c, ...: no two tasks share one.
        let pick = move |t: usize, i: u64| (t + concurrency * i as usize) % AGGREGATES;
        let (framework, plain) = self
            .compare(
                concurrency,
                u64::MAX,
                plains.len(),
                move |_, t, i| {
                    let (repository, id) = (repository.clone(), format!("{p1}-fw-{}", pick(t, i)));
                    async move {
                        repository.execute(&id, &deposit()).await.expect("execute");
                        Outcome::default()
                    }
                },
                move |side, _, t, i| {
                    let plain = plains[side].clone();
                    let id = format!("{p2}-plain{side}-{}", pick(t, i));
                    async move {
                        plain.execute(&id, &deposit()).await.expect("no conflict");
                        Outcome::default()
                    }
                },
            )
            .await;
        Comparison {
            workload,
            framework,
            plain: self.named(plain),
            unit: "commands",
            note: String::new(),
        }
    }

    /// The store's append alone, `batch` events per transaction, each task
    /// on aggregates of its own whose versions it knows.
    async fn store_append(&self, concurrency: usize, batch: usize) -> Comparison {
        const PER_TASK: u64 = 50;
        let store = self.store.clone();
        let pool = self.pool.clone();
        let plains = self.plains.clone();
        let name = if batch == 1 {
            format!("store_append_c{concurrency}")
        } else {
            format!("batch_{batch}")
        };
        let (n1, n2) = (name.clone(), name.clone());
        let (framework, plain) = self
            .compare(
                concurrency,
                u64::MAX,
                plains.len(),
                move |r, t, i| {
                    let (store, pool) = (store.clone(), pool.clone());
                    let id = format!("{n1}-fw-{r}-{t}-{}", i % PER_TASK);
                    let version = (i / PER_TASK) as i64 * batch as i64;
                    async move {
                        let events: Vec<Event> = (0..batch)
                            .map(|_| {
                                Event::new(
                                    "Billing",
                                    "Account",
                                    id.as_str(),
                                    "Deposited",
                                    &serde_json::json!({"amount": 1}),
                                )
                                .expect("json")
                            })
                            .collect();
                        let mut c = conn::<T>(&pool).await;
                        store
                            .append(&mut c, ExpectedVersion::at(version), events)
                            .await
                            .expect("append");
                        Outcome::default()
                    }
                },
                move |side, r, t, i| {
                    let plain = plains[side].clone();
                    let id = format!("{n2}-plain{side}-{r}-{t}-{}", i % PER_TASK);
                    let version = (i / PER_TASK) as i64 * batch as i64;
                    async move {
                        // serialized per op, as the framework side does
                        let payloads: Vec<(&str, String)> = (0..batch)
                            .map(|_| ("Deposited", serde_json::json!({"amount": 1}).to_string()))
                            .collect();
                        plain
                            .append(&id, version, &payloads)
                            .await
                            .expect("no conflict");
                        Outcome::default()
                    }
                },
            )
            .await;
        let (mut framework, mut plain) = (framework, plain);
        framework.units_per_op = batch as u64;
        for side in &mut plain {
            side.units_per_op = batch as u64;
        }
        Comparison {
            workload: name,
            framework,
            plain: self.named(plain),
            unit: "events",
            note: String::new(),
        }
    }

    /// `concurrency` tasks executing commands on one aggregate, with the
    /// default retry policy on both sides. The aggregate is replaced by a
    /// fresh one every half second (all tasks move together), so that its
    /// stream stays short; the first command to reach a fresh one opens it.
    async fn contended(&self, concurrency: usize) -> Comparison {
        let policy = RetryPolicy::default();
        let repository = Arc::new(
            Repository::<Account, T::Store>::new(self.store.clone(), self.pool.clone())
                .with_retry_policy(policy),
        );
        let plain = self.plain.clone();
        let slot = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_millis()
                / 500
        };
        let (framework, plain) = self
            .compare(
                concurrency,
                u64::MAX,
                1,
                move |_, _, _| {
                    let repository = repository.clone();
                    async move {
                        let id = format!("hot-fw-{}", slot());
                        let mut outcome = Outcome::default();
                        loop {
                            match repository.execute(&id, &deposit()).await {
                                Ok(done) => {
                                    outcome.conflicts += u64::from(done.attempts - 1);
                                    return outcome;
                                }
                                Err(RepositoryError::Rejected(AccountError::NotOpen)) => {
                                    let open = AccountCommand::Open {
                                        owner: "hot".into(),
                                    };
                                    match repository.execute(&id, &open).await {
                                        Ok(_) | Err(RepositoryError::Rejected(_)) => {}
                                        Err(RepositoryError::Conflict { attempts, .. }) => {
                                            outcome.conflicts += u64::from(attempts);
                                        }
                                        Err(other) => panic!("{other}"),
                                    }
                                }
                                Err(RepositoryError::Conflict { attempts, .. }) => {
                                    outcome.conflicts += u64::from(attempts);
                                    outcome.failed = true;
                                    return outcome;
                                }
                                Err(other) => panic!("{other}"),
                            }
                        }
                    }
                },
                move |_, _, _, _| {
                    let plain = plain.clone();
                    async move {
                        let id = format!("hot-plain-{}", slot());
                        let mut outcome = Outcome::default();
                        let mut attempt = 1;
                        loop {
                            match plain.execute(&id, &deposit()).await {
                                Ok(_) => return outcome,
                                Err(plain::Refused::NotOpen) => {
                                    // open it; losing that race is fine
                                    let _ = plain
                                        .execute(
                                            &id,
                                            &AccountCommand::Open {
                                                owner: "hot".into(),
                                            },
                                        )
                                        .await;
                                }
                                Err(plain::Refused::Conflict)
                                    if attempt < policy.max_attempts() =>
                                {
                                    outcome.conflicts += 1;
                                    tokio::time::sleep(policy.backoff(attempt)).await;
                                    attempt += 1;
                                }
                                Err(plain::Refused::Conflict) => {
                                    outcome.conflicts += 1;
                                    outcome.failed = true;
                                    return outcome;
                                }
                                Err(plain::Refused::AlreadyOpen) => unreachable!("deposits"),
                            }
                        }
                    }
                },
            )
            .await;
        let plain = Self::store_tables(plain);
        let note = format!(
            "conflicts retried: framework {}, plain {}; gave up: framework {}, plain {}",
            framework.conflicts, plain[0].1.conflicts, framework.failed, plain[0].1.failed
        );
        Comparison {
            workload: format!("contended_c{concurrency}"),
            framework,
            plain,
            unit: "commands",
            note,
        }
    }

    /// Loading and folding one aggregate of `events` events, without and
    /// with a snapshot.
    async fn load(&self, events: usize) -> Vec<Comparison> {
        let id = "big";
        let mut c = conn::<T>(&self.pool).await;
        let mut all = account_events(id, events - 1);
        let mut version = 0;
        while !all.is_empty() {
            let rest = all.split_off(all.len().min(1000));
            let batch = std::mem::replace(&mut all, rest);
            version = self
                .store
                .append(&mut c, ExpectedVersion::at(version), batch)
                .await
                .expect("populate")
                .to_version();
        }
        let plain = self.plain.clone();
        let full = Repository::<Account, T::Store>::new(self.store.clone(), self.pool.clone());
        let state = full.load(id).await.expect("load");
        self.store
            .save_snapshot(
                &mut c,
                &Snapshot::new("Billing", "Account", id, state.version, 1, &state.state)
                    .expect("json"),
            )
            .await
            .expect("snapshot");
        drop(c);
        let mut comparisons = Vec::new();
        for (name, repository) in [
            ("load_10k", full.clone()),
            (
                "load_10k_snapshot",
                full.clone().with_snapshots(1_000_000, 1),
            ),
        ] {
            let repository = Arc::new(repository);
            let plain = plain.clone();
            let pool = self.pool.clone();
            let (framework, plain) = self
                .compare(
                    1,
                    u64::MAX,
                    1,
                    move |_, _, _| {
                        let repository = repository.clone();
                        async move {
                            let loaded = repository.load(id).await.expect("load");
                            assert_eq!(loaded.version, events as i64);
                            Outcome::default()
                        }
                    },
                    move |_, _, _, _| {
                        let (plain, pool) = (plain.clone(), pool.clone());
                        async move {
                            let mut c = conn::<T>(&pool).await;
                            let (_, version) = plain.load(&mut c, id).await;
                            assert_eq!(version, events as i64);
                            Outcome::default()
                        }
                    },
                )
                .await;
            comparisons.push(Comparison {
                workload: name.to_owned(),
                framework,
                plain: Self::store_tables(plain),
                unit: "loads",
                note: if name.ends_with("snapshot") {
                    "plain folds the whole stream".to_owned()
                } else {
                    String::new()
                },
            });
        }
        comparisons
    }

    /// A projection catching up over every event in the store into a
    /// table, against a plain paged read of the same events; with durable
    /// commits (the default) and without.
    async fn catchup(&self) -> Vec<Comparison> {
        let mut c = conn::<T>(&self.pool).await;
        let per_batch = 1000usize;
        let batches = (self.catchup_events as usize).div_ceil(per_batch);
        let started = Instant::now();
        for b in 0..batches {
            let id = format!("catchup-{b}");
            self.store
                .append(
                    &mut c,
                    ExpectedVersion::NoStream,
                    account_events(&id, per_batch - 1),
                )
                .await
                .expect("populate");
        }
        eprintln!(
            "  stored {} events in {:.1} s",
            batches * per_batch,
            started.elapsed().as_secs_f64()
        );
        drop(c);
        let total = self.plain.count_events().await;
        self.catch_up_over(total, "catchup_1m").await
    }

    /// The catch-up of `catchup` over the `total` events the store holds,
    /// as workload `name` (and `name` + `_async_commit`).
    async fn catch_up_over(&self, total: i64, name: &str) -> Vec<Comparison> {
        let table = T::create_read_model(&self.store, &self.pool).await;

        let started = Instant::now();
        let read = self.plain.read_all(0, CATCHUP_BATCH).await;
        let plain = Stats {
            ops: read,
            elapsed: started.elapsed(),
            latencies: Vec::new(),
            conflicts: 0,
            failed: 0,
            units_per_op: 1,
        };
        let mut comparisons = Vec::new();
        // committing without waiting for the disk is PostgreSQL's alone
        let durabilities: &[bool] = if T::POSTGRES_FEATURES {
            &[true, false]
        } else {
            eprintln!(
                "  catchup_1m_async_commit does not apply: only PostgreSQL commits without \
                 waiting for the disk"
            );
            &[true]
        };
        for &durable in durabilities {
            let processor = ProjectionProcessor::new(
                self.store.clone(),
                self.pool.clone(),
                Copy::<T> {
                    table: table.clone(),
                    target: PhantomData,
                },
            )
            .with_batch_size(CATCHUP_BATCH as u32)
            .with_durable_commits(durable);
            let started = Instant::now();
            // a rebuild: the read model is emptied and the checkpoint reset
            let done = processor.rebuild().await.expect("catch up");
            let framework = Stats {
                ops: done.events,
                elapsed: started.elapsed(),
                latencies: Vec::new(),
                conflicts: 0,
                failed: 0,
                units_per_op: 1,
            };
            assert_eq!(done.events as i64, total);
            comparisons.push(Comparison {
                workload: if durable {
                    name.to_owned()
                } else {
                    format!("{name}_async_commit")
                },
                framework,
                plain: vec![(Variant::StoreTables.name(), plain.clone())],
                unit: "events",
                note: format!(
                    "{total} events; the projection writes a row per event{}, plain only reads",
                    if durable {
                        ""
                    } else {
                        ", batches commit without waiting for the disk"
                    }
                ),
            });
        }
        // The framework's own part: the same catch-up into a projection
        // that writes nothing (reading, decoding, checkpointing).
        let processor = ProjectionProcessor::new(
            self.store.clone(),
            self.pool.clone(),
            Discard::<T>(PhantomData),
        )
        .with_batch_size(CATCHUP_BATCH as u32);
        let started = Instant::now();
        let done = processor.rebuild().await.expect("catch up");
        assert_eq!(done.events as i64, total);
        comparisons.push(Comparison {
            workload: format!("{name}_discard"),
            framework: Stats {
                ops: done.events,
                elapsed: started.elapsed(),
                units_per_op: 1,
                ..Stats::default()
            },
            plain: vec![(Variant::StoreTables.name(), plain.clone())],
            unit: "events",
            note: format!(
                "{total} events; the projection writes nothing but its checkpoint, plain only reads"
            ),
        });
        assert_eq!(read as i64, total);
        comparisons
    }
}

/// Handles every event by doing nothing: what a catch-up costs beside the
/// read model's own writes.
struct Discard<T>(PhantomData<fn() -> T>);

impl<T: Target> Projection<T::Db> for Discard<T> {
    fn name(&self) -> &str {
        "bench_discard"
    }

    async fn reset(&self, _tx: &mut Conn<T>) -> Result<(), HandlerError> {
        Ok(())
    }

    async fn handle(&self, _tx: &mut Conn<T>, _event: &PersistedEvent) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// Copies each event's position, aggregate and type into a table, one
/// statement per batch.
struct Copy<T> {
    table: String,
    target: PhantomData<fn() -> T>,
}

impl<T: Target> Projection<T::Db> for Copy<T> {
    fn name(&self) -> &str {
        "bench_copy"
    }

    async fn reset(&self, tx: &mut Conn<T>) -> Result<(), HandlerError> {
        T::clear_read_model(tx, &self.table).await?;
        Ok(())
    }

    async fn handle_page(
        &self,
        ctx: &mut Context<'_, T::Db>,
        events: &[PersistedEvent],
    ) -> Result<(), BatchFailure> {
        T::copy_rows(ctx.tx(), &self.table, events)
            .await
            .map_err(BatchFailure::whole_batch)
    }
}
