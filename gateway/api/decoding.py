"""Requests whose bytes do not parse (issue 14, item 9).

grpc.aio deserializes a request before any handler or interceptor code runs; a DecodeError
there (broken framing, a string that is not UTF-8) is answered UNKNOWN and logged with a
traceback by grpc's core, before authentication and outside every rate limit. So the API
wraps every method's deserializer: a request that does not parse becomes an `Undecodable`
value, and the interceptor's handler answers it INVALID_ARGUMENT after the usual gate
(lockout, rate limits, authentication), counting it as a failure of its caller.

`locate` names the field at fault for the answer; it walks the raw bytes in Python, so it runs
only after the gate, bounded in fields, and off the event loop for large requests.

Requests bigger than DEFER_BYTES are not parsed on the loop either (issue 14, item 6): a 1.4 MB
SendMessages takes 10–40 ms to parse, in C that holds the GIL throughout, so a worker thread
alone would not help. They reach the handler as `Deferred`, parsed after the gate in the
worker thread by `parse_deferred`, a few top-level fields at a time (protobuf merges
concatenated messages exactly as it parses one), so the loop gets the GIL between pieces.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

__all__ = ["Undecodable", "Deferred", "safe_deserializer", "parse_deferred", "locate", "LOCATE_INLINE_BYTES", "DEFER_BYTES"]

LOCATE_INLINE_BYTES = 64 * 1024
"""Bigger undecodable requests are walked in a worker thread."""
DEFER_BYTES = 64 * 1024
"""Bigger requests are parsed in the worker thread (~0.5 ms of parsing on the loop at most)."""
_PIECE_BYTES = 16 * 1024
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


class Deferred:
    """A big request's bytes, to be parsed as `message_class` by `parse_deferred`."""

    __slots__ = ("data", "message_class")

    def __init__(self, data: bytes, message_class: type[Message]) -> None:
        self.data = data
        self.message_class = message_class


def safe_deserializer(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """`deserializer`, returning an Undecodable instead of raising, and a Deferred for a big
    request of a protobuf type."""
    if deserializer is None:
        return None
    message_class = getattr(deserializer, "__self__", None)
    descriptor = getattr(message_class, "DESCRIPTOR", None)
    if not isinstance(descriptor, Descriptor) or not (isinstance(message_class, type) and issubclass(message_class, Message)):
        descriptor = message_class = None

    def deserialize(data: bytes) -> Any:
        if message_class is not None and len(data) > DEFER_BYTES:
            return Deferred(data, message_class)
        try:
            return deserializer(data)
        except Exception as exc:  # noqa: BLE001 — DecodeError, or any parser failure: never grpc's traceback
            return Undecodable(data, descriptor, _reason(exc))

    return deserialize


def parse_deferred(deferred: Deferred) -> Any:
    """The request (or an Undecodable), parsed a few top-level fields at a time; for the worker
    thread, where the switches between pieces let the event loop run."""
    message = deferred.message_class()
    data = deferred.data
    try:
        for piece in _pieces(data):
            message.MergeFromString(piece)
    except Exception as exc:  # noqa: BLE001 — as in safe_deserializer
        return Undecodable(data, message.DESCRIPTOR, _reason(exc))
    return message


def _pieces(data: bytes) -> Iterator[bytes]:
    """`data` cut at top-level field boundaries into pieces of about _PIECE_BYTES; from where
    the framing breaks, the rest in one piece (its parse then fails as a whole parse would)."""
    start = pos = 0
    while pos < len(data):
        try:
            key, pos = _varint(data, pos)
            wire = key & 7
            if wire == 0:
                _, pos = _varint(data, pos)
            elif wire in (1, 5):
                pos += 8 if wire == 1 else 4
            elif wire == 2:
                length, pos = _varint(data, pos)
                pos += length
            else:
                raise _Broken
            if pos > len(data):
                raise _Broken
        except _Broken:
            break
        if pos - start >= _PIECE_BYTES:
            yield data[start:pos]
            start = pos
    if start < len(data):
        yield data[start:]


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
