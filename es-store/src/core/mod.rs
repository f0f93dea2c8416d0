//! The store's logic, written once for every backend.
//!
//! Each capability trait is implemented in one macro body (`append.rs`,
//! `reads.rs`, `projection.rs`) that a backend stamps out for its concrete
//! types with [`impl_store!`], as sqlx stamps its executor impls: the logic
//! is written once, and each expansion is checked against one backend's
//! concrete types, so no sqlx bound ever has to be spelled generically.
//!
//! A backend supplies its [`Codec`] (value encodings for binding,
//! decodings from its rows, and the primitives that really differ:
//! `append`, `safe_position`, `claim_checkpoint`), implemented in its own
//! `codec.rs`,
//! and its SQL text, rendered into [`Statements`].

mod append;
mod codec;
mod documents;
mod projection;
mod reads;

use std::sync::Arc;

use serde_json::value::RawValue;

use crate::{AppendResult, Error, Event, PersistedEvent, Result};

/// Every SQL text a store runs, rendered once per store by its dialect.
///
/// The core binds each statement's parameters in one fixed order, given
/// with each field; a dialect's text consumes them in that order. Numbered
/// placeholders (`$n`, `?n`) may repeat a parameter; MySQL's `?` are
/// consumed once each, in text order, so its statements read a parameter
/// used twice from a one-row derived table.
#[derive(Debug)]
pub(crate) struct Statements {
    /// The append statements of one kind of expected version, as the
    /// backend's `append` uses them.
    pub(crate) append: AppendStatements,
    /// The stored events with some ids: (ids) -> event columns.
    pub(crate) stored_ids: Arc<str>,
    /// (bounded context, aggregate type, aggregate id) -> version.
    pub(crate) head_version: Arc<str>,
    /// (bounded context, aggregate type, aggregate id) -> version, locking
    /// the aggregate until the transaction ends.
    pub(crate) lock_head: Arc<str>,
    /// (bounded context, aggregate type, aggregate id, from, to) -> event
    /// columns, by version.
    pub(crate) read_stream: Arc<str>,
    /// Same parameters -> (aggregate version, event type, event version,
    /// payload), by version.
    pub(crate) fold_stream: Arc<str>,
    /// (from, bounded contexts, aggregate types, partition count, partition
    /// index, safe position, limit) -> event columns, by position. The
    /// limit comes last for MySQL, whose `LIMIT ?` ends the text.
    pub(crate) read_events: Arc<str>,
    /// () -> the highest stored position, 0 when empty.
    pub(crate) head_position: Arc<str>,
    /// (name) -> position.
    pub(crate) get_checkpoint: Arc<str>,
    /// (name, position, now).
    pub(crate) update_checkpoint: Arc<str>,
    /// (name) -> position, skipping a checkpoint another transaction holds.
    pub(crate) claim_checkpoint: Arc<str>,
    /// (name) -> whether it exists.
    pub(crate) checkpoint_exists: Arc<str>,
    /// (name, now): creates a missing checkpoint at 0.
    pub(crate) create_checkpoint: Arc<str>,
    /// (name) -> (name, version, state, replay until, partitions, updated
    /// at, side effects, worker seen at) of each of the projection's
    /// versions, by version.
    pub(crate) list_versions: Arc<str>,
    /// (name, version, state, replay until, partitions, now, side
    /// effects): records a version unless it is recorded.
    pub(crate) insert_version: Arc<str>,
    /// (side effects, name, version).
    pub(crate) record_side_effects: Arc<str>,
    /// (now, name, version): a worker of the version runs.
    pub(crate) record_worker: Arc<str>,
    /// (state, replay until, partitions, now, name, version).
    pub(crate) update_version: Arc<str>,
    /// (name, version).
    pub(crate) delete_version: Arc<str>,
    /// (name, now): writes the projection's lock row (version 0), which
    /// holds it until the transaction ends.
    pub(crate) lock_versions: Arc<str>,
    /// (name): removes a checkpoint.
    pub(crate) delete_checkpoint: Arc<str>,
    /// (bounded context, aggregate type, aggregate id, max version) ->
    /// (version, schema version, state, created at).
    pub(crate) load_snapshot: Arc<str>,
    /// (bounded context, aggregate type, aggregate id, version, schema
    /// version, state, created at).
    pub(crate) save_snapshot: Arc<str>,
    /// (name, position, event id, event type, error, now).
    pub(crate) record_failure: Arc<str>,
    /// (name) -> (position, event id, event type, error, failed at).
    pub(crate) list_failures: Arc<str>,
    /// The read-model documents' statements.
    pub(crate) documents: DocumentStatements,
}

