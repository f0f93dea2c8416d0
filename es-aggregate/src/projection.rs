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

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use es_store::{Backend, EventFilter, EventPage, Partition, PersistedEvent, ProjectionStore};
use tokio::sync::watch;
use tracing::Instrument;

use crate::RetryPolicy;
use crate::telemetry::ProjectionMetrics;

mod typed;
mod versions;

pub use typed::{Envelope, EventSet, Typed, TypedProjection};
pub use versions::{Replay, Switched};

/// What a handler may fail with.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// A read model fed by events.
///
/// ```no_run
/// use es_aggregate::projection::{HandlerError, Projection};
/// use es_store::{EventFilter, PersistedEvent};
/// use sqlx::PgConnection;
///
/// /// How many events each aggregate has, in table `event_counts`.
/// struct EventCounts;
///
/// impl Projection for EventCounts {
///     fn name(&self) -> &str {
///         "event_counts"
///     }
///
///     fn filter(&self) -> EventFilter {
///         EventFilter::all().bounded_context("Billing")
///     }
///
///     async fn handle(&self, tx: &mut PgConnection, event: &PersistedEvent) -> Result<(), HandlerError> {
///         sqlx::query(
///             "INSERT INTO event_counts (aggregate_id, events) VALUES ($1, 1)
///              ON CONFLICT (aggregate_id) DO UPDATE SET events = event_counts.events + 1",
///         )
///         .bind(&event.aggregate_id)
///         .execute(&mut *tx)
///         .await?;
///         Ok(())
///     }
///
///     async fn reset(&self, tx: &mut PgConnection) -> Result<(), HandlerError> {
///         sqlx::query("TRUNCATE event_counts").execute(&mut *tx).await?;
///         Ok(())
///     }
/// }
/// ```
pub trait Projection<DB: sqlx::Database = <es_store::DefaultStore as Backend>::Database>:
    Send + Sync + 'static
{
    /// The projection's name: the key of its checkpoint. Changing it starts
    /// the projection over.
    fn name(&self) -> &str;

    /// The projection's version (1 by default). A new version is a new
    /// read model built beside the old one, from the start of the feed,
    /// with checkpoints of its own (`name@v2`, `name@v2#0/4`; version 1
    /// keeps the plain `name`), and takes over from it when it has caught
    /// up ([`ProjectionProcessor::switch_when_caught_up`]). Name the
    /// version's tables after it (`balances_v2`) so that both live side by
    /// side; see [`promote`](Projection::promote) and
    /// [`retire`](Projection::retire).
    fn version(&self) -> u32 {
        1
    }

    /// Which events the projection wants (all by default). The filter runs
    /// in the database.
    fn filter(&self) -> EventFilter {
        EventFilter::all()
    }

    /// Whether handling an event does something besides writing the read
    /// model in the batch's transaction, that a replay would do again:
    /// publishing it (es-nats's `Publisher`), mailing, calling another
    /// service. False by default. The processor records it with the
    /// projection's version ([`ProjectionVersion::side_effects`](es_store::ProjectionVersion::side_effects)),
    /// and the `es` command line refuses to rewind or rebuild a projection
    /// that declares it unless forced (`--force`).
    ///
    /// ```
    /// use es_aggregate::projection::{HandlerError, Projection};
    /// use es_store::PersistedEvent;
    ///
    /// struct WelcomeMails;
    ///
    /// impl Projection<sqlx::Sqlite> for WelcomeMails {
    ///     fn name(&self) -> &str {
    ///         "welcome_mails"
    ///     }
    ///
    ///     fn has_side_effects(&self) -> bool {
    ///         true
    ///     }
    ///
    ///     async fn handle(&self, _: &mut sqlx::SqliteConnection, _: &PersistedEvent) -> Result<(), HandlerError> {
    ///         Ok(()) // ... send the mail ...
    ///     }
    /// }
    ///
    /// assert!(Projection::<sqlx::Sqlite>::has_side_effects(&WelcomeMails));
    /// ```
    fn has_side_effects(&self) -> bool {
        false
    }

    /// Handles one event, inside the transaction that will also move the
    /// checkpoint past it. Decoding into a derived event enum is one call:
    /// `AccountEvent::from_persisted(event)?`.
    fn handle(
        &self,
        tx: &mut DB::Connection,
        event: &PersistedEvent,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// Handles a batch of events, in order, in one transaction. By default
    /// it calls [`handle`](Projection::handle) for each; override it to
    /// write a whole batch with one statement. On failure, say which event
    /// failed if you know it.
    fn handle_batch(
        &self,
        tx: &mut DB::Connection,
        events: &[PersistedEvent],
    ) -> impl Future<Output = Result<(), BatchFailure>> + Send {
        async move {
            for (index, event) in events.iter().enumerate() {
                self.handle(tx, event)
                    .instrument(event_span(event))
                    .await
                    .map_err(|error| BatchFailure {
                        index: Some(index),
                        error,
                    })?;
            }
            Ok(())
        }
    }

    /// [`handle`](Projection::handle), told which events are replayed: the
    /// processor calls it when it replays a failed batch one event at a
    /// time, to find the event at fault (in a transaction it rolls back).
    /// By default it ignores `replay` and calls `handle`.
    fn handle_with(
        &self,
        tx: &mut DB::Connection,
        event: &PersistedEvent,
        replay: &Replay,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        let _ = replay;
        self.handle(tx, event)
    }

    /// [`handle_batch`](Projection::handle_batch), told which of the events
    /// are replayed: the processor calls this one for every batch, and by
    /// default it ignores `replay` and calls `handle_batch`. Override it
    /// (and [`handle_with`](Projection::handle_with)) to hold back side
    /// effects (mails, calls to other services) for replayed events, with
    /// [`Replay::is_replaying`].
    ///
    /// ```no_run
    /// use es_aggregate::projection::{BatchFailure, HandlerError, Projection, Replay};
    /// use es_store::PersistedEvent;
    /// use sqlx::PgConnection;
    ///
    /// struct Welcome;
    ///
    /// impl Projection for Welcome {
    ///     fn name(&self) -> &str {
    ///         "welcome_mails"
    ///     }
    ///
    ///     async fn handle(&self, _: &mut PgConnection, _: &PersistedEvent) -> Result<(), HandlerError> {
    ///         Ok(())
    ///     }
    ///
    ///     async fn handle_batch_with(
    ///         &self,
    ///         _tx: &mut PgConnection,
    ///         events: &[PersistedEvent],
    ///         replay: &Replay,
    ///     ) -> Result<(), BatchFailure> {
    ///         for event in events.iter().filter(|e| !replay.is_replaying(e)) {
    ///             println!("mail the owner of {}", event.aggregate_id);
    ///         }
    ///         Ok(())
    ///     }
    /// }
    /// ```
    fn handle_batch_with(
        &self,
        tx: &mut DB::Connection,
        events: &[PersistedEvent],
        replay: &Replay,
    ) -> impl Future<Output = Result<(), BatchFailure>> + Send {
        let _ = replay;
        self.handle_batch(tx, events)
    }

    /// Makes readers see this version's read model, in the transaction that
    /// records it as the active version
    /// ([`ProjectionProcessor::switch_when_caught_up`]): on PostgreSQL and
    /// SQLite, for example, replace a view readers query
    /// (`CREATE OR REPLACE VIEW balances AS SELECT * FROM balances_v2`),
    /// which then switches with the version, atomically. Does nothing by
    /// default, for readers that look the active version up themselves
    /// ([`ProjectionStore::active_projection_version`]).
    /// On MySQL, DDL commits the transaction it runs in: swap nothing here,
    /// look the version up instead.
    fn promote(
        &self,
        tx: &mut DB::Connection,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        let _ = tx;
        async { Ok(()) }
    }

    /// Drops the read model of `version` (an older version that was
    /// replaced, or an abandoned newer one), in the transaction that also
    /// removes its checkpoints and its record
    /// ([`ProjectionProcessor::retire`]). A projection that does not say
    /// how (the default) cannot retire versions: `retire` refuses with
    /// [`ProjectionError::NoRetire`] and changes nothing.
    fn retire(
        &self,
        tx: &mut DB::Connection,
        version: u32,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        let _ = (tx, version);
        async { Err(no_retire()) }
    }

    /// Clears the read model before a [rebuild](ProjectionProcessor::rebuild),
    /// in the transaction that also resets the checkpoint. A projection
    /// that does not say how (the default) cannot be rebuilt: `rebuild`
    /// refuses to start, with [`ProjectionError::NoReset`], and changes
    /// nothing. (A projection with nothing to clear returns `Ok(())`.)
    fn reset(
        &self,
        tx: &mut DB::Connection,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        let _ = tx;
        async { Err(no_reset()) }
    }
}

/// The span of one event's handling: where it is in the feed, whose it
/// is, and the ids that tie it to the command (and trace) that stored it.
pub(crate) fn event_span(event: &PersistedEvent) -> tracing::Span {
    tracing::debug_span!(
        "projection_event",
        position = event.global_position,
        bounded_context = %event.bounded_context,
        aggregate_type = %event.aggregate_type,
        aggregate_id = %event.aggregate_id,
        version = event.aggregate_version,
        event_type = %event.event_type,
        event_id = %event.event_id,
        correlation_id = event.correlation_id.map(tracing::field::display),
        causation_id = event.causation_id.map(tracing::field::display),
        trace_id = event.trace_id.as_deref(),
    )
}

/// The store error a handler failed with, when it is a transient one
/// (as the handler's `?` on a sqlx or store call leaves it); else the
/// handler's error back.
fn transient_store_error(error: HandlerError) -> Result<es_store::Error, HandlerError> {
    let error = match error.downcast::<sqlx::Error>() {
        Ok(sqlx) => {
            let store = es_store::Error::from(*sqlx);
            return if store.is_transient() {
                Ok(store)
            } else {
                Err(Box::new(store))
            };
        }
        Err(other) => other,
    };
    match error.downcast::<es_store::Error>() {
        Ok(store) if store.is_transient() => Ok(*store),
        Ok(store) => Err(store),
        Err(other) => Err(other),
    }
}

/// What the default [`Projection::reset`] fails with.
#[derive(Debug, thiserror::Error)]
#[error("the projection does not implement `reset`")]
struct NoReset;

pub(crate) fn no_reset() -> HandlerError {
    Box::new(NoReset)
}

/// What the default [`Projection::retire`] fails with.
#[derive(Debug, thiserror::Error)]
#[error("the projection does not implement `retire`")]
struct NoRetire;

pub(crate) fn no_retire() -> HandlerError {
    Box::new(NoRetire)
}

/// Why a batch failed.
#[derive(Debug)]
#[non_exhaustive]
pub struct BatchFailure {
    /// The index in the batch of the event that failed, when known.
    pub index: Option<usize>,
    /// The handler's error.
    pub error: HandlerError,
}

impl BatchFailure {
    /// A failure of the event at `index`.
    pub fn at(index: usize, error: impl Into<HandlerError>) -> Self {
        Self {
            index: Some(index),
            error: error.into(),
        }
    }

    /// A failure of the batch as a whole: the processor replays the batch
    /// one event at a time to find the event at fault.
    pub fn whole_batch(error: impl Into<HandlerError>) -> Self {
        Self {
            index: None,
            error: error.into(),
        }
    }
}

/// What a processor does when a handler fails. The failed batch is always
/// rolled back first.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum ErrorPolicy {
    /// Stop with [`ProjectionError::Handler`], naming the projection, the
    /// event and its position. The checkpoint stays before the batch. The
    /// default.
    Stop,
    /// Try the batch again after the policy's backoff, as many times as it
    /// allows, then stop.
    Retry(RetryPolicy),
    /// Record the event and the error in the store's failures table, handle
    /// the events before it, move the checkpoint past it and go on.
    Skip,
}

