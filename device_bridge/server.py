"""The bridge's websockets.trio server: credentials checked before the upgrade, then one
`run_session` per phone.

`serve(...)` calls `task_status.started(BridgeServer)` only once it is listening, so callers
write `bridge = await nursery.start(serve, ...)` and read `bridge.port`.
"""

from __future__ import annotations

import hmac
import random
import threading
import logging
import ssl
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from http import HTTPStatus

import trio
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.trio.server import Server, ServerConnection
from websockets.trio.server import serve as ws_serve

from device_bridge.keepalive import Keepalive
from device_bridge.protocol import PRIVATE_TOKEN_HEADER, SUBPROTOCOLS
from device_bridge.registry import SessionHandle
from device_bridge.session_task import SERVICE_RESTART, Admission, BridgeContext, run_session
from gateway.devices.repository import hash_secret
from gateway.types import utcnow

__all__ = ["BridgeServer", "serve", "DEVICE_PATH", "PRIVATE_TOKEN_HEADER", "SERVICE_RESTART"]

log = logging.getLogger(__name__)

DEVICE_PATH = "/device/v1"


@dataclass
class BridgeServer:
    server: Server
    port: int
    ctx: BridgeContext

    async def aclose(self) -> None:
        """Stop listening, close sessions with 1012; their cleanup requeues unaccepted messages."""
        await self.server.aclose(close_connections=True, code=SERVICE_RESTART, reason="bridge restarting")


class _Opening:
    """Sessions between the upgrade request and the Welcome, capped (bridge.max_opening).

    Opening a session costs storage work (credentials, presence, requeue, a first dispatch
    round). When 10,000 phones reconnect at once, taking them all on means each open is
    slowed until their handshakes time out and they retry: nobody gets in. Past the cap a
    phone is answered 503 with Retry-After at once and comes back a few seconds later.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.count = 0
        self._lock = threading.Lock()  # release may run from a finalizer, on any thread

    def take(self) -> Callable[[], None] | None:
        """A slot, as the function that gives it back (idempotent), or None when full."""
        with self._lock:
            if self.count >= self.cap:
                return None
            self.count += 1
        given_back = False

        def release() -> None:
            nonlocal given_back
            with self._lock:
                if not given_back:
                    given_back = True
                    self.count -= 1

        return release


def _refuse(ctx: BridgeContext, ws: ServerConnection, status: HTTPStatus, text: str) -> Response:
    ctx.metrics.upgrades_refused.labels(str(status.value)).inc()
    response = ws.respond(status, text + "\n")
    if status == HTTPStatus.UNAUTHORIZED:
        response.headers["WWW-Authenticate"] = 'Bearer realm="smsgw-device"'
    return response


async def serve(
    ctx: BridgeContext,
    host: str,
    port: int,
    *,
    listeners: list[trio.SocketListener] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    task_status: trio.TaskStatus[BridgeServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve phone sessions until cancelled (the caller calls `aclose()` first to drain).

    With `ssl_context` the phones connect over WSS; the TLS handshake counts against
    `open_timeout`, so a client that stalls it cannot hold a connection open.
    """
    # Keyed by the connection object and held weakly: an upgrade that websockets refuses
    # after process_request (bad handshake headers, timeout) leaves nothing behind.
    admissions: weakref.WeakKeyDictionary[ServerConnection, Admission] = weakref.WeakKeyDictionary()
    opening = _Opening(ctx.settings.max_opening)
    keepalive = Keepalive(ctx.settings.ping_interval, ctx.settings.ping_timeout)

    async def process_request(ws: ServerConnection, request: Request) -> Response | None:
        path = request.path.partition("?")[0]
        if path != DEVICE_PATH:
            return _refuse(ctx, ws, HTTPStatus.NOT_FOUND, f"phones connect to {DEVICE_PATH}")
        offered = {p.strip() for v in request.headers.get_all("Sec-WebSocket-Protocol") for p in v.split(",")}
        if not offered & set(SUBPROTOCOLS):
            ctx.metrics.handshakes.labels("bad_subprotocol").inc()
            return _refuse(ctx, ws, HTTPStatus.BAD_REQUEST, "offer subprotocol " + " or ".join(SUBPROTOCOLS))
        release = opening.take()
        if release is None:  # a reconnect storm: say "later" at once rather than time out
            ctx.metrics.handshakes.labels("busy").inc()
            response = _refuse(ctx, ws, HTTPStatus.SERVICE_UNAVAILABLE, "too many sessions opening; retry")
            response.headers["Retry-After"] = str(random.randint(1, 5))
            return response
        weakref.finalize(ws, release)  # an upgrade websockets refuses later never reaches the handler
        try:
            admission = await _admit(ctx, request.headers, _peer_host(ws))
        except BaseException:
            release()
            raise
        if admission is None:
            release()
            ctx.metrics.handshakes.labels("bad_credentials").inc()
            return _refuse(ctx, ws, HTTPStatus.UNAUTHORIZED, "bad or missing device credentials")
        admissions[ws] = replace(admission, opened=release)
        return None

    async def handler(ws: ServerConnection) -> None:
        admission = admissions.pop(ws)
        await run_session(ctx, ws, admission, keepalive)

    settings = ctx.settings
    kwargs = dict(listeners=listeners) if listeners is not None else dict(host=host, port=port)
    async with trio.open_nursery() as nursery:
        await nursery.start(keepalive.run)  # one timer pings every session
        server: Server = await nursery.start(
            lambda task_status: ws_serve(
                handler,
                subprotocols=list(SUBPROTOCOLS),
                process_request=process_request,
                compression=None,  # permessage-deflate costs 2.5x memory per session
                open_timeout=settings.open_timeout,
                # Keepalive is the bridge's own (device_bridge.keepalive), so that a missed
                # pong ends the session at once instead of after close_timeout.
                ping_interval=None,
                close_timeout=settings.close_timeout,
                max_size=settings.max_size,
                logger=logging.getLogger("device_bridge.websockets"),
                ssl=ssl_context,
                task_status=task_status,
                **kwargs,
            )
        )
        bound = server.listeners[0].socket.getsockname()[1]

        def revoked(device_ids: Iterable[str]) -> None:
            device_ids = list(device_ids)
            ctx.tokens.forget(device_ids)  # refused with 401 from now on
            ctx.registry.revoke(device_ids)

        def replaced(sessions: dict[str, str]) -> None:
            """Another bridge opened a session of these devices: ours ends (4003) if storage
            says the other one is the live one (a late signal must not end a newer session here)."""
            for device_id, session_id in sessions.items():
                handle = ctx.registry.current(device_id)
                if handle is not None and handle.session_id != session_id:
                    trio.lowlevel.spawn_system_task(_end_if_stale, ctx, handle)

        ctx.bus.attach_bridge(
            ctx.registry.wake, revoked, ctx.registry.settings_changed, ctx.registry.queued, on_replaced=replaced
        )
        nursery.start_soon(_load_tokens, ctx)  # after attach: a delete from here on is heard
        task_status.started(BridgeServer(server, bound, ctx))


