"""What the server was busy with, minute by minute: samples pg_stat_activity every 0.1 s
and prints, per minute, the statements (and autovacuum passes) seen active, how often,
and the longest seen. Client statements of a few milliseconds rarely show; what runs
long does. Run it beside a phase:

    python -m bench.activity DSN OUT.json SECONDS
"""

from __future__ import annotations

import asyncio
import collections
import json
import sys
import time

import asyncpg

ACTIVE = r"""
SELECT backend_type, coalesce(left(regexp_replace(query, '\s+', ' ', 'g'), 70), '') AS query,
       extract(epoch FROM clock_timestamp() - query_start)::float8 AS running_for,
       coalesce(wait_event_type, '') AS waiting_on
FROM pg_stat_activity
WHERE state = 'active' AND pid <> pg_backend_pid()
  AND (datname = current_database() OR backend_type LIKE 'autovacuum%')
"""


async def sample(dsn: str, seconds: float) -> list[tuple[float, str, str, float, str]]:
    conn = await asyncpg.connect(dsn)
    start, samples = time.monotonic(), []
    try:
        while (at := time.monotonic() - start) < seconds:
            for row in await conn.fetch(ACTIVE):
                samples.append(
                    (
                        at,
                        row["backend_type"],
                        row["query"],
                        row["running_for"] or 0.0,
                        row["waiting_on"],
                    )
                )
            await asyncio.sleep(0.1)
    finally:
        await conn.close()
    return samples


def report(samples: list[tuple[float, str, str, float, str]]) -> None:
    seen: dict[int, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    longest: dict[tuple[int, str], float] = collections.defaultdict(float)
    for at, backend, query, running_for, _ in samples:
        minute = int(at // 60)
        key = ("" if backend == "client backend" else backend) + " " + query[:60]
        seen[minute][key] += 1
        longest[minute, key] = max(longest[minute, key], running_for)
    for minute in sorted(seen):
        print(f"minute {minute + 1}")
        for key, count in seen[minute].most_common(8):
            print(f"  {count:5d} max {longest[minute, key]:7.3f}s  {key}")


def main() -> None:
    dsn, out, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    samples = asyncio.run(sample(dsn, seconds))
    with open(out, "w") as file:
        json.dump(samples, file)
    report(samples)


if __name__ == "__main__":
    main()
