//! What each backend can store, refused with a typed error before anything
//! is sent, so that the caller's transaction keeps what it did before:
//!
//! - JSON nested deeper than the backend keeps (`depth`, every backend),
//!   at and past each limit, and the databases' own limits it rests on;
//! - statements larger than MariaDB's `max_allowed_packet` (`packet`), on
//!   a private server whose limit is small, through the store and the
//!   repository;
//! - the gap-safe feed on MariaDB sessions at each isolation level
//!   (`isolation`): READ UNCOMMITTED refused, the others working, for a
//!   reader and a projection processor.

mod support;

#[cfg(feature = "mysql")]
#[path = "../examples/bank/domain.rs"]
#[allow(dead_code)]
mod bank;

use es::store::{
    AggregateStreamReader, DocumentStore, Error, Event, EventReader, EventStore, ExpectedVersion,
    Snapshot, SnapshotStore, TextField,
};
use serde_json::value::RawValue;
use support::Fixture;

fn raw(text: impl Into<String>) -> Box<RawValue> {
    RawValue::from_string(text.into()).expect("valid JSON")
}

/// `depth` arrays, one in the other: `[[[]]]`.
fn arrays(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

/// `depth` objects, one in the other, around a string holding brackets
/// (which do not count): `{"a":{"a":"[{"}}`.
fn objects(depth: usize) -> String {
    format!(r#"{}"[{{""#, r#"{"a":"#.repeat(depth)) + &"}".repeat(depth)
}

/// Objects and arrays in turn, `depth` levels, with siblings at each
/// level: `{"k":[1,{"k":[2,{}]},"x"],"z":[]}`.
fn mixed(depth: usize) -> String {
    let mut text = String::from("null");
    for level in (0..depth).rev() {
        text = if level % 2 == 0 {
            format!(r#"{{"k":{text},"z":"]]"}}"#)
        } else {
            format!(r#"[{level},{text},"x"]"#)
        };
    }
    text
}

fn plain(id: &str) -> Event {
    Event::new(
        "Billing",
        "Account",
        id,
        "Opened",
        &serde_json::json!({"n": 1}),
    )
    .unwrap()
}

fn nested(id: &str, payload: String) -> Event {
    Event::from_raw("Billing", "Account", id, "Nested", raw(payload))
}

async fn version<F: Fixture>(db: &F, id: &str) -> i64 {
    let mut conn = db.pool().acquire().await.unwrap();
    db.store()
        .read_aggregate_stream(&mut *conn, ("Billing", "Account", id), ..)
        .await
        .unwrap()
        .version()
}

fn as_value(raw: &RawValue) -> serde_json::Value {
    serde_json::from_str(raw.get()).unwrap()
}

/// Payloads and metadata past the backend's depth, in a transaction that
/// appended before: a typed error naming the limit, and the earlier
/// append (and one after) commit. At the limit, payload and metadata are
/// stored and read back, by stream and by the global feed; snapshot
/// states and documents are held to the same limit.
/// `max` is the backend's limit.
async fn json_depth_past_the_limit_is_refused_and_the_transaction_keeps_its_appends<F: Fixture>(
    max: usize,
) {
    let db = F::create().await;
    let store = db.store();
    for text in [arrays(max), objects(max), mixed(max)] {
        assert_eq!(es_depth(&text), max, "{text}");
    }
    let with_metadata = |id: &str, metadata: String| plain(id).with_raw_metadata(raw(metadata));
    let cases: Vec<(Vec<Event>, TextField, usize, usize)> = vec![
        (
            vec![nested("deep", arrays(max + 1))],
            TextField::Payload,
            0,
            max + 1,
        ),
        (
            vec![nested("deep", objects(max + 1))],
            TextField::Payload,
            0,
            max + 1,
        ),
        (
            vec![plain("deep"), nested("deep", mixed(max + 1))],
            TextField::Payload,
            1,
            max + 1,
        ),
        // what made PostgreSQL fail with `stack depth limit exceeded`
        (
            vec![
                plain("deep"),
                plain("deep"),
                nested("deep", arrays(100_000)),
            ],
            TextField::Payload,
            2,
            100_000,
        ),
        (
            vec![with_metadata("deep", objects(max + 1))],
            TextField::Metadata,
            0,
            max + 1,
        ),
        (
            vec![plain("deep"), with_metadata("deep", arrays(1_000))],
            TextField::Metadata,
            1,
            1_000,
        ),
    ];
    let count = cases.len();
    for (i, (batch, field, index, depth)) in cases.into_iter().enumerate() {
        let id = format!("kept-{i}");
        let mut tx = db.pool().begin().await.unwrap();
        store
            .append(&mut *tx, ExpectedVersion::NoStream, vec![plain(&id)])
            .await
            .unwrap();
        let error = store
            .append(&mut *tx, ExpectedVersion::Any, batch)
            .await
            .unwrap_err();
        match &error {
            Error::JsonTooDeep {
                field: f,
                index: Some(n),
                depth: d,
                max: m,
            } => assert_eq!((*f, *n, *d, *m), (field, index, depth, max), "case {i}"),
            other => panic!("case {i}: expected JsonTooDeep, got {other:?}"),
        }
        assert!(!error.is_transient());
        assert!(
            error
                .to_string()
                .contains(&format!("deeper than the {max} allowed"))
        );
        // the transaction is usable and keeps the earlier append
        store
            .append(&mut *tx, ExpectedVersion::Exact(1), vec![plain(&id)])
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(version(&db, &id).await, 2, "case {i}");
    }
    assert_eq!(db.event_rows().await, 2 * count as i64);
    assert_eq!(version(&db, "deep").await, 0);

    // At the limit: stored, and read back as given.
    let at_limit = vec![
        nested("limit", arrays(max)),
        nested("limit", objects(max)),
        nested("limit", mixed(max)).with_raw_metadata(raw(mixed(max))),
    ];
    let mut tx = db.pool().begin().await.unwrap();
    store
        .append(&mut *tx, ExpectedVersion::NoStream, at_limit.clone())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut conn = db.pool().acquire().await.unwrap();
    let stream = store
        .read_aggregate_stream(&mut *conn, ("Billing", "Account", "limit"), ..)
        .await
        .unwrap();
    assert_eq!(stream.events.len(), 3);
    for (stored, given) in stream.events.iter().zip(&at_limit) {
        assert_eq!(as_value(&stored.payload), as_value(&given.payload));
        assert_eq!(as_value(&stored.metadata), as_value(&given.metadata));
    }
    let feed = store.read_events(&mut *conn, 0, 1_000).await.unwrap();
    assert_eq!(feed.iter().filter(|e| e.aggregate_id == "limit").count(), 3);
    // The same limit for snapshot states and documents.
    let snapshot =
        |depth| Snapshot::from_raw("Billing", "Account", "snap", 1, 1, raw(arrays(depth)));
    let mut tx = db.pool().begin().await.unwrap();
    store
        .append(&mut *tx, ExpectedVersion::NoStream, vec![plain("snap")])
        .await
        .unwrap();
    let refused = store.save_snapshot(&mut *tx, &snapshot(max + 1)).await;
    assert!(
        matches!(refused, Err(Error::JsonTooDeep { field: TextField::SnapshotState, index: None, depth, max: m }) if depth == max + 1 && m == max),
        "{refused:?}"
    );
    store.save_snapshot(&mut *tx, &snapshot(max)).await.unwrap();
    let refused = store
        .put_document(&mut *tx, "deep", "d-1", &raw(objects(max + 1)))
        .await;
    assert!(
        matches!(refused, Err(Error::JsonTooDeep { field: TextField::Document, index: None, depth, .. }) if depth == max + 1),
        "{refused:?}"
    );
    store
        .put_document(&mut *tx, "deep", "d-1", &raw(objects(max)))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let loaded = store
        .load_snapshot(&mut *conn, ("Billing", "Account", "snap"), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(as_value(&loaded.state), as_value(&raw(arrays(max))));
    let document = store.get_document(&mut *conn, "deep", "d-1").await.unwrap();
    assert_eq!(as_value(&document.unwrap()), as_value(&raw(objects(max))));
    assert_eq!(version(&db, "snap").await, 1);
    drop(conn);
    db.finish().await;
}

/// The depth as the tests count it: arrays and objects, outside strings
/// (an independent count, by parsing into a value).
fn es_depth(text: &str) -> usize {
    fn depth(value: &serde_json::Value) -> usize {
        match value {
            serde_json::Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
            serde_json::Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
            _ => 0,
        }
    }
    depth(&serde_json::from_str(text).unwrap())
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use sqlx::Connection;
    use support::TestDb;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_json_depth_past_the_limit_is_refused_and_the_transaction_keeps_its_appends() {
        json_depth_past_the_limit_is_refused_and_the_transaction_keeps_its_appends::<TestDb>(
            es::store::limits::MAX_JSON_DEPTH,
        )
        .await;
    }

    /// Why the store checks: PostgreSQL parses `jsonb` recursively and,
    /// past its `max_stack_depth`, fails the statement, which aborts the
    /// transaction it ran in. The store's limit is far below where that
    /// happens (about 13,000 levels with the default 2 MB).
    #[tokio::test]
    async fn postgres_itself_fails_deep_json_past_its_stack_depth_and_aborts_the_transaction() {
        let mut conn = sqlx::PgConnection::connect_with(&support::connect_options())
            .await
            .unwrap();
        let mut tx = conn.begin().await.unwrap();
        let ok: String = sqlx::query_scalar("SELECT jsonb_typeof($1::text::jsonb)")
            .bind(arrays(es::store::limits::MAX_JSON_DEPTH * 10))
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(ok, "array");
        let error = sqlx::query("SELECT jsonb_typeof($1::text::jsonb)")
            .bind(arrays(100_000))
            .execute(&mut *tx)
            .await
            .unwrap_err();
        assert_eq!(
            error.as_database_error().and_then(|e| e.code()).as_deref(),
            Some("54001"),
            "{error}"
        );
        let aborted = sqlx::query("SELECT 1").execute(&mut *tx).await.unwrap_err();
        assert_eq!(
            aborted
                .as_database_error()
                .and_then(|e| e.code())
                .as_deref(),
            Some("25P02")
        );
    }
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use super::*;
    use support::sqlite::SqliteDb;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_json_depth_past_the_limit_is_refused_and_the_transaction_keeps_its_appends() {
        json_depth_past_the_limit_is_refused_and_the_transaction_keeps_its_appends::<SqliteDb>(
            es::store::limits::MAX_JSON_DEPTH,
        )
        .await;
    }

    /// SQLite's `json_valid` (the JSON columns' check) accepts 1,000
    /// levels and refuses more: above the store's limit.
    #[tokio::test]
    async fn sqlite_json_valid_depth_limit_is_above_the_stores() {
        let db = SqliteDb::new().await;
        for (depth, valid) in [(1_000, 1), (1_001, 0)] {
            let got: i64 = sqlx::query_scalar("SELECT json_valid(?)")
                .bind(arrays(depth))
                .fetch_one(&db.pool)
                .await
                .unwrap();
            assert_eq!(got, valid, "depth {depth}");
        }
        assert!(db.store.max_json_depth() < 1_000);
        db.pool.close().await;
    }
}

#[cfg(feature = "mysql")]
mod mariadb {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex, OnceLock};
    use std::time::Instant;

    use super::bank;
    use super::*;
    use es::aggregate::{Projection, ProjectionError, ProjectionProcessor};
    use es::store::{CheckpointStore, MySqlStore, PersistedEvent};
    use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
    use sqlx::{Connection, Executor, MySqlConnection};
    use support::mysql::MySqlDb;
    use support::server::TestServer;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mysql_json_depth_past_the_limit_is_refused_and_the_transaction_keeps_its_appends() {
        json_depth_past_the_limit_is_refused_and_the_transaction_keeps_its_appends::<MySqlDb>(
            es::store::limits::MAX_JSON_DEPTH_MYSQL,
        )
        .await;
    }

    /// MariaDB's `json_valid`, which checks every JSON column, accepts 31
    /// levels and refuses 32: the store's limit is exactly what it stores.
    /// (MySQL 8 accepts 100.)
    #[tokio::test]
    async fn mariadb_json_valid_depth_limit_is_the_stores() {
        let db = MySqlDb::new().await;
        let max = db.store.max_json_depth();
        let mariadb: bool = sqlx::query_scalar("SELECT VERSION() LIKE '%MariaDB%'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        let past = i64::from(!mariadb);
        for (text, valid) in [
            (arrays(max), 1),
            (objects(max), 1),
            (mixed(max), 1),
            (arrays(max + 1), past),
            (objects(max + 1), past),
            (mixed(max + 1), past),
        ] {
            let got: i64 = sqlx::query_scalar("SELECT JSON_VALID(?)")
                .bind(&text)
                .fetch_one(&db.pool)
                .await
                .unwrap();
            assert_eq!(got, valid, "{text}");
        }
        db.drop().await;
    }

    // ---- max_allowed_packet -------------------------------------------

    /// The private server's `max_allowed_packet`.
    const SMALL_PACKET: u64 = 1 << 20;

    /// A private MariaDB with a 1 MiB `max_allowed_packet`, shared by the
    /// tests that do not change it (each in a database of its own). Its
    /// watchdog stops it when the test process ends.
    fn small_packet_server() -> &'static TestServer {
        static SERVER: OnceLock<TestServer> = OnceLock::new();
        SERVER.get_or_init(|| TestServer::mysql_with(&["--max-allowed-packet=1M"]))
    }

    fn options(server: &TestServer, database: &str) -> MySqlConnectOptions {
        let options: MySqlConnectOptions = server.url().parse().unwrap();
        options.database(database)
    }

    /// A database of its own on `server`, migrated, with a pool of
    /// `connections`.
    async fn database_on(server: &TestServer, connections: u32) -> (MySqlPool, MySqlStore) {
        let name = format!("limits_{}", uuid::Uuid::new_v4().simple());
        let mut admin = MySqlConnection::connect(&server.url()).await.unwrap();
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .unwrap();
        admin.close().await.unwrap();
        let pool = MySqlPoolOptions::new()
            .max_connections(connections)
            .connect_with(options(server, &name))
            .await
            .unwrap();
        let store = MySqlStore::new();
        store.migrate(&pool).await.unwrap();
        (pool, store)
    }

    /// An event whose payload is a JSON string of `len` bytes.
    fn sized(id: &str, len: usize) -> Event {
        let payload = format!("\"{}\"", "x".repeat(len - 2));
        Event::from_raw("Billing", "Account", id, "Sized", raw(payload))
    }

    fn packet_too_large(error: &Error) -> Option<(TextField, Option<usize>, u64, u64)> {
        match error {
            Error::PacketTooLarge {
                field,
                index,
                size,
                max,
            } => Some((*field, *index, *size, *max)),
            _ => None,
        }
    }

    /// The fact the store's check rests on, on a real server: a packet of
    /// `max_allowed_packet - 1` bytes is taken, one of exactly
    /// `max_allowed_packet` costs the connection. (`SELECT LENGTH(?)` with
    /// one text parameter of `n` bytes is a packet of 18 + n bytes: 11 of
    /// header, 1 of NULL bitmap, 2 of type, 4 of length prefix.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn packet_of_exactly_max_allowed_packet_costs_the_connection() {
        let server = small_packet_server();
        let mut conn = MySqlConnection::connect(&server.url()).await.unwrap();
        let max: u64 = sqlx::query_scalar("SELECT CAST(@@max_allowed_packet AS UNSIGNED)")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(max, SMALL_PACKET);
        let text = |packet: u64| "x".repeat((packet - 18) as usize);
        let taken: i64 = sqlx::query_scalar("SELECT LENGTH(?)")
            .bind(text(max - 1))
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(taken as u64, max - 19);
        let refused = sqlx::query_scalar::<_, i64>("SELECT LENGTH(?)")
            .bind(text(max))
            .fetch_one(&mut conn)
            .await;
        assert!(
            refused.is_err(),
            "a packet of max_allowed_packet bytes was taken"
        );
        let error = Error::from(refused.unwrap_err());
        // What a client sees: the server's 1153, or a lost connection,
        // which looks transient. The store never lets it come to that.
        println!("a packet of max_allowed_packet bytes: {error}");
        assert!(sqlx::query("SELECT 1").execute(&mut conn).await.is_err());
    }

    /// One event too large for the server, alone or in a batch, in a
    /// transaction that appended before: refused with a typed error,
    /// nothing sent (the connection and the transaction survive), and the
    /// earlier append commits. An event whose statement is one byte
    /// smaller is stored, and read back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn packet_limit_refuses_an_event_too_large_for_the_server_before_sending_it() {
        let (pool, store) = database_on(small_packet_server(), 2).await;
        let mut conn = pool.acquire().await.unwrap();
        let id: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        let mut tx = conn.begin().await.unwrap();
        store
            .append(&mut *tx, ExpectedVersion::NoStream, vec![plain("a")])
            .await
            .unwrap();
        // The size the store gives a payload of the limit's length, and so
        // the payload whose statement is exactly the limit.
        let probe = store
            .append(
                &mut *tx,
                ExpectedVersion::Any,
                vec![sized("a", SMALL_PACKET as usize)],
            )
            .await
            .unwrap_err();
        let (_, _, size, max) = packet_too_large(&probe).expect("PacketTooLarge");
        assert_eq!(max, SMALL_PACKET);
        let at_max = SMALL_PACKET as usize - (size - max) as usize;
        let started = Instant::now();
        let refused = store
            .append(&mut *tx, ExpectedVersion::Any, vec![sized("a", at_max)])
            .await
            .unwrap_err();
        assert_eq!(
            packet_too_large(&refused),
            Some((TextField::Payload, Some(0), SMALL_PACKET, SMALL_PACKET)),
            "{refused:?}"
        );
        assert!(!refused.is_transient());
        // five times the limit; and one too large in a batch of small ones
        let five = store
            .append(
                &mut *tx,
                ExpectedVersion::Any,
                vec![sized("a", 5 * SMALL_PACKET as usize)],
            )
            .await
            .unwrap_err();
        assert!(matches!(
            packet_too_large(&five),
            Some((TextField::Payload, Some(0), _, SMALL_PACKET))
        ));
        let batch = vec![plain("a"), plain("a"), sized("a", at_max), plain("a")];
        let in_batch = store
            .append(&mut *tx, ExpectedVersion::Any, batch)
            .await
            .unwrap_err();
        assert!(matches!(
            packet_too_large(&in_batch),
            Some((TextField::Payload, Some(2), SMALL_PACKET, _))
        ));
        println!(
            "three refusals of events of 1 to 5 MiB took {:?}",
            started.elapsed()
        );
        // One byte less: stored, in the same transaction.
        let fits = sized("a", at_max - 1);
        store
            .append(&mut *tx, ExpectedVersion::Exact(1), vec![fits.clone()])
            .await
            .unwrap();
        store
            .append(&mut *tx, ExpectedVersion::Exact(2), vec![plain("a")])
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let same: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(same, id, "the connection was lost");
        let stream = store
            .read_aggregate_stream(&mut *conn, ("Billing", "Account", "a"), ..)
            .await
            .unwrap();
        assert_eq!(stream.version(), 3);
        assert_eq!(stream.events[1].payload.get(), fits.payload.get());
        let feed = store.read_events(&mut *conn, 0, 10).await.unwrap();
        assert_eq!(feed.len(), 3);
    }

    /// A batch of events that each fit but together do not is split into
    /// statements that fit: stored whole, in order, in the caller's
    /// transaction between two other appends.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn packet_limit_splits_a_batch_too_large_for_one_statement() {
        let (pool, store) = database_on(small_packet_server(), 2).await;
        let mut tx = pool.begin().await.unwrap();
        store
            .append(&mut *tx, ExpectedVersion::NoStream, vec![plain("b")])
            .await
            .unwrap();
        // ten events of a quarter of the limit: 2.5 times the limit
        let batch: Vec<Event> = (0..10)
            .map(|i| sized("b", SMALL_PACKET as usize / 4 + i))
            .collect();
        let stored = store
            .append(&mut *tx, ExpectedVersion::Exact(1), batch.clone())
            .await
            .unwrap();
        assert_eq!((stored.from_version(), stored.to_version()), (2, 11));
        store
            .append(&mut *tx, ExpectedVersion::Exact(11), vec![plain("b")])
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let mut conn = pool.acquire().await.unwrap();
        let stream = store
            .read_aggregate_stream(&mut *conn, ("Billing", "Account", "b"), ..)
            .await
            .unwrap();
        assert_eq!(stream.version(), 12);
        for (stored, given) in stream.events[1..11].iter().zip(&batch) {
            assert_eq!(stored.payload.get(), given.payload.get());
            assert_eq!(stored.event_id, given.event_id);
        }
        let positions: Vec<i64> = store
            .read_events(&mut *conn, 0, 100)
            .await
            .unwrap()
            .iter()
            .map(|e| e.global_position)
            .collect();
        assert_eq!(positions, (1..=12).collect::<Vec<_>>());
    }

    /// Snapshots and documents too large for the server are refused
    /// before they are sent; the transaction keeps what it did.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn packet_limit_refuses_snapshots_and_documents_too_large_for_the_server() {
        let (pool, store) = database_on(small_packet_server(), 2).await;
        let big = format!("\"{}\"", "x".repeat(SMALL_PACKET as usize));
        let mut tx = pool.begin().await.unwrap();
        store
            .append(&mut *tx, ExpectedVersion::NoStream, vec![plain("c")])
            .await
            .unwrap();
        let snapshot = Snapshot::from_raw("Billing", "Account", "c", 1, 1, raw(big.clone()));
        let refused = store.save_snapshot(&mut *tx, &snapshot).await.unwrap_err();
        assert!(
            matches!(packet_too_large(&refused), Some((TextField::SnapshotState, None, size, SMALL_PACKET)) if size > SMALL_PACKET),
            "{refused:?}"
        );
        let refused = store
            .put_document(&mut *tx, "docs", "c", &raw(big))
            .await
            .unwrap_err();
        assert!(
            matches!(
                packet_too_large(&refused),
                Some((TextField::Document, None, _, SMALL_PACKET))
            ),
            "{refused:?}"
        );
        let small = raw(format!("\"{}\"", "x".repeat(SMALL_PACKET as usize / 2)));
        let snapshot = Snapshot::from_raw("Billing", "Account", "c", 1, 1, small.clone());
        store.save_snapshot(&mut *tx, &snapshot).await.unwrap();
        store
            .put_document(&mut *tx, "docs", "c", &small)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let mut conn = pool.acquire().await.unwrap();
        assert_eq!(
            store
                .get_document(&mut *conn, "docs", "c")
                .await
                .unwrap()
                .unwrap()
                .get(),
            small.get()
        );
        assert_eq!(
            store
                .read_aggregate_stream(&mut *conn, ("Billing", "Account", "c"), ..)
                .await
                .unwrap()
                .version(),
            1
        );
    }

    /// Through the repository, a command whose event is too large is a
    /// `RepositoryError::Store` at the first attempt: nothing is resent
    /// (the pool's one connection survives, and the server received far
    /// less than the event), where a lost connection would have been
    /// retried as transient and ended in `OutcomeUnknown`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn packet_too_large_through_the_repository_is_a_store_error_at_the_first_attempt() {
        let (pool, store) = database_on(small_packet_server(), 1).await;
        let accounts = es::Repository::<bank::Account, _>::new(store.clone(), pool.clone());
        let session = || async {
            let mut conn = pool.acquire().await.unwrap();
            let id: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            let (_, received): (String, String) =
                sqlx::query_as("SHOW SESSION STATUS LIKE 'Bytes_received'")
                    .fetch_one(&mut *conn)
                    .await
                    .unwrap();
            (id, received.parse::<u64>().unwrap())
        };
        let (id, before) = session().await;
        let owner = "x".repeat(3 * SMALL_PACKET as usize);
        let started = Instant::now();
        let refused = accounts
            .execute("big", &bank::AccountCommand::Open { owner })
            .await
            .unwrap_err();
        let elapsed = started.elapsed();
        match &refused {
            es::RepositoryError::Store(error) => assert!(
                matches!(
                    packet_too_large(error),
                    Some((TextField::Payload, Some(0), _, SMALL_PACKET))
                ),
                "{error:?}"
            ),
            other => panic!("expected RepositoryError::Store, got {other:?}"),
        }
        assert!(!refused.is_transient());
        let (same, after) = session().await;
        assert_eq!(same, id, "the connection was lost: the event was sent");
        assert!(
            after - before < SMALL_PACKET / 4,
            "the server received {} bytes",
            after - before
        );
        println!("a 3 MiB event through the repository refused in {elapsed:?}");
        // and the aggregate is still there to open
        accounts
            .execute(
                "big",
                &bank::AccountCommand::Open {
                    owner: "Alice".into(),
                },
            )
            .await
            .unwrap();
    }

    /// The limit is read once per store and again before refusing: raised
    /// on the server, new connections take larger events; lowered, the
    /// first statement too large for the new limit fails (the server drops
    /// the connection), and the next append reads the limit again and
    /// refuses before sending.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn packet_limit_is_read_again_when_the_server_changes_it() {
        let server = TestServer::mysql_with(&["--max-allowed-packet=1M"]);
        let (pool, store) = database_on(&server, 2).await;
        let two_mib = 2 * SMALL_PACKET as usize;
        let mut conn = pool.acquire().await.unwrap();
        let refused = store
            .append(&mut *conn, ExpectedVersion::Any, vec![sized("d", two_mib)])
            .await
            .unwrap_err();
        assert!(packet_too_large(&refused).is_some(), "{refused:?}");
        drop(conn);
        // This server is the test's own: its global settings are its to change.
        sqlx::query("SET GLOBAL max_allowed_packet = 4194304")
            .execute(&pool)
            .await
            .unwrap();
        let raised = MySqlPoolOptions::new()
            .max_connections(1)
            .connect_with(options(&server, &database_of(&pool).await))
            .await
            .unwrap();
        store
            .append(
                &mut *raised.acquire().await.unwrap(),
                ExpectedVersion::Any,
                vec![sized("d", two_mib)],
            )
            .await
            .unwrap();
        sqlx::query("SET GLOBAL max_allowed_packet = 1048576")
            .execute(&raised)
            .await
            .unwrap();
        let lowered = MySqlPoolOptions::new()
            .max_connections(1)
            .connect_with(options(&server, &database_of(&pool).await))
            .await
            .unwrap();
        // The store still knows 4 MiB: sent, and refused by the server.
        let lost = store
            .append(
                &mut *lowered.acquire().await.unwrap(),
                ExpectedVersion::Any,
                vec![sized("d", two_mib)],
            )
            .await
            .unwrap_err();
        println!("sent past a lowered limit: {lost}");
        assert!(packet_too_large(&lost).is_none());
        // Read again: refused before sending.
        let refused = store
            .append(
                &mut *lowered.acquire().await.unwrap(),
                ExpectedVersion::Any,
                vec![sized("d", two_mib)],
            )
            .await
            .unwrap_err();
        assert!(
            matches!(
                packet_too_large(&refused),
                Some((TextField::Payload, Some(0), _, SMALL_PACKET))
            ),
            "{refused:?}"
        );
        let mut conn = lowered.acquire().await.unwrap();
        assert_eq!(
            store
                .read_aggregate_stream(&mut *conn, ("Billing", "Account", "d"), ..)
                .await
                .unwrap()
                .version(),
            1
        );
    }

    async fn database_of(pool: &MySqlPool) -> String {
        sqlx::query_scalar("SELECT DATABASE()")
            .fetch_one(pool)
            .await
            .unwrap()
    }

    /// The statements, without those of opening a connection (each
    /// counted block runs on a runtime of its own, and the pool may open
    /// one).
    fn without_connection_setup(statements: Vec<String>) -> Vec<String> {
        statements
            .into_iter()
            .filter(|s| !s.contains("SET sql_mode"))
            .collect()
    }

    /// The limit costs small appends nothing and large ones one look-up
    /// per store: a batch that fits the smallest `max_allowed_packet` any
    /// server has (1 KiB) sends no extra statement, the first larger one
    /// reads the limit, and later ones use what was read.
    #[test]
    fn packet_limit_is_read_once_per_store_and_never_for_small_appends() {
        use support::round_trips::count_statements;
        const LOOKUP: &str = "max_allowed_packet";
        let (db, _) = count_statements(MySqlDb::with_pool_size(1));
        let append = |event: Event| {
            without_connection_setup(
                count_statements(async {
                    let mut conn = db.pool.acquire().await.unwrap();
                    db.store
                        .append(&mut *conn, ExpectedVersion::Any, vec![event])
                        .await
                        .unwrap();
                })
                .1,
            )
        };
        let small = append(plain("s"));
        assert!(
            !small.is_empty(),
            "the statement log is empty: is sqlx logging?"
        );
        assert!(!small.iter().any(|s| s.contains(LOOKUP)), "{small:#?}");
        let first_large = append(sized("s", 4096));
        assert_eq!(
            first_large.iter().filter(|s| s.contains(LOOKUP)).count(),
            1,
            "{first_large:#?}"
        );
        assert_eq!(first_large.len(), small.len() + 1);
        let next_large = append(sized("s", 8192));
        assert_eq!(next_large.len(), small.len(), "{next_large:#?}");
        count_statements(db.drop());
    }

    // ---- isolation ------------------------------------------------------

    /// The isolation check rides on the statement that reads the head: a
    /// gap-safe read is still two statements, the head and the page. (The
    /// first read of a store may try one variable name more: MariaDB
    /// before 11.1 has no `transaction_isolation`.)
    #[test]
    fn isolation_check_adds_no_round_trip_to_a_read() {
        use support::round_trips::count_statements;
        let (db, _) = count_statements(MySqlDb::with_pool_size(1));
        let (read, statements) = count_statements(async {
            let mut conn = db.pool.acquire().await.unwrap();
            db.store
                .append(&mut *conn, ExpectedVersion::Any, vec![plain("r")])
                .await
                .unwrap();
            db.store.read_events(&mut *conn, 0, 10).await
        });
        assert_eq!(read.unwrap().len(), 1);
        let (read, statements_again) = count_statements(async {
            let mut conn = db.pool.acquire().await.unwrap();
            db.store.read_events(&mut *conn, 0, 10).await
        });
        assert_eq!(read.unwrap().len(), 1);
        let statements_again = without_connection_setup(statements_again);
        assert_eq!(statements_again.len(), 2, "{statements_again:#?}");
        assert!(
            statements_again[0].contains("isolation"),
            "{statements_again:#?}"
        );
        let first_read = without_connection_setup(statements)
            .into_iter()
            .filter(|s| s.contains("isolation") || s.contains("LIMIT ?"))
            .count();
        assert!((2..=3).contains(&first_read), "{first_read}");
        count_statements(db.drop());
    }

    const LEVELS: [(&str, &str); 4] = [
        ("READ UNCOMMITTED", "READ-UNCOMMITTED"),
        ("READ COMMITTED", "READ-COMMITTED"),
        ("REPEATABLE READ", "REPEATABLE-READ"),
        ("SERIALIZABLE", "SERIALIZABLE"),
    ];

    /// A pool on the test's database whose sessions run at `level`, as a
    /// server-wide default would make them.
    async fn pool_at(db: &MySqlDb, level: &'static str) -> MySqlPool {
        MySqlPoolOptions::new()
            .max_connections(4)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    conn.execute(sqlx::AssertSqlSafe(format!(
                        "SET SESSION TRANSACTION ISOLATION LEVEL {level}"
                    )))
                    .await?;
                    Ok(())
                })
            })
            .connect_with(support::mysql::connect_options(Some(&db.database)))
            .await
            .unwrap()
    }

    /// Records the positions it handles.
    struct Recorder {
        handled: Arc<Mutex<Vec<i64>>>,
        calls: Arc<AtomicUsize>,
    }

    impl Projection<sqlx::MySql> for Recorder {
        fn name(&self) -> &str {
            "recorder"
        }

        async fn handle(
            &self,
            _: &mut MySqlConnection,
            event: &PersistedEvent,
        ) -> Result<(), es::aggregate::projection::HandlerError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.handled.lock().unwrap().push(event.global_position);
            Ok(())
        }
    }

    /// A reader and a projection processor on sessions at each isolation
    /// level: READ UNCOMMITTED is refused with a typed error (the reader
    /// outside and inside a transaction; the processor handles nothing and
    /// keeps its checkpoint), the other three read every event.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn isolation_read_uncommitted_is_refused_and_the_other_levels_read_the_feed() {
        let db = MySqlDb::new().await;
        let mut conn = db.pool.acquire().await.unwrap();
        let appended = db
            .store
            .append(
                &mut *conn,
                ExpectedVersion::NoStream,
                vec![plain("i"), plain("i"), plain("i")],
            )
            .await
            .unwrap()
            .global_positions;
        drop(conn);
        for (level, name) in LEVELS {
            let pool = pool_at(&db, level).await;
            let mut conn = pool.acquire().await.unwrap();
            let outside = db.store.read_events(&mut *conn, 0, 100).await;
            let mut tx = conn.begin().await.unwrap();
            let inside = db.store.read_events(&mut *tx, 0, 100).await;
            tx.rollback().await.unwrap();
            drop(conn);
            let (handled, calls) = (Arc::default(), Arc::new(AtomicUsize::new(0)));
            let processor = ProjectionProcessor::new(
                db.store.clone(),
                pool.clone(),
                Recorder {
                    handled: Arc::clone(&handled),
                    calls: Arc::clone(&calls),
                },
            );
            let caught_up = processor.catch_up().await;
            let checkpoint = db
                .store
                .get_checkpoint(&mut *db.pool.acquire().await.unwrap(), "recorder")
                .await
                .unwrap();
            if name == "READ-UNCOMMITTED" {
                for read in [outside, inside] {
                    assert!(
                        matches!(&read, Err(Error::UnsupportedIsolation { level }) if level == name),
                        "{read:?}"
                    );
                }
                assert!(
                    matches!(
                        &caught_up,
                        Err(ProjectionError::Store {
                            source: Error::UnsupportedIsolation { .. },
                            ..
                        })
                    ),
                    "{caught_up:?}"
                );
                assert_eq!(calls.load(Ordering::SeqCst), 0);
                assert_eq!(checkpoint, 0);
            } else {
                let positions = |read: es::store::Result<Vec<PersistedEvent>>| {
                    read.unwrap()
                        .iter()
                        .map(|e| e.global_position)
                        .collect::<Vec<_>>()
                };
                assert_eq!(positions(outside), appended, "{level}");
                assert_eq!(positions(inside), appended, "{level}");
                assert_eq!(caught_up.unwrap().events, 3, "{level}");
                assert_eq!(*handled.lock().unwrap(), appended);
                assert_eq!(checkpoint, appended[2]);
                // the next level's processor starts over
                db.store
                    .update_checkpoint(&mut *db.pool.acquire().await.unwrap(), "recorder", 0)
                    .await
                    .unwrap();
            }
            pool.close().await;
        }
        db.drop().await;
    }

    /// What READ UNCOMMITTED would break, step by step: an append holds
    /// its positions uncommitted; a session at READ UNCOMMITTED sees its
    /// row (so a reader would deliver it) and the store refuses to read;
    /// a READ COMMITTED reader reads nothing. The append rolls back, the
    /// next one reuses the position and commits, and the READ COMMITTED
    /// reader gets it: nothing was delivered that did not commit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn isolation_read_uncommitted_would_deliver_an_append_that_rolls_back() {
        let db = MySqlDb::new().await;
        let uncommitted = pool_at(&db, "READ UNCOMMITTED").await;
        let committed = pool_at(&db, "READ COMMITTED").await;
        let mut writer = db.pool.begin().await.unwrap();
        let phantom = db
            .store
            .append(&mut *writer, ExpectedVersion::NoStream, vec![plain("p")])
            .await
            .unwrap()
            .global_positions;
        let dirty: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM {}",
            db.store.events_table()
        )))
        .fetch_one(&uncommitted)
        .await
        .unwrap();
        assert_eq!(dirty, 1, "READ UNCOMMITTED sees the uncommitted event");
        let refused = db
            .store
            .read_events(&mut *uncommitted.acquire().await.unwrap(), 0, 10)
            .await;
        assert!(
            matches!(refused, Err(Error::UnsupportedIsolation { .. })),
            "{refused:?}"
        );
        let read = db
            .store
            .read_events(&mut *committed.acquire().await.unwrap(), 0, 10)
            .await
            .unwrap();
        assert!(read.is_empty());
        writer.rollback().await.unwrap();
        let real = db
            .store
            .append(
                &mut *db.pool.acquire().await.unwrap(),
                ExpectedVersion::NoStream,
                vec![plain("q")],
            )
            .await
            .unwrap()
            .global_positions;
        assert_eq!(real, phantom, "the position is drawn again");
        let read = db
            .store
            .read_events(&mut *committed.acquire().await.unwrap(), 0, 10)
            .await
            .unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].aggregate_id, "q");
        uncommitted.close().await;
        committed.close().await;
        db.drop().await;
    }
}
