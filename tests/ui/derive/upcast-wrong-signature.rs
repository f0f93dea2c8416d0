use es::DomainEvent;

fn v1_to_v2(payload: String) -> String {
    payload
}

#[derive(DomainEvent)]
#[event(bounded_context = "Billing", aggregate_type = "Account")]
enum AccountEvent {
    #[event(version = 2, upcast(from = 1, with = v1_to_v2))]
    Deposited { amount: i64 },
}

fn main() {}
