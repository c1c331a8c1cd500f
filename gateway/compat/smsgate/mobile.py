"""SMSGate's mobile API (`/mobile/v1`, `../shared/smsgate-api.md` §4): what the SMSGate
Android app calls in private-server mode, so that it works as an smsgw phone
(docs/smsgate.md, "The SMSGate app").

Registration makes an smsgw device: with `Code <pairing code>` (from smsgw's CreatePairingCode,
`smsgw devices pair`, or GET /user/code), with `Basic` account credentials, or, as SMSGate's
first run does, with `Bearer <gateway.private_token>` (private mode) or no credentials at all
(public mode, where anyone may create an account): a new account whose login and password the
app shows. Every other call carries the device token. Sessions, pulls, reports and the SSE
stream are gateway/compat/smsgate/mobile_phones.py.

Inbound SMS: the app only reports them as webhooks, so GET /webhooks lists, for the phone
alone, smsgw's own endpoint (`<API URL>/inbound/<device id>`) for `sms:received` and
`sms:data-received`, and the settings the phone imports carry the key it signs them with
(derived from its device token's hash: it changes when the device registers again). What
arrives there, signed, is stored as inbound SMS, deduplicated by the app's message id.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.auth.passwords import hash_password
from gateway.auth.repository import AuditEntry, AuthRepository
from gateway.auth.scopes import ALL_SCOPES
from gateway.auth.service import AuthService
from gateway.bus.local import LocalBus
from gateway.compat.smsgate.mobile_phones import MobilePhones, Phone
from gateway.compat.smsgate.bodies import parse_json, read_body, read_json, read_object
from gateway.compat.smsgate.mobile_shapes import parse_reports, sims
from gateway.compat.smsgate.shapes import device as device_json
from gateway.compat.smsgate.shapes import iso, parse_time
from gateway.devices.repository import DeviceRepository, hash_secret
from gateway.errors import AlreadyExists, InvalidArgument, PermissionDenied, Unauthenticated
from gateway.inbound.records import NewInbound
from gateway.inbound.repository import InboundRepository
from gateway.types import utcnow

__all__ = ["MobileApi", "mobile_routes", "signing_key"]

log = logging.getLogger(__name__)

_CODE_TTL = timedelta(minutes=10)
_SIGNATURE_SKEW = 600  # seconds an inbound webhook's X-Timestamp may be off (replays older are refused)
_INBOUND_EVENTS = ("sms:received", "sms:data-received")
_LOGIN_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
_PASSWORD_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"

SettingsReader = Callable[[str], Awaitable[dict[str, Any]]]


async def _no_settings(owner_id: str) -> dict[str, Any]:
    return {}


def signing_key(token_hash: str) -> str:
    """The key a phone signs its webhooks to smsgw with (settings `webhooks.signing_key`)."""
    return hmac.new(token_hash.encode(), b"smsgw smsgate webhook key", hashlib.sha256).hexdigest()[:32]


def _app_version(request: Request) -> str:
    agent = request.headers.get("user-agent", "")
    name, _, version = agent.partition("/")
    return f"smsgate/{version.split()[0]}" if name.startswith("me.capcom.smsgateway") and version else "smsgate"


@dataclass
class MobileApi:
    phones: MobilePhones
    devices: DeviceRepository
    auth: AuthService
    accounts: AuthRepository
    inbound: InboundRepository
    bus: LocalBus
    mode: str = "public"
    private_token: str = field(default="", repr=False)
    settings_of: SettingsReader = _no_settings  # the owner's SMSGate settings (full, hidden keys too)

    # ---- credentials --------------------------------------------------------------------

    async def phone(self, request: Request, sims_body: Any = None) -> Phone:
        """The calling phone's session (Bearer device token), opened if needed."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("authorization required: Bearer <device token>")
        identity, token_hash = await self.phones.identify(token.strip())
        return await self.phones.touch(identity, token_hash, _app_version(request), sims(sims_body))

    # ---- registration ------------------------------------------------------------------

    async def register(self, request: Request) -> Response:
        """POST /device: a new smsgw device (201 `{id, token, login, password?}`)."""
        body = await read_object(request)
        name = body.get("name") or "SMSGate app"
        if not isinstance(name, str) or len(name) > 128:
            raise InvalidArgument("name", "at most 128 characters")
        cards = sims(body.get("simCards"))
        push = body.get("pushToken")
        if push is not None and (not isinstance(push, str) or len(push) > 256):
            raise InvalidArgument("pushToken", "at most 256 characters")
        source = request.client.host if request.client else ""
        scheme, _, credential = request.headers.get("authorization", "").partition(" ")
        scheme, credential = scheme.lower(), credential.strip()
        password = None
        if scheme == "code" and credential:
            self.auth.check_locked(source)  # codes are short: guessing them is locked out like passwords
            self.auth.limit_source(source)
            redeemed = await asyncio.to_thread(self.devices.redeem_pairing_code, credential, utcnow(), source)
            if redeemed is None:
                await self.auth.failed(source, "smsgate registration: unknown or spent code")
                raise Unauthenticated("unknown, expired or spent code")
            identity, token = redeemed
            account = await asyncio.to_thread(self.accounts.account_by_id, identity.owner_id)
            login = account.username if account else ""
        else:
            if scheme == "basic" and credential:
                self.auth.check_locked(source)
                self.auth.limit_source(source)
                account = await self.auth.sign_in(credential, source)
            elif self._may_sign_up(scheme, credential):
                self.auth.check_locked(source)
                self.auth.limit_source(source)
                account, password = await self._new_account(source)
            else:
                if scheme == "bearer":
                    await self.auth.failed(source, "smsgate registration: wrong private token")
                raise Unauthenticated(
                    "registration needs Code <pairing code>, Basic <login:password>"
                    + (", or Bearer <private token>" if self.mode == "private" else "")
                )
            login = account.username
            code, _ = await asyncio.to_thread(self.devices.create_pairing_code, account.id, name, _CODE_TTL, utcnow())
            redeemed = await asyncio.to_thread(self.devices.redeem_pairing_code, code, utcnow(), source)
            assert redeemed is not None  # made a moment ago
            identity, token = redeemed
        await self.phones.touch(identity, hash_secret(token), _app_version(request), cards or ())
        out = {"id": identity.device_id, "token": token, "login": login}
        if password is not None:
            out["password"] = password
        log.info("an SMSGate app registered device %s", identity.device_id)
        return JSONResponse(out, status_code=201)

    def _may_sign_up(self, scheme: str, credential: str) -> bool:
        """SMSGate's first run: a new account, with the private token (private mode) or with
        nothing (public mode, where anyone may create an account anyway)."""
        if self.mode == "private":
            return scheme == "bearer" and hmac.compare_digest(credential.encode(), self.private_token.encode())
        return not scheme

    async def _new_account(self, source: str) -> tuple[Any, str]:
        for _ in range(5):  # a taken login (1 in 10^9) is drawn again
            login = "".join(secrets.choice(_LOGIN_ALPHABET) for _ in range(6))
            password = "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(14))
            hashed = await asyncio.to_thread(hash_password, password)
            try:
                account = await asyncio.to_thread(
                    self.accounts.create_account, login, hashed, ALL_SCOPES, utcnow(),
                    AuditEntry("account.create", source=source, detail="registered by the SMSGate app"),
                )
            except AlreadyExists:
                continue
            return account, password
        raise RuntimeError("could not draw a free login")

    # ---- the device ---------------------------------------------------------------------

    async def device_get(self, request: Request) -> Response:
        """GET /device: `{device?, externalIp}` (the device only with its token)."""
        out: dict[str, Any] = {"externalIp": request.client.host if request.client else ""}
        if request.headers.get("authorization"):
            phone = await self.phone(request)
            record = next((d for d in await asyncio.to_thread(self.devices.list, phone.owner_id) if d.id == phone.device_id), None)
            if record is not None:
                out["device"] = device_json(record)
        return JSONResponse(out)

    async def device_patch(self, request: Request) -> Response:
        """PATCH /device: the app's SIM cards changed (its push token is not used: smsgw
        cannot send FCM to SMSGate's app; it wakes the phone over SSE)."""
        body = await read_object(request)
        phone = await self.phone(request)
        if body.get("id") != phone.device_id:
            raise PermissionDenied("id: not this device")
        if body.get("simCards") is not None:
            await self.phone(request, body["simCards"])
        return Response(status_code=204)

    async def user_code(self, request: Request) -> Response:
        """GET /user/code (Basic): a one-time code that registers another device of the account."""
        scheme, _, credential = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic" or not credential.strip():
            raise Unauthenticated("authorization required: Basic <login:password>")
        source = request.client.host if request.client else ""
        self.auth.check_locked(source)
        self.auth.limit_source(source)
        account = await self.auth.sign_in(credential.strip(), source)
        code, expires = await asyncio.to_thread(self.devices.create_pairing_code, account.id, "SMSGate app", _CODE_TTL, utcnow())
        return JSONResponse({"code": code, "validUntil": iso(expires)})

    async def user_password(self, request: Request) -> Response:
        """PATCH /user/password: the account's password, from the app (current one required)."""
        body = await read_object(request)
        phone = await self.phone(request)
        current, new = body.get("currentPassword"), body.get("newPassword")
        if not isinstance(current, str) or not current:
            raise InvalidArgument("currentPassword", "required")
        if not isinstance(new, str) or not 14 <= len(new) <= 256:
            raise InvalidArgument("newPassword", "14..256 characters")
        account = await asyncio.to_thread(self.accounts.account_by_id, phone.owner_id)
        if account is None:
            raise Unauthenticated("no such account")
        source = request.client.host if request.client else ""
        basic = base64.b64encode(f"{account.username}:{current}".encode()).decode()
        await self.auth.sign_in(basic, source)  # Unauthenticated: wrong current password
        hashed = await asyncio.to_thread(hash_password, new)
        await asyncio.to_thread(self.accounts.update_account, account.username, utcnow(), password_hash=hashed)
        return Response(status_code=204)

    # ---- messages -----------------------------------------------------------------------

    async def pull(self, request: Request) -> Response:
        order = request.query_params.get("order", "lifo")
        if order not in ("lifo", "fifo"):
            raise InvalidArgument("order", "lifo or fifo")
        phone = await self.phone(request)
        return JSONResponse(await self.phones.pull(phone, fifo=order == "fifo"))

    async def report(self, request: Request) -> Response:
        body = await read_json(request)
        reports = parse_reports(body)
        phone = await self.phone(request)
        await self.phones.report(phone, reports, [item["id"] for item in body])
        return Response(status_code=204)

    # ---- settings, webhooks, events ---------------------------------------------------

    async def settings(self, request: Request) -> Response:
        phone = await self.phone(request)
        out = copy.deepcopy(await self.settings_of(phone.owner_id))
        hooks = out.setdefault("webhooks", {})
        if not isinstance(hooks, dict):
            hooks = out["webhooks"] = {}
        hooks["signing_key"] = signing_key(phone.token_hash)  # for smsgw's own endpoint only
        gateway = out.setdefault("gateway", {})
        if isinstance(gateway, dict):
            gateway["notification_channel"] = "SSE_ONLY"  # smsgw cannot reach SMSGate's FCM app
        return JSONResponse(out)

    async def webhooks(self, request: Request) -> Response:
        phone = await self.phone(request)
        base = str(request.url).split("?")[0].removesuffix("/").removesuffix("/webhooks")
        return JSONResponse([
            {"id": f"smsgw-{event.replace(':', '-')}", "deviceId": phone.device_id, "event": event,
             "url": f"{base}/inbound/{phone.device_id}"}
            for event in _INBOUND_EVENTS
        ])

    async def events(self, request: Request) -> Response:
        phone = await self.phone(request)
        return StreamingResponse(
            self.phones.events(phone), media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "Connection": "keep-alive", "X-Accel-Buffering": "no"},
        )

    async def inbound_sms(self, request: Request) -> Response:
        """POST /inbound/{device}: an SMS the phone received, as its signed webhook."""
        source = request.client.host if request.client else ""
        self.auth.check_locked(source)
        raw = await read_body(request)
        found = await asyncio.to_thread(self.devices.token_hash_of, request.path_params["device"])
        stamp = request.headers.get("x-timestamp", "")
        signature = request.headers.get("x-signature", "")
        expected = hmac.new(signing_key(found[1] if found else "").encode(), raw + stamp.encode(), hashlib.sha256).hexdigest()
        if found is None or not stamp.isdigit() or not hmac.compare_digest(signature.lower().encode(), expected.encode()):
            await self.auth.failed(source, "smsgate inbound webhook: bad signature or unknown device")
            raise Unauthenticated("X-Signature does not match (unknown device, or the phone must import its settings again)")
        identity = found[0]
        if abs(time.time() - int(stamp)) > _SIGNATURE_SKEW:
            raise Unauthenticated("X-Timestamp too old or in the future")
        item = _inbound_item(parse_json(raw))
        if item is not None:
            await asyncio.to_thread(self.inbound.store, identity.owner_id, identity.device_id, [item], utcnow())
            self.bus.notify_events()  # WatchInbound, sms:received webhooks
        return JSONResponse({})


