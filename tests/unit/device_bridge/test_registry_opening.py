"""A session whose open loads the phone's queue (device_bridge.session_task `open`) plans its
first round on that load; a wake-up for the device while it is being opened reaches it
(SessionRegistry.opening with the handle) and makes that round reload instead, so a message
stored after the open's transaction read the queue is not missed."""

from __future__ import annotations

import trio

from device_bridge.registry import SessionHandle, SessionRegistry


def test_a_fresh_handle_reloads_on_its_first_round() -> None:
    assert SessionHandle("dev-1", "owner", "s1").take_work() == (True, set())


def test_an_open_that_loaded_the_queue_skips_the_reload() -> None:
    trio.run(_open_that_loaded_the_queue_skips_the_reload)


async def _open_that_loaded_the_queue_skips_the_reload() -> None:
    registry = SessionRegistry()
    handle = SessionHandle("dev-1", "owner", "s1")
    async with registry.opening("dev-1", handle):
        handle.loading()
        registry.wake({"dev-2"})  # another device's
        assert registry.register(handle) is None
    assert handle.take_work() == (False, set())


def test_wake_ups_during_the_open_reach_the_session_being_opened() -> None:
    trio.run(_wake_ups_during_the_open_reach_the_session_being_opened)


async def _wake_ups_during_the_open_reach_the_session_being_opened() -> None:
    registry = SessionRegistry()
    old = SessionHandle("dev-1", "owner", "s0")
    registry.register(old)
    old.take_work()
    handle = SessionHandle("dev-1", "owner", "s1")
    async with registry.opening("dev-1", handle):
        handle.loading()
        registry.queued({"dev-1": {"m1"}})
        assert handle.take_work() == (False, {"m1"})
        assert old.take_work() == (False, {"m1"})  # the registered session still gets them
        registry.wake({"dev-1"})
        registry.settings_changed({"dev-1"})
        assert registry.register(handle) is old
        registry.queued({"dev-1": {"m2"}})  # registered: reaches it once, and only it
    assert handle.take_settings_changed()
    assert handle.take_work() == (True, {"m2"})
    assert old.take_work() == (True, set())


def test_an_aborted_open_stops_receiving_wake_ups() -> None:
    trio.run(_an_aborted_open_stops_receiving_wake_ups)


async def _an_aborted_open_stops_receiving_wake_ups() -> None:
    registry = SessionRegistry()
    handle = SessionHandle("dev-1", "owner", "s1")
    try:
        async with registry.opening("dev-1", handle):
            handle.loading()
            raise RuntimeError("device deleted")
    except RuntimeError:
        pass
    registry.wake({"dev-1"})
    assert handle.take_work() == (False, set())
    assert len(registry) == 0
