-- Every statement the library runs, as named blocks loaded by sql/__init__.py.
-- Parameters are always $n placeholders; nothing is formatted into the text.

-- name: check_schema
-- Whether the migrations have created the table (NULL when they have not).
SELECT to_regclass('future_calls') IS NOT NULL AS present;

-- name: schedule
-- Store one call, due at $4 or else at the database's now() + $5, and wake the
-- dispatchers; each keeps only the earliest due time it hears of. The NOTIFY payload is
-- seconds until due. $6 and $7 are the call's delivery policy (max_attempts,
-- retry_backoff).
WITH inserted AS (
    INSERT INTO future_calls (name, payload, identifier, due_at, max_attempts, retry_backoff)
    VALUES ($1, $2, $3, COALESCE($4::timestamptz, now() + $5::interval), $6, $7)
    RETURNING id, due_at
)
SELECT id, pg_notify('future_calls', extract(epoch FROM due_at - clock_timestamp())::text)
FROM inserted;

-- name: schedule_many
-- Store a batch in one statement (arrays, one element per call, in order) and send one
-- NOTIFY for its earliest due time. Identity values follow the order of the input,
-- so the ids come back in that order.
WITH inserted AS (
    INSERT INTO future_calls (name, payload, identifier, due_at, max_attempts, retry_backoff)
    SELECT t.name, t.payload::json, t.identifier, COALESCE(t.at, now() + t.delay),
           t.max_attempts, t.retry_backoff
    FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::interval[],
                $6::integer[], $7::interval[])
         AS t(name, payload, identifier, at, delay, max_attempts, retry_backoff)
    RETURNING id, due_at
)
SELECT array_agg(id ORDER BY id) AS ids,
       pg_notify('future_calls', extract(epoch FROM min(due_at) - clock_timestamp())::text)
FROM inserted;

-- name: lock_identifier
-- Schedule-once: one transaction at a time per identifier, until it ends.
SELECT pg_advisory_xact_lock($1::integer, hashtext($2));

-- name: pending_one_off
-- The pending one-off call with this identifier that if_exists="skip" keeps.
SELECT id FROM future_calls
WHERE identifier = $1 AND state = 'scheduled' AND cron IS NULL AND every IS NULL
ORDER BY due_at, id
LIMIT 1;

-- name: cancel_one_offs
-- What if_exists="replace" replaces: the pending one-off calls with this identifier.
DELETE FROM future_calls
WHERE identifier = $1 AND state = 'scheduled' AND cron IS NULL AND every IS NULL;

-- name: cancel
-- Remove every pending call with this identifier; running and parked calls stay.
DELETE FROM future_calls WHERE identifier = $1 AND state = 'scheduled';

-- name: register_worker
-- A fresh worker number, locked for as long as the dispatcher's connection lives.
-- The lock is what tells every other dispatcher that this worker is alive.
WITH worker AS (SELECT nextval('future_calls_worker_seq')::integer AS id)
SELECT id, pg_try_advisory_lock($1::integer, id) AS locked, pg_backend_pid() AS pid
FROM worker;

-- name: relock_worker
-- After a reconnect, take back the same worker number if nobody swept it yet.
SELECT pg_try_advisory_lock($1::integer, $2::integer) AS locked, pg_backend_pid() AS pid;

-- name: tune_dispatcher_session
-- Plan the dispatcher's statements once per connection (docs/performance.md).
SET plan_cache_mode = force_generic_plan;

-- name: backend_pid
-- The server process this connection's statements run in.
SELECT pg_backend_pid();

-- name: check_session
-- Is this still the server session that took the lock? Behind a transaction-pooling
-- proxy the next statement may run in another session, where the lock is not held.
SELECT pg_backend_pid() AS pid, EXISTS (
    SELECT 1 FROM pg_locks
    WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted
      AND classid::bigint = $1 AND objid::bigint = $2 AND objsubid = 2) AS holds_lock;

