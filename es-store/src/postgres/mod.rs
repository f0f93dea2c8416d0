//! The PostgreSQL store.
//!
//! # Schema
//!
//! Three tables (names configurable, see [`PostgresStoreBuilder`]): the events,
//! one head row per aggregate holding its current version, and projection
//! checkpoints. [`PostgresStore::migrate`] creates them; the same SQL for the
//! default names is in the repository's `migrations/` folder for sqlx-cli
//! users (see the README).
//!
//! # Appending
//!
//! An append is one statement, one round trip, whatever the batch size: the
//! events travel as one array per column (so the bind-parameter limit never
//! applies), and a chain of CTEs checks the expected version against the head
//! row while moving it, then inserts the batch. The head row lock serializes
//! appends to one aggregate and nothing else.
//!
//! # Gap-safe global reads
//!
//! Positions come from a sequence, so they are handed out in the order
//! appends *draw* them, not the order they *commit*. A reader that took
//! "everything committed up to the highest committed position" would skip
//! an event drawn earlier by a transaction that commits later. Approaches
//! compared:
//!
//! - *Serialize appends* with one global lock held to commit: correct and
//!   simple, but every append in the database waits for the previous
//!   transaction to finish, including whatever else that transaction does.
//! - *Transaction ids* (`xid8` column, read below `pg_snapshot_xmin`): safe
//!   for visibility, but the feed must then be ordered by transaction id,
//!   and a transaction that got its id early (because it wrote elsewhere
//!   first) and appends to an aggregate after a younger transaction did
//!   would put version 2 before version 1 in the feed.
//! - *High-water mark with a timeout*: skips a slow transaction's events if
//!   it outlives the timeout.
//! - *In-flight positions advertised through advisory locks*, the approach
//!   used here. It costs the appender one shared advisory lock per
//!   transaction (never contended: shared locks do not conflict) and the
//!   reader one extra small statement per page.
//!
//! The protocol. An appending transaction, before it draws its first
//! position, reads the sequence's current value `v` and takes a
//! transaction-level shared advisory lock on `(tag, v)` (the tag identifies
//! this store's events table, see below). All its positions are above `v`. The lock is
//! released when the transaction ends, after its commit became visible. A
//! reader first reads the sequence's current value `a`, then the smallest
//! `v` among the locks held (`pg_locks`), and then, in a later statement
//! (so with a newer snapshot), reads events up to `min(a, v)`.
//!
//! Why no event is skipped: take any event at position `p <= min(a, v)`. It
//! was drawn before the reader read `a`, so its transaction had locked
//! `(tag, v')` with `v' < p` before that. If the transaction still held the
//! lock when the reader looked, `min(a, v) <= v' < p`: contradiction. So it
//! had ended before, its outcome is in the reader's later snapshot, and the
//! event is either read or rolled back. A transaction that locks after the
//! reader looked draws positions above `a`. Holes left by rolled-back
//! transactions and by losing writers (a failed head check draws nothing)
//! hold no lock, so they never stall a reader; only transactions still
//! running do. Each aggregate's events reach the feed in version order
//! because positions are drawn while the head row is locked.
//!
//! The reader needs a fresh snapshot per statement, so
//! [`EventReader::read_events`] refuses to run in a REPEATABLE READ or
//! SERIALIZABLE transaction ([`Error::UnsupportedIsolation`]); and it needs
//! to see the appenders' locks, so it refuses to run on a standby
//! ([`Error::ReadOnStandby`]), which sees none.
//!
//! The tag is derived from the sequence's OID, so each events table has its
//! own, even when several are reached through the search path; and a
//! transaction that appends to several stores takes a lock in each (the
//! transaction-local setting that spares the later appends of a transaction
//! a lock records which sequence it was for).

pub(crate) mod names;
mod sql;

use std::sync::Arc;

use futures_util::TryStreamExt;
use serde_json::value::RawValue;
use sqlx::postgres::{PgDatabaseError, PgRow};
use sqlx::types::Json;
use sqlx::{Acquire, AssertSqlSafe, PgConnection, Postgres, Row, SqlSafeStr};
use uuid::Uuid;

