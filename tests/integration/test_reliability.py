"""Reliability, second pass (issue 9): retries and sweeps wake the dispatchers, bad rows are
parked alone, shutdown records as calls end and stays within its grace, run-due sweeps,
cancel wins over a chain's next occurrence, and dispatchers claim only their own names."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import asyncpg

from fastapi_futurecalls import FutureCall, PlannedCall, Session
from fastapi_futurecalls.dispatcher import Dispatcher
from tests.support import Item, Recorder, wait_for


class FailsTwice(FutureCall[Item]):
    max_attempts = 3
    retry_backoff = timedelta(milliseconds=200)

    def __init__(self) -> None:
        self.started: list[float] = []

    async def invoke(self, session: Session, object: Item | None) -> None:
        self.started.append(time.monotonic())
        if len(self.started) < 3:
            raise RuntimeError(f"attempt {len(self.started)}")


async def test_a_retry_starts_after_its_backoff_not_at_the_next_poll(make_futurecalls, db):
    flaky = FailsTwice()
    fc = make_futurecalls(poll_interval=60)
    fc.register_future_call(flaky, "flaky")
    async with fc:
        await fc.session().future_call_with_delay("flaky", Item(n=1), timedelta(0))
        await wait_for(lambda: len(flaky.started) == 3, within=20)
    gaps = [b - a for a, b in zip(flaky.started, flaky.started[1:], strict=False)]
    # 200 ms, then 400 ms, with jitter up to +25 %; a poll would take 60 s.
    assert gaps[0] < 3 and gaps[1] < 3, gaps
    assert await db.fetchval("SELECT count(*) FROM future_calls") == 0


async def test_a_call_the_sweep_reschedules_wakes_an_idle_dispatcher(make_futurecalls, db):
    """A worker died while running a call with attempts left: the sweep reschedules it
    (after the liveness grace) and the NOTIFY it sends starts it, long before any poll."""
    recorder = Recorder()
    await db.execute(
        "INSERT INTO future_calls (name, payload, due_at, state, owner, attempts,"
        " max_attempts, retry_backoff, started_at)"
        " VALUES ('record', '{\"n\": 7}', now(), 'running', 999999, 1, 2, '100 ms', now())"
    )
    await db.execute("INSERT INTO future_calls_workers (id) VALUES (999999)")  # it had one
    fc = make_futurecalls(poll_interval=60, liveness_grace=1.0)
    fc.register_future_call(recorder, "record")
    async with fc:
        began = time.monotonic()
        await wait_for(lambda: len(recorder.calls) == 1, within=15)
    assert time.monotonic() - began < 15
    assert recorder.calls == [Item(n=7)]


POISON = [
    # (what, insert statement)
    (
        "an interval past the calendar's end",
        "INSERT INTO future_calls (name, identifier, due_at, every)"
        " VALUES ('record', 'huge', now(), interval '3000000 days')",
    ),
    (
        "a time zone this machine lacks",
        "INSERT INTO future_calls (name, identifier, due_at, cron, timezone)"
        " VALUES ('record', 'mars', now(), '* * * * *', 'Mars/Olympus_Mons')",
    ),
    (
        "a cron expression cronsim rejects",
        "INSERT INTO future_calls (name, identifier, due_at, cron)"
        " VALUES ('record', 'garbage', now(), '61 25 * * *')",
    ),
    (
        "a negative interval",
        "INSERT INTO future_calls (name, identifier, due_at, every)"
        " VALUES ('record', 'backwards', now(), interval '-1 hour')",
    ),
    (
        "an infinitely old chain",
        "INSERT INTO future_calls (name, identifier, due_at, every)"
        " VALUES ('record', 'ancient', '-infinity', interval '1 hour')",
    ),
]


async def test_poison_chains_are_parked_once_and_dispatch_goes_on(make_futurecalls, db):
    for _, statement in POISON:
        await db.execute(statement)
    # A one-off call edited by hand in every column a user could touch.
    await db.execute(
        "INSERT INTO future_calls (name, payload, identifier, due_at, attempts, max_attempts,"
        " retry_backoff) VALUES ('record', '{\"n\": 1, \"label\": \"\\u0000?\"}', '', "
        "'-infinity', 2147483647, 1, interval '178000000 years')"
    )
    recorder = Recorder()
    fc = make_futurecalls(poll_interval=0.2)
    fc.register_future_call(recorder, "record")
    async with fc:
        worker = fc.worker_id
        pid = await db.fetchval(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 AND objid = $1",
            worker,
        )
        await fc.session().future_call_with_delay("record", Item(n=2), timedelta(0))
        await wait_for(lambda: Item(n=2) in recorder.calls, within=10)
        await wait_for(
            lambda: db.fetchval(
                "SELECT count(*) FROM future_calls WHERE state = 'failed' AND identifier <> ''"
            ),
            within=10,
        )
        await asyncio.sleep(1)  # more turns: nothing is parked twice, nothing reconnects
        assert fc.worker_id == worker
        assert (
            await db.fetchval(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2"
                " AND objid = $1",
                worker,
            )
            == pid
        )
    chains = {
        r["identifier"]: r
        for r in await db.fetch("SELECT * FROM future_calls WHERE identifier <> ''")
    }
    assert set(chains) == {"huge", "mars", "garbage", "backwards", "ancient"}
    for identifier, row in chains.items():
        assert row["state"] == "failed", identifier
        assert row["last_error"].startswith("bad recurring chain"), row["last_error"]
    # The hand-edited one-off ran once (its payload still fits) and is gone.
    assert Item(n=1, label="\x00?") in recorder.calls
    assert await db.fetchval("SELECT count(*) FROM future_calls WHERE identifier = ''") == 0


class Sleeper(FutureCall[Item]):
    async def invoke(self, session: Session, object: Item | None) -> None:
        assert object is not None
        await asyncio.sleep(object.n)


async def test_shutdown_records_calls_as_they_end_and_ends_within_the_grace(make_futurecalls, db):
    fc = make_futurecalls(shutdown_grace=4.0)
    fc.register_future_call(Sleeper(), "sleep")
    async with fc:
        session = fc.session()
        quick = await session.future_call_with_delay("sleep", Item(n=1), timedelta(0))
        slow = await session.future_call_with_delay("sleep", Item(n=60), timedelta(0))
        await wait_for(
            lambda: db.fetchval("SELECT count(*) = 2 FROM future_calls WHERE state = 'running'")
        )
        began = time.monotonic()
        stopping = asyncio.create_task(fc.stop())
        # The quick call's record does not wait for the slow one, nor for the grace.
        await wait_for(
            lambda: db.fetchval("SELECT count(*) = 0 FROM future_calls WHERE id = $1", quick),
            within=3,
        )
        assert not stopping.done()
        await stopping
        took = time.monotonic() - began
    assert took < 4.0 + 1.0, took  # the whole stop, cancel wait and last write included
    row = await db.fetchrow("SELECT state, last_error FROM future_calls WHERE id = $1", slow)
    assert row["state"] == "interrupted"
    assert "cancelled at shutdown" in row["last_error"]


async def test_a_call_claimed_but_never_started_goes_back_in_line(make_futurecalls, db):
    fc = make_futurecalls(execution_enabled=False, shutdown_grace=0)
    fc.register_future_call(Recorder(), "record")
    async with fc:
        call_id = await fc.session().future_call_with_delay("record", Item(n=1), timedelta(0))
        assert fc._store is not None
        dispatcher = Dispatcher(fc.settings, fc._registry, fc.session, fc._store)
        await dispatcher._open()
        assert await dispatcher._claim(10) == 1
        # A stop past its grace cancels the claimed call's task before its first step;
        # the stop still has time to write (none at all would leave the row running,
        # for the sweep).
        (task,) = dispatcher._running
        task.cancel()
        await dispatcher._drain(asyncio.get_running_loop().time() + 10)
    row = await db.fetchrow("SELECT * FROM future_calls WHERE id = $1", call_id)
    assert row["state"] == "scheduled"
    assert row["attempts"] == 0 and row["owner"] is None and row["last_error"] is None


async def test_run_due_sweeps_the_calls_of_a_run_killed_mid_call(make_futurecalls, db):
    """Deployments with only `run-due` have no long-lived dispatcher: run-due itself
    notes the dead owner, and a later run parks its call."""
    await db.execute(
        "INSERT INTO future_calls (name, due_at, state, owner, attempts, started_at)"
        " VALUES ('record', now(), 'running', 424242, 1, now())"
    )
    await db.execute("INSERT INTO future_calls_workers (id) VALUES (424242)")  # its run's
    fc = make_futurecalls(execution_enabled=False, liveness_grace=0.5)
    fc.register_future_call(Recorder(), "record")
    async with fc:
        await fc.run_due()
        assert await db.fetchval("SELECT state FROM future_calls") == "running"
        await asyncio.sleep(1)
        await fc.run_due()
    row = await db.fetchrow("SELECT state, owner, last_error FROM future_calls")
    assert (row["state"], row["owner"]) == ("interrupted", None)
    assert "worker" in row["last_error"]


async def test_after_cancel_returns_no_occurrence_of_the_chain_starts(make_futurecalls, db, dsn):
    """The race: an occurrence inserted while cancel waits on the chain row it locks."""
    fc = make_futurecalls(execution_enabled=False)
    fc.register_future_call(Recorder(), "record")
    async with fc:
        session = fc.session()
        await session.future_call_recurring(
            "record", Item(n=1), identifier="drip", every=timedelta(hours=1)
        )
        # What a dispatcher does when the slot falls due: lock the chain, insert the
        # occurrence, move the chain on, commit.
        other = await asyncpg.connect(dsn)
        try:
            tx = other.transaction()
            await tx.start()
            await other.execute("SELECT id FROM future_calls WHERE identifier = 'drip' FOR UPDATE")
            await other.execute(
                "INSERT INTO future_calls (name, payload, identifier, due_at)"
                " VALUES ('record', '{\"n\": 1}', 'drip', now())"
            )
            cancelling = asyncio.create_task(session.cancel_future_call("drip"))
            await asyncio.sleep(0.5)
            assert not cancelling.done()  # waits on the chain row
            await other.execute(
                "UPDATE future_calls SET due_at = due_at + interval '1 hour'"
                " WHERE identifier = 'drip' AND every IS NOT NULL"
            )
            await tx.commit()
        finally:
            await other.close()
        assert await cancelling == 2
    assert await db.fetchval("SELECT count(*) FROM future_calls WHERE identifier = 'drip'") == 0


async def test_a_dispatcher_claims_only_the_names_it_runs(make_futurecalls, db):
    mails, charges = Recorder(), Recorder()
    mail_pool = make_futurecalls(poll_interval=0.2)
    mail_pool.register_future_call(mails, "mail")
    charge_pool = make_futurecalls(poll_interval=0.2)
    charge_pool.register_future_call(charges, "charge")
    async with mail_pool, charge_pool:
        for n in range(20):
            name = "mail" if n % 2 else "charge"
            session = mail_pool.session() if name == "mail" else charge_pool.session()
            await session.future_call_with_delay(name, Item(n=n), timedelta(0))
        await wait_for(lambda: len(mails.calls) + len(charges.calls) == 20)
    assert sorted(c.n for c in mails.calls if c) == list(range(1, 20, 2))
    assert sorted(c.n for c in charges.calls if c) == list(range(0, 20, 2))
    assert await db.fetchval("SELECT count(*) FROM future_calls") == 0


async def test_notify_is_absolute_so_a_long_caller_transaction_does_not_delay_it(
    make_futurecalls, db, dsn
):
    recorder = Recorder()
    fc = make_futurecalls(poll_interval=60)
    fc.register_future_call(recorder, "record")
    async with fc:
        caller = await asyncpg.connect(dsn)
        try:
            async with caller.transaction():
                # Due 2 s after the transaction began, committed 3 s after it began.
                await fc.session().future_call_with_delay(
                    "record", Item(n=1), timedelta(seconds=2), connection=caller
                )
                await asyncio.sleep(3)
            committed = time.monotonic()
        finally:
            await caller.close()
        await wait_for(lambda: recorder.calls, within=10)
    # Overdue at commit: it starts at once, not 2 s after the notification arrived.
    assert recorder.started[0] - committed < 1.5


async def test_a_number_held_elsewhere_at_reconnect_is_adopted_once_it_can_be_taken(
    make_futurecalls, db
):
    """The dispatcher's session ends while a call runs, and the worker number's lock is
    taken by someone else before the worker reconnects: the worker goes on under a new
    number, takes the old one back as soon as it is free, and records the call under it."""
    fc = make_futurecalls(poll_interval=0.2, liveness_grace=30)
    fc.register_future_call(Sleeper(), "sleep")
    async with fc:
        old = fc.worker_id
        call_id = await fc.session().future_call_with_delay("sleep", Item(n=3), timedelta(0))
        await wait_for(
            lambda: db.fetchval("SELECT state = 'running' FROM future_calls WHERE id = $1", call_id)
        )
        namespace, pid = await db.fetchrow(
            "SELECT classid::bigint::integer, pid FROM pg_locks WHERE locktype = 'advisory'"
            " AND objsubid = 2 AND objid = $1",
            old,
        )
        await db.execute("SELECT pg_terminate_backend($1)", pid)
        await db.execute("SELECT pg_advisory_lock($1, $2)", namespace, old)  # waits for it
        await wait_for(lambda: fc.worker_id not in (None, old), within=10)
        await asyncio.sleep(1)
        await db.execute("SELECT pg_advisory_unlock($1, $2)", namespace, old)
        # The call ends under its old number, which the worker holds again by then.
        await wait_for(
            lambda: db.fetchval("SELECT count(*) = 0 FROM future_calls WHERE id = $1", call_id),
            within=10,
        )
        # Nothing is left to record under it: the worker lets it go.
        await wait_for(
            lambda: db.fetchval(
                "SELECT count(*) = 0 FROM pg_locks WHERE locktype = 'advisory'"
                " AND objsubid = 2 AND objid = $1",
                old,
            ),
            within=10,
        )
    assert await db.fetchval("SELECT count(*) FROM future_calls") == 0


async def test_only_calls_due_soon_send_a_notification(make_futurecalls, db):
    """A NOTIFY takes a database-wide lock at commit: a call due after the dispatchers'
    next tick (two poll intervals) is found by that tick, and sends none."""
    heard: list[str] = []
    await db.add_listener("future_calls", lambda *args: heard.append(args[-1]))
    fc = make_futurecalls(execution_enabled=False, poll_interval=10)
    fc.register_future_call(Recorder(), "record")
    async with fc:
        session = fc.session()
        await session.future_call_with_delay("record", Item(n=1), timedelta(days=30))
        await session.future_call_with_delay("record", Item(n=2), timedelta(seconds=25))
        await session.future_calls_batch(
            [PlannedCall("record", Item(n=3), delay=timedelta(hours=1))]
        )
        await session.future_call_recurring(
            "record", None, identifier="monthly", every=timedelta(days=30)
        )
        await asyncio.sleep(0.5)
        assert heard == []
        await session.future_call_with_delay("record", Item(n=4), timedelta(seconds=15))
        await session.future_calls_batch(
            [
                PlannedCall("record", Item(n=5)),
                PlannedCall("record", Item(n=6), delay=timedelta(days=1)),
            ]
        )
        await wait_for(lambda: len(heard) == 2, within=5)


class Gated(FutureCall[Item]):
    """Call 1 runs until its gate opens; the others end at once."""

    def __init__(self) -> None:
        self.runs: list[int] = []
        self.gate = asyncio.Event()

    async def invoke(self, session: Session, object: Item | None) -> None:
        assert object is not None
        self.runs.append(object.n)
        if object.n == 1:
            await self.gate.wait()


async def test_a_claim_rolled_back_by_a_deadlock_runs_again_at_once(
    make_futurecalls, db, dsn, monkeypatch
):
    """PostgreSQL breaks a lock cycle by rolling back one of its statements: here the
    dispatcher's claim, which had claimed call 2 and was recording call 1 as done, a row
    another session held. Nothing of it was written, so the dispatcher runs the same
    statement again, not the slow path that records outcomes one at a time for a row
    that breaks the statement; every call runs once."""
    one_by_one: list[object] = []
    original = Dispatcher._record_one_by_one

    async def spy(self: Dispatcher, owner: int, outcomes: list[Any]) -> None:
        one_by_one.append(outcomes)
        await original(self, owner, outcomes)

    monkeypatch.setattr(Dispatcher, "_record_one_by_one", spy)
    gated = Gated()
    # The claim run again may find call 2 still locked by the other session (until its
    # rollback) and skip it; the next tick, half a second on, takes it then.
    fc = make_futurecalls(poll_interval=0.5, concurrency_limit=1)
    fc.register_future_call(gated, "gated")
    other = await asyncpg.connect(dsn)
    try:
        async with fc:
            session = fc.session()
            first = await session.future_call_with_delay("gated", Item(n=1), timedelta(0))
            await wait_for(lambda: gated.runs == [1])
            second = await session.future_call_with_delay("gated", Item(n=2), timedelta(0))
            await other.execute("SET deadlock_timeout = '30s'")  # the dispatcher detects it
            transaction = other.transaction()
            await transaction.start()
            await other.execute("SELECT 1 FROM future_calls WHERE id = $1 FOR UPDATE", first)
            gated.gate.set()  # call 1 ends: one statement records it and claims call 2

            async def recording_waits() -> bool:
                return bool(
                    await db.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND query LIKE 'WITH done AS%'"
                    )
                )

            await wait_for(recording_waits, what="the dispatcher waiting on the locked row")
            # Waits on the dispatcher's claim of call 2: a cycle, the dispatcher's to break.
            await other.execute("SELECT 1 FROM future_calls WHERE id = $1 FOR UPDATE", second)
            await transaction.rollback()
            await wait_for(lambda: gated.runs == [1, 2], within=15)
            await wait_for(lambda: db.fetchval("SELECT count(*) = 0 FROM future_calls"), within=15)
    finally:
        await other.close()
    assert gated.runs == [1, 2]
    assert one_by_one == []


async def test_a_due_call_skipped_while_another_transaction_locked_it_runs_soon_after(
    make_futurecalls, dsn
):
    """A claim skips a due row that another transaction holds locked (SKIP LOCKED): a
    cancel or replace in a caller's transaction that then rolls back, or a claim whose
    worker died before it committed. The row stays due, and no NOTIFY will come for it:
    the dispatcher must come back for it soon, not at its next poll a minute later."""
    recorder = Recorder()
    fc = make_futurecalls(poll_interval=60)
    fc.register_future_call(recorder, "record")
    other = await asyncpg.connect(dsn)
    try:
        async with fc:
            call = await fc.session().future_call_with_delay(
                "record", Item(n=1), timedelta(seconds=1)
            )
            transaction = other.transaction()
            await transaction.start()
            await other.execute("SELECT 1 FROM future_calls WHERE id = $1 FOR UPDATE", call)
            await asyncio.sleep(2.5)  # due, and skipped by the claim its due time woke
            assert recorder.calls == []
            await transaction.rollback()
            rolled_back = time.monotonic()
            await wait_for(lambda: recorder.calls == [Item(n=1)], within=20)
            assert time.monotonic() - rolled_back < 15  # a poll would take 60 s
    finally:
        await other.close()
