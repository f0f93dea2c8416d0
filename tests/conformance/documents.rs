//! Read-model documents, and a projection written once against them: the
//! same operations, semantics and concurrency guarantees on every backend.

use std::sync::Arc;

use es::DomainEvent;
use es::aggregate::projection::{Envelope, HandlerError, ProjectionProcessor, TypedProjection};
use es::store::documents::Collection;
use es::store::{
    DocumentStore, Error, EventStore, ExpectedVersion, Metadata, NameField, TextField,
    UnstorableTextReason,
};
use serde::{Deserialize, Serialize};

use crate::support::Fixture;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Card {
    title: String,
    tags: Vec<String>,
}

fn card(title: &str) -> Card {
    Card {
        title: title.into(),
        tags: vec!["a".into(), "b".into()],
    }
}

/// Put, get, replace, delete, count, list by pages, clear; ids compare as
/// bytes; other collections are untouched.
pub async fn documents_round_trip_and_page_by_id<F: Fixture>() {
    let db = F::create().await;
    let cards = Collection::<_, Card>::new(db.store().clone(), "cards").unwrap();
    let others = Collection::<_, Card>::new(db.store().clone(), "other-cards").unwrap();
    let mut tx = db.pool().begin().await.unwrap();
    // Three ids a collation would fold into one.
    for id in ["acc-1", "ACC-1", "acc-1 "] {
        cards.put(&mut tx, id, &card(id)).await.unwrap();
    }
    for i in 0..7 {
        cards
            .put(&mut tx, &format!("n{i}"), &card("n"))
            .await
            .unwrap();
    }
    others.put(&mut tx, "acc-1", &card("other")).await.unwrap();
    tx.commit().await.unwrap();

    let mut conn = db.pool().acquire().await.unwrap();
    assert_eq!(
        cards.get(&mut conn, "acc-1").await.unwrap(),
        Some(card("acc-1"))
    );
    assert_eq!(
        cards.get(&mut conn, "ACC-1").await.unwrap(),
        Some(card("ACC-1"))
    );
    assert_eq!(
        cards.get(&mut conn, "acc-1 ").await.unwrap(),
        Some(card("acc-1 "))
    );
    assert_eq!(cards.get(&mut conn, "acc-2").await.unwrap(), None);
    assert_eq!(cards.count(&mut conn).await.unwrap(), 10);

    // Pages of 4, by id, bytewise: "ACC-1" < "acc-1" < "acc-1 " < "n0"...
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = cards.list(&mut conn, after.as_deref(), 4).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 4);
        after = page.last().map(|(id, _)| id.clone());
        seen.extend(page.into_iter().map(|(id, _)| id));
    }
    let mut expected: Vec<String> = ["ACC-1", "acc-1", "acc-1 "].map(String::from).to_vec();
    expected.extend((0..7).map(|i| format!("n{i}")));
    assert_eq!(seen, expected);

    // Replace, delete (twice: the second does nothing), clear.
    cards
        .put(&mut *conn, "acc-1", &card("replaced"))
        .await
        .unwrap();
    assert_eq!(
        cards.get(&mut conn, "acc-1").await.unwrap(),
        Some(card("replaced"))
    );
    cards.delete(&mut *conn, "ACC-1").await.unwrap();
    cards.delete(&mut *conn, "ACC-1").await.unwrap();
    assert_eq!(cards.get(&mut conn, "ACC-1").await.unwrap(), None);
    assert_eq!(cards.count(&mut conn).await.unwrap(), 9);
    assert_eq!(cards.clear(&mut conn).await.unwrap(), 9);
    assert_eq!(cards.count(&mut conn).await.unwrap(), 0);
    assert_eq!(
        others.get(&mut conn, "acc-1").await.unwrap(),
        Some(card("other"))
    );

    // An update that removes, and one of a document that is not there and
    // stays absent: nothing is left behind.
    let mut tx = db.pool().begin().await.unwrap();
    let gone = others.update(&mut tx, "acc-1", |_| None).await.unwrap();
    assert_eq!(gone, None);
    others
        .update(&mut tx, "never", |current| current)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(others.count(&mut conn).await.unwrap(), 0);
    assert_eq!(
        db.store()
            .list_documents(&mut conn, "other-cards", None, 10)
            .await
            .unwrap()
            .len(),
        0
    );
    drop(conn);
    db.finish().await;
}

