"""Device storage: pairing codes, device credentials, presence, deletion.

Secrets (device tokens, pairing codes) are stored only as SHA-256 hashes:
they are 128+ bits of randomness, so a fast hash is enough and lookups stay O(1).
"""

from __future__ import annotations

import hashlib
import secrets
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum

from sqlalchemy import bindparam, case, func, update
from sqlalchemy import select as core_select
from sqlmodel import Session, col, select
from ulid import ULID

from gateway.auth.repository import AuditEntry, audit_row
from gateway.devices.records import DeviceIdentity, DeviceRecord, SimRecord, sims_from_json, sims_to_json
from gateway.errors import InvalidArgument
from gateway.messages.repository import to_utc
from gateway.messages.rows import Writes, in_writes
from gateway.storage.engine import Database
from gateway.storage.models import Device, MessageRow, PairingCode
from gateway.types import UNACCEPTED_STATES, utcnow
from gateway.webhooks.outbox import enqueue
from gateway.webhooks.payloads import device_body
from gateway.webhooks.records import WebhookEvent

__all__ = ["DeviceRepository", "Online", "hash_secret", "take_online", "take_offline", "PAIRING_ALPHABET"]

# No 0/O/1/I: the code is read off a screen and typed.
PAIRING_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"
_PAIRING_LENGTH = 10  # 50 bits; short-lived, usable for its device until the device's first session with its token
_D = Device.__table__.c  # type: ignore[attr-defined]


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Online(Enum):
    """What `set_online` did. Credentials are checked at the upgrade, but the session opens
    later (after Hello): the device may have been deleted, or re-paired, meanwhile."""

    ONLINE = "online"
    DELETED = "deleted"  # nothing changed
    TOKEN_REPLACED = "token_replaced"  # a retry with the pairing code re-issued the token; nothing changed


class DeviceRepository:
    def __init__(self, db: Database, *, wakes: bool = False) -> None:
        self.db = db
        self.wakes = wakes  # FCM wake-ups are configured: a phone with a usable token is wakeable

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

    def token_hash_of(self, device_id: str) -> tuple[DeviceIdentity, str] | None:
        """(the device, its token's hash), None for an unknown or deleted device: the SMSGate
        mobile API derives the key its phone signs inbound SMS with from that hash."""
        with self.db.read() as s:
            row = s.get(Device, device_id)
            if row is None or row.revoked:
                return None
            return DeviceIdentity(row.id, row.owner_id), row.token_hash

    def token_identities(self, limit: int) -> list[tuple[str, DeviceIdentity]]:
        """(token hash, device) of the `limit` newest devices not deleted, for the bridge's
        token cache (device_bridge.credentials), oldest first."""
        query = (
            core_select(_D.token_hash, _D.id, _D.owner_id)
            .where(_D.revoked == False)  # noqa: E712
            .order_by(_D.created_at.desc())
            .limit(limit)
        )
        with self.db.read() as s:
            rows = s.execute(query).all()
        return [(h, DeviceIdentity(i, o)) for h, i, o in reversed(rows)]

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
        """Mark the device online on `session_id` in a write job of its own (see `take_online`;
        the bridge does this inside the session-open job, gateway.devices.session_jobs)."""
        return self.db.group(
            in_writes(
                lambda s: take_online(
                    s, device_id, session_id, token_hash=token_hash, app_version=app_version, sims=sims,
                    now=now, with_token=with_token,
                ).online
            )
        )

    def set_push_token(self, device_id: str, session_id: str, token: str) -> Future[bool]:
        """A new FCM token from the phone's live session (a PushToken frame); a new token is
        tried again even if FCM refused the old one. The job's future: whether it was stored
        (False: another session holds the device now)."""

        def tx(s: Writes) -> bool:
            params = {"k_id": device_id, "k_session_id": session_id, "push_token": token, "k_push_token": token}
            return bool(s.execute(_PUSH_TOKEN_WRITE, params).rowcount)

        return self.db.group_future(in_writes(tx))

    def set_offline(self, device_id: str, session_id: str, now: datetime) -> bool:
        """Mark offline unless a newer session already took over (see `take_offline`)."""
        return self.db.group(in_writes(lambda s: take_offline(s, device_id, session_id, now)))

    def session_of(self, device_id: str) -> str:
        """The device's current session id ("" offline or unknown): which bridge's session is
        the live one when two bridges claim the device (issue 16)."""
        with self.db.read() as s:
            row = s.get(Device, device_id)
            return row.session_id if row is not None else ""

    def mark_all_offline(self) -> None:
        """At start-up no session of this (single) bridge survives a restart. Their phones were
        connected until the stop: seen now, so a wake-up push waits its grace from here (they
        usually reconnect by themselves within seconds)."""
        now = utcnow()
        with self.db.write() as s:
            for row in s.exec(select(Device).where(Device.session_id != "")):
                _presence(s, row.owner_id, row.id, row.name, online=False, now=now)
                row.session_id = row.bridge_id = ""
                row.last_seen = now
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
                    wakeable=self.wakes and bool(r.push_token) and r.push_token_invalid_at is None,
                    last_woken_at=r.last_woken_at, push_token_invalid=r.push_token_invalid_at is not None,
                )
                for r in rows
            ]


