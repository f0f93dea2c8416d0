//! The same work, hand-written with plain sqlx: what an application would
//! write without the framework. Same tables, same domain.

use serde::Deserialize;
use serde_json::value::RawValue;
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, PgConnection, PgPool, Row};

use crate::domain::{Account, AccountCommand, AccountEvent};
use es::Aggregate;

#[derive(Deserialize)]
struct Opened {
    owner: String,
}

#[derive(Deserialize)]
struct Amount {
    amount: i64,
}

/// The store's tables, as plain SQL sees them.
pub(crate) struct Plain {
    pub(crate) pool: PgPool,
    read_stream: String,
    bump_head: String,
    create_head: String,
    insert_events: String,
    read_page: String,
}

/// The plain implementation lost an optimistic-concurrency check.
#[derive(Debug)]
pub(crate) struct Conflict;

/// Why the plain command did nothing.
#[derive(Debug)]
pub(crate) enum Refused {
    /// Another writer got there first.
    Conflict,
    /// The account is not open.
    NotOpen,
    /// The account is open already.
    AlreadyOpen,
}

impl Plain {
    pub(crate) fn new(pool: PgPool, store: &es::store::PostgresStore) -> Self {
        let events = store.events_table();
        let heads = store.heads_table();
        Plain {
            pool,
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
            insert_events: format!(
                "INSERT INTO {events} (event_id, bounded_context, aggregate_type, aggregate_id, \
                     aggregate_version, event_type, event_version, payload, metadata) \
                 SELECT e.id, $1, $2, $3, $4 + e.ord, e.event_type, 1, e.payload, '{{}}' \
                 FROM unnest($5::uuid[], $6::text[], $7::jsonb[]) WITH ORDINALITY \
                     AS e(id, event_type, payload, ord) \
                 ORDER BY e.ord \
                 RETURNING global_position"
            ),
            read_page: format!(
                "SELECT global_position, aggregate_version, event_id, bounded_context, \
                     aggregate_type, aggregate_id, event_type, event_version, payload, metadata, \
                     created_at \
                 FROM {events} WHERE global_position > $1 ORDER BY global_position LIMIT $2"
            ),
        }
    }

    /// Reads the account's events, decodes and folds them.
    pub(crate) async fn load(&self, conn: &mut PgConnection, id: &str) -> (Account, i64) {
        let rows = sqlx::query(AssertSqlSafe(self.read_stream.as_str()))
            .bind("Billing")
            .bind("Account")
            .bind(id)
            .fetch_all(&mut *conn)
            .await
            .expect("read stream");
        let mut account = Account::default();
        let mut version = 0;
        for row in &rows {
            version = row.get::<i64, _>(0);
            let event_type: &str = row.get(1);
            let payload: Json<&RawValue> = row.get(2);
            let event = match event_type {
                "Opened" => AccountEvent::Opened {
                    owner: serde_json::from_str::<Opened>(payload.0.get())
                        .expect("payload")
                        .owner,
                },
                "Deposited" => AccountEvent::Deposited {
                    amount: serde_json::from_str::<Amount>(payload.0.get())
                        .expect("payload")
                        .amount,
                },
                "Withdrawn" => AccountEvent::Withdrawn {
                    amount: serde_json::from_str::<Amount>(payload.0.get())
                        .expect("payload")
                        .amount,
                },
                "Closed" => AccountEvent::Closed,
                other => panic!("unknown event type {other}"),
            };
            account.apply(&event);
        }
        (account, version)
    }

    /// A command the obvious way: begin, read and fold, decide, check and
    /// bump the head, insert the events, commit.
    pub(crate) async fn execute(&self, id: &str, command: &AccountCommand) -> Result<i64, Refused> {
        let mut tx = self.pool.begin().await.expect("begin");
        let (account, version) = self.load(&mut tx, id).await;
        let events = match account.handle(command) {
            Ok(events) => events,
            Err(crate::domain::AccountError::NotOpen) => return Err(Refused::NotOpen),
            Err(crate::domain::AccountError::AlreadyOpen) => return Err(Refused::AlreadyOpen),
            Err(other) => panic!("the benchmark's commands are valid: {other}"),
        };
        let payloads: Vec<(&str, String)> = events
            .iter()
            .map(|e| match e {
                AccountEvent::Opened { owner } => {
                    ("Opened", serde_json::json!({ "owner": owner }).to_string())
                }
                AccountEvent::Deposited { amount } => (
                    "Deposited",
                    serde_json::json!({ "amount": amount }).to_string(),
                ),
                AccountEvent::Withdrawn { amount } => (
                    "Withdrawn",
                    serde_json::json!({ "amount": amount }).to_string(),
                ),
                AccountEvent::Closed => ("Closed", "{}".to_owned()),
            })
            .collect();
        let positions = self
            .append_in(&mut tx, id, version, &payloads)
            .await
            .map_err(|Conflict| Refused::Conflict)?;
        tx.commit().await.expect("commit");
        Ok(positions[positions.len() - 1])
    }

    /// Appends pre-serialized events after `version`, in one transaction.
    pub(crate) async fn append(
        &self,
        id: &str,
        version: i64,
        events: &[(&str, String)],
    ) -> Result<Vec<i64>, Conflict> {
        let mut tx = self.pool.begin().await.expect("begin");
        let positions = self.append_in(&mut tx, id, version, events).await?;
        tx.commit().await.expect("commit");
        Ok(positions)
    }

    /// Checks and bumps the head, then inserts the events.
    async fn append_in(
        &self,
        conn: &mut PgConnection,
        id: &str,
        version: i64,
        events: &[(&str, String)],
    ) -> Result<Vec<i64>, Conflict> {
        let count = events.len() as i64;
        let moved = if version == 0 {
            sqlx::query(AssertSqlSafe(self.create_head.as_str()))
                .bind("Billing")
                .bind("Account")
                .bind(id)
                .bind(count)
                .execute(&mut *conn)
                .await
        } else {
            sqlx::query(AssertSqlSafe(self.bump_head.as_str()))
                .bind("Billing")
                .bind("Account")
                .bind(id)
                .bind(count)
                .bind(version)
                .execute(&mut *conn)
                .await
        }
        .expect("head");
        if moved.rows_affected() != 1 {
            return Err(Conflict);
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
            .await
            .expect("insert");
        Ok(rows.iter().map(|r| r.get::<i64, _>(0)).collect())
    }

    /// Reads every event after `from`, page by page, decoding each row as a
    /// reader would; returns how many it read.
    pub(crate) async fn read_all(&self, from: i64, page: i64) -> u64 {
        let mut conn = self.pool.acquire().await.expect("acquire");
        let mut position = from;
        let mut read = 0;
        loop {
            let rows = sqlx::query(AssertSqlSafe(self.read_page.as_str()))
                .bind(position)
                .bind(page)
                .fetch_all(&mut *conn)
                .await
                .expect("read page");
            let Some(last) = rows.last() else { break };
            position = last.get(0);
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
                read += 1;
            }
        }
        read
    }
}
