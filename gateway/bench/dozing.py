"""The bench's dozing phone (issue 17): SendMessage -> DELIVERED for a phone whose session is
gone, so the message needs an FCM push first.

One `smsgw serve` with FCM pointed at the local stand-in (gateway/push/standin.py: it answers
at once and adds no delay of its own), and one `smsgw simulate --doze` phone whose modem sends
and reports delivery without delay. For each message: wait until the phone has dozed (its
session closed) and the grace has passed, send, and time it to DELIVERED on a WatchMessages
stream. The path measured: the commit nudges the worker's waker, which claims the phone, gets
an access token (cached after the first), POSTs the push; the stand-in forwards it over
loopback; the phone opens a WebSocket session, takes the Deliver, and reports.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from smsgw.v1 import common_pb2, devices_pb2

from gateway.bench.processes import ServerRun, _smsgw
from gateway.bench.scenarios import Api, Watch, percentiles
from gateway.push.standin import FcmStandIn

__all__ = ["dozing"]

_GRACE = 0.5
_EVERY = 1.0  # fcm.min_interval: one push per phone per second at most (5 min by default)
_DOZE = 0.3
_STEP_TIMEOUT = 30.0


async def dozing(work: Path, count: int, token_of: Any) -> dict[str, Any]:
    """`count` messages, one at a time, each to the phone while it dozes. `token_of(server)`:
    an admin access token (the driver's)."""
    with FcmStandIn() as standin:
        env = {
            "SMSGW_FCM__CREDENTIALS_FILE": str(standin.write_service_account(work / "fcm-standin.json")),
            "SMSGW_FCM__BASE_URL": standin.base_url,
            "SMSGW_FCM__GRACE": str(_GRACE),
            "SMSGW_FCM__MIN_INTERVAL": str(_EVERY),
        }
        server = ServerRun(work, "dozing", env)
        server.start()
        sim: subprocess.Popen[bytes] | None = None
        api: Api | None = None
        try:
            token = await token_of(server)
            (work / "dozing.token").write_text(token)
            os.chmod(work / "dozing.token", 0o600)
            with open(work / "dozing-phone.log", "ab") as log:
                sim = subprocess.Popen(
                    [*_smsgw(), "simulate", "--server", server.grpc, "--token-file", str(work / "dozing.token"),
                     "--devices", "1", "--state-file", str(work / "dozing-phone.json"), "--device-url",
                     server.device_url, "--doze", str(_DOZE), "--send-delay", "0", "--delivery-delay", "0",
                     "--android-limit", "0", "--reconnect-scale", "0.02"],
                    stdout=log, stderr=subprocess.STDOUT,
                )
            api = Api(server.grpc, token)
            device = await _asleep(api, None)
            watch = Watch(api)
            watch.start()
            await asyncio.sleep(0.3)  # the stream is open before the first send
            took: list[float] = []
            for _ in range(count):
                await _asleep(api, device)
                message_id, returned = await api.send(device)
                if not await watch.until(common_pb2.DELIVERED, [message_id], _STEP_TIMEOUT):
                    break
                took.append(watch.times(common_pb2.DELIVERED, [message_id])[0] - returned)
            await watch.stop()
            return {
                "messages": count,
                "delivered": len(took),
                "pushes": len(standin.received),
                "grace_s": _GRACE,
                "min_interval_s": _EVERY,
                "delivered_after_return": percentiles(took),
            }
        finally:
            if sim is not None:
                sim.terminate()
                try:
                    sim.wait(30)
                except subprocess.TimeoutExpired:
                    sim.kill()
            if api is not None:
                await api.close()
            server.stop()


async def _asleep(api: Api, device: str | None) -> str:
    """Until the (or the one) phone is offline, seen last over the grace ago and woken last
    over the interval ago (a push would be due at once); its id."""
    deadline = time.monotonic() + _STEP_TIMEOUT
    while time.monotonic() < deadline:
        reply = await api.devices.ListDevices(devices_pb2.ListDevicesRequest(), metadata=api.metadata)
        for d in reply.devices:
            if (device is None or d.id == device) and d.wakeable and not d.online and d.HasField("last_seen"):
                now = time.time()
                woken = d.last_woken_at.seconds + d.last_woken_at.nanos / 1e9 if d.HasField("last_woken_at") else 0.0
                seen = d.last_seen.seconds + d.last_seen.nanos / 1e9
                if now - seen > _GRACE + 0.1 and now - woken > _EVERY + 0.1:
                    return str(d.id)
        await asyncio.sleep(0.05)
    raise TimeoutError("the dozing phone did not doze")

