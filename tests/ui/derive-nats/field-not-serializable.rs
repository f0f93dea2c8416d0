use es::DomainEvent;

struct Money(i64);

#[derive(DomainEvent)]
#[event(bounded_context = "Billing", aggregate_type = "Account")]
enum AccountEvent {
    Deposited { amount: Money },
}

fn main() {}
