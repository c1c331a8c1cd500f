"""The measured scenarios, each against a running server and fleet, each bounded in count
and time. Times are `time.monotonic()`, the one clock the driver and the fleet share.

Besides rates and latencies, each load scenario reports CPU per operation, the server's and
the fleet's apart (issue 15 "Targets"): on a shared 2-core machine a rate moves with whatever
else runs, while CPU seconds per message move much less. A window ends once the work it
caused is done (every message DELIVERED), so the receipts and the watcher are counted.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from smsgw.v1 import common_pb2, devices_pb2, devices_pb2_grpc, messages_pb2, messages_pb2_grpc

from gateway.bench.processes import FleetProc, ServerRun

__all__ = ["Api", "Cpu", "Watch", "percentiles", "pair_phones", "latency", "throughput", "bulk", "idle", "quiet", "storm"]

_DRAIN_TIMEOUT = 60.0


def _connect_timeout(phones: int) -> float:
    """A bound on bringing `phones` sessions up: a minute plus 50 ms a phone."""
    return 60.0 + phones * 0.05
_BULK_MAX = 1000


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/max in milliseconds (nearest rank), and the count."""
    if not values:
        return {"n": 0}
    ordered = sorted(values)

    def rank(p: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(p * len(ordered)) - 1))] * 1000

    return {"n": len(ordered), "p50_ms": rank(0.50), "p95_ms": rank(0.95), "p99_ms": rank(0.99), "max_ms": ordered[-1] * 1000}


class Api:
    """The raw generated stubs over one channel: the bench's own client cost stays small."""

    def __init__(self, target: str, token: str) -> None:
        self.channel = grpc.aio.insecure_channel(target)
        self.metadata = (("authorization", f"Bearer {token}"),)
        self.messages = messages_pb2_grpc.MessageServiceStub(self.channel)
        self.devices = devices_pb2_grpc.DeviceServiceStub(self.channel)
        self.run = uuid.uuid4().hex[:8]
        self._keys = itertools.count()

    def request(self, device_id: str) -> messages_pb2.SendMessageRequest:
        n = next(self._keys)
        return messages_pb2.SendMessageRequest(
            phone_numbers=[f"+1555{n % 10_000_000:07d}"],
            text_message=messages_pb2.TextMessage(text=f"bench {n}"),
            device_id=device_id,
            idempotency_key=f"bench-{self.run}-{n}",
        )

    async def send(self, device_id: str) -> tuple[str, float]:
        reply = await self.messages.SendMessage(self.request(device_id), metadata=self.metadata)
        return reply.id, time.monotonic()

    async def close(self) -> None:
        await self.channel.close()


@dataclass
class Watch:
    """One WatchMessages stream from now on: when each message reached each state."""

    api: Api
    after_event_id: int | None = None
    seen: dict[int, dict[str, float]] = field(default_factory=dict)
    last_event_id: int = 0
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        request = messages_pb2.WatchMessagesRequest()
        if self.after_event_id is not None:
            request.after_event_id = self.after_event_id
        async for event in self.api.messages.WatchMessages(request, metadata=self.api.metadata):
            self.seen.setdefault(event.state, {}).setdefault(event.message_id, time.monotonic())
            self.last_event_id = event.event_id

    async def until(self, state: int, ids: Sequence[str], timeout: float) -> bool:
        """Wait until every id reached `state` (or the timeout); True when all did."""
        deadline = time.monotonic() + timeout
        seen = self.seen.setdefault(state, {})
        while time.monotonic() < deadline:
            if all(i in seen for i in ids):
                return True
            if self._task is not None and self._task.done():
                self._task.result()  # the stream failed: say why
            await asyncio.sleep(0.02)
        return False

    def times(self, state: int, ids: Sequence[str]) -> list[float]:
        seen = self.seen.get(state, {})
        return [seen[i] for i in ids if i in seen]

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, grpc.aio.AioRpcError):
                pass


