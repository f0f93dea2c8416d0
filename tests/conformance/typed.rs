//! Typed projections, written once for every backend: decoded, upcast
//! events of the declared types only, with their envelope; several event
//! enums in one projection; a rebuild that cannot reset refuses.

use std::marker::PhantomData;
use std::sync::Mutex;

use es::DomainEvent;
use es::aggregate::projection::{
    Envelope, HandlerError, Projection, ProjectionError, ProjectionProcessor, Typed,
    TypedProjection,
};
use es::store::{EventStore, ExpectedVersion, Metadata};

use super::unit::{OrderEvent, StockEvent};
use crate::support::Fixture;
use crate::support::fixture::Handled;

/// An account event whose `Deposited` was renamed and reshaped: version 1
/// payloads (`{"value": n}`) are upcast when read.
#[derive(Debug, Clone, PartialEq, DomainEvent)]
#[event(bounded_context = "Billing", aggregate_type = "Account")]
pub enum AccountEvent {
    Opened {
        owner: String,
    },
    #[event(name = "MoneyDeposited", version = 2, upcast(from = 1, with = deposited_v1))]
    Deposited {
        amount: i64,
    },
}

fn deposited_v1(mut payload: serde_json::Value) -> serde_json::Value {
    if let Some(value) = payload.as_object_mut().and_then(|p| p.remove("value")) {
        payload["amount"] = value;
    }
    payload
}

es::event_set! {
    #[derive(Debug)]
    pub enum ShopEvent {
        Order(OrderEvent),
        Stock(StockEvent),
    }
}

/// Records what it handles in the fixture's read model and in memory.
pub struct TypedRecorder<F, E> {
    name: &'static str,
    seen: Mutex<Vec<(String, i64, String)>>,
    fixture: PhantomData<fn() -> (F, E)>,
}

impl<F, E> TypedRecorder<F, E> {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            seen: Mutex::new(Vec::new()),
            fixture: PhantomData,
        }
    }

    fn seen(&self) -> Vec<(String, i64, String)> {
        self.seen.lock().unwrap().clone()
    }
}

/// What an event says, for the assertions.
pub trait Describe {
    fn describe(&self) -> String;
}

impl Describe for AccountEvent {
    fn describe(&self) -> String {
        format!("{self:?}")
    }
}

impl Describe for ShopEvent {
    fn describe(&self) -> String {
        match self {
            ShopEvent::Order(e) => format!("order {e:?}"),
            ShopEvent::Stock(e) => format!("stock {e:?}"),
        }
    }
}

impl<F: Fixture, E: es::aggregate::projection::EventSet + Describe> TypedProjection<F::Db>
    for TypedRecorder<F, E>
{
    type Events = E;

    fn name(&self) -> &str {
        self.name
    }

    async fn handle(
        &self,
        tx: &mut <F::Db as sqlx::Database>::Connection,
        event: Envelope<'_, E>,
    ) -> Result<(), HandlerError> {
        F::record(
            tx,
            &Handled {
                event_id: event.event_id(),
                global_position: event.position(),
                aggregate_id: event.aggregate_id().to_owned(),
                aggregate_version: event.version(),
                worker: self.name.to_owned(),
            },
        )
        .await?;
        self.seen.lock().unwrap().push((
            event.aggregate_id().to_owned(),
            event.version(),
            event.event.describe(),
        ));
        Ok(())
    }
}

async fn append<F: Fixture>(db: &F, event: es::store::Event) {
    let mut conn = db.pool().acquire().await.unwrap();
    db.store()
        .append(&mut *conn, ExpectedVersion::Any, vec![event])
        .await
        .unwrap();
}

