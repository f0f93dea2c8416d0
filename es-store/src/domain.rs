//! Typed domain events: the [`DomainEvent`] trait that `#[derive(DomainEvent)]`
//! (in the `es` facade) implements, and the errors of decoding stored events.
//!
//! A domain event enum knows its bounded context and aggregate type, the
//! name and current schema version of each of its event types, how to encode
//! itself into a store payload, and how to decode a stored payload, upcasting
//! older schema versions to the current one.

use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use crate::{Error, Event, Metadata, PersistedEvent};

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

/// Why a stored event could not be decoded into a [`DomainEvent`].
///
/// ```
/// use es_store::DecodeError;
///
/// fn needs_newer_code(error: &DecodeError) -> bool {
///     matches!(error, DecodeError::UnsupportedVersion { .. })
/// }
/// let error = DecodeError::UnsupportedVersion { event_type: "MoneyDeposited".into(), version: 3, current: 2 };
/// assert!(needs_newer_code(&error));
/// assert_eq!(
///     error.to_string(),
///     "event `MoneyDeposited` has schema version 3, newer than version 2, the newest this code knows",
/// );
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The event type is not one of the enum's.
    #[error("unknown event type `{event_type}` for {bounded_context}/{aggregate_type}")]
    UnknownEventType {
        /// The bounded context of the enum.
        bounded_context: &'static str,
        /// The aggregate type of the enum.
        aggregate_type: &'static str,
        /// The stored event type.
        event_type: String,
    },

    /// The event was written at a schema version newer than the code knows:
    /// it was written by a newer release.
    #[error(
        "event `{event_type}` has schema version {version}, newer than version {current}, the newest this code knows"
    )]
    UnsupportedVersion {
        /// The event type.
        event_type: String,
        /// The stored schema version.
        version: i32,
        /// The current schema version of the type.
        current: i32,
    },

    /// The event was written at an older schema version than the current one
    /// and no upcast leads from that version to the current one.
    #[error(
        "event `{event_type}` has schema version {version}, older than the current version {current}, and no upcast from version {version} is declared"
    )]
    MissingUpcast {
        /// The event type.
        event_type: String,
        /// The stored schema version.
        version: i32,
        /// The current schema version of the type.
        current: i32,
    },

    /// The payload does not fit the event type: a missing field, a value of
    /// the wrong type, JSON that is not an object...
    #[error(
        "payload of event `{event_type}` version {version}{} does not fit{}: {source}",
        upcast_note(*.upcast_to),
        field_note(.field.as_deref()),
    )]
    InvalidPayload {
        /// The event type.
        event_type: String,
        /// The stored schema version.
        version: i32,
        /// The current version, when the payload was stored at an older
        /// version and failed after being upcast to the current one.
        upcast_to: Option<i32>,
        /// Where in the payload the error is, as a path like `amount` or
        /// `lines[2].sku`, when it is inside a field.
        field: Option<String>,
        /// What serde_json reported.
        #[source]
        source: serde_json::Error,
    },

    /// The event belongs to another bounded context or aggregate type.
    #[error(
        "an event of {bounded_context}/{aggregate_type} cannot be decoded as an event of {expected_bounded_context}/{expected_aggregate_type}"
    )]
    WrongAggregate {
        /// The bounded context of the enum.
        expected_bounded_context: &'static str,
        /// The aggregate type of the enum.
        expected_aggregate_type: &'static str,
        /// The event's bounded context.
        bounded_context: String,
        /// The event's aggregate type.
        aggregate_type: String,
    },
}

fn upcast_note(upcast_to: Option<i32>) -> String {
    upcast_to.map_or_else(String::new, |v| format!(" (upcast to version {v})"))
}

fn field_note(field: Option<&str>) -> String {
    field.map_or_else(String::new, |f| format!(" at `{f}`"))
}

impl DecodeError {
    /// An [`InvalidPayload`](DecodeError::InvalidPayload) error for a payload
    /// stored at the current version, without the field at fault (see
    /// [`invalid_payload_in`](DecodeError::invalid_payload_in), which names it).
    ///
    /// ```
    /// use es_store::DecodeError;
    ///
    /// #[derive(Debug, serde::Deserialize)]
    /// struct Deposited { #[allow(dead_code)] amount: i64 }
    ///
    /// let payload = r#"{"amount":"ten"}"#;
    /// let source = serde_json::from_str::<Deposited>(payload).unwrap_err();
    /// let error = DecodeError::invalid_payload("MoneyDeposited", 2, source);
    /// assert!(matches!(&error, DecodeError::InvalidPayload { field: None, .. }));
    ///
    /// // With the payload text, the error names the field.
    /// let source = serde_json::from_str::<Deposited>(payload).unwrap_err();
    /// let error = DecodeError::invalid_payload_in::<Deposited>("MoneyDeposited", 2, payload, source);
    /// assert_eq!(
    ///     error.to_string(),
    ///     r#"payload of event `MoneyDeposited` version 2 does not fit at `amount`: invalid type: string "ten", expected i64 at line 1 column 15"#,
    /// );
    /// ```
    pub fn invalid_payload(
        event_type: impl Into<String>,
        version: i32,
        source: serde_json::Error,
    ) -> Self {
        DecodeError::InvalidPayload {
            event_type: event_type.into(),
            version,
            upcast_to: None,
            field: None,
            source,
        }
    }

