use es::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Withdrawal {
    amount: i64,
}

#[derive(Debug, PartialEq, DomainEvent)]
#[event(bounded_context = "Billing", aggregate_type = "Account")]
enum AccountEvent {
    Opened { owner: String },
    #[event(name = "MoneyDeposited", version = 2)]
    Deposited { amount: i64 },
    Withdrawn(Withdrawal),
    Closed,
    Noted {},
}

fn main() {
    assert_eq!(AccountEvent::BOUNDED_CONTEXT, "Billing");
    assert_eq!(AccountEvent::AGGREGATE_TYPE, "Account");
    assert_eq!(AccountEvent::EVENT_TYPES.len(), 5);
    let events = [
        AccountEvent::Opened { owner: "alice".to_owned() },
        AccountEvent::Deposited { amount: 5 },
        AccountEvent::Withdrawn(Withdrawal { amount: 2 }),
        AccountEvent::Closed,
        AccountEvent::Noted {},
    ];
    for event in events {
        let payload = event.encode().unwrap();
        let decoded = AccountEvent::decode(event.event_type(), event.event_version(), &payload).unwrap();
        assert_eq!(decoded, event);
    }
}
