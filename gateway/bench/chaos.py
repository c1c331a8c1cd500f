"""The history-checked chaos run (RELIABILITY 1 and 29): `smsgw bench --chaos`, and at reduced
scale the CI test tests/fault/test_chaos.py.

The real `smsgw serve` (started as a user starts it), reference phones connected through a
loopback proxy that can cut them, client threads sending with idempotency keys through the
real client library, and a WatchMessages stream opened before the first send. While the
clients send, a nemesis takes turns: kill -9 and restart of the server, SIGSTOP then SIGCONT
of it, a cut of the phones' connections, and phones killed and restarted. Then everything
heals, the run waits until every recipient is settled and every phone quiet, reads the final
state, replays the event log from event 0, and hands the whole history to `chaos_check`.
See docs/chaos.md.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import trio

from gateway.bench.chaos_check import CHECKS, FINAL, Problem, check, summary
from gateway.bench.chaos_history import (
    FAIL, INFO, OK, Call, FinalMessage, FinalRecipient, History, Nemesis, WatchEvent,
)
from gateway.bench.chaos_phones import ChaosPhone, RecordingModem
from gateway.bench.chaos_proxy import CuttingProxy
from gateway.bench.processes import ServerRun
from gateway.private_files import ensure_private_dir

__all__ = ["ChaosOptions", "ChaosResult", "run_chaos", "cli_run", "NEMESES"]

NEMESES = ("kill9", "pause", "cut", "phone_kill")
# Codes that say the call did not take effect; any other failure may have (an `info` outcome).
_DEFINITE = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
})
# Retries come fast (0.2 s, then x4, at most 2 s) so a retried recipient settles within the run.
CHAOS_SETTINGS = {"SMSGW_SCHEDULER__RETRY_BASE": "0.2", "SMSGW_SCHEDULER__RETRY_MAX": "2"}


@dataclass(frozen=True)
class ChaosOptions:
    phones: int = 1000
    messages: int = 10_000
    senders: int = 16
    nemesis_interval: float = 20.0  # mean seconds between two nemeses (1,000 phones take a while to come back)
    seed: int = 29
    failure_rate: float = 0.03  # modem sends failing NO_SERVICE (retried by the server)
    cancel_share: float = 0.03  # sends followed at once by a CancelMessage
    call_timeout: float = 5.0  # the client's deadline per call
    key_patience: float = 180.0  # seconds a sender retries one key before leaving it to the end
    settle_timeout: float = 300.0  # after the load: until every recipient is settled
    window: int = 16
    backoff_scale: float = 0.2  # the phones' reconnect backoff (1 = the protocol's real one)
    work_dir: Path | None = None  # keep the server's data, logs and the history here

    @classmethod
    def reduced(cls, **overrides: Any) -> ChaosOptions:
        """The CI run: well under a minute on a loaded 2-core machine, every nemesis at least once."""
        base: dict[str, Any] = dict(phones=12, messages=150, senders=4, nemesis_interval=1.5,
                                    key_patience=40.0, settle_timeout=45.0, backoff_scale=0.02)
        return cls(**{**base, **overrides})


@dataclass
class ChaosResult:
    history: History
    problems: list[Problem]
    summary: dict[str, int]
    elapsed: float
    history_path: Path | None = None


def _code(exc: BaseException) -> grpc.StatusCode | None:
    code = getattr(exc, "code", None)
    return code if isinstance(code, grpc.StatusCode) else None


def _request(i: int) -> tuple[list[str], str]:
    """Message i's recipients and text: mostly one short SMS, some to three numbers, some two parts."""
    numbers = [f"+1555{(3 * i + k) % 10_000_000:07d}" for k in range(3 if i % 5 == 1 else 1)]
    text = f"chaos {i} " + ("x" * 200 if i % 10 == 3 else "")
    return numbers, text


