//! Shared test fixtures: a fresh PostgreSQL schema per test, and the
//! servers the tests run on ([`server`]).
#![allow(dead_code, unreachable_pub)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use es::store::PostgresStore;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

pub mod fixture;
#[cfg(feature = "mysql")]
pub mod mysql;
pub mod proxy;
pub mod round_trips;
pub mod server;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub use fixture::Fixture;

/// The PostgreSQL server tests use: `DATABASE_URL`, else the local default
/// if it answers, else a throwaway server started for this test binary
/// (see [`server`]).
pub fn database_url() -> String {
    server::postgres_url()
}

/// The MariaDB/MySQL server tests use: `MYSQL_URL`, else the local default
/// (mysql://root@127.0.0.1:3306/test) if it answers, else a throwaway
/// server started for this test binary.
pub fn mysql_url() -> String {
    server::mysql_url()
}

/// A schema of its own for one test, with the store migrated into it.
pub struct TestDb {
    pub pool: PgPool,
    pub store: PostgresStore,
    pub schema: String,
}

fn unreachable(url: &str, error: &dyn std::fmt::Display) -> ! {
    panic!(
        "\n\nThe tests need PostgreSQL and could not reach it at {url}: {error}\n\
         Start a local server (on Debian: `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`,\n\
         or `.ci/run`, which starts it), or point DATABASE_URL at one, e.g.\n\
         DATABASE_URL=postgres://user:password@host:5432/database cargo test --workspace\n\
         Each test creates and drops its own schema there. Without DATABASE_URL the tests use\n\
         postgres://postgres@127.0.0.1:5432/test if it answers, else start a throwaway server from\n\
         the installed PostgreSQL programs (ES_TEST_NO_LOCAL_SERVER=1 skips the local one).\n"
    )
}

/// Connect options for the test server. sqlx logs every statement at
/// DEBUG by default, which is what the round-trip counter listens to.
pub fn connect_options() -> PgConnectOptions {
    let url = database_url();
    url.parse().unwrap_or_else(|e| unreachable(&url, &e))
}

/// Connections whose search path is the test schema, so that tests' own
/// tables (read models) need no qualification.
fn schema_options(schema: &str) -> PgConnectOptions {
    connect_options().options([("search_path", schema)])
}

impl TestDb {
    /// A fresh schema with a pool of up to `max_connections`.
    pub async fn with_pool_size(max_connections: u32) -> TestDb {
        let url = database_url();
        let mut admin = PgConnection::connect_with(&connect_options())
            .await
            .unwrap_or_else(|e| unreachable(&url, &e));
        purge_stale_schemas(&mut admin).await;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let schema = format!("es_test_{now}_{}", uuid::Uuid::new_v4().simple());
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(schema_options(&schema))
            .await
            .unwrap_or_else(|e| unreachable(&url, &e));
        let store = PostgresStore::builder()
            .schema(&schema)
            .build()
            .expect("valid schema name");
        store.migrate(&pool).await.expect("migrations apply");
        admin.close().await.ok();
        TestDb {
            pool,
            store,
            schema,
        }
    }

    pub async fn new() -> TestDb {
        Self::with_pool_size(8).await
    }

    /// Another pool on the same schema, as a second worker process would
    /// have.
    pub async fn another_pool(&self, max_connections: u32) -> PgPool {
        PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(schema_options(&self.schema))
            .await
            .expect("connect")
    }

    /// Drops the schema. Tests call it at their end; a failed test leaves
    /// its schema for inspection, and it is purged an hour later.
    ///
    /// A session of the test's own that still holds a lock in the schema
    /// (a batch cancelled at shutdown leaves its transaction idle until
    /// the pool next uses the connection and sends its rollback) would
    /// keep `DROP SCHEMA` waiting: such sessions are ended first, and the
    /// drop waits for a lock a bounded time, then tries again.
    pub async fn drop(self) {
        let mut last = None;
        for _ in 0..10 {
            let _ = sqlx::query(
                "SELECT pg_terminate_backend(l.pid) FROM pg_locks l \
                 JOIN pg_class c ON c.oid = l.relation \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND l.pid <> pg_backend_pid()",
            )
            .bind(&self.schema)
            .execute(&self.pool)
            .await;
            let dropped = async {
                let mut tx = self.pool.begin().await?;
                sqlx::query("SET LOCAL lock_timeout = '5s'")
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP SCHEMA \"{}\" CASCADE",
                    self.schema
                )))
                .execute(&mut *tx)
                .await?;
                tx.commit().await
            };
            match dropped.await {
                Ok(()) => {
                    self.pool.close().await;
                    return;
                }
                Err(error) => last = Some(error),
            }
        }
        panic!("drop test schema: {last:?}");
    }

    /// A count from raw SQL, with `{events}`, `{heads}`, `{checkpoints}`
    /// replaced by the qualified table names.
    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(self.sql(sql)))
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    pub fn sql(&self, sql: &str) -> String {
        sql.replace("{schema}", &format!("\"{}\"", self.schema))
            .replace("{events}", &self.store.events_table())
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

async fn purge_stale_schemas(admin: &mut PgConnection) {
    let cutoff = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 3600;
    let stale: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname ~ '^es_test_[0-9]+_' \
         AND split_part(nspname, '_', 3)::bigint < $1",
    )
    .bind(cutoff as i64)
    .fetch_all(&mut *admin)
    .await
    .unwrap_or_default();
    for schema in stale {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
        )))
        .execute(&mut *admin)
        .await;
    }
}
