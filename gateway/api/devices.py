"""smsgw.v1.DeviceService: list phones, create pairing codes, delete phones, their pacing."""

from __future__ import annotations

from typing import Any

import grpc
from smsgw.v1 import devices_pb2, devices_pb2_grpc

from gateway.api.convert import device_to_pb, pacing_to_pb, timestamp
from gateway.api.interceptors import current_caller, current_owner
from gateway.devices.service import DeviceService
from gateway.errors import InvalidArgument
from gateway.messages.pacing import ANDROID_PARTS_PER_MINUTE, DevicePacing, SimLimits

__all__ = ["DeviceServicer", "PhoneUrl"]

Context = grpc.aio.ServicerContext[Any, Any]


class PhoneUrl:
    """The URL phones connect to, which CreatePairingCode hands out for the QR code, so a CLI on
    another machine shows the server's address, not a guess from its own --server.

    `public_url` (bridge.public_url) wins; else `bound`, the address the bridge listens on, set
    by the process running the bridge once it has bound its port ("" until then, or when the
    bridge runs elsewhere)."""

    def __init__(self, public_url: str = "") -> None:
        self.public_url = public_url
        self.bound = ""

    @property
    def value(self) -> str:
        return self.public_url or self.bound


class DeviceServicer(devices_pb2_grpc.DeviceServiceServicer):
    def __init__(self, service: DeviceService, phone_url: PhoneUrl | None = None) -> None:
        self.service = service
        self.phone_url = phone_url or PhoneUrl()

    async def ListDevices(self, request: devices_pb2.ListDevicesRequest, context: Context) -> devices_pb2.ListDevicesResponse:
        return devices_pb2.ListDevicesResponse(devices=[device_to_pb(d) for d in await self.service.list(current_owner())])

    async def CreatePairingCode(
        self, request: devices_pb2.CreatePairingCodeRequest, context: Context
    ) -> devices_pb2.PairingCode:
        code, expires = await self.service.create_pairing_code(current_owner(), request.device_name, request.ttl_seconds)
        return devices_pb2.PairingCode(code=code, expires_at=timestamp(expires), device_url=self.phone_url.value)

    async def DeleteDevice(
        self, request: devices_pb2.DeleteDeviceRequest, context: Context
    ) -> devices_pb2.DeleteDeviceResponse:
        rerouted, failed = await self.service.delete(current_caller(), request.id)
        return devices_pb2.DeleteDeviceResponse(rerouted=rerouted, failed=failed)

    async def GetDeviceSettings(
        self, request: devices_pb2.GetDeviceSettingsRequest, context: Context
    ) -> devices_pb2.DeviceSettings:
        pacing, customized = await self.service.settings(current_owner(), request.device_id)
        return pacing_to_pb(request.device_id, pacing, customized)

    async def UpdateDeviceSettings(
        self, request: devices_pb2.UpdateDeviceSettingsRequest, context: Context
    ) -> devices_pb2.DeviceSettings:
        device_id = request.settings.device_id
        pacing = None if request.reset else parse_pacing(request.settings)
        stored, customized = await self.service.update_settings(current_caller(), device_id, pacing)
        return pacing_to_pb(device_id, stored, customized)


# Generous upper bounds: anything above them is a typo, not a phone.
_MAX = {
    "parts_per_minute": 1000,
    "min_interval_ms": 3_600_000,
    "parts_per_hour": 60_000,
    "parts_per_day": 1_000_000,
    "recipients_per_month": 1_000_000,
}


def parse_pacing(settings: devices_pb2.DeviceSettings) -> DevicePacing:
    """Validate DeviceSettings; INVALID_ARGUMENT names each bad field."""
    bad: list[tuple[str, str]] = []

    def limits(p: devices_pb2.SimPacing, path: str) -> SimLimits:
        for name, top in _MAX.items():
            if getattr(p, name) > top:
                bad.append((f"{path}.{name}", f"at most {top}"))
        return SimLimits(p.parts_per_minute, p.min_interval_ms, p.parts_per_hour, p.parts_per_day, p.recipients_per_month)

    default = limits(settings.default_pacing, "settings.default_pacing")
    sims: dict[int, SimLimits] = {}
    for i, p in enumerate(settings.sims):
        if not 1 <= p.slot <= 8:
            bad.append((f"settings.sims[{i}].slot", "must be a SIM slot 1..8"))
        elif p.slot in sims:
            bad.append((f"settings.sims[{i}].slot", f"SIM {p.slot} is listed twice"))
        sims[p.slot] = limits(p, f"settings.sims[{i}]")
    if settings.phone_parts_per_minute > ANDROID_PARTS_PER_MINUTE:
        bad.append(("settings.phone_parts_per_minute", f"at most {ANDROID_PARTS_PER_MINUTE}: Android refuses more parts per 60 s"))
    InvalidArgument.raise_if_any(bad)
    return DevicePacing(default, sims, settings.phone_parts_per_minute, settings.priority_bypass)