use crate::{
    AggregateStreamReader, AppendResult, Backend, CheckpointStore, Error, Event, EventFilter,
    EventIdConflictReason, EventPage, EventReader, EventStore, ExpectedVersion, PersistedEvent,
    ProjectionFailure, ProjectionStore, Result, Snapshot, SnapshotStore, StoredEvent, Stream,
    replay, stream_hash, validate,
};
use names::{Ident, MAX_SCHEMA_NAME, MAX_TABLE_NAME, Names, distinct_tables};
use sql::Statements;

/// The PostgreSQL event store. Cheap to clone; holds no connection.
///
/// ```
/// use es_store::PostgresStore;
///
/// let store = PostgresStore::builder().schema("billing").events_table("billing_events").build()?;
/// assert_eq!(store.events_table(), r#""billing"."billing_events""#);
/// # Ok::<(), es_store::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    names: Names,
    sql: Statements,
}

impl Default for PostgresStore {
    fn default() -> Self {
        Self::new()
    }
}

impl PostgresStore {
    /// A store on the default tables `events`, `aggregate_heads` and
    /// `checkpoints`, in the connection's current schema (the search path).
    ///
    /// ```
    /// let store = es_store::PostgresStore::new();
    /// assert_eq!(store.events_table(), r#""events""#);
    /// ```
    pub fn new() -> Self {
        PostgresStoreBuilder::default()
            .build()
            .expect("the default names are valid identifiers")
    }

    /// Configures schema and table names.
    ///
    /// ```
    /// let store = es_store::PostgresStore::builder().schema("es").build()?;
    /// assert_eq!(store.checkpoints_table(), r#""es"."checkpoints""#);
    /// # Ok::<(), es_store::Error>(())
    /// ```
    pub fn builder() -> PostgresStoreBuilder {
        PostgresStoreBuilder::default()
    }

    /// The events table, quoted and qualified, for your own SQL.
    ///
    /// ```
    /// assert_eq!(es_store::PostgresStore::new().events_table(), r#""events""#);
    /// ```
    pub fn events_table(&self) -> String {
        self.inner.names.events()
    }

    /// The aggregate heads table, quoted and qualified.
    ///
    /// ```
    /// assert_eq!(es_store::PostgresStore::new().heads_table(), r#""aggregate_heads""#);
    /// ```
    pub fn heads_table(&self) -> String {
        self.inner.names.heads()
    }

    /// The checkpoints table, quoted and qualified.
    ///
    /// ```
    /// assert_eq!(es_store::PostgresStore::new().checkpoints_table(), r#""checkpoints""#);
    /// ```
    pub fn checkpoints_table(&self) -> String {
        self.inner.names.checkpoints()
    }

    /// The snapshots table, quoted and qualified.
    ///
    /// ```
    /// assert_eq!(es_store::PostgresStore::new().snapshots_table(), r#""snapshots""#);
    /// ```
    pub fn snapshots_table(&self) -> String {
        self.inner.names.snapshots()
    }

    /// The table of events projections skipped, quoted and qualified.
    ///
    /// ```
    /// assert_eq!(es_store::PostgresStore::new().failures_table(), r#""projection_failures""#);
    /// ```
    pub fn failures_table(&self) -> String {
        self.inner.names.failures()
    }

    /// The channel appends notify (see
    /// [`PostgresStoreBuilder::notify_on_append`]): `LISTEN` to it to hear of
    /// new events. The same for every process using the same events table.
    ///
    /// ```
    /// let store = es_store::PostgresStore::new();
    /// assert!(store.notification_channel().starts_with("es_appended_"));
    /// ```
    pub fn notification_channel(&self) -> String {
        self.inner.names.channel()
    }

