-- Every statement the library runs, as named blocks loaded by sql/__init__.py.
-- Parameters are always $n placeholders; nothing is formatted into the text.

-- name: check_schema
-- Whether the migrations have created the table (NULL when they have not).
SELECT to_regclass('future_calls') IS NOT NULL AS present;

-- name: schedule
-- Store one call, due at $4 or else at the database's now() + $5, and wake the
-- dispatchers if it falls due within $10 (two poll intervals): a call due later is found
-- by their next tick anyway, and every NOTIFY takes a database-wide lock at commit.
-- Each dispatcher keeps only the earliest due time it hears of. The payload is the due
-- time in seconds since the epoch, absolute: it stays right however long the caller's
-- transaction takes to commit. $6 and $7 are the call's delivery policy (max_attempts,
-- retry_backoff), $8 its priority, $9 whether its name has a fleet_limit (fleet_slot 0),
-- $11 the trace context it was scheduled in (JSON, or NULL).
WITH inserted AS (
    INSERT INTO future_calls (name, payload, identifier, due_at, max_attempts, retry_backoff,
                              priority, fleet_slot, trace_context)
    VALUES ($1, $2, $3, COALESCE($4::timestamptz, now() + $5::interval), $6, $7, $8,
            CASE WHEN $9::boolean THEN 0 END, $11::jsonb)
    RETURNING id, due_at
)
SELECT id, CASE WHEN due_at <= now() + $10::interval
                THEN pg_notify('future_calls', extract(epoch FROM due_at)::float8::text) END
FROM inserted;

-- name: schedule_many
-- Store a batch in one statement (arrays, one element per call, in order) and send one
-- NOTIFY for its earliest due time, if that is within $10. Identity values follow the
-- order of the input, so the ids come back in that order. $11: the batch's trace context.
WITH inserted AS (
    INSERT INTO future_calls (name, payload, identifier, due_at, max_attempts, retry_backoff,
                              priority, fleet_slot, trace_context)
    SELECT t.name, t.payload::json, t.identifier, COALESCE(t.at, now() + t.delay),
           t.max_attempts, t.retry_backoff, t.priority, CASE WHEN t.limited THEN 0 END,
           $11::jsonb
    FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::interval[],
                $6::integer[], $7::interval[], $8::integer[], $9::boolean[])
         AS t(name, payload, identifier, at, delay, max_attempts, retry_backoff, priority,
              limited)
    RETURNING id, due_at
)
SELECT array_agg(id ORDER BY id) AS ids,
       CASE WHEN min(due_at) <= now() + $10::interval
            THEN pg_notify('future_calls', extract(epoch FROM min(due_at))::float8::text) END
FROM inserted;

