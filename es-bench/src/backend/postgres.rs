//! PostgreSQL (`--backend postgres`, the default): `DATABASE_URL`, a fresh
//! schema dropped at the end. Four plain sides ([`Variant`]): on the
//! store's tables, and on minimal tables of their own (made in the same
//! schema), checking the version with a conditional `UPDATE` of the head
//! (which locks the head row until commit), with a conditional upsert of
//! the head, or with no head at all (the unique (aggregate, version) key).
//! Each inserts the batch with `unnest` arrays.

use serde_json::value::RawValue;
use sqlx::postgres::PgPoolOptions;
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, PgConnection, PgPool, Row};

use super::{Conflict, Head, NewEvent, Opened, Target, Variant};
use es::store::{PersistedEvent, PostgresStore};

/// One plain side's statements on PostgreSQL.
pub(crate) struct Postgres {
    variant: Variant,
    read_stream: String,
    bump_head: String,
    create_head: String,
    upsert_head: String,
    insert_events: String,
    read_page: String,
    count: String,
}

impl Target for Postgres {
    type Db = sqlx::Postgres;
    type Store = PostgresStore;
    const NAME: &'static str = "postgres";
    const POSTGRES_FEATURES: bool = true;
    const VARIANTS: &'static [Variant] = &[
        Variant::StoreTables,
        Variant::HeadLock,
        Variant::Upsert,
        Variant::NoHead,
    ];

    async fn open(notify: bool) -> Result<Opened<Self>, String> {
        let url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let pool = PgPoolOptions::new()
            .max_connections(20)
            .connect(&url)
            .await
            .map_err(|e| {
                format!("cannot reach PostgreSQL at {url}: {e}\nstart it or set DATABASE_URL")
            })?;
        let schema = format!(
            "es_bench_{}_{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        );
        let store = PostgresStore::builder()
            .schema(&schema)
            .notify_on_append(notify)
            .build()
            .expect("valid names");
        store.migrate(&pool).await.expect("migrations");
        let version: String = sqlx::query_scalar("SHOW server_version")
            .fetch_one(&pool)
            .await
            .expect("version");
        Ok(Opened {
            pool,
            store,
            server: format!("PostgreSQL {version}, notify on append: {notify}"),
            place: format!("schema {schema}"),
        })
    }

    async fn close(opened: &Opened<Self>) {
        let schema = opened.store.schema().expect("a schema of its own");
        sqlx::query(AssertSqlSafe(format!("DROP SCHEMA \"{schema}\" CASCADE")))
            .execute(&opened.pool)
            .await
            .expect("drop schema");
    }

    async fn create_plain_tables(store: &PostgresStore, pool: &PgPool, variant: Variant) {
        let Some((events, heads)) = minimal_tables(store, variant) else {
            return;
        };
        // Only what the plain code needs: a global position, the unique
        // (aggregate, version) key, the event's fields; a head per aggregate.
        sqlx::query(AssertSqlSafe(format!(
            "CREATE TABLE {events} (\
                 global_position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
                 bounded_context text NOT NULL, aggregate_type text NOT NULL, \
                 aggregate_id text NOT NULL, aggregate_version bigint NOT NULL, \
                 event_id uuid NOT NULL, event_type text NOT NULL, payload jsonb NOT NULL, \
                 UNIQUE (bounded_context, aggregate_type, aggregate_id, aggregate_version))"
        )))
        .execute(pool)
        .await
        .expect("plain events table");
        if variant != Variant::NoHead {
            sqlx::query(AssertSqlSafe(format!(
                "CREATE TABLE {heads} (\
                     bounded_context text NOT NULL, aggregate_type text NOT NULL, \
                     aggregate_id text NOT NULL, version bigint NOT NULL, \
                     PRIMARY KEY (bounded_context, aggregate_type, aggregate_id))"
            )))
            .execute(pool)
            .await
            .expect("plain heads table");
        }
    }

    fn plain(store: &PostgresStore, variant: Variant) -> Self {
        let (events, heads, extra_columns, extra_values) = match minimal_tables(store, variant) {
            None => (
                store.events_table(),
                store.heads_table(),
                ", event_version, metadata",
                ", 1, '{}'",
            ),
            Some((events, heads)) => (events, heads, "", ""),
        };
        let store_events = store.events_table();
        Postgres {
            variant,
            read_stream: format!(
                "SELECT aggregate_version, event_type, payload FROM {events} \
                 WHERE bounded_context = $1 AND aggregate_type = $2 AND aggregate_id = $3 \
                 ORDER BY aggregate_version"
            ),
            bump_head: format!(
                "UPDATE {heads} SET version = version + $4 \
                 WHERE bounded_context = $1 AND aggregate_type = $2 AND aggregate_id = $3 \
                   AND version = $5"
            ),
            create_head: format!(
                "INSERT INTO {heads} (bounded_context, aggregate_type, aggregate_id, version) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING"
            ),
            // one statement for a new aggregate and an existing one: the
            // head is inserted, or moved if it is still at $5
            upsert_head: format!(
                "INSERT INTO {heads} AS h (bounded_context, aggregate_type, aggregate_id, version) \
                 VALUES ($1, $2, $3, $5 + $4) \
                 ON CONFLICT (bounded_context, aggregate_type, aggregate_id) \
                 DO UPDATE SET version = excluded.version WHERE h.version = $5"
            ),
            insert_events: format!(
                "INSERT INTO {events} (event_id, bounded_context, aggregate_type, aggregate_id, \
                     aggregate_version, event_type, payload{extra_columns}) \
                 SELECT e.id, $1, $2, $3, $4 + e.ord, e.event_type, e.payload{extra_values} \
                 FROM unnest($5::uuid[], $6::text[], $7::jsonb[]) WITH ORDINALITY \
                     AS e(id, event_type, payload, ord) \
                 ORDER BY e.ord \
                 RETURNING global_position"
            ),
            read_page: format!(
                "SELECT global_position, aggregate_version, event_id, bounded_context, \
                     aggregate_type, aggregate_id, event_type, event_version, payload, metadata, \
                     created_at \
                 FROM {store_events} WHERE global_position > $1 ORDER BY global_position LIMIT $2"
            ),
            count: format!("SELECT count(*) FROM {store_events}"),
        }
    }

    async fn begin_write(pool: &PgPool) -> sqlx::Transaction<'static, sqlx::Postgres> {
        pool.begin().await.expect("begin")
    }

    async fn fold_stream<F>(&self, conn: &mut PgConnection, id: &str, mut visit: F)
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
            let payload: Json<&RawValue> = row.get(2);
            visit(row.get(0), row.get(1), payload.0.get());
        }
    }

    async fn append_in(
        &self,
        conn: &mut PgConnection,
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
        let ids: Vec<uuid::Uuid> = events.iter().map(|_| uuid::Uuid::now_v7()).collect();
        let types: Vec<&str> = events.iter().map(|(t, _)| *t).collect();
        let payloads: Vec<Json<&RawValue>> = events
            .iter()
            .map(|(_, p)| Json(serde_json::from_str::<&RawValue>(p).expect("json")))
            .collect();
        let rows = sqlx::query(AssertSqlSafe(self.insert_events.as_str()))
            .bind("Billing")
            .bind("Account")
            .bind(id)
            .bind(version)
            .bind(&ids)
            .bind(&types)
            .bind(&payloads)
            .fetch_all(&mut *conn)
            .await;
        match rows {
            Ok(rows) => Ok(rows.iter().map(|r| r.get::<i64, _>(0)).collect()),
            // without a head, a lost race is the unique key's
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(Conflict),
            Err(e) => panic!("insert: {e}"),
        }
    }

    async fn read_page(
        &self,
        conn: &mut PgConnection,
        after: i64,
        limit: i64,
    ) -> Option<(u64, i64)> {
        let rows = sqlx::query(AssertSqlSafe(self.read_page.as_str()))
            .bind(after)
            .bind(limit)
            .fetch_all(&mut *conn)
            .await
            .expect("read page");
        for row in &rows {
            let decoded = (
                row.get::<i64, _>(0),
                row.get::<i64, _>(1),
                row.get::<uuid::Uuid, _>(2),
                row.get::<String, _>(3),
                row.get::<String, _>(4),
                row.get::<String, _>(5),
                row.get::<String, _>(6),
                row.get::<i32, _>(7),
                row.get::<Json<Box<RawValue>>, _>(8),
                row.get::<Json<Box<RawValue>>, _>(9),
                row.get::<chrono::DateTime<chrono::Utc>, _>(10),
            );
            std::hint::black_box(decoded);
        }
        Some((rows.len() as u64, rows.last()?.get(0)))
    }

    async fn count_events(&self, pool: &PgPool) -> i64 {
        sqlx::query_scalar(AssertSqlSafe(self.count.as_str()))
            .fetch_one(pool)
            .await
            .expect("count")
    }

    async fn create_read_model(store: &PostgresStore, pool: &PgPool) -> String {
        let table = format!(
            "\"{}\".bench_readmodel",
            store.schema().expect("a schema of its own")
        );
        sqlx::query(AssertSqlSafe(format!(
            "CREATE TABLE IF NOT EXISTS {table} (global_position bigint PRIMARY KEY, \
             aggregate_id text NOT NULL, event_type text NOT NULL)"
        )))
        .execute(pool)
        .await
        .expect("read model");
        table
    }

    async fn clear_read_model(conn: &mut PgConnection, table: &str) -> Result<(), sqlx::Error> {
        sqlx::query(AssertSqlSafe(format!("TRUNCATE {table}")))
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    async fn copy_rows(
        conn: &mut PgConnection,
        table: &str,
        events: &[PersistedEvent],
    ) -> Result<(), sqlx::Error> {
        let positions: Vec<i64> = events.iter().map(|e| e.global_position).collect();
        let ids: Vec<&str> = events.iter().map(|e| e.aggregate_id.as_str()).collect();
        let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {table} SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[])"
        )))
        .bind(&positions)
        .bind(&ids)
        .bind(&types)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

/// The events and heads tables of a plain side on minimal tables, in the
/// store's schema; `None` for the store's own.
fn minimal_tables(store: &PostgresStore, variant: Variant) -> Option<(String, String)> {
    let prefix = match variant {
        Variant::StoreTables => return None,
        Variant::HeadLock => "plain_lock",
        Variant::Upsert => "plain_upsert",
        Variant::NoHead => "plain_nohead",
    };
    let schema = store.schema().expect("a schema of its own");
    Some((
        format!("\"{schema}\".{prefix}_events"),
        format!("\"{schema}\".{prefix}_heads"),
    ))
}
