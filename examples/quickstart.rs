//! Run with: `cargo run --example quickstart`
//!
//! The store API on its own: append with optimistic concurrency, read a
//! stream, follow the global feed, keep a checkpoint. Stores events in the
//! SQLite file `es-example.db` in the current directory, or, when
//! `DATABASE_URL` is a PostgreSQL URL (`postgres://…`), in that database's
//! schema `es_quickstart`. The code is the same for both: it is generic
//! over the store traits.

use es::store::{
    AggregateStreamReader, CheckpointStore, Error, Event, EventReader, EventStore, ExpectedVersion,
    PostgresStore, SqliteStore,
};
use serde_json::json;

/// The SQLite database the examples share when no PostgreSQL URL is given.
const SQLITE_FILE: &str = "es-example.db";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    match std::env::var("DATABASE_URL") {
        Ok(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            let pool = sqlx::PgPool::connect(&url).await.map_err(|e| {
                format!("cannot reach PostgreSQL at {url} ({e}); start it or unset DATABASE_URL")
            })?;
            let store = PostgresStore::builder().schema("es_quickstart").build()?;
            store.migrate(&pool).await?;
            println!("PostgreSQL at {url}, schema es_quickstart");
            run(store, pool).await
        }
        _ => {
            let pool =
                sqlx::SqlitePool::connect_with(SqliteStore::connect_options(SQLITE_FILE)).await?;
            let store = SqliteStore::new();
            store.migrate(&pool).await?;
            println!("SQLite file {SQLITE_FILE} (set DATABASE_URL=postgres://… for PostgreSQL)");
            run(store, pool).await
        }
    }
}

async fn run<S>(store: S, pool: sqlx::Pool<S::Database>) -> Result<(), Box<dyn std::error::Error>>
where
    S: EventStore + AggregateStreamReader + EventReader + CheckpointStore,
{
    let account = format!("acc-{}", uuid::Uuid::new_v4().simple());
    let event = |event_type: &str, payload: serde_json::Value| {
        Event::new("Billing", "Account", account.as_str(), event_type, &payload)
    };

    // Create the account, then deposit twice in one transaction.
    let mut tx = pool.begin().await?;
    let opened = store
        .append(
            &mut *tx,
            ExpectedVersion::NoStream,
            vec![event("Opened", json!({"owner": "alice"}))?],
        )
        .await?;
    let deposits = vec![
        event("Deposited", json!({"amount": 100}))?,
        event("Deposited", json!({"amount": 50}))?,
    ];
    store
        .append(
            &mut *tx,
            ExpectedVersion::Exact(opened.to_version()),
            deposits,
        )
        .await?;
    tx.commit().await?;

    // A writer that read version 1 and comes late loses.
    let mut tx = pool.begin().await?;
    match store
        .append(
            &mut *tx,
            ExpectedVersion::Exact(1),
            vec![event("Withdrawn", json!({"amount": 10}))?],
        )
        .await
    {
        Err(Error::OptimisticConcurrency {
            expected, actual, ..
        }) => {
            println!("conflict as expected: wanted {expected}, the account is at {actual:?}")
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    tx.rollback().await?;

    let mut conn = pool.acquire().await?;
    let stream = store
        .read_aggregate_stream(&mut *conn, ("Billing", "Account", &account), ..)
        .await?;
    println!("{account} is at version {}:", stream.version());
    for e in &stream.events {
        println!(
            "  v{} #{} {} {}",
            e.aggregate_version,
            e.global_position,
            e.event_type,
            e.payload.get()
        );
    }

    // Follow the global feed from the checkpoint, then move the checkpoint in
    // the same transaction.
    let mut tx = pool.begin().await?;
    let from = store.get_checkpoint(&mut *tx, "quickstart").await?;
    let page = store.read_events(&mut *tx, from, 1000).await?;
    if let Some(last) = page.last() {
        store
            .update_checkpoint(&mut *tx, "quickstart", last.global_position)
            .await?;
    }
    tx.commit().await?;
    println!(
        "read {} new events from the feed after position {from}",
        page.len()
    );
    Ok(())
}
