//! SQLite (`--backend sqlite`): a temporary database file, opened with
//! `SqliteStore::connect_options` (WAL, busy timeout) and removed at the
//! end. SQLite has one writer: the plain side begins its transactions with
//! `BEGIN IMMEDIATE`, which takes the write lock before it reads, so the
//! head it checks cannot move under it, as plain code on SQLite must (a
//! deferred transaction that read first cannot wait for the lock: it fails
//! with `SQLITE_BUSY`).
//!
//! Four plain sides ([`Variant`]), as on PostgreSQL: on the store's tables,
//! and on minimal tables of their own in the same file, checking the
//! version with a conditional `UPDATE` of the head, with a conditional
//! upsert of the head, or with no head (the unique (aggregate, version)
//! key). Each inserts the batch as a multi-row `VALUES`.

use std::path::PathBuf;

use serde_json::value::RawValue;
use sqlx::sqlite::SqlitePoolOptions;
use sqlx::{AssertSqlSafe, QueryBuilder, Row, SqliteConnection, SqlitePool};

use super::{Conflict, Head, NewEvent, Opened, Target, Variant};
use es::store::{PersistedEvent, SqliteStore};

/// One plain side's statements on SQLite.
pub(crate) struct Sqlite {
    variant: Variant,
    read_stream: String,
    bump_head: String,
    create_head: String,
    upsert_head: String,
    /// Followed by a row of values per event.
    insert_events: String,
    read_page: String,
    count: String,
}

/// The temporary database file and the files SQLite keeps next to it.
fn files(path: &str) -> [PathBuf; 3] {
    [
        PathBuf::from(path),
        PathBuf::from(format!("{path}-wal")),
        PathBuf::from(format!("{path}-shm")),
    ]
}

