//! Projection checkpoints.

use std::future::Future;

use super::{Backend, Connection};
use crate::Result;

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