/// Bad names and unstorable bodies are typed errors, and nothing is
/// written.
pub async fn bad_document_input_is_refused_and_nothing_written<F: Fixture>() {
    let db = F::create().await;
    let store = db.store();
    assert!(matches!(
        Collection::<_, i64>::new(store.clone(), ""),
        Err(Error::EmptyName {
            field: NameField::Collection,
            ..
        })
    ));
    assert!(matches!(
        Collection::<_, i64>::new(store.clone(), "c".repeat(256)),
        Err(Error::NameTooLong {
            field: NameField::Collection,
            max: 255,
            ..
        })
    ));
    let numbers = Collection::<_, String>::new(store.clone(), "numbers").unwrap();
    let mut conn = db.pool().acquire().await.unwrap();
    let one = "1".to_owned();
    assert!(matches!(
        numbers.put(&mut conn, "", &one).await,
        Err(Error::EmptyName {
            field: NameField::DocumentId,
            ..
        })
    ));
    assert!(matches!(
        numbers.put(&mut conn, &"i".repeat(501), &one).await,
        Err(Error::NameTooLong {
            field: NameField::DocumentId,
            max: 500,
            ..
        })
    ));
    assert!(matches!(
        numbers.put(&mut conn, "a\0b", &one).await,
        Err(Error::UnstorableText {
            reason: UnstorableTextReason::Nul,
            ..
        })
    ));
    assert!(matches!(
        numbers.put(&mut conn, "nul", &"a\0b".to_owned()).await,
        Err(Error::UnstorableText {
            field: TextField::Document,
            reason: UnstorableTextReason::Nul,
            ..
        })
    ));
    assert!(matches!(
        numbers.get(&mut conn, "").await,
        Err(Error::EmptyName {
            field: NameField::DocumentId,
            ..
        })
    ));
    // A document that does not decode as the collection's type.
    numbers
        .put(&mut conn, "text", &"x".to_owned())
        .await
        .unwrap();
    let as_numbers = Collection::<_, i64>::new(store.clone(), "numbers").unwrap();
    assert!(matches!(
        as_numbers.get(&mut conn, "text").await,
        Err(Error::Serialization(_))
    ));
    assert_eq!(numbers.count(&mut conn).await.unwrap(), 1);
    drop(conn);
    db.finish().await;
}