    /// Records the connection `conn` as listening to
    /// [`notification_channel`](Self::notification_channel), for
    /// 30 seconds: appends notify only while someone listens. A listener
    /// calls it after `LISTEN` and then at least every 10 seconds (the
    /// projection `Notifier` does).
    ///
    /// ```no_run
    /// # async fn demo(mut conn: sqlx::PgConnection) -> Result<(), es_store::Error> {
    /// let store = es_store::PostgresStore::new();
    /// sqlx::query(sqlx::AssertSqlSafe(format!("LISTEN \"{}\"", store.notification_channel())))
    ///     .execute(&mut conn)
    ///     .await?;
    /// store.register_listener(&mut conn).await?;
    /// # Ok(()) }
    /// ```
    pub async fn register_listener(&self, conn: &mut PgConnection) -> Result<()> {
        sqlx::query(AssertSqlSafe(self.sql().register_listener.clone()))
            .bind(self.notification_channel())
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// The configured schema, if any.
    ///
    /// ```
    /// let store = es_store::PostgresStore::builder().schema("es").build()?;
    /// assert_eq!(store.schema(), Some("es"));
    /// # Ok::<(), es_store::Error>(())
    /// ```
    pub fn schema(&self) -> Option<&str> {
        self.inner.names.schema.as_ref().map(Ident::as_str)
    }

    /// The migrations for this store's names, as a sqlx [`Migrator`](sqlx::migrate::Migrator).
    ///
    /// They are tracked in their own table, `_es_migrations` in the store's
    /// schema, so they never collide with your application's migrations.
    ///
    /// ```
    /// let migrator = es_store::PostgresStore::new().migrator();
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
        if let Some(schema) = &names.schema {
            migrator.create_schema(format!("\"{}\"", schema.as_str()));
        }
        migrator
    }

    /// Creates or upgrades the store's tables (and its schema, if one is
    /// configured). Safe to call on every start and from several processes
    /// at once.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1/test").await?;
    /// let store = es_store::PostgresStore::new();
    /// store.migrate(&pool).await?;
    /// # Ok(()) }
    /// ```
    pub async fn migrate<'a, A>(&self, conn: A) -> Result<()>
    where
        A: Acquire<'a, Database = Postgres>,
    {
        self.migrator().run(conn).await.map_err(Error::Migration)
    }

    fn sql(&self) -> &Statements {
        &self.inner.sql
    }
}

/// Sets the schema and table names of a [`PostgresStore`].
///
/// Names must be plain identifiers (ASCII letters, digits, `_`, not starting
/// with a digit); they are always quoted in SQL, so case is kept. Table names
/// are limited to 40 bytes because the store derives sequence and constraint
/// names from the events table name.
///
/// ```
/// use es_store::{Error, PostgresStore};
///
/// let err = PostgresStore::builder().events_table("events; DROP TABLE x").build().unwrap_err();
/// assert!(matches!(err, Error::InvalidIdentifier { what: "events table", .. }));
/// ```
#[derive(Debug, Clone)]
pub struct PostgresStoreBuilder {
    schema: Option<String>,
    events: String,
    heads: String,
    checkpoints: String,
    snapshots: String,
    failures: String,
    notify: bool,
}

impl Default for PostgresStoreBuilder {
    fn default() -> Self {
        Self {
            schema: None,
            events: "events".to_owned(),
            heads: "aggregate_heads".to_owned(),
            checkpoints: "checkpoints".to_owned(),
            snapshots: "snapshots".to_owned(),
            failures: "projection_failures".to_owned(),
            notify: true,
        }
    }
}

impl PostgresStoreBuilder {
    /// Puts every table in this schema (created by `migrate` if missing).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

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

    /// Whether appending transactions send a notification on
    /// [`PostgresStore::notification_channel`] (default: yes) while a
    /// listener is registered (see [`PostgresStore::register_listener`]),
    /// which live projection processors use. PostgreSQL serializes the
    /// commits of notifying transactions in a database, so nothing is sent
    /// while nobody listens; turn it off altogether to never pay for it
    /// (processors then find new events by polling).
    pub fn notify_on_append(mut self, notify: bool) -> Self {
        self.notify = notify;
        self
    }

