"""SMSGate's third-party API (`/3rdparty/v1`) as a Starlette app over smsgw's services: the
same MessageService, DeviceService and AuthService the gRPC API calls, so sending, states,
pacing, auth and limits are smsgw's own (docs/smsgate.md).

Authentication as SMSGate's server does it: `Basic` with an smsgw account (checked once, then
remembered for 60 s by a hash of the header, so a client that sends Basic on every call does
not pay a password hash each time), or `Bearer` with an smsgw access token. SMSGate's scope
names are smsgw's (`messages:send`, ...); its `messages:cancel` is smsgw's `messages:send`.
Errors are `{"message": "..."}` with SMSGate's status codes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from gateway.api.validation import parse_send_request
from gateway.auth.records import Caller
from gateway.auth.scopes import Scope
from gateway.auth.service import AuthService
from gateway.compat.smsgate import pacing
from gateway.compat.smsgate.bodies import MAX_BODY, read_json
from gateway.compat.smsgate.inbox import export_event, export_request, refresh_request
from gateway.compat.smsgate.settings import SettingsStore, public
from gateway.compat.smsgate.webhooks import SmsgateWebhooks
from gateway.compat.smsgate.mobile import MobileApi, mobile_routes
from gateway.compat.smsgate.shapes import (
    FROM_STATE, camel, device, message_state, parse_time, send_request, token_response,
)
from gateway.config import LimitsSettings
from gateway.devices.service import DeviceService
from gateway.errors import (
    AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, ResourceExhausted, SmsgwError,
    Unauthenticated, Unavailable,
)
from gateway.messages.records import MessageFilter
from gateway.messages.service import MessageService
from gateway.observability import VERSION
from gateway.types import utcnow

__all__ = ["SmsgateApi", "build_app", "MAX_BODY"]

log = logging.getLogger(__name__)

_SMALL_BODY = 64 << 10  # bytes: a webhook, the settings map, an inbox refresh
_MAX_OFFSET = 10_000  # a list reads offset + limit messages: page further with from/to
_BASIC_TTL = 60.0
_BASIC_CACHE = 1024
_STATUS = {
    InvalidArgument: 400, Unauthenticated: 401, PermissionDenied: 403, NotFound: 404, AlreadyExists: 409,
    FailedPrecondition: 409, ResourceExhausted: 429, Unavailable: 503,
}

Handler = Callable[[Request, Caller], Awaitable[Response]]


@dataclass
class SmsgateApi:
    messages: MessageService
    devices: DeviceService
    auth: AuthService
    limits: LimitsSettings
    region: str = "RU"  # SMSGate's default for numbers without a country code
    storage: Callable[[], str] = lambda: ""  # /readyz's storage check: "" when the database answers
    settings: SettingsStore | None = None  # /settings, and the signing key of SMSGate-format webhooks
    webhooks: SmsgateWebhooks | None = None  # /webhooks
    # An inbox refresh: (owner, device id or "" for all, the event's data) -> the SMSGate-app phones.
    export_requested: Callable[[str, str, dict[str, str]], None] = lambda owner_id, device_id, data: None

    def __post_init__(self) -> None:
        self._basic: OrderedDict[bytes, tuple[float, Caller]] = OrderedDict()

    # ---- auth ----------------------------------------------------------------------

    async def caller(self, request: Request, scope: Scope) -> Caller:
        source = request.client.host if request.client else ""
        scheme, _, credential = request.headers.get("authorization", "").partition(" ")
        credential = credential.strip()
        if scheme.lower() == "basic" and credential:
            caller = await self._basic_caller(credential, source)
        elif scheme.lower() == "bearer" and credential:
            try:
                caller = self.auth.authenticate(credential, source)
            except Unauthenticated as exc:
                # As the gRPC API: a valid token is never locked out, a guesser is.
                self.auth.check_locked(source)
                await self.auth.failed(source, f"bearer: {exc}")
                raise
        else:
            raise Unauthenticated("authorization required: Basic or Bearer")
        if scope not in caller.scopes:
            raise PermissionDenied(f"scope required: {scope}")
        self.auth.limit_token(caller)  # per token, or per account for Basic ("basic:<name>")
        return caller

    async def _basic_caller(self, credential: str, source: str) -> Caller:
        """The account's caller; the check is remembered for 60 s (a disabled account or a
        changed password takes that long to apply here: docs/smsgate.md)."""
        key = hashlib.sha256(credential.encode()).digest()
        hit = self._basic.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return Caller(hit[1].owner_id, hit[1].jti, hit[1].scopes, source)
        self.auth.check_locked(source)
        self.auth.limit_source(source)
        account = await self.auth.sign_in(credential, source)
        caller = Caller(account.id, f"basic:{account.username}", account.scopes, source)
        self._basic[key] = (time.monotonic() + _BASIC_TTL, caller)
        while len(self._basic) > _BASIC_CACHE:
            self._basic.popitem(last=False)
        return caller

    # ---- endpoints -----------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        try:
            ready = not await asyncio.to_thread(self.storage)
        except Exception:  # noqa: BLE001 — a database that fails the check is down
            ready = False
        body = {"status": "pass" if ready else "fail", "version": VERSION, "releaseId": 1,
                "checks": {"storage": {"description": "the database answers", "status": "pass" if ready else "fail",
                                       "observedUnit": "", "observedValue": 1 if ready else 0}}}
        return JSONResponse(body, status_code=200 if ready else 503)

    async def send(self, request: Request, caller: Caller) -> Response:
        body = await read_json(request)
        skip = request.query_params.get("skipPhoneValidation", "").lower() == "true"
        req = send_request(body, region=self.region, skip_validation=skip, max_recipients=self.limits.max_recipients)
        try:
            new = parse_send_request(req, self.limits, utcnow())
        except InvalidArgument as exc:
            first, *more = [(camel(f), r) for f, r in exc.violations]
            raise InvalidArgument(*first, *more) from None
        record, _ = await self.messages.send(caller.owner_id, new)
        location = f"{request.url.path.rstrip('/').removesuffix('/message').removesuffix('/messages')}/messages/{record.id}"
        return JSONResponse(message_state(record), status_code=202, headers={"Location": location})

    async def get(self, request: Request, caller: Caller) -> Response:
        record = await self.messages.get(caller.owner_id, request.path_params["id"])
        return JSONResponse(message_state(record))

    async def cancel(self, request: Request, caller: Caller) -> Response:
        message_id = request.path_params["id"]
        try:
            record = await self.messages.cancel(caller.owner_id, message_id)
        except FailedPrecondition:
            raise FailedPrecondition("message is not pending") from None
        return JSONResponse(message_state(record))

    async def list(self, request: Request, caller: Caller) -> Response:
        q = request.query_params
        limit = _query_int(q.get("limit"), "limit", 1, 100, 50)
        offset = _query_int(q.get("offset"), "offset", 0, _MAX_OFFSET, 0)
        state = q.get("state")
        if state is not None and state not in FROM_STATE:
            raise InvalidArgument("state", f"one of {', '.join(FROM_STATE)}")
        states = FROM_STATE[state] if state else ()
        flt = MessageFilter(
            state=states[0] if states else None, also_states=tuple(states[1:]), device_id=q.get("deviceId", ""),
            created_after=_query_time(q.get("from"), "from"), created_before=_query_time(q.get("to"), "to"),
        )
        content = q.get("includeContent", "").lower() == "true"
        newest_first = q.get("sort", "-created_at") != "created_at"
        if q.get("sort") not in (None, "created_at", "-created_at"):
            raise InvalidArgument("sort", "created_at or -created_at")
        matching = await self._matching(caller.owner_id, flt, newest_first, offset + limit)
        page = matching[offset: offset + limit]
        total = len(matching) if len(matching) < offset + limit else await self.messages.count(caller.owner_id, flt)
        return JSONResponse([message_state(r, content=content) for r in page], headers={"X-Total-Count": str(total)})

    async def _matching(self, owner: str, flt: MessageFilter, newest_first: bool, upto: int) -> list[Any]:
        """The first `upto` matching messages in the asked order, read 500 at a time."""
        out: list[Any] = []
        cursor: dict[str, str | None] = {"before_id": None} if newest_first else {"after_id": ""}
        while len(out) < upto:
            want = min(500, upto - len(out))
            page = await self.messages.list(owner, flt, limit=want, **cursor)
            out += page
            if len(page) < want:
                break
            cursor = {"before_id": page[-1].id} if newest_first else {"after_id": page[-1].id}
        return out

    async def token_issue(self, request: Request, caller: Caller) -> Response:
        body = await read_json(request)
        if not isinstance(body, dict) or not isinstance(body.get("scopes"), list) or not body["scopes"]:
            raise InvalidArgument("scopes", "a list of at least one scope")
        ttl = body.get("ttl") or 0
        if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 0:
            raise InvalidArgument("ttl", "must be a number of seconds")
        pair = await self.auth.issue_for(caller, [str(x) for x in body["scopes"]], ttl, caller.source)
        return JSONResponse(token_response(pair), status_code=201)

    async def token_refresh(self, request: Request) -> Response:
        """POST /auth/token/refresh with `Authorization: Bearer <refresh token>` (its own credential)."""
        try:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("authorization required: Bearer <refresh token>")
            source = request.client.host if request.client else ""
            pair = await self.auth.refresh(token.strip(), source)
        except Exception as exc:  # noqa: BLE001 — every failure is an answer
            return _error(exc)
        return JSONResponse(token_response(pair), status_code=201)

    async def token_revoke(self, request: Request, caller: Caller) -> Response:
        await self.auth.revoke(caller, request.path_params["jti"])
        return Response(status_code=204)

    async def devices_list(self, request: Request, caller: Caller) -> Response:
        return JSONResponse([device(d) for d in await self.devices.list(caller.owner_id)])

    async def devices_delete(self, request: Request, caller: Caller) -> Response:
        await self.devices.delete(caller, request.path_params["id"])
        return Response(status_code=204)

    async def webhooks_list(self, request: Request, caller: Caller) -> Response:
        assert self.webhooks is not None
        return JSONResponse(await self.webhooks.list(caller.owner_id))

    async def webhooks_create(self, request: Request, caller: Caller) -> Response:
        assert self.webhooks is not None
        body = await read_json(request, _SMALL_BODY)
        return JSONResponse(await self.webhooks.upsert(caller.owner_id, body), status_code=201)

    async def webhooks_delete(self, request: Request, caller: Caller) -> Response:
        assert self.webhooks is not None
        await self.webhooks.delete(caller.owner_id, request.path_params["id"])
        return Response(status_code=204)

    async def settings_get(self, request: Request, caller: Caller) -> Response:
        assert self.settings is not None
        return JSONResponse(public(await self.settings.get(caller.owner_id)))

    async def settings_put(self, request: Request, caller: Caller) -> Response:
        assert self.settings is not None
        body = await read_json(request, _SMALL_BODY)
        return await self._settings_written(caller, await self.settings.replace(caller.owner_id, body))

    async def settings_patch(self, request: Request, caller: Caller) -> Response:
        assert self.settings is not None
        body = await read_json(request, _SMALL_BODY)
        return await self._settings_written(caller, await self.settings.patch(caller.owner_id, body))

    async def _settings_written(self, caller: Caller, change: tuple[dict[str, Any], dict[str, Any]]) -> Response:
        """The answer to PUT / PATCH, once changed send-rate settings are on the phones."""
        before, after = change
        if pacing.inputs(before) != pacing.inputs(after):
            await pacing.apply_to_devices(self.devices, caller, after)
        return JSONResponse(public(after))

    async def inbox_refresh(self, request: Request, caller: Caller) -> Response:
        """Validated, then `MessagesExportRequested` to the SMSGate-app phones (smsgw's own
        phones forwarded every SMS as it came: nothing to re-read there; docs/smsgate.md)."""
        body = await read_json(request, _SMALL_BODY)
        device_id = refresh_request(body)
        await self._known_device(caller, device_id)
        self.export_requested(caller.owner_id, device_id, export_event(body))
        return JSONResponse({}, status_code=202)

    async def inbox_export(self, request: Request, caller: Caller) -> Response:
        """The deprecated form of /inbox/refresh."""
        body = await read_json(request, _SMALL_BODY)
        device_id = export_request(body)
        await self._known_device(caller, device_id)
        self.export_requested(caller.owner_id, device_id, export_event(body))
        return JSONResponse({}, status_code=202, headers={"Deprecation": "true"})

    async def _known_device(self, caller: Caller, device_id: str) -> None:
        if device_id and device_id not in {d.id for d in await self.devices.list(caller.owner_id)}:
            raise InvalidArgument("deviceId", "not one of your devices")

    async def not_implemented(self, request: Request, caller: Caller) -> Response:
        """/inbox and /logs: as SMSGate's server (only its phones' local server has them)."""
        what = "Inbox" if request.url.path.rstrip("/").endswith("/inbox") else "Logs"
        return JSONResponse({"message": f"{what} API is not implemented on this server"}, status_code=501)


def _query_int(raw: str | None, name: str, low: int, high: int, default: int) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidArgument(name, f"must be an integer {low}..{high}") from None
    if not low <= value <= high:
        raise InvalidArgument(name, f"must be an integer {low}..{high}")
    return value


def _query_time(raw: str | None, name: str) -> datetime | None:
    return None if raw is None else parse_time(raw, name)


def _error(exc: Exception) -> Response:
    if isinstance(exc, InvalidArgument):
        message = "; ".join(f"{field}: {reason}" for field, reason in exc.violations)
    else:
        message = str(exc) if isinstance(exc, SmsgwError) else "internal error"
    status = next((code for kind, code in _STATUS.items() if isinstance(exc, kind)), 500)
    headers = {"Retry-After": str(max(1, round(exc.retry_after)))} if isinstance(exc, ResourceExhausted) else None
    return JSONResponse({"message": message}, status_code=status, headers=headers)


def build_app(api: SmsgateApi, mobile: MobileApi | None = None) -> Starlette:
    """The app: `/3rdparty/v1/...`, also under `/api/3rdparty/v1/...` (the private-server
    layout SMSGate documents), and `/health*` at the root; with `mobile`, the app's API under
    `/mobile/v1` and `/api/mobile/v1`."""

    def answered(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:  # noqa: BLE001 — every failure is an answer
                if not isinstance(exc, SmsgwError):
                    log.exception("SMSGate API handler failed")
                return _error(exc)

        return endpoint

    def guarded(scope: Scope, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def authorised(request: Request) -> Response:
            return await handler(request, await api.caller(request, scope))

        return answered(authorised)

    health = [Route(path, api.health) for path in ("/health", "/health/live", "/health/ready", "/health/startup")]
    thirdparty = [
        *health,
        *(Route(path, guarded(Scope.MESSAGES_SEND, api.send), methods=["POST"]) for path in ("/messages", "/message")),
        Route("/messages", guarded(Scope.MESSAGES_LIST, api.list), methods=["GET"]),
        *(Route(f"{path}/{{id}}", guarded(Scope.MESSAGES_READ, api.get), methods=["GET"]) for path in ("/messages", "/message")),
        *(Route(f"{path}/{{id}}", guarded(Scope.MESSAGES_SEND, api.cancel), methods=["DELETE"])
          for path in ("/messages", "/message")),
        *(Route(path, guarded(Scope.DEVICES_LIST, api.devices_list), methods=["GET"]) for path in ("/devices", "/device")),
        Route("/devices/{id}", guarded(Scope.DEVICES_DELETE, api.devices_delete), methods=["DELETE"]),
        Route("/auth/token", guarded(Scope.TOKENS_MANAGE, api.token_issue), methods=["POST"]),
        Route("/auth/token/refresh", api.token_refresh, methods=["POST"]),
        Route("/auth/token/{jti}", guarded(Scope.TOKENS_MANAGE, api.token_revoke), methods=["DELETE"]),
        # SMSGate's inbox:refresh is smsgw's messages:export; the TypeScript client's exportInbox
        # calls /inbox/export, which SMSGate's server lacks: answered here as /messages/inbox/export.
        Route("/inbox/refresh", guarded(Scope.MESSAGES_EXPORT, api.inbox_refresh), methods=["POST"]),
        *(Route(path, guarded(Scope.MESSAGES_EXPORT, api.inbox_export), methods=["POST"])
          for path in ("/messages/inbox/export", "/inbox/export")),
        Route("/inbox", guarded(Scope.MESSAGES_LIST, api.not_implemented), methods=["GET"]),
        Route("/logs", guarded(Scope.LOGS_READ, api.not_implemented), methods=["GET"]),
    ]
    if api.webhooks is not None:
        thirdparty += [
            Route("/webhooks", guarded(Scope.WEBHOOKS_LIST, api.webhooks_list), methods=["GET"]),
            Route("/webhooks", guarded(Scope.WEBHOOKS_WRITE, api.webhooks_create), methods=["POST"]),
            Route("/webhooks/{id}", guarded(Scope.WEBHOOKS_DELETE, api.webhooks_delete), methods=["DELETE"]),
        ]
    if api.settings is not None:
        thirdparty += [
            Route("/settings", guarded(Scope.SETTINGS_READ, api.settings_get), methods=["GET"]),
            Route("/settings", guarded(Scope.SETTINGS_WRITE, api.settings_put), methods=["PUT"]),
            Route("/settings", guarded(Scope.SETTINGS_WRITE, api.settings_patch), methods=["PATCH"]),
        ]
    phones = mobile_routes(mobile, answered) if mobile is not None else []
    return Starlette(routes=[
        *health, Mount("/3rdparty/v1", routes=thirdparty), Mount("/api/3rdparty/v1", routes=thirdparty),
        *(Mount(base, routes=phones) for base in ("/mobile/v1", "/api/mobile/v1") if phones),
    ])
