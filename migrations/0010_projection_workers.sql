-- What operators' tools need before they rewind a projection: whether it
-- declares side effects (a replay would do them again), and when a worker
-- running the version last said so (every few seconds while it runs).
ALTER TABLE "events_projection_versions"
    ADD COLUMN side_effects   boolean     NOT NULL DEFAULT false,
    ADD COLUMN worker_seen_at timestamptz;
