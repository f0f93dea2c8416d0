//! The failure model of commands: one classification behind the
//! repository's and the unit of work's errors, so that what a failure
//! means (retry? stored?) is written once.

/// What kind of failure ended a command or a unit of work
/// ([`RepositoryError::kind`](crate::RepositoryError::kind),
/// [`WorkError::kind`](crate::WorkError::kind)). Both errors answer their
/// predicates (`is_conflict`, `is_rejected`, `is_transient`,
/// `outcome_known`) from it.
///
/// ```
/// use es_aggregate::FailureKind;
///
/// assert!(FailureKind::OutcomeUnknown.is_transient());
/// assert!(!FailureKind::OutcomeUnknown.outcome_known());
/// assert!(FailureKind::Store { transient: true }.is_transient());
/// assert!(FailureKind::Conflict.is_conflict() && FailureKind::Conflict.outcome_known());
/// assert!(FailureKind::Rejected.is_rejected() && !FailureKind::Rejected.is_transient());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureKind {
    /// The aggregate (or the unit's closure) refused: nothing was written,
    /// and running it again on the same state is refused again.
    Rejected,
    /// The command lost the optimistic-concurrency check on every attempt
    /// the retry policy allowed; nothing was written.
    Conflict,
    /// Transient failures lasted through every retry the policy allowed,
    /// and nothing was stored: running it again later is safe.
    Unavailable,
    /// Transient failures lasted through every retry, and the last came
    /// after the write was sent: it may or may not be stored. Running it
    /// again with the same command id finds out.
    OutcomeUnknown,
    /// The store failed or refused the input; `transient` when trying
    /// again later may succeed.
    Store {
        /// Whether the failure is passing ([`es_store::Error::is_transient`]).
        transient: bool,
    },
    /// Anything else that retrying cannot fix: an event that does not
    /// decode, a reused command id, a failure of the caller's own code.
    Other,
}

impl FailureKind {
    /// Whether the command lost the optimistic-concurrency check on every
    /// attempt.
    pub fn is_conflict(self) -> bool {
        self == FailureKind::Conflict
    }

    /// Whether the command (or unit) was refused.
    pub fn is_rejected(self) -> bool {
        self == FailureKind::Rejected
    }

    /// Whether the failure is passing: trying again later may succeed.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            FailureKind::Unavailable
                | FailureKind::OutcomeUnknown
                | FailureKind::Store { transient: true }
        )
    }

    /// Whether the caller knows what was written: false only for
    /// [`FailureKind::OutcomeUnknown`]; every other failure wrote nothing.
    pub fn outcome_known(self) -> bool {
        self != FailureKind::OutcomeUnknown
    }
}
