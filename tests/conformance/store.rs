//! The store API's behaviour, written once for every backend.

use std::collections::HashSet;
use std::ops::Bound;
use std::sync::Arc;

use es::store::{
    AggregateKey, AggregateStreamReader, CheckpointStore, Error, Event, EventFilter,
    EventIdConflictReason, EventReader, EventStore, ExpectedVersion, NameField, Partition,
    ProjectionStore, Snapshot, SnapshotStore, TextField, UnstorableTextReason, limits,
};
use serde_json::json;
use tokio::sync::Barrier;

use crate::support::Fixture;

pub fn event(id: &str, event_type: &str, n: i64) -> Event {
    Event::new("Billing", "Account", id, event_type, &json!({ "n": n })).unwrap()
}

pub fn events(id: &str, count: usize) -> Vec<Event> {
    (0..count)
        .map(|i| event(id, "Deposited", i as i64))
        .collect()
}

async fn append<F: Fixture>(
    db: &F,
    expected: ExpectedVersion,
    batch: Vec<Event>,
) -> es::store::Result<es::store::AppendResult> {
    let mut tx = db.pool().begin().await.unwrap();
    let result = db.store().append(&mut *tx, expected, batch).await;
    if result.is_ok() {
        tx.commit().await.unwrap();
    }
    result
}

/// An append on a pooled connection, outside any transaction of the
/// caller's.
async fn append_unscoped<F: Fixture>(
    db: &F,
    expected: ExpectedVersion,
    batch: Vec<Event>,
) -> es::store::Result<es::store::AppendResult> {
    let mut conn = db.pool().acquire().await.unwrap();
    db.store().append(&mut *conn, expected, batch).await
}

async fn stream<F: Fixture>(db: &F, id: &str) -> es::store::Stream {
    let mut conn = db.pool().acquire().await.unwrap();
    db.store()
        .read_aggregate_stream(&mut *conn, ("Billing", "Account", id), ..)
        .await
        .unwrap()
}

/// Appends `count` events to aggregate `id` with `Any` on `conn`, and
/// returns their positions.
pub async fn append_in<F: Fixture>(
    db: &F,
    conn: &mut <F::Db as sqlx::Database>::Connection,
    id: &str,
    count: usize,
) -> Vec<i64> {
    db.store()
        .append(conn, ExpectedVersion::Any, events(id, count))
        .await
        .unwrap()
        .global_positions
}

/// The positions a reader gets after `from`, in one page.
pub async fn read_all<F: Fixture>(db: &F, from: i64) -> Vec<i64> {
    let mut conn = db.pool().acquire().await.unwrap();
    db.store()
        .read_events(&mut *conn, from, 10_000)
        .await
        .unwrap()
        .iter()
        .map(|e| e.global_position)
        .collect()
}

async fn all_events<F: Fixture>(db: &F) -> Vec<es::store::PersistedEvent> {
    let mut conn = db.pool().acquire().await.unwrap();
    db.store()
        .read_events(&mut *conn, 0, i64::MAX)
        .await
        .unwrap()
}

fn assert_conflict(
    result: es::store::Result<impl std::fmt::Debug>,
    expected: ExpectedVersion,
    actual: i64,
) {
    match result {
        Err(Error::OptimisticConcurrency {
            expected: e,
            actual: a,
            aggregate,
        }) => {
            assert_eq!(e, expected);
            assert_eq!(a, Some(actual));
            assert_eq!(aggregate.aggregate_type, "Account");
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
}

pub async fn append_assigns_consecutive_versions<F: Fixture>() {
    let db = F::create().await;
    let first = append(&db, ExpectedVersion::NoStream, events("a", 3))
        .await
        .unwrap();
    assert_eq!((first.from_version(), first.to_version()), (1, 3));
    let second = append(&db, ExpectedVersion::Exact(3), events("a", 2))
        .await
        .unwrap();
    assert_eq!((second.from_version(), second.to_version()), (4, 5));
    let third = append(&db, ExpectedVersion::Any, events("a", 1))
        .await
        .unwrap();
    assert_eq!(third.to_version(), 6);
    // positions increase, and the result lists them in order
    let positions: Vec<i64> = [&first, &second, &third]
        .iter()
        .flat_map(|r| r.global_positions.clone())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    for r in [&first, &second, &third] {
        let from_events: Vec<i64> = r.events.iter().map(|e| e.global_position).collect();
        assert_eq!(from_events, r.global_positions);
    }
    let s = stream(&db, "a").await;
    assert_eq!(s.version(), 6);
    assert_eq!(s.len(), 6);
    let versions: Vec<i64> = s.events.iter().map(|e| e.aggregate_version).collect();
    assert_eq!(versions, (1..=6).collect::<Vec<_>>());
    // another aggregate starts at 1
    let other = append(&db, ExpectedVersion::Any, events("b", 1))
        .await
        .unwrap();
    assert_eq!(other.to_version(), 1);
    db.finish().await;
}

pub async fn expected_version_is_checked<F: Fixture>() {
    let db = F::create().await;
    // Exact(n) on a missing aggregate: actual 0
    assert_conflict(
        append(&db, ExpectedVersion::Exact(2), events("a", 1)).await,
        ExpectedVersion::Exact(2),
        0,
    );
    // Exact(0) is NoStream
    append(&db, ExpectedVersion::Exact(0), events("a", 2))
        .await
        .unwrap();
    assert_conflict(
        append(&db, ExpectedVersion::NoStream, events("a", 1)).await,
        ExpectedVersion::NoStream,
        2,
    );
    assert_conflict(
        append(&db, ExpectedVersion::Exact(1), events("a", 1)).await,
        ExpectedVersion::Exact(1),
        2,
    );
    assert_conflict(
        append(&db, ExpectedVersion::Exact(3), events("a", 1)).await,
        ExpectedVersion::Exact(3),
        2,
    );
    append(&db, ExpectedVersion::Exact(2), events("a", 1))
        .await
        .unwrap();
    append(&db, ExpectedVersion::Any, events("a", 1))
        .await
        .unwrap();
    assert_eq!(stream(&db, "a").await.version(), 4);
    // the conflicts wrote nothing
    assert_eq!(db.event_rows().await, 4);
    db.finish().await;
}

pub async fn a_conflict_leaves_the_transaction_usable<F: Fixture>() {
    let db = F::create().await;
    append(&db, ExpectedVersion::NoStream, events("a", 1))
        .await
        .unwrap();
    let mut tx = db.pool().begin().await.unwrap();
    let err = db
        .store()
        .append(&mut *tx, ExpectedVersion::NoStream, events("a", 1))
        .await;
    assert_conflict(err, ExpectedVersion::NoStream, 1);
    db.store()
        .append(&mut *tx, ExpectedVersion::Exact(1), events("a", 1))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(stream(&db, "a").await.version(), 2);
    db.finish().await;
}

pub async fn empty_append_is_no_events<F: Fixture>() {
    let db = F::create().await;
    for expected in [
        ExpectedVersion::Any,
        ExpectedVersion::NoStream,
        ExpectedVersion::Exact(3),
    ] {
        assert!(matches!(
            append(&db, expected, Vec::new()).await,
            Err(Error::NoEvents)
        ));
    }
    db.finish().await;
}

pub async fn batches_of_1_100_and_10000<F: Fixture>() {
    let db = F::create().await;
    for (i, size) in [1usize, 100, 10_000].into_iter().enumerate() {
        let id = format!("batch-{i}");
        let batch: Vec<Event> = (0..size)
            .map(|n| {
                Event::new(
                    "Billing",
                    "Account",
                    &id,
                    "Deposited",
                    &json!({"n": n, "text": "x".repeat(n % 7)}),
                )
                .unwrap()
                .with_metadata(&json!({"n": n}))
                .unwrap()
                .with_correlation_id(uuid::Uuid::now_v7())
                .with_trace_id(format!("trace-{n}"))
            })
            .collect();
        let sent = batch.clone();
        let result = append(&db, ExpectedVersion::NoStream, batch).await.unwrap();
        assert_eq!(result.events.len(), size);
        assert_eq!(result.to_version(), size as i64);
        let s = stream(&db, &id).await;
        assert_eq!(s.len(), size);
        for (n, (read, sent)) in s.events.iter().zip(&sent).enumerate() {
            assert_eq!(read.aggregate_version, n as i64 + 1);
            assert_eq!(read.global_position, result.global_positions[n]);
            assert_eq!(read.event_id, sent.event_id);
            assert_eq!(read.event_type, sent.event_type);
            let payload: serde_json::Value = read.payload_as().unwrap();
            assert_eq!(
                payload,
                serde_json::from_str::<serde_json::Value>(sent.payload.get()).unwrap()
            );
            let metadata: serde_json::Value = serde_json::from_str(read.metadata.get()).unwrap();
            assert_eq!(metadata, json!({"n": n}));
            assert_eq!(read.correlation_id, sent.correlation_id);
            assert_eq!(read.trace_id, sent.trace_id);
            assert_eq!(read.created_at, sent.created_at);
        }
    }
    assert_eq!(db.event_rows().await, 10_101);
    db.finish().await;
}

/// Metadata and tracing ids are per event: a batch where only some events
/// carry them, and a batch where none does, read back exactly.
pub async fn optional_columns_round_trip_per_event<F: Fixture>() {
    let db = F::create().await;
    let plain = |n: i64| event("mixed", "Deposited", n);
    let mixed = vec![
        plain(0),
        plain(1)
            .with_metadata(&json!({"user": "alice"}))
            .unwrap()
            .with_correlation_id(uuid::Uuid::now_v7()),
        plain(2).with_causation_id(uuid::Uuid::now_v7()),
        plain(3).with_trace_id("trace-3"),
        plain(4),
    ];
    let none = vec![plain(5), plain(6)];
    // batches of one event (PostgreSQL sends them without arrays), with
    // every optional column and with none, under each expected version
    let full = plain(7)
        .with_metadata(&json!({"user": "bob"}))
        .unwrap()
        .with_correlation_id(uuid::Uuid::now_v7())
        .with_causation_id(uuid::Uuid::now_v7())
        .with_trace_id("trace-7");
    let (single_exact, single_any) = (full.clone(), plain(8));
    let sent: Vec<Event> = mixed
        .iter()
        .chain(&none)
        .chain([&single_exact, &single_any])
        .cloned()
        .collect();
    append(&db, ExpectedVersion::NoStream, mixed).await.unwrap();
    append(&db, ExpectedVersion::Exact(5), none).await.unwrap();
    let stored = append(&db, ExpectedVersion::Exact(7), vec![single_exact])
        .await
        .unwrap();
    assert_eq!((stored.from_version(), stored.to_version()), (8, 8));
    let stored = append(&db, ExpectedVersion::Any, vec![single_any])
        .await
        .unwrap();
    assert_eq!(stored.to_version(), 9);
    let mut alone = full.clone();
    alone.aggregate_id = "alone".into();
    alone.event_id = uuid::Uuid::now_v7();
    append(&db, ExpectedVersion::NoStream, vec![alone.clone()])
        .await
        .unwrap();
    let read_alone = stream(&db, "alone").await;
    assert_eq!(read_alone.len(), 1);
    let got = &read_alone.events[0];
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(got.metadata.get()).unwrap(),
        json!({"user": "bob"})
    );
    assert_eq!(
        (
            got.event_id,
            got.correlation_id,
            got.causation_id,
            got.trace_id.as_deref()
        ),
        (
            alone.event_id,
            alone.correlation_id,
            alone.causation_id,
            Some("trace-7")
        )
    );
    let read = stream(&db, "mixed").await;
    assert_eq!(read.len(), sent.len());
    for (read, sent) in read.events.iter().zip(&sent) {
        let metadata: serde_json::Value = serde_json::from_str(read.metadata.get()).unwrap();
        let expected: serde_json::Value = serde_json::from_str(sent.metadata.get()).unwrap();
        assert_eq!(metadata, expected, "event {}", read.aggregate_version);
        assert_eq!(read.correlation_id, sent.correlation_id);
        assert_eq!(read.causation_id, sent.causation_id);
        assert_eq!(read.trace_id, sent.trace_id);
    }
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(read.events[1].metadata.get()).unwrap(),
        json!({"user": "alice"})
    );
    assert_eq!(read.events[6].metadata.get().replace(' ', ""), "{}");
    db.finish().await;
}

