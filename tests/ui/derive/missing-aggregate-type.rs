use es::DomainEvent;

#[derive(DomainEvent)]
#[event(bounded_context = "Billing")]
enum AccountEvent {
    Opened { owner: String },
}

fn main() {}
