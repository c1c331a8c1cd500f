"""Revocation (DeleteDevice) reaching live sessions: LocalBus carries it to the bridge's trio
thread, and the registry ends the device's session even when that session registers only
after the signal went by (it was still being opened)."""

from __future__ import annotations

import threading

import trio

from device_bridge.registry import SessionHandle, SessionRegistry
from gateway.bus import LocalBus


def test_revoke_ends_the_registered_session() -> None:
    trio.run(_revoke_ends_the_registered_session)


async def _revoke_ends_the_registered_session() -> None:
    registry = SessionRegistry()
    handle = SessionHandle("dev-1", "owner", "s1")
    other = SessionHandle("dev-2", "owner", "s2")
    registry.register(handle)
    registry.register(other)
    registry.revoke({"dev-1"})
    assert handle.revoked and handle.cancel_scope.cancel_called
    assert not other.revoked and not other.cancel_scope.cancel_called


def test_session_registering_after_the_revocation_is_revoked_at_once() -> None:
    trio.run(_session_registering_after_the_revocation_is_revoked_at_once)


async def _session_registering_after_the_revocation_is_revoked_at_once() -> None:
    registry = SessionRegistry()
    registry.revoke({"dev-1"})  # no session yet: the phone is between upgrade and Hello
    late = SessionHandle("dev-1", "owner", "s1")
    assert registry.register(late) is None
    assert late.revoked and late.cancel_scope.cancel_called
    unrelated = SessionHandle("dev-2", "owner", "s2")
    registry.register(unrelated)
    assert not unrelated.revoked


def test_local_bus_delivers_revocations_on_the_trio_thread() -> None:
    bus = LocalBus()
    got: list[set[str]] = []
    threads: list[int] = []
    done = threading.Event()
    trio_thread: list[int] = []

    def on_revoked(ids: set[str]) -> None:
        got.append(set(ids))
        threads.append(threading.get_ident())
        done.set()

    async def main() -> None:
        trio_thread.append(threading.get_ident())
        bus.attach_bridge(lambda ids: None, on_revoked)
        with trio.fail_after(5):
            await trio.to_thread.run_sync(lambda: bus.notify_revoked(["dev-1"]))
            while not done.is_set():
                await trio.sleep(0.005)
        bus.detach_bridge()

    trio.run(main)
    assert got == [{"dev-1"}]
    assert threads == trio_thread
