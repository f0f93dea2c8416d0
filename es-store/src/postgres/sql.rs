//! Every SQL text the PostgreSQL store runs, rendered once per store from
//! validated names.

use crate::core::{AppendStatements, EVENT_COLUMNS, Statements};
use crate::names::{
    EVENT_ID_KEY, IDS_STORED, LISTENERS, LOCKED_TAIL, Names, SEQUENCE, STREAM_VERSION_KEY,
};

use std::sync::Arc;

use crate::ExpectedVersion;

/// The statements only PostgreSQL runs, beside the [`Statements`] every
/// backend has.
// `pub`, unnameable outside the crate: the sealed `Dialect::Own` names it.
#[allow(unreachable_pub)]
#[derive(Debug)]
pub struct Sql {
    /// The append of a batch of one event (see [`Batch::One`]): for
    /// `NoStream`, `Any`, `Exact`.
    pub(crate) single_event: [Arc<str>; 3],
    /// Locks the head and reads the tail in one round trip: (bounded
    /// context, aggregate type, aggregate id, from) -> fold columns.
    pub(crate) locked_tail: Arc<str>,
    /// (name) -> position, never waiting for a holder.
    pub(crate) probe_claim: Arc<str>,
    /// (name) -> (pid, application, client address) of the session whose
    /// transaction holds the row.
    pub(crate) claim_holder: Arc<str>,
    /// (name, lease in milliseconds as text) -> (position, _): the claim
    /// that also sets the transaction's lease.
    pub(crate) claim_leased: Arc<str>,
    /// (name) -> position, waiting for a transaction that holds the
    /// checkpoint.
    pub(crate) wait_checkpoint: Arc<str>,
    /// Lets the transaction commit without waiting for durability.
    pub(crate) relax_durability: Arc<str>,
    /// The gap-safe horizon (see the gap-safety notes).
    pub(crate) horizon: Arc<str>,
    /// (channel): records the connection as a listener.
    pub(crate) register_listener: Arc<str>,
}

impl Sql {
    /// The statement that appends a batch of `events` events under
    /// `expected`.
    pub(crate) fn append<'a>(
        &'a self,
        common: &'a AppendStatements,
        expected: ExpectedVersion,
        events: usize,
    ) -> &'a Arc<str> {
        if events != 1 {
            return common.for_expected(expected);
        }
        let [no_stream, any, exact] = &self.single_event;
        match expected {
            ExpectedVersion::NoStream => no_stream,
            ExpectedVersion::Any => any,
            ExpectedVersion::Exact(_) => exact,
        }
    }
}

/// Positions are kept below 2^48 so that a position fits in an advisory lock
/// key next to the store's 15-bit tag (see the gap-safety notes in `mod.rs`).
pub(crate) const MAX_POSITION: i64 = (1 << 48) - 1;

/// The migrations, oldest first: (version, description, SQL).
pub(crate) fn migrations(names: &Names) -> Vec<(i64, &'static str, String)> {
    vec![
        (1, "event store", migration_1(names)),
        (2, "snapshots", migration_2(names)),
        (3, "projection failures", migration_3(names)),
        (4, "notification listeners", migration_4(names)),
        (5, "event id lookup", migration_5(names)),
        (6, "locked tail", migration_6(names)),
        (7, "lean appends", migration_7(names)),
        (8, "read models", migration_8(names)),
        (9, "projection versions", migration_9(names)),
        (10, "projection workers", migration_10(names)),
    ]
}

fn migration_10(n: &Names) -> String {
    let versions = n.versions();
    format!(
        r#"-- What operators' tools need before they rewind a projection: whether it
-- declares side effects (a replay would do them again), and when a worker
-- running the version last said so (every few seconds while it runs).
ALTER TABLE {versions}
    ADD COLUMN side_effects   boolean     NOT NULL DEFAULT false,
    ADD COLUMN worker_seen_at timestamptz;
"#
    )
}

