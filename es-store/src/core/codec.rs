//! The contract between the core and a backend: how values are bound and
//! read back, and the few primitives whose algorithm really differs.
//!
//! Each backend implements [`Codec`] for its dialect in its own
//! `codec.rs`; the core calls it as `<D as Codec>::..`, so a missing or
//! mistyped primitive is a compile error in that backend, and go-to
//! definition leads from the core to each implementation. A capability one
//! backend lacks is a provided method that does nothing (as sqlx's
//! `Migrate` answers `ForceNotSupported`), never an `Option` the core
//! unwraps.

use std::future::Future;

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use uuid::Uuid;

use std::ops::RangeFrom;
use std::sync::Arc;
use std::time::Duration;

use crate::store::sealed;
use crate::{
    AggregateRef, AggregateStreamReader, AppendResult, Backend, Dialect, Error, Event, EventStore,
    ExpectedVersion, Result, Snapshot, SqlStore, StoredEvent,
};

/// The connection type of a dialect.
pub(crate) type Conn<D> = <<D as Dialect>::Database as sqlx::Database>::Connection;
/// The row type of a dialect.
pub(crate) type Row<D> = <<D as Dialect>::Database as sqlx::Database>::Row;

/// What a backend supplies to the core besides its SQL text (see the
/// module docs).
pub(crate) trait Codec: Dialect {
    /// An id, as bound.
    type Uuid;
    /// A timestamp, as bound.
    type Time;
    /// A JSON value, as bound.
    type Json<'a>;
    /// A filter's names, as bound: `None`-like (no restriction) when empty.
    type NameList<'a>;
    /// A batch's event ids, as bound.
    type IdList;

    /// Encodes an id for binding.
    fn uuid(id: Uuid) -> Self::Uuid;
    /// Encodes a timestamp for binding.
    fn time(at: DateTime<Utc>) -> Self::Time;
    /// Encodes a JSON value for binding.
    fn json(raw: &RawValue) -> Self::Json<'_>;
    /// Encodes a filter's names for binding.
    fn name_list(names: &[String]) -> Result<Self::NameList<'_>>;
    /// Encodes a batch's event ids for binding.
    fn id_list(ids: impl Iterator<Item = Uuid>) -> Result<Self::IdList>;

    /// Reads an id column.
    fn get_uuid(row: &Row<Self>, index: usize) -> Result<Uuid>;
    /// Reads a nullable id column.
    fn get_opt_uuid(row: &Row<Self>, index: usize) -> Result<Option<Uuid>>;
    /// Reads a timestamp column.
    fn get_time(row: &Row<Self>, index: usize) -> Result<DateTime<Utc>>;
    /// Reads a JSON column.
    fn get_json(row: &Row<Self>, index: usize) -> Result<Box<RawValue>>;
    /// The JSON text of a column, borrowed from the row.
    fn json_text(row: &Row<Self>, index: usize) -> Result<&str>;

    /// Appends a validated batch: the append statements and their locking.
    fn append(
        store: &SqlStore<Self>,
        conn: &mut Conn<Self>,
        expected: ExpectedVersion,
        events: Vec<Event>,
    ) -> impl Future<Output = Result<AppendResult>> + Send;

    /// The gap-safe horizon of global reads: nothing at or below it can
    /// still commit.
    fn safe_position(
        store: &SqlStore<Self>,
        conn: &mut Conn<Self>,
    ) -> impl Future<Output = Result<i64>> + Send;

    /// Claims a projection's checkpoint (creating it at 0 when missing):
    /// its position, or `None` when another transaction holds it.
    fn claim_checkpoint(
        store: &SqlStore<Self>,
        conn: &mut Conn<Self>,
        projection_name: &str,
    ) -> impl Future<Output = Result<Option<i64>>> + Send;

