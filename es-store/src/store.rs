//! The store, written once for every SQL backend: [`SqlStore`] over a
//! [`Dialect`], its builder, its names and its migrations.
//!
//! Users name it through the aliases [`PostgresStore`](crate::PostgresStore),
//! and [`SqliteStore`](crate::SqliteStore),
//! as sqlx's `PgPool` names `Pool<Postgres>`.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use sqlx::{AssertSqlSafe, SqlSafeStr};

use crate::core::Statements;
use crate::names::{Ident, Names};
use crate::{Backend, Result};

pub(crate) mod sealed {
    use crate::core::Statements;
    use crate::names::{Names, Rules};

    /// What a backend supplies to the core: its naming rules, its SQL and
    /// its migrations. Sealed: the core's generic code relies on these.
    #[allow(unreachable_pub, private_interfaces)]
    pub trait Dialect: Send + Sync + Sized + 'static {
        /// The backend's naming rules.
        const RULES: Rules;
        /// What only this backend renders and keeps: the statements only
        /// it runs (and, for MySQL, what the store learns of its server).
        /// The core never reads it; the backend's [`Codec`] does.
        ///
        /// [`Codec`]: crate::core::Codec
        type Own: std::fmt::Debug + Send + Sync + 'static;
        /// Renders every statement the store runs, from validated names:
        /// those the core runs on every backend, and the backend's own.
        fn statements(names: &Names) -> (Statements, Self::Own);
        /// The migrations, oldest first: (version, description, SQL).
        fn migrations(names: &Names) -> Vec<(i64, &'static str, String)>;
        /// The statement that begins a transaction that reads and then
        /// writes, where the driver's `BEGIN` is not the right one.
        const BEGIN_WRITE: Option<&'static str> = None;
        /// The deepest JSON the backend stores and reads back (see
        /// [`limits`](crate::limits)).
        const MAX_JSON_DEPTH: usize = crate::limits::MAX_JSON_DEPTH;
        /// The statement that makes the server end the caller's
        /// transaction (closing its session) once it has been idle for
        /// `lease`: a frozen or vanished client then loses its locks.
        fn lease_sql(lease: std::time::Duration) -> Option<String> {
            let _ = lease;
            None
        }
    }
}

/// A SQL database the store runs on: [`Postgres`](crate::dialect::Postgres)
/// or [`Sqlite`](crate::dialect::Sqlite),
/// each behind the cargo feature of the same name. Sealed: the store's
/// correctness arguments (gap safety, locking) are made per backend.
///
/// ```
/// # #[cfg(feature = "postgres")] {
/// use es_store::{Dialect, SqlStore, dialect::Postgres};
/// fn database<D: Dialect>(_: &SqlStore<D>) -> &'static str { std::any::type_name::<D::Database>() }
/// assert!(database(&es_store::PostgresStore::new()).contains("Postgres"));
/// # }
/// ```
pub trait Dialect: sealed::Dialect {
    /// The sqlx database driver.
    type Database: sqlx::Database;
}

/// The event store on one SQL backend. Cheap to clone; holds no
/// connection. Every capability trait ([`EventStore`](crate::EventStore),
/// [`AggregateStreamReader`](crate::AggregateStreamReader), ...) is
/// implemented once for all backends; what differs (SQL text, value
/// encodings, the append's locking, the gap-safe horizon, checkpoint
/// claims) comes from the [`Dialect`].
///
/// ```
/// # #[cfg(feature = "postgres")] {
/// use es_store::PostgresStore;
///
/// let store = PostgresStore::builder().schema("billing").events_table("billing_events").build()?;
/// assert_eq!(store.events_table(), r#""billing"."billing_events""#);
/// # }
/// # Ok::<(), es_store::Error>(())
/// ```
pub struct SqlStore<D: Dialect> {
    pub(crate) inner: Arc<Inner<D>>,
    dialect: PhantomData<fn() -> D>,
}

#[derive(Debug)]
pub(crate) struct Inner<D: Dialect> {
    pub(crate) names: Names,
    pub(crate) sql: Statements,
    /// The backend's own statements and state.
    pub(crate) own: D::Own,
    /// This process's signal of appends committed to the events table.
    pub(crate) committed: tokio::sync::watch::Sender<u64>,
}

