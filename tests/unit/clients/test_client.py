"""Client and AsyncClient against a fake gateway on a real socket (127.0.0.1:0).

The fake servicers below implement the smsgw.v1 contract just far enough to
drive the client's behaviour: retries, idempotency keys, deadlines, metadata,
typed errors and the self-resuming watch stream. They are not the gateway.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from concurrent import futures
from contextlib import aclosing, contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

import smsgw_client
from smsgw.v1 import devices_pb2, devices_pb2_grpc, messages_pb2, messages_pb2_grpc
from smsgw_client import (
    AsyncClient,
    Client,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
    _channel,
    aio,
    client,
    errors,
)

T = TypeVar("T")

TOKEN = "tok_test_123"
BOUND = 10.0  # no single wait in this file may exceed this many seconds


def _packed(detail: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(detail)
    return packed


def bad_request_status() -> grpc.Status:
    detail = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field="phone_numbers[0]", description="not E.164")
        ]
    )
    return rpc_status.to_status(
        status_pb2.Status(
            code=code_pb2.INVALID_ARGUMENT, message="invalid phone number", details=[_packed(detail)]
        )
    )


def exhausted_status() -> grpc.Status:
    retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=1, nanos=500_000_000))
    quota = error_details_pb2.QuotaFailure(
        violations=[error_details_pb2.QuotaFailure.Violation(subject="token:abc", description="20/s")]
    )
    return rpc_status.to_status(
        status_pb2.Status(
            code=code_pb2.RESOURCE_EXHAUSTED,
            message="rate limited",
            details=[_packed(quota), _packed(retry)],
        )
    )


def _event(event_id: int) -> messages_pb2.MessageEvent:
    return messages_pb2.MessageEvent(event_id=event_id, message_id=f"m{event_id}")


class FakeGateway(messages_pb2_grpc.MessageServiceServicer, devices_pb2_grpc.DeviceServiceServicer):
    """Records what it receives; fails on cue."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.release = threading.Event()  # unblocks blocked handlers at teardown
        self.send_keys: list[str] = []
        self.metadata: list[dict[str, str | bytes]] = []
        self.time_remaining: list[float | None] = []
        self.fail_sends = 0  # abort this many SendMessage attempts with UNAVAILABLE
        self.send_status: grpc.Status | None = None  # abort every SendMessage with this
        self.block_get = False
        self.pages = [messages_pb2.Message(id=f"m{i}") for i in range(5)]
        # WatchMessages: one entry per connection, the last event id to send
        # before aborting with UNAVAILABLE (None = end the stream normally).
        self.watch_breaks: list[int | None] = []
        self.watch_total = 5
        self.watch_overlap = False  # replay the resume event (an at-least-once server)
        self.watch_hold = False  # keep the stream open after the last event
        self.watch_afters: list[int | None] = []
        self.watch_cancelled = threading.Event()

    def _record(self, context: grpc.ServicerContext) -> None:
        with self.lock:
            self.metadata.append({key: value for key, value in context.invocation_metadata()})
            self.time_remaining.append(context.time_remaining())

    def SendMessage(self, request: messages_pb2.SendMessageRequest, context: grpc.ServicerContext) -> Any:
        self._record(context)
        with self.lock:
            self.send_keys.append(request.idempotency_key)
            fail = self.fail_sends > 0
            self.fail_sends -= fail
        if fail:
            context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")
        if self.send_status is not None:
            context.abort_with_status(self.send_status)
        return messages_pb2.Message(
            id="m1",
            idempotency_key=request.idempotency_key,
            text_message=request.text_message,
            recipients=[messages_pb2.Recipient(phone_number=n) for n in request.phone_numbers],
        )

    def GetMessage(self, request: messages_pb2.GetMessageRequest, context: grpc.ServicerContext) -> Any:
        self._record(context)
        if request.id in grpc.StatusCode.__members__:  # a cue: fail with that code
            context.abort(grpc.StatusCode[request.id], f"cue {request.id}")
        if self.block_get:
            self.release.wait(BOUND)
        return messages_pb2.Message(id=request.id)

    def ListMessages(self, request: messages_pb2.ListMessagesRequest, context: grpc.ServicerContext) -> Any:
        self._record(context)
        start = int(request.page_token or "0")
        end = start + (request.page_size or 2)
        return messages_pb2.ListMessagesResponse(
            messages=self.pages[start:end],
            next_page_token=str(end) if end < len(self.pages) else "",
        )

    def CancelMessage(self, request: messages_pb2.CancelMessageRequest, context: grpc.ServicerContext) -> Any:
        self._record(context)
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "already accepted")

    def WatchMessages(
        self, request: messages_pb2.WatchMessagesRequest, context: grpc.ServicerContext
    ) -> Iterator[messages_pb2.MessageEvent]:
        self._record(context)
        if self.watch_hold:
            # Fires when the RPC ends; a held stream only ends by cancellation
            # (the generator may never resume once the client has gone).
            context.add_callback(self.watch_cancelled.set)
        after = request.after_event_id if request.HasField("after_event_id") else None
        with self.lock:
            self.watch_afters.append(after)
            stop = self.watch_breaks.pop(0) if self.watch_breaks else None
        first = 1 if after is None else after + (0 if self.watch_overlap else 1)
        for event_id in range(first, self.watch_total + 1):
            if stop is not None and event_id > stop:
                context.abort(grpc.StatusCode.UNAVAILABLE, "server restarting")
            yield _event(event_id)
        if stop is not None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "server restarting")
        if self.watch_hold:
            deadline = time.monotonic() + BOUND
            while context.is_active() and time.monotonic() < deadline:
                time.sleep(0.01)

    def ListDevices(self, request: devices_pb2.ListDevicesRequest, context: grpc.ServicerContext) -> Any:
        self._record(context)
        return devices_pb2.ListDevicesResponse(devices=[devices_pb2.Device(id="d1", name="pixel")])

    def CreatePairingCode(
        self, request: devices_pb2.CreatePairingCodeRequest, context: grpc.ServicerContext
    ) -> Any:
        self._record(context)
        return devices_pb2.PairingCode(code=f"code-{request.device_name}-{request.ttl_seconds}")


