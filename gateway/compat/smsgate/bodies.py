"""Reading an SMSGate API request's body, bounded (a body without, or lying about, its
length stops at the bound too) and parsed as JSON with a clear error."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from gateway.errors import InvalidArgument

__all__ = ["MAX_BODY", "read_body", "parse_json", "read_json", "read_object"]

MAX_BODY = 1 << 20  # bytes: a send of 100 recipients and a long text is far below


async def read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise InvalidArgument("body", f"larger than {limit} bytes")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise InvalidArgument("body", f"larger than {limit} bytes")
    return raw


def parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        raise InvalidArgument("body", "not JSON") from None


async def read_json(request: Request, limit: int = MAX_BODY) -> Any:
    return parse_json(await read_body(request, limit))


async def read_object(request: Request) -> dict[str, Any]:
    """A JSON object; an empty body is an empty object (the app sends none on some calls)."""
    raw = await read_body(request)
    body = parse_json(raw) if raw.strip() else {}
    if not isinstance(body, dict):
        raise InvalidArgument("body", "must be a JSON object")
    return body
