"""`smsgw simulate` pairing more phones than the per-token rate limit's burst: it waits out each
RESOURCE_EXHAUSTED as its RetryInfo says, every phone comes online, and progress goes to stderr."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from tests.helpers.server import SMSGW, ServerProcess

PHONES = 8
TIMEOUT = 90.0


def test_pairing_past_the_rate_limit_brings_every_phone_online(tmp_path: Path) -> None:
    limits = {"SMSGW_LIMITS__RATE_PER_TOKEN": "4", "SMSGW_LIMITS__BURST_PER_TOKEN": "2"}
    with ServerProcess(tmp_path / "data", env=limits) as server:
        sim = subprocess.Popen(
            [SMSGW, "simulate", "--server", server.grpc_target, "--token-file", str(server.token_file()),
             "--devices", str(PHONES), "--state-file", str(tmp_path / "phones.json"),
             "--device-url", server.device_url, "--duration", str(TIMEOUT)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        stderr: list[str] = []
        assert sim.stdout is not None and sim.stderr is not None
        reader = threading.Thread(target=lambda: stderr.extend(sim.stderr), daemon=True)  # type: ignore[arg-type]
        reader.start()
        try:
            deadline, online = time.monotonic() + TIMEOUT, False
            while not online and time.monotonic() < deadline:
                line = sim.stdout.readline()
                if not line:
                    break
                online = f"{PHONES} simulated phones online" in line
            assert online, "".join(stderr)
        finally:
            if sim.poll() is None:
                os.kill(sim.pid, signal.SIGTERM)
            code = sim.wait(30)
            reader.join(10)
            sim.stdout.close()
            sim.stderr.close()
    assert code == 0, "".join(stderr)
    assert f"paired {PHONES}/{PHONES}\n" in stderr and f"online {PHONES}/{PHONES}\n" in stderr
    assert any(line.startswith("paired ") and line != f"paired {PHONES}/{PHONES}\n" for line in stderr)  # on the way
    assert not any("RESOURCE_EXHAUSTED" in line or "Traceback" in line for line in stderr), "".join(stderr)
