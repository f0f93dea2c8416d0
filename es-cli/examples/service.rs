//! A service's own `es`, with its projection registered: `projections
//! rebuild` runs the projection's code (clearing its read model first) and
//! `failures retry` can handle a skipped event again. Everything else is
//! the plain `es`.
//!
//! ```sh
//! cargo run --example bank                       # events in es-example.db
//! cargo run -p es-cli --example service -- --url sqlite:es-example.db projections rebuild balances --yes
//! cargo run -p es-cli --example service -- --url sqlite:es-example.db projections
//! ```

use std::process::ExitCode;

use es_aggregate::projection::{HandlerError, Projection};
use es_aggregate::{ErrorPolicy, ProjectionProcessor};
use es_store::{EventFilter, PersistedEvent, SqliteStore};
use sqlx::SqliteConnection;

/// Each account's balance, in the table `balances` (created by a reset).
struct Balances;

impl Projection<sqlx::Sqlite> for Balances {
    fn name(&self) -> &str {
        "balances"
    }

    fn filter(&self) -> EventFilter {
        EventFilter::all()
            .bounded_context("Billing")
            .aggregate_type("Account")
    }

    async fn handle(
        &self,
        tx: &mut SqliteConnection,
        event: &PersistedEvent,
    ) -> Result<(), HandlerError> {
        let payload: serde_json::Value = serde_json::from_str(event.payload.get())?;
        let change = match event.event_type.as_str() {
            "Deposited" => payload["amount"].as_i64().unwrap_or(0),
            "Withdrawn" => -payload["amount"].as_i64().unwrap_or(0),
            _ => 0,
        };
        sqlx::query(
            "INSERT INTO balances (account, balance) VALUES (?1, ?2)
             ON CONFLICT (account) DO UPDATE SET balance = balance + ?2",
        )
        .bind(&event.aggregate_id)
        .bind(change)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    async fn reset(&self, tx: &mut SqliteConnection) -> Result<(), HandlerError> {
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS balances (account TEXT PRIMARY KEY, balance INTEGER NOT NULL);
             DELETE FROM balances;",
        )
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}

fn main() -> ExitCode {
    es_cli::Cli::new()
        .projection(|store: SqliteStore, pool| {
            ProjectionProcessor::new(store, pool, Balances)
                .with_partitions(2)
                .with_error_policy(ErrorPolicy::Skip)
        })
        .main()
}
