//! Every SQL text the SQLite store runs, rendered once per store from
//! validated names.

use std::sync::Arc;

use crate::postgres::names::Ident;

/// The store's tables, validated.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    pub(crate) events: Ident,
    pub(crate) heads: Ident,
    pub(crate) checkpoints: Ident,
    pub(crate) snapshots: Ident,
    pub(crate) failures: Ident,
}

fn quoted(ident: &Ident) -> String {
    format!("\"{}\"", ident.as_str())
}

impl Names {
    pub(crate) fn events(&self) -> String {
        quoted(&self.events)
    }

    pub(crate) fn heads(&self) -> String {
        quoted(&self.heads)
    }

    pub(crate) fn checkpoints(&self) -> String {
        quoted(&self.checkpoints)
    }

    pub(crate) fn snapshots(&self) -> String {
        quoted(&self.snapshots)
    }

    pub(crate) fn failures(&self) -> String {
        quoted(&self.failures)
    }

    pub(crate) fn migrations_table(&self) -> String {
        "\"_es_migrations\"".to_owned()
    }
}

/// The migrations, oldest first: (version, description, SQL).
pub(crate) fn migrations(names: &Names) -> Vec<(i64, &'static str, String)> {
    vec![(1, "event store", migration_1(names))]
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
    let event_id_index = quoted_index(&n.events, "event_id_key");
    let stream_version_index = quoted_index(&n.events, "stream_version_key");
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

/// `"<events table>_<suffix>"`: index names live in one namespace per
/// database, so they carry the table's name.
fn quoted_index(table: &Ident, suffix: &str) -> String {
    format!("\"{}_{suffix}\"", table.as_str())
}

/// The columns every event read selects, in the order `decode_row` expects.
pub(crate) const EVENT_COLUMNS: &str = "global_position, aggregate_version, event_id, \
    bounded_context, aggregate_type, aggregate_id, event_type, event_version, payload, \
    metadata, correlation_id, causation_id, trace_id, created_at";

/// The prepared texts of one store.
#[derive(Debug)]
pub(crate) struct Statements {
    pub(crate) move_head_no_stream: Arc<str>,
    pub(crate) move_head_any: Arc<str>,
    pub(crate) move_head_exact: Arc<str>,
    pub(crate) insert_events: Arc<str>,
    pub(crate) stored_ids: Arc<str>,
    pub(crate) head_version: Arc<str>,
    pub(crate) lock_head: Arc<str>,
    pub(crate) read_stream: Arc<str>,
    pub(crate) fold_stream: Arc<str>,
    pub(crate) head_position: Arc<str>,
    pub(crate) read_events: Arc<str>,
    pub(crate) get_checkpoint: Arc<str>,
    pub(crate) update_checkpoint: Arc<str>,
    pub(crate) create_checkpoint: Arc<str>,
    pub(crate) load_snapshot: Arc<str>,
    pub(crate) save_snapshot: Arc<str>,
    pub(crate) record_failure: Arc<str>,
    pub(crate) list_failures: Arc<str>,
}

impl Statements {
    pub(crate) fn new(n: &Names) -> Self {
        let events = n.events();
        let heads = n.heads();
        let checkpoints = n.checkpoints();
        let snapshots = n.snapshots();
        let failures = n.failures();
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
        Statements {
            move_head_no_stream: format!(
                "INSERT INTO {heads} (bounded_context, aggregate_type, aggregate_id, version) \
                 SELECT ?1, ?2, ?3, ?4 WHERE {not_stored} \
                 ON CONFLICT DO NOTHING \
                 RETURNING 0"
            )
            .into(),
            move_head_any: format!(
                "INSERT INTO {heads} (bounded_context, aggregate_type, aggregate_id, version) \
                 SELECT ?1, ?2, ?3, ?4 WHERE {not_stored} \
                 ON CONFLICT (bounded_context, aggregate_type, aggregate_id) \
                 DO UPDATE SET version = version + excluded.version \
                 RETURNING version - ?4"
            )
            .into(),
            move_head_exact: format!(
                "UPDATE {heads} SET version = version + ?4 \
                 WHERE bounded_context = ?1 AND aggregate_type = ?2 AND aggregate_id = ?3 \
                   AND version = ?6 AND {not_stored} \
                 RETURNING version - ?4"
            )
            .into(),
            // ?1..?3 the aggregate, ?4 the version before the batch, ?5 the
            // batch as a JSON array of event arrays (see `BatchRow`), ?6 the
            // stream hash. Rows are inserted in batch order, so positions
            // increase with versions.
            insert_events: format!(
                "INSERT INTO {events} (event_id, bounded_context, aggregate_type, aggregate_id, \
                     aggregate_version, event_type, event_version, payload, metadata, \
                     correlation_id, causation_id, trace_id, created_at, stream_hash) \
                 SELECT e.value ->> 0, ?1, ?2, ?3, ?4 + e.key + 1, e.value ->> 1, \
                     e.value ->> 2, e.value ->> 3, e.value ->> 4, e.value ->> 5, \
                     e.value ->> 6, e.value ->> 7, e.value ->> 8, ?6 \
                 FROM json_each(?5) AS e \
                 ORDER BY e.key \
                 RETURNING global_position, aggregate_version"
            )
            .into(),
            // ?1 the batch's event ids as a JSON array; the first column is
            // the index in the batch.
            stored_ids: format!(
                "SELECT i.key, {cols} \
                 FROM json_each(?1) AS i JOIN {events} e ON e.event_id = i.value \
                 ORDER BY i.key",
                cols = prefixed("e", EVENT_COLUMNS)
            )
            .into(),
            // A write that changes nothing, to take the database's write
            // lock (SQLite locks the whole database, not a row).
            lock_head: format!(
                "UPDATE {heads} SET version = version \
                 WHERE bounded_context = ?1 AND aggregate_type = ?2 AND aggregate_id = ?3 \
                 RETURNING version"
            )
            .into(),
            head_version: format!(
                "SELECT version FROM {heads} \
                 WHERE bounded_context = ?1 AND aggregate_type = ?2 AND aggregate_id = ?3"
            )
            .into(),
            read_stream: format!(
                "SELECT {EVENT_COLUMNS} FROM {events} \
                 WHERE bounded_context = ?1 AND aggregate_type = ?2 AND aggregate_id = ?3 \
                   AND aggregate_version BETWEEN ?4 AND ?5 \
                 ORDER BY aggregate_version"
            )
            .into(),
            fold_stream: format!(
                "SELECT aggregate_version, event_type, event_version, payload \
                 FROM {events} \
                 WHERE bounded_context = ?1 AND aggregate_type = ?2 AND aggregate_id = ?3 \
                   AND aggregate_version BETWEEN ?4 AND ?5 \
                 ORDER BY aggregate_version"
            )
            .into(),
            head_position: format!("SELECT coalesce(max(global_position), 0) FROM {events}").into(),
            // ?1 from (exclusive), ?2 head (inclusive), ?3 limit, ?4 and ?5
            // the accepted bounded contexts and aggregate types as JSON
            // arrays (NULL: all), ?6 partition count, ?7 partition index.
            read_events: format!(
                "SELECT {EVENT_COLUMNS} FROM {events} \
                 WHERE global_position > ?1 AND global_position <= ?2 \
                   AND (?4 IS NULL OR bounded_context IN (SELECT value FROM json_each(?4))) \
                   AND (?5 IS NULL OR aggregate_type IN (SELECT value FROM json_each(?5))) \
                   AND (?6 = 1 OR stream_hash % ?6 = ?7) \
                 ORDER BY global_position LIMIT ?3"
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
                 WHERE bounded_context = ?1 AND aggregate_type = ?2 AND aggregate_id = ?3 \
                   AND version <= ?4"
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
        }
    }
}

fn prefixed(alias: &str, columns: &str) -> String {
    columns
        .split(", ")
        .map(|c| format!("{alias}.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}
