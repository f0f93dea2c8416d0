use es::DomainEvent;

#[derive(DomainEvent)]
#[event(aggregate_type = "Account")]
enum AccountEvent {
    Opened { owner: String },
}

fn main() {}
