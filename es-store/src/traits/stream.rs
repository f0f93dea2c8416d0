//! Reading one aggregate's stream.

use std::future::Future;
use std::ops::{RangeBounds, RangeFrom};

use super::{Backend, Connection, EventStore, StoredEvent};
use crate::{AsAggregateRef, Result, Stream};

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
