"""Bad input over the real gRPC API: a clear status naming the field, and nothing stored."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from smsgw.v1 import messages_pb2, messages_pb2_grpc

from smsgw_client import AlreadyExists, Client, InvalidArgument, NotFound, Unauthenticated
from tests.helpers.server import ServerProcess

GSM_161 = "a" * 161 * 10  # 1,610 GSM-7 characters: 11 parts


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"phone_numbers": ["5551234567"], "text": "hi"}, "phone_numbers[0]"),
        ({"phone_numbers": ["+1555123"], "text": "hi"}, "phone_numbers[0]"),
        ({"phone_numbers": ["+15551234567", "+1555abc4567"], "text": "hi"}, "phone_numbers[1]"),
        ({"phone_numbers": ["+15551234567", "+15551234567"], "text": "hi"}, "phone_numbers[1]"),
        ({"phone_numbers": [], "text": "hi"}, "phone_numbers"),
        ({"phone_numbers": ["+15551234567"], "text": ""}, "text_message.text"),
        ({"phone_numbers": ["+15551234567"], "text": GSM_161}, "text_message.text"),
        ({"phone_numbers": ["+15551234567"], "text": "😀" * 700}, "text_message.text"),
        ({"phone_numbers": ["+15551234567"], "data": b"\x01", "port": 0}, "data_message.port"),
        ({"phone_numbers": ["+15551234567"], "text": "hi", "device_id": "01NOSUCHDEVICE0000000000000"}, "device_id"),
        ({"phone_numbers": ["+15551234567"], "text": "hi", "priority": 500}, "priority"),
        ({"phone_numbers": ["+15551234567"], "text": "hi", "sim_number": 9}, "sim_number"),
        ({"phone_numbers": ["+15551234567"], "text": "hi", "ttl": 10**9}, "ttl"),
        ({"phone_numbers": ["+15551234567"], "text": "hi", "idempotency_key": "has space"}, "idempotency_key"),
    ],
)
def test_send_rejects_bad_fields(shared_server: ServerProcess, kwargs: dict[str, object], field: str) -> None:
    server = shared_server
    with Client(server.grpc_target, server.token) as client:
        before = client.list_messages(page_size=500)
        numbers = kwargs.pop("phone_numbers")
        with pytest.raises(InvalidArgument) as caught:
            client.send_message(numbers, kwargs.pop("text", None), **kwargs)  # type: ignore[arg-type]
        assert field in [f for f, _ in caught.value.field_violations]
        assert client.list_messages(page_size=500) == before


def test_send_without_content_names_the_oneof(shared_server: ServerProcess) -> None:
    server = shared_server
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = messages_pb2_grpc.MessageServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.SendMessage(
                messages_pb2.SendMessageRequest(phone_numbers=["+15551234567"]),
                metadata=[("authorization", f"Bearer {server.token}")],
                timeout=10,
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "content" in caught.value.details()


def test_unknown_ids_and_bad_tokens(shared_server: ServerProcess) -> None:
    server = shared_server
    with Client(server.grpc_target, server.token) as client:
        with pytest.raises(NotFound):
            client.get_message("01JNOSUCHMESSAGE0000000000")
        with pytest.raises(NotFound):
            client.cancel_message("01JNOSUCHMESSAGE0000000000")
        with pytest.raises(InvalidArgument) as caught:
            client.list_messages(page_token="!!")
        assert caught.value.field_violations[0][0] == "page_token"
    with Client(server.grpc_target, "not-a-token") as client:
        with pytest.raises(Unauthenticated):
            client.list_messages()
    with Client(server.grpc_target, None) as client:
        with pytest.raises(Unauthenticated):
            client.list_devices()


def test_idempotency_key_same_content_same_message_other_content_refused(server: ServerProcess) -> None:
    with Client(server.grpc_target, server.token) as client:
        first = client.send_message(["+15551234567"], "code 1234", idempotency_key="otp-1")
        again = client.send_message(["+15551234567"], "code 1234", idempotency_key="otp-1")
        assert again.id == first.id
        with pytest.raises(AlreadyExists):
            client.send_message(["+15551234567"], "code 9999", idempotency_key="otp-1")
        stored = client.list_messages().messages
        assert [m.id for m in stored] == [first.id]
        assert stored[0].text_message.text == "code 1234"


def test_health_and_reflection(shared_server: ServerProcess) -> None:
    server = shared_server
    with grpc.insecure_channel(server.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "smsgw.v1.MessageService", "smsgw.v1.DeviceService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
        names = {s.name for r in responses for s in r.list_services_response.service}
        assert {"smsgw.v1.MessageService", "smsgw.v1.DeviceService", "grpc.health.v1.Health"} <= names


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (
            messages_pb2.SendMessageRequest(
                phone_numbers=["+15551234567"], text_message=messages_pb2.TextMessage(text="x"),
                valid_until={"seconds": 253402300800},
            ),
            "valid_until",
        ),
        (messages_pb2.ListMessagesRequest(created_after={"nanos": -1}), "created_after"),
    ],
)
def test_out_of_range_timestamps_are_invalid_argument(
    shared_server: ServerProcess, request_: object, field: str
) -> None:
    from smsgw_client import from_rpc_error

    with grpc.insecure_channel(shared_server.grpc_target) as channel:
        stub = messages_pb2_grpc.MessageServiceStub(channel)
        call = stub.SendMessage if isinstance(request_, messages_pb2.SendMessageRequest) else stub.ListMessages
        with pytest.raises(grpc.RpcError) as caught:
            call(request_, metadata=[("authorization", f"Bearer {shared_server.token}")], timeout=10)
        error = from_rpc_error(caught.value)
        assert isinstance(error, InvalidArgument)
        assert [f for f, _ in error.field_violations] == [field]
