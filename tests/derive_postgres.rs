//! Schema evolution end to end through PostgreSQL: events stored with
//! version 1 payloads still load after the event type has changed, through
//! the upcasts the derived enum declares.

mod support;

use es::DomainEvent;
use es::store::{
    AggregateStreamReader, DecodeError, Event, EventReader, EventStore, ExpectedVersion, Metadata,
    PersistedEvent,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use support::TestDb;

/// The events as the first release wrote them.
mod release_1 {
    use es::DomainEvent;

    #[derive(Debug, Clone, PartialEq, DomainEvent)]
    #[event(bounded_context = "Billing", aggregate_type = "Account")]
    pub(crate) enum AccountEvent {
        Opened {
            owner: String,
        },
        #[event(name = "MoneyDeposited")]
        Deposited {
            cents: i64,
        },
        Closed,
    }
}

/// The events now.
///
/// `MoneyDeposited`: v1 `{"cents": 1500}`; v2 `{"amount_cents": 1500,
/// "currency": "EUR"}` (money got a currency); v3 `{"amount": {"cents": 1500,
/// "currency": "EUR"}}`.
///
/// `Opened`: v1 `{"owner": "alice"}`; v2 adds the owner's `tier`.
mod current {
    use super::{Money, Value, json};
    use es::DomainEvent;

    pub(crate) fn deposited_v1_to_v2(payload: Value) -> Value {
        json!({ "amount_cents": payload["cents"], "currency": "EUR" })
    }

    pub(crate) fn deposited_v2_to_v3(payload: Value) -> Value {
        json!({ "amount": { "cents": payload["amount_cents"], "currency": payload["currency"] } })
    }

    pub(crate) fn opened_v1_to_v2(mut payload: Value) -> Value {
        payload["tier"] = json!("standard");
        payload
    }

    #[derive(Debug, Clone, PartialEq, DomainEvent)]
    #[event(bounded_context = "Billing", aggregate_type = "Account")]
    pub(crate) enum AccountEvent {
        #[event(version = 2, upcast(from = 1, with = opened_v1_to_v2))]
        Opened {
            owner: String,
            tier: String,
        },
        #[event(
            name = "MoneyDeposited",
            version = 3,
            upcast(from = 1, with = deposited_v1_to_v2),
            upcast(from = 2, with = deposited_v2_to_v3)
        )]
        Deposited {
            amount: Money,
        },
        Closed,
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Money {
    cents: i64,
    currency: String,
}

use current::AccountEvent;

fn raw(value: Value) -> Box<RawValue> {
    serde_json::value::to_raw_value(&value).unwrap()
}

/// A store event as the first release wrote it, by hand.
fn v1_event(id: &str, event_type: &str, payload: Value) -> Event {
    Event::from_raw("Billing", "Account", id, event_type, raw(payload)).with_event_version(1)
}

async fn append(db: &TestDb, events: Vec<Event>) {
    let mut conn = db.pool.acquire().await.unwrap();
    db.store
        .append(&mut conn, ExpectedVersion::Any, events)
        .await
        .unwrap();
}

async fn load(db: &TestDb, id: &str) -> Vec<PersistedEvent> {
    let mut conn = db.pool.acquire().await.unwrap();
    db.store
        .read_aggregate_stream(&mut conn, ("Billing", "Account", id), ..)
        .await
        .unwrap()
        .events
}

fn deposited(cents: i64, currency: &str) -> AccountEvent {
    AccountEvent::Deposited {
        amount: Money {
            cents,
            currency: currency.to_owned(),
        },
    }
}

#[tokio::test]
async fn version_1_payloads_load_through_the_upcasts_after_the_type_changed() {
    let db = TestDb::new().await;

    // Release 1 wrote these: some by hand, some through its derived enum.
    append(
        &db,
        vec![
            v1_event("acc-1", "Opened", json!({"owner": "alice"})),
            v1_event("acc-1", "MoneyDeposited", json!({"cents": 1500})),
        ],
    )
    .await;
    let release_1_events = release_1::AccountEvent::to_events(
        &[
            release_1::AccountEvent::Deposited { cents: 250 },
            release_1::AccountEvent::Closed,
        ],
        "acc-1",
        &Metadata::new(),
    )
    .unwrap();
    assert!(release_1_events.iter().all(|e| e.event_version == 1));
    append(&db, release_1_events).await;

    // A version 2 deposit, written by a release in between.
    append(
        &db,
        vec![
            Event::from_raw(
                "Billing",
                "Account",
                "acc-1",
                "MoneyDeposited",
                raw(json!({"amount_cents": 70, "currency": "NOK"})),
            )
            .with_event_version(2),
        ],
    )
    .await;

    // And the current release appends at the current versions.
    append(
        &db,
        AccountEvent::to_events(&[deposited(5, "SEK")], "acc-1", &Metadata::new()).unwrap(),
    )
    .await;

    let stored = load(&db, "acc-1").await;
    assert_eq!(
        stored
            .iter()
            .map(|e| (e.event_type.as_str(), e.event_version))
            .collect::<Vec<_>>(),
        [
            ("Opened", 1),
            ("MoneyDeposited", 1),
            ("MoneyDeposited", 1),
            ("Closed", 1),
            ("MoneyDeposited", 2),
            ("MoneyDeposited", 3),
        ],
        "the store keeps what was written; upcasting happens on load"
    );

    let loaded: Vec<AccountEvent> = stored
        .iter()
        .map(AccountEvent::from_persisted)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        loaded,
        [
            AccountEvent::Opened {
                owner: "alice".to_owned(),
                tier: "standard".to_owned(),
            },
            deposited(1500, "EUR"),
            deposited(250, "EUR"),
            AccountEvent::Closed,
            deposited(70, "NOK"),
            deposited(5, "SEK"),
        ]
    );

    // The global feed decodes the same way.
    let mut conn = db.pool.acquire().await.unwrap();
    let feed = db.store.read_events(&mut conn, 0, 100).await.unwrap();
    let from_feed: Vec<AccountEvent> = feed
        .iter()
        .map(AccountEvent::from_persisted)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(from_feed, loaded);
    drop(conn);

    db.drop().await;
}

