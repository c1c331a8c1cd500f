"""Webhook domain values: event names, states, and the records the service returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum, StrEnum

__all__ = ["WebhookEvent", "WebhookState", "DeliveryState", "WebhookRecord", "AttemptRecord", "DeliveryRecord"]


class WebhookEvent(StrEnum):
    SMS_RECEIVED = "sms:received"
    SMS_DATA_RECEIVED = "sms:data-received"
    SMS_SENT = "sms:sent"
    SMS_DELIVERED = "sms:delivered"
    SMS_FAILED = "sms:failed"
    DEVICE_ONLINE = "device:online"
    DEVICE_OFFLINE = "device:offline"
    DEVICE_PUSH_TOKEN_INVALID = "device:push-token-invalid"
    SYSTEM_PING = "system:ping"
    OTP_APPROVED = "otp:approved"  # a verification's right code was checked (gateway.otp; never the code)
    OTP_EXPIRED = "otp:expired"  # a pending verification ran out of time


class WebhookState(IntEnum):
    """Values match `smsgw.v1.WebhookState`."""

    ACTIVE = 1
    FAILING = 2
    DISABLED = 3


class DeliveryState(IntEnum):
    """Values match `smsgw.v1.DeliveryState`."""

    PENDING = 1
    SUCCEEDED = 2
    FAILED = 3


@dataclass(frozen=True, slots=True)
class WebhookRecord:
    id: str
    owner_id: str
    url: str
    events: tuple[WebhookEvent, ...]
    device_id: str
    state: WebhookState
    disabled_reason: str
    failing_since: datetime | None
    last_success_at: datetime | None
    created_at: datetime
    pending_deliveries: int = 0
    format: str = ""  # gateway.webhooks.formats.Format
    external_id: str | None = None  # the id SMSGate's API knows it by


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    delivery_id: str
    attempt: int
    at: datetime
    status_code: int
    latency_ms: int
    error: str


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    id: str
    webhook_id: str
    event: str
    state: DeliveryState
    attempts: int
    next_attempt_at: datetime | None
    created_at: datetime
    last_error: str
    attempt_log: tuple[AttemptRecord, ...] = field(default=())
