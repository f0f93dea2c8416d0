//! The admin calls on SQLite, and their SQL.

use sqlx::sqlite::SqliteConnection;

use super::{FoundStore, StoreAdmin, shared_admin};
use crate::{Connection, Result, SqliteStore};

mod sql {
    pub(super) fn count(table: &str) -> String {
        format!("SELECT count(*) FROM {table}")
    }

    pub(super) fn applied(table: &str) -> String {
        format!("SELECT version, success, checksum FROM {table} ORDER BY version")
    }

    pub(super) fn checkpoint_rows(table: &str) -> String {
        format!("SELECT projection_name, position FROM {table} ORDER BY projection_name")
    }

    pub(super) fn failure_counts(table: &str) -> String {
        format!(
            "SELECT projection_name, count(*) FROM {table} GROUP BY projection_name \
             ORDER BY projection_name"
        )
    }

    pub(super) fn delete_failure(table: &str) -> String {
        format!("DELETE FROM {table} WHERE projection_name = ?1 AND global_position = ?2")
    }

    pub(super) fn delete_failures(table: &str) -> String {
        format!("DELETE FROM {table} WHERE projection_name = ?1")
    }

    pub(super) const FIND_STORES: &str = "SELECT '', name, 1 FROM sqlite_master \
         WHERE type = 'table' AND name LIKE '\\_es\\_migrations%' ESCAPE '\\' \
         ORDER BY 2";
}

impl StoreAdmin for SqliteStore {
    shared_admin!(sql);

    async fn find_stores(&self, conn: &mut SqliteConnection) -> Result<Vec<FoundStore>> {
        let rows = sqlx::query_as(sql::FIND_STORES)
            .fetch_all(&mut *conn)
            .await?;
        Ok(FoundStore::from_rows(rows))
    }
}