    /// Like [`invalid_payload`](DecodeError::invalid_payload), given the
    /// payload text the error came from and the type it was decoded into,
    /// so that the error names the field at fault.
    ///
    /// The payload is decoded into `T` again, this time tracking the path
    /// (with `serde_path_to_error`): call it only once decoding has failed,
    /// so that decoding that succeeds pays nothing for it. The error kept
    /// is `source`.
    ///
    /// ```
    /// # use es_store::DecodeError;
    /// # use std::collections::HashMap;
    /// type Order = HashMap<String, Vec<HashMap<String, String>>>;
    ///
    /// let payload = r#"{"lines":[{"sku":"A"},{"sku":7}]}"#;
    /// let source = serde_json::from_str::<Order>(payload).unwrap_err();
    /// let error = DecodeError::invalid_payload_in::<Order>("OrderPlaced", 1, payload, source);
    /// assert!(matches!(error, DecodeError::InvalidPayload { field: Some(f), .. } if f == "lines[1].sku"));
    /// ```
    pub fn invalid_payload_in<T: DeserializeOwned>(
        event_type: impl Into<String>,
        version: i32,
        payload: &str,
        source: serde_json::Error,
    ) -> Self {
        let mut deserializer = serde_json::Deserializer::from_str(payload);
        let field = serde_path_to_error::deserialize::<_, T>(&mut deserializer)
            .err()
            .and_then(|located| field_path(located.path()));
        DecodeError::InvalidPayload {
            event_type: event_type.into(),
            version,
            upcast_to: None,
            field,
            source,
        }
    }
}

/// The path of the field a decoding error was raised in: `amount`,
/// `address.city`, `lines[2]`. `None` at the top level (the payload is not
/// an object, or a top-level field is missing: serde's message names the
/// missing field).
fn field_path(path: &serde_path_to_error::Path) -> Option<String> {
    // An empty path displays as `.`.
    (path.iter().next().is_some()).then(|| path.to_string())
}

/// What generated code calls. Not public API: it may change in any release.
#[doc(hidden)]
pub mod __private {
    pub use crate::{DecodeError, DomainEvent, EventTypeInfo};
    pub use serde;
    pub use serde_json;
    pub use serde_json::Value;
    pub use serde_json::value::RawValue;

    use serde::de::DeserializeOwned;

    /// One step of an upcast chain: turns a payload of version `from` into
    /// one of version `from + 1`.
    #[derive(Clone, Copy)]
    pub struct Upcast {
        /// The version the step reads.
        pub from: i32,
        /// The conversion.
        pub with: fn(Value) -> Value,
    }

    /// Decodes the payload of one event type whose current version is
    /// `current`, upcasting older versions through `upcasts`.
    pub fn decode_payload<T: DeserializeOwned>(
        event_type: &'static str,
        current: i32,
        upcasts: &[Upcast],
        version: i32,
        payload: &str,
    ) -> Result<T, DecodeError> {
        super::decode_payload(event_type, current, upcasts, version, payload)
    }

    /// The error for an event type the enum does not have.
    pub fn unknown_event_type(
        bounded_context: &'static str,
        aggregate_type: &'static str,
        event_type: &str,
    ) -> DecodeError {
        DecodeError::UnknownEventType {
            bounded_context,
            aggregate_type,
            event_type: event_type.to_owned(),
        }
    }

    /// What the payload of a unit variant decodes into: any JSON object.
    #[derive(serde::Deserialize)]
    #[serde(expecting = "a JSON object")]
    pub struct UnitPayload {}

    /// `{}`, the payload of a unit variant.
    pub fn empty_object() -> Box<RawValue> {
        crate::event::empty_object()
    }

    /// Checks that a newtype variant's payload is a JSON object.
    pub fn expect_object(
        event_type: &'static str,
        payload: Box<RawValue>,
    ) -> Result<Box<RawValue>, serde_json::Error> {
        if payload.get().starts_with('{') {
            Ok(payload)
        } else {
            Err(<serde_json::Error as serde::ser::Error>::custom(
                format_args!(
                    "the payload of event `{event_type}` must be a JSON object, but its newtype variant's field serialized to `{}`",
                    payload.get(),
                ),
            ))
        }
    }
}