    /// Validates the names and renders the store's SQL.
    pub fn build(self) -> Result<PostgresStore> {
        let names = Names {
            schema: self
                .schema
                .map(|s| Ident::new("schema", &s, MAX_SCHEMA_NAME))
                .transpose()?,
            events: Ident::new("events table", &self.events, MAX_TABLE_NAME)?,
            heads: Ident::new("heads table", &self.heads, MAX_TABLE_NAME)?,
            checkpoints: Ident::new("checkpoints table", &self.checkpoints, MAX_TABLE_NAME)?,
            snapshots: Ident::new("snapshots table", &self.snapshots, MAX_TABLE_NAME)?,
            failures: Ident::new("failures table", &self.failures, MAX_TABLE_NAME)?,
            notify: self.notify,
        };
        distinct_tables([
            &names.events,
            &names.heads,
            &names.checkpoints,
            &names.snapshots,
            &names.failures,
        ])?;
        let sql = Statements::new(&names);
        Ok(PostgresStore {
            inner: Arc::new(Inner { names, sql }),
        })
    }
}

impl Backend for PostgresStore {
    type Database = Postgres;
}

/// The event columns of an append, one array each. A column that is the
/// same for every event and is what the table stores when given nothing
/// (empty metadata, no correlation id, ...) is sent as `NULL` instead of an
/// array: `unnest` pads it with `NULL`s, and the statement puts the default
/// back. Most batches carry no tracing ids, and there is no point in
/// sending, and parsing, a hundred `{}`.
struct Columns<'a> {
    ids: Vec<Uuid>,
    types: Vec<&'a str>,
    versions: Vec<i32>,
    payloads: Vec<Json<&'a RawValue>>,
    metadata: Option<Vec<Json<&'a RawValue>>>,
    correlation_ids: Option<Vec<Option<Uuid>>>,
    causation_ids: Option<Vec<Option<Uuid>>>,
    trace_ids: Option<Vec<Option<&'a str>>>,
    created_at: Vec<chrono::DateTime<chrono::Utc>>,
}

impl<'a> Columns<'a> {
    fn new(events: &'a [Event]) -> Self {
        /// The column, unless no event has a value in it.
        fn unless_all<'e, T>(
            events: &'e [Event],
            value: impl Fn(&'e Event) -> T,
            empty: impl Fn(&T) -> bool,
        ) -> Option<Vec<T>> {
            if events.iter().all(|e| empty(&value(e))) {
                None
            } else {
                Some(events.iter().map(value).collect())
            }
        }
        Columns {
            ids: events.iter().map(|e| e.event_id).collect(),
            types: events.iter().map(|e| e.event_type.as_str()).collect(),
            versions: events.iter().map(|e| e.event_version).collect(),
            payloads: events.iter().map(|e| Json(&*e.payload)).collect(),
            metadata: unless_all(events, |e| Json(&*e.metadata), |m| m.0.get() == "{}"),
            correlation_ids: unless_all(events, |e| e.correlation_id, Option::is_none),
            causation_ids: unless_all(events, |e| e.causation_id, Option::is_none),
            trace_ids: unless_all(events, |e| e.trace_id.as_deref(), Option::is_none),
            created_at: events.iter().map(|e| e.created_at).collect(),
        }
    }
}

