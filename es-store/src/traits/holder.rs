//! Who holds a projection checkpoint.

#[cfg(doc)]
use super::ProjectionStore;

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
