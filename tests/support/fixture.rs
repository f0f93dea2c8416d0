//! What the conformance suite needs from a backend.

use std::future::Future;

use es::store::Backend;

/// One backend under test, in a fresh database or schema of its own.
pub trait Fixture: Sized + Send + Sync + 'static {
    /// The sqlx database.
    type Db: sqlx::Database;
    /// The store.
    type Store: es::store::Store + Backend<Database = Self::Db>;

    /// Whether the backend lets one transaction write at a time (SQLite):
    /// a checkpoint claim then waits for the holder instead of being told
    /// `None` at once.
    const SINGLE_WRITER: bool = false;

    /// Whether DDL (`CREATE VIEW`, `DROP TABLE`) runs inside a transaction
    /// (MySQL commits the transaction first).
    const TRANSACTIONAL_DDL: bool = true;

    fn create() -> impl Future<Output = Self> + Send;
    fn pool(&self) -> &sqlx::Pool<Self::Db>;
    fn store(&self) -> &Self::Store;
    /// Rows in the events table.
    fn event_rows(&self) -> impl Future<Output = i64> + Send;
    /// Rows in the heads table.
    fn head_rows(&self) -> impl Future<Output = i64> + Send;
    /// Removes the database or schema.
    fn finish(self) -> impl Future<Output = ()> + Send;
    /// Another pool on the same database, as a second worker would have.
    fn another_pool(&self) -> impl Future<Output = sqlx::Pool<Self::Db>> + Send;
    /// A second store in the same schema or file, on the tables
    /// `other_events`, `other_heads`, ..., migrated twice; the fixture's
    /// own store is migrated again after it.
    fn second_store(&self) -> impl Future<Output = Self::Store> + Send;
    /// Rows in the table `name` of the fixture's schema or file.
    fn rows_in(&self, name: &str) -> impl Future<Output = i64> + Send;

    /// Creates the test read model: table `handled` with one row per
    /// handled event, in handling order.
    fn create_read_model(&self) -> impl Future<Output = ()> + Send;
    /// Inserts a row into `handled` (a second row for the same event
    /// fails: the event id is unique).
    fn record<'c>(
        conn: &'c mut <Self::Db as sqlx::Database>::Connection,
        row: &'c Handled,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'c;
    /// Empties `handled`.
    fn clear_read_model(
        conn: &mut <Self::Db as sqlx::Database>::Connection,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
    /// The rows of `handled`, in handling order.
    fn handled(&self) -> impl Future<Output = Vec<Handled>> + Send;

    /// Runs `sql` (without parameters) on `conn`: portable DDL and
    /// statements with literal values, for read models of the tests.
    fn execute_on<'c>(
        conn: &'c mut <Self::Db as sqlx::Database>::Connection,
        sql: String,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'c;
    /// The rows of two integers `sql` (without parameters) selects, on
    /// `conn`.
    fn pairs_on<'c>(
        conn: &'c mut <Self::Db as sqlx::Database>::Connection,
        sql: String,
    ) -> impl Future<Output = Result<Vec<(i64, i64)>, sqlx::Error>> + Send + 'c;
}

/// The second store's table names (see [`Fixture::second_store`]), on
/// any backend's builder.
pub fn other_tables<D: es::store::Dialect>(
    builder: es::store::StoreBuilder<D>,
) -> es::store::StoreBuilder<D> {
    builder
        .events_table("other_events")
        .heads_table("other_heads")
        .checkpoints_table("other_checkpoints")
        .snapshots_table("other_snapshots")
        .failures_table("other_failures")
        .documents_table("other_documents")
}

/// The read model's rows in handling order, as [`Handled`]s.
pub const HANDLED_ROWS: &str = "SELECT event_id, global_position, aggregate_id, \
    aggregate_version, worker FROM handled ORDER BY seq";

/// Rows selected with [`HANDLED_ROWS`], the event id decoded by the caller.
pub fn handled_rows(rows: Vec<(uuid::Uuid, i64, String, i64, String)>) -> Vec<Handled> {
    rows.into_iter()
        .map(
            |(event_id, global_position, aggregate_id, aggregate_version, worker)| Handled {
                event_id,
                global_position,
                aggregate_id,
                aggregate_version,
                worker,
            },
        )
        .collect()
}

/// One row of the test read model.
#[derive(Debug, Clone, PartialEq)]
pub struct Handled {
    pub event_id: uuid::Uuid,
    pub global_position: i64,
    pub aggregate_id: String,
    pub aggregate_version: i64,
    pub worker: String,
}

impl Fixture for super::TestDb {
    type Db = sqlx::Postgres;
    type Store = es::store::PostgresStore;

    async fn create() -> Self {
        // 16 concurrent appenders plus a reader.
        Self::with_pool_size(20).await
    }
    fn pool(&self) -> &sqlx::PgPool {
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
    async fn another_pool(&self) -> sqlx::PgPool {
        super::TestDb::another_pool(self, 8).await
    }
    async fn second_store(&self) -> Self::Store {
        let other = other_tables(es::store::PostgresStore::builder().schema(&self.schema))
            .build()
            .unwrap();
        other.migrate(&self.pool).await.unwrap();
        other.migrate(&self.pool).await.unwrap();
        self.store.migrate(&self.pool).await.unwrap();
        other
    }
    async fn rows_in(&self, name: &str) -> i64 {
        self.count(&format!("SELECT count(*) FROM {{schema}}.\"{name}\""))
            .await
    }
    async fn create_read_model(&self) {
        self.execute(
            "CREATE TABLE handled (seq bigserial PRIMARY KEY, event_id uuid NOT NULL UNIQUE, \
             global_position bigint NOT NULL, aggregate_id text NOT NULL, \
             aggregate_version bigint NOT NULL, worker text NOT NULL)",
        )
        .await;
    }
    async fn record<'c>(
        conn: &'c mut sqlx::PgConnection,
        row: &'c Handled,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO handled (event_id, global_position, aggregate_id, aggregate_version, worker) \
             VALUES ($1, $2, $3, $4, $5)",
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
    async fn clear_read_model(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
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
    async fn execute_on(conn: &mut sqlx::PgConnection, sql: String) -> Result<(), sqlx::Error> {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(conn)
            .await
            .map(drop)
    }
    async fn pairs_on(
        conn: &mut sqlx::PgConnection,
        sql: String,
    ) -> Result<Vec<(i64, i64)>, sqlx::Error> {
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_all(conn)
            .await
    }
}
