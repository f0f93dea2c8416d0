//! The `es` command line, for operating an event store: migrations, an
//! aggregate's events, the live feed, projections (lag, claims, reset,
//! rebuild) and the events they skipped, on PostgreSQL, SQLite and MySQL.
//!
//! ```text
//! es migrate [--dry-run]                    apply the store's migrations, or print their SQL
//! es status [--json]                        events, aggregates, head, migrations, listeners
//! es stream CONTEXT TYPE ID [--from N] [--to N] [--json]
//! es tail [--from POSITION | --last N] [--follow] [--filter context=..,type=..] [--json]
//! es projections [--json]                   checkpoints, lag, partitions, claims
//! es projections reset NAME [--yes] [--force]
//! es projections rebuild NAME [--yes] [--force] [--timeout SECONDS] [--worker-timeout SECONDS]
//! es failures [NAME] [--json]
//! es failures discard NAME POSITION|--all
//! es failures retry NAME POSITION|--all     (the embedded CLI only)
//! ```
//!
//! The database is `--url`, else the config file's `url` (`--config FILE`
//! or `$ES_CONFIG`), else `$DATABASE_URL`; its scheme chooses the backend
//! (`postgres://`, `sqlite:`, `mysql://` or `mariadb://`). The schema and
//! table names are flags (`--schema`, `--events-table`, ...) or keys of the
//! config file, as [`StoreBuilder`](es_store::StoreBuilder) names them.
//! Failures are one line on stderr, `es: ...`, with the exit codes of
//! [`Error`]. No output shows a password: a URL is shown rebuilt from its
//! parts with the password and secret parameters as `***`, or not at all
//! when it does not parse.
//!
//! The plain `es` rebuilds a projection by rewinding it for its running
//! workers to replay: it waits (`--worker-timeout`, 60 s) for one to run
//! before it changes anything, and refuses a projection that declares side
//! effects ([`Projection::has_side_effects`]) unless given `--force`.
//!
//! # Embedding it in a service
//!
//! The plain `es` binary does not have your projections' code. It rewinds a
//! projection and follows its workers while they replay (its read model is
//! not cleared), and it cannot retry a skipped event. Register your
//! projections with [`Cli::projection`] in a binary of your own, and
//! `projections rebuild` runs the real [`ProjectionProcessor::rebuild`]
//! (clearing the read model, then catching up in-process),
//! `projections reset` clears the read model as it rewinds, and
//! `failures retry` handles the event again and removes its record in one
//! transaction:
//!
//! ```no_run
//! use es_aggregate::projection::{HandlerError, Projection};
//! use es_aggregate::ProjectionProcessor;
//! use es_store::{PersistedEvent, PostgresStore};
//! use sqlx::PgConnection;
//!
//! struct Balances;
//!
//! impl Projection for Balances {
//!     fn name(&self) -> &str {
//!         "balances"
//!     }
//!     async fn handle(&self, tx: &mut PgConnection, event: &PersistedEvent) -> Result<(), HandlerError> {
//!         // ... update the read model in `tx` ...
//!         # let _ = (tx, event);
//!         Ok(())
//!     }
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     es_cli::Cli::new()
//!         .projection(|store: PostgresStore, pool| {
//!             ProjectionProcessor::new(store, pool, Balances).with_partitions(4)
//!         })
//!         .main()
//! }
//! ```

mod args;
// The sealed trait behind `CliStore` names crate-private types.
#[allow(private_interfaces)]
mod backend;
mod commands;
mod config;
mod embedded;
mod error;
mod format;
mod progress;
mod redact;

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use es_aggregate::ProjectionProcessor;
use es_aggregate::projection::Projection;

pub use backend::CliStore;
pub use error::Error;

use config::{Location, Scheme};
use embedded::Registry;

/// The command line. `Cli::new().main()` is the plain `es` binary;
/// register projections with [`projection`](Self::projection) to embed it
/// in a service's own binary.
///
/// ```
/// # async fn demo() {
/// // `es --version`, in-process: prints the version and succeeds.
/// let outcome = es_cli::Cli::new().execute(["es", "--version"]).await;
/// assert!(matches!(outcome, Err(es_cli::Error::Args(e)) if e.exit_code() == 0));
/// # }
/// ```
#[derive(Default)]
pub struct Cli {
    registry: Registry,
}

impl std::fmt::Debug for Cli {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cli")
            .field("embedded", &!self.registry.is_empty())
            .finish_non_exhaustive()
    }
}

