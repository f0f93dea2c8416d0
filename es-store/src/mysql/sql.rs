//! Every SQL text the MySQL store runs, rendered once per store from
//! validated names.
//!
//! MySQL's `?` placeholders are consumed once each, in text order, so a
//! statement that uses a parameter twice reads it from a one-row derived
//! table (`(SELECT ? AS a, ? AS b) p`), which the optimizer treats as a
//! constant.

use crate::core::{AppendStatements, EVENT_COLUMNS, Statements};
use crate::names::{EVENT_ID_KEY, LOCKS, Names, POSITION, STREAM_VERSION_KEY};

use std::sync::Arc;

/// The statements only MySQL runs, beside the [`Statements`] every backend
/// has.
#[derive(Debug)]
pub(crate) struct Sql {
    /// The start of the batch's insert, after the head check.
    pub(crate) insert: Arc<str>,
    /// (bounded context, aggregate type, aggregate id): locks the
    /// aggregate's lock row before its head is checked.
    pub(crate) lock: Arc<str>,
    /// (count): draws the batch's positions.
    pub(crate) positions: Arc<str>,
    /// (bounded context, aggregate type, aggregate id) -> version: locks a
    /// head that `lock_head`, a plain read here, found.
    pub(crate) lock_found_head: Arc<str>,
    /// () -> (the highest stored position, the session's isolation level),
    /// the level read from `@@transaction_isolation` (MySQL 8, MariaDB
    /// 11.1+) or from `@@tx_isolation` (MariaDB before 11.1).
    pub(crate) head_and_isolation: [Arc<str>; 2],
    /// (name) -> position, never waiting for a holder.
    pub(crate) probe_claim: Arc<str>,
    /// (name) -> position, waiting for a transaction that holds the
    /// checkpoint.
    pub(crate) wait_checkpoint: Arc<str>,
}

/// The migrations, oldest first: (version, description, SQL).
pub(crate) fn migrations(names: &Names) -> Vec<(i64, &'static str, String)> {
    vec![
        (1, "event store", migration_1(names)),
        (2, "read models", migration_2(names)),
        (3, "projection versions", migration_3(names)),
        (4, "projection workers", migration_4(names)),
    ]
}

fn migration_4(n: &Names) -> String {
    let versions = n.versions();
    format!(
        r#"-- What operators' tools need before they rewind a projection: whether it
-- declares side effects (a replay would do them again), and when a worker
-- running the version last said so (every few seconds while it runs).
ALTER TABLE {versions}
    ADD COLUMN side_effects   BOOLEAN     NOT NULL DEFAULT FALSE,
    ADD COLUMN worker_seen_at DATETIME(6) NULL;
"#
    )
}

fn migration_3(n: &Names) -> String {
    let versions = n.versions();
    format!(
        r#"-- The versions of each projection: the one readers are served from
-- ('active'), new ones catching up beside it ('catching_up'), and old ones
-- replaced but not dropped yet ('superseded'); version 0 is each
-- projection's lock row, which changes to the records are serialised on.
-- replay_until is the last position the version handles as a replay;
-- partitions is the partition count of its checkpoints, so that they can
-- be dropped with it.
CREATE TABLE {versions} (
    projection_name VARBINARY(255) NOT NULL,
    version         BIGINT         NOT NULL,
    state           VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    replay_until    BIGINT         NOT NULL,
    partitions      BIGINT         NOT NULL,
    updated_at      DATETIME(6)    NOT NULL DEFAULT {NOW},
    PRIMARY KEY (projection_name, version)
) ENGINE = InnoDB;
"#
    )
}

fn migration_2(n: &Names) -> String {
    let documents = n.documents();
    format!(
        r#"-- Read-model documents: JSON values by collection and id, written by
-- projections through es_store::documents::Collection. Names are bytes,
-- as the event store's, so that they compare exactly.
CREATE TABLE {documents} (
    collection VARBINARY(255)  NOT NULL,
    id         VARBINARY(500)  NOT NULL,
    body       LONGTEXT {UTF8} NOT NULL CHECK (json_valid(body)),
    updated_at DATETIME(6)     NOT NULL DEFAULT {NOW},
    PRIMARY KEY (collection, id)
) ENGINE = InnoDB;
"#
    )
}

