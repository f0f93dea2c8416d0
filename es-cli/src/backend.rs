//! What the CLI does differently on each backend: connecting, and the
//! operator's reads (counts, checkpoint rows, applied migrations, claims,
//! listeners) in plain SQL against the store's tables.
//!
//! The store's own API does everything else (reading streams and the feed,
//! checkpoints, failures, migrations), so the CLI reads exactly as the
//! framework does.

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

/// How long a PostgreSQL listener's registration counts (the store's
/// `LISTENER_TTL_SECONDS`).
#[cfg(feature = "postgres")]
const LISTENER_TTL_SECONDS: u32 = 30;

/// A migration recorded as applied in the store's migrations table.
#[derive(Debug, Clone)]
#[allow(unreachable_pub)] // named by the sealed trait
pub struct Applied {
    pub(crate) version: i64,
    pub(crate) success: bool,
    pub(crate) checksum: Vec<u8>,
}

/// A connection registered as listening to the store's notifications
/// (PostgreSQL).
#[derive(Debug, Clone)]
#[allow(unreachable_pub)] // named by the sealed trait
pub struct Listener {
    pub(crate) pid: i32,
    pub(crate) seen_secs_ago: f64,
    pub(crate) application: Option<String>,
    pub(crate) client: Option<String>,
    pub(crate) alive: bool,
}

/// A store found in the database (by its migrations table), for the
/// message that says where the stores are when the one asked for is not
/// there.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(unreachable_pub)] // named by the sealed trait
pub struct FoundStore {
    /// Its schema (PostgreSQL) or database (MySQL); empty on SQLite.
    pub(crate) schema: String,
    /// Its migrations table: `_es_migrations`, or
    /// `_es_migrations_<events table>`.
    pub(crate) table: String,
    /// Whether `schema` is the connection's current one (where the store
    /// goes when no schema is named).
    pub(crate) current: bool,
}

impl FoundStore {
    /// Its events table, when it is not the default one.
    pub(crate) fn events_table(&self) -> Option<&str> {
        self.table
            .strip_prefix("_es_migrations_")
            .filter(|events| !events.is_empty())
    }
}

