"""A loopback TCP proxy that can cut its connections: the "dropped phone sockets" nemesis.

Phones connect to the proxy, the proxy to the bridge. `cut` resets a share of the open
connections on both sides at once (SO_LINGER 0: a TCP RST, no close frame), as a phone losing
its network does; the bridge sees the session die without a goodbye. The upstream port stays
the same across server restarts, so new connections just find the new process.
"""

from __future__ import annotations

import random
import socket
import struct
from collections.abc import Sequence

import trio

__all__ = ["CuttingProxy"]

_CHUNK = 65536


def _reset_on_close(stream: trio.SocketStream) -> None:
    try:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass


class CuttingProxy:
    """Forward 127.0.0.1:`port` to 127.0.0.1:`upstream_port` until cancelled; with several
    upstream ports, each new connection goes to the next one that accepts (round robin), as an
    ordinary load balancer in front of several bridges does (issue 16)."""

    def __init__(self, upstream_port: int | Sequence[int]) -> None:
        self.upstream_ports = [upstream_port] if isinstance(upstream_port, int) else list(upstream_port)
        self._next = 0
        self.port = 0
        self.accepted = 0
        self.cut_count = 0
        self._open: dict[trio.CancelScope, None] = {}  # insertion-ordered set

    @property
    def open_connections(self) -> int:
        return len(self._open)

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    def cut(self, share: float, rng: random.Random) -> int:
        """Reset about `share` (0..1] of the open connections, at least one when any is open."""
        scopes = list(self._open)
        if not scopes:
            return 0
        chosen = rng.sample(scopes, max(1, round(share * len(scopes))))
        for scope in chosen:
            scope.cancel()
        self.cut_count += len(chosen)
        return len(chosen)

    async def _handle(self, downstream: trio.SocketStream) -> None:
        self.accepted += 1
        upstream: trio.SocketStream | None = None
        scope = trio.CancelScope()
        try:
            upstream = await self._connect()
            if upstream is None:  # every server is down (a kill -9 nemesis): the phone retries
                _reset_on_close(downstream)
                return
            self._open[scope] = None
            with scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, downstream, upstream, nursery.cancel_scope)
                    nursery.start_soon(self._pump, upstream, downstream, nursery.cancel_scope)
        finally:
            self._open.pop(scope, None)
            if scope.cancel_called:  # cut: reset both sides
                _reset_on_close(downstream)
                if upstream is not None:
                    _reset_on_close(upstream)
            # Closed synchronously: an await here could be cancelled before the close.
            downstream.socket.close()
            if upstream is not None:
                upstream.socket.close()

    async def _connect(self) -> trio.SocketStream | None:
        for _ in range(len(self.upstream_ports)):
            port = self.upstream_ports[self._next % len(self.upstream_ports)]
            self._next += 1
            try:
                return await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:  # that one is down: the next
                continue
        return None

    @staticmethod
    async def _pump(src: trio.SocketStream, dst: trio.SocketStream, both: trio.CancelScope) -> None:
        """Copy one direction; when either side ends, end the whole connection."""
        try:
            while chunk := await src.receive_some(_CHUNK):
                await dst.send_all(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            both.cancel()