pub async fn a_typed_projection_gets_its_types_decoded_and_upcast<F: Fixture>() {
    let db = F::create().await;
    db.create_read_model().await;
    let none = Metadata::default();
    let correlation = uuid::Uuid::now_v7();
    append(
        &db,
        AccountEvent::Opened { owner: "A".into() }
            .to_event("acc-1", &Metadata::new().with_correlation_id(correlation))
            .unwrap(),
    )
    .await;
    // another aggregate type in between: never handed to the account
    // projection (before typed projections it stopped on it)
    append(
        &db,
        OrderEvent::Placed { units: 2 }
            .to_event("order-1", &none)
            .unwrap(),
    )
    .await;
    // a version-1 payload, stored before the rename
    let old = es::store::Event::new(
        "Billing",
        "Account",
        "acc-1",
        "MoneyDeposited",
        &serde_json::json!({"value": 7}),
    )
    .unwrap();
    append(&db, old).await;
    append(
        &db,
        StockEvent::Reserved {
            order: "order-1".into(),
            units: 2,
        }
        .to_event("sku-1", &none)
        .unwrap(),
    )
    .await;

    let accounts = std::sync::Arc::new(Typed(TypedRecorder::<F, AccountEvent>::new(
        "typed-accounts",
    )));
    let processor =
        ProjectionProcessor::shared(db.store().clone(), db.pool().clone(), accounts.clone());
    assert_eq!(
        Projection::<F::Db>::filter(&*accounts).bounded_contexts(),
        ["Billing"]
    );
    let done = processor.catch_up().await.unwrap();
    assert_eq!(done.events, 2, "the filter ran in the database");
    assert_eq!(
        accounts.seen(),
        [
            ("acc-1".into(), 1, "Opened { owner: \"A\" }".into()),
            ("acc-1".into(), 2, "Deposited { amount: 7 }".into()),
        ]
    );

    let shop = std::sync::Arc::new(Typed(TypedRecorder::<F, ShopEvent>::new("typed-shop")));
    ProjectionProcessor::shared(db.store().clone(), db.pool().clone(), shop.clone())
        .catch_up()
        .await
        .unwrap();
    assert_eq!(
        shop.seen(),
        [
            ("order-1".into(), 1, "order Placed { units: 2 }".into()),
            (
                "sku-1".into(),
                1,
                "stock Reserved { order: \"order-1\", units: 2 }".into()
            ),
        ]
    );
    assert_eq!(db.handled().await.len(), 4);
    db.finish().await;
}

pub async fn a_rebuild_without_reset_refuses_and_changes_nothing<F: Fixture>() {
    let db = F::create().await;
    db.create_read_model().await;
    append(
        &db,
        AccountEvent::Opened { owner: "A".into() }
            .to_event("acc-1", &Metadata::default())
            .unwrap(),
    )
    .await;
    let processor = ProjectionProcessor::typed(
        db.store().clone(),
        db.pool().clone(),
        TypedRecorder::<F, AccountEvent>::new("no-reset"),
    );
    processor.catch_up().await.unwrap();
    let error = processor.rebuild().await.unwrap_err();
    assert!(
        matches!(&error, ProjectionError::NoReset { projection } if projection == "no-reset"),
        "{error:?}"
    );
    assert!(error.to_string().contains("does not implement `reset`"));
    let status = processor.status().await.unwrap();
    assert_eq!(
        status.checkpoint, status.head,
        "the checkpoint did not move"
    );
    assert_eq!(db.handled().await.len(), 1, "the read model was left alone");
    db.finish().await;
}

/// Counts the events it handles, for a test to wait on.
pub struct Counting<F> {
    handled: tokio::sync::watch::Sender<u64>,
    fixture: PhantomData<fn() -> F>,
}

impl<F: Fixture> TypedProjection<F::Db> for Counting<F> {
    type Events = super::repository::bank::AccountEvent;

    fn name(&self) -> &str {
        "counting"
    }

    async fn handle(
        &self,
        _tx: &mut <F::Db as sqlx::Database>::Connection,
        _event: Envelope<'_, super::repository::bank::AccountEvent>,
    ) -> Result<(), HandlerError> {
        self.handled.send_modify(|n| *n += 1);
        Ok(())
    }
}

