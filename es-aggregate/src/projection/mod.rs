//! Projections: read models fed from the global feed, with checkpoints.
//!
//! A [`Projection`] handles events in global order. A
//! [`ProjectionProcessor`] reads them in batches through the store's
//! gap-safe reader, hands each batch to the projection inside a
//! transaction, moves the projection's checkpoint in that same transaction
//! and commits.
//!
//! # Delivery guarantees
//!
//! A read model kept in the same database as the events, written through
//! the transaction the handler is given, is updated **exactly once** per
//! event: the writes and the checkpoint commit together or not at all,
//! across crashes and restarts, and two processors never hold one
//! projection's checkpoint at once (the second skips it and tries later).
//! A handler that writes anywhere else (another database, a message broker,
//! an e-mail) gets **at-least-once** delivery: when a batch is rolled back
//! after such a write, the events are handled again. Make those effects
//! idempotent.
//!
//! # Live processing
//!
//! [`ProjectionProcessor::run`] keeps a projection current on every
//! backend: after each pass it waits until appends are committed in this
//! process (the store's in-process signal,
//! [`EventReader::committed_appends`](es_store::EventReader::committed_appends)),
//! a [`Wakeup`] comes (on PostgreSQL, the notification appending
//! transactions of any process send, through [`Notifier`]) or the polling
//! interval passes, whichever comes first; appends of other processes on
//! SQLite and MySQL are seen at the next poll. A batch that fails in the
//! store is retried after a backoff, and transient failures never stop
//! `run` unless [`ProjectionProcessor::with_give_up_after`] says so.
//! [`ProjectionProcessor::catch_up`] processes what is there and returns,
//! for tests, backfills and [rebuilds](ProjectionProcessor::rebuild).
//!
//! # Scaling out
//!
//! With [`ProjectionProcessor::with_partitions`], a projection's aggregates
//! are split into partitions by a stable hash of their identity, each with
//! its own checkpoint. Every worker (any number of processes) runs a
//! processor with the same partition count; a partition is processed by
//! whoever claims its checkpoint, a claim lasting one batch transaction.
//! When a worker dies its transaction is rolled back by the server, which
//! frees its partitions for the others; a worker that freezes inside a
//! batch loses them when its lease runs out
//! ([`ProjectionProcessor::with_lease`]), and cannot commit the batch
//! when it wakes. Each aggregate lives in one
//! partition, processed in global order, so its events are handled in order.
//!
//! # Rebuilds without downtime
//!
//! A projection has a [version](Projection::version). A new version builds
//! its own read model beside the active one, with checkpoints of its own,
//! while the active version keeps serving; it takes over when it has
//! caught up ([`ProjectionProcessor::switch_when_caught_up`], or its
//! workers' [`run`](ProjectionProcessor::run) by itself), in one
//! transaction with [`Projection::promote`], so that readers go from one
//! complete read model to the other. The store records which version is
//! active ([`ProjectionStore::active_projection_version`]); processors of
//! a superseded version stop ([`ProjectionError::Superseded`]), and
//! [`ProjectionProcessor::retire`] drops an old version. Handlers are told
//! which events they replay ([`Replay`], [`Envelope::replaying`]): those
//! appended before their version started, or before a
//! [rebuild](ProjectionProcessor::rebuild).

mod error;
mod handler;
mod processor;
mod status;
mod typed;
mod versions;
mod wakeup;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use es_store::{Backend, EventFilter, EventPage, Partition, PersistedEvent, ProjectionStore};
use tokio::sync::watch;
use tracing::Instrument;

use crate::RetryPolicy;
use crate::telemetry::ProjectionMetrics;

pub use error::{ProjectionError, Transient};
pub use handler::{BatchFailure, Context, HandlerError, Projection};
pub(crate) use handler::{
    NoReset, NoRetire, event_span, no_reset, no_retire, transient_store_error,
};
pub(crate) use processor::{Batch, Cursor};
pub use processor::{
    ErrorPolicy, MAX_BATCH_SIZE, MAX_LEASE, MAX_PARTITIONS, MIN_LEASE, MIN_POLL_INTERVAL,
    ProjectionProcessor,
};
pub use status::{CatchUp, ProjectionStatus};
pub use typed::{Envelope, EventSet, Typed, TypedProjection};
pub use versions::{Replay, Switched};
#[cfg(feature = "postgres")]
pub use wakeup::Notifier;
pub use wakeup::Wakeup;
