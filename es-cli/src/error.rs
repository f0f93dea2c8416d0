//! What a command can fail with, and the exit code each failure gives.

use std::process::ExitCode;

/// Why a command failed. Each kind has an exit code of its own
/// ([`Error::exit_code`]), which scripts can rely on:
///
/// | code | meaning |
/// |---|---|
/// | 0 | success |
/// | 1 | a failure at run time: the database, the connection, a handler ([`Error::Connect`], [`Error::Store`], [`Error::Projection`], [`Error::Io`], [`Error::Failed`]) |
/// | 2 | bad usage: arguments, the URL, the config file, table names, a confirmation not given ([`Error::Args`], [`Error::Usage`]) |
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
            Error::Usage(_) => 2,
            Error::NotFound(_) => 3,
            Error::NotMigrated(_) => 4,
            Error::NeedsEmbedded(_) => 5,
            Error::Interrupted(_) => 130,
            Error::Connect { .. }
            | Error::Store(_)
            | Error::Projection(_)
            | Error::Io(_)
            | Error::Failed(_) => 1,
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
