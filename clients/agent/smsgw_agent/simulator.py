"""``smsgw simulate``: many simulated phones against a running server.

First run: each phone gets a pairing code through the gRPC API
(``CreatePairingCode``), connects with ``Authorization: Pairing <code>``, and
the credentials from its Welcome are written to the state file (JSON, mode
0600, replaced atomically). Later runs reconnect the same phones with their
tokens; phones are paired only for the slots the state file lacks.

All phones run concurrently in one trio nursery until Ctrl-C / SIGTERM or
``duration`` seconds. Each reports ``sims`` SIMs (slots 1..N) in Hello; its
modem takes ``send_delay`` per SMS part, obeys Android's per-app limit
(``android_limit`` parts per 60 s, 0 = off) and fails a share
``failure_rate`` of sends with ``failure_class``. With ``receive_every`` each
phone also "receives" an SMS (``receive_text`` from ``receive_from``) every that
many seconds, and with ``receive_text`` alone one SMS once it is online; they are
forwarded to the server as Inbound (``PhoneAgent.receive_sms``). Output (stdout,
flushed): one line when all phones are online, then a one-line summary every 5 s
when something changed (with the count of Android limit dialogs, if any). Progress
("paired 57/200", "online 120/200", at most once a second while the fleet comes up)
and problems go to stderr. Pairing codes are asked for one at a time, and a
RESOURCE_EXHAUSTED answer (the per-token rate limit) is waited out as its RetryInfo
says, so a fleet bigger than the limit's burst pairs in one run. Nothing printed carries a message body, a phone number or a token.
``private_token`` lets the phones pair with a server in private mode; ``passphrases`` turns
end-to-end encryption on (the phones open encrypted messages and seal what they receive).
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TextIO

import trio

from device_bridge.protocol import FailureClass, InboundSms, SimInfo

from .agent import PhoneAgent
from .backoff import Backoff
from .modem import ANDROID_LIMIT_PARTS, ModemOptions, SimulatedModem

__all__ = [
    "DEFAULT_SENDER",
    "PAIRING_ATTEMPTS",
    "PROGRESS_INTERVAL",
    "RATE_LIMIT_PATIENCE",
    "STARTUP_TIMEOUT",
    "FAILURE_CLASSES",
    "SUMMARY_INTERVAL",
    "SimulatorOptions",
    "WakeListener",
    "load_state",
    "run_simulator",
    "save_state",
]

#: Pairing codes a phone may spend before the simulator gives it up.
PAIRING_ATTEMPTS = 3
#: Seconds a pairing-code request may spend waiting out RESOURCE_EXHAUSTED (the server's
#: RetryInfo) before the run gives up: a rate limit clears in seconds, a daily cap does not.
RATE_LIMIT_PATIENCE = 120.0
#: Seconds between progress lines on stderr while phones pair and come online.
PROGRESS_INTERVAL = 1.0
#: Seconds for every phone to get its first Welcome; after that the simulator
#: reports the stragglers (and stops if none got in).
STARTUP_TIMEOUT = 60.0
#: Seconds between summary lines.
SUMMARY_INTERVAL = 5.0
#: Seconds the phones get to close their sessions cleanly on shutdown.
SHUTDOWN_GRACE = 5.0
_STATE_VERSION = 1
#: The sender of the SMS simulated phones receive, unless told otherwise.
DEFAULT_SENDER = "+15550199000"
#: The ``failure_class`` names ``smsgw simulate --failure-class`` takes.
FAILURE_CLASSES: tuple[str, ...] = tuple(c.name.lower() for c in FailureClass)


@dataclass(frozen=True)
class SimulatorOptions:
    """What ``smsgw simulate`` was asked to do (see ``gateway/cli.py``)."""

    server: str  # gRPC target host:port, for pairing codes
    token: str  # API token allowed to create pairing codes
    device_url: str  # ws://HOST:PORT/device/v1 (wss:// for TLS)
    devices: int
    state_file: Path
    encoding: str = "proto"
    window: int = 16
    send_delay: float = 0.05  # seconds per SMS part
    delivery_delay: float = 0.05
    failure_rate: float = 0.0
    delivery_reports: bool = True
    sims: int = 1  # SIMs per phone, reported in Hello as slots 1..sims
    failure_class: str = "generic_failure"  # what the failure_rate share fails with (FAILURE_CLASSES)
    android_limit: int = ANDROID_LIMIT_PARTS  # Android's per-app limit, parts per 60 s; 0 = off
    reconnect_scale: float = 1.0
    duration: float | None = None
    ca_file: Path | None = None  # the CA of the bridge's certificate (wss://); None = system roots
    grpc_credentials: Any = None  # grpc.ChannelCredentials for pairing; None = plaintext
    private_token: str = ""  # a private-mode server's token, sent when pairing
    passphrases: tuple[str, ...] = ()  # end-to-end encryption on the phones (newest first); () = off
    receive_every: float | None = None  # seconds between SMS each phone receives; None = see receive_text
    receive_text: str = ""  # the received SMS' text ("" = numbered); alone: one SMS per phone
    receive_from: str = DEFAULT_SENDER  # their sender
    doze: float | None = None  # seconds idle before a phone closes its session until woken; None = never


# --- the state file -------------------------------------------------------------


def load_state(path: Path) -> list[dict[str, str]]:
    """Read the phones of a state file; ``[]`` when it does not exist.

    Raises:
        ValueError: The file is not a simulator state file.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    data = json.loads(text)
    phones = data.get("phones") if isinstance(data, dict) else None
    if not isinstance(phones, list):
        raise ValueError("not a simulator state file (no 'phones' list)")
    result: list[dict[str, str]] = []
    for phone in phones:
        if not isinstance(phone, dict) or not all(
            isinstance(phone.get(key), str) and phone.get(key) for key in ("name", "device_id", "token")
        ):
            raise ValueError("a phone in the state file lacks name, device_id or token")
        result.append({key: str(value) for key, value in phone.items()})
    return result


