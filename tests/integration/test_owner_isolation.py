"""Owners are isolated (RELIABILITY 20): with a valid token of its own, a second account can
neither see nor touch the admin's messages, devices, tokens or audit log. Another owner's
resource is NOT_FOUND, worded as for an id that does not exist (SendMessage pinned to another
owner's device: INVALID_ARGUMENT on device_id, as for an unknown device)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from smsgw.v1 import common_pb2

from smsgw_client import Client, DeadlineExceeded, InvalidArgument, NotFound
from tests.helpers.auth import running_server, sign_in
from tests.helpers.raw_phone import RawPhone, pair_raw
from tests.helpers.server import ServerProcess

PASSWORD = "mallory's long password"
UNKNOWN_MESSAGE = "01JNOSUCHMESSAGE0000000000"
UNKNOWN_DEVICE = "01JNOSUCHDEVICE00000000000"


@dataclass
class World:
    server: ServerProcess
    admin_token: str
    admin_jtis: tuple[str, str]
    admin_phone: RawPhone
    admin_device: str
    admin_message: str
    other_token: str
    other_phone: RawPhone
    other_device: str
    other_message: str


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with running_server(tmp_path_factory.mktemp("isolation")) as server:
        target = server.grpc_target
        admin = sign_in(target, "admin", server.admin_password, access_ttl=3600)
        with Client(target) as client:
            client.create_account("mallory", PASSWORD)
        other = sign_in(target, "mallory", PASSWORD, access_ttl=3600)
        admin_phone, admin_creds = pair_raw(target, admin.access_token, server.device_url)
        other_phone, other_creds = pair_raw(target, other.access_token, server.device_url)
        try:
            with Client(target, admin.access_token) as client:
                admin_message = client.send_message(["+15550000001"], "admin's secret text", device_id=admin_creds.device_id)
            assert admin_phone.next_deliver().delivery.message_id == admin_message.id
            with Client(target, other.access_token) as client:
                other_message = client.send_message(["+15550000002"], "mallory's own", device_id=other_creds.device_id)
            assert other_phone.next_deliver().delivery.message_id == other_message.id
            yield World(
                server, admin.access_token, (admin.access_jti, admin.refresh_jti), admin_phone,
                admin_creds.device_id, admin_message.id, other.access_token, other_phone, other_creds.device_id,
                other_message.id,
            )
        finally:
            admin_phone.ws.close()
            other_phone.ws.close()


def _same_answer(foreign: Exception, unknown: Exception, foreign_id: str, unknown_id: str) -> None:
    """The two errors say the same thing, up to the id the caller gave."""
    assert type(foreign) is type(unknown)
    assert str(foreign).replace(foreign_id, "ID") == str(unknown).replace(unknown_id, "ID")
    if isinstance(foreign, InvalidArgument):
        assert isinstance(unknown, InvalidArgument)
        assert foreign.field_violations == unknown.field_violations


def test_get_and_cancel_of_admins_message_are_not_found(world: World) -> None:
    with Client(world.server.grpc_target, world.other_token) as client:
        for call in (client.get_message, client.cancel_message):
            with pytest.raises(NotFound) as foreign:
                call(world.admin_message)
            with pytest.raises(NotFound) as unknown:
                call(UNKNOWN_MESSAGE)
            _same_answer(foreign.value, unknown.value, world.admin_message, UNKNOWN_MESSAGE)
        assert client.get_message(world.other_message).id == world.other_message
    with Client(world.server.grpc_target, world.admin_token) as client:
        assert client.get_message(world.admin_message).state == common_pb2.DISPATCHED  # not cancelled


def test_list_and_export_do_not_show_admins_message(world: World) -> None:
    with Client(world.server.grpc_target, world.other_token) as client:
        assert [m.id for m in client.iter_messages()] == [world.other_message]
        assert [m.id for m in client.export_messages(timeout=10)] == [world.other_message]
        assert list(client.list_messages(device_id=world.admin_device).messages) == []
        assert list(client.export_messages(device_id=world.admin_device, timeout=10)) == []
    with Client(world.server.grpc_target, world.admin_token) as client:
        listed = {m.id for m in client.iter_messages()}
        assert world.admin_message in listed and world.other_message not in listed


def _watch(client: Client, **kwargs: object) -> list[str]:
    """Message ids of the events a watch yields within a bounded wait."""
    seen = []
    try:
        for event in client.watch_messages(timeout=1.0, **kwargs):  # type: ignore[arg-type]
            seen.append(event.message_id)
    except DeadlineExceeded:
        pass
    return seen


def test_watch_yields_none_of_admins_events(world: World) -> None:
    with Client(world.server.grpc_target, world.other_token) as client:
        replay = _watch(client, after_event_id=0)
        assert replay and set(replay) == {world.other_message}  # its own events, and only those
        assert _watch(client, after_event_id=0, message_ids=[world.admin_message]) == []
    with Client(world.server.grpc_target, world.admin_token) as client:
        admins = set(_watch(client, after_event_id=0))
        assert world.admin_message in admins and world.other_message not in admins


def test_send_pinned_to_admins_device_reveals_nothing(world: World) -> None:
    with Client(world.server.grpc_target, world.other_token) as client:
        with pytest.raises(InvalidArgument) as foreign:
            client.send_message(["+15550000003"], "hijack", device_id=world.admin_device)
        with pytest.raises(InvalidArgument) as unknown:
            client.send_message(["+15550000003"], "hijack", device_id=UNKNOWN_DEVICE)
        assert [f for f, _ in foreign.value.field_violations] == ["device_id"]
        _same_answer(foreign.value, unknown.value, world.admin_device, UNKNOWN_DEVICE)
        assert [m.id for m in client.iter_messages()] == [world.other_message]  # nothing stored
    with pytest.raises(TimeoutError):
        world.admin_phone.next_deliver(timeout=0.5)  # and nothing reached the admin's phone


def test_delete_of_admins_device_is_not_found_and_it_keeps_working(world: World) -> None:
    with Client(world.server.grpc_target, world.other_token) as client:
        with pytest.raises(NotFound) as foreign:
            client.delete_device(world.admin_device)
        with pytest.raises(NotFound) as unknown:
            client.delete_device(UNKNOWN_DEVICE)
        _same_answer(foreign.value, unknown.value, world.admin_device, UNKNOWN_DEVICE)
        assert [d.id for d in client.list_devices().devices] == [world.other_device]
    with Client(world.server.grpc_target, world.admin_token) as client:
        devices = client.list_devices().devices
        assert [d.id for d in devices] == [world.admin_device] and devices[0].online
        sent = client.send_message(["+15550000004"], "still mine", device_id=world.admin_device)
        assert world.admin_phone.next_deliver().delivery.message_id == sent.id


def test_revoke_of_admins_jti_is_not_found_and_the_token_keeps_working(world: World) -> None:
    with Client(world.server.grpc_target, world.other_token) as client:
        for jti in world.admin_jtis:
            with pytest.raises(NotFound) as foreign:
                client.revoke_token(jti)
            with pytest.raises(NotFound) as unknown:
                client.revoke_token("01JNOSUCHTOKEN000000000000")
            _same_answer(foreign.value, unknown.value, jti, "01JNOSUCHTOKEN000000000000")
    with Client(world.server.grpc_target, world.admin_token) as client:
        client.list_devices()


def test_audit_log_shows_only_the_callers_entries(world: World) -> None:
    with Client(world.server.grpc_target, world.other_token) as client:
        mine = list(client.list_audit_events(page_size=500).events)
    with Client(world.server.grpc_target, world.admin_token) as client:
        admins = list(client.list_audit_events(page_size=500).events)
    assert mine and admins
    assert {e.id for e in mine}.isdisjoint({e.id for e in admins})
    mine_text = " ".join(f"{e.actor} {e.detail}" for e in mine)
    for secretless_but_foreign in (*world.admin_jtis, world.admin_device, "admin"):
        assert secretless_but_foreign not in mine_text
    actions = {e.action for e in mine}
    assert {"account.create", "token.issue", "device.pair"} <= actions
    assert any(e.action == "device.pair" and e.actor == world.other_device for e in mine)
    assert any(e.action == "device.pair" and e.actor == world.admin_device for e in admins)
    assert world.other_device not in " ".join(f"{e.actor} {e.detail}" for e in admins)
