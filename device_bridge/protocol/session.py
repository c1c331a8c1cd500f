"""The device session: a sans-I/O state machine for one phone WebSocket.

:class:`DeviceSession` never touches a socket, a clock or an event loop
(STYLE, "The device protocol"). The bridge (``Side.BRIDGE``) and the device
agent (``Side.PHONE``) drive the same class:

* input: :meth:`~DeviceSession.receive_frame` for each WebSocket message,
  :meth:`~DeviceSession.receive_closed` when the connection ends;
* commands: ``send_*()``;
* output: :meth:`~DeviceSession.events_received` and
  :meth:`~DeviceSession.frames_to_send`, both draining.

Which frame may be sent or received in which state is data, in the two tables
below (as in h11's ``_state.py``); the handlers only validate and account.

Session states, per side::

    PHONE   AWAIT_HELLO --send Hello--> AWAIT_WELCOME --recv Welcome--> OPEN
    BRIDGE  AWAIT_HELLO --recv Hello--> AWAIT_WELCOME --send Welcome--> OPEN
    both    any --receive_closed() or RemoteProtocolError--> CLOSED
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from typing import Final

from smsgw.device.v1 import device_pb2

from .codec import (
    CloseCode,
    Encoding,
    ack_from_proto,
    ack_to_proto,
    decode,
    delivery_from_proto,
    delivery_to_proto,
    drop_from_proto,
    drop_to_proto,
    encode,
    hello_from_proto,
    hello_to_proto,
    inbound_from_proto,
    push_token_from_proto,
    inbound_to_proto,
    receipt_from_proto,
    receipt_to_proto,
    reject_from_proto,
    reject_to_proto,
    settings_from_proto,
    settings_to_proto,
    welcome_from_proto,
    welcome_to_proto,
)
from .errors import MAX_REASON_BYTES, InvalidEvent, InvalidState, RemoteProtocolError, _truncate_utf8
from .events import (
    AckReceived,
    Credentials,
    DeliverReceived,
    Delivery,
    DropReceived,
    Event,
    HeldRecipient,
    HelloReceived,
    InboundReceived,
    PushTokenReceived,
    InboundSms,
    InvalidEventReceived,
    PacingSettings,
    Receipt,
    ReceiptReceived,
    RejectReason,
    RejectReceived,
    Side,
    SimInfo,
    WelcomeReceived,
)
from .flow import MAX_WINDOW, FlowWindow

__all__ = [
    "AWAIT_HELLO",
    "AWAIT_WELCOME",
    "CLOSED",
    "OPEN",
    "DeviceSession",
    "SessionState",
    "SessionStatistics",
]


class SessionState(IntEnum):
    """Where a session stands in the Hello / Welcome handshake."""

    AWAIT_HELLO = 1  # PHONE: has not sent Hello; BRIDGE: has not received it
    AWAIT_WELCOME = 2  # PHONE: waits for Welcome; BRIDGE: owes the Welcome
    OPEN = 3  # both sides stream
    CLOSED = 4  # the connection ended or the peer broke the protocol


AWAIT_HELLO = SessionState.AWAIT_HELLO
AWAIT_WELCOME = SessionState.AWAIT_WELCOME
OPEN = SessionState.OPEN
CLOSED = SessionState.CLOSED
_BRIDGE = Side.BRIDGE
_PHONE = Side.PHONE

_Transitions = dict[tuple[Side, SessionState], dict[str, SessionState]]

# Frame kinds (the member names of the DeviceFrame / BridgeFrame oneof) that
# may be received, per side and state, and the state each one leads to.
# Anything missing is a PROTOCOL_VIOLATION; CLOSED accepts nothing.
_RECEIVE_TRANSITIONS: Final[_Transitions] = {
    (_BRIDGE, AWAIT_HELLO): {"hello": AWAIT_WELCOME},
    (_BRIDGE, OPEN): {"receipt": OPEN, "inbound": OPEN, "push_token": OPEN},
    (_PHONE, AWAIT_WELCOME): {"welcome": OPEN},
    (_PHONE, OPEN): {"deliver": OPEN, "ack": OPEN, "reject": OPEN, "drop": OPEN, "settings": OPEN},
}

# Frame kinds that may be sent, per side and state. Anything missing is an
# InvalidState: the caller's bug.
_SEND_TRANSITIONS: Final[_Transitions] = {
    (_PHONE, AWAIT_HELLO): {"hello": AWAIT_WELCOME},
    (_PHONE, OPEN): {"receipt": OPEN, "inbound": OPEN, "push_token": OPEN},
    (_BRIDGE, AWAIT_WELCOME): {"welcome": OPEN},
    (_BRIDGE, OPEN): {"deliver": OPEN, "ack": OPEN, "reject": OPEN, "drop": OPEN, "settings": OPEN},
}


@dataclass(frozen=True, slots=True)
class SessionStatistics:
    """A snapshot of a session's counters (trio's ``statistics()`` idiom)."""

    frames_received: int
    frames_sent: int
    in_flight: int
    window: int


class DeviceSession:
    """One side of a phone protocol session, fed and drained by an I/O adapter.

    The adapter's loop: for each WebSocket message call :meth:`receive_frame`,
    then :meth:`events_received` and act on the events, then send what
    :meth:`frames_to_send` returns (binary messages for ``bytes``, text
    messages for ``str``). After any ``send_*()`` command, send
    :meth:`frames_to_send` too. On :class:`RemoteProtocolError` close the
    WebSocket with ``exc.code`` and ``exc.reason``; when the connection ends
    for any reason call :meth:`receive_closed`.

    Flow control (DESIGN, "Phone protocol"): on the BRIDGE side a message id
    is in flight from :meth:`send_deliver` until a Receipt for it arrives (any
    state) or :meth:`send_drop`; on the PHONE side, from a received Deliver
    until :meth:`send_receipt` for it (any state) or a received Drop. Since
    frames arrive in order, the bridge's count is never below the phone's,
    so a bridge that respects :attr:`window_available` never trips the
    phone's ``WINDOW_EXCEEDED``.

    Args:
        side: Which end this session plays.
        encoding: The negotiated subprotocol.
        window: PHONE only: the window to advertise in Hello,
            1..``max_window``. The BRIDGE learns its window from Hello.
        max_window: The largest window this side honours, 1..1000; the
            BRIDGE uses ``min(Hello.window, max_window)``.

    Raises:
        ValueError: ``window`` or ``max_window`` is out of range, or a
            window is given on the BRIDGE side.
    """

    __slots__ = (
        "_encoding",
        "_events",
        "_flow",
        "_frames_received",
        "_frames_sent",
        "_max_window",
        "_outgoing",
        "_side",
        "_state",
    )

    def __init__(self, side: Side, encoding: Encoding, *, window: int = 0, max_window: int = MAX_WINDOW) -> None:
        side = Side(side)
        if not 1 <= max_window <= MAX_WINDOW:
            raise ValueError(f"max_window must be in 1..{MAX_WINDOW}")
        if side is _PHONE and not 1 <= window <= max_window:
            raise ValueError("a PHONE session needs a window in 1..max_window")
        if side is _BRIDGE and window != 0:
            raise ValueError("the BRIDGE learns its window from Hello; cap it with max_window")
        self._side = side
        self._encoding = Encoding(encoding)
        self._max_window = max_window
        self._state = AWAIT_HELLO
        self._flow = FlowWindow(window)
        self._events: list[Event] = []
        self._outgoing: list[bytes | str] = []
        self._frames_received = 0
        self._frames_sent = 0

    def __repr__(self) -> str:
        return (
            f"<DeviceSession {self._side.name} {self._state.name} {self._encoding.value} "
            f"window={self._flow.window} in_flight={len(self._flow)}>"
        )

    # --- state --------------------------------------------------------------

    @property
    def side(self) -> Side:
        """Which end of the connection this session plays."""
        return self._side

    @property
    def encoding(self) -> Encoding:
        """The subprotocol every frame is encoded with."""
        return self._encoding

    @property
    def state(self) -> SessionState:
        """The handshake state; see the module docstring."""
        return self._state

    @property
    def window(self) -> int:
        """The flow-control window in force.

        BRIDGE: 0 until Hello, then ``min(Hello.window, max_window)``.
        PHONE: the advertised window until Welcome, then ``Welcome.window``.
        """
        return self._flow.window

    @property
    def in_flight(self) -> frozenset[str]:
        """Message ids in flight (a snapshot).

        Still readable once CLOSED: the bridge returns these to PENDING.
        """
        return self._flow.ids

    @property
    def window_available(self) -> int:
        """How many more Delivers fit in the window now; 0 unless OPEN.

        The bridge checks this before :meth:`send_deliver`.
        """
        return self._flow.available if self._state is OPEN else 0

    def statistics(self) -> SessionStatistics:
        """Return the session's counters, e.g. for metrics or a debug page."""
        return SessionStatistics(
            frames_received=self._frames_received,
            frames_sent=self._frames_sent,
            in_flight=len(self._flow),
            window=self._flow.window,
        )

    # --- input --------------------------------------------------------------

    def receive_frame(self, data: bytes | str) -> None:
        """Feed one WebSocket message received from the peer.

        Call :meth:`events_received` afterwards to learn what it meant. The
        frame either turns into exactly one event or raises.

        Args:
            data: The message: ``bytes`` for a binary one, ``str`` for text.

        Raises:
            RemoteProtocolError: The peer broke the protocol; the session is
                now CLOSED. Close the WebSocket with ``exc.code`` and
                ``exc.reason``: ``BAD_FRAME`` (undecodable, wrong frame type,
                invalid field values, a Receipt or Inbound without an event
                id), ``PROTOCOL_VIOLATION`` (a frame not
                allowed in this state, or a Welcome widening the window),
                ``WINDOW_EXCEEDED`` (PHONE: a new Deliver beyond the window).
                A Receipt or Inbound that names its event id but is invalid
                otherwise does not raise: it becomes an
                :class:`InvalidEventReceived` (BRIDGE: answer it with
                :meth:`send_reject`) and the session stays OPEN.
        """
        self._frames_received += 1
        try:
            self._receive_frame(data)
        except RemoteProtocolError:
            self._state = CLOSED
            raise

    def receive_closed(self) -> None:
        """Record that the connection ended, cleanly or not; the session is CLOSED.

        Call it exactly when the WebSocket is gone (calling it twice is
        harmless). :attr:`in_flight` stays readable so the bridge can requeue
        those messages; every command now raises :class:`InvalidState`.
        """
        self._state = CLOSED

    def _receive_frame(self, data: bytes | str) -> None:
        if self._state is CLOSED:
            raise RemoteProtocolError(CloseCode.PROTOCOL_VIOLATION, "frame after the session closed")
        frame: device_pb2.DeviceFrame | device_pb2.BridgeFrame
        if self._side is _BRIDGE:
            frame = decode(data, device_pb2.DeviceFrame, self._encoding)
        else:
            frame = decode(data, device_pb2.BridgeFrame, self._encoding)
        kind = frame.WhichOneof("frame")
        assert kind is not None  # decode() refuses frames without one
        next_state = _RECEIVE_TRANSITIONS.get((self._side, self._state), {}).get(kind)
        if next_state is None:
            raise RemoteProtocolError(
                CloseCode.PROTOCOL_VIOLATION,
                f"unexpected {kind.capitalize()} in state {self._state.name}",
            )
        event: Event
        if isinstance(frame, device_pb2.DeviceFrame):
            try:
                if kind == "hello":
                    event = self._on_hello(frame.hello)
                elif kind == "inbound":
                    event = InboundReceived(inbound_from_proto(frame.inbound))
                elif kind == "push_token":
                    event = push_token_from_proto(frame.push_token)
                else:
                    event = self._on_receipt(frame.receipt)
            except InvalidEvent as exc:
                event = InvalidEventReceived(exc.event_id, exc.kind, exc.detail)
        elif kind == "welcome":
            event = self._on_welcome(frame.welcome)
        elif kind == "deliver":
            event = self._on_deliver(frame.deliver)
        elif kind == "ack":
            event = ack_from_proto(frame.ack)
        elif kind == "reject":
            event = reject_from_proto(frame.reject)
        elif kind == "settings":
            event = settings_from_proto(frame.settings)
        else:
            event = self._on_drop(frame.drop)
        self._state = next_state
        self._events.append(event)

    def _on_hello(self, message: device_pb2.Hello) -> HelloReceived:
        event = hello_from_proto(message)
        self._flow.window = min(event.window, self._max_window)
        return event

    def _on_receipt(self, message: device_pb2.Receipt) -> ReceiptReceived:
        try:
            receipt = receipt_from_proto(message)
        except InvalidEvent:
            # Refused, so the phone drops the event: were its Deliver kept in flight, each bad
            # receipt would shrink the window for good (to 0 after `window` of them).
            if message.message_id:
                self._flow.discard(message.message_id)
            raise
        # Any state frees the window: ACCEPTED means held, the others imply it.
        # A receipt for an id not in flight (re-sent after a reconnect) is fine.
        self._flow.discard(receipt.message_id)
        return ReceiptReceived(receipt)

    def _on_welcome(self, message: device_pb2.Welcome) -> WelcomeReceived:
        event = welcome_from_proto(message)
        if event.window > self._flow.window:
            raise RemoteProtocolError(CloseCode.PROTOCOL_VIOLATION, "Welcome window exceeds the Hello window")
        self._flow.window = event.window
        return event

    def _on_deliver(self, message: device_pb2.Deliver) -> DeliverReceived:
        delivery = delivery_from_proto(message)
        duplicate = delivery.message_id in self._flow
        if not duplicate and self._flow.available == 0:
            raise RemoteProtocolError(
                CloseCode.WINDOW_EXCEEDED,
                f"Deliver beyond the window of {self._flow.window}",
            )
        self._flow.add(delivery.message_id)
        return DeliverReceived(delivery, duplicate)

    def _on_drop(self, message: device_pb2.Drop) -> DropReceived:
        event = drop_from_proto(message)
        self._flow.discard(event.message_id)
        return event

    # --- commands -----------------------------------------------------------

    def send_hello(
        self,
        *,
        app_version: str,
        sims: Sequence[SimInfo],
        held_message_ids: Sequence[str] = (),
        held: Sequence[HeldRecipient] = (),
        push_token: str = "",
    ) -> None:
        """PHONE: open the session with Hello, advertising the window.

        Call it first, right after the WebSocket opens; then wait for
        :class:`WelcomeReceived`.

        Args:
            app_version: The agent's version, for the device list.
            sims: The SIMs it can send from.
            held_message_ids: Messages it holds (accepted), so the bridge
                drops those cancelled or expired meanwhile.
            held: The recipients (and attempts) it holds, so the bridge marks
                them ACCEPTED and does not re-send them.
            push_token: Its FCM registration token ("" = none), so the gateway
                can wake it with a push once this session is gone.

        Raises:
            InvalidState: Not a PHONE session, or Hello was already sent.
        """
        next_state = self._check_send("hello")
        hello = HelloReceived(
            app_version, tuple(sims), self._flow.window, tuple(held_message_ids), tuple(held), push_token
        )
        self._queue(device_pb2.DeviceFrame(hello=hello_to_proto(hello)), next_state)

    def send_welcome(
        self,
        device_id: str,
        *,
        ping_interval: int,
        server_time: datetime,
        credentials: Credentials | None = None,
        settings: PacingSettings | None = None,
    ) -> None:
        """BRIDGE: accept the session after :class:`HelloReceived`; it becomes OPEN.

        The Welcome carries the negotiated :attr:`window`. Call it once the
        device is registered as online, before any :meth:`send_deliver`.

        Args:
            device_id: The device the credentials belong to.
            ping_interval: Seconds between the bridge's WebSocket pings.
            server_time: Now (aware), from the adapter's clock.
            credentials: Only for a session opened with a pairing code.
            settings: The pacing the bridge applies to this phone.

        Raises:
            InvalidState: Not a BRIDGE session, or not right after Hello.
        """
        next_state = self._check_send("welcome")
        welcome = WelcomeReceived(device_id, self._flow.window, ping_interval, server_time, credentials, settings)
        self._queue(device_pb2.BridgeFrame(welcome=welcome_to_proto(welcome)), next_state)

    def send_deliver(self, delivery: Delivery) -> None:
        """BRIDGE: hand a message to the phone; it is in flight until a Receipt or Drop.

        Raises:
            InvalidState: Not an OPEN BRIDGE session, the window is full
                (check :attr:`window_available` first), or the id is
                already in flight.
        """
        next_state = self._check_send("deliver")
        if delivery.message_id in self._flow:
            raise InvalidState(f"message {delivery.message_id!r} is already in flight")
        if self._flow.available == 0:
            raise InvalidState(f"the window of {self._flow.window} is full")
        self._queue(device_pb2.BridgeFrame(deliver=delivery_to_proto(delivery)), next_state)
        self._flow.add(delivery.message_id)

    def send_drop(self, message_id: str, reason: str = "") -> None:
        """BRIDGE: tell the phone not to send a message (cancelled or expired).

        Frees its window slot at once: the Drop reaches the phone before any
        later Deliver. Dropping an id not in flight (one the phone already
        accepted) is allowed.

        Raises:
            InvalidState: Not an OPEN BRIDGE session.
        """
        next_state = self._check_send("drop")
        drop = DropReceived(message_id, reason)
        self._queue(device_pb2.BridgeFrame(drop=drop_to_proto(drop)), next_state)
        self._flow.discard(message_id)

    def send_settings(self, settings: PacingSettings) -> None:
        """BRIDGE: push changed pacing settings to the phone.

        Raises:
            InvalidState: Not an OPEN BRIDGE session.
        """
        next_state = self._check_send("settings")
        self._queue(device_pb2.BridgeFrame(settings=settings_to_proto(settings)), next_state)

    def send_ack(self, event_ids: Sequence[int]) -> None:
        """BRIDGE: tell the phone these device events are stored; it may forget them.

        Call it after the receipts are committed, batching ids freely. An
        empty batch sends nothing.

        Raises:
            InvalidState: Not an OPEN BRIDGE session.
        """
        next_state = self._check_send("ack")
        ids = tuple(event_ids)
        if not ids:
            return
        self._queue(device_pb2.BridgeFrame(ack=ack_to_proto(AckReceived(ids))), next_state)

    def send_reject(self, event_id: int, reason: RejectReason, detail: str = "") -> None:
        """BRIDGE: refuse one device event for good; the phone forgets it, the session goes on.

        Answer an :class:`InvalidEventReceived`, or a Receipt / Inbound that storage will
        never take (e.g. a message not routed to this device). ``detail`` is for people:
        name fields, never a body or a number; it is cut to 120 bytes.

        Raises:
            InvalidState: Not an OPEN BRIDGE session.
            ValueError: ``event_id`` is not in 1..2**64-1.
        """
        next_state = self._check_send("reject")
        reject = RejectReceived(event_id, RejectReason(reason), _truncate_utf8(detail, MAX_REASON_BYTES))
        self._queue(device_pb2.BridgeFrame(reject=reject_to_proto(reject)), next_state)

    def send_receipt(self, receipt: Receipt) -> None:
        """PHONE: report on a message; any state takes it out of flight.

        Send ACCEPTED once the message is stored durably, then SENT /
        DELIVERED / FAILED per recipient. Keep the receipt until an Ack for
        its ``event_id`` arrives, and re-send it after a reconnect otherwise.

        Raises:
            InvalidState: Not an OPEN PHONE session.
        """
        next_state = self._check_send("receipt")
        self._queue(device_pb2.DeviceFrame(receipt=receipt_to_proto(receipt)), next_state)
        self._flow.discard(receipt.message_id)

    def send_inbound(self, inbound: InboundSms) -> None:
        """PHONE: forward an SMS the phone received.

        Keep it until an Ack for its ``event_id`` arrives, and re-send it (with
        the same ``id``) after a reconnect otherwise; the bridge stores one copy
        per id. It does not touch the flow-control window.

        Raises:
            InvalidState: Not an OPEN PHONE session.
        """
        next_state = self._check_send("inbound")
        self._queue(device_pb2.DeviceFrame(inbound=inbound_to_proto(inbound)), next_state)

    def send_push_token(self, token: str) -> None:
        """PHONE: report a new FCM registration token ("" = none any more). Not
        acknowledged: the next Hello carries the token again anyway.

        Raises:
            InvalidState: Not an OPEN PHONE session.
            ValueError: Not printable ASCII, or longer than MAX_PUSH_TOKEN bytes.
        """
        next_state = self._check_send("push_token")
        PushTokenReceived(token)  # validates
        self._queue(device_pb2.DeviceFrame(push_token=device_pb2.PushToken(token=token)), next_state)

    def _check_send(self, kind: str) -> SessionState:
        next_state = _SEND_TRANSITIONS.get((self._side, self._state), {}).get(kind)
        if next_state is None:
            raise InvalidState(
                f"cannot send {kind.capitalize()} on the {self._side.name} side in state {self._state.name}"
            )
        return next_state

    def _queue(self, frame: device_pb2.DeviceFrame | device_pb2.BridgeFrame, next_state: SessionState) -> None:
        self._outgoing.append(encode(frame, self._encoding))
        self._frames_sent += 1
        self._state = next_state

    # --- output -------------------------------------------------------------

    def events_received(self) -> list[Event]:
        """Return and forget the events parsed since the last call.

        Call it after every :meth:`receive_frame`.
        """
        events, self._events = self._events, []
        return events

    def frames_to_send(self) -> list[bytes | str]:
        """Return and forget the frames queued since the last call, already encoded.

        Call it after every command (and after :meth:`receive_frame`, for
        symmetry); send ``bytes`` as binary and ``str`` as text messages.
        """
        frames, self._outgoing = self._outgoing, []
        return frames
