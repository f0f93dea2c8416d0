-- The connections listening to the appends' notifications. Appends
-- notify only while someone listens: a notifying transaction takes a
-- database-wide lock to commit, which writers should not pay for nothing.
-- A listener refreshes its row; rows not seen for 30 seconds are ignored.
CREATE TABLE "events_listeners" (
    channel text        NOT NULL,
    pid     integer     NOT NULL,
    seen    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, pid)
);
