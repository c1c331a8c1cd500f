"""Domain records the message layer returns (never ORM rows)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from gateway.types import State

__all__ = ["RecipientRecord", "MessageRecord", "NewMessage", "EventRecord", "ReceiptUpdate", "MessageFilter"]


@dataclass(frozen=True, slots=True)
class RecipientRecord:
    index: int
    phone_number: str
    state: State
    error: str
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class MessageRecord:
    id: str
    owner_id: str
    idempotency_key: str
    device_id: str | None
    sim_number: int
    text: str | None
    data: bytes | None
    port: int
    is_encrypted: bool
    priority: int
    valid_until: datetime | None
    with_delivery_report: bool
    state: State
    recipients: tuple[RecipientRecord, ...]
    created_at: datetime
    updated_at: datetime
    parts: int
    encoding: str


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A validated SendMessage request (see gateway.messages.validation)."""

    phone_numbers: tuple[str, ...]
    text: str | None
    data: bytes | None
    port: int
    device_id: str
    sim_number: int
    priority: int
    valid_until: datetime | None
    with_delivery_report: bool
    is_encrypted: bool
    idempotency_key: str
    content_hash: str
    parts: int
    encoding: str


@dataclass(frozen=True, slots=True)
class EventRecord:
    id: int
    message_id: str
    recipient_index: int
    phone_number: str
    state: State
    message_state: State
    error: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ReceiptUpdate:
    """A phone's receipt as the storage layer applies it."""

    message_id: str
    state: State  # ACCEPTED, SENT, DELIVERED or FAILED
    recipient_index: int
    error: str = ""


@dataclass(frozen=True, slots=True)
class MessageFilter:
    state: State | None = None
    device_id: str = ""
    created_after: datetime | None = None
    created_before: datetime | None = None
