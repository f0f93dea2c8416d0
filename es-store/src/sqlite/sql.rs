//! Every SQL text the SQLite store runs, rendered once per store from
//! validated names.

use crate::core::{AppendStatements, EVENT_COLUMNS, Statements};
use crate::names::{EVENT_ID_KEY, Names, STREAM_VERSION_KEY};

use std::sync::Arc;

/// The statements only SQLite runs, beside the [`Statements`] every
/// backend has.
// `pub`, unnameable outside the crate: the sealed `Dialect::Own` names it.
#[allow(unreachable_pub)]
#[derive(Debug)]
pub struct Sql {
    /// The start of the batch's insert, after the head check.
    pub(crate) insert: Arc<str>,
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
    ADD COLUMN side_effects INTEGER NOT NULL DEFAULT 0 CHECK (side_effects IN (0, 1));
ALTER TABLE {versions} ADD COLUMN worker_seen_at TEXT;
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
    projection_name TEXT    NOT NULL,
    version         INTEGER NOT NULL,
    state           TEXT    NOT NULL,
    replay_until    INTEGER NOT NULL,
    partitions      INTEGER NOT NULL,
    updated_at      TEXT    NOT NULL DEFAULT {NOW},
    PRIMARY KEY (projection_name, version)
) STRICT, WITHOUT ROWID;
"#
    )
}

fn migration_2(n: &Names) -> String {
    let documents = n.documents();
    format!(
        r#"-- Read-model documents: JSON values by collection and id, written by
-- projections through es_store::documents::Collection.
CREATE TABLE {documents} (
    collection TEXT NOT NULL,
    id         TEXT NOT NULL,
    body       TEXT NOT NULL CHECK (json_valid(body)),
    updated_at TEXT NOT NULL DEFAULT {NOW},
    PRIMARY KEY (collection, id)
) STRICT, WITHOUT ROWID;
"#
    )
}

/// The read-model documents' statements.
fn document_statements(n: &Names) -> crate::core::DocumentStatements {
    let documents = n.documents();
    let key = "collection = ?1 AND id = ?2";
    crate::core::DocumentStatements {
        put: format!(
            "INSERT INTO {documents} (collection, id, body, updated_at) \
             VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (collection, id) \
             DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at"
        )
        .into(),
        get: format!("SELECT body FROM {documents} WHERE {key}").into(),
        // A write: it takes the database's write lock, which is the lock.
        ensure: format!(
            "INSERT INTO {documents} (collection, id, body, updated_at) \
             VALUES (?1, ?2, 'null', ?3) ON CONFLICT (collection, id) DO NOTHING"
        )
        .into(),
        get_locked: format!("SELECT body FROM {documents} WHERE {key}").into(),
        delete: format!("DELETE FROM {documents} WHERE {key}").into(),
        clear: format!("DELETE FROM {documents} WHERE collection = ?1").into(),
        list: format!(
            "SELECT id, body FROM {documents} \
             WHERE collection = ?1 AND id > ?2 AND body <> 'null' \
             ORDER BY id LIMIT ?3"
        )
        .into(),
        count: format!("SELECT count(*) FROM {documents} WHERE collection = ?1 AND body <> 'null'")
            .into(),
    }
}

/// Timestamps are stored as RFC 3339 text in UTC with exactly six fractional
/// digits (`2024-05-01T12:00:00.000000Z`): readable, sorted by text order,
/// understood by SQLite's date functions, and microsecond-exact like
/// PostgreSQL's `timestamptz`. Defaults in the schema (for rows written
/// around the store) use the same shape at SQLite's millisecond precision.
const NOW: &str = "(strftime('%Y-%m-%dT%H:%M:%f000Z', 'now'))";

