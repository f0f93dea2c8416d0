use es::DomainEvent;

#[derive(DomainEvent)]
enum AccountEvent {
    Opened { owner: String },
}

fn main() {}
