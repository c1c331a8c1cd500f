"""The tables. Times are aware UTC (SQLModel converts); states are `gateway.types.State` values.

Repositories turn rows into domain records; rows never leave the storage layer's callers
in `gateway.messages` / `gateway.devices`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Column, Index, Integer, LargeBinary, UniqueConstraint, text
from sqlmodel import Field, SQLModel

# A row id of an append-only table (events, dispatch history, audit, webhook attempts):
# 64-bit on PostgreSQL (a 32-bit serial runs out in days at thousands of rows a second; issue
# 16), INTEGER on SQLite, where only that exact type is the 64-bit rowid.
LOG_ID = BigInteger().with_variant(Integer(), "sqlite")


def _log_id() -> Any:
    return Field(default=None, sa_column=Column(LOG_ID, primary_key=True, autoincrement=True))


__all__ = [
    "Owner",
    "AuthTokenRow",
    "TokenFamilyRow",
    "AuditRow",
    "DailyUsageRow",
    "Device",
    "PairingCode",
    "MessageRow",
    "RecipientRow",
    "EventRow",
    "DispatchLogRow",
    "InboundRow",
    "WebhookRow",
    "SmsgateSettingsRow",
    "WebhookDeliveryRow",
    "WebhookAttemptRow",
    "OtpVerificationRow",
    "OtpSendRow",
]


class Owner(SQLModel, table=True):
    """An account: it owns messages, devices, webhooks and tokens (DESIGN "Security")."""

    __tablename__ = "owner"
    __table_args__ = (UniqueConstraint("username", name="uq_owner_username"),)
    id: str = Field(primary_key=True)
    name: str
    username: str
    # scrypt, self-describing (gateway.auth.passwords); "" = cannot sign in.
    password_hash: str = ""
    # Space-separated: what tokens of this account may carry.
    scopes: str = ""
    disabled: bool = False
    created_at: datetime


class TokenFamilyRow(SQLModel, table=True):
    """One sign-in (IssueToken) and every token refreshed from it; revoked as a whole."""

    __tablename__ = "token_family"
    id: str = Field(primary_key=True)
    owner_id: str = Field(foreign_key="owner.id", index=True)
    scopes: str
    access_ttl: int  # seconds; every access token of the family gets it
    created_at: datetime
    expires_at: datetime  # the last refresh token's exp: after it nothing of the family is valid
    revoked_at: datetime | None = None
    revoked_reason: str = ""


class AuthTokenRow(SQLModel, table=True):
    """An issued JWT (access or refresh), by jti: for revocation, rotation and reuse detection."""

    __tablename__ = "auth_token"
    __table_args__ = (Index("ix_auth_token_revoked", "revoked_at", "expires_at"),)
    jti: str = Field(primary_key=True)
    family_id: str = Field(foreign_key="token_family.id", index=True)
    owner_id: str = Field(foreign_key="owner.id", index=True)
    kind: str  # "access" | "refresh"
    issued_at: datetime
    expires_at: datetime
    revoked_at: datetime | None = None
    # Refresh tokens: when rotated, and the pair that replaced it (re-made for a retry in the grace window).
    rotated_at: datetime | None = None
    rotated_by_source: str = ""
    successor_access_jti: str = ""
    successor_refresh_jti: str = ""


class AuditRow(SQLModel, table=True):
    """The audit log: token and device life cycle, failed authentications. No secrets."""

    __tablename__ = "audit"
    __table_args__ = (Index("ix_audit_owner", "owner_id", "id"),)
    id: int | None = _log_id()
    owner_id: str | None = None  # None: the caller was not identified (unknown user, bad token)
    time: datetime
    action: str
    actor: str = ""
    source: str = ""
    detail: str = ""


class DailyUsageRow(SQLModel, table=True):
    """SMS segments an owner sent on one UTC day, counted in the transaction that stores them."""

    __tablename__ = "daily_usage"
    owner_id: str = Field(foreign_key="owner.id", primary_key=True)
    day: str = Field(primary_key=True)  # YYYY-MM-DD, UTC
    segments: int = 0


class Device(SQLModel, table=True):
    __tablename__ = "device"
    id: str = Field(primary_key=True)
    owner_id: str = Field(foreign_key="owner.id", index=True)
    name: str = ""
    token_hash: str = Field(unique=True)
    created_at: datetime
    last_seen: datetime | None = None
    # The bridge session currently holding this device ("" = offline).
    session_id: str = ""
    # The `smsgw bridge` process holding that session ("" = offline, or `smsgw serve`): the
    # worker takes its devices offline when that bridge dies (gateway/devices/reaper.py).
    bridge_id: str = Field(default="", index=True)
    app_version: str = ""
    sims_json: str = "[]"
    revoked: bool = False
    # Pacing overrides set with UpdateDeviceSettings (gateway.messages.pacing); "{}" = config defaults.
    settings_json: str = "{}"
    # The first session opened with its own token: the phone holds it, so its pairing code is
    # spent for good. Until then the code may re-issue the token (a lost Welcome).
    connected_with_token_at: datetime | None = None
    # FCM wake-ups (issue 17, gateway/push): the phone's registration token ("" = none), when
    # FCM refused it (no pushes until the phone reports another), the last push sent.
    push_token: str = ""
    push_token_invalid_at: datetime | None = None
    last_woken_at: datetime | None = None


class BridgeInstance(SQLModel, table=True):
    """A running `smsgw bridge` (issue 16): its heartbeat, which the worker reads to find
    the bridges that died without closing their sessions."""

    __tablename__ = "bridge_instance"
    id: str = Field(primary_key=True)
    host: str = ""  # hostname and pid, for operators
    started_at: datetime
    heartbeat_at: datetime  # the database's clock, not the bridge's


class PairingCode(SQLModel, table=True):
    __tablename__ = "pairing_code"
    code_hash: str = Field(primary_key=True)
    owner_id: str = Field(foreign_key="owner.id", index=True)
    device_name: str = ""
    expires_at: datetime
    # First redeemed, and the device that made; spent for good once that device connected with
    # its token, was deleted, or the code expired (gateway.devices.repository).
    used_at: datetime | None = None
    device_id: str | None = None


# The messages a phone coming online may take over (state 1 = PENDING): see ix_message_adoptable.
ADOPTABLE = "state = 1 AND pinned = false AND ever_dispatched = false"


class MessageRow(SQLModel, table=True):
    __tablename__ = "message"
    __table_args__ = (
        UniqueConstraint("owner_id", "idempotency_key", name="uq_message_owner_key"),
        # "next pending for a device", in priority-then-FIFO order, straight off the index.
        Index("ix_message_dispatch", "device_id", "state", text("priority DESC"), "id"),
        # The expiry sweep: unaccepted messages with a deadline.
        Index("ix_message_expiry", "state", "valid_until"),
        Index("ix_message_owner_id", "owner_id", "id"),
        # Messages whose phone must be told to drop them (expired while it held them).
        Index("ix_message_drop", "drop_pending", "device_id"),
        # What a phone coming online may adopt (MessageRepository._ADOPT): only the owner's
        # unpinned, never-dispatched PENDING messages, so a session open does not scan every
        # pending message (a partial index: the statement repeats its WHERE).
        Index("ix_message_adoptable", "owner_id", "device_id",
              sqlite_where=text(ADOPTABLE), postgresql_where=text(ADOPTABLE)),
    )
    id: str = Field(primary_key=True)  # ULID: sortable by creation
    owner_id: str = Field(foreign_key="owner.id")
    idempotency_key: str
    content_hash: str
    device_id: str | None = Field(default=None, foreign_key="device.id")
    pinned: bool = False  # the client chose the device; never rerouted
    ever_dispatched: bool = False  # a phone may hold it; never rerouted to another phone
    drop_pending: bool = False  # it expired while its phone may hold it: the next dispatch round sends Drop
    sim_number: int = 0  # the SIM the client asked for; 0 = the scheduler picks one per recipient
    text: str | None = None
    data: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    port: int = 0
    is_encrypted: bool = False
    priority: int = 0
    valid_until: datetime | None = None
    schedule_at: datetime | None = None  # held until then (its recipients' not_before)
    with_delivery_report: bool = True
    state: int
    parts: int = 1
    encoding: str = "GSM_7"
    created_at: datetime
    updated_at: datetime


class RecipientRow(SQLModel, table=True):
    """One recipient of a message: the unit the scheduler dispatches, paces and retries."""

    __tablename__ = "recipient"
    __table_args__ = (Index("ix_recipient_session", "session_id"),)
    message_id: str = Field(foreign_key="message.id", primary_key=True)
    idx: int = Field(primary_key=True)
    phone_number: str
    state: int
    error: str = ""
    updated_at: datetime
    attempt: int = 1  # 1-based; a retry after a retryable failure is the next attempt
    session_id: str = ""  # the session it is DISPATCHED on
    sim: int = 0  # the SIM it was last dispatched from
    not_before: datetime | None = None  # schedule_at, or the retry backoff: not dispatched before
    paced_until: datetime | None = None  # when pacing lets it go (head of the queue), for display
    parts_sent: int = 0
    parts_delivered: int = 0
    last_error: str = ""  # the last failed attempt's reason, retried or not


class EventRow(SQLModel, table=True):
    """The event log, written in the same transaction as the change it records: one row per
    recipient state change (kind "message") and per stored inbound SMS (kind "inbound")."""

    __tablename__ = "event"
    __table_args__ = (
        Index("ix_event_owner", "owner_id", "id"),
        Index("ix_event_message", "message_id", "id"),
        Index("ix_event_owner_kind", "owner_id", "kind", "id"),
    )
    id: int | None = _log_id()
    owner_id: str
    kind: str = "message"  # gateway.types.EventKind
    message_id: str = ""
    recipient_index: int = 0
    state: int = 0
    message_state: int = 0
    error: str = ""
    inbound_id: str = ""  # kind "inbound": the InboundRow
    created_at: datetime


class DispatchLogRow(SQLModel, table=True):
    """Every dispatch of a recipient: the history pacing windows are computed over.

    Pruned after the longest window (a calendar month for the distinct-recipients cap).
    """

    __tablename__ = "dispatch_log"
    __table_args__ = (Index("ix_dispatch_log_device", "device_id", "at"),)
    id: int | None = _log_id()
    device_id: str
    sim: int
    at: datetime
    parts: int
    message_id: str
    recipient_index: int


class InboundRow(SQLModel, table=True):
    """An SMS a phone received, stored once per (device, phone-made id)."""

    __tablename__ = "inbound"
    __table_args__ = (
        UniqueConstraint("device_id", "phone_id", name="uq_inbound_device_phone_id"),
        Index("ix_inbound_owner", "owner_id", "id"),
    )
    id: str = Field(primary_key=True)  # ULID
    owner_id: str = Field(foreign_key="owner.id")
    device_id: str
    phone_id: str  # the phone's id for it: a re-sent Inbound carries the same
    sim: int = 0
    sender: str
    text: str | None = None
    data: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    port: int = 0
    is_encrypted: bool = False
    truncated: bool = False  # the body is only the first part of what the phone received
    received_at: datetime
    created_at: datetime


class WebhookRow(SQLModel, table=True):
    """A registered endpoint. The secret signs every request; it is shown to the owner once."""

    __tablename__ = "webhook"
    __table_args__ = (
        Index("ix_webhook_owner", "owner_id", "id"),
        # SMSGate's API addresses a webhook by the id its client chose, unique per account.
        Index("ux_webhook_owner_external", "owner_id", "external_id", unique=True),
    )
    id: str = Field(primary_key=True)  # ULID
    owner_id: str = Field(foreign_key="owner.id")
    url: str
    events: str  # space-separated event names
    device_id: str = ""  # only this phone's events; "" = all
    secret: str
    previous_secret: str = ""  # still signs (a second signature) until previous_secret_until
    previous_secret_until: datetime | None = None
    state: int = 1  # gateway.webhooks.records.WebhookState
    disabled_reason: str = ""
    failing_since: datetime | None = None
    last_success_at: datetime | None = None
    created_at: datetime
    # The body and signature format (gateway.webhooks.formats): "" = Standard Webhooks,
    # "smsgate" = SMSGate's (registered through its API; `secret` is then a copy of the
    # owner's `webhooks.signing_key` setting, kept in step by gateway.compat.smsgate.settings).
    format: str = ""
    external_id: str | None = None  # SMSGate's webhook id (its API's `id`); None for gRPC's


class SmsgateSettingsRow(SQLModel, table=True):
    """An account's SMSGate settings map (`/3rdparty/v1/settings`), the whitelisted JSON as
    stored, hidden keys included (gateway.compat.smsgate.settings)."""

    __tablename__ = "smsgate_settings"
    owner_id: str = Field(primary_key=True, foreign_key="owner.id")
    data: str = "{}"
    updated_at: datetime


class WebhookDeliveryRow(SQLModel, table=True):
    """The outbox: one event for one webhook, stored in the transaction that caused it.

    `id` is the webhook-id header, the same on every attempt; `payload` is the exact body.
    """

    __tablename__ = "webhook_delivery"
    __table_args__ = (
        Index("ix_webhook_delivery_due", "state", "next_attempt_at"),
        Index("ix_webhook_delivery_webhook", "webhook_id", "id"),
    )
    id: str = Field(primary_key=True)  # msg_ + ULID
    webhook_id: str = Field(foreign_key="webhook.id")
    owner_id: str
    event: str
    payload: str
    state: int = 1  # gateway.webhooks.records.DeliveryState
    attempts: int = 0  # every attempt ever made (the attempt log's numbering)
    attempt_base: int = 0  # attempts made before the last replay: the schedule restarts after them
    max_attempts: int = 0  # 0 = the configured schedule; 1 = a test ping
    next_attempt_at: datetime | None = None
    last_error: str = ""
    created_at: datetime
    updated_at: datetime


class WebhookAttemptRow(SQLModel, table=True):
    """One HTTP attempt of a delivery: what the owner sees in ListWebhookDeliveries."""

    __tablename__ = "webhook_attempt"
    __table_args__ = (Index("ix_webhook_attempt_delivery", "delivery_id", "id"),)
    id: int | None = _log_id()
    delivery_id: str = Field(foreign_key="webhook_delivery.id")
    webhook_id: str
    attempt: int
    at: datetime
    status_code: int = 0
    latency_ms: int = 0
    error: str = ""


class OtpVerificationRow(SQLModel, table=True):
    """A one-time password's verification (gateway.otp). The code is only its HMAC under the
    OTP key; the SMS that carries it is a message whose text is sealed under the same key."""

    __tablename__ = "otp_verification"
    __table_args__ = (
        Index("ix_otp_owner_to", "owner_id", "to_number", "status"),
        Index("ix_otp_prefix_created", "prefix", "created_at"),
        Index("ix_otp_pending_expiry", "status", "expires_at"),
        UniqueConstraint("owner_id", "idempotency_key", name="uq_otp_owner_key"),
        # One pending verification per number and owner, even when two starts race on
        # PostgreSQL: the loser retries and resends the winner's code.
        Index("ux_otp_pending_number", "owner_id", "to_number", unique=True,
              sqlite_where=text("status = 1"), postgresql_where=text("status = 1")),
    )
    id: str = Field(primary_key=True)  # ULID
    owner_id: str = Field(foreign_key="owner.id")
    to_number: str  # E.164
    prefix: str  # the number without its last 4 digits: the pumping guard's and the prefix limit's unit
    code_hash: str  # HMAC-SHA256(OTP key, id:code), hex
    code_length: int
    status: int  # gateway.otp.machine.Status
    attempts: int = 0
    max_attempts: int
    sends: int = 0
    message_id: str = ""  # the last SMS sent for it
    last_sent_at: datetime | None = None
    expires_at: datetime
    locale: str = ""
    idempotency_key: str | None = None  # None: no key given
    created_at: datetime
    updated_at: datetime


class OtpSendRow(SQLModel, table=True):
    """Every SMS sent for a verification (first and resends): the send limits count these."""

    __tablename__ = "otp_send"
    __table_args__ = (
        Index("ix_otp_send_number", "to_number", "at"),
        Index("ix_otp_send_prefix", "prefix", "at"),
        Index("ix_otp_send_owner", "owner_id", "at"),
        UniqueConstraint("owner_id", "idempotency_key", name="uq_otp_send_owner_key"),
    )
    id: int | None = _log_id()
    owner_id: str
    verification_id: str
    to_number: str
    prefix: str
    at: datetime
    idempotency_key: str | None = None  # a resend's key (a first send's is the verification's)
