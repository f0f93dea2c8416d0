//! The SQLite backend (cargo feature `sqlite`), for running the framework
//! without a server. The user guide (connecting, the single writer,
//! claims, gap safety) is on [`SqliteStore`].

mod append;
mod codec;
mod sql;

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use sqlx::{Acquire, Connection as _, SqliteConnection};

use crate::names::Rules;
use crate::store::sealed;
use crate::{Dialect, Error, Result, SqlStore, StoreBuilder};

/// How long [`SqliteStore::connect_options`] lets a writer wait for the
/// write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The SQLite dialect (cargo feature `sqlite`).
#[derive(Debug, Clone, Copy)]
pub enum Sqlite {}

#[allow(private_interfaces)]
impl sealed::Dialect for Sqlite {
    const RULES: Rules = Rules {
        backend: "SQLite",
        quote: '"',
        max_schema: None,
    };

    // A deferred transaction that reads first cannot take the write lock
    // later if another writer committed since its read began (SQLITE_BUSY
    // at once, whatever the busy timeout): a writing transaction takes the
    // lock when it begins, and waits for it.
    const BEGIN_WRITE: Option<&'static str> = Some("BEGIN IMMEDIATE");

    type Own = sql::Sql;

    fn statements(names: &crate::names::Names) -> (crate::core::Statements, sql::Sql) {
        sql::statements(names)
    }

    fn migrations(names: &crate::names::Names) -> Vec<(i64, &'static str, String)> {
        sql::migrations(names)
    }
}

impl Dialect for Sqlite {
    type Database = sqlx::Sqlite;
}

