"""SendMessages over the real server and the real client: a 1,000-item call stored and
delivered by a phone, bad items answered by index while the others are stored, whole-call
refusals, replays of a whole batch, a key twice in one call, the daily cap per item."""

from __future__ import annotations

import re
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import trio
from smsgw.v1 import common_pb2, messages_pb2, messages_pb2_grpc

from smsgw_agent import ModemOptions
from smsgw_client import (
    AlreadyExists,
    Client,
    InvalidArgument,
    OutgoingMessage,
    ResourceExhausted,
    SendResult,
)
from tests.helpers.metrics import sample
from tests.helpers.phones import start_phones
from tests.helpers.server import ServerProcess
from tests.helpers.watch import watch_until_final

INSTANT_MODEM = ModemOptions(send_delay=0, delivery_delay=0, android_limit_parts=0)


def number(i: int) -> str:
    return f"+1555{3000000 + i:07d}"


def stored_keys(client: Client) -> set[str]:
    return {m.idempotency_key for m in client.iter_messages()}


def fields(result: SendResult) -> list[str]:
    assert isinstance(result.error, InvalidArgument), result
    return [f for f, _ in result.error.field_violations]


@pytest.fixture(scope="module")
def quiet_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server without phones for the tests that only look at answers and storage."""
    with ServerProcess(tmp_path_factory.mktemp("bulk") / "data") as proc:
        yield proc


# The phone's window (64) refills only as receipts come back, so the 1,000 go out in many
# dispatch rounds. Stalled: no new send for this long (a bound, not a speed requirement).
_STALL = 20.0


async def _wait_sent(phone: Any, count: int) -> None:
    """Until the phone's modem sent `count` SMS; fails when sending stops short of it."""
    last, since = -1, trio.current_time()
    while len(phone.modem.sent) < count:
        if len(phone.modem.sent) != last:
            last, since = len(phone.modem.sent), trio.current_time()
        assert trio.current_time() - since < _STALL, f"dispatch stalled: {last} of {count} sent"
        await trio.sleep(0.1)


def test_a_thousand_in_one_call_are_stored_and_delivered(server: ServerProcess) -> None:
    bodies = [f"bulk notice {i}: your parcel is on its way" for i in range(1000)]
    items = [OutgoingMessage([number(i)], bodies[i], idempotency_key=f"bulk-{i}") for i in range(1000)]

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            [phone] = await start_phones(
                nursery, server.grpc_target, server.token, server.device_url, 1, window=64, modem=INSTANT_MODEM
            )
            with Client(server.grpc_target, server.token, timeout=60) as client:
                results = await trio.to_thread.run_sync(lambda: client.send_messages(items))
                assert [r.index for r in results] == list(range(1000))
                assert all(r.ok and r.created for r in results)
                ids = [r.message.id for r in results if r.message]
                assert [r.message.idempotency_key for r in results if r.message] == [f"bulk-{i}" for i in range(1000)]
                assert ids == sorted(ids), "ids, and so FIFO order, follow the request order"
                assert {r.message.device_id for r in results if r.message} == {phone.device_id}
                await _wait_sent(phone, 1000)
                history = await trio.to_thread.run_sync(lambda: watch_until_final(client, set(ids), 0, 60))
                assert all(h[0] == common_pb2.PENDING and h[-1] == common_pb2.DELIVERED for h in history.values())
                assert Counter(phone.modem.sent) == Counter((mid, 0) for mid in ids), "each sent exactly once"
                listed = await trio.to_thread.run_sync(lambda: list(client.iter_messages()))
                assert len(listed) == 1000 and all(m.state == common_pb2.DELIVERED for m in listed)
            nursery.cancel_scope.cancel()

    trio.run(main)
    with urllib.request.urlopen(server.endpoints["metrics"], timeout=10) as response:
        metrics = response.read().decode()
    assert re.search(r"^smsgw_gateway_messages_accepted_total 1000\.0$", metrics, re.M)
    assert re.search(r"^smsgw_gateway_recipients_accepted_total 1000\.0$", metrics, re.M)
    assert sample(metrics, "grpc_server_handled_total", grpc_method="SendMessages", grpc_code="OK") == 1
    log = server.log_text()
    assert bodies[0] not in log and bodies[-1] not in log
    assert not re.search(r"\+\d{8,15}", log), "a full phone number reached the server log"