impl EventStore for PostgresStore {
    async fn append(
        &self,
        conn: &mut PgConnection,
        expected: ExpectedVersion,
        mut events: Vec<Event>,
    ) -> Result<AppendResult> {
        let expected = validate::append(expected, &mut events)?;
        let count = events.len() as i64;
        let rows = {
            let first = &events[0];
            let columns = Columns::new(&events);
            let sql = match expected {
                ExpectedVersion::NoStream => &self.sql().append_no_stream,
                ExpectedVersion::Any => &self.sql().append_any,
                ExpectedVersion::Exact(_) => &self.sql().append_exact,
            };
            let mut query = sqlx::query(AssertSqlSafe(sql.clone()))
                .bind(first.bounded_context.as_str())
                .bind(first.aggregate_type.as_str())
                .bind(first.aggregate_id.as_str())
                .bind(count)
                .bind(&columns.ids)
                .bind(&columns.types)
                .bind(&columns.versions)
                .bind(&columns.payloads)
                .bind(&columns.metadata)
                .bind(&columns.correlation_ids)
                .bind(&columns.causation_ids)
                .bind(&columns.trace_ids)
                .bind(&columns.created_at);
            query = query.bind(stream_hash(
                &first.bounded_context,
                &first.aggregate_type,
                &first.aggregate_id,
            ));
            if let ExpectedVersion::Exact(version) = expected {
                query = query.bind(version);
            }
            query.fetch_all(&mut *conn).await
        };
        let rows = match rows {
            Ok(rows) => rows,
            Err(error) => match self.append_error(error, &events[0], expected) {
                // An id is stored already: outside a transaction, look at
                // what is stored to say what differs (or to return the
                // stored result, when the batch repeats it).
                Error::EventIdConflict { event_id, .. } => {
                    return match self.stored_events(conn, &events).await {
                        Ok(stored) if !stored.is_empty() => replay::stored_result(&events, stored),
                        // The transaction is aborted: nothing can be read.
                        _ => Err(Error::EventIdConflict {
                            event_id,
                            reason: EventIdConflictReason::Unverified,
                        }),
                    };
                }
                other => return Err(other),
            },
        };
        if rows.is_empty() {
            return self.resolve_refused_append(conn, expected, events).await;
        }
        if rows.len() != events.len() {
            // Only possible if the statement were changed to skip rows.
            return Err(Error::Database(sqlx::Error::Protocol(format!(
                "append stored {} rows for {} events",
                rows.len(),
                events.len()
            ))));
        }
        // Rows come back in insertion order; pairing them by version does
        // not depend on it.
        let mut stored = rows
            .iter()
            .map(|row| Ok((row.try_get::<i64, _>(1)?, row.try_get::<i64, _>(0)?)))
            .collect::<Result<Vec<_>>>()?;
        stored.sort_unstable();
        let mut persisted = Vec::with_capacity(events.len());
        for (event, (version, position)) in events.into_iter().zip(stored) {
            persisted.push(PersistedEvent::new(event, version, position));
        }
        Ok(AppendResult::new(persisted))
    }

