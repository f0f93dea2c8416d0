use es::DomainEvent;

#[derive(DomainEvent)]
#[event(bounded_context = "Billing", aggregate_type = "Account")]
enum AccountEvent {
    Deposited { amount: i64 },
    #[event(name = "Deposited")]
    Refunded { amount: i64 },
}

fn main() {}