fn migration_9(n: &Names) -> String {
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
    projection_name text        NOT NULL,
    version         bigint      NOT NULL,
    state           text        NOT NULL,
    replay_until    bigint      NOT NULL,
    partitions      bigint      NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection_name, version)
);
"#
    )
}

fn migration_8(n: &Names) -> String {
    let documents = n.documents();
    format!(
        r#"-- Read-model documents: JSON values by collection and id, written by
-- projections through es_store::documents::Collection. Ids compare and
-- sort bytewise ("C"), as on the other backends.
CREATE TABLE {documents} (
    collection text        COLLATE "C" NOT NULL,
    id         text        COLLATE "C" NOT NULL,
    body       jsonb       NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (collection, id)
);
"#
    )
}

/// (name) -> (pid, application, client address) of the session holding
/// the checkpoint row. A row lock is not in `pg_locks`: the row's `xmax`
/// is the locking transaction's id, and that transaction holds a lock on
/// its own id, which names its backend.
fn claim_holder(n: &Names) -> String {
    let checkpoints = n.checkpoints();
    format!(
        "SELECT a.pid, nullif(a.application_name, ''), host(a.client_addr) \
         FROM {checkpoints} c \
         JOIN pg_catalog.pg_locks l ON l.locktype = 'transactionid' \
              AND l.transactionid = c.xmax AND l.mode = 'ExclusiveLock' AND l.granted \
         JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid \
         WHERE c.projection_name = $1"
    )
}

/// The read-model documents' statements.
fn document_statements(n: &Names) -> crate::core::DocumentStatements {
    let documents = n.documents();
    let key = "collection = $1 AND id = $2";
    crate::core::DocumentStatements {
        put: format!(
            "INSERT INTO {documents} (collection, id, body, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (collection, id) \
             DO UPDATE SET body = EXCLUDED.body, updated_at = EXCLUDED.updated_at"
        )
        .into(),
        get: format!("SELECT body FROM {documents} WHERE {key}").into(),
        ensure: format!(
            "INSERT INTO {documents} (collection, id, body, updated_at) \
             VALUES ($1, $2, 'null', $3) ON CONFLICT (collection, id) DO NOTHING"
        )
        .into(),
        get_locked: format!("SELECT body FROM {documents} WHERE {key} FOR UPDATE").into(),
        delete: format!("DELETE FROM {documents} WHERE {key}").into(),
        clear: format!("DELETE FROM {documents} WHERE collection = $1").into(),
        list: format!(
            "SELECT id, body FROM {documents} \
             WHERE collection = $1 AND id > $2 AND body <> 'null'::jsonb \
             ORDER BY id LIMIT $3"
        )
        .into(),
        count: format!(
            "SELECT count(*) FROM {documents} WHERE collection = $1 AND body <> 'null'::jsonb"
        )
        .into(),
    }
}

fn migration_7(n: &Names) -> String {
    let tables = [n.events(), n.heads(), n.checkpoints()]
        .map(|t| format!("'{t}'::regclass"))
        .join(", ");
    format!(
        r#"-- Drops the CHECK constraints of the tables every append and every
-- projection batch writes (non-empty names, positive versions, a
-- non-negative stream hash and checkpoint position). The store checks all
-- of them before it sends anything (es_store::Error::EmptyName,
-- InvalidEventVersion, NegativePosition) or computes the values itself, so
-- they never fired; and PostgreSQL prepares a table's CHECK expressions
-- again for every statement that writes it: measured with callgrind, they
-- were 18% of the server's instructions for a one-event append. The unique
-- keys (positions, event ids, aggregate versions) stay: they are what
-- idempotency and the version sequence rest on.
DO $$
DECLARE
    c record;
BEGIN
    FOR c IN SELECT conrelid::regclass AS tab, conname FROM pg_catalog.pg_constraint
             WHERE contype = 'c' AND conrelid IN ({tables})
    LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', c.tab, c.conname);
    END LOOP;
END
$$;
"#
    )
}