/// The in-process signal of committed appends of each events table, by
/// backend and qualified table name, shared by every store on that table
/// (built separately or cloned). Two databases with the same table names
/// share a signal: their followers wake for nothing and read nothing, which
/// costs a read and loses no event.
fn committed_signal(backend: &str, events: &str) -> tokio::sync::watch::Sender<u64> {
    use std::collections::HashMap;
    use std::sync::{LazyLock, Mutex};
    static SIGNALS: LazyLock<Mutex<HashMap<String, tokio::sync::watch::Sender<u64>>>> =
        LazyLock::new(Mutex::default);
    let mut signals = SIGNALS.lock().unwrap_or_else(|e| e.into_inner());
    signals
        .entry(format!("{backend}:{events}"))
        .or_insert_with(|| tokio::sync::watch::channel(0).0)
        .clone()
}

impl<D: Dialect> Clone for SqlStore<D> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            dialect: PhantomData,
        }
    }
}

impl<D: Dialect> fmt::Debug for SqlStore<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlStore")
            .field("backend", &D::RULES.backend)
            .field("events", &self.events_table())
            .finish_non_exhaustive()
    }
}

impl<D: Dialect> Default for SqlStore<D> {
    fn default() -> Self {
        Self::new()
    }
}

impl<D: Dialect> Backend for SqlStore<D> {
    type Database = D::Database;
}

impl<D: Dialect> SqlStore<D> {
    /// A store on the default tables `events`, `aggregate_heads`,
    /// `checkpoints`, `snapshots` and `projection_failures`, in the
    /// connection's current schema or database.
    ///
    /// ```
    /// # #[cfg(feature = "postgres")]
    /// assert_eq!(es_store::PostgresStore::new().events_table(), r#""events""#);
    /// ```
    pub fn new() -> Self {
        StoreBuilder::default()
            .build()
            .expect("the default names are valid and distinct")
    }

    /// Configures schema and table names.
    ///
    /// ```
    /// # #[cfg(feature = "postgres")] {
    /// let store = es_store::PostgresStore::builder().schema("es").build()?;
    /// assert_eq!(store.checkpoints_table(), r#""es"."checkpoints""#);
    /// # }
    /// # Ok::<(), es_store::Error>(())
    /// ```
    pub fn builder() -> StoreBuilder<D> {
        StoreBuilder::default()
    }

    /// The events table, quoted and qualified, for your own SQL.
    ///
    /// ```
    /// # #[cfg(feature = "sqlite")]
    /// assert_eq!(es_store::SqliteStore::new().events_table(), r#""events""#);
    /// ```
    pub fn events_table(&self) -> String {
        self.inner.names.events()
    }

    /// The aggregate heads table, quoted and qualified.
    ///
    /// ```
    /// # #[cfg(feature = "sqlite")]
    /// assert_eq!(es_store::SqliteStore::new().heads_table(), r#""aggregate_heads""#);
    /// ```
    pub fn heads_table(&self) -> String {
        self.inner.names.heads()
    }

    /// The checkpoints table, quoted and qualified.
    ///
    /// ```
    /// # #[cfg(feature = "sqlite")]
    /// assert_eq!(es_store::SqliteStore::new().checkpoints_table(), r#""checkpoints""#);
    /// ```
    pub fn checkpoints_table(&self) -> String {
        self.inner.names.checkpoints()
    }

    /// The snapshots table, quoted and qualified.
    ///
    /// ```
    /// # #[cfg(feature = "sqlite")]
    /// assert_eq!(es_store::SqliteStore::new().snapshots_table(), r#""snapshots""#);
    /// ```
    pub fn snapshots_table(&self) -> String {
        self.inner.names.snapshots()
    }

    /// The table of events projections skipped, quoted and qualified.
    ///
    /// ```
    /// # #[cfg(feature = "sqlite")]
    /// assert_eq!(es_store::SqliteStore::new().failures_table(), r#""projection_failures""#);
    /// ```
    pub fn failures_table(&self) -> String {
        self.inner.names.failures()
    }

    /// The table of read-model documents ([`Collection`](crate::documents::Collection)),
    /// quoted and qualified.
    ///
    /// ```
    /// # #[cfg(feature = "sqlite")]
    /// assert_eq!(es_store::SqliteStore::new().documents_table(), r#""read_models""#);
    /// ```
    pub fn documents_table(&self) -> String {
        self.inner.names.documents()
    }

