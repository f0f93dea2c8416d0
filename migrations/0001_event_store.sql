-- The event store: events, aggregate heads, projection checkpoints.

-- Global positions. CACHE 1 is required: the gap-safe reader relies on every
-- value handed out being above the sequence's last_value read before it.
CREATE SEQUENCE "events_global_position_seq" AS bigint MINVALUE 1 MAXVALUE 281474976710655 CACHE 1;

CREATE TABLE "events" (
    global_position   bigint      NOT NULL DEFAULT nextval('"events_global_position_seq"') PRIMARY KEY,
    event_id          uuid        NOT NULL,
    bounded_context   text        NOT NULL CHECK (bounded_context <> ''),
    aggregate_type    text        NOT NULL CHECK (aggregate_type <> ''),
    aggregate_id      text        NOT NULL CHECK (aggregate_id <> ''),
    aggregate_version bigint      NOT NULL CHECK (aggregate_version > 0),
    event_type        text        NOT NULL CHECK (event_type <> ''),
    event_version     integer     NOT NULL CHECK (event_version > 0),
    payload           jsonb       NOT NULL,
    metadata          jsonb       NOT NULL DEFAULT '{}',
    correlation_id    uuid,
    causation_id      uuid,
    trace_id          text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    -- A stable hash of (bounded_context, aggregate_type, aggregate_id),
    -- computed by the store (FNV-1a): projections partition on it.
    stream_hash       bigint      NOT NULL DEFAULT 0 CHECK (stream_hash >= 0),
    CONSTRAINT "events_event_id_key" UNIQUE (event_id),
    -- The last safety net of optimistic concurrency.
    CONSTRAINT "events_stream_version_key"
        UNIQUE (bounded_context, aggregate_type, aggregate_id, aggregate_version)
);

ALTER SEQUENCE "events_global_position_seq" OWNED BY "events".global_position;

-- One row per aggregate: its current version, read and moved by every append
-- (O(1) instead of max(aggregate_version)). The row lock it takes orders
-- concurrent appends to one aggregate. Free space per page keeps updates HOT.
CREATE TABLE "aggregate_heads" (
    bounded_context text   NOT NULL,
    aggregate_type  text   NOT NULL,
    aggregate_id    text   NOT NULL,
    version         bigint NOT NULL CHECK (version > 0),
    PRIMARY KEY (bounded_context, aggregate_type, aggregate_id)
) WITH (fillfactor = 70);

CREATE TABLE "checkpoints" (
    projection_name text        NOT NULL PRIMARY KEY CHECK (projection_name <> ''),
    position        bigint      NOT NULL CHECK (position >= 0),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
