//! A projection's skipped event, as the failure log keeps it.

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
