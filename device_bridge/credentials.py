"""Device tokens the bridge has checked, kept in memory (issue 15 item 7: credentials from a
cache), so a reconnecting phone's upgrade reads no database and takes no worker thread.

Only good tokens are kept, by their hash: at start the bridge loads those of every device
(`load`, one query), so a reconnect storm after a restart reads none either; a token seen
later (a device paired since, or past the limit) is kept once a read found it good. A device
deleted on this bridge's bus is forgotten at once (`forget`), so its phone is refused with 401
as before; a token a pairing retry replaced gives way to the new one when the retry redeems
the code. Whatever the cache says, the session open re-checks the device's token and
revocation in its own transaction (`gateway.devices.repository.take_online`): a stale entry
can only turn a 401 into a close 4004 after Hello, which a phone handles the same way
(docs/protocol.md, close codes).

Used on the bridge's trio thread only.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.devices.records import DeviceIdentity

__all__ = ["TokenCache"]


class TokenCache:
    """token hash -> device, bounded (the oldest entry goes first when full)."""

    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        self._by_hash: dict[str, DeviceIdentity] = {}
        self._by_device: dict[str, str] = {}
        # Bumped by every forget: a database read that started before a revocation must not
        # put back what the revocation took out (see `generation` and `put`).
        self.generation = 0

    def get(self, token_hash: str) -> DeviceIdentity | None:
        return self._by_hash.get(token_hash)

    def put(self, token_hash: str, identity: DeviceIdentity, generation: int) -> None:
        """Keep a token found good by a read (or a re-issue) that started at `generation`.
        The device's earlier token goes in any case: a device has one token at a time."""
        old = self._by_device.pop(identity.device_id, None)
        if old is not None:
            self._by_hash.pop(old, None)
        if generation != self.generation:
            return  # a device was forgotten meanwhile, maybe this one
        while len(self._by_hash) >= self.limit:
            oldest = next(iter(self._by_hash))
            self._by_device.pop(self._by_hash.pop(oldest).device_id, None)
        self._by_hash[token_hash] = identity
        self._by_device[identity.device_id] = token_hash

    def load(self, entries: Iterable[tuple[str, DeviceIdentity]], generation: int) -> None:
        """Keep these (token hash, device) pairs, read by one query that started at `generation`."""
        for token_hash, identity in entries:
            self.put(token_hash, identity, generation)

    def forget(self, device_ids: Iterable[str]) -> None:
        """These devices were deleted or their tokens replaced."""
        self.generation += 1
        for device_id in device_ids:
            token_hash = self._by_device.pop(device_id, None)
            if token_hash is not None:
                self._by_hash.pop(token_hash, None)

    def __len__(self) -> int:
        return len(self._by_hash)
