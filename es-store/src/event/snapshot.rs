//! The folded state of one aggregate at a version.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::value::RawValue;

use super::*;
use crate::Result;

/// The folded state of one aggregate at a version, stored so that loading
/// can start from it instead of from the first event.
///
/// Its names have the limits of an [`Event`]'s, and its state, like a
/// payload, must not hold the escape `\u0000` or an unpaired surrogate
/// escape ([`Error::UnstorableText`]).
///
/// ```
/// use es_store::Snapshot;
///
/// let snapshot = Snapshot::new("Billing", "Account", "acc-1", 100, 1, &serde_json::json!({"balance": 5}))?;
/// assert_eq!(snapshot.state.get(), r#"{"balance":5}"#);
/// # Ok::<(), es_store::Error>(())
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Snapshot {
    /// The bounded context.
    pub bounded_context: String,
    /// The aggregate type.
    pub aggregate_type: String,
    /// The aggregate id.
    pub aggregate_id: String,
    /// The aggregate version the state includes (its last applied event).
    pub version: i64,
    /// The version of the state's own schema: a snapshot written by code
    /// with another schema version is ignored when loading.
    pub schema_version: i32,
    /// The serialized state.
    pub state: Box<RawValue>,
    /// When the snapshot was taken.
    pub created_at: DateTime<Utc>,
}

impl Snapshot {
    /// Serializes `state` into a snapshot taken now.
    pub fn new<S: Serialize + ?Sized>(
        bounded_context: impl Into<String>,
        aggregate_type: impl Into<String>,
        aggregate_id: impl Into<String>,
        version: i64,
        schema_version: i32,
        state: &S,
    ) -> Result<Self> {
        Ok(Self::from_raw(
            bounded_context,
            aggregate_type,
            aggregate_id,
            version,
            schema_version,
            to_raw(state)?,
        ))
    }

    /// A snapshot of state that is already JSON text.
    ///
    /// ```
    /// # use es_store::Snapshot;
    /// let state = serde_json::value::RawValue::from_string("{}".to_owned())?;
    /// let snapshot = Snapshot::from_raw("Billing", "Account", "acc-1", 3, 1, state);
    /// assert_eq!(snapshot.version, 3);
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn from_raw(
        bounded_context: impl Into<String>,
        aggregate_type: impl Into<String>,
        aggregate_id: impl Into<String>,
        version: i64,
        schema_version: i32,
        state: Box<RawValue>,
    ) -> Self {
        Self {
            bounded_context: bounded_context.into(),
            aggregate_type: aggregate_type.into(),
            aggregate_id: aggregate_id.into(),
            version,
            schema_version,
            state,
            created_at: now(),
        }
    }
}
