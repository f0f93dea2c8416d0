//! The one bound with every capability.

use super::{
    AggregateStreamReader, CheckpointStore, DocumentStore, EventReader, EventStore,
    ProjectionStore, SnapshotStore,
};

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
