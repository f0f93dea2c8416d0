//! The repository on every backend: load and fold, execute with
//! Exact(version), retries, the caller's-transaction variant, metadata and
//! snapshots (the bodies are in `conformance/repository.rs`).

mod conformance;
mod support;

/// Against PostgreSQL.
mod postgres {
    crate::repository_conformance_tests!(crate::support::TestDb);
}

/// Against SQLite.
#[cfg(feature = "sqlite")]
mod sqlite {
    crate::repository_conformance_tests!(crate::support::sqlite::SqliteDb);
}

use conformance::repository::bank::{Account, AccountCommand, AccountError, AccountEvent};

fn deposit(amount: i64) -> AccountCommand {
    AccountCommand::Deposit { amount }
}

#[test]
fn given_when_then_without_a_database() {
    use es::aggregate::testing::given;
    let opened = AccountEvent::Opened {
        owner: "Alice".into(),
    };
    let state = given::<Account>([opened.clone()])
        .when(deposit(5))
        .then([AccountEvent::Deposited { amount: 5 }]);
    assert_eq!(state.balance, 5);
    given::<Account>([opened.clone(), AccountEvent::Deposited { amount: 5 }])
        .when(AccountCommand::Withdraw { amount: 6 })
        .then_error(AccountError::InsufficientFunds {
            balance: 5,
            asked: 6,
        });
    given::<Account>([])
        .when(deposit(1))
        .then_error(AccountError::NotOpen);
    given::<Account>([opened.clone(), AccountEvent::Closed])
        .when(AccountCommand::Close)
        .then([]);
    given::<Account>([opened])
        .when(deposit(-1))
        .then_error_matches(|e| matches!(e, AccountError::NonPositiveAmount(-1)));
    assert_eq!(given::<Account>([]).state(), &Account::default());
}
