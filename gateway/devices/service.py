"""The device service the gRPC API and the CLI call (asyncio side)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from gateway.devices.records import DeviceRecord
from gateway.devices.repository import DeviceRepository
from gateway.errors import InvalidArgument
from gateway.types import utcnow

__all__ = ["DeviceService"]

_MAX_PAIRING_TTL = 3600


class DeviceService:
    def __init__(self, repo: DeviceRepository, default_pairing_ttl: int) -> None:
        self.repo = repo
        self.default_pairing_ttl = default_pairing_ttl

    async def list(self, owner_id: str) -> list[DeviceRecord]:
        return await asyncio.to_thread(self.repo.list, owner_id)

    async def create_pairing_code(self, owner_id: str, device_name: str, ttl_seconds: int) -> tuple[str, datetime]:
        bad = []
        if len(device_name) > 64:
            bad.append(("device_name", "at most 64 characters"))
        if ttl_seconds > _MAX_PAIRING_TTL:
            bad.append(("ttl_seconds", f"at most {_MAX_PAIRING_TTL}"))
        InvalidArgument.raise_if_any(bad)
        ttl = timedelta(seconds=ttl_seconds or self.default_pairing_ttl)
        return await asyncio.to_thread(self.repo.create_pairing_code, owner_id, device_name, ttl, utcnow())
