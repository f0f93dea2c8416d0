//! Run with: `cargo run --example bank`
//!
//! Opens two accounts, deposits and withdraws through the repository,
//! refuses an overdraft, lets eight tasks deposit into one account at once
//! (their optimistic-concurrency conflicts are retried), moves money between
//! accounts atomically in a unit of work (and refuses a transfer that would
//! overdraw, changing neither account), and prints the result.
//!
//! Stores events in the SQLite file `es-example.db` in the current
//! directory, or, when `DATABASE_URL` is a PostgreSQL URL (`postgres://…`),
//! in that database's schema `es_bank`. The code is the same for both: it
//! is generic over the store traits.

mod domain;

use std::sync::Arc;

use domain::{Account, AccountCommand, AccountError};
use es::store::{Metadata, PostgresStore, SqliteStore, Store};
use es::{Repository, RepositoryError, RetryPolicy};

/// The SQLite database the examples share when no PostgreSQL URL is given.
const SQLITE_FILE: &str = "es-example.db";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    match std::env::var("DATABASE_URL") {
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
            let store = PostgresStore::builder().schema("es_bank").build()?;
            store.migrate(&pool).await?;
            println!("PostgreSQL at {url}, schema es_bank");
            run(store, pool).await
        }
        _ => {
            let pool = sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(10)
                .connect_with(SqliteStore::connect_options(SQLITE_FILE))
                .await?;
            let store = SqliteStore::new();
            store.migrate(&pool).await?;
            println!("SQLite file {SQLITE_FILE} (set DATABASE_URL=postgres://… for PostgreSQL)");
            run(store, pool).await
        }
    }
}

async fn run<S>(store: S, pool: sqlx::Pool<S::Database>) -> Result<(), Box<dyn std::error::Error>>
where
    S: Store,
{
    let accounts = Arc::new(
        Repository::<Account, S>::new(store, pool).with_retry_policy(RetryPolicy::default()),
    );
    let run = uuid::Uuid::new_v4().simple().to_string();
    let alice = format!("alice-{}", &run[..8]);
    let bob = format!("bob-{}", &run[..8]);

    accounts
        .execute(
            &alice,
            &AccountCommand::Open {
                owner: "Alice".into(),
            },
        )
        .await?;
    accounts
        .execute(
            &bob,
            &AccountCommand::Open {
                owner: "Bob".into(),
            },
        )
        .await?;
    accounts
        .execute(&alice, &AccountCommand::Deposit { amount: 100 })
        .await?;
    accounts
        .execute(&alice, &AccountCommand::Withdraw { amount: 30 })
        .await?;

    match accounts
        .execute(&alice, &AccountCommand::Withdraw { amount: 1_000 })
        .await
    {
        Err(RepositoryError::Rejected(AccountError::InsufficientFunds { balance, asked })) => {
            println!("refused: {asked} asked from a balance of {balance}; nothing was written")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    if let Err(RepositoryError::Rejected(refusal)) =
        accounts.execute(&alice, &AccountCommand::Close).await
    {
        println!("refused: {refusal}");
    }

    // Eight tasks deposit into Bob's account at the same time. Each command
    // loads version n and appends with Exact(n): all but one lose each
    // round, reload and try again.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (accounts, bob) = (accounts.clone(), bob.clone());
            tokio::spawn(async move {
                let mut retried = 0;
                for _ in 0..10 {
                    let done = accounts
                        .execute(&bob, &AccountCommand::Deposit { amount: 1 })
                        .await?;
                    retried += done.attempts - 1;
                }
                Ok::<_, RepositoryError<AccountError>>(retried)
            })
        })
        .collect();
    let mut conflicts = 0;
    for task in tasks {
        conflicts += task.await??;
    }
    println!("80 concurrent deposits into {bob}: {conflicts} conflicts retried");

    // Transfers: both commands commit in one transaction, or neither; a
    // conflict or a lost connection runs the whole unit again.
    let transfer = |from: String, to: String, amount: i64| {
        let accounts = &accounts;
        let metadata = Metadata::new()
            .with_correlation_id(uuid::Uuid::now_v7())
            .with_field("reason", "rent");
        async move {
            accounts
                .unit_of_work()
                .run_with(&metadata, |work| {
                    let (from, to) = (from.clone(), to.clone());
                    async move {
                        work.execute(accounts, &from, &AccountCommand::Withdraw { amount })
                            .await?;
                        work.execute(accounts, &to, &AccountCommand::Deposit { amount })
                            .await?;
                        Ok(())
                    }
                })
                .await
        }
    };
    transfer(alice.clone(), bob.clone(), 50).await?;
    match transfer(alice.clone(), bob.clone(), 500).await {
        Err(refused) => match refused.rejection::<AccountError>() {
            Some(AccountError::InsufficientFunds { balance, asked }) => println!(
                "transfer refused: {asked} asked from a balance of {balance}; neither account changed"
            ),
            _ => return Err(refused.into()),
        },
        Ok(()) => panic!("expected the transfer to be refused"),
    }

    for id in [&alice, &bob] {
        let account = accounts.load(id).await?;
        println!(
            "{id}: owner {}, balance {}, version {}",
            account.state.owner.as_deref().unwrap_or("-"),
            account.state.balance,
            account.version
        );
    }
    let before = accounts.load_at(&alice, 2).await?;
    println!(
        "{alice} at version 2 had a balance of {}",
        before.state.balance
    );
    Ok(())
}