pub async fn retried_batch_returns_the_original_result<F: Fixture>() {
    let db = F::create().await;
    append(&db, ExpectedVersion::NoStream, events("a", 2))
        .await
        .unwrap();
    // The same batch, sent again after its outcome was "lost", under each
    // expected version.
    for (expected, size) in [
        (ExpectedVersion::Exact(2), 3usize),
        (ExpectedVersion::Any, 1),
        (ExpectedVersion::Exact(6), 2),
    ] {
        let batch = events("a", size);
        let original = append(&db, expected, batch.clone()).await.unwrap();
        let again = append(&db, expected, batch.clone()).await.unwrap();
        assert!(
            !original.replayed && again.replayed,
            "the result says it was stored before"
        );
        assert_eq!(again.global_positions, original.global_positions);
        assert_eq!(
            (again.from_version(), again.to_version()),
            (original.from_version(), original.to_version())
        );
        let ids: Vec<_> = again.events.iter().map(|e| e.event_id).collect();
        assert_eq!(ids, batch.iter().map(|e| e.event_id).collect::<Vec<_>>());
        // also under another expected version: still the stored result
        let third = append(&db, ExpectedVersion::Any, batch).await.unwrap();
        assert!(third.replayed);
        assert_eq!(third.global_positions, original.global_positions);
    }
    // a new aggregate's creation, retried
    let created = events("b", 1);
    let first = append(&db, ExpectedVersion::NoStream, created.clone())
        .await
        .unwrap();
    let again = append(&db, ExpectedVersion::NoStream, created)
        .await
        .unwrap();
    assert_eq!(first.global_positions, again.global_positions);
    assert!(!first.replayed && again.replayed);
    assert_eq!(stream(&db, "a").await.version(), 8);
    assert_eq!(db.event_rows().await, 9);
    db.finish().await;
}

pub async fn reused_event_ids_are_refused<F: Fixture>() {
    // (On a pooled connection: a refusal inside the caller's transaction
    // may abort it, and what differs can then not be read; see the
    // backends' own tests.)
    let db = F::create().await;
    let stored = events("a", 2);
    append(&db, ExpectedVersion::NoStream, stored.clone())
        .await
        .unwrap();

    // same id, other payload
    let mut other_payload = stored[0].clone();
    other_payload.payload = serde_json::value::to_raw_value(&json!({"n": 99})).unwrap();
    let err = append_unscoped(&db, ExpectedVersion::Any, vec![other_payload])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::EventIdConflict { event_id, reason: EventIdConflictReason::DifferentContent } if *event_id == stored[0].event_id),
        "{err:?}"
    );
    // same id, other aggregate
    let mut other_aggregate = stored[1].clone();
    other_aggregate.aggregate_id = "b".into();
    let err = append_unscoped(&db, ExpectedVersion::NoStream, vec![other_aggregate])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::EventIdConflict { reason: EventIdConflictReason::OtherAggregate(key), .. } if key.aggregate_id == "a"),
        "{err:?}"
    );
    // a stored id next to a new one
    let mixed = vec![stored[1].clone(), event("a", "Deposited", 5)];
    let err = append_unscoped(&db, ExpectedVersion::Exact(2), mixed)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::EventIdConflict {
                reason: EventIdConflictReason::NotTheSameBatch,
                ..
            }
        ),
        "{err:?}"
    );
    // the stored events in another order
    let swapped = vec![stored[1].clone(), stored[0].clone()];
    let err = append_unscoped(&db, ExpectedVersion::Any, swapped)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::EventIdConflict {
                reason: EventIdConflictReason::NotTheSameBatch,
                ..
            }
        ),
        "{err:?}"
    );
    // one id twice in a batch
    let twice = vec![stored[0].clone(), stored[0].clone()];
    assert!(matches!(
        append_unscoped(&db, ExpectedVersion::Any, twice).await,
        Err(Error::DuplicateEventIdInBatch {
            first: 0,
            second: 1,
            ..
        })
    ));
    assert_eq!(db.event_rows().await, 2);
    assert_eq!(stream(&db, "a").await.version(), 2);
    db.finish().await;
}

