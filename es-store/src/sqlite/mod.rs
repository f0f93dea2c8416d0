//! The SQLite store, for running the framework without a server (cargo
//! feature `sqlite`). The user guide (connecting, the single writer,
//! claims, gap safety) is on [`SqliteStore`].

mod sql;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteRow};
use sqlx::types::Json;
use sqlx::{Acquire, AssertSqlSafe, Connection as _, Row, SqlSafeStr, Sqlite, SqliteConnection};
use uuid::Uuid;
use uuid::fmt::Hyphenated;

use crate::postgres::names::{Ident, MAX_TABLE_NAME, distinct_tables};
use crate::{
    AggregateStreamReader, AppendResult, Backend, CheckpointStore, Error, Event, EventFilter,
    EventIdConflictReason, EventPage, EventReader, EventStore, ExpectedVersion, PersistedEvent,
    ProjectionFailure, ProjectionStore, Result, Snapshot, SnapshotStore, StoredEvent, Stream,
    event, replay, stream_hash, validate,
};
use sql::{Names, Statements};

/// How long [`SqliteStore::connect_options`] lets a writer wait for the
/// write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The SQLite event store (cargo feature `sqlite`), for running the
/// framework without a server. Cheap to clone; holds no connection.
///
/// It implements the same traits as
/// [`PostgresStore`](crate::PostgresStore) with the same behaviour and the
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
/// let stream = store.read_aggregate_stream(&mut *conn, "Billing", "Account", "acc-1", None, None).await?;
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
/// [`SqliteStoreBuilder`]), as `STRICT` tables, with JSON stored as text
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
/// [`ProjectionStore::claim_checkpoint`] takes the write lock: that is what
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
/// never skips an event. [`EventReader::read_events`] reads the head
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
#[derive(Debug, Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    names: Names,
    sql: Statements,
}

impl Default for SqliteStore {
    fn default() -> Self {
        Self::new()
    }
}

impl SqliteStore {
    /// A store on the default tables `events`, `aggregate_heads`,
    /// `checkpoints`, `snapshots` and `projection_failures`.
    ///
    /// ```
    /// let store = es_store::SqliteStore::new();
    /// assert_eq!(store.events_table(), r#""events""#);
    /// ```
    pub fn new() -> Self {
        SqliteStoreBuilder::default()
            .build()
            .expect("the default names are valid identifiers")
    }

    /// Configures table names.
    ///
    /// ```
    /// let store = es_store::SqliteStore::builder().checkpoints_table("es_checkpoints").build()?;
    /// assert_eq!(store.checkpoints_table(), r#""es_checkpoints""#);
    /// # Ok::<(), es_store::Error>(())
    /// ```
    pub fn builder() -> SqliteStoreBuilder {
        SqliteStoreBuilder::default()
    }

    /// Connect options for a database file that suit the store: the file
    /// is created if missing, in WAL mode (readers and the writer do not
    /// block each other), with a busy timeout of 10 seconds (a writer waits
    /// for the write lock rather than failing). Adjust them further with
    /// sqlx's builder methods.
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

    /// The events table, quoted, for your own SQL.
    ///
    /// ```
    /// assert_eq!(es_store::SqliteStore::new().events_table(), r#""events""#);
    /// ```
    pub fn events_table(&self) -> String {
        self.inner.names.events()
    }

    /// The aggregate heads table, quoted.
    ///
    /// ```
    /// assert_eq!(es_store::SqliteStore::new().heads_table(), r#""aggregate_heads""#);
    /// ```
    pub fn heads_table(&self) -> String {
        self.inner.names.heads()
    }

    /// The checkpoints table, quoted.
    ///
    /// ```
    /// assert_eq!(es_store::SqliteStore::new().checkpoints_table(), r#""checkpoints""#);
    /// ```
    pub fn checkpoints_table(&self) -> String {
        self.inner.names.checkpoints()
    }

    /// The snapshots table, quoted.
    ///
    /// ```
    /// assert_eq!(es_store::SqliteStore::new().snapshots_table(), r#""snapshots""#);
    /// ```
    pub fn snapshots_table(&self) -> String {
        self.inner.names.snapshots()
    }

