"""`smsgw bench`: the bare libraries' limits, then `smsgw serve` with simulated phones, all
as separate processes on 127.0.0.1; one table on stdout and every figure in a JSON file.

Order: the raw limits first (nothing else running), then SQLite (pair the phones; latency,
throughput and bulk over `phones`; a fresh start for the idle figures over `idle_phones`;
the reconnect storm), then PostgreSQL when reachable (throughput and bulk).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import grpc

from gateway.bench import raw
from gateway.bench.fleet import raise_open_files_limit
from gateway.bench.processes import FleetProc, ServerRun, SplitRun
from gateway.bench.report import render, rows
from gateway.bench.dozing import dozing
from gateway.bench.scenarios import Api, bulk, idle, latency, pair_phones, quiet, storm, throughput
from gateway.private_files import ensure_private_dir

__all__ = ["Options", "run", "unfinished"]

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


@dataclass(frozen=True)
class Options:
    phones: int = 1000
    idle_phones: int = 10_000
    rate: float = 500.0
    duration: float = 10.0  # seconds of load in the latency and throughput runs
    bulk_recipients: int = 20_000
    idle_window: float = 20.0  # one keepalive interval
    raw_duration: float = 5.0
    postgres: str = DEFAULT_POSTGRES  # admin URL for a throwaway database; "" = skip
    output: Path = Path("bench-results.json")
    work_dir: Path | None = None  # default: a temporary directory, removed afterwards
    quick: bool = False
    topology: str = "serve"  # "split": also the separate processes on PostgreSQL (issue 16)

    @classmethod
    def quick_run(cls, **overrides: Any) -> Options:
        """Under a minute on a 2-core machine: the same scenarios with small counts."""
        base = dict(phones=20, idle_phones=100, rate=20.0, duration=2.0, bulk_recipients=1000,
                    idle_window=1.0, raw_duration=0.5, quick=True)
        return cls(**{**base, **overrides})


def _machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kib = 0
    libs = {name: version(name) for name in ("grpcio", "websockets", "trio", "sqlalchemy", "protobuf")}
    return {"cpu": model, "cores": os.cpu_count(), "memory_gib": round(mem_kib / 2**20, 1),
            "python": platform.python_version(), "kernel": platform.release(), "libraries": libs}


def _raw_limits(o: Options, say: Callable[[str], None]) -> dict[str, Any]:
    say("bare libraries: grpc.aio unary echo, server streaming, websockets.trio echo, idle connections")
    return {
        "grpc_unary": raw.grpc_unary_echo(o.raw_duration, 64),
        "grpc_stream": raw.grpc_stream_echo(o.raw_duration, 100),
        # One stream, each write awaited before the next: as the bench's one WatchMessages.
        "grpc_stream_one": raw.grpc_stream_echo(o.raw_duration, 1),
        "ws_echo": raw.ws_echo(o.raw_duration, 100),
        "ws_idle": raw.ws_idle(o.idle_phones, idle_window=o.idle_window),
    }


async def _token(server: ServerRun) -> str:
    from smsgw_client import AsyncClient

    async with AsyncClient(server.grpc) as client:
        pair = await client.issue_token("admin", server.admin_password, access_ttl=3600)
    return str(pair.access_token)


async def _settle_online(fleet: FleetProc, count: int, total: int) -> None:
    """Keep exactly phones 0..count-1 of `total` connected."""
    await fleet.call("online", count=count)
    deadline = time.monotonic() + 60 + 0.05 * total
    while time.monotonic() < deadline:
        if (await fleet.call("status"))["connected"] == count:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"the fleet did not settle at {count} connected phones")


async def _step(say: Callable[[str], None], scenario: Awaitable[Any]) -> Any:
    """A scenario's result, or {"error": why} when it could not finish in its bounds: the
    run goes on and the table says which figure is missing."""
    try:
        return await scenario
    except (RuntimeError, TimeoutError, grpc.aio.AioRpcError) as exc:
        reason = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
        say(f"  failed: {type(exc).__name__}: {reason}")
        return {"error": f"{type(exc).__name__}: {reason}"}


async def _ours(o: Options, work: Path, name: str, env: dict[str, str], say: Callable[[str], None],
                out: dict[str, Any], save: Callable[[], None], *, everything: bool, split: bool = False) -> None:
    """Fill `out` scenario by scenario (calling `save` after each). `split`: the separate
    processes (gateway, bridge, worker) instead of `serve`: latency, throughput and bulk."""
    server: Any = SplitRun(work, name, env) if split else ServerRun(work, name, env)
    server.start()
    fleet: FleetProc | None = None
    api: Api | None = None
    try:
        token = await _token(server)
        api = Api(server.grpc, token)
        total = o.idle_phones if everything else o.phones
        fleet = await FleetProc.start(server.device_url, total, work / f"{name}-fleet.log")
        say(f"[{name}] pairing {total} phones")
        devices = await pair_phones(api, fleet, total)
        await _settle_online(fleet, o.phones, total)
        busy = devices[: o.phones]
        if everything or split:
            say(f"[{name}] latency: {o.rate:.0f} msg/s for {o.duration:.0f} s over {o.phones} phones")
            out["latency"] = await _step(say, latency(api, fleet, busy, o.rate, o.duration, server))
            save()
        say(f"[{name}] throughput: SendMessage for {o.duration:.0f} s")
        out["throughput"] = await _step(say, throughput(api, busy, o.duration, server=server, fleet=fleet))
        save()
        say(f"[{name}] bulk: {o.bulk_recipients} recipients through SendMessages")
        out["bulk"] = await _step(say, bulk(api, busy, o.bulk_recipients, server=server))
        save()
        if everything:
            await quiet(server)  # what the load runs left in flight is done
            await _settle_online(fleet, 0, total)
            await api.close()
            server.stop()
            server.start()  # a fresh process: the baseline holds no session's leftovers
            api = Api(server.grpc, token)
            await asyncio.sleep(1.0)
            say(f"[{name}] idle: {o.idle_phones} phones connected, {o.idle_window:.0f} s of keepalives")
            out["idle"] = await _step(say, idle(server, fleet, o.idle_phones, o.idle_window))
            save()
            say(f"[{name}] reconnect storm: restart with {o.idle_phones} phones holding a message each")
            stormed = await _step(say, storm(server, fleet, token, api, devices))
            out["storm"], api = stormed if isinstance(stormed, tuple) else (stormed, Api(server.grpc, token))
            save()
    finally:
        if fleet is not None:
            await fleet.stop()
        if api is not None:
            await api.close()
        server.stop()


@contextmanager
def _postgres(admin_url: str) -> Iterator[str | None]:
    """A throwaway database's SQLAlchemy URL, or None when PostgreSQL is not reachable."""
    try:
        import psycopg
    except ImportError:
        yield None
        return
    name = f"smsgw_bench_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=3) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error:
        yield None
        return
    try:
        yield admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) + f"/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run(o: Options, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every scenario; print the table, write the JSON, return the results."""
    raise_open_files_limit(o.idle_phones + 1000)  # inherited by the server and the fleet
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="smsgw-bench-")) if o.work_dir is None else o.work_dir
    ensure_private_dir(work)  # the servers' data directories and the phones' credentials
    results: dict[str, Any] = {"machine": _machine(), "options": {**asdict(o), "output": str(o.output),
                                                                   "work_dir": str(o.work_dir or "")}}

    def save() -> None:
        """After every scenario: a run stopped half-way keeps what it measured."""
        o.output.write_text(json.dumps(results, indent=2, default=str) + "\n")
    try:
        results["raw"] = _raw_limits(o, say)
        save()
        results["sqlite"] = {}
        asyncio.run(_ours(o, work, "sqlite", {}, say, results["sqlite"], save, everything=True))
        count = 3 if o.quick else 20
        say(f"[dozing] {count} messages to a phone that dozes, each woken by an FCM push (local stand-in)")
        results["dozing"] = asyncio.run(_step(say, dozing(work, count, _token)))
        save()
        with _postgres(o.postgres) if o.postgres else nullcontext() as url:
            if url is None:
                results["postgres"] = "skipped: PostgreSQL not reachable" if o.postgres else "skipped"
            else:
                env = {"SMSGW_DATABASE__URL": url}
                results["postgres"] = {}
                asyncio.run(_ours(o, work, "postgres", env, say, results["postgres"], save, everything=False))
        if o.topology == "split":
            with _postgres(o.postgres) if o.postgres else nullcontext() as url:
                if url is None:
                    results["split"] = "skipped: needs PostgreSQL (--postgres)"
                else:
                    results["split"] = {}
                    asyncio.run(_ours(o, work, "split", {"SMSGW_DATABASE__URL": url}, say, results["split"], save,
                                      everything=False, split=True))
    finally:
        if o.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    results["elapsed_s"] = time.monotonic() - started
    save()
    say(render(rows(results), quick=o.quick))
    say(f"results: {o.output}  ({results['elapsed_s']:.0f} s)")
    return results


def unfinished(results: dict[str, Any]) -> list[str]:
    """The scenarios that did not finish within their bounds ("sqlite.idle", ...)."""
    return [
        f"{db}.{name}"
        for db in ("sqlite", "postgres", "split")
        if isinstance(results.get(db), dict)
        for name, value in results[db].items()
        if isinstance(value, dict) and "error" in value
    ] + (["dozing"] if isinstance(results.get("dozing"), dict) and "error" in results["dozing"] else [])
