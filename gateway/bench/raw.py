"""The raw limits of the libraries under smsgw, measured on this machine in the same run.

A figure of ours (calls/s, messages/s, KiB per phone) says little on its own: the machine,
the Python build and the library versions move it more than our code does. So the bench
also measures bare grpc.aio and websockets.trio servers, with nothing of ours in them, and
prints our figures as a ratio to these.

Every server is its own process (``python -m gateway.bench.raw ROLE ...``), so that it has a
core and a GIL of its own as the real gateway does, and so that its RSS and CPU can be read
from /proc. It binds 127.0.0.1 on an ephemeral port and prints ``ready PORT`` once listening;
the caller reads that line with a timeout. A child ends when its stdin closes (the caller
went away) or after ``--max-seconds``, and the caller ends it by its pid in a ``finally``, so
no run leaves a process behind. The load generators run in the calling process (which must
not be inside an event loop), except the idle connections of `ws_idle`, which get their own
process: thousands of sockets would need the caller's file limit raised (`ws_echo` raises
the soft limit only when its connections would not fit).

The websockets servers and clients mirror the device bridge's settings that bear on cost:
no compression (permessage-deflate costs 2.5x memory per session); the echo runs without
keepalive, the idle server pings as often as the bridge does by default.

Every CPU figure is in percent of one core. `server_cpu_percent` near 100 says the server
was the limit; lower, the client in this process was (on 2 cores the websockets client costs
about what the server does). `other_cpu_percent` is what the rest of the machine used
meanwhile: well above 0, something else ran and the figure is low for that reason.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, TypedDict, TypeVar

if TYPE_CHECKING:
    import grpc
    import trio
    from websockets.trio.client import connect

__all__ = [
    "GrpcStreamEcho",
    "GrpcUnaryEcho",
    "WsEcho",
    "WsIdle",
    "grpc_stream_echo",
    "grpc_unary_echo",
    "main",
    "ws_echo",
    "ws_idle",
]

_T = TypeVar("_T")

HOST = "127.0.0.1"
# About the size of a SendMessage request (recipient, 60-odd characters of text, keys).
PAYLOAD = bytes(range(100))
_SERVICE = "smsgw.bench.Raw"
_ECHO = f"/{_SERVICE}/Echo"
_STREAM = f"/{_SERVICE}/Stream"
_NO_PROXY = [("grpc.enable_http_proxy", 0)]  # loopback only, whatever http_proxy says

_START_TIMEOUT = 30.0  # a child prints its first line within this (imports on a cold disk)
_STOP_TIMEOUT = 5.0  # SIGTERM, then SIGKILL after this
_CALL_TIMEOUT = 10.0  # one echo round trip; far above any sane latency
_CHILD_SLACK = 60.0  # a child's lifetime beyond the measurement itself
_OPEN_BATCH = 200  # connections opened concurrently (a burst beyond the backlog only stalls)
_FD_MARGIN = 64  # descriptors besides the sockets: the interpreter, pipes, epoll
_MAX_LOOPS = 100_000_000  # the count bound of every measuring loop (time ends them first)
_ONE_IN_FLIGHT_SECONDS = 1.0


class GrpcUnaryEcho(TypedDict):
    calls_per_s: float
    p50_ms: float
    p99_ms: float
    p50_ms_one_in_flight: float
    server_cpu_percent: float
    other_cpu_percent: float


class GrpcStreamEcho(TypedDict):
    messages_per_s: float
    server_cpu_percent: float
    other_cpu_percent: float


class WsEcho(TypedDict):
    messages_per_s: float
    p50_ms: float
    p99_ms: float
    p50_ms_one_connection: float
    server_cpu_percent: float
    other_cpu_percent: float


class WsIdle(TypedDict):
    connections: int
    rss_kib_per_connection: float
    server_cpu_ms_per_open: float
    cpu_percent_idle: float
    other_cpu_percent: float


# --- the calling side ---------------------------------------------------------------------


def grpc_unary_echo(duration: float, in_flight: int = 64) -> GrpcUnaryEcho:
    """Bare grpc.aio unary echo: calls/s with `in_flight` calls outstanding for `duration`
    seconds, their p50/p99, and the p50 at one call in flight (the floor of a call's
    latency)."""
    _check_positive(duration=duration, in_flight=in_flight)
    warmup = _warmup(duration)
    lifetime = _ONE_IN_FLIGHT_SECONDS + 2 * warmup + duration + _CHILD_SLACK
    with _Child("grpc-server", max_seconds=lifetime) as server:
        port = server.ready_port()
        return _asyncio_run(_grpc_unary_load(port, server.pid, duration, in_flight, warmup), lifetime)


def grpc_stream_echo(duration: float, streams: int = 100) -> GrpcStreamEcho:
    """Bare grpc.aio server streaming: the server writes as fast as it can on each of
    `streams` streams; messages/s received in total over `duration` seconds."""
    _check_positive(duration=duration, streams=streams)
    warmup = _warmup(duration)
    lifetime = warmup + duration + _CHILD_SLACK
    with _Child("grpc-server", max_seconds=lifetime) as server:
        port = server.ready_port()
        return _asyncio_run(_grpc_stream_load(port, server.pid, duration, streams, warmup), lifetime)


def ws_echo(duration: float, connections: int = 100) -> WsEcho:
    """Bare websockets.trio echo: `connections` connections each doing request -> echo round
    trips back to back for `duration` seconds; round trips/s in total (one message sent and
    its echo received, as a Deliver and its Ack), their p50/p99 under that load, and the p50
    on one connection alone (the latency floor, for comparing a single delivery)."""
    _check_positive(duration=duration, connections=connections)
    warmup = _warmup(duration)
    lifetime = _ONE_IN_FLIGHT_SECONDS + 2 * warmup + duration + connections / 50 + _CHILD_SLACK
    _check_sockets(connections)
    _raise_nofile(connections + _FD_MARGIN)
    with _Child("ws-server", "--connections", str(connections), max_seconds=lifetime) as server:
        port = server.ready_port()
        load = partial(_ws_echo_load, port, server.pid, duration, connections, warmup, lifetime)
        return _trio_run(load)


def ws_idle(
    connections: int, settle: float = 2.0, idle_window: float | None = None, ping_interval: float | None = 20.0
) -> WsIdle:
    """Bare websockets.trio server holding `connections` idle connections: the growth of its
    RSS per connection once they settled, and its CPU over `idle_window` seconds of idleness.

    The server pings each connection every `ping_interval` seconds (None: never), as the
    bridge does its phones (20 s by default), so that idle CPU means the same on both sides
    of the ratio; `idle_window` defaults to one ping interval (each connection pings once in
    it; a shorter window lands in or out of the burst of pings), or 3 s without pings.

    A few connections are opened (and the RSS read) before the rest, so that what the first
    connection allocates once (lazy imports, the allocator's first arenas) is not charged to
    each. The clients live in a process of their own, so that the caller's limits stay as
    they are."""
    _check_positive(connections=connections)
    window = idle_window if idle_window is not None else (ping_interval or 3.0)
    if settle < 0 or not window > 0 or (ping_interval is not None and not ping_interval > 0):
        raise ValueError("settle must be >= 0, idle_window and ping_interval > 0")
    _check_sockets(connections)
    warm = min(32, connections // 10)
    open_timeout = _START_TIMEOUT + connections / 100
    lifetime = 2 * open_timeout + settle + window + _CHILD_SLACK
    server_args = ("--connections", str(connections), "--ping-interval", str(ping_interval or 0))
    with _Child("ws-server", *server_args, max_seconds=lifetime) as server:
        port = server.ready_port()
        client_args = ("--port", str(port), "--connections", str(connections), "--warm", str(warm))
        with _Child("ws-idle-client", *client_args, max_seconds=lifetime) as clients:
            clients.expect(f"warm {warm}", _START_TIMEOUT)
            time.sleep(0.2)  # the server is done with the warm handshakes' last bytes
            before, cpu_before = _rss_kib(server.pid), _cpu_seconds(server.pid)
            clients.send_line("go")
            clients.expect(f"open {connections}", open_timeout)
            opening_cpu = _cpu_seconds(server.pid) - cpu_before
            time.sleep(settle)
            after = _rss_kib(server.pid)
            meter = _Window(server.pid, (clients.pid,))
            meter.begin()
            time.sleep(window)
            cpu, other_cpu = meter.end()
    return {
        "connections": connections,
        "rss_kib_per_connection": round((after - before) / (connections - warm), 2),
        # The floor of the bridge's CPU per session open: TCP accept and the upgrade, no frame.
        "server_cpu_ms_per_open": round(1000 * opening_cpu / (connections - warm), 3),
        "cpu_percent_idle": cpu,
        "other_cpu_percent": other_cpu,
    }


def _warmup(duration: float) -> float:
    """Long enough for the channel, the JIT-less caches and the TCP windows to settle; short
    next to the measurement."""
    return min(1.0, max(0.2, duration / 5))


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be > 0, not {value!r}")


def _check_sockets(connections: int) -> None:
    """Fail before starting anything when the machine cannot hold that many connections:
    each process here holds one end of each, and every client end takes an ephemeral port."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = connections + _FD_MARGIN
    if hard != resource.RLIM_INFINITY and hard < need:
        raise RuntimeError(
            f"{connections} connections need {need} file descriptors per process, but the hard "
            f"RLIMIT_NOFILE here is {hard}; raise it (ulimit -Hn, LimitNOFILE=, limits.conf)"
        )
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return
    if high - low + 1 < connections:
        raise RuntimeError(
            f"{connections} connections from one address need as many ephemeral ports, but "
            f"net.ipv4.ip_local_port_range has {high - low + 1} ({low}-{high})"
        )


def _raise_nofile(need: int) -> None:
    """Soft RLIMIT_NOFILE up to the hard one when `need` descriptors would not fit (the
    usual soft 1024 is far below 10,000 sockets); a clear error when even the hard is short."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        raise RuntimeError(f"need {need} file descriptors, but the hard RLIMIT_NOFILE here is {hard}")
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _percentile_ms(sorted_seconds: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile, in milliseconds (no samples: 0, never an exception)."""
    if not sorted_seconds:
        return 0.0
    index = min(len(sorted_seconds) - 1, max(0, int(fraction * len(sorted_seconds) + 0.5) - 1))
    return round(sorted_seconds[index] * 1000, 3)


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def _rss_kib(pid: int) -> int:
    return _status_kib(pid, "VmRSS")


def _cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` (fields 14 and 15 of /proc/PID/stat; the name may hold spaces)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy so far, all cores (steal is not ours: left out)."""
    user, nice, system, _idle, _iowait, irq, softirq = map(int, Path("/proc/stat").read_text().split()[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


class _Window:
    """CPU over a measurement window: the server's, and everything else's but this process's
    and the load's (`load_pids`, a client process).

    The first says whose limit a load hit (near 100: the server's, not this client's); the
    second says whether something else ran meanwhile (this machine is shared, and its two
    cores may be one core's two hyperthreads), which makes a figure low or, for CPU, high
    for reasons of its own."""

    def __init__(self, server_pid: int, load_pids: Sequence[int] = ()) -> None:
        self.server_pid = server_pid
        self.ours = (os.getpid(), *load_pids)
        self.server = self.own = self.machine = self.wall = 0.0

    def begin(self) -> None:
        self.server, self.own = _cpu_seconds(self.server_pid), sum(map(_cpu_seconds, self.ours))
        self.machine, self.wall = _machine_busy_seconds(), time.monotonic()

    def end(self) -> tuple[float, float]:
        """(server CPU, other CPU), in percent of one core."""
        wall = max(1e-6, time.monotonic() - self.wall)
        server = _cpu_seconds(self.server_pid) - self.server
        own = sum(map(_cpu_seconds, self.ours)) - self.own
        other = _machine_busy_seconds() - self.machine - server - own
        return round(100 * server / wall, 1), round(max(0.0, 100 * other / wall), 1)


def _asyncio_run(coro: Coroutine[Any, Any, _T], timeout: float) -> _T:
    import asyncio

    async def bounded() -> _T:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


def _trio_run(fn: Callable[[], Awaitable[_T]]) -> _T:
    import trio

    return trio.run(fn)


class _Child:
    """One role of this module in its own process: its lines read with a deadline, ended by
    its pid (SIGTERM, then SIGKILL) when the `with` block ends, however it ends."""

    def __init__(self, role: str, *args: str, max_seconds: float) -> None:
        self.role = role
        self._stderr: IO[bytes] = tempfile.TemporaryFile()
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        command = [sys.executable, "-m", "gateway.bench.raw", role, *args, "--max-seconds", f"{max_seconds:.1f}"]
        self.proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=env
        )
        self.pid = self.proc.pid
        self._buffer = b""

    def __enter__(self) -> _Child:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def ready_port(self) -> int:
        line = self.read_line(_START_TIMEOUT)
        word, _, port = line.partition(" ")
        if word != "ready" or not port.isdigit():
            raise RuntimeError(f"{self.role}: expected 'ready PORT', got {line!r}{self._stderr_tail()}")
        return int(port)

    def expect(self, wanted: str, timeout: float) -> None:
        line = self.read_line(timeout)
        if line != wanted:
            raise RuntimeError(f"{self.role}: expected {wanted!r}, got {line!r}{self._stderr_tail()}")

    def send_line(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def read_line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        for _ in range(_MAX_LOOPS):
            line, newline, rest = self._buffer.partition(b"\n")
            if newline:
                self._buffer = rest
                return line.decode(errors="replace").strip()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"{self.role}: nothing within {timeout:.0f} s{self._stderr_tail()}")
            readable, _, _ = select.select([fd], [], [], remaining)
            if readable:
                chunk = os.read(fd, 65536)
                if not chunk:
                    try:
                        code: int | None = self.proc.wait(_STOP_TIMEOUT)
                    except subprocess.TimeoutExpired:
                        code = None
                    raise RuntimeError(f"{self.role} exited (code {code}){self._stderr_tail()}")
                self._buffer += chunk
        raise RuntimeError(f"{self.role}: no line")  # pragma: no cover - time ends the loop first

    def stop(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(_STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(_STOP_TIMEOUT)
        finally:
            for stream in (self.proc.stdin, self.proc.stdout):
                if stream is not None:
                    try:
                        stream.close()
                    except OSError:  # a broken pipe to a child that is gone
                        pass
            self._stderr.close()

    def _stderr_tail(self) -> str:
        try:
            self._stderr.seek(0, os.SEEK_END)
            size = self._stderr.tell()
            self._stderr.seek(max(0, size - 2000))
            tail = self._stderr.read().decode(errors="replace").strip()
        except (OSError, ValueError):
            return ""
        return f"; its stderr ends:\n{tail}" if tail else ""


# --- load generators (in the calling process) ---------------------------------------------


async def _grpc_channel(port: int) -> grpc.aio.Channel:
    import asyncio

    import grpc

    channel = grpc.aio.insecure_channel(f"{HOST}:{port}", options=_NO_PROXY)
    await asyncio.wait_for(channel.channel_ready(), _START_TIMEOUT)
    return channel


async def _unary_load(
    call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes], in_flight: int, warmup: float, duration: float
) -> tuple[float, list[float]]:
    """`in_flight` callers back to back: calls/s completed in the window after `warmup`, and
    the latencies of the calls made wholly inside it, sorted."""
    import asyncio

    start = time.perf_counter() + warmup
    end = start + duration
    latencies: list[float] = []
    completed = 0

    async def caller() -> None:
        nonlocal completed
        for _ in range(_MAX_LOOPS):
            began = time.perf_counter()
            if began >= end:
                return
            await call(PAYLOAD, timeout=_CALL_TIMEOUT)
            done = time.perf_counter()
            if start <= done <= end:
                completed += 1
                if began >= start:
                    latencies.append(done - began)

    await asyncio.gather(*(caller() for _ in range(in_flight)))
    latencies.sort()
    return completed / duration, latencies


async def _grpc_unary_load(port: int, pid: int, duration: float, in_flight: int, warmup: float) -> GrpcUnaryEcho:
    import asyncio

    channel = await _grpc_channel(port)
    try:
        call = channel.unary_unary(_ECHO)
        # One in flight first, on a quiet server: the latency floor of one call.
        _, one = await _unary_load(call, 1, warmup, _ONE_IN_FLIGHT_SECONDS)
        start = time.perf_counter() + warmup
        (rate, latencies), (server_cpu, other_cpu) = await asyncio.gather(
            _unary_load(call, in_flight, warmup, duration), _meter_asyncio(pid, start, start + duration)
        )
        return {
            "calls_per_s": round(rate, 1),
            "p50_ms": _percentile_ms(latencies, 0.50),
            "p99_ms": _percentile_ms(latencies, 0.99),
            "p50_ms_one_in_flight": _percentile_ms(one, 0.50),
            "server_cpu_percent": server_cpu,
            "other_cpu_percent": other_cpu,
        }
    finally:
        await channel.close()


async def _meter_asyncio(pid: int, start: float, end: float) -> tuple[float, float]:
    """`_Window` over [start, end] (perf_counter times), for asyncio."""
    import asyncio

    window = _Window(pid)
    await asyncio.sleep(max(0.0, start - time.perf_counter()))
    window.begin()
    await asyncio.sleep(max(0.0, end - time.perf_counter()))
    return window.end()


async def _meter_trio(pid: int, start: float, end: float) -> tuple[float, float]:
    """`_Window` over [start, end] (perf_counter times), for trio."""
    import trio

    window = _Window(pid)
    await trio.sleep(max(0.0, start - time.perf_counter()))
    window.begin()
    await trio.sleep(max(0.0, end - time.perf_counter()))
    return window.end()


async def _grpc_stream_load(port: int, pid: int, duration: float, streams: int, warmup: float) -> GrpcStreamEcho:
    """`streams` server streams read as fast as they come; messages/s in the window after
    `warmup`. The request tells the server how long to stream, the call's timeout backs it."""
    import asyncio

    import grpc

    channel = await _grpc_channel(port)
    try:
        open_stream = channel.unary_stream(_STREAM)
        start = time.perf_counter() + warmup
        end = start + duration
        seconds = warmup + duration + 1.0
        received = 0

        async def reader() -> None:
            nonlocal received
            call = open_stream(f"{seconds:.3f}".encode(), timeout=seconds + _CALL_TIMEOUT)
            try:
                for _ in range(_MAX_LOOPS):
                    message = await call.read()
                    if message is grpc.aio.EOF:
                        raise RuntimeError("the server ended a stream before the window closed")
                    now = time.perf_counter()
                    if now >= end:
                        return
                    if now >= start:
                        received += 1
            finally:
                call.cancel()

        readers = asyncio.gather(*(reader() for _ in range(streams)))
        (server_cpu, other_cpu), _ = await asyncio.gather(_meter_asyncio(pid, start, end), readers)
        return {
            "messages_per_s": round(received / duration, 1),
            "server_cpu_percent": server_cpu,
            "other_cpu_percent": other_cpu,
        }
    finally:
        await channel.close()


async def _open_all(
    nursery: trio.Nursery, hold: Callable[..., Awaitable[None]], count: int, at_once: int = _OPEN_BATCH
) -> None:
    """Start `count` connection holders in `nursery`, at most `at_once` handshakes at a time
    (a sliding window: a burst of thousands only overflows the listen backlog); returns once
    every one is open (each calls `task_status.started()` when it is)."""
    import trio

    limiter = trio.CapacityLimiter(at_once)

    async def open_one() -> None:
        async with limiter:
            await nursery.start(hold)

    async with trio.open_nursery() as opening:
        for _ in range(count):
            opening.start_soon(open_one)


def _ws_connect(port: int, open_timeout: float) -> connect:
    """A client as the phones' are, as far as cost goes; never through a proxy."""
    from websockets.trio.client import connect

    return connect(
        f"ws://{HOST}:{port}/",
        compression=None,
        ping_interval=None,
        proxy=None,
        open_timeout=open_timeout,
        user_agent_header=None,
    )


async def _ws_round_trips(
    port: int, pid: int, connections: int, warmup: float, duration: float
) -> tuple[float, list[float], tuple[float, float]]:
    """`connections` clients each echoing back to back: round trips/s completed in the
    window after `warmup` (which starts once all are open), the latencies of the round trips
    wholly inside it, sorted, and the CPU over it (`_Window`)."""
    import trio

    latencies: list[float] = []
    completed = 0
    go = trio.Event()
    window = [0.0, 0.0]
    cpu = [(0.0, 0.0)]

    async def client(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal completed
        async with _ws_connect(port, _START_TIMEOUT) as ws:
            task_status.started()
            await go.wait()
            start, end = window
            for _ in range(_MAX_LOOPS):
                began = time.perf_counter()
                if began >= end:
                    return
                await ws.send(PAYLOAD)
                await ws.recv()
                done = time.perf_counter()
                if start <= done <= end:
                    completed += 1
                    if began >= start:
                        latencies.append(done - began)

    async def meter() -> None:
        cpu[0] = await _meter_trio(pid, window[0], window[1])

    async with trio.open_nursery() as nursery:
        await _open_all(nursery, client, connections)
        window[0] = time.perf_counter() + warmup
        window[1] = window[0] + duration
        nursery.start_soon(meter)
        go.set()
    latencies.sort()
    return completed / duration, latencies, cpu[0]


async def _ws_echo_load(
    port: int, pid: int, duration: float, connections: int, warmup: float, timeout: float
) -> WsEcho:
    import trio

    with trio.fail_after(timeout):
        _, one, _ = await _ws_round_trips(port, pid, 1, warmup, _ONE_IN_FLIGHT_SECONDS)
        rate, latencies, (server_cpu, other_cpu) = await _ws_round_trips(port, pid, connections, warmup, duration)
    return {
        "messages_per_s": round(rate, 1),
        "p50_ms": _percentile_ms(latencies, 0.50),
        "p99_ms": _percentile_ms(latencies, 0.99),
        "p50_ms_one_connection": _percentile_ms(one, 0.50),
        "server_cpu_percent": server_cpu,
        "other_cpu_percent": other_cpu,
    }


# --- the roles (each in its own process) --------------------------------------------------


def _guard(max_seconds: float, *, watch_stdin: bool) -> None:
    """End this process after `max_seconds`, or (`watch_stdin`) as soon as stdin closes,
    which is when the caller has gone: no server outlives its run, even a killed caller's."""

    def run() -> None:
        deadline = time.monotonic() + max_seconds
        fd = sys.stdin.fileno()
        for _ in range(_MAX_LOOPS):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if not watch_stdin:
                time.sleep(remaining)
                continue
            readable, _, _ = select.select([fd], [], [], remaining)
            if readable and not os.read(fd, 4096):
                break
        os._exit(0)

    threading.Thread(target=run, name="raw-bench-guard", daemon=True).start()


def _announce(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _grpc_server(max_seconds: float) -> None:
    """grpc.aio with a generic handler and no serializers: bytes in, bytes out, no protobuf."""
    import grpc

    async def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return request

    async def stream(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> AsyncIterator[bytes]:
        deadline = time.monotonic() + min(float(request.decode()), max_seconds)
        for _ in range(_MAX_LOOPS):
            if time.monotonic() >= deadline:
                return
            yield PAYLOAD

    handler = grpc.method_handlers_generic_handler(
        _SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(f"{HOST}:0")
    await server.start()
    _announce(f"ready {port}")
    await server.wait_for_termination(timeout=max_seconds)
    await server.stop(grace=None)


async def _ws_server(max_seconds: float, ping_interval: float | None) -> None:
    """websockets.trio echo: each connection sends back what it receives until it closes."""
    import trio
    from websockets.exceptions import ConnectionClosed
    from websockets.trio.server import ServerConnection, serve

    async def echo(ws: ServerConnection) -> None:
        try:
            for _ in range(_MAX_LOOPS):
                await ws.send(await ws.recv())
        except ConnectionClosed:
            return

    with trio.move_on_after(max_seconds):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                partial(serve, echo, 0, host=HOST, compression=None, ping_interval=ping_interval, server_header=None)
            )
            _announce(f"ready {server.listeners[0].socket.getsockname()[1]}")
            await trio.sleep(max_seconds)


async def _ws_idle_clients(port: int, connections: int, warm: int, max_seconds: float) -> None:
    """Open `warm` connections, say so, wait for 'go' on stdin, open the rest and say so,
    then hold them all, idle, until stdin closes."""
    import trio

    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))

    async def read_line() -> bytes:
        data = b""
        for _ in range(_MAX_LOOPS):
            chunk = await stdin.receive_some(1)
            if not chunk or chunk == b"\n":
                return data
            data += chunk
        return data  # pragma: no cover

    async def hold(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with _ws_connect(port, _START_TIMEOUT):
            task_status.started()
            await trio.sleep(max_seconds)

    with trio.move_on_after(max_seconds):
        async with trio.open_nursery() as nursery:
            await _open_all(nursery, hold, warm)
            _announce(f"warm {warm}")
            if await read_line() != b"go":
                os._exit(0)  # the caller went away
            await _open_all(nursery, hold, connections - warm)
            _announce(f"open {connections}")
            await read_line()  # EOF: the caller is done; the kernel closes the sockets at once
            os._exit(0)


def main(argv: Sequence[str] | None = None) -> int:
    """`all` measures everything and prints JSON; the other commands are the children's roles."""
    parser = argparse.ArgumentParser(prog="python -m gateway.bench.raw", description=__doc__.split("\n")[0])
    roles = parser.add_subparsers(dest="role", required=True)
    run_all = roles.add_parser("all", help="measure every raw limit and print them as JSON")
    run_all.add_argument("--duration", type=float, default=5.0, help="seconds of each load (default 5)")
    run_all.add_argument("--in-flight", type=int, default=64)
    run_all.add_argument("--streams", type=int, default=100)
    run_all.add_argument("--connections", type=int, default=100, help="echoing websocket connections")
    run_all.add_argument("--idle-connections", type=int, default=10_000)
    run_all.add_argument("--idle-window", type=float, default=None, help="default: one ping interval (20 s)")
    for role in ("grpc-server", "ws-server", "ws-idle-client"):
        child = roles.add_parser(role, help="(internal) one side of a measurement, in its own process")
        child.add_argument("--max-seconds", type=float, required=True)
        if role != "grpc-server":
            child.add_argument("--connections", type=int, required=True)
        if role == "ws-server":
            child.add_argument("--ping-interval", type=float, default=0.0, help="0: no keepalive")
        if role == "ws-idle-client":
            child.add_argument("--port", type=int, required=True)
            child.add_argument("--warm", type=int, required=True)
    args = parser.parse_args(argv)

    if args.role == "all":
        figures = {
            "grpc_unary_echo": grpc_unary_echo(args.duration, args.in_flight),
            "grpc_stream_echo": grpc_stream_echo(args.duration, args.streams),
            "ws_echo": ws_echo(args.duration, args.connections),
            "ws_idle": ws_idle(args.idle_connections, idle_window=args.idle_window),
        }
        print(json.dumps(figures, indent=2))
        return 0

    import asyncio

    import trio

    if args.role == "grpc-server":
        _guard(args.max_seconds, watch_stdin=True)
        asyncio.run(_grpc_server(args.max_seconds))
    elif args.role == "ws-server":
        _raise_nofile(args.connections + _FD_MARGIN)
        _guard(args.max_seconds, watch_stdin=True)
        trio.run(_ws_server, args.max_seconds, args.ping_interval or None)
    else:
        _raise_nofile(args.connections + _FD_MARGIN)
        _guard(args.max_seconds, watch_stdin=False)  # stdin is the caller's channel here
        trio.run(_ws_idle_clients, args.port, args.connections, args.warm, args.max_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
