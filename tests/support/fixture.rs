//! What the conformance suite needs from a backend.

use std::future::Future;

use es::store::{
    AggregateStreamReader, Backend, CheckpointStore, EventReader, EventStore, ProjectionStore,
    SnapshotStore,
};

/// One backend under test, in a fresh database or schema of its own.
pub trait Fixture: Sized + Send + Sync + 'static {
    /// The sqlx database.
    type Db: sqlx::Database;
    /// The store.
    type Store: EventStore
        + AggregateStreamReader
        + EventReader
        + CheckpointStore
        + SnapshotStore
        + ProjectionStore
        + Backend<Database = Self::Db>
        + Clone;

    fn create() -> impl Future<Output = Self> + Send;
    fn pool(&self) -> &sqlx::Pool<Self::Db>;
    fn store(&self) -> &Self::Store;
    /// Rows in the events table.
    fn event_rows(&self) -> impl Future<Output = i64> + Send;
    /// Rows in the heads table.
    fn head_rows(&self) -> impl Future<Output = i64> + Send;
    /// Removes the database or schema.
    fn finish(self) -> impl Future<Output = ()> + Send;
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
}