fn migration_6(n: &Names) -> String {
    let (events, heads) = (n.events(), n.heads());
    let function = n.derived_qualified(LOCKED_TAIL);
    format!(
        r#"-- Locks an aggregate's head row until the caller's transaction ends, then
-- reads its events from version from_version on: the retry of a contended
-- command, in one round trip. The read must see what the previous holder of
-- the lock committed while this call waited for it, which one statement
-- cannot do (its snapshot is taken before the wait): each statement of a
-- VOLATILE function takes a snapshot of its own in a READ COMMITTED
-- transaction, so the read, after the lock, sees it. (Under REPEATABLE READ
-- the lock fails with a serialization error when the holder moved the head.)
CREATE FUNCTION {function}(
    context text, kind text, id text, from_version bigint
) RETURNS TABLE (aggregate_version bigint, event_type text, event_version integer, payload jsonb)
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    PERFORM 1 FROM {heads} h
    WHERE h.bounded_context = context AND h.aggregate_type = kind AND h.aggregate_id = id
    FOR UPDATE;
    RETURN QUERY
    SELECT e.aggregate_version, e.event_type, e.event_version, e.payload
    FROM {events} e
    WHERE e.bounded_context = context AND e.aggregate_type = kind AND e.aggregate_id = id
      AND e.aggregate_version >= from_version
    ORDER BY e.aggregate_version;
END
$$;
"#
    )
}

fn migration_5(n: &Names) -> String {
    let events = n.events();
    let function = n.derived_qualified(IDS_STORED);
    format!(
        r#"-- Whether any of some event ids is stored: the duplicate check of appends
-- with ExpectedVersion::Any. It is a function (a SQL function with a SET clause is never
-- inlined, so its query is planned afresh at each append, with the table's
-- current size) because a plan cached by a prepared append while the table
-- was nearly empty would look ids up with a sequential scan for as long as
-- the connection lives, unless ANALYZE happens to invalidate it; and the
-- index is the only sensible way to look up a few ids, whatever the
-- statistics say.
CREATE FUNCTION {function}(ids uuid[]) RETURNS boolean
LANGUAGE sql STABLE
SET enable_seqscan = off
AS $$ SELECT EXISTS (SELECT 1 FROM {events} WHERE event_id = ANY(ids)) $$;
"#
    )
}

fn migration_4(n: &Names) -> String {
    let listeners = n.derived_qualified(LISTENERS);
    format!(
        r#"-- The connections listening to the appends' notifications. Appends
-- notify only while someone listens: a notifying transaction takes a
-- database-wide lock to commit, which writers should not pay for nothing.
-- A listener refreshes its row; rows not seen for {LISTENER_TTL_SECONDS} seconds are ignored.
CREATE TABLE {listeners} (
    channel text        NOT NULL,
    pid     integer     NOT NULL,
    seen    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, pid)
);
"#
    )
}

/// How long a listener's registration counts without being refreshed.
pub(crate) const LISTENER_TTL_SECONDS: u32 = 30;

fn migration_3(n: &Names) -> String {
    let failures = n.failures();
    format!(
        r#"-- Events a projection skipped because its handler failed on them.
CREATE TABLE {failures} (
    projection_name text        NOT NULL,
    global_position bigint      NOT NULL,
    event_id        uuid        NOT NULL,
    event_type      text        NOT NULL,
    error           text        NOT NULL,
    failed_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection_name, global_position)
);
"#
    )
}

fn migration_2(n: &Names) -> String {
    let snapshots = n.snapshots();
    format!(
        r#"-- The latest snapshot of each aggregate that has one.
CREATE TABLE {snapshots} (
    bounded_context text        NOT NULL,
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    version         bigint      NOT NULL CHECK (version >= 0),
    schema_version  integer     NOT NULL,
    state           jsonb       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bounded_context, aggregate_type, aggregate_id)
);
"#
    )
}