class Cpu:
    """The server's and the fleet's CPU (user + system, every thread) from its creation on."""

    def __init__(self, server: ServerRun, fleet: FleetProc | None = None) -> None:
        self.server, self.fleet = server, fleet
        self.server0 = server.cpu_seconds()
        self.fleet0 = fleet.cpu_seconds() if fleet is not None else 0.0

    def per(self, count: int, unit: str) -> dict[str, float]:
        """CPU so far in all, and per `unit` ("message", "reconnect") in ms over `count` of them."""
        server = self.server.cpu_seconds() - self.server0
        out = {"server_cpu_s": server, f"server_cpu_ms_per_{unit}": 1000 * server / max(1, count)}
        if self.fleet is not None:
            fleet = self.fleet.cpu_seconds() - self.fleet0
            out |= {"fleet_cpu_s": fleet, f"fleet_cpu_ms_per_{unit}": 1000 * fleet / max(1, count)}
        return out


async def _bounded(jobs: Sequence[Callable[[], Awaitable[Any]]], in_flight: int) -> list[Any]:
    slots = asyncio.Semaphore(in_flight)

    async def one(job: Callable[[], Awaitable[Any]]) -> Any:
        async with slots:
            return await job()

    return list(await asyncio.gather(*(one(j) for j in jobs)))


async def pair_phones(api: Api, fleet: FleetProc, count: int) -> list[str]:
    """Register `count` phones the way a user does: a pairing code each, redeemed by the phone."""

    async def code() -> str:
        request = devices_pb2.CreatePairingCodeRequest(device_name="bench", ttl_seconds=3600)
        return (await api.devices.CreatePairingCode(request, metadata=api.metadata)).code

    device_ids: list[str] = []
    for start in range(0, count, 1000):
        codes = await _bounded([code] * min(1000, count - start), 32)
        reply = await fleet.call("pair", timeout=120, codes=codes)
        device_ids.extend(reply["device_ids"])
    return device_ids


async def latency(api: Api, fleet: FleetProc, devices: Sequence[str], rate: float, duration: float,
                  server: ServerRun | None = None) -> dict[str, Any]:
    """Open loop at `rate` messages/s spread over `devices`: SendMessage return -> the phone's
    Deliver, and -> DELIVERED on a WatchMessages stream; with `server`, the server's and the
    fleet's CPU per message from the first call to the last DELIVERED."""
    watch = Watch(api)
    watch.start()
    await asyncio.sleep(0.3)  # the stream is open before the first send
    await fleet.call("delivers")  # forget earlier runs
    count = max(1, int(rate * duration))
    called: dict[str, float] = {}
    returned: dict[str, float] = {}
    errors: Counter[str] = Counter()

    async def one(i: int) -> None:
        t0 = time.monotonic()
        try:
            message_id, t1 = await api.send(devices[i % len(devices)])
        except grpc.aio.AioRpcError as exc:
            errors[exc.code().name] += 1
            return
        called[message_id], returned[message_id] = t0, t1

    cpu = Cpu(server, fleet) if server is not None else None
    start = time.monotonic()
    tasks = []
    for i in range(count):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    offered = count / max(1e-9, time.monotonic() - start)  # the pace the calls were made at
    await asyncio.gather(*tasks)
    ids = list(returned)
    delivered_all = await watch.until(common_pb2.DELIVERED, ids, _DRAIN_TIMEOUT)
    spent = cpu.per(len(ids), "message") if cpu is not None else {}
    await watch.stop()
    delivers = (await fleet.call("delivers", timeout=60))["delivers"]
    to_phone = [delivers[i] - returned[i] for i in ids if i in delivers]
    to_phone_from_call = [delivers[i] - called[i] for i in ids if i in delivers]
    delivered = watch.seen.get(common_pb2.DELIVERED, {})
    to_delivered = [delivered[i] - returned[i] for i in ids if i in delivered]
    return {
        "messages": count,
        "phones": len(devices),
        "offered_per_s": offered,
        "send_errors": sum(errors.values()),
        "send_errors_by_code": dict(errors),
        "all_delivered": delivered_all,
        "deliver_after_return": percentiles(to_phone),
        "deliver_after_call": percentiles(to_phone_from_call),
        "delivered_after_return": percentiles(to_delivered),
        "sent_to_phone_before_return": sum(1 for x in to_phone if x < 0),
        **spent,
    }


