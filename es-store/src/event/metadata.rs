//! What a command adds to every event it produces.

use uuid::Uuid;

use super::*;
use crate::Result;

/// What a command adds to every event it produces: correlation and
/// causation ids, a trace id and free JSON fields.
///
/// ```
/// use es_store::{Event, Metadata};
/// use uuid::Uuid;
///
/// let correlation = Uuid::now_v7();
/// let metadata = Metadata::new()
///     .with_correlation_id(correlation)
///     .with_field("user", "alice");
/// let event = metadata.stamp(Event::new("Billing", "Account", "acc-1", "Opened", &serde_json::json!({}))?)?;
/// assert_eq!(event.correlation_id, Some(correlation));
/// assert_eq!(event.metadata.get(), r#"{"user":"alice"}"#);
/// # Ok::<(), es_store::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Metadata {
    /// Set as each event's `correlation_id`.
    pub correlation_id: Option<Uuid>,
    /// Set as each event's `causation_id`.
    pub causation_id: Option<Uuid>,
    /// Set as each event's `trace_id`.
    pub trace_id: Option<String>,
    /// Stored as each event's `metadata` object.
    pub fields: serde_json::Map<String, serde_json::Value>,
    /// The command's id: the events' ids are derived from it
    /// ([`CommandId::event_id`](crate::CommandId::event_id)), by
    /// [`DomainEvent::to_events`](crate::DomainEvent::to_events) and the
    /// repository, which is what makes the command idempotent. Not stored
    /// as a column or field of its own.
    pub command_id: Option<crate::CommandId>,
}

impl Metadata {
    /// No ids, no fields.
    pub fn new() -> Self {
        Self::default()
    }

    /// The metadata of a command caused by `event` (a process manager or a
    /// reaction to it): the same correlation id (the event's own id when it
    /// has none, so that the chain starts there), the event's id as the
    /// causation id and its trace id, so that the whole chain of commands
    /// and events can be followed by one id.
    ///
    /// ```
    /// use es_store::{Metadata, PersistedEvent};
    /// # fn demo(event: &PersistedEvent) {
    /// let metadata = Metadata::caused_by(event);
    /// assert_eq!(metadata.causation_id, Some(event.event_id));
    /// assert_eq!(metadata.correlation_id, Some(event.correlation_id.unwrap_or(event.event_id)));
    /// assert_eq!(metadata.trace_id, event.trace_id);
    /// # }
    /// ```
    pub fn caused_by(event: &PersistedEvent) -> Self {
        Self {
            correlation_id: Some(event.correlation_id.unwrap_or(event.event_id)),
            causation_id: Some(event.event_id),
            trace_id: event.trace_id.clone(),
            ..Self::default()
        }
    }

    /// Sets the correlation id.
    pub fn with_correlation_id(mut self, id: Uuid) -> Self {
        self.correlation_id = Some(id);
        self
    }

    /// Sets the causation id.
    pub fn with_causation_id(mut self, id: Uuid) -> Self {
        self.causation_id = Some(id);
        self
    }

    /// Sets the trace id.
    pub fn with_trace_id(mut self, id: impl Into<String>) -> Self {
        self.trace_id = Some(id.into());
        self
    }

    /// Sets the command id: the events get ids derived from it, so that
    /// the same command run again (a client's retry with the same
    /// `Idempotency-Key`, say) is recognised instead of stored twice.
    ///
    /// ```
    /// use es_store::{CommandId, Metadata};
    ///
    /// let metadata = Metadata::new().with_command_id(CommandId::from_key("order-17"));
    /// assert_eq!(metadata.command_id, Some(CommandId::from_key("order-17")));
    /// ```
    pub fn with_command_id(mut self, id: crate::CommandId) -> Self {
        self.command_id = Some(id);
        self
    }

    /// Adds a free JSON field.
    pub fn with_field(
        mut self,
        key: impl Into<String>,
        value: impl Into<serde_json::Value>,
    ) -> Self {
        self.fields.insert(key.into(), value.into());
        self
    }

    /// Writes the ids and fields onto `event` (fields replace its metadata
    /// when there are any; ids replace its ids when set).
    pub fn stamp(&self, mut event: Event) -> Result<Event> {
        if self.correlation_id.is_some() {
            event.correlation_id = self.correlation_id;
        }
        if self.causation_id.is_some() {
            event.causation_id = self.causation_id;
        }
        if self.trace_id.is_some() {
            event.trace_id.clone_from(&self.trace_id);
        }
        if !self.fields.is_empty() {
            event.metadata = to_raw(&self.fields)?;
        }
        Ok(event)
    }
}
