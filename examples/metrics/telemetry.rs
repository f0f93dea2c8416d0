//! The `metrics` example's parts, shared with `tests/metrics.rs`: a
//! workload of real commands and a projection, and a `/metrics` endpoint in
//! Prometheus text format.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use es::aggregate::projection::{Envelope, HandlerError, ProjectionProcessor, TypedProjection};
use es::store::{Metadata, Store};
use es::{Repository, RepositoryError, RetryPolicy};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::domain::{Account, AccountCommand, AccountEvent};

/// What the workload did, as its callers saw it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Done {
    /// Commands that stored events.
    pub executed: u64,
    /// Commands the account refused.
    pub rejected: u64,
    /// Attempts run again after a conflict.
    pub conflicts_retried: u64,
    /// Events the commands stored.
    pub events: u64,
    /// Events the projection handled.
    pub handled: u64,
}

/// A projection that watches deposits: it counts them and tells of large
/// ones (a reaction that writes nothing of its own to the database).
#[derive(Debug, Default)]
pub struct LargeDeposits {
    seen: AtomicU64,
}

impl<DB: sqlx::Database> TypedProjection<DB> for LargeDeposits {
    type Events = AccountEvent;

    fn name(&self) -> &str {
        "large_deposits"
    }

    async fn handle(
        &self,
        _tx: &mut DB::Connection,
        event: Envelope<'_, AccountEvent>,
    ) -> Result<(), HandlerError> {
        self.seen.fetch_add(1, Ordering::Relaxed);
        if let AccountEvent::Deposited { amount } = event.event
            && amount >= 1_000
        {
            tracing::info!(account = event.aggregate_id(), amount, "large deposit");
        }
        Ok(())
    }
}

/// Opens an account, deposits into it from eight tasks at once (their
/// conflicts are retried), has two withdrawals refused, moves money in a
/// unit of work, then catches the projection up.
pub async fn workload<S: Store>(
    store: S,
    pool: sqlx::Pool<S::Database>,
) -> Result<Done, Box<dyn std::error::Error + Send + Sync>> {
    let accounts = Arc::new(
        Repository::<Account, S>::new(store.clone(), pool.clone())
            .with_retry_policy(RetryPolicy::default()),
    );
    let run = uuid::Uuid::new_v4().simple().to_string();
    let (alice, bob) = (format!("alice-{}", &run[..8]), format!("bob-{}", &run[..8]));
    let mut done = Done::default();
    for (id, owner) in [(&alice, "Alice"), (&bob, "Bob")] {
        let opened = accounts
            .execute(
                id,
                &AccountCommand::Open {
                    owner: owner.into(),
                },
            )
            .await?;
        done.executed += 1;
        done.events += opened.events.len() as u64;
    }
    let tasks: Vec<_> = (0..8)
        .map(|task| {
            let (accounts, alice) = (accounts.clone(), alice.clone());
            tokio::spawn(async move {
                let mut seen = Done::default();
                for n in 0..5 {
                    let amount = if (task, n) == (0, 0) { 5_000 } else { 10 };
                    let deposited = accounts
                        .execute(&alice, &AccountCommand::Deposit { amount })
                        .await?;
                    seen.executed += 1;
                    seen.events += deposited.events.len() as u64;
                    seen.conflicts_retried += u64::from(deposited.attempts - 1);
                }
                Ok::<_, RepositoryError<crate::domain::AccountError>>(seen)
            })
        })
        .collect();
    for task in tasks {
        let seen = task.await??;
        done.executed += seen.executed;
        done.events += seen.events;
        done.conflicts_retried += seen.conflicts_retried;
    }
    for amount in [100_000, 200_000] {
        match accounts
            .execute(&bob, &AccountCommand::Withdraw { amount })
            .await
        {
            Err(RepositoryError::Rejected(_)) => done.rejected += 1,
            other => return Err(format!("expected a refusal, got {other:?}").into()),
        }
    }
    let metadata = Metadata::new().with_correlation_id(uuid::Uuid::now_v7());
    let accounts_ref = &*accounts;
    let (from, to) = (&alice, &bob);
    accounts_ref
        .unit_of_work()
        .run_with(&metadata, move |work| async move {
            work.execute(accounts_ref, from, &AccountCommand::Withdraw { amount: 50 })
                .await?;
            work.execute(accounts_ref, to, &AccountCommand::Deposit { amount: 50 })
                .await?;
            Ok(())
        })
        .await?;
    done.executed += 2;
    done.events += 2;

    let processor = ProjectionProcessor::typed(store, pool, LargeDeposits::default());
    let caught_up = processor.catch_up().await?;
    done.handled = caught_up.events;
    Ok(done)
}

/// Answers `GET /metrics` with what the recorder holds, in Prometheus text
/// format, until `shutdown` completes; anything else is a 404.
pub async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        let (mut socket, _) = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => accepted?,
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let mut request = Vec::new();
            let mut buffer = [0u8; 1024];
            // Up to the end of the request's head.
            while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
                match socket.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&buffer[..n]),
                }
            }
            let (status, body) = if request.starts_with(b"GET /metrics ") {
                ("200 OK", handle.render())
            } else {
                ("404 Not Found", "try GET /metrics\n".to_owned())
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
            let _ = socket.shutdown().await;
        });
    }
}
