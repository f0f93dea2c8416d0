//! Typed projections: handlers that get decoded, upcast events of the
//! types they declare, with their envelope.

use std::future::Future;

use es_store::{AggregateRef, DecodeError, DomainEvent, EventFilter, PersistedEvent};
use serde_json::value::RawValue;
use tracing::Instrument;

#[cfg(doc)]
use super::Replay;
use super::{BatchFailure, Context, HandlerError, Projection};

/// The events a [`TypedProjection`] handles: one derived event enum (every
/// [`DomainEvent`] is an `EventSet`), or several joined into one enum with
/// [`event_set!`](crate::event_set).
///
/// ```
/// # use es::DomainEvent;
/// # #[derive(Debug, DomainEvent)]
/// # #[event(bounded_context = "Billing", aggregate_type = "Account")]
/// # enum AccountEvent { Opened { owner: String } }
/// use es_aggregate::projection::EventSet;
/// assert_eq!(AccountEvent::aggregates(), [("Billing", "Account")]);
/// ```
pub trait EventSet: Sized + Send + Sync + 'static {
    /// The (bounded context, aggregate type) of each member enum.
    fn aggregates() -> Vec<(&'static str, &'static str)>;

    /// The stored event decoded (and upcast) into the member enum of its
    /// aggregate; `None` when it belongs to none of them.
    fn decode(event: &PersistedEvent) -> Option<Result<Self, DecodeError>>;

    /// The filter that lets through the members' aggregates, in SQL (a
    /// superset when members come from several bounded contexts: what it
    /// lets through that belongs to none is never handed to the handler).
    fn filter() -> EventFilter {
        let mut filter = EventFilter::all();
        let aggregates = Self::aggregates();
        let mut contexts: Vec<_> = aggregates.iter().map(|(c, _)| *c).collect();
        let mut types: Vec<_> = aggregates.iter().map(|(_, t)| *t).collect();
        contexts.sort_unstable();
        contexts.dedup();
        types.sort_unstable();
        types.dedup();
        for context in contexts {
            filter = filter.bounded_context(context);
        }
        for kind in types {
            filter = filter.aggregate_type(kind);
        }
        filter
    }
}

impl<E: DomainEvent> EventSet for E {
    fn aggregates() -> Vec<(&'static str, &'static str)> {
        vec![(E::BOUNDED_CONTEXT, E::AGGREGATE_TYPE)]
    }

    fn decode(event: &PersistedEvent) -> Option<Result<Self, DecodeError>> {
        if event.bounded_context != E::BOUNDED_CONTEXT || event.aggregate_type != E::AGGREGATE_TYPE
        {
            return None;
        }
        Some(E::decode_json(
            &event.event_type,
            event.event_version,
            event.payload.get(),
        ))
    }
}

