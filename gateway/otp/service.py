"""The OTP service the gRPC API calls (docs/otp.md): make a code, keep only its HMAC, send it
through the normal pipeline at high priority with `valid_until` = the verification's expiry,
check it once. The code lives in this function's locals and the sealed SMS, nowhere else:
no log line, metric, event, webhook or error message carries it."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass, replace
from datetime import timedelta

import phonenumbers
from ulid import ULID

from gateway.api.e164 import check_e164
from gateway.auth.repository import AuditEntry, AuthRepository
from gateway.config import LimitsSettings, OtpSettings
from gateway.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from gateway.messages.records import MessageRecord, NewMessage
from gateway.messages.service import MessageService
from gateway.metrics import GatewayMetrics
from gateway.otp.keys import OtpKeys, new_code
from gateway.otp.machine import CheckResult, Status
from gateway.otp.repository import Blocked, OtpRepository, VerificationRecord, prefix_of
from gateway.otp.sms import DEFAULT_TEMPLATE, check_template, render
from gateway.storage.models import OtpVerificationRow
from gateway.types import utcnow

__all__ = ["OtpService", "StartRequest"]

log = logging.getLogger(__name__)

_TTL_DEFAULT, _TTL_MIN, _TTL_MAX = 600, 60, 1800
_LENGTH_DEFAULT, _LENGTH_MIN, _LENGTH_MAX = 6, 4, 10


@dataclass(frozen=True)
class StartRequest:
    to: str
    template: str = ""
    code_length: int = 0
    ttl_seconds: int = 0
    app_hash: str = ""
    locale: str = ""
    device_id: str = ""
    sim_number: int = 0
    idempotency_key: str = ""
    source: str = ""  # the caller's address, for the audit log


class OtpService:
    def __init__(
        self, repo: OtpRepository, keys: OtpKeys | None, messages: MessageService, metrics: GatewayMetrics,
        limits: LimitsSettings, audit: AuthRepository,
    ) -> None:
        self.repo, self.keys, self.messages, self.metrics = repo, keys, messages, metrics
        self.limits, self.audit = limits, audit
        self.settings: OtpSettings = repo.settings

    def _keys(self) -> OtpKeys:
        if self.keys is None:
            raise FailedPrecondition("OTP needs its key on this gateway: otp.secret, or DATA_DIR/otp.secret (docs/otp.md)")
        return self.keys

    # ---- start ---------------------------------------------------------------------------

    async def start(self, owner_id: str, req: StartRequest) -> VerificationRecord:
        keys = self._keys()
        length, ttl, template = self._validate(req)
        allowed = self.settings.allowed_prefixes
        if allowed and not req.to.startswith(allowed):
            self.metrics.otp_blocked.labels("country").inc()
            raise FailedPrecondition("to: this destination is not in otp.allowed_prefixes")
        if not allowed and _premium(req.to):  # what SMS pumping earns from (RELIABILITY 28)
            self.metrics.otp_blocked.labels("premium").inc()
            raise FailedPrecondition("to: a premium-rate or shared-cost number: allow it by listing it in otp.allowed_prefixes")
        now = utcnow()
        verification_id = str(ULID())
        code = new_code(length)
        text, parts, encoding = render(template, code, ttl // 60, req.app_hash, self.limits.max_parts)
        row = OtpVerificationRow(
            id=verification_id, owner_id=owner_id, to_number=req.to, prefix=prefix_of(req.to),
            code_hash=keys.code_hash(verification_id, code), code_length=length, status=int(Status.PENDING),
            max_attempts=self.settings.max_attempts, expires_at=now + timedelta(seconds=ttl), locale=req.locale[:35],
            idempotency_key=req.idempotency_key or None, created_at=now, updated_at=now,
        )
        del code
        try:
            started = await asyncio.to_thread(self.repo.start, owner_id, row, now)
        except Blocked as exc:
            self.metrics.otp_blocked.labels(exc.reason).inc()
            if exc.reason == "pumping":
                await asyncio.to_thread(self.audit.audit, AuditEntry(
                    "otp.blocked", owner_id, "", req.source, f"SMS pumping guard: prefix {prefix_of(req.to)} suspended",
                ), now)
            raise
        if started.replay:
            return started.record
        record = started.record
        if started.resend:
            if not record.message_id:  # the first start has not stored its SMS yet
                raise Unavailable("to: the code's first SMS is still being stored; try again in a moment")
            sealed, parts, encoding = await self._sealed_text(owner_id, record.message_id)
            self.metrics.otp_resends.inc()
        else:
            sealed = keys.seal(text, record.to)
            self.metrics.otp_started.inc()
        del text
        try:
            message = await self._send(owner_id, record, sealed, parts, encoding, req)
        except Exception:
            if not started.resend:  # no SMS will carry this code: it must not stay pending
                await asyncio.to_thread(self.repo.cancel, owner_id, record.id, utcnow())
            raise
        await asyncio.to_thread(self.repo.set_message, record.id, message.id)
        return replace(record, message_id=message.id)

    def _validate(self, req: StartRequest) -> tuple[int, int, str]:
        bad: list[tuple[str, str]] = []
        why = check_e164(req.to)
        if why:
            bad.append(("to", why))
        length = req.code_length or _LENGTH_DEFAULT
        if not _LENGTH_MIN <= length <= _LENGTH_MAX:
            bad.append(("code_length", f"{_LENGTH_MIN}..{_LENGTH_MAX} digits"))
        ttl = req.ttl_seconds or _TTL_DEFAULT
        if not _TTL_MIN <= ttl <= _TTL_MAX:
            bad.append(("ttl_seconds", f"{_TTL_MIN}..{_TTL_MAX} seconds"))
        if req.sim_number > 8:
            bad.append(("sim_number", "0 (the phone's choice) or a slot 1..8"))
        if len(req.device_id) > 64:
            bad.append(("device_id", "not a device id"))
        if len(req.idempotency_key) > self.limits.max_idempotency_key:
            bad.append(("idempotency_key", f"at most {self.limits.max_idempotency_key} characters"))
        if len(req.locale) > 35:
            bad.append(("locale", "a BCP 47 tag of at most 35 characters"))
        template = req.template or DEFAULT_TEMPLATE
        try:
            check_template(template, req.app_hash)
        except InvalidArgument as exc:
            bad += exc.violations
        InvalidArgument.raise_if_any(bad)
        return length, ttl, template

    async def _sealed_text(self, owner_id: str, message_id: str) -> tuple[str, int, str]:
        """The last SMS's sealed text: a resend sends the same code (it is not kept anywhere else)."""
        record = await self.messages.get(owner_id, message_id)
        assert record.text is not None
        return record.text, record.parts, record.encoding

    async def _send(
        self, owner_id: str, v: VerificationRecord, sealed: str, parts: int, encoding: str, req: StartRequest,
    ) -> MessageRecord:
        new = NewMessage(
            phone_numbers=(v.to,), text=sealed, data=None, port=0, device_id=req.device_id, sim_number=req.sim_number,
            priority=self.settings.priority, valid_until=v.expires_at, with_delivery_report=True, is_encrypted=False,
            idempotency_key=f"otp:{v.id}:{v.sends}", content_hash=hashlib.sha256(sealed.encode()).hexdigest(),
            parts=parts, encoding=encoding,
        )
        record, _ = await self.messages.send(owner_id, new)
        return record

    # ---- check, cancel, get --------------------------------------------------------------

    async def check(
        self, owner_id: str, verification_id: str, to: str, code: str
    ) -> tuple[VerificationRecord, CheckResult]:
        keys = self._keys()
        if not verification_id and not to:
            raise InvalidArgument("verification_id", "give verification_id or to")
        if len(code) > 64:
            raise InvalidArgument("code", "at most 64 characters")  # the length of any code is public: 4..10
        record, result = await asyncio.to_thread(
            self.repo.check, owner_id, verification_id, to, lambda row: keys.matches(row.id, code, row.code_hash), utcnow(),
        )
        self.metrics.otp_checks.labels(result.name.lower()).inc()
        return record, result

    async def cancel(self, owner_id: str, verification_id: str) -> VerificationRecord:
        """End it; its SMS is cancelled too while no phone has taken it (after that it may
        still arrive, but its code approves nothing)."""
        if not verification_id:
            raise InvalidArgument("verification_id", "required")
        record = await asyncio.to_thread(self.repo.cancel, owner_id, verification_id, utcnow())
        if record.status is Status.CANCELED and record.message_id:
            try:
                await self.messages.cancel(owner_id, record.message_id)
            except (FailedPrecondition, NotFound):
                pass  # a phone holds it already, or retention removed it
        return record

    async def get(self, owner_id: str, verification_id: str) -> tuple[VerificationRecord, MessageRecord | None]:
        """The verification and its last SMS (for the delivery status)."""
        if not verification_id:
            raise InvalidArgument("verification_id", "required")
        record = await asyncio.to_thread(self.repo.get, owner_id, verification_id, utcnow())
        return record, await self.message_of(owner_id, record)

    async def message_of(self, owner_id: str, record: VerificationRecord) -> MessageRecord | None:
        if not record.message_id:
            return None
        try:
            return await self.messages.get(owner_id, record.message_id)
        except NotFound:  # purged by retention
            return None

    async def expire_due(self) -> int:
        """The leader's sweep: pending verifications past expiry, EXPIRED with their webhook."""
        expired = await asyncio.to_thread(self.repo.expire_due, utcnow())
        if expired:
            self.metrics.otp_expired.inc(expired)
        return expired


def _premium(number: str) -> bool:
    """A premium-rate or shared-cost number, by libphonenumber's metadata."""
    try:
        kind = phonenumbers.number_type(phonenumbers.parse(number))
    except phonenumbers.NumberParseException:
        return False
    return kind in (phonenumbers.PhoneNumberType.PREMIUM_RATE, phonenumbers.PhoneNumberType.SHARED_COST)



