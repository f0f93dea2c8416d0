//! The append on MySQL, in a savepoint of the caller's transaction or a
//! transaction of its own: the aggregate's lock, the head check, the
//! positions, then the batch
//! (see "Appending" on [`MySqlStore`]).

use sqlx::mysql::MySqlQueryResult;
use sqlx::{AssertSqlSafe, Connection as _, MySqlConnection};

use std::ops::Range;

use super::MySqlStore;
use super::codec::{DEADLOCK, DUPLICATE_KEY, error_number};
use super::packet;
use crate::names::EVENT_ID_KEY;
use crate::{
    AppendResult, Error, Event, EventIdConflictReason, ExpectedVersion, Result, TextField,
};

/// How an append attempt ended inside its savepoint or transaction.
enum Attempt {
    /// Stored: the (version, position) of each row.
    Stored(Vec<(i64, i64)>),
    /// The head check refused: a version conflict, or a retried batch.
    Refused,
    /// An event id of the batch is stored already.
    ReusedId,
}

/// Appends a validated batch.
pub(crate) async fn append(
    store: &MySqlStore,
    conn: &mut MySqlConnection,
    expected: ExpectedVersion,
    events: Vec<Event>,
) -> Result<AppendResult> {
    let first = &events[0];
    let conflict = || Error::OptimisticConcurrency {
        aggregate: first.aggregate().to_owned(),
        expected,
        actual: None,
    };
    // Measured before anything is sent: a statement the server cannot
    // take would cost the connection, and the caller's transaction.
    let inserts = inserts(store, conn, &events).await?;
    // A savepoint in the caller's transaction, or a transaction of our own.
    // Both are sqlx transactions, so a cancelled append is rolled back
    // before the connection runs anything else.
    let mut tx = conn.begin().await?;
    let attempt = attempt(store, &mut tx, expected, &events, &inserts).await;
    let attempt = match attempt {
        Ok(Attempt::Stored(rows)) => {
            tx.commit().await?;
            return crate::core::stored(events, rows);
        }
        Ok(refused) => refused,
        Err(error) => {
            // The server may have been set to a smaller packet since the
            // limit was read: read it again before the next append.
            if matches!(error, sqlx::Error::Io(_))
                || error_number(&error) == Some(packet::PACKET_TOO_LARGE)
            {
                packet::forget_limit(store);
            }
            // A deadlock rolled the whole transaction back already, and
            // the savepoint with it.
            let deadlock = error_number(&error) == Some(DEADLOCK);
            if let Err(rollback) = tx.rollback().await
                && !deadlock
            {
                tracing::warn!(%rollback, "could not roll back a failed append");
            }
            return Err(if deadlock {
                conflict()
            } else {
                Error::Database(error)
            });
        }
    };
    // Nothing of the attempt is left; look at what is stored.
    tx.rollback().await?;
    match attempt {
        Attempt::Refused => store.resolve_refused_append(conn, expected, events).await,
        _ => {
            let stored = store.stored_events(conn, &events).await?;
            if stored.is_empty() {
                // Stored by a transaction committed after this one's
                // snapshot was taken, so it cannot be read here.
                return Err(Error::EventIdConflict {
                    event_id: first.event_id,
                    reason: EventIdConflictReason::StoredConcurrently,
                });
            }
            crate::replay::stored_result(&events, stored)
        }
    }
}

