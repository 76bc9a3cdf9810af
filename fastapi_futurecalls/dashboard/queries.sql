-- The dashboard's statements (read-only), as named blocks like sql/queries.sql.
-- Every read of future_calls goes through one of its indexes and reads a bounded number
-- of rows, whatever the size of the table (tests/integration/test_dashboard_plans.py).

-- name: overview_counts
-- Exact counts per kind of row and name, each kind reading at most $1 rows through its
-- own partial index: a kind whose rows add up to $1 has more, and the caller shows an
-- estimate for it instead. Kinds: pending one-off calls (and how many are overdue),
-- recurring chains, running calls, parked calls, and one-off calls due within the hour.
SELECT 'scheduled' AS kind, 'scheduled' AS state, s.name, count(*) AS n,
       count(*) FILTER (WHERE s.due_at <= now()) AS overdue
FROM (SELECT name, due_at FROM future_calls
      WHERE state = 'scheduled' AND cron IS NULL AND every IS NULL
      ORDER BY due_at, id LIMIT $1) AS s
GROUP BY s.name
UNION ALL
SELECT 'recurring', 'recurring', s.name, count(*), count(*) FILTER (WHERE s.due_at <= now())
FROM (SELECT name, due_at FROM future_calls
      WHERE (cron IS NOT NULL OR every IS NOT NULL) AND state = 'scheduled'
      ORDER BY due_at LIMIT $1) AS s
GROUP BY s.name
UNION ALL
SELECT 'running', 'running', s.name, count(*), 0
FROM (SELECT name FROM future_calls WHERE state = 'running' ORDER BY owner LIMIT $1) AS s
GROUP BY s.name
UNION ALL
SELECT 'parked', s.state, s.name, count(*), 0
FROM (SELECT state, name FROM future_calls WHERE state IN ('failed', 'interrupted')
      ORDER BY finished_at LIMIT $1) AS s
GROUP BY s.state, s.name
UNION ALL
SELECT 'due_hour', 'scheduled', s.name, count(*), count(*) FILTER (WHERE s.due_at <= now())
FROM (SELECT name, due_at FROM future_calls
      WHERE state = 'scheduled' AND cron IS NULL AND every IS NULL
        AND due_at <= now() + interval '1 hour'
      ORDER BY due_at, id LIMIT $1) AS s
GROUP BY s.name;

-- name: due_next
-- The first $1 one-off calls in due order (overdue ones first): what runs next.
SELECT id, name, identifier, due_at, priority, attempts
FROM future_calls
WHERE state = 'scheduled' AND cron IS NULL AND every IS NULL
ORDER BY due_at, id
LIMIT $1;

-- name: parked_recent
-- The $1 calls parked last ('failed' or 'interrupted'): what needs an operator.
SELECT id, name, state, identifier, attempts, max_attempts, last_error, due_at, finished_at
FROM future_calls
WHERE state IN ('failed', 'interrupted')
ORDER BY finished_at DESC
LIMIT $1;

-- name: stats_recent
-- The run statistics of the last $1 minutes, per minute and worker (a few rows each).
SELECT minute, worker, started, succeeded, failed, interrupted, lateness,
       date_trunc('minute', now()) AS this_minute
FROM future_calls_stats
WHERE minute > date_trunc('minute', now()) - make_interval(mins => $1::integer)
ORDER BY minute, worker;