fn migration_1(n: &Names) -> String {
    let events = n.events();
    let heads = n.heads();
    let checkpoints = n.checkpoints();
    let snapshots = n.snapshots();
    let failures = n.failures();
    let event_id_index = n.derived_qualified(EVENT_ID_KEY);
    let stream_version_index = n.derived_qualified(STREAM_VERSION_KEY);
    format!(
        r#"-- The event store on SQLite: events, aggregate heads, projection
-- checkpoints, snapshots and the events projections skipped.

-- Global positions come from the rowid. AUTOINCREMENT keeps a position from
-- ever being handed out twice, even after the highest event is deleted.
CREATE TABLE {events} (
    global_position   INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id          TEXT    NOT NULL,
    bounded_context   TEXT    NOT NULL CHECK (bounded_context <> ''),
    aggregate_type    TEXT    NOT NULL CHECK (aggregate_type <> ''),
    aggregate_id      TEXT    NOT NULL CHECK (aggregate_id <> ''),
    aggregate_version INTEGER NOT NULL CHECK (aggregate_version > 0),
    event_type        TEXT    NOT NULL CHECK (event_type <> ''),
    event_version     INTEGER NOT NULL CHECK (event_version > 0),
    payload           TEXT    NOT NULL CHECK (json_valid(payload)),
    metadata          TEXT    NOT NULL DEFAULT '{{}}' CHECK (json_valid(metadata)),
    correlation_id    TEXT,
    causation_id      TEXT,
    trace_id          TEXT,
    created_at        TEXT    NOT NULL DEFAULT {NOW},
    -- A stable hash of (bounded_context, aggregate_type, aggregate_id),
    -- computed by the store (FNV-1a): projections partition on it.
    stream_hash       INTEGER NOT NULL DEFAULT 0 CHECK (stream_hash >= 0)
) STRICT;

CREATE UNIQUE INDEX {event_id_index} ON {events} (event_id);

-- The last safety net of optimistic concurrency, and the index of stream reads.
CREATE UNIQUE INDEX {stream_version_index}
    ON {events} (bounded_context, aggregate_type, aggregate_id, aggregate_version);

-- One row per aggregate: its current version, read and moved by every append
-- (O(1) instead of max(aggregate_version)).
CREATE TABLE {heads} (
    bounded_context TEXT    NOT NULL,
    aggregate_type  TEXT    NOT NULL,
    aggregate_id    TEXT    NOT NULL,
    version         INTEGER NOT NULL CHECK (version > 0),
    PRIMARY KEY (bounded_context, aggregate_type, aggregate_id)
) STRICT, WITHOUT ROWID;

CREATE TABLE {checkpoints} (
    projection_name TEXT    NOT NULL PRIMARY KEY CHECK (projection_name <> ''),
    position        INTEGER NOT NULL CHECK (position >= 0),
    updated_at      TEXT    NOT NULL DEFAULT {NOW}
) STRICT;

-- The latest snapshot of each aggregate that has one.
CREATE TABLE {snapshots} (
    bounded_context TEXT    NOT NULL,
    aggregate_type  TEXT    NOT NULL,
    aggregate_id    TEXT    NOT NULL,
    version         INTEGER NOT NULL CHECK (version >= 0),
    schema_version  INTEGER NOT NULL,
    state           TEXT    NOT NULL CHECK (json_valid(state)),
    created_at      TEXT    NOT NULL DEFAULT {NOW},
    PRIMARY KEY (bounded_context, aggregate_type, aggregate_id)
) STRICT, WITHOUT ROWID;

-- Events a projection skipped because its handler failed on them.
CREATE TABLE {failures} (
    projection_name TEXT    NOT NULL,
    global_position INTEGER NOT NULL,
    event_id        TEXT    NOT NULL,
    event_type      TEXT    NOT NULL,
    error           TEXT    NOT NULL,
    failed_at       TEXT    NOT NULL DEFAULT {NOW},
    PRIMARY KEY (projection_name, global_position)
) STRICT, WITHOUT ROWID;
"#
    )
}