    /// The configured schema (PostgreSQL) or database (MySQL), if any.
    ///
    /// ```
    /// # #[cfg(feature = "postgres")] {
    /// let store = es_store::PostgresStore::builder().schema("es").build()?;
    /// assert_eq!(store.schema(), Some("es"));
    /// # }
    /// # Ok::<(), es_store::Error>(())
    /// ```
    pub fn schema(&self) -> Option<&str> {
        self.inner.names.schema.as_ref().map(Ident::as_str)
    }

    /// The deepest nesting of arrays and objects this store keeps in a
    /// JSON value (payload, metadata, snapshot state, document):
    /// [`limits::MAX_JSON_DEPTH`](crate::limits::MAX_JSON_DEPTH) (100) on
    /// PostgreSQL and SQLite,
    /// [`limits::MAX_JSON_DEPTH_MYSQL`](crate::limits::MAX_JSON_DEPTH_MYSQL)
    /// (31) on MySQL and MariaDB. Deeper values are refused with
    /// [`Error::JsonTooDeep`](crate::Error::JsonTooDeep).
    ///
    /// ```
    /// # #[cfg(feature = "postgres")]
    /// assert_eq!(es_store::PostgresStore::new().max_json_depth(), 100);
    /// # #[cfg(feature = "mysql")]
    /// assert_eq!(es_store::MySqlStore::new().max_json_depth(), 31);
    /// ```
    pub fn max_json_depth(&self) -> usize {
        D::MAX_JSON_DEPTH
    }

    /// The migrations for this store's names, as a sqlx
    /// [`Migrator`](sqlx::migrate::Migrator).
    ///
    /// They are tracked in a table of the store's own, so they never
    /// collide with your application's migrations, nor with another store's
    /// in the same schema: `_es_migrations` for a store on the default
    /// events table, `_es_migrations_<events table>` otherwise.
    ///
    /// ```
    /// # #[cfg(feature = "sqlite")] {
    /// let migrator = es_store::SqliteStore::new().migrator();
    /// assert_eq!(migrator.iter().next().unwrap().version, 1);
    /// # }
    /// ```
    pub fn migrator(&self) -> sqlx::migrate::Migrator {
        use sqlx::migrate::{Migration, MigrationType, Migrator};
        let names = &self.inner.names;
        let migrations = D::migrations(names)
            .into_iter()
            .map(|(version, description, sql)| {
                Migration::new(
                    version,
                    description.into(),
                    MigrationType::Simple,
                    AssertSqlSafe(sql).into_sql_str(),
                    false,
                )
            })
            .collect();
        let mut migrator = Migrator::with_migrations(migrations);
        migrator.dangerous_set_table_name(names.migrations_table());
        if let Some(schema) = &names.schema {
            let q = names.quote;
            migrator.create_schema(format!("{q}{}{q}", schema.as_str()));
        }
        migrator
    }

    pub(crate) fn sql(&self) -> &Statements {
        &self.inner.sql
    }

    pub(crate) fn names(&self) -> &Names {
        &self.inner.names
    }

    /// The backend's own statements and state.
    pub(crate) fn own(&self) -> &D::Own {
        &self.inner.own
    }
}

/// Sets the schema and table names of a [`SqlStore`].
///
/// Names must be plain identifiers (ASCII letters, digits, `_`, not starting
/// with a digit); they are always quoted in SQL, so case is kept. Table names
/// are limited to 40 bytes on every backend, because the store derives
/// sequence, index and table names from the events table's name. Every
/// table, and every name derived from them, must be distinct. The same rules
/// hold on every backend, so one configuration works on all of them
/// (SQLite has no schemas).
///
/// ```
/// # #[cfg(feature = "postgres")] {
/// use es_store::{Error, PostgresStore};
///
/// let err = PostgresStore::builder().events_table("events; DROP TABLE x").build().unwrap_err();
/// assert!(matches!(err, Error::InvalidIdentifier { what: "events table", .. }));
///
/// // `ev_listeners` is the table the store derives from the events table `ev`
/// let err = PostgresStore::builder().events_table("ev").heads_table("ev_listeners").build().unwrap_err();
/// assert!(matches!(err, Error::InvalidIdentifier { what: "table names", .. }));
/// # }
/// ```
pub struct StoreBuilder<D: Dialect> {
    schema: Option<String>,
    events: String,
    heads: String,
    checkpoints: String,
    snapshots: String,
    failures: String,
    documents: String,
    notify: bool,
    dialect: PhantomData<fn() -> D>,
}

