//! Run with: `cargo run --example metrics`, then
//! `curl http://127.0.0.1:9898/metrics` (set `METRICS_ADDR` to serve
//! elsewhere).
//!
//! Installs a Prometheus recorder for the framework's metrics (see
//! `es::store::telemetry` for the list), runs commands (eight tasks
//! depositing into one account at once, refused withdrawals, a unit of
//! work) and a projection, prints what the commands did, then serves the
//! metrics until Ctrl-C.
//!
//! Stores events in the SQLite file `es-example.db` in the current
//! directory, or, when `DATABASE_URL` is a PostgreSQL URL, in that
//! database's schema `es_metrics`.

#[path = "../bank/domain.rs"]
#[allow(dead_code)]
mod domain;
mod telemetry;

use es::store::{PostgresStore, SqliteStore};
use metrics_exporter_prometheus::PrometheusBuilder;

const SQLITE_FILE: &str = "es-example.db";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let handle = PrometheusBuilder::new().install_recorder()?;
    es::store::telemetry::describe();
    let done = match std::env::var("DATABASE_URL") {
        Ok(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(10)
                .connect(&url)
                .await
                .map_err(|e| {
                    format!(
                        "cannot reach PostgreSQL at {url} ({e}); start it or unset DATABASE_URL"
                    )
                })?;
            let store = PostgresStore::builder().schema("es_metrics").build()?;
            store.migrate(&pool).await?;
            telemetry::workload(store, pool).await?
        }
        _ => {
            let pool = sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(10)
                .connect_with(SqliteStore::connect_options(SQLITE_FILE))
                .await?;
            let store = SqliteStore::new();
            store.migrate(&pool).await?;
            telemetry::workload(store, pool).await?
        }
    };
    println!(
        "{} commands executed, {} refused, {} conflicts retried; the projection handled {} events",
        done.executed, done.rejected, done.conflicts_retried, done.handled
    );
    let addr = std::env::var("METRICS_ADDR").unwrap_or_else(|_| "127.0.0.1:9898".into());
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} ({e}); set METRICS_ADDR"))?;
    println!("serving http://{addr}/metrics; Ctrl-C to stop");
    telemetry::serve(listener, handle, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
