//! Why a projection stopped, and how a handler says its target is away.

use super::*;

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

    /// The projection that failed: every variant names it.
    ///
    /// ```
    /// use es_aggregate::ProjectionError;
    ///
    /// let refused = ProjectionError::NoReset { projection: "balances".into() };
    /// assert_eq!(refused.projection(), "balances");
    /// ```
    pub fn projection(&self) -> &str {
        use ProjectionError as E;
        match self {
            E::Handler { projection, .. }
            | E::NoReset { projection }
            | E::Reset { projection, .. }
            | E::Superseded { projection, .. }
            | E::Retired { projection, .. }
            | E::UnknownVersion { projection, .. }
            | E::RetireActive { projection, .. }
            | E::NoRetire { projection, .. }
            | E::Retire { projection, .. }
            | E::Promote { projection, .. }
            | E::Store { projection, .. }
            | E::InvalidSetting { projection, .. }
            | E::Unavailable { projection, .. } => projection,
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
