"""smsgw.v1.OtpService: start, check, cancel and read verifications (gateway.otp)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import grpc
from smsgw.v1 import otp_pb2, otp_pb2_grpc

from gateway.api.convert import timestamp
from gateway.api.interceptors import current_owner
from gateway.messages.records import MessageRecord
from gateway.otp.repository import VerificationRecord
from gateway.otp.service import OtpService, StartRequest
from gateway.types import State

__all__ = ["OtpServicer", "delivery_status"]

Context = grpc.aio.ServicerContext[Any, Any]

_DELIVERY = {
    State.PENDING: otp_pb2.DELIVERY_STATUS_QUEUED, State.DISPATCHED: otp_pb2.DELIVERY_STATUS_SENDING,
    State.ACCEPTED: otp_pb2.DELIVERY_STATUS_SENDING, State.SENT: otp_pb2.DELIVERY_STATUS_SENT,
    State.DELIVERED: otp_pb2.DELIVERY_STATUS_DELIVERED, State.FAILED: otp_pb2.DELIVERY_STATUS_FAILED,
    State.EXPIRED: otp_pb2.DELIVERY_STATUS_FAILED, State.CANCELLED: otp_pb2.DELIVERY_STATUS_FAILED,
}


def delivery_status(message: MessageRecord | None) -> int:
    return _DELIVERY.get(message.state, otp_pb2.DELIVERY_STATUS_UNSPECIFIED) if message else otp_pb2.DELIVERY_STATUS_QUEUED


def verification_pb(v: VerificationRecord, message: MessageRecord | None, cooldown: float) -> otp_pb2.Verification:
    out = otp_pb2.Verification(
        id=v.id, to=v.to, status=int(v.status), delivery_status=delivery_status(message), message_id=v.message_id,
        sends=v.sends, attempts=v.attempts, attempts_left=v.attempts_left, code_length=v.code_length,
    )
    for field, at in (("expires_at", v.expires_at), ("created_at", v.created_at), ("updated_at", v.updated_at)):
        getattr(out, field).CopyFrom(timestamp(at))
    if v.last_sent_at is not None:
        out.next_send_at.CopyFrom(timestamp(v.last_sent_at + timedelta(seconds=cooldown)))
    return out


class OtpServicer(otp_pb2_grpc.OtpServiceServicer):
    def __init__(self, service: OtpService) -> None:
        self.service = service

    async def _pb(self, v: VerificationRecord) -> otp_pb2.Verification:
        message = await self.service.message_of(v.owner_id, v)
        return verification_pb(v, message, self.service.settings.resend_cooldown)

    async def StartVerification(self, request: otp_pb2.StartVerificationRequest, context: Context) -> otp_pb2.Verification:
        peer = context.peer() or ""
        record = await self.service.start(current_owner(), StartRequest(
            to=request.to, template=request.template, code_length=request.code_length, ttl_seconds=request.ttl_seconds,
            app_hash=request.app_hash, locale=request.locale, device_id=request.device_id,
            sim_number=request.sim_number, idempotency_key=request.idempotency_key, source=peer,
        ))
        return await self._pb(record)

    async def CheckVerification(
        self, request: otp_pb2.CheckVerificationRequest, context: Context
    ) -> otp_pb2.CheckVerificationResponse:
        record, result = await self.service.check(current_owner(), request.verification_id, request.to, request.code)
        return otp_pb2.CheckVerificationResponse(
            result=int(result), attempts_left=record.attempts_left, verification=await self._pb(record),
        )

    async def CancelVerification(self, request: otp_pb2.CancelVerificationRequest, context: Context) -> otp_pb2.Verification:
        return await self._pb(await self.service.cancel(current_owner(), request.verification_id))

    async def GetVerification(self, request: otp_pb2.GetVerificationRequest, context: Context) -> otp_pb2.Verification:
        record, message = await self.service.get(current_owner(), request.verification_id)
        return verification_pb(record, message, self.service.settings.resend_cooldown)