-- name: claim
-- The dispatcher's one statement per turn. First it records worker $2's finished calls:
-- done ones ($4 ids, $5 attempts) leave the table; the others ($6 ids, $7 attempts,
-- $8 next states, $9 errors) are parked, or rescheduled for another attempt after the
-- call's backoff (doubling, with jitter). Owner and attempt number fence these writes:
-- an outcome of a run whose row was swept, or claimed again since, matches nothing.
-- Then it claims up to $1 one-off calls due by now() + $3 (zero but in run_due's time
-- travel), oldest first; SKIP LOCKED lets many dispatchers claim at the same instant
-- without waiting on or sharing a row. A last row (id NULL) carries the seconds until
-- the next call due after that, computed with the same now() so that no call falls
-- between "due now" and "due later", and whether a recurring chain is due.
WITH done AS (
    DELETE FROM future_calls AS c
    USING unnest($4::bigint[], $5::integer[]) AS d(id, attempts)
    WHERE c.id = d.id AND c.attempts = d.attempts AND c.owner = $2 AND c.state = 'running'
), parked AS (
    UPDATE future_calls AS c
    SET state = p.state, last_error = p.error, owner = NULL,
        finished_at = CASE WHEN p.state = 'scheduled' THEN NULL ELSE now() END,
        due_at = CASE WHEN p.state = 'scheduled'
                      THEN now() + c.retry_backoff * power(2, least(c.attempts - 1, 16))
                                   * (0.75 + random() * 0.5)
                      ELSE c.due_at END
    FROM unnest($6::bigint[], $7::integer[], $8::text[], $9::text[])
         AS p(id, attempts, state, error)
    WHERE c.id = p.id AND c.attempts = p.attempts AND c.owner = $2 AND c.state = 'running'
), due AS (
    SELECT id FROM future_calls
    WHERE state = 'scheduled' AND cron IS NULL AND every IS NULL
      AND due_at <= now() + $3::interval
    ORDER BY due_at, id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
), claimed AS (
    -- id = ANY(array) keeps the primary-key lookup in the generic plan, which the
    -- dispatcher's connection always uses (no planning per turn).
    UPDATE future_calls AS c
    SET state = 'running', owner = $2, attempts = c.attempts + 1, started_at = now()
    WHERE c.id = ANY (ARRAY(SELECT id FROM due))
    RETURNING c.id, c.name, c.payload, c.identifier, c.due_at, c.attempts, c.max_attempts
)
SELECT id, name, payload, identifier, due_at, attempts, max_attempts,
       NULL::float8 AS next_due_in, NULL::boolean AS chain_due
FROM claimed
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, next_due_in, chain_due
FROM (SELECT count(*) < $1 AS drained FROM claimed) AS turn
-- Only a turn that took fewer calls than it could asks what comes next: a full one
-- comes straight back for more.
LEFT JOIN LATERAL (
    SELECT extract(epoch FROM least(
               (SELECT min(due_at) FROM future_calls
                WHERE state = 'scheduled' AND cron IS NULL AND every IS NULL
                  AND due_at > now() + $3::interval),
               (SELECT min(due_at) FROM future_calls
                WHERE (cron IS NOT NULL OR every IS NOT NULL) AND due_at > now() + $3::interval)
           ) - clock_timestamp() - $3::interval)::float8 AS next_due_in,
           EXISTS (SELECT 1 FROM future_calls
                   WHERE (cron IS NOT NULL OR every IS NOT NULL)
                     AND due_at <= now() + $3::interval) AS chain_due
    WHERE turn.drained
) AS next ON true;

-- name: lock_due_chains
-- In the claiming transaction: recurring chains due by now() + $2, at most $1, locked.
SELECT id, due_at, cron, every, timezone, now() AS db_now
FROM future_calls
WHERE (cron IS NOT NULL OR every IS NOT NULL) AND due_at <= now() + $2::interval
ORDER BY due_at, id
LIMIT $1
FOR UPDATE SKIP LOCKED;

-- name: materialize_chains
-- In the same transaction: move each chain ($1 ids) to its next occurrence ($2) and
-- insert the current occurrence as a one-off call, claimed like any other, in due order.
-- A crash rolls both back: the chain is never lost and never doubled.
WITH chain AS (
    SELECT * FROM unnest($1::bigint[], $2::timestamptz[]) AS t(id, next_due)
), old AS (
    SELECT c.id, c.due_at FROM future_calls AS c JOIN chain ON chain.id = c.id
), advanced AS (
    UPDATE future_calls AS c
    SET due_at = chain.next_due
    FROM chain
    WHERE c.id = chain.id
    RETURNING c.id, c.name, c.payload, c.identifier, c.max_attempts, c.retry_backoff
)
INSERT INTO future_calls (name, payload, identifier, due_at, max_attempts, retry_backoff)
SELECT a.name, a.payload, a.identifier, old.due_at, a.max_attempts, a.retry_backoff
FROM advanced AS a JOIN old ON old.id = a.id;

-- name: schedule_recurring
-- Create the chain for identifier $3, or update the one there is (race-free through the
-- unique index): name, payload and policy follow the latest call; the next due time is
-- kept unless the schedule itself changed.
WITH upserted AS (
    INSERT INTO future_calls AS c (name, payload, identifier, due_at, max_attempts,
                                   retry_backoff, cron, every, timezone)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
    ON CONFLICT (identifier) WHERE (cron IS NOT NULL OR every IS NOT NULL)
    DO UPDATE SET
        name = EXCLUDED.name, payload = EXCLUDED.payload,
        max_attempts = EXCLUDED.max_attempts, retry_backoff = EXCLUDED.retry_backoff,
        due_at = CASE WHEN (c.cron, c.every, c.timezone)
                           IS NOT DISTINCT FROM (EXCLUDED.cron, EXCLUDED.every, EXCLUDED.timezone)
                      THEN c.due_at ELSE EXCLUDED.due_at END,
        cron = EXCLUDED.cron, every = EXCLUDED.every, timezone = EXCLUDED.timezone
    RETURNING id, due_at
)
SELECT id, pg_notify('future_calls', extract(epoch FROM due_at - clock_timestamp())::text)
FROM upserted;

