//! `#[derive(DomainEvent)]`: payloads of every variant shape, serde field
//! attributes, generic payloads, typed decode errors, upcast chains, and the
//! conversion to store events and back.

use es::store::{Event, Metadata, PersistedEvent};
use es::{DecodeError, DomainEvent, EventTypeInfo};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Currency {
    Eur,
    Nok,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Withdrawal {
    amount: i64,
    reference: String,
}

/// Amounts stored as decimal strings, as a `with` module.
mod amount_as_string {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(amount: &i64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(amount)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

fn default_fee() -> i64 {
    25
}

/// A pair stored as `{"name": .., "count": ..}`, as a `with` module for a
/// newtype variant's field.
mod pair_as_object {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Pair {
        name: String,
        count: i64,
    }

    pub(crate) fn serialize<S: Serializer>(
        (name, count): &(String, i64),
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        Pair {
            name: name.clone(),
            count: *count,
        }
        .serialize(serializer)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<(String, i64), D::Error> {
        let pair = Pair::deserialize(deserializer)?;
        Ok((pair.name, pair.count))
    }
}

#[derive(Debug, Clone, PartialEq, DomainEvent)]
#[event(bounded_context = "Billing", aggregate_type = "Account")]
enum AccountEvent {
    Opened {
        owner: String,
        currency: Currency,
    },
    #[event(name = "MoneyDeposited", version = 2)]
    Deposited {
        amount: i64,
    },
    Withdrawn(Withdrawal),
    Closed,
    Frozen {},
    Charged {
        #[serde(rename = "chargedAmount", alias = "charge")]
        amount: i64,
        #[serde(default = "default_fee")]
        fee: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
        #[serde(with = "amount_as_string")]
        limit: i64,
    },
    Tagged(#[serde(with = "pair_as_object")] (String, i64)),
    Annotated {
        id: u32,
        #[serde(flatten)]
        extra: std::collections::BTreeMap<String, Value>,
    },
    r#Reopened,
}

fn raw(value: Value) -> Box<RawValue> {
    serde_json::value::to_raw_value(&value).unwrap()
}

fn raw_text(text: &str) -> Box<RawValue> {
    RawValue::from_string(text.to_owned()).unwrap()
}

/// Encodes, checks the payload text, decodes at the event's own type and
/// version, and checks the result is the event again.
fn round_trip<E: DomainEvent + PartialEq + std::fmt::Debug>(event: &E, payload: &str) {
    let encoded = event.encode().unwrap();
    assert_eq!(encoded.get(), payload);
    let decoded = E::decode(event.event_type(), event.event_version(), &encoded).unwrap();
    assert_eq!(&decoded, event);
}

#[test]
fn constants_name_the_aggregate_and_every_event_type() {
    assert_eq!(AccountEvent::BOUNDED_CONTEXT, "Billing");
    assert_eq!(AccountEvent::AGGREGATE_TYPE, "Account");
    assert_eq!(
        AccountEvent::EVENT_TYPES,
        &[
            EventTypeInfo::new("Opened", 1),
            EventTypeInfo::new("MoneyDeposited", 2),
            EventTypeInfo::new("Withdrawn", 1),
            EventTypeInfo::new("Closed", 1),
            EventTypeInfo::new("Frozen", 1),
            EventTypeInfo::new("Charged", 1),
            EventTypeInfo::new("Tagged", 1),
            EventTypeInfo::new("Annotated", 1),
            EventTypeInfo::new("Reopened", 1),
        ]
    );
    let deposited = AccountEvent::Deposited { amount: 1 };
    assert_eq!(deposited.event_type(), "MoneyDeposited");
    assert_eq!(deposited.event_version(), 2);
    assert_eq!(AccountEvent::Closed.event_type(), "Closed");
    assert_eq!(AccountEvent::r#Reopened.event_type(), "Reopened");
    assert_eq!(AccountEvent::Closed.event_version(), 1);
}

#[test]
fn struct_variants_are_their_fields_as_an_object() {
    round_trip(
        &AccountEvent::Opened {
            owner: "alice".to_owned(),
            currency: Currency::Nok,
        },
        r#"{"owner":"alice","currency":"Nok"}"#,
    );
    round_trip(&AccountEvent::Deposited { amount: -7 }, r#"{"amount":-7}"#);
}

#[test]
fn newtype_variants_are_the_inner_object() {
    round_trip(
        &AccountEvent::Withdrawn(Withdrawal {
            amount: 30,
            reference: "atm".to_owned(),
        }),
        r#"{"amount":30,"reference":"atm"}"#,
    );
}

#[test]
fn unit_and_empty_variants_are_an_empty_object() {
    round_trip(&AccountEvent::Closed, "{}");
    round_trip(&AccountEvent::Frozen {}, "{}");
    // Fields a later release may add are ignored.
    assert_eq!(
        AccountEvent::decode("Closed", 1, &raw(json!({"reason": "customer left"}))).unwrap(),
        AccountEvent::Closed
    );
}

#[test]
fn serde_field_attributes_apply_inside_payloads() {
    round_trip(
        &AccountEvent::Charged {
            amount: 100,
            fee: 3,
            note: None,
            limit: 500,
        },
        r#"{"chargedAmount":100,"fee":3,"limit":"500"}"#,
    );
    round_trip(
        &AccountEvent::Charged {
            amount: 100,
            fee: 3,
            note: Some("late".to_owned()),
            limit: 500,
        },
        r#"{"chargedAmount":100,"fee":3,"note":"late","limit":"500"}"#,
    );
    // On a newtype variant's field, for the whole payload.
    round_trip(
        &AccountEvent::Tagged(("vip".to_owned(), 2)),
        r#"{"name":"vip","count":2}"#,
    );
    round_trip(
        &AccountEvent::Annotated {
            id: 7,
            extra: [("colour".to_owned(), json!("red"))].into(),
        },
        r#"{"id":7,"colour":"red"}"#,
    );
    // `alias` and `default` on the way in.
    assert_eq!(
        AccountEvent::decode("Charged", 1, &raw(json!({"charge": 9, "limit": "10"}))).unwrap(),
        AccountEvent::Charged {
            amount: 9,
            fee: 25,
            note: None,
            limit: 10,
        }
    );
}

#[test]
fn unknown_fields_are_ignored() {
    assert_eq!(
        AccountEvent::decode(
            "MoneyDeposited",
            2,
            &raw(json!({"amount": 4, "channel": "web"}))
        )
        .unwrap(),
        AccountEvent::Deposited { amount: 4 }
    );
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Sku {
    code: String,
}

#[derive(Debug, Clone, PartialEq, DomainEvent)]
#[event(bounded_context = "Catalog", aggregate_type = "Listing")]
enum ListingEvent<T, Q = u32>
where
    T: Clone,
{
    Listed {
        item: T,
        quantity: Q,
    },
    Relisted(T),
    #[event(version = 2, upcast(from = 1, with = add_quantity))]
    Restocked {
        quantity: Q,
    },
    Delisted,
}

fn add_quantity(mut payload: Value) -> Value {
    payload["quantity"] = json!(1);
    payload
}

#[test]
fn generic_payloads_round_trip() {
    round_trip(
        &ListingEvent::<String>::Listed {
            item: "lamp".to_owned(),
            quantity: 2,
        },
        r#"{"item":"lamp","quantity":2}"#,
    );
    round_trip(
        &ListingEvent::<Sku, u8>::Relisted(Sku {
            code: "A-1".to_owned(),
        }),
        r#"{"code":"A-1"}"#,
    );
    round_trip(&ListingEvent::<Sku>::Delisted, "{}");
    assert_eq!(
        ListingEvent::<Sku, u64>::decode("Restocked", 1, &raw(json!({}))).unwrap(),
        ListingEvent::Restocked { quantity: 1 }
    );
}

#[test]
fn a_newtype_payload_must_be_an_object() {
    let error = ListingEvent::<String>::Relisted("lamp".to_owned())
        .encode()
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "the payload of event `Relisted` must be a JSON object, but its newtype variant's field serialized to `\"lamp\"`"
    );
    let event = ListingEvent::<String>::Relisted("lamp".to_owned());
    let error = event.to_event("l-1", &Metadata::new()).unwrap_err();
    assert!(matches!(error, es::store::Error::Serialization(_)));
}

#[test]
fn an_unknown_event_type_is_a_typed_error() {
    let error = AccountEvent::decode("Deposited", 1, &raw(json!({"amount": 1}))).unwrap_err();
    assert!(matches!(
        &error,
        DecodeError::UnknownEventType { bounded_context: "Billing", aggregate_type: "Account", event_type }
            if event_type == "Deposited"
    ));
    assert_eq!(
        error.to_string(),
        "unknown event type `Deposited` for Billing/Account"
    );
}

#[test]
fn a_newer_version_is_a_typed_error() {
    let error = AccountEvent::decode("MoneyDeposited", 3, &raw(json!({"amount": 1}))).unwrap_err();
    assert!(matches!(
        &error,
        DecodeError::UnsupportedVersion { event_type, version: 3, current: 2 } if event_type == "MoneyDeposited"
    ));
    assert_eq!(
        error.to_string(),
        "event `MoneyDeposited` has schema version 3, newer than version 2, the newest this code knows"
    );
}

#[test]
fn an_older_version_without_upcast_is_a_typed_error() {
    let error = AccountEvent::decode("MoneyDeposited", 1, &raw(json!({"amount": 1}))).unwrap_err();
    assert!(matches!(
        &error,
        DecodeError::MissingUpcast { event_type, version: 1, current: 2 } if event_type == "MoneyDeposited"
    ));
    assert_eq!(
        error.to_string(),
        "event `MoneyDeposited` has schema version 1, older than the current version 2, and no upcast from version 1 is declared"
    );
    assert!(matches!(
        AccountEvent::decode("Opened", 0, &raw(json!({}))),
        Err(DecodeError::MissingUpcast { version: 0, .. })
    ));
}

#[test]
fn a_payload_that_does_not_fit_names_type_version_and_field() {
    let error = AccountEvent::decode(
        "Opened",
        1,
        &raw_text(r#"{"owner":"alice","currency":"Usd"}"#),
    )
    .unwrap_err();
    let DecodeError::InvalidPayload {
        event_type,
        version,
        upcast_to,
        field,
        source,
    } = &error
    else {
        panic!("expected InvalidPayload, got {error:?}");
    };
    assert_eq!(
        (event_type.as_str(), *version, *upcast_to, field.as_deref()),
        ("Opened", 1, None, Some("currency"))
    );
    assert!(source.is_data());
    assert_eq!(
        error.to_string(),
        "payload of event `Opened` version 1 does not fit at `currency`: unknown variant `Usd`, expected `Eur` or `Nok` at line 1 column 33"
    );

    // A missing field is named by serde's message.
    let error = AccountEvent::decode("MoneyDeposited", 2, &raw_text("{}")).unwrap_err();
    assert_eq!(
        error.to_string(),
        "payload of event `MoneyDeposited` version 2 does not fit: missing field `amount` at line 1 column 2"
    );

    // Inside a newtype's payload, and with a renamed field.
    let error = AccountEvent::decode(
        "Withdrawn",
        1,
        &raw_text(r#"{"amount":1,"reference":false}"#),
    )
    .unwrap_err();
    assert!(
        matches!(&error, DecodeError::InvalidPayload { field: Some(f), .. } if f == "reference"),
        "{error}"
    );
    let error = AccountEvent::decode(
        "Charged",
        1,
        &raw_text(r#"{"chargedAmount":"x","limit":"1"}"#),
    )
    .unwrap_err();
    assert!(
        matches!(&error, DecodeError::InvalidPayload { field: Some(f), .. } if f == "chargedAmount"),
        "{error}"
    );

    // A payload that is not an object.
    let error = AccountEvent::decode("Closed", 1, &raw_text("null")).unwrap_err();
    assert_eq!(
        error.to_string(),
        "payload of event `Closed` version 1 does not fit: invalid type: null, expected a JSON object at line 1 column 4"
    );
    let error = AccountEvent::decode("Opened", 1, &raw_text(r#""alice""#)).unwrap_err();
    assert_eq!(
        error.to_string(),
        "payload of event `Opened` version 1 does not fit: invalid type: string \"alice\", expected the payload of event `Opened`: a JSON object at line 1 column 7"
    );
}

// Schema evolution: `Renamed` went through three payload shapes.
//   v1: {"name": "Alice Smith"}
//   v2: {"first": "Alice", "last": "Smith"}
//   v3: {"first": "Alice", "last": "Smith", "steps": [..]}   (steps record the upcasts run)
mod upcasts {
    use serde_json::{Value, json};

    pub(crate) fn split_name(payload: Value) -> Value {
        let name = payload["name"].as_str().unwrap_or_default().to_owned();
        let (first, last) = name.split_once(' ').unwrap_or((&name, ""));
        json!({ "first": first, "last": last, "steps": ["1->2"] })
    }

    pub(crate) fn record_step(mut payload: Value) -> Value {
        match payload["steps"].as_array_mut() {
            Some(steps) => steps.push(json!("2->3")),
            None => payload["steps"] = json!(["2->3"]),
        }
        payload
    }
}

#[derive(Debug, Clone, PartialEq, DomainEvent)]
#[event(bounded_context = "Crm", aggregate_type = "Customer")]
enum CustomerEvent {
    #[event(
        version = 3,
        upcast(from = 1, with = upcasts::split_name),
        upcast(from = 2, with = upcasts::record_step)
    )]
    Renamed {
        first: String,
        last: String,
        #[serde(default)]
        steps: Vec<String>,
    },
    // Only versions 2 and up still exist in the store.
    #[event(version = 3, upcast(from = 2, with = |payload| payload))]
    Moved { city: String },
    // The upcast produces what the type cannot read.
    #[event(version = 2, upcast(from = 1, with = |_| serde_json::json!({"level": "high"})))]
    Rated { level: u8 },
}

#[test]
fn upcast_chains_run_every_step_in_order() {
    let renamed = |first: &str, last: &str, steps: &[&str]| CustomerEvent::Renamed {
        first: first.to_owned(),
        last: last.to_owned(),
        steps: steps.iter().map(|s| (*s).to_owned()).collect(),
    };
    assert_eq!(
        CustomerEvent::decode("Renamed", 1, &raw(json!({"name": "Alice Smith"}))).unwrap(),
        renamed("Alice", "Smith", &["1->2", "2->3"])
    );
    assert_eq!(
        CustomerEvent::decode("Renamed", 2, &raw(json!({"first": "Bo", "last": "Ek"}))).unwrap(),
        renamed("Bo", "Ek", &["2->3"])
    );
    assert_eq!(
        CustomerEvent::decode("Renamed", 3, &raw(json!({"first": "Cy", "last": "Li"}))).unwrap(),
        renamed("Cy", "Li", &[])
    );
    assert_eq!(
        CustomerEvent::decode("Moved", 2, &raw(json!({"city": "Oslo"}))).unwrap(),
        CustomerEvent::Moved {
            city: "Oslo".to_owned()
        }
    );
    assert!(matches!(
        CustomerEvent::decode("Moved", 1, &raw(json!({"city": "Oslo"}))),
        Err(DecodeError::MissingUpcast {
            version: 1,
            current: 3,
            ..
        })
    ));
}

#[test]
fn an_upcast_payload_that_does_not_fit_says_it_was_upcast() {
    let error = CustomerEvent::decode("Rated", 1, &raw(json!({}))).unwrap_err();
    assert!(
        matches!(
            &error,
            DecodeError::InvalidPayload { version: 1, upcast_to: Some(2), field: Some(f), .. } if f == "level"
        ),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "payload of event `Rated` version 1 (upcast to version 2) does not fit at `level`: invalid type: string \"high\", expected u8"
    );
}

#[test]
fn to_events_makes_store_events_with_metadata() {
    let correlation = Uuid::now_v7();
    let causation = Uuid::now_v7();
    let metadata = Metadata::new()
        .with_correlation_id(correlation)
        .with_causation_id(causation)
        .with_trace_id("trace-1")
        .with_field("user", "alice");
    let history = vec![
        AccountEvent::Opened {
            owner: "alice".to_owned(),
            currency: Currency::Eur,
        },
        AccountEvent::Deposited { amount: 10 },
        AccountEvent::Closed,
    ];
    let events = AccountEvent::to_events(&history, "acc-1", &metadata).unwrap();
    assert_eq!(events.len(), 3);
    for (event, domain) in events.iter().zip(&history) {
        assert_eq!(event.bounded_context, "Billing");
        assert_eq!(event.aggregate_type, "Account");
        assert_eq!(event.aggregate_id, "acc-1");
        assert_eq!(event.event_type, domain.event_type());
        assert_eq!(event.event_version, domain.event_version());
        assert_eq!(event.correlation_id, Some(correlation));
        assert_eq!(event.causation_id, Some(causation));
        assert_eq!(event.trace_id.as_deref(), Some("trace-1"));
        assert_eq!(event.metadata.get(), r#"{"user":"alice"}"#);
    }
    assert_eq!(events[1].event_type, "MoneyDeposited");
    assert_eq!(events[1].event_version, 2);
    assert_eq!(events[1].payload.get(), r#"{"amount":10}"#);
    assert_ne!(events[0].event_id, events[1].event_id);

    // Back from the store.
    let persisted: Vec<PersistedEvent> = events
        .into_iter()
        .enumerate()
        .map(|(i, event)| PersistedEvent::new(event, i as i64 + 1, i as i64 + 100))
        .collect();
    let decoded: Vec<AccountEvent> = persisted
        .iter()
        .map(AccountEvent::from_persisted)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(decoded, history);
}

#[test]
fn from_persisted_refuses_events_of_another_aggregate() {
    let foreign = Event::new(
        "Billing",
        "Invoice",
        "inv-1",
        "Opened",
        &json!({"owner": "x", "currency": "Eur"}),
    )
    .unwrap();
    let error = AccountEvent::from_persisted(&PersistedEvent::new(foreign, 1, 1)).unwrap_err();
    assert!(matches!(
        &error,
        DecodeError::WrongAggregate { expected_bounded_context: "Billing", expected_aggregate_type: "Account", bounded_context, aggregate_type }
            if bounded_context == "Billing" && aggregate_type == "Invoice"
    ));
    assert_eq!(
        error.to_string(),
        "an event of Billing/Invoice cannot be decoded as an event of Billing/Account"
    );
    let other_context = Event::new("Shipping", "Account", "acc-1", "Closed", &json!({})).unwrap();
    assert!(matches!(
        AccountEvent::from_event(&other_context),
        Err(DecodeError::WrongAggregate { .. })
    ));
}

#[test]
fn decode_errors_keep_their_source() {
    use std::error::Error as _;
    let error =
        AccountEvent::decode("MoneyDeposited", 2, &raw_text(r#"{"amount":"x"}"#)).unwrap_err();
    let source = error.source().expect("the serde_json error");
    assert!(source.downcast_ref::<serde_json::Error>().is_some());
}
