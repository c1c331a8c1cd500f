"""`smsgw serve`: gateway (asyncio, its own thread) + bridge and jobs (trio, main thread),
one SQLite database, one LocalBus.

This module and the CLI are the composition root: the only core modules that import the
bridge, to run it in the same process (docs/design.md, "Dependency direction").
"""

from __future__ import annotations

import asyncio
import fcntl
import gc
import json
from datetime import timedelta
import logging
import os
import secrets
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Any

import trio
from prometheus_client import CollectorRegistry

from device_bridge.metrics import BridgeMetrics
from device_bridge.registry import SessionRegistry
from gateway.messages.claims import ClaimTargets
from device_bridge.server import BridgeServer
from device_bridge.server import serve as serve_bridge
from device_bridge.session_task import BridgeContext
from gateway.addresses import join_hostport, split_hostport
from gateway.api.devices import PhoneUrl
from gateway.api.server import GrpcServer, start_grpc_server
from gateway.compat.smsgate.app import SmsgateApi, build_app
from gateway.compat.smsgate.settings import SettingsStore
from gateway.compat.smsgate.webhooks import SmsgateWebhooks
from gateway.compat.smsgate.mobile import MobileApi
from gateway.compat.smsgate.mobile_phones import MobilePhones
from gateway.compat.smsgate.server import HttpFront
from gateway.otp.keys import OtpKeys, load_keys
from gateway.otp.repository import OtpRepository
from gateway.otp.service import OtpService
from gateway.auth.passwords import hash_password
from gateway.auth.repository import AuditEntry, AuthRepository
from gateway.auth.scopes import ALL_SCOPES
from gateway.auth.service import AuthService
from gateway.auth.tokens import JwtKeys, TokenCodec
from gateway.bus import LocalBus
from gateway.bus.postgres import PostgresBus
from gateway.config import Settings
from gateway.devices.reaper import reap_dead_bridges
from gateway.devices.repository import DeviceRepository
from gateway.devices.service import DeviceService
from gateway.events.ring import RING_CAPACITY, EventRing
from gateway.events.tail import read_tail
from gateway.inbound.repository import InboundRepository
from gateway.inbound.service import InboundService
from gateway.messages.repository import MessageRepository
from gateway.messages.service import EventFeed, MessageService
from gateway.metrics import GatewayMetrics
from gateway.metrics_storage import BacklogCollector, StorageMetrics
from gateway.observability import MetricsServer, Readiness, new_registry, serve_metrics
from gateway.push.fcm import FcmSender, load_service_account
from gateway.push.wakes import Waker, WakeStore
from gateway.private_files import create_private_file, ensure_private_dir, tighten, write_private_file
from gateway.storage.engine import Database, sqlite_file
from gateway.storage.held_locks import Leadership
from gateway.tls import bridge_ssl_context, check_plaintext_allowed
from gateway.types import utcnow
from gateway.webhooks.repository import WebhookRepository
from gateway.webhooks.sender import WebhookSender
from gateway.webhooks.service import WebhookService
from gateway.webhooks.ssrf import Policy
from gateway.webhooks.outbox import ENQUEUED
from gateway.webhooks.worker import WebhookWorker

__all__ = [
    "serve", "ensure_admin_account", "split_hostport", "join_hostport", "prepare_data_dir", "token_codec",
    "start_metrics", "storage_check", "listen_for_phones", "until_stopped", "check_push_credentials",
]

log = logging.getLogger(__name__)

_TOKEN_PURGE_INTERVAL = 3600.0


def ensure_admin_account(auth: AuthRepository, data_dir: Path) -> tuple[Path, bool]:
    """First start: an account `admin` with every scope and a random password, written to
    DIR/admin.password (0600) for `smsgw login`. Returns (path, created).

    Runs again while no account has a password (e.g. owners migrated from the bootstrap
    token of earlier versions): the first of them gets the password.
    """
    path = data_dir / "admin.password"
    if auth.any_password_set():
        return path, False
    accounts = auth.list_accounts()
    password = secrets.token_urlsafe(18)
    hashed = hash_password(password)
    if accounts:
        auth.update_account(accounts[0].username, utcnow(), password_hash=hashed, scopes=ALL_SCOPES)
    else:
        auth.create_account("admin", hashed, ALL_SCOPES, utcnow(), AuditEntry("account.create", actor="admin", source="serve"))
    write_private_file(path, password + "\n")
    return path, True