/// Joins several derived event enums into one [`EventSet`]: an enum with
/// one variant per member, for a projection over several aggregates.
///
/// ```
/// # use es::DomainEvent;
/// # #[derive(Debug, DomainEvent)]
/// # #[event(bounded_context = "Shop", aggregate_type = "Order")]
/// # pub enum OrderEvent { Placed { units: u32 } }
/// # #[derive(Debug, DomainEvent)]
/// # #[event(bounded_context = "Shop", aggregate_type = "Stock")]
/// # pub enum StockEvent { Reserved { units: u32 } }
/// use es_aggregate::projection::EventSet;
///
/// es_aggregate::event_set! {
///     /// What the shop's dashboard follows.
///     #[derive(Debug)]
///     pub enum ShopEvent {
///         Order(OrderEvent),
///         Stock(StockEvent),
///     }
/// }
/// assert_eq!(ShopEvent::aggregates(), [("Shop", "Order"), ("Shop", "Stock")]);
/// ```
#[macro_export]
macro_rules! event_set {
    (
        $(#[$attr:meta])*
        $vis:vis enum $name:ident {
            $($(#[$variant_attr:meta])* $variant:ident($member:ty)),+ $(,)?
        }
    ) => {
        $(#[$attr])*
        $vis enum $name {
            $($(#[$variant_attr])* $variant($member)),+
        }

        impl $crate::projection::EventSet for $name {
            fn aggregates() -> ::std::vec::Vec<(&'static str, &'static str)> {
                let mut all = ::std::vec::Vec::new();
                $(all.extend(<$member as $crate::projection::EventSet>::aggregates());)+
                all
            }

            fn decode(
                event: &$crate::__private::PersistedEvent,
            ) -> ::std::option::Option<
                ::std::result::Result<Self, $crate::__private::DecodeError>,
            > {
                $(
                    if let ::std::option::Option::Some(decoded) =
                        <$member as $crate::projection::EventSet>::decode(event)
                    {
                        return ::std::option::Option::Some(decoded.map($name::$variant));
                    }
                )+
                ::std::option::Option::None
            }
        }
    };
}

/// A decoded event with what the store knows about it: its position, its
/// aggregate and version, its id and metadata.
///
/// ```
/// # use es::DomainEvent;
/// # #[derive(Debug, PartialEq, DomainEvent)]
/// # #[event(bounded_context = "Billing", aggregate_type = "Account")]
/// # enum AccountEvent { Deposited { amount: i64 } }
/// use es_aggregate::projection::Envelope;
/// use es_store::{DomainEvent as _, Metadata, PersistedEvent};
///
/// let correlation = uuid::Uuid::now_v7();
/// let event = AccountEvent::Deposited { amount: 5 }
///     .to_event("acc-1", &Metadata::new().with_correlation_id(correlation))
///     .unwrap();
/// let stored = PersistedEvent::new(event, 3, 42);
/// let envelope = Envelope::new(AccountEvent::Deposited { amount: 5 }, &stored);
/// assert_eq!((envelope.position(), envelope.version()), (42, 3));
/// assert_eq!(envelope.aggregate_id(), "acc-1");
/// assert_eq!(envelope.correlation_id(), Some(correlation));
/// ```
#[derive(Debug, Clone)]
pub struct Envelope<'a, E> {
    /// The decoded event.
    pub event: E,
    stored: &'a PersistedEvent,
    replaying: bool,
}

impl<'a, E> Envelope<'a, E> {
    /// `event`, decoded from `stored`, handled live (not replaying).
    pub fn new(event: E, stored: &'a PersistedEvent) -> Self {
        Self {
            event,
            stored,
            replaying: false,
        }
    }

    /// The envelope, handled as a replay or not (see
    /// [`replaying`](Self::replaying)).
    ///
    /// ```
    /// # use es::DomainEvent;
    /// # #[derive(Debug, DomainEvent)]
    /// # #[event(bounded_context = "Billing", aggregate_type = "Account")]
    /// # enum AccountEvent { Deposited { amount: i64 } }
    /// # use es_aggregate::projection::Envelope;
    /// # use es_store::{DomainEvent as _, Metadata, PersistedEvent};
    /// # let stored = PersistedEvent::new(AccountEvent::Deposited { amount: 5 }.to_event("acc-1", &Metadata::new()).unwrap(), 1, 7);
    /// let envelope = Envelope::new(AccountEvent::Deposited { amount: 5 }, &stored).replayed(true);
    /// assert!(envelope.replaying());
    /// ```
    pub fn replayed(mut self, replaying: bool) -> Self {
        self.replaying = replaying;
        self
    }

    /// Whether the event is handled as a replay: it was appended before
    /// this version of the projection started (or before its last
    /// [rebuild](super::ProjectionProcessor::rebuild)), and the version is
    /// building its read model from history. Hold back side effects that
    /// already happened when the event was first handled (mails, calls).
    /// See [`Replay`].
    pub fn replaying(&self) -> bool {
        self.replaying
    }

    /// The event as stored (payload undecoded).
    pub fn stored(&self) -> &'a PersistedEvent {
        self.stored
    }

    /// The event's position in the global feed.
    pub fn position(&self) -> i64 {
        self.stored.global_position
    }

    /// The aggregate the event belongs to.
    pub fn aggregate(&self) -> AggregateRef<'a> {
        self.stored.aggregate()
    }

    /// The aggregate's id.
    pub fn aggregate_id(&self) -> &'a str {
        &self.stored.aggregate_id
    }

    /// The aggregate's version after this event.
    pub fn version(&self) -> i64 {
        self.stored.aggregate_version
    }

    /// The event's id.
    pub fn event_id(&self) -> uuid::Uuid {
        self.stored.event_id
    }

    /// The correlation id of the request that caused it, if any.
    pub fn correlation_id(&self) -> Option<uuid::Uuid> {
        self.stored.correlation_id
    }

    /// The id of the command or event that caused it, if any.
    pub fn causation_id(&self) -> Option<uuid::Uuid> {
        self.stored.causation_id
    }

    /// The distributed-tracing id it was appended under, if any.
    pub fn trace_id(&self) -> Option<&'a str> {
        self.stored.trace_id.as_deref()
    }

    /// The free-form metadata (`{}` when there is none).
    pub fn metadata(&self) -> &'a RawValue {
        &self.stored.metadata
    }

    /// When the event was created.
    pub fn created_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.stored.created_at
    }
}

