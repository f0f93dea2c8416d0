// After a derive error the enum still implements the trait, so code using
// it reports nothing more than the derive's error.
use es::DomainEvent;

#[derive(DomainEvent)]
#[event(bounded_context = "Billing")]
enum AccountEvent {
    Opened { owner: String },
}

fn main() {
    let event = AccountEvent::Opened { owner: "alice".to_owned() };
    let _ = event.encode();
    let _ = AccountEvent::EVENT_TYPES;
}