fn migration_1(n: &Names) -> String {
    let events = n.events();
    let heads = n.heads();
    let checkpoints = n.checkpoints();
    let sequence = n.derived_qualified(SEQUENCE);
    let event_id_key = n.derived(EVENT_ID_KEY);
    let stream_version_key = n.derived(STREAM_VERSION_KEY);
    format!(
        r#"-- The event store: events, aggregate heads, projection checkpoints.

-- Global positions. CACHE 1 is required: the gap-safe reader relies on every
-- value handed out being above the sequence's last_value read before it.
CREATE SEQUENCE {sequence} AS bigint MINVALUE 1 MAXVALUE {MAX_POSITION} CACHE 1;

CREATE TABLE {events} (
    global_position   bigint      NOT NULL DEFAULT nextval('{sequence}') PRIMARY KEY,
    event_id          uuid        NOT NULL,
    bounded_context   text        NOT NULL CHECK (bounded_context <> ''),
    aggregate_type    text        NOT NULL CHECK (aggregate_type <> ''),
    aggregate_id      text        NOT NULL CHECK (aggregate_id <> ''),
    aggregate_version bigint      NOT NULL CHECK (aggregate_version > 0),
    event_type        text        NOT NULL CHECK (event_type <> ''),
    event_version     integer     NOT NULL CHECK (event_version > 0),
    payload           jsonb       NOT NULL,
    metadata          jsonb       NOT NULL DEFAULT '{{}}',
    correlation_id    uuid,
    causation_id      uuid,
    trace_id          text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    -- A stable hash of (bounded_context, aggregate_type, aggregate_id),
    -- computed by the store (FNV-1a): projections partition on it.
    stream_hash       bigint      NOT NULL DEFAULT 0 CHECK (stream_hash >= 0),
    CONSTRAINT "{event_id_key}" UNIQUE (event_id),
    -- The last safety net of optimistic concurrency.
    CONSTRAINT "{stream_version_key}"
        UNIQUE (bounded_context, aggregate_type, aggregate_id, aggregate_version)
);

ALTER SEQUENCE {sequence} OWNED BY {events}.global_position;

-- One row per aggregate: its current version, read and moved by every append
-- (O(1) instead of max(aggregate_version)). The row lock it takes orders
-- concurrent appends to one aggregate. Free space per page keeps updates HOT.
CREATE TABLE {heads} (
    bounded_context text   NOT NULL,
    aggregate_type  text   NOT NULL,
    aggregate_id    text   NOT NULL,
    version         bigint NOT NULL CHECK (version > 0),
    PRIMARY KEY (bounded_context, aggregate_type, aggregate_id)
) WITH (fillfactor = 70);

CREATE TABLE {checkpoints} (
    projection_name text        NOT NULL PRIMARY KEY CHECK (projection_name <> ''),
    position        bigint      NOT NULL CHECK (position >= 0),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
"#
    )
}

/// The sequence's OID, in SQL (resolved once, when a statement is planned).
fn sequence_oid(n: &Names) -> String {
    format!("('{}'::regclass)::oid", n.derived_qualified(SEQUENCE))
}

/// The tag that marks this store's advisory locks, in SQL: 15 bits, never
/// 0, from the sequence's OID, so that stores in different schemas (even
/// found through the search path) have different tags, and every process
/// agrees on it.
fn gap_tag(n: &Names) -> String {
    format!("({}::bigint % 32767 + 1)", sequence_oid(n))
}

/// The highest position the sequence has handed out (0 before the first):
/// every later `nextval` returns more.
const ALLOCATED: &str = "CASE WHEN is_called THEN last_value ELSE last_value - 1 END";

/// How an append's head CTE checks the expected version.
#[derive(Clone, Copy)]
enum HeadCheck {
    NoStream,
    Any,
    Exact,
}

/// How an append statement takes its events.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Batch {
    /// One array per column, `unnest`ed: any number of events.
    Arrays,
    /// One value per column: a batch of one event, the most common. It
    /// saves the server the arrays and the `unnest` (7% of its
    /// instructions for a one-event append, measured with callgrind) and
    /// the client their encoding.
    One,
}

