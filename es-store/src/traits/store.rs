//! The backend a store runs on, and appends.

#[cfg(doc)]
use super::EventReader;
use std::future::Future;

use crate::{AppendResult, AsAggregateRef, Event, ExpectedVersion, PersistedEvent, Result};

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