    /// The table of events projections skipped, quoted.
    ///
    /// ```
    /// assert_eq!(es_store::SqliteStore::new().failures_table(), r#""projection_failures""#);
    /// ```
    pub fn failures_table(&self) -> String {
        self.inner.names.failures()
    }

    /// The migrations for this store's names, as a sqlx
    /// [`Migrator`](sqlx::migrate::Migrator), tracked in their own table,
    /// `_es_migrations`, so they never collide with your application's
    /// migrations.
    ///
    /// ```
    /// let migrator = es_store::SqliteStore::new().migrator();
    /// assert_eq!(migrator.iter().next().unwrap().version, 1);
    /// ```
    pub fn migrator(&self) -> sqlx::migrate::Migrator {
        use sqlx::migrate::{Migration, MigrationType, Migrator};
        let names = &self.inner.names;
        let migrations = sql::migrations(names)
            .into_iter()
            .map(|(version, description, sql)| {
                Migration::new(
                    version,
                    description.into(),
                    MigrationType::Simple,
                    AssertSqlSafe(sql).into_sql_str(),
                    false,
                )
            })
            .collect();
        let mut migrator = Migrator::with_migrations(migrations);
        migrator.dangerous_set_table_name(names.migrations_table());
        migrator
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
        A: Acquire<'a, Database = Sqlite>,
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

    fn sql(&self) -> &Statements {
        &self.inner.sql
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

/// Sets the table names of a [`SqliteStore`].
///
/// Names follow the rules of
/// [`PostgresStoreBuilder`](crate::PostgresStoreBuilder) (ASCII letters,
/// digits and `_`, not starting with a digit, at most 40 bytes, distinct), so
/// one configuration works on both backends. They are always quoted in SQL.
/// SQLite has no schemas: use another database file instead.
///
/// ```
/// use es_store::{Error, SqliteStore};
///
/// let err = SqliteStore::builder().events_table("events; DROP TABLE x").build().unwrap_err();
/// assert!(matches!(err, Error::InvalidIdentifier { what: "events table", .. }));
/// ```
#[derive(Debug, Clone)]
pub struct SqliteStoreBuilder {
    events: String,
    heads: String,
    checkpoints: String,
    snapshots: String,
    failures: String,
}

impl Default for SqliteStoreBuilder {
    fn default() -> Self {
        Self {
            events: "events".to_owned(),
            heads: "aggregate_heads".to_owned(),
            checkpoints: "checkpoints".to_owned(),
            snapshots: "snapshots".to_owned(),
            failures: "projection_failures".to_owned(),
        }
    }
}

impl SqliteStoreBuilder {
    /// Names the events table (default `events`).
    pub fn events_table(mut self, name: impl Into<String>) -> Self {
        self.events = name.into();
        self
    }

    /// Names the aggregate heads table (default `aggregate_heads`).
    pub fn heads_table(mut self, name: impl Into<String>) -> Self {
        self.heads = name.into();
        self
    }

    /// Names the checkpoints table (default `checkpoints`).
    pub fn checkpoints_table(mut self, name: impl Into<String>) -> Self {
        self.checkpoints = name.into();
        self
    }

    /// Names the snapshots table (default `snapshots`).
    pub fn snapshots_table(mut self, name: impl Into<String>) -> Self {
        self.snapshots = name.into();
        self
    }

    /// Names the table of events projections skipped (default
    /// `projection_failures`).
    pub fn failures_table(mut self, name: impl Into<String>) -> Self {
        self.failures = name.into();
        self
    }

    /// Validates the names and renders the store's SQL.
    pub fn build(self) -> Result<SqliteStore> {
        let names = Names {
            events: Ident::new("events table", &self.events, MAX_TABLE_NAME)?,
            heads: Ident::new("heads table", &self.heads, MAX_TABLE_NAME)?,
            checkpoints: Ident::new("checkpoints table", &self.checkpoints, MAX_TABLE_NAME)?,
            snapshots: Ident::new("snapshots table", &self.snapshots, MAX_TABLE_NAME)?,
            failures: Ident::new("failures table", &self.failures, MAX_TABLE_NAME)?,
        };
        distinct_tables([
            &names.events,
            &names.heads,
            &names.checkpoints,
            &names.snapshots,
            &names.failures,
        ])?;
        let sql = Statements::new(&names);
        Ok(SqliteStore {
            inner: Arc::new(Inner { names, sql }),
        })
    }
}

impl Backend for SqliteStore {
    type Database = Sqlite;
}

/// SQLite's primary result code for "the database is locked"; its extended
/// codes (`SQLITE_BUSY_SNAPSHOT`, `SQLITE_BUSY_TIMEOUT`, ..) share the low
/// byte.
const SQLITE_BUSY: i32 = 5;

/// Whether SQLite refused to give this connection the write lock.
fn is_busy(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|db| db.code())
        .and_then(|code| code.parse::<i32>().ok())
        .is_some_and(|code| code & 0xff == SQLITE_BUSY)
}

/// How timestamps are stored: see the `NOW` default in `sql.rs`.
fn timestamp(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// A JSON array of the ids, for `json_each`.
fn id_list(events: &[Event]) -> Result<String> {
    let ids: Vec<Hyphenated> = events.iter().map(|e| e.event_id.hyphenated()).collect();
    serde_json::to_string(&ids).map_err(Error::Serialization)
}

/// One event of an append as the insert statement reads it from JSON: a
/// positional array (compact, and JSON text such as the payload travels as
/// a string, so it is stored exactly as given).
type BatchRow<'a> = (
    Hyphenated,
    &'a str,
    i32,
    &'a str,
    &'a str,
    Option<Hyphenated>,
    Option<Hyphenated>,
    Option<&'a str>,
    String,
);

fn batch(events: &[Event]) -> Result<String> {
    let rows: Vec<BatchRow<'_>> = events
        .iter()
        .map(|e| {
            (
                e.event_id.hyphenated(),
                e.event_type.as_str(),
                e.event_version,
                e.payload.get(),
                e.metadata.get(),
                e.correlation_id.map(Uuid::hyphenated),
                e.causation_id.map(Uuid::hyphenated),
                e.trace_id.as_deref(),
                timestamp(e.created_at),
            )
        })
        .collect();
    serde_json::to_string(&rows).map_err(Error::Serialization)
}

/// Whether two JSON texts hold the same value (as PostgreSQL's `jsonb`
/// equality: key order and whitespace do not matter).
fn same_json(a: &RawValue, b: &RawValue) -> Result<bool> {
    let parse = |raw: &RawValue| {
        serde_json::from_str::<serde_json::Value>(raw.get()).map_err(Error::Serialization)
    };
    Ok(parse(a)? == parse(b)?)
}

impl EventStore for SqliteStore {
    async fn append(
        &self,
        conn: &mut SqliteConnection,
        expected: ExpectedVersion,
        mut events: Vec<Event>,
    ) -> Result<AppendResult> {
        let expected = validate::append(expected, &mut events)?;
        let in_callers_transaction = conn.is_in_transaction();
        // A savepoint in the caller's transaction, or a transaction of our
        // own that takes the write lock before reading anything. Both are
        // sqlx transactions, so a cancelled append is rolled back before the
        // connection runs anything else.
        let begun = if in_callers_transaction {
            sqlx::Connection::begin(conn).await
        } else {
            conn.begin_with("BEGIN IMMEDIATE").await
        };
        let mut tx = begun.map_err(|e| self.append_error(e, &events[0], expected, false))?;
        match self
            .append_locked(&mut tx, expected, events, in_callers_transaction)
            .await
        {
            Ok(result) => {
                tx.commit().await?;
                Ok(result)
            }
            Err(error) => {
                if let Err(rollback) = tx.rollback().await {
                    tracing::warn!(%rollback, "could not roll back a failed append");
                }
                Err(error)
            }
        }
    }

    /// Takes the database's write lock (SQLite has no row locks), waiting
    /// for it up to the busy timeout.
    async fn lock_aggregate(
        &self,
        conn: &mut SqliteConnection,
        bounded_context: &str,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<i64> {
        validate::aggregate(bounded_context, aggregate_type, aggregate_id)?;
        let version: Option<i64> = sqlx::query_scalar(AssertSqlSafe(self.sql().lock_head.clone()))
            .bind(bounded_context)
            .bind(aggregate_type)
            .bind(aggregate_id)
            .fetch_optional(&mut *conn)
            .await?;
        Ok(version.unwrap_or(0))
    }
}

impl SqliteStore {
    /// The append, inside its savepoint or transaction.
    async fn append_locked(
        &self,
        conn: &mut SqliteConnection,
        expected: ExpectedVersion,
        events: Vec<Event>,
        in_callers_transaction: bool,
    ) -> Result<AppendResult> {
        let first = &events[0];
        let refused = |e| self.append_error(e, first, expected, in_callers_transaction);
        let ids = id_list(&events)?;
        let count = events.len() as i64;
        let sql = match expected {
            ExpectedVersion::NoStream => &self.sql().move_head_no_stream,
            ExpectedVersion::Any => &self.sql().move_head_any,
            ExpectedVersion::Exact(_) => &self.sql().move_head_exact,
        };
        let mut query = sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql.clone()))
            .bind(first.bounded_context.as_str())
            .bind(first.aggregate_type.as_str())
            .bind(first.aggregate_id.as_str())
            .bind(count)
            .bind(ids.as_str());
        if let ExpectedVersion::Exact(version) = expected {
            query = query.bind(version);
        }
        let base = query.fetch_optional(&mut *conn).await.map_err(refused)?;
        let Some(base) = base else {
            return self
                .resolve_refused_append(conn, expected, events, &ids)
                .await;
        };
        let mut rows: Vec<(i64, i64)> =
            sqlx::query_as(AssertSqlSafe(self.sql().insert_events.clone()))
                .bind(first.bounded_context.as_str())
                .bind(first.aggregate_type.as_str())
                .bind(first.aggregate_id.as_str())
                .bind(base)
                .bind(batch(&events)?)
                .bind(stream_hash(
                    &first.bounded_context,
                    &first.aggregate_type,
                    &first.aggregate_id,
                ))
                .fetch_all(&mut *conn)
                .await
                .map_err(refused)?;
        // RETURNING gives no order guarantee; versions follow batch order.
        rows.sort_unstable_by_key(|(_, version)| *version);
        let versions_match = rows.len() == events.len()
            && rows
                .iter()
                .enumerate()
                .all(|(i, (_, version))| *version == base + 1 + i as i64);
        if !versions_match {
            // Only possible if the statement were changed to skip rows.
            return Err(Error::Database(sqlx::Error::Protocol(format!(
                "append stored {} rows for {} events",
                rows.len(),
                events.len()
            ))));
        }
        let persisted = events
            .into_iter()
            .zip(rows)
            .map(|(event, (position, version))| PersistedEvent::new(event, version, position))
            .collect();
        Ok(AppendResult::new(persisted))
    }

    /// Maps a failed append statement to the store's errors.
    fn append_error(
        &self,
        error: sqlx::Error,
        first: &Event,
        expected: ExpectedVersion,
        in_callers_transaction: bool,
    ) -> Error {
        let conflict = || Error::OptimisticConcurrency {
            aggregate: first.aggregate().to_owned(),
            expected,
            actual: None,
        };
        // The caller's transaction read before this write and another
        // writer holds or moved the database: see the module docs.
        if in_callers_transaction && is_busy(&error) {
            return conflict();
        }
        let Some(db) = error.as_database_error() else {
            return Error::Database(error);
        };
        if !matches!(db.kind(), sqlx::error::ErrorKind::UniqueViolation) {
            return Error::Database(error);
        }
        // "UNIQUE constraint failed: <table>.<column>, .."
        let events = self.inner.names.events.as_str();
        let message = db.message();
        if message.ends_with(&format!("{events}.aggregate_version")) {
            conflict()
        } else if message.ends_with(&format!("{events}.event_id")) {
            Error::EventIdConflict {
                event_id: first.event_id,
                reason: EventIdConflictReason::StoredConcurrently,
            }
        } else {
            Error::Database(error)
        }
    }

    /// The head statement changed nothing: either the expected version did
    /// not match or some event ids are stored already. Decides which, under
    /// the write lock, and returns the stored result when the batch repeats
    /// one earlier append.
    async fn resolve_refused_append(
        &self,
        conn: &mut SqliteConnection,
        expected: ExpectedVersion,
        events: Vec<Event>,
        ids: &str,
    ) -> Result<AppendResult> {
        let rows = sqlx::query(AssertSqlSafe(self.sql().stored_ids.clone()))
            .bind(ids)
            .fetch_all(&mut *conn)
            .await?;
        let mut stored = Vec::with_capacity(rows.len());
        for row in &rows {
            let index: i64 = row.try_get(0)?;
            let persisted = decode_row(row, 1)?;
            let given = usize::try_from(index)
                .ok()
                .and_then(|i| events.get(i))
                .ok_or_else(|| {
                    Error::Database(sqlx::Error::Protocol(format!(
                        "json_each returned index {index} for a batch of {}",
                        events.len()
                    )))
                })?;
            let same_content = persisted.event_type == given.event_type
                && persisted.event_version == given.event_version
                && same_json(&persisted.payload, &given.payload)?;
            stored.push((persisted, same_content));
        }
        if !stored.is_empty() {
            return replay::stored_result(&events, stored);
        }
        let first = &events[0];
        let actual: Option<i64> =
            sqlx::query_scalar(AssertSqlSafe(self.sql().head_version.clone()))
                .bind(&first.bounded_context)
                .bind(&first.aggregate_type)
                .bind(&first.aggregate_id)
                .fetch_optional(&mut *conn)
                .await?;
        Err(Error::OptimisticConcurrency {
            aggregate: first.aggregate().to_owned(),
            expected,
            actual: Some(actual.unwrap_or(0)),
        })
    }
}

/// Decodes the event columns ([`sql::EVENT_COLUMNS`]) starting at `offset`.
fn decode_row(row: &SqliteRow, offset: usize) -> Result<PersistedEvent> {
    let column = |i: usize| offset + i;
    let payload: Json<&RawValue> = row.try_get(column(8))?;
    let metadata: Json<&RawValue> = row.try_get(column(9))?;
    let id = |i: usize| -> Result<Option<Uuid>> {
        Ok(row
            .try_get::<Option<Hyphenated>, _>(column(i))?
            .map(Hyphenated::into_uuid))
    };
    let event = Event {
        event_id: row.try_get::<Hyphenated, _>(column(2))?.into_uuid(),
        bounded_context: row.try_get(column(3))?,
        aggregate_type: row.try_get(column(4))?,
        aggregate_id: row.try_get(column(5))?,
        event_type: row.try_get(column(6))?,
        event_version: row.try_get(column(7))?,
        payload: payload.0.to_owned(),
        metadata: metadata.0.to_owned(),
        correlation_id: id(10)?,
        causation_id: id(11)?,
        trace_id: row.try_get(column(12))?,
        created_at: row.try_get(column(13))?,
    };
    Ok(PersistedEvent::new(
        event,
        row.try_get(column(1))?,
        row.try_get(column(0))?,
    ))
}

impl AggregateStreamReader for SqliteStore {
    async fn read_aggregate_stream(
        &self,
        conn: &mut SqliteConnection,
        bounded_context: &str,
        aggregate_type: &str,
        aggregate_id: &str,
        from_version: Option<i64>,
        to_version: Option<i64>,
    ) -> Result<Stream> {
        validate::aggregate(bounded_context, aggregate_type, aggregate_id)?;
        let (from, to) = validate::version_range(from_version, to_version)?;
        let rows = sqlx::query(AssertSqlSafe(self.sql().read_stream.clone()))
            .bind(bounded_context)
            .bind(aggregate_type)
            .bind(aggregate_id)
            .bind(from)
            .bind(to)
            .fetch_all(&mut *conn)
            .await?;
        let events = rows
            .iter()
            .map(|row| decode_row(row, 0))
            .collect::<Result<_>>()?;
        Ok(Stream::new(
            bounded_context,
            aggregate_type,
            aggregate_id,
            events,
        ))
    }