/// The statements, in lock order: the aggregate's lock row, its head
/// (checked and moved), the positions (the counter, held until commit),
/// then the batch.
///
/// Every append that may create a head, and
/// [`lock_aggregate`](crate::EventStore::lock_aggregate), takes the
/// aggregate's lock row first, a row that always exists, so creators of
/// one aggregate queue there. They never wait for each other's uncommitted
/// head row: InnoDB turns such waits into gap locks when the creator rolls
/// back, and two waiters then deadlock. `Exact` appends move an existing
/// head, whose row lock `lock_aggregate` also takes. And the counter is
/// taken last, so its holder never waits for an aggregate.
async fn attempt(
    store: &MySqlStore,
    conn: &mut MySqlConnection,
    expected: ExpectedVersion,
    events: &[Event],
    inserts: &[Range<usize>],
) -> std::result::Result<Attempt, sqlx::Error> {
    let first = &events[0];
    let count = events.len() as i64;
    let sql = store.sql();
    let statements = &sql.append;
    let aggregate = (
        first.bounded_context.as_str(),
        first.aggregate_type.as_str(),
        first.aggregate_id.as_str(),
    );
    // `Exact` moves a head that exists (a missing one fails the check
    // without creating anything), and the row lock of that head is the
    // aggregate's lock: `lock_aggregate` takes it too.
    if !matches!(expected, ExpectedVersion::Exact(_)) {
        sqlx::query(AssertSqlSafe(store.own().sql.lock.clone()))
            .bind(aggregate.0)
            .bind(aggregate.1)
            .bind(aggregate.2)
            .execute(&mut *conn)
            .await?;
    }
    // `Any` creates the head or moves it. Which one is decided with a plain
    // read: moving a missing row would lock the gap where it would be, and
    // creators of two aggregates in one gap would then deadlock. Committed
    // head rows are never deleted, so one the snapshot holds exists; one it
    // does not hold is created, and a duplicate key means it was committed
    // since.
    let create = match expected {
        ExpectedVersion::NoStream => true,
        ExpectedVersion::Exact(_) => false,
        ExpectedVersion::Any => {
            sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql.head_version.clone()))
                .bind(aggregate.0)
                .bind(aggregate.1)
                .bind(aggregate.2)
                .fetch_optional(&mut *conn)
                .await?
                .is_none()
        }
    };
    let created = create && {
        let inserted = sqlx::query(AssertSqlSafe(statements.no_stream.clone()))
            .bind(aggregate.0)
            .bind(aggregate.1)
            .bind(aggregate.2)
            .bind(count)
            .execute(&mut *conn)
            .await;
        match inserted {
            Ok(_) => true,
            Err(error) if error_number(&error) == Some(DUPLICATE_KEY) => false,
            Err(error) => return Err(error),
        }
    };
    // A head that exists already refuses `NoStream`; `Any` moves it.
    if create && !created && expected != ExpectedVersion::Any {
        return Ok(Attempt::Refused);
    }
    let base_version = if created {
        0
    } else {
        let Some(version) = move_head(store, conn, expected, aggregate, count).await? else {
            return Ok(Attempt::Refused);
        };
        version
    };
    let base_position = draw(store, conn, count).await?;
    let inserted = insert(store, conn, events, inserts, base_version, base_position).await;
    match inserted {
        Ok(rows) if rows == count as u64 => Ok(Attempt::Stored(
            (1..=count)
                .map(|n| (base_version + n, base_position + n))
                .collect(),
        )),
        Ok(rows) => Err(sqlx::Error::Protocol(format!(
            "append stored {rows} rows for {count} events"
        ))),
        Err(error) if is_duplicate_on(store, &error, EVENT_ID_KEY) => Ok(Attempt::ReusedId),
        Err(error) => Err(error),
    }
}

/// Events per insert statement: 15 parameters each, well under MySQL's
/// 65,535 per statement.
const ROWS_PER_INSERT: usize = 1000;

/// The batch's insert statements, as ranges of events: up to
/// [`ROWS_PER_INSERT`] rows each, and each within the server's
/// `max_allowed_packet`. An event whose row alone is too large is refused,
/// [`Error::PacketTooLarge`], before anything is sent.
///
/// A batch small enough for any server needs no look-up; otherwise the
/// limit is read once per store, and read again before refusing.
async fn inserts(
    store: &MySqlStore,
    conn: &mut MySqlConnection,
    events: &[Event],
) -> Result<Vec<Range<usize>>> {
    let split = |max| packet::split(events, packet::largest(max), ROWS_PER_INSERT);
    if let Ok(statements) = split(packet::SMALLEST_LIMIT)
        && statements.len() == 1
    {
        return Ok(statements);
    }
    if let Ok(statements) = split(packet::limit(store, conn, false).await?) {
        return Ok(statements);
    }
    let max = packet::limit(store, conn, true).await?;
    split(max).map_err(|(index, size)| Error::PacketTooLarge {
        field: TextField::Payload,
        index: Some(index),
        size,
        max,
    })
}

