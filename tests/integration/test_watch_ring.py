"""Many concurrent WatchMessages and WatchInbound streams over real sockets get every event of
their owner exactly once, in id order, while the gateway serves them from a ring far smaller
than the run (8 events): bulk sends outrun it, streams opened from event 0 start older than
it, so the storage fallback and the way back to the ring are both exercised (issue 15, item 5).

The gateway runs in this process (the gRPC server of `smsgw serve`, on 127.0.0.1 port 0) so
that the test can give it the tiny ring; no phones, so every event comes from the API (sends,
cancels) or from inbound SMS stored as the bridge stores them. Expected events are read from
storage afterwards; streams are cancelled once they hold that many, never on a timer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry
from smsgw.v1 import inbound_pb2, inbound_pb2_grpc, messages_pb2, messages_pb2_grpc

from gateway.api.convert import event_to_pb, inbound_event_to_pb
from gateway.app import _GatewayThread, ensure_admin_account
from gateway.auth.passwords import hash_password
from gateway.auth.repository import AuditEntry, AuthRepository
from gateway.auth.scopes import ALL_SCOPES
from gateway.auth.tokens import JwtKeys, TokenCodec
from gateway.bus import LocalBus
from gateway.config import GrpcSettings, LimitsSettings, Settings
from gateway.devices.repository import DeviceRepository
from gateway.inbound.records import NewInbound
from gateway.inbound.repository import InboundRepository
from gateway.messages.repository import MessageRepository
from gateway.storage.engine import Database
from gateway.types import State, utcnow
from smsgw_client import Client, OutgoingMessage

RING = 8
_GUARD = 120.0  # a failure guard only: a stream that never gets its events fails the test


@dataclass
class Gateway:
    target: str
    db: Database
    bus: LocalBus
    tokens: dict[str, str]  # username -> access token
    owners: dict[str, str]  # username -> owner id


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    data_dir = tmp_path / "data"
    settings = Settings(
        data_dir=data_dir,
        grpc=GrpcSettings(listen="127.0.0.1:0"),
        limits=LimitsSettings(
            rate_per_token=100_000, burst_per_token=100_000, rate_per_source=100_000, burst_per_source=100_000,
            daily_segments=0,
        ),
    )  # fmt: skip
    db = Database(settings.database_url)
    db.migrate()
    auth = AuthRepository(db)
    password_path, _ = ensure_admin_account(auth, data_dir)
    auth.create_account("bob", hash_password("bob-password"), ALL_SCOPES, utcnow(), AuditEntry("account.create"))
    keys = JwtKeys.from_settings(settings.jwt, data_dir)
    codec = TokenCodec(keys, issuer=settings.jwt.issuer, audience=settings.jwt.audience, leeway=settings.jwt.leeway)
    bus = LocalBus()
    thread = _GatewayThread(settings, db, bus, CollectorRegistry(), codec, event_ring_capacity=RING)
    port = thread.start()
    target = f"127.0.0.1:{port}"
    tokens = {}
    with Client(target) as client:
        for user, password in (("admin", password_path.read_text().strip()), ("bob", "bob-password")):
            tokens[user] = client.issue_token(user, password, access_ttl=3600).access_token
    owners = {a.username: a.id for a in auth.list_accounts()}
    try:
        yield Gateway(target, db, bus, tokens, owners)
    finally:
        thread.begin_shutdown()
        thread.stop()
        db.close()


@dataclass
class Stream:
    """One watch stream read by its own thread over its own channel."""

    name: str
    got: list[Any] = field(default_factory=list)
    error: BaseException | None = None
    call: Any = None
    opened: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self, open_call: Any) -> Stream:
        def run() -> None:
            try:
                self.call = open_call()
                self.opened.set()
                for event in self.call:
                    self.got.append(event)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.CANCELLED:
                    self.error = exc
            except BaseException as exc:  # reported by the test
                self.error = exc
            finally:
                self.opened.set()

        self.thread = threading.Thread(target=run, name=self.name, daemon=True)
        self.thread.start()
        assert self.opened.wait(_GUARD)
        return self


def _metadata(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _watch_messages(target: str, token: str, after: int, message_ids: list[str] | None = None) -> Any:
    channel = grpc.insecure_channel(target)
    request = messages_pb2.WatchMessagesRequest(after_event_id=after, message_ids=message_ids or [])
    return messages_pb2_grpc.MessageServiceStub(channel).WatchMessages(
        request, metadata=_metadata(token), timeout=_GUARD
    )


def _watch_inbound(target: str, token: str, after: int, device_id: str) -> Any:
    channel = grpc.insecure_channel(target)
    request = inbound_pb2.WatchInboundRequest(after_event_id=after, device_id=device_id)
    return inbound_pb2_grpc.InboundServiceStub(channel).WatchInbound(request, metadata=_metadata(token), timeout=_GUARD)


def _pair(db: Database, owner_id: str) -> str:
    devices = DeviceRepository(db)
    code, _ = devices.create_pairing_code(owner_id, "phone", timedelta(minutes=10), utcnow())
    redeemed = devices.redeem_pairing_code(code, utcnow())
    assert redeemed is not None
    return redeemed[0].device_id


def _numbers(n: int, start: int) -> list[str]:
    return [f"+1415555{start + i:04d}" for i in range(n)]


def test_many_streams_get_every_event_once_in_order_across_a_tiny_ring(gateway: Gateway) -> None:
    alice, bob = gateway.owners["admin"], gateway.owners["bob"]
    alice_token, bob_token = gateway.tokens["admin"], gateway.tokens["bob"]
    phone1, phone2 = _pair(gateway.db, alice), _pair(gateway.db, alice)
    inbound = InboundRepository(gateway.db)

    def store_inbound(device_id: str, n: int, tag: str) -> None:
        """As the bridge does: store, then tell the bus."""
        items = [NewInbound(f"{tag}-{i}", "+15550007777", text=f"hello {i}") for i in range(n)]
        inbound.store(alice, device_id, items, utcnow())
        gateway.bus.notify_events()

    target = gateway.target
    streams = [Stream(f"alice-{i}").start(lambda: _watch_messages(target, alice_token, 0)) for i in range(8)]
    streams += [Stream(f"bob-{i}").start(lambda: _watch_messages(target, bob_token, 0)) for i in range(3)]
    inbound_streams = [Stream("in-all").start(lambda: _watch_inbound(target, alice_token, 0, ""))]
    inbound_streams.append(Stream("in-phone1").start(lambda: _watch_inbound(target, alice_token, 0, phone1)))

    sent: dict[str, list[str]] = {"admin": [], "bob": []}
    lock = threading.Lock()

    def send(user: str, k: int) -> None:
        with Client(target, gateway.tokens[user]) as client:
            message = client.send_message(_numbers(2, 10 * k), f"hello {k}")
        with lock:
            sent[user].append(message.id)

    def send_bulk(user: str, k: int) -> None:
        items = [OutgoingMessage(_numbers(1, 1000 + 40 * k + i), text=f"bulk {i}") for i in range(40)]
        with Client(target, gateway.tokens[user]) as client:
            results = client.send_messages(items)
        assert all(r.message is not None for r in results)
        with lock:
            sent[user].extend(r.message.id for r in results if r.message is not None)

    with ThreadPoolExecutor(4) as pool:
        first = [pool.submit(send, "admin", k) for k in range(20)] + [pool.submit(send, "bob", k) for k in range(8)]
        first.append(pool.submit(send_bulk, "admin", 0))
        store_inbound(phone1, 3, "a")
        for f in first:
            f.result()
        # Opened now from event 0, far behind an 8-event ring: storage first, then the ring.
        late = [Stream(f"alice-late-{i}").start(lambda: _watch_messages(target, alice_token, 0)) for i in range(3)]
        watched = sorted(sent["admin"])[:10]
        late.append(Stream("alice-filtered").start(lambda: _watch_messages(target, alice_token, 0, watched)))
        second = [pool.submit(send, "admin", k) for k in range(20, 40)] + [pool.submit(send_bulk, "bob", 1)]
        second.append(pool.submit(send_bulk, "admin", 2))
        store_inbound(phone2, 2, "b")
        store_inbound(phone1, 2, "c")
        for f in second:
            f.result()
    with Client(target, alice_token) as client:
        for message_id in sorted(sent["admin"])[5:15]:
            client.cancel_message(message_id)

    messages = MessageRepository(gateway.db)
    watched_set = set(watched)
    every = {user: messages.events_after(owner, 0, limit=100_000) for user, owner in (("admin", alice), ("bob", bob))}
    alice_events, bob_events = ([event_to_pb(e) for e in every[u]] for u in ("admin", "bob"))
    expected: dict[str, list[Any]] = {s.name: alice_events for s in streams + late if "alice" in s.name}
    expected.update({s.name: bob_events for s in streams if "bob" in s.name})
    expected["alice-filtered"] = [event_to_pb(e) for e in every["admin"] if e.message_id in watched_set]
    expected["in-all"] = [inbound_event_to_pb(e) for e in inbound.events_after(alice, 0, limit=1000)]
    expected["in-phone1"] = [inbound_event_to_pb(e) for e in inbound.events_after(alice, 0, limit=1000, device_id=phone1)]
    assert len(alice_events) > 20 * RING and len(expected["in-all"]) == 7 and len(expected["in-phone1"]) == 5
    # The cancels reach the filtered stream too.
    assert any(e.message_id in watched_set and e.state == State.CANCELLED for e in every["admin"])

    every_stream = streams + late + inbound_streams
    deadline = time.monotonic() + _GUARD  # a failure guard, not a measurement
    while time.monotonic() < deadline and any(
        len(s.got) < len(expected[s.name]) and s.error is None for s in every_stream
    ):
        time.sleep(0.05)
    for s in every_stream:
        s.call.cancel()
    for s in every_stream:
        assert s.thread is not None
        s.thread.join(_GUARD)
        assert s.error is None, (s.name, s.error)
        assert [e.event_id for e in s.got] == [e.event_id for e in expected[s.name]], s.name
        assert s.got == expected[s.name], s.name  # the ring's records are storage's, field for field
    alice_ids, bob_ids = set(sent["admin"]), set(sent["bob"])
    assert all(e.message_id in alice_ids for s in streams + late if "alice" in s.name for e in s.got)
    assert all(e.message_id in bob_ids for s in streams if "bob" in s.name for e in s.got)
