-- The versions of each projection: the one readers are served from
-- ('active'), new ones catching up beside it ('catching_up'), and old ones
-- replaced but not dropped yet ('superseded'); version 0 is each
-- projection's lock row, which changes to the records are serialised on.
-- replay_until is the last position the version handles as a replay;
-- partitions is the partition count of its checkpoints, so that they can
-- be dropped with it.
CREATE TABLE "events_projection_versions" (
    projection_name text        NOT NULL,
    version         bigint      NOT NULL,
    state           text        NOT NULL,
    replay_until    bigint      NOT NULL,
    partitions      bigint      NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection_name, version)
);