    /// Reads four columns instead of fourteen and lends each row's text to
    /// `visit` without copying it (the payload is parsed once, by the
    /// visitor; the table's `json_valid` check vouches for it).
    async fn fold_aggregate_stream<F, E>(
        &self,
        conn: &mut SqliteConnection,
        bounded_context: &str,
        aggregate_type: &str,
        aggregate_id: &str,
        from_version: Option<i64>,
        to_version: Option<i64>,
        mut visit: F,
    ) -> std::result::Result<u64, E>
    where
        F: FnMut(StoredEvent<'_>) -> std::result::Result<(), E> + Send,
        E: From<Error> + Send,
    {
        validate::aggregate(bounded_context, aggregate_type, aggregate_id)?;
        let (from, to) = validate::version_range(from_version, to_version)?;
        let rows = sqlx::query(AssertSqlSafe(self.sql().fold_stream.clone()))
            .bind(bounded_context)
            .bind(aggregate_type)
            .bind(aggregate_id)
            .bind(from)
            .bind(to)
            .fetch_all(&mut *conn)
            .await
            .map_err(Error::from)?;
        for row in &rows {
            visit(StoredEvent {
                aggregate_version: row.try_get(0).map_err(Error::from)?,
                event_type: row.try_get(1).map_err(Error::from)?,
                event_version: row.try_get(2).map_err(Error::from)?,
                payload: row.try_get(3).map_err(Error::from)?,
            })?;
        }
        Ok(rows.len() as u64)
    }
}

/// A filter list as a JSON array for `json_each`, or `None` (no
/// restriction) when it is empty.
fn filter_list(names: &[String]) -> Result<Option<String>> {
    if names.is_empty() {
        return Ok(None);
    }
    serde_json::to_string(names)
        .map(Some)
        .map_err(Error::Serialization)
}

impl EventReader for SqliteStore {
    async fn read_events(
        &self,
        conn: &mut SqliteConnection,
        from_position: i64,
        limit: i64,
    ) -> Result<Vec<PersistedEvent>> {
        let page = self
            .read_filtered(conn, from_position, limit, &EventFilter::all())
            .await?;
        Ok(page.events)
    }