def save_state(path: Path, phones: list[dict[str, str]]) -> None:
    """Write the phones atomically (temporary file, fsync, rename), mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = json.dumps({"version": _STATE_VERSION, "phones": phones}, indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)  # mkstemp already uses 0600; be explicit about it
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


# --- the run ------------------------------------------------------------------


class _Simulator:
    def __init__(self, options: SimulatorOptions, out: TextIO, err: TextIO) -> None:
        self.options = options
        self.out = out
        self.err = err
        self.entries: dict[str, dict[str, str]] = {}  # by phone name, file order
        self.agents: list[PhoneAgent | None] = [None] * options.devices
        self.fatal: BaseException | None = None
        self.exit_status = 0
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._state_dirty = trio.Event()
        self._state_unsaved = False
        self._shutting_down = False
        self._main_scope: trio.CancelScope | None = None
        self._phones_running = 0
        self._ssl_context = _ssl_context(options)
        self._wakes: WakeListener | None = None  # --doze: pushes forwarded by the FCM stand-in
        # One pairing-code request at a time: a herd of phones would otherwise hit the
        # per-token rate limit all at once, and each refusal asks all of them to wait.
        self._code_lock = trio.Lock()

    # output

    def say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def warn(self, line: str) -> None:
        print(f"smsgw simulate: {line}", file=self.err, flush=True)

    # main

    async def run(self) -> int:
        try:
            self.entries = {phone["name"]: phone for phone in load_state(self.options.state_file)}
        except (OSError, ValueError) as exc:
            self.warn(f"cannot read {self.options.state_file}: {exc}")
            return 2
        try:
            with trio.CancelScope() as scope:
                self._main_scope = scope
                if self.options.doze is not None:
                    self._wakes = WakeListener(self._woken)
                async with trio.open_nursery() as nursery:
                    if threading.current_thread() is threading.main_thread():
                        nursery.start_soon(self._watch_signals, nursery)
                    if self.options.duration is not None:
                        nursery.start_soon(self._stop_after, self.options.duration)
                    nursery.start_soon(self._save_state_loop)
                    nursery.start_soon(self._report)
                    if self.options.receive_every is not None or self.options.receive_text:
                        nursery.start_soon(self._receive)
                    self._phones_running = self.options.devices
                    for index in range(self.options.devices):
                        nursery.start_soon(self._phone_task, index)
        finally:
            if self._wakes is not None:
                self._wakes.close()
            if self._state_unsaved:
                self._save_state_now()
            if self._client is not None:
                self._client.close()
        if self.fatal is not None:
            raise self.fatal
        return self.exit_status

    async def _watch_signals(self, nursery: trio.Nursery) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                if self._shutting_down:  # a second Ctrl-C: stop at once
                    self._cancel_all()
                    return
                nursery.start_soon(self._begin_shutdown)

    async def _stop_after(self, seconds: float) -> None:
        await trio.sleep(seconds)
        await self._begin_shutdown()

    async def _begin_shutdown(self) -> None:
        """Close every session cleanly (bounded), then end the run."""
        if self._shutting_down:
            return
        self._shutting_down = True
        with trio.move_on_after(SHUTDOWN_GRACE):
            async with trio.open_nursery() as nursery:
                for agent in self.agents:
                    if agent is not None:
                        nursery.start_soon(agent.aclose)
        self._cancel_all()

    def _cancel_all(self) -> None:
        if self._main_scope is not None:
            self._main_scope.cancel()

    def _abort(self, error: BaseException) -> None:
        if self.fatal is None:
            self.fatal = error
        self._shutting_down = True
        self._cancel_all()

    # phones

    def _make_agent(self, index: int, **auth: Any) -> PhoneAgent:
        o = self.options
        modem = SimulatedModem(_modem_options(o))
        agent = PhoneAgent(
            o.device_url,
            encoding=o.encoding,
            window=o.window,
            modem=modem,
            sims=_sims(o.sims),
            backoff=Backoff(scale=o.reconnect_scale),
            name=_name(index),
            ssl_context=self._ssl_context,
            private_token=o.private_token or None,
            passphrases=o.passphrases,
            doze_after=o.doze,
            push_token=self._wakes.token_for(_name(index)) if self._wakes is not None else "",
            **auth,
        )
        self.agents[index] = agent
        return agent

    def _woken(self, name: str) -> None:
        """A push for phone `name` came through the stand-in (on the trio thread)."""
        for agent in self.agents:
            if agent is not None and agent.name == name:
                agent.wake()

    async def _phone_task(self, index: int) -> None:
        try:
            await self._phone(index)
        finally:
            self._phones_running -= 1
        if self._phones_running == 0 and not self._shutting_down:
            self.warn("every simulated phone stopped; exiting")
            self.exit_status = 1
            self._shutting_down = True
            self._cancel_all()

    async def _phone(self, index: int) -> None:
        name = _name(index)
        stored = self.entries.get(name)
        if stored is not None:
            agent = self._make_agent(index, token=stored["token"])
            await agent.run()
            if agent.closed_reason is not None and not self._shutting_down:
                self.warn(
                    f"{name} ({stored['device_id']}) stopped: {agent.closed_reason}"
                    + (f"; remove it from {self.options.state_file} to pair a new phone"
                       if agent.closed_reason.startswith("http_") or agent.closed_reason == "credentials_revoked"
                       else "")
                )
            return
        for attempt in range(1, PAIRING_ATTEMPTS + 1):
            code = await self._pairing_code(name, attempt)
            if code is None:
                continue
            agent = self._make_agent(index, pairing_code=code, on_credentials=self._saver(index))
            await agent.run()
            if agent.sessions > 0 or self._shutting_down:
                if agent.closed_reason is not None and not self._shutting_down:
                    self.warn(f"{name} ({agent.device_id}) stopped: {agent.closed_reason}")
                return
            self.warn(f"{name}: pairing attempt {attempt} refused ({agent.closed_reason})")
        self.warn(f"{name}: could not pair after {PAIRING_ATTEMPTS} attempts; giving it up")

    async def _pairing_code(self, name: str, attempt: int) -> str | None:
        """A fresh pairing code; None to retry (after a pause); aborts the run on a hard error.

        RESOURCE_EXHAUSTED (the per-token rate limit) is waited out for the RetryInfo delay the
        server names, for at most RATE_LIMIT_PATIENCE in all, since pairing more phones than
        the limit's burst is the normal first run of a big fleet."""
        from smsgw_client.errors import DeadlineExceeded, ResourceExhausted, SmsgwError, Unavailable

        try:
            async with self._code_lock:
                waited = 0.0
                while True:
                    try:
                        response = await trio.to_thread.run_sync(self._create_code, name, abandon_on_cancel=True)
                        break
                    except ResourceExhausted as exc:
                        delay = max(0.05, exc.retry_delay if exc.retry_delay is not None else 1.0)
                        if waited + delay > RATE_LIMIT_PATIENCE:
                            raise
                        waited += delay
                        await trio.sleep(delay)
        except (Unavailable, DeadlineExceeded) as exc:
            if attempt >= PAIRING_ATTEMPTS:
                self._abort(_rpc_error(exc))
                await trio.sleep_forever()
            self.warn(f"{name}: pairing code request failed ({exc.code.name}); retrying")
            await trio.sleep(Backoff(scale=self.options.reconnect_scale).next_delay() + 0.5)
            return None
        except SmsgwError as exc:
            self._abort(_rpc_error(exc))
            await trio.sleep_forever()
        return str(response.code)

    def _create_code(self, name: str) -> Any:
        with self._client_lock:
            if self._client is None:
                from smsgw_client import Client

                self._client = Client(
                    self.options.server, self.options.token, credentials=self.options.grpc_credentials
                )
            client = self._client
        return client.create_pairing_code(device_name=name)

    def _saver(self, index: int) -> Callable[[Any], None]:
        def save(credentials: Any) -> None:
            name = _name(index)
            self.entries[name] = {
                "name": name,
                "device_id": credentials.device_id,
                "token": credentials.token,
                "device_url": self.options.device_url,
            }
            self._state_unsaved = True
            self._state_dirty.set()

        return save

    async def _receive(self) -> None:
        """Make the phones receive SMS: every ``receive_every`` seconds each phone that was
        online once gets one; without ``receive_every``, each gets one, once."""
        o = self.options
        once, count = o.receive_every is None, 0
        done: set[int] = set()
        while not (once and len(done) == o.devices):
            await trio.sleep(0.1 if once else o.receive_every)  # type: ignore[arg-type]
            for index, agent in enumerate(self.agents):
                if agent is None or agent.sessions == 0 or (once and index in done):
                    continue
                count += 1
                agent.receive_sms(o.receive_from, text=o.receive_text or f"simulated SMS {count}")
                done.add(index)

    # state file writer: coalesces the writes of a pairing herd, off the loop

    def _snapshot(self) -> list[dict[str, str]]:
        return [dict(entry) for entry in self.entries.values()]

    async def _save_state_loop(self) -> None:
        while True:
            await self._state_dirty.wait()
            self._state_dirty = trio.Event()
            self._state_unsaved = False
            phones = self._snapshot()
            try:
                await trio.to_thread.run_sync(save_state, self.options.state_file, phones)
            except OSError as exc:
                self._state_unsaved = True
                self.warn(f"cannot write {self.options.state_file}: {exc.strerror}")
                await trio.sleep(1)

    def _save_state_now(self) -> None:
        try:
            save_state(self.options.state_file, self._snapshot())
            self._state_unsaved = False
        except OSError as exc:
            self.warn(f"cannot write {self.options.state_file}: {exc.strerror}")

    # output

    async def _report(self) -> None:
        total = self.options.devices
        started = trio.current_time()
        all_online_said = False
        startup_checked = False
        # Nothing to report until a message moves or a phone comes and goes.
        last_summary: tuple[int, ...] = (total, 0, 0, 0, 0, 0, 0, 0)
        next_summary = started + SUMMARY_INTERVAL
        names = [_name(i) for i in range(total)]
        pairing = any(name not in self.entries for name in names)  # said only on a run that pairs
        shown = {"paired": -1, "online": 0}
        next_progress = started + PROGRESS_INTERVAL
        while True:
            await trio.sleep(0.1)
            agents = [a for a in self.agents if a is not None]
            online = sum(1 for a in agents if a.connected)
            now = trio.current_time()
            if not all_online_said and (now >= next_progress or online == total):
                # Progress on stderr while the fleet comes up: stdout keeps its one "online" line.
                next_progress = now + PROGRESS_INTERVAL
                counts = {"paired": sum(1 for name in names if name in self.entries), "online": online}
                for what, count in counts.items():
                    if count != shown[what] and (what == "online" or pairing):
                        shown[what] = count
                        print(f"{what} {count}/{total}", file=self.err, flush=True)
            if not all_online_said and online == total:
                all_online_said = True
                startup_checked = True
                self.say(f"{total} simulated phone{'s' if total != 1 else ''} online")
            if not startup_checked and now - started >= STARTUP_TIMEOUT:
                startup_checked = True
                ever = sum(1 for a in agents if a.sessions > 0)
                if ever == 0:
                    self.warn(f"no phone came online within {STARTUP_TIMEOUT:.0f} s; stopping")
                    self.exit_status = 1
                    self._shutting_down = True
                    self._cancel_all()
                    return
                self.warn(f"{ever} of {total} phones came online within {STARTUP_TIMEOUT:.0f} s; the rest keep trying")
            if now >= next_summary:
                next_summary = now + SUMMARY_INTERVAL
                stats = [a.statistics() for a in agents]
                summary = (
                    online,
                    sum(s.received for s in stats),
                    sum(s.accepted for s in stats),
                    sum(s.sent for s in stats),
                    sum(s.failed for s in stats),
                    sum(s.delivered for s in stats),
                    sum(len(a.modem.dialogs) for a in agents),
                    sum(s.inbound for s in stats),
                )
                if summary != last_summary:
                    last_summary = summary
                    self.say(
                        f"online {summary[0]}/{total}; received {summary[1]}, accepted {summary[2]}, "
                        f"sent {summary[3]}, failed {summary[4]}, delivered {summary[5]}"
                        + (f"; Android limit dialogs {summary[6]}" if summary[6] else "")
                        + (f"; inbound {summary[7]}" if summary[7] else "")
                    )