pub async fn bad_input_is_refused_and_nothing_written<F: Fixture>() {
    let db = F::create().await;
    let with = |f: &dyn Fn(&mut Event)| {
        let mut e = event("a", "Opened", 0);
        f(&mut e);
        vec![e]
    };
    type Check = Box<dyn Fn(&Error) -> bool>;
    let cases: Vec<(Vec<Event>, ExpectedVersion, Check)> = vec![
        (
            with(&|e| e.bounded_context.clear()),
            ExpectedVersion::Any,
            Box::new(|e| {
                matches!(
                    e,
                    Error::EmptyName {
                        field: NameField::BoundedContext,
                        index: Some(0)
                    }
                )
            }),
        ),
        (
            with(&|e| e.aggregate_type.clear()),
            ExpectedVersion::Any,
            Box::new(|e| {
                matches!(
                    e,
                    Error::EmptyName {
                        field: NameField::AggregateType,
                        ..
                    }
                )
            }),
        ),
        (
            with(&|e| e.aggregate_id.clear()),
            ExpectedVersion::NoStream,
            Box::new(|e| {
                matches!(
                    e,
                    Error::EmptyName {
                        field: NameField::AggregateId,
                        ..
                    }
                )
            }),
        ),
        (
            vec![event("a", "Opened", 0), event("a", "", 1)],
            ExpectedVersion::Any,
            Box::new(|e| {
                matches!(
                    e,
                    Error::EmptyName {
                        field: NameField::EventType,
                        index: Some(1)
                    }
                )
            }),
        ),
        (
            vec![event("a", "Opened", 0), event("b", "Opened", 1)],
            ExpectedVersion::Any,
            Box::new(
                |e| matches!(e, Error::MixedAggregates { index: 1, found, .. } if found.aggregate_id == "b"),
            ),
        ),
        (
            {
                let mut other = event("a", "Opened", 1);
                other.bounded_context = "Shipping".into();
                vec![event("a", "Opened", 0), other]
            },
            ExpectedVersion::Any,
            Box::new(|e| matches!(e, Error::MixedAggregates { index: 1, .. })),
        ),
        (
            vec![event("a", "Opened", 0)],
            ExpectedVersion::Exact(-1),
            Box::new(|e| matches!(e, Error::NegativeVersion { value: -1, .. })),
        ),
        (
            with(&|e| e.event_version = 0),
            ExpectedVersion::Any,
            Box::new(|e| matches!(e, Error::InvalidEventVersion { value: 0, index: 0 })),
        ),
    ];
    for (batch, expected, check) in cases {
        let err = append(&db, expected, batch).await.unwrap_err();
        assert!(check(&err), "unexpected error: {err:?}");
        assert!(!err.to_string().is_empty());
    }
    assert_eq!(db.event_rows().await, 0);
    assert_eq!(db.head_rows().await, 0);
    db.finish().await;
}

// Empty and inverted ranges are given on purpose, to see them refused.
#[allow(clippy::reversed_empty_ranges)]
pub async fn stream_reads_honour_inclusive_bounds<F: Fixture>() {
    let db = F::create().await;
    append(&db, ExpectedVersion::NoStream, events("a", 10))
        .await
        .unwrap();
    append(&db, ExpectedVersion::NoStream, events("b", 3))
        .await
        .unwrap();
    let mut conn = db.pool().acquire().await.unwrap();
    let store = db.store();
    let versions = |s: &es::store::Stream| {
        s.events
            .iter()
            .map(|e| e.aggregate_version)
            .collect::<Vec<_>>()
    };
    // aggregate a's events with versions in a range
    macro_rules! read {
        ($versions:expr) => {
            store
                .read_aggregate_stream(&mut *conn, ("Billing", "Account", "a"), $versions)
                .await
        };
    }
    assert_eq!(versions(&read!(5..).unwrap()), (5..=10).collect::<Vec<_>>());
    assert_eq!(versions(&read!(..=3).unwrap()), vec![1, 2, 3]);
    assert_eq!(versions(&read!(..4).unwrap()), vec![1, 2, 3]);
    assert_eq!(versions(&read!(4..=6).unwrap()), vec![4, 5, 6]);
    assert_eq!(versions(&read!(4..7).unwrap()), vec![4, 5, 6]);
    assert_eq!(versions(&read!(7..=7).unwrap()), vec![7]);
    assert_eq!(versions(&read!(0..=1).unwrap()), vec![1]);
    assert_eq!(
        versions(&read!((Bound::Excluded(3), Bound::Included(5))).unwrap()),
        vec![4, 5]
    );
    assert_eq!(
        versions(&read!((Bound::Excluded(8), Bound::Unbounded)).unwrap()),
        vec![9, 10]
    );
    let s = read!(4..=6).unwrap();
    assert_eq!((s.version(), s.len(), s.is_empty()), (6, 3, false));
    // no match: empty, not an error
    let empty = read!(11..).unwrap();
    assert!(empty.is_empty());
    assert_eq!(empty.version(), 0);
    let missing = store
        .read_aggregate_stream(&mut *conn, ("Billing", "Account", "nobody"), ..)
        .await
        .unwrap();
    assert!(missing.is_empty());
    // only this aggregate's events
    assert!(
        read!(..)
            .unwrap()
            .events
            .iter()
            .all(|e| e.aggregate_id == "a")
    );
    // the aggregate named by a key, or by owned strings
    let key = AggregateKey::new("Billing", "Account", "b");
    let by_key = store
        .read_aggregate_stream(&mut *conn, &key, 2..)
        .await
        .unwrap();
    assert_eq!(versions(&by_key), vec![2, 3]);
    assert_eq!(
        (
            by_key.bounded_context.as_str(),
            by_key.aggregate_type.as_str(),
            by_key.aggregate_id.as_str()
        ),
        ("Billing", "Account", "b")
    );
    let (bounded_context, id) = (String::from("Billing"), String::from("b"));
    let by_strings = store
        .read_aggregate_stream(&mut *conn, (&bounded_context, "Account", &id), ..=1)
        .await
        .unwrap();
    assert_eq!(versions(&by_strings), vec![1]);
    // bad bounds: inverted or empty ranges, negative bounds
    assert!(matches!(
        read!(5..=4),
        Err(Error::InvalidVersionRange { from: 5, to: 4 })
    ));
    assert!(matches!(
        read!(5..5),
        Err(Error::InvalidVersionRange { from: 5, to: 4 })
    ));
    assert!(matches!(
        read!((Bound::Excluded(i64::MAX), Bound::Unbounded)),
        Err(Error::InvalidVersionRange {
            from: i64::MAX,
            to: _
        })
    ));
    assert!(matches!(
        read!(-1..),
        Err(Error::NegativeVersion {
            what: "from_version",
            value: -1
        })
    ));
    assert!(matches!(
        read!(..=-1),
        Err(Error::NegativeVersion {
            what: "to_version",
            value: -1
        })
    ));
    assert!(matches!(
        store
            .read_aggregate_stream(&mut *conn, ("", "Account", "a"), ..)
            .await,
        Err(Error::EmptyName {
            field: NameField::BoundedContext,
            index: None
        })
    ));
    assert!(matches!(
        store
            .read_aggregate_stream(&mut *conn, ("Billing", "Account", ""), ..)
            .await,
        Err(Error::EmptyName {
            field: NameField::AggregateId,
            ..
        })
    ));
    // folds take the same ranges and check them the same way
    let mut folded = Vec::new();
    let visited = store
        .fold_aggregate_stream(&mut *conn, ("Billing", "Account", "a"), 3..5, |event| {
            folded.push(event.aggregate_version);
            Ok::<(), Error>(())
        })
        .await
        .unwrap();
    assert_eq!((visited, folded), (2, vec![3, 4]));
    assert!(matches!(
        store
            .fold_aggregate_stream(&mut *conn, &key, 3..3, |_| Ok::<(), Error>(()))
            .await,
        Err(Error::InvalidVersionRange { from: 3, to: 2 })
    ));
    drop(conn);
    db.finish().await;
}