/// Why a processor stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectionError {
    /// A handler failed and the error policy gave up.
    #[error(
        "projection `{projection}` failed on event {event_id} ({event_type}) at position {global_position} after {attempts} attempt(s): {source}"
    )]
    Handler {
        /// The projection.
        projection: String,
        /// The event's global position.
        global_position: i64,
        /// The event's id.
        event_id: uuid::Uuid,
        /// The event's type.
        event_type: String,
        /// How many times the batch was tried.
        attempts: u32,
        /// The handler's error.
        #[source]
        source: HandlerError,
    },
    /// A rebuild was asked of a projection that does not say how to clear
    /// its read model ([`Projection::reset`] is not implemented); nothing
    /// was changed.
    #[error(
        "projection `{projection}` cannot be rebuilt: it does not implement `reset`, so its read model cannot be cleared before the replay"
    )]
    NoReset {
        /// The projection.
        projection: String,
    },
    /// [`Projection::reset`] failed; nothing was reset.
    #[error("projection `{projection}` could not be reset: {source}")]
    Reset {
        /// The projection.
        projection: String,
        /// The error.
        #[source]
        source: HandlerError,
    },
    /// This processor's version of the projection no longer runs: a newer
    /// version took over (see
    /// [`ProjectionProcessor::switch_when_caught_up`]). Its processors
    /// stop with this error instead of writing a read model nobody reads;
    /// stop the old deployment.
    #[error(
        "version {version} of projection `{projection}` was superseded by version {active}: its processors no longer handle events"
    )]
    Superseded {
        /// The projection.
        projection: String,
        /// This processor's version.
        version: u32,
        /// The active version.
        active: u32,
    },
    /// This processor's version of the projection was retired
    /// ([`ProjectionProcessor::retire`]) while no newer version is active
    /// (an abandoned new version).
    #[error("version {version} of projection `{projection}` was retired")]
    Retired {
        /// The projection.
        projection: String,
        /// This processor's version.
        version: u32,
    },
    /// A version was asked to be retired that is not recorded.
    #[error("projection `{projection}` has no version {version} to retire")]
    UnknownVersion {
        /// The projection.
        projection: String,
        /// The version asked for.
        version: u32,
    },
    /// The active version was asked to be retired: readers are served from
    /// it. Switch to another version first.
    #[error(
        "version {version} of projection `{projection}` is the active one and cannot be retired"
    )]
    RetireActive {
        /// The projection.
        projection: String,
        /// The version.
        version: u32,
    },
    /// A version was asked to be retired by a projection that does not say
    /// how to drop its read model ([`Projection::retire`] is not
    /// implemented); nothing was changed.
    #[error(
        "projection `{projection}` cannot retire version {version}: it does not implement `retire`, so the version's read model cannot be dropped"
    )]
    NoRetire {
        /// The projection.
        projection: String,
        /// The version asked for.
        version: u32,
    },
    /// [`Projection::retire`] failed; nothing was retired.
    #[error("projection `{projection}` could not retire version {version}: {source}")]
    Retire {
        /// The projection.
        projection: String,
        /// The version.
        version: u32,
        /// The error.
        #[source]
        source: HandlerError,
    },
    /// [`Projection::promote`] failed; the switch was rolled back and the
    /// previous version stays active.
    #[error("projection `{projection}` could not promote version {version}: {source}")]
    Promote {
        /// The projection.
        projection: String,
        /// The version.
        version: u32,
        /// The error.
        #[source]
        source: HandlerError,
    },
    /// The store failed.
    #[error("projection `{projection}`: {source}")]
    Store {
        /// The projection.
        projection: String,
        /// The store's error.
        #[source]
        source: es_store::Error,
    },
    /// A setting of the processor is out of its allowed range (a
    /// partition count over [`MAX_PARTITIONS`], a batch over
    /// [`MAX_BATCH_SIZE`], a polling interval under
    /// [`MIN_POLL_INTERVAL`], a lease outside [`MIN_LEASE`]..=[`MAX_LEASE`]):
    /// the processor refused to start, and nothing was read or written.
    /// Returned by [`catch_up`](ProjectionProcessor::catch_up),
    /// [`run`](ProjectionProcessor::run),
    /// [`rebuild`](ProjectionProcessor::rebuild),
    /// [`switch_when_caught_up`](ProjectionProcessor::switch_when_caught_up)
    /// and [`status`](ProjectionProcessor::status).
    ///
    /// ```
    /// use es_aggregate::ProjectionError;
    /// let refused = ProjectionError::InvalidSetting {
    ///     projection: "balances".into(),
    ///     setting: "with_partitions",
    ///     value: "4294967295".into(),
    ///     allowed: "1..=1024".into(),
    /// };
    /// assert_eq!(
    ///     refused.to_string(),
    ///     "projection `balances`: with_partitions(4294967295) is out of range (allowed: 1..=1024); nothing was done"
    /// );
    /// assert!(!refused.is_transient());
    /// ```
    #[error(
        "projection `{projection}`: {setting}({value}) is out of range (allowed: {allowed}); nothing was done"
    )]
    InvalidSetting {
        /// The projection.
        projection: String,
        /// The setter of the setting (`with_partitions`, `with_batch_size`,
        /// `with_poll_interval`, `with_lease`).
        setting: &'static str,
        /// The value it was given.
        value: String,
        /// The values it allows.
        allowed: String,
    },
    /// The handler said what it writes to is unavailable for now (it
    /// failed with a [`Transient`]): the batch was rolled back, nothing
    /// skipped. [`run`](ProjectionProcessor::run) tries it again after a
    /// backoff, as it does transient store failures.
    #[error("projection `{projection}`: unavailable for now: {source}")]
    Unavailable {
        /// The projection.
        projection: String,
        /// What the handler failed with (inside its [`Transient`]).
        #[source]
        source: HandlerError,
    },
}

