//! The values that go into the store and come out of it.

use chrono::{DateTime, SubsecRound, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::{Error, Result};

mod aggregate;
mod expected;
mod metadata;
mod persisted;
mod snapshot;

pub use aggregate::{AggregateKey, AggregateRef, AsAggregateRef};
pub use expected::ExpectedVersion;
pub use metadata::Metadata;
pub use persisted::{AppendResult, PersistedEvent, Stream};
pub use snapshot::Snapshot;

/// An event to append: what happened to which aggregate instance.
///
/// The store assigns the aggregate version and the global position; everything
/// else is chosen by the caller. `payload` and `metadata` are JSON kept as raw
/// text, so that a payload is serialized exactly once on the way in and parsed
/// exactly once (straight into the caller's type) on the way out.
///
/// What every backend stores, and so what an append accepts (anything else
/// is refused before it is sent, with the caller's transaction left usable):
///
/// - names no longer than their limits in bytes of UTF-8 (see
///   [`limits`](crate::limits)): `bounded_context` and `aggregate_type` 128,
///   `aggregate_id` 500, `event_type` and `trace_id` 255, else
///   [`Error::NameTooLong`];
/// - no NUL character in a name, nor the escape `\u0000` or an escaped
///   surrogate that is not half of a pair (`"\ud800"`) in `payload` or
///   `metadata`, else [`Error::UnstorableText`] (PostgreSQL cannot store
///   them).
///
/// ```
/// use es_store::Event;
///
/// let event = Event::new("Billing", "Account", "acc-1", "MoneyDeposited", &serde_json::json!({"amount": 10}))?
///     .with_event_version(2)
///     .with_metadata(&serde_json::json!({"user": "alice"}))?;
/// assert_eq!(event.event_type, "MoneyDeposited");
/// assert_eq!(event.payload.get(), r#"{"amount":10}"#);
/// # Ok::<(), es_store::Error>(())
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Event {
    /// The bounded context the aggregate lives in, for example `"Billing"`
    /// (at most [`MAX_BOUNDED_CONTEXT_BYTES`](crate::limits::MAX_BOUNDED_CONTEXT_BYTES)).
    pub bounded_context: String,
    /// The aggregate type, for example `"Account"` (at most
    /// [`MAX_AGGREGATE_TYPE_BYTES`](crate::limits::MAX_AGGREGATE_TYPE_BYTES)).
    pub aggregate_type: String,
    /// The aggregate instance: a UUID, an e-mail address, any non-empty
    /// string of at most
    /// [`MAX_AGGREGATE_ID_BYTES`](crate::limits::MAX_AGGREGATE_ID_BYTES).
    pub aggregate_id: String,
    /// Unique id of this event. Appending an event whose id is already stored
    /// is idempotent (see [`EventStore::append`](crate::EventStore::append)).
    pub event_id: Uuid,
    /// The event type name, for example `"MoneyDeposited"` (at most
    /// [`MAX_EVENT_TYPE_BYTES`](crate::limits::MAX_EVENT_TYPE_BYTES)).
    pub event_type: String,
    /// The schema version of the payload (1 or more), used for upcasting.
    pub event_version: i32,
    /// The event's data as JSON.
    pub payload: Box<RawValue>,
    /// Free-form JSON metadata; `{}` when there is none.
    pub metadata: Box<RawValue>,
    /// Groups every event caused, directly or not, by one request.
    pub correlation_id: Option<Uuid>,
    /// The command or event that caused this event.
    pub causation_id: Option<Uuid>,
    /// A distributed-tracing id (for example a W3C trace id), at most
    /// [`MAX_TRACE_ID_BYTES`](crate::limits::MAX_TRACE_ID_BYTES).
    pub trace_id: Option<String>,
    /// When the event was created, truncated to microseconds (the precision
    /// PostgreSQL keeps) so that what is read back equals what was written.
    pub created_at: DateTime<Utc>,
}

impl Event {
    /// Creates an event with a fresh time-ordered (v7) id, schema version 1,
    /// empty metadata and the current time.
    ///
    /// Fails with [`Error::Serialization`] if `payload` cannot be serialized to JSON.
    pub fn new<P: Serialize + ?Sized>(
        bounded_context: impl Into<String>,
        aggregate_type: impl Into<String>,
        aggregate_id: impl Into<String>,
        event_type: impl Into<String>,
        payload: &P,
    ) -> Result<Self> {
        Ok(Self::from_raw(
            bounded_context,
            aggregate_type,
            aggregate_id,
            event_type,
            to_raw(payload)?,
        ))
    }

    /// Like [`Event::new`], for a payload that is already JSON text.
    ///
    /// ```
    /// use es_store::Event;
    /// use serde_json::value::RawValue;
    ///
    /// let payload = RawValue::from_string(r#"{"owner":"alice"}"#.to_owned())?;
    /// let event = Event::from_raw("Billing", "Account", "acc-1", "Opened", payload);
    /// assert_eq!(event.event_version, 1);
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn from_raw(
        bounded_context: impl Into<String>,
        aggregate_type: impl Into<String>,
        aggregate_id: impl Into<String>,
        event_type: impl Into<String>,
        payload: Box<RawValue>,
    ) -> Self {
        Self {
            bounded_context: bounded_context.into(),
            aggregate_type: aggregate_type.into(),
            aggregate_id: aggregate_id.into(),
            event_id: Uuid::now_v7(),
            event_type: event_type.into(),
            event_version: 1,
            payload,
            metadata: empty_object(),
            correlation_id: None,
            causation_id: None,
            trace_id: None,
            created_at: now(),
        }
    }

    /// Sets the event id (to make a retried append idempotent, reuse the ids).
    pub fn with_event_id(mut self, event_id: Uuid) -> Self {
        self.event_id = event_id;
        self
    }

    /// Sets the payload schema version.
    pub fn with_event_version(mut self, event_version: i32) -> Self {
        self.event_version = event_version;
        self
    }

    /// Sets the metadata, serialized to JSON.
    pub fn with_metadata<M: Serialize + ?Sized>(mut self, metadata: &M) -> Result<Self> {
        self.metadata = to_raw(metadata)?;
        Ok(self)
    }

    /// Sets the metadata from JSON text.
    pub fn with_raw_metadata(mut self, metadata: Box<RawValue>) -> Self {
        self.metadata = metadata;
        self
    }

    /// Sets the correlation id.
    pub fn with_correlation_id(mut self, correlation_id: Uuid) -> Self {
        self.correlation_id = Some(correlation_id);
        self
    }

    /// Sets the causation id.
    pub fn with_causation_id(mut self, causation_id: Uuid) -> Self {
        self.causation_id = Some(causation_id);
        self
    }

    /// Sets the trace id.
    pub fn with_trace_id(mut self, trace_id: impl Into<String>) -> Self {
        self.trace_id = Some(trace_id.into());
        self
    }

    /// Sets the creation time (truncated to microseconds).
    pub fn with_created_at(mut self, created_at: DateTime<Utc>) -> Self {
        self.created_at = created_at.trunc_subsecs(6);
        self
    }

    /// Deserializes the payload into `T`.
    ///
    /// ```
    /// # use es_store::Event;
    /// #[derive(serde::Deserialize)]
    /// struct Deposited { amount: i64 }
    ///
    /// let event = Event::new("Billing", "Account", "acc-1", "Deposited", &serde_json::json!({"amount": 5}))?;
    /// assert_eq!(event.payload_as::<Deposited>()?.amount, 5);
    /// # Ok::<(), es_store::Error>(())
    /// ```
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_str(self.payload.get()).map_err(Error::Serialization)
    }

    /// The aggregate this event belongs to.
    pub fn aggregate(&self) -> AggregateRef<'_> {
        AggregateRef {
            bounded_context: &self.bounded_context,
            aggregate_type: &self.aggregate_type,
            aggregate_id: &self.aggregate_id,
        }
    }
}

/// Serializes `value` to raw JSON text.
pub(crate) fn to_raw<T: Serialize + ?Sized>(value: &T) -> Result<Box<RawValue>> {
    serde_json::value::to_raw_value(value).map_err(Error::Serialization)
}

/// `{}` as raw JSON.
pub(crate) fn empty_object() -> Box<RawValue> {
    RawValue::from_string("{}".to_owned()).expect("`{}` is valid JSON")
}

/// The current time at the precision the store keeps.
pub(crate) fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}
