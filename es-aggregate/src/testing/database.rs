//! A throwaway database for service tests, and given / when / then over
//! several aggregates against it.

use std::fmt::Debug;
use std::sync::Mutex;

use es_store::{DomainEvent, ExpectedVersion, Metadata, PersistedEvent, Store};

use crate::{Aggregate, Repository, UnitOfWork, Work, WorkError};

/// A migrated store in a database of its own, removed when the value is
/// dropped (or, waiting for it, with [`TestDatabase::remove`]): a SQLite
/// file in the system's temporary directory (with its `-wal` and `-shm`
/// files), a PostgreSQL schema, or a MySQL database, named
/// `es_test_<random>`. Tests that each take one run in parallel and never
/// see each other's events.
///
/// ```
/// # #[cfg(feature = "sqlite")]
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use es_aggregate::testing::TestDatabase;
/// use es_store::EventStore;
///
/// let db = TestDatabase::sqlite().await.unwrap();
/// let path = db.path().unwrap().to_owned();
/// assert!(path.exists());
/// db.remove().await;
/// assert!(!path.exists());
/// # });
/// ```
pub struct TestDatabase<S: Store> {
    store: S,
    pool: sqlx::Pool<S::Database>,
    cleanup: Cleanup,
}

/// What removing a test database takes.
enum Cleanup {
    #[cfg(feature = "sqlite")]
    File(std::path::PathBuf),
    #[cfg(feature = "postgres")]
    Schema {
        url: String,
        schema: String,
    },
    #[cfg(feature = "mysql")]
    Database {
        url: String,
        database: String,
    },
    Done,
}

impl<S: Store> Debug for TestDatabase<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDatabase").finish_non_exhaustive()
    }
}

/// A fresh name for a test schema, database or file.
fn fresh_name() -> String {
    format!("es_test_{}", uuid::Uuid::new_v4().simple())
}

#[cfg(feature = "sqlite")]
impl TestDatabase<es_store::SqliteStore> {
    /// A SQLite file of its own in the system's temporary directory,
    /// migrated; the file and its `-wal` and `-shm` files are removed when
    /// the value is dropped.
    pub async fn sqlite() -> es_store::Result<Self> {
        let path = std::env::temp_dir().join(format!("{}.db", fresh_name()));
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(es_store::SqliteStore::connect_options(&path))
            .await?;
        let store = es_store::SqliteStore::new();
        let db = TestDatabase {
            store,
            pool,
            cleanup: Cleanup::File(path),
        };
        db.store.migrate(&db.pool).await?;
        Ok(db)
    }

    /// The database file.
    pub fn path(&self) -> Option<&std::path::Path> {
        match &self.cleanup {
            Cleanup::File(path) => Some(path),
            _ => None,
        }
    }
}

#[cfg(feature = "postgres")]
impl TestDatabase<es_store::PostgresStore> {
    /// A schema of its own in the PostgreSQL database at `url`, migrated;
    /// dropped with everything in it when the value is dropped.
    ///
    /// ```no_run
    /// # async fn demo() -> es_store::Result<()> {
    /// let url = std::env::var("DATABASE_URL").unwrap_or("postgres://postgres@127.0.0.1:5432/test".into());
    /// let db = es_aggregate::testing::TestDatabase::postgres(&url).await?;
    /// assert!(db.store().schema().unwrap().starts_with("es_test_"));
    /// # Ok(()) }
    /// ```
    pub async fn postgres(url: &str) -> es_store::Result<Self> {
        let schema = fresh_name();
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(8)
            .connect(url)
            .await?;
        let store = es_store::PostgresStore::builder()
            .schema(schema.clone())
            .build()?;
        let db = TestDatabase {
            store,
            pool,
            cleanup: Cleanup::Schema {
                url: url.to_owned(),
                schema: schema.clone(),
            },
        };
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&db.pool)
            .await?;
        db.store.migrate(&db.pool).await?;
        Ok(db)
    }
}

