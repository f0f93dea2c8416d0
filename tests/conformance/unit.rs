//! Units of work, written once for every backend: commands on several
//! aggregates committed together, run again on conflicts, refusals typed
//! across aggregates, idempotent units.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use es::aggregate::{UnitOfWork, WorkError};
use es::store::{CommandId, EventStore, Metadata};
use es::{Aggregate, DomainEvent, Repository, RetryPolicy};

use super::repository::bank::{Account, AccountCommand, AccountError};
use crate::support::Fixture;
use crate::support::fixture::Handled;

#[derive(Debug, Clone, PartialEq, DomainEvent)]
#[event(bounded_context = "Shop", aggregate_type = "Stock")]
pub enum StockEvent {
    Stocked { units: u32 },
    Reserved { order: String, units: u32 },
}

#[derive(Debug, Default)]
pub struct Stock {
    pub left: i64,
    /// The lowest `left` ever was after an event.
    pub lowest: i64,
}

pub enum StockCommand {
    Restock(u32),
    Reserve { order: String, units: u32 },
}

#[derive(Debug, PartialEq, thiserror::Error)]
#[error("out of stock: {left} left, {asked} asked")]
pub struct OutOfStock {
    pub left: i64,
    pub asked: u32,
}

impl Aggregate for Stock {
    type Event = StockEvent;
    type Command = StockCommand;
    type Error = OutOfStock;

    fn apply(&mut self, event: &StockEvent) {
        match event {
            StockEvent::Stocked { units } => self.left += i64::from(*units),
            StockEvent::Reserved { units, .. } => self.left -= i64::from(*units),
        }
        self.lowest = self.lowest.min(self.left);
    }

    fn handle(&self, command: &StockCommand) -> Result<Vec<StockEvent>, OutOfStock> {
        match command {
            StockCommand::Restock(units) => Ok(vec![StockEvent::Stocked { units: *units }]),
            StockCommand::Reserve { units, .. } if i64::from(*units) > self.left => {
                Err(OutOfStock {
                    left: self.left,
                    asked: *units,
                })
            }
            StockCommand::Reserve { order, units } => Ok(vec![StockEvent::Reserved {
                order: order.clone(),
                units: *units,
            }]),
        }
    }
}

#[derive(Debug, Clone, PartialEq, DomainEvent)]
#[event(bounded_context = "Shop", aggregate_type = "Order")]
pub enum OrderEvent {
    Placed { units: u32 },
    Confirmed,
}

#[derive(Debug, Default)]
pub struct Order {
    pub units: u32,
    pub placed: bool,
    pub confirmed: bool,
}

pub enum OrderCommand {
    Place(u32),
    Confirm,
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum OrderError {
    #[error("the order was not placed")]
    NotPlaced,
    #[error("the order is confirmed already")]
    AlreadyConfirmed,
}

impl Aggregate for Order {
    type Event = OrderEvent;
    type Command = OrderCommand;
    type Error = OrderError;

    fn apply(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::Placed { units } => {
                self.units = *units;
                self.placed = true;
            }
            OrderEvent::Confirmed => self.confirmed = true,
        }
    }

    fn handle(&self, command: &OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        match command {
            OrderCommand::Place(units) => Ok(vec![OrderEvent::Placed { units: *units }]),
            OrderCommand::Confirm if !self.placed => Err(OrderError::NotPlaced),
            OrderCommand::Confirm if self.confirmed => Err(OrderError::AlreadyConfirmed),
            OrderCommand::Confirm => Ok(vec![OrderEvent::Confirmed]),
        }
    }
}

/// Confirms an order and reserves its units, in one unit of work; returns
/// the run that committed.
async fn confirm_order<S>(
    unit: &UnitOfWork<S>,
    orders: &Repository<Order, S>,
    stock: &Repository<Stock, S>,
    order: &str,
) -> Result<u32, WorkError>
where
    S: es::store::Store,
{
    unit.run(move |work| async move {
        // The order first, so that its events are in the transaction when
        // the stock refuses and all of it is rolled back.
        let confirmed = work.execute(orders, order, &OrderCommand::Confirm).await?;
        let units = confirmed.state.units;
        let reserve = StockCommand::Reserve {
            order: order.to_owned(),
            units,
        };
        work.execute(stock, "sku-1", &reserve).await?;
        Ok(work.attempt())
    })
    .await
}