impl Cli {
    /// The plain CLI, with no projections registered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a projection: `make` builds its processor (with the
    /// partition count, batch size and error policy its workers use) on the
    /// store and pool the CLI connected to. It is used when the URL is of
    /// the store's backend (`S`); register a projection once per backend
    /// it runs on.
    ///
    /// ```
    /// use es_aggregate::ProjectionProcessor;
    /// use es_aggregate::projection::{HandlerError, Projection};
    /// use es_store::{PersistedEvent, SqliteStore};
    ///
    /// struct Audit;
    /// impl Projection<sqlx::Sqlite> for Audit {
    ///     fn name(&self) -> &str { "audit" }
    ///     async fn handle(&self, _: &mut sqlx::SqliteConnection, _: &PersistedEvent) -> Result<(), HandlerError> {
    ///         Ok(())
    ///     }
    /// }
    ///
    /// let cli = es_cli::Cli::new().projection(|store: SqliteStore, pool| ProjectionProcessor::new(store, pool, Audit));
    /// # let _ = cli;
    /// ```
    pub fn projection<S, P, F>(mut self, make: F) -> Self
    where
        S: CliStore,
        P: Projection<S::Database>,
        F: Fn(S, sqlx::Pool<S::Database>) -> ProjectionProcessor<S, P> + Send + Sync + 'static,
    {
        let factory: embedded::Factory<S> = Box::new(move |store, pool| {
            let processor: Arc<dyn embedded::Registered<S>> = Arc::new(make(store, pool));
            processor
        });
        S::registered_mut(&mut self.registry).push(factory);
        self
    }

    /// Runs the command line of this process (`std::env::args_os`) on a
    /// runtime of its own, prints a failure as one line on stderr, and
    /// returns the exit code: what a binary's `main` returns.
    pub fn main(self) -> ExitCode {
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(error) => {
                eprintln!("es: cannot start the async runtime: {error}");
                return ExitCode::FAILURE;
            }
        };
        runtime.block_on(self.run(std::env::args_os()))
    }

    /// Runs the command line `args` (the first is the program's name), and
    /// prints what [`main`](Self::main) prints; returns the exit code.
    pub async fn run<I, T>(self, args: I) -> ExitCode
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        match self.execute(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) if error.is_broken_pipe() => ExitCode::SUCCESS,
            Err(Error::Args(error)) => {
                if error.use_stderr() {
                    // Usage errors, as clap prints them, but clap quotes
                    // what it was given: a URL there is shown redacted.
                    // (es-cli builds clap without colours.)
                    let text = error.render().to_string();
                    let _ = write!(std::io::stderr(), "{}", redact::scrub_urls(&text));
                } else {
                    // --help, --version.
                    let _ = error.print();
                }
                ExitCode::from(error.exit_code().clamp(0, 255) as u8)
            }
            Err(error) => {
                let message = redact::scrub_urls(&error.to_string());
                let _ = writeln!(std::io::stderr(), "es: {}", format::one_line(&message));
                error.exit()
            }
        }
    }

    /// Runs the command line `args` and returns how it ended, printing the
    /// command's output but not its failure.
    pub async fn execute<I, T>(self, args: I) -> Result<(), Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args = args::Args::try_parse_from(args)?;
        let location = Location::resolve(
            args.store.url.clone(),
            args.store.config.clone(),
            args.store.names(),
        )?;
        let registry = &self.registry;
        match location.scheme {
            Scheme::Postgres => {
                #[cfg(feature = "postgres")]
                return commands::run::<es_store::PostgresStore>(location, args, registry).await;
                #[cfg(not(feature = "postgres"))]
                return Err(not_built(location.scheme, "postgres"));
            }
            Scheme::Sqlite => {
                #[cfg(feature = "sqlite")]
                return commands::run::<es_store::SqliteStore>(location, args, registry).await;
                #[cfg(not(feature = "sqlite"))]
                return Err(not_built(location.scheme, "sqlite"));
            }
            Scheme::MySql => {
                #[cfg(feature = "mysql")]
                return commands::run::<es_store::MySqlStore>(location, args, registry).await;
                #[cfg(not(feature = "mysql"))]
                return Err(not_built(location.scheme, "mysql"));
            }
        }
    }
}

#[allow(dead_code)]
fn not_built(scheme: Scheme, feature: &str) -> Error {
    Error::Usage(format!(
        "this es was built without {} support (cargo feature `{feature}` of es-cli)",
        scheme.name()
    ))
}
