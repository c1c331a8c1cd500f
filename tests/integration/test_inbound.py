"""Inbound SMS over real sockets: a phone forwards what it received, the bridge stores it once
per phone id before acknowledging it, and InboundService lists and streams it.

Raw phones (tests/helpers/raw_phone.py) control every frame; reference phones (smsgw_agent)
lose an Ack the way a phone would, by losing the session. No assertion is made on time; every
wait is bounded, and streams end on a marker SMS rather than on a quiet period.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
import json
import re
import secrets
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
from smsgw.v1 import inbound_pb2
from smsgw_client import Client, InvalidArgument
from websockets.exceptions import ConnectionClosed

from device_bridge.protocol import AckReceived, Credentials, Encoding, InboundSms, encode
from smsgw.device.v1 import device_pb2
from smsgw_agent import Backoff, PhoneAgent, SimulatedModem
from tests.helpers.auth import sign_in, wait_until
from tests.helpers.phones import UNPACED_MODEM, start_phones
from tests.helpers.raw_phone import RawPhone, open_raw, pair_raw
from tests.helpers.postgres import BACKENDS
from tests.helpers.server import SMSGW, ServerProcess, serve_on

SENDER = "+15550001111"
TIMEOUT = 20.0
_ids = itertools.count(1)



@pytest.fixture(params=BACKENDS)
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    """This suite runs on SQLite and on PostgreSQL."""
    with serve_on(request.param, tmp_path / "data") as proc:
        yield proc


@pytest.fixture(scope="module", params=BACKENDS)
def shared_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with serve_on(request.param, tmp_path_factory.mktemp("shared") / "data") as proc:
        yield proc

def _sms(text: str, *, event_id: int | None = None, phone_id: str | None = None, sender: str = SENDER) -> InboundSms:
    n = next(_ids)
    return InboundSms(event_id or n, phone_id or f"phone-sms-{n}", sender, text=text, sim_number=1,
                      received_at=datetime(2030, 1, 1, tzinfo=UTC) + timedelta(seconds=n))  # fmt: skip


def _forward(phone: RawPhone, sms: InboundSms) -> None:
    phone.proto.send_inbound(sms)
    phone.flush()


def _acked(phone: RawPhone, event_id: int) -> None:
    """Read until the Ack naming `event_id` (bounded by the raw phone's receive timeout)."""
    for _ in range(20):
        event = phone.next_event()
        if isinstance(event, AckReceived) and event_id in event.event_ids:
            return
    raise AssertionError(f"no Ack for event {event_id}")


def _reconnect(server: ServerProcess, creds: Credentials, encoding: Encoding = Encoding.PROTO) -> RawPhone:
    return RawPhone(open_raw(server.device_url, f"Bearer {creds.token}", subprotocols=[encoding]), encoding, 4)


def _stored(client: Client, device_id: str) -> list[inbound_pb2.InboundMessage]:
    return list(client.list_inbound(device_id=device_id, page_size=500).messages)


def _watch_until(client: Client, text: str, *, after: int | None = 0, device_id: str = "") -> list[inbound_pb2.InboundEvent]:
    """Every event from the stream up to and including the SMS with `text` (a marker)."""
    seen = []
    stream = client.watch_inbound(after, device_id, timeout=TIMEOUT)
    try:
        for event in stream:
            seen.append(event)
            if event.message.text_message.text == text:
                return seen
    finally:
        stream.close()
    raise AssertionError(f"the stream ended before {text!r}")


def _assert_logs_clean(server: ServerProcess, secrets_: list[str]) -> None:
    text = server.log_text()
    for secret in secrets_:
        assert secret not in text, "an inbound body or sender reached the server log"
    assert not re.search(r"\+\d{8,15}", text), "a full phone number reached the server log"


# ---- idempotency: the Ack was lost, the phone sends the SMS again --------------------------


@pytest.mark.parametrize("encoding", [Encoding.PROTO, Encoding.JSON])
def test_an_inbound_sent_twice_is_stored_once_and_watched_once(shared_server: ServerProcess, encoding: Encoding) -> None:
    server = shared_server
    phone, creds = pair_raw(server.grpc_target, server.token, server.device_url, encoding=encoding)
    first = _sms("your parcel is here")
    with Client(server.grpc_target, server.token) as client:
        _forward(phone, first)
        # Stored (the bridge commits before it Acks); the phone "loses" the Ack with its session.
        assert wait_until(lambda: len(_stored(client, creds.device_id)) == 1, timeout=TIMEOUT)
        phone.ws.close()

        again = _reconnect(server, creds, encoding)
        _forward(again, first)  # the same phone id (and event id), as a phone re-sends it
        _acked(again, first.event_id)  # acknowledged again, so the phone can forget it
        marker = _sms("marker after the re-send")
        _forward(again, marker)
        _acked(again, marker.event_id)

        stored = _stored(client, creds.device_id)
        assert [m.text_message.text for m in stored] == ["marker after the re-send", "your parcel is here"]
        events = _watch_until(client, "marker after the re-send", device_id=creds.device_id)
        assert [e.message.text_message.text for e in events] == ["your parcel is here", "marker after the re-send"]
        got = events[0].message
        assert (got.sender, got.sim_number, got.device_id) == (SENDER, 1, creds.device_id)
        assert got.received_at.ToDatetime(tzinfo=UTC) == first.received_at
        assert got.id == stored[1].id
        again.ws.close()


def test_the_reference_phone_resends_after_a_lost_ack_and_the_server_keeps_one_copy(server: ServerProcess) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            [phone] = await start_phones(nursery, server.grpc_target, server.token, server.device_url, 1)
            assert phone.device_id is not None
            with Client(server.grpc_target, server.token) as client:
                stored = lambda: _stored(client, phone.device_id)  # noqa: E731
                phone.ignore_acks = True  # the Ack arrives, but as if the session died first
                phone_id = phone.receive_sms(SENDER, "code 777")
                with trio.fail_after(TIMEOUT):
                    while len(await trio.to_thread.run_sync(stored)) != 1:
                        await trio.sleep(0.05)
                assert list(phone.inbound_unacked)  # still unacknowledged on the phone
                await phone.drop_session()
                phone.ignore_acks = False
                with trio.fail_after(TIMEOUT):
                    await phone.wait_for(lambda p: p.sessions >= 2 and not p.inbound_unacked)
                phone.receive_sms(SENDER, "marker")
                events = await trio.to_thread.run_sync(lambda: _watch_until(client, "marker", device_id=phone.device_id))
                assert [e.message.text_message.text for e in events] == ["code 777", "marker"]
                assert len(await trio.to_thread.run_sync(stored)) == 2
                assert phone_id  # the phone's id is its own; the server's id is a ULID
                assert all(len(m.id) == 26 for m in await trio.to_thread.run_sync(stored))
            nursery.cancel_scope.cancel()

    trio.run(main)
    _assert_logs_clean(server, ["code 777", SENDER])


# ---- WatchInbound: resumable; ListInbound: pages, owner isolation ---------------------------


def test_watch_resumes_from_a_cursor(shared_server: ServerProcess) -> None:
    server = shared_server
    phone, creds = pair_raw(server.grpc_target, server.token, server.device_url)
    with Client(server.grpc_target, server.token) as client:
        for text in ("one", "two", "three"):
            sms = _sms(text)
            _forward(phone, sms)
            _acked(phone, sms.event_id)
        events = _watch_until(client, "three", device_id=creds.device_id)
        assert [e.message.text_message.text for e in events] == ["one", "two", "three"]
        assert [e.event_id for e in events] == sorted({e.event_id for e in events})
        resumed = _watch_until(client, "three", after=events[0].event_id, device_id=creds.device_id)
        assert [e.message.text_message.text for e in resumed] == ["two", "three"]
        # The same SMS on every phone of the owner when no device is named, in the same order.
        everything = _watch_until(client, "three", after=events[0].event_id - 1)
        assert [e.event_id for e in everything][-3:] == [e.event_id for e in events]
    phone.ws.close()


def test_list_pages_newest_first_and_other_owners_see_nothing(shared_server: ServerProcess) -> None:
    server = shared_server
    phone, creds = pair_raw(server.grpc_target, server.token, server.device_url)
    texts = [f"page test {i}" for i in range(5)]
    with Client(server.grpc_target, server.token) as client:
        for text in texts:
            sms = _sms(text)
            _forward(phone, sms)
            _acked(phone, sms.event_id)
        pages, token = [], ""
        for _ in range(10):  # bounded: 3 pages expected
            page = client.list_inbound(device_id=creds.device_id, page_size=2, page_token=token)
            pages.append([m.text_message.text for m in page.messages])
            token = page.next_page_token
            if not token:
                break
        assert [len(p) for p in pages] == [2, 2, 1]
        assert [t for p in pages for t in p] == texts[::-1]
        window = client.list_inbound(
            device_id=creds.device_id,
            received_after=datetime(2030, 1, 1, tzinfo=UTC),
            received_before=datetime(2031, 1, 1, tzinfo=UTC),
        )
        assert len(window.messages) == 5

        username, password = f"other-{secrets.token_hex(4)}", secrets.token_urlsafe(16)
        client.create_account(username, password)
    other = sign_in(server.grpc_target, username, password)
    with Client(server.grpc_target, other.access_token) as client:
        assert list(client.list_inbound().messages) == []
        assert list(client.list_inbound(device_id=creds.device_id).messages) == []
        other_phone, other_creds = pair_raw(server.grpc_target, other.access_token, server.device_url)
        _forward(other_phone, _sms("only mine"))
        events = _watch_until(client, "only mine")  # from event 0: every event of this owner
        assert [e.message.text_message.text for e in events] == ["only mine"]
        assert [m.device_id for m in client.list_inbound().messages] == [other_creds.device_id]
        other_phone.ws.close()
    phone.ws.close()


# ---- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"page_size": 501}, "page_size"),
        ({"page_token": "not-a-token"}, "page_token"),
        ({"device_id": "x" * 65}, "device_id"),
        (
            {"received_after": datetime(2030, 1, 2, tzinfo=UTC), "received_before": datetime(2030, 1, 1, tzinfo=UTC)},
            "received_before",
        ),
    ],
)
def test_list_names_the_bad_field(shared_server: ServerProcess, kwargs: dict[str, object], field: str) -> None:
    with Client(shared_server.grpc_target, shared_server.token) as client, pytest.raises(InvalidArgument) as caught:
        client.list_inbound(**kwargs)  # type: ignore[arg-type]
    assert [f for f, _ in caught.value.field_violations] == [field]


