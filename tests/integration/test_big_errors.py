"""Errors stay small (issue 14, item 6): an error lists its first 10 field violations and says
how many more there were. 1,000 items × 100 bad numbers used to answer 15 MB (100,000
violations), more than a gRPC client receives by default (4 MB): the caller got no answer."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from smsgw.v1 import messages_pb2, messages_pb2_grpc

from tests.helpers.server import ServerProcess

LISTED = 10
BAD_NUMBERS = [f"5551{j:06d}" for j in range(100)]  # no '+': each one a violation


def _violations(status: status_pb2.Status) -> list[str]:
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    return [v.field for v in bad.field_violations]


def test_an_error_lists_ten_violations_and_counts_the_rest(shared_server: ServerProcess) -> None:
    server = shared_server
    auth = [("authorization", f"Bearer {server.token}")]
    item = messages_pb2.SendMessageRequest(phone_numbers=BAD_NUMBERS, text_message=messages_pb2.TextMessage(text="hi"))
    with grpc.insecure_channel(server.grpc_target) as channel:  # gRPC's default limits
        stub = messages_pb2_grpc.MessageServiceStub(channel)
        try:
            stub.SendMessage(item, metadata=auth, timeout=30)
            raise AssertionError("a call with 100 bad numbers was accepted")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
            status = rpc_status.from_call(exc)  # type: ignore[arg-type]
        assert status is not None
        assert _violations(status) == [f"phone_numbers[{j}]" for j in range(LISTED)]
        assert status.message.endswith("; and 90 more not listed"), status.message

        batch = messages_pb2.SendMessagesRequest(
            messages=[
                messages_pb2.SendMessageRequest(
                    phone_numbers=BAD_NUMBERS, text_message=messages_pb2.TextMessage(text="hi"), idempotency_key=f"big-{i}"
                )
                for i in range(1000)
            ]
        )
        response = stub.SendMessages(batch, metadata=auth, timeout=120)
    assert response.ByteSize() < 2 * 1024 * 1024
    assert len(response.results) == 1000
    for i in (0, 999):
        error = response.results[i].error
        assert _violations(error) == [f"messages[{i}].phone_numbers[{j}]" for j in range(LISTED)]
        assert error.message.endswith("; and 90 more not listed"), error.message