impl ProjectionError {
    /// Whether trying again later may succeed: a transient store failure
    /// ([`es_store::Error::is_transient`]) or [`ProjectionError::Unavailable`].
    ///
    /// ```
    /// use es_aggregate::ProjectionError;
    /// let unavailable = ProjectionError::Unavailable {
    ///     projection: "to-search-index".into(),
    ///     source: "the index is restarting".into(),
    /// };
    /// assert!(unavailable.is_transient());
    /// ```
    pub fn is_transient(&self) -> bool {
        match self {
            ProjectionError::Store { source, .. } => source.is_transient(),
            ProjectionError::Unavailable { .. } => true,
            _ => false,
        }
    }
}

/// A handler's failure that is not the events' fault: what it writes to
/// (a service it calls, a broker, another database) is unavailable for
/// now. The processor treats it as it treats a transient store failure:
/// the batch is rolled back and tried again after a backoff, never skipped
/// nor counted against the [`ErrorPolicy`], and `run` keeps going
/// ([`ProjectionProcessor::with_give_up_after`] bounds it). A handler's
/// `?` on a transient sqlx or store error is recognised without it.
///
/// ```
/// use es_aggregate::projection::{HandlerError, Transient};
///
/// fn send(index_up: bool) -> Result<(), HandlerError> {
///     if !index_up {
///         return Err(Transient::new(std::io::Error::other("search index restarting")).into());
///     }
///     Ok(())
/// }
/// let error = send(false).unwrap_err();
/// assert!(error.is::<Transient>());
/// assert_eq!(error.to_string(), "search index restarting");
/// ```
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct Transient(HandlerError);

impl Transient {
    /// Marks `error` as transient.
    pub fn new(error: impl Into<HandlerError>) -> Self {
        Self(error.into())
    }

    /// The error it marks.
    pub fn into_inner(self) -> HandlerError {
        self.0
    }
}

/// A signal that new events may be there. Cheap to clone; see [`Notifier`].
#[derive(Debug, Clone)]
pub struct Wakeup(watch::Receiver<u64>);

impl Wakeup {
    /// A wakeup that never fires (the processor relies on polling), with its
    /// sender, to fire it from your own code (for example after appends in
    /// the same process).
    ///
    /// ```
    /// let (wake, wakeup) = es_aggregate::projection::Wakeup::manual();
    /// wake.send_modify(|n| *n += 1);
    /// # drop(wakeup);
    /// ```
    pub fn manual() -> (watch::Sender<u64>, Wakeup) {
        let (tx, rx) = watch::channel(0);
        (tx, Wakeup(rx))
    }

