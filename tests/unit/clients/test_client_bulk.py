"""Client.send_messages / AsyncClient.send_messages against a fake SendMessages on a real
socket: keys per item (kept across gRPC's retries), sealing, and typed per-item results."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from smsgw.v1 import messages_pb2, messages_pb2_grpc
from smsgw_client import (
    AlreadyExists,
    AsyncClient,
    Client,
    InvalidArgument,
    OutgoingMessage,
    ResourceExhausted,
    SendResult,
    envelope,
    from_status,
)
from smsgw_client._batch import send_messages_request
from tests.unit.clients.test_client import BOUND, TOKEN, _packed, run

NUMBER = "+4915112345678"


class FakeBulk(messages_pb2_grpc.MessageServiceServicer):
    """Answers each item by its text: "bad" -> INVALID_ARGUMENT, "capped" ->
    RESOURCE_EXHAUSTED, "taken" -> ALREADY_EXISTS, a key starting "old" -> a replay."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[messages_pb2.SendMessagesRequest] = []
        self.fail = 0  # abort this many calls with UNAVAILABLE first

    def SendMessages(self, request: messages_pb2.SendMessagesRequest, context: grpc.ServicerContext) -> Any:
        with self.lock:
            self.requests.append(request)
            fail = self.fail > 0
            self.fail -= fail
        if fail:
            context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")
        results = []
        for i, item in enumerate(request.messages):
            text = item.text_message.text
            if text == "bad":
                detail = error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=f"messages[{i}].phone_numbers[0]", description="not E.164"
                        )
                    ]
                )
                error = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message="bad", details=[_packed(detail)])
                results.append(messages_pb2.SendMessageResult(error=error))
            elif text == "capped":
                retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=30))
                error = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message="cap", details=[_packed(retry)])
                results.append(messages_pb2.SendMessageResult(error=error))
            elif text == "taken":
                error = status_pb2.Status(code=code_pb2.ALREADY_EXISTS, message="other content")
                results.append(messages_pb2.SendMessageResult(error=error))
            else:
                message = messages_pb2.Message(id=f"m{i}", idempotency_key=item.idempotency_key)
                if item.HasField("text_message"):
                    message.text_message.CopyFrom(item.text_message)
                message.is_encrypted = item.is_encrypted
                created = not item.idempotency_key.startswith("old")
                results.append(messages_pb2.SendMessageResult(message=message, created=created))
        return messages_pb2.SendMessagesResponse(results=results)


@pytest.fixture
def fake() -> FakeBulk:
    return FakeBulk()


@pytest.fixture
def target(fake: FakeBulk) -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    messages_pb2_grpc.add_MessageServiceServicer_to_server(fake, server)  # type: ignore[no-untyped-call,unused-ignore]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None).wait(BOUND)


def test_results_in_order_with_typed_errors(fake: FakeBulk, target: str) -> None:
    items = [
        OutgoingMessage([NUMBER], "hello"),
        OutgoingMessage(["12"], "bad"),
        OutgoingMessage([NUMBER], "again", idempotency_key="old-1"),
        OutgoingMessage([NUMBER], "capped"),
        OutgoingMessage([NUMBER], "taken", idempotency_key="k-9"),
    ]
    with Client(target, TOKEN) as c:
        results = c.send_messages(items)
    assert [r.index for r in results] == [0, 1, 2, 3, 4]
    assert [r.ok for r in results] == [True, False, True, False, False]
    assert results[0].created and results[0].message is not None and results[0].message.text_message.text == "hello"
    assert not results[2].created and results[2].message is not None and results[2].message.idempotency_key == "old-1"
    bad = results[1].error
    assert isinstance(bad, InvalidArgument) and bad.field_violations == [("messages[1].phone_numbers[0]", "not E.164")]
    capped = results[3].error
    assert isinstance(capped, ResourceExhausted) and capped.retry_delay == 30
    assert isinstance(results[4].error, AlreadyExists) and results[4].message is None


def test_keys_per_item_kept_across_grpc_retries(fake: FakeBulk, target: str) -> None:
    fake.fail = 2
    items = [OutgoingMessage([NUMBER], "a"), OutgoingMessage([NUMBER], "b", idempotency_key="mine"), OutgoingMessage([NUMBER], "c")]
    with Client(target, TOKEN) as c:
        results = c.send_messages(items)
    assert len(fake.requests) == 3
    keys = [[m.idempotency_key for m in r.messages] for r in fake.requests]
    assert keys[0] == keys[1] == keys[2], "gRPC's retries resend the very same keys"
    made = keys[0]
    assert made[1] == "mine" and len({made[0], made[2]}) == 2 and all(len(k) == 32 for k in (made[0], made[2]))
    assert [r.message.idempotency_key for r in results if r.message] == made


def test_passphrase_seals_each_item_deterministically_by_key() -> None:
    items = [OutgoingMessage([NUMBER], "secret one", idempotency_key="k1"), OutgoingMessage([NUMBER], data=b"\x01", port=9, idempotency_key="k2")]
    first = send_messages_request(items, "pass phrase")
    again = send_messages_request(items, "pass phrase")
    assert first == again, "a retried batch with the same keys is a replay, not a conflict"
    text, data = first.messages
    assert text.is_encrypted and data.is_encrypted
    assert envelope.decrypt("pass phrase", text.text_message.text) == "secret one"
    assert envelope.decrypt_bytes("pass phrase", data.data_message.data) == b"\x01"


def test_local_mistakes_name_the_item() -> None:
    with pytest.raises(ValueError, match=r"items\[1\]"):
        send_messages_request([OutgoingMessage([NUMBER], "ok"), OutgoingMessage([NUMBER])])
    with pytest.raises(TypeError, match=r"items\[0\]"):
        send_messages_request([{"phone_numbers": [NUMBER], "text": "hi"}])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        send_messages_request(OutgoingMessage([NUMBER], "one"))  # type: ignore[arg-type]


def test_from_status_maps_codes() -> None:
    assert isinstance(from_status(status_pb2.Status(code=code_pb2.ALREADY_EXISTS, message="x")), AlreadyExists)
    unknown = from_status(status_pb2.Status(code=99, message="?"))
    assert unknown.code is grpc.StatusCode.UNKNOWN


def test_async_send_messages(fake: FakeBulk, target: str) -> None:
    fake.fail = 1

    async def main() -> list[SendResult]:
        async with AsyncClient(target, TOKEN) as c:
            return await c.send_messages(
                [OutgoingMessage([NUMBER], "hello", idempotency_key="k1"), OutgoingMessage(["12"], "bad")],
                passphrase=None,
            )

    results = run(main)
    assert [r.ok for r in results] == [True, False]
    assert isinstance(results[1].error, InvalidArgument)
    assert [m.idempotency_key for m in fake.requests[0].messages] == [m.idempotency_key for m in fake.requests[1].messages]


def test_async_send_messages_seals_off_the_loop(fake: FakeBulk, target: str) -> None:
    async def main() -> list[SendResult]:
        async with AsyncClient(target, TOKEN) as c:
            return await c.send_messages([OutgoingMessage([NUMBER], "secret", idempotency_key="k1")], passphrase="pw pw pw")

    [result] = run(main)
    sent = fake.requests[0].messages[0]
    assert result.ok and sent.is_encrypted
    assert envelope.decrypt("pw pw pw", sent.text_message.text) == "secret"
