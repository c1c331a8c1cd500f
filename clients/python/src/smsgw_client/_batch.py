"""``send_messages`` (SendMessages, bulk enqueue): the items, their results, and the wire
mapping both clients share.

An item is what :meth:`smsgw_client.Client.send_message` takes, as a frozen value; a result
says, for the item at the same index, whether it was stored now, was already stored under
its key (a replay), or was refused and why, as the typed error ``send_message`` would have
raised for that item alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from smsgw.v1 import messages_pb2

from . import _channel
from .errors import SmsgwError, from_status

__all__ = ["OutgoingMessage", "SendResult", "send_messages_request", "send_results"]


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One message of :meth:`~smsgw_client.Client.send_messages`; the fields are the
    arguments of :meth:`~smsgw_client.Client.send_message`.

    ``idempotency_key``: None makes a fresh one for the call (gRPC's own retries are then
    safe); give your own to make retrying the whole batch later a replay, never a copy.
    Keys must differ between the items of one call.
    """

    phone_numbers: Sequence[str]
    text: str | None = None
    data: bytes | None = None
    port: int = 0
    device_id: str = ""
    sim_number: int = 0
    priority: int = 0
    ttl: int | None = None
    valid_until: datetime | None = None
    with_delivery_report: bool | None = None
    is_encrypted: bool = False
    idempotency_key: str | None = None
    schedule_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class SendResult:
    """The outcome of the item at ``index``: ``message`` (``created`` False for a replay of
    the message already stored under its key), or ``error`` and nothing stored for it.

    ``error`` is the typed error ``send_message`` would raise for the item alone, e.g.
    :class:`~smsgw_client.InvalidArgument` with ``field_violations`` named
    ``messages[<index>].<field>``, :class:`~smsgw_client.AlreadyExists`, or
    :class:`~smsgw_client.ResourceExhausted` (the daily segment cap) with ``retry_delay``.
    """

    index: int
    message: messages_pb2.Message | None
    created: bool
    error: SmsgwError | None

    @property
    def ok(self) -> bool:
        """True when the item is stored (new or replayed)."""
        return self.error is None


def send_messages_request(
    items: Sequence[OutgoingMessage], passphrase: str | None = None
) -> messages_pb2.SendMessagesRequest:
    """Build a ``SendMessagesRequest``: each item as ``send_message`` builds its request
    (a key filled in where missing, sealed with ``passphrase`` when given).

    Built once per call, so gRPC's retries carry the same keys and the same envelopes.

    Raises:
        TypeError: An item is not an :class:`OutgoingMessage`.
        ValueError: An item breaks a rule ``send_message`` checks locally (named by index).
    """
    if isinstance(items, OutgoingMessage):
        raise TypeError("items must be a sequence of OutgoingMessage, not one")
    request = messages_pb2.SendMessagesRequest()
    for index, item in enumerate(items):
        if not isinstance(item, OutgoingMessage):
            raise TypeError(f"items[{index}] must be an OutgoingMessage, not {type(item).__name__}")
        try:
            one = _channel.send_message_request(
                item.phone_numbers,
                item.text,
                data=item.data,
                port=item.port,
                device_id=item.device_id,
                sim_number=item.sim_number,
                priority=item.priority,
                ttl=item.ttl,
                valid_until=item.valid_until,
                with_delivery_report=item.with_delivery_report,
                is_encrypted=item.is_encrypted,
                idempotency_key=item.idempotency_key,
                schedule_at=item.schedule_at,
                passphrase=passphrase,
            )
        except (TypeError, ValueError) as exc:
            raise (TypeError if isinstance(exc, TypeError) else ValueError)(f"items[{index}]: {exc}") from exc
        request.messages.append(one)
    return request


def send_results(response: messages_pb2.SendMessagesResponse) -> list[SendResult]:
    """Turn the response into one :class:`SendResult` per item, in request order."""
    results = []
    for index, result in enumerate(response.results):
        if result.HasField("error"):
            results.append(SendResult(index, None, False, from_status(result.error)))
        else:
            results.append(SendResult(index, result.message, result.created, None))
    return results