class WakeListener:
    """Where the FCM stand-in (gateway/push/standin.py) forwards the pushes meant for this
    simulator's phones: an HTTP server on 127.0.0.1, `POST /wake/<phone name>`. Each phone
    reports the push token `loopback:<port>:<name>`; a real phone's would come from FCM."""

    def __init__(self, on_wake: Callable[[str], None]) -> None:
        token = trio.lowlevel.current_trio_token()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(min(int(self.headers.get("content-length") or 0), 4096))
                name = self.path.removeprefix("/wake/")
                found = self.path.startswith("/wake/") and bool(name)
                self.send_response(204 if found else 404)
                self.send_header("content-length", "0")
                self.end_headers()
                if found:
                    try:
                        token.run_sync_soon(on_wake, name)
                    except trio.RunFinishedError:
                        pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="smsgw-sim-wakes", daemon=True)
        self._thread.start()

    def token_for(self, name: str) -> str:
        return f"loopback:{self.port}:{name}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _name(index: int) -> str:
    return f"sim-{index + 1}"


def _sims(count: int) -> tuple[SimInfo, ...]:
    return tuple(SimInfo(slot, f"Sim Operator {slot}", "US") for slot in range(1, count + 1))


def _modem_options(options: SimulatorOptions) -> ModemOptions:
    """The modem of every phone; raises ValueError for invalid settings."""
    if options.failure_class not in FAILURE_CLASSES:
        raise ValueError(f"failure_class must be one of {', '.join(FAILURE_CLASSES)}")
    return ModemOptions(
        send_delay=options.send_delay,
        delivery_delay=options.delivery_delay,
        failure_rate=options.failure_rate,
        delivery_reports=options.delivery_reports,
        failure_class=FailureClass[options.failure_class.upper()],
        android_limit_parts=options.android_limit,
    )