pub async fn global_reads_page_without_overlap_or_loss<F: Fixture>() {
    let db = F::create().await;
    let mut expected = Vec::new();
    for i in 0..25 {
        let r = append(
            &db,
            ExpectedVersion::Any,
            events(&format!("agg-{}", i % 4), 1 + i % 3),
        )
        .await
        .unwrap();
        expected.extend(r.global_positions);
    }
    let mut conn = db.pool().acquire().await.unwrap();
    for limit in [1, 7, 50, 1000] {
        let mut seen = Vec::new();
        let mut from = 0;
        loop {
            let page = db
                .store()
                .read_events(&mut *conn, from, limit)
                .await
                .unwrap();
            assert!(page.len() as i64 <= limit);
            let Some(last) = page.last() else { break };
            from = last.global_position;
            seen.extend(page.iter().map(|e| e.global_position));
        }
        assert_eq!(seen, expected, "limit {limit}");
    }
    // starting in the middle
    let tail = db
        .store()
        .read_events(&mut *conn, expected[9], 1000)
        .await
        .unwrap();
    assert_eq!(tail.first().unwrap().global_position, expected[10]);
    assert!(matches!(
        db.store().read_events(&mut *conn, 0, 0).await,
        Err(Error::InvalidLimit { value: 0 })
    ));
    assert!(matches!(
        db.store().read_events(&mut *conn, 0, -5).await,
        Err(Error::InvalidLimit { value: -5 })
    ));
    assert!(matches!(
        db.store().read_events(&mut *conn, -1, 10).await,
        Err(Error::NegativePosition { value: -1 })
    ));
    drop(conn);
    db.finish().await;
}

pub async fn filtered_reads_run_in_the_database<F: Fixture>() {
    let db = F::create().await;
    let mut all = Vec::new();
    for (bc, at, id) in [
        ("Billing", "Account", "a1"),
        ("Billing", "Invoice", "i1"),
        ("Shipping", "Parcel", "p1"),
        ("Billing", "Account", "a2"),
        ("Shipping", "Account", "s1"),
    ] {
        for n in 0..4 {
            let e = Event::new(bc, at, id, "Happened", &json!({ "n": n })).unwrap();
            all.push(
                append(&db, ExpectedVersion::Any, vec![e])
                    .await
                    .unwrap()
                    .events
                    .remove(0),
            );
        }
    }
    let mut conn = db.pool().acquire().await.unwrap();
    let store = db.store();
    let read_all = async |conn: &mut _, filter: &EventFilter, limit| {
        let mut seen = Vec::new();
        let mut from = 0;
        loop {
            let page = store
                .read_filtered(conn, from, limit, filter)
                .await
                .unwrap();
            assert!(page.scanned_to >= from);
            seen.extend(page.events.iter().map(|e| e.global_position));
            if page.events.is_empty() {
                return (seen, page.scanned_to);
            }
            from = page.scanned_to;
        }
    };
    let head = all.last().unwrap().global_position;
    for filter in [
        EventFilter::all(),
        EventFilter::all().bounded_context("Billing"),
        EventFilter::all().aggregate_type("Account"),
        EventFilter::all()
            .bounded_context("Billing")
            .aggregate_type("Account"),
        EventFilter::all()
            .bounded_context("Billing")
            .bounded_context("Shipping")
            .aggregate_type("Parcel"),
        EventFilter::all().aggregate_type("Nothing"),
    ] {
        for limit in [1, 3, 100] {
            let (seen, scanned_to) = read_all(&mut *conn, &filter, limit).await;
            let expected: Vec<i64> = all
                .iter()
                .filter(|e| filter.matches(e))
                .map(|e| e.global_position)
                .collect();
            assert_eq!(seen, expected, "{filter:?} limit {limit}");
            // the reader ends at the head, even when nothing matched
            assert_eq!(scanned_to, head, "{filter:?}");
        }
    }
    // partitions split the feed without overlap, per aggregate
    let mut covered = Vec::new();
    for index in 0..3 {
        let filter = EventFilter::all().partition(Partition::new(index, 3).unwrap());
        let (seen, _) = read_all(&mut *conn, &filter, 2).await;
        for position in &seen {
            let event = all.iter().find(|e| e.global_position == *position).unwrap();
            assert!(filter.matches(event));
        }
        covered.extend(seen);
    }
    covered.sort();
    assert_eq!(
        covered,
        all.iter().map(|e| e.global_position).collect::<Vec<_>>()
    );
    // bad filters
    assert!(matches!(
        store
            .read_filtered(&mut *conn, 0, 10, &EventFilter::all().aggregate_type(""))
            .await,
        Err(Error::EmptyName {
            field: NameField::AggregateType,
            ..
        })
    ));
    assert!(matches!(
        store
            .read_filtered(&mut *conn, 0, 0, &EventFilter::all())
            .await,
        Err(Error::InvalidLimit { value: 0 })
    ));
    drop(conn);
    db.finish().await;
}

pub async fn checkpoints_live_in_the_callers_transaction<F: Fixture>() {
    let db = F::create().await;
    let store = db.store();
    let mut conn = db.pool().acquire().await.unwrap();
    assert_eq!(
        store.get_checkpoint(&mut *conn, "balances").await.unwrap(),
        0
    );
    store
        .update_checkpoint(&mut *conn, "balances", 5)
        .await
        .unwrap();
    store
        .update_checkpoint(&mut *conn, "balances", 9)
        .await
        .unwrap();
    store
        .update_checkpoint(&mut *conn, "other", 2)
        .await
        .unwrap();
    assert_eq!(
        store.get_checkpoint(&mut *conn, "balances").await.unwrap(),
        9
    );
    assert_eq!(store.get_checkpoint(&mut *conn, "other").await.unwrap(), 2);
    drop(conn);

    let mut tx = db.pool().begin().await.unwrap();
    store
        .update_checkpoint(&mut *tx, "balances", 42)
        .await
        .unwrap();
    assert_eq!(
        store.get_checkpoint(&mut *tx, "balances").await.unwrap(),
        42
    );
    tx.rollback().await.unwrap();
    let mut conn = db.pool().acquire().await.unwrap();
    assert_eq!(
        store.get_checkpoint(&mut *conn, "balances").await.unwrap(),
        9
    );

    let mut tx = db.pool().begin().await.unwrap();
    store
        .update_checkpoint(&mut *tx, "balances", 43)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        store.get_checkpoint(&mut *conn, "balances").await.unwrap(),
        43
    );

    assert!(matches!(
        store.update_checkpoint(&mut *conn, "", 1).await,
        Err(Error::EmptyName {
            field: NameField::ProjectionName,
            ..
        })
    ));
    assert!(matches!(
        store.get_checkpoint(&mut *conn, "").await,
        Err(Error::EmptyName {
            field: NameField::ProjectionName,
            ..
        })
    ));
    assert!(matches!(
        store.update_checkpoint(&mut *conn, "balances", -1).await,
        Err(Error::NegativePosition { value: -1 })
    ));
    assert_eq!(
        store.get_checkpoint(&mut *conn, "balances").await.unwrap(),
        43
    );
    drop(conn);
    db.finish().await;
}

pub async fn snapshots_keep_the_latest<F: Fixture>() {
    let db = F::create().await;
    let store = db.store();
    let mut conn = db.pool().acquire().await.unwrap();
    let load = async |conn: &mut _, max| {
        store
            .load_snapshot(conn, ("Billing", "Account", "a"), max)
            .await
            .unwrap()
    };
    assert!(load(&mut *conn, None).await.is_none());
    let snap = |version, balance: i64| {
        Snapshot::new(
            "Billing",
            "Account",
            "a",
            version,
            1,
            &json!({ "balance": balance }),
        )
        .unwrap()
    };
    store
        .save_snapshot(&mut *conn, &snap(10, 100))
        .await
        .unwrap();
    let loaded = load(&mut *conn, None).await.unwrap();
    assert_eq!((loaded.version, loaded.schema_version), (10, 1));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(loaded.state.get()).unwrap(),
        json!({"balance": 100})
    );
    // newer replaces, older is ignored
    store
        .save_snapshot(&mut *conn, &snap(20, 200))
        .await
        .unwrap();
    store
        .save_snapshot(&mut *conn, &snap(15, 150))
        .await
        .unwrap();
    assert_eq!(load(&mut *conn, None).await.unwrap().version, 20);
    // a bound below the latest finds nothing (only the latest is kept)
    assert_eq!(load(&mut *conn, Some(20)).await.unwrap().version, 20);
    assert!(load(&mut *conn, Some(19)).await.is_none());
    // other aggregates are separate
    assert!(
        store
            .load_snapshot(&mut *conn, ("Billing", "Account", "b"), None)
            .await
            .unwrap()
            .is_none()
    );
    // bad input
    let mut bad = snap(5, 1);
    bad.aggregate_id.clear();
    assert!(matches!(
        store.save_snapshot(&mut *conn, &bad).await,
        Err(Error::EmptyName {
            field: NameField::AggregateId,
            ..
        })
    ));
    assert!(matches!(
        store.save_snapshot(&mut *conn, &snap(-1, 1)).await,
        Err(Error::NegativeVersion { value: -1, .. })
    ));
    assert!(matches!(
        store
            .load_snapshot(&mut *conn, ("Billing", "", "a"), None)
            .await,
        Err(Error::EmptyName {
            field: NameField::AggregateType,
            ..
        })
    ));
    assert!(matches!(
        store
            .load_snapshot(&mut *conn, ("Billing", "Account", "a"), Some(-2))
            .await,
        Err(Error::NegativeVersion { value: -2, .. })
    ));
    drop(conn);
    db.finish().await;
}