/// The SQLite event store (cargo feature `sqlite`), for running the
/// framework without a server. Cheap to clone; holds no connection.
///
/// It is the same [`SqlStore`] as
/// `PostgresStore`, with the same behaviour and the
/// same typed errors, so the repository and projections run on it
/// unchanged; the conformance suite in the repository's `tests/` runs
/// against both. What differs is how concurrency is achieved, because SQLite
/// has a single writer per database.
///
/// ```no_run
/// use es_store::{AggregateStreamReader, Event, EventStore, ExpectedVersion, SqliteStore};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = sqlx::SqlitePool::connect_with(SqliteStore::connect_options("events.db")).await?;
/// let store = SqliteStore::new();
/// store.migrate(&pool).await?;
///
/// let mut conn = pool.acquire().await?;
/// let opened = Event::new("Billing", "Account", "acc-1", "Opened", &serde_json::json!({"owner": "alice"}))?;
/// store.append(&mut *conn, ExpectedVersion::NoStream, vec![opened]).await?;
/// let stream = store.read_aggregate_stream(&mut *conn, ("Billing", "Account", "acc-1"), ..).await?;
/// assert_eq!(stream.version(), 1);
/// # Ok(()) }
/// ```
///
/// # Connecting
///
/// Use [`SqliteStore::connect_options`]: a database file (created if
/// missing) in WAL mode, so that readers never block the writer nor the
/// writer the readers, with a busy timeout of 10 seconds, so that a writer
/// waits for the write lock instead of failing with "database is locked".
/// Each pooled connection opens the file on its own, so an in-memory
/// database (`sqlite::memory:`) would give every connection a database of
/// its own: use a file, even a temporary one.
///
/// # Schema
///
/// The same five tables as on PostgreSQL (names configurable, see
/// [`StoreBuilder`]), as `STRICT` tables, with JSON stored as text
/// and checked with `json_valid`, ids as hyphenated text and timestamps as
/// RFC 3339 text with six fractional digits. [`SqliteStore::migrate`]
/// creates them, tracking what it applied in `_es_migrations`.
///
/// # One writer, and what it means for transactions
///
/// SQLite lets one transaction write at a time: the first statement that
/// writes takes the database's write lock, which is held until the
/// transaction ends. Other writers wait for it, up to the busy timeout.
/// Every method takes the connection to run on, as on PostgreSQL:
///
/// - **A pooled connection** (no transaction). An append opens its own
///   transaction with `BEGIN IMMEDIATE`, which waits for the write lock
///   before anything is read, so the version check, the duplicate check and
///   the insert all see the latest data and nothing can come in between.
///   This is how the repository's `execute` runs: the append is atomic on
///   its own.
/// - **A transaction from sqlx** (`pool.begin()`, `conn.begin()`,
///   `begin_with(..)`). An append runs in a savepoint of it, so a refused
///   append (a conflict, a reused id) leaves the transaction usable. sqlx's
///   `begin()` sends a *deferred* `BEGIN`, which takes no lock: if the
///   append is the transaction's first write and nothing was read before,
///   it waits for the write lock like above. But SQLite cannot wait when a
///   transaction that has *read* wants to start writing (its snapshot would
///   be stale by the time the lock is free): it refuses at once with
///   `SQLITE_BUSY` when another transaction holds the lock, or
///   `SQLITE_BUSY_SNAPSHOT` when another transaction committed since the
///   read. Either way the transaction's reads may be out of date, so the
///   append fails with [`Error::OptimisticConcurrency`] (with `actual:
///   None`), like any other lost race: roll back and run the whole
///   transaction again, or start it with
///   `pool.begin_with("BEGIN IMMEDIATE")` to take the write lock first and
///   never lose this way.
///
/// Transactions must be started through sqlx (`begin`, `begin_with`), not
/// with a `BEGIN` sent as a query: the store asks sqlx whether the
/// connection is in a transaction.
///
/// An append on a pooled connection that waits longer than the busy
/// timeout gets [`Error::Database`] with SQLite's "database is locked":
/// a transaction held the write lock that long, which is not a race to
/// retry. In a caller's transaction every refusal of the lock is the
/// conflict above, since that transaction has to run again either way.
///
/// Checkpoints, snapshots and skipped-event records are single statements:
/// on a pooled connection they wait for the lock; inside a transaction the
/// rule above applies and a refusal is [`Error::Database`].
///
/// Appends to a database are serialized, whatever the aggregate: the
/// throughput is that of one writer, while PostgreSQL appends to different
/// aggregates in parallel.
///
/// # Checkpoint claims
///
/// [`ProjectionStore::claim_checkpoint`](crate::ProjectionStore::claim_checkpoint) takes the write lock: that is what
/// makes the claim exclusive until the transaction ends, and SQLite has no
/// finer lock. A second claimant therefore *waits* (up to the busy timeout)
/// instead of being told `None` at once, and gets the checkpoint as the
/// first holder committed it. It gets `None` when the lock cannot be had:
/// after the busy timeout, or at once when its transaction read before
/// claiming while another transaction writes. While a processor holds a
/// claim, every other writer (appends included) waits for it; keep
/// projection transactions short.
///
/// # Gap-safe global reads
///
/// On PostgreSQL, positions are drawn from a sequence by concurrent
/// transactions and can commit out of order, which is why its reader needs
/// a horizon. On SQLite they cannot: a transaction draws positions only
/// while it holds the write lock, each position is above every position
/// committed before (`AUTOINCREMENT`), and the lock is held until the
/// transaction commits or rolls back. So if position `q` was drawn after position `p`, `p`'s
/// transaction had already ended when `q`'s began writing: commits happen
/// in position order. Every snapshot therefore holds a prefix of the
/// committed feed, and a reader that goes on from the last position it saw
/// never skips an event. [`EventReader::read_events`](crate::EventReader::read_events) reads the head
/// position first and then the events up to it, so a page and its
/// `scanned_to` describe the same prefix even on a connection with no
/// transaction (where the two statements see different snapshots).
/// Positions of a rolled-back transaction are reused by the next writer,
/// which is harmless: nobody saw them. Reads take no lock and never wait
/// for writers, and any isolation works (SQLite's transactions are
/// serializable), so there is no
/// [`Error::UnsupportedIsolation`](crate::Error::UnsupportedIsolation) here.
///
/// # Table names
///
/// ```
/// use es_store::SqliteStore;
///
/// let store = SqliteStore::builder().events_table("billing_events").build()?;
/// assert_eq!(store.events_table(), r#""billing_events""#);
/// # Ok::<(), es_store::Error>(())
/// ```
///
/// [`Error::OptimisticConcurrency`]: crate::Error::OptimisticConcurrency
/// [`Error::Database`]: crate::Error::Database
pub type SqliteStore = SqlStore<Sqlite>;

