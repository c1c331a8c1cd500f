"""The asyncio smsgw client (grpc.aio channel).

The same API and guarantees as :class:`smsgw_client.Client`, with coroutines
and async iterators. Channel settings, metadata and requests come from the
shared :mod:`smsgw_client._channel`, so both clients behave alike on the wire.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from datetime import datetime
from functools import partial
from types import TracebackType
from typing import Any

import grpc
from google.protobuf.message import Message
import grpc.aio

from smsgw.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    devices_pb2,
    devices_pb2_grpc,
    inbound_pb2,
    inbound_pb2_grpc,
    messages_pb2,
    messages_pb2_grpc,
    otp_pb2_grpc,
    webhooks_pb2_grpc,
)

from . import _batch, _channel
from ._batch import OutgoingMessage, SendResult
from ._otp import OtpCalls
from ._webhooks import WebhookCalls
from .errors import from_rpc_error, map_rpc_errors

__all__ = ["AsyncClient"]


class AsyncClient:
    """An asyncio client for the smsgw API (messages, inbound SMS, devices, auth, audit).

    Create it inside the event loop that will use it (grpc.aio binds the
    channel to that loop). Use ``async with``, or await :meth:`close`.

    Args:
        target: ``host:port`` of the gateway's gRPC endpoint.
        token: Access token (``issue_token``), sent as ``authorization: Bearer <token>``
            on every call; None for the calls that need none (sign-in, CreateAccount).
        credentials: TLS channel credentials; None opens a plaintext channel,
            meant for loopback and development only.
        timeout: Default deadline of unary calls, in seconds.
        options: Extra channel options; a key given here replaces the default.
    """

    def __init__(
        self,
        target: str,
        token: str | None = None,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float = _channel.DEFAULT_TIMEOUT,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        channel_options = _channel.channel_options(options)
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(target, options=channel_options)
        else:
            self._channel = grpc.aio.secure_channel(target, credentials, options=channel_options)
        self._timeout = timeout
        self._metadata = _channel.call_metadata(token)
        # The generated stubs are untyped (no mypy-protobuf grpc plugin yet).
        self._messages = messages_pb2_grpc.MessageServiceStub(self._channel)  # type: ignore[no-untyped-call,unused-ignore]
        self._devices = devices_pb2_grpc.DeviceServiceStub(self._channel)  # type: ignore[no-untyped-call,unused-ignore]
        self._auth = auth_pb2_grpc.AuthServiceStub(self._channel)  # type: ignore[no-untyped-call,unused-ignore]
        self._audit = audit_pb2_grpc.AuditServiceStub(self._channel)  # type: ignore[no-untyped-call,unused-ignore]
        self._inbound = inbound_pb2_grpc.InboundServiceStub(self._channel)  # type: ignore[no-untyped-call,unused-ignore]
        self._webhooks = webhooks_pb2_grpc.WebhookServiceStub(self._channel)  # type: ignore[no-untyped-call,unused-ignore]
        #: The WebhookService calls: ``client.webhooks.create(url, events)`` and so on.
        self.webhooks: WebhookCalls[Any] = WebhookCalls(partial(self._unary, self._webhooks))
        self._otp = otp_pb2_grpc.OtpServiceStub(self._channel)  # type: ignore[no-untyped-call,unused-ignore]
        #: The OtpService calls: ``client.otp.start(to)``, ``client.otp.check(id, code)`` (docs/otp.md).
        self.otp: OtpCalls[Any] = OtpCalls(partial(self._unary, self._otp))

    def set_token(self, token: str | None) -> None:
        """Use another access token from the next call on (after :meth:`refresh_token`)."""
        self._metadata = _channel.call_metadata(token)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self, grace: float | None = None) -> None:
        """Close the channel, giving running calls ``grace`` seconds. Idempotent."""
        await self._channel.close(grace)

    async def _unary(self, stub: Any, name: str, request: Message, timeout: float | None) -> Any:
        """A unary call of `stub` with the deadline, the token and typed errors."""
        with map_rpc_errors():
            return await getattr(stub, name)(request, timeout=self._deadline(timeout), metadata=self._metadata)

    def _deadline(self, timeout: float | None) -> float:
        return self._timeout if timeout is None else timeout

    async def send_message(
        self,
        phone_numbers: Sequence[str],
        text: str | None = None,
        *,
        data: bytes | None = None,
        port: int = 0,
        device_id: str = "",
        sim_number: int = 0,
        priority: int = 0,
        ttl: int | None = None,
        valid_until: datetime | None = None,
        with_delivery_report: bool | None = None,
        is_encrypted: bool = False,
        idempotency_key: str | None = None,
        schedule_at: datetime | None = None,
        passphrase: str | None = None,
        timeout: float | None = None,
    ) -> messages_pb2.Message:
        """Store a message for sending; see :meth:`smsgw_client.Client.send_message`.

        Without ``idempotency_key`` a fresh one is made once for this call, so
        gRPC's retries of UNAVAILABLE can never store (and send) it twice.
        """
        request = _channel.send_message_request(
            phone_numbers,
            text,
            data=data,
            port=port,
            device_id=device_id,
            sim_number=sim_number,
            priority=priority,
            ttl=ttl,
            valid_until=valid_until,
            with_delivery_report=with_delivery_report,
            is_encrypted=is_encrypted,
            idempotency_key=idempotency_key,
            schedule_at=schedule_at,
            passphrase=passphrase,
        )
        with map_rpc_errors():
            response: messages_pb2.Message = await self._messages.SendMessage(
                request, timeout=self._deadline(timeout), metadata=self._metadata
            )
        return response

    async def send_messages(
        self,
        items: Sequence[OutgoingMessage],
        *,
        passphrase: str | None = None,
        timeout: float | None = None,
    ) -> list[SendResult]:
        """Store up to 1,000 messages in one call; see :meth:`smsgw_client.Client.send_messages`.

        With ``passphrase`` the items are sealed in a worker thread (a key derivation per
        item), so the event loop keeps running meanwhile.
        """
        if passphrase is None:
            request = _batch.send_messages_request(items)
        else:
            request = await asyncio.to_thread(_batch.send_messages_request, items, passphrase)
        with map_rpc_errors():
            response: messages_pb2.SendMessagesResponse = await self._messages.SendMessages(
                request, timeout=self._deadline(timeout), metadata=self._metadata
            )
        return _batch.send_results(response)

    async def get_message(self, message_id: str, *, timeout: float | None = None) -> messages_pb2.Message:
        """Return one message with its recipients' states.

        Raises:
            NotFound: No such message for this token's owner.
        """
        request = messages_pb2.GetMessageRequest(id=message_id)
        with map_rpc_errors():
            response: messages_pb2.Message = await self._messages.GetMessage(
                request, timeout=self._deadline(timeout), metadata=self._metadata
            )
        return response

    async def list_messages(
        self,
        *,
        state: int | str = 0,
        device_id: str = "",
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> messages_pb2.ListMessagesResponse:
        """Return one page of messages; see :meth:`smsgw_client.Client.list_messages`."""
        request = _channel.list_messages_request(
            state=state,
            device_id=device_id,
            created_after=created_after,
            created_before=created_before,
            page_size=page_size,
            page_token=page_token,
        )
        with map_rpc_errors():
            response: messages_pb2.ListMessagesResponse = await self._messages.ListMessages(
                request, timeout=self._deadline(timeout), metadata=self._metadata
            )
        return response

    async def iter_messages(
        self,
        *,
        state: int | str = 0,
        device_id: str = "",
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> AsyncIterator[messages_pb2.Message]:
        """Yield every matching message, one page call (and deadline) at a time."""
        while True:
            page = await self.list_messages(
                state=state,
                device_id=device_id,
                created_after=created_after,
                created_before=created_before,
                page_size=page_size,
                page_token=page_token,
                timeout=timeout,
            )
            for message in page.messages:
                yield message
            if not page.next_page_token:
                return
            page_token = page.next_page_token

    async def cancel_message(self, message_id: str, *, timeout: float | None = None) -> messages_pb2.Message:
        """Cancel a message that no phone has accepted yet; returns it as CANCELLED.

        Raises:
            FailedPrecondition: A phone already accepted the message.
            NotFound: No such message for this token's owner.
        """
        request = messages_pb2.CancelMessageRequest(id=message_id)
        with map_rpc_errors():
            response: messages_pb2.Message = await self._messages.CancelMessage(
                request, timeout=self._deadline(timeout), metadata=self._metadata
            )
        return response

    async def reschedule_message(
        self, message_id: str, schedule_at: datetime | None, *, timeout: float | None = None
    ) -> messages_pb2.Message:
        """Move a message's send time (None = now) while no phone has been handed it.

        Raises:
            FailedPrecondition: A recipient was already dispatched to a phone.
            InvalidArgument: ``schedule_at`` is too far ahead or not before the message's valid_until.
            NotFound: No such message for this token's owner.
        """
        with map_rpc_errors():
            response: messages_pb2.Message = await self._messages.RescheduleMessage(
                _channel.reschedule_request(message_id, schedule_at), timeout=self._deadline(timeout), metadata=self._metadata
            )
        return response

    async def watch_messages(
        self,
        *,
        after_event_id: int | None = None,
        message_ids: Sequence[str] = (),
        timeout: float | None = None,
        max_reconnects: int = _channel.DEFAULT_MAX_RECONNECTS,
    ) -> AsyncGenerator[messages_pb2.MessageEvent, None]:
        """Yield state changes in event-id order, resuming after UNAVAILABLE.

        See :meth:`smsgw_client.Client.watch_messages` for the arguments. Close
        the iterator (``aclose()``, or run ``async for`` inside a
        ``contextlib.aclosing`` block) to cancel the stream promptly.
        """
        cursor = _channel.WatchCursor(
            after_event_id, message_ids, timeout=timeout, max_reconnects=max_reconnects
        )
        stream: AsyncGenerator[messages_pb2.MessageEvent, None] = self._follow(
            cursor, lambda: self._messages.WatchMessages(cursor.request(), timeout=cursor.timeout(), metadata=self._metadata)
        )
        try:
            async for event in stream:
                yield event
        finally:
            await stream.aclose()

    async def list_inbound(
        self,
        *,
        device_id: str = "",
        received_after: datetime | None = None,
        received_before: datetime | None = None,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> inbound_pb2.ListInboundResponse:
        """Return one page of received SMS, newest first; see :meth:`smsgw_client.Client.list_inbound`."""
        request = _channel.list_inbound_request(
            device_id=device_id,
            received_after=received_after,
            received_before=received_before,
            page_size=page_size,
            page_token=page_token,
        )
        with map_rpc_errors():
            response: inbound_pb2.ListInboundResponse = await self._inbound.ListInbound(
                request, timeout=self._deadline(timeout), metadata=self._metadata
            )
        return response

    async def watch_inbound(
        self,
        after_event_id: int | None = None,
        device_id: str = "",
        *,
        timeout: float | None = None,
        max_reconnects: int = _channel.DEFAULT_MAX_RECONNECTS,
    ) -> AsyncGenerator[inbound_pb2.InboundEvent, None]:
        """Yield inbound SMS as they are stored, resuming after UNAVAILABLE; see
        :meth:`smsgw_client.Client.watch_inbound`. Close the iterator to cancel the stream."""
        cursor = _channel.WatchCursor(after_event_id, (), timeout=timeout, max_reconnects=max_reconnects)
        stream: AsyncGenerator[inbound_pb2.InboundEvent, None] = self._follow(
            cursor,
            lambda: self._inbound.WatchInbound(
                cursor.inbound_request(device_id), timeout=cursor.timeout(), metadata=self._metadata
            ),
        )
        try:
            async for event in stream:
                yield event
        finally:
            await stream.aclose()

    @staticmethod
    async def _follow(cursor: _channel.WatchCursor, open_stream: Callable[[], Any]) -> AsyncGenerator[Any, None]:
        """Run a watch stream from `cursor`, reopening it after UNAVAILABLE."""
        while True:
            call = open_stream()
            try:
                # The server names the stream's start in its headers, before any event.
                cursor.learn_start(await call.initial_metadata())
                async for event in call:
                    if cursor.accept(event):
                        yield event
                return
            except grpc.RpcError as error:
                delay = cursor.reconnect_after(error)
                if delay is None:
                    raise from_rpc_error(error) from error
            finally:
                call.cancel()
            await asyncio.sleep(delay)

    async def list_devices(self, *, timeout: float | None = None) -> devices_pb2.ListDevicesResponse:
        """Return the owner's phones, with their online state and SIMs."""
        with map_rpc_errors():
            response: devices_pb2.ListDevicesResponse = await self._devices.ListDevices(
                devices_pb2.ListDevicesRequest(), timeout=self._deadline(timeout), metadata=self._metadata
            )
        return response

    async def create_pairing_code(
        self, device_name: str = "", ttl_seconds: int = 0, *, timeout: float | None = None
    ) -> devices_pb2.PairingCode:
        """Return a short-lived code a new phone trades for its device credentials (usable
        for its device until the device's first session with its token)."""
        with map_rpc_errors():
            response: devices_pb2.PairingCode = await self._devices.CreatePairingCode(
                _channel.pairing_code_request(device_name, ttl_seconds),
                timeout=self._deadline(timeout),
                metadata=self._metadata,
            )
        return response

    async def delete_device(self, device_id: str, *, timeout: float | None = None) -> devices_pb2.DeleteDeviceResponse:
        """See :meth:`smsgw_client.Client.delete_device`."""
        with map_rpc_errors():
            response: devices_pb2.DeleteDeviceResponse = await self._devices.DeleteDevice(
                devices_pb2.DeleteDeviceRequest(id=device_id), timeout=self._deadline(timeout), metadata=self._metadata
            )
        return response

    async def get_device_settings(self, device_id: str, *, timeout: float | None = None) -> devices_pb2.DeviceSettings:
        """The pacing the bridge applies to a phone (per SIM and phone-wide)."""
        with map_rpc_errors():
            response: devices_pb2.DeviceSettings = await self._devices.GetDeviceSettings(
                devices_pb2.GetDeviceSettingsRequest(device_id=device_id),
                timeout=self._deadline(timeout),
                metadata=self._metadata,
            )
        return response

    async def update_device_settings(
        self, settings: devices_pb2.DeviceSettings, *, reset: bool = False, timeout: float | None = None
    ) -> devices_pb2.DeviceSettings:
        """Replace a phone's pacing (``settings.device_id`` names it; get, change, write back);
        ``reset`` returns it to the server's defaults. A connected phone gets it at once.

        Raises:
            InvalidArgument: A limit out of range or a SIM slot outside 1..8 (the field is named).
            NotFound: No such device for this token's owner.
        """
        with map_rpc_errors():
            response: devices_pb2.DeviceSettings = await self._devices.UpdateDeviceSettings(
                devices_pb2.UpdateDeviceSettingsRequest(settings=settings, reset=reset),
                timeout=self._deadline(timeout),
                metadata=self._metadata,
            )
        return response

    async def export_messages(
        self, *, state: int | str = 0, device_id: str = "", created_after: datetime | None = None,
        created_before: datetime | None = None, timeout: float | None = None,
    ) -> AsyncIterator[messages_pb2.Message]:
        """See :meth:`smsgw_client.Client.export_messages`."""
        request = _channel.export_messages_request(
            state=state, device_id=device_id, created_after=created_after, created_before=created_before
        )
        call = self._messages.ExportMessages(request, timeout=timeout, metadata=self._metadata)
        try:
            with map_rpc_errors():
                async for message in call:
                    yield message
        finally:
            call.cancel()

    async def create_account(self, username: str, password: str, *, timeout: float | None = None) -> auth_pb2.Account:
        """See :meth:`smsgw_client.Client.create_account`."""
        with map_rpc_errors():
            response: auth_pb2.Account = await self._auth.CreateAccount(
                auth_pb2.CreateAccountRequest(username=username, password=password), timeout=self._deadline(timeout)
            )
        return response

    async def issue_token(
        self, username: str, password: str, *, scopes: Sequence[str] = (), access_ttl: int = 0,
        refresh_ttl: int = 0, timeout: float | None = None,
    ) -> auth_pb2.TokenPair:
        """See :meth:`smsgw_client.Client.issue_token`."""
        request = auth_pb2.IssueTokenRequest(scopes=scopes, access_ttl_seconds=access_ttl, refresh_ttl_seconds=refresh_ttl)
        with map_rpc_errors():
            response: auth_pb2.TokenPair = await self._auth.IssueToken(
                request, timeout=self._deadline(timeout), metadata=_channel.basic_metadata(username, password)
            )
        return response

    async def refresh_token(self, refresh_token: str, *, timeout: float | None = None) -> auth_pb2.TokenPair:
        """See :meth:`smsgw_client.Client.refresh_token`."""
        with map_rpc_errors():
            response: auth_pb2.TokenPair = await self._auth.RefreshToken(
                auth_pb2.RefreshTokenRequest(refresh_token=refresh_token), timeout=self._deadline(timeout)
            )
        return response

    async def revoke_token(self, jti: str, *, timeout: float | None = None) -> int:
        """See :meth:`smsgw_client.Client.revoke_token`."""
        with map_rpc_errors():
            response: auth_pb2.RevokeTokenResponse = await self._auth.RevokeToken(
                auth_pb2.RevokeTokenRequest(jti=jti), timeout=self._deadline(timeout), metadata=self._metadata
            )
        return response.revoked

    async def list_audit_events(
        self, *, action: str = "", page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> audit_pb2.ListAuditEventsResponse:
        """See :meth:`smsgw_client.Client.list_audit_events`."""
        request = audit_pb2.ListAuditEventsRequest(action=action, page_size=page_size, page_token=page_token)
        with map_rpc_errors():
            response: audit_pb2.ListAuditEventsResponse = await self._audit.ListAuditEvents(
                request, timeout=self._deadline(timeout), metadata=self._metadata
            )
        return response