    /// Waits for the next signal; returns at once if one came since the
    /// last wait. Never returns if the sender is gone.
    async fn wait(&mut self) {
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(feature = "postgres")]
/// Listens to the store's append notifications on one PostgreSQL
/// connection and wakes every subscribed processor. It registers itself
/// with the store, which notifies only while someone listens, and refreshes
/// that registration every 10 seconds. The connection is re-established
/// when it is lost (processors are woken then too, since notifications may
/// have been missed).
///
/// ```no_run
/// use es_aggregate::projection::Notifier;
/// # async fn demo(pool: sqlx::PgPool, store: es_store::PostgresStore) -> Result<(), es_store::Error> {
/// let notifier = Notifier::listen(&pool, &store).await?;
/// let wakeup = notifier.subscribe();
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Notifier {
    wakeups: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

#[cfg(feature = "postgres")]
impl Notifier {
    /// Starts listening to `store`'s appends, on a connection of its own
    /// made with `pool`'s connect options (so it never holds one of the
    /// pool's connections). The pool's `after_connect` hook does not run on
    /// it: a store without a schema must then find its tables through the
    /// connect options' search path (`PgConnectOptions::options`), or be
    /// given a schema.
    pub async fn listen(
        pool: &sqlx::PgPool,
        store: &es_store::PostgresStore,
    ) -> Result<Self, es_store::Error> {
        let own = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect_lazy_with((*pool.connect_options()).clone());
        let mut listener = sqlx::postgres::PgListener::connect_with(&own).await?;
        let channel = store.notification_channel();
        listener.listen(&channel).await?;
        register(store, &mut listener).await?;
        let (tx, wakeups) = watch::channel(0u64);
        let store = store.clone();
        let task = tokio::spawn(async move {
            let mut refresh = tokio::time::interval(Duration::from_secs(10));
            refresh.tick().await; // the first tick is now: registered already
            loop {
                let received = tokio::select! {
                    received = listener.try_recv() => received,
                    _ = refresh.tick() => {
                        if let Err(error) = register(&store, &mut listener).await {
                            tracing::warn!(channel, %error, "could not refresh the listener registration");
                        }
                        continue;
                    }
                };
                match received {
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        tracing::debug!(channel, "notification connection lost, reconnecting");
                        // Reconnects, listens again, registers the new connection.
                        if let Err(error) = register(&store, &mut listener).await {
                            tracing::warn!(channel, %error, "could not register after reconnecting");
                        }
                    }
                    Err(sqlx::Error::PoolClosed) => return,
                    Err(error) => {
                        tracing::warn!(channel, %error, "notification connection failed, retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
                // Drain what is buffered, then wake once.
                while listener.next_buffered().is_some() {}
                tx.send_modify(|n| *n = n.wrapping_add(1));
            }
        });
        Ok(Self { wakeups, task })
    }

    /// A wakeup for one processor.
    pub fn subscribe(&self) -> Wakeup {
        let mut rx = self.wakeups.clone();
        rx.mark_unchanged();
        Wakeup(rx)
    }
}

#[cfg(feature = "postgres")]
/// Registers the listener's connection (connecting and listening again
/// first if it was lost).
async fn register(
    store: &es_store::PostgresStore,
    listener: &mut sqlx::postgres::PgListener,
) -> Result<(), es_store::Error> {
    let conn = sqlx::Acquire::acquire(&mut *listener).await?;
    store.register_listener(conn).await
}

#[cfg(feature = "postgres")]
impl Drop for Notifier {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A projection's checkpoint and how far it trails the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProjectionStatus {
    /// The projection.
    pub name: String,
    /// The processor's version of it.
    pub version: u32,
    /// The lowest checkpoint among its partitions.
    pub checkpoint: i64,
    /// Each partition's checkpoint (one entry without partitions).
    pub partitions: Vec<i64>,
    /// Who holds each partition now (in the order of `partitions`): a
    /// worker in the middle of a batch, named on PostgreSQL
    /// ([`ProjectionStore::checkpoint_holder`]).
    pub holders: Vec<es_store::CheckpointHolder>,
    /// The highest position in the store.
    pub head: i64,
    /// `head - checkpoint`.
    pub lag: i64,
    /// When the oldest event the projection has yet to handle was created
    /// (`None` when it has handled everything it can see).
    pub oldest_pending: Option<chrono::DateTime<chrono::Utc>>,
    /// How long that event has waited: the lag in time (zero when caught
    /// up).
    pub lag_time: Duration,
}

impl ProjectionStatus {
    /// Whether the projection is stalled: an event has waited to be
    /// handled for longer than `threshold` (no worker is making progress,
    /// or not enough). A health check for an alert or a readiness probe.
    ///
    /// ```no_run
    /// # use es_aggregate::projection::{Projection, ProjectionProcessor};
    /// # async fn demo<P: Projection>(processor: ProjectionProcessor<es_store::PostgresStore, P>) -> Result<(), Box<dyn std::error::Error>> {
    /// let status = processor.status().await?;
    /// if status.is_stalled(std::time::Duration::from_secs(60)) {
    ///     eprintln!("{} is {:?} behind", status.name, status.lag_time);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn is_stalled(&self, threshold: Duration) -> bool {
        self.lag_time > threshold
    }
}

/// What one catch-up did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CatchUp {
    /// Events handled.
    pub events: u64,
    /// Batches committed.
    pub batches: u64,
    /// Events skipped under [`ErrorPolicy::Skip`].
    pub skipped: u64,
}

/// The most partitions a processor takes
/// ([`ProjectionProcessor::with_partitions`]): each is a checkpoint that
/// every pass, [`status`](ProjectionProcessor::status) and
/// [`rebuild`](ProjectionProcessor::rebuild) visits, and far more than the
/// workers a projection can usefully have.
pub const MAX_PARTITIONS: u32 = 1024;

/// The largest batch ([`ProjectionProcessor::with_batch_size`]): a batch
/// is held in memory (twice, with its read ahead) and handled in one
/// transaction.
pub const MAX_BATCH_SIZE: u32 = 10_000;

/// The shortest polling interval ([`ProjectionProcessor::with_poll_interval`]):
/// shorter would make [`run`](ProjectionProcessor::run) a busy loop
/// against the database.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(1);

/// The shortest lease ([`ProjectionProcessor::with_lease`]): MySQL counts
/// it in whole seconds, and a shorter one would take partitions from
/// workers that merely paused.
pub const MIN_LEASE: Duration = Duration::from_secs(1);

/// The longest lease ([`ProjectionProcessor::with_lease`]): PostgreSQL
/// keeps it in `idle_in_transaction_session_timeout`, a 32-bit number of
/// milliseconds (about 24.8 days).
pub const MAX_LEASE: Duration = Duration::from_millis(i32::MAX as u64);

/// How many times in a row a rebuild's reset is tried again after a
/// transient store failure (a lock wait that timed out, a deadlock).
const REBUILD_TRANSIENT_RETRIES: u32 = 10;

/// Feeds one projection from the store.
pub struct ProjectionProcessor<S: Backend, P> {
    store: S,
    pool: sqlx::Pool<S::Database>,
    projection: Arc<P>,
    batch_size: i64,
    poll_interval: Duration,
    partitions: u32,
    error_policy: ErrorPolicy,
    wakeup: Option<Wakeup>,
    durable_commits: bool,
    prefetch: bool,
    give_up_after: Option<u32>,
    lease: Duration,
    auto_switch: bool,
    /// Registered at the first batch, after the application installed its
    /// metrics recorder.
    metrics: std::sync::OnceLock<ProjectionMetrics>,
}

/// A page being read ahead, while the batch before it is handled.
struct ReadAhead {
    key: String,
    from: i64,
    page: tokio::task::JoinHandle<Result<EventPage, es_store::Error>>,
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.page.abort();
    }
}

impl<S: Backend, P> std::fmt::Debug for ProjectionProcessor<S, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectionProcessor")
            .field("batch_size", &self.batch_size)
            .field("poll_interval", &self.poll_interval)
            .field("partitions", &self.partitions)
            .field("error_policy", &self.error_policy)
            .finish_non_exhaustive()
    }
}

/// How one batch attempt ended.
enum Batch {
    /// Another processor holds the checkpoint.
    Busy,
    /// Nothing (more) to handle.
    Idle,
    /// Events handled and committed.
    Handled { events: u64, skipped: u64 },
    /// The batch failed and the error policy wants it tried again.
    Retry,
}

impl<S, P> ProjectionProcessor<S, Typed<P>>
where
    S: ProjectionStore + Clone,
    P: TypedProjection<S::Database>,
{
    /// A processor of a [`TypedProjection`], with the defaults of
    /// [`new`](Self::new). `processor.projection()` dereferences to it.
    pub fn typed(store: S, pool: sqlx::Pool<S::Database>, projection: P) -> Self {
        Self::new(store, pool, Typed(projection))
    }
}

