//! The longest names the store keeps, in bytes of UTF-8.
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
