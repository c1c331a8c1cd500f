"""One simulated phone: a WebSocket session to the bridge, a durable store, a modem.

The phone side of the protocol (DESIGN, "Phone protocol"; ``device.proto``):

* connect to ``/device/v1`` with ``Authorization: Bearer <token>`` (or
  ``Pairing <code>`` the first time; the Welcome then carries the credentials,
  which are used for every later connect), send Hello, wait for Welcome.
  Hello reports the SIMs, and in ``held`` every recipient the phone holds
  that is not finished or whose ACCEPTED receipt is not acknowledged yet
  (``held_message_ids``: their messages), so the bridge marks them ACCEPTED,
  does not re-send them, and Drops those cancelled or expired meanwhile;
* a Deliver asks for a subset of a message's recipients
  (``recipient_indices[k]`` is the recipient index of ``phone_numbers[k]``)
  for one ``attempt``; a message may come in several Delivers (other
  recipients, or a retry with ``attempt + 1`` after a retryable failure).
  The store is keyed by ``(message_id, recipient_index, attempt)``: a Deliver
  whose keys are all held is a duplicate and is never sent again (the phone
  re-sends the unacknowledged receipts of those recipients, or answers a
  fresh ACCEPTED when none are left); new keys are held and answered with
  Receipt(ACCEPTED, recipient_indices, attempt);
* held recipients are sent through the modem in the background, one after
  the other in Deliver order, from SIM ``sim_number`` (0 = the first SIM), all
  ``parts`` parts of a recipient per send (0 = 1 part), as Android's
  ``sendMultipartTextMessage`` does. The phone reports SENT with
  ``parts_done = k`` as part k's sent-callback fires, DELIVERED with
  ``parts_done = k`` per part delivery report (when asked and the carrier
  reports), and FAILED with a ``failure_class`` and ``parts_done`` = parts
  sent before the failure; every receipt names one ``recipient_index`` and
  the Deliver's ``attempt``;
* keep every receipt until the bridge Acks its event id, and re-send the
  unacknowledged ones, in order, right after each Welcome; a Reject (the bridge
  will never store that event) drops it from the queue too, logged by event id
  and reason only, and it is never sent again;
* on Drop: never start sending any not-yet-started recipient of that message;
* an SMS the phone "receives" (:meth:`PhoneAgent.receive_sms`) is forwarded as
  Inbound with a phone-made id and event id, kept until the bridge Acks that
  event id and re-sent (same id, so the server stores one copy) after each
  Welcome, together with the unacknowledged receipts, in event-id order; a body
  over the protocol's bound is cut to it and flagged ``truncated``;
* on Settings (and ``Welcome.settings``): keep the latest pacing in
  :attr:`PhoneAgent.settings`. The bridge does the pacing; the phone only
  keeps it;
* reconnect with :class:`~smsgw_agent.backoff.Backoff` (RELIABILITY 8) until
  cancelled, stopping for good on close 4003 (REPLACED), 4004
  (CREDENTIALS_REVOKED) or HTTP 401/403 at the upgrade. Pairing with a
  private-mode server also sends its private token (``PRIVATE_TOKEN_HEADER``).
  A pairing connection that ends before its Welcome is retried with the same
  code: until the device first connects with its token, the bridge answers it
  with the same device id and a fresh token (docs/protocol.md, "Pairing").

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
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, NamedTuple

import trio
from smsgw_client.envelope import EnvelopeError, KeyRing
from smsgw_client.foreign import UNMARKED_FORMATS, UnmarkedFormat, open_data, open_text, recognise
from smsgw_client.segments import count_segments
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.trio.client import ClientConnection
from websockets.trio.client import connect as ws_connect

from device_bridge.protocol import (
    MAX_WINDOW,
    PRIVATE_TOKEN_HEADER,
    AckReceived,
    CloseCode,
    Credentials,
    DeliverReceived,
    Delivery,
    DeviceSession,
    DropReceived,
    Encoding,
    Event,
    FailureClass,
    HeldRecipient,
    InboundSms,
    PacingSettings,
    Receipt,
    ReceiptState,
    RejectReceived,
    RemoteProtocolError,
    SessionState,
    SettingsReceived,
    Side,
    SimInfo,
    WelcomeReceived,
    cut_inbound_body,
)

from .backoff import Backoff
from .modem import SimulatedModem, failure_code

__all__ = [
    "AgentStatistics", "PhoneAgent", "RecipientKey", "DEFAULT_SIMS", "STOP_CLOSE_CODES", "NO_SUCH_SIM",
    "MAX_RETRY_AFTER", "BUG_CLOSE_CODES", "retry_after_seconds",
]

log = logging.getLogger(__name__)

DEFAULT_SIMS: tuple[SimInfo, ...] = (SimInfo(1, "Sim Operator", "US"),)

#: Close codes after which the phone must not reconnect (device.proto).
STOP_CLOSE_CODES: dict[int, str] = {
    CloseCode.REPLACED: "replaced",
    CloseCode.CREDENTIALS_REVOKED: "credentials_revoked",
}
#: Close codes that say this app sent something the bridge will never take (docs/protocol.md
#: "Close codes"): the next session would end the same way, so wait the longest step.
BUG_CLOSE_CODES = frozenset({CloseCode.BAD_FRAME, CloseCode.PROTOCOL_VIOLATION})
#: The error of a FAILED (GENERIC_FAILURE) receipt for a Deliver naming a SIM the phone lacks.
NO_SUCH_SIM = "no_such_sim"
#: HTTP statuses at the upgrade that mean "these credentials will never work".
_STOP_HTTP_STATUSES = frozenset({401, 403})
#: The longest Retry-After a phone honours, in seconds: more is a misconfigured proxy.
MAX_RETRY_AFTER = 60.0


def retry_after_seconds(value: str | None) -> float | None:
    """The pause an HTTP ``Retry-After`` header asks for (the delta-seconds form the bridge
    sends with 503 when too many sessions are opening), capped at :data:`MAX_RETRY_AFTER`;
    None when absent or not a number of seconds."""
    if value is None or not value.strip().isdigit():
        return None
    return min(float(value.strip()), MAX_RETRY_AFTER)

_ENCODINGS = {"proto": Encoding.PROTO, "json": Encoding.JSON}
_OPEN = SessionState.OPEN


class _PhoneLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Prefix each line with the phone's name (ids only ever follow)."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        name = (self.extra or {}).get("phone")
        return (f"{name}: {msg}" if name else msg), kwargs


def _now() -> datetime:
    return datetime.now(timezone.utc)


class RecipientKey(NamedTuple):
    """The phone's duplicate key: one recipient of one message, for one attempt."""

    message_id: str
    recipient_index: int
    attempt: int


