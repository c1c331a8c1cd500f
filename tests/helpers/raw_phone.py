"""A bare phone for protocol-edge tests: websockets' sync client plus the sans-I/O session.

The reference agent (smsgw_agent) is the well-behaved phone; this one can misbehave on purpose.
"""

from __future__ import annotations

from collections.abc import Sequence

from smsgw_client import Client
from websockets.sync.client import ClientConnection, connect


from device_bridge.protocol import (
    PRIVATE_TOKEN_HEADER,
    Credentials,
    DeliverReceived,
    DeviceSession,
    Encoding,
    Event,
    FailureClass,
    Receipt,
    ReceiptState,
    Side,
    SimInfo,
    WelcomeReceived,
)

__all__ = ["open_raw", "pair_raw", "RawPhone"]

_TIMEOUT = 10.0


def open_raw(
    url: str, authorization: str | None, *, subprotocols: Sequence[str] = (Encoding.PROTO,), private_token: str = ""
) -> ClientConnection:
    """`private_token`: the private-mode server's token, sent with a pairing code."""
    headers = {"Authorization": authorization} if authorization else {}
    if private_token:
        headers[PRIVATE_TOKEN_HEADER] = private_token
    return connect(
        url, subprotocols=list(subprotocols) or None, additional_headers=headers,  # type: ignore[arg-type]
        compression=None, open_timeout=_TIMEOUT, close_timeout=_TIMEOUT,
        legacy=True,  # a plain connection object; tests close it themselves
    )


class RawPhone:
    """A connected, handshaken session (Hello sent, Welcome received)."""

    def __init__(self, ws: ClientConnection, encoding: Encoding, window: int) -> None:
        self.ws = ws
        self.proto = DeviceSession(Side.PHONE, encoding, window=window)
        self.proto.send_hello(app_version="raw/1", sims=[SimInfo(1), SimInfo(2)])
        self.flush()
        self.welcome = self.next_event()
        assert isinstance(self.welcome, WelcomeReceived)

    def flush(self) -> None:
        for frame in self.proto.frames_to_send():
            self.ws.send(frame)

    _event_id = 0
    _pending: list[Event] = []

    def next_event(self, timeout: float = _TIMEOUT) -> Event:
        """The next protocol event; TimeoutError when none arrives within `timeout`."""
        while not self._pending:
            self.proto.receive_frame(self.ws.recv(timeout))
            self._pending = self.proto.events_received()
        return self._pending.pop(0)

    def next_deliver(self, timeout: float = _TIMEOUT) -> DeliverReceived:
        """The next Deliver, skipping Acks."""
        while True:
            event = self.next_event(timeout)
            if isinstance(event, DeliverReceived):
                return event

    def receipt(
        self,
        message_id: str,
        state: ReceiptState,
        recipient_index: int = 0,
        error: str = "",
        *,
        failure_class: FailureClass | None = None,
        attempt: int = 0,
        parts_done: int = 0,
    ) -> int:
        self._event_id += 1
        self.proto.send_receipt(
            Receipt(
                self._event_id, message_id, state, recipient_index, error,
                attempt=attempt, failure_class=failure_class, parts_done=parts_done,
            )
        )
        self.flush()
        return self._event_id


def pair_raw(
    grpc_target: str, token: str, url: str, *, window: int = 4, encoding: Encoding = Encoding.PROTO, private_token: str = ""
) -> tuple[RawPhone, Credentials]:
    with Client(grpc_target, token) as client:
        code = client.create_pairing_code(device_name="raw").code
    ws = open_raw(url, f"Pairing {code}", subprotocols=[encoding], private_token=private_token)
    phone = RawPhone(ws, encoding, window)
    assert isinstance(phone.welcome, WelcomeReceived) and phone.welcome.credentials is not None
    return phone, phone.welcome.credentials
