//! Reading the global feed.

#[cfg(doc)]
use super::{AggregateStreamReader, EventStore};
use std::future::Future;

use super::{Backend, Connection};
use crate::{EventFilter, EventPage, PersistedEvent, Result};

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
