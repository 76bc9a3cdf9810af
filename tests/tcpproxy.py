"""A small TCP proxy in front of a PostgreSQL port, for network faults.

    with TcpProxy(upstream_port) as proxy:      # listens on 127.0.0.1:proxy.port
        dsn = f"postgresql://postgres@127.0.0.1:{proxy.port}/db"
        proxy.freeze()    # every existing connection goes silent, none is closed
        proxy.thaw()      # forward again (a frozen stream has lost bytes: it is broken)
        proxy.drop_all()  # reset (RST) every connection
        proxy.hold()      # new connections wait (a network hiccup), existing ones flow
        proxy.release()   # the waiting connections go through

``freeze()`` is a half-open connection as a NAT or load-balancer reset leaves it: the old
flow is dead but nothing tells either end. Bytes that either side sends on a frozen
connection are read and dropped, and an end that closes is not passed on; connections
opened after the freeze are forwarded normally. The proxy's own kernel keeps
acknowledging TCP keepalive probes, so only a deadline in the client notices.

The proxy runs an asyncio loop in a daemon thread of the test process, so uvicorn
subprocesses can use it as well as in-process code. It listens on 127.0.0.1 only and
holds at most ``max_connections`` connections (more are refused by closing them).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from dataclasses import dataclass, field

HOST = "127.0.0.1"
CHUNK = 65536
HOLD_LIMIT = 60.0  # seconds a held connection waits before it is reset


@dataclass(eq=False)
class _Flow:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    frozen: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class TcpProxy:
    def __init__(self, upstream_port: int, upstream_host: str = HOST, max_connections: int = 200):
        self.upstream = (upstream_host, upstream_port)
        self.max_connections = max_connections
        self._flows: set[_Flow] = set()
        # Every transport the proxy opened, held or flowing: all are aborted at close, so
        # none is left for the garbage collector to warn about in a later test.
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._accepted = 0
        self._open: asyncio.Event | None = None  # cleared while new connections are held
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._serve, args=(ready,), name="tcpproxy", daemon=True
        )
        self._thread.start()
        if not ready.wait(10) or self._server is None:
            raise RuntimeError("the TCP proxy did not start")
        self.port: int = self._server.sockets[0].getsockname()[1]

    # -- controls, called from any thread ------------------------------------------------

    def dsn(self, database: str, user: str = "postgres") -> str:
        return f"postgresql://{user}@{HOST}:{self.port}/{database}"

    def freeze(self) -> int:
        """Stop forwarding on every existing connection, closing none; returns how many."""
        return self._call(self._freeze)

    def thaw(self) -> None:
        """Forward again on every connection."""
        self._call(self._thaw)

    def drop_all(self) -> int:
        """Reset every connection (RST to both ends); returns how many."""
        return self._call(self._drop_all)

    def hold(self) -> None:
        """New connections are accepted but wait (at most HOLD_LIMIT seconds) before they
        reach the server, as through a network hiccup; existing ones keep flowing."""
        self._call(self._open_event().clear)

    def release(self) -> None:
        """Let the held connections, and new ones, through."""
        self._call(self._open_event().set)

    @property
    def connections(self) -> int:
        """Connections open through the proxy now."""
        return self._call(lambda: len(self._flows))

    @property
    def accepted(self) -> int:
        """Connections accepted since the start."""
        return self._call(lambda: self._accepted)

    def close(self) -> None:
        if not self._loop.is_closed() and self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the loop thread ----------------------------------------------------------------

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)

        async def listen() -> None:
            self._server = await asyncio.start_server(self._connected, HOST, 0)

        try:
            self._loop.run_until_complete(listen())
        finally:
            ready.set()
        self._loop.run_forever()
        self._loop.close()

    def _call(self, fn):  # type: ignore[no-untyped-def]
        async def run():  # type: ignore[no-untyped-def]
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def _open_event(self) -> asyncio.Event:
        if self._open is None:
            self._open = asyncio.Event()
            self._open.set()
        return self._open

    def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Tracked here, as the connection is made: a handler task cancelled by the shutdown
        # before its first step would leave the socket to the garbage collector.
        self._accepted += 1
        self._writers.add(writer)
        task = asyncio.create_task(self._accept(reader, writer))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._forward(reader, writer)
        finally:
            self._writers.discard(writer)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._flows) >= self.max_connections:
            writer.close()
            return
        try:
            await asyncio.wait_for(self._open_event().wait(), HOLD_LIMIT)
        except TimeoutError:
            _reset(writer)
            return
        try:
            # asyncio.timeout, not wait_for: on Python 3.11, wait_for cancelled just as
            # the connection is made drops it, open, for the garbage collector.
            async with asyncio.timeout(10):
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except (OSError, TimeoutError):
            _reset(writer)
            return
        self._writers.add(up_writer)
        flow = _Flow(client=writer, server=up_writer)
        self._flows.add(flow)
        flow.tasks = [
            asyncio.create_task(self._pump(flow, reader, up_writer)),
            asyncio.create_task(self._pump(flow, up_reader, writer)),
        ]
        try:
            await asyncio.gather(*flow.tasks, return_exceptions=True)
        finally:
            self._flows.discard(flow)
            self._writers.discard(up_writer)

    async def _pump(
        self, flow: _Flow, source: asyncio.StreamReader, sink: asyncio.StreamWriter
    ) -> None:
        try:
            while True:
                data = await source.read(CHUNK)
                if flow.frozen:
                    if not data:  # the end closed: tell nobody, keep the flow open
                        await asyncio.Event().wait()
                    continue  # read and dropped
                if not data:
                    break
                sink.write(data)
                await sink.drain()
        except (OSError, ConnectionError):
            if flow.frozen:
                await asyncio.Event().wait()
        finally:
            if not flow.frozen:
                for end in (flow.client, flow.server):
                    end.close()

    def _freeze(self) -> int:
        for flow in self._flows:
            flow.frozen = True
        return len(self._flows)

    def _thaw(self) -> None:
        for flow in self._flows:
            flow.frozen = False

    def _drop_all(self) -> int:
        flows = list(self._flows)
        for flow in flows:
            flow.frozen = False
            for end in (flow.client, flow.server):
                _reset(end)
            for task in flow.tasks:
                task.cancel()
        return len(flows)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        self._drop_all()
        current = asyncio.current_task()
        # A connection accepted just before the server closed is handed to _connected a
        # loop turn later: go round until no writer or task is left.
        for _ in range(10):
            await asyncio.sleep(0)
            for writer in list(self._writers):
                _reset(writer)
            self._writers.clear()
            pending = [task for task in asyncio.all_tasks() if task is not current]
            if not pending:
                break
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await asyncio.sleep(0)  # aborted transports close their sockets on the next turn


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
