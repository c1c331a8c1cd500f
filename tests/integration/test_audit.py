"""The audit log over the API (ListAuditEvents, scope logs:read): each audited action with a
sensible actor, source and detail; no token, password or secret in any column nor in the
server log; paging with page_size/page_token."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from smsgw.v1 import audit_pb2, auth_pb2
from websockets.exceptions import ConnectionClosed

from device_bridge.protocol.codec import CloseCode

from smsgw_client import Client, InvalidArgument, Unauthenticated
from tests.helpers.auth import running_server, sign_in
from tests.helpers.raw_phone import pair_raw
from tests.helpers.server import ServerProcess

WRONG_PASSWORD = "wrong-password-that-must-not-be-logged"
LOOPBACK = "127.0.0.1"


@dataclass
class Story:
    server: ServerProcess
    token: str  # the admin's access token that made the calls (logs:read)
    issued: auth_pb2.TokenPair
    refreshed: auth_pb2.TokenPair
    revoked_jti: str
    device_id: str
    secrets: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Story]:
    """Issue, refresh, revoke, a pairing, a device deletion and a failed sign-in."""
    with running_server(tmp_path_factory.mktemp("audit")) as server:
        target = server.grpc_target
        issued = sign_in(target, "admin", server.admin_password)
        with Client(target) as client:
            refreshed = client.refresh_token(issued.refresh_token)
        victim = sign_in(target, "admin", server.admin_password)
        with Client(target, refreshed.access_token) as client:
            assert client.revoke_token(victim.access_jti) == 1
            code = client.create_pairing_code(device_name="audited phone").code
        phone, credentials = pair_raw(target, refreshed.access_token, server.device_url)
        try:
            with Client(target, refreshed.access_token) as client:
                client.delete_device(credentials.device_id)
            # The deletion ends the phone's live session (close code 4004).
            with pytest.raises(ConnectionClosed) as closed:
                for _ in range(100):  # bounded: anything the bridge still sends first
                    phone.ws.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == CloseCode.CREDENTIALS_REVOKED
        finally:
            phone.ws.close()
        with Client(target) as client, pytest.raises(Unauthenticated):
            client.issue_token("admin", WRONG_PASSWORD)
        secrets = [
            server.admin_password,
            WRONG_PASSWORD,
            (server.data_dir / "jwt.secret").read_text().strip(),
            credentials.token,
            code,
        ]
        for pair in (issued, refreshed, victim):
            for token in (pair.access_token, pair.refresh_token):
                secrets += [token, token.rsplit(".", 1)[1]]  # the whole token, and its signature
        yield Story(server, refreshed.access_token, issued, refreshed, victim.access_jti, credentials.device_id, secrets)


def _all_events(story: Story, **kwargs: object) -> list[audit_pb2.AuditEvent]:
    with Client(story.server.grpc_target, story.token) as client:
        response = client.list_audit_events(page_size=500, **kwargs)  # type: ignore[arg-type]
    assert response.next_page_token == ""
    return list(response.events)


def _one(events: list[audit_pb2.AuditEvent], action: str, **match: str) -> audit_pb2.AuditEvent:
    found = [e for e in events if e.action == action and all(getattr(e, k) == v for k, v in match.items())]
    assert len(found) == 1, (action, match, events)
    return found[0]


def test_each_action_is_audited_with_actor_source_and_detail(story: Story) -> None:
    events = _all_events(story)
    issued, refreshed = story.issued, story.refreshed
    issue = _one(events, "token.issue", detail=next(e.detail for e in events if issued.access_jti in e.detail))
    assert (issue.actor, issue.source) == ("admin", LOOPBACK)
    assert issued.refresh_jti in issue.detail
    refresh = _one(events, "token.refresh", actor=issued.refresh_jti, source=LOOPBACK)
    assert refreshed.access_jti in refresh.detail and refreshed.refresh_jti in refresh.detail
    revoke = _one(events, "token.revoke", actor=refreshed.access_jti, source=LOOPBACK)
    assert story.revoked_jti in revoke.detail
    pair = _one(events, "device.pair", actor=story.device_id, source=LOOPBACK)
    assert "audited phone" in pair.detail or "raw" in pair.detail
    delete = _one(events, "device.delete", actor=story.device_id, source=LOOPBACK)
    assert "deleted" in delete.detail
    failure = _one(events, "auth.failure", actor="admin", source=LOOPBACK)
    assert "wrong username or password" in failure.detail
    _one(events, "account.create", actor="admin")
    # Newest first, every entry timed.
    assert [e.id for e in events] == sorted((e.id for e in events), reverse=True)
    assert all(e.time.seconds > 0 for e in events)
    assert issue.id < refresh.id < revoke.id < pair.id < delete.id < failure.id


def test_no_column_holds_a_token_password_or_secret(story: Story) -> None:
    events = _all_events(story)
    assert len(events) >= 7
    for event in events:
        for column in ("action", "actor", "source", "detail"):
            value = getattr(event, column)
            for secret in story.secrets:
                assert secret not in value, (event.action, column)


def test_the_server_log_holds_no_token_password_or_secret(story: Story) -> None:
    log = story.server.log_text()
    assert log  # it did log something
    for secret in story.secrets:
        assert secret not in log


def test_action_filter(story: Story) -> None:
    issues = _all_events(story, action="token.issue")
    assert len(issues) == 2 and {e.action for e in issues} == {"token.issue"}
    assert _all_events(story, action="no.such.action") == []


def test_paging(story: Story) -> None:
    everything = [e.id for e in _all_events(story)]
    seen: list[int] = []
    token = ""
    with Client(story.server.grpc_target, story.token) as client:
        for _ in range(len(everything) + 2):  # bounded
            page = client.list_audit_events(page_size=2, page_token=token)
            assert len(page.events) <= 2
            seen += [e.id for e in page.events]
            token = page.next_page_token
            if not token:
                break
        assert not token
    assert seen == everything


@pytest.mark.parametrize(
    "page_token",
    [
        "!!",
        "not a token",
        base64.urlsafe_b64encode(b"abc").decode(),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        base64.urlsafe_b64encode(b"99999999999999999999999999").decode(),  # beyond a 64-bit id
        base64.urlsafe_b64encode(b"-1").decode(),
    ],
)
def test_bad_page_token_is_invalid_argument(story: Story, page_token: str) -> None:
    with Client(story.server.grpc_target, story.token) as client, pytest.raises(InvalidArgument) as caught:
        client.list_audit_events(page_token=page_token)
    assert [f for f, _ in caught.value.field_violations] == ["page_token"]


def test_page_size_is_bounded(story: Story) -> None:
    with Client(story.server.grpc_target, story.token) as client, pytest.raises(InvalidArgument) as caught:
        client.list_audit_events(page_size=501)
    assert [f for f, _ in caught.value.field_violations] == ["page_size"]