def test_bad_items_are_named_by_index_and_the_others_stored(quiet_server: ServerProcess) -> None:
    with Client(quiet_server.grpc_target, quiet_server.token) as client:
        results = client.send_messages(
            [
                OutgoingMessage([number(1)], "fine", idempotency_key="mixed-0"),
                OutgoingMessage(["5551234"], "bad number", idempotency_key="mixed-1"),
                OutgoingMessage([number(2)], "", priority=999, idempotency_key="mixed-2"),
                OutgoingMessage([number(3)], "fine too", idempotency_key="mixed-3"),
                OutgoingMessage([number(4)], "pinned", device_id="01NOSUCHDEVICE0000000000000", idempotency_key="mixed-4"),
                OutgoingMessage([number(5)], "bad key", idempotency_key="has space"),
            ]
        )
        assert [r.ok for r in results] == [True, False, False, True, False, False]
        assert fields(results[1]) == ["messages[1].phone_numbers[0]"]
        assert fields(results[2]) == ["messages[2].text_message.text", "messages[2].priority"]
        assert fields(results[4]) == ["messages[4].device_id"]  # found by storage, named for the item
        assert fields(results[5]) == ["messages[5].idempotency_key"]
        assert all(r.message is None and not r.created for r in results if not r.ok)
        assert {"mixed-0", "mixed-3"} <= stored_keys(client)
        assert not {"mixed-1", "mixed-2", "mixed-4"} & stored_keys(client)


def test_a_key_is_required_per_item(quiet_server: ServerProcess) -> None:
    """The client always fills keys in; a raw caller must send them."""
    request = messages_pb2.SendMessagesRequest(
        messages=[
            messages_pb2.SendMessageRequest(phone_numbers=[number(10)], text_message=messages_pb2.TextMessage(text="x"))
        ]
    )
    with grpc.insecure_channel(quiet_server.grpc_target) as channel:
        stub = messages_pb2_grpc.MessageServiceStub(channel)
        response = stub.SendMessages(request, metadata=[("authorization", f"Bearer {quiet_server.token}")], timeout=10)
    [result] = response.results
    assert result.WhichOneof("result") == "error" and result.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "messages[0].idempotency_key" in result.error.message


@pytest.mark.parametrize("count", [0, 1001])
def test_an_empty_or_oversized_call_is_refused_whole(quiet_server: ServerProcess, count: int) -> None:
    items = [OutgoingMessage([number(i)], "over", idempotency_key=f"over-{count}-{i}") for i in range(count)]
    with Client(quiet_server.grpc_target, quiet_server.token) as client:
        with pytest.raises(InvalidArgument) as caught:
            client.send_messages(items)
        assert [f for f, _ in caught.value.field_violations] == ["messages"]
        assert not any(k.startswith(f"over-{count}-") for k in stored_keys(client))


def test_replaying_a_whole_batch_returns_the_same_messages(quiet_server: ServerProcess) -> None:
    items = [OutgoingMessage([number(i), number(i + 500)], f"replay {i}", idempotency_key=f"replay-{i}") for i in range(50)]
    with Client(quiet_server.grpc_target, quiet_server.token) as client:
        first = client.send_messages(items)
        again = client.send_messages(items)
        assert all(r.created for r in first)
        assert [r.message.id for r in again if r.message] == [r.message.id for r in first if r.message]
        assert not any(r.created for r in again) and all(r.ok for r in again)
        # One item changed under its key: only that one is refused.
        changed = [*items[:7], OutgoingMessage([number(7)], "something else", idempotency_key="replay-7"), *items[8:]]
        third = client.send_messages(changed)
        assert [type(r.error).__name__ for r in third if not r.ok] == ["AlreadyExists"]
        assert isinstance(third[7].error, AlreadyExists)
        assert sum(1 for k in stored_keys(client) if k.startswith("replay-")) == 50


def test_a_key_twice_in_one_call(quiet_server: ServerProcess) -> None:
    with Client(quiet_server.grpc_target, quiet_server.token) as client:
        results = client.send_messages(
            [
                OutgoingMessage([number(20)], "one", idempotency_key="twice"),
                OutgoingMessage([number(21)], "two", idempotency_key="once"),
                OutgoingMessage([number(22)], "three", idempotency_key="twice"),
            ]
        )
        assert [r.ok for r in results] == [True, True, False]
        assert fields(results[2]) == ["messages[2].idempotency_key"]
        assert results[2].error is not None and "messages[0]" in str(results[2].error)
        assert [m.text_message.text for m in client.iter_messages() if m.idempotency_key == "twice"] == ["one"]


def test_the_daily_cap_refuses_only_the_items_past_it(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "data", env={"SMSGW_LIMITS__DAILY_SEGMENTS": "3"}) as server:
        with Client(server.grpc_target, server.token) as client:
            results = client.send_messages(
                [
                    OutgoingMessage([number(30), number(31)], "two segments", idempotency_key="cap-0"),
                    OutgoingMessage([number(32), number(33)], "two more", idempotency_key="cap-1"),
                    OutgoingMessage([number(34)], "the last one", idempotency_key="cap-2"),
                ]
            )
            assert [r.ok for r in results] == [True, False, True]
            error = results[1].error
            assert isinstance(error, ResourceExhausted) and error.retry_delay and error.retry_delay > 0
            assert error.quota_violations and error.quota_violations[0][0].startswith("owner:")
            assert stored_keys(client) == {"cap-0", "cap-2"}