/// Every statement of a PostgreSQL store.
pub(crate) fn statements(n: &Names) -> (Statements, Sql) {
    let events = n.events();
    let heads = n.heads();
    let checkpoints = n.checkpoints();
    let snapshots = n.snapshots();
    let failures = n.failures();
    let versions = n.versions();
    let aggregate = "bounded_context = $1 AND aggregate_type = $2 AND aggregate_id = $3";
    // The claim never waits for a holder: it is also how a holder is
    // probed for.
    let claim: std::sync::Arc<str> = format!(
        "SELECT position FROM {checkpoints} WHERE projection_name = $1 FOR UPDATE SKIP LOCKED"
    )
    .into();
    let common = Statements {
        append: AppendStatements {
            no_stream: append(n, HeadCheck::NoStream, Batch::Arrays).into(),
            any: append(n, HeadCheck::Any, Batch::Arrays).into(),
            exact: append(n, HeadCheck::Exact, Batch::Arrays).into(),
        },
        stored_ids: format!("SELECT {EVENT_COLUMNS} FROM {events} WHERE event_id = ANY($1)").into(),
        head_version: format!("SELECT version FROM {heads} WHERE {aggregate}").into(),
        lock_head: format!("SELECT version FROM {heads} WHERE {aggregate} FOR UPDATE").into(),
        read_stream: format!(
            "SELECT {EVENT_COLUMNS} FROM {events} \
             WHERE {aggregate} AND aggregate_version BETWEEN $4 AND $5 \
             ORDER BY aggregate_version"
        )
        .into(),
        fold_stream: format!(
            "SELECT aggregate_version, event_type, event_version, payload FROM {events} \
             WHERE {aggregate} AND aggregate_version BETWEEN $4 AND $5 \
             ORDER BY aggregate_version"
        )
        .into(),
        // The inner query walks the primary key from the checkpoint, as a
        // keyset read does; the safe bound is applied outside it. With the
        // bound inside, a tight range looks small to the planner (always so
        // right after a bulk load, before the statistics catch up), which
        // then prefers a bitmap scan and a sort of everything in the range.
        read_events: format!(
            "SELECT * FROM ( \
                 SELECT {EVENT_COLUMNS} FROM {events} \
                 WHERE global_position > $1 \
                   AND (cardinality($2::text[]) = 0 OR bounded_context = ANY($2)) \
                   AND (cardinality($3::text[]) = 0 OR aggregate_type = ANY($3)) \
                   AND ($4::bigint = 1 OR stream_hash % $4 = $5) \
                 ORDER BY global_position LIMIT $7 \
             ) page WHERE global_position <= $6"
        )
        .into(),
        head_position: format!("SELECT coalesce(max(global_position), 0) FROM {events}").into(),
        get_checkpoint: format!("SELECT position FROM {checkpoints} WHERE projection_name = $1")
            .into(),
        update_checkpoint: format!(
            "INSERT INTO {checkpoints} (projection_name, position, updated_at) \
             VALUES ($1, $2, $3) \
             ON CONFLICT (projection_name) \
             DO UPDATE SET position = EXCLUDED.position, updated_at = EXCLUDED.updated_at"
        )
        .into(),
        claim_checkpoint: claim.clone(),
        checkpoint_exists: format!(
            "SELECT EXISTS (SELECT 1 FROM {checkpoints} WHERE projection_name = $1)"
        )
        .into(),
        create_checkpoint: format!(
            "INSERT INTO {checkpoints} (projection_name, position, updated_at) \
             VALUES ($1, 0, $2) \
             ON CONFLICT (projection_name) DO NOTHING RETURNING position"
        )
        .into(),
        load_snapshot: format!(
            "SELECT version, schema_version, state, created_at FROM {snapshots} \
             WHERE {aggregate} AND version <= $4"
        )
        .into(),
        save_snapshot: format!(
            "INSERT INTO {snapshots} AS s (bounded_context, aggregate_type, aggregate_id, \
                 version, schema_version, state, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (bounded_context, aggregate_type, aggregate_id) DO UPDATE \
             SET version = EXCLUDED.version, schema_version = EXCLUDED.schema_version, \
                 state = EXCLUDED.state, created_at = EXCLUDED.created_at \
             WHERE s.version <= EXCLUDED.version"
        )
        .into(),
        record_failure: format!(
            "INSERT INTO {failures} (projection_name, global_position, event_id, event_type, \
                 error, failed_at) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (projection_name, global_position) \
             DO UPDATE SET error = EXCLUDED.error, failed_at = EXCLUDED.failed_at"
        )
        .into(),
        list_failures: format!(
            "SELECT global_position, event_id, event_type, error, failed_at FROM {failures} \
             WHERE projection_name = $1 ORDER BY global_position"
        )
        .into(),
        list_versions: format!(
            "SELECT projection_name, version, state, replay_until, partitions, updated_at, \
                 side_effects, worker_seen_at \
             FROM {versions} WHERE projection_name = $1 AND version > 0 ORDER BY version"
        )
        .into(),
        insert_version: format!(
            "INSERT INTO {versions} \
                 (projection_name, version, state, replay_until, partitions, updated_at, \
                  side_effects) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (projection_name, version) DO NOTHING"
        )
        .into(),
        record_side_effects: format!(
            "UPDATE {versions} SET side_effects = $1 WHERE projection_name = $2 AND version = $3"
        )
        .into(),
        record_worker: format!(
            "UPDATE {versions} SET worker_seen_at = $1 \
             WHERE projection_name = $2 AND version = $3"
        )
        .into(),
        update_version: format!(
            "UPDATE {versions} SET state = $1, replay_until = $2, partitions = $3, \
                 updated_at = $4 \
             WHERE projection_name = $5 AND version = $6"
        )
        .into(),
        delete_version: format!(
            "DELETE FROM {versions} WHERE projection_name = $1 AND version = $2"
        )
        .into(),
        lock_versions: format!(
            "INSERT INTO {versions} AS v \
                 (projection_name, version, state, replay_until, partitions, updated_at) \
             VALUES ($1, 0, 'lock', 0, 0, $2) \
             ON CONFLICT (projection_name, version) DO UPDATE SET updated_at = EXCLUDED.updated_at"
        )
        .into(),
        delete_checkpoint: format!("DELETE FROM {checkpoints} WHERE projection_name = $1").into(),
        documents: document_statements(n),
    };
    let own = Sql {
        single_event: [HeadCheck::NoStream, HeadCheck::Any, HeadCheck::Exact]
            .map(|check| append(n, check, Batch::One).into()),
        locked_tail: format!(
            "SELECT aggregate_version, event_type, event_version, payload \
                 FROM {}($1, $2, $3, $4) ORDER BY aggregate_version",
            n.derived_qualified(LOCKED_TAIL)
        )
        .into(),
        // The lease is set by the row's own output: when no row is
        // claimed it may not be, and the claim is made again the long way.
        probe_claim: claim,
        claim_holder: claim_holder(n).into(),
        claim_leased: format!(
            "SELECT position, \
                    set_config('idle_in_transaction_session_timeout', $2, true) \
                 FROM {checkpoints} WHERE projection_name = $1 \
                 FOR UPDATE SKIP LOCKED"
        )
        .into(),
        wait_checkpoint: format!(
            "SELECT position FROM {checkpoints} WHERE projection_name = $1 FOR UPDATE"
        )
        .into(),
        relax_durability: "SET LOCAL synchronous_commit = off".into(),
        horizon: read_horizon(n).into(),
        register_listener: register_listener(n).into(),
    };
    (common, own)
}

