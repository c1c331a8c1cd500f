"""SMSGate's settings (`/3rdparty/v1/settings`): one map per account, as SMSGate's server keeps it
(`../shared/smsgate-api.md` §3.9): the whitelisted snake_case sections and keys, unknown keys
dropped, `null` kept as given, `encryption.passphrase` and `webhooks.signing_key` writable but
left out of what the third-party API shows.

Values are type-checked here, unlike SMSGate's server: its Python client parses the enums
strictly, so a bad value stored once would break every later `get_settings`.

`webhooks.signing_key` signs the account's SMSGate-format webhooks (gateway.webhooks.formats).
Every account that writes settings or registers such a webhook has one (made at random when
never set; `null` or absent keeps the current one, as the phone keeps its own). The webhook
rows hold a copy as their secret, so the worker signs without reading settings: every write
here updates the copies in the same transaction.

Other modules (the mobile API) read the whole map with `SettingsStore.get` and hear of every
write, and of every webhook change through SMSGate's API, through `SettingsStore.on_change`.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from gateway.errors import InvalidArgument
from gateway.storage.engine import Database
from gateway.storage.models import SmsgateSettingsRow, WebhookRow
from gateway.types import utcnow
from gateway.webhooks.formats import Format

__all__ = ["SettingsStore", "ChangeKind", "ChangeHook", "WHITELIST", "HIDDEN", "public", "signing_key", "parse"]

log = logging.getLogger(__name__)

ChangeKind = Literal["settings", "webhooks"]
#: Called on the API's event loop after the change committed; may return an awaitable.
ChangeHook = Callable[[str, ChangeKind], Awaitable[None] | None]

Check = Callable[[Any], str | None]  # why a (non-null) value is refused, or None


def _int(low: int, high: int) -> Check:
    def check(v: Any) -> str | None:
        ok = isinstance(v, int) and not isinstance(v, bool) and low <= v <= high
        return None if ok else f"must be an integer {low}..{high}"
    return check


def _enum(*names: str) -> Check:
    return lambda v: None if v in names else f"one of {', '.join(names)}"


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else "must be true or false"


def _str(high: int) -> Check:
    return lambda v: None if isinstance(v, str) and 1 <= len(v) <= high else f"must be a string of 1..{high} characters"


_HHMM = re.compile(r"(?:[01]\d|2[0-3]):[0-5]\d")


def _hhmm(v: Any) -> str | None:
    return None if isinstance(v, str) and _HHMM.fullmatch(v) else "must be a time HH:mm"


#: The keys SMSGate's server keeps (its whitelist), each with its check.
WHITELIST: dict[str, dict[str, Check]] = {
    "encryption": {"passphrase": _str(256)},
    "messages": {
        "send_interval_min": _int(1, 3600), "send_interval_max": _int(1, 3600),
        "limit_period": _enum("Disabled", "PerMinute", "Per30Minutes", "PerHour", "PerDay"),
        "limit_value": _int(1, 1_000_000),
        "sim_selection_mode": _enum("OSDefault", "RoundRobin", "Random"),
        "log_lifetime_days": _int(1, 3650),
        "work_hours_enabled": _bool, "work_hours_start": _hhmm, "work_hours_end": _hhmm,
    },
    "ping": {"interval_seconds": _int(0, 86_400)},
    "logs": {"lifetime_days": _int(1, 3650)},
    "webhooks": {"internet_required": _bool, "retry_count": _int(1, 100), "signing_key": _str(256)},
    "gateway": {"notification_channel": _enum("AUTO", "SSE_ONLY")},
    "receiver": {"content_provider_enabled": _bool},
}
#: Writable, kept, given to the phones (mobile API), never shown by the third-party API.
HIDDEN = frozenset({("encryption", "passphrase"), ("webhooks", "signing_key")})


def parse(body: Any) -> dict[str, dict[str, Any]]:
    """A request body filtered to the whitelist; InvalidArgument names the first bad field."""
    if not isinstance(body, dict):
        raise InvalidArgument("body", "must be a JSON object of settings sections")
    out: dict[str, dict[str, Any]] = {}
    for section, keys in WHITELIST.items():
        if section not in body:
            continue
        given = body[section]
        if not isinstance(given, dict):
            raise InvalidArgument(section, "must be an object")
        kept: dict[str, Any] = {}
        for key, check in keys.items():
            if key in given:
                value = given[key]
                reason = None if value is None else check(value)
                if reason:
                    raise InvalidArgument(f"{section}.{key}", reason)
                kept[key] = value
        low, high = kept.get("send_interval_min"), kept.get("send_interval_max")
        if section == "messages" and isinstance(low, int) and isinstance(high, int) and low > high:
            raise InvalidArgument("messages.send_interval_max", "must not be below send_interval_min")
        out[section] = kept
    return out


def public(settings: dict[str, Any]) -> dict[str, Any]:
    """The map as the third-party API shows it: hidden keys left out (their sections stay)."""
    return {
        section: {k: v for k, v in values.items() if (section, k) not in HIDDEN}
        for section, values in settings.items()
    }


def _load(row: SmsgateSettingsRow | None) -> dict[str, Any]:
    return json.loads(row.data) if row is not None else {}


def _new_key() -> str:
    return secrets.token_urlsafe(18)


def signing_key(s: Session, owner_id: str) -> tuple[str, bool]:
    """The account's `webhooks.signing_key`, and whether it was made now: made and stored when
    it has none, inside the caller's write transaction (a webhook stored with it commits with it)."""
    row = s.get(SmsgateSettingsRow, owner_id, with_for_update=True)
    settings = _load(row)
    key = settings.get("webhooks", {}).get("signing_key")
    if isinstance(key, str) and key:
        return key, False
    key = _new_key()
    settings.setdefault("webhooks", {})["signing_key"] = key
    _save(s, owner_id, row, settings)
    return key, True


