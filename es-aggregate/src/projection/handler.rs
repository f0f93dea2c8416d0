//! The projection trait: what a projection is and how it handles events.

use super::*;

/// What a handler may fail with.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// A read model fed by events.
///
/// A projection handles the events of its [filter](Projection::filter) a
/// page at a time ([`handle_page`](Projection::handle_page)), in the
/// transaction that also moves its checkpoint past them, so that a page's
/// writes and the checkpoint commit together. The [`Context`] holds the
/// transaction and says which events are replays.
///
/// ```no_run
/// use es_aggregate::projection::{BatchFailure, Context, HandlerError, Projection};
/// use es_store::{EventFilter, PersistedEvent};
/// use sqlx::Postgres;
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
///     // One statement for the whole page.
///     async fn handle_page(&self, ctx: &mut Context<'_, Postgres>, events: &[PersistedEvent]) -> Result<(), BatchFailure> {
///         let ids: Vec<&str> = events.iter().map(|e| e.aggregate_id.as_str()).collect();
///         sqlx::query(
///             "INSERT INTO event_counts (aggregate_id, events)
///              SELECT id, count(*) FROM unnest($1::text[]) AS id GROUP BY id
///              ON CONFLICT (aggregate_id) DO UPDATE SET events = event_counts.events + excluded.events",
///         )
///         .bind(&ids)
///         .execute(ctx.tx())
///         .await
///         .map_err(BatchFailure::whole_batch)?;
///         Ok(())
///     }
///
///     async fn reset(&self, tx: &mut sqlx::PgConnection) -> Result<(), HandlerError> {
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
    #[deprecated(
        since = "0.2.0",
        note = "implement `handle_page`, which gets a page of events and a `Context`"
    )]
    fn handle(
        &self,
        tx: &mut DB::Connection,
        event: &PersistedEvent,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        async move {
            let mut ctx = Context::adapter(tx, Replay::none(self.version()));
            // Boxed: for a projection that implements neither handler, the
            // defaults call each other, and the future must have a size
            // (that case ends in `handle_page`'s error, not a recursion).
            let page: std::pin::Pin<Box<dyn Future<Output = _> + Send + '_>> =
                Box::pin(self.handle_page(&mut ctx, std::slice::from_ref(event)));
            page.await.map_err(|failure| failure.error)
        }
    }

    /// Handles a page of events, in order, in the transaction that also
    /// moves the checkpoint past them (`ctx.tx()`): the one entry point the
    /// processor calls, for every batch, and for each event alone when it
    /// looks for the event a failed batch failed on. Write the page with
    /// one statement where the read model allows; hold back side effects
    /// for replayed events ([`Context::is_replaying`]). On failure, say
    /// which event failed if you know it ([`BatchFailure::at`]).
    ///
    /// By default it calls the handlers of earlier releases
    /// (`handle_batch_with`, and through it `handle` for each event; for
    /// an event handled alone, `handle_with`), so projections written for
    /// them keep working.
    fn handle_page(
        &self,
        ctx: &mut Context<'_, DB>,
        events: &[PersistedEvent],
    ) -> impl Future<Output = Result<(), BatchFailure>> + Send {
        async move {
            if ctx.adapter {
                // Called by the default `handle`: neither is implemented.
                return Err(BatchFailure::whole_batch(NoHandler));
            }
            let replay = ctx.replay;
            match events {
                [event] if ctx.alone =>
                {
                    #[allow(deprecated)]
                    self.handle_with(ctx.tx(), event, &replay)
                        .await
                        .map_err(|error| BatchFailure::at(0, error))
                }
                _ =>
                {
                    #[allow(deprecated)]
                    self.handle_batch_with(ctx.tx(), events, &replay).await
                }
            }
        }
    }

    /// Handles a batch of events, in order, in one transaction. By default
    /// it calls [`handle`](Projection::handle) for each; override it to
    /// write a whole batch with one statement. On failure, say which event
    /// failed if you know it.
    #[deprecated(since = "0.2.0", note = "implement `handle_page`")]
    fn handle_batch(
        &self,
        tx: &mut DB::Connection,
        events: &[PersistedEvent],
    ) -> impl Future<Output = Result<(), BatchFailure>> + Send {
        async move {
            for (index, event) in events.iter().enumerate() {
                #[allow(deprecated)]
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
    #[deprecated(
        since = "0.2.0",
        note = "implement `handle_page` (a page of one event; `Context::replay`)"
    )]
    fn handle_with(
        &self,
        tx: &mut DB::Connection,
        event: &PersistedEvent,
        replay: &Replay,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        let _ = replay;
        #[allow(deprecated)]
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
    #[deprecated(
        since = "0.2.0",
        note = "implement `handle_page` (`Context::tx`, `Context::replay`)"
    )]
    fn handle_batch_with(
        &self,
        tx: &mut DB::Connection,
        events: &[PersistedEvent],
        replay: &Replay,
    ) -> impl Future<Output = Result<(), BatchFailure>> + Send {
        let _ = replay;
        #[allow(deprecated)]
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

/// What a handler gets with a page of events
/// ([`Projection::handle_page`]): the batch's transaction, and which of
/// the events are replays.
///
/// ```
/// use es_aggregate::projection::{Context, Replay};
///
/// # async fn demo(mut conn: sqlx::SqliteConnection) {
/// let mut ctx = Context::<sqlx::Sqlite>::new(&mut conn, Replay::new(2, 100));
/// assert!(ctx.is_replaying_position(100) && !ctx.is_replaying_position(101));
/// assert_eq!(ctx.replay().version(), 2);
/// let _tx: &mut sqlx::SqliteConnection = ctx.tx();
/// # }
/// ```
pub struct Context<'c, DB: sqlx::Database> {
    tx: &'c mut DB::Connection,
    replay: Replay,
    /// Made by the default `handle` (an adapter for older callers).
    adapter: bool,
    /// Made to handle one event of a failed batch alone: the default
    /// `handle_page` then calls the per-event handler of earlier releases.
    alone: bool,
}