/// The read-model documents' statements.
fn document_statements(n: &Names) -> crate::core::DocumentStatements {
    let documents = n.documents();
    let key = "collection = ? AND id = ?";
    let id = text("id");
    crate::core::DocumentStatements {
        put: format!(
            "INSERT INTO {documents} (collection, id, body, updated_at) VALUES (?, ?, ?, ?) \
             ON DUPLICATE KEY UPDATE body = VALUES(body), updated_at = VALUES(updated_at)"
        )
        .into(),
        get: format!("SELECT body FROM {documents} WHERE {key}").into(),
        // A duplicate key locks the row it found, exclusively.
        ensure: format!(
            "INSERT INTO {documents} (collection, id, body, updated_at) \
             VALUES (?, ?, 'null', ?) ON DUPLICATE KEY UPDATE id = id"
        )
        .into(),
        get_locked: format!("SELECT body FROM {documents} WHERE {key} FOR UPDATE").into(),
        delete: format!("DELETE FROM {documents} WHERE {key}").into(),
        clear: format!("DELETE FROM {documents} WHERE collection = ?").into(),
        list: format!(
            "SELECT {id}, body FROM {documents} \
             WHERE collection = ? AND id > ? AND body <> 'null' \
             ORDER BY id LIMIT ?"
        )
        .into(),
        count: format!("SELECT count(*) FROM {documents} WHERE collection = ? AND body <> 'null'")
            .into(),
    }
}

/// Names are stored as bytes (`VARBINARY`), so that they compare exactly as
/// on PostgreSQL and SQLite: MySQL's text collations pad with spaces
/// (`'acc-1' = 'acc-1 '`) or fold case, which would make two aggregates
/// one. Reads convert them back to text (they were checked to be UTF-8).
fn text(column: &str) -> String {
    format!("CONVERT({column} USING utf8mb4)")
}