impl Target for Sqlite {
    type Db = sqlx::Sqlite;
    type Store = SqliteStore;
    const NAME: &'static str = "sqlite";
    const VARIANTS: &'static [Variant] = &[
        Variant::StoreTables,
        Variant::HeadLock,
        Variant::Upsert,
        Variant::NoHead,
    ];

    async fn open(_notify: bool) -> Result<Opened<Self>, String> {
        let path = std::env::temp_dir().join(format!(
            "es_bench_{}_{}.db",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let pool = SqlitePoolOptions::new()
            .max_connections(20)
            .connect_with(SqliteStore::connect_options(&path))
            .await
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        let store = SqliteStore::new();
        store.migrate(&pool).await.expect("migrations");
        let version: String = sqlx::query_scalar("SELECT sqlite_version()")
            .fetch_one(&pool)
            .await
            .expect("version");
        Ok(Opened {
            pool,
            store,
            server: format!("SQLite {version} (WAL, one writer)"),
            place: path.display().to_string(),
        })
    }

    async fn close(opened: &Opened<Self>) {
        opened.pool.close().await;
        for file in files(&opened.place) {
            match std::fs::remove_file(&file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    eprintln!("could not remove {}: {e}", file.display());
                }
                _ => {}
            }
        }
    }

    async fn create_plain_tables(_store: &SqliteStore, pool: &SqlitePool, variant: Variant) {
        let Some((events, heads)) = minimal_tables(variant) else {
            return;
        };
        // Only what the plain code needs: a global position (the rowid),
        // the unique (aggregate, version) key, the event's fields; a head
        // per aggregate.
        sqlx::query(AssertSqlSafe(format!(
            "CREATE TABLE {events} (\
                 global_position INTEGER PRIMARY KEY, \
                 bounded_context TEXT NOT NULL, aggregate_type TEXT NOT NULL, \
                 aggregate_id TEXT NOT NULL, aggregate_version INTEGER NOT NULL, \
                 event_id TEXT NOT NULL, event_type TEXT NOT NULL, payload TEXT NOT NULL, \
                 UNIQUE (bounded_context, aggregate_type, aggregate_id, aggregate_version))"
        )))
        .execute(pool)
        .await
        .expect("plain events table");
        if variant != Variant::NoHead {
            sqlx::query(AssertSqlSafe(format!(
                "CREATE TABLE {heads} (\
                     bounded_context TEXT NOT NULL, aggregate_type TEXT NOT NULL, \
                     aggregate_id TEXT NOT NULL, version INTEGER NOT NULL, \
                     PRIMARY KEY (bounded_context, aggregate_type, aggregate_id))"
            )))
            .execute(pool)
            .await
            .expect("plain heads table");
        }
    }

    fn plain(store: &SqliteStore, variant: Variant) -> Self {
        let (events, heads, extra_column) = match minimal_tables(variant) {
            None => (store.events_table(), store.heads_table(), ", event_version"),
            Some((events, heads)) => (events, heads, ""),
        };
        let store_events = store.events_table();
        Sqlite {
            variant,
            read_stream: format!(
                "SELECT aggregate_version, event_type, payload FROM {events} \
                 WHERE bounded_context = ?1 AND aggregate_type = ?2 AND aggregate_id = ?3 \
                 ORDER BY aggregate_version"
            ),
            bump_head: format!(
                "UPDATE {heads} SET version = version + ?4 \
                 WHERE bounded_context = ?1 AND aggregate_type = ?2 AND aggregate_id = ?3 \
                   AND version = ?5"
            ),
            create_head: format!(
                "INSERT INTO {heads} (bounded_context, aggregate_type, aggregate_id, version) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING"
            ),
            // one statement for a new aggregate and an existing one: the
            // head is inserted, or moved if it is still at ?5
            upsert_head: format!(
                "INSERT INTO {heads} AS h (bounded_context, aggregate_type, aggregate_id, version) \
                 VALUES (?1, ?2, ?3, ?5 + ?4) \
                 ON CONFLICT (bounded_context, aggregate_type, aggregate_id) \
                 DO UPDATE SET version = excluded.version WHERE h.version = ?5"
            ),
            insert_events: format!(
                "INSERT INTO {events} (event_id, bounded_context, aggregate_type, aggregate_id, \
                     aggregate_version, event_type, payload{extra_column}) "
            ),
            read_page: format!(
                "SELECT global_position, aggregate_version, event_id, bounded_context, \
                     aggregate_type, aggregate_id, event_type, event_version, payload, metadata, \
                     created_at \
                 FROM {store_events} WHERE global_position > ?1 ORDER BY global_position LIMIT ?2"
            ),
            count: format!("SELECT count(*) FROM {store_events}"),
        }
    }

    async fn begin_write(pool: &SqlitePool) -> sqlx::Transaction<'static, sqlx::Sqlite> {
        pool.begin_with("BEGIN IMMEDIATE").await.expect("begin")
    }

    async fn fold_stream<F>(&self, conn: &mut SqliteConnection, id: &str, mut visit: F)
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
            visit(row.get(0), row.get(1), row.get(2));
        }
    }

    async fn append_in(
        &self,
        conn: &mut SqliteConnection,
        id: &str,
        version: i64,
        events: &[NewEvent<'_>],
    ) -> Result<Vec<i64>, Conflict> {
        let count = events.len() as i64;
        if let Some(head) = self.variant.head(version) {
            let sql = match head {
                Head::Create => &self.create_head,
                Head::Bump => &self.bump_head,
                Head::Upsert => &self.upsert_head,
            };
            let mut query = sqlx::query(AssertSqlSafe(sql.as_str()))
                .bind("Billing")
                .bind("Account")
                .bind(id)
                .bind(count);
            if head != Head::Create {
                query = query.bind(version);
            }
            let moved = query.execute(&mut *conn).await.expect("head");
            if moved.rows_affected() != 1 {
                return Err(Conflict);
            }
        }
        let store_tables = self.variant == Variant::StoreTables;
        let mut insert = QueryBuilder::<sqlx::Sqlite>::new(&self.insert_events);
        insert.push_values(
            events.iter().zip(1..),
            |mut row, ((event_type, payload), n)| {
                row.push_bind(uuid::Uuid::now_v7().hyphenated())
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
        insert.push(" RETURNING global_position");
        match insert.build().fetch_all(&mut *conn).await {
            Ok(rows) => Ok(rows.iter().map(|r| r.get::<i64, _>(0)).collect()),
            // without a head, a lost race is the unique key's
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(Conflict),
            Err(e) => panic!("insert: {e}"),
        }
    }

    async fn read_page(
        &self,
        conn: &mut SqliteConnection,
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
        for row in &rows {
            let decoded = (
                row.get::<i64, _>(0),
                row.get::<i64, _>(1),
                row.get::<uuid::fmt::Hyphenated, _>(2).into_uuid(),
                row.get::<String, _>(3),
                row.get::<String, _>(4),
                row.get::<String, _>(5),
                row.get::<String, _>(6),
                row.get::<i32, _>(7),
                json(row.get(8)),
                json(row.get(9)),
                row.get::<chrono::DateTime<chrono::Utc>, _>(10),
            );
            std::hint::black_box(decoded);
        }
        Some((rows.len() as u64, rows.last()?.get(0)))
    }

    async fn count_events(&self, pool: &SqlitePool) -> i64 {
        sqlx::query_scalar(AssertSqlSafe(self.count.as_str()))
            .fetch_one(pool)
            .await
            .expect("count")
    }

    async fn create_read_model(_store: &SqliteStore, pool: &SqlitePool) -> String {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS bench_readmodel (global_position INTEGER PRIMARY KEY, \
             aggregate_id TEXT NOT NULL, event_type TEXT NOT NULL) STRICT",
        )
        .execute(pool)
        .await
        .expect("read model");
        "bench_readmodel".to_owned()
    }

    async fn clear_read_model(conn: &mut SqliteConnection, table: &str) -> Result<(), sqlx::Error> {
        sqlx::query(AssertSqlSafe(format!("DELETE FROM {table}")))
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    async fn copy_rows(
        conn: &mut SqliteConnection,
        table: &str,
        events: &[PersistedEvent],
    ) -> Result<(), sqlx::Error> {
        let mut insert = QueryBuilder::<sqlx::Sqlite>::new(format!("INSERT INTO {table} "));
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
/// benchmark's database file; `None` for the store's own.
fn minimal_tables(variant: Variant) -> Option<(String, String)> {
    let prefix = match variant {
        Variant::StoreTables => return None,
        Variant::HeadLock => "plain_lock",
        Variant::Upsert => "plain_upsert",
        Variant::NoHead => "plain_nohead",
    };
    Some((format!("{prefix}_events"), format!("{prefix}_heads")))
}
