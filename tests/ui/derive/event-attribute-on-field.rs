use es::DomainEvent;

#[derive(DomainEvent)]
#[event(bounded_context = "Billing", aggregate_type = "Account")]
enum AccountEvent {
    Opened {
        #[event(name = "owner_name")]
        owner: String,
    },
}

fn main() {}
