//! Typed domain events: the [`DomainEvent`] trait that `#[derive(DomainEvent)]`
//! (in the `es` facade) implements, and the errors of decoding stored events.
//!
//! A domain event enum knows its bounded context and aggregate type, the
//! name and current schema version of each of its event types, how to encode
//! itself into a store payload, and how to decode a stored payload, upcasting
//! older schema versions to the current one.

use serde_json::value::RawValue;

use crate::{Error, Event, Metadata, PersistedEvent};

mod error;
mod private;

pub use error::DecodeError;
pub use private::__private;

/// One event type of a [`DomainEvent`] enum: its name in the store and its
/// current payload schema version.
///
/// ```
/// use es_store::EventTypeInfo;
///
/// const DEPOSITED: EventTypeInfo = EventTypeInfo::new("MoneyDeposited", 2);
/// assert_eq!((DEPOSITED.name, DEPOSITED.version), ("MoneyDeposited", 2));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventTypeInfo {
    /// The event type name, stored as the event's `event_type`.
    pub name: &'static str,
    /// The schema version the code writes, stored as the event's `event_version`.
    pub version: i32,
}

impl EventTypeInfo {
    /// Names an event type at a version.
    ///
    /// ```
    /// # use es_store::EventTypeInfo;
    /// assert_eq!(EventTypeInfo::new("Opened", 1), EventTypeInfo { name: "Opened", version: 1 });
    /// ```
    pub const fn new(name: &'static str, version: i32) -> Self {
        Self { name, version }
    }
}

