// The enum may derive serde's traits for other uses, with container and
// variant attributes of its own: they do not change the payloads, which
// only field attributes shape.
use es::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, Serialize, Deserialize, DomainEvent)]
#[serde(tag = "type", rename_all = "snake_case")]
#[event(bounded_context = "Billing", aggregate_type = "Account")]
enum AccountEvent {
    #[serde(rename = "opened_v2")]
    Opened {
        #[serde(rename = "who")]
        owner: String,
    },
    Closed,
}

fn main() {
    let event = AccountEvent::Opened { owner: "alice".to_owned() };
    assert_eq!(
        serde_json::to_string(&event).unwrap(),
        r#"{"type":"opened_v2","who":"alice"}"#
    );
    assert_eq!(event.encode().unwrap().get(), r#"{"who":"alice"}"#);
    assert_eq!(event.event_type(), "Opened");
    assert_eq!(AccountEvent::Closed.encode().unwrap().get(), "{}");
}
