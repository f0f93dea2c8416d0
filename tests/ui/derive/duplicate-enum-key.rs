use es::DomainEvent;

#[derive(DomainEvent)]
#[event(bounded_context = "Billing", aggregate_type = "Account")]
#[event(bounded_context = "Payments")]
enum AccountEvent {
    Opened { owner: String },
}

fn main() {}