impl<S, P> ProjectionProcessor<S, P>
where
    S: ProjectionStore + Clone,
    P: Projection<S::Database>,
{
    /// A processor with batches of 500 events, a polling interval of one
    /// second, no partitions and [`ErrorPolicy::Stop`].
    pub fn new(store: S, pool: sqlx::Pool<S::Database>, projection: P) -> Self {
        Self::shared(store, pool, Arc::new(projection))
    }

    /// Like [`new`](Self::new), for a projection shared with other code.
    pub fn shared(store: S, pool: sqlx::Pool<S::Database>, projection: Arc<P>) -> Self {
        Self {
            store,
            pool,
            projection,
            batch_size: 500,
            poll_interval: Duration::from_secs(1),
            partitions: 1,
            error_policy: ErrorPolicy::Stop,
            wakeup: None,
            durable_commits: true,
            prefetch: true,
            give_up_after: None,
            lease: Duration::from_secs(30),
            auto_switch: true,
            metrics: std::sync::OnceLock::new(),
        }
    }

    /// How long a worker may hold a partition without a word to the
    /// database (30 s by default): a worker frozen inside a batch (a
    /// stopped process, a long pause, a host gone without closing its
    /// connections) loses the partition after that, to whichever worker
    /// claims it next, and cannot commit the batch when it wakes (the
    /// server has ended its session; see
    /// [`ProjectionStore::lease_transaction`]). Exactly once holds: the
    /// frozen batch is rolled back whole. Handlers must not spend longer
    /// than this between two statements of a batch (an external call
    /// inside a batch, say), or the batch fails. On SQLite one process
    /// holds the write lock until it resumes, whatever the lease.
    ///
    /// Allowed: [`MIN_LEASE`]..=[`MAX_LEASE`] (1 s to about 24.8 days);
    /// outside it [`catch_up`](Self::catch_up), [`run`](Self::run) and the
    /// others refuse to start with [`ProjectionError::InvalidSetting`].
    ///
    /// ```no_run
    /// # use es_aggregate::projection::{Projection, ProjectionProcessor};
    /// # fn demo<P: Projection>(pool: sqlx::PgPool, projection: P) {
    /// let processor = ProjectionProcessor::new(es_store::PostgresStore::new(), pool, projection)
    ///     .with_partitions(8)
    ///     .with_lease(std::time::Duration::from_secs(10));
    /// # }
    /// ```
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Whether [`run`](Self::run), for a version catching up beside the
    /// active one, makes it the active one as soon as it has caught up (at
    /// the end of a pass over its partitions, each read to the head), as
    /// [`switch_when_caught_up`](Self::switch_when_caught_up) does
    /// (default: yes). Without it the new version follows the feed beside
    /// the active one until something calls `switch_when_caught_up`: to
    /// check the new read model first, say.
    ///
    /// ```no_run
    /// # use es_aggregate::projection::{Projection, ProjectionProcessor};
    /// # fn demo<P: Projection>(pool: sqlx::PgPool, projection: P) {
    /// let processor = ProjectionProcessor::new(es_store::PostgresStore::new(), pool, projection)
    ///     .with_auto_switch(false);
    /// # }
    /// ```
    pub fn with_auto_switch(mut self, auto_switch: bool) -> Self {
        self.auto_switch = auto_switch;
        self
    }

    /// After how many transient store failures in a row (a lost
    /// connection, a restarting server, a deadlock, a pool timeout)
    /// [`run`](Self::run) gives up; by default it never does, retrying
    /// each after a backoff growing from 50 ms to 5 s. Other store errors
    /// stop it after 10 in a row.
    ///
    /// ```no_run
    /// # use es_aggregate::projection::{Projection, ProjectionProcessor};
    /// # fn demo<P: Projection>(pool: sqlx::PgPool, projection: P) {
    /// let processor = ProjectionProcessor::new(es_store::PostgresStore::new(), pool, projection)
    ///     .with_give_up_after(Some(100));
    /// # }
    /// ```
    pub fn with_give_up_after(mut self, failures: Option<u32>) -> Self {
        self.give_up_after = failures;
        self
    }

    /// Events per batch (and per transaction): 1..=[`MAX_BATCH_SIZE`] (0
    /// is taken as 1). A larger one is refused when the processor starts
    /// ([`ProjectionError::InvalidSetting`]).
    pub fn with_batch_size(mut self, batch_size: u32) -> Self {
        self.batch_size = i64::from(batch_size.max(1));
        self
    }

    /// How long [`run`](Self::run) waits for a wakeup before looking anyway
    /// (default 1 s): at least [`MIN_POLL_INTERVAL`] (a shorter one is
    /// refused when the processor starts, with
    /// [`ProjectionError::InvalidSetting`]: it would poll the database in
    /// a busy loop), and no longest (`Duration::MAX` never polls, and
    /// relies on wakeups).
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Splits the projection's aggregates into `count` partitions
    /// (1..=[`MAX_PARTITIONS`]; 0 is taken as 1), each with its own
    /// checkpoint, so that several workers share the work. Every worker of
    /// a projection must use the same count; changing it needs a rebuild.
    /// A count over the maximum is refused when the processor starts
    /// ([`ProjectionError::InvalidSetting`]), before anything is sized by
    /// it.
    ///
    /// ```no_run
    /// # use es_aggregate::projection::{Projection, ProjectionProcessor};
    /// # async fn demo<P: Projection>(pool: sqlx::PgPool, projection: P) {
    /// let processor = ProjectionProcessor::new(es_store::PostgresStore::new(), pool, projection)
    ///     .with_partitions(u32::MAX);
    /// let refused = processor.catch_up().await.unwrap_err();
    /// assert!(matches!(
    ///     refused,
    ///     es_aggregate::ProjectionError::InvalidSetting { setting: "with_partitions", .. }
    /// ));
    /// # }
    /// ```
    pub fn with_partitions(mut self, count: u32) -> Self {
        self.partitions = count.max(1);
        self
    }

    /// What to do when the handler fails.
    pub fn with_error_policy(mut self, policy: ErrorPolicy) -> Self {
        self.error_policy = policy;
        self
    }

    /// Whether each batch's commit waits until it is durable (default:
    /// yes). Without waiting, a crash can lose the last batches committed
    /// (read model writes and checkpoint together, so they are handled
    /// again: still exactly once), and a catch-up runs much faster on disks
    /// with slow flushes. Keep the default if the handler appends events to
    /// the store: those would become visible before they are durable.
    pub fn with_durable_commits(mut self, durable: bool) -> Self {
        self.durable_commits = durable;
        self
    }

    /// Whether the next batch is read (on a second connection) while the
    /// current one is handled (default: yes). Events up to a page's end
    /// never change, so a page read ahead is used as is when the checkpoint
    /// is where the read began.
    pub fn with_read_ahead(mut self, read_ahead: bool) -> Self {
        self.prefetch = read_ahead;
        self
    }

    /// Wakes [`run`](Self::run) when new events may be there.
    pub fn with_wakeup(mut self, wakeup: Wakeup) -> Self {
        self.wakeup = Some(wakeup);
        self
    }

    /// The projection.
    pub fn projection(&self) -> &P {
        &self.projection
    }

    fn metrics(&self) -> &ProjectionMetrics {
        self.metrics
            .get_or_init(|| ProjectionMetrics::new(self.projection.name()))
    }

    fn store_error(&self, source: impl Into<es_store::Error>) -> ProjectionError {
        ProjectionError::Store {
            projection: self.projection.name().to_owned(),
            source: source.into(),
        }
    }

    /// The first setting out of its allowed range, if any: refused before
    /// anything is sized by it or sent to the database.
    pub(crate) fn invalid_setting(&self) -> Option<ProjectionError> {
        let (setting, value, allowed) = if self.partitions > MAX_PARTITIONS {
            (
                "with_partitions",
                self.partitions.to_string(),
                format!("1..={MAX_PARTITIONS}"),
            )
        } else if self.batch_size > i64::from(MAX_BATCH_SIZE) {
            (
                "with_batch_size",
                self.batch_size.to_string(),
                format!("1..={MAX_BATCH_SIZE}"),
            )
        } else if self.poll_interval < MIN_POLL_INTERVAL {
            (
                "with_poll_interval",
                format!("{:?}", self.poll_interval),
                format!("at least {MIN_POLL_INTERVAL:?}"),
            )
        } else if !(MIN_LEASE..=MAX_LEASE).contains(&self.lease) {
            (
                "with_lease",
                format!("{:?}", self.lease),
                format!("{MIN_LEASE:?}..={MAX_LEASE:?}"),
            )
        } else {
            return None;
        };
        Some(ProjectionError::InvalidSetting {
            projection: self.projection.name().to_owned(),
            setting,
            value,
            allowed,
        })
    }

    /// The checkpoint name of each partition.
    fn checkpoint_names(&self) -> Vec<(String, EventFilter)> {
        let name = es_store::ProjectionVersion::checkpoint_stem(
            self.projection.name(),
            self.projection.version(),
        );
        let filter = self.projection.filter();
        if self.partitions == 1 {
            return vec![(name, filter)];
        }
        (0..self.partitions)
            .map(|index| {
                let partition = Partition::new(index, self.partitions).expect("index < count");
                (
                    format!("{name}#{index}/{}", self.partitions),
                    filter.clone().partition(partition),
                )
            })
            .collect()
    }

    /// Handles events until a read of every partition finds nothing more,
    /// then returns: the read model is then current up to the feed's safe
    /// position at that moment. Waits for partitions another processor is
    /// working on. (Under appends that never pause it keeps going: use
    /// [`run`](Self::run) to follow the feed.)
    pub async fn catch_up(&self) -> Result<CatchUp, ProjectionError> {
        self.register().await?;
        let mut total = CatchUp::default();
        let mut pending = self.checkpoint_names();
        let mut policy_attempts = 1;
        let mut ahead = None;
        while !pending.is_empty() {
            let mut still = Vec::new();
            for (key, filter) in pending {
                loop {
                    match self
                        .batch(&key, &filter, &mut policy_attempts, &mut ahead)
                        .await?
                    {
                        Batch::Busy => {
                            still.push((key, filter));
                            policy_attempts = 1;
                            break;
                        }
                        Batch::Idle => {
                            policy_attempts = 1;
                            break;
                        }
                        Batch::Retry => {}
                        Batch::Handled { events, skipped } => {
                            total.events += events;
                            total.skipped += skipped;
                            total.batches += 1;
                        }
                    }
                }
            }
            if !still.is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            pending = still;
        }
        self.metrics().caught_up();
        Ok(total)
    }

    /// Keeps the projection current until `shutdown` completes: processes
    /// what is there, then waits until appends are committed in this
    /// process ([`EventReader::committed_appends`](es_store::EventReader::committed_appends),
    /// on every backend), a [`Wakeup`] comes (a PostgreSQL notification,
    /// for appends of other processes), or the polling interval passes.
    ///
    /// A store failure is retried after a backoff (from 50 ms up to 5 s),
    /// without waiting for a wakeup: transient ones
    /// ([`es_store::Error::is_transient`]) for ever by default
    /// ([`with_give_up_after`](Self::with_give_up_after)), others up to 10
    /// in a row. Returns an error when the error policy gives up on a
    /// handler, or when store failures outlast that.
    ///
    /// A version catching up beside the active one becomes the active one
    /// when it has caught up (unless
    /// [`with_auto_switch(false)`](Self::with_auto_switch)); a version
    /// that a newer one superseded stops with
    /// [`ProjectionError::Superseded`] at its next batch.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<(), ProjectionError> {
        if let Some(refused) = self.invalid_setting() {
            return Err(refused);
        }
        let mut wakeup = self.wakeup.clone();
        let mut appended = self.store.committed_appends();
        let partitions = self.checkpoint_names();
        let mut policy_attempts = 1;
        let mut ahead = None;
        let (mut transient_failures, mut other_failures) = (0u32, 0u32);
        let backoff =
            RetryPolicy::exponential(u32::MAX, Duration::from_millis(50), Duration::from_secs(5));
        tokio::pin!(shutdown);
        let mut failures = 0;
        let mut active;
        loop {
            let registered = tokio::select! {
                biased;
                () = &mut shutdown => return Ok(()),
                registered = self.register() => registered,
            };
            match registered {
                Ok(version) => {
                    active = version.state == es_store::VersionState::Active;
                    break;
                }
                Err(ProjectionError::Store { source, .. })
                    if source.is_transient()
                        && self.give_up_after.is_none_or(|limit| failures + 1 < limit) =>
                {
                    failures += 1;
                    tokio::select! {
                        biased;
                        () = &mut shutdown => return Ok(()),
                        () = tokio::time::sleep(backoff.backoff(failures)) => {}
                    }
                }
                Err(error) => return Err(error),
            }
        }
        // Start the partitions at a different place in each worker so that
        // workers spread out.
        let offset = (std::process::id() as usize + Arc::as_ptr(&self.projection) as usize)
            % partitions.len();
        // Say that a worker runs, now and every heartbeat (for operators'
        // tools: see `ProjectionVersion::worker_seen_at`).
        let mut next_beat = tokio::time::Instant::now();
        loop {
            // What is committed from here on wakes the wait below.
            appended.borrow_and_update();
            let mut progressed = false;
            for i in 0..partitions.len() {
                let (key, filter) = &partitions[(offset + i) % partitions.len()];
                loop {
                    if next_beat <= tokio::time::Instant::now() {
                        tokio::select! {
                            biased;
                            () = &mut shutdown => return Ok(()),
                            () = self.record_worker() => {}
                        }
                        next_beat = tokio::time::Instant::now()
                            + es_store::ProjectionVersion::WORKER_HEARTBEAT;
                    }
                    let batch = tokio::select! {
                        biased;
                        () = &mut shutdown => return Ok(()),
                        batch = self.batch(key, filter, &mut policy_attempts, &mut ahead) => batch,
                    };
                    match batch {
                        Ok(Batch::Handled { .. } | Batch::Retry) => {
                            progressed = true;
                            (transient_failures, other_failures) = (0, 0);
                        }
                        Ok(Batch::Busy | Batch::Idle) => {
                            // A partition's retry budget is its own. (Store
                            // failures are counted until a batch succeeds,
                            // so one failing partition cannot hide behind
                            // idle ones.)
                            policy_attempts = 1;
                            break;
                        }
                        Err(
                            error @ (ProjectionError::Store { .. }
                            | ProjectionError::Unavailable { .. }),
                        ) => {
                            let transient = error.is_transient();
                            let failures = if transient {
                                transient_failures += 1;
                                transient_failures
                            } else {
                                other_failures += 1;
                                other_failures
                            };
                            let limit = if transient {
                                self.give_up_after
                            } else {
                                Some(10)
                            };
                            if limit.is_some_and(|limit| failures >= limit) {
                                return Err(error);
                            }
                            let wait = backoff.backoff(transient_failures + other_failures);
                            tracing::warn!(
                                projection = self.projection.name(),
                                %error,
                                ?wait,
                                "batch failed, retrying"
                            );
                            tokio::select! {
                                biased;
                                () = &mut shutdown => return Ok(()),
                                () = tokio::time::sleep(wait) => {}
                            }
                            // Tried again at once, not at the next wakeup.
                            progressed = true;
                            break;
                        }
                        Err(error) => return Err(error),
                    }
                }
            }
            if self.auto_switch && !active {
                // A pass ends when every partition has been read to the
                // head (or was busy): caught up beside the active version,
                // take over. (Waiting for a pass that found nothing would
                // wait for a pause in the appends.)
                let switched = tokio::select! {
                    biased;
                    () = &mut shutdown => return Ok(()),
                    switched = self.try_switch() => switched,
                };
                match switched {
                    Ok(Some(_)) => active = true,
                    Ok(None) => {
                        // A claim was busy (a batch in flight): again, soon.
                        tokio::select! {
                            biased;
                            () = &mut shutdown => return Ok(()),
                            () = tokio::time::sleep(versions::CLAIM_RETRY) => {}
                        }
                        progressed = true;
                    }
                    Err(ProjectionError::Store { source, .. }) => {
                        tracing::warn!(
                            projection = self.projection.name(),
                            error = %source,
                            "could not switch to this version, trying again later"
                        );
                    }
                    Err(error) => return Err(error),
                }
            }
            if progressed {
                continue;
            }
            self.metrics().caught_up();
            let wake = async {
                match wakeup.as_mut() {
                    Some(w) => w.wait().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = &mut shutdown => return Ok(()),
                _ = appended.changed() => {}
                () = wake => {}
                () = tokio::time::sleep(self.poll_interval) => {}
                () = tokio::time::sleep_until(next_beat) => {}
            }
        }
    }

    /// Rebuilds the read model: clears it ([`Projection::reset`]) and
    /// resets every partition's checkpoint to 0 in one transaction, then
    /// catches up. The events up to the head of the feed at that moment
    /// are handled as replayed ([`Replay`]).
    ///
    /// Safe beside running workers, in this process or others, and beside
    /// other rebuilds: each event ends up in the read model exactly once.
    /// Before it clears anything, the rebuild owns every partition: it
    /// waits for the batches in flight to commit (or roll back), and no
    /// batch starts until the reset commits; a batch after it starts from
    /// checkpoint 0 (a page a worker read ahead is used only if it begins
    /// where the checkpoint is). Its transaction has the processor's
    /// [lease](Self::with_lease), as a batch has: a rebuild frozen while it
    /// holds the partitions loses them, and cannot commit, when the lease
    /// runs out. The reset also holds the lock a version
    /// switch and a retirement take, so a version superseded meanwhile
    /// refuses ([`ProjectionError::Superseded`]). A transient store
    /// failure of the reset (a lock wait that timed out, a deadlock) is
    /// tried again, up to 10 times in a row. On MySQL, `reset` must not
    /// run DDL (`TRUNCATE`): it would commit the reset's transaction, and
    /// its claims, early; delete the rows instead.
    ///
    /// Readers of this version see its read model cleared and refilled: to
    /// rebuild without downtime, build a new [version](Projection::version)
    /// beside it instead ([`switch_when_caught_up`](Self::switch_when_caught_up)).
    pub async fn rebuild(&self) -> Result<CatchUp, ProjectionError> {
        self.register().await?;
        let mut failures = 0;
        loop {
            match self.try_reset().await {
                Ok(true) => break,
                // A checkpoint being created by another transaction.
                Ok(false) => {}
                // A lock wait that timed out, a deadlock, a lost
                // connection: nothing was reset; again, a few times.
                Err(ProjectionError::Store { source, .. })
                    if source.is_transient() && failures < REBUILD_TRANSIENT_RETRIES =>
                {
                    failures += 1;
                    tracing::warn!(
                        projection = self.projection.name(),
                        error = %source,
                        "could not reset for a rebuild, trying again"
                    );
                }
                Err(error) => return Err(error),
            }
            tokio::time::sleep(versions::CLAIM_RETRY).await;
        }
        self.catch_up().await
    }

    /// The projection's checkpoint and lag, in events and in time.
    pub async fn status(&self) -> Result<ProjectionStatus, ProjectionError> {
        if let Some(refused) = self.invalid_setting() {
            return Err(refused);
        }
        let mut conn = self.pool.acquire().await.map_err(|e| self.store_error(e))?;
        let head = self
            .store
            .head_position(&mut conn)
            .await
            .map_err(|e| self.store_error(e))?;
        let mut partitions = Vec::new();
        let mut holders = Vec::new();
        let mut oldest_pending: Option<chrono::DateTime<chrono::Utc>> = None;
        for (key, filter) in self.checkpoint_names() {
            let position = self
                .store
                .get_checkpoint(&mut conn, &key)
                .await
                .map_err(|e| self.store_error(e))?;
            partitions.push(position);
            holders.push(
                self.store
                    .checkpoint_holder(&mut conn, &key)
                    .await
                    .map_err(|e| self.store_error(e))?,
            );
            if position < head {
                let next = self
                    .store
                    .read_filtered(&mut conn, position, 1, &filter)
                    .await
                    .map_err(|e| self.store_error(e))?;
                if let Some(event) = next.events.first() {
                    oldest_pending = Some(match oldest_pending {
                        Some(older) => older.min(event.created_at),
                        None => event.created_at,
                    });
                }
            }
        }
        let checkpoint = partitions.iter().copied().min().unwrap_or(0);
        let lag_time = oldest_pending
            .and_then(|at| (chrono::Utc::now() - at).to_std().ok())
            .unwrap_or_default();
        Ok(ProjectionStatus {
            name: self.projection.name().to_owned(),
            version: self.projection.version(),
            checkpoint,
            partitions,
            holders,
            head,
            lag: (head - checkpoint).max(0),
            oldest_pending,
            lag_time,
        })
    }

    /// One batch of a partition ([`Self::claim_and_handle`]), measured.
    async fn batch(
        &self,
        key: &str,
        filter: &EventFilter,
        policy_attempts: &mut u32,
        ahead: &mut Option<ReadAhead>,
    ) -> Result<Batch, ProjectionError> {
        let started = std::time::Instant::now();
        let outcome = self
            .claim_and_handle(key, filter, policy_attempts, ahead, started)
            .await;
        let metrics = self.metrics();
        match &outcome {
            Ok(Batch::Handled { events, .. }) if *events > 0 && metrics.lag_due() => {
                // The lag in events, at most once a second: one read of
                // the head.
                let head = async {
                    let mut conn = self.pool.acquire().await?;
                    self.store.head_position(&mut conn).await
                };
                if let (Ok(head), Some(position)) = (head.await, metrics.last_position()) {
                    metrics.lag(head - position);
                }
            }
            Err(ProjectionError::Store { .. } | ProjectionError::Unavailable { .. }) => {
                metrics.store_failure()
            }
            _ => {}
        }
        outcome
    }

    /// Claims one partition's checkpoint, reads one batch after it (or
    /// takes the page read ahead), handles it and commits it with the new
    /// checkpoint.
    async fn claim_and_handle(
        &self,
        key: &str,
        filter: &EventFilter,
        policy_attempts: &mut u32,
        ahead: &mut Option<ReadAhead>,
        started: std::time::Instant,
    ) -> Result<Batch, ProjectionError> {
        // Wait for the read ahead before taking a connection: with a pool of
        // one, the read ahead may be waiting for it.
        let read_ahead = match ahead.take() {
            Some(mut next) if next.key == key => match (&mut next.page).await {
                Ok(Ok(page)) => Some((next.from, page)),
                _ => None, // read it again below
            },
            _ => None,
        };
        let mut tx = self.pool.begin().await.map_err(|e| self.store_error(e))?;
        let Some(checkpoint) = self
            .store
            .claim_leased(&mut tx, key, self.lease)
            .await
            .map_err(|e| self.store_error(e))?
        else {
            return Ok(Batch::Busy);
        };
        if !self.durable_commits {
            self.store
                .relax_commit_durability(&mut tx)
                .await
                .map_err(|e| self.store_error(e))?;
        }
        let page = match read_ahead {
            Some((from, page)) if from == checkpoint => page,
            _ => self
                .store
                .read_filtered(&mut tx, checkpoint, self.batch_size, filter)
                .await
                .map_err(|e| self.store_error(e))?,
        };
        if self.prefetch && page.events.len() as i64 == self.batch_size {
            let (store, pool, filter) = (self.store.clone(), self.pool.clone(), filter.clone());
            let (from, limit) = (page.scanned_to, self.batch_size);
            *ahead = Some(ReadAhead {
                key: key.to_owned(),
                from,
                page: tokio::spawn(async move {
                    let mut conn = pool.acquire().await?;
                    store.read_filtered(&mut conn, from, limit, &filter).await
                }),
            });
        }
        // Only a version that still runs writes (one query, when there is
        // something to commit).
        let replay = if page.scanned_to > checkpoint {
            self.admit(&mut tx).await?
        } else {
            Replay::none(self.projection.version())
        };
        if page.events.is_empty() {
            if page.scanned_to > checkpoint {
                // Nothing in this stretch of the feed: move past it, and
                // look further.
                self.commit_checkpoint(tx, key, page.scanned_to).await?;
                self.metrics().position(key, page.scanned_to);
                return Ok(Batch::Handled {
                    events: 0,
                    skipped: 0,
                });
            }
            self.rollback(tx).await?;
            return Ok(Batch::Idle);
        }
        let span = tracing::info_span!(
            "projection_batch",
            projection = self.projection.name(),
            checkpoint = key,
            from = page.events[0].global_position,
            to = page.scanned_to,
            events = page.events.len(),
        );
        let handled = self
            .projection
            .handle_batch_with(&mut tx, &page.events, &replay)
            .instrument(span.clone())
            .await;
        match handled {
            Ok(()) => {
                self.commit_checkpoint(tx, key, page.scanned_to)
                    .instrument(span)
                    .await?;
                self.metrics().batch(
                    key,
                    page.scanned_to,
                    page.events.len(),
                    page.events.last().map(|e| e.created_at),
                    started,
                );
                *policy_attempts = 1;
                Ok(Batch::Handled {
                    events: page.events.len() as u64,
                    skipped: 0,
                })
            }
            Err(failure) => {
                // A handler that failed because the database did (a lost
                // connection, a deadlock): the store's failure, retried as
                // one, not the events' (never skipped or counted against
                // the error policy).
                // A handler whose target is unavailable ([`Transient`])
                // fails the same way.
                let failure = match failure.error.downcast::<Transient>() {
                    Ok(transient) => Err(ProjectionError::Unavailable {
                        projection: self.projection.name().to_owned(),
                        source: transient.into_inner(),
                    }),
                    Err(error) => match transient_store_error(error) {
                        Ok(source) => Err(self.store_error(source)),
                        Err(error) => Ok(BatchFailure {
                            index: failure.index,
                            error,
                        }),
                    },
                };
                let failure = match failure {
                    Ok(failure) => failure,
                    Err(transient) => {
                        if let Err(rollback) = tx.rollback().await {
                            tracing::debug!(%rollback, "could not roll back a failed batch");
                        }
                        return Err(transient);
                    }
                };
                // Release the claim before anything else claims it again.
                self.rollback(tx).await?;
                self.handle_failure(
                    key,
                    checkpoint,
                    &page.events,
                    failure,
                    policy_attempts,
                    &replay,
                )
                .instrument(span)
                .await
            }
        }
    }

    async fn rollback(
        &self,
        tx: sqlx::Transaction<'_, S::Database>,
    ) -> Result<(), ProjectionError> {
        tx.rollback().await.map_err(|e| self.store_error(e))
    }

    async fn commit_checkpoint(
        &self,
        mut tx: sqlx::Transaction<'_, S::Database>,
        key: &str,
        position: i64,
    ) -> Result<(), ProjectionError> {
        self.store
            .update_checkpoint(&mut tx, key, position)
            .await
            .map_err(|e| self.store_error(e))?;
        tx.commit().await.map_err(|e| self.store_error(e))
    }

    /// The batch failed and was rolled back: apply the error policy.
    async fn handle_failure(
        &self,
        key: &str,
        start: i64,
        events: &[PersistedEvent],
        failure: BatchFailure,
        policy_attempts: &mut u32,
        replay: &Replay,
    ) -> Result<Batch, ProjectionError> {
        // Whether the event at fault is known (a failure that no single
        // event reproduces is blamed on the first, but never skipped).
        let (index, error, known) = match failure.index {
            Some(index) if index < events.len() => (index, failure.error, true),
            _ => {
                self.find_failing_event(events, failure.error, replay)
                    .await?
            }
        };
        let event = &events[index];
        self.metrics().handler_failure();
        tracing::warn!(
            projection = self.projection.name(),
            global_position = event.global_position,
            event_type = %event.event_type,
            %error,
            "handler failed"
        );
        let give_up = |attempts: u32, source: HandlerError| ProjectionError::Handler {
            projection: self.projection.name().to_owned(),
            global_position: event.global_position,
            event_id: event.event_id,
            event_type: event.event_type.clone(),
            attempts,
            source,
        };
        match self.error_policy {
            ErrorPolicy::Stop => Err(give_up(*policy_attempts, error)),
            ErrorPolicy::Retry(policy) => {
                if *policy_attempts >= policy.max_attempts() {
                    let attempts = *policy_attempts;
                    *policy_attempts = 1;
                    return Err(give_up(attempts, error));
                }
                tokio::time::sleep(policy.backoff(*policy_attempts)).await;
                *policy_attempts += 1;
                Ok(Batch::Retry)
            }
            ErrorPolicy::Skip if !known => Err(give_up(*policy_attempts, error)),
            ErrorPolicy::Skip => {
                match self
                    .skip(
                        key,
                        start,
                        &events[..index],
                        event,
                        &error.to_string(),
                        replay,
                    )
                    .await?
                {
                    Some(handled) => Ok(Batch::Handled {
                        events: handled,
                        skipped: 1,
                    }),
                    // Another processor holds the checkpoint now; it meets
                    // the event in its turn.
                    None => Ok(Batch::Busy),
                }
            }
        }
    }

    /// Handles `before`, records `failed` as skipped and moves the
    /// checkpoint to it, in one transaction. Returns how many events it
    /// handled, or `None` if it did nothing because the checkpoint is no
    /// longer `start`, where the failed batch began (another processor
    /// moved it, or a rebuild reset it).
    async fn skip(
        &self,
        key: &str,
        start: i64,
        before: &[PersistedEvent],
        failed: &PersistedEvent,
        error: &str,
        replay: &Replay,
    ) -> Result<Option<u64>, ProjectionError> {
        let mut tx = self.pool.begin().await.map_err(|e| self.store_error(e))?;
        let Some(checkpoint) = self
            .store
            .claim_checkpoint(&mut tx, key)
            .await
            .map_err(|e| self.store_error(e))?
        else {
            return Ok(None);
        };
        if checkpoint != start {
            self.rollback(tx).await?;
            return Ok(None);
        }
        if !before.is_empty()
            && let Err(failure) = self
                .projection
                .handle_batch_with(&mut tx, before, replay)
                .await
        {
            // The handler is not deterministic: the next batch meets it again.
            tracing::warn!(error = %failure.error, "handler failed on events it handled before");
            self.rollback(tx).await?;
            return Ok(None);
        }
        self.store
            .record_failure(&mut tx, self.projection.name(), failed, error)
            .await
            .map_err(|e| self.store_error(e))?;
        self.commit_checkpoint(tx, key, failed.global_position)
            .await?;
        self.metrics().skipped(1);
        self.metrics().position(key, failed.global_position);
        Ok(Some(before.len() as u64))
    }

    /// Replays a batch one event at a time, in a transaction that is rolled
    /// back, to find which event a whole-batch failure came from. Returns
    /// the event's index and error, and whether it was found (if every
    /// event passes on its own, the first is blamed with the batch's error).
    async fn find_failing_event(
        &self,
        events: &[PersistedEvent],
        batch_error: HandlerError,
        replay: &Replay,
    ) -> Result<(usize, HandlerError, bool), ProjectionError> {
        let mut tx = self.pool.begin().await.map_err(|e| self.store_error(e))?;
        let mut found = (0, batch_error, false);
        for (index, event) in events.iter().enumerate() {
            if let Err(error) = self.projection.handle_with(&mut tx, event, replay).await {
                found = (index, error, true);
                break;
            }
        }
        self.rollback(tx).await?;
        Ok(found)
    }
}
