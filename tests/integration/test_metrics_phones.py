"""The bridge's metrics (issue 18): every session end counted by side and code, upgrades
refused by status, parts handed out per SIM, and the flow-control windows in use."""

from __future__ import annotations

import socket
import struct
import time
import urllib.error
import urllib.request
from pathlib import Path

from smsgw_client import Client

from device_bridge.protocol import Encoding
from tests.helpers.metrics import sample, scrape
from tests.helpers.raw_phone import RawPhone, open_raw, pair_raw
from tests.helpers.server import ServerProcess


def _until(condition: object, what: str) -> None:
    deadline = time.monotonic() + 20
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_session_ends_refusals_parts_and_windows_are_counted(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "data") as server:
        url = server.endpoints["metrics"]
        phone, creds = pair_raw(server.grpc_target, server.token, server.device_url, window=4)
        with Client(server.grpc_target, server.token) as client:
            client.send_message(["+15550001234", "+15550001235"], "two recipients, one part each", sim_number=2)
            phone.next_deliver()
            text = scrape(url)
            assert sample(text, "smsgw_bridge_parts_dispatched_total", sim="2") == 2
            assert sample(text, "smsgw_bridge_window_in_flight") == 1 and sample(text, "smsgw_bridge_window_size") == 4

        # The phone closes (1000); then a second session replaces a third (4003, the bridge's);
        # then one vanishes without a close frame (network, 1006).
        phone.ws.close()
        second = RawPhone(open_raw(server.device_url, f"Bearer {creds.token}"), Encoding.PROTO, 4)
        third = RawPhone(open_raw(server.device_url, f"Bearer {creds.token}"), Encoding.PROTO, 4)
        sock = third.ws.socket
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # a reset: no close frame
        for bad in (f"{server.device_url}x", server.device_url):
            try:
                open_raw(bad, "Bearer not-a-token")
            except Exception:  # noqa: BLE001 — refused, as expected
                pass

        def counted() -> bool:
            t = scrape(url)
            return (
                sample(t, "smsgw_bridge_sessions_closed_total", side="phone", code="1000") == 1
                and sample(t, "smsgw_bridge_sessions_closed_total", side="bridge", code="4003") == 1
                and sample(t, "smsgw_bridge_sessions_closed_total", side="network", code="1006") == 1
                and sample(t, "smsgw_bridge_upgrades_refused_total", status="404") == 1
                and sample(t, "smsgw_bridge_upgrades_refused_total", status="401") == 1
            )

        _until(counted, scrape(url))
        del second