/// The statements of read-model documents. A document locked while
/// absent is a row whose body is JSON `null`, which reads as absent.
#[derive(Debug)]
pub(crate) struct DocumentStatements {
    /// (collection, id, body, now): inserts or replaces.
    pub(crate) put: Arc<str>,
    /// (collection, id) -> body.
    pub(crate) get: Arc<str>,
    /// (collection, id, now): creates the row with a `null` body when it is
    /// missing; changes nothing otherwise (MySQL: and locks it).
    pub(crate) ensure: Arc<str>,
    /// (collection, id) -> body, locking the row until the transaction
    /// ends (SQLite: the write lock `ensure` took).
    pub(crate) get_locked: Arc<str>,
    /// (collection, id).
    pub(crate) delete: Arc<str>,
    /// (collection).
    pub(crate) clear: Arc<str>,
    /// (collection, after id, limit) -> (id, body), by id, without the
    /// `null` bodies.
    pub(crate) list: Arc<str>,
    /// (collection) -> how many, without the `null` bodies.
    pub(crate) count: Arc<str>,
}

/// The statements of an append, by kind of expected version: the whole
/// append (PostgreSQL) or its head check (the others). What a backend runs
/// besides them is in its own `sql::Sql`.
#[derive(Debug)]
pub(crate) struct AppendStatements {
    pub(crate) no_stream: Arc<str>,
    pub(crate) any: Arc<str>,
    pub(crate) exact: Arc<str>,
}

impl AppendStatements {
    pub(crate) fn for_expected(&self, expected: crate::ExpectedVersion) -> &Arc<str> {
        match expected {
            crate::ExpectedVersion::NoStream => &self.no_stream,
            crate::ExpectedVersion::Any => &self.any,
            crate::ExpectedVersion::Exact(_) => &self.exact,
        }
    }
}

/// The columns every event read selects, in the order `decode_row`
/// expects.
pub(crate) const EVENT_COLUMNS: &str = "global_position, aggregate_version, event_id, \
    bounded_context, aggregate_type, aggregate_id, event_type, event_version, payload, \
    metadata, correlation_id, causation_id, trace_id, created_at";

/// Pairs a batch with the (version, position) of each stored row, in any
/// order; the versions must be consecutive from the first one.
pub(crate) fn stored(events: Vec<Event>, mut rows: Vec<(i64, i64)>) -> Result<AppendResult> {
    rows.sort_unstable();
    let consecutive = rows.len() == events.len()
        && rows
            .iter()
            .enumerate()
            .all(|(i, (version, _))| *version == rows[0].0 + i as i64);
    if !consecutive {
        // Only possible if a statement were changed to skip rows.
        return Err(Error::Database(sqlx::Error::Protocol(format!(
            "append stored {} rows for {} events",
            rows.len(),
            events.len()
        ))));
    }
    Ok(AppendResult::new(
        events
            .into_iter()
            .zip(rows)
            .map(|(event, (version, position))| PersistedEvent::new(event, version, position))
            .collect(),
    ))
}