async def throughput(api: Api, devices: Sequence[str], duration: float, in_flight: int = 64, *,
                     server: ServerRun | None = None, fleet: FleetProc | None = None) -> dict[str, Any]:
    """Closed loop, `in_flight` SendMessage calls outstanding for `duration`; the rate is the
    messages over the time from the first call to the last ACCEPTED stored. With `server`, the
    CPU per message from the first call until every message is DELIVERED (the receipts after
    ACCEPTED are part of a message's cost)."""
    watch = Watch(api)
    watch.start()
    await asyncio.sleep(0.3)
    ids: list[str] = []
    errors = 0
    cpu = Cpu(server, fleet) if server is not None else None
    start = time.monotonic()
    stop_at = start + duration
    counter = itertools.count()

    async def worker() -> None:
        nonlocal errors
        while time.monotonic() < stop_at:
            try:
                message_id, _ = await api.send(devices[next(counter) % len(devices)])
                ids.append(message_id)
            except grpc.aio.AioRpcError:
                errors += 1

    await asyncio.gather(*(worker() for _ in range(in_flight)))
    api_end = time.monotonic()
    drained = await watch.until(common_pb2.ACCEPTED, ids, _DRAIN_TIMEOUT)
    accepted = watch.times(common_pb2.ACCEPTED, ids)
    spent: dict[str, Any] = {}
    if cpu is not None:
        spent["cpu_all_delivered"] = await watch.until(common_pb2.DELIVERED, ids, _DRAIN_TIMEOUT)
        spent |= cpu.per(len(ids), "message")
    await watch.stop()
    last = max(accepted, default=api_end)
    return {
        "messages": len(ids),
        "phones": len(devices),
        "in_flight": in_flight,
        "send_errors": errors,
        "api_per_s": len(ids) / (api_end - start),
        "accepted_per_s": len(accepted) / (last - start),
        "all_accepted": drained,
        "accepted_lag_s": max(0.0, last - api_end),
        **spent,
    }


def _bulk_request(api: Api, devices: Sequence[str], offset: int, size: int, *, hold: bool = False) -> Any:
    """`hold`: scheduled a week ahead, so the messages are stored but sent to no phone during
    the run (the bulk figure is the enqueue; dispatch has its own figure)."""
    items = [api.request(devices[(offset + k) % len(devices)]) for k in range(size)]
    if hold:
        at = timestamp_pb2.Timestamp(seconds=int(time.time()) + 7 * 86400)
        for item in items:
            item.schedule_at.CopyFrom(at)
    return messages_pb2.SendMessagesRequest(messages=items)


async def bulk(api: Api, devices: Sequence[str], recipients: int, *, concurrency: int = 2,
               server: ServerRun | None = None) -> dict[str, Any]:
    """SendMessages calls of up to 1,000 one-recipient messages each (held: scheduled a week
    ahead); recipients stored per second, and with `server` its CPU per recipient."""
    sizes = [min(_BULK_MAX, recipients - s) for s in range(0, recipients, _BULK_MAX)]
    requests = [_bulk_request(api, devices, i * _BULK_MAX, size, hold=True) for i, size in enumerate(sizes)]
    failed = 0

    async def call(request: Any) -> None:
        nonlocal failed
        reply = await api.messages.SendMessages(request, metadata=api.metadata)  # type: ignore[attr-defined]
        failed += sum(1 for r in reply.results if r.HasField("error"))

    cpu = Cpu(server) if server is not None else None
    start = time.monotonic()
    await _bounded([lambda r=r: call(r) for r in requests], concurrency)
    elapsed = time.monotonic() - start
    spent: dict[str, Any] = {}
    if cpu is not None:
        spent = cpu.per(recipients, "recipient")
        spent["server_cpu_us_per_recipient"] = 1000 * spent.pop("server_cpu_ms_per_recipient")
    return {"recipients": recipients, "calls": len(requests), "item_errors": failed, "recipients_per_s": recipients / elapsed,
            "held_for_days": 7, **spent}