/// The event columns every read selects, in the order of
/// [`EVENT_COLUMNS`], qualified with `table`, names converted to text.
fn event_columns(table: &str) -> String {
    const NAMES: [&str; 4] = [
        "bounded_context",
        "aggregate_type",
        "aggregate_id",
        "event_type",
    ];
    EVENT_COLUMNS
        .split(", ")
        .map(|column| {
            let qualified = format!("{table}.{column}");
            if NAMES.contains(&column) {
                text(&qualified)
            } else {
                qualified
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The number of aggregate lock rows: aggregates that share a slot take
/// turns, which is rare (one in 1024) and short.
const SLOTS: u32 = 1024;
// The migration seeds 32 × 32 slots.
const _: () = assert!(SLOTS == 32 * 32);

/// An aggregate's lock slot, from its bounded context, type and id
/// (which hold no NUL, so the concatenation is unambiguous).
fn slot(bounded_context: &str, aggregate_type: &str, aggregate_id: &str) -> String {
    format!(
        "CRC32(CONCAT({bounded_context}, CHAR(0), {aggregate_type}, CHAR(0), {aggregate_id})) \
         % {SLOTS}"
    )
}

/// Rows written around the store get the same UTC timestamps as the
/// store's own.
const NOW: &str = "(UTC_TIMESTAMP(6))";

/// Text columns: UTF-8 (all four bytes), compared byte by byte.
const UTF8: &str = "CHARACTER SET utf8mb4 COLLATE utf8mb4_bin";

fn migration_1(n: &Names) -> String {
    let events = n.events();
    let heads = n.heads();
    let checkpoints = n.checkpoints();
    let snapshots = n.snapshots();
    let failures = n.failures();
    let positions = n.derived_qualified(POSITION);
    let locks = n.derived_qualified(LOCKS);
    let event_id_key = n.derived(EVENT_ID_KEY);
    let stream_version_key = n.derived(STREAM_VERSION_KEY);
    let q = n.quote;
    format!(
        r#"-- The event store on MySQL / MariaDB (InnoDB): events, the position
-- counter, aggregate heads, projection checkpoints, snapshots and the events
-- projections skipped. Names are byte strings (see the store's docs), ids
-- 16 bytes, JSON text checked with json_valid, timestamps UTC.

CREATE TABLE {events} (
    -- Drawn from {positions} by the append, under a lock held until
    -- commit: see "Gap-safe global reads".
    global_position   BIGINT          NOT NULL PRIMARY KEY CHECK (global_position > 0),
    event_id          BINARY(16)      NOT NULL,
    bounded_context   VARBINARY(128)  NOT NULL CHECK (bounded_context <> ''),
    aggregate_type    VARBINARY(128)  NOT NULL CHECK (aggregate_type <> ''),
    aggregate_id      VARBINARY(500)  NOT NULL CHECK (aggregate_id <> ''),
    aggregate_version BIGINT          NOT NULL CHECK (aggregate_version > 0),
    event_type        VARBINARY(255)  NOT NULL CHECK (event_type <> ''),
    event_version     INT             NOT NULL CHECK (event_version > 0),
    payload           LONGTEXT {UTF8} NOT NULL CHECK (json_valid(payload)),
    metadata          LONGTEXT {UTF8} NOT NULL DEFAULT '{{}}' CHECK (json_valid(metadata)),
    correlation_id    BINARY(16),
    causation_id      BINARY(16),
    trace_id          VARCHAR(255) {UTF8},
    created_at        DATETIME(6)     NOT NULL DEFAULT {NOW},
    -- A stable hash of (bounded_context, aggregate_type, aggregate_id),
    -- computed by the store (FNV-1a): projections partition on it.
    stream_hash       BIGINT          NOT NULL DEFAULT 0 CHECK (stream_hash >= 0),
    UNIQUE KEY {q}{event_id_key}{q} (event_id),
    -- The last safety net of optimistic concurrency, and the index of
    -- stream reads.
    UNIQUE KEY {q}{stream_version_key}{q}
        (bounded_context, aggregate_type, aggregate_id, aggregate_version)
) ENGINE = InnoDB;

-- One row: the last position handed out. Appends move it in their
-- transaction, so it is locked from the moment positions are drawn until
-- commit.
CREATE TABLE {positions} (
    id   TINYINT NOT NULL PRIMARY KEY CHECK (id = 1),
    last BIGINT  NOT NULL CHECK (last >= 0)
) ENGINE = InnoDB;

INSERT INTO {positions} (id, last) VALUES (1, 0);

-- {SLOTS} rows that always exist, one of which every append to an aggregate
-- locks first (the slot is a hash of the aggregate, see `SLOT`): appends
-- to one aggregate queue here, on a row, and never on each other's
-- uncommitted head row or on the gaps of the heads table.
CREATE TABLE {locks} (
    slot SMALLINT NOT NULL PRIMARY KEY
) ENGINE = InnoDB;

INSERT INTO {locks} (slot)
    WITH RECURSIVE s (n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM s WHERE n < 31)
    SELECT a.n * 32 + b.n FROM s a, s b;

-- One row per aggregate: its current version, read and moved by every
-- append (O(1) instead of max(aggregate_version)).
CREATE TABLE {heads} (
    bounded_context VARBINARY(128) NOT NULL,
    aggregate_type  VARBINARY(128) NOT NULL,
    aggregate_id    VARBINARY(500) NOT NULL,
    version         BIGINT         NOT NULL CHECK (version > 0),
    PRIMARY KEY (bounded_context, aggregate_type, aggregate_id)
) ENGINE = InnoDB;

CREATE TABLE {checkpoints} (
    projection_name VARBINARY(255) NOT NULL PRIMARY KEY CHECK (projection_name <> ''),
    position        BIGINT         NOT NULL CHECK (position >= 0),
    updated_at      DATETIME(6)    NOT NULL DEFAULT {NOW}
) ENGINE = InnoDB;

-- The latest snapshot of each aggregate that has one.
CREATE TABLE {snapshots} (
    bounded_context VARBINARY(128)  NOT NULL,
    aggregate_type  VARBINARY(128)  NOT NULL,
    aggregate_id    VARBINARY(500)  NOT NULL,
    version         BIGINT          NOT NULL CHECK (version >= 0),
    schema_version  INT             NOT NULL,
    state           LONGTEXT {UTF8} NOT NULL CHECK (json_valid(state)),
    created_at      DATETIME(6)     NOT NULL DEFAULT {NOW},
    PRIMARY KEY (bounded_context, aggregate_type, aggregate_id)
) ENGINE = InnoDB;

-- Events a projection skipped because its handler failed on them.
CREATE TABLE {failures} (
    projection_name VARBINARY(255)  NOT NULL,
    global_position BIGINT          NOT NULL,
    event_id        BINARY(16)      NOT NULL,
    event_type      VARBINARY(255)  NOT NULL,
    error           LONGTEXT {UTF8} NOT NULL,
    failed_at       DATETIME(6)     NOT NULL DEFAULT {NOW},
    PRIMARY KEY (projection_name, global_position)
) ENGINE = InnoDB;
"#
    )
}

/// A hyphenated uuid (text) as the 16 bytes the tables store.
fn uuid_bytes(text: &str) -> String {
    format!("UNHEX(REPLACE({text}, '-', ''))")
}

/// Every statement of a MySQL store.
pub(crate) fn statements(n: &Names) -> (Statements, Sql) {
    let events = n.events();
    let heads = n.heads();
    let checkpoints = n.checkpoints();
    let snapshots = n.snapshots();
    let failures = n.failures();
    let versions = n.versions();
    let positions = n.derived_qualified(POSITION);
    let locks = n.derived_qualified(LOCKS);
    let columns = event_columns(&events);
    let aggregate = "bounded_context = ? AND aggregate_type = ? AND aggregate_id = ?";
    // The claim never waits for a holder: it is also how a holder is
    // probed for.
    let claim: std::sync::Arc<str> = format!(
        "SELECT position FROM {checkpoints} WHERE projection_name = ? FOR UPDATE SKIP LOCKED"
    )
    .into();
    let common = Statements {
        append: AppendStatements {
            // The head statements (see `append.rs`). Creates a head:
            // (bounded context, aggregate type, aggregate id, number of
            // events); a duplicate key means it exists.
            no_stream: format!(
                "INSERT INTO {heads} (bounded_context, aggregate_type, aggregate_id, version) \
                 VALUES (?, ?, ?, ?)"
            )
            .into(),
            // Moves an existing head: (number of events, bounded context,
            // aggregate type, aggregate id); the new version comes back as
            // the statement's insert id.
            any: format!(
                "UPDATE {heads} SET version = LAST_INSERT_ID(version + ?) WHERE {aggregate}"
            )
            .into(),
            // Same, then the expected version: one row changed, or none.
            exact: format!(
                "UPDATE {heads} SET version = version + ? WHERE {aggregate} AND version = ?"
            )
            .into(),
        },
        // (the batch's event ids as a JSON array of hyphenated ids).
        stored_ids: format!(
            "SELECT {columns} FROM {events} \
             WHERE event_id IN (SELECT {id} FROM JSON_TABLE(?, '$[*]' \
                 COLUMNS (event_id CHAR(36) PATH '$')) j)",
            id = uuid_bytes("j.event_id"),
        )
        .into(),
        head_version: format!("SELECT version FROM {heads} WHERE {aggregate}").into(),
        // Run after the aggregate's lock (`append.lock`): a plain read,
        // because a locking read of a missing head would lock the gap where
        // it would be, and two holders creating new aggregates in one gap
        // would deadlock. After the lock, no creator of the aggregate is in
        // flight, so the read is current unless the transaction's snapshot
        // was taken earlier. A head found is then locked (`Exact` appends
        // move it without taking the aggregate's lock).
        lock_head: format!("SELECT version FROM {heads} WHERE {aggregate}").into(),
        read_stream: format!(
            "SELECT {columns} FROM {events} \
             WHERE {aggregate} AND aggregate_version BETWEEN ? AND ? \
             ORDER BY aggregate_version"
        )
        .into(),
        fold_stream: format!(
            "SELECT aggregate_version, {event_type}, event_version, payload FROM {events} \
             WHERE {aggregate} AND aggregate_version BETWEEN ? AND ? \
             ORDER BY aggregate_version",
            event_type = text("event_type"),
        )
        .into(),
        head_position: format!(
            "SELECT CAST(COALESCE(MAX(global_position), 0) AS SIGNED) FROM {events}"
        )
        .into(),
        // The accepted bounded contexts and aggregate types come as JSON
        // arrays (NULL: all).
        read_events: format!(
            "SELECT {columns} FROM {events}, \
                 (SELECT ? AS p_from, ? AS p_contexts, ? AS p_types, ? AS p_count, \
                         ? AS p_index, ? AS p_safe) p \
             WHERE {events}.global_position > p.p_from AND {events}.global_position <= p.p_safe \
               AND (p.p_contexts IS NULL \
                    OR JSON_CONTAINS(p.p_contexts, JSON_QUOTE({context}))) \
               AND (p.p_types IS NULL OR JSON_CONTAINS(p.p_types, JSON_QUOTE({kind}))) \
               AND (p.p_count = 1 OR {events}.stream_hash % p.p_count = p.p_index) \
             ORDER BY {events}.global_position LIMIT ?",
            context = text(&format!("{events}.bounded_context")),
            kind = text(&format!("{events}.aggregate_type")),
        )
        .into(),
        get_checkpoint: format!("SELECT position FROM {checkpoints} WHERE projection_name = ?")
            .into(),
        update_checkpoint: format!(
            "INSERT INTO {checkpoints} (projection_name, position, updated_at) \
             VALUES (?, ?, ?) \
             ON DUPLICATE KEY UPDATE position = VALUES(position), \
                 updated_at = VALUES(updated_at)"
        )
        .into(),
        claim_checkpoint: claim.clone(),
        checkpoint_exists: format!(
            "SELECT EXISTS (SELECT 1 FROM {checkpoints} WHERE projection_name = ?)"
        )
        .into(),
        // A plain insert: a duplicate key means another transaction
        // created it first (see `codec::claim_checkpoint`).
        create_checkpoint: format!(
            "INSERT INTO {checkpoints} (projection_name, position, updated_at) VALUES (?, 0, ?)"
        )
        .into(),
        load_snapshot: format!(
            "SELECT version, schema_version, state, created_at FROM {snapshots} \
             WHERE {aggregate} AND version <= ?"
        )
        .into(),
        // Assignments run left to right, each seeing the ones before: the
        // version moves last, after the columns it guards.
        save_snapshot: format!(
            "INSERT INTO {snapshots} (bounded_context, aggregate_type, aggregate_id, \
                 version, schema_version, state, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?) \
             ON DUPLICATE KEY UPDATE \
                 schema_version = IF(version <= VALUES(version), VALUES(schema_version), \
                     schema_version), \
                 state = IF(version <= VALUES(version), VALUES(state), state), \
                 created_at = IF(version <= VALUES(version), VALUES(created_at), created_at), \
                 version = IF(version <= VALUES(version), VALUES(version), version)"
        )
        .into(),
        record_failure: format!(
            "INSERT INTO {failures} (projection_name, global_position, event_id, event_type, \
                 error, failed_at) \
             VALUES (?, ?, ?, ?, ?, ?) \
             ON DUPLICATE KEY UPDATE error = VALUES(error), failed_at = VALUES(failed_at)"
        )
        .into(),
        list_failures: format!(
            "SELECT global_position, event_id, {event_type}, error, failed_at FROM {failures} \
             WHERE projection_name = ? ORDER BY global_position",
            event_type = text("event_type"),
        )
        .into(),
        // The name is read back as text (the column is binary). A locking
        // read: a projection batch runs under REPEATABLE READ, whose
        // snapshot may predate the switch that committed before its claim;
        // the latest records are what decides whether its version still
        // runs.
        list_versions: format!(
            "SELECT CONVERT(projection_name USING utf8mb4), version, state, replay_until, \
                 partitions, updated_at, side_effects, worker_seen_at \
             FROM {versions} WHERE projection_name = ? AND version > 0 ORDER BY version \
             LOCK IN SHARE MODE"
        )
        .into(),
        insert_version: format!(
            "INSERT INTO {versions} \
                 (projection_name, version, state, replay_until, partitions, updated_at, \
                  side_effects) \
             VALUES (?, ?, ?, ?, ?, ?, ?) \
             ON DUPLICATE KEY UPDATE version = version"
        )
        .into(),
        record_side_effects: format!(
            "UPDATE {versions} SET side_effects = ? WHERE projection_name = ? AND version = ?"
        )
        .into(),
        record_worker: format!(
            "UPDATE {versions} SET worker_seen_at = ? WHERE projection_name = ? AND version = ?"
        )
        .into(),
        update_version: format!(
            "UPDATE {versions} SET state = ?, replay_until = ?, partitions = ?, updated_at = ? \
             WHERE projection_name = ? AND version = ?"
        )
        .into(),
        delete_version: format!("DELETE FROM {versions} WHERE projection_name = ? AND version = ?")
            .into(),
        lock_versions: format!(
            "INSERT INTO {versions} \
                 (projection_name, version, state, replay_until, partitions, updated_at) \
             VALUES (?, 0, 'lock', 0, 0, ?) \
             ON DUPLICATE KEY UPDATE updated_at = VALUES(updated_at)"
        )
        .into(),
        delete_checkpoint: format!("DELETE FROM {checkpoints} WHERE projection_name = ?").into(),
        documents: document_statements(n),
    };
    let own = Sql {
        // Followed by one row of the 15 values per event, in this
        // order (see `append.rs`).
        insert: format!(
            "INSERT INTO {events} (global_position, event_id, bounded_context, \
                         aggregate_type, aggregate_id, aggregate_version, event_type, \
                         event_version, payload, metadata, correlation_id, causation_id, \
                         trace_id, created_at, stream_hash) VALUES "
        )
        .into(),
        // (bounded context, aggregate type, aggregate id): the
        // aggregate's lock, taken first by appends that may create its
        // head, and by `lock_aggregate`.
        lock: format!(
            "SELECT slot FROM {locks} WHERE slot = {slot} FOR UPDATE",
            slot = slot("?", "?", "?")
        )
        .into(),
        // (number of events): the last position drawn comes back as
        // the statement's insert id.
        positions: format!("UPDATE {positions} SET last = LAST_INSERT_ID(last + ?) WHERE id = 1")
            .into(),
        lock_found_head: format!("SELECT version FROM {heads} WHERE {aggregate} FOR UPDATE").into(),
        // The gap-safe read's horizon, with the level it runs at, in one
        // round trip.
        head_and_isolation: ["transaction_isolation", "tx_isolation"].map(|variable| {
            format!(
                "SELECT CAST(COALESCE(MAX(global_position), 0) AS SIGNED), \
                     CAST(@@SESSION.{variable} AS CHAR) FROM {events}"
            )
            .into()
        }),
        probe_claim: claim,
        wait_checkpoint: format!(
            "SELECT position FROM {checkpoints} WHERE projection_name = ? FOR UPDATE"
        )
        .into(),
    };
    (common, own)
}
