//! A bank account: the domain of the `bank` example, also used by the
//! repository tests.
#![allow(unreachable_pub)]

use es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

/// What can happen to an account.
#[derive(Debug, Clone, PartialEq, DomainEvent)]
#[event(bounded_context = "Billing", aggregate_type = "Account")]
pub enum AccountEvent {
    Opened { owner: String },
    Deposited { amount: i64 },
    Withdrawn { amount: i64 },
    Closed,
}

/// What an account can be asked to do.
#[derive(Debug, Clone, PartialEq)]
pub enum AccountCommand {
    Open { owner: String },
    Deposit { amount: i64 },
    Withdraw { amount: i64 },
    Close,
}

/// Why an account refuses a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    #[error("the account is already open")]
    AlreadyOpen,
    #[error("the account is not open")]
    NotOpen,
    #[error("amounts must be positive, got {0}")]
    NonPositiveAmount(i64),
    #[error("insufficient funds: balance {balance}, asked {asked}")]
    InsufficientFunds { balance: i64, asked: i64 },
    #[error("the balance must be zero to close, it is {0}")]
    NonZeroBalance(i64),
}

/// The account's state, folded from its events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub owner: Option<String>,
    pub balance: i64,
    pub open: bool,
    pub deposits: u64,
}

impl Aggregate for Account {
    type Event = AccountEvent;
    type Command = AccountCommand;
    type Error = AccountError;

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Opened { owner } => {
                self.owner = Some(owner.clone());
                self.open = true;
            }
            AccountEvent::Deposited { amount } => {
                self.balance += amount;
                self.deposits += 1;
            }
            AccountEvent::Withdrawn { amount } => self.balance -= amount,
            AccountEvent::Closed => self.open = false,
        }
    }

    fn handle(&self, command: &AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        use AccountCommand as C;
        use AccountError as E;
        use AccountEvent as Ev;
        match command {
            C::Open { .. } if self.owner.is_some() => Err(E::AlreadyOpen),
            C::Open { owner } => Ok(vec![Ev::Opened {
                owner: owner.clone(),
            }]),
            // closing twice is not an error: there is just nothing to do
            C::Close if self.owner.is_some() && !self.open => Ok(Vec::new()),
            _ if !self.open => Err(E::NotOpen),
            C::Deposit { amount } | C::Withdraw { amount } if *amount <= 0 => {
                Err(E::NonPositiveAmount(*amount))
            }
            C::Deposit { amount } => Ok(vec![Ev::Deposited { amount: *amount }]),
            C::Withdraw { amount } if *amount > self.balance => Err(E::InsufficientFunds {
                balance: self.balance,
                asked: *amount,
            }),
            C::Withdraw { amount } => Ok(vec![Ev::Withdrawn { amount: *amount }]),
            C::Close if self.balance != 0 => Err(E::NonZeroBalance(self.balance)),
            C::Close => Ok(vec![Ev::Closed]),
        }
    }
}