pub async fn checkpoint_claims_are_exclusive<F: Fixture>() {
    let db = F::create().await;
    let store = db.store();
    // the first claim creates the checkpoint
    let mut first = db.pool().begin().await.unwrap();
    assert_eq!(
        store.claim_checkpoint(&mut *first, "p").await.unwrap(),
        Some(0)
    );
    assert_eq!(
        store.claim_checkpoint(&mut *first, "q").await.unwrap(),
        Some(0)
    );
    first.commit().await.unwrap();
    let mut a = db.pool().begin().await.unwrap();
    assert_eq!(store.claim_checkpoint(&mut *a, "p").await.unwrap(), Some(0));
    let mut b = db.pool().begin().await.unwrap();
    if F::SINGLE_WRITER {
        // The claim is the database's write lock: a second claimant waits
        // for the holder to end, then gets what the holder committed.
        let waiting = tokio::spawn({
            let store = store.clone();
            async move {
                let claimed = store.claim_checkpoint(&mut *b, "p").await;
                (b, claimed)
            }
        });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "the second claimant waits");
        store.update_checkpoint(&mut *a, "p", 7).await.unwrap();
        a.commit().await.unwrap();
        let (mut b, claimed) = waiting.await.unwrap();
        assert_eq!(claimed.unwrap(), Some(7));
        assert_eq!(store.claim_checkpoint(&mut *b, "q").await.unwrap(), Some(0));
        b.commit().await.unwrap();
    } else {
        // a second claimant does not wait, it is told no
        assert_eq!(store.claim_checkpoint(&mut *b, "p").await.unwrap(), None);
        // another projection is free
        assert_eq!(store.claim_checkpoint(&mut *b, "q").await.unwrap(), Some(0));
        b.commit().await.unwrap();
        store.update_checkpoint(&mut *a, "p", 7).await.unwrap();
        // not even once the holder has moved the checkpoint (an uncommitted
        // new version of the row)
        let mut e = db.pool().begin().await.unwrap();
        let claimed = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            store.claim_checkpoint(&mut *e, "p"),
        )
        .await
        .expect("the claim does not wait for the holder");
        assert_eq!(claimed.unwrap(), None);
        e.rollback().await.unwrap();
        a.commit().await.unwrap();
    }
    let mut c = db.pool().begin().await.unwrap();
    assert_eq!(store.claim_checkpoint(&mut *c, "p").await.unwrap(), Some(7));
    c.rollback().await.unwrap();
    // a claim made in a rolled-back transaction is released
    let mut d = db.pool().begin().await.unwrap();
    assert_eq!(store.claim_checkpoint(&mut *d, "p").await.unwrap(), Some(7));
    let mut conn = db.pool().acquire().await.unwrap();
    assert!(matches!(
        store.claim_checkpoint(&mut *conn, "").await,
        Err(Error::EmptyName {
            field: NameField::ProjectionName,
            ..
        })
    ));
    drop(conn);
    d.rollback().await.unwrap();
    db.finish().await;
}

pub async fn failures_and_head_position<F: Fixture>() {
    let db = F::create().await;
    let store = db.store();
    let mut conn = db.pool().acquire().await.unwrap();
    assert_eq!(store.head_position(&mut *conn).await.unwrap(), 0);
    drop(conn);
    let appended = append(&db, ExpectedVersion::Any, events("a", 3))
        .await
        .unwrap();
    let mut conn = db.pool().acquire().await.unwrap();
    assert_eq!(
        store.head_position(&mut *conn).await.unwrap(),
        appended.global_positions[2]
    );
    assert!(store.failures(&mut *conn, "p").await.unwrap().is_empty());
    store
        .record_failure(&mut *conn, "p", &appended.events[1], "boom")
        .await
        .unwrap();
    store
        .record_failure(&mut *conn, "other", &appended.events[0], "bang")
        .await
        .unwrap();
    let failures = store.failures(&mut *conn, "p").await.unwrap();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].global_position, appended.global_positions[1]);
    assert_eq!(failures[0].event_id, appended.events[1].event_id);
    assert_eq!(failures[0].event_type, "Deposited");
    assert_eq!(failures[0].error, "boom");
    // an error text with a NUL (which PostgreSQL cannot store) is kept,
    // with U+FFFD in its place, instead of failing the batch
    store
        .record_failure(&mut *conn, "p", &appended.events[1], "bad\0byte")
        .await
        .unwrap();
    let failures = store.failures(&mut *conn, "p").await.unwrap();
    assert_eq!(failures[0].error, "bad\u{fffd}byte");
    drop(conn);
    db.finish().await;
}

/// Checks what every concurrency test ends with: the stream is 1..=n, every
/// acknowledged event is there once, and nothing else is.
async fn assert_stream_holds_exactly<F: Fixture>(db: &F, id: &str, acknowledged: &[uuid::Uuid]) {
    let s = stream(db, id).await;
    let versions: Vec<i64> = s.events.iter().map(|e| e.aggregate_version).collect();
    assert_eq!(
        versions,
        (1..=acknowledged.len() as i64).collect::<Vec<_>>()
    );
    let stored: HashSet<_> = s.events.iter().map(|e| e.event_id).collect();
    assert_eq!(stored.len(), s.len(), "an event is stored twice");
    let acked: HashSet<_> = acknowledged.iter().copied().collect();
    assert_eq!(
        acked.len(),
        acknowledged.len(),
        "an event was acknowledged twice"
    );
    assert_eq!(stored, acked);
    let global: Vec<_> = all_events(db)
        .await
        .into_iter()
        .filter(|e| e.aggregate_id == id)
        .collect();
    assert_eq!(global.len(), acknowledged.len());
    assert!(
        global
            .windows(2)
            .all(|w| w[0].aggregate_version < w[1].aggregate_version)
    );
}

const TASKS: usize = 16;

pub async fn concurrent_exact_appends_have_one_winner_per_version<F: Fixture>() {
    let db = Arc::new(F::create().await);
    const ROUNDS: i64 = 25;
    let barrier = Arc::new(Barrier::new(TASKS));
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (db, barrier) = (db.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let mut won = Vec::new();
            let mut conflicts = 0;
            for round in 0..ROUNDS {
                barrier.wait().await;
                let e = event("hot", "Deposited", task as i64);
                let id = e.event_id;
                let expected = ExpectedVersion::at(round);
                match append(&*db, expected, vec![e]).await {
                    Ok(r) => {
                        assert_eq!(r.to_version(), round + 1);
                        won.push(id);
                    }
                    Err(Error::OptimisticConcurrency {
                        expected: e,
                        actual,
                        ..
                    }) => {
                        assert_eq!(e, expected);
                        assert_eq!(
                            actual,
                            Some(round + 1),
                            "the winner of round {round} is visible to losers"
                        );
                        conflicts += 1;
                    }
                    Err(other) => panic!("unexpected {other:?}"),
                }
            }
            (won, conflicts)
        }));
    }
    let mut acknowledged = Vec::new();
    let mut conflicts = 0;
    for t in tasks {
        let (won, c) = t.await.unwrap();
        acknowledged.extend(won);
        conflicts += c;
    }
    assert_eq!(
        acknowledged.len() as i64,
        ROUNDS,
        "exactly one winner per round"
    );
    assert_eq!(conflicts, (TASKS as i64 - 1) * ROUNDS);
    assert_stream_holds_exactly(&*db, "hot", &acknowledged).await;
    Arc::into_inner(db).unwrap().finish().await;
}

