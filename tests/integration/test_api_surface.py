"""The rest of the API surface over real sockets: list filters and pages, data messages, watch
resume from a cursor, metrics, and a graceful SIGTERM that tells phones to come back (1012)."""

from __future__ import annotations

import re
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest
from smsgw.v1 import common_pb2
from smsgw_client import Client
from websockets.exceptions import ConnectionClosed

from device_bridge.protocol import ReceiptState
from tests.helpers.metrics import sample
from tests.helpers.raw_phone import pair_raw
from tests.helpers.server import ServerProcess


def test_list_filters_and_cursor_pages(server: ServerProcess) -> None:
    phone_a, a = pair_raw(server.grpc_target, server.token, server.device_url, window=10)
    phone_b, b = pair_raw(server.grpc_target, server.token, server.device_url, window=10)
    with Client(server.grpc_target, server.token) as client:
        before = datetime.now(UTC) - timedelta(seconds=1)
        on_a = [client.send_message(["+15551234567"], f"a{i}", device_id=a.device_id).id for i in range(5)]
        on_b = [client.send_message(["+15551234567"], f"b{i}", device_id=b.device_id).id for i in range(3)]
        for _ in on_a:
            phone_a.next_deliver()
        phone_a.receipt(on_a[0], ReceiptState.ACCEPTED)
        deadline = time.monotonic() + 10
        while client.get_message(on_a[0]).state != common_pb2.ACCEPTED and time.monotonic() < deadline:
            time.sleep(0.02)

        assert [m.id for m in client.list_messages(device_id=b.device_id).messages] == on_b[::-1]
        accepted = client.list_messages(state=common_pb2.ACCEPTED).messages
        assert [m.id for m in accepted] == [on_a[0]]
        pages, token = [], ""
        for _ in range(10):
            page = client.list_messages(page_size=3, page_token=token)
            pages.append([m.id for m in page.messages])
            token = page.next_page_token
            if not token:
                break
        assert [len(p) for p in pages] == [3, 3, 2]
        assert sum(pages, []) == (on_a + on_b)[::-1]  # newest first, no gap, no repeat
        assert len(client.list_messages(created_after=before).messages) == 8
        assert client.list_messages(created_before=before).messages == []
        assert client.list_messages(created_after=datetime.now(UTC) + timedelta(minutes=1)).messages == []
    phone_a.ws.close()
    phone_b.ws.close()


def test_data_message_reaches_the_phone_with_its_port(server: ServerProcess) -> None:
    phone, creds = pair_raw(server.grpc_target, server.token, server.device_url)
    with Client(server.grpc_target, server.token) as client:
        sent = client.send_message(["+15551234567"], data=b"\x00\x01binary\xff", port=8090, sim_number=2, priority=5)
        assert (sent.encoding, sent.parts, sent.device_id) == ("DATA", 1, creds.device_id)
        delivery = phone.next_deliver().delivery
        assert (delivery.text, delivery.data, delivery.port) == (None, b"\x00\x01binary\xff", 8090)
        assert (delivery.sim_number, delivery.priority, delivery.with_delivery_report) == (2, 5, True)
        stored = client.get_message(sent.id)
        assert stored.data_message.data == b"\x00\x01binary\xff" and stored.data_message.port == 8090
    phone.ws.close()


def test_watch_resumes_after_a_cursor_without_gap_or_repeat(server: ServerProcess) -> None:
    with Client(server.grpc_target, server.token) as client:
        ids = [client.send_message(["+15551234567"], f"w{i}").id for i in range(4)]  # no phone: PENDING only
        stream = client.watch_messages(after_event_id=0, timeout=10)
        first = [next(stream) for _ in range(2)]
        stream.close()
        resumed = client.watch_messages(after_event_id=first[-1].event_id, timeout=10)
        rest = [next(resumed) for _ in range(2)]
        resumed.close()
        assert [e.message_id for e in first + rest] == ids
        assert [e.event_id for e in first + rest] == sorted({e.event_id for e in first + rest})
        # Unset cursor = from now on: an old event is not replayed, a new one is seen.
        seen: list[str] = []

        def follow() -> None:
            live = client.watch_messages(timeout=10)
            seen.append(next(live).message_id)
            live.close()

        reader = threading.Thread(target=follow)
        reader.start()
        time.sleep(0.5)  # let the stream open and take its cursor before the send
        new = client.send_message(["+15551234567"], "after")
        reader.join(15)
        assert seen == [new.id]


def test_metrics_endpoint_counts_without_numbers(server: ServerProcess) -> None:
    phone, _ = pair_raw(server.grpc_target, server.token, server.device_url)
    with Client(server.grpc_target, server.token) as client:
        client.send_message(["+15551234567"], "counted")
        phone.next_deliver()
    with urllib.request.urlopen(server.endpoints["metrics"], timeout=10) as response:
        text = response.read().decode()
    assert re.search(r"^smsgw_gateway_messages_accepted_total 1\.0$", text, re.M)
    assert re.search(r"^smsgw_bridge_sessions 1\.0$", text, re.M)
    assert re.search(r"^smsgw_bridge_delivers_total 1\.0$", text, re.M)
    rpc = {"grpc_type": "unary", "grpc_service": "smsgw.v1.MessageService", "grpc_method": "SendMessage"}
    assert sample(text, "grpc_server_handled_total", **rpc, grpc_code="OK") == 1
    assert sample(text, "grpc_server_handling_seconds_count", **rpc) == 1
    assert sample(text, "grpc_server_started_total", **rpc) == sample(text, "grpc_server_msg_sent_total", **rpc) == 1
    assert "smsgw_build_info{" in text and "process_cpu_seconds_total" in text
    assert "_created" not in text  # disable_created_metrics
    label_values = re.findall(r'="([^"]*)"', "\n".join(l for l in text.splitlines() if not l.startswith("#")))
    assert label_values and not [v for v in label_values if re.search(r"\d{6,}", v)], "a number-like label value"
    phone.ws.close()


def test_sigterm_closes_sessions_with_1012_and_exits_0(server: ServerProcess) -> None:
    phone, _ = pair_raw(server.grpc_target, server.token, server.device_url)
    assert server.stop() == 0
    with pytest.raises(ConnectionClosed) as caught:
        phone.ws.recv(10)
    assert caught.value.rcvd is not None and caught.value.rcvd.code == 1012
    assert "shutting down" in server.log_text()
