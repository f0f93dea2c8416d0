//! The MySQL / MariaDB backend (cargo feature `mysql`). The user guide
//! (schema, appending, gap safety, claims) is on [`MySqlStore`].

mod append;
mod codec;
mod packet;
mod sql;

use sqlx::{Acquire, MySqlConnection};

use crate::names::Rules;
use crate::store::sealed;
use crate::{Dialect, Error, Result, SqlStore, StoreBuilder};

/// The MySQL dialect (cargo feature `mysql`), for MySQL 8.0.16 or later and
/// MariaDB 10.6 or later, on InnoDB.
#[derive(Debug, Clone, Copy)]
pub enum MySql {}

#[allow(private_interfaces)]
impl sealed::Dialect for MySql {
    const RULES: Rules = Rules {
        backend: "MySQL",
        quote: '`',
        max_schema: Some(64),
    };

    // Under InnoDB's default REPEATABLE READ, a transaction's plain reads
    // come from the snapshot its first read took: after locking an
    // aggregate it would still fold the events of that older snapshot, and
    // decide on stale state. Under READ COMMITTED each statement reads what
    // is committed when it runs, as on PostgreSQL. (The setting applies to
    // the next transaction only; both go in one round trip.)
    // MySQL has no timeout for a transaction left idle (MariaDB's
    // idle_transaction_timeout is its own): the session's wait_timeout
    // closes a connection idle for that long, in a transaction or not,
    // which rolls the transaction back and frees its locks. It stays set
    // on the pooled connection, whose pool replaces it when it is closed
    // while idle.
    fn lease_sql(lease: std::time::Duration) -> Option<String> {
        Some(format!(
            "SET SESSION wait_timeout = {}",
            lease.as_secs().clamp(1, 31_536_000)
        ))
    }

    // MariaDB's `json_valid`, which checks every JSON column, refuses
    // more (MySQL 8's stops at 100).
    const MAX_JSON_DEPTH: usize = crate::limits::MAX_JSON_DEPTH_MYSQL;

    const BEGIN_WRITE: Option<&'static str> =
        Some("SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION");

    type Own = Own;

    fn statements(names: &crate::names::Names) -> (crate::core::Statements, Own) {
        let (common, sql) = sql::statements(names);
        let server = ServerFacts::default();
        (common, Own { sql, server })
    }

    fn migrations(names: &crate::names::Names) -> Vec<(i64, &'static str, String)> {
        sql::migrations(names)
    }
}

impl Dialect for MySql {
    type Database = sqlx::MySql;
}

/// What a MySQL store keeps besides the statements every backend has.
// `pub`, unnameable outside the crate: the sealed `Dialect::Own` names it.
#[allow(unreachable_pub)]
#[derive(Debug)]
pub struct Own {
    /// The statements only MySQL runs.
    pub(crate) sql: sql::Sql,
    /// What the store learnt of its server.
    pub(crate) server: ServerFacts,
}

/// What a store reads from its server once, lazily, and keeps: 0 is
/// "not read yet".
#[derive(Debug, Default)]
pub(crate) struct ServerFacts {
    /// The session's `max_allowed_packet`, in bytes.
    pub(crate) max_packet: std::sync::atomic::AtomicU64,
    /// Which variable names the session's isolation level (1:
    /// `transaction_isolation`, MySQL 8 and MariaDB 11.1+; 2:
    /// `tx_isolation`, MariaDB before 11.1).
    pub(crate) isolation_variable: std::sync::atomic::AtomicU8,
}