pub async fn twenty_orders_race_for_ten_units_through_the_unit_of_work<F: Fixture>() {
    let db = F::create().await;
    let orders = Repository::<Order, F::Store>::new(db.store().clone(), db.pool().clone());
    let stock = Repository::<Stock, F::Store>::new(db.store().clone(), db.pool().clone());
    stock
        .execute("sku-1", &StockCommand::Restock(10))
        .await
        .unwrap();
    for n in 0..20 {
        orders
            .execute(&format!("order-{n}"), &OrderCommand::Place(1))
            .await
            .unwrap();
    }
    let unit = Arc::new(orders.unit_of_work());
    let (orders, stock) = (Arc::new(orders), Arc::new(stock));
    let start = Arc::new(tokio::sync::Barrier::new(20));
    let tasks: Vec<_> = (0..20)
        .map(|n| {
            let (unit, orders, stock, start) =
                (unit.clone(), orders.clone(), stock.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                let order = format!("order-{n}");
                (
                    order.clone(),
                    confirm_order(&unit, &orders, &stock, &order).await,
                )
            })
        })
        .collect();
    let (mut confirmed, mut refused, mut runs) = (Vec::new(), 0, 0);
    for task in tasks {
        let (order, outcome) = task.await.unwrap();
        match outcome {
            Ok(attempt) => {
                runs += attempt;
                confirmed.push(order);
            }
            Err(error) => {
                assert!(
                    !error.is_conflict(),
                    "a conflict reached the caller: {error}"
                );
                let refusal = error
                    .rejection::<OutOfStock>()
                    .unwrap_or_else(|| panic!("expected out of stock, got {error:?}"));
                assert_eq!(refusal.left, 0);
                refused += 1;
            }
        }
    }
    assert_eq!((confirmed.len(), refused), (10, 10));
    let sku = stock.load("sku-1").await.unwrap();
    assert_eq!((sku.state.left, sku.state.lowest), (0, 0));
    assert_eq!(sku.version, 11);
    for n in 0..20 {
        let order = format!("order-{n}");
        let state = orders.load(&order).await.unwrap().state;
        // a refused unit left nothing, not even the order's confirmation
        assert_eq!(state.confirmed, confirmed.contains(&order), "{order}");
    }
    println!(
        "{}: 10 of 20 orders confirmed in {runs} runs of their units",
        std::any::type_name::<F>()
    );
    db.finish().await;
}

pub async fn a_unit_commits_all_or_nothing_and_types_every_refusal<F: Fixture>() {
    let db = F::create().await;
    db.create_read_model().await;
    let accounts = Repository::<Account, F::Store>::new(db.store().clone(), db.pool().clone());
    open_a_and_b(&accounts).await;
    accounts
        .execute("a", &AccountCommand::Deposit { amount: 100 })
        .await
        .unwrap();
    let unit = accounts.unit_of_work();
    let transfer = |amount: i64| {
        let accounts = &accounts;
        unit.run(move |work| async move {
            // the credit first: it must vanish when the debit is refused
            work.execute(accounts, "b", &AccountCommand::Deposit { amount })
                .await?;
            work.execute(accounts, "a", &AccountCommand::Withdraw { amount })
                .await?;
            let mut conn = work.conn().await?;
            F::record(&mut conn, &audit_row()).await?;
            Ok(())
        })
    };

    transfer(30).await.unwrap();
    let error = transfer(1_000).await.unwrap_err();
    assert!(error.is_rejected() && !error.is_conflict() && error.outcome_known());
    assert_eq!(
        error.rejection::<AccountError>(),
        Some(&AccountError::InsufficientFunds {
            balance: 70,
            asked: 1_000
        })
    );
    assert!(error.rejection::<OutOfStock>().is_none());
    assert_eq!(accounts.load("a").await.unwrap().state.balance, 70);
    let b = accounts.load("b").await.unwrap();
    assert_eq!((b.state.balance, b.version), (30, 2));
    assert_eq!(
        db.handled().await.len(),
        1,
        "the refused unit's own row is rolled back"
    );

    // a refusal of the closure's own, and an error of its own, end the unit
    let runs = AtomicU32::new(0);
    let runs_ref = &runs;
    let error = unit
        .run(move |_work| async move {
            runs_ref.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(WorkError::reject(OutOfStock { left: 0, asked: 1 }))
        })
        .await
        .unwrap_err();
    assert!(error.rejection::<OutOfStock>().is_some());
    assert_eq!(runs.load(Ordering::SeqCst), 1, "a refusal is not run again");
    db.finish().await;
}

/// Opens accounts `a` and `b`.
async fn open_a_and_b<S: es::store::Store>(accounts: &Repository<Account, S>) {
    for id in ["a", "b"] {
        accounts
            .execute(
                id,
                &AccountCommand::Open {
                    owner: id.to_owned(),
                },
            )
            .await
            .unwrap();
    }
}

/// A deposit into account `a`, appended by the test itself.
fn deposit_to_a(amount: i64) -> es::store::Event {
    es::store::Event::new(
        "Billing",
        "Account",
        "a",
        "Deposited",
        &serde_json::json!({ "amount": amount }),
    )
    .unwrap()
}

fn audit_row() -> Handled {
    Handled {
        event_id: uuid::Uuid::new_v4(),
        global_position: 0,
        aggregate_id: "transfer".into(),
        aggregate_version: 0,
        worker: "unit".into(),
    }
}

