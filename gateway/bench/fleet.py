"""Simulated phones for `smsgw bench`: many lean sessions in one trio process.

Not the reference phone (clients/agent): no modem, no pacing, nothing on disk. A phone
answers a Deliver at once with ACCEPTED, SENT and DELIVERED (one frame each, as a phone
with an instant modem would, written to the socket together), or holds it unanswered (the
reconnect storm), and records when each Deliver arrived on `time.monotonic()`, the clock
every process on the machine shares, so the driver can put it beside the moment its
SendMessage returned. The fleet shares the server's cores, so what it costs is CPU the
server did not get: the bench reports it per message and per reconnect.

Driven over stdin/stdout, one JSON object a line (`python -m gateway.bench.fleet URL`):
  {"op": "pair", "codes": [...]}    pair one phone per code; -> {"device_ids": [...]}
  {"op": "online", "count": k}      keep phones 0..k-1 connected, the rest disconnected
  {"op": "status"}                  -> {"connected": n, "delivers": n, "errors": {...}}
  {"op": "accept", "value": bool}   answer Delivers (true) or hold them (false)
  {"op": "delivers"}                -> {"delivers": {message_id: t}} and forgets them
  {"op": "quit"}
"""

from __future__ import annotations

import json
import os
import random
import resource
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import trio
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.trio.client import ClientConnection
from websockets.trio.client import connect as ws_connect

from device_bridge.protocol import (
    DeliverReceived,
    DeviceSession,
    Encoding,
    Receipt,
    ReceiptState,
    RemoteProtocolError,
    Side,
    SimInfo,
    WelcomeReceived,
)
from smsgw_agent.agent import retry_after_seconds

__all__ = ["main", "raise_open_files_limit"]

_WINDOW = 64
_PAIR_CONCURRENCY = 50
_CONNECT_CONCURRENCY = 200
_OPEN_TIMEOUT = 60.0
_RECONNECT_MAX = 2.0  # seconds: the longest wait between two attempts of one phone


async def _send_frames(ws: ClientConnection, frames: Sequence[bytes | str]) -> None:
    """Write the frames the protocol queued in one socket write: the three receipts of a
    Deliver cost the fleet one send instead of three. Same frames, same order as one
    `ws.send` each (which is this, per frame); the fleet's CPU per message must stay below
    the server's, or the server's figures are capped by its phones (issue 15)."""
    if len(frames) <= 1:
        for frame in frames:
            await ws.send(frame)
        return
    async with ws.send_context():  # websockets' own: checks the state, then writes what was queued
        for frame in frames:
            if isinstance(frame, str):
                ws.protocol.send_text(frame.encode())
            else:
                ws.protocol.send_binary(frame)


