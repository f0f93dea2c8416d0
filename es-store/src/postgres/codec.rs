//! What the core needs from PostgreSQL: native `uuid`, `timestamptz` and
//! `jsonb` values, text arrays for filters, the gap-safe horizon and the
//! `SKIP LOCKED` checkpoint claim.

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, PgConnection, Row};
use uuid::Uuid;

use std::ops::RangeFrom;
use std::sync::Arc;
use std::time::Duration;

use super::sql::Sql;
use super::{Postgres, PostgresStore};
use crate::core::Codec;
use crate::{AggregateRef, AppendResult, Error, Event, ExpectedVersion, Result, StoredEvent};

impl Codec for Postgres {
    type Uuid = Uuid;
    type Time = DateTime<Utc>;
    type Json<'a> = Json<&'a RawValue>;
    type NameList<'a> = &'a [String];
    type IdList = Vec<Uuid>;

    fn uuid(id: Uuid) -> Uuid {
        id
    }

    fn time(at: DateTime<Utc>) -> DateTime<Utc> {
        at
    }

    fn json(raw: &RawValue) -> Json<&RawValue> {
        Json(raw)
    }

    fn name_list(names: &[String]) -> Result<&[String]> {
        Ok(names)
    }

    fn id_list(ids: impl Iterator<Item = Uuid>) -> Result<Vec<Uuid>> {
        Ok(ids.collect())
    }

    fn get_uuid(row: &PgRow, index: usize) -> Result<Uuid> {
        Ok(row.try_get(index)?)
    }

    fn get_opt_uuid(row: &PgRow, index: usize) -> Result<Option<Uuid>> {
        Ok(row.try_get(index)?)
    }

    fn get_time(row: &PgRow, index: usize) -> Result<DateTime<Utc>> {
        Ok(row.try_get(index)?)
    }

    fn get_json(row: &PgRow, index: usize) -> Result<Box<RawValue>> {
        let value: Json<&RawValue> = row.try_get(index)?;
        Ok(value.0.to_owned())
    }

    /// The JSON text of a `jsonb` column, borrowed from the row: in
    /// PostgreSQL's binary format a `jsonb` value is a version byte (1),
    /// then the text.
    fn json_text(row: &PgRow, index: usize) -> Result<&str> {
        let bytes: &[u8] = row.try_get_unchecked(index)?;
        match bytes.split_first() {
            Some((1, text)) => std::str::from_utf8(text)
                .map_err(|e| Error::Database(sqlx::Error::Decode(Box::new(e)))),
            _ => Err(Error::Database(sqlx::Error::Decode(
                "unsupported jsonb format version".into(),
            ))),
        }
    }

    async fn append(
        store: &PostgresStore,
        conn: &mut PgConnection,
        expected: ExpectedVersion,
        events: Vec<Event>,
    ) -> Result<AppendResult> {
        super::append::append(store, conn, expected, events).await
    }

    async fn safe_position(store: &PostgresStore, conn: &mut PgConnection) -> Result<i64> {
        safe_position(store, conn).await
    }

    async fn claim_checkpoint(
        store: &PostgresStore,
        conn: &mut PgConnection,
        projection_name: &str,
    ) -> Result<Option<i64>> {
        claim_checkpoint(store, conn, projection_name).await
    }

