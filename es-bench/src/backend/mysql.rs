//! MySQL / MariaDB (`--backend mysql`): `MYSQL_URL` (default
//! `mysql://root@127.0.0.1:3306/test`), a fresh database `es_bench_<random>`
//! dropped at the end.
//!
//! The store's tables have no auto-increment: global positions come from a
//! one-row counter, `<events>_position`, moved by each append in its
//! transaction, so its row lock is held until commit and positions commit
//! in order (what makes global reads gap-safe). The plain side does the
//! same gap-safe work, without the store's aggregate lock rows: it checks
//! and moves the head, then draws positions from the counter
//! (`LAST_INSERT_ID(last + n)`, read back from the statement's result),
//! then inserts the batch with a multi-row `VALUES`. Names are `VARBINARY`, ids
//! `BINARY(16)`, payloads JSON text.
//!
//! Three more plain sides ([`Variant`]) on minimal tables of their own, in
//! the same database, with the same column types, an `AUTO_INCREMENT`
//! position and no counter: checking the version with a conditional
//! `UPDATE` of the head, with an upsert of the head (`ON DUPLICATE KEY
//! UPDATE version = IF(version = ?, VALUES(version), NULL)`: the `NULL`
//! fails the `NOT NULL` column, the only way one statement can refuse a
//! stale version, since the connection counts found rows, not changed
//! ones), or with no head (the unique (aggregate, version) key).

use serde_json::value::RawValue;
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{AssertSqlSafe, Connection as _, MySqlConnection, MySqlPool, QueryBuilder, Row};

use super::{Conflict, Head, NewEvent, Opened, Target, Variant};
use es::store::{MySqlStore, PersistedEvent};

/// One plain side's statements on MySQL.
pub(crate) struct MySql {
    variant: Variant,
    read_stream: String,
    draw_positions: String,
    bump_head: String,
    create_head: String,
    upsert_head: String,
    /// Followed by a row of values per event.
    insert_events: String,
    read_page: String,
    count: String,
}

/// Names are stored as bytes, checked to be UTF-8 when written.
fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).expect("UTF-8 names")
}

