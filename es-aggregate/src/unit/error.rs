//! Why a unit of work failed.

use es_store::{AggregateKey, CommandId, DecodeError, Error as StoreError, ExpectedVersion};

use crate::retry::Exhausted;
use crate::{CommandIdReuse, FailureKind, RepositoryError};
#[cfg(doc)]
use crate::{UnitOfWork, Work};
#[cfg(doc)]
use es_store::Metadata;

/// Why a unit of work failed: any of its aggregates' refusals, conflicts
/// and store failures, in one type, so that `?` works across aggregates.
///
/// ```
/// use es_aggregate::WorkError;
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("out of stock")]
/// struct OutOfStock;
///
/// let refused = WorkError::reject(OutOfStock);
/// assert!(refused.is_rejected() && !refused.is_conflict() && refused.outcome_known());
/// assert!(refused.rejection::<OutOfStock>().is_some());
/// assert_eq!(refused.to_string(), "command refused: out of stock");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkError {
    /// An aggregate refused a command (or the closure refused with
    /// [`WorkError::reject`]); nothing was written. The refusal is the
    /// source: [`WorkError::rejection`] gives it typed.
    #[error("command refused: {0}")]
    Rejected(#[source] Box<dyn std::error::Error + Send + Sync>),

    /// A command lost the optimistic-concurrency check in every run the
    /// retry policy allowed.
    #[error("optimistic concurrency conflict on {aggregate} after {attempts} attempt(s): expected {expected}, {}",
        .actual.map_or_else(|| "the version changed concurrently".to_owned(), |v| format!("found version {v}")))]
    Conflict {
        /// The aggregate.
        aggregate: AggregateKey,
        /// How many times the unit ran.
        attempts: u32,
        /// The version the last run expected.
        expected: ExpectedVersion,
        /// The version the last run found, when known.
        actual: Option<i64>,
    },

    /// A stored event could not be decoded into its aggregate's event type.
    #[error("cannot decode a stored event of {aggregate}: {source}")]
    Decode {
        /// The aggregate.
        aggregate: AggregateKey,
        /// What went wrong.
        #[source]
        source: Box<DecodeError>,
    },

    /// A command id was applied before to another aggregate or as a
    /// different command; nothing was written.
    #[error("command id {command_id} given for {aggregate} was already used {reason}")]
    CommandIdReused {
        /// The command id.
        command_id: CommandId,
        /// The aggregate the command was run on now.
        aggregate: AggregateKey,
        /// What the id was used for.
        reason: CommandIdReuse,
    },

    /// Transient failures lasted through every retry the policy allowed,
    /// and nothing of the unit was committed: running it again is safe.
    #[error("unit of work {command_id} failed after {retries} transient retr{}: {source}",
        if *.retries == 1 { "y" } else { "ies" })]
    Unavailable {
        /// The unit's id.
        command_id: CommandId,
        /// How many times the unit ran again after a failure.
        retries: u32,
        /// The last failure.
        #[source]
        source: Box<StoreError>,
    },

    /// The unit may or may not have been committed: the last failure came
    /// with its commit. Run it again with the same id
    /// ([`UnitOfWork::run_with`] and [`Metadata::with_command_id`] with
    /// `command_id`): its commands then return their original outcomes if
    /// it was.
    #[error("the outcome of unit of work {command_id} is unknown after {retries} transient retr{}: {source}",
        if *.retries == 1 { "y" } else { "ies" })]
    OutcomeUnknown {
        /// The unit's id: run it again with it to find out.
        command_id: CommandId,
        /// How many times the unit ran again after a failure.
        retries: u32,
        /// The last failure.
        #[source]
        source: Box<StoreError>,
    },

    /// The store failed, or refused the input.
    #[error(transparent)]
    Store(StoreError),

    /// The [`Work`] was used after its run ended (it was kept past the
    /// closure's future).
    #[error("the unit of work's run has ended")]
    Ended,

    /// An error of the closure's own ([`WorkError::failed`]); not retried.
    #[error(transparent)]
    Failed(Box<dyn std::error::Error + Send + Sync>),
}

impl WorkError {
    /// A refusal of the closure's own (a rule across aggregates, say):
    /// [`WorkError::Rejected`], never retried.
    pub fn reject(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        WorkError::Rejected(Box::new(error))
    }

    /// Another error of the closure's own: [`WorkError::Failed`], never
    /// retried.
    ///
    /// ```
    /// # use es_aggregate::WorkError;
    /// let failed = WorkError::failed(std::io::Error::other("the mail server is down"));
    /// assert!(!failed.is_rejected() && !failed.is_transient());
    /// ```
    pub fn failed(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        WorkError::Failed(Box::new(error))
    }