def _ssl_context(options: SimulatorOptions) -> ssl.SSLContext | None:
    """One client context for every phone of a wss:// run (it reads the CA file once).

    Raises:
        OSError: The CA file cannot be read or holds no certificate (ssl.SSLError).
    """
    if not options.device_url.startswith("wss://"):
        return None
    return ssl.create_default_context(cafile=None if options.ca_file is None else str(options.ca_file))


def _rpc_error(exc: BaseException) -> BaseException:
    """The ``grpc.RpcError`` behind a client error (the CLI reports those), else ``exc``."""
    import grpc

    cause = exc.__cause__
    return cause if isinstance(cause, grpc.RpcError) else exc


def run_simulator(options: SimulatorOptions, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the simulated phones until Ctrl-C, SIGTERM or ``options.duration``.

    Blocking (``trio.run`` inside).

    Returns:
        0 after a normal stop; 1 when no phone came online within
        :data:`STARTUP_TIMEOUT` or every phone stopped for good (credentials
        refused, replaced); 2 for an unreadable state file.

    Raises:
        grpc.RpcError: A pairing code could not be obtained (bad token,
            server unreachable after retries).
        ValueError: Invalid options.
        OSError: ``ca_file`` cannot be read or is not a PEM CA certificate.
    """
    if options.devices < 1:
        raise ValueError("devices must be at least 1")
    if options.encoding not in ("proto", "json"):
        raise ValueError("encoding must be 'proto' or 'json'")
    if options.duration is not None and options.duration < 0:
        raise ValueError("duration must not be negative")
    if not 1 <= options.sims <= 8:
        raise ValueError("sims must be in 1..8")
    if options.receive_every is not None and options.receive_every <= 0:
        raise ValueError("receive_every must be positive")
    InboundSms(1, "check", options.receive_from, text=options.receive_text)  # ValueError naming the field
    _modem_options(options)  # validates the modem settings before anything connects
    simulator = _Simulator(options, out if out is not None else sys.stdout, err if err is not None else sys.stderr)
    return trio.run(simulator.run)
