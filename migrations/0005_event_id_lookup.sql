-- Whether any of some event ids is stored: the duplicate check of appends
-- with ExpectedVersion::Any. It is a function (a SQL function with a SET clause is never
-- inlined, so its query is planned afresh at each append, with the table's
-- current size) because a plan cached by a prepared append while the table
-- was nearly empty would look ids up with a sequential scan for as long as
-- the connection lives, unless ANALYZE happens to invalidate it; and the
-- index is the only sensible way to look up a few ids, whatever the
-- statistics say.
CREATE FUNCTION "events_ids_stored"(ids uuid[]) RETURNS boolean
LANGUAGE sql STABLE
SET enable_seqscan = off
AS $$ SELECT EXISTS (SELECT 1 FROM "events" WHERE event_id = ANY(ids)) $$;
