//! A projection's checkpoint and lag, and what a catch-up did.

use super::*;

/// A projection's checkpoint and how far it trails the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProjectionStatus {
    /// The projection.
    pub name: String,
    /// The processor's version of it.
    pub version: u32,
    /// The lowest checkpoint among its partitions.
    pub checkpoint: i64,
    /// Each partition's checkpoint (one entry without partitions).
    pub partitions: Vec<i64>,
    /// Who holds each partition now (in the order of `partitions`): a
    /// worker in the middle of a batch, named on PostgreSQL
    /// ([`ProjectionStore::checkpoint_holder`]).
    pub holders: Vec<es_store::CheckpointHolder>,
    /// The highest position in the store.
    pub head: i64,
    /// `head - checkpoint`.
    pub lag: i64,
    /// When the oldest event the projection has yet to handle was created
    /// (`None` when it has handled everything it can see).
    pub oldest_pending: Option<chrono::DateTime<chrono::Utc>>,
    /// How long that event has waited: the lag in time (zero when caught
    /// up).
    pub lag_time: Duration,
}

impl ProjectionStatus {
    /// Whether the projection is stalled: an event has waited to be
    /// handled for longer than `threshold` (no worker is making progress,
    /// or not enough). A health check for an alert or a readiness probe.
    ///
    /// ```no_run
    /// # use es_aggregate::projection::{Projection, ProjectionProcessor};
    /// # async fn demo<P: Projection>(processor: ProjectionProcessor<es_store::PostgresStore, P>) -> Result<(), Box<dyn std::error::Error>> {
    /// let status = processor.status().await?;
    /// if status.is_stalled(std::time::Duration::from_secs(60)) {
    ///     eprintln!("{} is {:?} behind", status.name, status.lag_time);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn is_stalled(&self, threshold: Duration) -> bool {
        self.lag_time > threshold
    }
}

/// What one catch-up did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CatchUp {
    /// Events handled.
    pub events: u64,
    /// Batches committed.
    pub batches: u64,
    /// Events skipped under [`ErrorPolicy::Skip`].
    pub skipped: u64,
}
