//! The append on MySQL, in a savepoint of the caller's transaction or a
//! transaction of its own: the positions, the head check, then the batch
//! (see "Appending" on [`MySqlStore`]).

use sqlx::mysql::MySqlQueryResult;
use sqlx::{AssertSqlSafe, Connection as _, MySqlConnection};

use super::MySqlStore;
use super::codec::{DEADLOCK, DUPLICATE_KEY, error_number, time_text};
use crate::names::EVENT_ID_KEY;
use crate::{AppendResult, Error, Event, EventIdConflictReason, ExpectedVersion, Result};

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
    // A savepoint in the caller's transaction, or a transaction of our own.
    // Both are sqlx transactions, so a cancelled append is rolled back
    // before the connection runs anything else.
    let mut tx = conn.begin().await?;
    let attempt = attempt(store, &mut tx, expected, &events).await;
    let attempt = match attempt {
        Ok(Attempt::Stored(rows)) => {
            tx.commit().await?;
            return crate::core::stored(events, rows);
        }
        Ok(refused) => refused,
        Err(error) => {
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

/// The statements, in lock order: the position counter (held until
/// commit), the aggregate's head row, then the batch. Taking the counter
/// first means that a transaction holding head locks from an append is
/// the one holding the counter, so appends never deadlock with each
/// other (see "Claims and deadlocks").
async fn attempt(
    store: &MySqlStore,
    conn: &mut MySqlConnection,
    expected: ExpectedVersion,
    events: &[Event],
) -> std::result::Result<Attempt, sqlx::Error> {
    let first = &events[0];
    let count = events.len() as i64;
    let statements = &store.sql().append;
    let drawn = sqlx::query(AssertSqlSafe(
        statements.positions.clone().expect("rendered for MySQL"),
    ))
    .bind(count)
    .execute(&mut *conn)
    .await?;
    let base_position = inserted_id(&drawn)? - count;
    let head = AssertSqlSafe(statements.for_expected(expected).clone());
    let moved = match expected {
        ExpectedVersion::Exact(version) => sqlx::query(head)
            .bind(count)
            .bind(first.bounded_context.as_str())
            .bind(first.aggregate_type.as_str())
            .bind(first.aggregate_id.as_str())
            .bind(version),
        ExpectedVersion::NoStream | ExpectedVersion::Any => sqlx::query(head)
            .bind(first.bounded_context.as_str())
            .bind(first.aggregate_type.as_str())
            .bind(first.aggregate_id.as_str())
            .bind(count),
    }
    .execute(&mut *conn)
    .await;
    let base_version = match (expected, moved) {
        (ExpectedVersion::Exact(version), Ok(done)) if done.rows_affected() == 1 => version,
        (ExpectedVersion::Exact(_), Ok(_)) => return Ok(Attempt::Refused),
        (ExpectedVersion::NoStream, Ok(_)) => 0,
        (ExpectedVersion::Any, Ok(done)) => inserted_id(&done)? - count,
        (_, Err(error)) if error_number(&error) == Some(DUPLICATE_KEY) => {
            return Ok(Attempt::Refused);
        }
        (_, Err(error)) => return Err(error),
    };
    let insert = AssertSqlSafe(statements.insert.clone().expect("rendered for MySQL"));
    let inserted = sqlx::query(insert)
        .bind(first.bounded_context.as_str())
        .bind(first.aggregate_type.as_str())
        .bind(first.aggregate_id.as_str())
        .bind(base_version)
        .bind(base_position)
        .bind(crate::stream_hash(
            &first.bounded_context,
            &first.aggregate_type,
            &first.aggregate_id,
        ))
        .bind(crate::core::batch_json(events, time_text).map_err(into_sqlx)?)
        .execute(&mut *conn)
        .await;
    match inserted {
        Ok(done) if done.rows_affected() == count as u64 => Ok(Attempt::Stored(
            (1..=count)
                .map(|n| (base_version + n, base_position + n))
                .collect(),
        )),
        Ok(done) => Err(sqlx::Error::Protocol(format!(
            "append stored {} rows for {count} events",
            done.rows_affected()
        ))),
        Err(error) if is_duplicate_on(store, &error, EVENT_ID_KEY) => Ok(Attempt::ReusedId),
        Err(error) => Err(error),
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

/// Serializing the batch cannot fail for validated events; if it did, it
/// is reported like any other failed statement.
fn into_sqlx(error: Error) -> sqlx::Error {
    sqlx::Error::Encode(Box::new(error))
}
