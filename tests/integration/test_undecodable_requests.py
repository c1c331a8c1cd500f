"""Requests whose bytes do not parse, sent over a raw gRPC channel to the real server (issue 14,
item 9): broken protobuf framing and a string field that is not UTF-8, to unary and streaming
methods. Each is INVALID_ARGUMENT naming the field (or `request`), the server logs no traceback,
and each counts against its caller's limits: a token's bucket, an address's failures."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from smsgw.v1 import messages_pb2

from smsgw_client import Client, ResourceExhausted
from tests.helpers.server import ServerProcess

BROKEN = b"\x0a\xff\xff\xff\x0f"  # field 1, length-delimited, a length past the end
MARK = "+15550009999"  # replaced by as many bytes that are not UTF-8
NOT_UTF8 = b"+1555000\xff\xfe\xc0\x80"


def _not_utf8(message: Any) -> bytes:
    data = message.SerializeToString()
    assert data.count(MARK.encode()) == 1 and len(NOT_UTF8) == len(MARK)
    return data.replace(MARK.encode(), NOT_UTF8)


def _call(channel: grpc.Channel, method: str, payload: bytes, token: str | None, *, stream: bool = False) -> grpc.RpcError:
    """The error of one call of `method` with `payload` as its raw request bytes."""
    metadata = [("authorization", f"Bearer {token}")] if token else []
    try:
        if stream:
            call = channel.unary_stream(method, request_serializer=None, response_deserializer=None)
            list(call(payload, metadata=metadata, timeout=10))
        else:
            channel.unary_unary(method, request_serializer=None, response_deserializer=None)(
                payload, metadata=metadata, timeout=10
            )
    except grpc.RpcError as exc:
        return exc
    raise AssertionError(f"{method} answered OK")


def _fields(exc: grpc.RpcError) -> list[str]:
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, (exc.code(), exc.details())
    status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    assert status is not None
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    return [v.field for v in bad.field_violations]


def _audit_failures(server: ServerProcess) -> list[tuple[str, str]]:
    """(source, detail) of every auth.failure audit row, owners' or not."""
    db = sqlite3.connect(f"file:{server.data_dir / 'smsgw.db'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT source, detail FROM audit WHERE action = 'auth.failure' ORDER BY id").fetchall()
    finally:
        db.close()


def _assert_no_traceback(server: ServerProcess) -> None:
    log = server.log_text()
    assert "Traceback" not in log and "DecodeError" not in log and "unexpected error" not in log, log[-3000:]


@pytest.fixture
def limited_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {
        "SMSGW_LIMITS__AUTH_FAILURES": "3",
        "SMSGW_LIMITS__AUTH_LOCKOUT": "60",
        "SMSGW_LIMITS__RATE_PER_TOKEN": "0.01",  # no refill while the test runs
        "SMSGW_LIMITS__BURST_PER_TOKEN": "6",
    }
    with ServerProcess(tmp_path_factory.mktemp("undecodable") / "data", env=env) as proc:
        yield proc


def test_undecodable_requests_are_invalid_argument_naming_the_field_without_a_traceback(
    shared_server: ServerProcess,
) -> None:
    server = shared_server
    token = server.token
    many = messages_pb2.SendMessagesRequest(
        messages=[
            messages_pb2.SendMessageRequest(phone_numbers=["+15551234567"], text_message={"text": "ok"}, idempotency_key="a"),
            messages_pb2.SendMessageRequest(
                phone_numbers=["+15551234567", MARK], text_message={"text": "ok"}, idempotency_key="b"
            ),
        ]
    )
    with grpc.insecure_channel(server.grpc_target) as channel:
        # Unary: broken framing, then a string that is not UTF-8 deep inside a batch.
        assert _fields(_call(channel, "/smsgw.v1.MessageService/SendMessage", BROKEN, token)) == ["request"]
        assert _fields(_call(channel, "/smsgw.v1.MessageService/SendMessages", _not_utf8(many), token)) == [
            "messages[1].phone_numbers[1]"
        ]
        # A big request (parsed in the worker thread, piece by piece): the fault deep inside.
        big = messages_pb2.SendMessagesRequest(
            messages=[
                messages_pb2.SendMessageRequest(
                    phone_numbers=["+15551234567", MARK if i == 900 else "+15551234568"],
                    text_message={"text": "x" * 100}, idempotency_key=f"big-{i}",
                )
                for i in range(1000)
            ]
        )
        assert big.ByteSize() > 100_000
        assert _fields(_call(channel, "/smsgw.v1.MessageService/SendMessages", _not_utf8(big), token)) == [
            "messages[900].phone_numbers[1]"
        ]
        assert _fields(_call(channel, "/smsgw.v1.MessageService/SendMessages", big.SerializeToString()[:-7], token)) == [
            "request"
        ]
        # Server streaming: the same two faults.
        watch = messages_pb2.WatchMessagesRequest(message_ids=["01J00000000000000000000000", MARK])
        assert _fields(_call(channel, "/smsgw.v1.MessageService/WatchMessages", _not_utf8(watch), token, stream=True)) == [
            "message_ids[1]"
        ]
        assert _fields(_call(channel, "/smsgw.v1.MessageService/ExportMessages", BROKEN, token, stream=True)) == ["request"]
        # Health takes no credentials; its requests parse through the same guard, and count as
        # a failed authentication of the address whose audit row names the method.
        assert _fields(_call(channel, "/grpc.health.v1.Health/Check", BROKEN, None)) == ["request"]
        assert ("127.0.0.1", "undecodable request to Check") in _audit_failures(server)
        # Nothing was stored for the batch (the whole call was refused).
    with Client(server.grpc_target, token) as client:
        assert not [m for m in client.list_messages(page_size=500).messages if m.idempotency_key in ("a", "b")]
    _assert_no_traceback(server)


def test_undecodable_requests_count_against_the_token_and_the_address(limited_server: ServerProcess) -> None:
    server = limited_server
    pair_token = server.token  # one sign-in: its bucket holds 6 calls and does not refill
    with grpc.insecure_channel(server.grpc_target) as channel:
        # With a token: each undecodable call takes from the token's bucket like any call.
        for _ in range(6):
            _fields(_call(channel, "/smsgw.v1.MessageService/SendMessage", BROKEN, pair_token))
        refused = _call(channel, "/smsgw.v1.MessageService/SendMessage", BROKEN, pair_token)
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.details()

        # Without one (a sign-in RPC): each is a failed authentication of the address; the
        # third locks it out, the right password included.
        for _ in range(3):
            assert _fields(_call(channel, "/smsgw.v1.AuthService/IssueToken", BROKEN, None)) == ["request"]
        locked = _call(channel, "/smsgw.v1.AuthService/IssueToken", BROKEN, None)
        assert locked.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, locked.details()
    with Client(server.grpc_target) as anonymous, pytest.raises(ResourceExhausted) as caught:
        anonymous.issue_token("admin", server.admin_password)
    assert [s for s, _ in caught.value.quota_violations] == ["source:127.0.0.1"]
    _assert_no_traceback(server)