/// Every statement of a SQLite store.
pub(crate) fn statements(n: &Names) -> (Statements, Sql) {
    {
        let events = n.events();
        let heads = n.heads();
        let checkpoints = n.checkpoints();
        let snapshots = n.snapshots();
        let failures = n.failures();
        let versions = n.versions();
        // The head statements are the first statement of every append, and
        // they write: SQLite takes the write lock when a writing statement
        // starts, whether or not it changes a row, so everything after them
        // (the duplicate check included) runs under the lock.
        //
        // Parameters: ?1 bounded context, ?2 aggregate type, ?3 aggregate id,
        // ?4 number of events, ?5 the batch's event ids as a JSON array,
        // ?6 (Exact only) the expected version. They return the version
        // before the batch, or no row when the check failed or an id of the
        // batch is stored already.
        let not_stored = format!(
            "NOT EXISTS (SELECT 1 FROM {events} \
                         WHERE event_id IN (SELECT value FROM json_each(?5)))"
        );
        let aggregate = "bounded_context = ?1 AND aggregate_type = ?2 AND aggregate_id = ?3";
        let common = Statements {
            append: AppendStatements {
                no_stream: format!(
                    "INSERT INTO {heads} (bounded_context, aggregate_type, aggregate_id, version) \
                 SELECT ?1, ?2, ?3, ?4 WHERE {not_stored} \
                 ON CONFLICT DO NOTHING \
                 RETURNING 0"
                )
                .into(),
                any: format!(
                    "INSERT INTO {heads} (bounded_context, aggregate_type, aggregate_id, version) \
                 SELECT ?1, ?2, ?3, ?4 WHERE {not_stored} \
                 ON CONFLICT (bounded_context, aggregate_type, aggregate_id) \
                 DO UPDATE SET version = version + excluded.version \
                 RETURNING version - ?4"
                )
                .into(),
                exact: format!(
                    "UPDATE {heads} SET version = version + ?4 \
                 WHERE bounded_context = ?1 AND aggregate_type = ?2 AND aggregate_id = ?3 \
                   AND version = ?6 AND {not_stored} \
                 RETURNING version - ?4"
                )
                .into(),
            },
            // ?1 the batch's event ids as a JSON array; the first column is
            // the index in the batch.
            stored_ids: format!(
                "SELECT {EVENT_COLUMNS} FROM {events} \
                 WHERE event_id IN (SELECT value FROM json_each(?1))"
            )
            .into(),
            // A write that changes nothing, to take the database's write
            // lock (SQLite locks the whole database, not a row).
            lock_head: format!(
                "UPDATE {heads} SET version = version WHERE {aggregate} RETURNING version"
            )
            .into(),
            head_version: format!("SELECT version FROM {heads} WHERE {aggregate}").into(),
            read_stream: format!(
                "SELECT {EVENT_COLUMNS} FROM {events} \
                 WHERE {aggregate} AND aggregate_version BETWEEN ?4 AND ?5 \
                 ORDER BY aggregate_version"
            )
            .into(),
            fold_stream: format!(
                "SELECT aggregate_version, event_type, event_version, payload FROM {events} \
                 WHERE {aggregate} AND aggregate_version BETWEEN ?4 AND ?5 \
                 ORDER BY aggregate_version"
            )
            .into(),
            head_position: format!("SELECT coalesce(max(global_position), 0) FROM {events}").into(),
            // ?2 and ?3 are the accepted bounded contexts and aggregate
            // types as JSON arrays (NULL: all).
            read_events: format!(
                "SELECT {EVENT_COLUMNS} FROM {events} \
                 WHERE global_position > ?1 AND global_position <= ?6 \
                   AND (?2 IS NULL OR bounded_context IN (SELECT value FROM json_each(?2))) \
                   AND (?3 IS NULL OR aggregate_type IN (SELECT value FROM json_each(?3))) \
                   AND (?4 = 1 OR stream_hash % ?4 = ?5) \
                 ORDER BY global_position LIMIT ?7"
            )
            .into(),
            get_checkpoint: format!(
                "SELECT position FROM {checkpoints} WHERE projection_name = ?1"
            )
            .into(),
            update_checkpoint: format!(
                "INSERT INTO {checkpoints} (projection_name, position, updated_at) \
                 VALUES (?1, ?2, ?3) \
                 ON CONFLICT (projection_name) \
                 DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at"
            )
            .into(),
            // Claims take the write lock (`create_checkpoint`), not a row.
            claim_checkpoint: format!(
                "SELECT position FROM {checkpoints} WHERE projection_name = ?1"
            )
            .into(),
            checkpoint_exists: format!(
                "SELECT EXISTS (SELECT 1 FROM {checkpoints} WHERE projection_name = ?1)"
            )
            .into(),
            // Writes, so it takes the write lock, even when the checkpoint
            // exists and nothing changes.
            create_checkpoint: format!(
                "INSERT INTO {checkpoints} (projection_name, position, updated_at) \
                 VALUES (?1, 0, ?2) \
                 ON CONFLICT (projection_name) DO NOTHING"
            )
            .into(),
            load_snapshot: format!(
                "SELECT version, schema_version, state, created_at FROM {snapshots} \
                 WHERE {aggregate} AND version <= ?4"
            )
            .into(),
            save_snapshot: format!(
                "INSERT INTO {snapshots} (bounded_context, aggregate_type, aggregate_id, \
                     version, schema_version, state, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                 ON CONFLICT (bounded_context, aggregate_type, aggregate_id) DO UPDATE \
                 SET version = excluded.version, schema_version = excluded.schema_version, \
                     state = excluded.state, created_at = excluded.created_at \
                 WHERE {snapshots}.version <= excluded.version"
            )
            .into(),
            record_failure: format!(
                "INSERT INTO {failures} (projection_name, global_position, event_id, event_type, \
                     error, failed_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                 ON CONFLICT (projection_name, global_position) \
                 DO UPDATE SET error = excluded.error, failed_at = excluded.failed_at"
            )
            .into(),
            list_failures: format!(
                "SELECT global_position, event_id, event_type, error, failed_at FROM {failures} \
                 WHERE projection_name = ?1 ORDER BY global_position"
            )
            .into(),
            list_versions: format!(
                "SELECT projection_name, version, state, replay_until, partitions, updated_at, \
                     side_effects, worker_seen_at \
                 FROM {versions} WHERE projection_name = ?1 AND version > 0 ORDER BY version"
            )
            .into(),
            insert_version: format!(
                "INSERT INTO {versions} \
                     (projection_name, version, state, replay_until, partitions, updated_at, \
                      side_effects) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                 ON CONFLICT (projection_name, version) DO NOTHING"
            )
            .into(),
            record_side_effects: format!(
                "UPDATE {versions} SET side_effects = ?1 \
                 WHERE projection_name = ?2 AND version = ?3"
            )
            .into(),
            record_worker: format!(
                "UPDATE {versions} SET worker_seen_at = ?1 \
                 WHERE projection_name = ?2 AND version = ?3"
            )
            .into(),
            update_version: format!(
                "UPDATE {versions} SET state = ?1, replay_until = ?2, partitions = ?3, \
                     updated_at = ?4 \
                 WHERE projection_name = ?5 AND version = ?6"
            )
            .into(),
            delete_version: format!(
                "DELETE FROM {versions} WHERE projection_name = ?1 AND version = ?2"
            )
            .into(),
            lock_versions: format!(
                "INSERT INTO {versions} \
                     (projection_name, version, state, replay_until, partitions, updated_at) \
                 VALUES (?1, 0, 'lock', 0, 0, ?2) \
                 ON CONFLICT (projection_name, version) \
                 DO UPDATE SET updated_at = excluded.updated_at"
            )
            .into(),
            delete_checkpoint: format!("DELETE FROM {checkpoints} WHERE projection_name = ?1")
                .into(),
            documents: document_statements(n),
        };
        let own = Sql {
            // The start of the insert: the append adds a row of 14
            // parameters per event, in these columns' order, and `RETURNING
            // aggregate_version, global_position`. Rows are inserted in
            // batch order, so positions increase with versions.
            insert: format!(
                "INSERT INTO {events} (event_id, bounded_context, aggregate_type, aggregate_id, \
                     aggregate_version, event_type, event_version, payload, metadata, \
                     correlation_id, causation_id, trace_id, created_at, stream_hash) \
                 VALUES "
            )
            .into(),
        };
        (common, own)
    }
}