async def quiet(server: ServerRun, timeout: float = 120.0) -> float:
    """Wait until the server is done with earlier work (under 5 % of a core for a second);
    returns the seconds waited. The idle figures mean nothing while a backlog drains."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        cpu0 = server.cpu_seconds()
        await asyncio.sleep(1.0)
        if server.cpu_seconds() - cpu0 < 0.05:
            break
    return time.monotonic() - start


async def idle(server: ServerRun, fleet: FleetProc, count: int, window: float) -> dict[str, Any]:
    """A fresh server's RSS with no phones, then with `count` connected and idle, and its CPU
    over `window` seconds of keepalives.

    CPU per session open: the server's and the fleet's from asking the phones online until
    the server is quiet again, over the sessions opened (phones with no message waiting:
    the upgrade, the credentials, Hello, the open's write job, Welcome; the 503s and retries
    past `bridge.max_opening`; and the last second of keepalives `quiet` waits out)."""
    baseline = server.rss_kib()
    before = (await fleet.call("status"))["connected"]
    opening = Cpu(server, fleet)
    await fleet.call("online", count=count)
    t0 = time.monotonic()
    try:
        connected_at = await fleet.wait_connected(count, timeout=_connect_timeout(count))
    except RuntimeError:  # measure what did connect; the table says how many
        connected_at = math.inf
    settled = await quiet(server)  # the last handshakes' storage calls
    with_phones = server.rss_kib()
    status = await fleet.call("status")
    opens = opening.per(status["connected"] - before, "open")
    cpu0, t1 = server.cpu_seconds(), time.monotonic()
    await asyncio.sleep(window)
    cpu = (server.cpu_seconds() - cpu0) / (time.monotonic() - t1)
    up = status["connected"]
    return {
        "phones": up,
        "asked": count,
        "connect_all_s": connected_at - t0,
        "rss_baseline_mib": baseline / 1024,
        "rss_mib": with_phones / 1024,
        "rss_kib_per_session": (with_phones - baseline) / max(1, up),
        "idle_cpu_percent": cpu * 100,
        "window_s": window,
        "settle_s": settled,
        "still_connected": (await fleet.call("status"))["connected"],
        "opened": status["connected"] - before,
        **opens,
    }


async def storm(server: ServerRun, fleet: FleetProc, token: str, api: Api,
                devices: Sequence[str]) -> tuple[dict[str, Any], Api]:
    """Each phone holds one unaccepted message; the server restarts (phones get 1012 and
    their messages return to PENDING); time from the new server listening until every
    phone reconnected and every message is ACCEPTED. Returns the new server's Api too.

    CPU per reconnect: the new server's and the fleet's from the moment it listens until
    every message is DELIVERED, over the phones. It holds a session open and the one
    redelivered message each phone answers (an upper bound on the open alone), and the
    503s and retries of phones past `bridge.max_opening`."""
    await fleet.call("accept", value=False)
    await fleet.call("delivers")
    before = Watch(api)  # its last event id is where the new server's watch resumes
    before.start()
    await asyncio.sleep(0.3)
    ids: list[str] = []
    for offset in range(0, len(devices), _BULK_MAX):
        size = min(_BULK_MAX, len(devices) - offset)
        reply = await api.messages.SendMessages(_bulk_request(api, devices, offset, size), metadata=api.metadata)  # type: ignore[attr-defined]
        ids.extend(r.message.id for r in reply.results if r.HasField("message"))
    await before.until(common_pb2.DISPATCHED, ids, _connect_timeout(len(ids)))
    deadline = time.monotonic() + _connect_timeout(len(ids))
    while (await fleet.call("status"))["delivers"] < len(ids) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    held = (await fleet.call("status"))["delivers"]
    await before.stop()
    await api.close()
    await fleet.call("accept", value=True)
    server.stop()
    started = server.start()
    cpu = Cpu(server, fleet)
    new_api = Api(server.grpc, token)
    watch = Watch(new_api, after_event_id=before.last_event_id)
    watch.start()
    reconnected = await fleet.wait_connected(len(devices), timeout=_connect_timeout(len(devices)))
    drained = await watch.until(common_pb2.ACCEPTED, ids, _connect_timeout(len(devices)))
    accepted = watch.times(common_pb2.ACCEPTED, ids)
    delivered = await watch.until(common_pb2.DELIVERED, ids, _DRAIN_TIMEOUT)
    spent = cpu.per(len(devices), "reconnect")
    await watch.stop()
    return {
        "phones": len(devices),
        "held_before_restart": held,
        "reconnected_s": reconnected - started,
        "drained_s": (max(accepted) - started) if accepted else math.inf,
        "all_accepted": drained,
        "accepted": len(accepted),
        "cpu_all_delivered": delivered,
        **spent,
    }, new_api
