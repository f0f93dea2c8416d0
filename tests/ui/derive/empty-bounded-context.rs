use es::DomainEvent;

#[derive(DomainEvent)]
#[event(bounded_context = "", aggregate_type = "Account")]
enum AccountEvent {
    Opened { owner: String },
}

fn main() {}