def _inbound_item(envelope: Any) -> NewInbound | None:
    """An `sms:received` / `sms:data-received` envelope as an inbound SMS (None: another event)."""
    if not isinstance(envelope, dict) or not isinstance(envelope.get("payload"), dict):
        raise InvalidArgument("payload", "must be an object")
    event, payload = envelope.get("event"), envelope["payload"]
    if event not in _INBOUND_EVENTS:
        return None
    phone_id = payload.get("messageId") or envelope.get("id")
    if not isinstance(phone_id, str) or not 1 <= len(phone_id) <= 128:
        raise InvalidArgument("payload.messageId", "must be the message's id")
    sender = payload.get("sender") or payload.get("phoneNumber")
    if not isinstance(sender, str) or not 1 <= len(sender) <= 128:
        raise InvalidArgument("payload.sender", "must be a string of 1..128 characters")
    received = payload.get("receivedAt")
    at = parse_time(received, "payload.receivedAt") if received is not None else None
    sim = payload.get("simNumber")
    sim = sim if isinstance(sim, int) and not isinstance(sim, bool) and 1 <= sim <= 8 else 0
    if event == "sms:received":
        text = payload.get("message")
        if not isinstance(text, str) or len(text) > 65_535:
            raise InvalidArgument("payload.message", "must be a string")
        return NewInbound(phone_id=phone_id, sender=sender, text=text, sim=sim, received_at=at)
    try:
        data = base64.b64decode(payload.get("data") or "", validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise InvalidArgument("payload.data", "must be base64") from None
    port = payload.get("port")
    return NewInbound(phone_id=phone_id, sender=sender, data=data, port=port if isinstance(port, int) else 0,
                      sim=sim, received_at=at)


def mobile_routes(api: MobileApi, answer: Callable[[Callable[[Request], Awaitable[Response]]], Any]) -> list[Route]:
    """The routes under a mobile base (`/mobile/v1`, `/api/mobile/v1`); `answer` turns a
    handler's errors into SMSGate's error bodies."""
    return [
        Route("/device", answer(api.register), methods=["POST"]),
        Route("/device", answer(api.device_get), methods=["GET"]),
        Route("/device", answer(api.device_patch), methods=["PATCH"]),
        Route("/user/code", answer(api.user_code), methods=["GET"]),
        Route("/user/password", answer(api.user_password), methods=["PATCH"]),
        *(Route(path, answer(api.pull), methods=["GET"]) for path in ("/message", "/messages")),
        *(Route(path, answer(api.report), methods=["PATCH"]) for path in ("/message", "/messages")),
        Route("/webhooks", answer(api.webhooks), methods=["GET"]),
        Route("/settings", answer(api.settings), methods=["GET"]),
        Route("/events", answer(api.events), methods=["GET"]),
        Route("/inbound/{device}", answer(api.inbound_sms), methods=["POST"]),
    ]


