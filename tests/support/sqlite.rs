//! A fresh SQLite database file per test, in the system's temporary
//! directory, migrated the way users migrate.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use es::store::SqliteStore;
use sqlx::sqlite::{SqliteConnection, SqlitePool, SqlitePoolOptions};

use super::fixture::{Fixture, HANDLED_ROWS, Handled, handled_rows, other_tables};

/// A database file of its own for one test.
pub struct SqliteDb {
    pub pool: SqlitePool,
    pub store: SqliteStore,
    pub path: PathBuf,
}

const PREFIX: &str = "es_test_";

impl SqliteDb {
    /// A fresh database with a pool of up to `max_connections`.
    pub async fn with_pool_size(max_connections: u32) -> SqliteDb {
        purge_stale_files();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let path = std::env::temp_dir().join(format!(
            "{PREFIX}{now}_{}.db",
            uuid::Uuid::new_v4().simple()
        ));
        let pool = Self::connect(&path, max_connections).await;
        let store = SqliteStore::new();
        store.migrate(&pool).await.expect("migrations apply");
        SqliteDb { pool, store, path }
    }

    pub async fn new() -> SqliteDb {
        Self::with_pool_size(8).await
    }

    /// A pool on the database file at `path`, with the store's options.
    /// Opening a new file while another connection switches it to WAL can
    /// be refused at once (`database is locked`: SQLite cannot wait for
    /// that lock), so a refused open is tried again, as a process
    /// starting beside others would.
    pub async fn connect(path: &Path, max_connections: u32) -> SqlitePool {
        let mut attempts = 0;
        loop {
            let opened = SqlitePoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(SqliteStore::connect_options(path))
                .await
                .map_err(es::store::Error::from);
            match opened {
                Ok(pool) => return pool,
                Err(e) if attempts < 100 && e.is_transient() => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("cannot open {}: {e}", path.display()),
            }
        }
    }

    /// Closes the pool and removes the files. Tests call it at their end;
    /// a failed test leaves its file for inspection, and it is purged an
    /// hour later.
    pub async fn drop(self) {
        self.pool.close().await;
        remove_database(&self.path);
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

/// The database file and the WAL files next to it.
fn remove_database(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
}

/// Removes test databases older than an hour (left by failed tests).
fn purge_stale_files() {
    let cutoff = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 3600;
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else {
            continue;
        };
        let created = rest.split('_').next().and_then(|s| s.parse::<u64>().ok());
        if created.is_some_and(|t| t < cutoff) && rest.ends_with(".db") {
            remove_database(&entry.path());
        }
    }
}

impl Fixture for SqliteDb {
    type Db = sqlx::Sqlite;
    type Store = SqliteStore;
    const SINGLE_WRITER: bool = true;

    async fn create() -> Self {
        // 16 concurrent appenders plus a reader.
        Self::with_pool_size(20).await
    }
    fn pool(&self) -> &SqlitePool {
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
        let other = other_tables(SqliteStore::builder()).build().unwrap();
        other.migrate(&self.pool).await.unwrap();
        other.migrate(&self.pool).await.unwrap();
        self.store.migrate(&self.pool).await.unwrap();
        other
    }
    async fn rows_in(&self, name: &str) -> i64 {
        self.count(&format!("SELECT count(*) FROM \"{name}\""))
            .await
    }
    async fn another_pool(&self) -> SqlitePool {
        Self::connect(&self.path, 8).await
    }
    async fn create_read_model(&self) {
        self.execute(
            "CREATE TABLE handled (seq INTEGER PRIMARY KEY AUTOINCREMENT, \
             event_id TEXT NOT NULL UNIQUE, global_position INTEGER NOT NULL, \
             aggregate_id TEXT NOT NULL, aggregate_version INTEGER NOT NULL, \
             worker TEXT NOT NULL) STRICT",
        )
        .await;
    }
    async fn record<'c>(
        conn: &'c mut SqliteConnection,
        row: &'c Handled,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO handled (event_id, global_position, aggregate_id, aggregate_version, worker) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(row.event_id.hyphenated())
        .bind(row.global_position)
        .bind(&row.aggregate_id)
        .bind(row.aggregate_version)
        .bind(&row.worker)
        .execute(conn)
        .await
        .map(drop)
    }
    async fn clear_read_model(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM handled")
            .execute(conn)
            .await
            .map(drop)
    }
    async fn handled(&self) -> Vec<Handled> {
        let rows: Vec<(uuid::fmt::Hyphenated, i64, String, i64, String)> =
            sqlx::query_as(HANDLED_ROWS)
                .fetch_all(&self.pool)
                .await
                .unwrap();
        handled_rows(
            rows.into_iter()
                .map(|(id, p, a, v, w)| (id.into_uuid(), p, a, v, w))
                .collect(),
        )
    }
    async fn execute_on(conn: &mut SqliteConnection, sql: String) -> Result<(), sqlx::Error> {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(conn)
            .await
            .map(drop)
    }
    async fn pairs_on(
        conn: &mut SqliteConnection,
        sql: String,
    ) -> Result<Vec<(i64, i64)>, sqlx::Error> {
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_all(conn)
            .await
    }
}
