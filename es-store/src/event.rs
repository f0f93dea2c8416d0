//! The values that go into the store and come out of it.

use std::ops::Deref;

use chrono::{DateTime, SubsecRound, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::{Error, Result};

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

/// Borrowed identity of one aggregate instance: bounded context, type and id.
///
/// The store's methods that read, lock or load one aggregate take any
/// [`AsAggregateRef`]: an `AggregateRef`, an [`AggregateKey`] (by value or
/// by reference), or a tuple of the three names.
///
/// ```
/// use es_store::{AggregateKey, AggregateRef, Event};
///
/// let event = Event::new("Billing", "Account", "acc-1", "Opened", &serde_json::json!({}))?;
/// assert_eq!(event.aggregate().to_string(), "Billing/Account/acc-1");
///
/// let id = String::from("acc-1");
/// assert_eq!(AggregateRef::from(("Billing", "Account", &id)), event.aggregate());
/// let key = AggregateKey::new("Billing", "Account", "acc-1");
/// assert_eq!(AggregateRef::from(&key), event.aggregate());
/// # Ok::<(), es_store::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AggregateRef<'a> {
    /// The bounded context.
    pub bounded_context: &'a str,
    /// The aggregate type.
    pub aggregate_type: &'a str,
    /// The aggregate id.
    pub aggregate_id: &'a str,
}

impl<'a> AggregateRef<'a> {
    /// Names an aggregate instance.
    ///
    /// ```
    /// use es_store::AggregateRef;
    /// const ACCOUNT: AggregateRef<'static> = AggregateRef::new("Billing", "Account", "acc-1");
    /// assert_eq!(ACCOUNT.aggregate_id, "acc-1");
    /// ```
    pub const fn new(
        bounded_context: &'a str,
        aggregate_type: &'a str,
        aggregate_id: &'a str,
    ) -> Self {
        Self {
            bounded_context,
            aggregate_type,
            aggregate_id,
        }
    }

    /// An owned copy.
    ///
    /// ```
    /// use es_store::{AggregateKey, AggregateRef};
    /// let key = AggregateRef::new("Billing", "Account", "acc-1").to_owned();
    /// assert_eq!(key, AggregateKey::new("Billing", "Account", "acc-1"));
    /// ```
    pub fn to_owned(&self) -> AggregateKey {
        AggregateKey {
            bounded_context: self.bounded_context.to_owned(),
            aggregate_type: self.aggregate_type.to_owned(),
            aggregate_id: self.aggregate_id.to_owned(),
        }
    }
}

/// `(bounded_context, aggregate_type, aggregate_id)`, each borrowed as
/// `str`: `("Billing", "Account", "acc-1")`, or `&String`s.
impl<'a, B, T, I> From<(&'a B, &'a T, &'a I)> for AggregateRef<'a>
where
    B: AsRef<str> + ?Sized,
    T: AsRef<str> + ?Sized,
    I: AsRef<str> + ?Sized,
{
    fn from((bounded_context, aggregate_type, aggregate_id): (&'a B, &'a T, &'a I)) -> Self {
        Self::new(
            bounded_context.as_ref(),
            aggregate_type.as_ref(),
            aggregate_id.as_ref(),
        )
    }
}

/// Borrows the key, as [`AggregateKey::as_ref`].
impl<'a> From<&'a AggregateKey> for AggregateRef<'a> {
    fn from(key: &'a AggregateKey) -> Self {
        key.as_ref()
    }
}

impl std::fmt::Display for AggregateRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}/{}",
            self.bounded_context, self.aggregate_type, self.aggregate_id
        )
    }
}

/// Owned identity of one aggregate instance, as carried by errors.
///
/// ```
/// use es_store::AggregateKey;
/// let key = AggregateKey::new("Billing", "Account", "acc-1");
/// assert_eq!(key.to_string(), "Billing/Account/acc-1");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AggregateKey {
    /// The bounded context.
    pub bounded_context: String,
    /// The aggregate type.
    pub aggregate_type: String,
    /// The aggregate id.
    pub aggregate_id: String,
}

impl AggregateKey {
    /// Builds a key.
    pub fn new(
        bounded_context: impl Into<String>,
        aggregate_type: impl Into<String>,
        aggregate_id: impl Into<String>,
    ) -> Self {
        Self {
            bounded_context: bounded_context.into(),
            aggregate_type: aggregate_type.into(),
            aggregate_id: aggregate_id.into(),
        }
    }

