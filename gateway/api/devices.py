"""smsgw.v1.DeviceService: list phones, create pairing codes, delete phones."""

from __future__ import annotations

from typing import Any

import grpc
from smsgw.v1 import devices_pb2, devices_pb2_grpc

from gateway.api.convert import device_to_pb, timestamp
from gateway.api.interceptors import current_caller, current_owner
from gateway.devices.service import DeviceService

__all__ = ["DeviceServicer"]

Context = grpc.aio.ServicerContext[Any, Any]


class DeviceServicer(devices_pb2_grpc.DeviceServiceServicer):
    def __init__(self, service: DeviceService) -> None:
        self.service = service

    async def ListDevices(self, request: devices_pb2.ListDevicesRequest, context: Context) -> devices_pb2.ListDevicesResponse:
        return devices_pb2.ListDevicesResponse(devices=[device_to_pb(d) for d in await self.service.list(current_owner())])

    async def CreatePairingCode(
        self, request: devices_pb2.CreatePairingCodeRequest, context: Context
    ) -> devices_pb2.PairingCode:
        code, expires = await self.service.create_pairing_code(current_owner(), request.device_name, request.ttl_seconds)
        return devices_pb2.PairingCode(code=code, expires_at=timestamp(expires))

    async def DeleteDevice(
        self, request: devices_pb2.DeleteDeviceRequest, context: Context
    ) -> devices_pb2.DeleteDeviceResponse:
        rerouted, failed = await self.service.delete(current_caller(), request.id)
        return devices_pb2.DeleteDeviceResponse(rerouted=rerouted, failed=failed)
