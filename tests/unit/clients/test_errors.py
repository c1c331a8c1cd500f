"""The error mapping and the watch cursor, without a network."""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from smsgw.v1 import messages_pb2
from smsgw_client import _channel, errors

DETAILS_KEY = "grpc-status-details-bin"


def rich(code: int, message: str, *details: Any) -> status_pb2.Status:
    packed = []
    for detail in details:
        item = any_pb2.Any()
        item.Pack(detail)
        packed.append(item)
    return status_pb2.Status(code=code, message=message, details=packed)


class FakeCall(grpc.RpcError, grpc.Call):
    """What a sync stub raises: an RpcError that is also a finished Call."""

    def __init__(self, code: grpc.StatusCode, details: str, trailers: tuple[tuple[str, Any], ...] = ()) -> None:
        self._code, self._details, self._trailers = code, details, trailers

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> Any:
        return self._trailers

    def initial_metadata(self) -> tuple[tuple[str, Any], ...]:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float:
        return 0.0

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Any) -> bool:
        return False


def aio_error(code: grpc.StatusCode, details: str, status: status_pb2.Status | None = None) -> grpc.aio.AioRpcError:
    trailers = grpc.aio.Metadata()
    if status is not None:
        trailers.add(DETAILS_KEY, status.SerializeToString())
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailers, details=details, debug_error_string="")


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidArgument),
        (grpc.StatusCode.NOT_FOUND, errors.NotFound),
        (grpc.StatusCode.ALREADY_EXISTS, errors.AlreadyExists),
        (grpc.StatusCode.PERMISSION_DENIED, errors.PermissionDenied),
        (grpc.StatusCode.UNAUTHENTICATED, errors.Unauthenticated),
        (grpc.StatusCode.FAILED_PRECONDITION, errors.FailedPrecondition),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, errors.ResourceExhausted),
        (grpc.StatusCode.UNAVAILABLE, errors.Unavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, errors.DeadlineExceeded),
        (grpc.StatusCode.INTERNAL, errors.SmsgwError),
        (grpc.StatusCode.CANCELLED, errors.SmsgwError),
    ],
)
def test_one_class_per_code_for_sync_and_aio(code: grpc.StatusCode, cls: type[errors.SmsgwError]) -> None:
    for raw in (FakeCall(code, "why"), aio_error(code, "why")):
        error = errors.from_rpc_error(raw)
        assert type(error) is cls
        assert error.code is code
        assert error.details == "why"
        assert str(error) == f"{code.name}: why"


def test_field_violations_from_sync_and_aio_trailers() -> None:
    status = rich(
        code_pb2.INVALID_ARGUMENT,
        "bad",
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field="phone_numbers[0]", description="not E.164"),
                error_details_pb2.BadRequest.FieldViolation(field="priority", description="out of range"),
            ]
        ),
    )
    expected = [("phone_numbers[0]", "not E.164"), ("priority", "out of range")]
    sync = FakeCall(grpc.StatusCode.INVALID_ARGUMENT, "bad", ((DETAILS_KEY, status.SerializeToString()),))
    for raw in (sync, aio_error(grpc.StatusCode.INVALID_ARGUMENT, "bad", status)):
        error = errors.from_rpc_error(raw)
        assert isinstance(error, errors.InvalidArgument)
        assert error.field_violations == expected
        assert error.status == status


