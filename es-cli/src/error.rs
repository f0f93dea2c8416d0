//! What a command can fail with, and the exit code each failure gives.

use std::process::ExitCode;

/// Why a command failed. Each kind has an exit code of its own
/// ([`Error::exit_code`]), which scripts can rely on:
///
/// | code | meaning |
/// |---|---|
/// | 0 | success |
/// | 1 | a failure at run time: the database, the connection, a handler, no worker to rebuild a projection ([`Error::Connect`], [`Error::Store`], [`Error::Projection`], [`Error::Io`], [`Error::Failed`], [`Error::NoWorker`]) |
/// | 2 | bad usage: arguments, the URL, the config file, table names, a confirmation not given, a rewind of a projection with side effects without `--force` ([`Error::Args`], [`Error::Usage`], [`Error::SideEffects`]) |
/// | 3 | not found: an unknown projection, an aggregate without events, a failure that is not recorded ([`Error::NotFound`]) |
/// | 4 | the store is not there: its tables are missing, run `es migrate` ([`Error::NotMigrated`]) |
/// | 5 | the command needs the projection's code: run it from the service's embedded CLI ([`Error::NeedsEmbedded`]) |
/// | 130 | interrupted (Ctrl-C) while waiting ([`Error::Interrupted`]) |
///
/// ```
/// let error = es_cli::Error::NotFound("no projection `balances`".into());
/// assert_eq!(error.exit_code(), 3);
/// assert_eq!(error.to_string(), "no projection `balances`");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The command line did not parse (clap's message, several lines).
    #[error("{0}")]
    Args(#[from] clap::Error),
    /// The URL, the config file, a table name or a missing confirmation.
    #[error("{0}")]
    Usage(String),
    /// The database could not be reached.
    #[error("cannot connect to {backend} at {url}: {reason}")]
    Connect {
        /// The backend the URL names.
        backend: &'static str,
        /// The URL, without its password.
        url: String,
        /// What the connection met.
        reason: String,
    },
    /// The store's tables are missing.
    #[error("{0}")]
    NotMigrated(String),
    /// An unknown projection, stream or failure.
    #[error("{0}")]
    NotFound(String),
    /// The command needs the projection's handler, which only a service's
    /// own binary has (see [`Cli::projection`](crate::Cli::projection)).
    #[error("{0}")]
    NeedsEmbedded(String),
    /// The store failed.
    #[error("{0}")]
    Store(#[source] Box<es_store::Error>),
    /// A projection failed.
    #[error("{0}")]
    Projection(#[source] Box<es_aggregate::ProjectionError>),
    /// Writing the output failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The command ran, and says what went wrong (for example events that
    /// failed again when retried).
    #[error("{0}")]
    Failed(String),
    /// Ctrl-C (or SIGTERM) while the command was waiting.
    #[error("interrupted{0}")]
    Interrupted(String),
    /// A reset or rebuild refused, before anything changed, because the
    /// projection declares side effects
    /// ([`Projection::has_side_effects`](es_aggregate::projection::Projection::has_side_effects)):
    /// replaying the feed into it would do them again (publish every event
    /// again, mail again). `--force` overrides.
    ///
    /// ```
    /// let error = es_cli::Error::SideEffects { projection: "publisher".into(), action: "rebuild" };
    /// assert_eq!(error.exit_code(), 2);
    /// assert!(error.to_string().contains("--force"));
    /// ```
    #[error(
        "refusing to {action} `{projection}`: it declares side effects \
         (Projection::has_side_effects), which a replay does again for every event it replays \
         (publishing, mails, calls); nothing was changed. Pass --force to {action} it anyway"
    )]
    SideEffects {
        /// The projection, as listed.
        projection: String,
        /// `reset` or `rebuild`.
        action: &'static str,
    },
    /// A rebuild by the plain `es` (which does not have the projection's
    /// code, and leaves the replay to the projection's workers) found no
    /// running worker of the projection within the wait it was given, and
    /// changed nothing.
    ///
    /// ```
    /// let error = es_cli::Error::NoWorker {
    ///     projection: "balances".into(),
    ///     waited: std::time::Duration::from_secs(60),
    /// };
    /// assert_eq!(error.exit_code(), 1);
    /// assert!(error.to_string().contains("nothing was changed"));
    /// ```
    #[error(
        "no worker of `{projection}` ran within {}: nothing was changed (its checkpoints stay \
         where they were). Start its workers (a running worker records itself every {} s), \
         then rebuild again, or wait longer with --worker-timeout; a service's embedded CLI \
         rebuilds it in-process",
        crate::format::duration(*waited),
        es_store::ProjectionVersion::WORKER_HEARTBEAT.as_secs()
    )]
    NoWorker {
        /// The projection, as listed.
        projection: String,
        /// How long the rebuild waited for a worker.
        waited: std::time::Duration,
    },
}

impl From<es_store::Error> for Error {
    fn from(error: es_store::Error) -> Self {
        Error::Store(Box::new(error))
    }
}

impl From<es_aggregate::ProjectionError> for Error {
    fn from(error: es_aggregate::ProjectionError) -> Self {
        Error::Projection(Box::new(error))
    }
}

impl Error {
    /// The process exit code for this error (see the table above).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Args(e) => e.exit_code().clamp(0, 255) as u8,
            Error::Usage(_) | Error::SideEffects { .. } => 2,
            Error::NotFound(_) => 3,
            Error::NotMigrated(_) => 4,
            Error::NeedsEmbedded(_) => 5,
            Error::Interrupted(_) => 130,
            Error::Connect { .. }
            | Error::Store(_)
            | Error::Projection(_)
            | Error::Io(_)
            | Error::Failed(_)
            | Error::NoWorker { .. } => 1,
        }
    }

    /// [`exit_code`](Self::exit_code) as a process [`ExitCode`].
    pub fn exit(&self) -> ExitCode {
        ExitCode::from(self.exit_code())
    }

    /// Whether the output's reader went away (`es tail | head`): not a
    /// failure of the command.
    pub(crate) fn is_broken_pipe(&self) -> bool {
        matches!(self, Error::Io(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

/// Whether a database error says a table (or relation) is missing, on any
/// backend: PostgreSQL's `42P01`, MySQL's `42S02` (1146), SQLite's "no such
/// table".
pub(crate) fn is_missing_table(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = error else {
        return false;
    };
    matches!(db.code().as_deref(), Some("42P01" | "42S02" | "1146"))
        || db.message().starts_with("no such table")
}

/// The store's error, or [`Error::NotMigrated`] when it says a table of
/// the store is missing.
pub(crate) fn store_error(error: es_store::Error) -> Error {
    match &error {
        es_store::Error::Database(db) if is_missing_table(db) => Error::NotMigrated(format!(
            "a table of the store is missing ({db}): run `es migrate`"
        )),
        _ => Error::from(error),
    }
}

/// [`store_error`] for sqlx's errors.
pub(crate) fn db_error(error: sqlx::Error) -> Error {
    store_error(es_store::Error::Database(error))
}

/// [`store_error`] through a projection's error.
pub(crate) fn projection_error(error: es_aggregate::ProjectionError) -> Error {
    match error {
        es_aggregate::ProjectionError::Store { source, .. } if matches!(&source, es_store::Error::Database(db) if is_missing_table(db)) => {
            store_error(source)
        }
        other => Error::from(other),
    }
}