    async fn read_filtered(
        &self,
        conn: &mut SqliteConnection,
        from_position: i64,
        limit: i64,
        filter: &EventFilter,
    ) -> Result<EventPage> {
        validate::page(from_position, limit)?;
        filter.validate()?;
        // The head first, then the events up to it: see "Gap-safe global
        // reads" in the module docs.
        let head = self.head_position(conn).await?;
        if head <= from_position {
            return Ok(EventPage {
                events: Vec::new(),
                scanned_to: from_position,
            });
        }
        let (count, index) = filter
            .partition_of()
            .map_or((1, 0), |p| (i64::from(p.count()), i64::from(p.index())));
        let rows = sqlx::query(AssertSqlSafe(self.sql().read_events.clone()))
            .bind(from_position)
            .bind(head)
            .bind(limit)
            .bind(filter_list(filter.bounded_contexts())?)
            .bind(filter_list(filter.aggregate_types())?)
            .bind(count)
            .bind(index)
            .fetch_all(&mut *conn)
            .await?;
        let events: Vec<PersistedEvent> = rows
            .iter()
            .map(|row| decode_row(row, 0))
            .collect::<Result<_>>()?;
        let scanned_to = match events.last() {
            Some(last) if events.len() as i64 == limit => last.global_position,
            _ => head,
        };
        Ok(EventPage { events, scanned_to })
    }
}

impl CheckpointStore for SqliteStore {
    async fn get_checkpoint(
        &self,
        conn: &mut SqliteConnection,
        projection_name: &str,
    ) -> Result<i64> {
        validate::projection_name(projection_name)?;
        let position: Option<i64> =
            sqlx::query_scalar(AssertSqlSafe(self.sql().get_checkpoint.clone()))
                .bind(projection_name)
                .fetch_optional(&mut *conn)
                .await?;
        Ok(position.unwrap_or(0))
    }