/// A read model fed with decoded events of the types it declares: a
/// [`Projection`] whose filter follows from its [`EventSet`] (in SQL),
/// whose events arrive decoded and upcast, and which never sees events of
/// other types. [`ProjectionProcessor::typed`](super::ProjectionProcessor::typed)
/// runs it (through [`Typed`], which makes it a [`Projection`]).
///
/// ```no_run
/// use es::DomainEvent;
/// use es_aggregate::projection::{Envelope, HandlerError, ProjectionProcessor, TypedProjection};
/// use sqlx::PgConnection;
///
/// #[derive(Debug, DomainEvent)]
/// #[event(bounded_context = "Billing", aggregate_type = "Account")]
/// enum AccountEvent {
///     Opened { owner: String },
///     #[event(name = "MoneyDeposited")]
///     Deposited { amount: i64 },
/// }
///
/// struct Balances;
///
/// impl TypedProjection for Balances {
///     type Events = AccountEvent;
///
///     fn name(&self) -> &str {
///         "balances"
///     }
///
///     async fn handle(&self, tx: &mut PgConnection, event: Envelope<'_, AccountEvent>) -> Result<(), HandlerError> {
///         if let AccountEvent::Deposited { amount } = event.event {
///             sqlx::query("INSERT INTO balances (id, balance) VALUES ($1, $2) \
///                          ON CONFLICT (id) DO UPDATE SET balance = balances.balance + $2")
///                 .bind(event.aggregate_id())
///                 .bind(amount)
///                 .execute(&mut *tx)
///                 .await?;
///         }
///         Ok(())
///     }
///
///     async fn reset(&self, tx: &mut PgConnection) -> Result<(), HandlerError> {
///         sqlx::query("DELETE FROM balances").execute(&mut *tx).await?;
///         Ok(())
///     }
/// }
///
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// ProjectionProcessor::typed(es_store::PostgresStore::new(), pool, Balances).catch_up().await?;
/// # Ok(()) }
/// ```
pub trait TypedProjection<
    DB: sqlx::Database = <es_store::DefaultStore as es_store::Backend>::Database,