@pytest.mark.parametrize(("after", "device_id", "field"), [(2**63, "", "after_event_id"), (0, " dev", "device_id")])
def test_watch_names_the_bad_field(shared_server: ServerProcess, after: int, device_id: str, field: str) -> None:
    with Client(shared_server.grpc_target, shared_server.token) as client, pytest.raises(InvalidArgument) as caught:
        next(client.watch_inbound(after, device_id, timeout=TIMEOUT))
    assert [f for f, _ in caught.value.field_violations] == [field]


@pytest.mark.parametrize("encoding", [Encoding.PROTO, Encoding.JSON])
def test_an_inbound_without_event_id_closes_with_4000_and_stores_nothing(
    shared_server: ServerProcess, encoding: Encoding
) -> None:
    # It cannot be refused alone (Reject names the event id). Invalid Inbounds that name their
    # event id are refused and over-long ones stored truncated: tests/integration/test_event_refusal.py.
    inbound = device_pb2.Inbound(event_id=0, id="event-0", sender=SENDER, text="x")
    server = shared_server
    phone, creds = pair_raw(server.grpc_target, server.token, server.device_url, encoding=encoding)
    phone.ws.send(encode(device_pb2.DeviceFrame(inbound=inbound), encoding))
    with pytest.raises(ConnectionClosed) as closed:
        for _ in range(20):  # bounded: the close comes first
            phone.ws.recv(TIMEOUT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4000
    assert closed.value.rcvd.reason.startswith("invalid Inbound")
    with Client(server.grpc_target, server.token) as client:
        assert _stored(client, creds.device_id) == []


# ---- the CLI, the simulator and private mode ------------------------------------------------


def test_cli_lists_and_watches(shared_server: ServerProcess) -> None:
    server = shared_server
    phone, creds = pair_raw(server.grpc_target, server.token, server.device_url)
    sms = _sms("cli can read me")
    _forward(phone, sms)
    _acked(phone, sms.event_id)
    args = ["--server", server.grpc_target, "--token-file", str(server.token_file())]
    listed = subprocess.run(
        [SMSGW, "inbound", "list", *args, "--device", creds.device_id], capture_output=True, text=True, timeout=60
    )
    assert listed.returncode == 0, listed.stderr
    assert "cli can read me" in listed.stdout and SENDER in listed.stdout  # the owner's own data
    watched = subprocess.Popen(
        [SMSGW, "inbound", "watch", *args, "--after", "0", "--device", creds.device_id],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert watched.stdout is not None
        line = watched.stdout.readline()
    finally:
        watched.kill()
        watched.wait(10)
        assert watched.stdout is not None
        watched.stdout.close()
    doc = json.loads(line)
    assert (doc["text"], doc["sender"], doc["device_id"], doc["sim"]) == ("cli can read me", SENDER, creds.device_id, 1)
    phone.ws.close()


def test_simulate_receive_forwards_an_sms_per_phone(server: ServerProcess, tmp_path: Path) -> None:
    args = ["--server", server.grpc_target, "--token-file", str(server.token_file())]
    sim = subprocess.Popen(
        [SMSGW, "simulate", *args, "--devices", "2", "--state-file", str(tmp_path / "phones.json"),
         "--device-url", server.device_url, "--reconnect-scale", "0.02", "--duration", "60",
         "--receive", "hello from a simulated phone", "--receive-from", "SIMBANK"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        with Client(server.grpc_target, server.token) as client:
            listed = lambda: client.list_inbound().messages  # noqa: E731
            assert wait_until(lambda: len(listed()) == 2, timeout=TIMEOUT)
            messages = listed()
            assert {m.text_message.text for m in messages} == {"hello from a simulated phone"}
            assert {m.sender for m in messages} == {"SIMBANK"}
            assert len({m.device_id for m in messages}) == 2
    finally:
        sim.terminate()
        sim.wait(30)


def test_a_reference_phone_pairs_with_a_private_mode_server(tmp_path: Path) -> None:
    token = secrets.token_urlsafe(32)
    proc = ServerProcess(tmp_path / "data", env={"SMSGW_GATEWAY__MODE": "private", "SMSGW_GATEWAY__PRIVATE_TOKEN": token})
    proc.start()
    try:

        def code() -> str:
            with Client(proc.grpc_target, proc.token) as client:
                return client.create_pairing_code(device_name="private").code

        def agent(private_token: str | None) -> PhoneAgent:
            return PhoneAgent(
                proc.device_url, pairing_code=code(), modem=SimulatedModem(UNPACED_MODEM),
                backoff=Backoff(scale=0.02), private_token=private_token,
            )  # fmt: skip

        async def main() -> None:
            refused = agent(None)
            with trio.fail_after(TIMEOUT):
                await refused.run()
            assert refused.closed_reason == "http_401"
            async with trio.open_nursery() as nursery:
                paired = agent(token)
                with trio.fail_after(TIMEOUT):
                    await nursery.start(paired.run)
                assert paired.sessions == 1 and paired.token
                nursery.cancel_scope.cancel()

        trio.run(main)
    finally:
        proc.stop()
