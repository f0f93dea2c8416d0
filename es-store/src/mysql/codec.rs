//! What the core needs from MySQL: ids as 16 bytes, timestamps as
//! `DATETIME(6)` in UTC, JSON as text, lists as JSON arrays for
//! `JSON_CONTAINS` and `JSON_TABLE`, the head as the horizon and
//! `SKIP LOCKED` row locks as claims.

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use sqlx::mysql::MySqlRow;
use sqlx::{AssertSqlSafe, MySqlConnection, Row};
use uuid::Uuid;

use std::sync::Arc;

use super::{MySql, MySqlStore, Own};
use crate::core::Codec;
use crate::{AggregateRef, AppendResult, Error, Event, ExpectedVersion, Result, Snapshot};

/// `ER_DUP_ENTRY`: a unique key refused a row.
pub(super) const DUPLICATE_KEY: u16 = 1062;
/// `ER_LOCK_WAIT_TIMEOUT`: a lock was not granted in time; only the
/// statement is rolled back.
pub(super) const LOCK_WAIT_TIMEOUT: u16 = 1205;
/// `ER_LOCK_DEADLOCK`: InnoDB broke a deadlock by rolling back this
/// transaction, all of it.
pub(super) const DEADLOCK: u16 = 1213;

/// The server's error number, when the error is one.
pub(super) fn error_number(error: &sqlx::Error) -> Option<u16> {
    error
        .as_database_error()?
        .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
        .map(|e| e.number())
}

impl Codec for MySql {
    type Uuid = Uuid;
    /// Bound as `DATETIME(6)`: sqlx sends the UTC wall-clock time, and the
    /// column keeps it as is, whatever the session's time zone.
    type Time = DateTime<Utc>;
    type Json<'a> = &'a str;
    type NameList<'a> = Option<String>;
    type IdList = String;

    fn uuid(id: Uuid) -> Uuid {
        id
    }