impl<'c, DB: sqlx::Database> Context<'c, DB> {
    /// A context on `tx`, replaying what `replay` says.
    pub fn new(tx: &'c mut DB::Connection, replay: Replay) -> Self {
        Self {
            tx,
            replay,
            adapter: false,
            alone: false,
        }
    }

    fn adapter(tx: &'c mut DB::Connection, replay: Replay) -> Self {
        Self {
            adapter: true,
            ..Self::new(tx, replay)
        }
    }

    /// For one event of a failed batch, handled alone to find the event
    /// at fault.
    pub(crate) fn alone(tx: &'c mut DB::Connection, replay: Replay) -> Self {
        Self {
            alone: true,
            ..Self::new(tx, replay)
        }
    }

    /// The batch's transaction: write the read model through it, so that
    /// the writes commit with the checkpoint.
    pub fn tx(&mut self) -> &mut DB::Connection {
        self.tx
    }

    /// Which events are replays: those at or below the head when this
    /// version started or was last rebuilt.
    pub fn replay(&self) -> &Replay {
        &self.replay
    }

    /// Whether `event` is handled as a replay.
    pub fn is_replaying(&self, event: &PersistedEvent) -> bool {
        self.replay.is_replaying(event)
    }

    /// Whether the event at `position` is handled as a replay.
    pub fn is_replaying_position(&self, position: i64) -> bool {
        self.replay.is_replaying_position(position)
    }
}

impl<DB: sqlx::Database> std::fmt::Debug for Context<'_, DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("replay", &self.replay)
            .finish_non_exhaustive()
    }
}

/// A projection that implements neither `handle_page` nor `handle`.
#[derive(Debug, thiserror::Error)]
#[error("the projection implements neither `handle_page` nor `handle`")]
struct NoHandler;

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
pub(crate) fn transient_store_error(error: HandlerError) -> Result<es_store::Error, HandlerError> {
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
pub(crate) struct NoReset;

pub(crate) fn no_reset() -> HandlerError {
    Box::new(NoReset)
}

/// What the default [`Projection::retire`] fails with.
#[derive(Debug, thiserror::Error)]
#[error("the projection does not implement `retire`")]
pub(crate) struct NoRetire;

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
