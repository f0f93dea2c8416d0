//! The append on SQLite: under the database's write lock, in a savepoint of
//! the caller's transaction or a `BEGIN IMMEDIATE` transaction of its own,
//! the head statement then the insert (see "One writer" on
//! [`SqliteStore`]).

use sqlx::{AssertSqlSafe, Connection as _, SqliteConnection};

use super::SqliteStore;
use super::codec::{is_busy, time};
use crate::{AppendResult, Error, Event, EventIdConflictReason, ExpectedVersion, Result};

/// Appends a validated batch.
pub(crate) async fn append(
    store: &SqliteStore,
    conn: &mut SqliteConnection,
    expected: ExpectedVersion,
    events: Vec<Event>,
) -> Result<AppendResult> {
    let in_callers_transaction = conn.is_in_transaction();
    // A savepoint in the caller's transaction, or a transaction of our own
    // that takes the write lock before reading anything. Both are sqlx
    // transactions, so a cancelled append is rolled back before the
    // connection runs anything else.
    let begun = if in_callers_transaction {
        sqlx::Connection::begin(conn).await
    } else {
        conn.begin_with("BEGIN IMMEDIATE").await
    };
    let mut tx = begun.map_err(|e| append_error(store, e, &events[0], expected, false))?;
    match append_locked(store, &mut tx, expected, events, in_callers_transaction).await {
        Ok(result) => {
            tx.commit().await?;
            Ok(result)
        }
        Err(error) => {
            if let Err(rollback) = tx.rollback().await {
                tracing::warn!(%rollback, "could not roll back a failed append");
            }
            Err(error)
        }
    }
}

/// The append, inside its savepoint or transaction.
async fn append_locked(
    store: &SqliteStore,
    conn: &mut SqliteConnection,
    expected: ExpectedVersion,
    events: Vec<Event>,
    in_callers_transaction: bool,
) -> Result<AppendResult> {
    let first = &events[0];
    let refused = |e| append_error(store, e, first, expected, in_callers_transaction);
    let statements = &store.sql().append;
    let mut query =
        sqlx::query_scalar::<_, i64>(AssertSqlSafe(statements.for_expected(expected).clone()))
            .bind(first.bounded_context.as_str())
            .bind(first.aggregate_type.as_str())
            .bind(first.aggregate_id.as_str())
            .bind(events.len() as i64)
            .bind(crate::core::json_id_list(
                events.iter().map(|e| e.event_id),
            )?);
    if let ExpectedVersion::Exact(version) = expected {
        query = query.bind(version);
    }
    let base = query.fetch_optional(&mut *conn).await.map_err(refused)?;
    let Some(base) = base else {
        return store.resolve_refused_append(conn, expected, events).await;
    };
    let rows = insert(store, conn, &events, base).await.map_err(refused)?;
    crate::core::stored(events, rows)
}

/// Events per insert statement: 14 parameters each, well under SQLite's
/// 32,766 per statement.
const ROWS_PER_INSERT: usize = 1000;

/// Inserts the batch after version `base` with multi-row `VALUES`, in
/// statements of up to [`ROWS_PER_INSERT`] rows; returns the (version,
/// position) of each row. One parameter per value: against a JSON array
/// of the batch unpacked by `json_each`, which SQLite had to parse and
/// take apart again, es-bench `batch_100` went from 0.78 to 0.85 of plain
/// code on the store's tables.
async fn insert(
    store: &SqliteStore,
    conn: &mut SqliteConnection,
    events: &[Event],
    base: i64,
) -> std::result::Result<Vec<(i64, i64)>, sqlx::Error> {
    const ROW: &str = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
    const RETURNING: &str = " RETURNING aggregate_version, global_position";
    let first = &events[0];
    let prefix = &store.own().insert;
    let hash = crate::stream_hash(
        &first.bounded_context,
        &first.aggregate_type,
        &first.aggregate_id,
    );
    let mut rows = Vec::with_capacity(events.len());
    for (chunk, batch) in events.chunks(ROWS_PER_INSERT).enumerate() {
        let sql = crate::core::values_sql(prefix, ROW, batch.len(), RETURNING);
        let mut query = sqlx::query_as::<_, (i64, i64)>(AssertSqlSafe(sql));
        for (i, event) in batch.iter().enumerate() {
            let version = base + (chunk * ROWS_PER_INSERT + i + 1) as i64;
            query = query
                .bind(event.event_id.hyphenated())
                .bind(first.bounded_context.as_str())
                .bind(first.aggregate_type.as_str())
                .bind(first.aggregate_id.as_str())
                .bind(version)
                .bind(event.event_type.as_str())
                .bind(event.event_version)
                .bind(event.payload.get())
                .bind(event.metadata.get())
                .bind(event.correlation_id.map(uuid::Uuid::hyphenated))
                .bind(event.causation_id.map(uuid::Uuid::hyphenated))
                .bind(event.trace_id.as_deref())
                .bind(time(event.created_at))
                .bind(hash);
        }
        rows.extend(query.fetch_all(&mut *conn).await?);
    }
    Ok(rows)
}

/// Maps a failed append statement to the store's errors.
fn append_error(
    store: &SqliteStore,
    error: sqlx::Error,
    first: &Event,
    expected: ExpectedVersion,
    in_callers_transaction: bool,
) -> Error {
    let conflict = || Error::OptimisticConcurrency {
        aggregate: first.aggregate().to_owned(),
        expected,
        actual: None,
    };
    // The caller's transaction read before this write and another writer
    // holds or moved the database: see the module docs.
    if in_callers_transaction && is_busy(&error) {
        return conflict();
    }
    let Some(db) = error.as_database_error() else {
        return Error::Database(error);
    };
    if !matches!(db.kind(), sqlx::error::ErrorKind::UniqueViolation) {
        return Error::Database(error);
    }
    // "UNIQUE constraint failed: <table>.<column>, .."
    let events = store.names().events.as_str();
    let message = db.message();
    if message.ends_with(&format!("{events}.aggregate_version")) {
        conflict()
    } else if message.ends_with(&format!("{events}.event_id")) {
        Error::EventIdConflict {
            event_id: first.event_id,
            reason: EventIdConflictReason::StoredConcurrently,
        }
    } else {
        Error::Database(error)
    }
}