    fn time(at: DateTime<Utc>) -> DateTime<Utc> {
        at
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

    fn get_uuid(row: &MySqlRow, index: usize) -> Result<Uuid> {
        Ok(row.try_get(index)?)
    }

    fn get_opt_uuid(row: &MySqlRow, index: usize) -> Result<Option<Uuid>> {
        Ok(row.try_get(index)?)
    }

    fn get_time(row: &MySqlRow, index: usize) -> Result<DateTime<Utc>> {
        Ok(row.try_get(index)?)
    }

    fn get_json(row: &MySqlRow, index: usize) -> Result<Box<RawValue>> {
        RawValue::from_string(Self::json_text(row, index)?.to_owned()).map_err(Error::Serialization)
    }

    /// The JSON text of a column, borrowed from the row (the table's
    /// `json_valid` check vouches for it).
    fn json_text(row: &MySqlRow, index: usize) -> Result<&str> {
        Ok(row.try_get_unchecked(index)?)
    }

    async fn append(
        store: &MySqlStore,
        conn: &mut MySqlConnection,
        expected: ExpectedVersion,
        events: Vec<Event>,
    ) -> Result<AppendResult> {
        super::append::append(store, conn, expected, events).await
    }

    async fn safe_position(store: &MySqlStore, conn: &mut MySqlConnection) -> Result<i64> {
        safe_position(store, conn).await
    }

    async fn claim_checkpoint(
        store: &MySqlStore,
        conn: &mut MySqlConnection,
        projection_name: &str,
    ) -> Result<Option<i64>> {
        claim_checkpoint(store, conn, projection_name).await
    }

    /// The aggregate's lock row, a row that always exists (see "Appending"
    /// on [`MySqlStore`]).
    async fn lock_aggregate_row(
        store: &MySqlStore,
        conn: &mut MySqlConnection,
        aggregate: AggregateRef<'_>,
    ) -> Result<()> {
        sqlx::query(AssertSqlSafe(store.own().sql.lock.clone()))
            .bind(aggregate.bounded_context)
            .bind(aggregate.aggregate_type)
            .bind(aggregate.aggregate_id)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// `lock_head` is a plain read here: a head it found is then locked.
    async fn lock_found_head(
        store: &MySqlStore,
        conn: &mut MySqlConnection,
        aggregate: AggregateRef<'_>,
        found: Option<i64>,
    ) -> Result<Option<i64>> {
        if found.is_none() {
            return Ok(None);
        }
        Ok(
            sqlx::query_scalar(AssertSqlSafe(store.own().sql.lock_found_head.clone()))
                .bind(aggregate.bounded_context)
                .bind(aggregate.aggregate_type)
                .bind(aggregate.aggregate_id)
                .fetch_optional(&mut *conn)
                .await?,
        )
    }

    async fn wait_checkpoint(
        store: &MySqlStore,
        conn: &mut MySqlConnection,
        projection_name: &str,
    ) -> Result<Option<i64>> {
        Ok(
            sqlx::query_scalar(AssertSqlSafe(store.own().sql.wait_checkpoint.clone()))
                .bind(projection_name)
                .fetch_optional(&mut *conn)
                .await?,
        )
    }

    fn probe_claim_sql(own: &Own) -> Option<&Arc<str>> {
        Some(&own.sql.probe_claim)
    }

    /// Measured against the server's `max_allowed_packet`.
    async fn check_snapshot(
        store: &MySqlStore,
        conn: &mut MySqlConnection,
        snapshot: &Snapshot,
    ) -> Result<()> {
        super::packet::check_snapshot(store, conn, snapshot).await
    }

    /// Measured against the server's `max_allowed_packet`.
    async fn check_document(
        store: &MySqlStore,
        conn: &mut MySqlConnection,
        collection: &str,
        id: &str,
        body: &RawValue,
    ) -> Result<()> {
        super::packet::check_document(store, conn, collection, id, body).await
    }
}

/// `ER_UNKNOWN_SYSTEM_VARIABLE`: MariaDB before 11.1 has no
/// `transaction_isolation` (only `tx_isolation`, which MySQL 8 dropped).
const UNKNOWN_SYSTEM_VARIABLE: u16 = 1193;

/// Positions are drawn under a lock held until commit, so they commit in
/// order and the head is safe: see "Gap-safe global reads" on
/// [`MySqlStore`]. Unless the session reads uncommitted rows: then the
/// head may be a position that rolls back and is drawn again, and the
/// read is refused ([`Error::UnsupportedIsolation`]).
///
/// The level comes with the head, in the same statement: no round trip
/// of its own. It is the session's level, read from the variable this
/// server has (tried in turn the first time, then remembered per store).
async fn safe_position(store: &MySqlStore, conn: &mut MySqlConnection) -> Result<i64> {
    use std::sync::atomic::Ordering;
    let statements = &store.own().sql.head_and_isolation;
    let known = &store.own().server.isolation_variable;
    let mut which = usize::from(known.load(Ordering::Relaxed) == 2);
    let (head, level): (i64, String) = loop {
        let read = sqlx::query_as(AssertSqlSafe(statements[which].clone()))
            .fetch_one(&mut *conn)
            .await;
        match read {
            Ok(row) => {
                known.store(which as u8 + 1, Ordering::Relaxed);
                break row;
            }
            // Refused before it ran: the caller's transaction is intact.
            Err(error) if which == 0 && error_number(&error) == Some(UNKNOWN_SYSTEM_VARIABLE) => {
                which = 1;
            }
            Err(error) => return Err(error.into()),
        }
    };
    if level.eq_ignore_ascii_case("READ-UNCOMMITTED") {
        return Err(Error::UnsupportedIsolation { level });
    }
    Ok(head)
}

/// Claims an existing checkpoint with `FOR UPDATE SKIP LOCKED`, and
/// creates a missing one (which this transaction then holds).
///
/// Two InnoDB behaviours shape it. Under `REPEATABLE READ` (the default)
/// a locking read that finds no row locks the gap where the row would be,
/// and two claimants that each locked the gap and then inserted would
/// deadlock: so existence is checked with a plain read, which locks
/// nothing, and only a row found is locked. And an insert that meets a
/// row another transaction is inserting waits for it; if that transaction
/// rolls back while two claimants wait, both get the gap and deadlock. So
/// the insert does not wait (`innodb_lock_wait_timeout = 0`, MariaDB; MySQL
/// waits at least a second): a checkpoint being created by someone else is
/// held by them, and the claim is `None`.
async fn claim_checkpoint(
    store: &MySqlStore,
    conn: &mut MySqlConnection,
    projection_name: &str,
) -> Result<Option<i64>> {
    let sql = store.sql();
    let exists: bool = sqlx::query_scalar(AssertSqlSafe(sql.checkpoint_exists.clone()))
        .bind(projection_name)
        .fetch_one(&mut *conn)
        .await?;
    if exists {
        return Ok(
            sqlx::query_scalar(AssertSqlSafe(sql.claim_checkpoint.clone()))
                .bind(projection_name)
                .fetch_optional(&mut *conn)
                .await?,
        );
    }
    sqlx::raw_sql(
        "SET @es_lock_wait_timeout = @@SESSION.innodb_lock_wait_timeout, \
             SESSION innodb_lock_wait_timeout = 0",
    )
    .execute(&mut *conn)
    .await?;
    let created = sqlx::query(AssertSqlSafe(sql.create_checkpoint.clone()))
        .bind(projection_name)
        .bind(crate::event::now())
        .execute(&mut *conn)
        .await;
    sqlx::raw_sql("SET SESSION innodb_lock_wait_timeout = @es_lock_wait_timeout")
        .execute(&mut *conn)
        .await?;
    match created.as_ref().map_err(error_number) {
        Ok(_) => Ok(Some(0)),
        // Being created by another transaction, which holds it.
        Err(Some(LOCK_WAIT_TIMEOUT)) => Ok(None),
        // Created and committed since this transaction's snapshot: claim
        // it (a locking read sees the latest row).
        Err(Some(DUPLICATE_KEY)) => Ok(sqlx::query_scalar(AssertSqlSafe(
            sql.claim_checkpoint.clone(),
        ))
        .bind(projection_name)
        .fetch_optional(&mut *conn)
        .await?),
        Err(_) => Err(created.unwrap_err().into()),
    }
}
