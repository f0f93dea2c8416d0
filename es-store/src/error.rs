//! The store's error type.

use uuid::Uuid;

use crate::{AggregateKey, ExpectedVersion};

/// Everything the store can refuse or fail with.
///
/// Invalid input is refused before anything is sent to the database, so the
/// caller's transaction stays usable and nothing is written.
///
/// ```
/// use es_store::{Error, ExpectedVersion};
///
/// fn should_retry(error: &Error) -> bool {
///     matches!(error, Error::OptimisticConcurrency { .. })
/// }
/// assert!(!should_retry(&Error::NoEvents));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The aggregate was not at the expected version: somebody else appended
    /// first. Reload and try again.
    #[error("optimistic concurrency conflict on {aggregate}: expected {expected}, {}", match .actual {
        Some(v) => format!("found version {v}"),
        None => "the version changed concurrently".to_owned(),
    })]
    OptimisticConcurrency {
        /// The aggregate appended to.
        aggregate: AggregateKey,
        /// The condition that failed.
        expected: ExpectedVersion,
        /// The aggregate's version when the conflict was seen. `None` when
        /// the conflict was caught by the unique constraint on
        /// (aggregate, version), which aborts the transaction before the
        /// version can be read.
        actual: Option<i64>,
    },

    /// An append was given no events.
    #[error("no events to append")]
    NoEvents,

    /// A name (bounded context, aggregate type, aggregate id, event type or
    /// projection name) is empty.
    #[error("{field} must not be empty{}", at_index(*.index))]
    EmptyName {
        /// Which name.
        field: NameField,
        /// The position of the offending event in the batch, when it is one.
        index: Option<usize>,
    },

    /// One append held events of more than one aggregate instance.
    #[error(
        "all events of one append must belong to one aggregate: event {index} is for {found}, event 0 for {expected}"
    )]
    MixedAggregates {
        /// The aggregate of the first event.
        expected: Box<AggregateKey>,
        /// The aggregate of the offending event.
        found: Box<AggregateKey>,
        /// The position of the offending event in the batch.
        index: usize,
    },

    /// A version (an expected version or a read bound) is negative.
    #[error("{what} must not be negative, got {value}")]
    NegativeVersion {
        /// Which parameter.
        what: &'static str,
        /// The value given.
        value: i64,
    },

    /// An event's payload schema version is below 1.
    #[error("event_version must be at least 1, got {value}{}", at_index(Some(*.index)))]
    InvalidEventVersion {
        /// The value given.
        value: i32,
        /// The position of the offending event in the batch.
        index: usize,
    },

    /// A read's lower bound is above its upper bound.
    #[error("from_version {from} is greater than to_version {to}")]
    InvalidVersionRange {
        /// The lower bound.
        from: i64,
        /// The upper bound.
        to: i64,
    },

    /// A global position is negative.
    #[error("position must not be negative, got {value}")]
    NegativePosition {
        /// The value given.
        value: i64,
    },

    /// A read limit is zero or negative.
    #[error("limit must be positive, got {value}")]
    InvalidLimit {
        /// The value given.
        value: i64,
    },

    /// A partition index is not below the partition count, or the count is 0.
    #[error("invalid partition {index} of {count}: the index must be below a count of at least 1")]
    InvalidPartition {
        /// The index given.
        index: u32,
        /// The count given.
        count: u32,
    },

    /// One batch holds the same event id twice.
    #[error("event id {event_id} appears twice in one append (events {first} and {second})")]
    DuplicateEventIdInBatch {
        /// The repeated id.
        event_id: Uuid,
        /// Its first position in the batch.
        first: usize,
        /// Its second position in the batch.
        second: usize,
    },

    /// An event id is already stored with a different aggregate, type, schema
    /// version or payload, or a batch mixes stored and new ids. (A batch that
    /// is stored exactly as given is not an error: the append returns the
    /// stored result.)
    #[error("event id {event_id} is already stored {reason}")]
    EventIdConflict {
        /// The reused id.
        event_id: Uuid,
        /// What differs.
        reason: EventIdConflictReason,
    },

    /// A table or schema name is not a plain SQL identifier.
    #[error("invalid {what} `{name}`: {reason}")]
    InvalidIdentifier {
        /// Which setting.
        what: &'static str,
        /// The value given.
        name: String,
        /// Why it is refused.
        reason: std::borrow::Cow<'static, str>,
    },

    /// The gap-safe global read ran in a transaction whose isolation level
    /// keeps an old snapshot; it needs READ COMMITTED (PostgreSQL's default).
    #[error("read_events needs a READ COMMITTED transaction, this one is {level}")]
    UnsupportedIsolation {
        /// The transaction's isolation level.
        level: String,
    },

    /// The gap-safe global read ran on a standby (a server in recovery),
    /// which cannot see which appends are in flight on the primary: read
    /// the global feed from the primary.
    #[error("read_events must run on the primary: a standby cannot see the appends in flight")]
    ReadOnStandby,

    /// A payload or metadata value could not be serialized or deserialized.
    #[error("JSON (de)serialization failed: {0}")]
    Serialization(#[source] serde_json::Error),

    /// Applying the schema failed.
    #[error("migration failed: {0}")]
    Migration(#[source] sqlx::migrate::MigrateError),

    /// The database failed.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
}

fn at_index(index: Option<usize>) -> String {
    index.map_or_else(String::new, |i| format!(" (event {i})"))
}

impl From<sqlx::Error> for Error {
    fn from(error: sqlx::Error) -> Self {
        Error::Database(error)
    }
}

/// The names [`Error::EmptyName`] refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NameField {
    /// `bounded_context`.
    BoundedContext,
    /// `aggregate_type`.
    AggregateType,
    /// `aggregate_id`.
    AggregateId,
    /// `event_type`.
    EventType,
    /// A projection name.
    ProjectionName,
}

impl std::fmt::Display for NameField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NameField::BoundedContext => "bounded_context",
            NameField::AggregateType => "aggregate_type",
            NameField::AggregateId => "aggregate_id",
            NameField::EventType => "event_type",
            NameField::ProjectionName => "projection name",
        })
    }
}

/// Why an event id cannot be appended again.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventIdConflictReason {
    /// It belongs to another aggregate.
    OtherAggregate(AggregateKey),
    /// Its event type, schema version or payload differ.
    DifferentContent,
    /// Only part of the batch is stored, or the stored events are not in the
    /// same order: this is not a retry of one earlier append.
    NotTheSameBatch,
    /// A concurrent append stored it while this one was running (the first
    /// of the two won; retrying this append returns its result).
    StoredConcurrently,
    /// It is stored, and the append ran in a transaction that the refusal
    /// aborted, so what differs could not be read: retry outside it (or in
    /// a fresh transaction) for the details, or the stored result.
    Unverified,
}

impl std::fmt::Display for EventIdConflictReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EventIdConflictReason::OtherAggregate(key) => write!(f, "for aggregate {key}"),
            EventIdConflictReason::DifferentContent => {
                f.write_str("with a different event type, schema version or payload")
            }
            EventIdConflictReason::NotTheSameBatch => {
                f.write_str("but the batch does not repeat one earlier append")
            }
            EventIdConflictReason::StoredConcurrently => f.write_str("by a concurrent append"),
            EventIdConflictReason::Unverified => f.write_str(
                "(the transaction was aborted before the stored event could be compared)",
            ),
        }
    }
}
