//! Event store types, traits, the PostgreSQL store and (feature `sqlite`)
//! the SQLite store.
//!
//! This crate implements the store API of the seed package: append with
//! optimistic concurrency, read one aggregate's stream, read the global feed
//! without gaps, and keep projection checkpoints. The caller owns the
//! transaction: every method takes the connection to run on.
//!
//! | feature | enables |
//! |---|---|
//! | `sqlite` | `SqliteStore`, an embedded backend with the same traits and behaviour (SQLite is compiled in; see the `sqlite` module's docs for how its single writer is handled) |
//!
//! ```no_run
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
//! let stream = store.read_aggregate_stream(&mut *conn, "Billing", "Account", "acc-1", None, None).await?;
//! assert_eq!(stream.version(), 1);
//! # Ok(()) }
//! ```

mod domain;
mod error;
mod event;
mod filter;
pub mod limits;
mod postgres;
mod replay;
#[cfg(feature = "sqlite")]
mod sqlite;
mod traits;
mod validate;

#[doc(hidden)]
pub use domain::__private;
pub use domain::{DecodeError, DomainEvent, EventTypeInfo};
pub use error::{Error, EventIdConflictReason, NameField, TextField, UnstorableTextReason};
pub use event::{
    AggregateKey, AggregateRef, AppendResult, Event, ExpectedVersion, Metadata, PersistedEvent,
    Snapshot, Stream,
};
pub use filter::{EventFilter, EventPage, Partition, stream_hash};
pub use postgres::{PostgresStore, PostgresStoreBuilder};
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteStore, SqliteStoreBuilder};
pub use traits::{
    AggregateStreamReader, Backend, CheckpointStore, Connection, EventReader, EventStore,
    ProjectionFailure, ProjectionStore, SnapshotStore, StoredEvent,
};

/// The store's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
