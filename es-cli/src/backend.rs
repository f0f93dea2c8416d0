//! What the CLI does differently on each backend: connecting, and what
//! `tail --follow` waits on.
//!
//! The store's API does everything else (reading streams and the feed,
//! checkpoints, failures, migrations, and the operator's reads through
//! [`StoreAdmin`](es_store::admin::StoreAdmin)): the CLI holds no SQL.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::Error;
use crate::config::{Location, Names};
use crate::embedded::{Factory, Registry};

/// A boxed future, for the trait objects of this crate.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How many connections a command uses at most: a processor's batch and
/// its read ahead, a progress poll, and one to spare.
const POOL_SIZE: u32 = 4;

pub(crate) use es_store::admin::{
    AppliedMigration as Applied, FoundStore, ListenerInfo as Listener,
};

/// Waits for new events in `tail --follow`: a notification where the
/// backend sends them, else the polling interval.
#[allow(unreachable_pub)] // named by the sealed trait
pub struct Follower {
    listen: Option<Box<dyn Listen>>,
}

/// A source of "new events" signals.
pub(crate) trait Listen: Send {
    /// Returns on a signal or after `timeout`.
    fn wait(&mut self, timeout: Duration) -> BoxFuture<'_, ()>;
    /// Stops listening, unregistering where that matters.
    fn close(self: Box<Self>) -> BoxFuture<'static, ()>;
}

impl Follower {
    #[cfg_attr(not(any(feature = "sqlite", feature = "mysql")), allow(dead_code))]
    pub(crate) fn polling() -> Self {
        Self { listen: None }
    }

    pub(crate) async fn wait(&mut self, timeout: Duration) {
        match &mut self.listen {
            Some(listen) => listen.wait(timeout).await,
            None => tokio::time::sleep(timeout).await,
        }
    }

    pub(crate) async fn close(self) {
        if let Some(listen) = self.listen {
            listen.close().await;
        }
    }
}

pub(crate) mod sealed {
    use super::*;

    /// The backend-specific half of [`CliStore`](super::CliStore).
    #[allow(unreachable_pub, private_interfaces)]
    pub trait Ops: es_store::Store + es_store::admin::StoreAdmin + Sized {
        /// The backend's name, for messages.
        const NAME: &'static str;

        /// The store's dialect.
        type Dialect: es_store::Dialect;

        /// The store, for its names and migrations.
        fn sql(&self) -> &es_store::SqlStore<Self::Dialect>;

        /// The store the names describe.
        fn build(names: &Names) -> Result<Self, Error>;

        /// A pool on the database, after one connection proved it
        /// answers. `create`: a SQLite file may be created.
        fn connect(
            location: &Location,
            create: bool,
            timeout: Duration,
        ) -> impl Future<Output = Result<sqlx::Pool<Self::Database>, Error>> + Send;

        /// Applies the store's migrations.
        fn migrate_store(
            &self,
            pool: &sqlx::Pool<Self::Database>,
        ) -> impl Future<Output = es_store::Result<()>> + Send;

        /// What `tail --follow` waits on (polling, where the backend has no
        /// notifications).
        fn follower(
            &self,
            pool: &sqlx::Pool<Self::Database>,
            names: &Names,
        ) -> impl Future<Output = Result<Follower, Error>> + Send {
            let _ = (pool, names);
            async { Ok(Follower::polling()) }
        }

        /// The projections a service registered for this backend.
        fn registered(registry: &Registry) -> &[Factory<Self>];

        /// Where [`Cli::projection`](crate::Cli::projection) adds them.
        fn registered_mut(registry: &mut Registry) -> &mut Vec<Factory<Self>>;
    }
}

/// A store the CLI runs on: [`PostgresStore`](es_store::PostgresStore),
/// [`SqliteStore`](es_store::SqliteStore) or
/// [`MySqlStore`](es_store::MySqlStore), each behind the cargo feature of
/// its backend. Sealed: the CLI's operator queries are written per backend.
///
/// ```
/// fn runs_on<S: es_cli::CliStore>() {}
/// runs_on::<es_store::PostgresStore>();
/// ```
pub trait CliStore: sealed::Ops {}

impl<S: sealed::Ops> CliStore for S {}

/// Connects one connection to prove the server answers, then makes a lazy
/// pool with the same options.
macro_rules! connect_pool {
    ($conn:ty, $pool_options:ty, $options:expr, $location:expr, $timeout:expr) => {{
        let options = $options;
        let attempt = tokio::time::timeout(
            $timeout,
            <$conn as sqlx::Connection>::connect_with(&options),
        )
        .await;
        let reason = match attempt {
            Ok(Ok(conn)) => {
                let _ = sqlx::Connection::close(conn).await;
                None
            }
            // sqlx's message may echo what it was given.
            Ok(Err(error)) => Some($location.secrets().scrub(&error.to_string())),
            Err(_) => Some(format!("no answer within {} s", $timeout.as_secs())),
        };
        if let Some(reason) = reason {
            return Err(Error::Connect {
                backend: Self::NAME,
                url: $location.shown(),
                reason,
            });
        }
        Ok(<$pool_options>::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(Duration::from_secs(30))
            .connect_lazy_with(options))
    }};
}

fn bad_url(backend: &str, location: &Location, error: impl std::fmt::Display) -> Error {
    // sqlx's message may quote a parameter's value.
    let error = location.secrets().scrub(&error.to_string());
    Error::Usage(format!("bad {backend} URL `{}`: {error}", location.shown()))
}

