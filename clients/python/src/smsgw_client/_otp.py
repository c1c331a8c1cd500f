"""The OtpService calls, as ``client.otp`` on :class:`Client` and :class:`AsyncClient`
(docs/otp.md). One class serves both, as :mod:`smsgw_client._webhooks` does::

    started = client.otp.start("+15551234567")             # the SMS goes out; the code is never returned
    checked = client.otp.check(started.id, "123456")       # result APPROVED / DENIED / ...
    checked = await aclient.otp.check(started.id, "123456")
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from google.protobuf.message import Message
from smsgw.v1 import otp_pb2

__all__ = ["OtpCalls"]

R = TypeVar("R")


class OtpCalls(Generic[R]):
    """Scopes: ``otp:send`` (start, cancel), ``otp:check`` (check, get). Every method takes ``timeout``."""

    def __init__(self, call: Callable[[str, Message, float | None], R]) -> None:
        self._call = call

    def start(
        self, to: str, *, template: str = "", code_length: int = 0, ttl_seconds: int = 0, app_hash: str = "",
        locale: str = "", device_id: str = "", sim_number: int = 0, idempotency_key: str = "",
        timeout: float | None = None,
    ) -> R:
        """Send a code to ``to`` (E.164) -> ``Verification``. Again for the same number while
        one is pending: the same code is sent again (after the resend cooldown).
        ``template``: ``{code}`` and ``{ttl_minutes}`` are filled in; ``app_hash``: an Android
        app's SMS Retriever hash. Raises ResourceExhausted (with ``retry_after``) on a limit."""
        request = otp_pb2.StartVerificationRequest(
            to=to, template=template, code_length=code_length, ttl_seconds=ttl_seconds, app_hash=app_hash,
            locale=locale, device_id=device_id, sim_number=sim_number, idempotency_key=idempotency_key,
        )
        return self._call("StartVerification", request, timeout)

    def check(self, verification_id: str, code: str, *, timeout: float | None = None) -> R:
        """Check a code -> ``CheckVerificationResponse`` (``result``, ``attempts_left``)."""
        request = otp_pb2.CheckVerificationRequest(verification_id=verification_id, code=code)
        return self._call("CheckVerification", request, timeout)

    def check_number(self, to: str, code: str, *, timeout: float | None = None) -> R:
        """Check a code against the number's pending verification."""
        return self._call("CheckVerification", otp_pb2.CheckVerificationRequest(to=to, code=code), timeout)

    def cancel(self, verification_id: str, *, timeout: float | None = None) -> R:
        return self._call("CancelVerification", otp_pb2.CancelVerificationRequest(verification_id=verification_id), timeout)

    def get(self, verification_id: str, *, timeout: float | None = None) -> R:
        """Its status and its SMS's delivery status (never the code)."""
        return self._call("GetVerification", otp_pb2.GetVerificationRequest(verification_id=verification_id), timeout)
