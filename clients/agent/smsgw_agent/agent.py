"""One simulated phone: a WebSocket session to the bridge, a durable store, a modem.

The phone side of the protocol (DESIGN, "Phone protocol"; ``device.proto``):

* connect to ``/device/v1`` with ``Authorization: Bearer <token>`` (or
  ``Pairing <code>`` the first time; the Welcome then carries the credentials,
  which are used for every later connect), send Hello, wait for Welcome;
* on Deliver: drop duplicates by id (re-sending their receipts), otherwise
  hold the message, answer Receipt(ACCEPTED), and send it through the modem
  in the background, reporting SENT / FAILED and DELIVERED per recipient;
* keep every receipt until the bridge Acks its event id, and re-send the
  unacknowledged ones, in order, right after each Welcome;
* on Drop: never send a message whose sending has not started;
* reconnect with :class:`~smsgw_agent.backoff.Backoff` (RELIABILITY 8) until
  cancelled, stopping for good on close 4003 (REPLACED), 4004
  (CREDENTIALS_REVOKED) or HTTP 401/403 at the upgrade.

The store logic is sync and socket-free: :meth:`PhoneAgent.attach_session`,
:meth:`PhoneAgent.handle_event` and :meth:`PhoneAgent.detach_session` are the
whole interface between it and the I/O loop in :meth:`PhoneAgent.run`, so unit
tests drive it with a pair of sans-I/O ``DeviceSession`` objects.

Nothing here logs a message body or a phone number; log lines carry ids only.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import trio
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.trio.client import ClientConnection
from websockets.trio.client import connect as ws_connect

from device_bridge.protocol import (
    MAX_WINDOW,
    AckReceived,
    CloseCode,
    Credentials,
    DeliverReceived,
    Delivery,
    DeviceSession,
    DropReceived,
    Encoding,
    Event,
    Receipt,
    ReceiptState,
    RemoteProtocolError,
    SessionState,
    Side,
    SimInfo,
    WelcomeReceived,
)

from .backoff import Backoff
from .modem import SimulatedModem

__all__ = ["AgentStatistics", "PhoneAgent", "DEFAULT_SIMS", "STOP_CLOSE_CODES"]

log = logging.getLogger(__name__)

DEFAULT_SIMS: tuple[SimInfo, ...] = (SimInfo(1, "Sim Operator", "US"),)

#: Close codes after which the phone must not reconnect (device.proto).
STOP_CLOSE_CODES: dict[int, str] = {
    CloseCode.REPLACED: "replaced",
    CloseCode.CREDENTIALS_REVOKED: "credentials_revoked",
}
#: HTTP statuses at the upgrade that mean "these credentials will never work".
_STOP_HTTP_STATUSES = frozenset({401, 403})

_ENCODINGS = {"proto": Encoding.PROTO, "json": Encoding.JSON}
_OPEN = SessionState.OPEN


class _PhoneLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Prefix each line with the phone's name (ids only ever follow)."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        name = (self.extra or {}).get("phone")
        return (f"{name}: {msg}" if name else msg), kwargs


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(slots=True, eq=False)
class _Progress:
    """What the phone did with one held message (the durable part of the store)."""

    delivery: Delivery
    event_ids: list[int] = field(default_factory=list)  # every receipt made for it
    started: bool = False  # the modem was asked to send (Drop is too late now)
    finished: bool = False  # every recipient has its SENT / FAILED
    dropped: bool = False  # a Drop arrived before sending started


@dataclass(frozen=True, slots=True)
class AgentStatistics:
    """Counters of one phone (trio's ``statistics()`` convention)."""

    connected: bool
    sessions: int  # Welcomes received
    received: int  # Delivers, duplicates included
    duplicates: int  # Delivers for a message already held (or parked)
    accepted: int  # distinct messages accepted
    parked: int  # held back by pause_accepting
    held: int
    sending: int  # accepted, not finished
    sent: int  # SENT receipts made
    failed: int  # FAILED receipts made
    delivered: int  # DELIVERED receipts made
    dropped: int  # Drops honoured (message never sent)
    receipts: int  # receipts made
    unacked: int  # receipts the bridge has not acknowledged yet


class PhoneAgent:
    """A simulated phone holding one WebSocket session at a time.

    Args:
        device_url: ``ws://HOST:PORT/device/v1``, or ``wss://`` for a bridge serving TLS.
        token: The device token for ``Authorization: Bearer``.
        pairing_code: A one-time code for the first connect, used when no
            token is known; the Welcome's credentials replace it.
        encoding: ``"proto"`` or ``"json"`` (the subprotocol to offer).
        window: The flow-control window to advertise, 1..1000.
        modem: Sends the messages.
        sims: The SIMs to report in Hello.
        app_version: Reported in Hello (and as the User-Agent).
        backoff: Reconnect delays; a default :class:`Backoff` when None.
        name: A label for log lines and the simulator.
        on_credentials: Called (synchronously) with the credentials a pairing
            Welcome carries, e.g. to persist them at once.
        open_timeout: Seconds for TCP connect plus the HTTP upgrade.
        ping_interval: The phone's own keepalive pings (None = off), so it
            notices a bridge that went silent.
        ping_timeout: Seconds to wait for a pong.
        welcome_timeout: Seconds to wait for Welcome after Hello before
            giving the connection up (and reconnecting).
        ssl_context: TLS client settings for a ``wss://`` URL, e.g.
            ``ssl.create_default_context(cafile=...)`` for a private CA; None
            uses the system's roots. Refused with a ``ws://`` URL.

    Attributes (test hooks; read them, do not write them, except
    ``pause_accepting``):
        received: Every Deliver's message id in arrival order, duplicates included.
        accepted: Ids of every message the phone ever accepted.
        held: Accepted messages by id (Dropped ones removed).
        unacked: Receipts the bridge has not acknowledged, by event id, in order.
        parked: Delivers held back while ``pause_accepting`` is True.
        pause_accepting: While True, new Delivers are parked, not accepted (no
            ACCEPTED receipt): a phone that dies between receiving and
            accepting. Parked ones are forgotten when the session ends; see
            :meth:`accept_parked` to accept them instead.
        sessions: How many Welcomes arrived.
        device_id: From the last Welcome.
        credentials: From a pairing Welcome.
        closed_reason: Why :meth:`run` stopped for good (``"replaced"``,
            ``"credentials_revoked"``, ``"http_401"``, ``"http_403"``), or None.
        close_code: The close code (or HTTP status) behind ``closed_reason``.
    """

    def __init__(
        self,
        device_url: str,
        *,
        token: str | None = None,
        pairing_code: str | None = None,
        encoding: str = "proto",
        window: int = 16,
        modem: SimulatedModem,
        sims: Sequence[SimInfo] = DEFAULT_SIMS,
        app_version: str = "smsgw-agent/0.1",
        backoff: Backoff | None = None,
        name: str = "",
        on_credentials: Callable[[Credentials], None] | None = None,
        open_timeout: float = 10.0,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        welcome_timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if not token and not pairing_code:
            raise ValueError("a phone needs a device token or a pairing code")
        if encoding not in _ENCODINGS:
            raise ValueError("encoding must be 'proto' or 'json'")
        if not 1 <= window <= MAX_WINDOW:
            raise ValueError(f"window must be in 1..{MAX_WINDOW}")
        if ssl_context is not None and not device_url.startswith("wss://"):
            raise ValueError("ssl_context needs a wss:// device_url")
        self.device_url = device_url
        self.ssl_context = ssl_context
        self.token = token or None
        self.pairing_code = pairing_code or None
        self.encoding = _ENCODINGS[encoding]
        self.window = window
        self.modem = modem
        self.sims = tuple(sims)
        self.app_version = app_version
        self.backoff = backoff if backoff is not None else Backoff()
        self.name = name
        self.on_credentials = on_credentials
        self.open_timeout = open_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.welcome_timeout = welcome_timeout
        self._log = _PhoneLog(log, {"phone": name})

        # The durable store: survives every reconnect.
        self.held: dict[str, Delivery] = {}
        self._progress: dict[str, _Progress] = {}
        self.unacked: dict[int, Receipt] = {}
        self._next_event_id = 1
        self.accepted: set[str] = set()
        # Test hooks.
        self.received: list[str] = []
        self.parked: dict[str, Delivery] = {}
        self.pause_accepting = False
        self.sessions = 0
        self.device_id: str | None = None
        self.credentials: Credentials | None = None
        self.closed_reason: str | None = None
        self.close_code: int | None = None
        # Counters.
        self._duplicates = 0
        self._sent = 0
        self._failed = 0
        self._delivered = 0
        self._dropped = 0
        self._receipts = 0

        # The current session (None between sessions) and its plumbing.
        self._proto: DeviceSession | None = None
        self._ws: ClientConnection | None = None
        self._session_scope: trio.CancelScope | None = None
        self._frames_ready = trio.Event()
        self._connected = trio.Event()
        self._changed = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._task_status: trio.TaskStatus[None] | None = None
        self._stopping = False
        self._running = False

    def __repr__(self) -> str:
        return (
            f"<PhoneAgent {self.name or self.device_id or '?'} sessions={self.sessions} "
            f"held={len(self.held)} unacked={len(self.unacked)}>"
        )

    # --- observation --------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while a session is open (between a Welcome and its end)."""
        return self._connected.is_set()

    def statistics(self) -> AgentStatistics:
        """Return the phone's counters."""
        sending = sum(1 for p in self._progress.values() if not p.finished and not p.dropped)
        return AgentStatistics(
            connected=self.connected,
            sessions=self.sessions,
            received=len(self.received),
            duplicates=self._duplicates,
            accepted=len(self.accepted),
            parked=len(self.parked),
            held=len(self.held),
            sending=sending,
            sent=self._sent,
            failed=self._failed,
            delivered=self._delivered,
            dropped=self._dropped,
            receipts=self._receipts,
            unacked=len(self.unacked),
        )

    def held_unacked_ids(self) -> list[str]:
        """Held messages whose ACCEPTED receipt is not acknowledged yet (for Hello)."""
        ids: dict[str, None] = {}
        for receipt in self.unacked.values():
            if receipt.state is ReceiptState.ACCEPTED and receipt.message_id in self.held:
                ids[receipt.message_id] = None
        return list(ids)

    async def wait_connected(self) -> None:
        """Return once a session is open: at once if one is, else at the next Welcome."""
        await self._connected.wait()

    async def wait_for(self, predicate: Callable[[PhoneAgent], bool]) -> None:
        """Wait until ``predicate(self)`` holds; it is re-checked after every change.

        Bound it with ``trio.fail_after`` in tests.
        """
        while not predicate(self):
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # --- the store: sync, no I/O (the adapter's interface) -------------------

    def use_nursery(self, nursery: trio.Nursery | None) -> None:
        """Run background work (modem sends, delivery reports) in ``nursery``.

        :meth:`run` sets its own; unit tests that drive :meth:`handle_event`
        without sockets pass theirs.
        """
        self._nursery = nursery

    def attach_session(self, proto: DeviceSession) -> None:
        """Make ``proto`` the current session; receipts go out once it is OPEN.

        Call it right after the WebSocket opened and Hello was queued.
        """
        if proto.side is not Side.PHONE:
            raise ValueError("a phone needs a PHONE session")
        self._proto = proto
        self._frames_ready = trio.Event()

    def detach_session(self) -> None:
        """Forget the current session: it ended, cleanly or not.

        Parked (never accepted) Delivers are forgotten, as a phone that crashed
        would; the bridge re-sends them. Receipts made from now on wait in
        :attr:`unacked` for the next Welcome.
        """
        if self._proto is not None:
            self._proto.receive_closed()
        self._proto = None
        self._ws = None
        self._frames_ready.set()  # let a writer still waiting notice
        self.parked.clear()
        if self._connected.is_set():
            self._connected = trio.Event()
        self._notify()

    def handle_event(self, event: Event) -> None:
        """Act on one event of the current session; queue the answers on it."""
        if isinstance(event, DeliverReceived):
            self._on_deliver(event.delivery)
        elif isinstance(event, AckReceived):
            for event_id in event.event_ids:
                self.unacked.pop(event_id, None)
        elif isinstance(event, DropReceived):
            self._on_drop(event.message_id)
        elif isinstance(event, WelcomeReceived):
            self._on_welcome(event)
        else:  # HelloReceived / ReceiptReceived only reach a BRIDGE session
            raise TypeError(f"unexpected event on the phone: {type(event).__name__}")
        self._notify()

    def accept_parked(self) -> None:
        """Accept every parked Deliver now (e.g. after clearing ``pause_accepting``)."""
        parked, self.parked = self.parked, {}
        for delivery in parked.values():
            if delivery.message_id not in self.held:
                self._accept(delivery)
        self._notify()

    def _on_welcome(self, event: WelcomeReceived) -> None:
        if event.credentials is not None:
            self.credentials = event.credentials
            self.token = event.credentials.token
            self.pairing_code = None  # spent
            if self.on_credentials is not None:
                self.on_credentials(event.credentials)
        self.device_id = event.device_id
        self.sessions += 1
        self.backoff.reset()
        self._log.debug("= session %d open as device %s (window %d, %d receipts to re-send)",
                       self.sessions, event.device_id, event.window, len(self.unacked))
        # Unacknowledged receipts go out again, in event-id order (dicts keep
        # insertion order and ids only grow).
        for receipt in list(self.unacked.values()):
            self._transmit(receipt)
        self._connected.set()
        if self._task_status is not None:
            task_status, self._task_status = self._task_status, None
            task_status.started()

    def _on_deliver(self, delivery: Delivery) -> None:
        message_id = delivery.message_id
        self.received.append(message_id)
        progress = self._progress.get(message_id)
        if message_id in self.held and progress is not None:
            # A duplicate (flagged by the protocol or not: after a reconnect
            # only the store remembers). Never send again; answer with what
            # the bridge may have missed.
            self._duplicates += 1
            pending = [self.unacked[e] for e in progress.event_ids if e in self.unacked]
            if pending:
                for receipt in pending:
                    self._transmit(receipt)
            else:
                self._emit(progress, ReceiptState.ACCEPTED)
            return
        if message_id in self.parked:
            self._duplicates += 1
            return
        if self.pause_accepting:
            self.parked[message_id] = delivery
            return
        self._accept(delivery)

    def _accept(self, delivery: Delivery) -> None:
        if self._nursery is None:
            raise RuntimeError("PhoneAgent.use_nursery() was not called (run() does it)")
        message_id = delivery.message_id
        progress = _Progress(delivery)
        self.held[message_id] = delivery
        self._progress[message_id] = progress
        self.accepted.add(message_id)
        self._emit(progress, ReceiptState.ACCEPTED)
        self._nursery.start_soon(self._send_message, progress)

    def _on_drop(self, message_id: str) -> None:
        if self.parked.pop(message_id, None) is not None:
            self._dropped += 1
            return
        progress = self._progress.get(message_id)
        if progress is None or progress.started or message_id not in self.held:
            return  # unknown, or too late: the modem already has it
        progress.dropped = True
        del self.held[message_id]
        self._dropped += 1
        self._log.debug("x message %s dropped before sending", message_id)

    def _emit(self, progress: _Progress, state: ReceiptState, recipient_index: int = 0, error: str = "") -> None:
        """Make a receipt, keep it until acknowledged, and send it if a session is open."""
        event_id = self._next_event_id
        self._next_event_id += 1
        receipt = Receipt(
            event_id, progress.delivery.message_id, state, recipient_index=recipient_index, error=error, time=_now()
        )
        self.unacked[event_id] = receipt
        progress.event_ids.append(event_id)
        self._receipts += 1
        self._transmit(receipt)

    def _transmit(self, receipt: Receipt) -> None:
        proto = self._proto
        if proto is not None and proto.state is _OPEN:
            proto.send_receipt(receipt)
            self._frames_ready.set()

    # --- background work (the agent's nursery, not the session's) -----------

    async def _send_message(self, progress: _Progress) -> None:
        delivery = progress.delivery
        if progress.dropped:
            return
        progress.started = True
        for index, number in enumerate(delivery.phone_numbers):
            ok, error = await self.modem.send(number, delivery, recipient_index=index)
            if ok:
                self._sent += 1
                self._emit(progress, ReceiptState.SENT, index)
                if delivery.with_delivery_report and self.modem.delivery_reports:
                    assert self._nursery is not None
                    self._nursery.start_soon(self._report_delivery, progress, index)
            else:
                self._failed += 1
                self._emit(progress, ReceiptState.FAILED, index, error or "generic_failure")
            self._notify()
        progress.finished = True
        self._notify()

    async def _report_delivery(self, progress: _Progress, index: int) -> None:
        delivery = progress.delivery
        if await self.modem.wait_delivery_report(delivery.phone_numbers[index], delivery, index):
            self._delivered += 1
            self._emit(progress, ReceiptState.DELIVERED, index)
            self._notify()

    # --- I/O ----------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold a session to the bridge, reconnecting with backoff, until cancelled.

        Calls ``task_status.started()`` at the first Welcome. Returns (without
        that, if it never got in) when the bridge closes with 4003 REPLACED or
        4004 CREDENTIALS_REVOKED, when the upgrade is refused with HTTP 401 or
        403, or after :meth:`aclose`; :attr:`closed_reason` says which.
        Background sends stop with it.
        """
        if self._running:
            raise RuntimeError("PhoneAgent.run() is already running")
        self._running = True
        self._task_status = task_status
        try:
            async with trio.open_nursery() as nursery:
                self.use_nursery(nursery)
                while not self._stopping:
                    if await self._connect_once():
                        break
                    if self._stopping:
                        break
                    delay = self.backoff.next_delay()
                    self._log.debug("- reconnecting in %.2f s", delay)
                    await trio.sleep(delay)
                nursery.cancel_scope.cancel()
        finally:
            self.use_nursery(None)
            self._task_status = None
            self._running = False

    async def _connect_once(self) -> bool:
        """One connection attempt and session; True when the phone must stop."""
        if self.token:
            authorization = f"Bearer {self.token}"
        else:
            assert self.pairing_code is not None
            authorization = f"Pairing {self.pairing_code}"
        try:
            async with ws_connect(
                self.device_url,
                subprotocols=[self.encoding.value],  # type: ignore[list-item]
                additional_headers={"Authorization": authorization},
                user_agent_header=self.app_version,
                compression=None,
                proxy=None,
                open_timeout=self.open_timeout,
                ping_interval=self.ping_interval,
                ping_timeout=self.ping_timeout,
                close_timeout=5,
                **({"ssl": self.ssl_context} if self.device_url.startswith("wss://") else {}),
            ) as ws:
                return await self._converse(ws)
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in _STOP_HTTP_STATUSES:
                self._stop(f"http_{status}", status)
                return True
            self._log.debug("! upgrade refused with HTTP %d", status)
        except (OSError, TimeoutError, WebSocketException, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            tls_error = exc if isinstance(exc, ssl.SSLError) else exc.__cause__
            if isinstance(tls_error, ssl.SSLError):
                # A wrong CA or certificate does not fix itself: say so above DEBUG.
                self._log.warning("! TLS handshake failed: %s", tls_error.reason or type(tls_error).__name__)
            else:
                self._log.debug("! connection failed: %s", type(exc).__name__)
        return False

    async def _converse(self, ws: ClientConnection) -> bool:
        if ws.subprotocol != self.encoding.value:
            self._log.warning("! the bridge did not accept subprotocol %s", self.encoding.value)
            await ws.aclose(CloseCode.UNSUPPORTED_SUBPROTOCOL, "subprotocol not negotiated")
            return False
        proto = DeviceSession(Side.PHONE, self.encoding, window=self.window)
        proto.send_hello(app_version=self.app_version, sims=self.sims, held_message_ids=self.held_unacked_ids())
        self.attach_session(proto)
        self._ws = ws
        close_code: int | None = None
        try:
            with trio.CancelScope() as scope:
                self._session_scope = scope
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer, ws, proto)
                    close_code = await self._reader(ws, proto)
                    nursery.cancel_scope.cancel()
        finally:
            self._session_scope = None
            if self._proto is proto:
                self.detach_session()
        if close_code is not None and close_code in STOP_CLOSE_CODES:
            self._stop(STOP_CLOSE_CODES[close_code], close_code)
            return True
        return self._stopping

    async def _reader(self, ws: ClientConnection, proto: DeviceSession) -> int | None:
        """Feed frames to the protocol until the connection ends; return the close code received."""
        while True:
            # Until Welcome, wait a bounded time: a bridge that took the
            # upgrade but never answers Hello must not hold the phone forever.
            deadline = trio.current_time() + self.welcome_timeout if proto.state is not _OPEN else float("inf")
            try:
                with trio.move_on_at(deadline) as waited:
                    data = await ws.recv()
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else None
                self._log.debug("= session closed (code %s)", code)
                return code
            if waited.cancelled_caught:
                self._log.warning("! no Welcome within %.0f s", self.welcome_timeout)
                await ws.aclose(1001, "no Welcome in time")
                return None
            try:
                proto.receive_frame(data)
            except RemoteProtocolError as exc:
                self._log.warning("! bridge broke the protocol: %s", exc)
                await ws.aclose(exc.code, exc.reason)
                return None
            for event in proto.events_received():
                self.handle_event(event)

    async def _writer(self, ws: ClientConnection, proto: DeviceSession) -> None:
        """Send whatever the protocol queued, in order; the only task that sends."""
        try:
            while True:
                for frame in proto.frames_to_send():
                    await ws.send(frame)
                if self._proto is not proto:
                    return
                ready = self._frames_ready
                await ready.wait()
                if self._proto is not proto:
                    return
                if self._frames_ready is ready:
                    self._frames_ready = trio.Event()
        except ConnectionClosed:
            return  # the reader sees the same close

    def _stop(self, reason: str, code: int) -> None:
        self.closed_reason = reason
        self.close_code = code
        self._log.warning("x stopping for good: %s (%d)", reason, code)

    async def drop_session(self) -> None:
        """Kill the current connection abruptly, as a phone losing its network would.

        The TCP connection is reset (no close frame: the bridge sees 1006).
        Parked Delivers are forgotten; the agent reconnects after
        ``backoff.next_delay()``. Returns once the session is detached.
        """
        ws, scope = self._ws, self._session_scope
        if ws is None:
            self.parked.clear()
            return
        self.detach_session()
        _abort_transport(ws)
        await trio.aclose_forcefully(ws.stream)
        if scope is not None:
            scope.cancel()

    async def aclose(self, code: int = 1001, reason: str = "phone going away") -> None:
        """Close the session cleanly and make :meth:`run` return. Idempotent."""
        self._stopping = True
        ws = self._ws
        if ws is not None:
            with trio.move_on_after(5):
                try:
                    await ws.aclose(code, reason)
                except ConnectionClosed:
                    pass
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()  # a backoff sleep, or a close that hung


def _abort_transport(ws: ClientConnection) -> None:
    """Arrange for the close of ``ws``'s socket to send a TCP RST (SO_LINGER 0)."""
    stream: Any = ws.stream
    sock = getattr(stream, "socket", None)
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
