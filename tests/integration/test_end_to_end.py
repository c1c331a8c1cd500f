"""The core path over real sockets: gRPC send -> phone session -> receipts -> GetMessage and WatchMessages."""

from __future__ import annotations

import re
from collections import Counter

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from smsgw.v1 import common_pb2
from smsgw_client import Client

from tests.helpers.phones import start_phones
from tests.helpers.postgres import BACKENDS
from tests.helpers.server import ServerProcess, serve_on
from tests.helpers.watch import watch_until_final


@pytest.fixture(params=BACKENDS)
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    """This suite runs on SQLite and on PostgreSQL."""
    with serve_on(request.param, tmp_path / "data") as proc:
        yield proc

def _assert_logs_clean(server: ServerProcess, secrets: list[str]) -> None:
    """No message body or full phone number in any server log line (RELIABILITY 31)."""
    text = server.log_text()
    for secret in secrets:
        assert secret not in text, "a message body or phone number reached the server log"
    assert not re.search(r"\+\d{8,15}", text), "a full phone number reached the server log"


def test_one_message_reaches_delivered(server: ServerProcess) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            phones = await start_phones(nursery, server.grpc_target, server.token, server.device_url, 1)
            with Client(server.grpc_target, server.token) as client:
                message = client.send_message(["+15551234567"], "your code is 424242")
                history = await trio.to_thread.run_sync(
                    lambda: watch_until_final(client, {message.id}, 0, 20)
                )
                assert history[message.id] == [
                    common_pb2.PENDING, common_pb2.DISPATCHED, common_pb2.ACCEPTED, common_pb2.SENT, common_pb2.DELIVERED
                ]
                stored = client.get_message(message.id)
                assert stored.state == common_pb2.DELIVERED
                assert [r.state for r in stored.recipients] == [common_pb2.DELIVERED]
                assert stored.device_id == phones[0].device_id
                assert phones[0].modem.sent == [(message.id, 0)]
            nursery.cancel_scope.cancel()

    trio.run(main)
    _assert_logs_clean(server, ["your code is 424242", "+15551234567"])


def test_hundred_messages_across_ten_phones(server: ServerProcess) -> None:
    bodies = [f"reminder {i}: appointment at {9 + i % 8}:00" for i in range(100)]
    numbers = [f"+1555{2000000 + i:07d}" for i in range(100)]

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            phones = await start_phones(nursery, server.grpc_target, server.token, server.device_url, 10)
            with Client(server.grpc_target, server.token) as client:
                ids = [
                    (await trio.to_thread.run_sync(lambda i=i: client.send_message([numbers[i]], bodies[i]))).id
                    for i in range(100)
                ]
                history = await trio.to_thread.run_sync(lambda: watch_until_final(client, set(ids), 0, 60))
                for mid in ids:
                    assert history[mid][-1] == common_pb2.DELIVERED
                    assert history[mid].count(common_pb2.DELIVERED) == 1
                listed = [m for m in client.iter_messages()]
                assert sorted(m.id for m in listed) == sorted(ids)
                assert all(m.state == common_pb2.DELIVERED for m in listed)
                sent = Counter(s for p in phones for s in p.modem.sent)
                assert sent == Counter((mid, 0) for mid in ids), "each message sent exactly once"
                used = {p.device_id for p in phones if p.modem.sent}
                assert len(used) >= 2, "routing spreads messages over online phones"
            nursery.cancel_scope.cancel()

    trio.run(main)
    _assert_logs_clean(server, bodies[:5] + numbers[:5])