/// A typed event of one aggregate type: usually an enum with one variant per
/// event type, implemented with `#[derive(DomainEvent)]` from the `es` crate.
///
/// The payload of an event is the variant's fields as a JSON object (the
/// event type is stored in a column of its own, so the payload carries no
/// tag). [`decode`](DomainEvent::decode) reads a payload stored at any schema
/// version the type still supports: the current one directly, older ones
/// through the type's upcasts.
///
/// The provided methods turn events into store [`Event`]s and back:
///
/// ```
/// use es_store::{DecodeError, DomainEvent, EventTypeInfo, Metadata, PersistedEvent};
/// use serde_json::value::RawValue;
///
/// // What `#[derive(DomainEvent)]` writes for you, by hand.
/// #[derive(Debug, PartialEq)]
/// enum AccountEvent {
///     Deposited { amount: i64 },
/// }
///
/// impl DomainEvent for AccountEvent {
///     const BOUNDED_CONTEXT: &'static str = "Billing";
///     const AGGREGATE_TYPE: &'static str = "Account";
///     const EVENT_TYPES: &'static [EventTypeInfo] = &[EventTypeInfo::new("MoneyDeposited", 1)];
///
///     fn event_type(&self) -> &'static str { "MoneyDeposited" }
///     fn event_version(&self) -> i32 { 1 }
///
///     fn encode(&self) -> Result<Box<RawValue>, serde_json::Error> {
///         let Self::Deposited { amount } = self;
///         serde_json::value::to_raw_value(&serde_json::json!({ "amount": amount }))
///     }
///
///     fn decode_json(event_type: &str, event_version: i32, payload: &str) -> Result<Self, DecodeError> {
///         #[derive(serde::Deserialize)]
///         struct Deposited { amount: i64 }
///         match (event_type, event_version) {
///             ("MoneyDeposited", 1) => serde_json::from_str::<Deposited>(payload)
///                 .map(|p| Self::Deposited { amount: p.amount })
///                 .map_err(|source| DecodeError::invalid_payload(event_type, event_version, source)),
///             _ => Err(DecodeError::UnknownEventType {
///                 bounded_context: Self::BOUNDED_CONTEXT,
///                 aggregate_type: Self::AGGREGATE_TYPE,
///                 event_type: event_type.to_owned(),
///             }),
///         }
///     }
/// }
///
/// let metadata = Metadata::new().with_correlation_id(uuid::Uuid::now_v7());
/// let events = AccountEvent::to_events(
///     &[AccountEvent::Deposited { amount: 5 }, AccountEvent::Deposited { amount: 7 }],
///     "acc-1",
///     &metadata,
/// )?;
/// assert_eq!(events[1].event_type, "MoneyDeposited");
/// assert_eq!(events[1].payload.get(), r#"{"amount":7}"#);
/// assert_eq!(events[1].correlation_id, metadata.correlation_id);
///
/// // What the store gives back decodes into the enum again.
/// let stored = PersistedEvent::new(events[1].clone(), 2, 2);
/// assert_eq!(AccountEvent::from_persisted(&stored)?, AccountEvent::Deposited { amount: 7 });
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait DomainEvent: Sized + Send + Sync + 'static {
    /// The bounded context of the aggregate these events belong to.
    const BOUNDED_CONTEXT: &'static str;
    /// The aggregate type these events belong to.
    const AGGREGATE_TYPE: &'static str;
    /// Every event type, each with its current schema version.
    const EVENT_TYPES: &'static [EventTypeInfo];

    /// The name of this event's type, stored as `event_type`.
    fn event_type(&self) -> &'static str;

    /// The current schema version of this event's type, stored as `event_version`.
    fn event_version(&self) -> i32;

    /// Encodes the event's data as its payload: a JSON object.
    fn encode(&self) -> Result<Box<RawValue>, serde_json::Error>;

    /// Decodes a payload stored as `event_type` at schema version `event_version`.
    ///
    /// Fails with [`DecodeError::UnknownEventType`] for a type this enum does
    /// not have, [`DecodeError::UnsupportedVersion`] for a version newer than
    /// the current one, [`DecodeError::MissingUpcast`] for an older version
    /// that no upcast starts from, and [`DecodeError::InvalidPayload`] when
    /// the payload does not fit the type.
    fn decode(
        event_type: &str,
        event_version: i32,
        payload: &RawValue,
    ) -> Result<Self, DecodeError> {
        Self::decode_json(event_type, event_version, payload.get())
    }

    /// Like [`decode`](DomainEvent::decode), from JSON text that has not
    /// been checked yet (the check is the parse itself). This is the method
    /// implementations provide; it lets a store hand its rows' text over
    /// without parsing it twice.
    fn decode_json(
        event_type: &str,
        event_version: i32,
        payload: &str,
    ) -> Result<Self, DecodeError>;

    /// Makes a store [`Event`] of this event for the aggregate `aggregate_id`,
    /// stamped with `metadata` (correlation, causation and trace ids, fields).
    ///
    /// Each call gives the event a fresh id. Fails with
    /// [`Error::Serialization`] when the payload cannot be encoded.
    ///
    /// ```
    /// # use es_store::{DecodeError, DomainEvent, EventTypeInfo, Event, Metadata, PersistedEvent};
    /// # use serde_json::value::RawValue;
    /// # #[derive(Debug, PartialEq)]
    /// # struct Deposited { amount: i64 }
    /// # impl DomainEvent for Deposited {
    /// #     const BOUNDED_CONTEXT: &'static str = "Billing";
    /// #     const AGGREGATE_TYPE: &'static str = "Account";
    /// #     const EVENT_TYPES: &'static [EventTypeInfo] = &[EventTypeInfo::new("MoneyDeposited", 2)];
    /// #     fn event_type(&self) -> &'static str { "MoneyDeposited" }
    /// #     fn event_version(&self) -> i32 { 2 }
    /// #     fn encode(&self) -> Result<Box<RawValue>, serde_json::Error> {
    /// #         serde_json::value::to_raw_value(&serde_json::json!({ "amount": self.amount }))
    /// #     }
    /// #     fn decode_json(event_type: &str, version: i32, payload: &str) -> Result<Self, DecodeError> {
    /// #         #[derive(serde::Deserialize)]
    /// #         struct Payload { amount: i64 }
    /// #         serde_json::from_str::<Payload>(payload)
    /// #             .map(|p| Deposited { amount: p.amount })
    /// #             .map_err(|e| DecodeError::invalid_payload_in::<Payload>(event_type, version, payload, e))
    /// #     }
    /// # }
    /// let metadata = Metadata::new().with_causation_id(uuid::Uuid::now_v7());
    /// let event = Deposited { amount: 5 }.to_event("acc-1", &metadata)?;
    /// assert_eq!(event.aggregate().to_string(), "Billing/Account/acc-1");
    /// assert_eq!((event.event_type.as_str(), event.event_version), ("MoneyDeposited", 2));
    /// assert_eq!(event.payload.get(), r#"{"amount":5}"#);
    /// assert_eq!(event.causation_id, metadata.causation_id);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn to_event(&self, aggregate_id: &str, metadata: &Metadata) -> crate::Result<Event> {
        let payload = self.encode().map_err(Error::Serialization)?;
        let event = Event::from_raw(
            Self::BOUNDED_CONTEXT,
            Self::AGGREGATE_TYPE,
            aggregate_id,
            self.event_type(),
            payload,
        )
        .with_event_version(self.event_version());
        metadata.stamp(event)
    }

    /// Makes store [`Event`]s of a batch of events of one aggregate, in order,
    /// each as [`to_event`](DomainEvent::to_event) does. With a
    /// [`Metadata::command_id`], event number `i` gets the id
    /// [`CommandId::event_id(i)`](crate::CommandId::event_id), so that
    /// appending the same command's events again is recognised by the
    /// store.
    ///
    /// ```
    /// # use es_store::{DecodeError, DomainEvent, EventTypeInfo, Event, Metadata, PersistedEvent};
    /// # use serde_json::value::RawValue;
    /// # #[derive(Debug, PartialEq)]
    /// # struct Deposited { amount: i64 }
    /// # impl DomainEvent for Deposited {
    /// #     const BOUNDED_CONTEXT: &'static str = "Billing";
    /// #     const AGGREGATE_TYPE: &'static str = "Account";
    /// #     const EVENT_TYPES: &'static [EventTypeInfo] = &[EventTypeInfo::new("MoneyDeposited", 2)];
    /// #     fn event_type(&self) -> &'static str { "MoneyDeposited" }
    /// #     fn event_version(&self) -> i32 { 2 }
    /// #     fn encode(&self) -> Result<Box<RawValue>, serde_json::Error> {
    /// #         serde_json::value::to_raw_value(&serde_json::json!({ "amount": self.amount }))
    /// #     }
    /// #     fn decode_json(event_type: &str, version: i32, payload: &str) -> Result<Self, DecodeError> {
    /// #         #[derive(serde::Deserialize)]
    /// #         struct Payload { amount: i64 }
    /// #         serde_json::from_str::<Payload>(payload)
    /// #             .map(|p| Deposited { amount: p.amount })
    /// #             .map_err(|e| DecodeError::invalid_payload_in::<Payload>(event_type, version, payload, e))
    /// #     }
    /// # }
    /// let batch = [Deposited { amount: 1 }, Deposited { amount: 2 }];
    /// let events = Deposited::to_events(&batch, "acc-1", &Metadata::new())?;
    /// assert_eq!(events.len(), 2);
    /// assert_eq!(events[1].payload.get(), r#"{"amount":2}"#);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn to_events<'a, I>(
        events: I,
        aggregate_id: &str,
        metadata: &Metadata,
    ) -> crate::Result<Vec<Event>>
    where
        I: IntoIterator<Item = &'a Self>,
        Self: 'a,
    {
        events
            .into_iter()
            .enumerate()
            .map(|(index, event)| {
                let stored = event.to_event(aggregate_id, metadata)?;
                Ok(match metadata.command_id {
                    Some(command) => stored.with_event_id(command.event_id(index)),
                    None => stored,
                })
            })
            .collect()
    }

    /// Decodes a store [`Event`], after checking that it belongs to this
    /// bounded context and aggregate type ([`DecodeError::WrongAggregate`]
    /// otherwise).
    ///
    /// ```
    /// # use es_store::{DecodeError, DomainEvent, EventTypeInfo, Event, Metadata, PersistedEvent};
    /// # use serde_json::value::RawValue;
    /// # #[derive(Debug, PartialEq)]
    /// # struct Deposited { amount: i64 }
    /// # impl DomainEvent for Deposited {
    /// #     const BOUNDED_CONTEXT: &'static str = "Billing";
    /// #     const AGGREGATE_TYPE: &'static str = "Account";
    /// #     const EVENT_TYPES: &'static [EventTypeInfo] = &[EventTypeInfo::new("MoneyDeposited", 2)];
    /// #     fn event_type(&self) -> &'static str { "MoneyDeposited" }
    /// #     fn event_version(&self) -> i32 { 2 }
    /// #     fn encode(&self) -> Result<Box<RawValue>, serde_json::Error> {
    /// #         serde_json::value::to_raw_value(&serde_json::json!({ "amount": self.amount }))
    /// #     }
    /// #     fn decode_json(event_type: &str, version: i32, payload: &str) -> Result<Self, DecodeError> {
    /// #         #[derive(serde::Deserialize)]
    /// #         struct Payload { amount: i64 }
    /// #         serde_json::from_str::<Payload>(payload)
    /// #             .map(|p| Deposited { amount: p.amount })
    /// #             .map_err(|e| DecodeError::invalid_payload_in::<Payload>(event_type, version, payload, e))
    /// #     }
    /// # }
    /// let event = Deposited { amount: 5 }.to_event("acc-1", &Metadata::new())?;
    /// assert_eq!(Deposited::from_event(&event)?, Deposited { amount: 5 });
    ///
    /// let foreign = Event::new("Billing", "Invoice", "inv-1", "MoneyDeposited", &serde_json::json!({"amount": 1}))?;
    /// assert!(matches!(Deposited::from_event(&foreign), Err(DecodeError::WrongAggregate { .. })));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn from_event(event: &Event) -> Result<Self, DecodeError> {
        if event.bounded_context != Self::BOUNDED_CONTEXT
            || event.aggregate_type != Self::AGGREGATE_TYPE
        {
            return Err(DecodeError::WrongAggregate {
                expected_bounded_context: Self::BOUNDED_CONTEXT,
                expected_aggregate_type: Self::AGGREGATE_TYPE,
                bounded_context: event.bounded_context.clone(),
                aggregate_type: event.aggregate_type.clone(),
            });
        }
        Self::decode(&event.event_type, event.event_version, &event.payload)
    }

    /// Decodes an event read from the store, as [`from_event`](DomainEvent::from_event) does.
    ///
    /// ```
    /// # use es_store::{DecodeError, DomainEvent, EventTypeInfo, Event, Metadata, PersistedEvent};
    /// # use serde_json::value::RawValue;
    /// # #[derive(Debug, PartialEq)]
    /// # struct Deposited { amount: i64 }
    /// # impl DomainEvent for Deposited {
    /// #     const BOUNDED_CONTEXT: &'static str = "Billing";
    /// #     const AGGREGATE_TYPE: &'static str = "Account";
    /// #     const EVENT_TYPES: &'static [EventTypeInfo] = &[EventTypeInfo::new("MoneyDeposited", 2)];
    /// #     fn event_type(&self) -> &'static str { "MoneyDeposited" }
    /// #     fn event_version(&self) -> i32 { 2 }
    /// #     fn encode(&self) -> Result<Box<RawValue>, serde_json::Error> {
    /// #         serde_json::value::to_raw_value(&serde_json::json!({ "amount": self.amount }))
    /// #     }
    /// #     fn decode_json(event_type: &str, version: i32, payload: &str) -> Result<Self, DecodeError> {
    /// #         #[derive(serde::Deserialize)]
    /// #         struct Payload { amount: i64 }
    /// #         serde_json::from_str::<Payload>(payload)
    /// #             .map(|p| Deposited { amount: p.amount })
    /// #             .map_err(|e| DecodeError::invalid_payload_in::<Payload>(event_type, version, payload, e))
    /// #     }
    /// # }
    /// let event = Deposited { amount: 5 }.to_event("acc-1", &Metadata::new())?;
    /// let stored = PersistedEvent::new(event, 1, 17);
    /// assert_eq!(Deposited::from_persisted(&stored)?, Deposited { amount: 5 });
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn from_persisted(event: &PersistedEvent) -> Result<Self, DecodeError> {
        Self::from_event(&event.event)
    }
}