@dataclass(slots=True, eq=False, repr=False)
class _Recipient:
    """What the phone did with one held recipient (the durable part of the store)."""

    key: RecipientKey
    delivery: Delivery  # the Deliver that brought it
    number: str  # never logged, never in repr
    parts: int  # Deliver.parts, 0 read as 1 (for an encrypted text: the plaintext's parts)
    # Report each part (parts_done = k)? Not when the server could not count the parts (an
    # encrypted text): it would read part 1 of 3 as all of them, so only the last is reported.
    report_parts: bool = True
    event_ids: list[int] = field(default_factory=list)  # every receipt made for it
    started: bool = False  # the modem was asked to send (Drop is too late now)
    finished: bool = False  # SENT of every part, or FAILED
    failed: bool = False
    dropped: bool = False  # a Drop arrived before sending started
    parts_sent: int = 0
    parts_delivered: int = 0

    def __repr__(self) -> str:
        return (
            f"<_Recipient {self.key} parts={self.parts} sent={self.parts_sent} delivered={self.parts_delivered}"
            f"{' started' if self.started else ''}{' finished' if self.finished else ''}"
            f"{' failed' if self.failed else ''}{' dropped' if self.dropped else ''}>"
        )


@dataclass(frozen=True, slots=True)
class AgentStatistics:
    """Counters of one phone (trio's ``statistics()`` convention); counts are per recipient unless said."""

    connected: bool
    sessions: int  # Welcomes received
    received: int  # Delivers, duplicates included
    duplicates: int  # Delivers naming a recipient (and attempt) already held, or a parked one again
    accepted: int  # distinct recipient keys (message, recipient, attempt) accepted
    parked: int  # Delivers held back by pause_accepting
    held: int  # recipient keys held (finished ones included, dropped ones not)
    sending: int  # held, not finished
    sent: int  # recipients whose every part was sent
    failed: int  # FAILED receipts made (one per failed recipient attempt)
    delivered: int  # recipients whose every part was reported delivered
    dropped: int  # recipients a Drop kept from being sent (parked ones included)
    receipts: int  # receipts made
    unacked: int  # receipts the bridge has not acknowledged yet
    parts_sent: int = 0  # SENT receipts made (one per part)
    parts_delivered: int = 0  # DELIVERED receipts made (one per part)
    inbound: int = 0  # SMS received (receive_sms)
    inbound_unacked: int = 0  # of those, not acknowledged by the bridge yet
    rejected: int = 0  # receipts and SMS the bridge refused for good (Reject), hence dropped


