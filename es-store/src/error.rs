//! The store's error type.

use uuid::Uuid;

use crate::{AggregateKey, ExpectedVersion, limits};

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
    ///
    /// ```
    /// use es_store::{Error, NameField};
    ///
    /// let error = Error::EmptyName { field: NameField::EventType, index: Some(1) };
    /// assert_eq!(error.to_string(), "event_type must not be empty (event 1)");
    /// ```
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

    /// A name is longer than every backend can keep: the limit of each name,
    /// in bytes of UTF-8, is in [`limits`](crate::limits): 128 bytes for a
    /// bounded context or an aggregate type, 500 for an aggregate id, 255
    /// for an event type, a projection name or a trace id.
    ///
    /// Refused before anything is sent, by appends and by reads and
    /// checkpoint or snapshot calls that take the name.
    ///
    /// ```
    /// use es_store::{Error, Event, EventStore, ExpectedVersion, NameField, limits};
    ///
    /// # async fn demo(store: es_store::PostgresStore, conn: &mut sqlx::PgConnection) -> Result<(), Error> {
    /// let id = "x".repeat(limits::MAX_AGGREGATE_ID_BYTES + 1);
    /// let event = Event::new("Billing", "Account", id, "Opened", &serde_json::json!({}))?;
    /// let refused = store.append(conn, ExpectedVersion::Any, vec![event]).await;
    /// assert!(matches!(
    ///     refused,
    ///     Err(Error::NameTooLong { field: NameField::AggregateId, len: 501, max: 500, .. })
    /// ));
    /// # Ok(()) }
    /// let error = Error::NameTooLong { field: NameField::AggregateId, index: Some(0), len: 501, max: 500 };
    /// assert_eq!(
    ///     error.to_string(),
    ///     "aggregate_id (event 0) is 501 bytes long, longer than the 500 bytes allowed",
    /// );
    /// ```
    #[error("{field}{} is {len} bytes long, longer than the {max} bytes allowed", at_index(*.index))]
    NameTooLong {
        /// Which name.
        field: NameField,
        /// The position of the offending event in the batch, when it is one.
        index: Option<usize>,
        /// The name's length in bytes.
        len: usize,
        /// The limit in bytes ([`NameField::max_bytes`]).
        max: usize,
    },

    /// A name or a JSON value holds text PostgreSQL cannot store: a NUL
    /// character (raw in a name, or the escape `\u0000` in JSON text), or in
    /// JSON text an escaped UTF-16 surrogate that is not part of a pair
    /// (such as `"\ud800"`).
    ///
    /// Refused on every backend (SQLite would store it), before anything is
    /// sent: PostgreSQL would fail the statement and abort the caller's
    /// transaction, losing what the transaction had done.
    ///
    /// ```
    /// use es_store::{Error, Event, TextField, UnstorableTextReason};
    /// use serde_json::value::RawValue;
    ///
    /// # async fn demo(store: es_store::PostgresStore, conn: &mut sqlx::PgConnection) -> Result<(), Error> {
    /// # use es_store::{EventStore, ExpectedVersion};
    /// let payload = RawValue::from_string(r#"{"name":"a\u0000b"}"#.to_owned()).map_err(Error::Serialization)?;
    /// let event = Event::from_raw("Billing", "Account", "acc-1", "Renamed", payload);
    /// let refused = store.append(conn, ExpectedVersion::Any, vec![event]).await;
    /// assert!(matches!(
    ///     refused,
    ///     Err(Error::UnstorableText { field: TextField::Payload, index: Some(0), .. })
    /// ));
    /// # Ok(()) }
    /// let error = Error::UnstorableText {
    ///     field: TextField::Payload,
    ///     index: Some(2),
    ///     offset: 10,
    ///     reason: UnstorableTextReason::Nul,
    /// };
    /// assert_eq!(
    ///     error.to_string(),
    ///     "payload (event 2) holds a NUL character at byte 10, which PostgreSQL cannot store",
    /// );
    /// ```
    #[error("{field}{} holds {reason} at byte {offset}, which PostgreSQL cannot store", at_index(*.index))]
    UnstorableText {
        /// Which name or JSON value.
        field: TextField,
        /// The position of the offending event in the batch, when it is one.
        index: Option<usize>,
        /// Where in the text (in bytes) the character or escape starts.
        offset: usize,
        /// What it holds.
        reason: UnstorableTextReason,
    },

    /// A JSON value (payload, metadata, snapshot state or read-model
    /// document) nests arrays and objects deeper than the backend stores:
    /// [`limits::MAX_JSON_DEPTH`] (100) levels on PostgreSQL and SQLite,
    /// [`limits::MAX_JSON_DEPTH_MYSQL`] (31) on MySQL and MariaDB (see
    /// [`SqlStore::max_json_depth`](crate::SqlStore::max_json_depth)).
    ///
    /// The depth counts arrays and objects, not scalars: `1` is 0 deep,
    /// `[1]` and `{"a":1}` are 1 deep, `{"a":[1]}` is 2 deep. Refused
    /// before anything is sent, so the caller's transaction stays usable:
    /// PostgreSQL would fail the statement past its stack limit (and abort
    /// the transaction), MariaDB's and SQLite's JSON checks would refuse
    /// the row, and serde_json reads back at most 127 levels.
    ///
    /// ```
    /// use es_store::{Error, Event, TextField};
    /// use serde_json::value::RawValue;
    ///
    /// # async fn demo(store: es_store::PostgresStore, conn: &mut sqlx::PgConnection) -> Result<(), Error> {
    /// # use es_store::{EventStore, ExpectedVersion};
    /// let deep = format!("{}{}", "[".repeat(101), "]".repeat(101));
    /// let payload = RawValue::from_string(deep).map_err(Error::Serialization)?;
    /// let event = Event::from_raw("Billing", "Account", "acc-1", "Nested", payload);
    /// let refused = store.append(conn, ExpectedVersion::Any, vec![event]).await;
    /// assert!(matches!(
    ///     refused,
    ///     Err(Error::JsonTooDeep { field: TextField::Payload, depth: 101, max: 100, .. })
    /// ));
    /// # Ok(()) }
    /// let error = Error::JsonTooDeep { field: TextField::Metadata, index: Some(1), depth: 32, max: 31 };
    /// assert_eq!(
    ///     error.to_string(),
    ///     "metadata (event 1) nests arrays and objects 32 levels deep, deeper than the 31 allowed",
    /// );
    /// assert!(!error.is_transient());
    /// ```
    #[error("{field}{} nests arrays and objects {depth} levels deep, deeper than the {max} allowed", at_index(*.index))]
    JsonTooDeep {
        /// Which JSON value.
        field: TextField,
        /// The position of the offending event in the batch, when it is one.
        index: Option<usize>,
        /// How deep it nests.
        depth: usize,
        /// The backend's limit.
        max: usize,
    },

    /// The statement that would store a value is larger than the server's
    /// `max_allowed_packet` (MySQL and MariaDB only): the server would
    /// drop the connection, and with it the caller's transaction.
    ///
    /// The size is that of the packet the driver would send: the event's
    /// payload, metadata and names with the statement's framing (an event
    /// of the batch whose own row is too large for one statement is
    /// named by `index`; a batch whose events fit one by one is split into
    /// statements that each fit), or a snapshot's or document's whole
    /// statement. Refused before anything is sent, never transient: raise
    /// `max_allowed_packet` on the server, or store less. The limit is read
    /// from the server once per store, and read again before refusing.
    ///
    /// ```
    /// use es_store::{Error, TextField};
    ///
    /// let error = Error::PacketTooLarge {
    ///     field: TextField::Payload,
    ///     index: Some(0),
    ///     size: 52_428_912,
    ///     max: 16_777_216,
    /// };
    /// assert_eq!(
    ///     error.to_string(),
    ///     "payload (event 0) needs a statement of 52428912 bytes, more than the server's \
    ///      max_allowed_packet of 16777216",
    /// );
    /// assert!(!error.is_transient());
    /// ```
    #[error("{field}{} needs a statement of {size} bytes, more than the server's max_allowed_packet of {max}", at_index(*.index))]
    PacketTooLarge {
        /// What is too large: an event's [`TextField::Payload`], a
        /// [`TextField::SnapshotState`] or a [`TextField::Document`].
        field: TextField,
        /// The position of the offending event in the batch, when it is one.
        index: Option<usize>,
        /// The packet's size in bytes.
        size: u64,
        /// The server's `max_allowed_packet`, in bytes.
        max: u64,
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

    /// The gap-safe global read ran at an isolation level under which it
    /// could skip or invent events: on PostgreSQL any level but READ
    /// COMMITTED (the default; REPEATABLE READ and SERIALIZABLE keep an old
    /// snapshot), on MySQL and MariaDB READ UNCOMMITTED (which sees events
    /// that may yet roll back). `level` is as the server names it.
    ///
    /// ```
    /// use es_store::Error;
    ///
    /// let error = Error::UnsupportedIsolation { level: "READ-UNCOMMITTED".into() };
    /// assert_eq!(
    ///     error.to_string(),
    ///     "read_events cannot run at isolation level READ-UNCOMMITTED: \
    ///      PostgreSQL needs READ COMMITTED, MySQL and MariaDB refuse READ UNCOMMITTED",
    /// );
    /// ```
    #[error(
        "read_events cannot run at isolation level {level}: PostgreSQL needs READ COMMITTED, \
         MySQL and MariaDB refuse READ UNCOMMITTED"
    )]
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

    /// No connection came from the pool before its acquire timeout.
    ///
    /// `cause` is what a connection attempt met when the pool could not
    /// open one, found by [`acquire`](crate::acquire) once the pool gave up:
    /// for example PostgreSQL's `53300` (too many connections), `57P03`
    /// (the server is starting up) or a refused TCP connection. (sqlx's
    /// pool retries such errors silently until its timeout and reports only
    /// [`sqlx::Error::PoolTimedOut`].) `None` when no cause is known: from
    /// [`acquire`](crate::acquire), a new connection could be opened, so the
    /// pool's connections were all in use for the whole timeout; from a
    /// plain conversion of [`sqlx::Error::PoolTimedOut`], nobody looked.
    ///
    /// ```
    /// use es_store::Error;
    ///
    /// let busy = Error::PoolTimedOut { cause: None };
    /// assert!(busy.is_transient());
    /// assert_eq!(busy.to_string(), "timed out waiting for a connection from the pool");
    /// ```
    #[error("timed out waiting for a connection from the pool{}", match .cause {
        Some(cause) => format!(": {cause}"),
        None => String::new(),
    })]
    PoolTimedOut {
        /// What opening a connection met, when it failed.
        #[source]
        cause: Option<Box<sqlx::Error>>,
    },

    /// The database failed.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
}