pub async fn a_conflicting_unit_runs_again_whole_on_fresh_state<F: Fixture>() {
    let db = F::create().await;
    let accounts = Repository::<Account, F::Store>::new(db.store().clone(), db.pool().clone())
        .with_retry_policy(RetryPolicy::immediate(3).with_lock_on_retry(false));
    open_a_and_b(&accounts).await;
    let unit = accounts.unit_of_work();
    let interfered = AtomicU32::new(0);
    let pool = db.pool().clone();
    let store = db.store().clone();
    let (accounts_ref, interfered_ref, pool, store) = (&accounts, &interfered, &pool, &store);
    let outcome = unit
        .run(move |work| async move {
            // Twice, another writer moves `a` between this run's read of
            // it and its append (on SQLite, one writer at a time, it would
            // wait for the unit: there is no conflict to make).
            let a = work.load(accounts_ref, "a").await?;
            if !F::SINGLE_WRITER && interfered_ref.fetch_add(1, Ordering::SeqCst) < 2 {
                let event = deposit_to_a(1);
                let mut conn = pool.acquire().await.unwrap();
                store
                    .append(
                        &mut *conn,
                        es::store::ExpectedVersion::Exact(a.version),
                        vec![event],
                    )
                    .await
                    .unwrap();
            }
            let b = work
                .execute(accounts_ref, "b", &AccountCommand::Deposit { amount: 5 })
                .await?;
            let event = deposit_to_a(10);
            let mut conn = work.conn().await?;
            store
                .append(
                    &mut conn,
                    es::store::ExpectedVersion::Exact(a.version),
                    vec![event],
                )
                .await?;
            Ok((work.attempt(), b.version))
        })
        .await
        .unwrap();
    let runs = if F::SINGLE_WRITER { 1 } else { 3 };
    // b's deposit of the conflicting runs was rolled back with them
    assert_eq!(outcome, (runs, 2));
    let a = accounts.load("a").await.unwrap();
    let interfering = if F::SINGLE_WRITER { 0 } else { 2 };
    assert_eq!(a.state.balance, 10 + interfering);
    assert_eq!(accounts.load("b").await.unwrap().state.balance, 5);

    // out of runs: a conflict with the runs made
    if !F::SINGLE_WRITER {
        let interfered = AtomicU32::new(0);
        let interfered_ref = &interfered;
        let error = accounts
            .unit_of_work()
            .with_retry_policy(RetryPolicy::immediate(2).with_lock_on_retry(false))
            .run(move |work| async move {
                let a = work.load(accounts_ref, "a").await?;
                interfered_ref.fetch_add(1, Ordering::SeqCst);
                accounts_ref
                    .execute("a", &AccountCommand::Deposit { amount: 1 })
                    .await?;
                let event = deposit_to_a(10);
                let mut conn = work.conn().await?;
                store
                    .append(
                        &mut conn,
                        es::store::ExpectedVersion::Exact(a.version),
                        vec![event],
                    )
                    .await?;
                Ok(())
            })
            .await
            .unwrap_err();
        assert!(
            matches!(error, WorkError::Conflict { attempts: 2, .. }),
            "{error:?}"
        );
        assert_eq!(interfered.load(Ordering::SeqCst), 2);
    }
    db.finish().await;
}

pub async fn an_idempotent_unit_returns_its_original_outcome<F: Fixture>() {
    let db = F::create().await;
    let accounts = Repository::<Account, F::Store>::new(db.store().clone(), db.pool().clone());
    open_a_and_b(&accounts).await;
    accounts
        .execute("a", &AccountCommand::Deposit { amount: 100 })
        .await
        .unwrap();
    let unit = accounts.unit_of_work();
    let accounts_ref = &accounts;
    let transfer = |key: &'static str| {
        let metadata = Metadata::new().with_command_id(CommandId::from_key(key));
        let unit = &unit;
        async move {
            unit.run_with(&metadata, move |work| async move {
                let debit = work
                    .execute(accounts_ref, "a", &AccountCommand::Withdraw { amount: 30 })
                    .await?;
                let credit = work
                    .execute(accounts_ref, "b", &AccountCommand::Deposit { amount: 30 })
                    .await?;
                Ok((
                    work.replayed(),
                    debit.global_positions,
                    credit.global_positions,
                ))
            })
            .await
        }
    };
    let (replayed, debit, credit) = transfer("transfer-1").await.unwrap();
    assert!(!replayed);
    // the accounts move on; the same key again changes nothing
    accounts
        .execute("b", &AccountCommand::Deposit { amount: 1 })
        .await
        .unwrap();
    let heads = db.event_rows().await;
    let again = transfer("transfer-1").await.unwrap();
    assert_eq!(again, (true, debit, credit));
    assert_eq!(db.event_rows().await, heads);
    assert_eq!(accounts.load("a").await.unwrap().state.balance, 70);
    assert_eq!(accounts.load("b").await.unwrap().state.balance, 31);
    // another key is another transfer
    let (replayed, ..) = transfer("transfer-2").await.unwrap();
    assert!(!replayed);
    assert_eq!(accounts.load("a").await.unwrap().state.balance, 40);
    db.finish().await;
}
