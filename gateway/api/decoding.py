"""Requests whose bytes do not parse (issue 14, item 9).

grpc.aio deserializes a request before any handler or interceptor code runs; a DecodeError
there (broken framing, a string that is not UTF-8) is answered UNKNOWN and logged with a
traceback by grpc's core, before authentication and outside every rate limit. So the API
wraps every method's deserializer: a request that does not parse becomes an `Undecodable`
value, and the interceptor's handler answers it INVALID_ARGUMENT after the usual gate
(lockout, rate limits, authentication), counting it as a failure of its caller.

`locate` names the field at fault for the answer; it walks the raw bytes in Python, so it runs
only after the gate, bounded in fields, and off the event loop for large requests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

__all__ = ["Undecodable", "safe_deserializer", "locate", "LOCATE_INLINE_BYTES"]

LOCATE_INLINE_BYTES = 64 * 1024
"""Bigger undecodable requests are walked in a worker thread."""
_MAX_FIELDS = 200_000  # bounds the walk (a 4 MiB request holds at most ~2M fields)
_MAX_DEPTH = 64


class Undecodable:
    """Stands in for a request whose bytes did not parse as `descriptor` (None when the
    deserializer names no protobuf type); the handler, not grpc's core, answers it."""

    __slots__ = ("data", "descriptor", "reason")

    def __init__(self, data: bytes, descriptor: Descriptor | None, reason: str) -> None:
        self.data = data
        self.descriptor = descriptor
        self.reason = reason


def safe_deserializer(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """`deserializer`, returning an Undecodable instead of raising."""
    if deserializer is None:
        return None
    descriptor = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    if not isinstance(descriptor, Descriptor):
        descriptor = None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # noqa: BLE001 — DecodeError, or any parser failure: never grpc's traceback
            return Undecodable(data, descriptor, _reason(exc))

    return deserialize


def _reason(exc: Exception) -> str:
    """protobuf's "Error parsing message with type 'X': why" -> "why" (it holds no request bytes)."""
    text = str(exc)
    return text.rpartition("': ")[2] or type(exc).__name__


class _Broken(Exception):
    """The wire format ends or breaks here."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    for _ in range(10):
        if pos >= len(data):
            raise _Broken
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise _Broken


def _repeated(field: FieldDescriptor) -> bool:
    """`is_repeated` (protobuf 6+; `label` is gone in 7), or `label` before it."""
    flag = getattr(field, "is_repeated", None)
    return bool(flag) if flag is not None else field.label == FieldDescriptor.LABEL_REPEATED


def locate(bad: Undecodable) -> tuple[str, str]:
    """(field path, why) for the error: the string field that is not UTF-8 or the message
    whose bytes break (`messages[3].phone_numbers[0]`), else ("request", protobuf's reason)."""
    fallback = ("request", f"not a valid {bad.descriptor.full_name if bad.descriptor else 'request'}: {bad.reason}")
    if bad.descriptor is None:
        return fallback
    budget = [_MAX_FIELDS]
    try:
        found = _walk(bad.data, bad.descriptor, "", budget, 0)
    except RecursionError:
        return fallback
    return found or fallback


def _walk(data: bytes, descriptor: Descriptor, path: str, budget: list[int], depth: int) -> tuple[str, str] | None:
    """The first fault inside `data` parsed as `descriptor`, or None (none found, or gave up)."""
    if depth > _MAX_DEPTH:
        return None
    where = path.removesuffix(".") or "request"
    seen: dict[int, int] = {}
    pos = 0
    while pos < len(data):
        budget[0] -= 1
        if budget[0] < 0:
            return None
        try:
            key, pos = _varint(data, pos)
            number, wire = key >> 3, key & 7
            if wire == 0:
                _, pos = _varint(data, pos)
                continue
            if wire in (1, 5):
                pos += 8 if wire == 1 else 4
                if pos > len(data):
                    raise _Broken
                continue
            if wire != 2 or number == 0:
                raise _Broken  # groups are not used by proto3; 6 and 7 do not exist
            length, pos = _varint(data, pos)
            chunk = data[pos : pos + length]
            if len(chunk) < length:
                raise _Broken
            pos += length
        except _Broken:
            return where, f"not a valid {descriptor.full_name}: protobuf wire format truncated or corrupt"
        field = descriptor.fields_by_number.get(number)
        if field is None:
            continue
        index = seen[number] = seen.get(number, -1) + 1
        name = f"{path}{field.name}" + (f"[{index}]" if _repeated(field) else "")
        if field.type == FieldDescriptor.TYPE_STRING:
            try:
                chunk.decode("utf-8")
            except UnicodeDecodeError:
                return name, "not valid UTF-8 (protobuf strings must be)"
        elif field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type is not None:
            found = _walk(chunk, field.message_type, name + ".", budget, depth + 1)
            if found:
                return found
    return None
