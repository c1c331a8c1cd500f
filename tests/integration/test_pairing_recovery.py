"""A lost Welcome does not orphan a phone (docs/protocol.md "Pairing"), over real sockets on
`smsgw serve`: until the device has opened a session with its token, the same pairing code
re-issues that device's token (the earlier one stops working); after it, the code gets 401.
Concurrent sessions with one code make one device, the later one taking over (4003)."""

from __future__ import annotations

import time

import pytest
import trio
from smsgw_agent import Backoff, PhoneAgent, SimulatedModem
from smsgw_client import Client
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection

from device_bridge.protocol import CloseCode, Credentials, DeviceSession, Encoding, Side, SimInfo, WelcomeReceived
from tests.helpers.phones import UNPACED_MODEM
from tests.helpers.raw_phone import RawPhone, open_raw
from tests.helpers.server import ServerProcess

_WAIT = 10.0


def _refused(url: str, authorization: str) -> int:
    with pytest.raises(InvalidStatus) as caught:
        open_raw(url, authorization).close()
    return caught.value.response.status_code


def _hello(ws: ClientConnection) -> DeviceSession:
    proto = DeviceSession(Side.PHONE, Encoding.PROTO, window=4)
    proto.send_hello(app_version="raw/1", sims=[SimInfo(1)])
    for frame in proto.frames_to_send():
        ws.send(frame)
    return proto


def _welcome_or_close(ws: ClientConnection, proto: DeviceSession) -> Credentials | int:
    """The Welcome's credentials, or the close code the bridge ended the session with."""
    try:
        proto.receive_frame(ws.recv(_WAIT))
    except ConnectionClosed as closed:
        assert closed.rcvd is not None, "the bridge sent no close frame"
        return closed.rcvd.code
    (welcome,) = proto.events_received()
    assert isinstance(welcome, WelcomeReceived) and welcome.credentials is not None
    return welcome.credentials


def _close_code(ws: ClientConnection) -> int:
    with pytest.raises(ConnectionClosed) as caught:
        for _ in range(10):
            ws.recv(_WAIT)
    assert caught.value.rcvd is not None, "the bridge sent no close frame"
    return caught.value.rcvd.code


def _devices_named(client: Client, name: str) -> list[tuple[str, bool]]:
    return [(d.id, d.connected_with_token) for d in client.list_devices().devices if d.name == name]


def _wait_for_device(client: Client, name: str) -> None:
    deadline = time.monotonic() + _WAIT
    while not _devices_named(client, name):
        assert time.monotonic() < deadline, f"no device {name!r} was paired"
        time.sleep(0.05)


@pytest.mark.parametrize("welcome_read", [False, True], ids=["welcome-unread", "welcome-discarded"])
def test_lost_welcome_retry_gets_the_same_device_with_a_new_token(shared_server: ServerProcess, welcome_read: bool) -> None:
    server = shared_server
    name = f"lost-{welcome_read}"
    with Client(server.grpc_target, server.token) as client:
        code = client.create_pairing_code(device_name=name).code
        ws = open_raw(server.device_url, f"Pairing {code}")
        proto = _hello(ws)
        lost: Credentials | None = None
        if welcome_read:
            got = _welcome_or_close(ws, proto)
            assert isinstance(got, Credentials)
            lost = got  # read, then "never stored"
        ws.close()
        _wait_for_device(client, name)  # the code was redeemed, whether the Welcome arrived or not

        retry = RawPhone(open_raw(server.device_url, f"Pairing {code}"), Encoding.PROTO, 4)
        assert isinstance(retry.welcome, WelcomeReceived)
        creds = retry.welcome.credentials
        assert creds is not None and creds.device_id == retry.welcome.device_id
        assert _devices_named(client, name) == [(creds.device_id, False)]  # no second device
        if lost is not None:
            assert lost.device_id == creds.device_id and lost.token != creds.token
            assert _refused(server.device_url, f"Bearer {lost.token}") == 401
        retry.ws.close()

        again = RawPhone(open_raw(server.device_url, f"Bearer {creds.token}"), Encoding.PROTO, 4)
        assert isinstance(again.welcome, WelcomeReceived) and again.welcome.device_id == creds.device_id
        # The phone has shown it holds the token: the code is spent for good.
        assert _refused(server.device_url, f"Pairing {code}") == 401
        assert _devices_named(client, name) == [(creds.device_id, True)]
        again.ws.close()

        audit = [(e.action, e.actor) for e in client.list_audit_events(page_size=500).events if e.actor == creds.device_id]
        assert sorted(audit) == [("device.pair", creds.device_id), ("device.reissue", creds.device_id)]