impl<D: Dialect> Clone for StoreBuilder<D> {
    fn clone(&self) -> Self {
        Self {
            schema: self.schema.clone(),
            events: self.events.clone(),
            heads: self.heads.clone(),
            checkpoints: self.checkpoints.clone(),
            snapshots: self.snapshots.clone(),
            failures: self.failures.clone(),
            documents: self.documents.clone(),
            notify: self.notify,
            dialect: PhantomData,
        }
    }
}

impl<D: Dialect> fmt::Debug for StoreBuilder<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreBuilder")
            .field("backend", &D::RULES.backend)
            .field("schema", &self.schema)
            .field("events", &self.events)
            .field("heads", &self.heads)
            .field("checkpoints", &self.checkpoints)
            .field("snapshots", &self.snapshots)
            .field("failures", &self.failures)
            .field("documents", &self.documents)
            .field("notify", &self.notify)
            .finish()
    }
}

impl<D: Dialect> Default for StoreBuilder<D> {
    fn default() -> Self {
        Self {
            schema: None,
            events: "events".to_owned(),
            heads: "aggregate_heads".to_owned(),
            checkpoints: "checkpoints".to_owned(),
            snapshots: "snapshots".to_owned(),
            failures: "projection_failures".to_owned(),
            documents: "read_models".to_owned(),
            notify: true,
            dialect: PhantomData,
        }
    }
}

impl<D: Dialect> StoreBuilder<D> {
    /// Puts every table in this schema (PostgreSQL) or database (MySQL),
    /// created by `migrate` if missing. SQLite has no schemas: `build`
    /// refuses one.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// Names the events table (default `events`).
    pub fn events_table(mut self, name: impl Into<String>) -> Self {
        self.events = name.into();
        self
    }

    /// Names the aggregate heads table (default `aggregate_heads`).
    pub fn heads_table(mut self, name: impl Into<String>) -> Self {
        self.heads = name.into();
        self
    }

    /// Names the checkpoints table (default `checkpoints`).
    pub fn checkpoints_table(mut self, name: impl Into<String>) -> Self {
        self.checkpoints = name.into();
        self
    }

    /// Names the snapshots table (default `snapshots`).
    pub fn snapshots_table(mut self, name: impl Into<String>) -> Self {
        self.snapshots = name.into();
        self
    }

    /// Names the table of events projections skipped (default
    /// `projection_failures`).
    pub fn failures_table(mut self, name: impl Into<String>) -> Self {
        self.failures = name.into();
        self
    }

    /// Names the table of read-model documents (default `read_models`;
    /// see [`Collection`](crate::documents::Collection)).
    pub fn documents_table(mut self, name: impl Into<String>) -> Self {
        self.documents = name.into();
        self
    }

    /// PostgreSQL: whether appending transactions send a notification on
    /// the store's notification channel (default: yes) while a listener is
    /// registered, which live projection processors use. PostgreSQL
    /// serializes the commits of notifying transactions in a database, so
    /// nothing is sent while nobody listens; turn it off altogether to never
    /// pay for it (processors then find new events by polling). Other
    /// backends ignore it.
    pub fn notify_on_append(mut self, notify: bool) -> Self {
        self.notify = notify;
        self
    }

    /// Validates the names and renders the store's SQL.
    pub fn build(self) -> Result<SqlStore<D>> {
        let rules = D::RULES;
        let names = Names {
            quote: rules.quote,
            schema: self.schema.map(|s| Ident::schema(&rules, &s)).transpose()?,
            events: Ident::table(&rules, "events table", &self.events)?,
            heads: Ident::table(&rules, "heads table", &self.heads)?,
            checkpoints: Ident::table(&rules, "checkpoints table", &self.checkpoints)?,
            snapshots: Ident::table(&rules, "snapshots table", &self.snapshots)?,
            failures: Ident::table(&rules, "failures table", &self.failures)?,
            documents: Ident::table(&rules, "documents table", &self.documents)?,
            notify: self.notify,
        };
        names.check_distinct()?;
        let (sql, own) = D::statements(&names);
        let committed = committed_signal(rules.backend, &names.events());
        Ok(SqlStore {
            inner: Arc::new(Inner {
                names,
                sql,
                own,
                committed,
            }),
            dialect: PhantomData,
        })
    }
}
