"""Watches opened "from now" that have seen no event yet, across a restart of the real server:
`smsgw watch`, `smsgw inbound watch`, and the library's sync and asyncio watches must each get
what is logged after the restart (issue 14, item 1: gRPC's transparent retry used to re-open
the streams behind the client's back, and they stayed silent)."""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from smsgw_client import AsyncClient, Client, SmsgwError

from tests.helpers.server import SMSGW, ServerProcess

TIMEOUT = 60.0
OPEN_LINE = "watch stream open after event"


class _OpenedStreams(logging.Handler):
    """Counts the library's "watch stream open" debug records: the server has started the stream."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith(OPEN_LINE):
            self.count += 1


@pytest.fixture
def opened() -> Iterator[_OpenedStreams]:
    handler, logger = _OpenedStreams(), logging.getLogger("smsgw_client")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


class _CliWatch:
    """`smsgw -v watch` / `smsgw -v inbound watch` as a process; lines read by threads."""

    def __init__(self, server: ServerProcess, *command: str) -> None:
        self.proc = subprocess.Popen(
            [SMSGW, "-v", *command, "--server", server.grpc_target, "--token-file", str(server.token_file())],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.opened = threading.Event()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.lines.put), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self._stderr), daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(pipe: Any, put: Callable[[str], None]) -> None:
        for line in pipe:
            put(line)

    def _stderr(self, line: str) -> None:
        if OPEN_LINE in line:
            self.opened.set()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        for reader in self.readers:
            reader.join(10)  # at the pipes' end now
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def _collect(iterate: Callable[[], Iterator[Any]], out: queue.Queue[Any]) -> threading.Thread:
    def run() -> None:
        try:
            for item in iterate():
                out.put(item)
        except SmsgwError as exc:
            out.put(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _async_watch(target: str, token: str, out: queue.Queue[Any]) -> Callable[[], None]:
    """AsyncClient.watch_messages in its own thread and event loop; returns its stop function."""
    loop = asyncio.new_event_loop()

    async def main() -> None:
        async with AsyncClient(target, token) as client:
            async for event in client.watch_messages():
                out.put(event)

    task = loop.create_task(main())
    thread = threading.Thread(target=lambda: loop.run_until_complete(asyncio.wait([task])), daemon=True)
    thread.start()

    def stop() -> None:
        loop.call_soon_threadsafe(task.cancel)
        thread.join(10)
        loop.close()

    return stop


def _wait(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {TIMEOUT:.0f} s: {what}")
        time.sleep(0.05)


def _send_when_up(server: ServerProcess) -> str:
    """Send one message as soon as the restarted server answers (no phone: a PENDING event)."""
    deadline = time.monotonic() + TIMEOUT
    with Client(server.grpc_target, server.token) as client:
        while True:
            try:
                return client.send_message(["+15551234567"], "after the restart").id
            except SmsgwError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def _first(out: queue.Queue[Any], match: Callable[[Any], bool], what: str) -> Any:
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            item = out.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"{what}: nothing within {TIMEOUT:.0f} s") from None
        if isinstance(item, BaseException):
            raise AssertionError(f"{what}: {item!r}")
        if match(item):
            return item


def test_watches_without_events_resume_after_a_server_restart(
    server: ServerProcess, opened: _OpenedStreams, tmp_path: Path
) -> None:
    cli_messages = _CliWatch(server, "watch")
    cli_inbound = _CliWatch(server, "inbound", "watch")
    sync_messages: queue.Queue[Any] = queue.Queue()
    sync_inbound: queue.Queue[Any] = queue.Queue()
    async_messages: queue.Queue[Any] = queue.Queue()
    client = Client(server.grpc_target, server.token)
    stop_async: Callable[[], None] = lambda: None
    simulator: subprocess.Popen[bytes] | None = None
    try:
        _collect(lambda: client.watch_messages(), sync_messages)
        _collect(lambda: client.watch_inbound(), sync_inbound)
        stop_async = _async_watch(server.grpc_target, server.token, async_messages)
        _wait(lambda: opened.count >= 3 and cli_messages.opened.is_set() and cli_inbound.opened.is_set(),
              "every watch stream started")
        server.stop()
        server.start(same_ports=True)
        message_id = _send_when_up(server)
        simulator = subprocess.Popen(  # one phone, which receives one SMS once it is online
            [SMSGW, "simulate", "--server", server.grpc_target, "--token-file", str(server.token_file()),
             "--devices", "1", "--state-file", str(tmp_path / "phones.json"), "--device-url", server.device_url,
             "--receive", "hello after the restart", "--duration", str(TIMEOUT)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        _first(sync_messages, lambda e: e.message_id == message_id, "Client.watch_messages")
        _first(async_messages, lambda e: e.message_id == message_id, "AsyncClient.watch_messages")
        _first(cli_messages.lines, lambda line: message_id in line, "smsgw watch")
        _first(sync_inbound, lambda e: e.message.text_message.text == "hello after the restart", "Client.watch_inbound")
        _first(cli_inbound.lines, lambda line: "hello after the restart" in line, "smsgw inbound watch")
    finally:
        stop_async()
        client.close()
        cli_messages.stop()
        cli_inbound.stop()
        if simulator is not None and simulator.poll() is None:
            os.kill(simulator.pid, signal.SIGTERM)
            simulator.wait(20)