    async fn lock_aggregate(
        &self,
        conn: &mut PgConnection,
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

impl PostgresStore {
    /// Maps a failed append statement to the store's errors.
    fn append_error(&self, error: sqlx::Error, first: &Event, expected: ExpectedVersion) -> Error {
        let Some(db) = error.as_database_error() else {
            return Error::Database(error);
        };
        if db.code().as_deref() != Some("23505") {
            return Error::Database(error);
        }
        let names = &self.inner.names;
        match db.constraint() {
            Some(c) if c == names.stream_version_constraint() => Error::OptimisticConcurrency {
                aggregate: first.aggregate().to_owned(),
                expected,
                actual: None,
            },
            Some(c) if c == names.event_id_constraint() => {
                let event_id = db
                    .try_downcast_ref::<PgDatabaseError>()
                    .and_then(|pg| pg.detail())
                    .and_then(parse_key_detail)
                    .unwrap_or(first.event_id);
                Error::EventIdConflict {
                    event_id,
                    reason: EventIdConflictReason::StoredConcurrently,
                }
            }
            _ => Error::Database(error),
        }
    }

    /// The append statement stored nothing: either the expected version did
    /// not match or some event ids are stored already. Decides which, and
    /// returns the stored result when the batch repeats one earlier append.
    /// The stored events whose ids the batch uses, in batch order, each
    /// with whether its type, schema version and payload equal the batch's.
    async fn stored_events(
        &self,
        conn: &mut PgConnection,
        events: &[Event],
    ) -> Result<Vec<(PersistedEvent, bool)>> {
        let columns = Columns::new(events);
        sqlx::query(AssertSqlSafe(self.sql().stored_ids.clone()))
            .bind(&columns.ids)
            .bind(&columns.types)
            .bind(&columns.versions)
            .bind(&columns.payloads)
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|row| {
                Ok((
                    decode_row(row)?,
                    row.try_get::<bool, _>(EVENT_COLUMN_COUNT)?,
                ))
            })
            .collect()
    }

    async fn resolve_refused_append(
        &self,
        conn: &mut PgConnection,
        expected: ExpectedVersion,
        events: Vec<Event>,
    ) -> Result<AppendResult> {
        let stored = self.stored_events(conn, &events).await?;
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

/// The JSON text of a `jsonb` value in PostgreSQL's binary format: a
/// version byte (1), then the text.
fn jsonb_text(bytes: &[u8]) -> Result<&str> {
    match bytes.split_first() {
        Some((1, text)) => {
            std::str::from_utf8(text).map_err(|e| Error::Database(sqlx::Error::Decode(Box::new(e))))
        }
        _ => Err(Error::Database(sqlx::Error::Decode(
            "unsupported jsonb format version".into(),
        ))),
    }
}

/// The event id in a unique-violation detail: `Key (event_id)=(<uuid>) already exists.`
fn parse_key_detail(detail: &str) -> Option<Uuid> {
    let start = detail.find(")=(")? + 3;
    let end = start + detail[start..].find(')')?;
    detail[start..end].parse().ok()
}

/// How many columns [`sql::EVENT_COLUMNS`] lists.
const EVENT_COLUMN_COUNT: usize = 14;

/// Decodes a row selected with [`sql::EVENT_COLUMNS`].
fn decode_row(row: &PgRow) -> Result<PersistedEvent> {
    let payload: Json<&RawValue> = row.try_get(8)?;
    let metadata: Json<&RawValue> = row.try_get(9)?;
    let event = Event {
        event_id: row.try_get(2)?,
        bounded_context: row.try_get(3)?,
        aggregate_type: row.try_get(4)?,
        aggregate_id: row.try_get(5)?,
        event_type: row.try_get(6)?,
        event_version: row.try_get(7)?,
        payload: payload.0.to_owned(),
        metadata: metadata.0.to_owned(),
        correlation_id: row.try_get(10)?,
        causation_id: row.try_get(11)?,
        trace_id: row.try_get(12)?,
        created_at: row.try_get(13)?,
    };
    Ok(PersistedEvent::new(event, row.try_get(1)?, row.try_get(0)?))
}

impl AggregateStreamReader for PostgresStore {
    async fn read_aggregate_stream(
        &self,
        conn: &mut PgConnection,
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
        let events = rows.iter().map(decode_row).collect::<Result<_>>()?;
        Ok(Stream::new(
            bounded_context,
            aggregate_type,
            aggregate_id,
            events,
        ))
    }

    /// Reads four columns instead of fourteen and lends each row's text to
    /// `visit` as it is on the wire: no copy, and the payload is parsed
    /// once, by the visitor.
    async fn fold_aggregate_stream<F, E>(
        &self,
        conn: &mut PgConnection,
        bounded_context: &str,
        aggregate_type: &str,
        aggregate_id: &str,
        from_version: Option<i64>,
        to_version: Option<i64>,
        visit: F,
    ) -> std::result::Result<u64, E>
    where
        F: FnMut(StoredEvent<'_>) -> std::result::Result<(), E> + Send,
        E: From<Error> + Send,
    {
        validate::aggregate(bounded_context, aggregate_type, aggregate_id)?;
        let (from, to) = validate::version_range(from_version, to_version)?;
        let query = sqlx::query(AssertSqlSafe(self.sql().fold_stream.clone()))
            .bind(bounded_context)
            .bind(aggregate_type)
            .bind(aggregate_id)
            .bind(from)
            .bind(to);
        visit_rows(query.fetch(&mut *conn), visit).await
    }

    /// One round trip: a function locks the head row, then reads the
    /// events in a statement of its own, whose snapshot is taken after the
    /// lock was granted (see migration 6).
    async fn lock_and_fold_aggregate_stream<F, E>(
        &self,
        conn: &mut PgConnection,
        bounded_context: &str,
        aggregate_type: &str,
        aggregate_id: &str,
        from_version: Option<i64>,
        visit: F,
    ) -> std::result::Result<u64, E>
    where
        F: FnMut(StoredEvent<'_>) -> std::result::Result<(), E> + Send,
        E: From<Error> + Send,
    {
        validate::aggregate(bounded_context, aggregate_type, aggregate_id)?;
        let (from, _) = validate::version_range(from_version, None)?;
        let query = sqlx::query(AssertSqlSafe(self.sql().locked_tail.clone()))
            .bind(bounded_context)
            .bind(aggregate_type)
            .bind(aggregate_id)
            .bind(from);
        visit_rows(query.fetch(&mut *conn), visit).await
    }
}

/// Visits rows of (aggregate_version, event_type, event_version, payload)
/// as they arrive, not gathered first.
async fn visit_rows<F, E>(
    mut rows: impl futures_util::Stream<Item = std::result::Result<PgRow, sqlx::Error>> + Unpin,
    mut visit: F,
) -> std::result::Result<u64, E>
where
    F: FnMut(StoredEvent<'_>) -> std::result::Result<(), E>,
    E: From<Error>,
{
    let mut visited = 0;
    while let Some(row) = rows.try_next().await.map_err(Error::from)? {
        // The column types are those of our own queries, so the per-value
        // type checks are skipped.
        visit(StoredEvent {
            aggregate_version: row.try_get_unchecked(0).map_err(Error::from)?,
            event_type: row.try_get_unchecked(1).map_err(Error::from)?,
            event_version: row.try_get_unchecked(2).map_err(Error::from)?,
            payload: jsonb_text(row.try_get_unchecked(3).map_err(Error::from)?)?,
        })?;
        visited += 1;
    }
    Ok(visited)
}

impl PostgresStore {
    /// The highest position below which no event can still commit: events
    /// up to it that are not visible now never will be.
    ///
    /// ```no_run
    /// # async fn demo(mut conn: sqlx::PgConnection) -> Result<(), es_store::Error> {
    /// let store = es_store::PostgresStore::new();
    /// let safe = store.safe_position(&mut conn).await?;
    /// # Ok(()) }
    /// ```
    pub async fn safe_position(&self, conn: &mut PgConnection) -> Result<i64> {
        let row = sqlx::query(AssertSqlSafe(self.sql().read_horizon.clone()))
            .fetch_one(&mut *conn)
            .await?;
        let allocated: i64 = row.try_get(0)?;
        let in_flight: Option<i64> = row.try_get(1)?;
        let isolation: String = row.try_get(2)?;
        if isolation != "read committed" {
            return Err(Error::UnsupportedIsolation { level: isolation });
        }
        if row.try_get::<bool, _>(3)? {
            return Err(Error::ReadOnStandby);
        }
        Ok(in_flight.map_or(allocated, |v| v.min(allocated)))
    }
}

impl EventReader for PostgresStore {
    async fn read_events(
        &self,
        conn: &mut PgConnection,
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
        conn: &mut PgConnection,
        from_position: i64,
        limit: i64,
        filter: &EventFilter,
    ) -> Result<EventPage> {
        validate::page(from_position, limit)?;
        filter.validate()?;
        let safe = self.safe_position(conn).await?;
        if safe <= from_position {
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
            .bind(safe)
            .bind(limit)
            .bind(filter.bounded_contexts())
            .bind(filter.aggregate_types())
            .bind(count)
            .bind(index)
            .fetch_all(&mut *conn)
            .await?;
        let events: Vec<PersistedEvent> = rows.iter().map(decode_row).collect::<Result<_>>()?;
        let scanned_to = match events.last() {
            Some(last) if events.len() as i64 == limit => last.global_position,
            _ => safe,
        };
        Ok(EventPage { events, scanned_to })
    }
}

impl CheckpointStore for PostgresStore {
    async fn get_checkpoint(&self, conn: &mut PgConnection, projection_name: &str) -> Result<i64> {
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
        conn: &mut PgConnection,
        projection_name: &str,
        position: i64,
    ) -> Result<()> {
        validate::projection_name(projection_name)?;
        validate::position(position)?;
        sqlx::query(AssertSqlSafe(self.sql().update_checkpoint.clone()))
            .bind(projection_name)
            .bind(position)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}

impl SnapshotStore for PostgresStore {
    async fn load_snapshot(
        &self,
        conn: &mut PgConnection,
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

    async fn save_snapshot(&self, conn: &mut PgConnection, snapshot: &Snapshot) -> Result<()> {
        validate::snapshot(snapshot)?;
        sqlx::query(AssertSqlSafe(self.sql().save_snapshot.clone()))
            .bind(&snapshot.bounded_context)
            .bind(&snapshot.aggregate_type)
            .bind(&snapshot.aggregate_id)
            .bind(snapshot.version)
            .bind(snapshot.schema_version)
            .bind(Json(&*snapshot.state))
            .bind(snapshot.created_at)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}

impl ProjectionStore for PostgresStore {
    async fn claim_checkpoint(
        &self,
        conn: &mut PgConnection,
        projection_name: &str,
    ) -> Result<Option<i64>> {
        validate::projection_name(projection_name)?;
        let claimed: Option<i64> =
            sqlx::query_scalar(AssertSqlSafe(self.sql().claim_checkpoint.clone()))
                .bind(projection_name)
                .fetch_optional(&mut *conn)
                .await?;
        if claimed.is_some() {
            return Ok(claimed);
        }
        // Held by someone else, or absent. Only an absent one is created:
        // inserting over a row another transaction has updated would wait
        // for that transaction. (A row this transaction inserts is locked by
        // it.)
        let exists: bool = sqlx::query_scalar(AssertSqlSafe(self.sql().checkpoint_exists.clone()))
            .bind(projection_name)
            .fetch_one(&mut *conn)
            .await?;
        if exists {
            return Ok(None);
        }
        Ok(
            sqlx::query_scalar(AssertSqlSafe(self.sql().create_checkpoint.clone()))
                .bind(projection_name)
                .fetch_optional(&mut *conn)
                .await?,
        )
    }

    async fn record_failure(
        &self,
        conn: &mut PgConnection,
        projection_name: &str,
        event: &PersistedEvent,
        error: &str,
    ) -> Result<()> {
        validate::projection_name(projection_name)?;
        sqlx::query(AssertSqlSafe(self.sql().record_failure.clone()))
            .bind(projection_name)
            .bind(event.global_position)
            .bind(event.event_id)
            .bind(&event.event_type)
            .bind(error)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    async fn failures(
        &self,
        conn: &mut PgConnection,
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
                    event_id: row.try_get(1)?,
                    event_type: row.try_get(2)?,
                    error: row.try_get(3)?,
                    failed_at: row.try_get(4)?,
                })
            })
            .collect()
    }

    async fn relax_commit_durability(&self, conn: &mut PgConnection) -> Result<()> {
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    async fn head_position(&self, conn: &mut PgConnection) -> Result<i64> {
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
    fn event_column_count_matches_the_column_list() {
        assert_eq!(sql::EVENT_COLUMNS.split(", ").count(), EVENT_COLUMN_COUNT);
    }

    #[test]
    fn parses_unique_violation_detail() {
        let id = Uuid::now_v7();
        assert_eq!(
            parse_key_detail(&format!("Key (event_id)=({id}) already exists.")),
            Some(id)
        );
        assert_eq!(parse_key_detail("nonsense"), None);
    }

    /// The files in `migrations/` (for sqlx-cli users) must be what the
    /// default store applies. `ES_BLESS=1 cargo test -p es-store` rewrites them.
    #[test]
    fn migration_files_match_the_default_store() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
        for (version, description, sql) in sql::migrations(&PostgresStore::new().inner.names) {
            let path = dir.join(format!(
                "{version:04}_{}.sql",
                description.replace(' ', "_")
            ));
            if std::env::var_os("ES_BLESS").is_some() {
                std::fs::write(&path, &sql).unwrap();
            }
            let file = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(
                file,
                sql,
                "{} differs from what the default store renders",
                path.display()
            );
        }
    }
}
