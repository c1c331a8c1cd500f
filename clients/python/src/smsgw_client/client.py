"""The blocking smsgw client (grpc sync channel).

Adds to the generated stubs what every caller would otherwise rewrite: a
default deadline, retries of UNAVAILABLE through gRPC's service config, an
idempotency key on every send, a ``WatchMessages`` stream that resumes by
itself, and typed errors (:mod:`smsgw_client.errors`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator, Sequence
from datetime import datetime
from functools import partial
from types import TracebackType
from typing import Any

import grpc
from google.protobuf.message import Message

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

__all__ = ["Client"]


class Client:
    """A blocking client for the smsgw API (messages, inbound SMS, devices, auth, audit).

    Safe to share between threads (as the underlying gRPC channel is). Use it
    as a context manager, or call :meth:`close`, to release the connection.

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
            self._channel = grpc.insecure_channel(target, options=channel_options)
        else:
            self._channel = grpc.secure_channel(target, credentials, options=channel_options)
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

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel; calls still running are cancelled. Idempotent."""
        self._channel.close()

    def _unary(self, stub: Any, name: str, request: Message, timeout: float | None) -> Any:
        """A unary call of `stub` with the deadline, the token and typed errors."""
        with map_rpc_errors():
            return getattr(stub, name)(request, timeout=self._deadline(timeout), metadata=self._metadata)

    def _deadline(self, timeout: float | None) -> float:
        return self._timeout if timeout is None else timeout

    def send_message(
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
        """Store a message for sending; returns once the gateway holds it durably.

        Without ``idempotency_key`` a fresh one is made once for this call, so
        gRPC's retries of UNAVAILABLE can never store (and send) it twice. Pass
        your own key to make retries across calls or processes safe as well.

        Args:
            phone_numbers: 1..100 recipients in E.164.
            text: The text to send; exactly one of ``text`` and ``data``.
            data: A binary (data SMS) payload, sent to ``port``.
            port: Destination port of a data SMS (1..65535).
            device_id: Pin to this phone ("" = any of the owner's phones).
            sim_number: 1-based SIM slot (0 = the phone's default).
            priority: -128..127, higher first.
            ttl: Seconds the message may wait for a phone; or ``valid_until``.
            valid_until: Timezone-aware absolute expiry; or ``ttl``.
            with_delivery_report: Ask for carrier delivery reports (None = the
                server's default, on).
            is_encrypted: The content is an smsgw1 end-to-end envelope (you sealed it).
            passphrase: Seal ``text``/``data`` into an smsgw1 envelope with this
                passphrase before sending (sets ``is_encrypted``): the server only
                ever holds the ciphertext, and the phone opens it with the same
                passphrase. The envelope adds 50 bytes (about 67 base64 characters).
            idempotency_key: Up to 128 characters; same key = same message.
            schedule_at: Timezone-aware time to hold the message until (at
                most 30 days ahead); None = as soon as the phone's pacing allows.
            timeout: Deadline in seconds (None = the client's default).

        Raises:
            ValueError: Not exactly one of ``text``/``data``, or both ``ttl``
                and ``valid_until``.
            SmsgwError: The call failed (see :mod:`smsgw_client.errors`).
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
            response: messages_pb2.Message = self._messages.SendMessage(
                request, timeout=self._deadline(timeout), metadata=self._metadata
            )
        return response

    def send_messages(
        self,
        items: Sequence[OutgoingMessage],
        *,
        passphrase: str | None = None,
        timeout: float | None = None,
    ) -> list[SendResult]:
        """Store up to 1,000 messages in one call (``SendMessages``, one transaction).

        Every item gets its own result, in order: a bad item is refused with the error
        ``send_message`` would raise for it (fields named ``messages[i].<field>``) and the
        others are stored. Items without ``idempotency_key`` get a fresh one for this call
        (gRPC's retries reuse it); give your own keys and a retry of the whole batch, even
        from another process, answers with the stored messages (``created`` False).

        Args:
            items: 1..1000 messages.
            passphrase: Seal every item's ``text``/``data`` into an smsgw1 envelope, as
                ``send_message(passphrase=...)`` does. Costs one key derivation (about
                15 ms) per item, before the call.
            timeout: Deadline in seconds (None = the client's default).

        Raises:
            TypeError, ValueError: An item is malformed locally (named by its index).
            InvalidArgument: The call itself: no item or more than 1,000 (field ``messages``).
            SmsgwError: The call failed as a whole (see :mod:`smsgw_client.errors`).
        """
        request = _batch.send_messages_request(items, passphrase)
        with map_rpc_errors():
            response: messages_pb2.SendMessagesResponse = self._messages.SendMessages(
                request, timeout=self._deadline(timeout), metadata=self._metadata
            )
        return _batch.send_results(response)

    def get_message(self, message_id: str, *, timeout: float | None = None) -> messages_pb2.Message:
        """Return one message with its recipients' states.

        Raises:
            NotFound: No such message for this token's owner.
        """
        request = messages_pb2.GetMessageRequest(id=message_id)
        with map_rpc_errors():
            response: messages_pb2.Message = self._messages.GetMessage(
                request, timeout=self._deadline(timeout), metadata=self._metadata
            )
        return response

    def list_messages(
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
        """Return one page of messages, newest first; see :meth:`iter_messages`.

        Args:
            state: Only messages in this state (a ``State`` value or name; 0 = any).
            device_id: Only this phone's messages ("" = any).
            created_after: Inclusive lower bound, timezone-aware.
            created_before: Exclusive upper bound, timezone-aware.
            page_size: Messages per page (0 = the server's default, 50).
            page_token: ``next_page_token`` of the previous page ("" = first).
            timeout: Deadline in seconds (None = the client's default).
        """
        request = _channel.list_messages_request(
            state=state,
            device_id=device_id,
            created_after=created_after,
            created_before=created_before,
            page_size=page_size,
            page_token=page_token,
        )
        with map_rpc_errors():
            response: messages_pb2.ListMessagesResponse = self._messages.ListMessages(
                request, timeout=self._deadline(timeout), metadata=self._metadata
            )
        return response

    def iter_messages(
        self,
        *,
        state: int | str = 0,
        device_id: str = "",
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> Iterator[messages_pb2.Message]:
        """Yield every matching message, fetching pages as the caller goes.

        Each page is its own call with its own deadline (``timeout``), so a
        long listing is not cut off by one deadline.
        """
        while True:
            page = self.list_messages(
                state=state,
                device_id=device_id,
                created_after=created_after,
                created_before=created_before,
                page_size=page_size,
                page_token=page_token,
                timeout=timeout,
            )
            yield from page.messages
            if not page.next_page_token:
                return
            page_token = page.next_page_token

    def cancel_message(self, message_id: str, *, timeout: float | None = None) -> messages_pb2.Message:
        """Cancel a message that no phone has accepted yet; returns it as CANCELLED.

        Raises:
            FailedPrecondition: A phone already accepted the message.
            NotFound: No such message for this token's owner.
        """
        request = messages_pb2.CancelMessageRequest(id=message_id)
        with map_rpc_errors():
            response: messages_pb2.Message = self._messages.CancelMessage(
                request, timeout=self._deadline(timeout), metadata=self._metadata
            )
        return response

    def reschedule_message(
        self, message_id: str, schedule_at: datetime | None, *, timeout: float | None = None
    ) -> messages_pb2.Message:
        """Move a message's send time (None = now) while no phone has been handed it.

        Raises:
            FailedPrecondition: A recipient was already dispatched to a phone.
            InvalidArgument: ``schedule_at`` is too far ahead or not before the message's valid_until.
            NotFound: No such message for this token's owner.
        """
        with map_rpc_errors():
            response: messages_pb2.Message = self._messages.RescheduleMessage(
                _channel.reschedule_request(message_id, schedule_at), timeout=self._deadline(timeout), metadata=self._metadata
            )
        return response

    def watch_messages(
        self,
        *,
        after_event_id: int | None = None,
        message_ids: Sequence[str] = (),
        timeout: float | None = None,
        max_reconnects: int = _channel.DEFAULT_MAX_RECONNECTS,
    ) -> Generator[messages_pb2.MessageEvent, None, None]:
        """Yield the state changes of the caller's messages, in event-id order.

        When the stream breaks with UNAVAILABLE (server restart, GOAWAY, network)
        it reconnects after 0.2 s × 2ⁿ (jittered, at most 5 s) from the last
        event it yielded, so the caller misses none and sees none twice. Leaving
        the loop (or closing the iterator) cancels the stream.

        Args:
            after_event_id: Resume after this event (0 = from the start; None =
                only events from now on; a reconnect before the first event
                resumes from the log position the server named when the
                stream began, so nothing logged during a restart is missed).
            message_ids: Only these messages (empty = all of the caller's).
            timeout: Overall deadline in seconds; None = none, as a watch is
                meant to run for long.
            max_reconnects: Reconnects in a row without an event before the
                error is raised.

        Raises:
            Unavailable: The stream could not be resumed ``max_reconnects`` times.
            SmsgwError: Any other failure, at once.
        """
        cursor = _channel.WatchCursor(
            after_event_id, message_ids, timeout=timeout, max_reconnects=max_reconnects
        )
        yield from self._follow(
            cursor, lambda: self._messages.WatchMessages(cursor.request(), timeout=cursor.timeout(), metadata=self._metadata)
        )

    def list_inbound(
        self,
        *,
        device_id: str = "",
        received_after: datetime | None = None,
        received_before: datetime | None = None,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> inbound_pb2.ListInboundResponse:
        """Return one page of the SMS the owner's phones received, newest first.

        Args:
            device_id: Only this phone's ("" = any).
            received_after: Inclusive lower bound on the phone's receive time, timezone-aware.
            received_before: Exclusive upper bound, timezone-aware.
            page_size: SMS per page (0 = the server's default, 50; at most 500).
            page_token: ``next_page_token`` of the previous page ("" = first).
            timeout: Deadline in seconds (None = the client's default).
        """
        request = _channel.list_inbound_request(
            device_id=device_id,
            received_after=received_after,
            received_before=received_before,
            page_size=page_size,
            page_token=page_token,
        )
        with map_rpc_errors():
            response: inbound_pb2.ListInboundResponse = self._inbound.ListInbound(
                request, timeout=self._deadline(timeout), metadata=self._metadata
            )
        return response

    def watch_inbound(
        self,
        after_event_id: int | None = None,
        device_id: str = "",
        *,
        timeout: float | None = None,
        max_reconnects: int = _channel.DEFAULT_MAX_RECONNECTS,
    ) -> Generator[inbound_pb2.InboundEvent, None, None]:
        """Yield inbound SMS as they are stored, in event-id order, resuming after
        UNAVAILABLE like :meth:`watch_messages` (each SMS once, also across reconnects).

        Args:
            after_event_id: Resume after this event (0 = from the start; None = only
                SMS stored from now on).
            device_id: Only this phone's ("" = any of the caller's).
            timeout: Overall deadline in seconds; None = none.
            max_reconnects: Reconnects in a row without an event before the error is raised.
        """
        cursor = _channel.WatchCursor(after_event_id, (), timeout=timeout, max_reconnects=max_reconnects)
        yield from self._follow(
            cursor,
            lambda: self._inbound.WatchInbound(
                cursor.inbound_request(device_id), timeout=cursor.timeout(), metadata=self._metadata
            ),
        )

    @staticmethod
    def _follow(cursor: _channel.WatchCursor, open_stream: Callable[[], Any]) -> Generator[Any, None, None]:
        """Run a watch stream from `cursor`, reopening it after UNAVAILABLE."""
        while True:
            call = open_stream()
            try:
                # The server names the stream's start in its headers, before any event.
                cursor.learn_start(call.initial_metadata())
                for event in call:
                    if cursor.accept(event):
                        yield event
                return
            except grpc.RpcError as error:
                delay = cursor.reconnect_after(error)
                if delay is None:
                    raise from_rpc_error(error) from error
            finally:
                # Also runs when the caller stops early (GeneratorExit): free
                # the server's stream instead of leaving it to the channel.
                call.cancel()
            time.sleep(delay)

    def list_devices(self, *, timeout: float | None = None) -> devices_pb2.ListDevicesResponse:
        """Return the owner's phones, with their online state and SIMs."""
        with map_rpc_errors():
            response: devices_pb2.ListDevicesResponse = self._devices.ListDevices(
                devices_pb2.ListDevicesRequest(), timeout=self._deadline(timeout), metadata=self._metadata
            )
        return response

    def create_pairing_code(
        self, device_name: str = "", ttl_seconds: int = 0, *, timeout: float | None = None
    ) -> devices_pb2.PairingCode:
        """Return a short-lived code a new phone trades for its device credentials
        (usable for its device until the device's first session with its token).

        Args:
            device_name: Name shown by :meth:`list_devices` (up to 64 characters).
            ttl_seconds: Lifetime of the code (0 = the server's default, 600 s).
            timeout: Deadline in seconds (None = the client's default).
        """
        with map_rpc_errors():
            response: devices_pb2.PairingCode = self._devices.CreatePairingCode(
                _channel.pairing_code_request(device_name, ttl_seconds),
                timeout=self._deadline(timeout),
                metadata=self._metadata,
            )
        return response

    def delete_device(self, device_id: str, *, timeout: float | None = None) -> devices_pb2.DeleteDeviceResponse:
        """Revoke a phone's credentials and end its session; its unaccepted messages move on.

        Raises:
            NotFound: No such device for this token's owner.
        """
        with map_rpc_errors():
            response: devices_pb2.DeleteDeviceResponse = self._devices.DeleteDevice(
                devices_pb2.DeleteDeviceRequest(id=device_id), timeout=self._deadline(timeout), metadata=self._metadata
            )
        return response

    def get_device_settings(self, device_id: str, *, timeout: float | None = None) -> devices_pb2.DeviceSettings:
        """The pacing the bridge applies to a phone (per SIM and phone-wide)."""
        with map_rpc_errors():
            response: devices_pb2.DeviceSettings = self._devices.GetDeviceSettings(
                devices_pb2.GetDeviceSettingsRequest(device_id=device_id),
                timeout=self._deadline(timeout),
                metadata=self._metadata,
            )
        return response

    def update_device_settings(
        self, settings: devices_pb2.DeviceSettings, *, reset: bool = False, timeout: float | None = None
    ) -> devices_pb2.DeviceSettings:
        """Replace a phone's pacing (``settings.device_id`` names it; get, change, write back);
        ``reset`` returns it to the server's defaults. A connected phone gets it at once.

        Raises:
            InvalidArgument: A limit out of range or a SIM slot outside 1..8 (the field is named).
            NotFound: No such device for this token's owner.
        """
        with map_rpc_errors():
            response: devices_pb2.DeviceSettings = self._devices.UpdateDeviceSettings(
                devices_pb2.UpdateDeviceSettingsRequest(settings=settings, reset=reset),
                timeout=self._deadline(timeout),
                metadata=self._metadata,
            )
        return response

    def export_messages(
        self, *, state: int | str = 0, device_id: str = "", created_after: datetime | None = None,
        created_before: datetime | None = None, timeout: float | None = None,
    ) -> Iterator[messages_pb2.Message]:
        """Yield every matching message, oldest first (scope ``messages:export``).

        Args:
            timeout: Deadline of the whole stream in seconds (None = no deadline).
        """
        request = _channel.export_messages_request(
            state=state, device_id=device_id, created_after=created_after, created_before=created_before
        )
        with map_rpc_errors():
            yield from self._messages.ExportMessages(request, timeout=timeout, metadata=self._metadata)

    def create_account(self, username: str, password: str, *, timeout: float | None = None) -> auth_pb2.Account:
        """Open an account (servers in public mode only); no token needed."""
        with map_rpc_errors():
            response: auth_pb2.Account = self._auth.CreateAccount(
                auth_pb2.CreateAccountRequest(username=username, password=password), timeout=self._deadline(timeout)
            )
        return response

    def issue_token(
        self, username: str, password: str, *, scopes: Sequence[str] = (), access_ttl: int = 0,
        refresh_ttl: int = 0, timeout: float | None = None,
    ) -> auth_pb2.TokenPair:
        """Sign in: an access and a refresh token with ``scopes`` (empty = all of the account's).

        Call :meth:`set_token` with ``access_token`` to use it on this client.
        """
        request = auth_pb2.IssueTokenRequest(scopes=scopes, access_ttl_seconds=access_ttl, refresh_ttl_seconds=refresh_ttl)
        with map_rpc_errors():
            response: auth_pb2.TokenPair = self._auth.IssueToken(
                request, timeout=self._deadline(timeout), metadata=_channel.basic_metadata(username, password)
            )
        return response

    def refresh_token(self, refresh_token: str, *, timeout: float | None = None) -> auth_pb2.TokenPair:
        """Trade a refresh token for a new pair. The old refresh token is spent: presenting it
        again (after a short grace for retries) revokes every token of the sign-in."""
        with map_rpc_errors():
            response: auth_pb2.TokenPair = self._auth.RefreshToken(
                auth_pb2.RefreshTokenRequest(refresh_token=refresh_token), timeout=self._deadline(timeout)
            )
        return response

    def revoke_token(self, jti: str, *, timeout: float | None = None) -> int:
        """Revoke one of the owner's tokens by jti (a refresh token's revokes its sign-in)."""
        with map_rpc_errors():
            response: auth_pb2.RevokeTokenResponse = self._auth.RevokeToken(
                auth_pb2.RevokeTokenRequest(jti=jti), timeout=self._deadline(timeout), metadata=self._metadata
            )
        return response.revoked

    def list_audit_events(
        self, *, action: str = "", page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> audit_pb2.ListAuditEventsResponse:
        """One page of the owner's audit log, newest first (scope ``logs:read``)."""
        request = audit_pb2.ListAuditEventsRequest(action=action, page_size=page_size, page_token=page_token)
        with map_rpc_errors():
            response: audit_pb2.ListAuditEventsResponse = self._audit.ListAuditEvents(
                request, timeout=self._deadline(timeout), metadata=self._metadata
            )
        return response
