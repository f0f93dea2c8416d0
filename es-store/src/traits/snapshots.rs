//! Aggregate snapshots.

#[cfg(doc)]
use super::AggregateStreamReader;
use std::future::Future;

use super::{Backend, Connection};
use crate::{AsAggregateRef, Result, Snapshot};

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
