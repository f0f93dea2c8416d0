use es::DomainEvent;
use serde_json::Value;

fn v1_to_v2(payload: Value) -> Value {
    payload
}

#[derive(DomainEvent)]
#[event(bounded_context = "Billing", aggregate_type = "Account")]
enum AccountEvent {
    #[event(upcast(from = 1, with = v1_to_v2))]
    Deposited { amount: i64 },
}

fn main() {}