-- name: still_owned
-- Which of these running calls (ids $2, attempts $3) are still worker $1's, after a
-- reconnect: the others were swept meanwhile, and their local runs must stop.
SELECT c.id FROM future_calls AS c
JOIN unnest($2::bigint[], $3::integer[]) AS r(id, attempts) ON r.id = c.id
WHERE c.attempts = r.attempts AND c.owner = $1 AND c.state = 'running';

-- name: requeue_untracked
-- After a reconnect that took back worker $1's number: rows it claimed but whose claim
-- never reached this process (the reply was lost) go back in line; they never started.
UPDATE future_calls
SET state = 'scheduled', owner = NULL, attempts = attempts - 1, started_at = NULL
WHERE owner = $1 AND state = 'running' AND id <> ALL($2::bigint[])
RETURNING id, name;

-- name: sweep
-- Calls whose worker's advisory lock is gone: PostgreSQL released it when that worker's
-- connection ended. Each is rescheduled if it has attempts left, else parked (as
-- 'interrupted' under the default at-most-once policy, 'failed' once retries ran out).
-- Right after a server restart every lock is gone, live workers' too: calls claimed
-- before the restart wait $2 seconds for their workers to reconnect and take their
-- locks back. Also returns the seconds until the next pending call, so an idle tick
-- costs one statement.
WITH dead AS (
    UPDATE future_calls AS c
    SET state = CASE WHEN c.attempts < c.max_attempts THEN 'scheduled'
                     WHEN c.max_attempts > 1 THEN 'failed'
                     ELSE 'interrupted' END,
        due_at = CASE WHEN c.attempts < c.max_attempts
                      THEN now() + c.retry_backoff * power(2, least(c.attempts - 1, 16))
                                   * (0.75 + random() * 0.5)
                      ELSE c.due_at END,
        finished_at = CASE WHEN c.attempts < c.max_attempts THEN NULL ELSE now() END,
        owner = NULL,
        last_error = 'interrupted: its worker''s database session ended while it ran'
    WHERE c.state = 'running'
      AND (c.started_at > pg_postmaster_start_time()
           OR pg_postmaster_start_time() < now() - make_interval(secs => $2))
      AND NOT EXISTS (
          SELECT 1 FROM pg_locks AS l
          WHERE l.locktype = 'advisory'
            AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
            AND l.classid::bigint = $1 AND l.objid::bigint = c.owner
            AND l.objsubid = 2 AND l.granted)
    RETURNING c.id, c.name, c.state
)
SELECT (SELECT coalesce(array_agg(id ORDER BY id), '{}') FROM dead) AS dead_ids,
       (SELECT coalesce(array_agg(name ORDER BY id), '{}') FROM dead) AS dead_names,
       (SELECT coalesce(array_agg(state ORDER BY id), '{}') FROM dead) AS dead_states,
       extract(epoch FROM least(
           (SELECT min(due_at) FROM future_calls
            WHERE state = 'scheduled' AND cron IS NULL AND every IS NULL),
           (SELECT min(due_at) FROM future_calls WHERE cron IS NOT NULL OR every IS NOT NULL)
       ) - clock_timestamp())::float8 AS next_due_in;

-- name: list
-- Calls matching the optional filters, by due time.
SELECT id, name, state, due_at, identifier, attempts, max_attempts, last_error, payload,
       created_at, started_at, finished_at, cron, every, timezone
FROM future_calls
WHERE ($1::text IS NULL OR identifier = $1)
  AND ($2::text IS NULL OR name = $2)
  AND ($3::text IS NULL OR state = $3)
ORDER BY due_at, id
LIMIT $4;

-- name: get
SELECT id, name, state, due_at, identifier, attempts, max_attempts, last_error, payload,
       created_at, started_at, finished_at, cron, every, timezone
FROM future_calls WHERE id = $1;

-- name: reschedule
-- Put a parked ('failed' or 'interrupted') call back in line, with as many attempts
-- again as it had. attempts keeps counting: it also fences stale outcome writes.
WITH moved AS (
    UPDATE future_calls
    SET state = 'scheduled', max_attempts = attempts + max_attempts,
        last_error = NULL, finished_at = NULL,
        due_at = COALESCE($2::timestamptz, now() + $3::interval, now())
    WHERE id = $1 AND state IN ('failed', 'interrupted')
    RETURNING id, due_at
)
SELECT id, pg_notify('future_calls', extract(epoch FROM due_at - clock_timestamp())::text)
FROM moved;

-- name: delete
-- Remove a call that is not running; returns its id if it was removed.
DELETE FROM future_calls WHERE id = $1 AND state <> 'running' RETURNING id;
