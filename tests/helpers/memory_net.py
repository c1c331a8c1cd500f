"""An in-memory network for bridge tests on trio's virtual clock.

- `MemoryListener`: a trio listener for `device_bridge.server.serve(listeners=[...])`;
  `await listener.connect()` hands the bridge one end of a `memory_stream_pair()`.
- `MemoryWebSocket`: a real websockets client (the sans-I/O `ClientProtocol`) over the other
  end. It reads only when the test calls `recv()`, so a phone that stops calling it is
  silent: it never answers a ping. While it reads, its protocol answers pings by itself.
- `VirtualTime`: drives a `MockClock` like `autojump_threshold=0`, except that it never
  jumps while a `trio.to_thread` worker thread is running. The bridge does its storage in
  threads; plain autojump would see "all tasks blocked" during a 2 ms SQLite call and jump
  the clock to the next timeout (open_timeout, ping_timeout...), so virtual time would
  depend on how fast the disk is. Here a storage call takes zero virtual time.
"""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

import trio
import trio.testing
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

__all__ = ["MemoryListener", "MemoryWebSocket", "VirtualTime", "run_virtual"]


class _NoSocket:
    """What websockets' Server logs as the listener's address ("memory:0")."""

    family = socket.AF_INET

    def getsockname(self) -> tuple[str, int]:
        return ("memory", 0)


class MemoryListener(trio.abc.Listener[trio.abc.Stream]):
    def __init__(self) -> None:
        self.socket = _NoSocket()  # websockets.trio.Server reads `listener.socket`
        self._send, self._receive = trio.open_memory_channel[trio.abc.Stream](math.inf)

    async def connect(self) -> trio.abc.Stream:
        """The client end of a new connection; the bridge's accept() gets the other end."""
        client, server = trio.testing.memory_stream_pair()
        self._send.send_nowait(server)
        await trio.lowlevel.checkpoint()
        return client

    async def accept(self) -> trio.abc.Stream:
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise trio.ClosedResourceError("listener closed") from None

    async def aclose(self) -> None:
        self._send.close()
        self._receive.close()
        await trio.lowlevel.checkpoint()