/// The stored events whose ids a batch uses, put in batch order, each
/// with whether its type, schema version and payload equal the batch's.
pub(crate) fn in_batch_order(
    events: &[Event],
    found: Vec<PersistedEvent>,
) -> Result<Vec<(PersistedEvent, bool)>> {
    let mut ordered = Vec::with_capacity(found.len());
    for stored in found {
        let Some(index) = events.iter().position(|e| e.event_id == stored.event_id) else {
            continue;
        };
        let given = &events[index];
        let same = stored.event_type == given.event_type
            && stored.event_version == given.event_version
            && same_json(&stored.payload, &given.payload)?;
        ordered.push((index, stored, same));
    }
    ordered.sort_by_key(|(index, _, _)| *index);
    Ok(ordered
        .into_iter()
        .map(|(_, stored, same)| (stored, same))
        .collect())
}

/// `prefix`, then `rows` copies of `row` separated by commas, then
/// `suffix`: a multi-row `VALUES` insert (SQLite, MySQL).
#[cfg(any(feature = "sqlite", feature = "mysql"))]
pub(crate) fn values_sql(prefix: &str, row: &str, rows: usize, suffix: &str) -> String {
    let mut sql = String::with_capacity(prefix.len() + rows * (row.len() + 2) + suffix.len());
    sql.push_str(prefix);
    for i in 0..rows {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(row);
    }
    sql.push_str(suffix);
    sql
}

/// A filter list as a JSON array (SQLite's `json_each`, MySQL's
/// `JSON_CONTAINS`), or `None` (no restriction) when it is empty.
#[cfg(any(feature = "sqlite", feature = "mysql"))]
pub(crate) fn json_name_list(names: &[String]) -> Result<Option<String>> {
    if names.is_empty() {
        return Ok(None);
    }
    serde_json::to_string(names)
        .map(Some)
        .map_err(Error::Serialization)
}

/// A JSON array of the batch's ids, hyphenated (SQLite's `json_each`,
/// MySQL's `JSON_TABLE`).
#[cfg(any(feature = "sqlite", feature = "mysql"))]
pub(crate) fn json_id_list(ids: impl Iterator<Item = uuid::Uuid>) -> Result<String> {
    let ids: Vec<uuid::fmt::Hyphenated> = ids.map(|id| id.hyphenated()).collect();
    serde_json::to_string(&ids).map_err(Error::Serialization)
}

/// Whether two JSON texts hold the same value (key order and whitespace
/// do not matter), as PostgreSQL's `jsonb` equality.
pub(crate) fn same_json(a: &RawValue, b: &RawValue) -> Result<bool> {
    if a.get() == b.get() {
        return Ok(true);
    }
    let parse = |raw: &RawValue| {
        serde_json::from_str::<serde_json::Value>(raw.get()).map_err(Error::Serialization)
    };
    Ok(parse(a)? == parse(b)?)
}

/// Stamps out every capability trait for one backend: `$dialect` is the
/// dialect marker, `$conn` and `$row` the sqlx connection and row types.
/// `$dialect` must implement [`Codec`].
macro_rules! impl_store {
    ($dialect:ty, $conn:ty, $row:ty) => {
        $crate::core::impl_append!($dialect, $conn, $row);
        $crate::core::impl_reads!($dialect, $conn, $row);
        $crate::core::impl_projection!($dialect, $conn, $row);
        $crate::core::impl_documents!($dialect, $conn, $row);
    };
}
pub(crate) use append::impl_append;
pub(crate) use codec::Codec;
pub(crate) use documents::impl_documents;
pub(crate) use impl_store;
pub(crate) use projection::impl_projection;
pub(crate) use reads::impl_reads;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_equality_ignores_key_order_and_whitespace() {
        let raw = |s: &str| RawValue::from_string(s.to_owned()).unwrap();
        assert!(same_json(&raw(r#"{"a":1,"b":[2]}"#), &raw(r#"{ "b": [2], "a": 1 }"#)).unwrap());
        assert!(!same_json(&raw(r#"{"a":1}"#), &raw(r#"{"a":2}"#)).unwrap());
    }

    #[test]
    fn event_columns_are_fourteen() {
        assert_eq!(EVENT_COLUMNS.split(", ").count(), 14);
    }
}
