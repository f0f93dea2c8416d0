//! What comes out of the store: stored events, streams, append results.

use std::ops::Deref;

use super::*;

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
