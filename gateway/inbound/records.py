"""Domain records of the inbound layer (never ORM rows). Their reprs leave out the sender and
the body, so that logging one cannot leak them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

__all__ = ["NewInbound", "InboundRecord", "InboundEventRecord"]


@dataclass(frozen=True, slots=True)
class NewInbound:
    """An SMS a phone forwarded, as the bridge hands it to storage (already validated by the
    protocol). `phone_id` is the phone's id for it: a re-send carries the same one."""

    phone_id: str
    sender: str = field(repr=False)
    text: str | None = field(default=None, repr=False)
    data: bytes | None = field(default=None, repr=False)
    port: int = 0
    sim: int = 0  # 1-based; 0 = the phone did not say
    is_encrypted: bool = False
    received_at: datetime | None = None  # the phone's clock; None = when the server stored it
    truncated: bool = False  # the body was cut to the bridge's bound (or by the phone)


@dataclass(frozen=True, slots=True)
class InboundRecord:
    """A stored inbound SMS. Exactly one of `text` and `data` is set."""

    id: str  # server-made ULID
    owner_id: str
    device_id: str
    phone_id: str
    sim: int
    sender: str = field(repr=False)
    text: str | None = field(repr=False)
    data: bytes | None = field(repr=False)
    port: int
    is_encrypted: bool
    received_at: datetime
    created_at: datetime
    truncated: bool = False  # only the first part of the body is kept


@dataclass(frozen=True, slots=True)
class InboundEventRecord:
    """One event-log row of kind "inbound" with the SMS it records (WatchInbound)."""

    id: int  # the event id: the cursor, shared with message events
    inbound: InboundRecord