def test_retry_delay_and_quota_from_rich_status() -> None:
    status = rich(
        code_pb2.RESOURCE_EXHAUSTED,
        "slow down",
        error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=2, nanos=250_000_000)),
        error_details_pb2.QuotaFailure(
            violations=[error_details_pb2.QuotaFailure.Violation(subject="owner:1", description="daily cap")]
        ),
    )
    error = errors.from_rpc_error(aio_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", status))
    assert isinstance(error, errors.ResourceExhausted)
    assert error.retry_delay == pytest.approx(2.25)
    assert error.quota_violations == [("owner:1", "daily cap")]


def test_missing_or_inconsistent_rich_status_is_ignored() -> None:
    plain = errors.from_rpc_error(FakeCall(grpc.StatusCode.RESOURCE_EXHAUSTED, "x"))
    assert isinstance(plain, errors.ResourceExhausted) and plain.retry_delay is None
    # A trailer claiming another code than the call's is not trusted.
    other = rich(code_pb2.NOT_FOUND, "x")
    for raw in (
        FakeCall(grpc.StatusCode.INVALID_ARGUMENT, "x", ((DETAILS_KEY, other.SerializeToString()),)),
        aio_error(grpc.StatusCode.INVALID_ARGUMENT, "x", other),
    ):
        error = errors.from_rpc_error(raw)
        assert isinstance(error, errors.InvalidArgument)
        assert error.status is None and error.field_violations == []
    garbage = grpc.aio.Metadata((DETAILS_KEY, b"\xff\xff\xff"))
    raw = grpc.aio.AioRpcError(
        grpc.StatusCode.INVALID_ARGUMENT, grpc.aio.Metadata(), garbage, details="x", debug_error_string=""
    )
    assert errors.from_rpc_error(raw).status is None


def test_an_rpc_error_that_is_no_call_is_unknown() -> None:
    error = errors.from_rpc_error(grpc.RpcError("odd"))
    assert type(error) is errors.SmsgwError and error.code is grpc.StatusCode.UNKNOWN


def test_map_rpc_errors_keeps_the_cause() -> None:
    raw = FakeCall(grpc.StatusCode.NOT_FOUND, "no such message")
    with pytest.raises(errors.NotFound) as info, errors.map_rpc_errors():
        raise raw
    assert info.value.__cause__ is raw
    with pytest.raises(KeyError), errors.map_rpc_errors():
        raise KeyError("not an RPC error: left alone")


def test_errors_can_be_built_by_hand() -> None:
    error = errors.InvalidArgument("bad", field_violations=[("text", "empty")])
    assert error.field_violations == [("text", "empty")] and error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert errors.ResourceExhausted(retry_delay=3.0).retry_delay == 3.0
    assert str(errors.SmsgwError(code=grpc.StatusCode.INTERNAL)) == "INTERNAL"


def test_watch_cursor_resumes_from_the_last_event() -> None:
    cursor = _channel.WatchCursor(None, ["m1"], timeout=None, max_reconnects=2)
    assert not cursor.request().HasField("after_event_id")
    assert list(cursor.request().message_ids) == ["m1"]
    assert cursor.accept(messages_pb2.MessageEvent(event_id=4))
    assert not cursor.accept(messages_pb2.MessageEvent(event_id=4))
    assert cursor.request().after_event_id == 4
    unavailable = FakeCall(grpc.StatusCode.UNAVAILABLE, "restart")
    first = cursor.reconnect_after(unavailable)
    second = cursor.reconnect_after(unavailable)
    assert first is not None and second is not None and 0.16 <= first <= 0.24 and 0.32 <= second <= 0.48
    assert cursor.reconnect_after(unavailable) is None  # two in a row: give up
    cursor.accept(messages_pb2.MessageEvent(event_id=5))  # an event resets the count
    assert cursor.reconnect_after(unavailable) is not None
    assert cursor.reconnect_after(FakeCall(grpc.StatusCode.PERMISSION_DENIED, "no")) is None


def test_watch_cursor_deadline_and_arguments() -> None:
    cursor = _channel.WatchCursor(0, (), timeout=0.1, max_reconnects=8)
    assert cursor.request().HasField("after_event_id") and cursor.request().after_event_id == 0
    remaining = cursor.timeout()
    assert remaining is not None and 0 < remaining <= 0.1
    # A reconnect that could not start before the deadline is not attempted.
    assert cursor.reconnect_after(FakeCall(grpc.StatusCode.UNAVAILABLE, "x")) is None
    with pytest.raises(TypeError):
        _channel.WatchCursor(None, "m1", timeout=None, max_reconnects=1)
    with pytest.raises(ValueError):
        _channel.WatchCursor(None, (), timeout=None, max_reconnects=-1)