impl Error {
    /// Whether the failure is passing, so that running the same thing
    /// again a moment later may succeed: the connection was lost or could
    /// not be opened (an I/O error), the server is shutting down, restarting
    /// or starting up, or terminated the session (PostgreSQL SQLSTATE
    /// class `08`, `57P01`, `57P02`, `57P03`, and `53300` too many
    /// connections), the transaction was a serialization failure or a
    /// deadlock victim (`40001`, `40P01`; MySQL 1213, and 1205 lock wait
    /// timeout), SQLite's database was busy or locked (`SQLITE_BUSY`,
    /// `SQLITE_LOCKED`), or the pool timed out ([`Error::PoolTimedOut`]).
    ///
    /// An [`Error::OptimisticConcurrency`] is not transient: it is a
    /// conflict, which is retried by deciding again on the new state, not
    /// by repeating the same write (a MySQL deadlock inside an append is
    /// reported as one). Invalid input, refused event ids and decoding
    /// failures are never transient.
    ///
    /// A transient failure of a write leaves its outcome unknown when the
    /// connection was lost after the write was sent: it may have been
    /// committed. Repeat it only if it is idempotent (an append with the
    /// same event ids is: see [`EventStore::append`](crate::EventStore::append)).
    ///
    /// ```
    /// use es_store::Error;
    ///
    /// let lost = Error::from(sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into()));
    /// assert!(lost.is_transient());
    /// assert!(Error::from(sqlx::Error::PoolTimedOut).is_transient());
    /// assert!(!Error::NoEvents.is_transient());
    /// assert!(!Error::from(sqlx::Error::RowNotFound).is_transient());
    /// ```
    pub fn is_transient(&self) -> bool {
        match self {
            Error::PoolTimedOut { .. } => true,
            Error::Database(error) => is_transient_sqlx(error),
            _ => false,
        }
    }
}

