//! The server's `max_allowed_packet`, and the size of the packets the
//! store sends, so that a statement too large for the server is refused
//! (or a batch split) before it is sent.
//!
//! A statement larger than `max_allowed_packet` is not refused like other
//! errors: the server drops the connection, which loses the caller's
//! transaction, and the driver reports a lost connection, which looks
//! transient. So each statement that carries JSON is measured first.
//!
//! The sizes are those of sqlx's `COM_STMT_EXECUTE` packet: a header, a
//! NULL bitmap, two bytes of type per parameter, then the values (integers
//! in 4 or 8 bytes, text and ids with a length prefix, timestamps in at
//! most 12 bytes, NULLs in none).

use std::sync::atomic::Ordering;

use chrono::{DateTime, Timelike, Utc};
use sqlx::MySqlConnection;

use super::MySqlStore;
use crate::{Error, Event, Result, TextField};

/// `max_allowed_packet` cannot be set below 1 KiB: a statement no larger
/// fits every server, and needs no look-up.
pub(super) const SMALLEST_LIMIT: u64 = 1024;

/// `ER_NET_PACKET_TOO_LARGE`: the server read a packet larger than its
/// `max_allowed_packet` (and then closes the connection).
pub(super) const PACKET_TOO_LARGE: u16 = 1153;

/// The parameters of one event's row in the multi-row insert.
pub(super) const EVENT_PARAMETERS: usize = 15;

/// Command, statement id, cursor flags, iteration count and the
/// "types follow" flag.
const EXECUTE_HEADER: u64 = 1 + 4 + 1 + 4 + 1;

/// A value with a length prefix: text, bytes, an id.
pub(super) fn text(len: usize) -> u64 {
    let prefix = match len {
        0..=250 => 1,
        251..=0xFFFF => 3,
        0x1_0000..=0xFF_FFFF => 4,
        _ => 9,
    };
    prefix + len as u64
}

/// A `DATETIME` value: its length byte, then 4, 7 or 11 bytes.
pub(super) fn datetime(at: DateTime<Utc>) -> u64 {
    let at = at.naive_utc();
    1 + match (at.hour(), at.minute(), at.second(), at.nanosecond()) {
        (0, 0, 0, 0) => 4,
        (_, _, _, 0) => 7,
        _ => 11,
    }
}

/// A UUID, sent as 16 bytes with their length.
const UUID: u64 = 17;

/// The packet of a statement with `parameters` parameters whose values
/// take `values` bytes.
pub(super) fn packet(parameters: usize, values: u64) -> u64 {
    EXECUTE_HEADER + parameters.div_ceil(8) as u64 + 2 * parameters as u64 + values
}

/// The bytes one event's values take in the insert (see `append::insert`).
pub(super) fn event_values(first: &Event, event: &Event) -> u64 {
    let optional_uuid = |id: Option<uuid::Uuid>| if id.is_some() { UUID } else { 0 };
    8 // global_position
        + UUID // event_id
        + text(first.bounded_context.len())
        + text(first.aggregate_type.len())
        + text(first.aggregate_id.len())
        + 8 // aggregate_version
        + text(event.event_type.len())
        + 4 // event_version
        + text(event.payload.get().len())
        + text(event.metadata.get().len())
        + optional_uuid(event.correlation_id)
        + optional_uuid(event.causation_id)
        + event.trace_id.as_deref().map_or(0, |t| text(t.len()))
        + datetime(event.created_at)
        + 8 // stream_hash
}

/// The insert statements of a batch: each range of events is one
/// statement of at most `rows_per_statement` rows whose packet fits
/// `limit`. An event whose row alone does not fit is `Err((index, size))`.
pub(super) fn split(
    events: &[Event],
    limit: u64,
    rows_per_statement: usize,
) -> std::result::Result<Vec<std::ops::Range<usize>>, (usize, u64)> {
    let first = &events[0];
    let mut statements = Vec::new();
    let (mut start, mut values) = (0, 0);
    for (index, event) in events.iter().enumerate() {
        let row = event_values(first, event);
        let alone = packet(EVENT_PARAMETERS, row);
        if alone > limit {
            return Err((index, alone));
        }
        let rows = index - start;
        if rows == rows_per_statement || packet(EVENT_PARAMETERS * (rows + 1), values + row) > limit
        {
            statements.push(start..index);
            (start, values) = (index, 0);
        }
        values += row;
    }
    statements.push(start..events.len());
    Ok(statements)
}

