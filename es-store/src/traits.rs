//! The store API, one trait per capability, as in the seed package.
//!
//! Every method takes the connection to run on, so the caller owns the
//! transaction: pass `&mut *tx` for a [`sqlx::Transaction`] or `&mut *conn`
//! for a pooled connection.

use std::future::Future;
use std::ops::{RangeBounds, RangeFrom};

use crate::{
    AppendResult, AsAggregateRef, Event, EventFilter, EventPage, ExpectedVersion, PersistedEvent,
    ProjectionVersion, Result, Snapshot, Stream, VersionState,
};

/// What every backend names: the sqlx database it runs on.
///
/// A store implements the capability traits below for one database; generic
/// code (the repository, projection processors) uses [`Connection`] to name
/// the connection type.
///
/// ```
/// use es_store::{Backend, PostgresStore};
/// fn database_name<B: Backend>() -> &'static str { std::any::type_name::<B::Database>() }
/// assert!(database_name::<PostgresStore>().contains("Postgres"));
/// ```
pub trait Backend: Send + Sync + 'static {
    /// The sqlx database driver.
    type Database: sqlx::Database;
}

/// The connection type a backend's methods run on.
pub type Connection<B> = <<B as Backend>::Database as sqlx::Database>::Connection;

/// Appends events.
///
/// ```no_run
/// use es_store::{Event, EventStore, ExpectedVersion, PostgresStore};
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), es_store::Error> {
/// let store = PostgresStore::new();
/// let mut tx = pool.begin().await?;
/// let event = Event::new("Billing", "Account", "acc-1", "Opened", &serde_json::json!({"owner": "alice"}))?;
/// let result = store.append(&mut *tx, ExpectedVersion::NoStream, vec![event]).await?;
/// tx.commit().await?;
/// assert_eq!(result.to_version(), 1);
/// # Ok(()) }
/// ```
pub trait EventStore: Backend {
    /// Atomically appends one or more events of one aggregate instance.
    ///
    /// The store reads the aggregate's current version from its head row
    /// (O(1)), checks `expected` against it, gives the events consecutive
    /// versions from current + 1, and moves the head. A failed check is
    /// [`Error::OptimisticConcurrency`](crate::Error::OptimisticConcurrency);
    /// the unique constraint on (aggregate, version) is the last safety net
    /// and maps to the same error.
    ///
    /// Appending a batch whose event ids are all stored already, as the same
    /// events of the same aggregate in the same order, returns the stored
    /// result instead of writing again: retrying an append whose outcome was
    /// lost is safe. Reusing an id for anything else is
    /// [`Error::EventIdConflict`](crate::Error::EventIdConflict), saying
    /// what differs; on PostgreSQL, when the reuse is caught by the unique
    /// constraint inside the caller's transaction (under `NoStream` or
    /// `Exact(n)`), that transaction is aborted and the reason is
    /// [`Unverified`](crate::EventIdConflictReason::Unverified).
    ///
    /// Invalid input (no events, empty names, events of several aggregates,
    /// negative expected version, schema version below 1, an id twice in the
    /// batch) is refused before anything is sent.
    fn append(
        &self,
        conn: &mut Connection<Self>,
        expected: ExpectedVersion,
        events: Vec<Event>,
    ) -> impl Future<Output = Result<AppendResult>> + Send;

    /// Makes every other append to the aggregate wait until the caller's
    /// transaction ends, and returns the aggregate's version (0 if it has
    /// no events yet). Call it first in a transaction: it is how a command
    /// that lost an optimistic-concurrency race is retried without racing
    /// again. (An aggregate that does not exist yet cannot be locked; its
    /// creation stays optimistic.)
    ///
    /// `aggregate` names the aggregate instance: a tuple of its bounded
    /// context, type and id, an [`AggregateKey`](crate::AggregateKey) or an
    /// [`AggregateRef`](crate::AggregateRef) (see [`AsAggregateRef`]).
    ///
    /// ```no_run
    /// use es_store::{EventStore, PostgresStore};
    /// # async fn demo(pool: sqlx::PgPool) -> Result<(), es_store::Error> {
    /// let store = PostgresStore::new();
    /// let mut tx = pool.begin().await?;
    /// let version = store.lock_aggregate(&mut *tx, ("Billing", "Account", "acc-1")).await?;
    /// // ... read, decide and append with ExpectedVersion::Exact(version) ...
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    fn lock_aggregate(
        &self,
        conn: &mut Connection<Self>,
        aggregate: impl AsAggregateRef + Send,
    ) -> impl Future<Output = Result<i64>> + Send;

    /// The stored events among `ids`, in the order of `ids`; ids that are
    /// not stored are left out. One statement, on the unique index of
    /// event ids: it is how a writer whose append's outcome was lost finds
    /// out whether it was stored.
    ///
    /// ```no_run
    /// use es_store::{EventStore, PostgresStore};
    /// # async fn demo(pool: sqlx::PgPool, id: uuid::Uuid) -> Result<(), es_store::Error> {
    /// let store = PostgresStore::new();
    /// let mut conn = pool.acquire().await?;
    /// let found = store.events_by_id(&mut *conn, &[id]).await?;
    /// if let Some(event) = found.first() {
    ///     println!("stored at version {} of {}", event.aggregate_version, event.aggregate());
    /// }
    /// # Ok(()) }
    /// ```
    fn events_by_id(
        &self,
        conn: &mut Connection<Self>,
        ids: &[uuid::Uuid],
    ) -> impl Future<Output = Result<Vec<PersistedEvent>>> + Send;

    /// Tells this process's followers of the feed (projection processors
    /// in [`run`](https://docs.rs/es-aggregate), through
    /// [`EventReader::committed_appends`]) that appends were committed. An
    /// append on a connection outside a transaction commits by itself and
    /// signals by itself; after committing a transaction of your own that
    /// appended, call this, or the followers in this process see the events
    /// at their next poll. (The repository and units of work do.)
    ///
    /// ```
    /// use es_store::{EventReader, EventStore, PostgresStore};
    /// let store = PostgresStore::new();
    /// let mut appended = store.committed_appends();
    /// store.notify_committed();
    /// assert!(appended.has_changed().unwrap());
    /// ```
    fn notify_committed(&self);

    /// The statement that begins a transaction which reads and then
    /// writes, on this backend; `None` when the driver's plain `BEGIN` is
    /// right (PostgreSQL). SQLite: `BEGIN IMMEDIATE`, which takes the write
    /// lock up front and waits for it (a deferred transaction that read
    /// first fails at once with `SQLITE_BUSY` when another writer committed
    /// since). MySQL: `READ COMMITTED` first, so that a read after locking
    /// an aggregate sees what the previous holder committed.
    ///
    /// ```
    /// use es_store::{EventStore, PostgresStore};
    /// assert_eq!(PostgresStore::new().begin_write_sql(), None);
    /// # #[cfg(feature = "sqlite")]
    /// assert_eq!(es_store::SqliteStore::new().begin_write_sql(), Some("BEGIN IMMEDIATE"));
    /// ```
    fn begin_write_sql(&self) -> Option<&'static str>;

    /// Takes a connection from `pool` and begins a transaction on it that
    /// is going to read and then write (load an aggregate, decide,
    /// append), the way the backend needs it
    /// ([`EventStore::begin_write_sql`]); like `pool.begin()`, and when the
    /// pool times out, the error says why, as [`acquire`](crate::acquire)'s
    /// does. A plain `begin()` is right for a transaction that writes
    /// first.
    ///
    /// ```no_run
    /// use es_store::{EventStore, PostgresStore};
    /// # async fn demo(pool: sqlx::PgPool) -> Result<(), es_store::Error> {
    /// let store = PostgresStore::new();
    /// let mut tx = store.begin_write(&pool).await?;
    /// let version = store.lock_aggregate(&mut *tx, ("Billing", "Account", "acc-1")).await?;
    /// // ... read, decide, append with ExpectedVersion::Exact(version) ...
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    fn begin_write(
        &self,
        pool: &sqlx::Pool<Self::Database>,
    ) -> impl Future<Output = Result<sqlx::Transaction<'static, Self::Database>>> + Send {
        let statement = self.begin_write_sql();
        let pool = pool.clone();
        async move {
            let begun = match statement {
                Some(statement) => pool.begin_with(statement).await,
                None => pool.begin().await,
            };
            match begun {
                Ok(tx) => Ok(tx),
                Err(sqlx::Error::PoolTimedOut) => Err(crate::pool::timed_out(&pool).await),
                Err(error) => Err(error.into()),
            }
        }
    }
}