@dataclass
class _Clients:
    """The client threads: each sends its share of the keys, retrying `info` with the same key."""

    target: str
    token: str
    o: ChaosOptions
    calls: list[Call]
    done: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)  # the run is being torn down

    def client(self) -> Any:
        from smsgw_client import Client

        return Client(self.target, self.token, timeout=self.o.call_timeout)

    def send(self, client: Any, i: int, patience: float) -> str | None:
        """Send key i until an answer says what happened; its id, or None."""
        numbers, text = _request(i)
        key = f"chaos-{i}"
        give_up = time.monotonic() + patience
        while True:
            invoked = time.monotonic()
            try:
                mid = str(client.send_message(numbers, text, idempotency_key=key).id)
            except Exception as exc:  # noqa: BLE001 - the outcome is recorded, never hidden
                code = _code(exc)
                definite = code in _DEFINITE
                self.calls.append(Call("send", key, "", FAIL if definite else INFO, code.name if code else type(exc).__name__,
                                       len(numbers), invoked, time.monotonic()))
                if definite or time.monotonic() > give_up or self.stopping.is_set():
                    return None
                time.sleep(0.2)
                continue
            self.calls.append(Call("send", key, mid, OK, "", len(numbers), invoked, time.monotonic()))
            return mid

    def cancel(self, client: Any, mid: str) -> None:
        invoked = time.monotonic()
        try:
            client.cancel_message(mid)
        except Exception as exc:  # noqa: BLE001
            code = _code(exc)
            outcome = FAIL if code in _DEFINITE else INFO
            self.calls.append(Call("cancel", "", mid, outcome, code.name if code else type(exc).__name__,
                                   0, invoked, time.monotonic()))
            return
        self.calls.append(Call("cancel", "", mid, OK, "", 0, invoked, time.monotonic()))

    def run(self, part: int) -> None:
        rng = random.Random(self.o.seed * 1000 + part)
        with self.client() as client:
            for i in range(part, self.o.messages, self.o.senders):
                if self.stopping.is_set():
                    return
                mid = self.send(client, i, self.o.key_patience)
                if mid is not None and rng.random() < self.o.cancel_share:
                    self.cancel(client, mid)
                with self.lock:
                    self.done += 1

    def resolve(self, i: int) -> None:
        with self.client() as client:
            self.send(client, i, self.o.settle_timeout)

    def unresolved(self) -> list[int]:
        """Keys no answer resolved: the client retries them (a real client's resolution)."""
        answered = {c.key for c in self.calls if c.op == "send" and c.outcome in (OK, FAIL)}
        return [i for i in range(self.o.messages) if f"chaos-{i}" not in answered]


class _Watch:
    """A WatchMessages stream in a thread, recording every event it hands over; the client
    library resumes it from the last event after the server restarts."""

    def __init__(self, target: str, token: str, events: list[WatchEvent]) -> None:
        self.target, self.token, self.events = target, token, events
        self.stopping = False
        self.failure = ""
        self.started = threading.Event()
        self._client: Any = None

    def run(self, after: int | None, until: Callable[[WatchEvent], bool] | None = None, limit: float | None = None) -> None:
        from smsgw_client import Client

        self._client = client = Client(self.target, self.token)
        self.started.set()
        try:
            for ev in client.watch_messages(after_event_id=after, timeout=limit, max_reconnects=1000):
                event = WatchEvent(ev.event_id, ev.message_id, ev.recipient_index, ev.state, ev.error)
                self.events.append(event)
                if self.stopping or (until is not None and until(event)):
                    return
        except Exception as exc:  # noqa: BLE001 - closing the client ends the stream with an error
            if not self.stopping:
                self.failure = f"{type(exc).__name__}: {exc}"
        finally:
            client.close()

    def stop(self) -> None:
        self.stopping = True
        if self._client is not None:
            self._client.close()


def _read_final(target: str, token: str, patience: float = 60.0) -> list[FinalMessage]:
    """Every message, read again from the start while the answer is UNAVAILABLE or late (bounded):
    right after a restart, gRPC may still fail calls fast on the process's cached failed connection."""
    from smsgw_client import Client, DeadlineExceeded, Unavailable

    give_up = time.monotonic() + patience
    while True:
        try:
            with Client(target, token, timeout=30.0) as client:
                return [
                    FinalMessage(m.id, m.idempotency_key, m.state,
                                 tuple(FinalRecipient(r.state, r.attempt, r.parts_sent) for r in m.recipients))
                    for m in client.iter_messages(page_size=500)
                ]
        except (Unavailable, DeadlineExceeded):
            if time.monotonic() > give_up:
                raise
            time.sleep(0.5)