fn decode_payload<T: DeserializeOwned>(
    event_type: &'static str,
    current: i32,
    upcasts: &[__private::Upcast],
    version: i32,
    payload: &str,
) -> Result<T, DecodeError> {
    if version == current {
        // The hot path: straight from the stored text, no intermediate value.
        return serde_json::from_str(payload).map_err(|source| {
            DecodeError::invalid_payload_in::<T>(event_type, version, payload, source)
        });
    }
    if version > current {
        return Err(DecodeError::UnsupportedVersion {
            event_type: event_type.to_owned(),
            version,
            current,
        });
    }
    let missing = || DecodeError::MissingUpcast {
        event_type: event_type.to_owned(),
        version,
        current,
    };
    let mut steps = Vec::new();
    for from in version..current {
        steps.push(
            upcasts
                .iter()
                .find(|u| u.from == from)
                .ok_or_else(missing)?,
        );
    }
    let mut value: serde_json::Value = serde_json::from_str(payload).map_err(|source| {
        DecodeError::invalid_payload_in::<serde_json::Value>(event_type, version, payload, source)
    })?;
    for step in steps {
        value = (step.with)(value);
    }
    T::deserialize(&value).map_err(|source| {
        // Decode the upcast value again, tracking the path, to name the
        // field at fault.
        let field = serde_path_to_error::deserialize::<_, T>(&value)
            .err()
            .and_then(|located| field_path(located.path()));
        DecodeError::InvalidPayload {
            event_type: event_type.to_owned(),
            version,
            upcast_to: Some(current),
            field,
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Address {
        city: String,
        zip: String,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Customer {
        name: String,
        address: Address,
        tags: Vec<u32>,
    }

    fn path_of(text: &str) -> Option<String> {
        path_in::<Customer>(text)
    }

    fn path_in<T: DeserializeOwned + std::fmt::Debug>(text: &str) -> Option<String> {
        let error = serde_json::from_str::<T>(text).unwrap_err();
        match DecodeError::invalid_payload_in::<T>("E", 1, text, error) {
            DecodeError::InvalidPayload { field, .. } => field,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn error_paths_name_the_field_at_fault() {
        let ok_address = r#"{"city":"Oslo","zip":"0150"}"#;
        assert_eq!(
            path_of(&format!(r#"{{"name":1,"address":{ok_address},"tags":[]}}"#)),
            Some("name".to_owned())
        );
        assert_eq!(
            path_of(r#"{"name":"a","address":{"city":"Oslo","zip":7},"tags":[]}"#),
            Some("address.zip".to_owned())
        );
        assert_eq!(
            path_of(&format!(
                r#"{{"name":"a","address":{ok_address},"tags":[1,2,"x"]}}"#
            )),
            Some("tags[2]".to_owned())
        );
        assert_eq!(
            path_of(&format!(
                r#"{{"name":"a","address":{ok_address},"tags":[],"extra":1}}"#
            )),
            Some("extra".to_owned())
        );
        // A missing field is named by serde's message, not by the path.
        assert_eq!(
            path_of(r#"{"name":"a","address":{"city":"Oslo"},"tags":[]}"#),
            Some("address".to_owned())
        );
        assert_eq!(
            path_of(&format!(r#"{{"name":"a","address":{ok_address}}}"#)),
            None
        );
        assert_eq!(path_of("[]"), None);
        assert_eq!(path_of("17"), None);
    }

    #[test]
    fn error_paths_follow_lines_escapes_and_wide_characters() {
        let text = "{\n  \"name\": \"Ærø \\\"x\\\"\",\n  \"address\": {\"city\": \"Å\", \"zip\": false},\n  \"tags\": []\n}";
        assert_eq!(path_of(text), Some("address.zip".to_owned()));
        let text = r#"{"na\"me":1}"#;
        assert_eq!(
            path_in::<std::collections::HashMap<String, String>>(text),
            Some("na\"me".to_owned())
        );
    }

    #[test]
    fn upcast_payloads_name_the_field_at_fault() {
        fn add_tags(mut value: serde_json::Value) -> serde_json::Value {
            value["tags"] = serde_json::json!([1, "two"]);
            value
        }
        let upcasts = [__private::Upcast {
            from: 1,
            with: add_tags,
        }];
        let payload = r#"{"name":"a","address":{"city":"Oslo","zip":"0150"}}"#;
        let error = decode_payload::<Customer>("E", 2, &upcasts, 1, payload).unwrap_err();
        assert!(
            matches!(
                &error,
                DecodeError::InvalidPayload { upcast_to: Some(2), field: Some(f), .. } if f == "tags[1]"
            ),
            "{error:?}"
        );
    }

    #[test]
    fn syntax_errors_name_where_they_are() {
        assert_eq!(
            path_of(r#"{"name":"a","address":{"city":tru"#),
            Some("address.city".to_owned())
        );
    }
}