    async fn update_checkpoint(
        &self,
        conn: &mut SqliteConnection,
        projection_name: &str,
        position: i64,
    ) -> Result<()> {
        validate::projection_name(projection_name)?;
        validate::position(position)?;
        sqlx::query(AssertSqlSafe(self.sql().update_checkpoint.clone()))
            .bind(projection_name)
            .bind(position)
            .bind(timestamp(event::now()))
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}

impl SnapshotStore for SqliteStore {
    async fn load_snapshot(
        &self,
        conn: &mut SqliteConnection,
        bounded_context: &str,
        aggregate_type: &str,
        aggregate_id: &str,
        max_version: Option<i64>,
    ) -> Result<Option<Snapshot>> {
        validate::aggregate(bounded_context, aggregate_type, aggregate_id)?;
        let (_, max) = validate::version_range(None, max_version)?;
        let row = sqlx::query(AssertSqlSafe(self.sql().load_snapshot.clone()))
            .bind(bounded_context)
            .bind(aggregate_type)
            .bind(aggregate_id)
            .bind(max)
            .fetch_optional(&mut *conn)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let state: Json<&RawValue> = row.try_get(2)?;
        let mut snapshot = Snapshot::from_raw(
            bounded_context,
            aggregate_type,
            aggregate_id,
            row.try_get(0)?,
            row.try_get(1)?,
            state.0.to_owned(),
        );
        snapshot.created_at = row.try_get(3)?;
        Ok(Some(snapshot))
    }

