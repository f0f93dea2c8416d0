use es::DomainEvent;

#[derive(DomainEvent)]
#[event(bounded_context = "Billing", aggregate_type = "Account")]
enum AccountEvent {
    #[event(version = 2, upcast(from = 1))]
    Deposited { amount: i64 },
}

fn main() {}
