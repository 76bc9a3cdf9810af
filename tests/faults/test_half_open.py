"""A half-open connection: the worker's connections go through tests/tcpproxy.py, which
stops forwarding on them without closing them, as a NAT or load-balancer reset leaves a
flow (nothing tells either end; TCP keepalive probes are answered by the proxy's kernel,
so only a deadline in the client notices). New connections go through.

The worker must give up a frozen connection within its statement timeout
(FUTURECALLS_STATEMENT_TIMEOUT, seconds) and go on dispatching on a new one, and
``FutureCalls.stop()`` must return within shutdown_grace + statement_timeout (and a
margin) while its connections are frozen."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from fastapi_futurecalls import FutureCalls
from tests.apps.worker_app import Job, Record
from tests.support import RunLog, open_transports, schedule_jobs, wait_for
from tests.tcpproxy import TcpProxy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

STATEMENT_TIMEOUT = 2.0
SHUTDOWN_GRACE = 2.0
POLL_INTERVAL = 1.0
RECOVERY_BOUND = 15.0  # generous: statement timeout + reconnect + a claim, on a slow box
STOP_MARGIN = 5.0


@contextlib.asynccontextmanager
async def worker(
    dsn: str, proxy: TcpProxy, monkeypatch: pytest.MonkeyPatch, runlog: RunLog
) -> AsyncIterator[FutureCalls]:
    """An in-process worker whose every connection goes through ``proxy``. Settings come
    from the environment, as a deployment sets them (FUTURECALLS_STATEMENT_TIMEOUT)."""
    monkeypatch.setenv("FUTURECALLS_TEST_LOG", str(runlog.path))
    monkeypatch.setenv("FUTURECALLS_STATEMENT_TIMEOUT", str(STATEMENT_TIMEOUT))
    monkeypatch.setenv("FUTURECALLS_POLL_INTERVAL", str(POLL_INTERVAL))
    monkeypatch.setenv("FUTURECALLS_SHUTDOWN_GRACE", str(SHUTDOWN_GRACE))
    monkeypatch.setenv("FUTURECALLS_CONNECT_TIMEOUT", "5")
    parts = urlsplit(dsn)
    futurecalls = FutureCalls(proxy.dsn(parts.path.lstrip("/")))
    futurecalls.register_future_call(Record(), "record")
    await futurecalls.start()
    try:
        yield futurecalls
    finally:
        if futurecalls.started:
            proxy.drop_all()  # unblock whatever still waits on a frozen connection
            with contextlib.suppress(Exception):
                await asyncio.wait_for(futurecalls.stop(), 30)


def proxied(fault_dsn: str, tcp_proxy: Callable[[int], TcpProxy]) -> TcpProxy:
    port = urlsplit(fault_dsn).port
    assert port is not None
    return tcp_proxy(port)


async def test_a_frozen_connection_is_given_up_and_dispatch_goes_on(
    fault_dsn: str,
    tcp_proxy: Callable[[int], TcpProxy],
    monkeypatch: pytest.MonkeyPatch,
    runlog: RunLog,
    tmp_path: Path,
):
    proxy = proxied(fault_dsn, tcp_proxy)
    async with worker(fault_dsn, proxy, monkeypatch, runlog) as futurecalls:
        await schedule_jobs(fault_dsn, [Job(n=n) for n in range(5)])
        await wait_for(lambda: runlog.count() == 5, within=10, what="the first calls")
        worker_id = futurecalls.worker_id
        accepted = proxy.accepted

        frozen = proxy.freeze()
        assert frozen >= 1  # the dispatcher's connection, and the pool's
        froze_at = time.monotonic()
        # Scheduled directly, not through the proxy: their NOTIFY is lost on the frozen
        # connection, and the worker's next statement there never gets an answer.
        await schedule_jobs(fault_dsn, [Job(n=n) for n in range(5, 10)])
        await wait_for(
            lambda: runlog.count() == 10,
            within=RECOVERY_BOUND,
            what=(
                f"the worker to give up its frozen connection (statement timeout "
                f"{STATEMENT_TIMEOUT}s) and run the calls scheduled after the freeze"
            ),
        )
        recovered = time.monotonic() - froze_at
        assert proxy.accepted > accepted, "recovered without a new connection?"
        assert max(runlog.runs().values()) == 1
        # The old session still holds the old number's lock on the server: a new number,
        # or the old one once its lock could be taken; either way the worker dispatches.
        assert futurecalls.worker_id is not None
        print(
            f"recovered {recovered:.1f}s after the freeze; worker {worker_id} -> "
            f"{futurecalls.worker_id}"
        )

        # And once more, on the connection it recovered to.
        proxy.freeze()
        await schedule_jobs(fault_dsn, [Job(n=n) for n in range(10, 15)])
        await wait_for(
            lambda: runlog.count() == 15, within=RECOVERY_BOUND, what="a second recovery"
        )
        assert set(runlog.runs()) == set(range(15))
    await asyncio.sleep(0.1)
    # Every connection given up, and every one opened since, was closed with the stop.
    assert open_transports() == [], "connections left open"


async def test_stop_returns_within_its_bound_while_the_connection_is_frozen(
    fault_dsn: str,
    tcp_proxy: Callable[[int], TcpProxy],
    monkeypatch: pytest.MonkeyPatch,
    runlog: RunLog,
):
    proxy = proxied(fault_dsn, tcp_proxy)
    async with worker(fault_dsn, proxy, monkeypatch, runlog) as futurecalls:
        # A call running across the freeze and the stop: its outcome cannot be written
        # through the frozen connection, and stop() must not wait for that forever.
        await schedule_jobs(fault_dsn, [Job(n=0, sleep=1.0), Job(n=1)])
        await wait_for(lambda: runlog.count() == 1 and runlog.count("started") == 1, within=10)
        proxy.freeze()
        # Let the safety-net tick start a statement on the frozen connection.
        await asyncio.sleep(POLL_INTERVAL * 1.5)
        bound = SHUTDOWN_GRACE + STATEMENT_TIMEOUT + STOP_MARGIN
        started = time.monotonic()
        stopping = asyncio.create_task(futurecalls.stop())
        # Not wait_for: cancelling a stop stuck on a frozen connection would hang as well.
        await asyncio.wait({stopping}, timeout=bound)
        if not stopping.done():
            proxy.drop_all()  # unblock it, so that the test ends
            await asyncio.wait({stopping}, timeout=30)
            raise AssertionError(
                f"FutureCalls.stop() did not return within {bound}s (shutdown_grace "
                f"{SHUTDOWN_GRACE} + statement_timeout {STATEMENT_TIMEOUT} + {STOP_MARGIN}) "
                f"while its connections were frozen"
            )
        await stopping
        took = time.monotonic() - started
        assert not futurecalls.started
        assert took < bound
        await asyncio.sleep(0.1)  # a closed transport lets its socket go a turn later
        assert open_transports() == [], "stop() left connections open"
        assert runlog.runs("done")[0] == 1  # the running call finished, once
