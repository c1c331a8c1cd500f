"""The parts of `smsgw serve` as separate processes on one PostgreSQL (issue 16):
`smsgw gateway` (the gRPC API), `smsgw bridge` (phone sessions and their dispatch), `smsgw
worker` (webhook deliveries, expiry, purges, dead bridges), and `smsgw db upgrade` (the schema and the
first account, before any of them starts).

Each role reads the same settings tree as `serve`, talks to the others only through the
database and the PostgreSQL bus (gateway/bus/postgres.py), and refuses SQLite (one process per
SQLite file: that is `smsgw serve`) and a schema older than its code. What is and is not done
yet for running several of each is in docs/deploy.md and docs/scale-out-plan.md.

Like app.py, this module is a composition root: it may import the bridge.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable

import trio

from device_bridge.follower import follow_event_log
from device_bridge.lease import BridgeLease
from device_bridge.metrics import BridgeMetrics
from device_bridge.registry import SessionRegistry
from device_bridge.session_task import BridgeContext
from gateway.otp.keys import KEY_FILE as OTP_KEY_FILE
from gateway.otp.keys import load_keys
from gateway.app import (
    _GatewayThread, _write_json, check_push_credentials, ensure_admin_account, join_hostport, listen_for_phones,
    prepare_data_dir, split_hostport, start_metrics, storage_check, token_codec, until_stopped,
)
from gateway.metrics_storage import BacklogCollector, StorageMetrics
from gateway.observability import Readiness, new_registry
from gateway.auth.repository import AuthRepository
from gateway.auth.tokens import JwtKeys, TokenCodec
from gateway.bus.postgres import PostgresBus
from gateway.config import Settings
from gateway.devices.repository import DeviceRepository
from gateway.inbound.repository import InboundRepository
from gateway.messages.repository import MessageRepository
from gateway.storage.engine import Database
from gateway.tls import bridge_ssl_context, check_plaintext_allowed

__all__ = ["ROLES", "open_shared_database", "upgrade_database", "run_gateway", "run_bridge", "run_worker"]

log = logging.getLogger(__name__)

ROLES = ("gateway", "bridge", "worker")
_JWT_FILE = "jwt.secret"

Announce = Callable[[str], None]


def open_shared_database(settings: Settings, role: str) -> Database:
    """The role's database: PostgreSQL, at the schema this code needs (ValueError otherwise,
    saying what to do)."""
    url = settings.database_url
    if url.startswith("sqlite"):
        raise ValueError(
            f"needs PostgreSQL (database.url, e.g. postgresql+psycopg://user@host/smsgw): "
            "a SQLite file serves one process, run `smsgw serve` for that"
        )
    db = Database(url)
    try:
        current, head = db.schema_revisions()
    except Exception:
        db.close()
        raise
    if current != head:
        db.close()
        raise ValueError(
            f"the database schema is at revision {current or 'none'} and this smsgw needs {head}: "
            "run `smsgw db upgrade` (with the same database.url) first"
        )
    return db


def upgrade_database(settings: Settings, announce: Announce = print) -> None:
    """`smsgw db upgrade`: migrate to the newest schema (one runner at a time on PostgreSQL),
    and on first use create the admin account and, unless JWT keys are configured, the
    HS256 secret in the data directory, which every gateway must then share."""
    prepare_data_dir(settings)
    db = Database(settings.database_url, sqlite_synchronous=settings.database.sqlite_synchronous)
    try:
        before, head = db.schema_revisions()
        db.migrate()
        announce(f"schema at revision {head}" + ("" if before == head else f" (was {before or 'empty'})"))
        password_path, created = ensure_admin_account(AuthRepository(db), settings.data_dir)
        if created:
            announce(f"created account admin; its password is in {password_path} (smsgw login)")
        if settings.jwt.algorithm == "HS256" and not settings.jwt.secret:
            path = settings.data_dir / _JWT_FILE
            existed = path.exists()
            JwtKeys.from_settings(settings.jwt, settings.data_dir)  # made once, 0600
            if not existed:
                announce(f"created the JWT secret {path}: every smsgw gateway needs it (or set jwt.secret)")
        if not settings.otp.secret and not (settings.data_dir / OTP_KEY_FILE).exists():
            load_keys(settings.otp, settings.data_dir)  # made once, 0600
            announce(f"created the OTP key {settings.data_dir / OTP_KEY_FILE}: every smsgw gateway and bridge "
                     "needs it (or set otp.secret)")
    finally:
        db.close()


def _codec(settings: Settings) -> TokenCodec:
    """The gateway's token keys, which must be the same on every gateway: configured (jwt.secret,
    ES256 files) or the data directory's secret that `smsgw db upgrade` made. A gateway never
    makes its own (a second gateway would reject the first one's tokens)."""
    if settings.jwt.algorithm == "HS256" and not settings.jwt.secret and not (settings.data_dir / _JWT_FILE).exists():
        raise ValueError(
            f"no JWT key: set jwt.secret (SMSGW_JWT__SECRET) on every gateway, or copy the {_JWT_FILE} "
            f"that `smsgw db upgrade` made into {settings.data_dir}"
        )
    return token_codec(settings, JwtKeys.from_settings(settings.jwt, settings.data_dir))


def _start_bus(settings: Settings, *, delivers_webhooks: bool = False) -> PostgresBus:
    bus = PostgresBus(settings.database_url, delivers_webhooks=delivers_webhooks)
    try:
        bus.start()
    except OSError:
        bus.close()
        raise
    return bus


async def run_gateway(settings: Settings, *, announce: Announce = print) -> None:
    """`smsgw gateway`: the gRPC API. Messages are stored PENDING for their phone and the
    bridge holding its session claims them (no claim at create across processes)."""
    await _run_asyncio_role(settings, "gateway", announce, api=True)


async def run_worker(settings: Settings, *, announce: Announce = print) -> None:
    """`smsgw worker`: webhook deliveries (claimed with FOR UPDATE SKIP LOCKED: any number of
    workers), wake-up pushes (each phone claimed by one worker), and, on the one worker holding
    the leader lock, the expiry sweep, the hourly purges and the reaping of dead bridges."""
    await _run_asyncio_role(settings, "worker", announce, api=False)


async def _run_asyncio_role(settings: Settings, role: str, announce: Announce, *, api: bool) -> None:
    check_plaintext_allowed(settings)
    if not api:  # the worker sends the wake-up pushes
        check_push_credentials(settings)
    db = open_shared_database(settings, role)
    try:
        prepare_data_dir(settings)
        # A worker signs and verifies no token (its AuthService only purges and re-reads the
        # deny lists): a throwaway key, so it needs none of the gateways' keys.
        codec = _codec(settings) if api else token_codec(settings, JwtKeys.hs256(secrets.token_urlsafe(32), ()))
        bus = _start_bus(settings, delivers_webhooks=not api)
    except BaseException:
        db.close()
        raise
    registry = new_registry()
    StorageMetrics(registry).attach(db)
    if not api:  # the database's backlogs, from one kind of process (the workers)
        registry.register(BacklogCollector(db))
    thread = _GatewayThread(
        settings, db, bus, registry, codec, claims=None, api=api, jobs=not api,
        otp_keys=load_keys(settings.otp, settings.data_dir, create=False) if api else None,
    )
    endpoints_file = settings.data_dir / "endpoints.json"
    metrics_server = None
    readiness = Readiness()
    readiness.add("storage", storage_check(db))
    try:
        grpc_port = await trio.to_thread.run_sync(thread.start)
        metrics_server, metrics_url = start_metrics(settings, registry, readiness)
        endpoints = {"metrics": metrics_url}
        if api:
            grpc_host, _ = split_hostport(settings.grpc.listen)
            endpoints["grpc"] = join_hostport(grpc_host, grpc_port)
            if thread.smsgate_url:
                endpoints["smsgate"] = thread.smsgate_url
        _write_json(endpoints_file, endpoints)
        announce(f"smsgw {role} running  " + "  ".join(f"{k} {v}" for k, v in sorted(endpoints.items())))
        await until_stopped(announce, f"smsgw {role}", readiness)
        if api:
            await trio.to_thread.run_sync(thread.begin_shutdown)
    finally:
        endpoints_file.unlink(missing_ok=True)
        await trio.to_thread.run_sync(thread.stop)
        if metrics_server is not None:
            metrics_server.shutdown()
        bus.close()
        db.close()


async def run_bridge(settings: Settings, *, announce: Announce = print) -> None:
    """`smsgw bridge`: phone sessions. It never marks other bridges' phones offline at start
    (`serve` does: it owns every phone), and after its bus listener reconnects it reloads
    every session's queue (wake-ups sent meanwhile were lost). Its heartbeat (device_bridge/
    lease.py) lets the worker take its phones offline if it dies without closing them."""
    check_plaintext_allowed(settings)
    bridge_ssl = bridge_ssl_context(settings.bridge)
    db = open_shared_database(settings, "bridge")
    try:
        prepare_data_dir(settings)
        bus = _start_bus(settings)
    except BaseException:
        db.close()
        raise
    registry = new_registry()
    StorageMetrics(registry).attach(db)
    token = trio.lowlevel.current_trio_token()
    sessions = SessionRegistry()
    lease = BridgeLease(
        settings.database_url, interval=settings.bridge.heartbeat_interval,
        on_lost=lambda: token.run_sync_soon(sessions.lose_lease),
    )
    ctx = BridgeContext(
        messages=MessageRepository(db, settings.scheduler, fence=True),
        devices=DeviceRepository(db),
        inbound=InboundRepository(db),
        bus=bus,
        settings=settings.bridge,
        metrics=BridgeMetrics(registry),
        registry=sessions,
        private_token=settings.gateway.private_token if settings.gateway.mode == "private" else "",
        bridge_id=lease.id,
        otp_keys=load_keys(settings.otp, settings.data_dir, create=False),
    )

    def reload_all() -> None:  # on the trio thread
        ctx.registry.wake(ctx.registry.device_ids())

    bus.on_gap(lambda: token.run_sync_soon(reload_all))
    endpoints_file = settings.data_dir / "endpoints.json"
    metrics_server = None
    try:
        # Alive in storage before the first phone: the worker reaps its phones if it dies.
        await trio.to_thread.run_sync(lease.start)
        readiness = Readiness()
        readiness.add("storage", storage_check(db))
        listening: list[str] = []
        readiness.add("phones", lambda: "" if listening else "not listening yet")
        metrics_server, metrics_url = start_metrics(settings, registry, readiness)
        async with trio.open_nursery() as nursery:
            bridge, device = await listen_for_phones(nursery, ctx, settings, bridge_ssl)
            listening.append(device)
            nursery.start_soon(follow_event_log, ctx)  # wake-ups lost on the bus
            _write_json(endpoints_file, {"device": device, "metrics": metrics_url})
            announce(f"smsgw bridge running  phones {device}  metrics {metrics_url}")
            await until_stopped(announce, "smsgw bridge", readiness)
            with trio.move_on_after(settings.bridge.shutdown_grace):
                await bridge.aclose()
            nursery.cancel_scope.cancel()
    finally:
        endpoints_file.unlink(missing_ok=True)
        bus.detach_bridge()
        await trio.to_thread.run_sync(lease.close)
        if metrics_server is not None:
            metrics_server.shutdown()
        bus.close()
        db.close()
