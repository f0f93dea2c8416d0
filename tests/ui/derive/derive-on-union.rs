use es::DomainEvent;

#[derive(DomainEvent)]
#[event(bounded_context = "Billing", aggregate_type = "Account")]
union Amount {
    cents: i64,
    whole: f64,
}

fn main() {}