    /// One round trip: a function locks the head row, then reads the
    /// events in a statement of its own, whose snapshot is taken after the
    /// lock was granted.
    async fn lock_and_fold<F, E>(
        store: &PostgresStore,
        conn: &mut PgConnection,
        aggregate: AggregateRef<'_>,
        versions: RangeFrom<i64>,
        visit: F,
    ) -> std::result::Result<u64, E>
    where
        F: FnMut(StoredEvent<'_>) -> std::result::Result<(), E> + Send,
        E: From<Error> + Send,
    {
        let query = sqlx::query(AssertSqlSafe(store.own().locked_tail.clone()))
            .bind(aggregate.bounded_context)
            .bind(aggregate.aggregate_type)
            .bind(aggregate.aggregate_id)
            .bind(versions.start);
        super::visit_rows(query.fetch(&mut *conn), visit).await
    }

    /// The lease is set by the claimed row's own output: when no row is
    /// claimed it may not be, and the claim is made again the long way.
    async fn claim_leased(
        store: &PostgresStore,
        conn: &mut PgConnection,
        projection_name: &str,
        lease: Duration,
    ) -> Result<Option<i64>> {
        let millis = lease.as_millis().clamp(1, i32::MAX as u128).to_string();
        let claimed: Option<(i64, String)> =
            sqlx::query_as(AssertSqlSafe(store.own().claim_leased.clone()))
                .bind(projection_name)
                .bind(millis)
                .fetch_optional(&mut *conn)
                .await?;
        Ok(claimed.map(|(position, _)| position))
    }

    async fn wait_checkpoint(
        store: &PostgresStore,
        conn: &mut PgConnection,
        projection_name: &str,
    ) -> Result<Option<i64>> {
        Ok(
            sqlx::query_scalar(AssertSqlSafe(store.own().wait_checkpoint.clone()))
                .bind(projection_name)
                .fetch_optional(&mut *conn)
                .await?,
        )
    }

    async fn relax_durability(store: &PostgresStore, conn: &mut PgConnection) -> Result<()> {
        sqlx::query(AssertSqlSafe(store.own().relax_durability.clone()))
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    fn probe_claim_sql(own: &Sql) -> Option<&Arc<str>> {
        Some(&own.probe_claim)
    }

    fn claim_holder_sql(own: &Sql) -> Option<&Arc<str>> {
        Some(&own.claim_holder)
    }

    // No statement size to check: the server has no packet limit that
    // would cost the connection (see `limits`).
}

/// The horizon of the advisory locks appenders hold: see the gap-safety
/// notes.
async fn safe_position(store: &PostgresStore, conn: &mut PgConnection) -> Result<i64> {
    let row = sqlx::query(AssertSqlSafe(store.own().horizon.clone()))
        .fetch_one(&mut *conn)
        .await?;
    let allocated: i64 = row.try_get(0)?;
    let in_flight: Option<i64> = row.try_get(1)?;
    let isolation: String = row.try_get(2)?;
    if isolation != "read committed" {
        return Err(Error::UnsupportedIsolation { level: isolation });
    }
    if row.try_get::<bool, _>(3)? {
        return Err(Error::ReadOnStandby);
    }
    Ok(in_flight.map_or(allocated, |v| v.min(allocated)))
}

/// Takes the checkpoint row with `FOR UPDATE SKIP LOCKED`; creates it when
/// it is absent.
async fn claim_checkpoint(
    store: &PostgresStore,
    conn: &mut PgConnection,
    projection_name: &str,
) -> Result<Option<i64>> {
    let sql = store.sql();
    let claimed: Option<i64> = sqlx::query_scalar(AssertSqlSafe(sql.claim_checkpoint.clone()))
        .bind(projection_name)
        .fetch_optional(&mut *conn)
        .await?;
    if claimed.is_some() {
        return Ok(claimed);
    }
    // Held by someone else, or absent. Only an absent one is created:
    // inserting over a row another transaction has updated would wait for
    // that transaction. (A row this transaction inserts is locked by it.)
    let exists: bool = sqlx::query_scalar(AssertSqlSafe(sql.checkpoint_exists.clone()))
        .bind(projection_name)
        .fetch_one(&mut *conn)
        .await?;
    if exists {
        return Ok(None);
    }
    Ok(
        sqlx::query_scalar(AssertSqlSafe(sql.create_checkpoint.clone()))
            .bind(projection_name)
            .bind(crate::event::now())
            .fetch_optional(&mut *conn)
            .await?,
    )
}