    /// Borrows the key.
    pub fn as_ref(&self) -> AggregateRef<'_> {
        AggregateRef {
            bounded_context: &self.bounded_context,
            aggregate_type: &self.aggregate_type,
            aggregate_id: &self.aggregate_id,
        }
    }
}

impl std::fmt::Display for AggregateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_ref().fmt(f)
    }
}

/// What names one aggregate instance, as the store's methods take it:
/// `(bounded_context, aggregate_type, aggregate_id)` as a tuple of anything
/// that borrows as `str` (`("Billing", "Account", "acc-1")`, `&String`s,
/// `String`s), an [`AggregateRef`], an [`AggregateKey`], or a reference to
/// any of them.
///
/// ```
/// use es_store::{AggregateKey, AggregateRef, AsAggregateRef};
///
/// fn describe(aggregate: impl AsAggregateRef) -> String {
///     aggregate.as_aggregate_ref().to_string()
/// }
/// let id = String::from("acc-1");
/// assert_eq!(describe(("Billing", "Account", &id)), "Billing/Account/acc-1");
/// let key = AggregateKey::new("Billing", "Account", "acc-1");
/// assert_eq!(describe(&key), "Billing/Account/acc-1");
/// assert_eq!(describe(key.as_ref()), "Billing/Account/acc-1");
/// ```
///
/// It borrows the names from `self` instead of converting `self` into an
/// `AggregateRef` (as `Into<AggregateRef<'a>>` would), so that no bound
/// ties the argument's lifetimes to another: futures of generic code that
/// call the store stay provably `Send`.
pub trait AsAggregateRef {
    /// The aggregate's names, borrowed from `self`.
    fn as_aggregate_ref(&self) -> AggregateRef<'_>;
}

impl AsAggregateRef for AggregateRef<'_> {
    fn as_aggregate_ref(&self) -> AggregateRef<'_> {
        *self
    }
}

impl AsAggregateRef for AggregateKey {
    fn as_aggregate_ref(&self) -> AggregateRef<'_> {
        self.as_ref()
    }
}

impl<A: AsAggregateRef + ?Sized> AsAggregateRef for &A {
    fn as_aggregate_ref(&self) -> AggregateRef<'_> {
        (**self).as_aggregate_ref()
    }
}

/// `(bounded_context, aggregate_type, aggregate_id)`.
impl<B, T, I> AsAggregateRef for (B, T, I)
where
    B: AsRef<str>,
    T: AsRef<str>,
    I: AsRef<str>,
{
    fn as_aggregate_ref(&self) -> AggregateRef<'_> {
        AggregateRef::new(self.0.as_ref(), self.1.as_ref(), self.2.as_ref())
    }
}

/// An event as stored: the [`Event`] plus the version the store gave it within
/// its aggregate and its position in the global feed.
///
/// It dereferences to the [`Event`], so `persisted.event_type` works.
///
/// ```
/// # use es_store::{Event, PersistedEvent};
/// let event = Event::new("Billing", "Account", "acc-1", "Opened", &serde_json::json!({}))?;
/// let persisted = PersistedEvent::new(event, 1, 42);
/// assert_eq!((persisted.aggregate_version, persisted.global_position), (1, 42));
/// assert_eq!(persisted.event_type, "Opened");
/// # Ok::<(), es_store::Error>(())
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PersistedEvent {
    /// The event as appended.
    pub event: Event,
    /// 1 for the aggregate's first event, then consecutive.
    pub aggregate_version: i64,
    /// Position in the store-wide feed: increasing, with possible holes.
    pub global_position: i64,
}

impl PersistedEvent {
    /// Pairs an event with its stored version and position.
    pub fn new(event: Event, aggregate_version: i64, global_position: i64) -> Self {
        Self {
            event,
            aggregate_version,
            global_position,
        }
    }
}

impl Deref for PersistedEvent {
    type Target = Event;

    fn deref(&self) -> &Event {
        &self.event
    }
}