#[cfg(feature = "mysql")]
impl TestDatabase<es_store::MySqlStore> {
    /// A database of its own on the MySQL or MariaDB server at `url`,
    /// migrated; dropped when the value is dropped.
    ///
    /// ```no_run
    /// # async fn demo() -> es_store::Result<()> {
    /// let db = es_aggregate::testing::TestDatabase::mysql("mysql://root@127.0.0.1:3306/test").await?;
    /// # Ok(()) }
    /// ```
    pub async fn mysql(url: &str) -> es_store::Result<Self> {
        use std::str::FromStr;
        let database = fresh_name();
        let options = sqlx::mysql::MySqlConnectOptions::from_str(url)?;
        let mut admin = sqlx::ConnectOptions::connect(&options).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE `{database}`")))
            .execute(&mut admin)
            .await?;
        sqlx::Connection::close(admin).await?;
        let pool = sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(8)
            .connect_with(options.database(&database))
            .await?;
        let db = TestDatabase {
            store: es_store::MySqlStore::new(),
            pool,
            cleanup: Cleanup::Database {
                url: url.to_owned(),
                database,
            },
        };
        db.store.migrate(&db.pool).await?;
        Ok(db)
    }
}

impl<S: Store> TestDatabase<S> {
    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The pool of connections to the database.
    pub fn pool(&self) -> &sqlx::Pool<S::Database> {
        &self.pool
    }

    /// A repository of `A` on the database.
    pub fn repository<A: Aggregate>(&self) -> Repository<A, S> {
        Repository::new(self.store.clone(), self.pool.clone())
    }

    /// Units of work on the database.
    pub fn unit_of_work(&self) -> UnitOfWork<S> {
        UnitOfWork::new(self.store.clone(), self.pool.clone())
    }

    /// Stores `events` as aggregate `id`'s past, after what it has.
    /// Panics when the store refuses them (this is for tests).
    pub async fn given<A: Aggregate>(&self, id: &str, events: impl IntoIterator<Item = A::Event>) {
        let events: Vec<A::Event> = events.into_iter().collect();
        if events.is_empty() {
            return;
        }
        let stored = A::Event::to_events(&events, id, &Metadata::default())
            .unwrap_or_else(|e| panic!("the given events of {id} do not encode: {e}"));
        let mut conn = es_store::acquire(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("no connection to the test database: {e}"));
        self.store
            .append(&mut conn, ExpectedVersion::Any, stored)
            .await
            .unwrap_or_else(|e| panic!("the given events of {id} cannot be stored: {e}"));
    }

    /// Runs `work` as a unit of work (see [`UnitOfWork::run`]) and
    /// collects what it appended, for [`Then`]'s assertions.
    pub async fn when<T, F, Fut>(&self, work: F) -> Then<T>
    where
        F: FnMut(Work<S>) -> Fut + Send,
        Fut: Future<Output = Result<T, WorkError>> + Send,
        T: Send,
    {
        let before = self.head().await;
        let outcome = self.unit_of_work().run(work).await;
        let mut appended = Vec::new();
        let mut conn = es_store::acquire(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("no connection to the test database: {e}"));
        let mut from = before;
        loop {
            let page = self
                .store
                .read_events(&mut conn, from, 1000)
                .await
                .unwrap_or_else(|e| panic!("cannot read the appended events: {e}"));
            let Some(last) = page.last() else { break };
            from = last.global_position;
            appended.extend(page);
        }
        Then {
            outcome,
            appended,
            checked: Mutex::new(Vec::new()),
        }
    }

    async fn head(&self) -> i64 {
        let mut conn = es_store::acquire(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("no connection to the test database: {e}"));
        self.store
            .head_position(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("cannot read the head position: {e}"))
    }

    /// Closes the pool and removes the database, waiting for it (dropping
    /// the value removes it too).
    pub async fn remove(mut self) {
        self.pool.close().await;
        let cleanup = std::mem::replace(&mut self.cleanup, Cleanup::Done);
        cleanup.run().await;
    }
}

impl<S: Store> Drop for TestDatabase<S> {
    fn drop(&mut self) {
        let cleanup = std::mem::replace(&mut self.cleanup, Cleanup::Done);
        if matches!(cleanup, Cleanup::Done) {
            return;
        }
        // Dropped inside a runtime or not: removing takes a runtime of its
        // own, on a thread of its own.
        let removed = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime to remove the test database");
            runtime.block_on(cleanup.run());
        })
        .join();
        if removed.is_err() {
            tracing::warn!("could not remove a test database");
        }
    }
}

