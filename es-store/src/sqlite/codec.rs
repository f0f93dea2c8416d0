//! What the core needs from SQLite: ids as hyphenated text, timestamps as
//! fixed-width RFC 3339 text, JSON as text, lists as JSON arrays for
//! `json_each`, the head as the horizon and the write lock as the claim.

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use sqlx::sqlite::SqliteRow;
use sqlx::{AssertSqlSafe, Row, SqliteConnection};
use uuid::Uuid;
use uuid::fmt::Hyphenated;

use super::{Sqlite, SqliteStore};
use crate::core::Codec;
use crate::{AppendResult, Error, Event, ExpectedVersion, ProjectionStore, Result};

/// SQLite's primary result code for "the database is locked"; its extended
/// codes (`SQLITE_BUSY_SNAPSHOT`, `SQLITE_BUSY_TIMEOUT`, ..) share the low
/// byte.
const SQLITE_BUSY: i32 = 5;

/// Whether SQLite refused to give this connection the write lock.
pub(super) fn is_busy(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|db| db.code())
        .and_then(|code| code.parse::<i32>().ok())
        .is_some_and(|code| code & 0xff == SQLITE_BUSY)
}

/// Timestamps are stored as RFC 3339 text in UTC with exactly six
/// fractional digits (`2024-05-01T12:00:00.000000Z`): see `sql::NOW`.
pub(super) fn time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

impl Codec for Sqlite {
    type Uuid = Hyphenated;
    type Time = String;
    type Json<'a> = &'a str;
    type NameList<'a> = Option<String>;
    type IdList = String;

    fn uuid(id: Uuid) -> Hyphenated {
        id.hyphenated()
    }

    fn time(at: DateTime<Utc>) -> String {
        time(at)
    }

    fn json(raw: &RawValue) -> &str {
        raw.get()
    }

    fn name_list(names: &[String]) -> Result<Option<String>> {
        crate::core::json_name_list(names)
    }

    fn id_list(ids: impl Iterator<Item = Uuid>) -> Result<String> {
        crate::core::json_id_list(ids)
    }

    fn get_uuid(row: &SqliteRow, index: usize) -> Result<Uuid> {
        Ok(row.try_get::<Hyphenated, _>(index)?.into_uuid())
    }

    fn get_opt_uuid(row: &SqliteRow, index: usize) -> Result<Option<Uuid>> {
        Ok(row
            .try_get::<Option<Hyphenated>, _>(index)?
            .map(Hyphenated::into_uuid))
    }

    fn get_time(row: &SqliteRow, index: usize) -> Result<DateTime<Utc>> {
        Ok(row.try_get(index)?)
    }

    fn get_json(row: &SqliteRow, index: usize) -> Result<Box<RawValue>> {
        RawValue::from_string(Self::json_text(row, index)?.to_owned()).map_err(Error::Serialization)
    }

    /// The JSON text of a column, borrowed from the row (the table's
    /// `json_valid` check vouches for it).
    fn json_text(row: &SqliteRow, index: usize) -> Result<&str> {
        Ok(row.try_get_unchecked(index)?)
    }

    async fn append(
        store: &SqliteStore,
        conn: &mut SqliteConnection,
        expected: ExpectedVersion,
        events: Vec<Event>,
    ) -> Result<AppendResult> {
        super::append::append(store, conn, expected, events).await
    }

    /// Writers are serialized, so positions commit in order and the head
    /// is safe: see "Gap-safe global reads" on [`SqliteStore`].
    async fn safe_position(store: &SqliteStore, conn: &mut SqliteConnection) -> Result<i64> {
        store.head_position(conn).await
    }

    async fn claim_checkpoint(
        store: &SqliteStore,
        conn: &mut SqliteConnection,
        projection_name: &str,
    ) -> Result<Option<i64>> {
        claim_checkpoint(store, conn, projection_name).await
    }

    // No statement size to check: the server has no packet limit that
    // would cost the connection (see `limits`).
}

/// Taking the write lock is the claim (see "Checkpoint claims" on
/// [`SqliteStore`]); the statement also creates a missing checkpoint at 0.
async fn claim_checkpoint(
    store: &SqliteStore,
    conn: &mut SqliteConnection,
    projection_name: &str,
) -> Result<Option<i64>> {
    let created = sqlx::query(AssertSqlSafe(store.sql().create_checkpoint.clone()))
        .bind(projection_name)
        .bind(time(crate::event::now()))
        .execute(&mut *conn)
        .await;
    match created {
        Ok(_) => {}
        Err(error) if is_busy(&error) => return Ok(None),
        Err(error) => return Err(error.into()),
    }
    let position: i64 = sqlx::query_scalar(AssertSqlSafe(store.sql().claim_checkpoint.clone()))
        .bind(projection_name)
        .fetch_one(&mut *conn)
        .await?;
    Ok(Some(position))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_fixed_width_and_round_trip() {
        let at = crate::event::now();
        let text = time(at);
        assert_eq!(text.len(), "2024-05-01T12:00:00.000000Z".len(), "{text}");
        assert_eq!(DateTime::parse_from_rfc3339(&text).unwrap(), at);
    }
}