impl Target for MySql {
    type Db = sqlx::MySql;
    type Store = MySqlStore;
    const NAME: &'static str = "mysql";
    const VARIANTS: &'static [Variant] = &[
        Variant::StoreTables,
        Variant::HeadLock,
        Variant::Upsert,
        Variant::NoHead,
    ];

    async fn open(_notify: bool) -> Result<Opened<Self>, String> {
        let url = std::env::var("MYSQL_URL")
            .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned());
        let unreachable =
            |e: sqlx::Error| format!("cannot reach MySQL at {url}: {e}\nstart it or set MYSQL_URL");
        let options: MySqlConnectOptions = url.parse().map_err(unreachable)?;
        let database = format!("es_bench_{}", uuid::Uuid::new_v4().simple());
        let mut admin = MySqlConnection::connect_with(&options)
            .await
            .map_err(unreachable)?;
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE `{database}`")))
            .execute(&mut admin)
            .await
            .expect("create database");
        admin.close().await.ok();
        let pool = MySqlPoolOptions::new()
            .max_connections(20)
            .connect_with(options.database(&database))
            .await
            .map_err(unreachable)?;
        let store = MySqlStore::new();
        store.migrate(&pool).await.expect("migrations");
        let version: String = sqlx::query_scalar("SELECT VERSION()")
            .fetch_one(&pool)
            .await
            .expect("version");
        Ok(Opened {
            pool,
            store,
            server: format!("MySQL {version}"),
            place: format!("database {database}"),
        })
    }

    async fn close(opened: &Opened<Self>) {
        let database = opened.place.trim_start_matches("database ");
        sqlx::query(AssertSqlSafe(format!("DROP DATABASE `{database}`")))
            .execute(&opened.pool)
            .await
            .expect("drop database");
        opened.pool.close().await;
    }

    async fn create_plain_tables(_store: &MySqlStore, pool: &MySqlPool, variant: Variant) {
        let Some((events, heads)) = minimal_tables(variant) else {
            return;
        };
        // Only what the plain code needs, in the store's column types: a
        // global position, the unique (aggregate, version) key, the event's
        // fields; a head per aggregate.
        sqlx::query(AssertSqlSafe(format!(
            "CREATE TABLE {events} (\
                 global_position BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, \
                 bounded_context VARBINARY(128) NOT NULL, \
                 aggregate_type VARBINARY(128) NOT NULL, \
                 aggregate_id VARBINARY(500) NOT NULL, aggregate_version BIGINT NOT NULL, \
                 event_id BINARY(16) NOT NULL, event_type VARBINARY(255) NOT NULL, \
                 payload LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL, \
                 UNIQUE KEY (bounded_context, aggregate_type, aggregate_id, aggregate_version)\
             ) ENGINE = InnoDB"
        )))
        .execute(pool)
        .await
        .expect("plain events table");
        if variant != Variant::NoHead {
            sqlx::query(AssertSqlSafe(format!(
                "CREATE TABLE {heads} (\
                     bounded_context VARBINARY(128) NOT NULL, \
                     aggregate_type VARBINARY(128) NOT NULL, \
                     aggregate_id VARBINARY(500) NOT NULL, version BIGINT NOT NULL, \
                     PRIMARY KEY (bounded_context, aggregate_type, aggregate_id)\
                 ) ENGINE = InnoDB"
            )))
            .execute(pool)
            .await
            .expect("plain heads table");
        }
    }

    fn plain(store: &MySqlStore, variant: Variant) -> Self {
        let store_events = store.events_table();
        let (events, heads, position_column, extra_column) = match minimal_tables(variant) {
            None => (
                store.events_table(),
                store.heads_table(),
                "global_position, ",
                ", event_version",
            ),
            Some((events, heads)) => (events, heads, "", ""),
        };
        // the counter's name is derived from the events table's
        let positions = format!("{}_position`", store_events.trim_end_matches('`'));
        Self {
            variant,
            read_stream: format!(
                "SELECT aggregate_version, event_type, payload FROM {events} \
                 WHERE bounded_context = ? AND aggregate_type = ? AND aggregate_id = ? \
                 ORDER BY aggregate_version"
            ),
            draw_positions: format!(
                "UPDATE {positions} SET last = LAST_INSERT_ID(last + ?) WHERE id = 1"
            ),
            bump_head: format!(
                "UPDATE {heads} SET version = version + ? \
                 WHERE bounded_context = ? AND aggregate_type = ? AND aggregate_id = ? \
                   AND version = ?"
            ),
            create_head: format!(
                "INSERT INTO {heads} (bounded_context, aggregate_type, aggregate_id, version) \
                 VALUES (?, ?, ?, ?)"
            ),
            // one statement for a new aggregate and an existing one: the
            // head is inserted, or moved if it is at the expected version;
            // else the NULL fails the NOT NULL column
            upsert_head: format!(
                "INSERT INTO {heads} (bounded_context, aggregate_type, aggregate_id, version) \
                 VALUES (?, ?, ?, ?) \
                 ON DUPLICATE KEY UPDATE version = IF(version = ?, VALUES(version), NULL)"
            ),
            insert_events: format!(
                "INSERT INTO {events} ({position_column}event_id, bounded_context, \
                     aggregate_type, aggregate_id, aggregate_version, event_type, \
                     payload{extra_column}) "
            ),
            read_page: format!(
                "SELECT global_position, aggregate_version, event_id, bounded_context, \
                     aggregate_type, aggregate_id, event_type, event_version, payload, metadata, \
                     created_at \
                 FROM {store_events} WHERE global_position > ? ORDER BY global_position LIMIT ?"
            ),
            count: format!("SELECT COUNT(*) FROM {store_events}"),
        }
    }

    async fn begin_write(pool: &MySqlPool) -> sqlx::Transaction<'static, sqlx::MySql> {
        pool.begin().await.expect("begin")
    }

    async fn fold_stream<F>(&self, conn: &mut MySqlConnection, id: &str, mut visit: F)
    where
        F: FnMut(i64, &str, &str) + Send,
    {
        let rows = sqlx::query(AssertSqlSafe(self.read_stream.as_str()))
            .bind("Billing")
            .bind("Account")
            .bind(id)
            .fetch_all(&mut *conn)
            .await
            .expect("read stream");
        for row in &rows {
            visit(row.get(0), text(row.get(1)), row.get(2));
        }
    }

    async fn append_in(
        &self,
        conn: &mut MySqlConnection,
        id: &str,
        version: i64,
        events: &[NewEvent<'_>],
    ) -> Result<Vec<i64>, Conflict> {
        let count = events.len() as i64;
        let moved = match self.variant.head(version) {
            None => Ok(Default::default()),
            Some(Head::Upsert) => {
                sqlx::query(AssertSqlSafe(self.upsert_head.as_str()))
                    .bind("Billing")
                    .bind("Account")
                    .bind(id)
                    .bind(version + count)
                    .bind(version)
                    .execute(&mut *conn)
                    .await
            }
            Some(Head::Create) => {
                sqlx::query(AssertSqlSafe(self.create_head.as_str()))
                    .bind("Billing")
                    .bind("Account")
                    .bind(id)
                    .bind(count)
                    .execute(&mut *conn)
                    .await
            }
            Some(Head::Bump) => {
                sqlx::query(AssertSqlSafe(self.bump_head.as_str()))
                    .bind(count)
                    .bind("Billing")
                    .bind("Account")
                    .bind(id)
                    .bind(version)
                    .execute(&mut *conn)
                    .await
            }
        };
        match moved {
            Ok(_) if self.variant == Variant::NoHead => {}
            // the upsert counts 1 for an inserted head, 2 for a moved one
            Ok(done) if self.variant == Variant::Upsert && done.rows_affected() >= 1 => {}
            Ok(done) if done.rows_affected() == 1 => {}
            Ok(_) => return Err(Conflict),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => return Err(Conflict),
            // the upsert's NULL: the head is not at the expected version
            Err(sqlx::Error::Database(e))
                if e.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                    .is_some_and(|e| e.number() == 1048) =>
            {
                return Err(Conflict);
            }
            Err(e) => panic!("head: {e}"),
        }
        let store_tables = self.variant == Variant::StoreTables;
        // Positions after the head check, as the store does, so that the
        // counter (held until commit) is held for the insert alone. The
        // minimal tables take theirs from AUTO_INCREMENT.
        let base_position = if store_tables {
            let drawn = sqlx::query(AssertSqlSafe(self.draw_positions.as_str()))
                .bind(count)
                .execute(&mut *conn)
                .await
                .expect("positions");
            Some(drawn.last_insert_id() as i64 - count)
        } else {
            None
        };
        let mut insert = QueryBuilder::<sqlx::MySql>::new(&self.insert_events);
        insert.push_values(
            events.iter().zip(1..),
            |mut row, ((event_type, payload), n)| {
                if let Some(base) = base_position {
                    row.push_bind(base + n);
                }
                row.push_bind(uuid::Uuid::now_v7())
                    .push_bind("Billing")
                    .push_bind("Account")
                    .push_bind(id)
                    .push_bind(version + n)
                    .push_bind(*event_type)
                    .push_bind(payload.as_str());
                if store_tables {
                    row.push_bind(1);
                }
            },
        );
        let inserted = match insert.build().execute(&mut *conn).await {
            Ok(done) => done,
            // without a head, a lost race is the unique key's
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => return Err(Conflict),
            Err(e) => panic!("insert: {e}"),
        };
        // AUTO_INCREMENT reports the first of the statement's positions,
        // consecutive for a multi-row VALUES
        let base = base_position.unwrap_or(inserted.last_insert_id() as i64 - 1);
        Ok((1..=count).map(|n| base + n).collect())
    }

    async fn read_page(
        &self,
        conn: &mut MySqlConnection,
        after: i64,
        limit: i64,
    ) -> Option<(u64, i64)> {
        let rows = sqlx::query(AssertSqlSafe(self.read_page.as_str()))
            .bind(after)
            .bind(limit)
            .fetch_all(&mut *conn)
            .await
            .expect("read page");
        let json = |text: &str| serde_json::from_str::<Box<RawValue>>(text).expect("json");
        let name = |bytes: &[u8]| text(bytes).to_owned();
        for row in &rows {
            let decoded = (
                row.get::<i64, _>(0),
                row.get::<i64, _>(1),
                row.get::<uuid::Uuid, _>(2),
                name(row.get(3)),
                name(row.get(4)),
                name(row.get(5)),
                name(row.get(6)),
                row.get::<i32, _>(7),
                json(row.get(8)),
                json(row.get(9)),
                row.get::<chrono::NaiveDateTime, _>(10).and_utc(),
            );
            std::hint::black_box(decoded);
        }
        Some((rows.len() as u64, rows.last()?.get(0)))
    }

    async fn count_events(&self, pool: &MySqlPool) -> i64 {
        sqlx::query_scalar(AssertSqlSafe(self.count.as_str()))
            .fetch_one(pool)
            .await
            .expect("count")
    }

    async fn create_read_model(_store: &MySqlStore, pool: &MySqlPool) -> String {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS bench_readmodel (global_position BIGINT PRIMARY KEY, \
             aggregate_id VARCHAR(500) NOT NULL, event_type VARCHAR(255) NOT NULL) \
             ENGINE = InnoDB",
        )
        .execute(pool)
        .await
        .expect("read model");
        "bench_readmodel".to_owned()
    }

    async fn clear_read_model(conn: &mut MySqlConnection, table: &str) -> Result<(), sqlx::Error> {
        // not TRUNCATE, which would commit the rebuild's transaction
        sqlx::query(AssertSqlSafe(format!("DELETE FROM {table}")))
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    async fn copy_rows(
        conn: &mut MySqlConnection,
        table: &str,
        events: &[PersistedEvent],
    ) -> Result<(), sqlx::Error> {
        let mut insert = QueryBuilder::<sqlx::MySql>::new(format!("INSERT INTO {table} "));
        insert.push_values(events, |mut row, e| {
            row.push_bind(e.global_position)
                .push_bind(e.aggregate_id.as_str())
                .push_bind(e.event_type.as_str());
        });
        insert.build().execute(&mut *conn).await?;
        Ok(())
    }
}

/// The events and heads tables of a plain side on minimal tables, in the
/// benchmark's database; `None` for the store's own.
fn minimal_tables(variant: Variant) -> Option<(String, String)> {
    let prefix = match variant {
        Variant::StoreTables => return None,
        Variant::HeadLock => "plain_lock",
        Variant::Upsert => "plain_upsert",
        Variant::NoHead => "plain_nohead",
    };
    Some((format!("`{prefix}_events`"), format!("`{prefix}_heads`")))
}
