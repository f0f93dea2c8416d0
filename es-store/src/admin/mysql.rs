//! The admin calls on MySQL / MariaDB, and their SQL. Names are binary
//! strings there: they are read as text.

use sqlx::mysql::MySqlConnection;

use super::{FoundStore, StoreAdmin, shared_admin};
use crate::{Connection, MySqlStore, Result};

mod sql {
    pub(super) fn count(table: &str) -> String {
        format!("SELECT count(*) FROM {table}")
    }

    pub(super) fn applied(table: &str) -> String {
        format!("SELECT version, success, checksum FROM {table} ORDER BY version")
    }

    pub(super) fn checkpoint_rows(table: &str) -> String {
        format!(
            "SELECT CONVERT(projection_name USING utf8mb4), position FROM {table} \
             ORDER BY projection_name"
        )
    }

    pub(super) fn failure_counts(table: &str) -> String {
        format!(
            "SELECT CONVERT(projection_name USING utf8mb4), count(*) FROM {table} \
             GROUP BY projection_name ORDER BY projection_name"
        )
    }

    pub(super) fn delete_failure(table: &str) -> String {
        format!("DELETE FROM {table} WHERE projection_name = ? AND global_position = ?")
    }

    pub(super) fn delete_failures(table: &str) -> String {
        format!("DELETE FROM {table} WHERE projection_name = ?")
    }

    pub(super) const FIND_STORES: &str = "SELECT CONVERT(table_schema USING utf8mb4), CONVERT(table_name USING utf8mb4), \
                CAST(table_schema <=> DATABASE() AS SIGNED) \
         FROM information_schema.tables \
         WHERE table_name LIKE '\\_es\\_migrations%' \
         ORDER BY 1, 2";
}

impl StoreAdmin for MySqlStore {
    shared_admin!(sql);

    async fn find_stores(&self, conn: &mut MySqlConnection) -> Result<Vec<FoundStore>> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(sql::FIND_STORES)
            .fetch_all(&mut *conn)
            .await?;
        Ok(FoundStore::from_rows(
            rows.into_iter()
                .map(|(schema, table, current)| (schema, table, current != 0))
                .collect(),
        ))
    }
}