/// The events of one aggregate instance, in version order.
///
/// ```
/// # use es_store::Stream;
/// let stream = Stream::new("Billing", "Account", "acc-1", Vec::new());
/// assert!(stream.is_empty());
/// assert_eq!(stream.version(), 0);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Stream {
    /// The bounded context.
    pub bounded_context: String,
    /// The aggregate type.
    pub aggregate_type: String,
    /// The aggregate id.
    pub aggregate_id: String,
    /// The events, ordered by `aggregate_version`.
    pub events: Vec<PersistedEvent>,
}

impl Stream {
    /// Builds a stream from events already in version order.
    pub fn new(
        bounded_context: impl Into<String>,
        aggregate_type: impl Into<String>,
        aggregate_id: impl Into<String>,
        events: Vec<PersistedEvent>,
    ) -> Self {
        Self {
            bounded_context: bounded_context.into(),
            aggregate_type: aggregate_type.into(),
            aggregate_id: aggregate_id.into(),
            events,
        }
    }

    /// The version of the last event read, or 0 when no event was read.
    ///
    /// For a read without an upper bound this is the aggregate's current version.
    pub fn version(&self) -> i64 {
        self.events.last().map_or(0, |e| e.aggregate_version)
    }

    /// Whether no event matched.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// How many events were read.
    pub fn len(&self) -> usize {
        self.events.len()
    }
}

/// What a successful append stored.
///
/// ```
/// # use es_store::{AppendResult, Event, PersistedEvent};
/// let event = Event::new("Billing", "Account", "acc-1", "Opened", &serde_json::json!({}))?;
/// let result = AppendResult::new(vec![PersistedEvent::new(event, 1, 7)]);
/// assert_eq!((result.from_version(), result.to_version()), (1, 1));
/// assert_eq!(result.global_positions, vec![7]);
/// assert!(!result.replayed);
/// # Ok::<(), es_store::Error>(())
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AppendResult {
    /// The stored events with their versions and positions, in append order.
    pub events: Vec<PersistedEvent>,
    /// The global position of each event, in append order.
    pub global_positions: Vec<i64>,
    /// Whether the batch was stored before this append (the same event ids
    /// and content, by an earlier append whose reply was lost or by a
    /// concurrent one), so that this append wrote nothing and returns what
    /// is stored. The events' versions are then the stored ones, which need
    /// not follow the version this append expected.
    pub replayed: bool,
}

impl AppendResult {
    /// Builds a result from persisted events (at least one).
    pub fn new(events: Vec<PersistedEvent>) -> Self {
        let global_positions = events.iter().map(|e| e.global_position).collect();
        Self {
            events,
            global_positions,
            replayed: false,
        }
    }

    /// The version of the first appended event.
    pub fn from_version(&self) -> i64 {
        self.events.first().map_or(0, |e| e.aggregate_version)
    }

    /// The version of the last appended event: the aggregate's new version.
    pub fn to_version(&self) -> i64 {
        self.events.last().map_or(0, |e| e.aggregate_version)
    }
}

/// The optimistic-concurrency condition of an append.
///
/// ```
/// use es_store::ExpectedVersion;
/// assert!(ExpectedVersion::Exact(3).matches(3));
/// assert!(ExpectedVersion::NoStream.matches(0));
/// assert!(!ExpectedVersion::NoStream.matches(1));
/// assert!(ExpectedVersion::Any.matches(12));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExpectedVersion {
    /// No check: the events go after whatever the aggregate holds.
    Any,
    /// The aggregate must not exist yet: used to create it.
    NoStream,
    /// The aggregate must be at exactly this version (0 is the same as `NoStream`).
    Exact(i64),
}

impl ExpectedVersion {
    /// Whether an aggregate at `current` version satisfies the condition.
    pub fn matches(self, current: i64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current == 0,
            ExpectedVersion::Exact(v) => current == v,
        }
    }

    /// `NoStream` for version 0, `Exact(version)` otherwise: what a
    /// repository passes after loading an aggregate at `version`.
    ///
    /// ```
    /// # use es_store::ExpectedVersion;
    /// assert_eq!(ExpectedVersion::at(0), ExpectedVersion::NoStream);
    /// assert_eq!(ExpectedVersion::at(4), ExpectedVersion::Exact(4));
    /// ```
    pub fn at(version: i64) -> Self {
        if version == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(version)
        }
    }
}

impl std::fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any version"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::Exact(v) => write!(f, "version {v}"),
        }
    }
}

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
