//! The append on PostgreSQL: one statement (see `sql::append`), the batch
//! as one array per column.

use serde_json::value::RawValue;
use sqlx::postgres::PgDatabaseError;
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, PgConnection, Row};
use uuid::Uuid;

use super::PostgresStore;
use crate::names::{EVENT_ID_KEY, STREAM_VERSION_KEY};
use crate::{AppendResult, Error, Event, EventIdConflictReason, ExpectedVersion, Result};

/// The event columns of an append, one array each. A column that is the
/// same for every event and is what the table stores when given nothing
/// (empty metadata, no correlation id, ...) is sent as `NULL` instead of an
/// array: `unnest` pads it with `NULL`s, and the statement puts the default
/// back. Most batches carry no tracing ids, and there is no point in
/// sending, and parsing, a hundred `{}`.
struct Columns<'a> {
    ids: Vec<Uuid>,
    types: Vec<&'a str>,
    versions: Vec<i32>,
    payloads: Vec<Json<&'a RawValue>>,
    metadata: Option<Vec<Json<&'a RawValue>>>,
    correlation_ids: Option<Vec<Option<Uuid>>>,
    causation_ids: Option<Vec<Option<Uuid>>>,
    trace_ids: Option<Vec<Option<&'a str>>>,
    created_at: Vec<chrono::DateTime<chrono::Utc>>,
}

impl<'a> Columns<'a> {
    fn new(events: &'a [Event]) -> Self {
        /// The column, unless no event has a value in it.
        fn unless_all<'e, T>(
            events: &'e [Event],
            value: impl Fn(&'e Event) -> T,
            empty: impl Fn(&T) -> bool,
        ) -> Option<Vec<T>> {
            if events.iter().all(|e| empty(&value(e))) {
                None
            } else {
                Some(events.iter().map(value).collect())
            }
        }
        Columns {
            ids: events.iter().map(|e| e.event_id).collect(),
            types: events.iter().map(|e| e.event_type.as_str()).collect(),
            versions: events.iter().map(|e| e.event_version).collect(),
            payloads: events.iter().map(|e| Json(&*e.payload)).collect(),
            metadata: unless_all(events, |e| Json(&*e.metadata), |m| m.0.get() == "{}"),
            correlation_ids: unless_all(events, |e| e.correlation_id, Option::is_none),
            causation_ids: unless_all(events, |e| e.causation_id, Option::is_none),
            trace_ids: unless_all(events, |e| e.trace_id.as_deref(), Option::is_none),
            created_at: events.iter().map(|e| e.created_at).collect(),
        }
    }
}

/// Appends a validated batch in one statement.
pub(crate) async fn append(
    store: &PostgresStore,
    conn: &mut PgConnection,
    expected: ExpectedVersion,
    events: Vec<Event>,
) -> Result<AppendResult> {
    let rows = {
        let first = &events[0];
        let sql = store
            .own()
            .append(&store.sql().append, expected, events.len());
        let query = sqlx::query(AssertSqlSafe(sql.clone()))
            .bind(first.bounded_context.as_str())
            .bind(first.aggregate_type.as_str())
            .bind(first.aggregate_id.as_str())
            .bind(events.len() as i64);
        let columns;
        let query = if let [event] = &events[..] {
            // the statement of a batch of one (see `sql::Batch::One`)
            query
                .bind(event.event_id)
                .bind(event.event_type.as_str())
                .bind(event.event_version)
                .bind(Json(&*event.payload))
                .bind((event.metadata.get() != "{}").then_some(Json(&*event.metadata)))
                .bind(event.correlation_id)
                .bind(event.causation_id)
                .bind(event.trace_id.as_deref())
                .bind(event.created_at)
        } else {
            columns = Columns::new(&events);
            query
                .bind(&columns.ids)
                .bind(&columns.types)
                .bind(&columns.versions)
                .bind(&columns.payloads)
                .bind(&columns.metadata)
                .bind(&columns.correlation_ids)
                .bind(&columns.causation_ids)
                .bind(&columns.trace_ids)
                .bind(&columns.created_at)
        };
        let mut query = query.bind(crate::stream_hash(
            &first.bounded_context,
            &first.aggregate_type,
            &first.aggregate_id,
        ));
        if let ExpectedVersion::Exact(version) = expected {
            query = query.bind(version);
        }
        query.fetch_all(&mut *conn).await
    };
    let rows = match rows {
        Ok(rows) => rows,
        Err(error) => {
            return match append_error(store, error, &events[0], expected) {
                Error::EventIdConflict { event_id, .. } => {
                    resolve_reused_id(store, conn, events, event_id).await
                }
                other => Err(other),
            };
        }
    };
    if rows.is_empty() {
        return store.resolve_refused_append(conn, expected, events).await;
    }
    let rows = rows
        .iter()
        .map(|row| Ok((row.try_get::<i64, _>(1)?, row.try_get::<i64, _>(0)?)))
        .collect::<Result<Vec<_>>>()?;
    crate::core::stored(events, rows)
}

/// A reused id was caught by the unique constraint: look at what is
/// stored to say what differs (or to return the stored result, when the
/// batch repeats it). When nothing can be read (the refusal aborted the
/// caller's transaction), the reason is `Unverified`.
async fn resolve_reused_id(
    store: &PostgresStore,
    conn: &mut PgConnection,
    events: Vec<Event>,
    event_id: Uuid,
) -> Result<AppendResult> {
    match store.stored_events(conn, &events).await {
        Ok(stored) if !stored.is_empty() => crate::replay::stored_result(&events, stored),
        _ => Err(Error::EventIdConflict {
            event_id,
            reason: EventIdConflictReason::Unverified,
        }),
    }
}

/// Maps a failed append statement to the store's errors.
fn append_error(
    store: &PostgresStore,
    error: sqlx::Error,
    first: &Event,
    expected: ExpectedVersion,
) -> Error {
    let Some(db) = error.as_database_error() else {
        return Error::Database(error);
    };
    if db.code().as_deref() != Some("23505") {
        return Error::Database(error);
    }
    let names = store.names();
    match db.constraint() {
        Some(c) if c == names.derived(STREAM_VERSION_KEY) => Error::OptimisticConcurrency {
            aggregate: first.aggregate().to_owned(),
            expected,
            actual: None,
        },
        Some(c) if c == names.derived(EVENT_ID_KEY) => {
            let event_id = db
                .try_downcast_ref::<PgDatabaseError>()
                .and_then(|pg| pg.detail())
                .and_then(parse_key_detail)
                .unwrap_or(first.event_id);
            Error::EventIdConflict {
                event_id,
                reason: EventIdConflictReason::StoredConcurrently,
            }
        }
        _ => Error::Database(error),
    }
}

/// The event id in a unique-violation detail: `Key (event_id)=(<uuid>) already exists.`
fn parse_key_detail(detail: &str) -> Option<Uuid> {
    let start = detail.find(")=(")? + 3;
    let end = start + detail[start..].find(')')?;
    detail[start..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_unique_violation_detail() {
        let id = Uuid::now_v7();
        assert_eq!(
            parse_key_detail(&format!("Key (event_id)=({id}) already exists.")),
            Some(id)
        );
        assert_eq!(parse_key_detail("nonsense"), None);
    }
}