/// Waits until `count` events were handled; a minute is plenty even on a
/// loaded machine, and far below the hour-long polling interval.
async fn handled(seen: &mut tokio::sync::watch::Receiver<u64>, count: u64) {
    tokio::time::timeout(
        std::time::Duration::from_secs(60),
        seen.wait_for(|n| *n >= count),
    )
    .await
    .expect("woken by the append, not by polling")
    .unwrap();
}

pub async fn run_follows_appends_of_this_process_live<F: Fixture>() {
    use super::repository::bank;
    let db = F::create().await;
    let (counter, mut seen) = tokio::sync::watch::channel(0);
    let processor = std::sync::Arc::new(
        ProjectionProcessor::typed(
            db.store().clone(),
            db.pool().clone(),
            Counting::<F> {
                handled: counter,
                fixture: PhantomData,
            },
        )
        // only a wakeup can explain a prompt handling
        .with_poll_interval(std::time::Duration::from_secs(3600)),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = {
        let processor = processor.clone();
        tokio::spawn(async move {
            processor
                .run(async {
                    let _ = stopped.await;
                })
                .await
        })
    };
    // through the repository (an append that commits by itself), 20 times
    let accounts =
        es::Repository::<bank::Account, F::Store>::new(db.store().clone(), db.pool().clone());
    let mut latencies = Vec::new();
    for n in 0..20u64 {
        let started = std::time::Instant::now();
        let command = if n == 0 {
            bank::AccountCommand::Open { owner: "A".into() }
        } else {
            bank::AccountCommand::Deposit { amount: 1 }
        };
        accounts.execute("acc-1", &command).await.unwrap();
        handled(&mut seen, n + 1).await;
        latencies.push(started.elapsed());
    }
    // a unit of work's commit
    let accounts_ref = &accounts;
    accounts
        .unit_of_work()
        .run(move |work| async move {
            work.execute(
                accounts_ref,
                "acc-1",
                &bank::AccountCommand::Deposit { amount: 1 },
            )
            .await?;
            Ok(())
        })
        .await
        .unwrap();
    handled(&mut seen, 21).await;
    // a transaction of the caller's (begun for reading then writing, as
    // SQLite needs while the processor writes too), which says it committed
    let mut tx = db.store().begin_write(db.pool()).await.unwrap();
    accounts
        .execute_in(
            &mut *tx,
            "acc-1",
            &bank::AccountCommand::Deposit { amount: 1 },
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    db.store().notify_committed();
    handled(&mut seen, 22).await;
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    latencies.sort();
    println!(
        "{}: append to handled, p50 {:?}, max {:?} (20 commands)",
        std::any::type_name::<F>(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
    db.finish().await;
}

pub async fn status_gives_the_lag_in_events_and_time_and_says_when_stalled<F: Fixture>() {
    let db = F::create().await;
    db.create_read_model().await;
    let mut old = AccountEvent::Opened { owner: "A".into() }
        .to_event("acc-1", &Metadata::default())
        .unwrap();
    old.created_at -= chrono::Duration::seconds(120);
    let created = old.created_at;
    append(&db, old).await;
    append(
        &db,
        AccountEvent::Deposited { amount: 1 }
            .to_event("acc-1", &Metadata::default())
            .unwrap(),
    )
    .await;
    let processor = ProjectionProcessor::typed(
        db.store().clone(),
        db.pool().clone(),
        TypedRecorder::<F, AccountEvent>::new("status"),
    )
    .with_partitions(3);
    let behind = processor.status().await.unwrap();
    assert_eq!((behind.lag, behind.partitions.len()), (2, 3));
    assert_eq!(behind.oldest_pending, Some(created));
    assert!(behind.lag_time >= std::time::Duration::from_secs(120));
    assert!(behind.is_stalled(std::time::Duration::from_secs(60)));
    processor.catch_up().await.unwrap();
    let current = processor.status().await.unwrap();
    assert_eq!((current.lag, current.oldest_pending), (0, None));
    assert!(!current.is_stalled(std::time::Duration::from_secs(60)));
    db.finish().await;
}