/// Turns rows of (schema, table, current) into found stores.
fn found(rows: Vec<(String, String, bool)>) -> Vec<FoundStore> {
    rows.into_iter()
        .filter(|(_, table, _)| table == "_es_migrations" || table.starts_with("_es_migrations_"))
        .map(|(schema, table, current)| FoundStore {
            schema,
            table,
            current,
        })
        .collect()
}

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
    pub trait Ops: es_store::Store + Sized {
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

        /// Rows in `table` (quoted and qualified).
        fn count(
            pool: &sqlx::Pool<Self::Database>,
            table: &str,
        ) -> impl Future<Output = Result<i64, sqlx::Error>> + Send;

        /// The migrations table's rows, by version.
        fn applied(
            pool: &sqlx::Pool<Self::Database>,
            table: &str,
        ) -> impl Future<Output = Result<Vec<Applied>, sqlx::Error>> + Send;

        /// Every checkpoint row: (name, position), by name.
        fn checkpoint_rows(
            &self,
            pool: &sqlx::Pool<Self::Database>,
        ) -> impl Future<Output = Result<Vec<(String, i64)>, sqlx::Error>> + Send;

        /// The projections with skipped events, and how many each.
        fn failure_counts(
            &self,
            pool: &sqlx::Pool<Self::Database>,
        ) -> impl Future<Output = Result<Vec<(String, i64)>, sqlx::Error>> + Send;

        /// Deletes a projection's failure records (at `position`, or all).
        fn delete_failures(
            &self,
            conn: &mut es_store::Connection<Self>,
            name: &str,
            position: Option<i64>,
        ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;

        /// Every store in the database the pool is on, found by its
        /// migrations table, by schema and table.
        fn find_stores(
            pool: &sqlx::Pool<Self::Database>,
        ) -> impl Future<Output = Result<Vec<FoundStore>, sqlx::Error>> + Send;

        /// The connections listening to the store's notifications, where
        /// the backend has them (PostgreSQL; none elsewhere).
        fn listeners(
            &self,
            pool: &sqlx::Pool<Self::Database>,
            names: &Names,
        ) -> impl Future<Output = Result<Option<Vec<Listener>>, sqlx::Error>> + Send {
            let _ = (pool, names);
            async { Ok(None) }
        }

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

/// The SQL the backends share, with `$p` the placeholders.
macro_rules! shared_ops {
    ($p1:literal, $p2:literal, $name:literal) => {
        fn count(
            pool: &sqlx::Pool<Self::Database>,
            table: &str,
        ) -> impl Future<Output = Result<i64, sqlx::Error>> + Send {
            let sql = format!("SELECT count(*) FROM {table}");
            async move {
                sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql))
                    .fetch_one(pool)
                    .await
            }
        }

        fn applied(
            pool: &sqlx::Pool<Self::Database>,
            table: &str,
        ) -> impl Future<Output = Result<Vec<Applied>, sqlx::Error>> + Send {
            let sql = format!("SELECT version, success, checksum FROM {table} ORDER BY version");
            async move {
                let rows: Vec<(i64, bool, Vec<u8>)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .fetch_all(pool)
                    .await?;
                Ok(rows
                    .into_iter()
                    .map(|(version, success, checksum)| Applied {
                        version,
                        success,
                        checksum,
                    })
                    .collect())
            }
        }

        fn checkpoint_rows(
            &self,
            pool: &sqlx::Pool<Self::Database>,
        ) -> impl Future<Output = Result<Vec<(String, i64)>, sqlx::Error>> + Send {
            let sql = format!(
                "SELECT {}, position FROM {} ORDER BY projection_name",
                $name,
                self.checkpoints_table()
            );
            async move {
                sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .fetch_all(pool)
                    .await
            }
        }

        fn failure_counts(
            &self,
            pool: &sqlx::Pool<Self::Database>,
        ) -> impl Future<Output = Result<Vec<(String, i64)>, sqlx::Error>> + Send {
            let sql = format!(
                "SELECT {}, count(*) FROM {} GROUP BY projection_name \
                 ORDER BY projection_name",
                $name,
                self.failures_table()
            );
            async move {
                sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .fetch_all(pool)
                    .await
            }
        }

        fn delete_failures(
            &self,
            conn: &mut es_store::Connection<Self>,
            name: &str,
            position: Option<i64>,
        ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send {
            let table = self.failures_table();
            async move {
                let done = match position {
                    Some(position) => {
                        sqlx::query(sqlx::AssertSqlSafe(format!(
                            "DELETE FROM {table} WHERE projection_name = {} \
                             AND global_position = {}",
                            $p1, $p2
                        )))
                        .bind(name)
                        .bind(position)
                        .execute(&mut *conn)
                        .await?
                    }
                    None => {
                        sqlx::query(sqlx::AssertSqlSafe(format!(
                            "DELETE FROM {table} WHERE projection_name = {}",
                            $p1
                        )))
                        .bind(name)
                        .execute(&mut *conn)
                        .await?
                    }
                };
                Ok(done.rows_affected())
            }
        }
    };
}

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
    use sqlx::PgPool;
    use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPoolOptions};

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

        shared_ops!("$1", "$2", "projection_name");

        async fn find_stores(pool: &PgPool) -> Result<Vec<FoundStore>, sqlx::Error> {
            let rows = sqlx::query_as(
                "SELECT n.nspname::text, c.relname::text, n.nspname = current_schema() \
                 FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r', 'p') AND c.relname LIKE '\\_es\\_migrations%' \
                 ORDER BY 1, 2",
            )
            .fetch_all(pool)
            .await?;
            Ok(found(rows))
        }

        async fn listeners(
            &self,
            pool: &PgPool,
            names: &Names,
        ) -> Result<Option<Vec<Listener>>, sqlx::Error> {
            let table = listeners_table(names);
            type Row = (i32, f64, Option<String>, Option<String>, bool);
            let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT l.pid, extract(epoch FROM now() - l.seen)::float8, \
                         nullif(a.application_name, ''), host(a.client_addr), a.pid IS NOT NULL \
                     FROM {table} l \
                     LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid \
                     WHERE l.channel = $1 \
                       AND l.seen > now() - interval '{LISTENER_TTL_SECONDS} seconds' \
                     ORDER BY l.pid"
            )))
            .bind(self.notification_channel())
            .fetch_all(pool)
            .await?;
            Ok(Some(
                rows.into_iter()
                    .map(|(pid, seen, application, client, alive)| Listener {
                        pid,
                        seen_secs_ago: seen,
                        application,
                        client,
                        alive,
                    })
                    .collect(),
            ))
        }

        async fn follower(&self, pool: &PgPool, names: &Names) -> Result<Follower, Error> {
            let mut listener = PgListener::connect_with(pool)
                .await
                .map_err(crate::error::db_error)?;
            listener
                .listen(&self.notification_channel())
                .await
                .map_err(crate::error::db_error)?;
            let mut listen = PgListen {
                listener,
                store: self.clone(),
                table: listeners_table(names),
                refreshed: None,
            };
            listen.refresh().await.map_err(crate::error::store_error)?;
            Ok(Follower {
                listen: Some(Box::new(listen)),
            })
        }

        fn registered(registry: &Registry) -> &[Factory<Self>] {
            &registry.postgres
        }

        fn registered_mut(registry: &mut Registry) -> &mut Vec<Factory<Self>> {
            &mut registry.postgres
        }
    }

    /// The store's listeners table, quoted and qualified.
    fn listeners_table(names: &Names) -> String {
        let table = format!("\"{}_listeners\"", names.events());
        match &names.schema {
            Some(schema) => format!("\"{schema}\".{table}"),
            None => table,
        }
    }

    /// LISTEN on the store's channel, registered as the store's
    /// `Notifier` is, so that appends notify while `tail --follow` runs.
    struct PgListen {
        listener: PgListener,
        store: PostgresStore,
        table: String,
        refreshed: Option<std::time::Instant>,
    }

    /// How often the registration is refreshed (it lapses after 30 s).
    const REFRESH: Duration = Duration::from_secs(10);

    impl PgListen {
        async fn refresh(&mut self) -> es_store::Result<()> {
            let conn = sqlx::Acquire::acquire(&mut self.listener).await?;
            self.store.register_listener(conn).await?;
            self.refreshed = Some(std::time::Instant::now());
            Ok(())
        }
    }

    impl Listen for PgListen {
        fn wait(&mut self, timeout: Duration) -> BoxFuture<'_, ()> {
            Box::pin(async move {
                let since = self.refreshed.map(|at| at.elapsed());
                if since.is_none_or(|since| since >= REFRESH) {
                    // A failure here is a lost connection: the next receive
                    // reconnects, and the next wait registers again.
                    if self.refresh().await.is_err() {
                        self.refreshed = None;
                    }
                }
                let until_refresh =
                    REFRESH.saturating_sub(self.refreshed.map_or(REFRESH, |at| at.elapsed()));
                let wait = timeout.min(until_refresh.max(Duration::from_millis(10)));
                match tokio::time::timeout(wait, self.listener.try_recv()).await {
                    Ok(Ok(Some(_))) => while self.listener.next_buffered().is_some() {},
                    // The connection was lost (and is made again by the
                    // next receive): events may have come meanwhile, so
                    // return and read; register the new connection.
                    Ok(Ok(None)) => self.refreshed = None,
                    Ok(Err(_)) => {
                        self.refreshed = None;
                        tokio::time::sleep(wait).await;
                    }
                    Err(_) => {}
                }
            })
        }

        fn close(mut self: Box<Self>) -> BoxFuture<'static, ()> {
            Box::pin(async move {
                let table = self.table.clone();
                let channel = self.store.notification_channel();
                if let Ok(conn) = sqlx::Acquire::acquire(&mut self.listener).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DELETE FROM {table} WHERE channel = $1 AND pid = pg_backend_pid()"
                    )))
                    .bind(channel)
                    .execute(conn)
                    .await;
                }
            })
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

        shared_ops!("?1", "?2", "projection_name");

        async fn find_stores(pool: &SqlitePool) -> Result<Vec<FoundStore>, sqlx::Error> {
            let rows = sqlx::query_as(
                "SELECT '', name, 1 FROM sqlite_master \
                 WHERE type = 'table' AND name LIKE '\\_es\\_migrations%' ESCAPE '\\' \
                 ORDER BY 2",
            )
            .fetch_all(pool)
            .await?;
            Ok(found(rows))
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
        shared_ops!("?", "?", "CONVERT(projection_name USING utf8mb4)");

        async fn find_stores(pool: &MySqlPool) -> Result<Vec<FoundStore>, sqlx::Error> {
            let rows: Vec<(String, String, i64)> = sqlx::query_as(
                "SELECT CONVERT(table_schema USING utf8mb4), CONVERT(table_name USING utf8mb4), \
                        CAST(table_schema <=> DATABASE() AS SIGNED) \
                 FROM information_schema.tables \
                 WHERE table_name LIKE '\\_es\\_migrations%' \
                 ORDER BY 1, 2",
            )
            .fetch_all(pool)
            .await?;
            Ok(found(
                rows.into_iter()
                    .map(|(schema, table, current)| (schema, table, current != 0))
                    .collect(),
            ))
        }

        fn registered(registry: &Registry) -> &[Factory<Self>] {
            &registry.mysql
        }

        fn registered_mut(registry: &mut Registry) -> &mut Vec<Factory<Self>> {
            &mut registry.mysql
        }
    }
}
