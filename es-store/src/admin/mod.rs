//! What operators' tools read and repair in a store, as typed calls:
//! counts, applied migrations, checkpoint rows, the failure log's counts
//! and deletions, the stores a database holds, and the live listeners.
//! The SQL lives here, one file per backend; a tool (the `es` CLI) holds
//! none.

use std::future::Future;

use crate::{Backend, Connection, Result};

#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

/// A migration the store's migrations table records as applied.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AppliedMigration {
    /// Its version.
    pub version: i64,
    /// Whether it ran to the end (a failed run leaves it dirty).
    pub success: bool,
    /// The checksum of the SQL it ran.
    pub checksum: Vec<u8>,
}

/// A projection checkpoint as stored: its name (with a partition's and a
/// version's suffix, where it has them) and position.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckpointRow {
    /// The checkpoint's name.
    pub name: String,
    /// The last position handled.
    pub position: i64,
}

/// How many events the failure log holds for one projection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FailureCount {
    /// The projection's (checkpoint's) name.
    pub projection_name: String,
    /// How many events it skipped.
    pub count: i64,
}

/// A store found in a database, by its migrations table.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FoundStore {
    /// Its schema (PostgreSQL) or database (MySQL); empty on SQLite.
    pub schema: String,
    /// Its migrations table: `_es_migrations`, or
    /// `_es_migrations_<events table>`.
    pub table: String,
    /// Whether `schema` is the connection's current one (where a store
    /// goes when no schema is named).
    pub current: bool,
}

impl FoundStore {
    /// Its events table, when it is not the default one.
    ///
    /// ```
    /// # use es_store::admin::FoundStore;
    /// # fn demo(found: &FoundStore) {
    /// let events = found.events_table().unwrap_or("events");
    /// # }
    /// ```
    pub fn events_table(&self) -> Option<&str> {
        self.table
            .strip_prefix("_es_migrations_")
            .filter(|events| !events.is_empty())
    }

    /// Keeps the rows naming a migrations table.
    pub(crate) fn from_rows(rows: Vec<(String, String, bool)>) -> Vec<FoundStore> {
        rows.into_iter()
            .filter(|(_, table, _)| {
                table == "_es_migrations" || table.starts_with("_es_migrations_")
            })
            .map(|(schema, table, current)| FoundStore {
                schema,
                table,
                current,
            })
            .collect()
    }
}

/// A connection registered as listening to the store's notifications
/// (PostgreSQL).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ListenerInfo {
    /// The listening session's backend pid.
    pub pid: i32,
    /// Seconds since it last refreshed its registration.
    pub seen_secs_ago: f64,
    /// Its application name, if it set one.
    pub application: Option<String>,
    /// Its client address, for a TCP connection.
    pub client: Option<String>,
    /// Whether the session is still connected.
    pub alive: bool,
}