/// Eight tasks increment two counters (one missing at first) 25 times
/// each, every increment in a transaction of its own: none is lost.
pub async fn concurrent_updates_lose_nothing<F: Fixture>() {
    let db = Arc::new(F::create().await);
    let counters = Collection::<_, u64>::new(db.store().clone(), "counters").unwrap();
    let mut conn = db.pool().acquire().await.unwrap();
    counters.put(&mut conn, "present", &1000).await.unwrap();
    drop(conn);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (db, counters) = (db.clone(), counters.clone());
            tokio::spawn(async move {
                let mut retried = 0;
                for i in 0..25 {
                    let id = if i % 2 == 0 { "present" } else { "absent" };
                    loop {
                        let mut tx = db.pool().begin().await.unwrap();
                        let updated = counters
                            .update(&mut tx, id, |n| Some(n.unwrap_or(0) + 1))
                            .await;
                        match updated {
                            Ok(_) => match tx.commit().await.map_err(Error::from) {
                                Ok(()) => break,
                                Err(e) if e.is_transient() => retried += 1,
                                Err(e) => panic!("{e}"),
                            },
                            // A deadlock or a busy database: the whole
                            // transaction again, as a projection batch is.
                            Err(e) if e.is_transient() => retried += 1,
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
                retried
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let mut conn = db.pool().acquire().await.unwrap();
    assert_eq!(
        counters.get(&mut conn, "present").await.unwrap(),
        Some(1000 + 8 * 13)
    );
    assert_eq!(
        counters.get(&mut conn, "absent").await.unwrap(),
        Some(8 * 12)
    );
    drop(conn);
    Arc::into_inner(db).unwrap().finish().await;
}

#[derive(Debug, Clone, PartialEq, DomainEvent)]
#[event(bounded_context = "Portable", aggregate_type = "Wallet")]
pub enum WalletEvent {
    Opened { owner: String },
    Credited { amount: i64 },
    Debited { amount: i64 },
    Closed,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WalletView {
    owner: String,
    balance: i64,
    movements: u32,
}

/// A projection written once, with no SQL of its own: it runs on every
/// backend. Its totals document is shared by every wallet, so concurrent
/// partitions update it under its lock.
pub struct Wallets<S> {
    wallets: Collection<S, WalletView>,
    totals: Collection<S, i64>,
}

impl<S: es::store::Store> TypedProjection<S::Database> for Wallets<S> {
    type Events = WalletEvent;

    fn name(&self) -> &str {
        "wallets"
    }

    async fn handle(
        &self,
        tx: &mut <S::Database as sqlx::Database>::Connection,
        event: Envelope<'_, WalletEvent>,
    ) -> Result<(), HandlerError> {
        let id = event.aggregate_id();
        let delta = match &event.event {
            WalletEvent::Opened { owner } => {
                let view = WalletView {
                    owner: owner.clone(),
                    ..WalletView::default()
                };
                self.wallets.put(tx, id, &view).await?;
                return Ok(());
            }
            WalletEvent::Closed => {
                self.wallets.delete(tx, id).await?;
                return Ok(());
            }
            WalletEvent::Credited { amount } => *amount,
            WalletEvent::Debited { amount } => -amount,
        };
        self.wallets
            .update(tx, id, |view| {
                view.map(|mut view| {
                    view.balance += delta;
                    view.movements += 1;
                    view
                })
            })
            .await?;
        self.totals
            .update(tx, "all", |total| Some(total.unwrap_or(0) + delta))
            .await?;
        Ok(())
    }

    async fn reset(
        &self,
        tx: &mut <S::Database as sqlx::Database>::Connection,
    ) -> Result<(), HandlerError> {
        self.wallets.clear(tx).await?;
        self.totals.clear(tx).await?;
        Ok(())
    }
}

fn wallets<S: es::store::Store>(store: &S) -> Wallets<S> {
    Wallets {
        wallets: Collection::new(store.clone(), "wallets").unwrap(),
        totals: Collection::new(store.clone(), "wallet_totals").unwrap(),
    }
}

/// The same projection on every backend: two partitioned workers at once,
/// then a rebuild; the views and the shared total are exact.
pub async fn one_projection_without_sql_runs_on_every_backend<F: Fixture>() {
    let db = F::create().await;
    let store = db.store();
    let mut conn = db.pool().acquire().await.unwrap();
    let mut expected_total = 0;
    for w in 0..12 {
        let id = format!("w{w:02}");
        let mut events = vec![WalletEvent::Opened {
            owner: format!("owner {w}"),
        }];
        for i in 0..10 {
            events.push(if i % 3 == 2 {
                WalletEvent::Debited { amount: 2 }
            } else {
                WalletEvent::Credited { amount: 5 }
            });
        }
        if w == 11 {
            events.push(WalletEvent::Closed);
        }
        expected_total += 7 * 5 - 3 * 2;
        let stored = WalletEvent::to_events(&events, &id, &Metadata::default()).unwrap();
        store
            .append(&mut conn, ExpectedVersion::NoStream, stored)
            .await
            .unwrap();
    }
    drop(conn);
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let processor =
                ProjectionProcessor::typed(store.clone(), db.pool().clone(), wallets(store))
                    .with_partitions(3)
                    .with_batch_size(7);
            tokio::spawn(async move { processor.catch_up().await })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap().unwrap();
    }
    let check = || async {
        let view = wallets(store);
        let mut conn = db.pool().acquire().await.unwrap();
        assert_eq!(view.wallets.count(&mut conn).await.unwrap(), 11);
        let all = view.wallets.list(&mut conn, None, 100).await.unwrap();
        for (id, wallet) in &all {
            let w: u32 = id[1..].parse().unwrap();
            assert_eq!(wallet.owner, format!("owner {w}"));
            assert_eq!(wallet.balance, 7 * 5 - 3 * 2, "{id}");
            assert_eq!(wallet.movements, 10);
        }
        assert_eq!(
            view.totals.get(&mut conn, "all").await.unwrap(),
            Some(expected_total)
        );
    };
    check().await;
    // A rebuild clears the collections through `reset` and replays.
    let processor = ProjectionProcessor::typed(store.clone(), db.pool().clone(), wallets(store))
        .with_partitions(3);
    let rebuilt = processor.rebuild().await.unwrap();
    assert_eq!(rebuilt.events, 12 * 11 + 1);
    check().await;
    db.finish().await;
}

/// Documents live in the caller's transaction: committed with it, or
/// rolled back with it.
pub async fn documents_commit_and_roll_back_with_the_callers_transaction<F: Fixture>() {
    let db = F::create().await;
    let notes = Collection::<_, String>::new(db.store().clone(), "notes").unwrap();
    let mut tx = db.pool().begin().await.unwrap();
    notes.put(&mut tx, "kept", &"yes".to_owned()).await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = db.pool().begin().await.unwrap();
    notes
        .put(&mut tx, "dropped", &"no".to_owned())
        .await
        .unwrap();
    notes.delete(&mut tx, "kept").await.unwrap();
    tx.rollback().await.unwrap();
    let mut conn = db.pool().acquire().await.unwrap();
    assert_eq!(
        notes.get(&mut conn, "kept").await.unwrap().as_deref(),
        Some("yes")
    );
    assert_eq!(notes.get(&mut conn, "dropped").await.unwrap(), None);
    drop(conn);
    db.finish().await;
}