class ListenError(OSError):
    """A port that cannot be bound, in one line naming its setting."""


class _WakeOverBus(WebhookWorker):
    """The webhook worker of a gateway that delivers nothing itself (`smsgw gateway`, issue
    16): what would wake its loop (a webhook enabled, a delivery replayed) wakes the worker
    processes instead, through the bus's events signal they follow. Test pings are still sent
    from here (the caller waits for the answer)."""

    def __init__(self, bus: LocalBus, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._bus = bus

    def wake(self) -> None:
        ENQUEUED.set()  # the bus hands it to the workers with the events signal
        self._bus.notify_events()


class _GatewayThread:
    """Runs the asyncio loop in its own thread: the gRPC API (with its event ring) when `api`,
    the webhook deliveries and the sweeps (expiry, purges) when `jobs`; `smsgw serve` runs
    both, `smsgw gateway` the API alone, `smsgw worker` the jobs alone (gateway/roles.py).
    The token deny lists are re-read in every shape (revocations made elsewhere)."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        bus: LocalBus,
        registry: CollectorRegistry,
        codec: TokenCodec,
        *,
        event_ring_capacity: int = RING_CAPACITY,
        claims: ClaimTargets | None = None,
        api: bool = True,
        jobs: bool = True,
        otp_keys: OtpKeys | None = None,
    ) -> None:
        self.api, self.jobs = api, jobs
        self.settings = settings
        self.claims = claims
        self.event_ring_capacity = event_ring_capacity
        self.codec = codec
        self.db = db
        self.bus = bus
        self.metrics = GatewayMetrics(registry)
        self.loop = asyncio.new_event_loop()
        self.started = threading.Event()
        self.error: BaseException | None = None
        self.grpc: GrpcServer | None = None
        self.phone_url = PhoneUrl(settings.bridge.public_url)  # `bound` is set once the bridge listens
        self.smsgate: HttpFront | None = None  # SMSGate's API (compat.smsgate.listen), when on
        self.smsgate_url = ""
        self.phones: MobilePhones | None = None  # the SMSGate app's phones (its mobile API)
        self.otp_keys: OtpKeys | None = otp_keys
        self._stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._run, name="smsgw-gateway", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as exc:  # reported to the main thread
            self.error = exc
            self.started.set()
        finally:
            self.loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        message_repo = self.message_repo = MessageRepository(self.db, self.settings.scheduler, claims=self.claims)
        auth_repo = AuthRepository(self.db)
        messages = MessageService(message_repo, self.bus, self.metrics, daily_segments=self.settings.limits.daily_segments)
        auth = AuthService(auth_repo, self.codec, self.settings, metrics=self.metrics)
        await auth.refresh_revocations()
        self._reread = asyncio.Event()  # re-read the deny lists now (another gateway revoked tokens)
        if self.api and isinstance(self.bus, PostgresBus):  # `smsgw gateway`: revocations cross gateways
            loop = asyncio.get_running_loop()
            auth.on_revoked = self.bus.notify_auth
            self.bus.on_auth(lambda: loop.call_soon_threadsafe(self._reread.set))
        webhooks, worker, sender = self._webhooks()
        # `smsgw worker`s share the webhook deliveries; one of them (the leader) runs the sweeps.
        leader = Leadership(self.settings.database_url) if self.jobs and isinstance(self.bus, PostgresBus) else None
        tasks = [asyncio.create_task(self._jobs_forever(messages, auth, webhooks, leader))]
        if self.jobs:
            # The outbox's ENQUEUED flag: set by this process's commits, or, in `smsgw worker`,
            # by the PostgreSQL bus when another process's commit stored deliveries.
            self.bus.attach_gateway(worker.wake_if_enqueued)
            tasks.append(asyncio.create_task(worker.run()))
        push = self._push_sender() if self.jobs else None
        if push is not None:  # wake-up pushes for phones gone with work waiting (docs/push.md)
            waker = Waker(WakeStore(self.db), push, self.settings.fcm, self.metrics)
            self.bus.attach_gateway(waker.nudge)  # new work may be for a phone that is away
            tasks.append(asyncio.create_task(waker.run()))
        if self.api:
            # The watch streams read the ring; the bus wakes the ring, whose refill wakes them.
            self.feed = feed = EventFeed()
            ring = feed.ring = EventRing(
                partial(read_tail, self.db), capacity=self.event_ring_capacity, on_published=feed.notify
            )
            ring.reset(await messages.last_event_id())
            self.bus.attach_gateway(ring.wake)
            devices = DeviceService(
                DeviceRepository(self.db, wakes=self.settings.fcm.enabled), message_repo, auth_repo, self.bus,
                self.settings.jobs.pairing_code_ttl,
            )
            otp = OtpService(
                OtpRepository(self.db, self.settings.otp), self.otp_keys, messages, self.metrics, self.settings.limits,
                auth_repo,
            )
            self.grpc = await start_grpc_server(
                self.settings, messages, devices, feed, auth, self.metrics, webhooks,
                inbound=InboundService(InboundRepository(self.db)), otp=otp, phone_url=self.phone_url,
            )
            tasks.append(asyncio.create_task(ring.run()))
            await self._start_smsgate(messages, devices, auth, webhooks)
        self.started.set()
        await self._stop.wait()
        if self.smsgate is not None:
            if self.phones is not None:
                await self.phones.stop()  # ends the SSE streams, closes the phones' sessions
            await self.smsgate.stop()
        for task in tasks:
            task.cancel()  # a claimed webhook delivery in flight is sent again after restart (same webhook-id)
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.grpc is not None:
            await self.grpc.stop(self.settings.grpc.shutdown_grace)
        await sender.aclose()
        if push is not None:
            await push.aclose()
        if leader is not None:
            leader.close()

    async def _start_smsgate(
        self, messages: MessageService, devices: DeviceService, auth: AuthService, webhooks: WebhookService
    ) -> None:
        """SMSGate's third-party API on `compat.smsgate.listen`, when set (docs/smsgate.md)."""
        config = self.settings.compat.smsgate
        if not config.listen:
            return
        store = SettingsStore(self.db)  # one for the process: the mobile API reads it and hooks its on_change
        api = SmsgateApi(
            messages, devices, auth, self.settings.limits, region=config.default_region, storage=storage_check(self.db),
            settings=store, webhooks=SmsgateWebhooks(webhooks, store),
        )
        device_repo = DeviceRepository(self.db)
        self.phones = MobilePhones(
            device_repo, self.message_repo, self.bus, linger=config.phone_linger, keepalive=config.sse_keepalive,
            metrics=self.metrics, otp_keys=self.otp_keys,
        )
        gateway = self.settings.gateway
        mobile = MobileApi(
            self.phones, device_repo, auth, AuthRepository(self.db), InboundRepository(self.db), self.bus,
            mode=gateway.mode, private_token=gateway.private_token, settings_of=store.get,
        )
        # Settings and webhooks changed through the third-party API: the phones fetch them again.
        phones = self.phones
        store.on_change.append(
            lambda owner_id, what: phones.tell_owner(owner_id, "SettingsUpdated" if what == "settings" else "WebhooksUpdated")
        )
        api.export_requested = lambda owner_id, device_id, data: phones.tell_owner(
            owner_id, "MessagesExportRequested", json.dumps(data), device_id=device_id
        )
        host, port = split_hostport(config.listen)
        grpc = self.settings.grpc
        try:
            front = HttpFront(
                build_app(api, mobile), host, port, cert=grpc.tls_cert_file, key=grpc.tls_key_file,
                client_ca=grpc.tls_client_ca_file,  # mutual TLS as on gRPC
            )
        except OSError as exc:
            raise ListenError(f"cannot listen for the SMSGate API on {config.listen}: {exc.strerror or exc}") from None
        await front.start()
        self.phones.start()
        self.smsgate = front
        scheme = "https" if front.tls else "http"
        self.smsgate_url = f"{scheme}://{join_hostport(host, front.port)}/3rdparty/v1"

    def _push_sender(self) -> FcmSender | None:
        config = self.settings.fcm
        if config.credentials_file is None:
            return None
        return FcmSender(config.credentials_file, base_url=config.base_url, ttl_seconds=config.ttl)

    def _webhooks(self) -> tuple[WebhookService, WebhookWorker, WebhookSender]:
        config = self.settings.webhooks
        policy = Policy(allow_private=config.allow_private_targets, allow_http=config.allow_http)
        repo = WebhookRepository(self.db, config)
        sender = WebhookSender(policy, config.timeout, ca_file=config.ca_file, max_connections=config.concurrency * 4)
        if self.jobs:
            worker = WebhookWorker(repo, sender, config, self.metrics)
        else:
            worker = _WakeOverBus(self.bus, repo, sender, config, self.metrics)
        return WebhookService(repo, worker, policy), worker, sender

    async def _jobs_forever(
        self, messages: MessageService, auth: AuthService, webhooks: WebhookService, leader: Leadership | None
    ) -> None:
        """Expiry sweep, the token deny lists re-read (revocations from `smsgw users`, and at
        once when another gateway says it revoked tokens), and
        once an hour the expired token rows, the dispatch history past every pacing window
        and the finished webhook deliveries past their retention purged. With a `leader`
        (`smsgw worker`), only the worker holding it sweeps, and also reaps dead bridges."""
        loop = asyncio.get_running_loop()
        next_purge = loop.time()
        otp_repo = OtpRepository(self.db, self.settings.otp)
        while True:
            try:
                await asyncio.wait_for(self._reread.wait(), self.settings.jobs.expiry_interval)
            except TimeoutError:
                pass
            self._reread.clear()
            try:
                await auth.refresh_revocations()
                if not self.jobs or (leader is not None and not await asyncio.to_thread(leader.held)):
                    continue
                if leader is not None:
                    await self._reap_dead_bridges()
                await messages.expire_due()
                await self._expire_codes(otp_repo)
                if loop.time() >= next_purge:
                    next_purge = loop.time() + _TOKEN_PURGE_INTERVAL
                    await auth.purge_expired()
                    await messages.prune_dispatch_log()
                    await webhooks.prune(self.settings.webhooks.retention)
                    otp = self.settings.otp  # kept a day, or the longest send window if longer
                    keep = timedelta(seconds=max(86_400.0, otp.number_window, otp.prefix_window, otp.pumping_window))
                    await asyncio.to_thread(otp_repo.prune_sends, utcnow() - keep)
            except Exception:
                log.exception("background job failed; will retry")

    async def _expire_codes(self, repo: OtpRepository) -> None:
        """Pending verifications past expiry: EXPIRED, with their `otp:expired` webhooks."""
        expired = await asyncio.to_thread(repo.expire_due, utcnow())
        if expired:
            self.metrics.otp_expired.inc(expired)
            self.bus.notify_events()  # the webhook worker

    async def _reap_dead_bridges(self) -> None:
        """The phones of bridges that stopped beating, offline (gateway/devices/reaper.py)."""
        reaped = await asyncio.to_thread(
            reap_dead_bridges, DeviceRepository(self.db), self.message_repo,
            grace=self.settings.bridge.lease_grace, now=utcnow(),
        )
        if reaped.bridges:
            log.warning("reaped %d dead bridge(s): %d phone session(s) closed", len(reaped.bridges), reaped.devices)
            self.metrics.reaped_sessions.inc(reaped.devices)
            self.bus.notify_events()
            self.bus.notify_work(reaped.rerouted_to)

    def start(self) -> int:
        """Start the thread; returns the gRPC port (0 without the API)."""
        self.thread.start()
        self.started.wait()
        if isinstance(self.error, ListenError):
            raise self.error  # names its setting already
        if self.error is not None or (self.api and self.grpc is None):
            raise OSError(f"gRPC server failed to start: {self.error}") from self.error
        return self.grpc.port if self.grpc is not None else 0

    def begin_shutdown(self) -> None:
        """First step of a graceful stop (RELIABILITY 24): health NOT_SERVING for good, and
        WatchMessages streams end (clients resume from their cursor elsewhere)."""

        async def begin() -> None:
            assert self.grpc is not None
            await self.grpc.health.enter_graceful_shutdown()
            self.feed.close()

        if self.grpc is not None and not self.loop.is_closed():
            asyncio.run_coroutine_threadsafe(begin(), self.loop).result(timeout=5)

    def stop(self) -> None:
        if self._stop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(self.settings.grpc.shutdown_grace + 5)


@dataclass(frozen=True)
class Endpoints:
    grpc: str
    device: str
    metrics: str
    grpc_tls: bool = False  # the gRPC entry has no scheme; clients read TLS from here
    smsgate: str = ""  # SMSGate's third-party API base URL, when on


def check_push_credentials(settings: Settings) -> None:
    """With FCM on, its service-account file must be there and whole before anything starts
    (FcmConfigError, a ValueError naming the file: one line, exit 2)."""
    if settings.fcm.credentials_file is not None:
        load_service_account(settings.fcm.credentials_file)


def prepare_data_dir(settings: Settings) -> None:
    """The data directory and its files owner-only (an older version's or a hand-made one
    too), and anything else this process creates (a library's file)."""
    ensure_private_dir(settings.data_dir)
    tighten(_private_paths(settings), log)
    os.umask(0o077)


def token_codec(settings: Settings, keys: JwtKeys) -> TokenCodec:
    jwt = settings.jwt
    return TokenCodec(keys, issuer=jwt.issuer, audience=jwt.audience, leeway=jwt.leeway)


def start_metrics(settings: Settings, registry: CollectorRegistry, readiness: Readiness) -> tuple[MetricsServer, str]:
    """/metrics, /livez and /readyz on `metrics.listen` (gateway/observability.py): (the server,
    the metrics URL)."""
    host, port = split_hostport(settings.metrics.listen)
    server = serve_metrics(host, port, registry, readiness)
    return server, f"http://{join_hostport(host, server.port)}/metrics"


def storage_check(db: Database) -> Callable[[], str]:
    """/readyz's storage check: the database answers a query."""

    def check() -> str:
        with db.engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
        return ""

    return check


async def listen_for_phones(
    nursery: trio.Nursery, ctx: BridgeContext, settings: Settings, ssl_context: Any
) -> tuple[BridgeServer, str]:
    """Start the bridge on `bridge.listen`: (the server, the phones' URL). A port that cannot
    be bound is one OSError naming the setting."""
    host, port = split_hostport(settings.bridge.listen)
    try:
        bridge: BridgeServer = await nursery.start(partial(serve_bridge, ssl_context=ssl_context), ctx, host, port)
    except* OSError as group:
        first = group.exceptions[0]
        reason = getattr(first, "strerror", None) or first
        raise OSError(f"cannot listen for phones on {settings.bridge.listen}: {reason}") from None
    return bridge, f"{'ws' if ssl_context is None else 'wss'}://{join_hostport(host, bridge.port)}/device/v1"


async def until_stopped(announce: Callable[[str], None], name: str, readiness: Readiness) -> None:
    """Until SIGINT or SIGTERM, which `name` ("smsgw", "smsgw bridge") announces; from then on
    /readyz answers 503 (draining)."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            readiness.draining = True
            announce(f"{name}: {signal.Signals(signum).name}, shutting down")
            return


async def serve(settings: Settings, *, announce: Callable[[str], None] = print) -> None:
    """Run until SIGINT/SIGTERM, then shut down gracefully (bridge first, then gRPC)."""
    check_plaintext_allowed(settings)  # RELIABILITY 25, before anything listens
    check_push_credentials(settings)
    bridge_ssl = bridge_ssl_context(settings.bridge)  # gRPC's credentials: gateway.api.server
    data_dir = settings.data_dir
    prepare_data_dir(settings)
    lock = _lock_data_dir(data_dir)
    db = Database(settings.database_url, sqlite_synchronous=settings.database.sqlite_synchronous)
    db.migrate()
    devices = DeviceRepository(db)
    devices.mark_all_offline()
    password_path, created = ensure_admin_account(AuthRepository(db), data_dir)
    keys = JwtKeys.from_settings(settings.jwt, data_dir)
    codec = token_codec(settings, keys)

    registry = new_registry()
    StorageMetrics(registry).attach(db)
    registry.register(BacklogCollector(db))
    bus = LocalBus()
    claims = ClaimTargets()  # the bridge's sessions publish here; the gateway's creates claim on them
    otp_keys = load_keys(settings.otp, settings.data_dir)  # made once in DATA_DIR when not configured
    gateway = _GatewayThread(settings, db, bus, registry, codec, claims=claims, otp_keys=otp_keys)
    grpc_port = await trio.to_thread.run_sync(gateway.start)
    readiness = Readiness()
    readiness.add("storage", storage_check(db))
    readiness.add("phones", lambda: "" if gateway.phone_url.bound else "not listening yet")
    metrics_server, metrics_url = start_metrics(settings, registry, readiness)
    ctx = BridgeContext(
        messages=MessageRepository(db, settings.scheduler),
        devices=devices,
        inbound=InboundRepository(db),
        bus=bus,
        settings=settings.bridge,
        metrics=BridgeMetrics(registry),
        registry=SessionRegistry(),
        claims=claims,
        private_token=settings.gateway.private_token if settings.gateway.mode == "private" else "",
        otp_keys=otp_keys,
    )
    grpc_host, _ = split_hostport(settings.grpc.listen)
    try:
        async with trio.open_nursery() as nursery:
            bridge, device_url = await listen_for_phones(nursery, ctx, settings, bridge_ssl)
            endpoints = Endpoints(
                grpc=join_hostport(grpc_host, grpc_port),
                device=device_url,
                metrics=metrics_url,
                grpc_tls=settings.grpc.tls_cert_file is not None,
                smsgate=gateway.smsgate_url,
            )
            gateway.phone_url.bound = endpoints.device
            # Start-up objects (modules, ORM mappers, compiled statements) live for good: keep
            # them out of every collection, and collect the young generation less often (the
            # hot paths allocate many short-lived ORM objects; ~15 % of a bulk call's CPU).
            gc.freeze()
            gc.set_threshold(10_000, 20, 20)
            # A thread running pure Python (a big call's validation) hands the GIL over after
            # this long: 1 ms, not 5, keeps the event loops' answers within a few ms meanwhile.
            sys.setswitchinterval(0.001)
            _write_json(data_dir / "endpoints.json", endpoints.__dict__)
            grpc_shown = endpoints.grpc + (" (TLS)" if endpoints.grpc_tls else "")
            announce(f"smsgw serving  gRPC {grpc_shown}  phones {endpoints.device}  metrics {endpoints.metrics}"
                     + (f"  SMSGate API {endpoints.smsgate}" if endpoints.smsgate else ""))
            if settings.gateway.mode == "private":
                lifted = [k for k in ("allow_private_targets", "allow_http") if getattr(settings.webhooks, k)]
                guard = f"; webhook guard lifted: {', '.join(lifted)}" if lifted else ""
                announce(f"private mode: accounts from `smsgw users`, phones need the private token{guard}")
            if created:
                announce(f"created account admin; its password is in {password_path} (smsgw login)")
            await until_stopped(announce, "smsgw", readiness)
            await trio.to_thread.run_sync(gateway.begin_shutdown)
            with trio.move_on_after(settings.bridge.shutdown_grace):
                await bridge.aclose()
            nursery.cancel_scope.cancel()
    finally:
        (data_dir / "endpoints.json").unlink(missing_ok=True)
        await trio.to_thread.run_sync(gateway.stop)
        bus.detach_bridge()
        metrics_server.shutdown()
        db.close()
        lock.close()


# Files of the data directory `serve` makes owner-only when it finds them open.
_DATA_FILES = ("admin.password", "jwt.secret", "otp.secret", "credentials.json", "simulator.json", "endpoints.json", "smsgw.lock")


def _private_paths(settings: Settings) -> list[Path]:
    """The data directory, its known files, and a SQLite database with its -wal/-shm/-journal
    (not a database's other directory: that may be anyone's)."""
    paths = [settings.data_dir, *(settings.data_dir / name for name in _DATA_FILES)]
    db = sqlite_file(settings.database_url)
    if db is not None:
        paths += [db, *(db.with_name(db.name + suffix) for suffix in ("-wal", "-shm", "-journal"))]
    return list(dict.fromkeys(paths))


def _lock_data_dir(data_dir: Path) -> IO[str]:
    """One server per data directory: a second would share the database but not the phones."""
    create_private_file(data_dir / "smsgw.lock")
    lock = open(data_dir / "smsgw.lock", "w")  # noqa: SIM115 — held for the server's life
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise OSError(f"another smsgw serve is using {data_dir}") from None
    return lock


def _write_json(path: Path, value: dict[str, Any]) -> None:
    write_private_file(path, json.dumps(value, indent=2) + "\n")