class PhoneAgent:
    """A simulated phone holding one WebSocket session at a time.

    Args:
        device_url: ``ws://HOST:PORT/device/v1``, or ``wss://`` for a bridge serving TLS.
        token: The device token for ``Authorization: Bearer``.
        pairing_code: A short-lived code for the first connect, used when no
            token is known (and again after a pairing connection that brought
            no Welcome, until the device's first session with its token); the
            Welcome's credentials replace it.
        encoding: ``"proto"`` or ``"json"`` (the subprotocol to offer).
        window: The flow-control window to advertise, 1..1000.
        modem: Sends the messages.
        sims: The SIMs to report in Hello; a Deliver's ``sim_number`` 0 means
            the first of them, one naming a slot not here FAILs with
            GENERIC_FAILURE (error :data:`NO_SUCH_SIM`) without sending.
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
        private_token: The server's private token (``gateway.private_token``),
            sent in ``X-Smsgw-Private-Token`` with a pairing code: a server in
            private mode refuses pairing without it. Bearer sessions never send it.
        passphrases: End-to-end encryption (docs/e2e.md): the phone's passphrase,
            or several, newest first (a key log). Encrypted Delivers are opened
            with them before the modem sees the text (a Deliver none opens
            fails with ``decrypt_failed``), and every received SMS is sealed
            with the first before it is forwarded. Empty = E2E off. Besides
            smsgw1, a Deliver sealed in SMSGate's format (``$aes-256-cbc/...``,
            recipients' numbers included) is recognised and opened.
        unmarked_format: The format to take unmarked ciphertext in (base64
            that is not smsgw1) to be: ``"httpsms"`` (httpSMS's clients mark
            nothing). None (the default): such a Deliver fails with
            ``decrypt_failed``, as before. Applies to texts only: httpSMS has
            no data messages.
        max_parts: The most SMS parts the phone sends for one recipient; an
            encrypted text whose plaintext needs more fails (the server cannot
            count ciphertext).
        push_token: Its FCM registration token, reported in every Hello so
            the gateway can wake it with a push once its session is gone
            (docs/push.md); "" = none. :meth:`set_push_token` changes it.
        doze_after: Seconds of idleness (nothing received, nothing in flight
            or unacknowledged) after which the phone closes its session (1000)
            and stays away until :meth:`wake` is called (a push arrived) or it
            has something of its own to report; None = never (the default: a
            phone that holds its session). Models Android's Doze.

    Attributes (test hooks; read them, do not write them, except
    ``pause_accepting``):
        received: The message id of every Deliver in arrival order, duplicates
            included (a message sent in several Delivers appears once per Deliver).
        accepted: Every :class:`RecipientKey` ``(message_id, recipient_index,
            attempt)`` the phone ever accepted.
        held: The Deliver of each held recipient, by :class:`RecipientKey`
            (finished ones included; Dropped ones removed). See
            :meth:`held_message_ids` for the messages.
        unacked: Receipts the bridge has not acknowledged, by event id, in order.
        inbound_unacked: Received SMS (:meth:`receive_sms`) the bridge has not
            acknowledged, by event id, in order.
        ignore_acks: While True, Acks are read but not applied, as if each had
            been lost with the session: receipts and inbound SMS stay unacked and
            go out again after the next Welcome (a test then drops the session).
        parked: Delivers held back while ``pause_accepting`` is True, by message
            id (the bridge has at most one Deliver of a message in flight).
        pause_accepting: While True, new Delivers are parked, not accepted (no
            ACCEPTED receipt): a phone that dies between receiving and
            accepting. Parked ones are forgotten when the session ends; see
            :meth:`accept_parked` to accept them instead.
        settings: The latest pacing the bridge pushed (Welcome or Settings), or None.
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
        private_token: str | None = None,
        passphrases: Sequence[str] = (),
        unmarked_format: UnmarkedFormat | None = None,
        max_parts: int = 10,
        push_token: str = "",
        doze_after: float | None = None,
    ) -> None:
        if not token and not pairing_code:
            raise ValueError("a phone needs a device token or a pairing code")
        if encoding not in _ENCODINGS:
            raise ValueError("encoding must be 'proto' or 'json'")
        if not 1 <= window <= MAX_WINDOW:
            raise ValueError(f"window must be in 1..{MAX_WINDOW}")
        if ssl_context is not None and not device_url.startswith("wss://"):
            raise ValueError("ssl_context needs a wss:// device_url")
        if not sims:
            raise ValueError("a phone needs at least one SIM")
        self.device_url = device_url
        self.ssl_context = ssl_context
        self.private_token = private_token or None
        self._keys_ring = KeyRing(passphrases) if passphrases else None
        if unmarked_format is not None and unmarked_format not in UNMARKED_FORMATS:
            raise ValueError(f"unmarked_format must be None or one of {UNMARKED_FORMATS}")
        self.unmarked_format: UnmarkedFormat | None = unmarked_format
        self.max_parts = max_parts
        self.push_token = push_token
        self.doze_after = doze_after
        self.dozing = False  # the session was closed for idleness; waiting for a wake
        self.wakes = 0  # wake-ups (pushes) that reached the phone while it was away
        self.dozes = 0
        self._woken = trio.Event()
        self._last_activity = 0.0
        self.token = token or None
        self.pairing_code = pairing_code or None
        self.encoding = _ENCODINGS[encoding]
        self.window = window
        self.modem = modem
        self.sims = tuple(sims)
        self.app_version = app_version
        self.backoff = backoff if backoff is not None else Backoff()
        self._retry_after: float | None = None  # the last refused upgrade's Retry-After
        self.name = name
        self.on_credentials = on_credentials
        self.open_timeout = open_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.welcome_timeout = welcome_timeout
        self._log = _PhoneLog(log, {"phone": name})

        # The durable store: survives every reconnect.
        self._recipients: dict[RecipientKey, _Recipient] = {}
        self._by_message: dict[str, list[_Recipient]] = {}
        self.unacked: dict[int, Receipt] = {}
        self.inbound_unacked: dict[int, InboundSms] = {}
        # Events the bridge refused for good, by event id (the reason, for tests and people).
        self.rejected: dict[int, RejectReceived] = {}
        self._next_event_id = 1
        self.accepted: set[RecipientKey] = set()
        self.settings: PacingSettings | None = None
        # Test hooks.
        self.received: list[str] = []
        self.parked: dict[str, Delivery] = {}
        self.pause_accepting = False
        self.ignore_acks = False
        self.sessions = 0
        self.device_id: str | None = None
        self.credentials: Credentials | None = None
        self.closed_reason: str | None = None
        self.close_code: int | None = None
        # Counters.
        self._duplicates = 0
        self._sent = 0
        self._parts_sent = 0
        self._failed = 0
        self._delivered = 0
        self._parts_delivered = 0
        self._dropped = 0
        self._receipts = 0
        self._inbound = 0

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
            f"held={len(self._recipients)} unacked={len(self.unacked)}>"
        )

    # --- observation --------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while a session is open (between a Welcome and its end)."""
        return self._connected.is_set()

    def statistics(self) -> AgentStatistics:
        """Return the phone's counters."""
        sending = sum(1 for r in self._recipients.values() if not r.finished)
        return AgentStatistics(
            connected=self.connected,
            sessions=self.sessions,
            received=len(self.received),
            duplicates=self._duplicates,
            accepted=len(self.accepted),
            parked=len(self.parked),
            held=len(self._recipients),
            sending=sending,
            sent=self._sent,
            failed=self._failed,
            delivered=self._delivered,
            dropped=self._dropped,
            receipts=self._receipts,
            unacked=len(self.unacked),
            parts_sent=self._parts_sent,
            parts_delivered=self._parts_delivered,
            inbound=self._inbound,
            inbound_unacked=len(self.inbound_unacked),
            rejected=len(self.rejected),
        )

    @property
    def held(self) -> dict[RecipientKey, Delivery]:
        """The Deliver of each held recipient, by key (finished ones included, Dropped ones not)."""
        return {key: record.delivery for key, record in self._recipients.items()}

    def held_message_ids(self) -> list[str]:
        """Messages with at least one held recipient, in the order they were first accepted."""
        return [message_id for message_id, records in self._by_message.items() if records]

    def held_recipients(self) -> list[HeldRecipient]:
        """What Hello reports in ``held``: each held recipient (and attempt) not finished
        yet, or whose ACCEPTED receipt the bridge has not acknowledged."""
        unacked_accepted = {e for e, r in self.unacked.items() if r.state is ReceiptState.ACCEPTED}
        return [
            HeldRecipient(*record.key)
            for record in self._recipients.values()
            if not record.finished or unacked_accepted.intersection(record.event_ids)
        ]

    def held_unacked_ids(self) -> list[str]:
        """What Hello reports in ``held_message_ids``: the messages of :meth:`held_recipients`."""
        return list(dict.fromkeys(h.message_id for h in self.held_recipients()))

    def recipient_progress(self, message_id: str, recipient_index: int, attempt: int = 1) -> tuple[int, int] | None:
        """``(parts_sent, parts_delivered)`` of a held recipient, or None when not held."""
        record = self._recipients.get(RecipientKey(message_id, recipient_index, attempt))
        return None if record is None else (record.parts_sent, record.parts_delivered)

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
        if self.doze_after is not None:
            self._last_activity = trio.current_time()
            if self.dozing and (self.unacked or self.inbound_unacked):
                self._woken.set()  # something of its own to report: a real phone connects for that

    def _busy(self) -> bool:
        """Something would be lost or late if the session closed now."""
        return bool(self.unacked or self.inbound_unacked or self.parked) or any(
            r.started and not r.finished for r in self._recipients.values()
        )

    async def _doze_when_idle(self, ws: ClientConnection) -> None:
        """Close the session once idle for ``doze_after`` (see the class docstring)."""
        assert self.doze_after is not None
        self._last_activity = trio.current_time()
        while True:
            await trio.sleep_until(self._last_activity + self.doze_after)
            if trio.current_time() < self._last_activity + self.doze_after:
                continue  # something happened meanwhile
            if self._busy() or not self.connected:
                self._last_activity = trio.current_time()
                continue
            self.dozing = True
            self.dozes += 1
            self._log.debug("z idle for %.1f s: closing the session until woken", self.doze_after)
            with trio.move_on_after(5):
                await ws.aclose(1000, "idle: dozing until woken")
            return

    # --- the store: sync, no I/O (the adapter's interface) -------------------

    def use_nursery(self, nursery: trio.Nursery | None) -> None:
        """Run background work (modem sends, delivery reports) in ``nursery``.

        :meth:`run` sets its own; unit tests that drive :meth:`handle_event`
        without sockets pass theirs.
        """
        self._nursery = nursery

    def send_hello(self, proto: DeviceSession) -> None:
        """Queue this phone's Hello on ``proto`` (SIMs, held recipients and their messages, push token)."""
        proto.send_hello(
            app_version=self.app_version,
            sims=self.sims,
            held_message_ids=self.held_unacked_ids(),
            held=self.held_recipients(),
            push_token=self.push_token,
        )

    def set_push_token(self, token: str) -> None:
        """FCM handed the phone a new token: tell the bridge now (PushToken) if a session is
        open; every later Hello carries it anyway."""
        self.push_token = token
        proto = self._proto
        if proto is not None and proto.state is _OPEN:
            proto.send_push_token(token)
            self._frames_ready.set()

    def wake(self) -> None:
        """A wake-up push arrived: a phone that is away connects at once (no backoff wait).
        Ignored while a session is open."""
        if self.connected:
            return
        self.wakes += 1
        self._log.debug("! woken by a push")
        self._woken.set()

    def attach_session(self, proto: DeviceSession) -> None:
        """Make ``proto`` the current session; receipts go out once it is OPEN.

        Call it right after the WebSocket opened and Hello was queued
        (:meth:`send_hello`).
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
            if not self.ignore_acks:
                for event_id in event.event_ids:
                    self.unacked.pop(event_id, None)
                    self.inbound_unacked.pop(event_id, None)
        elif isinstance(event, RejectReceived):
            self._on_reject(event)
        elif isinstance(event, DropReceived):
            self._on_drop(event.message_id)
        elif isinstance(event, SettingsReceived):
            self.settings = event.settings
        elif isinstance(event, WelcomeReceived):
            self._on_welcome(event)
        else:  # HelloReceived / ReceiptReceived / InboundReceived only reach a BRIDGE session
            raise TypeError(f"unexpected event on the phone: {type(event).__name__}")
        self._notify()

    def _on_reject(self, event: RejectReceived) -> None:
        """Forget a refused event as after an Ack: re-sending it would only be refused again
        (and, before refusals existed, closed every session). Ids, reason and the bridge's
        detail only: never the body or a number."""
        kind = "receipt" if event.event_id in self.unacked else "SMS" if event.event_id in self.inbound_unacked else ""
        self.unacked.pop(event.event_id, None)
        self.inbound_unacked.pop(event.event_id, None)
        if kind:
            self.rejected[event.event_id] = event
            self._log.warning("! %s event %d refused by the bridge (%s: %s); dropped",
                              kind, event.event_id, event.reason.name, event.detail)

    def accept_parked(self) -> None:
        """Accept every parked Deliver now (e.g. after clearing ``pause_accepting``)."""
        parked, self.parked = self.parked, {}
        for delivery in parked.values():
            self._accept(delivery)
        self._notify()

    def _on_welcome(self, event: WelcomeReceived) -> None:
        if event.credentials is not None:
            self.credentials = event.credentials
            self.token = event.credentials.token
            self.pairing_code = None  # the token replaces it (the next session spends it)
            if self.on_credentials is not None:
                self.on_credentials(event.credentials)
        if event.settings is not None:
            self.settings = event.settings
        self.device_id = event.device_id
        self.sessions += 1
        self.backoff.reset()
        self._woken = trio.Event()  # a wake that came while connecting is spent: it must not end the next doze
        self._log.debug("= session %d open as device %s (window %d, %d receipts and %d SMS to re-send)",
                       self.sessions, event.device_id, event.window, len(self.unacked), len(self.inbound_unacked))
        # Unacknowledged receipts and inbound SMS go out again, in event-id order
        # (dicts keep insertion order and ids only grow).
        for event_id in sorted([*self.unacked, *self.inbound_unacked]):
            receipt = self.unacked.get(event_id)
            if receipt is not None:
                self._transmit(receipt)
            else:
                self._forward(self.inbound_unacked[event_id])
        self._connected.set()
        if self._task_status is not None:
            task_status, self._task_status = self._task_status, None
            task_status.started()

    @staticmethod
    def _keys(delivery: Delivery) -> list[RecipientKey]:
        return [RecipientKey(delivery.message_id, index, delivery.attempt) for index in delivery.recipient_indices]

    def _on_deliver(self, delivery: Delivery) -> None:
        message_id = delivery.message_id
        self.received.append(message_id)
        keys = self._keys(delivery)
        known = [self._recipients[k] for k in keys if k in self._recipients]
        if known:
            # A duplicate (flagged by the protocol or not: after a reconnect
            # only the store remembers). Never send those again; answer with
            # what the bridge may have missed.
            self._duplicates += 1
            pending = sorted({e for record in known for e in record.event_ids if e in self.unacked})
            for event_id in pending:
                self._transmit(self.unacked[event_id])
            if len(known) == len(keys):
                if any(not any(e in self.unacked for e in record.event_ids) for record in known):
                    self._emit(known, ReceiptState.ACCEPTED, recipient_indices=delivery.recipient_indices,
                               attempt=delivery.attempt)
                return
            # Some recipients are new: accept them (below) with the rest.
        parked = self.parked.get(message_id)
        if parked is not None and self._keys(parked) == keys:
            self._duplicates += 1
            return
        if self.pause_accepting:
            self.parked[message_id] = delivery  # at most one Deliver of a message in flight
            return
        self._accept(delivery)

    def _accept(self, delivery: Delivery) -> None:
        """Hold the Deliver's new recipients, answer ACCEPTED for all of them, start sending."""
        if self._nursery is None:
            raise RuntimeError("PhoneAgent.use_nursery() was not called (run() does it)")
        records: list[_Recipient] = []
        fresh: list[_Recipient] = []
        sendable, refusal = self._open(delivery)
        sealed_numbers: dict[int, str] = {}
        if delivery.is_encrypted and refusal is None:
            sendable, sealed_numbers = self._open_numbers(sendable)
        parts = max(sendable.parts, 1)
        for key, number in zip(self._keys(delivery), sendable.phone_numbers, strict=True):
            record = self._recipients.get(key)
            if record is None:
                record = _Recipient(key, sendable, number, parts, report_parts=delivery.parts > 0 or not delivery.is_encrypted)
                self._recipients[key] = record
                self._by_message.setdefault(key.message_id, []).append(record)
                self.accepted.add(key)
                fresh.append(record)
            records.append(record)
        self._emit(records, ReceiptState.ACCEPTED, recipient_indices=delivery.recipient_indices,
                   attempt=delivery.attempt)
        if refusal is not None:
            for record in fresh:
                self._fail(record, *refusal, 0)
            return
        for record in fresh:
            why = sealed_numbers.get(record.key.recipient_index)
            if why is not None:  # a number no passphrase opens: that recipient only
                self._fail(record, FailureClass.DECRYPT_FAILED, f"decrypt_failed: {why}", 0)
        sendable_fresh = [record for record in fresh if not record.failed]
        if sendable_fresh:
            self._nursery.start_soon(self._send_recipients, sendable_fresh)

    def _open(self, delivery: Delivery) -> tuple[Delivery, tuple[FailureClass, str] | None]:
        """The Deliver as the modem gets it: an encrypted one opened and its parts counted on
        the plaintext; or, when it cannot be sent, why (class, error)."""
        if not delivery.is_encrypted:
            return delivery, None
        if self._keys_ring is None:
            return delivery, (FailureClass.DECRYPT_FAILED, "decrypt_failed: end-to-end encryption is off on this phone")
        try:
            # smsgw1, or SMSGate's format by its prefix, or unmarked base64 as the format this
            # phone was told to assume (docs/e2e.md "Other gateways' formats").
            if delivery.text is not None:
                text = open_text(self._keys_ring, delivery.text, unmarked=self.unmarked_format)
                count = count_segments(text)
                opened = replace(delivery, text=text, is_encrypted=False, parts=count.parts)
            else:
                data = open_data(self._keys_ring, delivery.data or b"")
                opened = replace(delivery, data=data, is_encrypted=False, parts=1)
        except EnvelopeError as exc:
            return delivery, (FailureClass.DECRYPT_FAILED, f"decrypt_failed: {exc.reason}")
        if opened.parts > self.max_parts:
            return delivery, (FailureClass.GENERIC_FAILURE, f"too_long: {opened.parts} parts, at most {self.max_parts}")
        return opened, None

    def _open_numbers(self, delivery: Delivery) -> tuple[Delivery, dict[int, str]]:
        """An encrypted Deliver's numbers as the modem gets them: SMSGate's clients seal each
        recipient's number too (by its prefix; any other number is plain, as smsgw1 leaves
        it). Returns the Deliver with the opened numbers, and why each one that would not
        open did not (by recipient index; it keeps its ciphertext, and is never sent)."""
        if self._keys_ring is None:
            return delivery, {}
        numbers: list[str] = []
        refused: dict[int, str] = {}
        for index, number in zip(delivery.recipient_indices, delivery.phone_numbers, strict=True):
            if recognise(number) == "smsgate":
                try:
                    opened = open_text(self._keys_ring, number).strip()
                    if not opened:
                        raise EnvelopeError("bad_format", "the number opened empty")
                    number = opened
                except EnvelopeError as exc:
                    refused[index] = exc.reason
            numbers.append(number)
        return replace(delivery, phone_numbers=tuple(numbers)), refused

    def receive_sms(
        self,
        sender: str,
        text: str | None = None,
        data: bytes | None = None,
        port: int = 0,
        sim: int = 1,
        received_at: datetime | None = None,
    ) -> str:
        """Let the phone "receive" an SMS (text, or data to ``port``) on SIM ``sim``, and
        forward it: at once when a session is open, else after the next Welcome; again
        after every reconnect until the bridge Acks it. Returns the phone's id for it
        (the server's duplicate key).

        A body over the protocol's bound (16,384 characters, 8,192 bytes) is cut to it
        and sent flagged ``truncated``, as the bridge would store it anyway: the SMS is kept
        and the frame stays small.

        Raises:
            ValueError / TypeError: Not a valid Inbound (e.g. both or neither of text and
                data, an empty or too long sender).
        """
        phone_id = uuid.uuid4().hex
        sealed = self._keys_ring is not None
        if self._keys_ring is not None:  # E2E on: the server only ever holds the envelope
            if text is not None:
                text = self._keys_ring.encrypt(text)
            elif data is not None:
                data = self._keys_ring.encrypt_bytes(data).encode("ascii")
        text, data, truncated = cut_inbound_body(text, data)
        inbound = InboundSms(
            self._next_event_id,
            phone_id,
            sender,
            text=text,
            data=data,
            port=port,
            sim_number=sim,
            received_at=received_at if received_at is not None else _now(),
            is_encrypted=sealed,
            truncated=truncated,
        )
        self._next_event_id += 1
        self.inbound_unacked[inbound.event_id] = inbound
        self._inbound += 1
        self._forward(inbound)
        self._notify()
        return phone_id

    def _forward(self, inbound: InboundSms) -> None:
        proto = self._proto
        if proto is not None and proto.state is _OPEN:
            proto.send_inbound(inbound)
            self._frames_ready.set()

    def _on_drop(self, message_id: str) -> None:
        parked = self.parked.pop(message_id, None)
        if parked is not None:
            self._dropped += len(parked.recipient_indices)
        records = self._by_message.get(message_id, [])
        keep = []
        for record in records:
            if record.started:
                keep.append(record)  # too late: the modem already has it
                continue
            record.dropped = record.finished = True
            del self._recipients[record.key]
            self._dropped += 1
        if len(keep) != len(records):
            self._log.debug("x message %s: %d recipients dropped before sending", message_id, len(records) - len(keep))
        if keep:
            self._by_message[message_id] = keep
        else:
            self._by_message.pop(message_id, None)

    def _emit(
        self,
        records: Sequence[_Recipient],
        state: ReceiptState,
        *,
        recipient_index: int = 0,
        recipient_indices: Sequence[int] = (),
        attempt: int = 0,
        error: str = "",
        failure_class: FailureClass | None = None,
        parts_done: int = 0,
    ) -> None:
        """Make a receipt for ``records``, keep it until acknowledged, and send it if a session is open."""
        event_id = self._next_event_id
        self._next_event_id += 1
        receipt = Receipt(
            event_id,
            records[0].key.message_id,
            state,
            recipient_index=recipient_index,
            error=error,
            time=_now(),
            recipient_indices=tuple(recipient_indices),
            attempt=attempt,
            failure_class=failure_class,
            parts_done=parts_done,
        )
        self.unacked[event_id] = receipt
        for record in records:
            record.event_ids.append(event_id)
        self._receipts += 1
        self._transmit(receipt)

    def _transmit(self, receipt: Receipt) -> None:
        proto = self._proto
        if proto is not None and proto.state is _OPEN:
            proto.send_receipt(receipt)
            self._frames_ready.set()

    # --- background work (the agent's nursery, not the session's) -----------

    async def _send_recipients(self, records: list[_Recipient]) -> None:
        """Send one Deliver's recipients, one after the other; a Drop stops those not started."""
        for record in records:
            if record.dropped:
                continue
            record.started = True
            await self._send_one(record)
            self._notify()

    async def _send_one(self, record: _Recipient) -> None:
        delivery, (_, index, attempt) = record.delivery, record.key
        slots = [sim.slot for sim in self.sims]
        sim = delivery.sim_number or slots[0]
        if sim not in slots:
            self._fail(record, FailureClass.GENERIC_FAILURE, NO_SUCH_SIM, 0)
            return
        report = delivery.with_delivery_report and self.modem.delivery_reports

        def part_sent(part: int) -> None:
            record.parts_sent = part
            self._parts_sent += 1
            if record.report_parts or part == record.parts:
                self._emit([record], ReceiptState.SENT, recipient_index=index, attempt=attempt,
                           parts_done=part if record.report_parts else 0)
            if part == record.parts:
                self._sent += 1
            if report:
                assert self._nursery is not None
                self._nursery.start_soon(self._report_delivery, record, part)
            self._notify()

        result = await self.modem.send(record.number, delivery, index, on_part_sent=part_sent, sim=sim)
        if result.ok:
            record.finished = True
            return
        failure_class = result.failure_class or FailureClass.GENERIC_FAILURE
        self._fail(record, failure_class, result.error or failure_code(failure_class), result.parts_sent)

    def _fail(self, record: _Recipient, failure_class: FailureClass, error: str, parts_done: int) -> None:
        record.failed = record.finished = True
        self._failed += 1
        _, index, attempt = record.key
        self._emit([record], ReceiptState.FAILED, recipient_index=index, attempt=attempt, error=error,
                   failure_class=failure_class, parts_done=parts_done)

    async def _report_delivery(self, record: _Recipient, part: int) -> None:
        if not await self.modem.wait_delivery_report(record.number, record.delivery, record.key.recipient_index, part=part):
            return
        if record.failed:
            return  # the recipient is FAILED: a report on a part sent before it changes nothing
        record.parts_delivered += 1
        self._parts_delivered += 1
        if record.parts_delivered == record.parts:
            self._delivered += 1
        _, index, attempt = record.key
        if record.report_parts or record.parts_delivered == record.parts:
            self._emit([record], ReceiptState.DELIVERED, recipient_index=index, attempt=attempt,
                       parts_done=record.parts_delivered if record.report_parts else 0)
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
                    if self.dozing:  # away until a push (or its own news) wakes it
                        await self._woken.wait()
                        self._woken, self.dozing = trio.Event(), False
                        continue
                    delay = self.backoff.next_delay()
                    if self._retry_after is not None:  # the bridge said when: no sooner
                        delay, self._retry_after = max(delay, self._retry_after), None
                    self._log.debug("- reconnecting in %.2f s", delay)
                    with trio.move_on_after(delay):
                        await self._woken.wait()  # a push cuts the wait short
                    self._woken = trio.Event()
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
        headers = {"Authorization": authorization}
        if self.private_token and not self.token:
            headers[PRIVATE_TOKEN_HEADER] = self.private_token
        try:
            async with ws_connect(
                self.device_url,
                subprotocols=[self.encoding.value],  # type: ignore[list-item]
                additional_headers=headers,
                user_agent_header=self.app_version,
                compression=None,
                proxy=None,
                open_timeout=self.open_timeout,
                ping_interval=self.ping_interval,
                ping_timeout=self.ping_timeout,
                close_timeout=5,
                **({"ssl": self.ssl_context} if self.device_url.startswith("wss://") else {}),
            ) as ws:
                return await self.converse(ws)
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in _STOP_HTTP_STATUSES:
                self._stop(f"http_{status}", status)
                return True
            self._retry_after = retry_after_seconds(exc.response.headers.get("Retry-After"))
            self._log.debug("! upgrade refused with HTTP %d", status)
        except (OSError, TimeoutError, WebSocketException, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            tls_error = exc if isinstance(exc, ssl.SSLError) else exc.__cause__
            if isinstance(tls_error, ssl.SSLError):
                # A wrong CA or certificate does not fix itself: say so above DEBUG.
                self._log.warning("! TLS handshake failed: %s", tls_error.reason or type(tls_error).__name__)
            else:
                self._log.debug("! connection failed: %s", type(exc).__name__)
        return False

    async def converse(self, ws: ClientConnection) -> bool:
        """One session over an open connection ``ws`` (Hello, then frames both ways until it
        ends); True when the phone must stop for good. :meth:`run` calls it per connection;
        tests call it with any connection that has ``subprotocol``, ``send``, ``recv`` and
        ``aclose(code, reason)`` (an in-memory one on trio's virtual clock), with
        :meth:`use_nursery` set first."""
        if ws.subprotocol != self.encoding.value:
            self._log.warning("! the bridge did not accept subprotocol %s", self.encoding.value)
            await ws.aclose(CloseCode.UNSUPPORTED_SUBPROTOCOL, "subprotocol not negotiated")
            return False
        proto = DeviceSession(Side.PHONE, self.encoding, window=self.window)
        self.send_hello(proto)
        self.attach_session(proto)
        self._ws = ws
        close_code: int | None = None
        try:
            with trio.CancelScope() as scope:
                self._session_scope = scope
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer, ws, proto)
                    if self.doze_after is not None:
                        nursery.start_soon(self._doze_when_idle, ws)
                    close_code = await self._reader(ws, proto)
                    nursery.cancel_scope.cancel()
        finally:
            self._session_scope = None
            if self._proto is proto:
                self.detach_session()
        if close_code is not None and close_code in STOP_CLOSE_CODES:
            self._stop(STOP_CLOSE_CODES[close_code], close_code)
            return True
        if close_code in BUG_CLOSE_CODES:
            # Not reset by a Welcome in between: a bad release must not hammer the bridge.
            self._retry_after = self.backoff.cap * self.backoff.scale
            self._log.warning("! the bridge closed with %d: waiting %.0f s", close_code, self._retry_after)
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
