-- Locks an aggregate's head row until the caller's transaction ends, then
-- reads its events from version from_version on: the retry of a contended
-- command, in one round trip. The read must see what the previous holder of
-- the lock committed while this call waited for it, which one statement
-- cannot do (its snapshot is taken before the wait): each statement of a
-- VOLATILE function takes a snapshot of its own in a READ COMMITTED
-- transaction, so the read, after the lock, sees it. (Under REPEATABLE READ
-- the lock fails with a serialization error when the holder moved the head.)
CREATE FUNCTION "events_locked_tail"(
    context text, kind text, id text, from_version bigint
) RETURNS TABLE (aggregate_version bigint, event_type text, event_version integer, payload jsonb)
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    PERFORM 1 FROM "aggregate_heads" h
    WHERE h.bounded_context = context AND h.aggregate_type = kind AND h.aggregate_id = id
    FOR UPDATE;
    RETURN QUERY
    SELECT e.aggregate_version, e.event_type, e.event_version, e.payload
    FROM "events" e
    WHERE e.bounded_context = context AND e.aggregate_type = kind AND e.aggregate_id = id
      AND e.aggregate_version >= from_version
    ORDER BY e.aggregate_version;
END
$$;