# The device row as the session open and close read and write it (Core: an ORM row costs
# more than these statements; built once, compiled once).
_PRESENCE_READ = core_select(_D.owner_id, _D.name, _D.session_id).where(_D.id == bindparam("device_id"))
_ONLINE_READ = (
    core_select(
        _D.owner_id, _D.name, _D.session_id, _D.revoked, _D.token_hash, _D.connected_with_token_at, _D.last_seen,
        _D.last_woken_at,
    )
    .where(_D.id == bindparam("device_id"))
    .with_for_update()  # PostgreSQL; SQLite serialises writers anyway
)
# A token FCM refused stays refused when the phone reports it again; a new one is worth trying.
_REFUSED_UNLESS_NEW = case((_D.push_token == bindparam("k_push_token"), _D.push_token_invalid_at), else_=None)
_ONLINE_WRITE = (
    update(Device.__table__)  # type: ignore[arg-type]
    .where(_D.id == bindparam("k_id"))
    .values(
        session_id=bindparam("session_id"), bridge_id=bindparam("bridge_id"), app_version=bindparam("app_version"),
        sims_json=bindparam("sims_json"), last_seen=bindparam("last_seen"),
        # The first session with the device's own token spends its pairing code (None: not such a session).
        connected_with_token_at=func.coalesce(
            _D.connected_with_token_at, bindparam("proven_at", type_=_D.connected_with_token_at.type)
        ),
        # Hello carries the phone's push token every time.
        push_token=bindparam("push_token"),
        push_token_invalid_at=_REFUSED_UNLESS_NEW,
    )
)
_PUSH_TOKEN_WRITE = (
    update(Device.__table__)  # type: ignore[arg-type]
    .where(_D.id == bindparam("k_id"), _D.session_id == bindparam("k_session_id"))
    .values(
        push_token=bindparam("push_token"),
        push_token_invalid_at=_REFUSED_UNLESS_NEW,
    )
)
_OFFLINE_WRITE = (
    update(Device.__table__)  # type: ignore[arg-type]
    .where(_D.id == bindparam("k_id"), _D.session_id == bindparam("k_session_id"))
    .values(session_id="", bridge_id="", last_seen=bindparam("last_seen"))
)


@dataclass(frozen=True)
class Taken:
    """What `take_online` did, and the wake-up push that brought the phone back, if one did
    (the last push sent while it was offline)."""

    online: Online
    woken_at: datetime | None = None


def take_online(
    s: Writes,
    device_id: str,
    session_id: str,
    *,
    token_hash: str | None,
    app_version: str,
    sims: tuple[SimRecord, ...],
    now: datetime,
    with_token: bool = True,
    bridge_id: str = "",
    push_token: str = "",
) -> Taken:
    """Mark the device online on `session_id` in the caller's transaction, unless it was
    deleted or its token replaced since the session's credentials were checked (then nothing
    changes). `token_hash`: of the token the session was admitted with, or (pairing) hands
    out; re-checked here, in the transaction that takes the device, so a session whose token
    a re-pair killed neither takes the device nor spends the code (None: nothing to check,
    for tests that stage devices). `with_token`: the session was opened with the device token
    (not a pairing code); the first such spends its pairing code. `bridge_id`: the `smsgw
    bridge` holding the session ("" in `smsgw serve`), which its reaper goes by; `push_token`:
    the phone's FCM token from its Hello ("" = none).
    InvalidArgument on `device_id` for an unknown device."""
    now = to_utc(now)
    # Locked (PostgreSQL): a re-issue on another bridge commits before or after, never across.
    row = s.execute(_ONLINE_READ, {"device_id": device_id}).first()
    if row is None:
        raise InvalidArgument("device_id", "unknown device")
    if row.revoked:
        return Taken(Online.DELETED)
    if token_hash is not None and row.token_hash != token_hash:
        return Taken(Online.TOKEN_REPLACED)
    woken_at = None
    if not row.session_id:  # a reconnect replacing a live session is no news
        _presence(s, row.owner_id, device_id, row.name, online=True, now=now)
        if row.last_woken_at is not None and (row.last_seen is None or row.last_woken_at >= row.last_seen):
            woken_at = to_utc(row.last_woken_at)
    s.execute(
        _ONLINE_WRITE,
        {
            "k_id": device_id, "session_id": session_id, "bridge_id": bridge_id, "app_version": app_version[:64],
            "sims_json": sims_to_json(sims), "last_seen": now, "proven_at": now if with_token else None,
            "push_token": push_token, "k_push_token": push_token,
        },
    )
    return Taken(Online.ONLINE, woken_at)


def take_offline(s: Writes, device_id: str, session_id: str, now: datetime) -> bool:
    """Mark the device offline in the caller's transaction unless a newer session already
    took over. Returns whether it did."""
    now = to_utc(now)
    row = s.execute(_PRESENCE_READ, {"device_id": device_id}).first()
    if row is None or row.session_id != session_id:
        return False
    # Conditional: on PostgreSQL a newer session may commit between the read and this write.
    if not s.execute(_OFFLINE_WRITE, {"k_id": device_id, "k_session_id": session_id, "last_seen": now}).rowcount:
        return False
    _presence(s, row.owner_id, device_id, row.name, online=False, now=now)
    return True


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


def _presence(s: Session | Writes, owner_id: str, device_id: str, name: str, *, online: bool, now: datetime) -> None:
    """device:online / device:offline for the owner's webhooks, in the presence change's transaction."""
    event = WebhookEvent.DEVICE_ONLINE if online else WebhookEvent.DEVICE_OFFLINE
    enqueue(s, owner_id, event, device_id, lambda: device_body(device_id, name, online), now)  # type: ignore[arg-type]
