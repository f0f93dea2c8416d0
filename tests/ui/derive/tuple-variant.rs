use es::DomainEvent;

#[derive(DomainEvent)]
#[event(bounded_context = "Billing", aggregate_type = "Account")]
enum AccountEvent {
    Transferred(String, i64),
}

fn main() {}