#[tokio::test]
async fn stored_events_the_code_cannot_read_are_typed_errors() {
    let db = TestDb::new().await;
    append(
        &db,
        vec![
            // Written by a newer release.
            Event::from_raw(
                "Billing",
                "Account",
                "acc-2",
                "MoneyDeposited",
                raw(json!({"amount": {"cents": 1, "currency": "EUR"}, "memo": "x"})),
            )
            .with_event_version(4),
            // A type this release does not know.
            v1_event("acc-2", "Frozen", json!({})),
            // A v1 payload the upcasts cannot make sense of.
            v1_event("acc-2", "MoneyDeposited", json!({"cents": "lots"})),
        ],
    )
    .await;
    let stored = load(&db, "acc-2").await;

    let newer = AccountEvent::from_persisted(&stored[0]).unwrap_err();
    assert!(
        matches!(&newer, DecodeError::UnsupportedVersion { event_type, version: 4, current: 3 } if event_type == "MoneyDeposited"),
        "{newer:?}"
    );
    let unknown = AccountEvent::from_persisted(&stored[1]).unwrap_err();
    assert!(
        matches!(&unknown, DecodeError::UnknownEventType { event_type, .. } if event_type == "Frozen"),
        "{unknown:?}"
    );
    let unfit = AccountEvent::from_persisted(&stored[2]).unwrap_err();
    assert!(
        matches!(
            &unfit,
            DecodeError::InvalidPayload { version: 1, upcast_to: Some(3), field: Some(field), .. }
                if field == "amount.cents"
        ),
        "{unfit:?}"
    );
    assert_eq!(
        unfit.to_string(),
        "payload of event `MoneyDeposited` version 1 (upcast to version 3) does not fit at `amount.cents`: invalid type: string \"lots\", expected i64"
    );

    db.drop().await;
}