/// [`Error::is_transient`] for a driver error.
fn is_transient_sqlx(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => is_transient_database(db.as_ref()),
        _ => false,
    }
}

/// Whether the server's error says "try again".
fn is_transient_database(db: &dyn sqlx::error::DatabaseError) -> bool {
    #[cfg(feature = "mysql")]
    if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        // ER_LOCK_WAIT_TIMEOUT, ER_LOCK_DEADLOCK, ER_CON_COUNT_ERROR
        // (too many connections), ER_SERVER_SHUTDOWN, and
        // ER_QUERY_INTERRUPTED / ER_CONNECTION_KILLED (a killed session).
        return matches!(my.number(), 1205 | 1213 | 1040 | 1053 | 1317 | 1927);
    }
    #[cfg(feature = "sqlite")]
    if let Some(lite) = db.try_downcast_ref::<sqlx::sqlite::SqliteError>() {
        // The primary result code is the low byte of the extended one.
        let code = sqlx::error::DatabaseError::code(lite).and_then(|c| c.parse::<i32>().ok());
        return code.is_some_and(|c| matches!(c & 0xff, SQLITE_BUSY | SQLITE_LOCKED));
    }
    let Some(code) = db.code() else {
        return false;
    };
    code.starts_with("08")
        || matches!(
            code.as_ref(),
            "40001" | "40P01" | "57P01" | "57P02" | "57P03" | "53300"
        )
}

