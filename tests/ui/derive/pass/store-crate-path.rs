// Code that depends on es-store directly names it with `crate = "..."`.
use es::store::DomainEvent;
use es_macros::DomainEvent;

#[derive(Debug, PartialEq, DomainEvent)]
#[event(bounded_context = "Billing", aggregate_type = "Account", crate = "::es_store")]
enum AccountEvent {
    Opened { owner: String },
}

fn main() {
    let event = AccountEvent::Opened { owner: "alice".to_owned() };
    assert_eq!(event.encode().unwrap().get(), r#"{"owner":"alice"}"#);
}