def test_retry_takes_over_a_pairing_session_still_open(shared_server: ServerProcess) -> None:
    """The bridge may not yet know the first connection is dead: the retry replaces it."""
    server = shared_server
    with Client(server.grpc_target, server.token) as client:
        code = client.create_pairing_code(device_name="half-open").code
        first_ws = open_raw(server.device_url, f"Pairing {code}")
        first = _welcome_or_close(first_ws, _hello(first_ws))
        assert isinstance(first, Credentials)
        second = RawPhone(open_raw(server.device_url, f"Pairing {code}"), Encoding.PROTO, 4)
        assert _close_code(first_ws) == CloseCode.REPLACED
        assert isinstance(second.welcome, WelcomeReceived) and second.welcome.credentials is not None
        assert second.welcome.credentials.device_id == first.device_id
        assert _refused(server.device_url, f"Bearer {first.token}") == 401
        assert _devices_named(client, "half-open") == [(first.device_id, False)]
        second.ws.close()


def test_concurrent_pairing_with_one_code_makes_one_device(shared_server: ServerProcess) -> None:
    server = shared_server
    with Client(server.grpc_target, server.token) as client:
        code = client.create_pairing_code(device_name="race").code
        # Both upgrades are admitted before either session redeems the code.
        sockets = [open_raw(server.device_url, f"Pairing {code}") for _ in range(2)]
        protos = [_hello(ws) for ws in sockets]
        outcomes = [_welcome_or_close(ws, proto) for ws, proto in zip(sockets, protos, strict=True)]
        welcomed = [o for o in outcomes if isinstance(o, Credentials)]
        assert welcomed, outcomes
        assert all(o == CloseCode.REPLACED for o in outcomes if not isinstance(o, Credentials)), outcomes
        assert len({c.device_id for c in welcomed}) == 1
        device_id = welcomed[0].device_id
        assert _devices_named(client, "race") == [(device_id, False)]

        # Exactly one token works: the later pairing's.
        working = []
        for creds in welcomed:
            try:
                working.append(RawPhone(open_raw(server.device_url, f"Bearer {creds.token}"), Encoding.PROTO, 4))
            except InvalidStatus as refused:
                assert refused.response.status_code == 401
        assert len(working) == 1
        # Every pairing session still open was taken over: by the later pairing or the Bearer one.
        for ws, outcome in zip(sockets, outcomes, strict=True):
            if isinstance(outcome, Credentials):
                assert _close_code(ws) == CloseCode.REPLACED
        assert _refused(server.device_url, f"Pairing {code}") == 401
        assert _devices_named(client, "race") == [(device_id, True)]
        working[0].ws.close()
        for ws in sockets:
            ws.close()


def test_the_reference_phone_pairs_with_a_code_whose_first_welcome_was_lost(shared_server: ServerProcess) -> None:
    """smsgw_agent retries with its code after a pairing connection that brought no Welcome;
    here that first try is a raw connection that never read its Welcome."""
    server = shared_server
    with Client(server.grpc_target, server.token) as client:
        code = client.create_pairing_code(device_name="agent-retry").code
        ws = open_raw(server.device_url, f"Pairing {code}")
        _hello(ws)
        ws.close()
        _wait_for_device(client, "agent-retry")
        [(device_id, _)] = _devices_named(client, "agent-retry")

        phone = PhoneAgent(server.device_url, pairing_code=code, modem=SimulatedModem(UNPACED_MODEM), backoff=Backoff(scale=0.02))

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                with trio.fail_after(_WAIT):
                    await nursery.start(phone.run)
                nursery.cancel_scope.cancel()

        trio.run(main)
        assert phone.closed_reason is None, phone.closed_reason
        assert phone.credentials is not None and phone.device_id == phone.credentials.device_id == device_id
        assert _devices_named(client, "agent-retry") == [(device_id, False)]


def test_a_bearer_session_with_a_token_reissued_meanwhile_does_not_take_over(shared_server: ServerProcess) -> None:
    """Bearer tokens are checked at the upgrade; a re-pair may kill the token before that
    session's Hello. It must not replace the pairing session holding the live token, nor spend
    the code: it is closed 4004 (its credentials are revoked)."""
    server = shared_server
    with Client(server.grpc_target, server.token) as client:
        code = client.create_pairing_code(device_name="stale-bearer").code
        first_ws = open_raw(server.device_url, f"Pairing {code}")
        first = _welcome_or_close(first_ws, _hello(first_ws))
        assert isinstance(first, Credentials)
        first_ws.close()
        stale_ws = open_raw(server.device_url, f"Bearer {first.token}")  # admitted: the token is live now
        # The phone retries with the code before its Bearer session says Hello: the token dies.
        repaired = RawPhone(open_raw(server.device_url, f"Pairing {code}"), Encoding.PROTO, 4)
        assert isinstance(repaired.welcome, WelcomeReceived) and repaired.welcome.credentials is not None
        assert repaired.welcome.credentials.device_id == first.device_id

        assert _welcome_or_close(stale_ws, _hello(stale_ws)) == CloseCode.CREDENTIALS_REVOKED
        assert _devices_named(client, "stale-bearer") == [(first.device_id, False)]  # the code is not spent
        # The pairing session is still the device's: it answers a ping, and no close came first.
        repaired.ws.ping().wait(_WAIT)
        assert [d.online for d in client.list_devices().devices if d.name == "stale-bearer"] == [True]
        open_raw(server.device_url, f"Pairing {code}").close()  # still admitted (never sends Hello)
        repaired.ws.close()