pub async fn concurrent_creations_have_one_winner<F: Fixture>() {
    let db = Arc::new(F::create().await);
    for round in 0..10 {
        let id = format!("new-{round}");
        let barrier = Arc::new(Barrier::new(TASKS));
        let mut tasks = Vec::new();
        for task in 0..TASKS {
            let (db, barrier, id) = (db.clone(), barrier.clone(), id.clone());
            tasks.push(tokio::spawn(async move {
                let e = event(&id, "Opened", task as i64);
                let event_id = e.event_id;
                barrier.wait().await;
                match append(&*db, ExpectedVersion::NoStream, vec![e]).await {
                    Ok(_) => Some(event_id),
                    Err(Error::OptimisticConcurrency {
                        actual: Some(1), ..
                    }) => None,
                    Err(other) => panic!("unexpected {other:?}"),
                }
            }));
        }
        let mut winners = Vec::new();
        for t in tasks {
            winners.extend(t.await.unwrap());
        }
        assert_eq!(winners.len(), 1, "round {round}");
        assert_stream_holds_exactly(&*db, &id, &winners).await;
    }
    Arc::into_inner(db).unwrap().finish().await;
}

pub async fn concurrent_any_appends_all_succeed<F: Fixture>() {
    let db = Arc::new(F::create().await);
    const PER_TASK: usize = 20;
    let barrier = Arc::new(Barrier::new(TASKS));
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (db, barrier) = (db.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut acked = Vec::new();
            for i in 0..PER_TASK {
                // batches of 1 to 3 events
                let batch: Vec<Event> = (0..1 + (task + i) % 3)
                    .map(|n| event("shared", "Deposited", n as i64))
                    .collect();
                let ids: Vec<_> = batch.iter().map(|e| e.event_id).collect();
                let r = append(&*db, ExpectedVersion::Any, batch).await.unwrap();
                assert_eq!(r.to_version() - r.from_version() + 1, ids.len() as i64);
                acked.extend(ids);
            }
            acked
        }));
    }
    let mut acknowledged = Vec::new();
    for t in tasks {
        acknowledged.extend(t.await.unwrap());
    }
    assert_stream_holds_exactly(&*db, "shared", &acknowledged).await;
    Arc::into_inner(db).unwrap().finish().await;
}

/// A lock holder's events are seen by the next one to lock: the retry path
/// of a contended command. The second locker waits for the first to end,
/// then reads what it committed, and appends after it.
pub async fn the_next_locker_sees_what_the_holder_committed<F: Fixture>() {
    use std::time::Duration;

    let db = Arc::new(F::create().await);
    append(&*db, ExpectedVersion::NoStream, events("locked", 2))
        .await
        .unwrap();
    let mut holder = db.pool().begin().await.unwrap();
    let version = db
        .store()
        .lock_aggregate(&mut *holder, ("Billing", "Account", "locked"))
        .await
        .unwrap();
    assert_eq!(version, 2);
    db.store()
        .append(&mut *holder, ExpectedVersion::Exact(2), events("locked", 1))
        .await
        .unwrap();
    let started = Arc::new(tokio::sync::Notify::new());
    let waiter = {
        let (db, started) = (db.clone(), started.clone());
        tokio::spawn(async move {
            let mut tx = db.pool().begin().await.unwrap();
            started.notify_one();
            let mut seen = Vec::new();
            db.store()
                .lock_and_fold_aggregate_stream(
                    &mut *tx,
                    ("Billing", "Account", "locked"),
                    2..,
                    |event| {
                        seen.push((event.aggregate_version, event.payload.to_owned()));
                        Ok::<(), Error>(())
                    },
                )
                .await
                .unwrap();
            let appended = db
                .store()
                .append(&mut *tx, ExpectedVersion::Exact(3), events("locked", 1))
                .await
                .unwrap();
            tx.commit().await.unwrap();
            (seen, appended.to_version())
        })
    };
    started.notified().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiter.is_finished(),
        "the second locker waits for the first"
    );
    holder.commit().await.unwrap();
    let (seen, version) = waiter.await.unwrap();
    let versions: Vec<i64> = seen.iter().map(|(v, _)| *v).collect();
    assert_eq!(
        versions,
        [2, 3],
        "the holder's event is read after the wait"
    );
    let payload: serde_json::Value = serde_json::from_str(&seen[1].1).unwrap();
    assert_eq!(payload, json!({ "n": 0 }));
    assert_eq!(version, 4);
    assert_eq!(stream(&*db, "locked").await.version(), 4);

    // an aggregate without events: nothing to lock, nothing to read
    let mut tx = db.pool().begin().await.unwrap();
    let visited = db
        .store()
        .lock_and_fold_aggregate_stream(&mut *tx, ("Billing", "Account", "nobody"), 1.., |_| {
            Ok::<(), Error>(())
        })
        .await
        .unwrap();
    assert_eq!(visited, 0);
    let err =
        db.store()
            .lock_and_fold_aggregate_stream(&mut *tx, ("Billing", "", "x"), 1.., |_| {
                Ok::<(), Error>(())
            })
            .await
            .unwrap_err();
    assert!(matches!(err, Error::EmptyName { .. }), "{err:?}");
    let err = db
        .store()
        .lock_and_fold_aggregate_stream(&mut *tx, ("Billing", "Account", "x"), -1.., |_| {
            Ok::<(), Error>(())
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::NegativeVersion {
                what: "from_version",
                value: -1
            }
        ),
        "{err:?}"
    );
    tx.rollback().await.unwrap();
    Arc::into_inner(db).unwrap().finish().await;
}

/// Tiny deterministic PRNG (xorshift64*), so the stress test needs no crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Gap safety under load: writers append in random order after random
/// delays, some in transactions that roll back, some after writing to
/// another table first, some on pooled connections; readers follow the
/// global feed by position, each page on a pooled connection. Every reader
/// must see exactly the committed events, in position order, none skipped
/// and none twice.
pub async fn concurrent_readers_never_skip_an_event<F: Fixture>() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    const WRITERS: u64 = 8;
    const TRANSACTIONS: u64 = 40;
    let db = Arc::new(F::create().await);
    db.create_read_model().await;
    let done = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..3 {
        let (db, done) = (db.clone(), done.clone());
        readers.push(tokio::spawn(async move {
            let (mut seen, mut from) = (Vec::new(), 0);
            loop {
                let finished = done.load(Ordering::SeqCst);
                let mut conn = db.pool().acquire().await.unwrap();
                let page = db.store().read_events(&mut *conn, from, 7).await.unwrap();
                drop(conn);
                if let Some(last) = page.last() {
                    from = last.global_position;
                }
                let empty = page.is_empty();
                seen.extend(page.into_iter().map(|e| e.global_position));
                if finished && empty {
                    return seen;
                }
                tokio::time::sleep(Duration::from_micros(300)).await;
            }
        }));
    }
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let db = db.clone();
        writers.push(tokio::spawn(async move {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (w + 1));
            let mut committed = 0;
            for _ in 0..TRANSACTIONS {
                let id = format!("agg-{}", rng.below(5));
                let batch = events(&id, 1 + rng.below(3) as usize);
                if rng.below(4) == 0 {
                    let count = batch.len();
                    append_unscoped(&*db, ExpectedVersion::Any, batch)
                        .await
                        .unwrap();
                    committed += count;
                    continue;
                }
                let mut tx = db.pool().begin().await.unwrap();
                if rng.below(3) == 0 {
                    let side = crate::support::fixture::Handled {
                        event_id: uuid::Uuid::now_v7(),
                        global_position: 0,
                        aggregate_id: "side".to_owned(),
                        aggregate_version: 0,
                        worker: format!("writer-{w}"),
                    };
                    F::record(&mut *tx, &side).await.unwrap();
                    tokio::time::sleep(Duration::from_micros(rng.below(1000))).await;
                }
                let count = batch.len();
                db.store()
                    .append(&mut *tx, ExpectedVersion::Any, batch)
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_micros(rng.below(1000))).await;
                if rng.below(10) == 0 {
                    tx.rollback().await.unwrap();
                } else {
                    tx.commit().await.unwrap();
                    committed += count;
                }
            }
            committed
        }));
    }
    let mut acknowledged = 0;
    for w in writers {
        acknowledged += w.await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    assert!(acknowledged > 200, "only {acknowledged} events committed");
    assert_eq!(db.event_rows().await, acknowledged as i64);
    let committed: Vec<i64> = all_events(&*db)
        .await
        .iter()
        .map(|e| e.global_position)
        .collect();
    assert_eq!(committed.len(), acknowledged);
    for r in readers {
        let seen = r.await.unwrap();
        assert_eq!(
            seen.len(),
            committed.len(),
            "a reader skipped or repeated events"
        );
        assert_eq!(seen, committed);
    }
    Arc::into_inner(db).unwrap().finish().await;
}

