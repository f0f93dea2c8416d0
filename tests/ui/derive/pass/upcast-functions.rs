use es::DomainEvent;
use serde_json::{Value, json};

mod upcasts {
    use serde_json::Value;

    pub fn v1_to_v2(mut payload: Value) -> Value {
        payload["currency"] = "EUR".into();
        payload
    }
}

#[derive(Debug, PartialEq, DomainEvent)]
#[event(bounded_context = "Billing", aggregate_type = "Account")]
enum AccountEvent {
    // A path, a path in serde's string form, and a closure.
    #[event(
        version = 4,
        upcast(from = 1, with = upcasts::v1_to_v2),
        upcast(from = 2, with = "rename_cents"),
        upcast(from = 3, with = |payload| payload),
    )]
    Deposited { amount: i64, currency: String },
}

fn rename_cents(mut payload: Value) -> Value {
    let cents = payload["cents"].take();
    json!({ "amount": cents, "currency": payload["currency"] })
}

fn main() {
    let v1 = serde_json::value::to_raw_value(&json!({ "cents": 5 })).unwrap();
    assert_eq!(
        AccountEvent::decode("Deposited", 1, &v1).unwrap(),
        AccountEvent::Deposited { amount: 5, currency: "EUR".to_owned() },
    );
}