/// The statement of [`PostgresStore::register_listener`](crate::PostgresStore::register_listener).
fn register_listener(n: &Names) -> String {
    let listeners = n.derived_qualified(LISTENERS);
    format!(
        "WITH expired AS (DELETE FROM {listeners} \
             WHERE seen < now() - interval '{LISTENER_TTL_SECONDS} seconds') \
         INSERT INTO {listeners} (channel, pid, seen) \
         VALUES ($1, pg_backend_pid(), now()) \
         ON CONFLICT (channel, pid) DO UPDATE SET seen = EXCLUDED.seen"
    )
}

/// The statement of [`PostgresStore::safe_position`](crate::PostgresStore::safe_position).
/// The sequence is read first (FROM), the in-flight locks second (a
/// subquery correlated with it, so it runs after): see the gap-safety
/// notes.
fn read_horizon(n: &Names) -> String {
    let sequence = n.derived_qualified(SEQUENCE);
    let tag = gap_tag(n);
    format!(
        "SELECT s.allocated, \
             (SELECT min(((l.classid::bigint << 32) | l.objid::bigint) & {MAX_POSITION}) \
              FROM pg_catalog.pg_locks l \
              WHERE s.allocated IS NOT NULL \
                AND l.locktype = 'advisory' AND l.objsubid = 1 \
                AND l.database = (SELECT oid FROM pg_catalog.pg_database \
                                  WHERE datname = current_database()) \
                AND (l.classid::bigint >> 16) = {tag} \
                AND l.pid IS DISTINCT FROM pg_backend_pid()) AS in_flight, \
             current_setting('transaction_isolation') AS isolation, \
             pg_is_in_recovery() AS standby \
         FROM (SELECT {ALLOCATED} AS allocated FROM {sequence}) s"
    )
}

