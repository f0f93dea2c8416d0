//! The same work, hand-written with plain sqlx: what an application would
//! write without the framework. Same domain; the store's tables or minimal
//! tables of its own ([`Variant`]). The logic is written once; each
//! backend's SQL is in `backend/`.

use serde::Deserialize;

use crate::backend::{Conflict, Conn, NewEvent, Pool, Target, Variant};
use crate::domain::{Account, AccountCommand, AccountEvent};
use es::Aggregate;

#[derive(Deserialize)]
struct Opened {
    owner: String,
}

#[derive(Deserialize)]
struct Amount {
    amount: i64,
}

/// One plain side: its tables, as plain SQL sees them.
pub(crate) struct Plain<T: Target> {
    pub(crate) pool: Pool<T>,
    pub(crate) variant: Variant,
    sql: T,
}

/// Why the plain command did nothing.
#[derive(Debug)]
pub(crate) enum Refused {
    /// Another writer got there first.
    Conflict,
    /// The account is not open.
    NotOpen,
    /// The account is open already.
    AlreadyOpen,
}

/// Decodes one stored event of the account.
fn decode(event_type: &str, payload: &str) -> AccountEvent {
    let amount = || {
        serde_json::from_str::<Amount>(payload)
            .expect("payload")
            .amount
    };
    match event_type {
        "Opened" => AccountEvent::Opened {
            owner: serde_json::from_str::<Opened>(payload)
                .expect("payload")
                .owner,
        },
        "Deposited" => AccountEvent::Deposited { amount: amount() },
        "Withdrawn" => AccountEvent::Withdrawn { amount: amount() },
        "Closed" => AccountEvent::Closed,
        other => panic!("unknown event type {other}"),
    }
}

/// Encodes one event of the account.
pub(crate) fn encode(event: &AccountEvent) -> NewEvent<'static> {
    match event {
        AccountEvent::Opened { owner } => {
            ("Opened", serde_json::json!({ "owner": owner }).to_string())
        }
        AccountEvent::Deposited { amount } => (
            "Deposited",
            serde_json::json!({ "amount": amount }).to_string(),
        ),
        AccountEvent::Withdrawn { amount } => (
            "Withdrawn",
            serde_json::json!({ "amount": amount }).to_string(),
        ),
        AccountEvent::Closed => ("Closed", "{}".to_owned()),
    }
}

impl<T: Target> Plain<T> {
    pub(crate) fn new(pool: Pool<T>, store: &T::Store, variant: Variant) -> Self {
        Plain {
            pool,
            variant,
            sql: T::plain(store, variant),
        }
    }

    /// Reads the account's events, decodes and folds them.
    pub(crate) async fn load(&self, conn: &mut Conn<T>, id: &str) -> (Account, i64) {
        let mut account = Account::default();
        let mut version = 0;
        self.sql
            .fold_stream(conn, id, |v, event_type, payload| {
                version = v;
                account.apply(&decode(event_type, payload));
            })
            .await;
        (account, version)
    }

    /// A command the obvious way: begin, read and fold, decide, check and
    /// bump the head, insert the events, commit.
    pub(crate) async fn execute(&self, id: &str, command: &AccountCommand) -> Result<i64, Refused> {
        let mut tx = T::begin_write(&self.pool).await;
        let (account, version) = self.load(&mut tx, id).await;
        let events = match account.handle(command) {
            Ok(events) => events,
            Err(crate::domain::AccountError::NotOpen) => return Err(Refused::NotOpen),
            Err(crate::domain::AccountError::AlreadyOpen) => return Err(Refused::AlreadyOpen),
            Err(other) => panic!("the benchmark's commands are valid: {other}"),
        };
        let events: Vec<NewEvent<'_>> = events.iter().map(encode).collect();
        let positions = self
            .sql
            .append_in(&mut tx, id, version, &events)
            .await
            .map_err(|Conflict| Refused::Conflict)?;
        tx.commit().await.expect("commit");
        Ok(positions[positions.len() - 1])
    }

    /// Appends pre-serialized events after `version`, in one transaction.
    pub(crate) async fn append(
        &self,
        id: &str,
        version: i64,
        events: &[NewEvent<'_>],
    ) -> Result<Vec<i64>, Conflict> {
        let mut tx = T::begin_write(&self.pool).await;
        let positions = self.sql.append_in(&mut tx, id, version, events).await?;
        tx.commit().await.expect("commit");
        Ok(positions)
    }

    /// Reads every event after `from`, page by page, decoding each row as a
    /// reader would; returns how many it read.
    pub(crate) async fn read_all(&self, from: i64, page: i64) -> u64 {
        let mut conn = self.pool.acquire().await.expect("acquire");
        let mut position = from;
        let mut read = 0;
        while let Some((rows, last)) = self.sql.read_page(&mut conn, position, page).await {
            read += rows;
            position = last;
        }
        read
    }

    /// Rows in the events table.
    pub(crate) async fn count_events(&self) -> i64 {
        self.sql.count_events(&self.pool).await
    }
}
