"""gateway.logs: JSON lines carry the context's correlation ids; text lines stay as they were."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from gateway import logs


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield io.StringIO()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_the_ids_set_in_the_context(captured: io.StringIO) -> None:
    logs.configure(verbose=False, fmt="json", stream=captured)
    log = logging.getLogger("gateway.test")
    token = logs.request_id.set("req-1")
    logs.device_id.set("dev-1")
    try:
        log.info("handled %s", "it")
    finally:
        logs.request_id.reset(token)
        logs.device_id.set("")
    log.warning("outside")
    first, second = (json.loads(line) for line in captured.getvalue().splitlines())
    assert first["message"] == "handled it" and first["level"] == "INFO" and first["logger"] == "gateway.test"
    assert first["request_id"] == "req-1" and first["device_id"] == "dev-1" and "message_id" not in first
    assert first["time"].endswith("Z") and "T" in first["time"]
    assert second["message"] == "outside" and "request_id" not in second and "device_id" not in second


def test_text_is_the_default_and_websockets_info_lines_need_verbose(captured: io.StringIO) -> None:
    logs.configure(verbose=False, stream=captured)
    logging.getLogger("device_bridge.websockets").info("connection open")
    logging.getLogger("gateway.test").info("plain")
    out = captured.getvalue()
    assert "connection open" not in out and out.rstrip().endswith("INFO gateway.test: plain")
    logs.configure(verbose=True, stream=captured)
    logging.getLogger("device_bridge.websockets").info("connection open")
    logging.getLogger("websockets.client").debug("headers: Authorization: secret")
    assert "connection open" in captured.getvalue() and "secret" not in captured.getvalue()
