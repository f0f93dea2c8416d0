//! Given / when / then: test an aggregate without a database
//! ([`given`]), or commands across aggregates against a throwaway
//! database of their own ([`TestDatabase`]).
//!
//! ```
//! # use es_aggregate::Aggregate;
//! # use es::DomainEvent;
//! # #[derive(Debug, Clone, PartialEq, DomainEvent)]
//! # #[event(bounded_context = "Billing", aggregate_type = "Counter")]
//! # enum CounterEvent { Incremented { by: u32 } }
//! # #[derive(Default)] struct Counter { value: u64 }
//! # #[derive(Debug)] struct Increment(u32);
//! # #[derive(Debug, PartialEq, thiserror::Error)] #[error("zero")] struct Zero;
//! # impl Aggregate for Counter {
//! #     type Event = CounterEvent; type Command = Increment; type Error = Zero;
//! #     fn apply(&mut self, CounterEvent::Incremented { by }: &CounterEvent) { self.value += u64::from(*by) }
//! #     fn handle(&self, Increment(by): &Increment) -> Result<Vec<CounterEvent>, Zero> {
//! #         if *by == 0 { Err(Zero) } else { Ok(vec![CounterEvent::Incremented { by: *by }]) }
//! #     }
//! # }
//! use es_aggregate::testing::given;
//!
//! given::<Counter>([CounterEvent::Incremented { by: 1 }])
//!     .when(Increment(2))
//!     .then([CounterEvent::Incremented { by: 2 }]);
//!
//! given::<Counter>([]).when(Increment(0)).then_error(Zero);
//! ```

use std::fmt::Debug;

use crate::Aggregate;

mod database;

pub use database::{TestDatabase, Then};

/// Starts a scenario from the aggregate's past events.
pub fn given<A: Aggregate>(events: impl IntoIterator<Item = A::Event>) -> Given<A> {
    let mut state = A::default();
    for event in events {
        state.apply(&event);
    }
    Given { state }
}

/// An aggregate folded from the given events.
#[derive(Debug)]
pub struct Given<A> {
    state: A,
}

impl<A: Aggregate> Given<A> {
    /// The folded state, to assert on directly.
    pub fn state(&self) -> &A {
        &self.state
    }

    /// Handles `command` on the folded state.
    pub fn when(self, command: A::Command) -> When<A> {
        let outcome = self.state.handle(&command);
        When {
            state: self.state,
            outcome,
        }
    }
}

/// The outcome of a command.
#[derive(Debug)]
pub struct When<A: Aggregate> {
    state: A,
    outcome: Result<Vec<A::Event>, A::Error>,
}

impl<A: Aggregate> When<A> {
    /// Asserts the command produced exactly `expected`, in order, and
    /// returns the state with them applied.
    #[track_caller]
    pub fn then(mut self, expected: impl IntoIterator<Item = A::Event>) -> A
    where
        A::Event: PartialEq + Debug,
    {
        let expected: Vec<_> = expected.into_iter().collect();
        match self.outcome {
            Ok(events) => {
                assert_eq!(events, expected, "the command produced other events");
                for event in &events {
                    self.state.apply(event);
                }
                self.state
            }
            Err(error) => {
                panic!("expected events {expected:?}, the command was refused: {error:?}")
            }
        }
    }

    /// Asserts the command was refused with `expected`.
    #[track_caller]
    pub fn then_error(self, expected: A::Error)
    where
        A::Error: PartialEq,
        A::Event: Debug,
    {
        match self.outcome {
            Ok(events) => {
                panic!("expected the error {expected:?}, the command produced {events:?}")
            }
            Err(error) => assert_eq!(
                error, expected,
                "the command was refused for another reason"
            ),
        }
    }

    /// Asserts the command was refused with an error that `check` accepts.
    #[track_caller]
    pub fn then_error_matches(self, check: impl FnOnce(&A::Error) -> bool)
    where
        A::Event: Debug,
    {
        match self.outcome {
            Ok(events) => panic!("expected an error, the command produced {events:?}"),
            Err(error) => assert!(check(&error), "unexpected error: {error:?}"),
        }
    }

    /// The raw outcome, for assertions of your own.
    pub fn outcome(self) -> Result<Vec<A::Event>, A::Error> {
        self.outcome
    }
}