def _save(s: Session, owner_id: str, row: SmsgateSettingsRow | None, settings: dict[str, Any]) -> None:
    now = utcnow()
    if row is None:
        row = SmsgateSettingsRow(owner_id=owner_id, updated_at=now)
    row.data, row.updated_at = json.dumps(settings, separators=(",", ":"), ensure_ascii=False), now
    s.add(row)


class SettingsStore:
    """The accounts' SMSGate settings, and the change hooks.

    `get(owner_id)` -> the whole map (hidden keys included; `{}` when never written);
    `replace` / `patch` (PUT / PATCH) -> (before, after), both whole maps;
    `on_change`: callbacks `(owner_id, "settings" | "webhooks")`, called after each commit.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self.on_change: list[ChangeHook] = []

    async def get(self, owner_id: str) -> dict[str, Any]:
        return await asyncio.to_thread(self._get, owner_id)

    def _get(self, owner_id: str) -> dict[str, Any]:
        with self.db.read() as s:
            return _load(s.get(SmsgateSettingsRow, owner_id))

    async def replace(self, owner_id: str, body: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """PUT: the map becomes `body` (filtered); the signing key stays unless `body` sets one."""
        given = parse(body)
        return await self._write(owner_id, lambda _old: given)

    async def patch(self, owner_id: str, body: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """PATCH: `body`'s keys replace those stored, section by section."""
        given = parse(body)

        def merge(old: dict[str, Any]) -> dict[str, Any]:
            out = {section: dict(values) for section, values in old.items()}
            for section, values in given.items():
                out.setdefault(section, {}).update(values)
            return out

        return await self._write(owner_id, merge)

    async def _write(
        self, owner_id: str, change: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        try:
            result = await asyncio.to_thread(self._write_sync, owner_id, change)
        except IntegrityError:  # two first writes of one account raced (PostgreSQL): once more
            result = await asyncio.to_thread(self._write_sync, owner_id, change)
        await self.notify(owner_id, "settings")
        return result

    def _write_sync(
        self, owner_id: str, change: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        with self.db.write() as s:
            row = s.get(SmsgateSettingsRow, owner_id, with_for_update=True)
            before = _load(row)
            after = change(before)
            old_key = before.get("webhooks", {}).get("signing_key")
            key = after.get("webhooks", {}).get("signing_key")
            if not (isinstance(key, str) and key):
                key = old_key if isinstance(old_key, str) and old_key else _new_key()
                after.setdefault("webhooks", {})["signing_key"] = key
            _save(s, owner_id, row, after)
            if key != old_key:  # the SMSGate-format webhooks sign with it from their next attempt
                s.execute(
                    update(WebhookRow)
                    .where(WebhookRow.owner_id == owner_id, WebhookRow.format == str(Format.SMSGATE))  # type: ignore[arg-type]
                    .values(secret=key)
                )
            return before, after

    async def notify(self, owner_id: str, what: ChangeKind) -> None:
        """Tell every hook; a failing hook is logged, never the caller's failure."""
        for hook in list(self.on_change):
            try:
                result = hook(owner_id, what)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("SMSGate settings: a change hook failed (%s)", what)