    /// Refuses a snapshot whose statement the server could not take
    /// without losing the connection. Provided: no such limit.
    fn check_snapshot(
        _store: &SqlStore<Self>,
        _conn: &mut Conn<Self>,
        _snapshot: &Snapshot,
    ) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }

    /// Refuses a document whose statement the server could not take
    /// without losing the connection. Provided: no such limit.
    fn check_document(
        _store: &SqlStore<Self>,
        _conn: &mut Conn<Self>,
        _collection: &str,
        _id: &str,
        _body: &RawValue,
    ) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }

    /// Takes the aggregate's own lock before its head is read, where
    /// appends take one first (MySQL). Provided: nothing to take, the
    /// head's row lock is the aggregate's lock.
    fn lock_aggregate_row(
        _store: &SqlStore<Self>,
        _conn: &mut Conn<Self>,
        _aggregate: AggregateRef<'_>,
    ) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }

    /// Locks the head that `lock_head` `found`, where `lock_head` is a
    /// plain read (MySQL); returns the locked version. Provided:
    /// `lock_head` locked it already.
    fn lock_found_head(
        _store: &SqlStore<Self>,
        _conn: &mut Conn<Self>,
        _aggregate: AggregateRef<'_>,
        found: Option<i64>,
    ) -> impl Future<Output = Result<Option<i64>>> + Send {
        async move { Ok(found) }
    }

    /// Locks the aggregate, then folds its events from `versions.start`
    /// (validated). Provided: the lock, then the fold, two round trips;
    /// PostgreSQL does both in one.
    fn lock_and_fold<F, E>(
        store: &SqlStore<Self>,
        conn: &mut Conn<Self>,
        aggregate: AggregateRef<'_>,
        versions: RangeFrom<i64>,
        visit: F,
    ) -> impl Future<Output = std::result::Result<u64, E>> + Send
    where
        F: FnMut(StoredEvent<'_>) -> std::result::Result<(), E> + Send,
        E: From<Error> + Send,
        SqlStore<Self>:
            EventStore + AggregateStreamReader + Backend<Database = <Self as Dialect>::Database>,
    {
        async move {
            EventStore::lock_aggregate(store, conn, aggregate).await?;
            store
                .fold_aggregate_stream(conn, aggregate, versions, visit)
                .await
        }
    }

    /// Claims a checkpoint and sets the transaction's `lease` in one
    /// statement, where the backend can (PostgreSQL): the position, or
    /// `None` when nothing was claimed that way and the claim is to be
    /// made the long way. Provided: `None`.
    fn claim_leased(
        _store: &SqlStore<Self>,
        _conn: &mut Conn<Self>,
        _projection_name: &str,
        _lease: Duration,
    ) -> impl Future<Output = Result<Option<i64>>> + Send {
        async { Ok(None) }
    }

    /// Reads a checkpoint's position, waiting for a transaction that
    /// holds it: `None` when it is missing. Provided: `None`, for a
    /// backend whose claim waits already (SQLite, whose claim is the
    /// write lock).
    fn wait_checkpoint(
        _store: &SqlStore<Self>,
        _conn: &mut Conn<Self>,
        _projection_name: &str,
    ) -> impl Future<Output = Result<Option<i64>>> + Send {
        async { Ok(None) }
    }

    /// Lets the transaction commit without waiting for durability, where
    /// the backend can. Provided: nothing.
    fn relax_durability(
        _store: &SqlStore<Self>,
        _conn: &mut Conn<Self>,
    ) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }

    /// The claim that never waits for a holder, where claims skip held
    /// rows: (name) -> position. Provided: none (SQLite, whose claim is
    /// the write lock), so a holder cannot be probed for.
    fn probe_claim_sql(_own: &<Self as sealed::Dialect>::Own) -> Option<&Arc<str>> {
        None
    }

    /// (name) -> (pid, application, client address) of the session whose
    /// transaction holds a checkpoint, where the server tells
    /// (PostgreSQL). Provided: none.
    fn claim_holder_sql(_own: &<Self as sealed::Dialect>::Own) -> Option<&Arc<str>> {
        None
    }
}
