use es::DomainEvent;

#[derive(DomainEvent)]
#[event(bounded_context = "Billing", aggregate_type = "Account")]
enum AccountEvent<'a> {
    Opened { owner: &'a str },
}

fn main() {}
