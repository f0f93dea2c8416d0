use es::DomainEvent;

#[derive(DomainEvent)]
#[event(bounded_context = "Billing", aggregate_type = "Account", crate = "not a path")]
enum AccountEvent {
    Opened { owner: String },
}

fn main() {}