-- name: lock_identifier
-- Schedule-once: one transaction at a time per identifier, until it ends. The key is
-- one bigint (a lock space apart from the workers' two-key locks): the lock namespace
-- $1, by default the table's oid, unique in the database, then the identifier's hash.
SELECT pg_advisory_xact_lock(
    (coalesce($1::bigint, 'future_calls'::regclass::oid::bigint) << 32)
    | (hashtext($2)::bigint & 4294967295));

-- name: lock_fleet_names
-- Before a claim that may start calls of names with a fleet_limit ($2), in the claim's
-- transaction: one such claim at a time per name across the fleet, so that the claim's
-- snapshot, taken after these locks, sees every slot that earlier claims took. In the
-- schedule-once locks' key space ($1 the namespace), in one order, so claims never
-- deadlock.
SELECT pg_advisory_xact_lock(k.key)
FROM (SELECT DISTINCT (coalesce($1::bigint, 'future_calls'::regclass::oid::bigint) << 32)
                      | (hashtext('fleet_limit ' || n)::bigint & 4294967295) AS key
      FROM unnest($2::text[]) AS n
      ORDER BY key) AS k;

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

-- name: lock_chain
-- Cancel, first statement: lock the identifier's recurring chain. A dispatcher that is
-- turning its slot into a call holds the lock until it commits; the DELETE that follows
-- runs after, with a snapshot that sees that call.
SELECT id FROM future_calls
WHERE identifier = $1 AND (cron IS NOT NULL OR every IS NOT NULL)
FOR UPDATE;

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
-- After a reconnect, take back worker number $2. When the lock is held, also say by
-- which server process: the old session of this very worker (half-open, not yet noticed
-- by the server), or a sweep that holds it for the length of its transaction.
SELECT pg_try_advisory_lock($1::integer, $2::integer) AS locked, pg_backend_pid() AS pid,
       (SELECT l.pid FROM pg_locks AS l
        WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
          AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND l.classid = ($1::integer::bigint & 4294967295)::oid AND l.objid = ($2::integer::bigint)::oid
          AND l.pid <> pg_backend_pid()
        LIMIT 1) AS holder;

-- name: terminate_backend
-- End this worker's own earlier server session $1, found still holding worker number $3
-- after its connection went dead on our side (a half-open TCP connection).
SELECT pg_terminate_backend(l.pid)
FROM pg_locks AS l
WHERE l.pid = $1 AND l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid = ($2::integer::bigint & 4294967295)::oid AND l.objid = ($3::integer::bigint)::oid;

-- name: unlock_worker
-- Let go of an adopted worker number whose calls have all been recorded.
SELECT pg_advisory_unlock($1::integer, $2::integer);

-- name: announce_worker
-- Say which call names worker $1 runs (a fleet may split names across pools, and calls
-- of a name no live worker runs are parked after unknown_name_grace), and from where.
INSERT INTO future_calls_workers (id, names, host, pid)
VALUES ($1, $2, $3, $4)
ON CONFLICT (id) DO UPDATE
SET names = EXCLUDED.names, host = EXCLUDED.host, pid = EXCLUDED.pid, missing_since = NULL;

-- name: retire_worker
-- A dispatcher stopping: its row goes (its lock goes with the connection, next), unless
-- calls it could not record still name it as their owner: then the sweep needs the row.
DELETE FROM future_calls_workers AS w
WHERE w.id = $1
  AND NOT EXISTS (SELECT 1 FROM future_calls WHERE owner = $1 AND state = 'running');

-- name: table_namespace
-- The table's oid as a signed 32-bit number: the first key of the workers' advisory
-- locks, unique to this table in the database (locks are per database).
SELECT (('future_calls'::regclass::oid::bigint + 2147483648) % 4294967296
        - 2147483648)::integer AS namespace,
       extract(epoch FROM clock_timestamp())::float8 AS db_epoch;

-- name: tune_dispatcher_session
-- Plan the dispatcher's statements once per connection (docs/performance.md), and let
-- the server notice a dead client within about a minute instead of two hours.
-- Every ORDER BY of the table in them is meant to walk an index in order, and must not
-- hang on statistics: autovacuum's analyse, run while the queue is empty, records no
-- live rows, and a claim planned on that once read the whole next burst through a bitmap
-- and sorted it to take ten (20,000 calls drained at a fifth of the rate). With sorts
-- disabled the planner sorts only what no index can order (a batch's ten rows). Nor
-- must a statement read the whole table: planned once on an empty one (a new install, a
-- queue emptied by TRUNCATE), where that is cheapest, the claim kept doing it for every
-- batch it recorded once a burst came, 7,200 pages a claim for 200,000 calls, until an
-- analyse replanned it. With sequential scans disabled the planner takes an index
-- wherever one serves. JIT never pays for statements of a millisecond, and the cost of a
-- disabled plan node would trigger it.
SET plan_cache_mode = force_generic_plan;
SET enable_sort = off;
SET enable_seqscan = off;
SET jit = off;
SET tcp_keepalives_idle = 15;
SET tcp_keepalives_interval = 5;
SET tcp_keepalives_count = 3;

-- name: tune_pool_reads
-- For the rest of one transaction of the scheduling pool (SET LOCAL: a transaction
-- pooler's next client never sees it), plan as the dispatcher's session does: the
-- gauges, the dashboard's reads and maintenance stop after a few rows of an index walked
-- in order, and must not read and sort every matching row on statistics of an empty queue.
SET LOCAL enable_sort = off;
SET LOCAL jit = off;

-- name: backend_pid
-- The server process this connection's statements run in.
SELECT pg_backend_pid();

-- name: check_session
-- Is this still the server session that took the lock? Behind a transaction-pooling
-- proxy the next statement may run in another session, where the lock is not held.
SELECT pg_backend_pid() AS pid, EXISTS (
    SELECT 1 FROM pg_locks
    WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted
      AND classid = ($1::integer::bigint & 4294967295)::oid AND objid = ($2::integer::bigint)::oid
      AND objsubid = 2) AS holds_lock;

-- name: claim
-- Two statements in one text: "claim" leaves out the lines between "-- [fleet_limits"
-- and "-- fleet_limits]", "claim_fleet_limits" keeps them. A dispatcher without names
-- that have a fleet_limit runs the first: a quarter less work per turn.
-- The dispatcher's one statement per turn. First it records worker $2's finished calls:
-- done ones ($4 ids, $5 attempts) leave the table; the others ($6 ids, $7 attempts,
-- $8 next states, $9 errors, $13 delays in seconds) are parked, put back in line
-- untouched ('released': claimed but never started), rescheduled for another attempt
-- after the call's backoff (doubling, with jitter, bounded), or rescheduled $13 seconds on
-- without counting as an attempt ('snoozed': the call raised RetryLater). Owner and
-- attempt number fence these writes: an outcome of a run whose row was swept, or claimed
-- again since, matches nothing.
-- Then it claims up to $1 one-off calls due by now() + $3 (zero but in run_due's time
-- travel) of the names this worker runs but has not heard are paused: first those of
-- priority above 0 (highest first) of the names without a fleet limit ($10); then, for
-- each name with one ($14, limits $15; the caller holds their lock_fleet_names locks), as
-- many as it has free slots, in priority then due order; then priority 0 calls of $10,
-- oldest first, from the frontier ($11, $12). SKIP LOCKED lets many dispatchers claim at the
-- same instant without waiting on or sharing a row. A last row (id NULL) carries the
-- seconds until the next call due after that (a retry scheduled by this very statement
-- included: the look-ahead's snapshot cannot see it), computed with the same now() so
-- that no call falls between "due now" and "due later", whether a recurring chain is
-- due, whether a due call of the names this worker claims without a slot was skipped
-- (another transaction held its row: no notification will announce it once that ends),
-- and the earliest due time of the frontier scan's batch: the next frontier. A retry, a
-- snoozed run or a freed slot of a limited name wakes the other dispatchers.
-- Every value returned decodes whatever a row holds (an infinite due time included).
WITH done AS (
    -- Rows are found by primary key (id = ANY), never through the index of running rows:
    -- under a long transaction elsewhere it holds a dead entry for every call ever run,
    -- and comparing with IS NOT DISTINCT FROM keeps the planner from walking them.
    DELETE FROM future_calls AS c
    USING unnest($4::bigint[], $5::integer[]) AS d(id, attempts)
    WHERE c.id = ANY ($4::bigint[]) AND c.id = d.id AND c.attempts = d.attempts
      AND c.owner IS NOT DISTINCT FROM $2 AND c.state IS NOT DISTINCT FROM 'running'
    RETURNING c.name
), parked AS (
    UPDATE future_calls AS c
    SET state = CASE WHEN p.state IN ('released', 'snoozed') THEN 'scheduled' ELSE p.state END,
        last_error = CASE WHEN p.state IN ('released', 'snoozed') THEN c.last_error
                          ELSE p.error END,
        owner = NULL,
        fleet_slot = CASE WHEN c.fleet_slot IS NOT NULL THEN 0 END,
        attempts = CASE WHEN p.state = 'released' THEN c.attempts - 1 ELSE c.attempts END,
        max_attempts = CASE WHEN p.state = 'snoozed' AND c.max_attempts < 2147483647
                            THEN c.max_attempts + 1 ELSE c.max_attempts END,
        snoozes = CASE WHEN p.state = 'snoozed' THEN c.snoozes + 1 ELSE c.snoozes END,
        started_at = CASE WHEN p.state = 'released' THEN NULL ELSE c.started_at END,
        finished_at = CASE WHEN p.state IN ('scheduled', 'released', 'snoozed') THEN NULL
                           ELSE now() END,
        due_at = CASE WHEN p.state = 'scheduled'
                      THEN now() + least(c.retry_backoff, interval '1 day')
                                   * power(2, least(greatest(c.attempts, 1), 17) - 1)
                                   * (0.75 + random() * 0.5)
                      WHEN p.state = 'snoozed' THEN now() + make_interval(secs => p.delay)
                      ELSE c.due_at END
    FROM unnest($6::bigint[], $7::integer[], $8::text[], $9::text[], $13::float8[])
         AS p(id, attempts, state, error, delay)
    WHERE c.id = ANY ($6::bigint[]) AND c.id = p.id AND c.attempts = p.attempts
      AND c.owner IS NOT DISTINCT FROM $2 AND c.state IS NOT DISTINCT FROM 'running'
    RETURNING c.name, c.due_at, p.state
), woken AS (
    SELECT min(w.due_at) AS due_at FROM (
        SELECT due_at FROM parked WHERE state IN ('scheduled', 'released', 'snoozed')
        -- [fleet_limits
        UNION ALL
        SELECT now() FROM parked WHERE name = ANY ($14::text[])
        UNION ALL
        SELECT now() FROM done WHERE name = ANY ($14::text[])
        -- fleet_limits]
    ) AS w
    HAVING count(*) > 0
), retried AS (
    SELECT pg_notify('future_calls', extract(epoch FROM due_at)::float8::text) AS sent, due_at
    FROM woken
), urgent AS (
    SELECT id FROM future_calls
    WHERE state = 'scheduled' AND cron IS NULL AND every IS NULL AND priority > 0
      AND due_at <= now() + $3::interval AND name = ANY ($10::text[])
    ORDER BY priority DESC, due_at, id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
-- [fleet_limits
), limited AS (
    -- A slot is free when no running call of the name holds it (the unique index on
    -- (name, fleet_slot) of running calls makes a second holder impossible). Slots of
    -- calls this very statement records count as taken: they are free from the next turn.
    SELECT l.name, ARRAY(
               SELECT s FROM generate_series(1, l.cap) AS s
               EXCEPT
               SELECT r.fleet_slot FROM future_calls AS r
               WHERE r.state = 'running' AND r.name = l.name AND r.fleet_slot > 0
               ORDER BY 1) AS free
    FROM unnest($14::text[], $15::integer[]) AS l(name, cap)
), limited_due AS (
    SELECT ranked.id, ranked.free[ranked.n] AS slot FROM (
        SELECT d.id, d.priority, d.due_at, l.free,
               row_number() OVER (PARTITION BY l.name
                                  ORDER BY d.priority DESC, d.due_at, d.id) AS n
        FROM limited AS l
        CROSS JOIN LATERAL (
            SELECT id, priority, due_at FROM future_calls
            WHERE state = 'scheduled' AND cron IS NULL AND every IS NULL AND name = l.name
              AND fleet_slot IS NOT NULL AND due_at <= now() + $3::interval
            ORDER BY priority DESC, due_at, id
            LIMIT least(cardinality(l.free), $1)
            FOR UPDATE SKIP LOCKED
        ) AS d
    ) AS ranked
    ORDER BY ranked.priority DESC, ranked.due_at, ranked.id
    LIMIT greatest($1 - (SELECT count(*) FROM urgent), 0)
-- fleet_limits]
), due AS (
    -- The index scan starts at ($11, $12), the frontier: the earliest (due time, id) of
    -- this worker's previous batch (NULL: from the start). Before it lie only the dead
    -- index entries of calls already claimed, which a long transaction elsewhere keeps
    -- from vacuum, and calls this scan does not take (priority above 0, paused names);
    -- a call that falls due behind it lowers it (NOTIFY), as does resuming a name, and
    -- maintenance looks behind it now and then.
    SELECT id FROM future_calls
    WHERE state = 'scheduled' AND cron IS NULL AND every IS NULL AND priority = 0
      AND due_at <= now() + $3::interval AND name = ANY ($10::text[])
      AND (due_at, id) >= (coalesce($11::timestamptz, '-infinity'::timestamptz),
                           coalesce($12::bigint, 0))
    ORDER BY due_at, id
    LIMIT greatest($1 - (SELECT count(*) FROM urgent)
                    -- [fleet_limits
                    - (SELECT count(*) FROM limited_due)
                    -- fleet_limits]
                    , 0)
    FOR UPDATE SKIP LOCKED
), picked AS (
    SELECT id, NULL::integer AS slot FROM urgent
    -- [fleet_limits
    UNION ALL
    SELECT id, slot FROM limited_due
    -- fleet_limits]
    UNION ALL
    SELECT id, NULL::integer FROM due
), claimed AS (
    -- id = ANY(array) keeps the primary-key lookup in the generic plan, which the
    -- dispatcher's connection always uses (no planning per turn).
    UPDATE future_calls AS c
    SET state = 'running', owner = $2, started_at = now(),
        -- [fleet_limits
        fleet_slot = (SELECT p.slot FROM picked AS p WHERE p.id = c.id),
        -- fleet_limits]
        attempts = CASE WHEN c.attempts < 2147483647 THEN c.attempts + 1 ELSE c.attempts END
    WHERE c.id = ANY (ARRAY(SELECT id FROM picked))
    RETURNING c.id, c.name, c.payload, c.identifier,
              CASE WHEN isfinite(c.due_at) THEN c.due_at ELSE now() END AS due_at,
              c.attempts, c.max_attempts, c.snoozes, c.priority, c.started_at,
              c.trace_context::text AS trace_context, isfinite(c.due_at) AS finite,
              -- Taken by the frontier scan (not urgent, not under a fleet limit's slot).
              c.priority = 0 AND coalesce(c.fleet_slot, 0) = 0 AS from_due
)
SELECT id, name, payload, identifier, due_at, attempts, max_attempts, snoozes, priority,
       started_at, trace_context, NULL::float8 AS next_due_in, NULL::boolean AS chain_due,
       NULL::boolean AS skipped_due, NULL::timestamptz AS frontier, NULL::bigint AS frontier_id
FROM claimed
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, next_due_in,
       chain_due, skipped_due, first.due_at, first.id
FROM (SELECT count(*) < $1 AS drained,
             (SELECT min(due_at) FROM retried) AS retry_at
      FROM claimed) AS turn
LEFT JOIN LATERAL (
    SELECT due_at, id FROM claimed
    WHERE finite AND from_due
    ORDER BY due_at, id LIMIT 1
) AS first ON true
-- Only a turn that took fewer calls than it could asks what comes next: a full one
-- comes straight back for more.
-- The next due times are each the first row in its index's order, not min(): on
-- statistics that say the table is empty (an analyse while nothing was pending), min()
-- was planned as an aggregate over a bitmap of every call due later.
LEFT JOIN LATERAL (
    SELECT extract(epoch FROM least(
               turn.retry_at,
               (SELECT due_at FROM future_calls
                WHERE state = 'scheduled' AND cron IS NULL AND every IS NULL
                  AND due_at > now() + $3::interval
                  AND (name = ANY ($10::text[])
                       -- [fleet_limits
                       OR name = ANY ($14::text[])
                       -- fleet_limits]
                      )
                ORDER BY due_at, id LIMIT 1),
               (SELECT due_at FROM future_calls
                WHERE (cron IS NOT NULL OR every IS NOT NULL) AND state = 'scheduled'
                  AND due_at > now() + $3::interval
                ORDER BY due_at LIMIT 1)
           ))::float8 - extract(epoch FROM clock_timestamp() + $3::interval)::float8
           AS next_due_in,
           EXISTS (SELECT 1 FROM future_calls
                   WHERE (cron IS NOT NULL OR every IS NOT NULL) AND state = 'scheduled'
                     AND due_at <= now() + $3::interval) AS chain_due,
           -- What the urgent and frontier scans could have taken but skipped. This
           -- statement's snapshot still shows the calls it claimed as pending: not those.
           -- Each is the first such row in its scan's own index order: a plan free to
           -- read the table in any order (as EXISTS is) may, on statistics that say
           -- most rows are due, read every dead row a long transaction keeps.
           (SELECT id FROM future_calls
            WHERE state = 'scheduled' AND cron IS NULL AND every IS NULL AND priority > 0
              AND due_at <= now() + $3::interval AND name = ANY ($10::text[])
              AND id <> ALL (ARRAY(SELECT id FROM claimed))
            ORDER BY priority DESC, due_at, id
            LIMIT 1) IS NOT NULL
           OR (SELECT id FROM future_calls
               WHERE state = 'scheduled' AND cron IS NULL AND every IS NULL AND priority = 0
                 AND due_at <= now() + $3::interval AND name = ANY ($10::text[])
                 AND (due_at, id) >= (coalesce($11::timestamptz, '-infinity'::timestamptz),
                                      coalesce($12::bigint, 0))
                 AND id <> ALL (ARRAY(SELECT id FROM claimed))
               ORDER BY due_at, id
               LIMIT 1) IS NOT NULL AS skipped_due
    WHERE turn.drained
) AS next ON true;

-- name: lock_due_chains
-- In the claiming transaction: recurring chains due by now() + $2, at most $1, locked.
-- Values come as what always decodes (a hand-edited row may hold anything): the due
-- time NULL when infinite, the interval in seconds.
SELECT id, CASE WHEN isfinite(due_at) THEN due_at END AS due_at, cron,
       extract(epoch FROM every)::float8 AS every_seconds, timezone, now() AS db_now
FROM future_calls
WHERE (cron IS NOT NULL OR every IS NOT NULL) AND state = 'scheduled'
  AND due_at <= now() + $2::interval
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
    RETURNING c.id, c.name, c.payload, c.identifier, c.max_attempts, c.retry_backoff,
              c.priority, c.fleet_slot, c.trace_context
)
INSERT INTO future_calls (name, payload, identifier, due_at, max_attempts, retry_backoff,
                          priority, fleet_slot, trace_context)
SELECT a.name, a.payload, a.identifier, old.due_at, a.max_attempts, a.retry_backoff,
       a.priority, a.fleet_slot, a.trace_context
FROM advanced AS a JOIN old ON old.id = a.id;

-- name: park_chains
-- Chains ($1 ids) whose next slot cannot be computed ($2 why): parked as 'failed', once,
-- where list_future_calls and the CLI show them; the rest of the turn goes on.
UPDATE future_calls AS c
SET state = 'failed', finished_at = now(), last_error = t.error
FROM unnest($1::bigint[], $2::text[]) AS t(id, error)
WHERE c.id = t.id AND c.state = 'scheduled';

-- name: schedule_recurring
-- Create the chain for identifier $3, or update the one there is (race-free through the
-- unique index): name, payload and policy follow the latest call; the next due time is
-- kept unless the schedule itself changed, or the chain had been parked as failed.
WITH upserted AS (
    INSERT INTO future_calls AS c (name, payload, identifier, due_at, max_attempts,
                                   retry_backoff, cron, every, timezone, priority, fleet_slot,
                                   trace_context)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $11, CASE WHEN $12::boolean THEN 0 END,
            $13::jsonb)
    ON CONFLICT (identifier) WHERE (cron IS NOT NULL OR every IS NOT NULL)
    DO UPDATE SET
        name = EXCLUDED.name, payload = EXCLUDED.payload,
        max_attempts = EXCLUDED.max_attempts, retry_backoff = EXCLUDED.retry_backoff,
        priority = EXCLUDED.priority, fleet_slot = EXCLUDED.fleet_slot,
        trace_context = EXCLUDED.trace_context,
        due_at = CASE WHEN c.state = 'scheduled' AND (c.cron, c.every, c.timezone)
                           IS NOT DISTINCT FROM (EXCLUDED.cron, EXCLUDED.every, EXCLUDED.timezone)
                      THEN c.due_at ELSE EXCLUDED.due_at END,
        cron = EXCLUDED.cron, every = EXCLUDED.every, timezone = EXCLUDED.timezone,
        state = 'scheduled', last_error = NULL, finished_at = NULL
    RETURNING id, due_at
)
SELECT id, CASE WHEN due_at <= now() + $10::interval
                THEN pg_notify('future_calls', extract(epoch FROM due_at)::float8::text) END
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
-- Their due times lie behind every dispatcher's frontier: wake them.
WITH requeued AS (
    UPDATE future_calls
    SET state = 'scheduled', owner = NULL, attempts = attempts - 1, started_at = NULL,
        fleet_slot = CASE WHEN fleet_slot IS NOT NULL THEN 0 END
    WHERE owner = $1 AND state = 'running' AND id <> ALL($2::bigint[])
    RETURNING id, name, due_at
), woken AS (
    SELECT pg_notify('future_calls', extract(epoch FROM min(due_at))::float8::text)
    FROM requeued HAVING count(*) > 0
)
SELECT id, name, (SELECT count(*) FROM woken) AS woken FROM requeued;

-- name: sweep
-- The safety net, run by every dispatcher at every tick. A worker is alive while its
-- advisory lock (namespace $1, its number) is held; every number that may own calls has
-- a row in future_calls_workers (written before it claims anything). A number whose
-- lock is missing is first only noted (missing_since); it is judged dead only when a
-- later sweep still finds it missing $2 seconds on, so that a server restart, a failover
-- to a standby or one dropped connection, after which live workers take their locks
-- back, sweeps nothing. A dead worker's running calls are rescheduled if they have
-- attempts left, else parked (as 'interrupted' under the default at-most-once policy,
-- 'failed' once retries ran out); the sweep holds the dead number's lock for its
-- transaction, so the worker cannot take it back halfway. Also returns the paused names
-- (a dispatcher hears of pauses by NOTIFY; this is the safety net), and the seconds until
-- the next pending call at or after the caller's frontier ($3, $4), so an idle tick
-- costs one statement and walks no dead index entries before that frontier.
WITH live AS (
    SELECT l.objid::bigint::integer AS id FROM pg_locks AS l
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.classid = ($1::integer::bigint & 4294967295)::oid
), missing AS (
    SELECT id FROM future_calls_workers
    EXCEPT
    SELECT id FROM live
), noted AS (
    -- First sight of a missing number; one already noted is left as it is.
    UPDATE future_calls_workers SET missing_since = now()
    WHERE id IN (SELECT id FROM missing) AND missing_since IS NULL
), back AS (
    UPDATE future_calls_workers SET missing_since = NULL
    WHERE missing_since IS NOT NULL AND id IN (SELECT id FROM live)
), gone AS (
    -- Seen missing by an earlier sweep at least $2 seconds ago, and missing still. CASE
    -- fixes the order: a plan free to order the conditions took the lock of every
    -- number first, and the locks were then read back as live workers (live reads
    -- pg_locks when first needed), so a dead worker was never swept.
    SELECT w.id FROM future_calls_workers AS w
    WHERE CASE WHEN w.id IN (SELECT id FROM missing)
                    AND w.missing_since <= now() - make_interval(secs => $2::float8)
               THEN pg_try_advisory_xact_lock($1::integer, w.id)
               ELSE false END
), forgotten AS (
    DELETE FROM future_calls_workers WHERE id IN (SELECT id FROM gone)
), dead AS (
    UPDATE future_calls AS c
    SET state = CASE WHEN c.attempts < c.max_attempts THEN 'scheduled'
                     WHEN c.max_attempts > 1 THEN 'failed'
                     ELSE 'interrupted' END,
        due_at = CASE WHEN c.attempts < c.max_attempts
                      THEN now() + least(c.retry_backoff, interval '1 day')
                                   * power(2, least(greatest(c.attempts, 1), 17) - 1)
                                   * (0.75 + random() * 0.5)
                      ELSE c.due_at END,
        finished_at = CASE WHEN c.attempts < c.max_attempts THEN NULL ELSE now() END,
        owner = NULL,
        fleet_slot = CASE WHEN c.fleet_slot IS NOT NULL THEN 0 END,
        last_error = 'interrupted: its worker''s database session ended while it ran'
    -- = ANY(ARRAY(...)): with no dead worker (every tick but a few) the index of running
    -- rows is not entered at all; a semi-join could walk it whole, and under a long
    -- transaction elsewhere it keeps a dead entry for every call ever claimed.
    WHERE c.state = 'running' AND c.owner = ANY (ARRAY(SELECT id FROM gone))
    RETURNING c.id, c.name, c.state, c.due_at
), retried AS (
    -- Wake every dispatcher: the slots of limited names the dead worker held are free.
    SELECT pg_notify('future_calls', extract(epoch FROM now())::float8::text) AS sent,
           now() AS due_at
    FROM dead HAVING count(*) > 0
)
SELECT (SELECT coalesce(array_agg(id ORDER BY id), '{}') FROM dead) AS changed_ids,
       (SELECT coalesce(array_agg(name ORDER BY id), '{}') FROM dead) AS changed_names,
       (SELECT coalesce(array_agg(state ORDER BY id), '{}') FROM dead) AS changed_states,
       (SELECT coalesce(array_agg(id ORDER BY id), '{}') FROM missing
        WHERE id NOT IN (SELECT id FROM gone)) AS missing,
       (SELECT coalesce(array_agg(name), '{}') FROM future_calls_paused) AS paused,
       extract(epoch FROM least(
           (SELECT due_at FROM retried),
           -- Each the first row in its index's order (see the claim's look-ahead).
           (SELECT due_at FROM future_calls
            WHERE state = 'scheduled' AND cron IS NULL AND every IS NULL
              AND (due_at, id) >= (coalesce($3::timestamptz, '-infinity'::timestamptz),
                                   coalesce($4::bigint, 0))
            ORDER BY due_at, id LIMIT 1),
           (SELECT due_at FROM future_calls
            WHERE (cron IS NOT NULL OR every IS NOT NULL) AND state = 'scheduled'
            ORDER BY due_at LIMIT 1)
       ))::float8 - extract(epoch FROM clock_timestamp())::float8 AS next_due_in;

-- name: park_orphans
-- Maintenance, off the dispatch loop (it walks the old end of the due index, which a long
-- transaction elsewhere can fill with dead entries): pending one-off calls due for more
-- than $2 seconds whose name no live worker (lock namespace $1) registers are parked as
-- 'failed', at most $3 at a time.
WITH live AS (
    SELECT l.objid::bigint::integer AS id FROM pg_locks AS l
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.classid = ($1::integer::bigint & 4294967295)::oid
), live_names AS (
    SELECT DISTINCT unnest(w.names) AS name FROM future_calls_workers AS w
    WHERE w.id IN (SELECT id FROM live)
)
UPDATE future_calls AS c
SET state = 'failed', finished_at = now(),
    last_error = 'no live worker registers future calls named ' || quote_literal(c.name)
                 || ' (due for over ' || $2::float8::text || ' s: unknown_name_grace)'
WHERE c.id = ANY (ARRAY(
    SELECT id FROM future_calls
    WHERE state = 'scheduled' AND cron IS NULL AND every IS NULL
      AND due_at < now() - make_interval(secs => $2::float8)
      AND name NOT IN (SELECT name FROM live_names)
    ORDER BY due_at, id
    LIMIT $3
    FOR UPDATE SKIP LOCKED))
RETURNING c.id, c.name;

-- name: behind_frontier
-- Maintenance, off the dispatch loop: the earliest due call that the frontier scan of the
-- names $1 (those it claims, paused ones left out) takes (priority 0) before the frontier
-- ($2, $3) and at or after ($4, $5) (NULL: from the start of the index), if any: one a
-- notification never announced (a full claim skipped it while the worker that held it
-- rolled back, say); the dispatcher then lowers its frontier to it. Both ends bound the
-- index scan: under a long transaction elsewhere, what lies before the lower one is mostly
-- the dead entries of every call run since it began.
SELECT due_at, id FROM future_calls
WHERE state = 'scheduled' AND cron IS NULL AND every IS NULL AND priority = 0
  AND due_at <= now() AND name = ANY ($1::text[])
  AND (due_at, id) < ($2::timestamptz, $3::bigint)
  AND (due_at, id) >= (coalesce($4::timestamptz, '-infinity'::timestamptz),
                       coalesce($5::bigint, 0))
ORDER BY due_at, id
LIMIT 1;

-- name: list
-- Calls matching the optional filters, by due time.
SELECT id, name, state, due_at, identifier, attempts, max_attempts, last_error, payload,
       created_at, started_at, finished_at, cron, every, timezone, priority
FROM future_calls
WHERE ($1::text IS NULL OR identifier = $1)
  AND ($2::text IS NULL OR name = $2)
  AND ($3::text IS NULL OR state = $3)
ORDER BY due_at, id
LIMIT $4;

-- name: get
SELECT id, name, state, due_at, identifier, attempts, max_attempts, last_error, payload,
       created_at, started_at, finished_at, cron, every, timezone, priority
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
SELECT id, CASE WHEN due_at <= now() + $4::interval
                THEN pg_notify('future_calls', extract(epoch FROM due_at)::float8::text) END
FROM moved;

-- name: delete
-- Remove a call that is not running; returns its id if it was removed.
DELETE FROM future_calls WHERE id = $1 AND state <> 'running' RETURNING id;

-- name: pause
-- No worker starts a call of name $1 until it is resumed: the NOTIFY tells every
-- dispatcher at once (their sweeps read the table too, should one miss it). True if it
-- was not paused before.
WITH paused AS (
    INSERT INTO future_calls_paused (name) VALUES ($1)
    ON CONFLICT (name) DO NOTHING
    RETURNING name
)
SELECT EXISTS (SELECT 1 FROM paused) AS changed, pg_notify('future_calls', 'paused');

-- name: resume
-- Let workers start calls of name $1 again: tell the dispatchers, and wake them if its
-- earliest pending call is due within $2 (its calls may lie behind every frontier).
WITH resumed AS (
    DELETE FROM future_calls_paused WHERE name = $1 RETURNING name
), first AS (
    SELECT min(due_at) AS due_at FROM future_calls
    WHERE name = $1 AND state = 'scheduled' AND cron IS NULL AND every IS NULL
      AND EXISTS (SELECT 1 FROM resumed)
)
SELECT EXISTS (SELECT 1 FROM resumed) AS changed, pg_notify('future_calls', 'paused'),
       CASE WHEN due_at <= now() + $2::interval
            THEN pg_notify('future_calls', extract(epoch FROM due_at)::float8::text) END
FROM first;

-- name: paused
SELECT name FROM future_calls_paused ORDER BY name;

-- name: mark_limited
-- Maintenance: due calls of names with a fleet_limit ($1) that were scheduled by code
-- that did not declare it (fleet_slot NULL) are brought under it, at most $2 at a time.
UPDATE future_calls SET fleet_slot = 0
WHERE id = ANY (ARRAY(
    SELECT id FROM future_calls
    WHERE state = 'scheduled' AND cron IS NULL AND every IS NULL AND fleet_slot IS NULL
      AND due_at <= now() AND name = ANY ($1::text[])
    ORDER BY due_at, id
    LIMIT $2
    FOR UPDATE SKIP LOCKED))
  AND fleet_slot IS NULL;

-- name: prune
-- Delete up to $2 parked one-off calls ('failed', 'interrupted') that ended more than $1
-- seconds ago, oldest first; returns how many. Parked recurring chains stay.
WITH pruned AS (
    DELETE FROM future_calls
    WHERE id = ANY (ARRAY(
        SELECT id FROM future_calls
        WHERE state IN ('failed', 'interrupted') AND cron IS NULL AND every IS NULL
          AND finished_at < now() - make_interval(secs => $1::float8)
        ORDER BY finished_at
        LIMIT $2
        FOR UPDATE SKIP LOCKED))
    RETURNING 1
)
SELECT count(*) FROM pruned;

-- name: record_stats
-- Add a process's counts for one minute ($1, epoch seconds) to worker $2's row.
-- Buckets are added element by element (a missing one counts as 0).
INSERT INTO future_calls_stats AS s (minute, worker, started, succeeded, failed, interrupted,
                                     lateness)
VALUES (to_timestamp($1), $2, $3, $4, $5, $6, $7::bigint[])
ON CONFLICT (minute, worker) DO UPDATE SET
    started = s.started + EXCLUDED.started,
    succeeded = s.succeeded + EXCLUDED.succeeded,
    failed = s.failed + EXCLUDED.failed,
    interrupted = s.interrupted + EXCLUDED.interrupted,
    lateness = ARRAY(SELECT coalesce(a, 0) + coalesce(b, 0)
                     FROM unnest(s.lateness, EXCLUDED.lateness) AS t(a, b));

-- name: prune_stats
-- Statistics older than $1 seconds go.
DELETE FROM future_calls_stats WHERE minute < now() - make_interval(secs => $1);

-- name: table_estimates
-- PostgreSQL's own statistics of the table (kept by ANALYZE and autovacuum): its row
-- count, and the most common states and names with their frequencies. What the
-- dashboard and the metrics gauges estimate kinds too large to count each time from
-- (estimates.py).
SELECT c.reltuples::float8 AS rows,
       states.most_common_vals::text::text[] AS state_values,
       states.most_common_freqs AS state_freqs,
       names.most_common_vals::text::text[] AS name_values,
       names.most_common_freqs AS name_freqs,
       greatest(t.last_analyze, t.last_autoanalyze) AS analyzed_at
FROM pg_class AS c
JOIN pg_namespace AS n ON n.oid = c.relnamespace
LEFT JOIN pg_stats AS states
       ON states.schemaname = n.nspname AND states.tablename = c.relname
      AND states.attname = 'state'
LEFT JOIN pg_stats AS names
       ON names.schemaname = n.nspname AND names.tablename = c.relname
      AND names.attname = 'name'
LEFT JOIN pg_stat_all_tables AS t ON t.relid = c.oid
WHERE c.oid = 'future_calls'::regclass;

-- name: gauges
-- The fleet's figures for a metrics scrape, each read through an index (the ORDER BY
-- keeps the planner on the state's own index: a sequential scan that stops after $1
-- rows looks cheaper to it, and is not once the table holds dead rows). Calls by state
-- are counted up to $1 each (an exact count of millions of rows would take a second); past
-- that the caller estimates them from table_estimates. And the age in seconds of the
-- oldest call that is due and has not started (a due slot of a chain included, paused
-- names left out): the first in index order, not min(), which an aggregate over a bitmap
-- of every due call can compute too.
SELECT (SELECT count(*) FROM (SELECT 1 FROM future_calls
                              WHERE state = 'scheduled' AND cron IS NULL AND every IS NULL
                              ORDER BY due_at, id LIMIT $1) AS s) AS scheduled,
       (SELECT count(*) FROM (SELECT 1 FROM future_calls WHERE state = 'running'
                              ORDER BY owner LIMIT $1) AS s) AS running,
       (SELECT count(*) FROM (SELECT 1 FROM future_calls WHERE state = 'failed'
                              ORDER BY finished_at LIMIT $1) AS s) AS failed,
       (SELECT count(*) FROM (SELECT 1 FROM future_calls WHERE state = 'interrupted'
                              ORDER BY finished_at LIMIT $1) AS s) AS interrupted,
       (SELECT count(*) FROM (SELECT 1 FROM future_calls
                              WHERE (cron IS NOT NULL OR every IS NOT NULL)
                                AND state = 'scheduled' ORDER BY due_at LIMIT $1) AS s)
           AS recurring,
       extract(epoch FROM now() - least(
           (SELECT due_at FROM future_calls
            WHERE state = 'scheduled' AND cron IS NULL AND every IS NULL AND due_at <= now()
              AND name NOT IN (SELECT name FROM future_calls_paused)
            ORDER BY due_at, id LIMIT 1),
           (SELECT due_at FROM future_calls
            WHERE (cron IS NOT NULL OR every IS NOT NULL) AND state = 'scheduled'
              AND due_at <= now() AND name NOT IN (SELECT name FROM future_calls_paused)
            ORDER BY due_at LIMIT 1)
       ))::float8 AS oldest_due_age;
