"""The bridge's websockets.trio server: credentials checked before the upgrade, then one
`run_session` per phone.

`serve(...)` calls `task_status.started(BridgeServer)` only once it is listening, so callers
write `bridge = await nursery.start(serve, ...)` and read `bridge.port`.
"""

from __future__ import annotations

import hmac
import logging
import ssl
import weakref
from dataclasses import dataclass
from http import HTTPStatus

import trio
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.trio.server import Server, ServerConnection
from websockets.trio.server import serve as ws_serve

from device_bridge.protocol import PRIVATE_TOKEN_HEADER, SUBPROTOCOLS
from device_bridge.session_task import Admission, BridgeContext, run_session
from gateway.types import utcnow

__all__ = ["BridgeServer", "serve", "DEVICE_PATH", "PRIVATE_TOKEN_HEADER", "SERVICE_RESTART"]

log = logging.getLogger(__name__)

DEVICE_PATH = "/device/v1"
# RFC 6455 1012: the phone reconnects after a short random delay (not 1001, "going away").
SERVICE_RESTART = 1012


@dataclass
class BridgeServer:
    server: Server
    port: int
    ctx: BridgeContext

    async def aclose(self) -> None:
        """Stop listening, close sessions with 1012; their cleanup requeues unaccepted messages."""
        await self.server.aclose(close_connections=True, code=SERVICE_RESTART, reason="bridge restarting")


def _refuse(ws: ServerConnection, status: HTTPStatus, text: str) -> Response:
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

    async def process_request(ws: ServerConnection, request: Request) -> Response | None:
        path = request.path.partition("?")[0]
        if path != DEVICE_PATH:
            return _refuse(ws, HTTPStatus.NOT_FOUND, f"phones connect to {DEVICE_PATH}")
        offered = {p.strip() for v in request.headers.get_all("Sec-WebSocket-Protocol") for p in v.split(",")}
        if not offered & set(SUBPROTOCOLS):
            ctx.metrics.handshakes.labels("bad_subprotocol").inc()
            return _refuse(ws, HTTPStatus.BAD_REQUEST, "offer subprotocol " + " or ".join(SUBPROTOCOLS))
        admission = await _admit(ctx, request.headers, _peer_host(ws))
        if admission is None:
            ctx.metrics.handshakes.labels("bad_credentials").inc()
            return _refuse(ws, HTTPStatus.UNAUTHORIZED, "bad or missing device credentials")
        admissions[ws] = admission
        return None

    async def handler(ws: ServerConnection) -> None:
        admission = admissions.pop(ws)
        await run_session(ctx, ws, admission)

    settings = ctx.settings
    kwargs = dict(listeners=listeners) if listeners is not None else dict(host=host, port=port)
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(
            lambda task_status: ws_serve(
                handler,
                subprotocols=list(SUBPROTOCOLS),
                process_request=process_request,
                compression=None,  # permessage-deflate costs 2.5x memory per session
                open_timeout=settings.open_timeout,
                # Keepalive is the session's own (session_task.keepalive), so that a missed
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
        ctx.bus.attach_bridge(ctx.registry.wake, ctx.registry.revoke, ctx.registry.settings_changed)
        task_status.started(BridgeServer(server, bound, ctx))


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
        identity = await trio.to_thread.run_sync(ctx.devices.authenticate, credential)
        return Admission(identity, None, source) if identity else None
    if scheme == "Pairing":
        # Private mode (DESIGN "Pairing"): the code alone does not register a phone.
        offered = headers.get(PRIVATE_TOKEN_HEADER, "")
        if ctx.private_token and not hmac.compare_digest(offered.encode(), ctx.private_token.encode()):
            return None
        valid = await trio.to_thread.run_sync(ctx.devices.pairing_code_valid, credential, utcnow())
        return Admission(None, credential, source) if valid else None
    return None