async def _end_if_stale(ctx: BridgeContext, handle: SessionHandle) -> None:
    try:
        live = await trio.to_thread.run_sync(ctx.devices.session_of, handle.device_id)
    except Exception:
        log.exception("could not read which session of a device is live; keeping ours")
        return
    if live != handle.session_id and ctx.registry.current(handle.device_id) is handle:
        log.info("= session of device %s replaced on another bridge", handle.device_id)
        handle.replace()


async def _load_tokens(ctx: BridgeContext) -> None:
    """Every device's token into the cache, so phones reconnecting after a restart read none
    (until it is loaded they are checked one by one, as a token not in it is)."""
    generation = ctx.tokens.generation
    try:
        entries = await trio.to_thread.run_sync(ctx.devices.token_identities, ctx.tokens.limit)
    except Exception as exc:  # the bridge serves on; each token is then read when it comes
        log.warning("device tokens not loaded (%s); checking them one by one", type(exc).__name__)
        return
    ctx.tokens.load(entries, generation)
    log.info("%d device tokens loaded", len(ctx.tokens))


def _peer_host(ws: ServerConnection) -> str:
    try:
        return str(ws.remote_address[0])
    except (OSError, TypeError, IndexError, NotImplementedError):  # in-memory test streams
        return "unknown"


async def _admit(ctx: BridgeContext, headers: Headers, source: str) -> Admission | None:
    scheme, _, credential = headers.get("Authorization", "").partition(" ")
    credential = credential.strip()
    if not credential:
        return None
    if scheme == "Bearer":
        token_hash = hash_secret(credential)
        identity = ctx.tokens.get(token_hash)
        if identity is None:  # not seen since the bridge started (or forgotten): read it
            generation = ctx.tokens.generation
            identity = await trio.to_thread.run_sync(ctx.devices.authenticate, credential)
            if identity is not None:
                ctx.tokens.put(token_hash, identity, generation)
        return Admission(identity, None, source, token_hash=token_hash) if identity else None
    if scheme == "Pairing":
        # Private mode (DESIGN "Pairing"): the code alone does not register a phone.
        offered = headers.get(PRIVATE_TOKEN_HEADER, "")
        if ctx.private_token and not hmac.compare_digest(offered.encode(), ctx.private_token.encode()):
            return None
        valid = await trio.to_thread.run_sync(ctx.devices.pairing_code_valid, credential, utcnow())
        return Admission(None, credential, source) if valid else None
    return None