>: Send + Sync + 'static
{
    /// The events it handles.
    type Events: EventSet;

    /// The projection's name: the key of its checkpoint.
    fn name(&self) -> &str;

    /// The projection's version (1 by default); see [`Projection::version`].
    fn version(&self) -> u32 {
        1
    }

    /// Whether handling an event has effects a replay would do again
    /// (false by default); see [`Projection::has_side_effects`].
    fn has_side_effects(&self) -> bool {
        false
    }

    /// Handles one event, inside the transaction that will also move the
    /// checkpoint past it.
    fn handle(
        &self,
        tx: &mut DB::Connection,
        event: Envelope<'_, Self::Events>,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// Makes readers see this version's read model, in the switch's
    /// transaction; see [`Projection::promote`]. Does nothing by default.
    fn promote(
        &self,
        tx: &mut DB::Connection,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        let _ = tx;
        async { Ok(()) }
    }

    /// Drops the read model of `version`; see [`Projection::retire`].
    /// Without it, retiring a version refuses
    /// ([`ProjectionError::NoRetire`](super::ProjectionError::NoRetire)).
    fn retire(
        &self,
        tx: &mut DB::Connection,
        version: u32,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        let _ = (tx, version);
        async { Err(super::no_retire()) }
    }

    /// Clears the read model before a
    /// [rebuild](super::ProjectionProcessor::rebuild). Without it, a
    /// rebuild refuses to start ([`ProjectionError::NoReset`](super::ProjectionError::NoReset)).
    fn reset(
        &self,
        tx: &mut DB::Connection,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        let _ = tx;
        async { Err(super::no_reset()) }
    }
}

/// A [`TypedProjection`] as a [`Projection`], to run it with a
/// [`ProjectionProcessor`](super::ProjectionProcessor) (made by
/// [`ProjectionProcessor::typed`](super::ProjectionProcessor::typed)).
/// Dereferences to the projection.
#[derive(Debug, Clone, Default)]
pub struct Typed<P>(pub P);

impl<P> std::ops::Deref for Typed<P> {
    type Target = P;

    fn deref(&self) -> &P {
        &self.0
    }
}

impl<DB: sqlx::Database, P: TypedProjection<DB>> Projection<DB> for Typed<P> {
    fn name(&self) -> &str {
        TypedProjection::name(&self.0)
    }

    fn version(&self) -> u32 {
        TypedProjection::version(&self.0)
    }

    fn filter(&self) -> EventFilter {
        P::Events::filter()
    }

    fn has_side_effects(&self) -> bool {
        TypedProjection::has_side_effects(&self.0)
    }

    async fn handle_page(
        &self,
        ctx: &mut Context<'_, DB>,
        events: &[PersistedEvent],
    ) -> Result<(), BatchFailure> {
        for (index, event) in events.iter().enumerate() {
            let handled = async {
                match P::Events::decode(event) {
                    None => Ok(()),
                    Some(Err(error)) => Err(HandlerError::from(Box::new(error))),
                    Some(Ok(decoded)) => {
                        let envelope =
                            Envelope::new(decoded, event).replayed(ctx.is_replaying(event));
                        TypedProjection::handle(&self.0, ctx.tx(), envelope).await
                    }
                }
            };
            handled
                .instrument(super::event_span(event))
                .await
                .map_err(|error| BatchFailure::at(index, error))?;
        }
        Ok(())
    }

    fn promote(
        &self,
        tx: &mut DB::Connection,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        TypedProjection::promote(&self.0, tx)
    }

    fn retire(
        &self,
        tx: &mut DB::Connection,
        version: u32,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        TypedProjection::retire(&self.0, tx, version)
    }

    async fn handle(
        &self,
        tx: &mut DB::Connection,
        event: &PersistedEvent,
    ) -> Result<(), HandlerError> {
        match P::Events::decode(event) {
            None => Ok(()),
            Some(Err(error)) => Err(Box::new(error)),
            Some(Ok(decoded)) => {
                TypedProjection::handle(&self.0, tx, Envelope::new(decoded, event)).await
            }
        }
    }

    fn reset(
        &self,
        tx: &mut DB::Connection,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        TypedProjection::reset(&self.0, tx)
    }
}
