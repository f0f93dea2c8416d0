use es::DomainEvent;

#[derive(DomainEvent)]
#[event(bounded_context = "Billing", aggregate_type = "Account")]
struct AccountOpened {
    owner: String,
}

fn main() {}
