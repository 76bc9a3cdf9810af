-- Every statement the library runs, as named blocks loaded by sql/__init__.py.
-- Parameters are always $n placeholders; nothing is formatted into the text.

-- name: check_schema
-- Whether the migrations have created the table (NULL when they have not).
SELECT to_regclass('future_calls') IS NOT NULL AS present;

-- name: schedule
-- Store one call, due at $4 or else at the database's now() + $5, and wake the
-- dispatchers when it falls due within their poll interval ($6, seconds); calls due
-- later are found by the periodic scan. The NOTIFY payload is seconds until due.
WITH inserted AS (
    INSERT INTO future_calls (name, payload, identifier, due_at)
    VALUES ($1, $2, $3, COALESCE($4::timestamptz, now() + $5::interval))
    RETURNING id, due_at
)
SELECT id,
       CASE WHEN due_at < now() + make_interval(secs => $6)
            THEN pg_notify('future_calls', extract(epoch FROM due_at - clock_timestamp())::text)
       END AS notified
FROM inserted;

-- name: cancel
-- Remove every pending call with this identifier; running and parked calls stay.
DELETE FROM future_calls WHERE identifier = $1 AND state = 'scheduled';

-- name: register_worker
-- A fresh worker number, locked for as long as the dispatcher's connection lives.
-- The lock is what tells every other dispatcher that this worker is alive.
WITH worker AS (SELECT nextval('future_calls_worker_seq')::integer AS id)
SELECT id, pg_try_advisory_lock($1::integer, id) AS locked FROM worker;

-- name: relock_worker
-- After a reconnect, take back the same worker number if nobody swept it yet.
SELECT pg_try_advisory_lock($1::integer, $2::integer) AS locked;

-- name: claim
-- Claim up to $1 due calls for worker $2, oldest first. SKIP LOCKED lets many
-- dispatchers claim at the same instant without waiting on or sharing a row.
WITH due AS (
    SELECT id FROM future_calls
    WHERE state = 'scheduled' AND due_at <= now()
    ORDER BY due_at, id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE future_calls AS c
SET state = 'running', owner = $2, attempts = c.attempts + 1, started_at = now()
FROM due
WHERE c.id = due.id
RETURNING c.id, c.name, c.payload, c.identifier, c.due_at, c.attempts;

-- name: finish
-- Record a batch of outcomes of worker $1: done calls ($2) leave the table,
-- parked ones ($3 ids, $4 states, $5 errors) keep their row with the reason.
-- The owner check makes a worker whose calls were swept unable to touch them.
WITH done AS (
    DELETE FROM future_calls
    WHERE id = ANY($2::bigint[]) AND owner = $1 AND state = 'running'
    RETURNING id
), parked AS (
    UPDATE future_calls AS c
    SET state = p.state, last_error = p.error, owner = NULL, finished_at = now()
    FROM unnest($3::bigint[], $4::text[], $5::text[]) AS p(id, state, error)
    WHERE c.id = p.id AND c.owner = $1 AND c.state = 'running'
    RETURNING c.id
)
SELECT (SELECT count(*) FROM done) + (SELECT count(*) FROM parked) AS recorded;

-- name: next_due
-- Seconds until the next pending call falls due (negative: overdue), NULL if none.
-- With $1 true, calls already due are ignored: they are locked by another claimer.
SELECT extract(epoch FROM min(due_at) - clock_timestamp())::float8 AS next_due_in
FROM future_calls
WHERE state = 'scheduled' AND (NOT $1::boolean OR due_at > now());

-- name: sweep
-- Park as interrupted every running call whose worker's advisory lock is gone:
-- PostgreSQL released it when that worker's connection ended. Also returns the
-- seconds until the next pending call, so an idle tick costs one statement.
WITH dead AS (
    UPDATE future_calls AS c
    SET state = 'interrupted', owner = NULL, finished_at = now(),
        last_error = 'interrupted: its worker''s database session ended while it ran'
    WHERE c.state = 'running'
      AND NOT EXISTS (
          SELECT 1 FROM pg_locks AS l
          WHERE l.locktype = 'advisory'
            AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
            AND l.classid::bigint = $1 AND l.objid::bigint = c.owner
            AND l.objsubid = 2 AND l.granted)
    RETURNING c.id, c.name
)
SELECT (SELECT coalesce(array_agg(id ORDER BY id), '{}') FROM dead) AS dead_ids,
       (SELECT coalesce(array_agg(name ORDER BY id), '{}') FROM dead) AS dead_names,
       (SELECT extract(epoch FROM min(due_at) - clock_timestamp())::float8
        FROM future_calls WHERE state = 'scheduled') AS next_due_in;
