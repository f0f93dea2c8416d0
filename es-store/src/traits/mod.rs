//! The store API, one trait per capability, as in the seed package; a
//! file per trait.
//!
//! Every method takes the connection to run on, so the caller owns the
//! transaction: pass `&mut *tx` for a [`sqlx::Transaction`] or `&mut *conn`
//! for a pooled connection.

mod checkpoints;
mod documents;
mod failure;
mod holder;
mod projection;
mod reader;
mod snapshots;
mod store;
mod stream;
mod umbrella;

pub use checkpoints::CheckpointStore;
pub use documents::DocumentStore;
pub use failure::ProjectionFailure;
pub use holder::CheckpointHolder;
pub use projection::ProjectionStore;
pub use reader::{EventReader, StoredEvent};
pub use snapshots::SnapshotStore;
pub use store::{Backend, Connection, EventStore};
pub use stream::AggregateStreamReader;
pub use umbrella::Store;
