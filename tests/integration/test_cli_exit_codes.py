"""The `smsgw` command's exit statuses when its reader goes away or the user presses Ctrl-C:
141 and 130 (what a shell reports for SIGPIPE / SIGINT), with no traceback on stderr."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from smsgw_client import Client

from tests.helpers.server import SMSGW, ServerProcess

TIMEOUT = 30


def _watch(server: ServerProcess) -> subprocess.Popen[str]:
    """`smsgw watch --after 0` with stdout and stderr in pipes (one event is already logged)."""
    return subprocess.Popen(
        [SMSGW, "watch", "--server", server.grpc_target, "--token-file", str(server.token_file()), "--after", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def _send(client: Client) -> None:
    client.send_message(["+15551234567"], "piped")  # no phone: one PENDING event


def test_watch_into_a_closed_pipe_exits_141_quietly(server: ServerProcess) -> None:
    with Client(server.grpc_target, server.token) as client:
        _send(client)
        watch = _watch(server)
        try:
            assert watch.stdout is not None and watch.stderr is not None
            assert '"state": "PENDING"' in watch.stdout.readline()
            watch.stdout.close()  # `| head -n 1` has read its line and exited
            _send(client)  # the next line goes into a pipe nobody reads
            assert watch.wait(TIMEOUT) == 141
            stderr = watch.stderr.read()
        finally:
            _stop(watch)
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr


def test_ctrl_c_on_watch_exits_130_quietly(server: ServerProcess, tmp_path: Path) -> None:
    with Client(server.grpc_target, server.token) as client:
        _send(client)
    watch = _watch(server)
    try:
        assert watch.stdout is not None
        assert '"state": "PENDING"' in watch.stdout.readline()  # streaming: past start-up
        os.kill(watch.pid, signal.SIGINT)
        _, stderr = watch.communicate(timeout=TIMEOUT)
    finally:
        _stop(watch)
    assert watch.returncode == 130
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
