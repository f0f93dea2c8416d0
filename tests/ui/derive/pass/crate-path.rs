// `crate = "..."` for code that reaches the framework under another path.
mod framework {
    pub use es as events;
}

use framework::events::DomainEvent;

#[derive(Debug, PartialEq, DomainEvent)]
#[event(bounded_context = "Billing", aggregate_type = "Account", crate = "crate::framework::events")]
enum AccountEvent {
    Opened { owner: String },
}

fn main() {
    let event = AccountEvent::Opened { owner: "alice".to_owned() };
    assert_eq!(event.encode().unwrap().get(), r#"{"owner":"alice"}"#);
}
