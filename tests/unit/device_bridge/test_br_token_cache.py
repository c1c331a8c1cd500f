"""device_bridge.credentials.TokenCache: checked device tokens in memory, forgotten on delete."""

from __future__ import annotations

from device_bridge.credentials import TokenCache
from gateway.devices.records import DeviceIdentity

A, B, C = DeviceIdentity("dev-a", "o"), DeviceIdentity("dev-b", "o"), DeviceIdentity("dev-c", "o")


def test_kept_then_forgotten_by_device() -> None:
    cache = TokenCache()
    cache.put("h-a", A, cache.generation)
    cache.put("h-b", B, cache.generation)
    assert cache.get("h-a") == A and cache.get("h-b") == B
    cache.forget(["dev-a"])
    assert cache.get("h-a") is None and cache.get("h-b") == B


def test_a_read_older_than_a_forget_is_not_kept() -> None:
    """A token read from storage before a delete committed must not come back after it."""
    cache = TokenCache()
    started = cache.generation
    cache.forget(["dev-a"])  # the delete, while the read was in flight
    cache.put("h-a", A, started)
    assert cache.get("h-a") is None
    cache.put("h-a", A, cache.generation)
    assert cache.get("h-a") == A


def test_a_new_token_of_a_device_replaces_its_old_one() -> None:
    cache = TokenCache()
    cache.put("old", A, cache.generation)
    cache.put("new", A, cache.generation)
    assert cache.get("old") is None and cache.get("new") == A and len(cache) == 1


def test_a_stale_put_still_drops_the_devices_earlier_token() -> None:
    """A re-issue that raced a delete elsewhere: the new token is not kept, the old one goes."""
    cache = TokenCache()
    cache.put("old", A, cache.generation)
    started = cache.generation
    cache.forget(["dev-b"])
    cache.put("new", A, started)
    assert cache.get("old") is None and cache.get("new") is None


def test_bounded_oldest_first() -> None:
    cache = TokenCache(limit=2)
    for h, identity in (("h-a", A), ("h-b", B), ("h-c", C)):
        cache.put(h, identity, cache.generation)
    assert cache.get("h-a") is None and cache.get("h-b") == B and cache.get("h-c") == C and len(cache) == 2
    cache.forget(["dev-a"])  # gone already: nothing else moves
    assert len(cache) == 2
