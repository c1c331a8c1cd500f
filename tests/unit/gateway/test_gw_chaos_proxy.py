"""The chaos run's cutting proxy forwards bytes both ways and resets the connections it cuts."""

from __future__ import annotations

import random
from functools import partial

import pytest
import trio

from gateway.bench.chaos_proxy import CuttingProxy


async def _echo(stream: trio.SocketStream) -> None:
    async with stream:
        try:
            while data := await stream.receive_some(1024):
                await stream.send_all(data)
        except trio.BrokenResourceError:
            pass


@pytest.mark.trio
async def test_forwards_then_cut_resets_the_connection() -> None:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, _echo, 0, host="127.0.0.1"))
        proxy = CuttingProxy(listeners[0].socket.getsockname()[1])
        port = await nursery.start(proxy.serve)
        with trio.fail_after(10):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"hello")
            assert await stream.receive_some(1024) == b"hello"
            assert proxy.open_connections == 1
            assert proxy.cut(1.0, random.Random(0)) == 1
            with pytest.raises(trio.BrokenResourceError):  # a reset, not a clean end
                while await stream.receive_some(1024):
                    pass
            await stream.aclose()
            while proxy.open_connections:
                await trio.sleep(0.01)
            # A new connection goes through again.
            again = await trio.open_tcp_stream("127.0.0.1", port)
            await again.send_all(b"x")
            assert await again.receive_some(1024) == b"x"
            await again.aclose()
        assert proxy.cut_count == 1 and proxy.accepted == 2
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_a_dead_upstream_closes_the_phone_side() -> None:
    async with trio.open_nursery() as nursery:
        # Bound but not listening, and kept so until the end: connections to it are refused,
        # and no other process can take the port meanwhile (as after a close it could).
        dead = trio.socket.socket()
        await dead.bind(("127.0.0.1", 0))
        proxy = CuttingProxy(dead.getsockname()[1])
        port = await nursery.start(proxy.serve)
        with dead, trio.fail_after(10):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            try:
                assert await stream.receive_some(1024) == b""
            except trio.BrokenResourceError:
                pass  # reset: as good
            await stream.aclose()
        nursery.cancel_scope.cancel()