fn raw(json: &str) -> Box<serde_json::value::RawValue> {
    serde_json::value::RawValue::from_string(json.to_owned()).unwrap()
}

fn as_value(raw: &serde_json::value::RawValue) -> serde_json::Value {
    serde_json::from_str(raw.get()).unwrap()
}

/// Whether `error` is [`Error::UnstorableText`] for this field, event and
/// reason.
fn is_unstorable(
    error: &Error,
    field: TextField,
    index: Option<usize>,
    reason: UnstorableTextReason,
) -> bool {
    matches!(error, Error::UnstorableText { field: f, index: i, reason: r, .. }
        if *f == field && *i == index && *r == reason)
}

/// NUL (raw in a name, `\u0000` in JSON text) and unpaired surrogate
/// escapes are refused before they are sent: PostgreSQL would refuse them
/// and abort the caller's transaction, losing the valid append made in it
/// before. Each case runs in one transaction: a valid append, the refused
/// one, another valid append, commit.
pub async fn unstorable_text_is_refused_and_the_transaction_stays_usable<F: Fixture>() {
    use UnstorableTextReason::{LoneSurrogate, Nul};
    let db = F::create().await;
    let bad = |f: &dyn Fn(&mut Event)| {
        let mut e = event("bad", "Opened", 0);
        f(&mut e);
        e
    };
    let cases: Vec<(Vec<Event>, TextField, Option<usize>, UnstorableTextReason)> = vec![
        (
            vec![bad(&|e| e.payload = raw(r#"{"name":"a\u0000b"}"#))],
            TextField::Payload,
            Some(0),
            Nul,
        ),
        (
            // serde_json writes a NUL in a string as `\u0000`
            vec![
                event("bad", "Opened", 0),
                Event::new(
                    "Billing",
                    "Account",
                    "bad",
                    "Renamed",
                    &json!({"name": "a\0b"}),
                )
                .unwrap(),
            ],
            TextField::Payload,
            Some(1),
            Nul,
        ),
        (
            vec![
                event("bad", "Opened", 0),
                event("bad", "Renamed", 1),
                bad(&|e| e.metadata = raw(r#"{"user":"\\\u0000"}"#)),
            ],
            TextField::Metadata,
            Some(2),
            Nul,
        ),
        (
            vec![bad(&|e| e.aggregate_id = "acc\0-1".into())],
            TextField::Name(NameField::AggregateId),
            Some(0),
            Nul,
        ),
        (
            vec![bad(&|e| e.bounded_context = "\0".into())],
            TextField::Name(NameField::BoundedContext),
            Some(0),
            Nul,
        ),
        (
            vec![bad(&|e| e.aggregate_type = "Acc\0ount".into())],
            TextField::Name(NameField::AggregateType),
            Some(0),
            Nul,
        ),
        (
            vec![
                event("bad", "Opened", 0),
                bad(&|e| e.event_type = "Ren\0amed".into()),
            ],
            TextField::Name(NameField::EventType),
            Some(1),
            Nul,
        ),
        (
            vec![bad(&|e| e.trace_id = Some("trace\0".into()))],
            TextField::Name(NameField::TraceId),
            Some(0),
            Nul,
        ),
        (
            vec![bad(&|e| e.payload = raw(r#"{"emoji":"\ud83d"}"#))],
            TextField::Payload,
            Some(0),
            LoneSurrogate,
        ),
        (
            vec![bad(&|e| e.payload = raw(r#"["\ud83d\ude00", "\ude00"]"#))],
            TextField::Payload,
            Some(0),
            LoneSurrogate,
        ),
        (
            vec![bad(&|e| e.metadata = raw(r#"{"\udfff":1}"#))],
            TextField::Metadata,
            Some(0),
            LoneSurrogate,
        ),
    ];
    let cases_count = cases.len();
    for (i, (batch, field, index, reason)) in cases.into_iter().enumerate() {
        let id = format!("ok-{i}");
        let mut tx = db.pool().begin().await.unwrap();
        db.store()
            .append(&mut *tx, ExpectedVersion::NoStream, events(&id, 1))
            .await
            .unwrap();
        let error = db
            .store()
            .append(&mut *tx, ExpectedVersion::Any, batch)
            .await
            .unwrap_err();
        assert!(
            is_unstorable(&error, field, index, reason),
            "case {i}: unexpected error: {error:?}"
        );
        assert!(!error.to_string().is_empty());
        db.store()
            .append(&mut *tx, ExpectedVersion::Exact(1), events(&id, 1))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(stream(&db, &id).await.version(), 2, "case {i}");
    }
    assert_eq!(db.event_rows().await, 2 * cases_count as i64);
    assert!(stream(&db, "bad").await.is_empty());

    // What only looks like them is text like any other: an escaped
    // backslash before `u0000`, surrogate pairs, other escapes.
    let fine = raw(r#"{"path":"C:\\u0000","emoji":"\ud83d\ude00","ctl":"\u0001\t\"\\"}"#);
    let event = Event::from_raw("Billing", "Account", "fine", "Noted", fine.clone())
        .with_raw_metadata(raw(r#"{"note":"\\ud800"}"#));
    append(&db, ExpectedVersion::NoStream, vec![event])
        .await
        .unwrap();
    let stored = stream(&db, "fine").await;
    assert_eq!(as_value(&stored.events[0].payload), as_value(&fine));
    assert_eq!(
        as_value(&stored.events[0].payload)["path"],
        json!("C:\\u0000")
    );
    assert_eq!(
        as_value(&stored.events[0].metadata),
        json!({"note": "\\ud800"})
    );
    db.finish().await;
}

/// Reads, checkpoints, snapshots and filters refuse names holding NUL
/// (and snapshot states holding `\u0000` or an unpaired surrogate escape)
/// before anything is sent: the caller's transaction stays usable.
pub async fn unstorable_names_are_refused_by_every_call_that_takes_them<F: Fixture>() {
    let db = F::create().await;
    let store = db.store();
    let name = |field| TextField::Name(field);
    let nul = UnstorableTextReason::Nul;
    let mut tx = db.pool().begin().await.unwrap();
    store
        .append(&mut *tx, ExpectedVersion::NoStream, events("a", 1))
        .await
        .unwrap();
    let refused: Vec<(Error, TextField, UnstorableTextReason)> = vec![
        (
            store
                .read_aggregate_stream(&mut *tx, ("Billing", "Account", "a\0"), ..)
                .await
                .unwrap_err(),
            name(NameField::AggregateId),
            nul,
        ),
        (
            store
                .lock_aggregate(&mut *tx, ("Billing", "Acc\0", "a"))
                .await
                .unwrap_err(),
            name(NameField::AggregateType),
            nul,
        ),
        (
            store
                .read_filtered(
                    &mut *tx,
                    0,
                    10,
                    &EventFilter::all()
                        .bounded_context("Billing")
                        .bounded_context("\0"),
                )
                .await
                .unwrap_err(),
            name(NameField::BoundedContext),
            nul,
        ),
        (
            store
                .read_filtered(&mut *tx, 0, 10, &EventFilter::all().aggregate_type("A\0"))
                .await
                .unwrap_err(),
            name(NameField::AggregateType),
            nul,
        ),
        (
            store.get_checkpoint(&mut *tx, "p\0").await.unwrap_err(),
            name(NameField::ProjectionName),
            nul,
        ),
        (
            store
                .update_checkpoint(&mut *tx, "p\0", 1)
                .await
                .unwrap_err(),
            name(NameField::ProjectionName),
            nul,
        ),
        (
            store.claim_checkpoint(&mut *tx, "\0p").await.unwrap_err(),
            name(NameField::ProjectionName),
            nul,
        ),
        (
            store.failures(&mut *tx, "\0").await.unwrap_err(),
            name(NameField::ProjectionName),
            nul,
        ),
        (
            store
                .load_snapshot(&mut *tx, ("Billing", "Account", "a\0"), None)
                .await
                .unwrap_err(),
            name(NameField::AggregateId),
            nul,
        ),
        (
            store
                .save_snapshot(
                    &mut *tx,
                    &Snapshot::new("Bill\0ing", "Account", "a", 1, 1, &json!({})).unwrap(),
                )
                .await
                .unwrap_err(),
            name(NameField::BoundedContext),
            nul,
        ),
        (
            store
                .save_snapshot(
                    &mut *tx,
                    &Snapshot::new("Billing", "Account", "a", 1, 1, &json!({"s": "\0"})).unwrap(),
                )
                .await
                .unwrap_err(),
            TextField::SnapshotState,
            nul,
        ),
        (
            store
                .save_snapshot(
                    &mut *tx,
                    &Snapshot::from_raw("Billing", "Account", "a", 1, 1, raw(r#"["\udbff"]"#)),
                )
                .await
                .unwrap_err(),
            TextField::SnapshotState,
            UnstorableTextReason::LoneSurrogate,
        ),
    ];
    for (i, (error, field, reason)) in refused.iter().enumerate() {
        assert!(
            is_unstorable(error, *field, None, *reason),
            "call {i}: unexpected error: {error:?}"
        );
    }
    // the transaction is still usable: more work, then commit
    store.update_checkpoint(&mut *tx, "p", 1).await.unwrap();
    store
        .save_snapshot(
            &mut *tx,
            &Snapshot::new("Billing", "Account", "a", 1, 1, &json!({})).unwrap(),
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(stream(&db, "a").await.version(), 1);
    let mut conn = db.pool().acquire().await.unwrap();
    assert_eq!(store.get_checkpoint(&mut *conn, "p").await.unwrap(), 1);
    assert!(
        store
            .load_snapshot(&mut *conn, ("Billing", "Account", "a"), None)
            .await
            .unwrap()
            .is_some()
    );
    drop(conn);
    db.finish().await;
}

/// A string of exactly `bytes` bytes of UTF-8 made of multibyte
/// characters (2, 3 and 4 bytes wide) where they fit.
fn wide_name(bytes: usize) -> String {
    let mut name = String::new();
    for c in ['😀', '€', 'é'].into_iter().cycle() {
        if name.len() + c.len_utf8() > bytes {
            break;
        }
        name.push(c);
    }
    while name.len() < bytes {
        name.push('x');
    }
    assert_eq!(name.len(), bytes);
    name
}

/// Names as long as [`limits`] allows, in multibyte characters, are
/// stored and read back on every backend; one byte more is refused with
/// [`Error::NameTooLong`] and writes nothing.
pub async fn names_at_the_limit_are_stored_and_longer_ones_refused<F: Fixture>() {
    let db = F::create().await;
    let store = db.store();
    let bc = wide_name(limits::MAX_BOUNDED_CONTEXT_BYTES);
    let at = wide_name(limits::MAX_AGGREGATE_TYPE_BYTES);
    let id = wide_name(limits::MAX_AGGREGATE_ID_BYTES);
    let et = wide_name(limits::MAX_EVENT_TYPE_BYTES);
    let trace = wide_name(limits::MAX_TRACE_ID_BYTES);
    let projection = wide_name(limits::MAX_PROJECTION_NAME_BYTES);
    assert!(id.chars().count() < id.len(), "multibyte characters");
    let long = |name: &str| format!("{name}x");

    let event = Event::new(&bc, &at, &id, &et, &json!({"n": 1}))
        .unwrap()
        .with_trace_id(&trace);
    append(&db, ExpectedVersion::NoStream, vec![event])
        .await
        .unwrap();
    let mut conn = db.pool().acquire().await.unwrap();
    let read = store
        .read_aggregate_stream(&mut *conn, (&bc, &at, &id), ..)
        .await
        .unwrap();
    assert_eq!(read.len(), 1);
    let stored = &read.events[0];
    assert_eq!(
        (
            &stored.bounded_context,
            &stored.aggregate_type,
            &stored.aggregate_id,
            &stored.event_type,
            stored.trace_id.as_ref()
        ),
        (&bc, &at, &id, &et, Some(&trace))
    );
    let page = store
        .read_filtered(
            &mut *conn,
            0,
            10,
            &EventFilter::all().bounded_context(&bc).aggregate_type(&at),
        )
        .await
        .unwrap();
    assert_eq!(page.events.len(), 1);
    store
        .update_checkpoint(&mut *conn, &projection, 7)
        .await
        .unwrap();
    assert_eq!(
        store.get_checkpoint(&mut *conn, &projection).await.unwrap(),
        7
    );
    store
        .save_snapshot(
            &mut *conn,
            &Snapshot::new(&bc, &at, &id, 1, 1, &json!({})).unwrap(),
        )
        .await
        .unwrap();
    assert!(
        store
            .load_snapshot(&mut *conn, (&bc, &at, &id), None)
            .await
            .unwrap()
            .is_some()
    );
    drop(conn);

    // one byte over, in one transaction after a valid append
    let too_long = |error: &Error, field: NameField, index: Option<usize>| {
        let max = field.max_bytes();
        matches!(error, Error::NameTooLong { field: f, index: i, len, max: m }
            if *f == field && *i == index && *len == max + 1 && *m == max)
    };
    let over = |f: &dyn Fn(&mut Event)| {
        let mut e = Event::new(&bc, &at, &id, &et, &json!({})).unwrap();
        f(&mut e);
        e
    };
    let cases: Vec<(Vec<Event>, NameField, usize)> = vec![
        (
            vec![over(&|e| e.bounded_context = long(&bc))],
            NameField::BoundedContext,
            0,
        ),
        (
            vec![over(&|e| e.aggregate_type = long(&at))],
            NameField::AggregateType,
            0,
        ),
        (
            vec![over(&|e| e.aggregate_id = long(&id))],
            NameField::AggregateId,
            0,
        ),
        (
            vec![over(&|_| ()), over(&|e| e.event_type = long(&et))],
            NameField::EventType,
            1,
        ),
        (
            vec![
                over(&|_| ()),
                over(&|_| ()),
                over(&|e| e.trace_id = Some(long(&trace))),
            ],
            NameField::TraceId,
            2,
        ),
    ];
    let mut tx = db.pool().begin().await.unwrap();
    store
        .append(&mut *tx, ExpectedVersion::NoStream, events("valid", 1))
        .await
        .unwrap();
    for (batch, field, index) in cases {
        let error = store
            .append(&mut *tx, ExpectedVersion::Any, batch)
            .await
            .unwrap_err();
        assert!(
            too_long(&error, field, Some(index)),
            "{field}: unexpected error: {error:?}"
        );
    }
    let refused = [
        (
            store
                .read_aggregate_stream(&mut *tx, (&bc, &at, &long(&id)), ..)
                .await
                .unwrap_err(),
            NameField::AggregateId,
        ),
        (
            store
                .read_filtered(
                    &mut *tx,
                    0,
                    10,
                    &EventFilter::all().bounded_context(long(&bc)),
                )
                .await
                .unwrap_err(),
            NameField::BoundedContext,
        ),
        (
            store
                .update_checkpoint(&mut *tx, &long(&projection), 1)
                .await
                .unwrap_err(),
            NameField::ProjectionName,
        ),
        (
            store
                .save_snapshot(
                    &mut *tx,
                    &Snapshot::new(&bc, long(&at), &id, 1, 1, &json!({})).unwrap(),
                )
                .await
                .unwrap_err(),
            NameField::AggregateType,
        ),
    ];
    for (error, field) in &refused {
        assert!(
            too_long(error, *field, None),
            "{field}: unexpected error: {error:?}"
        );
    }
    tx.commit().await.unwrap();
    // the valid event and the first one, nothing else
    assert_eq!(db.event_rows().await, 2);
    assert_eq!(db.head_rows().await, 2);
    assert_eq!(stream(&db, "valid").await.version(), 1);
    db.finish().await;
}

/// Two stores in one schema or file (different table names) each migrate,
/// track their own migrations and keep their events apart.
pub async fn two_stores_in_one_schema_each_migrate<F: Fixture>() {
    let db = F::create().await;
    let other = db.second_store().await;
    let mut conn = db.pool().acquire().await.unwrap();
    other
        .append(
            &mut *conn,
            ExpectedVersion::NoStream,
            vec![event("a", "Opened", 1)],
        )
        .await
        .unwrap();
    assert!(
        db.store()
            .read_events(&mut *conn, 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(other.read_events(&mut *conn, 0, 10).await.unwrap().len(), 1);
    drop(conn);
    // each store recorded every migration once, in its own table
    let own = db.rows_in("_es_migrations").await;
    assert!(own > 0);
    assert_eq!(db.rows_in("_es_migrations_other_events").await, own);
    db.finish().await;
}