    async fn save_snapshot(&self, conn: &mut SqliteConnection, snapshot: &Snapshot) -> Result<()> {
        validate::snapshot(snapshot)?;
        sqlx::query(AssertSqlSafe(self.sql().save_snapshot.clone()))
            .bind(&snapshot.bounded_context)
            .bind(&snapshot.aggregate_type)
            .bind(&snapshot.aggregate_id)
            .bind(snapshot.version)
            .bind(snapshot.schema_version)
            .bind(snapshot.state.get())
            .bind(timestamp(snapshot.created_at))
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}

impl ProjectionStore for SqliteStore {
    async fn claim_checkpoint(
        &self,
        conn: &mut SqliteConnection,
        projection_name: &str,
    ) -> Result<Option<i64>> {
        validate::projection_name(projection_name)?;
        // Taking the write lock is the claim (see the module docs); the
        // statement also creates a missing checkpoint at 0.
        let created = sqlx::query(AssertSqlSafe(self.sql().create_checkpoint.clone()))
            .bind(projection_name)
            .bind(timestamp(event::now()))
            .execute(&mut *conn)
            .await;
        match created {
            Ok(_) => {}
            Err(error) if is_busy(&error) => return Ok(None),
            Err(error) => return Err(error.into()),
        }
        let position: i64 = sqlx::query_scalar(AssertSqlSafe(self.sql().get_checkpoint.clone()))
            .bind(projection_name)
            .fetch_one(&mut *conn)
            .await?;
        Ok(Some(position))
    }