@contextmanager
def serving(fake: FakeGateway) -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    # The generated registration functions are untyped.
    messages_pb2_grpc.add_MessageServiceServicer_to_server(fake, server)  # type: ignore[no-untyped-call,unused-ignore]
    devices_pb2_grpc.add_DeviceServiceServicer_to_server(fake, server)  # type: ignore[no-untyped-call,unused-ignore]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        fake.release.set()
        server.stop(grace=None).wait(BOUND)


@pytest.fixture
def fake() -> FakeGateway:
    return FakeGateway()


@pytest.fixture
def target(fake: FakeGateway) -> Iterator[str]:
    with serving(fake) as address:
        yield address


def run(factory: Callable[[], Awaitable[T]]) -> T:
    """Run one coroutine in a fresh loop, bounded in time."""

    async def bounded() -> T:
        return await asyncio.wait_for(factory(), BOUND)

    return asyncio.run(bounded())


# -- the module surface ----------------------------------------------------------


@pytest.mark.parametrize("module", [smsgw_client, client, aio, errors, _channel])
def test_all_names_exist(module: Any) -> None:
    assert module.__all__ == sorted(module.__all__)
    for name in module.__all__:
        assert hasattr(module, name), name


def test_channel_options_carry_the_service_config_and_keepalive() -> None:
    options = dict(_channel.channel_options())
    config = json.loads(options["grpc.service_config"])
    (method,) = config["methodConfig"]
    assert {n["service"] for n in method["name"]} == {
        "smsgw.v1.MessageService", "smsgw.v1.DeviceService", "smsgw.v1.AuditService", "smsgw.v1.InboundService",
    }
    assert method["retryPolicy"] == {
        "maxAttempts": 4,
        "initialBackoff": "0.2s",
        "maxBackoff": "5s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    assert config["retryThrottling"] == {"maxTokens": 10, "tokenRatio": 0.1}
    assert options["grpc.enable_retries"] == 1
    assert options["grpc.keepalive_time_ms"] == 60_000
    assert options["grpc.keepalive_timeout_ms"] == 20_000
    assert options["grpc.keepalive_permit_without_calls"] == 0
    assert options["grpc.max_receive_message_length"] == 16 * 1024 * 1024


def test_caller_options_replace_defaults_key_by_key() -> None:
    options = _channel.channel_options([("grpc.keepalive_time_ms", 120_000), ("grpc.primary_user_agent", "x")])
    keys = [key for key, _ in options]
    assert len(keys) == len(set(keys))
    assert dict(options)["grpc.keepalive_time_ms"] == 120_000
    assert dict(options)["grpc.primary_user_agent"] == "x"


def test_reconnect_delay_doubles_with_jitter_and_caps() -> None:
    for attempt in range(12):
        base = min(5.0, 0.2 * 2**attempt)
        low = _channel.reconnect_delay(attempt, rng=lambda: 0.0)
        high = _channel.reconnect_delay(attempt, rng=lambda: 0.999999)
        assert min(5.0, base * 0.8) <= low <= high <= 5.0
        assert high >= min(5.0, base * 1.19)
    assert _channel.reconnect_delay(0, rng=lambda: 0.5) == pytest.approx(0.2)


# -- local argument checks -------------------------------------------------------


def test_send_message_wants_exactly_one_content_and_one_expiry() -> None:
    kwargs: dict[str, Any] = dict(
        port=0,
        device_id="",
        sim_number=0,
        priority=0,
        with_delivery_report=None,
        is_encrypted=False,
        idempotency_key=None,
    )
    with pytest.raises(ValueError, match="exactly one"):
        _channel.send_message_request(["+4915112345678"], None, data=None, ttl=None, valid_until=None, **kwargs)
    with pytest.raises(ValueError, match="exactly one"):
        _channel.send_message_request(["+4915112345678"], "hi", data=b"x", ttl=None, valid_until=None, **kwargs)
    with pytest.raises(ValueError, match="ttl"):
        _channel.send_message_request(
            ["+4915112345678"], "hi", data=None, ttl=60, valid_until=datetime.now(UTC), **kwargs
        )
    with pytest.raises(ValueError, match="timezone"):
        _channel.send_message_request(
            ["+4915112345678"], "hi", data=None, ttl=None, valid_until=datetime(2030, 1, 1), **kwargs
        )
    with pytest.raises(TypeError):
        _channel.send_message_request("+4915112345678", "hi", data=None, ttl=None, valid_until=None, **kwargs)


def test_send_message_request_fields() -> None:
    until = datetime(2030, 1, 1, tzinfo=UTC)
    request = _channel.send_message_request(
        ["+4915112345678"],
        None,
        data=b"\x01",
        port=8080,
        device_id="d1",
        sim_number=2,
        priority=5,
        ttl=None,
        valid_until=until,
        with_delivery_report=False,
        is_encrypted=True,
        idempotency_key=None,
    )
    assert request.data_message.data == b"\x01" and request.data_message.port == 8080
    assert request.WhichOneof("expiry") == "valid_until"
    assert request.valid_until.ToDatetime(tzinfo=UTC) == until
    assert request.HasField("with_delivery_report") and not request.with_delivery_report
    assert len(request.idempotency_key) == 32
    unset = _channel.send_message_request(
        ["+4915112345678"],
        "hi",
        data=None,
        port=0,
        device_id="",
        sim_number=0,
        priority=0,
        ttl=60,
        valid_until=None,
        with_delivery_report=None,
        is_encrypted=False,
        idempotency_key="k",
    )
    assert unset.ttl == 60 and not unset.HasField("with_delivery_report")
    assert unset.idempotency_key == "k"


# -- sync Client -----------------------------------------------------------------


def test_send_generates_one_key_reused_by_grpc_retries(fake: FakeGateway, target: str) -> None:
    fake.fail_sends = 2
    with Client(target, TOKEN) as c:
        message = c.send_message(["+4915112345678"], "hello")
    assert len(fake.send_keys) == 3
    assert len(set(fake.send_keys)) == 1
    (key,) = set(fake.send_keys)
    assert len(key) == 32 and int(key, 16) >= 0
    assert message.idempotency_key == key
    assert message.text_message.text == "hello"


def test_send_keys_differ_between_calls(fake: FakeGateway, target: str) -> None:
    with Client(target, TOKEN) as c:
        c.send_message(["+4915112345678"], "a")
        c.send_message(["+4915112345678"], "a")
    assert len(set(fake.send_keys)) == 2


def test_send_passes_the_callers_key(fake: FakeGateway, target: str) -> None:
    fake.fail_sends = 1
    with Client(target, TOKEN) as c:
        c.send_message(["+4915112345678"], "hello", idempotency_key="order-42")
    assert fake.send_keys == ["order-42", "order-42"]


def test_invalid_argument_is_not_retried_and_carries_field_violations(
    fake: FakeGateway, target: str
) -> None:
    fake.send_status = bad_request_status()
    with Client(target, TOKEN) as c, pytest.raises(InvalidArgument) as info:
        c.send_message(["12"], "hello")
    assert len(fake.send_keys) == 1
    error = info.value
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.details == "invalid phone number"
    assert error.field_violations == [("phone_numbers[0]", "not E.164")]
    assert isinstance(error.__cause__, grpc.RpcError)


def test_resource_exhausted_carries_retry_delay(fake: FakeGateway, target: str) -> None:
    fake.send_status = exhausted_status()
    with Client(target, TOKEN) as c, pytest.raises(ResourceExhausted) as info:
        c.send_message(["+4915112345678"], "hello")
    assert len(fake.send_keys) == 1
    assert info.value.retry_delay == pytest.approx(1.5)
    assert info.value.quota_violations == [("token:abc", "20/s")]


def test_unary_calls_get_the_default_deadline(fake: FakeGateway, target: str) -> None:
    with Client(target, TOKEN) as c:
        c.send_message(["+4915112345678"], "hello")
        c.list_devices()
    # gRPC encodes the deadline coarsely on the wire, so allow a little slack.
    for remaining in fake.time_remaining:
        assert remaining is not None and 5.0 < remaining <= 10.5


def test_default_timeout_gives_deadline_exceeded(fake: FakeGateway, target: str) -> None:
    fake.block_get = True
    with Client(target, TOKEN, timeout=0.3) as c, pytest.raises(DeadlineExceeded) as info:
        c.get_message("m1")
    assert info.value.code is grpc.StatusCode.DEADLINE_EXCEEDED


def test_per_call_timeout_overrides_the_default(fake: FakeGateway, target: str) -> None:
    fake.block_get = True
    with Client(target, TOKEN) as c, pytest.raises(DeadlineExceeded):
        c.get_message("m1", timeout=0.3)


def test_bearer_token_reaches_the_server(fake: FakeGateway, target: str) -> None:
    with Client(target, TOKEN) as c:
        c.get_message("m1")
        c.create_pairing_code("pixel", 60)
    assert [md.get("authorization") for md in fake.metadata] == [f"Bearer {TOKEN}"] * 2


def test_no_token_sends_no_authorization(fake: FakeGateway, target: str) -> None:
    with Client(target) as c:
        c.get_message("m1")
    assert "authorization" not in fake.metadata[0]


def test_other_methods(fake: FakeGateway, target: str) -> None:
    with Client(target, TOKEN) as c:
        assert c.get_message("abc").id == "abc"
        assert [d.id for d in c.list_devices().devices] == ["d1"]
        assert c.create_pairing_code("pixel", 60).code == "code-pixel-60"
        page = c.list_messages(page_size=2, state="PENDING")
        assert [m.id for m in page.messages] == ["m0", "m1"] and page.next_page_token == "2"
        assert [m.id for m in c.iter_messages(created_after=datetime.now(UTC) - timedelta(days=1))] == [
            f"m{i}" for i in range(5)
        ]
        with pytest.raises(FailedPrecondition):
            c.cancel_message("m1")


def test_watch_resumes_after_unavailable_without_gap_or_duplicate(fake: FakeGateway, target: str) -> None:
    fake.watch_breaks = [3, None]
    with Client(target, TOKEN) as c:
        events = list(c.watch_messages(after_event_id=0))
    assert [e.event_id for e in events] == [1, 2, 3, 4, 5]
    assert fake.watch_afters == [0, 3]
    # Streams have no deadline by default: a watch is meant to run for long.
    assert all(r is None or r > 3600 for r in fake.time_remaining)


def test_watch_drops_a_replayed_event(fake: FakeGateway, target: str) -> None:
    fake.watch_breaks = [2, None]
    fake.watch_overlap = True
    with Client(target, TOKEN) as c:
        events = list(c.watch_messages())
    assert [e.event_id for e in events] == [1, 2, 3, 4, 5]
    assert fake.watch_afters == [None, 2]


def test_watch_gives_up_after_max_reconnects(fake: FakeGateway, target: str) -> None:
    fake.watch_breaks = [0] * 10
    # Without gRPC's own retries, each reconnect is exactly one stream.
    with Client(target, TOKEN, options=[("grpc.enable_retries", 0)]) as c, pytest.raises(Unavailable):
        list(c.watch_messages(after_event_id=7, max_reconnects=2))
    assert fake.watch_afters == [7, 7, 7]


def test_leaving_watch_early_cancels_the_stream(fake: FakeGateway, target: str) -> None:
    fake.watch_total = 2
    fake.watch_hold = True
    with Client(target, TOKEN) as c:
        stream = c.watch_messages(after_event_id=0)
        assert [next(stream).event_id, next(stream).event_id] == [1, 2]
        assert not fake.watch_cancelled.is_set()
        stream.close()
        assert fake.watch_cancelled.wait(BOUND)


def test_errors_map_by_code(fake: FakeGateway, target: str) -> None:
    with Client(target, TOKEN) as c:
        for code, cls in [
            ("NOT_FOUND", errors.NotFound),
            ("ALREADY_EXISTS", errors.AlreadyExists),
            ("PERMISSION_DENIED", errors.PermissionDenied),
            ("UNAUTHENTICATED", errors.Unauthenticated),
            ("INTERNAL", errors.SmsgwError),
        ]:
            with pytest.raises(errors.SmsgwError) as info:
                c.get_message(code)
            assert type(info.value) is cls
            assert info.value.code is grpc.StatusCode[code]
            assert info.value.details == f"cue {code}"


def test_unreachable_server_is_unavailable() -> None:
    with Client("127.0.0.1:1", TOKEN, options=[("grpc.enable_retries", 0)]) as c, pytest.raises(Unavailable):
        c.list_devices(timeout=5)


# -- AsyncClient -----------------------------------------------------------------


def test_async_send_reuses_one_key_across_retries(fake: FakeGateway, target: str) -> None:
    fake.fail_sends = 2

    async def main() -> messages_pb2.Message:
        async with AsyncClient(target, TOKEN) as c:
            return await c.send_message(["+4915112345678"], "hello")

    message = run(main)
    assert len(fake.send_keys) == 3 and len(set(fake.send_keys)) == 1
    assert message.idempotency_key == fake.send_keys[0]
    assert fake.metadata[0]["authorization"] == f"Bearer {TOKEN}"


def test_async_passes_the_callers_key(fake: FakeGateway, target: str) -> None:
    async def main() -> None:
        async with AsyncClient(target, TOKEN) as c:
            await c.send_message(["+4915112345678"], "hello", idempotency_key="order-42")

    run(main)
    assert fake.send_keys == ["order-42"]


def test_async_invalid_argument_parses_trailers(fake: FakeGateway, target: str) -> None:
    fake.send_status = bad_request_status()

    async def main() -> InvalidArgument:
        async with AsyncClient(target, TOKEN) as c:
            with pytest.raises(InvalidArgument) as info:
                await c.send_message(["12"], "hello")
            return info.value

    error = run(main)
    assert len(fake.send_keys) == 1
    assert error.field_violations == [("phone_numbers[0]", "not E.164")]
    assert isinstance(error.__cause__, grpc.aio.AioRpcError)


def test_async_resource_exhausted(fake: FakeGateway, target: str) -> None:
    fake.send_status = exhausted_status()

    async def main() -> ResourceExhausted:
        async with AsyncClient(target, TOKEN) as c:
            with pytest.raises(ResourceExhausted) as info:
                await c.send_message(["+4915112345678"], "hello")
            return info.value

    assert run(main).retry_delay == pytest.approx(1.5)


def test_async_default_deadline(fake: FakeGateway, target: str) -> None:
    fake.block_get = True

    async def main() -> None:
        async with AsyncClient(target, TOKEN, timeout=0.3) as c:
            with pytest.raises(DeadlineExceeded):
                await c.get_message("m1")

    run(main)


def test_async_other_methods(fake: FakeGateway, target: str) -> None:
    async def main() -> None:
        async with AsyncClient(target, TOKEN) as c:
            assert (await c.get_message("abc")).id == "abc"
            assert [d.id for d in (await c.list_devices()).devices] == ["d1"]
            assert (await c.create_pairing_code("pixel")).code == "code-pixel-0"
            assert [m.id async for m in c.iter_messages(page_size=3)] == [f"m{i}" for i in range(5)]
            with pytest.raises(FailedPrecondition):
                await c.cancel_message("m1")

    run(main)
    assert all(md["authorization"] == f"Bearer {TOKEN}" for md in fake.metadata)


def test_async_watch_resumes_after_unavailable(fake: FakeGateway, target: str) -> None:
    fake.watch_breaks = [3, None]

    async def collect(stream: AsyncGenerator[messages_pb2.MessageEvent, None]) -> list[int]:
        async with aclosing(stream):
            return [event.event_id async for event in stream]

    async def main() -> list[int]:
        async with AsyncClient(target, TOKEN) as c:
            return await collect(c.watch_messages(after_event_id=0))

    assert run(main) == [1, 2, 3, 4, 5]
    assert fake.watch_afters == [0, 3]


def test_async_watch_gives_up_after_max_reconnects(fake: FakeGateway, target: str) -> None:
    fake.watch_breaks = [0] * 10

    async def main() -> None:
        async with AsyncClient(target, TOKEN, options=[("grpc.enable_retries", 0)]) as c:
            with pytest.raises(Unavailable):
                async for _ in c.watch_messages(max_reconnects=1):
                    pass

    run(main)
    assert fake.watch_afters == [None, None]