-- name: names
-- Paused names, and the names each worker with a row registers (live or not: $1 is the
-- lock namespace, NULL for the table's oid, as the workers take it).
SELECT p.name, true AS paused, p.paused_at, false AS registered
FROM future_calls_paused AS p
UNION ALL
SELECT DISTINCT unnest(w.names), false, NULL::timestamptz, true
FROM future_calls_workers AS w
WHERE w.id IN (SELECT l.objid::bigint::integer FROM pg_locks AS l
               WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                 AND l.database = (SELECT oid FROM pg_database
                                   WHERE datname = current_database())
                 AND l.classid = coalesce($1::bigint,
                                          'future_calls'::regclass::oid::bigint)::oid);

-- name: workers
-- Every worker number with a row, whether its advisory lock is held (alive) or not
-- (gone: the sweep notes it missing_since, and moves its calls on after liveness_grace),
-- with the calls it runs; then owners of running calls that have no row (claimed by a
-- release older than the workers table). $1: the lock namespace, NULL for the table's oid.
WITH live AS (
    SELECT l.objid::bigint::integer AS id, min(l.pid) AS backend_pid FROM pg_locks AS l
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.classid = coalesce($1::bigint, 'future_calls'::regclass::oid::bigint)::oid
    GROUP BY 1
), running AS (
    SELECT owner, count(*) AS n FROM future_calls WHERE state = 'running' GROUP BY owner
)
SELECT w.id, w.host, w.pid, w.names, w.started_at, w.missing_since,
       live.id IS NOT NULL AS alive, live.backend_pid, coalesce(r.n, 0) AS running
FROM future_calls_workers AS w
LEFT JOIN live ON live.id = w.id
LEFT JOIN running AS r ON r.owner = w.id
UNION ALL
SELECT r.owner, NULL, NULL, '{}', NULL, NULL, live.id IS NOT NULL, live.backend_pid, r.n
FROM running AS r
LEFT JOIN live ON live.id = r.owner
WHERE r.owner NOT IN (SELECT id FROM future_calls_workers)
ORDER BY 7 DESC, 1;

-- name: call
-- One call and, if it runs, its worker.
SELECT c.id, c.name, c.state, c.due_at, c.identifier, c.attempts, c.max_attempts,
       c.last_error, c.payload::text AS payload, c.created_at, c.started_at, c.finished_at,
       c.cron, c.every, c.timezone, c.priority, c.owner, c.retry_backoff, c.fleet_slot,
       c.snoozes, w.host AS owner_host, w.pid AS owner_pid,
       EXISTS (SELECT 1 FROM future_calls_paused AS p WHERE p.name = c.name) AS paused
FROM future_calls AS c
LEFT JOIN future_calls_workers AS w ON w.id = c.owner
WHERE c.id = $1;

-- The listings below have one shape: "scanned" reads at most the scan limit of rows
-- after the cursor, through the index that gives the listing's order; those of them that
-- match the other filters (name, state, identifier; NULL: any) are the page, at most the
-- page limit. When fewer match, the page ends where the scan ended, and the next page
-- goes on from there: a page never reads more rows than the scan limit, and never skips
-- rows with OFFSET. Parameters: the cursor ($1 a time and $2 an id, or $1 an id alone),
-- then scan limit, page limit, name, state, identifier.

-- name: calls_all
-- Every call, newest first (the primary key); cursor $1: the last id seen.
WITH scanned AS MATERIALIZED (
    SELECT id, name, state, identifier, due_at, attempts, max_attempts, priority, owner,
           last_error, finished_at, cron, every
    FROM future_calls
    WHERE id < coalesce($1::bigint, 9223372036854775807)
    ORDER BY id DESC
    LIMIT $2
), hits AS (
    SELECT * FROM scanned
    WHERE ($4::text IS NULL OR name = $4) AND ($5::text IS NULL OR state = $5)
      AND ($6::text IS NULL OR identifier = $6)
    ORDER BY id DESC
    LIMIT $3
), ending AS (
    SELECT count(*) AS scanned, min(id) AS end_id, NULL::timestamptz AS end_at FROM scanned
)
SELECT e.scanned, e.end_at, e.end_id, h.*
FROM ending AS e LEFT JOIN hits AS h ON true
ORDER BY h.id DESC;

-- name: calls_scheduled
-- Pending one-off calls in due order (the due index); cursor ($1, $2): the last seen.
WITH scanned AS MATERIALIZED (
    SELECT id, name, state, identifier, due_at, attempts, max_attempts, priority, owner,
           last_error, finished_at, cron, every
    FROM future_calls
    WHERE state = 'scheduled' AND cron IS NULL AND every IS NULL
      AND (due_at, id) > (coalesce($1::timestamptz, '-infinity'::timestamptz),
                          coalesce($2::bigint, 0))
    ORDER BY due_at, id
    LIMIT $3
), hits AS (
    SELECT * FROM scanned
    WHERE ($5::text IS NULL OR name = $5) AND ($6::text IS NULL OR state = $6)
      AND ($7::text IS NULL OR identifier = $7)
    ORDER BY due_at, id
    LIMIT $4
), ending AS (
    SELECT s.scanned, l.due_at AS end_at, l.id AS end_id
    FROM (SELECT count(*) AS scanned FROM scanned) AS s
    LEFT JOIN (SELECT due_at, id FROM scanned ORDER BY due_at DESC, id DESC LIMIT 1) AS l
        ON true
)
SELECT e.scanned, e.end_at, e.end_id, h.*
FROM ending AS e LEFT JOIN hits AS h ON true
ORDER BY h.due_at, h.id;

-- name: calls_running
-- Running calls by id (found through the index of running rows: a few per worker);
-- cursor $1: the last id seen.
WITH scanned AS MATERIALIZED (
    SELECT id, name, state, identifier, due_at, attempts, max_attempts, priority, owner,
           last_error, finished_at, cron, every
    FROM future_calls
    WHERE state = 'running' AND id > coalesce($1::bigint, 0)
    ORDER BY id
    LIMIT $2
), hits AS (
    SELECT * FROM scanned
    WHERE ($4::text IS NULL OR name = $4) AND ($5::text IS NULL OR state = $5)
      AND ($6::text IS NULL OR identifier = $6)
    ORDER BY id
    LIMIT $3
), ending AS (
    SELECT count(*) AS scanned, max(id) AS end_id, NULL::timestamptz AS end_at FROM scanned
)
SELECT e.scanned, e.end_at, e.end_id, h.*
FROM ending AS e LEFT JOIN hits AS h ON true
ORDER BY h.id;

-- name: calls_parked
-- Parked calls, last parked first (the index retention prunes by); cursor ($1, $2): the
-- (finished_at, id) last seen.
WITH scanned AS MATERIALIZED (
    SELECT id, name, state, identifier, due_at, attempts, max_attempts, priority, owner,
           last_error, finished_at, cron, every
    FROM future_calls
    WHERE state IN ('failed', 'interrupted')
      AND finished_at <= coalesce($1::timestamptz, 'infinity'::timestamptz)
      AND (finished_at, id) < (coalesce($1::timestamptz, 'infinity'::timestamptz),
                               coalesce($2::bigint, 9223372036854775807))
    ORDER BY finished_at DESC, id DESC
    LIMIT $3
), hits AS (
    SELECT * FROM scanned
    WHERE ($5::text IS NULL OR name = $5) AND ($6::text IS NULL OR state = $6)
      AND ($7::text IS NULL OR identifier = $7)
    ORDER BY finished_at DESC, id DESC
    LIMIT $4
), ending AS (
    SELECT s.scanned, l.finished_at AS end_at, l.id AS end_id
    FROM (SELECT count(*) AS scanned FROM scanned) AS s
    LEFT JOIN (SELECT finished_at, id FROM scanned ORDER BY finished_at, id LIMIT 1) AS l
        ON true
)
SELECT e.scanned, e.end_at, e.end_id, h.*
FROM ending AS e LEFT JOIN hits AS h ON true
ORDER BY h.finished_at DESC, h.id DESC;

-- name: calls_identifier
-- The calls with identifier $6, newest first (the identifier index); cursor $1: the last
-- id seen.
WITH scanned AS MATERIALIZED (
    SELECT id, name, state, identifier, due_at, attempts, max_attempts, priority, owner,
           last_error, finished_at, cron, every
    FROM future_calls
    WHERE identifier = $6 AND id < coalesce($1::bigint, 9223372036854775807)
    ORDER BY id DESC
    LIMIT $2
), hits AS (
    SELECT * FROM scanned
    WHERE ($4::text IS NULL OR name = $4) AND ($5::text IS NULL OR state = $5)
    ORDER BY id DESC
    LIMIT $3
), ending AS (
    SELECT count(*) AS scanned, min(id) AS end_id, NULL::timestamptz AS end_at FROM scanned
)
SELECT e.scanned, e.end_at, e.end_id, h.*
FROM ending AS e LEFT JOIN hits AS h ON true
ORDER BY h.id DESC;

-- name: chains
-- Recurring chains by next slot (the chains' due index); cursor ($1, $2): the
-- (due_at, id) last seen; $3 rows at most.
SELECT id, name, identifier, state, cron, every, timezone, due_at, priority, last_error,
       created_at
FROM future_calls
WHERE (cron IS NOT NULL OR every IS NOT NULL)
  AND due_at >= coalesce($1::timestamptz, '-infinity'::timestamptz)
  AND (due_at, id) > (coalesce($1::timestamptz, '-infinity'::timestamptz),
                      coalesce($2::bigint, 0))
ORDER BY due_at, id
LIMIT $3;

-- name: db_now
SELECT now() AS now;
