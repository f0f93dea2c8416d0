//! Event store types, traits, and the stores on PostgreSQL, SQLite and
//! MySQL / MariaDB.
//!
//! This crate implements the store API of the seed package: append with
//! optimistic concurrency, read one aggregate's stream, read the global feed
//! without gaps, and keep projection checkpoints. The caller owns the
//! transaction: every method takes the connection to run on.
//!
//! | feature | enables |
//! |---|---|
//! | `postgres` (default) | `PostgresStore`, on PostgreSQL 13 or later |
//! | `sqlite` | `SqliteStore`, an embedded backend with the same traits and behaviour (SQLite is compiled in; see `SqliteStore` for how its single writer is handled) |
//! | `mysql` | `MySqlStore`, on MySQL 8.0.16+ or MariaDB 10.6+ (InnoDB; see `MySqlStore` for its gap-safe positions) |
//!
//! Every backend is the same [`SqlStore`] over a [`Dialect`]: each capability
//! is written once, and a backend supplies only what really differs (its
//! SQL, value encodings, the append's locking, the gap-safe horizon and
//! checkpoint claims). Building with no backend is a compile error.
//!
//! ```no_run
//! # #[cfg(feature = "postgres")] mod demo {
//! use es_store::{AggregateStreamReader, Event, EventStore, ExpectedVersion, PostgresStore};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/test").await?;
//! let store = PostgresStore::new();
//! store.migrate(&pool).await?;
//!
//! let mut tx = pool.begin().await?;
//! let opened = Event::new("Billing", "Account", "acc-1", "Opened", &serde_json::json!({"owner": "alice"}))?;
//! store.append(&mut *tx, ExpectedVersion::NoStream, vec![opened]).await?;
//! tx.commit().await?;
//!
//! let mut conn = pool.acquire().await?;
//! let stream = store.read_aggregate_stream(&mut *conn, ("Billing", "Account", "acc-1"), ..).await?;
//! assert_eq!(stream.version(), 1);
//! # Ok(()) }
//! # }
//! ```

#[cfg(not(any(feature = "postgres", feature = "sqlite", feature = "mysql")))]
compile_error!(
    "es-store needs a database backend: enable at least one of its features \
     `postgres`, `sqlite` or `mysql` (for example `es = { features = [\"postgres\"] }`)"
);

pub mod admin;
mod command;
mod core;
pub mod documents;
mod domain;
mod error;
mod event;
mod filter;
pub mod limits;
#[cfg(feature = "postgres")]
pub mod listener;
#[cfg(feature = "mysql")]
mod mysql;
mod names;
mod pool;
#[cfg(feature = "postgres")]
mod postgres;
mod replay;
#[cfg(feature = "sqlite")]
mod sqlite;
mod store;
pub mod telemetry;
mod traits;
mod validate;
mod versions;

/// The backends' dialects: the type parameter of [`SqlStore`], each behind
/// the cargo feature of its name.
pub mod dialect {
    #[cfg(feature = "mysql")]
    pub use crate::mysql::MySql;
    #[cfg(feature = "postgres")]
    pub use crate::postgres::Postgres;
    #[cfg(feature = "sqlite")]
    pub use crate::sqlite::Sqlite;
}

pub use command::CommandId;
#[doc(hidden)]
pub use domain::__private;
pub use domain::{DecodeError, DomainEvent, EventTypeInfo};
pub use error::{Error, EventIdConflictReason, NameField, TextField, UnstorableTextReason};
pub use event::{
    AggregateKey, AggregateRef, AppendResult, AsAggregateRef, Event, ExpectedVersion, Metadata,
    PersistedEvent, Snapshot, Stream,
};
pub use filter::{EventFilter, EventPage, Partition, stream_hash};
#[cfg(feature = "mysql")]
pub use mysql::{MySqlStore, MySqlStoreBuilder};
pub use pool::acquire;
#[cfg(feature = "postgres")]
pub use postgres::{PostgresStore, PostgresStoreBuilder};
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteStore, SqliteStoreBuilder};
pub use store::{Dialect, SqlStore, StoreBuilder};
pub use traits::{
    AggregateStreamReader, Backend, CheckpointHolder, CheckpointStore, Connection, DocumentStore,
    EventReader, EventStore, ProjectionFailure, ProjectionStore, SnapshotStore, Store, StoredEvent,
};
pub use versions::{ProjectionVersion, UnknownVersionState, VersionState};

/// The store generic code names when it is not told: `PostgresStore`
/// when the `postgres` feature is on, else `SqliteStore` when `sqlite` is,
/// else `MySqlStore` (the default of `Repository`'s store parameter, say).
///
/// ```
/// let store = es_store::DefaultStore::new();
/// # let _ = store;
/// ```
#[cfg(feature = "postgres")]
pub type DefaultStore = PostgresStore;
/// The store generic code names when it is not told.
#[cfg(all(not(feature = "postgres"), feature = "sqlite"))]
pub type DefaultStore = SqliteStore;
/// The store generic code names when it is not told.
#[cfg(all(not(feature = "postgres"), not(feature = "sqlite"), feature = "mysql"))]
pub type DefaultStore = MySqlStore;

/// The store's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
