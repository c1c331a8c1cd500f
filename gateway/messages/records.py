"""Domain records the message layer returns (never ORM rows)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from gateway.errors import SmsgwError
from gateway.types import State

__all__ = [
    "RecipientRecord",
    "MessageRecord",
    "NewMessage",
    "SendOutcome",
    "EventRecord",
    "ReceiptUpdate",
    "ReceiptRefusal",
    "MessageFilter",
    "DispatchUnit",
    "DispatchBatch",
    "HeldRecipient",
]


@dataclass(frozen=True, slots=True)
class RecipientRecord:
    index: int
    phone_number: str
    state: State
    error: str
    updated_at: datetime
    attempt: int = 1
    sim: int = 0  # the SIM it was (last) dispatched from; 0 = not yet
    parts_sent: int = 0
    parts_delivered: int = 0
    last_error: str = ""
    # PENDING only: not dispatched before this (schedule, retry backoff or pacing); None = now.
    next_attempt_at: datetime | None = None


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
    schedule_at: datetime | None = None

    @property
    def attempts(self) -> int:
        """The most attempts any recipient has had (1 until a retry)."""
        return max((r.attempt for r in self.recipients), default=1)

    @property
    def last_error(self) -> str:
        """The most recent failure of any recipient, retried or final."""
        failed = [r for r in self.recipients if r.last_error]
        return max(failed, key=lambda r: r.updated_at).last_error if failed else ""

    @property
    def next_attempt_at(self) -> datetime | None:
        """The earliest time a PENDING recipient may go (None = now, or none is pending)."""
        times = [r.next_attempt_at for r in self.recipients if r.state == State.PENDING and r.next_attempt_at]
        return min(times) if times else None


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
    schedule_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class SendOutcome:
    """One item of a batch send (SendMessages): the stored message, new (`created`) or an
    idempotent replay, or the error a SendMessage of that item alone would have raised."""

    message: MessageRecord | None
    created: bool = False
    error: SmsgwError | None = None


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
    recipient_indices: tuple[int, ...] = ()  # ACCEPTED: these (empty = every dispatched one)
    attempt: int = 0  # 0 = the current attempt
    failure_class: str = ""  # FAILED: e.g. "no_service" (gateway.messages.retry)
    parts_done: int = 0  # SENT/DELIVERED: parts so far (0 = all); FAILED: parts sent before it


class ReceiptRefusal(StrEnum):
    """Why storage will never take a receipt: the same receipt is refused the same way again,
    so the phone must forget it (device protocol: Reject) rather than re-send it."""

    UNKNOWN_MESSAGE = "unknown_message"  # no such message routed to this device (or deleted)
    UNKNOWN_RECIPIENT = "unknown_recipient"  # a recipient index the message does not have


@dataclass(frozen=True, slots=True)
class MessageFilter:
    state: State | None = None
    also_states: tuple[State, ...] = ()  # with `state`: any of these too (SMSGate's "Pending" = PENDING or DISPATCHED)
    device_id: str = ""
    created_after: datetime | None = None
    created_before: datetime | None = None


@dataclass(frozen=True, slots=True)
class HeldRecipient:
    """A recipient (and attempt) a phone said it holds, at the start of its session."""

    message_id: str
    recipient_index: int
    attempt: int


@dataclass(frozen=True, slots=True)
class DispatchUnit:
    """What one Deliver carries: these recipients of a message, at one attempt, from one SIM."""

    message: MessageRecord
    recipient_indices: tuple[int, ...]
    attempt: int
    sim: int


@dataclass(frozen=True, slots=True)
class DispatchBatch:
    """The outcome of one dispatch round for a phone."""

    units: list[DispatchUnit]
    drops: dict[str, State]  # messages the phone may hold that ended (CANCELLED / EXPIRED)
    wake_at: datetime | None  # when to try again though nothing woke the session (pacing, schedule, retry)
    # Storage names another session as the device's live one (it opened on another bridge):
    # nothing was claimed, and this session must end (4003). Only with `fence` (issue 16).
    fenced: bool = False
