"""`--log-format json` (issue 18): every line a JSON object with time, level, logger and
message; the API's lines carry a request id, the bridge's a device id; and, as in the text
format, no body, token, password or full number anywhere."""

from __future__ import annotations

import json
from pathlib import Path

from smsgw_client import Client

from tests.helpers.raw_phone import pair_raw
from tests.helpers.server import ServerProcess

BODY = "json-log secret body 7"
NUMBER = "+15557654321"


def test_json_lines_with_correlation_ids_and_nothing_secret(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "data", args=("--log-format", "json")) as server:
        token = server.token
        phone, credentials = pair_raw(server.grpc_target, token, server.device_url)
        with Client(server.grpc_target, token) as client:
            client.send_message([NUMBER], BODY, device_id=credentials.device_id)
            phone.next_deliver()
            with __import__("pytest").raises(Exception):
                client.get_message("no-such-message-id")
        phone.ws.close()
        password = server.admin_password
    text = server.log_text()
    lines = [line for line in text.splitlines() if line.startswith("{")]
    records = [json.loads(line) for line in lines]
    assert records, text
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    assert all(r["time"].endswith("Z") and r["level"] in ("DEBUG", "INFO", "WARNING", "ERROR") for r in records)
    # Plain lines are only the server's own announcements on stdout (not log records).
    others = [line for line in text.splitlines() if line and not line.startswith("{")]
    assert all(line.startswith(("smsgw ", "smsgw:", "created account")) for line in others), others
    bridge = [r for r in records if r["logger"] == "device_bridge.session_task"]
    assert bridge and all(r.get("device_id") == credentials.device_id for r in bridge if "session" in r["message"])
    assert any(r["message"].startswith("= session ended by the phone") for r in bridge)
    assert not [r for r in records if r["logger"].endswith("websockets") and r["level"] == "INFO"]
    for secret in (BODY, NUMBER, token, password, credentials.token):
        assert secret not in text