/// One statement that checks the expected version, moves the head, marks
/// the transaction as appending and inserts the whole batch.
///
/// Parameters: $1 bounded context, $2 aggregate type, $3 aggregate id,
/// $4 number of events, $5..$13 one array per event column (with
/// [`Batch::One`], the one event's values), $14 the aggregate's stream
/// hash, and for `Exact`, $15 the expected version.
///
/// Order of effects, forced by data dependencies (each step selects from the
/// previous one): the head row is locked and moved (`head`), then the
/// advisory lock is taken with the sequence's current value (`guard`), then
/// positions are drawn with `nextval` for the inserted rows. If the head
/// check fails, `head` is empty and nothing else happens: no lock, no
/// position consumed. Under `Any`, a batch whose ids are already stored
/// also makes `head` empty; the caller then resolves what happened.
fn append(n: &Names, check: HeadCheck, batch: Batch) -> String {
    let events = n.events();
    let heads = n.heads();
    let sequence = n.derived_qualified(SEQUENCE);
    // Only `Any` looks for stored ids before writing: for it, a repeated
    // batch would otherwise be appended again. Under `NoStream` and
    // `Exact(n)` a repeated batch fails the version check (it moved the
    // head), and an id reused for another event hits the unique constraint;
    // both are resolved after the fact, so the common append pays nothing.
    let ids = match batch {
        Batch::Arrays => "$5",
        Batch::One => "ARRAY[$5::uuid]",
    };
    let not_stored = format!("NOT {}({ids})", n.derived_qualified(IDS_STORED));
    let head = match check {
        HeadCheck::NoStream => format!(
            "INSERT INTO {heads} AS h (bounded_context, aggregate_type, aggregate_id, version) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT DO NOTHING \
             RETURNING 0::bigint AS base"
        ),
        HeadCheck::Any => format!(
            "INSERT INTO {heads} AS h (bounded_context, aggregate_type, aggregate_id, version) \
             SELECT $1, $2, $3, $4 WHERE {not_stored} \
             ON CONFLICT (bounded_context, aggregate_type, aggregate_id) \
             DO UPDATE SET version = h.version + EXCLUDED.version \
             RETURNING h.version - $4 AS base"
        ),
        HeadCheck::Exact => format!(
            "UPDATE {heads} AS h SET version = h.version + $4 \
             WHERE h.bounded_context = $1 AND h.aggregate_type = $2 AND h.aggregate_id = $3 \
               AND h.version = $15 \
             RETURNING h.version - $4 AS base"
        ),
    };
    // The first append of a transaction takes a shared advisory lock keyed
    // by (tag, sequence value before any of its positions) and notes in a
    // transaction-local setting that it did: later appends of the same
    // transaction draw higher positions, so the first lock covers them and
    // a long import does not fill the lock table. CASE fixes the evaluation
    // order.
    // The setting holds the sequence's OID: a transaction that appends to
    // two stores takes a lock for each.
    let allocated = ALLOCATED;
    let oid = sequence_oid(n);
    // Identical notifications of one transaction are folded into one by
    // PostgreSQL, so a transaction appending many times notifies once; and
    // nobody is notified while nobody listens.
    let notify = if n.notify {
        let (channel, listeners) = (n.channel(), n.derived_qualified(LISTENERS));
        format!(
            " AND CASE WHEN EXISTS (SELECT 1 FROM {listeners} \
                  WHERE channel = '{channel}' \
                    AND seen > now() - interval '{LISTENER_TTL_SECONDS} seconds') \
                  THEN pg_notify('{channel}', '')::text = '' ELSE true END"
        )
    } else {
        String::new()
    };
    let tag = gap_tag(n);
    let rows = match batch {
        Batch::Arrays => {
            "unnest($5::uuid[], $6::text[], $7::int4[], $8::jsonb[], $9::jsonb[], \
                    $10::uuid[], $11::uuid[], $12::text[], $13::timestamptz[]) WITH ORDINALITY \
             AS e(event_id, event_type, event_version, payload, metadata, correlation_id, \
                  causation_id, trace_id, created_at, ord)"
        }
        Batch::One => {
            "(SELECT $5::uuid AS event_id, $6::text AS event_type, $7::int4 AS event_version, \
                 $8::jsonb AS payload, $9::jsonb AS metadata, $10::uuid AS correlation_id, \
                 $11::uuid AS causation_id, $12::text AS trace_id, \
                 $13::timestamptz AS created_at, 1::bigint AS ord) e"
        }
    };
    format!(
        "WITH head AS ({head}), \
         guard AS ( \
             SELECT h.base FROM head h \
             WHERE CASE WHEN current_setting('es.gap_guard', true) = {oid}::text THEN true \
                   ELSE pg_advisory_xact_lock_shared(({tag} << 48) + (SELECT {allocated} FROM {sequence}))::text = '' \
                        AND set_config('es.gap_guard', {oid}::text, true) IS NOT NULL END{notify} \
         ) \
         INSERT INTO {events} (global_position, event_id, bounded_context, aggregate_type, \
             aggregate_id, aggregate_version, event_type, event_version, payload, metadata, \
             correlation_id, causation_id, trace_id, created_at, stream_hash) \
         SELECT nextval('{sequence}'), e.event_id, $1, $2, $3, g.base + e.ord, e.event_type, \
             e.event_version, e.payload, COALESCE(e.metadata, '{{}}'), e.correlation_id, e.causation_id, \
             e.trace_id, e.created_at, $14 \
         FROM guard g, {rows} \
         ORDER BY e.ord \
         RETURNING global_position, aggregate_version"
    )
}

/// The statement of [`PostgresStore::unregister_listener`](crate::PostgresStore::unregister_listener).
pub(crate) fn unregister_listener(listeners: &str) -> String {
    format!("DELETE FROM {listeners} WHERE channel = $1 AND pid = pg_backend_pid()")
}