/// The location's URL as sqlx is given it: without the query parameters
/// sqlx does not read (it would log their values), which a note names.
#[cfg(any(feature = "postgres", feature = "mysql"))]
fn url_for_sqlx(url: &str, known: &[&str]) -> String {
    let (url, dropped) = crate::redact::for_sqlx(url, known);
    for key in dropped {
        eprintln!("es: note: ignoring the URL parameter `{key}`, which sqlx does not read");
    }
    url
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use es_store::PostgresStore;
    use es_store::listener::AppendListener;
    use sqlx::PgPool;
    use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};

    impl sealed::Ops for PostgresStore {
        const NAME: &'static str = "PostgreSQL";
        type Dialect = es_store::dialect::Postgres;

        fn sql(&self) -> &es_store::SqlStore<Self::Dialect> {
            self
        }

        fn build(names: &Names) -> Result<Self, Error> {
            names.build()
        }

        async fn connect(
            location: &Location,
            _create: bool,
            timeout: Duration,
        ) -> Result<PgPool, Error> {
            let options: PgConnectOptions =
                url_for_sqlx(&location.url, crate::redact::POSTGRES_PARAMETERS)
                    .parse()
                    .map_err(|e| bad_url(Self::NAME, location, e))?;
            let options = options.application_name("es-cli");
            connect_pool!(PgConnection, PgPoolOptions, options, location, timeout)
        }

        async fn migrate_store(&self, pool: &PgPool) -> es_store::Result<()> {
            self.migrate(pool).await
        }

        async fn follower(&self, pool: &PgPool, _names: &Names) -> Result<Follower, Error> {
            let listener = AppendListener::connect(self, pool)
                .await
                .map_err(crate::error::store_error)?;
            Ok(Follower {
                listen: Some(Box::new(listener)),
            })
        }

        fn registered(registry: &Registry) -> &[Factory<Self>] {
            &registry.postgres
        }

        fn registered_mut(registry: &mut Registry) -> &mut Vec<Factory<Self>> {
            &mut registry.postgres
        }
    }

    /// The store's listener: LISTEN on its channel, registered so that
    /// appends notify while `tail --follow` runs.
    impl Listen for AppendListener {
        fn wait(&mut self, timeout: Duration) -> BoxFuture<'_, ()> {
            Box::pin(async move {
                let _ = AppendListener::wait(self, timeout).await;
            })
        }

        fn close(self: Box<Self>) -> BoxFuture<'static, ()> {
            Box::pin(AppendListener::close(*self))
        }
    }
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use super::*;
    use es_store::SqliteStore;
    use sqlx::SqlitePool;
    use sqlx::sqlite::{
        SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions,
    };

    impl sealed::Ops for SqliteStore {
        const NAME: &'static str = "SQLite";
        type Dialect = es_store::dialect::Sqlite;

        fn sql(&self) -> &es_store::SqlStore<Self::Dialect> {
            self
        }

        fn build(names: &Names) -> Result<Self, Error> {
            names.build()
        }

        async fn connect(
            location: &Location,
            create: bool,
            timeout: Duration,
        ) -> Result<SqlitePool, Error> {
            let options: SqliteConnectOptions = location
                .url
                .parse()
                .map_err(|e| bad_url(Self::NAME, location, e))?;
            let path = options.get_filename().to_owned();
            if !create
                && !path.as_os_str().is_empty()
                && path != std::path::Path::new(":memory:")
                && !path.exists()
            {
                return Err(Error::NotMigrated(format!(
                    "no SQLite database at {}: run `es migrate` to create the store there",
                    path.display()
                )));
            }
            // As `SqliteStore::connect_options`: WAL, and writers wait for
            // the write lock.
            let options = options
                .create_if_missing(create)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(10));
            connect_pool!(
                SqliteConnection,
                SqlitePoolOptions,
                options,
                location,
                timeout
            )
        }

        async fn migrate_store(&self, pool: &SqlitePool) -> es_store::Result<()> {
            self.migrate(pool).await
        }

        fn registered(registry: &Registry) -> &[Factory<Self>] {
            &registry.sqlite
        }

        fn registered_mut(registry: &mut Registry) -> &mut Vec<Factory<Self>> {
            &mut registry.sqlite
        }
    }
}

#[cfg(feature = "mysql")]
mod mysql {
    use super::*;
    use es_store::MySqlStore;
    use sqlx::MySqlPool;
    use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlPoolOptions};

    impl sealed::Ops for MySqlStore {
        const NAME: &'static str = "MySQL";
        type Dialect = es_store::dialect::MySql;

        fn sql(&self) -> &es_store::SqlStore<Self::Dialect> {
            self
        }

        fn build(names: &Names) -> Result<Self, Error> {
            names.build()
        }

        async fn connect(
            location: &Location,
            _create: bool,
            timeout: Duration,
        ) -> Result<MySqlPool, Error> {
            let url = url_for_sqlx(&location.url, crate::redact::MYSQL_PARAMETERS);
            let url = match url.split_once("://") {
                // sqlx knows the scheme as mysql:// only.
                Some((scheme, rest)) if scheme.eq_ignore_ascii_case("mariadb") => {
                    format!("mysql://{rest}")
                }
                _ => url,
            };
            let options: MySqlConnectOptions =
                url.parse().map_err(|e| bad_url(Self::NAME, location, e))?;
            connect_pool!(
                MySqlConnection,
                MySqlPoolOptions,
                options,
                location,
                timeout
            )
        }

        async fn migrate_store(&self, pool: &MySqlPool) -> es_store::Result<()> {
            self.migrate(pool).await
        }

        // Names are binary strings on MySQL: read them as text.

        fn registered(registry: &Registry) -> &[Factory<Self>] {
            &registry.mysql
        }

        fn registered_mut(registry: &mut Registry) -> &mut Vec<Factory<Self>> {
            &mut registry.mysql
        }
    }
}
