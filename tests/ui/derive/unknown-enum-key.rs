use es::DomainEvent;

#[derive(DomainEvent)]
#[event(bounded_context = "Billing", aggregate_type = "Account", schema = "public")]
enum AccountEvent {
    Opened { owner: String },
}

fn main() {}
