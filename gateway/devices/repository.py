"""Device storage: pairing codes, device credentials, presence, deletion.

Secrets (device tokens, pairing codes) are stored only as SHA-256 hashes:
they are 128+ bits of randomness, so a fast hash is enough and lookups stay O(1).
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta
from enum import Enum

from sqlalchemy import func
from sqlmodel import Session, col, select
from ulid import ULID

from gateway.auth.repository import AuditEntry, audit_row
from gateway.devices.records import DeviceIdentity, DeviceRecord, SimRecord, sims_from_json, sims_to_json
from gateway.errors import InvalidArgument
from gateway.messages.repository import to_utc
from gateway.storage.engine import Database
from gateway.storage.models import Device, MessageRow, PairingCode
from gateway.types import UNACCEPTED_STATES, utcnow
from gateway.webhooks.outbox import enqueue
from gateway.webhooks.payloads import device_body
from gateway.webhooks.records import WebhookEvent

__all__ = ["DeviceRepository", "Online", "hash_secret", "PAIRING_ALPHABET"]

# No 0/O/1/I: the code is read off a screen and typed.
PAIRING_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"
_PAIRING_LENGTH = 10  # 50 bits; short-lived, usable for its device until the device's first session with its token


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Online(Enum):
    """What `set_online` did. Credentials are checked at the upgrade, but the session opens
    later (after Hello): the device may have been deleted, or re-paired, meanwhile."""

    ONLINE = "online"
    DELETED = "deleted"  # nothing changed
    TOKEN_REPLACED = "token_replaced"  # a retry with the pairing code re-issued the token; nothing changed


class DeviceRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    # ---- pairing -----------------------------------------------------------------

    def create_pairing_code(self, owner_id: str, device_name: str, ttl: timedelta, now: datetime) -> tuple[str, datetime]:
        code = "".join(secrets.choice(PAIRING_ALPHABET) for _ in range(_PAIRING_LENGTH))
        expires = to_utc(now) + ttl
        with self.db.write() as s:
            s.add(PairingCode(code_hash=hash_secret(_normal(code)), owner_id=owner_id, device_name=device_name, expires_at=expires))
        return code, expires

    def pairing_code_valid(self, code: str, now: datetime) -> bool:
        with self.db.read() as s:
            return _usable_code(s, hash_secret(_normal(code)), to_utc(now)) is not None

    def redeem_pairing_code(self, code: str, now: datetime, source: str = "") -> tuple[DeviceIdentity, str] | None:
        """Trade a valid code for device credentials. The first use makes the device (audited
        as device.pair); a use before the device ever connected with its token re-issues that
        device's token instead (device.reissue): the Welcome carrying the first may have been
        lost, and as tokens are stored hashed the previous one stops working.
        None if unknown, expired or spent for good (docs/protocol.md "Pairing")."""
        now = to_utc(now)

        def tx(s: Session) -> tuple[DeviceIdentity, str] | None:
            # Row-locked: two sessions redeeming at once (on two bridges) make one device.
            usable = _usable_code(s, hash_secret(_normal(code)), now, lock=True)
            if usable is None:
                return None
            row, device = usable
            token = "dev_" + secrets.token_urlsafe(32)
            if device is None:
                device = Device(
                    id=str(ULID()), owner_id=row.owner_id, name=row.device_name,
                    token_hash=hash_secret(token), created_at=now,
                )
                row.used_at, row.device_id = now, device.id
                s.add(row)
                entry = AuditEntry("device.pair", device.owner_id, device.id, source, f"paired {device.name!r}")
            else:
                device.token_hash = hash_secret(token)
                entry = AuditEntry(
                    "device.reissue", device.owner_id, device.id, source,
                    "pairing code used again before the token was: new token, the previous one revoked",
                )
            s.add(device)
            s.add(audit_row(entry, now))
            return DeviceIdentity(device.id, device.owner_id), token

        return self.db.group(tx)

    # ---- credentials and presence ------------------------------------------------

    def authenticate(self, token: str) -> DeviceIdentity | None:
        with self.db.read() as s:
            row = s.exec(select(Device).where(Device.token_hash == hash_secret(token))).first()
            if row is None or row.revoked:
                return None
            return DeviceIdentity(row.id, row.owner_id)

    def set_online(
        self,
        device_id: str,
        session_id: str,
        *,
        token_hash: str | None,
        app_version: str,
        sims: tuple[SimRecord, ...],
        now: datetime,
        with_token: bool = True,
    ) -> Online:
        """Mark the device online on `session_id`, unless it was deleted or its token replaced
        since the session's credentials were checked. `token_hash`: of the token the session
        was admitted with, or (pairing) hands out; re-checked here, in the transaction that
        takes the device, so a session whose token a re-pair killed neither takes the device
        nor spends the code (None: nothing to check, for tests that stage devices).
        `with_token`: the session was opened with the device token (not a pairing code); the
        first such spends its pairing code."""

        def tx(s: Session) -> Online:
            # Locked (PostgreSQL): a re-issue on another bridge commits before or after, never across.
            row = s.get(Device, device_id, with_for_update=True, populate_existing=True)
            if row is None:
                raise InvalidArgument("device_id", "unknown device")
            if row.revoked:
                return Online.DELETED
            if token_hash is not None and row.token_hash != token_hash:
                return Online.TOKEN_REPLACED
            if not row.session_id:  # a reconnect replacing a live session is no news
                _presence(s, row, online=True, now=to_utc(now))
            row.session_id = session_id
            row.app_version = app_version[:64]
            row.sims_json = sims_to_json(sims)
            row.last_seen = to_utc(now)
            if with_token and row.connected_with_token_at is None:
                row.connected_with_token_at = to_utc(now)
            s.add(row)
            return Online.ONLINE

        return self.db.group(tx)

    def set_offline(self, device_id: str, session_id: str, now: datetime) -> bool:
        """Mark offline unless a newer session already took over. Returns whether it did."""
        def tx(s: Session) -> bool:
            row = s.get(Device, device_id)
            if row is None or row.session_id != session_id:
                return False
            _presence(s, row, online=False, now=to_utc(now))
            row.session_id = ""
            row.last_seen = to_utc(now)
            s.add(row)
            return True

        return self.db.group(tx)

    def mark_all_offline(self) -> None:
        """At start-up no session of this (single) bridge survives a restart."""
        with self.db.write() as s:
            for row in s.exec(select(Device).where(Device.session_id != "")):
                _presence(s, row, online=False, now=utcnow())
                row.session_id = ""
                s.add(row)

    def list(self, owner_id: str) -> list[DeviceRecord]:
        with self.db.read() as s:
            rows = list(s.exec(select(Device).where(Device.owner_id == owner_id, Device.revoked == False).order_by(col(Device.created_at))))  # noqa: E712
            # By device and state, so the count reads ix_message_dispatch, not the owner's history.
            pending = dict(
                s.exec(
                    select(MessageRow.device_id, func.count())
                    .where(
                        col(MessageRow.device_id).in_([r.id for r in rows]),
                        col(MessageRow.state).in_([int(x) for x in UNACCEPTED_STATES]),
                    )
                    .group_by(MessageRow.device_id)
                ).all()
            )
            return [
                DeviceRecord(
                    id=r.id, owner_id=r.owner_id, name=r.name, online=bool(r.session_id),
                    last_seen=r.last_seen, sims=sims_from_json(r.sims_json), app_version=r.app_version,
                    created_at=r.created_at, pending=int(pending.get(r.id, 0)),
                    connected_with_token=r.connected_with_token_at is not None,
                )
                for r in rows
            ]


def _normal(code: str) -> str:
    """Codes are typed by people: ignore case, spaces and dashes."""
    return code.upper().replace("-", "").replace(" ", "")


def _usable_code(
    s: Session, code_hash: str, now: datetime, *, lock: bool = False
) -> tuple[PairingCode, Device | None] | None:
    """The code's row and the device its first use made (None before any use), or None when the
    code pairs no more: unknown, expired, or spent for good because its device connected with
    its token or was deleted.

    `lock`: lock the code's row, then its device's (always in that order; set_online locks
    the device alone), so on PostgreSQL a re-issue and a first session with the token on
    another bridge cannot both commit: the later one sees what the earlier one did."""
    query = select(PairingCode).where(PairingCode.code_hash == code_hash)
    row = s.exec(query.with_for_update() if lock else query).first()
    if row is None or to_utc(row.expires_at) <= now:
        return None
    if row.used_at is None:
        return row, None
    device = None
    if row.device_id:  # none: paired before 0006
        device = s.get(Device, row.device_id, with_for_update=True, populate_existing=True) if lock else s.get(Device, row.device_id)
    if device is None or device.revoked or device.connected_with_token_at is not None:
        return None
    return row, device


def _presence(s: Session, row: Device, *, online: bool, now: datetime) -> None:
    """device:online / device:offline for the owner's webhooks, in the presence change's transaction."""
    event = WebhookEvent.DEVICE_ONLINE if online else WebhookEvent.DEVICE_OFFLINE
    enqueue(s, row.owner_id, event, row.id, lambda: device_body(row.id, row.name, online), now)
