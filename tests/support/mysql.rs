//! A fresh MySQL/MariaDB database per test, on the server of
//! [`super::mysql_url`], migrated the way users migrate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use es::store::MySqlStore;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlPool, MySqlPoolOptions};
use sqlx::{Connection, MySql};

use super::fixture::{Fixture, HANDLED_ROWS, Handled, handled_rows, other_tables};
use super::server::{self, Backend};

/// A database of its own for one test.
pub struct MySqlDb {
    pub pool: MySqlPool,
    pub store: MySqlStore,
    pub database: String,
}

const PREFIX: &str = "es_test_";

/// Connect options for the test server's `database` (`None`: the URL's).
pub fn connect_options(database: Option<&str>) -> MySqlConnectOptions {
    let url = super::mysql_url();
    let options: MySqlConnectOptions = url
        .parse()
        .unwrap_or_else(|e| server::unreachable(Backend::MySql, &url, &e));
    match database {
        Some(database) => options.database(database),
        None => options,
    }
}

impl MySqlDb {
    /// A fresh database with a pool of up to `max_connections`.
    pub async fn with_pool_size(max_connections: u32) -> MySqlDb {
        let url = super::mysql_url();
        let mut admin = MySqlConnection::connect_with(&connect_options(None))
            .await
            .unwrap_or_else(|e| server::unreachable(Backend::MySql, &url, &e));
        purge_stale_databases(&mut admin).await;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let database = format!("{PREFIX}{now}_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE `{database}`")))
            .execute(&mut admin)
            .await
            .expect("create the test database");
        admin.close().await.ok();
        let pool = Self::connect(&database, max_connections).await;
        let store = MySqlStore::new();
        store.migrate(&pool).await.expect("migrations apply");
        MySqlDb {
            pool,
            store,
            database,
        }
    }

    pub async fn new() -> MySqlDb {
        Self::with_pool_size(8).await
    }

    /// A pool on `database`.
    pub async fn connect(database: &str, max_connections: u32) -> MySqlPool {
        MySqlPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(connect_options(Some(database)))
            .await
            .unwrap_or_else(|e| server::unreachable(Backend::MySql, &super::mysql_url(), &e))
    }

    /// Drops the database. Tests call it at their end; a failed test
    /// leaves its database for inspection, and it is purged an hour later.
    pub async fn drop(self) {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE `{}`",
            self.database
        )))
        .execute(&self.pool)
        .await
        .expect("drop the test database");
        self.pool.close().await;
    }

    /// A count from raw SQL, with `{events}`, `{heads}`, `{checkpoints}`
    /// replaced by the table names.
    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(self.sql(sql)))
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    pub fn sql(&self, sql: &str) -> String {
        sql.replace("{events}", &self.store.events_table())
            .replace("{heads}", &self.store.heads_table())
            .replace("{checkpoints}", &self.store.checkpoints_table())
    }

    pub async fn execute(&self, sql: &str) {
        sqlx::query(sqlx::AssertSqlSafe(self.sql(sql)))
            .execute(&self.pool)
            .await
            .unwrap();
    }
}

/// Drops test databases older than an hour (left by failed tests).
async fn purge_stale_databases(admin: &mut MySqlConnection) {
    let cutoff = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 3600;
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT CONVERT(schema_name USING utf8mb4) FROM information_schema.schemata \
         WHERE schema_name LIKE 'es\\_test\\_%'",
    )
    .fetch_all(&mut *admin)
    .await
    .unwrap_or_default();
    for name in names {
        let created = name[PREFIX.len()..]
            .split('_')
            .next()
            .and_then(|s| s.parse::<u64>().ok());
        if created.is_some_and(|t| t < cutoff) {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS `{name}`"
            )))
            .execute(&mut *admin)
            .await;
        }
    }
}

impl Fixture for MySqlDb {
    type Db = MySql;
    type Store = MySqlStore;
    const TRANSACTIONAL_DDL: bool = false;

    async fn create() -> Self {
        // 16 concurrent appenders plus a reader.
        Self::with_pool_size(20).await
    }
    fn pool(&self) -> &MySqlPool {
        &self.pool
    }
    fn store(&self) -> &Self::Store {
        &self.store
    }
    async fn event_rows(&self) -> i64 {
        self.count("SELECT count(*) FROM {events}").await
    }
    async fn head_rows(&self) -> i64 {
        self.count("SELECT count(*) FROM {heads}").await
    }
    async fn finish(self) {
        self.drop().await
    }
    async fn second_store(&self) -> Self::Store {
        let other = other_tables(MySqlStore::builder()).build().unwrap();
        other.migrate(&self.pool).await.unwrap();
        other.migrate(&self.pool).await.unwrap();
        self.store.migrate(&self.pool).await.unwrap();
        other
    }
    async fn rows_in(&self, name: &str) -> i64 {
        self.count(&format!("SELECT count(*) FROM `{name}`")).await
    }
    async fn another_pool(&self) -> MySqlPool {
        Self::connect(&self.database, 8).await
    }
    async fn create_read_model(&self) {
        self.execute(
            "CREATE TABLE handled (seq BIGINT AUTO_INCREMENT PRIMARY KEY, \
             event_id BINARY(16) NOT NULL UNIQUE, global_position BIGINT NOT NULL, \
             aggregate_id VARCHAR(500) NOT NULL, aggregate_version BIGINT NOT NULL, \
             worker VARCHAR(100) NOT NULL) ENGINE = InnoDB",
        )
        .await;
    }
    async fn record<'c>(
        conn: &'c mut MySqlConnection,
        row: &'c Handled,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO handled (event_id, global_position, aggregate_id, aggregate_version, worker) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(row.event_id)
        .bind(row.global_position)
        .bind(&row.aggregate_id)
        .bind(row.aggregate_version)
        .bind(&row.worker)
        .execute(conn)
        .await
        .map(drop)
    }
    async fn clear_read_model(conn: &mut MySqlConnection) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM handled")
            .execute(conn)
            .await
            .map(drop)
    }
    async fn handled(&self) -> Vec<Handled> {
        let rows: Vec<(uuid::Uuid, i64, String, i64, String)> = sqlx::query_as(HANDLED_ROWS)
            .fetch_all(&self.pool)
            .await
            .unwrap();
        handled_rows(rows)
    }
    async fn execute_on(conn: &mut MySqlConnection, sql: String) -> Result<(), sqlx::Error> {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(conn)
            .await
            .map(drop)
    }
    async fn pairs_on(
        conn: &mut MySqlConnection,
        sql: String,
    ) -> Result<Vec<(i64, i64)>, sqlx::Error> {
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_all(conn)
            .await
    }
}