    /// The refusal, when the unit was refused with an error of type `E`
    /// (an aggregate's `Error` type, or one given to
    /// [`WorkError::reject`]).
    pub fn rejection<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match self {
            WorkError::Rejected(error) => error.downcast_ref::<E>(),
            _ => None,
        }
    }

    /// What kind of failure this is: the predicates below answer from it.
    ///
    /// ```
    /// use es_aggregate::{FailureKind, WorkError};
    /// use es_store::Error as StoreError;
    ///
    /// assert_eq!(WorkError::from(StoreError::NoEvents).kind(), FailureKind::Store { transient: false });
    /// assert_eq!(WorkError::Ended.kind(), FailureKind::Other);
    /// ```
    pub fn kind(&self) -> FailureKind {
        match self {
            WorkError::Rejected(_) => FailureKind::Rejected,
            WorkError::Conflict { .. } => FailureKind::Conflict,
            WorkError::Unavailable { .. } => FailureKind::Unavailable,
            WorkError::OutcomeUnknown { .. } => FailureKind::OutcomeUnknown,
            WorkError::Store(error) => FailureKind::Store {
                transient: error.is_transient(),
            },
            WorkError::Decode { .. }
            | WorkError::CommandIdReused { .. }
            | WorkError::Ended
            | WorkError::Failed(_) => FailureKind::Other,
        }
    }

    /// Whether a command lost the optimistic-concurrency check
    /// ([`WorkError::Conflict`]). Returned from the closure, it runs the
    /// unit again while the policy allows.
    pub fn is_conflict(&self) -> bool {
        self.kind().is_conflict()
    }

    /// Whether a command (or the closure) was refused
    /// ([`WorkError::Rejected`]).
    pub fn is_rejected(&self) -> bool {
        self.kind().is_rejected()
    }

    /// Whether the failure is passing: [`WorkError::Unavailable`],
    /// [`WorkError::OutcomeUnknown`], or a store error that
    /// [`StoreError::is_transient`]. Returned from the closure, a
    /// transient store error runs the unit again while the policy allows.
    ///
    /// ```
    /// use es_aggregate::WorkError;
    /// use es_store::Error as StoreError;
    /// assert!(WorkError::from(StoreError::from(sqlx::Error::PoolTimedOut)).is_transient());
    /// assert!(!WorkError::from(StoreError::NoEvents).is_transient());
    /// ```
    pub fn is_transient(&self) -> bool {
        self.kind().is_transient()
    }

    /// Whether the caller knows what the unit did: false only for
    /// [`WorkError::OutcomeUnknown`]. Every other error means nothing was
    /// committed.
    pub fn outcome_known(&self) -> bool {
        self.kind().outcome_known()
    }

    /// The unit's failure from the retries that ran out.
    pub(super) fn exhausted(command_id: CommandId, spent: Exhausted) -> Self {
        let Exhausted {
            retries,
            maybe_stored,
            source,
        } = spent;
        if maybe_stored {
            WorkError::OutcomeUnknown {
                command_id,
                retries,
                source,
            }
        } else {
            WorkError::Unavailable {
                command_id,
                retries,
                source,
            }
        }
    }

    pub(super) fn with_attempts(self, runs: u32) -> Self {
        match self {
            WorkError::Conflict {
                aggregate,
                expected,
                actual,
                ..
            } => WorkError::Conflict {
                aggregate,
                attempts: runs,
                expected,
                actual,
            },
            other => other,
        }
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<RepositoryError<E>> for WorkError {
    fn from(error: RepositoryError<E>) -> Self {
        match error {
            RepositoryError::Rejected(refusal) => WorkError::Rejected(Box::new(refusal)),
            RepositoryError::Conflict {
                aggregate,
                attempts,
                expected,
                actual,
            } => WorkError::Conflict {
                aggregate,
                attempts,
                expected,
                actual,
            },
            RepositoryError::Decode { aggregate, source } => {
                WorkError::Decode { aggregate, source }
            }
            RepositoryError::Unavailable {
                command_id,
                retries,
                source,
                ..
            } => WorkError::Unavailable {
                command_id,
                retries,
                source,
            },
            RepositoryError::OutcomeUnknown {
                command_id,
                retries,
                source,
                ..
            } => WorkError::OutcomeUnknown {
                command_id,
                retries,
                source,
            },
            RepositoryError::CommandIdReused {
                command_id,
                aggregate,
                reason,
            } => WorkError::CommandIdReused {
                command_id,
                aggregate,
                reason,
            },
            RepositoryError::Store(error) => WorkError::from(error),
        }
    }
}

impl From<StoreError> for WorkError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::OptimisticConcurrency {
                aggregate,
                expected,
                actual,
            } => WorkError::Conflict {
                aggregate,
                attempts: 1,
                expected,
                actual,
            },
            other => WorkError::Store(other),
        }
    }
}

impl From<sqlx::Error> for WorkError {
    fn from(error: sqlx::Error) -> Self {
        WorkError::from(StoreError::from(error))
    }
}