def raise_open_files_limit(needed: int) -> None:
    """Lift the soft RLIMIT_NOFILE to the hard one; refuse clearly when even that is short."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise SystemExit(f"need {needed} open files, the hard limit is {hard} (raise it: ulimit -Hn)")
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclass(eq=False)
class _Phone:
    index: int
    authorization: str  # "Pairing <code>" until the Welcome carries credentials
    device_id: str = ""
    want_online: bool = True
    wanted: trio.Event | None = None  # set when an offline phone is wanted online again
    connected: bool = False
    paired: trio.Event = field(default_factory=trio.Event)
    cancel: trio.CancelScope | None = None
    next_event_id: int = 0


class Fleet:
    def __init__(self, url: str) -> None:
        self.url = url
        self.phones: list[_Phone] = []
        self.accept = True
        self.delivers: dict[str, float] = {}
        self.errors: Counter[str] = Counter()
        self.connect_slots = trio.Semaphore(_CONNECT_CONCURRENCY)
        self.nursery: trio.Nursery | None = None

    @property
    def connected(self) -> int:
        return sum(p.connected for p in self.phones)

    async def run_phone(self, phone: _Phone) -> None:
        """Connect while wanted; after any end, reconnect after a short random wait (1012), or
        after the Retry-After of a 503."""
        delay = 0.05
        while True:
            while not phone.want_online:
                # An event, not a poll: 9,000 phones kept offline polling every 50 ms were
                # 180,000 wake-ups a second, charged to the fleet's CPU per message.
                phone.wanted = trio.Event()
                await phone.wanted.wait()
            pause: float | None = None  # the bridge's Retry-After, when it refused with one
            with trio.CancelScope() as scope:
                phone.cancel = scope
                await self.connect_slots.acquire()  # bounded handshakes, not sessions
                holding = True
                try:
                    async with ws_connect(
                        self.url,
                        subprotocols=[Encoding.PROTO.value],  # type: ignore[list-item]
                        additional_headers={"Authorization": phone.authorization},
                        compression=None,
                        proxy=None,
                        open_timeout=_OPEN_TIMEOUT,
                        ping_interval=None,  # the bridge pings; websockets answers
                        close_timeout=2,
                    ) as ws:
                        self.connect_slots.release()
                        holding = False
                        delay = 0.05
                        await self.converse(phone, ws)
                except InvalidStatus as exc:
                    self.errors[f"http_{exc.response.status_code}"] += 1
                    # As the reference phone does (smsgw_agent): no sooner than Retry-After.
                    retry_after = retry_after_seconds(exc.response.headers.get("Retry-After"))
                    if retry_after is not None:
                        pause = retry_after
                except ConnectionClosed as exc:
                    code = exc.rcvd.code if exc.rcvd else 1006
                    self.errors[f"close_{code}"] += 1
                except (OSError, WebSocketException, TimeoutError, RemoteProtocolError) as exc:
                    self.errors[type(exc).__name__] += 1
                finally:
                    if holding:
                        self.connect_slots.release()
                    phone.connected = False
                    phone.cancel = None
            await trio.sleep(pause if pause is not None else random.uniform(0.0, delay))
            delay = min(delay * 2, _RECONNECT_MAX)

    async def converse(self, phone: _Phone, ws: ClientConnection) -> None:
        proto = DeviceSession(Side.PHONE, Encoding.PROTO, window=_WINDOW)
        proto.send_hello(app_version="smsgw-bench/1", sims=[SimInfo(1)])
        await _send_frames(ws, proto.frames_to_send())
        async for data in ws:
            now = time.monotonic()
            proto.receive_frame(data)
            for event in proto.events_received():
                if isinstance(event, WelcomeReceived):
                    if event.credentials is not None:
                        phone.authorization = f"Bearer {event.credentials.token}"
                        phone.device_id = event.credentials.device_id
                        phone.paired.set()
                    phone.connected = True
                elif isinstance(event, DeliverReceived):
                    self.delivers.setdefault(event.delivery.message_id, now)
                    if self.accept and not event.duplicate:
                        self.answer(phone, proto, event)
            await _send_frames(ws, proto.frames_to_send())
            if not phone.want_online:
                return

    @staticmethod
    def answer(phone: _Phone, proto: DeviceSession, event: DeliverReceived) -> None:
        d = event.delivery
        indices = d.recipient_indices or tuple(range(len(d.phone_numbers)))

        def receipt(state: ReceiptState, **kwargs: Any) -> None:
            phone.next_event_id += 1
            proto.send_receipt(Receipt(phone.next_event_id, d.message_id, state, attempt=d.attempt, **kwargs))

        receipt(ReceiptState.ACCEPTED, recipient_indices=indices)
        for state in (ReceiptState.SENT, ReceiptState.DELIVERED):
            for i in indices:
                receipt(state, recipient_index=i)

    async def pair(self, codes: Sequence[str]) -> list[str]:
        assert self.nursery is not None
        new = [_Phone(len(self.phones) + i, f"Pairing {code}") for i, code in enumerate(codes)]
        self.phones.extend(new)
        slots = trio.Semaphore(_PAIR_CONCURRENCY)

        async def start(phone: _Phone) -> None:
            async with slots:
                assert self.nursery is not None
                self.nursery.start_soon(self.run_phone, phone)
                await phone.paired.wait()

        with trio.fail_after(_OPEN_TIMEOUT + 10 * len(codes) / _PAIR_CONCURRENCY):
            async with trio.open_nursery() as waiting:
                for phone in new:
                    waiting.start_soon(start, phone)
        return [p.device_id for p in new]

    def online(self, count: int) -> None:
        for phone in self.phones:
            phone.want_online = phone.index < count
            if not phone.want_online and phone.cancel is not None:
                phone.cancel.cancel()
            elif phone.want_online and phone.wanted is not None:
                phone.wanted.set()

    def handle(self, request: dict[str, Any]) -> dict[str, Any] | None:
        """The commands that need no waiting; None for the others."""
        op = request.get("op")
        if op == "online":
            self.online(int(request["count"]))
            return {}
        if op == "status":
            return {"connected": self.connected, "delivers": len(self.delivers), "errors": dict(self.errors)}
        if op == "accept":
            self.accept = bool(request["value"])
            return {}
        if op == "delivers":
            taken, self.delivers = self.delivers, {}
            return {"delivers": taken}
        return None


async def _serve(url: str) -> None:
    fleet = Fleet(url)
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    buffer = b""
    async with trio.open_nursery() as nursery:
        fleet.nursery = nursery
        while True:
            while b"\n" not in buffer:
                chunk = await stdin.receive_some(65536)
                if not chunk:  # the driver went away
                    nursery.cancel_scope.cancel()
                    return
                buffer += chunk
            line, _, buffer = buffer.partition(b"\n")
            request = json.loads(line)
            if request.get("op") == "quit":
                nursery.cancel_scope.cancel()
                return
            try:
                if request.get("op") == "pair":
                    reply: dict[str, Any] | None = {"device_ids": await fleet.pair(request["codes"])}
                else:
                    reply = fleet.handle(request)
                if reply is None:
                    reply = {"error": f"unknown op {request.get('op')!r}"}
            except (KeyError, ValueError, TypeError, trio.TooSlowError) as exc:
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        raise SystemExit("usage: python -m gateway.bench.fleet DEVICE_URL MAX_PHONES")
    url, max_phones = args[0], int(args[1])
    if not url.startswith("ws://127.0.0.1:"):
        raise SystemExit("the bench fleet connects to loopback only (ws://127.0.0.1:PORT/...)")
    raise_open_files_limit(max_phones + 100)
    trio.run(_serve, url)


if __name__ == "__main__":
    main()
