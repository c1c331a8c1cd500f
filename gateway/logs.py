"""Logging for every `smsgw` command (issue 18): human-readable lines by default, or with
`--log-format json` one JSON object a line (python-json-logger) with `time`, `level`,
`logger`, `message` and, when known, the correlation ids `request_id` (one gRPC call),
`device_id` (one phone session) and `message_id`.

The ids come from context variables set where the work starts (the API's interceptor, the
bridge's session task), so every line logged while handling that call or session carries
them without each call site passing them. What is logged stays what it was: never a body, a
passphrase, a token or a full number (gateway.redact).

websockets logs a line per connection at INFO ("connection open", "connection closed"); they
are shown with `-v` only: the bridge's own session lines say more, with the device.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from typing import Any, TextIO

from pythonjsonlogger.json import JsonFormatter

__all__ = ["configure", "request_id", "device_id", "message_id", "FORMATS"]

FORMATS = ("text", "json")

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("smsgw_request_id", default="")
device_id: contextvars.ContextVar[str] = contextvars.ContextVar("smsgw_device_id", default="")
message_id: contextvars.ContextVar[str] = contextvars.ContextVar("smsgw_message_id", default="")
_IDS = (("request_id", request_id), ("device_id", device_id), ("message_id", message_id))


class _Correlation(logging.Filter):
    """Put the context's ids on each record (JSON: as fields; text: not shown)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in _IDS:
            value = var.get()
            if value and not hasattr(record, name):
                setattr(record, name, value)
        return True


class _Json(JsonFormatter):
    def add_fields(self, log_record: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        super().add_fields(log_record, record, message_dict)
        log_record["time"] = self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z"
        log_record["level"] = record.levelname
        log_record["logger"] = record.name


def configure(*, verbose: bool, fmt: str = "text", stream: TextIO | None = None) -> None:
    """The root handler on `stream` (stderr) in `fmt` ("text" or "json"); DEBUG with `verbose`."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(_Correlation())
    if fmt == "json":
        formatter: logging.Formatter = _Json("%(message)s", rename_fields={"levelname": "level"})
        formatter.converter = time.gmtime
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # one line per migration step otherwise
    # websockets logs request headers (Authorization: device tokens, pairing codes) and
    # frames (message bodies) at DEBUG: never let -v turn that on. Its per-connection INFO
    # lines only with -v.
    for name in ("websockets", "device_bridge.websockets"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
