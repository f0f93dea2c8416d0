//! The admin calls on PostgreSQL, and their SQL.

use sqlx::postgres::PgConnection;

use super::{FoundStore, ListenerInfo, StoreAdmin, shared_admin};
use crate::postgres::sql::LISTENER_TTL_SECONDS;
use crate::{Connection, PostgresStore, Result};

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
        format!("DELETE FROM {table} WHERE projection_name = $1 AND global_position = $2")
    }

    pub(super) fn delete_failures(table: &str) -> String {
        format!("DELETE FROM {table} WHERE projection_name = $1")
    }

    pub(super) const FIND_STORES: &str = "SELECT n.nspname::text, c.relname::text, n.nspname = current_schema() \
         FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p') AND c.relname LIKE '\\_es\\_migrations%' \
         ORDER BY 1, 2";

    pub(super) fn listeners(table: &str, ttl_seconds: u32) -> String {
        format!(
            "SELECT l.pid, extract(epoch FROM now() - l.seen)::float8, \
                    nullif(a.application_name, ''), host(a.client_addr), a.pid IS NOT NULL \
             FROM {table} l \
             LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid \
             WHERE l.channel = $1 \
               AND l.seen > now() - interval '{ttl_seconds} seconds' \
             ORDER BY l.pid"
        )
    }
}

impl StoreAdmin for PostgresStore {
    shared_admin!(sql);

    async fn find_stores(&self, conn: &mut PgConnection) -> Result<Vec<FoundStore>> {
        let rows = sqlx::query_as(sql::FIND_STORES)
            .fetch_all(&mut *conn)
            .await?;
        Ok(FoundStore::from_rows(rows))
    }

    async fn listeners(&self, conn: &mut Connection<Self>) -> Result<Option<Vec<ListenerInfo>>> {
        let table = self.names().derived_qualified(crate::names::LISTENERS);
        type Row = (i32, f64, Option<String>, Option<String>, bool);
        let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql::listeners(
            &table,
            LISTENER_TTL_SECONDS,
        )))
        .bind(self.notification_channel())
        .fetch_all(&mut *conn)
        .await?;
        Ok(Some(
            rows.into_iter()
                .map(
                    |(pid, seen_secs_ago, application, client, alive)| ListenerInfo {
                        pid,
                        seen_secs_ago,
                        application,
                        client,
                        alive,
                    },
                )
                .collect(),
        ))
    }
}