/// The MySQL / MariaDB event store (cargo feature `mysql`): MySQL 8.0.16 or
/// later, MariaDB 10.6 or later (it uses `JSON_TABLE`, `SKIP LOCKED` and
/// `CHECK` constraints), on InnoDB. Cheap to clone; holds no connection.
///
/// It is the same [`SqlStore`] as `PostgresStore` and `SqliteStore`, with
/// the same behaviour and typed errors; the conformance suite in the
/// repository's `tests/` runs against all three.
///
/// ```no_run
/// use es_store::{AggregateStreamReader, Event, EventStore, ExpectedVersion, MySqlStore};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = sqlx::MySqlPool::connect("mysql://root@127.0.0.1:3306/test").await?;
/// let store = MySqlStore::new();
/// store.migrate(&pool).await?;
///
/// let mut tx = pool.begin().await?;
/// let opened = Event::new("Billing", "Account", "acc-1", "Opened", &serde_json::json!({"owner": "alice"}))?;
/// store.append(&mut *tx, ExpectedVersion::NoStream, vec![opened]).await?;
/// tx.commit().await?;
///
/// let mut conn = pool.acquire().await?;
/// let stream = store.read_aggregate_stream(&mut *conn, ("Billing", "Account", "acc-1"), ..).await?;
/// assert_eq!(stream.version(), 1);
/// # Ok(()) }
/// ```
///
/// # Schema
///
/// The same five tables as on PostgreSQL (names configurable, see
/// [`StoreBuilder`]; a schema is a MySQL database), plus a one-row
/// position counter, `<events>_position`, and 1024 aggregate lock rows,
/// `<events>_locks`. Names (bounded context,
/// aggregate type and id, event type, projection name) are stored as
/// bytes, `VARBINARY`, so that they compare exactly, as on the other
/// backends: MySQL's text collations pad with spaces (`'a' = 'a '`) or
/// ignore case, which would make two aggregates one. Ids are `BINARY(16)`,
/// JSON is text checked with `json_valid` (stored as given, like SQLite;
/// MySQL's `JSON` type would reorder keys), timestamps are `DATETIME(6)`
/// in UTC. [`MySqlStore::migrate`] creates them, tracking what it applied
/// in `_es_migrations`.
///
/// # Appending
///
/// An append runs in a savepoint of the caller's transaction (so a refused
/// append leaves it usable, as everywhere), or in a transaction of its own
/// on a connection with none. It is three or four statements:
///
/// 1. for `NoStream` and `Any`, which may create the head, the aggregate's
///    lock, a row of `<events>_locks` that always exists (see below);
/// 2. the head check, which moves the aggregate's head row:
///    `UPDATE .. WHERE version = expected` for `Exact`, a plain `INSERT`
///    for `NoStream` (a duplicate key is the conflict), either for `Any`;
/// 3. drawing positions from the counter, whose lock is held until
///    commit (see below);
/// 4. the insert of the batch, as multi-row `VALUES` (one statement per
///    1,000 events).
///
/// A reused event id is caught by its unique key; the savepoint is rolled
/// back and what is stored decides, as on the other backends, between
/// returning the original result (a retried batch) and
/// [`Error::EventIdConflict`].
///
/// A deadlock makes InnoDB roll back the *whole* transaction, not only the
/// statement. An append that was chosen as the deadlock's victim returns
/// [`Error::OptimisticConcurrency`] with `actual: None`: the caller's
/// transaction is gone and must run again, which is what the repository
/// does with conflicts.
///
#[doc = include_str!("gap_safety.md")]
///
/// # Connections
///
/// sqlx's MySQL connections set the session's time zone to UTC, which the
/// timestamps assume; keep it. Every input is checked before it is sent
/// (lengths within [`limits`](crate::limits), text without NUL), so
/// MySQL's non-strict SQL modes never get to truncate anything.
///
/// JSON may nest at most
/// [`limits::MAX_JSON_DEPTH_MYSQL`](crate::limits::MAX_JSON_DEPTH_MYSQL)
/// (31) levels, what MariaDB's `json_valid` accepts. Each statement that
/// carries JSON is measured against the server's `max_allowed_packet`
/// first: an event, snapshot or document too large for it is
/// [`Error::PacketTooLarge`](crate::Error::PacketTooLarge), and a batch
/// too large for one insert is split into inserts that fit. The limit is
/// read from the server once per store (not for statements under 1 KiB,
/// which fit every server), and again before refusing.
///
/// Sessions must not run at READ UNCOMMITTED to read the feed (see
/// above).
///
/// # Table names
///
/// ```
/// use es_store::MySqlStore;
///
/// let store = MySqlStore::builder().schema("billing").events_table("billing_events").build()?;
/// assert_eq!(store.events_table(), "`billing`.`billing_events`");
/// # Ok::<(), es_store::Error>(())
/// ```
///
/// [`Error::OptimisticConcurrency`]: crate::Error::OptimisticConcurrency
/// [`Error::EventIdConflict`]: crate::Error::EventIdConflict
pub type MySqlStore = SqlStore<MySql>;

