use es::DomainEvent;
use serde_json::Value;

fn v1_to_v2(payload: Value) -> Value {
    payload
}

fn v2_to_v3(payload: Value) -> Value {
    payload
}

#[derive(DomainEvent)]
#[event(bounded_context = "Billing", aggregate_type = "Account")]
enum AccountEvent {
    #[event(version = 2, upcast(from = 1, with = v1_to_v2), upcast(from = 2, with = v2_to_v3))]
    Deposited { amount: i64 },
}

fn main() {}
