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