/// Inserts the batch with multi-row `VALUES`, one statement per range of
/// `inserts`; returns the rows stored.
async fn insert(
    store: &MySqlStore,
    conn: &mut MySqlConnection,
    events: &[Event],
    inserts: &[Range<usize>],
    base_version: i64,
    base_position: i64,
) -> std::result::Result<u64, sqlx::Error> {
    let first = &events[0];
    let prefix = &store.own().sql.insert;
    let hash = crate::stream_hash(
        &first.bounded_context,
        &first.aggregate_type,
        &first.aggregate_id,
    );
    let mut stored = 0;
    for range in inserts {
        const ROW: &str = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
        let sql = crate::core::values_sql(prefix, ROW, range.len(), "");
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for (i, event) in events[range.clone()].iter().enumerate() {
            let n = (range.start + i + 1) as i64;
            query = query
                .bind(base_position + n)
                .bind(event.event_id)
                .bind(first.bounded_context.as_str())
                .bind(first.aggregate_type.as_str())
                .bind(first.aggregate_id.as_str())
                .bind(base_version + n)
                .bind(event.event_type.as_str())
                .bind(event.event_version)
                .bind(event.payload.get())
                .bind(event.metadata.get())
                .bind(event.correlation_id)
                .bind(event.causation_id)
                .bind(event.trace_id.as_deref())
                .bind(event.created_at)
                .bind(hash);
        }
        stored += query.execute(&mut *conn).await?.rows_affected();
    }
    Ok(stored)
}

/// Draws `count` positions from the counter, locking it until commit;
/// returns the position before them.
async fn draw(
    store: &MySqlStore,
    conn: &mut MySqlConnection,
    count: i64,
) -> std::result::Result<i64, sqlx::Error> {
    let drawn = sqlx::query(AssertSqlSafe(store.own().sql.positions.clone()))
        .bind(count)
        .execute(&mut *conn)
        .await?;
    Ok(inserted_id(&drawn)? - count)
}

/// Moves an existing head by `count`: for `Exact`, only from the expected
/// version. Returns the version before the batch, or `None` when the head
/// is not where the append expects it.
async fn move_head(
    store: &MySqlStore,
    conn: &mut MySqlConnection,
    expected: ExpectedVersion,
    (bounded_context, aggregate_type, aggregate_id): (&str, &str, &str),
    count: i64,
) -> std::result::Result<Option<i64>, sqlx::Error> {
    let statements = &store.sql().append;
    let head = sqlx::query(AssertSqlSafe(statements.for_expected(expected).clone()))
        .bind(count)
        .bind(bounded_context)
        .bind(aggregate_type)
        .bind(aggregate_id);
    match expected {
        ExpectedVersion::Exact(version) => {
            let moved = head.bind(version).execute(&mut *conn).await?;
            Ok((moved.rows_affected() == 1).then_some(version))
        }
        _ => {
            let moved = head.execute(&mut *conn).await?;
            if moved.rows_affected() == 1 {
                Ok(Some(inserted_id(&moved)? - count))
            } else {
                Ok(None)
            }
        }
    }
}

/// The value a statement set with `LAST_INSERT_ID(expr)`.
fn inserted_id(done: &MySqlQueryResult) -> std::result::Result<i64, sqlx::Error> {
    i64::try_from(done.last_insert_id())
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| {
            sqlx::Error::Protocol(format!(
                "the server reported insert id {} where a counter was moved",
                done.last_insert_id()
            ))
        })
}

/// Whether a duplicate key error names the key derived with `suffix`
/// (MariaDB: `for key '<name>'`, MySQL: `for key '<table>.<name>'`).
fn is_duplicate_on(store: &MySqlStore, error: &sqlx::Error, suffix: &str) -> bool {
    if error_number(error) != Some(DUPLICATE_KEY) {
        return false;
    }
    let key = store.names().derived(suffix);
    error.as_database_error().is_some_and(|db| {
        let message = db.message();
        message.ends_with(&format!("'{key}'")) || message.ends_with(&format!(".{key}'"))
    })
}
