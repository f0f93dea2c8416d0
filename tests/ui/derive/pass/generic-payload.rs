use es::DomainEvent;

#[derive(Debug, PartialEq, DomainEvent)]
#[event(bounded_context = "Catalog", aggregate_type = "Listing")]
enum ListingEvent<T, P = u32>
where
    T: Clone,
{
    Listed { item: T, tags: Vec<String> },
    Priced { price: P },
    Wrapped(Option<T>),
    Removed,
}

fn main() {
    let event = ListingEvent::<String>::Priced { price: 12 };
    let payload = event.encode().unwrap();
    assert_eq!(payload.get(), r#"{"price":12}"#);
    assert_eq!(ListingEvent::<String>::decode("Priced", 1, &payload).unwrap(), event);
}
