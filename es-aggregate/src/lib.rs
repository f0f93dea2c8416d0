//! Aggregates and the repository.
//!
//! An [`Aggregate`] is state folded from its events ([`Aggregate::apply`])
//! that decides what a command does ([`Aggregate::handle`]). The
//! [`Repository`] loads it from the store, runs the command, appends the
//! events with optimistic concurrency and retries on conflicts under a
//! [`RetryPolicy`]. Snapshots are opt-in per repository. [`testing`] checks
//! aggregates without a database.

mod aggregate;
mod cache;
mod failure;
pub mod projection;
mod repository;
mod retry;
mod telemetry;
pub mod testing;
mod unit;

pub use aggregate::Aggregate;
pub use failure::FailureKind;
pub use projection::{
    ErrorPolicy, Projection, ProjectionError, ProjectionProcessor, TypedProjection,
};
pub use repository::{CommandIdReuse, Executed, Loaded, Repository, RepositoryError, Result};
pub use retry::{Jitter, RetryPolicy};
pub use telemetry::current_trace_id;
pub use unit::{UnitOfWork, Work, WorkConn, WorkError};

/// What [`event_set!`] expands to names; not a public API.
#[doc(hidden)]
pub mod __private {
    pub use es_store::{DecodeError, PersistedEvent};
}
