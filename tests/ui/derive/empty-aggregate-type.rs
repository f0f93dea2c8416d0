use es::DomainEvent;

#[derive(DomainEvent)]
#[event(bounded_context = "Billing", aggregate_type = "  ")]
enum AccountEvent {
    Opened { owner: String },
}

fn main() {}
