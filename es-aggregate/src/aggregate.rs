//! The aggregate trait: state folded from events, commands decided on state.

use es_store::DomainEvent;

/// An event-sourced aggregate.
///
/// `handle` decides: given the current state and a command, which events
/// happen (or why not). `apply` folds one event into the state. Both are
/// plain functions of their inputs, so an aggregate is tested without a
/// database (see [`testing`](crate::testing)). The state of an aggregate
/// with no events is `Default::default()`.
///
/// ```
/// use es_aggregate::Aggregate;
/// use es::DomainEvent;
///
/// #[derive(Debug, Clone, PartialEq, DomainEvent)]
/// #[event(bounded_context = "Billing", aggregate_type = "Counter")]
/// enum CounterEvent {
///     Incremented { by: u32 },
/// }
///
/// #[derive(Default)]
/// struct Counter { value: u64 }
///
/// struct Increment(u32);
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("cannot increment by zero")]
/// struct Zero;
///
/// impl Aggregate for Counter {
///     type Event = CounterEvent;
///     type Command = Increment;
///     type Error = Zero;
///
///     fn apply(&mut self, event: &CounterEvent) {
///         match event {
///             CounterEvent::Incremented { by } => self.value += u64::from(*by),
///         }
///     }
///
///     fn handle(&self, Increment(by): &Increment) -> Result<Vec<CounterEvent>, Zero> {
///         if *by == 0 {
///             return Err(Zero);
///         }
///         Ok(vec![CounterEvent::Incremented { by: *by }])
///     }
/// }
///
/// let mut counter = Counter::default();
/// for event in counter.handle(&Increment(3)).unwrap() {
///     counter.apply(&event);
/// }
/// assert_eq!(counter.value, 3);
/// ```
pub trait Aggregate: Default + Send + Sync + 'static {
    /// The aggregate's events, usually `#[derive(DomainEvent)]` on an enum.
    /// Its bounded context and aggregate type name the aggregate in the store.
    type Event: DomainEvent;
    /// What the aggregate is asked to do.
    type Command: Send + Sync;
    /// Why a command is refused.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Folds one event into the state. Must not fail: events are facts.
    fn apply(&mut self, event: &Self::Event);

    /// Decides which events a command produces. No events is a valid
    /// answer (nothing to do); an error refuses the command and writes
    /// nothing.
    fn handle(&self, command: &Self::Command) -> Result<Vec<Self::Event>, Self::Error>;
}
