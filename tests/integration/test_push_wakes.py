"""FCM wake-ups end to end (issue 17): `smsgw serve` with its FCM settings pointed at the local
stand-in (gateway/push/standin.py, which checks the service account's signed grant and the
push's shape), and reference phones that doze: they close their session when idle and come
back only when the stand-in forwards them a push over loopback (as `smsgw simulate --doze`).

Shortened times: a push 1 s after a phone left, at most one per phone every 3 s, checked every
0.2 s; phones doze after 0.5 s idle."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from smsgw.v1 import common_pb2
from smsgw_client import Client

from gateway.push.standin import FcmStandIn
from smsgw_agent import PhoneAgent
from smsgw_agent.simulator import WakeListener
from tests.helpers.phones import start_phones
from tests.helpers.server import SMSGW, ServerProcess

_GRACE, _EVERY = 1.0, 3.0
_DOZE = 0.5
_WAIT = 30.0  # bound on each wait; each takes a few seconds


@pytest.fixture
def standin() -> Iterator[FcmStandIn]:
    with FcmStandIn() as s:
        yield s


def _fcm_env(standin: FcmStandIn, tmp_path: Path) -> dict[str, str]:
    return {
        "SMSGW_FCM__CREDENTIALS_FILE": str(standin.write_service_account(tmp_path / "service-account.json")),
        "SMSGW_FCM__BASE_URL": standin.base_url,
        "SMSGW_FCM__GRACE": str(_GRACE),
        "SMSGW_FCM__MIN_INTERVAL": str(_EVERY),
        "SMSGW_FCM__CHECK_INTERVAL": "0.2",
    }


@pytest.fixture
def server(standin: FcmStandIn, tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path / "data", env=_fcm_env(standin, tmp_path)) as proc:
        yield proc


def _metric(server: ServerProcess, name: str) -> float:
    text = httpx.get(server.endpoints["metrics"], timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


async def _dozing_phones(nursery: trio.Nursery, server: ServerProcess, count: int) -> list[PhoneAgent]:
    """`count` phones that doze, reachable through a WakeListener (what `smsgw simulate --doze` runs)."""
    listener = WakeListener(lambda name: [p.wake() for p in phones if p.name == name])
    phones: list[PhoneAgent] = []
    phones += await start_phones(
        nursery, server.grpc_target, server.token, server.device_url, count,
        push_token_for=listener.token_for, doze_after=_DOZE,
    )
    nursery.start_soon(_close_at_end, listener)
    with trio.fail_after(_WAIT):
        while not all(p.dozing for p in phones):
            await trio.sleep(0.05)
    return phones


async def _close_at_end(listener: WakeListener) -> None:
    try:
        await trio.sleep_forever()
    finally:
        listener.close()


def _send_to_each(server: ServerProcess, phones: list[PhoneAgent], text: str) -> list[str]:
    with Client(server.grpc_target, server.token) as client:
        return [client.send_message(["+15550001234"], text, device_id=p.device_id).id for p in phones]  # type: ignore[arg-type]


def _states(server: ServerProcess, ids: list[str]) -> set[int]:
    with Client(server.grpc_target, server.token) as client:
        return {client.get_message(i).state for i in ids}


def test_a_dozing_phone_is_woken_once_and_its_message_delivered(server: ServerProcess, standin: FcmStandIn) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            [phone] = await _dozing_phones(nursery, server, 1)
            with Client(server.grpc_target, server.token) as client:
                # The phone closed its socket; the server marks it offline once it sees the close.
                deadline = time.monotonic() + _WAIT
                while (listed := client.list_devices().devices[0]).online and time.monotonic() < deadline:
                    await trio.sleep(0.05)
                assert listed.wakeable and not listed.online and not listed.HasField("last_woken_at")
            sent_at = time.monotonic()
            [message] = await trio.to_thread.run_sync(_send_to_each, server, [phone], "after a push")
            with trio.fail_after(_WAIT):
                while await trio.to_thread.run_sync(_states, server, [message]) != {common_pb2.DELIVERED}:
                    await trio.sleep(0.1)
            assert phone.wakes == 1 and phone.modem.sent
            [push] = standin.received
            assert push.at - sent_at >= 0  # after the send, never before
            assert push.message["data"]["type"] == "wake" and set(push.message["data"]) == {"type", "nonce"}
            assert message not in str(push.message) and "1234" not in str(push.message)
            assert push.message["android"]["priority"] == "high"
            with Client(server.grpc_target, server.token) as client:
                [listed] = client.list_devices().devices
                assert listed.HasField("last_woken_at")
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert _metric(server, 'smsgw_fcm_wakes_total{outcome="sent"}') == 1
    assert _metric(server, "smsgw_bridge_wake_to_reconnect_seconds_count") == 1
    assert standin.token_requests == 1


def test_a_phone_back_by_itself_within_the_grace_costs_no_push(tmp_path: Path, standin: FcmStandIn) -> None:
    env = {**_fcm_env(standin, tmp_path), "SMSGW_FCM__GRACE": "30"}  # a reconnect comes well within it
    with ServerProcess(tmp_path / "data", env=env) as server:

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                [phone] = await _dozing_phones(nursery, server, 1)
                [message] = await trio.to_thread.run_sync(_send_to_each, server, [phone], "no push needed")
                await trio.sleep(1.5)  # seven of the worker's checks while the work waits, within the grace
                phone.doze_after = None  # it stays now
                phone._woken.set()  # back on its own (the app was opened), not through a push
                with trio.fail_after(_WAIT):
                    while await trio.to_thread.run_sync(_states, server, [message]) != {common_pb2.DELIVERED}:
                        await trio.sleep(0.1)
                await trio.sleep(1.0)  # five of the worker's checks
                nursery.cancel_scope.cancel()

        trio.run(main)
    assert standin.received == []


def test_fifty_dozing_phones_with_work_get_fifty_pushes_not_more(server: ServerProcess, standin: FcmStandIn) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            phones = await _dozing_phones(nursery, server, 50)
            ids = await trio.to_thread.run_sync(_send_to_each, server, phones, "one each")
            with trio.fail_after(_WAIT * 2):
                while await trio.to_thread.run_sync(_states, server, ids) != {common_pb2.DELIVERED}:
                    await trio.sleep(0.2)
                while not all(p.dozing for p in phones):  # idle again, no work left
                    await trio.sleep(0.1)
            await trio.sleep(_EVERY * 2)  # two more intervals: nothing is due any more
            assert [p.wakes for p in phones] == [1] * 50
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert len(standin.received) == 50
    assert len({p.token for p in standin.received}) == 50


def test_a_token_fcm_refuses_is_marked_and_not_pushed_again(server: ServerProcess, standin: FcmStandIn) -> None:
    standin.script("unregistered")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            [phone] = await _dozing_phones(nursery, server, 1)
            await trio.to_thread.run_sync(_send_to_each, server, [phone], "never woken")

            def refused() -> bool:
                with Client(server.grpc_target, server.token) as client:
                    [listed] = client.list_devices().devices
                    return bool(listed.push_token_invalid and not listed.wakeable)

            with trio.fail_after(_WAIT):
                while not await trio.to_thread.run_sync(refused):
                    await trio.sleep(0.1)
            await trio.sleep(_EVERY * 1.5)  # past the interval: still nothing sent
            assert phone.wakes == 0
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert standin.received == []  # the refused send is not a received push
    assert _metric(server, 'smsgw_fcm_wakes_total{outcome="invalid_token"}') == 1
    assert _metric(server, "smsgw_fcm_invalid_tokens_total") == 1
    assert "FCM refused device" in server.log_text()


def test_fcm_is_off_without_credentials_and_a_bad_file_is_refused_at_start(tmp_path: Path) -> None:
    run: Any = subprocess.run(
        [SMSGW, "serve", "--data-dir", str(tmp_path / "bad"), "--grpc-listen", "127.0.0.1:0",
         "--device-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"],
        env={**__import__("os").environ, "SMSGW_FCM__CREDENTIALS_FILE": str(tmp_path / "missing.json")},
        capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 2, run.stderr
    assert "missing.json" in run.stderr and "Traceback" not in run.stderr
    with ServerProcess(tmp_path / "off") as server:

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                await start_phones(nursery, server.grpc_target, server.token, server.device_url, 1,
                                   push_token_for=lambda name: f"some-fcm-token-{name}")
                with Client(server.grpc_target, server.token) as client:
                    [listed] = client.list_devices().devices
                    assert not listed.wakeable and not listed.push_token_invalid  # reachable only while connected
                nursery.cancel_scope.cancel()

        trio.run(main)


def test_the_commands_fcm_standin_serve_and_simulate_doze(tmp_path: Path) -> None:
    """The path docs/push.md shows: `smsgw fcm-standin` writes credentials and prints the
    settings, `smsgw serve` uses them, `smsgw simulate --doze` phones sleep until pushed."""
    standin = subprocess.Popen(
        [SMSGW, "fcm-standin", "--credentials-out", str(tmp_path / "standin.json")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    sim: subprocess.Popen[bytes] | None = None
    try:
        assert standin.stdout is not None
        standin.stdout.readline()  # "FCM stand-in at URL; start the worker (or serve) with"
        settings = dict(part.split("=", 1) for part in standin.stdout.readline().split())
        env = {**settings, "SMSGW_FCM__GRACE": str(_GRACE), "SMSGW_FCM__CHECK_INTERVAL": "0.2"}
        with ServerProcess(tmp_path / "data", env=env) as server:
            sim = subprocess.Popen(
                [SMSGW, "simulate", "--server", server.grpc_target, "--token-file", str(server.token_file()),
                 "--devices", "2", "--state-file", str(tmp_path / "phones.json"), "--device-url", server.device_url,
                 "--reconnect-scale", "0.02", "--duration", "120", "--doze", "1", "--send-delay", "0.01",
                 "--delivery-delay", "0.01"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            with Client(server.grpc_target, server.token) as client:

                def asleep() -> bool:
                    devices = client.list_devices().devices
                    return len(devices) == 2 and all(d.wakeable and not d.online and d.last_seen.seconds for d in devices)

                deadline = time.monotonic() + _WAIT
                while not asleep():
                    assert time.monotonic() < deadline, "the simulated phones did not doze"
                    time.sleep(0.1)
                ids = [client.send_message(["+15550001234"], "wake up", device_id=d.id).id
                       for d in client.list_devices().devices]
                deadline = time.monotonic() + _WAIT
                while {client.get_message(i).state for i in ids} != {common_pb2.DELIVERED}:
                    assert time.monotonic() < deadline, "not delivered after the pushes"
                    time.sleep(0.1)
    finally:
        for proc in (sim, standin):
            if proc is not None:
                proc.terminate()
        if sim is not None:
            sim.wait(30)
        out, _ = standin.communicate(timeout=30)
    assert "stopping after 2 pushes" in out, out


def test_the_bridge_stores_a_push_token_frame_and_refuses_a_bad_one(server: ServerProcess) -> None:
    """A phone paired without a token (not wakeable) reports one in a PushToken frame: wakeable
    at once. A token that is not printable ASCII ends the session with 4000 naming the field."""
    from websockets.exceptions import ConnectionClosed

    from tests.helpers.raw_phone import pair_raw

    phone, _ = pair_raw(server.grpc_target, server.token, server.device_url)
    with Client(server.grpc_target, server.token) as client:

        def wakeable() -> bool:
            [listed] = client.list_devices().devices
            return bool(listed.wakeable)

        assert not wakeable()
        phone.proto.send_push_token("fcm-token-from-onNewToken")
        phone.flush()
        deadline = time.monotonic() + _WAIT
        while not wakeable():
            assert time.monotonic() < deadline, "the PushToken frame was not stored"
            time.sleep(0.05)
        from smsgw.device.v1 import device_pb2

        from device_bridge.protocol import encode

        phone.ws.send(encode(device_pb2.DeviceFrame(push_token=device_pb2.PushToken(token="not a token")), phone.proto.encoding))
        with pytest.raises(ConnectionClosed) as caught:
            for _ in range(10):  # bounded: the close comes at once
                phone.ws.recv(10)
        assert caught.value.rcvd is not None and caught.value.rcvd.code == 4000
        assert "PushToken.token" in caught.value.rcvd.reason
        assert wakeable()  # the stored token is untouched


def test_with_separate_processes_the_worker_wakes_the_phone(tmp_path: Path, standin: FcmStandIn) -> None:
    """`smsgw gateway`, `bridge` and `worker` on PostgreSQL: the worker hears of the new work on
    the bus and pushes; the phone comes back to the bridge and the message is DELIVERED."""
    from tests.helpers.postgres import throwaway_database
    from tests.helpers.server import admin_token, upgraded_database

    with throwaway_database() as url:
        env = {**_fcm_env(standin, tmp_path), "SMSGW_DATABASE__URL": url}
        password = upgraded_database(tmp_path, env, (tmp_path / "gateway",))
        with (
            ServerProcess(tmp_path / "worker", env=env, role="worker") as worker,
            ServerProcess(tmp_path / "bridge", env=env, role="bridge") as bridge,
            ServerProcess(tmp_path / "gateway", env=env, role="gateway") as gateway,
        ):
            gateway.endpoints["device"] = bridge.device_url
            gateway._token = admin_token(gateway, password)

            async def main() -> None:
                async with trio.open_nursery() as nursery:
                    [phone] = await _dozing_phones(nursery, gateway, 1)
                    [message] = await trio.to_thread.run_sync(_send_to_each, gateway, [phone], "across processes")
                    with trio.fail_after(_WAIT):
                        while await trio.to_thread.run_sync(_states, gateway, [message]) != {common_pb2.DELIVERED}:
                            await trio.sleep(0.1)
                    assert phone.wakes == 1
                    nursery.cancel_scope.cancel()

            trio.run(main)
            assert len(standin.received) == 1
            assert _metric(worker, 'smsgw_fcm_wakes_total{outcome="sent"}') == 1
            assert _metric(bridge, "smsgw_bridge_wake_to_reconnect_seconds_count") == 1
