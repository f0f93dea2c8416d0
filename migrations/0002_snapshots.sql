-- The latest snapshot of each aggregate that has one.
CREATE TABLE "snapshots" (
    bounded_context text        NOT NULL,
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    version         bigint      NOT NULL CHECK (version >= 0),
    schema_version  integer     NOT NULL,
    state           jsonb       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bounded_context, aggregate_type, aggregate_id)
);
