//! Why a command or a load failed.

use std::fmt;

use es_store::{AggregateKey, CommandId, DecodeError, Error as StoreError, ExpectedVersion};

use crate::retry::Exhausted;
use crate::{Aggregate, FailureKind};
#[cfg(doc)]
use crate::{Executed, RetryPolicy};
#[cfg(doc)]
use es_store::Metadata;

/// Why a command or a load failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepositoryError<E: std::error::Error + 'static> {
    /// The aggregate refused the command; nothing was written.
    #[error("command refused: {0}")]
    Rejected(#[source] E),

    /// Other writers kept changing the aggregate: the command lost the
    /// optimistic-concurrency check on every attempt the retry policy
    /// allowed.
    #[error("optimistic concurrency conflict on {aggregate} after {attempts} attempt(s): expected {expected}, {}",
        .actual.map_or_else(|| "the version changed concurrently".to_owned(), |v| format!("found version {v}")))]
    Conflict {
        /// The aggregate.
        aggregate: AggregateKey,
        /// How many times the command was handled.
        attempts: u32,
        /// The version the last attempt expected.
        expected: ExpectedVersion,
        /// The version the last attempt found, when known.
        actual: Option<i64>,
    },

    /// A stored event could not be decoded into the aggregate's event type.
    #[error("cannot decode a stored event of {aggregate}: {source}")]
    Decode {
        /// The aggregate.
        aggregate: AggregateKey,
        /// What went wrong.
        #[source]
        source: Box<DecodeError>,
    },

    /// A transient failure ([`StoreError::is_transient`]: a lost
    /// connection, a server restarting, a deadlock, a busy database, a pool
    /// timeout) lasted through every retry the policy allowed
    /// ([`RetryPolicy::with_transient_retries`]), and nothing of the
    /// command was stored: running it again later is safe.
    #[error("command {command_id} on {aggregate} failed after {retries} transient retr{}: {source}",
        if *.retries == 1 { "y" } else { "ies" })]
    Unavailable {
        /// The aggregate.
        aggregate: AggregateKey,
        /// The command's id.
        command_id: CommandId,
        /// How many times the command was tried again after a failure.
        retries: u32,
        /// The last failure.
        #[source]
        source: Box<StoreError>,
    },

    /// The command may or may not have been stored: the last failure
    /// (after every retry the policy allowed) came after its events were
    /// sent, and whether they were committed could not be found out. Run
    /// the command again with the same id ([`Metadata::with_command_id`]
    /// with `command_id`): if it was stored, that returns its original
    /// outcome ([`Executed::replayed`]) and writes nothing; if not, it runs.
    ///
    /// ```no_run
    /// # use es_aggregate::{Aggregate, Repository, RepositoryError};
    /// # async fn demo<A: Aggregate>(repository: Repository<A>, command: A::Command) -> Result<(), Box<dyn std::error::Error>> {
    /// match repository.execute("acc-1", &command).await {
    ///     Err(RepositoryError::OutcomeUnknown { command_id, .. }) => {
    ///         // later, when the database is back:
    ///         let metadata = es_store::Metadata::new().with_command_id(command_id);
    ///         let executed = repository.execute_with("acc-1", &command, &metadata).await?;
    ///         println!("applied once, at version {}", executed.version);
    ///     }
    ///     other => { other?; }
    /// }
    /// # Ok(()) }
    /// ```
    #[error("the outcome of command {command_id} on {aggregate} is unknown after {retries} transient retr{}: {source}",
        if *.retries == 1 { "y" } else { "ies" })]
    OutcomeUnknown {
        /// The aggregate.
        aggregate: AggregateKey,
        /// The command's id: run the command again with it to find out.
        command_id: CommandId,
        /// How many times the command was tried again after a failure.
        retries: u32,
        /// The last failure.
        #[source]
        source: Box<StoreError>,
    },

    /// The command id was applied before, but to another aggregate or as
    /// a different command; nothing was written.
    #[error("command id {command_id} given for {aggregate} was already used {reason}")]
    CommandIdReused {
        /// The command id.
        command_id: CommandId,
        /// The aggregate the command was run on now.
        aggregate: AggregateKey,
        /// What the id was used for.
        reason: CommandIdReuse,
    },

    /// The store failed (or refused the input, for example an empty id).
    #[error(transparent)]
    Store(StoreError),
}

/// What a reused command id was used for before
/// ([`RepositoryError::CommandIdReused`]).
///
/// ```
/// use es_aggregate::CommandIdReuse;
/// use es_store::AggregateKey;
///
/// let other = CommandIdReuse::OtherAggregate(Box::new(AggregateKey::new("Billing", "Account", "acc-2")));
/// assert_eq!(other.to_string(), "for aggregate Billing/Account/acc-2");
/// let different = CommandIdReuse::DifferentCommand { version: 7 };
/// assert_eq!(different.to_string(), "by a different command (stored at version 7)");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommandIdReuse {
    /// For a command on another aggregate.
    OtherAggregate(Box<AggregateKey>),
    /// For a command on this aggregate that decided differently: handled
    /// on the state the original command was decided on (the state before
    /// `version`), this command is refused or produces other events.
    DifferentCommand {
        /// The version of the original command's first event.
        version: i64,
    },
}

