//! The limits of what the store keeps: names, in bytes of UTF-8, and how
//! deep JSON may nest. Every input past a limit is refused with a typed
//! error before anything is sent, so the caller's transaction stays usable.
//!
//! | limit | PostgreSQL | SQLite | MySQL / MariaDB |
//! |---|---|---|---|
//! | names | [`MAX_BOUNDED_CONTEXT_BYTES`] ... below, the same everywhere | same | same |
//! | JSON depth (payload, metadata, snapshot state, document) | [`MAX_JSON_DEPTH`], 100 | [`MAX_JSON_DEPTH`], 100 | [`MAX_JSON_DEPTH_MYSQL`], 31 |
//! | what the database itself accepts | about 13,000 levels (`jsonb` parsing stops at the 2 MB default `max_stack_depth`) | 1,000 (`json_valid`, SQLite 3.51) | 31 (MariaDB's `json_valid`); MySQL 8: 100 |
//! | one statement's size | 1 GB per value (`jsonb`: 255 MB); not checked before sending | 1,000,000,000 bytes per value (`SQLITE_MAX_LENGTH`); not checked | the server's `max_allowed_packet` (MariaDB's default 16 MiB, MySQL's 64 MiB): checked, [`Error::PacketTooLarge`](crate::Error::PacketTooLarge) |
//!
//! JSON nesting is limited below what the databases accept so that what is
//! stored can be read back: serde_json (which decodes payloads, upcasts
//! and compares retried batches) refuses text nested 128 levels deep, and
//! 100 leaves room for the levels of an envelope that carries a payload.
//! MariaDB's JSON functions stop at 31 levels, and the MySQL backend keeps
//! that limit on MySQL too. The depth counts arrays and objects: `1` is
//! 0 deep, `[1]` and `{"a":1}` are 1 deep, `{"a":[{}]}` is 3 deep.
//!
//! On MySQL and MariaDB a batch is inserted in statements that each fit
//! `max_allowed_packet`, so only an event too large on its own (or a
//! snapshot or document) is refused: see
//! [`Error::PacketTooLarge`](crate::Error::PacketTooLarge).
//!
//! # Names
//!
//! Every backend refuses a longer name up front with
//! [`Error::NameTooLong`](crate::Error::NameTooLong), before anything is
//! sent, so the caller's transaction stays usable; reads refuse them too
//! (no stored aggregate can have such a name).
//!
//! The limits are the same on every backend, including ones whose index
//! keys are small. PostgreSQL refuses a B-tree entry over about 2,700 bytes
//! (the events' unique key holds bounded context, aggregate type and
//! aggregate id). MySQL and MariaDB (InnoDB) cap a whole index key at 3,072
//! bytes and size a `VARCHAR(n)` column of `utf8mb4` text at 4 bytes per
//! character: with each limit `n` in bytes stored as `VARCHAR(n)` (a name of
//! `n` bytes has at most `n` characters), the events' unique key
//! (bounded_context, aggregate_type, aggregate_id, aggregate_version) takes
//! at most (128 + 128 + 500) × 4 + 8 = 3,032 bytes.
//!
//! ```
//! use es_store::limits::{MAX_AGGREGATE_ID_BYTES, MAX_BOUNDED_CONTEXT_BYTES, MAX_AGGREGATE_TYPE_BYTES};
//!
//! let key = (MAX_BOUNDED_CONTEXT_BYTES + MAX_AGGREGATE_TYPE_BYTES + MAX_AGGREGATE_ID_BYTES) * 4 + 8;
//! assert!(key <= 3072);
//!
//! // Bytes, not characters: "é" is 2 bytes.
//! let id = "é".repeat(MAX_AGGREGATE_ID_BYTES / 2);
//! assert_eq!(id.len(), MAX_AGGREGATE_ID_BYTES);
//! ```

/// The longest bounded context: 128 bytes.
pub const MAX_BOUNDED_CONTEXT_BYTES: usize = 128;

/// The longest aggregate type: 128 bytes.
pub const MAX_AGGREGATE_TYPE_BYTES: usize = 128;

/// The longest aggregate id: 500 bytes (a UUID takes 36, an e-mail address
/// at most 254).
pub const MAX_AGGREGATE_ID_BYTES: usize = 500;

/// The longest event type: 255 bytes.
pub const MAX_EVENT_TYPE_BYTES: usize = 255;

/// The longest projection (checkpoint) name: 255 bytes.
///
/// A partitioned projection processor stores one checkpoint per partition,
/// named `{name}#{index}/{count}`, which adds up to 22 bytes to the
/// projection's own name.
pub const MAX_PROJECTION_NAME_BYTES: usize = 255;

/// The longest trace id: 255 bytes (a W3C trace id takes 32, a whole
/// `traceparent` header 55).
pub const MAX_TRACE_ID_BYTES: usize = 255;

/// The longest read-model collection name, in bytes.
pub const MAX_COLLECTION_BYTES: usize = 255;

/// The longest read-model document id, in bytes (an aggregate id fits).
pub const MAX_DOCUMENT_ID_BYTES: usize = MAX_AGGREGATE_ID_BYTES;

/// The deepest nesting of arrays and objects in a JSON value (payload,
/// metadata, snapshot state, read-model document) on PostgreSQL and SQLite:
/// 100 levels. Deeper values are refused with
/// [`Error::JsonTooDeep`](crate::Error::JsonTooDeep).
///
/// ```
/// use es_store::limits::MAX_JSON_DEPTH;
///
/// // serde_json reads back what is stored (it stops at 128 levels).
/// let deepest = format!("{}{}", "[".repeat(MAX_JSON_DEPTH), "]".repeat(MAX_JSON_DEPTH));
/// assert!(serde_json::from_str::<serde_json::Value>(&deepest).is_ok());
/// ```
pub const MAX_JSON_DEPTH: usize = 100;

/// The deepest nesting of arrays and objects in a JSON value on MySQL and
/// MariaDB: 31 levels, the most MariaDB's `json_valid` (which checks every
/// JSON column) accepts. Deeper values are refused with
/// [`Error::JsonTooDeep`](crate::Error::JsonTooDeep).
///
/// ```
/// assert!(es_store::limits::MAX_JSON_DEPTH_MYSQL < es_store::limits::MAX_JSON_DEPTH);
/// ```
pub const MAX_JSON_DEPTH_MYSQL: usize = 31;
