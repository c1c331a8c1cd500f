"""The bus across processes on one PostgreSQL (issue 16): LocalBus for the callers in this
process, and LISTEN/NOTIFY for the others.

Every signal is delivered here at once by the LocalBus this class is, and published on the
channel `smsgw_bus` for the other processes (gateways, bridges, workers on the same
database). Signals carry ids only (device and message ids), never bodies, as JSON payloads
under PostgreSQL's 8,000-byte limit: a big signal is split into several. Each payload names
the process that sent it, so a process never hears its own signals twice.

Two connections per process, each in its own daemon thread, both autocommit:
- the sender coalesces like LocalBus (a burst of signals is one flush) and sends each flush
  as one transaction of `pg_notify` calls (NOTIFY takes a cluster-wide lock at commit: once
  per flush, not per signal);
- the listener LISTENs and hands what arrives to the LocalBus delivery (thread-safe, never
  blocking: a listener that stops reading fills the server's notification queue, and then
  every NOTIFY fails).

A signal is a wake-up, not the data: a process that missed some (its listener's connection
dropped; a sender killed between a commit and its NOTIFY) catches up from storage. After the
listener reconnects (backoff 0.1 s doubling to 5 s, with jitter) it LISTENs again, then calls
the `on_gap` callbacks: a gateway refills its event ring from the log (done here: every
attached gateway gets `events`), a bridge reloads its sessions' queues (its callback). A sender
that cannot reach the database keeps what it has not sent (signals are idempotent) and tries
again after the same backoff.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from gateway.bus.local import LocalBus
from gateway.webhooks.outbox import ENQUEUED

__all__ = ["PostgresBus", "CHANNEL", "MAX_PAYLOAD", "libpq_url", "payloads"]

log = logging.getLogger(__name__)

CHANNEL = "smsgw_bus"
MAX_PAYLOAD = 7_900  # bytes of JSON per NOTIFY (PostgreSQL refuses 8,000 and more)
_BACKOFF_FIRST, _BACKOFF_MAX = 0.1, 5.0
_POLL = 0.5  # seconds the listener waits for notifications before checking whether to stop
# Payload keys: o = origin process, then one signal kind: w work, r revoked, s settings (device
# id lists), q queued ({device: [message ids]}), x replaced ({device: session id}), e events
# (with h: webhook deliveries were stored), a tokens revoked (gateways re-read their deny lists).
_KINDS = {"w": LocalBus.notify_work, "r": LocalBus.notify_revoked, "s": LocalBus.notify_settings}


def libpq_url(url: str) -> str:
    """A libpq URL for psycopg from a SQLAlchemy one (drops the `+psycopg` driver name)."""
    parsed = make_url(url)
    if not parsed.drivername.startswith("postgresql"):
        raise ValueError(f"the PostgreSQL bus needs a postgresql:// database URL, not {parsed.drivername}")
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def payloads(origin: str, kind: str, body: Any = None) -> Iterator[str]:
    """The JSON payloads of one signal, each at most MAX_PAYLOAD bytes: a list of device ids,
    or a mapping of device -> message ids, split where it must be."""
    head = {"o": origin}
    if kind == "a":
        yield json.dumps({**head, "a": 1})
        return
    if kind in ("e", "h"):  # events; "h": and webhook deliveries were stored
        yield json.dumps({**head, "e": 1, **({"h": 1} if kind == "h" else {})})
        return
    base = len(json.dumps({**head, kind: [] if kind not in ("q", "x") else {}}, separators=(",", ":")))
    if kind == "x":  # device -> session id, a few entries at a time
        pairs = list(body.items())
        per = max(1, (MAX_PAYLOAD - base) // 80)  # an entry is ~65 bytes (two ids and the JSON)
        for i in range(0, len(pairs), per):
            yield json.dumps({**head, "x": dict(pairs[i : i + per])}, separators=(",", ":"))
        return
    if kind == "q":
        chunk: dict[str, list[str]] = {}
        size = base
        for device_id, ids in body.items():
            for message_id in ids:
                cost = len(message_id) + 3 + (0 if device_id in chunk else len(device_id) + 6)
                if chunk and size + cost > MAX_PAYLOAD:
                    yield json.dumps({**head, "q": chunk}, separators=(",", ":"))
                    chunk, size = {}, base
                    cost = len(message_id) + 3 + len(device_id) + 6
                chunk.setdefault(device_id, []).append(message_id)
                size += cost
        if chunk:
            yield json.dumps({**head, "q": chunk}, separators=(",", ":"))
        return
    ids: list[str] = []
    size = base
    for device_id in body:
        cost = len(device_id) + 3
        if ids and size + cost > MAX_PAYLOAD:
            yield json.dumps({**head, kind: ids}, separators=(",", ":"))
            ids, size = [], base
        ids.append(device_id)
        size += cost
    if ids:
        yield json.dumps({**head, kind: ids}, separators=(",", ":"))


class _Backoff:
    def __init__(self) -> None:
        self._next = _BACKOFF_FIRST

    def reset(self) -> None:
        self._next = _BACKOFF_FIRST

    def wait(self, stop: threading.Event) -> None:
        delay = self._next * random.uniform(0.8, 1.2)
        self._next = min(self._next * 2, _BACKOFF_MAX)
        stop.wait(delay)


@dataclass
class _Pending:
    """Signals not sent yet, coalesced (a burst is one flush, as LocalBus's hops are)."""

    devices: dict[str, set[str]] = field(default_factory=lambda: {"w": set(), "r": set(), "s": set()})
    queued: dict[str, set[str]] = field(default_factory=dict)
    replaced: dict[str, str] = field(default_factory=dict)
    events: bool = False
    hooks: bool = False  # with `events`: webhook deliveries were stored
    auth: bool = False

    def __bool__(self) -> bool:
        return bool(self.events or self.auth or self.queued or self.replaced or any(self.devices.values()))

    def update(self, newer: _Pending) -> None:
        """Add `newer`'s signals (a failed flush put back before what came since: a newer
        session of a device wins)."""
        for kind, ids in newer.devices.items():
            self.devices[kind] |= ids
        for device_id, ids in newer.queued.items():
            self.queued.setdefault(device_id, set()).update(ids)
        self.replaced.update(newer.replaced)
        self.events, self.hooks, self.auth = self.events or newer.events, self.hooks or newer.hooks, self.auth or newer.auth

    def payloads(self, origin: str) -> list[str]:
        out: list[str] = []
        if self.auth:
            out += payloads(origin, "a")
        if self.replaced:
            out += payloads(origin, "x", self.replaced)
        for kind in ("r", "s", "w"):  # the order LocalBus delivers them in
            if self.devices[kind]:
                out += payloads(origin, kind, sorted(self.devices[kind]))
        if self.queued:
            out += payloads(origin, "q", {d: sorted(ids) for d, ids in self.queued.items()})
        if self.events:
            out += payloads(origin, "h" if self.hooks else "e")
        return out


class PostgresBus(LocalBus):
    """LocalBus plus NOTIFY to the other processes on the database at `url` (the project's
    SQLAlchemy URL, `postgresql+psycopg://...`, or a plain libpq URL)."""

    def __init__(self, url: str, *, delivers_webhooks: bool = False) -> None:
        """`delivers_webhooks`: this process runs the webhook worker (`smsgw worker`). Any
        other process hands the worker its "deliveries were stored" flag (the outbox's
        ENQUEUED) with its events signal, so that workers claim only when there is something
        to deliver, as in one process."""
        super().__init__()
        self._delivers_webhooks = delivers_webhooks
        self.origin = uuid.uuid4().hex[:12]
        self._conninfo = libpq_url(url)
        self._stop = threading.Event()
        self._out_lock = threading.Condition()
        self._out = _Pending()  # under _out_lock
        self._auth_callbacks: list[Callable[[], None]] = []
        self._gap_callbacks: list[Callable[[], None]] = []
        self.listening = threading.Event()  # set while the listener is LISTENing (tests, health)
        self.reconnects = 0  # listener reconnections since start
        self._listener_pid: int | None = None
        self._threads = [
            threading.Thread(target=self._listen_forever, name="smsgw-bus-listen", daemon=True),
            threading.Thread(target=self._send_forever, name="smsgw-bus-send", daemon=True),
        ]

    # ---- life -----------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        """Start both threads; returns once the listener LISTENs (OSError past `timeout`)."""
        for thread in self._threads:
            thread.start()
        if not self.listening.wait(timeout):
            raise OSError(f"the bus could not LISTEN on the database within {timeout:.0f} s")

    def close(self) -> None:
        self._stop.set()
        with self._out_lock:
            self._out_lock.notify_all()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=_POLL + 5)

    def on_gap(self, callback: Callable[[], None]) -> None:
        """Call `callback` (from the listener's thread) after each reconnection of the listener:
        signals sent meanwhile were lost, catch up from storage."""
        self._gap_callbacks.append(callback)

    @property
    def listener_pid(self) -> int | None:
        """The server process id of the listener's connection (tests terminate it)."""
        return self._listener_pid

    # ---- signals: here at once, and to the others -------------------------------------

    def notify_work(self, device_ids: Iterable[str]) -> None:
        ids = set(device_ids)
        super().notify_work(ids)
        self._publish("w", ids)

    def notify_revoked(self, device_ids: Iterable[str]) -> None:
        ids = set(device_ids)
        super().notify_revoked(ids)
        self._publish("r", ids)

    def notify_settings(self, device_ids: Iterable[str]) -> None:
        ids = set(device_ids)
        super().notify_settings(ids)
        self._publish("s", ids)

    def notify_queued(self, queued: Mapping[str, Iterable[str]]) -> None:
        sets = {device_id: set(ids) for device_id, ids in queued.items()}
        super().notify_queued(sets)
        if not sets:
            return
        with self._out_lock:
            for device_id, ids in sets.items():
                self._out.queued.setdefault(device_id, set()).update(ids)
            self._out_lock.notify()

    def notify_replaced(self, sessions: Mapping[str, str]) -> None:
        if not sessions:
            return
        with self._out_lock:
            self._out.replaced.update(sessions)
            self._out_lock.notify()

    def notify_auth(self) -> None:
        """Tokens were revoked here: the other gateways re-read their deny lists at once
        (they would within `jobs.expiry_interval` anyway)."""
        with self._out_lock:
            self._out.auth = True
            self._out_lock.notify()

    def on_auth(self, callback: Callable[[], None]) -> None:
        """Call `callback` (from the listener's thread) when another process revoked tokens,
        and after a reconnection (revocations may have been missed)."""
        self._auth_callbacks.append(callback)

    def notify_events(self) -> None:
        super().notify_events()
        # Set after a commit that stored deliveries, before its events signal. Cleared here
        # and sent on: one set by a commit in between is covered too, as the worker the
        # signal wakes claims everything committed before it claims.
        hooks = not self._delivers_webhooks and ENQUEUED.is_set()
        if hooks:
            ENQUEUED.clear()
        with self._out_lock:
            self._out.events = True
            self._out.hooks = self._out.hooks or hooks
            self._out_lock.notify()

    def _publish(self, kind: str, ids: set[str]) -> None:
        if not ids:
            return
        with self._out_lock:
            self._out.devices[kind] |= ids
            self._out_lock.notify()

    # ---- the sender -------------------------------------------------------------------

    def _take(self) -> _Pending | None:
        """Wait for something to send, and take it (None: stopping)."""
        with self._out_lock:
            while not (self._stop.is_set() or self._out):
                self._out_lock.wait()
            if self._stop.is_set():
                return None
            taken, self._out = self._out, _Pending()
        return taken

    def _put_back(self, taken: _Pending) -> None:
        """A flush that failed: its signals go out with the next one."""
        with self._out_lock:
            taken.update(self._out)
            self._out = taken

    def _send_forever(self) -> None:
        backoff = _Backoff()
        connection: psycopg.Connection[Any] | None = None
        while not self._stop.is_set():
            taken = self._take()
            if taken is None:
                break
            sent = taken.payloads(self.origin)
            try:
                if connection is None or connection.closed:
                    connection = psycopg.connect(self._conninfo, autocommit=True, connect_timeout=10)
                with connection.transaction():
                    for text in sent:
                        connection.execute("SELECT pg_notify(%s, %s)", (CHANNEL, text))
                backoff.reset()
            except psycopg.Error as exc:
                log.warning("bus: could not send %d signals (%s); retrying", len(sent), type(exc).__name__)
                self._put_back(taken)
                if connection is not None:
                    connection.close()
                connection = None
                backoff.wait(self._stop)
        if connection is not None:
            connection.close()

    # ---- the listener -----------------------------------------------------------------

    def _listen_forever(self) -> None:
        backoff = _Backoff()
        first = True
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=10) as connection:
                    connection.execute(f"LISTEN {CHANNEL}")
                    self._listener_pid = connection.info.backend_pid
                    self.listening.set()
                    if not first:
                        self.reconnects += 1
                        self._caught_up()
                    first = False
                    backoff.reset()
                    while not self._stop.is_set():
                        for notification in connection.notifies(timeout=_POLL):
                            self._received(notification.payload)
            except psycopg.Error as exc:
                self.listening.clear()
                if self._stop.is_set():
                    break
                log.warning("bus: listener connection lost (%s); reconnecting", type(exc).__name__)
                backoff.wait(self._stop)
        self.listening.clear()

    def _caught_up(self) -> None:
        """After a reconnection: every attached gateway refills from the log, then the
        registered callbacks catch up the rest."""
        if self._delivers_webhooks:
            ENQUEUED.set()  # deliveries may have been stored meanwhile: claim once to see
        LocalBus.notify_events(self)
        self._run_callbacks([*self._auth_callbacks, *self._gap_callbacks])

    @staticmethod
    def _run_callbacks(callbacks: list[Callable[[], None]]) -> None:
        for callback in list(callbacks):
            try:
                callback()
            except Exception:
                log.exception("bus: a callback failed")

    def _received(self, text: str) -> None:
        try:
            payload = json.loads(text)
        except ValueError:
            log.warning("bus: a payload that is not JSON on %s (ignored)", CHANNEL)
            return
        if not isinstance(payload, dict) or payload.get("o") == self.origin:
            return
        for kind, deliver in _KINDS.items():
            ids = payload.get(kind)
            if isinstance(ids, list) and ids:
                deliver(self, {str(i) for i in ids})
        if "a" in payload:
            self._run_callbacks(self._auth_callbacks)
        replaced = payload.get("x")
        if isinstance(replaced, dict) and replaced:
            LocalBus.replaced_elsewhere(self, {str(d): str(session) for d, session in replaced.items()})
        queued = payload.get("q")
        if isinstance(queued, dict) and queued:
            LocalBus.notify_queued(self, {str(d): {str(i) for i in ids} for d, ids in queued.items() if isinstance(ids, list)})
        if "h" in payload and self._delivers_webhooks:
            ENQUEUED.set()  # before the events wake-up: the worker's wake_if_enqueued reads it
        if "e" in payload:
            LocalBus.notify_events(self)