def _token(server: ServerRun) -> str:
    from smsgw_client import Client

    with Client(server.grpc) as client:
        return str(client.issue_token("admin", server.admin_password, access_ttl=3600).access_token)


def _pairing_codes(target: str, token: str, count: int) -> list[str]:
    from smsgw_client import Client

    with Client(target, token) as client:
        return [client.create_pairing_code(device_name=f"chaos-{i}").code for i in range(count)]


class _Run:
    """One chaos run's moving parts (one trio task tree; clients and watch in threads)."""

    def __init__(self, o: ChaosOptions, work: Path, say: Callable[[str], None]) -> None:
        self.o, self.say = o, say
        self.h = History()
        self.rng = random.Random(o.seed)
        self.server = ServerRun(work, "chaos", CHAOS_SETTINGS)
        self.phones: list[ChaosPhone] = []
        self.proxy: CuttingProxy | None = None
        self.stopped = False  # SIGSTOPped right now
        self.clients: _Clients | None = None

    async def main(self) -> None:
        o = self.o
        await trio.to_thread.run_sync(self.server.start)
        try:
            token = await trio.to_thread.run_sync(_token, self.server)
            self.proxy = CuttingProxy(int(urlsplit(self.server.device_url).port or 0))
            async with trio.open_nursery() as outer:
                await outer.start(self.proxy.serve)
                async with trio.open_nursery() as hardware:
                    async with trio.open_nursery() as apps:
                        await self._pair(token, hardware, apps)
                        await self._load_and_check(token, apps)
                        apps.cancel_scope.cancel()
                    hardware.cancel_scope.cancel()
                outer.cancel_scope.cancel()
        finally:
            if self.clients is not None:  # Ctrl-C or an error: the sender threads stop too
                self.clients.stopping.set()
            await trio.to_thread.run_sync(self._stop_server)

    def _stop_server(self) -> None:
        """SIGTERM (SIGCONT first if stopped), SIGKILL after 30 s; reaped through Popen."""
        proc = self.server.proc
        if proc is None or proc.poll() is not None:
            return
        if self.stopped:
            os.kill(proc.pid, signal.SIGCONT)
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)

    async def _pair(self, token: str, hardware: trio.Nursery, apps: trio.Nursery) -> None:
        from smsgw_agent import Backoff, ModemOptions
        from device_bridge.protocol import FailureClass

        assert self.proxy is not None
        url = f"ws://127.0.0.1:{self.proxy.port}/device/v1"

        def modem(i: int) -> ModemOptions:
            return ModemOptions(send_delay=0.01, delivery_delay=0.02, android_limit_parts=0, seed=self.o.seed + i,
                                failure_rate=self.o.failure_rate, failure_class=FailureClass.NO_SERVICE)

        codes = await trio.to_thread.run_sync(_pairing_codes, self.server.grpc, token, self.o.phones)
        self.say(f"chaos: pairing {len(codes)} phones through the proxy")
        slots = trio.Semaphore(50)

        async def one(i: int, code: str) -> None:
            async with slots:
                name = f"p{i}"
                phone = ChaosPhone(url, pairing_code=code, window=self.o.window, name=name,
                                   modem=RecordingModem(modem(i), name, self.h.modem),
                                   backoff=Backoff(scale=self.o.backoff_scale), hardware=hardware, frames=self.h.frames)
                self.phones.append(phone)
                with trio.fail_after(60 + self.o.phones * 0.05):
                    await apps.start(phone.live)

        async with trio.open_nursery() as pairing:
            for i, code in enumerate(codes):
                pairing.start_soon(one, i, code)

    async def _load_and_check(self, token: str, apps: trio.Nursery) -> None:
        o, h = self.o, self.h
        watch = _Watch(self.server.grpc, token, h.watch)
        async with trio.open_nursery() as watching:
            watching.start_soon(partial(trio.to_thread.run_sync, partial(watch.run, 0), abandon_on_cancel=True))
            await trio.to_thread.run_sync(watch.started.wait, 10)
            clients = self.clients = _Clients(self.server.grpc, token, o, h.calls)
            self.say(f"chaos: {o.messages} messages from {o.senders} clients, nemeses every ~{o.nemesis_interval:.0f} s")
            loaded = trio.Event()
            async with trio.open_nursery() as load:
                load.start_soon(self._nemeses, loaded, apps)
                load.start_soon(self._progress, clients, loaded)
                async with trio.open_nursery() as sending:
                    for part in range(o.senders):
                        sending.start_soon(partial(trio.to_thread.run_sync, clients.run, part, abandon_on_cancel=True))
                loaded.set()
            for i in clients.unresolved():  # every key ends known: retry it as a client does
                await trio.to_thread.run_sync(clients.resolve, i)
            self.say(f"chaos: load done ({len(h.calls)} calls, {len(h.nemeses)} nemeses); settling")
            h.final = await self._settle(token)
            h.log = await self._replay(token, h.final)
            last = max((e.event_id for e in h.log), default=0)
            with trio.move_on_after(30):
                while max((e.event_id for e in h.watch), default=0) < last and not watch.failure:
                    await trio.sleep(0.1)
            h.watch_complete = not watch.failure
            if watch.failure:
                self.say(f"chaos: the live watch failed: {watch.failure}")
            watch.stop()
            watching.cancel_scope.cancel()

    async def _progress(self, clients: _Clients, loaded: trio.Event) -> None:
        """A line every 30 s of load: a long run shows it is moving."""
        while True:
            with trio.move_on_after(30):
                await loaded.wait()
                return
            self.say(f"chaos: {clients.done} of {self.o.messages} keys answered, {len(self.h.nemeses)} nemeses, "
                     f"{len(self.h.watch)} events watched")

    async def _nemeses(self, loaded: trio.Event, apps: trio.Nursery) -> None:
        """One nemesis at a time, in shuffled rounds of every kind, until the load is done and
        every kind struck at least once."""
        o = self.o
        round_: list[str] = []
        struck: set[str] = set()
        while not (loaded.is_set() and struck >= set(NEMESES)):
            await trio.sleep(self.rng.uniform(0.5, 1.5) * o.nemesis_interval)
            if not round_:
                round_ = self.rng.sample(NEMESES, len(NEMESES))
            kind = round_.pop()
            started = time.monotonic()
            detail = await getattr(self, f"_{kind}")(apps)
            self.h.nemeses.append(Nemesis(kind, started, time.monotonic(), detail))
            struck.add(kind)

    async def _kill9(self, apps: trio.Nursery) -> str:
        assert self.server.proc is not None
        os.kill(self.server.proc.pid, signal.SIGKILL)  # only the process this run started
        await trio.to_thread.run_sync(self.server.proc.wait)
        down = self.rng.uniform(0.2, 1.0)
        await trio.sleep(down)
        await trio.to_thread.run_sync(self.server.start)
        return f"down {down:.1f} s"

    async def _pause(self, apps: trio.Nursery) -> str:
        assert self.server.proc is not None
        pid, pause = self.server.proc.pid, self.rng.uniform(0.5, 2.0)
        os.kill(pid, signal.SIGSTOP)
        self.stopped = True
        try:
            await trio.sleep(pause)
        finally:
            os.kill(pid, signal.SIGCONT)
            self.stopped = False
        return f"stopped {pause:.1f} s"

    async def _cut(self, apps: trio.Nursery) -> str:
        assert self.proxy is not None
        share = self.rng.uniform(0.3, 1.0)
        return f"{self.proxy.cut(share, self.rng)} of {self.proxy.open_connections} connections"

    async def _phone_kill(self, apps: trio.Nursery) -> str:
        victims = self.rng.sample(self.phones, max(1, len(self.phones) // 5))
        for phone in victims:
            phone.kill()
        away = self.rng.uniform(0.2, 1.5)
        await trio.sleep(away)
        for phone in victims:
            apps.start_soon(phone.live)
        return f"{len(victims)} phones, away {away:.1f} s"

    async def _settle(self, token: str) -> list[FinalMessage]:
        """Until every recipient is final and every phone quiet (bounded); the final read."""
        final: list[FinalMessage] = []
        with trio.move_on_after(self.o.settle_timeout):
            while True:
                final = await trio.to_thread.run_sync(_read_final, self.server.grpc, token)
                settled = all(r.state in FINAL for m in final for r in m.recipients)
                if settled and all(p.quiet for p in self.phones):
                    return await trio.to_thread.run_sync(_read_final, self.server.grpc, token)
                await trio.sleep(0.5)
        self.say("chaos: did not settle in time")
        return await trio.to_thread.run_sync(_read_final, self.server.grpc, token)

    async def _replay(self, token: str, final: list[FinalMessage]) -> list[WatchEvent]:
        """The event log from event 0, read until it shows every final state (bounded)."""
        want = {(m.id, i): r.state for m in final for i, r in enumerate(m.recipients)}
        unmatched = set(want)
        live_last = max((e.event_id for e in self.h.watch), default=0)
        events: list[WatchEvent] = []

        def until(e: WatchEvent) -> bool:
            key = (e.message_id, e.recipient_index)
            if want.get(key) == e.state:
                unmatched.discard(key)
            else:
                unmatched.add(key)
            return not unmatched and e.event_id >= live_last

        if not want:
            return events
        reader = _Watch(self.server.grpc, token, events)
        await trio.to_thread.run_sync(partial(reader.run, 0, until, 60.0))
        return events


def run_chaos(o: ChaosOptions, say: Callable[[str], None] = print) -> ChaosResult:
    """Run, record, check. The history is kept in `o.work_dir` (chaos-history.jsonl) when given."""
    from gateway.bench.fleet import raise_open_files_limit

    raise_open_files_limit(3 * o.phones + 200)  # each phone: its socket and both proxy ends
    started = time.monotonic()
    temp = None
    if o.work_dir is None:
        temp = tempfile.TemporaryDirectory(prefix="smsgw-chaos-")
        work = Path(temp.name)
    else:
        work = o.work_dir
    ensure_private_dir(work)
    try:
        run = _Run(o, work, say)
        trio.run(run.main)
        history = run.h
        path = None
        if o.work_dir is not None:
            path = work / "chaos-history.jsonl"
            history.save(path)
        problems = check(history)
        return ChaosResult(history, problems, summary(history), time.monotonic() - started, path)
    finally:
        if temp is not None:
            temp.cleanup()


def cli_run(quick: bool, phones: int | None, messages: int | None, work_dir: Path | None, output: Path) -> int:
    """`smsgw bench --chaos [--quick]`: run, print the counts and any problems, write them as
    JSON (`output`, chaos-results.json unless given); exit 1 when the checker found a problem."""
    given = {k: v for k, v in (("phones", phones), ("messages", messages)) if v is not None}
    if any(v <= 0 for v in given.values()):
        print("smsgw bench: --phones and --messages must be positive", file=sys.stderr)
        return 2
    if work_dir is not None:
        given["work_dir"] = work_dir
    o = ChaosOptions.reduced(**given) if quick else ChaosOptions(**given)
    if output == Path("bench-results.json"):
        output = Path("chaos-results.json")
    result = run_chaos(o, say=lambda line: print(line, flush=True))
    for name, value in result.summary.items():
        print(f"{name:>20}  {value}")
    print(f"{'elapsed_s':>20}  {result.elapsed:.0f}")
    for n in result.history.nemeses:
        print(f"  nemesis {n.kind:<10} {n.ended - n.started:5.1f} s  {n.detail}")
    problems = [str(p) for p in result.problems]
    output.write_text(json.dumps({"options": {**asdict(o), "work_dir": str(o.work_dir or "")}, "summary": result.summary,
                                  "elapsed_s": result.elapsed, "problems": problems,
                                  "history": str(result.history_path or "")}, indent=2) + "\n")
    if problems:
        print(f"chaos: {len(problems)} problems:", *problems[:50], sep="\n  ")
        return 1
    print(f"chaos: the checker found nothing wrong ({', '.join(CHECKS)}); results: {output}")
    return 0