/// The server's `max_allowed_packet`, read once per store, or again when
/// `fresh`.
pub(super) async fn limit(
    store: &MySqlStore,
    conn: &mut MySqlConnection,
    fresh: bool,
) -> Result<u64> {
    let known = &store.own().server.max_packet;
    let cached = known.load(Ordering::Relaxed);
    if cached != 0 && !fresh {
        return Ok(cached);
    }
    // The session's value, which the server checks (it is read-only in a
    // session: the global value when the connection was opened).
    let read: u64 = sqlx::query_scalar("SELECT CAST(@@SESSION.max_allowed_packet AS UNSIGNED)")
        .fetch_one(&mut *conn)
        .await?;
    let read = read.max(SMALLEST_LIMIT);
    known.store(read, Ordering::Relaxed);
    Ok(read)
}

/// The largest packet a server whose `max_allowed_packet` is `max`
/// accepts: MariaDB refuses one of exactly `max` bytes.
pub(super) fn largest(max: u64) -> u64 {
    max - 1
}

/// Forgets the limit, so that the next statement reads it again: after a
/// statement failed in a way a packet too large for the server would.
pub(super) fn forget_limit(store: &MySqlStore) {
    store.own().server.max_packet.store(0, Ordering::Relaxed);
}

/// Refuses a statement of `size` bytes that does not fit the server's
/// limit (read again before refusing, in case it was raised).
pub(super) async fn check(
    store: &MySqlStore,
    conn: &mut MySqlConnection,
    field: TextField,
    size: u64,
) -> Result<()> {
    if size <= largest(SMALLEST_LIMIT) || size <= largest(limit(store, conn, false).await?) {
        return Ok(());
    }
    let max = limit(store, conn, true).await?;
    if size <= largest(max) {
        return Ok(());
    }
    Err(Error::PacketTooLarge {
        field,
        index: None,
        size,
        max,
    })
}

/// Refuses a snapshot whose statement does not fit (see
/// `save_snapshot`: names, version, schema version, state, time).
pub(super) async fn check_snapshot(
    store: &MySqlStore,
    conn: &mut MySqlConnection,
    snapshot: &crate::Snapshot,
) -> Result<()> {
    let values = text(snapshot.bounded_context.len())
        + text(snapshot.aggregate_type.len())
        + text(snapshot.aggregate_id.len())
        + 8
        + 4
        + text(snapshot.state.get().len())
        + datetime(snapshot.created_at);
    check(store, conn, TextField::SnapshotState, packet(7, values)).await
}

/// Refuses a document whose statement does not fit (see `documents.put`:
/// collection, id, body, time).
pub(super) async fn check_document(
    store: &MySqlStore,
    conn: &mut MySqlConnection,
    collection: &str,
    id: &str,
    body: &serde_json::value::RawValue,
) -> Result<()> {
    let values = text(collection.len()) + text(id.len()) + text(body.get().len()) + 12;
    check(store, conn, TextField::Document, packet(4, values)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn event(payload_len: usize) -> Event {
        let payload = format!("\"{}\"", "x".repeat(payload_len.saturating_sub(2)));
        Event::from_raw(
            "Billing",
            "Account",
            "acc-1",
            "Opened",
            RawValue::from_string(payload).unwrap(),
        )
    }

    #[test]
    fn packet_length_prefixes_grow_with_the_value() {
        assert_eq!(text(0), 1);
        assert_eq!(text(250), 251);
        assert_eq!(text(251), 254);
        assert_eq!(text(0xFFFF), 0xFFFF + 3);
        assert_eq!(text(0x1_0000), 0x1_0000 + 4);
        assert_eq!(text(0x100_0000), 0x100_0000 + 9);
    }

    #[test]
    fn a_batch_is_split_into_statements_that_fit_the_packet_limit() {
        let events: Vec<Event> = (0..10).map(|_| event(1000)).collect();
        let row = event_values(&events[0], &events[0]);
        // all in one statement
        let all = packet(EVENT_PARAMETERS * 10, 10 * row);
        assert_eq!(split(&events, all, 1000).unwrap(), vec![0..10]);
        // one byte less: nine, then one
        assert_eq!(split(&events, all - 1, 1000).unwrap(), vec![0..9, 9..10]);
        // three rows per statement at most
        let three = packet(EVENT_PARAMETERS * 3, 3 * row);
        assert_eq!(
            split(&events, three, 1000).unwrap(),
            vec![0..3, 3..6, 6..9, 9..10]
        );
        // the row count caps statements too
        assert_eq!(split(&events, all, 4).unwrap(), vec![0..4, 4..8, 8..10]);
        // an event that does not fit alone is named
        let mut events = events;
        events[7] = event(5000);
        let alone = packet(EVENT_PARAMETERS, event_values(&events[0], &events[7]));
        assert_eq!(split(&events, alone - 1, 1000), Err((7, alone)));
        assert!(split(&events, alone, 1000).is_ok());
    }
}