impl Cleanup {
    async fn run(self) {
        match self {
            #[cfg(feature = "sqlite")]
            Cleanup::File(path) => {
                for suffix in ["", "-wal", "-shm", "-journal"] {
                    let mut file = path.clone().into_os_string();
                    file.push(suffix);
                    let _ = std::fs::remove_file(file);
                }
            }
            #[cfg(feature = "postgres")]
            Cleanup::Schema { url, schema } => {
                let dropped = async {
                    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await?;
                    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP SCHEMA IF EXISTS {schema} CASCADE"
                    )))
                    .execute(&mut conn)
                    .await?;
                    sqlx::Connection::close(conn).await
                };
                if let Err(error) = dropped.await {
                    tracing::warn!(%error, schema, "could not drop a test schema");
                }
            }
            #[cfg(feature = "mysql")]
            Cleanup::Database { url, database } => {
                let dropped = async {
                    let mut conn =
                        <sqlx::MySqlConnection as sqlx::Connection>::connect(&url).await?;
                    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS `{database}`"
                    )))
                    .execute(&mut conn)
                    .await?;
                    sqlx::Connection::close(conn).await
                };
                if let Err(error) = dropped.await {
                    tracing::warn!(%error, database, "could not drop a test database");
                }
            }
            Cleanup::Done => {}
        }
    }
}

/// What a unit of work run by [`TestDatabase::when`] did: its outcome and
/// the events it appended, to assert on per aggregate.
#[derive(Debug)]
pub struct Then<T> {
    outcome: Result<T, WorkError>,
    appended: Vec<PersistedEvent>,
    /// The aggregates asserted on, for [`Then::then_nothing_else`].
    checked: Mutex<Vec<(String, String, String)>>,
}

impl<T: Debug> Then<T> {
    /// Asserts the unit succeeded and appended exactly `expected` to
    /// aggregate `id` of `A`, in order.
    #[track_caller]
    pub fn then<A: Aggregate>(
        &self,
        id: &str,
        expected: impl IntoIterator<Item = A::Event>,
    ) -> &Self
    where
        A::Event: PartialEq + Debug,
    {
        if let Err(error) = &self.outcome {
            panic!("expected events on {id}, the unit failed: {error}");
        }
        let expected: Vec<A::Event> = expected.into_iter().collect();
        let appended = self.appended_to::<A>(id);
        assert_eq!(appended, expected, "the unit appended other events to {id}");
        self
    }

    /// Asserts that the unit appended nothing to aggregates other than
    /// those [`Then::then`] was asked about.
    #[track_caller]
    pub fn then_nothing_else(&self) -> &Self {
        let checked = self.checked.lock().unwrap_or_else(|e| e.into_inner());
        let others: Vec<_> = self
            .appended
            .iter()
            .filter(|e| {
                !checked.iter().any(|(c, t, i)| {
                    *c == e.bounded_context && *t == e.aggregate_type && *i == e.aggregate_id
                })
            })
            .map(|e| {
                format!(
                    "{} {} v{}",
                    e.aggregate(),
                    e.event_type,
                    e.aggregate_version
                )
            })
            .collect();
        assert!(others.is_empty(), "the unit also appended {others:?}");
        self
    }

    /// Asserts the unit was refused with `expected` (of an aggregate's
    /// error type, or one given to [`WorkError::reject`]) and appended
    /// nothing.
    #[track_caller]
    pub fn then_rejected<E>(&self, expected: E) -> &Self
    where
        E: std::error::Error + PartialEq + 'static,
    {
        match &self.outcome {
            Ok(value) => panic!("expected the refusal {expected:?}, the unit returned {value:?}"),
            Err(error) => match error.rejection::<E>() {
                Some(refusal) => assert_eq!(refusal, &expected, "refused for another reason"),
                None => panic!("expected the refusal {expected:?}, the unit failed: {error:?}"),
            },
        }
        assert!(
            self.appended.is_empty(),
            "a refused unit appended {} event(s)",
            self.appended.len()
        );
        self
    }

    /// What the unit returned.
    pub fn outcome(&self) -> &Result<T, WorkError> {
        &self.outcome
    }

    /// Every event the unit appended, in global order.
    pub fn appended(&self) -> &[PersistedEvent] {
        &self.appended
    }

    /// The events appended to aggregate `id` of `A`, decoded.
    #[track_caller]
    fn appended_to<A: Aggregate>(&self, id: &str) -> Vec<A::Event> {
        let (context, kind) = (A::Event::BOUNDED_CONTEXT, A::Event::AGGREGATE_TYPE);
        self.checked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((context.to_owned(), kind.to_owned(), id.to_owned()));
        self.appended
            .iter()
            .filter(|e| {
                e.bounded_context == context && e.aggregate_type == kind && e.aggregate_id == id
            })
            .map(|e| {
                A::Event::decode_json(&e.event_type, e.event_version, e.payload.get())
                    .unwrap_or_else(|error| panic!("an event of {id} does not decode: {error}"))
            })
            .collect()
    }
}
