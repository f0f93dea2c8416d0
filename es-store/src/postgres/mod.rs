//! The PostgreSQL backend (cargo feature `postgres`): its SQL, its append
//! statement and the gap-safe horizon of its global reads.
//!
//! # Schema
//!
//! The events, one head row per aggregate holding its current version,
//! checkpoints, snapshots and skipped-event records (names configurable, see
//! [`StoreBuilder`](crate::StoreBuilder)). [`SqlStore::migrate`] creates
//! them; the same SQL for the default names is in the repository's
//! `migrations/` folder for sqlx-cli users (see the README).
//!
//! # Appending
//!
//! An append is one statement, one round trip, whatever the batch size: the
//! events travel as one array per column (so the bind-parameter limit never
//! applies), and a chain of CTEs checks the expected version against the head
//! row while moving it, then inserts the batch. The head row lock serializes
//! appends to one aggregate and nothing else.
//!
#![doc = include_str!("gap_safety.md")]

mod append;
mod codec;
pub(crate) mod sql;

use sqlx::{Acquire, AssertSqlSafe, PgConnection};

use crate::names::Rules;
use crate::store::sealed;
use crate::{Dialect, Error, Result, SqlStore, StoreBuilder};

/// The PostgreSQL dialect (cargo feature `postgres`).
#[derive(Debug, Clone, Copy)]
pub enum Postgres {}

#[allow(private_interfaces)]
impl sealed::Dialect for Postgres {
    const RULES: Rules = Rules {
        backend: "PostgreSQL",
        quote: '"',
        max_schema: Some(63),
    };

    // The server terminates a session idle inside a transaction for
    // longer than this one's lease, which rolls it back and frees its
    // locks (its checkpoint claim among them); the client, when it wakes,
    // finds its session gone and cannot commit.
    fn lease_sql(lease: std::time::Duration) -> Option<String> {
        Some(format!(
            "SET LOCAL idle_in_transaction_session_timeout = {}",
            lease.as_millis().clamp(1, i32::MAX as u128)
        ))
    }

    type Own = sql::Sql;

    fn statements(names: &crate::names::Names) -> (crate::core::Statements, sql::Sql) {
        sql::statements(names)
    }

    fn migrations(names: &crate::names::Names) -> Vec<(i64, &'static str, String)> {
        sql::migrations(names)
    }
}

impl Dialect for Postgres {
    type Database = sqlx::Postgres;
}

/// The PostgreSQL event store (cargo feature `postgres`). Cheap to clone;
/// holds no connection.
///
/// Appends are one statement each; global reads are gap-safe through an
/// advisory-lock horizon (see the `postgres` notes in the crate docs).
///
/// ```
/// use es_store::PostgresStore;
///
/// let store = PostgresStore::builder().schema("billing").events_table("billing_events").build()?;
/// assert_eq!(store.events_table(), r#""billing"."billing_events""#);
/// # Ok::<(), es_store::Error>(())
/// ```
pub type PostgresStore = SqlStore<Postgres>;

/// Sets the schema and table names of a [`PostgresStore`].
///
/// ```
/// let store = es_store::PostgresStoreBuilder::default().schema("es").build()?;
/// assert_eq!(store.schema(), Some("es"));
/// # Ok::<(), es_store::Error>(())
/// ```
pub type PostgresStoreBuilder = StoreBuilder<Postgres>;

impl SqlStore<Postgres> {
    /// Creates or upgrades the store's tables (and its schema, if one is
    /// configured). Safe to call on every start and from several processes
    /// at once.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1/test").await?;
    /// let store = es_store::PostgresStore::new();
    /// store.migrate(&pool).await?;
    /// # Ok(()) }
    /// ```
    pub async fn migrate<'a, A>(&self, conn: A) -> Result<()>
    where
        A: Acquire<'a, Database = sqlx::Postgres>,
    {
        self.migrator().run(conn).await.map_err(Error::Migration)
    }

    /// The channel appends notify (see
    /// [`StoreBuilder::notify_on_append`]): `LISTEN` to it to hear of new
    /// events. The same for every process using the same events table.
    ///
    /// ```
    /// let store = es_store::PostgresStore::new();
    /// assert!(store.notification_channel().starts_with("es_appended_"));
    /// ```
    pub fn notification_channel(&self) -> String {
        self.names().channel()
    }

    /// Records the connection `conn` as listening to
    /// [`notification_channel`](Self::notification_channel), for
    /// 30 seconds: appends notify only while someone listens. A listener
    /// calls it after `LISTEN` and then at least every 10 seconds (the
    /// projection `Notifier` does).
    ///
    /// ```no_run
    /// # async fn demo(mut conn: sqlx::PgConnection) -> Result<(), es_store::Error> {
    /// let store = es_store::PostgresStore::new();
    /// sqlx::query(sqlx::AssertSqlSafe(format!("LISTEN \"{}\"", store.notification_channel())))
    ///     .execute(&mut conn)
    ///     .await?;
    /// store.register_listener(&mut conn).await?;
    /// # Ok(()) }
    /// ```
    pub async fn register_listener(&self, conn: &mut PgConnection) -> Result<()> {
        sqlx::query(AssertSqlSafe(self.own().register_listener.clone()))
            .bind(self.notification_channel())
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// Removes the registration [`register_listener`](Self::register_listener)
    /// made for the connection `conn` (appends stop notifying once no
    /// registration is live).
    pub async fn unregister_listener(&self, conn: &mut PgConnection) -> Result<()> {
        let table = self.names().derived_qualified(crate::names::LISTENERS);
        sqlx::query(AssertSqlSafe(sql::unregister_listener(&table)))
            .bind(self.notification_channel())
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// The highest position below which no event can still commit: events
    /// up to it that are not visible now never will be.
    ///
    /// ```no_run
    /// # async fn demo(mut conn: sqlx::PgConnection) -> Result<(), es_store::Error> {
    /// let store = es_store::PostgresStore::new();
    /// let safe = store.safe_position(&mut conn).await?;
    /// # Ok(()) }
    /// ```
    pub async fn safe_position(&self, conn: &mut PgConnection) -> Result<i64> {
        <Postgres as crate::core::Codec>::safe_position(self, conn).await
    }
}

crate::core::impl_store!(Postgres, PgConnection, sqlx::postgres::PgRow);

#[cfg(test)]
mod tests {
    use super::*;

    /// The files in `migrations/` (for sqlx-cli users) must be what the
    /// default store applies. `ES_BLESS=1 cargo test -p es-store` rewrites them.
    #[test]
    fn migration_files_match_the_default_store() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
        for (version, description, sql) in sql::migrations(PostgresStore::new().names()) {
            let path = dir.join(format!(
                "{version:04}_{}.sql",
                description.replace(' ', "_")
            ));
            if std::env::var_os("ES_BLESS").is_some() {
                std::fs::write(&path, &sql).unwrap();
            }
            let file = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(
                file,
                sql,
                "{} differs from what the default store renders",
                path.display()
            );
        }
    }
}