/// Reads one aggregate instance's events.
///
/// The aggregate is named by one value, any [`AsAggregateRef`]: a tuple
/// `(bounded_context, aggregate_type, aggregate_id)`, an
/// [`AggregateKey`](crate::AggregateKey) or an
/// [`AggregateRef`](crate::AggregateRef). The versions to read
/// are a range: `..` for all of them, `5..` from version 5 on, `5..=10` or
/// `5..11` for 5 to 10.
///
/// A range bound below 0 is
/// [`Error::NegativeVersion`](crate::Error::NegativeVersion), and a range
/// with no version in it, empty (`3..3`) or inverted (`5..=3`), is
/// [`Error::InvalidVersionRange`](crate::Error::InvalidVersionRange) with
/// its inclusive bounds (`3..3` is from 3 to 2); both are refused before
/// anything is sent.
///
/// ```no_run
/// use es_store::{AggregateStreamReader, PostgresStore};
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), es_store::Error> {
/// let store = PostgresStore::new();
/// let mut conn = pool.acquire().await?;
/// // versions 5 to 10, both included
/// let stream = store.read_aggregate_stream(&mut *conn, ("Billing", "Account", "acc-1"), 5..=10).await?;
/// for event in &stream.events {
///     println!("{} {}", event.aggregate_version, event.event_type);
/// }
/// # Ok(()) }
/// ```
pub trait AggregateStreamReader: Backend {
    /// Reads the events of `aggregate` whose versions are in `versions`, in
    /// version order. No match is an empty stream, not an error.
    fn read_aggregate_stream(
        &self,
        conn: &mut Connection<Self>,
        aggregate: impl AsAggregateRef + Send,
        versions: impl RangeBounds<i64> + Send,
    ) -> impl Future<Output = Result<Stream>> + Send;

    /// Calls `visit` for each event of `aggregate` whose version is in
    /// `versions`, in version order, with the event's fields borrowed from
    /// the row being read: the fast path for folding, which builds no
    /// [`PersistedEvent`](crate::PersistedEvent). Stops at the first error
    /// `visit` returns. Returns how many events were visited.
    ///
    /// The default reads the [`Stream`] and visits its events; backends
    /// override it to read only the columns a fold needs.
    ///
    /// ```no_run
    /// use es_store::{AggregateKey, AggregateStreamReader, PostgresStore};
    /// # async fn demo(mut conn: sqlx::PgConnection) -> Result<(), es_store::Error> {
    /// let store = PostgresStore::new();
    /// let account = AggregateKey::new("Billing", "Account", "acc-1");
    /// let mut deposited = 0;
    /// store
    ///     .fold_aggregate_stream(&mut conn, &account, .., |event| {
    ///         if event.event_type == "Deposited" {
    ///             deposited += 1;
    ///         }
    ///         Ok::<(), es_store::Error>(())
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    fn fold_aggregate_stream<F, E>(
        &self,
        conn: &mut Connection<Self>,
        aggregate: impl AsAggregateRef + Send,
        versions: impl RangeBounds<i64> + Send,
        mut visit: F,
    ) -> impl Future<Output = std::result::Result<u64, E>> + Send
    where
        F: FnMut(StoredEvent<'_>) -> std::result::Result<(), E> + Send,
        E: From<crate::Error> + Send,
        Self: Sized,
    {
        async move {
            let stream = self
                .read_aggregate_stream(conn, aggregate, versions)
                .await?;
            for event in &stream.events {
                visit(StoredEvent {
                    aggregate_version: event.aggregate_version,
                    event_type: &event.event_type,
                    event_version: event.event_version,
                    payload: event.payload.get(),
                })?;
            }
            Ok(stream.events.len() as u64)
        }
    }

    /// Locks the aggregate until the caller's transaction ends, as
    /// [`EventStore::lock_aggregate`] does, then visits its events from the
    /// start of `versions` on (`1..` for all of them), as
    /// [`fold_aggregate_stream`](Self::fold_aggregate_stream) does: the
    /// retry of a command that lost a race. The read sees every
    /// event committed before the lock was granted, including those of the
    /// transaction it waited for.
    ///
    /// Call it first in the transaction, as `lock_aggregate`: on SQLite, a
    /// read before it keeps it from waiting for the write lock. On
    /// PostgreSQL the transaction must be `READ COMMITTED` (the default):
    /// under `REPEATABLE READ` the wait ends in a serialization failure
    /// when the holder moved the aggregate.
    ///
    /// The default makes the two calls; PostgreSQL does both in one round
    /// trip, which shortens the time a contended aggregate stays locked.
    ///
    /// ```no_run
    /// use es_store::{AggregateStreamReader, PostgresStore};
    /// # async fn demo(pool: sqlx::PgPool) -> Result<(), es_store::Error> {
    /// let store = PostgresStore::new();
    /// let mut tx = pool.begin().await?;
    /// let mut version = 0;
    /// store
    ///     .lock_and_fold_aggregate_stream(&mut *tx, ("Billing", "Account", "acc-1"), 1.., |event| {
    ///         version = event.aggregate_version;
    ///         Ok::<(), es_store::Error>(())
    ///     })
    ///     .await?;
    /// // ... decide, append with ExpectedVersion::Exact(version), commit ...
    /// # Ok(()) }
    /// ```
    fn lock_and_fold_aggregate_stream<F, E>(
        &self,
        conn: &mut Connection<Self>,
        aggregate: impl AsAggregateRef + Send,
        versions: RangeFrom<i64>,
        visit: F,
    ) -> impl Future<Output = std::result::Result<u64, E>> + Send
    where
        F: FnMut(StoredEvent<'_>) -> std::result::Result<(), E> + Send,
        E: From<crate::Error> + Send,
        Self: EventStore + Sized,
    {
        async move {
            let aggregate = aggregate.as_aggregate_ref();
            self.lock_aggregate(conn, aggregate).await?;
            self.fold_aggregate_stream(conn, aggregate, versions, visit)
                .await
        }
    }
}

/// One stored event as [`AggregateStreamReader::fold_aggregate_stream`]
/// shows it: what a fold needs, borrowed from the row being read.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct StoredEvent<'a> {
    /// The event's version within its aggregate.
    pub aggregate_version: i64,
    /// The event type.
    pub event_type: &'a str,
    /// The payload's schema version.
    pub event_version: i32,
    /// The payload's JSON text, as stored (decode it with
    /// [`DomainEvent::decode_json`](crate::DomainEvent::decode_json), which
    /// checks it as it parses).
    pub payload: &'a str,
}

/// Reads the global feed of all events.
///
/// ```no_run
/// use es_store::{EventReader, PostgresStore};
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), es_store::Error> {
/// let store = PostgresStore::new();
/// let mut conn = pool.acquire().await?;
/// let mut position = 0;
/// loop {
///     let page = store.read_events(&mut *conn, position, 500).await?;
///     let Some(last) = page.last() else { break };
///     position = last.global_position;
/// }
/// # Ok(()) }
/// ```
pub trait EventReader: Backend {
    /// Reads up to `limit` events with a global position greater than
    /// `from_position`, in position order. Pass 0 to start at the beginning
    /// and the last position you handled to go on.
    ///
    /// The read is gap-safe: it never returns an event while an event at a
    /// lower position may still commit, so a reader that remembers the last
    /// position it saw never misses an event. Each aggregate's events come in
    /// version order.
    fn read_events(
        &self,
        conn: &mut Connection<Self>,
        from_position: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<PersistedEvent>>> + Send;

    /// Like [`read_events`](EventReader::read_events), returning only the
    /// events that pass `filter` (evaluated by the database), and how far
    /// the read looked.
    ///
    /// ```no_run
    /// use es_store::{EventFilter, EventReader, PostgresStore};
    /// # async fn demo(mut conn: sqlx::PgConnection) -> Result<(), es_store::Error> {
    /// let store = PostgresStore::new();
    /// let accounts = EventFilter::all().bounded_context("Billing").aggregate_type("Account");
    /// let page = store.read_filtered(&mut conn, 0, 100, &accounts).await?;
    /// let next_from = page.scanned_to;
    /// # Ok(()) }
    /// ```
    fn read_filtered(
        &self,
        conn: &mut Connection<Self>,
        from_position: i64,
        limit: i64,
        filter: &EventFilter,
    ) -> impl Future<Output = Result<EventPage>> + Send;

    /// A signal that changes whenever this process commits appends to the
    /// store's events table ([`EventStore::notify_committed`]): what
    /// projection processors wait on to follow the feed live on every
    /// backend. Appends made by other processes do not change it (on
    /// PostgreSQL they send a notification instead; elsewhere followers
    /// poll).
    ///
    /// ```no_run
    /// use es_store::{EventReader, PostgresStore};
    /// # async fn demo() {
    /// let mut appended = PostgresStore::new().committed_appends();
    /// appended.changed().await.unwrap(); // an append was committed here
    /// # }
    /// ```
    fn committed_appends(&self) -> tokio::sync::watch::Receiver<u64>;
}

/// Remembers how far each projection has read.
///
/// ```no_run
/// use es_store::{CheckpointStore, PostgresStore};
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), es_store::Error> {
/// let store = PostgresStore::new();
/// let mut tx = pool.begin().await?;
/// let from = store.get_checkpoint(&mut *tx, "balances").await?;
/// // ... update the read model for the events after `from`, in `tx` ...
/// store.update_checkpoint(&mut *tx, "balances", from + 10).await?;
/// tx.commit().await?; // the read model and its checkpoint commit together
/// # Ok(()) }
/// ```
pub trait CheckpointStore: Backend {
    /// The last position the projection handled, or 0 if it has none.
    fn get_checkpoint(
        &self,
        conn: &mut Connection<Self>,
        projection_name: &str,
    ) -> impl Future<Output = Result<i64>> + Send;

    /// Sets the projection's checkpoint, creating it if needed, inside the
    /// caller's transaction.
    fn update_checkpoint(
        &self,
        conn: &mut Connection<Self>,
        projection_name: &str,
        position: i64,
    ) -> impl Future<Output = Result<()>> + Send;
}

/// Keeps the latest snapshot of each aggregate.
///
/// ```no_run
/// use es_store::{PostgresStore, Snapshot, SnapshotStore};
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), es_store::Error> {
/// let store = PostgresStore::new();
/// let mut tx = pool.begin().await?;
/// let snapshot = Snapshot::new("Billing", "Account", "acc-1", 100, 1, &serde_json::json!({"balance": 5}))?;
/// store.save_snapshot(&mut *tx, &snapshot).await?;
/// let latest = store.load_snapshot(&mut *tx, ("Billing", "Account", "acc-1"), None).await?;
/// assert_eq!(latest.map(|s| s.version), Some(100));
/// tx.commit().await?;
/// # Ok(()) }
/// ```
pub trait SnapshotStore: Backend {
    /// The latest snapshot of `aggregate` (named as for
    /// [`AggregateStreamReader`]), if it has one at or below `max_version`
    /// (no bound when `None`; a negative bound is
    /// [`Error::NegativeVersion`](crate::Error::NegativeVersion)).
    fn load_snapshot(
        &self,
        conn: &mut Connection<Self>,
        aggregate: impl AsAggregateRef + Send,
        max_version: Option<i64>,
    ) -> impl Future<Output = Result<Option<Snapshot>>> + Send;

    /// Stores a snapshot, replacing an older one of the same aggregate. A
    /// snapshot older than the stored one is ignored.
    fn save_snapshot(
        &self,
        conn: &mut Connection<Self>,
        snapshot: &Snapshot,
    ) -> impl Future<Output = Result<()>> + Send;
}

/// What projection processors need beyond reading and checkpoints:
/// exclusive claims on a checkpoint, a record of skipped events, and the
/// head of the feed.
///
/// ```no_run
/// use es_store::{PostgresStore, ProjectionStore};
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), es_store::Error> {
/// let store = PostgresStore::new();
/// let mut tx = pool.begin().await?;
/// match store.claim_checkpoint(&mut *tx, "balances").await? {
///     Some(position) => println!("ours until commit, from position {position}"),
///     None => println!("another processor is on it"),
/// }
/// # Ok(()) }
/// ```
pub trait ProjectionStore: EventReader + CheckpointStore {
    /// Takes the projection's checkpoint for the rest of the caller's
    /// transaction and returns its position; `None` when another
    /// transaction holds it (it does not wait for it). A checkpoint that
    /// does not exist yet is created at 0; if another transaction is
    /// creating the same one at that moment, the claim waits for it to end.
    ///
    /// Backends with a single writer may wait: on SQLite the claim is the
    /// database's write lock, so a second claimant waits for the holder's
    /// transaction to end (up to the busy timeout) and then gets the
    /// position the holder committed; it gets `None` only when the lock
    /// cannot be had (see `SqliteStore`).
    fn claim_checkpoint(
        &self,
        conn: &mut Connection<Self>,
        projection_name: &str,
    ) -> impl Future<Output = Result<Option<i64>>> + Send;

    /// Records that the projection skipped `event` because handling it
    /// failed with `error`.
    fn record_failure(
        &self,
        conn: &mut Connection<Self>,
        projection_name: &str,
        event: &PersistedEvent,
        error: &str,
    ) -> impl Future<Output = Result<()>> + Send;

    /// The events the projection skipped, in position order.
    fn failures(
        &self,
        conn: &mut Connection<Self>,
        projection_name: &str,
    ) -> impl Future<Output = Result<Vec<ProjectionFailure>>> + Send;

    /// The highest global position stored (0 when the store is empty).
    fn head_position(
        &self,
        conn: &mut Connection<Self>,
    ) -> impl Future<Output = Result<i64>> + Send;

    /// Bounds how long the caller's transaction may stay idle, waiting for
    /// the client: past `lease`, the server ends the session and rolls the
    /// transaction back, which frees its locks (a checkpoint claim among
    /// them) for others, and the client can no longer commit it.
    /// PostgreSQL: `idle_in_transaction_session_timeout` for this
    /// transaction. MySQL: the session's `wait_timeout` (whole seconds,
    /// at least 1). SQLite: nothing (one process holds the database's
    /// write lock until it resumes).
    ///
    /// ```no_run
    /// use es_store::{PostgresStore, ProjectionStore};
    /// # async fn demo(pool: sqlx::PgPool) -> Result<(), es_store::Error> {
    /// let store = PostgresStore::new();
    /// let mut tx = pool.begin().await?;
    /// store.lease_transaction(&mut *tx, std::time::Duration::from_secs(30)).await?;
    /// if let Some(position) = store.claim_checkpoint(&mut *tx, "balances").await? {
    ///     // ... handle events after `position`; a worker frozen here for
    ///     // 30 s loses the claim, and its commit fails ...
    /// }
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    fn lease_transaction(
        &self,
        conn: &mut Connection<Self>,
        lease: std::time::Duration,
    ) -> impl Future<Output = Result<()>> + Send;

    /// [`claim_checkpoint`](ProjectionStore::claim_checkpoint) after
    /// [`lease_transaction`](ProjectionStore::lease_transaction), in one
    /// statement where the backend can (PostgreSQL).
    ///
    /// ```no_run
    /// use es_store::{PostgresStore, ProjectionStore};
    /// # async fn demo(pool: sqlx::PgPool) -> Result<(), es_store::Error> {
    /// let store = PostgresStore::new();
    /// let mut tx = pool.begin().await?;
    /// let lease = std::time::Duration::from_secs(30);
    /// if let Some(position) = store.claim_leased(&mut *tx, "balances", lease).await? {
    ///     println!("claimed at {position}, for as long as this transaction talks to the server");
    /// }
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    fn claim_leased(
        &self,
        conn: &mut Connection<Self>,
        projection_name: &str,
        lease: std::time::Duration,
    ) -> impl Future<Output = Result<Option<i64>>> + Send;

    /// The recorded versions of a projection, lowest first (none for a
    /// projection whose processor never ran since versions exist).
    ///
    /// ```no_run
    /// use es_store::{PostgresStore, ProjectionStore};
    /// # async fn demo(pool: sqlx::PgPool) -> Result<(), es_store::Error> {
    /// let mut conn = pool.acquire().await?;
    /// for version in PostgresStore::new().projection_versions(&mut *conn, "balances").await? {
    ///     println!("v{}: {}", version.version, version.state);
    /// }
    /// # Ok(()) }
    /// ```
    fn projection_versions(
        &self,
        conn: &mut Connection<Self>,
        projection_name: &str,
    ) -> impl Future<Output = Result<Vec<ProjectionVersion>>> + Send;

    /// The version of the projection readers should be served from: the
    /// one recorded as [`VersionState::Active`], or `None` when none is
    /// recorded yet. Readers that name their tables after the version look
    /// it up here, in the transaction they read the read model in.
    ///
    /// ```no_run
    /// use es_store::{PostgresStore, ProjectionStore};
    /// # async fn demo(pool: sqlx::PgPool) -> Result<(), es_store::Error> {
    /// let mut tx = pool.begin().await?;
    /// let version = PostgresStore::new().active_projection_version(&mut *tx, "balances").await?;
    /// let table = format!("balances_v{}", version.unwrap_or(1));
    /// # Ok(()) }
    /// ```
    fn active_projection_version(
        &self,
        conn: &mut Connection<Self>,
        projection_name: &str,
    ) -> impl Future<Output = Result<Option<u32>>> + Send {
        async move {
            Ok(self
                .projection_versions(conn, projection_name)
                .await?
                .into_iter()
                .find(|v| v.state == VersionState::Active)
                .map(|v| v.version))
        }
    }

    /// Records a version, unless one with its name and number is recorded
    /// (then changes nothing).
    ///
    /// ```no_run
    /// use es_store::{PostgresStore, ProjectionStore, ProjectionVersion, VersionState};
    /// # async fn demo(pool: sqlx::PgPool) -> Result<(), es_store::Error> {
    /// let mut conn = pool.acquire().await?;
    /// let v1 = ProjectionVersion::new("balances", 1, VersionState::Active, 0, 1);
    /// PostgresStore::new().insert_projection_version(&mut *conn, &v1).await?;
    /// # Ok(()) }
    /// ```
    fn insert_projection_version(
        &self,
        conn: &mut Connection<Self>,
        version: &ProjectionVersion,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Changes a recorded version's state, replay position and partition
    /// count to `version`'s.
    ///
    /// ```no_run
    /// use es_store::{PostgresStore, ProjectionStore, ProjectionVersion, VersionState};
    /// # async fn demo(pool: sqlx::PgPool) -> Result<(), es_store::Error> {
    /// let mut tx = pool.begin().await?;
    /// let v1 = ProjectionVersion::new("balances", 1, VersionState::Superseded, 0, 1);
    /// PostgresStore::new().update_projection_version(&mut *tx, &v1).await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    fn update_projection_version(
        &self,
        conn: &mut Connection<Self>,
        version: &ProjectionVersion,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Records whether a recorded version's projection declares side
    /// effects ([`ProjectionVersion::side_effects`]); changes nothing else
    /// (nor a version that is not recorded). Processors record it when they
    /// start. Does nothing by default (a store that does not record it).
    ///
    /// ```no_run
    /// use es_store::{PostgresStore, ProjectionStore};
    /// # async fn demo(pool: sqlx::PgPool) -> Result<(), es_store::Error> {
    /// let mut conn = pool.acquire().await?;
    /// PostgresStore::new().record_projection_side_effects(&mut *conn, "publisher", 1, true).await?;
    /// # Ok(()) }
    /// ```
    fn record_projection_side_effects(
        &self,
        conn: &mut Connection<Self>,
        projection_name: &str,
        version: u32,
        side_effects: bool,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = (conn, projection_name, version, side_effects);
        async { Ok(()) }
    }

    /// Records that a worker runs this version now
    /// ([`ProjectionVersion::worker_seen_at`]); changes nothing else (nor a
    /// version that is not recorded). A running processor calls it every
    /// [`ProjectionVersion::WORKER_HEARTBEAT`], so that operators' tools can
    /// tell whether anything will replay a projection they rewind. Does
    /// nothing by default (a store that does not record it).
    ///
    /// ```no_run
    /// use es_store::{PostgresStore, ProjectionStore};
    /// # async fn demo(pool: sqlx::PgPool) -> Result<(), es_store::Error> {
    /// let mut conn = pool.acquire().await?;
    /// PostgresStore::new().record_projection_worker(&mut *conn, "balances", 1).await?;
    /// # Ok(()) }
    /// ```
    fn record_projection_worker(
        &self,
        conn: &mut Connection<Self>,
        projection_name: &str,
        version: u32,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = (conn, projection_name, version);
        async { Ok(()) }
    }

    /// Forgets a version (its checkpoints are removed separately, with
    /// [`delete_checkpoint`](ProjectionStore::delete_checkpoint)).
    ///
    /// ```no_run
    /// use es_store::{PostgresStore, ProjectionStore};
    /// # async fn demo(pool: sqlx::PgPool) -> Result<(), es_store::Error> {
    /// let mut conn = pool.acquire().await?;
    /// PostgresStore::new().delete_projection_version(&mut *conn, "balances", 1).await?;
    /// # Ok(()) }
    /// ```
    fn delete_projection_version(
        &self,
        conn: &mut Connection<Self>,
        projection_name: &str,
        version: u32,
    ) -> impl Future<Output = Result<()>> + Send;

    /// [`claim_checkpoint`](ProjectionStore::claim_checkpoint), waiting for
    /// a transaction that holds the checkpoint to end instead of skipping
    /// it (PostgreSQL and MySQL wait on the row lock, up to the server's
    /// lock timeout). `None` only when a checkpoint that did not exist is
    /// being created by another transaction that holds it. For a switch of
    /// projection versions, which must take a checkpoint that busy workers
    /// keep claiming.
    ///
    /// ```no_run
    /// use es_store::{PostgresStore, ProjectionStore};
    /// # async fn demo(pool: sqlx::PgPool) -> Result<(), es_store::Error> {
    /// let mut tx = pool.begin().await?;
    /// let position = PostgresStore::new().wait_for_checkpoint(&mut *tx, "balances").await?;
    /// # Ok(()) }
    /// ```
    fn wait_for_checkpoint(
        &self,
        conn: &mut Connection<Self>,
        projection_name: &str,
    ) -> impl Future<Output = Result<Option<i64>>> + Send;

    /// Serialises changes to a projection's version records: waits for
    /// another transaction holding the projection's lock, then holds it
    /// until the caller's transaction ends. Registering a version, a
    /// switch and a retirement take it first.
    ///
    /// ```no_run
    /// use es_store::{PostgresStore, ProjectionStore};
    /// # async fn demo(pool: sqlx::PgPool) -> Result<(), es_store::Error> {
    /// let store = PostgresStore::new();
    /// let mut tx = pool.begin().await?;
    /// store.lock_projection_versions(&mut *tx, "balances").await?;
    /// let versions = store.projection_versions(&mut *tx, "balances").await?;
    /// // ... change them ...
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    fn lock_projection_versions(
        &self,
        conn: &mut Connection<Self>,
        projection_name: &str,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Removes a checkpoint (nothing when there is none).
    ///
    /// ```no_run
    /// use es_store::{PostgresStore, ProjectionStore};
    /// # async fn demo(pool: sqlx::PgPool) -> Result<(), es_store::Error> {
    /// let mut conn = pool.acquire().await?;
    /// PostgresStore::new().delete_checkpoint(&mut *conn, "balances").await?;
    /// # Ok(()) }
    /// ```
    fn delete_checkpoint(
        &self,
        conn: &mut Connection<Self>,
        projection_name: &str,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Who holds the checkpoint now, without waiting: a claim that skips a
    /// held row, in a transaction (nested in the caller's, if any) that is
    /// rolled back. PostgreSQL names the holder's session (its backend
    /// pid, application name and client address, found through the row's
    /// locking transaction); MySQL only says that it is held; SQLite
    /// cannot tell without waiting for the writer
    /// ([`CheckpointHolder::Unknown`]). So is a checkpoint not stored
    /// yet: the first batch of a projection creates its checkpoint, a row
    /// no other transaction sees until it commits.
    ///
    /// ```no_run
    /// use es_store::{CheckpointHolder, PostgresStore, ProjectionStore};
    /// # async fn demo(pool: sqlx::PgPool) -> Result<(), es_store::Error> {
    /// let mut conn = pool.acquire().await?;
    /// match PostgresStore::new().checkpoint_holder(&mut *conn, "balances#0/4").await? {
    ///     CheckpointHolder::Held { by: Some(session) } => println!("held by {session}"),
    ///     other => println!("{other:?}"),
    /// }
    /// # Ok(()) }
    /// ```
    fn checkpoint_holder(
        &self,
        conn: &mut Connection<Self>,
        projection_name: &str,
    ) -> impl Future<Output = Result<CheckpointHolder>> + Send;

    /// Lets the caller's transaction commit without waiting for it to be
    /// durable, where the backend can (PostgreSQL: `SET LOCAL
    /// synchronous_commit = off`). A crash may then lose the transaction
    /// whole (never part of it), after its effects were visible to others.
    /// Does nothing by default.
    fn relax_commit_durability(
        &self,
        conn: &mut Connection<Self>,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = conn;
        async { Ok(()) }
    }
}

/// An event a projection skipped, with why.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ProjectionFailure {
    /// The event's global position.
    pub global_position: i64,
    /// The event's id.
    pub event_id: uuid::Uuid,
    /// The event's type.
    pub event_type: String,
    /// The handler's error, as text.
    pub error: String,
    /// When it was recorded.
    pub failed_at: chrono::DateTime<chrono::Utc>,
}

/// Who holds a checkpoint ([`ProjectionStore::checkpoint_holder`]): a
/// processor in the middle of a batch, or nobody.
///
/// ```
/// use es_store::CheckpointHolder;
/// let held = CheckpointHolder::Held { by: Some("pid 4242 (worker-1, 10.0.0.7)".into()) };
/// assert!(held.is_held() && !CheckpointHolder::Free.is_held());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CheckpointHolder {
    /// Nobody holds it.
    Free,
    /// A transaction holds it; its session, where the backend can tell.
    Held {
        /// The holder's session (PostgreSQL: `pid N (application,
        /// client address)`).
        by: Option<String>,
    },
    /// The backend cannot tell without waiting (SQLite), or the
    /// checkpoint is not stored yet.
    Unknown,
}

impl CheckpointHolder {
    /// Whether a transaction holds it.
    pub fn is_held(&self) -> bool {
        matches!(self, CheckpointHolder::Held { .. })
    }
}

/// A store with every capability: what code generic over the backend
/// names with one bound instead of six. Every [`SqlStore`](crate::SqlStore)
/// is one.
///
/// ```
/// use es_store::{Connection, Store};
///
/// async fn head<S: Store>(store: &S, conn: &mut Connection<S>) -> es_store::Result<i64> {
///     store.head_position(conn).await
/// }
///
/// fn takes_any_store<S: Store>(_: &S) {}
/// takes_any_store(&es_store::PostgresStore::new());
/// ```
pub trait Store:
    EventStore
    + AggregateStreamReader
    + EventReader
    + CheckpointStore
    + SnapshotStore
    + ProjectionStore
    + DocumentStore
    + Clone
{
}

impl<T> Store for T where
    T: EventStore
        + AggregateStreamReader
        + EventReader
        + CheckpointStore
        + SnapshotStore
        + ProjectionStore
        + DocumentStore
        + Clone
{
}

/// Read-model documents: JSON values by collection and id, in the
/// store's documents table (`read_models`), with the same operations and
/// the same semantics on every backend, so that a projection written
/// against them runs on any. [`Collection`](crate::documents::Collection)
/// is the typed way to use them.
///
/// Ids compare exactly (bytes: `acc-1`, `ACC-1` and `acc-1 ` are three
/// documents) and sort bytewise. Collections and ids are names (not empty,
/// up to [`limits::MAX_COLLECTION_BYTES`](crate::limits::MAX_COLLECTION_BYTES)
/// and [`limits::MAX_DOCUMENT_ID_BYTES`](crate::limits::MAX_DOCUMENT_ID_BYTES)
/// bytes, no NUL); a body is any JSON value, JSON `null` reading as absent.
///
/// ```no_run
/// use es_store::{DocumentStore, PostgresStore};
/// use serde_json::value::RawValue;
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// let store = PostgresStore::new();
/// let mut tx = pool.begin().await?;
/// store.put_document(&mut *tx, "balances", "acc-1", &RawValue::from_string(r#"{"balance":5}"#.into())?).await?;
/// tx.commit().await?;
/// let mut conn = pool.acquire().await?;
/// assert_eq!(store.get_document(&mut *conn, "balances", "acc-1").await?.unwrap().get(), r#"{"balance": 5}"#);
/// # Ok(()) }
/// ```
pub trait DocumentStore: Backend {
    /// Stores `body` as the document `id` of `collection`, replacing it.
    fn put_document(
        &self,
        conn: &mut Connection<Self>,
        collection: &str,
        id: &str,
        body: &serde_json::value::RawValue,
    ) -> impl Future<Output = Result<()>> + Send;

    /// The document, if there is one.
    fn get_document(
        &self,
        conn: &mut Connection<Self>,
        collection: &str,
        id: &str,
    ) -> impl Future<Output = Result<Option<Box<serde_json::value::RawValue>>>> + Send;

    /// The document, locked until the caller's transaction ends, so that
    /// what the transaction writes from it cannot be lost to a concurrent
    /// writer; a missing document is locked too (as a row holding JSON
    /// `null`, which reads as absent: put or delete it before the
    /// transaction ends). Call it in a transaction.
    fn lock_document(
        &self,
        conn: &mut Connection<Self>,
        collection: &str,
        id: &str,
    ) -> impl Future<Output = Result<Option<Box<serde_json::value::RawValue>>>> + Send;

    /// Removes the document (nothing if there is none).
    fn delete_document(
        &self,
        conn: &mut Connection<Self>,
        collection: &str,
        id: &str,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Removes every document of `collection`; returns how many rows went.
    fn clear_documents(
        &self,
        conn: &mut Connection<Self>,
        collection: &str,
    ) -> impl Future<Output = Result<u64>> + Send;

    /// Up to `limit` documents of `collection` with ids after `after`
    /// (from the first when `None`), by id.
    fn list_documents(
        &self,
        conn: &mut Connection<Self>,
        collection: &str,
        after: Option<&str>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<(String, Box<serde_json::value::RawValue>)>>> + Send;

    /// How many documents `collection` holds.
    fn count_documents(
        &self,
        conn: &mut Connection<Self>,
        collection: &str,
    ) -> impl Future<Output = Result<u64>> + Send;
}
