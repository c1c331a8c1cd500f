"""A bare phone for protocol-edge tests: websockets' sync client plus the sans-I/O session.

The reference agent (smsgw_agent) is the well-behaved phone; this one can misbehave on purpose.
"""

from __future__ import annotations

from collections.abc import Sequence

from smsgw_client import Client
from websockets.sync.client import ClientConnection, connect

from device_bridge.protocol import Credentials, DeviceSession, Encoding, Event, Side, SimInfo, WelcomeReceived

__all__ = ["open_raw", "pair_raw", "RawPhone"]

_TIMEOUT = 10.0


def open_raw(
    url: str, authorization: str | None, *, subprotocols: Sequence[str] = (Encoding.PROTO,)
) -> ClientConnection:
    headers = {"Authorization": authorization} if authorization else {}
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
        self.proto.send_hello(app_version="raw/1", sims=[SimInfo(1)])
        self.flush()
        self.welcome = self.next_event()
        assert isinstance(self.welcome, WelcomeReceived)

    def flush(self) -> None:
        for frame in self.proto.frames_to_send():
            self.ws.send(frame)

    def next_event(self, timeout: float = _TIMEOUT) -> Event:
        while True:
            events = self.proto.events_received()
            if events:
                self._pending = events[1:]
                return events[0]
            self.proto.receive_frame(self.ws.recv(timeout))


def pair_raw(grpc_target: str, token: str, url: str, *, window: int = 4, encoding: Encoding = Encoding.PROTO) -> tuple[RawPhone, Credentials]:
    with Client(grpc_target, token) as client:
        code = client.create_pairing_code(device_name="raw").code
    phone = RawPhone(open_raw(url, f"Pairing {code}", subprotocols=[encoding]), encoding, window)
    assert isinstance(phone.welcome, WelcomeReceived) and phone.welcome.credentials is not None
    return phone, phone.welcome.credentials
