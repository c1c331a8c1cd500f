"""The device service the gRPC API and the CLI call (asyncio side)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from gateway.auth.records import Caller
from gateway.auth.repository import AuditEntry, AuthRepository
from gateway.bus import Bus
from gateway.devices.records import DeviceRecord
from gateway.devices.repository import DeviceRepository
from gateway.errors import InvalidArgument
from gateway.messages.pacing import DevicePacing
from gateway.messages.repository import MessageRepository
from gateway.types import utcnow

__all__ = ["DeviceService"]

_MAX_PAIRING_TTL = 3600


class DeviceService:
    def __init__(
        self, repo: DeviceRepository, messages: MessageRepository, audit: AuthRepository, bus: Bus, default_pairing_ttl: int
    ) -> None:
        self.repo = repo
        self.messages = messages
        self.audit = audit
        self.bus = bus
        self.default_pairing_ttl = default_pairing_ttl

    async def list(self, owner_id: str) -> list[DeviceRecord]:
        return await asyncio.to_thread(self.repo.list, owner_id)

    async def delete(self, caller: Caller, device_id: str) -> tuple[int, int]:
        """DeleteDevice: revoke, release its unaccepted messages, end its live session.
        Returns (rerouted, failed)."""
        if not device_id:
            raise InvalidArgument("id", "required")
        return await asyncio.to_thread(self._delete, caller, device_id)

    def _delete(self, caller: Caller, device_id: str) -> tuple[int, int]:
        # Signals go from the committing thread, as for sends (docs/design.md).
        rerouted, failed, wake = self.messages.delete_device(caller.owner_id, device_id, utcnow())
        self.bus.notify_revoked([device_id])
        self.bus.notify_work(wake - {device_id})
        self.bus.notify_events()
        detail = f"deleted; {rerouted} unaccepted messages rerouted, {failed} failed"
        self.audit.audit(AuditEntry("device.delete", caller.owner_id, device_id, caller.source, detail), utcnow())
        return rerouted, failed

    async def create_pairing_code(self, owner_id: str, device_name: str, ttl_seconds: int) -> tuple[str, datetime]:
        bad = []
        if len(device_name) > 64:
            bad.append(("device_name", "at most 64 characters"))
        if ttl_seconds > _MAX_PAIRING_TTL:
            bad.append(("ttl_seconds", f"at most {_MAX_PAIRING_TTL}"))
        InvalidArgument.raise_if_any(bad)
        ttl = timedelta(seconds=ttl_seconds or self.default_pairing_ttl)
        return await asyncio.to_thread(self.repo.create_pairing_code, owner_id, device_name, ttl, utcnow())

    async def settings(self, owner_id: str, device_id: str) -> tuple[DevicePacing, bool]:
        """The phone's pacing, and whether it differs from the server's defaults."""
        if not device_id:
            raise InvalidArgument("device_id", "required")
        pacing = await asyncio.to_thread(self.messages.device_pacing, owner_id, device_id)
        return pacing, pacing != self.messages.base_pacing

    async def update_settings(self, caller: Caller, device_id: str, pacing: DevicePacing | None) -> tuple[DevicePacing, bool]:
        """Store the phone's pacing (None = the defaults) and push it to its live session."""
        if not device_id:
            raise InvalidArgument("settings.device_id", "required")
        return await asyncio.to_thread(self._update_settings, caller, device_id, pacing)

    def _update_settings(self, caller: Caller, device_id: str, pacing: DevicePacing | None) -> tuple[DevicePacing, bool]:
        stored = self.messages.set_device_pacing(caller.owner_id, device_id, pacing)
        self.bus.notify_settings([device_id])
        detail = "pacing reset to the defaults" if pacing is None else f"pacing set: {stored.to_json()}"
        self.audit.audit(AuditEntry("device.settings", caller.owner_id, device_id, caller.source, detail), utcnow())
        return stored, stored != self.messages.base_pacing