#[cfg(feature = "sqlite")]
const SQLITE_BUSY: i32 = 5;
#[cfg(feature = "sqlite")]
const SQLITE_LOCKED: i32 = 6;

fn at_index(index: Option<usize>) -> String {
    index.map_or_else(String::new, |i| format!(" (event {i})"))
}

impl From<sqlx::Error> for Error {
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::PoolTimedOut => Error::PoolTimedOut { cause: None },
            error => Error::Database(error),
        }
    }
}

/// The names [`Error::EmptyName`], [`Error::NameTooLong`] and
/// [`Error::UnstorableText`] refer to.
///
/// ```
/// use es_store::NameField;
///
/// assert_eq!(NameField::AggregateId.to_string(), "aggregate_id");
/// assert_eq!(NameField::AggregateId.max_bytes(), es_store::limits::MAX_AGGREGATE_ID_BYTES);
/// ```
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
    /// `trace_id`.
    TraceId,
    /// A read-model collection's name ([`Collection`](crate::documents::Collection)).
    Collection,
    /// A read-model document's id.
    DocumentId,
}

impl NameField {
    /// The longest value the store keeps for this name, in bytes of UTF-8
    /// (see [`limits`](crate::limits)).
    ///
    /// ```
    /// use es_store::NameField;
    /// assert_eq!(NameField::BoundedContext.max_bytes(), 128);
    /// ```
    pub const fn max_bytes(self) -> usize {
        match self {
            NameField::BoundedContext => limits::MAX_BOUNDED_CONTEXT_BYTES,
            NameField::AggregateType => limits::MAX_AGGREGATE_TYPE_BYTES,
            NameField::AggregateId => limits::MAX_AGGREGATE_ID_BYTES,
            NameField::EventType => limits::MAX_EVENT_TYPE_BYTES,
            NameField::ProjectionName => limits::MAX_PROJECTION_NAME_BYTES,
            NameField::TraceId => limits::MAX_TRACE_ID_BYTES,
            NameField::Collection => limits::MAX_COLLECTION_BYTES,
            NameField::DocumentId => limits::MAX_DOCUMENT_ID_BYTES,
        }
    }
}

impl std::fmt::Display for NameField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NameField::BoundedContext => "bounded_context",
            NameField::AggregateType => "aggregate_type",
            NameField::AggregateId => "aggregate_id",
            NameField::EventType => "event_type",
            NameField::ProjectionName => "projection name",
            NameField::TraceId => "trace_id",
            NameField::Collection => "collection",
            NameField::DocumentId => "document id",
        })
    }
}

/// The texts [`Error::UnstorableText`] refers to: a name, or a JSON value.
///
/// ```
/// use es_store::{NameField, TextField};
///
/// assert_eq!(TextField::Name(NameField::AggregateId).to_string(), "aggregate_id");
/// assert_eq!(TextField::Metadata.to_string(), "metadata");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TextField {
    /// A name.
    Name(NameField),
    /// An event's `payload`.
    Payload,
    /// An event's `metadata`.
    Metadata,
    /// A snapshot's `state`.
    SnapshotState,
    /// A read-model document.
    Document,
}

impl std::fmt::Display for TextField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TextField::Name(name) => name.fmt(f),
            TextField::Payload => f.write_str("payload"),
            TextField::Metadata => f.write_str("metadata"),
            TextField::SnapshotState => f.write_str("snapshot state"),
            TextField::Document => f.write_str("document"),
        }
    }
}

/// What makes a text unstorable ([`Error::UnstorableText`]).
///
/// ```
/// use es_store::UnstorableTextReason;
///
/// assert_eq!(UnstorableTextReason::Nul.to_string(), "a NUL character");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UnstorableTextReason {
    /// A NUL character (U+0000): raw in a name, or the escape `\u0000` in
    /// JSON text.
    Nul,
    /// An escape in JSON text of a UTF-16 surrogate (`\ud800` to `\udfff`)
    /// that is not part of a high-low pair: it stands for no character.
    LoneSurrogate,
}

impl std::fmt::Display for UnstorableTextReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UnstorableTextReason::Nul => "a NUL character",
            UnstorableTextReason::LoneSurrogate => "an unpaired surrogate escape",
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
