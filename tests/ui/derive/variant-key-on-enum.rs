use es::DomainEvent;

#[derive(DomainEvent)]
#[event(bounded_context = "Billing", aggregate_type = "Account", version = 2)]
enum AccountEvent {
    Opened { owner: String },
}

fn main() {}