impl fmt::Display for CommandIdReuse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandIdReuse::OtherAggregate(key) => write!(f, "for aggregate {key}"),
            CommandIdReuse::DifferentCommand { version } => {
                write!(f, "by a different command (stored at version {version})")
            }
        }
    }
}

impl<E: std::error::Error + 'static> RepositoryError<E> {
    pub(super) fn from_store(error: StoreError, attempts: u32) -> Self {
        match error {
            StoreError::OptimisticConcurrency {
                aggregate,
                expected,
                actual,
            } => RepositoryError::Conflict {
                aggregate,
                attempts,
                expected,
                actual,
            },
            other => RepositoryError::Store(other),
        }
    }
}

impl<E: std::error::Error + 'static> RepositoryError<E> {
    /// The command's failure from the retries that ran out.
    pub(crate) fn exhausted(
        aggregate: AggregateKey,
        command_id: CommandId,
        spent: Exhausted,
    ) -> Self {
        let Exhausted {
            retries,
            maybe_stored,
            source,
        } = spent;
        if maybe_stored {
            RepositoryError::OutcomeUnknown {
                aggregate,
                command_id,
                retries,
                source,
            }
        } else {
            RepositoryError::Unavailable {
                aggregate,
                command_id,
                retries,
                source,
            }
        }
    }

    /// What kind of failure this is: the predicates below answer from it.
    ///
    /// ```
    /// use es_aggregate::{FailureKind, RepositoryError};
    /// use es_store::Error as StoreError;
    ///
    /// let refused = RepositoryError::Rejected(std::io::Error::other("insufficient funds"));
    /// assert_eq!(refused.kind(), FailureKind::Rejected);
    /// let busy = RepositoryError::<std::io::Error>::from(StoreError::from(sqlx::Error::PoolTimedOut));
    /// assert_eq!(busy.kind(), FailureKind::Store { transient: true });
    /// ```
    pub fn kind(&self) -> FailureKind {
        match self {
            RepositoryError::Rejected(_) => FailureKind::Rejected,
            RepositoryError::Conflict { .. } => FailureKind::Conflict,
            RepositoryError::Unavailable { .. } => FailureKind::Unavailable,
            RepositoryError::OutcomeUnknown { .. } => FailureKind::OutcomeUnknown,
            RepositoryError::Store(error) => FailureKind::Store {
                transient: error.is_transient(),
            },
            RepositoryError::Decode { .. } | RepositoryError::CommandIdReused { .. } => {
                FailureKind::Other
            }
        }
    }

    /// Whether the command lost the optimistic-concurrency check on every
    /// attempt ([`RepositoryError::Conflict`]).
    pub fn is_conflict(&self) -> bool {
        self.kind().is_conflict()
    }

    /// Whether the aggregate refused the command
    /// ([`RepositoryError::Rejected`]).
    pub fn is_rejected(&self) -> bool {
        self.kind().is_rejected()
    }

    /// Whether the failure is passing: trying again later may succeed
    /// ([`RepositoryError::Unavailable`], [`RepositoryError::OutcomeUnknown`],
    /// or a store error that [`StoreError::is_transient`]).
    ///
    /// ```
    /// use es_aggregate::RepositoryError;
    /// use es_store::{AggregateKey, Error as StoreError, ExpectedVersion};
    ///
    /// type E = RepositoryError<std::io::Error>;
    /// let conflict = E::Conflict {
    ///     aggregate: AggregateKey::new("Billing", "Account", "acc-1"),
    ///     attempts: 20,
    ///     expected: ExpectedVersion::Exact(3),
    ///     actual: Some(4),
    /// };
    /// assert!(conflict.is_conflict() && !conflict.is_transient() && conflict.outcome_known());
    /// let refused = E::Rejected(std::io::Error::other("insufficient funds"));
    /// assert!(refused.is_rejected() && !refused.is_conflict());
    /// assert!(E::from(StoreError::from(sqlx::Error::PoolTimedOut)).is_transient());
    /// ```
    pub fn is_transient(&self) -> bool {
        self.kind().is_transient()
    }

    /// Whether the caller knows what the command did: false only for
    /// [`RepositoryError::OutcomeUnknown`], after which the events may or
    /// may not be stored. Every other error means nothing was written.
    ///
    /// ```
    /// use es_aggregate::RepositoryError;
    /// use es_store::{AggregateKey, CommandId, Error as StoreError};
    ///
    /// let lost = RepositoryError::<std::io::Error>::OutcomeUnknown {
    ///     aggregate: AggregateKey::new("Billing", "Account", "acc-1"),
    ///     command_id: CommandId::new(),
    ///     retries: 10,
    ///     source: Box::new(StoreError::from(sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into()))),
    /// };
    /// assert!(!lost.outcome_known());
    /// assert!(lost.is_transient());
    /// assert!(RepositoryError::<std::io::Error>::from(StoreError::NoEvents).outcome_known());
    /// ```
    pub fn outcome_known(&self) -> bool {
        self.kind().outcome_known()
    }
}

impl<E: std::error::Error + 'static> From<StoreError> for RepositoryError<E> {
    fn from(error: StoreError) -> Self {
        Self::from_store(error, 1)
    }
}

/// The repository's result type.
pub type Result<T, A> = std::result::Result<T, RepositoryError<<A as Aggregate>::Error>>;