/// An operator's view of a store, for tools such as the `es` CLI: what
/// they show and repair, without writing SQL against the store's tables.
/// Every backend implements it.
///
/// ```no_run
/// use es_store::{PostgresStore, admin::StoreAdmin};
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), es_store::Error> {
/// let store = PostgresStore::new();
/// let mut conn = pool.acquire().await?;
/// println!("{} events", store.count_events(&mut *conn).await?);
/// for row in store.checkpoint_rows(&mut *conn).await? {
///     println!("{} at {}", row.name, row.position);
/// }
/// # Ok(()) }
/// ```
pub trait StoreAdmin: Backend {
    /// How many events the store holds.
    fn count_events(&self, conn: &mut Connection<Self>)
    -> impl Future<Output = Result<i64>> + Send;

    /// How many aggregates (head rows) the store holds.
    fn count_aggregates(
        &self,
        conn: &mut Connection<Self>,
    ) -> impl Future<Output = Result<i64>> + Send;

    /// The migrations recorded as applied, by version. A store never
    /// migrated has no migrations table: the database's "no such table"
    /// error.
    fn applied_migrations(
        &self,
        conn: &mut Connection<Self>,
    ) -> impl Future<Output = Result<Vec<AppliedMigration>>> + Send;

    /// Every checkpoint row, by name.
    fn checkpoint_rows(
        &self,
        conn: &mut Connection<Self>,
    ) -> impl Future<Output = Result<Vec<CheckpointRow>>> + Send;

    /// The projections with skipped events and how many each, by name.
    fn failure_counts(
        &self,
        conn: &mut Connection<Self>,
    ) -> impl Future<Output = Result<Vec<FailureCount>>> + Send;

    /// Deletes a projection's failure records: the one at `position`, or
    /// all of them; returns how many went.
    fn delete_failures(
        &self,
        conn: &mut Connection<Self>,
        projection_name: &str,
        position: Option<i64>,
    ) -> impl Future<Output = Result<u64>> + Send;

    /// Every store in the database the connection is on (in any schema,
    /// with any events table), found by its migrations table, by schema
    /// and table.
    fn find_stores(
        &self,
        conn: &mut Connection<Self>,
    ) -> impl Future<Output = Result<Vec<FoundStore>>> + Send;

    /// The connections registered as listening to the store's
    /// notifications, by pid, where the backend has them (PostgreSQL);
    /// `None` elsewhere.
    fn listeners(
        &self,
        conn: &mut Connection<Self>,
    ) -> impl Future<Output = Result<Option<Vec<ListenerInfo>>>> + Send {
        let _ = conn;
        async { Ok(None) }
    }
}

/// The calls every backend writes the same way, over its SQL texts:
/// `$sql` is the backend's module of texts (`count`, `applied`,
/// `checkpoint_rows`, `failure_counts`, `delete_failure`,
/// `delete_failures`, `FIND_STORES`).
macro_rules! shared_admin {
    ($sql:ident) => {
        async fn count_events(&self, conn: &mut Connection<Self>) -> Result<i64> {
            let sql = $sql::count(&self.events_table());
            Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(&mut *conn)
                .await?)
        }

        async fn count_aggregates(&self, conn: &mut Connection<Self>) -> Result<i64> {
            let sql = $sql::count(&self.heads_table());
            Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(&mut *conn)
                .await?)
        }

        async fn applied_migrations(
            &self,
            conn: &mut Connection<Self>,
        ) -> Result<Vec<crate::admin::AppliedMigration>> {
            let sql = $sql::applied(&self.migrator().table_name);
            let rows: Vec<(i64, bool, Vec<u8>)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .fetch_all(&mut *conn)
                .await?;
            Ok(rows
                .into_iter()
                .map(
                    |(version, success, checksum)| crate::admin::AppliedMigration {
                        version,
                        success,
                        checksum,
                    },
                )
                .collect())
        }

        async fn checkpoint_rows(
            &self,
            conn: &mut Connection<Self>,
        ) -> Result<Vec<crate::admin::CheckpointRow>> {
            let sql = $sql::checkpoint_rows(&self.checkpoints_table());
            let rows: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .fetch_all(&mut *conn)
                .await?;
            Ok(rows
                .into_iter()
                .map(|(name, position)| crate::admin::CheckpointRow { name, position })
                .collect())
        }

        async fn failure_counts(
            &self,
            conn: &mut Connection<Self>,
        ) -> Result<Vec<crate::admin::FailureCount>> {
            let sql = $sql::failure_counts(&self.failures_table());
            let rows: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .fetch_all(&mut *conn)
                .await?;
            Ok(rows
                .into_iter()
                .map(|(projection_name, count)| crate::admin::FailureCount {
                    projection_name,
                    count,
                })
                .collect())
        }

        async fn delete_failures(
            &self,
            conn: &mut Connection<Self>,
            projection_name: &str,
            position: Option<i64>,
        ) -> Result<u64> {
            let table = self.failures_table();
            let done = match position {
                Some(position) => {
                    sqlx::query(sqlx::AssertSqlSafe($sql::delete_failure(&table)))
                        .bind(projection_name)
                        .bind(position)
                        .execute(&mut *conn)
                        .await?
                }
                None => {
                    sqlx::query(sqlx::AssertSqlSafe($sql::delete_failures(&table)))
                        .bind(projection_name)
                        .execute(&mut *conn)
                        .await?
                }
            };
            Ok(done.rows_affected())
        }
    };
}
use shared_admin;
