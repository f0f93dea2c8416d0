-- Events a projection skipped because its handler failed on them.
CREATE TABLE "projection_failures" (
    projection_name text        NOT NULL,
    global_position bigint      NOT NULL,
    event_id        uuid        NOT NULL,
    event_type      text        NOT NULL,
    error           text        NOT NULL,
    failed_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection_name, global_position)
);