/// Sets the database (schema) and table names of a [`MySqlStore`]: the
/// rules of [`StoreBuilder`], with MySQL's 64-character database names.
///
/// ```
/// use es_store::{Error, MySqlStoreBuilder};
///
/// let err = MySqlStoreBuilder::default().schema("x".repeat(65)).build().unwrap_err();
/// assert!(matches!(err, Error::InvalidIdentifier { what: "schema", .. }));
/// ```
pub type MySqlStoreBuilder = StoreBuilder<MySql>;

impl SqlStore<MySql> {
    /// Creates or upgrades the store's tables (and its database, if a
    /// schema is configured). Safe to call on every start and from several
    /// processes at once: runs take turns on a named lock (`GET_LOCK`, one
    /// per store; sqlx's own lock is not taken on MariaDB, which refuses its
    /// infinite timeout). MySQL commits each DDL statement by itself, so a
    /// migration is not atomic; one interrupted half-way is reported as
    /// dirty by the next run.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = sqlx::MySqlPool::connect("mysql://root@127.0.0.1:3306/test").await?;
    /// es_store::MySqlStore::new().migrate(&pool).await?;
    /// # Ok(()) }
    /// ```
    pub async fn migrate<'a, A>(&self, conn: A) -> Result<()>
    where
        A: Acquire<'a, Database = sqlx::MySql>,
    {
        let mut conn = conn.acquire().await?;
        let schema = self.names().schema.as_ref().map(|s| s.as_str().to_owned());
        let events = self.names().events.as_str().to_owned();
        // Lock names are limited to 64 characters; a shortened one only
        // makes unrelated stores take turns.
        let locked: Option<i64> = sqlx::query_scalar(
            "SELECT GET_LOCK(LEFT(CONCAT('es_migrate:', COALESCE(?, DATABASE()), '.', ?), 64), \
                 ?)",
        )
        .bind(&schema)
        .bind(&events)
        .bind(MIGRATION_LOCK_TIMEOUT_SECS)
        .fetch_one(&mut *conn)
        .await?;
        if locked != Some(1) {
            return Err(Error::Database(sqlx::Error::Protocol(format!(
                "could not take the migration lock of {} in {MIGRATION_LOCK_TIMEOUT_SECS} s",
                self.events_table()
            ))));
        }
        let mut migrator = self.migrator();
        migrator.set_locking(false);
        let ran = migrator
            .run_direct(None, &mut *conn, false)
            .await
            .map_err(Error::Migration);
        let released = sqlx::query(
            "SELECT RELEASE_LOCK(LEFT(CONCAT('es_migrate:', COALESCE(?, DATABASE()), '.', ?), 64))",
        )
        .bind(&schema)
        .bind(&events)
        .execute(&mut *conn)
        .await;
        ran?;
        released?;
        Ok(())
    }
}

/// How long a migration waits for another process's to finish.
const MIGRATION_LOCK_TIMEOUT_SECS: i64 = 3600;

crate::core::impl_store!(MySql, MySqlConnection, sqlx::mysql::MySqlRow);
