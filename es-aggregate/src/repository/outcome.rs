//! What loading and executing give back.

use es_store::CommandId;

use crate::Aggregate;
#[cfg(doc)]
use crate::RetryPolicy;
#[cfg(doc)]
use es_store::Metadata;

/// An aggregate's state and the version it was folded up to.
///
/// An aggregate with no events loads as `Default::default()` at version 0;
/// [`Loaded::exists`] tells the two apart.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Loaded<A> {
    /// The folded state.
    pub state: A,
    /// The version of the last event applied (0 when none).
    pub version: i64,
}

impl<A> Loaded<A> {
    /// Whether the aggregate has at least one event.
    pub fn exists(&self) -> bool {
        self.version > 0
    }
}

/// What a successful command did.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Executed<A: Aggregate> {
    /// The aggregate's version after the command (unchanged when the
    /// command produced no events).
    pub version: i64,
    /// The events the command produced, in order.
    pub events: Vec<A::Event>,
    /// The global position of each event.
    pub global_positions: Vec<i64>,
    /// The state after the events were applied.
    pub state: A,
    /// How many times the command was handled: 1, plus one per conflict
    /// retried.
    pub attempts: u32,
    /// How many times the command was tried again after a transient
    /// failure (a lost connection, a server restart, ...): see
    /// [`RetryPolicy::with_transient_retries`].
    pub transient_retries: u32,
    /// The command's id: the one given in [`Metadata::command_id`], or the
    /// one the repository made for this call. Running the command again
    /// with it ([`Metadata::with_command_id`]) returns this outcome again
    /// and writes nothing.
    pub command_id: CommandId,
    /// Whether the events were found stored instead of appended: the
    /// command id had been applied before (by an earlier call, or by an
    /// attempt of this call whose reply was lost). `version`,
    /// `global_positions` and `events` are then the original ones, and
    /// `state` is the state right after them.
    pub replayed: bool,
}