class MemoryWebSocket:
    """A websockets client connection the test reads from explicitly.

    `last_sent_at` is the virtual time of the last bytes the client wrote (data frames,
    pongs, close frames); `pongs_sent` counts answered pings.
    """

    def __init__(self, stream: trio.abc.Stream, protocol: ClientProtocol) -> None:
        self.stream = stream
        self.protocol = protocol
        self.last_sent_at = trio.current_time()
        self.pongs_sent = 0
        self._messages: list[bytes | str] = []
        self._fragments: list[Frame] = []
        self._eof = False

    @classmethod
    async def connect(
        cls,
        listener: MemoryListener,
        path: str,
        *,
        headers: Mapping[str, str] = {},
        subprotocols: Sequence[str] = (),
    ) -> MemoryWebSocket:
        """Open the WebSocket (opening handshake included); raises InvalidHandshake if refused."""
        protocol = ClientProtocol(
            parse_uri(f"ws://bridge.invalid{path}"),
            subprotocols=[Subprotocol(p) for p in subprotocols] or None,
        )
        ws = cls(await listener.connect(), protocol)
        request = protocol.connect()
        for name, value in headers.items():
            request.headers[name] = value
        protocol.send_request(request)
        await ws._flush()
        while protocol.state is State.CONNECTING:
            await ws._read_some()
        if protocol.state is not State.OPEN:
            assert protocol.handshake_exc is not None
            raise protocol.handshake_exc
        return ws

    @property
    def subprotocol(self) -> str | None:
        return self.protocol.subprotocol

    async def send(self, message: bytes | str) -> None:
        if self.protocol.state is not State.OPEN:
            raise self.protocol.close_exc
        if isinstance(message, str):
            self.protocol.send_text(message.encode())
        else:
            self.protocol.send_binary(message)
        await self._flush()

    async def recv(self) -> bytes | str:
        """The next data message; answers pings (and a close) on the way.
        Raises ConnectionClosed once the connection is closed."""
        while not self._messages:
            if self._eof or self.protocol.state is State.CLOSED:
                raise self.protocol.close_exc
            await self._read_some()
        return self._messages.pop(0)

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Drop the link (no closing handshake; `code` and `reason` are accepted for
        callers written against websockets' connections, and ignored)."""
        await self.stream.aclose()

    async def _read_some(self) -> None:
        try:
            data = await self.stream.receive_some()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if data:
            self.protocol.receive_data(data)
        else:
            self._eof = True
            self.protocol.receive_eof()
        for event in self.protocol.events_received():
            if isinstance(event, Response):
                continue  # the handshake outcome is in protocol.state / handshake_exc
            self._on_frame(event)
        await self._flush()

    def _on_frame(self, frame: Frame) -> None:
        if frame.opcode is Opcode.PING:
            self.pongs_sent += 1  # ClientProtocol queued the pong; _flush sends it
        elif frame.opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
            self._fragments.append(frame)
            if frame.fin:
                payload = b"".join(bytes(f.data) for f in self._fragments)
                text = self._fragments[0].opcode is Opcode.TEXT
                self._fragments = []
                self._messages.append(payload.decode() if text else payload)

    async def _flush(self) -> None:
        for data in self.protocol.data_to_send():
            try:
                if data:
                    await self.stream.send_all(data)
                    self.last_sent_at = trio.current_time()
                elif isinstance(self.stream, trio.abc.HalfCloseableStream):
                    await self.stream.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._eof = True
                return


class VirtualTime:
    """Run `run()` in the nursery of a `trio.run(..., clock=clock)` whose MockClock has no
    autojump (the default). Whenever every task is blocked and no worker thread is busy,
    the clock jumps to the next deadline."""

    def __init__(self, clock: trio.testing.MockClock, *, real_limit: float = 20.0) -> None:
        if clock.autojump_threshold != math.inf or clock.rate != 0:
            raise ValueError("VirtualTime drives a MockClock without autojump and with rate 0")
        self.clock = clock
        self.real_limit = real_limit  # a hung thread must fail the test, not hang it
        self._holds = 0

    @staticmethod
    def threads_busy() -> int:
        return trio.to_thread.current_default_thread_limiter().statistics().borrowed_tokens

    async def run(self) -> None:
        while True:
            await self._quiet()
            if self._holds:
                await trio.testing.wait_all_tasks_blocked(0.001)  # a frozen clock: wait in real time
                continue
            jump = trio.lowlevel.current_statistics().seconds_to_next_deadline
            if 0 < jump < math.inf:
                self.clock.jump(jump)
            elif jump == math.inf:
                raise RuntimeError("every task is blocked forever (no deadline, no thread)")
            else:
                await trio.lowlevel.checkpoint()  # an expired deadline is being processed

    async def settle(self) -> None:
        """Return once every other task is blocked and no thread is busy, without letting
        virtual time pass."""
        self._holds += 1
        try:
            await self._quiet()
        finally:
            self._holds -= 1

    async def _quiet(self) -> None:
        """Return when no other task is runnable and no worker thread is busy. The caller
        acts on that before its next checkpoint, so the answer is still true then."""
        started = time.monotonic()
        while True:
            await trio.testing.wait_all_tasks_blocked()
            if self.threads_busy():
                if time.monotonic() - started > self.real_limit:
                    raise RuntimeError(f"a worker thread ran for more than {self.real_limit}s of real time")
                # Wait for it in real time (its completion wakes the loop).
                await trio.testing.wait_all_tasks_blocked(0.001)
            elif trio.lowlevel.current_statistics().tasks_runnable == 0:
                # Not stale: another idle waiter (settle) woken with us may have run first
                # and made tasks runnable again.
                return



def run_virtual(main: Callable[[VirtualTime], Awaitable[None]], *, real_limit: float = 20.0) -> None:
    """trio.run `main` on a MockClock without autojump, moved by VirtualTime (never during a
    storage thread); `real_limit` bounds one worker thread in real seconds."""
    clock = trio.testing.MockClock()
    vt = VirtualTime(clock, real_limit=real_limit)

    async def root() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(vt.run)
            await main(vt)
            nursery.cancel_scope.cancel()

    trio.run(root, clock=clock)
