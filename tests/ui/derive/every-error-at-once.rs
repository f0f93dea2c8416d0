// One compile reports every mistake, each at its own token.
use es::DomainEvent;

#[derive(DomainEvent)]
#[event(bounded_context = "", colour = "blue")]
enum AccountEvent {
    #[event(version = 0)]
    Opened { owner: String },
    #[event(name = "Opened", version = 2, version = 3)]
    Reopened { owner: String },
    Transferred(String, i64),
}

fn main() {}