    async fn record_failure(
        &self,
        conn: &mut SqliteConnection,
        projection_name: &str,
        event: &PersistedEvent,
        error: &str,
    ) -> Result<()> {
        validate::projection_name(projection_name)?;
        sqlx::query(AssertSqlSafe(self.sql().record_failure.clone()))
            .bind(projection_name)
            .bind(event.global_position)
            .bind(event.event_id.hyphenated())
            .bind(&event.event_type)
            .bind(error)
            .bind(timestamp(event::now()))
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    async fn failures(
        &self,
        conn: &mut SqliteConnection,
        projection_name: &str,
    ) -> Result<Vec<ProjectionFailure>> {
        validate::projection_name(projection_name)?;
        let rows = sqlx::query(AssertSqlSafe(self.sql().list_failures.clone()))
            .bind(projection_name)
            .fetch_all(&mut *conn)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(ProjectionFailure {
                    global_position: row.try_get(0)?,
                    event_id: row.try_get::<Hyphenated, _>(1)?.into_uuid(),
                    event_type: row.try_get(2)?,
                    error: row.try_get(3)?,
                    failed_at: row.try_get(4)?,
                })
            })
            .collect()
    }

    async fn head_position(&self, conn: &mut SqliteConnection) -> Result<i64> {
        Ok(
            sqlx::query_scalar(AssertSqlSafe(self.sql().head_position.clone()))
                .fetch_one(&mut *conn)
                .await?,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_fixed_width_and_round_trip() {
        let at = event::now();
        let text = timestamp(at);
        assert_eq!(text.len(), "2024-05-01T12:00:00.000000Z".len(), "{text}");
        assert_eq!(DateTime::parse_from_rfc3339(&text).unwrap(), at);
    }

    #[test]
    fn json_equality_ignores_key_order_and_whitespace() {
        let raw = |s: &str| RawValue::from_string(s.to_owned()).unwrap();
        assert!(same_json(&raw(r#"{"a":1,"b":[2]}"#), &raw(r#"{ "b": [2], "a": 1 }"#)).unwrap());
        assert!(!same_json(&raw(r#"{"a":1}"#), &raw(r#"{"a":2}"#)).unwrap());
    }
}