/// Sets the table names of a [`SqliteStore`]: the rules of
/// [`StoreBuilder`], so one configuration works on every backend. SQLite
/// has no schemas: use another database file instead.
///
/// ```
/// use es_store::{Error, SqliteStore};
///
/// let err = SqliteStore::builder().events_table("events; DROP TABLE x").build().unwrap_err();
/// assert!(matches!(err, Error::InvalidIdentifier { what: "events table", .. }));
/// let err = SqliteStore::builder().schema("es").build().unwrap_err();
/// assert!(matches!(err, Error::InvalidIdentifier { what: "schema", .. }));
/// ```
pub type SqliteStoreBuilder = StoreBuilder<Sqlite>;

impl SqlStore<Sqlite> {
    /// Connect options for a database file that suit the store: the file
    /// is created if missing, in WAL mode (readers and the writer do not
    /// block each other), with a busy timeout of 10 seconds (a writer waits
    /// for the write lock rather than failing). Adjust them further with
    /// sqlx's builder methods.
    ///
    /// Several processes opening a new file at the same moment: the switch
    /// to WAL takes a lock SQLite cannot wait for, so another process's
    /// open may be refused with `database is locked` (a transient
    /// [`Error`](crate::Error)) while one switches it; open again. Once
    /// the file is in WAL mode (the first open), opens never wait.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), sqlx::Error> {
    /// use es_store::SqliteStore;
    ///
    /// let options = SqliteStore::connect_options("events.db")
    ///     .busy_timeout(std::time::Duration::from_secs(30));
    /// let pool = sqlx::sqlite::SqlitePoolOptions::new()
    ///     .max_connections(8)
    ///     .connect_with(options)
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn connect_options(path: impl AsRef<Path>) -> SqliteConnectOptions {
        SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(BUSY_TIMEOUT)
    }

    /// Creates or upgrades the store's tables. Safe to call on every start
    /// and from several processes at once: it runs in one `BEGIN
    /// IMMEDIATE` transaction, so concurrent migrations take turns (sqlx's
    /// SQLite migrator takes no lock of its own). On a connection already in
    /// a transaction, it runs in that transaction.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use es_store::SqliteStore;
    ///
    /// let pool = sqlx::SqlitePool::connect_with(SqliteStore::connect_options("events.db")).await?;
    /// SqliteStore::new().migrate(&pool).await?;
    /// # Ok(()) }
    /// ```
    pub async fn migrate<'a, A>(&self, conn: A) -> Result<()>
    where
        A: Acquire<'a, Database = sqlx::Sqlite>,
    {
        let mut conn = conn.acquire().await?;
        let migrator = self.migrator();
        if conn.is_in_transaction() {
            return run_migrations(&migrator, &mut conn).await;
        }
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        run_migrations(&migrator, &mut tx).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Runs `migrator` on one connection, through `Migrator::run_direct`:
/// `Migrator::run` on a `&mut SqliteConnection` makes the caller's future
/// fail the compiler's `Send` check ("implementation of `Acquire` is not
/// general enough"), the problem sqlx keeps `run_direct` public for.
async fn run_migrations(
    migrator: &sqlx::migrate::Migrator,
    conn: &mut SqliteConnection,
) -> Result<()> {
    migrator
        .run_direct(None, conn, false)
        .await
        .map_err(Error::Migration)
}

crate::core::impl_store!(Sqlite, SqliteConnection, sqlx::sqlite::SqliteRow);
